"""
serve.py: the OpenAI-compatible API through the official openai client, what each answer holds (the same
text gen.py samples with the same seed), streaming, stop strings, bad requests, concurrent clients, a client
that hangs up, the command line, and the chat page in a headless Chromium. Servers run in a thread of the
test process on a free loopback port, with tiny random models saved or built here.
"""
import contextlib
import errno
import http.client
import http.server
import io
import json
import os
import random
import re
import select
import socketserver
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

import common
import gen
import serve
import train
from checkpoint import save_checkpoint
from common import UserError
from conftest import HANGUP, hangup_as, run_cli
from model import GPT, make_config
from setup_tokenizer import IM_END, IM_START, get_tokenizer, render_chat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 64


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("gpt2")


def tiny_model(enc, seed=0):
    # gpt2 variant: its random weights give varied tokens (see test_gen.py)
    torch.manual_seed(seed)
    config = make_config("tiny", n_layer=2, n_embd=64, n_head=2, block_size=BLOCK,
                         vocab_size=enc.n_vocab, variant="gpt2")
    return GPT(config).eval()


def la_model(enc, delay=0.0, gate=None):
    """A model that says ' la' forever: ln_f's output is its bias e_0 whatever the input, and lm_head's column 0
    is -30 for every token but ' la'. Each forward pass takes delay seconds, so a reply streams visibly, and
    waits for gate (a threading.Event) if one is given, so a test can hold the worker busy."""
    model = tiny_model(enc)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = -30.0
        model.lm_head.weight[enc.encode_single_token(" la"), 0] = 0.0
    if delay or gate:
        next_logits = model._next_logits

        def slow(*args, **kwargs):
            if gate:
                gate.wait(60)
            time.sleep(delay)
            return next_logits(*args, **kwargs)

        model._next_logits = slow  # the instance attribute shadows the method generate() calls
    return model


def start(model, enc, name="tiny", **kwargs):
    kwargs.setdefault("log", lambda line: None)
    api = serve.ApiServer(model, enc, name, port=0, **kwargs)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    return api


@pytest.fixture(scope="module")
def api(enc):
    api = start(tiny_model(enc), enc)
    yield api
    api.close()


def client(api):
    return openai.OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def expected(api, prompt_ids, max_tokens, stops, seed):
    """What gen.py samples for these ids with this seed at temperature 1: (text, the finish_reason the API should
    give, the new token ids). The text as gen.py shows it: a character cut off at max_tokens is a U+FFFD there too."""
    shown = []
    new, _, why = gen.complete(api.model, api.enc, prompt_ids, max_tokens, gen.stop_ids(api.enc, stops),
                               on_text=shown.append, temperature=1.0, top_k=api.top_k,
                               generator=torch.Generator().manual_seed(seed))
    return "".join(shown), ("stop" if why in stops else "length"), new


def post(api, path, body, headers=None):
    """(status, parsed JSON) of a raw POST: bytes are sent as they are, anything else as JSON."""
    conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, json.loads(r.read()), dict(r.getheaders())
    conn.close()
    return out


CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello there"}]


# -----------------------------------------------------------------------------
# the API through the official client

def test_openai_client_chat_completion(api, enc):
    r = client(api).chat.completions.create(model="whatever-name", messages=CHAT, max_tokens=8, temperature=1, seed=7)
    ids = render_chat(enc, CHAT, add_generation_prompt=True)[0]
    text, finish, new = expected(api, ids, 8, gen.CHAT_STOPS, seed=7)
    n = len(new)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == api.name
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content == text and text
    assert choice.finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), n, len(ids) + n)


def test_a_chat_reply_ends_at_each_token_that_ends_a_turn(enc):
    """As gen.py's chat (gen.CHAT_STOPS): a reply ends at <|endoftext|> or at a new turn's <|im_start|> too, not at
    <|im_end|> alone; the model that says nothing else gets an empty reply, "stop", not max_tokens of the token's
    text."""
    for closer in gen.CHAT_STOPS:
        model = la_model(enc)
        with torch.no_grad():  # it says closer, never ' la'
            model.lm_head.weight[enc.encode_single_token(" la"), 0] = -30.0
            model.lm_head.weight[enc.encode_single_token(closer), 0] = 0.0
        api = start(model, enc, name="closer")
        try:
            status, r, _ = post(api, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 8, "temperature": 0})
            assert status == 200 and r["choices"][0]["message"]["content"] == "", (closer, r)
            assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 1, (closer, r)
        finally:
            api.close()


def test_a_completion_ends_at_each_token_that_ends_a_turn(api, enc, monkeypatch):
    """A chat model continuing a text ends its turn, and goes on to write the user's next one: /v1/completions sent
    "<|im_end|>\\n<|im_start|>user\\n..." as its text, to <|endoftext|> or max_tokens. As vLLM's completions stop at a
    model's end-of-sequence tokens and leave special tokens out of the text, it ends there, "stop", as a chat reply
    does: at <|im_end|>, and at <|im_start|> or <|endoftext|> too."""
    said = " and then they slept."
    for closer in gen.CHAT_STOPS:
        reply = enc.encode(said) + enc.encode(f"{closer}\n{IM_START}user\nMore", allowed_special="all")
        monkeypatch.setattr(gen, "sample_steps", lambda *a, reply=reply, **k: iter([[t] for t in reply]))
        for stream in (False, True):
            r = client(api).completions.create(model="tiny", prompt="Once upon a time", max_tokens=len(reply),
                                               stream=stream)
            chunks = list(r) if stream else [r]
            assert "".join(c.choices[0].text for c in chunks) == said, (closer, stream)
            assert chunks[-1].choices[0].finish_reason == "stop", (closer, stream)
        # the closer counts, as in a chat
        assert api.worker.recent[-1]["completion_tokens"] == len(enc.encode(said)) + 1


def test_openai_client_streamed_chat(api):
    kwargs = dict(model="tiny", messages=CHAT, max_tokens=8, temperature=1, seed=11)
    whole = client(api).chat.completions.create(**kwargs)
    chunks = list(client(api).chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2 and "".join(pieces) == whole.choices[0].message.content  # token by token, same text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # include_usage: one last chunk
    # and every chunk before it has "usage": null, as OpenAI's do (a client may look it up; it was left out)
    assert all("usage" in c.to_dict() and c.usage is None for c in chunks[:-1])
    plain = list(client(api).chat.completions.create(stream=True, **kwargs))
    assert not any("usage" in c.to_dict() for c in plain)


# -----------------------------------------------------------------------------
# the Responses API (POST /v1/responses): a chat, in that API's objects and events

RESPONSE_START = ["response.created", "response.in_progress", "response.output_item.added",
                  "response.content_part.added"]
RESPONSE_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def test_openai_client_response_is_the_chat_reply(api, enc):
    """client.responses.create (the Agents SDK, Codex-style tools) got a 404. Its instructions are the system message,
    its input the user's (a string, or message items with input_text and output_text parts, an earlier reply's): the
    model sees the chat it would, and says what /v1/chat/completions says."""
    chat = client(api).chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    items = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
             {"role": "user", "content": [{"type": "input_text", "text": t} for t in ("Hello ", "there")]}]
    for given in (dict(instructions="be brief", input="Hello there"), dict(input=items)):
        r = client(api).responses.create(model="whatever", max_output_tokens=8, temperature=0, **given)
        assert r.object == "response" and r.id.startswith("resp_") and r.model == api.name and r.error is None
        (item,) = r.output
        assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
        assert [(p.type, p.annotations) for p in item.content] == [("output_text", [])]
        assert r.output_text == chat.choices[0].message.content and r.output_text, given
        n = len(render_chat(enc, CHAT, add_generation_prompt=True)[0])
        assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == \
            (n, chat.usage.completion_tokens, n + chat.usage.completion_tokens)
        assert r.status == item.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    # an earlier reply sent back, as the SDK's output items are: the chat's assistant turn
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, CHAT[1]]
    back = [history[0], {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                         "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}, history[2]]
    r = client(api).responses.create(model="tiny", input=back, max_output_tokens=2)
    assert r.usage.input_tokens == len(render_chat(enc, history, add_generation_prompt=True)[0])


def test_a_streamed_response_sends_openais_events_in_order(api):
    """stream=True: server-sent events named on their event: lines, numbered from 0, in the Responses API's order,
    the deltas adding up to the text of the same request not streamed; the last one holds the whole response."""
    kwargs = dict(model="tiny", instructions="be brief", input="Hello there", max_output_tokens=8, temperature=0)
    whole = client(api).responses.create(**kwargs)
    events = list(client(api).responses.create(stream=True, **kwargs))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert [e.type for e in events] == \
        RESPONSE_START + ["response.output_text.delta"] * len(deltas) + RESPONSE_END + [final]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len(deltas) >= 2 and "".join(deltas) == events[-4].text == whole.output_text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[-1].response.id == events[0].response.id and events[-1].response.output_text == whole.output_text
    assert events[-1].response.usage == whole.usage
    conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
    conn.request("POST", "/v1/responses", json.dumps({**kwargs, "stream": True}))
    body = conn.getresponse().read()
    conn.close()
    frames = [f.split("\n") for f in body.decode().split("\n\n") if f]
    assert len(frames) == len(events)
    assert [f[0] for f in frames] == [f"event: {json.loads(f[1][len('data: '):])['type']}" for f in frames]
    assert b"[DONE]" not in body


def test_a_response_ends_completed_or_incomplete_at_max_output_tokens(api, enc, monkeypatch):
    """A reply that ends its turn is completed; one cut at max_output_tokens is incomplete, and says why, in the
    response, its message item and a stream's last event (response.incomplete, as OpenAI's)."""
    said = " Hi there."
    reply = enc.encode(said) + enc.encode(IM_END, allowed_special="all")
    monkeypatch.setattr(gen, "sample_steps", lambda model, ids, max_tokens, **k: ([t] for t in reply[:max_tokens]))
    c = client(api)
    r = c.responses.create(model="tiny", input="Hello", max_output_tokens=len(reply))
    assert (r.status, r.incomplete_details, r.output[0].status, r.output_text) == ("completed", None, "completed", said)
    with c.responses.stream(model="tiny", input="Hello", max_output_tokens=len(reply)) as stream:
        assert stream.get_final_response().output_text == said  # the SDK's own reading of the events
    r = c.responses.create(model="tiny", input="Hello", max_output_tokens=2)
    assert (r.status, r.incomplete_details.reason, r.output[0].status) == \
        ("incomplete", "max_output_tokens", "incomplete")
    assert r.output_text == enc.decode(reply[:2]) and r.usage.output_tokens == 2
    events = list(c.responses.create(model="tiny", input="Hello", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_a_response_stream_that_fails_ends_with_openais_error_event(api, enc, monkeypatch):
    """A reply that fails once its stream has begun (the 500 a chat gets as its last chunk) ends with the Responses
    API's error event, its fields at the top, which the SDK hands its caller."""
    def fail(*args, **kwargs):
        yield [enc.encode(" Hi")[0]]
        raise UserError("the scores overflowed")

    monkeypatch.setattr(gen, "sample_steps", fail)
    events = list(client(api).responses.create(model="tiny", input="Hello", stream=True))
    assert [e.type for e in events] == RESPONSE_START + ["response.output_text.delta", "error"]
    assert events[-1].code == "internal_error" and "overflowed" in events[-1].message
    assert events[-1].sequence_number == len(events) - 1


def test_a_response_takes_the_defaults_clients_send(api):
    """Fields the SDKs send with values that ask for nothing this server lacks: each a 200, not a 400."""
    status, body, _ = post(api, "/v1/responses", {
        "input": "hi", "max_output_tokens": 2, "store": False, "tools": [], "tool_choice": "auto", "reasoning": {
            "effort": None, "summary": None}, "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "parallel_tool_calls": True, "truncation": "disabled", "metadata": {"a": "b"}, "include": []})
    assert status == 200 and body["object"] == "response", body


def test_completions_and_stop_strings(api, enc):
    c = client(api)
    prompt = "Once upon a time"
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=1, seed=3)
    text, finish, new = expected(api, enc.encode(prompt), 12, gen.CHAT_STOPS, seed=3)
    assert r.object == "text_completion" and r.choices[0].text == text and r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(enc.encode(prompt)) and r.usage.completion_tokens == len(new)
    # a stop string across the 6th and 7th tokens: the text ends just before it, in one piece and streamed
    # (where the server must hold back a piece that might start the stop string)
    cut = len(enc.decode(new[:6]))
    stop = text[cut - 2:cut + 2]
    assert len(stop) == 4
    for stream in (False, True):
        r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=1, seed=3, stream=stream,
                                 stop=[stop, "never appears"])
        chunks = list(r) if stream else [r]
        assert "".join(ch.choices[0].text for ch in chunks) == text[:text.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(ch.object == "text_completion" for ch in chunks)  # (a chat's are chat.completion.chunk)
    # seed 0 is a seed too, not "none given"
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=1, seed=0)
    assert r.choices[0].text == expected(api, enc.encode(prompt), 12, gen.CHAT_STOPS, seed=0)[0]


def test_a_token_prompt_that_ends_inside_a_character(api, enc, monkeypatch):
    """A prompt of token ids may end inside a character: the reply's first token that finishes it brings it whole, as
    the bytes of the two (each a U+FFFD alone) make it; one that does not finish it leaves it to the prompt. The reply's
    text began with a U+FFFD for the finishing byte, and a client joining the prompt's text and the reply's never got
    the character back (vLLM's incremental detokenizer, which reads the prompt's last tokens too, drops it)."""
    byte = lambda b: enc.encode_single_token(bytes([b]))  # gpt2 has a token for each byte
    prompt = enc.encode("a caf") + [byte(0xC3)]  # "é" is C3 A9
    c = client(api)
    lait = enc.encode(" au lait")
    for reply, want in (([byte(0xA9)] + lait, "\u00e9 au lait"), (lait, " au lait")):
        monkeypatch.setattr(gen, "sample_steps", lambda *a, reply=reply, **k: iter([[t] for t in reply]))
        for stream in (False, True):
            r = c.completions.create(model="tiny", prompt=prompt, max_tokens=len(reply), stream=stream)
            chunks = list(r) if stream else [r]
            assert "".join(ch.choices[0].text for ch in chunks) == want, (reply, stream)
    # cut off inside a character at max_tokens: its usage counts the tokens sampled, not the flush of the cut character
    reply = lait + [byte(0xC3)]
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in reply]))
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=len(reply))
    assert r.usage.completion_tokens == len(reply) and r.choices[0].finish_reason == "length", r


def test_text_held_for_a_stop_string_ends_the_reply_when_the_model_stops(enc, monkeypatch):
    """ "Hello there. B" could go on as the stop string "Bye", so " B" waits for the next piece; when the model
    ends its reply there (<|im_end|>), the " B" is the reply's end, not dropped."""
    end = enc.encode_single_token(IM_END)
    pieces = [(1, "Hello"), (2, " there."), (3, " B"), (end, "")]
    monkeypatch.setattr(serve, "stream_completion", lambda *a, **k: (step for step in pieces))  # closable
    worker = serve.Worker(tiny_model(enc), enc, torch.float32, 4, log=lambda line: None)
    for stop in (["Bye"], []):
        job = serve.Job("chat", [0], 8, (end,), stop, {}, None, False, False)
        assert worker.generate(job) == (4, "stop")
        texts = []
        while not job.events.empty():
            texts.append(job.events.get()[1])
        assert "".join(texts) == "Hello there. B"


def test_stop_text_holds_back_exactly_what_may_start_a_stop_string():
    """StopText.held tries only where a stop string's first character is (every prefix of a long one cost O(len^2)
    a token on the one worker): the same answer as trying every prefix, on random text and stops."""
    rng = random.Random(0)
    for _ in range(3000):
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(1, 6)))
        st = serve.StopText([stop])
        st.pending = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        want = max((k for k in range(1, len(stop)) if st.pending.endswith(stop[:k])), default=0)
        assert st.held(stop) == want, (stop, st.pending)
    st = serve.StopText(["x" * 250_000, "y" * 250_000])  # a request's four of these held every client a minute
    assert [st.push(p) for p in ("a", "xx", "b", "yyy")] == [("a", False), ("", False), ("xxb", False), ("", False)]
    assert st.flush() == "yyy"


def test_models_endpoint(api):
    assert [m.id for m in client(api).models.list()] == [api.name]
    assert client(api).models.retrieve(api.name).id == api.name
    with pytest.raises(openai.NotFoundError):
        client(api).models.retrieve("gpt-4")
    # the client percent-encodes the name it listed ("my%20chat"): the server decodes it
    named = start(api.model, api.enc, name="my chät")
    try:
        assert client(named).models.retrieve(client(named).models.list().data[0].id).id == "my chät"
    finally:
        named.close()


def test_unknown_and_default_fields_are_accepted(api, enc):
    # fields OpenAI clients send with their defaults, fields of other servers, a newer role name, content parts
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    status, body, _ = post(api, "/v1/chat/completions", {
        "messages": messages, "max_tokens": 3, "user": "me", "frequency_penalty": 0, "presence_penalty": 0.0,
        "logprobs": False, "n": 1, "tool_choice": "none", "my_extension": {"x": [1]}, "top_k": None, "top_p": 1,
        "response_format": {"type": "text"}})
    assert status == 200, body
    # the model saw exactly the conversation as gen.py renders it
    assert body["usage"]["prompt_tokens"] == len(render_chat(enc, CHAT, add_generation_prompt=True)[0])


def test_a_request_without_max_tokens_gets_the_servers_max_tokens(enc):
    """serve.py --max_tokens N is the reply's length where a request gives none, for a completion as for a chat: a
    model that never stops (' la' forever) says N tokens, finish_reason "length", not as many as the context holds."""
    api = start(la_model(enc), enc, name="la", max_tokens=5)
    try:
        for path, body in (("/v1/completions", {"prompt": "Once upon a time"}),
                           ("/v1/chat/completions", {"messages": CHAT})):
            status, r, _ = post(api, path, {**body, "temperature": 0})
            assert status == 200, r
            assert r["usage"]["completion_tokens"] == 5 and r["choices"][0]["finish_reason"] == "length", (path, r)
    finally:
        api.close()


def test_openai_forms_of_a_prompt_and_of_an_assistant_turn_are_read(api, enc):
    """What OpenAI's API takes and its client (or LangChain, which sends a prompt as ["..."]) sends: a prompt as token
    ids, or alone in a list; an assistant turn whose content is null (it called a tool) or holds a refusal part."""
    want = post(api, "/v1/completions", {"prompt": "Once upon", "max_tokens": 4, "temperature": 0})[1]
    ids = enc.encode("Once upon")
    for prompt in (["Once upon"], ids, [ids]):
        status, body, _ = post(api, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0})
        assert status == 200 and body["choices"][0]["text"] == want["choices"][0]["text"], (prompt, body)
        assert body["usage"]["prompt_tokens"] == len(ids)
    for turn, said in (({"role": "assistant", "content": None}, ""),
                       ({"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot"}]}, "I cannot")):
        messages = [{"role": "user", "content": "Hi"}, turn, {"role": "user", "content": "ok"}]
        status, body, _ = post(api, "/v1/chat/completions", {"messages": messages, "max_tokens": 2})
        seen = [*messages[:1], {"role": "assistant", "content": said}, *messages[2:]]
        assert status == 200 and body["usage"]["prompt_tokens"] == len(render_chat(enc, seen, True)[0]), body


def test_long_chat_drops_oldest_turns(api, enc):
    turns = []
    for i in range(100):  # more messages than could ever fit: serve.py cuts them before fit_history
        turns += [{"role": "user", "content": f"question {i} is here"}, {"role": "assistant", "content": f"answer {i}"}]
    history = [CHAT[0]] + turns + [{"role": "user", "content": "last one"}]
    assert len(render_chat(enc, history, add_generation_prompt=True)[0]) + 8 > BLOCK
    for max_tokens in (8, 24):  # (24: fitted to the whole context, what is kept leaves too few for it)
        status, body, _ = post(api, "/v1/chat/completions", {"messages": history, "max_tokens": max_tokens})
        assert status == 200, body
        fitted = gen.fit_history(enc, history, BLOCK - max_tokens)
        assert fitted[0] == CHAT[0] and fitted[-1] == history[-1] and len(fitted) < len(history)
        assert body["usage"]["prompt_tokens"] == len(render_chat(enc, fitted, add_generation_prompt=True)[0])


# -----------------------------------------------------------------------------
# bad requests: a 4xx with OpenAI's error body, and the server goes on

MSG = [{"role": "user", "content": "hi"}]
BAD = [  # (path, body, status, param, code)
    ("/v1/chat/completions", b"{bad json", 400, None, "invalid_json"),
    ("/v1/chat/completions", b"[1, 2]", 400, None, "invalid_json"),
    ("/v1/chat/completions", b"\xff\xfe", 400, None, "invalid_json"),
    ("/v1/chat/completions", b"[" * 100000 + b"]" * 100000, 400, None, "invalid_json"),
    ("/v1/completions", b'{"prompt": "Hi", "seed": ' + b"1" * 5000 + b"}", 400, None, "invalid_json"),  # no answer
    ("/v1/chat/completions", {}, 400, "messages", "missing_required_parameter"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {"messages": ["hi"]}, 400, "messages[0]", "invalid_type"),  # (m.get: no answer)
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role",
     "invalid_value"),
    # a turn without its role is missing it, as OpenAI says: it was "must be system, user or assistant, got null"
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "messages[0].role", "missing_required_parameter"),
    # one given as null is there, and wrong: "got null", not "is required"
    ("/v1/chat/completions", {"messages": [{"role": None, "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content",
     "invalid_type"),
    # a message without its content is missing it, as OpenAI says (it was "must be a string or a list of text parts")
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content",
     "missing_required_parameter"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, 400, "messages[0].content",
     "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": 5}, 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "temperature": True}, 400, "temperature", "invalid_type"),  # (not 1)
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     "temperature", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "top_p": 1.5}, 400, "top_p", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "top_k": "ten"}, 400, "top_k", "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "top_k": -2}, 400, "top_k", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": True}, 400, "max_tokens", "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": BLOCK + 1}, 400, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "max_completion_tokens": 10**9}, 400, "max_completion_tokens",
     "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "max_completion_tokens": 0}, 400, "max_completion_tokens",
     "invalid_value"),
    # beside a good max_completion_tokens, a bad max_tokens is refused too (it was ignored: a 200)
    ("/v1/chat/completions", {"messages": MSG, "max_completion_tokens": 8, "max_tokens": -1}, 400, "max_tokens",
     "invalid_value"),
    ("/v1/completions", {"prompt": "Hi", "max_completion_tokens": 8, "max_tokens": "5"}, 400, "max_tokens",
     "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": BLOCK}, 400, "messages", "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 100}]}, 400, "messages",
     "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": MSG, "stream": "yes"}, 400, "stream", "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "stream": True, "stream_options": {"include_usage": 1}}, 400,
     "stream_options.include_usage", "invalid_type"),
    # without stream its include_usage would be ignored (OpenAI refuses it too)
    ("/v1/completions", {"prompt": "Hi", "stream_options": {"include_usage": True}}, 400, "stream_options",
     "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "stop": 3}, 400, "stop", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "stop": ["a", 1]}, 400, "stop", "invalid_value"),
    ("/v1/chat/completions", {"messages": MSG, "seed": 1.5}, 400, "seed", "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "seed": 2**64}, 400, "seed", "invalid_value"),  # (64 bits: torch's)
    ("/v1/chat/completions", {"messages": MSG, "model": 5}, 400, "model", "invalid_type"),
    ("/v1/chat/completions", {"messages": MSG, "n": 2}, 400, "n", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": MSG, "logprobs": True}, 400, "logprobs", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": MSG, "tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": MSG, "presence_penalty": 0.5}, 400, "presence_penalty",
     "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": MSG, "response_format": {"type": "json_object"}}, 400, "response_format",
     "unsupported_parameter"),
    ("/v1/completions", {"prompt": "Hi", "echo": True}, 400, "echo", "unsupported_parameter"),
    ("/v1/completions", {}, 400, "prompt", "missing_required_parameter"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": [[1], [2]]}, 400, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": [5, 10**9]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": [5, -1]}, 400, "prompt", "invalid_value"),
    ("/v1/completions", {"prompt": [50259]}, 400, "prompt", "invalid_value"),  # (ids 0 to 50258, ChatML's two last)
    ("/v1/completions", {"prompt": []}, 400, "prompt", "invalid_type"),
    ("/v1/completions", {"prompt": [True]}, 400, "prompt", "invalid_type"),  # (JSON true is no token id)
    ("/v1/completions", {"prompt": "Hi", "logprobs": 0}, 400, "logprobs", "unsupported_parameter"),  # (null logprobs)
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, 400, "messages[0].content",
     "invalid_type"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]}, 400,
     "messages[0].content", "invalid_type"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": ["text"], "text": "a"}]}]}, 400,
     "messages[0].content", "invalid_type"),  # (a TypeError: the connection dropped, no answer)
    ("/v1/completions", {"prompt": "word " * 100}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": BLOCK}, 400, "prompt", "context_length_exceeded"),
    # the Responses API's names: its input and max_output_tokens, and what it asks for that this server lacks
    ("/v1/responses", {}, 400, "input", "missing_required_parameter"),
    ("/v1/responses", {"input": 5}, 400, "input", "invalid_type"),
    ("/v1/responses", {"input": []}, 400, "input", "invalid_value"),
    ("/v1/responses", {"input": "hi", "instructions": ["be brief"]}, 400, "instructions", "invalid_type"),
    ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, 400,
     "input[0].content", "invalid_type"),  # (a chat's part type: OpenAI's Responses API refuses it too)
    ("/v1/responses", {"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, 400,
     "input[0].type", "unsupported_parameter"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens", "invalid_value"),
    ("/v1/responses", {"input": "word " * 100}, 400, "input", "context_length_exceeded"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": BLOCK}, 400, "input", "context_length_exceeded"),
    ("/v1/responses", {"input": "hi", "tools": [{"type": "function", "name": "f"}]}, 400, "tools",
     "unsupported_parameter"),
    ("/v1/responses", {"input": "hi", "previous_response_id": "resp_1"}, 400, "previous_response_id",
     "unsupported_parameter"),
    ("/v1/responses", {"input": "hi", "reasoning": {"effort": "low"}}, 400, "reasoning", "unsupported_parameter"),
    ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_object"}}}, 400, "text",
     "unsupported_parameter"),
]


@pytest.mark.parametrize("path,body,status,param,code", BAD, ids=[f"{b[3]}-{b[4]}" for b in BAD])
def test_bad_request_gets_400(api, path, body, status, param, code):
    got, err, _ = post(api, path, body)
    assert got == status
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["param"] == param and err["error"]["code"] == code
    assert err["error"]["type"] == "invalid_request_error" and len(err["error"]["message"]) > 10
    # types in JSON's words, as the client wrote them: "stream must be a boolean", not Python's "a bool"
    assert not re.search(r"must be an? (dict|bool|str|int)\b", err["error"]["message"]), err


@pytest.mark.parametrize("path,body,echo", [
    ("/v1/chat/completions", {"messages": "你好"}, 'got "你好"'),
    ("/v1/chat/completions", {"messages": [{"role": "用户", "content": "你好"}]}, 'got "用户"'),
    ("/v1/chat/completions", {"messages": MSG, "stop": ["停", "止", "了", "吗", "？"]}, 'got ["停", "止", "了", "吗", "？"]'),
    ("/v1/chat/completions", {"messages": MSG, "model": ["模型"]}, 'got ["模型"]'),
    ("/v1/completions", {"prompt": {"文本": "你好"}}, 'got {"文本": "你好"}'),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {"你": 1}}, 'logit_bias={"你": 1} is not supported'),
    # cut at 80 characters, not 80 of its escapes (13 characters, or one cut inside its \\uXXXX)
    ("/v1/completions", {"prompt": ["长" * 100, "x"]}, 'got ["' + "长" * 78 + "\n"),
], ids=["messages", "role", "stop", "model", "prompt", "unsupported", "cut"])
def test_a_refused_value_is_echoed_as_the_client_wrote_it(api, path, body, echo):
    """A 400 quoting a value of the request quoted its text in \\u escapes, inside the body's own JSON: a Chinese
    client read `got "\\u4f60\\u597d"` for the "你好" it sent."""
    status, err, _ = post(api, path, body)
    assert status == 400 and echo in err["error"]["message"] + "\n", err


