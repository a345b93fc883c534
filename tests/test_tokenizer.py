import base64
import errno
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import common
import setup_tokenizer
from common import UserError
from conftest import run_cli as run_in_process
from setup_tokenizer import (EOT, IM_END, IM_START, StreamDecoder, get_tokenizer, parse_chat, render_chat,
                             tokenizer_from_state, tokenizer_hash, tokenizer_state, train_tokenizer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNICODE = "Grüße, 世界! naïve café — 🎉👩‍👩‍👧 ∑x² \t\n\n  spaces  and ' quotes' <|im_start|> literal"



@pytest.fixture(scope="module")
def gpt2():
    try:
        return get_tokenizer("gpt2")
    except UserError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    corpus = d / "corpus.txt"
    story = "Once upon a time, a little girl named Lily found a shiny red ball in the park. She was very happy.\n"
    corpus.write_text((story * 200) + EOT + "Tom and Sam played with toys. Grüße!\n" * 100, encoding="utf-8")
    path = d / "small.tiktoken"
    enc = train_tokenizer([str(corpus)], 320, str(path))
    return enc, path


def test_gpt2_special_tokens_are_single_ids(gpt2):
    assert gpt2.encode(EOT, allowed_special="all") == [50256]
    assert gpt2.encode(IM_START, allowed_special="all") == [50257]
    assert gpt2.encode(IM_END, allowed_special="all") == [50258]
    assert gpt2.n_vocab == 50259


def test_gpt2_round_trips_unicode_and_matches_plain_gpt2(gpt2):
    import tiktoken
    ids = gpt2.encode_ordinary(UNICODE)
    assert gpt2.decode(ids) == UNICODE
    # the extension adds tokens, it never changes how ordinary text encodes
    assert ids == tiktoken.get_encoding("gpt2").encode_ordinary(UNICODE)
    # a special-token string typed as text is not a control token
    assert 50257 not in ids


def test_chat_mask_covers_exactly_the_assistant_spans(gpt2):
    messages = [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke <|im_end|>"},
        {"role": "assistant", "content": "Why did the cat sit on the computer? 🐱"},
    ]
    ids, mask = render_chat(gpt2, messages)
    assert len(ids) == len(mask)
    assert gpt2.decode(ids) == "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    # contiguous masked spans, decoded, are the assistant replies each closed by <|im_end|>
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert [gpt2.decode(s) for s in spans] == [m["content"] + IM_END for m in messages if m["role"] == "assistant"]
    # the user's literal "<|im_end|>" stays text: exactly one real <|im_end|> per message
    assert ids.count(50258) == len(messages)


def test_generation_prompt_and_bad_role(gpt2):
    ids, mask = render_chat(gpt2, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert gpt2.decode(ids).endswith(f"{IM_END}\n{IM_START}assistant\n")
    assert sum(mask) == 0
    with pytest.raises(ValueError, match="role"):
        render_chat(gpt2, [{"role": "wizard", "content": "x"}])
    with pytest.raises(ValueError, match="content must be text, got NoneType"):
        render_chat(gpt2, [{"role": "user", "content": None}])


def test_parse_chat_inverts_render_chat(gpt2, custom):
    messages = [{"role": "system", "content": "Be kind.\nAnd brief."}, {"role": "user", "content": UNICODE},
                {"role": "assistant", "content": "Sure <|im_end|> is text; so is <|endoftext|>."},
                {"role": "user", "content": ""}]
    for enc in (gpt2, custom[0]):
        ids, _ = render_chat(enc, messages)
        assert parse_chat(enc, ids) == messages
        # padding around it, and a last turn cut before its <|im_end|>, are skipped
        eot = enc.encode_single_token(EOT)
        assert parse_chat(enc, [eot, eot] + ids + [eot] + ids[:-4]) == messages + messages[:-1]
        # a turn cut short before another begins is skipped too, not run into the next one
        assert parse_chat(enc, ids[:-4] + ids) == messages[:-1] + messages
        # a turn whose first line names no role of render_chat's (ids not made by it) is no message
        odd = [enc.encode_single_token(IM_START)] + enc.encode_ordinary("tool\n42") + [enc.encode_single_token(IM_END)]
        assert parse_chat(enc, odd + ids) == messages


def test_stream_decoder_waits_for_complete_characters(gpt2):
    text = "emoji 🎉 and 世界"
    ids = gpt2.encode_ordinary(text)
    dec = StreamDecoder(gpt2)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # no half characters ever printed


def test_stream_decoder_after_a_prompt_that_ends_inside_a_character(gpt2):
    """A stream continuing ids that end inside a character: the stream's bytes that finish it bring it whole; bytes
    that break it (even after adding to it) leave it to the prompt, and only the stream's own cut-off character is a
    U+FFFD."""
    byte = lambda b: gpt2.encode_single_token(bytes([b]))
    x = gpt2.encode_ordinary("x")
    for prompt, stream, want in ((x + [byte(0xF0)], [byte(0x9F), byte(0x98), byte(0x80), byte(0x21)], "\U0001F600!"),
                                 (x + [byte(0xF0), byte(0x9F)], [byte(0x98), byte(0x80)], "\U0001F600"),
                                 (x + [byte(0xF0), byte(0x9F), byte(0x98)], [byte(0x80)], "\U0001F600"),  # 3 of 4
                                 (x + [byte(0xF0)], [byte(0x9F)] + gpt2.encode_ordinary(" a"), " a"),
                                 (x + [byte(0xC3)], [byte(0xE4), byte(0xBD), byte(0xA0)], "\u4f60"),
                                 (x + [byte(0xC3)], [byte(0xE4)], "\ufffd"),  # the stream's own, cut off
                                 # the stream ends inside the prompt's character: its U+FFFD is the prompt's too
                                 (x + [byte(0xF0)], [byte(0x9F)], ""), (x + [byte(0xF0)], [], ""),
                                 # ED A0 (a surrogate's start, which the decoder holds as a character's) is two U+FFFD:
                                 # the stream's A0 is its own, not lost with the prompt's ED
                                 (x + [byte(0xED)], [byte(0xA0)] + x, "\ufffdx"),
                                 (x + [byte(0xED)], [byte(0xA0), byte(0xEE)], "\ufffd\ufffd"),
                                 (x + [byte(0xED)], [byte(0xA0)], "\ufffd"),
                                 (x + [byte(0xED), byte(0xA0)], x, "x"),  # both the prompt's: its U+FFFDs not streamed
                                 # a token that finishes the character, then breaks: the character, then a U+FFFD
                                 (x + [byte(0xC3)], [gpt2.encode_single_token(b"\xbf\xbd")], "\u00ff\ufffd"),
                                 (x, [byte(0xA9)] + x, "\ufffdx"),  # a prompt of whole characters: as without one
                                 (gpt2.encode_ordinary("h\u00e9"), [byte(0xC3), byte(0xA9)], "\u00e9")):
        dec = StreamDecoder(gpt2, after=prompt)
        assert "".join(dec.push(i) for i in stream) + dec.flush() == want, (prompt, stream)


def test_custom_vocabulary_trains_saves_loads_round_trips(custom):
    enc, path = custom
    assert enc.n_vocab == 320
    assert enc.encode(EOT, allowed_special="all") == [317]
    assert enc.encode(IM_END, allowed_special="all") == [319]
    # the separator never became a learned merge
    assert all(b"<|" not in t for t in enc._mergeable_ranks)
    loaded = get_tokenizer(str(path))
    assert tokenizer_hash(loaded) == tokenizer_hash(enc)
    for text in (UNICODE, "Once upon a time, Lily"):
        assert loaded.decode(loaded.encode_ordinary(text)) == text
    # learned merges compress the training text well below one token per byte
    story = "Once upon a time, a little girl named Lily found a shiny red ball in the park."
    assert len(loaded.encode_ordinary(story)) < len(story.encode()) / 3
    # a checkpoint carries the vocabulary itself
    state = tokenizer_state(loaded)
    again = tokenizer_from_state(state)
    assert again.encode_ordinary(story) == loaded.encode_ordinary(story)
    assert tokenizer_hash(again) == tokenizer_hash(loaded)
    # one id for one vocabulary: its name is its tokenizer_hash, which meta.json and checkpoints record (it was a hash
    # of the file's text, shown beside the other), from its file, from a checkpoint, and from one that recorded the
    # old name
    name = f"custom-{tokenizer_hash(enc)}"
    assert enc.name == loaded.name == again.name == name
    assert tokenizer_from_state(dict(state, name="custom-f3dc00e91d31")).name == name
    assert setup_tokenizer.vocabulary_name("custom-f3dc00e91d31", tokenizer_hash(enc)) == name


HINDI = "मेरा नाम राम है। मैं भारत में रहता हूँ और हिंदी बोलता हूँ। "  # vowel signs are combining marks (\\p{M})
MARKED = HINDI + "สวัสดีครับ ภาษาไทย العَرَبِيَّة cafe\u0301 ❤\ufe0f x\u0301\u0302 3\u0301 !\u0301 " + UNICODE


def gpt2_pattern_vocabulary(text, vocab_size, path=None):
    """A vocabulary trained as before MARKS_PATTERN, with GPT-2's pattern, loaded as a file of it is (saved to path)."""
    import rustbpe
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator([text], vocab_size - 3, pattern=setup_tokenizer.GPT2_PATTERN)
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda kv: kv[1])
    bpe_text = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks)
    if path:
        path.write_text(bpe_text)
    return setup_tokenizer.tokenizer_from_bpe(bpe_text)


