"""
Serve a trained model over HTTP: an OpenAI-compatible API and a chat page.

    python serve.py                                  # the newest .pt in models/ on http://127.0.0.1:8000
    python serve.py models/chat-demo/dailydialog_best.pt --port 8080
    python serve.py --host 0.0.0.0                   # reachable from other machines: no authentication, unless...
    SERVE_API_KEY=KEY python serve.py --host 0.0.0.0 # ...an API key is set: then the API answers only those sending it

    POST /v1/chat/completions   messages -> the assistant's reply (ChatML, ends at <|im_end|>)
    POST /v1/completions        prompt -> its continuation (ends at <|endoftext|>, or at <|im_end|> as a chat model's
                                turn does)
    POST /v1/responses          OpenAI's Responses API: input (text or messages) and instructions -> the reply, as
                                chat completions make it (stored nowhere: no previous_response_id)
    GET  /v1/models             the one model served, named after the checkpoint file
    GET  /health                {"status": "ok", "generating": true/false, "queued": N}; 503 "stopping" once Ctrl-C,
                                SIGTERM or SIGHUP has begun the server's stop (on a connection already open: the
                                stopping server takes no new ones)
    GET  /                      the chat page (chat.html): streams replies, temperature/top-p/max-token controls

With an API key (SERVE_API_KEY, or --api_key), each request to /v1/... must send it as OpenAI's clients do
(Authorization: Bearer KEY) or llama.cpp's (X-Api-Key: KEY), else 401 invalid_api_key; / and /health stay open (the chat
page asks for the key, and sends it with its own requests; a load balancer's probe sends none).

The chat and completion endpoints take OpenAI's common parameters: model (any name is accepted), max_tokens or
max_completion_tokens, temperature (0-2), top_p, stop (a string or up to 4), seed, stream (server-sent events) with
stream_options.include_usage, n (1 only), and top_k and repetition_penalty (> 1 discourages tokens already in the
context, as gen.py's option) as extensions. Parameters left out take this command's defaults (--temp, --top_k, --top_p,
--repetition_penalty and --max_tokens, as in gen.py). /v1/responses takes the same under the Responses API's names
(instructions and input for messages, max_output_tokens), and answers in its objects and typed events.

Limits: max_tokens may not exceed the model's context; the prompt plus max_tokens must fit in it, else 400
context_length_exceeded. A chat drops its oldest turns (never the system message) to make room, as `gen.py --chat` does,
so a long conversation goes on; a single message too long for the context is still a 400. Other fields of OpenAI's API
that would change the answer (n > 1, logprobs, tools, penalties...) get 400 unsupported_parameter; fields this server
does not know are ignored, as clients send extras of their own.

One worker thread owns the model (torch runs one forward at a time well, not several on one model): requests queue to
it, each client's (by address) in arrival order and the clients in turn, up to --max_queue waiting (then 503, for the
newest of the client with the most waiting if that is two more than the new one's client's: it gives its place);
connections, a thread each, up to --max_connections open at once (past it, a new one takes the place of the one waiting
the longest, a second or more, for its request, idle or trickling it; with none such, 503). A client that hangs up,
streaming or waiting in the queue, cancels its request at the next token and frees the worker; one that only closes its
sending side (`nc -N`) gets its answer. Ctrl-C (or SIGTERM, SIGHUP) stops the reply being generated at its next token;
it and the waiting requests are answered 503 server_shutting_down (a stream already begun: that error as its last event)
before the server exits.
"""
import common  # first (it is light): Ctrl-C while torch loads then ends in one line, not a traceback from its import
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import collections
import contextlib
import email.errors
import errno
import hmac
import io
import ipaddress
import itertools
import json
import os
import queue
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from http.client import HTTPException, LineTooLong, parse_headers
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import torch

from checkpoint import add_checkpoint_argument, load_model, parse_checkpoint
from common import (ArgumentParser, UserError, add_device_arguments, at_least, dtype_words, fmt_count, json_kind,
                    nonempty, number, parts_text, pick_device, retain_freed_memory, run_main, seeded_generator,
                    stop_signals)
from gen import (CHAT_STOPS, DEFAULT_MAX_TOKENS, PENALTY_RULE, add_sampling_arguments, default_checkpoint,
                 encode_prompt, fit_history, inference_dtype, penalty_value, reserve_for, say_newest, stop_ids,
                 stream_completion, warn_if_trained_on_text)
from setup_tokenizer import render_chat

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat.html")
MAX_BODY = 1 << 20      # bytes of JSON a request may send: far more than any context here holds as text
# bytes of a request's header lines in all (HeadReader): the standard library allows 100 of 64 KiB each, 6.4 MB a
# connection: 100 connections holding such heads half-sent pinned 600 MB; a browser's, cookies and all, is a few KiB
MAX_HEADERS = 64 << 10
DRAIN, DRAIN_WAIT = 64 << 20, 10  # bytes and seconds of a refused, unread body dropped after its answer (linger)
HEAD, HEAD_WAIT = 16 << 10, 1  # bytes and seconds of a turned-away request's head read for its Origin (turn_away)
HEAD_END = re.compile(rb"\n\r?\n")  # the empty line that ends a request's head, its lines ended by CRLF or LF
MAX_STOP = 4            # stop strings per request, as OpenAI allows
MAX_TEMPERATURE = 2     # a request's temperature (and --temp) is 0 to this, as OpenAI's
POLL = 0.2              # seconds between checks that a waiting client is still connected
ANSWER_WAIT = 5         # seconds a stopping server gives the requests it holds to send their answers
AT_LIMIT_LOG = 60       # seconds between the log's lines on connections past --max_connections (note_at_limit)
# seconds a request has from its first byte to arrive whole: the socket's timeout restarts with every byte (slowloris)
REQUEST_WAIT = 60
# seconds in all an answer may wait for its client to read it (ReplyWriter): the socket's timeout bounds one write
WRITE_WAIT = 60
API_KEY_ENV = "SERVE_API_KEY"  # --api_key's default: a key on the command line shows in ps, and in the shell's history
KEY_CHARS = r"\x21-\x7e"  # an API key's characters: visible ASCII, as a header carries them
# seconds a connection must have waited for its request before a new one at --max_connections may take its place
# (ApiServer.evict): a busy keep-alive client, silent for ms between requests, keeps its own
EVICT_AFTER = 1


class ApiError(Exception):
    """A request the server refuses: answered with OpenAI's error body, never a traceback."""

    def __init__(self, status, message, param=None, code=None, type="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection: stop working for it."""


class LateRequest(Exception):
    """A request still arriving past its REQUEST_WAIT: answered 408, and its connection closed."""


class Evicted(ConnectionAbortedError):
    """The connection was closed to give a new one its place (ApiServer.evict): its thread ends, as for a hang-up."""


def shutting_down():
    return ApiError(503, "the server is shutting down: this request was not finished; retry it once the server is back",
                    type="server_error", code="server_shutting_down")


def overloaded(why):
    """The 503 of a request the server has no room for, because why: its queue is full, or its connections are."""
    return ApiError(503, f"the server is busy: {why}; retry shortly", type="server_error", code="overloaded")


# an overloaded 503's Retry-After, in seconds: OpenAI's clients wait it, and a request is a second or more of work
RETRY_AFTER = ("Retry-After", "1")


# -----------------------------------------------------------------------------
# requests: validation and the prompt

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a number


# get's kinds of a field: the test of its type, and the type in JSON's words (the client wrote JSON: not "a dict")
KINDS = {"int": (is_int, "an integer"), "number": (lambda v: is_int(v) or isinstance(v, float), "a number"),
         "bool": (lambda v: isinstance(v, bool), "a boolean"), "str": (lambda v: isinstance(v, str), "a string"),
         "list": (lambda v: isinstance(v, list), "an array"), "dict": (lambda v: isinstance(v, dict), "an object")}


def shown(v):
    """A request's value v as an error echoes it: JSON with its text as written, cut to 80 characters (of a MiB)."""
    return json.dumps(v, ensure_ascii=False)[:80]


# line breaks to str.splitlines that JSON without ensure_ascii leaves as they are: a stream read by it (requests'
# iter_lines(decode_unicode=True)) would cut a data: line in two, neither JSON. Escaped, they are the same JSON
LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}


def json_bytes(obj):
    """obj as an answer's JSON: UTF-8, its text as written, as OpenAI's API and vLLM send it; escaped ASCII where it
    holds a lone surrogate, which has no UTF-8 (a request's "\\ud800" echoed, a non-UTF-8 checkpoint name)."""
    try:
        return json.dumps(obj, ensure_ascii=False).translate(LINE_BREAKS).encode()
    except UnicodeEncodeError:
        return json.dumps(obj).encode()


def get(req, name, kind, check=None, what=None):
    """req[name], None when absent or null; of the wrong type, or failing check, a 400 naming the parameter."""
    v = req.get(name)
    if v is None:
        return None
    is_kind, kind_name = KINDS[kind]
    ok = is_kind(v)
    if not ok or (check and not check(v)):
        raise ApiError(400, f"{name} must be {what or kind_name}, got {shown(v)}", param=name,
                       code="invalid_type" if not ok else "invalid_value")
    return v


def harmless(name, v):
    """Whether an OpenAI parameter this server does not implement asks for nothing: absent, off or the default."""
    if name in ("n", "best_of"):
        return v is None or (is_int(v) and v == 1)
    if name == "logprobs":  # a completion's logprobs 0 asks for the chosen tokens' own, which this server has not
        return v is None or v is False
    if name == "response_format":
        return v is None or v == {"type": "text"}
    if name == "text":  # the Responses API's response_format, beside its verbosity (which nothing here heeds)
        return v is None or isinstance(v, dict) and v.get("format") in (None, {"type": "text"})
    if name == "reasoning":  # a model that does not reason: as OpenAI's such models, it takes no effort or summary
        return v is None or isinstance(v, dict) and not any(v.values())
    return v is None or v is False or v == 0 or v in ("", [], {})


# tool_choice and function_call are left out: without tools they ask for nothing
UNSUPPORTED = ("n", "best_of", "echo", "suffix", "logprobs", "top_logprobs", "logit_bias", "tools", "functions",
               "response_format", "frequency_penalty", "presence_penalty")
# the Responses API's own: stored responses, conversations and prompts (this server keeps none), a background run
RESPONSE_UNSUPPORTED = ("previous_response_id", "conversation", "prompt", "background", "reasoning", "text")


def content_text(content, where, role="user", types=("text",)):
    """A message's content: a string, or OpenAI's list of text parts, of types. An assistant's may also be null (a turn
    that called a tool) or hold refusal parts, as OpenAI's client sends its earlier replies back."""
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    text = parts_text(content, role, types)
    if text is not None:
        return text
    raise ApiError(400, f"{where} must be a string or a list of text parts "
                        f"({{\"type\": \"{types[0]}\", \"text\": ...}})", param=where, code="invalid_type")


