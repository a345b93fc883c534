"""
Train a GPT on a dataset made by prepare.py, in the spirit of karpathy/nanoGPT's train.py, with its
criticisms fixed: real command-line options (--help), importable functions instead of module-level
script code, real epochs instead of random windows, and exact resume.

    python train.py --dataset story --model tiny --epochs 1
    python train.py --checkpoint models/story_epoch1.pt --epochs 2     # go on where it stopped, exactly
    python prepare.py --dataset dailydialog --tokenizer models/story_best.pt   # other data, in the model's vocabulary
    python train.py --dataset dailydialog --checkpoint models/story_best.pt   # fine-tune on it
    python train.py --dataset chat --init_from ~/gpt2                  # fine-tune a Hugging Face model folder
    torchrun --standalone --nproc_per_node=8 train.py --dataset story --model gpt2   # 8 GPUs (DDP)

Epochs. The train split is cut into non-overlapping windows of block_size+1 tokens at stride block_size
(x = w[:-1], y = w[1:], so the token at a window's border is a target once and an input once). An epoch
visits every window exactly once, in an order drawn from (seed, epoch). An optimizer step takes
batch_size*grad_accum windows, so an epoch is ceil(windows / (batch_size*grad_accum)) steps; the last
one is short (fewer micro-batches, the last padded to batch_size rows with ignored targets, which keeps tensor shapes
fixed). prepare.py packs conversation sets in blocks of meta.json's "pack" tokens, so windows of that size (or a
multiple) never cut a conversation; another --block_size gets a warning.

Resume. A checkpoint records the completed epochs, how many windows of the current epoch are done, the
global step (by --epochs the learning rate is a pure function of it; in a --time_budget, of the budget's clock,
recorded too), the optimizer and the RNG state; the window order is re-derived from (seed, epoch). So N steps in
one go and N/2 steps + resume for N/2 give identical weights. Continuing on another --dataset is fine-tuning: same
weights, fresh optimizer and epoch count. With --resume one command starts a run and, run again, goes on from its
newest checkpoint.

Several processes. Under torchrun each optimizer step takes batch_size*grad_accum*world windows and each rank its
share of them (see Batches), as an evaluation takes eval_batches*batch_size*world (the options are per process); rank 0
alone logs and writes files, and checkpoints resume on any number of ranks.

Files, for --dataset story (next to --output_checkpoint): story_epoch{N}.pt (story.pt for a --time_budget run,
which may repeat many epochs), written every --save_interval % of an epoch and at each epoch's end (of a
--time_budget run: every --save_interval % of the budget and at its end), on Ctrl-C and on errors; story_best.pt,
the lowest val loss so far; story_metrics.jsonl, one JSON record per log/eval point; story_loss.png, the loss curves,
when matplotlib is installed (it is not in requirements.txt).
"""
import common  # first (it is light): Ctrl-C while torch loads then ends in one line, not a traceback from its import
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import contextlib
import dataclasses
import datetime
import gc
import glob
import hashlib
import inspect
import json
import logging
import math
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
import zipfile

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import (NOT_THIS_CODE, STATE_KINDS, add_checkpoint_argument, checkpoint_config, is_kind,
                        load_checkpoint, load_weights, nonfinite, out_of_memory_loading, parse_checkpoint,
                        save_checkpoint, tensor_bytes, zip_damage)
from common import (ArgumentParser, DTYPES, HANGUP, UserError, add_device_arguments, ask, atomic_write_text, autocast,
                    cap_memory, check_output, closed_pipe_on_windows, color_ok, draws_a_bar, exit_after_the_first,
                    first_line, fmt_count, held_lock, hung_up, is_dataset_folder, is_oom, lock_is_held, nonempty,
                    nonnegative_int, naming_full_disk, path_arg, pick_device, pick_dtype, prepare_lock, read_items,
                    refuse_dataset_folder, remove_stale_tmp, remove_temporary, retain_freed_memory, run_main,
                    dtype_words, slow_on_this_cpu, speaks_for_machine, stop_signals, Switch, tmp_name)
from hf import is_hf_folder, trained_lr
from model import OPTIMIZERS, PRESETS, VARIANTS, GPT, make_config
from prepare import (DATASETS, DEFAULT_OUT_DIR, DEFAULT_PACK, DEFAULT_VAL_FRACTION, MIXABLE, NANOGPT_DATASETS,
                     damaged_field, is_complete, is_dataset_name, meta_options, new_command, rebuild_command,
                     token_bytes, unreadable_field)
from setup_tokenizer import (TOKENIZER_HELP, download_hint, fewer_ids, get_tokenizer, gone_vocabulary,
                             moved_vocabulary, tokenizer_from_state, tokenizer_hash, vocabulary_name)

# Peak lrs and batch sizes (windows) that train each preset well, Muon's updates scaled to AdamW's size. tiny's, on a
# 2-core CPU (BENCHMARKS.md): batch 8 beat 4, 16 and 32; 4e-3 beat 2e-3 and matched 6e-3.
DEFAULT_LR = {"tiny": 4e-3, "small": 1e-3, "gpt2-75m": 6e-4, "gpt2": 6e-4}
DEFAULT_BATCH_SIZE = {"tiny": 8}  # others: 16
EVAL_SPACING = 3  # a budgeted run's evaluations take at most about 1 / (1 + EVAL_SPACING) of it
# the write speed assumed for a save not yet timed (a budget's room for its final two): the test machine's slowest wrote
# 150-210 MB/s, so 100 MB/s covers them and a hard disk
SAVE_BYTES_PER_S = 100e6
# the logger of torch.compile's notes on the context managers it meets (DDP's forward opens one: not_profiler_notice)
DYNAMO_CONTEXT_LOG = "torch._dynamo.variables.ctx_manager"

# under torchrun, how long a rank waits in a collective before an error (gloo's own is 30 minutes): NCCL's 10 covers
# a healthy run's longest waits, rank 0's save (60 GB at SAVE_BYTES_PER_S) or the slowest first --compile step
DIST_TIMEOUT_MIN = 10.0
MAX_LR = 1e5  # a sanity bound (0.05 is about the largest that trains anything here) that keeps Muon's update in float32
OVERFIT_EVALS = 3  # evaluations past the best, val loss 1% above it, after which a run's summary says it overfits
# the fewest steps a run by epochs is not warned of: a dozen (an epoch of 400 short chats) trains a model of garbage
FEW_STEPS = 100
FINETUNE_LR_DIVISOR = 3  # fine-tuning starts from trained weights: smaller steps keep what they know

# Training options and their defaults. Continuing on the same dataset, an option not given takes the checkpoint's value,
# so `--checkpoint X` alone resumes the very same run (dtype and --compile too). None means derived: block_size from the
# model, lr and batch_size from the preset, min_lr lr/10 (lr/100 in a budget), warmup default_warmup (or BUDGET_WARMUP).
DEFAULTS = dict(epochs=1, seed=1337, batch_size=None, grad_accum=1, block_size=None, lr=None, min_lr=None,
                warmup=None, weight_decay=0.1, grad_clip=1.0, beta1=0.9, beta2=0.95, eval_interval=10.0,
                log_interval=10.0, save_interval=10.0, eval_batches=40, patience=0, time_budget=None,
                optimizer=OPTIMIZERS[0], dtype="auto", compile=False, recompute_activations=False)
# share of a --time_budget spent warming up: on tiny's 2-minute runs 10% beat 2%, whose first steps stalled the loss
BUDGET_WARMUP = 0.10
UNLIMITED_EPOCHS = 10**6  # --time_budget without --epochs: the clock ends the run
MODEL_SHAPE = ("n_layer", "n_head", "n_embd", "variant", "bias")  # fixed by a checkpoint's weights
INT_OPTIONS = ("batch_size", "block_size")  # of DEFAULTS' None ones: the rest of those are numbers


# -----------------------------------------------------------------------------
# command line

def warmup_arg(text):
    """--warmup N (steps) -> N; --warmup P% -> "P%" (kept as given: resolved against the run's length)."""
    share = text.strip().endswith("%")
    try:
        value = float(text.strip()[:-1]) if share else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of steps nor a percentage like 5%")
    if not value >= 0 or (share and not value <= 100):  # written so that nan% fails too
        raise argparse.ArgumentTypeError(f"{text!r}: a warmup is 0 to 100% of the run, or 0 or more steps")
    return text.strip() if share else value


# a duration's units, in minutes: --time_budget 90s, 2m, 1.5h
DURATION_UNITS = {"": 1, **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1 / 60),
                  **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 1),
                  **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 60)}


def minutes_value(text):
    """argparse type of a duration: minutes, or with a unit (90s, 2m, 1.5h) -> minutes (range checked where used)."""
    number, unit = re.fullmatch(r"\s*(.*?)\s*([a-z]*)\s*", text.lower()).groups()
    if unit in ("nan", "inf", "infinity") and not number:  # (words float takes, no unit: refused where checked)
        number, unit = unit, ""
    try:
        if unit not in DURATION_UNITS:
            raise ValueError
        return float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes, nor one with a unit (90s, 2m, "
                                         f"1.5h)") from None


def epochs_value(text):
    """argparse type of --epochs: a whole number (its range is checked in resolve_args); 0.5 says how to stop early."""
    try:
        return int(text)
    except ValueError:
        with contextlib.suppress(ValueError):
            if math.isfinite(float(text)) and not float(text).is_integer():
                raise argparse.ArgumentTypeError(f"{text!r}: epochs are whole; for part of one, stop the run with "
                                                 f"--max_steps or --time_budget") from None
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def minutes_arg(text):
    """argparse type of a positive, finite duration in minutes (--dist_timeout): see minutes_value."""
    value = minutes_value(text)
    if not 0 < value < math.inf:  # written so that nan fails too
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of minutes")
    return value


def preset_arg(text):
    """argparse type of --model: a preset's name; a model to load (vLLM's --model) goes to --checkpoint/--init_from."""
    if text not in PRESETS and (os.path.exists(text) or "/" in text or os.sep in text or text.endswith(".pt")):
        checkpoint = f"go on from (or fine-tune) a checkpoint with --checkpoint {text}"
        folder = f"fine-tune a Hugging Face model folder with --init_from {text}"
        fix = folder if os.path.isdir(text) else checkpoint if os.path.isfile(text) or text.endswith(".pt") else \
            f"{checkpoint}; {folder}"
        raise argparse.ArgumentTypeError(f"{text} is a model to load, and --model is a new model's size preset "
                                         f"({', '.join(PRESETS)}): {fix}")
    return text


def warmup_share(warmup):
    """The share of the run that warms up, for --warmup given as "P%"."""
    return float(warmup[:-1]) / 100


def parse_args(argv=None):
    d = DEFAULTS
    # --help shows the docstring: its examples, epochs, resume and the files written
    p = ArgumentParser("train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=nonempty, help="folder under --data_dir made by `python prepare.py --dataset X` "
                                                    "(or its --name) (default: the checkpoint's dataset, else story)")
    g.add_argument("--data_dir", type=path_arg,
                   help="where prepared datasets live (default: the checkpoint's, else data)")
    g.add_argument("--tokenizer", type=path_arg, help=f"{TOKENIZER_HELP}; only checked against the data's (default: "
                                                      f"the data's)")
    g = p.add_argument_group("model (a new model; a checkpoint brings its own)")
    g.add_argument("--model", type=preset_arg, choices=list(PRESETS),
                   help="size preset of a new model (default: tiny on CPU and MPS, small on CUDA)")
    g.add_argument("--n_layer", type=int, help="override the preset's number of blocks")
    g.add_argument("--n_head", type=int, help="override the preset's attention heads")
    g.add_argument("--n_embd", type=int, help="override the preset's width")
    g.add_argument("--variant", choices=VARIANTS, help="gpt2 (learned positions, LayerNorm, GELU) or "
                                                                  "modern (RoPE, RMSNorm, SwiGLU); default: the "
                                                                  "preset's (modern for tiny, gpt2 for the others)")
    g.add_argument("--bias", action=Switch, help="biases in the linear layers, and in the gpt2 variant's LayerNorms "
                                                 "(default: on, as GPT-2's; --no_bias is nanoGPT's bias=False)")
    g.add_argument("--dropout", type=float, help="dropout probability (default: 0, or the checkpoint's)")
    g.add_argument("--block_size", type=int, help="training context in tokens; a new model's maximum context too "
                                                  "(default: the model's maximum, 256 for tiny/small, 1024 for "
                                                  "gpt2-75m/gpt2)")
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=epochs_value, help=f"total epochs to reach, counting those a checkpoint's run "
                                                       f"already did when it goes on (a fine-tune counts from 0) "
                                                       f"(default: {d['epochs']}); the lr schedule spans all of them")
    g.add_argument("--time_budget", type=minutes_value, metavar="MINUTES",
                   help="train for this many minutes (or 90s, 1.5h) of wall-clock time, evaluations and saves "
                        "included: the lr schedule (warmup, cosine decay) spans the budget from the end of the "
                        "first (compiling) step, epochs repeat until it ends (unless --epochs is given), and the last "
                        "checkpoint is written when it ends; a continued run counts its earlier time, its schedule "
                        "waiting for its first step again (one whose budget ran out, given --epochs alone, goes on by "
                        "epochs)")
    g.add_argument("--max_steps", type=int, help="stop after this many optimizer steps in this run, evaluated (unless "
                                                 "--eval_interval 0; between evaluations as a pause, not judged for "
                                                 "the best file or --patience, so a continued run goes on as one run "
                                                 "would) and saved there (the checkpoint records the position inside "
                                                 "the epoch; the schedule is unchanged)")
    # nanoGPT's run length and schedule in steps: refused with what does it here (nanogpt_schedule), not "unrecognized"
    for k in ("max_iters", "lr_decay_iters"):
        g.add_argument(f"--{k}", type=int, help=argparse.SUPPRESS)
    g.add_argument("--decay_lr", nargs="?", const="True", help=argparse.SUPPRESS)
    shape = ", ".join(f"--{k}" for k in ("model", *MODEL_SHAPE))
    add_checkpoint_argument(g, f"continue from this checkpoint, whose model shape and vocabulary stay ({shape} are "
                               f"refused where they differ). On its own dataset (the default, in its --data_dir) its "
                               f"run goes on exactly: a training option left out keeps the checkpoint's value, and any "
                               f"may be given anew (--epochs, --time_budget, --lr, --batch_size, --dropout, "
                               f"--block_size up to the model's context, ...). On another --dataset it is a fine-tune, "
                               f"whose training options left out take their defaults", shown="option")
    g.add_argument("--init_from", type=path_arg, metavar="DIR",
                   help="fine-tune a Hugging Face model folder (GPT-2 as downloaded, or "
                        "export.py's output); its tokenizer must be the data's")
    g.add_argument("--output_checkpoint", type=path_arg,
                   help="where to save; {dataset} and {epoch} are filled in (default: "
                        "models/{dataset}_epoch{epoch}.pt, models/{dataset}.pt with "
                        "--time_budget; when continuing, the run's names next to the "
                        "checkpoint given)")
    g.add_argument("--overwrite", action="store_true", help="let a new run replace an earlier run's checkpoints, "
                                                            "best file and metrics, or a run continued from an "
                                                            "earlier point its later ones (refused otherwise); they "
                                                            "are removed at the new run's first save")
    g.add_argument("--resume", action="store_true",
                   help="go on from the run's newest checkpoint where it has one (in the files it writes, see "
                        "--output_checkpoint), else start as the other options say: so one command starts a run and "
                        "continues it after a stop, a crash or a job's requeue (a service's restart); a run it finds "
                        "ended (its epochs done, its budget spent, stopped by --patience) says so and exits 0")
    g.add_argument("--reset_epoch", action="store_true", help="restart the epoch count and lr schedule of a "
                                                              "checkpoint's run on its own dataset, keeping its "
                                                              "weights and optimizer (a fine-tune starts afresh "
                                                              "anyway)")
    g.add_argument("--seed", type=int,
                   help=f"seeds the initial weights, dropout and epoch orders (default: {d['seed']})")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch_size", type=int, help="windows per forward pass (default: " + ", ".join(
        f"{k} {v}" for k, v in DEFAULT_BATCH_SIZE.items()) + ", others 16)")
    g.add_argument("--grad_accum", type=int, help=f"forward passes per optimizer step (default: {d['grad_accum']})")
    g.add_argument("--lr", type=float, help="peak learning rate (default: " + ", ".join(
        f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + "; fine-tuning, a third of the checkpoint's (a fine-tune's "
        "as it is), or of its preset's where it records none: a Hugging Face folder)")
    g.add_argument("--min_lr", type=float, help="learning rate at the end of the cosine decay (default: lr/10, "
                                                "lr/100 with --time_budget; continuing a run with a new --lr, the "
                                                "run's min_lr/lr ratio)")
    g.add_argument("--warmup", type=warmup_arg, help="linear warmup: optimizer steps, or a share of the run as in 5%% "
                                                     "(of all steps, or of --time_budget) (default: 2%% of all steps, "
                                                     f"from 100 (10%% of a run under 1000) to 1000; "
                                                     f"{BUDGET_WARMUP * 100:g}%% of a time budget)")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="muon: Muon for the weight matrices inside the blocks, AdamW for the embedding, gains and "
                        f"biases; adamw: AdamW for everything (default: {d['optimizer']}, or the checkpoint's when "
                        f"continuing its run; a fine-tune's optimizer is new, {d['optimizer']} unless given)")
    g.add_argument("--weight_decay", type=float, help=f"weight decay on matrices (default: {d['weight_decay']})")
    g.add_argument("--grad_clip", type=float,
                   help=f"clip the gradient norm to this, 0 = off (default: {d['grad_clip']})")
    # nanoGPT's names (its shakespeare_char config sets beta2 0.99): AdamW's alone, as Muon's momentum is its own
    for k, what in (("beta1", "gradients"), ("beta2", "squared gradients")):
        g.add_argument(f"--{k}", type=float, help=f"AdamW's {k}, the decay of its average of the {what} (default: "
                                                  f"{d[k]}); with --optimizer muon, that of AdamW's part (the "
                                                  f"embedding, gains and biases): Muon's momentum stays 0.95")
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval_interval", type=float, help=f"evaluate every this %% of an epoch (of the time with "
                                                       f"--time_budget, spaced by at least 3 times an evaluation's "
                                                       f"duration), 0 = only at epoch ends or the end of the "
                                                       f"budget (default: {d['eval_interval']:g})")
    g.add_argument("--log_interval", type=float, help=f"log (a metrics record) every this %% of an epoch (of the "
                                                      f"time with --time_budget), and a line at least once a "
                                                      f"minute (default: {d['log_interval']:g})")
    g.add_argument("--save_interval", type=float, help=f"save every this %% of an epoch (of the time with "
                                                       f"--time_budget), 0 = only at epoch ends or the end of the "
                                                       f"budget (default: {d['save_interval']:g})")
    g.add_argument("--eval_batches", type=int, help=f"at most this many val batches per evaluation, spread over the "
                                                    f"split; per process, as --batch_size is: under torchrun the "
                                                    f"processes share eval_batches x batch_size x processes windows "
                                                    f"(default: {d['eval_batches']}; left out when continuing: the val "
                                                    f"windows the run evaluated, whatever its batches and ranks now)")
    g.add_argument("--patience", type=int, help="stop early after this many evaluations without a better val loss, "
                                                "0 = never (default: 0)")
    g = p.add_argument_group("system")
    add_device_arguments(g, inherited=True)
    g.add_argument("--compile", action=Switch,
                   help="torch.compile the model (falls back to eager if it fails; default: the checkpoint's when "
                        "continuing a run, else off)")
    g.add_argument("--recompute_activations", action=Switch,
                   help="keep only each block's input for the backward pass and compute the rest again: far less "
                        "activation memory (a larger batch or context on a small GPU) for up to a third more compute "
                        "(default: the checkpoint's when continuing a run, else off)")
    g.add_argument("--dist_timeout", type=minutes_arg, default=DIST_TIMEOUT_MIN, metavar="MINUTES",
                   help=f"under torchrun, how long a process waits for the others (a stuck one, or rank 0 saving a "
                        f"checkpoint) before it ends with an error (default: {DIST_TIMEOUT_MIN:g}); raise it for a "
                        f"checkpoint save or first --compile step that takes longer")
    g.add_argument("--no_color", "--no-color", dest="no_color", action="store_true",
                   help="no ANSI colors in the output")
    args = parse_checkpoint(p, p.parse_args(argv))
    decay_lr = vars(args).pop("decay_lr")
    if decay_lr is not None:  # (nanoGPT's False: a constant lr)
        p.error(f"--decay_lr {decay_lr}: the lr here always warms up, then decays to --min_lr over the run; "
                + ("for a constant lr give --min_lr equal to --lr, and --warmup 0 (0% with --time_budget)"
                   if decay_lr.lower() in ("false", "0") else "leave --decay_lr out"))
    return args


def nanogpt_schedule(args, meta, dist):
    """nanoGPT's --max_iters or --lr_decay_iters, refused with the --epochs of about as many steps (a run here is whole
    epochs or a --time_budget, its schedule spanning it). Takes them out of args."""
    given = {k: vars(args).pop(k) for k in ("max_iters", "lr_decay_iters")}  # (no options of a run: not recorded)
    k, n = next(((k, n) for k, n in given.items() if n is not None), (None, None))
    if k is None:
        return
    if n < 1:
        raise UserError(f"--{k} must be at least 1, got {n}")
    n_windows = len(Windows(meta, "train", args.block_size))
    per_step = min(args.batch_size, math.ceil(n_windows / dist.world)) * args.grad_accum * dist.world
    spe = math.ceil(n_windows / per_step)  # (Batches' steps_per_epoch, before the run has them)
    what = {"max_iters": "a run's length here is whole epochs (--epochs) or minutes (--time_budget), the lr's warmup "
                         "and cosine decay spanning it",
            "lr_decay_iters": "the lr's cosine decays to --min_lr here over the whole run, its --epochs (or "
                              "--time_budget)"}[k]
    epochs = round(n / spe)
    fix = f"so --epochs {epochs} is {epochs * spe:,} steps" if epochs else \
        f"so {n:,} steps are {n / spe:.0%} of one: --max_steps {n} stops a run there, its lr not yet decayed (a " \
        f"--time_budget decays it in the minutes given)"
    raise UserError(f"--{k} {n}: {what}; an epoch of {args.dataset} is {spe:,} steps of {per_step:,} windows of "
                    f"{args.block_size} tokens, {fix}")


def inheritable(k, v):
    """Whether v, a checkpoint's value of option k (DEFAULTS), is one train.py writes."""
    if k == "optimizer":
        return v in OPTIMIZERS
    if k == "dtype":
        return v in ("auto", *DTYPES)  # --dtype's choices
    if k in ("compile", "recompute_activations"):
        return isinstance(v, bool)
    if k == "warmup":  # steps, or a share as in "5%", as --warmup reads them
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            return False
        with contextlib.suppress(argparse.ArgumentTypeError):
            return warmup_arg(str(v)) == v
        return False
    return not isinstance(v, bool) and isinstance(v, int if isinstance(DEFAULTS[k], int) or k in INT_OPTIONS
                                                  else (int, float))


