"""
eval.py: each row's loss, perplexity and bits per byte are train.py's, reply statistics are counted exactly, prompts
come from the split, the same --seed gives the same numbers, and bad input is a one-line error. Uses test_train.py's
tiny datasets and a model trained on them for a few steps.
"""
import json
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import torch
import tqdm

import common
import eval as eval_py
import gen as gen_py
import prepare
import train
from checkpoint import load_model, save_checkpoint
from conftest import ROOT, run_cli
from model import GPT, make_config
from setup_tokenizer import IM_END, get_tokenizer, render_chat
from test_prepare import Bar
from test_train import args_for, bits_per_byte_of, env, one_thread  # noqa: F401  (fixtures: datasets, one thread)

CPU = ["--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def chat_ckpt(env, tmp_path_factory):
    """A 2-layer model trained 3 steps on the chat set (block 64)."""
    out = tmp_path_factory.mktemp("eval")
    return train.train(args_for(env, out, "--dataset", "chat", "--max_steps", "3",
                                "--eval_interval", "0"))["checkpoint"]


def cli(argv, capsys):
    return run_cli(eval_py.main, argv, capsys)


def fixed_model(enc, token):
    """A model that always says `token`: ln_f's weight is zeroed, so the final hidden state is its bias e_0 whatever
    the input, and the logits are lm_head's column 0, -30 everywhere but at token."""
    torch.manual_seed(0)
    model = GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=enc.n_vocab,
                            variant="gpt2")).eval()  # LayerNorm: it has the bias used below
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = -30.0
        model.lm_head.weight[token, 0] = 0.0
    return model


# -----------------------------------------------------------------------------

def test_rows_are_train_evaluate(env, chat_ckpt):
    r = eval_py.evaluate_checkpoint(chat_ckpt, datasets=["chat", "story"], data_dir=env["data"], samples=3,
                                    max_tokens=8, device="cpu", dtype="float32")
    assert r["block_size"] == 64 and r["trained_on"] == "chat" and r["step"] == 3 and r["split"] == "val"
    model, _, _ = load_model(chat_ckpt)
    for row in r["rows"]:
        meta = train.load_meta(env["data"], row["dataset"])
        w = train.Windows(meta, "val", 64)
        loss = train.evaluate(model, w, 16, len(w), torch.device("cpu"), torch.float32)
        assert row["loss"] == pytest.approx(loss, rel=1e-6) and row["ppl"] == pytest.approx(math.exp(loss))
        assert row["windows"] == len(w)  # every window of the split
        # a batch larger than the split is one batch of its windows, not padding (--batch_size 100000 ran out of memory)
        shapes = []
        huge = train.evaluate(model, w, 10**6, len(w), torch.device("cpu"), torch.float32,
                              fwd=lambda x, y, m: shapes.append(x.shape) or model(x, y, m))
        assert shapes == [(len(w), 64)] and huge == pytest.approx(loss, rel=1e-5)
    chat, story = r["rows"]
    for row in r["rows"]:  # the bits of the targets scored over the bytes of their text (on chat, the replies')
        meta = train.load_meta(env["data"], row["dataset"])
        idx = np.arange(row["windows"])
        assert row["bpb"] == pytest.approx(bits_per_byte_of(row["loss"], meta, env["enc"], 64, idx), rel=1e-6)
    assert chat["replies"] == 3 and 0 <= chat["ended"] <= 1 and 0 <= chat["mean_tokens"] <= 8
    assert story["replies"] is None and story["ended"] is None  # replies only on conversation sets
    # the default dataset is the checkpoint's own; --eval_batches takes fewer windows; --samples 0 samples nothing
    r = eval_py.evaluate_checkpoint(chat_ckpt, data_dir=env["data"], batch_size=4, eval_batches=1, samples=0,
                                    device="cpu", dtype="float32")
    assert [(row["dataset"], row["windows"], row["replies"]) for row in r["rows"]] == [("chat", 4, None)]


def test_bits_per_byte_of_a_few_windows_are_theirs(env, chat_ckpt):
    """--eval_batches on a small split scores a few windows: their bits per byte are those targets' bits over their
    own text's bytes, not scaled by the whole split's tokens/bytes (off by 10-49% on such splits)."""
    r = eval_py.evaluate_checkpoint(chat_ckpt, datasets=["story"], data_dir=env["data"], batch_size=2,
                                    eval_batches=1, samples=0, device="cpu", dtype="float32")
    row, = r["rows"]
    meta = train.load_meta(env["data"], "story")
    idx = train.eval_indices(train.Windows(meta, "val", 64).n, 2)
    assert row["windows"] == len(idx) == 2
    assert row["bpb"] == pytest.approx(bits_per_byte_of(row["loss"], meta, env["enc"], 64, idx), rel=1e-6)
    split = meta["splits"]["val"]  # (another figure here: the test tells them apart)
    assert abs(row["bpb"] / (row["loss"] * split["tokens"] / (split["bytes"] * math.log(2))) - 1) > 0.01


def test_reply_stats_count_endings_exactly(env, tmp_path):
    enc = env["enc"]
    histories = [[{"role": "user", "content": f"Hi {i}"}] for i in range(5)]
    sampling = dict(dtype=torch.float32, temperature=1.0, top_k=None, top_p=None)
    ends = fixed_model(enc, enc.encode_single_token(IM_END))
    assert eval_py.reply_stats(ends, enc, histories, 10, 0, **sampling) == \
        {"replies": 5, "ended": 1.0, "mean_tokens": 0.0}
    word = fixed_model(enc, enc.encode_ordinary(" the")[0])
    assert eval_py.reply_stats(word, enc, histories, 10, 0, **sampling) == \
        {"replies": 5, "ended": 0.0, "mean_tokens": 10.0}
    # --prompt_file FILE: its first --samples lines, in a row of their own instead of the split's prompts
    path = str(tmp_path / "ends.pt")
    save_checkpoint(path, ends, enc, dataset="chat")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello!\nHow are you?\nBye.\n", encoding="utf-8")
    r = eval_py.evaluate_checkpoint(path, data_dir=env["data"], prompt_file=str(prompts), samples=2, max_tokens=10,
                                    device="cpu", dtype="float32")
    chat, listed = r["rows"]
    assert chat["dataset"] == "chat" and chat["replies"] is None
    assert listed == {"dataset": str(prompts), "windows": None, "loss": None, "ppl": None, "bpb": None,
                      "replies": 2, "ended": 1.0, "mean_tokens": 0.0}


