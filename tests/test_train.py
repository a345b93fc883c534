"""
train.py: loss goes down on real text, exact resume (fp32 and bf16), Ctrl-C saves atomically, bad checkpoints and
tokenizer mismatches are one-line errors, the best checkpoint follows val loss, masked loss, epoch coverage.
Tiny models (2 layers x 64) on a tiny custom vocabulary, so the whole file runs in well under a minute on 2 cores.
"""
import contextlib
import errno
import io
import json
import math
import mmap
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

import common
import eval as eval_py
import prepare
import train
from checkpoint import load_checkpoint, load_model, save_checkpoint
from common import UserError, held_lock, prepare_lock
from conftest import HANGUP, built_once, hangup_as, hangup_not_taken, run_cli
from model import GPT, MuonAdamW, make_config
from setup_tokenizer import EOT, IM_END, get_tokenizer, render_chat, tokenizer_hash, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FALLBACK_TEXT = (
    "Once upon a time there was a little girl named Lily. She loved to play in the park with her red ball. "
    "One day she saw a big dog. The dog wanted to play too. Lily threw the ball and the dog ran after it. "
    "They played all day and became good friends. When the sun went down, Lily went home to her mom. "
    "She told her mom about the dog, and her mom smiled and gave her a warm hug.\n"
)


def story_text(n_bytes=200_000):
    """The first n_bytes of the TinyStories sample from the data mirror, or a built-in story repeated."""
    mirror = os.environ.get("DATA_MIRROR")
    path = os.path.join(mirror, "tinystories", "TinyStories-sample.txt") if mirror else ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read(n_bytes)
    return (FALLBACK_TEXT * (n_bytes // len(FALLBACK_TEXT) + 1))[:n_bytes]


def write_dataset(data_dir, name, enc, tokenizer, docs, chat=False, val_frac=0.1):
    """A dataset in prepare.py's format: train/val .bin (+ _mask.bin for chat) and meta.json.
    docs: texts, or for chat lists of messages rendered with ChatML."""
    folder = os.path.join(data_dir, name)
    os.makedirs(folder, exist_ok=True)
    n_val = max(1, int(len(docs) * val_frac))
    splits = {"train": docs[n_val:], "val": docs[:n_val]}
    meta_splits = {}
    eot = enc.encode_single_token(EOT)
    for split, items in splits.items():
        ids, mask, n_bytes = [], [], 0
        for doc in items:
            if chat:  # closed by <|endoftext|> with mask 0, as prepare.py writes conversations
                i, m = render_chat(enc, doc)
                i, m = i + [eot], m + [0]
                n_bytes += sum(len(msg["content"].encode()) for msg in doc)
            else:
                i = enc.encode_ordinary(doc) + [eot]
                m = [1] * len(i)
                n_bytes += len(doc.encode())
            ids += i
            mask += m
        np.array(ids, dtype=np.uint16).tofile(os.path.join(folder, f"{split}.bin"))
        if chat:
            np.array(mask, dtype=np.uint8).tofile(os.path.join(folder, f"{split}_mask.bin"))
        meta_splits[split] = {"tokens": len(ids), "documents": len(items), "bytes": n_bytes}
    meta = {"format": 1, "version": 2, "dataset": name, "kind": "chat" if chat else "text", "tokenizer": tokenizer,
            "tokenizer_name": enc.name, "tokenizer_hash": tokenizer_hash(enc), "vocab_size": enc.n_vocab,
            "dtype": "uint16", "has_mask": chat, "source": "tests", "splits": meta_splits}
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    return folder


def chat_docs(text, n=300):
    """Synthetic ChatML conversations whose assistant turns are story sentences."""
    sents = [s.strip() + "." for s in text.replace("\n", " ").split(".") if len(s.strip()) > 10]
    docs = []
    for i in range(n):
        docs.append([{"role": "user", "content": f"Tell me sentence {i % 17}, please."},
                     {"role": "assistant", "content": " ".join(sents[(3 * i) % len(sents):(3 * i) % len(sents) + 3])}])
    return docs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are too small to gain from more, and on a busy 2-core machine OpenMP
    threads waiting for each other make every step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two tokenizers, a story dataset (~200 KB), a small one for resume tests, a chat one and a foreign-tokenizer
    one."""
    root = tmp_path_factory.mktemp("train")
    text = story_text()
    src = root / "text.txt"
    src.write_text(text, encoding="utf-8")
    tok = str(root / "tok512.tiktoken")
    enc = train_tokenizer([str(src)], 512, tok)
    tok2 = str(root / "tok300.tiktoken")
    enc2 = train_tokenizer([str(src)], 300, tok2)
    data = str(root / "data")
    docs = [d.strip() for d in text.split(EOT) if d.strip()]
    if len(docs) < 20:  # the built-in text has no separators: cut it into paragraphs
        docs = [d for d in text.split("\n") if d.strip()]
    write_dataset(data, "story", enc, tok, docs)
    write_dataset(data, "mini", enc, tok, docs[: max(10, len(docs) // 8)])
    write_dataset(data, "chat", enc, tok, chat_docs(text), chat=True)
    write_dataset(data, "other", enc2, tok2, docs[:40])
    return {"root": root, "data": data, "tok": tok, "enc": enc}


def args_for(env, out, *extra, fresh=True):
    """parse_args writing to folder out; fresh: for a 2-layer x 64 model on block 64 (when continuing, leave the
    options out so the checkpoint's apply)."""
    base = ["--data_dir", env["data"], "--output_checkpoint", os.path.join(str(out), "{dataset}_epoch{epoch}.pt"),
            "--device", "cpu", "--dtype", "float32", "--no-color"]
    if fresh:
        base += ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64", "--batch_size", "16",
                 "--eval_batches", "8"]
    return train.parse_args(base + [str(e) for e in extra])


def optimizer_states(ck):
    """Each parameter's optimizer state in a checkpoint: AdamW's, or Muon's and AdamW's."""
    opt = ck["optimizer"]
    return [st for part in ((opt["muon"], opt["adamw"]) if "muon" in opt else (opt,)) for st in part["state"].values()]


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def bits_per_byte_of(loss, meta, enc, block_size, idx, split="val"):
    """Bits per byte as measured, apart from train.py's tables: loss (nats a scored target) times the targets of
    windows idx that the loss counts (all but those outside a chat set's mask), over the UTF-8 bytes of their text,
    decoded (special tokens are no text)."""
    folder = os.path.join(meta["folder"], split)
    ids = np.fromfile(folder + ".bin", dtype=meta["dtype"])
    mask = np.fromfile(folder + "_mask.bin", np.uint8) if meta.get("has_mask") else np.ones(len(ids), np.uint8)
    special = {enc.encode_single_token(t) for t in enc.special_tokens_set}
    targets = [int(t) for i in idx for t, m in zip(ids[i * block_size + 1:(i + 1) * block_size + 1],
                                                   mask[i * block_size + 1:(i + 1) * block_size + 1]) if m]
    text = enc.decode_bytes([t for t in targets if t not in special])
    return loss * len(targets) / (len(text) * math.log(2))


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    """Three epochs on the story set with evaluations every 20% of an epoch: shared by several tests.
    The modern variant (RoPE) learns several times faster than learned positions at this size. Built once for all
    pytest-xdist workers (built_once): tests copy the files they change."""
    def build(out):
        return {"out": str(out), "summary": train.train(args_for(
            env, out, "--dataset", "story", "--epochs", "3", "--batch_size", "8", "--lr", "4e-3", "--variant", "modern",
            "--eval_interval", "20", "--log_interval", "5"))}
    return built_once(tmp_path_factory, "trained", build)


# -----------------------------------------------------------------------------

def test_loss_falls_on_real_text(env, trained):
    s = trained["summary"]
    recs = read_metrics(s["metrics"])
    first = recs[0]["train_loss"]  # mean of the first few steps: still close to ln(vocab)
    start = math.log(env["enc"].n_vocab)
    assert first > 0.8 * start, (first, start)
    assert s["val_loss"] < 0.6 * start, (s["val_loss"], start)
    assert recs[-1]["train_loss"] < 0.6 * first
    assert s["epochs_done"] == 3 and s["stopped"] == "done"
    for key in ("step", "epoch", "train_loss", "lr", "tokens_per_s", "elapsed"):
        assert key in recs[-1]
    assert s["plot"] is None or os.path.getsize(s["plot"]) > 1000
    assert load_checkpoint(s["checkpoint"])["data"]["kind"] == "text"  # gen.py --chat warns of such a model


def test_best_checkpoint_follows_val_loss(env, trained):
    s = trained["summary"]
    vals = [r["val_loss"] for r in read_metrics(s["metrics"]) if r["val_loss"] is not None]
    assert len(vals) >= 12  # every 20% of 3 epochs
    best = load_checkpoint(s["best_checkpoint"])
    assert best["best_val_loss"] == pytest.approx(min(vals), abs=1e-5)
    # the weights in it really give that val loss
    model, _, _ = load_model(s["best_checkpoint"])
    val = train.Windows(train.load_meta(env["data"], "story"), "val", 64)
    loss = train.evaluate(model, val, 8, 8 * 8, torch.device("cpu"), torch.float32)
    assert loss == pytest.approx(min(vals), abs=1e-4)
    last = load_checkpoint(s["checkpoint"])
    assert last["epoch"] == 3 and last["epoch_step"] == 0 and os.path.basename(s["checkpoint"]) == "story_epoch3.pt"
    for n in (1, 2):
        assert load_checkpoint(os.path.join(str(trained["out"]), f"story_epoch{n}.pt"))["epoch"] == n


def test_best_checkpoint_ignores_worse_evals(env, trained, tmp_path):
    # continue with a learning rate far too high: val loss gets worse, so no new best may be written
    s = trained["summary"]
    out = tmp_path / "worse"
    r = train.train(args_for(env, out, "--checkpoint", s["checkpoint"], "--reset_epoch", "--lr", "0.2", "--warmup", "0",
                             "--max_steps", "4", "--eval_interval", "1", "--batch_size", "8"))
    vals = [rec["val_loss"] for rec in read_metrics(r["metrics"]) if rec["val_loss"] is not None]
    assert len(vals) == 4 and min(vals) > s["best_val_loss"]
    assert r["best_val_loss"] == s["best_val_loss"] and r["best_checkpoint"] is None
    assert not os.path.exists(out / "story_best.pt")


def test_max_steps_on_the_runs_last_step_is_done(env, tmp_path, capsys):
    """--max_steps that ends on the last step of the last epoch stops nothing: the run is done, and says "done:", not
    "max_steps:" beside "1 of 1 epoch(s) done"."""
    steps = math.ceil(len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) / 16)
    capsys.readouterr()
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", steps, "--eval_interval", 0))
    assert (r["stopped"], r["steps"]) == ("done", steps)
    assert re.search(rf"^done: {steps} steps?, .*; 1 of 1 epoch\(s\) done$", capsys.readouterr().out, re.M)
    assert "continue with" not in capsys.readouterr().out


def test_a_run_whose_output_folder_lacks_room_for_its_saves_is_warned_at_its_start(env, tmp_path, monkeypatch,
                                                                                   capsys):
    """A full disk was found at the first save, which a run with few saves reaches after hours: a folder with less
    free space than two of the run's checkpoints is said at the start, with the way out."""
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", 1))
    size = os.path.getsize(r["checkpoint"])
    assert "MB free in" not in capsys.readouterr().err
    real = shutil.disk_usage
    monkeypatch.setattr(train.shutil, "disk_usage", lambda path: real(path)._replace(free=size))
    train.train(args_for(env, tmp_path / "new" / "deeper", "--dataset", "mini", "--max_steps", 1))
    err = capsys.readouterr().err
    assert re.search(rf"warning: \d MB free in {re.escape(str(tmp_path / 'new' / 'deeper'))}, where a checkpoint of "
                     rf"this run takes about \d MB and a save writes its new one beside the old: the saves may fail; "
                     rf"free some space, or write elsewhere \(--output_checkpoint\)", err), err
    # a continued run measures the optimizer state it loaded
    train.train(args_for(env, tmp_path, "--checkpoint", r["checkpoint"], "--max_steps", 1, fresh=False))
    assert "MB free in" in capsys.readouterr().err


def test_a_run_max_steps_stops_before_its_epochs_end_names_the_command_that_continues_it(env, tmp_path, capsys):
    """A run stopped by --max_steps ended on "try it", with no word of how to train on to its epochs' end, where a
    Ctrl-C's line names it (--max_steps is not inherited: --checkpoint alone goes on)."""
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", 2, "--epochs", 2, "--eval_interval", 0))
    out = capsys.readouterr().out
    command = re.search(r"^continue with `(.*)` \(to the end of its 2 epoch\(s\)\)$", out, re.M)
    assert r["stopped"] == "max_steps" and command, out
    assert shlex.split(command[1])[-2:] == ["--checkpoint", r["checkpoint"]]
    r = train.train(train.parse_args(shlex.split(command[1])[2:]))  # (the words after python train.py)
    assert r["stopped"] == "done" and r["epochs_done"] == 2 and "continue with" not in capsys.readouterr().out


def test_an_epoch_that_takes_no_step_is_an_error_not_a_hang(env, tmp_path, monkeypatch):
    """A bug in the epoch's bookkeeping (a mutant that skipped a window on resume, or dropped the last short step)
    left an epoch with no step to take that never ended: the run took it again forever, and hung the test suite."""
    def no_steps(self, epoch, start=0):
        return
        yield
    monkeypatch.setattr(train.Batches, "epoch", no_steps)
    with pytest.raises(RuntimeError, match=r"epoch 1 took no step from window 0 of [\d,]+ and did not end: a bug"):
        train.train(args_for(env, tmp_path / "x", "--dataset", "mini", "--max_steps", "3"))


@pytest.mark.parametrize("dtype,optimizer", [("float32", "muon"), ("bfloat16", "muon"), ("float32", "adamw")])
def test_exact_resume(env, tmp_path, dtype, optimizer):
    # dropout on (the RNG must be restored), grad_accum 2 and 2 epochs (a short last step: 141 windows here in steps of
    # 8 x 2, an epoch boundary); 32 wide, not 64: bfloat16 on a CPU without it (emulated) took 15 s at 64, 5 s at 32.
    # Batches of 8, not 4: half the steps, whose fixed cost (optimizer, Python) is most of such a tiny model's time
    common = ["--dataset", "mini", "--epochs", "2", "--dropout", "0.1", "--grad_accum", "2", "--batch_size", "8",
              "--dtype", dtype, "--eval_interval", "50", "--save_interval", "0", "--optimizer", optimizer,
              "--n_embd", 32]
    one = train.train(args_for(env, tmp_path / "one", *common))
    n = one["steps"]
    assert n >= 8 and one["stopped"] == "done"
    part = train.train(args_for(env, tmp_path / "two", *common, "--max_steps", n // 2 - 1))
    assert part["stopped"] == "max_steps" and part["steps"] == n // 2 - 1
    ck = load_checkpoint(part["checkpoint"])
    assert ck["epoch"] == 0 and 0 < ck["epoch_step"]  # stopped inside the first epoch
    # the other options come from the checkpoint
    mid = train.train(args_for(env, tmp_path / "two", "--checkpoint", part["checkpoint"], "--max_steps", n // 2,
                               "--dtype", dtype, fresh=False))
    assert mid["steps"] == n - 1
    mid_elapsed = load_checkpoint(mid["checkpoint"])["elapsed"]
    rest_args = args_for(env, tmp_path / "two", "--checkpoint", mid["checkpoint"], fresh=False)
    rest_args.dtype = None  # left out: the run goes on in its own precision, whatever this machine's default
    rest = train.train(rest_args)
    assert rest["steps"] == n
    a, b = load_checkpoint(one["checkpoint"]), load_checkpoint(rest["checkpoint"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["args"]["optimizer"] == b["args"]["optimizer"] == optimizer
    states_a, states_b = optimizer_states(a), optimizer_states(b)
    assert len(states_a) == len(states_b) == len(a["model"]) - 1  # every parameter (wte and lm_head are one)
    for i, (sa, sb) in enumerate(zip(states_a, states_b)):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (i, k)
    assert a["best_val_loss"] == b["best_val_loss"]
    # and so does where it stands: the tokens it trained on, all runs together (the metrics' tokens column): each
    # window's block of both epochs, the epochs' short last steps counted by their windows
    assert (a["step"], a["epoch"], a["epoch_windows"], a["tokens"]) == (b["step"], b["epoch"], b["epoch_windows"],
                                                                         b["tokens"])
    assert a["tokens"] == 2 * len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) * 64
    # and the seconds it trained, all runs together (the metrics' elapsed column), not the last run's alone: the
    # 1-step middle run's checkpoint holds more than the first run's
    assert b["elapsed"] > mid_elapsed > ck["elapsed"] > 0


def test_the_resume_line_counts_epochs_as_the_step_lines_do(env, tmp_path, capsys):
    """The resume line said "resume epoch 1" (the epoch in progress, as the bar counts) where the run's last step line
    had said "epoch 0.15" (epochs done): it says the epochs done first, then the epoch in progress and its window."""
    common = ["--dataset", "mini", "--eval_interval", "0", "--save_interval", "0"]
    part = train.train(args_for(env, tmp_path, *common, "--max_steps", 3))
    last = re.findall(r"^step 3 \(epoch (\d+\.\d\d)\)", capsys.readouterr().out, re.M)
    assert last, "no step line of step 3"
    ck = load_checkpoint(part["checkpoint"])
    train.train(args_for(env, tmp_path, "--checkpoint", part["checkpoint"], "--max_steps", 1, fresh=False))
    out = capsys.readouterr().out
    n_windows = re.search(r"window \d+/(\d+)\)", out)
    assert n_windows, out
    assert f"resume at epoch {last[-1]} (epoch 1, window {ck['epoch_windows']}/{n_windows.group(1)}), step 3" in out


def test_a_continued_run_given_a_longer_schedule_says_where_its_lr_goes_on(env, tmp_path, capsys):
    """A run continued with a larger --epochs or --time_budget spreads the lr's cosine over the new length, so the lr
    goes back up from the end of the decay: its first log line showed that with no word why. The resume line is
    followed by one saying so and the lr the run goes on at; a run continued on the same schedule gets none."""
    common = ["--dataset", "mini", "--eval_interval", "0", "--save_interval", "0"]
    part = train.train(args_for(env, tmp_path / "a", *common, "--max_steps", 2))
    capsys.readouterr()
    first = train.train(args_for(env, tmp_path / "a", "--checkpoint", part["checkpoint"], fresh=False))
    out = capsys.readouterr().out
    assert "resume at epoch" in out and "the lr's cosine" not in out  # the same schedule: no line
    end = train.train(args_for(env, tmp_path / "a", "--checkpoint", first["checkpoint"], "--epochs", 2, "--max_steps",
                               1, fresh=False))
    lrs = dict((r["step"], r["lr"]) for r in read_metrics(end["metrics"]))
    step = first["steps"]
    said = re.search(rf"^the lr's cosine now spans 2 epoch\(s\) \(the checkpoint's run: 1 epoch\(s\)\), so step "
                     rf"{step} goes on at lr (\S+)$", capsys.readouterr().out, re.M)
    assert said and float(said[1]) == pytest.approx(lrs[step + 1], rel=1e-2) and lrs[step + 1] > 3 * lrs[step]
    budget = train.train(args_for(env, tmp_path / "b", *common, "--time_budget", 0.03))
    ended_at = read_metrics(budget["metrics"])[-1]["lr"]  # (the continued run adds its records to the file)
    capsys.readouterr()
    end = train.train(args_for(env, tmp_path / "b", "--checkpoint", budget["checkpoint"], "--time_budget", 0.06,
                               "--max_steps", 1, fresh=False))
    said = re.search(r"^the lr's cosine now spans 4s \(the checkpoint's run: 2s\), so step \d+ goes on at "
                     r"lr (\S+)$", capsys.readouterr().out, re.M)
    assert said and float(said[1]) > 3 * ended_at


def test_a_budget_given_in_seconds_is_said_in_seconds():
    """--time_budget 40s was "0.666667 min" in the banner, the lr line and the summary, and a spent one's error said
    "its 0.666667-minute --time_budget ... --time_budget 1.33333 trains 0.666667 more": the seconds are said back, and
    the value in a command reads as the minutes meant. The lines say a budget as they say the time spent (fmt_time):
    3s was "0.05 min" in the banner and "3s" in the summary."""
    for given, said in (("3s", "3s"), ("40s", "40s"), ("100s", "1m40s"), ("90s", "1m30s"), ("5", "5m00s"),
                        ("0.02", "1s"), ("1.5h", "1h30m")):
        assert train.schedule_span(train.minutes_value(given), None) == said
    twice = 2 * train.minutes_value("40s")
    assert train.budget_value(twice) == "80s" and train.minutes_value(train.budget_value(twice)) == twice
    assert train.budget_value(1.1 + 2.2) == "3.3" and train.budget_value(0.05) == "3s"


def test_a_negative_duration_is_read_as_one(capsys):
    """--time_budget -90s was argparse's "expected one argument" (a word starting with - read as an option), where
    -90 got the budget's own error: each is the option's value, refused as out of range, in the unit given."""
    config = train.make_config("tiny")
    for given, said in (("-90s", "-1.5"), ("-40s", "-40s"), ("-2m", "-2"), ("-.5h", "-30")):
        with pytest.raises(UserError, match=f"^--time_budget must be a positive number of minutes, got {said}$"):
            train.resolve_args(train.parse_args(["--time_budget", given]), None, False, config)
    with pytest.raises(SystemExit):
        train.parse_args(["--dist_timeout", "-5m"])
    assert "error: argument --dist_timeout: '-5m': give a positive number of minutes; see " in capsys.readouterr().err


def test_a_long_budget_is_said_with_all_its_digits():
    """:g's 6 digits said a continued 10000.25-minute budget as "--time_budget 10000.2" and 1234567 minutes as
    1.23457e+06: a command that named another budget than the one meant."""
    for minutes, said in ((10000.25, "10000.25"), (1234567, "1234567"), (1000 + 7 / 60, "60007s")):
        assert train.budget_value(minutes) == said and train.minutes_value(said) == pytest.approx(minutes, rel=1e-12)


def test_max_steps_past_the_epochs_says_the_run_ends_at_them(env, tmp_path, capsys):
    """nanoGPT's --max_iters sets its run's length; --max_steps, typed for it, stopped nothing past the epochs' end, and
    the run ended steps short of it with no word. The banner says so; a --max_steps within the run gets no line."""
    r = train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--max_steps", 100_000, "--eval_interval", 0))
    said = re.search(r"^--max_steps 100,000 is past the end of 1 epoch\(s\), (\d+) steps away: the run ends there "
                     r"\(--epochs sets its length\)$", capsys.readouterr().out, re.M)
    assert said and int(said[1]) == r["steps"], said
    # one that ends the run on its last step: no line
    train.train(args_for(env, tmp_path / "b", "--dataset", "mini", "--max_steps", r["steps"], "--eval_interval", 0))
    assert "is past the end" not in capsys.readouterr().out
    # a continued run's --max_steps counts from where it resumes (the steps away are those left of its epochs)
    part = train.train(args_for(env, tmp_path / "c", "--dataset", "mini", "--max_steps", 2, "--eval_interval", 0))
    capsys.readouterr()
    train.train(args_for(env, tmp_path / "d", "--checkpoint", part["checkpoint"], "--max_steps", r["steps"] - 1,
                         fresh=False))
    assert f"--max_steps {r['steps'] - 1} is past the end of 1 epoch(s), {r['steps'] - 2} steps away" \
        in capsys.readouterr().out
    train.train(args_for(env, tmp_path / "c", "--checkpoint", part["checkpoint"], "--max_steps", r["steps"] - 2,
                         fresh=False))
    assert "is past the end" not in capsys.readouterr().out
    # a --time_budget sets the length (with --epochs too, which may end it first): no line about the epochs' steps
    train.train(args_for(env, tmp_path / "e", "--dataset", "mini", "--max_steps", 100_000, "--time_budget", 0.01,
                         "--epochs", 1))
    assert "is past the end" not in capsys.readouterr().out


def test_nanogpts_run_length_in_steps_is_refused_with_the_epochs_of_as_many(env, tmp_path, capsys):
    """nanoGPT's --max_iters (its run's length, the lr's cosine spanning it) was "did you mean --max_steps?", which
    stops a run inside its schedule, and --lr_decay_iters "unrecognized": each is one line naming the --epochs of
    about as many steps, counted on the dataset and batch given, before anything is written."""
    n_windows = len(train.Windows(train.load_meta(env["data"], "story"), "train", 64))
    spe = math.ceil(n_windows / 16)
    for k in ("max_iters", "lr_decay_iters"):
        with pytest.raises(UserError) as e:
            train.train(args_for(env, tmp_path, "--dataset", "story", f"--{k}", 3 * spe + 1))
        assert str(e.value).startswith(f"--{k} {3 * spe + 1}: ")
        assert str(e.value).endswith(f"; an epoch of story is {spe:,} steps of 16 windows of 64 tokens, so --epochs 3 "
                                     f"is {3 * spe:,} steps")
    with pytest.raises(UserError) as e:  # (a batch of 8 x 2, under an epoch)
        train.train(args_for(env, tmp_path, "--dataset", "story", "--max_iters", 3, "--batch_size", 8,
                             "--grad_accum", 2))
    assert str(e.value).endswith(f"so 3 steps are {3 / spe:.0%} of one: --max_steps 3 stops a run there, its lr not "
                                 f"yet decayed (a --time_budget decays it in the minutes given)")
    assert not os.listdir(tmp_path)
    # nanoGPT's --decay_lr False, a constant lr: the options that make one
    decays = "the lr here always warms up, then decays to --min_lr over the run"
    for given, said in ((["--decay_lr", "False"], f"--decay_lr False: {decays}; for a constant lr give --min_lr equal "
                                                  f"to --lr, and --warmup 0 (0% with --time_budget)"),
                        (["--decay_lr=True"], f"--decay_lr True: {decays}; leave --decay_lr out")):
        with pytest.raises(SystemExit):
            train.parse_args(given)
        assert f"train.py: error: {said}; see " in capsys.readouterr().err
    # and a run given none of them records none of them
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", 1))
    assert not {"max_iters", "lr_decay_iters", "decay_lr"} & set(load_checkpoint(r["checkpoint"])["args"])


def test_a_chat_run_stopped_at_any_step_resumes_exactly(env, tmp_path, monkeypatch):
    """Exact resume wherever --max_steps stops the run, on a chat set (a loss mask: steps weighted by the targets
    they count): inside an epoch, at its last full step before the short one, on its end (a checkpoint of epoch_windows
    0, named after the finished epoch) and just past it. The checkpoint places the run where the steps put it, and the
    continued run takes the same windows, losses and weights, bit for bit, as the run in one go."""
    data = str(tmp_path / "data")
    write_dataset(data, "tinychat", env["enc"], env["tok"], chat_docs(story_text(20_000), n=8), chat=True,
                  val_frac=0.25)
    n = len(train.Windows(train.load_meta(data, "tinychat"), "train", 16))
    # --batch_size B x --grad_accum 2 windows a step, leaving a short last step in each epoch (n depends on the text)
    batch = next(b for b in (2, 3, 5) if n % (2 * b) and n > 4 * b)
    per_step = 2 * batch
    spe = math.ceil(n / per_step)
    steps = []  # (windows, loss) of each step, as train_step took them
    real = train.train_step

    def recording(fwd, optimizer, scaler, micro, *a, **k):
        loss = real(fwd, optimizer, scaler, micro, *a, **k)
        steps.append(([int(i) for *_, idx in micro for i in idx], float(loss)))
        return loss
    monkeypatch.setattr(train, "train_step", recording)

    def run(out, *extra, fresh=True):
        options = ["--data_dir", data, "--device", "cpu", "--no-color", *extra]
        if fresh:
            options += ["--dataset", "tinychat", "--output_checkpoint", str(out / "{dataset}_epoch{epoch}.pt"),
                        "--dtype", "float32", "--n_layer", "1", "--n_head", "1", "--n_embd", "16", "--block_size",
                        "16", "--batch_size", batch, "--grad_accum", "2", "--epochs", "2", "--dropout", "0.1",
                        "--eval_batches", "1", "--eval_interval", "0", "--save_interval", "0"]
        return train.train(train.parse_args([str(o) for o in options]))
    one = run(tmp_path / "one")
    whole, weights = list(steps), load_checkpoint(one["checkpoint"])["model"]
    assert one["steps"] == len(whole) == 2 * spe
    for epoch in (0, 1):  # (each window once an epoch, in its order)
        assert [i for w, _ in whole[epoch * spe:(epoch + 1) * spe] for i in w] == \
            train.epoch_order(n, train.DEFAULTS["seed"], epoch).tolist()
    for k in (1, spe - 1, spe, spe + 1):
        steps.clear()
        part = run(tmp_path / str(k), "--max_steps", k)
        ck = load_checkpoint(part["checkpoint"])
        assert (ck["step"], ck["epoch"], ck["epoch_step"], ck["epoch_windows"]) == \
            (k, k // spe, k % spe, per_step * (k % spe)), k
        assert os.path.basename(part["checkpoint"]) == f"tinychat_epoch{k // spe + (1 if k % spe else 0)}.pt"
        rest = run(None, "--checkpoint", part["checkpoint"], fresh=False)
        assert rest["steps"] == 2 * spe and steps == whole, k
        b = load_checkpoint(rest["checkpoint"])["model"]
        assert all(torch.equal(weights[name], b[name]) for name in weights), k


def test_evaluations_logs_and_saves_leave_the_training_alone(env, tmp_path):
    """A user comparing runs changes how often they are looked at, not what they train: evaluations, log records and
    saves draw nothing from the training's random stream (dropout on: a draw there moves every later mask) and take no
    windows from the epoch, so the weights do not depend on --eval_interval, --log_interval or --save_interval, nor on
    changing them when a run is continued. The seed does make the model (another one, another model)."""
    common = ["--dataset", "mini", "--dropout", "0.1", "--batch_size", "4"]
    quiet = train.train(args_for(env, tmp_path / "quiet", *common, "--max_steps", 6, "--eval_interval", 0,
                                 "--save_interval", 0, "--log_interval", 100))
    busy = train.train(args_for(env, tmp_path / "busy", *common, "--max_steps", 3, "--eval_interval", 0.01,
                                "--save_interval", 0.01, "--log_interval", 0.01))
    recs = read_metrics(busy["metrics"])
    assert [r["step"] for r in recs if r["val_loss"] is not None] == [1, 2, 3]  # an evaluation after every step
    rest = train.train(args_for(env, tmp_path / "busy", "--checkpoint", busy["checkpoint"], "--max_steps", 3,
                                "--eval_interval", 30, "--log_interval", 0.01, "--save_interval", 0, fresh=False))
    other_seed = train.train(args_for(env, tmp_path / "seed", *common, "--max_steps", 6, "--eval_interval", 0,
                                      "--save_interval", 0, "--seed", 7))
    assert quiet["steps"] == rest["steps"] == other_seed["steps"] == 6
    a, b, c = (load_checkpoint(s["checkpoint"])["model"] for s in (quiet, rest, other_seed))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])
    # the continued run's records every step are the quiet run's losses (its one record: the mean of all 6)
    losses = [r["train_loss"] for r in recs + read_metrics(rest["metrics"])[len(recs):]]
    assert len(losses) == 6 and read_metrics(quiet["metrics"])[-1]["train_loss"] == pytest.approx(sum(losses) / 6,
                                                                                                     abs=1e-4)


def test_a_closed_pipe_saves_the_run_and_says_why(env, tmp_path, monkeypatch, capsys):
    """`python train.py | head`: the reader goes away, the steps so far are saved, and the warning said "before
    stopping on the error below", where run_main prints none for a closed pipe (the exit code, 141, says it)."""
    lines = []

    def closed_after_the_first_lines(line=""):
        lines.append(line)
        if len(lines) > 3:
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(train, "say", closed_after_the_first_lines)
    with pytest.raises(BrokenPipeError):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--eval_interval", "2", "--log_interval", "1",
                             "--max_steps", "6"))
    err = capsys.readouterr().err
    saved = str(tmp_path / "mini_epoch1.pt")
    assert f"saved {saved} (step " in err and "before stopping on its output's reader went away (a closed pipe)" in \
        err and "the error below" not in err, err
    assert load_checkpoint(saved)["step"] > 0


def test_a_run_resumed_from_the_save_on_an_error_mid_step_is_the_run_that_went_on(env, tmp_path, monkeypatch, capsys):
    # an error inside a step (a failing device, out of memory in its backward) saves the steps before it; that save
    # recorded the random state after the failed step had drawn its dropout masks, so the resumed run redid the step
    # with other masks: another model than the run that never failed. And the save, between two records (every 4
    # steps here), held no loss of the steps since the last one: the resumed run's first record averaged its own alone
    common = ["--dataset", "mini", "--dropout", "0.1", "--batch_size", "4", "--eval_interval", "0",
              "--save_interval", "0", "--log_interval", "10", "--max_steps", "6"]
    one = train.train(args_for(env, tmp_path / "one", *common))
    forward, calls = GPT.forward, []

    def fails_in_the_fourth_step(self, *a, **k):
        out = forward(self, *a, **k)  # the step's masks drawn
        calls.append(self.training)
        if calls.count(True) == 4:
            raise RuntimeError("a device failed")
        return out
    monkeypatch.setattr(GPT, "forward", fails_in_the_fourth_step)
    with pytest.raises(RuntimeError, match="a device failed"):
        train.train(args_for(env, tmp_path / "two", *common))
    monkeypatch.undo()
    saved = str(tmp_path / "two" / "mini_epoch1.pt")
    assert f"saved {saved} (step 3) before stopping on the error below" in capsys.readouterr().err
    rest = train.train(args_for(env, tmp_path / "two", "--checkpoint", saved, "--max_steps", 3, fresh=False))
    assert rest["steps"] == one["steps"] == 6
    a, b = load_checkpoint(one["checkpoint"]), load_checkpoint(rest["checkpoint"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    losses = [[(r["step"], r["train_loss"]) for r in read_metrics(s["metrics"])] for s in (one, rest)]
    assert losses[0] == losses[1] and len(losses[0]) == 2, losses


def test_a_run_resumed_from_a_save_between_records_logs_the_losses_of_the_run_it_continues(env, tmp_path, monkeypatch):
    # saves every 20% of the epoch, records every 50%: a save between two records once held the steps since the last
    # record in no file, so the resumed run's first record averaged its own steps alone (another train_loss)
    common = ["--dataset", "mini", "--epochs", "1", "--batch_size", "4", "--log_interval", "50",
              "--save_interval", "20", "--eval_interval", "100"]
    kept = {}
    real_save = train.save_checkpoint

    def save_and_keep(path, *a, **kw):  # a copy of the first save that is not at the end of the epoch
        real_save(path, *a, **kw)
        if not kept and kw["epoch_step"]:
            kept.update(step=kw["step"], path=str(tmp_path / "copy.pt"))
            shutil.copy(path, kept["path"])
    monkeypatch.setattr(train, "save_checkpoint", save_and_keep)
    one = train.train(args_for(env, tmp_path / "one", *common))
    monkeypatch.undo()
    everything = {r["step"]: r["train_loss"] for r in read_metrics(one["metrics"]) if r["train_loss"] is not None}
    assert kept and one["steps"] > kept["step"] + 1
    os.makedirs(tmp_path / "two")
    resumed_from = str(tmp_path / "two" / "mini_epoch0.pt")
    shutil.move(kept["path"], resumed_from)
    rest = train.train(args_for(env, tmp_path / "two", "--checkpoint", resumed_from, fresh=False))
    after = {r["step"]: r["train_loss"] for r in read_metrics(rest["metrics"]) if r["train_loss"] is not None}
    assert after and min(after) > kept["step"]
    assert after == {s: everything[s] for s in after}


def test_a_reset_epoch_run_logs_its_own_losses_not_those_its_checkpoint_held_since_a_record(env, tmp_path):
    # a save between two records holds the loss of the steps since the last one, which the run continued from it goes
    # on from; --reset_epoch starts a new schedule at step 0, whose first record is its own steps' mean alone
    first = train.train(args_for(env, tmp_path / "one", "--dataset", "mini", "--max_steps", 2, "--eval_interval", 0,
                                 "--save_interval", 0))
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    losses = []
    for name, since in (("held", [50.0, 5]), ("none", [0.0, 0])):
        path = str(tmp_path / f"{name}.pt")
        torch.save(dict(ckpt, loss_since_record=since), path)
        r = train.train(train.parse_args(["--checkpoint", path, "--reset_epoch", "--max_steps", "2", "--log_interval",
                                          "1", "--eval_interval", "0", "--save_interval", "0", "--data_dir",
                                          env["data"], "--output_checkpoint", str(tmp_path / name / "{dataset}.pt"),
                                          "--device", "cpu", "--no-color"]))
        losses.append([(m["step"], m["train_loss"]) for m in read_metrics(r["metrics"]) if m["train_loss"] is not None])
    assert losses[0] == losses[1] and losses[0] and all(loss < 20 for _, loss in losses[0]), losses

def test_continuing_keeps_the_runs_optimizer(env, tmp_path, capsys):
    # a checkpoint from before --optimizer (AdamW's state, no "optimizer" in its args) continues with AdamW, exactly
    common = ["--dataset", "mini", "--epochs", "3", "--eval_interval", "0", "--save_interval", "0"]
    whole = train.train(args_for(env, tmp_path / "whole", *common, "--optimizer", "adamw", "--max_steps", "4"))
    half = train.train(args_for(env, tmp_path / "old", *common, "--optimizer", "adamw", "--max_steps", "2"))
    ck = load_checkpoint(half["checkpoint"])
    del ck["args"]["optimizer"]
    torch.save(ck, half["checkpoint"])
    rest = train.train(args_for(env, tmp_path / "old", "--checkpoint", half["checkpoint"], "--max_steps", "2",
                                fresh=False))
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(rest["checkpoint"])
    assert b["args"]["optimizer"] == "adamw" and b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # another optimizer on continuing: said, and its state starts afresh
    capsys.readouterr()
    switched = train.train(args_for(env, tmp_path / "old", "--checkpoint", rest["checkpoint"], "--optimizer", "muon",
                                    "--max_steps", "1", fresh=False))
    assert "--optimizer muon: the checkpoint's run used adamw, whose state does not carry over" in \
        capsys.readouterr().err
    ck = load_checkpoint(switched["checkpoint"])
    assert ck["args"]["optimizer"] == "muon" and ck["step"] == 5
    assert all(int(st["step"]) == 1 for st in ck["optimizer"]["adamw"]["state"].values())


def test_a_float16_run_continues_with_its_loss_scale(env, tmp_path):
    """fp16 (GPUs without bf16) scales the loss by a factor the run has learned (halved at each overflow): a resumed
    run that started again at 65536 skipped steps the run in one go took, and was not exact. The scale is set by hand
    here, as a short CPU run never overflows."""
    part = train.train(args_for(env, tmp_path, "--dataset", "mini", "--dtype", "float16", "--max_steps", "1",
                                "--eval_interval", "0", "--save_interval", "0"))
    ck = load_checkpoint(part["checkpoint"])
    assert ck["scaler"]["scale"] == 65536.0  # GradScaler's start
    ck["scaler"]["scale"] = 1024.0
    torch.save(ck, part["checkpoint"])
    rest = train.train(args_for(env, tmp_path, "--checkpoint", part["checkpoint"], "--max_steps", "2",
                                "--dtype", "float16", fresh=False))
    assert load_checkpoint(rest["checkpoint"])["scaler"]["scale"] == 1024.0


def test_batches_go_to_a_device_other_than_cuda_in_copies_that_wait(monkeypatch):
    """A non_blocking copy to MPS from pageable memory may read the source after it is freed: a Mac trained on other
    numbers than its data, without a word. Only CUDA's copies, from pinned batches, are asynchronous. (No MPS here:
    the copies a CPU run asks for stand for them, chosen by the same device check.)"""
    asked, to = [], torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        asked.append(kwargs.get("non_blocking", False))
        return to(self, *args, **kwargs)

    model = GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=16, vocab_size=512))
    x = torch.randint(0, 512, (2, 16))
    micro = [(x, x.roll(-1, 1), torch.ones(2, 16, dtype=torch.uint8), None)]
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    train.train_step(train.Forward(model), torch.optim.AdamW(model.parameters()),
                     torch.amp.GradScaler("cpu", enabled=False), micro, torch.device("cpu"), torch.float32, 1.0)
    assert len(asked) >= 3 and not any(asked)


def test_a_macs_gpu_generator_is_saved_and_restored(monkeypatch):
    """On MPS dropout draws from the device's own generator, which checkpoints left out: a resumed --dropout run on a
    Mac drew other masks than the run it continued. (No MPS here: its generator is stood in for.)"""
    mps = {"state": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: mps["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda t: mps.update(state=t.clone()))
    saved = train.rng_state()
    mps["state"] = torch.tensor([9, 9, 9], dtype=torch.uint8)  # drawn from since
    train.set_rng_state(saved)
    assert mps["state"].tolist() == [1, 2, 3]
    train.set_rng_state({"cpu": torch.get_rng_state()})  # a checkpoint from before (or from a CUDA run) still loads


def test_a_cuda_runs_generators_are_saved_and_restored(monkeypatch):
    """On a GPU dropout draws from each device's own generator, which torch.get_rng_state leaves out: dropping them
    from checkpoints (or their restore) passed every test, which run on a CPU, while a resumed --dropout run on CUDA
    drew other masks than the run it continued (a hand-made mutation). No GPU here: its generators are stood in for."""
    gpus = {"states": [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [t.clone() for t in gpus["states"]])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: gpus.update(states=[t.clone() for t in states]))
    saved = train.rng_state()
    drawn = [torch.tensor([9, 9, 9], dtype=torch.uint8)] * 2  # drawn from since
    gpus["states"] = drawn
    train.set_rng_state(saved)
    assert [t.tolist() for t in gpus["states"]] == [[1, 2, 3], [4, 5, 6]]
    # continued on a machine of another number of GPUs: the generators are left as they are (setting a device that is
    # not there would be an error), and the CPU's is restored all the same
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpus["states"] = drawn
    cpu = saved["cpu"].clone()
    torch.rand(3)
    train.set_rng_state(saved)
    assert gpus["states"] is drawn and torch.equal(torch.get_rng_state(), cpu)
    # a CPU run on a machine with a GPU never touched CUDA: its state is not asked for, which would start CUDA up
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in train.rng_state()


def test_recomputed_activations_train_the_same_model(env, tmp_path):
    # dropout on: the blocks run again in the backward pass and must draw the same masks
    common = ["--dataset", "mini", "--max_steps", "6", "--dropout", "0.1", "--eval_interval", "0"]
    a = train.train(args_for(env, tmp_path / "a", *common))
    b = train.train(args_for(env, tmp_path / "b", *common, "--recompute_activations"))
    wa, wb = load_checkpoint(a["checkpoint"])["model"], load_checkpoint(b["checkpoint"])["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6, msg=k)


def test_continuing_with_a_new_lr_moves_the_end_of_the_decay_along():
    """A continued run inherits its options, min_lr included; a new --lr alone takes min_lr along at the run's ratio,
    since an inherited min_lr above the new peak would make the cosine climb."""
    config = train.make_config("tiny")
    ckpt = {"args": {"lr": 4e-3, "min_lr": 4e-5, "model": "tiny"}}
    a = train.resolve_args(train.parse_args(["--lr", "1e-4"]), ckpt, True, config)
    assert a.lr == 1e-4 and a.min_lr == pytest.approx(1e-6)
    a = train.resolve_args(train.parse_args(["--lr", "1e-4", "--min_lr", "5e-5"]), ckpt, True, config)
    assert a.min_lr == 5e-5  # asked for: kept
    a = train.resolve_args(train.parse_args([]), ckpt, True, config)
    assert (a.lr, a.min_lr) == (4e-3, 4e-5)  # nothing asked: the run's own
    a = train.resolve_args(train.parse_args(["--lr", "1e-4"]), ckpt, False, config)
    assert a.min_lr == pytest.approx(1e-5)  # a new run (fine-tuning): the default, lr/10
    with pytest.raises(UserError, match=r"^--min_lr 0.01 is above --lr 0.001: the cosine decay would climb"):
        train.resolve_args(train.parse_args(["--lr", "1e-3", "--min_lr", "1e-2"]), None, False, config)


def test_a_continued_run_keeps_compile_and_recomputation_unless_told(env, tmp_path):
    """A run that needed --recompute_activations to fit in memory must not run out of it when continued without the
    flag, nor a compiled one slow down: both are inherited, and --no-... turns them off."""
    config = train.make_config("tiny")
    ckpt = {"args": {"compile": True, "recompute_activations": True}}
    a = train.resolve_args(train.parse_args([]), ckpt, True, config)
    assert a.compile and a.recompute_activations
    a = train.resolve_args(train.parse_args(["--no-compile", "--no-recompute_activations"]), ckpt, True, config)
    assert not a.compile and not a.recompute_activations
    # spelled with underscores, as --no_color and every other option are
    a = train.resolve_args(train.parse_args(["--no_compile", "--no_recompute_activations"]), ckpt, True, config)
    assert not a.compile and not a.recompute_activations
    a = train.resolve_args(train.parse_args([]), ckpt, False, config)  # a new run (fine-tuning): off
    assert not a.compile and not a.recompute_activations
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--recompute_activations"))
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--max_steps", "1", "--data_dir",
                                      env["data"], "--device", "cpu", "--no_color"]))
    assert load_checkpoint(r["checkpoint"])["args"]["recompute_activations"] is True


def test_the_checkpoint_may_come_first_as_in_the_other_scripts(capsys):
    """`train.py models/x.pt --epochs 2`, as gen.py, eval.py, serve.py and export.py take a checkpoint, is --checkpoint:
    it was "unrecognized arguments"."""
    args = train.parse_args(["models/x.pt", "--epochs", "2"])
    assert (args.checkpoint, args.epochs) == ("models/x.pt", 2) and "checkpoint_option" not in vars(args)
    assert train.parse_args(["--checkpoint", "models/x.pt"]).checkpoint == "models/x.pt"
    with pytest.raises(SystemExit):
        train.parse_args(["models/x.pt", "--checkpoint", "models/y.pt"])
    assert "two checkpoints, models/x.pt and --checkpoint models/y.pt: give one" in capsys.readouterr().err


def test_a_continued_run_takes_a_new_weight_decay(env, tmp_path):
    """--weight_decay given when continuing applies: the optimizer state loaded from the checkpoint carried the old one
    in its groups, and the new value was recorded but not used."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--weight_decay", "0.1"))
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--max_steps", "1", "--weight_decay", "0.5",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    state = load_checkpoint(r["checkpoint"])["optimizer"]
    decays = {g["weight_decay"] for part in state.values() for g in part["param_groups"]}
    assert decays == {0.5, 0.0}  # the matrices' new decay; none on gains, biases (and the embedding)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_adamws_betas_are_options_kept_by_a_continued_run(env, tmp_path, capsys, optimizer):
    """nanoGPT's --beta1/--beta2 (its shakespeare_char config sets beta2 0.99) were "unrecognized arguments": AdamW's
    betas, of AdamW's part under Muon, recorded, kept when the run goes on, and replaced by ones given anew (the
    optimizer state loaded from the checkpoint carries the old ones in its groups)."""
    def betas(ck):
        opt = ck["optimizer"]
        return {tuple(g["betas"]) for g in (opt["adamw"] if optimizer == "muon" else opt)["param_groups"]}
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--optimizer", optimizer,
                                 "--beta2", "0.99"))
    assert re.search(r"^train  .* \(warmup \d+\), betas 0.9, 0.99, cpu float32$", capsys.readouterr().out, re.M)
    ck = load_checkpoint(first["checkpoint"])
    assert (ck["args"]["beta1"], ck["args"]["beta2"]) == (0.9, 0.99) and betas(ck) == {(0.9, 0.99)}
    kept = train.train(args_for(env, tmp_path, "--checkpoint", first["checkpoint"], "--max_steps", "1", fresh=False))
    assert betas(load_checkpoint(kept["checkpoint"])) == {(0.9, 0.99)}
    anew = train.train(args_for(env, tmp_path, "--checkpoint", kept["checkpoint"], "--max_steps", "1", "--beta1",
                                "0.8", fresh=False))
    ck = load_checkpoint(anew["checkpoint"])
    assert (ck["args"]["beta1"], ck["args"]["beta2"]) == (0.8, 0.99) and betas(ck) == {(0.8, 0.99)}
    capsys.readouterr()
    default = train.train(args_for(env, tmp_path / "d", "--dataset", "mini", "--max_steps", "1", "--optimizer",
                                   optimizer))
    assert betas(load_checkpoint(default["checkpoint"])) == {(0.9, 0.95)} and ", betas" not in capsys.readouterr().out


def test_a_beta_outside_0_to_1_is_refused(env, tmp_path):
    for k, v in (("beta1", "1"), ("beta2", "-0.1"), ("beta2", "nan")):
        with pytest.raises(UserError, match=rf"^--{k} must be"):
            train.train(args_for(env, tmp_path, "--dataset", "mini", f"--{k}", v))


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_a_model_without_biases_is_trained_saved_and_loaded_so(env, tmp_path, capsys, variant):
    """nanoGPT's --bias False (its train.py's default) was "unrecognized arguments": --no_bias makes a new model
    without them, its checkpoint's config says so (gen.py, eval.py, serve.py and export.py build the model from it),
    the banner says so, and the checkpoint's run can't be given them back."""
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--variant", variant,
                             "--no_bias"))
    assert ", no biases" in capsys.readouterr().out
    ck = load_checkpoint(r["checkpoint"])
    assert ck["config"]["bias"] is False and not [k for k in ck["model"] if k.endswith(".bias")]
    model, _, _ = load_model(r["checkpoint"])
    assert model.config.bias is False and not [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    with pytest.raises(UserError, match=r"fixes the model's shape; --bias \(vs off\) would change it"):
        train.train(args_for(env, tmp_path, "--checkpoint", r["checkpoint"], "--bias", fresh=False))
    train.train(args_for(env, tmp_path / "b", "--dataset", "mini", "--max_steps", "1", "--variant", variant))
    assert "no biases" not in capsys.readouterr().out  # (on, by default, in either variant)


def test_another_global_batch_carries_the_warmup_and_the_history_over(env, tmp_path):
    """Continued with twice the batch, a run is placed at half the steps: its warmup (10 steps of 8 windows, 80
    windows) must become 5 steps of 16, or the lr falls back to the warmup's middle, and the metrics of its steps 4-6
    (before the checkpoint, numbered in steps of 8 windows) must stay although the run now stands at step 3."""
    first = train.train(args_for(env, tmp_path, "--dataset", "story", "--batch_size", "8", "--max_steps", "6",
                                 "--warmup", "10", "--optimizer", "adamw", "--log_interval", "0.1"))
    before = read_metrics(tmp_path / "story_metrics.jsonl")
    assert [r["step"] for r in before if r["train_loss"] is not None] == [1, 2, 3, 4, 5, 6]
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--batch_size", "16", "--max_steps", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    ck = load_checkpoint(r["checkpoint"])
    a = ck["args"]
    assert ck["step"] == 4 and a["warmup"] == 5
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(train.lr_at(3, a["lr"], a["min_lr"], 5, 1))
    after = read_metrics(tmp_path / "story_metrics.jsonl")
    assert after[:len(before)] == before and [r["step"] for r in after[len(before):]] == [4]
    # the loss curve runs on tokens, which both batch sizes count alike, not on steps (6, then 4)
    metrics = train.Metrics(str(tmp_path / "story_metrics.jsonl"), None, write=False)
    metrics.records = after
    xlabel, curve, _ = metrics.curves()
    assert xlabel == "tokens trained" and [x for x, _ in curve] == [r["tokens"] for r in after]
    assert all(a < b for (a, _), (b, _) in zip(curve, curve[1:]))
    # a --warmup given when continuing is taken as it is, in steps of the new size
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--batch_size", "16", "--max_steps", "1",
                                      "--warmup", "8", "--output_checkpoint", str(tmp_path / "w8" / "{dataset}.pt"),
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert load_checkpoint(r["checkpoint"])["args"]["warmup"] == 8



def test_a_run_continued_in_smaller_batches_evaluates_the_same_val_windows(env, tmp_path):
    """Continued with --batch_size 4 --grad_accum 2 for 8 (what the out-of-memory error advises), a run trains the same
    steps; its evaluations must take the same val windows too, or its val loss measures another subset of the split
    than the best file's and --patience's earlier ones (a subset of eval_batches x 4 windows instead of x 8)."""
    common = ["--dataset", "story", "--optimizer", "adamw", "--eval_interval", "0.1", "--eval_batches", "2"]
    whole = train.train(args_for(env, tmp_path / "whole", *common, "--batch_size", "8", "--max_steps", "4"))
    part = train.train(args_for(env, tmp_path / "part", *common, "--batch_size", "8", "--max_steps", "2"))
    val = train.Windows(train.load_meta(env["data"], "story"), "val", 64)
    assert len(val) > 2 * 8  # the evaluations take a subset of the split
    args = args_for(env, tmp_path / "part", "--checkpoint", part["checkpoint"], "--batch_size", "4",
                    "--grad_accum", "2",
                    "--max_steps", "2", fresh=False)
    rest = train.train(args)
    a, b = load_checkpoint(whole["checkpoint"])["model"], load_checkpoint(rest["checkpoint"])["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    want = [r["val_loss"] for r in read_metrics(whole["metrics"]) if r["val_loss"] is not None]
    got = [r["val_loss"] for r in read_metrics(rest["metrics"]) if r["val_loss"] is not None]
    assert len(got) == len(want) == 4
    assert got == pytest.approx(want, abs=1e-4)
    # and on from there, in the batches of the continued run: still the run's windows
    again = train.train(args_for(env, tmp_path / "part", "--checkpoint", rest["checkpoint"], "--max_steps", "1",
                                 fresh=False))
    model, _, _ = load_model(again["checkpoint"])
    loss = train.evaluate(model, val, 8, 2 * 8, torch.device("cpu"), torch.float32)
    assert read_metrics(again["metrics"])[-1]["val_loss"] == pytest.approx(loss, abs=1e-4)
    assert load_checkpoint(again["checkpoint"])["args"]["batch_size"] == 4
    # --eval_batches given when continuing is the user's new choice: eval_batches batches of the run's batch size now
    fewer = train.train(args_for(env, tmp_path / "fewer", "--checkpoint", rest["checkpoint"], "--max_steps", "1",
                                 "--eval_batches", "1", fresh=False))
    model, _, _ = load_model(fewer["checkpoint"])
    loss = train.evaluate(model, val, 4, 1 * 4, torch.device("cpu"), torch.float32)
    assert read_metrics(fewer["metrics"])[-1]["val_loss"] == pytest.approx(loss, abs=1e-4)
    # a checkpoint from before eval_windows was recorded: the windows its own options took (eval_batches x its batch)
    ck = load_checkpoint(whole["checkpoint"])  # (part's file is again's now)
    del ck["eval_windows"]
    torch.save(ck, tmp_path / "old.pt")
    old = train.train(args_for(env, tmp_path / "old", "--checkpoint", tmp_path / "old.pt", "--batch_size", "4",
                               "--grad_accum", "2", "--max_steps", "1", fresh=False))
    model, _, _ = load_model(old["checkpoint"])
    loss = train.evaluate(model, val, 8, 2 * 8, torch.device("cpu"), torch.float32)
    assert read_metrics(old["metrics"])[-1]["val_loss"] == pytest.approx(loss, abs=1e-4)


def test_a_run_continued_in_windows_of_another_length_sets_a_new_best_bar(env, tmp_path, capsys):
    """A val loss over windows of 32 tokens does not compare with the checkpoint's best over windows of 64 (a shorter
    context alone raises it): held against that bar, no evaluation was a best again and --patience stopped the run
    however it learned. Here the bar is made unreachable (0.1): in windows of 64 it holds, in windows of 32 the first
    evaluation starts a new one."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2", "--eval_interval", "0.1",
                                 "--patience", "1"))
    ck = load_checkpoint(first["checkpoint"])
    assert ck["args"]["block_size"] == 64 and ck["best_val_loss"] is not None
    ck["best_val_loss"], ck["evals_since_best"] = 0.1, 0
    torch.save(ck, first["checkpoint"])
    common = ["--checkpoint", first["checkpoint"], "--max_steps", "1", "--overwrite"]
    same = train.train(args_for(env, tmp_path / "same", *common, fresh=False))
    assert same["best_val_loss"] == 0.1 and same["stopped"] == "early stop"  # its windows: the bar holds
    capsys.readouterr()
    r = train.train(args_for(env, tmp_path / "short", *common, "--block_size", "32", fresh=False))
    assert "windows of 64 tokens" in capsys.readouterr().err
    recs = [rec for rec in read_metrics(r["metrics"]) if rec["val_loss"] is not None]
    assert recs[-1]["best"] and r["best_val_loss"] == pytest.approx(recs[-1]["val_loss"], abs=1e-5)
    assert r["stopped"] == "max_steps" and load_checkpoint(r["checkpoint"])["evals_since_best"] == 0
    # the dataset prepared again (another val split, here of another size): its loss does not compare either
    ck["data"]["val_tokens"] += 1
    torch.save(ck, tmp_path / "reprepared.pt")
    common[1] = str(tmp_path / "reprepared.pt")
    capsys.readouterr()
    r = train.train(args_for(env, tmp_path / "reprepared", *common, fresh=False))
    assert "on another val split" in capsys.readouterr().err
    assert r["stopped"] == "max_steps" and r["best_val_loss"] != 0.1
    # nor one over other windows of the split: --eval_batches given anew, one window where the run took more
    ck["data"]["val_tokens"] -= 1
    torch.save(ck, tmp_path / "fewer.pt")
    common[1] = str(tmp_path / "fewer.pt")
    for batches, bar in ((1, None), (10**6, 0.1)):  # (all the windows, however many more asked: the same evaluation)
        r = train.train(args_for(env, tmp_path / f"fewer{batches}", *common, "--eval_batches", batches,
                                 "--batch_size", "1", fresh=False))
        err = capsys.readouterr().err
        said = re.search(r"measured on (\d+) val windows, not 1: no bar to this run's", err)
        assert (said is not None and int(said.group(1)) > 1) == (not bar), err
        assert (r["best_val_loss"] == 0.1) == (bar == 0.1), err
    # a checkpoint with no best yet has no bar to lift: nothing to say, in windows of another length too
    ck["best_val_loss"], ck["data"]["val_tokens"] = None, ck["data"]["val_tokens"] - 1
    torch.save(ck, tmp_path / "no_best.pt")
    common[1] = str(tmp_path / "no_best.pt")
    r = train.train(args_for(env, tmp_path / "no_best", *common, "--block_size", "32", fresh=False))
    assert "no bar" not in capsys.readouterr().err and r["stopped"] == "max_steps"
    # a checkpoint that does not record its val split's size (an older one): its bar holds, as it did
    ck["best_val_loss"] = 0.1
    del ck["data"]["val_tokens"]
    torch.save(ck, tmp_path / "older.pt")
    common[1] = str(tmp_path / "older.pt")
    r = train.train(args_for(env, tmp_path / "older", *common, fresh=False))
    assert r["best_val_loss"] == 0.1 and r["stopped"] == "early stop"
def test_a_finished_budget_is_not_continued_by_a_step(env, tmp_path):
    """Continuing a run whose --time_budget ran out trained one more step each time; it now says what to pass."""
    out = str(tmp_path / "{dataset}.pt")
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", "0.02", "--output_checkpoint", out))
    assert s["stopped"] == "time budget"
    go_on = ["--checkpoint", str(tmp_path / "mini.pt"), "--data_dir", env["data"], "--device", "cpu", "--no_color"]
    with pytest.raises(UserError, match=r"mini.pt has used its 1s --time_budget: pass a larger one to train "
                                        r"on \(it counts that time: --time_budget 2.4s trains 1s more\), --epochs N "
                                        r"without --time_budget to go on by epochs, or --reset_epoch to start a "
                                        r"new budget from its weights$"):
        train.train(train.parse_args(go_on))
    # a smaller budget given: the message names the one the run used, not the one given (it said "its 0.01-minute"),
    # and the budget that trains the minutes given more (meant as "one more minute", it left the sum to work out)
    with pytest.raises(UserError, match=r"mini.pt has used its 1s --time_budget: pass a larger one to train "
                                        r"on \(it counts that time: --time_budget 1.8s trains 0.6s more\)"):
        train.train(train.parse_args(go_on + ["--time_budget", "0.01"]))
    assert train.train(train.parse_args(go_on + ["--time_budget", "0.04"]))["stopped"] == "time budget"
    # a new budgeted run here is told to write elsewhere under its own one file's name: DIR/{dataset}_epoch{epoch}.pt,
    # which it was told, wrote a checkpoint for each of the many epochs it repeats
    with pytest.raises(UserError, match=r"write this one to another folder with --output_checkpoint "
                                        r"DIR/\{dataset\}\.pt, "
                                        r"or pass --overwrite"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", "0.02", "--output_checkpoint", out))
    # a budget interrupted (here stopped by --max_steps) and continued with fewer minutes than it spent: it trained one
    # step past them, each time
    s = train.train(args_for(env, tmp_path / "cut", "--dataset", "mini", "--time_budget", "5", "--max_steps", "2",
                             "--output_checkpoint", str(tmp_path / "cut" / "{dataset}.pt")))
    ck = torch.load(s["checkpoint"], weights_only=True)
    ck["budget_elapsed"] = 180.0
    torch.save(ck, s["checkpoint"])
    go_on = ["--checkpoint", s["checkpoint"], "--data_dir", env["data"], "--device", "cpu", "--no_color"]
    with pytest.raises(UserError, match=r"mini.pt has trained 3m00s of its budget already, which --time_budget 2 "
                                        r"counts: pass a larger one to train on, or --reset_epoch"):
        train.train(train.parse_args(go_on + ["--time_budget", "2"]))
    assert train.train(train.parse_args(go_on + ["--max_steps", "1"]))["run_steps"] == 1  # its own 5 minutes: on


def test_a_spent_budget_given_epochs_goes_on_by_epochs(env, tmp_path, capsys):
    """A run its --time_budget stopped, continued with --epochs N: the spent budget was inherited, --epochs only
    capped it, and the run was refused with a message naming no way to go on by epochs (--reset_epoch kept the budget
    too). It now goes on by epochs from where it stands, the line under the resume line saying where its lr goes on."""
    s = train.train(args_for(env, tmp_path, "--dataset", "story", "--time_budget", "0.02", "--eval_interval", "0",
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget"
    done = load_checkpoint(s["checkpoint"])["step"]
    # --epochs beside a --time_budget no larger than the spent one: the budget is what it continues, so refused, and
    # the message says the --epochs that goes on by epochs is one without it (it said "--epochs N", given already)
    with pytest.raises(UserError, match=r"--epochs N without --time_budget to go on by epochs"):
        train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--epochs", "3", "--time_budget", "0.5s",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    # --reset_epoch with --epochs: a new schedule by epochs from its weights (the spent budget was kept, capped)
    again = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--epochs", "2", "--reset_epoch",
                                          "--max_steps", "1", "--output_checkpoint", str(tmp_path / "again" / "a.pt"),
                                          "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    ck = load_checkpoint(again["checkpoint"])
    assert (ck["args"]["time_budget"], ck["args"]["epochs"], ck["step"]) == (None, 2, 1)
    capsys.readouterr()
    r = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--epochs", "1", "--max_steps", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    ck = load_checkpoint(r["checkpoint"])
    assert (ck["args"]["time_budget"], ck["args"]["epochs"], ck["step"]) == (None, 1, done + 1)
    out = capsys.readouterr().out
    assert "resume at epoch" in out and "the lr's cosine now spans 1 epoch(s) (the checkpoint's run: 1s), so step " \
        f"{done:,} goes on at lr" in out
    # a budget not yet spent, given --epochs: they cap its rest, as a new run's --epochs cap its budget
    cut = train.train(args_for(env, tmp_path / "cut", "--dataset", "story", "--time_budget", "5", "--max_steps", "1",
                               "--eval_interval", "0", "--output_checkpoint", str(tmp_path / "cut" / "{dataset}.pt")))
    r = train.train(train.parse_args(["--checkpoint", cut["checkpoint"], "--epochs", "1", "--max_steps", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert load_checkpoint(r["checkpoint"])["args"]["time_budget"] == 5


def test_a_run_whose_val_loss_rose_past_its_best_says_it_overfits(env, tmp_path, monkeypatch, capsys):
    """A small text over many epochs: val was best at epoch 3.8 (5.69) and rose every epoch after, to 8.06, train to
    0.10, and the summary named the best file with no word of it. It now says so, and what stops such a run."""
    losses = [5.0, 4.0, 3.0] + [3.0 + 0.5 * k for k in range(1, 100)]
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: losses.pop(0))
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "2", "--eval_interval", "10"))
    out = capsys.readouterr().out
    assert re.search(r"val loss rose to [\d.]+ in the \d+ evaluations after the best: the model overfits its train "
                     r"data; --patience 3 ends a run 3 evaluations past its best", out)
    # and when the best was: its step and epoch, as its line in the log gave them (kept in checkpoints)
    best_line = re.search(r"step (\d+) \(epoch ([\d.]+)\): train [^\n]*val 3\.0000[^\n]*\* best", out)
    assert re.search(rf"best val loss 3\.0000 \(ppl 20\.09[^)]*\) at step {best_line[1]} \(epoch "
                     rf"{best_line[2]}\) in ", out)
    step, epoch = torch.load(s["checkpoint"], weights_only=True)["best_at"]
    assert step == int(best_line[1]) and f"{epoch:.2f}" == best_line[2]
    # not of a run at its best, nor of one given --patience (its early stop says why it ended)
    for run, options in (("best", []), ("patient", ["--patience", "50"])):
        losses[:] = [5.0 - 0.01 * k for k in range(100)] if run == "best" else [3.0] + [4.0] * 100
        train.train(args_for(env, tmp_path / run, "--dataset", "mini", "--epochs", "2", "--eval_interval",
                             "10", *options))
        assert "overfits" not in capsys.readouterr().out


def test_a_continued_run_holds_its_evaluations_to_the_best_not_the_last(env, tmp_path, monkeypatch):
    """The checkpoint carries the run's best val loss, the bar the continued run's evaluations must beat: held to its
    last one instead (worse than the best), an evaluation between the two would write a worse model over the best
    file."""
    losses = [5.0, 3.0, 4.0, 3.5]  # the 3rd worse than the 2nd; the continued run's between them
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: losses.pop(0))
    n = len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64))
    every = train.interval_steps(10, math.ceil(n / 16))
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--eval_interval", 10, "--max_steps", 3 * every))
    assert s["stopped"] == "max_steps" and not losses[:-1]
    best = open(s["best_checkpoint"], "rb").read()
    r = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--max_steps", str(every), "--data_dir",
                                      env["data"], "--device", "cpu", "--no-color"]))
    assert not losses and r["best_val_loss"] == 3.0 and r["best_at"][0] == 2 * every
    assert open(s["best_checkpoint"], "rb").read() == best  # the model of val 3.0, not 3.5's


def test_an_early_stop_is_not_continued_by_an_evaluation(env, tmp_path, monkeypatch):
    """--patience stops a run whose val loss stops improving; continuing it trained one more evaluation interval, wrote
    over the checkpoint and stopped again, each time. It now says what to pass."""
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 5.0)  # the first evaluation is the best, then none better
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "5", "--patience", "2",
                             "--eval_interval", "20"))
    assert s["stopped"] == "early stop"
    ckpt = s["checkpoint"]
    before = open(ckpt, "rb").read()
    go_on = ["--checkpoint", ckpt, "--data_dir", env["data"], "--device", "cpu", "--no-color"]
    with pytest.raises(UserError, match=r"stopped early: no better val loss in its last 2 evaluations "
                                        r"\(--patience 2\): "
                                        r"pass a larger --patience, or --patience 0, to train on$"):
        train.train(train.parse_args(go_on))
    assert open(ckpt, "rb").read() == before
    # a checkpoint from before stopped_early: its own --patience and count say it
    legacy = torch.load(ckpt, weights_only=True)
    del legacy["stopped_early"]
    torch.save(legacy, tmp_path / "legacy.pt")
    with pytest.raises(UserError, match=r"legacy\.pt stopped early: no better val loss in its last 2 evaluations"):
        train.train(train.parse_args(["--checkpoint", str(tmp_path / "legacy.pt")] + go_on[2:]))
    assert train.train(train.parse_args(go_on + ["--patience", "3"]))["stopped"] == "early stop"
    # a run that did not stop early (--patience off, stopped by --max_steps) is not said to have: a --patience given
    # now stops it at its next evaluation
    s = train.train(args_for(env, tmp_path / "no", "--dataset", "mini", "--epochs", "5", "--max_steps", "20",
                             "--eval_interval", "20"))
    assert s["stopped"] != "early stop" and torch.load(s["checkpoint"], weights_only=True)["evals_since_best"] >= 2
    s = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--data_dir", env["data"], "--device", "cpu",
                                      "--no-color", "--patience", "2"]))
    assert s["stopped"] == "early stop" and s["run_steps"] <= 10
    # a metrics file with a damaged line (bytes that are not UTF-8) is read past, as a line of bad JSON is
    with open(tmp_path / "mini_metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe garbage\n")
    assert train.train(train.parse_args(go_on + ["--patience", "0", "--max_steps", "1"]))["run_steps"] == 1


def test_a_new_run_does_not_write_over_an_earlier_one(env, tmp_path):
    first = train.train(args_for(env, tmp_path / "m", "--dataset", "mini", "--max_steps", "2"))
    files = {f: (tmp_path / "m" / f).read_bytes() for f in os.listdir(tmp_path / "m")}
    assert {"mini_epoch1.pt", "mini_best.pt", "mini_metrics.jsonl"} <= set(files)
    with pytest.raises(train.UserError, match=r"mini_epoch1\.pt and 1 more checkpoint\(s\) hold an earlier run: "
                                              r"continue it with --checkpoint .*mini_epoch1\.pt, write this one to "
                                              r"another folder with --output_checkpoint DIR/\{dataset\}_epoch\{epoch\}"
                                              r"\.pt, or pass --overwrite to replace them$"):
        train.train(args_for(env, tmp_path / "m", "--dataset", "mini", "--max_steps", "1", "--n_layer", "1"))
    # its newest checkpoint cut short (a copy that stopped): the command named it, and then refused it as unreadable
    shutil.copytree(tmp_path / "m", tmp_path / "cut")
    with open(tmp_path / "cut" / "mini_epoch1.pt", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(train.UserError, match=r"hold an earlier run: continue it with --checkpoint .*mini_best\.pt "
                                              r"\(the newer .*mini_epoch1\.pt is not a readable checkpoint\), write "):
        train.train(args_for(env, tmp_path / "cut", "--dataset", "mini", "--max_steps", "1"))
    # none of them whole (an empty file): "continue it with --checkpoint" named a file that does not load; and with
    # --resume (which found none to continue), --overwrite alone, which is refused with it
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "mini_epoch1.pt").write_bytes(b"")
    for resume, instead in (([], ""), (["--resume"], " instead of --resume")):
        with pytest.raises(train.UserError, match=r"mini_epoch1\.pt holds an earlier run, not a readable checkpoint "
                                                  rf"\(cut short\?\): write this one to another folder with "
                                                  rf"--output_checkpoint DIR/.*, or pass --overwrite{instead} to "
                                                  rf"replace them$"):
            train.train(args_for(env, tmp_path / "empty", "--dataset", "mini", "--max_steps", "1", *resume))
    # --reset_epoch numbers its epochs from 1 again: in the run's own folder it would replace them. The way out is
    # not "continue it with --checkpoint", which the user just did: it sent them in a circle
    with pytest.raises(train.UserError, match=r"hold an earlier run, which --reset_epoch \(epochs numbered from 1 "
                                              r"again\) would write over: write this one to another folder with "
                                              r"--output_checkpoint DIR/.*, or pass --overwrite to replace them$") as e:
        train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--reset_epoch", "--max_steps", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no-color"]))
    assert "continue it" not in str(e.value)
    assert {f: (tmp_path / "m" / f).read_bytes() for f in os.listdir(tmp_path / "m")} == files  # untouched
    # the commands it suggests paste into a shell as they are, a folder with a space in its name included
    spaced = tmp_path / "my runs"
    s = train.train(args_for(env, spaced, "--dataset", "mini", "--max_steps", "1"))
    with pytest.raises(train.UserError, match=re.escape(f"continue it with --checkpoint "
                                                        f"{shlex.quote(s['checkpoint'])}")):
        train.train(args_for(env, spaced, "--dataset", "mini", "--max_steps", "1"))
    # a run that failed before its first save left metrics only: no run to keep, the next one goes ahead
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "mini_metrics.jsonl").write_text("")
    train.train(args_for(env, tmp_path / "failed", "--dataset", "mini", "--max_steps", "1"))
    # the run's own checkpoint continues in place; a copy of it continues next to the copy
    ck = first["checkpoint"]
    def go_on(checkpoint):  # no --output_checkpoint: the continued run picks its files
        return train.train(train.parse_args(["--checkpoint", checkpoint, "--max_steps", "1", "--data_dir", env["data"],
                                             "--device", "cpu", "--dtype", "float32", "--no-color"]))
    cont = go_on(ck)
    assert cont["checkpoint"] == ck and cont["steps"] == 3
    (tmp_path / "copy").mkdir()
    copy = str(tmp_path / "copy" / "saved.pt")
    with open(ck, "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    before = (tmp_path / "m" / "mini_epoch1.pt").read_bytes()
    r = go_on(copy)
    assert r["checkpoint"] == str(tmp_path / "copy" / "mini_epoch1.pt") and r["steps"] == 4
    assert (tmp_path / "m" / "mini_epoch1.pt").read_bytes() == before
    # a --time_budget run's file shares the best file and metrics: it is an earlier run too
    shutil.copy(tmp_path / "m" / "mini_best.pt", tmp_path / "m" / "mini.pt")
    with pytest.raises(train.UserError, match=r"and 2 more checkpoint\(s\) hold an earlier run"):
        train.train(args_for(env, tmp_path / "m", "--dataset", "mini", "--max_steps", "1", "--n_layer", "1"))
    # asked for: replaced, the old best file and the other naming's too, so none passes for the new run's
    r = train.train(args_for(env, tmp_path / "m", "--dataset", "mini", "--max_steps", "1", "--n_layer", "1",
                             "--eval_interval", "0", "--overwrite"))  # no eval: no best file of its own
    assert load_checkpoint(r["checkpoint"])["config"]["n_layer"] == 1 and r["best_checkpoint"] is None
    assert sorted(os.listdir(tmp_path / "m")) == ["mini_epoch1.pt", "mini_metrics.jsonl"]


def test_continuing_another_runs_checkpoint_next_to_a_run_is_refused(env, tmp_path):
    """A checkpoint of run B copied into run A's folder and continued there wrote over A's epoch, best file and
    metrics, no --overwrite asked: A held no later point than B's copy, so nothing was refused. Runs carry an id."""
    a = train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--max_steps", "2"))
    b = train.train(args_for(env, tmp_path / "b", "--dataset", "mini", "--max_steps", "4", "--seed", "7"))
    assert load_checkpoint(a["checkpoint"])["run"] != load_checkpoint(b["checkpoint"])["run"]
    copy = tmp_path / "a" / "from_b.pt"
    shutil.copy(b["checkpoint"], copy)
    files = {f: (tmp_path / "a" / f).read_bytes() for f in os.listdir(tmp_path / "a")}
    go_on = ["--checkpoint", str(copy), "--max_steps", "1", "--data_dir", env["data"], "--device", "cpu", "--no-color"]
    with pytest.raises(UserError, match=r"mini_(epoch1|best)\.pt holds another run than .*from_b\.pt, which continuing "
                                        r"here would write over: write this one to another folder"):
        train.train(train.parse_args(go_on))
    assert {f: (tmp_path / "a" / f).read_bytes() for f in os.listdir(tmp_path / "a")} == files
    # asked for: A's files go, and A's metrics with them; B's continuation keeps B's history
    r = train.train(train.parse_args(go_on + ["--overwrite", "--eval_interval", "0"]))
    assert r["best_checkpoint"] is None and not (tmp_path / "a" / "mini_best.pt").exists()
    run = load_checkpoint(r["checkpoint"])["run"]
    assert run == load_checkpoint(b["checkpoint"])["run"]
    assert {rec["run"] for rec in read_metrics(tmp_path / "a" / "mini_metrics.jsonl")} == {run}


def test_continuing_into_another_datasets_file_of_the_same_name_is_refused(env, tmp_path):
    """An --output_checkpoint without {dataset} names the same files for every dataset: continuing a mini run with
    run{epoch}.pt wrote over the chat run's run1.pt, no --overwrite asked (files of another dataset were skipped)."""
    pattern = str(tmp_path / "shared" / "run{epoch}.pt")
    train.train(args_for(env, tmp_path, "--dataset", "chat", "--max_steps", "1", "--output_checkpoint", pattern))
    mini = train.train(args_for(env, tmp_path / "mini", "--dataset", "mini", "--max_steps", "1"))
    theirs = tmp_path / "shared" / "run1.pt"
    before = theirs.read_bytes()
    go_on = ["--checkpoint", mini["checkpoint"], "--output_checkpoint", pattern, "--max_steps", "1",
             "--data_dir", env["data"], "--device", "cpu", "--no-color"]
    with pytest.raises(UserError, match=r"run1\.pt holds another run \(of dataset chat\) than .*mini_epoch1\.pt, which "
                                        r"continuing here would write over: write this one to another folder"):
        train.train(train.parse_args(go_on))
    assert theirs.read_bytes() == before
    r = train.train(train.parse_args(go_on + ["--overwrite"]))  # asked for: replaced
    assert r["checkpoint"] == str(theirs) and load_checkpoint(str(theirs))["dataset"] == "mini"


def test_resume_starts_a_run_and_the_same_command_goes_on_from_its_newest_checkpoint(env, tmp_path, capsys):
    """A service's restart (systemd, a requeued job) runs the same command again: its first start's files refused it
    as an earlier run's. With --resume it goes on from the newest, exactly, and once the run is done says so, exit 0."""
    argv = ["--dataset", "mini", "--max_steps", "2", "--eval_interval", "0", "--resume"]
    first = train.train(args_for(env, tmp_path / "r", *argv))  # nothing there yet: a new run
    assert first["steps"] == 2 and "--resume" not in capsys.readouterr().out
    second = train.train(args_for(env, tmp_path / "r", *argv))
    newest = os.path.join(tmp_path, "r", "mini_epoch1.pt")
    assert f"--resume: the run's newest checkpoint is {newest} (step 2): continuing from it, as --checkpoint " \
           f"{newest} would" in capsys.readouterr().out
    assert second["steps"] == 4 and second["run_steps"] == 2
    one_go = train.train(args_for(env, tmp_path / "one", "--dataset", "mini", "--max_steps", "4", "--eval_interval",
                                  "0"))
    want = load_checkpoint(one_go["checkpoint"])["model"]
    assert all(torch.equal(t, want[k]) for k, t in load_checkpoint(newest)["model"].items())
    # the run to its epoch's end, then the same command: done, not an error
    train.train(args_for(env, tmp_path / "r", *argv[:2], "--eval_interval", "0", "--resume"))
    files = {f: (tmp_path / "r" / f).read_bytes() for f in os.listdir(tmp_path / "r")}
    capsys.readouterr()
    done = train.main(["--data_dir", env["data"], "--output_checkpoint", os.path.join(tmp_path, "r", "{dataset}_epoch"
                       "{epoch}.pt"), "--device", "cpu", "--no-color", *argv[:2], "--resume"])  # (an error: SystemExit)
    assert done["stopped"] == "already done" and done["run_steps"] == 0
    assert f"--resume: {newest} has trained the run's 1 epoch(s): nothing left to train (a larger --epochs trains " \
           f"on)\n" in capsys.readouterr().out
    assert {f: (tmp_path / "r" / f).read_bytes() for f in os.listdir(tmp_path / "r")} == files


def test_resume_of_a_spent_budget_says_so_and_trains_nothing(env, tmp_path, capsys):
    """Its ways on are the options to give; --reset_epoch, which --resume refuses, with the checkpoint it restarts."""
    argv = ["--dataset", "mini", "--time_budget", "1s", "--eval_interval", "0", "--resume"]
    train.train(args_for(env, tmp_path, *argv))
    capsys.readouterr()
    done = train.train(args_for(env, tmp_path, *argv))
    assert done["stopped"] == "already done" and done["run_steps"] == 0
    said = r"--resume: nothing left to train: (.*mini_epoch\d+\.pt) has used its 1s --time_budget: pass a larger one" \
           r".*, or --reset_epoch \(with --checkpoint (.*), not --resume\) to start a new budget from its weights\n"
    found = re.search(said, capsys.readouterr().out)
    assert found and found[1] == found[2]


def test_resume_of_a_fine_tune_goes_on_from_the_fine_tunes_checkpoint_not_its_base(env, tmp_path, capsys):
    base = train.train(args_for(env, tmp_path / "base", "--dataset", "mini", "--max_steps", "2", "--eval_interval",
                                "0"))
    argv = ["--dataset", "story", "--checkpoint", base["checkpoint"], "--max_steps", "2", "--eval_interval", "0",
            "--resume"]
    assert train.train(args_for(env, tmp_path / "ft", *argv, fresh=False))["steps"] == 2
    again = train.train(args_for(env, tmp_path / "ft", *argv, fresh=False))
    assert again["steps"] == 4 and "story_epoch1.pt (step 2): continuing from it" in capsys.readouterr().out


def test_resume_of_a_checkpoint_given_never_goes_back_to_an_older_file_of_its_run(env, tmp_path, capsys):
    # a later point kept under a name of the user's, beside the run's older epoch file: it goes on from the one given
    argv = ["--dataset", "mini", "--max_steps", "2", "--eval_interval", "0"]
    train.train(args_for(env, tmp_path, *argv))
    later = train.train(args_for(env, tmp_path / "on", *argv, "--checkpoint", tmp_path / "mini_epoch1.pt", fresh=False))
    kept = tmp_path / "mini_kept.pt"
    shutil.copy(later["checkpoint"], kept)
    capsys.readouterr()
    r = train.train(args_for(env, tmp_path, "--checkpoint", kept, "--max_steps", "1", "--resume", fresh=False))
    assert r["steps"] == 5 and "--resume" not in capsys.readouterr().out


def test_resume_refuses_a_folder_whose_newest_run_has_another_seed_or_model(env, tmp_path):
    """--resume runs the same command again: a newest checkpoint of another --seed (a sweep that forgot the seed in
    its --output_checkpoint) was continued as the command's own, its epoch started over and its files written over;
    one of another model shape was refused as if the user had asked to continue it ("leave the model options out")."""
    argv = ["--dataset", "mini", "--max_steps", "2", "--eval_interval", "0", "--resume"]
    train.train(args_for(env, tmp_path, *argv, "--seed", "1"))
    files = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    for other, said in ((["--seed", "2"], r"--seed 2 \(vs 1\)"), (["--n_layer", "3"], r"--n_layer 3 \(vs 2\)")):
        with pytest.raises(UserError, match=rf"--resume: the newest checkpoint here, .*mini_epoch1\.pt, is another "
                                            rf"run's \({said}\): write this one to another folder with "
                                            rf"--output_checkpoint DIR/.*, or pass --overwrite instead of --resume"):
            train.train(args_for(env, tmp_path, *argv, "--seed", "1", *other))
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == files
    assert train.train(args_for(env, tmp_path, *argv, "--seed", "1"))["steps"] == 4  # its own command goes on


def test_resume_passes_over_a_damaged_newest_checkpoint_and_says_so(env, tmp_path, capsys):
    """A newest file cut short (a copy, a disk) was passed over in silence: the line named an older one as the run's
    newest. One damaged inside (its checksums, which torch.load does not check) was taken, and every restart failed on
    it, its "use another checkpoint" no way out for the same command; passed over, it was refused as a later point."""
    argv = ["--dataset", "mini", "--epochs", "3", "--eval_interval", "0", "--resume"]
    spe = math.ceil(len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) / 16)
    train.train(args_for(env, tmp_path, *argv, "--max_steps", spe + 1))  # mini_epoch1.pt, then mini_epoch2.pt a step on
    newer, older = tmp_path / "mini_epoch2.pt", tmp_path / "mini_epoch1.pt"
    whole = newer.read_bytes()
    with zipfile.ZipFile(newer) as z:  # a byte of the largest tensor's, inside the file
        part = max(z.infolist(), key=lambda i: i.file_size)
    inside = bytearray(whole)
    inside[part.header_offset + 200] ^= 0xFF
    for damaged in (whole[:len(whole) // 2], bytes(inside)):
        newer.write_bytes(damaged)
        os.utime(older, (time.time() - 60,) * 2)
        capsys.readouterr()
        done = train.train(args_for(env, tmp_path, *argv, "--max_steps", "1", fresh=False))
        assert done["steps"] == spe + 1 and done["run_steps"] == 1
        assert f"--resume: the run's newest checkpoint is {older} (step {spe}; the newer {newer} is not a readable " \
               f"checkpoint): continuing from it" in capsys.readouterr().out
        assert load_checkpoint(str(newer))["step"] == spe + 1  # written again, whole


def test_resume_of_a_newest_checkpoint_too_large_for_the_memory_left_is_refused_not_passed_over(env, tmp_path,
                                                                                                  monkeypatch):
    """--resume maps each file of the run, and cap_memory's limit counts a mapping whole: a newest file too large for
    the memory left read as damaged, and the run went on from the one before it, its later steps lost and written
    over; continued from an earlier point, the later file went unchecked and was written over."""
    argv = ["--dataset", "mini", "--epochs", "3", "--eval_interval", "0", "--resume"]
    spe = math.ceil(len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) / 16)
    train.train(args_for(env, tmp_path, *argv, "--max_steps", spe + 1))  # mini_epoch1.pt, then mini_epoch2.pt a step on
    newer, load = tmp_path / "mini_epoch2.pt", torch.load

    def mapped(path, *args, **kwargs):
        if kwargs.get("mmap") and os.path.samefile(path, newer):
            raise RuntimeError(f"unable to mmap 8 bytes from file <{path}>: Cannot allocate memory (12)")
        return load(path, *args, **kwargs)
    monkeypatch.setattr(torch, "load", mapped)
    with pytest.raises(UserError, match=f"^out of memory loading {re.escape(str(newer))} "):
        train.train(args_for(env, tmp_path, *argv, "--max_steps", "1", fresh=False))
    older = str(tmp_path / "mini_epoch1.pt")  # continued from the earlier point: the later one, unread, was no refusal
    with pytest.raises(UserError, match=f"^out of memory loading {re.escape(str(newer))} "):
        train.train(args_for(env, tmp_path, *argv[:-1], "--checkpoint", older, "--max_steps", "1", fresh=False))
    assert load_checkpoint(str(newer))["step"] == spe + 1


def test_resume_of_a_fine_tune_goes_on_once_its_base_is_gone(env, tmp_path, capsys):
    """The same command's restart loaded --checkpoint BASE before it looked for the fine-tune's own files: once the
    base was moved (a scratch folder purged), every restart failed on "not found", though its own files sufficed."""
    base = train.train(args_for(env, tmp_path / "base", "--dataset", "mini", "--max_steps", "2", "--eval_interval",
                                "0"))["checkpoint"]
    argv = ["--dataset", "story", "--checkpoint", base, "--max_steps", "2", "--eval_interval", "0", "--resume"]
    train.train(args_for(env, tmp_path / "ft", *argv, fresh=False))
    shutil.rmtree(tmp_path / "base")
    capsys.readouterr()
    assert train.train(args_for(env, tmp_path / "ft", *argv, fresh=False))["steps"] == 4
    assert "story_epoch1.pt (step 2): continuing from it" in capsys.readouterr().out
    with pytest.raises(UserError, match=f"checkpoint {re.escape(base)} not found"):  # none of its own yet: as ever
        train.train(args_for(env, tmp_path / "other", *argv, fresh=False))
    assert not os.path.exists(tmp_path / "other")


def test_resume_takes_no_other_datasets_file_and_not_with_a_fresh_start(env, tmp_path, capsys):
    """--resume continues the run's own files: one of another dataset under a shared name is refused as ever, and
    --overwrite or --reset_epoch, which start anew over them, contradict it."""
    pattern = str(tmp_path / "run{epoch}.pt")
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--output_checkpoint", pattern))
    capsys.readouterr()
    with pytest.raises(UserError, match="holds an earlier run"):
        train.train(args_for(env, tmp_path, "--dataset", "story", "--max_steps", "1", "--output_checkpoint", pattern,
                             "--resume"))
    assert "--resume" not in capsys.readouterr().out  # (not "continuing from it", then the refusal)
    for other in ("--overwrite", "--reset_epoch"):
        with pytest.raises(UserError, match=f"--resume goes on from the run's newest checkpoint, which {other} "):
            train.train(args_for(env, tmp_path, "--dataset", "mini", "--resume", other))


def test_resume_passes_over_a_file_of_the_run_edited_to_other_entries(env, tmp_path, capsys):
    """A file of the run whose entries are not of the kinds train.py writes (edited, saved again) is none to continue
    from: --resume read its dataset, args or data entry into a traceback. It says a line, as without --resume; so of
    one without training state (no step: weights only), which --resume had continued into the refusal to 'continue it
    with --checkpoint' that same file."""
    argv = ["--dataset", "mini", "--max_steps", "1", "--eval_interval", "0", "--resume"]
    train.train(args_for(env, tmp_path, *argv))
    ckpt = load_checkpoint(str(tmp_path / "mini_epoch1.pt"))
    weights_only = {k: v for k, v in ckpt.items() if k not in ("step", "optimizer")}
    for odd in (dict(ckpt, dataset=5), dict(ckpt, args=[1]), dict(ckpt, data="mini"), weights_only):
        torch.save(dict(odd, tokens=ckpt["tokens"] + 1), tmp_path / "mini_epoch2.pt")
        capsys.readouterr()
        with pytest.raises(UserError, match="mini_epoch2.pt holds "):
            train.train(args_for(env, tmp_path, *argv))
        assert "mini_epoch2.pt (step" not in capsys.readouterr().out  # (not continued from)


def test_reset_epoch_over_the_runs_own_best_file_drops_its_bar(env, tmp_path):
    """--reset_epoch --overwrite removed the run's best file but kept its val loss as the bar a new best file must
    beat: no best file was written until the new run beat a model that no longer existed."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "2", "--eval_interval", "50",
                                 "--save_interval", "0"))
    assert first["checkpoint"].endswith("mini_epoch2.pt")
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--reset_epoch", "--overwrite",
                                      "--max_steps", "2", "--lr", "1", "--warmup", "1", "--eval_interval", "0.5",
                                      "--save_interval", "0.5", "--data_dir", env["data"], "--device", "cpu",
                                      "--no-color"]))
    assert r["best_checkpoint"] and os.path.exists(r["best_checkpoint"])
    assert load_checkpoint(r["best_checkpoint"])["run"] == load_checkpoint(r["checkpoint"])["run"]
    # the new epoch 1 continues next to the epoch 2 it started from, an earlier point of the same run (refused as
    # another run's when --reset_epoch drew a run id of its own)
    assert r["checkpoint"].endswith("mini_epoch1.pt") and os.path.exists(first["checkpoint"])
    train.train(train.parse_args(["--checkpoint", r["checkpoint"], "--max_steps", "3", "--data_dir", env["data"],
                                  "--device", "cpu", "--no-color"]))


def on_step(monkeypatch, n, action):
    """The next run's n-th optimizer step calls action() first: a sleep (a cold torch.compile's slow first step) or
    an error. Wraps the real train_step even when patched before."""
    real, calls = getattr(train.train_step, "unpatched", train.train_step), []

    def step(*a, **k):
        calls.append(1)
        if len(calls) == n:
            action()
        return real(*a, **k)
    step.unpatched = real
    monkeypatch.setattr(train, "train_step", step)


class StepClock:
    """train.py's clock (the time.time it reads) made of the run's own events: each optimizer step takes `step`
    seconds, each evaluation `evaluation`, anything else none unless a test says so (advance). A --time_budget run's
    logs, evaluations, learning rates and end then fall at the same steps on any machine: on the real clock a busy CI
    machine (steps ten times slower, a 1-s disk stall at a save) moved them, and the counts and rates checked with
    them. Steps of 1/8 s keep the sums exact. Made after on_step, whose wrapper it then times."""

    def __init__(self, monkeypatch, step=1 / 8, evaluation=0.0):
        self.now = 1e6
        # time.time alone: were train.py to read another clock, the run would fail here rather than pass on real time
        monkeypatch.setattr(train, "time", types.SimpleNamespace(time=lambda: self.now))
        real_step, real_evaluate = train.train_step, train.evaluate

        def timed_step(*a, **k):
            out = real_step(*a, **k)
            self.now += step
            return out

        def timed_evaluate(*a, **k):
            self.now += evaluation
            return real_evaluate(*a, **k)
        timed_step.unpatched = getattr(real_step, "unpatched", real_step)
        monkeypatch.setattr(train, "train_step", timed_step)
        monkeypatch.setattr(train, "evaluate", timed_evaluate)

    def advance(self, seconds):
        self.now += seconds


# 1 layer x 32 for args_for's 2 x 64: a step a quarter of the time. For runs on StepClock's time, where what is checked
# (logs, evaluations, bars and ends on the clock) does not depend on the model's size (saves timed by slow_disk do)
SMALL = ["--n_layer", "1", "--n_embd", "32"]


def boom(error=UserError):
    raise error("boom")


def test_overwrite_replaces_the_earlier_run_at_the_new_ones_first_file(env, tmp_path, monkeypatch):
    """--overwrite: nothing of the earlier run goes (metrics included) before the new run has a file of its own, and
    then all of it, so the folder never mixes two runs; a file merely named like the run's is the user's and stays."""
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2"))
    shutil.copy(tmp_path / "mini_epoch1.pt", tmp_path / "mini_epoch1_keep.pt")
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    new_run = ["--dataset", "mini", "--max_steps", "3", "--seed", "7", "--overwrite"]
    on_step(monkeypatch, 1, boom)  # fails before any save
    with pytest.raises(UserError, match="boom"):
        train.train(args_for(env, tmp_path, *new_run))
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
    # its first file is a best one (an evaluation after step 1), then it fails, on nan weights (another error would
    # save step 1 on the way out: see test_an_error_mid_run_saves_the_steps_before_it)
    on_step(monkeypatch, 2, lambda: boom(train.Diverged))
    with pytest.raises(UserError, match="boom"):
        train.train(args_for(env, tmp_path, *new_run, "--eval_interval", "10", "--save_interval", "0"))
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pt")) == ["mini_best.pt", "mini_epoch1_keep.pt"]
    assert load_checkpoint(str(tmp_path / "mini_best.pt"))["args"]["seed"] == 7
    assert (tmp_path / "mini_epoch1_keep.pt").read_bytes() == before["mini_epoch1_keep.pt"]
    assert [r["step"] for r in read_metrics(str(tmp_path / "mini_metrics.jsonl"))] == [1]  # the new run's


def test_overwrite_keeps_the_earlier_run_when_the_new_ones_first_save_fails(env, tmp_path, monkeypatch):
    """The earlier run's files go once the new run's first file is written, not as its writing begins: a first save
    that fails (a full disk; Ctrl-C mid-write) leaves the earlier run whole, not neither run (hand-made mutation:
    removing them before the save passed every test)."""
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2"))
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}

    def disk_full(obj, f):  # what torch's zip writer raises when the disk fills up
        with open(f, "wb") as out:
            out.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 982272 vs 982160")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="could not write .*mini_.*free some space"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "3", "--seed", "7", "--overwrite"))
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before


def test_overwrite_keeps_the_checkpoint_the_run_starts_from(env, tmp_path):
    """--reset_epoch --overwrite replaces the run's files (its epochs are numbered from 1 again), but not the one given
    with --checkpoint: it is the user's source, not a leftover."""
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "2"))
    source = tmp_path / "mini_epoch2.pt"
    before = source.read_bytes()
    r = train.train(args_for(env, tmp_path, "--checkpoint", source, "--reset_epoch", "--overwrite", "--max_steps", "1",
                             "--eval_interval", "0", fresh=False))
    assert r["checkpoint"] == str(tmp_path / "mini_epoch1.pt") and r["best_checkpoint"] is None
    assert source.read_bytes() == before
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pt")) == ["mini_epoch1.pt", "mini_epoch2.pt"]


def test_continuing_from_an_earlier_point_does_not_replace_later_files(env, tmp_path):
    """The run's best file or a copy of an older checkpoint, continued in the run's folder, would write the run's own
    names: refused while they hold later steps, as a new run is."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2"))
    ck = first["checkpoint"]
    early = str(tmp_path / "early.pt")
    with open(ck, "rb") as f, open(early, "wb") as g:
        g.write(f.read())

    def go_on(checkpoint, *extra):
        return train.train(train.parse_args(["--checkpoint", checkpoint, "--max_steps", "1", "--data_dir", env["data"],
                                             "--device", "cpu", "--no-color", *extra]))
    assert go_on(ck)["steps"] == 3  # the newest point continues in place
    files = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    with pytest.raises(train.UserError, match=r"mini_epoch1\.pt holds a later point of this run \(step 3, .*early\.pt "
                                              r"is at step 2\), which continuing here would replace: continue from it "
                                              r"with --checkpoint .*mini_epoch1\.pt, write this one to another folder"):
        go_on(early)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == files  # untouched
    r = go_on(early, "--overwrite", "--max_steps", "3")  # asked for: the branch replaces them
    assert r["checkpoint"] == ck and r["steps"] == 5 and load_checkpoint(ck)["step"] == 5
    # several later points: the newest is named (the first found was, and continuing from it was refused in turn)
    out = tmp_path / "epochs"
    train.train(args_for(env, out, "--dataset", "mini", "--epochs", "2"))
    more = ["--data_dir", env["data"], "--device", "cpu", "--no-color", "--epochs", "3"]
    train.train(train.parse_args(["--checkpoint", str(out / "mini_epoch2.pt"), *more]))
    with pytest.raises(train.UserError, match=r"mini_epoch3\.pt holds a later point of this run .* continue from it "
                                              r"with --checkpoint .*mini_epoch3\.pt, "):
        train.train(train.parse_args(["--checkpoint", str(out / "mini_epoch1.pt"), *more]))


def test_a_later_point_beside_a_checkpoint_without_a_run_id_is_not_said_to_be_this_runs(env, tmp_path):
    """A checkpoint from before runs had ids (an upgraded user's) continued next to a later file cannot tell whether
    that file is of its run: a fresh run's best file was called "a later point of this run", to be continued instead."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2"))
    old = torch.load(first["checkpoint"], weights_only=True)
    del old["run"]  # as train.py wrote them before run ids
    early = str(tmp_path / "early.pt")
    torch.save(old, early)
    go_on = ["--max_steps", "1", "--data_dir", env["data"], "--device", "cpu", "--no-color"]
    train.train(train.parse_args(["--checkpoint", first["checkpoint"], *go_on]))  # mini_epoch1.pt: step 3
    with pytest.raises(train.UserError, match=r"mini_epoch1\.pt holds a later point \(step 3, .*early\.pt is at step "
                                              r"2\) of this run or another \(checkpoints from before runs had ids do "
                                              r"not say\), which continuing here would replace: continue from it with "
                                              r"--checkpoint .*mini_epoch1\.pt if it is this run, write this one"):
        train.train(train.parse_args(["--checkpoint", early, *go_on]))


def test_a_new_seed_mid_epoch_starts_the_epoch_over(env, tmp_path, capsys):
    """The epoch's window order comes from the seed: with another one, going on from the position would see some
    windows twice and skip others, so the epoch starts over (as when the data or --block_size change). The lr
    schedule goes back with it, in the first epoch into the warmup again: the warning said only "epoch starts over"."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2"))
    assert load_checkpoint(first["checkpoint"])["epoch_windows"] == 32
    capsys.readouterr()
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--seed", "7", "--max_steps", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert re.search(r"warning: --seed \(1337 -> 7\) changed since the checkpoint: its epoch starts over, and the lr "
                     r"schedule with it: from step 2 back to step 0, warming up again over \d+ steps\n",
                     capsys.readouterr().err)
    ck = load_checkpoint(r["checkpoint"])
    assert (ck["epoch"], ck["epoch_windows"], ck["args"]["seed"]) == (0, 16, 7)
    # --reset_epoch starts every epoch over, and the schedule, as asked: nothing to warn of
    train.train(train.parse_args(["--checkpoint", r["checkpoint"], "--seed", "9", "--reset_epoch", "--max_steps",
                                  "1", "--output_checkpoint", str(tmp_path / "reset" / "{dataset}.pt"),
                                  "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert "changed since the checkpoint" not in capsys.readouterr().err
    # past the warmup (a later epoch): back to the epoch's first step, said without a warmup that is not there
    later = train.train(args_for(env, tmp_path / "later", "--dataset", "mini", "--warmup", "2", "--epochs", "3",
                                 "--max_steps", "12"))
    ck = load_checkpoint(later["checkpoint"])
    assert ck["epoch"] >= 1 and ck["epoch_windows"] > 0
    capsys.readouterr()
    train.train(train.parse_args(["--checkpoint", later["checkpoint"], "--seed", "7", "--max_steps", "1",
                                  "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    back = ck["step"] - ck["epoch_step"]
    assert f"changed since the checkpoint: its epoch starts over, and the lr schedule with it: from step 12 back to " \
           f"step {back}\n" in capsys.readouterr().err


def test_settings_that_defeat_the_run_are_warned_of(env, tmp_path, capsys):
    # a warmup longer than the run keeps the lr below its peak; float16 on a CPU is emulated (3.6 s against 226 ms
    # a tiny step in fp32 on the test machine)
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--warmup", "100000",
                         "--dtype", "float16"))
    err = capsys.readouterr().err
    assert re.search(r"--warmup 100000 is longer than the run's \d+ steps: the learning rate never reaches --lr", err)
    assert "--dtype float16 is emulated on this CPU" in err
    # intervals are % of an epoch; nanoGPT's are steps (--eval_interval 250, typed by habit): past an epoch's end, the
    # points come at epoch ends alone (mini's epoch: 9 steps). Not said of one within an epoch, nor on a budget
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--eval_interval", "250",
                         "--save_interval", "100", "--overwrite"))
    err = capsys.readouterr().err
    assert "warning: --eval_interval 250 is 250% of an epoch, 2.5 epochs of 9 steps: evaluations come at epoch " \
           "ends alone\n" in err and "--save_interval" not in err, err
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", "0.02", "--eval_interval", "250",
                         "--overwrite"))
    assert "--eval_interval" not in capsys.readouterr().err
    # where an epoch holds that many steps, the % that does them is named
    train.warn_intervals_past_an_epoch(types.SimpleNamespace(eval_interval=10, log_interval=400, save_interval=0), 1000)
    assert capsys.readouterr().err == "warning: --log_interval 400 is 400% of an epoch, 4 epochs of 1,000 steps: log " \
                                      "lines come at epoch ends alone; every 400 steps is --log_interval 40\n"


def test_a_run_of_a_few_steps_is_warned_of_with_the_epochs_that_make_enough(env, tmp_path, capsys):
    """The train.py command prepare.py prints for one's own small chat set (an epoch of a dozen steps) trained a model
    that answered in garbage, its run ending with "try it" and no word that it was too short: said, with the
    --epochs that train about FEW_STEPS. Not said of a run of more, nor of one a --time_budget or --max_steps sets."""
    # (the model SMALL: what is said is of the steps, which its size does not change; the 12 epochs train 108 of them)
    train.train(args_for(env, tmp_path, "--dataset", "mini", *SMALL))
    assert "warning: 1 epoch(s) of mini are 9 step(s), too few to learn much from: --epochs 12 trains 108, or " \
           "--time_budget MINUTES trains for that time\n" in capsys.readouterr().err
    for more in (["--epochs", "12"], ["--max_steps", "2"], ["--time_budget", "0.02"]):
        r = train.train(args_for(env, tmp_path, "--dataset", "mini", *SMALL, *more, "--eval_interval", "0",
                                 "--overwrite"))
        assert "too few" not in capsys.readouterr().err
        if more[0] == "--epochs":  # a run restarted from its weights (--reset_epoch) counts its steps from the first
            train.train(args_for(env, tmp_path, "--checkpoint", r["checkpoint"], "--reset_epoch", "--epochs", "1",
                                 "--output_checkpoint", tmp_path / "reset" / "{dataset}.pt", fresh=False))
            err = capsys.readouterr().err
            assert "warning: 1 epoch(s) of mini are 9 step(s), too few to learn much from" in err
            # its schedule is new: the old one's warmup in steps (11, of 108) is not kept, as "--warmup 11", never given
            assert "--warmup" not in err, err


def test_a_reset_epoch_run_in_another_batch_takes_its_own_default_warmup(env, tmp_path):
    """--reset_epoch's schedule is the new run's: its default warmup, in steps of its batch, is not scaled as an
    inherited warmup is to another batch (batches of 4 for the checkpoint's 16: a warmup 4 times the default)."""
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", *SMALL, "--epochs", "12", "--eval_interval", "0"))
    r = train.train(args_for(env, tmp_path, "--checkpoint", r["checkpoint"], "--reset_epoch", "--epochs", "1",
                             "--batch_size", "4", "--max_steps", "1", "--output_checkpoint",
                             tmp_path / "reset" / "{dataset}.pt", fresh=False))
    ck = load_checkpoint(r["checkpoint"])
    steps = 36  # 1 epoch of mini's 144 windows in batches of 4
    assert (ck["args"]["batch_size"], ck["args"]["warmup"]) == (4, train.default_warmup(steps))


def test_a_spent_budget_continued_by_epochs_in_another_batch_takes_its_own_default_warmup(env, tmp_path):
    """A budget's warmup is a share of its time, so a run its budget stopped, continued by epochs, takes the default
    warmup of those epochs, in today's steps. In another batch it was scaled as an inherited step count is (batches
    of 4 for the checkpoint's 16: 4 times the default), and the run went back into a warmup at its step."""
    r = train.train(args_for(env, tmp_path, "--dataset", "mini", *SMALL, "--time_budget", "0.02", "--eval_interval",
                             "0"))
    assert r["stopped"] == "time budget"
    r = train.train(args_for(env, tmp_path, "--checkpoint", r["checkpoint"], "--epochs", "100", "--batch_size", "4",
                             "--max_steps", "1", "--output_checkpoint", tmp_path / "more" / "{dataset}.pt",
                             fresh=False))
    ck = load_checkpoint(r["checkpoint"])
    steps = 100 * 36  # 100 epochs of mini's 144 windows in batches of 4
    assert (ck["args"]["batch_size"], ck["args"]["warmup"]) == (4, train.default_warmup(steps))


@pytest.mark.parametrize("faster", [True, False])
def test_bf16_asked_for_on_a_cpu_where_it_is_slower_is_warned_of(env, tmp_path, capsys, monkeypatch, faster):
    """An Intel CPU with AVX-512 BF16 but no AMX runs bf16 matmuls at half fp32's speed: --dtype auto takes fp32 there,
    and an explicit --dtype bfloat16 (from a recipe for another machine) trains, with a word that it is slower."""
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(common, "cpu_bf16_is_faster", lambda: faster)
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--dtype", "bfloat16"))
    err = capsys.readouterr().err
    assert ("--dtype bfloat16 is slower than float32 on this CPU" in err) is not faster
    assert "emulated" not in err


def test_the_run_line_says_why_auto_took_float32_on_a_cpu_without_bf16(env, tmp_path, capsys, monkeypatch):
    """On an AVX2 laptop (no AVX-512 BF16 or AMX) --dtype auto trains in float32, and the run line says why: a bare
    "cpu float32" left a user who read of bf16 on CPUs wondering. A --dtype given is said as it is."""
    monkeypatch.setattr(common, "cpu_info", lambda: ("GenuineIntel", {"sse2", "avx", "avx2", "fma"}))
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--dtype", "auto"))
    assert re.search(r"^train  .*, cpu float32 \(auto: no AVX-512 BF16 or AMX here\)$", capsys.readouterr().out, re.M)
    train.train(args_for(env, tmp_path / "given", "--dataset", "mini", "--max_steps", "1"))
    assert re.search(r"^train  .*, cpu float32$", capsys.readouterr().out, re.M)


def test_a_default_batch_larger_than_a_small_text_is_cut_to_it(env, tmp_path, capsys):
    """A small text of fewer windows than the preset's batch trains in batches of all its windows, with a warning,
    as it did padded (an explicit --batch_size that large is refused: test_bad_options_are_user_errors). Its checkpoint
    records the preset's batch, as one that trained padded did, and resumes on the same schedule as one that recorded
    the cut (as checkpoints did before: its warmup was rescaled as for another global batch)."""
    docs = [d for d in story_text(20_000).split("\n") if d.strip()][:16]
    write_dataset(str(tmp_path), "few", env["enc"], env["tok"], docs, val_frac=0.4)
    n = len(train.Windows(train.load_meta(str(tmp_path), "few"), "train", 64))
    assert 1 < n < 16
    base = ["--data_dir", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--no-color", "--eval_interval", "0",
            "--log_interval", "1"]
    summary = train.train(train.parse_args(base + [
        "--dataset", "few", "--output_checkpoint", str(tmp_path / "a" / "{dataset}.pt"), "--n_layer", "1", "--n_head",
        "2", "--n_embd", "32", "--block_size", "64", "--model", "small", "--epochs", "6", "--max_steps", "2"]))
    assert f"the preset's batch of 16 is more than the {n} windows of 64 tokens in the train split: batches of {n}" \
        in capsys.readouterr().err
    ck = torch.load(summary["checkpoint"], weights_only=True)
    assert ck["args"]["batch_size"] == 16 and ck["step"] == 2  # an epoch is one step
    os.makedirs(tmp_path / "b")
    ck["args"]["batch_size"] = n
    torch.save(ck, tmp_path / "b" / "few.pt")
    ends = [train.train(train.parse_args(base + ["--checkpoint", str(tmp_path / d / "few.pt"), "--max_steps", "3"]))
            for d in "ab"]
    # the cut was said when it was made, not again at each resume on the same text
    assert "batch of 16 is more than" not in capsys.readouterr().err
    lrs = [[(r["step"], r["lr"]) for r in read_metrics(e["metrics"]) if r["step"] > 2] for e in ends]
    assert lrs[0] == lrs[1] and [step for step, _ in lrs[0]] == [3, 4, 5]
    weights = [torch.load(e["checkpoint"], weights_only=True)["model"] for e in ends]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_batch_cut_to_a_small_text_is_not_inherited_by_the_run_continued_on_more_data(env, tmp_path, capsys):
    """The preset's batch of 16, cut to the n windows of a small text, was recorded as the run's --batch_size: the
    text prepared again larger, the run continued in batches of n, a batch its user never chose. It goes back to 16
    now, and says that the checkpoint's run took n and which option keeps that."""
    docs = [d for d in story_text(200_000).split("\n") if d.strip()]
    write_dataset(str(tmp_path), "text", env["enc"], env["tok"], docs[:16], val_frac=0.4)
    n = len(train.Windows(train.load_meta(str(tmp_path), "text"), "train", 64))
    assert 1 < n < 16
    base = ["--data_dir", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--no-color", "--eval_interval", "0"]
    first = train.train(train.parse_args(base + [
        "--dataset", "text", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--model",
        "small", "--epochs", "2", "--max_steps", "1", "--output_checkpoint", str(tmp_path / "m" / "{dataset}.pt")]))
    write_dataset(str(tmp_path), "text", env["enc"], env["tok"], docs[:200], val_frac=0.1)
    more = len(train.Windows(train.load_meta(str(tmp_path), "text"), "train", 64))
    assert more > 16
    capsys.readouterr()
    end = train.train(train.parse_args(base + ["--checkpoint", first["checkpoint"], "--max_steps", "2"]))
    out, err = capsys.readouterr()
    assert f"the checkpoint's run trained in batches of {n}, its batch of 16 cut to its small train split; the split " \
           f"has {more:,} windows now: batches of 16 (--batch_size {n} keeps the checkpoint's)" in err
    assert "steps of 16x1x64" in out
    # its epoch done is the first of today's epochs: the step the lr goes on from, said as such, not a puzzle
    spe = math.ceil(more / 16)
    assert f"step {spe} (the checkpoint's step 1, counted again in this run's epochs of {spe} steps)" in out
    assert torch.load(end["checkpoint"], weights_only=True)["args"]["batch_size"] == 16


def test_a_batch_cut_by_data_rebuilt_smaller_rescales_the_inherited_warmup(env, tmp_path, capsys):
    """A checkpoint that trained at the preset's batch of 16 on a larger text, resumed on that dataset rebuilt with
    fewer windows than 16: the batch is cut to them, a smaller global batch, so the warmup it inherited is stretched
    by 16 / n as for any other change of batch (it had been compared with the cut and kept as it was)."""
    docs = [d for d in story_text(200_000).split("\n") if d.strip()]
    write_dataset(str(tmp_path), "text", env["enc"], env["tok"], docs[:200], val_frac=0.1)
    assert len(train.Windows(train.load_meta(str(tmp_path), "text"), "train", 64)) > 16
    base = ["--data_dir", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--no-color", "--eval_interval", "0"]
    first = train.train(train.parse_args(base + [
        "--dataset", "text", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--model",
        "small", "--epochs", "2", "--max_steps", "2", "--output_checkpoint", str(tmp_path / "m" / "{dataset}.pt")]))
    ck = torch.load(first["checkpoint"], weights_only=True)
    assert ck["args"]["batch_size"] == 16
    warmup = ck["args"]["warmup"]
    write_dataset(str(tmp_path), "text", env["enc"], env["tok"], docs[:16], val_frac=0.4)
    n = len(train.Windows(train.load_meta(str(tmp_path), "text"), "train", 64))
    assert 1 < n < 16
    capsys.readouterr()
    end = train.train(train.parse_args(base + ["--checkpoint", first["checkpoint"], "--epochs", "4",
                                               "--max_steps", "3"]))
    assert "the checkpoint's batch of 16 is more than" in capsys.readouterr().err
    ck = torch.load(end["checkpoint"], weights_only=True)
    assert ck["args"]["batch_size"] == 16  # the run's batch still, cut to the text it trained on (trained_batch)
    assert ck["args"]["warmup"] == max(1, round(warmup * 16 / n)) != warmup


def test_a_batch_cut_by_the_data_it_trained_on_counts_windows_of_the_block_it_trained_in(env, tmp_path):
    """A checkpoint records the preset's 16 for a text of fewer windows of 64 (as ones from before the cut did); resumed
    with --block_size 32, the same text has 16 or more windows, so today's batch is 16 and not cut. It trained in
    batches of its windows of 64, not of 32: the global batch grew, and the inherited warmup shrinks with it."""
    docs = [d for d in story_text(20_000).split("\n") if d.strip()]
    for k in range(4, len(docs)):  # a text of 8-15 windows of 64, so 16 or more of 32
        write_dataset(str(tmp_path), "few", env["enc"], env["tok"], docs[:k], val_frac=0.4)
        meta = train.load_meta(str(tmp_path), "few")
        n = len(train.Windows(meta, "train", 64))
        if n >= 8:
            break
    assert 8 <= n < 16 <= len(train.Windows(meta, "train", 32))
    base = ["--data_dir", str(tmp_path), "--device", "cpu", "--dtype", "float32", "--no-color", "--eval_interval", "0"]
    first = train.train(train.parse_args(base + [
        "--dataset", "few", "--output_checkpoint", str(tmp_path / "a" / "{dataset}.pt"), "--n_layer", "1", "--n_head",
        "2", "--n_embd", "32", "--block_size", "64", "--model", "small", "--epochs", "6", "--max_steps", "1",
        "--warmup", "32"]))
    ck = torch.load(first["checkpoint"], weights_only=True)
    assert ck["args"]["batch_size"] == 16  # the preset's, cut to n (as checkpoints from before the cut recorded it)
    end = train.train(train.parse_args(base + ["--checkpoint", first["checkpoint"], "--block_size", "32",
                                               "--max_steps", "2", "--output_checkpoint",
                                               str(tmp_path / "b" / "{dataset}.pt")]))
    ck = torch.load(end["checkpoint"], weights_only=True)
    assert ck["args"]["batch_size"] == 16
    assert ck["args"]["warmup"] == round(32 * n / 16) != 32


def test_a_run_continued_in_larger_steps_ends_its_epoch_on_the_epochs_last_step(env, tmp_path):
    """1 window done, continued in steps of 8 (as one process continued on 2 ranks, or with a larger batch): the
    epoch's other windows take ceil((n - 1) / 8) steps, and the run is placed so that they end it at its last step.
    Counting the step begun as a whole one had put the epoch's end one step late: n // 8 + 1 steps for an epoch of
    ceil(n / 8), every later epoch shifted with it and the last step past the schedule's end."""
    n = len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64))
    assert n % 8 != 1  # else the step begun is the epoch's last one anyway
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "1", "--max_steps", "1",
                                 "--eval_interval", "0"))
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--batch_size", "8", "--data_dir",
                                      env["data"], "--device", "cpu", "--no-color"]))
    assert r["stopped"] == "done" and r["epochs_done"] == 1 and r["steps"] == math.ceil(n / 8)
    # its logs fall on the epoch's steps as the schedule counts them (every 2nd here): 7 windows done, which leave a
    # step less to take, count as a step; counted as none, every log came a step off
    assert 1 <= n % 8 <= 6
    first = train.train(args_for(env, tmp_path / "b", "--dataset", "mini", "--batch_size", "1", "--max_steps", "7",
                                 "--eval_interval", "0"))
    before = len(read_metrics(first["metrics"]))
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--batch_size", "8", "--data_dir",
                                      env["data"], "--device", "cpu", "--no-color", "--log_interval",
                                      str(200 / math.ceil(n / 8))]))
    # 7 windows done leave ceil((n - 7) / 8) steps, a step fewer than the epoch's: counted as no step done, the epoch,
    # and the lr schedule with it, ended a step early
    assert r["steps"] == math.ceil(n / 8) and r["epochs_done"] == 1
    logged = [rec["step"] for rec in read_metrics(r["metrics"])][before:-1]  # the last: the epoch's end
    assert len(logged) > 2 and all(step % 2 == 0 for step in logged), logged


@pytest.mark.parametrize("entry, value", [(("data", "train_tokens"), "abc"), (("data", "train_tokens"), None),
                                          (("data", "train_tokens"), [1, 2]), (("data", "train_tokens"), True),
                                          (("args", "block_size"), -64), (("args", "block_size"), 0)])
def test_a_checkpoint_whose_recorded_data_size_is_no_count_resumes_as_it_trained(env, tmp_path, entry, value):
    """The data entry's train_tokens and the recorded block_size say how many windows the checkpoint's batch was cut
    to: edited to what is no count (a string: a TypeError; a block of -64: one window, so the batch of 16 counted as
    1 and the warmup of 16 inherited as 1), they are not read, and the batch is cut by today's data, as before."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--warmup", "16"))
    ck = torch.load(first["checkpoint"], weights_only=True)
    assert (ck["args"]["batch_size"], ck["args"]["warmup"]) == (16, 16)
    ck[entry[0]][entry[1]] = value
    torch.save(ck, str(tmp_path / "edited.pt"))
    r = train.train(train.parse_args(["--checkpoint", str(tmp_path / "edited.pt"), "--max_steps", "2", "--block_size",
                                      "64", "--data_dir", env["data"], "--device", "cpu", "--no-color",
                                      "--output_checkpoint", str(tmp_path / "b" / "{dataset}.pt")]))
    assert r["steps"] == 2
    assert torch.load(r["checkpoint"], weights_only=True)["args"]["warmup"] == 16


def test_a_continued_run_that_does_not_better_its_best_says_so(env, tmp_path, capsys):
    first = train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--max_steps", "2"))
    ck = load_checkpoint(first["checkpoint"])
    ck["best_val_loss"], ck["best_at"] = 0.0, [7, 0.5]  # no run can better it
    os.makedirs(tmp_path / "b")
    torch.save(ck, tmp_path / "b" / "copy.pt")  # a folder without the run's best file
    capsys.readouterr()
    r = train.train(train.parse_args(["--checkpoint", str(tmp_path / "b" / "copy.pt"), "--max_steps", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no-color"]))
    assert r["best_checkpoint"] is None
    assert "best val loss 0.0000 (ppl 1.00) at step 7 (epoch 0.50) before this run, which did not better it" in \
        capsys.readouterr().out


def test_an_unusable_output_is_refused_before_training(env, tmp_path):
    (tmp_path / "taken.pt").mkdir()
    args = args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1")
    args.output_checkpoint = str(tmp_path / "taken.pt")
    with pytest.raises(train.UserError, match=r"^--output_checkpoint .*taken\.pt is a folder: give a file's path$"):
        train.train(args)
    assert not (tmp_path / "mini_metrics.jsonl").exists()  # nothing ran


def train_until_its_first_save(env, out, **popen):
    """A train.py run of 50 epochs into the folder out, started as a script (popen: its streams, its start), once its
    first save is written (at 5% of its first epoch, its 7th step: 29 steps at 20% were a second of the test's time
    under load, for nothing): (the process, that save's path, its step)."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--data_dir", env["data"], "--dataset", "story",
           "--output_checkpoint", str(out / "{dataset}_epoch{epoch}.pt"), "--n_layer", "2", "--n_head", "2",
           "--n_embd", "64", "--block_size", "64", "--batch_size", "8", "--epochs", "50", "--save_interval", "5",
           "--eval_interval", "0", "--device", "cpu", "--dtype", "float32", "--no-color"]
    proc = subprocess.Popen(cmd, cwd=ROOT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)
    ckpt = out / "story_epoch1.pt"
    # a guard against a hang, not a speed requirement: under load the first save (torch's and dynamo's imports, 35
    # steps) took 39 s of the 60 this was; a run that fails ends the wait at once (poll)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert ckpt.exists(), proc.communicate(timeout=30)
    return proc, ckpt, load_checkpoint(str(ckpt))["step"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                       pytest.param(HANGUP, 129, marks=pytest.mark.skipif(HANGUP is None,
                                                                                          reason="Windows has none"))])
def test_ctrl_c_saves_and_exits_130(env, tmp_path, sig, code):
    """Ctrl-C, or SIGTERM (a job scheduler's notice, `timeout`), or SIGHUP (`kill -HUP`, the terminal gone: it had
    killed the run, losing what came since the last save): the step finishes, is saved, and the run says how to
    continue. SIGTERM's run is started as `nohup python train.py` starts it, SIGHUP ignored so that it outlives its
    terminal: taken over to save and stop, the hang-up it was started to survive would end it. It trains on through
    one, and SIGTERM still stops it with a save. (One run for both: each is a start of torch, ~5 s.)"""
    out = tmp_path / "my models"  # (a space: the command it gives to continue pastes into a shell as it is)
    out.mkdir()
    other = out / "keep.pt"
    other.write_bytes(b"previous checkpoint bytes")
    nohup = sig == signal.SIGTERM and HANGUP is not None
    hangup = {"preexec_fn": hangup_as(signal.SIG_DFL)} if sig == HANGUP else \
        {"preexec_fn": hangup_as(signal.SIG_IGN)} if nohup else {}
    proc, ckpt, first = train_until_its_first_save(env, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **hangup)
    if nohup:
        proc.send_signal(HANGUP)
        time.sleep(1)
        assert proc.poll() is None, proc.communicate(timeout=30)  # still training
    else:
        time.sleep(0.5)  # some steps past that save
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr
    assert not nohup or "SIGHUP" not in stderr, stderr
    line = stdout.split("interrupted at step ")[1].splitlines()[0]  # "N: saved PATH; continue with ..."
    at, path = int(line.split(":")[0].replace(",", "")), line.split("saved ")[1].split(";")[0]
    assert f"--checkpoint {shlex.quote(path)}`" in line and os.path.dirname(path) == str(out)
    ck = load_checkpoint(path)
    assert ck["step"] == at > first  # saved at the interrupt, not only at the interval
    assert load_checkpoint(str(ckpt))["step"] >= first
    assert other.read_bytes() == b"previous checkpoint bytes"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.skipif(HANGUP is None or not hasattr(os, "openpty"), reason="terminals that hang up are POSIX")
def test_a_run_whose_terminal_hangs_up_saves_and_exits_129(env, tmp_path):
    """The SSH session of a run started without tmux or nohup dropped: the system hung its terminal up, after which
    every write to it fails (EIO), and sent SIGHUP, whose default ended the run on the spot, losing every step since
    its last save. The step finishes and is saved, and the run exits 129, the lines for the terminal (its progress bar,
    "SIGHUP: saving", how to continue) dropped, not a traceback's exit 1 that cut the save."""
    import fcntl
    import select
    import struct
    import termios
    import threading
    out = tmp_path / "models"
    out.mkdir()
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # sized: the progress bar is drawn
    stop = threading.Event()

    def screen():  # what the terminal shows, read, so that the run never waits on a full one
        while not stop.is_set():
            if select.select([leader], [], [], 0.1)[0]:
                os.read(leader, 1 << 16)

    def in_its_own_session():  # its terminal made its controlling one: the system sends it SIGHUP as it hangs up
        hangup_as(signal.SIG_DFL)()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    reader = threading.Thread(target=screen)
    reader.start()
    try:
        proc, ckpt, first = train_until_its_first_save(env, out, stdin=follower, stdout=follower, stderr=follower,
                                                       start_new_session=True, preexec_fn=in_its_own_session)
        time.sleep(0.5)  # some steps past that save
    finally:
        stop.set()
        reader.join()
        os.close(follower)
    os.close(leader)  # the session gone: the terminal hangs up, and its process is sent SIGHUP
    assert proc.wait(timeout=60) == 129
    saved = [load_checkpoint(str(out / f))["step"] for f in os.listdir(out) if f.endswith(".pt")]
    assert max(saved) > first  # saved at the hang-up, not only at the interval
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_ctrl_c_says_interrupted_in_one_line(env, tmp_path, monkeypatch, capsys):
    # the line that says where the run was saved and how to continue it was followed by a bare "interrupted"
    on_step(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit) as e:
        train.main(["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint",
                    str(tmp_path / "{dataset}.pt"), "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                    "--block_size", "64", "--eval_interval", "0", "--device", "cpu", "--no-color"])
    out, err = capsys.readouterr()
    assert e.value.code == 130
    assert re.findall(r"^.*interrupted.*$", out + err, re.M) == [
        f"interrupted at step 3: saved {tmp_path / 'mini.pt'}; continue with "
        f"`python train.py --checkpoint {shlex.quote(str(tmp_path / 'mini.pt'))}`"], (out, err)
    # a run of --max_steps, which a continued run does not inherit: the command goes on for the steps left (it trained
    # the rest of the epochs instead)
    on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit):
        train.main(["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint",
                    str(tmp_path / "m" / "{dataset}.pt"), "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                    "--block_size", "64", "--eval_interval", "0", "--device", "cpu", "--no-color", "--max_steps", "5"])
    out, err = capsys.readouterr()
    assert out.rstrip().endswith(f"--checkpoint {shlex.quote(str(tmp_path / 'm' / 'mini.pt'))} --max_steps 3`"), out


def test_a_run_stopped_by_ctrl_c_between_records_logs_the_losses_of_the_run_in_one_go(env, tmp_path, monkeypatch):
    """Ctrl-C logged a record at the step it stopped in, so the continued run's next record averaged the steps after it
    alone: its train loss, and the extra record, differed from the run in one go's, whose weights it matched bit for
    bit. Its save holds the loss since the last record instead, as a save on the way out of an error does."""
    options = ["--dataset", "mini", "--epochs", "1", "--batch_size", "4", "--log_interval", "25", "--eval_interval",
               "50", "--save_interval", "0"]
    one = train.train(args_for(env, tmp_path / "one", *options))
    whole = read_metrics(one["metrics"])
    records = [r["step"] for r in whole]
    stop = records[0] + 2  # between the first two records
    assert stop < records[1], records
    on_step(monkeypatch, stop, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit) as e:
        train.train(args_for(env, tmp_path / "two", *options))
    assert e.value.code == 130
    monkeypatch.undo()
    saved = str(tmp_path / "two" / "mini_epoch1.pt")
    assert load_checkpoint(saved)["step"] == stop
    rest = train.train(args_for(env, tmp_path / "two", "--checkpoint", saved, fresh=False))

    def losses(records):  # (not the run's id, nor its times)
        return [(r["step"], r["tokens"], r["train_loss"], r["val_loss"], r["lr"]) for r in records]
    assert losses(read_metrics(rest["metrics"])) == losses(whole)


def test_a_second_ctrl_c_quits_naming_the_runs_last_checkpoint(env, tmp_path, monkeypatch, capsys):
    # the second Ctrl-C quits without a save: it said a bare "interrupted", leaving the file that holds the run to be
    # found (the continued one's --checkpoint where this run saved none), and then not its step
    argv = ["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint", str(tmp_path / "{dataset}.pt"),
            "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--eval_interval", "0",
            "--save_interval", "0", "--device", "cpu", "--no-color"]
    twice = lambda: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)]  # noqa: E731
    for continued, last in ((False, "none"), (True, str(tmp_path / "mini.pt"))):
        if continued:
            train.main(argv + ["--max_steps", "2"])
            argv += ["--checkpoint", last]
        before = os.path.exists(last) and load_checkpoint(last)["step"]
        on_step(monkeypatch, 2, twice)
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        out, err = capsys.readouterr()
        assert e.value.code == 130
        held = f"{last} (step 2)" if continued else last
        assert err.rstrip().splitlines()[-1] == f"quit at step {3 if continued else 1} without saving; the run's " \
                                                f"last checkpoint: {held}", err
        assert "interrupted" not in err and (not continued or load_checkpoint(last)["step"] == before == 2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_ctrl_c_during_the_interrupts_save_quits_leaving_the_checkpoint_whole(env, tmp_path, monkeypatch,
                                                                                      capsys, sig):
    """The first Ctrl-C's line promises "(Ctrl-C again quits without saving)": a second one while the interrupt's save
    writes (seconds for a large model) quits at once, exit 130, and the file that save would have replaced, the run's
    last checkpoint, is left as it was, loadable, with no temporary file beside it. Two SIGTERMs (a scheduler's notice
    sent twice) quit so too, with SIGTERM's status, 143, not Ctrl-C's."""
    argv = ["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint", str(tmp_path / "{dataset}.pt"),
            "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--eval_interval", "0",
            "--save_interval", "0", "--device", "cpu", "--no-color"]
    last = str(tmp_path / "mini.pt")
    train.main(argv + ["--max_steps", "2"])
    before, files = open(last, "rb").read(), sorted(os.listdir(tmp_path))
    real_save, saves = torch.save, []

    def ctrl_c_mid_write(obj, f, *a, **k):  # the interrupt's save: some bytes written, then the second Ctrl-C
        saves.append(f)
        with open(f, "wb") as out:
            out.write(before[:len(before) // 2])
        os.kill(os.getpid(), sig)
        real_save(obj, f, *a, **k)  # (not reached where the second Ctrl-C quits)
    monkeypatch.setattr(torch, "save", ctrl_c_mid_write)
    on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), sig))
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--checkpoint", last])
    out, err = capsys.readouterr()
    assert e.value.code == 128 + sig
    assert saves and saves[0] != last  # the second Ctrl-C came in the interrupt's save, written to a temporary file
    first = "Ctrl-C: saving after this step (Ctrl-C again" if sig == signal.SIGINT else \
        "SIGTERM: saving after this step (Ctrl-C"
    assert f"{first} quits without saving)" in err, err
    assert err.rstrip().splitlines()[-1] == f"quit at step 4 without saving; the run's last checkpoint: {last} " \
                                            f"(step 2)", err
    assert "interrupted" not in out + err
    assert open(last, "rb").read() == before and load_checkpoint(last)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == files  # (the temporary file removed)


@pytest.mark.skipif(HANGUP is None, reason="Windows has no SIGHUP")
@pytest.mark.parametrize("first", ["SIGHUP", "SIGINT"])
def test_a_second_sighup_does_not_quit_without_the_save(env, tmp_path, monkeypatch, capsys, first):
    """A dropped SSH session sends a run SIGHUP twice: its shell passes its own on, and the system sends another as
    the shell ends. The second, in the save the first began, is the same hang-up, not a user's second Ctrl-C: the save
    is made, and the run exits 129. A hang-up in the save a Ctrl-C began (the user gone after pressing it) lets it
    finish too: exit 130."""
    first = getattr(signal, first)
    argv = ["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint", str(tmp_path / "{dataset}.pt"),
            "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--eval_interval", "0",
            "--save_interval", "0", "--device", "cpu", "--no-color"]
    real_save, saves = torch.save, []

    def hangup_mid_write(obj, f, *a, **k):
        saves.append(f)
        os.kill(os.getpid(), HANGUP)
        real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", hangup_mid_write)
    on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), first))
    before = signal.signal(HANGUP, hangup_not_taken)
    try:
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        assert signal.getsignal(HANGUP) is hangup_not_taken  # run_main's handler taken off on the way out
    finally:
        signal.signal(HANGUP, before)
    out, err = capsys.readouterr()
    assert e.value.code == 128 + first and len(saves) == 1, err
    said = "SIGHUP: saving after this step" if first == HANGUP else "Ctrl-C: saving after this step"
    assert said in err and "without saving;" not in err, err
    assert f"interrupted at step 2: saved {tmp_path / 'mini.pt'}" in out, out
    assert load_checkpoint(str(tmp_path / "mini.pt"))["step"] == 2
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize("tty", [False, True])
def test_sigterm_to_a_run_logging_to_a_file_says_so_without_a_blank_line(env, tmp_path, monkeypatch, capsys, tty):
    """`python train.py ... > log 2>&1` then `kill -TERM`: the "SIGTERM: saving" line came after a blank line in the
    log, the newline that on a terminal ends the progress bar's line (and the ^C echoed on it) before the message."""
    argv = ["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint", str(tmp_path / "{dataset}.pt"),
            "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--eval_interval", "0",
            "--save_interval", "0", "--device", "cpu", "--no-color"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 143
    line = err.index("SIGTERM: saving after this step")
    # a log: the line after the one before; a terminal: the bar cleared (tqdm.write), then the newline ending its line
    assert err[:line].endswith("\r\n" if tty else "\n") and not err[:line].endswith("\n\n"), err
    # a second one quits: its line too (a log's came after a blank line)
    on_step(monkeypatch, 2, lambda: [os.kill(os.getpid(), signal.SIGTERM) for _ in range(2)])
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--overwrite"])
    err = capsys.readouterr().err
    assert e.value.code == 143 and "\nquit at step 1 without saving" in err
    assert err.endswith("\n") and ("\n\nquit at step" in err) == tty, err


def test_an_interrupt_in_the_last_step_of_a_run_lets_it_end(env, tmp_path, monkeypatch, capsys):
    """SIGTERM (or Ctrl-C) during a run's last step said "interrupted ... continue with --checkpoint X" and exited 143
    (130) for a run that had just ended: continuing it was refused (its epochs done), and its summary was lost."""
    steps = math.ceil(len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) / 16)
    on_step(monkeypatch, steps, lambda: os.kill(os.getpid(), signal.SIGTERM))  # during the epoch's last step
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--eval_interval", "0"))
    assert s["stopped"] == "done" and s["epochs_done"] == 1 and s["steps"] == steps
    assert load_checkpoint(s["checkpoint"])["epoch"] == 1
    assert "interrupted" not in capsys.readouterr().out


def test_ctrl_c_while_the_final_curve_is_drawn_lets_the_run_end(env, tmp_path, monkeypatch, capsys):
    """After the loop Ctrl-C is run_main's again: one pressed while the end of the run draws its loss curve (a savefig
    when matplotlib is installed) ended in a bare "interrupted", exit 130, for a run done and saved, without the lines
    naming its checkpoint. The curve is left as it was and the run ends as it would have."""
    plot, drawn = train.Metrics.plot, []

    def ctrl_c_in_it(self, title):
        drawn.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # (the default handler raises here, as it would inside savefig)
        return plot(self, title)
    monkeypatch.setattr(train.Metrics, "plot", ctrl_c_in_it)
    out = tmp_path / "{dataset}.pt"
    s = train.main(["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint", str(out), "--n_layer", "1",
                    "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--eval_interval", "0", "--device", "cpu",
                    "--no-color", "--max_steps", "3"])
    o, err = capsys.readouterr()
    assert drawn and s["steps"] == 3 and load_checkpoint(s["checkpoint"])["step"] == 3
    assert f"checkpoint {tmp_path / 'mini.pt'}; metrics" in o, (o, err)
    assert "warning: Ctrl-C: the loss curve not redrawn; the run is done and saved" in err
    assert "interrupted" not in o + err and not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_ctrl_c_during_an_evaluation_saves_the_step_it_evaluated(env, tmp_path, monkeypatch, capsys):
    """The interrupt was agreed on before the evaluation: a Ctrl-C during it (seconds on a large val split) trained
    one more step, and the run stopped and saved after that one."""
    evaluate, evals = train.evaluate, []

    def ctrl_c_in_it(*args, **kwargs):
        evals.append(1)
        if len(evals) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(train, "evaluate", ctrl_c_in_it)
    with pytest.raises(SystemExit, match="^130$"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--eval_interval", "0.25", "--epochs", "2"))
    out = capsys.readouterr().out
    evaluated = int(re.findall(r"step ([\d,]+) \(epoch [\d.]+\): train", out)[1].replace(",", ""))
    assert f"interrupted at step {evaluated:,}: saved" in out, out
    ckpt = re.search(r"interrupted at step [\d,]+: saved (\S+);", out).group(1)
    assert load_checkpoint(ckpt)["step"] == evaluated


def test_an_empty_checkpoint_file_names_what_torch_said(tmp_path):
    """A checkpoint file of 0 bytes (a copy cut off at its start): torch's EOFError says nothing, and the line read
    "(truncated or corrupt?): str", the name of the empty text's type."""
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.pt is not a readable checkpoint \(truncated or corrupt\?\): "
                                        r"EOFError; use another checkpoint \(its _best\.pt or an earlier one\)$"):
        load_checkpoint(str(tmp_path / "empty.pt"))


def test_a_continued_run_holds_the_checkpoints_weights_once(env, tmp_path, monkeypatch):
    """The checkpoint a run continues stays with the run (its counts, its metrics), and so did its weights, copied
    into the model: 0.5 GB more for GPT-2's whole run, on a machine where it may be the memory a batch needed; and on a
    GPU its optimizer state, copied to the GPU: up to 1 GB more of the host's for GPT-2's."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1"))
    runs, build = [], train.build_training
    monkeypatch.setattr(train, "build_training", lambda run: (runs.append(run), build(run))[1])
    train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--max_steps", "2", "--no-color"]))
    assert runs[0].ckpt["model"] is None and runs[0].ckpt["optimizer"] is None and runs[0].ckpt["step"] == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RssAnon is Linux's")
def test_a_checkpoint_loads_for_sampling_without_its_optimizer_state_in_memory(trained, tmp_path):
    """gen.py, eval.py and serve.py want the weights alone: a GPT-2 checkpoint's optimizer state is twice its weights,
    and read whole, gen.py needed 2 GB where 1 GB held its model (killed on a 1 GB machine). The file is mapped and
    what is left out never read; what is kept is copied out of the mapping, so the file written over in place after
    (a notebook's torch.save to the path it loaded) cannot end the reader in a bus error."""
    def rss_anon():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
    ckpt = load_checkpoint(trained["summary"]["checkpoint"])
    ckpt["optimizer"]["big"] = torch.ones(2 ** 26)  # 256 MiB of optimizer state
    torch.save(ckpt, tmp_path / "big.pt")
    weights = ckpt["model"]
    del ckpt
    before = rss_anon()
    loaded = load_checkpoint(tmp_path / "big.pt", optimizer=False)
    assert rss_anon() - before < 2 ** 27, "the optimizer state was read into memory"
    assert "optimizer" not in loaded
    _, _, via_model = load_model(tmp_path / "big.pt")  # its weights read into the model from the mapping
    (tmp_path / "big.pt").write_bytes(b"")  # written over in place: the loaded tensors are not the file's
    assert all(torch.equal(loaded["model"][k], v) and torch.equal(via_model["model"][k], v) for k, v in weights.items())
    with pytest.raises(UserError, match=r"big\.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "big.pt")


def test_tied_weights_copied_out_of_a_mapped_checkpoint_stay_one_tensor(trained):
    """The embedding and the output layer are one tensor, saved once: copied out of the mapping each on its own, eval.py
    held GPT-2's 154 MB table twice."""
    model = load_checkpoint(trained["summary"]["checkpoint"], optimizer=False)["model"]
    assert model["lm_head.weight"].untyped_storage().data_ptr() == \
        model["transformer.wte.weight"].untyped_storage().data_ptr()


def test_load_model_gives_the_weights_of_the_model_on_its_device(trained):
    """load_model's checkpoint dict holds the model's weights, not the file's: taken before the model went to the GPU,
    they were a CPU copy, which serve.py and gen.py held in host memory for as long as they ran ("meta" stands in)."""
    model, _, ckpt = load_model(trained["summary"]["checkpoint"], "meta")
    assert {v.device.type for v in ckpt["model"].values()} == {"meta"} == {p.device.type for p in model.parameters()}


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="the mapping is Linux's")
def test_a_checkpoint_is_mapped_only_where_that_saves_memory(trained, monkeypatch):
    """A mapping saves memory where part of the file is left out or left in it (gen.py, eval.py). Where all is copied
    out (train.py's resume) it held the file beside its copies, twice it; and a data limit (cap_memory's RLIMIT_DATA,
    a ulimit -d) counts the whole mapping as data: eval.py on a 105 MB checkpoint failed under 340 MB mapped, not
    under 300 MB read."""
    import resource
    mapped, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: mapped.append(kw.get("mmap")) or load(*a, **kw))
    path = trained["summary"]["checkpoint"]
    load_checkpoint(path, optimizer=False)
    load_checkpoint(path)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (2 ** 40, resource.RLIM_INFINITY))
    load_checkpoint(path, optimizer=False)
    assert mapped == [True, False, False]


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 8 bytes"),
                                   RuntimeError("unable to mmap 8 bytes from file <x>: Cannot allocate memory (12)"),
                                   MemoryError()])
def test_a_checkpoint_too_large_for_the_memory_left_is_not_called_corrupt(trained, monkeypatch, error):
    """Under cap_memory's limit (train.py, eval.py) or a small machine, torch.load's failed allocation read as "not a
    readable checkpoint (truncated or corrupt?) ... use another checkpoint": a sound file, and the wrong way on."""
    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(UserError, match=r"^out of memory loading \S+ \(\d+ MB\): free some memory"):
        load_checkpoint(trained["summary"]["checkpoint"])


def test_a_checkpoint_replaced_or_removed_as_it_loads_loads_whole(trained, tmp_path, monkeypatch):
    """gen.py or eval.py loading a checkpoint while a train.py replaces it at a save, or removes it (--overwrite): the
    file torch.load read is the one whose checksums are tested (they were read from the path again: a removed file's
    "its zip records do not read (FileNotFoundError)" called it damaged, and a replaced one's tested the new file)."""
    path, good = str(tmp_path / "m.pt"), trained["summary"]["checkpoint"]
    (tmp_path / "empty").write_bytes(b"")
    load, step = torch.load, load_checkpoint(good)["step"]
    for change in (os.remove, lambda p: os.replace(tmp_path / "empty", p)):  # (train.py saves by a rename)
        shutil.copy(good, path)

        def load_then_change(f, *args, change=change, **kwargs):
            ckpt = load(f, *args, **kwargs)
            change(path)
            return ckpt
        monkeypatch.setattr(torch, "load", load_then_change)
        assert load_checkpoint(path)["step"] == step
        monkeypatch.setattr(torch, "load", load)
    # removed before it was opened (after the look that it is there): one line
    os.remove(path)
    monkeypatch.setattr(os.path, "exists", lambda p: True)
    with pytest.raises(UserError, match=r"m\.pt was removed as it was opened \(by a train\.py writing there\?\): run "
                                        r"this again, or pass another checkpoint$"):
        load_checkpoint(path)


def test_bad_checkpoints_are_one_line_errors(env, trained, tmp_path, capsys):
    good = trained["summary"]["checkpoint"]
    # bytes flipped inside a tensor: torch.load reads other weights without a word; the zip's checksums catch it
    with zipfile.ZipFile(good) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's record
    flipped = bytearray(open(good, "rb").read())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    flipped[at:at + 100] = bytes(b ^ 0xFF for b in flipped[at:at + 100])
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    # the part named as in the file, not under the temporary name it was saved as (x_epoch1.pt.3468/data/9); a _best.pt
    # is not sent to its _best.pt
    part = info.filename.split("/", 1)[1]
    with pytest.raises(UserError, match=rf"flipped\.pt is damaged: its part {part} fails its checksum; use another "
                                        rf"checkpoint \(its _best\.pt or an earlier one\)$"):
        load_checkpoint(str(tmp_path / "flipped.pt"))
    (tmp_path / "flipped_best.pt").write_bytes(bytes(flipped))
    with pytest.raises(UserError, match=r"flipped_best\.pt is damaged: .*; use another checkpoint \(an earlier one\)$"):
        load_checkpoint(str(tmp_path / "flipped_best.pt"))
    # a legacy (not zip) torch.save file whose tensor bytes hold a zip end record: healthy, not "damaged"
    # (a small model, so that the record lies in the last 64 KiB, where is_zipfile looks for one)
    save_checkpoint(str(tmp_path / "small.pt"), GPT(make_config("tiny", n_layer=1, n_embd=8, n_head=1, block_size=8,
                                                                vocab_size=env["enc"].n_vocab)), env["enc"])
    legacy = load_checkpoint(str(tmp_path / "small.pt"))
    end_record = b"PK\x05\x06" + bytes(4) + b"\x01\x00\x01\x00" + b"\x2e\x00\x00\x00" + bytes(6)  # 1 entry
    legacy["zz"] = torch.tensor(list(end_record), dtype=torch.uint8)
    torch.save(legacy, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert zipfile.is_zipfile(tmp_path / "legacy.pt")
    assert load_checkpoint(str(tmp_path / "legacy.pt"))["zz"].tolist() == list(end_record)
    # a byte torch.load never reads, but zipfile does: an entry's name, the directory's version field (tracebacks)
    data = open(good, "rb").read()
    with zipfile.ZipFile(good) as z:
        start_dir = z.start_dir
    for name, at in (("name", 30), ("version", start_dir + 6)):
        (tmp_path / f"{name}.pt").write_bytes(data[:at] + b"\xff" + data[at + 1:])
        with pytest.raises(UserError, match=rf"{name}\.pt is damaged: its zip records do not read "
                                            rf"\(\w+\); use another"):
            load_checkpoint(str(tmp_path / f"{name}.pt"))
    # a missing one: what is in the folder the user named (it listed models/)
    shutil.copy(good, tmp_path / "there.pt")
    with pytest.raises(UserError, match=r"missing\.pt not found; available: .*there\.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    cut = tmp_path / "cut.pt"
    data = open(good, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    nanogpt = tmp_path / "ckpt.pt"  # nanoGPT's: "no model/config/tokenizer entries" of one with model and config
    torch.save({"model": {"lm_head.weight": torch.zeros(65, 8)}, "optimizer": {}, "model_args": {"n_layer": 1},
                "iter_num": 2000, "best_val_loss": torch.tensor(1.88), "config": {"dataset": "shakespeare_char"}},
               nanogpt)
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)  # pickled code: never loaded
    ck = load_checkpoint(good)
    broken = {}
    for name, change in (("tokenizer", {"tokenizer": None}), ("nan", {"model": {**ck["model"], "lm_head.weight":
                         torch.full_like(ck["model"]["lm_head.weight"], float("nan"))}}),
                         ("config", {"config": {**ck["config"], "n_layer": "two"}}),
                         ("vocab", {"config": {**ck["config"], "vocab_size": ck["config"]["vocab_size"] + 64}}),
                         ("optimizer", {"optimizer": {"state": {}, "param_groups": []}}),
                         # edited and saved again (no checksum sees that): a ValueError, KeyError or TypeError in resume
                         ("step", {"step": "x"}), ("rng", {"rng": {"torch": ck["rng"]["cpu"]}}),
                         ("data", {"data": "x"}),
                         # dropped without a word before: the summary's step of the best, a record's steps before it
                         ("best_at", {"best_at": [3, "x"]}), ("since", {"loss_since_record": [1.5]}),
                         # of the right type: the lr schedule from step -5; no evaluation a best again after nan
                         ("back", {"step": -5}), ("best_nan", {"best_val_loss": float("nan")}),
                         ("args", {"args": {**ck["args"], "lr": "abc"}}),
                         ("warmup", {"args": {**ck["args"], "warmup": "abc"}}),
                         ("accum", {"args": {**ck["args"], "grad_accum": "abc"}}),
                         # taken by torch's load_state_dict: a parameter's moments gone (resumed from zero without a
                         # word), one of another shape, or a part that is no dict (tracebacks, at the first step or in
                         # it)
                         ("moments", {"optimizer": {**ck["optimizer"], "adamw": {**ck["optimizer"]["adamw"], "state": {
                             k: v for k, v in ck["optimizer"]["adamw"]["state"].items() if k != 1}}}}),
                         ("shape", {"optimizer": {**ck["optimizer"], "adamw": {**ck["optimizer"]["adamw"], "state": {
                             **ck["optimizer"]["adamw"]["state"], 1: {**ck["optimizer"]["adamw"]["state"][1],
                                                                      "exp_avg": torch.zeros(3)}}}}}),
                         ("part", {"optimizer": {**ck["optimizer"], "muon": float("inf")}})):
        broken[name] = tmp_path / f"{name}.pt"
        torch.save({**ck, **change}, broken[name])
    for path, words in ((cut, "(truncated or corrupt?): PytorchStreamReader failed reading zip archive: failed finding "
                              "central directory; use another checkpoint (its _best.pt or an "
                              "earlier one)"), (foreign, "not a checkpoint of this project"),
                        (nanogpt, "ckpt.pt is nanoGPT's checkpoint, not this project's: it holds no vocabulary"),
                        (module, "holds pickled Python objects (torch.nn.modules.linear.Linear), which "
                                 "are never loaded"),
                        (broken["tokenizer"], "is a damaged checkpoint"),
                        (broken["nan"], "holds weights that are not finite (1 tensor(s) with nan or inf, "
                                        "lm_head.weight"),
                        # the checkpoint's config, not "bad model options" the user never gave
                        (broken["config"], "config.pt does not match this model code (its config: n_layer must be a "
                                           "positive int, got 'two'): a damaged checkpoint, or one from another "
                                           "version of the code; use another one"),
                        (broken["vocab"], "vocab.pt does not match this model code (size mismatch for "
                                          "transformer.wte.weight"),
                        (broken["optimizer"], "its optimizer state does not fit the model"),
                        (broken["step"], "step.pt is a damaged checkpoint (its step entry, 'x', is not what train.py "
                                         "writes); use another checkpoint (its _best.pt or an earlier one)"),
                        (broken["rng"], "is a damaged checkpoint (its rng entry"),
                        (broken["data"], "is a damaged checkpoint (its data entry, 'x',"),
                        (broken["best_at"], "best_at.pt is a damaged checkpoint (its best_at entry, [3, 'x'], is not "
                                            "what train.py writes)"),
                        (broken["since"], "since.pt is a damaged checkpoint (its loss_since_record entry, [1.5], is "
                                          "not what train.py writes)"),
                        (broken["back"], "back.pt is a damaged checkpoint (its step entry, -5, is not what"),
                        (broken["best_nan"], "best_nan.pt is a damaged checkpoint (its best_val_loss entry, nan, is "
                                             "not what"),
                        (broken["args"], "args.pt records lr 'abc', which is not what train.py writes (a damaged or "
                                         "edited checkpoint): continue from another checkpoint"),
                        (broken["warmup"], "warmup.pt records warmup 'abc', which is not what train.py writes"),
                        (broken["accum"], "accum.pt records grad_accum 'abc', which is not what train.py writes"),
                        (broken["moments"], "moments.pt: its optimizer state does not fit the model (AdamW's parameter "
                                            "1 has no exp_avg, exp_avg_sq, step): a damaged checkpoint"),
                        (broken["shape"], "its optimizer state does not fit the model (AdamW's exp_avg of parameter 1 "
                                          "is (3,), for a parameter of"),
                        (broken["part"], "part.pt: its optimizer state does not fit the model ('float' object has no "
                                         "attribute 'copy')")):
        argv = ["--data_dir", env["data"], "--dataset", "story", "--checkpoint", str(path), "--device", "cpu",
                "--epochs", "9", "--max_steps", "1", "--output_checkpoint", str(tmp_path / "out" / "x.pt")]
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # given on the command line too: a continued run reads the recorded value still (the ratio of min_lr to lr, whether
    # the batch changed its step count), where it was a TypeError, or quietly wrong
    for name, given in (("args", ["--lr", "1e-3"]), ("accum", ["--grad_accum", "1"])):
        with pytest.raises(UserError, match=f"{name}.pt records .* continue from another checkpoint$"):
            train.train(train.parse_args(argv[:5] + [str(broken[name])] + argv[6:] + given))


def test_missing_data_names_a_prepare_command_that_runs(env, tmp_path):
    """prepare.py makes its own datasets by name and anything else from the user's text: the hint must be a command
    prepare.py accepts, writing where --data_dir looks."""
    data = re.escape(env["data"])
    with pytest.raises(UserError, match=rf"no prepared dataset 'shakespeare' .*: run `python prepare.py --dataset "
                                        rf"shakespeare --out_dir {data}` first$"):
        train.train(args_for(env, tmp_path, "--dataset", "shakespeare"))
    # nanoGPT's shakespeare_char, typed by habit, is Tiny Shakespeare a token a character under that name: it was
    # "prepare your own text under that name with `prepare.py --dataset text --source FILE --name shakespeare_char`"
    with pytest.raises(UserError, match=rf"no prepared dataset 'shakespeare_char' .*: run `python prepare.py --dataset "
                                        rf"shakespeare --vocab_size 259 --name shakespeare_char --out_dir {data}` "
                                        rf"first$"):
        train.train(args_for(env, tmp_path, "--dataset", "shakespeare_char"))
    # in a model's vocabulary (eval.py on a checkpoint), not a --vocab_size beside its --tokenizer, which is refused
    assert prepare.new_command(os.path.join("data", "shakespeare_char"), "--tokenizer", "m.pt") == \
        "python prepare.py --dataset shakespeare --name shakespeare_char --tokenizer m.pt"
    with pytest.raises(UserError, match=rf"\({data}/nope/meta.json is missing; {data} has chat, mini, other, story\): "
                                        rf"prepare your own "
                                        rf"text under that name with `python prepare.py --dataset text --source FILE "
                                        rf"--name nope --out_dir {data}`, or one of story, .* with `python prepare.py "
                                        rf"--dataset NAME --out_dir {data}`$"):
        train.train(args_for(env, tmp_path, "--dataset", "nope"))
    # a path for a name: story/ wrote models/story/.pt, and data/story suggested a --name prepare.py refuses
    for path, fix in (("mini/", ", as in --dataset mini$"), (os.path.join(env["data"], "mini"),
                                                            rf", as in --dataset mini --data_dir {data}$"), ("..", "$"),
                      (".", "$")):  # (all of its characters a name's: "'.': a dataset's name is letters, ..., '.'")
        with pytest.raises(UserError, match=rf"^--dataset {re.escape(path)} is a path: it takes a dataset's name, a "
                                            rf"folder of --data_dir \({data}\){fix}"):
            train.train(args_for(env, tmp_path / "p", "--dataset", path))
    # a file of the user's data, as other trainers' --data_path takes one: "as in --dataset c.jsonl --data_dir DIR"
    # named a dataset that is not there; the command that prepares it runs, and its name then trains
    source = tmp_path / "my chats.jsonl"
    source.write_text("".join(json.dumps({"conversations": [{"role": "user", "content": f"你好 {i}"},
                                                            {"role": "assistant", "content": f"你好！{i}"}]},
                                         ensure_ascii=False) + "\n" for i in range(200)), encoding="utf-8")
    own = str(tmp_path / "own")  # (not env's data: other tests list what it holds)
    with pytest.raises(UserError, match=rf"^--dataset {re.escape(str(source))} is your data, not a dataset prepare\.py "
                                        rf"made: prepare it first, with `(.*)`, then give --dataset NAME$") as e:
        train.train(args_for(env, tmp_path / "p", "--dataset", str(source), "--data_dir", own))
    command = re.search("`python (.*)`", str(e.value))[1].replace("NAME", "chats")
    subprocess.run([sys.executable, *shlex.split(command), "--pack", "64"], cwd=ROOT, check=True, capture_output=True)
    train.train(args_for(env, tmp_path / "d", "--dataset", "chats", "--data_dir", own, "--max_steps", "1"))
    # a file of a prepared dataset, as nanoGPT's train.py reads data/X/train.bin: it was "your data", with a prepare.py
    # command that refuses a .bin; the dataset's name is the way
    mini = os.path.join(env["data"], "mini")
    for name in ("train.bin", "meta.json"):
        with pytest.raises(UserError, match=rf"^--dataset {re.escape(os.path.join(mini, name))} is a file of the "
                                            rf"prepared dataset {re.escape(mini)}: give the dataset's name, as in "
                                            rf"--dataset mini --data_dir {re.escape(env['data'])}$"):
            train.train(args_for(env, tmp_path / "p", "--dataset", os.path.join(mini, name)))
    # a name with a space is no path: it said "--dataset my notes is a path"
    with pytest.raises(UserError, match=r"^--dataset 'my notes': a dataset's name is letters, digits, '\.', '-' and "
                                        r"'_', as prepare\.py's --name makes it$"):
        train.train(args_for(env, tmp_path / "p", "--dataset", "my notes"))
    assert not (tmp_path / "p").exists()
    mini = train.train(args_for(env, tmp_path / "e", "--dataset", "mini", "--max_steps", "1"))["checkpoint"]
    with pytest.raises(UserError, match=r"--dataset mini/ is a path"):
        eval_py.evaluate_checkpoint(mini, datasets=["mini/"], data_dir=env["data"], samples=0)
    # continuing a model whose vocabulary is its own: the data must be prepared with it
    ck = str(tmp_path / "ck.pt")
    shutil.copy(train.train(args_for(env, tmp_path / "m", "--dataset", "mini", "--max_steps", "1"))["checkpoint"], ck)
    with pytest.raises(UserError, match=rf"run `python prepare.py --dataset shakespeare --out_dir {data} --tokenizer "
                                        rf"{re.escape(ck)}` first$"):
        train.train(train.parse_args(["--checkpoint", ck, "--dataset", "shakespeare", "--data_dir", env["data"]]))
    # the hint, run: it makes what train.py looked for
    data = tmp_path / "data"
    with pytest.raises(UserError, match=r"has none\): prepare your own text .*") as e:
        train.load_meta(str(data), "nope")
    (tmp_path / "notes.txt").write_text("Some notes of mine, long enough to split. " * 400)
    hint = shlex.split(re.search(r"`python prepare.py (.*?)`", str(e.value)).group(1))
    prepare.main([str(tmp_path / "notes.txt") if a == "FILE" else a for a in hint])
    assert train.load_meta(str(data), "nope")["dataset"] == "text"
    # a mistyped built-in name (eval.py --dataset shakespear): the built-in sets' command makes them in the model's
    # vocabulary too; without --out_dir and --tokenizer it made data/shakespeare in GPT-2's, and the run still failed
    with pytest.raises(UserError) as e:
        train.load_meta(str(data), "shakespear", tokenizer=ck)
    named = shlex.join(["python", "prepare.py", "--dataset", "NAME", "--out_dir", str(data), "--tokenizer", ck])
    assert str(e.value).endswith(f"with `{named}`"), str(e.value)


@pytest.mark.parametrize("fcntl", [True, False], ids=["flock", "no-fcntl"])
def test_data_that_a_prepare_builds_now_says_to_wait_for_it(env, tmp_path, monkeypatch, fcntl):
    """train.py or eval.py started while prepare.py builds a dataset for the first time (no meta.json yet) said to run
    prepare.py, whose command was refused then as "another prepare.py is building": they say to wait for it. Without
    fcntl (Windows) the lock is a file holding its holder's pid."""
    if not fcntl:
        monkeypatch.setitem(sys.modules, "fcntl", None)
    mini = train.train(args_for(env, tmp_path / "m", "--dataset", "mini", "--max_steps", "1"))["checkpoint"]
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)  # the build's folder, its meta.json written last
    folder = re.escape(str(data / "notes"))
    args = args_for(env, tmp_path / "out", "--dataset", "notes", "--data_dir", str(data))
    with held_lock(prepare_lock(str(data), "notes"), "another prepare.py is building"):  # as prepare.py holds it
        with pytest.raises(UserError, match=rf"^{folder} is being built by a prepare.py .*: wait for "
                                            rf"that prepare.py to "
                                            rf"end, then run this again$"):
            train.train(args)
        with pytest.raises(UserError, match=rf"^{folder} is being built by a prepare.py"):
            eval_py.evaluate_checkpoint(mini, datasets=["notes"], data_dir=str(data), samples=0)
    # a prepare.py killed mid-build leaves its lock file, held by none: the command that prepares the data
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE, text=True)
    (data / ".notes.prepare.lock").write_text(dead.stdout.strip())
    for run in (lambda: train.train(args),
                lambda: eval_py.evaluate_checkpoint(mini, datasets=["notes"], data_dir=str(data), samples=0)):
        with pytest.raises(UserError, match=r"no prepared dataset 'notes' .*prepare your own text"):
            run()


@pytest.mark.parametrize("damage", ["truncated", "val cut", "meta a list", "meta cut", "meta of no dataset",
                                    "train.bin a folder", "id past vocab"])
def test_a_damaged_dataset_is_named_not_trained_on(env, trained, tmp_path, damage):
    """A truncated .bin would otherwise train on part of the data and report the run done."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "mini"), data / "mini")
    folder = data / "mini"
    if damage == "truncated":
        os.truncate(folder / "train.bin", 1000)
    elif damage == "val cut":
        os.truncate(folder / "val.bin", 3)
    elif damage == "meta a list":
        (folder / "meta.json").write_text("[1, 2]")
    elif damage == "meta cut":  # (a JSONDecodeError)
        (folder / "meta.json").write_text((folder / "meta.json").read_text()[:40])
    elif damage == "meta of no dataset":  # read, but it cannot say how the dataset was made
        meta = json.loads((folder / "meta.json").read_text())
        del meta["dataset"]
        (folder / "meta.json").write_text(json.dumps(meta))
        os.truncate(folder / "train.bin", 1000)
    elif damage == "id past vocab":  # the sizes are right: an IndexError in the embedding, or (an id among the
        # padding rows, as here) a silent loss on a token that does not exist
        meta = json.loads((folder / "meta.json").read_text())
        val = np.memmap(folder / "val.bin", dtype=meta["dtype"], mode="r+")
        val[5] = meta["vocab_size"]
        val.flush()
        del val
        with pytest.raises(UserError, match=r"val.bin holds token id \d+, beyond its \d+-token vocabulary "
                                            r"\(a damaged file\): run `python prepare.py .*` again$") as e:
            eval_py.evaluate_checkpoint(trained["summary"]["checkpoint"], datasets=["mini"], data_dir=str(data),
                                        samples=0)
        # under torchrun the rank that reads the window alone meets it: said by that rank, not by local rank 0 only
        assert e.value.every_rank
    else:
        os.remove(folder / "train.bin")
        (folder / "train.bin").mkdir()
    # the command that built it, from meta.json; with it gone, the one that makes a dataset of that name (mini is none
    # of prepare.py's own: `prepare.py --dataset mini` was its usage error)
    rebuild = f"python prepare.py --dataset text --source FILE --name mini --out_dir {data}" \
        if damage.startswith("meta") else f"python prepare.py --dataset mini --out_dir {data} --tokenizer"
    with pytest.raises(UserError, match=r"(not what meta.json says|is not a dataset this code reads|meta.json is "
                                        rf"unreadable|train.bin is missing|beyond "
                                        rf"its).*{re.escape(rebuild)}.*` again$"):
        train.train(args_for(env, tmp_path, "--data_dir", str(data), "--dataset", "mini", "--max_steps", "1"))


def test_each_state_entry_train_py_would_not_write_is_a_damaged_checkpoint(trained, tmp_path):
    """checkpoint.STATE_KINDS entry by entry (test_bad_checkpoints_are_one_line_errors has a step of -5 and 'x', a best
    val loss of nan): a count below 0 or a bool (an int to Python), a loss or seconds of nan or inf, a best_at or
    loss_since_record whose parts are not so. Each is one line naming the entry, not a run resumed from it (a train
    loss over -1 targets, a best at step -1)."""
    ck = load_checkpoint(trained["summary"]["checkpoint"])
    path = tmp_path / "edited.pt"
    for entry, value in (("epoch", -1), ("epoch_step", -1), ("epoch_windows", -1), ("tokens", -1), ("eval_windows", -1),
                         ("evals_since_best", -1), ("tokens", True), ("val_loss", float("inf")),
                         ("elapsed", float("nan")), ("elapsed", "x"), ("budget_elapsed", float("-inf")),
                         ("schedule_origin", float("inf")), ("best_at", [-1, 0.5]), ("best_at", [3, float("nan")]),
                         ("loss_since_record", [1.5, -1])):
        torch.save({**ck, entry: value}, path)
        with pytest.raises(UserError, match=rf"edited\.pt is a damaged checkpoint \(its {entry} entry, "
                                            rf"{re.escape(repr(value))}, is not what train\.py writes\)"):
            load_checkpoint(str(path))
    # what train.py writes before its first evaluation (a run stopped in its first steps): no loss yet, which loads
    torch.save({**ck, "best_val_loss": None, "val_loss": None, "best_at": None, "schedule_origin": None}, path)
    assert load_checkpoint(str(path))["best_val_loss"] is None

def test_a_random_state_torch_would_not_take_back_is_a_damaged_checkpoint(trained, tmp_path):
    # an rng entry of a tensor, but not a CPU generator's state (another dtype, size or bytes), loaded: the continued
    # run's torch.set_rng_state was a traceback
    ck = load_checkpoint(trained["summary"]["checkpoint"])
    path = tmp_path / "edited.pt"
    for state in (torch.tensor(3), torch.zeros(10, dtype=torch.uint8), ck["rng"]["cpu"].float(),
                  torch.zeros_like(ck["rng"]["cpu"])):
        torch.save({**ck, "rng": {"cpu": state}}, path)
        with pytest.raises(UserError, match=r"edited\.pt is a damaged checkpoint \(its rng entry, "):
            load_checkpoint(str(path))


def test_a_recorded_world_size_that_is_no_count_is_a_damaged_checkpoint():
    # an edited checkpoint's world_size of 'x' (no option, so no option's check read it) was a TypeError traceback in
    # the continued run's trained_batch, which divides the windows of a step by it
    for v in ("x", 0, True, 2.0):
        with pytest.raises(UserError, match=rf"^c\.pt records world_size {re.escape(repr(v))}, which is not what "
                                            r"train\.py writes \(a damaged or edited checkpoint\)"):
            train.check_recorded_options("c.pt", {"world_size": v}, continuing=True)
    train.check_recorded_options("c.pt", {"world_size": 2}, continuing=True)


def test_a_recorded_data_dir_that_is_no_path_is_passed_over(tmp_path):
    # an edited checkpoint's --data_dir of -1 was a TypeError traceback in eval.py (os.path.join) before any check
    assert train.default_data_dir({"args": {"data_dir": -1}, "data": {"data_dir": str(tmp_path)}}) == str(tmp_path)
    assert train.default_data_dir({"args": {"data_dir": 1.5}}) == "data"


@pytest.mark.parametrize("field, value", [("dtype", None), ("vocab_size", "512"), ("vocab_size", 0),
                                          ("vocab_size", True), ("tokenizer", 1.5), ("format", 2)])
def test_a_meta_json_field_that_cannot_be_read_is_named(env, tmp_path, field, value):
    """A meta.json of the right format with a field the reading needs missing or not a count (an edit by hand) is
    said by that field: a missing dtype was said as "format 1", the format this code reads, and a vocab_size of text
    went on to a numpy traceback in eval.py (its check of the ids) and "bad model options" in train.py. (A bool is no
    count, though an int to Python; another format is said by its format.)"""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "mini"), data / "mini")
    meta = json.loads((data / "mini" / "meta.json").read_text())
    if value is None:
        del meta[field]
    else:
        meta[field] = value
    (data / "mini" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=rf"meta.json is not a dataset this code reads \({field} "
                                        rf"{re.escape(repr(value))}\): "
                                        r"make it with `.*prepare.py --dataset text --source FILE --name "
                                        r"mini.*` again$"):
        train.load_meta(str(data), "mini")


@pytest.mark.parametrize("name, field, value, words", [
    ("mini", "vocab_size", 100, "vocab_size 612 for a vocabulary of 512"),
    ("mini", "vocab_size", -10, "vocab_size 502 for a vocabulary of 512"),
    ("chat", "has_mask", None, "has_mask None"), ("chat", "has_mask", False, "has_mask False for kind 'chat'"),
    ("mini", "val bytes", -5, "val bytes -5"),
    ("mini", "val bytes", "12", "val bytes '12'"), ("mini", "train tokens", None, "train tokens None"),
    # TypeErrors and a ValueError where train.py starts (the old version's warning, the packing warning)
    ("mini", "version", "x", "version 'x'"), ("chat", "pack", "x", "pack 'x'"),
    ("chat", "train in_pieces", "x", "train in_pieces 'x'"),
    ("mini", "tokenizer_hash", None, "tokenizer_hash None")])  # (said as "tokenizer ... changed" before)
def test_a_meta_json_edited_against_its_data_is_refused_in_one_line(env, trained, tmp_path, capsys, name, field, value,
                                                                     words):
    """meta.json read, but with a field that does not fit its data (an edit by hand): a vocab_size larger than the
    vocabulary's trained a model its tokenizer does not fit (gen.py refused it afterwards), a chat set's has_mask lost
    trained on every token and not the replies alone, and a val split's bytes gave bits per byte of -2709 (-5) or a
    TypeError traceback (text), as a version or pack of text did. Refused in one line naming the prepare.py
    command, the files untouched."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], name), data / name)
    path = data / name / "meta.json"
    meta = json.loads(path.read_text())
    if field == "vocab_size":
        meta[field] += value
    else:
        *split, k = field.split()
        where = meta["splits"][split[0]] if split else meta
        where[k] = value
        if value is None:
            del where[k]
    path.write_text(json.dumps(meta))
    files = {f: (data / name / f).read_bytes() for f in os.listdir(data / name)}
    argv = ["--data_dir", str(data), "--dataset", name, "--max_steps", "1", "--device", "cpu", "--n_layer", "1",
            "--n_embd", "32", "--n_head", "2", "--block_size", "32", "--output_checkpoint", str(tmp_path / "x.pt")]
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert re.search(rf"{re.escape(str(path))} is not a dataset this code reads \({re.escape(words)}\): run "
                     rf"`.*prepare\.py --dataset {name} --out_dir {re.escape(str(data))} --tokenizer .*` again$",
                     err.strip()), err
    if field == "vocab_size":  # (checked against the vocabulary eval.py reads, the checkpoint's)
        with pytest.raises(UserError, match=re.escape(words)):
            eval_py.evaluate_checkpoint(trained["summary"]["checkpoint"], datasets=[name], data_dir=str(data),
                                        samples=0)
    assert {f: (data / name / f).read_bytes() for f in os.listdir(data / name)} == files
    assert not os.path.exists(tmp_path / "x.pt")


def test_a_data_dir_that_is_a_datasets_own_folder_names_its_parent(env, tmp_path):
    """--data_dir data/mini (the dataset's folder, not the one that holds datasets): the missing-dataset line's
    command, `prepare.py --dataset mini --out_dir data/mini`, would have built a dataset inside the dataset."""
    import shutil
    shutil.copytree(os.path.join(env["data"], "mini"), tmp_path / "data" / "mini")
    with pytest.raises(UserError, match=rf"^--data_dir {re.escape(str(tmp_path / 'data' / 'mini'))} is "
                                        rf"the folder of the "
                                        rf"dataset 'mini', not a folder of datasets: give the folder that holds it, "
                                        rf"--data_dir {re.escape(str(tmp_path / 'data'))}$"):
        train.load_meta(str(tmp_path / "data" / "mini"), "mini")


def test_bits_per_byte_of_an_older_dataset_are_exact(env, tmp_path, capsys):
    """Datasets from before prepare.py's VERSION 2 counted <|endoftext|> as 13 bytes of text in meta.json, which
    made bits per byte ~1.6% low while they were the split's tokens/bytes: now they are the targets' own bytes, the
    same as a rebuilt dataset's, and such a dataset is no longer warned about."""
    import shutil
    shutil.copytree(os.path.join(env["data"], "mini"), tmp_path / "data" / "mini")
    meta_path = tmp_path / "data" / "mini" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["version"]
    for split in meta["splits"].values():
        split["bytes"] += 13 * split["documents"]
    meta_path.write_text(json.dumps(meta))
    old, new = train.load_meta(str(tmp_path / "data"), "mini"), train.load_meta(env["data"], "mini")
    assert "older prepare.py" not in capsys.readouterr().err
    scales = [train.bpb_scale(train.Windows(m, "val", 64), 8, env["enc"]) for m in (old, new)]
    assert scales[0] == scales[1] and scales[0] > 0


def test_evaluations_give_bits_per_byte_beside_loss_and_perplexity(env, tmp_path, capsys):
    """Issue 10: quality in bits per byte of text, comparable across vocabularies, in each eval line, the metrics and
    the closing summary: the bits of the targets scored over their own text's bytes (not the split's tokens/bytes,
    which is off for the few windows of a small --eval_batches); on chat data the assistant's replies'."""
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "3", "--eval_interval", "1",
                             "--save_interval", "0", "--batch_size", "2", "--eval_batches", "2"))
    out = capsys.readouterr().out
    meta, enc = train.load_meta(env["data"], "mini"), env["enc"]
    idx = train.eval_indices(train.Windows(meta, "val", 64).n, 2 * 2)
    recs = [r for r in read_metrics(s["metrics"]) if r["val_loss"] is not None]
    shown = re.findall(r"val ([\d.]+) \(ppl ([\d.]+), ([\d.]+) bpb\)", out)
    assert len(recs) == len(shown) == 3
    for r, (loss, ppl, bpb) in zip(recs, shown):
        expected = bits_per_byte_of(r["val_loss"], meta, enc, 64, idx)
        assert r["val_bpb"] == pytest.approx(expected, rel=1e-4) and float(bpb) == pytest.approx(expected, abs=1e-3)
        assert float(loss) == pytest.approx(r["val_loss"], abs=1e-4) \
            and float(ppl) == pytest.approx(r["val_ppl"], abs=0.01)
    split = meta["splits"]["val"]  # (the split's ratio is another figure here: the test can tell them apart)
    assert abs(recs[0]["val_bpb"] / (recs[0]["val_loss"] * split["tokens"] / (split["bytes"] * math.log(2))) - 1) > 0.01
    assert s["best_val_bpb"] == pytest.approx(min(r["val_bpb"] for r in recs), rel=1e-4)
    assert re.search(rf"best val loss [\d.]+ \(ppl [\d.]+, {s['best_val_bpb']:.3f} bpb\)", out)
    c = train.train(args_for(env, tmp_path / "chat", "--dataset", "chat", "--max_steps", "1", "--eval_interval", "1",
                             "--save_interval", "0"))
    out = capsys.readouterr().out
    meta = train.load_meta(env["data"], "chat")
    rec, = [r for r in read_metrics(c["metrics"]) if r["val_loss"] is not None]
    idx = train.eval_indices(train.Windows(meta, "val", 64).n, 8 * 16)
    assert rec["val_bpb"] == pytest.approx(bits_per_byte_of(rec["val_loss"], meta, enc, 64, idx), rel=1e-4)
    assert c["best_val_bpb"] == pytest.approx(rec["val_bpb"], rel=1e-4) and f"{rec['val_bpb']:.3f} bpb" in out


def test_val_targets_that_hold_no_text_give_no_bits_per_byte(env, tmp_path, capsys):
    """Where the targets an evaluation scores are all special tokens, which count no bytes (a chat set's windows whose
    scored targets are replies' <|im_end|> alone), there are no bits per byte of text to give: the lines show the loss
    and perplexity alone, the metrics and eval.py's row None (not a bpb of 0, nor a division by 0 bytes)."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "chat"), data / "chat")
    ids = np.fromfile(data / "chat" / "val.bin", dtype=np.uint16)
    mask = np.fromfile(data / "chat" / "val_mask.bin", dtype=np.uint8)
    (mask * (ids == env["enc"].encode_single_token(IM_END))).astype(np.uint8).tofile(data / "chat" / "val_mask.bin")
    s = train.train(args_for(env, tmp_path, "--data_dir", str(data), "--dataset", "chat", "--max_steps", "1",
                             "--eval_interval", "1", "--save_interval", "0"))
    out = capsys.readouterr().out
    rec, = [r for r in read_metrics(s["metrics"]) if r["val_loss"] is not None]
    assert rec["val_bpb"] is None and s["best_val_bpb"] is None and "bpb" not in out
    assert re.search(r"val [\d.]+ \(ppl [\d.]+\), lr", out)
    row, = eval_py.evaluate_checkpoint(s["checkpoint"], data_dir=str(data), samples=0, device="cpu",
                                       dtype="float32")["rows"]
    assert row["loss"] > 0 and row["bpb"] is None

def test_tokenizer_mismatch_is_an_error(env, trained, tmp_path):
    # a checkpoint made with one vocabulary on data prepared with another
    with pytest.raises(UserError, match="tokenizer"):
        train.train(args_for(env, tmp_path, "--dataset", "other", "--checkpoint", trained["summary"]["checkpoint"]))
    # --tokenizer that is not the data's
    with pytest.raises(UserError, match="--tokenizer"):
        train.train(args_for(env, tmp_path, "--dataset", "story", "--tokenizer", str(env["root"] / "tok300.tiktoken")))


def test_a_tokenizer_mismatchs_new_folder_is_one_of_that_vocabulary(env, tmp_path):
    """Two vocabularies in files of one name (every dataset's own is tokenizer.tiktoken, every run's checkpoint may be
    ckpt.pt) get two folders: given one, the second command made the first one's folder again in its vocabulary, the
    dataset the first's models were trained on gone, as the folder of its own was to prevent."""
    lines = (env["root"] / "tok300.tiktoken").read_text().splitlines(keepends=True)
    names = []
    for part, n in (("a", 300), ("b", 290), ("c", 300)):
        vocab = tmp_path / part / "tokenizer.tiktoken"
        vocab.parent.mkdir()
        vocab.write_text("".join(lines[:n]))
        with pytest.raises(UserError, match="in a folder of its own") as e:
            train.train(args_for(env, tmp_path, "--dataset", "story", "--tokenizer", vocab))
        command, new = re.search(r"`python prepare\.py ([^`]*)`, then --dataset (\S+)$", str(e.value)).groups()
        argv = shlex.split(command)
        assert argv[argv.index("--name") + 1] == new and prepare.is_dataset_name(new)
        names.append(new)
    assert names[0] != names[1] and names[0] == names[2]  # (the same vocabulary again: its folder, up to date)


def test_a_gpt2_vocabulary_models_command_packs_a_chat_set_at_its_context(env, tmp_path):
    """A GPT-2-vocabulary model (GPT-2 itself: context 1024) on a chat set of another vocabulary: the command that
    prepares the set for it names gpt2, which packs at 256 where a checkpoint's path packs at its context, so the
    fine-tune it led to warned of the packing. The command gives the model's context as --pack (a text set none)."""
    gpt2 = get_tokenizer("gpt2")
    argvs = {}
    for context in (32, 256):
        ck = str(tmp_path / f"g{context}.pt")
        save_checkpoint(ck, GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=context,
                                            vocab_size=gpt2.n_vocab)), gpt2, dataset="story")
        for dataset in ("chat", "story"):
            with pytest.raises(UserError, match=r"prepare the data with the checkpoint's tokenizer") as e:
                train.train(args_for(env, tmp_path / "out", "--checkpoint", ck, "--dataset", dataset,
                                     "--max_steps", "1",
                                     fresh=False))
            argvs[context, dataset] = shlex.split(re.search(r"`python prepare\.py ([^`]*)`", str(e.value)).group(1))
    chat32 = argvs[32, "chat"]
    assert chat32[chat32.index("--tokenizer") + 1] == "gpt2" and chat32[chat32.index("--pack") + 1] == "32"
    assert "--pack" not in argvs[256, "chat"]  # the default pack is that context already
    assert "--pack" not in argvs[32, "story"] and "--pack" not in argvs[256, "story"]  # text is never packed


def test_a_gpt2_vocabulary_models_missing_data_is_prepared_at_its_context(tmp_path, capsys):
    """The command that prepares data missing for a GPT-2-vocabulary model (GPT-2's folder, context 1024: `train.py
    --dataset chats.jsonl --init_from ~/models/gpt2`) names the model, as for a model of its own vocabulary. It named
    none: GPT-2's vocabulary by name packed the chat set at 256, and the fine-tune at the model's context warned of the
    packing, or was refused for a val split shorter than a window. eval.py's hint is the same."""
    gpt2 = get_tokenizer("gpt2")
    ck = str(tmp_path / "g.pt")
    save_checkpoint(ck, GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=32,
                                        vocab_size=gpt2.n_vocab)), gpt2, dataset="story")
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                                       {"role": "assistant", "content": f"{i}, friend."}]}) + "\n"
                              for i in range(100)), encoding="utf-8")
    data = str(tmp_path / "data")
    tune = ["--checkpoint", ck, "--data_dir", data, "--output_checkpoint", str(tmp_path / "ft" / "{dataset}.pt"),
            "--device", "cpu", "--no-color"]
    with pytest.raises(UserError, match=r"is your data, not a dataset prepare\.py made") as e:
        train.train(train.parse_args(tune + ["--dataset", str(source)]))
    argv = shlex.split(re.search(r"`python prepare\.py ([^`]*)`", str(e.value)).group(1))
    assert argv[argv.index("--tokenizer") + 1] == ck, argv
    prepare.main(argv)
    assert json.loads((tmp_path / "data" / "chats" / "meta.json").read_text())["pack"] == 32
    capsys.readouterr()
    assert train.train(train.parse_args(tune + ["--dataset", "chats", "--max_steps", "1"]))["steps"] == 1
    assert "packed in blocks" not in capsys.readouterr().err
    with pytest.raises(UserError, match=rf"no prepared dataset 'knowledge' .*: run `python prepare\.py --dataset "
                                        rf"knowledge --out_dir {re.escape(data)} --tokenizer {re.escape(ck)}` first$"):
        eval_py.evaluate_checkpoint(ck, ["knowledge"], data, device="cpu")


def test_a_chat_set_too_short_for_a_window_names_the_blocks_it_is_packed_in(tmp_path):
    """A chat set packed in blocks shorter than the model's windows (GPT-2's vocabulary by name packs at 256, GPT-2's
    context is 1024), its val a few conversations: "use a smaller --block_size or more data" named neither the size
    that trains nor that more conversations make no longer val a block. The error names the pack, and the command that
    packs it for the windows, which then train."""
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                                       {"role": "assistant", "content": f"{i}, friend."}]}) + "\n"
                              for i in range(20)), encoding="utf-8")
    data = str(tmp_path / "data")
    prepare.main(["--dataset", "chat", "--source", str(source), "--name", "c", "--pack", "32", "--out_dir", data])
    argv = ["--data_dir", data, "--dataset", "c", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
            "--block_size", "128", "--max_steps", "1", "--output_checkpoint", str(tmp_path / "m" / "{dataset}.pt"),
            "--device", "cpu", "--no-color"]
    with pytest.raises(UserError, match=r"val\.bin has \d+ tokens, fewer than one window of --block_size 128 \+ 1: use "
                                        r"--block_size 32, the blocks it is packed in, or prepare it in blocks of 128: "
                                        r"`python prepare\.py ([^`]*)`$") as e:
        train.train(train.parse_args(argv))
    prepare.main(shlex.split(e.value.args[0].rsplit("`python prepare.py ", 1)[1][:-1]))
    assert train.train(train.parse_args(argv))["steps"] == 1


def test_a_tokenizer_mismatch_names_a_command_that_fixes_it(env, tmp_path):
    """A model trained on a --source set, then the set prepared again with another vocabulary: the error gives the
    prepare.py command (--source and all) that prepares it with the model's vocabulary, read from the checkpoint
    itself, in a folder of its own (in place, it replaced the dataset the other vocabulary's models were trained on),
    after which the model trains on it there."""
    src = tmp_path / "mine.txt"
    src.write_text(story_text(60_000), encoding="utf-8")
    data = str(tmp_path / "data")
    prepare.prepare("text", source=str(src), out_dir=data, name="mine", vocab_size=300)
    first = train.train(train.parse_args(["--data_dir", data, "--dataset", "mine", "--output_checkpoint",
                                          str(tmp_path / "m" / "{dataset}_epoch{epoch}.pt"), "--n_layer", "1",
                                          "--n_embd", "32", "--n_head", "2", "--block_size", "32", "--max_steps", "1",
                                          "--device", "cpu", "--no-color"]))
    prepare.prepare("text", source=str(src), out_dir=data, name="mine", vocab_size=280)
    go_on = train.parse_args(["--checkpoint", first["checkpoint"], "--data_dir", data, "--max_steps", "1",
                              "--device", "cpu", "--no-color"])
    with pytest.raises(UserError, match=r"prepare the data with the checkpoint's tokenizer in a folder of "
                                        r"its own \(`python "
                                        r"prepare\.py ") as e:
        train.train(go_on)
    command, new = re.search(r"`python prepare\.py ([^`]*)`, then --dataset (\S+)\)", str(e.value)).groups()
    argv = shlex.split(command)
    assert argv[argv.index("--tokenizer") + 1] == os.path.abspath(first["checkpoint"]) and "--source" in argv
    assert argv[argv.index("--name") + 1] == new != "mine"
    def files(folder):
        return {f: (tmp_path / "data" / folder / f).read_bytes()
                for f in ("meta.json", "train.bin", "tokenizer.tiktoken")}
    mine = files("mine")
    prepare.main(argv)
    assert files("mine") == mine  # the 280-token set is as it was
    go_on.dataset, go_on.output_checkpoint = new, str(tmp_path / "ft" / "{dataset}_epoch{epoch}.pt")
    assert train.train(go_on)["steps"] == 1  # (another dataset's name: fine-tuning, its steps counted afresh)
    # a GPT-2-vocabulary model: the command says --tokenizer gpt2, or the set would keep the vocabulary it has (and
    # the same error come back)
    enc_ck, gpt2 = str(tmp_path / "g.pt"), get_tokenizer("gpt2")
    save_checkpoint(enc_ck, GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=32,
                                            vocab_size=gpt2.n_vocab)), gpt2, dataset="story")
    with pytest.raises(UserError, match=r"prepare the data with the checkpoint's tokenizer") as e:
        train.train(train.parse_args(["--checkpoint", enc_ck, "--data_dir", data, "--dataset", "mine", "--max_steps",
                                      "1", "--output_checkpoint", str(tmp_path / "ft" / "{dataset}.pt"), "--device",
                                      "cpu", "--no-color"]))
    argv = shlex.split(re.search(r"`python prepare\.py ([^`]*)`", str(e.value)).group(1))
    assert argv[argv.index("--tokenizer") + 1] == "gpt2" and argv[argv.index("--name") + 1] == "mine-gpt2"
    assert prepare.main(argv) is None and json.loads((tmp_path / "data" / "mine-gpt2" / "meta.json").read_text())[
        "tokenizer"] == "gpt2"
    assert files("mine") == mine


def test_data_without_a_val_split_names_the_command_that_makes_one(tmp_path):
    src = tmp_path / "mine.txt"
    src.write_text(story_text(20_000), encoding="utf-8")
    data = str(tmp_path / "data")
    prepare.prepare("text", source=str(src), out_dir=data, name="mine", val_fraction=0)
    with pytest.raises(UserError, match=r"val\.bin has no tokens \(--val_fraction 0\?\), and training evaluates on "
                                        r"the val split: run `python prepare\.py --dataset text --source \S+mine\.txt "
                                        r"--name mine --out_dir \S+data`$"):
        train.train(train.parse_args(["--data_dir", data, "--dataset", "mine", "--device", "cpu", "--no-color",
                                      "--output_checkpoint", str(tmp_path / "m" / "x.pt")]))
    # eval.py, which can read the train split instead: it said training evaluates on the val split
    save_checkpoint(str(tmp_path / "m.pt"), GPT(make_config("tiny", n_layer=1, n_embd=8, n_head=1, block_size=8,
                                                            vocab_size=get_tokenizer("gpt2").n_vocab)),
                    get_tokenizer("gpt2"))
    with pytest.raises(UserError, match=r"val\.bin has no tokens \(--val_fraction 0\?\): evaluate the train split "
                                        r"\(--split train\), or make a val split: run `python prepare\.py "):
        eval_py.evaluate_checkpoint(str(tmp_path / "m.pt"), ["mine"], data, device="cpu")
    assert eval_py.evaluate_checkpoint(str(tmp_path / "m.pt"), ["mine"], data, split="train", device="cpu")
    # a meta.json from before its "options": the command keeps what the dataset says of them (its own vocabulary
    # here), not GPT-2's
    prepare.prepare("text", source=str(src), out_dir=data, name="old", val_fraction=0, vocab_size=300)
    path = tmp_path / "data" / "old" / "meta.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "options"}))
    with pytest.raises(UserError, match=r"run `python prepare\.py --dataset text --source \S+mine\.txt --name old "
                                        r"--out_dir \S+data --vocab_size 300`$"):
        train.train(train.parse_args(["--data_dir", data, "--dataset", "old", "--device", "cpu", "--no-color",
                                      "--output_checkpoint", str(tmp_path / "m" / "x.pt")]))
    # a val split of one token (prepare.py gave a short file's val its <|endoftext|> alone) is too short, not missing:
    # the --val_fraction command above only found the dataset up to date
    (tmp_path / "data" / "old" / "val.bin").write_bytes(np.array([0], np.uint16).tobytes())
    meta = json.loads(path.read_text())
    meta["splits"]["val"]["tokens"] = 1
    path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"val\.bin has 1 token, fewer than one window of --block_size 256 \+ 1: "
                                        r"prepare more data$"):  # (no --block_size would do)
        train.train(train.parse_args(["--data_dir", data, "--dataset", "old", "--device", "cpu", "--no-color",
                                      "--output_checkpoint", str(tmp_path / "m" / "x.pt")]))


def test_a_split_shorter_than_a_window_counts_its_tokens_as_everywhere():
    """train.bin's 756977 tokens against --block_size 10000000: counted with commas, as every other line counts them."""
    meta = {"splits": {"train": {"tokens": 756_977}, "val": {"tokens": 41_322}}}
    e = train.split_too_short(meta, "data/story/train.bin", "train", 756_977, 10_000_000, evaluating=False)
    assert str(e) == "data/story/train.bin has 756,977 tokens, fewer than one window of --block_size 10,000,000 + 1: " \
                     "use a smaller --block_size or more data"


def test_a_val_split_shorter_than_a_window_names_a_val_fraction_that_makes_one(tmp_path):
    # a book prepared with a small --val_fraction: more data was the only fix named, for the book the user has
    src = tmp_path / "book.txt"
    src.write_text(story_text(20_000).replace("<|endoftext|>", "\n"), encoding="utf-8")  # one document
    data = str(tmp_path / "data")
    meta = prepare.prepare("text", source=str(src), out_dir=data, name="bk", val_fraction=0.01, vocab_size=300)
    assert 1 < meta["splits"]["val"]["tokens"] < 257
    argv = ["--data_dir", data, "--dataset", "bk", "--device", "cpu", "--no-color", "--max_steps", "1", "--n_layer",
            "1", "--n_embd", "32", "--n_head", "2", "--output_checkpoint", str(tmp_path / "m" / "x.pt")]
    with pytest.raises(UserError, match=r"fewer than one window of --block_size 256 \+ 1: use a smaller --block_size, "
                                        r"or a larger val split: `python prepare\.py ") as e:
        train.train(train.parse_args(argv))
    prepare.main(shlex.split(re.search(r"`python prepare\.py ([^`]*)`", str(e.value)).group(1)))
    assert train.train(train.parse_args(argv))["steps"] == 1


def test_epochs_already_done(env, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "is_interactive", lambda: False)
    ck = trained["summary"]["checkpoint"]  # 3 of 3 epochs done
    with pytest.raises(UserError) as e:
        train.train(args_for(env, tmp_path, "--checkpoint", ck))
    assert "--epochs" in str(e.value) and "--reset_epoch" in str(e.value)
    # --reset_epoch starts a new count from the same weights
    s = train.train(args_for(env, tmp_path, "--checkpoint", ck, "--reset_epoch", "--max_steps", "2"))
    assert s["steps"] == 2 and load_checkpoint(s["checkpoint"])["epoch"] == 0
    # in a terminal it asks how many more; Ctrl-D there ends in the same line, not an EOFError's traceback
    monkeypatch.setattr(train, "is_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: (_ for _ in ()).throw(EOFError("EOF when reading a line")))
    with pytest.raises(UserError, match=r"has already trained 3 epoch\(s\) of story \(--epochs 3\): pass a larger "
                                        r"--epochs"):
        train.train(args_for(env, tmp_path / "eof", "--checkpoint", ck))
    # an answer that is no number: one line saying that --epochs counts all of them ("²" passed isdigit(): a traceback)
    for answer in ("two", "²", "-1"):
        monkeypatch.setattr("builtins.input", lambda prompt: answer)
        with pytest.raises(UserError, match=rf"^'{answer}' is not a number of epochs: answer the question with one \(0 "
                                            rf"to stop\), or pass --epochs N for N in all, more than the 3 done$"):
            train.train(args_for(env, tmp_path / "nan", "--checkpoint", ck))


def test_epochs_added_at_the_prompt_train_as_the_same_epochs_given(env, tmp_path, monkeypatch, capsys):
    # answering "how many more?" with 1 is --epochs 2: a warmup given as a share of the run is of its new length (it
    # was of the finished run's, another learning rate than --epochs 2 gave)
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "1"))
    spe = first["steps"]

    def more(name, *extra):
        capsys.readouterr()
        s = train.train(args_for(env, tmp_path / name, "--checkpoint", first["checkpoint"], "--warmup", "80%",
                                 "--max_steps", 1, *extra, fresh=False))
        plan = re.search(r"\(warmup (\d+)\)", capsys.readouterr().out).group(1)
        return int(plan), load_checkpoint(s["checkpoint"])["args"]["warmup"], read_metrics(s["metrics"])[-1]["lr"]
    given = more("given", "--epochs", 2)
    monkeypatch.setattr(train, "is_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "1")
    asked = more("asked")
    assert asked == given and given[:2] == (round(0.8 * 2 * spe),) * 2, (asked, given)


def test_no_more_epochs_at_the_prompt_sums_up_the_finished_run(env, tmp_path, monkeypatch):
    # answering 0 returned 3 of a run's summary keys: a caller reading its checkpoint or val loss failed on a KeyError
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "1"))
    monkeypatch.setattr(train, "is_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "0")
    s = train.train(args_for(env, tmp_path, "--checkpoint", first["checkpoint"], fresh=False))
    assert s.keys() == first.keys()
    assert s["stopped"] == "already done" and (s["run_steps"], s["tokens"], s["steps"]) == (0, 0, first["steps"])
    same = ("epochs_done", "val_loss", "best_val_loss", "best_val_bpb", "checkpoint", "best_checkpoint", "metrics")
    assert [s[k] for k in same] == [first[k] for k in same] and s["val_loss"] is not None


def test_epoch_coverage(env):
    meta = train.load_meta(env["data"], "mini")
    w = train.Windows(meta, "train", 64)
    b = train.Batches(w, batch_size=4, grad_accum=3, seed=7)
    assert len(w) % 12 != 0  # the last step is short
    seen = []
    steps = list(b.epoch(0))
    assert len(steps) == b.steps_per_epoch == math.ceil(len(w) / 12)
    tokens = np.fromfile(os.path.join(meta["folder"], "train.bin"), dtype=np.uint16)
    for micro, n, n_targets in steps:
        assert n == sum(len(idx) for *_, idx in micro) and n_targets == 64 * n  # no mask: every target counts
        for x, y, m, idx in micro:
            assert x.shape == y.shape == (4, 64)
            for r, i in enumerate(idx):
                assert torch.equal(x[r], torch.from_numpy(tokens[i * 64:i * 64 + 64].astype(np.int64)))
                assert torch.equal(y[r], torch.from_numpy(tokens[i * 64 + 1:i * 64 + 65].astype(np.int64)))
            assert (y[len(idx):] == -1).all()  # padding rows are ignored
            seen += list(idx)
    assert sorted(seen) == list(range(len(w)))
    order0, order1 = train.epoch_order(len(w), 7, 0), train.epoch_order(len(w), 7, 1)
    assert not np.array_equal(order0, order1)
    assert np.array_equal(order0, train.epoch_order(len(w), 7, 0))
    assert np.array_equal(np.concatenate([idx for s, *_ in steps for *_, idx in s]), order0)
    # a resumed epoch yields exactly the rest
    rest = [idx for s, *_ in b.epoch(0, start=24) for *_, idx in s]
    assert np.array_equal(np.concatenate(rest), order0[24:])


@pytest.mark.parametrize("world,start", [(2, 0), (3, 0), (2, 10), (3, 7)])
def test_ranks_cover_the_epoch_once(env, world, start):
    """torchrun's ranks take disjoint shares of each step: together they see every window once, step by step the
    same windows as one process with a world times larger batch, with as many micro-batches on every rank."""
    w = train.Windows(train.load_meta(env["data"], "mini"), "train", 64)
    one = list(train.Batches(w, batch_size=4 * world, grad_accum=2, seed=7).epoch(1, start))
    ranks = [list(train.Batches(w, batch_size=4, grad_accum=2, seed=7, rank=r, world=world).epoch(1, start))
             for r in range(world)]
    assert len(w) % (8 * world) != 0 and all(len(steps) == len(one) for steps in ranks)
    seen = []
    for i, (micro, n, n_targets) in enumerate(one):
        step = [idx for steps in ranks for *_, idx in steps[i][0]]
        assert all(steps[i][1:] == (n, n_targets) for steps in ranks)  # every rank knows the step's size
        assert len({len(steps[i][0]) for steps in ranks}) == 1  # same number of micro-batches: same all-reduces
        assert sorted(np.concatenate(step)) == sorted(np.concatenate([idx for *_, idx in micro])) and \
            sum(map(len, step)) == n
        seen += list(np.concatenate(step))
    assert sorted(seen) == sorted(train.epoch_order(len(w), 7, 1)[start:])


def record_windows(monkeypatch):
    """A list that each training step appends the windows it trained on to (train.train_step recording them)."""
    seen = []
    real = train.train_step

    def recording(fwd, optimizer, scaler, micro, *a, **k):
        step = [int(i) for *_, idx in micro for i in idx]
        assert len(step) == len(set(step))  # a window at most once in a step
        seen.append(step)
        return real(fwd, optimizer, scaler, micro, *a, **k)
    monkeypatch.setattr(train, "train_step", recording)
    return seen


def test_epoch_orders_are_what_other_torch_versions_draw():
    """A checkpoint resumes on another machine (trained on a GPU machine's torch 2.11, continued on a laptop's 2.13):
    its epoch's order, drawn again there, must be the same permutation, or the resumed epoch repeats some windows and
    skips others without a word. torch does not promise its random streams across versions; these digests were
    drawn by torch 2.11.0 and 2.13.0 alike (numpy 2.4). Should a torch change them, epoch_order needs a source of its
    own (a new ORDER_SCHEME), and old checkpoints a way to know."""
    import hashlib
    digests = {(6500, 1337, 0): "307334c8f0b55a74", (6500, 1337, 3): "ebf2b55cf15374b2",
               (100000, 1, 1): "b502893ff757d2d7"}
    for (n, seed, epoch), digest in digests.items():
        order = train.epoch_order(n, seed, epoch)
        assert hashlib.sha256(order.astype("<i8").tobytes()).hexdigest()[:16] == digest, (n, seed, epoch)


def test_neighbouring_seeds_draw_unrelated_epoch_orders(env, tmp_path, monkeypatch):
    """Epoch orders seeded by seed + epoch made --seed 2's first epoch --seed 1's second: runs compared across seeds
    1, 2, 3 saw the same data orders, shifted by an epoch. A checkpoint from then goes on in its own orders, or its
    epoch, resumed midway, would repeat some windows and skip others."""
    n = len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64))
    for seed in range(3):
        assert not np.array_equal(train.epoch_order(n, seed + 1, 0), train.epoch_order(n, seed, 1))
    assert np.array_equal(train.epoch_order(n, 2, 0, scheme=1), train.epoch_order(n, 1, 1, scheme=1))  # (as it was)
    # a negative --seed (which --seed takes, as torch does) draws its orders too, others than its positive's
    s = train.train(args_for(env, tmp_path / "negative", "--dataset", "mini", "--seed", -1, "--n_layer", 1,
                             "--max_steps", 1, "--eval_interval", 0, "--save_interval", 0))
    assert s["steps"] == 1 and not np.array_equal(train.epoch_order(n, -1, 0), train.epoch_order(n, 1, 0))
    seen = record_windows(monkeypatch)
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "3", "--n_layer", "1",
                                 "--eval_interval", "0", "--save_interval", "0", "--max_steps", "2", "--seed", "5"))
    assert [i for step in seen for i in step] == train.epoch_order(n, 5, 0)[:6].tolist()
    old = torch.load(first["checkpoint"], weights_only=True)
    del old["order_scheme"]  # a checkpoint written before order_scheme
    torch.save(old, first["checkpoint"])
    seen.clear()
    train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--max_steps", "2", "--data_dir", env["data"],
                                  "--device", "cpu", "--no-color", "--eval_interval", "0", "--save_interval", "0"]))
    assert [i for step in seen for i in step] == train.epoch_order(n, 5, 0, scheme=1)[6:12].tolist()
    assert load_checkpoint(first["checkpoint"])["order_scheme"] == 1  # and it stays so
    # a checkpoint of a later version's scheme: its orders are not these, and its epoch resumed midway in them would
    # repeat some windows and skip others
    old = torch.load(first["checkpoint"], weights_only=True)
    torch.save(dict(old, order_scheme=3), first["checkpoint"])
    with pytest.raises(UserError, match=r"orders its epochs by a scheme this code does not know \(3\)"):
        train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--max_steps", "2",
                                      "--data_dir", env["data"],
                                      "--device", "cpu", "--no-color"]))


def test_a_run_stopped_and_continued_in_other_batches_trains_on_each_window_once_an_epoch(env, tmp_path, monkeypatch):
    """The promise of real epochs end to end, through the training loop's bookkeeping (not Batches alone): a run
    stopped by --max_steps and continued twice with another --batch_size and --grad_accum (global batches of 6, 4
    and 5 windows, none dividing the epoch, the second run crossing an epoch's end) trains on every window of an
    epoch once, in that epoch's order, the next epoch in another; --reset_epoch then begins the first order again."""
    n = len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64))
    assert n % 6 and n % 4 and n % 5
    seen = record_windows(monkeypatch)
    common = ["--data_dir", env["data"], "--device", "cpu", "--no-color", "--eval_interval", "0", "--save_interval",
              "0"]
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "2", "--batch_size", "3",
                                 "--grad_accum", "2", "--n_layer", "1", "--eval_interval", "0", "--save_interval", "0",
                                 "--max_steps", "3", "--seed", "5"))
    past_the_epoch = math.ceil((n - 18) / 4) + 2
    mid = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--batch_size", "4", "--grad_accum", "1",
                                        "--max_steps", str(past_the_epoch), *common]))
    assert mid["stopped"] == "max_steps" and mid["epochs_done"] == 1
    rest = train.train(train.parse_args(["--checkpoint", mid["checkpoint"], "--batch_size", "5", *common]))
    assert rest["stopped"] == "done" and rest["epochs_done"] == 2
    seed = load_checkpoint(rest["checkpoint"])["args"]["seed"]
    epochs = [train.epoch_order(n, seed, e).tolist() for e in (0, 1)]
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == list(range(n))
    assert [i for step in seen for i in step] == epochs[0] + epochs[1]
    seen.clear()
    again = train.train(train.parse_args(["--checkpoint", rest["checkpoint"], "--reset_epoch", "--epochs", "1",
                                          "--output_checkpoint", str(tmp_path / "again" / "{dataset}.pt"), *common]))
    assert again["epochs_done"] == 1 and [i for step in seen for i in step] == epochs[0]


def step_gradient(model, micro, n_targets=None, world=1, grad_clip=0.0, scaled=False):
    """train_step's loss and gradient, the optimizer kept from changing or clearing anything; scaled: with float16's
    loss scaling on."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    opt.zero_grad = lambda set_to_none=True: None
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    loss = train.train_step(model, opt, scaler, micro, torch.device("cpu"), torch.float32, grad_clip, n_targets, world)
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_grad_clip_scales_the_step_gradient_to_its_norm(env):
    w = train.Windows(train.load_meta(env["data"], "mini"), "train", 64)
    micro = list(w.micro_batches(np.arange(4), 4))
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=512))
    _, raw = step_gradient(model, micro)
    assert raw.norm() > 0.05
    _, clipped = step_gradient(model, micro, grad_clip=0.05)
    assert clipped.norm().item() == pytest.approx(0.05, rel=1e-4)
    torch.testing.assert_close(clipped / clipped.norm(), raw / raw.norm())  # the same direction


def test_a_float16_step_clips_its_true_gradients_not_the_loss_scaled_ones(env):
    """float16 scales the loss (by 65,536 at first) lest small gradients underflow: --grad_clip clips the gradients
    unscaled, else every step would be cut to a 65,536th of the clip."""
    w = train.Windows(train.load_meta(env["data"], "mini"), "train", 64)
    micro = list(w.micro_batches(np.arange(4), 4))
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=512))
    _, clipped = step_gradient(model, micro, grad_clip=0.05, scaled=True)
    assert clipped.norm().item() == pytest.approx(0.05, rel=1e-4)


def test_a_run_clips_its_gradients_to_its_grad_clip(env, tmp_path, monkeypatch):
    """--grad_clip reaches every step of a run (0: none clipped), not train_step's tests alone."""
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, *a, **k: (
        norms.append(max_norm), clip(params, max_norm, *a, **k))[1])
    for grad_clip, want in (("0.25", [0.25] * 2), ("0", [])):
        norms.clear()
        train.train(args_for(env, tmp_path / grad_clip, "--dataset", "mini", "--max_steps", "2", "--eval_interval", "0",
                             "--grad_clip", grad_clip))
        assert norms == want


def test_evaluate_turns_dropout_off_and_gives_the_model_back_as_it_was(env):
    """Val loss with dropout on is noise: the best checkpoint and --patience would compare it."""
    w = train.Windows(train.load_meta(env["data"], "mini"), "val", 64)
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=512,
                                        dropout=0.5))
    model.eval()
    want = train.evaluate(model, w, 4, 2 * 4, torch.device("cpu"), torch.float32)
    assert not any(m.training for m in model.modules())  # eval.py's and gen.py's model stays in eval mode
    model.train()
    assert [train.evaluate(model, w, 4, 2 * 4, torch.device("cpu"), torch.float32) for _ in range(2)] == [want, want]
    assert model.training


def test_val_loss_is_the_mean_over_every_counted_target_however_the_windows_are_batched(env):
    """Chat windows hold different numbers of assistant targets, and the last batch may be short: the val loss is the
    mean per counted target, as the training loss is, whatever --batch_size cuts them into (a mean of the batches'
    means would weigh a batch of few targets as much as one of many)."""
    meta = train.load_meta(env["data"], "chat")
    w = train.Windows(meta, "val", 64)
    idx = train.eval_indices(len(w), 6)
    assert len(idx) == 6 and len({w.count_targets([i]) for i in idx}) > 2  # uneven
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64,
                                        vocab_size=meta["vocab_size"]))
    x, y, m = (torch.from_numpy(a) for a in w.get(idx))
    with torch.no_grad():
        logits = model.lm_head(model._trunk(x))
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    want = ce[m.flatten() != 0].mean().item()
    for batch_size in (6, 4, 1):  # 4: a short last batch
        loss = train.evaluate(model, w, batch_size, 6, torch.device("cpu"), torch.float32)
        assert loss == pytest.approx(want, rel=1e-5), batch_size


def test_ranks_evaluate_shares_of_the_val_windows_that_add_up_to_one_process(env, monkeypatch):
    """Under torchrun each rank evaluates every world-th of the windows, and their sums are all-reduced: the val loss is
    one process's, over the same windows, each once. Each rank taking every window from its rank on (rank 0 the whole
    split alone, the others most of it again) passed every test: the two-rank run's val loss moved by 2e-5, inside
    its float tolerance (a hand-made mutation)."""
    meta = train.load_meta(env["data"], "chat")
    w = train.Windows(meta, "val", 64)
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64,
                                        vocab_size=meta["vocab_size"]))
    cpu = torch.device("cpu")
    one = train.evaluate(model, w, 2, 6, cpu, torch.float32)
    sums = []  # each rank's (loss sum, targets), as it hands them to the all-reduce
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: sums.append(t.clone()))
    for rank in (0, 1):
        train.evaluate(model, w, 2, 6, cpu, torch.float32, dist=types.SimpleNamespace(rank=rank, world=2))
    loss_sum, targets = sums[0] + sums[1]
    assert int(targets) == w.count_targets(train.eval_indices(len(w), 6))  # each window once
    assert sums[0][1] and sums[1][1]  # (both ranks had a share)
    assert loss_sum.item() / targets.item() == pytest.approx(one, rel=1e-5)


def test_evaluation_windows_spread_over_the_split():
    """Not the first windows alone: a val split's first documents are not the split."""
    idx = train.eval_indices(1000, 10)
    assert len(set(idx.tolist())) == 10 and idx[0] == 0 and idx[-1] == 999 and np.diff(idx).min() >= 100
    assert train.eval_indices(7, 10).tolist() == list(range(7))


@pytest.mark.parametrize("optimizer", train.OPTIMIZERS)
def test_the_learning_rate_schedule_reaches_every_parameter_group(env, tmp_path, optimizer):
    """Muon's AdamW half (embeddings, norms) and AdamW's no-decay group follow the warmup and decay too, not the
    peak."""
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "3", "--warmup", "10", "--lr", "1e-3",
                             "--optimizer", optimizer, "--eval_interval", "0"))
    opt = torch.load(s["checkpoint"], weights_only=True)["optimizer"]
    groups = [g for part in ((opt["muon"], opt["adamw"]) if "muon" in opt else (opt,)) for g in part["param_groups"]]
    assert len(groups) >= 2 and {g["lr"] for g in groups} == {train.lr_at(2, 1e-3, 1e-4, 10, 3)}


def test_all_padding_micro_batch_changes_nothing(env):
    """At an epoch's end a rank may have no windows left but must still run its micro-batches (DDP all-reduces in
    them): they carry weight 0, and their loss over no targets is 0, not nan, so the step's loss stays a number."""
    w = train.Windows(train.load_meta(env["data"], "mini"), "train", 64)
    real, empty = list(w.micro_batches(np.array([3, 5]), 4, count=2))
    assert len(empty[3]) == 0 and (empty[1] == -1).all()  # every target ignored
    losses, grads = [], []
    for micro in ([real], [real, empty]):
        torch.manual_seed(0)
        model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=512))
        loss, grad = step_gradient(model, micro)
        losses.append(loss)
        grads.append(grad)
    assert torch.isfinite(losses[1]) and torch.allclose(losses[0], losses[1])
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_a_step_is_the_same_however_it_is_cut_into_micro_batches_and_ranks(env):
    """On chat data, windows hold different numbers of assistant targets: the step's loss is the mean over all of
    them, whether it runs as one batch, as accumulated micro-batches or on several ranks (whose gradients DDP
    averages), and it is a mean per target, as evaluate() measures."""
    meta = train.load_meta(env["data"], "chat")
    w = train.Windows(meta, "train", 64)
    idx = np.arange(8)
    per_window = [w.count_targets([i]) for i in idx]
    assert len(set(per_window)) > 2 and w.count_targets(idx) == sum(per_window)  # uneven: a mean of means would differ
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64,
                                        vocab_size=meta["vocab_size"]))
    loss, grad = step_gradient(model, list(w.micro_batches(idx, 8)))
    x, y, m = (torch.from_numpy(a) for a in w.get(idx))
    logits = model.lm_head(model._trunk(x))  # (8, 64, padded vocabulary): the softmax the model's loss takes
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")  # (8*64,)
    assert loss.item() == pytest.approx((ce[m.flatten() != 0].mean()).item(), rel=1e-5)  # the mean per counted target
    for batch_size in (4, 1, 3):  # 3: a padded last micro-batch
        loss_b, grad_b = step_gradient(model, list(w.micro_batches(idx, batch_size)))
        assert loss_b.item() == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(grad_b, grad, atol=1e-6, rtol=1e-4)
    # two ranks of 2 x 2 windows, as Batches gives them with the step's count; DDP would average their gradients
    ranks = [list(train.Batches(w, batch_size=2, grad_accum=2, seed=0, rank=r, world=2).epoch(0))[0] for r in (0, 1)]
    shares = [step_gradient(model, micro, n_targets, world=2) for micro, _, n_targets in ranks]
    order = np.concatenate([idx for micro, *_ in ranks for *_, idx in micro])
    loss_1, grad_1 = step_gradient(model, list(w.micro_batches(order, 8)))
    assert sum(loss for loss, _ in shares).item() == pytest.approx(loss_1.item(), rel=1e-5)
    torch.testing.assert_close(sum(g for _, g in shares) / 2, grad_1, atol=1e-6, rtol=1e-4)


def test_windows_are_read_with_pread_not_through_a_memmap(env, monkeypatch):
    # every page a memmap has read stays in the process's RSS while it is open: an epoch's random windows showed the
    # whole train.bin held (660 MB after an eighth of an epoch of 1.65M windows; 20 GB for a 10B-token set)
    meta = train.load_meta(env["data"], "chat")
    ids = np.fromfile(os.path.join(meta["folder"], "train.bin"), dtype=meta["dtype"])
    mask = np.fromfile(os.path.join(meta["folder"], "train_mask.bin"), dtype=np.uint8)

    def no_memmap(*a, **k):
        raise AssertionError("np.memmap of a split's file")
    monkeypatch.setattr(np, "memmap", no_memmap)
    monkeypatch.setattr(mmap, "mmap", no_memmap)
    w = train.Windows(meta, "train", 64)
    assert len(w) == (len(ids) - 1) // 64
    idx = np.array([len(w) - 1, 0, 7])
    x, y, m = w.get(idx)
    for r, i in enumerate(idx):
        assert x[r].tolist() == ids[i * 64:i * 64 + 64].tolist() \
            and y[r].tolist() == ids[i * 64 + 1:i * 64 + 65].tolist()
        assert m[r].tolist() == mask[i * 64 + 1:i * 64 + 65].tolist()
    assert w.count_targets(idx) == int(m.sum()) > 0


def test_masked_loss_counts_assistant_tokens_only(env):
    meta = train.load_meta(env["data"], "chat")
    w = train.Windows(meta, "train", 64)
    mask = np.fromfile(os.path.join(meta["folder"], "train_mask.bin"), dtype=np.uint8)
    (x, y, m, idx), = list(w.micro_batches(np.array([3, 5, 8]), 4))
    for r, i in enumerate(idx):
        assert torch.equal(m[r], torch.from_numpy(mask[i * 64 + 1:i * 64 + 65]))  # the mask of each target
    assert 0 < int(m[:3].sum()) < 3 * 64
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64,
                                        vocab_size=meta["vocab_size"]))
    # the same loss through the model's other path: targets outside the mask set to -1 (ignored)
    _, manual = model(x, torch.where(m == 0, -1, y))
    opt = model.configure_optimizer(0.0, 0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train.train_step(model, opt, scaler, [(x, y, m, idx)], torch.device("cpu"), torch.float32, 1.0)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # targets outside the mask do not matter
    y2 = torch.where((m == 0) & (y != -1), (y + 1) % meta["vocab_size"], y)
    assert not torch.equal(y, y2)
    loss2 = train.train_step(model, opt, scaler, [(x, y2, m, idx)], torch.device("cpu"), torch.float32, 1.0)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_compiled_backward_that_fails_to_build_redoes_the_step_eagerly(env, capsys):
    """torch.compile builds the backward at its first call: a failure there (Ctrl-C in a terminal reaches the C++
    compiler too, a CppCompileError) ended the run in a traceback, the save Ctrl-C promises not made. Now one warning
    and the step redone eagerly, gradients from scratch: the same weights as an eager step."""
    w = train.Windows(train.load_meta(env["data"], "chat"), "train", 64)
    micro = list(w.micro_batches(np.array([3, 5, 8, 9]), 2))  # two micro-batches: the failure comes in the second
    assert len(micro) == 2
    cpu = torch.device("cpu")
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64,
                                                  vocab_size=w.meta["vocab_size"])))
    eager, failing = models

    class BuildFails(torch.autograd.Function):  # what a compiled graph whose backward cannot be built does
        @staticmethod
        def forward(ctx, loss):
            return loss.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("CppCompileError: C++ compile error")

    calls = []

    def compiled(*args):
        logits, loss = failing(*args)
        calls.append(1)
        return logits, (BuildFails.apply(loss) if len(calls) == 2 else loss)

    fwd = train.Forward(failing)
    fwd.fn = compiled
    results = []
    for model, f in ((eager, eager), (failing, fwd)):
        opt = model.configure_optimizer(0.01, 0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        results.append(train.train_step(f, opt, scaler, micro, cpu, torch.float32, 1.0))
    assert fwd.fn is failing  # eager from then on
    assert "torch.compile failed (RuntimeError: CppCompileError" in capsys.readouterr().err
    assert results[1].item() == pytest.approx(results[0].item(), rel=1e-6)
    for a, b in zip(eager.parameters(), failing.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_compile_that_fails_runs_eagerly_but_running_out_of_memory_does_not(monkeypatch, capsys):
    """--compile on a machine without a working C++ compiler: the compiled forward fails at its first call (inductor's
    InvalidCxxCompiler), and the run goes on eagerly after one warning, with eager's numbers; torch.compile itself
    failing (a Python it does not support) is one warning too. Running out of memory is no compile failure: raised, for
    the run's own out-of-memory line, the compiled model kept."""
    torch.manual_seed(0)
    model = GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=16, vocab_size=64))
    x = torch.randint(0, 64, (2, 16))
    want = model(x, x)[1]

    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    fwd = train.Forward(model)
    fwd.fn = no_compiler
    assert fwd(x, x)[1].item() == want.item() and fwd.fn is model
    fwd(x, x)
    assert capsys.readouterr().err.count("torch.compile failed (RuntimeError: InvalidCxxCompiler") == 1

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    fwd.fn = no_memory
    with pytest.raises(torch.OutOfMemoryError):
        fwd(x, x)
    assert fwd.fn is no_memory and capsys.readouterr().err == ""

    def unsupported(model):
        raise RuntimeError("Dynamo is not supported on Python 3.99+")
    monkeypatch.setattr(torch, "compile", unsupported)
    fwd = train.Forward(model, compile=True)
    assert fwd.fn is model and fwd(x, x)[1].item() == want.item()
    assert "torch.compile unavailable (RuntimeError: Dynamo is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", train.OPTIMIZERS)
def test_a_step_without_assistant_tokens_leaves_the_weights(env, optimizer):
    """A step whose windows hold no target under the loss mask has nothing to learn: the weights stay as they are
    (the optimizer stepped on its zero gradient, and momentum and weight decay moved every weight by about lr)."""
    w = train.Windows(train.load_meta(env["data"], "chat"), "train", 64)
    (x, y, m, idx), = list(w.micro_batches(np.array([3, 5]), 2))
    torch.manual_seed(0)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64,
                                        vocab_size=w.meta["vocab_size"]))
    opt = model.configure_optimizer(0.1, 1e-2, optimizer=optimizer)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cpu = torch.device("cpu")
    train.train_step(model, opt, scaler, [(x, y, m, idx)], cpu, torch.float32, 1.0)  # momentum to carry on
    before = [p.detach().clone() for p in model.parameters()]
    loss = train.train_step(model, opt, scaler, [(x, y, torch.zeros_like(m), idx)], cpu, torch.float32, 1.0)
    assert loss.item() == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_logged_train_loss_is_per_assistant_token(env, tmp_path):
    """Chat windows that hold no assistant token count no target: the train loss logged is the mean per target trained
    on, as evaluate() measures it (such windows were steps of loss 0, which pulled the logged loss towards 0)."""
    words = story_text(30_000).split()
    convs = [[{"role": "user", "content": " ".join(words[i * 80:(i + 1) * 80])},
              {"role": "assistant", "content": "Yes."}]
             for i in range(40)]  # long questions, short replies: many windows of 64 see only a question
    write_dataset(str(tmp_path / "data"), "questions", env["enc"], env["tok"], convs, chat=True)
    meta = train.load_meta(str(tmp_path / "data"), "questions")
    w = train.Windows(meta, "train", 64)
    assert 0 < sum(w.count_targets([i]) == 0 for i in range(len(w))) < len(w)
    # a learning rate too small to move the weights: the logged loss is the one of the final weights. Evaluations
    # take every val window (the default 8 of its 11, spread, miss its four short replies: refused, db08661)
    s = train.train(args_for(env, tmp_path / "out", "--data_dir", tmp_path / "data", "--dataset", "questions",
                             "--eval_batches", "100", "--batch_size", "1", "--lr", "1e-12", "--min_lr", "1e-12",
                             "--weight_decay", "0",
                             "--eval_interval", "0", "--log_interval", "100"))
    recs = [r for r in read_metrics(s["metrics"]) if r["train_loss"] is not None]
    assert recs[-1]["step"] == len(w)  # one record for the whole epoch
    model, _, _ = load_model(s["checkpoint"])
    loss = train.evaluate(model, w, 16, len(w), torch.device("cpu"), torch.float32)
    assert recs[-1]["train_loss"] == pytest.approx(loss, rel=1e-3)
    # logged every step: a step of such a window has no train loss to show (it was 0.0, a perfect model's)
    s = train.train(args_for(env, tmp_path / "each", "--data_dir", tmp_path / "data", "--dataset", "questions",
                             "--eval_batches", "100", "--batch_size", "1", "--eval_interval", "0", "--log_interval",
                             "0.01"))
    steps = read_metrics(s["metrics"])  # the last with the end of epoch evaluation
    assert len(steps) == len(w)
    assert sum(r["train_loss"] is None for r in steps) == sum(w.count_targets([i]) == 0 for i in range(len(w)))


def test_a_run_removes_at_once_what_its_killed_saves_left(env, tmp_path):
    """A save killed mid-write (kill -9, the OOM killer) leaves its temporary file, a checkpoint's size, which a save
    removed only once it had been quiet 10 minutes (another machine may write to a shared folder): the run that holds
    the locks of those names removes it at its start. Another dataset's, and a live process's, stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now
    tmp_path.mkdir(exist_ok=True)
    own = [f"mini_epoch3.pt.{dead.pid}.tmp", f"mini_best.pt.{dead.pid}.tmp", f"mini_metrics.jsonl.{dead.pid}.tmp"]
    kept = [f"other_epoch1.pt.{dead.pid}.tmp", f"mini_epoch1.pt.{os.getppid()}.tmp"]  # another run's; a live pid's
    for name in own + kept:
        (tmp_path / name).write_bytes(b"half a checkpoint")  # just written: not quiet for 10 minutes
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", 1))
    left = set(os.listdir(tmp_path))
    assert not left & set(own) and set(kept) <= left, left


def test_val_windows_without_an_assistant_token_are_refused_before_training(env, tmp_path, monkeypatch):
    """An evaluation of chat windows that hold no assistant token measures nothing: it was a val loss of 0, the best
    file's, which no later evaluation could beat. The val split's first window of 4 tokens ends before the first reply
    (a conversation opens with a user or system turn), and --eval_batches 1 --batch_size 1 evaluates it alone."""
    monkeypatch.setattr(train, "train_step", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(UserError, match=r"the 1 window\(s\) of 4 tokens evaluated in .*val.bin hold no assistant "
                                        r"token.*a larger --eval_batches.*a larger --block_size"):
        train.train(args_for(env, tmp_path, "--dataset", "chat", "--block_size", "4", "--batch_size", "1",
                             "--eval_batches", "1", "--max_steps", "2"))
    assert not os.listdir(tmp_path)  # nothing written


def test_the_train_command_prepare_py_ends_with_trains_on_that_dataset(env, tmp_path, monkeypatch, capsys):
    """prepare.py's last line names the train.py command for the dataset it made (or found up to date), and that
    command pasted trains on it: a new model on a set in data/; one packed in blocks of 32 in another folder
    (--data_dir, --block_size); a chat set made in a checkpoint's vocabulary, fine-tuning that checkpoint, whose own
    data folder holds another `chat` set in the same vocabulary (train.py's default --data_dir, which the command
    must not leave to it), also when prepare.py is run again without --tokenizer (the set's own is the default); one
    packed for more than that checkpoint's context, with no --block_size past that context."""
    monkeypatch.chdir(tmp_path)
    script = os.path.join(ROOT, "train.py")  # (run from outside the repository: its whole path)
    story = train.train(args_for(env, "models", "--dataset", "mini", "--max_steps", "1"))  # trained on env's data/
    ckpt = os.path.relpath(story["checkpoint"])
    text = tmp_path / "notes.txt"
    text.write_text(story_text(30_000), encoding="utf-8")
    talk = tmp_path / "talk.jsonl"
    talk.write_text("\n".join(json.dumps({"messages": c}) for c in chat_docs(story_text(30_000), 120)),
                    encoding="utf-8")
    small = ["--max_steps", "1", "--batch_size", "2", "--eval_batches", "1", "--device", "cpu", "--no-color"]
    cases = [  # (prepare.py's arguments, the command, what the run trains: data folder, a checkpoint it starts from)
        (["--dataset", "text", "--source", str(text), "--name", "notes", "--vocab_size", "300"],
         f"python {shlex.quote(script)} --dataset notes", os.path.join("data", "notes"), None),
        (["--dataset", "chat", "--source", str(talk), "--name", "talk", "--vocab_size", "300", "--pack", "32",
          "--out_dir", "other"],
         f"python {shlex.quote(script)} --dataset talk --data_dir other --block_size 32", os.path.join("other", "talk"),
         None),
        (["--dataset", "chat", "--source", str(talk), "--tokenizer", ckpt],
         f"python {shlex.quote(script)} --dataset chat --data_dir data --checkpoint {ckpt}",
         os.path.join("data", "chat"), ckpt),
        # packed for more than the checkpoint's context (64): fine-tuned at that context, no --block_size it cannot take
        (["--dataset", "chat", "--source", str(talk), "--tokenizer", ckpt, "--pack", "128", "--name", "wide"],
         f"python {shlex.quote(script)} --dataset wide --data_dir data --checkpoint {ckpt}",
         os.path.join("data", "wide"), ckpt),
    ]
    for argv, command, folder, start in cases:
        # built, then found up to date: without --tokenizer, whose default is the vocabulary the set was made in, the
        # command still fine-tunes that checkpoint
        at = argv.index("--tokenizer") if "--tokenizer" in argv else len(argv)
        kept = argv[:at] + argv[at + 2:]
        for again in (argv, kept):
            capsys.readouterr()
            prepare.main(again)
            assert capsys.readouterr().out.splitlines()[-1] == f"  train on it: {command}"
        pasted = shlex.split(command)
        assert pasted[:2] == ["python", script]
        new = [] if start else ["--n_layer", "1", "--n_head", "2", "--n_embd", "32"]
        out = os.path.join("runs", os.path.basename(folder), "{dataset}.pt")
        s = train.main(pasted[2:] + small + new + ["--output_checkpoint", out])
        ran = load_checkpoint(s["checkpoint"])
        assert ran["data"]["folder"] == folder and ran["data"]["data_dir"] == os.path.abspath(os.path.dirname(folder))
        assert ran["args"]["checkpoint"] == start


def test_packed_chat_trains_on_whole_assistant_replies(env, tmp_path, capsys):
    """A chat set from prepare.py, packed for the windows: the masked targets of each window decode to whole assistant
    replies with their <|im_end|>, exactly those of the data; fine-tuning a story model on it takes a third of the lr.
    Prepared with the model as --tokenizer and no --pack, it is packed at the model's context, which fine-tuning
    trains at: no --pack, --block_size nor warning (it was packed at 256, and the run warned)."""
    sents = [t.strip() for t in story_text(20_000).replace("\n", " ").split(".") if len(t.strip()) > 10]
    convs = [[{"role": "user", "content": f"Tell me sentence {i}."},
              {"role": "assistant", "content": sents[i][:60] + "."}]
             for i in range(60)]  # each reply shorter than a window: a window holds it whole
    for i, conv in enumerate(convs[::4]):  # some longer conversations, cut into pieces before a turn
        conv += [{"role": "user", "content": f"And then {i}?"},
                 {"role": "assistant", "content": sents[i + 60][:60]}] * 3
    src = tmp_path / "convs.jsonl"
    src.write_text("\n".join(json.dumps({"messages": c}) for c in convs), encoding="utf-8")
    story = train.train(args_for(env, tmp_path / "story", "--dataset", "mini", "--max_steps", "1"))  # context 64
    meta = prepare.prepare("chat", source=str(src), tokenizer=story["checkpoint"], out_dir=str(tmp_path / "data"),
                           name="packed")
    assert meta["pack"] == 64
    meta = train.load_meta(str(tmp_path / "data"), "packed")
    enc = env["enc"]
    for split, part in (("train", convs[:-6]), ("val", convs[-6:])):
        w = train.Windows(meta, split, 64)
        ends = prepare.document_ends(np.fromfile(w.path, dtype=meta["dtype"]), enc.eot_token)
        assert (np.diff(ends, prepend=0) > 1).sum() > len(part)  # conversations and pieces of the longer ones
        spans = []
        for x, y, m, idx in w.micro_batches(np.arange(len(w)), 16):
            for r in range(len(idx)):
                assert m[r, -1] == 0  # the target taken from the next block never counts
                run = []
                for t, on in zip(y[r].tolist(), m[r].tolist()):
                    if on:
                        run.append(t)
                    elif run:
                        spans.append(enc.decode(run))
                        run = []
                assert not run  # a reply never runs into the next window
        assert Counter(spans) == \
            Counter(msg["content"] + IM_END for c in part for msg in c if msg["role"] == "assistant")

    capsys.readouterr()
    s = train.train(args_for(env, tmp_path, "--data_dir", str(tmp_path / "data"), "--dataset", "packed", "--checkpoint",
                             story["checkpoint"], "--max_steps", "1", fresh=False))
    ran = load_checkpoint(s["checkpoint"])["args"]
    assert ran["lr"] == pytest.approx(train.DEFAULT_LR["tiny"] / train.FINETUNE_LR_DIVISOR) and ran["block_size"] == 64
    assert "packed in blocks" not in capsys.readouterr().err  # windows of 64 match the packing: no warning
    train.train(args_for(env, tmp_path / "b48", "--data_dir", str(tmp_path / "data"), "--dataset", "packed",
                         "--block_size", "48", "--max_steps", "1"))
    err = capsys.readouterr().err
    assert "packed in blocks of 64 tokens but windows have 48" in err and "prepare.py" in err and "--pack 48" in err
    # that model's context is 48: no --block_size can match the packing, so none is advised (64 was, then refused)
    assert "use --block_size" not in err
    meta = {"pack": 64, "folder": "data/x", "dataset": "chat", "options": {}}
    assert "use --block_size 64 (or a multiple)" in train.packing_warning(meta, 48, 128)
    # windows of several blocks (GPT-2's 1024 on the default pack of 256) keep the blocks whole, but conversations cut
    # in pieces at the pack size lie apart, which the larger window could have held: said, with the command that packs
    # them at the window's size; nothing when none was cut
    cut = dict(meta, splits={"train": {"in_pieces": 7}})
    assert train.packing_warning(cut, 128, 128) == (
        "data/x is packed in blocks of 64 tokens, but windows have 128: its 7 train conversations longer "
        "than 64 tokens "
        "are cut in pieces that lie in blocks apart, where windows of 128 could hold those up to 128 whole; prepare "
        "the data again for them: `python prepare.py --dataset chat --name x --pack 128`")
    assert train.packing_warning(cut, 64, 128) is None  # the windows are the blocks: nothing to gain
    assert train.packing_warning(dict(meta, splits={"train": {"in_pieces": 0}}), 128, 128) is None
    assert train.packing_warning(meta, 128, 128) is None  # (a meta.json without the counts)
    # where conversations are in pieces a multiple is warned of too: the fix named for other windows is the pack alone
    assert "use --block_size 64, or prepare" in train.packing_warning(cut, 48, 128)


def test_default_warmup_is_long_enough_for_a_short_run():
    # 2% of a short run is a handful of steps, too few for tiny's lr 4e-3: at least 100, or 10% of the run
    assert [train.default_warmup(n) for n in (5, 797, 3_000, 10_000, 200_000)] == [1, 80, 100, 200, 1000]


def test_lr_schedule():
    lrs = [train.lr_at(s, 1.0, 0.1, 10, 110) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))  # cosine falls
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) and lrs[119] == 0.1
    assert lrs[10] == max(lrs) == pytest.approx(1.0)  # the decay starts at the peak: the warmup never passes it
    assert train.lr_at(10, 1.0, 0.1, 10, 10) == 0.1  # past the end of a schedule that is all warmup: min_lr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA is Linux's")
def test_train_py_run_as_a_command_caps_its_memory_at_the_machines(tmp_path):
    """train.py --model gpt2 --batch_size 16 in a 4 GB cgroup (or on a 4 GB machine) was killed by the kernel at its
    first step, without a word; capped (common.cap_memory), its allocation fails and the run says "out of memory
    with --batch_size 16 x --block_size 1024: use a smaller --batch_size ... --recompute_activations", its checkpoint
    kept."""
    code = ("import resource, runpy, sys\nsys.argv = ['train.py', '--dataset', 'none', '--data_dir', sys.argv[1]]\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import model\nprint(resource.getrlimit(resource.RLIMIT_DATA)[0] == model.physical_memory())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split()[-1:] == [str(not torch.cuda.is_available())], out.stdout + out.stderr


@pytest.mark.parametrize("error, oom", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 68719476736 bytes"), True),
    (MemoryError("64 GiB of weights, more than the machine's 24 GiB of memory"), True),
    (RuntimeError("Storage size calculation overflowed with sizes=[1000000000000, 10000000000]"), True),
    # Windows' allocator says it so (_aligned_malloc; alloc_cpu.cpp), and there physical_memory() is None, so GPT's own
    # MemoryError check is off and this is the only sign of a model too large
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                  "allocate 68719476736 bytes."), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),  # a bug: its traceback
])
def test_a_model_build_that_fails_for_memory_is_one_line_and_a_bug_is_not(env, tmp_path, monkeypatch, error, oom):
    """train.py's model build and checkpoint.load_model (gen.py, eval.py, serve.py) say "does not fit in memory" for an
    allocation that failed for its size; any other error keeps its traceback instead of being called a memory one."""
    import checkpoint

    def fail(config):
        raise error
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1"))
    for module, call in ((train, lambda: train.train(args_for(env, tmp_path / "b", "--dataset", "mini",
                                                              "--max_steps", "1"))),
                         (checkpoint, lambda: load_model(first["checkpoint"]))):
        monkeypatch.setattr(module, "GPT", fail)
        with pytest.raises(UserError if oom else type(error)) as e:
            call()
        assert ("does not fit in memory" in str(e.value)) is oom
        assert (str(error)[:40] in str(e.value)) if oom else e.value is error


def test_bad_options_are_user_errors(env, tmp_path, trained, capsys):
    with pytest.raises(UserError, match="--block_size"):
        train.train(args_for(env, tmp_path, "--checkpoint", trained["summary"]["checkpoint"], "--block_size", "128",
                             "--reset_epoch"))
    with pytest.raises(UserError, match="--n_embd"):
        train.train(args_for(env, tmp_path, "--checkpoint", trained["summary"]["checkpoint"], "--n_embd", "128",
                             "--reset_epoch"))
    with pytest.raises(UserError, match="--batch_size"):
        train.train(args_for(env, tmp_path, "--dataset", "story", "--batch_size", "0"))
    # a batch larger than the train split: all padding past the data (10**30 ended in a numpy TypeError)
    n = len(train.Windows(train.load_meta(env["data"], "story"), "train", 64))
    for batch in (str(n + 1), str(10**30)):
        with pytest.raises(UserError, match=rf"^--batch_size {int(batch):,} is more than the {n:,} "
                                            rf"windows of 64 tokens "
                                            rf"in the train split: use --batch_size {n} or less, or "
                                            rf"prepare more text$"):
            train.train(args_for(env, tmp_path, "--dataset", "story", "--block_size", "64", "--batch_size", batch))
    # a model larger than the machine's memory: refused before it is built (--n_layer 10**12 filled memory for
    # minutes; --n_embd 10**30 was torch's traceback)
    for flag, value in (("--n_layer", 10**12), ("--n_embd", 10**30), ("--n_embd", 10**160)):  # (10**160: OverflowError)
        with pytest.raises(UserError, match=r"^the model \(.*\) does not fit in memory \(.* GiB of weights, more than "
                                            r"the machine's .* GiB of memory\): use a smaller --n_layer or --n_embd"):
            train.train(args_for(env, tmp_path, "--dataset", "story", flag, value, "--n_head", "1"))
    with pytest.raises(UserError, match=r"^--reset_epoch restarts a checkpoint's epochs and schedule: give it with "
                                        # ignored
                                        r"--checkpoint \(a new run, --init_from's too, starts at epoch 1\)$"):
        train.train(args_for(env, tmp_path, "--dataset", "story", "--reset_epoch"))
    with pytest.raises(UserError, match=r"^--lr 1e\+39 is far past any learning rate that trains"):  # Muon's traceback
        train.train(args_for(env, tmp_path, "--dataset", "story", "--lr", "1e39", "--min_lr", "0"))
    with pytest.raises(UserError, match="share of the budget"):  # steps cannot be known before a budget ends
        train.train(args_for(env, tmp_path, "--dataset", "story", "--time_budget", "1", "--warmup", "100"))
    for bad in ("abc", "-5", "120%", "nan%"):
        with pytest.raises(SystemExit):
            train.parse_args(["--warmup", bad])
    # a duration with its unit: "--time_budget 90s" was "invalid float value", the unit unsaid
    for given, minutes in (("2", 2), ("90s", 1.5), ("2m", 2), ("1.5h", 90), (" 3 min", 3), ("1e1S", 1 / 6),
                            ("90 seconds", 1.5), ("1 hour", 60)):
        assert train.parse_args(["--time_budget", given]).time_budget == pytest.approx(minutes)
        assert train.parse_args(["--dist_timeout", given]).dist_timeout == pytest.approx(minutes)
    for bad in ("2x", "m", "", "2 ms"):
        with pytest.raises(SystemExit):
            train.parse_args(["--time_budget", bad])
    assert "nor one with a unit (90s, 2m, 1.5h)" in capsys.readouterr().err
    # part of an epoch: argparse's "invalid int value: '0.5'" named no way to train one
    for given, said in (("0.5", "'0.5': epochs are whole; for part of one, stop the run with --max_steps or "
                                "--time_budget"), ("abc", "invalid int value: 'abc'"),
                        ("1e1", "invalid int value: '1e1'")):
        with pytest.raises(SystemExit):
            train.parse_args(["--epochs", given])
        assert f"error: argument --epochs: {said}; see " in capsys.readouterr().err
    # nan and inf pass `< 0` checks: torch's or the schedule's traceback, or a nan lr, unless refused
    config = train.make_config("tiny")
    for flag, value in (("--lr", "nan"), ("--min_lr", "nan"), ("--weight_decay", "nan"), ("--time_budget", "nan"),
                        ("--eval_interval", "inf"), ("--log_interval", "inf"), ("--grad_clip", "inf")):
        with pytest.raises(UserError, match=rf"^{flag} must be a finite number, got {value}$"):
            train.resolve_args(train.parse_args([flag, value]), None, False, config)
    # out of range: each named with what it takes (--lr -1 was "must not be negative", and then --lr 0 refused)
    for given, said in ((["--lr", "-1"], "--lr must be positive, got -1"),
                        (["--lr", "0"], "--lr must be positive, got 0"),
                        (["--log_interval", "0"], "--log_interval must be positive, got 0"),
                        (["--min_lr", "-1"], "--min_lr must not be negative, got -1.0"),
                        (["--patience", "-1"], "--patience must not be negative, got -1"),
                        (["--time_budget", "0"], "--time_budget must be a positive number of minutes, got 0"),
                        (["--max_steps", "0"], "--max_steps must be at least 1, got 0"),
                        # (the model's counts said "bad model options: block_size must be a positive int, got 0")
                        (["--block_size", "0"], "--block_size must be at least 1, got 0"),
                        (["--block_size", "-1"], "--block_size must be at least 1, got -1"),
                        (["--n_layer", "0"], "--n_layer must be at least 1, got 0"),
                        (["--n_head", "-2"], "--n_head must be at least 1, got -2"),
                        (["--n_embd", "0"], "--n_embd must be at least 1, got 0"),
                        # each with the width that works: the tiny preset's 128 went unsaid, the arithmetic undone
                        (["--n_embd", "65", "--n_head", "2"],
                         r"bad model options: n_embd \(65\) must be divisible by n_head \(2\); use --n_embd 68 \(a "
                         r"multiple of 2 x --n_head: the modern variant's RoPE needs an even width per head\) or "
                         r"another --n_head"),
                        (["--n_head", "3"], r"bad model options: n_embd \(128\) must be divisible by n_head \(3\); use "
                                            r"--n_embd 132 \(a multiple of 2 x --n_head: .*\) or another --n_head"),
                        (["--n_embd", "102", "--n_head", "2"],
                         r"bad model options: the modern variant \(RoPE\) needs an even head_dim; n_embd/n_head = "
                         r"102/2 = 51; use --n_embd 104 \(a multiple of 2 x --n_head: .*\) or another --n_head"),
                        (["--n_embd", "65", "--n_head", "2", "--variant", "gpt2"],
                         r"bad model options: n_embd \(65\) must be divisible by n_head \(2\); use --n_embd 66 \(a "
                         r"multiple of --n_head\) or another --n_head")):
        with pytest.raises(UserError, match=f"^{said}$"):
            train.train(args_for(env, tmp_path, "--dataset", "story", *given,
                                 fresh=given[0] not in ("--n_embd", "--n_layer", "--n_head", "--block_size")))
    for seed in (str(-2**62), str(2**62), "99999999999999999999999"):  # torch's generators take 64 bits: a traceback
        with pytest.raises(UserError, match=rf"^--seed must be between -2\*\*62 and 2\*\*62, got {seed}$"):
            train.resolve_args(train.parse_args(["--seed", seed]), None, False, config)
    assert train.resolve_args(train.parse_args(["--seed", "-1"]), None, False, config).seed == -1  # as torch takes it
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0


def test_a_model_to_load_given_as_model_names_the_option_that_loads_it(tmp_path, capsys):
    """--model is a new model's preset; a checkpoint given there (as the other scripts' checkpoint, vLLM's and
    llama.cpp's --model are) was "invalid choice", naming the presets alone. A file is --checkpoint's, a folder
    --init_from's; a preset, and a name that is neither (argparse's own error), are as they were."""
    (tmp_path / "story_best.pt").write_bytes(b"")
    (tmp_path / "gpt2-folder").mkdir()
    for given, said in ((tmp_path / "story_best.pt", f"--checkpoint {tmp_path / 'story_best.pt'}; see"),
                        (tmp_path / "gpt2-folder", f"--init_from {tmp_path / 'gpt2-folder'}; see"),
                        ("gpt3", "invalid choice: 'gpt3'"),
                        # a .pt that is not there is a checkpoint mistyped, not a folder
                        (tmp_path / "nosuch.pt", f"--checkpoint {tmp_path / 'nosuch.pt'}; see")):
        with pytest.raises(SystemExit) as e:
            train.parse_args(["--model", str(given)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and len(err.splitlines()) == 1, err
    assert train.parse_args(["--model", "gpt2-75m"]).model == "gpt2-75m"


def test_shape_options_a_checkpoint_fixes_are_named_once_each():
    """A preset's sizes that differ from the checkpoint's were each said as --model: "--model (n_layer 6 vs 4),
    --model (n_embd 384 vs 128), --model (n_head 6 vs 4)"; now --model once, with them, and an option of its own
    with its value."""
    ckpt = {"config": train.make_config("tiny", vocab_size=300).__dict__}
    for argv, said in ((["--model", "small"], "--model small (n_layer 6 vs 4, n_embd 384 vs 128, n_head 6 vs 4)"),
                       (["--model", "small", "--n_layer", "3"], "--model small (n_embd 384 vs 128, n_head 6 vs 4), "
                                                                "--n_layer 3 (vs 4)"),
                       (["--n_layer", "3", "--variant", "gpt2"], "--n_layer 3 (vs 4), --variant gpt2 (vs modern)")):
        with pytest.raises(UserError) as e:
            train.model_config(train.parse_args([*argv, "--checkpoint", "x.pt"]), {"vocab_size": 300}, ckpt)
        assert str(e.value) == (f"x.pt fixes the model's shape; {said} would change it: leave the model options out "
                                f"when continuing from a checkpoint")


def test_token_files_replaced_after_meta_json_was_read_are_refused(env, tmp_path):
    """A prepare.py rebuilding the dataset as a run started renamed new token files in between load_meta's size check
    and the memmaps: the run trained on the new tokens with the old meta.json and its tokenizer, saying nothing."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "mini"), data / "mini")
    meta = train.load_meta(str(data), "mini")
    ids = np.fromfile(data / "mini" / "train.bin", dtype=meta["dtype"])
    for rebuilt in (np.concatenate([ids, ids]), ids[: len(ids) // 2]):  # the rebuild lands now: more data, or less
        (data / "mini" / "train.bin").write_bytes(rebuilt.tobytes())
        with pytest.raises(UserError, match=rf"^.*/mini/train.bin holds {len(rebuilt):,} tokens, not the "
                                            rf"{len(ids):,} its "
                                            r"meta.json said a moment ago: a prepare.py rebuilt .*/mini as this run "
                                            r"started; run this again$"):
            train.Windows(meta, "train", 64)
    (data / "mini" / "train.bin").write_bytes(np.concatenate([ids, ids]).tobytes())
    new = json.loads((data / "mini" / "meta.json").read_text())  # and its meta.json: a run started again reads them
    new["splits"]["train"]["tokens"] *= 2
    (data / "mini" / "meta.json").write_text(json.dumps(new))
    assert len(train.Windows(train.load_meta(str(data), "mini"), "train", 64)) == (2 * len(ids) - 1) // 64


def test_token_files_replaced_as_windows_opens_them_are_refused(env, tmp_path, monkeypatch):
    # the sizes checked are the open files', the ones read: taken from the paths, a rebuild's rename landing between
    # that look and the open had the run read new tokens under the old meta.json, and its tokenizer, saying nothing
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "chat"), data / "chat")
    meta = train.load_meta(str(data), "chat")
    for name in ("train.bin", "train_mask.bin"):
        path = data / "chat" / name
        old = path.read_bytes()

        def open_rebuilt(file, *a, **k):  # the rebuild lands just as Windows opens the file
            if os.path.basename(file) == name:
                (data / "new").write_bytes(old * 2)
                os.replace(data / "new", path)
            return open(file, *a, **k)
        monkeypatch.setattr(train, "open", open_rebuilt, raising=False)
        with pytest.raises(UserError, match="holds .* tokens, not the .* its meta.json said|has .* entries "
                                            "for .* tokens"):
            train.Windows(meta, "train", 64)
        monkeypatch.undo()
        path.write_bytes(old)


def test_two_runs_into_the_same_files_at_once_are_refused(env, tmp_path):
    """Both passed the earlier-run check before either had saved, wrote over each other's checkpoints, best file and
    metrics, and both reported success."""
    out = tmp_path / "m"
    out.mkdir()
    with train.run_lock(str(out), "mini", f"the mini run in {out}/ (its checkpoints, mini_best.pt and metrics)"):
        with pytest.raises(UserError, match=r"^another train.py is writing the mini run in .*/m/ \(its checkpoints, "
                                            r"mini_best.pt and metrics\): wait for it to end, or give "
                                            r"--output_checkpoint another folder$"):
            train.train(args_for(env, out, "--dataset", "mini", "--max_steps", "1"))
        assert os.listdir(out) == [".mini.lock"]
        # another dataset's run in the same folder writes other files
        assert train.train(args_for(env, out, "--dataset", "chat", "--max_steps", "1"))["steps"] == 1
    assert train.train(args_for(env, out, "--dataset", "mini", "--max_steps", "1"))["steps"] == 1
    assert not [f for f in os.listdir(out) if f.endswith(".lock")]  # none left behind


@pytest.mark.parametrize("mini_name, chat_name, files", [
    ("run{epoch}.pt", "run{epoch}.pt", ["mini_best.pt", "mini_metrics.jsonl", "run1.pt"]),
    ("{dataset}.pt", "mini.pt", ["mini.pt", "mini_best.pt", "mini_metrics.jsonl"])])
def test_two_datasets_runs_into_one_checkpoint_name_at_once_are_refused(env, tmp_path, monkeypatch, mini_name,
                                                                         chat_name, files):
    """--output_checkpoint models/run{epoch}.pt names the same files for every dataset, and models/mini.pt for a chat
    run the file mini's run writes as models/{dataset}.pt: a chat run started while the mini run was writing them
    passed the checks (each held its own dataset's lock), both reported success, and one file held the other's."""
    out = tmp_path / "m"
    refuse, seen = train.refuse_earlier_run, []

    def meanwhile(*a, **k):  # the mini run has passed its checks: the chat run starts now
        found = refuse(*a, **k)
        if not seen:
            seen.append(1)
            with pytest.raises(UserError, match=rf"^another train.py is writing {re.escape(str(out / chat_name))} "
                                                r"\(another dataset's run\): wait for it to end, or give "
                                                r"--output_checkpoint another folder$"):
                train.train(args_for(env, out, "--dataset", "chat", "--max_steps", "1", "--output_checkpoint",
                                     str(out / chat_name)))
        return found
    monkeypatch.setattr(train, "refuse_earlier_run", meanwhile)
    s = train.train(args_for(env, out, "--dataset", "mini", "--max_steps", "1", "--output_checkpoint",
                             str(out / mini_name)))
    assert seen and load_checkpoint(s["checkpoint"])["dataset"] == "mini"
    assert sorted(os.listdir(out)) == files  # no lock left behind


def test_a_checkpoint_name_that_is_the_datasets_does_not_refuse_its_own_run(env, tmp_path):
    """--output_checkpoint models/mini for --dataset mini: the file name's lock (for other datasets' runs) was the
    dataset's own lock file, which the run already held, and the run refused itself as "another train.py"."""
    out = tmp_path / "m"
    s = train.train(args_for(env, out, "--dataset", "mini", "--max_steps", "1", "--output_checkpoint",
                             str(out / "mini")))
    assert s["checkpoint"] == str(out / "mini") and load_checkpoint(s["checkpoint"])["dataset"] == "mini"
    assert not [f for f in os.listdir(out) if f.endswith(".lock")]  # none left behind


def test_output_checkpoint_folders(env, tmp_path):
    """{dataset} in the folder part puts the best file and metrics in the same folder (they went to a folder named
    '{dataset}'); {epoch} there, or a path that names a folder, is refused before training (it failed at the first
    save, after training)."""
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2", "--output_checkpoint",
                             str(tmp_path / "runs" / "{dataset}" / "ck_{epoch}.pt")))
    assert s["checkpoint"] == str(tmp_path / "runs" / "mini" / "ck_1.pt")
    assert sorted(os.listdir(tmp_path / "runs")) == ["mini"] and (tmp_path / "runs" / "mini" / "mini_best.pt").exists()
    for bad, words in ((str(tmp_path / "new") + os.sep, "names a folder: give a file in it"),
                       (os.path.join(str(tmp_path / "new"), "."), "names a folder: give a file in it"),
                       # a folder that is there, as nanoGPT's --out_dir names one: "give a file's path", no name said
                       (str(tmp_path / "runs"), f"runs names a folder: give a file in it, as in "
                                                f"{tmp_path / 'runs' / '{dataset}_epoch{epoch}.pt'}"),
                       (str(tmp_path / "e{epoch}" / "x.pt"), "{epoch} goes in the file's name"),
                       (str(tmp_path / "new" / "{datset}.pt"), "{datset} is no placeholder; the file's name may hold "
                                                               "{dataset} and {epoch}"),
                       (str(tmp_path / "new" / "{datset}" / "{dataset}.pt"), "{datset} is no placeholder"),
                       # a brace left alone: a file named "{dataset" was written, without a word
                       (str(tmp_path / "new" / "{dataset"), "new/{dataset: { is no placeholder; the file's name may "
                                                            "hold {dataset} and {epoch}"),
                       (str(tmp_path / "new" / "{dataset}}_{epoch}.pt"), "} is no placeholder"),
                       # the best file's own name: every save wrote over it (a later, worse state under the best
                       # val loss), and the summary said "checkpoint None"
                       (str(tmp_path / "new" / "{dataset}_best.pt"), "is the run's mini_best.pt, which train.py "
                                                                     "writes itself: name the checkpoints otherwise"),
                       (str(tmp_path / "new" / "mini_metrics.jsonl"), "is the run's mini_metrics.jsonl"),
                       # (each plot replaced it)
                       (str(tmp_path / "new" / "mini_loss.png"), "is the run's mini_loss.png")):
        with pytest.raises(UserError, match=re.escape(words)):
            train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "2", "--output_checkpoint", bad))
    assert not (tmp_path / "new").exists()
    # a file of the dataset: its refusal ("holds an earlier run") suggested --overwrite, which made val.bin a checkpoint
    shutil.copytree(os.path.join(env["data"], "mini"), tmp_path / "d" / "mini")
    val = (tmp_path / "d" / "mini" / "val.bin").read_bytes()
    for name in ("val.bin", "train.bin", "meta.json"):
        with pytest.raises(UserError, match=r"^--output_checkpoint .* is a file of the dataset in .*: the result would "
                                            r"replace it; give another --output_checkpoint$"):
            train.train(args_for(env, tmp_path, "--data_dir", tmp_path / "d", "--dataset", "mini", "--max_steps", "1",
                                 "--overwrite", "--output_checkpoint", tmp_path / "d" / "mini" / name))
    assert (tmp_path / "d" / "mini" / "val.bin").read_bytes() == val
    # nor over another file, the user's own chat data: "holds an earlier run" suggested --overwrite, which replaced it
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"text": "mine"}\n')
    with pytest.raises(UserError, match=r"^--output_checkpoint .*notes.jsonl is not a checkpoint: the result would "
                                        r"replace it; give another --output_checkpoint$"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--overwrite",
                             "--output_checkpoint", notes))
    assert notes.read_text() == '{"text": "mine"}\n'
    # an empty file loses nothing: the run writes there (`touch` made the name, or an earlier write stopped at 0 bytes)
    empty = tmp_path / "empty.pt"
    empty.touch()
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1", "--overwrite", "--output_checkpoint",
                         empty))
    assert load_checkpoint(str(empty))["step"] == 1
    # braces in a folder the run did not name (a checkpoint's, continued next to it) are no typo of a placeholder
    (tmp_path / "{exp1}").mkdir()
    shutil.copy(s["checkpoint"], tmp_path / "{exp1}" / "ck.pt")
    r = train.train(train.parse_args(["--checkpoint", str(tmp_path / "{exp1}" / "ck.pt"), "--max_steps", "3",
                                      "--data_dir", env["data"], "--device", "cpu", "--no-color"]))
    assert r["checkpoint"].startswith(str(tmp_path / "{exp1}"))


def test_fine_tuning_on_other_data_starts_fresh(env, trained, tmp_path):
    s = train.train(args_for(env, tmp_path, "--dataset", "chat", "--checkpoint", trained["summary"]["checkpoint"],
                             "--max_steps", "2", fresh=False))
    ck = load_checkpoint(s["checkpoint"])
    assert ck["dataset"] == "chat" and ck["epoch"] == 0 and ck["step"] == 2
    assert ck["args"]["lr"] == pytest.approx(train.DEFAULT_LR["tiny"] / 3)  # lower default lr for fine-tuning
    assert ck["args"]["batch_size"] == train.DEFAULT_BATCH_SIZE["tiny"] != 16  # not the story run's 16
    steps = [int(st["step"]) for st in optimizer_states(ck) if "step" in st]  # AdamW's: Muon keeps no count
    assert steps and all(n == 2 for n in steps)  # a fresh optimizer
    assert os.path.basename(s["checkpoint"]) == "chat_epoch1.pt"


def test_a_fine_tune_takes_a_third_of_the_lr_its_checkpoint_trained_at(env, tmp_path, capsys):
    """A base trained at --lr 0.01 (a better lr the user found) was fine-tuned at a third of the preset's default,
    not of its own lr. Now a third of the checkpoint's, and the run line says where the lr came from; a checkpoint
    that records none (a Hugging Face folder, an old or edited one) takes a third of its preset's, as before."""
    base = train.train(args_for(env, tmp_path / "base", "--dataset", "mini", "--lr", "1e-2", "--max_steps", "1"))
    capsys.readouterr()
    s = train.train(args_for(env, tmp_path, "--dataset", "chat", "--checkpoint", base["checkpoint"], "--max_steps", "1",
                             fresh=False))
    assert load_checkpoint(s["checkpoint"])["args"]["lr"] == pytest.approx(1e-2 / 3)
    assert "lr 0.0033 (1/3 of the checkpoint's 0.01) -> 0.00033 (warmup" in capsys.readouterr().out
    s = train.train(args_for(env, tmp_path / "given", "--dataset", "chat", "--checkpoint", base["checkpoint"], "--lr",
                             "2e-3", "--max_steps", "1", fresh=False))
    assert load_checkpoint(s["checkpoint"])["args"]["lr"] == 2e-3  # one given is the lr, said without a source
    assert re.search(r"lr 0.002 -> 0.0002 \(warmup", capsys.readouterr().out)
    config = train.make_config("tiny")
    for recorded in ({"model": "tiny"}, {"model": "tiny", "lr": "abc"}, {"model": "tiny", "lr": -1.0}, {}):
        lr, said = train.fine_tune_lr({"args": recorded}, None)
        assert lr == pytest.approx(train.DEFAULT_LR["tiny"] / 3) and said == "1/3 of tiny's default 0.004"
    # a fine-tune of a fine-tune (continued first: it stays one) takes its lr as it is, a fine-tuning lr already: a
    # third again made a chain of fine-tunes 1/9, 1/27 of the base's
    assert load_checkpoint(base["checkpoint"])["fine_tune"] is False
    s = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--max_steps", "1", "--device", "cpu",
                                      "--no_color"]))
    assert load_checkpoint(s["checkpoint"])["fine_tune"] is True
    capsys.readouterr()
    s = train.train(args_for(env, tmp_path / "again", "--dataset", "mini", "--checkpoint", s["checkpoint"],
                             "--max_steps", "1", fresh=False))
    assert load_checkpoint(s["checkpoint"])["args"]["lr"] == 2e-3
    assert "lr 0.002 (the fine-tuned checkpoint's, not divided again) -> 0.0002 (warmup" in capsys.readouterr().out
    # a continued run (not a fine-tune) keeps its own lr, and a new run takes the preset's
    assert train.resolve_args(train.parse_args([]), {"args": {"model": "tiny", "lr": 1e-2}}, True, config).lr == 1e-2
    assert train.resolve_args(train.parse_args([]), None, False, config).lr == train.DEFAULT_LR["tiny"]


def test_a_fine_tune_from_before_checkpoints_said_so_is_not_recorded_as_no_fine_tune(env, tmp_path, capsys):
    """A checkpoint of an older train.py records no fine_tune. Its run began from another checkpoint: a fine-tune's
    (a chat model, the returning user's) or a continued run's, which it does not tell apart. Continued, it was saved
    as fine_tune False, no fine-tune for good; fine-tuned again, a third of its lr again without a word. Now a
    continued one stays silent on it, and a fine-tune of it says the --lr that keeps a fine-tune's lr."""
    base = train.train(args_for(env, tmp_path / "base", "--dataset", "mini", "--max_steps", "1"))
    s = train.train(args_for(env, tmp_path / "ft", "--dataset", "chat", "--checkpoint", base["checkpoint"],
                             "--max_steps", "1", fresh=False))
    ck = load_checkpoint(s["checkpoint"])
    del ck["fine_tune"]  # as an older train.py wrote it
    torch.save(ck, s["checkpoint"])
    capsys.readouterr()
    s = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--max_steps", "1", "--device", "cpu",
                                      "--no_color"]))
    assert "fine_tune" not in load_checkpoint(s["checkpoint"])  # not known: not said
    assert "fine-tune" not in capsys.readouterr().err  # (continued: no lr of a fine-tune's to choose)
    s = train.train(args_for(env, tmp_path / "again", "--dataset", "mini", "--checkpoint", s["checkpoint"],
                             "--max_steps", "1", fresh=False))
    was = ck["args"]["lr"]
    assert load_checkpoint(s["checkpoint"])["args"]["lr"] == pytest.approx(was / 3)  # the default, as before
    err = capsys.readouterr().err
    assert "does not say whether its run was a fine-tune" in err and f"--lr {was:.3g} keeps" in err
    # a base trained from scratch by an older train.py (no checkpoint it began from) is no fine-tune: nothing said
    ck = load_checkpoint(base["checkpoint"])
    del ck["fine_tune"]
    torch.save(ck, base["checkpoint"])
    train.train(args_for(env, tmp_path / "fresh", "--dataset", "chat", "--checkpoint", base["checkpoint"],
                         "--max_steps", "1", fresh=False))
    assert "fine-tune" not in capsys.readouterr().err


def test_reset_epoch_on_a_fine_tune_is_refused_not_ignored(env, tmp_path):
    """--reset_epoch keeps a run's optimizer and restarts its epochs; on another dataset (fine-tuning) or from weights
    alone there is no run to restart: the flag was silently ignored, the optimizer dropped though its help said kept."""
    first = train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--max_steps", "1"))["checkpoint"]
    with pytest.raises(UserError, match=r"^--reset_epoch restarts the epochs and schedule of a run "
                                        r"continued on its own "
                                        r"dataset, keeping its optimizer; .* was trained on mini, so training it on "
                                        r"chat is fine-tuning: a new run, which starts at epoch 1 with a "
                                        r"fresh optimizer "
                                        r"anyway: leave --reset_epoch out$"):
        train.train(args_for(env, tmp_path / "b", "--dataset", "chat", "--checkpoint", first, "--reset_epoch",
                             fresh=False))
    weights = load_checkpoint(first)
    del weights["step"]  # no training state: what a run from it does is a new run too
    bare = str(tmp_path / "bare.pt")
    torch.save(weights, bare)
    with pytest.raises(UserError, match=r"bare.pt has no training state \(weights only\): a new run"):
        train.train(args_for(env, tmp_path / "c", "--checkpoint", bare, "--reset_epoch", fresh=False))
    # without the flag the fine-tune runs, and the same run's --reset_epoch still does
    train.train(args_for(env, tmp_path / "b", "--dataset", "chat", "--checkpoint", first, "--max_steps", "1",
                         fresh=False))
    r = train.train(args_for(env, tmp_path / "a", "--checkpoint", first, "--reset_epoch", "--max_steps", "1",
                             "--overwrite", fresh=False))
    assert r["steps"] == 1


def test_a_fine_tune_takes_a_new_optimizer_as_its_help_says(capsys):
    """A fine-tune (another dataset) takes no option of the checkpoint's run, its optimizer's kind neither: an AdamW
    run fine-tunes with Muon unless told. --help said "default: muon, or the checkpoint's", which it is not then, and
    that --epochs counted the checkpoint's epochs, which a fine-tune does not."""
    config = train.make_config("tiny")
    ckpt = {"args": {"optimizer": "adamw", "model": "tiny"}}
    assert train.resolve_args(train.parse_args([]), ckpt, True, config).optimizer == "adamw"  # continuing: the run's
    assert train.resolve_args(train.parse_args([]), ckpt, False, config).optimizer == "muon"  # fine-tuning: new
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "or the checkpoint's when continuing its run; a fine-tune's optimizer is new, muon unless given" in text
    assert "(a fine-tune counts from 0)" in text and "(a fine-tune starts afresh anyway)" in text


def test_checkpoint_help_says_what_a_continued_run_keeps_and_what_it_may_change(capsys):
    """--help said only "same dataset: exact resume; other: fine-tune": not that a continued run keeps its
    checkpoint's options, nor which of them may still be given. What it says now holds: the shape options it names
    are refused, and a training option left out is the checkpoint's while one given wins (a fine-tune's: defaults)."""
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    named = "--model, --n_layer, --n_head, --n_embd, --variant, --bias are refused where they differ"
    assert named in text
    assert "a training option left out keeps the checkpoint's value, and any may be given anew" in text
    assert "On another --dataset it is a fine-tune, whose training options left out take their defaults" in text
    ckpt = {"config": train.make_config("tiny", vocab_size=300).__dict__}
    for k in named.split(" are ")[0].split(", "):
        argv = ["--no_bias"] if k == "--bias" else [k, {"--model": "small", "--variant": "gpt2"}.get(k, "3")]
        with pytest.raises(UserError, match=f"fixes the model's shape; {' '.join(argv)}"):
            train.model_config(train.parse_args(["--checkpoint", "x.pt", *argv]), {"vocab_size": 300}, ckpt)
    assert train.model_config(train.parse_args(["--dropout", "0.2"]), {"vocab_size": 300}, ckpt).dropout == 0.2
    config, old = train.make_config("tiny"), {"args": {"lr": 1e-3, "min_lr": 1e-4, "epochs": 2, "model": "tiny"}}
    kept = train.resolve_args(train.parse_args([]), old, True, config)
    assert (kept.lr, kept.epochs) == (1e-3, 2)
    assert train.resolve_args(train.parse_args(["--epochs", "3"]), old, True, config).epochs == 3
    assert train.resolve_args(train.parse_args([]), old, False, config).epochs == 1


def test_out_of_memory_saves_then_names_the_options(env, tmp_path, monkeypatch):
    real, calls = train.train_step, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)
    monkeypatch.setattr(train, "train_step", flaky)
    with pytest.raises(UserError) as e:
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--save_interval", "0"))
    for opt in ("--batch_size", "--grad_accum", "--block_size", "--recompute_activations"):
        assert opt in str(e.value)
    assert load_checkpoint(str(tmp_path / "mini_epoch1.pt"))["step"] == 2  # the two good steps were kept


def test_an_error_inside_the_optimizers_update_saves_no_half_taken_step(env, tmp_path, monkeypatch, capsys):
    """Out of memory in the middle of the update (Muon's matrices stepped, AdamW's weights not yet): the save on the
    way out wrote that state, a step no run takes, and the run continued from it stepped those matrices twice."""
    real, calls = MuonAdamW.step, []

    def muon_then_out_of_memory(self):
        calls.append(1)
        if len(calls) == 7:
            self.muon.step()
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        real(self)
    monkeypatch.setattr(MuonAdamW, "step", muon_then_out_of_memory)
    with pytest.raises(UserError, match="^out of memory with --batch_size 4"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--optimizer", "muon", "--batch_size", "4",
                             "--save_interval", "10", "--eval_interval", "0", "--max_steps", "20"))
    saved = str(tmp_path / "mini_epoch1.pt")
    assert load_checkpoint(saved)["step"] == 4  # (a save every 4 steps)
    assert f"warning: step 6 is not saved (the error below stopped the optimizer's update half done); the run's " \
           f"last checkpoint: {saved} (step 4)" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["id past vocab", "cut short"])
def test_an_error_mid_run_saves_the_steps_before_it(env, tmp_path, monkeypatch, capsys, damage):
    """train.bin written over in place mid-run (a UserError when a batch is read, before its step): the run ended
    without saving what it had trained since its last save, which Ctrl-C or any other error saves; and a file cut
    short was numpy's traceback, not the file named."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "mini"), data / "mini")
    train_bin = data / "mini" / "train.bin"

    def written_over():
        if damage == "cut short":
            os.truncate(train_bin, 1001)  # (mid-token: numpy's "buffer size must be a multiple" before)
        else:
            ids = np.memmap(train_bin, dtype=np.uint16, mode="r+")
            ids[:] = 512
            ids.flush()
            del ids
    opened = train.Windows(train.load_meta(str(data), "mini"), "train", 64)  # as the run's, before the cut
    on_step(monkeypatch, 4, written_over)  # (batches are read a step or two ahead: the error comes a little later)
    message = r"holds token id 512, beyond its 512-token" if damage == "id past vocab" else \
        r"became shorter during this run \(written over in place\?\)"
    rebuild = r".* run `python prepare\.py .*` again$"
    with pytest.raises(UserError, match=rf"^{re.escape(str(train_bin))} {message}" + rebuild):
        train.train(args_for(env, tmp_path, "--data_dir", str(data), "--dataset", "mini", "--batch_size", "4",
                             "--save_interval", "0", "--eval_interval", "0", "--max_steps", "20"))
    saved = str(tmp_path / "mini_epoch1.pt")
    step, left = map(int, re.search(rf"saved {re.escape(saved)} \(step (\d+)\) before stopping on the error below; "
                                    rf"once it is dealt with, continue with `python train\.py --checkpoint "
                                    rf"{re.escape(shlex.quote(saved))} --max_steps (\d+)`",
                                    capsys.readouterr().err).groups())
    assert 3 <= step < 20 and load_checkpoint(saved)["step"] == step and step + left == 20
    if damage == "cut short":  # whichever windows the run read: one that the cut ends mid-token is named too
        with pytest.raises(UserError, match=message):
            opened.read(7 * 64, 65)  # (tokens 448-512: bytes 896-1026 of a file of 1001)


def test_an_error_right_after_a_save_saves_nothing_more(env, tmp_path, monkeypatch, capsys):
    """An error in the step after a save: the run's last checkpoint holds every step it took, so the way out writes
    no second file of them, nor a line that it saved before stopping."""
    real, steps = train.save_checkpoint, []

    def counted(path, *a, **state):
        steps.append(state["step"])
        return real(path, *a, **state)

    def damaged():
        raise UserError("train.bin holds token id 512, beyond its 512-token vocabulary")
    monkeypatch.setattr(train, "save_checkpoint", counted)
    on_step(monkeypatch, 5, damaged)  # (a save every 4 steps: the 5th step's error comes right after the first)
    with pytest.raises(UserError, match="^train.bin holds token id 512"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--save_interval", "10",
                             "--eval_interval", "0", "--max_steps", "20"))
    assert steps == [4], steps
    assert "before stopping" not in capsys.readouterr().err


def test_an_evaluation_that_fails_keeps_the_train_loss_its_record_took(env, tmp_path, monkeypatch):
    """An error in an evaluation (a damaged val.bin, out of memory) came after the record had taken the train loss of
    the steps since the last one, and before it was written: the metrics lost it, and so did the save on the way out,
    which the run continued from (its curve had a hole there)."""
    real, calls = train.evaluate, []

    def fails_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise UserError("val.bin holds token id 512, beyond its 512-token vocabulary")
        return real(*a, **k)
    monkeypatch.setattr(train, "evaluate", fails_the_second)
    with pytest.raises(UserError, match="val.bin holds"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--log_interval", "5",
                             "--eval_interval", "20", "--save_interval", "0", "--max_steps", "20"))
    saved = load_checkpoint(str(tmp_path / "mini_epoch1.pt"))
    records = read_metrics(str(tmp_path / "mini_metrics.jsonl"))
    assert saved["loss_since_record"][1] == 0 and records[-1]["step"] == saved["step"]
    assert records[-1]["train_loss"] > 0 and records[-1]["val_loss"] is None


@pytest.mark.parametrize("save_interval", ["10", "0"])
def test_a_run_whose_val_loss_turns_nan_keeps_its_last_good_file_and_says_its_step(env, tmp_path, monkeypatch,
                                                                                    save_interval):
    """A val loss gone nan (the weights finite: no save refuses them) is no step to save over the last good file,
    as any other error's would be; the error names that file with its step, this run's best file where it has no
    other (it said "none")."""
    real, calls = train.evaluate, []

    def nan_at_the_second(*a, **k):
        calls.append(1)
        return math.nan if len(calls) == 2 else real(*a, **k)
    monkeypatch.setattr(train, "evaluate", nan_at_the_second)
    with pytest.raises(UserError, match=r"^the val loss became nan at step (\d+): .*; last good checkpoint: "
                                        r"\S+ \(step \d+\)$") as e:
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--eval_interval", "25",
                             "--save_interval", save_interval, "--max_steps", "30"))
    nan_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    good, step = re.search(r"last good checkpoint: (\S+) \(step (\d+)\)$", str(e.value)).groups()
    assert good == str(tmp_path / ("mini_best.pt" if save_interval == "0" else "mini_epoch1.pt"))
    assert load_checkpoint(good)["step"] == int(step) < nan_step
    assert max(load_checkpoint(str(f))["step"] for f in tmp_path.glob("*.pt")) < nan_step


def test_a_diverged_run_names_the_best_file_that_holds_later_steps_than_its_checkpoint(env, tmp_path, monkeypatch):
    """A val loss gone nan where the run's best file was saved after its last checkpoint: the error names both, with
    their steps, so that the run is continued from the later one, not the checkpoint alone (its steps since lost)."""
    calls = []

    def better_then_nan(*a, **k):  # each evaluation a new best, the fourth nan
        calls.append(1)
        return math.nan if len(calls) == 4 else 5.0 - len(calls) / 10
    monkeypatch.setattr(train, "evaluate", better_then_nan)
    with pytest.raises(UserError, match=r"^the val loss became nan at step (\d+): .*; last good checkpoint: \S+ "
                                        r"\(step \d+\), its best file \S+ \(step \d+\)$") as e:
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--eval_interval", "10",
                             "--save_interval", "25", "--max_steps", "30"))
    nan_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    last, step, best, best_step = re.search(r"last good checkpoint: (\S+) \(step (\d+)\), its best file (\S+) "
                                            r"\(step (\d+)\)$", str(e.value)).groups()
    assert (last, best) == (str(tmp_path / "mini_epoch1.pt"), str(tmp_path / "mini_best.pt"))
    assert load_checkpoint(last)["step"] == int(step) < load_checkpoint(best)["step"] == int(best_step) < nan_step


@pytest.mark.parametrize("failure", ["full disk", "no permission"])
def test_a_save_that_fails_mid_run_is_not_tried_again_and_names_what_holds_the_run(env, tmp_path, monkeypatch,
                                                                                   capsys, failure):
    """A periodic save that failed (a full disk: a UserError; a folder made read-only: an OSError) ended the run
    without a word on which file and step hold it; and the OSError's was tried again on the way out."""
    real, steps = train.save_checkpoint, []

    def fails_the_second(path, *a, **state):
        steps.append(state["step"])
        if len(steps) == 2:
            raise UserError(f"could not write {path} (0 MB free there): free some space or write elsewhere; the "
                            f"previous file, if any, is untouched") if failure == "full disk" else \
                PermissionError(13, "Permission denied", path)
        return real(path, *a, **state)
    monkeypatch.setattr(train, "save_checkpoint", fails_the_second)
    with pytest.raises(UserError if failure == "full disk" else PermissionError):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--save_interval", "10",
                             "--eval_interval", "0", "--max_steps", "20"))
    saved = str(tmp_path / "mini_epoch1.pt")
    assert len(steps) == 2 and load_checkpoint(saved)["step"] == steps[0] < steps[1]
    assert f"warning: step {steps[1]} is not saved (writing {saved} failed: the error below); the run's last " \
           f"checkpoint: {saved} (step {steps[0]})" in capsys.readouterr().err


def test_a_failed_save_of_a_step_its_best_file_holds_says_so(env, tmp_path, monkeypatch, capsys):
    """The best file written at a step whose checkpoint then failed: "step N is not saved", then that very file and
    step named as what holds the run, read as a contradiction. The step is said to be in its best file alone."""
    real, steps, calls = train.save_checkpoint, [], []

    def fails_the_checkpoint_at_the_second_best(path, *a, **state):
        steps.append((os.path.basename(path), state["step"]))
        if len(steps) == 4:  # best, checkpoint, best, then this checkpoint
            raise UserError(f"could not write {path} (0 MB free there): free some space or write elsewhere")
        return real(path, *a, **state)

    def better(*a, **k):  # each evaluation a new best
        calls.append(1)
        return 5.0 - len(calls) / 10
    monkeypatch.setattr(train, "save_checkpoint", fails_the_checkpoint_at_the_second_best)
    monkeypatch.setattr(train, "evaluate", better)
    with pytest.raises(UserError, match="^could not write"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--save_interval", "10",
                             "--eval_interval", "10", "--max_steps", "30"))
    (best, first), (_, step0), (_, second), (_, step) = steps
    assert best == "mini_best.pt" and first == step0 < second == step, steps
    saved, best = str(tmp_path / "mini_epoch1.pt"), str(tmp_path / "mini_best.pt")
    assert f"warning: step {step} is in its best file alone (writing {saved} failed: the error below); the run's " \
           f"last checkpoint: {saved} (step {step0}), its best file {best} (step {step})" in capsys.readouterr().err


def test_a_failed_save_of_a_step_no_file_holds_is_not_saved_though_an_earlier_best_file_is(env, tmp_path, monkeypatch,
                                                                                          capsys):
    """The other side of the best file's step: one written at an earlier step leaves the failed step not saved (a
    rule that took any best file for the step's said "in its best file alone" of work lost)."""
    real, steps = train.save_checkpoint, []

    def fails_the_second_checkpoint(path, *a, **state):
        steps.append((os.path.basename(path), state["step"]))
        if len(steps) == 3:  # best, checkpoint, then this checkpoint (the second evaluation no better: no best file)
            raise UserError(f"could not write {path} (0 MB free there): free some space or write elsewhere")
        return real(path, *a, **state)
    monkeypatch.setattr(train, "save_checkpoint", fails_the_second_checkpoint)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 5.0)
    with pytest.raises(UserError, match="^could not write"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--save_interval", "10",
                             "--eval_interval", "10", "--max_steps", "30"))
    (best, first), (_, step0), (name, step) = steps
    assert best == "mini_best.pt" and name == "mini_epoch1.pt" and first == step0 < step, steps
    assert f"warning: step {step} is not saved (writing {tmp_path / name} failed: the error below)" \
           in capsys.readouterr().err


def test_a_best_file_that_cannot_be_written_is_the_error_said_though_its_record_fails_too(env, tmp_path, monkeypatch,
                                                                                        capsys):
    """The run's folder remounted read-only mid-run: the best file's save failed, then its evaluation's record, written
    on the way out, failed on the same disk and took the error's place. The user read "writing mini_best.pt failed:
    the error below" over an error naming mini_metrics.jsonl."""
    real_save, real_log, steps = train.save_checkpoint, train.Metrics.log, []
    best = str(tmp_path / "mini_best.pt")

    def read_only_from_the_second_best(path, *a, **state):
        steps.append(path)
        if path == best and steps.count(best) == 2:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_save(path, *a, **state)

    def log(self, rec):
        if steps.count(best) == 2:
            raise OSError(errno.EROFS, "Read-only file system", self.path)
        return real_log(self, rec)
    monkeypatch.setattr(train, "save_checkpoint", read_only_from_the_second_best)
    monkeypatch.setattr(train.Metrics, "log", log)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 5.0 - steps.count(best) / 10)  # each evaluation a best
    with pytest.raises(OSError) as e:
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--save_interval", "10",
                             "--eval_interval", "10", "--max_steps", "30"))
    assert e.value.filename == best
    assert f"(writing {best} failed: the error below)" in capsys.readouterr().err


def test_a_save_on_the_way_out_of_an_error_that_fails_leaves_that_error(env, tmp_path, monkeypatch, capsys):
    """A run stopped by an error (here a damaged train.bin) whose save on the way out fails too (a full disk): the
    error the user sees is the one that stopped the run, not the save's, and a warning says the save failed, why, and
    which file and step hold the run."""
    real, steps = train.save_checkpoint, []

    def full_disk_on_the_way_out(path, *a, **state):
        steps.append(state["step"])
        if len(steps) == 2:
            raise UserError(f"could not write {path} (0 MB free there): free some space or write elsewhere")
        return real(path, *a, **state)

    def damaged():
        raise UserError("train.bin holds token id 512, beyond its 512-token vocabulary")
    monkeypatch.setattr(train, "save_checkpoint", full_disk_on_the_way_out)
    on_step(monkeypatch, 7, damaged)
    with pytest.raises(UserError, match="^train.bin holds token id 512"):
        train.train(args_for(env, tmp_path, "--dataset", "mini", "--batch_size", "4", "--save_interval", "10",
                             "--eval_interval", "0", "--max_steps", "20"))
    saved = str(tmp_path / "mini_epoch1.pt")
    assert len(steps) == 2 and load_checkpoint(saved)["step"] == steps[0] < steps[1]
    err = capsys.readouterr().err
    assert f"warning: step {steps[1]} is not saved (a save before stopping on the error below failed: could not " \
           f"write {saved} (0 MB free there)" in err, err
    assert err.rstrip().endswith(f"; the run's last checkpoint: {saved} (step {steps[0]})"), err


def test_an_unwritable_default_output_names_the_option(env, tmp_path, monkeypatch):
    # models/ unwritable (here a file in its place): the message said "the checkpoint folder models/mini_epoch1.pt",
    # a file's path, and not how to write elsewhere
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").write_text("not a folder")
    a = train.parse_args(["--data_dir", env["data"], "--dataset", "mini", "--device", "cpu", "--max_steps", "1",
                          "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64"])
    with pytest.raises(UserError, match=r"^--output_checkpoint \(default\) models/mini_epoch1\.pt: a part of the "
                                        r"path is a file"):
        train.train(a)
    assert (tmp_path / "models").read_text() == "not a folder"


def test_time_budget_ends_the_run_and_spans_the_schedule(env, tmp_path, monkeypatch, capsys):
    budget_min = 0.1  # 6 s: 1/8-s steps and 1/4-s evaluations fit 3 epochs of the mini set; the clock ends the run
    # on the real clock a loaded CI machine fitted 10 steps (one epoch) in the 6 s, and its last ones came too early
    # in the decay; a stall at a save moved the evaluations (see StepClock)
    StepClock(monkeypatch, step=1 / 8, evaluation=1 / 4)
    # evaluations follow the clock's slices alone here: spaced by their cost (tested below)
    monkeypatch.setattr(train, "EVAL_SPACING", 0)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", budget_min, "--lr", "1e-3",
                             "--warmup", "30%", *SMALL, "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget"
    assert s["epochs_done"] > 1  # epochs repeat until the budget ends
    ck = load_checkpoint(str(tmp_path / "mini.pt"))
    # the final evaluation fits in: the run stops while the last one's cost and one more step are still left
    # (stopping at the budget itself, the evaluation after it would pass it by its whole cost; leaving room for the
    # evaluation alone, the last step passed it)
    assert budget_min * 60 - 1 / 4 - 2 / 8 <= ck["budget_elapsed"] <= budget_min * 60, ck["budget_elapsed"]
    assert ck["step"] == s["steps"] and ck["val_loss"] == s["val_loss"]  # written when the budget ended, evaluated
    recs = read_metrics(s["metrics"])
    lrs = [r["lr"] for r in recs]
    assert lrs[0] < 0.5e-3  # the first log, at 10% of the budget, is a third of the way through the 30% warmup
    assert max(lrs) > 0.8e-3  # warmed up to the peak ...
    assert lrs[-1] < 0.2e-3  # ... and decayed to about min_lr (1e-4) by the end of the budget
    assert recs[-1]["val_loss"] is not None
    # logs and evaluations follow the clock (every 10% of the budget), not the short epochs: about ten of them, and
    # mostly in the middle of an epoch (per-epoch evaluations would all fall on whole epochs)
    evals = [r for r in recs if r["val_loss"] is not None]
    assert 5 <= len(evals) <= 11 and len(recs) <= 12, (len(evals), len(recs))
    mid_epoch = [r["epoch"] for r in evals if abs(r["epoch"] - round(r["epoch"])) > 0.02]
    assert len(mid_epoch) >= len(evals) // 2, [r["epoch"] for r in evals]
    # the summary gives the epochs as the log does, not the whole ones done ("0 epoch(s)" after half of one read as
    # nothing trained)
    assert s["epoch"] == recs[-1]["epoch"] > s["epochs_done"]
    assert f"; {s['epoch']:.2f} epochs in the 6s budget" in capsys.readouterr().out


def test_a_budget_run_that_runs_out_of_epochs_is_saved_and_evaluated(env, tmp_path, monkeypatch):
    """--time_budget with --epochs: the run that ends by its epochs before the clock was neither evaluated nor saved at
    its last step (a run shorter than a log slice left no file at all)."""
    StepClock(monkeypatch)  # 24 steps in the 3-s budget below: on the real clock a busy machine did not end an epoch
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", "5", "--epochs", "1", *SMALL,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "done" and s["checkpoint"] == str(tmp_path / "mini.pt")
    ck = load_checkpoint(s["checkpoint"])
    assert ck["step"] == s["steps"] and ck["epoch"] == 1 and ck["val_loss"] is not None
    assert read_metrics(s["metrics"])[-1]["step"] == s["steps"]
    # a run without a budget continued with one: the budget ends it, not the run's --epochs
    first = train.train(args_for(env, tmp_path / "e", "--dataset", "mini", "--max_steps", "2", *SMALL))
    ck = torch.load(first["checkpoint"], weights_only=True)
    ck["elapsed"] = ck["budget_elapsed"] = 3600.0  # an hour of training before: none of it is the new budget's
    torch.save(ck, first["checkpoint"])
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--time_budget", "0.05",
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert r["stopped"] == "time budget" and r["epochs_done"] >= 1 and r["steps"] > 3


def test_changed_epochs_place_the_run_in_the_schedule_again(env, tmp_path, capsys):
    """Continued with another --block_size (or on data of another size), the epoch starts over and its steps are of
    another count: the run is placed by the epochs done (it kept its step, and the cosine never finished)."""
    first = train.train(args_for(env, tmp_path, "--dataset", "story", "--max_steps", "5", "--epochs", "2"))
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--block_size", "32", "--max_steps", "1",
                                      "--output_checkpoint", str(tmp_path / "b32" / "{dataset}_epoch{epoch}.pt"),
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert load_checkpoint(r["checkpoint"])["step"] == 1  # step 0 of epoch 1's new count, then one step
    assert "warning: --block_size (64 -> 32) changed since the checkpoint: its epoch starts over" in \
        capsys.readouterr().err


def test_a_diverging_run_never_saves_over_a_good_checkpoint(env, tmp_path, capsys):
    """The loss was checked at log points only: a save due between them wrote nan weights over the last good file,
    which the error then named as the last good checkpoint. Its steps are not tried as an error's are on the way out
    (a second line that a save failed)."""
    with pytest.raises(UserError, match="the (training loss|weights) became nan") as e:
        train.train(args_for(env, tmp_path, "--dataset", "story", "--optimizer", "adamw", "--lr", "1e5",
                             "--warmup", "20", "--grad_clip", "0", "--log_interval", "100", "--save_interval", "0.1",
                             "--eval_interval", "0"))
    good, step = re.search(r"last good checkpoint: (\S+) \(step (\d+)\)$", str(e.value)).groups()
    ck = load_checkpoint(good)
    assert ck["step"] == int(step) >= 1 and all(torch.isfinite(t).all() for t in ck["model"].values())
    err = capsys.readouterr().err
    assert "is not saved" not in err and "before stopping" not in err, err


def test_a_training_loss_gone_to_nan_stops_the_run_at_the_line_a_minute_too(env, tmp_path, monkeypatch):
    """The line the clock adds between records (here at every step) checks the loss as a record does: a run whose
    records are an epoch apart stops within a minute of diverging, not at the epoch's end."""
    monkeypatch.setattr(common, "PROGRESS_LINE_S", 0)
    with pytest.raises(UserError, match=r"^the training loss became (nan|inf) at step (\d+): lower --lr") as e:
        train.train(args_for(env, tmp_path, "--dataset", "story", "--optimizer", "adamw", "--lr", "1e5",
                             "--warmup", "1", "--grad_clip", "0", "--log_interval", "100", "--save_interval", "0",
                             "--eval_interval", "0"))
    spe = math.ceil(len(train.Windows(train.load_meta(env["data"], "story"), "train", 64)) / 16)
    assert int(e.value.args[0].split("at step ")[1].split(":")[0]) < spe // 2, (str(e.value), spe)


def test_a_training_loss_gone_to_nan_stops_the_run_at_its_next_log(env, tmp_path, capsys):
    """A diverged run stops at the first log point whose loss is nan or inf, saying what to do, rather than train on
    nan weights to its end; no checkpoint is written from them."""
    with pytest.raises(UserError, match=r"^the training loss became (nan|inf) at step (\d+): lower --lr \(now "
                                        r"100000\); last good checkpoint: none$") as e:
        train.train(args_for(env, tmp_path, "--dataset", "story", "--optimizer", "adamw", "--lr", "1e5",
                             "--warmup", "1", "--grad_clip", "0", "--log_interval", "1", "--save_interval", "0",
                             "--eval_interval", "0"))
    spe = math.ceil(len(train.Windows(train.load_meta(env["data"], "story"), "train", 64)) / 16)
    assert int(e.value.args[0].split("at step ")[1].split(":")[0]) < spe // 2, (str(e.value), spe)
    assert not list(tmp_path.glob("*.pt"))
    err = capsys.readouterr().err  # (nor a save tried on the way out, as for another error)
    assert "is not saved" not in err and "before stopping" not in err, err


def test_slow_evaluations_leave_a_budget_to_training(env, tmp_path, monkeypatch):
    """An evaluation longer than the budget's 10% slices (GPT-2's 50k-wide head on a CPU: 5 s against a 1-minute
    budget's 6-s slices) came after every step and took 85% of the budget. They are spaced by 3 times their cost."""
    StepClock(monkeypatch, step=1 / 8, evaluation=1.0)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", "0.15", *SMALL,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))  # 9 s, slices of 0.9 s
    evals = [r for r in read_metrics(s["metrics"]) if r["val_loss"] is not None]
    # the first at 10%, then one at most every ~4 s of the 9 (3 s of training per 1-s evaluation), and the last
    assert s["stopped"] == "time budget" and 2 <= len(evals) <= 4, [(r["step"], r["elapsed"]) for r in evals]
    # the final one too: one due 2.5 s before it (5.4 s in) was made, a step-and-final-evaluation's room being left,
    # where its result was superseded at once (a 1-minute fine-tune evaluated at steps 56 and 57, 58% of it training)
    assert all(b["elapsed"] - a["elapsed"] >= (1 + 3) * 1.0 for a, b in zip(evals, evals[1:])), \
        [(r["step"], r["elapsed"]) for r in evals]
    # and one that leaves 3 times its cost before the final evaluation is made: with 12 s, the one due at 6 s (ended
    # at 7 s, the final one ~10.9 s in), or the curve loses a point the README's rule keeps
    s = train.train(args_for(env, tmp_path / "12s", "--dataset", "mini", "--time_budget", "0.2", *SMALL,
                             "--output_checkpoint", str(tmp_path / "12s" / "{dataset}.pt")))
    evals = [r for r in read_metrics(s["metrics"]) if r["val_loss"] is not None]
    # (each 3 s after the last one ended, not after it began: spaced by 2 s of training, one came at 4.88 s)
    assert len(evals) == 3 and all(b["elapsed"] - a["elapsed"] >= (1 + 3) * 1.0 for a, b in zip(evals, evals[1:])), \
        [(r["step"], r["elapsed"]) for r in evals]


def test_a_slow_first_step_does_not_use_up_a_budgets_warmup(env, tmp_path, monkeypatch):
    # a cold torch.compile makes the first step take ~30 s of `make demo`'s 2 minutes: the schedule starts after it
    on_step(monkeypatch, 1, lambda: clock.advance(2.5))
    clock = StepClock(monkeypatch)  # steps of 1/8 s: on the real clock a loaded machine fitted 8 of them after it
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--lr", "1e-3",
                             "--warmup", "30%", "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget"
    ck = load_checkpoint(str(tmp_path / "mini.pt"))
    assert 2.5 < ck["schedule_origin"] < 4  # where the schedule started: after the slow step, in budget seconds
    assert ck["schedule_origin"] < ck["budget_elapsed"] <= 6 + 1
    lrs = [r["lr"] for r in read_metrics(s["metrics"])]
    # the first log comes at 50% of the budget at the latest, on a clock the schedule started at ~45%: still warming
    # up (timed from the budget's start it would be past the 30% warmup, at the 1e-3 peak)
    assert lrs[0] < 0.6e-3, lrs
    assert max(lrs) > 0.8e-3 and lrs[-1] < 0.2e-3  # the whole schedule still fits in what was left


def test_a_continued_budget_goes_on_along_its_schedule(env, tmp_path, monkeypatch):
    """A budgeted run stopped past its warmup and continued goes on down its cosine where it was: its schedule's start
    moves on by the continued run's first step alone (a recompile), and is not set anew there, which would warm the
    lr up from zero again and squeeze the whole schedule into the budget's rest."""
    StepClock(monkeypatch)  # steps of 1/8 s: 20 of the budget's 6 s are past its 30% warmup
    out = str(tmp_path / "{dataset}.pt")
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--lr", "1e-3", "--warmup",
                             "30%", "--log_interval", 1, "--eval_interval", 0, "--max_steps", 20,
                             "--output_checkpoint", out))
    before = len(read_metrics(s["metrics"]))
    assert s["stopped"] == "max_steps" and read_metrics(s["metrics"])[-1]["lr"] > 0.9e-3
    r = train.train(train.parse_args(["--checkpoint", s["checkpoint"], "--max_steps", "4", "--data_dir", env["data"],
                                      "--device", "cpu", "--no-color"]))
    lrs = [rec["lr"] for rec in read_metrics(r["metrics"])[before:]]
    assert len(lrs) >= 3 and min(lrs) > 0.8e-3, lrs  # early in the cosine, not warming up again


def test_log_lines_count_down_to_what_ends_first(env, tmp_path, monkeypatch, capsys):
    # a budget that ends before the epoch (or --max_steps) ends the run: "epoch ends in 4s" was said with 2 s of a
    # budget left, of an epoch the run never finished
    StepClock(monkeypatch)  # 1/8-s steps: a 3-s budget takes 24, fewer than an epoch of the story set
    quiet = ["--log_interval", 10, "--eval_interval", 0, "--save_interval", 0, *SMALL]
    s = train.train(args_for(env, tmp_path / "a", "--dataset", "story", "--time_budget", 0.05, *quiet))
    assert s["steps"] < train.Batches(train.Windows(train.load_meta(env["data"], "story"), "train", 64), 16, 1,
                                      0).steps_per_epoch, "the budget no longer ends inside the epoch"
    elapsed = {r["step"]: r["elapsed"] for r in read_metrics(s["metrics"])}
    lines = re.findall(r"^step (\d+) \(epoch [\d.]+\): loss .* (\w+) ends in (\d+)s$", capsys.readouterr().out, re.M)
    assert len(lines) >= 3, lines
    # (whole seconds, rounded)
    assert all(what == "budget" and int(left) == int(3 - elapsed[int(step)] + 0.5) for step, what, left in lines), lines
    # --max_steps ends the run before its epoch, whose end the last ones are no more about; an epoch that ends first is
    s = train.train(args_for(env, tmp_path / "b", "--dataset", "story", "--max_steps", 20, "--log_interval", 20,
                             "--eval_interval", 0, "--save_interval", 0, *SMALL))
    lines = re.findall(r"^step (\d+) .* (\w+) ends in (\d+)s$", capsys.readouterr().out, re.M)
    assert [what for _, what, _ in lines] == ["run"] * len(lines) and lines[-1][2] == "0", lines
    s = train.train(args_for(env, tmp_path / "c", "--dataset", "mini", "--time_budget", 0.05, *quiet))
    assert s["epochs_done"] >= 2
    lines = re.findall(r"^step (\d+) .* (\w+) ends in (\d+)s$", capsys.readouterr().out, re.M)
    assert "epoch" in [what for _, what, _ in lines], lines


def test_times_under_a_second_are_given_in_tenths(env, tmp_path, monkeypatch, capsys):
    # a run under a second said "in 0s", and so did the log lines of its last second: as if no time were spent or left
    StepClock(monkeypatch, step=0.3)
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", 3, "--log_interval", 1,
                         "--eval_interval", 0, "--save_interval", 0))
    out = capsys.readouterr().out
    # (the first step's line says no time left: its speed is no training speed, see below)
    assert re.findall(r" run ends in (\S+)$", out, re.M) == ["0.3s", "0s"], out  # none left: 0
    assert "max_steps: 3 steps, 3.1k tokens in 0.9s (" in out, out
    # whole seconds rounded: 5.9 s said "5s" beside its tokens made their speed look 18% off
    assert [train.fmt_time(s) for s in (0.04, 1.4, 5.9, 59.9, 75, 3725)] == ["<0.1s", "1s", "6s", "1m00s", "1m15s",
                                                                            "1h02m"]
    # tenths that round to a whole second: in the whole seconds' format ("1.0s" beside "1s")
    assert [train.fmt_time(s) for s in (0.94, 0.95, 0.96, 0.999, 1.0)] == ["0.9s", "1s", "1s", "1s", "1s"]


def test_the_bar_counts_epochs_towards_epochs_given_only(env, tmp_path, monkeypatch):
    # a --time_budget without --epochs repeats epochs until the clock ends the run: its bar said "epoch 1/1000000"
    bars = []

    class Bar(train.EpochBar):
        def __init__(self, *a, **k):
            bars.append(k["desc"])
            super().__init__(*a, **k)
    monkeypatch.setattr(train, "EpochBar", Bar)
    StepClock(monkeypatch)
    train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--time_budget", 0.05, *SMALL))
    assert len(bars) >= 2 and bars[:2] == ["epoch 1", "epoch 2"], bars
    bars.clear()
    train.train(args_for(env, tmp_path / "b", "--dataset", "mini", "--time_budget", 0.05, "--epochs", 2, *SMALL))
    assert bars == ["epoch 1/2", "epoch 2/2"], bars


def test_the_bar_says_when_the_run_ends(env, tmp_path, monkeypatch, capsys):
    """The bar's time left was tqdm's, the epoch's: a --time_budget run ending mid-epoch said 6 s were left with 3 s
    of its budget to go. It says what ends first, as the log lines it stands in for do."""
    import tqdm.std
    clock = StepClock(monkeypatch)  # steps of 1/8 s, for the bar too
    monkeypatch.setattr(tqdm.std, "time", lambda: clock.now)
    monkeypatch.setattr(train, "draws_a_bar", lambda stream: True)

    def frames(*extra):
        train.train(args_for(env, tmp_path, "--dataset", "story", "--eval_interval", 0, "--save_interval", 0,
                             "--overwrite", *SMALL, *extra))
        shown = []  # (step, of steps, what ends, in) of each drawing, or its [...] where it says no end
        for n, total, times in re.findall(r"\| (\d+)/(\d+) \[([^\]]*)\]", capsys.readouterr().err):
            end = re.match(r"[\d:]+, (?:(\w+) )?ends in ([^,]+),", times)
            shown.append((int(n), int(total), *(end.groups("") if end else (None, times))))
        assert shown, "no bar drawn"
        return shown
    # a 3-s budget of steps of 1/8 s: 24 steps, of an epoch over twice as long
    shown = frames("--time_budget", 0.05)
    steps = [n for n, _, _, _ in shown]
    assert shown[-1][1] > 2 * 24 and max(steps) <= 24 + 1, shown
    # (the first drawing, before any step, knows the budget's end alone)
    assert all(what == "budget" for _, _, what, _ in shown), shown
    at = {n: left for n, _, _, left in shown}  # (a step's last drawing)
    assert [at[0], at[8], at[16]] == ["3s", "2s", "1s"], shown
    # --max_steps: the run's end, at the bar's rate; no end known before a step is timed
    shown = frames("--max_steps", 8)
    at = {n: (what, left) for n, _, what, left in shown}
    assert [at[0], at[4], at[7]] == [("", "?"), ("run", "0.5s"), ("run", "0.1s")], shown
    # neither: the epoch's
    shown = frames("--max_steps", 10**6)
    assert {what for n, _, what, _ in shown if n} == {"epoch"} and shown[-1][3] == "0s", shown


def test_the_bar_of_a_run_past_its_budget_says_no_time_below_zero(env, tmp_path, monkeypatch, capsys):
    """A step that stalls past the budget (a disk, a swap) ends the run after it: the bar's last drawing, at its close,
    is past the budget's end, where the budget ends in 0s, not in -2s."""
    import tqdm.std
    clock = StepClock(monkeypatch)
    monkeypatch.setattr(tqdm.std, "time", lambda: clock.now)
    monkeypatch.setattr(train, "draws_a_bar", lambda stream: True)
    step, calls = train.train_step, []

    def stalls(*a, **k):  # the fourth step takes 5 s of a 3-s budget
        out = step(*a, **k)
        calls.append(1)
        if len(calls) == 4:
            clock.advance(5)
        return out
    monkeypatch.setattr(train, "train_step", stalls)
    s = train.train(args_for(env, tmp_path, "--dataset", "story", "--time_budget", 0.05, "--eval_interval", 0,
                             "--save_interval", 0))
    assert s["stopped"] == "time budget" and s["steps"] == 4
    shown = re.findall(r"\| (\d+)/\d+ \[[\d:]+, budget ends in ([^,]+),", capsys.readouterr().err)
    assert shown and shown[-1] == ("4", "0s"), shown

def test_a_terminal_without_a_width_gets_the_plain_lines(env, tmp_path, monkeypatch, capsys):
    # a pseudo-terminal nobody sized (`script -qc CMD /dev/null | tee log`) reports 0 columns: tqdm drew the bar as
    # nothing there, and the log lines a bar stands in for were not written either: the run showed its evaluations
    # alone. So with columns but 0 rows (`stty rows 0`): tqdm draws no bar below its last row, the -1st
    fcntl, pty, termios = (pytest.importorskip(m) for m in ("fcntl", "pty", "termios"))  # (not on Windows)
    import struct

    def run(columns, rows=24):
        """train.py's main with its stderr on a pseudo-terminal of that size (in this process: train.py in one of its
        own took 4-5 s a run to load torch, where the ctrl-c tests run it so): (stdout, what the terminal got)."""
        master, slave = pty.openpty()  # 0 x 0 until someone sets a size
        if columns:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        argv = ["--data_dir", env["data"], "--dataset", "mini",
                "--output_checkpoint", str(tmp_path / f"{columns}x{rows}" / "{dataset}_epoch{epoch}.pt"),
                "--n_layer", "1",
                "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--max_steps", "4", "--log_interval", "1",
                "--eval_interval", "0", "--device", "cpu", "--no-color"]
        try:
            with open(slave, "w", encoding="utf-8") as terminal, monkeypatch.context() as m:  # (closes slave)
                m.setattr(sys, "stderr", terminal)
                code, out, _ = run_cli(train.main, argv, capsys)
            bar = b""
            with contextlib.suppress(OSError):  # (EIO once all is read and the other end is closed)
                while chunk := os.read(master, 65536):
                    bar += chunk
        finally:
            os.close(master)
        assert code == 0, (out, bar)
        return out, bar.decode(errors="replace")
    for columns, rows in ((0, 0), (80, 0)):
        out, bar = run(columns, rows)
        assert re.findall(r"^step (\d) \(epoch", out, re.M) == ["1", "2", "3", "4"], (columns, rows, out)
    out, bar = run(100)  # a terminal with a width: the bar, and no lines in its place
    assert "epoch 1/1" in bar and "4/" in bar and "ends in" not in out, (out, bar)


def test_a_slow_first_step_is_not_in_the_first_logs_tokens_per_s(env, tmp_path, monkeypatch, capsys):
    # a cold torch.compile's first step (30-60 s on a small CPU) is no training speed: counted in, the first log said
    # 358 tokens/s where training ran at 8,000, and an "epoch ends in" hours away
    # (steps of a steady 1/8 s: on the real clock the rates of two steps varied 3-fold on a busy machine)
    on_step(monkeypatch, 1, lambda: clock.advance(2))
    clock = StepClock(monkeypatch)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", 2, "--log_interval", 23,
                             "--eval_interval", 0, "--save_interval", 0))  # a log every 2 of an epoch's 9 steps
    rates = [r["tokens_per_s"] for r in read_metrics(s["metrics"])]
    assert len(rates) >= 3 and rates[0] == pytest.approx(max(rates[1:])), rates
    # a log at the first step (a Ctrl-C in a compiling step logs there too): no speed nor time left from that step
    # alone ("121 tokens/s, epoch ends in 9m36s" after a 17-s compile, where training ran at 16k)
    capsys.readouterr()
    on_step(monkeypatch, 1, lambda: clock.advance(2))
    clock = StepClock(monkeypatch)
    train.train(args_for(env, tmp_path / "each", "--dataset", "mini", "--max_steps", 3, "--log_interval", 1,
                         "--eval_interval", 0, "--save_interval", 0))
    lines = re.findall(r"^step \d .*$", capsys.readouterr().out, re.M)
    assert len(lines) == 3 and "tokens/s" not in lines[0] and "ends in" not in lines[0], lines
    assert all(re.search(r", [\d,]+ tokens/s, run ends in \S+$", line) for line in lines[1:]), lines


def test_the_summary_gives_the_training_speed_beside_the_runs(env, tmp_path, monkeypatch, capsys):
    # a short GPU run spends most of its time compiling and evaluating: 200 steps of small on an H200 trained at 240k
    # tokens/s and the closing line said 24,708, as if that were the speed
    on_step(monkeypatch, 1, lambda: clock.advance(20))
    clock = StepClock(monkeypatch, evaluation=1.0)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", 2, "--log_interval", 23,
                             "--eval_interval", 45, "--save_interval", 0, *SMALL))
    rates = [r["tokens_per_s"] for r in read_metrics(s["metrics"])]
    assert min(rates) <= s["train_tokens_per_s"] <= max(rates), rates  # (an epoch's padded last step: fewer tokens)
    assert s["tokens_per_s"] < s["train_tokens_per_s"] / 5  # the 20-s first step and the evaluations count there
    assert f"({s['tokens_per_s']:,.0f} tokens/s overall, {s['train_tokens_per_s']:,.0f} while training)" in \
        capsys.readouterr().out
    # a log at every step: the first step's own record counts its compile, the training speed does not
    on_step(monkeypatch, 1, lambda: clock.advance(20))
    clock = StepClock(monkeypatch)
    s = train.train(args_for(env, tmp_path / "each", "--dataset", "mini", "--max_steps", 6, "--log_interval", 1,
                             "--eval_interval", 0, "--save_interval", 0, *SMALL))
    assert s["train_tokens_per_s"] == pytest.approx(max(r["tokens_per_s"] for r in read_metrics(s["metrics"])))


def test_a_budget_run_ends_within_a_step_of_its_budget(env, tmp_path, monkeypatch):
    # the run stops once the last evaluation's cost and one more step would pass the budget, the next step timed as
    # the faster of the last two: not an evaluation early (room for two), not past the budget when the steps do not
    # divide it evenly, and not at a stall (one slow step, 1 s here, 4 s before the end)
    clock = StepClock(monkeypatch, step=1 / 8, evaluation=1.0)
    timed_step, start, stalled = train.train_step, clock.now, []

    def stalling(*a, **k):
        if not stalled and clock.now - start >= 3.5:  # after the one evaluation (at 25%, spaced by 4 s after it)
            stalled.append(clock.now - start)
            clock.advance(1 + 1 / 16)  # and off the 1/8-s grid from here
        return timed_step(*a, **k)
    stalling.unpatched = timed_step.unpatched
    monkeypatch.setattr(train, "train_step", stalling)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--eval_interval", 25, *SMALL,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and stalled
    assert 6 - 2 / 8 <= load_checkpoint(s["checkpoint"])["budget_elapsed"] <= 6, s["elapsed"]


def test_a_budget_run_without_evaluations_keeps_room_for_its_final_one(env, tmp_path, monkeypatch):
    # --eval_interval 0: the final evaluation was the run's first, whose cost nothing had measured, and no room was
    # left for it (a 6-s budget ended 6.20 s in). Its batches are a step's forward pass alone: a third of a step each
    val = min(len(train.Windows(train.load_meta(env["data"], "mini"), "val", 64)), 8 * 4)  # --eval_batches 8 of 4
    StepClock(monkeypatch, step=1 / 8, evaluation=val / 4 * (1 / 8) / 3)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--eval_interval", 0,
                             "--batch_size", 4, *SMALL,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and s["val_loss"] is not None
    assert 6 - 1 <= s["elapsed"] <= 6, s["elapsed"]  # the whole run, its final evaluation and saves included


@pytest.mark.parametrize("options,evaluation", [
    # no evaluations: the final saves take what the last save took (here the one at half the budget); saves of half a
    # second (a large model, a slow disk) took a 6-s run up to a second past it
    (("--eval_interval", 0, "--save_interval", 50), None),
    # the stop judged that one more step and the final evaluation fitted before this step's --save_interval save took
    # its time: the step after the save and the final evaluation passed the budget by 0.375 s
    (("--save_interval", 10), 1 / 4),
    # the room kept was the time the last evaluation took with the saves it happened to make: without --save_interval
    # they made the best file alone (or none, not bettering it), the final one makes the checkpoint too: 0.375 s past
    (("--save_interval", 0), 1 / 4),
])
def test_a_budget_run_keeps_room_for_its_slow_saves(env, tmp_path, monkeypatch, options, evaluation):
    clock = StepClock(monkeypatch, step=1 / 8, **({} if evaluation is None else {"evaluation": evaluation}))
    slow_saves(monkeypatch, clock, 0.5)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, *options,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and s["val_loss"] is not None
    assert 6 - 1 <= s["elapsed"] <= 6, s["elapsed"]  # the whole run, its final evaluation and saves included


@pytest.mark.parametrize("evaluations", [0, 10])
def test_a_continued_budget_run_keeps_room_for_saves_it_has_not_timed(env, tmp_path, monkeypatch, evaluations):
    # continued with --save_interval 0, a run that never betters its best makes no save before its final one: it kept
    # room for none, and its checkpoint save took a 6-s budget 0.375 s past it. It times them by its checkpoint's
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 5.0)  # the first run's first evaluation stays the best
    clock = StepClock(monkeypatch, step=1 / 8, evaluation=1 / 4)
    slow_saves(monkeypatch, clock, 0.5)
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--max_steps", 10,
                                 "--save_interval", 0, "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    spent = load_checkpoint(first["checkpoint"])["budget_elapsed"]  # (its best file and checkpoint saves timed)
    s = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--eval_interval", str(evaluations),
                                      "--data_dir", env["data"], "--device", "cpu", "--no_color"]))
    assert s["stopped"] == "time budget" and s["best_checkpoint"] == first["best_checkpoint"]
    assert 6 - 1 <= spent + s["elapsed"] <= 6, (spent, s["elapsed"])  # its final evaluation and save included


def test_a_budget_run_keeps_room_for_saves_before_it_has_timed_one(env, tmp_path, monkeypatch):
    # --eval_interval 0 --save_interval 0: the final evaluation's two saves (the best file, the checkpoint) are the
    # run's first, and it kept no room for them: with 0.5-s saves a 6-s budget ended 6.875 s in. The run reckons them
    # from its state's bytes, at the speed this slow disk writes (its files take about 0.5 s). (The final evaluation
    # takes no time here: the stop keeps room for it by the steps' time, as it must.)
    clock = StepClock(monkeypatch, step=1 / 8)
    slow_disk(monkeypatch, clock, 2.5e6)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--eval_interval", 0,
                             "--save_interval", 0, "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and s["val_loss"] is not None
    assert 6 - 1 <= s["elapsed"] <= 6, s["elapsed"]  # the whole run, its final evaluation and saves included


def test_a_budget_run_continued_from_its_first_save_keeps_room_for_its_saves(env, tmp_path, monkeypatch):
    # a checkpoint that was its run's first save recorded that the last save took 0 s (none was timed), and the run
    # continued from it, whose final saves (--eval_interval 0 --save_interval 0) are its first too, kept no room for
    # them: 0.5-s saves took a 6-s budget past its end
    clock = StepClock(monkeypatch, step=1 / 8)
    slow_disk(monkeypatch, clock, 2.5e6)
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--max_steps", 10,
                                 "--eval_interval", 0, "--save_interval", 0,
                                 "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    spent = load_checkpoint(first["checkpoint"])["budget_elapsed"]
    s = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--data_dir", env["data"],
                                      "--device", "cpu", "--no_color"]))
    assert s["stopped"] == "time budget" and s["val_loss"] is not None
    assert 6 - 1 <= spent + s["elapsed"] <= 6, (spent, s["elapsed"])  # its final evaluation and saves included


def slow_disk(monkeypatch, clock, bytes_per_s):
    """Each checkpoint write takes the StepClock's time for its file's bytes at bytes_per_s, the speed train.py is
    told (SAVE_BYTES_PER_S) to reckon a save it has not timed at: a slow disk, or a large model."""
    monkeypatch.setattr(train, "SAVE_BYTES_PER_S", bytes_per_s)
    save = train.save_checkpoint

    def slow_save(path, *a, **k):
        save(path, *a, **k)
        clock.advance(os.path.getsize(path) / bytes_per_s)
    monkeypatch.setattr(train, "save_checkpoint", slow_save)


def slow_saves(monkeypatch, clock, seconds):
    """Each checkpoint write takes `seconds` of the StepClock's time (a large model, a slow disk)."""
    save = train.save_checkpoint

    def slow_save(*a, **k):
        save(*a, **k)
        clock.advance(seconds)
    monkeypatch.setattr(train, "save_checkpoint", slow_save)

def test_a_budget_runs_lr_decay_ends_before_the_time_kept_for_the_final_evaluation(env, tmp_path, monkeypatch):
    # the lr's cosine spanned the whole budget, while the run stops early enough to fit its final evaluation and saves:
    # with a final evaluation of a quarter of a 6-s budget, the last steps trained at ~20% of the way from --min_lr to
    # --lr. Batch 1, --eval_interval 0: the stop keeps half a step per val window for the evaluation, which takes that
    val = len(train.Windows(train.load_meta(env["data"], "mini"), "val", 64))
    reserve = val / 2 * (1 / 8)
    assert 1 < reserve < 3
    StepClock(monkeypatch, step=1 / 8, evaluation=reserve)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--eval_interval", 0,
                             "--batch_size", 1, "--eval_batches", 1000, "--lr", 1e-2, "--min_lr", 1e-4,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    # (and no more time kept than the val split's windows take: --eval_batches asks for more than it has)
    assert s["stopped"] == "time budget" and 6 - 1 <= s["elapsed"] <= 6, s["elapsed"]
    with open(s["metrics"]) as f:
        last = [json.loads(line) for line in f][-1]
    assert last["lr"] < 1e-4 + 0.03 * (1e-2 - 1e-4), last


def test_a_cold_compile_over_half_the_budget_leaves_the_rest_to_training(env, tmp_path, monkeypatch):
    # the first step's time (a cold torch.compile) is not a step the stop keeps room for: counted, a 4-s first step
    # ended a 6-s budget right after it
    on_step(monkeypatch, 1, lambda: clock.advance(4))
    clock = StepClock(monkeypatch)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and s["run_steps"] >= 10, s["run_steps"]


def test_a_budget_run_that_reaches_max_steps_says_so(env, tmp_path, monkeypatch, capsys):
    # a scheduled evaluation near the end of the budget, which would leave no room for a step and the final one, is
    # skipped; at the step where --max_steps ends the run it is the run's last, made as a pause (not judged for the
    # best file or --patience, as the run in one go skips it: judged, the run continued from it could count an
    # evaluation the run in one go never made), and the run stopped by --max_steps
    StepClock(monkeypatch, step=1 / 8, evaluation=1 / 4)
    monkeypatch.setattr(train, "EVAL_SPACING", 0)  # evaluations at each 10% slice of the clock
    argv = ["--dataset", "mini", "--time_budget", 0.1, *SMALL]
    by_clock = train.train(args_for(env, tmp_path / "a", *argv))
    recs = read_metrics(by_clock["metrics"])
    skipped = [r["step"] for r in recs[:-1] if r["val_loss"] is None]  # its slice's log, without the evaluation
    assert by_clock["stopped"] == "time budget" and len(skipped) == 1, recs
    s = train.train(args_for(env, tmp_path / "b", *argv, "--max_steps", skipped[0]))
    assert s["stopped"] == "max_steps" and s["run_steps"] == skipped[0] and s["val_loss"] is not None
    out = capsys.readouterr().out
    assert "a --max_steps pause" in out and read_metrics(s["metrics"])[-1]["best"] is False
    # as a Ctrl-C's line does, the command that goes on with the budget (--max_steps is not inherited)
    assert re.search(r"^continue with `.* --checkpoint \S+` \(for the rest of its 6s budget\)$", out, re.M), out


def test_a_budgets_last_scheduled_evaluation_leaves_the_rest_to_training(env, tmp_path, monkeypatch):
    # an evaluation due when it, a step and the final one would pass the budget became the final one: the run ended up
    # to an evaluation's time early (5.125 s of 6 with 7/8-s evaluations), its lr short of the decay's end (1.3e-3
    # from 1e-2 to 1e-4). It is skipped: the final one comes at the end of the budget
    StepClock(monkeypatch, step=1 / 8, evaluation=7 / 8)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--lr", 1e-2, "--min_lr", 1e-4,
                             *SMALL, "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and 6 - 2 / 8 <= s["elapsed"] <= 6, s["elapsed"]
    assert read_metrics(s["metrics"])[-1]["lr"] < 1e-4 + 0.03 * (1e-2 - 1e-4)


def test_a_budgets_last_scheduled_save_leaves_the_rest_to_training(env, tmp_path, monkeypatch):
    # a --save_interval save due when it, a step and the final evaluation would pass the budget became the final one:
    # the run ended up to a save's time early (5.625 s of 6 with 7/8-s saves). It is skipped, as a late evaluation is.
    # (--eval_interval 0: the final evaluation takes what the stop reckons, a third of a step a batch)
    val = min(len(train.Windows(train.load_meta(env["data"], "mini"), "val", 64)), 8 * 4)  # --eval_batches 8 of 4
    clock = StepClock(monkeypatch, step=1 / 8, evaluation=val / 4 * (1 / 8) / 3)
    slow_saves(monkeypatch, clock, 7 / 8)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 0.1, "--save_interval", 20,
                             "--eval_interval", 0, "--batch_size", 4,
                             "--output_checkpoint", str(tmp_path / "{dataset}.pt")))
    assert s["stopped"] == "time budget" and 6 - 2 / 8 <= s["elapsed"] <= 6, s["elapsed"]


@pytest.mark.parametrize("budget", [[], ["--time_budget", 5]])
def test_a_run_stopped_by_max_steps_is_evaluated_at_its_end(env, tmp_path, monkeypatch, budget):
    # --max_steps between two evaluations (every 4 steps of the mini set's 9, or 40% of the budget) ended the run
    # without one: its checkpoint held an earlier step's val loss, or none, and no line said where the run stood
    StepClock(monkeypatch)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", 5, "--eval_interval", 40, *budget))
    assert s["stopped"] == "max_steps"
    ck = load_checkpoint(s["checkpoint"])
    evals = [r["step"] for r in read_metrics(s["metrics"]) if r["val_loss"] is not None]
    assert evals[-1:] == [ck["step"]] == [5] and ck["val_loss"] == s["val_loss"] is not None, evals


def test_a_max_steps_pause_is_evaluated_but_not_judged(env, tmp_path, monkeypatch):
    # the evaluation at a --max_steps stop between evaluations is a pause's: judged as the others are (a best file, a
    # --patience count), it made a run split into pieces stop early sooner than the run in one go (no exact resume)
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 5.0)  # the first evaluation is the best, then none better
    common = ["--dataset", "mini", "--epochs", "5", "--patience", "2", "--eval_interval", "50"]
    one = train.train(args_for(env, tmp_path / "one", *common))
    assert one["stopped"] == "early stop"
    part = train.train(args_for(env, tmp_path / "two", *common, "--max_steps", 3))  # between the first two evaluations
    ck = load_checkpoint(part["checkpoint"])
    assert part["stopped"] == "max_steps" and ck["step"] == 3 and ck["val_loss"] == 5.0  # evaluated there
    rest = train.train(args_for(env, tmp_path / "two", "--checkpoint", part["checkpoint"], fresh=False))
    assert (rest["stopped"], rest["steps"]) == ("early stop", one["steps"])
    a, b = load_checkpoint(one["checkpoint"]), load_checkpoint(rest["checkpoint"])
    assert (a["best_val_loss"], a["evals_since_best"]) == (b["best_val_loss"], b["evals_since_best"])
    # the best file is the first regular evaluation's, in both
    assert load_checkpoint(one["best_checkpoint"])["step"] == load_checkpoint(rest["best_checkpoint"])["step"]


def test_a_max_steps_pause_says_it_is_not_judged(env, tmp_path, monkeypatch, capsys):
    # a pause's better val loss was shown as a best's is (green) without "* best", and the summary then named the
    # earlier best file: its line says why no best file was made
    losses = iter([5.0, 4.0])  # the pause's is the better
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: next(losses))
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--eval_interval", "50", "--max_steps", 6))
    assert s["stopped"] == "max_steps" and (s["val_loss"], s["best_val_loss"]) == (4.0, 5.0)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if ", val " in line]
    assert len(lines) == 2 and "* best" in lines[0] and "not judged" not in lines[0], lines
    assert load_checkpoint(s["best_checkpoint"])["val_loss"] == 5.0  # the best file is not the pause's weights
    assert lines[1].startswith("step 6 ") and "* best" not in lines[1] and \
        lines[1].endswith("(a --max_steps pause: not judged for the best file or --patience)"), lines
    # the summary named the best file, worse than the checkpoint just written, as the model to try: it says where the
    # better weights are, and the command tries them
    assert "val loss 4.0000 (ppl 54.60, " in out and f"those weights are in {s['checkpoint']}\n" in out, out
    assert out.rstrip().endswith(f"try it: python gen.py {s['checkpoint']}"), out
    # a pause no better than the best: the best file is the one to try
    losses = iter([4.0, 5.0])
    s = train.train(args_for(env, tmp_path / "worse", "--dataset", "mini", "--eval_interval", "50", "--max_steps", 6))
    out = capsys.readouterr().out
    assert "those weights" not in out and out.rstrip().endswith(f"try it: python gen.py {s['best_checkpoint']}"), out


def test_a_pause_neither_sets_the_best_nor_counts_towards_patience():
    """Progress.judge: a better val loss becomes the best and restarts --patience's count, a worse one counts; a
    --max_steps pause is said better or not, and changes neither (a run split into pieces stops where one run does)."""
    p = train.Progress()
    assert p.judge(5.0, 0.5) == (True, True) and (p.best_val_loss, p.evals_since_best) == (5.0, 0)
    assert p.judge(6.0, 1.0) == (False, False) and p.evals_since_best == 1
    assert p.judge(6.0, 1.2, pause=True) == (False, False) and p.evals_since_best == 1
    assert p.judge(4.0, 1.4, pause=True) == (True, False) and (p.best_val_loss, p.evals_since_best) == (5.0, 1)
    assert p.judge(4.5, 1.5) == (True, True) and (p.best_val_loss, p.best_at, p.evals_since_best) == (4.5, [0, 1.5], 0)


def test_a_max_steps_pause_does_not_stop_a_run_early(env, tmp_path, monkeypatch):
    # --patience given to a run continued from one that counted evaluations without a better val loss stops it at its
    # next evaluation: a pause's stopped it there, "early stop" before the evaluation the run in one go stopped at
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: 5.0)  # the first evaluation is the best, then none better
    base = train.train(args_for(env, tmp_path / "base", "--dataset", "mini", "--epochs", "5", "--eval_interval", "50",
                                "--max_steps", 9))  # an epoch's end: 2 evaluations since the best
    assert load_checkpoint(base["checkpoint"])["evals_since_best"] == 2

    def go_on(name, *extra, checkpoint=base["checkpoint"]):
        return train.train(args_for(env, tmp_path / name, "--checkpoint", checkpoint, "--patience", 2, *extra,
                                    fresh=False))
    one = go_on("one")
    assert one["stopped"] == "early stop" and one["steps"] > 10
    part = go_on("two", "--max_steps", 1)  # a pause, before that evaluation
    assert part["stopped"] == "max_steps" and not load_checkpoint(part["checkpoint"])["stopped_early"]
    rest = go_on("two", checkpoint=part["checkpoint"])
    assert (rest["stopped"], rest["steps"]) == ("early stop", one["steps"])


def test_the_closing_line_gives_the_training_speed_only_when_it_differs(env, tmp_path, monkeypatch, capsys):
    # a first step as long as the rest of the run halves the run's speed: both are given; a run that trained all
    # along has one speed, given once (a log every 2 steps: the first step is no log's)
    on_step(monkeypatch, 1, lambda: clock.advance(1))
    clock = StepClock(monkeypatch)  # evaluations and saves take no time
    argv = ["--dataset", "mini", "--max_steps", 9, "--log_interval", 23, "--eval_interval", 0, "--save_interval", 0]
    s = train.train(args_for(env, tmp_path / "a", *argv))
    assert 1.5 < s["train_tokens_per_s"] / s["tokens_per_s"] < 3
    assert f"({s['tokens_per_s']:,.0f} tokens/s overall, {s['train_tokens_per_s']:,.0f} while training)" in \
        capsys.readouterr().out
    s = train.train(args_for(env, tmp_path / "b", *argv))  # (the slow step was the first run's)
    assert s["train_tokens_per_s"] == pytest.approx(s["tokens_per_s"], rel=0.05)  # (the last step: a padded batch)
    out = capsys.readouterr().out
    assert f"({s['tokens_per_s']:,.0f} tokens/s); " in out and "overall" not in out


def test_a_continued_budgets_slow_first_step_does_not_advance_its_schedule(env, tmp_path, monkeypatch):
    """Continuing a budgeted run compiles again: the schedule waits for that first step, as a new run's does, rather
    than skipping the part of the decay the recompile took."""
    out = str(tmp_path / "{dataset}.pt")
    train.train(args_for(env, tmp_path, "--dataset", "mini", "--time_budget", 1, "--max_steps", 2,
                         "--output_checkpoint", out))
    before = load_checkpoint(str(tmp_path / "mini.pt"))
    on_step(monkeypatch, 1, lambda: time.sleep(2.5))
    train.train(train.parse_args(["--checkpoint", str(tmp_path / "mini.pt"), "--max_steps", "1", "--data_dir",
                                  env["data"], "--device", "cpu", "--no_color"]))
    after = load_checkpoint(str(tmp_path / "mini.pt"))
    assert after["budget_elapsed"] - before["budget_elapsed"] >= 2.5  # the budget's clock counts it: wall time
    assert after["schedule_origin"] - before["schedule_origin"] >= 2.5  # the schedule does not


def test_compile_traces_the_model_once_for_training_and_once_for_evaluation(env, tmp_path, monkeypatch):
    # each recompile costs 8-30 s on a small CPU: a padded last batch (of an epoch, or of the val split) must reuse
    # the graph of the full ones. Dynamo's guards are checked with a backend that counts graphs and runs them eagerly.
    graphs, real_compile = [], torch.compile

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(torch, "compile", lambda model, **k: real_compile(model, backend=counting))
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "2", "--compile", "--eval_batches", "100"))
    assert s["stopped"] == "done" and s["val_loss"] is not None
    w = train.Windows(train.load_meta(env["data"], "mini"), "train", 64)
    assert len(w) % 16, "the mini set no longer ends in a padded batch: the test would not cover it"
    assert len(graphs) == 2  # grad mode on (training) and off (evaluation)


def test_intervals_past_the_run_act_at_its_end(env, tmp_path):
    """--eval_interval 1e308 (% of an epoch) ended in an OverflowError; past the run, it is only the final one."""
    summary = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "1", "--eval_interval", "1e308",
                                   "--log_interval", "1e308", "--save_interval", "1e308"))
    rows = read_metrics(summary["metrics"])
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [summary["steps"]] and summary["val_loss"] > 0
    # and a budget's slices of 1e-310 % (an OverflowError too): a run that ends, evaluated. (Not where the process reads
    # denormals as zero: torch 2.4's compiled CPU kernels, loaded by an earlier test, turn that on, and --log_interval
    # is then refused as 0)
    if 1e-310 == 0:
        return
    summary = train.train(args_for(env, tmp_path / "b", "--dataset", "mini", "--time_budget", "0.02", "--eval_interval",
                                   "1e-310", "--log_interval", "1e-310"))
    assert summary["stopped"] == "time budget" and summary["val_loss"] > 0


def test_warmup_as_a_share_of_all_steps(env, tmp_path):
    assert train.warmup_steps("10%", 37, 1e-3) == 4 and train.warmup_steps("1%", 37, 1e-3) == 1  # nearest, >= 1
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "2", "--warmup", "50%"))
    assert s["stopped"] == "done" and s["steps"] > 4  # both epochs: every step of the schedule
    assert load_checkpoint(s["checkpoint"])["args"]["warmup"] == round(0.5 * s["steps"])


def test_a_new_model_defaults_to_tiny_on_cpu_and_small_on_cuda(env, tmp_path):
    assert train.default_preset(torch.device("cuda", 0)) == "small"
    assert train.default_preset(torch.device("cpu")) == "tiny"
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "1"))  # no --model, on CPU
    ck = load_checkpoint(s["checkpoint"])
    assert ck["args"]["model"] == "tiny" and ck["args"]["batch_size"] == 16  # tiny (args_for asks batch 16)


def test_a_new_run_gets_the_defaults_the_cpu_study_picked():
    """Issue 10: what a user leaves out is what measured best on a 2-core CPU (BENCHMARKS.md; the README gives it):
    tiny in the modern variant, context 256, batch 8, Muon at lr 4e-3 decaying to lr/100 in a --time_budget, 10% of
    it warming up. On a CUDA GPU small at batch 16."""
    cpu = train.default_preset(torch.device("cpu"))
    config = train.make_config(cpu)
    assert (cpu, config.variant, config.n_layer, config.n_embd, config.n_head, config.block_size) == \
        ("tiny", "modern", 4, 128, 4, 256)
    a = train.resolve_args(train.parse_args(["--time_budget", "2"]), None, False, config)
    assert (a.model, a.batch_size, a.block_size, a.lr, a.optimizer) == ("tiny", 8, 256, 4e-3, "muon")
    assert a.min_lr == pytest.approx(4e-5) and train.budget_and_warmup(a, 1000)[:2] == (120, 0.10)
    gpu = train.default_preset(torch.device("cuda", 0))
    g = train.resolve_args(train.parse_args(["--model", gpu]), None, False, train.make_config(gpu))
    assert (g.model, g.batch_size) == ("small", 16)


def test_a_moved_dataset_trains_with_the_vocabulary_in_its_folder(tmp_path):
    """meta.json names a trained vocabulary by absolute path; a project moved (or data/ copied to another machine for
    torchrun) still trains on its own tokenizer.tiktoken. Another vocabulary there (one left from before the data
    was made with a --tokenizer since moved) is not taken for it: the recorded one is gone."""
    src = tmp_path / "mine.txt"
    src.write_text(story_text(30_000), encoding="utf-8")
    prepare.prepare("text", source=str(src), out_dir=str(tmp_path / "old"), name="mine", vocab_size=300)
    shutil.move(tmp_path / "old", tmp_path / "new")
    argv = ["--data_dir", str(tmp_path / "new"), "--dataset", "mine", "--output_checkpoint",
            str(tmp_path / "m" / "{dataset}.pt"), "--n_layer", "1", "--n_embd", "32", "--n_head", "2",
            "--block_size", "32", "--max_steps", "1", "--device", "cpu", "--no-color"]
    out = train.train(train.parse_args(argv))
    assert load_checkpoint(out["checkpoint"])["tokenizer"]["hash"] == json.loads(
        (tmp_path / "new" / "mine" / "meta.json").read_text())["tokenizer_hash"]
    shutil.copy(tmp_path / "new" / "mine" / "tokenizer.tiktoken", tmp_path / "copy.tiktoken")
    (tmp_path / "other.txt").write_text(story_text(5_000), encoding="utf-8")
    train_tokenizer([str(tmp_path / "other.txt")], 280, str(tmp_path / "new" / "mine" / "tokenizer.tiktoken"))
    with pytest.raises(UserError, match=r"was prepared with tokenizer .*/old/mine/tokenizer\.tiktoken, which is gone "
                                        r"\(it held the vocabulary custom-\w+\): put it back, or pass --tokenizer PATH "
                                        r"to a copy of it"):
        train.train(train.parse_args(argv + ["--overwrite"]))
    # the advice, taken: the copy trains
    out = train.train(train.parse_args(argv + ["--overwrite", "--tokenizer", str(tmp_path / "copy.tiktoken")]))
    assert load_checkpoint(out["checkpoint"])["tokenizer"]["hash"] == json.loads(
        (tmp_path / "new" / "mine" / "meta.json").read_text())["tokenizer_hash"]


def test_a_checkpoint_naming_its_dataset_by_path_evaluates_and_resumes(env, tmp_path):
    """Before --dataset took names only, `--dataset /abs/data/mini` (or mini/) went into the checkpoint as it was:
    such a checkpoint is read as the name and its folder, so eval.py and a resume work (they were refused, and the
    fix suggested made the resume a fine-tune)."""
    first = train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--max_steps", "2"))["checkpoint"]
    for stored in (os.path.join(env["data"], "mini"), "mini/"):
        ckpt = load_checkpoint(first)
        ckpt["dataset"] = stored
        path = str(tmp_path / "b" / "mini_epoch1.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(ckpt, path)
        assert train.checkpoint_data(ckpt) == ("mini", env["data"])
        row = eval_py.evaluate_checkpoint(path, samples=0, eval_batches=1)["rows"][0]
        assert row["dataset"] == "mini"
        r = train.train(train.parse_args(["--checkpoint", path, "--max_steps", "1", "--device", "cpu", "--no-color",
                                          "--overwrite"]))
        assert r["steps"] == 3  # went on from step 2: the same run, not a fine-tune from step 0


def test_a_run_with_a_relative_data_dir_goes_on_and_evaluates_from_another_folder(env, tmp_path, monkeypatch):
    """`--data_dir mydata` is kept as given: continued or evaluated from another working directory, the checkpoint
    looked in ./data instead ("no prepared dataset: run prepare.py", or another dataset of the name there). The folder
    as the run saw it is recorded and looked in when the one as given is not there."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(os.path.join(env["data"], "mini"), project / "mydata" / "mini")
    elsewhere.mkdir()
    monkeypatch.chdir(project)
    first = train.train(train.parse_args(["--data_dir", "mydata", "--dataset", "mini", "--output_checkpoint",
                                          "models/{dataset}.pt", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                                          "--block_size", "32", "--max_steps", "2", "--eval_batches", "1",
                                          "--device", "cpu", "--no-color"]))
    path = str(project / first["checkpoint"])
    monkeypatch.chdir(elsewhere)
    assert train.checkpoint_data(load_checkpoint(path)) == ("mini", str(project / "mydata"))
    assert eval_py.evaluate_checkpoint(path, samples=0, eval_batches=1)["rows"][0]["dataset"] == "mini"
    r = train.train(train.parse_args(["--checkpoint", path, "--max_steps", "1", "--device", "cpu", "--no-color"]))
    assert r["steps"] == 3  # the same run, gone on
    assert not os.path.exists(elsewhere / "data")


def test_a_checkpoint_whose_data_folder_moved_names_it_and_goes_on_from_where_it_is_now(env, tmp_path, monkeypatch):
    """data/ renamed after training: train.py and eval.py on the checkpoint said "no prepared dataset 'mini'
    (data/mini/meta.json is missing): run prepare.py ... first", a command that builds a new set (without the options
    the first was made with), never saying that the folder the run read is gone. They name it and --data_dir, which,
    given the folder it was moved to, goes on with the same run."""
    project = tmp_path / "project"
    shutil.copytree(os.path.join(env["data"], "mini"), project / "data" / "mini")
    monkeypatch.chdir(project)
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--eval_batches", "1",
            "--device", "cpu", "--no-color"]
    path = train.train(train.parse_args(["--dataset", "mini", "--output_checkpoint", "models/{dataset}.pt",
                                         "--max_steps", "2", *tiny]))["checkpoint"]
    shutil.move(project / "data", project / "moved")
    gone = (rf"^{re.escape(path)} was trained on {re.escape(str(project / 'data' / 'mini'))}, which is gone "
            rf"\(moved\?\): pass --data_dir the folder that holds mini/ now, or make it again with `[^`\n]*prepare\.py "
            rf"--dataset text --source FILE --name mini --tokenizer {re.escape(path)}`$")
    for argv in (["--checkpoint", path], ["--checkpoint", path, "--dataset", "mini"]):
        with pytest.raises(UserError, match=gone):
            train.train(train.parse_args(argv + tiny))
    for datasets in (None, ["mini"]):
        with pytest.raises(UserError, match=gone):
            eval_py.evaluate_checkpoint(path, datasets=datasets, samples=0, eval_batches=1)
    assert not os.path.exists(project / "data")
    # the way out taken
    row = eval_py.evaluate_checkpoint(path, data_dir="moved", samples=0, eval_batches=1)["rows"][0]
    assert row["dataset"] == "mini" and row["windows"] > 0
    r = train.train(train.parse_args(["--checkpoint", path, "--data_dir", "moved", "--max_steps", "1", *tiny]))
    assert r["steps"] == 3  # the same run, gone on
    # a --data_dir given that lacks it is that folder's miss, not the recorded one's
    with pytest.raises(UserError, match=r"^no prepared dataset 'mini' \(elsewhere/mini/meta\.json is missing"):
        train.train(train.parse_args(["--checkpoint", path, "--data_dir", "elsewhere", *tiny]))



def test_a_checkpoint_whose_data_folder_moved_names_the_command_that_made_its_data(tmp_path, monkeypatch):
    """data/ renamed after training on a set made with --limit, --val_fraction and a vocabulary of its own: the line
    named `prepare.py --dataset text --source FILE --name mine --tokenizer CKPT`, without the options that made it, so
    the set made again was another (all of the file, another split), and the resume was refused or trained on other
    data. The checkpoint records them: the command named makes the same set where the run looks, and the run goes on.
    One edited (or from before) gives the line without them, not a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(story_text(60_000), encoding="utf-8")
    made = prepare.prepare("text", source="mine.txt", name="mine", limit=80, val_fraction=0.2, vocab_size=300)
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--eval_batches", "1",
            "--device", "cpu", "--no-color"]
    path = train.train(train.parse_args(["--dataset", "mine", "--output_checkpoint", "models/{dataset}.pt",
                                         "--max_steps", "2", *tiny]))["checkpoint"]
    shutil.move(tmp_path / "data", tmp_path / "moved")
    gone = rf"^{re.escape(path)} was trained on {re.escape(str(tmp_path / 'data' / 'mine'))}, which is gone \(moved\?\)"
    with pytest.raises(UserError, match=gone) as e:
        train.train(train.parse_args(["--checkpoint", path, *tiny]))
    named = re.search(r"or run `[^`\n]*prepare\.py ([^`\n]*)` to make it again$", str(e.value))
    assert named, str(e.value)
    command = named.group(1)
    with pytest.raises(UserError, match=gone) as e_eval:
        eval_py.evaluate_checkpoint(path, samples=0, eval_batches=1)
    assert command in str(e_eval.value)
    argv = shlex.split(command)
    for option, value in (("--limit", "80"), ("--val_fraction", "0.2"), ("--vocab_size", "300"), ("--name", "mine")):
        assert argv[argv.index(option) + 1] == value
    prepare.main(argv)
    again = json.loads((tmp_path / "data" / "mine" / "meta.json").read_text())
    assert again["tokenizer_hash"] == made["tokenizer_hash"] and again["splits"] == made["splits"]
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "data" / "mine" / split).read_bytes() == (tmp_path / "moved" / "mine" / split).read_bytes()
    r = train.train(train.parse_args(["--checkpoint", path, "--max_steps", "1", *tiny]))
    assert r["steps"] == 3  # the same run, gone on
    # an edited record, or none (a checkpoint from before it): the line without the options, as before
    shutil.rmtree(tmp_path / "data")
    ck = torch.load(path, weights_only=True)
    for odd in ({"dataset": "text", "options": {"source": [str(tmp_path / "mine.txt")], "limit": -5}},
                {"dataset": "text", "options": {}}, {"dataset": "mine", "options": {}}, {"dataset": "text"},
                ["text"], {"dataset": "mix", "options": {"mix": {"chat": -1}}},
                {"dataset": "mix", "options": {"mix": {"mine": 1.0}}}, None):
        torch.save(dict(ck, data=dict(ck["data"], made_with=odd)), tmp_path / "odd.pt")
        with pytest.raises(UserError, match=r"or make it again with `[^`\n]*prepare\.py --dataset text --source FILE "
                                            r"--name mine --tokenizer \S+odd\.pt`$"):
            train.train(train.parse_args(["--checkpoint", str(tmp_path / "odd.pt"), *tiny]))


@pytest.mark.parametrize("kind", ["text", "chat"])
def test_a_moved_dataset_made_with_another_datasets_vocabulary_is_made_again_with_the_checkpoints(tmp_path,
                                                                                                   monkeypatch, kind):
    """A set made with --tokenizer data/base/tokenizer.tiktoken (another dataset's vocabulary), data/ renamed after
    training: the command the line named passed that file, gone with data/, and prepare.py refused it ("not found").
    The checkpoint holds the same vocabulary: the command names it, makes the same set, and the run goes on. A chat set
    too, packed at 256 as made (with the checkpoint's vocabulary and no --pack, at its model's context, 32 here)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.txt").write_text(story_text(60_000), encoding="utf-8")
    if kind == "chat":
        stories = [t.strip() for t in story_text(30_000).split("<|endoftext|>") if t.strip()]
        convs = [[{"role": "user", "content": a}, {"role": "assistant", "content": b}]
                 for a, b in zip(stories[::2], stories[1::2])]
        (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps({"messages": c}) for c in convs), encoding="utf-8")
    else:
        (tmp_path / "mine.txt").write_text(story_text(30_000), encoding="utf-8")
    prepare.prepare("text", source="base.txt", name="base", vocab_size=300)
    source = "mine.jsonl" if kind == "chat" else "mine.txt"
    prepare.prepare("chat" if kind == "chat" else "text", source=source, name="mine",
                    tokenizer="data/base/tokenizer.tiktoken")
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--eval_batches", "1",
            "--device", "cpu", "--no-color"]
    path = train.train(train.parse_args(["--dataset", "mine", "--output_checkpoint", "models/{dataset}.pt",
                                         "--max_steps", "2", *tiny]))["checkpoint"]
    shutil.move(tmp_path / "data", tmp_path / "moved")
    with pytest.raises(UserError, match=r"which is gone \(moved\?\)") as e:
        train.train(train.parse_args(["--checkpoint", path, *tiny]))
    command = re.search(r"or run `[^`\n]*prepare\.py ([^`\n]*)` to make it again$", str(e.value)).group(1)
    argv = shlex.split(command)
    assert argv[argv.index("--tokenizer") + 1] == path and "--source" in argv, command
    prepare.main(argv)
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "data" / "mine" / split).read_bytes() == (tmp_path / "moved" / "mine" / split).read_bytes()
    assert train.train(train.parse_args(["--checkpoint", path, "--max_steps", "1", *tiny]))["steps"] == 3


def test_a_moved_datasets_command_swaps_only_a_vocabulary_file_that_is_gone(tmp_path, monkeypatch):
    """The command that makes a moved dataset again names the checkpoint for its vocabulary only where the file it was
    made with is gone: one still there is named as made (the user's own file, not a checkpoint to keep), and gpt2 is
    no file (the bare command, not `--tokenizer CKPT`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vocab.tiktoken").write_text("", encoding="utf-8")

    def command(tokenizer):
        made = {"dataset": "dailydialog", "options": {"tokenizer": tokenizer, "pack": None}}
        path, folder, made = train.trained_data("models/dd.pt", {"dataset": "dailydialog", "args": {"data_dir": "data"},
                                                                 "data": {"kind": "chat", "made_with": made}})
        return prepare.rebuild_command(made, folder).split("prepare.py ", 1)[1]  # (the script by its path from here)

    assert command("vocab.tiktoken") == "--dataset dailydialog --tokenizer vocab.tiktoken"
    assert command("gpt2") == "--dataset dailydialog"
    # gone: the checkpoint's, at the chat set's default --pack (the checkpoint's would pack at its context)
    assert command("gone.tiktoken") == "--dataset dailydialog --tokenizer models/dd.pt --pack 256"


def cut_dataset(env, data, name, tokens):
    """A copy of the mini set under data/name with each split cut to tokens[split] tokens, meta.json to match."""
    folder = data / name
    shutil.copytree(os.path.join(env["data"], "mini"), folder)
    meta = json.loads((folder / "meta.json").read_text())
    for split, n in tokens.items():
        ids = np.fromfile(folder / f"{split}.bin", dtype=np.uint16)
        assert len(ids) > n
        ids[:n].tofile(folder / f"{split}.bin")
        meta["splits"][split]["tokens"] = n
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_a_split_of_a_whole_number_of_blocks_has_no_short_window(env, tmp_path):
    """Each window needs block_size + 1 tokens: 128 tokens at block 64 are one window, not two (the second one token
    short, which no batch can stack)."""
    folder = cut_dataset(env, tmp_path / "data", "mini", {"train": 64 * 40, "val": 64 * 4})
    meta = train.load_meta(str(tmp_path / "data"), "mini")
    tokens = np.fromfile(folder / "train.bin", dtype=np.uint16).astype(np.int64)
    for n, want in ((128, 1), (129, 2), (127, 1)):
        tokens[:n].astype(np.uint16).tofile(tmp_path / "cut.bin")
        w = train.Windows({**meta, "folder": str(tmp_path), "has_mask": False}, "cut", 64)
        assert len(w) == want
        x, y, _ = w.get(np.arange(want))
        for i in range(want):
            assert (x[i] == tokens[i * 64:i * 64 + 64]).all() and (y[i] == tokens[i * 64 + 1:i * 64 + 65]).all()
    # end to end: every window of both splits trained on and evaluated
    s = train.train(args_for(env, tmp_path, "--data_dir", str(tmp_path / "data"), "--dataset", "mini", "--epochs", "1",
                             "--batch_size", "8", "--eval_batches", "100"))
    assert s["steps"] == math.ceil(39 / 8)
    assert len(train.Windows(meta, "val", 64)) == 3 and math.isfinite(s["val_loss"])


def test_a_mask_file_cut_after_the_dataset_was_checked_is_named(env, tmp_path):
    """load_meta compares every file with meta.json; a *_mask.bin cut short after that (or Windows read without it)
    is still a one-line error naming the file and the command that makes it again, not a loss over a shorter mask."""
    shutil.copytree(os.path.join(env["data"], "chat"), tmp_path / "data" / "chat")
    meta = train.load_meta(str(tmp_path / "data"), "chat")
    mask = tmp_path / "data" / "chat" / "train_mask.bin"
    os.truncate(mask, 1000)
    with pytest.raises(UserError, match=rf"^{re.escape(str(mask))} has 1000 entries for \d+ tokens: "
                                        r"run `python prepare\.py --dataset chat .*` again$"):
        train.Windows(meta, "train", 64)
    # end to end: load_meta says it first
    with pytest.raises(UserError, match=r"chat: the sizes of its \.bin files are not what meta\.json says .*"
                                        r"run `python prepare\.py --dataset chat .*` again$"):
        train.train(args_for(env, tmp_path, "--data_dir", str(tmp_path / "data"), "--dataset", "chat",
                             "--max_steps", "1"))


def test_an_error_reading_a_batch_reaches_the_training_loop(env, tmp_path):
    """Batches are read in prefetch's thread: an error there is raised to the loop, not taken for the epoch's end
    (which trained on part of the data, saved and reported the run done)."""
    def steps():
        yield 1
        yield 2
        raise UserError("boom")
    it = train.prefetch(steps())
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(UserError, match="^boom$"):
        next(it)
    # end to end: a token id past the vocabulary in the middle of train.bin (the sizes are right)
    data = tmp_path / "data"
    shutil.copytree(os.path.join(env["data"], "mini"), data / "mini")
    train_bin = np.memmap(data / "mini" / "train.bin", dtype=np.uint16, mode="r+")
    train_bin[len(train_bin) // 2] = 512
    train_bin.flush()
    del train_bin
    with pytest.raises(UserError, match=r"train\.bin holds token id 512, beyond its 512-token vocabulary \(a damaged "
                                        r"file\): run `python prepare\.py .*` again$") as e:
        train.train(args_for(env, tmp_path, "--data_dir", str(data), "--dataset", "mini", "--epochs", "1"))
    assert e.value.every_rank


def test_graceful_interrupt_gives_the_earlier_handlers_back(monkeypatch):
    """GracefulInterrupt takes SIGINT and SIGTERM for a run and gives back the handlers from before it: a caller's
    own (a notebook's, a test runner's), or Ctrl-C in a script that trains and goes on would save nothing and exit
    130 no more."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    def mine(signum, frame):
        pass
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, mine)
        with train.GracefulInterrupt() as g:
            assert signal.getsignal(signal.SIGINT) == g.handler and signal.getsignal(signal.SIGTERM) == g.handler
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT] and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)


def test_graceful_interrupt_leaves_an_ignored_ctrl_c_ignored(monkeypatch):
    """A script's `python train.py &` starts with Ctrl-C ignored, as its shell does for a background job: the Ctrl-C
    pressed for the script stopped the run (GracefulInterrupt took SIGINT over for all of training), though
    common.quiet_ctrl_c leaves it ignored for the rest. SIGTERM still stops it with a save."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with train.GracefulInterrupt() as g:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == g.handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is before[
            signal.SIGTERM]
    finally:
        for sig, h in before.items():
            signal.signal(sig, h)


@pytest.mark.skipif(HANGUP is None, reason="Windows has no SIGHUP")
def test_an_ignored_sighup_stays_ignored(monkeypatch):
    """`nohup` starts a script with SIGHUP ignored, to outlive its terminal: the scripts (run_main), training
    (GracefulInterrupt) and a dataset's commit (prepare.ctrl_c_held) leave it so, where they take it over otherwise."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    before = signal.getsignal(HANGUP)
    try:
        for disposition, taken in ((signal.SIG_IGN, False), (signal.SIG_DFL, True)):
            signal.signal(HANGUP, disposition)

            def inside():
                with train.GracefulInterrupt():
                    in_training = signal.getsignal(HANGUP)
                with prepare.ctrl_c_held():
                    in_commit = signal.getsignal(HANGUP)
                return signal.getsignal(HANGUP), in_training, in_commit
            held = common.run_main(inside)
            assert [h is signal.SIG_IGN for h in held] == [not taken] * 3, (disposition, held)
            assert signal.getsignal(HANGUP) is disposition
    finally:
        signal.signal(HANGUP, before)


def test_a_budgets_min_lr_defaults_to_a_hundredth_of_lr():
    """A budget ends at a known moment, so its default decay goes to lr/100; a run of epochs or steps to lr/10."""
    config = train.make_config("tiny")
    assert train.resolve_args(train.parse_args(["--lr", "1e-3", "--time_budget", "5"]), None, False,
                              config).min_lr == pytest.approx(1e-5)
    assert train.resolve_args(train.parse_args(["--lr", "1e-3"]), None, False, config).min_lr == pytest.approx(1e-4)
    assert train.resolve_args(train.parse_args(["--lr", "1e-3", "--time_budget", "5", "--min_lr", "3e-4"]), None, False,
                              config).min_lr == 3e-4


def test_a_budget_warms_up_over_a_tenth_of_it_by_default():
    """--time_budget without --warmup warms the lr up over 10% of the budget (as --help and the banner say): halfway
    through that, at 5% of it, the lr is half of --lr, not already at its peak."""
    args = train.resolve_args(train.parse_args(["--lr", "1e-3", "--time_budget", "1"]), None, False,
                              train.make_config("tiny"))
    budget, budget_warmup, args.warmup = train.budget_and_warmup(args, 1000)
    lr = train.step_lr(args, train.Progress(schedule_origin=0.0), 1000, budget, budget_warmup, 0.05 * 60, 0.0)
    assert lr == pytest.approx(0.5e-3, rel=0.01)


def test_a_min_lr_equal_to_lr_is_a_constant_learning_rate():
    config = train.make_config("tiny")
    a = train.resolve_args(train.parse_args(["--lr", "1e-3", "--min_lr", "1e-3"]), None, False, config)
    assert a.lr == a.min_lr == 1e-3
    assert {train.lr_at(s, a.lr, a.min_lr, 10, 100) for s in range(10, 120)} == {1e-3}  # after the warmup
    with pytest.raises(UserError, match=r"^--min_lr 0\.002 is above --lr 0\.001"):
        train.resolve_args(train.parse_args(["--lr", "1e-3", "--min_lr", "2e-3"]), None, False, config)


def test_a_continued_run_takes_a_new_dropout(env, tmp_path, capsys):
    """--dropout has no weights: given when continuing, the run trains with it and its checkpoints record it (and a
    run continued without it, or a fine-tune, keeps the checkpoint's, which the model line says: it said nothing)."""
    first = train.train(args_for(env, tmp_path / "a", "--dataset", "mini", "--max_steps", "1"))["checkpoint"]
    assert load_checkpoint(first)["config"]["dropout"] == 0.0
    assert "dropout" not in capsys.readouterr().out

    def go_on(ck, out, *extra):
        return train.train(train.parse_args(["--checkpoint", ck, "--max_steps", "1", "--data_dir", env["data"],
                                             "--output_checkpoint", str(tmp_path / out / "{dataset}_epoch{epoch}.pt"),
                                             "--device", "cpu", "--no_color", *extra]))["checkpoint"]
    same, dropped = go_on(first, "b"), go_on(first, "c", "--dropout", "0.1")
    ck = load_checkpoint(dropped)
    assert ck["config"]["dropout"] == 0.1 and load_checkpoint(same)["config"]["dropout"] == 0.0
    assert any(not torch.equal(p, q) for p, q in zip(ck["model"].values(), load_checkpoint(same)["model"].values()))
    capsys.readouterr()
    assert load_checkpoint(go_on(dropped, "c"))["config"]["dropout"] == 0.1
    assert re.search(r"^model  continuing .*, context 64, dropout 0\.1$", capsys.readouterr().out, re.M)
    assert load_checkpoint(go_on(dropped, "d", "--dataset", "chat"))["config"]["dropout"] == 0.1
    assert re.search(r"^model  fine-tuning .*, context 64, dropout 0\.1$", capsys.readouterr().out, re.M)


def test_conversations_under_the_text_runs_name_are_a_fine_tune(env, tmp_path):
    """A text run's dataset name given to conversations in another folder (prepare.py --name mini --out_dir DIR
    --tokenizer its checkpoint, whose "train on it" line is the fine-tune): a new run from its weights at a third of
    the lr, as on another name. It went on as that run, with its optimizer, epochs and schedule."""
    base = train.train(args_for(env, tmp_path / "base", "--dataset", "mini", "--max_steps", "2"))["checkpoint"]
    other = str(tmp_path / "other")
    write_dataset(other, "mini", env["enc"], env["tok"], chat_docs(story_text(), 200), chat=True)
    tune = ["--checkpoint", base, "--dataset", "mini", "--data_dir", other, "--max_steps", "1"]
    s = train.train(args_for(env, tmp_path / "tuned", *tune, fresh=False))
    assert s["steps"] == 1  # (counted afresh: the run it went on from had 2)
    ran = load_checkpoint(s["checkpoint"])
    assert ran["args"]["lr"] == pytest.approx(train.DEFAULT_LR["tiny"] / train.FINETUNE_LR_DIVISOR)
    assert ran["data"]["kind"] == "chat" and ran["args"]["checkpoint"] == base
    with pytest.raises(UserError, match=r"--reset_epoch .*; \S+ was trained on text, so training it on chat \(\S+\) is "
                                        r"fine-tuning: .* leave --reset_epoch out$"):
        train.train(args_for(env, tmp_path / "tuned2", *tune, "--reset_epoch", fresh=False))
    # the fine-tune, continued on its conversations, goes on as its run
    s = train.train(args_for(env, tmp_path / "tuned", "--checkpoint", s["checkpoint"], "--data_dir", other,
                             "--max_steps", "1", fresh=False))
    assert s["steps"] == 2


def test_a_vocabulary_other_than_the_datas_is_named_by_one_id(tmp_path):
    """A checkpoint or --tokenizer whose vocabulary is not the data's: each vocabulary named once, gpt2 or
    custom-<its tokenizer_hash> (it said "custom-<a hash of its file's text> (<its tokenizer_hash>)"), also for a
    meta.json that recorded the old name."""
    import argparse
    from setup_tokenizer import tokenizer_state
    (tmp_path / "t.txt").write_text(story_text(5_000), encoding="utf-8")
    custom, gpt2 = train_tokenizer([str(tmp_path / "t.txt")], 300, str(tmp_path / "v.tiktoken")), get_tokenizer("gpt2")
    name = f"custom-{tokenizer_hash(custom)}"
    meta = {"folder": "data/mine", "name": "mine", "kind": "text", "options": {},
            "tokenizer": str(tmp_path / "v.tiktoken"), "tokenizer_hash": tokenizer_hash(custom),
            "tokenizer_name": "custom-f3dc00e91d31"}
    with pytest.raises(UserError, match=rf"^m\.pt uses tokenizer gpt2 but data/mine was prepared with {name}: "):
        train.hashed_as_data(argparse.Namespace(checkpoint="m.pt", tokenizer=None), meta,
                             {"tokenizer": tokenizer_state(gpt2), "config": {"block_size": 64}})
    with pytest.raises(UserError, match=rf"^--tokenizer gpt2 is not the tokenizer data/mine was prepared with "
                                        rf"\({name}\): drop --tokenizer"):
        train.hashed_as_data(argparse.Namespace(checkpoint=None, tokenizer="gpt2"), meta, None)
    meta = dict(meta, tokenizer_hash=tokenizer_hash(gpt2), tokenizer_name="gpt2", tokenizer="gpt2")
    with pytest.raises(UserError, match=rf"^--tokenizer {re.escape(str(tmp_path / 'v.tiktoken'))} \({name}\) is not "
                                        rf"the tokenizer data/mine was prepared with \(gpt2\): drop --tokenizer"):
        train.hashed_as_data(argparse.Namespace(checkpoint=None, tokenizer=str(tmp_path / "v.tiktoken")), meta, None)


def test_a_tokenizer_file_changed_since_the_data_was_prepared_is_refused(tmp_path):
    """Data prepared with --tokenizer FILE, then FILE trained again in place: its token ids mean other text now, and
    a model trained on the data with it would learn garbage and write it out as the new vocabulary's. Refused with
    the command that prepares the data again, after which the model trains."""
    src = tmp_path / "mine.txt"
    src.write_text(story_text(30_000), encoding="utf-8")
    tok, data = str(tmp_path / "vocab.tiktoken"), str(tmp_path / "data")
    old = tokenizer_hash(train_tokenizer([str(src)], 300, tok))
    prepare.prepare("text", source=str(src), tokenizer=tok, out_dir=data, name="mine")
    argv = ["--data_dir", data, "--dataset", "mine", "--output_checkpoint", str(tmp_path / "m" / "{dataset}.pt"),
            "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "32", "--max_steps", "1",
            "--device", "cpu", "--no-color", "--overwrite"]
    # a copy cut at a line break (a copy or download that stopped) reads as a smaller vocabulary: said so, with the fix
    whole = open(tok).read()
    with open(tok, "w") as f:
        f.write("".join(whole.splitlines(keepends=True)[:280]))
    with pytest.raises(UserError, match=rf"^tokenizer {re.escape(tok)} changed since {re.escape(data)}/mine was "
                                        rf"prepared \(283 token ids where it had 300: cut short by a copy or download "
                                        rf"that stopped, or trained again smaller; now custom-\w{{16}}, the data's "
                                        rf"custom-{old}\): put the whole "
                                        rf"file back, or run `python prepare\.py .*` again$"):
        train.train(train.parse_args(argv))
    with open(tok, "w") as f:
        f.write(whole)
    (tmp_path / "other.txt").write_text(story_text(5_000), encoding="utf-8")
    # the same --vocab_size, as a vocabulary trained again in place mostly has: the hash tells it apart by its merges
    new = train_tokenizer([str(tmp_path / "other.txt")], 300, tok)
    # (each vocabulary under one id, custom-<its tokenizer_hash>: it said "hash 9c1f..., data 4e2a...", and custom-<a
    # hash of the file's text> elsewhere)
    with pytest.raises(UserError, match=rf"^tokenizer {re.escape(tok)} changed since {re.escape(data)}/mine was "
                                        rf"prepared \(now custom-{tokenizer_hash(new)}, the data's custom-{old}\): run "
                                        rf"`python prepare\.py .*` again$") as e:
        train.train(train.parse_args(argv))
    prepare.main(shlex.split(re.search(r"`python prepare\.py ([^`]*)`", str(e.value)).group(1)))
    out = train.train(train.parse_args(argv))
    assert load_checkpoint(out["checkpoint"])["tokenizer"]["hash"] == tokenizer_hash(new)


def test_a_removed_best_files_bar_is_dropped_before_the_evaluation_at_the_first_save(env, tmp_path, monkeypatch):
    """--overwrite removes the run's best file at the new run's first save and drops its val loss as the bar; an
    evaluation at that step (evaluations and saves share their default interval) was judged against the bar first, so
    it was never a best, and the next, worse one became _best.pt."""
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "1"))
    assert first["best_checkpoint"]  # the bar the new run's files replace
    vals = iter([first["best_val_loss"] + 3.0, first["best_val_loss"] + 3.2, first["best_val_loss"] + 3.1])
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: next(vals))
    r = train.train(train.parse_args(["--checkpoint", first["checkpoint"], "--reset_epoch", "--overwrite",
                                      "--max_steps", "3", "--eval_interval", "1", "--save_interval", "1",
                                      "--data_dir", env["data"], "--device", "cpu", "--no-color"]))
    best = load_checkpoint(r["best_checkpoint"])
    assert (best["step"], best["val_loss"]) == (1, first["best_val_loss"] + 3.0)
    assert r["best_val_loss"] == first["best_val_loss"] + 3.0
    assert [rec["best"] for rec in read_metrics(r["metrics"]) if rec["val_loss"] is not None] == [True, False, False]


def test_a_metrics_record_a_full_disk_refuses_names_the_file(tmp_path, monkeypatch, capsys):
    """A full disk fails the record's write() with an OSError that names no file: the run ended in "error: No space left
    on device: free some space or write elsewhere", leaving the user to guess which disk."""
    path = str(tmp_path / "notes_metrics.jsonl")
    metrics = train.Metrics(path, str(tmp_path / "notes_loss.png"))

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(train, "open", lambda *a, **k: Full(), raising=False)
    with pytest.raises(SystemExit):
        common.run_main(lambda: metrics.log({"step": 1}))
    assert capsys.readouterr().err == f"error: No space left on device: {path}: free some space or write elsewhere\n"


def test_a_val_loss_gone_to_nan_stops_the_run_and_leaves_the_metrics_json(env, tmp_path):
    """Weights that went nan in a step whose own loss was finite gave a val loss of nan: the run went on (its bar was
    an earlier evaluation's) and the metrics file got a line with NaN, which is not JSON (jq, JSON.parse refuse it)."""
    with pytest.raises(UserError, match="the (training loss|val loss|weights) became nan") as e:
        train.train(args_for(env, tmp_path, "--dataset", "story", "--optimizer", "adamw", "--lr", "1e5",
                             "--warmup", "20", "--grad_clip", "0", "--log_interval", "100", "--save_interval", "0",
                             "--eval_interval", "0.1", "--eval_batches", "1"))
    with open(tmp_path / "story_metrics.jsonl") as f:
        lines = f.read().splitlines()
    assert lines and not any("NaN" in line or "Infinity" in line for line in lines), (str(e.value), lines[-2:])
    assert all(json.loads(line)["val_loss"] is not None for line in lines)


def fake_matplotlib(monkeypatch, figure_class):
    """matplotlib replaced by a stand-in whose matplotlib.figure.Figure is figure_class (the venv has none)."""
    figure = types.ModuleType("matplotlib.figure")
    figure.Figure = figure_class
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", figure)


def test_a_loss_curve_titled_in_a_script_the_font_lacks_warns_nothing(tmp_path, monkeypatch):
    """A dataset named in Chinese (中文笔记) titles its curve so: matplotlib's font has no such glyphs, and it warned of
    each in two lines on stderr at every evaluation, through the progress bar. The curve is drawn without a word.
    matplotlib is replaced by a stand-in whose savefig warns as matplotlib's does."""
    import warnings

    class Figure:
        def __init__(self, **k):
            pass

        def subplots(self):
            return types.SimpleNamespace(**{m: lambda *a, **k: None for m in (
                "plot", "set_xlabel", "set_ylabel", "set_title", "grid", "legend")})

        def savefig(self, path, **k):
            for ch in "中文":
                warnings.warn(f"Glyph {ord(ch)} (\\N{{CJK UNIFIED IDEOGRAPH-{ord(ch):X}}}) missing from font(s) "
                              f"DejaVu Sans.", UserWarning)
            with open(path, "wb") as f:
                f.write(b"png")
    fake_matplotlib(monkeypatch, Figure)
    metrics = train.Metrics(str(tmp_path / "中文_metrics.jsonl"), str(tmp_path / "中文_loss.png"))
    metrics.log({"step": 1, "tokens": 10, "train_loss": 3.0, "val_loss": 3.1})
    with warnings.catch_warnings(record=True) as shown:  # (what a run would show on stderr)
        warnings.simplefilter("always")
        metrics.plot("中文: tiny modern 4x128")
    assert (tmp_path / "中文_loss.png").exists() and not [str(w.message) for w in shown]


def test_the_loss_curve_is_drawn_at_the_end_of_the_run(env, tmp_path, monkeypatch):
    """The curve was drawn at evaluations only: one stopped by --max_steps (or a budget's --eval_interval 0 run) left
    its last records out, or no curve at all, and with --overwrite the earlier run's curve stayed, named as this one's.
    matplotlib is replaced by a stand-in that records what is drawn."""
    drawn, saved, titles = [], [], []

    class Axes:
        def plot(self, xs, ys, label=None, **k):
            drawn.append((label, list(xs)))

        def set_title(self, title):
            titles.append(title)

        def __getattr__(self, name):  # set_xlabel, legend, grid, ...
            return lambda *a, **k: None

    class Figure:
        def __init__(self, **k):
            drawn.clear()

        def subplots(self):
            return Axes()

        def savefig(self, path, **k):
            saved.append(path)
            with open(path, "wb") as f:
                f.write(b"png")
    fake_matplotlib(monkeypatch, Figure)
    first = train.train(args_for(env, tmp_path, "--dataset", "mini", "--epochs", "1", "--lr", "3e-3"))
    assert first["plot"] and drawn
    # what curves of runs compared side by side differ in (the optimizer, the lr, the vocabulary): they had one title
    config = load_model(first["checkpoint"])[0].config
    assert titles[-1].endswith(f", {config.vocab_size:,} ids, muon lr 0.003"), titles[-1]
    # drawn at each evaluation, and not again at the end when no record came after the last (~1 s on a small CPU)
    assert len(saved) == len([r for r in read_metrics(first["metrics"]) if r["val_loss"] is not None])
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--max_steps", "3", "--eval_interval", "0",
                             "--overwrite"))
    assert s["plot"] == first["plot"]
    assert drawn == [("train", [r["tokens"] for r in read_metrics(s["metrics"])])] and len(drawn[0][1]) == 3


def test_a_long_epoch_logs_at_least_a_line_a_minute(env, tmp_path, monkeypatch, capsys):
    """--log_interval is % of an epoch: on 3 GB of text an epoch was 387,654 steps and its first line came 10% in,
    2h40m of a nohup log with no loss and no time left. A line (off a terminal) comes at least every PROGRESS_LINE_S
    of the run's clock as well (here 0: at every step), with the loss since the line or record before; not a record,
    which --log_interval alone places (see test_the_lines_the_clock_adds_leave_the_records_as_they_were)."""
    monkeypatch.setattr(common, "PROGRESS_LINE_S", 0)
    s = train.train(args_for(env, tmp_path, "--dataset", "mini", "--log_interval", 30, "--eval_interval", 0,
                             "--save_interval", 0, "--max_steps", 5))
    assert [r["step"] for r in read_metrics(s["metrics"])] == [3, 5]
    out = capsys.readouterr().out
    assert "\nstep 1 (epoch 0.11): loss " in out and "\nstep 2 (epoch 0.23): loss " in out
    # each line's loss is its step's alone, as a run with a record at every step has it: lines 1 and 2 in a row, 4
    # after the record at 3
    shown = {int(m[0]): float(m[1]) for m in re.findall(r"\nstep (\d) \(epoch [\d.]+\): loss ([\d.]+)", out)}
    each = train.train(args_for(env, tmp_path / "each", "--dataset", "mini", "--log_interval", 1, "--eval_interval", 0,
                                "--save_interval", 0, "--max_steps", 5))
    alone = {r["step"]: r["train_loss"] for r in read_metrics(each["metrics"])}
    assert len(alone) == 5 and all(abs(shown[step] - alone[step]) < 2e-4 for step in (1, 2, 4)), (shown, alone)


def test_the_lines_the_clock_adds_leave_the_records_as_they_were(env, tmp_path, monkeypatch):
    """Runs repeat loss for loss (README). The line the clock adds every PROGRESS_LINE_S was a record: it fell where
    the machine's speed put it, and the next record's train loss averaged the steps after it alone, so two runs of
    one command logged other steps and other train losses. A run with a line at every step now records what one
    without any does."""
    def records(folder, line_s):
        monkeypatch.setattr(common, "PROGRESS_LINE_S", line_s)
        s = train.train(args_for(env, tmp_path / folder, "--dataset", "mini", "--log_interval", 50,
                                 "--eval_interval", 50, "--save_interval", 0, "--max_steps", 5))
        return [{k: v for k, v in r.items() if k not in ("run", "tokens_per_s", "elapsed")}
                for r in read_metrics(s["metrics"])]
    quiet = records("quiet", 10 ** 9)
    assert quiet == records("lines", 0) and len(quiet) >= 2, quiet