def read_messages(req, field="messages", types=("text",)):
    """A chat's messages, req[field], as [{role, content}] with content as text; field "input": a Responses request's
    message items, their parts of types."""
    msgs = get(req, field, "list", check=bool, what="a non-empty list of {role, content}")
    if msgs is None:
        raise ApiError(400, f"{field} is required: a list of {{\"role\": \"user\", \"content\": \"...\"}}",
                       param=field, code="missing_required_parameter")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"{field}[{i}] must be an object {{role, content}}", param=f"{field}[{i}]",
                           code="invalid_type")
        if field == "input" and m.get("type", "message") != "message":  # a tool call, its output, a reasoning item
            raise ApiError(400, f"{field}[{i}] is a {shown(m['type'])} item: this server reads message items only",
                           param=f"{field}[{i}].type", code="unsupported_parameter")
        if "role" not in m:
            raise ApiError(400, f"{field}[{i}].role is required: system, user or assistant",
                           param=f"{field}[{i}].role", code="missing_required_parameter")
        role = "system" if m["role"] == "developer" else m["role"]  # OpenAI's newer name for the system message
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{field}[{i}].role must be system, user or assistant, got {shown(role)}",
                           param=f"{field}[{i}].role", code="invalid_value")
        if "content" not in m and role != "assistant":  # (an assistant's that called a tool may leave it out)
            raise ApiError(400, f"{field}[{i}].content is required: the message's text", param=f"{field}[{i}].content",
                           code="missing_required_parameter")
        out.append({"role": role, "content": content_text(m.get("content"), f"{field}[{i}].content", role, types)})
    return out


def read_input(req):
    """A Responses request's instructions and input as a chat's messages: instructions the system message, input a
    string (the user's message) or a list of message items, their parts input_text or output_text (earlier replies)."""
    instructions = get(req, "instructions", "str")
    head, given = [{"role": "system", "content": instructions}] if instructions else [], req.get("input")
    if given is None:
        raise ApiError(400, "input is required: the user's message, or a list of {\"role\", \"content\"} messages",
                       param="input", code="missing_required_parameter")
    if isinstance(given, str):
        return head + [{"role": "user", "content": given}]
    if not isinstance(given, list):
        raise ApiError(400, f"input must be a string or a list of {{role, content}} messages, got {shown(given)}",
                       param="input", code="invalid_type")
    return head + read_messages(req, "input", ("input_text", "output_text"))


def read_prompt(req, enc):
    """A completion request's prompt as token ids. OpenAI's forms of one prompt: text, token ids, or either alone in a
    list (LangChain sends ["..."]); several prompts are refused, as n > 1 is."""
    p = req.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if p is None:
        raise ApiError(400, "prompt is required: the text to continue", param="prompt",
                       code="missing_required_parameter")
    if isinstance(p, str):
        return encode_prompt(enc, p)
    if isinstance(p, list) and p and all(is_int(t) for t in p):
        if not all(0 <= t < enc.n_vocab for t in p):
            raise ApiError(400, f"prompt holds token ids outside this model's vocabulary of {enc.n_vocab}",
                           param="prompt", code="invalid_value")
        return list(p)
    raise ApiError(400, f"prompt must be a string or a non-empty list of token ids, or one of them in a list (one "
                        f"prompt per request), got {shown(p)}", param="prompt", code="invalid_type")


def read_json(body):
    """A request's body, which must be a JSON object."""
    try:
        req = json.loads(body)
    except UnicodeDecodeError as e:
        # JSON is UTF-8 (RFC 8259): a body in Latin-1 (Windows PowerShell 5.1's Invoke-RestMethod sends one) is JSON in
        # every other way, and "not valid JSON" sent its writer looking for a syntax error it did not make
        raise ApiError(400, f"the request body is not UTF-8 (byte 0x{e.object[e.start:e.start + 1].hex()} at offset "
                            f"{e.start} is no {e.encoding} text); send the JSON encoded as UTF-8", code="invalid_json")
    except ValueError as e:  # JSONDecodeError, an integer of over 4,300 digits
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object", code="invalid_json")
    except RecursionError:
        raise ApiError(400, "the request body nests too deeply to parse; send a JSON object", code="invalid_json")
    if not isinstance(req, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {json_kind(req)}", code="invalid_json")
    return req


def read_chat(messages, api, max_tokens, noun="the messages"):
    """A chat request's (prompt ids, max_tokens, what the prompt is called in a refusal), its oldest turns dropped to
    make room. Without max_tokens the reply may take up to half the context; one given is kept to exactly, over half
    too, and a newest message too long is refused (check_context), where gen.chat_prompt cuts it."""
    asked = max_tokens
    if max_tokens is None:
        max_tokens = reserve_for(api.model, api.max_tokens)
    block = api.model.config.block_size
    fitted = fit_history(api.enc, messages, block - max_tokens)
    prompt, _ = render_chat(api.enc, fitted, add_generation_prompt=True)
    if asked is None and len(prompt) < block:  # a long last message: the default reply takes what is left
        max_tokens = min(max_tokens, block - len(prompt))
    what = noun + (" (after dropping the oldest turns)" if len(fitted) < len(messages) else "")
    return prompt, max_tokens, what


# each endpoint's names of its input and of its max_tokens, as its refusals name them
FIELDS = {"chat": ("messages", "max_tokens"), "text": ("prompt", "max_tokens"),
          "response": ("input", "max_output_tokens")}


def check_context(kind, prompt, max_tokens, block, what):
    """A 400 context_length_exceeded unless the prompt and max_tokens fit in the context of block tokens."""
    if len(prompt) + max_tokens <= block:
        return
    field, limit = FIELDS[kind]
    if len(prompt) >= block:  # no max_tokens helps (and the request may have given none)
        verb = "take" if kind == "chat" else "takes"  # the messages take, the prompt takes
        why = f"{what} {verb} {len(prompt)} of them, leaving none for a reply; shorten the input"
    else:
        why = (f"too few for {what} plus {limit}: {len(prompt)} + {max_tokens} = {len(prompt) + max_tokens}; "
               f"shorten the input or lower {limit}")
    raise ApiError(400, f"this model's context holds {block} tokens, {why}", param=field,
                   code="context_length_exceeded")


def job_from_request(body, kind, api):
    """A POST's JSON body -> a Job for the worker, kind "chat", "text" (/v1/completions) or "response" (a chat, its
    fields named as the Responses API names them). Every refusal is an ApiError; nothing here touches the model."""
    req = read_json(body)
    for name in UNSUPPORTED + (RESPONSE_UNSUPPORTED if kind == "response" else ()):
        if not harmless(name, req.get(name)):
            raise ApiError(400, f"{name}={shown(req[name])} is not supported by this server"
                           + (": it returns one choice per request" if name in ("n", "best_of") else ""),
                           param=name, code="unsupported_parameter")
    get(req, "model", "str")  # any name: one model is served
    block = api.model.config.block_size
    stream = get(req, "stream", "bool") or False
    options = get(req, "stream_options", "dict")
    if options is not None and not stream:  # as OpenAI answers: its include_usage would be quietly ignored
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options",
                       code="invalid_value")
    include_usage = (options or {}).get("include_usage") or False
    if not isinstance(include_usage, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", param="stream_options.include_usage",
                       code="invalid_type")
    temp = get(req, "temperature", "number", lambda v: 0 <= v <= MAX_TEMPERATURE,
               f"a number from 0 to {MAX_TEMPERATURE}")
    top_p = get(req, "top_p", "number", lambda v: 0 <= v <= 1, "a number from 0 to 1")
    # -1 is vLLM's "no limit", which clients written for it send
    top_k = get(req, "top_k", "int", lambda v: v >= -1, "an integer >= 1 (0, -1 or null: no limit)")
    seed = get(req, "seed", "int", lambda v: -2**63 <= v < 2**64, "a 64-bit integer")
    # gen.py's --repetition_penalty, by its name (vLLM's too)
    penalty = get(req, "repetition_penalty", "number", lambda v: penalty_value(v) is not None, PENALTY_RULE)
    stop = req.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP
                                 and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP} strings, got {shown(req['stop'])}",
                       param="stop", code="invalid_value")
    limit = f"an integer from 1 to {block} (the model's context)"
    # each read: a bad max_tokens beside a good max_completion_tokens (OpenAI's newer name, which wins) is a 400 too
    names = ("max_output_tokens",) if kind == "response" else ("max_completion_tokens", "max_tokens")
    given = [get(req, name, "int", lambda v: 1 <= v <= block, limit) for name in names]
    max_tokens = next((v for v in given if v is not None), None)

    if kind == "chat":
        prompt, max_tokens, what = read_chat(read_messages(req), api, max_tokens)
    elif kind == "response":
        prompt, max_tokens, what = read_chat(read_input(req), api, max_tokens, "the input")
    else:
        prompt, what = read_prompt(req, api.enc), "the prompt"
        if max_tokens is None:
            max_tokens = max(1, min(api.max_tokens, block - len(prompt)))
    # a completion ends at a turn's end too (<|im_end|>, <|im_start|>), as vLLM stops at every end-of-sequence token: a
    # chat model continuing a text ends its turn, and would go on into turns it writes for the user
    stop_tokens = stop_ids(api.enc, CHAT_STOPS)
    check_context(kind, prompt, max_tokens, block, what)
    sampling = dict(temperature=api.temperature if temp is None else temp,
                    top_k=api.top_k if "top_k" not in req else (top_k if top_k and top_k > 0 else None),
                    top_p=api.top_p if top_p is None else top_p,
                    repetition_penalty=api.repetition_penalty if penalty is None else penalty_value(penalty))
    return Job(kind, prompt, max_tokens, stop_tokens, [s for s in stop or [] if s], sampling, seed, stream,
               include_usage)


# -----------------------------------------------------------------------------
# the worker: the one thread that runs the model

class Job:
    """One request on its way through the queue; the worker reports to its handler through events."""

    def __init__(self, kind, prompt, max_tokens, stop_tokens, stop, sampling, seed, stream, include_usage):
        self.kind, self.prompt, self.max_tokens, self.stop_tokens = kind, prompt, max_tokens, stop_tokens
        self.stop = stop
        self.sampling, self.seed, self.stream, self.include_usage = sampling, seed, stream, include_usage
        self.id = {"chat": "chatcmpl-", "text": "cmpl-", "response": "resp_"}[kind] + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.events = queue.Queue()  # ("text", piece)..., then ("done", finish_reason, tokens) or ("error", ApiError)
        self.cancelled = threading.Event()
        self.queued_at = time.perf_counter()
        self.client = None  # who sent it (its address), whose turn it waits for (Turns)


