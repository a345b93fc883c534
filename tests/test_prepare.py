"""prepare.py on small corpora written to tmp_path, and on the local mirror when there is one.
Never touches the network: the hub loader is replaced for every test, and --source hf: reads local folders
offline (conftest sets HF_DATASETS_OFFLINE)."""
import base64
import errno
import functools
import gzip
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import tqdm

import common
import prepare
import setup_tokenizer
from common import UserError
from conftest import HANGUP, hangup_not_taken, run_cli
from setup_tokenizer import EOT, IM_END, IM_START, get_tokenizer, render_chat, tokenizer_hash, train_tokenizer

MIRROR = os.environ.get("DATA_MIRROR")
REAL_FETCH = prepare.fetch  # before the fixture below refuses it

DOCS = [f"Story {i}: a cat named Ünïcødé met 🐉 dragon #{i}. «こんにちは» "
        f"עברית e\u0301" + " words" * (i % 7) for i in range(47)]
DOCS[3] += " A literal <|im_start|> and <|im_end|> inside a document stay plain text."
DOCS[5] = "Line one.\n\nLine two after a blank line."


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("the hub is off limits in tests")
    monkeypatch.setattr(prepare, "load_hub", refuse)
    monkeypatch.setattr(prepare, "fetch", refuse)


@pytest.fixture
def enc():
    return get_tokenizer("gpt2")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(folder, split, meta):
    ids = np.fromfile(os.path.join(folder, f"{split}.bin"), dtype=meta["dtype"])
    mask = np.fromfile(os.path.join(folder, f"{split}_mask.bin"), dtype=np.uint8) if meta["has_mask"] else None
    return ids, mask


def text_bytes(enc, ids):
    """UTF-8 bytes of the text that ids decode to, special tokens left out."""
    special = {enc.encode_single_token(t) for t in enc.special_tokens_set}
    return len(enc.decode_bytes([i for i in ids.tolist() if i not in special]))


def masked_spans(enc, ids, mask):
    """The decoded text of each run of mask == 1."""
    spans, run = [], []
    for i, m in zip(ids.tolist(), mask.tolist()):
        if m:
            run.append(i)
        elif run:
            spans.append(enc.decode(run))
            run = []
    if run:
        spans.append(enc.decode(run))
    return spans


def check_sizes(folder, meta):
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        tokens = meta["splits"][split]["tokens"]
        assert os.path.getsize(os.path.join(folder, f"{split}.bin")) == tokens * itemsize
        if meta["has_mask"]:
            assert os.path.getsize(os.path.join(folder, f"{split}_mask.bin")) == tokens


def without_train_line(out):
    """prepare.py's output without the line naming the train.py command that ends it (test_train.py tests that one)."""
    lines = out.splitlines(keepends=True)
    assert lines and lines[-1].startswith("  train on it: ")
    return "".join(lines[:-1])


def snapshot(folder):
    return {f: (os.stat(os.path.join(folder, f)).st_ino, os.stat(os.path.join(folder, f)).st_mtime_ns,
                open(os.path.join(folder, f), "rb").read()) for f in sorted(os.listdir(folder))}


# -----------------------------------------------------------------------------
# plain text

def test_a_notebooks_paths_are_sources_as_their_strings_are(tmp_path):
    """prepare() from a notebook, given a pathlib.Path or a list of them (Path("notes").glob("*.txt")), ended in a
    traceback: 'PosixPath' object is not iterable, or has no startswith. They make the dataset their strings make."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(3):
        write(notes / f"{i}.txt", f"Note {i}: the cat sat on the mat.\n")
    given = {"str": [str(p) for p in sorted(notes.glob("*.txt"))], "paths": sorted(notes.glob("*.txt")),
             "folder": notes}
    made = {}
    for kind, source in given.items():
        meta = prepare.prepare("text", source=source, out_dir=str(tmp_path / kind), name="notes")
        made[kind] = meta["splits"], meta["options"]
    assert made["paths"] == made["str"] and made["folder"][0] == made["str"][0]


def test_text_corpus(tmp_path, enc):
    src = write(tmp_path / "corpus.txt", EOT.join(DOCS) + EOT + "\n")
    meta = prepare.prepare("text", source=src, val_fraction=0.2, out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "text"
    assert meta == json.loads((folder / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["kind"] == "text" and not meta["has_mask"]
    assert meta["tokenizer"] == "gpt2" and meta["tokenizer_hash"] == tokenizer_hash(enc) \
        and meta["vocab_size"] == enc.n_vocab
    assert not (folder / "train_mask.bin").exists()
    check_sizes(folder, meta)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["documents"] + val["documents"] == len(DOCS)
    assert val["documents"] == round(len(DOCS) * 0.2)
    n_train = len(DOCS) - val["documents"]
    for split, docs in (("train", DOCS[:n_train]), ("val", DOCS[n_train:])):  # val is the last fraction
        ids, _ = load(folder, split, meta)
        text = "".join(d + EOT for d in docs)
        assert enc.decode(ids.tolist()) == text
        # the bytes of the text: <|endoftext|> is no text (bits per byte divides by them)
        assert meta["splits"][split]["bytes"] == len("".join(docs).encode("utf-8")) == text_bytes(enc, ids)
        # special-token strings inside the text were encoded as plain text: the only EOTs are the separators
        assert (ids == enc.eot_token).sum() == len(docs)
        assert not np.isin(ids, [enc.eot_token + 1, enc.eot_token + 2]).any()
    # memmap-able as train.py will read it
    assert len(np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")) == train["tokens"]


def test_a_rebuild_removes_token_files_a_killed_prepare_left(tmp_path):
    """SIGKILL mid-write leaves train.bin.<pid>.tmp (no cleanup can run); the next prepare of that dataset removes
    it."""
    src = write(tmp_path / "corpus.txt", EOT.join(DOCS))
    folder = tmp_path / "data" / "text"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"train.bin.{dead.pid}.tmp", f"val_mask.bin.unpacked.{dead.pid}.tmp", f"notes.{dead.pid}.tmp"):
        (folder / name).write_bytes(b"\0" * 1000)
        os.utime(folder / name, (0, 0))
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    assert sorted(os.listdir(folder)) == ["meta.json", f"notes.{dead.pid}.tmp", "train.bin", "val.bin"]
    # a run that finds the dataset up to date removes them too (the usual run after a killed --force rebuild), and
    # a vocabulary's (train_bpe's temporary name of prepare's: a double suffix), and a meta.json's (atomic_write_text's
    # of build's: killed while it wrote the new meta.json)
    for name in (f"train.bin.unpacked.{dead.pid}.tmp", f"tokenizer.tiktoken.{dead.pid}.tmp.{dead.pid}.tmp",
                 f"meta.json.{dead.pid}.tmp.{dead.pid}.tmp"):
        (folder / name).write_bytes(b"\0" * 1000)
        os.utime(folder / name, (0, 0))
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    assert sorted(os.listdir(folder)) == ["meta.json", f"notes.{dead.pid}.tmp", "train.bin", "val.bin"]
    # and the probe a killed check that the folder takes files left
    (folder / f".write-probe.{dead.pid}.tmp").write_bytes(b"")
    os.utime(folder / f".write-probe.{dead.pid}.tmp", (0, 0))
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    assert sorted(os.listdir(folder)) == ["meta.json", f"notes.{dead.pid}.tmp", "train.bin", "val.bin"]
    # the usual case: prepare.py run again at once after the kill (files written a moment ago). They stayed beside the
    # rebuild until a run 10 minutes later; under the folder's lock no other prepare writes them
    (folder / f"train.bin.unpacked.{dead.pid}.tmp").write_bytes(b"\0" * 1000)
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    assert sorted(os.listdir(folder)) == ["meta.json", f"notes.{dead.pid}.tmp", "train.bin", "val.bin"]
    # and a live process's (its pid ours: not a killed one's) stays
    (folder / f"train.bin.unpacked.{os.getppid()}.tmp").write_bytes(b"\0" * 1000)
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    assert f"train.bin.unpacked.{os.getppid()}.tmp" in os.listdir(folder)


def test_token_files_no_prepare_made_are_not_replaced(tmp_path):
    """A folder holding train.bin and val.bin without a meta.json (nanoGPT's data/shakespeare_char, with its
    meta.pkl) was built over, its files lost: refused, naming the ways out, and --force replaces them. Token files a
    prepare.py left halfway through its renames (killed, or stopped by an error) are rebuilt without a word, as
    build's comment promises: its new meta.json, left under its temporary name, tells them apart."""
    src = write(tmp_path / "corpus.txt", EOT.join(DOCS))
    out, folder = str(tmp_path / "data"), tmp_path / "data" / "shakespeare_char"
    folder.mkdir(parents=True)
    theirs = {"train.bin": b"\1" * 1000, "val.bin": b"\2" * 100, "meta.pkl": b"vocab"}
    for f, data in theirs.items():
        (folder / f).write_bytes(data)
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=src, out_dir=out, name="shakespeare_char")
    assert str(e.value) == (f"{folder} holds train.bin, val.bin but no meta.json, so no dataset prepare.py made "
                            f"(another tool's?): pick another folder with --name or --out_dir, move those files, or "
                            f"replace them with --force")
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == theirs
    meta = prepare.prepare("text", source=src, out_dir=out, name="shakespeare_char", force=True)
    assert prepare.is_complete(str(folder), meta, get_tokenizer("gpt2"))
    # a prepare.py killed in its renames: meta.json removed, train.bin replaced, the new meta.json not yet in place
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.replace(folder / "meta.json", folder / f"meta.json.{dead.pid}.tmp")
    again = prepare.prepare("text", source=src, out_dir=out, name="shakespeare_char")
    assert again["fingerprint"] == meta["fingerprint"]
    assert sorted(os.listdir(folder)) == ["meta.json", "meta.pkl", "train.bin", "val.bin"]


def test_single_document_is_cut_by_its_text(tmp_path, enc):
    """A book (one document) was cut at a tenth of its tokens: in another vocabulary at another place, so bits per byte
    compared across vocabularies were measured on other text (Tiny Shakespeare's val in a 1,024-token vocabulary was
    7% less text than in a byte-level one). It is cut at a tenth of its bytes: the same text, up to a token."""
    # words at first and digits at the end, which GPT-2 spells in fewer bytes a token: a tenth of its tokens is more
    # than a tenth of the text
    book = "".join(f"Chapter {i}. It was a dark and stormy night; the rain fell in torrents.\n" for i in range(180)) + \
        "".join(f"{i * 7919 % 100003:05d} {i * 104729 % 99991:05d}\n" for i in range(600))
    vals = []
    for name, vocab_size in (("gpt2", None), ("own", 300)):
        meta = prepare.prepare("text", source=write(tmp_path / "book.txt", book), out_dir=str(tmp_path / "data"),
                               name=name, vocab_size=vocab_size)
        folder = tmp_path / "data" / name
        tok = get_tokenizer(meta["tokenizer"])
        train, _ = load(folder, "train", meta)
        val, _ = load(folder, "val", meta)
        assert tok.decode(train.tolist() + val.tolist()) == book + EOT
        assert meta["splits"]["val"]["bytes"] == text_bytes(tok, val)
        assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len(book.encode())
        longest = max(len(tok.decode_single_token_bytes(t)) for t in train.tolist())
        assert 0 <= meta["splits"]["train"]["bytes"] - math.ceil(0.9 * len(book.encode())) < longest
        vals.append(tok.decode(val.tolist()))
    assert vals[0][-20:] == vals[1][-20:] and abs(len(vals[0]) - len(vals[1])) < 10, [len(v) for v in vals]


def test_a_short_single_document_gives_val_some_text_or_a_clear_error(tmp_path, enc, monkeypatch):
    """A one-line file cut by tokens gave val its <|endoftext|> alone: train.py then refused the val split and sent the
    user back to the same prepare.py command, which found the dataset up to date."""
    line = "Hello there, this is my only document."
    meta = prepare.prepare("text", source=write(tmp_path / "one.jsonl", json.dumps({"text": line})),
                           out_dir=str(tmp_path / "data"))
    train, _ = load(tmp_path / "data" / "text", "train", meta)
    val, _ = load(tmp_path / "data" / "text", "val", meta)
    assert enc.decode(train.tolist() + val.tolist()) == line + EOT
    assert meta["splits"]["val"]["bytes"] > 0 and enc.decode(val.tolist()).endswith(EOT) and len(val) >= 2
    # one token of text, too short to cut: val takes it whole, which leaves train nothing; no dataset is left behind
    with pytest.raises(UserError, match=r"x\.txt: too little text to cut into train and val \(train would hold none\)"):
        prepare.prepare("text", source=write(tmp_path / "x.txt", "x"), out_dir=str(tmp_path / "data"), name="x")
    assert not (tmp_path / "data" / "x").exists()
    # a vocabulary sees no merge of such a document, which it could make one token, whole in val (it saw it all)
    # and a book's share is what it always was, the ceil of 1 - val_fraction of its characters: a vocabulary trained
    # again on the same text (its file lost, --force) must be the same one, or the checkpoints trained on it no longer
    # fit
    book = "".join(f"line {i}: the quick brown fox.\n" for i in range(500))[:12_542]
    for text, learnt in (("zq", ["z"]), (book, [book[:11_288]])):
        write(tmp_path / "zq" / "z.txt", text)
        seen = []
        monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.extend(texts) or get_tokenizer("gpt2"))
        prepare.train_vocabulary(prepare.find_source("text", str(tmp_path / "zq")), 300, None, None, 0.1)
        assert [t for t in seen if t] == learnt
        monkeypatch.undo()
    # a file of one character: the vocabulary gets none of it, and said so as "no text to train on" in a file of text
    with pytest.raises(UserError, match=r"q\.txt: too little text to cut into train and val \(train would hold none\)"):
        prepare.prepare("text", source=write(tmp_path / "q.txt", "q"), out_dir=str(tmp_path / "data"), name="q",
                        vocab_size=300)
    assert not (tmp_path / "data" / "q").exists()
    # next to a file of long records (which give val none of them at this share), the short file is val, whole: it was
    # refused when it sorted last, and trained on (val empty) before that
    write(tmp_path / "ms" / "a.jsonl", "".join(json.dumps({"text": f"word {i} " * 1500}) + "\n" for i in range(3)))
    write(tmp_path / "ms" / "b.txt", "Hi")
    meta = prepare.prepare("text", source=str(tmp_path / "ms"), out_dir=str(tmp_path / "data"), name="ms")
    val, _ = load(tmp_path / "data" / "ms", "val", meta)
    assert enc.decode(val.tolist()) == "Hi" + EOT and meta["splits"]["train"]["documents"] == 3


def test_a_folder_of_one_document_files_keeps_whole_documents(tmp_path, enc, monkeypatch, capsys):
    """Each one-document .txt was cut by tokens like a book: every file's head ran into the next one's in train with
    no <|endoftext|> between, and val held the ends of all the notes. Now whole files go to val (its share over the
    folder); only when the files are too few for that (a handful of books) is the last one cut by tokens."""
    notes = [f"Note {i}: " + " ".join(["the quick brown fox jumps over the lazy dog."] * (3 + i)) for i in range(10)]
    for i, note in enumerate(notes):
        write(tmp_path / "notes" / f"n{i}.txt", note)
    meta = prepare.prepare("text", source=str(tmp_path / "notes"), out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "text"
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (9, 1)
    train, _ = load(folder, "train", meta)
    val, _ = load(folder, "val", meta)
    in_val = [n for n in notes if enc.decode(val.tolist()) == n + EOT]  # the file where the share comes to one
    assert len(in_val) == 1 and enc.decode(train.tolist()) == "".join(n + EOT for n in notes if n not in in_val)
    # not the last file, and meta.json says so (it said "the last 0.1 of the documents", of a val of files 6, 15, 26)
    assert in_val != notes[-1:] and "a folder of one-document files gives files spread through it, not its last " \
                                    "ones" in meta["val_split"] and meta["val_split"].startswith("the last")
    seen = []  # the vocabulary learns from the train files, whole
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.extend(texts) or get_tokenizer("gpt2"))
    prepare.train_vocabulary(prepare.find_source("text", str(tmp_path / "notes")), 300, None, None, 0.1)
    assert seen == [n for n in notes if n not in in_val]
    # three books (too few documents to give val a whole one at its share): each is cut by tokens, its tail to val;
    # each head ends with <|endoftext|> in train, not running into the next book's text, a short last file included
    books = ["\n".join(f"Book {b}, line {i}: it was a dark and stormy night." for i in range(100)) for b in range(2)]
    books.append("Licence: public domain.")
    for b, book in enumerate(books):
        write(tmp_path / "books" / f"b{b}.txt", book)
    capsys.readouterr()
    meta = prepare.prepare("text", source=str(tmp_path / "books"), out_dir=str(tmp_path / "data"), name="books")
    assert meta["cut_documents"] == 3 and "books: 3 documents (cut into train and val), " in capsys.readouterr().out
    train, _ = load(tmp_path / "data" / "books", "train", meta)
    val, _ = load(tmp_path / "data" / "books", "val", meta)
    heads, tails = enc.decode(train.tolist()).split(EOT), enc.decode(val.tolist()).split(EOT)
    assert len(heads) == 3 and len(tails) == 4 and tails[-1] == ""
    assert [h + t for h, t in zip(heads, tails)] == books
    for book, head in zip(books[:2], heads):
        assert 0.85 < len(enc.encode(head)) / len(enc.encode(book)) < 0.95
    # books with a file of two poems: the cut books are counted as such, not as val documents (the line said
    # "4 documents (1 train, 3 val)" with both books' heads in train)
    write(tmp_path / "books" / "b2.txt", EOT.join(["Poem one.", "Poem two."]))
    meta = prepare.prepare("text", source=str(tmp_path / "books"), out_dir=str(tmp_path / "data"), name="poems")
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"], meta["cut_documents"]) == (
        1, 1, 2) and "poems: 4 documents (1 train, 1 val, 2 cut into train and val), " in capsys.readouterr().out
    write(tmp_path / "books" / "b2.txt", books[2])
    seen.clear()
    prepare.train_vocabulary(prepare.find_source("text", str(tmp_path / "books")), 300, None, None, 0.1)
    learnt = "".join(seen)
    assert learnt.startswith(books[0][:len(heads[0]) - 200]) and books[1][:len(heads[1]) - 200] in learnt
    # notes and a book: whole notes go to val, and the book, over twice val's share of the text, is cut by tokens;
    # the count came to the book (last by name) and val got it whole: train kept 52 tokens of 90k
    for i, note in enumerate(notes):
        write(tmp_path / "mixed" / f"n{i}.txt", note)
    write(tmp_path / "mixed" / "z_book.txt", "\n".join(books[:2] * 5))
    meta = prepare.prepare("text", source=str(tmp_path / "mixed"), out_dir=str(tmp_path / "data"), name="mixed")
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"], meta["cut_documents"]) == (
        9, 1, 1)
    assert 0.08 < meta["splits"]["val"]["tokens"] / (meta["splits"]["train"]["tokens"] +
                                                     meta["splits"]["val"]["tokens"]) < 0.15
    seen.clear()  # the vocabulary learns from what train holds: the book's head, not all of it
    prepare.train_vocabulary(prepare.find_source("text", str(tmp_path / "mixed")), 300, None, None, 0.1)
    assert 0.85 < sum(map(len, seen)) / (sum(map(len, notes)) + len("\n".join(books[:2] * 5))) < 0.95


def test_separators_after_a_long_first_document_still_separate(tmp_path, monkeypatch):
    """Whether a .txt is one document or many was decided on its first 64K characters: a first document longer than
    that made the whole file one, its later <|endoftext|> separators tokenized as plain text."""
    monkeypatch.setattr(prepare, "read_text_chunks", functools.partial(prepare.read_text_chunks, chunk_chars=1000))
    text = EOT.join(["The quick brown fox jumps over the lazy dog.\n" * 2000] + [f"Short story {i}." for i in range(9)])
    meta = prepare.prepare("text", source=write(tmp_path / "long.txt", text), out_dir=str(tmp_path / "data"))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10
    # a file of whitespace alone holds no document (it was one of blanks)
    with pytest.raises(UserError, match="no documents found in .*blank.txt: give files that hold text$"):
        prepare.prepare("text", source=write(tmp_path / "blank.txt", " \n\n  \n"), out_dir=str(tmp_path / "data"),
                        name="blank")


def test_jsonl_text_and_folder_source(tmp_path, enc):
    lines = [json.dumps({"text": d}) for d in DOCS[:20]] + ["", json.dumps("a bare <|endoftext|> string document")]
    write(tmp_path / "in" / "a.jsonl", "\n".join(lines) + "\n")
    write(tmp_path / "in" / "b.txt", EOT.join(DOCS[20:30]))
    write(tmp_path / "in" / "ignored.md", "not read")
    meta = prepare.prepare("text", source=str(tmp_path / "in"), out_dir=str(tmp_path / "data"), val_fraction=0.1)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 31
    # val is the tail of each file: 2 of a.jsonl's 21 documents, 1 of b.txt's 10
    val, _ = load(tmp_path / "data" / "text", "val", meta)
    assert enc.decode(val.tolist()) == DOCS[19] + EOT + "a bare <|endoftext|> string document" + EOT + DOCS[29] + EOT
    assert (val == enc.eot_token).sum() == 3  # the literal inside a JSON document is plain text


def test_a_documents_spacing_around_its_separators_and_in_its_record_is_not_trained_on(tmp_path):
    """TinyStories writes "\\n<|endoftext|>\\n" between stories, and JSON exports leave a text's trailing newline: each
    document is its text stripped, so none starts or ends with newline tokens the model would learn to write."""
    docs = [("First story.", True), ("Second story.", True), ("Third.", True)]
    src = write(tmp_path / "s.txt", "First story.\n<|endoftext|>\n\nSecond story.\n<|endoftext|>  \nThird.\n")
    assert list(prepare.text_docs(src)) == docs
    assert [prepare.record_doc({"text": " First story.\n"}, "x"), prepare.record_doc("\nThird.\n", "x")] == \
        [docs[0], docs[2]]


def test_lone_surrogates_in_json_read_as_tiktoken_reads_them(tmp_path, enc):
    """JSON may spell half a UTF-16 pair alone ("\\ud800"): tiktoken read it as U+FFFD, but a --vocab_size build
    failed with a traceback in the vocabulary trainer. Both read it as U+FFFD now (a whole pair stays one character)."""
    lines = ['{"text": "hello \\ud800 world"}', '{"text": "a pair \\ud83d\\ude00 stays"}', '{"text": "third one"}',
             '{"text": "a literal \\\\ud800"}']
    src = write(tmp_path / "s.jsonl", "\n".join(lines * 3))
    for vocab_size in (None, 300):
        meta = prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"), name=f"s{vocab_size}",
                               vocab_size=vocab_size, val_fraction=0.25)
        tok = get_tokenizer(meta["tokenizer"])
        train, _ = load(tmp_path / "data" / f"s{vocab_size}", "train", meta)
        assert tok.decode(train.tolist()).startswith(
            "hello \ufffd world" + EOT + "a pair \U0001f600 stays" + EOT + "third one" + EOT
            + "a literal \\ud800" + EOT)


def test_limit(tmp_path):
    src = write(tmp_path / "corpus.txt", EOT.join(DOCS))
    meta = prepare.prepare("text", source=src, limit=10, out_dir=str(tmp_path / "data"))
    assert meta["splits"]["train"]["documents"] == 9 and meta["splits"]["val"]["documents"] == 1


def test_chunk_boundaries_do_not_change_documents(tmp_path, monkeypatch):
    """Documents read in tiny chunks are the same as read whole: separators are never split."""
    corpus = write(tmp_path / "c.txt", EOT.join(DOCS))
    stories = write(tmp_path / "s.txt", "First story.\n\nIts second paragraph.\nSecond story.\nThird\n\n\nstory.\n")
    whole = list(prepare.text_docs(corpus)), list(prepare.story_line_docs(stories))
    assert whole[0] == [(d.strip(), True) for d in DOCS]
    assert whole[1] == [("First story.\n\nIts second paragraph.", True), ("Second story.", True),
                        ("Third\n\n\nstory.", True)]
    chunks = prepare.read_text_chunks
    # 5: the first separator lies past the first chunk, read again; 200: the first chunk holds one, and the chunks
    # after it come from the same reading (text_docs' first look)
    for size in (5, 200):
        monkeypatch.setattr(prepare, "read_text_chunks", lambda path, size=size: chunks(path, chunk_chars=size))
        assert (list(prepare.text_docs(corpus)), list(prepare.story_line_docs(stories))) == whole
    # a blank line between a story's paragraphs whose newlines fall in two chunks: no story break
    paragraphs = write(tmp_path / "p.txt", "Abcd\n\nEfgh.\nNext.\n")
    assert list(prepare.story_line_docs(paragraphs)) == [("Abcd\n\nEfgh.", True), ("Next.", True)]


def test_a_file_written_to_as_it_is_read_is_refused_and_the_old_dataset_kept(tmp_path, monkeypatch):
    """A file that shrank between val's count (a first pass over several files) and its tokens gave val the 37 documents
    the count said of a file that then held 2: meta.json said 299 train and 74 val documents of files holding 334 and
    39. The run stops, naming the file, and the dataset made before stays as it was."""
    out = str(tmp_path / "data")
    first = write(tmp_path / "src" / "1.txt", EOT.join(DOCS))
    second = write(tmp_path / "src" / "2.txt", EOT.join(DOCS))
    prepare.prepare("text", source=[first, second], out_dir=out, name="notes")
    folder = os.path.join(out, "notes")
    before = snapshot(folder)
    reads, text_docs = [], prepare.text_docs

    def still_written(path):  # its second read, the tokens' (the first: val's count)
        reads.append(path)
        if reads.count(second) == 2:
            write(tmp_path / "src" / "2.txt", "one short document" + EOT + "and another")
        return text_docs(path)
    monkeypatch.setattr(prepare, "text_docs", still_written)
    with pytest.raises(UserError, match=rf"^{re.escape(second)} changed while prepare.py read it \(still being "
                                        rf"written\?\): run this again once it is complete; {re.escape(folder)} is as "
                                        rf"it was$"):
        prepare.prepare("text", source=[first, second], out_dir=out, name="notes", force=True)
    assert snapshot(folder) == before


def test_null_fields_byte_order_marks_and_deep_json(tmp_path, enc):
    """What exports contain: rows of mixed shapes with every column, null where a row has none (parquet, pandas),
    a UTF-8 byte-order mark (Notepad, Excel), in a .jsonl at any line's start (such files joined); and nesting too deep
    for json is one line, not a RecursionError."""
    rows = [{"instruction": "Add 1 and 1.", "input": None, "output": "2", "question": None,
             "answer": None, "text": None},
            {"instruction": None, "input": None, "output": None, "question": "Why?",
             "answer": "Because.", "text": None},
            {"instruction": None, "input": None, "output": None, "question": None, "answer": None, "text": None}] * 4
    want = ["2" + IM_END, "Because." + IM_END] * 4  # the replies, each row read in its own shape
    out = str(tmp_path / "data")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "rows.parquet"))
    bom = tmp_path / "bom"
    bom.mkdir()
    def notepad(part):
        return b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in part).encode()
    # two Notepad files joined with `cat`: a byte-order mark starts a line mid-file too
    (bom / "rows.jsonl").write_bytes(notepad(rows[:6]) + notepad(rows[6:]))
    (bom / "rows.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    for i, src in enumerate((str(tmp_path / "rows.parquet"), str(bom / "rows.jsonl"), str(bom / "rows.json"))):
        meta = prepare.prepare("chat", source=src, out_dir=out, name=f"rows{i}", pack=0, val_fraction=0.25)
        parts = [load(tmp_path / "data" / f"rows{i}", s, meta) for s in ("train", "val")]
        assert masked_spans(enc, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])) == want
    (bom / "t.txt").write_bytes(b"\xef\xbb\xbfOnce upon a time.")
    meta = prepare.prepare("text", source=str(bom / "t.txt"), out_dir=out, name="t")
    ids = np.concatenate([load(tmp_path / "data" / "t", s, meta)[0] for s in ("train", "val")])
    assert enc.decode(ids.tolist()) == "Once upon a time." + EOT  # no U+FEFF
    write(tmp_path / "deep.jsonl", "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(UserError, match=r"deep.jsonl line 1: JSON nested too deeply to read"):
        prepare.prepare("text", source=str(tmp_path / "deep.jsonl"), out_dir=out, name="deep")
    # an integer of over 4,300 digits: json.loads raises a plain ValueError (a traceback before)
    for name, where in (("big.jsonl", "big.jsonl line 1"), ("big.json", "big.json")):
        write(tmp_path / name, '{"text": "hi", "n": ' + "1" * 5000 + "}\n")
        with pytest.raises(UserError, match=rf"{where}: JSON that cannot be read \(Exceeds the limit"):
            prepare.prepare("text", source=str(tmp_path / name), out_dir=out, name="big")


def paste_the_fix(error, pattern):
    """The command a UserError (pytest.raises' info) gives to paste, pattern's group 1, run as the user would."""
    command = re.fullmatch(pattern, str(error.value))[1]
    subprocess.run(command, shell=True, check=True, stdin=subprocess.DEVNULL, timeout=60)
    return command


def prepared_text(source, out):
    """The text of source (a file or folder) prepared into out as dataset n, all of it train, read back."""
    meta = prepare.prepare("text", source=str(source), out_dir=out, name="n", val_fraction=0)
    return get_tokenizer("gpt2").decode(load(os.path.join(out, "n"), "train", meta)[0].tolist())


def test_a_folder_or_pattern_of_notebooks_is_refused_with_one_command_for_all_of_them(tmp_path):
    """Notebooks by a pattern were refused with the command for the first one alone (run, then refused at the next),
    and a folder of them with "plain text is read from files named .txt": the command writes every notebook's code
    cells, run as pasted, and the --source it names reads them all."""
    def notebook(path, code):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": code, "outputs": [], "metadata": {}}],
                                    "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    folder, out = tmp_path / "my nbs", str(tmp_path / "out")
    notebook(folder / "a.ipynb", "print(1)")
    notebook(folder / "sub" / "b.ipynb", ["x = 2"])
    for source in (str(folder), str(folder / "**" / "*.ipynb")):
        for f in folder.rglob("*.py"):
            f.unlink()
        with pytest.raises(UserError, match=r"each notebook's code cells as a \.py file next to it: `.*`, then "
                                            r"--source .*\*\.ipynb\.py'$") as e:
            prepare.prepare("text", source=source, out_dir=out)
        subprocess.run(str(e.value).split("`")[1], shell=True, check=True)
        again = shlex.split(str(e.value).rsplit("--source ", 1)[1])[0]
        assert sorted(prepared_text(again, out).split(EOT)) == ["", "print(1)\n", "x = 2\n"]


def test_a_parquet_file_is_read_past_its_first_batch_and_an_empty_json_file_holds_no_records(tmp_path):
    """parquet_records reads a file in batches of 1,024 rows, every one of them: the first alone would leave a 1,500-row
    file's last 476 out unsaid. An empty .json file is no malformed JSON, as an empty .jsonl is not."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"text": f"row {i}"} for i in range(1500)]), tmp_path / "t.parquet")
    rows = list(prepare.parquet_records(str(tmp_path / "t.parquet")))
    assert len(rows) == 1500 and rows[-1] == (f"{tmp_path / 't.parquet'} row 1500", {"text": "row 1499"})
    assert list(prepare.json_file_records(write(tmp_path / "e.json", "\n"))) == []


@pytest.mark.skipif(not shutil.which("iconv"), reason="no iconv to run the suggested command")
@pytest.mark.parametrize("text,encoding", [("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e", "latin1"),
                                           ("caf\u00e9 l\u2019\u00e9t\u00e9 \u2013 \u201c5 \u20ac\u201d", "cp1252")])
def test_the_not_utf8_errors_command_converts_the_file_when_pasted(tmp_path, text, encoding):
    """The error for a latin1 file said "e.g. `iconv -f latin1 -t utf-8`", no file named: pasted, iconv waited on the
    terminal. Pasted now, it writes the text as UTF-8 next to the file (a name with a space, quoted), the file itself
    kept, and prepare.py reads it with its accents. Windows' cp1252 text is converted from cp1252: from latin1, as all
    were, its curly quotes, dashes and euro signs became invisible control characters, prepared without a word."""
    src = tmp_path / "my notes.txt"
    src.write_bytes(text.encode(encoding))
    out = str(tmp_path / "data")
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(src), out_dir=out, name="n")
    command = paste_the_fix(e, r".*: convert it, e.g. `(.*)`")
    assert command.startswith(f"iconv -f {encoding} ")
    assert src.read_bytes() == text.encode(encoding)
    assert prepared_text(tmp_path / "my notes.utf8.txt", out) == text + EOT


@pytest.mark.skipif(not shutil.which("iconv"), reason="no iconv to run the suggested command")
@pytest.mark.parametrize("name", ["中文 notes.txt", "chats.jsonl"])
def test_chinese_windows_text_is_told_to_convert_from_gbk(tmp_path, name):
    """Text saved by Chinese Windows (GBK) was "the text around it is UTF-8, so a stray byte? drop such bytes, e.g.
    `iconv -c ...`": GBK's characters make some valid UTF-8 by chance, and the command pasted dropped every Chinese
    character; a .jsonl's lines were bad records, which --skip_bad_records left out. It is named GBK, and the command
    given converts it: prepared, the text reads as written."""
    lines = [f"第{i}天：小明喜欢读书，他说“今天天气很好”。Day {i}: Lily reads." for i in range(300)]
    text = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in lines) if name.endswith(".jsonl") else \
        EOT.join(lines)
    src = tmp_path / name
    src.write_bytes(text.encode("gbk"))
    out = str(tmp_path / "data")
    advice = r".*: it looks like GBK/GB18030, .*: convert it, e\.g\. `(iconv -f gb18030 .*)` \(Big5, .*\)"
    for skip in (False, True):
        with pytest.raises(UserError) as e:
            prepare.prepare("text", source=str(src), out_dir=out, name="n", skip_bad_records=skip)
        assert "stray" not in str(e.value) and "bad record" not in str(e.value)
        assert re.fullmatch(advice, str(e.value)), str(e.value)
    paste_the_fix(e, advice)
    stem, ext = os.path.splitext(name)
    assert prepared_text(tmp_path / f"{stem}.utf8{ext}", out) == EOT.join(lines) + EOT


@pytest.mark.skipif(not shutil.which("iconv"), reason="no iconv to run the suggested command")
@pytest.mark.parametrize("line,encoding,named", [
    ("第{}天：你好，我們今天去學校學習中文。媽媽說：「好好吃飯。」", "cp950", "Big5, Traditional Chinese"),
    ("{}日目：コンピューターでカタカナを書きます。東京は大きい都市です。", "cp932", "Shift-JIS, Japanese"),
    ("{}日目：今日は良い天気ですね。私は学生です。", "euc-jp", "EUC-JP, Japanese"),
    ("{}일: 오늘은 날씨가 좋습니다. 저는 학생입니다.", "cp949", "EUC-KR, Korean")])
def test_traditional_chinese_japanese_and_korean_text_is_told_its_encoding(tmp_path, line, encoding, named):
    """Taiwan's Windows text (Big5) was told `iconv -f iso-8859-2` and Japanese Windows' (Shift-JIS) `iconv -f cp1252`:
    half their characters' second bytes are ASCII letters (你 is A7 41, カ 83 4A), which GBK's test does not take, and
    pasted, the command turned every character into Western letters, which prepare.py then took. Japanese Unix text
    (EUC-JP) and Korean Windows' (EUC-KR) were told GBK, whose iconv reads kana right and kanji and Hangul as other
    characters. Each is named, and the command given converts it: prepared, the text reads as written."""
    text = EOT.join(line.format(i) for i in range(100))
    src = tmp_path / "notes.txt"
    src.write_bytes(text.encode(encoding))
    out = str(tmp_path / "data")
    advice = rf".*: it looks like {named}[^:]*: convert it, e\.g\. `(iconv -f {encoding} .*)` \(.*\)"
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(src), out_dir=out, name="n")
    assert re.fullmatch(advice, str(e.value)), str(e.value)
    paste_the_fix(e, advice)
    assert prepared_text(tmp_path / "notes.utf8.txt", out) == text + EOT


@pytest.mark.skipif(not shutil.which("iconv"), reason="no iconv to run the suggested command")
@pytest.mark.parametrize("line,encoding,named", [
    ("День {}: Маша читает «книгу»… — и ёж спит.", "cp1251", "Cyrillic in Windows-1251"),
    ("День {}: Маша читает книгу, и ёж спит. Вот этот кот.", "koi8-r", "Cyrillic in KOI8-R"),
    ("Ημέρα {}: η Μαρία διαβάζει «ένα βιβλίο» και ο σκύλος της κοιμάται.", "cp1253", "Greek in Windows-1253"),
    ("Dzień {}: Zażółć gęślą jaźń – był sobie człowiek.", "cp1250", "Central European in Windows-1250"),
    ("Dzień {}: mała łódź, żółty kot i był sobie człowiek.", "iso-8859-2", "Central European in ISO-8859-2")])
def test_cyrillic_greek_and_central_european_text_is_told_its_encoding(tmp_path, line, encoding, named):
    """Text saved by Russian Windows (cp1251) was told `iconv -f cp1252` (its dashes are cp1252's bytes too) or
    `iconv -f latin1`: pasted, every Cyrillic letter became an accented Western one, and prepare.py took the garbled
    copy. Older Russian text (KOI8-R) and Greek Windows' (cp1253) were told cp1251 in turn, and Polish text (cp1250,
    latin2) cp1252 or latin1, which made "był" "by³". Each is named, and the command given converts it: prepared, the
    text reads as written. Western text whose accented letters sit next to each other (Portuguese's ação) keeps
    latin1."""
    from common import not_utf8
    lines = [line.format(i) for i in range(50)]
    src = tmp_path / "notes.txt"
    src.write_bytes(EOT.join(lines).encode(encoding))
    out = str(tmp_path / "data")
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(src), out_dir=out, name="n")
    paste_the_fix(e, rf".*: it looks like {named}\b.*: convert it, e\.g\. `(iconv -f {encoding} .*)` \(check .*\)")
    assert prepared_text(tmp_path / "notes.utf8.txt", out) == EOT.join(lines) + EOT
    src.write_bytes("ação e informação, à noite".encode("latin-1"))
    assert "`iconv -f latin1 " in str(not_utf8(str(src)))


@pytest.mark.skipif(not shutil.which("iconv"), reason="no iconv to run the suggested command")
def test_the_not_utf8_advice_for_a_file_of_a_source_folder_gets_the_original_out(tmp_path):
    """In a --source folder, the pasted command writes notes.utf8.txt next to notes.txt: the next run read both and
    failed again on notes.txt. The error says to move the original out; done, the folder is prepared. So with a
    pattern's file."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Once upon a time.", encoding="utf-8")
    (corpus / "notes.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    out = str(tmp_path / "data")
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(corpus), out_dir=out, name="n")
    paste_the_fix(e, rf".*: convert it, e.g. `(.*)`; then move the original out of {re.escape(str(corpus))}: "
                     r"prepare.py reads every file of a --source folder")
    (corpus / "notes.txt").rename(tmp_path / "notes.txt")
    assert prepared_text(corpus, out) == "Once upon a time." + EOT + "caf\u00e9 cr\u00e8me" + EOT
    # a stray byte in a .jsonl of UTF-8 text (a bad record, not the whole file's encoding): the same, where the run
    # after the pasted command failed again on the original
    (corpus / "notes.utf8.txt").unlink()
    (corpus / "chats.jsonl").write_bytes(b'{"text": "ok caf\xc3\xa9"}\n{"text": "bad \xff byte"}\n')
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(corpus), out_dir=out, name="n")
    paste_the_fix(e, rf".*a stray byte\? .*, e.g. `(.*)`, or mend that line .*; then move the original out of "
                     rf"{re.escape(str(corpus))}: prepare.py reads every file of a --source folder; fix it, .*")
    (corpus / "chats.jsonl").rename(tmp_path / "chats.jsonl")
    assert prepared_text(corpus, out) == "Once upon a time." + EOT + "ok caf\u00e9" + EOT + "bad  byte" + EOT
    # a pattern (source code, or notes, read when named) matches the copy as well: the same again, unsaid
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_bytes("# caf\u00e9\n".encode("latin-1"))
    pattern = str(code / "**" / "*.py")
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=pattern, out_dir=out, name="n")
    paste_the_fix(e, rf".*: convert it, e.g. `(.*)`; then move the original out of the way: --source "
                     rf"{re.escape(shlex.quote(pattern))} matches it")
    (code / "a.py").rename(tmp_path / "a.py")
    assert prepared_text(pattern, out) == "# caf\u00e9\n" + EOT


def test_non_utf8_and_bad_input(tmp_path):
    out = str(tmp_path / "data")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt is not UTF-8"):
        prepare.prepare("text", source=str(bad), out_dir=out)
    # the bad byte by line and offset in the file, past the decoder's first read block (its offset in that block
    # was all the message gave), in .jsonl and in plain text
    good = b'{"text": "caf\xc3\xa9"}\n' * 4000
    for name, data in (("latin1.jsonl", good + b'{"text": "caf\xe9"}\n'), ("latin1-big.txt", good + b"caf\xe9\n")):
        (tmp_path / name).write_bytes(data)
        at = data.index(b"\xe9")
        with pytest.raises(UserError, match=rf"{name} is not UTF-8 text \(line 4,001, byte offset {at:,} in the "
                                            r"file\)"):
            prepare.prepare("text", source=str(tmp_path / name), out_dir=out)
    # a .jsonl of UTF-8 with stray bytes (lines pasted from elsewhere): bad records, named together, which
    # --skip_bad_records leaves out (they stopped the run, flag or not); a file in latin1 is the whole file's to convert
    line = b'{"text": "caf\xc3\xa9"}\n'
    data = line * 100 + b'{"text": "caf\xe9"}\n' + line * 2 + b'{"text": "\xff"}\n'
    (tmp_path / "strays.jsonl").write_bytes(data)
    at = data.index(b"\xe9")
    with pytest.raises(UserError, match=rf"strays.jsonl is not UTF-8 text \(line 101, byte offset {at:,} in the "
                                        r"file\): the text around it is UTF-8, so a stray byte.*; 1 more bad record in "
                                        r"the file: line 104; fix them, or pass --skip_bad_records to leave them out"):
        prepare.prepare("text", source=str(tmp_path / "strays.jsonl"), out_dir=out, name="strays")
    meta = prepare.prepare("text", source=str(tmp_path / "strays.jsonl"), out_dir=out, name="strays",
                           skip_bad_records=True, val_fraction=0)
    assert meta["splits"]["train"]["documents"] == 102
    (tmp_path / "latin.jsonl").write_bytes('{"text": "café"}\n{"text": "crème"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.jsonl is not UTF-8 text \(line 1, byte offset 13 in the file\): "
                                        r"convert it"):
        prepare.prepare("text", source=str(tmp_path / "latin.jsonl"), out_dir=out, name="latin", skip_bad_records=True)
    with pytest.raises(UserError, match=r"broken.jsonl line 2: malformed JSON"):
        prepare.prepare("text", source=write(tmp_path / "broken.jsonl", '{"text": "ok"}\n{"text": oops}\n'),
                        out_dir=out)
    # a line cut short: the column is where its text ends (it was column 1, of the line after the newline)
    with pytest.raises(UserError, match=r"cut.jsonl line 2: malformed JSON \(Expecting ',' delimiter, column 20\)"):
        prepare.prepare("text", source=write(tmp_path / "cut.jsonl", '{"text":"a"}\n{"text":"b", "x": 1\n'
                                                                     '{"text":"c"}\n'), out_dir=out)
    with pytest.raises(UserError, match=r"broken.json line 3: malformed JSON"):
        prepare.prepare("text", source=write(tmp_path / "broken.json", '[\n{"text": "ok"},\n{"text" "no colon"}]'),
                        out_dir=out)
    # a line cut inside a string (a writer interrupted): json's "starting at" reads on to the column, in a .jsonl and
    # in a .json (it said "Unterminated string starting at, column 9")
    for name, text in (("torn.jsonl", '{"text":"a"}\n{"text":"b'), ("torn.json", '[{"text":"a"},\n{"text":"b')):
        with pytest.raises(UserError, match=rf"{name} line 2: malformed JSON \(Unterminated string starting at column "
                                            r"9\)"):
            prepare.prepare("text", source=write(tmp_path / name, text), out_dir=out)
    with pytest.raises(UserError, match="--source .*nope.txt: no such file"):
        prepare.prepare("text", source=str(tmp_path / "nope.txt"), out_dir=out)
    # a spreadsheet's export, a common form of one's own chat data: the command that writes its rows as JSON Lines
    # (it said only "unsupported file type"), run here as pasted: its records are prompt/completion pairs
    table = write(tmp_path / "chats.csv", "prompt,completion\nHi,Hello\nBye,See you\n")
    with pytest.raises(UserError, match=r"chats.csv: unsupported file type; use .txt, .jsonl, .json, .parquet, .md, "
                                        r"\.markdown, or source code \(\.py, \.pyi, \.js\.\.\.\); a \.csv file's "
                                        r"rows as JSON Lines records, its columns their fields: `.*`$") as e:
        prepare.prepare("chat", source=table, out_dir=out)
    subprocess.run(str(e.value).split("`")[1], shell=True, check=True)
    assert [json.loads(line) for line in open(table + ".jsonl")] == [{"prompt": "Hi", "completion": "Hello"},
                                                                     {"prompt": "Bye", "completion": "See you"}]
    # a .tsv's (tab-separated, its name in any case, its path holding a quote the shell keeps)
    table = write(tmp_path / "it's chats.TSV", "prompt\tcompletion\nHi\tHello, you\n")
    with pytest.raises(UserError, match=r"unsupported file type; .*; a \.tsv file's rows as JSON Lines records") as e:
        prepare.prepare("chat", source=table, out_dir=out)
    subprocess.run(str(e.value).split("`")[1], shell=True, check=True)
    assert [json.loads(line) for line in open(table + ".jsonl")] == [{"prompt": "Hi", "completion": "Hello, you"}]
    # a Jupyter notebook, where one's Python often is (it said only "unsupported file type"): the command that writes
    # its code cells as a .py, run as pasted; prepared, their text reads as written, the notebook's markup and its
    # Markdown cells left out
    notebook = tmp_path / "my nb's.ipynb"
    notebook.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["# Title"], "metadata": {}},
        {"cell_type": "code", "source": ["def f(x):\n", "\treturn  x\n"], "outputs": [], "metadata": {}},
        {"cell_type": "code", "source": "print(f(1))", "outputs": [], "metadata": {}}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported file type; .*; a notebook's code cells as a \.py file, which "
                                        r"prepare.py reads: `.*`$") as e:
        prepare.prepare("text", source=str(notebook), out_dir=out)
    subprocess.run(str(e.value).split("`")[1], shell=True, check=True)
    assert prepared_text(str(notebook) + ".py", out) == "def f(x):\n\treturn  x\n\n\nprint(f(1))\n" + EOT
    # a compressed file (it said only "unsupported file type"): the command that decompresses it, run as pasted
    packed = tmp_path / "notes.txt.gz"
    packed.write_bytes(gzip.compress(b"Once upon a time."))
    with pytest.raises(UserError, match=r"notes.txt.gz: unsupported file type; use .*; it is compressed: decompress it "
                                        r"first, e.g. `gunzip -c .*`$") as e:
        prepare.prepare("text", source=str(packed), out_dir=out)
    subprocess.run(str(e.value).split("`")[1], shell=True, check=True)
    assert (tmp_path / "notes.decompressed.txt").read_text() == "Once upon a time."
    # malformed turns say what a turn looks like (it was Python's words: "string indices must be integers")
    for i, (record, shape) in enumerate(((({"messages": ["hi"]}), '`messages` must be a list of turns like {"role": '
                                                                   '"user", "content": "Hi!"}'),
                                         ({"messages": [{"role": "user"}]}, "`messages` must be a list of turns"),
                                         ({"messages": "hi"}, "`messages` must be a list of turns"),
                                         ({"conversations": [{"value": "x"}]},
                                          '`conversations` must be a list of turns '
                                                                               'like {"from": "user", "value": "Hi!"}'),
                                         ({"instruction": 5, "output": "x"},
                                          "`instruction` must be text, got a number"),
                                         ({"instruction": "a", "output": "b", "history": [["q", "r", "s"]]},
                                          "`history` must be a list of [instruction, output] pairs of text"))):
        with pytest.raises(UserError, match=rf"turns{i}.jsonl line 1: {re.escape(shape)}"):
            prepare.prepare("chat", source=write(tmp_path / f"turns{i}.jsonl", json.dumps(record)), out_dir=out)
    # a list with one turn amiss names that turn and what it lacks: "must be a list of turns" alone left a long
    # conversation, whose every other turn is one, to be searched by eye for the turn short of its role
    for record, which in ((({"messages": [{"role": "user", "content": "Hi"}, {"content": "Hello"}]}),
                           'turn 2 of 2 has no "role"'),
                          ({"messages": [{"role": "user", "content": "Hi"}, {"role": None, "content": "Hello"}]},
                           'turn 2 of 2 has a "role" of null'),
                          ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "Hello"}]},
                           'turn 1 of 2 has no "value"'),
                          ({"messages": [{"role": "user", "content": "Hi"}, "Hello", {"role": "user", "content": "x"}]},
                           "turn 2 of 3 is a string"),
                          # a role that is no text (was a traceback: 'int' object has no attribute 'lower')
                          ({"messages": [{"role": "user", "content": "Hi"}, {"role": 5, "content": "Hello"}]},
                           'turn 2 of 2 has a "role" of a number'),
                          # a turn in the other spelling than its field's usual one is named in that spelling
                          ({"messages": [{"role": "user", "content": "Hi"}, {"from": "gpt"}]},
                           'turn 2 of 2 has no "value"'),
                          ({"messages": [{"role": "user", "content": "Hi"}, {"value": "Hello"}]},
                           'turn 2 of 2 has no "from"')):
        field = next(iter(record))
        with pytest.raises(UserError, match=rf"^x: `{field}` must be a list of turns like .*; {re.escape(which)}$"):
            prepare.record_docs(record, "x")
    with pytest.raises(UserError, match=r'^x: `messages` must be a list of turns like \{"role": "user", "content": '
                                        r'"Hi!"\} or \{"from": "user", "value": "Hi!"\}$'):  # no list: no turn to name
        prepare.record_docs({"messages": "Hi"}, "x")
    # a line holding a conversation's bare list of turns, as some chat exports write: it said only "got list"
    bare = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(UserError, match=r'bare.jsonl line 1: expected an object or a string, got an array; a '
                                        r'conversation\'s turns\? give each as \{"messages": \[\.\.\.\]\}$'):
        prepare.prepare("chat", source=write(tmp_path / "bare.jsonl", json.dumps(bare)), out_dir=out)
    # pandas' DataFrame.to_json() default, one object of columns by row: "`input` must be text, got dict"
    columns = {"instruction": {"0": "Hi", "1": "Bye"}, "input": {"0": "", "1": ""},
               "output": {"0": "Hello", "1": "Bye"}}
    with pytest.raises(UserError, match=r'cols.json: one JSON object of columns \(instruction, input, '
                                        r'output\) by row, as '
                                        r'pandas\' to_json\(\) writes by default: write it with to_json\(PATH, '
                                        r'orient="records", lines=True\) to a \.jsonl file$'):
        prepare.prepare("chat", source=write(tmp_path / "cols.json", json.dumps(columns)), out_dir=out)
    # a JSON array of records written on one line as .jsonl (json.dump(records, f) to a .jsonl name): the hint said
    # these records were a conversation's turns, to be wrapped in {"messages": ...}, which nests them wrongly
    records = [{"messages": bare}, {"instruction": "Hi", "output": "Hello"}]
    with pytest.raises(UserError, match=r'array.jsonl line 1: expected an object or a string, got an array; a list of '
                                        r'records\? give one a line \(JSON Lines\), or the whole array as '
                                        r'a \.json file$'):
        prepare.prepare("chat", source=write(tmp_path / "array.jsonl", json.dumps(records)), out_dir=out)
    # the records wrapped in an object, {"data": [...]}: it named only the fields it lacks, which the records have
    with pytest.raises(UserError, match=r'wrapped.json record 1: no messages, .* or text field; its `data` holds a '
                                        r'list of records: give that list as the file \(a \.json array\), or one '
                                        r'record a line \(JSON Lines\)$'):
        prepare.prepare("chat", source=write(tmp_path / "wrapped.json", json.dumps({"version": 1, "data": records})),
                        out_dir=out)
    # the fields it has, each cut and escaped: a headerless CSV's first row was its fields, its paragraphs in full
    long = "What is the capital of France, the country\nin Western Europe?"
    with pytest.raises(UserError, match=r"headless.jsonl line 1: no messages, .* or text field; it has "
                                        r"`What is the capital of France, the co\.\.\.`, `Paris\\nFrance`$"):
        prepare.prepare("chat", out_dir=out,
                        source=write(tmp_path / "headless.jsonl", json.dumps({long: "x", "Paris\nFrance": "x"})))
    # a list of other objects in it is no list of records: no such hint
    with pytest.raises(UserError, match=r"tagged.json record 1: no messages, .* or text field; it has `tags`$"):
        prepare.prepare("chat", source=write(tmp_path / "tagged.json", json.dumps([{"tags": [{"id": 1}]}])),
                        out_dir=out)
    with pytest.raises(UserError, match=r"odd.jsonl line 1: unknown role 'robot'"):
        prepare.prepare("chat", source=write(tmp_path / "odd.jsonl",
                                             json.dumps({"messages": [{"role": "robot", "content": "x"}]})),
                        out_dir=out)
    # OpenAI's fine-tuning files with function calling: a null content or role "tool" named no way out
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    for turns in ([{"role": "user", "content": "x"}, call], [{"role": "user", "content": "x"},
                  {k: v for k, v in call.items() if k != "content"}], [{"role": "tool", "content": "42"}]):
        with pytest.raises(UserError, match=r"tool.jsonl line 1: a tool call .*leave the conversations with "
                                            r"tool calls out"):
            prepare.prepare("chat", source=write(tmp_path / "tool.jsonl", json.dumps({"messages": turns})), out_dir=out)
    for weight in (0.5, True, "0"):  # OpenAI's fine-tuning files weigh a reply 0 or 1, nothing else
        with pytest.raises(UserError, match=rf"w.jsonl line 1: a message's weight must be 0 \(not trained on\) or 1, "
                                            rf"got {re.escape(repr(weight))}$"):
            prepare.prepare("chat", source=write(tmp_path / "w.jsonl", json.dumps({"messages": [
                {"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": weight}]})),
                out_dir=out)
    # null, as a table export fills in for the messages that have none: trained on, as without a weight
    meta = prepare.prepare("chat", source=write(tmp_path / "w.jsonl", "\n".join(json.dumps({"messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": None}]}) for _ in range(2))),
        out_dir=out, name="w")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 2
    # the record of the other kind is named by its line, and so is the first one (a file of 50,000 lines was named
    # alone)
    with pytest.raises(UserError, match=r"^plain text in \S*mixed.jsonl line 1 and conversations in "
                                        r"\S*mixed.jsonl line 3: "
                                        r"a dataset is one or the other"):
        prepare.prepare("text", source=write(tmp_path / "mixed.jsonl", json.dumps({"text": "a"}) + "\n\n"
                                             + json.dumps({"question": "q", "answer": "a"})), out_dir=out)
    # with --vocab_size, before the vocabulary is trained (it was refused after minutes of training one)
    mixed = [json.dumps({"text": f"a story {i}"}) for i in range(20)] + [json.dumps({"question": "q", "answer": "a"})]
    with pytest.raises(UserError, match=r"mixed2.jsonl line 21: a conversation among plain text \(from \S*mixed2.jsonl "
                                        r"line 1 on\); fix it, or pass --skip_bad_records to leave it out$"):
        prepare.train_vocabulary(prepare.find_source("text", write(tmp_path / "mixed2.jsonl", "\n".join(mixed))), 300,
                                 None, None, 0.0)
    # a folder of chats and a README.txt that sorts first: the README is named, not the chats file as if it held text
    chats = write(tmp_path / "chats" / "chats.jsonl",
                  "\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(9)))
    readme = write(tmp_path / "chats" / "README.txt", "My chats.")
    for vocab_size in (None, 300):
        with pytest.raises(UserError, match=rf"^plain text in {re.escape(readme)} and conversations in "
                                            rf"{re.escape(chats)}: a "
                                            rf"dataset is one or the other; leave one out, or prepare them separately"):
            prepare.prepare("chat", source=str(tmp_path / "chats"), out_dir=out, name="chats", vocab_size=vocab_size)
    with pytest.raises(UserError, match="val_fraction"):
        prepare.prepare("text", source=str(bad), val_fraction=1.0, out_dir=out)
    with pytest.raises(UserError, match=r"--vocab_size 300 trains the dataset's own vocabulary, and "
                                        r"--tokenizer .* gives "
                                        r"one: pass one of them"):  # the tokenizer had been ignored without a word
        prepare.prepare("text", source=str(bad), tokenizer=str(tmp_path / "v.tiktoken"), vocab_size=300, out_dir=out)
    # an empty .json in a folder holds no records, as an empty .jsonl does (it stopped the whole folder)
    write(tmp_path / "folder" / "empty.json", "\n")
    write(tmp_path / "folder" / "empty.jsonl", "")
    write(tmp_path / "folder" / "docs.jsonl", "\n".join(json.dumps({"text": d}) for d in DOCS[:10]))
    assert prepare.prepare("text", source=str(tmp_path / "folder"), out_dir=out,
                           name="f")["splits"]["train"]["documents"] == 9
    # (a null turn is an empty one: test_a_null_text_is_an_empty_one_in_every_chat_format)
    for dialog in (["hi", {"text": "x"}], "Hello there __eou__ Hi", [1, 2]):  # one character a turn, had it been taken
        with pytest.raises(UserError, match=r"dd.jsonl line 1: malformed conversation .*`dialog` must be a list of "
                                            r"strings"):
            prepare.prepare("dailydialog", source=write(tmp_path / "dd.jsonl", json.dumps({"dialog": dialog})),
                            out_dir=out)
    # an Alpaca input or a system message that is no text: one line, not its repr() trained on, nor dropped unsaid
    for record, field in (({"instruction": "Sum", "input": [1, 2], "output": "3"}, "input"),
                          ({"instruction": "Hi", "input": {"a": 1}, "output": "ok"}, "input"),
                          ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                            "system": ["Be brief."]}, "system"), ({"text": 5}, "text")):
        with pytest.raises(UserError, match=rf"typed.jsonl line 1: `{field}` must be text, got "):
            prepare.prepare("text", source=write(tmp_path / "typed.jsonl", json.dumps(record)), out_dir=out,
                            val_fraction=0)
    # a --name that is a path would write outside --out_dir (over another folder's files)
    for name in ("../up", "a/b", "..", "."):
        with pytest.raises(UserError, match=rf"^--name '{re.escape(name)}': use letters, digits, '.', '-' and '_', not "
                                            rf"a path \(it names a folder in {re.escape(out)}\)$"):
            prepare.prepare("text", source=write(tmp_path / "ok.txt", "some text"), out_dir=out, name=name)
    assert not (tmp_path / "up").exists()
    os.makedirs(out, exist_ok=True)
    write(tmp_path / "data" / "afile", "")
    with pytest.raises(UserError, match=r"afile is a file, not a dataset folder: pick another --name"):
        prepare.prepare("text", source=write(tmp_path / "ok.txt", "some text"), out_dir=out, name="afile")
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(UserError, match=f"^no text to train on in --source {empty}: give files that hold text$"):
        prepare.prepare("text", source=empty, out_dir=out, vocab_size=300)
    assert not os.path.exists(os.path.join(out, "text", "train.bin"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_spreadsheet_as_excel_saves_it_becomes_records_by_the_command_named(tmp_path, enc):
    """The command named for a .csv, on the sheet Excel saves: headers "Question", "Answer " (which matched no record
    shape: every row a bad record), a BOM, CRLF rows, a cell with a comma and line breaks, answers of "None" and "42"
    (a null, left out, and a number); saved as "CSV (Comma delimited)", in cp1252 (pandas stopped in a traceback), or
    where the list separator is a semicolon (the rows read as one column "Question;Answer"). Each, run as named, makes
    records prepare.py reads."""
    rows = [("Question", "Answer "), ("Café prices?", "About 3€ – 4€, with milk\nor not."),
            ("Any allergies?", "None"), ("What is 6*7?", "42")]
    want = [{"question": q, "answer": a} for q, a in rows[1:]]
    out = str(tmp_path / "data")
    for name, sep, encoding in (("qa.csv", ",", "utf-8-sig"), ("ansi.csv", ",", "cp1252"),
                                ("semi.csv", ";", "utf-8-sig"), ("qa.tsv", "\t", "utf-8-sig")):
        table = tmp_path / name
        table.write_bytes("".join(sep.join(f'"{c}"' if "," in c or "\n" in c else c for c in row) + "\r\n"
                                  for row in rows).encode(encoding))
        with pytest.raises(UserError, match=rf"{name}: unsupported file type; .* its columns their fields: ") as e:
            prepare.prepare("chat", source=str(table), out_dir=out)
        subprocess.run(" && ".join(str(e.value).split("`")[1::2]), shell=True, check=True)
        assert [json.loads(line) for line in open(f"{table}.jsonl")] == want
        prepare.prepare("chat", source=f"{table}.jsonl", name="qa", out_dir=out, tokenizer="gpt2", force=True)
        meta = json.load(open(tmp_path / "data" / "qa" / "meta.json"))
        assert sum(split["documents"] for split in meta["splits"].values()) == 3


def test_a_spreadsheet_saved_as_text_is_refused_with_the_name_that_reads_it(tmp_path, enc):
    """Excel's "Text (Tab delimited)" is a .txt: its questions and answers were read as one plain-text document, trained
    on as words with no loss mask, said by nothing. Its header names the fields: refused, with the name to give it, and
    so named it is refused with the command that makes its rows records (table_fix). A note whose first line only
    mentions such words is text."""
    table = tmp_path / "qa.txt"
    table.write_text("Question\tAnswer\nWhat is tea?\tA drink.\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(table))}: its first line is a table's header \(question, "
                                        rf"answer\), but a \.txt file is read as plain text \(its rows trained on as "
                                        rf"words\): name it \.tsv, and prepare.py names the command that makes its "
                                        rf"rows records$"):
        prepare.prepare("chat", source=str(table), out_dir=str(tmp_path / "data"), tokenizer="gpt2")
    with pytest.raises(UserError, match=r"name it \.csv"):
        prepare.prepare("text", source=write(tmp_path / "b.txt", '"prompt","completion"\nHi,Hello\n'),
                        out_dir=str(tmp_path / "data"), tokenizer="gpt2")
    # a Markdown note is read as a .txt is, and said to be one: not "a .txt file"
    with pytest.raises(UserError, match=r"but a \.md file is read as plain text \(its rows trained on as words\): "
                                        r"name it \.tsv"):
        prepare.prepare("text", source=write(tmp_path / "qa.md", "Question\tAnswer\nWhat is tea?\tA drink.\n"),
                        out_dir=str(tmp_path / "data"), tokenizer="gpt2")
    prepare.prepare("text", source=write(tmp_path / "c.txt", "Question and answer, a note\nA question, an answer.\n"),
                    out_dir=str(tmp_path / "data"), tokenizer="gpt2", force=True)
    # Excel's "Unicode Text" is UTF-16 and tab-delimited, a .txt: said to be a table first (it was told to convert
    # it, then, converted, to rename it), and so named the commands convert it and write its rows
    unicode_text = tmp_path / "sheet.txt"
    unicode_text.write_bytes("Question\tAnswer\r\nWhat is tea?\tA drink.\r\n".encode("utf-16"))
    with pytest.raises(UserError, match=r"sheet\.txt: its first line is a table's header \(question, answer\), .*"
                                        r"name it \.tsv"):
        prepare.prepare("chat", source=str(unicode_text), out_dir=str(tmp_path / "data"), tokenizer="gpt2")
    tsv = unicode_text.rename(tmp_path / "sheet.tsv")
    with pytest.raises(UserError, match=r"UTF-16") as e:
        prepare.prepare("chat", source=str(tsv), out_dir=str(tmp_path / "data"), tokenizer="gpt2")
    subprocess.run(" && ".join(str(e.value).split("`")[1::2]), shell=True, check=True, cwd=tmp_path)
    assert [json.loads(line) for line in open(f"{tsv}.jsonl")] == [{"question": "What is tea?", "answer": "A drink."}]


def test_a_source_that_is_a_named_pipe_is_refused_at_once(tmp_path):
    """--source of a type prepare.py does not read is refused; its first bytes are looked at for a compressed file's
    (notes.txt.gz) only in a file: a named pipe with no writer (or /dev/stdin at a terminal) waited for one, for ever,
    where the error came at once."""
    import threading
    fifo = str(tmp_path / "notes")
    os.mkfifo(fifo)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(
        UserError, prepare.find_source, "text", fifo).value), daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        open(fifo, "wb").close()  # (a writer: the waiting open ends)
    assert not thread.is_alive() and errors and "notes: unsupported file type; use .txt" in str(errors[0]), errors


def test_an_out_dir_that_is_a_datasets_own_folder_names_its_parent(tmp_path):
    """--out_dir data/notes (a dataset's folder, not the one that holds datasets) built data/notes/NAME, a dataset
    inside the dataset, without a word."""
    out = str(tmp_path / "data")
    src = write(tmp_path / "notes.jsonl", "\n".join(json.dumps({"text": d}) for d in DOCS[:10]) + "\n")
    prepare.prepare("text", source=src, out_dir=out, name="notes")
    before = sorted(os.listdir(os.path.join(out, "notes")))
    for given in (os.path.join(out, "notes"), os.path.join(out, "notes") + os.sep):
        with pytest.raises(UserError, match=rf"^--out_dir {re.escape(given)} is the folder of the dataset "
                                            rf"'notes', not a "
                                            rf"folder of datasets: give the folder that holds it, --out_dir "
                                            rf"{re.escape(out)}$"):
            prepare.prepare("text", source=src, out_dir=given, name="more")
    assert sorted(os.listdir(os.path.join(out, "notes"))) == before


def test_bad_records_are_named_together_or_left_out(tmp_path, capsys):
    """A bad record (malformed JSON, a record of no shape prepare.py reads) stops the run, named as before, with the
    file's other bad records counted and located, read without tokenizing: a file with three bad lines took three runs
    to find them. --skip_bad_records leaves them out, says so, and is kept in meta.json: the same command finds the
    dataset up to date, the command without it stops at the records it left out."""
    out = str(tmp_path / "data")
    lines = [json.dumps({"text": d}) for d in DOCS[:30]]
    for n, line in ((5, '{"text": oops}'), (17, json.dumps({"title": "no text"})),
                    (26, json.dumps({"messages": "hi"}))):
        lines.insert(n - 1, line)
    src = write(tmp_path / "notes.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"^{re.escape(src)} line 5: malformed JSON \(Expecting value, column 10\); 2 "
                                        rf"more bad records in the file: lines 17, 26; fix them, or pass "
                                        rf"--skip_bad_records to leave them out$"):
        prepare.prepare("text", source=src, out_dir=out, name="notes")
    argv = ["--source", src, "--name", "notes", "--out_dir", out, "--skip_bad_records"]
    prepare.main(argv)
    assert f"\n  --skip_bad_records: left out 3 bad records of {src}: lines 5, 17, 26\n" in capsys.readouterr().out
    # the tokens of the good records alone
    meta = prepare.read_meta(os.path.join(out, "notes"))
    good = write(tmp_path / "good" / "notes.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in DOCS[:30]))
    clean = prepare.prepare("text", source=good, out_dir=out, name="clean")
    assert meta["splits"] == clean["splits"]
    for split in ("train", "val"):
        assert np.array_equal(load(os.path.join(out, "notes"), split, meta)[0],
                              load(os.path.join(out, "clean"), split, clean)[0])
    command = prepare.rebuild_command(meta, os.path.join(out, "notes"))
    assert command == shlex.join(["python", "prepare.py", "--dataset", "text", "--source", src, "--name", "notes",
                                  "--out_dir", out, "--skip_bad_records"])
    capsys.readouterr()
    prepare.main(shlex.split(command)[2:])
    assert without_train_line(capsys.readouterr().out) == f"{os.path.join(out, 'notes')} is up to date\n"
    with pytest.raises(UserError, match=r"notes\.jsonl line 5: malformed JSON .*; 2 more bad records in the file"):
        prepare.main(argv[:-1])
    assert prepare.read_meta(os.path.join(out, "notes")) == meta  # kept
    # a parquet file's rows and a .json's records alike; past ten places, "..."
    import pyarrow as pa
    import pyarrow.parquet as pq
    # rows 1, 3... bad: an answer with no question (a null answer is an empty one, left out as "" is)
    rows = [{"question": f"Q{i}?" if i % 2 else None, "answer": f"A{i}."} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "qa.parquet"))
    with pytest.raises(UserError, match=r"qa\.parquet row 1: no messages, .* field; it has `answer` \(`question` "
                                        r"null\); 14 more bad records in the file: "
                                        r"rows 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, \.\.\.; fix them, or pass "):
        prepare.prepare("chat", source=str(tmp_path / "qa.parquet"), out_dir=out, name="qa")
    meta = prepare.prepare("chat", source=str(tmp_path / "qa.parquet"), out_dir=out, name="qa", skip_bad_records=True)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 15
    assert "left out 15 bad records of" in capsys.readouterr().out
    records = [{"text": d} if i not in (1, 4) else {"text": 5} for i, d in enumerate(DOCS[:10])]
    src = write(tmp_path / "r.json", json.dumps(records))
    prepare.prepare("text", source=src, out_dir=out, name="r", skip_bad_records=True)
    assert f"left out 2 bad records of {src}: records 2, 5\n" in capsys.readouterr().out
    # a file of nothing else stops the run all the same (a folder's other files have records): nothing of it to train
    # on; not skippable, its error names no --skip_bad_records
    bad = write(tmp_path / "folder" / "bad.jsonl", '{"title": "a"}\n{"title": "b"}\n')
    write(tmp_path / "folder" / "good.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in DOCS[:10]))
    with pytest.raises(UserError, match=rf"^{re.escape(bad)} line 1: no messages, .* field; it has `title`; 1 more bad "
                                        rf"record in the file: line 2$"):
        prepare.prepare("text", source=str(tmp_path / "folder"), out_dir=out, name="folder")
    with pytest.raises(UserError, match=rf"^{re.escape(bad)} line 1: no messages, .* field; it has `title`; no record "
                                        rf"of {re.escape(bad)} is good \(2 bad\), so --skip_bad_records leaves nothing "
                                        rf"of it to train on: fix it$"):
        prepare.prepare("text", source=str(tmp_path / "folder"), out_dir=out, name="folder", skip_bad_records=True)
    assert not os.path.exists(os.path.join(out, "folder"))
    # a file of another shape altogether is refused at its first ALL_BAD records, not read to its end (minutes for
    # gigabytes) for a count of nothing but bad records
    other = write(tmp_path / "other.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * (prepare.ALL_BAD + 5)
                  + "{oops\n")
    with pytest.raises(UserError, match=rf"^{re.escape(other)} line 1: a preference pair .*; the first "
                                        rf"{prepare.ALL_BAD:,} records of {re.escape(other)} are all bad "
                                        rf"\(not read on\)$"):
        prepare.prepare("text", source=other, out_dir=out, name="other")


@pytest.mark.skipif(not shutil.which("jq"), reason="no jq to run the suggested command")
def test_preference_pairs_are_named_with_a_command_that_keeps_the_chosen_replies(tmp_path):
    """minimind's dpo.jsonl and TRL's preference sets (chosen/rejected) were told "no messages, conversations, ...
    field", the fields they do not have, with no way on. They are named, and the command given writes the chosen
    replies as conversations that prepare.py reads."""
    turns = {"chosen": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！很高兴见到你。"}],
             "rejected": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "不知道"}]}
    texts = {"prompt": "你好", "chosen": "你好！很高兴见到你。", "rejected": "不知道"}
    for record in (turns, texts):
        src = write(tmp_path / "dpo.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
        with pytest.raises(UserError) as e:
            prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), name="dpo")
        said = re.fullmatch(r".* line 1: a preference pair \(chosen/rejected, for DPO or a reward model\), which "
                            r"prepare.py does not read: .*, e\.g\. (jq -c .*) IN\.jsonl > IN\.chosen\.jsonl",
                            str(e.value))
        assert said, str(e.value)
        subprocess.run(f"{said[1]} < {src} > {tmp_path / 'chosen.jsonl'}", shell=True, check=True, timeout=60)
        assert prepare.record_doc(json.loads((tmp_path / "chosen.jsonl").read_text()), "x") == \
            [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！很高兴见到你。"}]
    # Anthropic's HH-RLHF: each reply a transcript of its own, no command writes it as turns
    with pytest.raises(UserError, match=r"a preference pair .* a choice between two$"):
        prepare.record_doc({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi"}, "x")


def test_bad_records_of_the_other_files_are_named_too(tmp_path):
    """A bad record names, with its own file's other bad records, those of the files the run has yet to read, read
    without tokenizing: a folder with three bad files took three runs to learn of them. A few places each, the files
    past OTHER_FILES counted; --skip_bad_records is the way out only where it leaves something of every file. Not with
    --limit, with which the run may never read them."""
    out = str(tmp_path / "data")
    good = [json.dumps({"text": d}) for d in DOCS[:5]]
    folder = tmp_path / "notes"
    first = write(folder / "a.jsonl", "\n".join(good[:2] + ["{oops"] + good[2:]) + "\n")
    write(folder / "b.jsonl", "\n".join(good) + "\n")
    c = write(folder / "c.jsonl", "\n".join(good[:1] + ['{"title": "x"}'] * 5 + good[1:]) + "\n")
    d = write(folder / "d.json", json.dumps([{"text": 5}] + [{"text": d} for d in DOCS[:3]] + [[1]]))
    start = rf"^{re.escape(first)} line 3: malformed JSON \(Expecting property name enclosed in double quotes, " \
            rf"column 2\)"
    with pytest.raises(UserError, match=rf"{start}; bad records in 2 other files too: {re.escape(c)} \(5 bad: lines 2, "
                                        rf"3, 4, \.\.\.\), {re.escape(d)} \(2 bad: records 1, 5\); fix them, or pass "
                                        rf"--skip_bad_records to leave them out$"):
        prepare.prepare("text", source=str(folder), out_dir=out, name="notes")
    # with --limit the others are not read: the error is the first file's alone
    with pytest.raises(UserError, match=rf"{start}; fix it, or pass --skip_bad_records to leave it out$"):
        prepare.prepare("text", source=str(folder), out_dir=out, name="notes", limit=4)
    # a file with no good record: --skip_bad_records would stop at it, so it is no way out
    e = write(folder / "e.jsonl", '{"title": "x"}\n' * 2)
    with pytest.raises(UserError, match=rf"{re.escape(d)} \(2 bad: records 1, 5\), {re.escape(e)} \(all 2 bad: lines "
                                        rf"1, 2\)$"):
        prepare.prepare("text", source=str(folder), out_dir=out, name="notes")
    # past OTHER_FILES files, the rest are counted
    for name in ("f", "g"):
        write(folder / f"{name}.jsonl", "\n".join(good + ["{"]))
    with pytest.raises(UserError, match=rf"; bad records in 5 other files too: {re.escape(c)} .*, {re.escape(e)} \(all "
                                        rf"2 bad: lines 1, 2\), and 2 more$"):
        prepare.prepare("text", source=str(folder), out_dir=out, name="notes")
    assert not os.path.exists(os.path.join(out, "notes"))
    # read before the bad one, a file is good, but a source's own validation file, which the vocabulary's pass leaves
    # unread
    error = prepare.BadRecords(c, "c's", 5, True)
    streams = [("train", first, None), ("val", e, None), ("train", c, None), ("val", d, None)]
    assert str(prepare.with_other_files(error, {"streams": streams})) == (
        f"c's; bad records in 2 other files too: {e} (all 2 bad: lines 1, 2), {d} (2 bad: records 1, 5)")


def test_another_file_of_the_other_kind_is_named_as_such(tmp_path):
    """Beside a bad record, another file of the other kind than the dataset's (conversations among plain text) is named
    as such, the run stopping at it --skip_bad_records or not (a dataset is one or the other): judged by its own first
    record, a file wholly of conversations was not named at all, and one with a stray text record was '1 bad'."""
    good = [json.dumps({"text": d}) for d in DOCS[:5]]
    chats = [json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) for i in range(4)]
    folder = tmp_path / "notes"
    first = write(folder / "a.jsonl", "\n".join(good[:2] + ["{oops"] + good[2:]) + "\n")
    b = write(folder / "b.jsonl", "\n".join(chats) + "\n")
    c = write(folder / "c.jsonl", "\n".join(chats[:2] + good[:1] + chats[2:]) + "\n")
    d = write(folder / "d.jsonl", "\n".join(good[:2] + ['{"title": "x"}']) + "\n")
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(folder), out_dir=str(tmp_path / "data"), name="notes")
    assert str(e.value) == (
        f"{first} line 3: malformed JSON (Expecting property name enclosed in double quotes, column 2); "
        f"bad records in 1 "
        f"other file too: {d} (1 bad: line 3); conversations in 2 other files where {first} holds plain text, a "
        f"dataset being one or the other: {b}, {c} (leave them out, or prepare them separately with --name)")
    # a file of the dataset's kind with a stray record of the other is one bad record of its own, as before
    os.remove(b)
    write(folder / "c.jsonl", "\n".join(good[:2] + chats[:1] + good[2:]) + "\n")
    with pytest.raises(UserError, match=rf"; bad records in 2 other files too: {re.escape(c)} \(1 bad: line 3\), "
                                        rf"{re.escape(d)} \(1 bad: line 3\); fix them, or pass --skip_bad_records"):
        prepare.prepare("text", source=str(folder), out_dir=str(tmp_path / "data"), name="notes")


def test_the_other_files_read_for_bad_records_are_bounded(tmp_path, monkeypatch):
    """The other files an error reads for their bad records stop at OTHER_FILES_BYTES, the rest counted, not read: a
    folder of 50 GB kept the error waiting, unsaid, for minutes."""
    good = [json.dumps({"text": d}) for d in DOCS[:5]]
    files = [write(tmp_path / f"{name}.jsonl", "\n".join(good + ["{oops"]) + "\n") for name in "abcd"]
    monkeypatch.setattr(prepare, "OTHER_FILES_BYTES", os.path.getsize(files[1]) + 1)  # b's alone
    streams = [("train", f, None) for f in files]
    error = prepare.BadRecords(files[0], "a's", 1, True)
    said = str(prepare.with_other_files(error, {"streams": streams}))
    assert said == (f"a's; bad records in 1 other file too: {files[1]} (1 bad: line 6); 2 other files not read for "
                    f"them (past 0 MB); fix them, or pass --skip_bad_records to leave them out")
    monkeypatch.setattr(prepare, "OTHER_FILES_BYTES", 1)  # none
    assert str(prepare.with_other_files(error, {"streams": streams})) == (
        "a's; 3 other files not read for them (past 0 MB); fix it, or pass --skip_bad_records to leave it out")


def test_another_file_of_another_shape_altogether_is_named_unread_to_its_end(tmp_path):
    """Another file none of whose first ALL_BAD records is good (an export of another shape) is named with those, not
    read on (minutes for gigabytes), as its own error would be; and --skip_bad_records, which would stop at it, is not
    offered as the way out."""
    good = [json.dumps({"text": d}) for d in DOCS[:5]]
    folder = tmp_path / "notes"
    first = write(folder / "a.jsonl", "\n".join(good[:2] + ["{oops"] + good[2:]) + "\n")
    other = write(folder / "b.jsonl", '{"prompt": "p", "chosen": "c", '
                                      '"rejected": "r"}\n' * (prepare.ALL_BAD + 500) + good[0])
    with pytest.raises(UserError) as e:
        prepare.prepare("text", source=str(folder), out_dir=str(tmp_path / "data"), name="notes")
    assert str(e.value).startswith(f"{first} line 3: malformed JSON")
    assert str(e.value).endswith(f"; bad records in 1 other file too: {other} (its first {prepare.ALL_BAD:,} all bad: "
                                 f"lines 1, 2, 3, ...)")


def test_a_record_of_the_other_kind_is_a_bad_record(tmp_path, capsys):
    """A plain-text record in a file whose first records are conversations (or the reverse) is a bad record: counted
    and located with the others, and left out by --skip_bad_records; it stopped every run, named alone, even with
    --skip_bad_records. A file with no more of its first records' kind than of the other is refused as before: leaving
    out the rest would keep the odd first ones alone."""
    out = str(tmp_path / "data")
    chats = [json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) for i in range(10)]
    for n in (4, 9):
        chats.insert(n - 1, json.dumps({"text": "a note"}))
    src = write(tmp_path / "qa.jsonl", "\n".join(chats) + "\n")
    with pytest.raises(UserError, match=rf"^{re.escape(src)} line 4: plain text among conversations \(from "
                                        rf"{re.escape(src)} line 1 on\); 1 more bad record in the file: "
                                        rf"line 9; fix them, "
                                        rf"or pass --skip_bad_records to leave them out$"):
        prepare.prepare("chat", source=src, out_dir=out, name="qa")
    prepare.main(["--dataset", "chat", "--source", src, "--name", "qa", "--out_dir", out, "--skip_bad_records"])
    assert f"\n  --skip_bad_records: left out 2 bad records of {src}: lines 4, 9\n" in capsys.readouterr().out
    meta = prepare.read_meta(os.path.join(out, "qa"))
    assert meta["kind"] == "chat" and meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10
    # the first record the odd one: not left to stand alone, skipped or not
    odd = write(tmp_path / "odd.jsonl", "\n".join(chats[:1] + [json.dumps({"text": d}) for d in DOCS[:3]]))
    for skip in (False, True):
        with pytest.raises(UserError, match=rf"^conversations in {re.escape(odd)} line 1 and plain text in "
                                            rf"{re.escape(odd)} line 2: a dataset is one or the other"):
            prepare.prepare("text", source=odd, out_dir=out, name="odd", skip_bad_records=skip)


def test_records_with_nothing_to_train_on_are_said_in_the_summary(tmp_path, capsys):
    """Records with nothing to train on (no reply, an empty or null one, a TRL completion [], empty text) are left out,
    and the summary says how many and where, per file: 300 records gave "291 documents" and no reason. A seed task's
    empty instances are one record; a file with none says nothing."""
    out = str(tmp_path / "data")
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(12)]
    rows[2]["answer"], rows[6]["answer"] = "", None
    rows[9] = {"prompt": [{"role": "user", "content": "hi"}], "completion": []}
    rows[4] = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Q4?"}]}  # no reply
    rows[10] = {"instruction": "Say it.", "instances": [{"input": "a", "output": ""}, {"input": "b", "output": " "}]}
    src = write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    whole = write(tmp_path / "whole.jsonl", "\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    prepare.main(["--dataset", "chat", "--source", src, whole, "--name", "qa", "--out_dir", out])
    said = capsys.readouterr().out
    assert f"\n  left out 5 records of {src} with nothing to train on (no reply, an empty or null one, or empty " \
           f"text): lines 3, 5, 7, 10, 11\n" in said, said
    assert said.count("nothing to train on") == 1  # (whole.jsonl's records all trained)
    meta = prepare.read_meta(os.path.join(out, "qa"))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 12 - 5 + 2
    # past PLACES, counted; text records too
    texts = write(tmp_path / "t.jsonl", "\n".join(json.dumps({"text": "" if i % 2 else DOCS[i % len(DOCS)]})
                                                  for i in range(30)) + "\n")
    prepare.main(["--source", texts, "--name", "t", "--out_dir", out])
    assert f"  left out 15 records of {texts} with nothing to train on (no reply, an empty or null one, or empty " \
           f"text): lines 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, ...\n" in capsys.readouterr().out
    # a seed task of empty instances past PLACES is one record too
    more = write(tmp_path / "more.jsonl", "\n".join(json.dumps(r) for r in rows + [rows[2]] * 8 + [rows[10]]) + "\n")
    prepare.main(["--dataset", "chat", "--source", more, "--name", "more", "--out_dir", out])
    assert f"  left out 14 records of {more} with nothing to train on" in capsys.readouterr().out


def test_a_null_text_is_an_empty_one_in_every_chat_format(tmp_path, capsys):
    """A null text is an empty one in every format, as Alpaca's null output is: a turn's null content or value (a
    ShareGPT scrape's failed reply) was a bad record, stopping the run, and skipped with --skip_bad_records its
    conversation's other replies went with it. An empty reply is out of the loss; a record with no other is left out,
    said in the summary with the Alpaca records of null output, by line."""
    def sharegpt(*values):
        return {"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]}

    def messages(*values):
        return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": v}
                             for i, v in enumerate(values)]}
    for turns in (sharegpt, messages, lambda *values: {"dialog": list(values)}):
        for values in (("Q", None), ("Q", None, None, "A"), (None, "A", "Q2", None)):
            blank = turns(*(v or "" for v in values))
            assert prepare.record_doc(turns(*values), "x") == prepare.record_doc(blank, "x")
        assert prepare.record_doc(turns("Q", None), "x") is None
    assert prepare.record_doc(sharegpt("Q", None, None, "A"), "x") == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "weight": 0},
        {"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]
    completion = {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": None}]}
    assert prepare.record_doc(completion, "x") is None
    # a file of both formats: the records whose only reply is null left out alike, said by line; the others kept
    rows = [sharegpt(f"Q{i}", f"A{i}") if i % 2 else {"instruction": f"Q{i}", "output": f"A{i}"} for i in range(12)]
    rows[2]["output"], rows[3] = None, sharegpt("Q3", None)
    rows[5] = sharegpt("Q5", None, None, "A5")
    src = write(tmp_path / "mixed.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    out = str(tmp_path / "data")
    prepare.main(["--dataset", "chat", "--source", src, "--name", "mixed", "--out_dir", out])
    said = capsys.readouterr().out
    assert f"\n  left out 2 records of {src} with nothing to train on (no reply, an empty or null one, or empty " \
           f"text): lines 3, 4\n" in said, said
    meta = prepare.read_meta(os.path.join(out, "mixed"))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10


def test_bad_records_are_counted_in_little_memory(tmp_path, capsys):
    """A file's bad records are read to its end to be counted (and, skipped, on every pass over it): one kept for each
    held a string, gigabytes for a file of millions (an export of another shape, a scrape). The first are located,
    the rest counted."""
    import tracemalloc
    src = write(tmp_path / "many.jsonl", json.dumps({"text": "the one good record"}) + "\n" +
                '{"title": "no text"}\n' * 10_000)
    peaks = []
    for left in (None, prepare.LeftOut(skip_bad=True)):
        tracemalloc.start()
        try:
            if left is None:
                with pytest.raises(UserError, match=r"many\.jsonl line 2: no messages, .*; 9,999 more bad records in "
                                                    r"the file: lines 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, \.\.\.; fix"):
                    list(prepare.file_docs(src, "text"))
            else:
                assert len(list(prepare.file_docs(src, "text", left))) == 1
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    # ~55 KB read whole (Python 3.11); a string kept for each record: 1.7 MB, an int 0.36 MB. 10,000 records, not more:
    # tracemalloc makes reading them 6x slower
    assert max(peaks) < 3e5, peaks
    prepare.main(["--source", src, "--out_dir", str(tmp_path / "data"), "--skip_bad_records"])
    assert (f"  --skip_bad_records: left out 10,000 bad records of {src}: lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ...\n"
            in capsys.readouterr().out)


def test_json_lines_named_json_and_an_array_named_jsonl_name_the_rename(tmp_path):
    """datasets' to_json() writes one record per line whatever the file is called, so a user's export is often a .json
    of JSON Lines; a pretty-printed array named .jsonl is the other way round. Both said only "malformed JSON (Extra
    data)" or "(Expecting value)", which sent the user looking for a broken record; now the rename is named."""
    out = str(tmp_path / "data")
    lines = write(tmp_path / "export.json", '{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match=r"export\.json line 2: .*one record per line.*name it \.jsonl"):
        prepare.prepare("text", source=lines, out_dir=out, name="x")
    array = write(tmp_path / "pretty.jsonl", '[\n  {"text": "a"},\n  {"text": "b"}\n]\n')
    with pytest.raises(UserError, match=r"pretty\.jsonl line 1: .*one JSON array.*name it \.json"):
        prepare.prepare("text", source=array, out_dir=out, name="x")
    # a "[" further down a .jsonl is a broken record, no array; a .json broken at its start has no first record
    with pytest.raises(UserError, match=r"late\.jsonl line 2: malformed JSON \(Expecting value, column 2\); fix it, or "
                                        r"pass --skip_bad_records to leave it out$"):
        prepare.prepare("text", source=write(tmp_path / "late.jsonl", '{"text": "a"}\n[\n'), out_dir=out, name="x")
    with pytest.raises(UserError, match=r"start\.json line 1: malformed JSON \(Expecting value, column 1\)$"):
        prepare.prepare("text", source=write(tmp_path / "start.json", 'text: a\n'), out_dir=out, name="x")
    # a broken record in a real .json still says where, and nothing about renaming
    with pytest.raises(UserError, match=r"broken\.json line 2: malformed JSON \(Extra data, column 17\)$"):
        prepare.prepare("text", source=write(tmp_path / "broken.json", '[{"text": "a"}\n, {"text": "b"}]]\n'),
                        out_dir=out)


def test_a_json_file_too_large_for_memory_names_json_lines(tmp_path, monkeypatch):
    """A .json file is parsed whole, its Python objects about 4 times its size: out of memory (a ulimit, a small
    machine) it ended in json's MemoryError traceback; now the line names the form read a line at a time."""
    def fail(text, where):
        raise MemoryError
    monkeypatch.setattr(prepare, "json_loads", fail)
    big = write(tmp_path / "big.json", '[{"text": "a"}]\n')
    with pytest.raises(UserError, match=r"big\.json: a \.json file is read whole, and this one \(16 bytes\) does not "
                                        r"fit in memory: write it as JSON Lines, a record a line, in a \.jsonl file"):
        prepare.prepare("text", source=big, out_dir=str(tmp_path / "data"), name="x")


def test_chat_records_in_a_txt_file_name_the_rename(tmp_path):
    """A chat log of JSON Lines saved as .txt was read as plain text, under --dataset chat too: one document of raw
    JSON, trained on as words with no loss mask, and only "1 document" said so. Plain text that starts with other
    JSON, or with a brace, is still text."""
    out = str(tmp_path / "data")
    chat = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n' * 20
    for dataset in ("chat", "text"):
        with pytest.raises(UserError, match=r"chats\.txt: its first line is a JSON record \(of `messages`\), but a "
                                            r"\.txt file is read as plain text \(its JSON trained on as words\): name "
                                            r"it \.jsonl$"):
            prepare.prepare(dataset, source=write(tmp_path / "chats.txt", "\n" + chat), out_dir=out, name="c")
    assert not os.path.exists(os.path.join(out, "c"))
    # a DailyDialog-style record too, which record_doc reads as a conversation
    with pytest.raises(UserError, match=r"dialog\.txt: its first line is a JSON record \(of `dialog`\)"):
        prepare.prepare("chat", source=write(tmp_path / "dialog.txt", '{"dialog": ["Hi", "Hello"]}\n' * 20),
                        out_dir=out, name="c")
    # and a text record, and a conversation's bare list of turns: JSON Lines all the same
    with pytest.raises(UserError, match=r"texts\.txt: its first line is a JSON record \(of `text`\)"):
        prepare.prepare("text", source=write(tmp_path / "texts.txt", '{"text": "Once upon a time."}\n' * 20),
                        out_dir=out, name="c")
    with pytest.raises(UserError, match=r"turns\.txt: its first line is a JSON record \(turns\)"):
        prepare.prepare("chat", source=write(tmp_path / "turns.txt", '[{"role": "user", "content": "Hi"}]\n' * 20),
                        out_dir=out, name="c")
    meta = prepare.prepare("chat", source=write(tmp_path / "chats.jsonl", chat), out_dir=out, name="c")
    assert meta["has_mask"]
    for i, text in enumerate(('{"level": "info", "msg": "started"}\nand then some words\n', "{braces} and words\n",
                              "[1, 2, 3] and words\n", "[]\n{}\nwords\n", "[" * 5000 + " nested past json's reach\n")):
        meta = prepare.prepare("text", source=write(tmp_path / f"log{i}.txt", text * 20), out_dir=out, name=f"log{i}")
        assert meta["kind"] == "text"


def test_plain_text_given_to_a_conversation_set_is_refused(tmp_path, monkeypatch):
    """--dataset chat (dailydialog, knowledge) of plain text made a plain-text dataset without a word: no loss mask,
    every token trained on, where --mix refuses it. Refused before anything is tokenized, naming what a conversation
    set reads and where plain text goes; a mix's plain-text part is said as such, not as a --pack it was not given."""
    out = str(tmp_path / "data")
    src = write(tmp_path / "plain.txt", "<|endoftext|>".join(f"story {i} of a cat on a mat." for i in range(20)))
    texts = write(tmp_path / "texts.jsonl", "\n".join(json.dumps({"text": f"story {i}"}) for i in range(20)))
    for dataset, path in (("chat", src), ("knowledge", texts)):
        with pytest.raises(UserError, match=rf"^{re.escape(path)} begins with plain text, but --dataset {dataset} is a "
                                            r"conversation set: give records of `messages` \[\{role, content\}\] "
                                            r"\(\.jsonl; README's prepare\.py section lists the other "
                                            r"shapes\), or make "
                                            r"plain text a dataset with --dataset text$"):
            prepare.main(["--dataset", dataset, "--source", path, "--name", "c", "--out_dir", out, "--pack", "64"])
    assert not os.path.exists(os.path.join(out, "c"))
    assert prepare.prepare("text", source=src, out_dir=out, name="t")["kind"] == "text"
    # a mix's part of plain text (a mirror's file of text records): its own words, not --pack's
    write(tmp_path / "mirror" / "gsm8k" / "train.jsonl", (tmp_path / "texts.jsonl").read_text())
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(UserError, match=r"train\.jsonl begins with plain text, but --mix takes "
                                        r"conversation sets: leave "
                                        r"knowledge out$"):
        prepare.main(["--mix", "knowledge:1,chitchat:1", "--name", "m", "--out_dir", out])


def test_utf16_text_is_refused_naming_its_conversion(tmp_path):
    """Windows' "Unicode" text is UTF-16. Without a byte-order mark its ASCII letters are valid UTF-8 with a NUL after
    each, and the dataset trained on "O\\0n\\0c\\0e\\0"; with one, the error said to convert it from latin1, which does
    the same. Both name the conversion that works, and no dataset is written."""
    out = str(tmp_path / "data")
    text = "Once upon a time.\nThe end.\n"
    for name, data, fix in (("bom.txt", text.encode("utf-16"), "iconv -f utf-16 -t utf-8"),
                            ("bom-be.txt", b"\xfe\xff" + text.encode("utf-16-be"), "iconv -f utf-16 -t utf-8"),
                            ("nobom.txt", text.encode("utf-16-le"), "iconv -f utf-16le -t utf-8"),
                            # big-endian: the NUL comes before each letter (utf-16le made it other characters)
                            ("nobom-be.txt", text.encode("utf-16-be"), "iconv -f utf-16be -t utf-8")):
        src = tmp_path / name
        src.write_bytes(data)
        with pytest.raises(UserError, match=rf"^{re.escape(str(src))} .*UTF-16.*`{fix} < "):
            prepare.prepare("text", source=str(src), out_dir=out, name="u")
        assert not os.path.exists(os.path.join(out, "u"))
        with pytest.raises(UserError, match=rf"`{fix} < "):  # a vocabulary trained on it too
            train_tokenizer([str(src)], 300, str(tmp_path / "v.tiktoken"))
    # a stray NUL in text is no UTF-16: trained on as any other character (a corpus is not refused for one)
    stray = "Once\0 upon a time." + EOT + "The end."
    meta = prepare.prepare("text", source=write(tmp_path / "stray.txt", stray), out_dir=out, name="s", val_fraction=0.5)
    enc = get_tokenizer("gpt2")
    assert EOT.join(enc.decode(load(tmp_path / "data" / "s", split, meta)[0].tolist()).removesuffix(EOT)
                    for split in ("train", "val")) == stray
    # JSON records: said as "malformed JSON" at column 2 of what an editor shows as good JSON
    for name, data in (("rows.jsonl", '{"text": "a"}\n{"text": "b"}\n'), ("rows.json", '[{"text": "a"}]')):
        for order in ("le", "be"):
            (tmp_path / name).write_bytes(data.encode(f"utf-16-{order}"))
            src, (stem, ext) = str(tmp_path / name), os.path.splitext(tmp_path / name)
            with pytest.raises(UserError, match=rf"{name} holds NUL bytes.*`iconv -f utf-16{order} -t utf-8 < .*; "
                                                rf"stray ones: remove them, e.g. `tr -d '\\000' < {re.escape(src)} > "
                                                rf"{re.escape(f'{stem}.utf8{ext}')}`$"):
                prepare.prepare("text", source=str(tmp_path / name), out_dir=out, name="u")


def test_unusable_out_dir_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    src = write(tmp_path / "c.txt", EOT.join(DOCS))
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("prepare() ran"))
    cases = [(src, f"--out_dir {src}: a part of the path is a file, not a folder"),
             (os.path.join(src, "data"), f"--out_dir {src}/data: a part of the path is a file, not a folder")]
    if os.path.isdir("/proc/self"):  # Linux: no folder can be made in /proc
        cases.append(("/proc/nope", "--out_dir /proc/nope: cannot write there (No such file or directory): "
                                    "choose another path"))
    for out_dir, line in cases:
        argv = ["--dataset", "text", "--source", src, "--out_dir", out_dir]
        assert run_cli(prepare.main, argv, capsys) == (1, "", f"error: {line}\n")
    # a new --out_dir, made to be checked, is not left behind empty by an argument refused after the check
    monkeypatch.undo()
    argv = ["--dataset", "text", "--source", src, "--out_dir", str(tmp_path / "new" / "data"), "--name", "bad name"]
    assert run_cli(prepare.main, argv, capsys)[2].startswith("error: --name 'bad name': use letters")
    assert not (tmp_path / "new").exists()



def test_a_failed_prepare_called_from_python_leaves_no_folder_it_made(tmp_path, capsys):
    """prepare.main([...]) or prepare.prepare() from a notebook, which no run_main wraps, left an empty data/ (or
    --out_dir's folders) behind when it failed: a later `ls` showed it as if something was made. The command line
    took them back already; folders that were there, and a dataset made before, stay."""
    bad = tmp_path / "bin.txt"
    bad.write_bytes(bytes(range(256)) * 4)  # NULs: no text
    out = tmp_path / "new" / "data"
    calls = [lambda: prepare.main(["--dataset", "text", "--source", str(tmp_path / "nope"), "--out_dir", str(out)]),
             lambda: prepare.main(["--source", str(bad), "--out_dir", str(out)]),
             lambda: prepare.prepare("text", source=str(bad), out_dir=str(out)),
             lambda: prepare.prepare("text", source=str(bad), out_dir=str(out), vocab_size=300)]
    for call in calls:
        with pytest.raises(UserError):
            call()
        assert not (tmp_path / "new").exists()
    argv = ["--source", str(bad), "--out_dir", str(out)]
    assert run_cli(prepare.main, argv, capsys)[0] == 1 and not (tmp_path / "new").exists()
    # an --out_dir that was there stays, empty or holding a dataset of the same name, which is not touched
    out.mkdir(parents=True)
    with pytest.raises(UserError):
        prepare.main(argv)
    assert os.listdir(out) == []
    good = write(tmp_path / "c.txt", EOT.join(DOCS))
    prepare.main(["--source", good, "--out_dir", str(out)])
    before = snapshot(out / "text")
    with pytest.raises(UserError):
        prepare.main(argv + ["--force"])
    assert snapshot(out / "text") == before and os.listdir(out) == ["text"]

def built_notes(tmp_path, capsys):
    """A dataset built by prepare.main in tmp_path/data/notes: (its argv, its folder, snapshot of its files)."""
    src, out = write(tmp_path / "c.txt", EOT.join(DOCS)), str(tmp_path / "data")
    argv = ["--source", src, "--out_dir", out, "--name", "notes"]
    assert run_cli(prepare.main, argv, capsys)[0] == 0
    folder = os.path.join(out, "notes")
    return argv, folder, snapshot(folder)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["disk full", "quota exceeded"])
def test_a_full_disk_names_the_dataset_folder_and_keeps_the_old_dataset(tmp_path, capsys, monkeypatch, code):
    # a write() that finds the disk full raises an OSError naming no file: "No space left on device: free some
    # space or write elsewhere" left the user to guess which disk (or, past a user's quota, which of its file systems)
    argv, folder, before = built_notes(tmp_path, capsys)

    def full(self):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(prepare.Split, "sync", full)
    line = f"error: {os.strerror(code)}: {folder}: free some space or write elsewhere\n"
    assert run_cli(prepare.main, argv + ["--force"], capsys) == (1, "", line)
    assert snapshot(folder) == before


def test_a_build_that_will_not_fit_on_the_disk_stops_at_its_first_hundredth(tmp_path, capsys, monkeypatch):
    """Token files that will not fit in the space left are refused once 1% of the input is read, by what that made: a
    disk that filled stopped a 3 GB folder's build after minutes of work. The old dataset stays."""
    argv, folder, before = built_notes(tmp_path, capsys)
    monkeypatch.setattr(prepare, "BATCH_DOCS", 1)  # a batch a document: the first hundredth is a few of them
    free = os.path.getsize(os.path.join(folder, "train.bin")) // 2
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 12, 10 ** 12 - free, free))
    code, out, err = run_cli(prepare.main, argv + ["--force"], capsys)
    assert code == 1 and err.startswith(f"error: {folder}: this dataset's token files will take about ")
    assert err.endswith(" is free there: free some space or write elsewhere (--out_dir)\n")
    assert snapshot(folder) == before


def test_other_os_errors_keep_their_own_words(tmp_path, capsys, monkeypatch):
    # only a full disk's error is given the folder: one without an errno (a library's OSError("...")) had its text
    # replaced by "[Errno None] None: data/notes", and a read error of a source named the folder, not the source
    argv, folder, before = built_notes(tmp_path, capsys)
    for error, said in ((OSError("the storage driver went away"), "the storage driver went away"),
                        (OSError(errno.EIO, os.strerror(errno.EIO)), f"[Errno {errno.EIO}] {os.strerror(errno.EIO)}")):
        def fail(self, error=error):
            raise error
        monkeypatch.setattr(prepare.Split, "sync", fail)
        with pytest.raises(OSError) as e:
            prepare.main(argv + ["--force"])
        assert str(e.value) == said and e.value.filename is None
        assert snapshot(folder) == before


def read_only(monkeypatch, folder):
    """folder and all in it as a read-only mount (or chmod -R a-w) would be, for root too, whom permissions do not stop:
    a file opened there to be written fails with EACCES (check_output's probe, the token files, meta.json alike)."""
    def opener(path, mode="r", *args, **kwargs):
        if set(mode) & set("wax+") and os.path.abspath(path).startswith(os.path.join(folder, "")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return open(path, mode, *args, **kwargs)
    for module in (common, prepare):
        monkeypatch.setattr(module, "open", opener, raising=False)


def test_a_dataset_up_to_date_in_a_read_only_folder_is_said_to_be(tmp_path, monkeypatch, capsys):
    # a shared copy of data/, read-only: nothing needs writing, and the check that --out_dir takes files refused it
    argv, folder, before = built_notes(tmp_path, capsys)
    read_only(monkeypatch, str(tmp_path / "data"))
    code, out, err = run_cli(prepare.main, argv, capsys)
    assert (code, without_train_line(out), err) == (0, f"{folder} is up to date\n", "")
    # a build that must write says so in one line naming the folder, before a vocabulary is trained or a token
    # written (the temporary files' "Permission denied: data/notes/train.bin.unpacked.4242.tmp" came after reading)
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda *a: pytest.fail("a vocabulary was trained"))
    monkeypatch.setattr(prepare, "write_splits", lambda *a: pytest.fail("the data was tokenized"))
    line = "cannot write there (Permission denied): check its permissions, or use another path"
    for more in (["--force"], ["--limit", "5"], ["--vocab_size", "300"]):
        assert run_cli(prepare.main, argv + more, capsys) == (1, "", f"error: the dataset folder {folder}: {line}\n")
    assert snapshot(folder) == before


def test_ctrl_c_as_the_folder_is_checked_leaves_no_probe_in_the_dataset(tmp_path, monkeypatch):
    # the check that the dataset's folder takes files makes a file there and removes it: a Ctrl-C in between waits for
    # the removal (it left the probe in the dataset, until a run 10 minutes later found it stale)
    src, out = write(tmp_path / "c.txt", EOT.join(DOCS)), str(tmp_path / "data")
    prepare.prepare("text", source=src, out_dir=out)

    def opener(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if ".write-probe" in str(path):  # made: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)
        return f
    monkeypatch.setattr(common, "open", opener, raising=False)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=src, out_dir=out, force=True)
    assert not [f for f in os.listdir(os.path.join(out, "text")) if f.startswith(".write-probe")]


def test_data_dir_is_out_dir(tmp_path, monkeypatch):
    # the folder train.py and eval.py read datasets from is their --data_dir: prepare.py takes that name too
    # (--data_dir here was 'unrecognized arguments')
    src, folder, seen = write(tmp_path / "c.txt", EOT.join(DOCS)), str(tmp_path / "datasets"), []
    meta = {"name": "text", "splits": {"train": {"tokens": 1000}, "val": {"tokens": 1000}}}  # (prepare()'s meta.json)
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: seen.append(k["out_dir"]) or meta)
    for option in ("--data_dir", "--out_dir"):
        prepare.main(["--dataset", "text", "--source", src, option, folder])
    assert seen == [folder, folder]


def test_uint32_for_large_vocabularies(tmp_path, capsys):
    # 256 bytes + 65,281 two-byte tokens: the special tokens land above 65535
    ranks = [bytes([i]) for i in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)][:65281]
    path = write(tmp_path / "big.tiktoken",
                 "".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    meta = prepare.prepare("text", source=write(tmp_path / "c.txt", EOT.join(DOCS[:10])), tokenizer=path,
                           out_dir=str(tmp_path / "data"))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 65540
    big = get_tokenizer(path)
    train, _ = load(tmp_path / "data" / "text", "train", meta)
    assert train[-1] == big.eot_token > 65535
    assert big.decode(train.tolist()) == "".join(d + EOT for d in DOCS[:9])
    # a dataset this code reads: made again, it is up to date (not made anew each time, nor refused by train.py)
    prepare.prepare("text", source=str(tmp_path / "c.txt"), tokenizer=path, out_dir=str(tmp_path / "data"))
    assert "up to date" in capsys.readouterr().out


def test_custom_tokenizer(tmp_path):
    corpus = write(tmp_path / "corpus.txt", EOT.join(DOCS * 3))
    vocab = str(tmp_path / "tok" / "tiny.tiktoken")
    tiny = train_tokenizer([corpus], 300, vocab)
    meta = prepare.prepare("text", source=corpus, tokenizer=vocab, out_dir=str(tmp_path / "data"), name="tiny")
    assert meta["tokenizer"] == os.path.abspath(vocab) and meta["tokenizer_hash"] == tokenizer_hash(tiny)
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["tokenizer_name"] == tiny.name
    train, _ = load(tmp_path / "data" / "tiny", "train", meta)
    assert train.max() < 300
    assert tiny.decode(train.tolist()).startswith(DOCS[0] + EOT + DOCS[1] + EOT)


def test_vocabulary_trained_on_the_data(tmp_path, monkeypatch, capsys):
    corpus = write(tmp_path / "corpus.txt", EOT.join(DOCS * 3))
    out, folder = str(tmp_path / "data"), tmp_path / "data" / "text"
    meta = prepare.prepare("text", source=corpus, out_dir=out, vocab_size=300)
    vocab = folder / "tokenizer.tiktoken"
    assert meta["tokenizer"] == str(vocab) and meta["vocab_size"] == 300
    enc = get_tokenizer(str(vocab))
    assert meta["tokenizer_hash"] == tokenizer_hash(enc)
    train, _ = load(folder, "train", meta)
    assert train.max() < 300 and enc.decode(train.tolist()).startswith(DOCS[0] + EOT)
    # learned on this text: fewer tokens than bytes
    assert meta["splits"]["train"]["tokens"] < meta["splits"]["train"]["bytes"] / 2
    capsys.readouterr()
    prepare.prepare("text", source=corpus, out_dir=out, vocab_size=300)
    assert "up to date" in capsys.readouterr().out

    # a damaged vocabulary is the dataset's own: retrained, not an error telling to pass another --tokenizer
    vocab.write_bytes(b"\x00\xff binary junk")
    assert prepare.prepare("text", source=corpus, out_dir=out, vocab_size=300)["tokenizer_hash"] == \
        meta["tokenizer_hash"]
    assert tokenizer_hash(get_tokenizer(str(vocab))) == meta["tokenizer_hash"]

    # a rebuild with another size that is interrupted leaves the old vocabulary and tokens alone
    before = snapshot(folder)
    monkeypatch.setattr(prepare, "encode_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=corpus, out_dir=out, vocab_size=280)
    assert snapshot(folder) == before


def test_a_long_vocabulary_training_is_said_before_it_starts(tmp_path, monkeypatch, capsys):
    """Training a vocabulary on 360 MB of stories took 34 s on one core with nothing on the screen (the tokenizing
    that follows has a bar), text of many distinct words far longer, and Ctrl-C in its final merges waits for them: a
    large input is said before it starts, a small one (make demo's) is not."""
    corpus = write(tmp_path / "corpus.txt", EOT.join(DOCS * 3))
    out = str(tmp_path / "data")
    said, train_bpe = [], setup_tokenizer.train_bpe
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda *a: said.append(capsys.readouterr().out) or train_bpe(*a))
    prepare.prepare("text", source=corpus, out_dir=out, vocab_size=300, name="small")
    capsys.readouterr()
    monkeypatch.setattr(setup_tokenizer, "SAY_VOCABULARY_BYTES", os.path.getsize(corpus))
    prepare.prepare("text", source=corpus, out_dir=out, vocab_size=300, name="large")
    mb = f"{os.path.getsize(corpus) / 1e6:,.0f}"
    assert said == ["", f"training a 300-token vocabulary on {mb} MB of input (its train text): about a minute a GB on "
                        f"one core, more where the text has many distinct words (Ctrl-C waits for the final merges)\n"]


def test_a_vocabulary_learns_from_at_most_vocab_text_chars_spread_over_the_input(tmp_path, monkeypatch, capsys):
    """rustbpe holds every distinct word it has seen in memory (45 MB of random words peaked at 1.6 GB), so a multi-GB
    corpus took many GB: a vocabulary learns from at most VOCAB_TEXT_CHARS of the train text, documents spread over
    the input where its files say its size (not only its start), its first ones where they do not (--limit), said."""
    docs = [f"document {i} says" + f" word{i}" * (20 + i % 5) for i in range(200)]
    src = write(tmp_path / "many.txt", EOT.join(docs))
    train = docs[:180]  # val: the last 0.1
    seen, n = [], get_tokenizer("gpt2").n_vocab  # (what the stand-in for train_bpe returns)
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.extend(texts) or get_tokenizer("gpt2"))

    def learnt(cap, limit=None):
        seen.clear()
        monkeypatch.setattr(setup_tokenizer, "VOCAB_TEXT_CHARS", cap)
        prepare.train_vocabulary(prepare.find_source("text", src), 300, None, limit, 0.1)
        return list(seen), re.sub(r" in [\d.]+s\n$", "", capsys.readouterr().out)  # (the time left out)

    # an input within the cap is learnt whole, said as before
    assert learnt(os.path.getsize(src)) == (train, f"trained a {n}-token vocabulary on the data")
    # a quarter of the cap: about a quarter of the documents, the first, middle and last ones among them
    cap = os.path.getsize(src) // 4
    sample, said = learnt(cap)
    assert set(sample) < set(train) and sum(map(len, sample)) <= cap and 40 <= len(sample) <= 50
    assert sample[0] == train[0] and train.index(sample[-1]) > 170 \
        and any(train.index(d) in range(80, 100) for d in sample)
    chars, mb = (lambda n: f"{n / 1e6:,.0f}M characters"), (lambda n: f"{n / 1e6:,.0f} MB")
    assert said == (f"trained a {n}-token vocabulary on {chars(sum(map(len, sample)))} of its train text (25% of the "
                     f"documents of the {mb(os.path.getsize(src))} of input, spread over it; at most {chars(cap)}, "
                     f"VOCAB_TEXT_CHARS: memory grows with the distinct words learnt)")
    assert learnt(cap)[0] == sample  # the same sample each time: the same vocabulary, which checkpoints fit
    # --limit's first documents, of a size no file says: the first of them, up to the cap (the last one cut there)
    sample, said = learnt(1000, limit=100)
    assert "".join(sample) == "".join(train)[:1000] \
        and "on the first 0M characters of its train text (at most 0M characters" in said


def test_a_vocabulary_sample_of_a_parquet_file_is_spread_over_all_of_it(tmp_path, monkeypatch):
    """A parquet file holds several times its size in text (compressed): its size on disk, taken for its text's,
    gave a sample that reached VOCAB_TEXT_CHARS a fraction of the way in, so the vocabulary learnt from its start alone
    (a folder of the hub's parquet shards: its first shards), said to be spread over it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = [f"document {i} says" + f" word{i}" * 200 for i in range(200)]
    src = str(tmp_path / "many.parquet")
    pq.write_table(pa.Table.from_pylist([{"text": d} for d in docs]), src, compression="zstd")
    assert os.path.getsize(src) * 4 < sum(map(len, docs))  # (what the test is about)
    seen = []
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.extend(texts) or get_tokenizer("gpt2"))
    monkeypatch.setattr(setup_tokenizer, "VOCAB_TEXT_CHARS", os.path.getsize(src) - 1)  # a quarter of the text, or less
    prepare.train_vocabulary(prepare.find_source("text", src), 300, None, None, 0.1)
    train = docs[:180]
    learnt = [int(d.split()[1]) for d in seen]  # (the last one cut at the cap)
    assert seen[0] == train[0] and max(learnt) > 170 and any(i in range(70, 110) for i in learnt), learnt
    assert sum(map(len, seen)) <= setup_tokenizer.VOCAB_TEXT_CHARS


def test_a_vocabulary_is_trained_again_when_its_data_changes(tmp_path, capsys):
    """--vocab_size under the same --name with other data (another --source, --limit...) trains a vocabulary on that
    data: one trained on other text was kept, and one the old data left short stayed short, with a warning that
    blamed the new data. The same data again keeps it (checkpoints go on fitting), another --pack too."""
    out = str(tmp_path / "data")
    small = write(tmp_path / "small.txt", EOT.join(DOCS[:3]))
    meta = prepare.prepare("text", source=small, out_dir=out, name="v", vocab_size=400)
    assert meta["vocab_size"] < 400 and "the data only supports" in capsys.readouterr().err
    big = write(tmp_path / "big.txt", EOT.join(f"{d} and then story {i} "
                                               f"went on and on." for i, d in enumerate(DOCS * 30)))
    meta = prepare.prepare("text", source=big, out_dir=out, name="v", vocab_size=400)
    out_, err = capsys.readouterr()
    assert "trained a 400-token vocabulary" in out_ and "only supports" not in err and meta["vocab_size"] == 400
    vocab = (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes()
    for again in (dict(), dict(force=True, pack=0)):  # the same data: kept (a forced rebuild trains it again, the same)
        prepare.prepare("text", source=big, out_dir=out, name="v", vocab_size=400, **again)
        assert (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes() == vocab
    assert "trained a" not in capsys.readouterr().out.split("is up to date")[0]
    meta = prepare.prepare("text", source=big, out_dir=out, name="v", vocab_size=400, limit=20)
    assert "trained a" in capsys.readouterr().out and meta["options"]["limit"] == 20
    # a dataset from before vocab_fingerprint (an older prepare.py) keeps its vocabulary: checkpoints trained on it go
    # on fitting though the new version's splits differ; the fingerprint is recorded
    path = tmp_path / "data" / "v" / "meta.json"
    old = json.loads(path.read_text())
    del old["vocab_fingerprint"]
    old["version"] = 3
    path.write_text(json.dumps(old))
    vocab = (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes()
    meta = prepare.prepare("text", source=big, out_dir=out, name="v", vocab_size=400, limit=20)
    assert "trained a" not in capsys.readouterr().out and meta["vocab_fingerprint"]
    assert (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes() == vocab
    # but a build in GPT-2's vocabulary in between (its meta.json has no vocab_fingerprint either) does not vouch
    # for the vocabulary file left in the folder: other text is learnt afresh
    prepare.prepare("text", source=big, out_dir=out, name="v")
    meta = prepare.prepare("text", source=small, out_dir=out, name="v", vocab_size=400)
    assert "trained a" in capsys.readouterr().out and meta["vocab_size"] < 400


def test_a_moved_dataset_from_before_vocab_fingerprint_keeps_its_vocabulary(tmp_path, capsys):
    """An older prepare.py's meta.json names its own vocabulary by an absolute path: the folder moved since (the old
    data/ given to a fresh clone), its vocabulary was trained again on the next build, and the checkpoints trained on
    it no longer fit the data. Its own file, holding the vocabulary the tokens were made with, is kept."""
    out = str(tmp_path / "data")
    src = write(tmp_path / "c.txt", EOT.join(DOCS * 3))
    prepare.prepare("text", source=src, out_dir=out, name="v", vocab_size=300)
    path = tmp_path / "data" / "v" / "meta.json"
    old = json.loads(path.read_text())
    for k in ("vocab_fingerprint", "options"):
        del old[k]
    # as made in the folder's old place, by a prepare.py whose tokens the fingerprint no longer vouches for
    old.update(version=3, fingerprint="0" * 16, tokenizer="/elsewhere/data/v/tokenizer.tiktoken")
    path.write_text(json.dumps(old))
    vocab = (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes()
    capsys.readouterr()
    meta = prepare.prepare("text", source=src, out_dir=out, name="v", vocab_size=300)
    assert "trained a" not in capsys.readouterr().out and meta["version"] == prepare.VERSION
    assert (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes() == vocab
    # made again with no word of its vocabulary: its own is kept, as the commands the scripts suggest say (it was
    # "made with tokenizer /elsewhere/data/v/tokenizer.tiktoken, which is gone", and they named that path)
    path.write_text(json.dumps(old))
    assert "--vocab_size 300" in prepare.rebuild_command(old, str(tmp_path / "data" / "v"))
    prepare.prepare("text", source=src, out_dir=out, name="v")
    said = capsys.readouterr().out
    assert "keeping its own vocabulary (--vocab_size 300" in said and "trained a" not in said
    assert (tmp_path / "data" / "v" / "tokenizer.tiktoken").read_bytes() == vocab
    # another vocabulary in the file than the tokens were made with vouches for nothing: learnt afresh
    path.write_text(json.dumps(dict(old, tokenizer_hash="0" * 16)))
    assert "--vocab_size" not in prepare.rebuild_command(json.loads(path.read_text()), str(tmp_path / "data" / "v"))
    prepare.prepare("text", source=src, out_dir=out, name="v", vocab_size=300)
    assert "trained a" in capsys.readouterr().out


def test_a_moved_dataset_folder_is_up_to_date_until_something_changes(tmp_path, capsys):
    """meta.json names the vocabulary by absolute path: a data/ renamed (or the project moved) was made again on the
    next run of its command, the same tokens (minutes for TinyStories). The same vocabulary and inputs are up to date,
    meta.json naming the vocabulary where it is now; other inputs, options or vocabulary still make it again."""
    src = write(tmp_path / "c.txt", EOT.join(DOCS * 3))
    a = prepare.prepare("text", source=src, out_dir=str(tmp_path / "old" / "data"), name="a", vocab_size=300)
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "old" / "data"), name="b", tokenizer=a["tokenizer"])
    shutil.move(tmp_path / "old", tmp_path / "new")
    data = tmp_path / "new" / "data"
    vocab = str(data / "a" / "tokenizer.tiktoken")
    bins = {n: os.stat(data / n / "train.bin").st_mtime_ns for n in "ab"}
    capsys.readouterr()
    for again in (dict(vocab_size=300), {}):  # its command, then a bare run keeping its vocabulary
        meta = prepare.prepare("text", source=src, out_dir=str(data), name="a", **again)
        said = capsys.readouterr().out
        assert "a is up to date" in said and "trained a" not in said and meta["tokenizer"] == vocab
        assert prepare.read_meta(str(data / "a")) == meta and meta["vocab_fingerprint"] == a["vocab_fingerprint"]
    # another dataset's vocabulary moved with it: up to date once passed where it is now (the error names it), and
    # named there for the next bare run
    with pytest.raises(prepare.TokenizerGone, match=rf"pass --tokenizer {re.escape(vocab)}$"):
        prepare.prepare("text", source=src, out_dir=str(data), name="b")
    for tokenizer in (vocab, None):
        meta = prepare.prepare("text", source=src, out_dir=str(data), name="b", tokenizer=tokenizer)
        assert "b is up to date" in capsys.readouterr().out and meta["tokenizer"] == vocab
    assert f"--tokenizer {vocab}" in prepare.rebuild_command(meta, str(data / "b"))
    assert bins == {n: os.stat(data / n / "train.bin").st_mtime_ns for n in "ab"}
    # what changes the tokens still makes it again, moved or not: another vocabulary, another option, its input edited
    for i, (name, change, edit) in enumerate([("b", dict(tokenizer="gpt2"), False), ("a", dict(limit=20), False),
                                              ("a", dict(limit=20), False), ("a", dict(limit=20), True)]):
        shutil.move(data, tmp_path / f"moved{i}")
        data = tmp_path / f"moved{i}"
        if edit:
            st = os.stat(src)
            os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
        meta = prepare.prepare("text", source=src, out_dir=str(data), name=name, **change)
        # (the third: the second's command again, moved again, is up to date)
        assert ("up to date" in capsys.readouterr().out) == (i == 2)
        assert meta["tokenizer"] == ("gpt2" if name == "b" else str(data / "a" / "tokenizer.tiktoken"))


def test_a_kept_vocabulary_is_said_once_the_data_is_read(tmp_path, capsys):
    """A dataset made again from a file that is not UTF-8, or holds a bad record, said "keeping its own vocabulary"
    first, the error second: bad input is one line. The line comes with the summary (or "is up to date") instead."""
    out = str(tmp_path / "data")
    src = write(tmp_path / "c.txt", EOT.join(DOCS * 3))
    own = prepare.prepare("text", source=src, out_dir=out, name="n", vocab_size=300)
    prepare.prepare("text", source=src, out_dir=out, name="t", tokenizer=own["tokenizer"])
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1"))
    bad = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": \n')
    capsys.readouterr()
    with pytest.raises(UserError, match="is not UTF-8 text"):  # (its own vocabulary: trained on the file, read first)
        prepare.prepare("text", source=str(tmp_path / "latin1.txt"), out_dir=out, name="n")
    with pytest.raises(UserError, match="malformed JSON"):  # (another's vocabulary: read as it is tokenized)
        prepare.prepare("text", source=bad, out_dir=out, name="t")
    assert capsys.readouterr().out == ""
    prepare.prepare("text", source=write(tmp_path / "d.txt", EOT.join(DOCS * 2)), out_dir=out, name="t")
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"{out}/t: keeping its tokenizer {own['tokenizer']} (--tokenizer gpt2 for GPT-2's)", said
    assert said[1].startswith(f"{out}/t: ") and " documents (" in said[1], said


def test_made_again_without_a_vocabulary_option_a_dataset_keeps_its_own(tmp_path, capsys):
    """A bare `prepare.py --dataset story` after a --vocab_size build turned the set into GPT-2's tokens without a
    word: checkpoints trained on it no longer fit it. It keeps the vocabulary it has; --tokenizer gpt2 switches."""
    out = str(tmp_path / "data")
    src = write(tmp_path / "c.txt", EOT.join(DOCS * 3))
    own = prepare.prepare("text", source=src, out_dir=out, vocab_size=300)
    capsys.readouterr()
    assert prepare.prepare("text", source=src, out_dir=out) == own
    said = capsys.readouterr().out
    assert "keeping its own vocabulary (--vocab_size 300; --tokenizer gpt2 for GPT-2's)" in said \
        and "is up to date" in said
    # a dataset made with another's vocabulary keeps that one, --force or not
    prepare.prepare("text", source=src, out_dir=out, name="other", tokenizer=own["tokenizer"])
    assert prepare.prepare("text", source=src, out_dir=out, name="other", force=True)["tokenizer"] == own["tokenizer"]
    assert prepare.prepare("text", source=src, out_dir=out, tokenizer="gpt2")["tokenizer"] == "gpt2"
    with pytest.raises(UserError, match="pass one of them"):
        prepare.prepare("text", source=src, out_dir=out, tokenizer="gpt2", vocab_size=300)
    # switched to GPT-2's, the folder's vocabulary stays: another dataset may be made with it
    assert os.path.exists(own["tokenizer"])
    # the file kept now holds another vocabulary (retrained in place): said, not re-tokenized under "keeping its
    # tokenizer", which left checkpoints trained on the dataset unfit for it; --tokenizer remakes it deliberately
    other_bin = (tmp_path / "data" / "other" / "train.bin").read_bytes()
    train_tokenizer([src], 280, own["tokenizer"])
    with pytest.raises(prepare.TokenizerGone, match=r"other was made with tokenizer .*tokenizer\.tiktoken, which now "
                                                    r"holds another vocabulary \(280 token ids where it had "
                                                    r"300: cut short "
                                                    r"by a copy or download that stopped, or trained again "
                                                    r"smaller\): pass "
                                                    r"--tokenizer .*tokenizer\.tiktoken to remake the dataset with it"):
        prepare.prepare("text", source=src, out_dir=out, name="other")
    assert (tmp_path / "data" / "other" / "train.bin").read_bytes() == other_bin
    assert prepare.prepare("text", source=src, out_dir=out, name="other", tokenizer=own["tokenizer"])["vocab_size"] == \
        280
    os.remove(own["tokenizer"])
    # the tokenizer kept is gone: said in one line (a bare prepare.py skips the dataset)
    with pytest.raises(prepare.TokenizerGone, match=r"other was made with tokenizer .*, which is gone \(it held "
                                                    r"the vocabulary custom-\w+\): put it back, or pass --tokenizer"):
        prepare.prepare("text", source=src, out_dir=out, name="other")
    # a meta.json from before the "options" field keeps its own vocabulary too
    old = prepare.prepare("text", source=src, out_dir=out, name="old", vocab_size=300)
    meta_path = tmp_path / "data" / "old" / "meta.json"
    meta_path.write_text(json.dumps({k: v for k, v in old.items() if k != "options"}))
    assert prepare.prepare("text", source=src, out_dir=out, name="old", force=True)["tokenizer"] == old["tokenizer"]
    meta_path.write_text(json.dumps({"dataset": "text", "source": None}))  # too odd to say: made as new
    assert prepare.prepare("text", source=src, out_dir=out, name="old")["tokenizer"] == "gpt2"


def test_a_dataset_made_with_another_datasets_vocabulary_moved_with_it_finds_it(tmp_path, capsys):
    """A dataset made with --tokenizer data/a/tokenizer.tiktoken names it by absolute path: moved with data/ (a project
    moved, data/ copied to another machine), the old path was named as the one to pass (get_tokenizer of the dataset's
    folder), and train.py said it gone. The same vocabulary in the same place under the new parent is found by its
    hash: train.py trains with it, prepare.py and get_tokenizer name it; another file there is not taken for it."""
    import argparse
    import train
    src = write(tmp_path / "c.txt", EOT.join(DOCS * 3))
    old = tmp_path / "old" / "data"
    a = prepare.prepare("text", source=src, out_dir=str(old), name="a", vocab_size=300)
    prepare.prepare("text", source=src, out_dir=str(old), name="b", tokenizer=a["tokenizer"])
    shutil.move(tmp_path / "old", tmp_path / "new")
    data, vocab = tmp_path / "new" / "data", str(tmp_path / "new" / "data" / "a" / "tokenizer.tiktoken")
    meta = train.load_meta(str(data), "b")
    assert train.pick_tokenizer(argparse.Namespace(tokenizer=None), meta, None).name == get_tokenizer(vocab).name
    with pytest.raises(UserError, match=rf"b is a dataset's folder, not a vocabulary: pass the one it was made with, "
                                        rf"{re.escape(vocab)}$"):
        get_tokenizer(str(data / "b"))
    with pytest.raises(prepare.TokenizerGone, match=rf"which is gone; the same vocabulary is at {re.escape(vocab)} "
                                                    rf"\(moved with the data\?\): pass --tokenizer "
                                                    rf"{re.escape(vocab)}$"):
        prepare.prepare("text", source=src, out_dir=str(data), name="b")
    # another vocabulary there vouches for nothing: said gone, as before (the old path named as such)
    train_tokenizer([src], 280, vocab)
    with pytest.raises(UserError, match=r"old/data/a/tokenizer\.tiktoken, which is gone \(it held .*\): put it "
                                        r"back, or pass --tokenizer PATH"):
        train.pick_tokenizer(argparse.Namespace(tokenizer=None), meta, None)
    with pytest.raises(UserError, match=r"old/data/a/tokenizer\.tiktoken, gone from there \(moved\?\): pass a copy"):
        get_tokenizer(str(data / "b"))
    with pytest.raises(prepare.TokenizerGone, match=r"which is gone \(it held the vocabulary custom-\w+\): put it "
                                                    r"back"):
        prepare.prepare("text", source=src, out_dir=str(data), name="b")


def test_a_dataset_whose_model_folder_tokenizer_is_gone_names_it_and_what_it_held(tmp_path):
    """A dataset made with --tokenizer FOLDER (a Hugging Face model folder) whose folder was deleted since: prepare.py
    made again said to pass --tokenizer gpt2, another vocabulary than the folder's, which the models trained on the
    data do not fit. The line names the folder, the vocabulary meta.json records it held, and the ways back, as
    train.py's does; a GPT-2 model's folder held GPT-2's vocabulary, which --tokenizer gpt2 then is."""
    import argparse
    import hf
    import train
    from model import GPT, make_config
    src = write(tmp_path / "c.txt", EOT.join(DOCS * 3))
    out = str(tmp_path / "data")
    own = train_tokenizer([src], 280, str(tmp_path / "v.tiktoken"))
    for name, enc in (("own", own), ("gpt2", get_tokenizer("gpt2"))):
        model_folder = str(tmp_path / f"hf-{name}")
        config = make_config("tiny", n_layer=1, n_embd=16, n_head=2, block_size=32, vocab_size=enc.n_vocab)
        hf.export_folder(GPT(config), enc, model_folder)
        meta = prepare.prepare("text", source=src, out_dir=out, name=name, tokenizer=model_folder)
        shutil.rmtree(model_folder)
        ways = (rf"\(it held the vocabulary custom-{meta['tokenizer_hash']}\): put it back, or pass --tokenizer PATH "
                rf"to a copy of it \(a checkpoint trained on this data holds one\); prepared again with another "
                rf"\(gpt2\), the data no longer fits the models trained on it$") if name == "own" else \
            r"; it held GPT-2's vocabulary: pass --tokenizer gpt2$"
        with pytest.raises(prepare.TokenizerGone, match=rf"^{re.escape(os.path.join(out, name))} was made with "
                                                        rf"tokenizer {re.escape(model_folder)}, which is gone ?{ways}"):
            prepare.prepare("text", source=src, out_dir=out, name=name)
        with pytest.raises(UserError, match=rf"was prepared with tokenizer {re.escape(model_folder)}, which is gone "
                                            rf"?{ways}"):
            train.pick_tokenizer(argparse.Namespace(tokenizer=None), train.load_meta(out, name), None)
    # the advice, taken: GPT-2's by name is the data's
    assert train.pick_tokenizer(argparse.Namespace(tokenizer="gpt2"), train.load_meta(out, "gpt2"), None).name == "gpt2"

def test_the_vocabulary_is_trained_on_the_train_split_only(tmp_path, capsys):
    """The val split stays unseen: a word only the val documents (the tail) have gets no merges."""
    train_docs = [f"the cat sat on the mat {i}." for i in range(90)]
    val_docs = ["qzqzqzqzqzqzqzqzqzqz " * 20] * 10
    src = write(tmp_path / "docs.txt", EOT.join(train_docs + val_docs))
    meta = prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"), vocab_size=300)
    enc = get_tokenizer(meta["tokenizer"])
    assert len(enc.encode_ordinary("qzqz")) == 4 and len(enc.encode_ordinary(" the cat")) < 8
    val, _ = load(tmp_path / "data" / "text", "val", meta)
    assert "qzqz" in enc.decode(val.tolist())  # it is there, in val
    # a single document (a book) is cut by tokens, which the vocabulary decides: it learns from the first 90% of the
    # characters, an approximation
    book = "".join(f"line {i} of the book\n" for i in range(900)) + "qz" * 250  # the last 2.5% of it
    meta = prepare.prepare("text", source=write(tmp_path / "book.txt", book), out_dir=str(tmp_path / "data"),
                           name="book", vocab_size=300)
    assert len(get_tokenizer(meta["tokenizer"]).encode_ordinary("qzqz")) == 4
    assert "book: 1 document (cut into train and val), " in capsys.readouterr().out  # not "(0 train, 1 val)"


def test_a_small_dataset_says_its_size_in_kb(tmp_path, capsys):
    """A user's own 23 kB of chats was summed up as "0.0 MB of text", which reads as nothing read: the
    sizes that would print as 0.0 MB are in kB, those under a kB in bytes; the others in MB, as before."""
    for name, size, said in (("tiny", 18, ", 18 bytes of text in "), ("small", 23_456, ", 23.5 kB of text in "),
                             ("larger", 123_456, ", 0.1 MB of text in ")):
        prepare.prepare("text", source=write(tmp_path / f"{name}.txt", "word " * (size // 5) + "w" * (size % 5)),
                        out_dir=str(tmp_path / "data"), name=name)
        out = capsys.readouterr().out
        assert said in out and "0.0 MB" not in out and "0.0 kB" not in out, out
    # the speeds too, as slow as a loaded machine makes them: the 18 bytes in 2 s were "0.0 kB/s" (and this test's
    # check above failed where its run took over 0.36 s)
    folder = str(tmp_path / "data" / "tiny")
    prepare.print_summary(folder, prepare.read_meta(folder), {}, None, 2.0)
    assert re.search(r", 18 bytes of text in 2\.0s: 9 bytes/s, \d tokens/s\n", capsys.readouterr().out)


def test_a_vocab_size_beyond_what_the_data_supports_warns(tmp_path, capsys):
    corpus = write(tmp_path / "corpus.txt", EOT.join(DOCS))
    meta = prepare.prepare("text", source=corpus, out_dir=str(tmp_path / "data"), vocab_size=70000)
    n = meta["vocab_size"]
    assert n < 1000
    warning = f"warning: --vocab_size 70000: the data only supports {n} tokens (no pair is left to merge); " \
              f"the vocabulary has {n}\n"
    assert capsys.readouterr().err == warning
    # the same vocabulary again: the dataset is up to date, and the warning says why it is not 70000
    prepare.prepare("text", source=corpus, out_dir=str(tmp_path / "data"), vocab_size=70000)
    out, err = capsys.readouterr()
    assert "is up to date" in out and err == warning
    assert "trained a" not in out  # not trained again: the data gives the same


# -----------------------------------------------------------------------------
# conversations

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ☃!"},
     {"role": "assistant", "content": "Hello ☃."},
     {"role": "user", "content": "Say <|im_end|>"}, {"role": "assistant", "content": "<|im_end|> is just text here."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blau, i.e. blue."}],
] * 4  # 12 conversations: val gets the last one or two


def sharegpt(conv):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"id": "x", "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}


def claude_export(conv, i):
    """conv as a conversation of Claude's data export (its conversations.json): `chat_messages` of {sender, text}, each
    with its text again as content parts, no system message (the system turn, given here, is read as one)."""
    names = {"system": "system", "user": "human", "assistant": "assistant"}
    return {"uuid": f"c{i}", "name": "A chat", "created_at": "2024-05-01T10:00:00Z", "account": {"uuid": "a"},
            "chat_messages": [{"uuid": f"m{i}.{j}", "sender": names[m["role"]], "text": m["content"],
                               "content": [{"type": "text", "text": m["content"]}], "attachments": [], "files": []}
                              for j, m in enumerate(conv)]}


ALPACA = [{"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else f"Numbers: {i}, {i}", "output": f"{2 * i}"}
          for i in range(10)]
# Self-Instruct's seed tasks, some of two instances
SEED_TASKS = [{"id": f"seed_task_{i}", "name": "add", "instruction": r["instruction"], "is_classification": False,
               "instances": [{"input": r["input"], "output": r["output"]}]
                            + [{"input": "0, 0", "output": "0"}] * (i % 2)}
              for i, r in enumerate(ALPACA)]
QA = [{"question": f"Q{i}: why is the sky blue?", "answer": f"Rayleigh scattering ({i})."} for i in range(10)]


def gemini(conv):
    """conv as a Gemini tuning record: its system message a systemInstruction, turns of role user/model whose text is
    parts (two, where it has room)."""
    def parts(text):
        return [{"text": text[:3]}, {"text": text[3:]}]
    return {"contents": [{"role": {"assistant": "model"}.get(m["role"], m["role"]), "parts": parts(m["content"])}
                         for m in conv if m["role"] != "system"]} | (
        {"systemInstruction": {"role": "system", "parts": parts(conv[0]["content"])}}
        if conv[0]["role"] == "system" else {})


def chatgpt_export(conv, i):
    """conv as a conversation of ChatGPT's data export: a tree of messages under `mapping`, the conversation shown the
    path from current_node up. Around conv's turns: the root (no message), an empty system message and hidden custom
    instructions, a reply regenerated (its first version a branch off the path), and each last reply split by a tool
    call (code to python, the tool's output) from its second part, text and an image."""
    nodes, parent = {"root": {"id": "root", "message": None, "parent": None, "children": []}}, "root"

    def add(key, role, content, **extra):
        nonlocal parent
        message = {"id": key, "author": {"role": role, "name": None, "metadata": {}}, "create_time": 1.7e9,
                   "content": content, "status": "finished_successfully", "weight": 1.0, "metadata": {},
                   "recipient": "all"} | extra
        nodes[key] = {"id": key, "message": message, "parent": parent, "children": []}
        nodes[parent]["children"].append(key)
        parent = key

    add("sys", "system", {"content_type": "text", "parts": [""]})
    add("ci", "user", {"content_type": "user_editable_context", "user_profile": "I like short answers."},
        metadata={"is_visually_hidden_from_conversation": True})
    for k, m in enumerate(conv):
        text = {"content_type": "text", "parts": [m["content"]]}
        if m["role"] != "assistant":
            add(f"m{k}", m["role"], text)
        elif k < len(conv) - 1:
            add(f"m{k}", "assistant", text)
            at = parent
            add(f"old{k}", "assistant", {"content_type": "text", "parts": ["a reply regenerated"]})
            parent = nodes[at]["parent"]  # the regenerated reply: another child of the question, on the path
            nodes[f"m{k}"]["children"], nodes[f"old{k}"]["parent"] = [], nodes[f"m{k}"]["parent"]
            parent = f"m{k}"
        else:
            add(f"m{k}a", "assistant", {"content_type": "text", "parts": [m["content"]]})
            add(f"m{k}c", "assistant", {"content_type": "code", "language": "python", "text": "1+1"},
                recipient="python")
            add(f"m{k}t", "tool", {"content_type": "execution_output", "text": "2"},
                author={"role": "tool", "name": "python"})
            add(f"m{k}b", "assistant", {"content_type": "multimodal_text",
                                        "parts": ["Checked", {"asset_pointer": "x"}]})
    return {"title": f"Chat {i}", "create_time": 1.7e9, "mapping": nodes, "current_node": parent, "id": f"c{i}"}


def merged_reply(conv):
    """conv as chatgpt_export's conversation of it reads back: its last reply and the text after its tool call joined
    by a blank line (the image left out)."""
    return conv[:-1] + [{"role": "assistant", "content": conv[-1]["content"] + "\n\nChecked"}]


def alpaca_conv(r):
    return [{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")},
            {"role": "assistant", "content": r["output"]}]


OPENAI_WEIGHTED = [
    [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Whatever.", "weight": 0}, {"role": "user", "content": "Hi?"},
     {"role": "assistant", "content": "Hello.", "weight": 1}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6", "weight": 1.0}],
    [{"role": "user", "content": "Ugh."}, {"role": "assistant", "content": "Ugh.", "weight": 0}],
]

FORMATS = {  # name: (file name, file text, expected conversations)
    "messages": ("m.jsonl", "\n".join(json.dumps({"messages": c}) for c in CONVERSATIONS), CONVERSATIONS),
    "sharegpt": ("s.json", json.dumps([sharegpt(c) for c in CONVERSATIONS]), CONVERSATIONS),
    # ShareGPT's role names in `messages` (the unknown-role error says they are taken; they were refused)
    "messages-sharegpt-roles": ("h.jsonl", "\n".join(json.dumps({"messages": [
        {"role": m["from"], "content": m["value"]} for m in sharegpt(c)["conversations"]]}) for c in CONVERSATIONS),
        CONVERSATIONS),
    # OpenAI's fine-tuning files: "developer" is its newer name for the system message, and a reply weighted 0 is
    # context, not trained on (its mask 0); a conversation whose every reply is weighted 0 trains nothing: left out
    "openai-weights": ("w.jsonl", "\n".join(json.dumps({"messages": c}) for c in OPENAI_WEIGHTED), [
        [dict(m, role="system") if m["role"] == "developer" else m for m in c] for c in OPENAI_WEIGHTED[:-1]]),
    # either turn spelling under either name: unsloth's standardize_sharegpt writes `conversations` of role/content,
    # LLaMA-Factory reads `messages` of from/value (both were refused)
    "conversations-role-content": ("cr.jsonl", "\n".join(json.dumps({"conversations": c}) for c in CONVERSATIONS),
                                   CONVERSATIONS),
    "messages-from-value": ("mf.json", json.dumps([{"messages": sharegpt(c)["conversations"]} for c in CONVERSATIONS]),
                            CONVERSATIONS),
    "alpaca": ("a.json", json.dumps(ALPACA, indent=1), [alpaca_conv(r) for r in ALPACA]),
    # a record with no answer (two in the mirror's alpaca_5000.json) is left out: it trained the model to say nothing
    "alpaca-empty-outputs": ("e.json", json.dumps(ALPACA[:4] + [dict(ALPACA[4], output="")] + ALPACA[5:8] +
                                                  [dict(ALPACA[8], output=" \n")] + ALPACA[9:]),
                             [alpaca_conv(r) for i, r in enumerate(ALPACA) if i not in (4, 8)]),
    # LLaMA-Factory's Alpaca rows with the turns before as `history` pairs (a multi-turn row trained as its last turn
    # alone), and an output of null (stopped the whole file with "no ... instruction/output ... field")
    "alpaca-history": ("ah.jsonl",
                       "\n".join(json.dumps(dict(r, history=[["Hi.", "Hello!"], [f"Ready {i}?", "Yes."]][:i % 3]))
                                             for i, r in enumerate(ALPACA))
                       + "\n" + json.dumps(dict(ALPACA[0], output=None)),
                       [[{"role": "user", "content": t} if k % 2 == 0 else {"role": "assistant", "content": t}
                         for k, t in enumerate([t for h in [["Hi.", "Hello!"], [f"Ready {i}?", "Yes."]][:i % 3]
                                                for t in h])]
                        + alpaca_conv(r) for i, r in enumerate(ALPACA)]),
    "qa": ("q.jsonl", "\n".join(json.dumps(r) for r in QA),
           [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in QA]),
    # the instruction sets of other shapes (each was refused on every line as "no messages, conversations ... field"):
    # Self-Instruct's seed tasks (the mirror's alpaca_seed_tasks.jsonl), each of a task's instances an example of its
    # own; Databricks Dolly; OpenAI's legacy prompt/completion and TRL's, whose conversational form is lists of turns;
    # prompt/response and MetaMathQA's query/response
    "seed-tasks": ("s.jsonl", "\n".join(json.dumps(t) for t in SEED_TASKS),
                   [alpaca_conv({"instruction": t["instruction"], **x}) for t in SEED_TASKS for x in t["instances"]]),
    "dolly": ("d.jsonl", "\n".join(json.dumps({"instruction": r["instruction"], "context": r["input"],
                                               "response": r["output"], "category": "closed_qa"}) for r in ALPACA),
              [alpaca_conv(r) for r in ALPACA]),
    **{name: (f"{name}.jsonl", "\n".join(json.dumps({p: r["question"], c: r["answer"]}) for r in QA),
              [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in QA])
       for name, p, c in (("prompt-completion", "prompt", "completion"), ("prompt-response", "prompt", "response"),
                          ("query-response", "query", "response"), ("input-output", "input", "output"),
                          ("problem-solution", "problem", "solution"))},
    # OpenOrca: its system_prompt is the system message (one empty: none)
    "openorca": ("o.jsonl", "\n".join(json.dumps({"id": f"niv.{i}", "system_prompt": "Be brief." * (i % 2),
                                                  "question": r["question"], "response": r["answer"]})
                                      for i, r in enumerate(QA)),
                 [[{"role": "system", "content": "Be brief."}] * (i % 2) + [
                     {"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
                  for i, r in enumerate(QA)]),
    # Gemini's tuning files: contents of role/parts, the model's turns role "model", a systemInstruction
    "gemini": ("g.jsonl", "\n".join(json.dumps(gemini(c)) for c in CONVERSATIONS), CONVERSATIONS),
    # ChatGPT's data export: the conversation each tree shows, its text only (see chatgpt_export)
    "chatgpt-export": ("conversations.json", json.dumps([chatgpt_export(c, i) for i, c in enumerate(CONVERSATIONS)]),
                       [merged_reply(c) for c in CONVERSATIONS]),
    # Claude's data export: was told its `chat_messages` held a list of records, to be given as the file (each turn
    # then plain text)
    "claude-export": ("conversations.json", json.dumps([claude_export(c, i) for i, c in enumerate(CONVERSATIONS)]),
                      CONVERSATIONS),
    # TRL trains on the completion alone: a multi-turn prompt's replies are context, out of the loss (they were trained)
    "trl-conversational": ("t.jsonl",
                           "\n".join(json.dumps({"prompt": c[:-1], "completion": c[-1:]}) for c in CONVERSATIONS),
                           [[dict(m, weight=0) if m["role"] == "assistant" else m for m in c[:-1]] + c[-1:]
                            for c in CONVERSATIONS]),
}


def test_a_claude_exports_attachments_are_read_with_their_turn_and_its_placeholders_left_out():
    """Claude's export: a long paste (claude.ai makes one an attachment) or a file's text is an attachment's
    extracted_content, the turn's text what was typed beside it, often nothing: a summary was trained as the reply to
    a blank message. Read before the turn's text; an attachment of no text (a picture) adds nothing. The export's
    placeholders for a tool's blocks are left out."""
    record = claude_export([{"role": "user", "content": ""}, {"role": "assistant", "content": "It is about tea."},
                            {"role": "user", "content": "And this?"}, {"role": "assistant", "content": "Coffee."}], 0)
    first, second = record["chat_messages"][0], record["chat_messages"][2]
    first["attachments"] = [{"file_name": "paste.txt", "file_type": "txt", "extracted_content": "Tea is a drink."}]
    second["attachments"] = [{"file_name": "a.pdf", "extracted_content": "Coffee is one too."},
                             {"file_name": "b.png", "extracted_content": ""}, {"file_name": "c.jpg"}]
    # a reply that searched the web or made an artifact: the export's placeholder for each such block, trained on as
    # words, left out
    record["chat_messages"][3]["text"] = ("Let me look.\n```\nThis block is not supported on your current device yet."
                                          "\n```\n\n\n```\nThis block is not supported on your current device yet.\n"
                                          "```\n\nCoffee.\nViewing artifacts created via the Analysis Tool web feature "
                                          "preview isn't yet supported on mobile.\n")
    assert prepare.record_doc(record, "x") == prepare.record_doc({"messages": [
        {"role": "user", "content": "Tea is a drink."}, {"role": "assistant", "content": "It is about tea."},
        {"role": "user", "content": "Coffee is one too.\n\nAnd this?"},
        {"role": "assistant", "content": "Let me look.\n\nCoffee."}]}, "x")



def test_a_claude_exports_turn_of_content_blocks_alone_is_read_by_its_text_blocks():
    """A turn of Claude's export with `content` blocks and no `text` was a bad record ("`chat_messages` must be a list
    of turns"): read by its text blocks, a tool's and a thinking block left out as the placeholders for them are."""
    record = claude_export([{"role": "user", "content": "What is tea?"}, {"role": "assistant", "content": ""}], 0)
    reply = record["chat_messages"][1]
    del reply["text"]
    reply["content"] = [{"type": "thinking", "thinking": "Hmm."}, {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "name": "web_search", "input": {"query": "tea"}},
                        {"type": "tool_result", "content": [{"type": "text", "text": "a result"}]},
                        {"type": "text", "text": "A drink."}]
    assert prepare.record_doc(record, "x") == prepare.record_doc({"messages": [
        {"role": "user", "content": "What is tea?"},
        {"role": "assistant", "content": "Let me look.\n\nA drink."}]}, "x")


@pytest.mark.parametrize("fmt", FORMATS)
def test_chat_formats(tmp_path, enc, fmt):
    filename, text, convs = FORMATS[fmt]
    # pack 0: conversations one after the other, to compare with render_chat token for token (packing: below)
    meta = prepare.prepare("chat", source=write(tmp_path / filename, text), out_dir=str(tmp_path / "data"), pack=0)
    folder = tmp_path / "data" / "chat"
    assert meta["kind"] == "chat" and meta["has_mask"] and meta["pack"] == 0
    check_sizes(folder, meta)
    n_val = meta["splits"]["val"]["documents"]
    assert n_val == max(1, round(len(convs) * 0.1)) and meta["splits"]["train"]["documents"] == len(convs) - n_val
    for split, part in (("train", convs[:len(convs) - n_val]), ("val", convs[len(convs) - n_val:])):
        ids, mask = load(folder, split, meta)
        assert len(ids) == len(mask)
        # token for token what setup_tokenizer.render_chat gives, each conversation closed by <|endoftext|> (mask 0)
        want_ids, want_mask = [], []
        for conv in part:
            i, m = render_chat(enc, conv)
            want_ids += i + [enc.eot_token]
            want_mask += m + [0]
        assert ids.tolist() == want_ids and mask.tolist() == want_mask
        replies = [m["content"] + IM_END for conv in part for m in conv
                   if m["role"] == "assistant" and m.get("weight", 1)]
        assert masked_spans(enc, ids, mask) == replies
        assert meta["splits"][split]["bytes"] == text_bytes(enc, ids)


def test_a_single_conversation_is_not_cut_mid_turn(tmp_path, capsys):
    """A book is cut by tokens, but one conversation cut so would train on half a turn and validate on the rest
    (it was counted as "2 documents"): a clear error instead, before any vocabulary is trained."""
    src = write(tmp_path / "one.jsonl", json.dumps({"messages": CONVERSATIONS[0]}))
    out = str(tmp_path / "data")
    for vocab_size in (None, 300):
        with pytest.raises(UserError, match=r"one\.jsonl holds one conversation, and a val split needs 2 or more: add "
                                            r"conversations$"):
            prepare.prepare("chat", source=src, out_dir=out, vocab_size=vocab_size)
        assert not os.path.exists(os.path.join(out, "chat"))
    # --limit 1 on a larger set says that the limit took one
    many = write(tmp_path / "m.jsonl", FORMATS["messages"][1])
    with pytest.raises(UserError, match=r"--limit 1 takes one conversation from .*m\.jsonl, .*: give "
                                        r"--limit 2 or more$"):
        prepare.prepare("chat", source=many, out_dir=out, limit=1)
    meta = prepare.prepare("chat", source=src, out_dir=out, val_fraction=0)
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (1, 0)
    assert prepare.prepare("chat", source=many, out_dir=out, name="two", limit=2)["splits"]["val"]["documents"] == 1


def test_a_folder_of_small_files_gives_val_its_share(tmp_path, enc, monkeypatch):
    """Each file of a folder was cut on its own, one document to val at least: 2-conversation files kept half of the
    data out of training, and 1-conversation files were refused. The share is now over all the files; the vocabulary
    is trained on exactly the conversations that land in train."""
    from setup_tokenizer import parse_chat
    folder = tmp_path / "convs"
    sizes = [2, 3, 1, 2, 1, 1, 3, 2, 1, 2, 3, 1]  # 22 conversations in 12 files
    convs = [[{"role": "user", "content": f"question {i} {j}"}, {"role": "assistant", "content": f"answer {i} {j}"}]
             for i, n in enumerate(sizes) for j in range(n)]
    it = iter(convs)
    for i, n in enumerate(sizes):
        write(folder / f"{i:02d}.jsonl", "\n".join(json.dumps({"messages": next(it)}) for _ in range(n)))
    meta = prepare.prepare("chat", source=str(folder), out_dir=str(tmp_path / "data"), pack=0)
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (20, 2)  # round(22 * 0.1)
    train_ids, _ = load(tmp_path / "data" / "chat", "train", meta)
    in_train = [m["content"] for m in parse_chat(enc, train_ids.tolist())]
    seen = []
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.extend(texts) or get_tokenizer("gpt2"))
    prepare.train_vocabulary(prepare.find_source("chat", str(folder)), 300, None, None, 0.1)
    assert seen == in_train and len(in_train) == 2 * 20
    # the last file with documents gives val its one: after it an empty file, or a --limit spent before the last
    # (val came out empty, and train.py refused it)
    write(folder / "99.jsonl", "")
    for limit, want in ((None, (20, 2)), (5, (4, 1)), (3, (2, 1))):
        meta = prepare.prepare("chat", source=str(folder), out_dir=str(tmp_path / "data"), name=f"l{limit}", pack=0,
                               limit=limit)
        assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == want, limit
        seen.clear()
        prepare.train_vocabulary(prepare.find_source("chat", str(folder)), 300, None, limit, 0.1)
        train_ids, _ = load(tmp_path / "data" / f"l{limit}", "train", meta)
        assert seen == [m["content"] for m in parse_chat(enc, train_ids.tolist())], limit
    # one conversation in all the files (or --limit 1 of them) is still one conversation: refused, not all in train
    with pytest.raises(UserError, match=r"--limit 1 takes one conversation from .*00\.jsonl \(and 12 more file"):
        prepare.prepare("chat", source=str(folder), out_dir=str(tmp_path / "data"), name="one", limit=1)


def test_val_takes_its_share_rounded_and_leaves_train_a_document():
    """--val_fraction is val's share of a source's documents, rounded (17 at 0.1: 2, not 1); however large the share,
    train keeps a document."""
    assert prepare.val_counts({0: 17}, "chat", 0.1, "x", None) == {0: 2}
    assert prepare.val_counts({0: 3}, "chat", 0.9, "x", None) == {0: 2}


def test_a_chat_set_without_replies_is_refused(tmp_path):
    """Conversations without an assistant turn leave nothing under the loss mask: train.py 'trained' at loss 0. Among
    others they are left out (they were kept, unsaid: windows of context trained on for no loss), and the val split
    takes conversations with replies: its loss is never 0, "best" at every evaluation."""
    convs = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"Hello {i}"}] for i in range(20)]
    src = write(tmp_path / "q.jsonl", "\n".join(json.dumps({"messages": c}) for c in convs))
    with pytest.raises(UserError, match=r"q\.jsonl: none of its records has anything to train on \(every assistant "
                                        r"reply, or text, is missing, empty or null\): fill them in, or leave the file "
                                        r"out$"):
        prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "chat").exists()
    replies = [c + [{"role": "assistant", "content": "Hi."}] for c in convs[:18]] + convs[18:]
    src = write(tmp_path / "r.jsonl", "\n".join(json.dumps({"messages": c}) for c in replies))
    meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), pack=0)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 18
    eot = get_tokenizer("gpt2").eot_token
    for split in ("train", "val"):  # every conversation kept has a reply under the mask
        ids, mask = load(str(tmp_path / "data" / "chat"), split, meta)
        ends = prepare.document_ends(ids, eot)
        assert len(ends) and all(mask[s:e].any() for s, e in zip([0, *ends[:-1]], ends)), split


def test_a_source_folder_skips_hidden_folders_and_prepared_datasets(tmp_path):
    """A notebook's .ipynb_checkpoints copy doubled the data, and a dataset written inside the folder was read back
    (its meta.json as records) by the next run."""
    src = tmp_path / "src"
    write(src / "a.jsonl", FORMATS["messages"][1])
    write(src / ".ipynb_checkpoints" / "a-checkpoint.jsonl", FORMATS["messages"][1])
    write(src / "more" / "b.jsonl", FORMATS["messages"][1])  # a folder with a meta.json of its own, not prepare.py's
    write(src / "more" / "meta.json", json.dumps({"messages": CONVERSATIONS[1]}))  # data that happens to be named so
    for _ in range(2):
        meta = prepare.prepare("chat", source=str(src), out_dir=str(src), name="mine")
        # (b.jsonl repeats a.jsonl: the val cut from its tail, all in train, keeps one copy of what it repeats)
        assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] + meta["val_repeats"] == \
            2 * len(CONVERSATIONS) + 1
    # the dataset written into the source folder itself: its meta.json was read back as records and refused
    notes = tmp_path / "notes"
    for i in range(10):
        write(notes / f"n{i}.txt", f"note {i}")
    for _ in range(2):
        meta = prepare.prepare("text", source=str(notes), out_dir=str(tmp_path), name="notes", force=True)
        assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10


def test_source_files_upper_case_overlapping_broken_and_odd_meta(tmp_path, enc):
    """NOTES.TXT in a folder was skipped (its documents lost); a file given twice (itself and its folder) was read
    twice, its val documents in train as well; a broken link, or a meta.json that is JSON but no object, gave a
    traceback (a link a pattern matched was "no such file")."""
    src = tmp_path / "src"
    write(src / "a.txt", EOT.join(f"a{i}" for i in range(5)))
    write(src / "B.TXT", EOT.join(f"b{i}" for i in range(5)))
    meta = prepare.prepare("text", source=[str(src / "a.txt"), str(src)], out_dir=str(tmp_path / "data"))
    train, _ = load(tmp_path / "data" / "text", "train", meta)
    val, _ = load(tmp_path / "data" / "text", "val", meta)
    docs = enc.decode(train.tolist()).split(EOT)[:-1] + enc.decode(val.tolist()).split(EOT)[:-1]
    assert sorted(docs) == [f"{c}{i}" for c in "ab" for i in range(5)]
    assert meta["source"] == f"--source {src / 'a.txt'}, {src / 'B.TXT'}"
    (src / "c.txt").symlink_to(tmp_path / "gone.txt")
    with pytest.raises(UserError, match=r"c\.txt is a broken link: remove or mend it"):
        prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"), name="broken")
    # one a pattern matched (glob lists links whatever they point to), or given: "no such file or folder" of a file
    # that `ls` lists
    for source in (str(src / "*.txt"), str(src / "c.txt")):
        with pytest.raises(UserError, match=r"^--source .*c\.txt is a broken link: remove or mend it$"):
            prepare.prepare("text", source=source, out_dir=str(tmp_path / "data"), name="broken")
    (src / "c.txt").unlink()
    write(src / "sub" / "meta.json", "[1, 2]")  # a list: records, read as such, not a dataset's meta.json
    write(tmp_path / "data" / "odd" / "meta.json", "1")  # a damaged output folder: rebuilt
    with pytest.raises(UserError, match=r"meta\.json record 1: "):
        prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"), name="odd")
    (src / "sub" / "meta.json").unlink()
    meta = prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"), name="odd")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10

def test_a_source_pattern_the_shell_left_is_expanded(tmp_path, enc):
    """--source 'notes/*.txt' quoted, or typed in Windows' cmd or PowerShell, which leave * to the program, was
    "--source notes/*.txt: no such file or folder"."""
    src = tmp_path / "notes"
    write(src / "a.txt", EOT.join(f"a{i}" for i in range(5)))
    write(src / "b.txt", EOT.join(f"b{i}" for i in range(5)))
    write(src / "c.md", "left out")
    meta = prepare.prepare("text", source=str(src / "*.txt"), out_dir=str(tmp_path / "data"))
    assert meta["source"] == f"--source {src / 'a.txt'}, {src / 'b.txt'}"
    assert sum(meta["splits"][s]["documents"] for s in ("train", "val")) == 10
    with pytest.raises(UserError, match=rf"^--source {re.escape(str(src / '*.json'))}: no file or folder matches this "
                                        rf"pattern$"):
        prepare.prepare("text", source=str(src / "*.json"), out_dir=str(tmp_path / "data"), name="none")


def test_source_folder_reads_linked_folders_once(tmp_path, enc, capsys):
    """A folder that links to others (corpora kept on another disk) lost their documents without a word: the walk did
    not enter a linked folder, though it read a linked file. Entered now, each folder once, a link back to one
    already read (a loop) too."""
    corpus = tmp_path / "disk" / "corpus"
    write(corpus / "b.txt", EOT.join(f"b{i}" for i in range(5)))
    write(corpus / "b.md", "x")
    src = tmp_path / "src"
    write(src / "a.txt", EOT.join(f"a{i}" for i in range(5)))
    write(src / "a.md", "x")
    (src / "more").symlink_to(corpus, target_is_directory=True)
    (corpus / "back").symlink_to(src, target_is_directory=True)  # a loop
    (src / "again").symlink_to(corpus, target_is_directory=True)  # the same folder twice
    meta = prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"))
    assert "left out 2 file(s) of other types (2 .md)" in capsys.readouterr().err  # each folder's once
    train, _ = load(tmp_path / "data" / "text", "train", meta)
    val, _ = load(tmp_path / "data" / "text", "val", meta)
    docs = enc.decode(train.tolist()).split(EOT)[:-1] + enc.decode(val.tolist()).split(EOT)[:-1]
    assert sorted(docs) == [f"{c}{i}" for c in "ab" for i in range(5)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    """A named pipe ends at its first read (text_docs' look for separators), and the next read's open waited for a
    writer for ever, as a folder holding one did: refused at once. Here a thread keeps opening the pipe for writing,
    so that a prepare.py reading it gets to the end of its reads rather than hanging."""
    import threading
    src = tmp_path / "src"
    write(src / "a.txt", EOT.join(DOCS))
    pipe = src / "notes.txt"
    os.mkfifo(pipe)
    done = threading.Event()

    def writer():
        while not done.is_set():
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # (no reader: ENXIO)
            except OSError:
                pass
            time.sleep(0.01)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for source in (str(pipe), str(src)):
            with pytest.raises(UserError, match=rf"^--source {re.escape(str(pipe))}: not a regular file \(a named "
                                                rf"pipe\?\); prepare.py reads its files more than once: save it to a "
                                                rf"file$"):
                prepare.prepare("text", source=source, out_dir=str(tmp_path / "data"))
    finally:
        done.set()
        thread.join()


def test_source_folder_says_which_files_it_left_out(tmp_path, capsys):
    """A .md, a .txt.gz or a file without a suffix among a folder's .txt files was left out without a word (their text
    missing from the model); one line now counts them by type. Hidden files and the dataset prepare.py wrote into
    the folder itself are no one's text: not counted."""
    src = tmp_path / "src"
    write(src / "a.jsonl", "\n".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}!"},
                                                              {"role": "assistant", "content": "Hello."}]})
                                     for i in range(5)))
    for name in ("notes.md", "more.md", "b.txt.gz", "LICENSE", ".DS_Store"):
        write(src / name, "x")
    # its files go into src itself: token files, masks (a chat set) and vocabulary (trained)
    prepare.prepare("chat", source=str(src), out_dir=str(tmp_path), name="src", vocab_size=262)
    assert {"train_mask.bin", "tokenizer.tiktoken"} <= set(os.listdir(src))
    assert capsys.readouterr().err == (f"warning: --source {src}: left out 4 file(s) of other types (2 .md, 1 .gz, "
                                       f"1 no suffix); prepare.py reads .txt, .jsonl, .json, .parquet\n")
    for name in ("notes.md", "more.md", "b.txt.gz", "LICENSE"):
        os.remove(src / name)
    prepare.prepare("chat", source=str(src), out_dir=str(tmp_path / "data"))
    assert capsys.readouterr().err == ""


def test_source_folder_of_other_files_says_what_it_holds(tmp_path):
    """A folder of notes in Markdown, none of them .txt, was refused as holding "no .txt, .jsonl, .json, .parquet
    files", not what it holds nor how its plain text gets in. A site's notes beside its _config.yml are notes, not
    source code to name the .yml of."""
    src = tmp_path / "notes"
    for name in ("a.md", "b.md", "sub/c.md", "todo.org", "_config.yml"):
        write(src / name, "Some notes.")
    with pytest.raises(UserError, match=rf"^--source {re.escape(str(src))}: no .txt, .jsonl, .json, .parquet files in "
                                        rf"this folder \(it holds 3 .md, (1 .org, 1 .yml|1 .yml, 1 .org)\); Markdown "
                                        rf"notes are read when named: --source '{re.escape(str(src))}/\*\*/\*\.md'$"):
        prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"))
    for name in ("a.md", "b.md", "sub/c.md", "_config.yml"):
        os.remove(src / name)
    with pytest.raises(UserError, match=r"\(it holds 1 .org\); plain text is read from files named \.txt$"):
        prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"))


def test_source_code_is_read_when_named_whole_and_exact(tmp_path, enc):
    """A folder of Python was refused as holding "no .txt ... files", and a pattern of its .py files as of an
    "unsupported file type": a model of one's code needed every file renamed. Code named is read as plain text, each
    file one document exactly as written (indentation, tabs, blank lines), a literal <|endoftext|> in it (tokenizer
    code) text, not a separator that cut the file and stripped its pieces' indentation, and a first line that reads
    as a JSON record code, not a .txt file's mistake. In a folder .py files are
    left out (a dataset's loading script), the error naming the pattern that reads them, not the README.md."""
    src = tmp_path / "code"
    files = {"a.py": 'def f(x):\n\tif x:\n\t\treturn "<|endoftext|>"\n\n\n    # trailing   \n',
             "pkg/b.py": "    indented = 1\nclass B:\n    pass\n",
             "pkg/c.py": '{"text": "a dict, not a JSON record to name .jsonl"}\n'}
    for name, text in files.items():
        write(src / name, text)
    write(src / "README.md", "# The code\n")
    with pytest.raises(UserError, match=rf"\(it holds 3 .py, 1 .md\); source code is read when named: "
                                        rf"--source '{re.escape(str(src))}/\*\*/\*\.py'$"):
        prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"))
    out = tmp_path / "data"
    prepare.prepare("text", source=str(src / "**" / "*.py"), out_dir=str(out), name="code", val_fraction=0.5)
    meta = json.loads((out / "code" / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 3
    text = "".join(enc.decode(np.fromfile(out / "code" / f"{split}.bin", dtype=np.uint16).tolist())
                   for split in ("train", "val"))
    assert all(t in text for t in files.values()), text


def test_a_folders_files_not_utf8_are_named_together(tmp_path):
    """A folder of notes saved on Windows, several in cp1252 (CRLF lines, curly quotes): the error named the first
    only, a run for each file to learn of the next. It names the others (the first few, the rest counted), with or
    without a vocabulary's pass, which reads a sample of the files first."""
    src = tmp_path / "notes"
    write(src / "0.txt", "A note in UTF-8.\n")
    for i in range(1, 6):
        path = src / "old" / f"{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"Caf\u00e9 \u201cnote\u201d {i}\r\n".encode("cp1252"))
    # a .parquet of text records beside them, binary and no UTF-8: read by pyarrow, not named with them
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"text": "A record."}]), src / "rows.parquet")
    old = re.escape(str(src / "old"))
    for vocab_size in (None, 300):
        with pytest.raises(UserError, match=rf"^{old}/1.txt is not UTF-8 text .* it looks like Windows-1252 .*; then "
                                            rf"move the original out of {re.escape(str(src))}: prepare.py reads every "
                                            rf"file of a --source folder; 4 other files not UTF-8 either: {old}/2.txt, "
                                            rf"{old}/3.txt, {old}/4.txt, and 1 more$"):
            prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"), vocab_size=vocab_size)


def test_text_files_with_no_text_are_named_in_the_summary(tmp_path, capsys):
    """A folder of 5 notes, 2 of them empty (or blank lines alone) gave "3 documents" and no word of the others, as
    records with nothing to train on are counted and located."""
    src = tmp_path / "notes"
    for name, text in (("a.txt", "One."), ("b.txt", ""), ("sub/c.txt", "\r\n  \n"), ("d.txt", "Two."),
                       ("e.txt", "Three.")):
        write(src / name, text)
    prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"), tokenizer="gpt2")
    out = capsys.readouterr().out
    assert f"\n  left out 2 files with no text: {src / 'b.txt'}, {src / 'sub' / 'c.txt'}\n" in out, out


def test_markdown_notes_are_read_as_text_by_the_patterns_a_folder_names(tmp_path, enc, capsys):
    """A folder of notes, Markdown (Obsidian's, front matter and all) in nested folders beside .txt, an empty note, a
    picture and the editor's settings: the .md were left out, with no way in but renaming a tree of notes. The warning
    names the patterns that read them, and a named .md is plain text, as a .txt is, less its front matter."""
    src = tmp_path / "notes"
    write(src / "journal" / "2024" / "jan.md", "---\ntitle: January\n---\n\n# January\n\nI walked the dog.\n")
    write(src / "journal" / "feb.markdown", "Cold again. Made soup.\n")
    write(src / "work" / "meeting.txt", "Meeting notes\n\n- ship the release\n")
    write(src / "empty.md", "")
    write(src / ".obsidian" / "app.json", '{"theme": "dark"}')
    (src / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    out = str(tmp_path / "data")
    prepare.prepare("text", source=str(src), out_dir=out, tokenizer="gpt2")
    err = capsys.readouterr().err
    assert re.match(rf"warning: --source {re.escape(str(src))}: left out 4 file\(s\) of other types \(2 .md, .*\); "
                    rf"prepare.py reads .txt, .jsonl, .json, .parquet; Markdown notes are read when named: --source ",
                    err), err
    patterns = shlex.split(err.split("--source ")[-1])
    assert patterns == [f"{src}/**/*.markdown", f"{src}/**/*.md", f"{src}/**/*.txt"]
    meta = prepare.prepare("text", source=patterns, out_dir=out, name="notes", tokenizer="gpt2")
    got = capsys.readouterr()
    assert got.err == ""
    text = "".join(enc.decode(load(os.path.join(out, "notes"), split, meta)[0].tolist()) for split in ("train", "val"))
    assert "I walked the dog" in text and "Made soup" in text and "ship the release" in text
    # the front matter is metadata, not the note: trained on, a model learnt to begin a note with its title and tags
    assert "title:" not in text and "---" not in text and "# January\n\nI walked the dog" in text
    assert "\n  left out the front matter (--- key: value ... ---) of 1 Markdown note\n" in got.out, got.out
    # beside records, a .md is a dataset's card (README.md): left out, and no patterns named
    chats = tmp_path / "chats"
    write(chats / "a.jsonl", "".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}"},
                                           {"role": "assistant", "content": "Hello."}]}) + "\n" for i in range(10)))
    write(chats / "README.md", "# My chats\n")
    prepare.prepare("chat", source=str(chats), out_dir=out, name="chats", tokenizer="gpt2")
    assert capsys.readouterr().err == (f"warning: --source {chats}: left out 1 file(s) of other types (1 .md); "
                                       f"prepare.py reads .txt, .jsonl, .json, .parquet\n")


def test_the_patterns_named_for_markdown_notes_match_a_folder_named_with_brackets(tmp_path, capsys):
    """A folder named "notes [2024]": the patterns its warning named matched nothing, its brackets read as a set of
    characters ("no file or folder matches this pattern"). Its name is escaped in them."""
    src = tmp_path / "notes [2024]"
    for i in range(4):
        write(src / f"{i}.txt", f"A note, number {i}, of a few words.\n")
        write(src / "sub" / f"{i}.md", f"# Note {i}\n\nMore words in Markdown.\n")
    out = str(tmp_path / "data")
    prepare.prepare("text", source=str(src), out_dir=out, tokenizer="gpt2")
    patterns = shlex.split(capsys.readouterr().err.split("--source ")[-1])
    assert len(patterns) == 2
    meta = prepare.prepare("text", source=patterns, out_dir=out, name="notes", tokenizer="gpt2")
    assert sum(split["documents"] for split in meta["splits"].values()) == 8


def test_source_file_hard_linked_twice_is_read_once(tmp_path, enc):
    """A file in two folders by hard link (cp -al, a backup beside the data) is one file, as a symlinked one is: it was
    read twice, every document duplicated and its val documents in train too."""
    src = tmp_path / "src"
    write(src / "a" / "x.txt", EOT.join(f"x{i}" for i in range(10)))
    (src / "b").mkdir()
    os.link(src / "a" / "x.txt", src / "b" / "x.txt")
    meta = prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "data"))
    train, _ = load(tmp_path / "data" / "text", "train", meta)
    val, _ = load(tmp_path / "data" / "text", "val", meta)
    docs = enc.decode(train.tolist()).split(EOT)[:-1] + enc.decode(val.tolist()).split(EOT)[:-1]
    assert sorted(docs) == sorted(f"x{i}" for i in range(10))



def test_chitchat_is_deterministic(tmp_path, enc):
    a = prepare.prepare("chitchat", out_dir=str(tmp_path / "a"))
    b = prepare.prepare("chitchat", out_dir=str(tmp_path / "b"))
    assert a["splits"] == b["splits"] and a["splits"]["train"]["documents"] + a["splits"]["val"]["documents"] >= 2000
    for f in ("train.bin", "val.bin", "train_mask.bin", "val_mask.bin"):
        assert (tmp_path / "a" / "chitchat" / f).read_bytes() == (tmp_path / "b" / "chitchat" / f).read_bytes()
    ids, mask = load(tmp_path / "a" / "chitchat", "val", a)
    spans = masked_spans(enc, ids, mask)
    assert spans and all(s.endswith(IM_END) for s in spans)
    assert "<|im_start|>system\n" in \
        enc.decode(np.fromfile(tmp_path / "a" / "chitchat" / "train.bin", np.uint16).tolist())
    # every conversation once: val (the tail) held 18 that train had too
    docs = [json.dumps(d) for d in prepare.chitchat_docs()]
    assert len(docs) == 5000 and len(set(docs)) == 5000


def test_dailydialog_and_gsm8k_sources(tmp_path, enc):
    """DailyDialog's original release (turns separated by __eou__, the user speaks first) and GSM8K's question/answer
    lines (calculator annotations dropped) as --source files: turns, roles and masks exact."""
    lines = ["Hi , how are you ? __eou__ I ' m fine , thanks . __eou__ Good ! __eou__",
             "Where is it ? __eou__ Over there . __eou__"] * 5
    meta = prepare.prepare("dailydialog", source=write(tmp_path / "dialogues.txt", "\n".join(lines) + "\n"),
                           out_dir=str(tmp_path / "data"), pack=0)
    ids, mask = load(tmp_path / "data" / "dailydialog", "train", meta)
    first, second = (prepare.alternate(t) for t in (["Hi, how are you?", "I'm fine, thanks.", "Good!"],
                                                     ["Where is it?", "Over there."]))
    assert ids.tolist()[:len(render_chat(enc, first)[0]) + 1] == render_chat(enc, first)[0] + [enc.eot_token]
    assert first[2]["role"] == "user" and masked_spans(enc, ids, mask) == \
        ["I'm fine, thanks." + IM_END, "Over there." + IM_END] * 4 + ["I'm fine, thanks." + IM_END]
    # an empty turn is dropped, and the turns after it keep their speakers (they swapped: the mask trained on the
    # user's words), in DailyDialog's lines and in `dialog` lists alike
    empty = ["U1 hi __eou__  __eou__ U2 asks __eou__ A2 replies __eou__", "U a __eou__ A b __eou__"] * 5
    meta = prepare.prepare("dailydialog", source=write(tmp_path / "empty.txt", "\n".join(empty)),
                           out_dir=str(tmp_path / "data"), name="empty", pack=0)
    ids, mask = load(tmp_path / "data" / "empty", "train", meta)
    assert masked_spans(enc, ids, mask) == ["A2 replies" + IM_END, "A b" + IM_END] * 4 + ["A2 replies" + IM_END]
    records = [json.dumps({"dialog": ["U1 hi", "", "U2 asks", "A2 replies"]}),
               json.dumps({"dialog": ["U a", "A b"]})] * 5
    meta = prepare.prepare("chat", source=write(tmp_path / "dialog.jsonl", "\n".join(records)),
                           out_dir=str(tmp_path / "data"), name="dialog", pack=0)
    ids, mask = load(tmp_path / "data" / "dialog", "train", meta)
    assert masked_spans(enc, ids, mask) == ["A2 replies" + IM_END, "A b" + IM_END] * 4 + ["A2 replies" + IM_END]

    qa = [{"question": f"Tom has {i} apples and buys {i}. How many?",
           "answer": f"He has {i}+{i} = <<{i}+{i}={2 * i}>>{2 * i}.\n#### {2 * i}"}
          for i in range(10)]
    meta = prepare.prepare("knowledge", source=write(tmp_path / "gsm8k.jsonl", "\n".join(json.dumps(r) for r in qa)),
                           out_dir=str(tmp_path / "data"), pack=0)
    ids, mask = load(tmp_path / "data" / "knowledge", "train", meta)
    assert masked_spans(enc, ids, mask) == [f"He has {i}+{i} = {2 * i}.\n#### {2 * i}" + IM_END for i in range(9)]
    assert enc.decode(ids.tolist()).startswith("<|im_start|>user\nTom has 0 apples and buys 0. How many?<|im_end|>\n")
    # the annotations go by the record's shape (an answer ending in GSM8K's `#### ` line), not the dataset's name: the
    # same file as a chat set kept them, and another question/answer set's << and >> (C++) were cut out of knowledge
    meta = prepare.prepare("chat", source=str(tmp_path / "gsm8k.jsonl"), out_dir=str(tmp_path / "data"), pack=0)
    ids, mask = load(tmp_path / "data" / "chat", "train", meta)
    assert masked_spans(enc, ids, mask) == [f"He has {i}+{i} = {2 * i}.\n#### {2 * i}" + IM_END for i in range(9)]
    code = [{"question": f"How do I print x and read y? ({i})", "answer": "cout << x; cin >> y;"} for i in range(10)]
    meta = prepare.prepare("knowledge", source=write(tmp_path / "cpp.jsonl", "\n".join(json.dumps(r) for r in code)),
                           out_dir=str(tmp_path / "data"), name="cpp", pack=0)
    ids, mask = load(tmp_path / "data" / "cpp", "train", meta)
    assert masked_spans(enc, ids, mask) == ["cout << x; cin >> y;" + IM_END] * 9


def test_an_answer_with_a_heading_of_hashes_before_its_end_keeps_its_angle_brackets():
    """Only an answer whose last line is GSM8K's `#### ` final answer loses its << >> annotations: a Markdown heading
    (#### In C++) above code keeps the code's << and >>."""
    answer = "#### In C++\ncout << x; cin >> y;\nThat prints x."
    assert prepare.record_doc({"question": "How?", "answer": answer}, "x")[1]["content"] == answer


def test_a_dailydialog_line_of_one_utterance_is_left_out_and_counted(tmp_path, capsys):
    """A DailyDialog line of one utterance has no reply to train on: it was kept, a conversation of the user's words
    alone, all out of the loss and unsaid. It is left out and counted in the summary, as a `dialog` record of one turn
    (or any record with no reply) is."""
    lines = ["Hi , how are you ? __eou__ Fine . __eou__", "Anyone there ? __eou__", "",
             "Where is it ? __eou__ Here . __eou__",
             "Hello ? __eou__  __eou__"] * 4
    meta = prepare.prepare("dailydialog", source=write(tmp_path / "dialogues.txt", "\n".join(lines) + "\n"),
                           out_dir=str(tmp_path / "data"), pack=0)
    said = capsys.readouterr().out
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] + meta["val_repeats"] == 8
    assert f"left out 8 records of {tmp_path / 'dialogues.txt'} with nothing to train on (no reply, an empty or null " \
           f"one, or empty text): lines 2, 5, 7, 10, 12, 15, 17, 20" in said
    ids, _ = load(tmp_path / "data" / "dailydialog", "train", meta)
    assert "Anyone there?" not in get_tokenizer("gpt2").decode(ids.tolist())


def test_plain_text_given_to_dailydialog_is_refused_naming_the_format(tmp_path):
    """--dataset dailydialog reads a .txt as DailyDialog's release: plain text, a line each read as one utterance with
    no reply, was refused as "no documents found in FILE: give files that hold text" (it does), and beside a file of
    dialogues it trained on nothing of it, unsaid. Both now stop naming the format and the way out."""
    text = write(tmp_path / "notes.txt", "Once upon a time there was a cat.\nIt sat on a mat.\n")
    dialogues = write(tmp_path / "dialogues.txt", "Hi , how are you ? __eou__ Fine . __eou__\n" * 10)
    for source in ([text], [dialogues, text]):
        with pytest.raises(UserError, match=f"^{re.escape(text)}: no line is a dialogue with a reply .*__eou__.*"
                                            f"--dataset text$"):
            prepare.prepare("dailydialog", source=source, out_dir=str(tmp_path / "data"), pack=0)
    # a file of blank lines holds no text to refuse: beside dialogues it is made as before
    blank = write(tmp_path / "blank.txt", "\n\n")
    meta = prepare.prepare("dailydialog", source=[dialogues, blank], out_dir=str(tmp_path / "data"), pack=0)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10


def test_tidy_dailydialog():
    assert prepare.tidy_dailydialog(" I ’ m here , too . What ' s up ? It costs $ 5 ( or so ) ... right.But I ' "
                                    "Ve  to go ! ") == \
        "I'm here, too. What's up? It costs $5 (or so)... right. But I've to go!"
    assert prepare.tidy_dailydialog("We call it ' Sleeping Beauty ' . __eou__ ' Yes ' , at 5 o ' clock .") == \
        "We call it ' Sleeping Beauty '. __eou__ ' Yes ', at 5 o'clock."


def test_a_dialog_record_is_tidied_as_dailydialog_alone():
    """DailyDialog's spacing is undone in its own records only: another set's `dialog` (a user's code, "x , y") is
    trained on as written."""
    record = {"dialog": ["I ' m here , too .", "print(x , y)"]}
    assert [m["content"] for m in prepare.record_doc(record, "x", "dailydialog")] == ["I'm here, too.", "print(x, y)"]
    assert [m["content"] for m in prepare.record_doc(record, "x", "chat")] == record["dialog"]


# -----------------------------------------------------------------------------
# packing: conversations laid out in blocks that train.py's windows keep whole

def packing_conversations(n=40, seed=0):
    """Conversations of 1-6 exchanges whose every message names its conversation and turn (c7 t2): most fit a
    64-token block, many do not (they are cut before turns), and one has a single reply longer than a block."""
    rng = random.Random(seed)
    convs = []
    for c in range(n):
        conv = [{"role": "system", "content": f"c{c} system"}] if c % 5 == 0 else []
        for t in range(rng.randint(1, 6)):
            conv += [{"role": "user", "content": f"c{c} t{t} question" + " why" * rng.randint(0, 6)},
                     {"role": "assistant", "content": f"c{c} t{t} answer" + " yes" * rng.randint(0, 12)}]
        convs.append(conv)
    convs[7][-1]["content"] += " very long" * 80
    return convs


def documents(ids, eot):
    """(start, end) of each document of a token array, its closing <|endoftext|> included; lone ones (padding) left
    out."""
    ends = prepare.document_ends(ids, eot).tolist()
    return [(s, e) for s, e in zip([0, *ends[:-1]], ends) if e - s > 1]


def test_packing_keeps_conversations_inside_blocks(tmp_path, enc, capsys):
    B = 64
    convs = packing_conversations()
    src = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": c}) for c in convs))
    meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), pack=B, val_fraction=0.2)
    folder = tmp_path / "data" / "chat"
    check_sizes(folder, meta)
    assert meta["pack"] == B
    start, eot = enc.encode_single_token(IM_START), enc.eot_token
    n_val = meta["splits"]["val"]["documents"]
    assert n_val == 8 and meta["splits"]["train"]["documents"] == 32
    crossing = 0
    for split, first in (("train", 0), ("val", len(convs) - n_val)):
        part = convs[first:first + meta["splits"][split]["documents"]]
        ids, mask = load(folder, split, meta)
        # whole blocks and one more <|endoftext|>, so train.py's last window (B + 1 tokens) exists
        assert len(ids) % B == 1 and ids[-1] == eot and len(mask) == len(ids)
        pieces = documents(ids, eot)
        # every other <|endoftext|> is padding, with mask 0
        assert (ids == eot).sum() - len(pieces) == meta["splits"][split]["padding"] > 0
        assert not mask[ids == eot].any()
        inside_long = np.zeros(len(ids), bool)
        by_conv = {}
        for s, e in pieces:
            assert ids[s] == start  # every piece starts a turn
            role, c = re.match(r"<\|im_start\|>(\w+)\nc(\d+) ", enc.decode(ids[s:s + 8].tolist())).groups()
            if s // B != (e - 1) // B:
                # only an exchange longer than a block crosses a block boundary (conversation 7's last: its question
                # and its long reply, whose start trains with the question), and it starts a block
                assert e - s > B and s % B == 0 and (ids[s:e] == start).sum() == 2 and (role, c) == ("user", "7")
                inside_long[s + 1:e] = True
                crossing += 1
            # cut before a user message (a reply stays with its question), and every piece trains on something: not
            # the question alone of an exchange longer than a block (nor a system message alone)
            assert role in ("system", "user") and mask[s:e].any()
            by_conv.setdefault(int(c), []).append((s, e))
        # every block starts with <|im_start|> or padding (mask 0: the target a window takes from the next block
        # never counts), except inside that one long turn
        firsts = np.arange(0, len(ids), B)
        assert set(ids[firsts[~inside_long[firsts]]].tolist()) <= {start, eot}
        # the pieces of each conversation, put back in turn order, are exactly the conversation
        assert sorted(by_conv) == list(range(first, first + len(part)))
        for c, spans in by_conv.items():
            conv_ids, conv_mask = render_chat(enc, convs[c])
            if len(conv_ids) + 1 <= B:
                assert len(spans) == 1  # a conversation that fits a block is never cut

            def turn(span):  # where a piece starts: (exchange, 0 for the question, 1 for the answer)
                t = re.match(r"<\|im_start\|>(\w+)\nc\d+ t(\d+)", enc.decode(ids[span[0]:span[0] + 8].tolist()))
                return (int(t[2]), t[1] == "assistant") if t else (-1, 0)  # the system message comes first
            spans.sort(key=turn)
            assert sum((ids[s:e - 1].tolist() for s, e in spans), []) == conv_ids
            assert sum((mask[s:e - 1].tolist() for s, e in spans), []) == conv_mask
        # masked tokens decode to exactly the assistant replies, each with its <|im_end|>
        replies = [m["content"] + IM_END for conv in part for m in conv
                   if m["role"] == "assistant" and m.get("weight", 1)]
        assert Counter(masked_spans(enc, ids, mask)) == Counter(replies)
        # counted (and said): the conversations in pieces, and those cut inside an exchange, a reply from its question
        assert meta["splits"][split]["in_pieces"] == sum(len(render_chat(enc, c)[0]) + 1 > B for c in part) > 0
        assert meta["splits"][split]["cut_exchanges"] == (7 in by_conv)
    assert crossing == 1  # conversation 7's long reply
    pieces = meta["splits"]["train"]["in_pieces"] + meta["splits"]["val"]["in_pieces"]
    # a line a fact, its number first, each short of 120 columns: as one line it ran to 330 characters
    out = capsys.readouterr().out
    said = out[out.index("  packed in blocks"):].splitlines()[:3]
    assert re.fullmatch(r"  packed in blocks of 64 tokens, \d+\.\d% padding \(train\.py --block_size 64\)", said[0])
    assert said[1:] == [f"  {pieces} conversations longer than a block in pieces (a larger --pack and train.py "
                        f"--block_size keep more whole)",
                        "    1 of them cut inside an exchange longer than a block: a reply there trains without all of "
                        "its question"]
    assert max(map(len, said)) <= 120
    # a count of none is no line ("0 of them ending in turns that train nothing")
    tails = meta["splits"]["train"]["untrained_tails"] + meta["splits"]["val"]["untrained_tails"]
    assert tails == 0 and "ending in turns" not in out


def test_packing_random_conversations_at_random_block_sizes(tmp_path, enc):
    """Seeded: conversations of random turns (special-token strings, combining marks, blank and weight-0 replies, system
    messages), some ending with a question after their last reply trained on, packed in blocks from 8 tokens up, where
    single turns are longer than a block: every turn comes back once and whole, under the mask exactly when it is a
    reply trained on, but the turns after the last reply trained on of a conversation longer than a block, left out
    and counted; every piece starts a turn and trains on something, and lies inside a block unless it starts one."""
    rng = random.Random(4)
    words = ["a", "Cat", " ", "\n", "\t", "é", "e\u0301", "🐉", "こんにちは", EOT, IM_END, IM_START, "word " * 9]

    def text():
        return "".join(rng.choice(words) for _ in range(rng.randint(0, 8)))
    start, eot = enc.encode_single_token(IM_START), enc.eot_token
    tails = 0
    for case in range(12):
        convs = []
        for c in range(rng.randint(2, 12)):
            conv = [{"role": "system", "content": text()}] if rng.random() < 0.2 else []
            for _ in range(rng.randint(1, 4)):
                conv += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
                if rng.random() < 0.1:
                    conv[-1]["weight"] = 0
            conv[-1] = {"role": "assistant", "content": f"c{c} {text()}"}  # a reply trained on: the record is kept
            if rng.random() < 0.4:  # then turns that train nothing: a question, perhaps a reply of weight 0 or blank
                conv.append({"role": "user", "content": text()})
                if rng.random() < 0.3:
                    conv.append({"role": "assistant", "content": rng.choice(["", " \n", text()]), "weight": 0})
            convs.append(conv)
        B = rng.choice([8, 12, 16, 24, 32, 64])
        src = write(tmp_path / f"c{case}.jsonl", "\n".join(json.dumps({"messages": c}) for c in convs))
        meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), name=f"c{case}", pack=B,
                               val_fraction=0)
        folder = tmp_path / "data" / f"c{case}"
        check_sizes(folder, meta)
        ids, mask = load(folder, "train", meta)
        assert len(ids) % B == 1 and not mask[ids == eot].any()
        turns = Counter()
        for s, e in documents(ids, eot):
            assert ids[s] == start and mask[s:e].any()
            assert s // B == (e - 1) // B or (e - s > B and s % B == 0)
            at = [*np.flatnonzero(ids[s:e] == start) + s, e - 1]  # each turn, to the piece's <|endoftext|>
            turns.update((enc.decode(ids[a:b].tolist()), tuple(mask[a:b].tolist())) for a, b in zip(at, at[1:]))
        # an empty reply is out of the loss, as one of weight 0 is
        want = [[({**m, "weight": 0} if m["role"] == "assistant" and not m["content"].strip() else m) for m in c]
                for c in convs]
        longer = [len(render_chat(enc, c)[0]) + 1 > B for c in convs]
        # a conversation longer than a block is cut into pieces, and its turns after the last reply trained on are
        # left out (as a piece they trained nothing); one that fits a block is not cut and keeps them
        kept = [c[:1 + max(i for i, m in enumerate(c) if m["role"] == "assistant" and m.get("weight", 1))] if long
                else c for c, long in zip(want, longer)]
        assert turns == Counter((enc.decode(i), tuple(k)) for i, k in (render_chat(enc, [m]) for c in kept for m in c))
        assert meta["splits"]["train"]["in_pieces"] == sum(longer)
        assert meta["splits"]["train"]["untrained_tails"] == sum(len(k) < len(c) for k, c in zip(kept, want))
        tails += meta["splits"]["train"]["untrained_tails"]
    assert tails  # (the seed gives some)


def test_packing_keeps_a_system_message_with_the_reply_it_frames(tmp_path, enc):
    """A system message and a question train nothing: a conversation longer than a block is not cut after them, which
    gave a piece that trained nothing and a reply trained without its instructions. They start a block, and the reply
    crosses into the next one: its start trains with them."""
    conv = [{"role": "system", "content": "You answer as a pirate. " * 6},
            {"role": "user", "content": "Where is the treasure?"},
            {"role": "assistant", "content": "Arr, under the old oak by the bay."}]
    src = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": conv}) for _ in range(4)))
    meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), pack=64, val_fraction=0.25)
    ids, mask = load(tmp_path / "data" / "chat", "train", meta)
    conv_ids, conv_mask = render_chat(enc, conv)
    assert 64 < len(conv_ids) + 1 < 2 * 64 and any(conv_mask[:64])  # the reply starts in the first block
    for s, e in documents(ids, enc.eot_token):
        assert s % 64 == 0 and ids[s:e - 1].tolist() == conv_ids and mask[s:e].any()
    assert meta["splits"]["train"]["in_pieces"] == meta["splits"]["train"]["cut_exchanges"] == 3


def test_a_conversation_in_pieces_leaves_out_a_tail_that_trains_nothing(tmp_path, enc, capsys):
    """A conversation longer than a block that ends in turns that train nothing (a question with no reply, a reply of
    weight 0) left them as a piece of their own, all mask 0: context for no reply, costing compute for no loss. They
    are left out, and counted; a conversation that fits a block is not cut and keeps its final question."""
    B = 32
    qa = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris is the capital of France."}]
    ask = {"role": "user", "content": "And of Italy, please tell me?"}
    short = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Bye?"}]
    convs = [qa + [ask], qa + [ask, {"role": "assistant", "content": "Rome.", "weight": 0}], short]
    assert len(render_chat(enc, qa)[0]) + 1 <= B < len(render_chat(enc, convs[0])[0]) + 1  # (38 tokens: 25 and 13)
    assert len(render_chat(enc, short)[0]) + 1 <= B
    src = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": c}) for c in convs))
    meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), pack=B, val_fraction=0)
    ids, mask = load(tmp_path / "data" / "chat", "train", meta)
    docs = documents(ids, enc.eot_token)
    assert all(mask[s:e].any() for s, e in docs)
    assert sorted(ids[s:e - 1].tolist() for s, e in docs) == sorted([render_chat(enc, qa)[0]] * 2
                                                                    + [render_chat(enc, short)[0]])
    split = meta["splits"]["train"]
    assert (split["documents"], split["in_pieces"], split["untrained_tails"], split["cut_exchanges"]) == (3, 2, 2, 0)
    assert "\n  2 conversations longer than a block in pieces\n    2 of them ending in turns that train nothing, " \
           "left out: a question with no reply, replies of weight 0 or empty\n" in capsys.readouterr().out
    # conversations that all fit a block: the packing line alone ("0 conversations longer than a block" is no line)
    prepare.prepare("chat", source=write(tmp_path / "fit.jsonl", json.dumps({"messages": short})),
                    out_dir=str(tmp_path / "data"), name="fit", pack=B, val_fraction=0)
    out = capsys.readouterr().out
    assert "packed in blocks" in out and "longer than a block" not in out and "of them" not in out
    # the bare packer, as the fuzz found it: a piece of the question and its reply, none of the question alone
    packer = prepare.Packer(None, B, enc, None)
    conv_ids, conv_mask = render_chat(enc, convs[0])
    pieces = packer.pieces(np.array(conv_ids + [enc.eot_token], np.uint32), np.array(conv_mask + [0], np.uint8))
    assert [p.tolist() for p, _ in pieces] == [render_chat(enc, qa)[0] + [enc.eot_token]]


def test_a_short_tail_left_out_of_many_pieces_is_counted(tmp_path, enc):
    """The count of tails left out compares the pieces' turns, without the <|endoftext|> each piece ends with, with the
    conversation's: a 6-token final question after 7 pieces is counted, not hidden by the pieces' 7 end tokens."""
    conv = [m for t in range(7) for m in ({"role": "user", "content": f"question {t} " + "why " * 5},
                                          {"role": "assistant", "content": f"answer {t} " + "yes " * 6})]
    conv.append({"role": "user", "content": "q"})
    ids, mask = render_chat(enc, conv)
    out = prepare.Split(str(tmp_path), "train", np.uint16, True)
    packer = prepare.Packer(out, 32, enc, prepare.token_bytes(enc))
    packer.add(np.array(ids + [enc.eot_token], np.uint16), np.array(mask + [0], np.uint8))
    packer.close()
    assert (out.in_pieces, out.untrained_tails) == (1, 1) and out.tokens - out.padding == 7 * 29
    out.discard()


def test_a_long_conversation_first_fills_what_is_left_of_the_open_block(tmp_path, enc, monkeypatch):
    """A conversation longer than a block starts a block: what waits that fits the open block goes in it first, not
    after padding (with more conversations waiting than the lookahead holds, the open block is part full)."""
    monkeypatch.setattr(prepare, "PACK_LOOKAHEAD", 1)
    out = prepare.Split(str(tmp_path), "train", np.uint16, True)
    packer = prepare.Packer(out, 16, enc, prepare.token_bytes(enc))
    for n in (10, 6, 32):
        packer.add(np.array([enc.encode_single_token(IM_START)] + [11] * (n - 2) + [enc.eot_token], np.uint16),
                   np.zeros(n, np.uint8))
    packer.close()
    assert (out.tokens, out.padding) == (49, 1)
    out.discard()


def test_a_system_without_pread_prepares_the_same_files(tmp_path, monkeypatch):
    """Packing, the val cut and the val dedup read back the token files being written (common.read_at): on Windows,
    which has no os.pread, by a seek that must not move where the writing goes on."""
    convs = packing_conversations()
    convs[-1] = convs[0]  # in train and in val: dropped from val
    # two sources: the second is written after the first's val cut read the file back
    src = [write(tmp_path / f"c{i}.jsonl", "\n".join(json.dumps({"messages": c}) for c in convs[i::2])) for i in (0, 1)]
    built = {}
    for has_pread in (True, False):
        if not has_pread:
            monkeypatch.delattr(os, "pread", raising=False)
        out = tmp_path / str(has_pread)
        prepare.prepare("chat", source=src, out_dir=str(out), pack=64, val_fraction=0.2)
        built[has_pread] = {f: (out / "chat" / f).read_bytes() for f in sorted(os.listdir(out / "chat"))
                            if f.endswith(".bin")}
    assert built[True] and built[False] == built[True]


def test_packing_reads_the_unpacked_tokens_in_chunks_not_through_a_memmap(tmp_path, enc, monkeypatch):
    # every page a memmap has read stays counted in the process's memory: packing a 300 MB chat set held its whole
    # unpacked file (180 MB), and a 10B-token set would show 30 GB
    eot = enc.eot_token
    # one longer than a chunk; text at the end
    docs = [[5, 6, eot], [7] * 9 + [eot], [eot], [8, 9, 10, 11, eot], [12, 13]]
    split = prepare.Split(str(tmp_path), "train", np.uint16, True)
    for d in docs:
        split.write(np.array(d, np.uint16), (np.array(d) % 2).astype(np.uint8), 1, 0)

    def no_memmap(*a, **k):
        raise AssertionError("np.memmap of a split's file")
    monkeypatch.setattr(np, "memmap", no_memmap)
    got = list(prepare.split_documents(split, eot, chunk=4))
    assert [ids.tolist() for ids, _ in got] == docs
    assert [m.tolist() for _, m in got] == [[t % 2 for t in d] for d in docs]
    # each its own array: a document the packer holds back must not keep its whole chunk in memory
    assert all(ids.base is None and m.base is None for ids, m in got)
    assert prepare.split_ends(split, eot, chunk=4).tolist() == np.cumsum([len(d) for d in docs]).tolist()
    split.discard()
    # and a packed chat set, its repeats left out of val, prepared end to end without one
    convs = packing_conversations()
    convs[-1] = convs[0]  # in train and in val: dropped from val
    src = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": c}) for c in convs))
    meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), pack=64, val_fraction=0.2)
    assert meta["splits"]["val"]["documents"] == 7 and meta["pack"] == 64


def test_a_document_of_many_chunks_is_searched_and_copied_once(tmp_path, enc, monkeypatch):
    # split_documents joined what a chunk left of a document to the next chunk and searched the whole again: a
    # document over many chunks (4M tokens each) was searched and copied again at each, quadratic in its length
    eot, chunk = enc.eot_token, 5
    docs = [[5, eot], [7] * 400 + [eot], [8, 9, eot], [3] * 201]  # one of 80 chunks; text after the last end
    split = prepare.Split(str(tmp_path), "train", np.uint16, True)
    for d in docs:
        split.write(np.array(d, np.uint16), np.ones(len(d), np.uint8), 1, 0)
    searched, copied = [], []
    flatnonzero, concatenate = np.flatnonzero, np.concatenate

    def counting_flatnonzero(a):
        searched.append(np.size(a))
        return flatnonzero(a)

    def counting_concatenate(arrays, *a, **k):
        out = concatenate(arrays, *a, **k)
        copied.append(out.size)
        return out
    monkeypatch.setattr(np, "flatnonzero", counting_flatnonzero)
    monkeypatch.setattr(np, "concatenate", counting_concatenate)
    got = list(prepare.split_documents(split, eot, chunk=chunk))
    monkeypatch.undo()
    assert [ids.tolist() for ids, _ in got] == docs and [len(m) for _, m in got] == [len(d) for d in docs]
    n = split.tokens
    assert sum(searched) == n  # each token once (the old way: 20,709 of these 607)
    assert sum(copied) <= 2 * n  # each token and its mask flag once into its document (the old way: 41,418)
    split.discard()


def test_the_val_cut_finds_the_last_documents_reading_backwards(tmp_path, enc):
    # the cut held every document end of a source in memory (8 bytes a document, as many as the corpus has); it reads
    # the tail of the stream instead, a chunk at a time, whatever the chunk boundaries
    eot = enc.eot_token
    split = prepare.Split(str(tmp_path), "train", np.uint16, False)
    split.write(np.array([1, 2, eot], np.uint16), None, 1, 0)  # an earlier stream's
    start, docs = split.tokens, [[5, 6, eot], [7] * 9 + [eot], [eot], [8, 9, 10, 11, eot]]
    for d in docs:
        split.write(np.array(d, np.uint16), None, 1, 0)
    ends = (start + np.cumsum([len(d) for d in docs])).tolist()
    for chunk in (1, 3, 4, 100):
        for k in range(1, len(docs) + 1):
            want = ends[len(docs) - k - 1] if k < len(docs) else start
            assert prepare.last_documents_start(split, start, k, eot, chunk=chunk) == want, (chunk, k)
    split.discard()


def test_val_repeats_are_looked_up_in_trains_keys_a_chunk_at_a_time(monkeypatch):
    # np.isin sorted all of train's document keys together with val's: a copy and an argsort of an array of a key per
    # train document, at the end of a big run
    rng = np.random.default_rng(0)
    train = rng.integers(-2**63, 2**63 - 1, 1000, dtype=np.int64)
    val = np.concatenate([train[[3, 999, 500, 3]], rng.integers(-2**63, 2**63 - 1, 50, dtype=np.int64)])
    rng.shuffle(val)
    looked_up, searchsorted = [], np.searchsorted
    monkeypatch.setattr(np, "isin", None)
    monkeypatch.setattr(np, "searchsorted",
                        lambda a, v, *x, **k: looked_up.append(len(v)) or searchsorted(a, v, *x, **k))
    assert prepare.keys_in(val, train, chunk=64).tolist() == [x in set(train.tolist()) for x in val.tolist()]
    assert max(looked_up) <= 64
    assert prepare.keys_in(np.zeros(0, np.int64), train).tolist() == []


def test_a_model_named_as_tokenizer_packs_at_its_context(tmp_path, capsys, monkeypatch):
    """--tokenizer naming a model (a checkpoint, a Hugging Face model folder) prepares the data for it: without --pack,
    conversations are packed in blocks of its context, which train.py fine-tunes it at (they were packed at 256 whatever
    the model's, and train.py warned and gave a command with --pack). The checkpoint is loaded once; the fingerprint,
    rebuild_command and the summary follow the block used. --pack given is kept; gpt2 and a .tiktoken file, which
    name no model, keep DEFAULT_PACK; plain text is never packed."""
    import checkpoint  # here: they import torch, which prepare.py does not
    import hf
    from model import GPT, GPTConfig
    enc = get_tokenizer("gpt2")

    def model(context, variant="gpt2", vocab=enc):
        return GPT(GPTConfig(block_size=context, vocab_size=vocab.n_vocab, n_layer=1, n_head=2, n_embd=16,
                             variant=variant))
    ck = str(tmp_path / "m64.pt")
    checkpoint.save_checkpoint(ck, model(64), enc)
    src = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": c}) for c in packing_conversations()))
    out, folder = str(tmp_path / "data"), str(tmp_path / "data" / "chat")
    loads, real_load = [], checkpoint.load_checkpoint
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "load_checkpoint", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
        setup_tokenizer._load_tokenizer.cache_clear()
        meta = prepare.prepare("chat", source=src, tokenizer=ck, out_dir=out)
    assert len(loads) == 1  # its vocabulary and its context from one load
    assert meta["pack"] == 64 and meta["options"]["pack"] is None
    said = capsys.readouterr().out
    assert re.search(r"packed in blocks of 64 tokens, [\d.]+% padding \(the context of the model --tokenizer names; "
                     r"train\.py --block_size 64\)\n", said)
    # a conversation cut inside an exchange: the way out was "a larger --pack and train.py --block_size", which the
    # model's fine-tune warns of and refuses. Said is the model's limit instead
    assert " conversations longer than a block in pieces (the model --tokenizer names trains on at most 64 " \
           "tokens)\n    1 of them cut inside an exchange" in said, said
    ids, mask = load(folder, "train", meta)
    assert len(ids) % 64 == 1 and ids[0] == enc.encode_single_token(IM_START)  # blocks of 64, and one more token
    # the same again, without --pack or with --pack 64, or by its rebuild command (no --pack: the model's again), or
    # bare (the tokenizer kept): up to date
    command = prepare.rebuild_command(meta, folder)
    assert "--pack" not in command and f"--tokenizer {ck}" in command
    for again in ({"tokenizer": ck}, {"tokenizer": ck, "pack": 64}, {}):
        prepare.prepare("chat", source=src, out_dir=out, **again)
        assert "is up to date" in capsys.readouterr().out
    prepare.main(shlex.split(command)[2:])
    assert "is up to date" in capsys.readouterr().out
    # --pack given wins
    assert prepare.prepare("chat", source=src, tokenizer=ck, out_dir=out, pack=32)["pack"] == 32
    said = capsys.readouterr()
    assert re.search(r"packed in blocks of 32 tokens, [\d.]+% padding \(train\.py --block_size 32\)\n", said.out)
    assert said.err == "" and "(a larger --pack and train.py --block_size keep more whole)" in said.out  # short of 64
    # past the model's context, said at the start (train.py warned of it only when fine-tuning, its windows cutting
    # conversations apart), not refused: a new model of that context trains on the blocks whole
    assert prepare.prepare("chat", source=src, tokenizer=ck, out_dir=out, pack=128)["pack"] == 128
    assert capsys.readouterr().err == f"warning: --pack 128 is longer than the context of {ck} (64 tokens): " \
                                      f"fine-tuning that model on this data cuts conversations between its windows; " \
                                      f"give --pack 64 or less (no --pack: its context)\n"
    # a Hugging Face model folder: the context in its config.json (GPT-2's n_positions, Llama's
    # max_position_embeddings), read without its weights. A small vocabulary: GPT-2's 50k merges take seconds to
    # write and check, in Python
    tiktoken_file = str(tmp_path / "v.tiktoken")
    setup_tokenizer.train_bpe(["c1 t2 question why yes answer system very long " * 50], 280, tiktoken_file, "text")
    small = get_tokenizer(tiktoken_file)
    for variant, context in (("gpt2", 128), ("modern", 96)):
        hf.export_folder(model(context, variant, small), small, str(tmp_path / variant))
        assert prepare.prepare("chat", source=src, tokenizer=str(tmp_path / variant), out_dir=out,
                               name=variant)["pack"] == context
    # no model named: DEFAULT_PACK
    for tokenizer in ("gpt2", tiktoken_file):
        assert prepare.prepare("chat", source=src, tokenizer=tokenizer, out_dir=out, name="named")["pack"] == \
            prepare.DEFAULT_PACK
    # plain text with a model's vocabulary: not packed, and not refused as --pack on text is
    text = write(tmp_path / "t.txt", EOT.join(DOCS))
    assert prepare.prepare("text", source=text, tokenizer=ck, out_dir=out)["pack"] == 0


def test_pack_option(tmp_path, capsys, monkeypatch):
    src = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"messages": c}) for c in packing_conversations()))
    out, folder = str(tmp_path / "data"), str(tmp_path / "data" / "chat")
    assert prepare.prepare("chat", source=src, out_dir=out, pack=64)["pack"] == 64
    capsys.readouterr()
    prepare.prepare("chat", source=src, out_dir=out, pack=64)
    assert "is up to date" in capsys.readouterr().out
    assert prepare.prepare("chat", source=src, out_dir=out, pack=128)["pack"] == 128  # another block rebuilds
    assert prepare.prepare("chat", source=src, out_dir=out)["pack"] == prepare.DEFAULT_PACK
    prepare.prepare("chat", source=src, out_dir=out, pack=prepare.DEFAULT_PACK)  # the default, named
    assert "is up to date" in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "train_mask.bin", "val.bin", "val_mask.bin"]
    # interrupted while packing: the dataset stays as it was, and no temporary file is left
    before = snapshot(folder)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(prepare.Packer, "close", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        prepare.prepare("chat", source=src, out_dir=out, pack=32)
    assert snapshot(folder) == before
    text = write(tmp_path / "t.txt", EOT.join(DOCS))
    assert prepare.prepare("text", source=text, out_dir=out)["pack"] == 0  # plain text is never packed
    with pytest.raises(UserError, match=r"--pack 64: only conversations are packed.*drop --pack"):
        prepare.prepare("text", source=text, out_dir=out, name="text2", pack=64)
    # with --vocab_size, refused before the vocabulary is trained (minutes on a large corpus), not after
    with monkeypatch.context() as m, pytest.raises(UserError, match=r"--pack 64: only conversations are packed"):
        m.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: [*texts] and pytest.fail("a vocabulary was trained"))
        prepare.prepare("text", source=text, out_dir=out, name="text2", pack=64, vocab_size=300)
    for bad in (-1, prepare.MAX_PACK + 1, 10**30):  # 10**30: numpy's "Maximum allowed dimension exceeded"
        with pytest.raises(UserError, match=rf"^--pack {bad}: give the training context in tokens"):
            prepare.prepare("chat", source=src, out_dir=out, pack=bad)
    assert not os.path.exists(os.path.join(out, "text2"))


# -----------------------------------------------------------------------------
# mixing datasets by weight

def fake_mirror(root):
    """A DATA_MIRROR with a small DailyDialog (own validation file) and GSM8K (val: its tail); every message names
    its source and document (dd3, ddval1, kn42)."""
    dialogues = [f"dd{i} hello there __eou__ dd{i} reply" + " ok" * (i % 5) + " __eou__" for i in range(60)]
    write(root / "dailydialog" / "dialogues_train.txt", "\n".join(dialogues) + "\n")
    write(root / "dailydialog" / "dialogues_validation.txt",
          "\n".join(f"ddval{i} hi __eou__ ddval{i} bye __eou__" for i in range(6)) + "\n")
    qa = [{"question": f"kn{i} what is {i} + {i}?", "answer": f"kn{i} it is {2 * i}."} for i in range(100)]
    write(root / "gsm8k" / "train.jsonl", "\n".join(json.dumps(r) for r in qa) + "\n")


def source_tokens(enc, ids):
    """Tokens of each source in a mixed split, told apart by the markers of fake_mirror; and the documents' markers."""
    tokens, markers = Counter(), []
    for s, e in documents(ids, enc.eot_token):
        marker = re.match(r"<\|im_start\|>user\n([a-z]+\d+) ", enc.decode(ids[s:s + 12].tolist()))[1]
        tokens["dailydialog" if marker.startswith("dd") else "knowledge"] += e - s
        markers.append(marker)
    return tokens, markers


def test_mix_follows_the_weights(tmp_path, monkeypatch, enc, capsys):
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    prepare.main(["--mix", "dailydialog:1,knowledge:3", "--name", "mychat", "--out_dir", out, "--pack", "64"])
    folder = tmp_path / "data" / "mychat"
    assert sorted(os.listdir(out)) == ["mychat"]  # one folder, named by --name
    # a weight too small for one document of its source: refused (the source was silently left out of train)
    with pytest.raises(UserError, match=r"--mix: knowledge:1e-09 is too small a weight for one of its documents in "
                                        r"train: raise it, or leave knowledge out"):
        prepare.main(["--mix", "dailydialog:1,knowledge:1e-9", "--name", "tiny", "--out_dir", out, "--pack", "64"])
    assert sorted(os.listdir(out)) == ["mychat"]
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "train_mask.bin", "val.bin", "val_mask.bin"]
    meta = json.loads((folder / "meta.json").read_text())
    check_sizes(folder, meta)
    assert meta["dataset"] == "mix" and meta["name"] == "mychat" and meta["has_mask"] and meta["pack"] == 64
    assert "dailydialog (weight 1)" in meta["source"] and "knowledge (weight 3)" in meta["source"]

    # train: the tokens of each source, counted in the data itself, follow the weights
    ids, mask = load(folder, "train", meta)
    tokens, markers = source_tokens(enc, ids)
    assert tokens["dailydialog"] / sum(tokens.values()) == pytest.approx(0.25, abs=0.02)
    assert {name: m["train_tokens"] for name, m in meta["mix"].items()} == tokens
    assert {name: m["weight"] for name, m in meta["mix"].items()} == {"dailydialog": 1, "knowledge": 3}
    # knowledge is above its natural share: its documents repeat; dailydialog below it: a subset, none repeated
    counts = Counter(markers)
    assert meta["mix"]["knowledge"]["train_documents"] > 90 and max(counts[f"kn{i}"] for i in range(90)) >= 2
    assert meta["mix"]["dailydialog"]["train_documents"] < 60 and max(counts[f"dd{i}"] for i in range(60)) == 1
    assert not any(m.startswith("ddval") for m in markers) and counts["kn95"] == 0  # val documents stay out of train
    assert Counter(masked_spans(enc, ids, mask)) == Counter(
        (f"dd{m[2:]} reply" + " ok" * (int(m[2:]) % 5) if m.startswith("dd") else f"{m} it is {2 * int(m[2:])}.")
        + IM_END
        for m in markers)

    # val: every source's own validation documents, once each
    val, val_mask = load(folder, "val", meta)
    assert sorted(source_tokens(enc, val)[1]) == \
        sorted([f"ddval{i}" for i in range(6)] + [f"kn{i}" for i in range(90, 100)])
    assert meta["mix"]["dailydialog"]["val_documents"] == 6 and meta["mix"]["knowledge"]["val_documents"] == 10
    assert sorted(masked_spans(enc, val, val_mask)) == \
        sorted([f"ddval{i} bye" + IM_END for i in range(6)]
               + [f"kn{i} it is {2 * i}." + IM_END for i in range(90, 100)])

    # --pack 0: the same documents and replies one after the other, each closed by its <|endoftext|>, no padding
    unpacked = prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 3}, name="unpacked", out_dir=out, pack=0)
    ids0, mask0 = load(tmp_path / "data" / "unpacked", "train", unpacked)
    assert unpacked["pack"] == 0 and unpacked["splits"]["train"]["padding"] == 0
    assert Counter(source_tokens(enc, ids0)[1]) == counts
    assert Counter(masked_spans(enc, ids0, mask0)) == Counter(masked_spans(enc, ids, mask))
    assert (ids0 == enc.eot_token).sum() == unpacked["splits"]["train"]["documents"] == len(markers)
    # written in many small writes (a big corpus's flushes of about Packer.FLUSH_TOKENS): the same files
    flush = prepare.Packer.FLUSH_TOKENS
    monkeypatch.setattr(prepare.Packer, "FLUSH_TOKENS", 50)
    prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 3}, name="flushed", out_dir=out, pack=64)
    tokens_files = {f: v[2] for f, v in snapshot(folder).items() if f.endswith(".bin")}
    assert {f: v[2] for f, v in snapshot(tmp_path / "data" / "flushed").items() if f.endswith(".bin")} == tokens_files
    monkeypatch.setattr(prepare.Packer, "FLUSH_TOKENS", flush)

    # the same mix again is a no-op; --force rebuilds the same bytes; other weights rebuild
    before = snapshot(folder)
    capsys.readouterr()
    prepare.main(["--mix", "dailydialog:1,knowledge:3", "--name", "mychat", "--out_dir", out, "--pack", "64"])
    assert "up to date" in capsys.readouterr().out and snapshot(folder) == before
    prepare.main(["--mix", "dailydialog:1,knowledge:3", "--name", "mychat", "--out_dir", out, "--pack",
                  "64", "--force"])
    assert {f: v[2] for f, v in snapshot(folder).items()} == {f: v[2] for f, v in before.items()}
    meta = prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 1}, name="mychat", out_dir=out, pack=64)
    tokens, _ = source_tokens(enc, load(folder, "train", meta)[0])
    assert tokens["dailydialog"] / sum(tokens.values()) == pytest.approx(0.5, abs=0.02)
    # a vocabulary trained on the mix: on the text of every source
    meta = prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 1}, name="mix300", out_dir=out, vocab_size=300)
    small = get_tokenizer(meta["tokenizer"])
    assert meta["vocab_size"] == 300 and len(small.encode_ordinary("ddval")) < 5 \
        and len(small.encode_ordinary("kn")) == 1


def test_a_mixs_counts_are_of_what_packing_kept(tmp_path, monkeypatch, enc, capsys):
    """meta.json's mix counted each source's tokens as tokenized, before packing cut conversations longer than a block
    into pieces (an <|endoftext|> each) and left out their ends that train nothing: `--mix chat:3,chitchat:1,
    dailydialog:1` said 60.2%, 20.1% and 20.1% of the train tokens, 100.4% in all. They are counted in the files."""
    fake_mirror(tmp_path / "mirror")
    # DailyDialog's odd dialogues end with a question: longer than a block, in pieces, that question left out
    dialogues = [" __eou__ ".join(f"dd{i} turn {t} of a dialogue that runs on" for t in range(7 + i % 2)) + " __eou__"
                 for i in range(40)]
    write(tmp_path / "mirror" / "dailydialog" / "dialogues_train.txt", "\n".join(dialogues) + "\n")
    # and its validation dialogues too: val's counts are of what packing kept as well
    write(tmp_path / "mirror" / "dailydialog" / "dialogues_validation.txt",
          "\n".join(d.replace("dd", "ddval") for d in dialogues[:6]) + "\n")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    for pack in ("64", "0"):  # (0: the documents one after the other, each counted whole)
        capsys.readouterr()
        prepare.main(["--mix", "dailydialog:1,knowledge:1", "--name", f"cut{pack}", "--out_dir", out, "--pack", pack])
        meta = json.loads((tmp_path / "data" / f"cut{pack}" / "meta.json").read_text())
        for split in ("train", "val"):
            assert (meta["splits"][split]["untrained_tails"] > 0 and meta["splits"][split]["in_pieces"] > 0) == \
                (pack != "0"), meta["splits"][split]
            tokens, _ = source_tokens(enc, load(tmp_path / "data" / f"cut{pack}", split, meta)[0])
            assert {name: m[f"{split}_tokens"] for name, m in meta["mix"].items()} == tokens, split
        shares = re.findall(r"weight 1, ([\d.]+)% of the train tokens", capsys.readouterr().out)
        assert len(shares) == 2 and sum(map(float, shares)) == pytest.approx(100, abs=0.1), shares


def test_the_number_of_cores_changes_no_byte(tmp_path, monkeypatch):
    """prepare.py encodes on every core (THREADS, each thread a share of a batch of texts): a dataset made on a 64-core
    machine and on a laptop must be the same bytes, or the same --seed trains on other windows there."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    src = write(tmp_path / "corpus.txt", EOT.join(DOCS))
    made = []
    for threads in (1, 3):
        monkeypatch.setattr(prepare, "THREADS", threads)
        out = tmp_path / f"data{threads}"
        prepare.prepare("text", source=src, out_dir=str(out))
        prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 2}, name="mix", out_dir=str(out), pack=64)
        made.append({f"{d}/{f}": (out / d / f).read_bytes() for d in ("text", "mix") for f in os.listdir(out / d)})
    assert len(made[0]) == 3 + 5 and made[0] == made[1]  # (tokens, masks and meta.json)


def test_a_mixs_val_leaves_out_what_another_of_its_datasets_has(tmp_path, monkeypatch, enc, capsys):
    """A document one dataset of a mix validates on and another trains on (or validates on too) was in the mix's val:
    each dataset left out only its own repeats, so the val loss read better than the model is, or weighed it twice."""
    fake_mirror(tmp_path / "mirror")
    qa = [json.loads(line) for line in (tmp_path / "mirror" / "gsm8k" / "train.jsonl").read_text().splitlines()]
    qa[5] = {"question": "ddval0 hi", "answer": "ddval0 bye"}  # in knowledge's train, and dailydialog's own val
    qa[95] = {"question": "dd3 Hello  there", "answer": "dd3 reply ok ok ok"}  # in its val (the tail), dd's train
    qa[97] = {"question": "ddval1 hi", "answer": "ddval1 bye"}  # in both vals
    write(tmp_path / "mirror" / "gsm8k" / "train.jsonl", "\n".join(json.dumps(r) for r in qa) + "\n")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    capsys.readouterr()
    for weights in ({"dailydialog": 1, "knowledge": 1}, {"dailydialog": 1, "knowledge": 9}):  # whatever the weights
        meta = prepare.prepare("mix", mix=weights, out_dir=str(tmp_path / "data"), pack=64)
        val, _ = load(tmp_path / "data" / "mix", "val", meta)
        markers = source_tokens(enc, val)[1]
        assert sorted(markers) == sorted([f"ddval{i}" for i in range(1, 6)] + [f"kn{i}" for i in range(90, 100)
                                                                             if i not in (95, 97)])
        assert (meta["mix"]["dailydialog"]["val_documents"], meta["mix"]["knowledge"]["val_documents"],
                meta["val_repeats"]) == (5, 8, 3)
        assert "(already in train or val)" in capsys.readouterr().out
        train, _ = load(tmp_path / "data" / "mix", "train", meta)
        assert "ddval1" not in source_tokens(enc, train)[1]  # (in neither dataset's train)
    # every val document in another dataset's train: val keeps them (train.py needs one), each once, with a warning
    qa[:6] = [{"question": f"ddval{i} hi", "answer": f"ddval{i} bye"} for i in range(6)]
    qa[90:] = [{"question": f"dd{i} hello there", "answer": f"dd{i} reply" + " ok" * (i % 5)} for i in range(10)]
    write(tmp_path / "mirror" / "gsm8k" / "train.jsonl", "\n".join(json.dumps(r) for r in qa) + "\n")
    meta = prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 1}, out_dir=str(tmp_path / "data"), pack=64)
    assert (meta["mix"]["dailydialog"]["val_documents"], meta["mix"]["knowledge"]["val_documents"]) == (6, 10)
    assert "every document of the val split is also in train" in capsys.readouterr().err


def test_a_mixs_bad_records_are_named_or_left_out_as_a_datasets(tmp_path, monkeypatch, capsys):
    """A bad record in one of a mix's datasets stops the run as it does that dataset's own, and --skip_bad_records
    leaves it out: the mix of what is left."""
    fake_mirror(tmp_path / "mirror")
    fake_mirror(tmp_path / "clean")
    qa = tmp_path / "mirror" / "gsm8k" / "train.jsonl"
    lines = qa.read_text().splitlines()
    lines[41] = '{"question": "kn41 cut'
    qa.write_text("\n".join(lines) + "\n")
    (tmp_path / "clean" / "gsm8k" / "train.jsonl").write_text("\n".join(lines[:41] + lines[42:]) + "\n")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    argv = ["--mix", "dailydialog:1,knowledge:2", "--out_dir", out, "--pack", "64"]
    with pytest.raises(UserError, match=rf"^{re.escape(str(qa))} line 42: malformed JSON \(.*\); fix it, or pass "
                                        rf"--skip_bad_records to leave it out$"):
        prepare.main(argv)
    prepare.main(argv + ["--skip_bad_records"])
    assert f"  --skip_bad_records: left out 1 bad record of {qa}: line 42\n" in capsys.readouterr().out
    meta = prepare.read_meta(os.path.join(out, "mix"))
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "clean"))
    clean = prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 2}, out_dir=out, name="clean", pack=64)
    assert meta["splits"] == clean["splits"] and meta["mix"] == clean["mix"]
    assert np.array_equal(load(os.path.join(out, "mix"), "train", meta)[0],
                          load(os.path.join(out, "clean"), "train", clean)[0])


def test_other_mix_weights_keep_the_mixs_vocabulary(tmp_path, monkeypatch, capsys):
    """A mix's vocabulary learns each source's train text once, whatever the weights: other weights rebuild the tokens
    with it (it was trained again: minutes on a real mix, for the same vocabulary); other sources train a new one."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out, vocab = str(tmp_path / "data"), tmp_path / "data" / "mix" / "tokenizer.tiktoken"
    prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 1}, out_dir=out, vocab_size=300)
    trained = vocab.read_bytes()
    capsys.readouterr()
    meta = prepare.prepare("mix", mix={"dailydialog": 1, "knowledge": 3}, out_dir=out, vocab_size=300)
    assert "trained a" not in capsys.readouterr().out and vocab.read_bytes() == trained
    assert meta["mix"]["knowledge"]["weight"] == 3 \
        and meta["tokenizer_hash"] == tokenizer_hash(get_tokenizer(str(vocab)))
    prepare.prepare("mix", mix={"dailydialog": 1}, out_dir=out, vocab_size=300)
    assert "trained a" in capsys.readouterr().out


def test_a_mixs_vocabulary_from_before_the_weights_left_its_fingerprint_is_kept(tmp_path, monkeypatch, capsys):
    """A mix prepared before its vocabulary's fingerprint left out the weights (it had them): its unchanged command
    finds it up to date, the vocabulary kept, not trained again for minutes, and the fingerprint moves to today's."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    mix, out = {"dailydialog": 1, "knowledge": 2}, str(tmp_path / "data")
    meta = prepare.prepare("mix", mix=mix, out_dir=out, vocab_size=300)
    then = prepare.fingerprint("mix", prepare.find_mix_source(mix), "trained, 300 ids", None, None,
                               prepare.DEFAULT_VAL_FRACTION, mix=mix, version=None)  # (as it was made then)
    assert then != meta["vocab_fingerprint"]
    path = tmp_path / "data" / "mix" / "meta.json"
    path.write_text(json.dumps(dict(meta, vocab_fingerprint=then)))
    capsys.readouterr()
    assert prepare.prepare("mix", mix=mix, out_dir=out, vocab_size=300)["vocab_fingerprint"] == \
        meta["vocab_fingerprint"]
    said = capsys.readouterr().out
    assert "up to date" in said and "trained a" not in said
    assert json.loads(path.read_text())["vocab_fingerprint"] == meta["vocab_fingerprint"]


def test_a_dataset_without_val_names_no_train_command(tmp_path, capsys, monkeypatch):
    """--val_fraction 0's summary ended in "train on it: python train.py --dataset mine", which train.py refuses (it
    evaluates on the val split): it says what reads the dataset instead. With a val split the command is there."""
    src = write(tmp_path / "mine.txt", EOT.join(DOCS))
    out = str(tmp_path / "data")
    prepare.main(["--source", src, "--name", "mine", "--out_dir", out, "--val_fraction", "0"])
    said = capsys.readouterr().out
    assert "train on it" not in said and said.splitlines()[-1] == (
        "  no val split (--val_fraction 0): train.py, which evaluates on one, refuses it; eval.py reads it with "
        "--split train")
    meta = prepare.main(["--source", src, "--name", "mine", "--out_dir", out]) or json.loads(
        (tmp_path / "data" / "mine" / "meta.json").read_text())
    command = shlex.split(capsys.readouterr().out.splitlines()[-1].removeprefix("  train on it: "))
    # its val, a few hundred tokens, holds no window of the default 256: train.py refused the command as it was; it
    # names the largest power of two that fits (a window: --block_size + 1 tokens)
    val = meta["splits"]["val"]["tokens"]
    assert val < 257 and command[command.index("--block_size") + 1] == str(1 << ((val - 1).bit_length() - 1))
    # --mix, and every dataset at once (no --dataset), end the same way
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: {"splits": {"val": {"tokens": 0}}})
    for argv in (["--mix", "dailydialog:1,knowledge:1", "--name", "m"], []):
        prepare.main([*argv, "--out_dir", out, "--val_fraction", "0"])
        said = capsys.readouterr().out.splitlines()
        assert said and set(said) == {"  no val split (--val_fraction 0): train.py, which evaluates on one, refuses "
                                      "it; eval.py reads it with --split train"}, said


def test_val_fraction_0_keeps_no_val_split_with_or_without_limit(tmp_path, monkeypatch):
    """--val_fraction 0 on a set with its own validation split (DailyDialog) keeps none of it, --limit or not: --limit
    kept one dialogue of it (its share, at least one) and no --limit all of them."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    for limit in (None, 20):
        meta = prepare.prepare("dailydialog", out_dir=out, name=f"dd{limit}", limit=limit, val_fraction=0)
        assert meta["splits"]["val"]["documents"] == 0 and meta["splits"]["train"]["documents"] == (limit or 60)
        assert meta["val_split"] == "none (--val_fraction 0)"
    # its share otherwise: 2 of 20, all 6 without --limit
    assert prepare.prepare("dailydialog", out_dir=out, name="d", limit=20)["splits"]["val"]["documents"] == 2
    assert prepare.prepare("dailydialog", out_dir=out, name="all")["splits"]["val"]["documents"] == 6


def test_the_limit_line_is_said_only_of_a_set_with_train_only_extra_files(tmp_path, monkeypatch, capsys):
    """The --limit line (the story set's: the files val is cut from and the train-only extra files, each up to the
    limit) was said of every set with files of role "train": DailyDialog's, which has its own validation file and no
    extra ones, and a mix of it, whose streams are its datasets' together."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    for dataset, mix in (("dailydialog", None), ("mix", {"dailydialog": 1, "knowledge": 1})):
        capsys.readouterr()
        prepare.prepare(dataset, mix=mix, out_dir=out, limit=20)
        said = capsys.readouterr().out
        assert "20 train" in said or "dailydialog: weight 1" in said, said  # (its summary, where the line would be)
        assert "--limit" not in said, said


def test_mix_bad_input(tmp_path):
    # a chat set of one's own is no built-in one: said so, with the way to put one's files together
    for spec, words in (("story:1", re.escape("'story' is not one of the conversation sets --mix weighs (dailydialog, "
                                              "chat, knowledge, chitchat); files of your own go into one dataset "
                                              "together with --source (--source mine.jsonl theirs.jsonl "
                                              "--name NAME)") + "$"),
                        ("nope", "'nope' is not one of the conversation sets"),
                        ("dailydialog:0", "weight of dailydialog must be a positive number"),
                        ("chat:x", "weight of chat must be a positive"), ("chat:1,chat:2", "chat is named twice"),
                        ("chat:1e308,chitchat:1e308", "the weights are too large to add up; they are relative, as in "
                                                      "chat:1,chitchat:2")):
        with pytest.raises(UserError, match=words):
            prepare.parse_mix(spec)
    assert prepare.parse_mix("dailydialog, chat:2.5") == {"dailydialog": 1.0, "chat": 2.5}
    # the options given are named, not one the user never typed
    for given, words in ((["--dataset", "chat"], "drop --dataset$"), (["--source", "x.jsonl"], "drop --source$"),
                         (["--dataset", "chat", "--source", "x.jsonl"], "drop --dataset and --source$")):
        with pytest.raises(UserError, match=words):
            prepare.main(["--mix", "chat:1", *given, "--out_dir", str(tmp_path)])
    with pytest.raises(UserError, match="--mix takes dataset names"):
        prepare.prepare("mix", mix={"chat": 1}, source="x.jsonl", out_dir=str(tmp_path))


# -----------------------------------------------------------------------------
# rebuilding

def test_rerun_is_a_noop_force_and_changes_rebuild(tmp_path, capsys):
    src = tmp_path / "corpus.txt"
    write(src, EOT.join(DOCS))
    out, folder = str(tmp_path / "data"), str(tmp_path / "data" / "text")
    first = prepare.prepare("text", source=str(src), out_dir=out)
    before = snapshot(folder)
    capsys.readouterr()
    assert prepare.prepare("text", source=str(src), out_dir=out) == first
    assert "is up to date" in capsys.readouterr().out
    assert snapshot(folder) == before
    # --pack 0 (no packing) changes nothing for text, which is never packed: not a rebuild each way
    for pack in (0, None):
        prepare.prepare("text", source=str(src), out_dir=out, pack=pack)
        assert "is up to date" in capsys.readouterr().out and snapshot(folder) == before
    with pytest.raises(UserError, match=r"^--pack 64: only conversations are packed"):  # as a first build: no
        prepare.prepare("text", source=str(src), out_dir=out, pack=64)  # "up to date" that --pack was taken
    assert snapshot(folder) == before
    # but conversations put in its place are packed, and --pack matters to them again
    chats = write(tmp_path / "chats.jsonl", FORMATS["messages"][1])
    for pack, block in ((None, 256), (0, 0), (None, 256)):
        assert prepare.prepare("text", source=chats, out_dir=out, name="swap", pack=pack)["pack"] == block
        assert prepare.prepare("text", source=chats, out_dir=out, name="swap", pack=pack)["pack"] == block
    prepare.prepare("text", source=str(src), out_dir=out, name="swap")  # text in the conversations' place: no masks
    assert sorted(os.listdir(tmp_path / "data" / "swap")) == ["meta.json", "train.bin", "val.bin"]
    prepare.prepare("text", source=str(src), out_dir=out, name="swap2")  # text, then conversations in its folder
    assert prepare.prepare("text", source=chats, out_dir=out, name="swap2")["pack"] == 256
    assert prepare.prepare("text", source=chats, out_dir=out, name="swap2", pack=0)["pack"] == 0
    # --force rebuilds: same bytes, new files
    prepare.prepare("text", source=str(src), out_dir=out, force=True)
    after = snapshot(folder)
    assert {f: v[2] for f, v in after.items()} == {f: v[2] for f, v in before.items()}
    assert after["train.bin"][0] != before["train.bin"][0]
    # changed options and changed input rebuild: --limit both ways (make demo's --limit 10000, then the whole set, was
    # not to be "up to date" with 10,000 documents)
    for limit, n in ((5, 5), (None, len(DOCS))):
        meta = prepare.prepare("text", source=str(src), out_dir=out, limit=limit)
        assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == n
    assert prepare.prepare("text", source=str(src), out_dir=out, val_fraction=0.2)["splits"]["val"]["documents"] \
        == round(len(DOCS) * 0.2)
    write(src, EOT.join(DOCS + ["One more story."]))
    meta = prepare.prepare("text", source=str(src), out_dir=out, val_fraction=0.2)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(DOCS) + 1
    # a folder holding another dataset is not replaced without --force
    with pytest.raises(UserError, match="holds the 'text' dataset"):
        prepare.prepare("chitchat", out_dir=out, name="text")


def test_interrupted_run_leaves_no_bin_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    src = tmp_path / "corpus.txt"
    write(src, EOT.join(DOCS))
    out, folder = str(tmp_path / "data"), str(tmp_path / "data" / "text")
    monkeypatch.setattr(prepare, "BATCH_DOCS", 4)
    encode, calls = prepare.encode_batch, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(*args)

    monkeypatch.setattr(prepare, "encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=str(src), out_dir=out)
    assert not os.path.exists(folder)  # no .bin, no meta.json, no temporary files, no empty folder

    monkeypatch.setattr(prepare, "encode_batch", encode)
    prepare.prepare("text", source=str(src), out_dir=out)
    before = snapshot(folder)
    write(src, EOT.join(DOCS[::-1]))  # changed input: the next run rebuilds, and is interrupted
    calls.clear()
    monkeypatch.setattr(prepare, "encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=str(src), out_dir=out)
    assert snapshot(folder) == before

    # interrupted while renaming the new files into place: the folder no longer claims to be complete
    monkeypatch.setattr(prepare, "encode_batch", encode)
    replace = prepare.fsync_replace

    def interrupted_replace(tmp, path):
        if path.endswith("val.bin"):
            raise KeyboardInterrupt
        replace(tmp, path)

    monkeypatch.setattr(prepare, "fsync_replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=str(src), out_dir=out)
    # new train.bin, old val.bin, no meta.json; the new one left under its temporary name says they are prepare.py's:
    # the next run rebuilds them, not refusing them as another tool's
    assert sorted(os.listdir(folder)) == [f"meta.json.{os.getpid()}.tmp", "train.bin", "val.bin"]
    monkeypatch.setattr(prepare, "fsync_replace", replace)
    assert prepare.prepare("text", source=str(src), out_dir=out)["splits"]["train"]["documents"] > 0
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "val.bin"]


def test_a_second_prepare_of_a_folder_being_built_is_refused(tmp_path, monkeypatch):
    """A prepare.py started while another built the same folder built it too and said it was complete; the first,
    then interrupted (Ctrl-C), removed the folder it had made for its first build, and that dataset with it."""
    src, out = write(tmp_path / "c.txt", EOT.join(DOCS)), str(tmp_path / "data")
    folder = os.path.join(out, "notes")
    encode, seen = prepare.encode_batch, []

    def meanwhile(*args):  # the first build is tokenizing: the second starts now, and then the first is interrupted
        if not seen:
            seen.append(1)
            with pytest.raises(UserError, match=rf"^another prepare.py is building {re.escape(folder)}: wait for it to "
                                                r"end, or build this one elsewhere with --name$"):
                prepare.prepare("text", source=src, out_dir=out, name="notes", limit=10)
            raise KeyboardInterrupt
        return encode(*args)
    monkeypatch.setattr(prepare, "encode_batch", meanwhile)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=src, out_dir=out, name="notes")
    assert seen and not os.path.exists(out)  # the interrupted first build leaves nothing: its lock, its --out_dir
    meta = prepare.prepare("text", source=src, out_dir=out, name="notes")  # the folder is free again
    check_sizes(folder, meta)
    assert os.listdir(out) == ["notes"]


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """`kill` or `timeout` (SIGTERM) ended prepare.py on the spot: its temporary token files stayed for good and a
    first build's folder was left without meta.json. It now runs the same clean-up as Ctrl-C and exits 143."""
    src = tmp_path / "big.txt"
    write(src, EOT.join(f"Story {i}: " + "the quick brown fox jumps over the lazy dog. " * 40 for i in range(20000)))
    folder = tmp_path / "data" / "big"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "prepare.py", "--source", str(src), "--name", "big", "--out_dir",
                          str(tmp_path / "data")], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (folder.exists() and any(f.endswith(".tmp") for f in os.listdir(folder))):
        assert p.poll() is None and time.time() < deadline, "prepare.py ended before it wrote anything"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143, err.decode()
    assert not folder.exists()  # a first build: nothing left, as after Ctrl-C


def test_a_reader_gone_after_the_summary_keeps_the_new_dataset(tmp_path, monkeypatch, capsys):
    """`prepare.py | head -1` with stdout unbuffered (PYTHONUNBUFFERED=1, as Docker images set): head took the summary's
    first line and left, the next line raised BrokenPipeError, and a first build's folder, complete and just said to be
    made, was removed as after a failure. It stays; the run still ends (run_main: exit 141)."""
    src = write(tmp_path / "chats.jsonl", "".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    out, folder = str(tmp_path / "data"), tmp_path / "data" / "chat"

    class HeadGone:  # a pipe whose reader left after the first line
        read = ""

        def write(self, text):
            if "\n" in self.read:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")
            HeadGone.read += text
            return len(text)

        def flush(self):
            pass

    stdout = sys.stdout
    monkeypatch.setattr(sys, "stdout", HeadGone())
    with pytest.raises(BrokenPipeError):
        prepare.prepare("chat", source=src, out_dir=out)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert re.fullmatch(r".*/chat: \d+ documents .*\n", HeadGone.read)  # what the user read
    meta = common.read_meta(folder)
    assert meta and prepare.is_complete(folder, meta)
    capsys.readouterr()
    prepare.prepare("chat", source=src, out_dir=out)
    assert "is up to date" in capsys.readouterr().out


def test_a_rebuild_windows_refuses_over_open_files_keeps_the_old_dataset(tmp_path, monkeypatch):
    """On Windows a file another process holds open (train.py's memmap of train.bin) cannot be replaced: the rebuild
    had removed meta.json first, then failed with "Permission denied", and the old dataset was gone."""
    src = write(tmp_path / "chats.jsonl", "".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    out, folder = str(tmp_path / "data"), tmp_path / "data" / "chat"
    prepare.prepare("chat", source=src, out_dir=out)
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    replace = os.replace

    def held_open(name):
        def windows_replace(a, b):
            if os.path.basename(b) == name:
                raise PermissionError(13, "Access is denied", str(a), None, str(b))
            return replace(a, b)
        return windows_replace
    monkeypatch.setattr(os, "replace", held_open("train.bin"))  # the first file the rebuild renames into place
    with pytest.raises(UserError, match=r"^cannot replace .*/chat/train\.bin \(a train\.py or eval\.py reading .*/chat "
                                        r"has it open\?\): run this again once it ends; the dataset is as it was$"):
        prepare.prepare("chat", source=src, out_dir=out, val_fraction=0.2)
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before
    # val.bin held (eval.py's), train.bin replaced before: no dataset until the run again, said so
    monkeypatch.setattr(os, "replace", held_open("val.bin"))
    with pytest.raises(UserError, match=r"run this again once it ends; until then there is no dataset there$"):
        prepare.prepare("chat", source=src, out_dir=out, val_fraction=0.2)
    monkeypatch.setattr(os, "replace", replace)
    assert prepare.prepare("chat", source=src, out_dir=out, val_fraction=0.2)["splits"]["val"]["documents"] > 0


def test_interrupted_commit_leaves_the_old_dataset_or_the_new_one(tmp_path, monkeypatch, request):
    """A rebuild interrupted at each of its file-system steps in turn (every fsync, rename and removal, from the new
    vocabulary to the cleanup): Ctrl-C, or SIGHUP (its terminal gone: it ended the script in the renames, leaving no
    meta.json), leaves the old dataset or the complete new one, never a mix, never nothing; a crash (an exception
    nothing holds back) can leave no meta.json, during the renames alone, and never a mix."""
    src = write(tmp_path / "chats.jsonl", "".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    out, folder, saved = str(tmp_path / "data"), tmp_path / "data" / "chat", tmp_path / "old"

    def files():
        return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if not f.endswith(".tmp")}

    def rebuild(vocab_size):
        prepare.prepare("chat", source=src, out_dir=out, vocab_size=vocab_size)

    rebuild(280)  # the new dataset, built once in the same folder to know its files
    new = files()
    shutil.rmtree(folder)
    rebuild(300)  # the old one: another vocabulary, so every file differs
    old = files()
    assert set(old) == {"meta.json", "tokenizer.tiktoken", "train.bin", "train_mask.bin", "val.bin", "val_mask.bin"}
    assert all(old[f] != new[f] for f in old)
    shutil.copytree(folder, saved)

    real = {name: getattr(os, name) for name in ("fsync", "replace", "remove")}
    outcomes = {}
    if HANGUP:
        request.addfinalizer(functools.partial(signal.signal, HANGUP, signal.signal(HANGUP, hangup_not_taken)))
    for how in ("ctrl-c", "hang-up", "crash") if HANGUP else ("ctrl-c", "crash"):
        for at in itertools.count(1):
            shutil.rmtree(folder)
            shutil.copytree(saved, folder)
            steps = []

            def step(name, *args):
                steps.append(name)
                if len(steps) == at:
                    if how == "crash":
                        raise KeyboardInterrupt
                    # Python raises KeyboardInterrupt (run_main's handler: SystemExit) where it next can
                    os.kill(os.getpid(), signal.SIGINT if how == "ctrl-c" else HANGUP)
                return real[name](*args)

            for name in real:
                monkeypatch.setattr(os, name, functools.partial(step, name))
            try:
                common.run_main(lambda: rebuild(280)) if how == "hang-up" else rebuild(280)  # (run_main: as the script)
                finished = True
            except KeyboardInterrupt:
                finished = False
            except SystemExit as e:
                assert e.code == 129
                finished = False
            finally:
                for name, f in real.items():
                    monkeypatch.setattr(os, name, f)
            now = files()
            state = "old" if now == old else "new" if now == new else "none" if "meta.json" not in now \
                else f"a mix {sorted(now)}"
            if finished:
                assert at > len(steps) and state == "new"
                break
            outcomes[how, at, steps[at - 1]] = state
            if how != "crash":
                assert state in ("old", "new"), (at, steps)
                assert not [f for f in os.listdir(folder) if f.endswith(".tmp")], (at, steps)
            else:
                assert state in ("old", "new", "none"), (at, steps)
    states = Counter(outcomes.values())
    assert states["old"] > 2 and states["new"] > 2 and states["none"] > 0  # every kind of step was reached
    assert all(how == "crash" for (how, _, _), state in outcomes.items() if state == "none")


def test_rebuild_command_builds_the_same_dataset(tmp_path, monkeypatch, capsys):
    """rebuild_command(meta) is the command that made a dataset: run again, it finds it up to date. A dataset named
    with --name is rebuilt from --dataset and --source, never with --dataset NAME, which prepare.py refuses."""
    src = write(tmp_path / "notes" / "a.txt", EOT.join(DOCS))
    chats = write(tmp_path / "chats.jsonl", "".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    out = str(tmp_path / "sets")
    monkeypatch.chdir(tmp_path)  # where data/, the default --out_dir, is
    prep = os.path.abspath(prepare.__file__)  # (from here, outside the repository: its whole path)
    cases = [
        (["--dataset", "text", "--source", str(tmp_path / "notes"), "--name", "notes", "--out_dir", out,
          "--limit", "30", "--val_fraction", "0.15"],
         f"python {prep} --dataset text --source {tmp_path / 'notes'} --name notes --out_dir {out} "
         f"--limit 30 --val_fraction 0.15"),
        (["--dataset", "chat", "--source", "chats.jsonl", "--vocab_size", "300", "--pack", "64"],
         f"python {prep} --dataset chat --source {chats} --vocab_size 300 --pack 64"),
        (["--mix", "chitchat:2", "--name", "talk", "--limit", "40", "--no_extra"],
         f"python {prep} --mix chitchat:2 --name talk --limit 40 --no_extra"),
    ]
    for argv, command in cases:
        prepare.main(argv)
        name = argv[argv.index("--name") + 1] if "--name" in argv else argv[1]
        folder = os.path.join(argv[argv.index("--out_dir") + 1] if "--out_dir" in argv else "data", name)
        meta = prepare.read_meta(folder)
        assert prepare.rebuild_command(meta, folder) == command
        assert prepare.rebuild_command({**meta, "folder": folder}) == command  # as train.py's load_meta gives it
        capsys.readouterr()
        prepare.main(shlex.split(command)[2:])
        assert without_train_line(capsys.readouterr().out) == f"{folder} is up to date\n"
    # a meta.json from before "options" was kept: the command is rebuilt from what it says
    meta = prepare.read_meta(os.path.join(out, "notes"))
    del meta["options"]
    assert prepare.rebuild_command(meta, os.path.join(out, "notes")) == \
        f"python {prep} --dataset text --source {src} --name notes --out_dir {out} --limit 30"
    # prepare.py's own hint names the command that made the dataset in the way
    with pytest.raises(UserError) as e:
        prepare.prepare("chitchat", out_dir=out, name="notes")
    assert str(e.value) == (f"{out}/notes holds the 'text' dataset (made by `{cases[0][1]}`): pick another folder "
                            f"with --name, or replace it with --force")
    # a meta.json that does not say how it was made (another tool's): not a KeyError, nor "the None dataset (made by
    # `python prepare.py --dataset odd`)", a command that made no such thing
    write(tmp_path / "sets" / "odd" / "meta.json", json.dumps({"format": 1, "mix": [1]}))
    with pytest.raises(UserError, match=r"^.*sets/odd holds a meta.json that names no dataset \(another tool's, or "
                                        r"damaged\): pick another folder with --name, or replace it with --force$"):
        prepare.prepare("chitchat", out_dir=out, name="odd")
    assert prepare.prepare("chitchat", out_dir=out, name="odd", force=True)["dataset"] == "chitchat"
    # one too damaged to say how the dataset was made: the command that makes one in that folder anew (it was
    # `--dataset notes`, prepare.py's usage error, without the --out_dir it is in)
    for folder, command in ((os.path.join(out, "chat"), f"python {prep} --dataset chat --out_dir {out}"),
                            (os.path.join("data", "talk"), f"python {prep} --dataset text --source FILE --name talk"),
                            (os.path.join(out, "notes"),
                             f"python {prep} --dataset text --source FILE --name notes --out_dir {out}")):
        assert prepare.rebuild_command({"format": 1}, folder) == command
    # the hint, run where the meta.json is unreadable (train.py's load_meta gives it too): it makes the dataset. (One
    # that reads as another tool's is kept unless --force, which prepare.py then says.)
    write(tmp_path / "sets" / "notes" / "meta.json", "{")
    prepare.main([src if a == "FILE" else a for a in shlex.split(command)[2:]])
    assert prepare.read_meta(os.path.join(out, "notes"))["options"]["source"] == [src]


def test_missing_source_names_source_and_mirror(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("DATA_MIRROR", str(empty))
    with pytest.raises(UserError, match=r"--source.*DATA_MIRROR.*hub failed: ConnectionError") as e:
        prepare.prepare("story", out_dir=str(tmp_path / "data"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="--dataset text needs --source"):
        prepare.prepare("text", out_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "story" / "train.bin").exists()
    # a bare `python prepare.py` skips what it cannot find and builds the rest
    prepare.main(["--out_dir", str(tmp_path / "data"), "--limit", "50"])
    out = capsys.readouterr().out
    for name in ("story", "shakespeare", "dailydialog", "chat", "knowledge"):
        assert f"skipping {name}: no data for --dataset {name}: pass --source PATH, or set DATA_MIRROR" in out
    assert json.loads((tmp_path / "data" / "chitchat" / "meta.json").read_text())["kind"] == "chat"


def test_offline_without_the_gpt2_files_names_prepares_own_ways_out(tmp_path, monkeypatch):
    """The GPT-2 files' offline line dropped "or use --tokenizer PATH.tiktoken" (other scripts refuse that option):
    prepare.py, which takes it and --vocab_size, was left with TIKTOKEN_CACHE_DIR alone."""
    import tiktoken
    import setup_tokenizer

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    setup_tokenizer._load_tokenizer.cache_clear()
    src = write(tmp_path / "notes.txt", EOT.join(f"note {i}" for i in range(20)))
    try:
        with pytest.raises(UserError, match=r"^cannot load the GPT-2 BPE files \(offline\?\): set TIKTOKEN_CACHE_DIR "
                                            r".*\(ConnectionError\), or give the data a vocabulary of its own with "
                                            r"--vocab_size 4096 \(or --tokenizer PATH.tiktoken\)$"):
            prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    finally:
        setup_tokenizer._load_tokenizer.cache_clear()  # later tests load the real files
    assert not (tmp_path / "data" / "text").exists()
    assert prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"), vocab_size=260)["vocab_size"] == 260


def test_the_mirrors_dataset_is_not_replaced_by_your_files_without_a_name(tmp_path, monkeypatch):
    """After `make demo` (data/dailydialog from the mirror, say), `--dataset dailydialog --source mine.jsonl` replaced
    the folder a model was trained on without a word. Refused, naming the command that made it; --name keeps both,
    --force replaces it."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    prepare.prepare("dailydialog", out_dir=out, limit=20)
    folder = tmp_path / "data" / "dailydialog"
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    mine = write(tmp_path / "mine.jsonl", "\n".join(json.dumps({"instruction": f"q{i}", "output": f"mine {i}"})
                                                    for i in range(20)))
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder))} holds the 'dailydialog' dataset made "
                                        rf"from .*DATA_MIRROR"
                                        rf".* \(by `python prepare.py --dataset dailydialog .*`\), not "
                                        rf"from your files: "
                                        rf"pick another folder for this one with --name, or replace it with --force$"):
        prepare.prepare("dailydialog", source=mine, out_dir=out)
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before
    assert prepare.prepare("dailydialog", source=mine, out_dir=out, name="mine")["source"] == f"--source {mine}"
    assert prepare.prepare("dailydialog", source=mine, out_dir=out, force=True)["source"] == f"--source {mine}"


def test_a_dataset_of_your_files_is_not_replaced_by_the_mirrors(tmp_path, monkeypatch, capsys):
    """`--dataset dailydialog --source mine.jsonl` (as the module docstring's `--dataset chat --source chats.jsonl`),
    then a bare `python prepare.py`: the folder was rebuilt from the mirror, the user's dataset gone without a word. It
    is skipped, named with the command that made it; --force replaces it."""
    fake_mirror(tmp_path / "mirror")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    out = str(tmp_path / "data")
    mine = write(tmp_path / "mine.jsonl", "\n".join(json.dumps({"instruction": f"q{i}", "output": f"mine {i}"})
                                                    for i in range(20)))
    prepare.prepare("dailydialog", source=mine, out_dir=out)
    folder = tmp_path / "data" / "dailydialog"
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    prepare.main(["--out_dir", out, "--limit", "20"])
    assert f"skipping dailydialog: {folder} holds the 'dailydialog' dataset made from your files (by `python " \
           f"prepare.py --dataset dailydialog --source {mine} --out_dir {out}`)" in capsys.readouterr().out
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before
    with pytest.raises(prepare.OtherSource, match=r"run that to make it again, pick another folder for this one with "
                                                  r"--name, or replace it with --force"):
        prepare.prepare("dailydialog", out_dir=out)
    assert prepare.prepare("dailydialog", source=mine, out_dir=out)["source"] == f"--source {mine}"  # up to date
    assert "up to date" in capsys.readouterr().out
    assert "DATA_MIRROR" in prepare.prepare("dailydialog", out_dir=out, force=True)["source"]


def test_a_dataset_of_your_files_is_not_replaced_by_other_files_without_force(tmp_path):
    """`--source a.txt`, then `--source b.txt`: both build data/text, and the dataset a model was trained on was
    replaced without a word. Refused, naming the command that made it; the same files (in another order) rebuild as
    before, --name keeps both (and is made again from other files: a folder the user chose) and --force replaces it."""
    out = str(tmp_path / "data")
    a = write(tmp_path / "a.txt", EOT.join(f"note {i} about apples" for i in range(30)))
    b = write(tmp_path / "b.txt", EOT.join(f"note {i} about bananas" for i in range(30)))
    prepare.prepare("text", source=[a], out_dir=out, vocab_size=280)
    folder = tmp_path / "data" / "text"
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder))} holds the dataset made from {re.escape(a)} \(by "
                                        rf"`python prepare.py --dataset text --source {re.escape(a)} .*`\): pick "
                                        rf"another folder for "
                                        rf"this one with --name, or replace it with --force$"):
        prepare.prepare("text", source=[b], out_dir=out, vocab_size=280)
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before
    assert prepare.prepare("text", source=[b], out_dir=out, vocab_size=280, name="bananas")["source"] == f"--source {b}"
    assert prepare.prepare("text", source=[a], out_dir=out, vocab_size=280, name="bananas")["source"] == f"--source {a}"
    prepare.prepare("text", source=[a, b], out_dir=out, vocab_size=280, force=True)
    assert prepare.prepare("text", source=[b, a], out_dir=out, vocab_size=280)["source"] == f"--source {b}, {a}"


def test_the_same_files_named_another_way_rebuild_their_dataset(tmp_path, capsys):
    """The folder, its files, a pattern of them: the same dataset, made again (not "holds the dataset made from
    corpus", which only --force passed); and so for a dataset from before meta.json kept the options, whose source
    lists the files the folder held."""
    out = str(tmp_path / "data")
    corpus = tmp_path / "corpus"
    files = [write(corpus / f"{n}.txt", EOT.join(f"note {i} about {n}" for i in range(30))) for n in ("a", "b")]
    prepare.prepare("text", source=str(corpus), out_dir=out)
    capsys.readouterr()
    for same in (files, [str(corpus / "*.txt")], [files[1], files[0]]):
        assert prepare.prepare("text", source=same, out_dir=out)["splits"]["train"]["documents"] > 0
    meta_path = tmp_path / "data" / "text" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["options"]
    meta_path.write_text(json.dumps(meta))
    assert prepare.prepare("text", source=str(corpus), out_dir=out)["splits"]["train"]["documents"] > 0
    # a damaged record of the files (a number): no TypeError, it says nothing
    meta = json.loads(meta_path.read_text())
    meta["options"]["source"] = 5
    meta_path.write_text(json.dumps(meta))
    assert prepare.prepare("text", source=str(corpus), out_dir=out)["splits"]["train"]["documents"] > 0
    # the same folder, given a file more: made again from all three, not refused as a dataset of other files
    prepare.prepare("text", source=str(corpus), out_dir=str(tmp_path / "more"))
    write(corpus / "c.txt", EOT.join(f"note {i} about c" for i in range(30)))
    meta = prepare.prepare("text", source=str(corpus), out_dir=str(tmp_path / "more"))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 90


def test_hub_path(tmp_path, monkeypatch, enc):
    """Without --source or mirror the hub's rows are read, with the hub's own validation split."""
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "no-mirror"))
    rows = {"train": [{"text": f"Story {i}."} for i in range(20)], "validation": [{"text": "A val story."}]}
    asked, read = [], Counter()

    def fake_hub(path, config, split, streaming=False):
        asked.append((path, config, split, streaming))
        if not streaming:
            return rows[split]

        def stream():  # rows as a streamed split gives them: read counts what was downloaded
            for row in rows[split]:
                read[split] += 1
                yield row
                if row.get("text") == "Story 3.":
                    raise ConnectionError("Read timed out.\nmore")
        return stream()

    monkeypatch.setattr(prepare, "load_hub", fake_hub)
    meta = prepare.prepare("story", out_dir=str(tmp_path / "data"))
    assert asked == [("roneneldan/TinyStories", None, "train", False),
                     ("roneneldan/TinyStories", None, "validation", False)]
    assert meta["source"] == "Hugging Face hub roneneldan/TinyStories"
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (20, 1)
    val, _ = load(tmp_path / "data" / "story", "val", meta)
    assert enc.decode(val.tolist()) == "A val story." + EOT
    # --limit streams the splits and stops reading at the limit: `make demo` online takes 10,000 of TinyStories'
    # 2.1M stories without downloading them all
    asked.clear()
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)  # offline, the cache is read whole (streaming cannot)
    meta = prepare.prepare("story", out_dir=str(tmp_path / "data"), name="some", limit=3)
    assert [a[3] for a in asked] == [True, True] and read == {"train": 3, "validation": 1}
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (3, 1)
    # a connection that fails while streaming is one line, and no dataset is left
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    asked.clear()
    prepare.prepare("story", out_dir=str(tmp_path / "data"), name="cached", limit=3)
    assert [a[3] for a in asked] == [False, False]
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with pytest.raises(UserError, match=r"^roneneldan/TinyStories train: the Hugging Face hub failed after 4 rows "
                                        r"\(ConnectionError: Read timed out.\); run the command again$"):
        prepare.prepare("story", out_dir=str(tmp_path / "data"), name="more", limit=5)
    assert not (tmp_path / "data" / "more").exists()
    rows.update(train=[{"dialog": ["Hi , there !", "Hello ."]}] * 3, validation=[{"dialog": ["Why ?", "Because ."]}])
    meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"))
    ids, mask = load(tmp_path / "data" / "dailydialog", "train", meta)
    assert masked_spans(enc, ids, mask) == ["Hello." + IM_END] * 3


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """datasets' cache (where its builders leave lock files) in tmp_path, not the user's."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_a_hub_source_is_streamed_and_read_as_source_files_are(tmp_path, enc, capsys, monkeypatch, hub_cache):
    """--source hf:NAME goes through datasets.load_dataset's own code (offline, a local folder of data files is a hub
    name): its rows are read as a .jsonl file's records, val is the set's validation split, --limit reads no more rows
    than it takes, and the fingerprint knows the source."""
    texts = [f"Note {i}: {DOCS[i]}" for i in range(20)]
    rows = [{"text": t} for t in texts[:7]] + [{"text": "  "}, {"text": None}] + [{"text": t} for t in texts[7:]]
    train = write(tmp_path / "set" / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "set" / "validation.jsonl", json.dumps({"text": "A val note."}) + "\n")
    out, spec = str(tmp_path / "data"), f"hf:{tmp_path / 'set'}"
    argv = ["--source", spec, "--name", "hub", "--out_dir", out]
    assert run_cli(prepare.main, argv, capsys)[0] == 0
    meta = prepare.read_meta(os.path.join(out, "hub"))
    assert meta["source"] == f"--source {spec} (Hugging Face datasets: train, val validation)"
    assert meta["val_split"] == "the source's own validation split, each document once and none train has"
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (20, 1)
    val, _ = load(os.path.join(out, "hub"), "val", meta)
    assert enc.decode(val.tolist()) == "A val note." + EOT
    # the same tokens as the file given as --source, whose blank and null rows are skipped alike
    local = prepare.prepare("text", source=train, out_dir=out, name="local", val_fraction=0)
    assert np.array_equal(load(os.path.join(out, "hub"), "train", meta)[0],
                          load(os.path.join(out, "local"), "train", local)[0])
    # made again: up to date, by the command meta.json gives (the name kept as given, not made a path)
    command = prepare.rebuild_command(meta, os.path.join(out, "hub"))
    assert command == shlex.join(["python", "prepare.py", "--dataset", "text", "--source", spec, "--name", "hub",
                                  "--out_dir", out])
    capsys.readouterr()
    code, printed, err = run_cli(prepare.main, shlex.split(command)[2:], capsys)
    assert (code, without_train_line(printed), err) == (0, f"{out}/hub is up to date\n", "")
    # a changed file rebuilds
    with open(train, "a") as f:
        f.write(json.dumps({"text": "One more note."}) + "\n")
    assert prepare.prepare("text", source=spec, out_dir=out, name="hub")["splits"]["train"]["documents"] == 21
    # --limit reads the rows it takes and no more: 4 of train (the blank and null rows come later), 1 of val
    read = []
    real = prepare.record_doc
    monkeypatch.setattr(prepare, "record_doc", lambda record, where, dataset=None: read.append(where) or
                        real(record, where, dataset))
    meta = prepare.prepare("text", source=spec, out_dir=out, name="few", limit=4)
    assert read == [f"{spec} train row {i}" for i in range(1, 5)] + [f"{spec} validation row 1"]
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (4, 1)
    # rows with nothing to train on stop the run as a file's records do, naming the row and the option that leaves
    # them out (without reading on: a streamed split would be downloaded whole)
    write(tmp_path / "odd" / "train.jsonl", json.dumps({"title": "no text"}) + "\n")
    with pytest.raises(UserError, match=r"^hf:.*/odd train row 1: no messages, conversations, conversation, "
                                        r"contents, chat_messages, instruction/output, instruction/response, "
                                        r"question/answer, "
                                        r"prompt/completion, prompt/response, query/response, question/response, "
                                        r"input/output, problem/solution, instruction/instances, dialog, mapping "
                                        r"\(ChatGPT's export\) or text field; it has `title`; pass --skip_bad_records "
                                        r"to leave out the split's bad rows$"):
        prepare.prepare("text", source=f"hf:{tmp_path / 'odd'}", out_dir=out, name="hub")
    assert prepare.read_meta(os.path.join(out, "hub"))["splits"]["train"]["documents"] == 21  # kept
    # --skip_bad_records leaves them out as it does a file's records; a split of nothing else still stops the run
    with pytest.raises(UserError, match=r"odd train row 1: no messages, .*; no record of hf:.*/odd train is good \(1 "
                                        r"bad\), so --skip_bad_records leaves nothing of it to train on: fix it$"):
        prepare.prepare("text", source=f"hf:{tmp_path / 'odd'}", out_dir=out, name="odd", skip_bad_records=True)
    write(tmp_path / "odd" / "train.jsonl", "".join(json.dumps(r) + "\n" for r in [{"text": t} for t in texts[:5]] +
                                                    [{"messages": "hi"}] + [{"text": t} for t in texts[5:10]]))
    capsys.readouterr()
    meta = prepare.prepare("text", source=f"hf:{tmp_path / 'odd'}", out_dir=out, name="odd", skip_bad_records=True)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10
    assert f"left out 1 bad record of hf:{tmp_path / 'odd'} train: row 6\n" in capsys.readouterr().out


def test_a_hub_sources_config_and_split_and_its_val_without_a_validation_split(tmp_path, enc, hub_cache):
    """hf:NAME:CONFIG:SPLIT picks a config and a split; a set without a validation split gives val its train split's
    tail, as a file does."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "chats").mkdir()
    for name, part in (("sft", CONVERSATIONS), ("gen", CONVERSATIONS[:2])):
        pq.write_table(pa.Table.from_pylist([{"messages": c} for c in part]), tmp_path / "chats" / f"{name}.parquet")
    write(tmp_path / "chats" / "README.md", "---\nconfigs:\n- config_name: chat\n  data_files:\n  - split: train_sft\n"
                                            "    path: sft.parquet\n  - split: test_gen\n    path: gen.parquet\n---\n")
    out, spec = str(tmp_path / "data"), f"hf:{tmp_path / 'chats'}:chat"
    meta = prepare.prepare("chat", source=f"{spec}:train_sft", out_dir=out, pack=0)
    assert meta["source"] == f"--source {spec}:train_sft (Hugging Face datasets: train_sft)"
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (11, 1)
    local = prepare.prepare("chat", source=write(tmp_path / "c.jsonl", "".join(json.dumps({"messages": c}) + "\n"
                                                                             for c in CONVERSATIONS)),
                            out_dir=out, name="local", pack=0)
    for split in ("train", "val"):
        assert all(np.array_equal(a, b) for a, b in zip(load(os.path.join(out, "chat"), split, meta),
                                                        load(os.path.join(out, "local"), split, local)))
    # which split, when the set has no train split and several others: said, with the syntax
    with pytest.raises(UserError, match=rf"^--source {re.escape(spec)}: no split 'train' in this dataset; name one of "
                                        rf"train_sft, test_gen as {re.escape(spec)}:SPLIT$"):
        prepare.prepare("chat", source=spec, out_dir=out, name="other")
    with pytest.raises(UserError, match=r"^--source hf:.*chats:nope: the Hugging Face hub failed \(ValueError: "
                                        r"BuilderConfig 'nope' not found. Available: \['chat'\]\); give one as "
                                        r"hf:.*chats:CONFIG$"):
        prepare.prepare("chat", source=f"hf:{tmp_path / 'chats'}:nope", out_dir=out, name="other")
    assert not os.path.exists(os.path.join(out, "other"))


def test_a_hub_source_that_cannot_be_read_is_one_line_naming_the_fix(tmp_path, capsys, hub_cache):
    """An unknown or unreachable hub set is one line at once (HF_DATASETS_OFFLINE=1: online, the hub's own answer),
    as is a malformed spec or a hub set given with files."""
    out = str(tmp_path / "data")
    start = time.monotonic()
    code, stdout, err = run_cli(prepare.main, ["--source", "hf:nobody/no-such-set", "--out_dir", out], capsys)
    assert (code, stdout) == (1, "") and time.monotonic() - start < 10
    assert err == ("error: --source hf:nobody/no-such-set: the Hugging Face hub failed (ConnectionError: "
                   "Couldn't reach "
                   "'nobody/no-such-set' on the Hub (OfflineModeIsEnabled)); go online (and unset HF_DATASETS_OFFLINE "
                   "and HF_HUB_OFFLINE), or pass its files as --source PATH\n")
    assert run_cli(prepare.main, ["--source", "hf:a/b:c:d:e", "--out_dir", out], capsys) == \
        (1, "", "error: --source hf:a/b:c:d:e: give hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG:SPLIT (hf:NAME::SPLIT "
                "for the default config)\n")
    notes = write(tmp_path / "notes.txt", "Some notes.")
    assert run_cli(prepare.main, ["--source", "hf:a/b", notes, "--out_dir", out], capsys) == \
        (1, "", f"error: --source hf:a/b {notes}: a hub dataset (hf:) is read alone: give it as the only --source\n")
    assert not os.path.exists(out) or os.listdir(out) == []


def test_shakespeare_is_downloaded_once(tmp_path, monkeypatch, enc):
    """Without --source or mirror, char-rnn's file is fetched into the user's cache, once; one document whose last
    tenth is val."""
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "no-mirror"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    play = "".join(f"KING {i}:\nMy lord, the hour is come.\n\n" for i in range(200))
    served = tmp_path / "served" / "input.txt"  # a file:// URL: urlopen reads it as it would char-rnn's
    served.parent.mkdir()
    served.write_text(play)
    assert prepare.URLS["shakespeare"].startswith("https://") and prepare.URLS["shakespeare"].endswith("/input.txt")
    monkeypatch.setitem(prepare.URLS, "shakespeare", served.as_uri())
    asked = []
    monkeypatch.setattr(prepare, "fetch", lambda url: asked.append(url) or REAL_FETCH(url))
    meta = prepare.prepare("shakespeare", out_dir=str(tmp_path / "data"))
    kept = tmp_path / "cache" / "gpt-trainer" / "shakespeare-input.txt"
    assert asked == [served.as_uri()] and kept.read_text() == play
    assert meta["source"] == f"{served.as_uri()}, kept in {kept}"
    train_ids, _ = load(tmp_path / "data" / "shakespeare", "train", meta)
    val_ids, _ = load(tmp_path / "data" / "shakespeare", "val", meta)
    assert enc.decode(train_ids.tolist() + val_ids.tolist()) == play + EOT
    assert 0.08 < len(val_ids) / (len(train_ids) + len(val_ids)) < 0.12
    prepare.prepare("shakespeare", out_dir=str(tmp_path / "data"), force=True)
    assert len(asked) == 1  # the kept copy
    # offline, with nothing kept: the one-line error names --source and the mirror
    kept.unlink()
    served.unlink()
    with pytest.raises(UserError, match=r"--source PATH, or set DATA_MIRROR .*downloading file://.* failed: URLError"):
        prepare.prepare("shakespeare", out_dir=str(tmp_path / "data"), force=True)
    assert not kept.exists() and json.loads((tmp_path / "data" / "shakespeare" / "meta.json").read_text()) == meta


# -----------------------------------------------------------------------------
# the local mirror

needs_mirror = pytest.mark.skipif(not (MIRROR and os.path.isdir(MIRROR)),
                                  reason="no DATA_MIRROR with the project's data")


@needs_mirror
def test_mirror_story(tmp_path, enc, capsys):
    prepare.main(["--dataset", "story", "--limit", "200", "--out_dir", str(tmp_path / "data")])
    meta = json.loads((tmp_path / "data" / "story" / "meta.json").read_text())
    check_sizes(tmp_path / "data" / "story", meta)
    assert meta["kind"] == "text" and "TinyStories-sample.txt" in meta["source"]
    # 200 stories split 180 / 20, plus 200 train-only stories (--limit counts the extra files together: all from
    # TinyStories-train-head.txt, the first)
    assert meta["splits"]["val"]["documents"] == 20 and meta["splits"]["train"]["documents"] == 380
    # and says why 400 documents came of --limit 200
    assert "  --limit 200 counts the files val is cut from and the train-only extra files apart: at most 200 " \
           "documents of each (--no_extra leaves the extra ones out)\n" in capsys.readouterr().out
    assert "TinyStories-train-head-lowercase.txt" in meta["source"]
    val, _ = load(tmp_path / "data" / "story", "val", meta)
    stories = enc.decode(val.tolist()).split(EOT)
    assert len(stories) == 21 and stories[-1] == "" and all(len(s) > 100 for s in stories[:-1])


@needs_mirror
def test_mirror_story_val_is_unseen_in_train(tmp_path, enc):
    # the train-only extra files repeat some of the sample's stories, 2 of them in its val tail
    meta = prepare.prepare("story", out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "story"

    def stories(split):
        return {" ".join(s.lower().split())
                for s in enc.decode(load(folder, split, meta)[0].tolist()).split(EOT)} - {""}
    val = stories("val")
    assert len(val) > 300 and not val & stories("train")


def all_text(enc, folder, meta):
    """The decoded text of a dataset's train and val (one text cut between them: a character's bytes may be too)."""
    return enc.decode([i for split in ("train", "val") for i in load(folder, split, meta)[0].tolist()])


# a TinyStories line as the mirror's train-head files (and parts of the hub's) have it: UTF-8 punctuation read as cp1252
# upstream, ” (E2 80 9D) as â€ alone (0x9D is no cp1252 character), before a space, a period or the story's end
MOJIBAKE_STORY = ("â€œLetâ€™s go!â€ said Tom â€“ and ran. Mom said, â€œWait.â€. Sue said â€˜noâ€™ and then"
                  "â€¦ â€”the end, â€œbye!â€")
MENDED_STORY = "“Let’s go!” said Tom – and ran. Mom said, “Wait.”. Sue said ‘no’ and then… —the end, “bye!”"
# right text, a French and a Portuguese "â" among it: read byte for byte
RIGHT_STORIES = ["Le château était âgé; “Bonjour”, dit-il – à la fenêtre…", "O pão e a câmara: “olá”, disse ânimo ’s."]


def test_story_mojibake_is_mended_as_it_is_read(tmp_path, monkeypatch, enc, capsys):
    """The mirror's TinyStories-train-head files hold 2,696 mojibake sequences (â€œ for “), and a model trained on them
    wrote them. The story dataset reads them as the characters meant and says how many; right text, "â" in French or
    Portuguese words included, stays byte for byte, and a user's --dataset text is read as it is."""
    mirror, out = tmp_path / "mirror", str(tmp_path / "data")
    write(mirror / "tinystories" / "TinyStories-sample.txt", "<|endoftext|>".join(RIGHT_STORIES * 5))
    write(mirror / "tinystories" / "TinyStories-train-head.txt", f"Once upon a time.\n{MOJIBAKE_STORY}\n")
    monkeypatch.setenv("DATA_MIRROR", str(mirror))
    prepare.main(["--dataset", "story", "--out_dir", out])
    text = all_text(enc, tmp_path / "data" / "story", prepare.read_meta(tmp_path / "data" / "story"))
    assert MENDED_STORY in text and "â€" not in text
    assert text.count(RIGHT_STORIES[0]) == 5 and text.count(RIGHT_STORIES[1]) == 5
    assert "  mended 12 mojibake sequences (â€œ for “, â€™ for ’...: UTF-8 read as cp1252 upstream) in " \
           "TinyStories-train-head.txt (12)\n" in capsys.readouterr().out
    # a story set of right text says nothing of it; a user's own text keeps what it has
    prepare.main(["--dataset", "story", "--out_dir", out, "--name", "clean", "--no_extra"])
    prepare.main(["--dataset", "text", "--source", str(mirror / "tinystories" / "TinyStories-train-head.txt"),
                  "--out_dir", out, "--name", "mine"])
    assert "\n  mended " not in capsys.readouterr().out
    assert MOJIBAKE_STORY in all_text(enc, tmp_path / "data" / "mine", prepare.read_meta(tmp_path / "data" / "mine"))


def test_mojibake_mended_is_counted_once_however_often_the_file_is_read():
    """The summary's count of mojibake mended is a pass's (the val count and the tokenizing each read a file), of
    every sequence in it."""
    mended = {}
    for _ in range(2):
        docs = prepare.mended_docs(lambda: iter([("â€œHi.â€", True), ("Plain.", True), ("Itâ€™s.", True)]), "f", mended)
        assert [d for d, _ in docs] == ["“Hi.”", "Plain.", "It’s."]
    assert mended == {"f": 3}


def test_story_mojibake_from_the_hub_is_mended(tmp_path, monkeypatch, enc, capsys):
    """The hub's roneneldan/TinyStories has the same damage in parts of it: mended as the mirror's is."""
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "no-mirror"))
    rows = {"train": [{"text": MOJIBAKE_STORY}] + [{"text": s} for s in RIGHT_STORIES * 5],
            "validation": [{"text": "Once upon a time, â€œhi.â€"}]}
    monkeypatch.setattr(prepare, "load_hub", lambda path, config, split, streaming=False: rows[split])
    prepare.main(["--dataset", "story", "--out_dir", str(tmp_path / "data")])
    text = all_text(enc, tmp_path / "data" / "story", prepare.read_meta(tmp_path / "data" / "story"))
    assert MENDED_STORY in text and "Once upon a time, “hi.”" in text and text.count(RIGHT_STORIES[1]) == 5
    assert "upstream) in TinyStories train (12), TinyStories validation (2)\n" in capsys.readouterr().out


@needs_mirror
def test_mirror_dailydialog(tmp_path, enc):
    meta = prepare.prepare("dailydialog", limit=50, out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "dailydialog"
    check_sizes(folder, meta)
    assert meta["has_mask"] and meta["splits"]["train"]["documents"] == 50 and meta["splits"]["val"]["documents"] == 5
    ids, mask = load(folder, "train", meta)
    assert 0.2 < mask.mean() < 0.8
    text = enc.decode(ids.tolist())
    assert text.startswith("<|im_start|>user\n") and "__eou__" not in text and " ," not in text
    assert all(s.endswith(IM_END) for s in masked_spans(enc, ids, mask))


def test_a_chat_sets_own_val_split_leaves_out_the_conversations_train_has(tmp_path, monkeypatch, enc, capsys):
    # DailyDialog's validation file repeats 89 of its 1,000 dialogues from train: its val loss was partly on
    # dialogues the model had trained on
    fake_mirror(tmp_path / "mirror")
    val = tmp_path / "mirror" / "dailydialog" / "dialogues_validation.txt"
    val.write_text(val.read_text() + "dd7 hello there __eou__ dd7 reply ok ok __eou__\n"  # train's 8th, word for word
                   "DD9  Hello there __eou__ dd9 reply ok ok ok ok __eou__\n"  # train's 10th, other case and spacing
                   "dd59 hello there __eou__ dd59 reply ok ok ok ok __eou__\n")  # train's 60th, beyond --limit 50
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    # --limit 50 takes 25 val dialogues: all there are. --limit 20 at 0.35 takes 7, counted among those it keeps: the
    # 6 ddval and dd59, past the two it leaves out (counted before, val had 5 of the 7 asked for)
    for limit, fraction, kept in ((None, 0.5, 6), (50, 0.5, 6 + 1), (20, 0.35, 6 + 1)):
        meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"), name=f"dd{limit}", limit=limit,
                               val_fraction=fraction)
        ids, _ = load(tmp_path / "data" / f"dd{limit}", "val", meta)
        text = enc.decode(ids.tolist())
        assert meta["splits"]["val"]["documents"] == kept and text.count("ddval") == 12
        assert meta["val_repeats"] == (3 if limit is None else 2)  # and said: a val short of the file's read as lost
        assert f"{kept} val; {meta['val_repeats']} left out of val (already in train or val))" in \
            capsys.readouterr().out
        assert "dd7 " not in text and "dd9 " not in text.lower() and ("dd59 " in text) == (limit is not None)
        assert "each document once and none train has" in meta["val_split"]
    # the hub's validation split too
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "no-mirror"))
    rows = {"train": [{"dialog": ["Hi , there !", "Hello ."]}, {"dialog": ["Why ?", "Because ."]}],
            "validation": [{"dialog": ["Why ?", "Because ."]}, {"dialog": ["Who ?", "Me ."]}]}
    monkeypatch.setattr(prepare, "load_hub", lambda path, config, split, streaming=False: rows[split])
    meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"), name="hub")
    ids, _ = load(tmp_path / "data" / "hub", "val", meta)
    assert meta["splits"]["val"]["documents"] == 1 and "Who?" in enc.decode(ids.tolist())


def test_a_text_sets_own_val_split_leaves_out_the_documents_train_has(tmp_path, monkeypatch, enc, capsys, hub_cache):
    # TinyStories' validation split repeats stories of train (5 of the mirror's 3,117-story sample are among train's
    # first 5,511): a plain text set's own split was kept whole, conversations' alone were looked up
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "no-mirror"))
    stories = [f"Story {i}: a cat named Tom found a ball." for i in range(20)]
    rows = {"train": [{"text": t} for t in stories],
            "validation": [{"text": "  STORY 3:  a cat named tom found a ball. "}, {"text": "A new story."}]}
    monkeypatch.setattr(prepare, "load_hub", lambda path, config, split, streaming=False: rows[split])
    meta = prepare.prepare("story", out_dir=str(tmp_path / "data"))
    ids, _ = load(tmp_path / "data" / "story", "val", meta)
    check_sizes(tmp_path / "data" / "story", meta)
    assert enc.decode(ids.tolist()) == "A new story." + EOT and meta["splits"]["val"]["bytes"] == len("A new story.")
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"], meta["val_repeats"]) == (20, 1, 1)
    assert "(20 train, 1 val; 1 left out of val (already in train or val))" in capsys.readouterr().out
    assert meta["val_split"] == "the source's own validation split, each document once and none train has"
    # a --source hf: set's validation split too, within --limit's share counting what val keeps (2 at 20 x 0.1)
    write(tmp_path / "set" / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows["train"]))
    write(tmp_path / "set" / "validation.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in
                                                         [stories[0], "Val one.", stories[19], "Val two.", "Val 3."]))
    meta = prepare.prepare("text", source=f"hf:{tmp_path / 'set'}", out_dir=str(tmp_path / "data"), limit=20)
    ids, _ = load(tmp_path / "data" / "text", "val", meta)
    assert enc.decode(ids.tolist()) == "Val one." + EOT + "Val two." + EOT and meta["val_repeats"] == 2
    # a text in pieces (a book) is looked up whole or not at all: its last piece, a train document's words, stays
    val = prepare.Split(str(tmp_path), "v", np.uint16, False)
    book = [("Chapter one.", False), ("The end.", True)]
    ordered = np.array([prepare.document_key(("The end.", True))], np.int64)
    assert list(prepare.unseen(book + [("The end.", True)], ordered, val)) == book and val.repeats == 1
    val.discard()


def test_an_own_val_split_that_train_has_whole_is_kept_as_a_val_cut_is(tmp_path, monkeypatch, enc, capsys):
    # a validation split of nothing but train's conversations (a quick set whose validation file is a copy of some of
    # train): left out whole, it failed with "too little text to cut into train and val (val would hold none): add
    # text", of a set with text enough; it is kept and said, as a val cut from train's sources is
    fake_mirror(tmp_path / "mirror")
    train = (tmp_path / "mirror" / "dailydialog" / "dialogues_train.txt").read_text().splitlines()
    (tmp_path / "mirror" / "dailydialog" / "dialogues_validation.txt").write_text("\n".join(train[:8]) + "\n")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    for limit, kept in ((None, 8), (30, 3)):  # --limit 30: val's share, 3
        meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"), name=f"dd{limit}", limit=limit)
        check_sizes(tmp_path / "data" / f"dd{limit}", meta)
        ids, _ = load(tmp_path / "data" / f"dd{limit}", "val", meta)
        assert meta["splits"]["val"]["documents"] == kept and meta["val_repeats"] == 0
        assert enc.decode(ids.tolist()).count(IM_START + "user") == kept and "dd0 hello" in enc.decode(ids.tolist())
        err = capsys.readouterr().err
        assert "dialogues_validation.txt: every document of the val split is also in train" in err, err


def test_val_keeps_one_copy_of_a_document_it_repeats(tmp_path, monkeypatch, enc, capsys):
    # DailyDialog's validation file repeats 3 of its dialogues (not in train) within itself: each counted twice in the
    # val loss, which weighed them double. A source's own validation split keeps the first copy
    fake_mirror(tmp_path / "mirror")
    val = tmp_path / "mirror" / "dailydialog" / "dialogues_validation.txt"
    val.write_text(val.read_text() + "DDVAL2  hi __eou__ ddval2 "
                                     "bye __eou__\n" + "ddval4 hi __eou__ ddval4 bye __eou__\n")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"), pack=0)
    ids, _ = load(tmp_path / "data" / "dailydialog", "val", meta)
    check_sizes(tmp_path / "data" / "dailydialog", meta)
    text = enc.decode(ids.tolist())
    assert [text.lower().count(f"ddval{i} hi") for i in range(6)] == [1] * 6 and meta["splits"]["val"]["documents"] == 6
    assert meta["val_repeats"] == 2 and "(60 train, 6 val; 2 left out of val (already in train or val))" in \
        capsys.readouterr().out
    # and a val cut from train's sources: a file whose tail holds a document twice, which train has not
    docs = [f"Note {i}: the cat sat on the mat." for i in range(30)]
    docs[29] = docs[27]  # val: the last 3
    meta = prepare.prepare("text", source=write(tmp_path / "notes.txt", EOT.join(docs)), out_dir=str(tmp_path / "data"))
    ids, _ = load(tmp_path / "data" / "text", "val", meta)
    assert enc.decode(ids.tolist()) == docs[27] + EOT + docs[28] + EOT and meta["val_repeats"] == 1


def test_a_val_kept_though_train_has_it_keeps_one_copy_of_each_document(tmp_path, monkeypatch, enc, capsys):
    # every val document in train: val is kept (train.py needs one), and it kept every copy of a document it repeats,
    # weighing it double in the val loss, as val did before it kept one copy. A source's own validation split (a quick
    # set's validation file copied from train, which repeats a dialogue) and a val cut from train's sources alike
    fake_mirror(tmp_path / "mirror")
    train = (tmp_path / "mirror" / "dailydialog" / "dialogues_train.txt").read_text().splitlines()
    (tmp_path / "mirror" / "dailydialog" / "dialogues_validation.txt").write_text(
        "\n".join(train[:3] + train[:1]) + "\n")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "mirror"))
    meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"), pack=0)
    check_sizes(tmp_path / "data" / "dailydialog", meta)
    ids, _ = load(tmp_path / "data" / "dailydialog", "val", meta)
    assert [enc.decode(ids.tolist()).count(f"dd{i} hello") for i in range(3)] == [1, 1, 1], enc.decode(ids.tolist())
    assert meta["splits"]["val"]["documents"] == 3 and meta["val_repeats"] == 1
    assert "every document of the val split is also in train" in capsys.readouterr().err
    docs = [f"Note {i}: the cat sat on the mat." for i in range(30)]
    docs[27:] = [docs[0]] * 3  # val: the last 3, one document train has
    meta = prepare.prepare("text", source=write(tmp_path / "notes.txt", EOT.join(docs)), out_dir=str(tmp_path / "data"))
    ids, _ = load(tmp_path / "data" / "text", "val", meta)
    assert enc.decode(ids.tolist()) == docs[0] + EOT and meta["val_repeats"] == 2
    assert "every document of the val split is also in train" in capsys.readouterr().err


def test_a_val_cut_from_trains_sources_leaves_out_the_documents_train_has(tmp_path, enc, capsys):
    # DailyDialog's train file given as --source repeats dialogues within itself: 99 of the 1,112 its tail gave val
    # were in train too, and the val loss read better than the model was
    out = str(tmp_path / "data")
    dialogues = [f"d{i} hello __eou__ d{i} reply" + " ok" * (i % 4) + " __eou__" for i in range(30)]
    dialogues[27] = dialogues[3]  # word for word
    dialogues[28] = dialogues[4].upper().replace(" __EOU__", "  __eou__")  # other case and spacing
    meta = prepare.prepare("dailydialog", source=write(tmp_path / "dialogues.txt", "\n".join(dialogues) + "\n"),
                           out_dir=out, pack=0)  # val: the last 3 of 30
    ids, _ = load(tmp_path / "data" / "dailydialog", "val", meta)
    check_sizes(tmp_path / "data" / "dailydialog", meta)
    assert enc.decode(ids.tolist()).count(IM_START + "user") == 1 and "d29 hello" in enc.decode(ids.tolist())
    assert meta["splits"]["val"]["documents"] == 1 and meta["splits"]["train"]["documents"] == 27
    assert meta["val_repeats"] == 2 and "(27 train, 1 val; 2 left out of val (already in train or val))" in \
        capsys.readouterr().out
    assert meta["splits"]["val"]["bytes"] == text_bytes(enc, ids) \
        and "each once and none train has" in meta["val_split"]
    # plain text, in several files: a later file's train documents count too, and whole one-document files
    docs = [f"Note {i}: the cat sat on the mat." for i in range(30)]
    folder = tmp_path / "notes"
    write(folder / "a.txt", EOT.join(docs[:10]))    # val: a's last (Note 9)
    write(folder / "b.txt", EOT.join([" NOTE 9:  the cat sat on the mat. "] + docs[11:30]))  # val: b's last 2
    write(folder / "c.txt", docs[29].lower())       # one document, in train: Note 29 again
    meta = prepare.prepare("text", source=str(folder), out_dir=out, name="notes")
    ids, _ = load(tmp_path / "data" / "notes", "val", meta)
    check_sizes(tmp_path / "data" / "notes", meta)
    assert enc.decode(ids.tolist()) == docs[28] + EOT and meta["splits"]["val"]["documents"] == 1
    assert meta["splits"]["val"]["bytes"] == len(docs[28]) and meta["splits"]["train"]["documents"] == 28
    # a file of nothing but repeats keeps its val split, which train.py needs, and says what it is worth
    capsys.readouterr()
    meta = prepare.prepare("text", source=write(tmp_path / "same.txt", EOT.join(["The same."] * 10)), out_dir=out,
                           name="same")
    assert meta["splits"]["val"]["documents"] == 1 and meta["splits"]["train"]["documents"] == 9
    assert meta["val_repeats"] == 0  # (kept)
    assert "every document of the val split is also in train" in capsys.readouterr().err


def test_the_val_documents_left_out_are_the_repeats_whatever_comes_before_them(tmp_path, enc, capsys):
    # val is the tails of several sources, in order: a book cut by tokens (its tail has no document of its own to
    # match) or a short file val took whole comes before another file's repeats, and it is the repeats that go
    out = str(tmp_path / "data")
    book = "".join(f"Line {i} of the book: the quick brown fox jumps over the lazy dog.\n" for i in range(40))
    notes = [f"Note {i}: the cat sat on the mat." for i in range(28)]
    write(tmp_path / "bk" / "a.txt", book)  # one document, a large share of the text: cut by tokens
    write(tmp_path / "bk" / "b.txt", EOT.join(notes + [notes[0], notes[1], book]))  # val: its last 3, all repeats
    meta = prepare.prepare("text", source=str(tmp_path / "bk"), out_dir=out, name="bk")
    ids, _ = load(tmp_path / "data" / "bk", "val", meta)
    check_sizes(tmp_path / "data" / "bk", meta)
    val = enc.decode(ids.tolist())
    assert "Note" not in val and len(val) < len(book) and (book + EOT).endswith(val), val  # the book's tail alone
    assert meta["splits"]["val"]["bytes"] == text_bytes(enc, ids)
    # a one-token file val takes whole, then a file whose val document (its last) is its first again
    write(tmp_path / "sh" / "a.txt", "Hi")
    write(tmp_path / "sh" / "b.txt", EOT.join(["Once there was a fox.", "It ran away.", "Once there was a fox."]))
    meta = prepare.prepare("text", source=str(tmp_path / "sh"), out_dir=out, name="sh")
    ids, _ = load(tmp_path / "data" / "sh", "val", meta)
    assert enc.decode(ids.tolist()) == "Hi" + EOT and meta["splits"]["val"]["documents"] == 1
    # a repeat between two documents val keeps: the documents after it move up, whole
    docs = [f"Story {i}: a dog found a ball." for i in range(30)]
    docs[28] = docs[5]  # val: the last 3
    meta = prepare.prepare("text", source=write(tmp_path / "st.txt", EOT.join(docs)), out_dir=out, name="st")
    ids, _ = load(tmp_path / "data" / "st", "val", meta)
    check_sizes(tmp_path / "data" / "st", meta)
    assert enc.decode(ids.tolist()) == docs[27] + EOT + docs[29] + EOT and meta["splits"]["val"]["documents"] == 2
    assert "every document of the val split" not in capsys.readouterr().err


@needs_mirror
def test_mirror_shakespeare_byte_level(tmp_path):
    # --vocab_size 259: the 256 bytes and the special tokens, no merges; on ASCII text a token is a character,
    # nanoGPT's shakespeare_char
    prepare.main(["--dataset", "shakespeare", "--vocab_size", "259", "--out_dir", str(tmp_path / "data")])
    folder = tmp_path / "data" / "shakespeare"
    meta = json.loads((folder / "meta.json").read_text())
    check_sizes(folder, meta)
    with open(os.path.join(MIRROR, "shakespeare", "input.txt"), "rb") as f:
        text = f.read()
    assert meta["vocab_size"] == 259 and "shakespeare/input.txt" in meta["source"]
    enc = get_tokenizer(str(folder / "tokenizer.tiktoken"))
    train_ids, _ = load(folder, "train", meta)
    val_ids, _ = load(folder, "val", meta)
    ids = train_ids.tolist() + val_ids.tolist()
    assert ids[-1] == enc.eot_token and len(ids) == len(text) + 1  # one token a byte
    assert enc.decode(ids[:-1]).encode() == text
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len(text)
    assert 0.09 < len(val_ids) / len(ids) < 0.11


def test_extra_stories_skip_those_an_earlier_extra_file_has(tmp_path):
    cased, lower = tmp_path / "head.txt", tmp_path / "head-lowercase.txt"
    cased.write_text("Tom had a red ball.\nSue saw  a cat.\n")
    lower.write_text("tom had a red ball.\nsue saw a cat.\nthe sun was hot.\n")
    assert [d for d, _ in prepare.extra_docs(str(lower), [str(cased)])] == ["the sun was hot."]
    assert len(list(prepare.extra_docs(str(lower)))) == 3
    # nor those of the main file, whose tail is val
    main = tmp_path / "sample.txt"
    main.write_text(f"Once there was a dog.{EOT}The Sun was hot.{EOT}")
    assert [d for d, _ in prepare.extra_docs(str(lower), main=[str(main)])] == ["tom had a red ball.", "sue saw a cat."]


def test_the_extra_stories_left_out_are_counted_in_the_summary(tmp_path, monkeypatch, capsys):
    """The mirror's three story files hold 9,725 stories and made 8,621 documents: the 1,104 the extra files repeat
    went unsaid, and a count of the files' stories did not add up. They are counted by file."""
    mirror, out = tmp_path / "mirror", str(tmp_path / "data")
    write(mirror / "tinystories" / "TinyStories-sample.txt", EOT.join(f"Sample story {i}." for i in range(10)))
    write(mirror / "tinystories" / "TinyStories-train-head.txt", "Head story 0.\nSample  story 3.\nHead story 1.\n")
    write(mirror / "tinystories" / "TinyStories-train-head-lowercase.txt",
          "head story 0.\nhead story 1.\nsample story 5.\nlower story 0.\n")
    monkeypatch.setenv("DATA_MIRROR", str(mirror))
    meta = prepare.prepare("story", out_dir=out)
    out = capsys.readouterr().out
    assert "\n  left out 4 stories of the extra files already in an earlier file (case and spacing ignored): " \
           "TinyStories-train-head.txt (1), TinyStories-train-head-lowercase.txt (3)\n" in out, out
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] + 4 == 10 + 3 + 4
    # a small set's speeds are not said as none ("0.2 kB of text in 0.1s: 0.00 MB/s, 0.00M tokens/s"); under a kB/s
    # (a run over 0.19 s, on a loaded machine) in bytes/s
    # (whatever the unit, which the time taken decides: print_summary's own test pins them)
    assert re.search(r" bytes of text in [\d.]+s: [\d.]+ (MB|kB|bytes)/s, [\d.]+[kM]? tokens/s\n", out), out
    assert not re.search(r" 0\.0+ (MB|kB)/s| 0\.00M tokens/s", out), out


def test_prepare_does_not_import_torch():
    """prepare.py and setup_tokenizer.py need numpy and tiktoken only: importing torch would add ~2 s to every run,
    more than preparing the story set takes."""
    import subprocess
    import sys
    code = "import sys, prepare, setup_tokenizer; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def small_chat_set(tmp_path):
    """(meta, prepare's keywords) of a chat set of 20 one-turn conversations built in tmp_path/data/c."""
    convs = [{"messages": [{"role": "user", "content": f"Q {i}?"}, {"role": "assistant", "content": f"A {i}."}]}
             for i in range(20)]
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps(c) for c in convs), encoding="utf-8")
    kw = dict(source=str(src), out_dir=str(tmp_path / "data"), name="c")
    return prepare.prepare("chat", **kw), kw


def test_a_truncated_mask_file_is_rebuilt_not_up_to_date(tmp_path, capsys):
    meta, kw = small_chat_set(tmp_path)
    mask = tmp_path / "data" / "c" / "train_mask.bin"
    mask.write_bytes(mask.read_bytes()[:-5])  # a copy cut short
    capsys.readouterr()
    prepare.prepare("chat", **kw)
    assert "up to date" not in capsys.readouterr().out
    assert os.path.getsize(mask) == meta["splits"]["train"]["tokens"]
    # and a token file longer than meta.json says (other data copied over it)
    train = tmp_path / "data" / "c" / "train.bin"
    train.write_bytes(train.read_bytes() + bytes(2))
    prepare.prepare("chat", **kw)
    assert "up to date" not in capsys.readouterr().out
    assert os.path.getsize(train) == meta["splits"]["train"]["tokens"] * 2


@pytest.mark.parametrize("change", [{"has_mask": False}, {"has_mask": False, "kind": None}, {"vocab_size": 1},
                                    {"splits": "bytes -5"}, {"tokenizer_hash": None}, {"tokenizer_hash": "0" * 16},
                                    {"vocab_size": "512"}, {"format": 2}])
def test_a_meta_json_edited_against_its_data_is_rebuilt_not_up_to_date(tmp_path, capsys, change):
    """train.py refuses such a meta.json and names the command that made the dataset: found up to date, that command
    put nothing right, and the refusal came again (seen for a vocab_size of '512'). (kind None: gone, where the masks
    beside has_mask say it.)"""
    meta, kw = small_chat_set(tmp_path)
    edited = json.loads(json.dumps(meta))
    for k, v in change.items():
        if v is None:
            del edited[k]
        elif k == "vocab_size" and isinstance(v, int):
            edited[k] += v
        elif k == "splits":
            edited[k]["val"]["bytes"] = -5
        else:
            edited[k] = v
    (tmp_path / "data" / "c" / "meta.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert prepare.prepare("chat", **kw) == meta
    assert "up to date" not in capsys.readouterr().out
    assert prepare.read_meta(str(tmp_path / "data" / "c")) == meta


def test_a_records_system_field_becomes_the_system_message():
    for record in ({"system": "Be terse.", "instruction": "Hi", "output": "Hello"},
                   {"system": "Be terse.", "messages": [{"role": "user", "content": "Hi"},
                                                        {"role": "assistant", "content": "Hello"}]}):
        assert prepare.record_doc(record, "x") == [{"role": "system", "content": "Be terse."},
                                                   {"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello"}]
    # conversations that open with a system message of their own keep it, one system message, not the field's too
    record = {"system": "Be terse.", "messages": [{"role": "system", "content": "Be kind."},
                                                  {"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello"}]}
    assert prepare.record_doc(record, "x") == record["messages"]


def test_seed_task_instances_of_another_shape_are_a_one_line_error():
    """A Self-Instruct seed task's `instances` that are no list of input/output examples name the shape expected,
    not a KeyError."""
    for instances in ([{"input": "a"}], {"input": "a", "output": "b"}, 5):
        with pytest.raises(UserError, match=r"^f line 1: `instances` must be a list of \{"):
            prepare.record_docs({"instruction": "Add.", "instances": instances}, "f line 1")


def test_a_record_of_several_shapes_is_read_by_the_first_that_holds_something():
    """The precedence README states: a list of turns, then PAIRS in order, a pair whose reply is null passed over (a
    mixed parquet file's Dolly row has Alpaca's output column, null), a null reply an empty one where no pair holds
    both."""
    def read(**record):
        doc = prepare.record_doc(record, "x")
        return doc and [m["content"] for m in doc]
    assert read(messages=[{"role": "user", "content": "M"}, {"role": "assistant", "content": "m"}],
                instruction="I", output="O") == ["M", "m"]
    assert read(instruction="I", output="O", response="R", question="Q", answer="A") == ["I", "O"]
    assert read(instruction="I", input=None, output=None, context="C", response="R") == ["I\n\nC", "R"]
    assert read(question="Q", answer="A", prompt="P", completion="C") == ["Q", "A"]
    assert read(prompt="P", completion=None, response="R", query="Q") == ["P", "R"]
    assert read(query="Q", response="R", text="T") == ["Q", "R"]
    assert read(instruction="I", output=None) is None  # nothing to train on, as before
    # any shape's null reply is an empty one, as Alpaca's: a Dolly row of null response was refused as having no
    # instruction/response field, unless the file had Alpaca's columns too (then left out)
    for record in ({"instruction": "I", "context": None, "response": None}, {"question": "Q", "answer": None},
                   {"prompt": "P", "completion": None}, {"query": "Q", "response": None}):
        assert read(**record) is None and read(**record, output=None, input=None) is None
    assert read(system="S", prompt="P", completion="C") == ["S", "P", "C"]
    # the pairs read after these: an Alpaca row is not its input/output, a GSM8K row not question/response
    assert read(instruction="I", input="X", output="O") == ["I\n\nX", "O"]
    assert read(instruction=None, input="X", output="O") == ["X", "O"]
    assert read(question="Q", answer="A", response="R", problem="P", solution="S") == ["Q", "A"]
    # system fields in SYSTEM_FIELDS' order, an empty one passed over; a system turn of the conversation first
    assert read(system="S", system_prompt="SP", question="Q", response="R") == ["S", "Q", "R"]
    assert read(system=None, system_prompt="SP", question="Q", response="R") == ["SP", "Q", "R"]
    assert read(system_prompt="", question="Q", response="R") == ["Q", "R"]
    assert read(messages=[{"role": "system", "content": "M"}, {"role": "user", "content": "Q"},
                          {"role": "assistant", "content": "R"}], system_instruction={"parts": [{"text": "G"}]}) == \
        ["M", "Q", "R"]
    # TRL's completion of no turns is an empty reply, as "" is: left out (it was kept: a question with no reply,
    # nothing of it trained)
    for prompt in ([{"role": "user", "content": "P"}],
                   [{"role": "user", "content": "P"}, {"role": "assistant", "content": "A"}]):
        assert read(prompt=prompt, completion=[]) is None and read(prompt=prompt, completion="") is None
    # a seed task's instances are several documents of one record; else one
    assert prepare.record_docs({"instruction": "I", "instances": [{"input": "a", "output": "b"}, {"output": "c"}]},
                               "x") \
        == [[{"role": "user", "content": "I\n\na"}, {"role": "assistant", "content": "b"}],
            [{"role": "user", "content": "I"}, {"role": "assistant", "content": "c"}]]
    for first in ({"output": "O"}, {"messages": [{"role": "user", "content": "I"},
                                                 {"role": "assistant", "content": "O"}]}):
        assert prepare.record_docs({"instruction": "I", "instances": [{"output": "b"}] * 2, **first}, "x") == \
            [[{"role": "user", "content": "I"}, {"role": "assistant", "content": "O"}]]
    # fields of the wrong type: one line naming the field
    # (a prompt or completion may be turns too: "must be text" named half of the fix)
    for record, error in (({"prompt": 5, "completion": "c"}, "`prompt` must be text or a list of turns, got a number"),
                          ({"prompt": "p", "completion": {"role": "assistant", "content": "c"}},
                           "`completion` must be text or a list of turns, got an object"),
                          ({"prompt": "p", "response": {"text": "r"}}, "`response` must be text, got an object"),
                          ({"query": ["q"], "response": "r"}, "`query` must be text, got an array"),
                          ({"instruction": "i", "context": [1], "response": "r"},
                           "`context` must be text, got an array"),
                          ({"text": True}, "`text` must be text, got a boolean"),  # (JSON's words, not "got bool")
                          ({"messages": [{"role": "user", "content": 5}]}, "message content must be text or a list "
                           'of text parts ({"type": "text", "text": ...}), got a number'),
                          ({"prompt": [{"x": 1}], "completion": "c"}, "`prompt` must be a list of turns like"),
                          ({"instruction": "i", "instances": [{"input": "a"}]}, "`instances` must be a list of "),
                          ({"instruction": "i", "instances": "a"}, "`instances` must be a list of "),
                          ({"system_prompt": ["s"], "question": "q", "response": "r"},
                           "`system_prompt` must be text, got an array"),
                          # Gemini's: a turn of text where parts go, an image part, a system instruction's parts
                          ({"contents": [{"role": "user", "text": "Hi"}]}, '`contents` must be a list of turns like '
                           '{"role": "user", "parts": [{"text": "Hi!"}]}; turn 1 of 1 has no "parts"'),
                          ({"contents": [{"role": "user", "parts": [{"inlineData": {"data": "..."}}]}]},
                           "Gemini's `parts` must be a list of text parts like [{\"text\": \"Hi!\"}], got a part "
                           "with no text (an image, a file?)"),
                          ({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                            "systemInstruction": {"parts": "Be brief."}}, "Gemini's `parts` must be a list of text "
                           "parts like [{\"text\": \"Hi!\"}], got a string"),
                          ({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f"}}]}]},
                           "a tool call (OpenAI's tool_calls, a \"tool\" turn, Gemini's functionCall): only system"),
                          # ChatGPT's export: a damaged tree (a parent named that is not in it), no current_node
                          ({"mapping": {"a": {"message": None, "parent": "b"}}, "current_node": "a"},
                           "`mapping` has no message 'b', named as a current_node or parent"),
                          ({"mapping": {"a": {"message": {"id": "a", "author": "user", "content": "Hi"},
                                              "parent": None}}, "current_node": "a"},
                           "message 'a' of `mapping` has an author, content or metadata that is no object, as "
                           "ChatGPT's export writes them"),
                          ({"mapping": {"a": {"message": None, "parent": None}}, "title": "t"},
                           "a ChatGPT export's conversation needs `mapping` (an object of messages) and its "
                           "`current_node` (an id in it)")):
        with pytest.raises(UserError, match=rf"^x: {re.escape(error)}"):
            prepare.record_docs(record, "x")
    # a loop of parents in a damaged export ends: the path read once (it was followed forever)
    user = {"author": {"role": "user"}, "content": {"content_type": "text", "parts": ["Hi"]}}
    reply = {"author": {"role": "assistant"}, "content": {"content_type": "text", "parts": ["Hello"]}}
    looped = {"a": {"message": user, "parent": "b"}, "b": {"message": reply, "parent": "a"}}
    assert prepare.record_doc({"mapping": looped, "current_node": "b"}, "x") == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    # a voice chat's turn is its transcript (parts that are objects, dropped unsaid as images are)
    voice = {"author": {"role": "user"}, "content": {"content_type": "multimodal_text", "parts": [
        {"content_type": "audio_transcription", "text": "Hi", "direction": "in"},
        {"content_type": "audio_asset_pointer"}]}}
    assert prepare.record_doc({"mapping": {"a": {"message": voice, "parent": None},
                                           "b": {"message": reply, "parent": "a"}}, "current_node": "b"}, "x") == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    # a text set's column named mapping, with no current_node: its text, as before ChatGPT's export was read
    assert prepare.record_doc({"text": "T", "mapping": {"k": "v"}}, "x") == ("T", True)
    # a thinking Gemini's thought summaries are parts of its turn, not its reply
    assert prepare.record_doc({"contents": [{"role": "user", "parts": [{"text": "Q"}]}, {"role": "model", "parts": [
        {"text": "Let me think.", "thought": True}, {"text": "A"}]}]}, "x") == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_a_file_of_records_with_nothing_to_train_on_says_so(tmp_path):
    """A file whose every record is read but has nothing to train on (TRL's completions all [], Alpaca's outputs all
    "", a reply column all null: the wrong field, or an export that lost it) was "no documents found ...: give files
    that hold text", for a file of text; its error says why, beside a good file too (it was left out unsaid)."""
    out = str(tmp_path / "data")
    empty = [{"prompt": [{"role": "user", "content": "Q"}], "completion": []}, {"instruction": "I", "output": ""},
             {"prompt": "P", "completion": None}]
    write(tmp_path / "mine" / "empty.jsonl", "".join(json.dumps(r) + "\n" for r in empty))
    with pytest.raises(UserError, match=r"^.*empty\.jsonl: none of its records has anything to train on \(every "
                                        r"assistant reply, or text, is missing, empty or null\): fill them in, or "
                                        r"leave the file out$"):
        prepare.prepare("text", source=str(tmp_path / "mine"), out_dir=out, name="mine")
    write(tmp_path / "mine" / "good.jsonl", "".join(json.dumps({"prompt": f"P{i}", "completion": f"C{i}"}) + "\n"
                                                    for i in range(20)))
    with pytest.raises(UserError, match=r"empty\.jsonl: none of its records has anything to train on"):
        prepare.prepare("text", source=str(tmp_path / "mine"), out_dir=out, name="mine")
    # a file with one record to train on among empty ones is read, the empty ones left out as before
    write(tmp_path / "mine" / "empty.jsonl",
          "".join(json.dumps(r) + "\n" for r in empty + [{"prompt": "P", "completion": "C"}]))
    meta = prepare.prepare("text", source=str(tmp_path / "mine"), out_dir=out, name="mine")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 21

def test_openai_text_parts_read_as_the_string_they_join():
    # content as a list of text parts (OpenAI's newer format, what serve.py takes and a logged API chat holds) was
    # refused; it reads as serve.py reads it, and other parts (an image) are still one clear line
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi, "},
                                                       {"type": "text", "text": "you"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]}
    assert prepare.record_doc(parts, "x") == [{"role": "user", "content": "Hi, you"},
                                              {"role": "assistant", "content": "Hello"}]
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                          {"role": "assistant", "content": "Hello"}]}
    with pytest.raises(UserError, match=r"^x: message content must be text or a list of text parts"):
        prepare.record_doc(image, "x")


def test_lmsys_conversation_records_and_capitalised_roles_are_read():
    # lmsys-chat-1m and WildChat name the list `conversation`; some ShareGPT exports write "Human"/"GPT" or "USER":
    # both were "no messages, conversations ... field" or "unknown role 'Human'"
    want = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert prepare.record_doc({"conversation": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Hello"}]}, "x") == want
    assert prepare.record_doc({"conversations": [{"from": "Human", "value": "Hi"},
                                                 {"from": "GPT", "value": "Hello"}]}, "x") == want
    assert prepare.record_doc({"messages": [{"role": "USER", "content": "Hi"},
                                            {"role": "Assistant", "content": "Hello"}]}, "x") == want
    # Gemini's (and Gemma's template's) "model", OpenAssistant's "prompter", raw ShareGPT dumps' "bing" and "bard"
    for user, assistant in (("user", "model"), ("prompter", "assistant"), ("human", "bing"), ("human", "bard")):
        assert prepare.record_doc({"messages": [{"role": user, "content": "Hi"},
                                                {"role": assistant, "content": "Hello"}]}, "x") == want
    with pytest.raises(UserError, match="unknown role 'Bob'"):
        prepare.record_doc({"messages": [{"role": "Bob", "content": "Hi"}]}, "x")


def test_an_empty_reply_among_others_is_not_trained_on(tmp_path, enc):
    # its mask was on the <|im_end|> right after "assistant\n": the model learnt to answer some questions with nothing
    records = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": " " * (i % 2)},
                             {"role": "user", "content": f"Again {i}?"}, {"role": "assistant", "content": f"A{i}."}]}
               for i in range(4)]
    records += [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""},
                                   {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}]
    meta = prepare.prepare("chat", source=write(tmp_path / "c.jsonl", "\n".join(map(json.dumps, records))),
                           out_dir=str(tmp_path / "data"), pack=0)
    spans = []
    for split in ("train", "val"):
        ids, mask = load(tmp_path / "data" / "chat", split, meta)
        spans += masked_spans(enc, ids, mask)
        assert enc.decode(ids.tolist()).count("<|im_start|>assistant\n") == 2 * meta["splits"][split]["documents"]
    assert spans == [f"A{i}." + IM_END for i in range(4)] + ["Hello." + IM_END]


def test_a_conversation_that_exactly_fills_the_open_block_goes_in_it(tmp_path, enc):
    out = prepare.Split(str(tmp_path), "train", np.uint16, True)
    packer = prepare.Packer(out, 16, enc, prepare.token_bytes(enc))
    doc = np.array([enc.encode_single_token(IM_START)] + [11] * 6 + [enc.eot_token], np.uint16)
    for _ in range(2):
        packer.add(doc, np.zeros(8, np.uint8))
    packer.close()
    # two conversations of 8 fill a block of 16 exactly: no padding but the closing <|endoftext|>
    assert (out.tokens, out.padding) == (17, 1)
    out.discard()


def test_conversations_that_come_apart_are_packed_together(tmp_path, enc):
    """The packer looks ahead over the conversations waiting, not only the next: three of 10 tokens then three of 6
    fill three blocks of 16 with no padding but the closing <|endoftext|>, where placed as they come every block of
    a 10 waited on a 6 that had not yet come."""
    out = prepare.Split(str(tmp_path), "train", np.uint16, True)
    packer = prepare.Packer(out, 16, enc, prepare.token_bytes(enc))
    for n in (10, 10, 10, 6, 6, 6):
        packer.add(np.array([enc.encode_single_token(IM_START)] + [11] * (n - 2) + [enc.eot_token], np.uint16),
                   np.zeros(n, np.uint8))
    packer.close()
    assert (out.tokens, out.padding, out.documents) == (49, 1, 6)
    out.discard()


def test_a_conversation_of_exactly_a_block_is_not_in_pieces(tmp_path, enc):
    """A conversation that fills a block exactly, its <|endoftext|> included, fits it: it is placed whole, its final
    question kept (only a conversation cut in pieces leaves out a tail that trains nothing), and not counted among
    those longer than a block, which the summary and train.py's packing warning report."""
    block = 32
    for words in range(1, 40):
        conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * 4},
                {"role": "user", "content": "and " + "x " * words}]
        ids, mask = render_chat(enc, conv)
        if len(ids) + 1 == block:
            break
    else:
        pytest.fail("no conversation of exactly a block")
    out = prepare.Split(str(tmp_path), "train", np.uint16, True)
    packer = prepare.Packer(out, block, enc, prepare.token_bytes(enc))
    packer.add(np.array(ids + [enc.eot_token], np.uint16), np.array(mask + [0], np.uint8))
    packer.close()
    assert prepare.read_tokens(out, 0, out.tokens).tolist() == ids + [enc.eot_token] * 2  # and the closing one
    assert prepare.read_tokens(out, 0, out.tokens, mask=True).tolist() == mask + [0, 0]
    assert (out.in_pieces, out.untrained_tails, out.cut_exchanges) == (0, 0, 0)
    out.discard()


@pytest.mark.parametrize("replies", [["yes " * 8], ["yes", "and more"]], ids=["one_reply", "two_replies"])
def test_an_exchange_of_exactly_a_block(enc, replies):
    """With its closing <|endoftext|> such an exchange is a token longer than a block. Its question is no piece of its
    own (it would train nothing, and its reply would train without it): with one reply it is one piece; with two it is
    cut after the first, which trains something, so that every piece fits a block, where whole it would cross into the
    next."""
    block = 32
    packer = prepare.Packer(None, block, enc, None)
    for words in range(1, 40):
        second = [{"role": "user", "content": "ask " + "x " * words}] + [{"role": "assistant", "content": r}
                                                                          for r in replies]
        if len(render_chat(enc, second)[0]) == block:
            break
    else:
        pytest.fail("no exchange of exactly a block")
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] + second
    ids, mask = render_chat(enc, conv)
    pieces = packer.pieces(np.array(ids + [enc.eot_token], np.uint32), np.array(mask + [0], np.uint8))
    parts = (conv[:2], second) if len(replies) == 1 else (conv[:2], second[:2], second[2:])
    assert [p.tolist() for p, _ in pieces] == [render_chat(enc, part)[0] + [enc.eot_token] for part in parts]


def test_a_reply_in_two_messages_stays_with_its_question_in_pieces(enc):
    """A conversation longer than a block is cut before a user message, not before any turn: a reply given as two
    assistant messages in a row (a ShareGPT scrape's long answer, split) keeps its second part with the question, where
    a cut between them would train that part in a piece without its question."""
    B = 48
    qa = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris is the capital of France."}]
    second = [{"role": "user", "content": "And Italy?"}, {"role": "assistant", "content": "Rome."},
              {"role": "assistant", "content": "It has been since 1871."}]
    conv = qa + second
    assert len(render_chat(enc, conv[:-1])[0]) + 1 <= B < len(render_chat(enc, conv)[0]) + 1
    assert len(render_chat(enc, second)[0]) + 1 <= B
    ids, mask = render_chat(enc, conv)
    packer = prepare.Packer(None, B, enc, None)
    pieces = packer.pieces(np.array(ids + [enc.eot_token], np.uint32), np.array(mask + [0], np.uint8))
    eot = [enc.eot_token]
    assert [p.tolist() for p, _ in pieces] == [render_chat(enc, qa)[0] + eot, render_chat(enc, second)[0] + eot]


def test_limit_counts_a_book_read_in_pieces_once(tmp_path, monkeypatch):
    chunks = prepare.read_text_chunks
    monkeypatch.setattr(prepare, "read_text_chunks", lambda path: chunks(path, chunk_chars=50))
    books = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for i, b in enumerate(books):
        b.write_text("".join(f"Book {i}, line {n}: the quick brown fox.\n" for n in range(40)), encoding="utf-8")
    src = [str(b) for b in books]
    whole = prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"), name="whole")
    limited = prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"), name="lim", limit=2)
    assert limited["splits"] == whole["splits"]  # two documents: both books, whole


def test_lone_surrogates_in_chat_messages_read_as_tiktoken_reads_them(tmp_path):
    """A lone surrogate escaped in JSON ("\\ud800") inside a chat record's `messages` or `conversations` list is read
    as U+FFFD, as in a text record: left in, a --vocab_size build failed in a traceback."""
    convs = [[{"role": "user", "content": f"Hi \\ud800 number {i}"},
              {"role": "assistant", "content": f"Hello \\udfff back {i}, a pair "
                                               f"\\ud83d\\ude00 stays"}] for i in range(6)]
    messages = "\n".join('{"messages": [' + ", ".join(
        '{"role": "%s", "content": "%s"}' % (m["role"], m["content"]) for m in c) + "]}" for c in convs)
    names = {"user": "human", "assistant": "gpt"}
    share = "[" + ", ".join('{"conversations": [' + ", ".join(
        '{"from": "%s", "value": "%s"}' % (names[m["role"]], m["content"]) for m in c) + "]}" for c in convs) + "]"
    for filename, text in (("m.jsonl", messages), ("s.json", share)):
        src = write(tmp_path / filename, text)
        for vocab_size in (None, 300):
            name = f"{filename.split('.')[0]}{vocab_size}"
            meta = prepare.prepare("chat", source=src, out_dir=str(tmp_path / "data"), name=name,
                                   vocab_size=vocab_size, val_fraction=0.2, pack=0)
            tok = get_tokenizer(meta["tokenizer"])
            ids, mask = load(tmp_path / "data" / name, "train", meta)
            assert tok.decode(ids.tolist()).startswith(
                IM_START + "user\nHi \ufffd number 0" + IM_END + "\n" + IM_START + "assistant\n"
                "Hello \ufffd back 0, a pair \U0001f600 stays" + IM_END), (filename, vocab_size)
            assert "Hello \ufffd back 0, a pair \U0001f600 stays" + IM_END in masked_spans(tok, ids, mask)


def test_a_conversation_written_out_in_chatml_is_a_bad_record(tmp_path):
    """A `text` record holding a conversation already rendered in ChatML (a chat template applied before saving, as
    many SFT sets' text column is) was read as plain text, under --dataset chat too, with no word: its <|im_start|>
    and <|im_end|> trained on as words, no real token to end a reply at, and the user's turns in the loss."""
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    error = r"a conversation written out in ChatML .*: give it as `messages` \[\{\"role\": \"user\""
    for record in ({"text": chatml}, {"text": "\n" + chatml}, chatml):
        with pytest.raises(UserError, match=rf"^x: {error}"):
            prepare.record_doc(record, "x")
    with pytest.raises(UserError, match=rf"c\.jsonl line 1: {error}"):
        prepare.prepare("chat", source=write(tmp_path / "c.jsonl", json.dumps({"text": chatml}) + "\n"),
                        out_dir=str(tmp_path / "data"))
    # the same in a .txt file, which is read as plain text whatever --dataset says
    for dataset in ("chat", "text"):
        with pytest.raises(UserError, match=r"c\.txt: a conversation written out in ChatML .*, every turn in the loss; "
                                            r"a \.txt file is read as plain text: write the "
                                            r"conversations as \.jsonl records of `messages`$"):
            prepare.prepare(dataset, source=write(tmp_path / "c.txt", ("\n" + chatml + "<|endoftext|>") * 3),
                            out_dir=str(tmp_path / "data"), name="c")
    assert not os.path.exists(tmp_path / "data" / "c")
    # text that merely names the tokens is still text
    assert prepare.record_doc({"text": "ChatML opens a turn with <|im_start|>."}, "x") == \
        ("ChatML opens a turn with <|im_start|>.", True)



def test_text_wrapped_in_chatml_markers_without_roles_is_told_to_lose_them(tmp_path, enc):
    """minimind's pretraining files wrap each text in <|im_start|> ... <|im_end|> with no role. It was refused as "a
    conversation written out in ChatML ... give it as `messages`", a fix with no roles to give: the error names the
    markers and the command that takes them out, and what that command writes prepares."""
    wrapped = "<|im_start|>小明喜欢读书。<|im_end|> <|im_start|>Once upon a time<|im_end|>"
    with pytest.raises(UserError, match=r"^x: text wrapped in <\|im_start\|> \.\.\. <\|im_end\|> with no role "
                                        r".*minimind.* as in: sed -e 's/<\|im_start\|>//g' -e "
                                        r"'s/<\|im_end\|>//g' IN\.jsonl > "
                                        r"IN\.plain\.jsonl$"):
        prepare.record_doc({"text": wrapped}, "x")
    txt = write(tmp_path / "pre train.txt", "".join(f"{wrapped} {i}\n<|endoftext|>\n" for i in range(10)))
    with pytest.raises(UserError, match=r"pre train\.txt: text wrapped .* > '.*/pre train\.plain\.txt'$") as e:
        prepare.prepare("text", source=txt, out_dir=str(tmp_path / "data"), name="pre")
    command = str(e.value).partition("as in: ")[2]
    subprocess.run(command, shell=True, check=True)
    meta = prepare.prepare("text", source=str(tmp_path / "pre train.plain.txt"), out_dir=str(tmp_path / "data"),
                           name="pre")
    text = "".join(enc.decode(load(tmp_path / "data" / "pre", split, meta)[0].tolist()) for split in ("train", "val"))
    assert text.count("小明喜欢读书。 Once upon a time") == 10 and "<|im_" not in text
    # a role's line break after the marker is a conversation still, as a chat template writes one
    with pytest.raises(UserError, match=r"a conversation written out in ChatML"):
        prepare.record_doc({"text": "<|im_start|>system \nBe brief.<|im_end|>"}, "x")

class Bar:
    """A stand-in for tqdm (common.progress_bar's) that records its total, whether it is disabled and what it was
    advanced by."""
    made = []

    def __init__(self, *args, total=None, disable=False, **kwargs):
        self.total, self.n, self.unit, self.disable = total, 0, kwargs.get("unit"), disable
        Bar.made.append(self)

    def update(self, n):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_progress_counts_bytes_of_input_to_their_total(tmp_path, monkeypatch):
    """The progress of a minutes-long build is the bytes of its input read, out of their sum, so that it has an end
    and a time left: it counted documents, of no total (a 2 GB file showed 744k docs at 1.6k docs/s for 8 minutes,
    no sign of how far it had come). A record's JSON counts, at its file's end: the bar ends at the total."""
    monkeypatch.setattr(tqdm, "tqdm", Bar)  # (common.progress_bar imports it when a bar is drawn)
    monkeypatch.setattr(common, "draws_a_bar", lambda stream: True)  # (a terminal's: pytest's capture is none)
    text = write(tmp_path / "src" / "a.txt", f"\n{EOT}\n".join(DOCS))
    chats = write(tmp_path / "src" / "b.jsonl", "".join(
        json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                 {"role": "assistant", "content": f"answer {i} " * 20}]}) + "\n" for i in range(30)))
    for src in (text, chats):
        Bar.made.clear()
        prepare.prepare("text", source=src, name=os.path.basename(src)[0], out_dir=str(tmp_path / "data"))
        bar, *packing = Bar.made
        assert bar.unit == "B" and bar.total == os.path.getsize(src) and bar.n == bar.total
    # packing conversations reads their tokens again, a bar of its own: at the input's end, it had minutes to go (a 0.5
    # GB chat set: 30 s of 230)
    (packing,) = packing
    assert packing.unit == " tokens" and packing.total > 0 and packing.n == packing.total
    # --limit reads some of the files: bytes, of no total
    Bar.made.clear()
    prepare.prepare("text", source=text, name="c", limit=20, out_dir=str(tmp_path / "data"))
    (bar,) = Bar.made
    assert bar.total is None and 0 < bar.n < os.path.getsize(text)


def test_training_a_vocabulary_shows_the_input_it_has_read(tmp_path, monkeypatch):
    """--vocab_size reads the whole input before its build (a sample spread over it): 3 GB took 4 minutes with no
    progress shown. A bar of its own, in bytes of text of the files' sizes, which each file's end brings it to, as the
    build's does: separators, records' JSON and val's tail (which the vocabulary never reads) are no text, and a chat
    set's bar ended at 71%, its lines' time left too long by as much."""
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.setattr(common, "draws_a_bar", lambda stream: True)
    text = write(tmp_path / "src" / "a.txt", f"\n{EOT}\n".join(f"Story {i}: the cat sat." * 5 for i in range(200)))
    Bar.made.clear()
    prepare.prepare("text", source=text, vocab_size=300, val_fraction=0, out_dir=str(tmp_path / "data"))
    vocabulary, build = Bar.made
    assert vocabulary.unit == build.unit == "B" and vocabulary.total == vocabulary.n == os.path.getsize(text)
    chats = write(tmp_path / "src" / "b.jsonl", "".join(json.dumps({"messages": [
        {"role": "user", "content": f"Hi {i}, how is the cat?"}, {"role": "assistant", "content": "It sat."}]}) + "\n"
        for i in range(200)))
    Bar.made.clear()
    prepare.prepare("chat", source=chats, vocab_size=300, out_dir=str(tmp_path / "data"))
    vocabulary = Bar.made[0]  # (then the build's, and its packing's)
    assert vocabulary.total == vocabulary.n == os.path.getsize(chats)


def test_progress_off_a_terminal_is_a_line_a_minute(tmp_path, monkeypatch, capsys):
    """Where no bar is drawn (a nohup run's log) a build says how far it is every PROGRESS_LINE_S seconds: tqdm was
    disabled there, and 8 minutes went by without a word."""
    monkeypatch.setattr(common, "PROGRESS_LINE_S", 0)  # a line at every batch
    monkeypatch.setattr(prepare, "BATCH_DOCS", 10)
    src = write(tmp_path / "a.txt", f"\n{EOT}\n".join(DOCS))
    prepare.prepare("text", source=src, out_dir=str(tmp_path / "data"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(str(tmp_path / "data" / "text"))]
    size = os.path.getsize(src) / 1e6
    assert len(lines) >= 4 and all(f" MB of {size:,.0f} MB (" in line and line.endswith(" MB/s") for line in lines)
    assert "min left" in lines[0] and lines[-1].split("(")[1].startswith("100%)")
    # and the packing of conversations, in tokens
    chats = write(tmp_path / "b.jsonl", "".join(json.dumps({"messages": [
        {"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
        for i in range(30)))
    meta = prepare.prepare("text", source=chats, name="chats", out_dir=str(tmp_path / "data"))
    lines = [line for line in capsys.readouterr().err.splitlines() if " packing: " in line]
    assert lines and lines[-1].endswith("M tokens/s") and "M tokens (100%)" in lines[-1]
    assert meta["kind"] == "chat"


def test_input_sizes_only_of_streams_that_are_their_files(tmp_path):
    """The progress total is the files' sizes only where each stream reads one file whole: a local folder read as a hub
    set (hf:PATH) has a split's files, any number, under streams of splits; their sizes were matched to the streams in
    order, and a train split of two files made val's stream the second file's."""
    a, b = write(tmp_path / "a.jsonl", "{}\n"), write(tmp_path / "b.jsonl", "{}\n\n")
    docs = list
    assert prepare.input_sizes({"files": [a, b], "streams": [("split", a, docs), ("split", b, docs)]}, None) == [3, 4]
    assert prepare.input_sizes({"files": [a, b], "streams": [("split", a, docs), ("split", b, docs)]}, 5) is None
    hub = {"files": [a, b], "streams": [("train", f"hf:{tmp_path} train", docs),
                                        ("val", f"hf:{tmp_path} validation", docs)]}
    assert prepare.input_sizes(hub, None) is None


def test_a_note_of_front_matter_alone_is_a_file_with_no_text(tmp_path, capsys):
    """A note that is its front matter alone (a daily note's template, never written in) is no document: it was one
    of nothing but its end (an <|endoftext|> trained on alone), counted in "2 documents", a folder of 2 notes with 1
    written in."""
    empty = write(tmp_path / "notes" / "2024-01-02.md", "---\ndate: 2024-01-02\ntags: [daily]\n---\n\n")
    write(tmp_path / "notes" / "2024-01-01.md", "---\ndate: 2024-01-01\n---\nOnce upon a time there was a cat.\n" * 50)
    meta = prepare.prepare("text", source=str(tmp_path / "notes" / "*.md"), out_dir=str(tmp_path / "data"),
                           tokenizer="gpt2", val_fraction=0)
    out = capsys.readouterr().out
    assert meta["splits"]["train"]["documents"] == 1, out
    assert f"\n  left out 1 file with no text: {empty}\n" in out, out


@pytest.mark.parametrize("note, kept", [
    ("---\ntitle: A\ntags: [a, b]\naliases:\n  - b\n# a comment\n\ndate: 2024-01-01\n---\n# A\nbody\n", "# A\nbody\n"),
    ("---\r\ntitle: A\r\n...\r\nbody\r\n", "body\r\n"),  # YAML's other end, Windows' newlines
    ("---\nNote: the rule above opens the note\nand this is prose\n---\nmore\n", None),  # a rule, not front matter
    ("---\n\nA rule, then a paragraph.\n", None),
    ("title: A\n---\nbody\n", None),  # not at the start
    ("Text.\n---\ntitle: A\n---\n", None),
])
def test_front_matter_is_only_a_markdown_notes_opening_block_of_yaml(note, kept):
    """What FRONT_MATTER leaves out of a note: a block of YAML lines between --- lines at its very start, nothing of a
    note that opens with a rule and prose."""
    head = prepare.FRONT_MATTER.match(note)
    assert (note[head.end():] if head else None) == kept