def test_a_vocabulary_for_a_script_with_combining_marks_joins_them_to_their_letters(tmp_path):
    """GPT-2's pre-tokenization puts each combining mark in a piece of its own, so a vocabulary trained with it could
    not join a Hindi letter and its vowel sign: 'नाम' stayed 3 tokens, and a Hindi text supported ~300 tokens whatever
    --vocab_size asked. Trained now with marks kept in words, and read back with that pattern from its tokens alone."""
    corpus = tmp_path / "hi.txt"
    corpus.write_text(HINDI * 300, encoding="utf-8")
    enc = train_tokenizer([str(corpus)], 600, str(tmp_path / "hi.tiktoken"))
    assert enc._pat_str == setup_tokenizer.MARKS_PATTERN
    old = gpt2_pattern_vocabulary(HINDI * 300, 600)  # what it was: fewer tokens learned, a sentence in 12 or more
    assert old._pat_str == setup_tokenizer.GPT2_PATTERN and old.n_vocab < enc.n_vocab
    assert len(enc.encode_ordinary("मेरा नाम राम है।")) <= 6 < 12 <= len(old.encode_ordinary("मेरा नाम राम है।"))
    for loaded in (get_tokenizer(str(tmp_path / "hi.tiktoken")), tokenizer_from_state(tokenizer_state(enc))):
        assert loaded._pat_str == enc._pat_str and tokenizer_hash(loaded) == tokenizer_hash(enc)
        assert loaded.encode_ordinary(MARKED) == enc.encode_ordinary(MARKED)
        assert loaded.decode(loaded.encode_ordinary(MARKED)) == MARKED


def test_a_vocabulary_whose_one_marked_token_is_of_3_bytes_reads_with_the_marks_pattern(tmp_path):
    """The shortest tokens that join a letter and a mark are 3 bytes: e and U+0301 (CC 81: 0xCC, a mark's lowest first
    byte), or U+0301 and t. A vocabulary that learned one of them alone is read with MARKS_PATTERN too, as it was
    trained, not with GPT-2's, which cuts a mark from its letter: ids that data and models made with it never had."""
    for name, text, word, token in (("e", "e\u0301\n" * 500, "e\u0301", b"e\xcc\x81"),
                                    ("t", " ".join(f"{c}\u0301t" for c in "abcdefghijklmnopqrstuvwxyz") * 40,
                                     "a\u0301t", b"\xcc\x81t")):
        enc = setup_tokenizer.train_bpe([text], 261, str(tmp_path / f"{name}.tiktoken"))  # (2 merges)
        assert token in enc._mergeable_ranks and max(map(len, enc._mergeable_ranks)) == 3
        for loaded in (enc, get_tokenizer(str(tmp_path / f"{name}.tiktoken"))):
            assert loaded._pat_str == setup_tokenizer.MARKS_PATTERN
            assert loaded.encode_ordinary(word)[-1] == loaded.encode_single_token(token)


def test_a_vocabulary_from_before_the_marks_pattern_keeps_gpt2s(tmp_path, custom):
    """A vocabulary trained with GPT-2's pattern (every one before MARKS_PATTERN) has no token joining a letter and a
    mark: it is read with GPT-2's pattern, so its ids and hash, which datasets and checkpoints recorded, stay. So is
    one trained on text without such pairs (the patterns cut it alike)."""
    old = gpt2_pattern_vocabulary(HINDI * 300, 500, tmp_path / "old.tiktoken")
    assert not any(setup_tokenizer.joins_a_mark(t) for t in old._mergeable_ranks)
    assert get_tokenizer(str(tmp_path / "old.tiktoken"))._pat_str == setup_tokenizer.GPT2_PATTERN
    enc, _ = custom  # English (and "Grüße", precomposed): the same vocabulary whichever pattern trained it
    assert enc._pat_str == setup_tokenizer.GPT2_PATTERN


def test_a_vocabularys_hash_stays_what_datasets_and_checkpoints_recorded(gpt2):
    """meta.json and checkpoints record tokenizer_hash, and a vocabulary given with them is compared by it: computed
    otherwise (its pattern, byte order, special tokens or length), every dataset and model made before would be "made
    with another vocabulary". Pinned as every version has computed it: GPT-2's, and that of the bytes alone."""
    bytes_only = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    assert tokenizer_hash(gpt2) == "e28c7a34c4d0ec81"
    assert tokenizer_hash(setup_tokenizer.tokenizer_from_bpe(bytes_only)) == "ae7f31297ffda9c2"
    # of the ranks, not of the order of a file's lines
    reordered = "".join(reversed(bytes_only.splitlines(keepends=True)))
    assert tokenizer_hash(setup_tokenizer.tokenizer_from_bpe(reordered)) == "ae7f31297ffda9c2"


def test_gpt2_state_is_just_the_name(gpt2):
    state = tokenizer_state(gpt2)
    assert state["name"] == "gpt2" and state["bpe"] is None
    assert tokenizer_from_state(state) is gpt2


