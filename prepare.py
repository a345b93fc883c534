"""
Turn stories, dialogues and instruction data into token files for train.py.

    python prepare.py                                  # every dataset it can find
    python prepare.py --dataset story --limit 500      # a quick demo
    python prepare.py --dataset shakespeare --vocab_size 259   # bytes as tokens: nanoGPT's shakespeare_char
    python prepare.py --dataset text --source notes/ --name notes
    python prepare.py --dataset chat --source chats.jsonl --tokenizer tokenizers/story4k.tiktoken
    python prepare.py --mix dailydialog:1,chat:2 --name mychat   # several chat sets in one, by weight
    python prepare.py --dataset dailydialog --tokenizer models/story_best.pt   # its vocabulary, packed at its context

Each dataset becomes a folder data/<name>/ (--out_dir DIR: DIR/<name>/) with
    train.bin, val.bin              token ids, uint16 when the vocabulary fits, else uint32 (np.memmap them)
    train_mask.bin, val_mask.bin    conversations only: uint8, 1 where the loss counts
                                    (assistant replies and their <|im_end|>), aligned token for token
    tokenizer.tiktoken              --vocab_size only: the vocabulary trained on the data, a file --tokenizer takes
    meta.json                       written last: a folder is a complete dataset exactly when it has one
Documents are each followed by <|endoftext|>; conversations are ChatML (setup_tokenizer.render_chat).

Packing (conversation sets, --pack BLOCK; default: the context of the model --tokenizer names, a checkpoint or a Hugging
Face model folder, which train.py fine-tunes at its context; else 256, the tiny and small models'). train.py cuts a
split into windows of BLOCK tokens at stride BLOCK, so a conversation that straddles a multiple of BLOCK is cut in two:
the second window trains on replies whose question it cannot see. Packed, the file is a sequence of blocks of BLOCK
tokens and no conversation crosses a block boundary unless it is longer than a block: conversations wait in a buffer of
1,000 (PACK_LOOKAHEAD), each block takes the longest waiting one that still fits, and when none fits the rest of the
block is <|endoftext|> padding with mask 0 (1-5% of the tokens on the mirror's sets, against 19-28% when conversations
are placed in order). A conversation longer than a block is cut into pieces of at most a block, each closed by
<|endoftext|> and placed like a conversation: cut before a user message, so a reply keeps its question, or where a
single exchange is longer than a block, before any turn (<|im_start|>) that follows a reply; turns that train nothing (a
system message, a question) stay with the reply after them, as a piece longer than a block if need be, and those at its
end, with no reply after them (a final question), are left out. Only such a piece crosses a boundary: it starts a block,
and its reply's start trains with its question. The file ends with a whole block and one more <|endoftext|>, so
train.py's last window (it reads BLOCK + 1 tokens) exists. Every block starts with <|im_start|> or padding, both mask 0
(but inside a piece longer than a block), so the target a window takes from the next block never counts. Train with
--block_size BLOCK (a multiple of it keeps the blocks whole, not a longer conversation's pieces together). Plain text is
never packed: it trains on every token, so padding would be learned. The tokens are written unpacked first, then packed:
twice the disk for a moment.

Mixing (--mix NAME:WEIGHT,...). Each dataset is tokenized on its own; the mix keeps the total train size of its sources
put together and gives each source WEIGHT / (sum of weights) of its tokens: a source above its natural share has
documents repeated, one below it a random subset (seeded: the same every run). Validation holds each source's own
validation documents once, unweighted, less those another source trains on or validates on before it. meta.json's "mix"
records what each source contributed.

Sources, first found wins: --source files (.txt, .jsonl, .json, .parquet) or a hub dataset of such records
(--source hf:NAME[:CONFIG[:SPLIT]], streamed; val is its validation split, else train's tail), the local mirror
in $DATA_MIRROR (see its README.md), then the Hugging Face hub (shakespeare: char-rnn's file, downloaded
once into ~/.cache/gpt-trainer; chitchat is generated here and takes no source).
"""
import common  # first (it is light): Ctrl-C while numpy and tiktoken load then ends in one line, not a traceback
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import bisect
import collections
import contextlib
import functools
import glob
import hashlib
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sys
import time
from array import array
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import (ArgumentParser, NotText, UTF16_BOMS, VOCAB_FILE, UserError, at_least, atomic_write_text,
                    check_output, decompress_fix, expand_pattern, first_bad_utf8, first_line, fmt_count, fsync_replace,
                    held_lock, holds_nul, json_kind, make_folders, mended_path, name_full_disk, nonempty,
                    nonnegative_int, not_utf8, parts_text, path_arg, prepare_lock, progress_bar, python_command,
                    read_items, read_meta, refuse_dataset_folder, remove_stale_tmp, removing_made_folders, run_main,
                    stray_byte_fix, tmp_name, tmp_pattern, without_surrogates)
from setup_tokenizer import (EOT, IM_END, IM_START, SPECIAL_TOKENS, TOKENIZER_HELP, VocabSample, fewer_ids,
                             get_tokenizer, gone_vocabulary, learn_vocabulary, model_context, render_chat,
                             moved_vocabulary, read_text_chunks, say_training, tokenizer_hash, trained_on,
                             warn_short_vocabulary)

FORMAT = 1   # layout of meta.json and the .bin files
VERSION = 14  # bump when the same inputs would give other tokens or counts, so existing datasets rebuild
             # (this line's git log says what each bump changed)
DATASETS = ("story", "shakespeare", "dailydialog", "chat", "chitchat", "knowledge", "text")
# what a bare `python prepare.py` builds
EVERYTHING = ("story", "shakespeare", "dailydialog", "chat", "knowledge", "chitchat")
MIXABLE = ("dailydialog", "chat", "knowledge", "chitchat")  # the conversation sets, which --mix combines
# nanoGPT's dataset names, typed by habit: the dataset and options that make them here (a token per byte, no merges)
NANOGPT_DATASETS = {"shakespeare_char": ("shakespeare", ["--vocab_size", str(256 + len(SPECIAL_TOKENS))])}
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
# Markdown notes: plain text, read when named (in a folder a .md is as often a README)
MARKDOWN = (".md", ".markdown")
# source code, plain text read when named as Markdown is (in a folder a .py may be a dataset's loading script), each
# file one document whole: a literal <|endoftext|> in it (tokenizer code) is text, not a separator
CODE = (".py", ".pyi", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".java", ".kt",
        ".go", ".rs", ".rb", ".php", ".swift", ".scala", ".lua", ".sh", ".pl", ".r", ".jl", ".sql", ".hs", ".ml",
        ".html", ".css", ".toml", ".yaml", ".yml", ".rst", ".tex")
NAMED_TEXT = (*MARKDOWN, *CODE)  # plain text read when named, not in a folder
PLAIN_TEXT = (".txt", *NAMED_TEXT)  # the files read as plain text (text_docs)
# a Markdown note's YAML front matter ("---", "key: value" lines, "---" or "..."), metadata a model of one's notes
# learnt to begin with; its first line must be a key, so a note opening with a rule (---) and a paragraph keeps them
YAML_LINE = r"(?:[^\W\d][\w .-]*:|[ \t#-])[^\n]*\n|\r?\n"
FRONT_MATTER = re.compile(rf"---[ \t]*\r?\n[^\W\d][\w .-]*:[^\n]*\n(?:{YAML_LINE})*?(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)")
# what prepare.py writes in a dataset's folder besides meta.json: no source's files, when --source is that folder
OWN_FILES = ("train.bin", "val.bin", "train_mask.bin", "val_mask.bin", VOCAB_FILE)
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# a batch is one threaded encode call: large enough for every core, small enough that its Python token lists stay
# a few tens of MB whatever the corpus size
BATCH_DOCS, BATCH_CHARS = 8192, 4 << 20
# the tiny and small presets' context (model.PRESETS, not imported: prepare.py runs without torch)
DEFAULT_PACK = 256
MAX_PACK = 1 << 20  # past any model's context
# prepare()'s and the command line's, which rebuild_command leaves out
DEFAULT_OUT_DIR, DEFAULT_VAL_FRACTION = "data", 0.1
# conversations the packer holds back to choose from, costing only their tokens in memory: at 256, 64 leave 3.6%
# padding, 1000 leave 2.2%
PACK_LOOKAHEAD = 1000
MIX_SEED = 1337  # which documents a mix repeats or leaves out, and their order: the same every run

# files of the local mirror ($DATA_MIRROR/README.md): "main" files give train and, from the
# tail of each, val; "val" files are a source's own validation split; "extra" files are train-only
MIRROR = {
    # the lowercased head, 4x the cased one, helps the 10-minute CPU run (BENCHMARKS.md); val stays the cased one's
    "story": {"main": ["tinystories/TinyStories-sample.txt"],
              "extra": ["tinystories/TinyStories-train-head.txt", "tinystories/TinyStories-train-head-lowercase.txt"]},
    "shakespeare": {"main": ["shakespeare/input.txt"]},
    "dailydialog": {"main": ["dailydialog/dialogues_train.txt"], "val": ["dailydialog/dialogues_validation.txt"]},
    "chat": {"main": ["alpaca/alpaca_5000.json", "alpaca/alpaca_en_demo.json",
                      "conversations/fastchat_dummy_conversation.json"]},
    "knowledge": {"main": ["gsm8k/train.jsonl"]},
}
# the same data on the hub: (path, config, train split, validation split or None)
HUB = {
    "story": ("roneneldan/TinyStories", None, "train", "validation"),
    "dailydialog": ("li2017dailydialog/daily_dialog", None, "train", "validation"),
    "chat": ("tatsu-lab/alpaca", None, "train", None),
    "knowledge": ("openai/gsm8k", "main", "train", None),
}
# char-rnn's Tiny Shakespeare, which the hub has only as a loading script datasets no longer runs; fetched by one
# urlopen (datasets reads a URL only with aiohttp, which it no longer installs)
URLS = {"shakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"}


def suffix(path):
    """The file type: ".txt" of notes.TXT too (Windows and cameras write upper case)."""
    return os.path.splitext(path)[1].lower()


def table_fix(path):
    """The way out for a spreadsheet (.csv, .tsv): a pandas command that writes its rows, columns as fields, as JSON
    Lines records next to it (chats.csv.jsonl: no file of the user's replaced); "" for another file type."""
    sep = {".csv": ",", ".tsv": "\t"}.get(suffix(path))
    if sep is None:
        return ""
    source, convert = path, ""
    with contextlib.suppress(OSError):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                header = f.readline(1 << 16)
            # Excel's "CSV" uses the locale's list separator: a semicolon where the decimal point is a comma
            if sep == "," and b"," not in header:
                sep = next((s for s in (";", "\t") if s.encode() in header), sep)
            if first_bad_utf8(path):
                # Excel's "CSV (Comma delimited)" is in cp1252 in the West: converted first, as a text file is
                source, convert = mended_path(path), f"{not_utf8(path)}; then "
    # every cell as text ("NA" and "007" as written), column names stripped and lowercased (Excel's "Answer ")
    code = f'import pandas; pandas.read_csv({json.dumps(source)}{", sep=" + json.dumps(sep) if sep != "," else ""}, ' \
           f'dtype=str, keep_default_na=False).rename(columns=lambda c: c.strip().lower()).to_json(' \
           f'{json.dumps(path + ".jsonl")}, orient="records", lines=True)'
    return f"; a {suffix(path)} file's rows as JSON Lines records, its columns their fields: " \
           f"{convert}`{python_command()} -c {shlex.quote(code)}`"


def notebook_fix(path, pattern=None):
    """The way out for a Jupyter notebook (.ipynb, JSON whose text would train as its markup): a command that writes
    its code cells as a .py next to it (nb.ipynb.py: no file of the user's replaced), source code prepare.py reads;
    "" for another file type. pattern: the glob that matched it (or a folder's notebooks): the command writes every
    notebook it matches, not one a run (a folder of them was refused one notebook at a time, or with no command)."""
    if suffix(path) != ".ipynb":
        return ""
    # a cell's source is a list of lines, or one string (nbformat takes either): joined, either is its text
    cells = '"\\n\\n".join("".join(c["source"]) for c in json.load(open(p, encoding="utf-8"))["cells"] ' \
            'if c["cell_type"] == "code") + "\\n"'
    if pattern is None or pattern == path:
        code = f'import json; p = {json.dumps(path)}; open(p + ".py", "w", encoding="utf-8").write({cells})'
        return f"; a notebook's code cells as a .py file, which prepare.py reads: " \
               f"`{python_command()} -c {shlex.quote(code)}`"
    code = f'import glob, json; [open(p + ".py", "w", encoding="utf-8").write({cells}) for p in ' \
           f'glob.glob({json.dumps(pattern)}, recursive=True) if p.lower().endswith(".ipynb")]'
    return f"; each notebook's code cells as a .py file next to it: `{python_command()} -c {shlex.quote(code)}`, " \
           f"then --source {shlex.quote(pattern + '.py')}"


class NoSource(UserError):
    """No --source, mirror or hub has the data: a bare `python prepare.py` skips the dataset."""


class OtherSource(UserError):
    """A dataset made from --source files, to be made again from the mirror or the hub: a bare `python prepare.py`
    skips it."""


class TokenizerGone(UserError):
    """A dataset made again keeps its tokenizer, and that file is gone or holds another vocabulary now: a bare
    `python prepare.py` skips it."""


# -----------------------------------------------------------------------------
# reading documents
# A document is (text, ends) -- ends False for a piece of a long text whose rest follows,
# so a big file streams in bounded memory -- or a conversation [{role, content}].

def text_docs(path):
    """A .txt file: documents separated by the literal <|endoftext|> (TinyStories style), else one document, streamed in
    pieces cut after a newline; source code (CODE) always one. Elsewhere special-token strings stay plain text
    (encode_ordinary)."""
    separated, blank, code = False, True, suffix(path) in CODE  # (code is read as it is: CODE)
    chunks, head = read_text_chunks(path), None
    try:
        for i, chunk in enumerate(chunks):  # a first look, as far as the first separator (a book: the whole file)
            head = chunk if i == 0 else None  # kept while the look reads one chunk, which is then not read again
            if blank and not code:
                refuse_records(path, chunk)
            blank = blank and not chunk.strip()
            if EOT in chunk and not code:  # (read_text_chunks cuts no special token in two)
                separated = True
                break
    except NotText:
        # Excel's "Unicode Text" (UTF-16, tab-delimited): said to be a table first, then its conversion
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            if head[:2] in UTF16_BOMS:
                refuse_records(path, head.decode("utf-16", "replace"))
        raise
    if blank and not separated:
        return
    # a file of one chunk (a folder's notes) is read once; a longer one again from its start
    chunks = itertools.chain([head], chunks) if head is not None else read_text_chunks(path)
    if not separated:
        # one document; its cuts between pieces may tokenize a newline run otherwise, not changing the text
        prev = None
        for chunk in chunks:
            if prev is not None:
                yield prev, False
            prev = chunk
        yield prev, True
        return
    yield from separated_docs(chunks, lambda text: text.split(EOT))


# the fields record_doc reads a list of turns under (`contents`: Gemini's role/parts; `chat_messages`: Claude's export)
TURNS_FIELDS = ("messages", "conversations", "conversation", "contents", "chat_messages")
# the (prompt, reply, input) fields of the prompt-and-reply shapes, the input after the prompt; the first here wins
PAIRS = (("instruction", "output", "input"),  # Alpaca (a seed task's `instances`, its input/output pairs: record_docs)
         ("instruction", "response", "context"),  # Databricks Dolly
         ("question", "answer", None),  # GSM8K
         ("prompt", "completion", None),  # OpenAI's legacy fine-tuning files, TRL's prompt-completion
         ("prompt", "response", None),
         ("query", "response", None),  # MetaMathQA
         ("question", "response", None),  # OpenOrca (its system_prompt the system message)
         ("input", "output", None),
         ("problem", "solution", None))  # MATH, NuminaMath
# the fields a record's system message may be under: OpenAI's, OpenOrca's, Gemini's (REST, then its SDKs' spelling)
SYSTEM_FIELDS = ("system", "system_prompt", "systemInstruction", "system_instruction")
# the last line of a GSM8K answer (#### 72): the record shape whose calculator annotations record_doc drops
GSM8K_FINAL = re.compile(r"(?:^|\n)#### [^\n]*\s*$")
# what Claude's export writes for a block it leaves out (a tool's call, an artifact): a model trained on it said it
CLAUDE_PLACEHOLDER = re.compile(r"(?:```[ \t]*\n)?[ \t]*(?:This block is not supported on your current device yet\.|"
                                r"Viewing artifacts created via the Analysis Tool web feature preview isn't yet "
                                r"supported on mobile\.)[ \t]*(?:\n```)?")
RECORD_FIELDS = (*TURNS_FIELDS, *dict.fromkeys(p for p, _, _ in PAIRS), "dialog", "mapping", "text")


def bare_turns(record):
    """Whether a JSON record is a conversation's turns without their field (a list of objects), as some chat exports
    write a line."""
    return isinstance(record, list) and bool(record) and all(isinstance(t, dict) for t in record)


# how a chat template opens a turn: the marker, a role, a line break
CHATML_TURN = re.compile(rf"\s*{re.escape(IM_START)}[A-Za-z_][\w-]*[ \t]*\r?\n")


def chatml_text(text, where, way_out, file="IN.jsonl"):
    """The UserError for text (a record's, or a .txt file's start) that starts with IM_START: a conversation a chat
    template wrote out (way_out: how to give it instead), or, with no role after the marker, plain text wrapped in the
    markers as minimind's pretraining files write it, told how to take them out of file (IN.jsonl for a hub row)."""
    if CHATML_TURN.match(text):
        return UserError(f"{where}: a conversation written out in ChatML ({IM_START}role ... {IM_END}), which plain "
                         f"text would train on as words, every turn in the loss{way_out}")
    plain = re.sub(r"(\.[^./]*)?$", r".plain\g<0>", file, count=1)
    return UserError(f"{where}: text wrapped in {IM_START} ... {IM_END} with no role after {IM_START} (as minimind's "
                     f"pretraining files write it), which plain text would train on as words: take the markers out, "
                     f"as in: sed -e 's/{IM_START}//g' -e 's/{IM_END}//g' {shlex.quote(file)} > {shlex.quote(plain)}")


def preference_pair(record, where):
    """The UserError for a record of chosen and rejected replies (DPO's data), with a jq command that writes the chosen
    replies as conversations where the record's shape allows (IN.jsonl stands for its file)."""
    if isinstance(record["chosen"], list) and isinstance(record.get("prompt", []), list):
        jq = "{messages: ((.prompt // []) + .chosen)}"
    elif isinstance(record["chosen"], str) and isinstance(record.get("prompt"), str):
        jq = "{prompt, completion: .chosen}"
    else:
        jq = None
    way = (f": to fine-tune on the chosen replies, write them as conversations, e.g. jq -c {shlex.quote(jq)} "
           "IN.jsonl > IN.chosen.jsonl") if jq else ""
    return UserError(f"{where}: a preference pair (chosen/rejected, for DPO or a reward model), which prepare.py does "
                     f"not read: train.py trains on replies, not on a choice between two{way}")


def refuse_records(path, text):
    """A UserError when text, the start of the .txt (or Markdown) file path, is a JSON record or a table's header on its
    first line: read as plain text, it would be trained on as words, with no loss mask."""
    line = text.lstrip().partition("\n")[0]
    kind = f"a {suffix(path)} file"  # (a Markdown note's too, read as a .txt is: not "a .txt file")
    if line.startswith(IM_START):  # a chat template's output saved as text: plain text trains its markers as words
        raise chatml_text(text.lstrip(), path, f"; {kind} is read as plain text: write the conversations as .jsonl "
                          "records of `messages`", file=path)
    if line[:1] in ("{", "["):
        with contextlib.suppress(ValueError, RecursionError):  # (a line of a thousand ['s: text, not a traceback)
            record = json.loads(line)
            field = next((f for f in RECORD_FIELDS if isinstance(record, dict) and f in record), None)
            if field or bare_turns(record):
                raise UserError(f"{path}: its first line is a JSON record ({f'of `{field}`' if field else 'turns'}), "
                                f"but {kind} is read as plain text (its JSON trained on as words): name it .jsonl")
    # a spreadsheet saved as text whose header names a prompt and reply: as a .tsv or .csv, table_fix makes it records
    for sep, ext in (("\t", ".tsv"), (",", ".csv"), (";", ".csv")):
        cells = [c.strip().strip('"').lower() for c in line.split(sep)]
        if len(cells) > 1 and any(p in cells and r in cells for p, r, _ in PAIRS):
            raise UserError(f"{path}: its first line is a table's header ({', '.join(cells)}), but {kind} is read "
                            f"as plain text (its rows trained on as words): name it {ext}, and prepare.py names the "
                            f"command that makes its rows records")


def separated_docs(chunks, split):
    """The documents of a text file's chunks (read_text_chunks) that split (str -> list of documents) cuts at its
    separators, stripped, the empty ones left out."""
    rest = ""
    for chunk in chunks:
        # what follows the last separator waits for the next chunk: the document it begins goes on there
        *docs, rest = split(rest + chunk)
        yield from ((d.strip(), True) for d in docs if d.strip())
    if rest.strip():
        yield rest.strip(), True


# a single newline between two non-empty lines: TinyStories-train-head's story separator (one ending a chunk waits)
STORY_BREAK = re.compile(r"(?<!\n)\n(?!\n|\Z)")


def story_line_docs(path):
    """TinyStories-train-head.txt: stories separated by a single newline, paragraphs by a blank line (upstream lost the
    real separators: a story whose paragraphs were single newlines comes out as several)."""
    return separated_docs(read_text_chunks(path), STORY_BREAK.split)


# TinyStories' mojibake: punctuation U+2000-U+203F (quotes, dashes, the ellipsis) whose UTF-8 bytes E2 80 xx were read
# as cp1252 upstream, “ as â€œ, ” as â€ alone (0x9D is no cp1252 character). Each key is the character's own bytes read
# as cp1252, so text without â€ stays byte for byte
MOJIBAKE = {"â€" + c: bytes([0xE2, 0x80, b]).decode("utf-8")
            for b in range(0x80, 0xC0) if (c := bytes([b]).decode("cp1252", "ignore"))}
MOJIBAKE_RUN = re.compile("â€[" + re.escape("".join(k[2] for k in MOJIBAKE)) + "]?")


def mend_mojibake(text):
    """text with its MOJIBAKE sequences (â€ alone: ”) made the characters meant, and how many there were."""
    return MOJIBAKE_RUN.subn(lambda m: MOJIBAKE.get(m[0], "”"), text)