class Turns:
    """The jobs waiting for the worker, as a queue.Queue's put and get (None a sentinel, got once no job waits): each
    client's in arrival order, the clients in turn, so a notebook's sixty at once hold the others behind one, not 60."""

    def __init__(self):
        self.clients = collections.OrderedDict()  # client: a deque of its jobs, the client whose turn is next first
        self.sentinels, self.ready = 0, threading.Condition()

    def put(self, job):
        with self.ready:
            if job is None:
                self.sentinels += 1
            else:
                self.clients.setdefault(job.client, collections.deque()).append(job)
            self.ready.notify()

    def get(self):
        with self.ready:
            self.ready.wait_for(lambda: self.clients or self.sentinels)
            if not self.clients:
                self.sentinels -= 1
                return None
            client, jobs = next(iter(self.clients.items()))
            job = jobs.popleft()
            if not jobs:
                del self.clients[client]
            elif not job.cancelled.is_set():  # its next after each other client's; a cancelled one took no turn
                self.clients.move_to_end(client)
            return job

    def bump(self, client):
        """Takes out and returns the newest waiting job of the client with the most (cancelled ones not counted), if
        that is at least two more than client's, else None: a full queue's place for client's next."""
        with self.ready:
            live = {c: [job for job in jobs if not job.cancelled.is_set()] for c, jobs in self.clients.items()}
            most = max(live, key=lambda c: len(live[c]), default=None)
            if most is None or len(live[most]) < len(live.get(client, ())) + 2:
                return None
            job = live[most][-1]
            self.clients[most].remove(job)  # (never its last: most had two live ones at least)
            return job

    def queued(self):
        """The jobs waiting, in about the order the worker takes them (a cancelled one takes no turn)."""
        with self.ready:
            deques = [list(jobs) for jobs in self.clients.values()]
        return [job for turn in itertools.zip_longest(*deques) for job in turn if job is not None]

    def empty(self):
        with self.ready:
            return not (self.clients or self.sentinels)


class StopText:
    """Cuts streamed text at the first stop string. Text that might be the start of one is held back until
    the next piece shows whether it is, so a stream never shows what the whole text would not."""

    def __init__(self, stops):
        self.stops, self.pending = stops, ""

    def push(self, piece):
        """(text that is safe to emit, whether a stop string was hit)"""
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        hold = max(map(self.held, self.stops), default=0)
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out, False

    def held(self, stop):
        """The length of the longest end of pending that stop starts with (and is not all of it). Only the places of
        stop's first character are tried: every prefix of a long stop string is O(len^2) a token on the one worker."""
        tail = self.pending[-(len(stop) - 1):] if len(stop) > 1 else ""
        i = tail.find(stop[0]) if tail else -1
        while i >= 0:
            if stop.startswith(tail[i:]):
                return len(tail) - i  # the first from the left is the longest
            i = tail.find(stop[0], i + 1)
        return 0

    def flush(self):
        out, self.pending = self.pending, ""
        return out


class Worker(threading.Thread):
    def __init__(self, model, enc, dtype, max_queue, log):
        super().__init__(name="model-worker", daemon=True)
        self.model, self.enc, self.dtype, self.log = model, enc, dtype, log
        self.device = next(model.parameters()).device
        # a cancelled job stays in jobs until the worker skips it, but frees its place in waiting (--max_queue) at once
        self.jobs, self.max_queue = Turns(), max_queue
        self.waiting, self.lock = set(), threading.Lock()
        self.recent = collections.deque(maxlen=256)  # what became of the latest jobs: the log, and tests, read it
        self.current = None  # the job being generated
        self.halted = threading.Event()  # Ctrl-C: the running job stops at its next token, the waiting ones never start

    def say(self, line):
        """Writes line to the log if it can: a worker dead of stderr gone (a `| tee` that ended) would leave every
        later request waiting forever while /health says ok."""
        with contextlib.suppress(OSError):
            self.log(line)

    def submit(self, job):
        with self.lock:  # (put under it too: halt's sentinel is never ahead of a job submitted before it)
            if self.halted.is_set():
                raise shutting_down()
            if len(self.waiting) >= self.max_queue:
                full = overloaded(f"its queue is full ({self.max_queue:,} waiting, --max_queue)")
                # else one client filling the queue keeps every other out (Turns.bump)
                bumped = self.jobs.bump(job.client)
                if bumped is None:
                    raise full
                bumped.cancelled.set()
                self.waiting.discard(bumped.id)
                bumped.events.put(("error", full))
                self.say(f"{bumped.id}: refused, its place in the full queue given to another client's request "
                         f"(--max_queue {self.max_queue:,})")
            self.waiting.add(job.id)
            self.jobs.put(job)

    def ahead(self, job):
        """How many requests the worker serves before job, the one generating included; None once job is taken up."""
        order = self.jobs.queued()
        if job not in order:
            return None
        return sum(not j.cancelled.is_set() for j in order[:order.index(job)]) + (self.current is not None)

    def cancel(self, job):
        """The client hung up: a waiting job gives up its place now, a running one stops at its next token."""
        job.cancelled.set()
        with self.lock:
            self.waiting.discard(job.id)

    def stop(self):
        self.jobs.put(None)  # a sentinel: got once no job waits

    def halt(self, timeout=30):
        """Stop now and wait for the worker to leave torch: Python exiting under a thread in torch aborts (SIGABRT)."""
        with self.lock:
            self.halted.set()
            self.jobs.put(None)  # wakes an idle worker
            # said at once (under the lock, before the reply's own line): a big model's forward pass takes seconds
            if self.current is not None:
                self.say("stopping: waiting for the reply being generated to stop at its next token "
                         "(Ctrl-C or SIGTERM again exits at once)")
        self.join(timeout)  # one token's forward pass, as a rule; past the timeout the server exits anyway

    def run(self):
        while not self.halted.is_set() and (job := self.jobs.get()) is not None:
            with self.lock:
                self.waiting.discard(job.id)
                # under the lock, as halt reads current; a client gone while queued costs nothing
                if not (job.cancelled.is_set() or self.halted.is_set()):
                    self.current = job
            t0 = time.perf_counter()
            tokens, finish, failed = 0, "cancelled", ""
            try:
                if self.current is job:
                    tokens, finish = self.generate(job)
            except Exception as e:  # a bug must not kill the worker: the request gets a 500 (a UserError says why)
                if isinstance(e, UserError):
                    why = str(e)
                else:
                    why = f"{type(e).__name__}: {e}"
                    with contextlib.suppress(OSError):  # (stderr gone: as in say)
                        traceback.print_exc()
                job.events.put(("error", ApiError(500, f"generation failed: {why}", type="server_error",
                                                  code="internal_error")))
                finish, failed = "error", f" ({why})"
            with self.lock:  # (halt says it waits for this reply, or sees it done)
                self.current = None
            # recorded before the answer goes: a client (a test) reading recent after its answer finds its job
            self.recent.append(dict(id=job.id, prompt_tokens=len(job.prompt), completion_tokens=tokens,
                                    finish_reason=finish, max_tokens=job.max_tokens, **job.sampling))
            if finish not in ("cancelled", "error"):
                job.events.put(("done", finish, tokens))
            elif finish == "cancelled" and not job.cancelled.is_set():  # cut short by halt: its client is told why
                job.events.put(("error", shutting_down()))
            self.say(f"{job.id}: {len(job.prompt)} prompt + {tokens} token{'s' * (tokens != 1)}, {finish}{failed}, "
                     f"{time.perf_counter() - t0:.2f}s (queued {t0 - job.queued_at:.2f}s)")
        # halted: the requests still waiting are answered that the server stops, not dropped when the process exits
        with self.lock:
            while not self.jobs.empty():
                job = self.jobs.get()
                if job is not None and not job.cancelled.is_set():
                    job.events.put(("error", shutting_down()))
            self.waiting.clear()

    def generate(self, job):
        generator = None if job.seed is None else seeded_generator(self.device, job.seed)
        stops = StopText(job.stop)
        steps = stream_completion(self.model, self.enc, job.prompt, job.max_tokens, job.stop_tokens,
                                  dtype=self.dtype, generator=generator, **job.sampling)
        tokens, finish = 0, "length"  # the context check in job_from_request leaves max_tokens as the only other end
        try:
            for tok, piece in steps:
                if job.cancelled.is_set() or self.halted.is_set():
                    return tokens, "cancelled"
                if tok is not None:  # None: the flush of a character cut off at the very end
                    tokens += 1
                if tok in job.stop_tokens:
                    finish = "stop"
                    break
                text, hit = stops.push(piece)
                if text:
                    job.events.put(("text", text))
                if hit:
                    finish = "stop"
                    break
            text = stops.flush()  # held back as a stop string's possible start that never came
            if text:
                job.events.put(("text", text))
        finally:
            steps.close()  # ends generation (and its autocast region) at once when we leave early
        return tokens, finish


# -----------------------------------------------------------------------------
# HTTP