def test_prompts_the_context_cuts_are_one_warning(env, capsys):
    """gen.py's warning for a conversation the context cuts came once a prompt: 20 of them in eval.py's output. Now
    one line counts them; the replies are what gen.py --chat gives them (its start cut, or fewer tokens)."""
    enc = env["enc"]
    word = fixed_model(enc, enc.encode_ordinary(" the")[0])  # context 64
    sampling = dict(dtype=torch.float32, temperature=1.0, top_k=None, top_p=None)
    long = [{"role": "user", "content": "word " * 80}]  # cut at the start
    limited = next(h for w in range(80) if 56 < len(render_chat(enc, h := [{"role": "user", "content": "word " * w}],
                                                                add_generation_prompt=True)[0]) < 64)  # fits, with
    # room for fewer than 10 tokens
    histories = [long, [{"role": "user", "content": "Hi"}], long, limited]
    stats = eval_py.reply_stats(word, enc, histories, 10, 0, **sampling)
    assert capsys.readouterr().err == ("warning: 3 of 4 prompts did not fit the context (64) with room "
                                       "for --max_tokens "
                                       "10: cut at the start or given fewer tokens, as gen.py --chat does\n")
    assert stats["mean_tokens"] < 10  # the limited reply's shorter length counts
    info = {}
    gen_py.chat_reply(word, enc, long, 10, info=info, generator=torch.Generator().manual_seed(0), **sampling)
    assert info["short"] and "warning: the conversation is" in capsys.readouterr().err  # gen.py --chat still warns


def test_the_warning_for_prompts_the_context_cuts_names_its_row(env, chat_ckpt, tmp_path, capsys):
    """`eval.py --dataset a b c` warned "3 of 5 prompts did not fit the context" above a table of several rows, with
    nothing to tell whose prompts they were. The warning names its dataset (or the prompts file)."""
    data = tmp_path / "data"
    for name, words in (("short", 2), ("long", 80)):  # chat_ckpt's context: 64
        src = tmp_path / f"{name}.jsonl"
        src.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "word " * words + str(i)},
                                                          {"role": "assistant", "content": "Yes."}]})
                                 for i in range(20)), encoding="utf-8")
        prepare.prepare("chat", source=str(src), tokenizer=env["tok"], out_dir=str(data), name=name, pack=64,
                        val_fraction=0.5)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi\n" + "word " * 80 + "\n", encoding="utf-8")
    capsys.readouterr()
    eval_py.evaluate_checkpoint(chat_ckpt, datasets=["short", "long"], data_dir=str(data), samples=3, max_tokens=10,
                                device="cpu", dtype="float32")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "did not fit" in line]
    assert warnings == ["warning: long: 3 of 3 prompts did not fit the context (64) with room for --max_tokens 10: cut "
                        "at the start or given fewer tokens, as gen.py --chat does"]
    eval_py.evaluate_checkpoint(chat_ckpt, datasets=["short"], data_dir=str(data), prompt_file=str(prompts), samples=3,
                                max_tokens=10, device="cpu", dtype="float32")
    assert f"warning: {prompts}: 1 of 2 prompts did not fit" in capsys.readouterr().err


def test_prompts_a_max_tokens_over_half_the_context_leaves_short_are_counted(env, capsys):
    """With --max_tokens over half the context a history that fits its half can leave the reply fewer tokens:
    chat_prompt called it not short, so eval.py's count of prompts given fewer than --max_tokens left these out (and
    said nothing). Such a turn is short, with no warning of its own (max_tokens_for's, said once, covers them)."""
    enc = env["enc"]
    word = fixed_model(enc, enc.encode_ordinary(" the")[0])  # context 64; max_tokens 40: 32 tokens for the history
    sampling = dict(dtype=torch.float32, temperature=1.0, top_k=None, top_p=None)
    hi = [{"role": "user", "content": "Hi"}]  # leaves 40 or more
    fits = next(h for w in range(40) if 25 < len(render_chat(enc, h := [{"role": "user", "content": "word " * w}],
                                                            add_generation_prompt=True)[0]) <= 32)  # leaves fewer
    assert gen_py.room_after(word, len(render_chat(enc, hi, add_generation_prompt=True)[0])) >= 40
    assert [gen_py.chat_prompt(word, enc, h, 40)[1:] for h in (hi, fits)] == [(0, False), (0, True)]
    assert capsys.readouterr().err == ""
    stats = eval_py.reply_stats(word, enc, [hi, fits, hi], 40, 0, **sampling)
    assert capsys.readouterr().err == ("warning: 1 of 3 prompts did not fit the context (64) with room "
                                       "for --max_tokens "
                                       "40: cut at the start or given fewer tokens, as gen.py --chat does\n")
    assert stats["mean_tokens"] < 40


def test_prompts_come_from_the_split(env, chat_ckpt, tmp_path, capsys):
    convs = [[{"role": "system", "content": "Be brief."}] * (i % 2) +
             [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
             for i in range(100)]
    src = tmp_path / "qa.jsonl"
    src.write_text("\n".join(json.dumps({"messages": c}) for c in convs), encoding="utf-8")
    prepare.prepare("chat", source=str(src), tokenizer=env["tok"], out_dir=str(tmp_path / "data"), name="qa", pack=64,
                    val_fraction=0.5)
    meta = train.load_meta(str(tmp_path / "data"), "qa")
    prompts = eval_py.split_prompts(meta, "val", env["enc"], 5)
    # each prompt is a val conversation up to its first user message (its system message included)
    numbers = [int(p[-1]["content"].split()[1][:-1]) for p in prompts]
    assert [p for p in prompts] == [convs[i][:1 + i % 2] for i in numbers]
    assert len(set(numbers)) == 5 and all(50 <= i < 100 for i in numbers)
    assert max(numbers) - min(numbers) >= 30  # spread over the split, not its first few
    assert eval_py.split_prompts(meta, "val", env["enc"], 5) == prompts  # the same every run
    assert len(eval_py.split_prompts(meta, "val", env["enc"], 500)) == 50  # each conversation at most once
    assert eval_py.split_prompts(meta, "val", env["enc"], 0) == eval_py.split_prompts(meta, "val", env["enc"], -1) == []
    # windows that do not match the packing get the same warning as train.py
    capsys.readouterr()
    eval_py.evaluate_checkpoint(chat_ckpt, datasets=["qa"], data_dir=str(tmp_path / "data"), block_size=48, samples=0,
                                device="cpu", dtype="float32")
    assert "packed in blocks of 64 tokens but windows have 48" in capsys.readouterr().err


def test_cli_table_json_and_seed(env, chat_ckpt, tmp_path, capsys):
    base = [chat_ckpt, "--data_dir", env["data"], "--dataset", "chat", "story", "--samples", "4",
            "--max_tokens", "12", *CPU]
    code, out, err = cli(base + ["--json", str(tmp_path / "a.json")], capsys)
    # the file written is said, as the other scripts say theirs: on stderr, out of the table's way (`> table.txt`)
    assert code == 0 and err == f"wrote {tmp_path / 'a.json'}\n" and "wrote" not in out, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{chat_ckpt}: ") and "trained on chat to step 3" in lines[0]
    assert next(line for line in lines if line.startswith("dataset")).split() == \
        ["dataset", "windows", "loss", "ppl", "bpb", "replies", "ended", "mean", "tokens"]
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ("chat", "story")}
    a = json.loads((tmp_path / "a.json").read_text())
    chat = a["rows"][0]
    assert rows["chat"][2] == f"{chat['loss']:.4f}" and rows["chat"][4] == f"{chat['bpb']:.3f}"
    assert rows["chat"][5] == "4"
    assert rows["story"][5:] == ["-", "-", "-"]
    code, out, err = cli(base + ["--json", "-"], capsys)
    assert code == 0 and json.loads(out) == a and "wrote" not in err  # the same seed: the same numbers, replies too
    code, out, err = cli(base + ["--json", "-", "--seed", "7"], capsys)
    b = json.loads(out)
    assert [row["loss"] for row in b["rows"]] == [row["loss"] for row in a["rows"]] and b["sampling"]["seed"] == 7


