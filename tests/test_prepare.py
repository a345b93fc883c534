"""prepare.py on small corpora written to tmp_path, and on the local mirror when there is one.
Never touches the network: the hub loader is replaced for every test."""
import base64
import json
import os

import numpy as np
import pytest

import prepare
from common import UserError
from setup_tokenizer import EOT, IM_END, get_tokenizer, render_chat, tokenizer_hash, train_tokenizer

MIRROR = os.environ.get("DATA_MIRROR")

DOCS = [f"Story {i}: a cat named Ünïcødé met 🐉 dragon #{i}. «こんにちは» עברית e\u0301" + " words" * (i % 7) for i in range(47)]
DOCS[3] += " A literal <|im_start|> and <|im_end|> inside a document stay plain text."
DOCS[5] = "Line one.\n\nLine two after a blank line."


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("the hub is off limits in tests")
    monkeypatch.setattr(prepare, "load_hub", refuse)


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


def snapshot(folder):
    return {f: (os.stat(os.path.join(folder, f)).st_ino, os.stat(os.path.join(folder, f)).st_mtime_ns,
                open(os.path.join(folder, f), "rb").read()) for f in sorted(os.listdir(folder))}


# -----------------------------------------------------------------------------
# plain text

def test_text_corpus(tmp_path, enc):
    src = write(tmp_path / "corpus.txt", EOT.join(DOCS) + EOT + "\n")
    meta = prepare.prepare("text", source=src, val_fraction=0.2, out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "text"
    assert meta == json.loads((folder / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["kind"] == "text" and not meta["has_mask"]
    assert meta["tokenizer"] == "gpt2" and meta["tokenizer_hash"] == tokenizer_hash(enc) and meta["vocab_size"] == enc.n_vocab
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
        assert meta["splits"][split]["bytes"] == len(text.encode("utf-8")) == len(enc.decode_bytes(ids.tolist()))
        # special-token strings inside the text were encoded as plain text: the only EOTs are the separators
        assert (ids == enc.eot_token).sum() == len(docs)
        assert not np.isin(ids, [enc.eot_token + 1, enc.eot_token + 2]).any()
    # memmap-able as train.py will read it
    assert len(np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")) == train["tokens"]


def test_single_document_is_cut_by_tokens(tmp_path, enc):
    book = "".join(f"Chapter {i}. It was a dark and stormy night; the rain fell in torrents.\n" for i in range(200))
    meta = prepare.prepare("text", source=write(tmp_path / "book.txt", book), out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "text"
    train, _ = load(folder, "train", meta)
    val, _ = load(folder, "val", meta)
    assert enc.decode(train.tolist() + val.tolist()) == book + EOT
    total = len(train) + len(val)
    assert abs(len(val) - 0.1 * total) <= 1
    assert meta["splits"]["val"]["bytes"] == len(enc.decode_bytes(val.tolist()))
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len((book + EOT).encode())


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
    assert whole[1] == [("First story.\n\nIts second paragraph.", True), ("Second story.", True), ("Third\n\n\nstory.", True)]
    chunks = prepare.read_text_chunks
    monkeypatch.setattr(prepare, "read_text_chunks", lambda path: chunks(path, chunk_chars=5))
    assert (list(prepare.text_docs(corpus)), list(prepare.story_line_docs(stories))) == whole


def test_non_utf8_and_bad_input(tmp_path):
    out = str(tmp_path / "data")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt is not UTF-8"):
        prepare.prepare("text", source=str(bad), out_dir=out)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match="latin1.jsonl is not UTF-8"):
        prepare.prepare("text", source=str(tmp_path / "latin1.jsonl"), out_dir=out)
    with pytest.raises(UserError, match=r"broken.jsonl line 2: malformed JSON"):
        prepare.prepare("chat", source=write(tmp_path / "broken.jsonl", '{"text": "ok"}\n{"text": oops}\n'), out_dir=out)
    with pytest.raises(UserError, match=r"broken.json line 3: malformed JSON"):
        prepare.prepare("chat", source=write(tmp_path / "broken.json", '[\n{"text": "ok"},\n{"text" "no colon"}]'), out_dir=out)
    with pytest.raises(UserError, match="--source .*nope.txt: no such file"):
        prepare.prepare("text", source=str(tmp_path / "nope.txt"), out_dir=out)
    with pytest.raises(UserError, match=r"odd.jsonl line 1: unknown role 'robot'"):
        prepare.prepare("chat", source=write(tmp_path / "odd.jsonl", json.dumps({"messages": [{"role": "robot", "content": "x"}]})), out_dir=out)
    with pytest.raises(UserError, match="mixes plain text and conversations"):
        prepare.prepare("chat", source=write(tmp_path / "mixed.jsonl", json.dumps({"text": "a"}) + "\n" + json.dumps({"question": "q", "answer": "a"})), out_dir=out)
    with pytest.raises(UserError, match="val_fraction"):
        prepare.prepare("text", source=str(bad), val_fraction=1.0, out_dir=out)
    assert not os.path.exists(os.path.join(out, "text", "train.bin"))


def test_uint32_for_large_vocabularies(tmp_path):
    # 256 bytes + 65,281 two-byte tokens: the special tokens land above 65535
    ranks = [bytes([i]) for i in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)][:65281]
    path = write(tmp_path / "big.tiktoken", "".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    meta = prepare.prepare("text", source=write(tmp_path / "c.txt", EOT.join(DOCS[:10])), tokenizer=path, out_dir=str(tmp_path / "data"))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 65540
    big = get_tokenizer(path)
    train, _ = load(tmp_path / "data" / "text", "train", meta)
    assert train[-1] == big.eot_token > 65535
    assert big.decode(train.tolist()) == "".join(d + EOT for d in DOCS[:9])


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

    # a rebuild with another size that is interrupted leaves the old vocabulary and tokens alone
    before = snapshot(folder)
    monkeypatch.setattr(prepare, "encode_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("text", source=corpus, out_dir=out, vocab_size=280)
    assert snapshot(folder) == before


# -----------------------------------------------------------------------------
# conversations

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ☃!"}, {"role": "assistant", "content": "Hello ☃."},
     {"role": "user", "content": "Say <|im_end|>"}, {"role": "assistant", "content": "<|im_end|> is just text here."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blau, i.e. blue."}],
] * 4  # 12 conversations: val gets the last one or two


def sharegpt(conv):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"id": "x", "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}


ALPACA = [{"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else f"Numbers: {i}, {i}", "output": f"{2 * i}"} for i in range(10)]
QA = [{"question": f"Q{i}: why is the sky blue?", "answer": f"Rayleigh scattering ({i})."} for i in range(10)]


def alpaca_conv(r):
    return [{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")},
            {"role": "assistant", "content": r["output"]}]


FORMATS = {  # name: (file name, file text, expected conversations)
    "messages": ("m.jsonl", "\n".join(json.dumps({"messages": c}) for c in CONVERSATIONS), CONVERSATIONS),
    "sharegpt": ("s.json", json.dumps([sharegpt(c) for c in CONVERSATIONS]), CONVERSATIONS),
    "alpaca": ("a.json", json.dumps(ALPACA, indent=1), [alpaca_conv(r) for r in ALPACA]),
    "qa": ("q.jsonl", "\n".join(json.dumps(r) for r in QA),
           [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in QA]),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_chat_formats(tmp_path, enc, fmt):
    filename, text, convs = FORMATS[fmt]
    meta = prepare.prepare("chat", source=write(tmp_path / filename, text), out_dir=str(tmp_path / "data"))
    folder = tmp_path / "data" / "chat"
    assert meta["kind"] == "chat" and meta["has_mask"]
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
        replies = [m["content"] + IM_END for conv in part for m in conv if m["role"] == "assistant"]
        assert masked_spans(enc, ids, mask) == replies
        assert meta["splits"][split]["bytes"] == len(enc.decode_bytes(ids.tolist()))


def test_chitchat_is_deterministic(tmp_path, enc):
    a = prepare.prepare("chitchat", out_dir=str(tmp_path / "a"))
    b = prepare.prepare("chitchat", out_dir=str(tmp_path / "b"))
    assert a["splits"] == b["splits"] and a["splits"]["train"]["documents"] + a["splits"]["val"]["documents"] >= 2000
    for f in ("train.bin", "val.bin", "train_mask.bin", "val_mask.bin"):
        assert (tmp_path / "a" / "chitchat" / f).read_bytes() == (tmp_path / "b" / "chitchat" / f).read_bytes()
    ids, mask = load(tmp_path / "a" / "chitchat", "val", a)
    spans = masked_spans(enc, ids, mask)
    assert spans and all(s.endswith(IM_END) for s in spans)
    assert "<|im_start|>system\n" in enc.decode(np.fromfile(tmp_path / "a" / "chitchat" / "train.bin", np.uint16).tolist())


def test_tidy_dailydialog():
    assert prepare.tidy_dailydialog(" I ’ m here , too . What ' s up ? It costs $ 5 ( or so ) ... right.But I ' Ve  to go ! ") == \
        "I'm here, too. What's up? It costs $5 (or so)... right. But I've to go!"
    assert prepare.tidy_dailydialog("We call it ' Sleeping Beauty ' . __eou__ ' Yes ' , at 5 o ' clock .") == \
        "We call it ' Sleeping Beauty '. __eou__ ' Yes ', at 5 o'clock."


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
    # --force rebuilds: same bytes, new files
    prepare.prepare("text", source=str(src), out_dir=out, force=True)
    after = snapshot(folder)
    assert {f: v[2] for f, v in after.items()} == {f: v[2] for f, v in before.items()}
    assert after["train.bin"][0] != before["train.bin"][0]
    # changed options and changed input rebuild
    assert prepare.prepare("text", source=str(src), out_dir=out, val_fraction=0.2)["splits"]["val"]["documents"] == round(len(DOCS) * 0.2)
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
    assert sorted(os.listdir(folder)) == ["train.bin", "val.bin"]  # new train.bin, old val.bin, no meta.json


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
    for name in ("story", "dailydialog", "chat", "knowledge"):
        assert f"skipping {name}: no data for --dataset {name}: pass --source PATH, or set DATA_MIRROR" in out
    assert json.loads((tmp_path / "data" / "chitchat" / "meta.json").read_text())["kind"] == "chat"


def test_hub_path(tmp_path, monkeypatch, enc):
    """Without --source or mirror the hub's rows are read, with the hub's own validation split."""
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path / "no-mirror"))
    rows = {"train": [{"text": f"Story {i}."} for i in range(20)], "validation": [{"text": "A val story."}]}
    asked = []

    def fake_hub(path, config, split):
        asked.append((path, config, split))
        return rows[split]

    monkeypatch.setattr(prepare, "load_hub", fake_hub)
    meta = prepare.prepare("story", out_dir=str(tmp_path / "data"))
    assert asked == [("roneneldan/TinyStories", None, "train"), ("roneneldan/TinyStories", None, "validation")]
    assert meta["source"] == "Hugging Face hub roneneldan/TinyStories"
    assert (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"]) == (20, 1)
    val, _ = load(tmp_path / "data" / "story", "val", meta)
    assert enc.decode(val.tolist()) == "A val story." + EOT
    rows.update(train=[{"dialog": ["Hi , there !", "Hello ."]}] * 3, validation=[{"dialog": ["Why ?", "Because ."]}])
    meta = prepare.prepare("dailydialog", out_dir=str(tmp_path / "data"))
    ids, mask = load(tmp_path / "data" / "dailydialog", "train", meta)
    assert masked_spans(enc, ids, mask) == ["Hello." + IM_END] * 3


# -----------------------------------------------------------------------------
# the local mirror

needs_mirror = pytest.mark.skipif(not (MIRROR and os.path.isdir(MIRROR)), reason="no DATA_MIRROR with the project's data")


@needs_mirror
def test_mirror_story(tmp_path, enc):
    prepare.main(["--dataset", "story", "--limit", "200", "--out_dir", str(tmp_path / "data")])
    meta = json.loads((tmp_path / "data" / "story" / "meta.json").read_text())
    check_sizes(tmp_path / "data" / "story", meta)
    assert meta["kind"] == "text" and "TinyStories-sample.txt" in meta["source"]
    # 200 stories split 180 / 20, plus 200 train-only stories from TinyStories-train-head.txt
    assert meta["splits"]["val"]["documents"] == 20 and meta["splits"]["train"]["documents"] == 380
    val, _ = load(tmp_path / "data" / "story", "val", meta)
    stories = enc.decode(val.tolist()).split(EOT)
    assert len(stories) == 21 and stories[-1] == "" and all(len(s) > 100 for s in stories[:-1])


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