def host_name(host):
    """The name or address of a Host header's "name[:port]" or "[v6][:port]" (or of an address), in lower case and
    without a trailing dot, as names compare."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # name:port (more than one colon: an IPv6 address, from server_address)
        host = host.partition(":")[0]
    return host.removesuffix(".")


def loopback_name(host):
    """Whether host (a Host header, or an address) is localhost, a name under .localhost (browsers resolve it, never
    DNS) or a loopback address; not a name DNS points at 127.0.0.1: a web page's site may point its own name there."""
    host = host_name(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def host_port(host, port):
    """host:port as a URL writes it: an IPv6 address in brackets ([::]:8000, not :::8000)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def network_addresses():
    """This machine's IPv4 addresses by which others reach a server on 0.0.0.0 or ::: those the routes to the internet
    and the private networks leave from (a UDP connect sends nothing), else its name's, loopback and link-local left
    out; empty with no network."""
    found = []
    for probe in ("203.0.113.1", "10.254.254.254", "172.31.254.254", "192.168.254.254"):  # (documentation, private)
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(s.getsockname()[0])
    if not found:
        with contextlib.suppress(OSError, UnicodeError):
            found = socket.gethostbyname_ex(socket.gethostname())[2]
    usable = [a for a in found if not ((ip := ipaddress.ip_address(a)).is_loopback or ip.is_link_local
                                       or ip.is_unspecified)]
    return list(dict.fromkeys(usable))


def drain(sock):
    """After an answer sent before its request was read (Handler.linger, ApiServer.turn_away): end our sending side,
    then read and drop what the client still sends, up to DRAIN bytes or DRAIN_WAIT seconds. Closed with the body
    unread, the connection is reset under a client that sends it all before reading (http.client): BrokenPipeError."""
    deadline, left = time.monotonic() + DRAIN_WAIT, DRAIN
    try:
        sock.shutdown(socket.SHUT_WR)
        while left > 0 and (wait := deadline - time.monotonic()) > 0:
            sock.settimeout(wait)
            data = sock.recv(min(left, 1 << 16))
            if not data:  # the client has sent all and closed
                return
            left -= len(data)
    except OSError:  # the wait is over (TimeoutError), or the client reset the connection
        pass


def readable(sock, wait=0):
    """Whether sock has bytes (or its end, or an error) to read within wait seconds (None: no limit): poll's events
    (POLLERR among them: a reset), else (Windows) True or False. Not select: it refuses a descriptor past 1023."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        ready = poller.poll(None if wait is None else max(0, round(wait * 1000)))
        return ready[0][1] if ready else 0
    return bool(select.select([sock], [], [], wait)[0])


# the defects email's parser finds in a head with a multipart Content-Type (curl -F's), looking for the parts in a body
# it is not given: they say nothing of the head's lines (the body gets read_json's 400, which says what is wrong)
BODY_DEFECTS = (email.errors.StartBoundaryNotFoundDefect, email.errors.NoBoundaryInMultipartDefect,
                email.errors.CloseBoundaryNotFoundDefect, email.errors.MultipartInvariantViolationDefect)


def malformed(headers):
    """Whether a request's head has a line the standard library misreads: no colon or a space before it (every header
    after it is dropped, Content-Length too), or folded onto the next (its value holds the line break)."""
    return (any(not isinstance(d, BODY_DEFECTS) for d in headers.defects)
            or any("\n" in v for v in headers.values()))


def target_path(target):
    """The path of a request's target ("/v1/models", "http://host/v1/models"); the target where urlsplit refuses it."""
    try:
        return urlsplit(target).path
    except ValueError:
        return target


def request_head(data):
    """(method, path, headers) of a request whose first bytes are data (ApiServer.turn_away), read as Handler reads
    them. A line cut short at data's end is left out (an Origin "http://allowed" of "http://allowed.evil" is none),
    and a head the standard library cannot read (over 100 headers) has none."""
    end = HEAD_END.search(data)
    lines = data[:end.end()] if end else data[:data.rfind(b"\n") + 1]
    first, _, rest = lines.partition(b"\n")
    method, _, target = first.decode("latin-1").partition(" ")
    path, headers = target_path(target.partition(" ")[0]), parse_headers(io.BytesIO(b""))
    with contextlib.suppress(HTTPException):
        headers = parse_headers(io.BytesIO(rest))
    return method, path, headers


class RequestReader(io.RawIOBase):
    """The handler's rfile: each read of a request ends by its deadline (Handler.deadline, None between requests),
    raising LateRequest. It reads the socket itself: the standard library's reader (raw, kept for its close) refuses
    every read after one that timed out, and the rest of a 408's request is read after it (linger)."""

    def __init__(self, raw, handler):
        super().__init__()
        self.raw, self.handler = raw, handler

    def readable(self):
        return True

    def readinto(self, b):
        deadline, sock = self.handler.deadline, self.handler.connection
        # silent (evict may take its place) since the request's first byte, not this read's: else a slowloris client
        # is never silent long in one read
        since = None if deadline is None else deadline - REQUEST_WAIT
        if deadline is None:
            # only the wait for the first byte is silent, not its read: evict looks for bytes in the socket
            with self.handler.server.silent_while(sock):
                if not readable(sock, sock.gettimeout()):
                    raise TimeoutError("no request came within the connection's idle timeout")
            return sock.recv_into(b)
        with self.handler.server.silent_while(sock, since):
            wait, left = sock.gettimeout(), deadline - time.monotonic()
            if left <= 0:
                raise LateRequest
            sock.settimeout(left if wait is None else min(wait, left))
            try:
                return sock.recv_into(b)
            except TimeoutError:
                raise LateRequest from None
            finally:
                sock.settimeout(wait)  # what we write keeps the connection's own timeout

    def close(self):
        self.raw.close()
        super().close()


class HeadReader:
    """The handler's rfile while the standard library reads a request's header lines (Handler.parse_request): past
    MAX_HEADERS bytes in all a readline raises LineTooLong, which it answers 431 (Handler.send_error says why)."""

    def __init__(self, rfile):
        self.rfile, self.left = rfile, MAX_HEADERS

    def readline(self, limit=-1):
        line = self.rfile.readline(self.left + 1 if limit < 0 else min(limit, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise LineTooLong(f"the header lines are over {MAX_HEADERS} bytes")
        return line

    def __getattr__(self, name):  # (read, peek...: the file itself)
        return getattr(self.rfile, name)


class ReplyWriter(io.BufferedIOBase):
    """The handler's wfile: an answer may wait for its client to take it WRITE_WAIT seconds in all (write_left), past
    which a write raises TimeoutError. Only the waits count, not what the socket's buffers take at once."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def writable(self):
        return True

    def write(self, b):
        handler, sock = self.handler, self.handler.connection
        wait = sock.gettimeout()
        with memoryview(b) as view:
            try:
                sock.settimeout(0)
                try:
                    sent = sock.send(view)
                except BlockingIOError:  # the buffers are full
                    sent = 0
                if sent < len(view):
                    if handler.write_left <= 0:
                        raise TimeoutError(f"the client took no more of its answer in {WRITE_WAIT} s")
                    sock.settimeout(handler.write_left if wait is None else min(wait, handler.write_left))
                    t0 = time.monotonic()
                    try:
                        sock.sendall(view[sent:])
                    finally:
                        handler.write_left -= time.monotonic() - t0
            except TimeoutError:
                # the client stopped reading: reset the connection (linger 0 s), freeing its buffers at once, as nginx's
                # reset_timedout_connection does; a graceful close keeps the unsent answer for a client not reading
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raise
            finally:
                sock.settimeout(wait)
            return len(view)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses its connection
    server_version = "gpt-trainer-serve"
    timeout = 120  # seconds a connection may sit idle between requests (a request itself has REQUEST_WAIT)
    # with Nagle's algorithm a body's write waits for the client's delayed ACK of the headers': 40 ms an answer
    disable_nagle_algorithm = True

    # the standard library's refusals in words a client can act on (it names no limit)
    REFUSALS = {414: "the request line is over 65,536 bytes: shorten the URL",
                431: f"the request's headers are over {MAX_HEADERS // 1024} KiB in all, or over 100 lines: send "
                     f"fewer or shorter headers"}
    ROUTES = {"/": {"GET"}, "/health": {"GET"}, "/v1/models": {"GET"},
              "/v1/chat/completions": {"POST"}, "/v1/completions": {"POST"}, "/v1/responses": {"POST"}}
    # answered without the API key: the chat page (which asks for it) and the health check, whose probes send none
    OPEN = {"/", "/health"}
    JOB_KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "text", "/v1/responses": "response"}

    unread_body = False  # an answer went before the request's body was read (linger)
    deadline = None  # when the request being read must have arrived whole (handle_one_request)

    def setup(self):
        super().setup()
        self.rfile = io.BufferedReader(RequestReader(self.rfile.detach(), self))
        self.wfile, self.write_left = ReplyWriter(self), WRITE_WAIT  # (the library's wfile holds nothing to close)

    def handle_one_request(self):
        """One request, given REQUEST_WAIT from its first byte to arrive whole, else answered 408 and its connection
        closed; the wait for that first byte is idle time, with the socket's timeout."""
        if not self.wait_for_request():
            return
        # none yet (send_error); the last request's headers would give a refusal of this head its CORS headers
        self.requestline = self.request_version = self.command = ""
        self.headers = None
        try:
            super().handle_one_request()
        except LateRequest:
            self.send_error(408, f"the request did not arrive whole within {REQUEST_WAIT} seconds of its first byte; "
                                 f"send it at once")
            self.unread_body = True  # the rest still coming is dropped after the answer (linger)
        finally:
            self.deadline = None

    def wait_for_request(self):
        """Waits for a request's first byte (or end-of-file) with the socket's idle timeout, then starts the request's
        deadline; False, the connection to close, if none came."""
        self.deadline = None
        try:
            self.rfile.peek(1)
        except TimeoutError:
            self.close_connection = True
            return False
        self.deadline = time.monotonic() + REQUEST_WAIT
        self.write_left = WRITE_WAIT
        return True

    def handle(self):
        try:
            super().handle()
        except ConnectionError:  # reset between requests (a browser closing its idle connection): no one to answer
            self.close_connection = True
        if self.unread_body:
            self.linger()

    def linger(self):
        """drain, after an answer sent before the request's body was read (a 413, a framing refusal, a 408); silent
        meanwhile, so a new connection at --max_connections may take its place (ApiServer.evict)."""
        with contextlib.suppress(Evicted), self.server.silent_while(self.connection):
            drain(self.connection)

    def dispatch(self):
        """Every method: HEAD is routed as GET, its body left out; OPTIONS and TRACE are 405, not the library's 501."""
        with self.server.answering():  # a stopping server waits for the answers under way (ApiServer.halt)
            self.route()

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = dispatch

    def end_headers(self):
        # every answer (errors and streams too) tells a browser page of an allowed origin that it may read it
        origin = getattr(self, "headers", None) and self.headers.get("Origin")  # (none yet: a malformed request line)
        for name, value in self.server.cors_headers(origin):
            self.send_header(name, value)
        super().end_headers()

    @classmethod
    def preflight_headers(cls, api, method, path, headers):
        """For a browser's CORS preflight (OPTIONS with Access-Control-Request-Method) to a route, from an origin --cors
        allows: its 204's headers, but for the CORS ones every answer has; None for another request (a 405)."""
        known = path in cls.ROUTES or path.startswith("/v1/models/")
        if method != "OPTIONS" or not known or "Access-Control-Request-Method" not in headers \
                or not api.cors_headers(headers.get("Origin")):
            return None
        methods = cls.ROUTES.get(path, {"GET"}) | {"OPTIONS"}
        # the headers the page asked to send (Authorization, Content-Type, the openai client's own X-Stainless-*)
        answer = [("Access-Control-Allow-Methods", ", ".join(sorted(methods))),
                  ("Access-Control-Allow-Headers", headers.get("Access-Control-Request-Headers") or "Content-Type"),
                  ("Access-Control-Max-Age", "86400")]
        if headers.get("Access-Control-Request-Private-Network") == "true":
            # Chrome's Private Network Access: a public page reaching a loopback or LAN address is blocked without it
            answer.append(("Access-Control-Allow-Private-Network", "true"))
        return answer

    def parse_request(self):
        if self.raw_requestline in (b"\r\n", b"\n"):  # a client's stray CRLF after a body (RFC 9112 2.2): skip one
            if not self.wait_for_request():  # idle time again, not the request's (else a 408 unasked)
                return False
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:  # as the standard library answers a long line it read itself
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414)
                return False
        rfile, self.rfile = self.rfile, HeadReader(self.rfile)
        try:
            return super().parse_request()
        finally:
            self.rfile = rfile

    def check_framing(self):
        """RFC 9112's refusals of a request a proxy in front could read otherwise; the connection closes behind each,
        where its body ends being unknown."""
        h = self.headers
        if malformed(h):
            why = "a header line is malformed (no colon, a space before it, or folded onto the next line)"
        elif self.request_version == "HTTP/1.1" and len(h.get_all("Host", [])) != 1:
            why = "an HTTP/1.1 request needs one Host header"
        elif len(set(h.get_all("Content-Length", []))) > 1:
            why = "the request has two different Content-Length headers; send one"
        else:
            why = None
        if why:
            self.close_connection = True
            raise ApiError(400, why, code="invalid_request")

    def route(self):
        api, method = self.server, self.command
        path = target_path(self.path)
        self.body, self.probed, submitted = None, False, False
        try:
            self.check_framing()
            self.check_host()
            preflight = self.check_access(path)  # by the head alone: a body sent without the key is never read
            if method != "POST" and ("Content-Length" in self.headers or "Transfer-Encoding" in self.headers):
                self.read_body()  # a body sent with a GET is read, so the next request starts right
            if preflight:  # (a 204, which has no Content-Length: not send_bytes)
                self.send_response(204)
                for name, value in self.preflight_headers(api, "OPTIONS", path, self.headers):
                    self.send_header(name, value)
                if self.close_connection:
                    self.send_header("Connection", "close")
                return self.end_headers()
            if path.startswith("/v1/models/"):
                name = unquote(path[len("/v1/models/"):])  # clients percent-encode it: "my%20chat"
                if name != api.name:
                    raise ApiError(404, f"model {name!r} not found; this server serves {api.name!r}",
                                   param="model", code="model_not_found")
                return self.send_json(200, api.model_card())
            if path == "/":
                return self.send_bytes(200, api.page, "text/html; charset=utf-8")
            if path == "/health":
                stopping = api.worker.halted.is_set()  # a load balancer is told, and sends the next ones elsewhere
                self.close_connection |= stopping
                return self.send_json(503 if stopping else 200, {"status": "stopping" if stopping else "ok",
                                                                  "generating": api.worker.current is not None,
                                                                  "queued": len(api.worker.waiting)})
            if path == "/v1/models":
                return self.send_json(200, {"object": "list", "data": [api.model_card()]})
            job = job_from_request(self.read_body(), self.JOB_KINDS[path], api)
            job.client = self.client_address[0]
            api.worker.submit(job)
            submitted = True
            try:
                (self.stream if job.stream else self.answer)(job)
            except ClientGone:
                api.worker.cancel(job)
                self.close_connection = True
        except ApiError as e:
            self.refuse(e, path, log=not submitted)  # (a job submitted has the worker's line, or the stop's)

    def check_host(self):
        """Against DNS rebinding (a page whose site points its own name at 127.0.0.1 reads every answer as same-origin):
        a server on loopback answers requests for a loopback name or address only, or --allowed_hosts; one on another
        address answers any, and so does a request with no Host, which comes from no browser."""
        host = self.headers.get("Host")
        allowed = self.server.allowed_hosts
        if not host or not self.server.loopback or loopback_name(host) or "*" in allowed \
                or host_name(host) in allowed:
            return
        port = self.server.server_address[1]
        raise ApiError(403, "this server listens on loopback and answers requests for localhost or a loopback "
                            f"address, not {host[:80]!r} (a page of another site reaching it through DNS rebinding): "
                            f"open http://127.0.0.1:{port}/ or http://localhost:{port}/ (behind a proxy that passes on "
                            f"its own name: --allowed_hosts {host_name(host)[:80]})", code="host_not_allowed")

    def check_access(self, path):
        """Checks a request's route, then, for no CORS preflight (sent without the key, and from another site by
        design), its key and site; whether it is a preflight."""
        if self.check_route(path):
            return True
        self.check_key(path)
        self.check_site()
        return False

    def check_key(self, path):
        """With an API key, a request for a route not OPEN must send it as Authorization: Bearer KEY (OpenAI's clients)
        or X-Api-Key: KEY (llama.cpp's), else 401 invalid_api_key; compared in constant time, telling no timing."""
        key = self.server.api_key
        if key is None or path in self.OPEN:
            return
        sent, x_key = self.headers.get("Authorization"), self.headers.get("X-Api-Key")
        scheme, _, bearer = (sent or "").strip().partition(" ")
        # (X-Api-Key: also for a client behind a proxy whose own Basic authentication takes the Authorization header)
        given = ([bearer] if scheme.lower() == "bearer" else []) + ([x_key] if x_key is not None else [])
        # (the header's bytes, as the client sent them: the standard library reads a head as Latin-1)
        if any(hmac.compare_digest(g.strip().encode("latin-1", "replace"), key) for g in given):
            return
        send = (f"send the key the server was started with ({API_KEY_ENV} or --api_key) in the header "
                f"Authorization: Bearer KEY (the openai client sends its api_key so; the chat page asks for it), or "
                f"X-Api-Key: KEY")
        raise ApiError(401, (f"Incorrect API key provided: {send}" if sent or x_key is not None else
                             f"this server requires an API key: {send}"), code="invalid_api_key")

    def check_site(self):
        """A browser's POST for a page of another site --cors does not allow is refused (403): a form or a text/plain
        fetch needs no preflight, and any site the user visits could keep the queue full. Browsers say where a request
        comes from in Sec-Fetch-Site, which no page can set; other clients send none."""
        site, origin = self.headers.get("Sec-Fetch-Site", "").strip().lower(), self.headers.get("Origin")
        if self.command != "POST" or site not in ("cross-site", "same-site") or self.server.cors_headers(origin):
            return
        # (a page opened from a file, or sandboxed, is of origin null: only --cors '*' takes it)
        named = origin if origin and re.fullmatch(r"https?://[^/\s]{1,80}", origin) else None
        raise ApiError(403, f"this server answers no page of another site ({(origin or 'no Origin')[:80]}): to let its "
                            f"pages call the API, start serve.py with --cors {named or repr('*')}",
                       code="cross_site_request")

    def check_route(self, path):
        """Refuses (404, 405) a path this server does not serve, or a method the path does not take; whether the
        request is a CORS preflight."""
        method = self.command
        if self.preflight_headers(self.server, method, path, self.headers) is not None:
            return True
        # HEAD is GET without the body, and takes its routes; a refusal names the method the client sent
        routed = "GET" if method == "HEAD" else method
        if path.startswith("/v1/models/"):
            if routed != "GET":  # (not 404 "no such endpoint": client.models.delete would raise NotFoundError)
                raise ApiError(405, f"/v1/models/{{model}} takes GET, not {method}", code="method_not_allowed")
            return False
        if path not in self.ROUTES:
            raise ApiError(404, f"no such endpoint {method} {path}: try POST /v1/chat/completions, "
                                "POST /v1/completions, POST /v1/responses, GET /v1/models or the chat page at /",
                           code="not_found")
        if routed not in self.ROUTES[path]:
            allowed = ", ".join(sorted(self.ROUTES[path]))
            raise ApiError(405, f"{path} takes {allowed}, not {method}", code="method_not_allowed")
        return False

    def refuse(self, e, path, log=True):
        """Answer the ApiError e, OpenAI's error body, to the request for path; log: with a line in the log."""
        # (401: the scheme to send the key by, as HTTP asks of every 401, RFC 9110 11.6.1)
        headers = [("Allow", ", ".join(sorted(self.ROUTES.get(path, ["GET"]))))] if e.status == 405 else \
            [RETRY_AFTER] if e.code == "overloaded" else [("WWW-Authenticate", "Bearer")] if e.status == 401 else []
        if e.code == "server_shutting_down":  # its client is not to send the next request on this connection
            self.close_connection = True
        if self.body is None and (self.headers.get("Content-Length", "0") != "0"
                                  or "Transfer-Encoding" in self.headers):
            self.close_connection = self.unread_body = True  # it would be taken for the next request
        if log:  # (before the answer, as the worker's line for a reply: a client that reads its answer finds it there)
            self.log_refusal(e.status, e.message)
        try:
            self.send_json(e.status, e.body(), headers)
        except OSError:
            self.close_connection = True

    def log_refusal(self, status, message):
        """A line in the log for a request refused, as the worker's for each reply; escaped, as the path is the
        client's and a terminal would act on its control characters."""
        what = f"{self.command} {target_path(self.path)}" if self.command else "a request"
        self.server.worker.say(repr(f"{what}: {status} {message}")[1:-1])

    def handle_expect_100(self):
        """A client that waits for "100 Continue" before its body (curl, over 1 MiB) is refused at once what its head
        decides (framing, host, route, key, site, a Content-Length over MAX_BODY), not told to upload the body first."""
        path = target_path(self.path)
        try:
            self.check_framing()  # first, as in route: else a 404 would keep a connection whose body's end is unclear
            self.check_host()
            if hasattr(self, "do_" + self.command):  # (another method gets the library's 501, as without Expect)
                self.check_access(path)
            if "Content-Length" in self.headers and "Transfer-Encoding" not in self.headers:  # (chunked: no size)
                self.declared_length()
        except ApiError as e:
            self.body = None
            with self.server.answering():
                self.refuse(e, path)
            return False  # the request is done: no do_POST
        return super().handle_expect_100()

    def read_body(self):
        if "Transfer-Encoding" in self.headers:
            coding = ", ".join(self.headers.get_all("Transfer-Encoding"))  # all lines: "chunked" twice is no framing
            if [c.strip().lower() for c in coding.split(",")] != ["chunked"]:  # (RFC 9112: what every server reads)
                raise ApiError(501, f"Transfer-Encoding {coding[:40]!r} is not supported; send the body with a "
                                    "Content-Length, or chunked", code="not_implemented")
            if "Content-Length" in self.headers:  # which one frames the body? (a request-smuggling shape)
                raise ApiError(400, "send Content-Length or Transfer-Encoding: chunked, not both",
                               code="invalid_request")
            self.body = self.read_chunked()
        else:
            length = self.declared_length()
            body = self.rfile.read(length)
            if len(body) < length:  # the client closed its sending side (or the connection) before the body's end
                self.close_connection = True
                raise ApiError(400, f"the request body ended after {len(body)} of its {length} bytes (Content-Length): "
                                    "send all of it", code="invalid_request")
            self.body = body
        return self.body

    def declared_length(self):
        """The request's Content-Length, in bytes; refused (411, 400, 413) when absent, malformed or over MAX_BODY."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a POST needs a Content-Length header and a JSON body", code="length_required")
        # ASCII digits, not absurdly many: isdigit() alone takes '²', and int() refuses more than 4300 digits
        if not (length.isascii() and length.isdigit() and len(length) <= 20):
            raise ApiError(400, f"Content-Length must be a non-negative number of bytes, got {length[:40]!r}",
                           code="invalid_request")
        if int(length) > MAX_BODY:
            raise ApiError(413, f"the request body is {int(length)} bytes; the limit is {MAX_BODY}",
                           code="request_too_large")
        return int(length)

    def read_chunked(self):
        """A chunked body (curl -H 'Transfer-Encoding: chunked', clients that stream a request): the chunks' bytes."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)  # hex size, maybe ";extension", CRLF
            size = line.split(b";")[0].strip()
            if not (line.endswith(b"\n") and size and len(size) <= 16
                    and all(c in b"0123456789abcdefABCDEF" for c in size)):
                raise ApiError(400, f"bad chunk size line {line[:40]!r} in a chunked body", code="invalid_request")
            size = int(size, 16)
            if len(body) + size > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY} bytes, the limit", code="request_too_large")
            if size == 0:
                break
            chunk = self.rfile.read(size + 2)  # the data and its CRLF
            if len(chunk) != size + 2 or chunk[-2:] != b"\r\n":
                raise ApiError(400, "a chunk of a chunked body does not end where its size says",
                               code="invalid_request")
            body += chunk[:-2]
        for _ in range(100):  # trailer fields, ignored, up to the empty line that ends the message
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                return bytes(body)
        raise ApiError(400, "a chunked body's trailer does not end", code="invalid_request")

    # --- answers

    def send_bytes(self, status, data, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:  # the client asked for it, or the request's end is unclear (RFC 9112 9.6)
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, obj, headers=()):
        self.send_bytes(status, json_bytes(obj), "application/json", headers)

    def send_error(self, code, message=None, explain=None):
        # the standard library's own refusals (a malformed request line, headers too long, an unknown method) get an
        # OpenAI error body too, not its HTML page
        self.close_connection = True
        if code in (414, 431):  # the rest of the head, and a body, still coming: dropped after the answer (linger)
            self.unread_body = True
        if self.request_version == self.default_request_version and len(self.requestline.split()) != 2:
            # an unreadable version ("GET / HTTP/2.0") or no line: the library would answer as HTTP/0.9, a bare body
            # with no status line (curl: "Received HTTP/0.9 when not allowed")
            self.request_version = self.protocol_version
        message = (self.REFUSALS.get(code) or message or explain
                   or f"{code} {self.responses.get(code, ('bad request',))[0]}")
        self.log_refusal(code, message)
        try:
            self.send_json(code, ApiError(code, message).body())
        except OSError:
            pass

    def events(self, job, probe=None, waiting=None):
        """The worker's events for job as they come; raises ClientGone once the client has hung up. probe: writes
        what the client ignores (client_gone); waiting: called each POLL that brings no event."""
        while True:
            try:
                event = job.events.get(timeout=POLL)
            except queue.Empty:
                event = None
            if self.client_gone(probe):
                raise ClientGone
            if event is not None:
                yield event
                if event[0] != "text":
                    return
            elif waiting:
                waiting()

    def client_gone(self, probe=None):
        """Whether the connection was reset: the client hung up. End-of-file alone is not that: a client may close its
        sending side and wait for the answer (`nc -N`). Once end-of-file is read, probe (if given) writes, once, what
        the client ignores: a closed socket answers it with a reset, which the next look sees."""
        sock = self.connection
        try:
            ready = readable(sock)
            # not POLLHUP, which on macOS is end-of-file alone (a reset there is no POLLERR: recv raises it, below)
            if hasattr(select, "poll") and ready & select.POLLERR:
                return True
            if not ready or sock.recv(1, socket.MSG_PEEK) != b"":  # (a reset raises, below)
                return False
            if probe and not self.probed:
                self.probed = True
                probe()
            return False
        except (OSError, ValueError):
            return True

    def answer(self, job):
        pieces = []
        # the probe: an interim 100 (Continue), which an HTTP/1.1 client reads past (RFC 9110 15.2); HTTP/1.0 has none
        probe = None if self.request_version != "HTTP/1.1" else \
            lambda: self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        for event in self.events(job, probe):
            if event[0] == "text":
                pieces.append(event[1])
            elif event[0] == "error":
                raise event[1]
            else:
                _, finish, tokens = event
        text, api = "".join(pieces), self.server
        if job.kind == "response":
            obj = api.response(job, finish, text, tokens)
        else:
            choice = api.choice(job, finish, text, message={"role": "assistant", "content": text})
            obj = api.envelope(job, [choice], usage=api.usage(job, tokens))
        try:
            self.send_json(200, obj)
        except OSError:
            raise ClientGone

    def stream(self, job):
        """Answers job with server-sent events: the HTTP of it here, what they say in ChunkEvents or ResponseEvents."""
        api = self.server
        chunked = self.request_version == "HTTP/1.1"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            # nginx, the usual proxy in front of a server, buffers an answer until it is whole unless told not to
            self.send_header("X-Accel-Buffering", "no")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True  # HTTP/1.0: the end of the stream is the end of the connection
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()

            def write(data):
                if data:  # (an empty chunk would end the body)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

            said = (ResponseEvents if job.kind == "response" else ChunkEvents)(api, job)
            write(said.start())
            told = None

            def waiting():  # its place in the queue when it changes: the chat page shows it, other clients skip it
                nonlocal told
                n = api.worker.ahead(job)
                if n is not None and n != told:
                    write(b": waiting, %d ahead\n\n" % n)
                    told = n

            # the probe: an event stream's comment too
            for event in self.events(job, probe=lambda: write(b":\n\n"), waiting=waiting):
                if event[0] == "text":
                    write(said.text(event[1]))
                elif event[0] == "error":  # headers are gone: the error travels as an event, as OpenAI's does
                    write(said.error(event[1]))  # ...and a stopping server closes the connection after it
                    self.close_connection |= event[1].code == "server_shutting_down"
                else:
                    write(said.end(*event[1:]))
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # BrokenPipe, ConnectionReset, a write that timed out
            raise ClientGone

    def log_message(self, format, *args):
        # the worker logs each generation; the standard library's line per request would double it
        pass


def sse(obj, event=None):
    """One server-sent event: obj as its data: line's JSON, after an event: line naming it if given."""
    return (b"event: %s\n" % event.encode() if event else b"") + b"data: %s\n\n" % json_bytes(obj)


class ChunkEvents:
    """What a chat's or a completion's stream says: OpenAI's chunks of the reply, the last with its finish_reason (and
    one with usage, under include_usage), then data: [DONE]."""

    def __init__(self, api, job):
        self.api, self.job = api, job

    def chunk(self, delta=None, finish=None, text=""):
        choice = self.api.choice(self.job, finish, text, delta=delta or {})
        # with include_usage every chunk has "usage", null until the last (OpenAI's stream_options)
        return sse(self.api.envelope(self.job, [choice], chunk=True, usage=None if self.job.include_usage else False))

    def start(self):
        return self.chunk({"role": "assistant", "content": ""}) if self.job.kind == "chat" else b""

    def text(self, piece):
        return self.chunk({"content": piece}, text=piece)

    def error(self, e):
        return sse(e.body())

    def end(self, finish, tokens):
        usage = self.api.envelope(self.job, [], chunk=True, usage=self.api.usage(self.job, tokens))
        return self.chunk(finish=finish) + (sse(usage) if self.job.include_usage else b"") + b"data: [DONE]\n\n"


class ResponseEvents:
    """What a Responses stream says: OpenAI's typed events, named and numbered: the response created, its one message
    item and output_text part added, the text's deltas, each done, the response completed or incomplete. No [DONE]."""

    def __init__(self, api, job):
        self.api, self.job, self.seq, self.pieces = api, job, itertools.count(), []
        self.at = {"item_id": api.message_item(job, "in_progress")["id"], "output_index": 0, "content_index": 0}

    def event(self, type, **fields):
        return sse({"type": type, "sequence_number": next(self.seq), **fields}, type)

    def start(self):
        started, item = self.api.response(self.job, None), self.api.message_item(self.job, "in_progress")
        return (self.event("response.created", response=started) + self.event("response.in_progress", response=started)
                + self.event("response.output_item.added", output_index=0, item=item)
                + self.event("response.content_part.added", **self.at,
                             part={"type": "output_text", "text": "", "annotations": []}))

    def text(self, piece):
        self.pieces.append(piece)
        return self.event("response.output_text.delta", **self.at, delta=piece, logprobs=[])

    def error(self, e):  # OpenAI's error event, its fields at the top (the SDK hands it to the caller)
        return self.event("error", code=e.code, message=e.message, param=e.param)

    def end(self, finish, tokens):
        text = "".join(self.pieces)
        done = self.api.response(self.job, finish, text, tokens)
        (item,) = done["output"]
        return (self.event("response.output_text.done", **self.at, text=text, logprobs=[])
                + self.event("response.content_part.done", **self.at, part=item["content"][0])
                + self.event("response.output_item.done", output_index=0, item=item)
                + self.event("response." + done["status"], response=done))


class ApiServer(ThreadingHTTPServer):
    """The HTTP server (a thread per connection) and the model's worker."""
    request_queue_size = 128  # the listen backlog: socketserver's 5 makes a burst of clients wait a second (SYN retry)

    def __init__(self, model, enc, name, host="127.0.0.1", port=8000, dtype=torch.float32, temperature=0.8,
                 top_k=200, top_p=None, max_tokens=DEFAULT_MAX_TOKENS, max_queue=64, log=None, cors=(),
                 repetition_penalty=1.0, allowed_hosts=(), max_connections=256, api_key=None):
        self.model, self.enc, self.name = model, enc, name
        self.api_key = api_key.encode() if api_key else None  # bytes, which compare_digest takes whatever they hold
        # connections served at once, a thread each (process_request), and as many turned away past them (turn_away)
        self.max_connections, self.slots = max_connections, threading.BoundedSemaphore(max_connections)
        self.refusals = threading.BoundedSemaphore(max_connections)
        self.turned_away, self.made_room, self.at_limit_said = 0, 0, float("-inf")  # (note_at_limit)
        # the connections waiting for a request: {socket: (since when, whether for its first byte)} (silent_while),
        # and those closed to give a new connection their place (evict), under silence_lock
        self.silent, self.evicted, self.silence_lock = {}, set(), threading.Lock()
        # connections answered 503 by the accepting thread: {socket: (close by, bytes left to drop)} (service_actions)
        self.closing = {}
        self.cors = tuple(cors)  # origins whose pages may call the API from a browser ("*": any)
        self.allowed_hosts = tuple(allowed_hosts)  # names a loopback server answers besides its own ("*": any)
        self.temperature, self.top_k, self.top_p, self.max_tokens = temperature, top_k, top_p, max_tokens
        self.repetition_penalty = repetition_penalty
        self.created = int(time.time())
        with open(PAGE, "rb") as f:
            self.page = f.read()
        log = log or (lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True))
        self.worker = Worker(model, enc, dtype, max_queue, log)
        self.under_way, self.answered = 0, threading.Condition()  # requests being answered (answering, halt)
        with contextlib.suppress(OSError, UnicodeError, TypeError):  # a name that does not resolve: bind says so below
            # an IPv6 address or name (--host ::, ::1) needs an IPv6 socket; socketserver's is IPv4 only
            self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        try:
            super().__init__((host, port), Handler)
        except (OSError, TypeError, UnicodeError) as e:  # ('ü..x': "encoding of hostname failed", a TypeError)
            code = getattr(e, "errno", None)
            if code == errno.EADDRINUSE:
                fix = "pick another --port, or stop what uses it"
            elif code == errno.EACCES:  # (no use can be stopped: a port below 1024 is root's, for a system service)
                fix = "pick another --port" + (", 1024 or above (those below need root)" if port < 1024 else "")
            else:
                fix = "check --host (an address or name of this machine)"
            raise UserError(f"cannot listen on {host_port(host, port)} ({getattr(e, 'strerror', None) or e}): {fix}")
        self.loopback = loopback_name(self.server_address[0])  # only this machine reaches it (Handler.check_host)
        self.worker.start()

    def server_bind(self):
        if self.address_family == socket.AF_INET6:  # --host :: listens on IPv4 too, as 0.0.0.0 and :: do together
            with contextlib.suppress(OSError, AttributeError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:
            # out of file descriptors: the connection waiting keeps the listening socket readable, and serve_forever
            # would spin a core on accept's failures, away from the reply being generated
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(POLL)
            raise  # (socketserver drops an accept's OSError and goes on)

    def process_request(self, request, client_address):
        # each open connection holds a thread, idle ones too: without a limit, a client could hold thousands
        if self.slots.acquire(blocking=False):
            places, work = self.slots, self.process_request_thread
        elif self.evict():
            places, work = self.slots, self.process_request_thread
            self.note_at_limit(made_room=True)
        elif self.refusals.acquire(blocking=False):
            places, work = self.refusals, self.turn_away
            self.note_at_limit()
        else:  # a flood past both: closed unanswered, holding nothing
            self.note_at_limit()
            return self.shutdown_request(request)
        # daemon: a hung connection never keeps the process alive
        thread = threading.Thread(target=work, args=(request, client_address), daemon=True)
        try:
            thread.start()  # (the thread gives the place back)
        # the thread did not start (the process's threads are spent). Not KeyboardInterrupt: it can land in
        # Thread.start after the thread began, which then released the place itself
        except Exception as e:
            places.release()
            # answered 503 here, as past max_connections, without waiting for the client: this thread accepts the
            # next connections. What of the head has come is read (busy_answer), the rest dropped as it comes
            # (service_actions), as drain does
            self.worker.say(f"a connection turned away: no thread to serve it ({e})")
            try:
                request.setblocking(False)
                got = b""
                with contextlib.suppress(BlockingIOError):  # (none yet)
                    got = request.recv(HEAD) if self.cors else b""
                request.sendall(self.busy_answer("no thread to serve another connection", got))
                request.shutdown(socket.SHUT_WR)
            except OSError:
                return self.shutdown_request(request)
            if len(self.closing) >= self.max_connections:  # (each holds a descriptor)
                return self.shutdown_request(request)
            self.closing[request] = (time.monotonic() + DRAIN_WAIT, DRAIN)

    def service_actions(self):
        """serve_forever's, every half second: the connections process_request answered without a thread have what
        their clients still send dropped, as drain does, and are closed once their clients close."""
        super().service_actions()
        now = time.monotonic()
        for sock, (deadline, left) in list(self.closing.items()):
            try:
                while left > 0 and (data := sock.recv(min(left, 1 << 16))):  # (non-blocking)
                    left -= len(data)
            except BlockingIOError:  # nothing more yet
                if now < deadline and left > 0:
                    self.closing[sock] = (deadline, left)
                    continue
            except OSError:  # reset: the client is gone
                pass
            del self.closing[sock]
            self.shutdown_request(sock)

    def server_close(self):
        super().server_close()
        for sock in list(self.closing):
            self.shutdown_request(sock)
        self.closing.clear()

    def note_at_limit(self, made_room=False):
        """Counts a connection past --max_connections, turned away or (made_room) given an idle one's place, said in
        the log at the first and then at most every AT_LIMIT_LOG seconds: a line each would flood it under overload."""
        if made_room:
            self.made_room += 1
        else:
            self.turned_away += 1
        if time.monotonic() - self.at_limit_said >= AT_LIMIT_LOG:
            counts = [f"{self.turned_away:,} connection(s) turned away (503, or closed unanswered past twice as many)"
                      ] if self.turned_away else []
            counts += [f"{self.made_room:,} waiting for a request closed to make room"] if self.made_room else []
            self.worker.say(f"{' and '.join(counts)} since the last such line: {self.max_connections:,} are open "
                            f"(--max_connections)")
            self.turned_away, self.made_room, self.at_limit_said = 0, 0, time.monotonic()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.silence_lock:
                evicted = request in self.evicted
                self.evicted.discard(request)
            if not evicted:  # (an evicted connection's place is the new connection's already)
                self.slots.release()

    @contextlib.contextmanager
    def silent_while(self, sock, since=None):
        """The connection sock is silent while its thread waits in a read of a request (RequestReader): for its first
        byte, or for the rest since since (when the first came; None: now, waiting for a first byte or in linger).
        Raises Evicted after the read if evict closed it meanwhile."""
        with self.silence_lock:
            self.silent[sock] = (time.monotonic(), True) if since is None else (since, False)
        try:
            yield
        finally:
            with self.silence_lock:
                self.silent.pop(sock, None)
                evicted = sock in self.evicted
            if evicted:
                raise Evicted

    def evict(self):
        """At --max_connections: closes the connection waiting the longest for its request, if EVICT_AFTER or more,
        and hands its place to the new one; whether one was. Else a few idle or slowloris clients hold every place
        (nginx too closes idle connections to make room). Its thread ends (Evicted) without giving back the place."""
        with self.silence_lock:
            # one waiting for a first byte with bytes waiting has its request; one whose request began EVICT_AFTER ago
            # is trickling it, whatever bytes wait unread
            now = time.monotonic()
            sock = min((s for s, (since, first) in self.silent.items()
                        if now - since >= EVICT_AFTER and not (first and readable(s))),
                       key=lambda s: self.silent[s][0], default=None)
            if sock is None:
                return False
            del self.silent[sock]
            self.evicted.add(sock)
            # under the lock: its thread cannot have closed it. Its client sees it close, as an idle one's, and retries
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return True

    def turn_away(self, sock, client_address):
        """A connection past max_connections: answered 503 overloaded (a proxy in front passes it on, where closed
        unanswered it reads as a crash, a 502), then drained. Under --cors its head is read first (busy_answer), up to
        HEAD bytes or HEAD_WAIT seconds."""
        got, deadline = b"", time.monotonic() + HEAD_WAIT
        try:
            with contextlib.suppress(TimeoutError):
                while (self.cors and not HEAD_END.search(got) and len(got) < HEAD
                       and (wait := deadline - time.monotonic()) > 0):
                    sock.settimeout(wait)
                    if not (data := sock.recv(HEAD)):
                        break
                    got += data
            sock.settimeout(DRAIN_WAIT)  # (a new connection's buffer takes this at once)
            sock.sendall(self.busy_answer(f"{self.max_connections} connections are open", got))
            drain(sock)
        except OSError:  # the client is gone already
            pass
        finally:
            self.shutdown_request(sock)
            self.refusals.release()

    def busy_answer(self, why, got=b""):
        """The whole answer to a connection turned away because why, of whose head got was read: 503 overloaded, with
        the CORS headers of its origin, as any error has. A CORS preflight gets its 204 as ever: a browser takes one
        answered otherwise for a network error, and its page never sees the 503 that follows. (Its Host is not
        checked: the request after the 204 meets Handler.check_host.)"""
        method, path, headers = request_head(got)
        cors = self.cors_headers(headers.get("Origin"))
        preflight = None if malformed(headers) else Handler.preflight_headers(self, method, path, headers)
        if preflight is not None:
            status, body, fields = "204 No Content", b"", preflight
        else:
            status = "503 Service Unavailable"
            body = json_bytes(overloaded(why).body())
            fields = [("Content-Type", "application/json"), ("Content-Length", len(body)), RETRY_AFTER]
        fields = "".join(f"{name}: {value}\r\n" for name, value in [*fields, ("Connection", "close"), *cors])
        return f"HTTP/1.1 {status}\r\n{fields}\r\n".encode("latin-1") + body

    def cors_headers(self, origin):
        """The CORS headers of an answer to a request from origin (its Origin header, or None) under --cors."""
        if "*" in self.cors:
            return [("Access-Control-Allow-Origin", "*")]  # the same answer for every origin: a cache keeps one
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")] if origin in self.cors else []

    @property
    def url(self):
        return "http://" + host_port(*self.server_address[:2])

    def where(self):
        """Where serve.py's first line says the server is: its URL, chat page and API; on 0.0.0.0 or ::, this
        machine's network addresses, which others can open. Off loopback, that every machine reaching it may use it;
        with an API key, that it is required (never the key: a log is read by others)."""
        host, port = self.server_address[:2]
        required = "with the API key required" if self.api_key else None
        if self.loopback:
            return f"on {self.url}{', ' + required if required else ''}: chat page at {self.url}/, API at {self.url}/v1"
        anyone = "open to every machine that reaches it, " + (
            required or f"with no authentication (set {API_KEY_ENV} to require a key)")
        if not ipaddress.ip_address(host.partition("%")[0]).is_unspecified:
            return f"on {self.url}, {anyone}: chat page at {self.url}/, API at {self.url}/v1"
        # (:: takes IPv4 clients too, unless the system would not let it: server_bind)
        v4 = self.address_family == socket.AF_INET or not self.socket.getsockopt(socket.IPPROTO_IPV6,
                                                                                socket.IPV6_V6ONLY)
        here = "http://" + host_port("127.0.0.1" if v4 else "::1", port)
        urls = [f"http://{a}:{port}" for a in (network_addresses() if v4 else ())]
        if not urls:
            return (f"on every address of this machine, port {port}, {anyone}: chat page at {here}/, API at "
                    f"{here}/v1; from other machines, the same with this machine's address on their network (none "
                    f"found here)")
        return (f"on every address of this machine, port {port}, {anyone}: from other machines chat page at "
                f"{' or '.join(u + '/' for u in urls)}, API at {urls[0]}/v1; on this machine {here}/")

    def model_card(self):
        # sampling_defaults (an extension, as context_length): what the chat page shows in its empty fields (no
        # max_tokens: a request's depends on its prompt and kind)
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "gpt-trainer",
                "context_length": self.model.config.block_size,
                "sampling_defaults": {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                                      "repetition_penalty": self.repetition_penalty}}

    @staticmethod
    def choice(job, finish, text, **chat):
        """The answer's one choice: a completion's text, or a chat's message (or a stream's delta), given as chat."""
        return {"index": 0, **(chat if job.kind == "chat" else {"text": text}), "logprobs": None,
                "finish_reason": finish}

    def envelope(self, job, choices, chunk=False, usage=False):
        """The answer's object; usage: a dict, None (written as null) or False (left out)."""
        kind = "text_completion" if job.kind != "chat" else "chat.completion.chunk" if chunk else "chat.completion"
        obj = {"id": job.id, "object": kind, "created": job.created, "model": self.name, "choices": choices}
        if usage is not False:
            obj["usage"] = usage
        return obj

    def response(self, job, finish, text="", tokens=0):
        """The Responses API's object for job: in progress (finish None), completed, or incomplete (finish "length")."""
        status = {None: "in_progress", "stop": "completed", "length": "incomplete"}[finish]
        top_p, n = job.sampling["top_p"], len(job.prompt)
        usage = {"input_tokens": n, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": tokens,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": n + tokens}
        return {"id": job.id, "object": "response", "created_at": job.created, "status": status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
                "model": self.name, "output": [] if finish is None else [self.message_item(job, status, text)],
                "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "store": False,
                "temperature": job.sampling["temperature"], "top_p": 1.0 if top_p is None else top_p,
                "usage": None if finish is None else usage}

    @staticmethod
    def message_item(job, status, text=None):
        """The reply as a message item of a response's output: its text one output_text part (none yet: text None)."""
        return {"type": "message", "id": "msg_" + job.id[len("resp_"):], "status": status, "role": "assistant",
                "content": [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]}

    @staticmethod
    def usage(job, tokens):
        return {"prompt_tokens": len(job.prompt), "completion_tokens": tokens, "total_tokens": len(job.prompt) + tokens}

    @contextlib.contextmanager
    def answering(self):
        with self.answered:
            self.under_way += 1
        try:
            yield
        finally:
            with self.answered:
                self.under_way -= 1
                self.answered.notify_all()

    def halt(self, timeout=30):
        """Ctrl-C's stop, once serve_forever has left: no new connections, the reply being generated stops at its next
        token, and the requests under way get their answers for up to ANSWER_WAIT seconds. Whether the worker left
        torch within timeout."""
        # the worker's halt first, which /health reads: else it says ok between the socket's close and halt
        self.worker.halt(timeout=0)
        self.server_close()
        self.worker.join(timeout)
        if self.worker.is_alive():
            return False
        with self.answered:
            self.answered.wait_for(lambda: not self.under_way, ANSWER_WAIT)
        return True

    def close(self):
        self.shutdown()
        self.server_close()
        self.worker.stop()