def check_recorded_options(path, ckpt_args, continuing):
    """A continued run reads its checkpoint's recorded options (min_lr/lr, seed, batch) even where given anew: one
    train.py never writes (an edited lr of 'abc': a TypeError later) is refused."""
    for k, v in ckpt_args.items() if continuing else ():
        # (world_size is no option but the processes the run trained in, which trained_batch divides its windows by)
        if k in DEFAULTS and v is not None and not inheritable(k, v) or k == "world_size" and not is_count(v):
            raise UserError(f"{path} records {k} {repr(v)[:40]}, which is not what train.py writes (a damaged or "
                            f"edited checkpoint): continue from another checkpoint")


def checkpoint_args(ckpt):
    """The options a checkpoint's run recorded ({} for none); AdamW for one from before --optimizer (its state's)."""
    return {} if ckpt is None else {"optimizer": "adamw", **(ckpt.get("args") or {})}


def model_preset(model, ckpt_args):
    """The run's preset: model (--model) as given, else the checkpoint's run's (ckpt_args), else tiny."""
    return model or ckpt_args.get("model") or "tiny"


def recorded_lr(ckpt_args):
    """The peak lr a checkpoint's run recorded, None where a fine-tune cannot take it (an edited 'abc', past MAX_LR)."""
    was = ckpt_args.get("lr")
    return was if trained_lr(was) and was <= MAX_LR else None  # (as an export carries it)


def unrecorded_fine_tune(ckpt):
    """Whether an older checkpoint, its run begun from another one, may be an unlabelled fine-tune's."""
    return "fine_tune" not in ckpt and "step" in ckpt and bool((ckpt.get("args") or {}).get("checkpoint"))


def fine_tune_lr(ckpt, model):
    """A fine-tune's default peak lr and its origin in words: a third of the checkpoint's recorded lr, else of its
    preset's default (model: --model or None); a fine-tune's as it is (a chain would fall to 1/9, 1/27)."""
    ckpt_args = checkpoint_args(ckpt)
    was = recorded_lr(ckpt_args)
    if was:
        if ckpt.get("fine_tune") is True:
            return was, "the fine-tuned checkpoint's, not divided again"
        return was / FINETUNE_LR_DIVISOR, f"1/{FINETUNE_LR_DIVISOR} of the checkpoint's {was:.2g}"
    model = model_preset(model, ckpt_args)
    preset = DEFAULT_LR.get(model, 1e-3)
    return preset / FINETUNE_LR_DIVISOR, f"1/{FINETUNE_LR_DIVISOR} of {model}'s default {preset:.2g}"


def resolve_args(args, ckpt, continuing, config):
    """Fill the options left None (the checkpoint's continuing its run, else the default): a new Namespace, checked.
    A run whose --time_budget ran out, given --epochs alone, goes on by epochs."""
    ckpt_args = checkpoint_args(ckpt)
    a = argparse.Namespace(**vars(args))
    by_epochs = continuing and ckpt.get("budget_done") is True and a.epochs is not None and a.time_budget is None
    if a.time_budget is not None and a.epochs is None and (not continuing or ckpt_args.get("time_budget") is None):
        a.epochs = UNLIMITED_EPOCHS  # a budget ends the run (continuing one that had none too: its epochs would cap it)
    old_lr, old_min_lr = ckpt_args.get("lr"), ckpt_args.get("min_lr")
    if continuing and a.lr is not None and a.min_lr is None and old_lr and old_min_lr is not None:
        a.min_lr = a.lr * old_min_lr / old_lr  # a new peak takes the end of the decay along, at the same ratio
    for k, v in DEFAULTS.items():
        if getattr(a, k) is None:
            inherited = ckpt_args.get(k) if continuing and not (k == "time_budget" and by_epochs) else None
            setattr(a, k, inherited if inherited is not None else v)
    a.model = model_preset(a.model, ckpt_args)
    if a.block_size is None:
        a.block_size = config.block_size
    if a.batch_size is None:
        a.batch_size = DEFAULT_BATCH_SIZE.get(a.model, 16)
    if a.lr is None:
        a.lr = DEFAULT_LR.get(a.model, 1e-3)
    if a.min_lr is None:
        # a budget ends at a known moment, so it can anneal close to zero (tiny, 10 minutes: 0.886 -> 0.844 bpb)
        a.min_lr = a.lr / (100 if a.time_budget is not None else 10)
    for k in ("lr", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2", "eval_interval", "save_interval",
              "log_interval", "time_budget"):
        if getattr(a, k) is not None and not math.isfinite(getattr(a, k)):  # nan passes every comparison below
            raise UserError(f"--{k} must be a finite number, got {getattr(a, k)}")
    if not -2**62 < a.seed < 2**62:  # epochs and ranks add to it: torch's generators take 64 bits
        raise UserError(f"--seed must be between -2**62 and 2**62, got {a.seed}")
    for k in ("epochs", "batch_size", "grad_accum", "block_size", "eval_batches"):
        if getattr(a, k) < 1:
            raise UserError(f"--{k} must be at least 1, got {getattr(a, k)}")
    for k in ("lr", "log_interval"):  # (lr first: a min_lr of lr / 10 is negative too, and no --min_lr was given)
        if getattr(a, k) <= 0:
            raise UserError(f"--{k} must be positive, got {getattr(a, k):g}")
    for k in ("min_lr", "weight_decay", "grad_clip", "eval_interval", "save_interval", "patience"):
        if getattr(a, k) < 0:
            raise UserError(f"--{k} must not be negative, got {getattr(a, k)}")
    for k in ("beta1", "beta2"):  # (AdamW's bias corrections divide by 1 - beta ** step: 0 at a beta of 1)
        if not 0 <= getattr(a, k) < 1:
            raise UserError(f"--{k} must be at least 0 and below 1 (0.9 to 0.999 are usual), got {getattr(a, k):g}")
    if a.lr > MAX_LR:  # (1e39 overflowed float32 in Muon's update: a traceback, not the 'loss became nan' line)
        raise UserError(f"--lr {a.lr:g} is far past any learning rate that trains (1e-4 to 0.05 are usual): give one "
                        f"of at most {MAX_LR:g}")
    if a.min_lr > a.lr:
        raise UserError(f"--min_lr {a.min_lr:g} is above --lr {a.lr:g}: the cosine decay would climb; give a min_lr "
                        f"below lr (default: lr/10)")
    if a.time_budget is not None and a.time_budget <= 0:
        raise UserError(f"--time_budget must be a positive number of minutes, got {budget_value(a.time_budget)}")
    if a.max_steps is not None and a.max_steps < 1:
        raise UserError(f"--max_steps must be at least 1, got {a.max_steps}")
    if a.time_budget is not None and isinstance(a.warmup, int):
        if args.warmup is not None:
            raise UserError(f"--warmup {a.warmup}: with --time_budget the warmup is a share of the budget, as in "
                            f"--warmup 5%")
        a.warmup = None  # a step count inherited from a run without a budget: the budget's default share
    elif continuing and args.reset_epoch and args.warmup is None and isinstance(a.warmup, int):
        # a step count inherited, of the schedule a --reset_epoch starts anew: the new one's default
        a.warmup = None
    if a.block_size > config.block_size:
        raise UserError(f"--block_size {a.block_size} is longer than the model's context ({config.block_size}); "
                        f"use --block_size {config.block_size} or less")
    return a


# -----------------------------------------------------------------------------
# data

def load_meta(data_dir, dataset, tokenizer=None, trained=None):
    """The dataset's meta.json, or a UserError naming prepare.py's fix. tokenizer: the model's, for the command that
    prepares missing data; trained: trained_data's, where no --data_dir was given."""
    tok = ["--tokenizer", tokenizer] if tokenizer and tokenizer != "gpt2" else []
    if not is_dataset_name(dataset):  # story/ would name the files models/story/.pt; data/story, a bad --name
        parent, name = os.path.split(os.path.normpath(dataset))
        hint = (f", as in --dataset {name}" + (f" --data_dir {parent}" if parent else "")
                if is_dataset_name(name) else "")
        if not (os.sep in dataset or "/" in dataset or dataset in (".", "..")):  # ("my notes" is no path)
            raise UserError(f"--dataset {dataset!r}: a dataset's name is letters, digits, '.', '-' and '_', as "
                            f"prepare.py's --name makes it")
        if os.path.isfile(dataset) and is_dataset_folder(parent):
            # data/story/train.bin, as nanoGPT's train.py reads a .bin: its folder is the dataset
            up, folder = os.path.split(os.path.normpath(parent))
            hint = f", as in --dataset {folder}" + (f" --data_dir {up}" if up else "")
            raise UserError(f"--dataset {dataset} is a file of the prepared dataset {parent}: give the dataset's name"
                            f"{hint if is_dataset_name(folder) else ''}")
        if os.path.isfile(dataset):
            # the user's own data (a chat .jsonl, as other trainers' --data_path takes it): prepare.py makes it first
            stem = os.path.splitext(name)[0]
            stem = stem if is_dataset_name(stem) else "NAME"
            made = new_command(os.path.join(data_dir, stem), *tok, source=dataset)
            raise UserError(f"--dataset {dataset} is your data, not a dataset prepare.py made: prepare it first, "
                            f"with `{made}`, then give --dataset {stem}")
        raise UserError(f"--dataset {dataset} is a path: it takes a dataset's name, a folder of --data_dir ({data_dir})"
                        f"{hint}")
    folder = os.path.join(data_dir, dataset)
    path = os.path.join(folder, "meta.json")
    built_in = dataset in DATASETS and dataset != "text" or dataset in NANOGPT_DATASETS  # text needs --source
    made = new_command(folder, *tok)  # (another name is made of the user's FILE: `--dataset mine` is no command)
    fix = f"{'run' if built_in else 'make it with'} `{made}`"
    if not os.path.exists(path):
        if lock_is_held(prepare_lock(data_dir, dataset)):  # its first build: the command named below would be refused
            raise UserError(f"{folder} is being built by a prepare.py (it has no meta.json yet): wait for that "
                            f"prepare.py to end, then run this again")
        refuse_dataset_folder(data_dir, "--data_dir")  # (the command above would build data/story/story)
        if trained and trained[1] and not os.path.exists(trained[1]):
            # data/ moved: say so, or give the command that makes it again with its options (--limit, --vocab_size...)
            again = f"run `{rebuild_command(trained[2], folder)}` to make it again" if trained[2] else \
                f"run `{made}` to make it again" if built_in else f"make it again with `{made}`"
            raise UserError(f"{trained[0]} was trained on {trained[1]}, which is gone (moved?): pass --data_dir the "
                            f"folder that holds {dataset}/ now, or {again}")
        if built_in:
            raise UserError(f"no prepared dataset {dataset!r} ({path} is missing): {fix} first")
        have = sorted(n for n in os.listdir(data_dir) if os.path.isfile(os.path.join(data_dir, n, "meta.json"))) \
            if os.path.isdir(data_dir) else []
        # where this run looks, in its vocabulary
        out = [] if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_OUT_DIR) else ["--out_dir", data_dir]
        named = common.script_command("prepare.py", "--dataset", "NAME", *out, *tok)
        raise UserError(f"no prepared dataset {dataset!r} ({path} is missing; {data_dir} has "
                        f"{', '.join(have) or 'none'}): prepare your own text under that name with `{made}`, or one "
                        f"of {', '.join(DATASETS[:-1])} with `{named}`")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}): {fix} again")
    what = unreadable_field(meta)  # (too damaged to say how it was made: the command that makes a dataset there)
    if what:
        raise not_readable(folder, what, fix)
    fix = f"run `{rebuild_command(meta, folder)}`"  # the command that made it: --name, --source and all
    what = damaged_field(folder, meta)  # (the ids of its vocabulary are checked once it is read: pick_tokenizer)
    if what:
        raise not_readable(folder, what, fix)
    names = ["train.bin", "val.bin"] + (["train_mask.bin", "val_mask.bin"] if meta.get("has_mask") else [])
    for name in names:
        if not os.path.isfile(os.path.join(folder, name)):
            raise UserError(f"{os.path.join(folder, name)} is missing: {fix} again")
    if not is_complete(folder, meta):  # a truncated .bin would train on part of the data and say nothing
        raise UserError(f"{folder}: the sizes of its .bin files are not what meta.json says (truncated or damaged "
                        f"files): {fix} again")
    meta["folder"] = folder
    return meta


def not_readable(folder, what, fix):
    """The error for a meta.json this code cannot read (what: why), fix: the command that makes it again."""
    return UserError(f"{os.path.join(folder, 'meta.json')} is not a dataset this code reads ({what}): {fix} again")


def split_tokens(meta, split):
    """The tokens meta.json counts in split ("train" or "val"), None where it says nothing."""
    return meta.get("splits", {}).get(split, {}).get("tokens")


class Windows:
    """One split as windows of T+1 tokens at stride T, read one at a time: window i is tokens [i*T, i*T + T + 1)."""

    @staticmethod
    def count(n_tokens, block_size):
        """How many windows n_tokens hold: the last one needs block_size + 1 tokens."""
        return max(0, (n_tokens - 1) // block_size)

    def __init__(self, meta, split, block_size, evaluating=False):
        """evaluating: for eval.py, which can read another split (an empty val's way out); else for training."""
        folder, T = meta["folder"], block_size
        path = os.path.join(folder, f"{split}.bin")
        self.dtype = np.dtype(meta["dtype"])
        # read with pread (read_items), not memmaps: every page a memmap read stays in RSS, and an epoch reads them all
        self.files = [open(path, "rb")]
        # sizes from the files open, not their paths: a prepare.py rebuilding the folder may rename new ones in
        n_tokens = os.fstat(self.files[0].fileno()).st_size // self.dtype.itemsize
        self.block_size = T
        self.n = self.count(n_tokens, T)
        if self.n == 0:
            raise split_too_short(meta, path, split, n_tokens, T, evaluating)
        expected = split_tokens(meta, split)  # (load_meta's size check saw the paths' files)
        if expected is not None and n_tokens != expected:
            raise UserError(f"{path} holds {n_tokens:,} tokens, not the {expected:,} its meta.json said a moment "
                            f"ago: a prepare.py rebuilt {folder} as this run started; run this again")
        self.meta, self.path = meta, path
        if meta.get("has_mask"):
            mask_path = os.path.join(folder, f"{split}_mask.bin")
            self.files.append(open(mask_path, "rb"))  # (n_tokens,) uint8, 1 where the loss counts
            n_mask = os.fstat(self.files[1].fileno()).st_size
            if n_mask != n_tokens:
                raise UserError(f"{mask_path} has {n_mask} entries for {n_tokens} tokens: "
                                f"run `{rebuild_command(meta, folder)}` again")

    @property
    def masked(self):
        """Whether the split has a loss mask (a chat set's): the loss counts only the targets under it."""
        return len(self.files) > 1

    def __len__(self):
        return self.n

    def read(self, start, n, mask=False):
        """Tokens [start, start + n) (mask: their loss mask), read from the file (read_items; see self.files)."""
        items = read_items(self.files[mask], start, n, np.uint8 if mask else self.dtype)
        if len(items) < n:  # never past the end of the file as opened: it was cut short since, in place
            raise UserError(f"{self.files[mask].name} became shorter during this run (written over in place?): run "
                            f"`{rebuild_command(self.meta, self.meta['folder'])}` again", every_rank=True)
        return items

    def get(self, idx):
        """Windows idx (n,) -> x, y (n, T) int64 and the loss mask of each target m (n, T) uint8 or None, numpy."""
        T = self.block_size
        starts = np.asarray(idx, dtype=np.int64) * T
        rows = self.in_vocabulary(np.stack([self.read(s, T + 1) for s in starts]).astype(np.int64))  # (n, T+1)
        # contiguous: views would have a row stride of T+1, padded batches T, and torch.compile recompiles on strides
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:]), self.target_mask(idx)

    def in_vocabulary(self, ids):
        """ids read from the file, checked: one past the vocabulary (a damage the size check misses) is an IndexError
        in the embedding or a silent loss. Said by every rank (UserError's every_rank): only the reader meets it."""
        if ids.size and ids.max() >= self.meta["vocab_size"]:
            raise UserError(f"{self.path} holds token id {ids.max()}, beyond its {self.meta['vocab_size']}-token "
                            f"vocabulary (a damaged file): run `{rebuild_command(self.meta, self.meta['folder'])}` "
                            f"again", every_rank=True)
        return ids

    def target_mask(self, idx):
        """Which targets of windows idx (n,) the loss counts: (n, T) uint8, 1 where it does; None without a mask."""
        if not self.masked:
            return None
        T = self.block_size
        rows = [self.read(s + 1, T, mask=True) for s in np.asarray(idx, dtype=np.int64) * T]
        return np.stack(rows) if rows else np.zeros((0, T), np.uint8)

    def count_targets(self, idx):
        """How many targets of windows idx the loss counts (target_mask's), read without their tokens."""
        m = self.target_mask(idx)
        return len(idx) * self.block_size if m is None else int(np.count_nonzero(m))

    def scored_text(self, idx, table):
        """(targets, bytes): count_targets(idx) and the UTF-8 bytes of their text (table: prepare.token_bytes(enc)),
        read a window at a time (a whole split's ids at once would be 8 bytes a token)."""
        T, targets, n_bytes = self.block_size, 0, 0
        for start in np.asarray(idx, dtype=np.int64) * T + 1:  # target t of window i is token i*T + t + 1
            ids = self.in_vocabulary(self.read(start, T))
            if self.masked:
                ids = ids[self.read(start, T, mask=True) != 0]
            targets += len(ids)
            n_bytes += int(table[ids].sum())
        return targets, n_bytes

    def micro_batches(self, idx, batch_size, pin=False, count=None):
        """Yield (x, y, m, idx) per chunk of idx: CPU tensors (batch_size, T) (m None without a mask) and its windows.
        A short chunk is padded with rows of target -1 (ignored), so shapes never change (no recompiles). count: that
        many micro-batches, those past idx all padding (a rank with fewer windows still joins every all-reduce)."""
        count = math.ceil(len(idx) / batch_size) if count is None else count
        for i in range(0, count * batch_size, batch_size):
            chunk = np.asarray(idx[i:i + batch_size], dtype=np.int64)
            if len(chunk):
                x, y, m = self.get(chunk)
            else:  # this rank is past the epoch's end: nothing but padding
                x = y = np.zeros((0, self.block_size), np.int64)
                m = self.target_mask(chunk)  # (0, T), or None
            pad = batch_size - len(chunk)
            if pad:
                x = np.pad(x, ((0, pad), (0, 0)))
                y = np.pad(y, ((0, pad), (0, 0)), constant_values=-1)  # all -1 (an all-padding batch): a loss of 0
                m = None if m is None else np.pad(m, ((0, pad), (0, 0)))
            tensors = [torch.from_numpy(x), torch.from_numpy(y), None if m is None else torch.from_numpy(m)]
            if pin:  # page-locked memory lets the host-to-GPU copy run asynchronously
                tensors = [None if t is None else t.pin_memory() for t in tensors]
            yield (*tensors, chunk)


def split_too_short(meta, path, split, n_tokens, block_size, evaluating):
    """The UserError for a split at path without one window of block_size + 1 tokens (evaluating: for eval.py, which
    can read another split)."""
    T = block_size
    if split == "val" and n_tokens == 0:  # prepared with --val_fraction 0 (one token: a val too short, said below)
        make = f"`{prepare_with(meta, val_fraction=DEFAULT_VAL_FRACTION)}`"
        return UserError(f"{path} has no tokens (--val_fraction 0?): evaluate the train split (--split train), or "
                         f"make a val split: run {make}" if evaluating else
                         f"{path} has no tokens (--val_fraction 0?), and training evaluates on the val split: "
                         f"run {make}")
    fix = "use a smaller --block_size or more data" if n_tokens > 1 else "prepare more data"  # (one token: no block)
    total = sum(split_tokens(meta, s) or 0 for s in ("train", "val"))
    if split == "val" and n_tokens > 1 and str(meta.get("val_split")).startswith("the last") and total:
        # a val cut from the text (a book's tail: more data is no way out): twice one window's share, if at most half
        share = math.ceil(200 * (T + 1) / total) / 100
        # (the --val_fraction it was made with, as prepare_with's command would pass it again)
        made_fraction = meta_options(meta, meta["folder"], odd={}).get("val_fraction", DEFAULT_VAL_FRACTION)
        if made_fraction < share <= 0.5:
            fix = f"use a smaller --block_size, or a larger val split: `{prepare_with(meta, val_fraction=share)}`"
        elif share <= made_fraction:
            # val's last documents are short: a share no larger than the one it has would remake the same val
            fix = f"use a smaller --block_size, or a larger --val_fraction than its {made_fraction:g} (its val " \
                  f"documents are short ones)"
    pack = meta.get("pack") or 0
    if pack and pack < n_tokens:  # (a window of pack fits in it: pack + 1 tokens)
        # a chat set packed in blocks shorter than the windows (gpt2 by name packs at 256): more data is no way out
        fix = f"use --block_size {pack}, the blocks it is packed in, or prepare it in blocks of {T}: " \
              f"`{prepare_with(meta, pack=T)}`"
    return UserError(f"{path} has {n_tokens:,} token{'s' * (n_tokens != 1)}, fewer than one window of --block_size "
                     f"{T:,} + 1: {fix}")


def output_paths(args, ckpt_args, continuing, given):
    """The run's files (out_pattern, its folder, best file, metrics, loss curve), checked before anything is built; a
    continued run without --output_checkpoint (given) gets its own file names, set in args."""
    dataset = args.dataset
    # a budgeted run may repeat many epochs, hence one file for it
    default_out = "{dataset}.pt" if args.time_budget else "{dataset}_epoch{epoch}.pt"
    if not given and continuing:
        # next to the checkpoint given: a copy resumed elsewhere writes there, not over the original run's later files
        args.output_checkpoint = os.path.join(os.path.dirname(args.checkpoint),
                                              os.path.basename(ckpt_args.get("output_checkpoint") or default_out))
    out_pattern = args.output_checkpoint or os.path.join("models", default_out)
    head, tail = os.path.split(out_pattern)
    # a folder (nanoGPT's --out_dir habit) is refused with a file name to give; one named as a file (taken.pt) is
    # check_output's "is a folder"
    if tail in ("", ".", "..") or os.path.isdir(out_pattern) and not tail.endswith(".pt"):
        raise UserError(f"--output_checkpoint {out_pattern} names a folder: give a file in it, as in "
                        f"{os.path.join(out_pattern, default_out)}")
    if "{epoch}" in head:
        raise UserError(f"--output_checkpoint {out_pattern}: {{epoch}} goes in the file's name, not in its folder")
    # (the path the user gave, not a continued checkpoint's folder; a lone brace, {dataset without its }, is a typo)
    rest = re.sub(r"\{(dataset|epoch)\}", "", out_pattern)
    unknown = sorted(set(re.findall(r"\{[^{}]*\}|[{}]", rest))) if given else []
    if unknown:  # a typo ({datset}) would become part of the file's name
        raise UserError(f"--output_checkpoint {out_pattern}: {', '.join(unknown)} is no placeholder; the file's name "
                        f"may hold {{dataset}} and {{epoch}}")
    # {dataset} in the folder: the best file and metrics go there too, not to a folder named "{dataset}"
    out_pattern = os.path.join(head.replace("{dataset}", dataset), tail)
    out_dir = os.path.dirname(out_pattern) or "."
    best_path = os.path.join(out_dir, f"{dataset}_best.pt")
    metrics_path = os.path.join(out_dir, f"{dataset}_metrics.jsonl")
    png_path = os.path.join(out_dir, f"{dataset}_loss.png")
    for shared in (best_path, metrics_path, png_path):  # each save would write over the best file (or the metrics)
        if os.path.normpath(out_pattern.replace("{dataset}", dataset)) == os.path.normpath(shared):
            raise UserError(f"--output_checkpoint {out_pattern} is the run's {os.path.basename(shared)}, which "
                            f"train.py writes itself: name the checkpoints otherwise, as in "
                            f"{os.path.join(out_dir, '{dataset}_epoch{epoch}.pt')}")
    return out_pattern, out_dir, best_path, metrics_path, png_path


