"""
gen.py: sampling determinism, KV cache vs full recomputation, chat turns and history,
batched prompt files, and the one-line errors. Tiny random models saved into tmp_path;
nothing depends on train.py.
"""
import builtins
import copy
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

import common
import gen
import serve
import train
from checkpoint import find_checkpoints, load_model, save_checkpoint
from common import UserError
from conftest import run_cli
from model import GPT, make_config
from setup_tokenizer import IM_END, IM_START, get_tokenizer, render_chat, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "gen.py")
CPU = ["--device", "cpu", "--dtype", "float32"]  # deterministic wherever the tests run


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("gpt2")


def tiny_model(enc, seed=0, block_size=64, variant="gpt2"):
    # gpt2 variant: la_model below needs LayerNorm's bias, and its random weights give varied greedy tokens
    torch.manual_seed(seed)
    config = make_config("tiny", n_layer=2, n_embd=64, n_head=2, block_size=block_size, vocab_size=enc.n_vocab,
                         variant=variant)
    return GPT(config).eval()


def la_model(enc, closer=IM_END, block_size=64):
    """A model that answers ' la la ...' and closes its turn: ln_f's weight is zeroed, so the final
    hidden state is its bias e_0 whatever the input, and the logits are lm_head's column 0. Every token
    gets -30 there except ' la' and closer, <|im_end|> (both 0), so each step ends the turn with p = 1/2."""
    model = tiny_model(enc, block_size=block_size)
    la, end = enc.encode_single_token(" la"), enc.encode_single_token(closer)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        w = model.lm_head.weight
        w[:, 0] = -30.0
        w[la, 0] = 0.0
        w[end, 0] = 0.0
    return model


@pytest.fixture(scope="module")
def ckpt(enc, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gen") / "tiny.pt")
    save_checkpoint(path, tiny_model(enc), enc)
    return path


@pytest.fixture(scope="module")
def la_ckpt(enc, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gen") / "la.pt")
    save_checkpoint(path, la_model(enc), enc)
    return path


def cli(argv, capsys):
    return run_cli(gen.main, argv, capsys)


def sample(model, enc, seed, prompt="Once upon a time", n=30):
    g = torch.Generator().manual_seed(seed)
    return gen.complete(model, enc, enc.encode(prompt), n, temperature=1.0, top_k=None, generator=g)


# -----------------------------------------------------------------------------

def test_same_seed_same_text(enc):
    model = tiny_model(enc)
    ids1, text1, why1 = sample(model, enc, 1)
    ids2, text2, why2 = sample(model, enc, 1)
    assert (ids1, text1) == (ids2, text2)
    assert len(ids1) == 30 and why1 == "max_tokens"
    assert text1 == enc.decode(ids1)  # streamed pieces add up to the whole text
    ids3, _, _ = sample(model, enc, 2)
    assert ids3 != ids1


def test_same_seed_same_text_cli(ckpt, capsys):
    # any integer is a seed: beyond 64 bits it is taken modulo 2**64 (as serve.py does), not a traceback
    seeds = (5, 2**64 + 5, 6, 0, 0)  # 0 is a seed too, not "none given"
    runs = [cli([ckpt, "--prompt", "Hi", "--seed", str(s), "--max_tokens", "20", "--temp", "1"] + CPU, capsys)
            for s in seeds]
    assert all(code == 0 for code, _, _ in runs)
    assert runs[0][1] == runs[1][1] != runs[2][1]
    assert runs[3][1] == runs[4][1]
    assert runs[0][1].startswith("Hi")  # the prompt, then its continuation


def test_the_seed_verbose_shows_gives_the_text_again(ckpt, capsys):
    # without --seed a run draws its own (--help: "default: random, shown by --verbose"), so a text worth keeping or a
    # reply worth debugging is had again by passing the seed its header line named
    opts = [ckpt, "--prompt", "Hi", "--max_tokens", "20", "--temp", "1", "--verbose"] + CPU
    code, out, err = cli(opts, capsys)
    seed = re.search(r", seed (-?\d+)\n", err)
    assert code == 0 and seed, err
    assert cli(opts + ["--seed", seed[1]], capsys)[1] == out
    assert cli(opts, capsys)[1] != out  # (the next run draws another)


def test_verbose_says_why_auto_took_float32_on_a_cpu_without_bf16(ckpt, capsys, monkeypatch):
    # as train.py's run line: on an AVX2 laptop --dtype auto's float32 is explained, a --dtype given is said as it is
    monkeypatch.setattr(common, "cpu_info", lambda: ("GenuineIntel", {"sse2", "avx", "avx2", "fma"}))
    opts = [ckpt, "--prompt", "Hi", "--max_tokens", "2", "--verbose", "--device", "cpu"]
    code, _, err = cli(opts, capsys)
    assert code == 0 and "dtype float32 (auto: no AVX-512 BF16 or AMX here), KV cache" in err, err
    code, _, err = cli(opts + ["--dtype", "float32"], capsys)
    assert code == 0 and "dtype float32, KV cache" in err, err


def test_kv_cache_matches_full_recomputation(enc):
    model = tiny_model(enc, seed=3)
    caches = []  # proof that use_cache reaches the model: only the cached path allocates a KV cache
    new_cache = model.new_cache
    model.new_cache = lambda *a, **k: caches.append(1) or new_cache(*a, **k)
    for prompt in ("Once upon a time", "The quick brown fox jumps over the lazy dog. " * 3):
        ids = enc.encode(prompt)
        # greedy on a random model soon repeats one token; the repetition penalty keeps the sequence varied, so
        # the comparison means something. 100 new tokens in a 64-token window: slide=True also covers the
        # cache's re-prefill after a slide.
        for penalty in (1.0, 1.3):
            fast, _, _ = gen.complete(model, enc, ids, 100, temperature=0, repetition_penalty=penalty,
                                      use_cache=True, slide=True)
            assert caches and caches.clear() is None
            slow, _, _ = gen.complete(model, enc, ids, 100, temperature=0, repetition_penalty=penalty,
                                      use_cache=False, slide=True)
            assert not caches
            assert len(fast) == 100 and fast == slow
        assert len(set(fast)) >= 10


def test_context_end_and_nonstop(ckpt, capsys):
    # without --nonstop generation ends when the 64-token window is full; with it, at --max_tokens
    code, out, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", "100", "--verbose", "--seed", "0"] + CPU, capsys)
    assert code == 0 and "[end: context]" in out
    # --verbose's model line gives its sizes as train.py's banner does ("0.10M" where train.py said 100.1k)
    model = load_model(ckpt)[0]
    assert f": {train.fmt_count(model.num_params(non_embedding=False))} parameters " \
           f"({train.fmt_count(model.num_params())} non-embedding), " in err, err
    # 1 + 64 tokens: the last new token is predicted from a full 64-token window
    assert re.search(r"prompt 1 tokens, 64 new tokens", err)
    # said up front, not only in --verbose's [end: context]: 100 were asked for
    assert "warning: --max_tokens 100 is more than the context holds (64): a completion ends where it is full; " \
           "--nonstop slides it on\n" in err
    code, out, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", "64", "--seed", "0"] + CPU, capsys)
    assert code == 0 and "warning" not in err, err
    # and the default's 256 (a model at nanoGPT's CPU --block_size 64 gave samples of 60 characters, said nowhere)
    code, out, err = cli([ckpt, "--prompt", "Hi", "--seed", "0"] + CPU, capsys)
    assert code == 0 and err == "note: the model's context holds 64 tokens: a completion ends where it is full, " \
                                "short of --max_tokens' default 256; --nonstop --max_tokens 256 slides it on\n", err
    code, out, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", "100", "--verbose", "--nonstop", "--seed", "0"] + CPU,
                         capsys)
    assert code == 0 and "[end: max_tokens]" in out and "warning" not in err
    assert re.search(r"100 new tokens", err)


def test_a_completion_ends_where_a_chat_model_ends_its_turn(enc, tmp_path, capsys):
    """--prompt given a chat model went on past its <|im_end|> (printed as text) into turns it wrote for the user, to
    --max_tokens: it ends there, as serve.py's /v1/completions does, at each token that ends a turn; --prompt_file's
    completions too. --nonstop still runs on past it."""
    for closer in gen.CHAT_STOPS:
        path = str(tmp_path / "la.pt")
        save_checkpoint(path, la_model(enc, closer), enc, data={"kind": "chat"})
        code, out, err = cli([path, "--prompt", "hi", "--max_tokens", "40", "--verbose", "--seed", "0"] + CPU, capsys)
        assert code == 0 and out.endswith(f"\n[end: {closer}]\n") and "<|" not in out.replace(f"[end: {closer}]", ""), \
            (closer, out)
        assert re.fullmatch(r"hi( la)*\n", out.split("[end: ")[0]), (closer, out)
        src = tmp_path / "prompts.txt"
        src.write_text("hi\nho\n", encoding="utf-8")
        code, out, err = cli([path, "--prompt_file", str(src), "--output", str(tmp_path / "o.jsonl"), "--max_tokens",
                              "40", "--seed", "0"] + CPU, capsys)
        rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
        assert code == 0 and [r["end"] for r in rows] == [closer] * 2, (closer, rows)
        assert all(re.fullmatch(r"( la)*", r["completion"]) for r in rows), (closer, rows)
    code, out, err = cli([path, "--prompt", "hi", "--max_tokens", "40", "--verbose", "--nonstop", "--seed", "0"] + CPU,
                         capsys)
    assert code == 0 and "[end: max_tokens]" in out and out.count("<|") > 1, out


def test_chat_reply_stops_at_im_end_and_keeps_history(enc):
    model = la_model(enc)
    g = torch.Generator().manual_seed(0)
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    info = {}
    text, why = gen.chat_reply(model, enc, history, 50, info=info, temperature=1.0, generator=g)
    assert why == IM_END
    assert set(text.split()) <= {"la"}
    history += [{"role": "assistant", "content": text}, {"role": "user", "content": "again"}]
    text2, why2 = gen.chat_reply(model, enc, history, 50, info=info, temperature=1.0, generator=g)
    assert why2 == IM_END
    # the second turn's prompt is the whole conversation so far, ending with the assistant's cue
    assert info["prompt_ids"] == render_chat(enc, history, add_generation_prompt=True)[0]
    assert f"hello{IM_END}" in enc.decode(info["prompt_ids"]) and info["dropped"] == 0
    # a model that skips <|im_end|> and opens the next turn: the reply ends there, the control token unshown
    text, why = gen.chat_reply(la_model(enc, closer=IM_START), enc, history, 50, temperature=1.0, generator=g)
    assert why == IM_START and set(text.split()) <= {"la"}


def test_chat_piped_session(la_ckpt, enc):
    # the real command line with stdin piped: replies one per line, each followed (with --verbose)
    # by its [end: ...] marker; blank lines are ignored and /exit quits. A U+FFFD written in UTF-8 is text as any
    # other: a reply, and no warning that the input is not UTF-8
    stdin = "hello\n\nhow are you?\n\ufffd ok\n/exit\nnever read\n"
    r = subprocess.run([sys.executable, GEN, la_ckpt, "--chat", "--verbose", "--seed", "0", "--temp", "1",
                        "--max_tokens", "16", "--system", "be brief"] + CPU,
                       input=stdin, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[1::2][:3] == [f"[end: {IM_END}]"] * 3 and lines[6:] == [""], r.stdout
    replies = lines[0:6:2]
    assert all(set(reply.split()) <= {"la"} for reply in replies)
    assert "not UTF-8" not in r.stderr, r.stderr
    # the second prompt holds the first exchange: its token count is the rendered history's
    prompt_lens = [int(n) for n in re.findall(r"prompt (\d+) tokens", r.stderr)]
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    first = len(render_chat(enc, history, add_generation_prompt=True)[0])
    history += [{"role": "assistant", "content": replies[0]}, {"role": "user", "content": "how are you?"}]
    second = len(render_chat(enc, history, add_generation_prompt=True)[0])
    assert prompt_lens[:2] == [first, second] and len(prompt_lens) == 3
    # bytes that are not UTF-8, under a strict UTF-8 stdin (as with LANG=en_US.UTF-8): replies, not a traceback.
    # Chinese Windows' text (GBK) piped in: each line was U+FFFD to the model, without a word. Said once (the first
    # such line names the encoding), chat goes on, through a latin-1 line and a U+FFFD written in UTF-8
    gbk = "你好\n".encode("gbk") * 2
    r = subprocess.run([sys.executable, GEN, la_ckpt, "--chat", "--verbose", "--seed", "0", "--max_tokens", "4"] + CPU,
                       input=gbk + b"caf\xe9 \xff\n" + "\ufffd ok\n".encode(), capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    err = r.stderr.decode()
    assert r.returncode == 0 and r.stdout.count(b"[end: ") == 4, err[-2000:]
    assert err.count("warning: the input is not UTF-8 text") == 1 and "`iconv -f gb18030 -t utf-8`" in err, err


@pytest.mark.parametrize("text,encoding", [("Привет, как дела? Всё хорошо.", "cp1251"),
                                           ("Γεια σου, τι κάνεις; Όλα καλά.", "cp1253"), ("你好，今天天气很好。", "gbk"),
                                           ("caf\u00e9 cr\u00e8me", "latin1")])
def test_piped_input_that_is_not_utf8_is_told_its_encoding(text, encoding, monkeypatch, capsys):
    """Piped chat input that was not UTF-8 was told `iconv -f gb18030` whatever it was, Russian Windows' text too: the
    line's bytes name the encoding they look like, as a file's do, and the lines still come (U+FFFD for those bytes)."""
    lines = (text + "\n").encode(encoding) * 2
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines), encoding="utf-8", errors="surrogateescape"))
    assert list(gen.read_lines("> ", False)) == [lines.decode("utf-8", "replace").split("\n")[0]] * 2
    err = capsys.readouterr().err
    assert err.count("warning: the input is not UTF-8") == 1 and f"`iconv -f {encoding.replace('gbk', 'gb18030')} " \
        "-t utf-8`" in err, err