# -----------------------------------------------------------------------------
# the command line

def port(s):
    v = number(s, int)
    if not 0 <= v <= 65535:  # else socket.bind raises OverflowError, a traceback
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0 picks any free port), got {v}")
    return v


def origins(s):
    out = tuple(o.strip().rstrip("/") for o in s.split(",") if o.strip())
    bad = [o for o in out if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o)]
    if not out or bad:  # a page's Origin is scheme://host[:port], nothing more: another form never matches
        raise argparse.ArgumentTypeError(f"expected origins like http://localhost:3000 (scheme://host[:port]) or *, "
                                         f"got {(bad or [s])[0]!r}")
    return out


def host_names(s):
    given = [h.strip() for h in s.split(",") if h.strip()]
    # (a scheme's "https://" would pass as a name and a port)
    bad = [h for h in given if h != "*" and ("/" in h or not re.fullmatch(r"[a-z0-9._-]+|[0-9a-f:.]+", host_name(h)))]
    out = tuple(host_name(h) for h in given)
    if not out or bad:  # a URL or a path never equals a request's Host name
        raise argparse.ArgumentTypeError(f"expected host names like myname.example (no scheme, no path) or *, got "
                                         f"{(bad or [s])[0]!r}")
    return out


def api_key(s):
    if not re.fullmatch(f"[{KEY_CHARS}]+", s):
        raise argparse.ArgumentTypeError(
            f"expected a key of visible ASCII characters, no spaces (an HTTP header carries it), got {key_fault(s)}; "
            f"make one with python -c \"import secrets; print(secrets.token_urlsafe())\"")
    return s