def exchange(api, request):
    """Send raw HTTP bytes with Connection: close; (its head's lines, its body's bytes) as they came, to the close."""
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def post_request(path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def stream_text(body):
    """The text of a streamed completion's chunked body, read as a client that splits lines with str.splitlines."""
    lines = [line for line in body.decode().splitlines() if line.startswith("data: {")]
    return "".join(json.loads(line[len("data: "):])["choices"][0]["text"] for line in lines)


def test_answers_send_their_text_in_utf8(api, enc, monkeypatch):
    """JSON's default escapes sent a curl user "\\u4f60\\u597d" where the model wrote 你好, in a body and in every
    data: line of a stream: OpenAI's API and vLLM send the characters, in UTF-8. Content-Length counts the body's bytes.
    A line separator (U+2028) is still escaped: str.splitlines, with which some clients read a stream, would cut its
    data: line in two."""
    text = "你好, café\u2028世界"
    reply = enc.encode(text)
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in reply]))
    for stream in (False, True):
        head, body = exchange(api, post_request("/v1/completions", {"prompt": "Hi", "max_tokens": len(reply),
                                                                    "stream": stream}))
        assert head[0] == "HTTP/1.1 200 OK", head
        # (a stream sends a character in the event of the token that completes it)
        assert all(c.encode() in body for c in "你好é世界") and b"\\u" not in body.replace(b"\\u2028", b""), body
        assert b"\\u2028" in body and "\u2028".encode() not in body, body
        if stream:  # (EventSource, and readers of server-sent events, go by the type)
            assert stream_text(body) == text and "Content-Type: text/event-stream; charset=utf-8" in head, head
        else:
            assert f"Content-Length: {len(body)}" in head and json.loads(body)["choices"][0]["text"] == text
            assert json.loads(body)["choices"][0]["logprobs"] is None  # (OpenAI's schema has the field: null)