def existing(path):
    """path if it exists, else None."""
    return path if os.path.exists(path) else None


def run_files(out_pattern, dataset):
    # the checkpoints out_pattern names, any epoch (digits only: story_epoch1_keep.pt is the user's copy), oldest first
    named = out_pattern.replace("{dataset}", dataset)
    own = re.compile(re.escape(os.path.basename(named)).replace(re.escape("{epoch}"), r"\d+"))
    found = glob.glob(glob.escape(named).replace("{epoch}", "[0-9]*"))
    return sorted((f for f in found if own.fullmatch(os.path.basename(f))), key=os.path.getmtime)


def elsewhere(out_pattern):
    """How to write the run to another folder (another file name in this one would share its best file and metrics)."""
    return f"write this one to another folder with --output_checkpoint DIR/{os.path.basename(out_pattern)}"


def earlier_run_files(out_pattern, dataset, best_path):
    """An earlier run's checkpoints a new one here would write over or mix with, oldest first: out_pattern's (any
    epoch), the other default naming's in its folder (sharing its best file), and that best file last."""
    folder = os.path.dirname(out_pattern)
    patterns = {os.path.normpath(p) for p in (out_pattern, os.path.join(folder, "{dataset}.pt"),
                                              os.path.join(folder, "{dataset}_epoch{epoch}.pt"))}
    found = sorted({f for p in patterns for f in run_files(p, dataset)}, key=os.path.getmtime)
    return found + ([best_path] if os.path.exists(best_path) else [])


def refuse_earlier_run(out_pattern, dataset, best_path, overwrite=False, reset=False, resume=False):
    """Refuses, unless overwrite, a new run writing over an earlier run's checkpoints (metrics alone are no run);
    returns the files it replaces. reset: a --reset_epoch, for which "continue it with --checkpoint" is a circle;
    resume: a --resume that found none of them to continue (restart_point), which --overwrite contradicts."""
    found = earlier_run_files(out_pattern, dataset, best_path)
    if found and not overwrite:
        what = f"{found[0]} and {len(found) - 1} more checkpoint(s) hold" if len(found) > 1 else f"{found[0]} holds"
        replace = f"or pass --overwrite{' instead of --resume' * resume} to replace them"
        if reset:
            raise UserError(f"{what} an earlier run, which --reset_epoch (epochs numbered from 1 again) would write "
                            f"over: {elsewhere(out_pattern)}, {replace}")
        own = found[:-1] if found[-1] == best_path else found
        # the newest of the run's own that is whole (the end of its zip there), else its best file
        whole = [f for f in found if zipfile.is_zipfile(f)]
        if not whole:  # (an empty file, one cut short): nothing to continue
            none = "none of them a readable checkpoint" if len(found) > 1 else "not a readable checkpoint"
            raise UserError(f"{what} an earlier run, {none} (cut short?): {elsewhere(out_pattern)}, {replace}")
        resume_at = ([f for f in whole if f in own] or whole)[-1]
        cut = f" (the newer {shlex.quote(own[-1])} is not a readable checkpoint)" if own and own[-1] != resume_at \
            else ""
        raise UserError(f"{what} an earlier run: continue it with --checkpoint {shlex.quote(resume_at)}{cut}, "
                        f"{elsewhere(out_pattern)}, {replace}")
    return found


def refuse_going_back(checkpoint, ckpt, out_pattern, dataset, best_path, overwrite=False):
    """Continuing from an earlier point of a run writes its own file names: refused unless overwrite where one holds a
    later point, or another run's (by run id), which it would replace; returns those files (read by mmap)."""
    done, later, ahead = int(ckpt.get("tokens", 0)), [], []  # ahead: (tokens, step, path) of the later points
    for path in run_files(out_pattern, dataset) + ([best_path] if os.path.exists(best_path) else []):
        if os.path.samefile(path, checkpoint):
            continue
        try:
            other = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # unreadable: nothing to keep
            if is_oom(e):  # (unchecked, another run's file would be written over)
                raise out_of_memory_loading(path) from None
            continue
        if not isinstance(other, dict):
            continue
        # another dataset's file (an --output_checkpoint without {dataset}) is another run's too; the checkpoint's own
        # entry counts as its dataset too (an old checkpoint's may be a path, as its run's files' are)
        foreign = other.get("dataset") not in (dataset, ckpt.get("dataset"))
        if foreign or ckpt.get("run") and other.get("run") and other["run"] != ckpt["run"]:
            if not overwrite:
                on = f" (of dataset {other.get('dataset')})" if foreign else ""
                raise UserError(f"{path} holds another run{on} than {checkpoint}, which continuing here would write "
                                f"over: {elsewhere(out_pattern)}, or pass --overwrite to replace it")
            later.append(path)
            continue
        if int(other.get("tokens", 0)) <= done or zip_damage(path):  # (damaged inside: nothing to keep, as above)
            continue
        # a checkpoint from before run ids cannot say whose it is: the refusal says so (known)
        ahead.append((int(other.get("tokens", 0)), other.get("step"), path, bool(ckpt.get("run") and other.get("run"))))
        later.append(path)
    if ahead and not overwrite:  # named: the newest point (continuing from an older one would be refused in turn)
        _, step, path, known = max(ahead, key=lambda a: a[0])
        at = f"step {step}, {checkpoint} is at step {ckpt.get('step')}"
        what = f"a later point of this run ({at})," if known else \
            f"a later point ({at}) of this run or another (checkpoints from before runs had ids do not say),"
        raise UserError(f"{path} holds {what} which continuing here would replace: continue from it with --checkpoint "
                        f"{shlex.quote(path)}{'' if known else ' if it is this run'}, {elsewhere(out_pattern)}, or "
                        f"pass --overwrite to replace it")
    return later


def packing_warning(meta, block_size, context):
    """Why block_size wastes the data's packing (meta["pack"]), or None; context: the model's, a cap on block_size."""
    pack = meta.get("pack") or 0
    if not pack:
        return None
    pieces = ((meta.get("splits") or {}).get("train") or {}).get("in_pieces") or 0
    if block_size % pack == 0:
        # a multiple keeps blocks whole, but a conversation longer than a block lies in pieces a window could join
        if block_size == pack or not pieces:
            return None
        return (f"{meta['folder']} is packed in blocks of {pack} tokens, but windows have {block_size}: its {pieces:,} "
                f"train conversations longer than {pack} tokens are cut in pieces that lie in blocks apart, where "
                f"windows of {block_size} could hold those up to {block_size} whole; prepare the data again for them: "
                f"`{prepare_with(meta, pack=block_size)}`")
    # a multiple is advised only where it draws no warning of its own (above): where no conversation is in pieces
    fit = f"use --block_size {pack}{'' if pieces else ' (or a multiple)'}, or " if pack <= context else ""
    return (f"{meta['folder']} is packed in blocks of {pack} tokens but windows have {block_size}: some conversations "
            f"will be cut between windows; {fit}prepare the data again for them: "
            f"`{prepare_with(meta, pack=block_size)}`")


def default_data_dir(ckpt, dataset=""):
    """Where a checkpoint's run found its data, if still there: --data_dir as given, else as it saw it; else data/."""
    return next((d for d in recorded_data_dirs(ckpt) if d and os.path.isdir(os.path.join(d, dataset))), "data")


def recorded_data_dirs(ckpt):
    """(given, seen): a checkpoint's --data_dir as given and as its run saw it, each None unless a non-empty str."""
    given = (ckpt.get("args") or {}).get("data_dir")
    seen = (ckpt.get("data") or {}).get("data_dir")
    return tuple(d if d and isinstance(d, str) else None for d in (given, seen))


def checkpoint_data(ckpt):
    """(dataset name, data folder) a checkpoint was trained on, or Nones; an old checkpoint's path (story/,
    /abs/data/story) stands for its last part in the folder before it."""
    name = ckpt.get("dataset")
    data_dir = default_data_dir(ckpt, name if name and is_dataset_name(name) else "")
    if name and not is_dataset_name(name):
        full = os.path.normpath(os.path.join(data_dir, name))
        name, data_dir = os.path.basename(full), os.path.dirname(full)
    return name, data_dir


def trained_data(path, ckpt):
    """load_meta's trained for the checkpoint at path: (path, the folder its run read the dataset from or None, how it
    was made (recorded_made_with; a vocabulary file gone since, as the checkpoint, which holds it))."""
    name = ckpt.get("dataset")
    given, seen = recorded_data_dirs(ckpt)
    where = seen or given
    folder = os.path.normpath(os.path.join(where, name)) if where and name and isinstance(name, str) else None
    made = recorded_made_with(ckpt)
    tokenizer = made and not made["options"].get("vocab_size") and made["options"].get("tokenizer", "gpt2")
    if tokenizer and tokenizer != "gpt2" and not os.path.exists(tokenizer):
        # the vocabulary file gone too (moved with data/): the checkpoint holds it; its pack given, as a checkpoint's
        # vocabulary packs at its context
        pack = DEFAULT_PACK if made["options"].get("pack") is None and (ckpt.get("data") or {}).get("kind") == "chat" \
            else made["options"].get("pack")
        made = dict(made, options=dict(made["options"], tokenizer=path, pack=pack))
    return path, folder, made


def made_with(meta):
    """What rebuild_command needs to make load_meta's dataset again (meta_options, paths absolute), kept in checkpoints:
    a run whose data is gone names the command with its --limit and vocabulary, not the dataset's default."""
    return {"dataset": meta.get("dataset"), "options": meta_options(meta, meta["folder"], odd={})}


def is_strings(value):
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)


def is_fraction(value):
    return type(value) in (int, float) and 0 <= value < 1


def is_weights(value):  # a --mix's, as parse_mix gives them
    return isinstance(value, dict) and len(value) > 0 and all(
        k in MIXABLE and type(v) in (int, float) and math.isfinite(v) and v > 0 for k, v in value.items())


# the kinds (is_kind) of the options a checkpoint records of its dataset (made_with); any may be missing (older data),
# read as prepare.py's default
MADE_WITH_KINDS = {"source": (is_strings, type(None)), "tokenizer": str, "vocab_size": (nonnegative_int, type(None)),
                   "limit": (nonnegative_int, type(None)), "val_fraction": is_fraction,
                   "pack": (nonnegative_int, type(None)), "mix": (is_weights, type(None)), "extra": bool,
                   "skip_bad_records": bool}


def recorded_made_with(ckpt):
    """The checkpoint's made_with, as rebuild_command reads a meta.json; None where absent (older, or data prepare.py
    did not make) or not what train.py writes (edited: a wrong command or a traceback)."""
    made = (ckpt.get("data") or {}).get("made_with")
    if not isinstance(made, dict) or not isinstance(made.get("options"), dict):
        return None
    dataset, options = made.get("dataset"), made["options"]
    # (the sets rebuild_command's line needs more of: a mix its weights, text its files)
    named = is_weights(options.get("mix")) if dataset == "mix" else \
        bool(options.get("source")) if dataset == "text" else dataset in DATASETS
    fits = named and all(is_kind(options[k], kind) for k, kind in MADE_WITH_KINDS.items() if k in options)
    return {"dataset": dataset, "options": options} if fits else None


# how an epoch's order is seeded, kept by a continued run for exact resume: 1 by seed + epoch (--seed 2's first epoch
# was --seed 1's second); 2 mixes the two (stream_seed)
ORDER_SCHEME = 2


def stream_seed(*parts):
    """One seed for a random stream named by parts (integers: the run's --seed, an epoch, a rank...), unrelated to the
    stream of any other parts: a sum of them is shared by neighbours (seed 1, epoch 1 = seed 2, epoch 0)."""
    return int(np.random.SeedSequence([x % 2**64 for x in parts]).generate_state(1, np.uint64)[0])


def epoch_order(n_windows, seed, epoch, scheme=ORDER_SCHEME):
    """The window order of an epoch: a permutation that depends only on (seed, epoch),
    so a resumed run re-derives it."""
    g = torch.Generator().manual_seed(stream_seed(seed, epoch) if scheme >= 2 else seed + epoch)
    return torch.randperm(n_windows, generator=g).numpy()


def prefetch(iterable, depth=2):
    """Iterate in a background thread, depth items ahead (the next batch read while the model works); errors raised."""
    q = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item):  # False once the consumer has stopped
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in iterable:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # a daemon thread still inside a torch call when the interpreter exits can abort the process
        thread.join(timeout=10)


class Batches:
    """Training steps of an epoch, each grad_accum micro-batches of batch_size windows per rank. Under torchrun a step
    takes the next batch_size*grad_accum*world windows of the order and rank r the r-th share: the steps of one process
    with a world times larger batch. Positions are global, so a checkpoint resumes on any number of ranks."""

    def __init__(self, windows, batch_size, grad_accum, seed, pin=False, rank=0, world=1, scheme=ORDER_SCHEME):
        self.windows, self.batch_size, self.seed, self.pin, self.rank = windows, batch_size, seed, pin, rank
        self.scheme = scheme  # epoch_order's
        self.rank_windows = batch_size * grad_accum   # per rank and step
        self.windows_per_step = self.rank_windows * world  # all ranks together
        # ceil: every window is seen; the last step of an epoch is short
        self.steps_per_epoch = math.ceil(len(windows) / self.windows_per_step)

    def steps_done(self, start):
        """Steps of an epoch counted done at window `start`, so that the rest ends it at its last step (a checkpoint of
        another global batch may stop mid-step: counted whole, every later step would be one late)."""
        return self.steps_per_epoch - math.ceil((len(self.windows) - start) / self.windows_per_step)

    def epoch(self, epoch, start=0):
        """Steps of `epoch` from window `start` of its order, each (micro, n, n_targets): this rank's (x, y, m, idx)
        micro-batches, and the step's windows and counted targets on all ranks (each rank reads the whole step's masks:
        no all-reduce). An epoch's last step may hold fewer micro-batches, as many on every rank."""
        order = epoch_order(len(self.windows), self.seed, epoch, self.scheme)[start:]
        R, B = self.rank_windows, self.batch_size

        def steps():
            for s in range(0, len(order), self.windows_per_step):
                step = order[s:s + self.windows_per_step]
                mine = step[self.rank * R:(self.rank + 1) * R]
                count = math.ceil(min(len(step), R) / B)  # rank 0's share is the largest
                micro = list(self.windows.micro_batches(mine, B, self.pin, count))
                yield micro, len(step), self.windows.count_targets(step)
        return prefetch(steps())


# -----------------------------------------------------------------------------
# optimization

def default_warmup(total_steps):
    """Warmup steps of a run: 2%, between 100 (10% of a run under 1000 steps) and 1000. AdamW's first steps are large
    until its moments settle: tiny's 797-step story epoch reached val 3.46 with 2%, 3.02 with 10% (BENCHMARKS.md)."""
    return max(1, min(1000, max(round(0.02 * total_steps), min(100, round(0.10 * total_steps)))))


def budget_and_warmup(args, total_steps):
    """The --time_budget in seconds (or None), the share of it that warms up, and --warmup in steps of total_steps."""
    budget = args.time_budget * 60 if args.time_budget else None  # seconds
    if budget:  # the share of it that warms up
        return budget, BUDGET_WARMUP if args.warmup is None else warmup_share(args.warmup), args.warmup
    return budget, None, warmup_steps(args.warmup, total_steps, args.lr)


def warmup_steps(warmup, total_steps, lr):
    """--warmup (steps, a share as "5%", or None for the default) in steps of a run of total_steps."""
    if warmup is None:
        warmup = default_warmup(total_steps)
    elif isinstance(warmup, str):
        warmup = max(1, round(warmup_share(warmup) * total_steps))
    if warmup > total_steps:
        warn(f"--warmup {warmup} is longer than the run's {total_steps} steps: the learning rate never reaches "
             f"--lr {lr:g}")
    return warmup


def lr_at(step, lr, min_lr, warmup, total_steps):
    """The lr of step `step` (0-based): linear warmup, then cosine to min_lr at total_steps; pure, for exact resume."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total_steps:
        return min_lr
    progress = (step - warmup) / max(1, total_steps - warmup)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def step_lr(args, p, total_steps, budget, budget_warmup, now, held_back):
    """The lr of the step about to be taken (p: where the run stands): by its step of total_steps, or on a --time_budget
    by the clock (now: seconds spent), warmup over budget_warmup of it then cosine, from the first step's end
    (Progress.schedule_origin) to the budget less held_back (kept for the final evaluation and saves)."""
    if not budget:
        return lr_at(p.step, args.lr, args.min_lr, args.warmup, total_steps)
    spent = 0.0
    if p.schedule_origin is not None:
        # (to the budget's end, a final evaluation of a quarter of it would stop the lr ~25% above --min_lr)
        spent = (now - p.schedule_origin) / max(budget - held_back - p.schedule_origin, 1e-9)
    # (past the decay's end: lr_at's --min_lr)
    return lr_at(int(spent * 10_000), args.lr, args.min_lr, round(budget_warmup * 10_000), 10_000)


def entered_slice(slices, kind, pct, frac):
    """Whether a budgeted run, frac of it spent, entered its next pct % slice since the last call for kind (slices:
    where each stood): a small dataset's epoch may take seconds, so logs, evals and saves follow the clock."""
    if not pct > 0:
        return False
    k = int(min(frac * 100 / pct, 2**62))  # (--log_interval 1e-310: an OverflowError)
    last = slices.setdefault(kind, k)  # the first call only sets where the run starts
    slices[kind] = k
    return k > last


def interval_steps(pct, steps_per_epoch):
    """Steps between a --*_interval's points (pct % of an epoch): at least 1; None for 0 (epoch ends only)."""
    return max(1, round(min(steps_per_epoch * pct / 100, 2**62))) if pct > 0 else None  # (1e308 %: no OverflowError)


def warn_intervals_past_an_epoch(args, steps_per_epoch):
    """Warns of an --*_interval over 100 (% of an epoch), whose points come at epoch ends alone: nanoGPT's intervals
    are steps (--eval_interval 250 by habit), so the line gives the % for that many steps."""
    for k, points in (("eval_interval", "evaluations"), ("log_interval", "log lines"), ("save_interval", "saves")):
        pct = getattr(args, k)
        if pct > 100:
            steps = f"; every {pct:g} steps is --{k} {pct * 100 / steps_per_epoch:.4g}" if pct < steps_per_epoch else ""
            warn(f"--{k} {pct:g} is {pct:g}% of an epoch, {pct / 100:g} epochs of {steps_per_epoch:,} steps: {points} "
                 f"come at epoch ends alone{steps}")


class RunClock:
    """A run's clock in seconds of its --time_budget spent (kept without one for the "ends in" lines), and the room kept
    for the final evaluation and saves. Decisions read only the clock the ranks agree after each step (agree)."""

    def __init__(self, budget, start, t_run, eval_steps):
        self.budget = budget  # seconds, or None
        self.start = start  # seconds of it spent before this run: a continued budgeted run goes on with its clock
        self.t_run = t_run  # time.time() when this run started
        self.eval_steps = eval_steps  # an evaluation's cost in training steps, until one is measured
        # the last two steps' seconds (not the first's: a cold compile): a budget's next step must fit
        self.step_times = []
        # seconds the final evaluation and saves will take: a budgeted run stops early enough to fit them
        self.reserve = 0.0
        self.held_back = 0.0  # (the reserve as the ranks agreed it: the lr schedule's end)
        self.agreed = start  # seconds of the budget spent, as all ranks agree after each step
        self.next = None  # when one more step and the final evaluation would end, as all ranks agree
        self.last_eval = None  # the agreed clock when the last evaluation began (see decisions)
        self.slices = {}  # a budgeted run's logs, evaluations and saves follow the clock instead (see entered_slice)

    def now(self):
        """Seconds of the budget spent now, by this rank's clock."""
        return self.start + time.time() - self.t_run

    def timed_step(self, seconds):
        """A step after the run's first took seconds (the first, a cold compile, is not kept)."""
        self.step_times = self.step_times[-1:] + [seconds]

    def agree(self, dist, save_s, interrupted):
        """After a step: the clock, reserve and next step's end as all ranks agree them (the slowest's), in one
        agreement that carries the last save's seconds (save_s) and Ctrl-C (interrupted) too: returns those, agreed."""
        now = self.now()
        if self.last_eval is None:
            # no evaluation measured yet: room for one all the same, and for its two saves (best file, checkpoint)
            self.reserve = self.eval_steps * min(self.step_times, default=0.0) + 2 * save_s
        # and for one more step (the faster of the last two: one stall does not end the run), or it would overrun
        self.agreed, reserved, self.next, save_s, interrupted = dist.agree(
            now, now + self.reserve, now + self.reserve + min(self.step_times, default=0.0), save_s, interrupted)
        self.held_back = reserved - self.agreed  # the reserve, as every rank agrees it
        return save_s, interrupted

    def start_schedule(self, p):
        """After a budgeted run's first step (a cold compile): a new budget's schedule starts here, a continued one's
        moves on by this step's time, so a recompile neither uses up the warmup nor skips part of the decay."""
        p.schedule_origin = self.agreed if p.schedule_origin is None else p.schedule_origin + self.agreed - self.start

    def evaluated(self, seconds, save_s):
        """After an evaluation of seconds (saves not counted): the final one's reserve, with two saves of save_s."""
        self.reserve = seconds + 2 * save_s
        self.last_eval = self.agreed

    def decisions(self, args, p, save_s, stopped, end_of_epoch):
        """What a --time_budget run does after a step, from the agreed clocks (save_s: the last save's seconds; stopped:
        why it stops so far, "done" to go on): returns (stopped, due_eval, due_save, due_log)."""
        if self.next >= self.budget:
            stopped = "time budget"
        frac = self.agreed / self.budget
        # at each --eval_interval slice, once EVAL_SPACING x the last one's cost (held_back) passed (else one a step)
        due_eval = entered_slice(self.slices, "eval", args.eval_interval, frac) and (
            self.last_eval is None or self.agreed >= self.last_eval + (1 + EVAL_SPACING) * self.held_back)
        if due_eval and stopped in ("done", "max_steps") and \
                self.next + (1 + EVAL_SPACING) * self.held_back >= self.budget:
            # under EVAL_SPACING x its cost before the final one, or with it past the budget, the final one takes its
            # place; at a --max_steps stop too (then evaluated as an unjudged pause, as the run in one go skips it)
            due_eval = False
        due_save = entered_slice(self.slices, "save", args.save_interval, frac)
        if due_save and stopped == "done" and p.epoch < args.epochs and self.next + save_s >= self.budget:
            # this save, a step and the final evaluation would pass the budget: the final save takes its place
            due_save = False
        # the end of the run, by the clock or by --epochs, is evaluated and saved
        last = stopped == "time budget" or (end_of_epoch and p.epoch >= args.epochs)
        due_log = entered_slice(self.slices, "log", args.log_interval, frac)
        return stopped, due_eval or last, due_save or last, due_log