@pytest.mark.parametrize("text", ["Привет, как дела? Всё хорошо.", "你好，今天天气很好。", "caf\u00e9 cr\u00e8me"])
def test_piped_utf8_input_with_a_stray_byte_is_told_so(text, monkeypatch, capsys):
    """A UTF-8 line with one stray byte, piped in, was told to convert from cp1250 or latin2 (UTF-8's bytes read as
    8-bit text's), which garbles its every other character: it is told a stray byte, as such a file is."""
    lines = text.encode() + b"\xff\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines), encoding="utf-8", errors="surrogateescape"))
    assert list(gen.read_lines("> ", False)) == [text + "\ufffd"]
    err = capsys.readouterr().err
    assert "a stray byte? drop such bytes, e.g. `iconv -c -f utf-8 -t utf-8`" in err and "iconv -f" not in err, err


def test_chat_with_a_model_trained_on_plain_text_is_warned_of(enc, tmp_path, capsys):
    """make demo's story model answers --chat with a story that never ends its turn: the user is told why. A chat
    model given --prompt continues the text with turns of its own (<|im_end|> as text): --chat is named."""
    for kind, warned in (("text", True), ("chat", False), (None, False)):
        path = str(tmp_path / f"{kind}.pt")
        save_checkpoint(path, la_model(enc), enc, dataset="story", data={"kind": kind} if kind else {})
        code, out, err = cli([path, "--chat", "--prompt", "hi", "--max_tokens", "2", "--seed", "0"] + CPU, capsys)
        assert code == 0 and ("trained on plain text (story), not on conversations" in err) == warned, err
        # the way out is the command that makes a chat set in its vocabulary (it was "README: make chat-demo", which
        # trains a new story model)
        made = common.script_command("prepare.py", "--dataset", "dailydialog", "--tokenizer", path)
        assert (f"fine-tune it on a chat set in its vocabulary first: `{made}` (or --dataset chat --source "
                f"YOUR.jsonl) makes one and prints the train.py command\n" in err) == warned, err
        # and the other way round: --prompt given a chat model continues the text, writing ChatML of its own
        code, out, err = cli([path, "--prompt", "hi", "--max_tokens", "2", "--seed", "0"] + CPU, capsys)
        assert code == 0 and (f"note: {path} was fine-tuned on conversations (story): this continues the text as it "
                              f"stands; gen.py --chat answers it as a chat\n" in err) == (kind == "chat"), err
    # a checkpoint from before train.py recorded the data's kind: said by the name of one of prepare.py's datasets
    for dataset, warned in (("story", True), ("dailydialog", False), ("mine", False)):
        path = str(tmp_path / f"old_{dataset}.pt")
        save_checkpoint(path, la_model(enc), enc, dataset=dataset, data={"folder": f"data/{dataset}"})
        code, out, err = cli([path, "--chat", "--prompt", "hi", "--max_tokens", "2", "--seed", "0"] + CPU, capsys)
        assert code == 0 and ("trained on plain text" in err) == warned, err
        code, out, err = cli([path, "--prompt", "hi", "--max_tokens", "2", "--seed", "0"] + CPU, capsys)
        assert code == 0 and ("was fine-tuned on conversations" in err) == (dataset == "dailydialog"), err


def test_chat_reset_in_process(la_ckpt, enc, capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nhi\n"))
    code, out, err = cli([la_ckpt, "--chat", "--verbose", "--seed", "1", "--temp", "1", "--max_tokens", "40"] + CPU,
                         capsys)
    assert code == 0
    assert out.count(f"[end: {IM_END}]") == 2
    # after /reset the second turn starts from scratch: the same prompt length as a first turn
    first = len(render_chat(enc, [{"role": "user", "content": "hello"}], add_generation_prompt=True)[0])
    second = len(render_chat(enc, [{"role": "user", "content": "hi"}], add_generation_prompt=True)[0])
    assert [int(n) for n in re.findall(r"prompt (\d+) tokens", err)] == [first, second]
    # the history keeps half the 64-token context: a reply may get 33 tokens, fewer only after a message longer than
    # the other half, and 40 were asked for (a reply was cut short without a word unless the history had to be cut too)
    assert err.count("warning: ") == 1 and "warning: --max_tokens 40 is more than the half of the context (64) kept " \
        "for replies: a reply gets 33 tokens or more, as many as the conversation leaves, fewer after a message " \
        "longer than the other half\n" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code, out, err = cli([la_ckpt, "--chat", "--seed", "1", "--max_tokens", "33"] + CPU, capsys)
    assert code == 0 and "warning" not in err, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    code, out, err = cli([la_ckpt, "--chat", "--seed", "1"] + CPU, capsys)  # not asked for: the default's 256
    assert code == 0 and "warning" not in err, err


def test_no_color_leaves_the_chat_prompts_plain(la_ckpt, capsys, monkeypatch):
    """NO_COLOR (no-color.org) on a terminal: train.py's colors heeded it, gen.py's bold prompts did not. TERM=dumb
    (Emacs' shell) takes no styling either: it showed as ^[[1m."""
    for no_color, term, styled in (("", "xterm", True), ("1", "xterm", False), ("", "dumb", False)):
        monkeypatch.setenv("NO_COLOR", no_color)  # (set but empty: not set, as the convention says)
        monkeypatch.setenv("TERM", term)
        monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
        for stream in (sys.stdin, sys.stdout):
            monkeypatch.setattr(stream, "isatty", lambda: True)
        code, out, err = cli([la_ckpt, "--chat", "--seed", "1", "--max_tokens", "4", "--no_delay"] + CPU, capsys)
        assert code == 0 and ("\033[1m" in out) == styled, (out, err)


def test_a_terminal_gets_the_typing_rhythm_and_a_pipe_never_waits(ckpt, capsys, monkeypatch):
    """Issue 4: tokens are paced on a terminal for demos unless --no_delay; piped output (benchmarks, scripts) is
    never held back."""
    sleeps = []
    monkeypatch.setattr(gen.time, "sleep", sleeps.append)
    argv = [ckpt, "--prompt", "Hi", "--max_tokens", "8", "--temp", "0"] + CPU
    waited = []
    for tty, extra in ((False, []), (True, []), (True, ["--no_delay"])):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        sleeps.clear()
        code, out, err = cli(argv + extra, capsys)
        assert code == 0, err
        waited.append(sum(sleeps))
    # at most a delay before each of the 8 tokens and the closing newline (the prompt's echo, first, waits for none):
    # 8 delays failed on a fast machine, where the model's own time a token is near 0
    assert waited[0] == waited[2] == 0 and 0 < waited[1] <= (8 + 1) * gen.TYPING_DELAY


def test_control_characters_a_model_writes_show_on_a_terminal_and_pass_a_pipe_as_they_are(ckpt, enc, capsys,
                                                                                        monkeypatch):
    """A model's ESC c cleared the user's screen, its \\r wrote over the line and ESC ]0;...BEL retitled the window: on
    a terminal they show as symbols, gen.py's own bold around the echoed prompt still works, and a character split
    across tokens still comes whole; a pipe gets the bytes the model wrote."""
    written = "\x1bc\x1b]0;pwned\x07 over\rx\x08\x9b2J\tcaf\u00e9\n"
    ids = enc.encode("\x1bc\x1b]0;pwned\x07 over\rx\x08\x9b2J\tcaf") + [enc.encode_single_token(b) for b in
                                                                       (b"\xc3", b"\xa9")] + enc.encode("\n")
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in ids]))
    argv = [ckpt, "--prompt", "Hi", "--max_tokens", str(len(ids)), "--no_delay"] + CPU
    monkeypatch.delenv("NO_COLOR", raising=False)
    for tty, shown in ((False, "Hi" + written + "\n"),
                       (True, "\033[1mHi\033[0m␛c␛]0;pwned␇ over␍x␈<U+009B>2J\tcaf\u00e9\n\n")):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        code, out, err = cli(argv, capsys)
        assert code == 0 and out == shown, (tty, out, err)


def test_a_crlf_line_end_shows_as_a_line_end_on_a_terminal(ckpt, enc, capsys, monkeypatch):
    """\r\n ends a line on a terminal as \n does: shown as a \r, each line of a CRLF text (a hub GPT-2's, which writes
    \r and \n as two tokens, a chat set's) ended in a ␍. A \r alone, which writes over the line, still shows; a pipe
    gets the bytes."""
    text = " one\r\ntwo\r\n\r\nthree\rx\r"
    ids = [enc.encode_single_token(c) for c in text]
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in ids]))
    argv = [ckpt, "--prompt", "Hi", "--max_tokens", str(len(ids)), "--no_delay"] + CPU
    monkeypatch.setenv("NO_COLOR", "1")
    for tty, shown in ((False, "Hi" + text + "\n"), (True, "Hi one\ntwo\n\nthree␍x\n")):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        code, out, err = cli(argv, capsys)
        assert code == 0 and out == shown, (tty, out, err)


def test_a_prompt_file_printed_on_a_terminal_escapes_every_control_character(ckpt, enc, tmp_path, capsys,
                                                                            monkeypatch):
    """JSON lines escape the C0 controls but not the C1 ones, which xterm obeys as it does ESC [ (U+009B 2J cleared the
    screen): on a terminal they are escaped too, the lines' values the same as a pipe's, which gets the bytes as
    ever."""
    src = tmp_path / "prompts.txt"
    src.write_text("Hi\n", encoding="utf-8")
    ids = enc.encode("\x9b2J\x1bc\x7f")
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in ids]))
    argv = [ckpt, "--prompt_file", str(src), "--max_tokens", str(len(ids))] + CPU
    shown = {}
    for tty in (False, True):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        code, shown[tty], err = cli(argv, capsys)
        assert code == 0 and json.loads(shown[tty])["completion"] == "\x9b2J\x1bc\x7f", (shown[tty], err)
    assert "\x9b" in shown[False] and not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", shown[True]), shown
    # --output, a file, gets the bytes whatever stdout is
    code, _, err = cli(argv + ["--output", str(tmp_path / "out.jsonl")], capsys)
    assert json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))["completion"] == "\x9b2J\x1bc\x7f", err


def screen(out, width):
    """The lines a terminal width columns wide shows for out: as a terminal, it wraps at its edge (once a character
    comes past it) and obeys \\n, ESC [ n D (back n columns) and ESC [ K (clear to the end of the line); bold is no
    character."""
    lines, row, col = [[]], 0, 0
    for m in re.finditer(r"\033\[(\d*)([A-Za-z])|(.)", out, re.S):
        n, code, ch = m.groups()
        if code == "D":
            col = max(0, min(col, width - 1) - int(n or 1))
        elif code == "K":
            del lines[row][col:]
        elif ch is not None:
            if ch == "\n" or col == width:
                row, col = row + 1, 0
                lines.append([])
            if ch != "\n":
                lines[row][col:col + 1] = [ch] if col < len(lines[row]) else [" "] * (col - len(lines[row])) + [ch]
                col += 1
    return ["".join(line).rstrip() for line in lines]


def test_a_long_reply_breaks_its_lines_between_words_on_a_terminal(ckpt, enc, capsys, monkeypatch):
    """The terminal broke a long reply's lines wherever its edge fell, in mid-word: on a terminal a word that does not
    fit goes to the next line whole, as it streams (token by token, or character by character, which moves a word
    already written), one longer than a line breaks at the edge; a pipe gets no line break the model did not write."""
    text = " quick brown fox jumps over the lazy dog supercalifragilisticexpialidocious end"
    monkeypatch.setenv("COLUMNS", "20")  # (shutil.get_terminal_size reads it first)
    for ids in (enc.encode(text), [enc.encode_single_token(c) for c in text]):
        monkeypatch.setattr(gen, "sample_steps", lambda *a, ids=ids, **k: iter([[t] for t in ids]))
        argv = [ckpt, "--prompt", "The", "--max_tokens", str(len(ids)), "--no_delay"] + CPU
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        code, out, err = cli(argv, capsys)
        assert code == 0 and screen(out, 20) == ["The quick brown fox", "jumps over the lazy", "dog",
                                                 "supercalifragilisti", "cexpialidocious end", ""], (ids, out, err)
        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
        code, out, err = cli(argv, capsys)
        assert code == 0 and out == "The" + text + "\n", (out, err)
    # a terminal that moves no cursor as told (Emacs' shell buffer) gets the lines as they come, and no styling
    # (common.color_ok)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "dumb")
    code, out, err = cli(argv, capsys)
    assert code == 0 and out == "The" + text + "\n", (out, err)