def test_a_stream_tells_a_proxy_in_front_not_to_buffer_it(api):
    """nginx holds a proxied answer until it is whole unless the answer says X-Accel-Buffering: no; a stream through it
    came all at once, at its end. A stream says so, and is not to be cached."""
    head, _ = exchange(api, post_request("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "stream": True}))
    assert head[0] == "HTTP/1.1 200 OK" and "X-Accel-Buffering: no" in head and "Cache-Control: no-cache" in head, head


def test_a_lone_surrogate_is_sent_back_escaped_never_as_invalid_utf8(enc):
    """JSON's "\\ud800" reads as a lone surrogate, which UTF-8 cannot encode: a body that holds one, a refusal that
    quotes it or an answer naming a model served from a file name that is no UTF-8 (as os.fsdecode reads it), keeps
    JSON's escapes, rather than fail or send bytes no client decodes. A stop string of one is no refusal."""
    api = start(tiny_model(enc), enc, name="caf\udce9")
    try:
        for path, body, echo in (("/v1/chat/completions", b'{"messages": "\\ud800"}', 'got "\ud800"'),
                                 ("/v1/completions", b'{"prompt": "Hi", "stop": ["\\udfff", "a", "b", "c", "d"]}',
                                  'got ["\udfff", "a"')):
            head, data = exchange(api, post_request(path, body))
            assert head[0] == "HTTP/1.1 400 Bad Request" and f"Content-Length: {len(data)}" in head, head
            assert echo in json.loads(data.decode("utf-8"))["error"]["message"], data
        for stream in (False, True):
            body = b'{"prompt": "Hi", "max_tokens": 4, "stop": "\\ud800", "stream": %s}' % str(stream).lower().encode()
            head, data = exchange(api, post_request("/v1/completions", body))
            assert head[0] == "HTTP/1.1 200 OK", (head, data)
            answers = [json.loads(line[len("data: "):]) for line in data.decode("utf-8").splitlines()
                       if line.startswith("data: {")] if stream else [json.loads(data.decode("utf-8"))]
            assert answers and all(a["model"] == "caf\udce9" for a in answers), data
    finally:
        api.close()


def raw(api, request):
    """Send raw HTTP bytes; (status, JSON body, headers) of the answer."""
    conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
    conn.connect()
    conn.sock.sendall(request)
    r = http.client.HTTPResponse(conn.sock)
    r.begin()
    out = r.status, json.loads(r.read()), dict(r.getheaders())
    conn.close()
    return out


def test_a_target_urlsplit_refuses_is_a_404_not_a_traceback(api):
    # "http://[x", an IPv6 address unclosed: urlsplit raises ValueError, and the request went unanswered
    for request in (b"GET http://[x HTTP/1.1\r\nHost: localhost\r\n\r\n",
                    b"POST http://[x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"):
        status, err, _ = raw(api, request)
        assert status == 404 and err["error"]["code"] == "not_found" and "http://[x" in err["error"]["message"], request


def test_http_errors_get_openai_bodies(api):
    status, err, headers = raw(api, b"GET /v1/nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 404 and "/v1/chat/completions" in err["error"]["message"]
    status, err, headers = raw(api, b"GET /v1/completions HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 405 and headers["Allow"] == "POST" and err["error"]["code"] == "method_not_allowed"
    status, err, headers = raw(api, b"DELETE /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 405 and headers["Allow"] == "GET"
    status, err, headers = raw(api, b"DELETE /v1/models/tiny HTTP/1.1\r\nHost: localhost\r\n\r\n")  # it was 404
    assert status == 405 and headers["Allow"] == "GET" and err["error"]["code"] == "method_not_allowed"
    # HTTP's own methods and a REST client's (they were 501 Not Implemented)
    for method in (b"OPTIONS", b"TRACE", b"PUT", b"PATCH"):
        status, err, headers = raw(api, method + b" /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 405 and headers["Allow"] == "POST" and err["error"]["code"] == "method_not_allowed", method
    # a body over the limit is refused before it is read, and the connection closes behind the answer
    status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Content-Length: %d\r\n\r\n" % (serve.MAX_BODY + 1))
    assert status == 413 and headers["Connection"] == "close" and str(serve.MAX_BODY) in err["error"]["message"]
    # a Content-Length that is no byte count: 400, and the connection closes (its body, if any, is unread)
    for length in (b"-5", b"\xb2", b"7" * 5000):  # '\xb2' is latin-1 for '\u00b2', which str.isdigit() takes
        status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                        b"Content-Length: %s\r\n\r\n" % length)
        assert status == 400 and headers["Connection"] == "close"
        assert err["error"]["message"].startswith("Content-Length must be a non-negative number of bytes, got '")
    status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 411
    # other transfer codings than chunked (which every HTTP/1.1 server reads: test_chunked_body) are 501; both
    # framings at once are refused; either way the connection closes, since the body's end is not known
    status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Transfer-Encoding: gzip, chunked\r\n\r\n")
    assert status == 501 and headers["Connection"] == "close" \
        and "'gzip, chunked' is not supported" in err["error"]["message"]
    for second in (b"identity", b"chunked"):  # two lines: "chunked, identity" is no chunked framing (TE.TE smuggling)
        status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                        b"Transfer-Encoding: chunked\r\n"
                                        b"Transfer-Encoding: %s\r\n\r\n2\r\n{}\r\n0\r\n\r\n" % second)
        assert status == 501 and headers["Connection"] == "close", second
    status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Transfer-Encoding: chunked\r\n"
                                    b"Content-Length: 6\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert status == 400 and headers["Connection"] == "close" and "not both" in err["error"]["message"]
    # the standard library's own refusals too
    status, err, headers = raw(api, b"BREW /pot HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 501 and "BREW" in err["error"]["message"]
    # a request line the standard library cannot read: answered with a status line, not a bare HTTP/0.9 body (which
    # http.client reads as BadStatusLine); a real HTTP/0.9 request ("GET /path") still gets its bare body
    for line, status, words in ((b"GET / HTTP/2.0", 505, "Invalid HTTP version (2.0)"),
                                (b"GET / HTTP/1.1 x", 400, "Bad request version ('x')"),
                                (b"GET / FOO/1.1", 400, "Bad request version ('FOO/1.1')"),
                                (b"GARBAGE", 400, "Bad request syntax ('GARBAGE')")):
        got, err, headers = raw(api, line + b"\r\nHost: localhost\r\n\r\n")
        assert got == status and headers["Connection"] == "close" and err["error"]["message"] == words, line
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        sock.sendall(b"GET /v1/models\r\n\r\n")
        data = b"".join(iter(lambda: sock.recv(1 << 16), b""))  # (to the connection's close)
        assert json.loads(data)["data"][0]["id"] == api.name
    # the official client raises its error class with the server's message
    with pytest.raises(openai.BadRequestError) as e:
        client(api).chat.completions.create(model="tiny", messages=MSG, max_tokens=BLOCK)
    assert e.value.status_code == 400 and "context holds 64 tokens" in e.value.message
    # and after all that the server still answers
    assert post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200


def test_a_requests_headers_are_limited_in_all_not_only_each_line(api):
    """The standard library took 100 header lines of 64 KiB each: 6.4 MB a connection, and 100 connections holding
    such heads half-sent pinned 600 MB of the server's memory. Headers over MAX_HEADERS in all are a 431 saying the
    limit; a big cookie's within it is answered."""
    line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    within = line * (serve.MAX_HEADERS // len(line) - 1)
    status, body, _ = raw(api, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + within + b"\r\n")
    assert status == 200 and body["data"][0]["id"] == api.name
    for over in (within + line * 2, b"X-Pad: " + b"a" * 66000 + b"\r\n", b"X: 1\r\n" * 100):  # (in all, a line, 100)
        status, err, headers = raw(api, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + over + b"\r\n")
        assert status == 431 and headers["Connection"] == "close", status
        assert err["error"]["message"] == f"the request's headers are over {serve.MAX_HEADERS // 1024} KiB in all, " \
                                          "or over 100 lines: send fewer or shorter headers", err
    # a client that writes all of its request before it reads (http.client, so requests and openai) reads the 431, or
    # a URL's 414, not a BrokenPipeError: what it still sends (20 MB here, past what the sockets buffer) is dropped
    # after the answer, as a 413's body is
    for path, headers, status in (("/v1/completions", {f"X-Pad{i}": "a" * 60000 for i in range(350)}, 431),
                                  ("/v1/completions?" + "a" * 20_000_000, {}, 414)):
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
        conn.request("POST", path, json.dumps({"prompt": "Hi", "max_tokens": 2}), headers)
        r = conn.getresponse()
        assert r.status == status and json.loads(r.read())["error"]["message"] == serve.Handler.REFUSALS[status]
        conn.close()
    assert post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200


def test_http_framing(api):
    """Requests whose framing a proxy in front might read otherwise (RFC 9112) are refused with 400, and the
    connection closes behind each; a GET's body is read, so the request after it is answered; a stray CRLF before a
    request line is skipped, and a client's Connection: close is echoed."""
    class Unclosable(io.BytesIO):
        def close(self):  # HTTPResponse closes its file at the end of a body: the next answer is in it too
            pass

    def exchange(data, n=1):
        """The n answers to data, read until the server closes the connection (as each exchange here ends)."""
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(data)
            got = b"".join(iter(lambda: sock.recv(65536), b""))
        answers = Unclosable(got)
        r = []
        for _ in range(n):
            resp = http.client.HTTPResponse(types.SimpleNamespace(makefile=lambda *a, **k: answers))
            resp.begin()
            r.append((resp.status, json.loads(resp.read()) if resp.status != 200 or n > 1 else resp.read(),
                      dict(resp.getheaders())))
        assert answers.read() == b""  # no answer more than the requests
        return r
    # a GET with a body: the body was left on the connection and taken for the next request line (a 400)
    body = b"GET /v1/nope HTTP/1.1\r\n\r\n"
    (a, b) = exchange(b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                      # a stray CRLF between
                      + b"\r\nGET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", n=2)
    assert a[0] == b[0] == 200 and a[1]["status"] == b[1]["status"] == "ok"
    for request, words in [
            (b"Content-Length: 41\r\nContent-Length: 5\r\n", "two different Content-Length headers"),
            (b"Content-Length : 33\r\n", "header line is malformed"),  # (it dropped this and every header after)
            (b"Bad Header\r\nContent-Length: 2\r\n", "header line is malformed"),
            (b"X-Folded: a\r\n b\r\nContent-Length: 2\r\n", "header line is malformed")]:
        ((status, err, headers),) = exchange(b"POST /v1/completions HTTP/1.1\r\n"
                                             b"Host: localhost\r\n" + request + b"\r\n{}")
        assert status == 400 and words in err["error"]["message"] and headers["Connection"] == "close", request
    # the same Content-Length twice is one framing (RFC 9112 6.3 lets a server take it as one): answered
    body = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
    ((status, _, _),) = exchange(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s" % (len(body), len(body), body))
    assert status == 200
    for hosts in (b"", b"Host: a\r\nHost: b\r\n"):
        ((status, err, headers),) = exchange(b"GET /health HTTP/1.1\r\n" + hosts + b"\r\n")
        assert status == 400 and "one Host header" in err["error"]["message"] and headers["Connection"] == "close"
    ((status, _, headers),) = exchange(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status == 200 and headers["Connection"] == "close"
    for stray in (b"", b"\r\n"):  # (after a stray CRLF it was a bare JSON body, no status line)
        ((status, err, headers),) = exchange(stray + b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 414 and "shorten the URL" in err["error"]["message"]  # it said "bad request"


def test_a_body_not_in_utf8_is_refused_as_that_not_as_invalid_json(api):
    """JSON in Latin-1 (Windows PowerShell 5.1's Invoke-RestMethod sends it) was "not valid JSON", though its syntax is
    right: the answer names the encoding, and the byte, to fix."""
    status, err, _ = post(api, "/v1/completions", '{"prompt": "café", "max_tokens": 1}'.encode("latin-1"))
    assert status == 400 and err["error"]["code"] == "invalid_json"
    assert err["error"]["message"] == ("the request body is not UTF-8 (byte 0xe9 at offset 15 is no utf-8 text); send "
                                       "the JSON encoded as UTF-8")


def test_a_multipart_request_is_refused_for_its_body_not_as_a_malformed_header(api):
    """curl -F's form (multipart/form-data) was refused as "a header line is malformed": the standard library's parser
    finds no parts in a head without its body. Its body is what the API cannot read, and the answer says so."""
    form = b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nHi\r\n--x--\r\n'
    for content_type in ("multipart/form-data; boundary=x", "multipart/form-data"):
        status, err, _ = post(api, "/v1/completions", form, {"Content-Type": content_type})
        assert status == 400 and err["error"]["code"] == "invalid_json", err
    # a JSON body under it is read, as under any Content-Type
    status, _, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, {"Content-Type": "multipart/mixed"})
    assert status == 200


def test_chunked_body(api):
    """A body sent chunked (curl -H 'Transfer-Encoding: chunked', clients streaming a request) is read, with chunk
    extensions and trailers, and the connection then serves the next request; it was a 411."""
    conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
    body = json.dumps({"prompt": "Hi", "max_tokens": 2, "temperature": 0}).encode()
    for _ in range(2):  # two requests on one connection: the first body was read to its end
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"5;name=value\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (body[:5], len(body) - 5, body[5:]))
        r = conn.getresponse()
        out = json.loads(r.read())
        assert r.status == 200 and out["usage"]["completion_tokens"] == 2
    conn.close()
    # a bad size line, a chunk longer than its size, and a body over the limit: clear errors, connection closed
    half = serve.MAX_BODY // 2 + 1
    for chunks, status, words in ((b"zz\r\n{}\r\n0\r\n\r\n", 400, "bad chunk size line"),
                                  (b"3\r\n{}\r\n0\r\n\r\n", 400, "does not end where its size says"),
                                  # trailer lines without end: read up to a bound, not until the request's deadline
                                  (b"2\r\n{}\r\n0\r\n" + b"X-Trailer: 1\r\n" * 100, 400, "trailer does not end"),
                                  (b"%x\r\n" % (serve.MAX_BODY + 1), 413, "over"),
                                  # over it in all, each chunk under it: the chunks' sizes add up
                                  ((b"%x\r\n%s\r\n" % (half, b" " * half)) * 2 + b"0\r\n\r\n", 413, "over")):
        got, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
        assert got == status and headers["Connection"] == "close" and words in err["error"]["message"]


def test_a_body_cut_short_by_the_client_is_refused_not_answered(api):
    """A client that closes its sending side before its body's Content-Length has come (a cancelled upload) gets a 400
    saying so, not the answer to the bytes that came: a body cut at the end of a JSON object was taken whole (a 200)."""
    body = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
    for path in ("/v1/completions", "/v1/models"):
        method = b"POST" if path == "/v1/completions" else b"GET"
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(b"%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s"
                         % (method, path.encode(), len(body) + 10, body))
            sock.shutdown(socket.SHUT_WR)
            r = http.client.HTTPResponse(sock)
            r.begin()
            err = json.loads(r.read())
        assert r.status == 400 and r.getheader("Connection") == "close", (path, err)
        assert err["error"]["message"].startswith(f"the request body ended after {len(body)} of its "
                                                  f"{len(body) + 10} bytes")
    assert post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 1})[0] == 200  # a whole one still is answered


def test_head_requests_and_http_1_0_clients_are_answered(api):
    """HEAD (an uptime monitor's or load balancer's check) gets GET's status and headers, no body. An HTTP/1.0 client
    (nginx proxies with HTTP/1.0 unless told otherwise) gets its stream unchunked, ended by the connection's close,
    with the events and text an HTTP/1.1 client gets."""
    def exchange(request):
        """What the server sends until it closes the connection: (head, body)."""
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(request)
            got = b"".join(iter(lambda: sock.recv(65536), b""))
        head, _, body = got.partition(b"\r\n\r\n")
        return head, body
    for path in (b"/health", b"/"):
        got, empty = exchange(b"HEAD %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path)
        head, body = exchange(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path)
        assert got.startswith(b"HTTP/1.1 200 ") and empty == b"" and body, path
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", got)
        assert length and int(length.group(1)) == len(body), got
    request = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 1, "seed": 3}
    status, whole, _ = post(api, "/v1/completions", request)
    assert status == 200
    data = json.dumps({**request, "stream": True}).encode()
    head, body = exchange(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                          b"\r\n%s" % (len(data), data))
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head and b"Transfer-Encoding" not in head
    events = body.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""] and all(e.startswith(b"data: {") for e in events[:-2]), body
    chunks = [json.loads(e.removeprefix(b"data: "))["choices"][0] for e in events[:-2]]
    assert "".join(c["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_a_body_over_the_limit_gets_its_413(api, monkeypatch):
    """Python's http.client (under requests and the openai client) sends all of a body before it reads the answer: the
    server answered 413 and closed with the body unread, and a 20 MB upload ended in BrokenPipeError or a reset, no
    413. The server now reads and drops what follows the answer, up to serve.DRAIN bytes: no further."""
    # the limit itself is taken: a body of MAX_BODY bytes, its JSON object padded with spaces
    body = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
    assert post(api, "/v1/completions", body + b" " * (serve.MAX_BODY - len(body)))[0] == 200
    for body in (b"x" * (20 << 20), iter([b"x" * (1 << 20)] * 20)):  # a Content-Length, then chunked
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
        conn.close()
    monkeypatch.setattr(serve, "DRAIN", 1 << 20)
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % 10**12)
        sent, block = 0, b"x" * (1 << 20)
        with pytest.raises(OSError):  # the server closes once it has dropped DRAIN bytes, and the connection resets
            while sent < 1 << 30:  # (socket buffers hold some megabytes: a gigabyte is far past them)
                sock.sendall(block)
                sent += len(block)


def test_a_client_that_resets_its_connection_after_a_413_leaves_no_traceback(api, capfd, monkeypatch):
    """After a 413 the server reads and drops what the client still sends (drain); a client that resets the
    connection then (closed with its 413 unread past the head, or on its own timeout) ends that quietly: no
    traceback in the server's output (socketserver's handle_error, or the thread's own), and the server goes on."""
    import struct
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    monkeypatch.setattr(api, "handle_error", lambda request, address: errors.append(sys.exc_info()))
    capfd.readouterr()
    sock = socket.create_connection(api.server_address[:2], timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Length: %d\r\n\r\n" % (serve.MAX_BODY + 1))
    r = http.client.HTTPResponse(sock)
    r.begin()
    assert r.status == 413
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: a reset
    r.close()  # (its file holds the descriptor open past sock.close)
    sock.close()
    assert post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200
    time.sleep(0.2)  # (the drain's thread, past the reset)
    err = capfd.readouterr().err
    assert not errors and "Traceback" not in err, (errors, err)


def test_a_client_waiting_for_100_continue_is_refused_a_body_over_the_limit_at_once(api, monkeypatch):
    """curl sends a body over 1 MiB (so every one over the limit) with "Expect: 100-continue" and waits for the 100
    before uploading it: a body over the limit was told 100 Continue, and got its 413 only once all of it was sent. A
    body within it still gets its 100. The connection ends with the answer, for a client that reads up to its end
    (`Connection: close`), not after the serve.DRAIN_WAIT seconds the server waits for a body still to come, and that
    wait ends when the client closes its side."""
    lingered = []
    linger = serve.Handler.linger

    def timed(self):
        t0 = time.monotonic()
        linger(self)
        lingered.append(time.monotonic() - t0)
    monkeypatch.setattr(serve.Handler, "linger", timed)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nConnection: close\r\n"
    t0 = time.monotonic()
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % (serve.MAX_BODY + 1))
        got = b"".join(iter(lambda: sock.recv(65536), b""))  # up to the server's close, after its answer
    assert time.monotonic() - t0 < serve.DRAIN_WAIT / 2
    wait_for(lambda: lingered, "the server to let the connection go")
    assert lingered[0] < serve.DRAIN_WAIT / 2, lingered
    assert got.startswith(b"HTTP/1.1 413 "), got
    assert json.loads(parse_answer(got)[1])["error"]["code"] == "request_too_large"
    body = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        got = b""
        while b"\r\n\r\n" not in got:
            data = sock.recv(65536)
            assert data, got
            got += data
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        got += b"".join(iter(lambda: sock.recv(65536), b""))
    status, answer = parse_answer(got)
    assert status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 1, got


def test_a_client_waiting_for_100_continue_is_refused_an_unknown_path_or_method_at_once(api):
    """A body sent with "Expect: 100-continue" to a path the server refuses anyway (a typo, a method the path does not
    take) was told 100 Continue first: the client uploaded all of its body before it heard the 404 or 405."""
    for method, path, status, code in (("POST", "/v1/chat/completion", 404, "not_found"),
                                       ("PUT", "/v1/completions", 405, "method_not_allowed"),
                                       ("POST", "/health", 405, "method_not_allowed"),
                                       ("PATCH", "/v1/models/tiny", 405, "method_not_allowed")):
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(b"%s %s HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
                         % (method.encode(), path.encode()))
            got = b""
            while b"\r\n\r\n" not in got:  # the first answer's head: the refusal, not a 100
                data = sock.recv(65536)
                assert data, got
                got += data
            assert got.startswith(b"HTTP/1.1 %d " % status), (method, path, got)
            got += b"".join(iter(lambda: sock.recv(65536), b""))  # up to the server's close, the body never sent
        assert json.loads(parse_answer(got)[1])["error"]["code"] == code, got
    # and a request whose body's end is unclear is refused that first (400), as without the Expect, and its connection
    # closes: its 404 kept it, and what followed on it was answered as a request
    for framing in (b"Content-Length: 0\r\nContent-Length: 5\r\n", b"Bad Header\r\nContent-Length: 5\r\n"):
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(b"POST /v1/chat/completion HTTP/1.1\r\nHost: localhost\r\n"
                         b"Expect: 100-continue\r\n" + framing + b"\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                data = sock.recv(65536)
                assert data, got
                got += data
            with contextlib.suppress(OSError):  # (a server that closed already may reset it)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                got += b"".join(iter(lambda: sock.recv(65536), b""))
        assert got.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in got.split(b"\r\n\r\n")[0], got
        assert got.count(b"HTTP/1.1 ") == 1 and b"header" in got, got


def test_a_request_that_trickles_in_is_cut_off_at_its_deadline(api, monkeypatch):
    """A client that sends a byte at a time, each sooner than the socket's timeout (120 s), restarts that timeout with
    every byte (slowloris): trickling its request line, its headers or its body, it held a thread and a connection
    forever. A request now has serve.REQUEST_WAIT from its first byte to arrive whole, else a 408 closes its connection;
    the server answers others meanwhile and after. A keep-alive connection's idle time, before its first request or
    between two, is not the request's: it keeps the socket's timeout, and a big body sent at once is read whole."""
    monkeypatch.setattr(serve, "REQUEST_WAIT", 2.5)
    address = api.server_address[:2]
    keep_alive = http.client.HTTPConnection(*address, timeout=60)
    keep_alive.request("GET", "/health")
    assert keep_alive.getresponse().read() and keep_alive.sock
    sock_before = keep_alive.sock
    quiet = socket.create_connection(address, timeout=60)  # its request comes once the others are cut off
    starts = [b"GET /v1/mod", b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
              b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"]
    slow = [socket.create_connection(address, timeout=60) for _ in starts]
    t0 = time.monotonic()
    for sock, start in zip(slow, starts):
        sock.sendall(start)
    got, ended, answered = {}, {}, []
    # a byte a second, checked for an answer before each: none is sent at the deadline's instant (2.5 s), which would
    # meet a closed socket
    for tick in range(1, 4 * int(serve.REQUEST_WAIT)):
        time.sleep(max(0.0, t0 + tick - time.monotonic()))
        for i, sock in enumerate(slow):
            if i not in ended and select.select([sock], [], [], 0)[0]:
                got[i] = b"".join(iter(lambda: sock.recv(65536), b""))  # up to the server's close
                ended[i] = time.monotonic() - t0
            elif i not in ended:
                sock.sendall(b"a")
        if len(ended) == len(slow):
            break
        if not answered:  # meanwhile a request that arrives at once is answered
            answered.append(post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0])
    assert answered == [200]
    for i, sock in enumerate(slow):
        sock.close()
        assert i in ended, f"the server still reads {starts[i]!r} trickling in after {4 * serve.REQUEST_WAIT} s"
        assert serve.REQUEST_WAIT <= ended[i] < serve.REQUEST_WAIT + 5, ended  # (+5: a guard, not a speed requirement)
        status, body = parse_answer(got[i])
        assert status == 408 and b"Connection: close" in got[i].split(b"\r\n\r\n")[0], got[i]
        assert "did not arrive whole" in json.loads(body)["error"]["message"]
    # idle longer than the deadline: the keep-alive connection serves its next request, and a new one its first
    assert time.monotonic() - t0 > serve.REQUEST_WAIT
    keep_alive.request("GET", "/health")
    r = keep_alive.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok" and keep_alive.sock is sock_before
    keep_alive.close()
    quiet.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert parse_answer(b"".join(iter(lambda: quiet.recv(65536), b"")))[0] == 200
    quiet.close()
    body = {"prompt": "Hi", "max_tokens": 1, "pad": ""}  # (a field it does not know: ignored)
    body["pad"] = "x" * (serve.MAX_BODY - len(json.dumps(body)))
    status, out, _ = post(api, "/v1/completions", body)
    assert status == 200 and out["usage"]["completion_tokens"] == 1
    # and a connection that sends nothing is still dropped at the socket's timeout, without a word
    monkeypatch.setattr(serve.Handler, "timeout", 0.5)
    with socket.create_connection(address, timeout=60) as sock:
        assert sock.recv(65536) == b""


def test_a_read_that_starts_past_the_requests_deadline_is_late_with_bytes_waiting():
    """A client that keeps sending (a byte now and then, slowloris) always has bytes waiting: each read of its request
    that starts past the request's deadline is late (its 408), however much is there, and the next request on the
    connection (no deadline yet) reads as ever."""
    sock, client = socket.socketpair()
    try:
        client.sendall(b"POST / HTTP/1.1\r\n")
        server = types.SimpleNamespace(silent_while=lambda sock, since=None: contextlib.nullcontext())
        handler = types.SimpleNamespace(connection=sock, server=server, deadline=time.monotonic() - 1)
        reader = serve.RequestReader(None, handler)
        with pytest.raises(serve.LateRequest):
            reader.readinto(bytearray(64))
        handler.deadline = None
        assert reader.readinto(buf := bytearray(64)) == 17 and bytes(buf[:17]) == b"POST / HTTP/1.1\r\n"
    finally:
        sock.close()
        client.close()


def test_a_body_still_coming_at_the_deadline_gets_its_408(api, monkeypatch):
    """A client that sends all of its body before it reads the answer (Python's http.client, so requests and the openai
    client), on a link too slow for REQUEST_WAIT: the server answered 408 and closed with the body still coming, and the
    client's next write met a reset, BrokenPipeError, not the 408. The server now drops what follows its answer, as
    after a 413 (linger)."""
    monkeypatch.setattr(serve, "REQUEST_WAIT", 0.5)

    def trickle():  # 1.5 s of body: it is still coming when the deadline passes
        for _ in range(15):
            time.sleep(0.1)
            yield b"x" * 100
    for headers in ({"Content-Length": "1500"}, {}):  # a Content-Length, then chunked
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
        conn.request("POST", "/v1/completions", trickle(), {"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        assert r.status == 408 and "did not arrive whole" in json.loads(r.read())["error"]["message"]
        conn.close()


def test_the_wait_after_a_stray_crlf_is_idle_time_not_the_requests(api, monkeypatch):
    """A client's stray CRLF after a request (RFC 9112 2.2, which parse_request skips) began the next request's
    REQUEST_WAIT: the connection then sitting idle, as keep-alive ones do, was sent a 408 nobody asked for and closed,
    and an HTTP client that reused it read that 408 as the answer to its next request. The wait for the request after
    it is idle time, with the socket's timeout; that request, once begun, has its deadline."""
    monkeypatch.setattr(serve, "REQUEST_WAIT", 1.0)
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        def answer():  # (status, body) of the next answer, read up to its end and no further
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                data = sock.recv(1)
                assert data, head
                head += data
            body, length = b"", int(re.search(rb"Content-Length: (\d+)", head).group(1))
            while len(body) < length:
                body += sock.recv(length - len(body))
            return int(head.split()[1]), body
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n\r\n")
        assert answer()[0] == 200
        time.sleep(2.5 * serve.REQUEST_WAIT)  # idle, past the deadline
        assert not select.select([sock], [], [], 0)[0], sock.recv(100)  # nothing sent, the connection kept
        # another stray CRLF, then trickling
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n\r\nGET /hea")
        status, body = answer()
        assert status == 200 and json.loads(body)["status"] == "ok"
        t0 = time.monotonic()
        status, body = answer()  # the request begun after the stray CRLF has its deadline
        assert status == 408 and serve.REQUEST_WAIT * 0.9 <= time.monotonic() - t0 < serve.REQUEST_WAIT + 5


def test_a_connection_idle_after_a_stray_crlf_is_closed_unanswered_at_its_idle_timeout(api, monkeypatch):
    """Idle past the socket's timeout after a stray CRLF, as after any answer: the connection is closed then, with
    nothing sent (no 408 for a request that never began) and no traceback, as an idle keep-alive connection is; not
    after a second wait as long (the request line's read, whose timeout the standard library takes for the end)."""
    monkeypatch.setattr(serve.Handler, "timeout", 1.0)
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    monkeypatch.setattr(api, "handle_error", lambda request, address: errors.append(sys.exc_info()))
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n\r\n")
        got = b""
        while not got.rstrip().endswith(b"}"):  # (the answer's JSON body)
            got += sock.recv(1 << 16)
        assert got.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert sock.recv(1 << 16) == b""  # closed, nothing more sent
        assert 0.8 < time.monotonic() - t0 < 1.7
    time.sleep(0.2)  # (its thread, past the close)
    assert not errors, errors


def test_context_length_message_reads_right(api, enc):
    # one sentence for one prompt and for several messages (it said "the prompt take 1")
    status, err, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": BLOCK})
    assert status == 400 and err["error"]["message"] == (
        f"this model's context holds {BLOCK} tokens, too few for the prompt plus max_tokens: 1 + {BLOCK} "
        f"= {BLOCK + 1}; "
        "shorten the input or lower max_tokens")
    n = len(render_chat(enc, MSG, add_generation_prompt=True)[0])
    status, err, _ = post(api, "/v1/chat/completions", {"messages": MSG, "max_tokens": BLOCK})
    assert status == 400 and err["error"]["message"] == (
        f"this model's context holds {BLOCK} tokens, too few for the messages plus max_tokens: {n} + {BLOCK} = "
        f"{n + BLOCK}; shorten the input or lower max_tokens")
    # a chat whose last message leaves less than the default reply: the reply takes what is left (it was told to
    # lower a max_tokens it never sent)
    long = [{"role": "user", "content": "word " * (BLOCK // 2 + 10)}]
    n = len(render_chat(enc, long, add_generation_prompt=True)[0])
    assert n < BLOCK < n + gen.reserve_for(api.model, api.max_tokens)
    status, body, _ = post(api, "/v1/chat/completions", {"messages": long})
    assert status == 200 and body["usage"]["prompt_tokens"] == n and body["usage"]["completion_tokens"] <= BLOCK - n
    # a prompt that fills the context alone, no max_tokens given: not "lower max_tokens" (the server's default 1)
    n = len(enc.encode("word " * 100))
    status, err, _ = post(api, "/v1/completions", {"prompt": "word " * 100})
    assert status == 400 and err["error"]["message"] == (
        f"this model's context holds {BLOCK} tokens, the prompt takes {n} of them, leaving none for a reply; shorten "
        f"the input")
    # messages that fill it exactly, no max_tokens given: refused as that, not answered with an empty reply
    full = [{"role": "user", "content": "word" + " word" * 54}]
    assert len(render_chat(enc, full, add_generation_prompt=True)[0]) == BLOCK
    status, err, _ = post(api, "/v1/chat/completions", {"messages": full})
    assert status == 400 and err["error"]["message"] == (
        f"this model's context holds {BLOCK} tokens, the messages take {BLOCK} of them, leaving none for a reply; "
        f"shorten the input")
    # a completion without max_tokens, the server's (256) over the context: it takes what the prompt leaves
    status, body, _ = post(api, "/v1/completions", {"prompt": "Once upon a time"})
    assert api.max_tokens > BLOCK and status == 200, body
    assert api.worker.recent[-1]["max_tokens"] == BLOCK - len(enc.encode("Once upon a time"))

# -----------------------------------------------------------------------------
# concurrency and hung-up clients

def test_twenty_concurrent_clients(api):
    def ask(i):
        kwargs = dict(model="tiny", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=6,
                      temperature=1, seed=i)
        if i % 2:
            chunks = list(client(api).chat.completions.create(stream=True, **kwargs))
            return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason
        r = client(api).chat.completions.create(**kwargs)
        return r.choices[0].message.content, r.choices[0].finish_reason

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(20)))
    # every client got its own answer, as it would alone: no tokens cross between the queued requests
    for i, (text, finish) in enumerate(answers):
        ids = render_chat(api.enc, [{"role": "user", "content": f"question {i}"}], add_generation_prompt=True)[0]
        assert (text, finish) == expected(api, ids, 6, gen.CHAT_STOPS, seed=i)[:2]


def read_until_text(sock):
    """Read a streamed response until its first chunk of generated text."""
    seen = b""
    while b'"text": "' not in seen.replace(b'"text": ""', b""):
        data = sock.recv(4096)
        assert data, seen
        seen += data
    return seen


def wait_for(condition, what, limit=60):
    deadline = time.monotonic() + limit  # a guard against a hang, not a speed requirement
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def completion_request(**body):
    body = json.dumps({"prompt": "la", **body}).encode()
    return b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class XnuPoll:
    """poll() as macOS's kernel answers it (XNU's poll_callback, over kqueue: EV_EOF is POLLHUP), played with Linux's
    POLLRDHUP: end-of-file read is POLLHUP whether the client closed its sending side alone or both. (A reset there
    is no POLLERR but the socket's error, which recv raises; Linux's recv says end-of-file instead, so its POLLERR
    stays here.)"""
    real = getattr(select, "poll", None)

    def __init__(self):
        self.poller = self.real()

    def register(self, fd, events):
        self.poller.register(fd, events | select.POLLRDHUP)

    def poll(self, timeout=None):
        return [(fd, ev & ~select.POLLRDHUP | (select.POLLHUP if ev & select.POLLRDHUP else 0))
                for fd, ev in self.poller.poll(timeout)]


@pytest.fixture(params=["this machine's poll", "macOS's poll"])
def polls(request, monkeypatch):
    """Each test with it runs twice: with this machine's poll(), and with macOS's (XnuPoll)."""
    if request.param == "macOS's poll":
        if not hasattr(select, "POLLRDHUP"):
            pytest.skip("plays macOS's poll with Linux's POLLRDHUP")
        monkeypatch.setattr(select, "poll", XnuPoll)


def test_hung_up_clients_free_the_worker(enc, polls):
    # 0.05 s a token: 60 tokens would take 3 s, so a cancelled stream stops far short of them
    api = start(la_model(enc, delay=0.05), enc, name="la")
    try:
        streaming = socket.create_connection(api.server_address[:2])
        streaming.sendall(completion_request(max_tokens=60, stream=True))
        assert b"200 OK" in read_until_text(streaming)
        # a second client queues behind it, then hangs up before its turn
        waiting = socket.create_connection(api.server_address[:2])
        waiting.sendall(completion_request(max_tokens=60))
        wait_for(lambda: len(api.worker.jobs.queued()) == 1, "the second request to queue")
        waiting.close()
        wait_for(lambda: api.worker.jobs.queued()[0].cancelled.is_set(), "the server to notice the second client left")
        streaming.close()
        wait_for(lambda: len(api.worker.recent) == 2, "both requests to end")
        first, second = api.worker.recent
        assert first["finish_reason"] == "cancelled" and 1 <= first["completion_tokens"] < 60
        assert second["finish_reason"] == "cancelled" and second["completion_tokens"] == 0  # never generated
        # the worker is free for the next client
        status, body, _ = post(api, "/v1/completions", {"prompt": "la", "max_tokens": 3})
        assert status == 200 and body["choices"][0]["text"] == " la la la"
    finally:
        api.close()


def parse_answer(data):
    """The final answer in data, the bytes a connection received (interim 1xx answers skipped): (status, body)."""
    class Unclosable(io.BytesIO):
        def close(self):
            pass

    r = http.client.HTTPResponse(types.SimpleNamespace(makefile=lambda *a, **k: Unclosable(data)))
    r.begin()
    return r.status, r.read()


def test_a_client_that_closes_its_sending_side_gets_its_answer(enc, polls):
    """A client may close its sending side once its request is sent and wait for the answer (`nc -N`, a proxy): that
    end-of-file was taken for a client gone, and the request dropped unanswered, streamed or not. (A client that hangs
    up is told from it by the reset its socket answers to what the server writes:
    test_hung_up_clients_free_the_worker.)"""
    gate = threading.Event()  # the worker holds the request at its first token until the server has seen end-of-file
    api = start(la_model(enc, gate=gate), enc, name="la")
    try:
        for stream in (False, True):
            gate.clear()
            sock = socket.create_connection(api.server_address[:2], timeout=60)
            sock.sendall(completion_request(max_tokens=3, temperature=0, stream=stream))
            sock.shutdown(socket.SHUT_WR)
            wait_for(lambda: api.worker.current is not None, "the request to start")
            job, got = api.worker.current, [b""]

            def server_saw_the_end():
                # it writes something past a stream's headers (an answer's 100 Continue, an event stream's comment)
                # once it has read end-of-file; the server that dropped the request cancelled it instead
                if select.select([sock], [], [], 0)[0]:
                    data = sock.recv(65536)
                    got[0] += data
                    if not data:
                        return True
                return job.cancelled.is_set() or (got[0].partition(b"\r\n\r\n")[2] if stream else got[0]) != b""
            wait_for(server_saw_the_end, "the server to read the client's end-of-file")
            gate.set()
            got = got[0] + b"".join(iter(lambda: sock.recv(65536), b""))  # up to the server's close, after the answer
            sock.close()
            status, body = parse_answer(got)
            assert status == 200, got
            if stream:
                events = [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e.startswith("data: ")]
                assert events[-1] == "[DONE]" and "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) \
                    == " la la la", got
            else:
                assert json.loads(body)["choices"][0]["text"] == " la la la", got
            assert api.worker.recent[-1]["finish_reason"] == "length"
    finally:
        gate.set()
        api.close()


def test_a_client_that_reads_a_stream_slowly_is_dropped_and_its_reply_stopped(enc, monkeypatch):
    """The socket's timeout bounds each write alone, and each event of a stream is one: a client that read a little
    now and then, once the socket's buffers were full, held its thread and connection 120 s an event, hours for a long
    reply, and went on being generated for. An answer now waits serve.WRITE_WAIT seconds in all for its client to take
    what is written: past them the connection is reset and the reply stops at its next token. Closed gracefully
    instead, the server's kernel kept the unsent answer (MBs of a reply cut short anyway), and sent it on to a client
    that read on, past the server's close."""
    monkeypatch.setattr(serve, "WRITE_WAIT", 1.0)

    def big_events(*args, **kwargs):  # 16 KB events, 3 MB a second: far faster than the client below reads
        for _ in range(3000):
            time.sleep(0.005)
            yield 1, "x" * (16 << 10)
    monkeypatch.setattr(serve, "stream_completion", big_events)
    api = start(tiny_model(enc), enc)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: a small window)
        sock.connect(api.server_address[:2])
        sock.settimeout(60)
        sock.sendall(completion_request(max_tokens=60, stream=True))
        t0 = time.monotonic()
        while not api.worker.recent and time.monotonic() - t0 < 10:  # 10 KB a second, so every write makes progress
            time.sleep(0.1)
            assert sock.recv(1024)
        assert api.worker.recent and api.worker.recent[-1]["finish_reason"] == "cancelled", api.worker.recent
        with pytest.raises(ConnectionResetError):  # what this side's buffer held, then the server's reset
            while sock.recv(1 << 16):
                pass
        sock.close()
    finally:
        api.close()


def test_a_write_into_buffers_a_client_left_full_waits_what_is_left_of_write_wait_then_times_out():
    """The test above's client reads a little now and then; one that has stopped reading leaves the buffers full, and
    the next write meets them so (send: BlockingIOError): it waits what is left of the answer's WRITE_WAIT, and once
    that is spent a write times out at once, naming the wait, rather than raising BlockingIOError or blocking."""
    sock, client = socket.socketpair()  # client: a peer that reads nothing
    try:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.send(b"x" * (1 << 16))
        sock.settimeout(None)
        handler = types.SimpleNamespace(connection=sock, write_left=0.2)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            serve.ReplyWriter(handler).write(b"y" * 10)
        assert 0.15 < time.monotonic() - t0 < 10 and handler.write_left <= 0.05
        with pytest.raises(TimeoutError, match=f"the client took no more of its answer in {serve.WRITE_WAIT} s"):
            serve.ReplyWriter(handler).write(b"y" * 10)
        assert sock.gettimeout() is None  # the connection's own timeout is kept
    finally:
        sock.close()
        client.close()


def test_halt_stops_the_reply_being_generated_and_an_idle_worker(enc):
    """Ctrl-C: serve.py waits (Worker.halt) for the worker to leave torch before it exits: the reply being generated
    stops at its next token rather than running on to max_tokens, and an idle worker wakes and leaves at once."""
    api = start(la_model(enc, delay=0.2), enc, name="la")  # 60 tokens: 12 s
    try:
        sock = socket.create_connection(api.server_address[:2])
        sock.sendall(completion_request(max_tokens=60, stream=True))
        read_until_text(sock)
        t0 = time.monotonic()
        api.worker.halt(timeout=30)
        assert not api.worker.is_alive() and time.monotonic() - t0 < 5
        (done,) = api.worker.recent
        assert done["finish_reason"] == "cancelled" and done["completion_tokens"] < 60
        sock.close()
    finally:
        api.close()
    idle = start(tiny_model(enc), enc)
    try:
        t0 = time.monotonic()
        idle.worker.halt(timeout=30)
        assert not idle.worker.is_alive() and time.monotonic() - t0 < 5
    finally:
        idle.close()


def test_requests_under_way_when_the_server_stops_are_answered(enc):
    """Ctrl-C or SIGTERM (ApiServer.halt, which then waits for these answers: test_ctrl_c_while_a_reply_streams_stops_
    cleanly) while requests are under way: the reply being generated stops at its next token and the waiting ones never
    start, as before, but each client is told why: a 503 server_shutting_down, or that error as the last event of a
    stream already begun. Each got a dropped connection when the process exited. Each connection then closes (a
    stream's, which cannot say Connection: close, after its last chunk): a client's next request on it was dropped."""
    def ask(stream):
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "la", "max_tokens": 8, "stream": stream}))
        r = conn.getresponse()
        out = r.status, r.read(), r.getheader("Connection")  # (a stream read to its last chunk)
        try:  # (http.client drops its socket after an answer that says Connection: close)
            closed = conn.sock is None or conn.sock.recv(1) == b""  # the server's close; left open, a timeout
        except TimeoutError:
            closed = False
        conn.close()
        return (*out, closed)

    for running_streams in (False, True):
        gate = threading.Event()  # the worker stays inside its first forward pass until the halt has begun
        api = start(la_model(enc, gate=gate), enc, name="la")
        try:
            with ThreadPoolExecutor(3) as pool:
                running = pool.submit(ask, running_streams)
                wait_for(lambda: api.worker.current is not None, "the first request to start")
                waiting = [pool.submit(ask, stream) for stream in (False, True)]
                wait_for(lambda: len(api.worker.waiting) == 2, "two requests to queue")
                halt = threading.Thread(target=api.worker.halt, kwargs=dict(timeout=30))
                halt.start()
                wait_for(api.worker.halted.is_set, "the halt to begin")
                gate.set()
                halt.join(60)
                answers = [running.result(), *(f.result() for f in waiting)]
                assert ask(False)[0] == 503  # and a request that comes during the wait
            for (status, body, connection, closed), stream in zip(answers, (running_streams, False, True)):
                assert closed, body
                if stream:
                    events = [e for e in body.decode().split("\n\n") if e.startswith("data: ")]
                    assert status == 200 and json.loads(events[-1].removeprefix("data: "))["error"]["code"] \
                        == "server_shutting_down", body
                else:
                    err = json.loads(body)["error"]
                    assert status == 503 and err["code"] == "server_shutting_down", body
                    assert err["message"].startswith("the server is shutting down") and connection == "close"
            assert [r["finish_reason"] for r in api.worker.recent] == ["cancelled"]  # the waiting two never started
        finally:
            gate.set()
            api.close()


def test_a_stop_that_waits_for_the_reply_being_generated_says_so_at_once(enc):
    """Ctrl-C while a big model is inside a forward pass (seconds): the server said nothing until the worker had left
    torch, and the Ctrl-C seemed lost. It now says at once, in a line before the worker's own for that reply, that it
    waits for it; a server with no reply under way stops without that line."""
    lines = []
    gate = threading.Event()  # the worker stays inside its first forward pass until the test has read the line
    api = start(la_model(enc, gate=gate), enc, name="la", log=lines.append)
    try:
        sock = socket.create_connection(api.server_address[:2], timeout=60)
        sock.sendall(completion_request(max_tokens=4))
        wait_for(lambda: api.worker.current is not None, "the reply to start")
        api.shutdown()  # Ctrl-C's way: serve_forever leaves, then ApiServer.halt
        halt = threading.Thread(target=api.halt, kwargs=dict(timeout=30))
        halt.start()
        wait_for(lambda: lines, "the server to say it stops", limit=10)  # (the gate holds the worker for 60 s)
        assert api.worker.is_alive() and lines == [
            "stopping: waiting for the reply being generated to stop at its next token (Ctrl-C or SIGTERM again exits "
            "at once)"]
        gate.set()
        halt.join(60)
        assert len(lines) == 2 and ", cancelled, " in lines[1], lines
        sock.close()
    finally:
        gate.set()
        api.close()
    lines.clear()
    idle = start(tiny_model(enc), enc, log=lines.append)
    idle.shutdown()
    assert idle.halt(timeout=30) and lines == []
    idle.close()


def test_a_reply_is_a_line_in_the_log_its_tokens_counted(api, enc):
    """Each reply is a line: its prompt's tokens and the reply's, one token said as one ("+ 1 tokens" was said)."""
    lines, log = [], api.worker.log
    api.worker.log = lines.append
    try:
        for max_tokens, said in ((1, " + 1 token, "), (2, " + 2 tokens, ")):
            body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0}
            status, reply, _ = post(api, "/v1/completions", body)
            assert status == 200 and reply["usage"]["completion_tokens"] == max_tokens
            wait_for(lambda: lines, "the reply's line")
            assert said in lines.pop(), said
    finally:
        api.worker.log = log


def test_a_refused_request_is_a_line_in_the_log(enc):
    """A request answered with an error (a context too long, a bad field, a path not served) is a line in the log, as
    each reply is: it left nothing there, and the operator no clue why a client got no answer. The path is the
    client's, escaped (a terminal acts on its control characters)."""
    lines = []
    api = start(tiny_model(enc), enc, log=lines.append)
    try:
        status, body, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": -1})
        assert status == 400 and lines == [f"POST /v1/completions: 400 {body['error']['message']}"], lines
        status, _, _ = raw(api, b"GET /\x1b[2Jgone HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 404 and len(lines) == 2 and lines[1].startswith("GET /\\x1b[2Jgone: 404 "), lines
        status, _, _ = raw(api, b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # the standard library's refusal
        assert status == 501 and len(lines) == 3 and lines[2].startswith("BREW /: 501 "), lines
        # HEAD is answered as GET is, but its refusals name it: they said "no such endpoint GET /nowhere" and
        # "takes POST, not GET", a method the client never sent
        for path, said in (("/nowhere", "404 no such endpoint HEAD /nowhere:"),
                           ("/v1/completions", "405 /v1/completions takes POST, not HEAD")):
            status, _, _ = head(api, "HEAD", path, {})
            assert status == int(said[:3]) and lines[-1].startswith(f"HEAD {path}: {said}"), lines
    finally:
        api.close()


def test_a_stop_at_the_instant_the_worker_takes_up_a_reply_says_it_waits_for_it(enc):
    """The worker set current (the reply being generated, which halt reads to say it waits) outside the lock: a Ctrl-C
    between its check for a halt and that assignment found no reply, said nothing, and the stop then waited without a
    word for the reply's first forward pass (seconds for a long prompt on a big model). Here the halt comes at that
    very instant, and says it waits for the reply."""
    lines, halts = [], []
    gate = threading.Event()  # the worker stays inside its first forward pass until the halt has said its piece

    class Worker(serve.Worker):
        @property
        def current(self):
            return vars(self).get("current")

        @current.setter
        def current(self, job):
            if job is not None and not halts:  # Ctrl-C now, as the worker takes up the job
                halts.append(threading.Thread(target=self.halt, kwargs=dict(timeout=0)))
                halts[0].start()
                halts[0].join(1)  # done, unless the worker holds the lock halt takes (it goes on once let go)
            vars(self)["current"] = job

    worker = Worker(la_model(enc, gate=gate), enc, torch.float32, 4, lines.append)
    worker.start()
    try:
        job = serve.Job("text", enc.encode("la"), 4, (), [], {}, None, False, False)
        worker.submit(job)
        wait_for(lambda: halts and not halts[0].is_alive(), "the halt")
        gate.set()
        assert job.events.get(timeout=60)[1].code == "server_shutting_down"
        worker.join(60)
        assert not worker.is_alive() and [r["finish_reason"] for r in worker.recent] == ["cancelled"]
        # the reply was begun (its forward pass ran), so the stop said it waits for it, before the reply's own line
        assert len(lines) == 2 and lines[0].startswith("stopping: waiting for the reply being generated"), lines
    finally:
        gate.set()
        worker.halt(timeout=10)


def test_the_stop_waits_for_the_answers_under_way(enc, monkeypatch):
    """ApiServer.halt returns, and serve.py exits, once the requests under way have their answers: the worker's
    "shutting down" reached a handler that was still to write it when the process exited, and the client got a dropped
    connection. A handler slow to write (a busy machine) shows it: its answer has gone when halt returns."""
    gate, sent = threading.Event(), []
    send_json = serve.Handler.send_json

    def slow_send(self, status, *a, **k):
        time.sleep(0.5)
        send_json(self, status, *a, **k)
        sent.append(status)
    monkeypatch.setattr(serve.Handler, "send_json", slow_send)
    api = start(la_model(enc, gate=gate), enc, name="la")
    try:
        sock = socket.create_connection(api.server_address[:2], timeout=60)
        sock.sendall(completion_request(max_tokens=4))
        wait_for(lambda: api.worker.current is not None, "the request to start")
        threading.Thread(target=lambda: (api.worker.halted.wait(60), gate.set())).start()  # once the stop has begun
        api.shutdown()  # Ctrl-C's way: serve_forever leaves, then ApiServer.halt
        assert api.halt(timeout=30)
        assert sent == [503]
        status, body = parse_answer(b"".join(iter(lambda: sock.recv(65536), b"")))
        assert status == 503 and json.loads(body)["error"]["code"] == "server_shutting_down"
        sock.close()
    finally:
        gate.set()
        api.close()


def test_health_says_stopping_once_the_stop_has_begun(enc):
    """A load balancer asks /health (on a keep-alive connection, which outlives the listening socket) to know where to
    send requests: it said ok while the server was stopping and refusing every request with 503, and then still for an
    instant, between the listening socket's close and the worker's halt."""
    api = start(tiny_model(enc), enc)
    conns = [http.client.HTTPConnection(*api.server_address[:2], timeout=60) for _ in range(2)]

    def health(conn):
        conn.request("GET", "/health")
        r = conn.getresponse()
        return r.status, json.loads(r.read())["status"], r.getheader("Connection")

    during = []
    server_close = api.server_close

    def closing():  # the listening socket's close: asked at that instant
        if not during:  # (once: api.close closes it again)
            during.append(health(conns[1]))
        server_close()

    try:
        assert [health(conn)[:2] for conn in conns] == [(200, "ok")] * 2
        api.server_close = closing
        api.shutdown()  # Ctrl-C's way: serve_forever leaves, then ApiServer.halt
        assert api.halt(timeout=30)
        assert during == [health(conns[0])] == [(503, "stopping", "close")]
    finally:
        for conn in conns:
            conn.close()
        api.close()


@pytest.mark.skipif(not hasattr(os, "sysconf") or os.sysconf("SC_OPEN_MAX") < 1200, reason="needs 1,200 open files")
def test_a_connection_past_descriptor_1023_is_answered(api):
    """A server holding a thousand connections hands out descriptors past 1023, which select() refuses (FD_SETSIZE):
    the hung-up check read every request on one as its client gone, and closed it unanswered."""
    held = []
    try:
        while not held or held[-1] < 1100:  # the lowest free descriptors first: the next sockets get ones past 1100
            held.append(os.open(os.devnull, os.O_RDONLY))
        status, body, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
    finally:
        for fd in held:
            os.close(fd)


def test_a_server_out_of_descriptors_waits_for_one_instead_of_spinning(api, monkeypatch):
    """A client holding as many connections as ulimit -n allows: each accept fails (EMFILE) while the next connection
    keeps the listening socket readable, and serve_forever spun a core on the failures (2.4 CPU seconds in 3)."""
    accepts = []

    def out_of_descriptors(self):
        accepts.append(time.monotonic())
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socketserver.TCPServer, "get_request", out_of_descriptors)
    with socket.create_connection(api.server_address[:2], timeout=60) as sock:  # waits to be accepted
        wait_for(lambda: accepts, "an accept")
        time.sleep(1)
        monkeypatch.undo()  # a descriptor is free again: the waiting connection is served
        assert len(accepts) <= 10, f"{len(accepts)} accepts in a second"
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200")


def busy(api, pool, n=1):
    """n completion requests, sent from pool's threads to api's worker held by its gate (la_model): one generating,
    the others queued. Their connections are being answered, never silent, so a new connection at --max_connections
    takes none of their places (ApiServer.evict). Futures of (status, body, headers), which come once the gate opens."""
    asked = []
    for _ in range(n):
        asked.append(pool.submit(post, api, "/v1/completions", {"prompt": "la", "max_tokens": 1}))
        wait_for(lambda: (api.worker.current is not None) + len(api.worker.waiting) == len(asked), "a request to queue")
    return asked


def wait_for_a_place(api):
    """Until a new connection to api is served (200), a closed one having given its place back."""
    def served():
        with contextlib.suppress(OSError):
            return raw(api, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 200
    wait_for(served, "a closed connection to give its place back")


def test_each_client_gets_its_turn_though_another_queued_many_first(enc):
    """Requests were served in arrival order: a classroom's notebook that sent sixty at once from a thread pool held
    every student behind all sixty (17 s for a 30-token reply from make chat-demo's model on a CPU). Each client,
    by its address, now gets a turn in turn: a student waits behind one of the notebook's, besides the reply being
    generated. (The clients here connect from 127.0.0.1 and 127.0.0.2, both this machine's loopback.)"""
    gate = threading.Event()  # the worker stays in the notebook's first request until the gate opens
    api = start(la_model(enc, gate=gate), enc, name="la")
    served = []
    api.worker.say = lambda line: served.append(int(re.search(r"\+ (\d+) token", line).group(1)))

    def ask(source, max_tokens):  # the reply's length names the request in the log
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60, source_address=(source, 0))
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "la", "max_tokens": max_tokens}))
        r = conn.getresponse()
        return r.status, r.read()

    try:
        with ThreadPoolExecutor(5) as pool:
            answers = [pool.submit(ask, "127.0.0.1", 1)]
            wait_for(lambda: api.worker.current is not None, "the notebook's first request to start")
            for n in (2, 3, 4):
                answers.append(pool.submit(ask, "127.0.0.1", n))
                wait_for(lambda: len(api.worker.waiting) == n - 1, "the notebook's next request to queue")
            answers.append(pool.submit(ask, "127.0.0.2", 5))  # the student's
            wait_for(lambda: len(api.worker.waiting) == 4, "the student's request to queue")
            gate.set()
            assert all(a.result()[0] == 200 for a in answers)
        assert served == [1, 2, 5, 3, 4], served
    finally:
        gate.set()
        api.close()


def test_a_stream_waiting_its_turn_says_how_many_requests_are_ahead(enc):
    """A class's students saw "..." for as long as the others' replies took, with no word that theirs was coming. A
    stream still queued says how many requests the worker serves first, as an event stream's comment when it changes
    (the chat page shows it); OpenAI's client skips it."""
    gate = threading.Event()  # the worker stays in the notebook's first request until the gate opens
    api = start(la_model(enc, gate=gate), enc, name="la")

    def ask(source, stream=False):
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60, source_address=(source, 0))
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "la", "max_tokens": 2, "stream": stream}))
        return conn.getresponse().read()

    try:
        with ThreadPoolExecutor(3) as pool:
            notebook = [pool.submit(ask, "127.0.0.2")]
            wait_for(lambda: api.worker.current is not None, "the notebook's first request to start")
            notebook.append(pool.submit(ask, "127.0.0.2"))
            wait_for(lambda: len(api.worker.waiting) == 1, "the notebook's next request to queue")
            student = pool.submit(ask, "127.0.0.1", True)
            wait_for(lambda: len(api.worker.waiting) == 2, "the student's request to queue")
            time.sleep(3 * serve.POLL)  # (a comment each poll, were it not said once)
            gate.set()
            body = student.result().decode()
            assert all(a.result() for a in notebook)
        # the notebook's running request and its next one, whose client had its turn first: 2, then 1, said once each
        comments = [line for line in body.split("\n") if line.startswith(":")]
        assert comments[:1] == [": waiting, 2 ahead"] and comments.count(": waiting, 2 ahead") == 1, body
        assert set(comments) <= {": waiting, 2 ahead", ": waiting, 1 ahead"}, body
        assert body.rstrip().endswith("data: [DONE]")
        # OpenAI's client reads past the comments to the reply
        gate.clear()
        client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(ask, "127.0.0.2")
            wait_for(lambda: api.worker.current is not None, "a request to start")
            chunks = pool.submit(lambda: [c.choices[0].text for c in client.completions.create(
                model="la", prompt="la", max_tokens=2, stream=True)])
            wait_for(lambda: len(api.worker.waiting) == 1, "the client's request to queue")
            time.sleep(3 * serve.POLL)
            gate.set()
            assert "".join(chunks.result()) == " la la" and first.result()
    finally:
        gate.set()
        api.close()