class TrainTally:
    """The train loss and tokens/s since the last record. The loss is summed on the device per counted target, so a
    record is evaluate()'s mean per target (a chat step of 0 targets, counted as a step, would pull it towards 0)."""

    def __init__(self, device, since=None, main=True):
        """since: a checkpoint's loss_since_record to go on from; rank 0 (main) alone holds its sum."""
        self.loss, self.targets = torch.zeros((), device=device), 0
        # the sum and targets at the last line the clock adds between records (take_line): a line's are the record's
        # since then, so a step adds to one sum alone
        self.line_mark, self.line_targets = torch.zeros((), device=device), 0
        if since is not None:
            self.loss += since[0] if main else 0.0
            self.targets = since[1]
            self.line_mark.copy_(self.loss)  # (its first line: the steps of this run alone)
            self.line_targets = self.targets
        self.restart_timer()  # t_mark, tokens: for tokens/s
        self.train_s, self.train_tokens = 0.0, 0  # the timed intervals summed: the run's speed (train_tokens_per_s)

    def add(self, loss, n_targets, tokens):
        """A step's mean loss (a tensor on the device: no host sync) over its n_targets counted targets, and tokens."""
        self.loss += loss * n_targets
        self.targets += n_targets
        self.tokens += tokens

    def take(self, dist, timed):
        """At a record: (loss summed over all ranks, mean train loss or None, tokens/s); timed: counted in the speed."""
        if dist.world > 1:  # each rank holds its share of every step's loss
            torch.distributed.all_reduce(self.loss)
        loss_sum = self.loss.item()  # the loop's host sync (with take_line's, once a minute at most)
        train_loss = loss_sum / self.targets if self.targets else None
        interval = time.time() - self.t_mark
        tps = self.tokens / max(interval, 1e-9)
        if timed:
            self.train_s, self.train_tokens = self.train_s + interval, self.train_tokens + self.tokens
        self.loss.zero_()
        self.line_mark.zero_()
        self.targets = self.line_targets = 0
        return loss_sum, train_loss, tps

    def take_line(self, dist):
        """At a line the clock adds between records: (mean train loss since the last line or record, or None; tokens/s
        since the last record). The record's sum is left whole, so that records fall and average by steps alone."""
        line, targets = self.loss - self.line_mark, self.targets - self.line_targets  # (a new tensor: the sum stays)
        if dist.world > 1:
            torch.distributed.all_reduce(line)
        train_loss = line.item() / targets if targets else None
        self.line_mark.copy_(self.loss)
        self.line_targets = self.targets
        return train_loss, self.tokens / max(time.time() - self.t_mark, 1e-9)

    def restart_timer(self):
        """tokens/s counts from here (after a record, an evaluation or a save: see the loop)."""
        self.t_mark, self.tokens = time.time(), 0

    def train_tokens_per_s(self):
        """The run's training speed, for its summary: the timed intervals' tokens over their seconds (None: none)."""
        return self.train_tokens / self.train_s if self.train_s > 0 else None

    def loss_since_record(self):
        """[sum, targets] for a checkpoint: 0 but in a save on the way out of an error or Ctrl-C (else at a record)."""
        return [self.loss.item(), self.targets]


def checkpoint_bytes(model, optimizer):
    """The bytes a checkpoint writes: weights and optimizer state (before it exists, AdamW's two moments, the most)."""
    weights = tensor_bytes(model.state_dict())
    return weights + (tensor_bytes(optimizer.state_dict()) or 2 * weights)


def is_count(v):
    """Whether v, read from a checkpoint, is a positive int (not a bool, which is one to Python)."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def not_profiler_notice(record):
    """False for dynamo's notice of the profiler's record_function in DDP's forward: harmless, said by every rank."""
    return not record.getMessage().startswith("Profiler record function")


class Forward:
    """model(x, y, mask), through torch.compile when asked; if compiling fails, one warning and eager from then on."""

    def __init__(self, model, compile=False):
        self.model = self.fn = model
        if compile:
            # (a filter, not the logger's level: dynamo's other warnings there, of a context it cannot trace, stay)
            logging.getLogger(DYNAMO_CONTEXT_LOG).addFilter(not_profiler_notice)  # (added once however often)
            try:
                self.fn = torch.compile(model)
            except Exception as e:
                warn(f"torch.compile unavailable ({type(e).__name__}: {first_line(e)}); running eagerly")

    def __call__(self, *args):
        try:
            return self.fn(*args)  # compilation happens lazily, at the first call of each mode/shape
        except Exception as e:
            if not self.fall_back(e):
                raise
            return self.model(*args)

    def fall_back(self, e):
        """After e, raised by the compiled model: one warning and eager from then on, True; False if eager or OOM."""
        if self.fn is self.model or is_oom(e):
            return False
        warn(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); running eagerly")
        self.fn = self.model
        return True


def to_device(x, y, m, device, non_blocking=False):
    """A micro-batch's tensors x, y (B, T) int64 and m (B, T) uint8 or None, on device."""
    return (x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking),
            None if m is None else m.to(device, non_blocking=non_blocking))


def train_step(fwd, optimizer, scaler, micro, device, dtype, grad_clip, n_targets=None, world=1):
    """One optimizer step over micro-batches [(x, y, m, idx)], each (B, T). Its loss is the mean over every target it
    counts (n_targets, on all ranks): each micro-batch's mean is weighted by its share, so the gradient does not depend
    on how the step is cut into micro-batches and ranks. DDP averages the ranks' gradients: each loss is scaled by
    world, and only the last micro-batch all-reduces. Returns this rank's share of the loss, 0-d (no host sync)."""
    counted = [count_targets(y, m) for _, y, m, _ in micro]  # on the host: the batches are still CPU tensors
    n_targets = sum(counted) if n_targets is None else n_targets
    if n_targets == 0:  # chat windows without an assistant token (on every rank: n_targets is the step's): no step.
        # Their gradient is 0, but a step would still move every weight by about lr (momentum, weight decay, Muon)
        return torch.zeros((), device=device)
    model = getattr(fwd, "model", fwd)  # what a Forward runs (DDP's model under torchrun), or fwd, a bare model
    no_sync = getattr(model, "no_sync", None)  # a DDP model's: skip the all-reduce
    total = torch.zeros((), device=device)  # () this rank's share of the step's loss
    # asynchronous copies only to CUDA: to MPS one may read freed pageable memory (pytorch issues 139550, 189690)
    copy_async = device.type == "cuda"
    for i, (x, y, m, _) in enumerate(micro):
        x, y, m = to_device(x, y, m, device, non_blocking=copy_async)
        with no_sync() if no_sync and i < len(micro) - 1 else contextlib.nullcontext():
            with autocast(device, dtype):
                _, loss = fwd(x, y, m)  # () the mean over this micro-batch's counted targets
            loss = loss * (counted[i] / n_targets)
            try:
                scaler.scale(loss * world).backward()
            except Exception as e:
                # the compiled backward failed to build: the step again eagerly, in one process only (several ranks
                # have all-reduced their gradients already)
                if world > 1 or not getattr(fwd, "fall_back", lambda e: False)(e):
                    raise
                optimizer.zero_grad(set_to_none=True)
                return train_step(fwd, optimizer, scaler, micro, device, dtype, grad_clip, n_targets, world)
        total += loss.detach().float()
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    try:
        scaler.step(optimizer)
    except Exception as e:
        # (out of memory in Muon, say): some weights took the step and others not, so not saved (save_before_error)
        e.mid_update = True
        raise
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


def count_targets(y, m):
    """Targets of a micro-batch its loss counts, as GPT.forward weighs them: not -1 (padding), under the mask if any."""
    counted = y != -1
    return int((counted if m is None else counted & (m != 0)).sum())


def eval_indices(n_windows, n_max):
    """At most n_max window indices spread evenly over the split, the same ones at every evaluation."""
    if n_max >= n_windows:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, n_max).round().astype(np.int64))


@torch.no_grad()
def evaluate(model, windows, batch_size, eval_windows, device, dtype, fwd=None, dist=None, progress=None):
    """Mean loss per counted target over up to eval_windows windows spread over the split, each rank every world-th.
    fwd: the training Forward (compiled, or DDP's), else model; progress: a tqdm advanced per window (eval.py's)."""
    fwd = fwd or model
    was_training = model.training
    model.eval()
    world = dist.world if dist else 1
    idx = eval_indices(len(windows), eval_windows)
    if world > 1:
        idx = idx[dist.rank::world]
    # a split of fewer windows than a batch makes one batch of them, not one padded to a huge --batch_size
    batch_size = max(1, min(batch_size, len(idx)))
    loss_sum, count = torch.zeros((), device=device), 0  # () summed on the device: no host sync per batch
    for x, y, m, chunk in windows.micro_batches(idx, batch_size):  # (B, T) each
        if progress is not None:
            progress.update(len(chunk))
        n = count_targets(y, m)  # the model's loss is a mean over them: weigh it by their number (known on the host)
        if n == 0:
            continue
        x, y, m = to_device(x, y, m, device)
        with autocast(device, dtype):
            _, loss = fwd(x, y, m)  # () the mean over the batch's n counted targets
        loss_sum += loss.float() * n
        count += n
    model.train(was_training)
    if world > 1:
        sums = torch.stack([loss_sum, torch.tensor(float(count), device=device)])
        torch.distributed.all_reduce(sums)
        loss_sum, count = sums[0], int(sums[1].item())
    if count == 0:  # (train.py checks before training: check_eval_targets)
        raise no_eval_targets(windows, eval_windows)
    return loss_sum.item() / count


def no_eval_targets(windows, eval_windows):
    """The error for evaluated windows with no target the loss counts (short chat windows): not a loss of 0."""
    return UserError(f"the {len(eval_indices(len(windows), eval_windows))} window(s) of {windows.block_size} tokens "
                     f"evaluated in {windows.path} hold no assistant token, the only ones a chat set's loss counts: "
                     f"evaluate more windows (a larger --eval_batches) or longer ones (a larger --block_size)")


def check_eval_targets(windows, eval_windows):
    """no_eval_targets before a run trains, not at its first evaluation (reads the masks of those windows alone)."""
    if windows.masked and not windows.count_targets(eval_indices(len(windows), eval_windows)):
        raise no_eval_targets(windows, eval_windows)


def bpb_scale(windows, eval_windows, enc):
    """What turns a val loss over evaluate()'s windows into bits per UTF-8 byte, comparable across tokenizers:
    targets / (their own text's bytes * ln 2) (on chat data, the replies'), None where they hold no text."""
    targets, n_bytes = windows.scored_text(eval_indices(len(windows), eval_windows), token_bytes(enc))
    return targets / (n_bytes * math.log(2)) if n_bytes else None


def bits_per_byte(loss, scale):
    """A val loss (nats per target) in bits per byte of their text, scale bpb_scale's; None where it is None."""
    return None if scale is None else loss * scale


def rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():  # a Mac's GPU draws the dropout masks of a run on it from its own generator:
        state["mps"] = torch.mps.get_rng_state()  # without it a resumed --dropout run drew other masks, not exact
    return state


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if isinstance(state.get("mps"), torch.Tensor) and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


# -----------------------------------------------------------------------------
# output

COLORS = {"bold": "1", "dim": "2", "green": "32", "yellow": "33", "cyan": "36"}
use_color = False
quiet = False  # torchrun's ranks other than 0 print nothing


def paint(text, color):
    return f"\033[{COLORS[color]}m{text}\033[0m" if use_color else str(text)


def say(line=""):
    if quiet:
        return
    tqdm.write(line, file=sys.stdout)  # above any progress bar instead of through it
    sys.stdout.flush()


def warn(line):
    if quiet:
        return
    tqdm.write(paint("warning: ", "yellow") + line, file=sys.stderr)


def fmt_time(s):
    """A duration in seconds as train.py's lines say one: "3s", "1m30s", "1h05m"."""
    # under a second in tenths, not "0s" (as if none were spent or left); tenths that round to 1 are said as "1s"
    if 0 < s < 0.95:
        return f"{s:.1f}s" if s >= 0.05 else "<0.1s"
    # rounded, not cut: 5.9 s said as "5s" reads beside the tokens as a speed 18% off
    s = int(s + 0.5)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def budget_value(minutes):
    """A --time_budget as the option's value: minutes ("5", "1.5"), else seconds ("40s", "100s"), not "0.666667"."""
    # (near enough: 1.1 + 2.2 is no float's 3.3. 12 digits, not :g's 6: a value in a command reads back as meant)
    if (abs(minutes) >= 1 or minutes == 0) and abs(minutes - round(minutes, 2)) < 1e-9:
        return f"{round(minutes, 2):.12g}"
    return f"{minutes * 60:.12g}s"


def records_until(path, keep_until):
    """The metrics records a run continued from checkpoint keep_until keeps (not steps it will redo, nor another run's):
    by tokens where both have them, as a run continued with another global batch counts other steps."""
    by = "tokens" if keep_until.get("tokens") is not None else "step"
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:  # a damaged line is skipped, bytes or JSON
        for line in f:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                rec = json.loads(line)
                key = by if rec.get(by) is not None else "step"
                # not another run's records, in a folder this one was continued in with --overwrite
                if rec.get(key, 0) <= keep_until[key] and rec.get("run") in (None, keep_until.get("run")):
                    kept.append(rec)
    return kept


class Metrics:
    """metrics.jsonl (one JSON object per log/eval point) and, when matplotlib is importable, a loss-curve PNG."""

    def __init__(self, path, png_path, keep_until=None, write=True, hold=False):
        """keep_until: the checkpoint continued, its history kept; hold: leave --overwrite's files until release()."""
        self.path, self.png_path, self.records, self.write = path, png_path, [], write
        self.plotted = None  # (records, title) of the last curve drawn: the end of a run draws it again only if new
        self.held = hold and write
        if not write:  # another rank writes them
            return
        if keep_until is not None and os.path.exists(path):
            self.records = records_until(path, keep_until)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not self.held:
            self.release(force=True)

    def release(self, force=False):
        """Write the records so far over the file: at the start, or once held back, now."""
        if self.held or force:
            self.held = False
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, rec):
        self.records.append(rec)
        if not self.write or self.held:
            return
        # (a full disk's OSError names no file)
        with naming_full_disk(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def curves(self):
        """(x-axis label, [(x, train loss)], [(x, val loss)]): x is tokens (steps of another batch would bend it)."""
        x = "tokens" if all(r.get("tokens") is not None for r in self.records) else "step"
        train = [(r[x], r["train_loss"]) for r in self.records if r.get("train_loss") is not None]
        val = [(r[x], r["val_loss"]) for r in self.records if r.get("val_loss") is not None]
        return ("tokens trained" if x == "tokens" else "optimizer step"), train, val

    def plot(self, title):
        if not self.write or self.held:
            return
        try:
            from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
        except ImportError:
            return
        xlabel, train, val = self.curves()
        if (not train and not val) or self.plotted == (len(self.records), title):
            return
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for points, label in ((train, "train"), (val, "val")):
            if points:
                ax.plot(*zip(*points), label=label, marker="o" if label == "val" else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        tmp = tmp_name(self.png_path)
        try:
            with warnings.catch_warnings():
                # a title in a script the font lacks (中文笔记): a warning of each glyph, through the progress bar
                warnings.filterwarnings("ignore", message="Glyph .* missing from")
                fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            os.replace(tmp, self.png_path)
            self.plotted = (len(self.records), title)
        finally:
            remove_temporary(tmp)


def line_start():
    """What a line said on a signal starts with: on a terminal a newline, which ends the line the bar (or the ^C echoed)
    left; in a log, whose last line has ended, nothing (one there made a blank line)."""
    return "\n" if sys.stderr.isatty() else ""


class GracefulInterrupt:
    """First Ctrl-C (or SIGTERM, SIGHUP): finish the step, save, exit 130 (143, 129). A second quits at once (atomic
    saves keep the last checkpoint), but not under torchrun, which passes one to every rank, nor by SIGHUP
    (common.hung_up). Under torchrun SIGTERM, its stop when a rank fails, exits at once (stopped_by_sigterm). Outside
    the main thread Ctrl-C stays a plain KeyboardInterrupt."""

    def __init__(self):
        self.requested, self.signum, self.old = False, None, {}
        self.quit_by = signal.SIGINT  # the signal that quit without saving (a second SIGTERM: exit 143, as the first's)

    def handler(self, signum, frame):
        if signum == HANGUP:
            hung_up()  # (the output gone with the terminal silenced, the hang-up's repeats ignored)
            if self.requested:  # after Ctrl-C or SIGTERM: the save they asked for goes on
                return
        if self.requested:
            # under torchrun a second one is torchrun passing on a signal each rank had: quitting would leave no save
            if "LOCAL_RANK" in os.environ:
                return
            self.quit_by = signum
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if not quiet:  # under torchrun, which passes one Ctrl-C on to the ranks and kills them 30 s later
            def name(sig):
                return "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
            # what quits: Ctrl-C, or a second SIGTERM where Ctrl-C is ignored; "again" after the same one
            quits = signal.SIGINT if signal.SIGINT in self.old else signal.SIGTERM
            again = "" if "LOCAL_RANK" in os.environ else \
                f" ({name(quits)}{' again' if signum == quits else ''} quits without saving)"
            tqdm.write(f"{line_start()}{name(signum)}: saving after this step{again}", file=sys.stderr)

    def __enter__(self):
        # Ctrl-C ignored (`python train.py &`) stays so, SIGTERM still saving; SIGHUP ignored (nohup) too (stop_signals)
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        handlers = {sig: self.handler for sig in stop_signals()}
        if not ignored:
            handlers[signal.SIGINT] = self.handler
        if "LOCAL_RANK" in os.environ:
            handlers[signal.SIGTERM] = self.stopped_by_sigterm
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            for sig, handler in handlers.items():
                self.old[sig] = signal.signal(sig, handler)
        return self

    @staticmethod
    def stopped_by_sigterm(signum, frame):
        """Under torchrun, in training: SIGTERM ends this rank at once, saying so, for one sent to it alone (`kill`, a
        scheduler), which rank 0's "lost contact ... see its lines" points to (outside the loop, torchrun's to all)."""
        with contextlib.suppress(Exception):  # (a signal amid another write to stderr: ending matters more)
            print(f"rank {os.environ.get('RANK', '?')}: stopped by SIGTERM, without saving (torchrun sends it to every "
                  f"rank when one ends; to stop a run with a save, send torchrun SIGINT, e.g. scancel --signal=INT)",
                  file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)  # through the clean-up: a checkpoint being written removes its temporary file

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)

    def exit_saved(self, dist, step, path, steps_left):
        """Ends the run interrupted and saved at path: says how to continue, and exits 130 (SIGTERM 143, SIGHUP 129)."""
        command = dist.continue_command(path, steps_left)
        say(paint(f"interrupted at step {step:,}: saved {path}; continue with `{command}`", "yellow"))
        # the others end once rank 0 has saved: torchrun stops every rank when one ends, rank 0 mid-save too
        dist.agree(0)
        # the line above says it all: a KeyboardInterrupt would add run_main's bare "interrupted"
        raise SystemExit(128 + self.signum)


class EpochBar(tqdm):
    """An epoch's progress bar that says what ends next and when (ends: Run.run_ends at the bar's rate): tqdm's own
    would be the epoch's, where a --time_budget or --max_steps run may end mid-epoch."""

    def __init__(self, *args, ends, **kwargs):
        self.ends = ends  # (before tqdm's __init__, which draws the bar)
        super().__init__(*args, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {ends}, {rate_fmt}{postfix}]",
                         **kwargs)

    @property
    def format_dict(self):
        d = super().format_dict  # (drawn once more as it closes, disabled then)
        rate = d["rate"]  # steps/s (smoothed), None until a step is timed, and at close: the mean rate, as tqdm says
        if rate is None and d["elapsed"] and d["n"] > d["initial"]:
            rate = (d["n"] - d["initial"]) / d["elapsed"]
        end = self.ends(1 / rate if rate else None, d["total"] - d["n"])
        d["ends"] = f"{end[1]} ends in {fmt_time(end[0])}" if end else "ends in ?"
        return d


def is_interactive():
    return sys.stdin.isatty() and "LOCAL_RANK" not in os.environ  # never prompt from torchrun's ranks


# -----------------------------------------------------------------------------
# several processes: torchrun and DistributedDataParallel

