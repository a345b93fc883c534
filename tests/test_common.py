"""common.py: the one-line errors for what the machine refuses (full disk, no permission, a folder where a file
should be), output paths checked before the work, and --device parsing."""
import concurrent.futures
import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import warnings

import pytest
import torch

import common
from conftest import HANGUP, ROOT, hangup_as, run_cli
from common import (UserError, atomic_torch_save, atomic_write_text, check_output, pick_device, remove_stale_tmp,
                    run_main)


def test_outputs_are_checked_before_any_work(tmp_path):
    check_output(str(tmp_path / "new" / "deeper" / "x.pt"), "--output_checkpoint")  # creates the folders
    assert os.listdir(tmp_path / "new" / "deeper") == []  # and leaves no probe behind
    check_output(str(tmp_path / "out"), "--out_dir", folder=True)
    assert (tmp_path / "out").is_dir()
    with pytest.raises(UserError, match=r"^--output_checkpoint .* is a folder: give a file's path$"):
        check_output(str(tmp_path), "--output_checkpoint")
    # a folder not there yet, or nothing: they passed, and the write failed after the work (setup_tokenizer.py --out)
    with pytest.raises(UserError, match=r"^--out .*/later/ is a folder: give a file's path$"):
        check_output(f"{tmp_path}/later/", "--out")
    with pytest.raises(UserError, match=r"^--out is empty: give a path$"):
        check_output("", "--out")
    (tmp_path / "a_file").write_text("x")
    # (one line, whichever errno makedirs meets: EEXIST for the file's folder, ENOTDIR below it)
    with pytest.raises(UserError, match=r"^--output_checkpoint .*/a_file/x\.pt: a part of the path is a file, not a "
                                        r"folder$"):
        check_output(str(tmp_path / "a_file" / "x.pt"), "--output_checkpoint")
    with pytest.raises(UserError, match=r"^--out_dir .*/a_file/sub: a part of the path is a file, not a folder$"):
        check_output(str(tmp_path / "a_file" / "sub"), "--out_dir", folder=True)
    # a vocabulary outside data/ (prepare.py --tokenizer FILE reads it again): eval.py --json or gen.py --output over it
    # wrote JSON there; setup_tokenizer.py retrains one in place
    vocab = tmp_path / "v.tiktoken"
    vocab.write_text("IQ== 0\n")
    for option in ("--json", "--output", "--out"):
        with pytest.raises(UserError, match=rf"^{option} .*v\.tiktoken is a vocabulary: the result would replace it; "
                                            rf"give another {option}$"):
            check_output(str(vocab), option)
    check_output(str(vocab), "--out", vocabulary=True)
    assert vocab.read_text() == "IQ== 0\n"
    # a run's metrics (gen.py --output models/story_metrics.jsonl: its history gone); a file of another's records is not
    metrics = tmp_path / "story_metrics.jsonl"
    metrics.write_text('{"run": "ab12", "step": 10, "epoch": 0.1, "tokens": 20480, "train_loss": 5.1}\n')
    with pytest.raises(UserError, match=r"^--output .*story_metrics\.jsonl is a training run's metrics: the result "
                                        r"would replace it; give another --output$"):
        check_output(str(metrics), "--output")
    metrics.write_text('{"prompt": "Once", "completion": " upon", "end": "max_tokens"}\n')
    check_output(str(metrics), "--output")
    metrics.write_text("step 10: loss 5.1\n")  # a log of another kind, not JSON: not a run's either
    check_output(str(metrics), "--output")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UserError, match="cannot write there .*: check its permissions, or use another path"):
            check_output(str(ro / "x.pt"), "--output_checkpoint")


class FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("a bug in what is saved")


def test_a_save_that_fails_for_a_bug_keeps_its_traceback_and_the_previous_file(tmp_path):
    """torch's writer's RuntimeError on a full disk is one line ("could not write ... free some space"); any other
    RuntimeError in torch.save is a bug, which keeps its own traceback, not that line. Either way the previous file
    stays and no temporary file is left."""
    path = str(tmp_path / "x.pt")
    atomic_torch_save({"step": 1}, path)
    before = open(path, "rb").read()
    with pytest.raises(RuntimeError, match="^a bug in what is saved$"):
        atomic_torch_save({"step": 2, "bad": FailsToPickle()}, path)
    assert os.listdir(tmp_path) == ["x.pt"] and open(path, "rb").read() == before


def test_ctrl_c_mid_save_keeps_the_previous_file_and_leaves_no_temporary_one(tmp_path, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt, no Exception) as a save flushes its file: the previous text or checkpoint stays,
    and its temporary file goes at once, not 10 minutes later by the next save (remove_stale_tmp). Removing it on an
    Exception alone passed every test for text files (a hand-made mutation)."""
    text, ckpt = str(tmp_path / "meta.json"), str(tmp_path / "x.pt")
    atomic_write_text(text, "old")
    atomic_torch_save({"step": 1}, ckpt)

    def ctrl_c(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", ctrl_c)
    for save in (lambda: atomic_write_text(text, "new"), lambda: atomic_torch_save({"step": 2}, ckpt)):
        with pytest.raises(KeyboardInterrupt):
            save()
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "x.pt"]
    assert open(text).read() == "old" and torch.load(ckpt, weights_only=True) == {"step": 1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_save_into_a_pipe_or_device_is_written_through(tmp_path):
    """A checkpoint saved over /dev/null (or a named pipe) was renamed over it: as root the machine's /dev/null became a
    file. A FIFO stands for it here (the test must not risk the real one); test_eval.py has eval.py --json's."""
    import stat
    import threading
    import torch
    fifo = str(tmp_path / "null.pt")
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    atomic_torch_save({"x": torch.arange(3)}, fifo)
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got and got[0][:2] == b"PK"  # the archive went through the pipe
    assert sorted(os.listdir(tmp_path)) == ["null.pt"]  # no temporary file left beside it


@pytest.mark.parametrize("script, argv", [
    # "" is what an unset shell variable gives (--checkpoint "$CKPT"): train.py trained a fresh model over it, gen.py
    # sampled the newest checkpoint in models/, eval.py printed its table and wrote no --json, prepare.py read no file
    ("train", ["--dataset", "story", "--checkpoint", ""]), ("train", ["--output_checkpoint", ""]),
    ("train", ["--dataset", ""]), ("gen", [""]), ("gen", ["--prompt_file", ""]), ("eval", ["--json", ""]),
    ("gen", ["--checkpoint", ""]),  # train.py's spelling, which gen/eval/serve take too: the very "$CKPT" habit
    ("prepare", ["--source", "a.txt", ""]), ("setup_tokenizer", ["train", "--input", "a.txt", "--out", ""]),
    ("serve", ["", "--port", "-1"]), ("export", ["", "hf/x"]), ("export", ["x.pt", ""]), ("bench", ["--out", ""]),
    ("prepare", ["--mix", ""]),  # it built every dataset, as a bare `prepare.py` does
    ("serve", ["x.pt", "--host", ""])])  # it listened on every network (0.0.0.0), unasked
def test_an_empty_path_is_refused_not_read_as_left_out(script, argv, capsys):
    main = __import__(script).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and ": is empty: give a value; see " in err, err


def test_a_path_given_with_a_tilde_the_shell_left_is_in_the_home_folder(tmp_path, monkeypatch, capsys):
    """`--out_dir=~/data`: the shell expands ~ in a word of its own, not after `=`, and the scripts wrote into a folder
    named ~ in the working directory. Every path option expands it, as the shell would have."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert common.path_arg("~/x.pt") == str(home / "x.pt") and common.path_arg("a/~/x") == "a/~/x"
    import eval as eval_script
    import export
    import gen
    import train
    for parse, argv, got in (
            (train.parse_args, ["--output_checkpoint=~/m/x.pt", "--data_dir=~/d", "--init_from=~/hf",
                                "--tokenizer=~/t.tiktoken"],
             lambda a: [a.output_checkpoint, a.data_dir, a.init_from, a.tokenizer]),
            (train.parse_args, ["--checkpoint=~/m/x.pt"], lambda a: [a.checkpoint]),
            (gen.parse_args, ["~/m/x.pt", "--prompt_file=~/p.txt", "--output=~/o.jsonl"],
             lambda a: [a.checkpoint, a.prompt_file, a.output]),
            (eval_script.parse_args, ["~/m/x.pt", "--json=~/r.json", "--data_dir=~/d", "--prompt_file=~/p.txt"],
             lambda a: [a.checkpoint, a.json, a.data_dir, a.prompt_file]),
            (export.parse_args, ["~/m/x.pt", "~/hf"], lambda a: [a.checkpoint, a.out_dir])):
        assert all(p.startswith(str(home) + os.sep) for p in got(parse(argv))), (argv, got(parse(argv)))
    # the scripts whose parser is inside main: prepare.py writes its dataset in the home folder
    import prepare
    (work / "a.txt").write_text("Once upon a time there was a cat.\n<|endoftext|>\nThe end of another story.\n")
    code, out, err = run_cli(prepare.main, ["--dataset", "text", "--source=~/../work/a.txt", "--name", "cats",
                                            "--out_dir=~/data"], capsys)
    assert code == 0 and os.path.isfile(home / "data" / "cats" / "meta.json") and not os.path.exists(work / "~"), err


def test_a_main_called_from_a_notebook_takes_a_string_numbers_and_paths(tmp_path, monkeypatch):
    """A teacher's cell calls the scripts' mains with the options: a string, as README's commands read, was taken
    character by character ("unrecognized arguments: - d a t a s e t"), and a number or a pathlib.Path in a list
    ended in a traceback (int.startswith). main() in a Jupyter kernel read the kernel's own options (-f, its connection
    file): gen.py took that file for the checkpoint."""
    import pathlib
    import eval as eval_script
    import export
    import gen
    import train
    monkeypatch.chdir(tmp_path)
    args = train.parse_args("--dataset story --epochs 1 --output_checkpoint 'my runs/{dataset}.pt'")
    assert (args.dataset, args.epochs, args.output_checkpoint) == ("story", 1, "my runs/{dataset}.pt")
    args = train.parse_args(["--dataset", "story", "--max_steps", 3, "--lr", 1e-3, "--data_dir", pathlib.Path("d")])
    assert (args.max_steps, args.lr, args.data_dir) == (3, 1e-3, "d")
    assert gen.parse_args([pathlib.Path("m.pt"), "--max_tokens", 5]).checkpoint == "m.pt"
    assert eval_script.parse_args([pathlib.Path("m.pt"), "--samples", 0]).samples == 0
    assert export.parse_args([pathlib.Path("m.pt"), pathlib.Path("hf")]).out_dir == "hf"
    with pytest.raises(UserError, match=r"^the options hold None, a NoneType: each is a string, as typed on a "
                                        r"command line$"):
        gen.parse_args(["--checkpoint", None])
    with pytest.raises(UserError, match=r"^the options \"--prompt 'Once\" do not split as a shell's words \(No "
                                        r"closing quotation\): give a list of them$"):
        gen.parse_args("--prompt 'Once")
    # a Jupyter kernel's own command line: no options for the script's; another program's are its options, as ever
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(sys, "argv", ["/venv/lib/ipykernel_launcher.py", "-f", "/run/kernel-1.json"])
    assert gen.parse_args().checkpoint is None and train.parse_args().dataset is None
    # VS Code's kernels: their ports as options and the file as --f= (it was "unrecognized arguments: --ip=...")
    monkeypatch.setattr(sys, "argv", ["/venv/lib/ipykernel_launcher.py", "--ip=127.0.0.1", "--stdin=9003",
                                      "--control=9001", "--hb=9000", "--Session.signature_scheme=hmac-sha256",
                                      "--shell=9002", "--transport=tcp", "--iopub=9004", "--f=/tmp/tmp-1.json"])
    assert gen.parse_args().checkpoint is None and train.parse_args().dataset is None
    monkeypatch.setattr(sys, "argv", ["gen.py", "m.pt"])
    assert gen.parse_args().checkpoint == "m.pt"


@pytest.mark.parametrize("script, option, value, kind", [
    # options read by a function that checks a range too (common.number) and plain type=int/float ones alike: the
    # ranged ones said "invalid positive_int value", "invalid temperature value", ... naming a function, not a type
    ("gen", "--max_tokens", "1.5", "int"), ("gen", "--top_k", "x", "int"), ("gen", "--temp", "warm", "float"),
    ("gen", "--top_p", "x", "float"), ("gen", "--repetition_penalty", "x", "float"), ("eval", "--samples", "x", "int"),
    ("eval", "--batch_size", "1.5", "int"), ("serve", "--port", "http", "int"), ("serve", "--max_queue", "x", "int"),
    ("serve", "--max_connections", "x", "int"),
    ("train", "--max_steps", "1.5", "int"), ("train", "--lr", "x", "float"), ("bench", "--steps", "1.5", "int"),
    ("prepare", "--limit", "1.5", "int")])
def test_a_non_number_is_the_same_line_in_every_script(script, option, value, kind, capsys):
    code, err = refused_option(script, option, value, capsys)
    assert code == 2 and err == usage_error(script, f"argument {option}: invalid {kind} value: {value!r}"), err


def usage_error(script, message, *command):
    """The one line a script's argparse ends in (common.ArgumentParser), not the usage first (train.py's: 20 lines);
    after a subcommand, that subcommand's (its --help lists its options)."""
    prog = " ".join([script + ".py", *command])
    return f"{prog}: error: {message}; see {common.script_command(script + '.py', *command, '--help')}\n"


