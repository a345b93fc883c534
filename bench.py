"""
How fast is this machine for this project? One table: the matmul peak, training tokens/s and MFU per preset
(and on a GPU the peak memory of a training step), generation tokens/s with and without the KV cache, and
tokenization speed. The table is printed and appended, with a description of the machine, to BENCHMARKS.md (so
numbers from different machines and commits sit side by side).

    python bench.py                                   # CPU: tiny and small; GPU: gpt2
    python bench.py --only train --model small --dtype bfloat16,float32 --batch_size 16
    python bench.py --only ratio                      # tiny, a 4096-token vocabulary (chosen dtype) vs GPT-2's in fp32
    python bench.py --device cuda --compile           # GPU: TFLOP/s, compiled model, flash attention
    python bench.py --only train,ratio --optimizer muon,adamw   # the training rows with each optimizer
    python bench.py --quick --no_write                # seconds: tiny sizes (what the test runs)

Sections (--only, comma-separated): peak, train, gen, ratio, prepare. MFU = model FLOPs per token
(model.flops_per_token, PaLM appendix B) x tokens/s over the matmul peak measured here for the same dtype, so it is
the share of what this machine can really do, not of a datasheet number.

Every timing follows a warm-up, with the device synchronised around it; training and prepare rows are the median of
several repetitions (on a GPU each of 5 steps back to back, as train.py runs them), generation rows one run of
--new_tokens tokens each.
On a shared machine (other processes busy) the numbers drop and scatter; --note records that in BENCHMARKS.md.
"""
import common  # first (it is light): Ctrl-C while torch loads then ends in one line, not a traceback from its import
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import contextlib
import datetime
import os
import platform
import random
import shlex
import statistics
import time

import torch

from common import (AUTO_DTYPE, ArgumentParser, UserError, add_device_arguments, at_least, atomic_write_text, autocast,
                    check_output, command_words, cpu_bf16_is_faster, cpu_has_bf16, cpu_info, first_line, is_oom,
                    pick_device, pick_dtype, path_arg, not_utf8, retain_freed_memory, run_main, seeded_generator,
                    DTYPES)
from model import GPT, OPTIMIZERS, PRESETS, VARIANTS, make_config, physical_memory
from train import DEFAULTS as TRAIN_DEFAULTS, Forward, train_step

SECTIONS = ("peak", "train", "gen", "ratio", "prepare")
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
GPT2_VOCAB = 50259  # what make_config gives by default: GPT-2's 50257 + 2 ChatML tokens
# a bound on the size options: terabytes at least, and near int64's limit torch overflows (a traceback); below it,
# fits() in run() turns a size that does not fit into one line
MAX_SIZE = 2**40


# -----------------------------------------------------------------------------
# timing

_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def clock():
    """Seconds on --clock's clock: wall time, or this process's CPU time (which other processes do not inflate)."""
    return _clock()


def set_clock(name):
    global _clock
    _clock = _CLOCKS[name]


def sync(device):
    """Wait for queued device work, so a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def back_to_back(device):
    """Calls a GPU sample runs back to back, as train.py runs its steps: a sync after each would idle the GPU while
    the host launches the next one's kernels. A CPU runs each call to its end anyway."""
    return 5 if device.type == "cuda" else 1


def timed(fn, device, warmup, iters, group=1):
    """Seconds per call of fn(), `iters` samples after `warmup` untimed calls (allocation, kernel selection,
    torch.compile); each sample times `group` calls back to back, the device synchronised around them."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = clock()
        for _ in range(group):
            fn()
        sync(device)
        times.append((clock() - t0) / group)
    return times


def timed_interleaved(fns, device, warmup, iters):
    """timed() for several functions called in turn (a b a b ...): a burst of other load hits all alike, so their
    ratio is steadier than that of two separate runs."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, ts in zip(fns, times):
            t0 = clock()
            fn()
            sync(device)
            ts.append(clock() - t0)
    return times


def flop_unit(device):
    # a CPU does tens to hundreds of GFLOP/s, a GPU hundreds of TFLOP/s
    return (1e12, "TFLOP/s") if device.type == "cuda" else (1e9, "GFLOP/s")


def row(section, name, value, unit, dtype=None, mfu=None, note="", optimizer=None):
    # mem: peak bytes allocated on a GPU (training rows), else None; optimizer: the training rows' (and the ratio's)
    return dict(section=section, name=name, dtype=SHORT.get(dtype, "") if dtype is not None else "",
                value=float(value), unit=unit, mfu=mfu, note=note, mem=None, optimizer=optimizer)


# -----------------------------------------------------------------------------
# peak: large square matmuls