@dataclasses.dataclass
class Dist:
    """This process's place among torchrun's ranks (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    control: object = None  # process group for host-side agreement (clock, Ctrl-C): gloo, whatever the backend

    @property
    def main(self):  # the rank that logs, shows progress and writes files
        return self.rank == 0

    def continue_command(self, path, steps_left):
        """How to continue the run saved at path, as this one started (steps_left: of --max_steps, not inherited)."""
        if self.world == 1:
            command = common.script_command("train.py")
        else:
            nproc = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            # one machine: --standalone (else port 29500, which another run may hold); several: their own rendezvous
            alone = " --standalone" if nproc == self.world else ""
            script = shlex.quote(common.script_path("train.py"))
            command = f"{common.torchrun_command()}{alone} --nproc_per_node={nproc} {script}"
        more = f" --max_steps {steps_left}" if steps_left else ""
        return f"{command} --checkpoint {shlex.quote(path)}{more}"

    def agree(self, *values):
        """The largest of each value over all ranks (floats; True > False), for decisions every rank takes alike."""
        if self.world == 1:
            return values
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.control)
        return tuple(t.tolist())


def hash48(x):
    """48 bits of x's JSON's hash, an int exact in the float64 Dist.agree takes: ranks compare values through it."""
    return int(hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:12], 16)


def ranks_differ(dist, *values):
    """For each hash48 value, whether the ranks hold different ones (its max and -min, in one Dist.agree)."""
    most = dist.agree(*values, *(-v for v in values))
    return [most[i] != -most[i + len(values)] for i in range(len(values))]


def check_same_files(dist, meta, ckpt, checkpoint):
    """Under torchrun, refuses ranks whose copies of the data or checkpoint differ (copied by hand to each machine)."""
    if dist.world == 1:
        return
    mine = (hash48({k: meta.get(k) for k in ("splits", "tokenizer_hash", "vocab_size", "dtype", "has_mask")}),
            hash48(None if ckpt is None else [ckpt.get(k) for k in ("run", "step", "tokens")]))
    places = (("data", meta["folder"]), ("checkpoint", checkpoint))
    for (what, path), differs in zip(places, ranks_differ(dist, *mine)):
        if differs:
            raise UserError(f"the ranks read different copies of the {what} ({path}): every machine needs the same; "
                            f"copy it to each again from the first machine, or put it on a shared file system")


def elastic_job():
    """This torchrun job's name in rank 0's checkpoints, the same in each attempt and no other job: its rendezvous id
    and log folder (TORCHELASTIC_ERROR_FILE's <folder>/attempt_<N>/<local rank>/error.json); else None."""
    run_id, error_file = os.environ.get("TORCHELASTIC_RUN_ID"), os.environ.get("TORCHELASTIC_ERROR_FILE", "")
    attempt = os.path.dirname(os.path.dirname(error_file))
    if not run_id or not os.path.basename(attempt).startswith("attempt_"):
        return None
    return f"{run_id} {socket.gethostname()}:{os.path.dirname(attempt)}"


def restart_point(run, given):
    """The newest checkpoint to continue from, as (path, step, max_steps left or None, ended, the newer files passed
    over as damaged), or None: with --resume, the run's newest (of its dataset, with training state); in a torchrun
    restart, which runs the failed attempt's command whose files refuse_earlier_run would refuse, this job's. Rank 0
    decides. given: the options as given, which --resume's newest checkpoint must agree with (another_run)."""
    resume = run.args.resume  # (the same on every rank, as TORCHELASTIC_RUN_ID: all enter the broadcast, or none)
    if not resume and "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    found, job, refused = None, elastic_job(), None
    if run.dist.main and (resume or job):
        args = argparse.Namespace(**vars(run.args))  # (output_paths sets a continued run's own file names in it)
        try:
            out_pattern, _, best_path, _, _ = output_paths(args, run.ckpt_args, run.continuing,
                                                           args.output_checkpoint is not None)
        except UserError:  # claim_outputs says it
            out_pattern = None
        points, damaged = [], []
        for path in earlier_run_files(out_pattern, args.dataset, best_path) if out_pattern else []:
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # cut short, or no checkpoint: none to continue
                if is_oom(e):  # a sound file (passed over, the run would go back to an older one): refused after
                    refused = str(out_of_memory_loading(path))  # the broadcast, which every rank enters
                    break
                damaged.append(path)
                continue
            # (a file edited to other entries, which load_checkpoint's kinds would see too late: none of the run's; and
            # checkpoint_data reads its dataset, args and data)
            if not isinstance(ckpt, dict) or "tokens" not in ckpt or \
                    not all(is_kind(ckpt[k], kind) for k, kind in STATE_KINDS.items() if k in ckpt):
                continue
            mark = ckpt.get("elastic")
            if job and isinstance(mark, dict) and mark.get("job") == job and \
                    is_kind(mark.get("max_steps_left"), (nonnegative_int, type(None))):
                # this job's, with --resume too (a restart is the job's attempt, not a start of its own): what is
                # left of its --max_steps; ended: the run ended for good (its attempt failed after the last save):
                # said so, as refused as done each restart in turn would fail
                left, epoch = mark["max_steps_left"], ckpt.get("epoch")
                ended = left == 0 or ckpt.get("budget_done") is True or ckpt.get("stopped_early") is True or \
                    is_kind(epoch, nonnegative_int) and epoch >= run.args.epochs
            elif resume and "step" in ckpt and checkpoint_data(ckpt)[0] == args.dataset and \
                    (not run.continuing or ckpt["tokens"] > int(run.ckpt.get("tokens", 0))):
                # another dataset's (an --output_checkpoint without {dataset}) is refused as another run's, and a run
                # continued goes on from its checkpoint or a later point, never back to an earlier one; each start
                # counts its own --max_steps; whether it ended, continuing it says
                left, ended = None, False
            else:
                continue
            # (the best file, at the same point, after)
            points.append((ckpt["tokens"], path != best_path, path, ckpt.get("step"), left, ended,
                           resume and another_run(given, ckpt)))
        newest = None
        for point in sorted(points, reverse=True):  # newest first
            if not zip_damage(point[2]):  # (its checksums, which torch.load does not check): whole
                newest = point
                break
            damaged.append(point[2])
        found, other = (newest[2:6], newest[6]) if newest else (None, None)
        if found:  # the damaged files written after it: its step is not the run's last (the line that continues says)
            found = (*found, [f for f in damaged if os.path.getmtime(f) > os.path.getmtime(found[0])])
        if other:  # written over by this command's run, continued as if its own
            refused = f"--resume: the newest checkpoint here, {found[0]}, is another run's ({', '.join(other)}): " \
                      f"{elsewhere(out_pattern)}, or pass --overwrite instead of --resume to replace that run"
    if run.dist.world > 1:
        box = [found, refused]
        torch.distributed.broadcast_object_list(box, src=0, group=run.dist.control)
        found, refused = box
    if refused:
        raise UserError(refused)
    return found


def another_run(given, ckpt):
    """Where ckpt's run differs from the options given (a --seed, the model's shape), in words, or []: --resume runs the
    same command again, so its newest checkpoint of other options is an earlier run in the folder, not its own."""
    if not isinstance(ckpt.get("config"), dict):  # (damage, which loading it says)
        return []
    was = checkpoint_args(ckpt).get("seed")
    seed = [f"--seed {given.seed} (vs {was})"] if given.seed is not None and was is not None and given.seed != was \
        else []
    return seed + shape_clash(given, ckpt["config"])


# options a machine under torchrun may give otherwise: where its copies of the files are (check_same_files compares
# them), rank 0's outputs, how its ranks wait, show lines, spend memory and compile (the same steps either way)
PER_MACHINE_OPTIONS = {"data_dir", "checkpoint", "init_from", "tokenizer", "output_checkpoint", "overwrite", "device",
                       "dist_timeout", "no_color", "compile", "recompute_activations"}


def check_same_options(dist, args):
    """Under torchrun, refuses machines given different options (a --batch_size typed otherwise), naming them."""
    if dist.world == 1:
        return
    names = sorted(k for k in vars(args) if k not in PER_MACHINE_OPTIONS)
    mine = [hash48(getattr(args, k)) for k in names]
    differ = [f"--{k}" for k, differs in zip(names, ranks_differ(dist, *mine)) if differs]
    if differ:
        raise UserError(f"the machines were given different train.py options ({', '.join(differ)}): give each the same "
                        f"command, but for the paths of its files")


def is_peer_failure(e):
    """An error raised inside a collective because another rank went away, not a fault of this rank's own."""
    dist_error = getattr(torch.distributed, "DistError", ())
    return isinstance(e, dist_error) or (isinstance(e, RuntimeError) and ("gloo" in str(e) or "NCCL" in str(e)))


def timeout_error(e, when, minutes, slow, last=""):
    """The UserError, said by every rank, for e, a collective's failure when ("at step 12"), if --dist_timeout ran out
    (a rank hung, not gone); None otherwise. slow: what a healthy rank may have been doing; last: said at the end."""
    if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
        return None
    return UserError(f"no word from another rank in {minutes:g} minute(s) {when} (--dist_timeout): one is stuck (see "
                     f"its lines, on its machine), or {slow} took longer, which a larger --dist_timeout allows{last}",
                     every_rank=True)


def init_distributed(device_name, timeout_min=DIST_TIMEOUT_MIN):
    """(Dist, device): under torchrun the process group joined (NCCL on CUDA, gloo on CPU), a collective waiting
    timeout_min minutes at most; else just the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), pick_device(device_name)
    import torch.distributed as td
    local = int(os.environ["LOCAL_RANK"])
    kind = torch.device(device_name).type if device_name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise UserError(f"--device {device_name} under torchrun: this machine has no CUDA GPU; use --device cpu")
        if device_name not in ("auto", "cuda"):
            raise UserError(f"--device {device_name} under torchrun: each process takes the GPU of its local rank; "
                            f"give --device cuda (CUDA_VISIBLE_DEVICES picks which GPUs)")
        if local >= n:
            raise UserError(f"local rank {local} has no GPU: this machine has {n}; use --nproc_per_node {n} or fewer",
                            every_rank=True)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif kind == "cpu":
        device = torch.device("cpu")
    else:
        raise UserError(f"--device {device_name} under torchrun: use cuda (NCCL) or cpu (gloo)")
    # joining waits in C++, deaf to Python handlers (Ctrl-C unheard until torchrun kills it 30 s on): nothing is
    # written yet, so the system's default ends it at once
    handlers = {}
    with contextlib.suppress(ValueError):  # (not the main thread)
        for sig in (signal.SIGINT, *stop_signals()):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                handlers[sig] = signal.signal(sig, signal.SIG_DFL)
    try:
        timeout = datetime.timedelta(minutes=timeout_min)
        td.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timeout)
        # the clock and Ctrl-C are agreed on with host tensors: NCCL takes only device tensors,
        # so a gloo group beside it
        control = td.new_group(backend="gloo", timeout=timeout) if kind == "cuda" else None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    # torchrun's SIGTERM when a rank fails: exit through Python, so a checkpoint being written removes its temporary
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return Dist(rank=td.get_rank(), world=td.get_world_size(), control=control), device


# -----------------------------------------------------------------------------
# setup

def prepare_with(meta, name=None, **changes):
    """The prepare.py command that builds meta's dataset again with changes; name: a new folder beside it instead."""
    # every option the dataset was made with (a meta.json from before "options" says them otherwise)
    options = meta_options(meta, meta["folder"], odd={})
    folder = os.path.join(os.path.dirname(meta["folder"]), name) if name else meta["folder"]
    return rebuild_command(dict(meta, options=dict(options, **changes)), folder)


def pick_tokenizer(args, meta, ckpt):
    """The tokenizer (the checkpoint's, --tokenizer or meta.json's), any mismatch with the data's a UserError."""
    enc = hashed_as_data(args, meta, ckpt)
    # the hash is the data's, but meta.json's vocab_size (embedding rows, the ids Windows lets through) must fit it
    what = damaged_field(meta["folder"], meta, enc)
    if what:
        raise not_readable(meta["folder"], what, f"run `{rebuild_command(meta, meta['folder'])}`")
    return enc


def hashed_as_data(args, meta, ckpt):
    """pick_tokenizer's tokenizer, whose hash is the data's (meta.json's tokenizer_hash)."""
    want = meta.get("tokenizer_hash")
    data_vocabulary = vocabulary_name(meta.get("tokenizer_name", meta.get("tokenizer")), want)

    def with_tokenizer(name, vocab, context=None):  # name: gpt2, a .tiktoken file or a checkpoint; vocab: its hash.
        # A folder of its own, named with the hash (made again in place, the dataset its models trained on is gone)
        stem = os.path.splitext(os.path.basename(os.path.normpath(name)))[0]
        tag = "gpt2" if name == "gpt2" else re.sub(r"[^\w.-]", "-",
                                                   stem + (f"-{vocab[:8]}" if isinstance(vocab, str) else ""))
        new = f"{os.path.basename(meta['folder'])}-{tag}"
        # gpt2 by name packs a chat set at DEFAULT_PACK, a checkpoint at its context: a model of another one, --pack
        pack = {"pack": context} \
            if name == "gpt2" and meta.get("kind") == "chat" and context not in (None, DEFAULT_PACK) else {}
        command = prepare_with(meta, new, vocab_size=None, tokenizer=name if name == "gpt2" else os.path.abspath(name),
                               **pack)
        return f"`{command}`, then --dataset {new}"
    if ckpt is not None:
        have = ckpt["tokenizer"].get("hash")
        if have != want:
            own = ckpt["tokenizer"].get("bpe") is not None
            fix = with_tokenizer(args.checkpoint if own else "gpt2", have, ckpt["config"].get("block_size"))
            raise UserError(f"{args.checkpoint} uses tokenizer {vocabulary_name(ckpt['tokenizer']['name'], have)} but "
                            f"{meta['folder']} was prepared with {data_vocabulary}: prepare the data with the "
                            f"checkpoint's tokenizer in a folder of its own "
                            f"({fix})"
                            f" or train a new model")
    if args.tokenizer:
        enc = get_tokenizer(args.tokenizer)
        if tokenizer_hash(enc) != want:
            named = "" if args.tokenizer == enc.name else f" ({enc.name})"  # (a file's vocabulary, not gpt2)
            raise UserError(f"--tokenizer {args.tokenizer}{named} is not the tokenizer {meta['folder']} "
                            f"was prepared with ({data_vocabulary}): drop --tokenizer, or prepare the data with it in "
                            f"a folder of its own: "
                            f"{with_tokenizer(args.tokenizer, tokenizer_hash(enc))}")
        if ckpt is None:
            return enc
    if ckpt is not None:
        return tokenizer_from_state(ckpt["tokenizer"])
    name = meta.get("tokenizer", "gpt2")
    if name != "gpt2" and not os.path.exists(name):
        # meta.json's absolute path, moved with the project or data/: found by its hash in the folder or beside it
        name = moved_vocabulary(name, meta["folder"], want) or name
    if name != "gpt2" and not os.path.exists(name):
        raise UserError(f"{meta['folder']} was prepared with tokenizer {gone_vocabulary(name, meta)}")
    enc = get_tokenizer(name)
    if tokenizer_hash(enc) != want:
        # (its own vocabulary, --vocab_size, is trained again by the command; another file is said cut short there too)
        short = fewer_ids(enc, meta.get("vocab_size"))
        back = "put the whole file back, or " if short else ""
        raise UserError(f"tokenizer {name} changed since {meta['folder']} was prepared ({short + '; ' if short else ''}"
                        f"now {enc.name}, the data's {data_vocabulary}): {back}run "
                        f"`{rebuild_command(meta, meta['folder'])}` again")
    return enc


def default_preset(device):
    """A new model's preset without --model: tiny on CPU or MPS (a demo goes furthest: BENCHMARKS.md), small on CUDA."""
    return "small" if device.type == "cuda" else "tiny"


def width_fix(args):
    """For a new model's --n_embd its heads do not divide (in pairs for RoPE): the width to give instead."""
    shape = {**PRESETS[args.model], **{k: getattr(args, k) for k in ("n_embd", "n_head", "variant")
                                      if getattr(args, k) is not None}}
    pairs = shape.get("variant", "gpt2") == "modern"
    step = shape["n_head"] * (2 if pairs else 1)
    if shape["n_embd"] % step == 0:
        return ""
    why = "2 x --n_head: the modern variant's RoPE needs an even width per head" if pairs else "--n_head"
    return f"; use --n_embd {-(-shape['n_embd'] // step) * step} (a multiple of {why}) or another --n_head"


def shape_clash(args, cfg):
    """The model options given in args (--model's preset, MODEL_SHAPE) that a checkpoint's config cfg does not have, in
    words ("--n_layer 3 (vs 2)"): [] where they agree."""
    cfg = dict(cfg)
    asked = {k: v for k, v in PRESETS[args.model].items() if k != "block_size"} if args.model else {}
    asked.update({k: getattr(args, k) for k in MODEL_SHAPE if getattr(args, k) is not None})
    clash = {k: v for k, v in asked.items() if cfg.get(k) != v}
    # the preset's sizes under one --model, each option of its own with its value
    preset = ", ".join(f"{k} {v} vs {cfg.get(k)}" for k, v in clash.items() if getattr(args, k) is None)
    return [f"--model {args.model} ({preset})"] * bool(preset) + [
        f"--{'no_' * (v is False)}{k} (vs {'on' if cfg.get(k) else 'off'})" if isinstance(v, bool) else
        f"--{k} {v} (vs {cfg.get(k)})" for k, v in clash.items() if getattr(args, k) is not None]


def model_config(args, meta, ckpt):
    """A new model's config from the preset and overrides, or the checkpoint's, refusing shape changes to it."""
    for k in ("n_layer", "n_head", "n_embd", "block_size"):  # said as resolve_args says --epochs', not as the config's
        if getattr(args, k) is not None and getattr(args, k) < 1:  # "bad model options: ... must be a positive int"
            raise UserError(f"--{k} must be at least 1, got {getattr(args, k)}")
    try:
        if ckpt is None:
            return make_config(args.model, vocab_size=int(meta["vocab_size"]), block_size=args.block_size,
                               n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout,
                               variant=args.variant, bias=args.bias)
        said = shape_clash(args, ckpt["config"])
        if said:
            raise UserError(f"{args.checkpoint} fixes the model's shape; {', '.join(said)} would change it: "
                            f"leave the model options out when continuing from a checkpoint")
        config = checkpoint_config(ckpt, args.checkpoint)  # damage to it is no "bad model options" the user gave
        if args.dropout is not None:  # dropout has no weights: free to change
            config = dataclasses.replace(config, dropout=args.dropout)
    except (ValueError, TypeError) as e:
        raise UserError(f"bad model options: {e}{width_fix(args) if ckpt is None else ''}")
    if config.vocab_size < int(meta["vocab_size"]):
        raise UserError(f"the model has {config.vocab_size} token ids but the data uses {meta['vocab_size']}")
    return config


@dataclasses.dataclass
class Progress:
    """Where training stands; all of it goes into checkpoints."""
    epoch: int = 0              # completed epochs
    epoch_windows: int = 0      # windows done in the current epoch
    step: int = 0               # global optimizer steps: drive the lr schedule (a --time_budget's: the clock)
    tokens: int = 0             # training tokens seen, all runs together
    best_val_loss: float = None
    best_at: list = None        # [step, epoch] of the best val loss (None: not known, a checkpoint from before it)
    evals_since_best: int = 0
    elapsed: float = 0.0        # seconds of training, all runs together
    budget_elapsed: float = 0.0  # seconds of the current --time_budget spent (--reset_epoch starts a new one)
    # the budget's seconds at its first step's end, where its lr schedule starts (a cold compile spends no warmup)
    schedule_origin: float = None

    def epoch_at(self, windows_per_epoch):
        """Where the run is in epochs, as its log and metrics give it (windows_per_epoch: the train split's windows)."""
        return round(self.epoch + self.epoch_windows / windows_per_epoch, 4)

    def judge(self, val_loss, epoch, no_bar=False, pause=False):
        """Counts val_loss, at epoch, towards the best and --patience; returns (better: it beats the best, or no_bar;
        improved: it became the best, never at a --max_steps pause, which is not judged)."""
        better = self.best_val_loss is None or no_bar or val_loss < self.best_val_loss
        improved = better and not pause
        if improved:
            self.best_val_loss, self.best_at, self.evals_since_best = val_loss, [self.step, epoch], 0
        elif not pause:
            self.evals_since_best += 1
        return better, improved


def checkpoint_progress(ckpt, ckpt_args):
    """Where the checkpoint's run stands, as it recorded it (older checkpoints: what they hold)."""
    p = Progress(epoch=int(ckpt.get("epoch", 0)), epoch_windows=int(ckpt.get("epoch_windows", 0)),
                 step=int(ckpt["step"]), tokens=int(ckpt.get("tokens", 0)), best_val_loss=ckpt.get("best_val_loss"),
                 best_at=ckpt.get("best_at"), evals_since_best=int(ckpt.get("evals_since_best", 0)),
                 elapsed=float(ckpt.get("elapsed", 0.0)),
                 budget_elapsed=float(ckpt.get("budget_elapsed", ckpt.get("elapsed", 0.0))),
                 schedule_origin=ckpt.get("schedule_origin", 0.0))  # older checkpoints: the budget's start
    if ckpt_args.get("time_budget") is None:  # a budget given to a run that had none starts now, all of it
        p.budget_elapsed, p.schedule_origin = 0.0, None
    return p


def order_changes(ckpt, ckpt_args, args, meta):
    """What changed since the checkpoint that changes its window orders, with its values ("--seed (1 -> 2)")."""
    def tokens(n):
        return f"{n:,}" if is_count(n) else n
    return [f"{name} ({was} -> {now})" for name, was, now in (
        ("the data's train tokens", tokens(ckpt.get("data", {}).get("train_tokens")),
         tokens(split_tokens(meta, "train"))),
        ("--block_size", ckpt_args.get("block_size"), args.block_size),
        ("--seed", ckpt_args.get("seed", args.seed), args.seed)) if was != now]


def trained_batch(ckpt, ckpt_args, args, train_w):
    """The checkpoint's run's (--batch_size, processes, windows a step on all of them); the batch and windows 0 where
    it recorded no --batch_size."""
    was_world = ckpt_args.get("world_size", 1)
    # an older checkpoint recorded a batch larger than its small text: cut to that text's windows (no count: not read)
    was_tokens, was_T = ckpt.get("data", {}).get("train_tokens"), ckpt_args.get("block_size")
    was_T = was_T if is_count(was_T) else args.block_size
    was_windows = max(1, Windows.count(was_tokens, was_T)) if is_count(was_tokens) else len(train_w)
    was_batch = min(ckpt_args.get("batch_size", 0), math.ceil(was_windows / was_world))
    return was_batch, was_world, was_batch * ckpt_args.get("grad_accum", 1) * was_world


def other_global_batch(args, was, was_world, now, world):
    """The warning for a run continued on world processes at now windows a step where its checkpoint's took was on
    was_world (--batch_size and --grad_accum are per process), naming the option that keeps the step, if any."""
    keep = (f"--grad_accum {was // (args.batch_size * world)} keeps its {was:,}" if was % (args.batch_size * world) == 0
            else f"--batch_size {was // (args.grad_accum * world)} keeps its {was:,}"
            if was % (args.grad_accum * world) == 0 else
            f"a --batch_size x --grad_accum x {world} processes of {was:,} keeps it" if was % world == 0 else
            f"no options keep its {was:,} on {world} processes, which take a multiple of {world}")
    return (f"the checkpoint's run took {was:,} windows a step on {was_world} process(es), this one {now:,} on "
            f"{world} (--batch_size and --grad_accum are per process): not the same steps as that run; {keep}")


def best_measured_otherwise(ckpt, ckpt_args, args, meta, was_eval, eval_windows, n_val):
    """How the checkpoint's best val loss was measured unlike this run's evaluations (windows of another length, another
    val split, other windows: no bar to them), in words, or None where they compare. n_val: the val windows."""
    was_T = ckpt_args.get("block_size")
    if is_count(was_T) and was_T != args.block_size:
        return f"in windows of {was_T} tokens, not {args.block_size}"
    was_val, now_val = ckpt.get("data", {}).get("val_tokens"), split_tokens(meta, "val")
    if is_count(was_val) and is_count(now_val) and was_val != now_val:
        return "on another val split"
    if is_count(was_eval) and min(was_eval, n_val) != min(eval_windows, n_val):
        return f"on {min(was_eval, n_val):,} val windows, not {min(eval_windows, n_val):,}"
    return None


def resumed_progress(run, options_given, run_warmup):
    """A continued run's Progress, eval windows and warmup: its checkpoint's, fitted to today's options (options_given:
    which of them the user gave; run_warmup: --warmup before a share became steps)."""
    args, ckpt, ckpt_args, batches = run.args, run.ckpt, run.ckpt_args, run.batches
    p = checkpoint_progress(ckpt, ckpt_args)
    # another window order: going on from the epoch's position would repeat some windows and skip others
    changed = order_changes(ckpt, ckpt_args, args, run.meta)
    started_over = bool(changed and p.epoch_windows)  # (said below, with where the lr schedule goes on)
    if changed:
        p.epoch_windows = 0
    if p.epoch_windows >= len(run.train_w):
        p.epoch, p.epoch_windows = p.epoch + 1, 0
    was_batch, was_world, was = trained_batch(ckpt, ckpt_args, args, run.train_w)
    if was and was_world != run.dist.world and was != batches.windows_per_step:
        warn(other_global_batch(args, was, was_world, batches.windows_per_step, run.dist.world))
    elif "batch_size" not in options_given and was_batch < args.batch_size == ckpt_args.get("batch_size"):
        # its batch was cut to a small text (fitted_batch_size), and the data, prepared again, holds a whole one now
        warn(f"the checkpoint's run trained in batches of {was_batch}, its batch of {args.batch_size} cut to its "
             f"small train split; the split has {len(run.train_w):,} windows now: batches of {args.batch_size} "
             f"(--batch_size {was_batch} keeps the checkpoint's)")
    # the val windows the run took, whatever the batches: another subset would be no bar to its earlier evaluations
    # (older checkpoints: as their options made them)
    was_eval = ckpt.get("eval_windows")
    if not is_count(was_eval) and is_count(ckpt_args.get("eval_batches")) and is_count(was_batch):
        was_eval = ckpt_args["eval_batches"] * was_batch * was_world
    eval_windows = was_eval if "eval_batches" not in options_given and is_count(was_eval) else run.eval_windows
    otherwise = None if p.best_val_loss is None else best_measured_otherwise(ckpt, ckpt_args, args, run.meta, was_eval,
                                                                             eval_windows, len(run.val_w))
    if otherwise:  # the next evaluation starts a bar
        warn(f"the checkpoint's best val loss {p.best_val_loss:.4f} was measured {otherwise}: no bar to this run's, "
             f"whose next evaluation makes a new best file ({os.path.basename(run.best_path)})")
        p.best_val_loss, p.evals_since_best = None, 0
    warmup = args.warmup
    if (changed or was != batches.windows_per_step) and not run.budget:
        # epochs of another length, or another global batch: steps of the new size, placed by the windows done
        p.step = p.epoch * batches.steps_per_epoch + batches.steps_done(p.epoch_windows)
        # (a step count inherited alone: a default or a share is in today's steps already)
        if "warmup" not in options_given and isinstance(run_warmup, int) and was and warmup:
            warmup = max(1, round(warmup * was / batches.windows_per_step))
    if args.reset_epoch:  # same weights, optimizer and best val loss; epochs and schedule from zero
        p = Progress(tokens=p.tokens, best_val_loss=p.best_val_loss, elapsed=p.elapsed)
    if started_over and not args.reset_epoch:  # (which starts every epoch over, and the schedule, as asked)
        # the lr schedule (by steps; a budget's follows its clock) goes back with the epoch, maybe into the warmup
        back = "" if run.budget or p.step >= ckpt["step"] else \
            f", and the lr schedule with it: from step {ckpt['step']:,} back to step {p.step:,}" + \
            (f", warming up again over {warmup:,} steps" if p.step < warmup else "")
        warn(f"{' and '.join(changed)} changed since the checkpoint: its epoch starts over{back}")
    return p, eval_windows, warmup


def run_summary(p, scale, windows_per_epoch, **run):
    """What train() returns: the run's own figures (run) and where training stands (steps, epochs, best val loss).
    scale: bpb_scale's, for the bits per byte; windows_per_epoch: the train windows of an epoch."""
    return {**run, "steps": p.step, "epochs_done": p.epoch, "epoch": p.epoch_at(windows_per_epoch),
            "best_val_loss": p.best_val_loss, "best_at": p.best_at, "evals_since_best": p.evals_since_best,
            "best_val_bpb": None if p.best_val_loss is None else bits_per_byte(p.best_val_loss, scale)}


def banner_lines(run):
    """The lines a built run starts with: its data, its model, how it trains, and where a resumed run goes on from."""
    args, config, batches, budget, world = run.args, run.config, run.batches, run.budget, run.dist.world
    train_w, val_w = run.train_w, run.val_w
    what = ("continuing" if run.continuing else "fine-tuning") + f" {args.checkpoint}" if run.ckpt else "new model"
    n_all, n_core = run.model.num_params(non_embedding=False), run.model.num_params()
    tok_step = batches.windows_per_step * args.block_size
    spe = batches.steps_per_epoch
    lines = [f"data   {args.dataset}: {fmt_count(len(train_w) * args.block_size)} train tokens in "
             f"{len(train_w):,} windows of {args.block_size}, {fmt_count(len(val_w) * args.block_size)} val; "
             f"tokenizer {run.enc.name} "
             f"({config.vocab_size:,} ids){', loss on masked tokens only' if train_w.masked else ''}",
             f"model  {what}: {args.model} {config.variant}, {config.n_layer} layers x {config.n_embd}, "
             f"{fmt_count(n_all)} params ({fmt_count(n_core)} non-embedding), context {config.block_size}"
             f"{'' if config.bias else ', no biases'}"
             # (a checkpoint's, taken on by a fine-tune or a continued run: said nowhere else)
             f"{f', dropout {config.dropout:g}' if config.dropout else ''}"]
    run_for = fmt_time(args.time_budget * 60) + (f" (at most {args.epochs} epochs)"
                                                 if args.epochs < UNLIMITED_EPOCHS else "") \
        + f", epochs of {spe:,}" if budget else f"{args.epochs} epoch(s) x {spe:,}"
    ranks = f"{world} ranks x " if world > 1 else ""
    lines.append(f"train  {run_for} steps of {ranks}{args.batch_size}x{args.grad_accum}x{args.block_size} "
                 f"= {tok_step:,} tokens, {args.optimizer} lr {args.lr:.2g}"
                 f"{f' ({run.lr_from})' if run.lr_from else ''} -> {args.min_lr:.2g} (warmup "
                 + (f"{run.budget_warmup:.0%} of the budget" if budget else f"{args.warmup}") + "), "
                 # (AdamW's betas where they are not the defaults: nanoGPT's shakespeare_char config sets beta2 0.99)
                 + (f"betas {args.beta1:g}, {args.beta2:g}, " if (args.beta1, args.beta2) != (DEFAULTS["beta1"],
                                                                                          DEFAULTS["beta2"]) else "")
                 + f"{run.device} {dtype_words(run.device, run.dtype, args.dtype)}"
                 f"{', compiled' if args.compile else ''}"
                 f"{', activations recomputed' if args.recompute_activations else ''}")
    resumed = run.p
    # nanoGPT's --max_iters sets its run's length; here the epochs do, and a --max_steps past their end stops nothing
    steps_left = run.total_steps - resumed.step
    if args.max_steps and not budget and args.max_steps > steps_left:
        lines.append(f"--max_steps {args.max_steps:,} is past the end of {args.epochs} epoch(s), {steps_left:,} steps "
                     f"away: the run ends there (--epochs sets its length)")
    if run.continuing and (resumed.step or resumed.epoch):
        # on other ranks a run goes on as it would have to float summation order, bar dropout's masks (per rank)
        was_world = run.ckpt_args.get("world_size", 1)
        other_masks = config.dropout and was_world != world
        masks = f" (dropout: the run drew its masks in {was_world} process(es), this one in {world}, so it goes on " \
                f"with other masks, not bit for bit as on {was_world})" if other_masks else ""
        # at the epochs done, as the step lines count them ("epoch 0.15"), then the epoch in progress as its bar does
        done = resumed.epoch + resumed.epoch_windows / len(train_w)
        # epochs of other steps place the run where its windows done fall (resumed_progress): said, or it puzzles
        ckpt_step = run.ckpt["step"]
        recounted = f" (the checkpoint's step {ckpt_step:,}, counted again in this run's epochs of {spe:,} steps)" \
            if resumed.step != ckpt_step else ""
        lines.append(f"resume at epoch {done:.2f} (epoch {resumed.epoch + 1}, window {resumed.epoch_windows:,}/"
                     f"{len(train_w):,}), step {resumed.step:,}{recounted}{masks}")
        # a larger --epochs or --time_budget stretches the cosine from here: the lr goes back up, said here
        span, was = schedule_span(args.time_budget, args.epochs), schedule_span(
            run.ckpt_args.get("time_budget"), run.ckpt_args.get("epochs"))
        if was and span != was:
            lr = step_lr(args, resumed, run.total_steps, budget, run.budget_warmup, resumed.budget_elapsed, 0.0)
            lines.append(f"the lr's cosine now spans {span} (the checkpoint's run: {was}), so step {resumed.step:,} "
                         f"goes on at lr {lr:.2e}")
    return lines


def schedule_span(time_budget, epochs):
    """What a run's lr schedule spans, for the banner: its --time_budget, else its --epochs, else None."""
    if time_budget:
        return fmt_time(time_budget * 60)
    return f"{epochs} epoch(s)" if epochs else None


def measured(loss, scale, color=None):
    """A val loss as the lines show it, painted color: '2.3480 (ppl 10.46, 0.859 bpb)' (no bpb without a scale)."""
    bpb = bits_per_byte(loss, scale)
    shown = f"{loss:.4f}" if color is None else paint(f"{loss:.4f}", color)
    return f"{shown} (ppl {math.exp(min(loss, 50)):.2f}" + (f", {bpb:.3f} bpb" if bpb else "") + ")"


def eval_line(step, epoch, train_loss, val_loss, scale, lr, tokens_per_s, better, improved, pause=False):
    """An evaluation's line: step, epoch, train loss (as shown), val loss (green if better), lr, speed, "* best"."""
    return (f"{paint(f'step {step:,}', 'bold')} (epoch {epoch:.2f}): train {train_loss}, "
            f"val {measured(val_loss, scale, 'green' if better else 'yellow')}, lr {lr:.2e}, "
            f"{tokens_per_s:,.0f} tokens/s"
            + (paint("  * best", "green") if improved else "")
            # (a better val loss, green, with no "* best": the line says why)
            + (paint("  (a --max_steps pause: not judged for the best file or --patience)", "dim") if pause else ""))


def summary_lines(summary, meta, scale, args, budget, pause_eval, go_on=None):
    """A run's closing lines (run_summary's): what it did, its best, its files, how to go on (go_on) and to try it.
    scale: bpb_scale's; pause_eval: its last evaluation was a --max_steps pause (not judged)."""
    rate = f"{summary['tokens_per_s']:,.0f} tokens/s"
    if summary["train_tokens_per_s"] and summary["train_tokens_per_s"] > 1.1 * summary["tokens_per_s"]:
        # a short run on a GPU: compiling, evaluating and saving took most of it
        rate += f" overall, {summary['train_tokens_per_s']:,.0f} while training"
    steps = summary["run_steps"]
    lines = [paint(f"{summary['stopped']}: {steps:,} step{'s' * (steps != 1)}, {fmt_count(summary['tokens'])} "
                   f"tokens in {fmt_time(summary['elapsed'])} ({rate}); " +
                   # (a budget's epochs as the log gives them: "0 epoch(s)" after half of one reads as none)
                   (f"{summary['epoch']:.2f} epochs in the {fmt_time(args.time_budget * 60)} budget" if budget else
                    f"{summary['epochs_done']} of {args.epochs} epoch(s) done"), "bold")]
    best, last_val = summary["best_val_loss"], summary["val_loss"]
    at = summary.get("best_at")  # (where the run went on past it, or overfit: when it was; None: not known)
    when = f"at step {at[0]:,} (epoch {at[1]:.2f}) " if at else ""
    if best is not None:
        lines.append(f"best val loss {measured(best, scale)} {when}" + (f"in {summary['best_checkpoint']}" if
                     summary["best_checkpoint"] else "before this run, which did not better it (no best file here)"))
    # a run well past its best (a small text over many epochs) would say so only by "* best" no longer showing
    since = summary.get("evals_since_best", 0)
    if best is not None and last_val is not None and since >= OVERFIT_EVALS and last_val > 1.01 * best \
            and not args.patience:
        lines.append(paint(f"val loss rose to {last_val:.4f} in the {since} evaluations after the best: the model "
                           f"overfits its train data; --patience {OVERFIT_EVALS} ends a run {OVERFIT_EVALS} "
                           f"evaluations past its best (or train fewer epochs, on more data, with --dropout)",
                           "yellow"))
    # a --max_steps pause better than the best: its weights, in the checkpoint, are the better model, though not judged
    pause_better = pause_eval and best is not None and last_val < best
    if pause_better:
        lines.append(f"val loss {measured(last_val, scale)} at the --max_steps pause, lower but not judged for the "
                     f"best file: those weights are in {summary['checkpoint']}")
    lines.append(f"checkpoint {summary['checkpoint']}; metrics {summary['metrics']}"
                 + (f", curve {summary['plot']}" if summary["plot"] else ""))
    if go_on:  # (as a Ctrl-C's line names it: the run's epochs are not done, and --max_steps is not inherited)
        lines.append(f"continue with `{go_on}` " + (f"(for the rest of its {fmt_time(args.time_budget * 60)} budget)"
                                                    if budget else f"(to the end of its {args.epochs} epoch(s))"))
    if summary["best_checkpoint"] or summary["checkpoint"]:
        tried = summary["checkpoint"] if pause_better else summary["best_checkpoint"] or summary["checkpoint"]
        chat = ["--chat"] if meta.get("has_mask") else []
        lines.append(paint(f"try it: {common.script_command('gen.py', tried, *chat)}", "cyan"))
    return lines


def more_epochs(args, done):
    """More epochs for a checkpoint done with its --epochs, asked at a terminal (refused without one, or on Ctrl-D)."""
    answer = ask(f"{args.checkpoint} has already trained {done} epoch(s). How many more? [0 = stop] ") \
        if is_interactive() else None
    if answer is None:
        raise UserError(f"{args.checkpoint} has already trained {done} epoch(s) of {args.dataset} (--epochs "
                        f"{args.epochs}): pass a larger --epochs to continue its schedule, or --reset_epoch to start a "
                        f"new one from its weights")
    answer = answer or "0"
    if not answer.isdecimal():  # (isdigit() took "²", int()'s ValueError)
        # --epochs counts them all, not the more asked for: `--epochs 2` after 3 done is refused as done already
        raise UserError(f"{answer!r} is not a number of epochs: answer the question with one (0 to stop), or pass "
                        f"--epochs N for N in all, more than the {done} done")
    return int(answer)


def refuse_ended_run(args, ckpt, ckpt_args, p, budget):
    """Refuses to continue ckpt (p: where it stands) if it ended for good: budget used, or --patience stopped it."""
    # (--resume refuses --reset_epoch: the command that does it continues the checkpoint given)
    reset = f"--reset_epoch{f' (with --checkpoint {shlex.quote(args.checkpoint)}, not --resume)' * args.resume}"
    if budget and ckpt.get("budget_done") and args.time_budget <= (ckpt_args.get("time_budget") or 0):
        # its own budget, not the one given: a smaller one given is no larger than what it used
        used = ckpt_args.get("time_budget")
        # (the minutes given, or inherited, as the more wanted: the sum that trains them)
        raise UserError(f"{args.checkpoint} has used its {fmt_time(used * 60)} --time_budget: pass a larger one to "
                        f"train on (it counts that time: --time_budget {budget_value(used + args.time_budget)} trains "
                        f"{fmt_time(args.time_budget * 60)} more), --epochs N without --time_budget to go on by "
                        f"epochs, or {reset} to start a new budget from its weights")
    if budget and p.budget_elapsed >= budget:
        # a budget interrupted (Ctrl-C) and continued with fewer minutes than it had spent, which a continued run counts
        raise UserError(f"{args.checkpoint} has trained {fmt_time(p.budget_elapsed)} of its budget already, which "
                        f"--time_budget {budget_value(args.time_budget)} counts: pass a larger one to train on, or "
                        f"{reset} to start a new budget from its weights")
    # a run --patience stopped (else one more interval each time; an old checkpoint's by its --patience's count)
    if args.patience and p.evals_since_best >= args.patience \
            and ckpt.get("stopped_early", 0 < (ckpt_args.get("patience") or 0) <= p.evals_since_best):
        raise UserError(f"{args.checkpoint} stopped early: no better val loss in its last {p.evals_since_best} "
                        f"evaluations (--patience {args.patience}): pass a larger --patience, or --patience 0, "
                        f"to train on")


# -----------------------------------------------------------------------------
# training

def run_lock(folder, name, what):
    """Held while a run writes folder's files named by name (a dataset's, or an --output_checkpoint's name): two runs
    started together would both pass refuse_earlier_run. what: those files, for the refusal (held_lock)."""
    return held_lock(os.path.join(folder, f".{name}.lock"), f"another train.py is writing {what}: wait for it to end, "
                                                            f"or give --output_checkpoint another folder")


def claim_files(held, args, ckpt, continuing, out_pattern, out_dir, best_path, given, others):
    """Rank 0's hold on the run's files (path checked, locks held, earlier run refused): what --overwrite replaces."""
    dataset = args.dataset
    # (not over a dataset's files); the default's message names the option too: it is how to write elsewhere
    check_output(out_pattern.replace("{dataset}", dataset).replace("{epoch}", "1"),
                 "--output_checkpoint" if given else "--output_checkpoint (default)", checkpoint=True)
    locked = held.enter_context(run_lock(out_dir, dataset, f"the {dataset} run in {os.path.join(out_dir, '')} (its "
                                                            f"checkpoints, {dataset}_best.pt and metrics)"))
    # models/run{epoch}.pt is another dataset's too: a lock on the name as well, apart from datasets' (no + in those)
    tail = os.path.basename(out_pattern).replace("{dataset}", dataset)
    locked &= held.enter_context(run_lock(out_dir, "+" + tail,
                                          f"{os.path.join(out_dir, tail)} (another dataset's run)"))
    if locked:
        # a save killed mid-write (kill -9) leaves a checkpoint-sized temporary: with the locks held, it goes now
        names = [re.escape(tail).replace(re.escape("{epoch}"), r"\d+"),
                 *(re.escape(os.path.basename(path)) for path in (best_path, *others))]
        remove_stale_tmp(out_dir, "|".join(names), quiet_s=0)
    # --reset_epoch numbers epochs from 1 again: its files would land on the run's own
    if not continuing or args.reset_epoch:
        return refuse_earlier_run(out_pattern, dataset, best_path, args.overwrite,
                                  reset=continuing and args.reset_epoch, resume=args.resume)
    return refuse_going_back(args.checkpoint, ckpt, out_pattern, dataset, best_path, args.overwrite)


def training_dtype(device, name):
    """pick_dtype's dtype for --dtype name, warning of one this CPU emulates or runs slower; TF32 matmuls on CUDA."""
    dtype = pick_dtype(device, name)
    if slow := slow_on_this_cpu(device, dtype, name):
        warn(slow)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores, as nanoGPT does
        torch.backends.cudnn.allow_tf32 = True
    return dtype


def fitted_batch_size(args, n_windows, dist, batch_given, continuing, was=None):
    """--batch_size, cut to the n_windows of the train split a process gets; refused where the user gave it. was: the
    batch a continued run's checkpoint trained in (trained_batch), the cut said when it was made, not at each resume."""
    per_rank = math.ceil(n_windows / dist.world)
    if args.batch_size <= per_rank:
        return args.batch_size
    # the rest of each batch would be padding (and 10**30 a numpy TypeError)
    more = (f"{args.batch_size:,} is more than the {n_windows:,} windows of {args.block_size} tokens in the train "
            f"split" + (f" ({per_rank:,} a process)" if dist.world > 1 else ""))
    if batch_given:
        raise UserError(f"--batch_size {more}: use --batch_size {per_rank} or less, or prepare more text")
    if dist.main and per_rank != was:  # a preset's or the checkpoint's batch on a small text: the same steps, unpadded
        warn(f"the {'checkpoint' if continuing else 'preset'}'s batch of {more}: batches of {per_rank}")
    return per_rank


def build_training(run):
    """Fills in run's model, optimizer, scaler and fwd (the Forward that trains it), with a continued run's state."""
    args, ckpt, ckpt_args, continuing, dist = run.args, run.ckpt, run.ckpt_args, run.continuing, run.dist
    config, device, dtype = run.config, run.device, run.dtype
    torch.manual_seed(args.seed)  # initial weights (a checkpoint's replace them) and dropout
    try:
        run.model = GPT(config)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        raise UserError(f"the model ({config.n_layer} layers x {config.n_embd}, context {config.block_size}) does not "
                        f"fit in memory ({first_line(e)[:80]}): use a smaller --n_layer or --n_embd, or a smaller "
                        f"--model") from None
    if ckpt is not None:
        load_weights(run.model, ckpt["model"], args.checkpoint)
        ckpt["model"] = None  # copied into the model: not held twice for the run's length (GPT-2's: 0.5 GB)
    run.model.to(device)
    run.model.recompute_activations = args.recompute_activations
    run.optimizer = run.model.configure_optimizer(args.weight_decay, args.lr, (args.beta1, args.beta2), device.type,
                                                  args.optimizer, dtype)
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (the scaler is then a no-op)
    run.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if continuing and ckpt.get("optimizer") and ckpt_args["optimizer"] != args.optimizer:
        warn(f"--optimizer {args.optimizer}: the checkpoint's run used {ckpt_args['optimizer']}, whose state does not "
             f"carry over; {args.optimizer} starts afresh")
    elif continuing and ckpt.get("optimizer"):
        # (the groups' --weight_decay and --beta1/--beta2, which the state loaded would undo: the checkpoint's)
        fresh = [dict(g) for g in run.optimizer.param_groups]
        try:
            run.optimizer.load_state_dict(ckpt["optimizer"])
            check_optimizer_state(run.optimizer, fresh)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{args.checkpoint}: its optimizer state does not fit the model ({first_line(e)}): a "
                            f"damaged checkpoint, or one from another version of the code; use another one") from None
        for group, was in zip(run.optimizer.param_groups, fresh):
            group.update({k: was[k] for k in ("weight_decay", "betas") if k in was})  # (Muon's groups have no betas)
        if ckpt.get("scaler") and run.scaler.is_enabled():
            run.scaler.load_state_dict(ckpt["scaler"])
    if ckpt is not None:  # in the optimizer now, or not carried over: on a GPU a CPU copy (up to twice the weights)
        ckpt["optimizer"] = None  # held for the run's length (on a CPU the optimizer's tensors are these)
    if continuing and not args.reset_epoch and ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    train_model = run.model
    if dist.world > 1:
        # no buffer sync: the only buffers (RoPE tables) are constant, and evaluations of unequal shares must not wait
        from torch.nn.parallel import DistributedDataParallel as DDP
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                          else {"broadcast_buffers": False})  # its older name
        train_model = DDP(run.model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)
    # compile the DDP model: its graphs break at the buckets (DDPOptimizer)
    run.fwd = Forward(train_model, args.compile)