def test_the_retrain_command_a_broken_vocabulary_names_runs_as_pasted(tmp_path, monkeypatch, capsys):
    """An empty (or cut, or holed) .tiktoken file says "retrain it with `...`": that was `setup_tokenizer.py train`,
    argparse's error pasted (--input and --out are required). It names the file to write over and FILE for the text:
    pasted with FILE replaced, it trains a vocabulary there that loads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("the cat sat on the mat, and the dog ran to the park. " * 200, encoding="utf-8")
    empty = tmp_path / "vocab" / "mine.tiktoken"
    empty.parent.mkdir()
    empty.write_text("")
    with pytest.raises(UserError, match=r"retrain it with `([^`]+)`$") as e:
        get_tokenizer(str(empty))
    argv = shlex.split(re.search(r"`([^`]+)`$", str(e.value)).group(1))
    assert argv[1].endswith("setup_tokenizer.py") and argv[argv.index("--out") + 1] == str(empty), argv
    argv[argv.index("FILE")] = "text.txt"
    code, out, err = run_in_process(setup_tokenizer.main, argv[2:] + ["--vocab_size", "300"], capsys)
    assert code == 0, err
    assert 256 + 3 < get_tokenizer(str(empty)).n_vocab <= 300  # (merges as many as the text has pairs for)


def test_bad_tokenizer_inputs(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        get_tokenizer(str(tmp_path / "missing.tiktoken"))
    # a misspelt checkpoint (prepare.py --tokenizer models/story_best.pt, a fine-tune's) is told checkpoints are taken:
    # it was "use 'gpt2' or the path of a .tiktoken file"
    with pytest.raises(UserError, match=r"note_best\.pt' not found: use 'gpt2', a checkpoint or Hugging Face model "
                                        r"folder \(its vocabulary\), or the path of a \.tiktoken file from `"):
        get_tokenizer(str(tmp_path / "models" / "note_best.pt"))
    # a run's name, or its path without the file's end (`--tokenizer notes`, `models/notes`): the checkpoint is named
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "notes_best.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for name in ("notes", "models/notes", "models/notes_best"):
        with pytest.raises(UserError, match=rf"^tokenizer '{name}' not found: did you mean models/notes_best\.pt\?$"):
            get_tokenizer(name)
    (tmp_path / "notes").mkdir()  # (the README's notes/ of --source: a folder that holds no vocabulary)
    for name in ("notes", "notes/"):  # (the slash a shell's completion adds: it got no guess)
        with pytest.raises(UserError, match=rf"^tokenizer '{name}' is a folder without tokenizer\.json or vocab\.json, "
                                            r"not a vocabulary: did you mean models/notes_best\.pt\?$"):
            get_tokenizer(name)
    junk = tmp_path / "junk.tiktoken"
    junk.write_text("this is not a vocabulary\n")
    with pytest.raises(UserError, match="not a .tiktoken"):
        get_tokenizer(str(junk))
    empty = tmp_path / "empty.tiktoken"  # a copy that wrote nothing
    for text in ("", "\n\n"):
        empty.write_text(text)
        with pytest.raises(UserError, match=f"^{re.escape(str(empty))} is empty: copy it again, or retrain it"):
            get_tokenizer(str(empty))
    # every byte must have a token, or text holding the missing one cannot be encoded (rustbpe panics)
    ranks = [bytes([b]) for b in range(256) if b != ord("h")] + [b"ab"]
    holed = tmp_path / "holed.tiktoken"
    holed.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    # (the retrain hint writes over the file at fault, as an empty one's: not a new vocab.tiktoken beside it)
    with pytest.raises(UserError, match=f"ranks must be 0..N-1 and cover all 256 bytes; retrain it with `.* --out "
                                        f"{re.escape(shlex.quote(str(holed)))}`$"):
        get_tokenizer(str(holed))
    # a copy or download that stopped mid-line: named as such at every cut, in the first 256 lines or after, where it
    # was "not a .tiktoken vocabulary" or "ranks must be 0..N-1" (a holed file's retrain advice)
    whole = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)) + "YWI= 256\nYWJj 257\n"
    cut = tmp_path / "cut.tiktoken"
    for n in (9, 1000, 1001, 1002, len(whole) - 11, len(whole) - 7, len(whole) - 2):
        cut.write_text(whole[:n])
        with pytest.raises(UserError, match=f"^{re.escape(str(cut))} is cut short \\(its last line '.+' is incomplete: "
                                            f"a copy or download that stopped\\?\\): copy it again, or retrain it "
                                            f"with `.* --out {re.escape(shlex.quote(str(cut)))}`$"):
            get_tokenizer(str(cut))
    cut.write_text(whole.replace("YWI= 256", "YWI= 2"))  # a bad rank inside: no cut, the ranks' own error
    with pytest.raises(UserError, match="ranks must be 0..N-1"):
        get_tokenizer(str(cut))
    cut.write_text(whole[:-1])  # its last newline alone missing: whole
    assert get_tokenizer(str(cut)).n_vocab == 258 + 3
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8.*: convert it, e.g. `iconv -f latin1 -t utf-8 < .*latin1.txt > "
                                        ".*latin1.utf8.txt`$"):
        train_tokenizer([str(latin1)], 300, str(tmp_path / "x.tiktoken"))
    # a dataset's token file given for its text: not text, which the latin1 advice would turn into nonsense
    tokens = tmp_path / "train.bin"
    np.array(get_tokenizer("gpt2").encode("The cat sat on the mat. " * 40 + "Caf\u00e9"), np.uint16).tofile(tokens)
    with pytest.raises(UserError, match=r"train.bin is not UTF-8 text \(.*\): it holds NUL bytes: not text at all \(a "
                                        r"token file\? give the text it was made from\), or UTF-16 without a "
                                        r"byte-order mark \(convert it, e.g. `iconv -f utf-16le -t utf-8 < "
                                        rf"{re.escape(str(tokens))} > {re.escape(str(tokens)[:-4])}.utf8.bin`\)$"):
        train_tokenizer([str(tokens)], 300, str(tmp_path / "x.tiktoken"))
    # a compressed download under a text name: "not text at all (a token file?)" named no way out
    import bz2, gzip, lzma  # noqa: E401
    # (a compressed suffix is dropped from the output's name: b.txt.bz2's text is b.decompressed.txt, not ...bz2)
    for name, compress, tool in (("g.txt", gzip.compress, "gunzip"), ("n.txt.gz", gzip.compress, "gunzip"),
                                 ("b.txt.bz2", bz2.compress, "bunzip2"), ("x.txt.xz", lzma.compress, "unxz")):
        (tmp_path / name).write_bytes(compress(("The cat sat on the mat. " * 40).encode()))
        with pytest.raises(UserError, match=rf"{name} is not UTF-8 text \(.*\): it is compressed: decompress it first, "
                                            rf"e.g. `{tool} -c < .*{name} > .*{name[0]}.decompressed.txt`$"):
            train_tokenizer([str(tmp_path / name)], 300, str(tmp_path / "x.tiktoken"))
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer([str(latin1)], 100, str(tmp_path / "x.tiktoken"))
    with pytest.raises(UserError, match="at least 259"):
        train_tokenizer([str(latin1)], 258, str(tmp_path / "x.tiktoken"))
    with pytest.raises(UserError, match="at most 4,294,967,296"):  # was rustbpe's OverflowError traceback
        train_tokenizer([str(latin1)], (1 << 32) + 3, str(tmp_path / "x.tiktoken"))
    assert not (tmp_path / "x.tiktoken").exists()
    # the command line: --out over its own --input (the text was replaced by the vocabulary), non-UTF-8 to show
    import setup_tokenizer
    text = tmp_path / "in.txt"
    text.write_text("the cat sat on the mat " * 50)
    with pytest.raises(UserError, match="is the --input it reads: the result would replace it; give another --out"):
        setup_tokenizer.main(["train", "--input", str(text), "--vocab_size", "300", "--out", str(text)])
    assert text.read_text().startswith("the cat")
    with pytest.raises(UserError, match="the text is not UTF-8"):
        setup_tokenizer.main(["show", "caf\udce9"])  # as Python keeps a Latin-1 argument under a UTF-8 locale


def test_the_smallest_vocabulary_is_the_bytes(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("To be, or not to be: that is the question. " * 20, encoding="utf-8")
    enc = train_tokenizer([str(src)], 259, str(tmp_path / "bytes.tiktoken"))
    text = "Whether 'tis nobler — in the mind"
    assert enc.n_vocab == 259 and enc.encode_ordinary(text) == list(text.encode())  # one token a byte, no merges
    assert enc.decode(enc.encode(text + IM_END, allowed_special="all")) == text + IM_END


def test_a_folder_or_a_binary_file_is_no_vocabulary(tmp_path, capsys):
    """--tokenizer pointing at a folder, an image, a damaged tokenizer.tiktoken: one line naming the file and the
    fix, never IsADirectoryError or UnicodeDecodeError."""
    binary = tmp_path / "tokenizer.tiktoken"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256)))
    junk = tmp_path / "junk.tiktoken"
    junk.write_text("this is not a vocabulary\n")
    fix = ("is not a .tiktoken vocabulary (lines of `base64 rank`): pass a file written by `python setup_tokenizer.py "
           "train --input FILE --out vocab.tiktoken`, a checkpoint, a Hugging Face model folder, or gpt2")
    for path, named in [(tmp_path, f"{tmp_path} (a folder without tokenizer.json or vocab.json)"),
                        (binary, str(binary)), (junk, str(junk))]:
        with pytest.raises(UserError) as e:
            get_tokenizer(str(path))
        assert str(e.value) == f"{named} {fix}"
    code, out, err = run_in_process(setup_tokenizer.main, ["show", "x", "--tokenizer", str(binary)], capsys)
    assert (code, out, err) == (1, "", f"error: {binary} {fix}\n")
    # a zip that is no checkpoint (a checkpoint's vocabulary is read from it): the checkpoint's own error
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(UserError, match=r"other\.zip is not a readable checkpoint"):
        get_tokenizer(str(archive))
    # a checkpoint cut short (no zip directory at its end yet) or empty: named as a checkpoint, as the other scripts
    # name it, not as a .tiktoken file of bad lines
    whole = archive.read_bytes()
    for name, data in (("cut.pt", whole[:len(whole) // 2]), ("empty.pt", b""), ("cut.bin", whole[:len(whole) // 2])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=rf"{re.escape(name)} is not a readable checkpoint \(truncated "
                                            rf"or corrupt\?\)"):
            get_tokenizer(str(tmp_path / name))
    # a vocabulary that merely ends in .pt is read as one
    good = tmp_path / "v.tiktoken"
    setup_tokenizer.train_bpe(["the cat sat on the mat " * 50], 270, str(good), "text")
    (tmp_path / "vocab.pt").write_bytes(good.read_bytes())
    assert get_tokenizer(str(tmp_path / "vocab.pt")).n_vocab == get_tokenizer(str(good)).n_vocab
    # a broken link in a model folder (a download cut short) leaves its tokenizer files readable
    import hf  # here: it imports torch
    folder = tmp_path / "hf"
    folder.mkdir()
    for f, text in hf.tokenizer_files(get_tokenizer(str(good)), 256).items():
        (folder / f).write_text(text, encoding="utf-8")
    (folder / "model.safetensors").symlink_to(tmp_path / "blob-never-downloaded")
    assert setup_tokenizer.tokenizer_hash(get_tokenizer(str(folder))) == setup_tokenizer.tokenizer_hash(
        get_tokenizer(str(good)))


def test_a_large_foreign_file_is_refused_from_its_first_line(tmp_path, custom):
    """--tokenizer given a model's weights or a corpus: refused from its first line, not read whole first (a file of
    gigabytes took twice its size in memory before the error; a laptop killed it)."""
    import tracemalloc
    big, one_line = tmp_path / "corpus.txt", tmp_path / "minified.json"
    with open(big, "w") as f:  # sparse: 64 MB of NUL (valid UTF-8) after a line of prose, no disk spent
        f.write("Once upon a time, there was a little dog.\n")
        f.truncate(64 << 20)
    with open(one_line, "w") as f:  # and a file of one line (a minified JSON): its first line is all of it
        f.truncate(64 << 20)
    for path in (big, one_line):
        tracemalloc.start()
        try:
            with pytest.raises(UserError, match="is not a .tiktoken vocabulary"):
                get_tokenizer(str(path))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, (path, peak)
    # a vocabulary whose first line is blank (an edit, a concatenation) is still one, as tiktoken reads it
    blank = tmp_path / "blank.tiktoken"
    blank.write_text("\n" + custom[1].read_text())
    assert get_tokenizer(str(blank)).encode("Once upon a time") == custom[0].encode("Once upon a time")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "setup_tokenizer.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_a_checkpoints_context_is_read_only_where_its_config_gives_a_positive_int(gpt2, tmp_path):
    """prepare.py packs a chat set at the context of the checkpoint --tokenizer names (model_context): a damaged
    config's block_size ("two", 0, true) is no context (None: the default pack), not a TypeError traceback in the
    packing, and its vocabulary still reads (hand-made mutation: the block_size returned as is passed every test)."""
    import torch  # (here: this file's other tests load no torch)
    from checkpoint import FORMAT
    for block_size, context in ((64, 64), ("two", None), (0, None), (True, None)):
        path = str(tmp_path / f"{block_size}.pt")
        torch.save({"format": FORMAT, "model": {}, "config": {"block_size": block_size},
                    "tokenizer": {"name": "gpt2", "bpe": None}}, path)
        assert setup_tokenizer.model_context(path) == context, block_size
        assert setup_tokenizer.get_tokenizer(path).n_vocab == gpt2.n_vocab


def test_cli_show_and_offline_error(gpt2, tmp_path):
    r = run_cli("show", "Hello world")
    assert r.returncode == 0, r.stderr
    assert "15496" in r.stdout and "2 tokens" in r.stdout
    r = run_cli("show", "x", env={"TIKTOKEN_CACHE_DIR": str(tmp_path)})  # empty cache and no network
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "TIKTOKEN_CACHE_DIR" in r.stderr


def test_cli_train(custom, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 500, encoding="utf-8")
    out = tmp_path / "t.tiktoken"
    r = run_cli("train", "--input", str(corpus), "--vocab_size", "300", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "trained" in r.stdout and out.exists()
    r = run_cli("show", "the cat", "--tokenizer", str(out))
    assert r.returncode == 0 and "custom-" in r.stdout


def test_cli_train_refuses_bad_input_and_output_before_training(tmp_path, capsys, monkeypatch):
    text, empty = tmp_path / "c.txt", tmp_path / "empty.txt"
    text.write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "v.tiktoken"
    train = setup_tokenizer.train_bpe
    trained = []
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda *a: trained.append(a) or train(*a))
    cases = [  # argv after `train`, the one line on stderr
        (["--input", str(tmp_path)], f"--input {tmp_path} is a folder: give the text files in it, e.g. "
                                     f"{tmp_path}/*.txt"),
        # a typo in the last input: found once every other file had been read
        (["--input", str(text), str(tmp_path / "typo.txt")], f"--input {tmp_path / 'typo.txt'}: no such file"),
        (["--input", str(text), "--out", str(tmp_path)], f"--out {tmp_path} is a folder: give a file's path"),
        (["--input", str(text), "--out", str(text / "v.tiktoken")],
         f"--out {text / 'v.tiktoken'}: a part of the path is a file, not a folder"),
    ]
    for argv, line in cases:
        argv = ["train", *argv] + ([] if "--out" in argv else ["--out", str(out)])
        assert run_in_process(setup_tokenizer.main, argv, capsys) == (1, "", f"error: {line}\n")
    assert not trained  # each was refused before a vocabulary was trained
    # an empty file: no vocabulary of the 256 bytes alone, below the 260 minimum
    code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(empty), "--out", str(out)], capsys)
    assert (code, err) == (1, f"error: no text to train on in {empty}: give files that hold text\n")
    # blank lines alone: a 264-token vocabulary of whitespace was trained
    empty.write_text("\n\n  \r\n\t\n" * 100, encoding="utf-8")
    code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(empty), "--out", str(out)], capsys)
    assert (code, err) == (1, f"error: no text to train on in {empty}: give files that hold text\n")
    assert not out.exists()


def test_cli_train_out_replaces_a_vocabulary_but_no_other_file(tmp_path, capsys):
    """--input a.txt --out b.txt (b.txt meant as one more --input) replaced the text with a vocabulary. A vocabulary is
    retrained in place, under any name; an empty file loses nothing."""
    text, notes = tmp_path / "a.txt", tmp_path / "b.txt"
    text.write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    notes.write_text("Book 1\nmy notes\n", encoding="utf-8")  # (a first line as a vocabulary's, but its rank)
    argv = ["train", "--input", str(text), "--vocab_size", "265", "--out"]
    assert run_in_process(setup_tokenizer.main, argv + [str(notes)], capsys) == (
        1, "", f"error: --out {notes} is not a vocabulary: the result would replace it; give another --out\n")
    assert notes.read_text() == "Book 1\nmy notes\n"
    vocab = tmp_path / "mine.vocab"  # a vocabulary not named .tiktoken
    for out in (vocab, vocab):  # trained, then retrained in place (no warning: the text supports 265 tokens)
        code, said, err = run_in_process(setup_tokenizer.main, argv + [str(out)], capsys)
        assert (code, err) == (0, "") and said.startswith("trained 265 tokens on "), (said, err)
    assert setup_tokenizer.get_tokenizer(str(vocab)).n_vocab == 265
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert run_in_process(setup_tokenizer.main, argv + [str(empty)], capsys)[0] == 0


def test_a_vocabulary_retrained_in_place_that_fails_to_write_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    """--out over a vocabulary is written whole beside it and renamed over it: a full disk at the write (a late
    allocating file system says so at the fsync) leaves the old vocabulary as it was, not a file cut short (hand-made
    mutation: train_bpe writing --out in place passed every test)."""
    text, out = tmp_path / "a.txt", tmp_path / "v.tiktoken"
    text.write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    argv = ["train", "--input", str(text), "--out", str(out), "--vocab_size"]
    assert run_in_process(setup_tokenizer.main, argv + ["265"], capsys)[0] == 0
    before = out.read_bytes()

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)
    assert run_in_process(setup_tokenizer.main, argv + ["270"], capsys) == (
        1, "", f"error: No space left on device: {out}: free some space or write elsewhere\n")
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.txt", "v.tiktoken"]


def test_cli_train_keeps_a_vocabulary_a_prepared_dataset_reads(tmp_path, capsys, monkeypatch):
    """A vocabulary retrained in place under a dataset made with --tokenizer FILE left the dataset unreadable, and
    prepare.py then said to "put the old file back", which was gone. Refused while a dataset in data/ still reads it;
    retrained once none does (remade with another vocabulary)."""
    import prepare  # (imports torch-free modules only)
    monkeypatch.chdir(tmp_path)  # where data/, prepare.py's default --out_dir, is
    text = tmp_path / "a.txt"
    text.write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    argv = ["train", "--input", str(text), "--vocab_size", "265", "--out"]
    assert run_in_process(setup_tokenizer.main, argv + ["v.tiktoken"], capsys)[0] == 0
    prepare.prepare("text", source=str(text), tokenizer="v.tiktoken")
    capsys.readouterr()
    before = (tmp_path / "v.tiktoken").read_bytes()
    argv[4] = "270"  # (another vocabulary)
    assert run_in_process(setup_tokenizer.main, argv + ["v.tiktoken"], capsys) == (
        1, "", "error: --out v.tiktoken is the vocabulary data/text is prepared with: retrained in place, that data "
               "would no longer read (nor, remade, fit the models trained on it); give another --out (and prepare "
               "with that --tokenizer)\n")
    assert (tmp_path / "v.tiktoken").read_bytes() == before
    assert run_in_process(setup_tokenizer.main, argv + ["w.tiktoken"], capsys)[0] == 0
    prepare.prepare("text", source=str(text), tokenizer="w.tiktoken")  # data/text reads w.tiktoken now
    assert run_in_process(setup_tokenizer.main, argv + ["v.tiktoken"], capsys)[0] == 0
    assert get_tokenizer("v.tiktoken").n_vocab == 270


def test_cli_train_retrains_a_vocabulary_no_dataset_reads_any_more(tmp_path, capsys, monkeypatch):
    """--out over a vocabulary is refused while a dataset in data/ reads it (its meta.json names the file and its
    tokenizer_hash), the datasets named, and only then: a vocabulary changed since the datasets naming it were made
    (they no longer read it), or too damaged to load (whose error says to retrain it in place), is retrained; a
    dataset naming a vocabulary gone from its place, or none, refuses nothing."""
    monkeypatch.chdir(tmp_path)  # where data/, prepare.py's default --out_dir, is
    (tmp_path / "a.txt").write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    argv = ["train", "--input", "a.txt", "--vocab_size", "265", "--out", "v.tiktoken"]
    assert run_in_process(setup_tokenizer.main, argv, capsys)[0] == 0
    held = tokenizer_hash(get_tokenizer("v.tiktoken"))
    for name, meta in (("a", {"tokenizer": str(tmp_path / "v.tiktoken"), "tokenizer_hash": held}), ("b", {}),
                       ("gone", {"tokenizer": str(tmp_path / "gone.tiktoken"), "tokenizer_hash": held}),
                       ("none", {"tokenizer": None}), ("c", {"tokenizer": "v.tiktoken", "tokenizer_hash": held})):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "meta.json").write_text(json.dumps({"splits": {}, "vocab_size": 268, **meta}))
    for refused in ("data/a, data/c are", "data/a is"):
        code, _, err = run_in_process(setup_tokenizer.main, argv, capsys)
        assert (code, err.split(":")[1]) == (1, f" --out v.tiktoken is the vocabulary {refused} prepared with"), err
        (tmp_path / "data" / "c" / "meta.json").unlink(missing_ok=True)
    # changed since data/a was made (it reads it no more), or damaged: retrained in place
    for text in ("the dog ran in the park. " * 50, None):
        if text:
            (tmp_path / "b.txt").write_text(text, encoding="utf-8")
            other = ["train", "--input", "b.txt", "--vocab_size", "265", "--out", "w.tiktoken"]
            assert run_in_process(setup_tokenizer.main, other, capsys)[0] == 0
            os.replace("w.tiktoken", "v.tiktoken")
        else:
            (tmp_path / "v.tiktoken").write_text((tmp_path / "v.tiktoken").read_text()[:-3])  # cut short
            with pytest.raises(UserError, match="cut short"):
                get_tokenizer("v.tiktoken")
        assert run_in_process(setup_tokenizer.main, argv, capsys)[0] == 0
        assert tokenizer_hash(get_tokenizer("v.tiktoken")) == held


def test_a_vocabulary_rewritten_in_place_is_read_afresh(tmp_path):
    """get_tokenizer keeps a file's vocabulary for the next call, by its identity (inode, size, time): one written
    again in place, as train_bpe writes it (a new file renamed over it), even to the same size, is read again, not
    the one it replaced (prepare.py trains a dataset's vocabulary again in place when its data changed)."""
    path = tmp_path / "v.tiktoken"
    bytes_only = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    for token in (b"ab", b"cd"):  # (the same size of file)
        common.atomic_write_text(str(path), bytes_only + f"{base64.b64encode(token).decode()} 256\n")
        assert get_tokenizer(str(path)).encode_ordinary(token.decode()) == [256]


def test_cli_paths_given_with_a_tilde_are_in_the_home_folder(tmp_path, capsys, monkeypatch):
    """`--out=~/v.tiktoken`: the shell leaves ~ after `=`; every path option expands it as the other scripts' do
    (test_common), not naming a folder ~ in the working directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (home / "a.txt").write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    argv = ["train", "--input=~/a.txt", "--vocab_size", "265", "--out=~/v.tiktoken"]
    assert run_in_process(setup_tokenizer.main, argv, capsys)[0] == 0 and (home / "v.tiktoken").is_file()
    code, out, err = run_in_process(setup_tokenizer.main, ["show", "the cat", "--tokenizer=~/v.tiktoken"], capsys)
    assert code == 0 and " vocabulary 265 (custom-" in out and not (tmp_path / "~").exists(), err


def test_cli_train_expands_a_pattern_the_shell_left(tmp_path, capsys):
    """--input 'notes/*.txt' quoted, or typed in Windows' cmd or PowerShell, which leave * to the program, was
    "--input notes/*.txt: no such file"."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"{name} the cat sat on the mat. " * 50, encoding="utf-8")
    out = tmp_path / "v.tiktoken"
    code, stdout, _ = run_in_process(setup_tokenizer.main, ["train", "--input", str(tmp_path / "*.txt"), "--vocab_size",
                                                            "280", "--out", str(out)], capsys)
    assert code == 0 and out.exists()
    assert setup_tokenizer.get_tokenizer(str(out)).encode("b.txt the") != []
    # (the vocabulary saw both files: the same as naming them)
    named = tmp_path / "named.tiktoken"
    run_in_process(setup_tokenizer.main, ["train", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                                          "--vocab_size", "280", "--out", str(named)], capsys)
    assert out.read_bytes() == named.read_bytes()
    code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(tmp_path / "*.md"), "--out",
                                                         str(tmp_path / "w.tiktoken")], capsys)
    assert (code, err) == (1, f"error: --input {tmp_path / '*.md'}: no file or folder matches this pattern\n")


