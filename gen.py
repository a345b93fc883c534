"""
Sample from a trained model: continue a prompt, chat with it, or run a file of prompts.

    python gen.py                                    # unconditional sample from the newest .pt in models/
    python gen.py models/story.pt --prompt "Once upon a time"
    python gen.py --interactive                      # each line you type is continued
    python gen.py --chat --system "You are terse."   # multi-turn ChatML chat; /reset, /exit, Ctrl-D
    python gen.py --prompt_file prompts.txt --output out.jsonl   # one JSON line per prompt
    python gen.py --nonstop                          # slide past the context window until Ctrl-C

Text streams token by token. Text generation and a chat reply stop at <|endoftext|>, or where a
chat model ends its turn: <|im_end|> (or <|im_start|>). Without --nonstop generation also
stops when the context window is full; prompts are cropped (keeping their end, with a warning)
so that at least min(--max_tokens, block_size/2) tokens fit after them.

With stdin piped (scripts and tests) there are no prompt markers, and with stdout piped no colours
and no typing delay. --interactive and --chat print each reply followed by a newline; with --verbose
every completion is followed by a line `[end: REASON]` on stdout, where REASON is the
stop token (`<|im_end|>`, `<|endoftext|>`, `<|im_start|>`), `max_tokens`, `context` or `interrupted`,
so a transcript splits unambiguously into replies. --prompt_file writes a JSON line per prompt: {"prompt",
"completion", "end": REASON}. Statistics go to stderr.
"""
import common  # first (it is light): Ctrl-C while torch loads then ends in one line, not a traceback from its import
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import contextlib
import importlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
import unicodedata

import torch

from checkpoint import add_checkpoint_argument, find_checkpoints, load_model, parse_checkpoint
from common import (ArgumentParser, UserError, add_device_arguments, at_least, atomic_write_text, autocast,
                    check_output, color_ok, encoding_fix, first_line, fmt_count, latin1_fix, mostly_utf8, not_utf8,
                    number, path_arg, pick_device, pick_dtype, require_utf8, retain_freed_memory, run_main,
                    seeded_generator, slow_on_this_cpu, dtype_words, stray_byte_fix, without_surrogates)
from setup_tokenizer import EOT, IM_END, IM_START, StreamDecoder, chatml_tokens, render_chat

CHAT_HELP = "/reset clears the history, /exit or Ctrl-D quits, Ctrl-C stops a reply"
DEFAULT_MAX_TOKENS = 256  # new tokens per completion or reply, --max_tokens left out (serve.py's too)
TYPING_DELAY = 0.012  # seconds per token on a terminal: a readable rhythm for demos, never in pipes
# what a terminal shows for the control characters it would obey but \n and \t (a model's ESC c would clear the
# screen): C0 ones and DEL as their control pictures (␛ ␍ ␈), C1 ones (xterm obeys them in UTF-8 too) as less does
VISIBLE = {c: chr(0x2400 + c) for c in range(0x20) if chr(c) not in "\n\t"} | {0x7F: "\u2421"} | \
    {c: f"<U+{c:04X}>" for c in range(0x80, 0xA0)}


# -----------------------------------------------------------------------------
# generation