def test_a_request_cancelled_while_queued_takes_no_turn_of_its_clients():
    """A request whose client hung up while it waited (the chat page's Stop, a notebook interrupted) is skipped by the
    worker at no cost, and took its client's turn with it: the client's next request went behind another client's
    reply (seconds, on a big model). Its next is served in its place."""
    turns = serve.Turns()
    jobs = [types.SimpleNamespace(client=name[0], cancelled=threading.Event(), name=name)
            for name in ("a1", "b1", "a2", "b2")]
    for job in jobs:
        turns.put(job)
    jobs[1].cancelled.set()  # b1: its client gone
    assert [turns.get().name for _ in jobs] == ["a1", "b1", "b2", "a2"]
    turns.put(None)
    assert turns.get() is None and turns.empty()


def test_a_full_queue_takes_a_place_from_the_client_with_the_most_for_another(enc):
    """A notebook that filled the queue from a thread pool kept every student out with 503s for as long as it kept it
    full. A request that finds the queue full takes the place of the newest of the client with the most waiting, two
    more than its own client's: that one gets the 503 (OpenAI's client retries it after Retry-After)."""
    gate = threading.Event()  # the worker stays in the notebook's first request until the gate opens
    lines = []
    api = start(la_model(enc, gate=gate), enc, name="la", max_queue=2, log=lines.append)

    def ask(source, max_tokens):  # the reply's length names the request
        conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60, source_address=(source, 0))
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "la", "max_tokens": max_tokens}))
        r = conn.getresponse()
        return r.status, json.loads(r.read())

    try:
        with ThreadPoolExecutor(5) as pool:
            notebook = [pool.submit(ask, "127.0.0.1", 1)]
            wait_for(lambda: api.worker.current is not None, "the notebook's first request to start")
            for n in (2, 3):
                notebook.append(pool.submit(ask, "127.0.0.1", n))
                wait_for(lambda: len(api.worker.waiting) == n - 1, "the notebook's next request to queue")
            student = pool.submit(ask, "127.0.0.2", 4)
            wait_for(lambda: notebook[2].done() or student.done(), "the full queue to refuse one of them")
            assert not student.done(), student.result()
            status, err = notebook[2].result()  # the notebook's newest gave its place
            assert status == 503 and err["error"]["code"] == "overloaded", err
            wait_for(lambda: len(api.worker.waiting) == 2, "the student's request to queue")
            # the notebook has one waiting, the student one: a third client's finds no place to take
            status, err = ask("127.0.0.3", 5)
            assert status == 503 and err["error"]["code"] == "overloaded", err
            gate.set()
            assert notebook[0].result()[0] == notebook[1].result()[0] == student.result()[0] == 200
        assert any("its place in the full queue given to another client's request (--max_queue 2)" in line
                   for line in lines), lines
    finally:
        gate.set()
        api.close()


def test_full_queue_gets_503(enc):
    gate = threading.Event()  # the worker stays in its first request until the gate opens
    api = start(la_model(enc, gate=gate), enc, name="la", max_queue=1)
    try:
        body = {"prompt": "la", "max_tokens": 4}
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, api, "/v1/completions", body)
            wait_for(lambda: api.worker.current is not None, "the first request to start")
            # a client that hangs up while waiting gives its place back at once, not when the worker reaches it
            gone = socket.create_connection(api.server_address[:2])
            gone.sendall(completion_request(max_tokens=4))
            wait_for(lambda: len(api.worker.waiting) == 1, "the hung-up request to queue")
            assert post(api, "/v1/completions", body)[0] == 503
            gone.close()
            wait_for(lambda: not api.worker.waiting, "the server to notice the client left")
            queued = pool.submit(post, api, "/v1/completions", body)
            wait_for(lambda: len(api.worker.waiting) == 1, "the second request to queue")
            status, err, headers = post(api, "/v1/completions", body)
            assert status == 503 and err["error"]["code"] == "overloaded"
            # its line in the log names what the operator raises, as the line on --max_connections does
            assert err["error"]["message"] == "the server is busy: its queue is full (1 waiting, --max_queue); " \
                                              "retry shortly", err
            assert headers["Retry-After"] == "1"  # OpenAI's clients wait it (else their own backoff)
            gate.set()
            assert running.result()[0] == queued.result()[0] == 200  # the queued request is served, not dropped
    finally:
        gate.set()
        api.close()


def test_connections_past_the_limit_get_503(enc, monkeypatch):
    """Each connection holds a thread: a client that opened thousands held as many threads and descriptors, with no
    limit. Past max_connections (--max_connections), all of them being answered, a connection is answered at once, 503
    overloaded in the error body of the queue's 503, and closed; the connections held are served on, and one that
    closes gives its place back. The log says so, at the first and then once a minute with the count since."""
    lines, gate = [], threading.Event()
    api = start(la_model(enc, gate=gate), enc, name="la", max_connections=2, cors=["*"], log=lines.append)
    try:
        pool = ThreadPoolExecutor(2)
        held = busy(api, pool, 2)
        for _ in range(3):
            status, err, headers = raw(api, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert status == 503 and err["error"]["code"] == "overloaded" and headers["Connection"] == "close", err
            assert "2 connections" in err["error"]["message"] and headers["Access-Control-Allow-Origin"] == "*"
            assert headers["Retry-After"] == "1"
        said = ("connection(s) turned away (503, or closed unanswered past twice as many) since the last "
                "such line: 2 are "
                "open (--max_connections)")
        assert lines == [f"1 {said}"], lines
        wait_for(lambda: api.refusals._value == 2, "the connections turned away to be let go")
        status, h, _ = head(api, "OPTIONS", "/v1/completions", {"Origin": "http://any.example",
                                                                "Access-Control-Request-Method": "POST"})
        assert status == 204 and h["access-control-allow-origin"] == "*"  # its preflight too (next test)
        # a body sent, never read: the client still writes it (past the sockets' buffers) when its answer comes
        monkeypatch.setattr(serve, "AT_LIMIT_LOG", 0)  # (the minute has passed)
        status, err, _ = post(api, "/v1/completions", b"x" * (8 << 20))
        assert status == 503 and err["error"]["code"] == "overloaded"
        assert lines[1] == f"4 {said}", lines  # the two after the first, the preflight, and this one
        wait_for(lambda: api.refusals._value == 2, "the server to let the connections turned away go, "
                                                   "their clients gone")
        gate.set()
        assert [asked.result()[0] for asked in held] == [200, 200]  # (and their connections closed)
        wait_for_a_place(api)
    finally:
        gate.set()
        api.close()


def test_the_line_on_connections_past_the_limit_counts_both_those_turned_away_and_those_closed(monkeypatch):
    """Past --max_connections the log says, at the first and then once a AT_LIMIT_LOG, how many connections were
    turned away and how many waiting for a request were closed to make room since its last such line: an operator
    whose clients got 503s, or lost their idle connections, learns both, and that --max_connections is the cause."""
    lines = []
    api = types.SimpleNamespace(turned_away=0, made_room=0, at_limit_said=float("-inf"), max_connections=4,
                                worker=types.SimpleNamespace(say=lines.append))

    def note(made_room=False):
        serve.ApiServer.note_at_limit(api, made_room)
    note(made_room=True)
    for made_room in (False, True, False, False):  # within the minute: counted, not said
        note(made_room)
    limit = "since the last such line: 4 are open (--max_connections)"
    assert lines == [f"1 waiting for a request closed to make room {limit}"]
    monkeypatch.setattr(serve, "AT_LIMIT_LOG", 0)
    note()
    note(made_room=True)
    assert lines[1:] == [f"4 connection(s) turned away (503, or closed unanswered past twice as many) and "
                         f"1 waiting for a "
                         f"request closed to make room {limit}", f"1 waiting for a request closed to make room {limit}"]


def test_a_new_connection_at_the_limit_takes_the_place_of_the_one_silent_the_longest(enc, monkeypatch):
    """At --max_connections, connections that sent nothing (idle keep-alive ones), or trickled their requests a byte now
    and then (slowloris), or never sent the body of their 413 (lingering DRAIN_WAIT) held every place, and every new
    client got 503 for as long as their clients liked (reopened after Handler.timeout, REQUEST_WAIT or DRAIN_WAIT). A
    new connection now takes the place of the one silent the longest, closed (its client sees it close, as at its idle
    timeout); one being answered keeps its place."""
    monkeypatch.setattr(serve, "DRAIN_WAIT", 60)  # (the lingering one closes by its eviction, not this)
    monkeypatch.setattr(serve, "EVICT_AFTER", 0.1)  # (each waits 0.2 s or more before the next comes)
    lines, gate = [], threading.Event()
    api = start(la_model(enc, gate=gate), enc, name="la", max_connections=4, log=lines.append)
    address = api.server_address[:2]
    try:
        pool = ThreadPoolExecutor(1)
        held = busy(api, pool)
        lingering = socket.create_connection(address, timeout=60)
        lingering.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                          % (serve.MAX_BODY + 1))
        r = http.client.HTTPResponse(lingering)
        r.begin()
        assert r.status == 413 and r.read()
        time.sleep(0.2)
        slow = socket.create_connection(address, timeout=60)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # the rest, a byte now and then
        time.sleep(0.2)  # (its read of the rest begins: from then on it is silent)
        idle = http.client.HTTPConnection(*address, timeout=60)
        idle.request("GET", "/health")
        assert idle.getresponse().read()
        time.sleep(0.2)
        clients = []
        # each new client is served, in the place of the one silent the longest
        for gone in (lingering, slow, idle.sock):
            clients.append(http.client.HTTPConnection(*address, timeout=60))
            clients[-1].request("GET", "/health")
            r = clients[-1].getresponse()
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
            gone.settimeout(10)  # (a guard, not a speed requirement: it is closed at once)
            assert gone.recv(65536) == b""  # closed, unanswered (the lingering one's sending side was, after its 413)
        # the log says so, at the first and then once a minute with the count since (as for those turned away)
        assert [line for line in lines if "room" in line] == [
            "1 waiting for a request closed to make room since the last such line: 4 are open (--max_connections)"]
        for sock in (lingering, slow, idle):
            sock.close()
        gate.set()
        assert held[0].result()[0] == 200
        for conn in clients:  # and their connections serve on: none took the place of another new client
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
            conn.close()
    finally:
        gate.set()
        api.close()


def test_a_connection_whose_request_has_come_is_not_taken_for_silent(enc, monkeypatch):
    """A connection's thread is silent from the start of its read (ApiServer.silent_while) until it is woken and takes
    the GIL: a keep-alive client's next request, or a new connection's first, can have come meanwhile (four keep-alive
    clients sending back to back at --max_connections 4, and a new connection every 20 ms: over a quarter of the
    evictions). Closed, its request was dropped unanswered, for a new connection that sent nothing yet. Played here
    with two such reads, as handler threads': the first (silent the longer) has its bytes waiting, unread."""
    monkeypatch.setattr(serve, "EVICT_AFTER", 0)
    api = start(tiny_model(enc), enc, max_connections=2)
    came, came_peer = socket.socketpair()
    idle, idle_peer = socket.socketpair()
    try:
        with contextlib.ExitStack() as reads:
            reads.enter_context(api.silent_while(came))
            reads.enter_context(contextlib.suppress(serve.Evicted))  # (the idle one's, at the end of its read)
            reads.enter_context(api.silent_while(idle))
            came_peer.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert api.evict()  # the new connection takes the idle one's place
            idle_peer.settimeout(10)
            assert idle_peer.recv(1) == b""  # closed
        assert came.recv(65536).startswith(b"GET /health")  # (its read, woken, goes on, and it is answered)
        assert api.evicted == {idle}
    finally:
        for sock in (came, came_peer, idle, idle_peer):
            sock.close()
        api.close()


class WatchedLock:
    """A reentrant lock that tells when a thread other than its holder waits for it: a test holds the server's
    silence_lock to stop a connection's thread at the end of its read, and evicts meanwhile."""

    def __init__(self):
        self.lock, self.waited = threading.RLock(), threading.Event()

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.waited.set()
            self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


def test_a_keep_alive_request_that_came_is_answered_though_its_thread_is_slow_to_wake(enc, monkeypatch):
    """An idle keep-alive connection's thread, woken by its client's next request, is silent until it takes the GIL
    back after its read (ms on a busy host): read then, the request was gone from the socket, where evict looks for
    it, and a new connection at --max_connections took the place of one whose request had come, dropped unanswered
    (15% of the evictions of four keep-alive clients under a stream of newcomers). The thread now waits for the byte
    silent and reads it once it is no longer. Played by holding the server's lock while the thread is woken."""
    monkeypatch.setattr(serve, "EVICT_AFTER", 0)
    api = start(tiny_model(enc), enc)
    api.silence_lock = lock = WatchedLock()
    try:
        client = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
        client.request("GET", "/health")
        assert client.getresponse().read()
        wait_for(lambda: api.silent, "the connection's thread to wait for the next request")
        with lock:
            client.request("GET", "/health")
            assert lock.waited.wait(60)  # its thread, woken, waits to leave silent_while
            assert not api.evict()  # its request has come: no new connection takes its place
        r = client.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        client.close()
    finally:
        api.close()


def test_a_trickling_request_with_a_byte_waiting_still_gives_way(enc, monkeypatch):
    """A client trickling its request has bytes waiting, unread, from their arrival until its thread wakes to read them:
    tens of ms on a loaded machine, against a byte every 50 ms. Taken for a request that has come (the check above),
    it kept its place while they waited, and the new connection got 503 (test_a_client_trickling_its_request_gives_way_
    at_the_limit failed so under load). Its request began EVICT_AFTER ago: whatever it has sent since, it gives way.
    Played with a read of the rest of a request begun long ago, a byte of it waiting."""
    monkeypatch.setattr(serve, "EVICT_AFTER", 0.5)
    api = start(tiny_model(enc), enc, max_connections=1)
    slow, slow_peer = socket.socketpair()
    try:
        with contextlib.suppress(serve.Evicted), api.silent_while(slow, since=time.monotonic() - 1):
            slow_peer.sendall(b"a")
            assert serve.readable(slow)
            assert api.evict()
            slow_peer.settimeout(10)
            assert slow_peer.recv(1) == b""  # closed
        assert api.evicted == {slow}
    finally:
        slow.close()
        slow_peer.close()
        api.close()


def test_a_busy_keep_alive_connection_keeps_its_place_at_the_limit(enc):
    """A client sending its requests one after another on a keep-alive connection is silent for milliseconds between
    them: a new connection at --max_connections took its place each time (and the next newcomer the newcomer's), its
    next request dropped with the connection. Only one that has waited EVICT_AFTER for its request gives way; the
    newcomer gets its 503."""
    api = start(tiny_model(enc), enc, max_connections=1)
    try:
        client = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
        client.request("GET", "/health")
        assert client.getresponse().read()
        with socket.create_connection(api.server_address[:2], timeout=60) as newcomer:
            r = http.client.HTTPResponse(newcomer)
            r.begin()
            assert r.status == 503 and json.loads(r.read())["error"]["code"] == "overloaded"
        client.request("GET", "/health")  # (the same connection: it was not closed)
        assert client.getresponse().status == 200 and client.sock is not None
        client.close()
    finally:
        api.close()