def test_cjk_punctuation_never_opens_or_ends_a_line_on_a_terminal(capsys, monkeypatch):
    """A Chinese reply broke its line wherever the edge fell, between any two wide characters: a line could open with
    "。" or "，", which Chinese and Japanese never write. The character before it goes down with it, as it streams;
    elsewhere the line still breaks after any wide character, and a pipe gets the text as it is."""
    monkeypatch.setenv("COLUMNS", "13")  # 12 columns of text: six wide characters
    monkeypatch.setenv("TERM", "xterm")
    text = "一二三四五六。七八九十甲乙丙丁戊」。己"
    for pieces in ([text], list(text)):  # (back over a wide character: two columns)
        printer = gen.Printer(terminal=True)
        for piece in pieces:
            printer(piece)
        assert capsys.readouterr().out == "一二三四五六\033[2D\033[K\n六。七八九十\n甲乙丙丁戊」\033[4D\033[K\n戊」。己", pieces
    gen.Printer(terminal=False)(text)
    assert capsys.readouterr().out == text
    # nor does a line end with an opening bracket ("「", "（"): it goes down with the character after it
    text = "一二三四五「六七八九十甲乙丙丁戊（己"
    for pieces in ([text], list(text)):
        printer = gen.Printer(terminal=True)
        for piece in pieces:
            printer(piece)
        assert capsys.readouterr().out == "一二三四五「\033[2D\033[K\n「六七八九十\n甲乙丙丁戊（\033[2D\033[K\n（己", pieces


def test_a_combining_mark_stays_on_its_letters_line_on_the_narrowest_terminal(ckpt, enc, capsys, monkeypatch):
    """Where a line holds no more than one letter (a terminal 1 or 2 columns wide, or one made narrower mid-reply), the
    accent that follows it went to a line of its own, apart from the letter it belongs to: it takes no column."""
    text = " e\u0301x"  # (é decomposed, as macOS' file names and some corpora write it)
    ids = enc.encode(text)
    monkeypatch.setattr(gen, "sample_steps", lambda *a, **k: iter([[t] for t in ids]))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm")
    for width in ("1", "2"):
        monkeypatch.setenv("COLUMNS", width)
        code, out, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", str(len(ids)), "--no_delay"] + CPU, capsys)
        assert code == 0 and "e\u0301" in out.split("\n"), (width, out, err)