def test_plain_text_sets_alone_get_no_reply_columns_or_settings(env, chat_ckpt, capsys):
    """Replies are sampled on chat sets only: a table of plain-text sets printed the replies' sampling settings and
    three columns of "-" that held nothing. They are left out there (a chat set keeps them, above); the JSON keeps
    its rows' keys, null where not measured, as for a plain-text row beside a chat one."""
    code, out, err = cli([chat_ckpt, "--data_dir", env["data"], "--dataset", "story", *CPU], capsys)
    assert code == 0 and "replies" not in out and "temp" not in out, err
    lines = out.splitlines()
    assert lines[1] == "val split in windows of 64 tokens"
    # the model's size, as train.py's banner gave it: eval.py said "0.1M parameters" of one train.py said 141.0k of
    size = train.fmt_count(load_model(chat_ckpt)[0].num_params(non_embedding=False))
    assert f"layers x 64, {size} parameters)" in lines[0], lines[0]
    assert next(line for line in lines if line.startswith("dataset")).split() == ["dataset", "windows", "loss", "ppl",
                                                                                  "bpb"]
    assert len(next(line for line in lines if line.startswith("story")).split()) == 5
    code, out, err = cli([chat_ckpt, "--data_dir", env["data"], "--dataset", "story", "--json", "-", *CPU], capsys)
    row = json.loads(out)["rows"][0]
    assert code == 0 and row["replies"] is row["ended"] is row["mean_tokens"] is None and row["loss"] > 0