@pytest.mark.parametrize("script, given, said", [
    ("train", ["--block-size=64"], "unrecognized arguments: --block-size=64 (did you mean --block_size?)"),
    ("prepare", ["--dataset", "story", "--vocab-size", "512"], "unrecognized arguments: --vocab-size 512 (did you mean "
                                                             "--vocab_size?)"),
    ("gen", ["x.pt", "--temprature", "0.5", "--no-cache"],
     "unrecognized arguments: --temprature 0.5 --no-cache (did you mean --temp, --no_cache?)"),
    ("eval", ["x.pt", "--zzz"], "unrecognized arguments: --zzz"),  # nothing close: no guess
    # the name alone of --name=VALUE is matched: a long value hid the close option
    ("prepare", ["--dataset", "story", "--out-dir=/tmp/a/much/longer/folder/of/datasets"],
     "unrecognized arguments: --out-dir=/tmp/a/much/longer/folder/of/datasets (did you mean --out_dir?)"),
    # a value holding ": " (a prompt) is no place to start reading the arguments from
    ("gen", ["x.pt", "--promt", "Q: why?"], "unrecognized arguments: --promt Q: why? (did you mean --prompt?)"),
    # two misspellings of one option: named once ("--temp, --temp?")
    ("gen", ["x.pt", "--temprature", "1", "--tempratur", "2"],
     "unrecognized arguments: --temprature 1 --tempratur 2 (did you mean --temp?)"),
    # a long option after one dash, as other tools spell them, is guessed too: argparse said no more than its name
    ("gen", ["x.pt", "-temp", "0.5"], "unrecognized arguments: -temp 0.5 (did you mean --temp?)"),
    ("train", ["-max-steps=3"], "unrecognized arguments: -max-steps=3 (did you mean --max_steps?)"),
    # (and as that option, where it is another tool's name: left with one dash, no close spelling found it)
    ("train", ["-learning_rate=1e-3"], "unrecognized arguments: -learning_rate=1e-3 (did you mean --lr?)"),
    # one starting with h is read as -h given the rest (ignored): the word typed is guessed from
    ("serve", ["x.pt", "-host", "0.0.0.0"], "argument -h/--help: ignored explicit argument 'ost' (did you "
                                            "mean --host?)"),
    # and is no switch given a value ("-h is a switch: ...") where nothing is guessed
    ("gen", ["x.pt", "-hzzzzz"], "argument -h/--help: ignored explicit argument 'zzzzz'"),
    # -h is no guess for a long word (--hz was nearer -h than --host)
    ("serve", ["x.pt", "--hz"], "unrecognized arguments: --hz (did you mean --host?)"),
    # a single letter, or a number (a value), is no long option: no guess
    ("gen", ["x.pt", "-t", "-1"], "unrecognized arguments: -t -1"),
    ("train", ["-l"], "unrecognized arguments: -l"),  # (not --lr, as near as a close spelling)
    # nanoGPT's names, typed by habit, are ours where no close spelling finds them (nothing was guessed) or finds
    # another (--eval_iters is val batches, not --eval_interval; --out_dir was read as --data_dir)
    ("train", ["--learning_rate=1e-3", "--gradient_accumulation_steps=4"],
     "unrecognized arguments: --learning_rate=1e-3 --gradient_accumulation_steps=4 (did you mean --lr, --grad_accum?)"),
    ("train", ["--eval_iters=20", "--out_dir=out"],
     "unrecognized arguments: --eval_iters=20 --out_dir=out (did you mean --eval_batches, --output_checkpoint?)"),
    ("train", ["--always_save_checkpoint=False"],
     "unrecognized arguments: --always_save_checkpoint=False (did you mean --save_interval?)"),
    # nanoGPT's --eval_only is eval.py's work here: it was "did you mean --eval_interval?", an option that trains on;
    # from eval.py itself, nothing
    ("train", ["--eval_only=True", "--eval_iters=20"], "unrecognized arguments: --eval_only=True --eval_iters=20 (did "
                                                       "you mean --eval_batches?) (--eval_only: `python eval.py "
                                                       "CHECKPOINT` evaluates a checkpoint)"),
    ("eval", ["x.pt", "--eval_only"], "unrecognized arguments: --eval_only"),
    # nanoGPT's dataset shakespeare_char: "invalid choice" named no way to a token a character
    ("prepare", ["--dataset", "shakespeare_char"], "argument --dataset: nanoGPT's shakespeare_char is made here by "
                                                   "`python prepare.py --dataset shakespeare --vocab_size 259 --name "
                                                   "shakespeare_char`"),
    # Hugging Face Trainer's and generate()'s, as many fine-tuning guides give them
    ("train", ["--per_device_train_batch_size=4", "--max_seq_length=128", "--model_name_or_path=gpt2"],
     "unrecognized arguments: --per_device_train_batch_size=4 --max_seq_length=128 --model_name_or_path=gpt2 (did "
     "you mean --batch_size, --block_size, --init_from?)"),
    ("gen", ["--model_name_or_path=m.pt", "--num_return_sequences=3"],
     "unrecognized arguments: --model_name_or_path=m.pt --num_return_sequences=3 (did you mean --checkpoint, "
     "--num_samples?)"),
    # minimind's: --hidden_size was "did you mean --batch_size?", --max_seq_len --max_steps, --accumulation_steps
    # --max_steps, --save_dir --save_interval, --dim --device; its --max_seq_len in eval_model.py is the reply's length
    ("train", ["--hidden_size=512", "--num_attention_heads=8", "--max_seq_len=512", "--accumulation_steps=8"],
     "unrecognized arguments: --hidden_size=512 --num_attention_heads=8 --max_seq_len=512 --accumulation_steps=8 (did "
     "you mean --n_embd, --n_head, --block_size, --grad_accum?)"),
    ("train", ["--dim=512", "--save_dir=out", "--from_weight=pretrain", "--num_workers=1"],
     "unrecognized arguments: --dim=512 --save_dir=out --from_weight=pretrain --num_workers=1 (did you mean --n_embd, "
     "--output_checkpoint, --checkpoint?)"),
    ("gen", ["--model_path=m.pt", "--max_seq_len=100", "--save_dir=out", "--num_workers=1"],
     "unrecognized arguments: --model_path=m.pt --max_seq_len=100 --save_dir=out --num_workers=1 (did you mean "
     "--checkpoint, --max_tokens?)"),
    # the --resume of many training scripts: nothing was guessed (its value is read as the checkpoint, positional)
    ("gen", ["--resume", "models/story.pt"], "unrecognized arguments: --resume (did you mean --checkpoint?)"),
    # minimind's resume-if-present, train.py's --resume
    ("train", ["--from_resume=1"], "unrecognized arguments: --from_resume=1 (did you mean --resume?)"),
    # sample.py's: its --out_dir and --init_from name the model, gen.py's checkpoint
    ("gen", ["--out_dir=out", "--start=ROMEO:"],
     "unrecognized arguments: --out_dir=out --start=ROMEO: (did you mean --checkpoint, --prompt?)"),
    ("gen", ["--init_from=gpt2"], "unrecognized arguments: --init_from=gpt2 (did you mean --checkpoint?)"),
    # its --compile, where gen.py has none: no guess (it was --prompt_file)
    ("gen", ["x.pt", "--compile=False"], "unrecognized arguments: --compile=False"),
    # the model to load as other tools name it: it was "did you mean --no_delay?", and --help in the others
    ("gen", ["--model", "m.pt"], "unrecognized arguments: --model (did you mean --checkpoint?)"),
    ("serve", ["--model=m.pt"], "unrecognized arguments: --model=m.pt (did you mean --checkpoint?)"),
    # eval.py's --prompts (its --prompt_file's first name): --prompt would continue the file's name as text
    ("gen", ["x.pt", "--prompts", "p.txt"], "unrecognized arguments: --prompts p.txt (did you mean --prompt_file?)"),
    # and where the script has none of them, nothing: not the option its spelling is nearest ("did you mean --port?")
    ("serve", ["x.pt", "--start=Hi", "--eval_iters=2"], "unrecognized arguments: --start=Hi --eval_iters=2")])
def test_a_misspelt_option_is_one_line_naming_the_closest(script, given, said, capsys):
    with pytest.raises(SystemExit) as e:
        __import__(script).main(given)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == usage_error(script, said), err


def test_a_misspelt_option_after_a_subcommand_points_to_its_help(capsys):
    # the option is listed by `setup_tokenizer.py train --help`: the script's --help named the subcommands alone
    with pytest.raises(SystemExit) as e:
        __import__("setup_tokenizer").main(["train", "--input", "a.txt", "--out", "a.tiktoken", "--vocab-size", "300"])
    err = capsys.readouterr().err
    said = "unrecognized arguments: --vocab-size 300 (did you mean --vocab_size?)"
    assert e.value.code == 2 and err == usage_error("setup_tokenizer", said, "train"), err


@pytest.mark.parametrize("script, given, said", [
    # nanoGPT's configurator takes --compile=False: argparse said "ignored explicit argument 'False'", not the way
    ("train", ["--compile=False"], "--compile is a switch: it takes no value ('False' given); --compile turns it on, "
                                   "--no_compile off"),
    ("train", ["--no-compile=1"], "--compile is a switch: it takes no value ('1' given); --compile turns it on, "
                                  "--no_compile off"),  # (argparse names the option, not the spelling typed)
    ("gen", ["x.pt", "--no_cache=True"], "--no_cache is a switch: it takes no value ('True' given); give --no_cache "
                                         "alone, or leave it out"),
    # the value as a word of its own was train.py's checkpoint ("checkpoint False not found"), or unrecognized
    ("train", ["--bias", "False"], "--bias is a switch: it takes no value ('False' given); --bias turns it on, "
                                   "--no_bias off"),
    ("train", ["--compile", "true", "--device", "cpu"], "--compile is a switch: it takes no value ('true' given); "
                                                        "--compile turns it on, --no_compile off"),
    ("gen", ["x.pt", "--no_cache", "True"], "--no_cache is a switch: it takes no value ('True' given); give "
                                            "--no_cache alone, or leave it out")])
def test_a_switch_given_a_value_says_how_to_turn_it_on_and_off(script, given, said, capsys):
    with pytest.raises(SystemExit) as e:
        __import__(script).main(given)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == usage_error(script, said), err


@pytest.mark.parametrize("script, given", [("train", ["config/train_shakespeare_char.py", "--device=cpu"]),
                                           ("gen", ["--checkpoint", "config/train_shakespeare_char.py"])])