# what each optimizer keeps of every parameter once it has stepped (AdamW with amsgrad would add max_exp_avg_sq)
OPTIMIZER_STATE = {"AdamW": {"step", "exp_avg", "exp_avg_sq"}, "Muon": {"momentum_buffer"}}


def check_optimizer_state(optimizer, fresh):
    """A ValueError unless the loaded state is every parameter's, whole and of its shape, or none (saved before a first
    step): torch takes any, a missing entry silently zero, a wrong one a traceback later. fresh: the groups before."""
    def like(v, was):  # (None: this torch's default for none saved, an older one's; or what it has no default for)
        if was is None or v is None:
            return True
        if isinstance(was, (int, float)):
            return isinstance(v, (int, float))
        if isinstance(was, (tuple, list)):
            return isinstance(v, (tuple, list)) and len(v) == len(was) and all(like(a, b) for a, b in zip(v, was))
        return type(v) is type(was)
    for group, was in zip(optimizer.param_groups, fresh):
        for k, v in group.items():
            if k != "params" and k in was and not like(v, was[k]):
                raise ValueError(f"its {k} is {v!r:.20}")
    parts = [optimizer.muon, optimizer.adamw] if hasattr(optimizer, "muon") else [optimizer]
    if not any(part.state for part in parts):
        return
    for part in parts:
        kind = type(part).__name__
        for i, p in enumerate(p for group in part.param_groups for p in group["params"]):
            state = part.state.get(p) or {}
            lacks = OPTIMIZER_STATE.get(kind, set()) - set(state)
            if lacks:
                raise ValueError(f"{kind}'s parameter {i} has no {', '.join(sorted(lacks))}")
            for k, v in state.items():
                if not isinstance(v, (torch.Tensor, int, float) if k == "step" else torch.Tensor) or \
                        k != "step" and v.shape != p.shape:
                    what = tuple(v.shape) if isinstance(v, torch.Tensor) else f"of type {type(v).__name__}"
                    raise ValueError(f"{kind}'s {k} of parameter {i} is {what}, for a parameter of {tuple(p.shape)}")


