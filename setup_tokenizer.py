"""
Tokenizers for every script: tiktoken's GPT-2 encoding extended with the ChatML tokens, custom byte-level BPE
vocabularies trained here, and ChatML rendering with the assistant-only loss mask.

    python setup_tokenizer.py show "some text" [--tokenizer gpt2|PATH]
    python setup_tokenizer.py train --input FILE... --vocab_size 4096 --out tokenizers/story4k.tiktoken

A custom vocabulary is a .tiktoken file (one `base64(token) rank` line per token, tiktoken's own format) and is used
wherever a script takes --tokenizer. Its special tokens follow the byte-level vocabulary in the same order as GPT-2's:
<|endoftext|>, <|im_start|>, <|im_end|>. Its text is cut into pieces as GPT-2's is, but that combining marks stay in
their words (MARKS_PATTERN), a pattern its tokens tell (vocabulary_pattern).
"""
import common  # first (it is light): Ctrl-C while tiktoken loads then ends in one line, not a traceback
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import base64
import codecs
import contextlib
import functools
import hashlib
import itertools
import os
import re
import shlex
import sys
import time
import unicodedata
import zipfile

import tiktoken

from common import (ArgumentParser, VOCAB_FILE, UserError, atomic_write_text, check_output, expand_pattern, holds_nul,
                    is_dataset_folder, kept_file, model_folder_file, not_utf8, path_arg, read_meta, require_utf8,
                    run_main, starts_as_zip)

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END)
ROLES = ("system", "user", "assistant")
# tiktoken's GPT-2 pre-tokenization regex: text is cut into pieces, and BPE merges bytes within a piece only
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-2's, but a combining mark (\p{M}: a Hindi vowel sign, a decomposed accent) stays in its word, as in o200k's:
# GPT-2's cuts marks apart, so no token could join a letter and its vowel sign. Text without marks is cut as GPT-2's
# is. Custom vocabularies are trained with it (train_bpe); vocabulary_pattern tells them
MARKS_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[\p{L}\p{M}]++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# the most text (characters) a vocabulary learns from, here and in prepare.py --vocab_size: rustbpe's memory grows with
# the distinct words it sees (~330 bytes each); a GB of stories peaks at 340 MB. A larger input is sampled (VocabSample)
VOCAB_TEXT_CHARS = 10 ** 9
# and the most bytes of distinct words it learns from, what that memory grows with (50-80 bytes a byte): unspaced
# Chinese or Japanese is nearly all distinct words (40 MB of Han peaked at 1.2 GB); capped, it peaks at 400-600 MB and
# compresses as well. Spaced text stays far within it (8 MB of stories hold 0.2 MB of distinct words)
VOCAB_WORD_BYTES = 8 * 10 ** 6
WHITESPACE = re.compile(r"\s")
SAY_VOCABULARY_BYTES = 100 << 20  # input at which training a vocabulary is said before it starts (about 10 s)


# -----------------------------------------------------------------------------
# loading

def joins_a_mark(token):
    """Whether a token's text holds a letter and a combining mark side by side (partial characters at its ends left
    out), as no piece of GPT-2's pattern does."""
    kinds = [unicodedata.category(c)[0] for c in token.decode("utf-8", "ignore")]
    return any(a + b in ("LM", "ML") for a, b in zip(kinds, kinds[1:]))


def vocabulary_pattern(ranks):
    """The pre-tokenization pattern of a custom vocabulary, read from its tokens so a .tiktoken file needs nothing
    beside it: MARKS_PATTERN for one with a token joining a letter and a combining mark (only it can learn one), else
    GPT2_PATTERN (every vocabulary older than MARKS_PATTERN keeps its ids and hash)."""
    # (a mark is U+0300 or above: a byte of 0xCC or more, after at least one byte of a letter)
    marked = any(len(token) > 2 and max(token) >= 0xCC and joins_a_mark(token) for token in ranks)
    return MARKS_PATTERN if marked else GPT2_PATTERN


def _build(name, ranks, pattern):
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)})


def train_command(source=None):
    """The command that trains a vocabulary, for errors that send the user to it: written over source, the file at
    fault (else a new vocab.tiktoken); FILE stands for the user's text files (--input and --out are required)."""
    out = source if source and os.path.isfile(source) else "vocab.tiktoken"
    return common.script_command("setup_tokenizer.py", "train", "--input", "FILE", "--out", out)


def not_a_vocabulary(source):
    """The error for a file that is no .tiktoken vocabulary: junk text, a binary file, a folder, a Hugging Face model
    folder's vocab.json (whose folder is the way in), a dataset's meta.json or token file (whose vocabulary is)."""
    folder = os.path.dirname(source) or "."
    if os.path.basename(source) != VOCAB_FILE and os.path.isfile(source) and is_dataset_folder(folder):
        return UserError(f"{source} is a file of the dataset folder {folder}, not a vocabulary: pass the one it was "
                         f"made with, {dataset_vocabulary(folder)}")
    return model_folder_file(source) or UserError(
        f"{source} is not a .tiktoken vocabulary (lines of `base64 rank`): pass a file written by "
        f"`{train_command()}`, a checkpoint, a Hugging Face model folder, or gpt2")