def test_a_config_file_given_as_nanogpt_takes_it_is_refused_as_one(script, given, tmp_path, monkeypatch, capsys):
    """`train.py config/train_shakespeare_char.py`, nanoGPT's way, read the file as the checkpoint: "checkpoint ... not
    found", or, the file there, no checkpoint. It is one line saying that settings are options here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "train_shakespeare_char.py").write_text("out_dir = 'out-shakespeare-char'\n")
    with pytest.raises(SystemExit) as e:
        __import__(script).main(given)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == usage_error(script, f"config/train_shakespeare_char.py is a Python file, not a "
                                                            f"checkpoint: {script}.py reads no config file; give its "
                                                            f"settings as options"), err


def test_a_negative_number_stays_a_value_not_an_option_guessed(capsys):
    """Guessing long options from single-dash words leaves negative numbers to the options they are values of."""
    code, err = refused_option("gen", "--temp", "-1", capsys)
    assert code == 2 and err == usage_error("gen", "argument --temp: must be a number >= 0 (0 = greedy), got -1"), err
    assert __import__("train").parse_args(["--seed", "-3", "--min_lr", "-.5"]).seed == -3


def refused_option(script, option, value, capsys):
    """(exit status, stderr) of script's main given option value alone (and a checkpoint where it takes one), which
    its argparse refuses."""
    main = __import__(script).main
    with pytest.raises(SystemExit) as e:
        main(["x.pt", option, value] if script in ("gen", "eval", "serve") else [option, value])
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("script, option, value, minimum", [
    # a count below its minimum, one wording (common.at_least) where it was "must be >= 1" (gen.py, eval.py,
    # serve.py), "must be >= 0" (eval.py), "must be positive" (bench.py) and "--limit 0: must be at least 1"
    # (prepare.py)
    ("gen", "--max_tokens", "0", 1), ("eval", "--samples", "-1", 0), ("eval", "--batch_size", "0", 1),
    ("serve", "--max_queue", "0", 1), ("bench", "--steps", "0", 1), ("bench", "--warmup", "-1", 0),
    ("prepare", "--limit", "0", 1)])
def test_a_count_below_its_minimum_is_the_same_line_in_every_script(script, option, value, minimum, capsys):
    code, err = refused_option(script, option, value, capsys)
    assert code == 2 and err == usage_error(script, f"argument {option}: must be at least {minimum}, got {value}"), err


def test_a_count_at_its_minimum_is_taken():
    """--warmup 0 (bench.py) and --samples 0 (eval.py) are values users give: the minimum itself is no error."""
    assert [common.at_least(m)(str(m)) for m in (0, 1)] == [0, 1]


def test_a_switch_is_on_off_or_left_to_the_run_in_either_spelling():
    """--compile turns it on, --no_compile (as every option is spelt) or argparse's --no-compile off, an abbreviation
    of either too; neither leaves None (train.py takes the checkpoint's then). The usage names the underscore
    spelling, as README and the errors do; a name starting with "no" is still a name, not its off spelling."""
    p = common.ArgumentParser(prog="x.py")
    p.add_argument("--compile", action=common.Switch)
    p.add_argument("--normalize", action=common.Switch)
    said = {" ".join(a): vars(p.parse_args(a)) for a in ([], ["--compile"], ["--no_compile"], ["--no-compile"],
                                                         ["--no_comp"], ["--comp"], ["--normalize"])}
    assert said == {"": {"compile": None, "normalize": None}, "--compile": {"compile": True, "normalize": None},
                    "--no_compile": {"compile": False, "normalize": None},
                    "--no-compile": {"compile": False, "normalize": None},
                    "--no_comp": {"compile": False, "normalize": None}, "--comp": {"compile": True, "normalize": None},
                    "--normalize": {"compile": None, "normalize": True}}
    assert "[--compile | --no_compile] [--normalize | --no_normalize]" in p.format_usage()


def test_no_output_replaces_a_checkpoint_or_a_datasets_file(tmp_path):
    """eval.py --json, gen.py --output, setup_tokenizer.py --out over a checkpoint or a dataset's file replaced it
    (a 7.7 MB checkpoint became 627 bytes of JSON); train.py's checkpoints may replace checkpoints (by its own
    rules)."""
    ckpt = tmp_path / "x.pt"
    atomic_torch_save({"model": {}}, str(ckpt))
    data = tmp_path / "story"
    data.mkdir()
    for name in ("train.bin", "tokenizer.tiktoken"):
        (data / name).write_text("x")
    (data / "meta.json").write_text('{"vocab_size": 512, "splits": {}}')  # as prepare.py writes it, in short
    (data / "notes.json").write_text("{}")  # a file beside a dataset is not the dataset's
    (tmp_path / "w.safetensors").write_text("x")
    hf = tmp_path / "hf"  # a model folder (export.py's): bench.py --out over its config.json, and it loaded no more
    hf.mkdir()
    for name in ("config.json", "tokenizer.json", "notes.json"):
        (hf / name).write_text("{}")
    for path, what in ((ckpt, "a checkpoint"), (data / "train.bin", f"a file of the dataset in {data}"),
                       (data / "meta.json", "a file of the dataset"),
                       (data / "tokenizer.tiktoken", "a file of the dataset"),
                       (tmp_path / "w.safetensors", "model weights"),
                       (hf / "config.json", f"a file of the model folder {hf}"),
                       (hf / "tokenizer.json", "a file of the model folder")):
        with pytest.raises(UserError, match=rf"^--json {re.escape(str(path))} is {re.escape(what)}.*: the result would "
                                            rf"replace it; give another --json$"):
            check_output(str(path), "--json")
    check_output(str(data / "notes.json"), "--json")
    check_output(str(hf / "notes.json"), "--json")  # the user's own file beside a model, written over on each run
    (tmp_path / "vocab.json").write_text("{}")  # a model folder's name, in no model folder (no config.json)
    check_output(str(tmp_path / "vocab.json"), "--json")
    # a meta.json of another kind (eval.py --json res/meta.json, run again) makes no dataset of its folder
    res = tmp_path / "res"
    res.mkdir()
    (res / "meta.json").write_text('{"rows": []}')
    (res / "x.bin").write_text("x")
    check_output(str(res / "meta.json"), "--json")
    check_output(str(res / "x.bin"), "--output")
    (tmp_path / "out.txt").write_text("an earlier run's output")
    check_output(str(tmp_path / "out.txt"), "--output")  # written over on each run, as before
    check_output(str(ckpt), "--output_checkpoint", checkpoint=True)
    with pytest.raises(UserError, match="is a file of the dataset"):
        check_output(str(data / "train.bin"), "--output_checkpoint", checkpoint=True)
    # a vocabulary's --out (setup_tokenizer.py train) retrains a vocabulary in place, and replaces nothing else kept: a
    # checkpoint, a dataset's files (its own vocabulary too, which its token files are in), a model folder's
    (tmp_path / "mine.tiktoken").write_text("IQ== 0\n")
    check_output(str(tmp_path / "mine.tiktoken"), "--out", vocabulary=True)
    for path, what in ((ckpt, "a checkpoint"), (data / "train.bin", "a file of the dataset"),
                       (data / "tokenizer.tiktoken", "a file of the dataset"),
                       (hf / "tokenizer.json", "a file of the model")):
        with pytest.raises(UserError, match=rf"^--out {re.escape(str(path))} is {what}.*: the result would replace it"):
            check_output(str(path), "--out", vocabulary=True)
    # nor through a link to one of them: an atomic write replaces the file a link points to (link_target)
    os.symlink(data / "train.bin", tmp_path / "link.json")
    with pytest.raises(UserError, match=r"link\.json is a file of the dataset .*: the result would replace it"):
        check_output(str(tmp_path / "link.json"), "--json")
    # nor is an output a file in a folder the command reads (a model folder given as the checkpoint)
    with pytest.raises(UserError, match=rf"^--json {re.escape(str(hf / 'notes.json'))} is the checkpoint it reads: the "
                                        rf"result would replace it; give another --json$"):
        check_output(str(hf / "notes.json"), "--json", inputs={"checkpoint": str(hf)})


def test_a_command_that_fails_takes_back_the_folders_its_output_check_made(tmp_path, capsys):
    """check_output makes an output's folders to probe them: a command refused after it (`prepare.py --out_dir new/
    --name 'bad name'`, eval.py --json new/r.json with no checkpoint) left new/ behind, empty. A failure takes back the
    folders it made that are still empty; a success keeps them, and a folder that was there stays."""
    (tmp_path / "there").mkdir()

    def refused(*paths):
        def main():
            for p in paths:
                check_output(str(p), "--out")
            raise UserError("refused later")
        with pytest.raises(SystemExit):
            run_main(main)
    refused(tmp_path / "a" / "b" / "out.txt", tmp_path / "there" / "c" / "out.txt")
    assert sorted(os.listdir(tmp_path)) == ["there"] and not os.listdir(tmp_path / "there")

    def written_in_b():  # a folder with a file in it stays, its parents too
        check_output(str(tmp_path / "a" / "b" / "out.txt"), "--out")
        (tmp_path / "a" / "b" / "out.txt").write_text("partial")
        raise KeyboardInterrupt
    with pytest.raises(SystemExit):
        run_main(written_in_b)
    assert (tmp_path / "a" / "b" / "out.txt").exists()
    run_main(lambda: check_output(str(tmp_path / "d" / "e"), "--out_dir", folder=True))  # done: kept, empty or not
    assert (tmp_path / "d" / "e").is_dir() and not common.made_folders


@pytest.mark.parametrize("script, argv", [
    ("eval", ["--checkpoint", "nope.pt", "--json", "new/r.json"]),
    ("export", ["nope.pt", "new/out"]),
    ("bench", ["--out", "new/b.md", "--device", "nope"]),
    ("setup_tokenizer", ["train", "--input", "nope.txt", "--vocab_size", "300", "--out", "new/v.tiktoken"]),
    ("gen", ["nope.pt", "--prompt_file", "prompts.txt", "--output", "new/o.jsonl"])])
def test_a_failed_main_called_from_python_leaves_no_folder_it_made(script, argv, tmp_path, monkeypatch):
    """A script's main([...]) from a notebook, which no run_main wraps, refused after its output's check had made
    the output's folder: an empty new/ stayed, as if something was written there. The command line took it back."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("Hi\n")  # (gen.py reads its prompts before it checks --output)
    with pytest.raises(UserError):
        __import__(script).main(argv)
    assert os.listdir(tmp_path) == ["prompts.txt"] and not common.made_folders


def test_the_file_systems_refusals_end_in_one_line(capsys):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "models/x.pt")
    with pytest.raises(SystemExit) as e:
        run_main(full)
    assert e.value.code == 1
    assert capsys.readouterr().err == \
        "error: No space left on device: models/x.pt: free some space or write elsewhere\n"

    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")  # the code's fault, not the machine's: a traceback
    with pytest.raises(OSError):
        run_main(bug)


def test_a_librarys_message_in_an_error_line_is_cut_between_words():
    """train.py's "lost contact with the other ranks" line kept gloo's message to 100 characters, cut mid-word
    ("Connection closed by pe"), which read as a typo of the library's; so did hf.py's and checkpoint.py's."""
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500 "
            "after a very long wait")
    cut = common.first_line(RuntimeError(gloo), 100)
    assert cut == "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer..."
    assert len(cut) <= 100 and gloo.startswith(cut[:-3])
    assert common.first_line(RuntimeError("short\nmore"), 100) == "short"  # what fits is whole
    heading = "Error(s) in loading state_dict for GPT:\n\tsize mismatch for wte.weight: " + "x" * 300
    assert common.first_line(RuntimeError(heading), 100) == "size mismatch for wte.weight:..."  # a word too long
    assert common.first_line(RuntimeError("x" * 300), 50) == "x" * 47 + "..."  # one word: cut, and said to be
    assert common.first_line(RuntimeError("abc def ghi"), 10) == "abc def..."  # a cut just after a word keeps it
    assert common.first_line(RuntimeError("abc def gh"), 10) == "abc def gh"  # as long as the width: whole
    assert common.first_line(RuntimeError()) == "RuntimeError"  # one saying nothing: its kind, not an empty line


def test_a_pattern_names_the_files_it_matches_and_a_file_is_itself(tmp_path):
    """--input/--source "data/**/*.txt" quoted (or from Windows' shells) reaches its subfolders' files, in order; a
    file whose name holds a bracket (notes[1].txt) is that file, not the pattern its name also is."""
    for name in ("b.txt", "sub/a.txt", "notes[1].txt", "notes1.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert common.expand_pattern(f"{tmp_path}/**/*.txt", "--input") == \
        [f"{tmp_path}/{n}" for n in ("b.txt", "notes1.txt", "notes[1].txt", "sub/a.txt")]
    assert common.expand_pattern(f"{tmp_path}/notes[1].txt", "--input") == [f"{tmp_path}/notes[1].txt"]


def test_an_argument_that_is_not_utf8_and_a_count_that_is_none_are_told():
    """A command-line argument the locale could not decode (held as surrogates) is one line, not a traceback at the
    first print; a count read from meta.json is an int of 0 or more (a split of 0 bytes, pack 0), not a bool."""
    with pytest.raises(UserError, match=r"^--prompt is not UTF-8 text: give it in UTF-8$"):
        common.require_utf8("caf\udce9", "--prompt")
    common.require_utf8("caf\u00e9 \U0001f600", "--prompt")
    assert [common.nonnegative_int(v) for v in (0, 7, -1, True, 1.0, "1", None)] == [True, True] + [False] * 5


def test_a_save_replaces_the_file_whole_never_writes_into_it(tmp_path):
    """A new file renamed over the old one: a reader (or a kill) meets the old checkpoint or the new one, never half of
    one, as writing into the file itself would give."""
    path = tmp_path / "x.pt"
    atomic_torch_save({"v": torch.arange(1000)}, str(path))
    with open(path, "rb") as reader:
        before = os.fstat(reader.fileno()).st_ino
        atomic_torch_save({"v": torch.arange(5)}, str(path))
        assert os.stat(path).st_ino != before  # another file now has the name
        assert torch.load(reader, weights_only=True)["v"].tolist() == list(range(1000))  # the old one, whole
    assert torch.load(path, weights_only=True)["v"].tolist() == list(range(5))


def test_a_save_flushes_the_file_before_its_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    """Power lost after a save must find the old file or the whole new one: its data flushed before the rename (else an
    empty file may take the old one's name: ext4, XFS), the folder after it (else the rename itself may be lost). The
    folder's flush left out passed every test (a hand-made mutation): short of a power cut, only the calls show it."""
    import stat
    calls, fsync, replace = [], os.fsync, os.replace

    def fsync_noted(fd):
        calls.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    def replace_noted(*a, **k):
        calls.append("rename")
        replace(*a, **k)
    monkeypatch.setattr(os, "fsync", fsync_noted)
    monkeypatch.setattr(os, "replace", replace_noted)
    for save in (lambda p: atomic_write_text(p, "x"), lambda p: atomic_torch_save({"step": 1}, p)):
        for _ in range(2):  # a new file, then one replaced
            calls.clear()
            save(str(tmp_path / "x"))
            assert calls == ["file", "rename", "folder"]


def test_a_save_keeps_the_files_permissions_and_a_read_only_one_is_not_replaced(tmp_path, monkeypatch, capsys):
    """The rename that replaces a file needs only its folder's permission: a file made read-only (chmod 444, to keep
    it) was replaced by eval.py --json all the same, and a private one (600) came back readable by all (the umask's
    644). A replaced file keeps its mode; a read-only one is refused before the work and at the write."""
    private, kept = tmp_path / "private.json", tmp_path / "kept.json"
    private.write_text("old")
    os.chmod(private, 0o600)
    atomic_write_text(str(private), "new")
    ckpt = tmp_path / "x.pt"
    atomic_torch_save({"v": torch.arange(3)}, str(ckpt))
    os.chmod(ckpt, 0o640)
    atomic_torch_save({"v": torch.arange(5)}, str(ckpt))
    assert (private.read_text(), os.stat(private).st_mode & 0o777, os.stat(ckpt).st_mode & 0o777) == ("new", 0o600,
                                                                                                       0o640)
    kept.write_text("old")
    os.chmod(kept, 0o444)
    if os.geteuid() == 0:  # root may write any file: os.access answers as for another user
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: access(p, mode, **k) and not (
            mode & os.W_OK and os.path.isfile(p) and not os.stat(p).st_mode & 0o222))
    with pytest.raises(UserError, match=r"^--json .*kept.json: cannot write there \(the file is read-only\): check its "
                                        r"permissions, or use another path$"):
        check_output(str(kept), "--json")
    for save in (lambda: atomic_write_text(str(kept), "new"), lambda: atomic_torch_save({}, str(kept))):
        with pytest.raises(SystemExit) as e:
            run_main(save)
        assert e.value.code == 1 and capsys.readouterr().err == (
            f"error: Permission denied (the file is read-only): {kept}: check its permissions, or use another path\n")
    assert kept.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["kept.json", "private.json", "x.pt"]


def test_a_save_through_a_symbolic_link_replaces_the_file_it_points_to(tmp_path):
    """models/x.pt linked to a file on a bigger disk (/dev/shm here, another file system where there is one): the
    rename replaced the link with a file of its own, the new checkpoint on the small disk and the old one left behind.
    The file pointed to is replaced, its temporary file beside it (a rename across file systems fails: EXDEV)."""
    elsewhere = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(tmp_path)
    target = os.path.join(elsewhere, f"test-link-target-{os.getpid()}")
    os.makedirs(target, exist_ok=True)
    try:
        for name, save, read in (("x.pt", lambda p: atomic_torch_save({"v": torch.arange(5)}, p),
                                  lambda p: torch.load(p, weights_only=True)["v"].tolist() == list(range(5))),
                                 ("r.json", lambda p: atomic_write_text(p, "new"), lambda p: open(p).read() == "new")):
            real, link = os.path.join(target, name), tmp_path / name
            if name.endswith(".pt"):  # (an earlier checkpoint: a file of other bytes is refused as an output one)
                torch.save({"v": torch.zeros(1)}, real)
            else:
                with open(real, "w") as f:
                    f.write("old")
            os.symlink(real, link)
            check_output(str(link), "--out", checkpoint=name.endswith(".pt"))
            save(str(link))
            assert os.path.islink(link) and read(real), name
        assert sorted(os.listdir(target)) == ["r.json", "x.pt"]
    finally:
        shutil.rmtree(target)


def test_a_full_disk_names_the_file_being_written(tmp_path, capsys, monkeypatch):
    """A write() or fsync() that finds the disk full raises an OSError naming no file: setup_tokenizer.py train --out,
    eval.py --json, a prepared dataset's vocabulary or a checkpoint's last flush ended in "error: No space left on
    device: free some space or write elsewhere", which left the user to guess which disk."""
    def fsync(fd):  # where a file system that allocates late (ext4, XFS, NFS) reports it
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)
    for path, write in ((tmp_path / "a.tiktoken", lambda p: atomic_write_text(p, "x")),
                        (tmp_path / "x.pt", lambda p: atomic_torch_save({"step": 1}, p))):
        with pytest.raises(SystemExit):
            run_main(lambda: write(str(path)))
        assert capsys.readouterr().err == \
            f"error: No space left on device: {path}: free some space or write elsewhere\n"
        assert os.listdir(tmp_path) == []  # nor a temporary file left
    # another error, or one naming its own file, is left as it is: a source's read error named the file being written
    for e, named in ((OSError(errno.EIO, "Input/output error"), None),
                     (OSError(errno.ENOSPC, "No space left on device", "data/t.bin"), "data/t.bin")):
        common.name_full_disk(e, "out.pt")
        assert e.filename == named


def test_a_count_is_said_as_every_script_says_it():
    """train.py's banner, gen.py --verbose, eval.py, serve.py and prepare.py's tokens/s: one figure for one count
    (eval.py said "0.0M parameters" of a model train.py called 33.3k), a rate under a thousand without its decimals."""
    said = [common.fmt_count(n) for n in (512, 512.7, 999, 1000, 33_333, 1_400_000, 124_439_808, 2.5e9)]
    assert said == ["512", "512", "999", "1.0k", "33.3k", "1.4M", "124.4M", "2.5B"]


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "x.pt")
    atomic_torch_save({"step": 1}, path)

    def disk_full(obj, f):  # what torch's zip writer raises when the disk fills up
        with open(f, "wb") as out:
            out.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 982272 vs 982160")
    monkeypatch.setattr(torch, "save", disk_full)
    # the free space said is what the disk has once the partial file is gone, not 0 MB while it still filled it
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage._replace(
        free=0 if [f for f in os.listdir(folder) if f.endswith(".tmp")] else 5_000_000))
    with pytest.raises(UserError, match=r"could not write .*x\.pt \(5 MB free there\): free some space"):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["x.pt"]  # no temporary file left


def test_a_checkpoint_save_into_a_folder_that_takes_no_files_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """A models/ folder made read-only during a run (or a read-only mount): torch's writer failed to open the file in a
    RuntimeError traceback, at the run's next save; the file system's refusal, naming the checkpoint, is one line."""
    path = str(tmp_path / "x.pt")
    atomic_torch_save({"step": 1}, path)

    def opener(f, mode="r", *args, **kwargs):  # what a folder without write permission does to a non-root user
        if set(mode) & set("wax+"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f)
        return open(f, mode, *args, **kwargs)

    def refused(obj, f):  # torch's own open of the file, there
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           "Permission denied")
    monkeypatch.setattr(common, "open", opener, raising=False)
    monkeypatch.setattr(torch, "save", refused)
    with pytest.raises(SystemExit) as e:
        run_main(lambda: atomic_torch_save({"step": 2}, path))
    monkeypatch.undo()
    assert e.value.code == 1
    assert capsys.readouterr().err == f"error: Permission denied: {path}: check its permissions, or use another path\n"
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_a_checkpoint_on_a_read_only_file_system_is_said_so_not_a_read_only_file(tmp_path, monkeypatch, capsys):
    """A run's folder remounted read-only (a cluster's disk, after an error): os.access refuses its files' writes as it
    does a chmod a-w file's, so train.py said "the file is read-only: check its permissions", sending the user to a
    chmod that fails there. The file system's own refusal and fix are said, before the work and at the save."""
    path = str(tmp_path / "x.pt")
    atomic_torch_save({"step": 1}, path)
    statvfs = os.statvfs

    def read_only_mount(p):
        st = statvfs(p)
        return types.SimpleNamespace(**{k: getattr(st, k) for k in dir(st) if k.startswith("f_")}
                                     | {"f_flag": st.f_flag | os.ST_RDONLY})

    def opener(f, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), f)
        return open(f, mode, *args, **kwargs)
    def remove(f):  # such a file system refuses the removal of a file that is not there as it does any other
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), f)
    monkeypatch.setattr(os, "statvfs", read_only_mount)
    monkeypatch.setattr(os, "access", lambda p, mode, **k: not mode & os.W_OK)
    monkeypatch.setattr(common, "open", opener, raising=False)
    monkeypatch.setattr(os, "remove", remove)
    with pytest.raises(UserError, match=r"^--output_checkpoint .*x.pt: cannot write there \(Read-only file system\): "
                                        r"a read-only file system: write elsewhere$"):
        check_output(path, "--output_checkpoint", checkpoint=True)
    codes = []
    # the temporary file's removal, which failed too, said "Read-only file system: x.pt.123.tmp" in the write's place
    for target, save in ((path, lambda: atomic_torch_save({"step": 2}, path)),
                         (path + ".json", lambda: atomic_write_text(path + ".json", "{}"))):
        with pytest.raises(SystemExit) as e:
            run_main(save)
        codes.append(e.value.code)
        assert capsys.readouterr().err == \
            f"error: Read-only file system: {target}: a read-only file system: write elsewhere\n"
    monkeypatch.undo()
    assert codes == [1, 1]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_a_file_name_too_long_for_its_temporary_write_is_refused_before_the_work(tmp_path):
    """The write goes to NAME.<pid>.tmp first: a name that fits the system's limit only without that suffix (a deep
    folder on Windows, at 260 characters of path, alike) passed the check, and the write failed after the work."""
    path = str(tmp_path / ("a" * 246 + ".jsonl"))  # 252 bytes: a file of that name may be, its .<pid>.tmp not
    with pytest.raises(UserError, match=r"^--output .*: cannot write there \(File name too long\): use a "
                                        r"shorter path$"):
        check_output(path, "--output")
    assert os.listdir(tmp_path) == []


def test_a_reader_gone_on_windows_ends_quietly_too(monkeypatch, capsys):
    """Windows reports a write to a pipe whose reader left (`| head` in Git Bash, `| Select-Object -First 2`) as an
    OSError EINVAL, not BrokenPipeError: a traceback. Simulated here (this machine is Linux); an EINVAL that stdout
    does not meet again is still a bug's traceback."""
    class HeadGone:  # the pipe once its reader took two lines and left
        lines, pending = 0, ""

        def write(self, text):
            if self.lines >= 2:
                self.pending += text
                raise OSError(errno.EINVAL, "Invalid argument")
            self.lines += text.count("\n")
            return len(text)

        def flush(self):
            if self.pending:
                raise OSError(errno.EINVAL, "Invalid argument")

        def fileno(self):
            raise ValueError("no descriptor here")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "stdout", HeadGone())
    with pytest.raises(SystemExit) as e:
        run_main(lambda: [print("line", i) for i in range(100)])
    assert e.value.code == 141 and capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stdout", HeadGone())

    def bug():
        raise OSError(errno.EINVAL, "Invalid argument")
    with pytest.raises(OSError):
        run_main(bug)


def test_a_save_removes_what_killed_saves_left_and_nothing_else(tmp_path, monkeypatch):
    """A process SIGKILLed mid-save (torchrun kills ranks 30 s after Ctrl-C) leaves its x.pt.<pid>.tmp; the next save
    into that folder removes such files, but not a live process's write in progress, a recent one, or other files."""
    path = str(tmp_path / "x.pt")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now
    stale = [f"{path}.{dead.pid}.tmp", str(tmp_path / f"y_epoch3.pt.{dead.pid}.tmp"),
             str(tmp_path / f"y_metrics.jsonl.{dead.pid}.tmp"), str(tmp_path / f"y_loss.png.{dead.pid}.tmp")]
    with monkeypatch.context() as m:  # the very name a killed save of z.pt wrote (tmp_name's), whatever it is
        m.setattr(os, "getpid", lambda: dead.pid)
        stale.append(common.tmp_name(str(tmp_path / "z.pt")))
    kept = [f"{path}.{dead.pid + 1}.tmp",  # recent
            f"{path}.1.tmp",  # pid 1 (init) lives
            str(tmp_path / "notes.tmp"), str(tmp_path / "y.pt"),
            str(tmp_path / "report.20240101.tmp"), str(tmp_path / f"data.{dead.pid}.tmp"),  # the user's own files
            f"{path}.{10 ** 30}.tmp"]  # a number no pid is (os.kill's OverflowError): no killed write's
    for f in stale + kept:
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        if f != kept[0]:
            os.utime(f, (0, 0))
    # a link named as a killed write's is the user's (its target stays, and so does the link)
    os.symlink(tmp_path / "y.pt", f"{path}.{dead.pid + 2}.tmp")
    os.utime(f"{path}.{dead.pid + 2}.tmp", (0, 0), follow_symlinks=False)
    kept.append(f"{path}.{dead.pid + 2}.tmp")
    atomic_torch_save({"step": 1}, path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in [path] + kept)
    # a text file's write (gen.py --output, eval.py --json) removes a killed write's of the same file, and an
    # export's folder (hf.export_folder) a killed export's
    out = tmp_path / "out.jsonl"
    (tmp_path / f"out.jsonl.{dead.pid}.tmp").write_text("half")
    os.mkdir(tmp_path / f"hf.{dead.pid}.tmp")
    (tmp_path / f"hf.{dead.pid}.tmp" / "config.json").write_text("{}")
    for f in (f"out.jsonl.{dead.pid}.tmp", f"hf.{dead.pid}.tmp/config.json", f"hf.{dead.pid}.tmp"):
        os.utime(tmp_path / f, (0, 0))
    atomic_write_text(str(out), "whole\n")
    assert not (tmp_path / f"out.jsonl.{dead.pid}.tmp").exists() and out.read_text() == "whole\n"
    # a folder whose own mtime is old but a file in it is being written (an export on another machine) stays
    os.mkdir(tmp_path / f"live.{dead.pid}.tmp")
    (tmp_path / f"live.{dead.pid}.tmp" / "model.safetensors").write_text("being written")
    os.utime(tmp_path / f"live.{dead.pid}.tmp", (0, 0))
    remove_stale_tmp(str(tmp_path), "hf|live")
    assert not (tmp_path / f"hf.{dead.pid}.tmp").exists() and (tmp_path / f"live.{dead.pid}.tmp").exists()


def test_stale_temporary_files_on_windows_are_told_apart_without_a_signal(tmp_path, monkeypatch):
    """On Windows os.kill(pid, 0) sends CTRL_C_EVENT to the console instead of asking whether pid runs: the clean-up
    after each save interrupted console programs (or the run itself) and never told a dead pid from a live one. The
    process is looked up instead (simulated here: this machine is Linux)."""
    import types
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))  # Windows': no error, a Ctrl-C sent
    monkeypatch.setattr(sys, "platform", "win32")
    live, dead = 4242, 4444
    no_process = OSError(errno.EINVAL, "The parameter is incorrect")
    no_process.winerror = 87

    def open_process(access, inherit, pid):
        if pid != live:
            raise no_process
        return 7

    monkeypatch.setitem(sys.modules, "_winapi", types.SimpleNamespace(
        OpenProcess=open_process, GetExitCodeProcess=lambda handle: 259, STILL_ACTIVE=259, CloseHandle=lambda h: None))
    for pid in (live, dead):
        (tmp_path / f"x.pt.{pid}.tmp").write_bytes(b"half a checkpoint")
        os.utime(tmp_path / f"x.pt.{pid}.tmp", (0, 0))
    remove_stale_tmp(str(tmp_path), r"x\.pt")
    assert killed == []
    assert sorted(os.listdir(tmp_path)) == [f"x.pt.{live}.tmp"]


@pytest.mark.parametrize("fcntl", [True, False], ids=["flock", "no-fcntl"])
def test_a_lock_refuses_a_second_holder_and_outlives_no_killed_one(tmp_path, monkeypatch, fcntl):
    """held_lock, which two train.py (or prepare.py) writing the same files take: a second holder is refused while the
    first runs, and the lock goes with a holder killed by SIGKILL, its finally never run. Without fcntl (Windows) there
    was no lock at all; the file made with O_EXCL holds the pid, and a dead one's file is taken over."""
    path, busy = str(tmp_path / ".x.lock"), "another one is writing x"
    hide = "import sys; sys.modules['fcntl'] = None; " if not fcntl else ""
    if not fcntl:
        monkeypatch.setitem(sys.modules, "fcntl", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen([sys.executable, "-c", f"{hide}import common, time\nwith common.held_lock({path!r}, "
                               f"'busy'):\n    print('held', flush=True); time.sleep(60)"], cwd=root,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=f"^{busy}$"):
            with common.held_lock(path, busy):
                pass
        assert common.lock_is_held(path)  # as train.py asks whether a prepare.py builds its data
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(path) and not common.lock_is_held(path)  # what the killed holder left holds nothing
    with common.held_lock(path, busy):
        with pytest.raises(UserError, match=f"^{busy}$"):  # in one process too: train.py's tests hold it so
            with common.held_lock(path, busy):
                pass
    assert os.listdir(tmp_path) == [] and not common.lock_is_held(path)  # let go, no file left


def test_a_lock_is_not_refused_to_a_command_taking_it_as_another_asks_whether_it_is_held(tmp_path, monkeypatch):
    """lock_is_held (train.py asking whether a prepare.py builds its data) takes the flock for an instant: a prepare.py
    taking the lock in that instant was refused as "another prepare.py is building" though none ran. The question is
    held here at that instant (its flock taken), until held_lock's first try has been turned away."""
    fcntl = pytest.importorskip("fcntl")  # (without it no question takes a lock)
    path, busy = str(tmp_path / ".x.lock"), "another one is writing x"
    open(path, "w").close()  # a held_lock's file, as one just made it
    asked, turned_away = threading.Event(), threading.Event()

    def flock(f, op):
        try:
            fcntl.flock(f, op)
        except BlockingIOError:
            turned_away.set()  # held_lock's try, while the question holds the flock
            raise
        if op & fcntl.LOCK_SH:  # the question has the flock: hold it until held_lock has tried once
            asked.set()
            assert turned_away.wait(10)

    monkeypatch.setattr(common, "fcntl_module", lambda: types.SimpleNamespace(
        flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_SH=fcntl.LOCK_SH, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(common.lock_is_held, path)
        assert asked.wait(10)
        with common.held_lock(path, busy):  # not refused: nobody held the lock, one only asked
            assert turned_away.is_set()  # (the moment this test is about came)
        assert held.result() is False
    assert os.listdir(tmp_path) == []


def test_a_lock_file_made_this_instant_without_its_pid_yet_is_held(tmp_path, monkeypatch):
    """Without fcntl (Windows) the lock is a file made with O_EXCL, its pid written a moment later: a second command
    finding it empty in that moment must not take it for a dead holder's (removed and taken, both commands ran). One
    left empty long ago (its process killed between the two) is taken over."""
    monkeypatch.setitem(sys.modules, "fcntl", None)
    path, busy = tmp_path / ".x.lock", "another one is writing x"
    path.write_text("")  # made, its pid not yet written
    with pytest.raises(UserError, match=f"^{busy}$"):
        with common.held_lock(str(path), busy):
            pass
    assert path.read_text() == ""  # the first command's file, left to it
    os.utime(path, (time.time() - 60, time.time() - 60))
    with common.held_lock(str(path), busy):
        assert path.read_text() == str(os.getpid())
    assert os.listdir(tmp_path) == []


def test_a_lock_file_removed_as_it_was_opened_is_not_held(tmp_path, monkeypatch):
    """The holder before removes the lock file as it lets go: a command that opened the file just before that removal
    and locked it held a lock on a file no longer in the folder, and the next command made a new file and locked that:
    two holders at once. The removed file is let go and the one in the folder taken."""
    fcntl = pytest.importorskip("fcntl")
    path, busy = str(tmp_path / ".x.lock"), "another one is writing x"
    removed = []

    def flock(f, op):
        if not removed:  # the holder before lets go between this command's open and its flock
            removed.append(f.name)
            os.remove(path)
        fcntl.flock(f, op)

    monkeypatch.setattr(common, "fcntl_module", lambda: types.SimpleNamespace(
        flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_SH=fcntl.LOCK_SH, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))
    with common.held_lock(path, busy):
        assert removed and os.path.exists(path)
        assert common.lock_is_held(path)  # the file in the folder is the one held
        with pytest.raises(UserError, match=f"^{busy}$"):  # a third command is refused
            with common.held_lock(path, busy):
                pass
    assert os.listdir(tmp_path) == []


def test_a_file_system_without_locks_runs_the_command_unlocked(tmp_path, monkeypatch):
    """A network file system without locks (NFS without its lock daemon: flock fails with ENOLCK) takes no lock: the
    command runs (held_lock yields False) and leaves no lock file, and lock_is_held says no one holds it: not an
    OSError ending every train.py and prepare.py there, nor a lock taken for held forever."""
    fcntl = pytest.importorskip("fcntl")

    def flock(f, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(common, "fcntl_module", lambda: types.SimpleNamespace(
        flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_SH=fcntl.LOCK_SH, LOCK_NB=fcntl.LOCK_NB, LOCK_UN=fcntl.LOCK_UN))
    path = str(tmp_path / ".x.lock")
    with common.held_lock(path, "another one is writing x") as held:
        assert held is False
        assert common.lock_is_held(path) is False
        with common.held_lock(path, "another one is writing x") as again:  # nor is a second command refused
            assert again is False
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("has_pread", [True, False])
def test_read_at_reads_a_file_being_written_and_leaves_it_where_it_was(tmp_path, monkeypatch, has_pread):
    """prepare.py reads back what it wrote to a token file (the val cut, packing) and goes on writing it; train.py's
    loader reads from a thread. Windows has no os.pread: there a seek stands in, and the writing must go on at the end,
    not over the bytes just read."""
    if not has_pread:
        monkeypatch.delattr(os, "pread", raising=False)
    with open(tmp_path / "t.bin", "w+b") as f:
        f.write(bytes(range(10)))
        f.flush()
        assert common.read_at(f, 8, 5) == bytes([8, 9])  # (fewer at its end)
        assert common.read_at(f, 3, 4) == bytes([3, 4, 5, 6])
        f.write(bytes([10, 11]))
    assert (tmp_path / "t.bin").read_bytes() == bytes(range(12))


@pytest.mark.parametrize("name", ["foo", "cuda:abc", "gpu"])
def test_a_device_that_is_no_device_is_named(name):
    with pytest.raises(UserError, match=f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps"):
        pick_device(name)


@pytest.mark.parametrize("name", ["xpu", "meta", "hpu:0"])
def test_a_device_torch_knows_but_the_scripts_do_not_is_refused(name):
    """torch.device accepts them; training on them ended in a traceback (xpu: not compiled with it; meta: .item())."""
    with pytest.raises(UserError, match=f"--device {name}: not supported here; use auto, cpu, cuda, cuda:N or mps"):
        pick_device(name)


def test_a_device_this_machine_lacks_is_refused_in_one_line(monkeypatch):
    """--device cuda where there is no CUDA, cuda:2 of two GPUs, mps off a Mac: one line naming what there is, not
    torch's traceback at the first tensor moved there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name, said in (("cuda", "CUDA"), ("mps", "MPS")):
        with pytest.raises(UserError, match=f"^--device {name}: {said} is not available here; use --device cpu$"):
            pick_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"^--device cuda:2: only 2 CUDA device\(s\); use cuda:0\.\.cuda:1$"):
        pick_device("cuda:2")
    assert pick_device("cuda:1") == torch.device("cuda:1")


def test_auto_takes_cuda_then_mps_then_cpu_and_asks_only_among_several_gpus(monkeypatch, capsys):
    """--device auto: a Mac's GPU where there is no CUDA; one GPU taken without a question, several named where
    nobody can be asked; under torchrun each rank its own (LOCAL_RANK), never asked."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for mps, want in ((True, "mps"), (False, "cpu")):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert pick_device("auto") == torch.device(want)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common, "ask", lambda prompt: pytest.fail(f"asked {prompt!r}"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto", interactive=True) == torch.device("cuda:0") and capsys.readouterr().out == ""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", interactive=False) == torch.device("cuda:0")
    assert capsys.readouterr().out == "2 GPUs found, using cuda:0 (pick another with --device cuda:N)\n"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto", interactive=True) == torch.device("cuda:1")


def test_auto_dtype_on_a_gpu_is_bf16_where_it_has_it_and_fp32_on_mps(monkeypatch):
    """fp16 (with train.py's GradScaler) only on GPUs without bf16 (before Ampere); MPS computes in fp32."""
    for bf16, want in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        assert common.pick_dtype(torch.device("cuda")) == want
    assert common.pick_dtype(torch.device("mps")) == torch.float32
    assert common.pick_dtype(torch.device("cpu"), "float16") == torch.float16  # one asked for is taken as it is
    # a GPU computes fp16 and bf16 in hardware: the CPU's warning that they are emulated is not said there
    assert [common.slow_on_this_cpu(torch.device("cuda"), d, str(d)[6:]) for d in (torch.float16, torch.bfloat16)] == \
        [None, None]


def test_several_gpus_on_a_terminal_are_asked_about(monkeypatch, capsys):
    import builtins
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (70 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "H100")
    for answer, want in ((" 1 ", "cuda:1"), ("", "cuda:0"), ("2", "no GPU '2'; pass --device cuda:N"), (EOFError,
                         "no GPU chosen; pass --device cuda:N")):  # Ctrl-D: it was an EOFError traceback
        def ask(prompt, answer=answer):
            if answer is EOFError:
                raise EOFError
            return answer
        monkeypatch.setattr(builtins, "input", ask)
        try:
            got = str(pick_device("auto", interactive=True))
        except UserError as e:
            got = str(e)
        assert got == want and "cuda:1  H100  70.0 / 80.0 GiB free" in capsys.readouterr().out


def test_a_folder_of_checkpoints_given_as_one_lists_them(tmp_path):
    from checkpoint import load_checkpoint
    (tmp_path / "run").mkdir()
    atomic_torch_save({"step": 1}, str(tmp_path / "run" / "a.pt"))
    with pytest.raises(UserError, match=r"run is a folder without config\.json: .*; available: .*run/a\.pt$"):
        load_checkpoint(str(tmp_path / "run"))


def test_first_bad_utf8_names_line_and_offset_in_bounded_memory(tmp_path):
    """Where a file stops being UTF-8, for the one-line error: read in blocks (a line at a time held a 400 MB file
    without newlines in memory), lines counted as text files count them (a file of \r endings was one line), a pipe not
    read twice (it said line 0, byte 0)."""
    from common import first_bad_utf8, not_utf8
    f = tmp_path / "f.txt"
    for data, where in ((b"ab\r\ncd\ncaf\xc3\xa9\xff\n", (3, 12)), (b"ab\rcd\rcaf\xe9\r", (3, 9)),
                        (b"\xef\xbb\xbfok\nok", None), (b"fine\ncut \xe2\x82", (2, 9)), (b"\xff", (1, 0))):
        f.write_bytes(data)
        for block in (1, 2, 3, 5, 1 << 20):  # characters, \r\n pairs and the bad byte cut across blocks alike
            assert first_bad_utf8(str(f), block) == where, (data, block)
    f.write_bytes(b"word " * 300_000 + "\u20ac".encode() + b"\xe9")
    assert first_bad_utf8(str(f), 1 << 16) == (1, 1_500_003)
    # said as an offset from 0 (as dd skip= and xxd -s take it): "line 1, byte 0" read as a count from 1, as the line is
    f.write_bytes(b"ab\n\xff")
    assert "not UTF-8 text (line 2, byte offset 3 in the file): " in str(not_utf8(str(f)))
    r, w = os.pipe()
    os.close(w)
    # no file to name in the command (`< /dev/fd/3 > /dev/fd/3.utf8` reads nothing the second time): the bare one
    said = "pipe is not UTF-8 text: convert it, e.g. `iconv -f latin1 -t utf-8`"
    assert str(not_utf8(f"/dev/fd/{r}", "pipe")) == said
    os.close(r)


@pytest.mark.parametrize("encoding", ["cp1251", "koi8-r"])
def test_cyrillic_text_is_told_its_encoding_in_capitals_too(encoding):
    """KOI8-R was told from cp1251 by case (its small letters are cp1251's capitals): a line in capitals, a heading
    or a warning sign's, was named the other one, whose iconv garbles every letter. Russian's commonest letters tell."""
    from common import letters_encoding
    for text in ("ВНИМАНИЕ! ОПАСНАЯ ЗОНА", "ГЛАВА ПЕРВАЯ. Он пришёл домой.", "Кот и пёс живут вместе. Щука, чай, эхо."):
        assert letters_encoding(text.encode(encoding)) == encoding, text
    assert letters_encoding("Γεια σου, τι κάνεις; Όλα καλά.".encode("cp1253")) == "cp1253"
    # GBK's two-byte characters can make such "words" (你好 is cp1251's ДгєГ): Russian reads a third vowels, they not
    for text in ("你好", "你好，今天天气很好。", "我们明天去北京看长城吧。", "中华人民共和国"):
        assert letters_encoding(text.encode("gbk")) is None, text


def test_each_encodings_guess_leaves_the_others_text_alone():
    """Text in one 8-bit encoding can pass another's test: Russian whose words are of even length decodes as GB18030,
    a Russian name starting Ю, Э or Я holds Greek Windows' accented vowels' bytes, German's umlauts before letters
    decode as GB18030 (most alone, where Chinese characters are two bytes), Portuguese's é and à alone between spaces
    are no Cyrillic words (one letter). Each is told the encoding it is in: another's iconv garbles every letter."""
    def told(text, encoding):
        fix = common.encoding_fix(text.encode(encoding), "") or common.latin1_fix("")
        return re.search(r"`iconv -f (\S+) ", fix)[1]
    assert told("Мама мыла раму.\n", "cp1251") == "cp1251"
    assert told("Юля спит на диване.\n", "cp1251") == "cp1251"
    # a heading in capitals (Я inside a word, as in Greek's accented vowels) over words ending in т (Greek's ς there)
    assert told("ВНИМАНИЕ! ОПАСНАЯ ЗОНА. Здесь кот спит, и мать тут.\n", "cp1251") == "cp1251"
    assert told("Ці дні він ішов із нею містом.\n", "cp1251") == "cp1251"  # Ukrainian, whose commonest vowel is і
    assert told("Müller für größere Füße.\n", "latin1") == "latin1"
    assert told("Ele é alto e vai à praia.\n", "latin1") == "latin1"
    assert told("Preis: 5 €\n", "cp1252") == "cp1252"  # its euro sign, 0x80, the one byte that says cp1252
    # Big5's and Shift-JIS's second bytes may be ASCII letters, as a Western letter's neighbours are: each keeps its own
    assert told("It’s Tom’s “book” — don’t… ‘a’\n", "cp1252") == "cp1252"
    assert told("Ela não é a ação. Ações, tão bom.\n", "latin1") == "latin1"
    # a capital's bytes before an ASCII letter are a Big5 character (SÃO: C3 4F), each alone: Brazil's lists in capitals
    assert told("CIDADE;UF\nSÃO PAULO;SP\nSÃO CARLOS;SP\n", "latin1") == "latin1"
    assert told("ÄRGERLICH ÄNDERN\n", "latin1") == told("ÅSA ÅKESSON\n", "latin1") == "latin1"
    assert told("你好，我們學習中文。\n", "cp950") == "cp950" and told("コンピューターで書きます。\n", "cp932") == "cp932"
    assert told("私は学生です。\n", "euc-jp") == "euc-jp" and told("他说：“こんにちは”是日语。\n", "gbk") == "gb18030"
    assert told("저는 학생입니다. 오늘은 좋습니다.\n", "cp949") == "cp949" and told("你好 世界 今天\n", "gbk") == "gb18030"
    # not_utf8 reads the MiB from the first byte that is not UTF-8: where it cuts a character, still GB18030
    mib = ("你好世界。\n" * 100_000).encode("gbk")[:1 << 20]
    assert mib[-1] >= 0x80 and common.encoding_fix(mib, "").startswith("it looks like GBK/GB18030")