def test_a_client_trickling_its_request_gives_way_at_the_limit(enc, monkeypatch):
    """A client that sends its request a byte at a time (slowloris) is never silent long in one read: it has waited
    for its request since the request's first byte, and gives its place to a new connection once that is
    EVICT_AFTER ago, however often it sends a byte."""
    monkeypatch.setattr(serve, "EVICT_AFTER", 0.5)
    api = start(tiny_model(enc), enc, max_connections=1)
    stop = threading.Event()
    try:
        slow = socket.create_connection(api.server_address[:2], timeout=60)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")

        def trickle():  # a byte every 50 ms, until the connection is closed
            with contextlib.suppress(OSError):
                while not stop.wait(0.05):
                    slow.sendall(b"a")
        trickling = threading.Thread(target=trickle, daemon=True)
        trickling.start()
        # until its request began EVICT_AFTER ago, as its thread saw it (on a loaded machine a thread slow to start
        # sees it late: a fixed sleep was too short then), trickling since
        wait_for(lambda: any(time.monotonic() - since >= serve.EVICT_AFTER for since, _ in list(api.silent.values())),
                 "the trickling request to have begun EVICT_AFTER ago")
        client = http.client.HTTPConnection(*api.server_address[:2], timeout=60)
        client.request("GET", "/health")
        r = client.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        client.close()
        slow.settimeout(10)
        assert slow.recv(65536) == b""  # closed, unanswered
    finally:
        stop.set()
        slow.close()
        api.close()