def test_a_checkpoint_after_dataset_is_the_checkpoint(tmp_path, monkeypatch):
    """--dataset takes several names, so `eval.py --dataset story models/x.pt` made the checkpoint a dataset name
    (and the error then suggested preparing a dataset named models/x.pt)."""
    args = eval_py.parse_args(["--dataset", "story", "chat", "models/x.pt"])
    assert args.checkpoint == "models/x.pt" and args.dataset == ["story", "chat"]
    assert eval_py.parse_args(["m.pt", "--dataset", "story"]).dataset == ["story"]
    with pytest.raises(SystemExit):
        eval_py.parse_args(["--dataset", "models/x.pt"])
    (tmp_path / "hf_model").mkdir()  # a Hugging Face folder, named without a slash
    (tmp_path / "hf_model" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert eval_py.parse_args(["--dataset", "story", "hf_model"]).checkpoint == "hf_model"
    monkeypatch.chdir(tmp_path / "hf_model")  # no arguments where a config.json lies: no dataset to take one from
    assert eval_py.parse_args([]).checkpoint is None


def test_several_checkpoints_are_taken_in_order(tmp_path, monkeypatch, capsys):
    """`eval.py runs/*/story_best.pt`, to compare runs, said "unrecognized arguments: runs/b/story_best.pt" (argparse
    took the first as the checkpoint): each is taken, given first or after --dataset's names, and --dataset keeps its
    own names."""
    for argv, datasets in ((["runs/a/x.pt", "runs/b/x.pt", "--seed", "1"], None),
                           (["--dataset", "story", "runs/a/x.pt", "runs/b/x.pt"], ["story"]),
                           (["runs/a/x.pt", "--dataset", "story", "runs/b/x.pt"], ["story"]),
                           (["runs/a/x.pt", "--checkpoint", "runs/b/x.pt"], None)):
        args = eval_py.parse_args(argv)
        assert (args.checkpoints, args.checkpoint, args.dataset) == (["runs/a/x.pt", "runs/b/x.pt"], "runs/a/x.pt",
                                                                     datasets)
    assert eval_py.parse_args(["runs/a/x.pt"]).checkpoints == ["runs/a/x.pt"]  # a glob of one: as before
    # in the order given, on both sides of --dataset's names too (it was a, c, b), or as --checkpoint=
    for argv in (["runs/a/x.pt", "runs/b/x.pt", "--dataset", "story", "runs/c/x.pt"],
                 ["runs/a/x.pt", "--checkpoint=runs/b/x.pt", "runs/c/x.pt"]):
        args = eval_py.parse_args(argv)
        assert (args.checkpoints, args.checkpoint) == (["runs/a/x.pt", "runs/b/x.pt", "runs/c/x.pt"], "runs/a/x.pt")
    with pytest.raises(SystemExit):
        eval_py.parse_args(["runs/a/x.pt", "--dataset", "runs/b/x.pt"])
    assert "--dataset needs a dataset's name before the checkpoint runs/b/x.pt" in capsys.readouterr().err
    # a dataset's name that is also a file here stays a dataset's when the checkpoint is given
    (tmp_path / "story").write_text("notes")
    monkeypatch.chdir(tmp_path)
    assert eval_py.parse_args(["runs/a/x.pt", "--dataset", "chat", "story"]).dataset == ["chat", "story"]
    # and a prepared dataset's folder given as its path is a dataset's, for load_meta to say how to name it (it was
    # called a second checkpoint, to loop over), the checkpoint given first or last
    (tmp_path / "data" / "chat").mkdir(parents=True)
    (tmp_path / "data" / "chat" / "meta.json").write_text('{"splits": {}, "vocab_size": 50304}')
    assert eval_py.parse_args(["runs/a/x.pt", "--dataset", "data/chat"]).dataset == ["data/chat"]
    args = eval_py.parse_args(["--dataset", "data/chat", "runs/a/x.pt"])
    assert (args.checkpoint, args.dataset) == ("runs/a/x.pt", ["data/chat"])
    with pytest.raises(SystemExit):  # an unknown option among them is still said as one, with its guess
        eval_py.parse_args(["runs/a/x.pt", "--blok", "3"])
    assert "unrecognized arguments: --blok 3 (did you mean --block_size?)" in capsys.readouterr().err


def test_short_names_drop_the_parts_all_share():
    assert eval_py.short_names(["runs/a/x_best.pt", "runs/b/x_best.pt"]) == (["a", "b"], "runs/*/x_best.pt")
    assert eval_py.short_names(["m/a.pt", "m/b.pt"]) == (["a.pt", "b.pt"], "m/*")
    assert eval_py.short_names(["r/a/x.pt", "r/a/s/x.pt"]) == (["x.pt", "s/x.pt"], "r/a/*")  # one part kept, at least
    assert eval_py.short_names(["a.pt", "/abs/b.pt"]) == (["a.pt", "/abs/b.pt"], None)


@pytest.fixture(scope="module")
def runs(env, chat_ckpt, tmp_path_factory):
    """chat_ckpt as runs/a/x_best.pt, and as runs/b/x_best.pt a model of another vocabulary (the other set's 300 ids),
    optimizer and lr, trained 2 steps."""
    out = tmp_path_factory.mktemp("runs")
    other = train.train(args_for(env, out, "--dataset", "other", "--max_steps", "2", "--eval_interval", "0",
                                 "--optimizer", "adamw", "--lr", "0.01"))["checkpoint"]
    for name, path in (("a", chat_ckpt), ("b", other)):
        (out / "runs" / name).mkdir(parents=True)
        shutil.copy(path, out / "runs" / name / "x_best.pt")
    return [str(out / "runs" / name / "x_best.pt") for name in "ab"]


def test_several_checkpoints_are_one_table_of_their_own_runs(env, runs, tmp_path, capsys):
    """`eval.py runs/*/x_best.pt` is one table, a row per checkpoint (each on its own dataset) whose numbers are those
    of eval.py on it alone, led by its shortest distinguishing path and the facts that differ; --json: a list of what
    each alone writes. A glob of one is eval.py on it alone: a dict, and the table of today."""
    few = ["--data_dir", env["data"], "--samples", "2", "--max_tokens", "4", *CPU]
    alone = []
    for path in runs:
        code, out, err = cli([path, *few, "--json", "-"], capsys)
        assert code == 0, err
        alone.append(json.loads(out))
    assert [r["rows"][0]["dataset"] for r in alone] == ["chat", "other"] and alone[0]["rows"][0]["replies"] == 2
    code, out, err = cli([*runs, *few, "--json", str(tmp_path / "all.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "all.json").read_text()) == alone
    lines = out.splitlines()
    pattern = os.path.join(os.path.dirname(os.path.dirname(runs[0])), "*", "x_best.pt")
    assert lines[0] == f"2 checkpoints {pattern}: model tiny modern 2x64" and "seed 1337" in lines[1], out
    head = lines[3].split()
    # (the tokens each trained on: a column too, where they differ, as runs of other batch sizes do)
    assert head[:10] == ["checkpoint", "params", "step", "tokens", "trained", "optimizer", "lr", "tokenizer", "vocab",
                         "dataset"], out
    for name, r, line in zip("ab", alone, lines[4:]):
        row = r["rows"][0]
        assert r["tokens"] == torch.load(r["checkpoint"], weights_only=True)["tokens"] > 0
        want = [name, train.fmt_count(r["params"]), str(r["step"]), train.fmt_count(r["tokens"]),
                r["train_args"]["optimizer"],
                f"{r['train_args']['lr']:.2g}", r["tokenizer"], str(r["vocab_size"]), row["dataset"],
                str(row["windows"]), f"{row['loss']:.4f}", f"{row['ppl']:,.2f}", f"{row['bpb']:.3f}"]
        assert line.split()[:len(want)] == want, out
    assert len(lines) == 6 and f"{runs[0]} (1 of 2)\n" in err  # whose progress and warnings follow
    # each on its own dataset, the dataset column says what each was trained on; on another, a column says it
    elsewhere = [{**r, "rows": [{**r["rows"][0], "dataset": "x"}]} for r in alone]
    assert "trained on" not in lines[3] and "trained on" in eval_py.format_table(elsewhere).splitlines()[3]
    code, out, err = cli([runs[0], *few], capsys)
    assert code == 0 and out.startswith(f"{runs[0]}: ") and out.splitlines()[3].startswith("dataset "), out
    # a pattern the shell left (quoted, or on Windows) is expanded: of one checkpoint, that one alone
    code, out, err = cli([runs[0].replace("/a/", "/[a]/"), *few, "--json", "-"], capsys)
    assert code == 0 and json.loads(out) == alone[0], err
    code, out, err = cli([pattern, *few, "--json", "-"], capsys)
    assert code == 0 and json.loads(out) == alone, err


def test_a_checkpoint_given_twice_is_evaluated_once(env, runs, tmp_path, capsys, monkeypatch):
    """`eval.py a.pt a.pt`, a glob and a name it matches, ./a.pt and a.pt, a link to it: one file, one row, and a note
    (each was evaluated again, a row of its own)."""
    few = ["--data_dir", env["data"], "--samples", "0", "--eval_batches", "1", *CPU, "--json", "-"]
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(runs[0]))))
    a, b = (os.path.relpath(r) for r in runs)
    code, out, err = cli([a, a, *few], capsys)
    assert code == 0 and json.loads(out)["checkpoint"] == a, err  # one: eval.py on it alone
    assert f"note: {a} is given twice: evaluated once\n" in err
    os.symlink(runs[0], tmp_path / "link.pt")
    code, out, err = cli([os.path.join("runs", "*", "x_best.pt"), "./" + b, str(tmp_path / "link.pt"), *few], capsys)
    assert code == 0 and [r["checkpoint"] for r in json.loads(out)] == [a, b], err
    assert f"note: ./{b} is given twice (as {b}): evaluated once\n" in err
    assert f"note: {tmp_path / 'link.pt'} is given twice (as {a}): evaluated once\n" in err


def test_several_checkpoints_one_of_another_tokenizer_fail_before_any_is_evaluated(env, runs, capsys, monkeypatch):
    """--dataset story for both: the second's vocabulary is not story's. One line naming it, before the first is
    evaluated (not after its minutes of work)."""
    monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    code, out, err = cli([*runs, "--dataset", "story", "--data_dir", env["data"], *CPU], capsys)
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {runs[1]} uses tokenizer "), err


def test_json_names_the_training_options_and_precision(env, chat_ckpt, capsys):
    """Runs compared by their eval.py JSON differ in options (--lr, --optimizer) that it did not hold: it holds the
    checkpoint's training options, and the device and dtype its numbers were measured in."""
    code, out, err = cli([chat_ckpt, "--data_dir", env["data"], "--dataset", "story", "--json", "-", *CPU], capsys)
    r = json.loads(out)
    assert code == 0 and r["train_args"] == torch.load(chat_ckpt, weights_only=True)["args"], err
    assert r["train_args"]["optimizer"] and (r["device"], r["dtype"]) == ("cpu", "float32")
    # the table's header says the optimizer, lr and vocabulary too: two runs' headers read the same
    code, out, err = cli([chat_ckpt, "--data_dir", env["data"], "--dataset", "story", *CPU], capsys)
    a = r["train_args"]
    assert f"to step 3 with {a['optimizer']} lr {a['lr']:.2g}; tokenizer " in out.splitlines()[0], out
    assert out.splitlines()[0].endswith(f" ({r['vocab_size']:,} ids)") and r["vocab_size"] == env["enc"].n_vocab, out


def test_a_checkpoint_naming_its_dataset_by_path_is_evaluated_there(env, chat_ckpt, tmp_path, monkeypatch):
    """Checkpoints from before --dataset took names only hold the data's path (/abs/data/chat): eval.py evaluates the
    folder it names, not a dataset of that name in ./data, which here does not exist."""
    ckpt = torch.load(chat_ckpt, weights_only=True)
    ckpt["dataset"], ckpt["args"]["data_dir"] = os.path.join(os.path.abspath(env["data"]), "chat"), "gone"
    del ckpt["data"]["data_dir"]  # (the folder its run saw: recorded since; those checkpoints had no such line)
    torch.save(ckpt, tmp_path / "old.pt")
    monkeypatch.chdir(tmp_path)
    r = eval_py.evaluate_checkpoint(str(tmp_path / "old.pt"), batch_size=4, samples=0, device="cpu", dtype="float32")
    windows = len(train.Windows(train.load_meta(env["data"], "chat"), "val", 64))
    assert [(row["dataset"], row["windows"]) for row in r["rows"]] == [("chat", windows)]
    # --dataset chat, the name it was trained on, is the same dataset: there too, not ./data/chat
    r = eval_py.evaluate_checkpoint(str(tmp_path / "old.pt"), datasets=["chat"], batch_size=4, samples=0, device="cpu",
                                    dtype="float32")
    assert [(row["dataset"], row["windows"]) for row in r["rows"]] == [("chat", windows)]


def test_bad_input_is_one_line(env, chat_ckpt, tmp_path, capsys):
    anonymous = str(tmp_path / "anonymous.pt")
    save_checkpoint(anonymous, fixed_model(env["enc"], 0), env["enc"])  # no dataset recorded
    for argv, words in (([str(tmp_path / "missing.pt")], "checkpoint " + str(tmp_path / "missing.pt") + " not found"),
                        ([chat_ckpt, "--dataset", "other"], "prepare the data with the checkpoint's tokenizer"),
                        ([chat_ckpt, "--dataset", "nope"], "python prepare.py --dataset text --source FILE --name "
                                                           "nope --out_dir"),
                        # in the model's own vocabulary, as train.py's hint (it made data eval.py then refused)
                        ([chat_ckpt, "--dataset", "nope"], f"--tokenizer {chat_ckpt}"),
                        ([chat_ckpt, "--block_size", "128"], "--block_size 128 is longer than the model's context"),
                        ([chat_ckpt, "--prompts", str(tmp_path / "none.txt")],
                         f"--prompt_file {tmp_path / 'none.txt'}: no such file"),
                        ([chat_ckpt, "--prompts", str(tmp_path)], f"--prompt_file {tmp_path} is a folder"),
                        ([anonymous], "pass --dataset NAME")):
        code, out, err = cli(argv + ["--data_dir", env["data"], *CPU], capsys)
        assert code == 1 and words in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    with pytest.raises(SystemExit) as e:
        eval_py.parse_args(["--help"])
    assert e.value.code == 0


def test_windows_without_an_assistant_token_are_an_error_not_a_loss_of_0(env, chat_ckpt, capsys):
    """A chat set's loss counts assistant tokens only: windows that hold none measured nothing, and were reported as a
    loss of 0.0000 and a perplexity of 1.00, a perfect model. The split's first window of 4 tokens ends before the
    first reply (a conversation opens with a user or system turn)."""
    code, out, err = cli([chat_ckpt, "--data_dir", env["data"], "--block_size", "4", "--eval_batches", "1",
                          "--batch_size", "1", "--samples", "0", *CPU], capsys)
    assert code == 1 and "0.0000" not in out, out
    assert "no assistant token" in err and "--eval_batches" in err and "--block_size" in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_a_val_split_of_short_last_documents_names_no_smaller_val_fraction(env, tmp_path, capsys):
    """A val split shorter than a window named a --val_fraction of twice the share one window takes of the text: where
    val's documents are shorter than the text's average, that share was no larger than the one the set was made with
    (10 documents, the last a word: --val_fraction 0.01 for a set made with 0.1), and the command it named made the
    same val again. Found by a seeded fuzz loop over eval.py's figures."""
    src = tmp_path / "notes.jsonl"
    docs = [f"Note {i}: " + "the cat ran home. " * 30 for i in range(9)] + ["x"]
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    data = str(tmp_path / "data")
    meta = prepare.prepare("text", source=str(src), tokenizer=env["tok"], out_dir=data, name="notes", val_fraction=0.1)
    assert meta["splits"]["val"]["tokens"] < 9  # the last document, "x"
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, fixed_model(env["enc"], 0), env["enc"], dataset="notes", args={"block_size": 8})
    code, out, err = cli([path, "--data_dir", data, *CPU], capsys)
    assert code == 1 and "fewer than one window of --block_size 8 + 1" in err, err
    assert all(float(f) > 0.1 for f in re.findall(r"--val_fraction ([0-9.]+[0-9])", err)), err
    assert "a larger --val_fraction than its 0.1" in err and len(err.strip().splitlines()) == 1, err
    prepare.prepare("text", source=str(src), tokenizer=env["tok"], out_dir=data, name="notes", val_fraction=0.2)
    code, out, err = cli([path, "--data_dir", data, *CPU], capsys)
    assert code == 0, err


