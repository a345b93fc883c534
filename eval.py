"""
Evaluate a checkpoint on prepared datasets: loss, perplexity and bits per byte, and for conversation sets how
the model ends its replies. One row per dataset, as a table or JSON; of several checkpoints, one table to compare.

    python eval.py models/dailydialog_best.pt                          # the dataset it was trained on
    python eval.py models/story_best.pt --dataset story dailydialog     # a row for each
    python eval.py models/chat_best.pt --samples 50 --seed 1 --json results.json
    python eval.py models/chat_best.pt --prompt_file prompts.txt        # replies to a fixed list instead
    python eval.py runs/*/story_best.pt                                 # runs compared: a row per checkpoint

Loss is train.py's evaluate() over the split's windows (all of them, or --eval_batches batches spread over the split:
side by side, as training reads them, so each token is scored once but the split's first and its last (tokens - 1)
mod --block_size, fewer than a window), on assistant tokens only for conversation sets; perplexity is exp(loss);
bits per byte, the scored targets' bits over their own text's bytes (train.bpb_scale; on conversation sets the
replies' text), compare models across tokenizers. Windows default to the checkpoint's training --block_size, so the
numbers compare with its training log (whose evaluations take --eval_batches 40 batches spread over the split, of its
batch size on each torchrun process, as its first run took them when continued in others: the checkpoint's
eval_windows; the same numbers with --eval_batches 40 --batch_size <its batch size x processes> and its --dtype,
which auto makes bf16 on CPUs where it outruns fp32; close ones over all windows).

Replies, for each conversation set: --samples conversations spread evenly over the split, each cut after its
first user message, are answered as gen.py --chat answers (gen.chat_reply, sampling with --temp/--top_k/--top_p/
--repetition_penalty); "ended" is the share of replies closed by <|im_end|> within --max_tokens new tokens, "mean
tokens" their mean length without the closing token. With --prompt_file FILE the first --samples lines of the file
(one user message each) are the prompts instead, in a row of their own. Sampling restarts from --seed for each row,
so the same checkpoint and options give the same numbers.

Several checkpoints make one table, a row per checkpoint and dataset (each its own dataset unless --dataset), each
row's numbers those of eval.py on that checkpoint alone (one model loaded at a time). Rows are led by the
checkpoint's shortest distinguishing path (a, b of runs/*/story_best.pt) and the header's facts that differ between
the checkpoints (params, optimizer, lr, vocab, step, tokens trained...). Every checkpoint is checked first: a
--dataset of another tokenizer than one's is an error before any is evaluated. --json writes a list, in the order
given, of what eval.py writes of each alone; of one checkpoint (a glob that matched one), that object alone, as ever.
"""
import common  # first (it is light): Ctrl-C while torch loads then ends in one line, not a traceback from its import
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import itertools
import json
import math
import os
import re
import sys

import numpy as np

from checkpoint import (CHECKPOINT_HELP, add_checkpoint_argument, checkpoint_config, load_checkpoint, load_model,
                        parse_checkpoint)
from common import (ArgumentParser, UserError, add_device_arguments, at_least, atomic_write_text, cap_memory,
                    check_output, command_words, expand_pattern, file_identity, first_line, fmt_count,
                    is_dataset_folder, is_oom, nonempty, path_arg, pick_device, progress_bar, retain_freed_memory,
                    run_main, seeded_generator)
from gen import (CHAT_STOPS, add_sampling_arguments, chat_reply, columns, default_checkpoint, inference_dtype,
                 read_prompt_file, warn_if_trained_on_text)
from prepare import document_ends
from setup_tokenizer import IM_END, parse_chat
from train import (Windows, bits_per_byte, bpb_scale, checkpoint_data, default_data_dir, eval_indices, evaluate,
                   load_meta, packing_warning, pick_tokenizer, trained_data)


# -----------------------------------------------------------------------------
# prompts and replies