def test_cli_train_learns_from_at_most_vocab_text_chars_spread_over_the_files(tmp_path, capsys, monkeypatch):
    """rustbpe holds every distinct word it has seen in memory (45 MB of random words peaked at 1.6 GB), and train read
    all of its input: a vocabulary learns from at most VOCAB_TEXT_CHARS of it, as prepare.py --vocab_size's does,
    documents spread over the files by their sizes (not the first file's alone), said; within the cap all of it, as
    before; with a pipe, which says no size, the first documents."""
    docs = [[f"{name} story {i}" + f" word{i}" * (20 + i % 5) for i in range(n)] for name, n in (("a", 150), ("b", 50))]
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path, ds in zip(files, docs):
        path.write_text(EOT.join(ds), encoding="utf-8")
    size = sum(map(os.path.getsize, files))
    seen, train, out = [], setup_tokenizer.train_bpe, tmp_path / "v.tiktoken"
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: train(seen.extend(texts) or seen, *a))

    def learnt(cap):
        seen.clear()
        monkeypatch.setattr(setup_tokenizer, "VOCAB_TEXT_CHARS", cap)
        code, said, err = run_in_process(setup_tokenizer.main, ["train", "--input", *map(str, files), "--vocab_size",
                                                                "300", "--out", str(out)], capsys)
        assert code == 0, err
        return list(seen), re.sub(rf" in [\d.]+s -> {re.escape(str(out))}\n$", "", said)  # (the time left out)

    # within the cap: all of it, said as before
    assert learnt(size) == (docs[0] + docs[1], "trained 300 tokens on 0.0 MB")
    # a quarter of the cap: about a quarter of each file's documents, the first, middle and last ones among them
    cap = size // 4
    sample, said = learnt(cap)
    a, b = [[d for d in sample if d in ds] for ds in docs]
    assert a + b == sample and sum(map(len, sample)) <= cap and 35 <= len(a) <= 38 and 11 <= len(b) <= 13
    assert a[0] == docs[0][0] and any(docs[0].index(d) in range(70, 80) for d in a) and docs[1].index(b[-1]) > 45
    assert said == ("trained 300 tokens on 0M characters of the text (25% of the documents of the 0 MB "
                    "of input, spread "
                    "over it; at most 0M characters, VOCAB_TEXT_CHARS: memory grows with the distinct words learnt)")
    assert learnt(cap)[0] == sample  # the same sample each time: the same vocabulary
    # a pipe after a.txt: its first documents, up to the cap (a share of a.txt's size alone reached the cap in a.txt)
    argv = ["train", "--input", str(files[0]), "/dev/stdin", "--vocab_size", "300", "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", f"import setup_tokenizer as s; s.VOCAB_TEXT_CHARS = {cap}; s.main("
                        f"{argv})"],
                       cwd=ROOT, input=files[1].read_text(encoding="utf-8"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained 300 tokens on the first 0M characters of the text (at most 0M characters, "
                                 "VOCAB_TEXT_CHARS: ")
    # a pipe within the cap, after a file: the size of what it read, not the 0 bytes a pipe's stat gives ("on 0.0 MB")
    r = subprocess.run([sys.executable, "setup_tokenizer.py", "train", "--input", str(files[1]), "/dev/stdin",
                        "--vocab_size", "300", "--out", str(out)], cwd=ROOT, input="word " * 60_000,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and re.match(r"trained \d+ tokens on 0.3M characters in ", r.stdout), (r.stdout, r.stderr)


def test_a_vocabulary_sample_of_non_ascii_text_is_said_exactly(monkeypatch):
    """VOCAB_TEXT_CHARS caps characters, an input's size is bytes: the sample and the cap were said as "MB" of
    characters, half what 2-byte text holds (up to 4x: a character is 1-4 bytes)."""
    monkeypatch.setattr(setup_tokenizer, "VOCAB_TEXT_CHARS", 2_000_000)
    docs = [["é" * 1000] for _ in range(2000)]  # 2,000 bytes each, 4 MB in all
    sample = setup_tokenizer.VocabSample(4_000_000)
    learnt = list(sample.texts(docs))
    assert len(learnt) in (1000, 1001) and sum(len(t.encode()) for t in learnt) <= 2_002_000  # half of them, 2 MB
    assert sample.said("the text") == ("1M characters of the text (50% of the documents of the 4 MB of input, spread "
                                       "over it; at most 2M characters, VOCAB_TEXT_CHARS: memory grows with the "
                                       "distinct words learnt)")


def test_a_vocabulary_learns_from_at_most_vocab_word_bytes_of_distinct_words(tmp_path, capsys, monkeypatch):
    """rustbpe's memory grows with the distinct words it holds (50-80 bytes a byte of them), and Chinese puts no spaces
    between words: each run of Han characters between punctuation is one, nearly each one new, so 10 MB of Chinese
    peaked at 771 MB and more took more, far within VOCAB_TEXT_CHARS. A vocabulary learns from at most VOCAB_WORD_BYTES
    of distinct words (a word of more cut there), said: of an input of known size, documents spread over all of it
    (read again: not its first part alone, which on an input of unlike parts in a row learnt from the first), else its
    first ones; text whose words repeat is learnt whole, however long."""
    monkeypatch.setattr(setup_tokenizer, "VOCAB_WORD_BYTES", 30_000)
    han = "".join(map(chr, range(0x4E00, 0x4E00 + 20_000)))  # 60 KB of distinct characters, none twice
    lines = [han[i:i + 12] + "，" + han[i + 12:i + 20] + "。" for i in range(0, len(han), 20)]  # a word a line
    docs = [["\n".join(lines[i:i + 10])] for i in range(0, len(lines), 10)]
    every = "".join(doc[0] for doc in docs)

    def distinct_bytes(text):
        return sum(len(word.encode()) for word in set(text.split()))

    # a size not known (a pipe, a hub split): the first documents, the last one cut
    sample = setup_tokenizer.VocabSample(0)
    learnt = "".join(sample.texts(docs))
    assert every.startswith(learnt) and 29_997 <= distinct_bytes(learnt) <= 30_000 < len(learnt.encode())
    assert sample.said("the text") == ("the first 0M characters of the text (at most 0 MB of distinct words, "
                                       "VOCAB_WORD_BYTES: memory grows with them)")
    # a size known: the first reading stops, and the second takes documents from all over the input
    seen = []

    def train_bpe(texts, *args):  # what each reading gave, as far as it went
        seen.append([])
        for text in texts:
            seen[-1].append(text)

    monkeypatch.setattr(setup_tokenizer, "train_bpe", train_bpe)
    sample = setup_tokenizer.VocabSample(len(every.encode()))
    setup_tokenizer.learn_vocabulary(sample, lambda: iter(docs), 300, "unused", "the text")
    first, again = map("".join, seen)
    assert every.startswith(first) and distinct_bytes(first) > 15_000 and distinct_bytes(again) <= 30_000
    assert docs[0][0] in again and any(doc[0] in again for doc in docs[-len(docs) // 10:])
    assert not every.startswith(again[:len(docs[0][0]) + 1])
    assert sample.said("the text").startswith("0M characters of the text (") and sample.said("the text").endswith(
        "% of the documents of the 0 MB of input, spread over it; at most 0 MB of distinct words, VOCAB_WORD_BYTES: "
        "memory grows with them)")
    seen.clear()
    setup_tokenizer.learn_vocabulary(setup_tokenizer.VocabSample(len(every.encode())), lambda: iter(docs), 300,
                                     "unused", "the text")
    assert "".join(seen[1]) == again  # the same sample each time
    monkeypatch.undo()
    monkeypatch.setattr(setup_tokenizer, "VOCAB_WORD_BYTES", 30_000)
    # one line of megabytes (no newline: Chinese, or a minified file) is one word: cut at the cap, not none of it
    sample = setup_tokenizer.VocabSample(0)
    assert "".join(sample.texts([[han]])).encode() == han.encode()[:30_000]
    # words that repeat: all of a text of many times the cap, said as before
    story = [[f"the cat sat on mat {i % 50} and saw a dog " * 20] for i in range(1000)]
    sample = setup_tokenizer.VocabSample(0)
    assert [[text] for text in sample.texts(story)] == story and sample.said("the text") == ""
    # the command says it
    src = tmp_path / "zh.txt"
    src.write_text(EOT.join(doc[0] for doc in docs), encoding="utf-8")
    out = tmp_path / "v.tiktoken"
    code, said, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(src), "--vocab_size", "300",
                                                            "--out", str(out)], capsys)
    assert code == 0 and re.match(r"trained 300 tokens on 0M characters of the text \([\d.]+% of the documents of "
                                  r"the 0 MB of input, spread over it; at most 0 MB of distinct words, "
                                  r"VOCAB_WORD_BYTES: memory grows with them\) in ", said), (said, err)


def test_a_vocabulary_sample_counts_each_distinct_word_once_and_ends_at_the_cap(monkeypatch):
    """VOCAB_WORD_BYTES caps the bytes of distinct words: a word already learnt (in an earlier text or earlier in this
    one) adds nothing, new words up to the cap exactly are learnt and the text after them read on, and the text whose
    new words pass it is cut there and ends the reading (a hub split stops downloading). A reading spread over the
    input that reaches the cap as well ends there, said, rather than reading it a third time."""
    monkeypatch.setattr(setup_tokenizer, "VOCAB_WORD_BYTES", 1000)
    known = " ".join(f"k{i:03d}" for i in range(100))  # 100 words of 4 bytes
    twice = [f"n{i:03d} n{i:03d}" for i in range(300)]  # new words, each twice: 4 bytes of distinct words a pair
    sample = setup_tokenizer.VocabSample(0)
    learnt = list(sample.texts([[known], [known + " " + " ".join(twice)], [known]]))
    assert learnt == [known, known + " " + " ".join(twice[:150]) + " "]  # the 600 bytes left: 150 new words
    # new words that reach the cap exactly (known ones beside them): all of it, and the reading goes on
    sample = setup_tokenizer.VocabSample(0)
    docs = [[known], [known + " " + " ".join(twice[:150])], [known]]
    assert [[text] for text in sample.texts(docs)] == docs and sample.said("the text") == ""
    # a reading again (spread over the input) that reaches it too: the documents of the input's first part
    parts = [[known]] * 200 + [[" ".join(f"d{i:03d}{j}" for j in range(10))] for i in range(200)]  # few words, many
    seen = []
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.append(list(texts)))
    sample = setup_tokenizer.VocabSample(sum(len(doc[0]) for doc in parts))
    setup_tokenizer.learn_vocabulary(sample, lambda: iter(parts), 300, "unused", "the text")
    assert len(seen) == 1 and sample.capped == "VOCAB_WORD_BYTES"  # (the first reading raised SpreadAgain)
    said = sample.said("the text")
    assert re.fullmatch(r"the first 0M characters of the text \(\d\d(\.\d)?% of the documents of the first part of "
                        r"the 0 MB of input; at most 0 MB of distinct words, VOCAB_WORD_BYTES: memory grows with "
                        r"them\)", said), said
    # a sample is never said to be 100% of the documents (99.96% rounds to it)
    assert setup_tokenizer.VocabSample(setup_tokenizer.VOCAB_TEXT_CHARS + 1).share() == "99.9% of the documents of "


def test_new_words_keeps_words_whole_across_its_64k_pieces():
    """new_words splits a long text 64k characters at a time, at whitespace: a word across the 64k mark, or a run of
    more than 64k characters without whitespace (a line of Chinese), is one word, not pieces of it."""
    text = "a" * 65530 + " " + "b" * 20 + " known c d c " + "y" * 70000
    assert setup_tokenizer.new_words(text, {"known"}) == {"a" * 65530, "b" * 20, "c", "d", "y" * 70000}


def test_cli_train_says_a_large_input_before_it_trains(tmp_path, capsys, monkeypatch):
    """train was silent until its end, a minute a GB and more (its merges deaf to Ctrl-C): an input of
    SAY_VOCABULARY_BYTES or more is said before it trains, as prepare.py --vocab_size says it; a small one is not."""
    src = tmp_path / "a.txt"
    src.write_text(EOT.join(f"story {i}" + f" word{i}" * 20 for i in range(50)), encoding="utf-8")
    argv = ["train", "--input", str(src), "--vocab_size", "300", "--out", str(tmp_path / "v.tiktoken")]
    code, said, err = run_in_process(setup_tokenizer.main, argv, capsys)
    assert code == 0 and said.startswith("trained 300 tokens"), err
    monkeypatch.setattr(setup_tokenizer, "SAY_VOCABULARY_BYTES", os.path.getsize(src))
    code, said, err = run_in_process(setup_tokenizer.main, argv, capsys)
    assert code == 0 and said.startswith("training a 300-token vocabulary on 0 MB of input: about a minute a GB on one "
                                         "core, more where the text has many distinct words (Ctrl-C waits for the "
                                         "final merges)\ntrained 300 tokens"), err
    # a bad input is its error alone, not the line and then the error
    records = tmp_path / "a.jsonl"
    records.write_text('{"text": "a story"}\n' * 50, encoding="utf-8")
    monkeypatch.setattr(setup_tokenizer, "SAY_VOCABULARY_BYTES", 1)
    code, said, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(records), "--vocab_size", "300",
                                                            "--out", str(tmp_path / "w.tiktoken")], capsys)
    assert code == 1 and said == "" and err.startswith(f"error: --input {records} holds records"), (said, err)