def dataset_vocabulary(folder):
    """The vocabulary a dataset's folder was made with, as its meta.json says (a recorded VOCAB_FILE is the folder's
    own, wherever it was made): its path, gpt2, or where it went (a moved data/), for an error to name."""
    meta = read_meta(folder)
    own, made_with = os.path.join(folder, VOCAB_FILE), meta.get("tokenizer", "gpt2")
    made_with = own if os.path.basename(made_with) == VOCAB_FILE and os.path.isfile(own) else made_with
    if made_with != "gpt2" and not os.path.exists(made_with):  # the old place of a data/ moved since
        moved = moved_vocabulary(made_with, folder, meta.get("tokenizer_hash"))
        made_with = moved or f"{made_with}, gone from there (moved?): pass a copy of it"
    return made_with


def parse_bpe(text, source="tokenizer"):
    """The mergeable ranks of a .tiktoken file's text."""
    try:
        return bpe_ranks(text, source)
    except UserError as e:
        error = e
    # a copy or download that stopped mid-line (every line ends with a newline): the lines before are a vocabulary's
    # first ones, so the error names the copy, not the last line's lack of a rank
    whole = text[:text.rfind("\n") + 1]
    try:
        cut = not text.endswith("\n") and whole.strip() and bpe_ranks(whole, source, head=True)
    except UserError:
        cut = False
    if not cut:
        raise error
    raise UserError(f"{source} is cut short (its last line {text[len(whole):][:40]!r} is incomplete: a copy or "
                    f"download that stopped?): copy it again, or retrain it with `{train_command(source)}`")


def bpe_ranks(text, source, head=False):
    """parse_bpe's ranks, without the word on a file cut short; head: the text may be a vocabulary's first lines alone,
    which need not hold all 256 bytes yet."""
    ranks = {}
    try:
        for line in text.splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    except ValueError:  # binascii.Error is one too
        raise not_a_vocabulary(source) from None
    if not ranks:  # a copy that wrote nothing (a full disk, a failed download): "ranks must be 0..N-1" would hide that
        raise UserError(f"{source} is empty: copy it again, or retrain it with `{train_command(source)}`")
    if sorted(ranks.values()) != list(range(len(ranks))) or not (head or all(bytes([b]) in ranks for b in range(256))):
        raise UserError(f"{source}: ranks must be 0..N-1 and cover all 256 bytes; retrain it with "
                        f"`{train_command(source)}`")
    return ranks


@functools.lru_cache(maxsize=4)
def tokenizer_from_bpe(text, source="the vocabulary"):
    """A custom tokenizer from the text of its .tiktoken file (as stored in checkpoints); source: what an error
    names. Cached: a checkpoint's vocabulary is read as it loads and again where it is used, 50 ms for 32k tokens."""
    ranks = parse_bpe(text, source)
    enc = _build("custom", ranks, vocabulary_pattern(ranks))
    # named by its tokenizer_hash, the id meta.json, checkpoints and the errors comparing vocabularies give it: one id
    enc.name = "custom-" + tokenizer_hash(enc)
    enc.bpe_text = text  # kept so a checkpoint can carry the vocabulary itself
    return enc


# what --tokenizer takes (get_tokenizer), as prepare.py's, train.py's and show's help say it
TOKENIZER_HELP = ("gpt2, the path of a .tiktoken file (setup_tokenizer.py train), or a checkpoint's or a Hugging Face "
                  "model folder's")


def get_tokenizer(name="gpt2"):
    """'gpt2' (tiktoken's GPT-2 + ChatML: <|endoftext|> 50256, <|im_start|> 50257, <|im_end|> 50258), the path of a
    .tiktoken file trained by this script, or a checkpoint's (.pt) path or a Hugging Face model folder: the vocabulary
    it carries, so data can be prepared for a model whose vocabulary lives only in its checkpoint."""
    return _load_tokenizer(name, file_stamp(name))[0]


def model_context(name):
    """The context in tokens of the model whose vocabulary get_tokenizer(name) reads (a checkpoint's, a Hugging Face
    model folder's); None for gpt2, a .tiktoken file or tokenizer files alone. Cached with the vocabulary."""
    return _load_tokenizer(name, file_stamp(name))[1]