def mended_docs(make_docs, label, mended):
    """The documents of make_docs(), their mojibake mended and counted under mended[label]: the most one pass has
    mended, as each pass over a file reads it from its start."""
    n = 0
    for doc in make_docs():
        if doc_kind(doc) == "text":
            text, k = mend_mojibake(doc[0])
            if k:
                doc, n = (text, doc[1]), n + k
                mended[label] = max(mended.get(label, 0), n)
        yield doc


def extra_docs(path, earlier=(), main=(), repeats=None):
    """A train-only extra file's stories, less those an earlier extra file has (the lowercased TinyStories head starts
    with the cased one's) or the main files have (their tail is val), case and spacing ignored; those left out are
    counted under repeats[path], as mended_docs counts."""
    seen = {folded(d) for f in earlier for d, _ in story_line_docs(f)} | \
        {folded(d) for f in main for d, _ in text_docs(f)}
    n = 0
    for d, ok in story_line_docs(path):
        if folded(d) not in seen:
            yield d, ok
        elif repeats is not None:
            n += 1
            repeats[path] = max(repeats.get(path, 0), n)


# each starts with a literal where it can: re scans for that first, which keeps a 6 MB file under a second
DAILYDIALOG_FIXES = [
    # I ' Ve -> I've; quotes stay
    (re.compile(r" '(?<=[^\W_] ') ((?i:s|t|m|d|re|ve|ll|clock))\b"), lambda m: "'" + m[1].lower()),
    (re.compile(r" +(?=[.,?!;:%)\]”])"), ""),             # word , -> word,
    (re.compile(r"([(\[“$£]) +"), r"\1"),                # ( word -> (word, $ 5 -> $5
    (re.compile(r"\.(?<=[a-z]\.)(?=[A-Z][a-z])"), ". "),  # right.But -> right. But
]


def tidy_dailydialog(text):
    """DailyDialog is tokenized with spaces around punctuation ("I ’ m here , too ."): undo the common cases."""
    text = " ".join(text.split()).replace("’", "'")
    for pattern, replacement in DAILYDIALOG_FIXES:
        text = pattern.sub(replacement, text)
    return text


def alternate(turns):
    """Turns of a two-person dialogue: the user speaks first."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def spoken(messages):
    """messages without the empty ones, dropped after alternate() gives the roles, so that the turns after an empty
    one (or after the nothing that follows a line's last __eou__) keep their speakers, and the mask its replies."""
    return [m for m in messages if m["content"]]


def dailydialog_docs(path, left=None):
    """DailyDialog's original release: one dialogue per line, turns separated by __eou__. A line with no reply is left
    out and counted under left.empty (a LeftOut), as good_docs does a `dialog` record of one turn."""
    n, empty, wheres, kept = 0, 0, [], 0
    for chunk in read_text_chunks(path):
        lines = chunk.split("\n")  # (not splitlines(): a \r or U+2028 inside a turn is no line break here)
        for line in lines[:-1] if chunk.endswith("\n") else lines:  # (a chunk ends after a newline)
            n += 1
            turns = [t.strip() for t in tidy_dailydialog(line).split("__eou__")]  # a line at a time: fewer calls
            messages = spoken(alternate(turns))
            if any(m["role"] == "assistant" for m in messages):  # (spoken's turns are not empty)
                kept += 1
                yield messages
            elif messages:  # (a blank line is no dialogue)
                empty += 1
                if len(wheres) < PLACES:
                    wheres.append(f"{path} line {n}")
                if left is not None:
                    left.note(left.empty, path, empty, wheres)
    if empty and not kept:
        # plain text given to --dataset dailydialog: every line left out
        raise UserError(f"{path}: no line is a dialogue with a reply (DailyDialog's release: a dialogue a line, its "
                        f"turns separated by __eou__): give conversations as .jsonl records of `messages`, or make "
                        f"plain text a dataset with --dataset text")


# JSON can spell half of a UTF-16 pair (\ud800) alone, which no UTF-8 text holds: the vocabulary trainer failed on it
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" reads a byte that is no UTF-8 as


def json_error(e):
    """A json.JSONDecodeError as its malformed-JSON error says it: "Expecting value, column 3", or for the messages that
    end in "at", "Unterminated string starting at column 119" (not "starting at, column 119")."""
    return f"{e.msg}{' ' if e.msg.endswith(' at') else ', '}column {e.colno}"


def json_loads(text, where):
    """json.loads(text), without surrogate halves (SURROGATE_ESCAPE). JSON it cannot read is a UserError naming where,
    but malformed JSON, a json.JSONDecodeError, which the caller says with its hint."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # an integer of over 4,300 digits
        raise UserError(f"{where}: JSON that cannot be read ({first_line(e)})")
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read")
    return without_surrogates(data) if SURROGATE_ESCAPE.search(text) else data


def json_records(path, folder=None):
    """(where, record) for each record of a .jsonl, .json or .parquet file; where names file and line. A .jsonl line
    that is not JSON is a bad record, given as its UserError; a .json that is not JSON, or a file that is not text, is
    raised. folder: the --source folder the file is read from, or the pattern that matched it, if any (move_out)."""
    try:
        if suffix(path) == ".jsonl":
            yield from jsonl_records(path, folder)
        else:
            yield from {".parquet": parquet_records}.get(suffix(path), json_file_records)(path)
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except FileNotFoundError:
        raise UserError(f"input file {path} not found")


def jsonl_records(path, folder=None):
    """json_records of a .jsonl file."""
    stray = fix = None  # whether the file's bytes that are no UTF-8 are strays in UTF-8 text (not_utf8's reading),
    # and the way out not_utf8 names (said once per file); -sig: a byte-order mark (Notepad, Excel) is not JSON
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            line = line.removeprefix("\ufeff")  # one in the middle too: files saved by Notepad, joined with `cat`
            if not line.strip():
                continue
            if NOT_UTF8.search(line):
                # a stray byte in UTF-8 text is a bad record (--skip_bad_records leaves it out); a file in another
                # encoding is the whole file's error, its conversion the way out
                first = stray is None  # (not_utf8 names the first by line and byte of the file)
                if first:
                    whole, fix = not_utf8(path), stray_byte_fix(path)
                    stray = str(whole).endswith(fix)
                    if stray and folder is not None:  # its command writes the mended copy into the folder too
                        whole, fix = NotText(f"{whole}{move_out(folder)}"), fix + move_out(folder)
                if not stray:
                    raise whole
                yield f"{path} line {n}", whole if first else UserError(
                    f"{path} line {n}: not UTF-8 text: {fix}")
                continue
            if "\0" in line:  # (else "malformed JSON" at column 2 of what an editor shows as good JSON)
                raise holds_nul(path, line if n == 1 else "")
            try:  # (an error at its end: this line's column)
                record = json_loads(line.rstrip("\r\n"), f"{path} line {n}")
            except json.JSONDecodeError as e:
                array = n == 1 and line.strip() == "["  # a pretty-printed array's first line
                hint = "; it looks like one JSON array: name it .json" if array else ""
                record = UserError(f"{path} line {n}: malformed JSON ({json_error(e)}){hint}")
            except UserError as e:
                record = e
            yield f"{path} line {n}", record


def json_file_records(path):
    """json_records of a .json file, parsed whole: use .jsonl for corpora bigger than memory."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        if not text.strip():  # an empty file holds no records, as an empty .jsonl or .txt does
            return
        if "\0" in text:
            raise holds_nul(path, text)
        data = json_loads(text, path)
    except MemoryError:  # (its Python objects take about 4 times the file: 526 MB for 124 MB of Alpaca records)
        size = fmt_mb(os.path.getsize(path) / 1e6)
        raise UserError(f"{path}: a .json file is read whole, and this one ({size}) does not fit in memory: write it "
                        f"as JSON Lines, a record a line, in a .jsonl file, which is read a line at a time") from None
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data":  # JSON Lines, as datasets' to_json() writes whatever the name, if its
            with contextlib.suppress(ValueError):  # first line is a whole record
                json.loads(text[:e.pos].splitlines()[0])
                hint = "; it looks like one record per line (JSON Lines): name it .jsonl"
        raise UserError(f"{path} line {e.lineno}: malformed JSON ({json_error(e)}){hint}")
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        # pandas' DataFrame.to_json() default, {column: {row: value}}: named, with its way out
        columns = ", ".join(list(data)[:4]) + ", ..." * (len(data) > 4)
        raise UserError(f"{path}: one JSON object of columns ({columns}) by row, as pandas' "
                        f"to_json() writes by default: write it with to_json(PATH, orient=\"records\", "
                        f"lines=True) to a .jsonl file")
    for i, record in enumerate(data if isinstance(data, list) else [data], 1):
        yield f"{path} record {i}", record


def parquet_records(path):
    import pyarrow.parquet as pq  # comes with datasets
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for n, record in enumerate((record for batch in batches for record in batch.to_pylist()), 1):
            yield f"{path} row {n}", record
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{path} is not a readable parquet file ({type(e).__name__}: {first_line(e)})")


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "assistant": "assistant", "system": "system",
                  "developer": "system",  # OpenAI's newer name for the system message, as serve.py reads it
                  # other exports' names for these roles (Gemini's, OpenAssistant's, ShareGPT dumps' assistants)
                  "model": "assistant", "prompter": "user", "bing": "assistant", "bard": "assistant"}


def turn_spelling(m, spellings):
    """The (role, content) field names, of spellings, that the turn m (a dict) is written in; None if none."""
    return next(((r, c) for r, c in spellings if isinstance(m.get(r), str) and c in m), None)


def amiss_turn(turns, spellings):
    """"; turn N of M has no "role"" for the first of turns that is not a turn, in a list (else ""), so that a long
    conversation's faulty turn need not be searched for by eye."""
    if not isinstance(turns, list):
        return ""
    n, m = next((n, m) for n, m in enumerate(turns, 1) if not (isinstance(m, dict) and turn_spelling(m, spellings)))
    if not isinstance(m, dict):
        return f"; turn {n} of {len(turns)} is {json_kind(m)}"
    r, c = next(((r, c) for r, c in spellings if r in m or c in m), spellings[0])  # the spelling it was meant in
    what = f'no "{r}"' if r not in m else f'a "{r}" of {json_kind(m[r])}' if not isinstance(m[r], str) else f'no "{c}"'
    return f"; turn {n} of {len(turns)} has {what}"


GEMINI_HI = '[{"text": "Hi!"}]'


def gemini_text(parts, where):
    """Gemini's parts of a turn or system instruction, [{"text": ...}, ...], as one string (null: ""); else a
    UserError naming where."""
    if parts is None:
        return ""
    if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
        got = json_kind(parts) if not isinstance(parts, list) else "a part with no text (an image, a file?)"
        raise UserError(f"{where}: Gemini's `parts` must be a list of text parts like {GEMINI_HI}, got {got}")
    return "".join(p["text"] for p in parts if p.get("thought") is not True)  # (thought summaries: not the reply)


def turns_of(record, field, where):
    """record[field], a list of turns, as [{role, content}]: OpenAI's {role, content} or ShareGPT's {from, value} under
    any field name, Gemini's `contents` of {role, parts}, Claude's `chat_messages` of {sender, text}; else a UserError
    showing what a turn looks like. where: the record's place (file and line)."""
    spellings = {"conversations": (("from", "value"), ("role", "content")),
                 "contents": (("role", "parts"),),
                 "chat_messages": (("sender", "text"), ("sender", "content"))}.get(
        field, (("role", "content"), ("from", "value")))
    turns = record[field]
    # tool calls (OpenAI's tool_calls or "tool" turn, Gemini's functionCall) named with the way out
    if isinstance(turns, list) and any(isinstance(m, dict) and (
            m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function") or
            isinstance(m.get("parts"), list) and any(isinstance(p, dict) and ("functionCall" in p or
                                                                               "functionResponse" in p)
                                                     for p in m["parts"])) for m in turns):
        raise UserError(f"{where}: a tool call (OpenAI's tool_calls, a \"tool\" turn, Gemini's functionCall): only "
                        f"system, user and assistant text is trained on; leave the conversations with tool calls out "
                        f"of the file")
    if not isinstance(turns, list) or not all(isinstance(m, dict) and turn_spelling(m, spellings) for m in turns):
        like = " or ".join('{"%s": "user", "%s": %s}' % (r, c, GEMINI_HI if c == "parts" else '"Hi!"')
                           for r, c in spellings)
        raise UserError(f"{where}: `{field}` must be a list of turns like {like}" + amiss_turn(turns, spellings))
    if field == "contents":
        return [{"role": SHAREGPT_ROLES.get(m["role"].lower(), m["role"]), "content": gemini_text(m["parts"], where)}
                for m in turns]
    # a "weight" of 0 (OpenAI's fine-tuning format) leaves a reply out of the loss; roles are read in any case ("Human",
    # "USER"), and a null content is an empty one, not a bad record
    listed = [{"role": SHAREGPT_ROLES.get(m[r].lower(), m[r]), "content": "" if m[c] is None else m[c]}
              | ({"weight": m["weight"]} if m.get("weight") is not None else {})
              for m, (r, c) in ((m, turn_spelling(m, spellings)) for m in turns)]
    if field == "chat_messages":
        # Claude's export: a long paste or a file is an attachment's `extracted_content`, put before the turn's typed
        # `text` as the conversation showed it; a tool's block is left out, with the export's placeholder for it
        for turn, m in zip(listed, turns):
            if isinstance(turn["content"], list):  # a turn of content blocks alone, no `text`: its text blocks' (a
                # tool's, a thinking block, left out as the placeholders are)
                turn["content"] = "\n\n".join(b["text"] for b in turn["content"] if isinstance(b, dict) and
                                              b.get("type") == "text" and isinstance(b.get("text"), str))
            if isinstance(turn["content"], str) and CLAUDE_PLACEHOLDER.search(turn["content"]):
                # (the blank lines around a block left out: one paragraph break)
                turn["content"] = re.sub(r"\n\s*\n\s*\n", "\n\n", CLAUDE_PLACEHOLDER.sub("", turn["content"])).strip()
            pasted = [a["extracted_content"] for a in m.get("attachments") or [] if isinstance(a, dict) and
                      isinstance(a.get("extracted_content"), str) and a["extracted_content"].strip()]
            if pasted and isinstance(turn["content"], str):
                turn["content"] = "\n\n".join(pasted + [turn["content"]] * bool(turn["content"].strip()))
    return listed


def as_turns(record, field, role, where):
    """record[field], a prompt or a reply, as turns: text is one turn of role (null: empty); a list under prompt or
    completion is TRL's conversational form, whose prompt's replies are context (weight 0) and whose empty completion is
    an empty reply."""
    value = record[field]
    turns = field in ("prompt", "completion")
    if isinstance(value, list) and turns:
        listed = turns_of(record, field, where)
        if field == "prompt":
            return [m | {"weight": 0} if m["role"] == "assistant" else m for m in listed]
        return listed or [{"role": role, "content": ""}]
    if value is not None and not isinstance(value, str):  # else a TypeError's words, or its repr() trained
        raise UserError(f"{where}: `{field}` must be text{' or a list of turns' * turns}, got {json_kind(value)}")
    return [{"role": role, "content": value or ""}]


def record_docs(record, where, dataset=None):
    """record_doc's documents of one record: one, or one for each of a Self-Instruct seed task's `instances` (the
    instruction with each input/output pair, an example of its own)."""
    # (a record with turns or an output is read by those, as record_doc reads it)
    seed_task = isinstance(record, dict) and record.get("instances") is not None and \
        record.get("instruction") is not None and all(record.get(f) is None for f in (*TURNS_FIELDS, "output"))
    if not seed_task:
        return [record_doc(record, where, dataset)]
    instances = record["instances"]
    if not isinstance(instances, list) or not all(isinstance(i, dict) and "output" in i for i in instances):
        raise UserError(f"{where}: `instances` must be a list of {{\"input\": ..., \"output\": ...}} examples of the "
                        f"instruction")
    return [record_doc({**record, "input": i.get("input"), "output": i["output"]}, where, dataset) for i in instances]


def plain_text(text, where):
    """A text record's document, None when empty; a UserError for a conversation already rendered in ChatML: read as
    plain text, its markers were trained on as words and the user's turns were in the loss."""
    if text.lstrip().startswith(IM_START):
        raise chatml_text(text, where, ": give it as `messages` "
                          "[{\"role\": \"user\", \"content\": ...}, {\"role\": \"assistant\", ...}]")
    return (text.strip(), True) if text.strip() else None


def pair_messages(record, pair, where):
    """record_doc's turns of a record of a prompt-and-reply shape, pair (its prompt, reply and input fields, one of
    PAIRS): those of its `history`, the prompt (and input) as a user turn, the reply. where: its place, for errors."""
    prompt, reply, extra = pair
    if extra and record.get(extra) and not isinstance(record[extra], str):  # else its repr() trained
        raise UserError(f"{where}: `{extra}` must be text, got {json_kind(record[extra])}")
    # LLaMA-Factory's `history`, the turns before as [instruction, output] pairs (left out, a row trained on one turn)
    history = record.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 and
                                                 all(isinstance(t, str) for t in h) for h in history):
        raise UserError(f"{where}: `history` must be a list of [instruction, output] pairs of text, the turns "
                        f"before this one")
    asked, answered = as_turns(record, prompt, "user", where), as_turns(record, reply, "assistant", where)
    if extra and record.get(extra):
        asked[0]["content"] += f"\n\n{record[extra]}"  # (an instruction is text: one turn)
    if reply == "answer" and GSM8K_FINAL.search(answered[0]["content"]):
        # GSM8K's calculator annotations (<<48/2=24>>), noise to a model with no calculator, known by the record's
        # shape, not the dataset's name: another question/answer set may write << and >> (C++)
        answered[0]["content"] = re.sub(r"<<[^<>]*>>", "", answered[0]["content"])
    return alternate([t for h in history for t in h]) + asked + answered


def record_system(record, where):
    """The system message a record gives under the first of SYSTEM_FIELDS that holds one (Gemini's: its parts); "" if
    none; a UserError naming where for one of another kind."""
    field = next((f for f in SYSTEM_FIELDS if record.get(f) is not None), None)
    value = record.get(field, "")
    if isinstance(value, dict) and "parts" in value and field in ("systemInstruction", "system_instruction"):
        return gemini_text(value["parts"], where)
    if not isinstance(value, str):
        raise UserError(f"{where}: `{field}` must be text, got {json_kind(value)}")
    return value


def chatgpt_turns(record, where):
    """A conversation of ChatGPT's data export (conversations.json) as [{role, content}]: the path from its
    `current_node` to the root of its `mapping` tree (the branches an edit or a regenerated reply left are not shown).
    Only the text shown is read: hidden turns, tool calls and output, reasoning and images are left out."""
    mapping, node = record["mapping"], record.get("current_node")
    if not isinstance(mapping, dict) or not isinstance(node, str):
        raise UserError(f"{where}: a ChatGPT export's conversation needs `mapping` (an object of messages) and its "
                        f"`current_node` (an id in it)")
    path, seen = [], set()
    while node is not None and node not in seen:  # (a loop of parents in a damaged file: not followed forever)
        seen.add(node)
        entry = mapping.get(node)
        if not isinstance(entry, dict):
            raise UserError(f"{where}: `mapping` has no message {node!r}, named as a current_node or parent")
        path.append(entry.get("message"))
        node = entry.get("parent")
    turns = []
    for m in reversed(path):
        if not isinstance(m, dict):
            continue  # the root: no message
        author, content, meta = (m.get(f) or {} for f in ("author", "content", "metadata"))
        if not all(isinstance(x, dict) for x in (author, content, meta)):  # (else AttributeError's traceback)
            raise UserError(f"{where}: message {m.get('id', '')!r} of `mapping` has an author, content or metadata "
                            f"that is no object, as ChatGPT's export writes them")
        role = author.get("role")
        if role not in ("system", "user", "assistant") or m.get("recipient", "all") != "all" or \
                meta.get("is_visually_hidden_from_conversation") or \
                content.get("content_type") not in ("text", "multimodal_text"):
            continue
        # (an image's part is an object; a voice chat's turn is its transcript's, an object with text)
        text = "".join(p if isinstance(p, str) else p["text"] for p in content.get("parts") or ()
                       if isinstance(p, str) or isinstance(p, dict) and p.get("content_type") == "audio_transcription"
                       and isinstance(p.get("text"), str))
        if not text.strip():
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    return turns