def test_a_flood_past_twice_the_limit_is_closed_unanswered_and_the_server_goes_on(enc, monkeypatch):
    """Past --max_connections served and as many being turned away (503, then drained), a connection is closed at
    once, unanswered: a flood of them holds no thread and no descriptor, and is counted in the log's line. Once the
    connections turned away go, the next one gets its 503 again, and once a served one closes, an answer."""
    monkeypatch.setattr(serve, "DRAIN_WAIT", 60)  # a connection turned away keeps its place while its client is silent
    lines, gate = [], threading.Event()
    api = start(la_model(enc, gate=gate), enc, name="la", max_connections=1, log=lines.append)
    try:
        pool = ThreadPoolExecutor(1)
        held = busy(api, pool)
        with socket.create_connection(api.server_address[:2], timeout=60) as turned_away:
            r = http.client.HTTPResponse(turned_away)
            r.begin()
            assert r.status == 503 and json.loads(r.read())["error"]["code"] == "overloaded"
            assert api.refusals._value == 0  # (drained, until its client closes or DRAIN_WAIT)
            monkeypatch.setattr(serve, "AT_LIMIT_LOG", 0)
            with socket.create_connection(api.server_address[:2], timeout=60) as flood:
                flood.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                with contextlib.suppress(ConnectionResetError):  # (closed with the request unread)
                    assert flood.recv(65536) == b""
            assert len(lines) == 2 and lines[1].startswith("1 connection(s) turned away"), lines  # counted
        wait_for(lambda: api.refusals._value == 1, "the connection turned away to be let go")
        status, err, _ = raw(api, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 503 and err["error"]["code"] == "overloaded"
        gate.set()
        assert held[0].result()[0] == 200
        wait_for_a_place(api)
    finally:
        gate.set()
        api.close()


def test_a_connection_past_the_limit_lets_an_allowed_page_read_its_503(enc):
    """--cors naming origins: a page of one of them reads any error, and the 503 of a connection turned away past
    --max_connections too (it named no origin but *: the browser gave the page an opaque network error in its place).
    A page of another origin reads none, nor one whose Origin only begins as an allowed one does. Its preflight is
    answered as ever (a browser takes any other answer to one for a network error, whatever its headers: the page never
    saw the 503 of the request after it)."""
    page, gate = "http://localhost:3000", threading.Event()
    api = start(la_model(enc, gate=gate), enc, name="la", max_connections=1, cors=(page,))
    ask = {"Origin": page, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type",
           "Access-Control-Request-Private-Network": "true"}

    def cors(h):
        return {k: v for k, v in h.items() if k.startswith("access-control-") or k == "vary"}

    def refusals_free():  # the one place for a connection turned away: the last one's (else this one is dropped)
        wait_for(lambda: api.refusals._value == 1, "the last connection turned away to be let go")

    def turned_away(*parts):  # the request's head sent in parts, a moment apart
        refusals_free()
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            for part in parts:
                time.sleep(0.2)
                sock.sendall(part)
            r = http.client.HTTPResponse(sock)
            r.begin()
            assert r.status == 503 and json.loads(r.read())["error"]["code"] == "overloaded"
            return {k.lower(): v for k, v in r.getheaders()}
    try:
        status, served, _ = head(api, "OPTIONS", "/v1/completions", ask)
        assert status == 204 and cors(served)["access-control-allow-origin"] == page
        wait_for(lambda: api.slots._value == 1, "the preflight's connection to give its place back")
        pool = ThreadPoolExecutor(1)
        held = busy(api, pool)
        refusals_free()
        status, h, data = head(api, "OPTIONS", "/v1/completions", ask)
        assert status == 204 and data == b"" and cors(h) == cors(served) and h["connection"] == "close"
        refusals_free()
        status, h, _ = head(api, "OPTIONS", "/v1/completions", {**ask, "Origin": "http://evil.example"})
        assert status == 503 and "access-control-allow-origin" not in h  # (as when served: a 405)
        refusals_free()
        status, h, _ = head(api, "POST", "/v1/completions", {"Origin": page, "Content-Type": "application/json"},
                            json.dumps({"prompt": "Hi", "max_tokens": 2}))
        assert status == 503 and h["access-control-allow-origin"] == page and h["vary"] == "Origin"
        h = turned_away(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n", b"Origin: %s\r\n\r\n" % page.encode())
        assert h["access-control-allow-origin"] == page
        # lines ended by a bare LF, as the standard library reads them too (RFC 9112 2.2): a hand-written request's
        h = turned_away(b"GET /v1/models HTTP/1.1\nHost: localhost\nOrigin: %s\n\n" % page.encode())
        assert h["access-control-allow-origin"] == page
        refusals_free()
        status, h, _ = head(api, "GET", "/v1/models", {"origin": page})  # (any case, as any header)
        assert status == 503 and h["access-control-allow-origin"] == page
        refusals_free()
        status, h, _ = head(api, "GET", "/v1/models", {"Origin": "http://evil.example"})
        assert status == 503 and "access-control-allow-origin" not in h
        # a head that stops there, past serve.HEAD_WAIT, is answered without reading the rest
        h = turned_away(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nOrigin: %s" % page.encode())  # (.evil.example)
        assert "access-control-allow-origin" not in h
        gate.set()
        assert held[0].result()[0] == 200
    finally:
        gate.set()
        api.close()


def test_a_connection_past_the_limit_that_ends_its_head_early_is_answered_at_once(enc, monkeypatch):
    """Under --cors, a connection turned away has its head read for its Origin, HEAD_WAIT seconds at most: a client
    that closes its sending side partway (`nc -N`, a script's shutdown) has sent all it will, and gets its 503 then,
    as one that sent no head, not after the wait."""
    monkeypatch.setattr(serve, "HEAD_WAIT", 30)
    page, gate = "http://localhost:3000", threading.Event()
    api = start(la_model(enc, gate=gate), enc, name="la", max_connections=1, cors=(page,))
    try:
        held = busy(api, ThreadPoolExecutor(1))
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nOrigin: %s" % page.encode())
            sock.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            r = http.client.HTTPResponse(sock)
            r.begin()
            assert r.status == 503 and json.loads(r.read())["error"]["code"] == "overloaded"
            assert time.monotonic() - t0 < 10 and r.getheader("access-control-allow-origin") is None  # (head unread)
        gate.set()
        assert held[0].result()[0] == 200
    finally:
        gate.set()
        api.close()


def test_a_ctrl_c_as_a_connections_thread_starts_gives_its_place_back_once(enc, monkeypatch):
    """Ctrl-C reaches serve_forever's thread inside Thread.start after the connection's thread has begun (while start
    waits for it to run): that thread gives the connection's place back when it ends, and process_request, taking the
    start for failed, gave it back too. The semaphore, released past its bound, raised ValueError in the thread: a
    traceback on the way out (or, with another place taken meanwhile, one connection more than --max_connections)."""
    api = start(tiny_model(enc), enc, max_connections=2)
    errors, threads, real_start = [], [], threading.Thread.start
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))

    def start_then_ctrl_c(thread):
        threads.append(thread)
        real_start(thread)
        raise KeyboardInterrupt

    def connected():  # (a client's socket, and the server side as serve_forever's accept gives it)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            return (client, *listener.accept())
    try:
        client, conn, address = connected()
        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", start_then_ctrl_c)
            with pytest.raises(KeyboardInterrupt):
                api.process_request(conn, address)
        client.close()  # the connection's thread reads end-of-file and ends
        threads[0].join(60)
        assert not threads[0].is_alive() and errors == []
        assert api.slots.acquire(blocking=False) and api.slots.acquire(blocking=False)  # both places free, once each
        assert not api.slots.acquire(blocking=False)
    finally:
        api.close()


def test_a_connection_whose_thread_cannot_start_is_answered_503(enc, monkeypatch, capfd):
    """The process's threads spent (ulimit -u, memory): a connection's thread does not start (RuntimeError), and
    socketserver printed a traceback and closed the connection unanswered (a crash, to a proxy in front). It is
    answered 503 overloaded, as past --max_connections, in one line of the log, and its place is given back once."""
    logged = []
    api = start(tiny_model(enc), enc, max_connections=2, log=logged.append)

    def cannot_start(thread):
        raise RuntimeError("can't start new thread")
    try:
        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", cannot_start)
            for _ in range(3):  # more than the places: each is given back
                status, err, headers = raw(api, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert status == 503 and err["error"]["code"] == "overloaded" and headers["Connection"] == "close"
        assert logged == ["a connection turned away: no thread to serve it (can't start new thread)"] * 3
        assert "Traceback" not in capfd.readouterr().err
        assert api.slots.acquire(blocking=False) and api.slots.acquire(blocking=False)  # both places free, once each
        assert not api.slots.acquire(blocking=False)
    finally:
        api.close()


def test_a_post_whose_thread_cannot_start_gets_its_503_not_a_reset(enc, monkeypatch):
    """http.client (so requests and the openai client) writes a POST's head and its body apart, and reads the answer
    after both. A connection whose thread could not start was closed at once with the head unread: a reset, which the
    body's write met (BrokenPipeError: 16 of 40 small POSTs), not the 503. Its sending side is shut after the 503 and
    what its client still sends is dropped by the accepting thread (service_actions), as drain does, until the client
    closes; then it is closed. Played with the body sent once the server has answered."""
    api = start(tiny_model(enc), enc, max_connections=2)

    def cannot_start(thread):
        raise RuntimeError("can't start new thread")
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener, \
                socket.create_connection(listener.getsockname(), timeout=60) as sock:
            conn, address = listener.accept()
            body = completion_request(max_tokens=1)
            head, _, body = body.partition(b"\r\n\r\n")
            sock.sendall(head + b"\r\n\r\n")
            assert select.select([conn], [], [], 60)[0]
            with monkeypatch.context() as m:
                m.setattr(threading.Thread, "start", cannot_start)
                api.process_request(conn, address)
            assert select.select([sock], [], [], 60)[0]  # (the 503 has come)
            sock.sendall(body)  # (dropped by serve_forever's service_actions, every half second)
            r = http.client.HTTPResponse(sock)
            r.begin()
            assert r.status == 503 and json.loads(r.read())["error"]["code"] == "overloaded"
        wait_for(lambda: not api.closing, "the connection, its client gone, to be closed")
        assert conn.fileno() == -1
    finally:
        api.close()


def test_a_connection_whose_thread_cannot_start_lets_an_allowed_page_read_its_503(enc, monkeypatch):
    """--cors naming origins: the 503 of a connection whose thread cannot start names the request's origin, and its
    preflight gets its 204, as past --max_connections, from what of its head has come when the start fails (a
    browser's comes with the connection): it was answered unread, and the browser gave the page a network error."""
    page = "http://localhost:3000"
    api = start(tiny_model(enc), enc, max_connections=2, cors=(page,))

    def cannot_start(thread):
        raise RuntimeError("can't start new thread")

    def answer(request):  # (status, headers) of the answer to a connection that sent request, its thread not started
        with socket.create_server(("127.0.0.1", 0)) as listener, \
                socket.create_connection(listener.getsockname(), timeout=60) as sock:
            conn, address = listener.accept()
            sock.sendall(request)
            assert select.select([conn], [], [], 60)[0]
            with monkeypatch.context() as m:
                m.setattr(threading.Thread, "start", cannot_start)
                api.process_request(conn, address)
            r = http.client.HTTPResponse(sock)
            r.begin()
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
    try:
        status, h = answer(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nOrigin: %s\r\n\r\n" % page.encode())
        assert status == 503 and h["access-control-allow-origin"] == page
        status, h = answer(b"OPTIONS /v1/completions HTTP/1.1\r\nHost: localhost\r\nOrigin: %s\r\n"
                           b"Access-Control-Request-Method: POST\r\n\r\n" % page.encode())
        assert status == 204 and h["access-control-allow-origin"] == page and h["access-control-allow-methods"]
    finally:
        api.close()


def test_a_model_that_fails_gets_500s_and_the_server_goes_on(enc, capfd):
    # NaN weights (a diverged run) make sampling raise in torch.multinomial: each request gets OpenAI's 500 body
    # (inside the stream once it has begun), the worker lives on and answers the next one
    model, log = tiny_model(enc), []
    api = start(model, enc, name="nan", log=log.append)
    try:
        with torch.no_grad():
            model.lm_head.weight[0, 0] = float("nan")
        status, err, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 1})
        assert status == 500 and err["error"]["type"] == "server_error" and err["error"]["code"] == "internal_error"
        with pytest.raises(openai.InternalServerError):
            client(api).chat.completions.create(model="nan", messages=MSG, max_tokens=2)
        with pytest.raises(openai.APIError) as e:
            list(client(api).chat.completions.create(model="nan", messages=MSG, max_tokens=2, stream=True))
        assert "generation failed" in e.value.message
        # greedy too: it took the nan for the largest score, and answered 200 with token 0 ("!") over and over
        status, err, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert status == 500 and err["error"]["message"].startswith(
            "generation failed: the model's scores for new token 1 are not finite (nan or inf)")
        with torch.no_grad():
            model.lm_head.weight[0, 0] = 0.0
        assert post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200
        assert api.worker.is_alive() and [r["finish_reason"] for r in api.worker.recent] == ["error"] * 4 + ["length"]
        # the server's log says why in the request's line, as the 500 does: no traceback for what is no bug
        assert "tokens, error (the model's scores for new token 1 are not finite (nan or inf)" in log[3]
        assert "Traceback" not in capfd.readouterr().err
        # a bug's 500 names its type, and its traceback goes to the log for a report
        api.worker.generate = lambda job: 1 / 0
        status, err, _ = post(api, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert status == 500 and err["error"]["message"] == "generation failed: ZeroDivisionError: division by zero"
        assert "tokens, error (ZeroDivisionError: division by zero)" in log[-1]
        assert "Traceback" in capfd.readouterr().err and api.worker.is_alive()
    finally:
        api.close()


def test_a_log_that_cannot_be_written_leaves_the_worker_serving(enc, monkeypatch):
    """stderr's reader gone (`serve.py 2>&1 | tee log` that ended, a closed terminal): the worker's log line, or the
    traceback of a failed generation, raised BrokenPipeError in the worker, which died; every request after it waited
    forever while /health said ok."""
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        flush = write

    model = tiny_model(enc)
    api = serve.ApiServer(model, enc, "gone", port=0)  # its own log: a line on stderr per request
    threading.Thread(target=api.serve_forever, daemon=True).start()
    monkeypatch.setattr(sys, "stderr", Gone())
    try:
        body = {"prompt": "Hi", "max_tokens": 2, "temperature": 1}
        assert [post(api, "/v1/completions", body)[0] for _ in range(2)] == [200, 200]
        with torch.no_grad():
            model.lm_head.weight[0, 0] = float("nan")
        assert post(api, "/v1/completions", body)[0] == 500
        with torch.no_grad():
            model.lm_head.weight[0, 0] = 0.0
        api.worker.generate = lambda job: 1 / 0  # a bug: its traceback is written too
        assert post(api, "/v1/completions", body)[0] == 500
        del api.worker.generate
        assert post(api, "/v1/completions", body)[0] == 200 and api.worker.is_alive()
    finally:
        monkeypatch.undo()
        api.close()

# -----------------------------------------------------------------------------
# the command line

@pytest.fixture(scope="module")
def ckpt(enc, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("serve") / "tiny.pt")
    save_checkpoint(path, tiny_model(enc), enc)
    return path


def serve_command(path, *options, prelude=None):
    """The command line of serve.py PATH [options] on a free port; prelude: Python code run first (a patch)."""
    run = [] if prelude is None else [
        "-c", f"import os, runpy, sys\nsys.path.insert(0, {ROOT!r})\n{prelude}\n"
              "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"]
    return [sys.executable, *run, os.path.join(ROOT, "serve.py"), path, "--port", "0", "--device", "cpu", *options]


@contextlib.contextmanager
def served(path, *options, prelude=None, env=None):
    """serve.py PATH [options] in a subprocess on a free port: yields (process, port) once it answers, then Ctrl-C;
    the process's stdout after its first line and its stderr are then in process.out and process.err. prelude:
    Python code run first in that process (a patch); env: its environment, if not this one."""
    p = subprocess.Popen(serve_command(path, *options, prelude=prelude), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, preexec_fn=hangup_as(signal.SIG_DFL) if HANGUP else None)
    try:
        line = p.stdout.readline()
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=60)
        # serving: a Ctrl-C before is "interrupted" (130), not a clean stop. (/health: /v1/models may need a key)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
        yield p, int(m.group(1))
    finally:
        p.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        p.out, p.err = p.communicate(timeout=60)


def test_command_line_serves_on_loopback(ckpt):
    assert serve.parse_args([]).host == "127.0.0.1"
    with served(ckpt) as (p, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"] == "tiny"
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/html") \
            and b"/v1/chat/completions" in r.read()
        conn.close()
    assert p.returncode == 0, p.err


def test_a_model_trained_on_plain_text_is_warned_of(enc, tmp_path, monkeypatch, capsys):
    """As gen.py --chat's: the chat page answered make demo's story model with a story that never ended its turn.
    (serve.py's main in this process, stopped by Ctrl-C as it begins to serve: in a process of its own each took 2-3 s
    to load torch, where the tests above run it so.)"""
    def ctrl_c(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(serve.ApiServer, "serve_forever", ctrl_c)
    for kind in ("text", "chat"):
        path = str(tmp_path / f"{kind}.pt")
        save_checkpoint(path, tiny_model(enc), enc, dataset="story", data={"kind": kind})
        code, out, err = run_cli(serve.main, [path, "--port", "0", "--device", "cpu"], capsys)
        warned = "trained on plain text (story), not on conversations: its chat replies (the chat page, " \
                 "/v1/chat/completions) will not keep to the turn" in err
        assert code == 0 and out.startswith("serving ") and err.endswith("stopped\n"), (out, err)
        assert warned == (kind == "text"), err
    params = train.fmt_count(tiny_model(enc).num_params(non_embedding=False))  # as train.py's banner says it
    assert f", {params} parameters, " in out, out


def test_float16_on_a_cpu_is_warned_of_as_gen_py_does(ckpt, monkeypatch, capsys):
    """Emulated there, many times slower than float32 (a recipe's --dtype float16, made for a GPU): gen.py and
    train.py said so, serve.py answered every request slowly without a word. (Stopped as it begins to serve.)"""
    def ctrl_c(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(serve.ApiServer, "serve_forever", ctrl_c)
    for dtype in ("float16", "float32"):
        code, out, err = run_cli(serve.main, [ckpt, "--port", "0", "--device", "cpu", "--dtype", dtype], capsys)
        warned = "warning: --dtype float16 is emulated on this CPU, slower than float32 (float16 many times): use " \
                 "--dtype auto\n" in err
        assert code == 0 and out.startswith("serving ") and warned == (dtype == "float16"), (out, err)
        assert f", cpu {dtype}, on " in out, out  # given: said as it is
    # --dtype auto's choice is said with why, as train.py's run line and gen.py --verbose say it (an AVX2 laptop)
    monkeypatch.setattr(common, "cpu_info", lambda: ("GenuineIntel", {"sse2", "avx", "avx2", "fma"}))
    code, out, err = run_cli(serve.main, [ckpt, "--port", "0", "--device", "cpu"], capsys)
    assert code == 0 and ", cpu float32 (auto: no AVX-512 BF16 or AMX here), on " in out, (out, err)


def test_the_newest_checkpoint_picked_is_named(enc, tmp_path, monkeypatch, capsys):
    """serve.py without a checkpoint served the newest in models/ as "serving NAME", its folder unsaid (after a
    fine-tune, the chat run's, or one of several best.pt): named as gen.py names it; a checkpoint given is not."""
    def ctrl_c(self, *args, **kwargs):  # (stopped as it begins to serve, as the test above)
        raise KeyboardInterrupt
    monkeypatch.setattr(serve.ApiServer, "serve_forever", ctrl_c)
    monkeypatch.chdir(tmp_path)
    os.makedirs("models/chat-demo")
    save_checkpoint("models/chat-demo/best.pt", tiny_model(enc), enc, data={"kind": "chat"})
    code, out, err = run_cli(serve.main, ["--port", "0", "--device", "cpu"], capsys)
    assert code == 0 and out.startswith("serving best, ") and err.startswith(
        "using models/chat-demo/best.pt, the newest checkpoint in models/\n"), (out, err)
    code, out, err = run_cli(serve.main, ["models/chat-demo/best.pt", "--port", "0", "--device", "cpu"], capsys)
    assert code == 0 and "newest" not in err, err


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_server_on_every_address_names_the_urls_other_machines_type(ckpt, host, monkeypatch, capsys):
    """--host 0.0.0.0 for a classroom printed "on http://0.0.0.0:8000": an address no browser on another machine opens
    (nor Windows' on this one), and the teacher had to find the one to give the students. The line names this
    machine's addresses on its networks, each reaching the server, and 127.0.0.1 for this machine; with none found,
    it says so. (serve.py's main in this process, stopped by Ctrl-C as it begins to serve.)"""
    if host == "::" and not ipv6_loopback():
        pytest.skip("no IPv6 here")
    lines = []

    def connect_and_ctrl_c(self, *args, **kwargs):
        lines.append(capsys.readouterr().out)
        for address in re.findall(r"http://([\d.]+):(\d+)/", lines[-1]):
            socket.create_connection(address, timeout=10).close()  # (the listening socket accepts: it is this server)
        raise KeyboardInterrupt
    monkeypatch.setattr(serve.ApiServer, "serve_forever", connect_and_ctrl_c)
    code, _, err = run_cli(serve.main, [ckpt, "--host", host, "--port", "0", "--device", "cpu"], capsys)
    # (and how to require a key: the start line is where the operator looks)
    anyone = re.escape("open to every machine that reaches it, with no authentication (set SERVE_API_KEY to require a "
                       "key)")
    port = re.search(rf" on every address of this machine, port (\d+), {anyone}: ", lines[0]).group(1)
    assert code == 0 and "0.0.0.0" not in lines[0] and "[::]" not in lines[0], (lines, err)
    urls = " or ".join(f"http://{a}:{port}/" for a in serve.network_addresses())
    assert (f"from other machines chat page at {urls}, API at " if urls else "(none found here)") in lines[0], lines
    assert f"http://127.0.0.1:{port}/" in lines[0], lines
    monkeypatch.setattr(serve, "network_addresses", lambda: [])  # a machine on no network
    run_cli(serve.main, [ckpt, "--host", host, "--port", "0", "--device", "cpu"], capsys)
    assert re.search(rf"port (\d+), {anyone}: chat page at http://127\.0\.0\.1:\1/, API at "
                     r"http://127\.0\.0\.1:\1/v1; from "
                     r"other machines, the same with this machine's address on their network \(none found here\); "
                     r"Ctrl-C stops\n", lines[1]), lines


def test_a_server_off_loopback_says_every_machine_reaching_it_may_use_it(enc):
    """--host with a network address printed "on http://192.168.1.20:8000: chat page at ...", as a loopback server's
    line reads: nothing said that the lab's other machines could use it, with no authentication. On loopback the
    line says nothing of it."""
    here = start(tiny_model(enc), enc)
    try:
        assert here.where() == f"on {here.url}: chat page at {here.url}/, API at {here.url}/v1"
    finally:
        here.close()
    if not serve.network_addresses():
        pytest.skip("no network address here")
    there = start(tiny_model(enc), enc, host=serve.network_addresses()[0])
    try:
        assert there.where() == f"on {there.url}, open to every machine that reaches it, with no authentication (set " \
                                f"SERVE_API_KEY to require a key): chat page at {there.url}/, API at {there.url}/v1"
    finally:
        there.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM,
                                  pytest.param(HANGUP, marks=pytest.mark.skipif(HANGUP is None, reason="no SIGHUP"))])
def test_ctrl_c_while_a_reply_streams_stops_cleanly(enc, tmp_path, stop):
    """Ctrl-C while the worker is inside torch: it aborted ("terminate called without an active exception", SIGABRT,
    a core dump), since Python exited under a daemon thread still running the model. SIGTERM (a job scheduler's stop)
    stops it the same way, and says so too: it ended without "stopped". SIGHUP (its terminal gone) too, exit 129: it
    ended on the spot, the reply cut without a word."""
    torch.manual_seed(0)
    config = make_config("tiny", n_layer=2, n_embd=64, n_head=2, block_size=1024,
                         vocab_size=enc.n_vocab, variant="gpt2")
    path = str(tmp_path / "long.pt")
    save_checkpoint(path, GPT(config).eval(), enc)  # 1,000 tokens take seconds: the reply is mid-way at Ctrl-C
    with served(path) as (p, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(completion_request(max_tokens=1000, stream=True))
        read_until_text(sock)
        if stop != signal.SIGINT:
            p.send_signal(stop)
            p.wait(timeout=60)  # (served sends SIGINT itself, to a process still running)
    rest = b"".join(iter(lambda: sock.recv(65536), b""))
    sock.close()
    assert p.returncode == (0 if stop == signal.SIGINT else 128 + stop) and "terminate" not in p.err, p.err
    # the stream was told why it ended, and ended as a stream does (its last chunk), before the process exited
    assert b'"code": "server_shutting_down"' in rest and rest.endswith(b"\r\n0\r\n\r\n"), rest
    # "stopped" is the last line, said once the worker has left: its line for the reply it cut short came after it
    *before, last = p.err.splitlines()
    assert last == "stopped" and ", cancelled, " in before[-1], p.err


WATCH_THE_EXIT = """
import atexit, common
atexit.register(os.write, 2, b"interpreter finalized\\n")  # Python's own exit runs it, os._exit does not
run_main = common.run_main

def run_main_then_print(main):
    try:
        return run_main(main)
    finally:
        print("run_main returned")  # to stdout, a pipe: held in its buffer, not flushed

common.run_main = run_main_then_print
"""


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM", "port in use"])
def test_serve_exits_by_os_exit_with_pythons_status_and_all_its_output(ckpt, how):
    """A clean stop (stopped said, the worker joined, the answers sent) once aborted in the interpreter's exit,
    "terminate called without an active exception" (SIGABRT), as pytest's own exit did (conftest.py): serve.py leaves
    by os._exit, past that teardown. Its status stays Python's (0 for Ctrl-C's clean stop, 143 for SIGTERM, 1 for an
    error), and what stdout still holds in its buffer, piped, is written, not lost with the process."""
    # stdout buffered, as Python buffers a pipe: PYTHONUNBUFFERED (set where tests run in Docker) writes through
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if how == "port in use":
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            p = subprocess.run(serve_command(ckpt, "--port", str(busy.getsockname()[1]), prelude=WATCH_THE_EXIT),
                               capture_output=True, text=True, timeout=120, env=env)
        p.out, p.err = p.stdout, p.stderr
    else:
        with served(ckpt, prelude=WATCH_THE_EXIT, env=env) as (p, port):
            if how == "SIGTERM":
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)  # (served sends SIGINT itself, to a process still running)
    said = {"Ctrl-C": "stopped", "SIGTERM": "stopped", "port in use": "error: cannot listen on 127.0.0.1:"}[how]
    assert p.returncode == {"Ctrl-C": 0, "SIGTERM": 143, "port in use": 1}[how] and said in p.err, p.err
    assert "interpreter finalized" not in p.err and p.out == "run_main returned\n", (p.out, p.err)


@pytest.mark.parametrize("raised, status, said", [
    # a bug's traceback, as Python's exit gives it
    ("RuntimeError('a bug')", 1, ("Traceback (most recent call last):", "RuntimeError: a bug\n")),
    ("SystemExit('a message')", 1, ("a message\n", "a message\n")),  # sys.exit(text): printed, status 1, as Python does
    ("SystemExit(None)", 0, ("", ""))])
def test_serve_leaves_with_pythons_status_for_a_bug_and_a_sys_exit(ckpt, raised, status, said):
    """What run_main lets through, a bug's exception or a SystemExit of any kind, leaves by os._exit too (past the
    interpreter's teardown) with the status and the words Python's own exit would have given, not os._exit's
    TypeError on a text status or a status 0 after a traceback. said: how stderr starts and ends."""
    prelude = WATCH_THE_EXIT.replace("return run_main(main)", f"raise {raised}")
    p = subprocess.run(serve_command(ckpt, prelude=prelude), capture_output=True, text=True, timeout=120)
    assert p.returncode == status and p.stderr.startswith(said[0]) and p.stderr.endswith(said[1]), p.stderr
    assert "interpreter finalized" not in p.stderr and p.stdout == "run_main returned\n", (p.stdout, p.stderr)


SLOW_FORWARD = """
import time, torch, model
next_logits = model.GPT._next_logits

def slow(self, *args, **kwargs):  # a forward pass of a big model on a long prompt: seconds inside torch
    a, end = torch.ones(300, 300), time.monotonic() + 20
    while time.monotonic() < end:
        a @ a
    return next_logits(self, *args, **kwargs)

model.GPT._next_logits = slow
"""


def start_a_reply(port):
    """A completion request, once the worker is inside its (slow) forward pass; returns the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(completion_request(max_tokens=4))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def generating():
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())["generating"]

    wait_for(generating, "the worker to start the reply")
    conn.close()
    time.sleep(0.2)  # inside the slow forward pass
    return sock


def stderr_until(p, text, limit=10):
    """What process p writes to stderr up to text, read as it comes (communicate reads the rest); fails after limit
    seconds."""
    got, deadline = b"", time.monotonic() + limit
    while text.encode() not in got:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([p.stderr], [], [], left)[0], f"no {text!r} in {limit} s: {got}"
        data = os.read(p.stderr.fileno(), 65536)
        assert data, got
        got += data
    return got.decode()


@pytest.mark.parametrize("stop", [signal.SIGTERM,
                                  pytest.param(HANGUP, marks=pytest.mark.skipif(HANGUP is None, reason="no SIGHUP"))])
def test_a_worker_that_outlasts_the_wait_exits_with_the_stopping_signals_status(ckpt, stop):
    """SIGTERM (a job scheduler's stop), or SIGHUP, while the worker stays inside torch past halt's wait: the exit said
    130, a Ctrl-C's, without a word of the reply left running. (The wait, 30 s, cut to 1 s here.)"""
    short_wait = SLOW_FORWARD + """
import threading
join = threading.Thread.join
threading.Thread.join = lambda self, timeout=None: join(self, None if timeout is None else min(timeout, 1))
"""
    with served(ckpt, prelude=short_wait) as (p, port):
        sock = start_a_reply(port)
        p.send_signal(stop)
        p.wait(timeout=60)
    sock.close()
    assert p.returncode == 128 + stop, p.err
    assert "the reply being generated did not stop in time: exiting without waiting for it" in p.err, p.err
    assert "terminate" not in p.err, p.err


@pytest.mark.parametrize("again", [signal.SIGINT, signal.SIGTERM,
                                   pytest.param(HANGUP, marks=pytest.mark.skipif(HANGUP is None, reason="no SIGHUP"))])
def test_a_second_signal_while_the_worker_is_inside_torch_exits_at_once(ckpt, again):
    """Ctrl-C waits for the worker to leave torch; Ctrl-C again (or SIGTERM, or SIGHUP: the terminal gone) in that
    wait, seconds for a long prompt on a big model, exited under it: "terminate called without an active exception",
    SIGABRT and a core dump."""
    with served(ckpt, prelude=SLOW_FORWARD) as (p, port):
        sock = start_a_reply(port)
        p.send_signal(signal.SIGINT)
        # Ctrl-C seen: the server says at once that it waits for the worker (it said nothing until the worker left)
        stderr_until(p, "stopping: waiting for the reply being generated")
        if again != signal.SIGINT:
            p.send_signal(again)
            p.wait(timeout=60)  # (served sends SIGINT itself, to a process still running)
    sock.close()
    assert p.returncode == 128 + again, p.err
    # (not "stopped": the server left the reply running, as the line after a wait that outlasts its limit says)
    assert "terminate" not in p.err and "Traceback" not in p.err and "stopped" not in p.err, p.err


@pytest.mark.parametrize("stop", ["Ctrl-C again", "a slow reply"])
def test_serve_main_called_from_a_notebook_never_ends_the_process(ckpt, monkeypatch, capsys, stop):
    """serve.main in a notebook's cell, stopped by the stop button (Ctrl-C): a second press while it waited for the
    reply being generated, or a reply that outlasted the wait, left by os._exit, the command's way past a worker inside
    torch, and the kernel died with everything the lesson had in it. Called from Python, the call ends instead: the
    second Ctrl-C is a KeyboardInterrupt, and a slow reply is left to stop at its next token."""
    left = []

    def leave(code):
        left.append(code)
        raise RuntimeError(f"os._exit({code})")
    halt = serve.ApiServer.halt

    def slow_halt(self, timeout=30):
        halt(self)  # (closed and the worker joined, as the stop goes on to do)
        if stop == "a slow reply":
            return False
        os.kill(os.getpid(), signal.SIGINT)  # pressed again as it waits for the worker
        time.sleep(10)
        return True

    def stop_button(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(serve, "leave", leave)
    monkeypatch.setattr(serve.ApiServer, "halt", slow_halt)
    monkeypatch.setattr(serve.ApiServer, "serve_forever", stop_button)
    argv = [ckpt, "--port", "0", "--device", "cpu"]
    if stop == "Ctrl-C again":
        with pytest.raises(KeyboardInterrupt):
            serve.main(argv)
    else:
        serve.main(argv)
        assert capsys.readouterr().err.endswith("the reply being generated did not stop in time: it stops at its next "
                                                "token\nstopped\n")
    assert left == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_port_in_use_is_one_line_for_a_story_model_too(enc, tmp_path, monkeypatch, capsys):
    """make demo's story model on a --port in use, or a bad --host: the warning that it was trained on plain text
    came first, the error second, and the newest-checkpoint line before both. The error is the one line now."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("models")
    save_checkpoint("models/story_best.pt", tiny_model(enc), enc, dataset="story", data={"kind": "text"})
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for where in (["--port", str(busy.getsockname()[1])], ["--host", "nosuchhost.invalid"]):
            code, out, err = run_cli(serve.main, [*where, "--device", "cpu"], capsys)
            assert code == 1 and err.startswith("error: cannot listen on ") and err.count("\n") == 1, err
    finally:
        busy.close()


def test_a_port_below_1024_without_root_names_the_fix(ckpt, capsys, monkeypatch):
    """--port 80 as a user (a service's unit, a container's): the system refuses it, and the error said "or stop what
    uses it", sending the user to look for a server that is not there."""
    def refused(server):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(serve.ThreadingHTTPServer, "server_bind", refused)
    code, out, err = run_cli(serve.main, [ckpt, "--port", "80", "--device", "cpu"], capsys)
    assert (code, err) == (1, "error: cannot listen on 127.0.0.1:80 (Permission denied): pick another --port, 1024 or "
                              "above (those below need root)\n")


def test_command_line_errors(ckpt, enc, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(serve.main, [str(tmp_path / "nope.pt"), "--device", "cpu"], capsys)
    assert code == 1 and err.count("\n") == 1 and "nope.pt" in err and "not found" in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        code, out, err = run_cli(serve.main, [ckpt, "--port", str(busy.getsockname()[1]), "--device", "cpu"], capsys)
    finally:
        busy.close()
    assert code == 1 and err.startswith("error: cannot listen") and "--port" in err
    if ipv6_loopback():  # an IPv6 address and its port as a URL writes them, not ":::8000"
        with socket.socket(socket.AF_INET6) as busy:
            busy.bind(("::1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            code, out, err = run_cli(serve.main, [ckpt, "--host", "::1", "--port", str(port), "--device", "cpu"],
                                     capsys)
        assert code == 1 and err.startswith(f"error: cannot listen on [::1]:{port} ("), err
    code, out, err = run_cli(serve.main, [ckpt, "--host", "nosuchhost.invalid", "--device", "cpu"], capsys)
    assert code == 1 and err.startswith("error: cannot listen on nosuchhost.invalid") and err.rstrip().endswith(
        "check --host (an address or name of this machine)")
    # a TypeError's traceback
    code, out, err = run_cli(serve.main, [ckpt, "--host", "\u00fc..x", "--device", "cpu"], capsys)
    assert code == 1 and err == "error: cannot listen on \u00fc..x:8000 (encoding of hostname failed): check " \
        "--host (an address or name of this machine)\n"
    # a checkpoint of NaN weights is refused at startup, before it could answer a request
    model = tiny_model(enc)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    nan = str(tmp_path / "nan.pt")
    save_checkpoint(nan, model, enc)
    monkeypatch.setattr(serve, "ApiServer", lambda *a, **k: pytest.fail("a model of NaN weights was served"))
    code, out, err = run_cli(serve.main, [nan, "--port", "0", "--device", "cpu"], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"error: {nan} holds weights that are not finite") \
        and out == ""
    # a port out of range: argparse's usage and one error line, not bind()'s OverflowError
    for value in ("70000", "-1"):
        with pytest.raises(SystemExit) as e:
            serve.parse_args([ckpt, "--port", value])
        last = capsys.readouterr().err.splitlines()[-1]
        assert e.value.code == 2 and "error: argument --port: must be 0-65535 (0 picks any free port)" in last, last
    assert serve.parse_args([ckpt, "--port", "0"]).port == 0 \
        and serve.parse_args([ckpt, "--port", "65535"]).port == 65535
    # --temp, the default of the requests that give no temperature, is in their range, OpenAI's 0-2: a --temp 3 was
    # served to them where none of them could ask for it
    with pytest.raises(SystemExit) as e:
        serve.parse_args([ckpt, "--temp", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and \
        "error: argument --temp: must be a number from 0 to 2 (0 = greedy), got 3" in err, err
    assert serve.parse_args([ckpt, "--temp", "2"]).temp == 2.0
    # --top_k 0 is no limit, as a request's top_k of 0 is (and gen.py's --top_k 0), not an error
    assert serve.parse_args([ckpt, "--top_k", "0"]).top_k is None
    with pytest.raises(SystemExit):
        serve.parse_args([ckpt, "--top_k", "-1"])


# -----------------------------------------------------------------------------
# the chat page in a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def chromium(profile):
    """A headless Chromium driven by selenium, its profile in the folder profile."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the network is closed here: without these flags Chromium waits on connections of its own
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium for the tests of the page (its start is most of such a test's time); each test loads its own
    server's page, at its own origin, and quits nothing."""
    browser = chromium(tmp_path_factory.mktemp("chromium"))  # (it skips without selenium)
    yield browser
    browser.quit()


@needs_chromium
def test_the_enter_that_picks_an_input_methods_word_sends_nothing(enc, browser):
    """Typing Chinese or Japanese, Enter picks the input method's word. Safari ends the composition before that Enter's
    keydown, which so has isComposing false and keyCode 229 (WebKit bug 165004): the page sent the message half typed.
    That keydown sends nothing; an Enter of its own still sends."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = start(la_model(enc), enc, name="la")
    try:
        open_page(browser, api)
        browser.find_element(By.ID, "input").send_keys("你好")
        press = """
            const e = new KeyboardEvent('keydown', {key: 'Enter', bubbles: true, cancelable: true});
            Object.defineProperty(e, 'keyCode', {get: () => arguments[0]});
            document.getElementById('input').dispatchEvent(e);"""
        browser.execute_script(press, 229)  # (the submit it would make clears the box at once)
        assert browser.find_element(By.ID, "input").get_attribute("value") == "你好"
        assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
        browser.execute_script(press, 13)
        assert browser.find_element(By.ID, "input").get_attribute("value") == ""
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.user"))
    finally:
        api.close()


@needs_chromium
def test_chat_page_streams_a_reply_in_chromium(enc, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = start(la_model(enc, delay=0.05), enc, name="la", temperature=0.3, top_p=0.7)  # 12 tokens in 0.6 s
    try:
        wait = WebDriverWait(browser, 60)
        open_page(browser, api)
        # max tokens starts empty: a long message gets what the context leaves instead of a refusal
        assert browser.find_element(By.ID, "max_tokens").get_attribute("value") == ""
        browser.find_element(By.ID, "input").send_keys("word " * 40)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        sent = api.worker.recent[-1]
        assert sent["prompt_tokens"] > BLOCK // 2 and sent["prompt_tokens"] + sent["max_tokens"] == BLOCK
        # fields left alone take serve.py's --temp and --top_p, which the page shows
        assert (sent["temperature"], sent["top_p"]) == (0.3, 0.7)
        assert [browser.find_element(By.ID, f).get_attribute("placeholder") for f in ("temperature", "top_p")] == [
            "0.3", "0.7"]
        browser.find_element(By.ID, "clear").click()
        for field, value in (("temperature", "0.5"), ("top_p", "0.9"), ("max_tokens", "12")):
            el = browser.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)
        # record every length the reply's text takes on the page
        browser.execute_script("""
            window.lengths = [];
            new MutationObserver(() => {
                const t = document.querySelector('.msg.assistant .text');
                if (t) window.lengths.push(t.textContent.length);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});""")
        browser.find_element(By.ID, "input").send_keys("hello")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false"
                   and b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text
        assert reply.split() == ["la"] * 12
        assert "max tokens" in browser.find_element(By.CSS_SELECTOR, ".msg.assistant .note").text
        lengths = browser.execute_script("return window.lengths")
        partial = {n for n in lengths if 0 < n < len(" la" * 12)}
        assert len(partial) >= 3, lengths  # the text grew on the page while the reply streamed
        # the controls went into the request
        sent = api.worker.recent[-1]
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.5, 0.9, 12)
        first_prompt = sent["prompt_tokens"]
        # a second message carries the conversation; Clear forgets it
        browser.find_element(By.ID, "input").send_keys("again")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note")) == 2)
        assert api.worker.recent[-1]["prompt_tokens"] > first_prompt
        browser.find_element(By.ID, "clear").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
        browser.find_element(By.ID, "input").send_keys("hello")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        assert api.worker.recent[-1]["prompt_tokens"] == first_prompt
    finally:
        api.close()


@needs_chromium
@pytest.mark.parametrize("words", [3, 0])
def test_the_chat_page_says_how_many_requests_are_ahead_of_a_reply_waiting_its_turn(enc, browser, words):
    """A student's reply waiting behind others' showed "..." alone: the page shows the server's count of the requests
    ahead, until the reply's words come, or its turn does: a reply of no words (its <|im_end|> at once) kept "waiting,
    1 ahead" for good, of a request served. A screen reader hears the first count, where it waited in silence."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gate = threading.Event()
    model = la_model(enc, gate=gate)
    if not words:  # <|im_end|> where ' la' was: every reply ends at once, with no text
        with torch.no_grad():
            model.lm_head.weight[enc.encode_single_token(" la"), 0] = -30.0
            model.lm_head.weight[enc.encode_single_token("<|im_end|>"), 0] = 0.0
    api = start(model, enc, name="la")
    after = "return getComputedStyle(document.querySelector('.msg.assistant .text'), '::after').content"
    try:
        wait = WebDriverWait(browser, 60)
        open_page(browser, api)
        with ThreadPoolExecutor(1) as pool:  # another client's request, held running by the gate
            conn = http.client.HTTPConnection(*api.server_address[:2], timeout=60, source_address=("127.0.0.2", 0))
            other = pool.submit(lambda: conn.request("POST", "/v1/completions", json.dumps(
                {"prompt": "la", "max_tokens": 2})) or conn.getresponse().read())
            wait_for(lambda: api.worker.current is not None, "the other request to start")
            browser.find_element(By.ID, "max_tokens").send_keys("3")
            browser.find_element(By.ID, "input").send_keys("hello")
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: b.execute_script(after) == '"… waiting, 1 ahead"')
            assert browser.find_element(By.ID, "said").get_attribute("textContent") == "waiting, 1 ahead"
            gate.set()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false")
            assert other.result()
        assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text.split() == ["la"] * words
        # a screen reader heard the count, then the reply
        assert browser.find_element(By.ID, "said").get_attribute("textContent").split() == (
            ["la"] * words + ["(cut", "at", "max", "tokens)"] if words else ["(an", "empty", "reply)"])
        # the words in its place, or the "…" of a reply with none
        assert browser.execute_script(after) == ("none" if words else '"…"')
    finally:
        gate.set()
        api.close()


@needs_chromium
def test_the_chat_page_shows_the_characters_of_a_stream_whose_reads_cut_them(enc, browser, monkeypatch):
    """The stream's characters come in UTF-8, and a read of the network may end inside one: the page decodes the
    bytes as a stream (TextDecoder's stream: true), so such a character shows whole, not as two U+FFFD."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text = "你好, café 🙂"
    reply = enc.encode(text)
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in reply]))
    send = serve.ReplyWriter.write

    def write_cut(self, data):
        """Writes an event in two, the first part ending inside its first character past ASCII."""
        cut = next((i + 1 for i, b in enumerate(bytes(data)) if b >= 0x80), 0)
        if not cut:
            return send(self, data)
        send(self, bytes(data)[:cut])
        time.sleep(0.05)  # (the page reads that part alone)
        return cut + send(self, bytes(data)[cut:])

    monkeypatch.setattr(serve.ReplyWriter, "write", write_cut)
    api = start(la_model(enc), enc, name="la")
    try:
        wait = WebDriverWait(browser, 60)
        open_page(browser, api)
        browser.find_element(By.ID, "max_tokens").send_keys(str(len(reply)))
        browser.find_element(By.ID, "input").send_keys("hello")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        shown = browser.execute_script("return document.querySelector('.msg.assistant .text').textContent")
        assert shown == text
    finally:
        api.close()


def test_the_chat_page_reaches_the_api_under_the_path_it_was_loaded_from():
    # behind a proxy that serves the server under a path of its own (jupyter-server-proxy's /user/me/proxy/8000/), the
    # page's "/v1/models" went to the proxy's root: the page's every request is to the API in the page's own folder
    with open(serve.PAGE, encoding="utf-8") as f:
        urls = re.findall(r"fetch\(API \+ \"([^\"]*)\"", f.read())
    assert len(urls) == 2, urls  # /v1/models and /v1/chat/completions
    for url in urls:
        assert "/" + url in serve.Handler.ROUTES, url


class PrefixProxy(http.server.ThreadingHTTPServer):
    """A proxy that serves the server at url under a path of its own, PREFIX, as jupyter-server-proxy does: PREFIX
    and PREFIX/ are the server's /, PREFIX/x its /x; what is outside PREFIX is the proxy's own (404 here). Replies are
    passed on whole, once the server has sent them."""
    PREFIX = "/user/me/proxy/8000"

    def __init__(self, url):
        target = urllib.parse.urlsplit(url)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path != PrefixProxy.PREFIX and not path.startswith(PrefixProxy.PREFIX + "/"):
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(self.command, self.path[len(PrefixProxy.PREFIX):] or "/", body,
                             {"Content-Type": self.headers.get("Content-Type") or "text/plain"})
                r = conn.getresponse()
                data = r.read()
                conn.close()
                self.send_response(r.status)
                self.send_header("Content-Type", r.getheader("Content-Type") or "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}{self.PREFIX}"


@needs_chromium
def test_the_chat_page_behind_a_proxy_path_answers_with_or_without_its_last_slash(enc, browser):
    """Opened at .../proxy/8000 (no last slash: a link or a typed address, which such proxies serve as well), the
    page's relative "v1/models" resolved to .../proxy/v1/models, one folder up, outside the server: no model name,
    and every message an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = start(la_model(enc), enc, name="la")
    proxy = PrefixProxy(api.url)
    try:
        wait = WebDriverWait(browser, 60)
        for url in (proxy.url, proxy.url + "/"):
            browser.get(url)
            wait.until(lambda b: "la" in b.find_element(By.ID, "model").text)  # the page reached /v1/models
            browser.find_element(By.ID, "max_tokens").send_keys("3")
            browser.find_element(By.ID, "input").send_keys("hello")
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false"
                       and b.find_elements(By.CSS_SELECTOR, ".msg.assistant, .msg.error"))
            assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error"), url
            assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text.split() == ["la"] * 3, url
    finally:
        proxy.shutdown()
        api.close()


def test_the_served_name_is_the_file_or_folders(tmp_path):
    (tmp_path / "story-v1.5").mkdir()
    assert serve.model_name(str(tmp_path / "story-v1.5") + os.sep) == "story-v1.5"  # a shell's completion adds the /
    assert serve.model_name(str(tmp_path / "story_best.pt")) == "story_best"
    assert serve.model_name("models/run.v2.pt") == "run.v2"


def test_stop_text_cuts_at_the_earliest_of_two_stop_strings():
    st = serve.StopText(["ab", "b"])
    assert st.push("xa") == ("x", False)
    assert st.push("b") == ("", True)  # "ab" starts first: nothing of it is shown


def test_empty_stop_strings_are_ignored_and_top_k_zero_or_minus_one_is_no_limit(api):
    body = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 1, "seed": 3}
    status, plain, _ = post(api, "/v1/completions", body)
    assert status == 200 and api.worker.recent[-1]["top_k"] == api.top_k  # absent: the server's default
    status, empty, _ = post(api, "/v1/completions", dict(body, stop=["", "never appears"]))
    assert status == 200 and empty["choices"][0]["text"] == plain["choices"][0]["text"] != ""
    assert empty["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    for top_k in (0, None, -1):  # (-1: vLLM's no limit, which its clients send; it was a 400)
        assert post(api, "/v1/completions", dict(body, top_k=top_k))[0] == 200
        assert api.worker.recent[-1]["top_k"] is None  # 0 or null: no limit, not the server's 200


def test_repetition_penalty_is_honoured(api, enc):
    """repetition_penalty, gen.py's option by its name, samples as gen.py does with it: it was ignored without a
    word."""
    body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    status, plain, _ = post(api, "/v1/completions", body)
    assert status == 200 and api.worker.recent[-1]["repetition_penalty"] == 1.0  # absent: off
    status, penalized, _ = post(api, "/v1/completions", dict(body, repetition_penalty=5.0))
    assert status == 200 and api.worker.recent[-1]["repetition_penalty"] == 5.0
    _, want, _ = gen.complete(api.model, enc, enc.encode(body["prompt"]), 8, stop_tokens=(enc.eot_token,),
                              temperature=0, repetition_penalty=5.0)
    assert penalized["choices"][0]["text"] == want != plain["choices"][0]["text"]
    for bad in (0, -1, float("inf")):
        status, err, _ = post(api, "/v1/completions", dict(body, repetition_penalty=bad))
        assert status == 400 and err["error"]["param"] == "repetition_penalty", err
    status, err, _ = post(api, "/v1/completions", dict(body, repetition_penalty="high"))
    assert status == 400 and err["error"]["code"] == "invalid_type", err
    # gen.py's rule, not one of serve.py's own: a JSON integer too big for a float is refused as "1e400" is by
    # --repetition_penalty (it was taken, and failed inside torch: a 500), one that fits is sampled with as its float
    status, err, _ = post(api, "/v1/completions", dict(body, repetition_penalty=10**400))
    assert status == 400 \
        and err["error"]["message"].startswith("repetition_penalty must be a number > 0 (1 = off)"), err
    status, _, _ = post(api, "/v1/completions", dict(body, repetition_penalty=10**300))
    assert status == 200 and api.worker.recent[-1]["repetition_penalty"] == 1e300
    # serve.py --repetition_penalty, as gen.py's: the default of a request that gives none, as --temp is
    assert serve.parse_args(["m.pt", "--repetition_penalty", "5"]).repetition_penalty == 5.0
    other = start(api.model, enc, repetition_penalty=5.0)
    try:
        status, answer, _ = post(other, "/v1/completions", body)
        assert status == 200 and answer["choices"][0]["text"] == want
        listed = client(other).models.list().data[0].model_extra["sampling_defaults"]
        assert listed == {"temperature": 0.8, "top_k": 200, "top_p": None, "repetition_penalty": 5.0}
    finally:
        other.close()


def test_a_requests_top_p_is_sampled_with(api):
    """A request's top_p, not only the page's (whose test needs Chromium): a nucleus this small holds the most likely
    token alone, so sampling at temperature 1 gives the greedy text whatever the seed."""
    body = {"prompt": "Once upon a time", "max_tokens": 12}
    greedy = post(api, "/v1/completions", dict(body, temperature=0))[1]["choices"][0]["text"]
    for seed in (0, 1):
        status, r, _ = post(api, "/v1/completions", dict(body, temperature=1, top_p=1e-6, seed=seed))
        assert status == 200 and r["choices"][0]["text"] == greedy and api.worker.recent[-1]["top_p"] == 1e-6, r
    assert post(api, "/v1/completions", dict(body, temperature=1, seed=0))[1]["choices"][0]["text"] != greedy


def test_max_completion_tokens_is_honoured(api):
    status, body, _ = post(api, "/v1/completions", {"prompt": "Once upon a time", "max_completion_tokens": 3})
    assert status == 200 and api.worker.recent[-1]["max_tokens"] == 3
    # with max_tokens too, the newer name wins
    status, body, _ = post(api, "/v1/completions", {"prompt": "Once", "max_completion_tokens": 2, "max_tokens": 5})
    assert status == 200 and api.worker.recent[-1]["max_tokens"] == 2 and body["usage"]["completion_tokens"] <= 2


def head(api, method, path, headers, body=None, host=None):
    """(status, headers with lower-case names, body bytes) of one request."""
    conn = http.client.HTTPConnection(host or api.server_address[0], api.server_address[1], timeout=60)
    conn.request(method, path, body, headers)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def test_cors_lets_the_pages_of_the_allowed_origins_call_the_api(enc):
    # a web page served from elsewhere (a chat UI on localhost:3000) sends JSON to the API only after a preflight
    # that the server answers, and reads an answer only if it names the page's origin
    page = "http://localhost:3000"
    ask = {"Origin": page, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    body = json.dumps({"prompt": "Hi", "max_tokens": 2})
    api = start(tiny_model(enc), enc, cors=(page,))
    try:
        status, h, data = head(api, "OPTIONS", "/v1/chat/completions", ask)
        assert status == 204 and data == b"" and h["access-control-allow-origin"] == page
        assert h["access-control-allow-methods"] == "OPTIONS, POST"
        assert h["access-control-allow-headers"] == "authorization, content-type" and h["vary"] == "Origin"
        assert "access-control-allow-private-network" not in h  # only when the browser asks (below)
        status, h, _ = head(api, "OPTIONS", "/v1/chat/completions",
                            {**ask, "Access-Control-Request-Private-Network": "true"})
        assert status == 204 and h["access-control-allow-private-network"] == "true"
        # a preflight on a connection the browser closes after it is told so, as every answer on one is
        status, h, _ = head(api, "OPTIONS", "/v1/chat/completions", {**ask, "Connection": "close"})
        assert status == 204 and h["connection"] == "close" and h["access-control-allow-origin"] == page
        for stream in (False, True):  # answers and streams alike
            status, h, _ = head(api, "POST", "/v1/completions", {"Origin": page, "Content-Type": "application/json"},
                                json.dumps({"prompt": "Hi", "max_tokens": 2, "stream": stream}))
            assert status == 200 and h["access-control-allow-origin"] == page, stream
        status, h, _ = head(api, "GET", "/v1/nowhere", {"Origin": page})  # errors too: the page reads the message
        assert status == 404 and h["access-control-allow-origin"] == page
        # a preflight is answered for the API's routes only, and an OPTIONS that is no preflight is what it was
        status, h, _ = head(api, "OPTIONS", "/v1/nowhere", ask)
        assert status == 404 and "access-control-allow-methods" not in h
        status, h, _ = head(api, "OPTIONS", "/v1/chat/completions", {"Origin": page})
        assert status == 405 and "access-control-allow-methods" not in h
        # another origin's page gets no preflight and no permission to read
        status, h, _ = head(api, "OPTIONS", "/v1/chat/completions", {**ask, "Origin": "http://evil.example"})
        assert status == 405 and "access-control-allow-origin" not in h
        status, h, _ = head(api, "POST", "/v1/completions", {"Origin": "http://evil.example"}, body)
        assert status == 200 and "access-control-allow-origin" not in h
    finally:
        api.close()
    api = start(tiny_model(enc), enc, cors=("*",))
    try:
        status, h, _ = head(api, "OPTIONS", "/v1/models/tiny", {**ask, "Access-Control-Request-Method": "GET"})
        assert status == 204 and h["access-control-allow-origin"] == "*" \
            and h["access-control-allow-methods"] == "GET, OPTIONS"
        assert "vary" not in h  # the same answer for every origin: a cache keeps one
    finally:
        api.close()


def test_a_refusal_of_a_head_unread_carries_no_cors_headers_of_the_request_before_it(enc):
    """A request whose head the standard library cannot read (headers too large, a URL too long, a request line of no
    HTTP) has no Origin of its own: on a keep-alive connection its refusal carried the CORS headers of the request
    before it, letting that page read an answer to a request it never sent. It carries none."""
    page = "http://localhost:3000"
    api = start(tiny_model(enc), enc, cors=(page,))
    try:
        for second, status in ((b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"X: 1\r\n" * 100 + b"\r\n", 431),
                               (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
                               (b"GARBAGE\r\n\r\n", 400)):
            with socket.create_connection(api.server_address[:2], timeout=60) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nOrigin: %s\r\n\r\n" % page.encode())
                r = http.client.HTTPResponse(sock)
                r.begin()
                assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") == page and r.read()
                sock.sendall(second)
                r = http.client.HTTPResponse(sock)
                r.begin()
                assert r.status == status and r.getheader("Access-Control-Allow-Origin") is None, (status, r.headers)
    finally:
        api.close()


def test_a_page_of_another_site_cannot_make_the_server_generate(enc):
    """Any site the user visited could POST a text/plain body (no preflight) to the server on 127.0.0.1 and have it
    generate: the page read nothing, but it could keep the queue full while open. A browser's POST for a page of
    another site (Sec-Fetch-Site: cross-site or same-site, another port) is a 403 naming the --cors that lets it in,
    and nothing is generated; the chat page's own (same-origin), a typed URL's (none), clients that send no
    Sec-Fetch-Site and the origins --cors allows are served."""
    body = json.dumps({"prompt": "Hi", "max_tokens": 2})
    api = start(tiny_model(enc), enc, cors=("http://localhost:3000",))
    try:
        for site, origin in (("cross-site", "http://evil.example"), ("same-site", "http://127.0.0.1:9000"),
                             ("cross-site", "null")):
            before = len(api.worker.recent)
            status, h, data = head(api, "POST", "/v1/completions",
                                   {"Origin": origin, "Sec-Fetch-Site": site, "Content-Type": "text/plain"}, body)
            err = json.loads(data)["error"]
            fix = "'*'" if origin == "null" else origin
            assert status == 403 and err["code"] == "cross_site_request" and err["message"] == \
                f"this server answers no page of another site ({origin}): to let its pages call the API, start " \
                f"serve.py with --cors {fix}", err
            assert len(api.worker.recent) == before  # nothing generated
        for site, origin in (("same-origin", api.url), ("none", None), (None, "http://evil.example"),
                             ("cross-site", "http://localhost:3000")):
            headers = {k: v for k, v in (("Origin", origin), ("Sec-Fetch-Site", site)) if v}
            status, h, data = head(api, "POST", "/v1/completions", {**headers, "Content-Type": "text/plain"}, body)
            assert status == 200, (site, origin, data)
        # a client waiting for 100 Continue is refused before it sends its body
        status, err, headers = raw(api, b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
                                        b"Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n"
                                        b"Expect: 100-continue\r\n\r\n")
        assert status == 403 and headers["Connection"] == "close", err
    finally:
        api.close()


def test_without_cors_no_page_of_another_origin_is_let_in(api):
    status, h, _ = head(api, "OPTIONS", "/v1/chat/completions", {"Origin": "http://localhost:3000",
                                                                 "Access-Control-Request-Method": "POST"})
    assert status == 405 and "access-control-allow-origin" not in h
    status, h, _ = head(api, "POST", "/v1/completions", {"Origin": "http://localhost:3000"},
                        json.dumps({"prompt": "Hi", "max_tokens": 1}))
    assert status == 200 and "access-control-allow-origin" not in h


def test_a_page_that_reaches_the_loopback_server_by_another_name_is_refused(api, enc):
    """DNS rebinding: a site points its own name at 127.0.0.1, and its page, of the server's origin to the browser,
    read every answer, which the missing CORS headers were to keep from it."""
    port = api.server_address[1]
    body = json.dumps({"prompt": "Hi", "max_tokens": 1}).encode()
    for host in (b"evil.example:%d" % port, b"evil.example", b"localhost.evil.example", b"127.0.0.1.nip.io:%d" % port):
        for request in (b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host,
                        b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (host, len(body), body)):
            status, err, _ = raw(api, request)
            assert status == 403 and err["error"]["code"] == "host_not_allowed", (host, err)
            assert f"http://127.0.0.1:{port}/" in err["error"]["message"]
    # (an empty Host, as no browser sends: RFC 9112's for a target of no authority; it was refused, naming nothing)
    for host in (b"localhost:%d" % port, b"LocalHost.", b"chat.localhost", b"127.0.0.1", b"127.0.0.2:80",
                 b"[::1]:%d" % port,
                 b""):
        status, _, _ = raw(api, b"GET /v1/models HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert status == 200, host
    # a server on every network is reached by the machine's own names, whatever they are
    other = start(tiny_model(enc), enc, host="0.0.0.0")
    try:
        status, _, _ = raw(other, b"GET /v1/models HTTP/1.1\r\nHost: my-box.lan:8000\r\n\r\n")
        assert status == 200
    finally:
        other.close()


def test_a_loopback_server_behind_a_proxy_answers_the_names_it_is_given(capsys, enc):
    """A proxy that passes on its own public name (Codespaces, a Jupyter proxy) got the DNS-rebinding refusal with no
    way round it but --host 0.0.0.0, which opens the server to the whole network: --allowed_hosts names it."""
    assert serve.parse_args(["--allowed_hosts", "Box-8000.App.Example., proxy.lan:443"]).allowed_hosts == \
        ("box-8000.app.example", "proxy.lan")
    for bad in ("https://box.example", "box.example/chat", ","):  # a URL, a path, nothing: never a Host's name
        with pytest.raises(SystemExit):
            serve.parse_args(["--allowed_hosts", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "expected host names like" in err, err
    named = start(tiny_model(enc), enc, allowed_hosts=("box-8000.app.example",))
    anyone = start(tiny_model(enc), enc, allowed_hosts=("*",))
    try:
        request = b"GET /v1/models HTTP/1.1\r\nHost: %s\r\n\r\n"
        assert raw(named, request % b"BOX-8000.app.example:443")[0] == 200
        assert raw(named, request % b"localhost")[0] == 200  # its own names still
        status, err, _ = raw(named, request % b"evil.example")
        assert status == 403 and "--allowed_hosts evil.example" in err["error"]["message"]  # the fix, named
        assert raw(anyone, request % b"evil.example")[0] == 200
    finally:
        named.close()
        anyone.close()


def test_cors_origins_are_checked_on_the_command_line(capsys, ckpt):
    assert serve.parse_args(["--cors", "http://localhost:3000, https://a.example/"]).cors == \
        ("http://localhost:3000", "https://a.example")
    assert serve.parse_args(["--cors", "*"]).cors == ("*",)  # any origin
    for bad in ("localhost:3000", "http://a.example/chat", ","):  # no scheme, a path, nothing: never an Origin
        with pytest.raises(SystemExit):
            serve.parse_args(["--cors", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "expected origins like http://localhost:3000" in err, err
    # and the server serve.py starts lets them in
    with served(ckpt, "--cors", "http://localhost:3000") as (p, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models", headers={"Origin": "http://localhost:3000"})
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") == "http://localhost:3000"
    assert p.returncode == 0, p.err


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_host_is_served(enc):
    # socketserver listens on IPv4 only: --host ::1 failed with "Address family not supported", --host :: the same
    for host, reach in (("::1", "::1"), ("::", "127.0.0.1")):  # ::, like 0.0.0.0, takes IPv4 clients too
        api = start(tiny_model(enc), enc, host=host)
        try:
            assert api.url == f"http://[{host}]:{api.server_address[1]}"
            status, _, data = head(api, "GET", "/v1/models", {}, host=reach)
            assert status == 200 and json.loads(data)["data"][0]["id"] == "tiny"
        finally:
            api.close()


KEY = "s3cret-Key_1"


def test_with_an_api_key_each_route_of_the_api_needs_it_and_the_page_and_health_do_not(enc, monkeypatch):
    """--host 0.0.0.0 left the API to anyone on the network. With an API key (SERVE_API_KEY) a request to the API must
    send it as OpenAI's clients do, Authorization: Bearer KEY, else 401 invalid_api_key, as OpenAI answers; the chat
    page (which asks for the key) and /health (a load balancer's probe) stay open. Without a key, nothing changes."""
    compared = []
    compare = serve.hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or compare(a, b))
    said = []
    api = start(tiny_model(enc), enc, api_key=KEY, log=said.append)
    bodies = {"/v1/chat/completions": {"messages": CHAT, "max_tokens": 2},
              "/v1/completions": {"prompt": "Hi", "max_tokens": 2},
              "/v1/responses": {"input": "Hi", "max_output_tokens": 2}}
    right = {"Authorization": f"Bearer {KEY}"}
    try:
        for path, body in [*bodies.items(), ("/v1/models", None), ("/v1/models/tiny", None)]:
            method = "POST" if body else "GET"
            data = json.dumps(body) if body else None
            for sent, words in (({}, "this server requires an API key"),
                                ({"Authorization": "Bearer unused"}, "Incorrect API key provided"),
                                ({"Authorization": f"Bearer {KEY}x"}, "Incorrect API key provided"),
                                ({"Authorization": f"Bearer {KEY[:-1]}"}, "Incorrect API key provided"),
                                ({"Authorization": KEY}, "Incorrect API key provided"),  # no scheme
                                ({"Authorization": f"Basic {KEY}"}, "Incorrect API key provided")):
                status, h, answer = head(api, method, path, sent, data)
                error = json.loads(answer)["error"]
                assert status == 401 and error["code"] == "invalid_api_key", (path, sent, answer)
                assert error["message"].startswith(words) and "Authorization: Bearer KEY" in error["message"], error
                assert "SERVE_API_KEY" in error["message"] and KEY not in answer.decode(), error  # the fix, not the key
                assert h["www-authenticate"] == "Bearer", h
            for sent in (right, {"Authorization": f"bearer  {KEY} "}):  # the scheme in any case, as HTTP has it
                status, _, answer = head(api, method, path, sent, data)
                assert status == 200, (path, sent, answer)
        assert KEY not in "\n".join(said)  # the log has each 401, never the key
        assert compared and all(isinstance(a, bytes) and b == KEY.encode() for a, b in compared)  # in constant time
        for path in ("/", "/health"):
            assert head(api, "GET", path, {})[0] == 200, path
        # a client waiting for 100 Continue with no key is refused at once, its body never asked for
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 10\r\n\r\n")
            got = b"".join(iter(lambda: sock.recv(65536), b""))
        assert got.startswith(b"HTTP/1.1 401 ") and b"invalid_api_key" in got, got
    finally:
        api.close()
    open_api = start(tiny_model(enc), enc)  # no key: any Authorization, or none, is answered as before
    try:
        for sent in ({}, {"Authorization": "Bearer unused"}, {"Authorization": "whatever"}):
            assert head(open_api, "POST", "/v1/completions", sent, json.dumps(bodies["/v1/completions"]))[0] == 200
    finally:
        open_api.close()


def test_the_api_key_may_come_as_llama_cpps_x_api_key_header(enc, monkeypatch):
    """llama.cpp's server takes its key as X-Api-Key: KEY too, and clients written for it send that (as one behind a
    proxy whose own Basic authentication takes the Authorization header must): it is taken as Bearer is, in constant
    time, and a wrong one is refused as a wrong Bearer key is."""
    compared = []
    compare = serve.hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or compare(a, b))
    api = start(tiny_model(enc), enc, api_key=KEY)
    try:
        for sent, status in (({"X-Api-Key": KEY}, 200), ({"x-api-key": f" {KEY} "}, 200),
                             ({"Authorization": "Basic cHJveHk6cGFzcw==", "X-Api-Key": KEY}, 200),
                             ({"X-Api-Key": f"{KEY}x"}, 401), ({"X-Api-Key": ""}, 401)):
            status_got, _, answer = head(api, "GET", "/v1/models", sent)
            assert status_got == status, (sent, answer)
            if status == 401:
                assert json.loads(answer)["error"]["message"].startswith("Incorrect API key provided"), answer
        assert compared and all(isinstance(a, bytes) and b == KEY.encode() for a, b in compared)
    finally:
        api.close()


def test_a_request_refused_by_its_head_is_answered_before_its_body_is_read(enc, monkeypatch):
    """A GET with a body had it read before the API key was checked: a client without the key could make the server
    wait for (and read) a body it would refuse. Every route refuses by the head alone (a key, a path, a method), then
    reads a body; the rest of one still coming is dropped after the answer, the connection closed behind it."""
    monkeypatch.setattr(serve, "REQUEST_WAIT", 2)  # (a body waited for is a 408 after it, not the refusal)
    api = start(tiny_model(enc), enc, api_key=KEY)
    try:
        for method, path, status in (("GET", "/v1/models", 401), ("GET", "/v1/models/tiny", 401),
                                     ("HEAD", "/v1/models", 401), ("POST", "/v1/completions", 401),
                                     ("GET", "/nope", 404), ("PUT", "/v1/models", 405)):
            with socket.create_connection(api.server_address[:2], timeout=60) as sock:
                sock.sendall(b"%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n"
                             % (method.encode(), path.encode()))  # and no body yet
                got = b"".join(iter(lambda: sock.recv(65536), b""))
            assert got.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in got, (method, path, got)
        # with the key, a GET's body is read, and the request after it on the connection answered
        with socket.create_connection(api.server_address[:2], timeout=60) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Length: 2\r\n\r\n{}GET /health HTTP/1.1\r\nHost: localhost\r\n"
                         b"Connection: close\r\n\r\n" % KEY.encode())
            got = b"".join(iter(lambda: sock.recv(65536), b""))
        assert got.count(b"HTTP/1.1 200 ") == 2, got
    finally:
        api.close()


def test_the_openai_client_sends_the_api_key_it_is_given(enc):
    api = start(tiny_model(enc), enc, api_key=KEY)
    try:
        keyed = openai.OpenAI(base_url=api.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in keyed.models.list()] == ["tiny"]
        assert keyed.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2).choices[0].message.content
        assert "".join(c.choices[0].delta.content or "" for c in keyed.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=2, stream=True))
        assert keyed.responses.create(model="tiny", input="Hi", max_output_tokens=2).status == "incomplete"
        with pytest.raises(openai.AuthenticationError) as e:  # README's api_key="unused", from before the key
            client(api).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        assert "Incorrect API key provided" in str(e.value) and e.value.code == "invalid_api_key"
    finally:
        api.close()


def test_a_page_that_cors_allows_may_send_the_api_key(enc):
    """A page of another origin sends Authorization only after a preflight allows that header; the preflight itself
    carries no key (browsers add none to it), and a 401 names the page's origin, so the page reads why."""
    page = "http://localhost:3000"
    api = start(tiny_model(enc), enc, cors=(page,), api_key=KEY)
    try:
        status, h, _ = head(api, "OPTIONS", "/v1/chat/completions", {
            "Origin": page, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert status == 204 and "authorization" in h["access-control-allow-headers"].split(", ")
        body = json.dumps({"prompt": "Hi", "max_tokens": 2})
        status, h, answer = head(api, "POST", "/v1/completions", {"Origin": page}, body)
        assert status == 401 and h["access-control-allow-origin"] == page and b"invalid_api_key" in answer
        status, h, _ = head(api, "POST", "/v1/completions", {"Origin": page, "Authorization": f"Bearer {KEY}"}, body)
        assert status == 200 and h["access-control-allow-origin"] == page
    finally:
        api.close()


def test_the_api_key_comes_from_serve_api_key_or_the_command_line_and_the_start_line_says_it_is_required(
        ckpt, capsys, monkeypatch):
    """A key on the command line shows in ps to every user of the machine: SERVE_API_KEY holds it instead; given both,
    --api_key wins, as a command line does over the environment. The start line says a key is required, never the
    key. A key that no header could carry, or SERVE_API_KEY set empty (a file read that failed), is refused in a line,
    not a server left open."""
    monkeypatch.delenv("SERVE_API_KEY", raising=False)
    assert serve.parse_args([]).api_key is None
    assert serve.parse_args(["--api_key", KEY]).api_key == KEY
    monkeypatch.setenv("SERVE_API_KEY", "from-env")
    assert serve.parse_args([]).api_key == "from-env"
    assert serve.parse_args(["--api_key", KEY]).api_key == KEY
    for bad, where in (("", "SERVE_API_KEY: "), ("two words", "SERVE_API_KEY: "), ("clé", "SERVE_API_KEY: ")):
        monkeypatch.setenv("SERVE_API_KEY", bad)
        with pytest.raises(SystemExit):
            serve.parse_args([])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert where + "expected a key of visible ASCII characters" in err and "secrets.token_urlsafe()" in err, err
        monkeypatch.delenv("SERVE_API_KEY")
        with pytest.raises(SystemExit):
            serve.parse_args(["--api_key", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument --api_key: expected a key of visible ASCII" in err, err
    # what is wrong is named, the key not shown: a file's line break, read with the key (a Kubernetes secret, a
    # Python read()), is unseen, and "a space or a character outside ASCII" named neither
    for bad, said in (("", "an empty one"), ("zq 9", "one with a space"), ("zqé", "one with a character outside "
                      "ASCII"), ("zq9\n", "one ending in a line break (a file's, read with the key: strip it)"),
                      ("zq\t9", "one with a tab"), ("zq\n9", "one with a line break"),
                      ("zq\x7f9", "one with a control character")):
        monkeypatch.setenv("SERVE_API_KEY", bad)
        with pytest.raises(SystemExit):
            serve.parse_args([])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"(an HTTP header carries it), got {said}; make one with" in err and "zq" not in err, err
    monkeypatch.delenv("SERVE_API_KEY")
    lines = []

    def ctrl_c(self, *args, **kwargs):
        lines.append(capsys.readouterr().out)
        raise KeyboardInterrupt
    monkeypatch.setattr(serve.ApiServer, "serve_forever", ctrl_c)
    monkeypatch.setenv("SERVE_API_KEY", KEY)
    for host, said in (("127.0.0.1", ", with the API key required: chat page at "),
                       ("0.0.0.0", ", open to every machine that reaches it, with the API key required: ")):
        code, _, err = run_cli(serve.main, [ckpt, "--host", host, "--port", "0", "--device", "cpu"], capsys)
        assert code == 0 and said in lines[-1] and KEY not in lines[-1] + err, (lines, err)
    # and the server serve.py starts asks for it
    with served(ckpt, env={**os.environ, "SERVE_API_KEY": KEY}) as (p, port):
        for sent, status in (({}, 401), ({"Authorization": f"Bearer {KEY}"}, 200)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/v1/models", headers=sent)
            assert conn.getresponse().status == status, sent
            conn.close()
    assert p.returncode == 0, p.err


@contextlib.contextmanager
def phone(browser, height=667):
    """The browser as a phone held upright, 375 px wide: an iPhone SE's screen, or height=350 of it with its keyboard
    up (as Firefox on Android resizes the page). A touchscreen, so the page sees (pointer: coarse). The page is to be
    loaded inside; the one browser is a desktop's again after."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": height, "deviceScaleFactor": 2, "mobile": True})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def open_page(browser, api):
    """api's chat page loaded in browser, its model named (the page asked /v1/models); returns a 60 s wait."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(api.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: "la" in b.find_element(By.ID, "model").text)
    return wait


def box(browser, css):
    """An element's place on the screen: its DOMRect as a dict (x, y, width, height, top, bottom, ...)."""
    return browser.execute_script("return document.querySelector(arguments[0]).getBoundingClientRect().toJSON()", css)


@needs_chromium
def test_a_phone_can_tap_and_read_the_chat_pages_fields_without_zooming(enc, browser):
    """On a phone the fields were 13-15px text, so iOS zoomed into each on a tap (and stayed zoomed), and the settings'
    fields were 24px tall, under a fingertip's 44. A long URL in a message still wraps inside the screen."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc), enc, name="la")
    try:
        with phone(browser):
            wait = open_page(browser, api)
            browser.find_element(By.ID, "settings").click()
            fields = ["#input", "#send", "#settings", "#clear", "#system", "#temperature", "#top_p", "#max_tokens"]
            for css in fields:
                assert box(browser, css)["height"] >= 44, css
                size = browser.execute_script(
                    "return getComputedStyle(document.querySelector(arguments[0])).fontSize", css)
                assert float(size.removesuffix("px")) >= 16, (css, size)
            browser.find_element(By.ID, "max_tokens").send_keys("3")
            browser.find_element(By.ID, "input").send_keys("https://example.com/" + "averyverylongpathsegment" * 3)
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
            assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
            # one column, nothing wider than the screen: no sideways scrolling
            assert browser.execute_script("return document.documentElement.scrollWidth <= innerWidth")
            assert box(browser, ".msg.user")["right"] <= 375
    finally:
        api.close()


@needs_chromium
def test_on_a_phone_the_chat_pages_settings_fold_so_the_conversation_keeps_the_screen(enc, browser):
    """The settings took 166px of a phone's 667, and of the 350 its keyboard leaves: the conversation had 98px, three
    lines. They fold behind a Settings button there, and open under it; a desktop's window shows them as before."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc), enc, name="la")
    try:
        with phone(browser, height=350):
            open_page(browser, api)
            assert not browser.find_element(By.ID, "temperature").is_displayed()
            assert box(browser, "#messages")["height"] >= 180
            for css in ("#input", "#send"):  # the form in view
                assert box(browser, css)["bottom"] <= 350, css
            settings = browser.find_element(By.ID, "settings")
            settings.click()
            assert browser.find_element(By.ID, "temperature").is_displayed()
            assert settings.get_attribute("aria-expanded") == "true"
            assert box(browser, "#temperature")["top"] >= box(browser, "#settings")["bottom"]
            settings.click()
            assert not browser.find_element(By.ID, "temperature").is_displayed()
        browser.get(api.url + "/")
        assert browser.find_element(By.ID, "temperature").is_displayed()
        assert not browser.find_element(By.ID, "settings").is_displayed()
    finally:
        api.close()


@needs_chromium
def test_on_a_phone_the_chat_pages_enter_starts_a_new_line_and_send_sends(enc, browser):
    """A phone's keyboard has no Shift+Enter, and its Enter sent: no message there could have two lines. There Enter
    starts a new line and the button sends, as phones' messaging apps do; a desktop's Enter still sends."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc), enc, name="la")
    try:
        with phone(browser):
            wait = open_page(browser, api)
            assert "Shift" not in browser.find_element(By.ID, "input").get_attribute("placeholder")
            browser.find_element(By.ID, "input").send_keys("first line\nsecond line")
            assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false"
                       and b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
            assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "first line\nsecond line"
            assert browser.find_element(By.ID, "input").get_attribute("value") == ""
        open_page(browser, api)
        browser.find_element(By.ID, "input").send_keys("hello\n")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.user"))
        # a touchscreen beside a touchpad: a Surface with its type cover, whose browser says (pointer: coarse) as a
        # phone's, has a keyboard with Shift+Enter, and its Enter sends (it had started a new line)
        fine_too = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
            const matchMedia_ = window.matchMedia.bind(window);
            window.matchMedia = (q) => q !== "(any-pointer: fine)" ? matchMedia_(q)
                : {matches: true, media: q, addEventListener() {}, removeEventListener() {}};"""})
        try:
            with phone(browser):
                open_page(browser, api)
                assert browser.execute_script("return matchMedia('(pointer: coarse)').matches")
                assert "Shift+Enter" in browser.find_element(By.ID, "input").get_attribute("placeholder")
                browser.find_element(By.ID, "input").send_keys("hello\n")
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.user"))
        finally:
            browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": fine_too["identifier"]})
    finally:
        api.close()


@needs_chromium
def test_the_chat_page_keeps_a_replys_newest_words_in_view_unless_the_reader_scrolled_up(enc, browser):
    """A long reply on a phone: its newest words stay in view as they come, and so does the "(cut at max tokens)" under
    them, which was left below the view. A reader who scrolls up to read back stays there: each token pulled them
    down again."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc, delay=0.05), enc, name="la")  # a reply streams for a second or more
    at_end = "const m = document.getElementById('messages'); return m.scrollHeight - m.scrollTop - m.clientHeight"
    try:
        with phone(browser, height=350):
            wait = open_page(browser, api)
            browser.find_element(By.ID, "input").send_keys("word " * 30)  # more lines than the view holds
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
            assert box(browser, ".msg.user")["top"] < box(browser, "#messages")["top"]  # scrolled
            assert box(browser, ".msg.assistant .note")["bottom"] <= box(browser, "#messages")["bottom"]
            assert browser.execute_script(at_end) <= 1
            browser.find_element(By.ID, "input").send_keys("again")
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: len(b.find_element(By.CSS_SELECTOR, ".msg.assistant:last-child .text").text) > 20)
            browser.execute_script("document.getElementById('messages').scrollTop = 0")  # the reader scrolls up
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note")) == 2)
            assert browser.execute_script("return document.getElementById('messages').scrollTop") == 0
            assert browser.execute_script("return scrollY") == 0  # the page itself never scrolled: the form in view
    finally:
        api.close()


@needs_chromium
def test_the_chat_page_is_as_tall_as_a_phones_visible_screen(enc, browser):
    """The page was 100vh tall: on a phone, its height with the browser's bars hidden, so with Safari's bar shown the
    form lay under it. It is 100dvh, the visible height. (Chromium's phone has no bars to tell the two apart: this
    asks how Chromium reads the page's style, 100vh staying as the fallback of browsers before dvh.)"""
    api = start(la_model(enc), enc, name="la")
    try:
        with phone(browser):
            open_page(browser, api)
            height = browser.execute_script(
                "return [...document.styleSheets[0].cssRules].find((r) => r.selectorText === 'body').style.height")
            assert height == "100dvh"
            assert box(browser, "body")["height"] == 667
    finally:
        api.close()


# -----------------------------------------------------------------------------
# the chat page for a keyboard and a screen reader


@contextlib.contextmanager
def narrow(browser, height=600):
    """The browser as a desktop's window zoomed to 400%: 320 px wide, as WCAG's reflow asks, so the page is laid out as
    on a phone but worked by a keyboard (no touchscreen). The page is to be loaded inside."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 320, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def tab(browser, times, back=False):
    """The ids of the elements that Tab (Shift+Tab if back) focuses, pressed times times; "" out of the page."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ids = []
    for _ in range(times):
        keys = ActionChains(browser)
        if back:
            keys.key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        else:
            keys.send_keys(Keys.TAB).perform()
        ids.append(browser.execute_script("return document.activeElement.id"))
    return ids


@needs_chromium
def test_a_keyboard_reaches_the_chat_pages_folded_settings_right_after_their_button(enc, browser):
    """In a narrow window (a phone's, or a desktop's zoomed to 400%) the settings fold behind a button. Tab from it went
    to Clear and the message box, past the fields it had just shown, which came before it in the page: they follow it
    now, and it names them (aria-controls) to a screen reader, as it says whether they are open (aria-expanded)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    api = start(la_model(enc), enc, name="la")
    try:
        with narrow(browser):
            open_page(browser, api)
            settings = browser.find_element(By.ID, "settings")
            fields = browser.find_element(By.ID, settings.get_attribute("aria-controls"))
            # (the API key's first, hidden: this server has no key)
            assert [f.get_attribute("id") for f in fields.find_elements(By.TAG_NAME, "input")] == [
                "api_key", "system", "temperature", "top_p", "max_tokens"]
            assert browser.execute_script("return document.activeElement.id") == "input"  # (autofocus)
            assert tab(browser, 4, back=True) == ["messages", "clear", "settings", ""]  # the folded fields skipped
            settings.send_keys(Keys.ENTER)
            assert settings.get_attribute("aria-expanded") == "true" and fields.is_displayed()
            assert tab(browser, 8) == [
                "system", "temperature", "top_p", "max_tokens", "clear", "messages", "input", "send"]
            settings.send_keys(Keys.SPACE)
            assert settings.get_attribute("aria-expanded") == "false" and not fields.is_displayed()
    finally:
        api.close()


@needs_chromium
def test_a_screen_reader_hears_a_name_for_each_of_the_chat_pages_controls(enc, browser):
    """The message box had no name but its placeholder, a hint that goes as the box is typed in (and is "Message" alone
    on a phone): it is named Message, its hint kept as the placeholder. The settings' fields are named by their labels,
    the buttons by their words. The page says its language, so a screen reader reads it in an English voice, and its
    title, which names the tab."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc), enc, name="la")
    try:
        with narrow(browser):  # (where the Settings button shows)
            open_page(browser, api)
            browser.find_element(By.ID, "settings").click()  # (a folded field has no name: it is hidden)
            names = {"input": "Message", "send": "Send", "settings": "Settings", "clear": "Clear", "system": "System",
                     "temperature": "Temperature", "top_p": "Top-p", "max_tokens": "Max tokens"}
            assert {id: browser.find_element(By.ID, id).accessible_name for id in names} == names
            assert "Shift+Enter" in browser.find_element(By.ID, "input").get_attribute("placeholder")
            assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
            assert browser.title == "Chat"
    finally:
        api.close()


@needs_chromium
def test_a_screen_reader_hears_each_chat_reply_once_whole_and_an_error_at_once(enc, browser):
    """The conversation was a live region, so a screen reader re-read the reply from its start at each token. It is no
    live region now: a polite one apart says the reply once it is whole, with its note; an error is an alert."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc, delay=0.05), enc, name="la")  # a reply streams for half a second
    live = "[aria-live]:not([aria-live=off]), [role=log], [role=status], [role=alert], [role=marquee], [role=timer]"
    try:
        wait = open_page(browser, api)
        said = browser.find_element(By.ID, "said")
        assert said.get_attribute("aria-live") == "polite" and not said.text
        browser.execute_script("""
            window.said = [];
            const said = document.getElementById('said');
            new MutationObserver(() => window.said.push(said.textContent))
                .observe(said, {subtree: true, childList: true, characterData: true});""")
        browser.find_element(By.ID, "max_tokens").send_keys("12")
        browser.find_element(By.ID, "input").send_keys("hello\n")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        assert browser.execute_script("return document.querySelector('.msg.assistant').closest(arguments[0])",
                                      live) is None
        spoken = [s for s in browser.execute_script("return window.said") if s]
        assert len(spoken) == 1 and spoken[0] == " ".join(["la"] * 12) + "\n(cut at max tokens)", spoken
        field = browser.find_element(By.ID, "max_tokens")
        field.clear()
        field.send_keys("64")  # the whole context: no room for the conversation, which is refused
        browser.find_element(By.ID, "input").send_keys("again\n")
        error = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.error"))[0]
        assert error.get_attribute("role") == "alert" and error.text.startswith("Error: this model's context holds 64")
        assert [s for s in browser.execute_script("return window.said") if s] == spoken  # (the alert says it)
    finally:
        api.close()


@needs_chromium
def test_after_the_chat_pages_send_button_the_focus_is_in_the_message_box(enc, browser):
    """A click on Send, or Enter on it from the keyboard, left the focus on the button, which reads Stop while the reply
    streams: the next Enter stopped the reply, and the next message was to be typed after a click or Shift+Tab. The
    focus goes back to the message box, as after Stop and Clear."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    api = start(la_model(enc, delay=0.05), enc, name="la")
    focused = "return document.activeElement.id"
    idle = lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false"  # noqa: E731
    try:
        wait = open_page(browser, api)
        browser.find_element(By.ID, "input").send_keys("hello")
        browser.find_element(By.ID, "send").click()
        assert browser.execute_script(focused) == "input"
        wait.until(lambda b: idle(b) and b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        assert browser.execute_script(focused) == "input"
        browser.find_element(By.ID, "input").send_keys("again")
        assert tab(browser, 1) == ["send"]
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        assert browser.execute_script(focused) == "input"
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, ".msg.assistant:last-child .text").text)
        browser.find_element(By.ID, "send").click()  # Stop
        wait.until(idle)
        assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant:last-child .note").text == "(stopped)"
        assert browser.execute_script(focused) == "input"
        browser.find_element(By.ID, "clear").click()
        assert browser.execute_script(focused) == "input"
    finally:
        api.close()


CONTRAST = """
    // WCAG's contrast of two colours, from their relative luminance
    const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
    const lum = (c) => rgb(c).slice(0, 3).map((v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
        .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
    // the colour behind an element: its own, or the nearest of its ancestors' not transparent (the page's is white)
    const behind = (el) => {
        for (; el; el = el.parentElement) {
            const c = getComputedStyle(el).backgroundColor;
            if (rgb(c)[3] !== 0) return c;
        }
        return "rgb(255, 255, 255)";
    };
    const out = [];
    const seen = (el) => el.getClientRects().length && getComputedStyle(el).visibility === "visible";
    // every text shown, the "…" of a reply not yet begun, the placeholders: 4.5:1 (AA); the fields' edges: 3:1
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) {
        const el = walk.currentNode.parentElement;
        if (walk.currentNode.textContent.trim() && el.tagName !== "SCRIPT" && seen(el))
            out.push(["text", el.id || el.className || el.tagName, ratio(getComputedStyle(el).color, behind(el)), 4.5]);
    }
    for (const el of document.querySelectorAll(".text:empty"))
        out.push(["…", el.className, ratio(getComputedStyle(el, "::after").color, behind(el)), 4.5]);
    for (const el of document.querySelectorAll("input, textarea")) {
        if (!seen(el)) continue;
        const p = getComputedStyle(el, "::placeholder");
        out.push(["placeholder", el.id, ratio(p.color, behind(el)) * p.opacity, 4.5]);
        out.push(["edge", el.id, ratio(getComputedStyle(el).borderTopColor, behind(el.parentElement)), 3]);
    }
    return out;"""


@needs_chromium
def test_the_chat_pages_words_and_fields_stand_out_from_their_background(enc, browser):
    """WCAG AA's contrast, from the colours the page's style gives: 4.5:1 for its words (the labels, the notes, the
    "…" of a reply not yet begun, a placeholder), 3:1 for the edge that shows where a field is. The message box's was
    #d2d2d7 on white, 1.5:1: it is the labels' grey, as the placeholders are. The same in a window as narrow as a
    phone's, and under a dark desktop theme, which the page does not follow (its colours are its own, never the
    browser's dark ones)."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc), enc, name="la")
    try:
        for scheme in ("light", "dark"):
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                    {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
            for window in (contextlib.nullcontext, narrow):
                with window(browser):
                    wait = open_page(browser, api)
                    if window is narrow:
                        browser.find_element(By.ID, "settings").click()
                    browser.find_element(By.ID, "max_tokens").send_keys("3")
                    browser.find_element(By.ID, "input").send_keys("hello\n")
                    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
                    browser.find_element(By.ID, "max_tokens").clear()
                    browser.find_element(By.ID, "max_tokens").send_keys("64")  # the whole context: an error
                    browser.find_element(By.ID, "input").send_keys("again\n")
                    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.error"))
                    browser.execute_script("bubble('assistant', '')")  # (as a reply waits for its first word)
                    measured = browser.execute_script(CONTRAST)
                    assert {what for what, *_ in measured} == {"text", "…", "placeholder", "edge"}
                    low = [(what, where, round(ratio, 2)) for what, where, ratio, least in measured if ratio < least]
                    assert not low, (scheme, window.__name__, low)
                    # the placeholders' grey is the page's own, not a browser's, which may be lighter (WebKit's)
                    colour = "return getComputedStyle(document.querySelector(arguments[0]), arguments[1]).color"
                    for css in ("#input", "#temperature"):
                        assert browser.execute_script(colour, css, "::placeholder") == browser.execute_script(
                            colour, "label", None)
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        api.close()


@needs_chromium
def test_in_forced_colors_the_chat_pages_messages_keep_an_edge(enc, browser):
    """Windows' high contrast themes (forced colors) paint every background the window's one colour: the messages, told
    apart from the page and from each other by their backgrounds alone, ran together as one text. Each has a border
    there, in the theme's own colour."""
    api = start(la_model(enc), enc, name="la")
    style = """const s = getComputedStyle(arguments[0]);
        return [s.backgroundColor, s.borderTopStyle, parseFloat(s.borderTopWidth), s.borderLeftStyle]"""
    try:
        forced = {"features": [{"name": "forced-colors", "value": "active"}]}
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", forced)
        open_page(browser, api)
        assert browser.execute_script("return matchMedia('(forced-colors: active)').matches")
        backgrounds = set()
        for cls in ("user", "assistant", "error"):
            background, top, width, left = browser.execute_script(style, browser.execute_script(
                "return bubble(arguments[0], 'words')", cls))
            backgrounds.add(background)
            assert top == left == "solid" and width >= 1, (cls, top, width, left)
        assert len(backgrounds) == 1, backgrounds  # (the theme's one: their own are gone)
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        api.close()


@needs_chromium
def test_a_keyboard_reaches_each_of_the_chat_pages_controls_in_the_order_they_show_and_sees_it_focused(enc, browser):
    """Tab goes through the settings' fields, Clear, the message box and Send, as they read, left to right and down,
    and on out of the page: the message box keeps no Tab to itself (no trap). Each shows its focus by an outline.
    Nothing moves of itself (no animation, no smooth scrolling) for prefers-reduced-motion to stop."""
    api = start(la_model(enc), enc, name="la")
    outline = "const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)]"
    moving = """return [...document.querySelectorAll('*')].filter((el) => { const s = getComputedStyle(el);
        return s.animationName !== 'none' || parseFloat(s.transitionDuration) || s.scrollBehavior === 'smooth'; })
        .map((el) => el.id || el.tagName)"""
    try:
        open_page(browser, api)
        assert tab(browser, 7, back=True) == ["messages", "clear", "max_tokens", "top_p", "temperature", "system", ""]
        for id in ("system", "temperature", "top_p", "max_tokens", "clear", "messages", "input", "send"):
            assert tab(browser, 1) == [id]
            style, width = browser.execute_script(outline)
            assert style != "none" and width >= 1, (id, style, width)
        assert browser.execute_script(moving) == [] and browser.execute_script("return document.getAnimations()") == []
    finally:
        api.close()


def heard(browser, role):
    """The texts a screen reader reads, in order, inside the first element of this ARIA role (Chromium's tree)."""
    nodes = {n["nodeId"]: n for n in browser.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]}
    out = []

    def walk(node, inside):
        inside = inside or node.get("role", {}).get("value") == role
        if inside and not node.get("ignored") and node["role"]["value"] == "StaticText":
            out.append(node["name"]["value"].strip())
        for child in node.get("childIds", []):
            walk(nodes[child], inside)
        return inside

    walk(next(iter(nodes.values())), False)
    return out


@needs_chromium
def test_a_screen_reader_hears_who_said_each_of_the_chat_pages_messages(enc, browser):
    """Who said a message was shown by its side and colour alone: a screen reader read the conversation as one voice.
    Each message is heard after "You:" or "Model:", words that take no room on the screen."""
    from selenium.webdriver.common.by import By

    api = start(la_model(enc), enc, name="la")
    try:
        wait = open_page(browser, api)
        browser.find_element(By.ID, "max_tokens").send_keys("3")
        browser.find_element(By.ID, "input").send_keys("hello\n")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        assert heard(browser, "main") == ["You:", "hello", "Model:", "la la la", "(cut at max tokens)"]
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "hello"
        assert box(browser, ".msg.user .text")["left"] == box(browser, ".msg.user")["left"] + 12  # (its padding)
    finally:
        api.close()


@needs_chromium
def test_a_keyboard_scrolls_back_through_a_long_chat_conversation(enc, browser):
    """Nothing in the conversation takes the focus, so in Safari, which gives a scroller none of its own, a keyboard
    could not scroll back through it (Chromium and Firefox focus a scroller that overflows). It takes the focus
    (tabindex 0), just before the message box, and the keys scroll it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    api = start(la_model(enc), enc, name="la")
    scrolled = "return document.getElementById('messages').scrollTop"
    try:
        with narrow(browser, height=350):
            wait = open_page(browser, api)
            assert browser.find_element(By.ID, "messages").get_property("tabIndex") == 0
            browser.find_element(By.ID, "input").send_keys("word " * 30 + "\n")  # more lines than the view holds
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
            assert browser.execute_script(scrolled) > 0
            assert tab(browser, 1, back=True) == ["messages"]
            ActionChains(browser).send_keys(Keys.HOME).perform()
            wait.until(lambda b: b.execute_script(scrolled) == 0)  # (Chromium glides there)
    finally:
        api.close()


@needs_chromium
def test_the_chat_page_asks_for_the_api_key_a_server_needs_and_sends_it(enc, browser):
    """With SERVE_API_KEY the page's requests were refused (401): it named no model, and had no way to take the key. It
    shows an API key field, labelled, once the server asks for a key, and moves the focus there; keeps the key for the
    tab (sessionStorage), and sends it with each request as OpenAI's clients do. A server without a key shows none."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    plain = start(la_model(enc), enc, name="la")
    try:
        open_page(browser, plain)
        assert not browser.find_element(By.ID, "api_key").is_displayed()
    finally:
        plain.close()
    api = start(la_model(enc), enc, name="la", api_key=KEY)
    try:
        # (the page replaces its alert as an answer comes: one found may be gone by the time its text is read)
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(api.url + "/")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.error"))
        field = browser.find_element(By.ID, "api_key")
        assert field.is_displayed() and field.get_attribute("type") == "password"
        assert browser.switch_to.active_element == field  # where to type it
        # (on a phone, where the settings fold, they are opened to show it)
        assert browser.find_element(By.ID, "settings").get_attribute("aria-expanded") == "true"
        assert browser.execute_script("return arguments[0].labels[0].textContent.trim()", field) == "API key"
        alert = browser.find_element(By.CSS_SELECTOR, ".msg.error")
        assert alert.get_attribute("role") == "alert" and "needs an API key" in alert.text, alert.text
        field.send_keys("wrong", Keys.ENTER)  # Enter tries it
        wait.until(lambda b: "Wrong API key" in b.find_element(By.CSS_SELECTOR, ".msg.error").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.error")) == 1  # the one alert, replaced
        browser.execute_script("arguments[0].value = ''", field)
        field.send_keys(KEY, Keys.ENTER)
        wait.until(lambda b: "la" in b.find_element(By.ID, "model").text)
        assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []
        assert browser.switch_to.active_element == browser.find_element(By.ID, "input")  # on to the message
        browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text.split()[0] == "la"
        # kept for the tab: a reload asks nothing, and shows the field, to change the key
        open_page(browser, api)
        assert browser.find_element(By.ID, "api_key").is_displayed()
        assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []
        assert browser.execute_script("return sessionStorage.getItem('api_key')") == KEY
        # a key changed on the server (restarted with another): the message gets its alert, and the field the focus
        api.api_key = b"another"
        browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.error"))
        assert "Wrong API key" in browser.find_element(By.CSS_SELECTOR, ".msg.error").text
        assert browser.switch_to.active_element == browser.find_element(By.ID, "api_key")
    finally:
        browser.execute_script("sessionStorage.clear()")  # (a later test's server may get this port, and origin)
        api.close()


@needs_chromium
def test_the_chat_pages_alert_for_the_api_key_goes_once_a_request_gets_past_the_key(enc, browser):
    """A message sent before the key was typed (or after the server's key changed) got an alert of its own, which
    stayed once the right key was typed and taken: the page still said it needed a key. It keeps one alert for the key,
    the newest (a message's, below it), which goes once a request gets past the key: the key field's, or a message's."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    errors = (By.CSS_SELECTOR, ".msg.error")
    api = start(la_model(enc), enc, name="la", api_key=KEY)
    try:
        # (the page replaces its alert as an answer comes: one found may be gone by the time its text is read)
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(api.url + "/")
        wait.until(lambda b: b.find_elements(*errors))
        browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.user ~ .msg.error"))
        assert len(browser.find_elements(*errors)) == 1  # the newest, below the message
        browser.find_element(By.ID, "api_key").send_keys(KEY, Keys.ENTER)
        wait.until(lambda b: "la" in b.find_element(By.ID, "model").text)
        assert browser.find_elements(*errors) == []
        # the server restarted with another key, then with this one again: the message sent with it is answered
        api.api_key = b"another"
        browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda b: "Wrong API key" in b.find_element(*errors).text)
        api.api_key = KEY.encode()
        browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .note"))
        assert browser.find_elements(*errors) == []
    finally:
        browser.execute_script("sessionStorage.clear()")  # (a later test's server may get this port, and origin)
        api.close()


@needs_chromium
def test_a_key_typed_with_a_character_no_header_carries_is_told_wrong(enc, browser):
    """A key typed in another keyboard layout (Cyrillic, Greek: past U+00FF) made fetch refuse the request itself: the
    page said nothing of the key, and a message got "Failed to execute 'fetch' on 'Window': ... non ISO-8859-1 code
    point". serve.py's keys are visible ASCII: such a key is wrong, and the page says so as of any wrong key."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    api = start(la_model(enc), enc, name="la", api_key=KEY)
    try:
        # (the page replaces its alert as an answer comes: one found may be gone by the time its text is read)
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(api.url + "/")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.error"))
        assert browser.execute_script("return auth()") == {}  # no key yet: no Authorization (not "Bearer null")
        browser.find_element(By.ID, "api_key").send_keys("ключ", Keys.ENTER)
        wait.until(lambda b: "Wrong API key" in b.find_element(By.CSS_SELECTOR, ".msg.error").text)
        browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.user ~ .msg.error"))  # (the one alert, replaced)
        assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.error")] == \
            ["Error: Wrong API key: enter the one this server was started with in the API key field"]
    finally:
        browser.execute_script("sessionStorage.clear()")  # (a later test's server may get this port, and origin)
        api.close()