def test_train_warns_when_the_text_supports_fewer_tokens_than_asked(tmp_path, capsys):
    text, out = tmp_path / "c.txt", tmp_path / "v.tiktoken"
    text.write_text("the cat sat on the mat. " * 50, encoding="utf-8")
    code, out_text, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(text), "--vocab_size", "70000",
                                                                "--out", str(out)], capsys)
    n = get_tokenizer(str(out)).n_vocab
    assert code == 0 and n < 300 and f"trained {n} tokens" in out_text
    assert err == f"warning: --vocab_size 70000: the data only supports {n} tokens (no pair is left to merge); " \
                  f"the vocabulary has {n}\n"


def test_a_trained_vocabulary_learns_no_merge_of_the_separator(tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("".join(f"Story {i} about a cat.\n{EOT}\n" for i in range(300)), encoding="utf-8")
    enc = train_tokenizer([str(src)], 400, str(tmp_path / "v.tiktoken"))
    assert not [t for t in enc._mergeable_ranks if b"endof" in t or b"<|" in t or b"|>" in t]


def test_cli_show_gives_a_non_ascii_tokens_characters_beside_its_bytes(gpt2, capsys):
    """A Chinese token was shown as b'\\xe4\\xbd\\xa0...' alone: its characters come beside it, where it holds whole
    ones; a token holding part of a character, or ASCII, is its bytes alone, as before."""
    code, out, err = run_in_process(setup_tokenizer.main, ["show", "你好 café"], capsys)
    assert code == 0 and err == "", err
    rows = [line.split(None, 1) for line in out.splitlines()[:-1]]
    assert [int(i) for i, _ in rows] == gpt2.encode("你好 café")
    for i, shown in rows:
        piece = gpt2.decode_single_token_bytes(int(i))
        assert shown == repr(piece) + (f"  {repr(' café')}" if piece == " café".encode() else ""), shown
    assert out.splitlines()[-1] == f"{len(rows)} tokens, 12 bytes, vocabulary 50259 (gpt2)"  # (7 characters)

def test_cli_runs_without_docstrings(gpt2, capsys, monkeypatch):
    """Under python -OO (PYTHONOPTIMIZE=2), which drops docstrings, every setup_tokenizer.py command was an
    AttributeError: --help's examples are read from the docstring. They are left out then; the command runs."""
    monkeypatch.setattr(setup_tokenizer, "__doc__", None)
    code, out, err = run_in_process(setup_tokenizer.main, ["show", "hi"], capsys)
    assert code == 0 and err == "" and out.splitlines()[-1].startswith("1 tokens"), (out, err)


def test_cli_show_gives_a_special_token_as_one_id(gpt2, capsys):
    """README's `python setup_tokenizer.py show "Hello <|im_start|> world"`: the ChatML token is one id, as the chat
    renderer writes it (it ended in tiktoken's "disallowed special token" traceback)."""
    code, out, err = run_in_process(setup_tokenizer.main, ["show", "Hello <|im_start|> world"], capsys)
    assert code == 0 and err == "", err
    special = gpt2.encode_single_token(IM_START)
    rows = [line.split(None, 1) for line in out.splitlines()[:-1]]
    assert [int(i) for i, _ in rows] == gpt2.encode("Hello ") + [special] + gpt2.encode(" world")
    assert [shown for i, shown in rows if int(i) == special] == [repr(IM_START.encode())]
    assert out.splitlines()[-1].startswith(f"{len(rows)} tokens, 24 bytes")


def test_cli_train_refuses_record_files_and_names_prepares_training(tmp_path, capsys):
    """A chat .jsonl read as text trained a vocabulary of its JSON syntax ('{"role": "', '\\u00e9' escapes); prepare.py
    --vocab_size trains on the messages' contents. Refused, naming that command, before anything is trained or
    written."""
    out = tmp_path / "v.tiktoken"
    for name in ("chats.jsonl", "alpaca.JSON", "rows.parquet"):
        path = tmp_path / name
        path.write_text('{"messages": [{"role": "user", "content": "caf\\u00e9"}]}\n' * 50, encoding="utf-8")
        code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(path), "--vocab_size", "300",
                                                             "--out", str(out)], capsys)
        assert (code, err) == (1, f"error: --input {path} holds records, whose syntax this would train on as text: "
                                  f"train on their text with `python prepare.py --source {path} "
                                  f"--vocab_size 300 --name "
                                  f"NAME` (it writes data/NAME/tokenizer.tiktoken)\n")
        assert not out.exists()
    # a spreadsheet's export, which prepare.py refuses too: trained as text, its commas and quotes were merges. The
    # command that writes its rows as JSON Lines (prepare.py's), then prepare.py's training on what it writes
    table = tmp_path / "chats.csv"
    table.write_text('prompt,completion\n"Hi, you",Hello\n' * 50, encoding="utf-8")
    code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(table), "--vocab_size", "300",
                                                         "--out", str(out)], capsys)
    assert code == 1 and not out.exists(), err
    assert re.fullmatch(rf"error: --input {re.escape(str(table))} holds records, whose syntax this would train on as "
                        rf"text; a \.csv file's rows as JSON Lines records, its columns their fields: `(.*)`; then "
                        rf"train on their text with `python prepare\.py --source {re.escape(str(table))}\.jsonl "
                        rf"--vocab_size 300 --name NAME` \(it writes data/NAME/tokenizer\.tiktoken\)\n", err), err
    subprocess.run(err.split("`")[1], shell=True, check=True)
    assert open(f"{table}.jsonl").readline() == '{"prompt":"Hi, you","completion":"Hello"}\n'