def measure_peak(device, dtype, n, warmup=2, iters=5):
    """FLOP/s of an n x n @ n x n matmul in dtype (2 n^3 FLOPs), median of iters."""
    # at most a, b and a@b, or a and b while b's fp32 randn is converted: 12 bytes an element in fp32, 8 in bf16
    itemsize = dtype.itemsize
    need, have = n * n * max(3 * itemsize, 2 * itemsize + 4), physical_memory()
    if device.type == "cpu" and have and need > have:  # checked first: the system would kill the process without a word
        raise MemoryError(f"{need / 2**30:.3g} GiB, more than the machine's {have / 2**30:.3g} GiB")
    g = seeded_generator("cpu", 0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    t = statistics.median(timed(lambda: torch.mm(a, b), device, warmup, iters, back_to_back(device)))
    return 2 * n ** 3 / t


def bench_peak(device, dtypes, sizes, warmup=2, iters=5):
    """Rows for each dtype and size, and {dtype: best FLOP/s}, the peak MFU is measured against (the best size: an
    unlucky one would flatter MFU)."""
    scale, unit = flop_unit(device)
    rows, peaks = [], {}
    group = back_to_back(device)
    runs = f"median of {iters}" + (f" runs of {group}" if group > 1 else "")
    for dtype in dtypes:
        tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        for n in sizes:
            f = measure_peak(device, dtype, n, warmup, iters)
            peaks[dtype] = max(peaks.get(dtype, 0.0), f)
            rows.append(row("peak", f"matmul {n}x{n}", f / scale, unit, dtype,
                            note=runs + (" (TF32 allowed)" if tf32 else "")))
    return rows, peaks


# -----------------------------------------------------------------------------
# training

def bench_config(preset, block_size=None, vocab_size=None, variant=None):
    """make_config's, a size it refuses as one line."""
    try:
        return make_config(preset, block_size=block_size, vocab_size=vocab_size, variant=variant)
    except ValueError as e:
        raise UserError(str(e))


def build_model(preset, device, block_size=None, vocab_size=None, variant=None):
    torch.manual_seed(0)
    return GPT(bench_config(preset, block_size, vocab_size, variant)).to(device)


def make_train_step(model, device, dtype, batch_size, compile=False, optimizer=OPTIMIZERS[0]):
    """(step, compiled()): step() is train.py's training step on a fixed synthetic batch (no data loading timed);
    compiled() says whether the steps run compiled (known after the first one)."""
    cfg = model.config
    model.train()
    g = seeded_generator("cpu", 0)
    # on the host, pinned for a GPU, as train.py's loader hands them over (train_step counts the targets there)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size), generator=g)
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    # a small lr: random tokens must not blow the weights up over the warm-up and timed steps
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-4, device_type=device.type, optimizer=optimizer,
                                    dtype=dtype)
    fwd = Forward(model, compile)  # train.py's: a compile that fails at the first call warns and runs eager
    # fp16's loss scaling and train.py's default gradient clipping are part of the step timed
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    micro = [(x, y, None, None)]

    def step():
        train_step(fwd, opt, scaler, micro, device, dtype, TRAIN_DEFAULTS["grad_clip"])

    return step, lambda: fwd.fn is not fwd.model


def model_name(model):
    # the preset the model was made from, for the table (the variant too when it is not the preset's own)
    cfg = model.config
    for name, p in PRESETS.items():
        if all(getattr(cfg, k) == v for k, v in p.items() if k not in ("block_size", "variant")):
            return name + ("" if cfg.variant == p.get("variant", "gpt2") else f"-{cfg.variant}")
    return f"L{cfg.n_layer}-C{cfg.n_embd}"


def train_row(model, device, dtype, batch_size, seconds, peaks, compiled, optimizer, iters, group=1):
    cfg = model.config
    scale, unit = flop_unit(device)
    t = statistics.median(seconds)
    tps = batch_size * cfg.block_size / t
    achieved = tps * model.flops_per_token(cfg.block_size)
    peak = peaks.get(dtype)
    mfu = achieved / peak if peak else None
    name = f"{model_name(model)} B{batch_size} T{cfg.block_size} V{cfg.vocab_size}"
    note = (f"step {t * 1e3:.0f} ms, {achieved / scale:.1f} {unit}, {optimizer}" + (", compiled" if compiled else "")
            + f", median of {iters}" + (f" runs of {group} steps" if group > 1 else ""))
    return row("train", name, tps, "tokens/s", dtype, mfu, note, optimizer)