def test_history_overflow_drops_oldest_turns(enc, monkeypatch, capsys):
    system = {"role": "system", "content": "You are a helpful assistant."}
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i} " + "word " * 10},
                  {"role": "assistant", "content": f"answer {i} " + "word " * 10}]
    history = [system] + turns + [{"role": "user", "content": "last question"}]
    full = len(render_chat(enc, history, add_generation_prompt=True)[0])
    budget = full - 10  # one turn too many
    fitted = gen.fit_history(enc, history, budget)
    assert fitted[0] == system
    assert fitted[1:] == history[3:]  # exactly the oldest question and its answer went
    assert len(render_chat(enc, fitted, add_generation_prompt=True)[0]) <= budget
    # a tight budget keeps the system message and the newest message
    assert gen.fit_history(enc, history, 5) == [system, history[-1]]
    assert gen.fit_history(enc, history[1:], 5) == [history[-1]]
    # the same as dropping a turn at a time and rendering again (the plain definition), for every budget
    def plain(messages, budget):
        head = messages[:1] if messages[0]["role"] == "system" else []
        rest = messages[len(head):]
        while len(rest) > 1 and len(render_chat(enc, head + rest, add_generation_prompt=True)[0]) > budget:
            rest = rest[1:]
            while len(rest) > 1 and rest[0]["role"] == "assistant":
                rest = rest[1:]
        return head + rest

    # short messages too (6 tokens each: "ok"), as many as the budget holds; fit_history looks at the newest
    # budget // 4 + 1 messages only, which a bound too tight made fewer than fit
    chit = [{"role": r, "content": "ok"} for _ in range(12) for r in ("user", "assistant")] + [history[-1]]
    for h in (history, history[1:], history[2:], history[1:-1], [system] + chit, chit):
        for b in range(0, len(render_chat(enc, h, add_generation_prompt=True)[0]) + 5):
            assert gen.fit_history(enc, h, b) == plain(h, b), (len(h), b)
    # a session of thousands of turns renders only the newest messages that could fit: a flat cost per reply (the
    # whole history rendered once for each message dropped took seconds a reply after a few hundred turns)
    long = [system] + turns * 500 + [history[-1]]
    rendered = []
    real = gen.render_chat
    monkeypatch.setattr(gen, "render_chat", lambda enc, m, **kw: rendered.append(len(m)) or real(enc, m, **kw))
    assert gen.fit_history(enc, long, 200) == plain(long[:1] + long[-60:], 200)
    assert sum(rendered) <= 200 // 4 + 2
    monkeypatch.undo()
    # through chat_reply: a 64-token window cannot hold this history, so turns are dropped, the system stays
    info = {}
    text, why = gen.chat_reply(la_model(enc), enc, history, 20, info=info, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert why == IM_END and info["dropped"] > 0 and len(info["prompt_ids"]) <= 64 - 20
    assert enc.decode(info["prompt_ids"]).startswith(f"<|im_start|>system\n{system['content']}")
    # the system message and the newest one alone fill more than the prompt's share: the reply gets what is left,
    # and when they fill the whole context the start of the newest message goes, never the system message (the
    # start of the window was cut, system message and all)
    sys_ids = render_chat(enc, [system])[0]
    for words, max_tokens in ((30, 20), (41, 20), (60, 20)):  # 41: they fill the 64-token context exactly
        long = [system, {"role": "user", "content": "tell me " + "word " * words}]
        n = len(render_chat(enc, long, add_generation_prompt=True)[0])
        info = {}
        text, why = gen.chat_reply(la_model(enc), enc, long, max_tokens, info=info, temperature=1.0,
                                   generator=torch.Generator().manual_seed(0))
        assert info["prompt_ids"][:len(sys_ids)] == sys_ids
        if n < 64:
            assert n > 64 - 20 and info["prompt_ids"] == render_chat(enc, long, add_generation_prompt=True)[0]
        else:
            assert len(info["prompt_ids"]) == 64 - 20
            # the newest message keeps its turn's opening: its end alone was text in no turn
            assert enc.decode(info["prompt_ids"][len(sys_ids):]).startswith("<|im_start|>user\n word word")
            assert enc.decode(info["prompt_ids"]).endswith("word <|im_end|>\n<|im_start|>assistant\n")
            assert "keeping the system message, the user turn's opening and the last" in capsys.readouterr().err
    # no system message: the warning does not speak of one
    text, why = gen.chat_reply(la_model(enc), enc, long[1:], 20, info=info, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert len(info["prompt_ids"]) == 64 - 20 and enc.decode(info["prompt_ids"]).startswith("<|im_start|>user\n word")
    assert "keeping the user turn's opening and the last 41 of the rest so 20 can follow" in capsys.readouterr().err
    # a max_tokens over half the context: the prompt keeps half of it, and the warning counts what the reply then gets
    text, why = gen.chat_reply(la_model(enc), enc, long[1:], 40, info=info, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert len(info["prompt_ids"]) == 32
    assert "keeping the user turn's opening and the last 29 of the rest so 33 can follow" in capsys.readouterr().err
    # a system message that alone fills the context is cut too, and the warning says so
    huge = [{"role": "system", "content": "rule " * 60}, {"role": "user", "content": "hi"}]
    text, why = gen.chat_reply(la_model(enc), enc, huge, 20, info=info, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    err = capsys.readouterr().err
    assert len(info["prompt_ids"]) == 64 - 20 and "its system message alone fills the context: cut too" in err, err
    # a reply that runs into the end of the context stopped for that ("context"), not for the max_tokens it was given
    # (chat_reply lowered them to what was left: the chat's [end: max_tokens] and eval.py's stop reason said so)
    long = [system, {"role": "user", "content": "tell me " + "word " * 30}]
    n = len(render_chat(enc, long, add_generation_prompt=True)[0])
    info = {}
    text, why = gen.chat_reply(la_model(enc, closer=" la"), enc, long, 20, info=info, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert 64 - 20 < n < 64 and (why, info["new_tokens"]) == ("context", 64 - n + 1)  # the last one is never fed back
    assert f"the reply gets {64 - n + 1} tokens at most" in capsys.readouterr().err
    # when what is left holds all max_tokens ask, nothing is said (the reply was not limited)
    long = next(m for w in range(60)
                if len(render_chat(enc, m := [system, {"role": "user", "content": "tell " + "word " * w}],
                                   add_generation_prompt=True)[0]) == 64 - 10 + 1)
    text, why = gen.chat_reply(la_model(enc, closer=" la"), enc, long, 10, info=info, temperature=1.0,
                               generator=torch.Generator().manual_seed(0))
    assert (why, info["new_tokens"], capsys.readouterr().err) == ("max_tokens", 10, "")


def test_a_chat_prompt_ends_with_the_assistants_opening_whatever_the_system_message_leaves(enc, capsys):
    """A system message that left the newest message fewer tokens than <|im_start|>assistant\n was kept whole, and the
    prompt ended inside that opening ("istant\n", "\n"): the model began no assistant turn. It is cut as one that
    fills the context is. (Found by a seeded fuzz loop over chat histories.)"""
    model = tiny_model(enc, block_size=16)  # max_tokens 7: 9 tokens for the prompt
    opening = render_chat(enc, [], add_generation_prompt=True)[0]  # 4 tokens
    user = {"role": "user", "content": "tell me " + "word " * 20}
    for content in ("", "hi", "hi hi", "hi hi hi", "hi hi hi hi"):  # rendered: 5 to 9 tokens, leaving 4 to 0 of the 9
        system = {"role": "system", "content": content}
        ids, dropped, short = gen.chat_prompt(model, enc, [system, user], 7)
        err = capsys.readouterr().err
        assert len(ids) == 9 and ids[-len(opening):] == opening and short and dropped == 0, content
        sys_ids = render_chat(enc, [system])[0]
        if len(sys_ids) + len(opening) <= 9:  # room for the opening: the system message stays whole (the user
            # turn's opening too where it and one token of its text fit, not here)
            assert ids == sys_ids + opening and "keeping the system message and the last 4 of the rest" in err, err
        else:
            assert "its system message alone fills the context: cut too" in err, err


def test_a_message_too_long_for_a_small_context_keeps_its_end_whole_before_its_turns_opening(enc):
    """A message cut to fit keeps its turn's opening (<|im_start|>user\n) only where a token of its text, its
    <|im_end|> and newline fit beside it: in a tight context the opening took their place, the message's end cut from
    its turn."""
    user = {"role": "user", "content": "tell me " + "word " * 20}
    for block_size in range(8, 17):
        ids, _, short = gen.chat_prompt(tiny_model(enc, block_size=block_size), enc, [user], 1, warn=False)
        text = enc.decode(ids)
        assert short and text.endswith("<|im_end|>\n<|im_start|>assistant\n"), (block_size, text)
        assert text.startswith("<|im_start|>user\n") == (block_size >= 11), (block_size, text)


def history_of(enc, n):
    """A user message that renders to n tokens with the assistant's opening."""
    for w in range(80):
        h = [{"role": "user", "content": "tell " + "word " * w}]
        if len(render_chat(enc, h, add_generation_prompt=True)[0]) == n:
            return h
    raise AssertionError(n)


def test_a_chat_prompt_is_short_exactly_when_the_reply_gets_fewer_than_max_tokens(enc, capsys):
    """chat_prompt's short (eval.py counts the prompts "given fewer tokens" by it) at the boundaries: max_tokens 40 in a
    64-token context keeps 32 for the reply, so a conversation of 25 tokens leaves room for exactly 40 (not short), one
    of 26 for 39 (short), and one of 32 fills the prompt's half exactly: fitted whole, short, with no warning of its own
    (max_tokens_for's, said once, covers such turns)."""
    model = tiny_model(enc)  # block_size 64
    for n, short in ((25, False), (26, True), (32, True)):
        h = history_of(enc, n)
        ids, dropped, got = gen.chat_prompt(model, enc, h, 40)
        assert (ids, dropped, got) == (render_chat(enc, h, add_generation_prompt=True)[0], 0, short), n
        assert capsys.readouterr().err == "", n


def test_prompt_file_batch(ckpt, enc, tmp_path, capsys):
    # a text line is the prompt as written: its spaces are tokens too (" The" is another id than "The")
    prompts = ["The cat", "The dog", "A long time ago in a land far away", "Hello", '{"not": json'] + ["  The sun "]
    lines = prompts[:3] + ["", json.dumps({"prompt": prompts[3], "id": 7})] + prompts[4:]
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert gen.read_prompt_file(str(src)) == prompts
    # a byte-order mark (Notepad, Excel) made the first JSON line a text prompt, and hid in a text one
    for first in (json.dumps({"prompt": "The cat"}), "The cat"):
        src.write_text("\ufeff" + "\n".join([first] + lines[1:]) + "\n", encoding="utf-8")
        assert gen.read_prompt_file(str(src)) == prompts
    # a lone surrogate escaped in a JSON line reads as U+FFFD, as tiktoken takes it: written or printed, it failed in a
    # traceback after every prompt was generated
    odd = tmp_path / "surrogate.txt"
    odd.write_text('{"prompt": "\\ud800 x"}\n', encoding="utf-8")
    assert gen.read_prompt_file(str(odd)) == ["\ufffd x"]
    code, out, err = cli([ckpt, "--prompt_file", str(odd), "--output", str(tmp_path / "odd.jsonl"), "--max_tokens", "3"]
                         + CPU, capsys)
    assert code == 0 and json.loads((tmp_path / "odd.jsonl").read_text(encoding="utf-8"))["prompt"] == "\ufffd x", err
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_path = tmp_path / "out.jsonl"
    code, out, err = cli([ckpt, "--prompt_file", str(src), "--output", str(out_path), "--temp", "0",
                          "--max_tokens", "12"] + CPU, capsys)
    assert code == 0 and out == "" and err == f"wrote {out_path}\n", err  # it wrote without a word
    rows = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    assert all(set(r) == {"prompt", "completion", "end"} for r in rows)
    # "The cat", "The dog" and "The sun" share a batch; each row must match its own single run, and say why it ended
    # as that run does (the stop token, max_tokens or context)
    model = tiny_model(enc)
    for r in rows:
        ids, text, end = gen.complete(model, enc, enc.encode(r["prompt"]), 12, stop_tokens=(enc.eot_token,),
                                      temperature=0)
        assert (r["completion"], r["end"]) == (text, end)
    # without --output the JSON lines go to stdout
    code, out, err = cli([ckpt, "--prompt_file", str(src), "--temp", "0", "--max_tokens", "12"] + CPU, capsys)
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == rows


def test_output_dash_is_stdout(ckpt, tmp_path, capsys, monkeypatch):
    """--output - prints the JSON lines, as eval.py --json - does: it wrote a file named "-" and printed nothing."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "prompts.txt"
    src.write_text("The cat\nThe dog\n", encoding="utf-8")
    code, out, err = cli([ckpt, "--prompt_file", str(src), "--output", "-", "--temp", "0", "--max_tokens", "3"] + CPU,
                         capsys)
    assert code == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["The cat", "The dog"]
    assert not (tmp_path / "-").exists() and "wrote" not in err


def test_long_prompt_keeps_its_end(ckpt, enc, tmp_path, capsys):
    prompt = " ".join(f"w{i}" for i in range(200))
    ids = enc.encode(prompt)
    model = tiny_model(enc)
    kept = gen.crop_prompt(model, ids, 100, warn=False)
    assert kept == ids[-32:]  # 64-token window, room for min(100, 64 // 2) = 32 new tokens
    code, out, err = cli([ckpt, "--prompt", prompt, "--max_tokens", "100", "--verbose", "--seed", "0"] + CPU, capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    # the 33 it says can follow, as many as follow (the last token is never fed back: it said 32)
    assert len(warnings) == 2 and "--max_tokens 100 is more than the context holds (64)" in warnings[0]
    assert "keeping its last 32, so 33 can follow" in warnings[1]
    assert "prompt 32 tokens, 33 new tokens" in err and "[end: context]" in out
    # --nonstop slides on past the context: no count of what can follow (it said 33, and 100 followed)
    code, out, err = cli([ckpt, "--prompt", prompt, "--max_tokens", "100", "--nonstop", "--verbose", "--seed", "0"]
                         + CPU, capsys)
    assert code == 0 and "keeping its last 32, then --nonstop slides the context on" in err
    assert "prompt 32 tokens, 100 new tokens" in err, err
    # a --prompt_file line is cropped as --prompt is, its warning naming the line: uncropped, its window was full from
    # the start, and the completion one token long (end "context")
    src = tmp_path / "prompts.txt"
    src.write_text("Hi\n" + prompt + "\n", encoding="utf-8")
    code, out, err = cli([ckpt, "--prompt_file", str(src), "--max_tokens", "10", "--temp", "0"] + CPU, capsys)
    row = json.loads(out.splitlines()[1])
    _, text, end = gen.complete(model, enc, ids[-54:], 10, (enc.eot_token,), temperature=0)  # 64 - 10 kept
    assert code == 0 and (row["completion"], row["end"]) == (text, end) and end != "context", (row, err)
    assert f"warning: prompt 2 is {len(ids)} tokens but the context holds 64: keeping its last 54, so 10 can" in err


def one_error_line(code, err):
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_bad_input_errors(ckpt, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    line = one_error_line(*cli([ckpt, "--prompt_file", str(bad)] + CPU, capsys)[::2])
    assert str(bad) in line and "UTF-8" in line
    # JSON Python will not read (an integer of over 4,300 digits): a traceback before
    (tmp_path / "big.jsonl").write_text('{"prompt": "Hello", "id": ' + "1" * 5000 + "}\n", encoding="utf-8")
    line = one_error_line(*cli([ckpt, "--prompt_file", str(tmp_path / "big.jsonl")] + CPU, capsys)[::2])
    assert "big.jsonl line 1: JSON that cannot be read (ValueError: " in line
    # a JSON prompt line broken in editing (its closing brace lost) was generated from as text, its JSON the prompt
    (tmp_path / "cut.jsonl").write_text('{"prompt": "Hello"}\n{"prompt": "Once", "id": 2\n', encoding="utf-8")
    line = one_error_line(*cli([ckpt, "--prompt_file", str(tmp_path / "cut.jsonl")] + CPU, capsys)[::2])
    assert line == (f'error: {tmp_path / "cut.jsonl"} line 2: a JSON line with a "prompt" field that is not valid JSON '
                    f"(Expecting ',' delimiter at column 27): mend it")
    # its "prompt" not the first field (HumanEval's lines lead with task_id): broken all the same
    (tmp_path / "cut.jsonl").write_text('{"task_id": "HumanEval/0", "prompt": "def f(x):\\n"\n', encoding="utf-8")
    line = one_error_line(*cli([ckpt, "--prompt_file", str(tmp_path / "cut.jsonl")] + CPU, capsys)[::2])
    assert line.startswith(f'error: {tmp_path / "cut.jsonl"} line 1: a JSON line with a "prompt" field that is not '
                           f"valid JSON ("), line
    line = one_error_line(*cli([str(tmp_path / "nope.pt")] + CPU, capsys)[::2])
    assert "nope.pt" in line and "not found" in line
    corrupt = tmp_path / "corrupt.pt"
    # text that torch's legacy (not zip) reader fails on in other ways: KeyError, IndexError
    for junk in (b"not a checkpoint", b"hello\n", b"abestuNR\n", b"qr\n", b"hj\n"):
        corrupt.write_bytes(junk)
        assert "is not a checkpoint" in one_error_line(*cli([str(corrupt)] + CPU, capsys)[::2])
    # no checkpoint given, none in models/: say so, list what is there, say how to get one
    monkeypatch.chdir(tmp_path)
    os.mkdir("models")
    open("models/notes.txt", "w").close()
    open("models/.story.lock", "w").close()  # what a killed train.py leaves: no file of the user's
    line = one_error_line(*cli(CPU, capsys)[::2])
    assert "notes.txt" in line and "train.py" in line and ".story.lock" not in line
    # one folder down is looked in too: make chat-demo writes models/chat-demo/ alone, and "train one" was said
    os.mkdir("models/chat-demo")
    shutil.copy(ckpt, "models/chat-demo/dailydialog_best.pt")
    code, out, err = cli(["--prompt", "Hi", "--max_tokens", "2", "--verbose"] + CPU, capsys)
    assert code == 0 and err.startswith("models/chat-demo/dailydialog_best.pt: "), err
    # and without --verbose the checkpoint picked is named too: the user did not choose it
    code, out, err = cli(["--prompt", "Hi", "--max_tokens", "2"] + CPU, capsys)
    assert code == 0 and err == "using models/chat-demo/dailydialog_best.pt, the newest checkpoint in models/\n", err
    # an option for another kind of run is refused, not ignored, and the line says what to do instead
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once\n")
    for argv, named in (([ckpt, "--prompt", "x", "--batch_size", "4"],
                         "--batch_size is for --prompt_file runs (prompts generated together); for several samples of "
                         "one prompt use --num_samples"),
                        ([ckpt, "--prompt_file", str(prompts), "--num_samples", "3"], "--num_samples is for --prompt "
                         "without --chat, or an unconditional run: a --prompt_file gives one completion per line (a "
                         "repeated line the same one); run it again with another --seed for more"),
                        ([ckpt, "--interactive", "--num_samples", "2"], "--num_samples is for --prompt without --chat, "
                         "or an unconditional run: --interactive gives one completion per line; run it again"),
                        # (it said "is for --prompt" to a run that gave one)
                        ([ckpt, "--chat", "--prompt", "hi", "--num_samples", "2"], "--num_samples is for --prompt "
                         "without --chat, or an unconditional run: --chat gives one reply per message; run it again "
                         "with another --seed for more"),
                        ([ckpt, "--chat", "--prompt", " "], "--chat --prompt gives one user message, and this one is "
                         "empty: write the message, or leave --prompt out to chat in the terminal"),
                        ([ckpt, "--chat", "--interactive"],
                         "--chat and --interactive are two ways to read the terminal (chat turns, or text to "
                         "continue): pick one"),
                        ([ckpt, "--chat", "--prompt_file", str(prompts)],
                         "--chat reads its messages from the terminal (or --prompt); --prompt_file is for text "
                         "completion"),
                        ([ckpt, "--prompt", "x", "--output", str(tmp_path / "o.txt")],
                         "--output is for --prompt_file runs; redirect stdout to save other output"),
                        ([ckpt, "--interactive", "--prompt", "x"],
                         "--interactive reads its prompts from the terminal; drop --prompt/--prompt_file, or "
                         "--interactive"),
                        ([ckpt, "--prompt", "x", "--system", "Be brief."], "--system sets the system message of a "
                                                                           "--chat session; add --chat"),
                        # bytes the locale could not decode: Python keeps them as lone surrogates, which stdout refuses
                        ([ckpt, "--prompt", "ab\udcffcd"], "--prompt is not UTF-8 text"),
                        ([ckpt, "--chat", "--system", "\udcff"], "--system is not UTF-8 text")):
        assert named in one_error_line(*cli(argv + CPU, capsys)[::2])
    # sampling settings out of range: argparse's usage and one error line naming the option
    # (an infinite --temp was taken, and serve.py's /v1/models and eval.py's --json then wrote Infinity: not JSON)
    for flag, value in (("--top_p", "1.5"), ("--top_p", "0"), ("--temp", "-1"), ("--temp", "inf"), ("--top_k", "-1"),
                        ("--max_tokens", "0"), ("--repetition_penalty", "inf")):
        with pytest.raises(SystemExit) as e:
            gen.parse_args([ckpt, flag, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"error: argument {flag}" in err.splitlines()[-1]


def test_unusable_prompt_file_or_output_is_refused_before_the_model_loads(ckpt, tmp_path, capsys, monkeypatch):
    # a folder, or a path through a file: one line naming the file, before any generation (not after it)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi\n", encoding="utf-8")
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(gen, "load_model", lambda *a, **k: pytest.fail("the model loaded before its input was checked"))
    line = one_error_line(*cli([ckpt, "--prompt_file", str(tmp_path)] + CPU, capsys)[::2])
    assert line == f"error: --prompt_file {tmp_path} is a folder: give a file's path"
    # a path mistyped, a JSON line of another field (a dataset's "text"), a file of blank lines
    (tmp_path / "text.jsonl").write_text('{"text": "Hi"}\n', encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    for name, want in (("nope.txt", "--prompt_file {}: no such file"),
                       ("text.jsonl", '{} line 1: a JSON line needs a "prompt" text field'),
                       ("blank.txt", '--prompt_file {} holds no prompts (one per line, or JSON lines with a "prompt" '
                                     'field)')):
        src = tmp_path / name
        assert one_error_line(*cli([ckpt, "--prompt_file", str(src)] + CPU, capsys)[::2]) == \
            "error: " + want.format(src)
    for out, words in ((tmp_path, "is a folder"), (tmp_path / "file" / "out.jsonl", "a part of the path is a file"),
                       # the prompts themselves: they were replaced by the completions
                       (prompts, "is the --prompt_file it reads: the result would replace it; give another --output"),
                       (ckpt, "is the checkpoint it reads")):
        line = one_error_line(*cli([ckpt, "--prompt_file", str(prompts), "--output", str(out)] + CPU, capsys)[::2])
        assert line.startswith(f"error: --output {out}") and words in line, line
    assert prompts.read_text(encoding="utf-8") == "Hi\n"


def test_broken_weights_or_config_are_one_line(enc, tmp_path, capsys, monkeypatch):
    # NaN weights (a diverged run) used to end in torch.multinomial's RuntimeError, a config value of the wrong
    # type in GPTConfig's ValueError: both are refused as the checkpoint loads
    model = tiny_model(enc)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    nan = str(tmp_path / "nan.pt")
    save_checkpoint(nan, model, enc)
    for temp in ("1", "0"):  # greedy decoding did not fail: it repeated one token
        line = one_error_line(*cli([nan, "--prompt", "Hi", "--temp", temp] + CPU, capsys)[::2])
        assert line == (f"error: {nan} holds weights that are not finite (1 tensor(s) with nan or inf, "
                        "transformer.h.1.mlp.c_fc.weight first): its run diverged; use an earlier checkpoint, and a "
                        "lower --lr")
    ckpt = torch.load(nan, weights_only=True)
    ckpt["model"] = tiny_model(enc).state_dict()  # finite again
    ckpt["config"]["n_layer"] = "two"
    torch.save(ckpt, str(tmp_path / "two.pt"))
    line = one_error_line(*cli([str(tmp_path / "two.pt"), "--prompt", "Hi"] + CPU, capsys)[::2])
    assert line == (f"error: {tmp_path / 'two.pt'} does not match this model code (its config: n_layer must be a "
                    "positive int, got 'two'): a damaged checkpoint, or one from another version of the code; use "
                    "another one")
    # edited in ways that ended in tracebacks: a tokenizer with more ids than the model (an IndexError in the
    # embedding; serve.py answered 500 to every request), a vocabulary that is no text, a context of 10**9 (the RoPE
    # table's allocation failed)
    ckpt["config"]["n_layer"] = 2
    small = GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=512))
    monkeypatch.setattr(serve, "ApiServer", lambda *a: pytest.fail("serve.py served a model that cannot generate"))
    for what, edit, words in (
            ("gpt2", lambda c: c.update(model=small.state_dict(), config=small.config.__dict__),
             "the model has 512 token ids but its tokenizer 50259: a damaged or edited checkpoint; use another one"),
            ("bpe", lambda c: c["tokenizer"].update(bpe=12345), "is a damaged checkpoint"),
            # text, but no vocabulary: it was "gpt2 is not a .tiktoken vocabulary ...: pass a file written by ..."
            ("bpe-text", lambda c: c["tokenizer"].update(bpe="no vocabulary\n"),
             "bpe-text.pt is a damaged checkpoint (the vocabulary it stores does not read as a .tiktoken vocabulary); "
             "use another checkpoint (its _best.pt or an earlier one)"),
            ("ctx", lambda c: c["config"].update(block_size=10**12),  # past any machine's memory
             "its model (context 1000000000000, 2 layers x 64) does not fit in memory"),
            # another version's: a config field this code lacks, a weight it has and the file lacks (load_state_dict
            # would take such a file without strict, the weight left as initialized)
            ("newer", lambda c: c["config"].update(n_kv_head=1), "newer.pt does not match this model code (its config: "
             "GPTConfig.__init__() got an unexpected keyword argument 'n_kv_head'): a damaged checkpoint, or one"),
            ("older", lambda c: c["model"].pop("transformer.ln_f.weight"), "older.pt does not match this model code "
             "(Missing key(s) in state_dict: \"transformer.ln_f.weight\"")):
        edited = copy.deepcopy(ckpt)
        edit(edited)
        torch.save(edited, str(tmp_path / f"{what}.pt"))
        for main, argv in ((gen.main, ["--prompt", "Hi"]), (serve.main, ["--port", "0"])):
            line = one_error_line(*run_cli(main, [str(tmp_path / f"{what}.pt"), *argv, *CPU], capsys)[::2])
            assert words in line, (what, main, line)
    with pytest.raises(UserError, match=r"bpe-text\.pt is a damaged checkpoint \(the vocabulary it stores"):
        get_tokenizer(str(tmp_path / "bpe-text.pt"))  # (prepare.py --tokenizer)


def test_a_checkpoint_edited_into_other_weights_or_ids_is_refused(tmp_path, capsys):
    # edits that passed every check and loaded without a word (a fuzz of damaged checkpoints): two tokens' ranks swapped
    # in the stored vocabulary (as many ids as before: gen.py encoded prompts, and export.py wrote a tokenizer, with
    # the wrong ids), a weight saved as bool (copied in as 0s and 1s), a custom vocabulary's text gone (said as
    # "tokenizer 'custom-...' not found: use 'gpt2' or the path of a .tiktoken file", as if the user had named one)
    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 200)
    custom = train_tokenizer([str(tmp_path / "text.txt")], 300, str(tmp_path / "tok.tiktoken"))
    good = str(tmp_path / "good.pt")
    save_checkpoint(good, tiny_model(custom), custom)
    assert cli([good, "--prompt", "the", "--max_tokens", "2", "--seed", "1"] + CPU, capsys)[0] == 0

    def swap_ranks(c):
        lines = c["tokenizer"]["bpe"].splitlines()
        (a, i), (b, j) = lines[97].split(), lines[98].split()  # (the bytes a and b)
        lines[97], lines[98] = f"{a} {j}", f"{b} {i}"
        c["tokenizer"]["bpe"] = "\n".join(lines) + "\n"
    for what, edit, words in (
            ("ranks", swap_ranks, "is a damaged checkpoint (its vocabulary hashes to "),
            ("bool", lambda c: c["model"].update({k: v.bool() for k, v in c["model"].items() if "ln_f" in k}),
             "is a damaged checkpoint (its model, config or tokenizer entry is not what train.py writes)"),
            ("text", lambda c: c["tokenizer"].update(bpe=None),
             "is a damaged checkpoint (its model, config or tokenizer entry is not what train.py writes)"),
            # entries of another type altogether: an AttributeError traceback, "does not match this model code"
            ("model", lambda c: c.update(model=list(c["model"].values())),
             "is a damaged checkpoint (its model, config or tokenizer entry is not what train.py writes)"),
            ("config", lambda c: c.update(config=list(c["config"].items())),
             "is a damaged checkpoint (its model, config or tokenizer entry is not what train.py writes)")):
        edited = torch.load(good, weights_only=True)
        edit(edited)
        torch.save(edited, str(tmp_path / f"{what}.pt"))
        line = one_error_line(*cli([str(tmp_path / f"{what}.pt"), "--prompt", "the"] + CPU, capsys)[::2])
        assert words in line and line.endswith("use another checkpoint (its _best.pt or an earlier one)"), (what, line)
    # a vocabulary of another size than the model's ids (GPT-2's named in a model of a custom one: it passes the hash
    # check, GPT-2's being named, not stored): ids past the embedding would be an IndexError at the first such token
    edited = torch.load(good, weights_only=True)
    edited["tokenizer"] = {"name": "gpt2", "bpe": None}
    torch.save(edited, str(tmp_path / "ids.pt"))
    assert one_error_line(*cli([str(tmp_path / "ids.pt"), "--prompt", "the"] + CPU, capsys)[::2]) == (
        f"error: {tmp_path / 'ids.pt'}: the model has {custom.n_vocab} token ids but its tokenizer 50259: a damaged or "
        f"edited checkpoint; use another one")


def test_weights_that_overflow_as_the_model_runs_are_one_line(enc, tmp_path, capsys, monkeypatch):
    # finite weights pass the load's check, but scores that overflow to nan ended sampling in torch.multinomial's
    # traceback, and greedy decoding printed token 0 ("!") again and again, with exit status 0
    model = tiny_model(enc)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(3e38)
    path = str(tmp_path / "huge.pt")
    save_checkpoint(path, model, enc)
    for temp in ("1", "0"):
        code, out, err = cli([path, "--prompt", "Hi", "--temp", temp, "--max_tokens", "8"] + CPU, capsys)
        assert one_error_line(code, err) == (
            "error: the model's scores for new token 1 are not finite (nan or inf): its activations overflow in "
            "float32: its weights are finite but too large (a run that diverged?): an earlier checkpoint may not be")
        # (the prompt, echoed before generation began, then its line ended: on a terminal "Hierror: ..." was one line)
        assert out == "Hi\n"
    monkeypatch.setattr(gen, "slow_on_this_cpu", lambda *a: None)  # (a CPU without bf16 warns of it first)
    code, _, err = cli([path, "--prompt", "Hi", "--max_tokens", "8", "--device", "cpu", "--dtype", "bfloat16"], capsys)
    assert one_error_line(code, err).endswith("overflow in bfloat16: try --dtype float32")


def test_float16_on_a_cpu_is_warned_of_as_train_py_does(ckpt, capsys):
    # emulated there, many times slower than float32 (a recipe's --dtype float16, made for a GPU): train.py said so,
    # gen.py ran slowly without a word
    code, _, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", "2", "--device", "cpu", "--dtype", "float16"], capsys)
    assert code == 0 and "warning: --dtype float16 is emulated on this CPU, slower than float32" in err, err
    code, _, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", "2"] + CPU, capsys)
    assert code == 0 and "emulated" not in err, err


def test_missing_checkpoint_cli(tmp_path):
    # the real interpreter: exit code 1 and a single line on stderr, no traceback
    r = subprocess.run([sys.executable, GEN, "--device", "cpu"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: no checkpoint given")


def test_a_character_cut_off_by_the_stop_token_is_not_shown(enc, monkeypatch):
    """A reply whose last token is half of a character before <|im_end|> ends there, in gen.py as in serve.py; one
    cut off by max_tokens shows as U+FFFD (complete's text, what the model wrote whole, leaves it out)."""
    half = enc.encode_single_token(bytes([0xC3]))  # the first byte of "é"
    end = enc.encode_single_token(IM_END)
    for tail, want in (([half, end], "Hi"), ([half], "Hi\ufffd")):
        monkeypatch.setattr(gen, "sample_steps",
                            lambda *a, tail=tail, **k: iter([[t] for t in enc.encode("Hi") + tail]))
        shown = []
        ids, text, why = gen.complete(None, enc, [0], 4, (end,), on_text=shown.append)
        assert "".join(shown) == want and text == "Hi", tail
        assert gen.complete_batch(None, enc, [[0]], 4, (end,))[0][0] == want, tail  # gen.py --prompt_file


def test_a_chat_reply_cut_mid_character_keeps_what_the_model_wrote(ckpt, enc, capsys, monkeypatch):
    """A reply cut off by --max_tokens inside a character shows a U+FFFD, but the history keeps the text the model
    wrote: the next turn's prompt re-encoded the U+FFFD, three tokens the model never wrote."""
    half = enc.encode_single_token(bytes([0xC3]))  # the first byte of "é"
    prompts = []

    def steps(model, rows, *a, **k):
        prompts.append(rows[0])
        return iter([[t] for t in enc.encode("Hi") + [half]])
    monkeypatch.setattr(gen, "sample_steps", steps)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nagain\n"))
    code, out, err = cli([ckpt, "--chat", "--max_tokens", "2"] + CPU, capsys)
    assert code == 0 and out == "Hi\ufffd\nHi\ufffd\n", (out, err)
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi"},
               {"role": "user", "content": "again"}]
    assert prompts[1] == render_chat(enc, history, add_generation_prompt=True)[0]


def test_ctrl_c_keeps_the_text_so_far(enc):
    # Ctrl-C arrives while the reply streams: the pieces already shown are kept, and the autocast
    # region around generation is closed again
    model = tiny_model(enc)
    shown = []

    def show(piece):
        shown.append(piece)
        if len(shown) == 3:
            raise KeyboardInterrupt

    ids, text, why = gen.complete(model, enc, enc.encode("Hi"), 50, on_text=show, dtype=torch.bfloat16, temperature=1.0,
                                  generator=torch.Generator().manual_seed(0))
    assert why == "interrupted" and text == "".join(shown) and len(ids) >= 3
    assert not torch.is_autocast_enabled("cpu")


def tiny_of_vocab(vocab_size):
    torch.manual_seed(0)
    return GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=32, vocab_size=vocab_size,
                           variant="gpt2")).eval()


def test_the_newest_checkpoint_comes_first(tmp_path, enc):
    models = tmp_path / "models"
    models.mkdir()
    for i, name in enumerate(("new.pt", "mid.pt", "old.pt")):
        (models / name).write_bytes(b"x")
        os.utime(models / name, (1000 - i * 100, 1000 - i * 100))
    assert find_checkpoints(str(models)) == [str(models / n) for n in ("new.pt", "mid.pt", "old.pt")]
    assert gen.default_checkpoint(str(models)) == str(models / "new.pt")
    # one removed between the listing and the look at its time (a train.py --overwrite): left out, not a traceback
    getmtime = os.path.getmtime

    def gone(path):
        if path.endswith("mid.pt"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return getmtime(path)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os.path, "getmtime", gone)
        assert find_checkpoints(str(models)) == [str(models / n) for n in ("new.pt", "old.pt")]


def test_a_model_with_more_ids_than_its_tokenizer_is_refused(tmp_path, enc):
    path = str(tmp_path / "big.pt")
    save_checkpoint(path, tiny_of_vocab(enc.n_vocab + 100), enc)
    with pytest.raises(UserError, match=rf"^{re.escape(path)}: the model has {enc.n_vocab + 100} token ids but its "
                                        rf"tokenizer {enc.n_vocab}: a damaged or edited checkpoint; use another one$"):
        load_model(path)


@pytest.mark.skipif(sys.platform == "win32", reason="FIONREAD on a pipe is POSIX's")
def test_text_piped_to_a_plain_run_is_said_to_be_unread(ckpt, capsys, monkeypatch):
    """`echo "Once upon a time" | gen.py` meant the text as the prompt and got an unconditional sample, the text
    unread, without a word: a note names --interactive and --chat. A pipe left empty (a script's) and a --prompt's run
    say nothing."""
    note = "note: gen.py reads no prompt from stdin unless --interactive (each line a prompt to continue) or --chat"
    for written, argv, said in ((b"Once upon a time\n", [], True), (b"Once upon a time\n", ["--prompt", "Hi"], False),
                                (b"", None, False)):
        read_end, write_end = os.pipe()
        os.write(write_end, written)
        with open(read_end) as stdin, open(write_end, "wb"):  # (the writer still open: an empty pipe is not at its end)
            monkeypatch.setattr(sys, "stdin", stdin)
            if argv is None:  # (the question the note hangs on, without loading the model once more)
                assert gen.text_waiting_on_stdin() is said
                continue
            code, _, err = cli([ckpt, "--max_tokens", "3", "--seed", "1"] + argv + CPU, capsys)
        assert code == 0 and (note in err) == said, (argv, err)


def test_an_unconditional_sample_and_a_prompt_spelling_a_special_token(ckpt, enc, capsys):
    """gen.py without --prompt samples unconditionally (from <|endoftext|>, where every document starts), and a prompt
    may spell <|endoftext|> to mark a document start: both are runs, not errors."""
    code, out, err = cli([ckpt, "--max_tokens", "3", "--seed", "0", "--verbose"] + CPU, capsys)
    assert code == 0 and "prompt 1 tokens, 3 new tokens" in err, err
    # that token is <|endoftext|>: the sample is the one a prompt of it alone gives
    run = [ckpt, "--max_tokens", "8", "--seed", "0"] + CPU
    assert "<|endoftext|>" + cli(run, capsys)[1] == cli(run + ["--prompt", "<|endoftext|>"], capsys)[1]
    code, out, err = cli([ckpt, "--prompt", "<|endoftext|>Once", "--max_tokens", "3", "--seed", "0", "--verbose"] + CPU,
                         capsys)
    assert code == 0 and out.startswith("<|endoftext|>Once"), err
    assert f"prompt {len(enc.encode('<|endoftext|>Once', allowed_special='all'))} tokens" in err


def test_a_prompt_that_just_fits_is_kept_whole_without_a_warning(enc, capsys):
    model = tiny_model(enc)  # a 64-token window: a prompt of 32 leaves room for min(100, 64 // 2) = 32 new tokens
    ids = enc.encode(" ".join(f"w{i}" for i in range(200)))
    assert gen.crop_prompt(model, ids[:32], 100) == ids[:32]
    assert capsys.readouterr().err == ""
    assert gen.crop_prompt(model, ids[:33], 100) == ids[1:33]
    assert "keeping its last 32" in capsys.readouterr().err


def test_a_batch_row_ends_at_its_own_stop_token(enc):
    """--prompt_file generates prompts of one length together until every row has stopped: a row that stopped earlier
    ends there, and what the others generate after that is no part of its completion."""
    model = la_model(enc, closer="<|endoftext|>")  # ' la' or <|endoftext|>, each with p = 1/2
    prompts = [enc.encode(f"Story {i}") for i in range(8)]  # all of one length: one batch
    assert len({len(p) for p in prompts}) == 1
    torch.manual_seed(0)
    results = gen.complete_batch(model, enc, prompts, 40, (enc.eot_token,), temperature=1.0,
                                 generator=torch.Generator().manual_seed(0))
    assert all(why == "<|endoftext|>" and set(text.split()) <= {"la"} for text, why in results), results
    assert len({text for text, _ in results}) > 1  # (the rows did stop at different steps)


def test_a_prompt_file_completion_is_what_the_prompt_gives_alone(enc):
    """gen.py --prompt_file --seed S: each prompt's completion is what --prompt with --seed S gives, whatever
    --batch_size and whatever other prompts the file holds (one shared generator made every completion depend on
    the lines before it)."""
    from common import seeded_generator
    model = la_model(enc, closer="<|endoftext|>")  # ' la' or <|endoftext|>, p = 1/2 each, whatever the prompt
    prompts = [enc.encode(f"Story {i}") for i in range(8)] + [enc.encode("A")]  # two lengths, two groups
    eot = (enc.eot_token,)
    _, text, why = gen.complete(model, enc, prompts[0], 40, eot, temperature=1.0, generator=seeded_generator("cpu", 7))
    for batch_size in (1, 3, 8):
        results = gen.complete_batch(model, enc, prompts, 40, eot, batch_size=batch_size, seed=7, temperature=1.0)
        assert results == [(text, why)] * len(prompts), batch_size
    other = gen.complete_batch(model, enc, prompts, 40, eot, seed=8, temperature=1.0)
    assert {t for t, _ in other} != {text}  # (the seed does matter: 1/2**k that it would not)
    with pytest.raises(ValueError, match="2 generators for 1 rows"):
        list(model.generate(torch.tensor([prompts[0]]), 4, generator=[seeded_generator("cpu", 1)] * 2))


def test_a_prompt_file_with_a_seed_completes_each_line_as_prompt_does(ckpt, tmp_path, capsys):
    # gen.py --prompt_file F --seed S: each line's completion is what --prompt LINE --seed S prints, whatever the lines
    # beside it in the file (the seed must reach the batch: one shared generator made them depend on each other)
    prompts = ["The cat", "The dog", "The sun"]  # one length: one batch
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    opts = ["--seed", "5", "--temp", "1", "--max_tokens", "8"] + CPU
    code, out, err = cli([ckpt, "--prompt_file", str(src)] + opts, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        code, alone, err = cli([ckpt, "--prompt", r["prompt"]] + opts, capsys)
        assert code == 0 and alone == r["prompt"] + r["completion"] + "\n", (alone, r)


def test_num_samples_with_a_prompt_file_points_to_another_seed(ckpt, tmp_path, capsys):
    # a line repeated in a --prompt_file gets the very completion of its first copy (each row samples from --seed, as
    # --prompt alone does), so the error's "repeat a line for more" gave no more samples: another --seed does
    src = tmp_path / "prompts.txt"
    src.write_text("Once\nOnce\n", encoding="utf-8")
    code, out, err = cli([ckpt, "--prompt_file", str(src), "--seed", "3", "--temp", "1", "--max_tokens", "8"] + CPU,
                         capsys)
    first, second = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and first == second, err
    line = one_error_line(*cli([ckpt, "--prompt_file", str(src), "--num_samples", "3"] + CPU, capsys)[::2])
    assert "repeat a line" not in line and "another --seed" in line, line


def test_sampling_options_take_what_their_help_says(ckpt):
    # --top_p is in (0, 1]: 1 is every token (nucleus sampling off); a --repetition_penalty of 0 or less is refused
    assert gen.parse_args([ckpt, "--top_p", "1"]).top_p == 1.0
    assert gen.parse_args([ckpt, "--repetition_penalty", "1.3"]).repetition_penalty == 1.3
    assert gen.parse_args([ckpt, "--repetition_penalty", "0.5"]).repetition_penalty == 0.5  # < 1 favours repeats
    for value in ("0", "-1"):
        with pytest.raises(SystemExit):
            gen.parse_args([ckpt, "--repetition_penalty", value])
    args = gen.parse_args([ckpt])
    assert (args.temp, args.top_k, args.top_p, args.repetition_penalty) == (0.8, 200, None, 1.0)


def test_top_k_zero_is_no_limit(ckpt, capsys):
    # as a request's top_k of 0 in serve.py's API (and Hugging Face's): every token, not an error, so --top_p can
    # take its set among all of them; eval.py and serve.py read --top_k with the same function
    assert gen.parse_args([ckpt, "--top_k", "0"]).top_k is None
    code, out, err = cli([ckpt, "--prompt", "Hi", "--top_k", "0", "--max_tokens", "4", "--seed", "1"] + CPU, capsys)
    assert code == 0 and out.startswith("Hi"), err


def test_max_tokens_defaults_to_256(enc, tmp_path, capsys):
    path = str(tmp_path / "long.pt")
    save_checkpoint(path, la_model(enc, closer=" la", block_size=512), enc)  # ' la' forever, in a 512-token window
    code, out, err = cli([path, "--prompt", "Hi", "--verbose", "--seed", "0"] + CPU, capsys)
    assert code == 0 and "[end: max_tokens]" in out and "prompt 1 tokens, 256 new tokens" in err, err


def test_nonstop_runs_past_endoftext(enc, tmp_path, capsys):
    """--nonstop generates until --max_tokens: a story model's <|endoftext|> starts the next story, it does not end."""
    path = str(tmp_path / "eot.pt")
    save_checkpoint(path, la_model(enc, closer="<|endoftext|>"), enc)  # <|endoftext|> with p = 1/2 each step
    code, out, err = cli([path, "--prompt", "Hi", "--max_tokens", "20", "--temp", "1", "--verbose", "--seed", "0"]
                         + CPU, capsys)
    assert code == 0 and "[end: <|endoftext|>]" in out  # (without --nonstop it ends there)
    code, out, err = cli([path, "--prompt", "Hi", "--max_tokens", "20", "--temp", "1", "--nonstop", "--verbose",
                          "--seed", "0"] + CPU, capsys)
    assert code == 0 and "[end: max_tokens]" in out and "prompt 1 tokens, 20 new tokens" in err, err


def test_nonstop_without_max_tokens_runs_until_ctrl_c(enc, tmp_path, capsys, monkeypatch):
    """gen.py --nonstop (README: "generate until --max_tokens (default: no limit) or Ctrl-C"): not the 256 tokens of a
    completion without it. Ctrl-C comes here after 300 tokens, past four slides of the 64-token window."""
    path = str(tmp_path / "la.pt")
    save_checkpoint(path, la_model(enc, closer=" la"), enc)  # ' la' forever
    real = gen.sample_steps

    def ctrl_c_at_300(*a, **k):
        for n, step in enumerate(real(*a, **k)):
            if n == 300:
                raise KeyboardInterrupt
            yield step
    monkeypatch.setattr(gen, "sample_steps", ctrl_c_at_300)
    code, out, err = cli([path, "--prompt", "Hi", "--nonstop", "--verbose", "--seed", "0"] + CPU, capsys)
    assert code == 0 and "[end: interrupted]" in out and "prompt 1 tokens, 300 new tokens" in err, (out[-200:], err)


def test_chat_reset_keeps_the_system_message(la_ckpt, enc, capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nhi\n"))
    code, out, err = cli([la_ckpt, "--chat", "--system", "be brief", "--verbose", "--seed", "1", "--temp", "1",
                          "--max_tokens", "20"] + CPU, capsys)
    assert code == 0 and out.count("[end: ") == 2
    # after /reset the second turn is a first turn again, under the same system message
    system = {"role": "system", "content": "be brief"}
    first = len(render_chat(enc, [system, {"role": "user", "content": "hello"}], add_generation_prompt=True)[0])
    second = len(render_chat(enc, [system, {"role": "user", "content": "hi"}], add_generation_prompt=True)[0])
    assert [int(n) for n in re.findall(r"prompt (\d+) tokens", err)] == [first, second]


def test_chat_commands_typed_in_full_width_are_commands(la_ckpt, enc, capsys, monkeypatch):
    """A Chinese or Japanese input method left on types ／ｒｅｓｅｔ for /reset: it went to the model as a message, and
    ／ｅｘｉｔ did not quit. They are the commands, and ／ｈｅｌｐ is told them."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n／ｒｅｓｅｔ\nhi\n／ｈｅｌｐ\n／ｅｘｉｔ\nnever read\n"))
    code, out, err = cli([la_ckpt, "--chat", "--verbose", "--seed", "1", "--max_tokens", "4"] + CPU, capsys)
    assert code == 0 and out.count("[end: ") == 2 and f"(／ｈｅｌｐ is not a command: {gen.CHAT_HELP})" in err, err
    lengths = [len(render_chat(enc, [{"role": "user", "content": m}], add_generation_prompt=True)[0])
               for m in ("hello", "hi")]
    assert [int(n) for n in re.findall(r"prompt (\d+) tokens", err)] == lengths, err


def test_chat_commands_are_told_and_a_mistyped_one_is_not_a_message(la_ckpt, enc, capsys, monkeypatch):
    # /help, /quit, /bye went to the model as messages, each with a reply; they are told the commands instead. A message
    # that merely starts with a slash is a message, and one with spaces around it (a pasted block's last newline) is
    # the stripped text the training sets' turns are
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help\n/quit\n/?\n/usr/bin is a folder\n  hello  \n"))
    code, out, err = cli([la_ckpt, "--chat", "--verbose", "--seed", "1", "--max_tokens", "4"] + CPU, capsys)
    assert code == 0 and out.count("[end: ") == 2, out
    assert all(f"({c} is not a command: {gen.CHAT_HELP})" in err for c in ("/help", "/quit", "/?")), err
    first = [{"role": "user", "content": "/usr/bin is a folder"}]
    assert [int(n) for n in re.findall(r"prompt (\d+) tokens", err)][0] == \
        len(render_chat(enc, first, add_generation_prompt=True)[0]), err
    monkeypatch.setattr(sys, "stdin", io.StringIO("  hello  \n"))
    code, out, err = cli([la_ckpt, "--chat", "--verbose", "--seed", "1", "--max_tokens", "4"] + CPU, capsys)
    assert code == 0 and re.findall(r"prompt (\d+) tokens", err) == \
        [str(len(render_chat(enc, [{"role": "user", "content": "hello"}], add_generation_prompt=True)[0]))], err
    # a terminal session starts by naming the commands (a bare "> " told no one how to leave or start over)
    type_at_terminal(monkeypatch, [EOFError])
    code, out, err = cli([la_ckpt, "--chat", "--max_tokens", "2"] + CPU, capsys)
    assert code == 0 and f"({gen.CHAT_HELP})" in err and "/reset" in gen.CHAT_HELP and "/exit" in gen.CHAT_HELP, err


def test_num_samples_and_interactive_prompts_on_the_command_line(ckpt, capsys, monkeypatch):
    # --num_samples N: N completions of the prompt, each with its [end: ...] marker, between separator lines
    code, out, err = cli([ckpt, "--prompt", "Hi", "--num_samples", "3", "--max_tokens", "2", "--verbose", "--seed", "0"]
                         + CPU, capsys)
    assert code == 0 and out.count("[end: max_tokens]") == 3 and out.count("-" * 40 + "\n") == 2, out
    # Ctrl-C in the first of them ends the run there, not that sample alone
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt
        yield
    with monkeypatch.context() as m:
        m.setattr(gen, "sample_steps", interrupted)
        code, out, err = cli([ckpt, "--prompt", "Hi", "--num_samples", "3", "--max_tokens", "2", "--verbose"] + CPU,
                             capsys)
    assert (code, len(calls), out.count("[end: "), out.count("-" * 40)) == (0, 1, 1, 0), (code, out)
    # --interactive with stdin piped: each line is echoed, then continued (the transcript shows what was continued)
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once\n\nThe end\n"))
    code, out, err = cli([ckpt, "--interactive", "--max_tokens", "2", "--verbose", "--seed", "0"] + CPU, capsys)
    replies = out.split("[end: max_tokens]\n")
    assert code == 0 and len(replies) == 3 and replies[-1] == "", out
    assert replies[0].startswith("Once") and replies[1].startswith("The end"), out


def test_piped_lines_with_windows_line_ends_are_the_lines(ckpt):
    # a prompt file with \r\n line ends piped into --interactive: each prompt was continued from "Once\r", a \r a
    # --prompt_file never keeps (and the echo's \r sent a terminal's cursor back over it)
    r = subprocess.run([sys.executable, GEN, ckpt, "--interactive", "--verbose", "--seed", "0", "--max_tokens", "2"]
                       + CPU, input=b"Once\r\nThe end\r\n", capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count(b"[end: ") == 2 and b"\r" not in r.stdout, (r.stdout, r.stderr[-2000:])
    assert r.stdout.startswith(b"Once") and b"\nThe end" in r.stdout, r.stdout


def test_a_byte_order_mark_opening_piped_input_is_no_part_of_the_first_line(ckpt, capsys, monkeypatch):
    # a file saved by Notepad, piped into --interactive (or --chat): its BOM was echoed and continued as the first
    # prompt's first character, where a --prompt_file drops it
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ufeffOnce\n\ufeffThe end\n"))
    code, out, err = cli([ckpt, "--interactive", "--max_tokens", "2", "--verbose", "--seed", "0"] + CPU, capsys)
    replies = out.split("[end: max_tokens]\n")
    assert code == 0 and replies[0].startswith("Once"), out
    assert replies[1].startswith("\ufeffThe end"), out  # (only the input's first: inside a text it is a character)


def test_top_k_and_top_p_reach_the_sampler(ckpt, capsys):
    # a nucleus this small holds the most likely token alone, as --top_k 1 does: sampling at temperature 1 is then
    # greedy decoding
    greedy = cli([ckpt, "--prompt", "Hi", "--max_tokens", "12", "--temp", "0"] + CPU, capsys)
    for seed in ("0", "1"):
        for option in (["--top_p", "1e-6"], ["--top_k", "1"]):
            assert cli([ckpt, "--prompt", "Hi", "--max_tokens", "12", "--temp", "1", *option, "--seed", seed] + CPU,
                       capsys) == greedy, option
    assert cli([ckpt, "--prompt", "Hi", "--max_tokens", "12", "--temp", "1", "--seed", "0"] + CPU, capsys) != greedy


def test_the_command_line_generates_through_the_kv_cache_unless_told_not_to(ckpt, capsys, monkeypatch):
    """gen.py decodes with the KV cache (a forward of one new token a step), --no_cache without, the same text."""
    caches = []
    new_cache = GPT.new_cache
    monkeypatch.setattr(GPT, "new_cache", lambda self, *a, **k: caches.append(1) or new_cache(self, *a, **k))
    argv = [ckpt, "--prompt", "Hi", "--max_tokens", "8", "--temp", "0"] + CPU
    cached = cli(argv, capsys)
    assert cached[0] == 0 and caches
    caches.clear()
    assert cli(argv + ["--no_cache"], capsys) == cached and not caches


def test_generation_runs_in_the_dtype_asked_for(ckpt, capsys, monkeypatch):
    """--dtype bfloat16 decodes under bf16 autocast, its KV cache in bf16 too (half the memory); --dtype float32 in
    float32. With sample_steps' autocast gone, every test passed: the text came out, in float32, without a word."""
    dtypes = []
    new_cache = GPT.new_cache
    monkeypatch.setattr(GPT, "new_cache", lambda self, *a, **k: dtypes.append(new_cache(self, *a, **k)) or dtypes[-1])
    monkeypatch.setattr(gen, "slow_on_this_cpu", lambda *a: None)  # (a CPU without bf16 warns of it first)
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        code, out, err = cli([ckpt, "--prompt", "Hi", "--max_tokens", "4", "--device", "cpu", "--dtype", name], capsys)
        assert code == 0 and out.startswith("Hi"), err
        assert [c.k.dtype for c in dtypes] == [dtype], name
        dtypes.clear()


def test_repetition_penalty_reaches_the_sampler(ckpt, enc, capsys):
    # greedy decoding of a random model soon repeats itself: a penalty samples what gen.complete does with it
    argv = [ckpt, "--prompt", "Hi", "--max_tokens", "20", "--temp", "0"] + CPU
    plain = cli(argv, capsys)
    code, out, err = cli(argv + ["--repetition_penalty", "5"], capsys)
    _, want, _ = gen.complete(tiny_model(enc), enc, enc.encode("Hi"), 20, stop_tokens=(enc.eot_token,), temperature=0,
                              repetition_penalty=5.0)
    assert code == 0 and out == "Hi" + want + "\n" != plain[1], err


def test_nonstop_is_refused_with_a_prompt_file_or_chat(ckpt, tmp_path, capsys):
    # a chat reply ends at its turn's end, within the context: sliding it on would cut the history from under it
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once\n", encoding="utf-8")
    for mode in (["--prompt_file", str(prompts)], ["--chat", "--prompt", "hello"]):
        line = one_error_line(*cli([ckpt, *mode, "--nonstop", "--max_tokens", "2"] + CPU, capsys)[::2])
        assert "--nonstop streams text past the context window" in line, mode


def test_a_checkpoint_loads_for_sampling_only_when_it_can_be_sampled_as_saved(enc, tmp_path):
    # a model trained with dropout samples without it: load_model gives it in eval mode, so greedy decoding repeats
    torch.manual_seed(0)
    dropout = GPT(make_config("tiny", n_layer=2, n_embd=64, n_head=2, block_size=64, vocab_size=enc.n_vocab,
                              variant="gpt2", dropout=0.5))
    save_checkpoint(str(tmp_path / "dropout.pt"), dropout, enc)
    model, _, _ = load_model(str(tmp_path / "dropout.pt"))
    runs = [gen.complete(model, enc, enc.encode("Once upon a time"), 12, temperature=0)[0] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    # train.py --compile saves the model it compiled: its weights under their own names, not torch.compile's
    # "_orig_mod." ones, which no model loads (its wrapper as OptimizedModule holds it: torch.compile's import of
    # dynamo alone takes seconds)
    compiled = torch.nn.Module()
    compiled._orig_mod = dropout
    save_checkpoint(str(tmp_path / "compiled.pt"), compiled, enc)
    assert load_model(str(tmp_path / "compiled.pt"))[2]["model"].keys() == dropout.state_dict().keys()
    # weights gone to inf (not only nan) are a diverged run; a checkpoint of another format is refused by name
    model = tiny_model(enc)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("inf")
    save_checkpoint(str(tmp_path / "inf.pt"), model, enc)
    with pytest.raises(UserError, match=r"inf\.pt holds weights that are not finite \(\d tensor\(s\) with nan or inf"):
        load_model(str(tmp_path / "inf.pt"))
    save_checkpoint(str(tmp_path / "v2.pt"), tiny_model(enc), enc, format=2)
    with pytest.raises(UserError, match=r"v2\.pt has checkpoint format 2, this code reads 1"):
        load_model(str(tmp_path / "v2.pt"))


@pytest.mark.parametrize("script", ["gen", "eval", "serve"])
def test_the_checkpoint_is_taken_as_train_py_spells_it_too(script, capsys):
    # `gen.py --checkpoint models/x.pt`, train.py's spelling, was "unrecognized arguments: --checkpoint"
    parse_args = __import__(script).parse_args
    assert parse_args(["--checkpoint", "models/x.pt"]).checkpoint == "models/x.pt"
    assert parse_args(["models/x.pt"]).checkpoint == "models/x.pt"
    assert parse_args([]).checkpoint is None  # the newest in models/, found later
    if script == "eval":  # (eval.py compares several: test_eval's test_several_checkpoints_are_taken_in_order)
        return
    with pytest.raises(SystemExit):
        parse_args(["models/x.pt", "--checkpoint", "models/y.pt"])
    assert "two checkpoints, models/x.pt and --checkpoint models/y.pt: give one" in capsys.readouterr().err


def test_a_prompt_file_line_ends_at_a_newline_only(tmp_path):
    # U+2028, U+0085 and a form feed are characters of a line, not line ends: gen.py's own --output leaves U+2028
    # unescaped in its JSON, and read back as a prompt file that line ran as two broken text prompts
    src = tmp_path / "prompts.jsonl"
    src.write_text(json.dumps({"prompt": "a\u2028b", "completion": "c"}, ensure_ascii=False) + "\n"
                   + "page\x0cbreak\r\nx\x85y\n", encoding="utf-8")
    assert gen.read_prompt_file(str(src)) == ["a\u2028b", "page\x0cbreak", "x\x85y"]


def test_a_prompt_file_line_of_turns_says_a_prompt_is_text(tmp_path):
    # a line of TRL's conversational prompt (a list of turns, as prepare.py reads) was told it "needs a \"prompt\" text
    # field", which it has: the error names what is wrong with it
    src = tmp_path / "trl.jsonl"
    src.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}], "completion": []}) + "\n")
    with pytest.raises(UserError, match=r"trl\.jsonl line 1: a JSON line's \"prompt\" must be text, got a list "
                                        r"\(TRL's turns\?\): give each prompt as its user message's text$"):
        gen.read_prompt_file(str(src))


def test_a_prompt_file_line_of_a_python_dict_is_a_broken_record(tmp_path):
    """A line a script wrote with print(record) or str(record), not json.dumps: a Python dict in single quotes, its
    "prompt" field and all, was generated from as text, its braces and keys the prompt, without a word. Text that
    only starts with a brace is a prompt still."""
    src = tmp_path / "p.jsonl"
    src.write_text(str({"task_id": "HumanEval/0", "prompt": "def f(x):\n"}) + "\n{'a': 1} is a set of one\n")
    with pytest.raises(UserError, match=r"p\.jsonl line 1: a JSON line with a \"prompt\" field that is not valid JSON "
                                        r"\(Expecting property name enclosed in double quotes at column 2\): mend it$"):
        gen.read_prompt_file(str(src))
    src.write_text("{'a': 1} is a set of one\n{'prompt' is a word}\n")
    assert gen.read_prompt_file(str(src)) == ["{'a': 1} is a set of one", "{'prompt' is a word}"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def type_at_terminal(monkeypatch, keys):
    """stdin a terminal whose input() returns each of keys in turn, or raises it (EOFError: Ctrl-D); returns the
    prompts input() was given, which it writes to stdout itself."""
    keys, asked = iter(keys), []

    def typed(prompt=""):
        asked.append(prompt)
        key = next(keys)
        if isinstance(key, type) and issubclass(key, BaseException):
            raise key
        return key
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(builtins, "input", typed)
    return asked


def test_the_stop_button_of_a_notebook_ends_a_chat_waiting_for_its_line(ckpt, capsys, monkeypatch):
    """gen.main("--chat") or ("--interactive") in a Jupyter notebook reads each line from an input box (input(), stdin
    no terminal), and the stop button is Ctrl-C: it brought up a fresh box, over and over, and --interactive, which
    takes /exit as text to continue, could be left only by restarting the kernel. It ends the session, as EOF does."""
    for mode in ("--chat", "--interactive"):
        asked = type_at_terminal(monkeypatch, [KeyboardInterrupt, "Once", EOFError])
        monkeypatch.setattr(sys, "stdin", io.StringIO())  # (a notebook's: no terminal)
        assert gen.main([ckpt, mode, "--max_tokens", "2"] + CPU) is None
        out, err = capsys.readouterr()
        assert asked == [""] and out == "", (mode, asked, out, err)


def test_a_notebooks_path_loads_a_checkpoint_as_its_string_does(ckpt):
    """load_model(Path("models/story_best.pt")), as a notebook names files, took the Path for a loaded checkpoint and
    said "does not match this model code ... a damaged checkpoint"; load_checkpoint's was an AttributeError."""
    import pathlib
    from checkpoint import load_checkpoint
    model, enc, loaded = load_model(pathlib.Path(ckpt))
    assert model.config == load_model(ckpt)[0].config
    assert loaded["config"] == load_checkpoint(pathlib.Path(ckpt))["config"]
    with pytest.raises(UserError, match=r"^checkpoint \S*nope\.pt not found"):
        load_model(pathlib.Path(ckpt).with_name("nope.pt"))


def test_ctrl_c_at_the_interactive_prompt_does_not_offer_exit(ckpt, capsys, monkeypatch):
    # --interactive continues every line, "/exit" too: Ctrl-C's hint said "Ctrl-D or /exit quits", as in --chat
    type_at_terminal(monkeypatch, [KeyboardInterrupt, EOFError] * 2)
    code, out, err = cli([ckpt, "--interactive", "--max_tokens", "2"] + CPU, capsys)
    assert code == 0 and "(Ctrl-D quits)" in err and "/exit" not in err, err
    # --chat does quit at /exit: its hint still says so
    code, out, err = cli([ckpt, "--chat", "--max_tokens", "2"] + CPU, capsys)
    assert code == 0 and "(Ctrl-D or /exit quits)" in err, err


def test_the_prompt_of_a_terminal_session_with_stdout_redirected_goes_to_stderr(ckpt, capsys, monkeypatch):
    # gen.py --interactive > out.txt, typed at a terminal: input("> ") wrote its prompt into the file, before every
    # continuation, and the terminal showed none
    asked = type_at_terminal(monkeypatch, ["Once", EOFError])
    code, out, err = cli([ckpt, "--interactive", "--max_tokens", "2", "--seed", "0"] + CPU, capsys)
    assert code == 0 and asked == ["", ""] and err.count("> ") == 2, (asked, err)
    # the continuation and its newline alone: the line typed is on the terminal already, not echoed again
    assert out.count("\n") == 1 and ">" not in out and "Once" not in out, out


def test_a_terminal_session_with_stdout_on_the_terminal_gives_input_its_prompt(ckpt, capsys, monkeypatch):
    # the other side of the redirect above: stdout a terminal too, input() itself writes the prompt, which readline's
    # line editing (a long line, the history) redraws with the line; printed apart, it was wiped by the first redraw
    asked = type_at_terminal(monkeypatch, ["Once", EOFError])
    monkeypatch.setattr(sys, "stdout", Terminal())
    code, _, err = cli([ckpt, "--interactive", "--max_tokens", "2", "--seed", "0", "--no_delay"] + CPU, capsys)
    # (where Python has readline, the bold's escape codes marked \001..\002 for it: test_lines_typed_at_a_terminal_...)
    bold = "\001\033[1m\002> \001\033[0m\002" if importlib.util.find_spec("readline") else "\033[1m> \033[0m"
    assert code == 0 and asked == [bold] * 2 and "> " not in err, (asked, err)


def test_lines_typed_at_a_terminal_can_be_edited_and_recalled():
    """gen.py --chat and --interactive read the user's lines with input(), which edits a line only once readline is
    imported: an arrow key's escape sequence went into the message ("ab^[[DX"), and no earlier line came back on the
    up arrow. Typed into a pseudo-terminal: a, b, left, X, Enter; then up, Enter; then two lines pasted (as a terminal
    sends a paste once the program asks for bracketed paste) and Enter: one message, not one per line with a reply
    each."""
    pty = pytest.importorskip("pty")
    pytest.importorskip("readline")  # (where Python has none, as on Windows, the console edits lines itself)
    import select
    import time
    master, slave = pty.openpty()
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import gen\n"
            "for line in gen.read_lines('\\033[1m> \\033[0m', True): print(repr(line), flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""

    def until(pattern, count=1):
        nonlocal out
        end = time.time() + 30
        while len(re.findall(pattern, out)) < count and time.time() < end:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:  # the child has gone
                    break
        assert len(re.findall(pattern, out)) >= count, out

    # each key typed once the next prompt is out: readline has the terminal in raw mode then (it sets it, then writes
    # the prompt). Typed before, the terminal's line discipline took it: a Ctrl-D there was an end-of-file that readline
    # never read, and the test waited for the child forever
    answered = rb"'aXb'[^']*> "  # the line read, and the next prompt
    try:
        until(rb"> ")
        os.write(master, b"ab\x1b[DX\r")
        until(answered)
        os.write(master, b"\x1b[A\r")  # the line before, again
        until(answered, count=2)
        # a terminal marks a paste only when the program asks it to (readline's own binding takes a marked one as one
        # line either way): unasked, it sends the pasted lines as if typed, each ending with Enter
        assert b"\x1b[?2004h" in out, out
        os.write(master, b"\x1b[200~one\rtwo\x1b[201~")
        os.write(master, b"\r")
        until(rb"'one\\ntwo'[^']*> ")
        os.write(master, b"\x04")  # Ctrl-D
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(master)


def test_the_default_max_tokens_is_noted_only_where_the_context_ends_before_it(capsys):
    """A 256-token context (the tiny preset's) holds the default's 256 new tokens after a one-token prompt: no note.
    One token less and a completion ends short of the default, which is said."""
    args = gen.parse_args(["m.pt"])
    for block_size, noted in ((256, False), (255, True)):
        model = types.SimpleNamespace(config=types.SimpleNamespace(block_size=block_size))
        assert gen.max_tokens_for(args, model) == gen.DEFAULT_MAX_TOKENS
        assert ("short of --max_tokens' default 256" in capsys.readouterr().err) == noted, block_size
    # --nonstop, which slides the context on, is named only where it goes with the run: not with --prompt_file or --chat
    model = types.SimpleNamespace(config=types.SimpleNamespace(block_size=64))
    for argv, said in (([], True), (["--prompt_file", "p.txt"], False)):
        gen.max_tokens_for(gen.parse_args(["m.pt"] + argv), model)
        assert ("--nonstop" in capsys.readouterr().err) == said, argv
    for argv, said in (([], True), (["--prompt_file", "p.txt"], False), (["--chat"], False)):
        gen.max_tokens_for(gen.parse_args(["m.pt", "--max_tokens", "100"] + argv), model)
        assert ("--nonstop" in capsys.readouterr().err) == said, argv


def test_a_conversation_just_over_the_prompts_half_is_not_warned_of_and_one_that_fills_the_context_is_cut(enc, capsys):
    """max_tokens 32 in a 64-token context: a conversation of 33 tokens still leaves the reply its 32 (room_after), so
    it is sent whole, not short, without a warning; one of exactly 64 would leave the reply one token, so its start goes
    as a longer one's does, keeping the last 32 for the reply's 32."""
    model = tiny_model(enc)  # block_size 64
    h = history_of(enc, 33)
    ids, dropped, short = gen.chat_prompt(model, enc, h, 32)
    assert (ids, dropped, short) == (render_chat(enc, h, add_generation_prompt=True)[0], 0, False)
    assert capsys.readouterr().err == ""
    h = history_of(enc, 64)
    ids, dropped, short = gen.chat_prompt(model, enc, h, 32)
    whole = render_chat(enc, h, add_generation_prompt=True)[0]
    assert (ids, dropped, short) == (whole[:3] + whole[3 - 32:], 0, True)  # its turn's opening (3 tokens) kept
    assert "keeping the user turn's opening and the last 29 of the rest so 32 can follow" in capsys.readouterr().err


def test_a_chat_prompt_told_not_to_warn_says_nothing(enc, capsys):
    """eval.py builds its chat prompts with warn=False (it counts the short ones itself): no line per prompt, where the
    newest message is cut, where the system message alone fills the context, or where the reply is left short."""
    model = tiny_model(enc, block_size=16)  # max_tokens 7: 9 tokens for the prompt
    user = {"role": "user", "content": "tell me " + "word " * 20}
    for history in ([user], [{"role": "system", "content": "hi " * 20}, user],
                    [{"role": "user", "content": "tell me " + "word " * 6}]):  # 12 tokens: the reply gets 5 of 7
        ids, dropped, short = gen.chat_prompt(model, enc, history, 7, warn=False)
        assert short and capsys.readouterr().err == "", history
        assert gen.chat_prompt(model, enc, history, 7)[2] and capsys.readouterr().err.startswith("warning: "), history


def test_del_and_every_c1_control_show_as_symbols_on_a_terminal(capsys, monkeypatch):
    """The whole of VISIBLE's ranges: DEL and the C1 controls U+0080 to U+009F (xterm obeys them in UTF-8 too), the
    last one included."""
    monkeypatch.setenv("TERM", "dumb")  # (no line breaking: the text as translated)
    gen.Printer(terminal=True)("a\x7fb\x80c\x9fd")
    assert capsys.readouterr().out == "a\u2421b<U+0080>c<U+009F>d"


def test_an_old_checkpoint_of_a_text_dataset_is_of_no_known_kind():
    """prepare.py --dataset text makes a dataset of the user's files, stories or conversations: a checkpoint that did
    not record its data's kind is not taken for plain text by that name (its --chat would be warned of wrongly)."""
    assert gen.data_kind({"dataset": "text", "data": {"folder": "data/notes"}}) is None
    assert gen.data_kind({"dataset": "story", "data": {"folder": "data/story"}}) == "text"


def test_a_one_token_context_keeps_the_prompts_last_token(capsys):
    """A --block_size 1 model (a bigram's context) reserves its one position for the reply: the prompt keeps its last
    token, which generation starts from, and the warning says so; it kept the whole prompt, warned of as "keeping its
    last 0, so 2 can follow", where one came."""
    model = types.SimpleNamespace(config=types.SimpleNamespace(block_size=1))
    assert gen.crop_prompt(model, [5], 3) == [5] and capsys.readouterr().err == ""
    assert gen.crop_prompt(model, [1, 2, 3], 3) == [3]
    assert capsys.readouterr().err == ("warning: prompt is 3 tokens but the context holds 1: keeping its last 1, so 1 "
                                       "can follow\n")


def test_a_piped_chat_writes_nothing_to_stderr_for_a_person_at_a_terminal(la_ckpt, enc, capsys, monkeypatch):
    """A script piping a chat reads stderr for what went wrong: the help line, "(history cleared)" and the line end
    after the last input are for a person at the prompt. An empty --system is no system message, as none is; --verbose
    names dropped messages only where some were."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nhi\n"))
    code, out, err = cli([la_ckpt, "--chat", "--system", "", "--seed", "1", "--max_tokens", "4"] + CPU, capsys)
    assert code == 0 and err == "", err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\nhi\n"))
    code, out, err = cli([la_ckpt, "--chat", "--system", "", "--verbose", "--seed", "1", "--max_tokens", "4"] + CPU,
                         capsys)
    lens = [len(render_chat(enc, [{"role": "user", "content": m}], add_generation_prompt=True)[0])
            for m in ("hello", "hi")]
    assert code == 0 and [int(n) for n in re.findall(r"prompt (\d+) tokens", err)] == lens, err
    assert "dropped" not in err, err


def test_a_terminal_told_its_input_is_not_utf8_is_told_to_set_the_terminal(ckpt, capsys, monkeypatch):
    """Bytes that are not UTF-8 typed at a terminal come from its setting, not from a file to convert."""
    type_at_terminal(monkeypatch, ["caf\udce9", EOFError])
    code, out, err = cli([ckpt, "--interactive", "--max_tokens", "1", "--seed", "0"] + CPU, capsys)
    assert code == 0 and "read with U+FFFD for its bytes that are not: set the terminal to UTF-8\n" in err, err