def reserve_for(model, max_tokens):
    """Tokens kept free after a prompt: max_tokens, but at most half the context, or the prompt would be squeezed."""
    return max(1, min(max_tokens, model.config.block_size // 2))


def room_after(model, n):
    """New tokens that can follow a prompt of n tokens without sliding: the positions left, and the last one generated,
    which is never fed back."""
    return model.config.block_size - n + 1


def crop_prompt(model, ids, max_tokens, what="prompt", warn=True, slide=False):
    """The end of a prompt too long to leave the reply room, with a warning (slide: --nonstop's, which slides on)."""
    # at least the last token, which generation starts from (and ids[-0:] would keep the whole prompt)
    limit = max(1, model.config.block_size - reserve_for(model, max_tokens))
    if len(ids) <= limit:
        return ids
    if warn:
        follow = "then --nonstop slides the context on" if slide else \
            f"so {min(max_tokens, room_after(model, limit))} can follow"
        print(f"warning: {what} is {len(ids)} tokens but the context holds {model.config.block_size}: keeping its last "
              f"{limit}, {follow}", file=sys.stderr)
    return ids[-limit:]


def encode_prompt(enc, text):
    """A text prompt's ids, special tokens spelt in it included; an empty one starts where every document starts."""
    return enc.encode(text, allowed_special="all") or [enc.encode_single_token(EOT)]


# a reply ends at its <|im_end|>; <|endoftext|>, or <|im_start|> opening another turn (which a model that skipped
# <|im_end|> may write), end it too, so a control token never shows as text
CHAT_STOPS = (IM_END, EOT, IM_START)


def stop_ids(enc, names):
    return tuple(enc.encode_single_token(n) for n in names)


# what to try when a model's scores overflow (sample_steps), by the dtype it ran in
OVERFLOW_FIX = {torch.float16: "float16's range is the narrowest: try --dtype bfloat16 or float32",
                torch.bfloat16: "try --dtype float32",
                None: "its weights are finite but too large (a run that diverged?): an earlier checkpoint may not be"}


def sample_steps(model, prompts, max_tokens, dtype=torch.float32, temperature=0.8, **sampling):
    """Yield the next token of each prompt (a list of B ints) per step. prompts: B token lists of equal length;
    sampling: model.generate's other settings, with its defaults."""
    device = next(model.parameters()).device
    idx = torch.tensor(prompts, dtype=torch.long, device=device)
    steps = model.generate(idx, max_tokens, temperature=temperature, **sampling)
    # one autocast region for the whole generation: autocast keeps its low-precision copies of the weights until it
    # ends, and one per step would cast every weight again every token (the caller's code between steps runs in it)
    with autocast(device, dtype):
        try:
            for tok in steps:
                yield tok.tolist()  # one host sync per step, which streaming needs anyway
        except FloatingPointError as e:  # (generate's, on nan or inf scores: what to try depends on the dtype)
            fix = OVERFLOW_FIX.get(dtype, OVERFLOW_FIX[None])
            raise UserError(f"{e} in {str(dtype).removeprefix('torch.')}: {fix}") from None


def why_stopped(enc, ids, stop_tokens, max_tokens):
    if ids and ids[-1] in stop_tokens:
        return enc.decode([ids[-1]])
    return "max_tokens" if len(ids) >= max_tokens else "context"


def stream_completion(model, enc, prompt_ids, max_tokens, stop_tokens=(), **sampling):
    """One completion of prompt_ids as it is generated: yields (token, text) per new token, text being the characters
    that token completes ("" inside a multi-byte character, and for the stop token, which ends it). A character cut
    off by max_tokens is flushed as (None, "\ufffd"), one cut off by a stop token dropped. Closing the iterator stops
    generation (gen.py's Ctrl-C, serve.py's hung-up clients)."""
    decoder = StreamDecoder(enc, after=prompt_ids)  # (ids prompts may end inside a character the reply finishes)
    for step in sample_steps(model, [prompt_ids], max_tokens, stop_tokens=stop_tokens, **sampling):
        tok = step[0]
        if tok in stop_tokens:
            yield tok, ""
            return  # the text ends before the stop token: a character it cut off is not flushed, as in serve.py
        yield tok, decoder.push(tok)
    tail = decoder.flush()
    if tail:
        yield None, tail


def complete(model, enc, prompt_ids, max_tokens, stop_tokens=(), on_text=None, **sampling):
    """One completion of prompt_ids, its text streamed to on_text(piece) as characters complete. Returns (new_ids, text,
    stopped_by): new_ids end with the stop token if one was hit, text never holds it; stopped_by is the stop token's
    text, "max_tokens", "context" (window full) or "interrupted" (Ctrl-C: what came is kept). A character cut off at
    the end is shown (U+FFFD) but not in text: a --chat reply joins the history, which would hold what was not said."""
    ids, pieces, stopped_by = [], [], None
    try:
        for tok, piece in stream_completion(model, enc, prompt_ids, max_tokens, stop_tokens, **sampling):
            if tok is not None:  # (None: that flush)
                ids.append(tok)
                pieces.append(piece)
            if piece and on_text:
                on_text(piece)
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    return ids, "".join(pieces), stopped_by or why_stopped(enc, ids, stop_tokens, max_tokens)


def complete_batch(model, enc, prompts, max_tokens, stop_tokens=(), batch_size=8, seed=None, **sampling):
    """Completions of many token lists: prompts of equal length share a batch (no padding, so a row sees what it would
    alone). Returns [(text, stopped_by)] in input order. seed: each row samples from its own generator started from it,
    as `gen.py --prompt P --seed S` does, so a completion depends on neither --batch_size nor the file's other prompts;
    None: sampling's generator, shared. In fp32 only: on a CPU, bf16 rounds a batch otherwise than one row."""
    device = next(model.parameters()).device if seed is not None else None
    by_len = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    batches = [group[s:s + batch_size] for group in by_len.values() for s in range(0, len(group), batch_size)]
    results = [None] * len(prompts)
    for rows in batches:
        outs = [[] for _ in rows]
        done = [False] * len(rows)
        if seed is not None:
            sampling["generator"] = [seeded_generator(device, seed) for _ in rows]
        # generate() runs until every row has hit a stop token; each row is cut at its own
        for step in sample_steps(model, [prompts[i] for i in rows], max_tokens, stop_tokens=stop_tokens, **sampling):
            for r, t in enumerate(step):
                if not done[r]:
                    outs[r].append(t)
                    done[r] = t in stop_tokens
        for i, ids, stopped in zip(rows, outs, done):
            # as stream_completion: a character cut off by the stop token is dropped, one cut by max_tokens shown
            decoder = StreamDecoder(enc)
            text = "".join(decoder.push(t) for t in ids[:-1]) if stopped else enc.decode(ids, errors="replace")
            results[i] = (text, why_stopped(enc, ids, stop_tokens, max_tokens))
    return results


# -----------------------------------------------------------------------------
# chat

def fit_history(enc, messages, budget):
    """Drop the oldest turns until the rendered conversation (with the assistant's generation prompt) fits in budget
    tokens. A leading system message stays, and the newest message even alone and too long (the caller keeps its end);
    what is kept never opens on an assistant's answer whose question was dropped."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(head):]
    # a message renders to 4 tokens or more, so only the newest budget // 4 + 1 can fit, each rendered once (their
    # lengths add up): a reply costs the same however long a --chat session gets
    start = max(0, len(rest) - (budget // 4 + 1))
    sizes = [len(render_chat(enc, [m])[0]) for m in rest[start:]]
    total = len(render_chat(enc, head, add_generation_prompt=True)[0]) + sum(sizes)
    first = start  # the oldest message kept
    while first < len(rest) - 1 and (total > budget or (first > 0 and rest[first]["role"] == "assistant")):
        # a conversation goes on with a user message: an assistant's answer goes with its question
        total -= sizes[first - start]
        first += 1
    return head + rest[first:]


def chat_prompt(model, enc, history, max_tokens, warn=True):
    """(ids, dropped, short): the prompt for the assistant's reply to history, leaving the reply reserve_for's tokens;
    dropped: how many of the oldest messages fit_history left out; short: whether the context cut the newest message
    or leaves the reply fewer than max_tokens. A warning line, unless warn is False, where the newest message is cut or
    crowds the reply out (a max_tokens over half the context is max_tokens_for's warning, said once)."""
    block_size = model.config.block_size
    budget = block_size - reserve_for(model, max_tokens)
    fitted = fit_history(enc, history, budget)
    dropped = len(history) - len(fitted)
    ids, _ = render_chat(enc, fitted, add_generation_prompt=True)
    if len(ids) <= budget:  # the reply gets max_tokens, but for one over half the context: what the history leaves
        return ids, dropped, room_after(model, len(ids)) < max_tokens
    # over budget with fit_history down to the system message and the newest one
    over = f"warning: the conversation is {len(ids)} tokens but the context holds {block_size}:"
    if len(ids) < block_size:  # the reply takes what is left, as serve.py's does
        # (then "context" ends it, not "max_tokens"; what is left may be all max_tokens asks)
        short = room_after(model, len(ids)) < max_tokens
        if short and warn:
            print(f"{over} the reply gets {room_after(model, len(ids))} tokens at most", file=sys.stderr)
        return ids, dropped, short
    # the start of the newest message goes
    has_system = fitted[0]["role"] == "system" and len(fitted) > 1
    system_len = len(render_chat(enc, fitted[:1])[0]) if has_system else 0  # its tokens, kept whole
    opening = len(render_chat(enc, [], add_generation_prompt=True)[0])  # <|im_start|>assistant\n, which ends the prompt
    # the system message alone fills the context, or leaves less than the assistant's opening after it: its start goes
    # too, said so (kept whole, it would leave the prompt ending inside that opening, no assistant turn begun)
    if system_len + opening > budget:
        ids = crop_prompt(model, ids, max_tokens, what="the conversation (its system message alone fills the "
                          "context: cut too)", warn=warn)
        return ids, dropped, True
    # the newest message's turn opening (<|im_start|>user\n) stays too, where the opening and a token of it fit: its
    # end alone would be text in no turn, read by the model as the end of the system message's or as nothing's
    role = fitted[-1]["role"]
    heads, _, newline = chatml_tokens(enc)
    head = len(heads[role])
    # (where a token of its text, its <|im_end|> and newline fit too: else no text of it would follow the opening)
    head = head if system_len + head + 1 + 1 + len(newline) + opening <= budget else 0
    keep = budget - system_len - head
    if warn:
        turn = f"the {role} turn's opening" if head else ""
        kept = ", ".join(filter(None, ("the system message" * bool(system_len), turn))) + \
            f" and the last {keep} of the rest" if system_len or head else f"its last {keep}"
        print(f"{over} keeping {kept} so {min(max_tokens, room_after(model, budget))} can follow", file=sys.stderr)
    return ids[:system_len + head] + ids[len(ids) - keep:], dropped, True


def chat_reply(model, enc, history, max_tokens, on_text=None, info=None, warn=True, **sampling):
    """The assistant's next reply to history (a list of {role, content} ending with the user's message): (text,
    stopped_by), the turn ending at one of CHAT_STOPS; the model sees the newest turns that fit (chat_prompt). info,
    a dict if given, receives prompt_ids, new_tokens, dropped and short (chat_prompt's)."""
    ids, dropped, short = chat_prompt(model, enc, history, max_tokens, warn)
    new, text, stopped_by = complete(model, enc, ids, max_tokens, stop_ids(enc, CHAT_STOPS), on_text, **sampling)
    if info is not None:
        info.update(prompt_ids=ids, new_tokens=len(new), dropped=dropped, short=short)
    return text, stopped_by


# -----------------------------------------------------------------------------
# the command line

def data_kind(ckpt):
    """"text" or "chat": what a checkpoint's data was, None where it cannot say (a Hugging Face folder). A checkpoint
    that does not record it (an older train.py's) says it by its dataset's name where that is one of prepare.py's."""
    data = ckpt.get("data") or {}
    if "kind" in data or not data:
        return data.get("kind")
    from prepare import DATASETS, MIXABLE  # (only for such a checkpoint: prepare.py loads numpy)
    name = ckpt.get("dataset")
    return None if name not in DATASETS or name == "text" else "chat" if name in MIXABLE else "text"


def warn_if_trained_on_text(path, ckpt, replies="its replies"):
    """make demo's story model answers a chat with a story that never ends its turn: the user is told why first."""
    if data_kind(ckpt) == "text":
        # a chat set in this model's own vocabulary (make chat-demo would train another model)
        chat_set = common.script_command("prepare.py", "--dataset", "dailydialog", "--tokenizer", path)
        print(f"warning: {path} was trained on plain text ({ckpt.get('dataset')}), not on conversations: {replies} "
              f"will not keep to the turn; fine-tune it on a chat set in its vocabulary first: `{chat_set}` (or "
              f"--dataset chat --source YOUR.jsonl) makes one and prints the train.py command", file=sys.stderr)


def columns(ch):
    """How many columns ch takes on a terminal, as wcwidth counts near enough: 2 for a wide (CJK) one, 0 for a
    combining mark or a format character."""
    if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


# what may not open a line in Chinese or Japanese text (kinsoku): closing punctuation, written after the character it
# follows with no space; and what may not end one: wide opening brackets (“ and ‘ are narrow, and a word already)
CLOSING_CJK = "、。，．：；！？）］｝」』】〉》〕〗〙”’…"
OPENING_CJK = "（［｛「『【〈《〔〖〘"


class Printer:
    """Streams text to stdout as it comes. On a terminal (terminal=True) control characters show as VISIBLE has them,
    lines break between words (not on TERM=dumb, as Emacs' shell, nor Windows' console, which move no cursor as told),
    and delay paces tokens for a readable rhythm; a pipe gets the text as it is."""

    def __init__(self, delay=0.0, terminal=False):
        self.delay, self.out, self.last, self.terminal = delay, sys.stdout, 0.0, terminal
        self.wraps = terminal and os.environ.get("TERM") != "dumb" and sys.platform != "win32"
        self.column, self.word = 0, ""  # where the cursor is, and the word it ends, which a line break may yet move
        self.mid_line = False  # whether the last text written left its line open
        self.cr = ""  # a \r that ended the last text, which a \n may yet follow (gpt2 writes them as two tokens)

    def wrap(self, text):
        """text with the line breaks that keep its words whole on the terminal (which breaks mid-word), as ollama's:
        each character is written as it comes (the typing rhythm), and one that does not fit takes the word it ends to
        the next line (back over it, clear it, newline, again)."""
        # never the last column: the cursor passes it only at the next character, and going back over the word from
        # there lands a column short. The width is asked each time: the window may be resized
        room = shutil.get_terminal_size().columns - 1
        out = []
        for ch in text:
            width = 8 - self.column % 8 if ch == "\t" else 0 if ch == "\n" else columns(ch)
            # CJK writes no spaces, and breaks after any wide character, but never before closing punctuation ("。"
            # goes down with the character before it) nor after opening punctuation ("「" with the one after it)
            if self.word[-1:] and columns(self.word[-1]) > 1 and self.word[-1] not in OPENING_CJK \
                    and ch not in CLOSING_CJK:
                self.word = ""
            if ch == "\n":
                self.column = 0
            elif width and self.column + width > room and self.column:  # (a combining mark stays on its letter's line)
                if ch in " \t":  # the line break takes the space's place
                    ch, width, self.column = "\n", 0, 0
                elif self.word and (back := sum(map(columns, self.word))) + width <= room:  # the word moves down whole
                    out.append((f"\033[{back}D\033[K" if back else "") + "\n" + self.word)
                    self.column = back
                else:  # a word longer than the line breaks where it must
                    out.append("\n")
                    self.column, self.word = 0, ""
            out.append(ch)
            self.column += width
            self.word = "" if ch in " \t\n" else self.word + ch  # (a space ends a word)
        return "".join(out)

    def __call__(self, text, style=("", "")):
        """text (the model's, or a prompt echoed) between style's two escape codes (gen.py's bold), in one write: a
        Ctrl-C comes before it or after."""
        if self.delay:
            wait = self.last + self.delay - time.perf_counter()
            if wait > 0:  # only pad fast models; a slow one already streams slower than this
                time.sleep(wait)
            self.last = time.perf_counter()
        if self.terminal:  # \r\n ends a line as \n does, and shows as it: a ␍ at each line's end of a CRLF text
            text, self.cr = self.cr + text, ""
            if text.endswith("\r"):  # (held back: only an unseen \r, which the reply's closing \n comes after)
                text, self.cr = text[:-1], "\r"
            text = text.replace("\r\n", "\n").translate(VISIBLE)
        if self.wraps:
            text = self.wrap(text)
        self.out.write(style[0] + text + style[1])
        self.out.flush()
        if text:
            self.mid_line = not text.endswith("\n")


def read_lines(prompt, tty, quit_hint="Ctrl-D or /exit quits"):
    """User lines until EOF; Ctrl-C at the prompt gives a fresh prompt and quit_hint, as in a shell, or with no terminal
    (tty false: a pipe, a notebook's input box) ends them. Bytes that are not UTF-8 become U+FFFD, the user told once
    how to convert them; a line ends at \\r\\n or \\r too, and a byte-order mark opening the input is dropped."""
    # surrogateescape, not replace: a U+FFFD the user wrote is no sign of bytes that are not UTF-8, an escaped byte is
    with contextlib.suppress(AttributeError, ValueError):  # a replaced sys.stdin (tests) may not reconfigure
        sys.stdin.reconfigure(errors="surrogateescape", newline=None)
    # the prompt goes where the user looks: with stdout redirected (gen.py --interactive > out.txt), not into the file
    screen = sys.stdout if sys.stdout.isatty() else sys.stderr
    if tty and screen is sys.stdout:  # (input() edits with readline only when both are a terminal)
        # line editing and history on the up arrow, as Python's prompt has: else an arrow key's escape sequence goes
        # into the message ("ab^[[DX")
        with contextlib.suppress(ImportError):  # (Windows' Python has none: its console edits the line itself)
            readline = importlib.import_module("readline")  # imported, it serves input()
            if "libedit" not in (readline.__doc__ or ""):  # (macOS's libedit reads no GNU settings)
                # a pasted block of lines is one message, as in ollama: Python turns GNU readline's bracketed paste
                # off, and each pasted line would go as a message of its own
                readline.parse_and_bind("set enable-bracketed-paste on")
            # escape codes marked \001..\002, or readline counts them in the prompt's width and redraws long lines off
            prompt = re.sub("(\033\\[[0-9;]*m)", "\001\\1\002", prompt)
    first, warned = True, False
    while True:
        try:
            if tty and screen is sys.stderr:
                print(prompt, end="", file=screen, flush=True)
            line = input(prompt if tty and screen is sys.stdout else "")
            if re.search("[\udc80-\udcff]", line):  # bytes that are not UTF-8 (GBK text piped in): said once
                raw = line.encode("utf-8", "surrogateescape")
                line = raw.decode("utf-8", "replace")
                if not warned:  # the fix as not_utf8 names a file's ("": no file), a stray byte in UTF-8 text first:
                    # the 8-bit encodings' guesses would take a UTF-8 line of Russian or Chinese for Central European
                    fix = "set the terminal to UTF-8" if tty else stray_byte_fix("") if mostly_utf8(raw) else \
                        encoding_fix(raw, "") or latin1_fix("")
                    print(f"warning: the input is not UTF-8 text, read with U+FFFD for its bytes that are not: {fix}",
                          file=sys.stderr)
                warned = True
            yield line.removeprefix("\ufeff") if first else line
            first = False
        except EOFError:
            if tty:
                print(file=screen)
            return
        except KeyboardInterrupt:
            if not tty:
                # no terminal: a pipe, or a notebook's input box, where Ctrl-C is Jupyter's stop button and no Ctrl-D
                # can be typed. Ctrl-C ends the input as EOF does, else --interactive (/exit is text to it) never ends
                return
            print(f"\n({quit_hint})", file=sys.stderr)


def read_prompt_file(path):
    """Prompts from a file: one per line, or JSON lines with a "prompt" field (blank lines skipped)."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Notepad, Excel) is no part of the prompt
            # at newlines only (open() makes \r\n and \r one): splitlines() also cuts at U+2028, which JSON leaves as is
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise UserError(f"--prompt_file {path}: no such file")
    except IsADirectoryError:
        raise UserError(f"--prompt_file {path} is a folder: give a file's path")
    except UnicodeDecodeError:
        raise not_utf8(path, f"--prompt_file {path}") from None
    prompts = [line_prompt(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise UserError(f"--prompt_file {path} holds no prompts (one per line, or JSON lines with a \"prompt\" field)")
    return prompts


def line_prompt(path, n, line):
    """The prompt of line n of a prompt file: a JSON object's "prompt" field, else the line as it is."""
    if not line.lstrip().startswith("{"):
        return line
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        # a line opening as a JSON object (or a dict's repr) that names a "prompt" field, first or not (HumanEval's lead
        # with task_id), is a broken record, refused rather than sent whole; other text opening with a brace is a prompt
        if re.match(r'\s*\{\s*["\']', line) and re.search(r'[{,]\s*(["\'])prompt\1\s*:', line):
            raise UserError(f"{path} line {n}: a JSON line with a \"prompt\" field that is not valid JSON ({e.msg} at "
                            f"column {e.colno}): mend it") from None
        return line
    except (ValueError, RecursionError) as e:  # JSON, but past what Python reads: an integer of 4,300 digits
        raise UserError(f"{path} line {n}: JSON that cannot be read ({type(e).__name__}: {first_line(e)})")
    if isinstance(obj.get("prompt"), list):  # (it has the field: "needs a prompt field" would mislead)
        raise UserError(f"{path} line {n}: a JSON line's \"prompt\" must be text, got a list (TRL's "
                        f"turns?): give each prompt as its user message's text")
    if not isinstance(obj.get("prompt"), str):
        raise UserError(f"{path} line {n}: a JSON line needs a \"prompt\" text field")
    return without_surrogates(obj["prompt"])  # "\ud800" cannot be printed, which would fail after the run


def default_checkpoint(folder="models"):
    found = find_checkpoints(folder)
    if found:
        return found[0]
    if not os.path.isdir(folder):
        where = f"there is no {folder}/ folder here"
    else:
        names = sorted(f for f in os.listdir(folder) if not f.startswith("."))  # (a killed run's .story.lock)
        listed = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        where = f"{folder}/ holds " + (listed if names else "nothing")
    raise UserError(f"no checkpoint given and no .pt file in {folder}/ or its folders ({where}): train one with "
                    f"`{common.script_command('train.py')}` or pass a checkpoint path")


def say_newest(path):
    """Names default_checkpoint's pick on stderr: which of models/ is "the newest" is not the user's to guess (after a
    fine-tune it is the chat run's last checkpoint, not the best file its "try it" named)."""
    print(f"using {path}, the newest checkpoint in models/", file=sys.stderr)


def top_k_arg(s):
    """--top_k: a count >= 1, or 0 for no limit (None), as a request's top_k of 0 means in serve.py's API."""
    v = number(s, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 1, or 0 for no limit, got {v}")
    return v or None


def temperature_arg(most=math.inf):
    """An argparse type: a temperature from 0 to most (serve.py's: the range its requests take)."""
    def parse(s):
        v = number(s, float)
        if not 0 <= v < float("inf"):  # nan too; inf would go into serve.py's and eval.py's JSON, which no parser reads
            raise argparse.ArgumentTypeError(f"must be a number >= 0 (0 = greedy), got {s}")
        if v > most:
            raise argparse.ArgumentTypeError(f"must be a number from 0 to {most:g} (0 = greedy), got {s}")
        return v
    return parse


def probability(s):
    v = number(s, float)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


PENALTY_RULE = "a number > 0 (1 = off)"


def penalty_value(v):
    """A repetition penalty as a float, or None when it breaks PENALTY_RULE: --repetition_penalty's and serve.py's rule,
    so a JSON integer too big for a float (10**400) is refused there, not a failure inside torch (a 500)."""
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if 0 < v < float("inf") else None  # (nan is neither)


def penalty(s):
    v = penalty_value(number(s, float))
    if v is None:
        raise argparse.ArgumentTypeError(f"must be {PENALTY_RULE}, got {s}")
    return v


def add_sampling_arguments(p, when="", max_temp=math.inf):
    """--temp, --top_k, --top_p and --repetition_penalty: one definition for gen.py, eval.py and serve.py. when:
    serve.py's " when a request gives none"; max_temp: the largest --temp (serve.py's: a request's)."""
    most = f", at most {max_temp:g}" if max_temp < math.inf else ""
    p.add_argument("--temp", type=temperature_arg(max_temp), default=0.8,
                   help=f"sampling temperature{when}, 0 = greedy{most} (default: 0.8)")
    p.add_argument("--top_k", type=top_k_arg, default=200,
                   help=f"sample among the k most likely tokens{when} (and those tied with the k-th), 0 = no limit "
                        f"(default: 200)")
    p.add_argument("--top_p", type=probability, default=None,
                   help=f"nucleus sampling{when}: the smallest set of tokens with this total probability, in (0, 1], "
                        f"taken among the --top_k, as Hugging Face does (default: off)")
    p.add_argument("--repetition_penalty", type=penalty, default=1.0,
                   help=f"> 1 discourages tokens already in the context{when} (default: 1 = off)")


def parse_args(argv=None):
    # the docstring, its examples first, as prepare.py's, eval.py's and bench.py's --help give theirs
    p = ArgumentParser("gen.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_argument(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text to continue (with --chat: one user message, then exit)")
    src.add_argument("--prompt_file", type=path_arg,
                     help="many prompts: one per line, or JSON lines with a \"prompt\" field")
    p.add_argument("--interactive", action="store_true", help="read prompts line by line and continue each")
    p.add_argument("--chat", action="store_true", help="multi-turn ChatML chat (/reset clears history, /exit quits)")
    p.add_argument("--system", help="system message for --chat")
    p.add_argument("--nonstop", action="store_true",
                   help="slide the context window and ignore <|endoftext|> and <|im_end|>: generate until "
                        "--max_tokens (default: no limit) or Ctrl-C")
    p.add_argument("--seed", type=int,
                   help="random seed; the same seed gives the same text (default: random, shown by --verbose)")
    add_sampling_arguments(p)
    p.add_argument("--max_tokens", type=at_least(1), default=None,
                   help=f"new tokens per completion or reply (default: {DEFAULT_MAX_TOKENS})")
    p.add_argument("--num_samples", type=at_least(1), default=1,
                   help="samples for --prompt or an unconditional run (default: 1)")
    p.add_argument("--batch_size", type=at_least(1),
                   help="--prompt_file: prompts of equal length generated together (default: 8)")
    add_device_arguments(p)
    p.add_argument("--no_cache", action="store_true",
                   help="recompute the whole context every token (slow; for comparisons: the same text as the cache's "
                        "in fp32, while bf16 rounds a row and a matrix differently)")
    p.add_argument("--no_delay", action="store_true", help="no typing rhythm on a terminal (pipes never wait)")
    p.add_argument("--output", type=path_arg, help="--prompt_file: write the JSON lines ({prompt, completion, end}) "
                                                   "here instead of stdout (- is stdout)")
    p.add_argument("--verbose", action="store_true",
                   help="model size, device, tokens/s (stderr) and [end: ...] markers (stdout)")
    return parse_checkpoint(p, p.parse_args(argv))


def check_options(args):
    """A UserError for options that do not go together, or a --prompt or --system that is not UTF-8."""
    if args.chat and args.prompt_file:
        raise UserError("--chat reads its messages from the terminal (or --prompt); --prompt_file is for text "
                        "completion")
    if args.output and not args.prompt_file:
        raise UserError("--output is for --prompt_file runs; redirect stdout to save other output")
    if args.interactive and (args.prompt is not None or args.prompt_file):
        raise UserError("--interactive reads its prompts from the terminal; drop --prompt/--prompt_file, or "
                        "--interactive")
    if args.nonstop and (args.chat or args.prompt_file):
        raise UserError("--nonstop streams text past the context window: use it with --prompt, --interactive or alone, "
                        "not --chat/--prompt_file")
    if args.chat and args.interactive:
        raise UserError("--chat and --interactive are two ways to read the terminal (chat turns, or text to continue): "
                        "pick one")
    for option in ("prompt", "system"):
        require_utf8(getattr(args, option) or "", f"--{option}")
    if args.chat and args.prompt is not None and not args.prompt.strip():
        raise UserError("--chat --prompt gives one user message, and this one is empty: write the message, or leave "
                        "--prompt out to chat in the terminal")
    if args.system is not None and not args.chat:
        raise UserError("--system sets the system message of a --chat session; add --chat")
    if args.batch_size is not None and not args.prompt_file:
        raise UserError("--batch_size is for --prompt_file runs (prompts generated together); for several samples of "
                        "one prompt use --num_samples")
    if args.num_samples > 1 and (args.prompt_file or args.chat or args.interactive):
        # the reason in the run's own terms ("is for --prompt" would puzzle a --chat --prompt run)
        one = ("a --prompt_file gives one completion per line (a repeated line the same one)" if args.prompt_file else
               "--chat gives one reply per message" if args.chat else "--interactive gives one completion per line")
        raise UserError(f"--num_samples is for --prompt without --chat, or an unconditional run: {one}; run it again "
                        f"with another --seed for more")


def read_inputs(args):
    """(prompts, path): the --prompt_file's prompts (or None) and the checkpoint's path (or the newest in models/),
    --output checked not to be either, before the model loads; --output - becomes None: stdout, as eval.py --json -."""
    if args.output == "-":
        args.output = None
    prompts = read_prompt_file(args.prompt_file) if args.prompt_file else None
    path = args.checkpoint or default_checkpoint()
    if args.output:
        check_output(args.output, "--output", inputs={"--prompt_file": args.prompt_file, "checkpoint": path})
    return prompts, path


def inference_dtype(device, name):
    """pick_dtype's dtype for --dtype name, with a warning where this CPU emulates it or runs it slower than float32 (a
    recipe's --dtype float16, made for a GPU): gen.py's, eval.py's and serve.py's."""
    dtype = pick_dtype(device, name)
    if slow := slow_on_this_cpu(device, dtype, name):
        print(f"warning: {slow}", file=sys.stderr)
    return dtype


def open_checkpoint(args, path):
    """(model, enc, device, dtype): path's model on --device and its tokenizer, after the stderr lines the user needs
    first: which checkpoint "the newest" is, and that a --chat is with a model trained on plain text."""
    device = pick_device(args.device)
    dtype = inference_dtype(device, args.dtype)
    model, enc, ckpt = load_model(path, device)
    if not args.checkpoint and not args.verbose:  # (--verbose's first line names it)
        say_newest(path)  # (a chat model's ChatML reply to a story prompt, unexplained else)
    if args.chat:
        warn_if_trained_on_text(path, ckpt)
    elif data_kind(ckpt) == "chat":
        # a chat model continuing a text answers it as a turn of its own, which ends it: say the other way
        print(f"note: {path} was fine-tuned on conversations ({ckpt.get('dataset')}): this continues the text as it "
              f"stands; gen.py --chat answers it as a chat", file=sys.stderr)
    return model, enc, device, dtype


def max_tokens_for(args, model):
    """New tokens per completion or reply: --max_tokens, else DEFAULT_MAX_TOKENS (no limit with --nonstop). A
    --max_tokens the context cannot give is warned of once, here: past the context, or for --chat past the half of it
    kept for replies; the default past a completion's context is noted, or short samples would go unexplained."""
    block_size = model.config.block_size
    if not args.max_tokens:
        if not args.nonstop and not args.chat and DEFAULT_MAX_TOKENS > block_size:
            print(f"note: the model's context holds {block_size} tokens: a completion ends where it is full, short of "
                  f"--max_tokens' default {DEFAULT_MAX_TOKENS}"
                  f"{'' if args.prompt_file else f'; --nonstop --max_tokens {DEFAULT_MAX_TOKENS} slides it on'}",
                  file=sys.stderr)  # (--nonstop alone has no limit: it runs until Ctrl-C)
        return 10**9 if args.nonstop else DEFAULT_MAX_TOKENS
    max_tokens = args.max_tokens
    least = room_after(model, block_size - reserve_for(model, max_tokens))  # a reply's tokens after the longest history
    if not args.nonstop and max_tokens > block_size:  # the rest never comes
        print(f"warning: --max_tokens {max_tokens} is more than the context holds ({block_size}): "
              f"{'a reply' if args.chat else 'a completion'} ends where it is full"
              f"{'' if args.chat or args.prompt_file else '; --nonstop slides it on'}", file=sys.stderr)
    elif args.chat and max_tokens > least:
        # (chat_prompt warns only of a turn whose newest message crowds the reply out: the others would be cut short
        # without a word)
        print(f"warning: --max_tokens {max_tokens} is more than the half of the context ({block_size}) "
              f"kept for replies: a reply gets {least} tokens or more, as many as the conversation leaves, fewer after "
              f"a message longer than the other half", file=sys.stderr)
    return max_tokens


class Session:
    """What gen.py's modes share: the model, its tokenizer, the tokens per completion, the sampling settings, and where
    text and statistics go (a terminal gets the typing rhythm, bold prompts and line breaks between words)."""

    def __init__(self, args, model, enc, max_tokens, sampling):
        self.args, self.model, self.enc, self.max_tokens, self.sampling = args, model, enc, max_tokens, sampling
        self.tty_in, self.tty_out = sys.stdin.isatty(), sys.stdout.isatty()
        self.show = Printer(TYPING_DELAY if self.tty_out and not args.no_delay else 0.0, terminal=self.tty_out)
        self.bold, self.plain = ("\033[1m", "\033[0m") if color_ok(sys.stdout) else ("", "")
        self.marker = self.bold + "> " + self.plain  # where the user types, in --interactive and --chat
        # --nonstop never stops: a story model starts the next story. Else text stops at a turn's end too, as serve.py's
        # /v1/completions does, or a chat model continuing a text would go on into turns it writes for the user
        self.text_stops = () if args.nonstop else stop_ids(enc, CHAT_STOPS)

    def log(self, msg):
        """A --verbose line: on stderr, out of the text's way."""
        if self.args.verbose:
            print(msg, file=sys.stderr)

    def report(self, stopped_by, prompt_len, new, t0, extra=""):
        """--verbose's end of a completion or reply started at t0: why it stopped (on stdout, between completions, so a
        piped transcript splits into replies), and its speed."""
        if self.args.verbose:
            dt = time.perf_counter() - t0
            print(f"[end: {stopped_by}]", flush=True)
            self.log(f"prompt {prompt_len} tokens, {new} new tokens in {dt:.2f}s: {new / max(dt, 1e-9):.1f} "
                     f"tokens/s{extra}")

    def continue_text(self, text, echo):
        """Stream a continuation of text, then a newline; echo: text first, in bold (not a line the terminal shows as
        typed). Returns why the completion stopped."""
        ids = crop_prompt(self.model, encode_prompt(self.enc, text), self.max_tokens, slide=self.args.nonstop)
        if echo and text:
            self.show(text, (self.bold, self.plain))
        t0 = time.perf_counter()
        new, _, stopped_by = complete(self.model, self.enc, ids, self.max_tokens, self.text_stops, self.show,
                                      **self.sampling)
        self.show("\n")
        self.report(stopped_by, len(ids), len(new), t0)
        return stopped_by


def text_waiting_on_stdin():
    """Whether stdin holds unread bytes (`echo "Once upon a time" | gen.py` means a prompt, which only --interactive or
    --chat read): FIONREAD counts them unread, so a script's empty open pipe says nothing, nor a terminal or Windows."""
    fcntl = common.fcntl_module()
    try:
        if fcntl is None or sys.stdin is None or sys.stdin.isatty():
            return False
        import termios
        return int.from_bytes(fcntl.ioctl(sys.stdin.fileno(), termios.FIONREAD, bytes(4)), sys.byteorder) > 0
    except (ImportError, OSError, ValueError):  # (a replaced sys.stdin without a file descriptor: io's error is both)
        return False


def run_prompt(session):
    """--prompt, or an unconditional sample: --num_samples completions, a line of dashes between them; Ctrl-C ends the
    one being generated and the run."""
    args = session.args
    if args.prompt is None and text_waiting_on_stdin():
        print("note: gen.py reads no prompt from stdin unless --interactive (each line a prompt to continue) or --chat "
              "(each line a message) is given: this sample starts from nothing", file=sys.stderr)
    for i in range(args.num_samples):
        if i:
            session.show("-" * 40 + "\n")
        if session.continue_text(args.prompt or "", echo=True) == "interrupted":
            break


def run_interactive(session):
    """--interactive: each line read (a blank one aside) is continued, until Ctrl-D."""
    # no /exit here: every line is text to continue, that one too
    for line in read_lines(session.marker, session.tty_in, quit_hint="Ctrl-D quits"):
        if line.strip():
            session.continue_text(line, echo=not session.tty_in)


def run_chat(session):
    """--chat: each line read is a user message (--prompt: the one message), answered from the history the context
    holds; /reset and /exit as CHAT_HELP says, any other /word answered with that help rather than sent to the model."""
    args, model, enc, show, tty_in = session.args, session.model, session.enc, session.show, session.tty_in
    history = [{"role": "system", "content": args.system}] if args.system else []
    lines = [args.prompt] if args.prompt is not None else read_lines(session.marker, tty_in)
    if tty_in and args.prompt is None:  # a bare "> " would tell no one how to leave or start over
        print(f"({CHAT_HELP})", file=sys.stderr)
    for line in lines:
        # (the training sets' turns are stripped: a pasted block's last newline is no part of the message)
        message = line.strip()
        if not message:
            continue
        # a command as typed with a Chinese or Japanese input method on, in full width (／ｒｅｓｅｔ): NFKC makes it ASCII
        command = unicodedata.normalize("NFKC", message)
        if command == "/exit":
            break
        if command == "/reset":
            history = history[:1] if args.system else []
            if tty_in:
                print("(history cleared)", file=sys.stderr)
            continue
        if re.fullmatch(r"/(\w+|\?)", command):  # /help, /quit, ollama's /bye: meant for gen.py, not the model
            print(f"({message} is not a command: {CHAT_HELP})", file=sys.stderr)
            continue
        history.append({"role": "user", "content": message})
        t0, info = time.perf_counter(), {}
        text, stopped_by = chat_reply(model, enc, history, session.max_tokens, show, info, **session.sampling)
        # the reply joins the history even when cut short (Ctrl-C, max_tokens): it is what was said
        history.append({"role": "assistant", "content": text})
        show("\n")
        session.report(stopped_by, len(info["prompt_ids"]), info["new_tokens"], t0,
                       f", {info['dropped']} oldest messages dropped to fit the context" if info["dropped"] else "")
        if tty_in:
            show("\n")  # air between turns on a terminal (piped, --verbose marks each reply's end)


def run_prompt_file(session, prompts, seed):
    """--prompt_file: a JSON line per prompt, {prompt, completion, end}, in the file's order, to --output (written
    whole, when all are done) or stdout; complete_batch generates them, --batch_size at a time, each from seed."""
    args, model, enc, max_tokens = session.args, session.model, session.enc, session.max_tokens
    ids = [crop_prompt(model, encode_prompt(enc, p), max_tokens, what=f"prompt {i + 1}") for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    results = complete_batch(model, enc, ids, max_tokens, session.text_stops, batch_size=args.batch_size or 8,
                             seed=seed, **session.sampling)
    dt = time.perf_counter() - t0
    # "end": as --verbose's [end: REASON], so a reader can tell a story that ended from one --max_tokens cut off
    lines = "".join(json.dumps({"prompt": p, "completion": text, "end": end}, ensure_ascii=False) + "\n"
                    for p, (text, end) in zip(prompts, results))
    if args.output:
        atomic_write_text(args.output, lines)
        print(f"wrote {args.output}", file=sys.stderr)  # as eval.py --json says (stderr, where the statistics go)
    else:
        if session.tty_out:  # JSON escapes the C0 controls, not DEL and the C1 ones (VISIBLE): escaped, same value
            lines = re.sub("[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", lines)
        sys.stdout.write(lines)
        sys.stdout.flush()
    session.log(f"{len(prompts)} prompts in {dt:.2f}s")


@common.removing_made_folders()
def main(argv=None):
    """`python gen.py ARGV` from Python (a list of options, or one string split as a shell splits it); bad input
    raises UserError. The text goes to stdout: complete() returns it instead."""
    args = parse_args(argv)
    check_options(args)
    prompts, path = read_inputs(args)
    model, enc, device, dtype = open_checkpoint(args, path)
    max_tokens = max_tokens_for(args, model)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    generator = seeded_generator(device, seed)
    sampling = dict(dtype=dtype, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, use_cache=not args.no_cache,
                    generator=generator, slide=args.nonstop)
    session = Session(args, model, enc, max_tokens, sampling)
    session.log(f"{path}: {fmt_count(model.num_params(non_embedding=False))} parameters "
                f"({fmt_count(model.num_params())} non-embedding), {model.config.variant}, context "
                f"{model.config.block_size}, vocab {enc.name} {enc.n_vocab} | device {device}, dtype "
                f"{dtype_words(device, dtype, args.dtype)}, {'no ' if args.no_cache else ''}KV cache, seed {seed}")
    try:
        if args.prompt_file:
            run_prompt_file(session, prompts, seed)
        elif args.chat:
            run_chat(session)
        elif args.interactive:
            run_interactive(session)
        else:
            run_prompt(session)
    except UserError:
        # an error mid-reply (scores that overflow) gets a line of its own, not "Once upon a timeerror: ..."
        if session.show.mid_line:
            session.show("\n")
        raise


if __name__ == "__main__":
    retain_freed_memory()  # a CPU step reuses its pages (see common.py); process-wide, so not in main()
    run_main(main)