def bench_train(preset, device, dtype, peaks, batch_size, block_size=None, vocab_size=None, variant=None,
                compile=False, warmup=2, iters=5, recompute_activations=False, optimizer=OPTIMIZERS[0]):
    if device.type == "cuda":  # this preset's peak alone: the count restarts from what is allocated now
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(preset, device, block_size, vocab_size, variant)
    model.recompute_activations = recompute_activations  # train.py's option of that name
    step, compiled = make_train_step(model, device, dtype, batch_size, compile, optimizer=optimizer)
    # torch.compile compiles on the first call: give it an extra warm-up step so no timed step recompiles
    group = back_to_back(device)
    seconds = timed(step, device, warmup + (1 if compile else 0), iters, group)
    r = train_row(model, device, dtype, batch_size, seconds, peaks, compiled(), optimizer, iters=iters, group=group)
    if recompute_activations:
        r["note"] += ", activations recomputed"
    if device.type == "cuda":  # weights, AdamW state, activations and gradients at their peak
        r["mem"] = torch.cuda.max_memory_allocated(device)
        r["note"] += f", peak memory {r['mem'] / 1e9:.1f} GB"
    return r


def bench_ratio(preset, device, dtype, peaks, batch_size, block_size=None, small_vocab=4096, variant=None,
                compile=False, warmup=2, iters=5, optimizer=OPTIMIZERS[0]):
    """The vocabulary target (check_targets): the same model with a small vocabulary in the chosen dtype against
    GPT-2's vocabulary in fp32, timed interleaved in one run. Rows: both speeds and their ratio."""
    fast = build_model(preset, device, block_size, small_vocab, variant)
    slow = build_model(preset, device, block_size, GPT2_VOCAB, variant)
    fast_step, fast_compiled = make_train_step(fast, device, dtype, batch_size, compile, optimizer=optimizer)
    slow_step, _ = make_train_step(slow, device, torch.float32, batch_size, compile=False, optimizer=optimizer)
    t_fast, t_slow = timed_interleaved([fast_step, slow_step], device, warmup + (1 if compile else 0), iters)
    r_fast = train_row(fast, device, dtype, batch_size, t_fast, peaks, fast_compiled(), optimizer, iters=iters)
    r_slow = train_row(slow, device, torch.float32, batch_size, t_slow, peaks, False, optimizer, iters=iters)
    for r in (r_fast, r_slow):
        r["section"] = "ratio"
    ratio = r_fast["value"] / r_slow["value"]
    r_ratio = row("ratio", f"V{fast.config.vocab_size} {SHORT[dtype]} / V{GPT2_VOCAB} fp32", ratio, "x",
                  note=f"{model_name(fast)}, same batch, {optimizer}, interleaved steps (target: >= 8x)",
                  optimizer=optimizer)
    return [r_fast, r_slow, r_ratio]


# -----------------------------------------------------------------------------
# generation

def gen_block_size(preset, prompt_len, new_tokens):
    """A block_size holding the prompt and every new token (sliding would re-prefill the cache and mix two costs);
    a multiple of 64, never below the preset's."""
    need = (prompt_len + new_tokens + 63) // 64 * 64
    return max(PRESETS[preset]["block_size"], need)


def run_generate(model, device, dtype, idx, new_tokens, use_cache):
    """Consume model.generate as gen.py does (temperature 0.8, top_k 200); returns the tokens produced (all rows).
    Autocast is entered around each step; an outer *disabled* one keeps its cast weights alive between steps (else
    every weight is cast again each token)."""
    steps = model.generate(idx, new_tokens, temperature=0.8, top_k=200, use_cache=use_cache,
                           generator=seeded_generator(device, 0))
    n = 0
    outer = torch.autocast(device.type, enabled=False) if dtype != torch.float32 else None
    with outer or contextlib.nullcontext():
        while True:
            with autocast(device, dtype):
                tok = next(steps, None)
            if tok is None:
                break
            n += tok.numel()
    sync(device)
    return n


def bench_gen(preset, device, dtype, gen_batch=8, prompt_len=16, new_tokens=500, vocab_size=None, variant=None):
    """Generation tokens/s: batch 1 without the KV cache and with it, gen_batch with it, and the cache's speed-up."""
    block_size = gen_block_size(preset, prompt_len, new_tokens)
    # the largest batch's KV cache (k and v of every layer over the block), checked first: the B1 run without a
    # cache, before it, may run for hours
    cfg = bench_config(preset, block_size, vocab_size, variant)
    have = physical_memory() if device.type == "cpu" else \
        torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    need = 2 * cfg.n_layer * max(gen_batch, 1) * block_size * cfg.n_embd * dtype.itemsize
    if have and need > have:
        raise MemoryError(f"{need / 2**30:.3g} GiB of KV cache for block_size {block_size}, more than the machine's "
                          f"{have / 2**30:.3g} GiB")
    model = build_model(preset, device, block_size, vocab_size, variant).eval()
    name = model_name(model)
    rows, speed = [], {}
    runs = [(1, False), (1, True)] + ([(gen_batch, True)] if gen_batch != 1 else [])  # (B1 with the cache: once)
    for b, use_cache in runs:
        g = seeded_generator("cpu", b)
        idx = torch.randint(0, model.config.vocab_size, (b, prompt_len), generator=g).to(device)
        run_generate(model, device, dtype, idx, min(8, new_tokens), use_cache)  # warm-up
        t0 = clock()
        n = run_generate(model, device, dtype, idx, new_tokens, use_cache)
        t = clock() - t0
        if n != b * new_tokens:
            raise RuntimeError(f"generation stopped early: {n} of {b * new_tokens} tokens")
        speed[(b, use_cache)] = n / t
        rows.append(row("gen", f"{name} B{b} {'KV cache' if use_cache else 'no cache'}", n / t, "tokens/s", dtype,
                        note=f"prompt {prompt_len} + {new_tokens} new, block_size {block_size} (no sliding), {t:.2f} s"
                             + ("" if dtype == torch.float32 else ", weights cast once")))
    ratio = speed[(1, True)] / speed[(1, False)]
    rows.append(row("gen", f"{name} B1 cache / no cache", ratio, "x", dtype,
                    note="target for small at B1, 500 tokens: >= 5x"))
    return rows