def test_a_batch_too_large_for_memory_is_one_line_naming_a_smaller_batch_size(env, chat_ckpt, capsys, monkeypatch):
    """eval.py on GPT-2's checkpoint at its default --batch_size 16 wants 3.3 GB for one batch's logits alone: out of
    memory it ended in a traceback. Run as a command it caps its memory (common.cap_memory), so on Linux that is
    where a batch too large for the machine ends, not in the kernel killing it."""
    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1648361472 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(eval_py, "evaluate", fail)
    code, out, err = cli([chat_ckpt, "--dataset", "story", "--data_dir", env["data"], *CPU], capsys)
    assert code == 1 and "Traceback" not in err and re.search(
        r"out of memory evaluating .* in batches of --batch_size 16 x --block_size 64: use a smaller --batch_size "
        r"\(\[enforce fail", err), err
    code, out, err = cli([chat_ckpt, "--dataset", "story", "--data_dir", env["data"], "--batch_size", "1", *CPU],
                         capsys)
    assert code == 1 and "--batch_size 1 x --block_size 64: use a smaller --block_size (" in err, err  # (not 1 -> 0)
    code = ("import resource, runpy, sys\nsys.argv = ['eval.py', 'none.pt']\ntry:\n"
            "    runpy.run_path('eval.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import model\nprint(resource.getrlimit(resource.RLIMIT_DATA)[0] == model.physical_memory())")
    if sys.platform.startswith("linux"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.stdout.split()[-1:] == [str(not torch.cuda.is_available())], out.stdout + out.stderr


def test_a_loss_past_floats_is_valid_json_and_ppl_is_not_capped(env, chat_ckpt, capsys, monkeypatch):
    """A model gone to inf wrote "loss": Infinity (not JSON), and ppl was e^50 for any loss above 50."""
    for loss, ppl in ((60.0, math.exp(60.0)), (709.0, math.exp(709.0)), (3000.0, None), (math.inf, None)):
        monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: loss)
        code, out, err = cli([chat_ckpt, "--dataset", "story", "--data_dir", env["data"], "--json", "-", *CPU], capsys)
        row = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["rows"][0]
        assert code == 0 and row["ppl"] == ppl and row["loss"] == (loss if math.isfinite(loss) else None), out