def test_a_files_encoding_is_guessed_from_its_first_byte_that_is_not_utf8(tmp_path):
    """A heading in UTF-8 and the text under it from Russian Windows (files put together): the guess reads from the
    first byte that is not UTF-8, and names cp1251. From the file's start, the UTF-8 letters' bytes read as
    Central European text (its iconv garbles the Russian)."""
    f = tmp_path / "notes.txt"
    f.write_bytes("Глава первая. Он пришёл домой, и кот спал.\n".encode() * 100
                  + "Глава вторая. Он пришёл домой, и кот спал.\n".encode("cp1251") * 500)
    assert "`iconv -f cp1251 -t utf-8 <" in str(common.not_utf8(str(f)))


def test_a_stray_byte_in_utf8_text_is_not_answered_with_a_latin1_conversion(tmp_path):
    """A chat log with emoji and accents and one stray byte: `iconv -f latin1 -t utf-8`, the advice for latin1 text,
    turned every emoji and accent into mojibake, and prepare.py then took the garbled file. Dropping the byte is the
    fix there; a latin1 file still gets the conversion."""
    from common import not_utf8
    f = tmp_path / "chats.jsonl"
    for before, after in ((b'{"text": "caf\xc3\xa9 \xf0\x9f\x98\x80"}\n' * 3, b""),
                          (b'{"text": "ok"}\n' * 3, b'{"text": "m\xc3\xaame"}\n')):  # the UTF-8 before or after it
        f.write_bytes(before + b'{"text": "bad \xff byte"}\n' + after)
        assert str(not_utf8(str(f))).endswith(": the text around it is UTF-8, so a stray byte? drop such bytes, e.g. "
                                              f"`iconv -c -f utf-8 -t utf-8 < {f} > {tmp_path}/chats.utf8.jsonl`, or "
                                              "mend that line (converting from latin1 would garble its other "
                                              "characters)")
    latin1 = f": convert it, e.g. `iconv -f latin1 -t utf-8 < {f} > {tmp_path}/chats.utf8.jsonl`"
    # (accents inside words, a letter after each, read as GB18030 too: their bytes beyond ASCII come one at a time)
    for text in ('{"text": "caf\u00e9 cr\u00e8me"}\n', '{"text": "M\u00fcller f\u00fcr na\u00efve"}\n'):
        f.write_bytes(text.encode("latin-1"))
        assert str(not_utf8(str(f))).endswith(latin1)
    f.write_bytes('{"text": "ok"}\n{"text": "\u201cquoted\u201d"}\n'.encode("cp1252"))  # cp1252's, no stray bytes
    cp1252 = (": it looks like Windows-1252 (bytes 0x80-0x9F: curly quotes, dashes, the euro sign): convert it, e.g. "
              f"`iconv -f cp1252 -t utf-8 < {f} > {tmp_path}/chats.utf8.jsonl`")
    assert str(not_utf8(str(f))).endswith(cp1252)
    # a byte cp1252 leaves undefined, cp1250's \u0165 (Slovak's "ť"): cp1250, where cp1252's iconv stopped on it
    f.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1") * 5 + b'{"text": "\x9d"}\n')
    assert "`iconv -f cp1250 -t utf-8 <" in str(not_utf8(str(f)))
    # one cp1250 leaves undefined too: cp1252 still, whose iconv stops on it, naming it
    f.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1") * 5 + b'{"text": "\x81"}\n')
    assert str(not_utf8(str(f))).endswith(cp1252)