class Diverged(UserError):
    """The run's loss or weights became nan or inf: not saved, lest it replace the last good file."""


def train(args):
    """Train as the options say; returns a summary dict (steps, tokens, losses, files)."""
    with contextlib.ExitStack() as held:  # the run's lock, let go however training ends
        try:
            return run_training(args, held)
        except Exception as e:
            # a rank lost while the ranks set up (the training loop says its own, with the step), not a gloo traceback
            if is_peer_failure(e) and torch.distributed.is_available() and torch.distributed.is_initialized():
                slow = "its reading of the data and checkpoint"
                raise timeout_error(e, "before training", args.dist_timeout, slow) or UserError(
                    f"lost contact with the other ranks before training (did one fail? see its lines, on its "
                    f"machine): {first_line(e, 100)}") from e
            raise


def run_training(args, held):
    """train()'s run, its locks in held: set up in phases that fill in the Run, then trained and summed up."""
    global use_color
    use_color = not args.no_color and color_ok(sys.stdout)
    base = args.checkpoint or args.init_from
    # --resume's run begun from a checkpoint since gone (a fine-tune's base moved, a scratch folder purged): its own
    # files, found where a new run of its dataset writes them, are all it needs; without them, the base's "not found"
    gone = args.resume and base and args.dataset and not os.path.exists(base)
    run, options_given = start_run(argparse.Namespace(**{**vars(args), "checkpoint": None, "init_from": None})
                                   if gone else args)
    resume = restart_point(run, args)
    if gone and not resume:
        start_run(args, (run.dist, run.device))  # (raises)
    if resume:
        path, step, left, ended, passed = resume
        whose = "--resume: the run's" if args.resume else \
            f"torchrun restart {os.environ.get('TORCHELASTIC_RESTART_COUNT')}: this job's"
        newer = f"; the newer {' and '.join(passed)} {'is' if len(passed) == 1 else 'are'} not a readable " \
                f"checkpoint" if passed else ""
        restart = f"{whose} newest checkpoint is {path} (step {step}{newer})"
        if ended:  # (the attempt that wrote it failed after its last save)
            say(f"{restart}, where the job's run ended: nothing left to train")
            raise SystemExit(0)
        say(f"{restart}: continuing from it, as --checkpoint {shlex.quote(path)}"
            + (f" --max_steps {left} (what is left of the job's)" if args.max_steps and left is not None else "")
            + " would")
        # the run as that checkpoint left it: its epochs, as reset, and --init_from's weights trained on
        args = argparse.Namespace(**{**vars(args), "checkpoint": path, "init_from": None, "reset_epoch": False,
                                     "max_steps": left if args.max_steps and left is not None else args.max_steps})
        joined, run = (run.dist, run.device), None  # (its checkpoint let go before the newer one loads)
        run, options_given = start_run(args, joined)
    run.job = elastic_job() if run.dist.main else None
    claim_outputs(run, held)
    run.dtype = training_dtype(run.device, run.args.dtype)
    run_warmup = plan_run(run, options_given)
    args, ckpt, p = run.args, run.ckpt, run.p

    def trained_nothing():  # a run's summary (Run.summary), of a run that trained nothing: its checkpoint's
        return run_summary(p, run.bpb_scale, len(run.train_w), stopped="already done", run_steps=0, tokens=0,
                           elapsed=0.0, tokens_per_s=0.0, train_tokens_per_s=None, val_loss=ckpt.get("val_loss"),
                           checkpoint=args.checkpoint, best_checkpoint=existing(run.best_path),
                           metrics=existing(run.metrics_path), plot=existing(run.png_path))
    if p.epoch >= args.epochs:
        if args.resume:  # the same command again once its run is done: done, not an error (a job's requeue)
            say(f"--resume: {args.checkpoint} has trained the run's {args.epochs} epoch(s): nothing left to train (a "
                f"larger --epochs trains on)")
            return trained_nothing()
        more = more_epochs(args, p.epoch)
        if more == 0:
            return trained_nothing()
        args.epochs = p.epoch + more
        run.total_steps = args.epochs * run.batches.steps_per_epoch
        if not run.budget and not isinstance(run_warmup, int):  # as with --epochs given: a share of the longer run
            args.warmup = warmup_steps(run_warmup, run.total_steps, args.lr)
    if run.continuing and not args.reset_epoch:
        try:
            refuse_ended_run(args, ckpt, run.ckpt_args, p, run.budget)
        except UserError as e:
            if not args.resume:
                raise
            say(f"--resume: nothing left to train: {e}")
            return trained_nothing()
    build_training(run)
    run.train()
    return run.summary()


def start_run(args, joined=None):
    """A run's start, before its files: options, ranks (joined: an earlier start's dist, device), checkpoint, data,
    tokenizer, config. Returns (run, options_given: which of warmup, batch_size, eval_batches the user gave)."""
    global quiet
    quiet = not speaks_for_machine()  # until the ranks are known: then rank 0 alone
    if args.resume and (args.overwrite or args.reset_epoch):  # each would start the run anew over its files
        other = "--overwrite replaces" if args.overwrite else "--reset_epoch numbers its epochs from 1 again over"
        raise UserError(f"--resume goes on from the run's newest checkpoint, which {other}: pass one of them")
    if args.reset_epoch and not args.checkpoint:  # (a new run starts at epoch 1 anyway: it would do nothing)
        raise UserError("--reset_epoch restarts a checkpoint's epochs and schedule: give it with --checkpoint (a new "
                        "run, --init_from's too, starts at epoch 1)")
    if args.init_from is not None:
        # hf.py reads the folder as a checkpoint without training state, so what follows is fine-tuning
        if args.checkpoint:
            raise UserError("--init_from and --checkpoint both give the starting weights: pass one of them")
        if not os.path.exists(args.init_from) and (hint := download_hint(args.init_from)):
            raise UserError(f"--init_from {args.init_from} not found{hint}")
        if not is_hf_folder(args.init_from):  # (a path mistyped is no folder of any kind: said as such)
            # (not load_checkpoint's "available:" hint, which would offer the .pt files in it)
            what = "is a folder without config.json" if os.path.isdir(args.init_from) else \
                "is not a folder" if os.path.exists(args.init_from) else "not found"
            inside = sorted(d for d in glob.glob(os.path.join(glob.escape(args.init_from), "*"))  # (models/: export's)
                            if is_hf_folder(d))
            raise UserError(f"--init_from {args.init_from} {what}: it takes a Hugging Face model folder "
                            f"(config.json, model.safetensors, tokenizer files){', as ' * bool(inside)}"
                            f"{', '.join(inside[:5])}; a .pt checkpoint goes to --checkpoint")
        args = argparse.Namespace(**{**vars(args), "checkpoint": args.init_from})
    # under torchrun the ranks join before the files are read: a machine without them fails after joining, and the
    # others lose contact at once rather than wait --dist_timeout (one process picks its device after the files)
    if joined is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        joined = init_distributed(args.device, args.dist_timeout)
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else None
    ckpt_args = checkpoint_args(ckpt)
    args = argparse.Namespace(**vars(args))
    trained_on, trained_in = checkpoint_data(ckpt) if ckpt is not None else (None, None)
    dataset_given = args.dataset
    dataset = args.dataset = args.dataset or trained_on or "story"
    # same dataset and training state: the same run going on; else a new one from its weights (fine-tuning)
    continuing = ckpt is not None and trained_on == dataset and "step" in ckpt
    if args.reset_epoch and ckpt is not None and not continuing:
        raise reset_epoch_refused(f"{args.checkpoint} has no training state (weights only)" if trained_on == dataset or
                                  not trained_on else f"{args.checkpoint} was trained on {trained_on}, so training it "
                                                      f"on {dataset} is fine-tuning")
    trained = None
    if args.data_dir is None:
        args.data_dir = trained_in if trained_on == dataset else default_data_dir(ckpt or {}, dataset)
        trained = trained_data(args.checkpoint, ckpt) if trained_on == dataset else None
    # a model folder (export.py's, GPT-2's) names no data: the default story is no guess to prepare for it
    if ckpt is not None and not trained_on and not dataset_given and \
            not os.path.exists(os.path.join(args.data_dir, dataset, "meta.json")):
        raise UserError(f"{args.checkpoint} does not name the data it was trained on: pass --dataset NAME")
    # the model, for the hint that prepares missing data in its vocabulary, packed at its context
    model_tokenizer = args.checkpoint if ckpt is not None else None
    meta = load_meta(args.data_dir, dataset, args.tokenizer or model_tokenizer, trained)
    was = (ckpt or {}).get("data") or {}
    if continuing and was.get("kind") and meta.get("kind") and was["kind"] != meta["kind"]:
        # its run's name given to data of the other kind (chat vs text): a new run from its weights
        if args.reset_epoch:
            raise reset_epoch_refused(f"{args.checkpoint} was trained on {was['kind']}, so training it on "
                                      f"{meta['kind']} ({meta['folder']}) is fine-tuning")
        continuing = False
    enc = pick_tokenizer(args, meta, ckpt)
    # (before the model: a new one's default size depends on it)
    dist, device = joined or init_distributed(args.device, args.dist_timeout)
    quiet = not dist.main
    check_same_files(dist, meta, ckpt, args.checkpoint)
    if args.model is None and ckpt is None:
        args.model = default_preset(device)
    config = model_config(args, meta, ckpt)
    options_given = {name for name in ("warmup", "batch_size", "eval_batches") if getattr(args, name) is not None}
    check_recorded_options(args.checkpoint, ckpt_args, continuing)
    fine_tuning, lr_from = ckpt is not None and not continuing, None
    if fine_tuning and args.lr is None:  # a fine-tune's default lr, and where it came from for the run line
        args.lr, lr_from = fine_tune_lr(ckpt, args.model)
        was = recorded_lr(ckpt_args)  # (what fine_tune_lr divided, if any)
        if was and unrecorded_fine_tune(ckpt):  # (an older train.py's chat model fine-tuned again: a third again)
            warn(f"{args.checkpoint} does not say whether its run was a fine-tune (an older train.py's, which began "
                 f"from another checkpoint): if it was, its lr {was:.3g} is a fine-tuning one already, which --lr "
                 f"{was:.3g} keeps; this run takes a third of it")
    args = resolve_args(args, ckpt, continuing, config)
    # fine_tune_lr takes a fine-tune's lr as it is (None: an older checkpoint continued, which does not say)
    fine_tune = True if fine_tuning else ckpt.get("fine_tune") if continuing else False
    nanogpt_schedule(args, meta, dist)
    check_same_options(dist, args)
    return Run(args=args, ckpt=ckpt, ckpt_args=ckpt_args, continuing=continuing, meta=meta, enc=enc, config=config,
               dist=dist, device=device, lr_from=lr_from, fine_tune=fine_tune), options_given


def warn_low_disk(run):
    """Warns at the start, not at a first save hours in, where the output folder cannot hold two checkpoints."""
    folder = os.path.dirname(os.path.abspath(run.best_path))  # (made by claim_outputs, its lock there)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    size = checkpoint_bytes(run.model, run.optimizer)
    if free < 2 * size:
        warn(f"{free / 1e6:,.0f} MB free in {folder}, where a checkpoint of this run takes about {size / 1e6:,.0f} MB "
             f"and a save writes its new one beside the old: the saves may fail; free some space, or write elsewhere "
             f"(--output_checkpoint)")


def reset_epoch_refused(why):
    """The error for --reset_epoch on a new run from a checkpoint (why: what makes it one), where it does nothing."""
    return UserError(f"--reset_epoch restarts the epochs and schedule of a run continued on its own dataset, keeping "
                     f"its optimizer; {why}: a new run, which starts at epoch 1 with a fresh optimizer anyway: leave "
                     f"--reset_epoch out")


def claim_outputs(run, held):
    """The run's files, settled and claimed (by rank 0; every rank ends where it refuses them) before anything is built,
    its locks in held. Fills in out_pattern, best_path, metrics_path, png_path, replaced, best_goes and run_id."""
    args, ckpt, continuing, dist = run.args, run.ckpt, run.continuing, run.dist
    given = args.output_checkpoint is not None  # (before output_paths names a continued run's own files in args)
    run.out_pattern, out_dir, run.best_path, run.metrics_path, run.png_path = output_paths(
        args, run.ckpt_args, continuing, given)
    # with --overwrite: files of an earlier run (or later points of this one) to remove (see save); rank 0's refusal
    replaced, refused = [], None
    # a run continued keeps its id (with --reset_epoch too: its tokens go on counting), a new one draws one
    run.run_id = (ckpt.get("run") if continuing else None) or secrets.token_hex(8)
    if dist.main:  # the files are rank 0's to write
        try:
            replaced = claim_files(held, args, ckpt, continuing, run.out_pattern, out_dir, run.best_path,
                                   given, (run.metrics_path, run.png_path))
        except UserError as e:
            refused = e
        if args.checkpoint and os.path.isfile(args.checkpoint):  # the file this run starts from stays, unless written
            replaced = [f for f in replaced if not os.path.samefile(f, args.checkpoint)]
    # every rank learns whether rank 0 refused and whether the best file goes (each decides --patience's stop)
    failed, run.best_goes = dist.agree(refused is not None, run.best_path in replaced)
    if refused is not None:
        raise refused
    if failed:  # (rank 0 says why)
        exit_after_the_first(1, first=dist.main)
    run.replaced = replaced


def plan_run(run, options_given):
    """The run's windows, batches, schedule and Progress (its fields train_w to p); returns --warmup as resolve_args
    left it (steps, a share or None), before a share became steps, for run_training's more epochs."""
    args, ckpt, continuing, meta, dist = run.args, run.ckpt, run.continuing, run.meta, run.dist
    run.train_w = Windows(meta, "train", args.block_size)
    run.val_w = Windows(meta, "val", args.block_size)
    run.batch_option = args.batch_size
    was = trained_batch(ckpt, run.ckpt_args, args, run.train_w)[0] if continuing else None
    args.batch_size = fitted_batch_size(args, len(run.train_w), dist, "batch_size" in options_given, continuing, was)
    packing = packing_warning(meta, args.block_size, run.config.block_size)
    if packing:
        warn(packing)
    # a continued run keeps its orders (a checkpoint from before ORDER_SCHEME: the first)
    run.order_scheme = ckpt.get("order_scheme", 1) if continuing else ORDER_SCHEME
    if run.order_scheme not in (1, ORDER_SCHEME):
        raise UserError(f"{args.checkpoint} orders its epochs by a scheme this code does not know "
                        f"({run.order_scheme}): {NOT_THIS_CODE}")
    run.batches = Batches(run.train_w, args.batch_size, args.grad_accum, args.seed, pin=run.device.type == "cuda",
                          rank=dist.rank, world=dist.world, scheme=run.order_scheme)
    run.total_steps = args.epochs * run.batches.steps_per_epoch
    # val windows an evaluation takes (a continued run keeps its run's: below)
    run.eval_windows = args.eval_batches * args.batch_size * dist.world
    run_warmup = args.warmup  # (a share of the run, or None for the default: of its length, which the user may change)
    run.budget, run.budget_warmup, args.warmup = budget_and_warmup(args, run.total_steps)
    if not run.budget:  # (a budget's intervals are of its time)
        warn_intervals_past_an_epoch(args, run.batches.steps_per_epoch)
    run.p = Progress()
    if continuing:
        run.p, run.eval_windows, args.warmup = resumed_progress(run, options_given, run_warmup)
    # (a --reset_epoch's run counts its steps from the first too)
    if (not continuing or args.reset_epoch) and not run.budget and not args.max_steps and run.total_steps < FEW_STEPS:
        spe = run.batches.steps_per_epoch
        warn(f"{args.epochs} epoch(s) of {args.dataset} are {run.total_steps:,} step(s), too few to learn much from: "
             f"--epochs {math.ceil(FEW_STEPS / spe)} trains {math.ceil(FEW_STEPS / spe) * spe:,}, or --time_budget "
             f"MINUTES trains for that time")
    check_eval_targets(run.val_w, run.eval_windows)
    run.bpb_scale = bpb_scale(run.val_w, run.eval_windows, run.enc)
    return run_warmup