def file_stamp(path):
    """What tells a file (or a folder's files) apart from the one that was at its path before: a vocabulary retrained
    or rewritten in place is read afresh, not taken from the cache."""
    if path == "gpt2" or not os.path.exists(path):
        return None
    paths = [path] + ([os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [])
    stamp = []
    for p in paths:
        # a broken link in a model folder (a download cut short) is no tokenizer file
        with contextlib.suppress(OSError):
            st = os.stat(p)
            stamp.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def checkpoint_meant(name):
    """The checkpoint a --tokenizer that is no vocabulary likely meant, or None: `--tokenizer story`, a dataset's or a
    run's name, or `--tokenizer notes` (or `notes/`) beside the notes/ folder of its --source (README's own data)."""
    name = name.rstrip("/" + os.sep) or name
    return next((c for c in (f"{name}_best.pt", f"{name}.pt", os.path.join("models", f"{name}_best.pt"),
                             os.path.join("models", f"{name}.pt")) if os.path.isfile(c)), None)


def download_hint(name):
    """The end of a "not found" error for GPT-2 by name (nanoGPT's `--init_from gpt2`) or a GPT-2 folder's path: the
    command that downloads the folder, to that path; "" for another name."""
    base = os.path.basename(os.path.normpath(name))
    if not re.fullmatch(r"gpt2(-medium|-large|-xl)?", base):
        return ""
    folder = "~/models/" + base if base == name else shlex.quote(name)  # (a name: the folder README downloads to)
    return (f": download it as a folder first, `hf download openai-community/{base} config.json model.safetensors "
            f"tokenizer.json vocab.json merges.txt --local-dir {folder}`" + f", and give {folder}" * (base == name))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(name, stamp):
    """(tokenizer, model context or None) of get_tokenizer's name; stamp: file_stamp's, so that a changed file is read
    again."""
    if name == "gpt2":
        try:
            base = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline without the BPE files: requests' ConnectionError and friends
            # (the fix every script takes: not --tokenizer, which gen.py, eval.py, serve.py and bench.py lack)
            raise UserError(
                "cannot load the GPT-2 BPE files (offline?): set TIKTOKEN_CACHE_DIR to a folder holding "
                f"tiktoken's cached gpt2 files ({type(e).__name__})")
        enc = _build("gpt2", base._mergeable_ranks, GPT2_PATTERN)
        enc.bpe_text = None
        return enc, None
    if not os.path.exists(name):
        # (a checkpoint's vocabulary is the usual one, prepare.py's for a fine-tune: a misspelt one is guessed at)
        meant = checkpoint_meant(name)
        if not meant and (hint := download_hint(name)):  # (README's ~/models/gpt2, not downloaded yet)
            raise UserError(f"tokenizer {name!r} not found{hint}")
        raise UserError(f"tokenizer {name!r} not found: " + (f"did you mean {meant}?" if meant else
                        f"use 'gpt2', a checkpoint or Hugging Face model folder (its vocabulary), or the path of a "
                        f".tiktoken file from `{train_command()}`"))
    if os.path.isdir(name):
        # (imported here: hf.py imports this module, and torch)
        from hf import TOKENIZER_JSON, VOCAB_JSON, folder_context, read_tokenizer
        if any(os.path.isfile(os.path.join(name, f)) for f in (TOKENIZER_JSON, VOCAB_JSON)):
            # a Hugging Face model folder's (GPT-2's own files give "gpt2"); its context from config.json alone
            return read_tokenizer(name)[0], folder_context(name)
        if is_dataset_folder(name):  # named: a file in it, gpt2, or the --tokenizer it was made with
            raise UserError(f"{name} is a dataset's folder, not a vocabulary: pass the one it was made with, "
                            f"{dataset_vocabulary(name)}")
        meant = checkpoint_meant(name)
        if meant:
            raise UserError(f"tokenizer {name!r} is a folder without {TOKENIZER_JSON} or {VOCAB_JSON}, not a "
                            f"vocabulary: did you mean {meant}?")
        raise not_a_vocabulary(f"{name} (a folder without {TOKENIZER_JSON} or {VOCAB_JSON})")
    if zipfile.is_zipfile(name) or starts_as_zip(name):  # torch.save's: a checkpoint (cut short: load_checkpoint says)
        return checkpoint_tokenizer(name)
    try:
        with open(name, encoding="utf-8") as f:
            # its first line first: a foreign file of gigabytes (a model.safetensors, a corpus) is not read whole
            head = f.readline(1 << 16)
            if head.strip() and len(head.split()) != 2:
                raise not_a_vocabulary(name)
            return tokenizer_from_bpe(head + f.read(), source=name), None
    except (UnicodeDecodeError, UserError) as e:  # a binary file (a .tiktoken file is ASCII), or no ranks
        if name.endswith(".pt"):  # an empty or legacy checkpoint, most likely: its own error says what is wrong
            return checkpoint_tokenizer(name)
        raise e if isinstance(e, UserError) else not_a_vocabulary(name) from None


def moved_vocabulary(recorded, folder, want):
    """Where the vocabulary a dataset's meta.json names by the absolute path recorded (gone) is now, in a data/ moved
    since: the folder's own VOCAB_FILE or the path's last parts under one of folder's parents (/old/data/a/x of data/b:
    data/a/x), if it has tokenizer_hash want (an older vocabulary left there vouches for nothing); else None."""
    if not want:
        return None
    parts = os.path.normpath(recorded).split(os.sep)[1:]
    parents = [os.path.abspath(folder)]
    for _ in range(4):  # (data/b's data/, the project, and a little above)
        parents.append(os.path.dirname(parents[-1]))
    places = [os.path.join(folder, VOCAB_FILE)] + [os.path.join(parent, *parts[-k:])
                                                   for k in range(1, min(len(parts), 4) + 1) for parent in parents[1:]]
    for path in places:
        if path != recorded and os.path.isfile(path):
            with contextlib.suppress(UserError):  # (damaged: not it)
                if tokenizer_hash(get_tokenizer(path)) == want:
                    return path
    return None


def gone_vocabulary(name, meta):
    """What to say, after "{folder} was made with tokenizer ", of the gone tokenizer name a dataset's meta.json
    records: the vocabulary it held and the ways back; gpt2 only where it held GPT-2's, as a model trained on another
    vocabulary does not fit gpt2's ids."""
    held = meta.get("tokenizer_hash") and vocabulary_name(meta.get("tokenizer_name", name), meta["tokenizer_hash"])
    if held == "gpt2":  # (a GPT-2 model's folder or checkpoint: the same ids by name)
        return f"{name}, which is gone; it held GPT-2's vocabulary: pass --tokenizer gpt2"
    held = f" (it held the vocabulary {held})" if held else ""  # (none recorded: a damaged meta.json)
    return (f"{name}, which is gone{held}: put it back, or pass --tokenizer PATH to a copy "
            f"of it (a checkpoint trained on this data holds one); prepared again with another (gpt2), the data no "
            f"longer fits the models trained on it")


def fewer_ids(enc, n_vocab):
    """What to say of a vocabulary file that now reads as enc where it gave n_vocab ids (meta.json's vocab_size): one
    cut at a line break loads as a smaller vocabulary; "" when it is not smaller."""
    if not n_vocab or enc.n_vocab >= n_vocab:
        return ""
    return (f"{enc.n_vocab:,} token ids where it had {n_vocab:,}: cut short by a copy or download that stopped, or "
            f"trained again smaller")


def checkpoint_tokenizer(path):
    """(tokenizer, context) of a checkpoint file: its vocabulary and its config's block_size (None if that is no
    positive int: a damaged config, which the scripts that load the model refuse), from one load."""
    from checkpoint import load_checkpoint  # here: checkpoint.py imports this module, and torch
    ckpt = load_checkpoint(path, optimizer=False)
    context = ckpt["config"].get("block_size")
    return tokenizer_from_state(ckpt["tokenizer"]), context if type(context) is int and context > 0 else None


def tokenizer_state(enc):
    """What a checkpoint stores: the name for GPT-2, the vocabulary itself for a custom one."""
    return {"name": enc.name, "bpe": enc.bpe_text, "hash": tokenizer_hash(enc)}


def tokenizer_from_state(state):
    if state["bpe"] is None:
        return get_tokenizer(state["name"])
    # (not by the name it stored: one saved before custom names were tokenizer hashes gets the name its hash gives)
    return tokenizer_from_bpe(state["bpe"])


def vocabulary_name(name, tok_hash):
    """The name a vocabulary is shown by, of the name and tokenizer_hash a checkpoint or meta.json records: gpt2, or
    custom-<its hash>, as tokenizer_from_bpe names it now (one saved before recorded custom-<a hash of its text>)."""
    return "gpt2" if name == "gpt2" else f"custom-{tok_hash}"


def tokenizer_hash(enc):
    """Identity of a vocabulary: equal hashes mean equal token ids for every text."""
    h = hashlib.sha256(enc._pat_str.encode())
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(token)
        h.update(rank.to_bytes(4, "little"))
    for token, rank in sorted(enc._special_tokens.items(), key=lambda kv: kv[1]):
        h.update(token.encode())
        h.update(rank.to_bytes(4, "little"))
    return h.hexdigest()[:16]


# -----------------------------------------------------------------------------
# ChatML

def trained_on(message):
    """Whether the loss counts a chat message: an assistant's reply, unless its "weight" is 0 (OpenAI's fine-tuning
    format leaves such replies out)."""
    return message["role"] == "assistant" and bool(message.get("weight", 1))


@functools.lru_cache(maxsize=8)
def chatml_tokens(enc):
    """({role: its turn's opening <|im_start|>role\\n}, <|im_end|>, \\n) in enc's ids: the same for every turn, made
    once (prepare.py renders a set's every conversation)."""
    heads = {role: (enc.encode_single_token(IM_START), *enc.encode_ordinary(role + "\n")) for role in ROLES}
    return heads, enc.encode_single_token(IM_END), tuple(enc.encode_ordinary("\n"))


def render_chat(enc, messages, add_generation_prompt=False, bodies=None):
    """messages [{role, content}] -> (ids, mask), as <|im_start|>role\\ncontent<|im_end|>\\n ...; mask is 1 on the
    content and closing <|im_end|> of the replies trained_on counts, so a model learns to write and end replies, never
    to imitate the user. add_generation_prompt appends <|im_start|>assistant\\n for the model to continue.
    bodies: each message's content already encoded (prepare.py encodes a batch's on every core at once)."""
    heads, end, newline = chatml_tokens(enc)
    ids, mask = [], []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message content must be text, got {type(content).__name__}")
        # special-token strings typed by a user are encoded as plain text, never as control tokens
        body = enc.encode_ordinary(content) if bodies is None else bodies[i]
        ids += heads[role]
        ids += body
        ids.append(end)
        ids += newline
        mask += [0] * len(heads[role])
        mask += [int(trained_on(m))] * (len(body) + 1)
        mask += [0] * len(newline)
    if add_generation_prompt:
        ids += heads["assistant"]
        mask += [0] * len(heads["assistant"])
    return ids, mask


def parse_chat(enc, ids):
    """The inverse of render_chat: token ids -> messages [{role, content}]. Turns are found by the
    <|im_start|> and <|im_end|> ids, so content that spells them as text stays content; tokens
    outside a turn (<|endoftext|>, padding) and a last turn cut before its <|im_end|> are skipped."""
    start, end = enc.encode_single_token(IM_START), enc.encode_single_token(IM_END)
    messages, turn = [], None
    for i in ids:
        i = int(i)
        if i == start:
            turn = []
        elif turn is not None and i == end:
            role, _, content = enc.decode(turn, errors="replace").partition("\n")
            if role in ROLES:
                messages.append({"role": role, "content": content})
            turn = None
        elif turn is not None:
            turn.append(i)
    return messages


class StreamDecoder:
    """Token ids in, text out, as it streams: a character split across tokens is emitted once all its bytes have
    arrived. after: the ids the streamed ones continue (a prompt, which may end inside a character): a character it
    leaves unfinished comes whole with the ids that finish it; ids that do not finish it leave it to the prompt."""

    def __init__(self, enc, after=()):
        self.enc = enc
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # the unfinished character's first bytes lie in the last 3 tokens (a token is a byte or more, a character 4 at
        # most): the decoder keeps them, and what it makes of the rest is the prompt's text, not streamed
        for token_id in after[-3:]:
            self.utf8.decode(self.enc.decode_single_token_bytes(int(token_id)))
        self.held = self.utf8.getstate()[0]  # those bytes, until the stream finishes the character or breaks it
        self.prompts = len(self.held)  # how many of held's first bytes are the prompt's (the stream may add to them)

    def push(self, token_id):
        data = self.enc.decode_single_token_bytes(int(token_id))
        if not self.held:
            return self.utf8.decode(data)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(self.held + data)
        except UnicodeDecodeError as e:
            if e.start == 0:  # data breaks the character
                return self.leave_to_prompt(self.held + data, e.end)
        text = self.utf8.decode(data)
        self.held = b"" if text else self.utf8.getstate()[0]  # (nothing out: the character is not finished yet)
        return text

    def leave_to_prompt(self, data, end):
        """The text of data (held's bytes and the stream's after them) once they break the prompt's character: the
        U+FFFD for data[:end], or for the prompt's bytes where they reach further, is the prompt's and not streamed."""
        self.utf8.reset()
        self.held = b""
        return self.utf8.decode(data[max(end, self.prompts):])

    def flush(self):
        if self.held:  # the stream ends inside the prompt's character: as when a token breaks it
            try:
                codecs.getincrementaldecoder("utf-8")().decode(self.held, final=True)
            except UnicodeDecodeError as e:
                return self.leave_to_prompt(self.held, e.end) + self.utf8.decode(b"", final=True)
        return self.utf8.decode(b"", final=True)


# -----------------------------------------------------------------------------
# training a custom vocabulary

def special_token_start(text):
    """The length of the longest end of text that is the start of a special token (0 when none)."""
    for k in range(max(map(len, SPECIAL_TOKENS)) - 1, 0, -1):
        if len(text) >= k and any(tok.startswith(text[-k:]) for tok in SPECIAL_TOKENS):
            return k
    return 0


def read_text_chunks(path, chunk_chars=1 << 22):
    """Yield a text file in pieces of about chunk_chars, cut after a newline (in a longer line, never inside a special
    token), in bounded memory. Non-UTF-8 input is a UserError naming the file."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Notepad) is not text
            rest = ""
            while True:
                block = f.read(chunk_chars)
                if not block:
                    break
                # UTF-16 without a byte-order mark reads as UTF-8 with a NUL after each ASCII letter: refused. A stray
                # NUL in a large corpus is trained on, as before, not the reason a day's prepare stops
                if block.count("\0") * 8 > len(block):
                    raise holds_nul(path, block)
                block = rest + block
                cut = block.rfind("\n") + 1
                if cut == 0:  # one very long line: cut anywhere but inside a special token (its halves train as text)
                    cut = len(block) - special_token_start(block)
                if cut:
                    yield block[:cut]
                rest = block[cut:]
            if rest:
                yield rest
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except FileNotFoundError:
        raise UserError(f"input file {path} not found")


def warn_short_vocabulary(vocab_size, n):
    print(f"warning: --vocab_size {vocab_size}: the data only supports {n} tokens (no pair is left to merge); "
          f"the vocabulary has {n}", file=sys.stderr)


def train_bpe(texts, vocab_size, out_path, source="the input"):
    """Train byte-level BPE (GPT-2's pre-tokenization, marks kept in words: MARKS_PATTERN) on an iterable of texts
    with rustbpe and save a .tiktoken file. vocab_size counts the 256 bytes, the merges and the 3 special tokens;
    source names the texts in messages. Fewer tokens than asked when the text has no more pairs to merge: a warning."""
    try:
        import rustbpe
    except ImportError:
        raise UserError("training a vocabulary needs rustbpe: pip install rustbpe")
    n_special = len(SPECIAL_TOKENS)
    # 256 + n_special is the bytes alone, no merges: a character-level model on ASCII text (nanoGPT's shakespeare_char)
    if vocab_size < 256 + n_special:
        raise UserError(f"--vocab_size must be at least {256 + n_special} (256 bytes + {n_special} special tokens, "
                        f"then one per merge)")
    if vocab_size > 1 << 32:  # prepare.py stores token ids as 32-bit integers (rustbpe's own limit is about the same)
        raise UserError(f"--vocab_size must be at most {1 << 32:,} (token ids are stored as 32-bit integers)")
    # with no text rustbpe quietly returns the 256 bytes alone, whatever size was asked: refused, not a surprise later
    # (nor blank lines alone: 264 tokens of whitespace merges; leading blank chunks are dropped, later ones kept)
    texts = (t for t in texts if t)
    first = next((t for t in texts if t.strip()), None)
    if first is None:
        raise UserError(f"no text to train on in {source}: give files that hold text")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(itertools.chain([first], texts), vocab_size - n_special, pattern=MARKS_PATTERN)
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda kv: kv[1])
    n = len(ranks) + n_special
    if n < vocab_size:  # every pair in the text is merged already: usable, but not what was asked
        warn_short_vocabulary(vocab_size, n)
    text = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_write_text(out_path, text)
    return tokenizer_from_bpe(text)


class SpreadAgain(Exception):
    """VocabSample.texts()'s, on a first reading of an input of known size: the distinct words of its first size bytes
    reached VOCAB_WORD_BYTES. learn_vocabulary reads it again, documents spread over all of it."""

    def __init__(self, size):
        super().__init__(size)
        self.size = size


class VocabSample:
    """The text a vocabulary learns from, of an input of size bytes (0: not known, as a pipe's): all of it within
    VOCAB_TEXT_CHARS, else the cap's share of its documents spread over it (of a size not known, the first ones).
    No more than VOCAB_WORD_BYTES of distinct words: a first reading that reaches it (SpreadAgain) is followed by one
    spread over the input (respread). The same input gives the same sample, so the same vocabulary."""

    def __init__(self, size):
        self.size = size
        self.respread(None)

    def respread(self, first):
        """Make the sample, for a reading again, documents spread over the input, half as many bytes as first (a
        SpreadAgain) read, as spread documents hold more distinct words. None: the first reading's sample."""
        self.again = first is not None  # (a first reading may raise SpreadAgain, a reading again not)
        # the bytes of the input a document is taken from in each self.size (evenly spaced): the cap of characters, as
        # an input's characters are not known before it is read; or half a first reading's bytes
        self.step = VOCAB_TEXT_CHARS if first is None else max(first.size // 2, 1)
        self.spread = self.size if self.size > self.step else 0
        # texts()'s: characters learnt from, bytes of their distinct words, and the cap that ended the reading, if any
        self.chars, self.word_bytes, self.capped = 0, 0, None

    def share(self):
        """How an input over the cap is sampled, to go before the size of the input it names; "" when it is not."""
        # (never 100%)
        return f"{min(100 * self.step / self.size, 99.9):.3g}% of the documents of " if self.spread else ""

    def texts(self, docs):
        """The texts to learn from, of docs (each a list of texts: a document's, or a conversation's contents)."""
        owed, words = self.spread, set()  # (words: the distinct ones learnt, freed before the merges, rustbpe's peak)
        first, read = self.size and not self.again, 0  # a first reading of an input of known size, and its bytes read
        for doc in docs:
            if self.spread:  # step / spread of the documents, evenly spaced, the first one too
                owed += self.step
                if owed < self.spread:
                    continue
                owed -= self.spread
            for text in doc:
                if self.chars >= VOCAB_TEXT_CHARS:  # more: not read (a streamed hub split downloads as it is)
                    self.capped = "VOCAB_TEXT_CHARS"
                    return
                text = text[:VOCAB_TEXT_CHARS - self.chars]  # (the text itself, under the cap)
                new = new_words(text, words)
                new_bytes = sum(len(word.encode()) for word in new)
                if self.word_bytes + new_bytes > VOCAB_WORD_BYTES:
                    self.capped = "VOCAB_WORD_BYTES"
                    text = self.words_cut(text, words)
                    if first:  # the first part of the input: read again, spread
                        raise SpreadAgain(read + len(text.encode()))
                else:
                    words |= new
                    self.word_bytes += new_bytes
                if text:
                    self.chars += len(text)
                    read += len(text.encode()) if first else 0
                    yield text
                if self.capped:
                    return

    def words_cut(self, text, words):
        """text up to where its new words reach VOCAB_WORD_BYTES (a word longer than what is left cut there: a line of
        Chinese may be one word of megabytes)."""
        left = VOCAB_WORD_BYTES - self.word_bytes
        for m in re.finditer(r"\S+", text):  # (str.split()'s words: \s is its whitespace, each code point checked)
            word = m.group()
            if word in words:
                continue
            n = len(word.encode())
            if n > left:
                self.word_bytes = VOCAB_WORD_BYTES
                return text[:m.start()] + word.encode()[:left].decode("utf-8", "ignore")
            words.add(word)
            left -= n
        return text  # (not reached: texts() cuts a text whose new words pass what is left)

    def said(self, of):
        """What a sample was learnt from, of (the text it was taken from) and why; "" when it was all of the input.
        The sample and the cap are said in characters, as they are counted, the input in bytes, as files' sizes are."""
        words = f"at most {VOCAB_WORD_BYTES / 1e6:,.0f} MB of distinct words, VOCAB_WORD_BYTES: memory grows with them"
        if self.capped == "VOCAB_WORD_BYTES":  # (spread too: the documents of the input's first part)
            first = f"{self.share()}the first part of the {self.size / 1e6:,.0f} MB of input; " if self.spread else ""
            return f"the first {chars(self.chars)} of {of} ({first}{words})"
        why = words if self.again else \
            f"at most {chars(VOCAB_TEXT_CHARS)}, VOCAB_TEXT_CHARS: memory grows with the distinct words learnt"
        if self.spread:
            return (f"{chars(self.chars)} of {of} ({self.share()}the {self.size / 1e6:,.0f} MB of input, spread "
                    f"over it; {why})")
        return f"the first {chars(self.chars)} of {of} ({why})" if self.capped else ""


def learn_vocabulary(sample, docs, vocab_size, out_path, source):
    """train_bpe on sample's texts of docs(), a function giving the input's documents: called again where a first
    reading's words reached VOCAB_WORD_BYTES (SpreadAgain), for a sample spread over the input, not its first part."""
    try:
        return train_bpe(sample.texts(docs()), vocab_size, out_path, source)
    except SpreadAgain as e:
        sample.respread(e)
        return train_bpe(sample.texts(docs()), vocab_size, out_path, source)


def new_words(text, words):
    """The distinct words (runs of text between whitespace) of text that are not in words. A long text is split 64k
    characters at a time, cut at whitespace: a MB of English split at once held some 30 MB of strings."""
    new, start = set(), 0
    while start < len(text):
        end = WHITESPACE.search(text, start + (1 << 16)) if len(text) - start > 1 << 16 else None
        end = end.start() if end else len(text)
        piece = text[start:end].split()
        if not words.issuperset(piece):  # (no set made where every word is known: most text, once its common words are)
            new.update(piece)
        start = end
    return new.difference(words)


def chars(n, digits=0):
    """n characters, said in millions ("1,000M characters")."""
    return f"{n / 1e6:,.{digits}f}M characters"


def say_training(vocab_size, sample, size, what=""):
    """The line said before a vocabulary of vocab_size trains on an input of size bytes (what: which text of it) of
    SAY_VOCABULARY_BYTES or more: it takes a while, and Ctrl-C waits for the merges (rustbpe holds the interpreter)."""
    if size >= SAY_VOCABULARY_BYTES:
        print(f"training a {vocab_size:,}-token vocabulary on {sample.share()}{size / 1e6:,.0f} MB of input{what}: "
              f"about a minute a GB on one core, more where the text has many distinct words (Ctrl-C waits for the "
              f"final merges)", flush=True)


def train_tokenizer(files, vocab_size, out_path, sample=None):
    """train_bpe on text files, read in bounded memory, on a VocabSample of them
    (sample: one to say, else made here)."""
    from prepare import SUFFIXES, suffix, table_fix  # here: prepare.py imports this module
    for path in files:  # refused before training, not when its turn comes
        if path == "-" and not os.path.exists(path):  # the usual name of standard input, which "no such file" hid
            raise UserError("--input -: give /dev/stdin to read standard input")
        if not os.path.exists(path):  # a typo in the last of several inputs was found after reading all the others
            raise UserError(f"--input {path}: no such file")
        if os.path.isdir(path):
            raise UserError(f"--input {path} is a folder: give the text files in it, "
                            f"e.g. {os.path.join(path, '*.txt')}")
        # a dataset's token file or a vocabulary passes for text (few NULs, valid UTF-8): refused, as a checkpoint is
        kept = kept_file(path)
        if kept:
            raise UserError(f"--input {path} is {kept}, not text: give the text files it was made from")
        # a spreadsheet's export (.csv, .tsv) too, which prepare.py reads once its rows are JSON Lines (table_fix)
        table = table_fix(path)
        if table or suffix(path) in SUFFIXES and suffix(path) != ".txt":
            # read as text, a chat .jsonl spends merges on its JSON ('{"role": "'), not on its conversations' contents
            prepare = common.script_command("prepare.py", "--source", path + ".jsonl" if table else path,
                                            "--vocab_size", str(vocab_size), "--name", "NAME")
            raise UserError(f"--input {path} holds records, whose syntax this would train on as text"
                            f"{table + '; then' if table else ':'} train on their text with `{prepare}` (it writes "
                            f"data/NAME/tokenizer.tiktoken)")

    def docs():
        for path in files:
            for chunk in read_text_chunks(path):
                # special tokens separate documents; they must never become merges
                for doc in chunk.split(EOT):
                    if doc:
                        yield [doc]

    sample = sample or files_sample(files)
    say_training(vocab_size, sample, sum(map(os.path.getsize, files)))  # (after the checks: a bad input is one line)
    return learn_vocabulary(sample, docs, vocab_size, out_path, ", ".join(files))


def datasets_reading(path, out_dir):
    """The prepared datasets in out_dir (data/) whose meta.json names the vocabulary file path, and whose
    tokenizer_hash it still has: retrained in place, they would no longer read. A damaged vocabulary holds none."""
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    metas = {f: read_meta(f) for f in (os.path.join(out_dir, n) for n in names) if is_dataset_folder(f)}
    named = {f: meta.get("tokenizer_hash") for f, meta in metas.items() if isinstance(meta.get("tokenizer"), str)
             and os.path.exists(meta["tokenizer"]) and os.path.samefile(meta["tokenizer"], path)}
    if not named:
        return []
    try:
        have = tokenizer_hash(get_tokenizer(path))
    except UserError:
        return []
    return [f for f, want in named.items() if want == have]


def files_sample(files):
    """The VocabSample of text files, spread over them by their sizes; with a pipe (/dev/stdin, no size) among them,
    the input's first documents, up to the cap."""
    return VocabSample(sum(map(os.path.getsize, files)) if all(os.path.isfile(f) for f in files) else 0)


# -----------------------------------------------------------------------------

@common.removing_made_folders()
def main(argv=None):
    # the docstring's examples, as every script's --help gives its own (none under python -OO, which drops docstrings)
    examples = (__doc__ or "").split("\n\n")[1:2]
    about = "\n\n".join(["Show how text tokenizes, or train a custom BPE vocabulary.", *examples])
    p = ArgumentParser("setup_tokenizer.py", formatter_class=argparse.RawDescriptionHelpFormatter, description=about)
    # the metavar: without a command, argparse's error named the dest ("required: cmd"), not the commands to give
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{show,train}")
    s = sub.add_parser("show", help="print the tokens and ids of a text")
    s.add_argument("text", help="the text to tokenize (special tokens such as <|im_start|> are read as tokens)")
    s.add_argument("--tokenizer", type=path_arg, default="gpt2", help=f"{TOKENIZER_HELP} (default: gpt2)")
    t = sub.add_parser("train", help="train a byte-level BPE vocabulary on text files")
    t.add_argument("--input", type=path_arg, nargs="+", required=True,
                   help="UTF-8 text files, a pattern such as 'notes/*.txt', or /dev/stdin (a pipe)")
    t.add_argument("--vocab_size", type=int, default=4096,
                   help="total ids: 256 bytes + merges + 3 special tokens (default: 4096)")
    t.add_argument("--out", type=path_arg, required=True,
                   help="where to write the .tiktoken file (a vocabulary there is trained again in place, unless a "
                        "dataset in data/ was prepared with it; no other file is replaced)")
    args = p.parse_args(argv)

    if args.cmd == "show":
        require_utf8(args.text, "the text")
        enc = get_tokenizer(args.tokenizer)
        ids = enc.encode(args.text, allowed_special="all")
        for i in ids:
            piece = enc.decode_single_token_bytes(i)
            text = ""
            if not piece.isascii():  # its characters beside: b'\xe4\xbd\xa0\xe5\xa5\xbd' alone is no "你好" to a reader
                with contextlib.suppress(UnicodeDecodeError):  # (part of a character: no text of its own)
                    text = f"  {piece.decode()!r}"
            print(f"{i:>6}  {piece!r}{text}")
        print(f"{len(ids)} tokens, {len(args.text.encode())} bytes, vocabulary {enc.n_vocab} ({enc.name})")
    else:
        args.input = [f for given in args.input for f in expand_pattern(given, "--input")]
        # before the training, not after it; a vocabulary retrained in place, unless a dataset's or model folder's
        check_output(args.out, "--out", inputs={"--input": args.input}, vocabulary=True)
        if os.path.isfile(args.out):
            from prepare import DEFAULT_OUT_DIR  # (here: prepare.py imports this module)
            used = datasets_reading(args.out, DEFAULT_OUT_DIR)
            if used:
                raise UserError(f"--out {args.out} is the vocabulary {', '.join(used)} "
                                f"{'is' if len(used) == 1 else 'are'} prepared with: retrained in place, that data "
                                f"would no longer read (nor, remade, fit the models trained on it); give another --out "
                                f"(and prepare with that --tokenizer)")
        t0 = time.time()
        sample = files_sample(args.input)
        enc = train_tokenizer(args.input, args.vocab_size, args.out, sample)
        # the files' sizes, but for a pipe's (0): what was read of it, in characters, as said() counts them
        files = all(map(os.path.isfile, args.input))
        on = sample.said("the text") or (f"{sum(map(os.path.getsize, args.input)) / 1e6:.1f} MB" if files else
                                         chars(sample.chars, 1))
        print(f"trained {enc.n_vocab} tokens on {on} in {time.time() - t0:.1f}s -> {args.out}")


if __name__ == "__main__":
    run_main(main)