# -----------------------------------------------------------------------------
# prepare: tokenization speed

def synthetic_text(n_bytes):
    """English-like stories of about n_bytes, one a line: the stand-in where no real text is around."""
    words = ("the a little girl boy dog cat ball park tree happy sad big small red blue went saw said played "
             "with and to of in on was were they she he it her his mom dad friend day sun home fun nice").split()
    rng = random.Random(0)
    lines, size = [], 0
    while size < n_bytes:
        sent = " ".join(rng.choice(words) for _ in range(rng.randint(5, 15)))
        line = (sent[0].upper() + sent[1:] + ". ") * rng.randint(1, 6)
        lines.append(line.strip())
        size += len(line) + 1
    return "\n".join(lines)


def bench_prepare(path=None, threads=None, repeats=3, quick=False):
    """MB/s and tokens/s of GPT-2's tokenizer over a text file's lines (path; default: $DATA_MIRROR's TinyStories
    sample, else generated text), with prepare.encode_texts on `threads` threads (default: every core)."""
    import prepare  # tiktoken only when this section runs
    from setup_tokenizer import get_tokenizer
    try:
        enc = get_tokenizer("gpt2")
    except UserError as e:  # offline without the BPE files: the other sections need none
        raise UserError(f"{e}, or leave prepare out of --only") from None
    threads = threads or prepare.THREADS
    if not path:  # the mirror's TinyStories sample, the text prepare.py's story reads first
        mirror = os.environ.get("DATA_MIRROR")
        sample = mirror and os.path.join(mirror, prepare.MIRROR["story"]["main"][0])
        path = sample if sample and os.path.isfile(sample) else None
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        source = os.path.basename(path)
    else:
        text = synthetic_text(200_000 if quick else 4_000_000)
        source = "generated text"
    if quick:
        text = text[:200_000]
    docs = text.split("\n")
    n_bytes = len(text.encode("utf-8")) - len(docs) + 1  # what is tokenized: the newlines between lines are not
    prepare.encode_texts(enc, docs[:200], threads)  # warm-up: tiktoken builds its regex lazily
    times, n_tokens = [], 0
    for _ in range(repeats):
        t0 = clock()
        out = prepare.encode_texts(enc, docs, threads)
        times.append(clock() - t0)
        n_tokens = sum(map(len, out))
    t = statistics.median(times)
    note = f"{source}, {n_bytes / 1e6:.1f} MB, {threads} threads, median of {repeats}"
    return [row("prepare", "tiktoken gpt2, prepare.encode_texts", n_bytes / 1e6 / t, "MB/s", note=note),
            row("prepare", "tiktoken gpt2, prepare.encode_texts", n_tokens / t, "tokens/s", note=note)]


# -----------------------------------------------------------------------------
# the table and BENCHMARKS.md

def fmt_value(v):
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


TABLE_HEADER = "| section | benchmark | dtype | value | unit | MFU | notes |"


def format_table(rows):
    lines = [TABLE_HEADER,
             "|---|---|---|---:|---|---:|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        lines.append(f"| {r['section']} | {r['name']} | {r['dtype']} | {fmt_value(r['value'])} | {r['unit']} | {mfu} "
                     f"| {r['note']} |")
    return "\n".join(lines)