def key_fault(s):
    """What is wrong with s, a key api_key refuses, named, not shown: it is a secret."""
    if not s:
        return "an empty one"
    if s.rstrip("\r\n") != s and re.fullmatch(f"[{KEY_CHARS}]+", s.rstrip("\r\n")):
        return "one ending in a line break (a file's, read with the key: strip it)"
    c = re.search(f"[^{KEY_CHARS}]", s).group()
    return "one with " + {" ": "a space", "\t": "a tab", "\n": "a line break", "\r": "a line break"}.get(
        c, "a character outside ASCII" if ord(c) > 127 else "a control character")


def parse_args(argv=None):
    # the docstring, its examples first, as prepare.py's, eval.py's and bench.py's --help give theirs
    p = ArgumentParser("serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_argument(p)
    p.add_argument("--host", type=nonempty, default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; "
                        f"0.0.0.0 for every network, with no authentication unless {API_KEY_ENV} is set)")
    p.add_argument("--port", type=port, default=8000, help="port, 0-65535 (default: 8000; 0 picks any free one)")
    p.add_argument("--cors", type=origins, default=(), metavar="ORIGINS",
                   help="let web pages of these origins call the API from a browser: comma-separated, e.g. "
                        "http://localhost:3000, or * for any (default: none; the chat page at / needs none)")
    p.add_argument("--allowed_hosts", type=host_names, default=(), metavar="NAMES",
                   help="on a loopback --host, answer requests for these names too (comma-separated, or * for any): "
                        "behind a proxy that passes on its own name (default: localhost and loopback addresses only, "
                        "against DNS rebinding)")
    p.add_argument("--api_key", type=api_key, metavar="KEY",
                   help=f"require this key of every request to the API, sent as Authorization: Bearer KEY (the openai "
                        f"client's api_key; the chat page asks for it); / and /health stay open. Prefer the "
                        f"environment variable {API_KEY_ENV}=KEY: a key on the command line shows in ps to every user "
                        f"of this machine. Given both, --api_key wins (default: ${API_KEY_ENV}, else none: no "
                        f"authentication)")
    add_sampling_arguments(p, " when a request gives none", max_temp=MAX_TEMPERATURE)
    p.add_argument("--max_tokens", type=at_least(1), default=DEFAULT_MAX_TOKENS,
                   help=f"new tokens when a request gives no max_tokens (default: {DEFAULT_MAX_TOKENS}; for a chat at "
                        f"most half the context, so the history keeps the rest, else cut to what the prompt leaves)")
    p.add_argument("--max_queue", type=at_least(1), default=64,
                   help="requests that may wait for the model; more get 503 (default: 64)")
    p.add_argument("--max_connections", type=at_least(1), default=256,
                   help="connections open at once, idle keep-alive ones included (a thread and a descriptor each; "
                        "idle ones close after 2 minutes); past it a new one takes the place of the one waiting the "
                        "longest, a second or more, for its request (idle, or trickling it), else gets 503 "
                        "(default: 256: the full queue, the reply being generated and three times as many idle, with "
                        "room for as many refused under 1,024 descriptors)")
    add_device_arguments(p)
    args = p.parse_args(argv)
    if args.api_key is None and API_KEY_ENV in os.environ:  # (set but empty is an error: a file read that failed)
        try:
            args.api_key = api_key(os.environ[API_KEY_ENV])
        except argparse.ArgumentTypeError as e:
            p.error(f"{API_KEY_ENV}: {e}")
    return parse_checkpoint(p, args)


def model_name(path):
    """The name the API serves a model under: a checkpoint's file name without .pt, or a folder's name."""
    base = os.path.basename(os.path.normpath(path))
    return base if os.path.isdir(path) else base.removesuffix(".pt")


def main(argv=None):
    args = parse_args(argv)
    path = args.checkpoint or default_checkpoint()
    device = pick_device(args.device, interactive=False)
    dtype = inference_dtype(device, args.dtype)
    model, enc, ckpt = load_model(path, device)
    name = model_name(path)
    server = ApiServer(model, enc, name, args.host, args.port, dtype, args.temp, args.top_k, args.top_p,
                       args.max_tokens, args.max_queue, cors=args.cors, repetition_penalty=args.repetition_penalty,
                       allowed_hosts=args.allowed_hosts, max_connections=args.max_connections, api_key=args.api_key)
    # said once it listens: a --port in use or a bad --host is then its one line, not the second after a warning
    if not args.checkpoint:
        say_newest(path)
    warn_if_trained_on_text(path, ckpt, "its chat replies (the chat page, /v1/chat/completions)")
    print(f"serving {name}, {fmt_count(model.num_params(non_embedding=False))} parameters, context "
          f"{model.config.block_size}, {device} {dtype_words(device, dtype, args.dtype)}, {server.where()}; "
          "Ctrl-C stops", flush=True)
    signalled = False
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        signalled = True  # "stopped" is said once it has (halt), after the worker's line for the reply it cut short
    finally:
        # SIGTERM's (or SIGHUP's) SystemExit (exit_on_sigterm) in flight stops the server as Ctrl-C does, and says so
        stop = sys.exc_info()[1]
        by_sigterm = isinstance(stop, SystemExit)
        signalled = signalled or by_sigterm
        main_thread = threading.current_thread() is threading.main_thread()
        # os._exit (leave) is the command's way out past a worker inside torch, where Python's exit would abort; from
        # Python (a notebook) the process goes on, and the worker stops at its next token
        command = __name__ == "__main__"
        before = {s: signal.signal(s, leave_at_once) for s in (signal.SIGINT, *stop_signals())} \
            if main_thread and command else {}
        try:
            if not server.halt():  # the worker still inside torch past halt's timeout: Python's exit would abort
                if command:
                    print("the reply being generated did not stop in time: exiting without waiting for it",
                          file=sys.stderr)
                    leave(stop.code if by_sigterm else 128 + signal.SIGINT)  # the status of the signal that stopped it
                print("the reply being generated did not stop in time: it stops at its next token", file=sys.stderr)
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)
        if signalled:  # (here: SIGTERM's exit, 143, goes on past this finally, and a closed stderr does not change it)
            with contextlib.suppress(OSError, ValueError):
                print("stopped", file=sys.stderr)