def split_prompts(meta, split, enc, n):
    """Up to n conversations of a prepared split, each cut after its first user message, from documents spread
    evenly over the split; one without a user message (packing cut it off) gives way to the next not taken."""
    ids = np.memmap(os.path.join(meta["folder"], f"{split}.bin"), dtype=meta["dtype"], mode="r")
    ends = document_ends(ids, enc.eot_token)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    real = ends - starts > 1  # a lone <|endoftext|> is packing padding
    starts, ends = starts[real].tolist(), ends[real].tolist()
    docs = len(starts)
    prompts, tried = [], set()  # (no documents, or n < 1: linspace picks none)
    for pick in np.unique(np.linspace(0, docs - 1, max(0, min(n, docs))).round().astype(int)).tolist():
        for k in itertools.chain(range(pick, docs), range(pick)):
            if k in tried:
                continue
            tried.add(k)
            messages = parse_chat(enc, ids[starts[k]:ends[k]])
            # up to and including the first user message: what came before it is context
            user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if user is not None:
                prompts.append(messages[:user + 1])
                break
    return prompts


def reply_stats(model, enc, histories, max_tokens, seed, name=None, **sampling):
    """Answer each history [{role, content}] as gen.py --chat does: {replies, ended (share closed by <|im_end|>),
    mean_tokens (new tokens without the closing one)}. name: the row's, for the warning (which row's prompts)."""
    device = next(model.parameters()).device
    generator = seeded_generator(device, seed)
    ended, lengths, short = 0, [], 0
    for history in histories:
        info = {}
        # gen.py's warning for a prompt the context cuts: said once for them all, below
        _, stopped_by = chat_reply(model, enc, history, max_tokens, info=info, warn=False, generator=generator,
                                   **sampling)
        ended += stopped_by == IM_END
        lengths.append(info["new_tokens"] - (stopped_by in CHAT_STOPS))
        short += info["short"]
    n = len(histories)
    if short:
        whose = f"{name}: " if name else ""
        print(f"warning: {whose}{short} of {n} prompts did not fit the context ({model.config.block_size}) with room "
              f"for --max_tokens {max_tokens}: cut at the start or given fewer tokens, as gen.py --chat does",
              file=sys.stderr)
    return {"replies": n, "ended": ended / n if n else None, "mean_tokens": sum(lengths) / n if n else None}


# -----------------------------------------------------------------------------
# evaluation

def perplexity(loss):
    """e^loss: inf past float's range (math.exp raises there), nan for a nan loss."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def checked_datasets(path, ckpt, datasets=None, data_dir=None, block_size=None):
    """(datasets, data_dir, their load_meta metas, block_size) to evaluate the checkpoint at path (loaded: ckpt) on;
    a bad name, a tokenizer not the checkpoint's or a --block_size past its context fails before any evaluation."""
    trained_on, trained_in = checkpoint_data(ckpt)
    if not datasets and not trained_on:
        raise UserError(f"{path} does not name the data it was trained on: pass --dataset NAME")
    # the folder its run read and how that data was made, for load_meta's line where it is gone (no --data_dir given)
    trained = None if data_dir else trained_data(path, ckpt)
    data_dir = data_dir or (trained_in if datasets in (None, [], [trained_on]) else default_data_dir(ckpt))
    datasets = datasets or [trained_on]
    # the prepare hint then uses the model's vocabulary and context (train.py's start_run)
    metas = [load_meta(data_dir, name, path, trained if name == trained_on else None) for name in datasets]
    for meta in metas:
        pick_tokenizer(argparse.Namespace(checkpoint=path, tokenizer=None), meta, ckpt)
    context = checkpoint_config(ckpt, path).block_size
    block_size = block_size or (ckpt.get("args") or {}).get("block_size") or context
    if block_size > context:
        raise UserError(f"{path}: --block_size {block_size} is longer than the model's context ({context}); "
                        f"use --block_size {context} or less")
    return datasets, data_dir, metas, block_size