def test_json_over_the_dataset_evaluated_is_refused(env, chat_ckpt, capsys, monkeypatch):
    """--json data/story/meta.json replaced the dataset's meta.json (or val.bin) with the results: refused before the
    evaluation, the dataset untouched."""
    monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: pytest.fail("evaluated before --json was checked"))
    for name in ("meta.json", "val.bin"):
        target = os.path.join(env["data"], "story", name)
        before = open(target, "rb").read()
        code, out, err = cli([chat_ckpt, "--dataset", "story", "--data_dir", env["data"], "--json", target, *CPU],
                             capsys)
        assert code == 1 and err == f"error: --json {target} is a file of the dataset in {os.path.dirname(target)}: " \
                                    f"the result would replace it; give another --json\n", err
        assert open(target, "rb").read() == before
    # another file there is no part of the dataset: an earlier run's results are written over, as anywhere
    out = os.path.join(env["data"], "story", "eval.json")
    for _ in range(2):
        monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: 2.0)
        code, _, err = cli([chat_ckpt, "--dataset", "story", "--data_dir", env["data"], "--json", out, *CPU], capsys)
        assert code == 0 and json.load(open(out))["rows"][0]["loss"] == 2.0, err
    os.remove(out)


def test_unusable_json_path_is_refused_before_evaluating(tmp_path, capsys, monkeypatch):
    # a folder, or a path through a file: one line naming --json, before the evaluation (not after it)
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(eval_py, "evaluate_checkpoint",
                        lambda *a, **k: pytest.fail("evaluated before --json was checked"))
    (tmp_path / "prompts.txt").write_text("Hi\n")
    (tmp_path / "any.pt").write_bytes(b"a checkpoint")
    for path, words in ((tmp_path, "is a folder"), (tmp_path / "file" / "x.json", "a part of the path is a file"),
                        (tmp_path / "prompts.txt", "is the --prompt_file it reads: the result would replace it"),
                        (tmp_path / "any.pt", "is the checkpoint it reads"),
                        # a folder that is not there yet: it failed after the evaluation, in a traceback
                        (f"{tmp_path}/new/", "is a folder: give a file's path")):
        code, out, err = cli([str(tmp_path / "any.pt"), "--json", str(path), "--prompt_file",
                              str(tmp_path / "prompts.txt"),
                              *CPU], capsys)
        assert code == 1 and err.startswith(f"error: --json {path}") and words in err, err
        assert len(err.strip().splitlines()) == 1 and out == "", err
    assert (tmp_path / "prompts.txt").read_text() == "Hi\n" and (tmp_path / "any.pt").read_bytes() == b"a checkpoint"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_json_to_a_pipe_or_device_is_written_through(env, chat_ckpt, tmp_path, capsys, monkeypatch):
    """--json /dev/null (or a named pipe) was renamed over: run as root, the machine's /dev/null became a regular file
    of JSON. A path that is not a regular file is written in place, and stays what it was. (A named pipe stands for
    /dev/null here: the test must not risk the real one.)"""
    monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: 2.0)
    fifo = str(tmp_path / "results")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader first: opening for writing then does not block
    try:
        code, out, err = cli([chat_ckpt, "--dataset", "story", "--data_dir", env["data"], "--json", fifo, *CPU], capsys)
        assert code == 0, err
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the pipe, not a file renamed over it
        assert json.loads(os.read(reader, 1 << 16))["rows"][0]["loss"] == 2.0
    finally:
        os.close(reader)
    assert sorted(os.listdir(tmp_path)) == ["results"]  # no probe or temporary file left beside it


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("gpt2")


def test_a_reply_ended_by_endoftext_is_not_ended(enc):
    histories = [[{"role": "user", "content": f"Hi {i}"}] for i in range(3)]
    sampling = dict(dtype=torch.float32, temperature=1.0, top_k=None, top_p=None)
    r = eval_py.reply_stats(fixed_model(enc, enc.eot_token), enc, histories, 10, 0, **sampling)
    assert r == {"replies": 3, "ended": 0.0, "mean_tokens": 0.0}


def chat_set(tmp_path, convs, pack):
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps({"messages": c}) for c in convs), encoding="utf-8")
    prepare.prepare("chat", source=str(src), out_dir=str(tmp_path / "data"), name="c", pack=pack, val_fraction=0.5)
    meta = json.loads((tmp_path / "data" / "c" / "meta.json").read_text())
    return dict(meta, folder=str(tmp_path / "data" / "c"))