def record_doc(record, where, dataset=None):
    """One record -> a document: turns under one of TURNS_FIELDS, a prompt and reply of one of PAIRS (after
    LLaMA-Factory's `history`), a `dialog` list of turns or ChatGPT's export (chatgpt_turns); a `text` field or a bare
    string is a plain document. None for a record with nothing to train on (empty text, no non-empty reply); a UserError
    naming where for a record of no shape read here. GSM8K's answers lose their calculator annotations. dataset:
    dailydialog tidies DailyDialog's spacing."""
    if isinstance(record, str):
        return plain_text(record, where)
    if not isinstance(record, dict):
        # a list of records (json.dump(records) saved as .jsonl) is no conversation's turns to wrap in "messages"
        records = bare_turns(record) and any(f in record[0] for f in RECORD_FIELDS)
        raise UserError(f"{where}: expected an object or a string, got {json_kind(record)}" + (
            "; a list of records? give one a line (JSON Lines), or the whole array as a .json file" if records else
            '; a conversation\'s turns? give each as {"messages": [...]}' if bare_turns(record) else ""))
    # the shape by the fields that hold something: a parquet file or a pandas export gives every row every column
    has = {k for k, v in record.items() if v is not None}
    # `messages` takes ShareGPT's role names too; `conversation` is lmsys-chat-1m's and WildChat's name for it
    turns_field = next((f for f in TURNS_FIELDS if f in has), None)
    # the first pair whose fields both hold something, else the first whose reply is there but null (an empty reply)
    pair = next((p for p in PAIRS if p[0] in has and p[1] in has), None) or \
        next((p for p in PAIRS if p[0] in has and p[1] in record), None)
    try:
        if turns_field:
            messages = turns_of(record, turns_field, where)
        elif pair:
            messages = pair_messages(record, pair, where)
        elif "dialog" in has:
            dialog = record["dialog"]
            if not isinstance(dialog, list) or not all(t is None or isinstance(t, str) for t in dialog):
                raise TypeError("`dialog` must be a list of strings, one per turn")
            # (a null turn is an empty one, as a turn's null content is: spoken() drops it, its speaker kept)
            turns = [tidy_dailydialog(t or "") if dataset == "dailydialog" else t or "" for t in dialog]
            messages = spoken(alternate(turns))
        elif "mapping" in has and ("current_node" in record or "text" not in has):  # (a text set's mapping column)
            messages = chatgpt_turns(record, where)
        elif "text" in record:
            text = record["text"]
            if text is None:  # an empty row, as an empty string is
                return None
            if not isinstance(text, str):
                raise UserError(f"{where}: `text` must be text, got {json_kind(text)}")  # (as other fields say)
            return plain_text(text, where)
        elif "chosen" in has and "rejected" in has:
            raise preference_pair(record, where)
        else:
            # records wrapped in an object ({"data": [...]}): named, not the fields the wrapper lacks
            inner = next((k for k, v in record.items() if bare_turns(v) and any(f in v[0] for f in RECORD_FIELDS)),
                         None)
            wrapped = f"; its `{inner}` holds a list of records: give that list as the file (a .json array), or one " \
                      f"record a line (JSON Lines)" if inner else ""
            # the fields it has show a near miss ("Question", or "Question;Answer": a CSV split on the wrong separator)
            def named(keys):
                shown = (json.dumps(k if len(k) <= 40 else k[:37] + "...", ensure_ascii=False)[1:-1] for k in keys[:8])
                return ", ".join(f"`{k}`" for k in shown) + (f" and {len(keys) - 8:,} more" if len(keys) > 8 else "")
            fields, nulls = [k for k in record if k in has], [k for k in record if k not in has]
            has_fields = (f"; it has {named(fields)}" if fields else "; it has no field that holds something") + \
                (f" ({named(nulls)} null)" if nulls else "")
            raise UserError(f"{where}: no {', '.join(TURNS_FIELDS)}, {', '.join(f'{p}/{r}' for p, r, _ in PAIRS)}, "
                            f"instruction/instances, dialog, mapping (ChatGPT's export) or text field"
                            f"{wrapped or has_fields}")
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: malformed conversation ({type(e).__name__}: {e})")
    system = record_system(record, where)
    if system and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    for m in messages:
        if m["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{where}: unknown role {m['role']!r}; use system, user or assistant "
                            f"(or ShareGPT's human, gpt)")
        if not isinstance(m["content"], str):  # OpenAI's text parts, as serve.py takes them (a logged API chat)
            text = parts_text(m["content"], m["role"])
            if text is None:
                raise UserError(f"{where}: message content must be text or a list of text parts ({{\"type\": \"text\", "
                                f"\"text\": ...}}), got {json_kind(m['content'])}")
            m["content"] = text
        if "weight" in m and (isinstance(m["weight"], bool) or m["weight"] not in (0, 1)):
            raise UserError(f"{where}: a message's weight must be 0 (not trained on) or 1, got {m['weight']!r}")
        if m["role"] == "assistant" and not m["content"].strip():
            # an empty reply among others stays, out of the loss: trained on, it taught the model to answer with nothing
            m["weight"] = 0
    replies = [m["content"] for m in messages if trained_on(m)]
    # no reply with text and weight: nothing under the loss mask, as an empty text record has nothing
    if not any(r.strip() for r in replies):
        return None
    return messages


PLACES = 10  # the bad records an error or the summary locates by line; the rest are counted, "..."
ALL_BAD = 1000  # bad records, none good before them, at which a file is refused unread to its end
OTHER_FILES = 3  # the other files with bad records an error names, with as many places each; the rest are counted
# the most of the other files an error reads for their bad records (with_other_files): ~5 s on one core
OTHER_FILES_BYTES = 1 << 30


def places(wheres, count):
    """"lines 17, 40" of wheres ["f.jsonl line 17", "f.jsonl line 40"], the places of the first of count bad records
    (PLACES at most), and "..." for the rest."""
    numbers = [where.rsplit(" ", 1)[1] for where in wheres[:PLACES]]
    return (f"{wheres[0].rsplit(' ', 2)[1]}{'s' * (count > 1)} {', '.join(numbers)}"
            f"{', ...' if count > len(numbers) else ''}")


class LeftOut:
    """The records good_docs leaves out, by file or hub split (label), for the summary, each {"count", "wheres"} (the
    first PLACES located): bad, the bad ones with skip_bad (--skip_bad_records), and empty, those with nothing to train
    on (record_doc's None). blank: the text files with no text; front_matter: the notes whose front matter went."""

    def __init__(self, skip_bad=False):
        self.skip_bad, self.bad, self.empty, self.blank, self.front_matter = skip_bad, {}, {}, set(), set()

    def note(self, records, label, count, wheres):
        """count records of label (self.bad or self.empty) left out so far, the first at wheres."""
        # each pass over a file reads it from its start, so the most one pass has left out are the ones left out
        left = records.setdefault(label, {"count": 0, "wheres": []})
        if count > left["count"]:
            left["count"], left["wheres"] = count, wheres[:PLACES]


class BadRecords(UserError):
    """good_docs's error for the bad records of one file (label): text says what they are, count how many, skippable
    whether --skip_bad_records would leave something to train on, kind that of its first good document (None: none).
    Kept in parts so that make_dataset can add the other files' bad records (with_other_files) before the way out."""

    def __init__(self, label, text, count, skippable, kind=None):
        them = "them" if count > 1 else "it"
        super().__init__(text + (f"; fix {them}, or pass --skip_bad_records to leave {them} out" if skippable else ""))
        self.label, self.text, self.count, self.skippable, self.kind = label, text, count, skippable, kind


class OtherKind(UserError):
    """The bad record at where whose document is of the other kind (its own: kind) than its file's first (at first):
    checked_records'."""

    def __init__(self, where, kind, first):
        super().__init__(f"{where}: {'a conversation' if kind == 'chat' else 'plain text'} among "
                         f"{KIND_NAMES[OTHER_KIND[kind]]} "
                         f"(from {first} on)")
        self.where, self.kind, self.first = where, kind, first


def checked_records(records, dataset):
    """(where, document, None) of each good record of records, (where, None, the UserError saying why) of each bad one:
    no JSON, refused by record_doc, or of the other kind than the file's first document (OtherKind: a stray row is a bad
    record like any other, counted, located and skippable)."""
    first = None  # the first document's kind, and where it is
    for where, record in records:
        try:
            if isinstance(record, UserError):
                raise record
            docs = record_docs(record, where, dataset)
        except UserError as e:
            yield where, None, e
            continue
        for doc in docs or [None]:  # (a seed task of no instances: a record with nothing to train on)
            if doc:
                first = first or (doc_kind(doc), where)
                if doc_kind(doc) != first[0]:
                    yield where, None, OtherKind(where, doc_kind(doc), first[1])
                    continue
            yield where, doc, None


def good_docs(records, label, dataset, left, scan=True):
    """(where, document) of each good record of records, the (where, record) of one file or hub split (label). A bad
    record (checked_records) stops the run as BadRecords, with scan after the file is read to its end (parsed, not
    tokenized) so that one run names all its bad records (not a streamed hub split: downloaded whole for it). left, a
    LeftOut: counts the records with nothing to train on, and with left.skip_bad leaves the bad ones out instead; a
    label with no good record still stops the run."""
    # the bad records are counted, and only the first PLACES + 1 kept (the first, and those places() names)
    bad, wheres, first, good, kind = 0, [], None, False, None
    skipping = left is not None and left.skip_bad
    # the records with nothing to train on, the first's places, the last's
    empty, empty_wheres, last_empty = 0, [], None
    kept, strays, stray = 0, 0, None  # documents of the file's kind, and of the other (OtherKind), the first of them
    for where, doc, e in checked_records(records, dataset):
        if isinstance(e, OtherKind):
            strays, stray = strays + 1, stray or e
        if e:
            if not skipping and not scan:  # (a hub split's: with the way out a file's gets)
                raise UserError(f"{e}; pass --skip_bad_records to leave out the split's bad rows") from None
            bad += 1
            first = first or e
            if len(wheres) <= PLACES:
                wheres.append(where)
            if not skipping and not good and bad == ALL_BAD:
                # a file of another shape altogether is not read to its end before its error (minutes for gigabytes)
                raise BadRecords(label, f"{first}; the first {bad:,} records of {label} are all bad (not read on)",
                                 bad, False)
            if skipping:
                left.note(left.bad, label, bad, wheres)
            continue
        good, kept, kind = True, kept + bool(doc), kind or (doc and doc_kind(doc))
        if not doc and left is not None and where != last_empty:  # (a seed task's instances: one record)
            empty, last_empty = empty + 1, where
            if len(empty_wheres) < PLACES:
                empty_wheres.append(where)
            left.note(left.empty, label, empty, empty_wheres)
        if doc and (skipping or not bad):  # (once one is bad, and not skipped, the rest is only read)
            yield where, doc
    if strays and strays >= kept:
        # the first records are the odd ones (a stray conversation atop plain text): not skippable, both places named
        raise mixed_kinds(stray.where, stray.kind, stray.first)
    if good and not kept and (not bad or skipping):
        # every record read and none with a reply or text (a reply column all null: the wrong field)
        raise UserError(f"{label}: none of its records has anything to train on (every assistant reply, or text, is "
                        f"missing, empty or null): fill them in, or leave the file out")
    if not bad or (good and skipping):
        return
    if skipping:
        raise UserError(f"{first}; no record of {label} is good ({bad:,} bad), so --skip_bad_records leaves "
                        f"nothing of it to train on: fix it")
    more = bad - 1
    raise BadRecords(label, f"{first}" + (f"; {more:,} more bad record{'s' * (more > 1)} in the file: "
                                          f"{places(wheres[1:], more)}" if more else ""), bad, good, kind)


def bad_records(path, kind):
    """(count, wheres, good, other) of the bad records of a .jsonl, .json or .parquet file, found as good_docs finds
    them, to its end or its ALL_BAD-th bad record when none before is good; wheres: the first OTHER_FILES places, good:
    whether a record is good; other: its first document is not of kind, the dataset's (the run stops there: read no
    further)."""
    bad, wheres, good, first = 0, [], False, None  # first: the kind of the file's first document
    for where, doc, e in checked_records(json_records(path), None):  # (the dataset only tidies what is good)
        if not e:
            good, first = True, first or (doc and doc_kind(doc))
            if kind and first and first != kind:
                return bad, wheres, good, True
            continue
        bad += 1
        if len(wheres) < OTHER_FILES:
            wheres.append(where)
        if not good and bad == ALL_BAD:
            break
    return bad, wheres, good, False


def with_other_files(e, plan):
    """e, the BadRecords of one of plan's files, with the bad records of the files the run has not read yet (those after
    it, and a source's own validation files before it, which the vocabulary's pass skips) added, so that one run names
    every bad file. Files past OTHER_FILES_BYTES are counted, not read; one of the other kind than e's is named as such,
    as the run stops at it (mixed_kinds)."""
    streams = plan["streams"]
    at = next(i for i, (_, label, _) in enumerate(streams) if label == e.label)  # (a file's: hub rows are not scanned)
    not_read_yet = [label for i, (role, label, _) in enumerate(streams) if i > at or (i < at and role == "val")]
    scanned, unread_note = files_to_scan(not_read_yet, (".jsonl", ".json", ".parquet"), "them")
    found, others = [], []  # (label, bad, wheres, good) of each file with bad records; the files of the other kind
    for label in scanned:
        with contextlib.suppress(UserError):
            bad, wheres, good, other = bad_records(label, e.kind)
            if other:
                others.append(label)
            elif bad:
                found.append((label, bad, wheres, good))

    def named(label, bad, wheres, good):
        how = f"{bad:,}" if good else f"its first {bad:,} all" if bad == ALL_BAD else f"all {bad:,}"
        return f"{label} ({how} bad: {places(wheres, bad)})"

    text, count, skippable = e.text, e.count, e.skippable
    if found:
        files = listed([named(*f) for f in found])
        text += f"; bad records in {len(found)} other file{'s' * (len(found) > 1)} too: {files}"
        count += sum(bad for _, bad, _, _ in found)
        skippable = skippable and all(good for *_, good in found)
    if others:
        them = "them" if len(others) > 1 else "it"
        text += (f"; {KIND_NAMES[OTHER_KIND[e.kind]]} in {len(others)} other file{'s' * (len(others) > 1)} where "
                 f"{e.label} holds {KIND_NAMES[e.kind]}, a dataset being one or the other: {listed(others)} (leave "
                 f"{them} out, or prepare {them} separately with --name)")
        skippable = False  # (the run stops at them skipping or not)
    return BadRecords(e.label, text + unread_note, count, skippable, e.kind) if found or others or unread_note else e


def files_to_scan(labels, suffixes, what):
    """Of labels, the files of suffixes that an error naming the other bad files reads: OTHER_FILES_BYTES of them in
    all, in order; and what the error says of those past it, not read for what it looks for ("" for none)."""
    scanned, read, unread = [], 0, 0
    for label in labels:
        if suffix(label) not in suffixes or not os.path.isfile(label):
            continue
        size = os.path.getsize(label)
        if read + size > OTHER_FILES_BYTES:
            unread += 1
            continue
        read += size
        scanned.append(label)
    note = f"; {unread:,} other file{'s' * (unread > 1)} not read for {what} (past {OTHER_FILES_BYTES >> 20:,} MB)"
    return scanned, note if unread else ""