def evaluate_checkpoint(path, datasets=None, data_dir=None, split="val", block_size=None, batch_size=16,
                        eval_batches=None, samples=50, prompt_file=None, max_tokens=128, seed=1337, temp=0.8,
                        top_k=200, top_p=None, repetition_penalty=1.0, device="auto", dtype="auto"):
    """Evaluate the checkpoint at path on each dataset (default: its own): a dict of the checkpoint's description,
    the device and dtype, and a row per dataset (plus one for a prompts file): dataset, windows, loss, ppl, bpb,
    replies, ended, mean_tokens (None where not measured)."""
    ckpt = load_checkpoint(path, optimizer=False)
    ckpt_args = ckpt.get("args") or {}
    datasets, data_dir, metas, block_size = checked_datasets(path, ckpt, datasets, data_dir, block_size)
    prompt_list = read_prompt_file(prompt_file)[:samples] if prompt_file else None
    if prompt_list:  # a story model's replies never end their turn: an "ended" of 0% is that, said first
        warn_if_trained_on_text(path, ckpt, "its replies to --prompt_file (answered as a chat; gen.py --prompt_file "
                                            "continues them as text)")
    dev = pick_device(device)
    amp = inference_dtype(dev, dtype)
    model, enc, _ = load_model(ckpt, dev, name=path)
    sampling = dict(dtype=amp, temperature=temp, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    no_replies = {"replies": None, "ended": None, "mean_tokens": None}

    rows = []
    for name, meta in zip(datasets, metas):
        windows = Windows(meta, split, block_size, evaluating=True)
        warning = packing_warning(meta, block_size, model.config.block_size)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        eval_windows = eval_batches * batch_size if eval_batches else len(windows)  # None: every window
        n_windows = len(eval_indices(len(windows), eval_windows))
        # every window of a large split is hours on a CPU: a bar with the time left, or off a terminal a line a minute
        with progress_bar(f"{name} {split}", n_windows, "windows") as bar:
            try:
                loss = evaluate(model, windows, batch_size, eval_windows, dev, amp, progress=bar)
            except (RuntimeError, MemoryError) as e:  # (GPT-2's logits alone: 3.3 GB a batch of 16 x 1024)
                if not is_oom(e):
                    raise
                smaller = "--batch_size" if batch_size > 1 else "--block_size"  # (at 1, a smaller one is none)
                raise UserError(f"out of memory evaluating {path} in batches of --batch_size {batch_size} x "
                                f"--block_size {block_size}: use a smaller {smaller} ({first_line(e)})") from None
        bpb = bits_per_byte(loss, bpb_scale(windows, eval_windows, enc))
        row = {"dataset": name, "windows": n_windows, "loss": loss, "ppl": perplexity(loss), "bpb": bpb, **no_replies}
        if meta.get("has_mask") and samples and prompt_list is None:
            row.update(reply_stats(model, enc, split_prompts(meta, split, enc, samples), max_tokens, seed, name,
                                   **sampling))
        rows.append(row)
    if prompt_list:
        rows.append({"dataset": prompt_file, "windows": None, "loss": None, "ppl": None, "bpb": None,
                     **reply_stats(model, enc, [[{"role": "user", "content": p}] for p in prompt_list],
                                   max_tokens, seed, prompt_file, **sampling)})
    config = model.config
    return {
        "checkpoint": path, "model": ckpt_args.get("model"), "variant": config.variant, "n_layer": config.n_layer,
        "n_embd": config.n_embd, "params": model.num_params(non_embedding=False), "trained_on": ckpt.get("dataset"),
        "step": ckpt.get("step"), "tokens": ckpt.get("tokens"), "tokenizer": enc.name, "vocab_size": config.vocab_size,
        "split": split, "block_size": block_size,
        # what a reader comparing runs diffs: the options the checkpoint trained with (--lr, --optimizer...), and the
        # device and precision of these numbers (bf16's loss is not fp32's in the last digits)
        "train_args": ckpt_args, "device": str(dev), "dtype": str(amp).removeprefix("torch."),
        "sampling": {"samples": samples, "max_tokens": max_tokens, "temperature": temp, "top_k": top_k,
                     "top_p": top_p, "repetition_penalty": repetition_penalty, "seed": seed},
        "rows": rows,
    }


def facts(result):
    """What the table's header says of a checkpoint, {label: text}: of several compared, those that differ between
    them are columns, the rest said once."""
    r, how = result, result.get("train_args") or {}
    return {"model": f"{r['model'] or 'model'} {r['variant']} {r['n_layer']}x{r['n_embd']}",
            "params": fmt_count(r["params"]), "trained on": r["trained_on"] or "-",
            "step": "-" if r["step"] is None else f"{r['step']:,}",
            # runs of other batch sizes, or of a --time_budget on other machines, compare by the tokens they saw
            "tokens trained": "-" if r.get("tokens") is None else fmt_count(r["tokens"]),
            "optimizer": how.get("optimizer") or "-",
            "lr": "-" if how.get("lr") is None else f"{how['lr']:.2g}", "tokenizer": r["tokenizer"],
            "vocab": f"{r['vocab_size']:,}" if r.get("vocab_size") else "-", "block": str(r["block_size"])}


def short_names(paths):
    """Each path less the folders and file name they all share (runs/a/x_best.pt, runs/b/x_best.pt: a, b), and the
    pattern they fill (runs/*/x_best.pt; None where they share no part). Each keeps one part at least."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    head = tail = 0
    while all(len(q) > head + 1 for q in parts) and len({q[head] for q in parts}) == 1:
        head += 1
    while all(len(q) > head + tail + 1 for q in parts) and len({q[-1 - tail] for q in parts}) == 1:
        tail += 1
    first = parts[0]
    pattern = os.sep.join([*first[:head], "*", *first[len(first) - tail:]]) if head or tail else None
    return [os.sep.join(q[head:len(q) - tail]) for q in parts], pattern


def format_table(result):
    """The result of evaluate_checkpoint as a header and one aligned row per dataset, without the replies' columns
    where no row sampled any. A list of results is one table, a row per checkpoint and dataset, led by the
    checkpoint's short_names and the facts that differ between them."""
    results = [result] if isinstance(result, dict) else result
    r, s = results[0], results[0]["sampling"]  # (the sampling options are the command's: every result's the same)
    table = [(i, row) for i, res in enumerate(results) for row in res["rows"]]
    sampled = any(row["replies"] is not None for _, row in table)
    replies = (f"; replies: at most {s['max_tokens']} new tokens, temp {s['temperature']:g}, "
               f"top_k {s['top_k'] or 'off'}" + (f", top_p {s['top_p']:g}" if s["top_p"] else "")
               + (f", repetition_penalty {s['repetition_penalty']:g}" if s["repetition_penalty"] != 1 else "")
               + f", seed {s['seed']}") if sampled else ""
    lead = []  # (title, cell of each result) for the columns before the dataset's
    if len(results) == 1:
        trained = f", trained on {r['trained_on']}" + (f" to step {r['step']:,}" if r["step"] is not None else "") \
            if r["trained_on"] else ""
        # as train.py's banner says them: the headers of runs compared side by side (adamw and muon, two --lr, two
        # vocabularies, whose tokenizers' names are hashes) read the same
        how = r.get("train_args") or {}
        if how.get("optimizer") and how.get("lr") is not None:
            trained += f" with {how['optimizer']} lr {how['lr']:.2g}"
        lines = [f"{r['checkpoint']}: {r['model'] or 'model'} {r['variant']} ({r['n_layer']} layers x {r['n_embd']}, "
                 f"{fmt_count(r['params'])} parameters){trained}; tokenizer {r['tokenizer']}"
                 + (f" ({r['vocab_size']:,} ids)" if r.get("vocab_size") else ""),
                 f"{r['split']} split in windows of {r['block_size']} tokens{replies}", ""]
    else:
        each = [facts(res) for res in results]
        differ = [k for k in each[0] if len({f[k] for f in each}) > 1]
        # each on its own dataset: the dataset column says what each was trained on
        own = all(row["dataset"] == res["trained_on"] for res in results for row in res["rows"] if row["windows"])
        names, pattern = short_names([res["checkpoint"] for res in results])
        lead = [("checkpoint", names), *((k, [f[k] for f in each]) for k in differ if not (own and k == "trained on"))]
        same = ", ".join(f"{k} {v}" for k, v in each[0].items() if k not in differ and k != "block" and v != "-")
        windows = "the block column's tokens" if "block" in differ else f"{r['block_size']} tokens"
        lines = [f"{len(results)} checkpoints" + (f" {pattern}" if pattern else "") + (f": {same}" if same else ""),
                 f"{r['split']} split in windows of {windows}{replies}", ""]

    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    def wide(name):
        return sum(map(columns, name))

    def padded(name, width):  # by terminal columns: a CJK character takes two
        return name + " " * (width - wide(name))

    widths = [max(wide(title), *map(wide, cells)) for title, cells in lead]
    width = max(len("dataset"), *(wide(row["dataset"]) for _, row in table))
    lines.append("".join(padded(title, w) + "  " for (title, _), w in zip(lead, widths))
                 + f"{'dataset':<{width}}  {'windows':>7}  {'loss':>7}  {'ppl':>9}  {'bpb':>6}"
                 + (f"  {'replies':>7}  {'ended':>6}  {'mean tokens':>11}" if sampled else ""))
    for i, row in table:
        lines.append("".join(padded(cells[i], w) + "  " for (_, cells), w in zip(lead, widths))
                     + f"{padded(row['dataset'], width)}  {cell(row['windows'], ',d'):>7}  "
                     f"{cell(row['loss'], '.4f'):>7}  {cell(row['ppl'], ',.2f'):>9}  {cell(row['bpb'], '.3f'):>6}"
                     + (f"  {cell(row['replies'], 'd'):>7}  {cell(row['ended'], '.0%'):>6}  "
                        f"{cell(row['mean_tokens'], '.1f'):>11}" if sampled else ""))
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# the command line

def names_checkpoint(name):
    """Whether a --dataset value is a checkpoint's path: a dataset's name has no folder in it (prepare.py --name)."""
    return bool(name) and (os.sep in name or "/" in name or name.endswith(".pt") or os.path.isfile(name)
                           or os.path.isfile(os.path.join(name, "config.json")))  # (a Hugging Face folder)


def parse_args(argv=None):
    p = ArgumentParser("eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_argument(p, CHECKPOINT_HELP + "; several (runs/*/story_best.pt): one table comparing them")
    p.add_argument("--dataset", type=nonempty, nargs="+",
                   help="prepared datasets to evaluate on, a row each (default: the one the checkpoint was trained on)")
    p.add_argument("--data_dir", type=path_arg,
                   help="where prepared datasets live (default: the checkpoint's, else data)")
    p.add_argument("--split", choices=["val", "train"], default="val", help="which split (default: val)")
    p.add_argument("--block_size", type=at_least(1), help="window length (default: the checkpoint's training one)")
    p.add_argument("--batch_size", type=at_least(1), default=16, help="windows per forward pass (default: 16)")
    p.add_argument("--eval_batches", type=at_least(1),
                   help="at most this many batches, spread over the split (default: every window)")
    p.add_argument("--samples", type=at_least(0), default=50,
                   help="replies sampled per conversation set, 0 = none (default: 50)")
    # --prompt_file, as gen.py names the same file in the same format (--prompts, its first name: below)
    p.add_argument("--prompt_file", type=path_arg, metavar="FILE",
                   help="answer the first --samples prompts of this file (one per line, or JSON lines with a "
                        "\"prompt\" field, as gen.py --prompt_file) instead")
    p.add_argument("--max_tokens", type=at_least(1), default=128, help="new tokens a reply may take (default: 128)")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=int, default=1337, help="seed of the sampled replies (default: 1337)")
    add_device_arguments(p)
    p.add_argument("--json", type=path_arg, metavar="PATH",
                   help="also write the results as JSON to PATH; - prints JSON instead of the table")
    # --prompts, --prompt_file's old name, still works unshown: read as --prompt_file before parsing, as an option of
    # its own would make "--prompt" ambiguous
    argv = [re.sub(r"^--prompts(?==|$)", "--prompt_file", a) for a in command_words(argv)]
    args, extra = p.parse_known_args(argv)
    # `eval.py runs/*/x_best.pt`, to compare runs: argparse takes the first, and the rest come back unrecognized
    more = [a for a in extra if not a.startswith("-") and names_checkpoint(a)]
    if len(more) < len(extra):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    # `a.pt --checkpoint b.pt`: two, compared (parse_checkpoint refuses two, for the scripts that take one)
    if args.checkpoint and args.checkpoint_option:
        more.insert(0, args.checkpoint_option)
        args.checkpoint_option = None
    args = parse_checkpoint(p, args)
    # `eval.py --dataset story models/x.pt`: --dataset takes several names, so it took the checkpoint too (all of them,
    # of `--dataset story runs/*/x_best.pt`)
    names = args.dataset or []
    n = len(names)

    def another_checkpoint(name):
        # (with the checkpoint given, a dataset's name that is also a file here, `story`, stays a dataset's; a
        # prepared dataset's folder, `--dataset data/story`, is no checkpoint: load_meta's error names it)
        return not is_dataset_folder(name) and (names_checkpoint(name) if args.checkpoint is None else
                                                 any(c in name for c in (os.sep, "/")) or name.endswith(".pt"))
    while n and another_checkpoint(names[n - 1]):
        n -= 1
    args.checkpoints = [*([args.checkpoint] if args.checkpoint else []), *names[n:], *more]  # (several: compared)
    # in the order given (`a.pt b.pt --dataset story c.pt`: a, b, c): argparse takes one, --dataset's list those after
    # it, and the rest come back unrecognized
    args.checkpoints.sort(key=lambda c: next((i for i, a in enumerate(argv) if a == c or a.endswith("=" + c)),
                                             len(argv)))
    if args.checkpoints:
        args.checkpoint = args.checkpoints[0]
    if names[n:]:
        args.dataset = names[:n]
        if not args.dataset:
            p.error(f"--dataset needs a dataset's name before the checkpoint {names[n]}")
    if args.prompt_file and args.samples == 0:  # (else the file's row would be left out without a word)
        p.error(f"--samples 0 answers none of --prompt_file {args.prompt_file}'s prompts: give a count, or drop "
                f"--prompt_file")
    return args


def finite_or_none(x):
    """x with every float that is not finite (inf, nan) as None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_or_none(v) for v in x]
    return x


@common.removing_made_folders()
def main(argv=None):
    args = parse_args(argv)
    # a pattern the shell left (quoted; Windows' shells leave * to the program) is expanded here, as the shell would
    paths = [p for given in args.checkpoints or [default_checkpoint()] for p in expand_pattern(given, "checkpoint")]
    # a checkpoint given twice (`a.pt a.pt`, a glob and a name it matches, ./a.pt and a.pt) is one row, not two
    kept = {}
    for path in paths:
        key = file_identity(path)
        if key in kept:  # (said: a table short of the rows counted would look like a lost one)
            print(f"note: {path} is given twice" + (f" (as {kept[key]})" if path != kept[key] else "")
                  + ": evaluated once", file=sys.stderr)
        kept.setdefault(key, path)
    paths = list(kept.values())
    json_path = args.json if args.json != "-" else None  # - is stdout
    if json_path:  # checked before the evaluation, not after (nor over a dataset's files: check_output refuses those)
        check_output(json_path, "--json", inputs={"--prompt_file": args.prompt_file, "checkpoint": paths})
    if len(paths) > 1:  # each checked before the first is evaluated: a dataset of another tokenizer fails at once
        for path in paths:
            checked_datasets(path, load_checkpoint(path, optimizer=False), args.dataset, args.data_dir,
                             args.block_size)
    # one model at a time (evaluate_checkpoint's, freed as it returns), each as eval.py on it alone: its own dataset
    # unless --dataset, sampling from --seed
    results = []
    for i, path in enumerate(paths, 1):
        if len(paths) > 1:  # whose progress and warnings follow (stderr: stdout is the table)
            print(f"{path} ({i} of {len(paths)})", file=sys.stderr)
        results.append(evaluate_checkpoint(
            path, datasets=args.dataset, data_dir=args.data_dir, split=args.split,
            block_size=args.block_size, batch_size=args.batch_size, eval_batches=args.eval_batches,
            samples=args.samples, prompt_file=args.prompt_file, max_tokens=args.max_tokens, seed=args.seed,
            temp=args.temp, top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
            device=args.device, dtype=args.dtype))
    result = results[0] if len(results) == 1 else results  # several: a list of what each alone writes
    # a loss that is not finite (a model gone to inf) is null: json.dumps writes Infinity, which is not JSON
    text = json.dumps(finite_or_none(result), indent=2)
    if args.json == "-":
        print(text)
        return result
    print(format_table(result))
    if json_path:
        atomic_write_text(json_path, text + "\n")
        print(f"wrote {json_path}", file=sys.stderr)  # (stderr: stdout is the table, which may be piped to a file)
    return result


if __name__ == "__main__":
    retain_freed_memory()  # a CPU step reuses its pages (see common.py); process-wide, so not in main()
    cap_memory()  # a batch too large for the machine: "out of memory ... use a smaller --batch_size", not killed
    run_main(main)