def machine_description(device):
    """One line: what ran this (so a table means something a year later)."""
    parts = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.append(f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})")
    # bf16 instructions, and whether they outrun fp32, decide train.py's dtype and most of a CPU's speed
    cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()
    flags = cpu_info()[1]
    if "amx_bf16" in flags:
        cpu_flags = ", AMX"
    elif cpu_has_bf16():
        cpu_flags = ", AVX-512 BF16" + ("" if cpu_bf16_is_faster() else " without AMX: auto dtype fp32")
    else:
        cpu_flags = f", {cap + ' ' if cap else ''}without bf16"
    name = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    name = name if name is not None else platform.processor() or platform.machine()
    parts.append(f"CPU {name} ({os.cpu_count()} logical cores{cpu_flags}; "
                 f"torch threads {torch.get_num_threads()})")
    parts.append(f"torch {torch.__version__}, Python {platform.python_version()}, "
                 f"{platform.system()} {platform.release()}")
    if hasattr(os, "getloadavg"):
        # other processes on the CPU slow every number here: said
        parts.append(f"load average {os.getloadavg()[0]:.1f} at start")
    return "; ".join(parts)


def settings_description(args):
    """How the numbers were taken, beyond the command line's defaults."""
    malloc = "freed memory retained" if args.malloc_retained else "allocator default"
    clock = "process CPU time (one thread)" if args.clock == "cpu" else "wall time"
    return (f"clock {clock}; glibc malloc {malloc}; torch.compile {'on' if args.compile else 'off'}; "
            f"optimizer {args.optimizer}" + ("; activations recomputed" if args.recompute_activations else ""))


def section_text(rows, device, argv=None, note=None, settings=None, machine=None):
    """machine: machine_description(device) as it was at the start (its load average is the start's)."""
    when = datetime.datetime.now()
    cmd = shlex.join(["python", "bench.py", *(argv or [])])  # quoted as typed: it can be pasted back
    out = [f"## {when:%Y-%m-%d %H:%M} — {device.type}", "",
           f"- machine: {machine or machine_description(device)}",
           f"- command: `{cmd}`"]
    if settings:
        out.append(f"- settings: {settings}")
    if note:
        out.append(f"- note: {note}")
    out += ["", format_table(rows), ""]
    return "\n".join(out)


@contextlib.contextmanager
def turn_at(path):
    """Hold path's advisory lock (creating it empty when missing), so runs that finish at once take turns; a run
    that waited on a file the atomic write replaced locks the new one."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs finishing in the same millisecond are rare
        yield
        return
    while True:
        try:
            f = open(path, "a", encoding="utf-8")
        except PermissionError:  # a read-only file in a writable folder: the atomic write replaces it all the same
            yield
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                    yield
                    return


def append_benchmarks(path, text):
    """Append one dated section to path (made with a title when missing), atomically and in turn with other runs."""
    new = not os.path.exists(path)
    try:
        with turn_at(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
            if not old:
                old = ("# Benchmarks\n\nAppended by `python bench.py` (see its --help): one section per run, "
                       "newest last. MFU is against the matmul peak measured in the same run.\n")
            elif not old.endswith("\n"):
                old += "\n"
            atomic_write_text(path, old + "\n" + text)
    except BaseException:  # (a full disk, Ctrl-C): not the empty file the lock created in the file's place
        with contextlib.suppress(OSError):
            if new and os.path.getsize(path) == 0:
                os.remove(path)
        raise


def off_target(args):
    """Why this run's figures cannot be judged against the targets (sizes other than theirs), or None."""
    if args.quick:
        return "--quick"
    given = [f"--{k}" for k in ("peak_sizes", "block_size", "vocab_size", "prompt_len") if getattr(args, k) is not None]
    if args.new_tokens not in (None, 500):
        given.append("--new_tokens")
    return ", ".join(given) or None


def check_targets(rows, off=None, gpu=False):
    """The project's speed targets (issue #6) this run measured, a line each. off: off_target's reason, said instead
    of met / NOT met. gpu: a GPU's targets are gpt2's; the others are the CPU's (a GPU's B1 decoding is
    launch-bound)."""
    def verdict(ok):
        return f"(not judged: {off})" if off else "met" if ok else "NOT met"

    lines = []
    for r in rows:
        what = r["name"] + (f", {r['optimizer']}" if r.get("optimizer") else "")
        bf16_train = r["section"] == "train" and r["dtype"] == "bf16"
        if gpu and bf16_train and r["name"].startswith("gpt2 "):
            lines.append(f"target gpt2 bf16 MFU >= 50% on a GPU: {100 * r['mfu']:.1f}% ({what}) "
                         f"{verdict(r['mfu'] >= 0.5)}")
        if gpu and bf16_train and r["name"].startswith("gpt2 B8 T1024 ") and r["mem"] is not None:
            lines.append(f"target gpt2 B8 T1024 bf16 training in 24 GB: {r['mem'] / 1e9:.1f} GB ({what}) "
                         f"{verdict(r['mem'] <= 24e9)}")
        if gpu:  # (the targets below are the CPU's)
            continue
        if bf16_train and r["name"].startswith("small ") and r["mfu"] is not None:
            lines.append(f"target small bf16 MFU >= 50%: {100 * r['mfu']:.1f}% ({what}) {verdict(r['mfu'] >= 0.5)}")
        if r["section"] == "ratio" and r["unit"] == "x" and r["name"].startswith("V4096 "):  # the target's vocabulary
            lines.append(f"target 4096-vocab / GPT-2-vocab fp32 >= 8x: {r['value']:.2f}x ({what}) "
                         f"{verdict(r['value'] >= 8)}")
        if r["section"] == "gen" and r["unit"] == "x" and r["name"].startswith("small B1"):
            lines.append(f"target small B1 cache speed-up >= 5x: {r['value']:.2f}x {verdict(r['value'] >= 5)}")
    return lines