def leave_at_once(signum, frame):
    """Ctrl-C again (or SIGTERM, SIGHUP) while serve.py waits for the worker to leave torch: exit now, by leave."""
    leave(128 + signum)


def leave(code):
    """Exit with code by os._exit, once stdout and stderr are flushed: the interpreter's finalization can abort under
    torch's threads (SIGABRT), and serve.py has no files or atexit clean-up to skip."""
    for f in (sys.stdout, sys.stderr):
        # (RuntimeError: leave_at_once's signal came in the middle of a write to that stream)
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            f.flush()
    os._exit(code)


def run_and_leave(main):
    """run_main(main), then leave() with the status Python's exit would have given (0, a SystemExit's, or 1 after a
    bug's traceback): Python's own exit can abort even a clean stop."""
    try:
        run_main(main)
        code = 0
    except SystemExit as e:  # as Python reads it: None is 0, a message is printed and is 1
        code = 0 if e.code is None else e.code
        if not isinstance(code, int):
            with contextlib.suppress(OSError, ValueError):
                print(code, file=sys.stderr)
            code = 1
    except Exception:
        with contextlib.suppress(OSError, ValueError):
            sys.excepthook(*sys.exc_info())
        code = 1
    leave(code)


if __name__ == "__main__":
    retain_freed_memory()  # as in gen.py: a CPU step reuses its pages
    run_and_leave(main)