@dataclasses.dataclass(eq=False)
class Run:
    """A run, built in phases by run_training, and the state its loop (train), saves and summary share."""
    args: argparse.Namespace
    ckpt: dict                  # the checkpoint it starts from, or None
    ckpt_args: dict             # that checkpoint's options ({} for none)
    continuing: bool            # the checkpoint's run going on (else a new run, fine-tuning where there is one)
    meta: dict
    enc: object                 # the tokenizer, saved in checkpoints
    config: object              # the model's config
    dist: object                # the ranks (Dist)
    device: torch.device
    lr_from: str = None         # where a fine-tune's default lr came from (fine_tune_lr), for the run line
    fine_tune: bool = False     # a fine-tune's run (continued or not), saved: fine_tune_lr's lr of its checkpoints
    #                             (None: a checkpoint from before that, continued, which does not say)
    # (the fields above are start_run's; the rest are filled in by the phases that follow, in run_training)
    dtype: torch.dtype = None
    out_pattern: str = None     # --output_checkpoint, {dataset} and {epoch} to fill in
    best_path: str = None
    metrics_path: str = None
    png_path: str = None
    replaced: list = None       # an earlier run's files --overwrite removes at the first save
    best_goes: bool = None      # the best file is one of them: no bar to this run's evaluations until then
    run_id: str = None
    job: str = None             # under torchrun, the job that rank 0's checkpoints name (see elastic_job)
    train_w: Windows = None
    val_w: Windows = None
    batches: Batches = None
    order_scheme: int = None
    total_steps: int = None     # the lr schedule's steps (without a --time_budget)
    budget: float = None        # --time_budget in seconds, or None
    budget_warmup: float = None
    eval_windows: int = None    # val windows an evaluation takes
    # --batch_size before fitted_batch_size cut it to a small text: what checkpoints record (see trained_batch)
    batch_option: int = None
    bpb_scale: float = None     # its val loss -> bits per byte (bpb_scale), None where its targets hold no text
    p: Progress = None          # where the training stands
    model: GPT = None
    optimizer: torch.optim.Optimizer = None
    scaler: torch.amp.GradScaler = None
    fwd: Forward = None

    def out_path(self):
        """The checkpoint a save writes: named after the epoch in progress; a finished epoch keeps its own number."""
        n = max(1, self.p.epoch + (1 if self.p.epoch_windows else 0))
        return self.out_pattern.replace("{dataset}", self.args.dataset).replace("{epoch}", str(n))

    def last_checkpoint(self):
        """The file holding the run as saved: this run's last save, else the checkpoint it continues, else None."""
        return self.saved["path"] or (self.args.checkpoint if self.continuing else None)

    def kept(self):
        """Where a run ending unsaved stands as saved: its last checkpoint and step, and a later best file."""
        path, step = self.last_checkpoint(), self.saved["step"]
        best = self.saved["best_step"] is not None and self.saved["best_step"] > step and \
            f"{self.saved['best']} (step {self.saved['best_step']:,})"
        if not path:
            return best or "none"
        return f"{path} (step {step:,})" + (f", its best file {best}" if best else "")

    def max_steps_left(self):
        """What is left of --max_steps in this run (None without it)."""
        return self.args.max_steps - self.run_steps if self.args.max_steps else None

    def diverged(self):
        """What a run whose loss or weights became nan or inf can do: the end of its error."""
        fp32 = "" if self.dtype == torch.float32 else " or use --dtype float32"
        return f"lower --lr (now {self.args.lr:g}){fp32}; last good checkpoint: {self.kept()}"

    def save(self, path):
        """Writes the run's checkpoint to path (rank 0), refusing nan or inf weights; the first removes the replaced."""
        args, p, dist, saved, replaced = self.args, self.p, self.dist, self.saved, self.replaced
        t_save = time.time()
        # weights gone nan or inf in the last update (its loss was finite) must not replace a good checkpoint
        if nonfinite(self.model.named_parameters()):
            raise Diverged(f"the weights became nan or inf at step {p.step}: {self.diverged()}")
        if self.best_goes:
            self.best_goes = False
            if path != self.best_path:  # the run's next evaluation makes a best file again
                p.best_val_loss, p.evals_since_best = None, 0
        if dist.main:  # every rank holds the same weights and optimizer state
            meta = self.meta
            self.saving = path  # until written: an error meanwhile is this save's (see save_before_error)
            save_checkpoint(path, self.model, self.enc, optimizer=self.optimizer.state_dict(),
                            scaler=self.scaler.state_dict(), dataset=args.dataset, run=self.run_id, epoch=p.epoch,
                            epoch_step=self.batches.steps_done(p.epoch_windows), epoch_windows=p.epoch_windows,
                            step=p.step, tokens=p.tokens, rng=self.step_rng or rng_state(),
                            order_scheme=self.order_scheme, loss_since_record=self.tally.loss_since_record(),
                            eval_windows=self.eval_windows,
                            # which torchrun job wrote it, for its restarted attempts to continue (restart_point)
                            **({"elastic": {"job": self.job, "max_steps_left": self.max_steps_left()}}
                               if self.job else {}),
                            args=dict(vars(args), world_size=dist.world, batch_size=self.batch_option),
                            best_val_loss=p.best_val_loss, best_at=p.best_at, evals_since_best=p.evals_since_best,
                            val_loss=self.last_val,
                            elapsed=p.elapsed + time.time() - self.t_run,
                            budget_elapsed=self.clock.now(), schedule_origin=p.schedule_origin,
                            budget_done=self.stopped == "time budget", stopped_early=self.stopped == "early stop",
                            **({} if self.fine_tune is None else {"fine_tune": self.fine_tune}),
                            # the last save's (the estimate before the first): this one's is not known until written
                            save_seconds=saved["seconds"],
                            data={"tokenizer_hash": meta.get("tokenizer_hash"), "folder": meta["folder"],
                                  "data_dir": os.path.abspath(args.data_dir),  # (found from another working directory)
                                  "kind": meta.get("kind"),  # text or chat: gen.py --chat warns of a text-only model
                                  "made_with": made_with(meta),  # (for the command that makes it again: load_meta)
                                  "train_tokens": split_tokens(meta, "train"), "val_tokens": split_tokens(meta, "val")})
            self.saving = None
        saved["seconds"] = time.time() - t_save
        saved["total"] += saved["seconds"]
        if path == self.best_path:
            saved.update(best=path, best_step=p.step)
        else:
            saved.update(path=path, step=p.step)
        # what --overwrite replaces goes once this run has a file of its own (stopped before, the earlier run is whole)
        if replaced:
            for f in replaced:
                if os.path.abspath(f) != os.path.abspath(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(f)
            if self.best_path in replaced and path != self.best_path:
                saved["best"] = None
            replaced.clear()
            self.metrics.release()

    def run_ends(self, s_per_step, epoch_steps_left, spent):
        """What ends next and in how many seconds, (seconds, what), for the bar and log lines: the epoch, or the budget
        (spent: its seconds spent) or --max_steps ending the run mid-epoch; s_per_step None: not timed yet."""
        ends = [] if s_per_step is None else [(epoch_steps_left * s_per_step, "epoch")]
        if self.budget:
            ends.append((max(0.0, self.budget - spent), "budget"))
        if self.args.max_steps and s_per_step is not None:
            ends.append((self.max_steps_left() * s_per_step, "run"))
        return min(ends, key=lambda e: e[0], default=None)

    def train(self):
        """The loop, after start_loop and the banner: epochs of steps until epochs, budget, --max_steps or --patience
        end it. On an error it saves the progress since the last save where the weights are whole, and says so."""
        args, p = self.args, self.p
        self.start_loop()
        for line in banner_lines(self):
            say(paint(line, "dim"))
        if self.dist.main:
            warn_low_disk(self)
        self.model.train()
        self.interrupt = GracefulInterrupt()
        try:
            with self.interrupt:
                while p.epoch < args.epochs and self.stopped == "done":
                    at = (p.epoch, p.step)
                    self.train_epoch()
                    if (p.epoch, p.step) == at and self.stopped == "done":
                        # a bug in the epoch's bookkeeping would take it again forever, hanging the run
                        raise RuntimeError(f"epoch {p.epoch + 1} took no step from window {p.epoch_windows:,} of "
                                           f"{len(self.train_w):,} and did not end: a bug, please report it")
        except KeyboardInterrupt:
            # a second Ctrl-C: quit without touching any file, naming the one that holds the run
            print(f"{line_start()}quit at step {p.step:,} without saving; the run's last checkpoint: {self.kept()}",
                  file=sys.stderr)
            raise SystemExit(128 + self.interrupt.quit_by) from None
        except Exception as e:
            self.save_before_error(e)
            error = self.loop_error(e)
            if error is None:
                raise
            raise error from e

    def start_loop(self):
        """What the loop, its records and saves share, set before its first step (metrics, counts, tally, clock)."""
        args, ckpt, p, dist = self.args, self.ckpt, self.p, self.dist
        # the checkpoint's run goes on (not a --reset_epoch): its metrics and train loss since its last record stay
        resumed = self.continuing and not args.reset_epoch
        # (hold: replaced with the rest of the earlier run's files, at the first save)
        self.metrics = Metrics(self.metrics_path, self.png_path, keep_until=ckpt if resumed else None, write=dist.main,
                               hold=bool(self.replaced))
        self.last_val = None
        # the random state at the step in progress's start (None between steps): a save on an error inside the step
        # records it, so the run resumed redoes that step with the same dropout masks
        self.step_rng = None
        # what this run wrote (seconds: the last save's, the checkpoint's until it saves; total: the run's); an earlier
        # best file counts only when continuing its run
        recorded = ckpt.get("save_seconds", 0.0) if self.continuing else 0.0
        self.saved = {"path": None, "step": p.step,
                      "best": existing(self.best_path) if self.continuing else None, "best_step": None,
                      "seconds": recorded if 0 <= recorded < math.inf else 0.0, "total": 0.0}
        # stopped: why the run ends, in its summary's words ("max_steps", "time budget", "early stop"); "done", the word
        # for a run that ends with its epochs, until one of those stops it: the loop goes on while it is "done"
        self.run_steps, self.run_tokens, self.stopped = 0, 0, "done"
        self.saving = None  # the checkpoint being written (see save)
        self.pause_eval = False  # (the step's evaluation is a --max_steps pause: see due_points)
        self.t_run = time.time()
        self.tok_step = self.batches.windows_per_step * args.block_size
        spe = self.batches.steps_per_epoch
        self.log_every, self.eval_every, self.save_every = (interval_steps(args.log_interval, spe),
                                                            interval_steps(args.eval_interval, spe),
                                                            interval_steps(args.save_interval, spe))
        self.tally = TrainTally(self.device, ckpt.get("loss_since_record") if resumed else None, main=dist.main)
        # an evaluation's cost in steps: a batch is a third of a step's compute; half leaves room (tiny: 0.26-0.39)
        eval_steps = min(self.eval_windows, len(self.val_w)) / self.batches.windows_per_step / 2
        self.clock = RunClock(self.budget, p.budget_elapsed, self.t_run, eval_steps)
        self.logged_at = self.clock.agreed  # the clock at the last record or line (see due_points)

    def save_before_error(self, e):
        """Saves the progress since the last save before the run ends on e where the weights are whole: not Diverged,
        in one process only, and not after a failed save or a half-done update (mid_update), where a warning names
        what holds the run instead."""
        p = self.p
        if not self.run_steps or self.saved["step"] == p.step or isinstance(e, Diverged) or self.dist.world != 1:
            return
        if self.saving or getattr(e, "mid_update", False):
            self.not_saved(f"writing {self.saving} failed: the error below" if self.saving else
                           "the error below stopped the optimizer's update half done")
            return
        # a closed pipe (`| head`) ends the run without an error line (run_main): "the error below" would be none
        why = "its output's reader went away (a closed pipe)" if isinstance(e, BrokenPipeError) or \
            closed_pipe_on_windows(e) else "the error below"
        try:
            self.save(self.out_path())
        except Exception as failed:
            self.not_saved(f"a save before stopping on {why} failed: {first_line(failed)}")
            return
        path = self.saved["path"]
        warn(f"saved {path} (step {p.step:,}) before stopping on {why}; once it is dealt with, continue with "
             f"`{self.dist.continue_command(path, self.max_steps_left())}`")

    def not_saved(self, why):
        """The warning of a run that ends without saving its last step (why), naming what holds it (kept)."""
        held = "in its best file alone" if self.saved["best_step"] == self.p.step else "not saved"
        warn(f"step {self.p.step:,} is {held} ({why}); the run's last checkpoint: {self.kept()}")

    def loop_error(self, e):
        """The error the run ends in for the loop's e (out of memory, a rank lost), None for e itself."""
        args, p, dist = self.args, self.p, self.dist
        if is_oom(e) and not isinstance(e, UserError):  # (one GPU's alone, maybe: every_rank)
            return UserError(f"out of memory with --batch_size {args.batch_size} x --block_size {args.block_size}: use "
                             f"a smaller --batch_size (and a larger --grad_accum to keep the tokens per step)"
                             f"{'' if args.recompute_activations else ', --recompute_activations'} or a smaller "
                             f"--block_size ({first_line(e)})", every_rank=True)
        if dist.world > 1 and is_peer_failure(e):
            if self.interrupt.requested:
                # Ctrl-C reached every rank and another quit on it: interrupted too, not waiting for a SIGTERM
                return KeyboardInterrupt()
            last = f"; last checkpoint: {self.last_checkpoint() or 'none'}"  # (a continued run's own, before it saves)
            return timeout_error(e, f"at step {p.step:,}", args.dist_timeout,
                                 "its checkpoint save or first --compile step", last) or UserError(
                f"lost contact with the other ranks at step {p.step:,} (did one fail? see its lines above): "
                f"{first_line(e, 100)}{last}")
        return None

    def train_epoch(self):
        """The steps of the epoch in progress until it ends or the run stops, with its progress bar on a terminal."""
        args, p = self.args, self.p
        epoch = p.epoch
        epoch_step = self.batches.steps_done(p.epoch_windows)  # steps of this epoch done, as checkpoints record it
        steps = self.batches.epoch(epoch, p.epoch_windows)
        # a budget without --epochs ends by the clock: no "epoch 1/1000000"
        of = f"/{args.epochs}" if args.epochs < UNLIMITED_EPOCHS else ""
        bar = EpochBar(total=self.batches.steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}{of}",
                       unit="step", dynamic_ncols=True, disable=not draws_a_bar(sys.stderr) or quiet, file=sys.stderr,
                       ends=lambda s_per_step, steps_left: self.run_ends(s_per_step, steps_left, self.clock.now()))
        try:
            for micro, step_windows, n_targets in steps:  # (see Batches.epoch)
                lr = self.take_step(micro, step_windows, n_targets)
                epoch_step += 1
                bar.update(1)
                end_of_epoch = p.epoch_windows >= len(self.train_w)
                if end_of_epoch:
                    p.epoch, p.epoch_windows = epoch + 1, 0
                # (--max_steps on the run's very last step stops nothing the epochs did not: the run is done)
                if args.max_steps and self.run_steps >= args.max_steps and p.epoch < args.epochs:
                    self.stopped = "max_steps"
                if self.run_steps == 1 and not self.saved["seconds"]:
                    # no save timed yet: estimated from its bytes, for a budget's room and the checkpoint
                    self.saved["seconds"] = checkpoint_bytes(self.model, self.optimizer) / SAVE_BYTES_PER_S
                self.record(lr, epoch_step, end_of_epoch, bar)
                if self.stopped != "done":
                    break
        finally:
            bar.close()
            steps.close()

    def take_step(self, micro, step_windows, n_targets):
        """One optimizer step on micro at the schedule's lr, counted in the Progress and run figures; returns the lr."""
        args, p, dist, clock = self.args, self.p, self.dist, self.clock
        # (several ranks take the clock they agreed on: their weights must stay identical)
        now = clock.now() if dist.world == 1 else clock.agreed
        lr = step_lr(args, p, self.total_steps, self.budget, self.budget_warmup, now, clock.held_back)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if dist.rank and self.config.dropout:
            # rank 0 keeps the saved stream, the others seed each step, so a resumed run draws the same masks
            torch.manual_seed(stream_seed(args.seed, dist.rank, p.step))
        if args.compile and not self.run_steps:
            say(paint("compiling the model: its first step and first evaluation take longer (about a "
                      "minute on a small CPU, seconds once cached)", "dim"))
        self.step_rng = rng_state()  # as the step finds it (see save)
        t_step = time.time()
        step_tokens = step_windows * args.block_size
        self.tally.add(train_step(self.fwd, self.optimizer, self.scaler, micro, self.device, self.dtype,
                                  args.grad_clip, n_targets, dist.world), n_targets, step_tokens)
        self.step_rng = None
        step_s = time.time() - t_step
        if self.run_steps:
            clock.timed_step(step_s)
        elif args.compile:
            say(paint(f"first step {fmt_time(step_s)}", "dim"))
        p.step += 1
        p.epoch_windows += step_windows
        p.tokens += step_tokens
        self.run_steps += 1
        self.run_tokens += step_tokens
        return lr

    def due_points(self, epoch_step, end_of_epoch, save_s, interrupted):
        """What is due after a step (epoch_step of its epoch), the same on every rank (save_s, interrupted: agreed):
        (due_eval, due_save, due_log, due_line: a log line alone, no record). A budget may stop the run; a --max_steps
        stop is evaluated as a pause."""
        args, p = self.args, self.p
        if self.budget:
            self.stopped, due_eval, due_save, due_log = self.clock.decisions(args, p, save_s, self.stopped,
                                                                             end_of_epoch)
        else:
            due_eval = end_of_epoch or (self.eval_every and epoch_step % self.eval_every == 0)
            due_save = end_of_epoch or (self.save_every and epoch_step % self.save_every == 0)
            due_log = epoch_step % self.log_every == 0
        # a --max_steps stop is evaluated (unless --eval_interval 0) as a pause, unjudged, for exact resume
        self.pause_eval = self.stopped == "max_steps" and args.eval_interval > 0 and not due_eval
        due_eval = due_eval or self.pause_eval
        # the last step is logged and every save is at a record, as in the run in one go; a Ctrl-C's step only under
        # torchrun (each rank holds its share of the loss until a record; one process's save holds it)
        due_log = due_log or due_eval or due_save or self.stopped != "done" or (interrupted and self.dist.world > 1)
        # and a line at least every PROGRESS_LINE_S, whatever the intervals (an epoch of a large text may take hours):
        # not a record, which would fall where the machine's speed put it, and split the next one's mean of the loss
        # (runs repeat loss for loss)
        due_line = not due_log and self.clock.agreed - self.logged_at >= common.PROGRESS_LINE_S
        if due_log or due_line:
            self.logged_at = self.clock.agreed
        return due_eval, due_save, due_log, due_line

    def record(self, lr, epoch_step, end_of_epoch, bar):
        """After a step: its record, evaluation and save where due (due_points); Ctrl-C saves and exits here."""
        args, p, dist, saved = self.args, self.p, self.dist, self.saved
        # every rank must take the same decisions: the slowest rank's clock, and Ctrl-C on any
        save_s, interrupted = self.clock.agree(dist, saved["seconds"], self.interrupt.requested)
        if self.budget and self.run_steps == 1:
            self.clock.start_schedule(p)
        t_extra, saves_before = time.time(), saved["total"]  # (an evaluation's time: see clock.evaluated)
        due_eval, due_save, due_log, due_line = self.due_points(epoch_step, end_of_epoch, save_s, interrupted)
        if due_line:
            self.log_line(lr, epoch_step, bar)
        if due_log:  # (every evaluation is at a record: due_eval implies due_log)
            rec, shown, tps = self.log_record(lr, epoch_step, bar, due_eval)
            try:
                if due_eval:
                    self.evaluation(rec, shown, lr, tps)
            except Exception as e:
                # the save on the way out of the error holds only the loss since this record, so this record is written
                # (not a diverged run's, dropped with its steps; its own write failing leaves the evaluation's error)
                if not isinstance(e, Diverged):
                    with contextlib.suppress(OSError):
                        self.metrics.log(rec)
                raise
            self.metrics.log(rec)
        if due_eval:
            self.plot()
        if due_eval and not interrupted:
            # a Ctrl-C during the evaluation stops the run here, not after the next step (every rank agrees it)
            interrupted = bool(dist.agree(self.interrupt.requested)[0])
        if due_save or self.stopped != "done" or interrupted:
            self.save(self.out_path())
        if due_eval:
            self.clock.evaluated(time.time() - t_extra - (saved["total"] - saves_before), saved["seconds"])
        # tokens/s measures training, not evals and saves, nor the first step (a cold torch.compile's)
        if due_log or due_save or self.run_steps == 1:
            self.tally.restart_timer()
        # an interrupt in the run's last step ends it with its summary, not a continuation that is refused
        if interrupted and self.stopped == "done" and p.epoch < args.epochs:
            self.interrupt.exit_saved(dist, p.step, saved["path"], self.max_steps_left())

    def log_record(self, lr, epoch_step, bar, due_eval):
        """The metrics record since the last one (its train loss: the loop's host sync, see TrainTally.take), on the bar
        or else in a log line (unless an evaluation's follows); returns (rec, the train loss as shown, tokens/s)."""
        p = self.p
        # (a record of the first step alone holds its compile: untimed, in the run's speed and in the log line below)
        timed = self.run_steps > 1
        loss_sum, train_loss, tps = self.tally.take(self.dist, timed=timed)
        if not math.isfinite(loss_sum):
            raise Diverged(f"the training loss became {loss_sum} at step {p.step}: {self.diverged()}")
        rec = {"run": self.run_id, "step": p.step, "epoch": p.epoch_at(len(self.train_w)),
               "tokens": p.tokens,
               "train_loss": None if train_loss is None else round(train_loss, 5), "val_loss": None,
               "lr": lr, "tokens_per_s": round(tps, 1),
               "elapsed": round(p.elapsed + time.time() - self.t_run, 2)}
        return rec, self.show_progress(bar, train_loss, tps, lr, epoch_step, line=not due_eval), tps

    def log_line(self, lr, epoch_step, bar):
        """A line the clock adds between records (due_points): the train loss since the last line or record."""
        train_loss, tps = self.tally.take_line(self.dist)
        if train_loss is not None and not math.isfinite(train_loss):
            raise Diverged(f"the training loss became {train_loss} at step {self.p.step}: {self.diverged()}")
        self.show_progress(bar, train_loss, tps, lr, epoch_step, line=True)

    def show_progress(self, bar, train_loss, tps, lr, epoch_step, line):
        """train_loss and tps on the bar, or else in a log line (if line: not when an evaluation's follows); returns
        the train loss as shown."""
        p, timed = self.p, self.run_steps > 1
        shown = "-" if train_loss is None else f"{train_loss:.4f}"
        bar.set_postfix(loss=shown, lr=f"{lr:.1e}", tok_s=f"{tps:,.0f}", refresh=False)
        if bar.disable and line:
            # the first step alone (a cold compile) is no speed, nor a time left from it
            end = self.run_ends(self.tok_step / max(tps, 1e-9) if timed else None,
                                self.batches.steps_per_epoch - epoch_step, self.clock.agreed)
            say(f"step {p.step:,} (epoch {p.epoch_at(len(self.train_w)):.2f}): loss {shown}, lr {lr:.2e}"
                + (f", {tps:,.0f} tokens/s" if timed else "")
                + (f", {end[1]} ends in {fmt_time(end[0])}" if end else ""))
        return shown

    def evaluation(self, rec, shown, lr, tps):
        """An evaluation, added to rec and said; judged for the best file and --patience unless a --max_steps pause."""
        args, p = self.args, self.p
        self.last_val = evaluate(self.model, self.val_w, args.batch_size, self.eval_windows, self.device, self.dtype,
                                 self.fwd, self.dist)
        if not math.isfinite(self.last_val):  # this step's update broke the weights (its loss was
            # finite): not a record (NaN is no JSON) nor a checkpoint, as a nan training loss
            raise Diverged(f"the val loss became {self.last_val} at step {p.step}: {self.diverged()}")
        bpb = bits_per_byte(self.last_val, self.bpb_scale)
        # a best file that goes at the first save (--overwrite) bars nothing (best_goes)
        better, improved = p.judge(self.last_val, rec["epoch"], no_bar=self.best_goes, pause=self.pause_eval)
        rec.update(val_loss=round(self.last_val, 5), val_ppl=round(math.exp(min(self.last_val, 50)), 3),
                   val_bpb=None if bpb is None else round(bpb, 5), best=improved)
        say(eval_line(p.step, rec["epoch"], shown, self.last_val, self.bpb_scale, lr, tps, better, improved,
                      self.pause_eval))
        if improved:
            self.save(self.best_path)
        # (a pause stops nothing: continued with a new --patience, it would stop an evaluation early)
        if args.patience and not self.pause_eval and p.evals_since_best >= args.patience:
            self.stopped = "early stop"
            say(paint(f"no better val loss in {args.patience} evaluations: stopping early "
                      f"(--patience)", "yellow"))

    def plot(self):
        """The loss curve so far, titled with what runs compared side by side differ in (optimizer, lr, vocabulary)."""
        args, config = self.args, self.config
        self.metrics.plot(f"{args.dataset}: {args.model} {config.variant} {config.n_layer}x{config.n_embd}, "
                          f"{config.vocab_size:,} ids, {args.optimizer} lr {args.lr:.2g}")

    def summary(self):
        """The run's end: its loss curve drawn, its summary (run_summary) said in its closing lines and returned."""
        args, p, metrics = self.args, self.p, self.metrics
        # with the records since the last evaluation; saved already, a Ctrl-C here keeps the last curve
        try:
            self.plot()
        except KeyboardInterrupt:
            warn("Ctrl-C: the loss curve not redrawn; the run is done and saved")
        run_time = time.time() - self.t_run
        p.elapsed += run_time
        summary = run_summary(p, self.bpb_scale, len(self.train_w), stopped=self.stopped, run_steps=self.run_steps,
                              tokens=self.run_tokens, elapsed=run_time,
                              tokens_per_s=self.run_tokens / max(run_time, 1e-9),
                              train_tokens_per_s=self.tally.train_tokens_per_s(), val_loss=self.last_val,
                              checkpoint=self.saved["path"], best_checkpoint=self.saved["best"], metrics=metrics.path,
                              plot=existing(metrics.png_path))
        go_on = self.dist.continue_command(self.saved["path"], None) if self.stopped == "max_steps" and \
            self.saved["path"] and (self.budget or p.epoch < args.epochs) else None
        for line in summary_lines(summary, self.meta, self.bpb_scale, args, self.budget, self.pause_eval, go_on):
            say(line)
        return summary


def main(argv=None):
    """`python train.py ARGV` from Python (a list, or one string split as a shell would); returns the run's summary.
    Bad input and Ctrl-C end as the command's, in a line and SystemExit; train(parse_args(argv)) raises UserError."""
    try:
        return run_main(lambda: train(parse_args(argv)), ranks=True)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # freed during the interpreter's finalization, DDP's and gloo's objects can abort it (pytorch#179291)
            gc.collect()
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    retain_freed_memory()  # +30-40% a CPU step (see common.py); process-wide, so not in main()
    cap_memory()  # a step too large for the machine: "out of memory ... use a smaller --batch_size", not killed
    main()