# -----------------------------------------------------------------------------
# the whole run

@contextlib.contextmanager
def fits(message):
    """An allocation too large for this machine ends in a UserError: message (the options to lower) and torch's
    line. Other errors pass."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        raise UserError(f"{message} ({first_line(e)})") from None


def parse_list(text, allowed, flag):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise UserError(f"{flag} {text!r}: choose from {', '.join(allowed)} (comma-separated)")
    return items


def selection(args, device):
    """(sections, dtypes, optimizers, presets) the options ask for; a UserError for a name that is none."""
    only = parse_list(args.only, SECTIONS, "--only")
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise UserError("--clock cpu measures one busy thread: use it with --device cpu --threads 1")
    if args.clock == "cpu" and args.prepare_threads not in (None, 1):  # run() tokenizes on one thread then
        raise UserError(f"--prepare_threads {args.prepare_threads}: --clock cpu adds up the CPU time of every thread, "
                        f"so the tokenizer runs on one; give 1 or leave it out")
    dtypes = [pick_dtype(device, d) for d in parse_list(args.dtype, ("auto",) + tuple(DTYPES), "--dtype")]
    dtypes = list(dict.fromkeys(dtypes))  # 'auto,bfloat16' names one dtype twice
    optimizers = list(dict.fromkeys(parse_list(args.optimizer, OPTIMIZERS, "--optimizer")))
    model = args.model or ("tiny" if args.quick else "gpt2" if device.type == "cuda" else "tiny,small")
    return only, dtypes, optimizers, parse_list(model, tuple(PRESETS), "--model")


def run(args, device, log=print):
    """All selected sections; returns the rows (what main prints and writes). Importable for tests."""
    only, dtypes, optimizers, presets = selection(args, device)
    set_clock(args.clock)
    quick = args.quick
    gpu = device.type == "cuda"
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3 if gpu else 2)
    iters = args.steps if args.steps is not None else (2 if quick else 10 if gpu else 5)
    rows = []

    def emit(new):
        for r in new:
            mfu = f"  MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
            log(f"{r['section']:8s} {r['name']:45s} {r['dtype']:5s} {fmt_value(r['value']):>10s} {r['unit']}{mfu}  "
                f"{r['note']}")
        rows.extend(new)

    peaks = {}
    if {"peak", "train", "ratio"} & set(only):
        # MFU needs the peak of each dtype trained in (fp32 too for the ratio). The peak section adds fp32, the auto
        # dtype and bf16 where the CPU has its instructions (emulated, a bf16 peak takes many minutes)
        native_bf16 = [torch.bfloat16] if device.type == "cpu" and cpu_has_bf16() else []
        wanted = []
        if "peak" in only:
            wanted += [torch.float32, pick_dtype(device)] + native_bf16 + dtypes
        if "train" in only:
            wanted += dtypes
        if "ratio" in only:
            wanted += [dtypes[0], torch.float32]
        peak_dtypes = list(dict.fromkeys(wanted))
        sizes = args.peak_sizes or ([256] if quick else [8192] if gpu else [2048, 4096])
        with fits(f"the peak's matmuls of {','.join(map(str, sizes))} do not fit in memory: give smaller --peak_sizes"):
            new, peaks = bench_peak(device, peak_dtypes, sizes, warmup=1 if quick else 2, iters=2 if quick else 5)
        emit(new)

    block_size = args.block_size or (32 if quick else None)
    vocab_size = args.vocab_size or (512 if quick else None)
    batch_size = args.batch_size or (2 if quick else 8)
    if "train" in only:
        for preset in presets:
            for dtype in dtypes:
                for optimizer in optimizers:
                    with fits(f"a training step of {preset} does not fit in memory: give a smaller --batch_size, "
                              f"--block_size or --vocab_size, or another --model"):
                        emit([bench_train(preset, device, dtype, peaks, batch_size, block_size, vocab_size,
                                          args.variant, args.compile, warmup, iters, args.recompute_activations,
                                          optimizer)])
    if "ratio" in only:
        small_vocab = args.ratio_vocab or (512 if quick else 4096)
        # two steps ~8x apart in length: with 5 pairs the ratio's medians vary ±10% from run to run on a shared CPU
        ratio_iters = args.steps if args.steps is not None else (2 if quick else 10)
        for optimizer in optimizers:  # Muon's orthogonalization adds the same time to both sides: a lower ratio
            with fits(f"the ratio's training steps of {args.ratio_model} do not fit in memory: give a smaller "
                      f"--batch_size, --block_size or --ratio_vocab, or another --ratio_model"):
                emit(bench_ratio(args.ratio_model, device, dtypes[0], peaks, batch_size, block_size, small_vocab,
                                 args.variant, args.compile, warmup, ratio_iters, optimizer))
    if "gen" in only:
        new_tokens = args.new_tokens or (8 if quick else 500)  # given options win over --quick's sizes
        prompt_len = args.prompt_len or (4 if quick else 16)
        for preset in presets:
            with fits(f"generation with {preset} does not fit in memory: give a smaller --gen_batch, --new_tokens, "
                      f"--prompt_len or --vocab_size, or another --model"):
                emit(bench_gen(preset, device, dtypes[0], args.gen_batch or (2 if quick else 8), prompt_len,
                               new_tokens, vocab_size, args.variant))
    if "prepare" in only:
        threads = 1 if args.clock == "cpu" else args.prepare_threads  # CPU time adds up over threads
        try:
            emit(bench_prepare(args.data, threads, repeats=1 if quick else 3, quick=quick))
        except UserError as e:  # no GPT-2 BPE files offline: keep the other sections' results
            if not rows:  # there are none (--only prepare): the one line, not a section without a figure appended
                raise
            log(f"prepare skipped: {e}")
    return rows


def sizes_arg(text):
    """--peak_sizes 2048,4096 -> [2048, 4096]."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, as in 2048,4096")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the sizes must be positive")
    return sizes