def test_ctrl_c_under_torchrun_says_interrupted_once_a_machine(monkeypatch, capsys):
    """Ctrl-C reaches every process torchrun started: each printed "interrupted" (before the training loop, which
    already had one rank say it)."""
    def main():
        raise KeyboardInterrupt
    for rank, said in (("0", "\ninterrupted\n"), ("1", "")):
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(SystemExit) as e:
            run_main(main)
        assert e.value.code == 130 and capsys.readouterr().err == said


def test_output_piped_into_head_ends_quietly():
    """`python gen.py ... | head`: the reader closes the pipe early; the script stops without a traceback."""
    script = "import common; common.run_main(lambda: [print('line', i) for i in range(10**6)])"
    shell = f"{sys.executable} -c \"{script}\" | head -n 2; exit ${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), timeout=60)
    assert r.stdout == "line 0\nline 1\n"
    assert r.stderr == "" and r.returncode == 141


def test_closed_standard_streams_are_opened_on_the_null_device(tmp_path):
    """`python gen.py >&- 2>&- <&-` (a service started without them): Python's sys.stdout is then None, which train.py
    and gen.py met in an AttributeError traceback, exit 1; and the free descriptor 2 went to the next file opened, into
    which a C++ library's message to stderr would have been written."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out.bin"
    script = (f"import common, os, sys; common.mend_standard_streams(__name__); f = open({str(out)!r}, 'wb'); "
              f"os.write(2, b'a C++ warning'); f.write(b'data'); f.close(); "
              f"print(sys.stdout.isatty(), sys.stderr.isatty(), sys.stdin.read(), file=sys.stderr)")

    def closed(*fds):
        return lambda: [os.close(fd) for fd in fds]

    # each stream closed alone and all together (a script without torch: a tenth of a second each)
    for fds in ((0,), (1,), (2,), (0, 1, 2)):
        r = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=60, preexec_fn=closed(*fds),
                           stdout=None if 1 in fds else subprocess.DEVNULL,
                           stderr=None if 2 in fds else subprocess.PIPE)
        assert r.returncode == 0 and out.read_bytes() == b"data", (fds, r.stderr)
        assert 2 in fds or r.stderr.startswith(b"a C++ warning"), (fds, r.stderr)  # an open stderr keeps its own
        out.unlink()
    # a real script, all its streams closed: a sample written (to nowhere) and exit 0 (one launch: each imports torch)
    import gen
    from checkpoint import save_checkpoint
    from model import GPT, make_config
    from setup_tokenizer import get_tokenizer
    enc = get_tokenizer("gpt2")
    ckpt = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=16,
                                          vocab_size=enc.n_vocab)), enc)
    r = subprocess.run([sys.executable, gen.__file__, ckpt, "--max_tokens", "4", "--device", "cpu"], cwd=tmp_path,
                       timeout=120, preexec_fn=closed(0, 1, 2))
    assert r.returncode == 0


def test_output_a_terminal_cannot_encode_is_replaced_and_data_refused(tmp_path):
    """A generated emoji on a latin-1 terminal (PYTHONIOENCODING, an old locale) was a UnicodeEncodeError traceback: a
    terminal shows "?"; output to a file or pipe (gen.py --prompt_file's JSON lines) gets one line naming the fix, not
    a "?" in the data."""
    script = "import common; common.run_main(lambda: print('caf\\u00e9 \\U0001f600'))"
    env = dict(os.environ, PYTHONIOENCODING="latin-1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=root, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (1, b"") and r.stderr.decode() == (
        "error: the output's encoding (iso8859-1) cannot write '\\U0001f600': set PYTHONIOENCODING=utf-8, or a UTF-8 "
        "locale\n")
    # cp1252 and its kind name themselves "charmap" in the error (it was a traceback); a file name that is not UTF-8,
    # held as surrogates, is written as its own bytes to a UTF-8 pipe (a traceback after prepare.py's work, and its
    # new dataset removed)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=root, timeout=60,
                       env=dict(os.environ, PYTHONIOENCODING="cp1252"))
    assert r.returncode == 1 and r.stderr.decode().startswith("error: the output's encoding (cp1252) cannot write")
    r = subprocess.run([sys.executable, "-c", "import common; common.run_main(lambda: print('d\\udcff'))"],
                       capture_output=True, cwd=root, timeout=60, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    assert (r.returncode, r.stdout, r.stderr) == (0, b"d\xff\n", b"")
    # a handler the user chose is theirs: ascii:replace writes "?" to a pipe (it became the error line), and
    # run_main leaves the stream as it found it (pytest's capture kept surrogateescape for the rest of the session)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=root, timeout=60,
                       env=dict(os.environ, PYTHONIOENCODING="ascii:replace"))
    assert (r.returncode, r.stdout, r.stderr) == (0, b"caf? ?\n", b"")
    probe = "import common, sys; common.run_main(lambda: None); print(sys.stdout.errors)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=root, timeout=60,
                       env=dict(os.environ, PYTHONIOENCODING="utf-8"))  # strict, which run_main changes while it runs
    assert r.stdout == b"strict\n", r
    # a terminal: `script` runs the command on a pseudo-terminal, whose output it copies to a file
    if shutil.which("script"):
        log = tmp_path / "tty.log"
        r = subprocess.run(["script", "-qec", f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", str(log)],
                           capture_output=True, cwd=root, env=env, timeout=60)
        assert r.returncode == 0 and b"caf\xe9 ?" in log.read_bytes(), (r, log.read_bytes())


def test_an_encoding_error_that_is_not_the_outputs_keeps_its_traceback(capsys):
    """run_main's line on an output that cannot write a character is for the output's encoding alone: the same error
    from the script's own encoding of text (a bug) keeps its traceback, not a line telling the user to change
    PYTHONIOENCODING."""
    with pytest.raises(UnicodeEncodeError):
        run_main(lambda: "caf\u00e9".encode("ascii"))
    assert capsys.readouterr().err == ""


def test_sigterm_ends_a_script_through_its_clean_up(tmp_path):
    """`kill` or `timeout` (SIGTERM) ended export.py and gen.py --output on the spot, their temporary files left for
    good; run_main makes it end a script as Ctrl-C does, through its finally blocks, with the shell's 143."""
    cleaned = []

    def main():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        finally:
            cleaned.append(True)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            run_main(main)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert e.value.code == 143 and cleaned == [True]
    # and the caller's handler is back (tests run scripts' mains in pytest's process, whose SIGTERM must end it)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        run_main(lambda: None)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_under_torchrun_an_error_one_rank_alone_meets_is_printed_by_that_rank(monkeypatch, capsys):
    """A UserError every rank meets (bad input) is printed once a machine, by local rank 0; one a rank meets alone
    (every_rank=True: its own GPU, its own shard) is printed by that rank, else it ended with no word of why."""
    waits = []
    monkeypatch.setattr(common.time, "sleep", waits.append)
    for rank in ("0", "1"):
        monkeypatch.setenv("LOCAL_RANK", rank)
        for every_rank in (False, True):
            def main():
                raise UserError("bad thing: fix it", every_rank=every_rank)
            with pytest.raises(SystemExit) as e:
                run_main(main)
            said = "error: bad thing: fix it\n" if rank == "0" or every_rank else ""
            assert e.value.code == 1 and capsys.readouterr().err == said, (rank, every_rank)
            # the one that leaves the word to local rank 0 waits for torchrun to stop it, which follows rank 0's end:
            # ending first, it had torchrun stop rank 0 before it said why
            assert waits == ([common.LATE_FIRST_S] if rank == "1" and not every_rank else []), (rank, every_rank)
            waits.clear()


@pytest.mark.parametrize("vendor, flags, has_bf16, picks_bf16", [
    ("AuthenticAMD", "fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True, True),  # Zen 4
    # Sapphire Rapids
    ("GenuineIntel", "fpu sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True, True),
    ("GenuineIntel", "fpu sse sse2 avx avx2 avx512f amx_bf16 amx_tile amx_int8", True, True),  # AMX alone
    # a Xeon whose VM hides AMX: bf16 matmuls at half fp32's speed, so fp32
    ("GenuineIntel", "fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni avx512_fp16", True, False),
    ("AuthenticAMD", "fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni", False, False),  # no bf16 instructions
    ("GenuineIntel", "fpu vme sse sse2 avx avx2", False, False),
])
def test_auto_dtype_on_a_cpu_is_bf16_where_its_matmuls_outrun_fp32(monkeypatch, vendor, flags, has_bf16, picks_bf16):
    """--dtype auto takes bf16 autocast on a CPU with AMX, or with AVX-512 BF16 on AMD; an Intel CPU with AVX-512 BF16
    but no AMX has the instructions (so bf16 is not emulated there) but runs them no faster than fp32's FMAs."""
    import io

    import common
    cpuinfo = (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 6\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n"
               f"processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: fpu\n\n")

    def fake_open(path, *args, **kwargs):
        return io.StringIO(cpuinfo) if path == "/proc/cpuinfo" else open(path, *args, **kwargs)
    monkeypatch.setattr(common, "open", fake_open, raising=False)  # common's open: the builtin elsewhere
    assert common.cpu_has_bf16() is has_bf16
    assert common.cpu_bf16_is_faster() is picks_bf16
    assert common.pick_dtype(torch.device("cpu")) == (torch.bfloat16 if picks_bf16 else torch.float32)
    assert common.pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16  # asked for, given


@pytest.mark.parametrize("vendor, flags, said", [
    ("GenuineIntel", "avx2", "float32 (auto: no AVX-512 BF16 or AMX here)"),  # most laptops
    ("AuthenticAMD", "avx2 avx512f", "float32 (auto: no AVX-512 BF16 or AMX here)"),
    ("AuthenticAMD", "avx2 avx512f avx512_bf16", "bfloat16 (auto: AVX-512 BF16)"),  # Zen 4
    ("GenuineIntel", "avx2 avx512_bf16", "float32 (auto: AVX-512 BF16 without AMX, where bfloat16 is slower)"),
    ("GenuineIntel", "avx2 avx512_bf16 amx_bf16", "bfloat16 (auto: AMX)"),
])
def test_dtype_words_say_why_auto_took_its_dtype_on_a_cpu(monkeypatch, vendor, flags, said):
    """train.py's run line: the dtype, and on a CPU with --dtype auto the flags that decided it; pick_dtype's choice."""
    import common
    monkeypatch.setattr(common, "cpu_info", lambda: (vendor, set(flags.split())))
    cpu = torch.device("cpu")
    assert common.dtype_words(cpu, common.pick_dtype(cpu), "auto") == said
    assert common.dtype_words(cpu, torch.float32, "float32") == "float32"  # given: nothing to explain
    assert common.dtype_words(torch.device("cuda"), torch.bfloat16, "auto") == "bfloat16"


def test_cpu_info_without_proc_cpuinfo_is_no_flags(monkeypatch):
    import common

    def no_file(path, *args, **kwargs):
        raise FileNotFoundError(path)
    monkeypatch.setattr(common, "open", no_file, raising=False)
    assert common.cpu_info() == ("", set())
    assert common.pick_dtype(torch.device("cpu")) == torch.float32


def test_autocast_computes_in_the_dtype_asked_for_and_float32_is_a_no_op():
    from common import autocast
    cpu = torch.device("cpu")
    linear = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast(cpu, torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (torch's autocast to float32 warned "the target dtype is not supported")
        with autocast(cpu, torch.float32):
            assert not torch.is_autocast_enabled("cpu") and linear(x).dtype == torch.float32
    assert linear(x).dtype == torch.float32  # and nothing left on after either


@pytest.mark.parametrize("script, module",
                         [(s, "torch") for s in ("train.py", "gen.py", "eval.py", "serve.py", "bench.py",
                                                                    "export.py")]
                         + [("prepare.py", "numpy"), ("setup_tokenizer.py", "tiktoken")])
def test_ctrl_c_while_libraries_load_is_one_line(script, module, tmp_path):
    """Ctrl-C in the second or more a script spends importing torch (a fifth of one for numpy and tiktoken, in the
    scripts without torch) was a traceback from inside the import: a stand-in module that presses Ctrl-C as it loads
    sees the script end in one line, with the shell's 130."""
    fake = tmp_path / module
    fake.mkdir()
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(60)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, script), "--help"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "\ninterrupted\n")


def test_run_main_gives_ctrl_c_back_to_python():
    """Once main runs, Ctrl-C is Python's KeyboardInterrupt again, which the scripts clean up after (train.py saves)."""
    common.quiet_ctrl_c("__main__")
    try:
        assert common.run_main(lambda: signal.getsignal(signal.SIGINT)) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    common.quiet_ctrl_c("train")  # imported, not run: a test's or a user's Ctrl-C is theirs
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # run in a thread (runpy from a notebook's or a harness's), where only the main thread may set a handler: no
    # ValueError before main
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(common.quiet_ctrl_c, "__main__").result()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ignored_ctrl_c_stays_ignored():
    """A script's `python train.py &` starts with Ctrl-C ignored, as its shell does for a background job: the Ctrl-C
    pressed for the script ended the run too, the run's handler taken over while torch loaded and then given back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        common.quiet_ctrl_c("__main__")
        assert common.run_main(lambda: signal.getsignal(signal.SIGINT)) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


ONEDNN_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def test_onednn_keeps_a_bounded_number_of_kernels_set_before_torch_loads():
    """oneDNN keeps a kernel for every matmul shape it meets, 1024 by default, ~1 MB each: serve.py in bf16 on a CPU
    grew by ~1 GB over requests of varied prompt lengths. common (every script's first import, before torch) caps both
    its caches, unless the user set them: a subprocess without them sees the cap before torch is imported, and the
    kernel of the first of 65 bf16 matmul shapes built again (evicted), where the default cache held it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ONEDNN_CACHES}
    probe = "import os, sys, common; print('torch' in sys.modules, *(os.environ[k] for k in {!r}))" \
        .format(ONEDNN_CACHES)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, env=env, timeout=60)
    assert r.stdout.split() == ["False", "64", "64"], r.stderr
    mine = dict(env, **{k: "1024" for k in ONEDNN_CACHES})
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, env=mine, timeout=60)
    assert r.stdout.split() == ["False", "1024", "1024"], r.stderr

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    matmuls = ("import common, torch\ntorch.set_num_threads(1)\nw = torch.randn(64, 64)\n"
               "with torch.autocast('cpu', torch.bfloat16):\n"
               "    for t in [*range(2, 67), 2]:\n        torch.nn.functional.linear(torch.randn(t, 64), w)\n")
    r = subprocess.run([sys.executable, "-c", matmuls], capture_output=True, text=True, cwd=root,
                       env=dict(env, ONEDNN_VERBOSE="2"), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [line.split(",") for line in r.stdout.splitlines() if line.startswith("onednn_verbose,")]
    builds = [f[3] for f in lines if len(f) > 5 and f[3].startswith("create:") and f[-2] == "2x64:64x64"]
    if not builds:
        pytest.skip("bf16 matmuls on this CPU run without oneDNN")
    assert builds == ["create:cache_miss", "create:cache_miss"]


def test_a_command_to_paste_calls_this_python_as_the_shell_finds_it(tmp_path, monkeypatch):
    """The commands the scripts print (train.py's "try it: python gen.py ...", the rebuild hints) start with the Python
    that runs them as the user's shell would reach it: `python` in an activated venv, else its path. make demo runs
    .venv/bin/python without activating the venv, and its "python gen.py" found no torch, or no python (Debian)."""
    exe = os.path.abspath(sys.executable)
    monkeypatch.setenv("PATH", os.path.dirname(exe))  # an activated venv: its bin first
    assert common.script_command("gen.py", "models/a b.pt") == "python gen.py 'models/a b.pt'"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # not activated: its path, relative below here
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(exe))))
    assert common.script_command("gen.py") == f"{os.path.relpath(exe)} gen.py" \
        and not os.path.isabs(os.path.relpath(exe))
    monkeypatch.chdir(tmp_path)
    assert common.python_command() == shlex.quote(exe)  # (outside: the whole path)
    # run from another folder, the script's path: a bare `gen.py` is no file here, and outside the working directory
    # the whole path, as the Python's (not ../../../work/gpt/gen.py)
    script = os.path.join(os.path.dirname(os.path.abspath(common.__file__)), "gen.py")
    assert common.script_command("gen.py", "x") == f"{shlex.quote(exe)} {shlex.quote(script)} x"
    # a system's python3 alone (no `python`), and a link of another folder to the same file: another environment
    for d, name in (("sys", "python3"), ("venv", "python")):
        (tmp_path / d).mkdir()
        os.symlink(exe, tmp_path / d / name)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "sys" / "python3"))
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "venv"), str(tmp_path / "sys")]))
    assert common.python_command() == "python3"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "other" / "python"))
    assert common.python_command() == os.path.join("other", "python")  # (below here: relative)