def listed(names, shown=OTHER_FILES):
    """names as an error or the summary lists them: the first shown, the rest counted."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", and {more:,} more" if more > 0 else "")


def with_other_not_utf8(e, plan):
    """e, the NotText of one of plan's files, with the plan's other files that are not UTF-8 either named, so that one
    run names them all (a folder of notes saved in cp1252). Files past OTHER_FILES_BYTES are counted, not read."""
    streams = plan["streams"]
    at = next((i for i, (_, label, _) in enumerate(streams) if str(e).startswith(f"{label} ")), None)
    if at is None:  # (a hub split's or the mirror's: no file of the user's)
        return e
    # those before it too (a vocabulary's pass reads a sample); files read as text alone (a .parquet is binary)
    others = [label for _, label, _ in streams[:at] + streams[at + 1:]]
    scanned, unread_note = files_to_scan(others, (*PLAIN_TEXT, ".jsonl", ".json"), "it")
    found = []
    for label in scanned:
        with contextlib.suppress(OSError):
            if first_bad_utf8(label):
                found.append(label)
    if not found and not unread_note:
        return e
    text = str(e)
    if found:
        text += f"; {len(found):,} other file{'s' * (len(found) > 1)} not UTF-8 either: {listed(found)}"
    return NotText(text + unread_note)


def file_docs(path, dataset, left=None, folder=None):
    """Documents of one file (a --source file or the mirror's), read by its suffix: .txt, Markdown and source code as
    text (DailyDialog's release as its dialogues), others as records (good_docs). left: good_docs's LeftOut. folder: the
    --source folder it is read from, or the pattern that matched it, if any (move_out)."""
    try:
        if suffix(path) in PLAIN_TEXT:
            if dataset == "dailydialog":
                yield from dailydialog_docs(path, left)
                return
            blank = True
            for i, (text, ends) in enumerate(text_docs(path)):
                if i == 0 and suffix(path) in MARKDOWN and (head := FRONT_MATTER.match(text)):
                    text = text[head.end():]
                    if left is not None:
                        left.front_matter.add(path)
                    if ends and not text.strip():  # a note of its front matter alone (a daily note's template): no
                        continue  # document, as an empty file is none (one of an <|endoftext|> alone)
                blank = False
                yield text, ends
            if blank and left is not None:
                left.blank.add(path)
            return
        yield from (doc for _, doc in good_docs(json_records(path, folder), path, dataset, left))
    except NotText as e:
        if folder is None:
            raise
        raise NotText(f"{e}{move_out(folder)}") from None


def move_out(folder):
    """What a not_utf8 command's advice for a file of a --source folder (or one a pattern matched, folder that
    pattern) adds: the command writes the mended copy next to the file, in the folder, where the next run read it and
    the file again, and failed again on the file."""
    if not os.path.isdir(folder):  # a pattern ('notes/**/*.md'), which matches the copy (notes/a.utf8.md) too
        return f"; then move the original out of the way: --source {shlex.quote(folder)} matches it"
    return f"; then move the original out of {folder}: prepare.py reads every file of a --source folder"


def load_hub(path, config, split, streaming=False):
    """A split of a Hugging Face hub dataset: downloaded whole (arrow-backed, memory-mapped), or streamed so that
    --limit downloads what it takes."""
    import datasets  # slow to import, and only needed here
    return datasets.load_dataset(path, config, split=split, streaming=streaming)


def hub_docs(dataset, split, streaming=False, path=None, rows=None, left=None):
    """The documents of a hub split's rows, each read as a --source record is. path and rows: a --source hf: set's
    spec and split (default: HUB[dataset]'s, loaded here). left: good_docs's LeftOut."""
    if rows is None:
        path, config = HUB[dataset][:2]
        try:
            rows = load_hub(path, config, split, streaming)
        except Exception as e:  # offline, unknown dataset, script datasets no longer supported...
            raise NoSource(no_source(dataset, f"the Hugging Face hub failed: {type(e).__name__}: {first_line(e)}"))

    def records():
        i, it = 0, iter(rows)
        try:
            for i, row in enumerate(it, 1):
                yield f"{path} {split} row {i}", row
        except Exception as e:  # streamed rows are downloaded as they are read: the connection can fail here too
            raise UserError(f"{path} {split}: the Hugging Face hub failed after {i:,} rows ({type(e).__name__}: "
                            f"{first_line(e)}); run the command again") from e
    yield from (doc for _, doc in good_docs(records(), f"{path} {split}", dataset, left, scan=False))


def hub_source(spec, dataset, left):
    """--source hf:NAME[:CONFIG[:SPLIT]], a Hugging Face hub dataset (or a local folder datasets reads as one),
    streamed, so that --limit reads what it takes and a huge set is never downloaded whole. Train is SPLIT (default
    train, or the only split), val the set's validation split where it has one, else train's tail."""
    path, config, split, *more = spec[len("hf:"):].split(":") + [None, None]
    if not path or any(more):
        raise UserError(f"--source {spec}: give hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT (hf:NAME::SPLIT for "
                        f"the default config)")
    import datasets  # slow to import, and only needed here
    try:
        builder = datasets.load_dataset_builder(path, config or None)
        files = builder.config.data_files or {}
        splits = [str(s) for s in files or builder.info.splits or []]  # (NamedSplit: a str's equal, not one)
        split = split or ("train" if "train" in splits or len(splits) != 1 else splits[0])
        if split not in splits:
            raise UserError(f"--source {spec}: no split {split!r} in this dataset; name one of {', '.join(splits)} as "
                            f"hf:{path}:{config or ''}:SPLIT")
        val = "validation" if "validation" in splits and split != "validation" else None
        rows = builder.as_streaming_dataset()  # a parquet set's schema is read here: hub failures come now
    except UserError:
        raise
    except Exception as e:  # one line naming the likely way out
        if isinstance(e, ConnectionError):
            fix = "go online (and unset HF_DATASETS_OFFLINE and HF_HUB_OFFLINE), or pass its files as --source PATH"
        elif "gated" in str(e):
            fix = f"ask for access at https://huggingface.co/datasets/{path} and log in (`hf auth login` or HF_TOKEN)"
        elif isinstance(e, FileNotFoundError):
            fix = "check the name, OWNER/NAME as https://huggingface.co/datasets spells it"
        elif isinstance(e, ValueError):  # a config missing or unknown: the message lists them
            fix = f"give one as hf:{path}:CONFIG"
        else:  # a loading script, which datasets no longer runs
            fix = "download its data files and pass them as --source PATH"
        raise UserError(f"--source {spec}: the Hugging Face hub failed ({type(e).__name__}: "
                        f"{first_line(' '.join(str(e).split()))}); {fix}") from None
    # a local folder's files are fingerprinted as --source files are; a hub set by its revision (a commit)
    local = [f for s in (split, val) if s for f in files.get(s, []) if os.path.isfile(f)]
    revision = "" if local else f", revision {builder.hash}"
    streams = [("train", split), ("val", val)] if val else [("split", split)]
    return {"description": f"--source {spec} (Hugging Face datasets: {split}{f', val {val}' if val else ''}{revision})",
            "files": local, "streams": [(role, f"{spec} {s}", functools.partial(hub_docs, dataset, s, path=spec,
                                                                                 rows=rows[s], left=left))
                                    for role, s in streams]}


def fetch(url):
    """The bytes at url."""
    import urllib.request
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def download_path(dataset):
    """Where URLS[dataset] is kept once fetched: the user's cache, shared by every checkout."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "gpt-trainer", f"{dataset}-{os.path.basename(URLS[dataset])}")


def url_docs(dataset):
    """The documents of URLS[dataset]'s text file, fetched on first use."""
    path = download_path(dataset)
    if not os.path.exists(path):
        try:
            text = fetch(URLS[dataset]).decode("utf-8")
        except Exception as e:  # offline (URLError), an HTTP error, not UTF-8
            raise NoSource(no_source(dataset,
                                     f"downloading {URLS[dataset]} failed: {type(e).__name__}: {first_line(e)}"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, text)
    yield from text_docs(path)


def no_source(dataset, why):
    files = ", ".join(sum(MIRROR[dataset].values(), []))
    return (f"no data for --dataset {dataset}: pass --source PATH, or set DATA_MIRROR to a folder holding {files} "
            f"({why})")


# -----------------------------------------------------------------------------
# chitchat: small talk generated from templates, so a chat model learns greetings and manners

SYSTEMS = ["You are a friendly assistant. Keep your answers short.", "You are a helpful assistant.",
           "You are a cheerful chat companion.", "You are a polite assistant who answers briefly."]
GREETINGS = [  # (what the user says, how the assistant may answer)
    (["Hi!", "Hello!", "Hey there!", "Hello there.", "Hey!", "Hi there!", "Greetings!"],
     ["Hello! How can I help you today?", "Hi there! What would you like to talk about?",
      "Hey! Nice to hear from you. What's on your mind?", "Hello! It's nice to chat with you.", "Hi! How can I help?"]),
    (["Good morning!", "Morning!"],
     ["Good morning! I hope you slept well. What can I do for you?", "Good morning! How can I help today?"]),
    (["Good afternoon!"], ["Good afternoon! How is your day going?", "Good afternoon! What can I do for you?"]),
    (["Good evening!"], ["Good evening! How was your day?", "Good evening! What would you like to chat about?"]),
]
HOW_ARE_YOU = ["How are you?", "How are you doing today?", "How's it going?", "How are things?", "What's up?"]
I_AM_FINE = ["I'm doing well, thank you for asking! How about you?", "I'm good, thanks! How are you?",
             "Pretty good! I'm always happy to chat. How is your day going?", "All good here. And you?"]
MOODS = [
    (["I'm good, thanks.", "Great, thanks!", "Not bad at all.", "I'm having a lovely day."],
     ["Glad to hear it!", "That's great to hear!", "Wonderful! What would you like to do today?"]),
    (["A bit tired, to be honest.", "I'm having a rough day.", "Not great, actually.", "I'm a little sad today."],
     ["I'm sorry to hear that. I hope things get better soon.", "Oh no. Do you want to talk about it?",
      "That sounds hard. Be kind to yourself today."]),
]
THANKS = (["Thanks!", "Thank you!", "Thanks a lot.", "Thank you so much for your help.", "Cheers!", "I appreciate it."],
          ["You're welcome!", "Happy to help!", "Anytime!", "No problem at all.", "My pleasure!"])
GOODBYES = [
    (["Bye!", "Goodbye!", "See you later!", "I have to go now. Bye!", "Talk to you later.", "Have a nice day!"],
     ["Goodbye! Have a great day!", "See you later! Take care.", "Bye! It was nice talking to you.",
      "Take care, and talk soon!"]),
    (["Good night!", "I'm going to bed. Good night."], ["Good night! Sleep well.", "Good night, and sweet dreams!"]),
]
WHO_ARE_YOU = (["What's your name?", "Who are you?", "Do you have a name?", "What should I call you?",
                "Are you a robot?"],
               ["I'm a small language model, trained from scratch. "
                "I don't have a name, but you can call me whatever you like.",
                "I'm a little chat model, a computer program. "
                "I don't have a real name, but I'm happy to talk with you.",
                "I'm an AI assistant, a small language model. I don't have a name of my own."])
NAMES = ["Sam", "Alex", "Maria", "Lily", "Tom", "Priya", "Ben", "Mia", "Omar", "Emma", "Leo", "Zoe", "Ana", "Kenji",
         "Sara", "Noah"]
INTRODUCE = (["My name is {name}.", "I'm {name}.", "Call me {name}.", "Hi, I'm {name}!"],
             ["Nice to meet you, {name}!", "Hello, {name}! It's nice to meet you.",
              "Great to meet you, {name}. What would you like to talk about?"])
MY_NAME = ["What's my name?", "Do you remember my name?", "Who am I?"]
SMALL_TALK = [
    ("What's your favorite color?", "I can't see colors, but blue sounds lovely. Do you have a favorite?"),
    ("What do you like to do?", "I like chatting and answering questions. What do you like to do?"),
    ("Do you like music?", "I can't hear music, but people say it's wonderful. What kind of music do you like?"),
    ("The weather is nice today.", "That sounds lovely! A sunny day is a good reason to go outside."),
    ("It's raining here.", "Rainy days are perfect for a good book and a warm drink."),
    ("I'm bored.", "We could play a word game, or you could draw something. What sounds fun?"),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field!"),
    ("Can you help me?", "Of course! What do you need help with?"),
    ("What time is it?", "I can't see a clock, so I don't know the time. Your device should show it."),
    ("Are you real?", "I'm a computer program, so not real like a person. But I'm really here to chat!"),
    ("I like cats.", "Cats are great! They are soft, curious and a little bit mysterious."),
    ("I like dogs.", "Dogs are wonderful. They are loyal, playful and always happy to see you."),
    ("What's your favorite food?", "I don't eat, but pizza seems to make a lot of people happy. What's yours?"),
    ("Where do you live?", "I live inside a computer, so I don't have a home like you do."),
    ("How old are you?", "I was trained quite recently, so I'm very young!"),
    ("I had a great day.", "That's wonderful! What made it so great?"),
    ("I'm tired.", "Maybe it's time for a rest. A good sleep helps a lot."),
    ("Do you have friends?", "Everyone I chat with is a bit of a friend. That includes you!"),
    ("What can you do?", "I can chat, answer simple questions and tell short stories. What would you like?"),
    ("Can you tell me a story?", "Once upon a time, a little bird learned to fly. It was scared at first, "
                                 "but it tried again and again, and soon it soared over the trees."),
    ("I'm hungry.", "Maybe it's time for a snack. Fruit or a sandwich is a good choice."),
    ("Do you sleep?", "No, I don't need sleep. I'm ready to chat whenever you are."),
]


def casual(rng, text):
    """People type casually: sometimes all lowercase, without the final punctuation."""
    return text.lower().rstrip(".!") if rng.random() < 0.2 else text


def chitchat_conversation(rng):
    msgs, name = [], None

    def say(user, assistant):
        msgs.extend([{"role": "user", "content": casual(rng, user)}, {"role": "assistant", "content": assistant}])

    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.7:
        users, answers = rng.choice(GREETINGS)
        say(rng.choice(users), rng.choice(answers))
    for topic in rng.sample(["how", "who", "intro", "talk", "talk", "recall"], rng.randint(1, 2)):
        if topic == "how":
            say(rng.choice(HOW_ARE_YOU), rng.choice(I_AM_FINE))
            if rng.random() < 0.7:
                users, answers = rng.choice(MOODS)
                say(rng.choice(users), rng.choice(answers))
        elif topic == "who":
            say(rng.choice(WHO_ARE_YOU[0]), rng.choice(WHO_ARE_YOU[1]))
        elif topic == "intro":
            name = rng.choice(NAMES)
            say(rng.choice(INTRODUCE[0]).format(name=name), rng.choice(INTRODUCE[1]).format(name=name))
        elif topic == "recall":
            answer = rng.choice(["Your name is {name}.", "You told me your name is {name}."]).format(name=name) \
                if name else "You haven't told me your name yet. What is it?"
            say(rng.choice(MY_NAME), answer)
        else:
            say(*rng.choice(SMALL_TALK))
    if rng.random() < 0.4:
        say(rng.choice(THANKS[0]), rng.choice(THANKS[1]))
    if rng.random() < 0.5:
        users, answers = rng.choice(GOODBYES)
        say(rng.choice(users), rng.choice(answers))
    return msgs


def chitchat_docs():
    """5,000 distinct conversations: the templates repeat short ones (122 of 5,000), and val, the tail, held 18 that
    train had too."""
    rng = random.Random(1337)  # same seed, same conversations: the dataset is reproducible (find_source names it)
    seen = set()
    while len(seen) < 5000:
        msgs = chitchat_conversation(rng)
        key = json.dumps(msgs)
        if key not in seen:
            seen.add(key)
            yield msgs


# -----------------------------------------------------------------------------
# where a dataset comes from

def folder_files(path):
    """The files of a --source folder and its folders that prepare.py reads (SUFFIXES), sorted; others are named in a
    warning."""
    found, entered, others = [], {os.path.realpath(path)}, collections.Counter()
    # linked folders too (a corpus on another disk), each once (a link back up is a loop)
    for d, subs, names in os.walk(path, followlinks=True):
        # not hidden folders (.ipynb_checkpoints, .git) nor a dataset prepare.py wrote (meta.json)
        kept = []
        for s in sorted(subs):
            real = os.path.realpath(os.path.join(d, s))
            if not s.startswith(".") and real not in entered \
                    and (read_meta(os.path.join(d, s)) or {}).get("format") != FORMAT:
                entered.add(real)  # as it is kept: two links side by side to one folder enter it once
                kept.append(s)
        subs[:] = kept
        # nor the meta.json of a dataset written into the folder itself (--out_dir/--name the folder)
        ours = d == path and (read_meta(d) or {}).get("format") == FORMAT
        for f in names:
            if f.startswith(".") or (ours and f in ("meta.json", *OWN_FILES)):
                continue
            if suffix(f) not in SUFFIXES:
                others[suffix(f) or "no suffix"] += 1
                continue
            if not os.path.exists(os.path.join(d, f)):
                raise UserError(f"--source {path}: {os.path.join(d, f)} is a broken link: remove or mend it")
            found.append(os.path.join(d, f))
    found.sort()
    kinds = ", ".join(f"{n} {kind}" for kind, n in others.most_common())
    # a folder of source code or of Markdown notes (alone, or with .txt files): the patterns that read them, as
    # `--source` to paste; not beside records, whose folder's README.md is the dataset's card. The kind it holds more
    # of: code's leave its README.md out too, notes' a site's _config.yml
    code, notes = [k for k in CODE if k in others], [k for k in MARKDOWN if k in others]
    code = code if sum(others[k] for k in code) >= sum(others[k] for k in notes) else []
    named = code or notes
    texts = {suffix(f) for f in found}
    # (the folder's name escaped: "notes [2024]" as a pattern matched nothing, its brackets a set of characters)
    way_in = f"; {'source code is' if code else 'Markdown notes are'} read when named: --source " + " ".join(
        shlex.quote(os.path.join(glob.escape(path), "**", f"*{k}")) for k in sorted({*named, *texts})) \
        if named and texts <= {".txt"} else ""
    if ".ipynb" in others:  # (notebooks: the command that writes them as source code, read as named above)
        way_in += notebook_fix("notebook.ipynb", os.path.join(glob.escape(path), "**", "*.ipynb"))
    if not found:
        # what it holds, and the way in for it
        holds = f" (it holds {kinds}){way_in or '; plain text is read from files named .txt'}" if others else ""
        raise UserError(f"--source {path}: no {', '.join(SUFFIXES)} files in this folder{holds}")
    if others:  # (a .md or .txt.gz among the .txt files, left out: said)
        print(f"warning: --source {path}: left out {sum(others.values()):,} file(s) of other types "
              f"({kinds}); prepare.py reads {', '.join(SUFFIXES)}{way_in}", file=sys.stderr)
    return found


def find_source(dataset, source=None, extra=True, limit=None, left=None):
    """Where a dataset's documents come from, its plan: {description (meta.json's "source"), files (for the
    fingerprint), streams}. A stream is (role, label, make_docs): role "split" (train, its tail to val), "train" or
    "val"; label the file or split, for messages; make_docs() a fresh iterator of its documents, as a stream is read
    more than once (val's count, a vocabulary). source: --source's paths or patterns, or one hf:NAME; none: the mirror,
    a download or the hub. extra: the mirror's train-only files too. limit: --limit (hub datasets are then streamed).
    left: good_docs's LeftOut."""
    if dataset == "chitchat":
        if source:
            raise UserError("--dataset chitchat is generated; it takes no --source")
        return {"description": "generated by prepare.py (chitchat templates, seed 1337, distinct)", "files": [],
                "streams": [("split", "chitchat", chitchat_docs)]}
    if source:
        given = [source] if isinstance(source, str) else list(source)
        if any(s.startswith("hf:") for s in given):
            if len(given) > 1:
                raise UserError(f"--source {' '.join(given)}: a hub dataset (hf:) is read alone: give it as the only "
                                f"--source")
            return hub_source(given[0], dataset, left)
        # folder_of: the --source folder of each file found in one, or the pattern that matched it, by absolute path
        files, folder_of = [], {}
        for pattern, path in ((g, p) for g in given for p in expand_pattern(g, "--source")):
            if os.path.isdir(path):
                found = folder_files(path)
                files += found
                folder_of.update(dict.fromkeys(map(os.path.abspath, found), path))
            elif not os.path.exists(path):
                raise UserError(f"--source {path} is a broken link: remove or mend it" if os.path.islink(path)
                                else f"--source {path}: no such file or folder")
            elif suffix(path) not in (*SUFFIXES, *NAMED_TEXT):
                head = b""
                # (a compressed file's way out is a command; a named pipe is not opened: its open waits for a writer)
                with contextlib.suppress(OSError):
                    if os.path.isfile(path):
                        with open(path, "rb") as f:
                            head = f.read(8)
                packed = decompress_fix(path, head)
                raise UserError(f"--source {path}: unsupported file type; use {', '.join((*SUFFIXES, *MARKDOWN))}, "
                                f"or source code ({', '.join(CODE[:3])}...)"
                                f"{'; ' + packed if packed else table_fix(path) or notebook_fix(path, pattern)}")
            else:
                files.append(path)
                if path != pattern:  # (which matches a mended copy written next to the file too: move_out)
                    folder_of[os.path.abspath(path)] = pattern
        # a file given twice (a file and its folder, links) is read once, known by its inode: else train had it twice
        unique = {}
        for f in files:
            if not os.path.isfile(f):  # a named pipe (mkfifo) ends at its first read: the next one waited for ever
                raise UserError(f"--source {f}: not a regular file (a named pipe?); prepare.py reads its files more "
                                f"than once: save it to a file")
            unique.setdefault(common.file_identity(f), os.path.abspath(f))
        files = list(unique.values())
        return {"description": "--source " + ", ".join(files), "files": files,
                "streams": [("split", f, functools.partial(file_docs, f, dataset, left, folder_of.get(f)))
                            for f in files]}
    if dataset == "text":
        raise NoSource("--dataset text needs --source PATH "
                       "(text, JSON lines, JSON or parquet files, or folders of them)")

    mirror = os.environ.get("DATA_MIRROR")
    spec = MIRROR[dataset]
    if mirror:
        found = {role: [os.path.join(mirror, f) for f in spec.get(role, []) if os.path.isfile(os.path.join(mirror, f))]
                 for role in ("main", "val", "extra")}
        if found["main"]:
            main_role = "train" if found["val"] else "split"
            streams = [(main_role, f, functools.partial(file_docs, f, dataset, left)) for f in found["main"]]
            streams += [("val", f, functools.partial(file_docs, f, dataset, left)) for f in found["val"]]
            repeats = {}  # the extra files' stories left out as repeats, by file (extra_docs)
            if extra:
                streams += [("train", f, functools.partial(extra_docs, f, found["extra"][:i], found["main"], repeats))
                            for i, f in enumerate(found["extra"])]
            files = [os.path.abspath(f) for role, f, _ in streams]
            return {"description": f"DATA_MIRROR {os.path.abspath(mirror)}: "
                                   + ", ".join(os.path.relpath(f, mirror) for f in files),
                    "files": files, "streams": streams, "extra_repeats": repeats}
    if dataset in URLS:
        return {"description": f"{URLS[dataset]}, kept in {download_path(dataset)}", "files": [],
                "streams": [("split", URLS[dataset], functools.partial(url_docs, dataset))]}
    path, config, train_split, val_split = HUB[dataset]
    # offline (HF_DATASETS_OFFLINE=1) only datasets' cache can answer, and streaming never reads it
    streaming = limit is not None \
        and os.environ.get("HF_DATASETS_OFFLINE", "").lower() not in ("1", "true", "yes", "on")
    splits = [("train", train_split), ("val", val_split)] if val_split else [("split", train_split)]
    streams = [(role, f"{path} {s}", functools.partial(hub_docs, dataset, s, streaming, left=left))
               for role, s in splits]
    return {"description": f"Hugging Face hub {path}" + (f" ({config})" if config else ""), "files": [],
            "streams": streams}


def parse_mix(spec):
    """--mix "dailydialog:1,chat:2" -> {"dailydialog": 1.0, "chat": 2.0}; a name without a weight weighs 1."""
    mix = {}
    for item in spec.split(","):
        name, _, weight = item.strip().partition(":")
        if name not in MIXABLE:
            raise UserError(f"--mix {spec}: {name!r} is not one of the conversation sets --mix weighs "
                            f"({', '.join(MIXABLE)}); files of your own go into one dataset together with --source "
                            f"(--source mine.jsonl theirs.jsonl --name NAME)")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = float("nan")
        if not w > 0 or w == float("inf"):
            raise UserError(f"--mix {spec}: the weight of {name} must be a positive number, as in {name}:2")
        if name in mix:
            raise UserError(f"--mix {spec}: {name} is named twice; give it one weight")
        mix[name] = w
    if sum(mix.values()) == float("inf"):  # each finite, their sum not: shares would be nan
        raise UserError(f"--mix {spec}: the weights are too large to add up; they are relative, as in "
                        f"{','.join(f'{n}:{i + 1}' for i, n in enumerate(mix))}")
    return mix


def find_mix_source(mix, extra=True, limit=None, left=None):
    """A mix's plan: each source's own plan (and weight) under "parts"; its streams and files together
    (what a vocabulary is trained on and what the fingerprint watches)."""
    parts = [{"dataset": name, "weight": weight, **find_source(name, None, extra, limit, left)}
             for name, weight in mix.items()]
    return {"description": "; ".join(f"{p['dataset']} (weight {p['weight']:g}): {p['description']}" for p in parts),
            "files": [f for p in parts for f in p["files"]],
            "streams": [s for p in parts for s in p["streams"]], "parts": parts}


def file_state(path):
    """What says a file changed: its size and modification time (a fingerprint's, and build's check of its inputs)."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def file_states(plan):
    """file_state of each file of a plan (find_source), None for one gone."""
    states = []
    for f in plan["files"]:
        try:
            states.append(file_state(f))
        except OSError:
            states.append(None)
    return states


def fingerprint(dataset, plan, tokenizer, tok_hash, limit, val_fraction, pack=None, mix=None, version=VERSION,
                skip_bad_records=False):
    """Changes when anything that decides the tokens does: input files (path, size, mtime), tokenizer, options. version
    None: a vocabulary's inputs, unchanged by a new VERSION (its checkpoints' ids stay valid). skip_bad_records is in
    it only when given, so that datasets made before it stay up to date, and one made leaving bad records out is not
    up to date for the same command without it (which stops at them)."""
    files = [[f, *file_state(f)] for f in plan["files"]]
    state = {"format": FORMAT, "version": version, "dataset": dataset, "source": plan["description"],
             "files": files, "tokenizer": tokenizer, "tokenizer_hash": tok_hash, "limit": limit,
             # --pack 256: the default
             "val_fraction": val_fraction, "pack": DEFAULT_PACK if pack is None else pack, "mix": mix}
    if skip_bad_records:
        state["skip_bad_records"] = True
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


# -----------------------------------------------------------------------------
# tokenizing and writing

class Split:
    """One split being written: token ids (and the loss mask) appended to temporary files, renamed into place by
    commit(), removed by discard(). scratch tells apart the temporary names of unpacked or per-source splits."""

    def __init__(self, folder, name, dtype, has_mask, scratch=""):
        self.dtype = np.dtype(dtype)
        self.paths = [os.path.join(folder, f"{name}.bin")] \
            + ([os.path.join(folder, f"{name}_mask.bin")] if has_mask else [])
        self.files = [open(tmp_name(p + scratch), "w+b") for p in self.paths]
        self.tokens = self.documents = self.bytes = self.padding = 0
        self.cut = 0  # documents (books) cut in two, whose head is here and tail in val: counted in neither
        self.repeats = 0  # documents left out of val because train or val has them (write_splits): counted in neither
        # conversations in pieces, those cut inside an exchange longer than a block, those whose untrained tail went
        self.in_pieces = self.cut_exchanges = self.untrained_tails = 0
        self.replaced = 0  # files commit() has renamed into place

    def write(self, ids, mask, documents, nbytes):
        """Append token ids and their mask (None for text), which end `documents` documents and spell nbytes bytes."""
        self.files[0].write(ids.tobytes())
        if mask is not None:
            self.files[1].write(mask.tobytes())
        self.tokens += len(ids)
        self.documents += documents
        self.bytes += nbytes

    def move_tail(self, keep, documents, other, table):
        """Move every token after the first `keep` (and the last `documents` document ends) to the end of the Split
        other. table: token_bytes(enc), which counts the bytes moved."""
        moved_bytes = 0
        for i, (f, g, size) in enumerate(zip(self.files, other.files, (self.dtype.itemsize, 1))):
            f.flush()
            f.seek(keep * size)
            while block := f.read(size << 20):  # (1M tokens: their byte count's int64 lookup is 8 MB, not 64)
                g.write(block)
                if i == 0:
                    moved_bytes += int(table[np.frombuffer(block, self.dtype)].sum())
            f.truncate(keep * size)
            f.seek(0, os.SEEK_END)
        moved = self.tokens - keep
        self.tokens, other.tokens = keep, other.tokens + moved
        self.documents, other.documents = self.documents - documents, other.documents + documents
        self.bytes, other.bytes = self.bytes - moved_bytes, other.bytes + moved_bytes

    def drop_documents(self, drop, eot, table):
        """Remove the documents whose index is in the set drop, moving the ones after them up in place a block at a
        time. table: token_bytes(enc), which counts the bytes dropped."""
        ends = split_ends(self, eot).tolist()
        runs, dropped_bytes = [], 0  # [start, end) of the kept runs, in tokens
        for i, (a, b) in enumerate(zip([0, *ends], ends)):
            if i in drop:
                dropped_bytes += int(table[read_tokens(self, a, b)].sum())
            elif runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
        for f, size in zip(self.files, (self.dtype.itemsize, 1)):  # tokens, then the mask's bytes
            at = 0  # never past what is still to be read: the copy only moves data towards the start
            for a, b in runs:
                for start in range(a * size, b * size, size << 23):
                    f.seek(start)
                    block = f.read(min(size << 23, b * size - start))
                    f.seek(at)
                    f.write(block)
                    at += len(block)
            f.truncate(at)
            f.seek(0, os.SEEK_END)
        self.tokens = sum(b - a for a, b in runs)
        self.documents -= len(drop)
        self.repeats += len(drop)
        self.bytes -= dropped_bytes

    def sync(self):
        """Flush the files to disk: the slow part of committing, done while the old dataset is still whole."""
        for f in self.files:
            f.flush()
            os.fsync(f.fileno())

    def commit(self):
        """Rename the files into place; after sync(), fsync_replace's own fsync finds nothing left to write."""
        for f, path in zip(self.files, self.paths):
            f.close()
            fsync_replace(f.name, path)
            self.replaced += 1

    def discard(self):
        for f in self.files:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(f.name)


class Packer:
    """Writes documents (token ids ending with <|endoftext|>, and their mask) into a Split: with block 0 as they come,
    else in blocks that no document crosses where avoidable (see the module docstring). table: token_bytes(enc)."""
    FLUSH_TOKENS = 1 << 20  # documents are gathered into writes of about this many tokens

    def __init__(self, out, block, enc, table):
        self.out, self.block, self.table = out, block, table
        self.eot, self.im_start = enc.eot_token, enc.encode_single_token(IM_START)
        self.user_head = [self.im_start] + enc.encode_ordinary("user\n")  # how a user message starts
        self.pos = 0                       # tokens already in the open block
        self.lengths, self.waiting = [], []  # documents held back, sorted by length
        self.pending, self.pending_tokens = [], 0

    def add(self, ids, mask):
        """One document; a conversation cut into pieces still counts as one. Returns the tokens it takes in the split:
        its pieces' (each closed by an <|endoftext|>), a tail left out not counted."""
        self.out.documents += 1
        if not self.block:
            self.emit(ids, mask)
            return len(ids)
        self.out.in_pieces += len(ids) > self.block
        inside = False  # cut inside an exchange: a piece after the first that starts with no user message, or one
        # longer than a block, which the block's end cuts
        placed = 0  # the pieces' turns, without their <|endoftext|>: fewer than the document's if its tail is left out
        taken = 0  # the pieces' tokens, their <|endoftext|> included
        for k, piece in enumerate(self.pieces(ids, mask)):
            placed += len(piece[0]) - int(piece[0][-1] == self.eot)
            taken += len(piece[0])
            inside |= k > 0 and piece[0][:len(self.user_head)].tolist() != self.user_head or len(piece[0]) > self.block
            if len(piece[0]) > self.block:  # a turn or an exchange longer than a block: it starts a block and crosses
                while self.pos and self.lengths and self.lengths[0] <= self.block - self.pos:
                    self.place_one()        # first fill what is left of the open block
                self.pad()
                self.emit(*piece)
                continue
            i = bisect.bisect_right(self.lengths, len(piece[0]))
            self.lengths.insert(i, len(piece[0]))
            self.waiting.insert(i, piece)
            if len(self.waiting) > PACK_LOOKAHEAD:
                self.place_one()
        self.out.cut_exchanges += inside
        self.out.untrained_tails += placed < len(ids) - int(ids[-1] == self.eot)
        return taken

    def pieces(self, ids, mask):
        """A document that fits a block as it is; a longer one in pieces of at most a block, each closed by
        <|endoftext|>: cut before a user message, and before other turns only inside an exchange longer than a block.
        Turns that train nothing stay with the reply after them, even as a piece longer than a block, so a reply trains
        with its question; those after the last reply (a final question) are left out, as context of nothing."""
        if len(ids) <= self.block:
            yield ids, mask
            return
        body = len(ids) - (ids[-1] == self.eot)  # the turns, without the closing <|endoftext|>
        turns = np.flatnonzero(ids[:body] == self.im_start).tolist()
        h = len(self.user_head)
        exchanges = sorted({0, *(t for t in turns if ids[t:t + h].tolist() == self.user_head), body})
        cuts = [0]
        for a, b in zip(exchanges, exchanges[1:]):
            if b - a + 1 > self.block:  # an exchange longer than a block: its turns may be cut apart
                cuts += [t for t in turns if a < t < b]
            cuts.append(b)
        if mask is not None:
            kept = [0]
            for c in cuts[1:-1]:
                if mask[kept[-1]:c].any():  # the turns since the last cut train on something
                    kept.append(c)
            # the turns after the last kept cut: kept if they train on something (or nothing does), else left out
            cuts = kept + [body] if len(kept) == 1 or mask[kept[-1]:body].any() else kept
        first = 0  # index in cuts where the piece being grown starts
        for k in range(2, len(cuts)):
            if cuts[k] - cuts[first] + 1 > self.block:  # turns first..k-1 plus <|endoftext|> would not fit
                yield self.closed(ids, mask, cuts[first], cuts[k - 1])
                first = k - 1
        yield self.closed(ids, mask, cuts[first], cuts[-1])

    def closed(self, ids, mask, a, b):
        """ids[a:b] followed by <|endoftext|> (mask 0)."""
        piece = np.concatenate([ids[a:b], np.array([self.eot], ids.dtype)])
        return piece, None if mask is None else np.concatenate([mask[a:b], np.zeros(1, np.uint8)])

    def place_one(self):
        """Write the longest waiting document that fits the open block, closing the block first if none does."""
        i = bisect.bisect_right(self.lengths, self.block - self.pos)
        if i == 0:
            self.pad()
            i = len(self.waiting)  # every waiting document fits an empty block
        self.lengths.pop(i - 1)
        self.emit(*self.waiting.pop(i - 1))

    def pad(self):
        """Fill the rest of the open block with <|endoftext|>, mask 0."""
        if self.pos:
            self.emit_padding(self.block - self.pos)

    def emit_padding(self, n):
        self.out.padding += n
        self.pos = (self.pos + n) % self.block
        self.pending.append((np.full(n, self.eot, self.out.dtype), np.zeros(n, np.uint8), 0))

    def emit(self, ids, mask):
        if self.block:
            self.pos = (self.pos + len(ids)) % self.block
        self.pending.append((ids, mask, int(self.table[ids].sum())))
        self.pending_tokens += len(ids)
        if self.pending_tokens >= self.FLUSH_TOKENS:
            self.flush()

    def flush(self):
        if self.pending:
            ids, masks, nbytes = zip(*self.pending)
            self.out.write(np.concatenate(ids).astype(self.out.dtype, copy=False),
                           None if masks[0] is None else np.concatenate(masks), 0, sum(nbytes))
        self.pending, self.pending_tokens = [], 0

    def close(self):
        """Write what waits; a packed split ends with a whole block and one more <|endoftext|>."""
        while self.waiting:
            self.place_one()
        if self.block and (self.out.tokens or self.pending):
            self.pad()
            self.emit_padding(1)
        self.flush()


def chunk_ends(n, eot, chunk, read):
    """(a, tokens, ends) for each chunk [a, a + chunk) of n tokens, in order: tokens as read(a, b) gives them, ends the
    offsets just past each <|endoftext|> in it (and n, last, if text follows the last one). A chunk at a time, so that a
    pass over a whole file holds one chunk's ends, not 8 bytes a document."""
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        tokens = read(a, b)
        ends = np.flatnonzero(tokens == eot) + (a + 1)
        if b == n and tokens[-1] != eot:  # text after the last <|endoftext|>
            ends = np.append(ends, n)
        yield a, tokens, ends


def document_ends(ids, eot, chunk=1 << 24):
    """Offsets just past each <|endoftext|> of a token array, and its end if text follows the last one;
    read in chunks, so a big memmap is never compared whole."""
    chunks = chunk_ends(len(ids), eot, chunk, lambda a, b: ids[a:b])
    return np.concatenate([np.zeros(0, np.int64), *(ends for _, _, ends in chunks)])


def read_tokens(split, start, stop, mask=False):
    """Tokens [start, stop) of a Split's file (mask: of its mask file), read with read_items, not from a memmap, whose
    pages read stay counted in the process's memory (30 GB for a 10B-token set)."""
    f = split.files[1 if mask else 0]
    f.flush()
    return read_items(f, start, stop - start, np.uint8 if mask else split.dtype)


def split_ends(split, eot, chunk=1 << 22):
    """document_ends of what was written to a Split, read chunk tokens at a time (read_tokens: no memmap)."""
    chunks = chunk_ends(split.tokens, eot, chunk, functools.partial(read_tokens, split))
    return np.concatenate([np.zeros(0, np.int64), *(ends for _, _, ends in chunks)])


def last_documents_start(split, start, k, eot, chunk=1 << 22):
    """Where the last k documents written to a Split since its token `start` begin, found reading backwards a chunk at a
    time (not 8 bytes a document for every end of a source)."""
    seen, b = 0, split.tokens  # document ends found in [b, split.tokens)
    while b > start:
        a = max(start, b - chunk)
        found = np.flatnonzero(read_tokens(split, a, b) == eot) + (a + 1)
        if seen + len(found) > k:  # the (k + 1)-th end from the last is here
            return int(found[len(found) - (k + 1 - seen)])
        seen, b = seen + len(found), a
    return start  # the stream holds k documents: all of it


def split_documents(split, eot, chunk=1 << 22):
    """(ids, mask or None) of each document written to a Split, in order, read chunk tokens at a time. Each its own
    array, no view of a chunk: a short one the packer held long would have kept its whole chunk in memory."""
    masked = len(split.files) > 1
    # the pieces of the document the chunks end inside so far, each chunk searched once (not quadratic in a long one)
    held_ids, held_mask = [], []
    for a, ids, ends in chunk_ends(split.tokens, eot, chunk, functools.partial(read_tokens, split)):
        mask = read_tokens(split, a, a + len(ids), mask=True) if masked else None
        start = 0
        for end in (ends - a).tolist():  # (a chunk's documents)
            held_ids.append(ids[start:end])
            held_mask.append(mask[start:end] if masked else None)
            yield np.concatenate(held_ids), np.concatenate(held_mask) if masked else None  # (copies: no view)
            held_ids, held_mask, start = [], [], end
        held_ids.append(ids[start:])
        held_mask.append(mask[start:] if masked else None)


def mix_choice(doc_tokens, weights):
    """Which documents make a mix: doc_tokens, per source the token count of each document; returns per source the
    document indices (repeats allowed) whose tokens are about weight / sum(weights) of all the sources' together: whole
    copies of a source first, then a seeded random subset."""
    rng = np.random.default_rng(MIX_SEED)
    total, wsum = sum(int(t.sum()) for t in doc_tokens), sum(weights)
    picks = []
    for tokens, weight in zip(doc_tokens, weights):
        want = total * weight / wsum
        copies, rest = divmod(want, int(tokens.sum()))
        order = rng.permutation(len(tokens))
        reached = np.cumsum(tokens[order])
        k = int(np.searchsorted(reached, rest))  # the first k documents fall short of rest, k + 1 reach it
        if k < len(order) and reached[k] - rest < rest - (reached[k - 1] if k else 0):
            k += 1  # whichever is closer
        picks.append(np.concatenate([np.tile(np.arange(len(tokens)), int(copies)), order[:k]]))
    return picks


def encode_texts(enc, texts, threads=None):
    """enc.encode_ordinary of each text, on every core (tiktoken releases the GIL): one task per thread, as
    encode_ordinary_batch's task per text made short chat messages 5x slower than a plain loop."""
    threads = threads or THREADS
    if threads == 1 or len(texts) < 2:
        return [enc.encode_ordinary(t) for t in texts]
    step = -(-len(texts) // threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda group: [enc.encode_ordinary(t) for t in group],
                         [texts[i:i + step] for i in range(0, len(texts), step)])
        return [ids for part in parts for ids in part]


@functools.lru_cache(maxsize=8)
def token_bytes(enc):
    """UTF-8 length of the text of each token id, so that a split's byte count is a table lookup. Special tokens are 0:
    they are no text, and bits per byte divides by the bytes of the text."""
    special = {enc.encode_single_token(t) for t in enc.special_tokens_set}

    def length(i):
        try:
            return 0 if i in special else len(enc.decode_single_token_bytes(i))
        except KeyError:
            return 0
    return np.array([length(i) for i in range(enc.n_vocab)], dtype=np.int64)


def encode_batch(enc, batch, kind, dtype):
    """A batch of documents -> (ids, mask or None, how many documents it ends: a text's last piece ends one)."""
    eot = enc.eot_token
    if kind == "text":
        lists = encode_texts(enc, [text for text, _ in batch])
        ended = 0
        for ids, (_, end) in zip(lists, batch):
            if end:
                ids.append(eot)
                ended += 1
        return np.fromiter(itertools.chain.from_iterable(lists), dtype, sum(map(len, lists))), None, ended
    # conversations: every message body in one threaded call, then laid out by render_chat
    bodies = iter(encode_texts(enc, [m["content"] for conv in batch for m in conv]))
    ids, mask = [], bytearray()
    for conv in batch:
        conv_ids, conv_mask = render_chat(enc, conv, bodies=[next(bodies) for _ in conv])
        ids += conv_ids
        ids.append(eot)
        mask += bytes(conv_mask)
        mask.append(0)
    return np.array(ids, dtype), np.frombuffer(mask, np.uint8), len(batch)


def doc_kind(doc):
    return "chat" if isinstance(doc, list) else "text"


def doc_texts(doc):
    """The texts of a document: a text's, or a conversation's contents."""
    return [doc[0]] if doc_kind(doc) == "text" else [m["content"] for m in doc]


KIND_NAMES = {"text": "plain text", "chat": "conversations"}
OTHER_KIND = {"text": "chat", "chat": "text"}  # a dataset is one or the other


def mixed_kinds(label, kind, first):
    """The error for a document of kind in label when the dataset's first one (in first) is of the other kind. Both
    are named: only the second was, and a folder of chats with a README.txt sorted first blamed the chats file."""
    return UserError(f"{KIND_NAMES[OTHER_KIND[kind]]} in {first} and {KIND_NAMES[kind]} in {label}: a dataset is one "
                     f"or the other; leave one out, or prepare them separately (--name)")


def batches(docs, kind, label, first):
    """docs in lists of at most BATCH_DOCS documents or BATCH_CHARS characters, for encode_batch. A document not of
    kind, that of the dataset's first document (found in first), is refused naming both places (label: docs')."""
    batch, chars = [], 0
    for doc in docs:
        if doc_kind(doc) != kind:
            raise mixed_kinds(label, doc_kind(doc), first)
        batch.append(doc)
        chars += sum(map(len, doc_texts(doc)))
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def ends_document(doc):
    # a conversation, or the last piece of a text (a long one comes in pieces)
    return doc_kind(doc) == "chat" or doc[1]


def label_of(streams):
    """The sources of a dataset's "split" streams, for a message: one's label, or the first's and how many more."""
    labels = [label for role, label, _ in streams if role == "split"]
    return labels[0] + (f" (and {len(labels) - 1} more file(s))" if len(labels) > 1 else "") if labels else "the data"


def val_counts(counts, kind, val_fraction, label, limit, chars=None):
    """How many of the last documents of each "split" source go to val: {stream index: k}, None for a single text
    document (a book) cut at its text's share instead. counts {stream index: documents}; chars {stream index: characters
    of plain text}, where known. The share is of the sources together: cut one by one, a folder of files of 2 or 3
    conversations kept a third of them out of training. Val gets one document at least, and train keeps one."""
    given = [i for i, n in counts.items() if n]
    if kind == "chat" and sum(counts.values()) == 1:
        # a single conversation cut as a book would train on half a turn and validate on the rest
        if limit == 1:
            raise UserError(f"--limit 1 takes one conversation from {label}, and a val split needs 2 or more: give "
                            f"--limit 2 or more")
        # (not --val_fraction 0: train.py evaluates on the val split)
        raise UserError(f"{label} holds one conversation, and a val split needs 2 or more: add conversations")
    # a single text document in a source is a book, cut at its text's share, when the documents are too few to give val
    # a whole one (a handful of books); with more, whole documents go to val
    few = round(sum(counts.values()) * val_fraction) == 0
    # and so is one over twice val's share of all the text (a folder of short notes and a book gave val the whole book)
    total = sum((chars or {}).values())
    ks, seen, taken = {}, 0, 0
    for i in given:
        n = counts[i]
        big = chars and chars.get(i, 0) > 2 * total * val_fraction
        if n == 1 and (len(given) == 1 or (kind == "text" and (few or big))):
            ks[i] = None
            continue
        seen += n
        k = min(n, max(0, round(seen * val_fraction) - taken))
        if i == given[-1] and taken + k == 0:
            k = 1
        ks[i] = k = max(0, min(k, seen - 1 - taken))
        taken += k
    return ks


def count_split_docs(streams, budget):
    """({stream index: documents}, {stream index: characters of plain text}, kind of the first document) of a dataset's
    "split" streams, read as --limit (budget, not spent) lets them be: what val_counts needs before the first source is
    cut, and what train_docs cuts a book by."""
    budget, docs, chars, kind = dict(budget), {}, {}, None
    for i, (role, _, make_docs) in enumerate(streams):
        if role == "split":
            docs[i] = chars[i] = 0
            for d in limited(make_docs(), budget, role):
                kind = kind or doc_kind(d)
                docs[i] += ends_document(d)
                chars[i] += len(d[0]) if doc_kind(d) == "text" else 0
    return docs, chars, kind


def limited(docs, budget, role):
    """At most budget[role] documents (None: all); pieces of a document count once, at its end. Nothing is read
    past the last one (a streamed hub split downloads as it is read)."""
    docs = iter(docs)
    while budget[role] is None or budget[role] > 0:
        doc = next(docs, None)
        if doc is None:
            return
        if budget[role] is not None and ends_document(doc):
            budget[role] -= 1
        yield doc


def folded(text):
    """text with case and spacing ignored, as documents are told apart (document_key, extra_docs)."""
    return " ".join(text.lower().split())


def document_key(doc, before=None):
    """What tells documents apart: a conversation's roles and words, a text's words, case and spacing ignored. A long
    text comes in pieces: before is the key of the pieces before this one (None: the first)."""
    if doc_kind(doc) == "chat":
        return hash(tuple((m["role"], folded(m["content"])) for m in doc))
    return hash((before, folded(doc[0])))



def keyed(docs, keys):
    """docs as they come, appending to keys (an array "q") the document_key of each document as it ends."""
    before = None
    for doc in docs:
        key = document_key(doc, before)
        if ends_document(doc):
            keys.append(key)
            before = None
        else:
            before = key
        yield doc


def unseen(docs, ordered, val):
    """A source's own validation split less the documents train has (ordered: train's sorted document_keys) or it has
    had already, counted in the Split val's repeats: DailyDialog's validation file repeats 98 of its 1,000 dialogues
    from train, and a val loss over documents trained on reads better than the model is. Only whole documents are looked
    up (no validation split is a book)."""
    first, kept = True, set()  # doc begins a document; kept: the keys of the documents val keeps (as many as val's)
    for doc in docs:
        if first and ends_document(doc):
            key = document_key(doc)
            at = int(np.searchsorted(ordered, key))
            if key in kept or (at < len(ordered) and ordered[at] == key):
                val.repeats += 1
                continue
            kept.add(key)
        first = ends_document(doc)
        yield doc


def keys_in(keys, among, chunk=1 << 20):
    """Which of keys (int64) are among the keys `among` (int64, one per train document: many more), looked up a chunk at
    a time in keys sorted: np.isin sorted the two together, about 35 bytes a train document."""
    ordered = np.unique(keys)
    found = np.zeros(len(ordered), bool)
    for a in range(0, len(among) if len(ordered) else 0, chunk):
        part = among[a:a + chunk]
        at = np.minimum(np.searchsorted(ordered, part), len(ordered) - 1)
        found[at[ordered[at] == part]] = True
    return found[np.searchsorted(ordered, keys)] if len(ordered) else np.zeros(0, bool)


def repeated(val_keys, *trains):
    """The indices of val's documents (val_keys, their document_keys in order; None: a book's tail) that one of trains
    (arrays "q" of keys) has, or val has before them."""
    candidates = [i for i, key in enumerate(val_keys) if key is not None]
    found = np.array([val_keys[i] for i in candidates], np.int64)
    hits = np.zeros(len(candidates), bool)
    for train in trains:
        if train and candidates:  # (train's keys stay an array, no set of millions of ints)
            hits |= keys_in(found, np.frombuffer(train, np.int64))
    drop = {i for i, hit in zip(candidates, hits.tolist()) if hit}
    kept = set()  # and a document val has already, as unseen() leaves it out of a source's own validation split
    for i in candidates:
        if val_keys[i] in kept:
            drop.add(i)
        kept.add(val_keys[i])
    return drop


def limit_budget(limit, val_fraction):
    """What --limit lets each role of stream (find_source) read: {role: documents, None for all}, spent by limited():
    the first N documents over the files of a dataset together, N more of train-only files, and of a source's own
    validation split its val_fraction share (none at --val_fraction 0)."""
    return {"split": limit, "train": limit,
            "val": (limit and max(1, round(limit * val_fraction))) if val_fraction else 0}


def open_streams(streams):
    """Open every stream of a plan lazily: ([(stream index, role, label, documents)], the kind of the first document,
    the label of its stream). The first document decides the kind (and masks); empty streams before it are left out."""
    kind, first_label, opened = None, None, []
    for i, (role, label, make_docs) in enumerate(streams):
        docs = iter(make_docs())
        if kind is None:
            first = next(docs, None)
            if first is None:
                continue
            kind, first_label, docs = doc_kind(first), label, itertools.chain([first], docs)
        opened.append((i, role, label, docs))
    if kind is None:
        raise UserError(f"no documents found in {', '.join(label for _, label, _ in streams)}: "
                        f"give files that hold text")
    return opened, kind, first_label


def move_val_share(out, val, start, n, k, eot, val_fraction, table):
    """Move a "split" stream's share of val, written to the Split out from token start on (n documents), to the Split
    val: its last k documents (val_counts), or with k None its single document (a book) cut where its text reaches the
    share (text_share), as nanoGPT cuts its characters; the tail, not a sample, so val is the same text every run.
    Returns how many of the stream's documents train keeps whole, and whether train now ends with a book's head, no
    <|endoftext|> yet."""
    if k:
        out.move_tail(last_documents_start(out, start, k, eot), k, val, table)
        return n - k, False
    if k is not None:  # 0: val takes none of this source's documents
        return n, False
    size = out.tokens - start  # the book's text and its <|endoftext|>
    if size < 3:  # one token of text, too short to cut (val got its <|endoftext|> alone): val takes it whole, as the
        out.move_tail(start, n, val, table)  # other sources may have given val nothing
        return 0, False
    # val gets a token of text at least, besides the <|endoftext|>. The cut is at 1 - val_fraction of the text's bytes,
    # not tokens, so that val is the same text whatever the vocabulary
    keep = start + min(size - 2, max(1, text_share(out, start, table, 1 - val_fraction)))
    out.move_tail(keep, 0, val, table)
    out.documents, out.cut = out.documents - n, out.cut + n
    return n, True


def text_share(split, start, table, share):
    """How many of a Split's tokens from start on (a book's) spell the first share of their text's bytes, rounded up:
    read a million tokens at a time, twice. table: token_bytes(enc)."""
    step = 1 << 20
    chunks = [(a, min(a + step, split.tokens)) for a in range(start, split.tokens, step)]
    want = math.ceil(sum(int(table[read_tokens(split, a, b)].sum()) for a, b in chunks) * share)
    done = 0
    for a, b in chunks:
        spelt = done + np.cumsum(table[read_tokens(split, a, b)])
        i = int(np.searchsorted(spelt, want))  # the first token after which the text reaches want bytes
        if i < len(spelt):
            return a - start + i + 1
        done = int(spelt[-1])
    return split.tokens - start


def write_own_val_again(streams, opened, val, budget, write):
    """A source's own validation split that train has whole is kept all the same (train.py needs a val split): its
    streams read again into the Split val, within --limit's share, each document once. write: write_splits' tokenizer of
    documents into a Split. Returns the document_keys of the documents written, in order."""
    own = [(i, label) for i, role, label, _ in opened if role == "val"]
    warn_all_in_train(", ".join(label for _, label in own))
    val.repeats = 0
    own_keys = array("q")
    for i, label in own:
        write(keyed(limited(unseen(streams[i][2](), np.zeros(0, np.int64), val), budget, "val"), own_keys), val, label)
    return own_keys


def write_splits(folder, streams, enc, splits, limit, val_fraction, progress, scratch, pack, doc_keys=None, sizes=None,
                 not_text=None):
    """Tokenize every stream of a plan (find_source) with enc into temporary train and val Splits in folder, put in
    splits as soon as they exist so the caller can remove them (scratch tells apart the temporary files of several
    calls); returns the kind, "text" or "chat". Val is each "split" stream's tail (val_counts) and the "val" streams,
    less what train or val has already. progress counts input bytes (sizes: the streams' files'). pack: the --pack
    given, refused on text (a mix's block: its text is refused by not_text first). doc_keys: a dict given train's and
    val's document_keys, for a mix's cross-dataset dedup (mix_splits). not_text: where documents must be conversations,
    the words refusing plain text after "FILE begins with plain text, but "."""
    dtype = np.uint16 if enc.n_vocab <= 1 << 16 else np.uint32
    table = token_bytes(enc)
    budget = limit_budget(limit, val_fraction)
    opened, kind, first_label = open_streams(streams)
    if kind == "text" and not_text:
        # a later file of conversations (a folder of chats whose README.txt sorts first): the mix of kinds is the fault
        for _, _, label, docs in opened[1:]:
            if doc_kind(next(docs, None)) == "chat":
                raise mixed_kinds(label, "chat", first_label)
        raise UserError(f"{first_label} begins with plain text, but {not_text}")
    if kind == "text" and pack:
        raise text_packed(pack)
    for name in ("train", "val"):
        splits[name] = Split(folder, name, dtype, kind == "chat", scratch)
    train, val = splits["train"], splits["val"]
    # the disk's room is checked at each 1% of plain text's input (conversations' JSON would make the estimate too big)
    total = sum(sizes) if sizes and kind == "text" else 0
    room = {"read": 0, "check": total / 100}

    def write(docs, out, label):
        """Tokenize docs into the Split out; returns how many documents ended."""
        n = 0
        for batch in batches(docs, kind, label, first_label):
            ids, mask, ended = encode_batch(enc, batch, kind, dtype)
            n += ended
            nbytes = int(table[ids].sum())
            out.write(ids, mask, ended, nbytes)
            progress.update(nbytes)
            room["read"] += nbytes
            if total and room["read"] >= room["check"]:
                room["check"] = room["read"] + total / 100
                check_room(folder, (train.tokens + val.tokens) * np.dtype(dtype).itemsize, room["read"], total)
        return n

    # several sources share the val count: counted first, in a pass that reads without tokenizing
    roles = [role for role, _, _ in streams]
    ks = None
    if roles.count("split") > 1 and val_fraction:
        counts, chars, _ = count_split_docs(streams, budget)
        ks = val_counts(counts, kind, val_fraction, label_of(streams), limit, chars)
    # a document train has, or val has already, is left out of val, known by its document_key (train's kept as 8 bytes a
    # document): of a source's own validation split as it is read, so that its --limit share counts what val keeps
    own_val = "val" in roles and val_fraction
    # of a val cut from the same sources once every source is read (DailyDialog's tail gave val 99 dialogues train had);
    # val's keys in its order, None for a book's tail
    dedup = val_fraction and "split" in roles and "val" not in roles
    train_keys, val_keys, ordered = array("q"), [], None  # ordered: train's keys sorted, for own_val
    own_keys = array("q")  # of the documents val keeps of a source's own validation split, for doc_keys
    unended_book = False  # train ends with a book's head, cut from its tail (move_val_share)
    for i, role, label, docs in opened:
        out = val if role == "val" else train
        if unended_book and role != "val":  # end it, or it runs into the next file's text as one document
            out.write(np.array([enc.eot_token], dtype), None, 0, 0)
            unended_book = False
        start = out.tokens  # where this stream starts, for the val cut
        keys = array("q")  # of this stream's documents, in order
        if role == "val" and own_val:
            if ordered is None:
                ordered = np.sort(np.frombuffer(train_keys, np.int64))
            docs = unseen(docs, ordered, out)
        docs = limited(docs, budget, role)
        if dedup or own_val:  # train's, within --limit (and val's own, for doc_keys)
            docs = keyed(docs, keys)
        before = out.bytes
        n = write(docs, out, label)  # its documents
        if sizes:  # the rest of its file: its records' JSON, separators, spaces stripped
            progress.update(max(0, sizes[i] - (out.bytes - before)))
        if role == "val":
            own_keys.extend(keys)
        elif role != "split" or val_fraction == 0 or out.tokens == start:
            train_keys.extend(keys)
        else:
            k = (ks or val_counts({i: n}, kind, val_fraction, label, limit))[i]
            kept, unended_book = move_val_share(out, val, start, n, k, enc.eot_token, val_fraction, table)
            train_keys.extend(keys[:kept])
            val_keys += keys[kept:]
            if unended_book:
                val_keys.append(None)
    if own_val and val.repeats and not val.documents:
        own_keys.extend(write_own_val_again(streams, opened, val, budget, write))
    drop = repeated(val_keys, train_keys)
    if drop and len(drop) == len(val_keys):  # val keeps them: train.py needs a val split, and nothing else is left
        warn_all_in_train(label_of(streams))
        drop = repeated(val_keys)  # each once all the same
    if drop:
        val.drop_documents(drop, enc.eot_token, table)
    if doc_keys is not None:  # (a val cut from the sources, or a source's own validation split: never both)
        doc_keys["train"] = train_keys
        doc_keys["val"] = [key for i, key in enumerate(val_keys) if i not in drop] + list(own_keys)
    # train.py evaluates on val: one of <|endoftext|> alone, or of nothing, is refused now, not found up to date then
    if not train.bytes and kind == "text":  # (a one-token text goes to val whole)
        raise too_little_text(streams, "train")
    if not val.bytes and (val_fraction or val.tokens):
        raise too_little_text(streams, "val")
    return kind


def check_room(folder, written, read, total):
    """Refuses a build whose token files, written bytes of them for read bytes of its total of input so far, will not
    fit in the disk space left in folder: said in its first seconds, not after minutes of work."""
    more = written * (total - read) / max(read, 1)
    free = shutil.disk_usage(folder).free
    if more > free:
        raise UserError(f"{folder}: this dataset's token files will take about {(written + more) / 1e6:,.0f} MB (by "
                        f"its first {read / 1e6:,.0f} MB of {total / 1e6:,.0f} MB of input), and only "
                        f"{(written + free) / 1e6:,.0f} MB is free there: free some space or write elsewhere "
                        f"(--out_dir)")


def warn_all_in_train(label):
    """Said of a val split kept though train has every document of it."""
    print(f"warning: {label}: every document of the val split is also in train (the text repeats them), so the val "
          f"loss reads better than the model is: add documents that are not repeated", file=sys.stderr)


def too_little_text(streams, split):
    return UserError(f"{label_of(streams)}: too little text to cut into train and val ({split} would hold none): add "
                     f"text")


def train_docs(make_docs, budget, role, val_fraction, k, n, chars):
    """A stream's documents that write_splits puts in train: all of a "split" stream of n documents but the k last it
    moves to val (val_counts); of a single document (k None, a book) the first 1 - val_fraction of its chars characters
    (rounded up), never all of them: a document short enough to become one token goes to val whole."""
    if role != "split" or not val_fraction:
        yield from limited(make_docs(), budget, role)
        return
    keep = None if k is None else n - k  # documents
    # characters, for a single document; never all of them (a few characters become one token, which goes to val whole),
    # else the ceil of its share, so that a vocabulary trained again on the same text stays the same
    left = min(chars * (1 - val_fraction), chars - 1)
    for doc in limited(make_docs(), budget, role):  # to the end, spending the budget as write_splits does
        if keep is not None:
            if keep <= 0:
                continue
            keep -= ends_document(doc)
        elif left <= 0:
            continue
        else:
            doc, left = (doc[0][:math.ceil(left)], doc[1]), left - len(doc[0])
        yield doc


def text_packed(pack):
    return UserError(f"--pack {pack}: only conversations are packed (plain text trains on every token, padding "
                     f"included); drop --pack")


def input_sizes(plan, limit):
    """The text_bytes of the file each stream of plan reads, in order; None where the streams are not all files read
    whole (a hub split, a download, chitchat, --limit): the progress bar then has no total."""
    files, labels = plan["files"], [label for _, label, _ in plan["streams"]]
    # (a file's stream is labelled with its path; a local folder read as hf:PATH has files, but streams of splits)
    if limit is not None or not files or [os.path.abspath(label) for label in labels] != files:
        return None
    return [text_bytes(f) for f in files]


def text_bytes(path):
    """About how many bytes of text a file of the input holds: its size, but a parquet file's data uncompressed, as its
    footer says (a compressed shard holds several times its size)."""
    if suffix(path) == ".parquet":
        import pyarrow.parquet as pq  # comes with datasets
        with contextlib.suppress(OSError, ValueError):  # (not a parquet file: said where its records are read)
            meta = pq.ParquetFile(path).metadata
            return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return os.path.getsize(path)


def metered(make_docs, progress):
    """make_docs, its documents counted on progress in bytes of their text (a conversation's contents')."""
    def docs():
        for doc in make_docs():
            for text in doc_texts(doc):
                progress.update(len(text) if text.isascii() else len(text.encode()))  # (isascii: no copy)
            yield doc
    return docs


def train_vocabulary(plan, vocab_size, path, limit, val_fraction, pack=None):
    """Train a BPE vocabulary of vocab_size on the dataset's own train text (message contents for
    conversations), with the same --limit, and save it as path: the val split stays unseen."""
    def docs():
        """The train documents the sample is taken from, each as its texts, with a progress bar in bytes. Mixed kinds,
        and --pack on text, are refused here as write_splits would, before minutes of training."""
        desc = f"{os.path.dirname(path) or '.'} vocabulary" if path else "vocabulary"  # (a test's path: None)
        with progress_bar(desc, size if limit is None else None) as progress:
            yield from read(progress)

    def read(progress):
        kind, first_label, cut = None, None, 0  # the first document's kind and stream; characters cut to train and val
        for part in plan.get("parts", [plan]):  # a mix: --limit counts in each of its datasets, as in build()
            budget = limit_budget(limit, val_fraction)
            counts, chars, first = count_split_docs(part["streams"], budget) if val_fraction else ({}, {}, None)
            cut += sum(chars.values())
            ks = val_counts(counts, first, val_fraction, label_of(part["streams"]), limit, chars)
            sizes = input_sizes(part, limit)
            for i, (role, label, make_docs) in enumerate(part["streams"]):
                before = progress.n
                # (not a source's own validation split)
                for doc in train_docs(metered(make_docs, progress), budget, role, val_fraction, ks.get(i),
                                      counts.get(i, 0), chars.get(i, 0)) if role != "val" else ():
                    if kind is not None and doc_kind(doc) != kind:
                        raise mixed_kinds(label, doc_kind(doc), first_label)
                    kind, first_label = doc_kind(doc), first_label or label
                    if kind == "text" and pack:
                        raise text_packed(pack)
                    yield doc_texts(doc)

                if sizes:  # the rest of its file, as the build's bar comes to it: its records' JSON, separators,
                    # val's tail (which train_docs leaves unread)
                    progress.update(max(0, sizes[i] - (progress.n - before)))
        # a text of one character: val gets it, train none; said as write_splits says it, not as train_bpe's "no text"
        if cut and not sample.chars:
            raise too_little_text(plan["streams"], "train")

    size = sum(text_bytes(f) for f in plan["files"] if os.path.isfile(f))
    # --limit's first documents say no size (as a hub split's files do not): their first ones, up to the cap
    sample = VocabSample(size if limit is None else 0)
    say_training(vocab_size, sample, size, " (its train text)")
    t0 = time.time()
    enc = learn_vocabulary(sample, docs, vocab_size, path, plan["description"])
    on = sample.said("its train text") or "the data"  # a sample: of what, and why
    print(f"trained a {enc.n_vocab}-token vocabulary on {on} in {time.time() - t0:.1f}s")
    return enc


def is_dataset_name(name):
    """A dataset's name is a folder in data/ (--out_dir, train.py's --data_dir), not a path."""
    return bool(re.fullmatch(r"[\w.-]+", name)) and name not in (".", "..")


def made_with_own_vocabulary(meta, folder):
    """Whether meta.json's dataset was made with a vocabulary of its own (--vocab_size), the folder's VOCAB_FILE, which
    it names by an absolute path; in a folder moved since, the file there is known by its hash, so that the dataset
    keeps it and its checkpoints go on fitting."""
    tokenizer, own = meta.get("tokenizer"), os.path.abspath(os.path.join(folder, VOCAB_FILE))
    if tokenizer == own:
        return True
    if not (isinstance(tokenizer, str) and os.path.basename(tokenizer) == VOCAB_FILE and os.path.isfile(own)):
        return False
    try:
        return tokenizer_hash(get_tokenizer(own)) == meta.get("tokenizer_hash")
    except UserError:  # damaged: no vocabulary of the dataset's
        return False


def meta_options(meta, folder, odd=None):
    """prepare()'s options that made a dataset, from its meta.json; one from before "options": what it says of them.
    A meta.json too odd to say raises (KeyError, TypeError...), or gives odd when it is not None."""
    try:
        return meta.get("options") or {
            "source": meta["source"][len("--source "):].split(", ")
                      if meta.get("source", "").startswith("--source ") else None,
            "tokenizer": meta.get("tokenizer", "gpt2"), "limit": meta.get("limit"),
            "vocab_size": meta.get("vocab_size") if made_with_own_vocabulary(meta, folder) else None,
            "pack": meta.get("pack") if meta.get("kind") == "chat" and meta.get("pack") != DEFAULT_PACK else None,
            "mix": {source: m["weight"] for source, m in meta["mix"].items()} if meta.get("mix") else None}
    except (KeyError, TypeError, AttributeError, ValueError):
        if odd is None:
            raise
        return odd


def new_command(folder, *more, source="FILE"):
    """The prepare.py command that makes a dataset in folder with no meta.json to say how it was made: one of
    prepare.py's own by its name, any other from the user's files (source). more: options added."""
    name, out_dir = os.path.basename(folder), os.path.dirname(folder) or "."
    if name in NANOGPT_DATASETS:  # (nanoGPT's shakespeare_char is made here, from no file of the user's)
        dataset, options = NANOGPT_DATASETS[name]
        # (a model's --tokenizer, more, gives the vocabulary: --vocab_size would train another beside it)
        args = ["--dataset", dataset, *([] if "--tokenizer" in more else options), "--name", name]
    else:
        args = ["--dataset", name] if name in DATASETS and name != "text" else \
            ["--dataset", "text", "--source", source, "--name", name]
    if os.path.abspath(out_dir) != os.path.abspath(DEFAULT_OUT_DIR):
        args += ["--out_dir", out_dir]
    return common.script_command("prepare.py", *args, *more)


def rebuild_command(meta, folder=None):
    """The prepare.py command line that builds meta.json's dataset again, for every script's hints (on an intact dataset
    it says "up to date"). folder: where the dataset is (default meta["folder"], else data/<name>), giving --name and
    --out_dir. A meta.json too damaged to say gives new_command's."""
    meta = meta if isinstance(meta, dict) else {}
    folder = os.path.normpath(folder or meta.get("folder") or os.path.join(DEFAULT_OUT_DIR, str(meta.get("name"))))
    try:
        dataset, name, out_dir = meta["dataset"], os.path.basename(folder), os.path.dirname(folder) or "."
        o = meta_options(meta, folder)

        def number(x):  # 2.0 as 2, and every digit of 0.15: the fingerprint has them
            return repr(x).removesuffix(".0")

        args = ["--mix", ",".join(f"{source}:{number(weight)}" for source, weight in o["mix"].items())] \
            if dataset == "mix" else ["--dataset", dataset]
        if o.get("source"):
            args += ["--source", *o["source"]]
        if name != dataset:
            args += ["--name", name]
        if os.path.abspath(out_dir) != os.path.abspath(DEFAULT_OUT_DIR):
            args += ["--out_dir", out_dir]
        if o.get("vocab_size"):
            args += ["--vocab_size", str(o["vocab_size"])]
        elif o.get("tokenizer", "gpt2") != "gpt2" or meta.get("tokenizer", "gpt2") != "gpt2":
            # a switch to gpt2 is said: without a word the dataset would keep the vocabulary it has
            args += ["--tokenizer", o.get("tokenizer", "gpt2")]
        if o.get("limit") is not None:
            args += ["--limit", str(o["limit"])]
        if o.get("val_fraction", DEFAULT_VAL_FRACTION) != DEFAULT_VAL_FRACTION:
            args += ["--val_fraction", number(o["val_fraction"])]
        if o.get("pack") is not None:
            args += ["--pack", str(o["pack"])]
        if o.get("extra") is False:
            args.append("--no_extra")
        if o.get("skip_bad_records"):
            args.append("--skip_bad_records")
        return common.script_command("prepare.py", *args)
    except (KeyError, TypeError, AttributeError, ValueError):
        return new_command(folder)


def next_step(meta, out_dir, tokenizer=None):
    """The line that ends what prepare.py says of a dataset: the train.py command that trains on it, or, with no val
    split (which train.py refuses), how eval.py reads it."""
    if not meta["splits"]["val"]["tokens"]:
        return ("  no val split (--val_fraction 0): train.py, which evaluates on one, refuses it; eval.py reads it "
                "with --split train")
    return f"  train on it: {train_on_command(meta, out_dir, tokenizer)}"


def train_on_command(meta, out_dir, tokenizer=None):
    """The train.py command that trains on the dataset in out_dir, meta its meta.json: a new model, or a fine-tune of
    the model whose vocabulary it was made in (tokenizer: the --tokenizer given, else the one the dataset kept),
    --data_dir then always named (train.py's default is the checkpoint's own data folder); --block_size where
    conversations are packed for another context than the model's, or where a split is too short for one window."""
    name = meta["name"]
    o = meta_options(meta, os.path.join(out_dir, name), odd={})
    tokenizer = tokenizer or (None if o.get("vocab_size") else o.get("tokenizer"))
    # (the name prepare() read it by, so that the vocabulary and context it cached are not loaded again)
    context = model_context(tokenizer) if tokenizer not in (None, "gpt2") else None
    args = ["--dataset", name]
    if context or os.path.abspath(out_dir) != os.path.abspath(DEFAULT_OUT_DIR):
        args += ["--data_dir", out_dir]
    if context:
        args += ["--init_from" if os.path.isdir(tokenizer) else "--checkpoint", common.shown_path(tokenizer)]
    block = meta.get("pack") or 0  # (text, and --pack 0: not packed)
    if block and block != (context or DEFAULT_PACK) and block <= (context or MAX_PACK):
        args += ["--block_size", str(block)]
    # text too short for one window of the model's context: the largest power of two that fits both splits
    fits = min(meta["splits"][s]["tokens"] for s in ("train", "val")) - 1
    if not block and 0 < fits < (context or DEFAULT_PACK):
        args += ["--block_size", str(1 << (fits.bit_length() - 1))]
    return common.script_command("train.py", *args)


@contextlib.contextmanager
def ctrl_c_held():
    """Ctrl-C (and SIGTERM, SIGHUP) waits until the block is done, then interrupts as usual: for a few renames that must
    not stop halfway. Signal handlers run in the main thread only; elsewhere the block runs unguarded."""
    caught, previous = [], {}
    try:
        for sig in (signal.SIGINT, *common.stop_signals()):
            previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            # to the usual handler: KeyboardInterrupt, or run_main's exit for SIGTERM and SIGHUP
            signal.raise_signal(caught[0])


def unreadable_field(meta):
    """What of a dataset's meta.json that reading it needs is not what prepare.py writes, as the field and its value
    ("vocab_size '512'"), or None: an edit by hand or damage passes json.load, and ended the scripts in a traceback."""
    vocab_size = meta.get("vocab_size") if isinstance(meta, dict) else None
    return (f"a JSON {type(meta).__name__}" if not isinstance(meta, dict) else
            f"format {meta.get('format')}" if meta.get("format") != FORMAT else
            f"dtype {meta.get('dtype')!r}" if meta.get("dtype") not in ("uint16", "uint32") else
            f"vocab_size {vocab_size!r}" if type(vocab_size) is not int or vocab_size < 1 else
            f"tokenizer {meta['tokenizer']!r}" if not isinstance(meta.get("tokenizer", "gpt2"), str) else None)


def damaged_field(folder, meta, enc=None):
    """What of a meta.json that reads (unreadable_field None), in folder, is not what prepare.py writes, said as
    unreadable_field says it, or None: a vocab_size other than enc's (a larger one trains a model its tokenizer does not
    fit), a has_mask lost from a chat set (it would train on every token), counts of its splits that are none."""
    vocab_size, has_mask = meta["vocab_size"], meta.get("has_mask")
    # masks beside has_mask false are a lost has_mask (a chat set rebuilt as text loses its masks)
    masks = [f for f in ("train_mask.bin", "val_mask.bin") if os.path.exists(os.path.join(folder, f))]
    return (f"vocab_size {vocab_size} for a vocabulary of {enc.n_vocab}" if enc and vocab_size != enc.n_vocab else
            # (what every script compares a vocabulary with: gone, each said "tokenizer ... changed")
            f"tokenizer_hash {meta.get('tokenizer_hash')!r}" if not isinstance(meta.get("tokenizer_hash"), str) else
            f"has_mask {has_mask!r}" if not isinstance(has_mask, bool) else
            f"has_mask {has_mask} for kind {meta['kind']!r}" if "kind" in meta and has_mask != (meta["kind"] == "chat")
            else f"has_mask False beside {masks[0]}" if masks and not has_mask else
            # (a pack of text ended train.py's start in a TypeError traceback)
            f"version {meta['version']!r}" if not nonnegative_int(meta.get("version", 1)) else
            f"pack {meta['pack']!r}" if not nonnegative_int(meta.get("pack", 0)) else split_problem(meta))


def split_problem(meta):
    """damaged_field's words for the counts of meta.json's splits, or None: each split has tokens and bytes, counts
    (bytes 0 is no damage: a split of special tokens alone spells no text)."""
    splits = meta.get("splits")
    for split in ("train", "val"):
        counts = splits.get(split) if isinstance(splits, dict) else None
        if not isinstance(counts, dict):
            return f"no {split} split in its splits"
        for k in ("tokens", "bytes"):
            if not nonnegative_int(counts.get(k)):
                return f"{split} {k} {counts.get(k)!r}"
        if not nonnegative_int(counts.get("in_pieces", 0)):  # (train.py's packing warning says it)
            return f"{split} in_pieces {counts['in_pieces']!r}"
    return None


def is_complete(folder, meta, enc=None):
    """The files meta.json describes are all there, with the sizes it gives, and it is one this code reads
    (unreadable_field, damaged_field: a damaged one is made again, not found up to date; enc: its vocabulary)."""
    if unreadable_field(meta) or damaged_field(folder, meta, enc):
        return False
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            tokens = meta["splits"][split]["tokens"]
            if os.path.getsize(os.path.join(folder, f"{split}.bin")) != tokens * itemsize:
                return False
            if meta["has_mask"] and os.path.getsize(os.path.join(folder, f"{split}_mask.bin")) != tokens:
                return False
        return True
    except (KeyError, TypeError, OSError):
        return False


def check_writable(folder):
    """Fail with one line naming the dataset's folder when it cannot be made or written, checked as the first write is
    about to start: a dataset up to date in a read-only folder is said to be."""
    with ctrl_c_held():  # the probe file is made and removed whole: a Ctrl-C in between left it in the dataset
        check_output(folder, "the dataset folder", folder=True)


def own_vocabulary(dataset, plan, folder, old, vocab_size, limit, val_fraction, mix, force):
    """The dataset's own vocabulary (--vocab_size), retrained when asked to rebuild or when its size or inputs change.
    Returns its path, the fingerprint of its inputs, and the temporary file to train it into (None: keep it)."""
    tokenizer = os.path.join(folder, VOCAB_FILE)
    try:
        current = get_tokenizer(tokenizer).n_vocab if os.path.exists(tokenizer) else None
    except UserError:  # damaged (a disk error, an editor): retrained like a missing one, it is the dataset's own
        current = None
    # kept while its inputs and size stay the same (another --pack needs no new one), so checkpoints trained on it go on
    # fitting; other data gets its own. A mix's weights change how often train repeats documents, not the text learnt
    # from: other weights keep it, other sources or their order do not
    learnt, parts = plan, None
    if mix:
        learnt, parts = dict(plan, description="; ".join(p["description"] for p in plan["parts"])), list(mix)
    vocab_fp = fingerprint(dataset, learnt, f"trained, {vocab_size} ids", None, limit, val_fraction, mix=parts,
                           version=None)
    # a mix's vocabulary made before that, fingerprinted with the weights: the same weights again keep it
    by_weights = mix and fingerprint(dataset, plan, f"trained, {vocab_size} ids", None, limit, val_fraction, mix=mix,
                                     version=None)
    # a dataset from before vocab_fingerprint (VERSION 4) built on this vocabulary keeps it once, as then
    old_own = old and old.get("version", 1) < 4 and made_with_own_vocabulary(old, folder)
    known = (old or {}).get("vocab_fingerprint", vocab_fp if old_own and current == vocab_size else None)
    known = vocab_fp if by_weights and known == by_weights else known
    if force or current is None or current > vocab_size or known != vocab_fp:
        check_writable(folder)  # before minutes of training
        return tokenizer, vocab_fp, tmp_name(tokenizer)
    if current < vocab_size:  # this data supports no more: training again would give the same
        warn_short_vocabulary(vocab_size, current)
    return tokenizer, vocab_fp, None


def prepare(dataset, source=None, tokenizer=None, limit=None, val_fraction=DEFAULT_VAL_FRACTION, force=False,
            out_dir=DEFAULT_OUT_DIR, name=None, extra=True, vocab_size=None, pack=None, mix=None,
            skip_bad_records=False):
    """Build (or find up to date) out_dir/name from dataset's source; returns its meta.json as a dict. source: a path or
    a list of them (pathlib.Path too). vocab_size: a vocabulary of that size trained on this data, in place of
    tokenizer. Neither given: the vocabulary the dataset has when it is made again, else gpt2. pack: the block
    conversations are packed in (None: default_pack's; 0: not packed). mix: {dataset: weight} for dataset "mix".
    skip_bad_records: leave out the bad records (good_docs), said in the summary, instead of stopping at the first."""
    if source is not None:
        source = [os.fspath(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    # the folder's lock (make_dataset takes it), let go however the build ends; then the --out_dir it made, if it fails
    with removing_made_folders(), contextlib.ExitStack() as held:
        return make_dataset(held, dataset, source, tokenizer, limit, val_fraction, force, out_dir, name, extra,
                            vocab_size, pack, mix, skip_bad_records)


def check_arguments(dataset, source, tokenizer, val_fraction, pack, mix, vocab_size, name, out_dir):
    """Refuse prepare()'s arguments that make no dataset, each with its own line, before any file is looked for.
    name: the dataset's folder name (--name, default the dataset's)."""
    if dataset == "mix":
        if not mix:
            raise UserError("a mix needs its datasets and weights: --mix dailydialog:1,chat:2")
        if source:
            raise UserError("--mix takes dataset names, not --source files: "
                            "prepare your files as one dataset with --name")
    elif dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    elif mix:
        raise UserError(f"--mix builds its own dataset: drop --dataset {dataset}")
    if vocab_size is not None and tokenizer is not None:
        raise UserError(f"--vocab_size {vocab_size} trains the dataset's own vocabulary, and --tokenizer {tokenizer} "
                        f"gives one: pass one of them")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction {val_fraction}: must be in [0, 1)")
    if pack is not None and not 0 <= pack <= MAX_PACK:  # (10**13: numpy's 18 TiB allocation error)
        raise UserError(f"--pack {pack}: give the training context in tokens (train.py --block_size, at most "
                        f"{MAX_PACK:,}), or 0 for no packing")
    if not is_dataset_name(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '-' and '_', not a path (it names a folder in "
                        f"{out_dir})")  # ('..' is of those characters)
    refuse_dataset_folder(out_dir, "--out_dir")


def lock_folder(held, out_dir, name, force):
    """The dataset's folder, out_dir/name, refused when it is a file or a model's, or (unless force) holds token files
    no prepare.py made, with its lock held in held: two prepare.py in one folder would interleave their renames. The
    lock lies beside the folder, which a failed first build removes. What a killed prepare.py left is removed here, so
    that a run that finds the dataset up to date removes it too."""
    folder = os.path.join(out_dir, name)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder} is a file, not a dataset folder: pick another --name, or move the file")
    # export.py's, whose tokenizer.tiktoken --vocab_size replaced
    if os.path.isfile(os.path.join(folder, "config.json")):
        raise UserError(f"{folder} is a Hugging Face model folder (it has a config.json), not a dataset's: pick "
                        f"another --name or --out_dir")
    with contextlib.suppress(OSError):  # (one that cannot be made takes no dataset either: check_writable says so)
        make_folders(out_dir)
    locked = held.enter_context(held_lock(prepare_lock(out_dir, name), f"another prepare.py is building "
                                          f"{folder}: wait for it to end, or build this one elsewhere with --name"))
    # token files without a meta.json are another tool's (nanoGPT's data/shakespeare_char), which a build would replace,
    # or a killed prepare.py's, whose new meta.json waits under a temporary name for the next run to finish its renames
    bins = [f for f in OWN_FILES if f.endswith(".bin") and os.path.isfile(os.path.join(folder, f))]
    if bins and not force and not os.path.exists(os.path.join(folder, "meta.json")) \
            and not any(re.fullmatch(tmp_pattern(r"meta\.json"), f) for f in os.listdir(folder)):
        raise UserError(f"{folder} holds {', '.join(bins)} but no meta.json, so no dataset prepare.py made (another "
                        f"tool's?): pick another folder with --name or --out_dir, move those files, or replace them "
                        f"with --force")
    # what a prepare killed mid-write left: token files, meta.json's and the vocabulary's temporary files, the write
    # probe. With the folder's lock held no other prepare writes them, so they go at once (they can be gigabytes)
    remove_stale_tmp(folder, rf"(?:train|val)(?:_mask)?\.bin(?:\.[\w-]+)?|(?:meta\.json|{re.escape(VOCAB_FILE)})"
                             r"(?:\.\d+\.tmp)?|\.write-probe", quiet_s=0 if locked else 600)
    return folder


def old_options(folder, old, dataset, sources, plan, named, force):
    """The options (meta_options) that made the dataset in folder (old: its meta.json, or None), {} when it is another
    dataset or its meta.json is too odd to say. Unless force, a build that would replace another dataset, or one made
    from the user's own files with other data, is refused. sources: the --source files given now (absolute), or None;
    named: --name was given."""
    if old and not force and not isinstance(old.get("dataset"), str):  # (no dataset rebuild_command could name)
        raise UserError(f"{folder} holds a meta.json that names no dataset (another tool's, or damaged): pick another "
                        f"folder with --name, or replace it with --force")
    if old and not force and old.get("dataset") != dataset:
        raise UserError(f"{folder} holds the {old.get('dataset')!r} dataset (made by "
                        f"`{rebuild_command(old, folder)}`): pick another folder with --name, or replace it with "
                        f"--force")
    same_dataset = old and old.get("dataset") == dataset
    made_options = meta_options(old, folder, odd={}) if same_dataset else {}
    # the --source files it was made from (absolute, as options records them)
    old_sources = made_options.get("source")
    # made from the user's own files: not replaced unasked by the mirror's or the hub's data (a bare `prepare.py`)
    if old_sources and not force and not sources:
        raise OtherSource(f"{folder} holds the {dataset!r} dataset made from your files (by "
                          f"`{rebuild_command(old, folder)}`), not from {plan['description']}: run that to make it "
                          f"again, pick another folder for this one with --name, or replace it with --force")
    # --source files into a folder no --name chose replace no dataset made from other files or from the mirror's or the
    # hub's data (`--dataset story --source mine.txt` after `make demo`): a model may be trained on it. A --name given
    # is the user's choice. old_description: its plan["description"]
    old_description = same_dataset and old.get("source")
    if old_description and sources and not named and not force:
        if not str(old_description).startswith("--source "):
            raise UserError(f"{folder} holds the {dataset!r} dataset made from {old_description} (by "
                            f"`{rebuild_command(old, folder)}`), not from your files: pick another folder for this one "
                            f"with --name, or replace it with --force")
        # not the same files named another way (a folder, its files, a pattern), nor a damaged record (no TypeError)
        if isinstance(old_sources, list) and all(isinstance(p, str) for p in old_sources) \
                and set(old_sources) != set(sources) \
                and set(old_description.removeprefix("--source ").split(", ")) != set(plan["files"]):
            raise UserError(f"{folder} holds the dataset made from {', '.join(old_sources)} (by "
                            f"`{rebuild_command(old, folder)}`): pick another folder for this one with --name, or "
                            f"replace it with --force")
    return made_options


def kept_vocabulary(folder, made_options, old):
    """The vocabulary of a dataset made again with neither --tokenizer nor --vocab_size: the one it has, so checkpoints
    trained on it go on fitting. Returns (--vocab_size, --tokenizer, the line that says so, for make_dataset to print)
    from made_options, what old_options returned; (None, None, None) for gpt2's. old: its meta.json (None: none),
    whose tokenizer_hash finds a vocabulary moved with the data."""
    if made_options.get("vocab_size"):
        # (the size asked, not the size it has: a text that supports fewer merges has fewer)
        return made_options["vocab_size"], None, (f"{folder}: keeping its own vocabulary (--vocab_size "
                                                  f"{made_options['vocab_size']}; --tokenizer gpt2 for GPT-2's)")
    tokenizer = made_options.get("tokenizer")
    if tokenizer in (None, "gpt2"):
        return None, None, None
    if not os.path.exists(tokenizer):
        # (not taken unsaid: the user named that file; the same vocabulary passed where it is now is up to date)
        moved = moved_vocabulary(tokenizer, folder, (old or {}).get("tokenizer_hash"))
        if moved:
            raise TokenizerGone(f"{folder} was made with tokenizer {tokenizer}, which is gone; the same vocabulary is "
                                f"at {moved} (moved with the data?): pass --tokenizer {moved}")
        raise TokenizerGone(f"{folder} was made with tokenizer {gone_vocabulary(tokenizer, old or {})}")
    return None, tokenizer, f"{folder}: keeping its tokenizer {tokenizer} (--tokenizer gpt2 for GPT-2's)"


def default_pack(tokenizer):
    """The block conversations are packed in without --pack: the context of the model tokenizer names (a checkpoint or a
    Hugging Face model folder), which train.py fine-tunes at; else DEFAULT_PACK. Call it after get_tokenizer with the
    same name: model_context is read with the vocabulary, and a checkpoint is loaded once."""
    context = tokenizer and model_context(tokenizer)
    return context if context and context <= MAX_PACK else DEFAULT_PACK  # (past MAX_PACK: an edited config)


def dataset_tokenizer(tokenizer):
    """get_tokenizer, but offline without GPT-2's BPE files it says prepare.py's own ways out besides the line every
    script says."""
    try:
        return get_tokenizer(tokenizer)
    except UserError as e:
        if tokenizer != "gpt2":
            raise
        raise UserError(f"{e}, or give the data a vocabulary of its own with --vocab_size 4096 (or "
                        f"--tokenizer PATH.tiktoken)") from None


def check_same_vocabulary(folder, kept_file, old, enc, tok_hash):
    """A --tokenizer file a dataset keeps (kept_vocabulary) must still hold the vocabulary it was made with (old: its
    meta.json), or checkpoints trained on the dataset would no longer fit. enc, tok_hash: what the file holds now."""
    if old.get("tokenizer_hash") not in (None, tok_hash):
        short = fewer_ids(enc, old.get("vocab_size"))
        raise TokenizerGone(f"{folder} was made with tokenizer {kept_file}, which now holds another vocabulary"
                            f"{f' ({short})' if short else ''}: pass --tokenizer {kept_file} to remake the dataset "
                            f"with it (checkpoints trained on the old one will not fit), or put the old file back")


def keep_up_to_date(folder, old, tokenizer, new_vocab, vocab_fp, rewrite=False):
    """A dataset found up to date is kept as it is: a vocabulary of its own trained again (new_vocab, for a damaged or
    missing one) goes into place as tokenizer, and meta.json gets vocab_fp if it lacks it, or is written when rewrite
    (its tokenizer moved). Says so; returns the meta."""
    if new_vocab:
        fsync_replace(new_vocab, tokenizer)
    if rewrite or (vocab_fp and old.get("vocab_fingerprint") != vocab_fp):
        old = dict(old, vocab_fingerprint=vocab_fp) if vocab_fp else old
        atomic_write_text(os.path.join(folder, "meta.json"), json.dumps(old, indent=2) + "\n")
    print(f"{folder} is up to date")
    return old


def make_dataset(held, dataset, source, tokenizer, limit, val_fraction, force, out_dir, name, extra, vocab_size, pack,
                 mix, skip_bad_records):
    """prepare(), holding the dataset folder's lock in held once the folder is known."""
    named, name = bool(name), name or dataset
    check_arguments(dataset, source, tokenizer, val_fraction, pack, mix, vocab_size, name, out_dir)
    left = LeftOut(skip_bad_records)  # the records left out, by file (good_docs), for build's summary
    plan = find_mix_source(mix, extra, limit, left) if dataset == "mix" else \
        find_source(dataset, source, extra, limit, left)
    plan["left_out"] = left
    if dataset == "story":  # TinyStories' own damage, from the mirror, the hub or its files as --source; other text,
        # a user's, is read as it is (--dataset text reads stories unmended)
        plan["mended"] = {}
        plan["streams"] = [(role, label, functools.partial(mended_docs, make_docs, label, plan["mended"]))
                           for role, label, make_docs in plan["streams"]]
    folder = lock_folder(held, out_dir, name, force)
    old = read_meta(folder)
    # the --source files given now, absolute as options records them (a hub name is no path)
    sources = [p if p.startswith("hf:") else os.path.abspath(p) for p in source] if source else None
    made_options = old_options(folder, old, dataset, sources, plan, named, force)
    kept_file = None  # the --tokenizer file kept: it must still hold the vocabulary the dataset was made with
    if tokenizer is None and vocab_size is None:
        vocab_size, tokenizer, plan["kept"] = kept_vocabulary(folder, made_options, old)
        kept_file = tokenizer
    tokenizer = tokenizer or "gpt2"
    # what rebuild_command needs to build the dataset again; paths made absolute, so it works from anywhere
    options = {"source": sources,
               "tokenizer": tokenizer if tokenizer == "gpt2" else os.path.abspath(tokenizer), "vocab_size": vocab_size,
               "limit": limit, "val_fraction": val_fraction, "pack": pack, "mix": mix, "extra": extra,
               "skip_bad_records": skip_bad_records}
    created = not os.path.isdir(folder)
    # a freshly trained vocabulary (a temporary file, renamed into place with the token files) and its inputs'
    # fingerprint
    new_vocab, vocab_fp = None, None
    if vocab_size is not None:
        tokenizer, vocab_fp, new_vocab = own_vocabulary(dataset, plan, folder, old, vocab_size, limit, val_fraction,
                                                        mix, force)
    try:
        enc = train_vocabulary(plan, vocab_size, new_vocab, limit, val_fraction, pack) if new_vocab else \
            dataset_tokenizer(tokenizer)
        # what conversations are packed in: --pack, else the context of the model --tokenizer names
        block = pack if pack is not None else default_pack(None if vocab_size is not None else tokenizer)
        # blocks longer than the context of the model --tokenizer names: its fine-tune cuts conversations between
        # windows, but a new model of that context trains on them whole: warned, not refused (model_context: cached)
        context = model_context(tokenizer) if vocab_size is None else None
        if context and pack and pack > context:
            print(f"warning: --pack {pack} is longer than the context of {common.shown_path(tokenizer)} ({context} "
                  f"tokens): fine-tuning that model on this data cuts conversations between its windows; give --pack "
                  f"{context} or less (no --pack: its context)", file=sys.stderr)
        tokenizer = tokenizer if tokenizer == "gpt2" else os.path.abspath(tokenizer)
        tok_hash = tokenizer_hash(enc)
        if kept_file:
            check_same_vocabulary(folder, kept_file, old, enc, tok_hash)
        def fp_of(tokenizer, block):
            return fingerprint(dataset, plan, tokenizer, tok_hash, limit, val_fraction, block, mix,
                               skip_bad_records=skip_bad_records)
        # text is never packed, so a text dataset's fingerprint leaves --pack out: another --pack rebuilds nothing
        fp, text_fp = fp_of(tokenizer, block), fp_of(tokenizer, 0)
        text = old and old.get("kind") == "text"
        same = [text_fp if text else fp]  # (its fingerprint as this build would write it, first)
        # meta.json names its vocabulary by the absolute path it had, which a folder moved since no longer has: gone
        # from there, the vocabulary is the same when its tokenizer_hash, in the fingerprint, is (a file at that path
        # now is another, not taken for it)
        recorded = old and old.get("tokenizer")
        moved = isinstance(recorded, str) and recorded not in ("gpt2", tokenizer) and not os.path.exists(recorded)
        if moved:
            same.append(fp_of(recorded, 0 if text else block))
        unchanged = old and old.get("fingerprint") in same
        if unchanged and pack and text:  # refused as a first build does: not "up to date"
            raise text_packed(pack)
        # (a tokenizer_hash edited in meta.json: its fingerprint, made with tok_hash, still matches)
        if unchanged and not force and old.get("tokenizer_hash") == tok_hash and is_complete(folder, old, enc):
            if moved:  # named where it is now, as a build names it: train.py, rebuild_command and the next run find it
                old = dict(old, tokenizer=tokenizer, fingerprint=same[0])
                if isinstance(old.get("options"), dict) and old["options"].get("tokenizer") == recorded:  # --tokenizer
                    old["options"] = dict(old["options"], tokenizer=options["tokenizer"])
            if plan.get("kept"):
                print(plan["kept"])
            return keep_up_to_date(folder, old, tokenizer, new_vocab, vocab_fp, rewrite=moved)
        check_writable(folder)
        return build(dataset, name, plan, folder, enc, tokenizer, tok_hash, fp, limit, val_fraction, new_vocab, pack,
                     block, context, options, vocab_fp, text_fp)
    except BaseException as e:
        # a failed first build leaves no folder behind, but a complete one stays (its summary into a closed pipe)
        if created and (read_meta(folder) is None or isinstance(e, (KeyboardInterrupt, SystemExit))):
            shutil.rmtree(folder, ignore_errors=True)
        # with --limit, not: the run may never read the other files, and they may be far more than it reads
        if isinstance(e, BadRecords) and limit is None:
            raise with_other_files(e, plan) from None
        if isinstance(e, NotText) and limit is None:
            raise with_other_not_utf8(e, plan) from None
        raise
    finally:
        if new_vocab:
            with contextlib.suppress(FileNotFoundError):
                os.remove(new_vocab)


def counted(docs, progress):
    """docs [(ids, mask)] as they come, advancing progress by their tokens, a million at a time (a chat set holds
    millions of short documents)."""
    n = 0
    for ids, mask in docs:
        n += len(ids)
        if n >= 1 << 20:
            progress.update(n)
            n = 0
        yield ids, mask
    progress.update(n)


def pack_split(out, docs, block, enc, sources=None):
    """Write documents [(ids, mask)] into the Split out through a Packer (block 0: as they come). sources: a mix's
    index of each document's dataset, for the tokens each took in the split (returned, one count a dataset)."""
    packer = Packer(out, block, enc, token_bytes(enc))
    taken = collections.Counter()
    # (strict: a document without its dataset, or the reverse, is a bug to stop at, not a count to shift)
    for (ids, mask), source in zip(docs, sources, strict=True) if sources is not None else ((d, None) for d in docs):
        taken[source] += packer.add(ids, mask)
    packer.close()
    return taken


def mix_splits(folder, plan, enc, splits, raw_splits, limit, val_fraction, block, progress):
    """A mix's train and val splits (into splits) from each of its datasets, tokenized first into splits of their own
    (appended to raw_splits, for build to remove); returns what each dataset contributed."""
    raws, keys = [], []
    for part in plan["parts"]:
        raw, part_keys = {}, {}
        raw_splits.append(raw)
        # --limit counts in each dataset, as it does for a dataset on its own
        write_splits(folder, part["streams"], enc, raw, limit, val_fraction, progress, f".{part['dataset']}", block,
                     part_keys, input_sizes(part, limit), f"--mix takes conversation sets: leave {part['dataset']} out")
        if not raw["train"].tokens:
            raise UserError(f"--mix: {part['dataset']} has no training documents left (--limit {limit}?)")
        raws.append(raw)
        keys.append(part_keys)
    eot = enc.eot_token
    drops = repeated_across(keys)
    if any(drops) and sum(map(len, drops)) == sum(raw["val"].documents for raw in raws):  # kept, as write_splits does
        warn_all_in_train(", ".join(part["dataset"] for part in plan["parts"]))
        drops = []
    table = token_bytes(enc)
    for raw, drop in zip(raws, drops):
        if drop:
            raw["val"].drop_documents(drop, eot, table)
    ends = [split_ends(raw["train"], eot) for raw in raws]
    starts = [np.concatenate([[0], e[:-1]]) for e in ends]
    picks = mix_choice([e - s for s, e in zip(starts, ends)], [part["weight"] for part in plan["parts"]])
    for part, p in zip(plan["parts"], picks):
        if not len(p):  # it would be in the mix's name and val split, and in none of its train documents
            raise UserError(f"--mix: {part['dataset']}:{part['weight']:g} is too small a weight for one of its "
                            f"documents in train: raise it, or leave {part['dataset']} out")
    # one shuffled order for all the picked documents, so that blocks hold several sources
    source = np.concatenate([np.full(len(p), i) for i, p in enumerate(picks)])
    doc = np.concatenate(picks)
    order = np.random.default_rng(MIX_SEED).permutation(len(doc))
    splits["train"] = Split(folder, "train", raws[0]["train"].dtype, True)
    # a document at a time (read_tokens: the order jumps all over the files, and a memmap of them kept every page read)
    trains = [raw["train"] for raw in raws]
    # (each dataset's tokens counted as packed, so that the counts add up to the split's tokens less its padding)
    train_tokens = pack_split(splits["train"], ((read_tokens(trains[i], starts[i][d], ends[i][d]),
                                                 read_tokens(trains[i], starts[i][d], ends[i][d], mask=True))
                                                for i, d in zip(source[order], doc[order])), block, enc, source[order])
    # validation: every dataset's own validation documents, once each, so the val loss is over distinct text
    splits["val"] = Split(folder, "val", raws[0]["val"].dtype, True)
    val_docs = itertools.chain.from_iterable(split_documents(raw["val"], eot) for raw in raws)
    val_sources = itertools.chain.from_iterable(itertools.repeat(i, raw["val"].documents) for i, raw in enumerate(raws))
    val_tokens = pack_split(splits["val"], val_docs, block, enc, val_sources)
    return {part["dataset"]: {"weight": part["weight"],
                              "train_tokens": int(train_tokens[i]), "train_documents": len(p),
                              "val_tokens": int(val_tokens[i]), "val_documents": raw["val"].documents}
            for i, (part, raw, p) in enumerate(zip(plan["parts"], raws, picks))}


def repeated_across(keys):
    """The indices of each mix dataset's val documents ([set], one a dataset; keys: each one's doc_keys from
    write_splits) that another of its datasets has in train, or an earlier one in val, as repeated() finds them within
    one. Against every train document of the others, picked for the mix or not, so that val stays the same whatever the
    weights."""
    drops, kept = [], []  # kept: the val keys the datasets before keep, ahead of this one's
    for j, part in enumerate(keys):
        drop = repeated(kept + part["val"], *(other["train"] for other in keys[:j] + keys[j + 1:]))
        drop = {i - len(kept) for i in drop if i >= len(kept)}  # (the earlier datasets' were judged in their turn)
        kept += [key for i, key in enumerate(part["val"]) if i not in drop]
        drops.append(drop)
    return drops


def build(dataset, name, plan, folder, enc, tokenizer, tok_hash, fp, limit, val_fraction, new_vocab, pack, block,
          context, options, vocab_fp, text_fp):
    """Tokenize plan's streams with enc into folder, write its meta.json and say what was made; returns the meta. The
    old files stay until everything new is written. fp: the fingerprint (text_fp should the documents be text: no --pack
    in it); new_vocab: a trained vocabulary's temporary file, renamed into place with the token files; block: what
    conversations are packed in; context: that of the model --tokenizer names; options: prepare()'s arguments, for
    rebuild_command; vocab_fp: what the dataset's own vocabulary was trained on."""
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, "meta.json")
    new_meta = tmp_name(meta_path)
    t0 = time.time()
    read_from = file_states(plan)  # what the files are as their passes (val's count, the tokens) start
    splits, raw_splits = {}, []  # the dataset's splits, and the unpacked or per-source ones they are made from
    mixed = None
    try:
        # in bytes of input, of a total where known: a count of documents said not how much longer
        sizes = [input_sizes(part, limit) for part in plan.get("parts", [plan])]
        total = sum(sum(s) for s in sizes) if all(sizes) else None
        with progress_bar(folder, total) as progress:
            if "parts" in plan:
                kind = "chat"
                mixed = mix_splits(folder, plan, enc, splits, raw_splits, limit, val_fraction, block, progress)
            else:
                raw = {}
                raw_splits.append(raw)
                # a conversation set of plain text would have no loss mask (every token trained): refused
                not_text = f"--dataset {dataset} is a conversation set: give records of `messages` " \
                           f"[{{role, content}}] (.jsonl; README's prepare.py section lists the other shapes), or " \
                           f"make plain text a dataset with --dataset text" if dataset in MIXABLE else None
                kind = write_splits(folder, plan["streams"], enc, raw, limit, val_fraction, progress, ".unpacked", pack,
                                    sizes=sizes[0], not_text=not_text)
                block = block if kind == "chat" else 0
                if block:  # the tokens read again: a big set's minutes, after the input's bar came to its end
                    tokens = raw["train"].tokens + raw["val"].tokens
                    with progress_bar(f"{folder} packing", tokens, "tokens") as packing:
                        for s in ("train", "val"):
                            splits[s] = Split(folder, s, raw[s].dtype, True)
                            pack_split(splits[s], counted(split_documents(raw[s], enc.eot_token), packing), block, enc)
                else:  # the tokenized files are the dataset
                    splits.update(raw)
                    raw_splits.remove(raw)
        has_mask = kind == "chat"
        meta = {
            "format": FORMAT, "version": VERSION, "dataset": dataset, "name": name, "kind": kind,
            "tokenizer": tokenizer, "tokenizer_name": enc.name, "tokenizer_hash": tok_hash,
            "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "dtype": splits["train"].dtype.name,
            "has_mask": has_mask, "source": plan["description"],
            "val_split": val_split_description(plan, val_fraction, mixed),
            "limit": limit, "pack": block, "fingerprint": text_fp if kind == "text" else fp,
            "options": options,
            # tokens include the padding; bytes are those of the documents alone
            "splits": {s: {"tokens": splits[s].tokens, "documents": splits[s].documents, "bytes": splits[s].bytes,
                           "padding": splits[s].padding, "in_pieces": splits[s].in_pieces,
                           "cut_exchanges": splits[s].cut_exchanges, "untrained_tails": splits[s].untrained_tails}
                      for s in ("train", "val")},
            # whole documents are counted in a split; these, a book's head in train and its tail in val, in neither
            "cut_documents": splits["train"].cut,
            # and these, val's documents that train has too, in none (counted where tokenized)
            "val_repeats": splits["val"].repeats + sum(raw["val"].repeats for raw in raw_splits),
        }
        if mixed:
            meta["mix"] = mixed
        if vocab_fp:
            meta["vocab_fingerprint"] = vocab_fp
        # a file written to as it is read gives its passes other documents: val's share and the counts would be wrong
        changed = [f for f, a, b in zip(plan["files"], read_from, file_states(plan)) if a != b]
        if changed:
            raise UserError(f"{changed[0]} changed while prepare.py read it (still being written?): run this again "
                            f"once it is complete; {folder} is as it was")
        # The new files replace the old in two steps: 1. every new file, meta.json too, is flushed under its temporary
        # name (the old dataset untouched; the temporary files removed on the way out). 2. renames, quick: meta.json
        # goes first and comes back last, so it is never read with a mix of old and new files; Ctrl-C waits for them
        # (ctrl_c_held); a crash stops them halfway, leaving a folder without meta.json, rebuilt by the next prepare.py
        for split in splits.values():
            split.sync()
        atomic_write_text(new_meta, json.dumps(meta, indent=2) + "\n")  # new_vocab is on disk already (train_bpe)
        with ctrl_c_held():
            # read again, not prepare()'s copy: what a refused commit puts back is what this removes
            old_meta = read_meta(folder)
            with contextlib.suppress(FileNotFoundError):
                os.remove(meta_path)
            try:
                for split in splits.values():
                    split.commit()
            except PermissionError as e:
                # Windows refuses to replace a file held open: the old meta.json goes back if no file was replaced yet
                kept = old_meta is not None and not any(s.replaced for s in splits.values())
                if kept:
                    atomic_write_text(meta_path, json.dumps(old_meta, indent=2) + "\n")
                now = "the dataset is as it was" if kept else "until then there is no dataset there"
                raise UserError(f"cannot replace {e.filename2 or e.filename or folder} (a train.py or eval.py reading "
                                f"{folder} has it open?): run this again once it ends; {now}") from None
            if new_vocab:
                fsync_replace(new_vocab, tokenizer)
            if not has_mask:  # a chat set rebuilt as text must not keep stale masks
                for s in ("train", "val"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, f"{s}_mask.bin"))
            fsync_replace(new_meta, meta_path)
    except OSError as e:
        name_full_disk(e, folder)  # the folder being written
        raise
    finally:
        with ctrl_c_held():  # a Ctrl-C as the cleanup runs would leave temporary files behind
            for split in [*splits.values(), *(s for raw in raw_splits for s in raw.values())]:
                split.discard()  # only temporary files are left to remove; after commit() there are none
            # renames stopped with meta.json removed: the new one stays, telling the next run whose token files they are
            if os.path.exists(meta_path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(new_meta)

    print_summary(folder, meta, plan, limit, max(time.time() - t0, 1e-9), context)
    return meta


def val_split_description(plan, val_fraction, mixed):
    """meta.json's "val_split": where the val documents of plan's dataset come from (mixed: it is a mix)."""
    roles = {role for role, _, _ in plan["streams"]}
    if not val_fraction:
        return "none (--val_fraction 0)"
    if mixed:
        return "each dataset's own validation split, unweighted, each document once and none a dataset's train has"
    if "val" in roles:
        return "the source's own validation split, each document once and none train has"
    # (train.py reads "the last" as a val cut from the text)
    return (f"the last documents of each source, {val_fraction:g} of all of them counted over the sources together (a "
            f"folder of one-document files gives files spread through it, not its last ones; a book, its last "
            f"{val_fraction:g} of tokens), each once and none train has"
            + ("; train-only extra files excluded" if "train" in roles else ""))


def fmt_mb(mb, digits=1):
    """mb megabytes (a size, or a speed) as print_summary says them: in MB to digits, or under what they show in kB,
    under a kB in bytes (a few dozen kB of chats read "0.0 MB", a line of text "0.0 kB", its speed "0.0 kB/s": none)."""
    if mb >= 0.5 * 10 ** -digits:
        return f"{mb:.{digits}f} MB"
    return f"{mb * 1e3:.1f} kB" if mb >= 0.001 else f"{round(mb * 1e6):,} bytes"


def per_file(counts):
    """"a.txt (3), b.txt (1,102)" of {path: count}."""
    return ", ".join(f"{os.path.basename(label)} ({k:,})" for label, k in counts.items())


def print_summary(folder, meta, plan, limit, dt, context=None):
    """The lines said of a dataset just built into folder from plan, meta its meta.json, in dt seconds: its counts and
    speed, then what --limit, packing, the records left out and a mix did. context: the --tokenizer model's."""
    block, mixed = meta["pack"], meta.get("mix")
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    tokens, mb = tr["tokens"] + va["tokens"], (tr["bytes"] + va["bytes"]) / 1e6
    cut = meta["cut_documents"]
    docs = tr["documents"] + va["documents"] + cut
    # a single document (Tiny Shakespeare) is cut in two: its head trains and its tail, with the end, validates
    where = "cut into train and val" if cut == docs else f"{tr['documents']:,} train, {va['documents']:,} val" + (
        f", {cut:,} cut into train and val" if cut else "")
    if meta["val_repeats"]:  # (else a count short of the source's reads as documents lost)
        where += f"; {meta['val_repeats']:,} left out of val (already in train or val)"
    if plan.get("kept"):  # (kept_vocabulary)
        print(plan["kept"])
    # (a small set's speeds, "0.00 MB/s, 0.00M tokens/s", read as nothing done)
    print(f"{folder}: {docs:,} document{'' if docs == 1 else 's'} ({where}), "
          f"{tokens:,} tokens ({tr['tokens']:,} / {va['tokens']:,}), {fmt_mb(mb)} of text in {dt:.1f}s: "
          f"{fmt_mb(mb / dt, 2)}/s, {fmt_count(tokens / dt)} tokens/s")
    if limit and any({"split", "train"} <= {role for role, _, _ in p["streams"]} for p in plan.get("parts", [plan])):
        # (else --limit 2000 giving 4,000 documents is a puzzle); not of a source's own validation split, nor a mix
        print(f"  --limit {limit:,} counts the files val is cut from and the train-only extra files apart: at most "
              f"{limit:,} document{'s' * (limit > 1)} of each (--no_extra leaves the extra ones out)")
    repeats = plan.get("extra_repeats") or {}
    if repeats:  # (else the files' stories, counted, were more than the documents: 9,725 against 8,621)
        n = sum(repeats.values())
        print(f"  left out {n:,} stor{'ies' if n > 1 else 'y'} of the extra files already in an earlier file (case and "
              f"spacing ignored): {per_file(repeats)}")
    if block:
        # (a conversation in pieces, and an exchange cut from its question: said here, not only in the README)
        pieces, inside = tr["in_pieces"] + va["in_pieces"], tr["cut_exchanges"] + va["cut_exchanges"]
        tails = tr["untrained_tails"] + va["untrained_tails"]  # (else the documents' tokens, as counted, went missing)
        # (without --pack, a block other than DEFAULT_PACK is the model's that --tokenizer names: default_pack)
        whose = "the context of the model --tokenizer names; " if (meta.get("options") or {}).get("pack") is None \
            and block != DEFAULT_PACK else ""
        # a line a fact, its number first: as one line it ran to 330 characters, wrapped on any terminal
        print(f"  packed in blocks of {block} tokens, {(tr['padding'] + va['padding']) / max(tokens, 1):.1%} padding "
              f"({whose}train.py --block_size {block})")
        if pieces:
            # (blocks of the whole context of a model to fine-tune: a larger --pack is warned of, --block_size refused)
            larger = "" if not inside else f" (the model --tokenizer names trains on at most {context} tokens)" \
                if context and block >= context else " (a larger --pack and train.py --block_size keep more whole)"
            print(f"  {pieces:,} conversation{'s' * (pieces != 1)} longer than a block in pieces{larger}")
        if inside:
            print(f"    {inside:,} of them cut inside an exchange longer than a block: a reply there trains "
                  f"without all of its question")
        if tails:
            print(f"    {tails:,} of them ending in turns that train nothing, left out: a question with no reply, "
                  f"replies of weight 0 or empty")
    mended = plan.get("mended") or {}
    if mended:  # (the text trained on is not the files': said)
        n = sum(mended.values())
        print(f"  mended {n:,} mojibake sequence{'s' * (n > 1)} (â€œ for “, â€™ for ’...: UTF-8 read as cp1252 "
              f"upstream) in {per_file(mended)}")
    left_out = plan.get("left_out") or LeftOut()
    for label, left in left_out.bad.items():  # (with --limit: of the records read)
        print(f"  --skip_bad_records: left out {left['count']:,} bad record{'s' * (left['count'] > 1)} of {label}: "
              f"{places(left['wheres'], left['count'])}")
    for label, left in left_out.empty.items():  # (else 300 records gave "291 documents", no reason said)
        print(f"  left out {left['count']:,} record{'s' * (left['count'] > 1)} of {label} with nothing to train on "
              f"(no reply, an empty or null one, or empty text): {places(left['wheres'], left['count'])}")
    if left_out.blank:
        blank = sorted(left_out.blank)
        print(f"  left out {len(blank):,} file{'s' * (len(blank) > 1)} with no text: {listed(blank, PLACES)}")
    if left_out.front_matter:  # (the text trained on is not the files': said)
        n = len(left_out.front_matter)
        print(f"  left out the front matter (--- key: value ... ---) of {n:,} Markdown note{'s' * (n > 1)}")
    for source, m in (mixed or {}).items():
        print(f"  {source}: weight {m['weight']:g}, {m['train_tokens'] / max(tr['tokens'] - tr['padding'], 1):.1%} "
              f"of the train tokens ({m['train_documents']:,} documents), {m['val_documents']:,} val documents")


def dataset_choice(name):
    """argparse type of --dataset: nanoGPT's name of a dataset made here by other options (shakespeare_char) is refused
    with the command that makes it; any other name is left to the choices."""
    if name in NANOGPT_DATASETS:
        raise argparse.ArgumentTypeError(f"nanoGPT's {name} is made here by "
                                         f"`{new_command(os.path.join(DEFAULT_OUT_DIR, name))}`")
    return name


@removing_made_folders()
def main(argv=None):
    """`python prepare.py ARGV` from Python (a list of options, or one string split as a shell splits it); bad
    input raises UserError, leaving no folder it made. prepare() builds one dataset and returns its meta.json."""
    p = ArgumentParser("prepare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=dataset_choice, choices=DATASETS,
                   help="story (TinyStories), shakespeare (Tiny Shakespeare, 1 MB), dailydialog, chat (instructions, "
                        "conversations), chitchat (generated small talk), knowledge (question/answer), text (your "
                        "--source files); default: every one it finds, or text with --source")
    p.add_argument("--source", type=path_arg, nargs="+", metavar="PATH",
                   help=".txt (documents separated by <|endoftext|>, else one per file; .md too, and source code one "
                        "per file as written: named or by a pattern such as 'notes/**/*.md' or 'src/**/*.py'), "
                        ".jsonl/.json/.parquet records "
                        "(messages, ShareGPT conversations, instruction/input/output or instances, instruction/context/"
                        "response, question/answer, prompt/completion, prompt/response, query/response, "
                        "question/response, input/output, problem/solution, Gemini's contents, ChatGPT's and "
                        "Claude's exports, text), or folders; or hf:NAME[:CONFIG[:SPLIT]], a Hugging Face hub dataset "
                        "of such records, streamed (hf:NAME::SPLIT: the default config; split default train, or the "
                        "set's only split), val its validation split if it has one, else --val_fraction of train")
    p.add_argument("--tokenizer", type=path_arg,
                   help=f"{TOKENIZER_HELP}, for its vocabulary and its context (--pack's default) (default: gpt2, or "
                        f"what the dataset has when it is made again)")
    p.add_argument("--vocab_size", type=int,
                   help="train a vocabulary of this size on the data itself (saved as data/<name>/tokenizer.tiktoken) "
                        "and use it instead of --tokenizer: e.g. 4096 makes a tiny model several times faster")
    p.add_argument("--limit", type=at_least(1),
                   help="use only the first N documents (quick demos), counted over a dataset's files in order (each "
                        "--mix part its own N, train-only extra files N more); of a source's own validation split, "
                        "N * val_fraction")
    p.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"the share of the documents kept for validation: the last of each source, counted over a "
                        f"dataset's sources together (a folder of one-document files gives files spread through it, "
                        f"not its last ones; 0: no val split, a source's own validation split left out too) (default: "
                        f"{DEFAULT_VAL_FRACTION:g})")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if up to date, and replace a folder holding another dataset")
    p.add_argument("--out_dir", "--data_dir", dest="out_dir", type=path_arg, default=DEFAULT_OUT_DIR,
                   help="where dataset folders go (the folder train.py and eval.py take as --data_dir) (default: data)")
    p.add_argument("--name", type=nonempty, help="the dataset's folder name (default: the dataset)")
    p.add_argument("--no_extra", action="store_true",
                   help="story: leave out the train-only extra stories (the mirror's TinyStories-train-head files)")
    p.add_argument("--mix", type=nonempty, metavar="NAME:WEIGHT,...",
                   help=f"one dataset (--name, default mix) from several conversation sets ({', '.join(MIXABLE)}), "
                        f"e.g. dailydialog:1,chat:2: each gets weight/sum of the train tokens (documents repeated or "
                        f"left out), val holds each one's validation split")
    p.add_argument("--pack", type=int, metavar="BLOCK",
                   help=f"lay conversations out in blocks of BLOCK tokens that none crosses unless longer than a "
                        f"block (then it is cut before a user message); train with --block_size BLOCK. 0 = one after "
                        f"the other (default: the context of the model --tokenizer names, a checkpoint or model "
                        f"folder, else {DEFAULT_PACK}, the tiny and small models'; plain text is never packed)")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="leave out the records of .jsonl/.json/.parquet files (and hub rows) that are malformed JSON, "
                        "lines of a UTF-8 .jsonl with a stray byte that is no UTF-8, of no shape prepare.py reads, or "
                        "plain text in a file whose first records are conversations (or the reverse), said in the "
                        "summary, instead of stopping at the first; a file with no good record, or with no more of "
                        "its first records' kind than of the other, still stops it")
    args = p.parse_args(argv)
    # a folder that is there is checked once prepare() must write: a dataset up to date in a read-only one says so
    if not os.path.isdir(args.out_dir):
        check_output(args.out_dir, "--out_dir", folder=True)

    options = dict(tokenizer=args.tokenizer, limit=args.limit, val_fraction=args.val_fraction, force=args.force,
                   out_dir=args.out_dir, extra=not args.no_extra, vocab_size=args.vocab_size,
                   skip_bad_records=args.skip_bad_records)
    given = [option for option, value in (("--dataset", args.dataset), ("--source", args.source)) if value]
    if args.mix and given:  # (the one given, named: a --source alone was once told to drop --dataset)
        raise UserError(f"--mix builds one dataset from the datasets it names: drop {' and '.join(given)}")
    if args.mix or given:
        meta = prepare("mix", mix=parse_mix(args.mix), name=args.name, pack=args.pack, **options) if args.mix else \
            prepare(args.dataset or "text", source=args.source, name=args.name, pack=args.pack, **options)
        print(next_step(meta, args.out_dir, args.tokenizer))
        return
    if args.name:
        raise UserError("--name needs --dataset: it names one dataset's folder")
    for dataset in EVERYTHING:
        try:
            # --pack is for the conversation sets: the plain-text ones would refuse it
            meta = prepare(dataset, pack=args.pack if dataset in MIXABLE else None, **options)
        except (NoSource, OtherSource, TokenizerGone) as e:
            print(f"skipping {dataset}: {e}")
            continue
        # (one line each: the datasets' names, and their --block_size, differ)
        print(next_step(meta, args.out_dir, args.tokenizer))


if __name__ == "__main__":
    run_main(main)  # SIGTERM too ends it through the clean-up: its default left temporary token files (twice the
    # dataset) and a first build's folder without meta.json