def get_parser():
    p = ArgumentParser("bench.py", description=(__doc__ or "").strip(),  # (None under python -OO)
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Sections: peak (matmul FLOP/s), train (tokens/s, MFU), gen (tokens/s, KV cache "
                                       "speed-up), ratio (small vs GPT-2 vocabulary), prepare (tokenizer MB/s).")
    add_device_arguments(p, dtype=False)
    p.add_argument("--dtype", default="auto", help=f"autocast dtype(s), comma-separated: auto, {', '.join(DTYPES)} "
                                                   f"(default: auto = {AUTO_DTYPE}). gen and ratio use the first")
    p.add_argument("--model", default=None,
                   help="preset(s), comma-separated (default: tiny,small on CPU, gpt2 on GPU; --quick tiny)")
    p.add_argument("--variant", default=None, choices=VARIANTS,
                   help="model variant (default: the preset's: modern for tiny, gpt2 for the others)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"sections to run, comma-separated (default: all of {','.join(SECTIONS)})")
    p.add_argument("--batch_size", type=at_least(1), default=None, help="training batch size (default: 8; --quick 2)")
    p.add_argument("--block_size", type=at_least(1), default=None,
                   help="training sequence length (default: the preset's; --quick 32)")
    p.add_argument("--vocab_size", type=at_least(1), default=None,
                   help="vocabulary size, e.g. 4096 for a custom tokenizer (default: GPT-2's 50259; --quick 512)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for train and ratio (compile time is in the warm-up)")
    p.add_argument("--recompute_activations", action="store_true",
                   help="train rows recompute each block's activations in the backward pass, as train.py's option "
                        "(on a GPU their peak memory shows what it saves)")
    p.add_argument("--optimizer", default=OPTIMIZERS[0],
                   help=f"the optimizer(s) of the training steps, comma-separated: {', '.join(OPTIMIZERS)}, as "
                        f"train.py's option; train and ratio rows for each (default: {OPTIMIZERS[0]})")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="torch.set_num_threads, at most one per logical core (default: torch's choice, one per core)")
    p.add_argument("--clock", default="wall", choices=list(_CLOCKS),
                   help="wall (default) or cpu: this process's CPU time, for a CPU shared with other work; needs "
                        "--threads 1, and then gives single-core figures that other processes barely disturb")
    p.add_argument("--malloc", default="retain", choices=["retain", "default"],
                   help="retain (default): glibc keeps freed memory for reuse, so big tensors are not page-faulted in "
                        "again every step (+30-40%% for small on CPU); default: leave the allocator alone")
    p.add_argument("--warmup", type=at_least(0), default=None,
                   help="untimed training steps first (default: 2 on CPU, 3 on GPU; --quick 1)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="timed training steps, the median is reported (default: 5 on CPU, 10 on GPU and for the ratio; "
                        "--quick 2)")
    p.add_argument("--peak_sizes", type=sizes_arg, default=None,
                   help="matmul sizes for the peak, comma-separated (default: 2048,4096 on CPU, 8192 on GPU; --quick "
                        "256)")
    p.add_argument("--new_tokens", type=at_least(1), default=None,
                   help="tokens generated per run (default: 500; --quick 8)")
    p.add_argument("--prompt_len", type=at_least(1), default=None,
                   help="prompt tokens for generation (default: 16; --quick 4)")
    p.add_argument("--gen_batch", type=at_least(1), default=None,
                   help="the batched generation run's batch size (default: 8; --quick 2)")
    p.add_argument("--ratio_model", default="tiny", choices=list(PRESETS),
                   help="preset for the ratio section (default: tiny)")
    p.add_argument("--ratio_vocab", type=at_least(1), default=None,
                   help="the small vocabulary of the ratio section (default: 4096; --quick 512)")
    p.add_argument("--data", type=path_arg, default=None,
                   help="text file for prepare (default: $DATA_MIRROR/tinystories/TinyStories-sample.txt, else "
                        "generated)")
    p.add_argument("--prepare_threads", type=at_least(1), default=None, help="tokenizer threads (default: every core)")
    p.add_argument("--out", type=path_arg, default=None, help="file the table is appended to (default: BENCHMARKS.md)")
    p.add_argument("--no_write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    p.add_argument("--note", default=None,
                   help="a remark stored with the table, e.g. 'machine shared with a training run'")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, a few seconds: checks that everything runs, numbers mean little")
    return p


def check_options(args):
    """Raises a UserError for options bench.py cannot run with, before anything is measured."""
    for name in ("batch_size", "block_size", "vocab_size", "new_tokens", "prompt_len", "gen_batch", "ratio_vocab",
                 "peak_sizes"):  # past any machine's memory (MAX_SIZE); smaller ones that do not fit: fits() in run()
        v = getattr(args, name)
        sizes = v if isinstance(v, list) else [v]  # --peak_sizes is a list
        if v is not None and max(sizes) > MAX_SIZE:
            raise UserError(f"--{name} {','.join(map(str, sizes))} is too large: give at most {MAX_SIZE:,} (2**40), "
                            f"and far less fits in any machine's memory")
    cores = os.cpu_count()
    # more threads than cores: libgomp aborts at 2**31 and torch's int overflows; more tokenizer threads gain nothing
    for name in ("threads", "prepare_threads"):
        v = getattr(args, name)
        if v and cores and v > cores:
            raise UserError(f"--{name} {v}: this machine has {cores} logical cores; give at most {cores}")
    if args.data:  # read before the other sections' minutes, not after them
        if not os.path.isfile(args.data):
            raise UserError(f"--data {args.data}: no such file")
        try:
            with open(args.data, encoding="utf-8") as f:
                if not f.read().strip():  # (else 0.00 MB/s would read as a measurement)
                    raise UserError(f"--data {args.data} holds no text: give a text file to tokenize")
        except UnicodeDecodeError:
            raise not_utf8(args.data, f"--data {args.data}") from None
    if args.no_write and (args.out or args.note):  # what they ask for would be dropped without a word
        raise UserError(f"--no_write writes nothing: give {'--out' if args.out else '--note'} or --no_write, not both")


def check_benchmarks_file(path):
    """Raises a UserError for an --out that cannot take the table, before the minutes of measuring."""
    check_output(path, "--out")
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        # only a file with bench.py's title or table takes a table (not --out train.py); the header begins a line,
        # as bench.py itself holds it in a string
        if old.strip() and not (old.startswith("# Benchmarks") or "\n" + TABLE_HEADER in "\n" + old):
            raise UserError(f"--out {path} is not a BENCHMARKS file (no '# Benchmarks' title, no bench.py "
                            f"table): the table would be appended to it; give another --out, or --no_write")
    except FileNotFoundError:
        pass
    except UnicodeDecodeError:
        raise not_utf8(path, f"--out {path}", "give another file") from None


@common.removing_made_folders()
def main(argv=None):
    argv = command_words(argv)
    args = get_parser().parse_args(argv)
    check_options(args)
    args.out = args.out or "BENCHMARKS.md"
    if not args.no_write:
        check_benchmarks_file(args.out)
    device = pick_device(args.device)
    args.malloc_retained = args.malloc == "retain" and retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        # as train.py: fp32 matmuls on tensor cores; the fp32 peak row says so
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    selection(args, device)  # a bad --only or --model is the one line, not after the header
    machine = machine_description(device)  # its load average before the run's own load
    print(machine)
    print(settings_description(args))
    rows = run(args, device)
    table = format_table(rows)
    print()
    print(table)
    for line in check_targets(rows, off_target(args), gpu=device.type == "cuda"):
        print(line)
    if not args.no_write:
        append_benchmarks(args.out, section_text(rows, device, argv, args.note, settings=settings_description(args),
                                                 machine=machine))
        print(f"appended to {args.out}")
    return rows


if __name__ == "__main__":
    run_main(main)