@pytest.mark.skipif(HANGUP is None or not hasattr(os, "openpty"), reason="terminals that hang up are POSIX")
def test_a_line_to_a_terminal_that_hung_up_ends_as_its_sighup(tmp_path):
    """An SSH session dropped: the terminal hangs up before its SIGHUP comes (its shell passes it on), and a line
    written meanwhile failed with EIO, which ended the script in a traceback, exit 1, to nowhere (train.py: after the
    save on the way out of the error). It ends as the SIGHUP would have, 129, and the rest is not written; output to
    a file or pipe is no terminal's, and keeps the error."""
    leader, follower = os.openpty()
    os.close(leader)  # the session gone: the terminal hangs up
    script = "import common; common.run_main(lambda: print('step 7: loss 2.31', flush=True))"
    with open(os.devnull, "w") as null:
        r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=follower, stderr=null, timeout=60)
    os.close(follower)
    assert r.returncode == 129
    # an I/O error elsewhere (a disk failing under a read), with the output there: a bug's traceback, as before
    script = "import common, errno\ndef main():\n    raise OSError(errno.EIO, 'Input/output error')\n" \
             "common.run_main(main)"
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "OSError: [Errno 5] Input/output error" in r.stderr, r.stderr


@pytest.mark.skipif(HANGUP is None or not hasattr(os, "openpty"), reason="terminals that hang up are POSIX")
def test_a_hang_up_lets_the_clean_up_finish(tmp_path):
    """SIGHUP ends a script through its clean-up (finally blocks: a dataset's temporary files removed), as SIGTERM
    does. Its terminal gone with it, a line the clean-up wrote there failed (EIO), and the system's second SIGHUP (the
    shell's, as it ends) stopped it again: either cut the clean-up short. It finishes, and the exit is 129."""
    leader, follower = os.openpty()
    os.close(leader)  # the session gone: the terminal hangs up
    done = tmp_path / "cleaned up"
    script = "import common, os, signal\n" \
             "def main():\n" \
             "    try:\n" \
             "        os.kill(os.getpid(), signal.SIGHUP)\n" \
             "    finally:\n" \
             "        os.kill(os.getpid(), signal.SIGHUP)  # the second one\n" \
             "        print('removing temporary files', flush=True)\n" \
             f"        open({str(done)!r}, 'w').close()\n" \
             "common.run_main(main)"
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower,
                       stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=hangup_as(signal.SIG_DFL))
    os.close(follower)
    assert r.returncode == 129 and done.exists(), r.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="pseudo-terminals are POSIX")