def test_a_separator_in_one_long_line_is_never_trained_on(tmp_path, monkeypatch):
    """A file of one line (documents joined by <|endoftext|>, no newline) is read in pieces cut anywhere: a cut inside
    the separator left "<|endo" and "ftext|>" in the text the vocabulary was trained on."""
    docs = [f"story number {i} about a cat" for i in range(40)]
    src = tmp_path / "one_line.txt"
    src.write_text(EOT.join(docs), encoding="utf-8")
    seen = []
    monkeypatch.setattr(setup_tokenizer, "train_bpe", lambda texts, *a: seen.append(list(texts)))
    chunks = setup_tokenizer.read_text_chunks
    for size in range(1, 2 * len(EOT)):  # every offset of a cut in the separator
        monkeypatch.setattr(setup_tokenizer, "read_text_chunks", lambda path: chunks(path, chunk_chars=size))
        train_tokenizer([str(src)], 300, str(tmp_path / "v.tiktoken"))
        assert "".join(seen.pop()) == "".join(docs), size  # the documents' text, all of it and nothing else


def prepared(tmp_path, capsys, *options, name="notes"):
    """A text dataset prepare.py made in tmp_path/data/NAME with options: (its source file, its folder)."""
    import prepare  # here: it imports numpy and reads the datasets' table
    src = tmp_path / "notes.txt"
    src.write_text("the cat sat on the mat and the dog ran far away.\n" * 400, encoding="utf-8")
    assert run_in_process(prepare.main, ["--source", str(src), "--out_dir", str(tmp_path / "data"), "--name", name,
                                         *options], capsys)[0] == 0
    return src, tmp_path / "data" / name