def test_split_prompts_skip_padding_when_spreading(tmp_path, enc):
    convs = [[{"role": "user", "content": f"Question {i}?" + " word" * (i % 9)},
              {"role": "assistant", "content": f"Answer {i}."}] for i in range(60)]
    meta = chat_set(tmp_path, convs, 64)
    assert meta["splits"]["val"]["padding"] > 10
    numbers = [int(p[-1]["content"].split()[1].rstrip("?")) for p in eval_py.split_prompts(meta, "val", enc, 3)]
    val = sorted({int(m["content"].split()[1].rstrip("?")) for m in
                  [p[-1] for p in eval_py.split_prompts(meta, "val", enc, 1000)]})
    assert len(val) == 30
    # the packer reorders conversations: the picks are spread over the split's conversations, padding left out
    from prepare import document_ends
    from setup_tokenizer import parse_chat
    ids = np.memmap(os.path.join(meta["folder"], "val.bin"), dtype=meta["dtype"], mode="r")
    ends = document_ends(ids, enc.eot_token)
    starts = np.concatenate([[0], ends[:-1]])
    order = [int(parse_chat(enc, ids[s:e])[0]["content"].split()[1].rstrip("?"))
             for s, e in zip(starts, ends) if e - s > 1]
    assert numbers == [order[i] for i in np.linspace(0, len(order) - 1, 3).round().astype(int)]


def test_split_prompts_fall_back_past_conversations_without_a_user_message(tmp_path, enc):
    convs = []
    for i in range(40):
        convs.append([{"role": "assistant", "content": f"Greeting {i}."}])
        convs.append([{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}])
    meta = chat_set(tmp_path, convs, 0)
    prompts = eval_py.split_prompts(meta, "val", enc, 6)
    assert len(prompts) == 6 and all(p[-1]["role"] == "user" for p in prompts)


def coin_model(enc, a, b):
    """fixed_model's, with two tokens at 0: each step says a or b with p = 1/2."""
    model = fixed_model(enc, a)
    with torch.no_grad():
        model.lm_head.weight[b, 0] = 0.0
    return model


def test_reply_stats_follow_the_seed(enc):
    # replies that end at a random step: the same seed gives the same statistics, another seed others
    histories = [[{"role": "user", "content": f"Hi {i}"}] for i in range(8)]
    sampling = dict(dtype=torch.float32, temperature=1.0, top_k=None, top_p=None)
    model = coin_model(enc, enc.encode_single_token(IM_END), enc.encode_ordinary(" the")[0])
    runs = [eval_py.reply_stats(model, enc, histories, 10, seed, **sampling) for seed in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]


def test_top_p_reaches_the_replies(env, tmp_path):
    # the replies are sampled with --top_p: a nucleus of one token leaves no chance, so every reply takes the same turn
    # (each ends at once, or none does), where sampling from both tokens ends some and not others
    enc = env["enc"]
    path = str(tmp_path / "coin.pt")
    save_checkpoint(path, coin_model(enc, enc.encode_single_token(IM_END), enc.encode_ordinary(" the")[0]), enc,
                    dataset="chat")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Hello {i}!\n" for i in range(8)), encoding="utf-8")
    rows = {top_p: eval_py.evaluate_checkpoint(path, data_dir=env["data"], prompt_file=str(prompts),
                                               max_tokens=1, temp=1.0,
                                               top_p=top_p, device="cpu", dtype="float32", eval_batches=1)["rows"][-1]
            for top_p in (None, 0.25)}
    assert 0 < rows[None]["ended"] < 1
    assert (rows[0.25]["ended"], rows[0.25]["mean_tokens"]) in ((1.0, 0.0), (0.0, 1.0))


def test_prompt_file_replies_of_a_plain_text_model_are_warned_of(env, tmp_path, capsys):
    """--prompt_file's prompts are answered as a chat: a model trained on plain text (a story model) got an "ended" of
    0% without a word of why, where gen.py and serve.py say it; a chat model's replies get no warning."""
    enc = env["enc"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello!\n", encoding="utf-8")
    for kind in ("text", "chat"):
        path = str(tmp_path / f"{kind}.pt")
        save_checkpoint(path, fixed_model(enc, 0), enc, dataset="story" if kind == "text" else "chat",
                        data={"kind": kind})
        code, out, err = cli([path, "--data_dir", env["data"], "--prompt_file", str(prompts), "--max_tokens", "1",
                              "--eval_batches", "1", *CPU], capsys)
        assert code == 0 and ("was trained on plain text (story)" in err) == (kind == "text"), err
        assert kind == "chat" or "its replies to --prompt_file (answered as a chat" in err


def test_repetition_penalty_reaches_the_replies(env, chat_ckpt, tmp_path, capsys, monkeypatch):
    """eval.py answers "as gen.py --chat answers", but had no --repetition_penalty: a model chatted with one could not
    be measured as it was used."""
    seen = []
    reply = eval_py.chat_reply
    monkeypatch.setattr(eval_py, "chat_reply", lambda *a, **k: seen.append(k["repetition_penalty"]) or reply(*a, **k))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello!\nHow are you?\n", encoding="utf-8")
    code, out, err = cli([chat_ckpt, "--prompt_file", str(prompts), "--max_tokens", "2", "--repetition_penalty", "1.3",
                          "--data_dir", env["data"], "--eval_batches", "1", *CPU], capsys)
    assert code == 0 and seen == [1.3, 1.3], err
    assert ", top_k 200, repetition_penalty 1.3, seed 1337" in out
    seen.clear()
    code, out, err = cli([chat_ckpt, "--prompt_file", str(prompts), "--max_tokens", "2", "--data_dir", env["data"],
                          "--eval_batches", "1", *CPU], capsys)
    assert code == 0 and seen == [1.0, 1.0] and ", top_k 200, seed 1337" in out, err  # off: not said


def test_cli_options_and_the_table(env, chat_ckpt, capsys, monkeypatch):
    # --samples 0 samples nothing (0 is a count, not refused); a negative one is refused
    assert eval_py.parse_args(["m.pt", "--samples", "0"]).samples == 0
    with pytest.raises(SystemExit):  # with a file of prompts: its row was left out without a word
        eval_py.parse_args(["m.pt", "--samples", "0", "--prompt_file", "p.txt"])
    assert "--samples 0 answers none of --prompt_file p.txt's prompts: give a count, or drop --prompt_file" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_py.parse_args(["m.pt", "--samples", "-1"])
    # a checkpoint named last without a folder (x.pt, not there yet) is the checkpoint, not a dataset
    assert eval_py.parse_args(["--dataset", "story", "x.pt"]).checkpoint == "x.pt"
    # the table says top_p when it was used, and a perplexity past float's range as inf (not nan: no loss was nan)
    monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: 3000.0)
    few = ["--dataset", "chat", "story", "--samples", "1", "--max_tokens", "1"]  # a chat set: the replies' settings
    code, out, err = cli([chat_ckpt, *few, "--data_dir", env["data"], "--top_p", "0.9", *CPU], capsys)
    assert code == 0 and ", top_p 0.9, seed 1337" in out, err
    # the file of prompts is --prompt_file, as gen.py names the same file in the same format; --prompts still works
    assert eval_py.parse_args(["m.pt", "--prompt_file", "p.txt"]).prompt_file == "p.txt"
    assert eval_py.parse_args(["m.pt", "--prompts", "p.txt"]).prompt_file == "p.txt"
    assert eval_py.parse_args(["m.pt", "--prompts=p.txt"]).prompt_file == "p.txt"
    # and --prompt, an abbreviation, is --prompt_file's: it was "ambiguous", naming the unshown --prompts
    assert eval_py.parse_args(["m.pt", "--prompt", "p.txt"]).prompt_file == "p.txt"
    # --top_k 0 is no limit, as in gen.py and serve.py's API: the table says so
    assert eval_py.parse_args(["m.pt", "--top_k", "0"]).top_k is None
    code, out, err = cli([chat_ckpt, *few, "--data_dir", env["data"], "--top_k", "0", *CPU], capsys)
    assert code == 0 and "temp 0.8, top_k off, seed 1337" in out, err
    story = next(line.split() for line in out.splitlines() if line.startswith("story"))
    assert story[2:4] == ["3000.0000", "inf"], out


def test_float16_on_a_cpu_is_warned_of_as_gen_py_does(env, chat_ckpt, capsys, monkeypatch):
    # emulated there, many times slower than float32 (a recipe's --dtype float16, made for a GPU): gen.py and train.py
    # said so, eval.py ran its windows and replies slowly without a word
    monkeypatch.setattr(eval_py, "evaluate", lambda *a, **k: 3.0)
    few = [chat_ckpt, "--samples", "1", "--max_tokens", "1", "--data_dir", env["data"], "--device", "cpu"]
    code, _, err = cli(few + ["--dtype", "float16"], capsys)
    assert code == 0 and "warning: --dtype float16 is emulated on this CPU, slower than float32 (float16 many " \
                         "times): use --dtype auto\n" in err, err
    code, _, err = cli(few + ["--dtype", "float32"], capsys)
    assert code == 0 and "emulated" not in err, err


def test_split_prompts_wrap_around_past_the_last_conversations(tmp_path, enc):
    """When the evenly spread pick at the end of the split has no user message, nor has anything after it, an
    untaken conversation before it takes its place: --samples 2 still gives 2 replies."""
    from setup_tokenizer import render_chat
    convs = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
             for i in range(3)] + [[{"role": "assistant", "content": f"Greeting {i}."}] for i in range(2)]
    ids = [t for c in convs for t in render_chat(enc, c)[0] + [enc.eot_token]]
    folder = tmp_path / "c"
    folder.mkdir()
    np.array(ids, dtype=np.uint16).tofile(folder / "val.bin")
    prompts = eval_py.split_prompts({"folder": str(folder), "dtype": "uint16"}, "val", enc, 2)
    assert [p[-1]["content"] for p in prompts] == ["Question 0?", "Question 1?"]
    assert eval_py.split_prompts({"folder": str(folder), "dtype": "uint16"}, "val", enc, 0) == []
    # a split of packing padding alone (lone <|endoftext|>s) has no conversation to take a prompt from
    np.array([enc.eot_token] * 8, dtype=np.uint16).tofile(folder / "val.bin")
    assert eval_py.split_prompts({"folder": str(folder), "dtype": "uint16"}, "val", enc, 2) == []


def test_the_table_lines_up_under_wide_dataset_names():
    # a dataset named in Chinese (prepare.py --name 中文), or a --prompt_file's path in Japanese: each of its characters
    # takes two columns on a terminal, and the table, padded by characters, shifted that row's numbers right
    row = {"windows": 1, "loss": 1.0, "ppl": 2.7, "bpb": 1.0, "replies": None, "ended": None, "mean_tokens": None}
    result = {"checkpoint": "m.pt", "model": "tiny", "variant": "modern", "n_layer": 1, "n_embd": 8, "params": 1,
              "trained_on": None, "step": None, "tokenizer": "gpt2", "split": "val", "block_size": 8,
              "sampling": {"samples": 0, "max_tokens": 1, "temperature": 0.8, "top_k": None, "top_p": None,
                           "repetition_penalty": 1.0, "seed": 0},
              "rows": [dict(row, dataset=name) for name in ("中文小说集", "story", "e\u0301te\u0301")]}
    header, *rows = eval_py.format_table(result).splitlines()[-4:]

    def width(text):  # columns on a terminal
        return sum(2 if unicodedata.east_asian_width(c) == "W" else 0 if unicodedata.combining(c) else 1 for c in text)
    # where the windows column ends: the header's "windows", each row's count of 1
    ends = [width(header[:header.index("windows") + 7])] + [width(line[:line.index(" 1 ") + 2]) for line in rows]
    assert len(set(ends)) == 1, (header, *rows)


def test_the_evaluation_of_every_window_shows_its_progress(env, chat_ckpt, monkeypatch):
    """Every window of a large val split is hours on a CPU: a bar on a terminal counts the windows to their total, where
    nothing was said until the table."""
    Bar.made.clear()
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    monkeypatch.setattr(common, "draws_a_bar", lambda stream: True)
    r = eval_py.evaluate_checkpoint(chat_ckpt, datasets=["story"], data_dir=env["data"], samples=0, device="cpu",
                                    dtype="float32")
    (bar,) = Bar.made
    assert not bar.disable and bar.total == r["rows"][0]["windows"] == bar.n


def test_the_evaluation_off_a_terminal_says_its_progress_in_lines(env, chat_ckpt, monkeypatch, capsys):
    """Off a terminal (a nohup run's log, standard error a file) the hours of a large split's windows went by without
    a word: a line every PROGRESS_LINE_S seconds, the windows done of their total."""
    monkeypatch.setattr(common, "PROGRESS_LINE_S", 0)  # a line at every batch but the first
    r = eval_py.evaluate_checkpoint(chat_ckpt, datasets=["story"], data_dir=env["data"], samples=0, batch_size=4,
                                    device="cpu", dtype="float32")
    n = r["rows"][0]["windows"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("story val: ")]
    # (the first batch's none: a rate is timed from it, ProgressLines')
    assert len(lines) == math.ceil(n / 4) - 1 > 1 and all(line.endswith(" windows/s") for line in lines)
    assert lines[-1].startswith(f"story val: {n:,} windows of {n:,} windows (100%)")


def test_run_as_a_command_bad_input_is_one_line(tmp_path):
    """`python eval.py ...` from a shell: a missing checkpoint ends in one error line and status 1 (run_main under
    __main__), not a traceback; the tests above call main() in-process, past that block."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "eval.py"), "none.pt"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    script = shlex.quote(os.path.join(root, "train.py"))  # (run from outside the repository: its whole path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "error: checkpoint none.pt not found; no "
                                                         "checkpoints in models/ "
                                                         f"yet: train one with `python {script}`\n")