def test_a_path_to_paste_is_relative_below_the_working_directory_else_absolute(tmp_path, monkeypatch):
    """models/story.pt, not /home/.../models/story.pt, in a command to paste from here; /usr/bin/python3, not
    ../../usr/bin/python3, for one outside it."""
    monkeypatch.chdir(tmp_path)
    assert common.shown_path(str(tmp_path / "models" / "story.pt")) == os.path.join("models", "story.pt")
    assert common.shown_path(os.path.dirname(str(tmp_path))) == os.path.dirname(str(tmp_path))


def test_a_progress_bar_is_drawn_on_a_sized_terminal_only(tmp_path):
    """A terminal with a size gets the bars; a pseudo-terminal nobody sized (`script -qc CMD /dev/null | tee log`: 0
    columns, where tqdm drew nothing and the lines it stands for were lost too), one of 0 rows, and a file or a pipe
    get the plain lines."""
    import fcntl
    import struct
    import termios
    leader, follower = os.openpty()
    with os.fdopen(leader, "wb", buffering=0), os.fdopen(follower, "w") as tty:
        for rows, columns, drawn in ((24, 80, True), (0, 0, False), (0, 80, False), (24, 0, False)):
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            assert common.draws_a_bar(tty) is drawn, (rows, columns)
    with open(tmp_path / "log", "w") as f:
        assert common.draws_a_bar(f) is False
    # a terminal that cannot say its size (IDE consoles, some Windows ones): tqdm's own width, as before sizes were read
    assert common.draws_a_bar(types.SimpleNamespace(isatty=lambda: True, fileno=lambda: -1)) is True