def test_cli_train_refuses_a_datasets_files_a_vocabulary_and_a_checkpoint(tmp_path, capsys):
    """A dataset's token file of a small vocabulary passes for text (its ids' bytes are valid UTF-8, few of them NUL):
    it trained a 4,096-token vocabulary of them; a .tiktoken file, one of base64. Refused before training, as a
    checkpoint, naming what each is."""
    src, folder = prepared(tmp_path, capsys, "--vocab_size", "300")
    vocab = tmp_path / "mine.tiktoken"
    vocab.write_text((folder / "tokenizer.tiktoken").read_text())
    checkpoint = tmp_path / "model.pt"
    with zipfile.ZipFile(checkpoint, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    out = tmp_path / "v.tiktoken"
    for path, what in [(folder / "train.bin", f"a file of the dataset in {folder}"),
                       (folder / "tokenizer.tiktoken", f"a file of the dataset in {folder}"),
                       (vocab, "a vocabulary"), (checkpoint, "a checkpoint (a zip archive)")]:
        code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", str(src), str(path),
                                                             "--out", str(out)],
                                      capsys)
        assert (code, err) == (1, f"error: --input {path} is {what}, not text: give the text files it was made from\n")
        assert not out.exists()
    # and standard input by its usual name, "-": "no such file" said nothing of /dev/stdin
    code, _, err = run_in_process(setup_tokenizer.main, ["train", "--input", "-", "--out", str(out)], capsys)
    assert (code, err) == (1, "error: --input -: give /dev/stdin to read standard input\n") and not out.exists()


def test_cli_without_a_command_names_the_commands(capsys):
    """`python setup_tokenizer.py` alone said "the following arguments are required: cmd", a word of the code's."""
    code, out, err = run_in_process(setup_tokenizer.main, [], capsys)
    assert code == 2 and err.startswith("setup_tokenizer.py: error: the following arguments are required: "
                                        "{show,train}; ")
    # a command's own usage error sends to that command's --help, a command that runs (not `'setup_tokenizer.py train'`)
    code, out, err = run_in_process(setup_tokenizer.main, ["train", "--input", "a.txt"], capsys)
    assert code == 2 and err == ("setup_tokenizer.py train: error: the following arguments are required: --out; see "
                                 f"{common.script_command('setup_tokenizer.py', 'train', '--help')}\n"), err


def test_a_datasets_folder_as_tokenizer_names_its_vocabulary(gpt2, tmp_path, capsys):
    """--tokenizer data/NAME (the vocabulary of that dataset, one would think) said "a folder without tokenizer.json or
    vocab.json" and listed what else to pass, leaving its tokenizer.tiktoken, or gpt2, to be found."""
    for options, name, fix in [(["--vocab_size", "300"], "own", "{folder}/tokenizer.tiktoken"), ([], "gpt2", "gpt2")]:
        _, folder = prepared(tmp_path, capsys, *options, name=name)
        with pytest.raises(UserError) as e:
            get_tokenizer(str(folder))
        assert str(e.value) == (f"{folder} is a dataset's folder, not a vocabulary: pass the one it was made with, "
                                f"{fix.format(folder=folder)}")
        # and a file of it, its meta.json or a token file: "is not a .tiktoken vocabulary ...: pass a file written by
        # `setup_tokenizer.py train`, ...", the dataset's own vocabulary beside it unnamed
        for file in ("meta.json", "train.bin"):
            with pytest.raises(UserError) as e:
                get_tokenizer(str(folder / file))
            assert str(e.value) == (f"{folder / file} is a file of the dataset folder {folder}, not a vocabulary: pass "
                                    f"the one it was made with, {fix.format(folder=folder)}")
    # remade with gpt2, the folder keeps its earlier vocabulary (a later --vocab_size of its size takes it again): it
    # was named as the one the dataset was made with
    _, folder = prepared(tmp_path, capsys, "--tokenizer", "gpt2", name="own")
    assert os.path.isfile(folder / "tokenizer.tiktoken")
    with pytest.raises(UserError, match=r"not a vocabulary: pass the one it was made with, gpt2$"):
        get_tokenizer(str(folder))