def test_progress_off_a_terminal_says_its_share_and_minutes_left_once_a_minute(monkeypatch, capsys):
    """A nohup run's log: a line a minute (none between), the rate from the first update on, the minutes left rounded
    up (1.5 is "about 2", not "about 1" for a job not done in one), and past an estimated total 100% and no time
    left."""
    now = [1000.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    progress = common.ProgressLines("data/x", 250e6, "B")
    for seconds, n in ((10, 10e6), (20, 40e6), (30, 50e6), (60, 200e6)):
        now[0] += seconds
        progress.update(n)
    assert capsys.readouterr().err == ("data/x: 100 MB of 250 MB (40%), about 2 min left, 1.80 MB/s\n"
                                       "data/x: 300 MB of 250 MB (100%), 2.64 MB/s\n")


def test_progress_off_a_terminal_times_the_rate_from_its_first_update(monkeypatch, capsys):
    """A silent pass before the first update (prepare.py counting a folder's documents for val: 40 s of 3 GB) is no
    part of the rate: its first line said 1.05 MB/s and 51 minutes left of a build that went at 4-7 MB/s and took 9.
    A line due at the first update waits for the next, which has a rate."""
    now = [1000.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    progress = common.ProgressLines("data/x", 600e6, "B")
    for seconds, n in ((45, 5e6), (20, 80e6)):
        now[0] += seconds
        progress.update(n)
    assert capsys.readouterr().err == "data/x: 85 MB of 600 MB (14%), about 3 min left, 4.00 MB/s\n"
    progress = common.ProgressLines("data/y", 600e6, "B")
    for seconds, n in ((70, 5e6), (10, 50e6)):
        now[0] += seconds
        progress.update(n)
    assert capsys.readouterr().err == "data/y: 55 MB of 600 MB (9%), about 2 min left, 5.00 MB/s\n"


@pytest.mark.parametrize("script", ["prepare", "train", "gen", "eval", "serve", "export", "bench"])
def test_help_says_every_default_one_way(script, capsys, monkeypatch):
    """--help says a default "(default: X)": gen.py's, eval.py's and serve.py's --dtype said "(default auto: bf16
    where...)" beside --device's "(default: auto = CUDA...)", and prepare.py's --out_dir "; default data"."""
    import importlib
    monkeypatch.setenv("COLUMNS", "100")
    module = importlib.import_module(script)
    show = {"prepare": module.main, "bench": lambda argv: module.get_parser().parse_args(argv)}.get(script)
    with pytest.raises(SystemExit) as e:
        (show or module.parse_args)(["--help"])
    said = " ".join(capsys.readouterr().out.split())  # (its lines joined: a default may wrap)
    assert e.value.code == 0 and "default: " in said and not re.findall(r".{30}(?:\(default [^:]|; default ).{20}",
                                                                         said)


def test_a_script_runs_where_no_temporary_directory_is_writable(tmp_path):
    """`docker run --read-only` without a `--tmpfs /tmp`: tempfile's search for a writable directory raised as torch
    was imported (dill, which datasets brings, names the directory on import), so gen.py and serve.py, which write
    nothing, ended in a traceback before they began. Here tempfile's search is made to find none, as there."""
    from checkpoint import save_checkpoint
    from model import GPT, make_config
    from setup_tokenizer import get_tokenizer
    enc = get_tokenizer("gpt2")
    ckpt = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, GPT(make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=16,
                                          vocab_size=enc.n_vocab)), enc)
    script = ("import runpy, sys, tempfile\n"
              "def none_writable():\n"
              "    raise FileNotFoundError(2, 'No usable temporary directory found')\n"
              "tempfile._get_default_tempdir = none_writable\n"
              f"sys.argv = ['gen.py', {ckpt!r}, '--max_tokens', '4', '--device', 'cpu', '--seed', '1']\n"
              "runpy.run_path('gen.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip(), r.stderr


def test_sigterm_while_libraries_load_ends_a_containers_first_process(tmp_path):
    """A container's first process (PID 1: docker's `CMD ["python", "serve.py"]`, without --init) gets no signal it
    has no handler for: `docker stop` while torch loaded was dropped, the server started anyway, and was killed at the
    stop's timeout. A stand-in torch that sends SIGTERM as it loads, in a new PID namespace (where the script is PID
    1), sees the script end at once with SIGTERM's 143."""
    unshare = shutil.which("unshare")
    if not unshare or subprocess.run([unshare, "-rpf", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unshare (a new user and PID namespace) here")
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os, signal, time\nassert os.getpid() == 1\nos.kill(1, signal.SIGTERM)\n"
                                      "time.sleep(60)\n")
    try:
        r = subprocess.run([unshare, "-rpf", sys.executable, os.path.join(ROOT, "serve.py"), "--help"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM to PID 1 while torch loaded was dropped")
    assert (r.returncode, r.stdout) == (143, ""), r.stderr


def test_the_readmes_reading_guide_names_what_the_scripts_hold():
    """README's "Where to start reading": every `name` a script's line cites is in that script, as a module's name or
    (`_trunk` after `GPT.forward`) a class's the line named before it; a renamed function left the guide pointing at
    nothing."""
    import importlib
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        guide = f.read().split("Where to start reading", 1)[1]
    lines = re.findall(r"^- (\w+)\.py: (.*(?:\n  .*)*)", guide, re.M)  # a script's line and those indented under it
    assert [script for script, _ in lines] == ["model", "train", "prepare"]
    for script, text in lines:
        module, classes = importlib.import_module(script), []
        for name in re.findall(r"`([\w.]+)`", text):
            head, *rest = name.split(".")
            owners = [module] + [getattr(module, c) for c in classes] if not rest else [module]
            found = [o for o in owners if hasattr(o, head)]
            assert found, f"README's reading guide cites {name}, which {script}.py does not hold"
            value = getattr(found[0], head)
            for part in rest:
                assert hasattr(value, part), f"README's reading guide cites {name}, which {script}.py does not hold"
                value = getattr(value, part)
            if isinstance(getattr(found[0], head), type):
                classes.append(head)


def test_the_memory_a_process_may_have_is_its_cgroups_where_that_is_less(tmp_path):
    """A container's --memory (cgroup v1 or v2) or a systemd unit's MemoryMax: GPT's check of its weights and train.py's
    cap_memory measured the host's RAM, so a step too large for the container was killed by its kernel instead."""
    from model import cgroup_memory

    def cgroup(files, listing):
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        (tmp_path / "cgroup").write_text(listing)
        return cgroup_memory(10 * 2 ** 30, str(tmp_path), str(tmp_path / "cgroup"))
    # v2: the limit is its parent's, not a larger one above; no swap allowed
    assert cgroup({"user.slice/memory.max": f"{4 * 2 ** 30}\n", "user.slice/memory.swap.max": "0\n",
                   "user.slice/run.scope/memory.max": "max\n", "memory.max": f"{8 * 2 ** 30}\n"},
                  "0::/user.slice/run.scope\n") == 4 * 2 ** 30
    (tmp_path / "memory.max").unlink()
    # v1 in a container: the host's path is not under its mount, whose root holds the limit (memory and swap: 3 GB)
    shutil.rmtree(tmp_path / "user.slice")
    assert cgroup({"memory/memory.limit_in_bytes": f"{2 * 2 ** 30}\n", "memory/memory.memsw.limit_in_bytes":
                   f"{3 * 2 ** 30}\n"}, "5:cpu,cpuacct:/docker/ab12\n4:memory:/docker/ab12\n0::/\n") == 3 * 2 ** 30
    # none set: v1's root holds a huge number
    (tmp_path / "memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup({}, "4:memory:/\n") is None
    # v2 in a container's own namespace ("0::/"): the limit at the mount's root; swap not limited: the machine's
    assert cgroup({"memory.max": f"{2 * 2 ** 30}\n", "memory.swap.max": "max\n"}, "0::/\n") == 12 * 2 ** 30


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA is Linux's")
def test_an_allocation_past_the_machines_memory_fails_rather_than_being_killed_later():
    """Linux grants an allocation larger than the memory there is and kills the process as its pages are touched,
    without a word: train.py --model gpt2 --batch_size 16 on a small machine ended as "Killed", not as its line naming
    a smaller --batch_size. Capped, the allocation fails at once, as the error is_oom knows."""
    code = ("import model, common, torch; model.physical_memory = lambda: 2 ** 30; print(common.cap_memory())\n"
            "try:\n    torch.ones(2 ** 29)\nexcept (RuntimeError, MemoryError) as e:\n    print(common.is_oom(e))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr
