"""Tests for bench.py: --quick sizes on CPU, one thread (the machine may be shared), a temp BENCHMARKS file."""

import os
import sys
import threading
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import common  # noqa: E402
import prepare  # noqa: E402
from common import UserError  # noqa: E402


@pytest.fixture
def one_thread():
    # with two OpenMP threads on a busy 2-core machine a tiny matmul can take 100x longer (each thread waits for a
    # descheduled sibling); one thread keeps the test fast everywhere. Restored so later tests keep their setting.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quick_args(*extra):
    return bench.get_parser().parse_args(["--quick", "--no_write", "--device", "cpu", *extra])


def by_section(rows):
    out = {}
    for r in rows:
        out.setdefault(r["section"], []).append(r)
    return out


def test_quick_run_has_every_row(one_thread):
    args = quick_args("--model", "tiny", "--dtype", "float32")
    rows = bench.run(args, torch.device("cpu"), log=lambda *a: None)
    sec = by_section(rows)
    assert set(sec) == set(bench.SECTIONS)
    for r in rows:
        assert r["value"] > 0 and r["value"] == r["value"], r  # positive, not NaN

    # bf16's peak too on a CPU with bf16 instructions (whether autocast picks bf16 there or not)
    assert {(r["name"], r["dtype"]) for r in sec["peak"]} == {("matmul 256x256", "fp32")} | (
        {("matmul 256x256", "bf16")} if common.cpu_has_bf16() else set())
    assert all(r["unit"] == "GFLOP/s" for r in sec["peak"])

    (tr,) = sec["train"]
    assert tr["name"] == "tiny B2 T32 V512" and tr["unit"] == "tokens/s" and tr["dtype"] == "fp32"
    assert tr["mfu"] is not None and tr["mfu"] > 0

    assert [r["unit"] for r in sec["ratio"]] == ["tokens/s", "tokens/s", "x"]
    assert [r["dtype"] for r in sec["ratio"][:2]] == ["fp32", "fp32"]  # --dtype float32: both sides fp32
    assert "V50259" in sec["ratio"][1]["name"]
    assert sec["ratio"][2]["value"] == pytest.approx(sec["ratio"][0]["value"] / sec["ratio"][1]["value"])

    names = [r["name"] for r in sec["gen"]]
    assert names == ["tiny B1 no cache", "tiny B1 KV cache", "tiny B2 KV cache", "tiny B1 cache / no cache"]
    assert [r["unit"] for r in sec["gen"]] == ["tokens/s"] * 3 + ["x"]

    if sec.get("prepare"):
        assert [r["unit"] for r in sec["prepare"]] == ["MB/s", "tokens/s"]

    table = bench.format_table(rows)
    assert table.count("\n") == len(rows) + 1  # header, rule, one line per row
    assert "| train | tiny B2 T32 V512 | fp32 |" in table


@pytest.mark.parametrize("vendor, flags, peaks, says", [
    ("AuthenticAMD", "avx2 avx512f avx512_bf16", ["fp32", "bf16"], ", AVX-512 BF16;"),
    ("GenuineIntel", "avx2 avx512f avx512_bf16 amx_bf16 amx_tile", ["fp32", "bf16"], ", AMX;"),
    # autocast picks fp32 there, and bf16's peak says why
    ("GenuineIntel", "avx2 avx512f avx512_bf16", ["fp32", "bf16"], ", AVX-512 BF16 without AMX: auto dtype fp32;"),
    ("GenuineIntel", "avx2 avx512f", ["fp32"], " without bf16;"),
])
def test_peak_measures_bf16_where_the_cpu_has_its_instructions(vendor, flags, peaks, says, monkeypatch, one_thread):
    # without bf16 instructions a bf16 matmul runs emulated on one thread: the default peak sizes took 15+ minutes
    for module in (common, bench):
        monkeypatch.setattr(module, "cpu_info", lambda: (vendor, set(flags.split())))
    rows = bench.run(quick_args("--only", "peak"), torch.device("cpu"), log=lambda *a: None)
    assert [r["dtype"] for r in rows] == peaks
    assert says in bench.machine_description(torch.device("cpu"))
    # asked for, it is measured
    rows = bench.run(quick_args("--only", "peak", "--dtype", "bfloat16"), torch.device("cpu"), log=lambda *a: None)
    assert [r["dtype"] for r in rows] == ["fp32", "bf16"]


def test_only_and_bf16_autocast(one_thread):
    rows = bench.run(quick_args("--only", "train", "--dtype", "bfloat16,float32"), torch.device("cpu"),
                     log=lambda *a: None)
    sec = by_section(rows)
    # train asks for the peak of each dtype it trains in, for MFU; no other section runs
    assert set(sec) == {"peak", "train"}
    assert [r["dtype"] for r in sec["train"]] == ["bf16", "fp32"]
    assert all(r["mfu"] > 0 for r in sec["train"])


def test_prepare_on_a_given_file(tmp_path, monkeypatch):
    text = bench.synthetic_text(20_000)
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    try:
        rows = bench.bench_prepare(str(p), threads=2, repeats=1)
    except UserError as e:
        pytest.skip(f"no GPT-2 BPE files here: {e}")
    mbs, tps = rows
    assert mbs["unit"] == "MB/s" and tps["unit"] == "tokens/s"
    assert mbs["name"] == "tiktoken gpt2, prepare.encode_texts"  # what prepare.py runs, not encode_ordinary_batch
    # English-like text is about 4-5 bytes per GPT-2 token
    assert 2 < (mbs["value"] * 1e6) / tps["value"] < 8
    # MB/s counts the bytes tokenized: the lines', not the newlines between them (1-2% more MB/s than was done)
    ticks = iter(range(100))
    monkeypatch.setattr(bench, "clock", lambda: float(next(ticks)))  # each timed pass takes 1 s
    mbs, _ = bench.bench_prepare(str(p), threads=2, repeats=1)
    assert "\n" in text and mbs["value"] * 1e6 == pytest.approx(sum(len(line.encode()) for line in text.split("\n")))


def test_prepare_without_the_mirror_tokenizes_generated_text_and_says_so(monkeypatch):
    # a machine without $DATA_MIRROR (every user's but this project's own): generated English-like text, named in the
    # rows' note, so the figures are not taken for TinyStories'
    monkeypatch.delenv("DATA_MIRROR", raising=False)
    try:
        mbs, tps = bench.bench_prepare(None, threads=1, repeats=1, quick=True)
    except UserError as e:
        pytest.skip(f"no GPT-2 BPE files here: {e}")
    assert mbs["note"].startswith("generated text, 0.2 MB") and tps["note"] == mbs["note"] and tps["value"] > 0


def test_prepare_by_default_tokenizes_the_mirrors_tinystories_sample(tmp_path, monkeypatch):
    # the file prepare.py's story reads first in $DATA_MIRROR (its MIRROR table), named in the rows' note
    sample = tmp_path / prepare.MIRROR["story"]["main"][0]
    sample.parent.mkdir(parents=True)
    sample.write_text("Once upon a time there was a cat.\n" * 50, encoding="utf-8")
    monkeypatch.setenv("DATA_MIRROR", str(tmp_path))
    try:
        mbs, _ = bench.bench_prepare(None, threads=1, repeats=1, quick=True)
    except UserError as e:
        pytest.skip(f"no GPT-2 BPE files here: {e}")
    assert mbs["note"].startswith(f"{sample.name}, ")


def test_prepare_without_the_bpe_files_is_skipped_and_alone_is_one_line(tmp_path, monkeypatch, one_thread):
    # offline without GPT-2's BPE files: the other sections' rows are kept; asked for alone, an empty table had been
    # appended to BENCHMARKS.md under a dated heading, as if it were a run's figures
    def offline(*a, **k):
        raise UserError("cannot load the GPT-2 BPE files (offline?)")
    monkeypatch.setattr(bench, "bench_prepare", offline)
    out = tmp_path / "BENCH.md"
    said = []
    rows = bench.run(quick_args("--only", "peak,prepare", "--peak_sizes", "16"), torch.device("cpu"), log=said.append)
    assert {r["section"] for r in rows} == {"peak"} and said[-1].startswith("prepare skipped: cannot load")
    with pytest.raises(UserError, match=r"^cannot load the GPT-2 BPE files"):
        bench.main(["--quick", "--malloc", "default", "--device", "cpu", "--only", "prepare", "--out", str(out)])
    assert not out.exists()


def test_prepare_offline_names_a_fix_bench_py_takes(monkeypatch):
    # setup_tokenizer's line offered --tokenizer PATH.tiktoken: prepare.py's option, which bench.py refuses (as gen.py,
    # eval.py and serve.py do)
    import tiktoken
    import setup_tokenizer

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    setup_tokenizer._load_tokenizer.cache_clear()
    try:
        with pytest.raises(UserError) as e:
            bench.bench_prepare(None, threads=1, repeats=1, quick=True)
    finally:
        setup_tokenizer._load_tokenizer.cache_clear()  # later tests load the real files
    assert "TIKTOKEN_CACHE_DIR" in str(e.value) and "--tokenizer" not in str(e.value)
    assert str(e.value).endswith("cached gpt2 files (ConnectionError), or leave prepare out of --only")


def test_the_load_average_written_is_the_starts_and_quick_figures_are_not_judged(tmp_path, one_thread, monkeypatch,
                                                                                 capsys):
    """The machine line was made again when the section was written, after the run's own load: its \"load average
    at start\" was the end's. And --quick's toy sizes were judged against the targets (121.9% MFU, met)."""
    loads = iter([1.0] + [99.0] * 10)
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    out = tmp_path / "BENCH.md"
    bench.main(["--quick", "--device", "cpu", "--only", "peak,gen", "--model", "small", "--peak_sizes", "64",
                "--out", str(out), "--malloc", "default"])
    assert "load average 1.0 at start" in out.read_text()
    said = capsys.readouterr().out
    assert "target small B1 cache speed-up >= 5x: " in said and "(not judged: --quick)" in said
    assert " met" not in said.split("target")[1]
    assert bench.off_target(bench.get_parser().parse_args(["--peak_sizes", "64", "--new_tokens", "8"])) == \
        "--peak_sizes, --new_tokens"
    assert bench.off_target(bench.get_parser().parse_args(["--batch_size", "16", "--new_tokens", "500"])) is None
    # --gen_batch 1 names B1 twice: one row, and the speed-up of that one
    rows = bench.run(quick_args("--only", "gen", "--gen_batch", "1"), torch.device("cpu"), log=lambda *a: None)
    assert [r["name"] for r in rows] == ["tiny B1 no cache", "tiny B1 KV cache", "tiny B1 cache / no cache"]


def test_write_appends_sections(tmp_path, one_thread):
    out = tmp_path / "BENCH.md"
    argv = ["--quick", "--device", "cpu", "--only", "peak", "--out", str(out), "--note", "test run",
            "--malloc", "default"]
    bench.main(argv)
    first = out.read_text()
    assert first.startswith("# Benchmarks\n")
    assert first.count("\n## ") == 1 and "- note: test run" in first and "matmul 256x256" in first
    assert "- machine: CPU " in first and f"torch {torch.__version__}" in first
    assert "- settings: clock wall time; glibc malloc allocator default" in first
    bench.main(argv)
    second = out.read_text()
    assert second.startswith(first)  # appended, nothing rewritten
    assert second.count("\n## ") == 2 and second.count("# Benchmarks") == 1


def test_bad_arguments(capsys):
    with pytest.raises(UserError, match="--only"):
        bench.run(quick_args("--only", "train,nope"), torch.device("cpu"))
    with pytest.raises(UserError, match="--model"):
        bench.run(quick_args("--model", "huge"), torch.device("cpu"))
    with pytest.raises(SystemExit):  # (argparse's line: test_common's test_a_count_below_its_minimum_...)
        bench.main(["--quick", "--no_write", "--malloc", "default", "--batch_size", "0"])
    assert "argument --batch_size: must be at least 1, got 0" in capsys.readouterr().err



def test_bad_input_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """Found at the start, not after minutes of measuring: --peak_sizes, a --data file that is no UTF-8, an --out that
    cannot be written."""
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured before the input was checked"))
    for bad in ("abc", "-5", "0", ""):
        with pytest.raises(SystemExit):
            bench.get_parser().parse_args(["--peak_sizes", bad])
    assert "--peak_sizes" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^--data .*nowhere.txt: no such file$"):
        bench.main(["--quick", "--no_write", "--malloc", "default", "--data", str(tmp_path / "nowhere.txt")])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"^--data .*latin1.txt is not UTF-8 text"):
        bench.main(["--quick", "--no_write", "--malloc", "default", "--data", str(latin1)])
    (tmp_path / "blank.txt").write_text(" \n")  # it reported 0.00 MB/s as a measurement
    with pytest.raises(UserError, match=r"^--data .*blank.txt holds no text: give a text file to tokenize$"):
        bench.main(["--quick", "--no_write", "--malloc", "default", "--data", str(tmp_path / "blank.txt")])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"^--out .*a_file/b.md: a part of the path is a file"):
        bench.main(["--quick", "--malloc", "default", "--out", str(tmp_path / "a_file" / "b.md")])
    (tmp_path / "binary.md").write_bytes(b"\xff\xfe binary")  # read at the end, to append to: a traceback then
    with pytest.raises(UserError, match=r"^--out .*binary.md is not UTF-8 text \(line 1, byte offset 0 in the file\): "
                                        r"give another file$"):  # not "convert it", though it starts as UTF-16 does
        bench.main(["--quick", "--malloc", "default", "--out", str(tmp_path / "binary.md")])
    # a name that is none: the error is the only line (the machine's header came first)
    capsys.readouterr()
    for option, value in (("--only", "foo"), ("--model", "huge"), ("--optimizer", "sgd")):
        with pytest.raises(UserError, match=f"^{option} '{value}': choose from "):
            bench.main(["--quick", "--no_write", "--malloc", "default", option, value])
        assert capsys.readouterr().out == ""


def test_given_sizes_win_over_quick_and_the_command_is_kept_quoted(tmp_path, one_thread):
    args = quick_args("--only", "gen", "--model", "tiny", "--new_tokens", "5", "--prompt_len", "3", "--gen_batch", "3",
                      "--dtype", "float32")
    names = [r["name"] + " " + r["note"] for r in bench.run(args, torch.device("cpu"), log=lambda *a: None)]
    with_prompt = [n for n in names if "prompt" in n]
    assert any("B3" in n for n in names) and with_prompt and all("prompt 3 + 5 new" in n for n in with_prompt), names
    text = bench.section_text([], torch.device("cpu"), ["--note", "shared host | busy"])
    assert "- command: `python bench.py --note 'shared host | busy'`" in text


def test_a_compile_that_fails_at_the_first_step_times_eager(monkeypatch, capsys):
    """torch.compile compiles at the first call: a failure there (no C++ compiler) must fall back, as train.py does."""
    def broken(model, **k):
        def call(*a):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    model = bench.build_model("tiny", torch.device("cpu"), 32, 512, None)
    step, compiled = bench.make_train_step(model, torch.device("cpu"), torch.float32, 2, compile=True)
    step()
    assert not compiled() and "torch.compile failed" in capsys.readouterr().err


def test_gen_block_size_fits_without_sliding():
    assert bench.gen_block_size("small", 16, 500) == 576  # 516 rounded up to a multiple of 64
    assert bench.gen_block_size("gpt2", 16, 500) == 1024  # the preset's own is enough
    assert bench.gen_block_size("tiny", 4, 8) == 256


def test_a_kv_cache_past_the_machines_memory_is_refused_before_generating(monkeypatch, one_thread):
    # the cache is allocated after the B1 run without one, quadratic in --new_tokens: --quick --new_tokens 10**7 ran
    # on for hours toward a 38 GiB cache. It is k and v of every layer over the whole block, for the largest batch:
    # tiny (4 layers, n_embd 128) at B3 in fp32 over the 256 positions of prompt 4 + 8 new
    def generated(*a, **k):
        raise AssertionError("generated")
    monkeypatch.setattr(bench, "run_generate", generated)
    need = 2 * 4 * 3 * 256 * 128 * 4
    args = quick_args("--only", "gen", "--dtype", "float32", "--gen_batch", "3")
    monkeypatch.setattr(bench, "physical_memory", lambda: need - 1)
    with pytest.raises(UserError, match=r"^generation with tiny does not fit in memory: give a smaller --gen_batch, "
                                        r".*\(0.00293 GiB of KV cache for block_size 256, more than the machine's "):
        bench.run(args, torch.device("cpu"), log=lambda *a: None)
    monkeypatch.setattr(bench, "physical_memory", lambda: need)  # (fits: on to the generation)
    with pytest.raises(AssertionError, match="^generated$"):
        bench.run(args, torch.device("cpu"), log=lambda *a: None)


def test_targets_name_what_each_row_meets():
    cpu = [bench.row("train", "small B8 T256 V50259", 1500, "tokens/s", torch.bfloat16, 0.70),
           bench.row("ratio", "V4096 bf16 / V50259 fp32", 8.3, "x"),
           bench.row("gen", "small B1 cache / no cache", 4.2, "x")]
    assert bench.check_targets(cpu) == ["target small bf16 MFU >= 50%: 70.0% (small B8 T256 V50259) met",
                                        "target 4096-vocab / GPT-2-vocab fp32 >= 8x: 8.30x (V4096 bf16 / "
                                        "V50259 fp32) met",
                                        "target small B1 cache speed-up >= 5x: 4.20x NOT met"]
    gpu = [dict(bench.row("train", "gpt2 B8 T1024 V50259", 1e5, "tokens/s", torch.bfloat16, 0.42), mem=25.3e9),
           dict(bench.row("train", "gpt2 B32 T1024 V50259", 1e5, "tokens/s", torch.bfloat16, 0.57), mem=19.6e9),
           dict(bench.row("train", "gpt2 B16 T1024 V50259", 1e5, "tokens/s", torch.bfloat16, 0.5), mem=20e9)]
    assert bench.check_targets(gpu, gpu=True) == [
        "target gpt2 bf16 MFU >= 50% on a GPU: 42.0% (gpt2 B8 T1024 V50259) NOT met",
        "target gpt2 B8 T1024 bf16 training in 24 GB: 25.3 GB (gpt2 B8 T1024 V50259) NOT met",
        "target gpt2 bf16 MFU >= 50% on a GPU: 57.0% (gpt2 B32 T1024 V50259) met",
        "target gpt2 bf16 MFU >= 50% on a GPU: 50.0% (gpt2 B16 T1024 V50259) met"]  # 50% is >= 50%
    # the CPU's targets are not a GPU's: an H200 decodes small at B1 launch-bound, 1.3x with the cache (BENCHMARKS.md)
    assert bench.check_targets(cpu, gpu=True) == []


def test_each_optimizer_gets_its_rows(one_thread):
    # one run measures both (a GPU's time is short); Muon's orthogonalization makes its steps slower
    args = quick_args("--only", "train,ratio", "--dtype", "float32", "--optimizer", "muon,adamw")
    rows = bench.run(args, torch.device("cpu"), log=lambda *a: None)
    sec = by_section(rows)
    assert [r["optimizer"] for r in sec["train"]] == ["muon", "adamw"]
    assert [r["optimizer"] for r in sec["ratio"]] == ["muon"] * 3 + ["adamw"] * 3
    assert ", muon" in sec["train"][0]["note"] and ", adamw" in sec["train"][1]["note"]
    assert bench.check_targets(rows) == []  # --quick's V512 is not the target's 4096-token vocabulary
    lines = bench.check_targets([dict(r, name=r["name"].replace("V512 ", "V4096 ")) for r in rows])
    assert [ln.split("(")[1].split(")")[0] for ln in lines] == ["V4096 fp32 / V50259 fp32, muon",
                                                                 "V4096 fp32 / V50259 fp32, adamw"]
    with pytest.raises(UserError, match="--optimizer 'sgd'"):
        bench.run(quick_args("--optimizer", "sgd"), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quick_run_on_cuda():
    rows = bench.run(quick_args("--device", "cuda", "--only", "peak,train,gen"), torch.device("cuda"),
                     log=lambda *a: None)
    sec = by_section(rows)
    assert all(r["unit"] == "TFLOP/s" for r in sec["peak"])
    assert all(r["value"] > 0 for r in rows)
    assert sec["train"][0]["mfu"] > 0
    assert 0 < sec["train"][0]["mem"] < torch.cuda.get_device_properties(0).total_memory  # the step's peak


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recompute_activations_lowers_the_peak_on_cuda():
    mem = {}
    for extra in ((), ("--recompute_activations",)):
        args = quick_args("--device", "cuda", "--only", "train", "--dtype", "bfloat16", "--model", "tiny",
                          "--batch_size", "32", "--block_size", "256", "--steps", "2", *extra)
        (r,) = [r for r in bench.run(args, torch.device("cuda"), log=lambda *a: None) if r["section"] == "train"]
        mem[bool(extra)] = r["mem"]
        assert ("activations recomputed" in r["note"]) == bool(extra)
    assert mem[True] < 0.75 * mem[False], mem


def test_recompute_activations_row(one_thread):
    rows = bench.run(quick_args("--only", "train", "--dtype", "float32", "--recompute_activations"),
                     torch.device("cpu"), log=lambda *a: None)
    (r,) = [r for r in rows if r["section"] == "train"]
    assert r["note"].endswith(", activations recomputed") and r["value"] > 0


def test_retain_freed_memory_in_a_subprocess():
    # process-wide and permanent, so not in the test process itself
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", "import common; print(common.retain_freed_memory())"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import platform
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == ("True" if glibc else "False")


def test_cpu_clock_needs_one_thread():
    n = torch.get_num_threads()  # 1 in the tests (conftest): the refusal is of two
    torch.set_num_threads(2)
    try:
        with pytest.raises(UserError, match="--threads 1"):
            bench.run(quick_args("--clock", "cpu"), torch.device("cpu"))
        torch.set_num_threads(1)
        rows = bench.run(quick_args("--clock", "cpu", "--only", "train"), torch.device("cpu"), log=lambda *a: None)
    finally:
        torch.set_num_threads(n)
        bench.set_clock("wall")
    assert all(r["value"] > 0 for r in rows)


def test_b1_bf16_logits_path_matches_onednn():
    # model._next_logits computes one row's bf16 logits with oneDNN switched off (faster there, see model.py):
    # the result must agree with the oneDNN product and leave the switch as it was
    model = bench.build_model("tiny", torch.device("cpu"), block_size=16, vocab_size=500).eval()
    idx = torch.randint(0, 500, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model._next_logits(idx)
        ref = model.lm_head(model._trunk(idx)[:, -1, :])[:, :500].float()
    assert torch.backends.mkldnn.enabled
    assert fast.shape == (1, 500)
    assert torch.allclose(fast, ref, atol=2e-2, rtol=2e-2)


@pytest.fixture
def one_second_steps(monkeypatch):
    """Every timed interval lasts exactly one second (a clock that advances 1 s per reading), so the figures derived
    from the times are known exactly."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(bench, "clock", lambda: float(next(ticks)))


def test_peak_counts_two_flops_per_multiply_add(one_second_steps, one_thread):
    # an n x n @ n x n matmul is n^3 multiply-adds: 2 n^3 FLOPs (half of it would double every MFU)
    rows = bench.run(quick_args("--only", "peak", "--dtype", "float32", "--peak_sizes", "64,32"), torch.device("cpu"),
                     log=lambda *a: None)
    assert [(r["name"], r["dtype"]) for r in rows][:2] == [("matmul 64x64", "fp32"), ("matmul 32x32", "fp32")]
    assert [r["value"] for r in rows[:2]] == pytest.approx([2 * 64 ** 3 / 1e9, 2 * 32 ** 3 / 1e9])


def test_peak_sizes_past_the_machines_memory_are_refused_before_allocating(monkeypatch, one_thread):
    # a --peak_sizes whose matrices pass the RAM was killed by the system (no line said why) rather than refused
    monkeypatch.setattr(bench, "physical_memory", lambda: 64 * 64 * 10)  # fits 32 x 32, not 64 x 64 (3 x 4 bytes)
    with pytest.raises(UserError, match=r"matmuls of 32,64 do not fit in memory: give smaller --peak_sizes"):
        bench.run(quick_args("--only", "peak", "--dtype", "float32", "--peak_sizes", "32,64"), torch.device("cpu"),
                  log=lambda *a: None)
    # what fits is what the matmul holds at once: a, b and a@b in fp32 (12 bytes an element); in bf16 a and b, and b's
    # fp32 randn as it is converted (8). A byte less is refused (it refused 16 and 10 bytes: sizes that fit)
    for dtype, per_element in ((torch.float32, 12), (torch.bfloat16, 8)):
        monkeypatch.setattr(bench, "physical_memory", lambda: 64 * 64 * per_element)
        assert bench.measure_peak(torch.device("cpu"), dtype, 64, warmup=0, iters=1) > 0
        monkeypatch.setattr(bench, "physical_memory", lambda: 64 * 64 * per_element - 1)
        with pytest.raises(MemoryError, match="more than the machine's"):
            bench.measure_peak(torch.device("cpu"), dtype, 64, warmup=0, iters=1)


def test_training_tokens_per_second_and_mfu_against_the_best_peak(one_second_steps, one_thread):
    # B2 x T32 tokens a one-second step; MFU against the best of the peak sizes (64's here, measured first)
    args = quick_args("--only", "train", "--dtype", "float32", "--peak_sizes", "64,32", "--steps", "1")
    rows = bench.run(args, torch.device("cpu"), log=lambda *a: None)
    (tr,) = [r for r in rows if r["section"] == "train"]
    assert tr["name"] == "tiny B2 T32 V512" and tr["value"] == pytest.approx(2 * 32)
    fpt = bench.build_model("tiny", torch.device("cpu"), 32, 512).flops_per_token(32)
    assert tr["mfu"] == pytest.approx(2 * 32 * fpt / (2 * 64 ** 3))


def test_the_ratio_baseline_trains_in_fp32_whatever_the_dtype(monkeypatch, one_thread):
    # the target compares the small vocabulary in bf16 with GPT-2's vocabulary in fp32: the baseline's forward must not
    # run under bf16 autocast even when --dtype is bfloat16
    logits_dtype = {}
    real = bench.build_model

    def recording(*a, **k):
        model = real(*a, **k)
        def hook(m, inp, out):
            logits_dtype.setdefault(m.config.vocab_size, out[0].dtype)
        model.register_forward_hook(hook)
        return model
    monkeypatch.setattr(bench, "build_model", recording)
    rows = bench.bench_ratio("tiny", torch.device("cpu"), torch.bfloat16, {}, 1, block_size=16, small_vocab=512,
                             warmup=0, iters=1)
    assert logits_dtype == {512: torch.bfloat16, bench.GPT2_VOCAB: torch.float32}
    assert [r["dtype"] for r in rows] == ["bf16", "fp32", ""]


def test_the_ratio_target_is_eight_times():
    rows = [bench.row("ratio", "V4096 bf16 / V50259 fp32", v, "x") for v in (5.0, 8.0)]
    assert bench.check_targets(rows) == ["target 4096-vocab / GPT-2-vocab fp32 >= 8x: 5.00x (V4096 bf16 / V50259 fp32) "
                                         "NOT met",
                                         "target 4096-vocab / GPT-2-vocab fp32 >= 8x: 8.00x (V4096 bf16 / V50259 fp32) "
                                         "met"]


def test_a_section_appended_to_a_file_without_a_final_newline_starts_on_its_own_line(tmp_path):
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\nedited by hand, no newline at the end", encoding="utf-8")
    bench.append_benchmarks(str(out), "## 2025-01-01 00:00 — cpu\n")
    assert out.read_text(encoding="utf-8") == \
        "# Benchmarks\n\nedited by hand, no newline at the end\n\n## 2025-01-01 00:00 — cpu\n"


def test_warmup_zero_is_accepted_and_negative_refused(one_second_steps, one_thread, capsys):
    rows = bench.main(["--quick", "--no_write", "--device", "cpu", "--malloc", "default", "--only", "train",
                       "--dtype", "float32", "--peak_sizes", "16", "--steps", "1", "--warmup", "0"])
    assert [r["section"] for r in rows] == ["peak", "train"]
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--no_write", "--malloc", "default", "--warmup", "-1"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(
        "bench.py: error: argument --warmup: must be at least 0, got -1; see ")


def test_a_list_of_no_names_is_one_line(monkeypatch, capsys):
    # "--only ," ran nothing and printed an empty table; "--dtype ," ended in an IndexError
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("ran with an empty list"))
    for option in ("--only", "--dtype", "--model", "--optimizer"):
        with pytest.raises(UserError, match=f"^{option} ',': choose from "):
            bench.main(["--quick", "--no_write", "--device", "cpu", "--malloc", "default", option, ","])
    assert capsys.readouterr().out == ""


def one_line_error(capsys, argv):
    """What a user sees of bench.py argv: its exit status and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        common.run_main(lambda: bench.main(["--quick", "--no_write", "--device", "cpu", "--malloc", "default", *argv]))
    return e.value.code, capsys.readouterr().err


def test_sizes_past_any_memory_are_refused_in_one_line(monkeypatch, capsys):
    # they ended in tracebacks (an int64 overflow inside torch; libgomp aborting on 2**31 threads)
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured before the input was checked"))
    huge = "1" + "0" * 30
    for section, option in (("train", "--vocab_size"), ("train", "--batch_size"), ("gen", "--gen_batch"),
                            ("peak", "--peak_sizes")):
        code, err = one_line_error(capsys, ["--only", section, option, huge])
        assert code == 1 and err.startswith(f"error: {option} {huge} is too large: give at most ") \
            and err.count("\n") == 1, err
    for section, option in (("peak", "--threads"), ("prepare", "--prepare_threads")):
        code, err = one_line_error(capsys, ["--only", section, option, huge])
        assert code == 1 and err == f"error: {option} {huge}: this machine has {os.cpu_count()} logical cores; give " \
                                    f"at most {os.cpu_count()}\n"


def test_what_does_not_fit_in_memory_names_the_options_to_lower(monkeypatch, capsys, one_thread):
    # a matmul past any machine's memory (refused before allocating), and, where the memory is unknown, one whose
    # size torch cannot even count (nothing is allocated: the same on every machine)
    for memory, why in ((bench.physical_memory, "more than the machine's "),
                        (lambda: None, "Storage size calculation overflowed")):
        monkeypatch.setattr(bench, "physical_memory", memory)
        code, err = one_line_error(capsys, ["--only", "peak", "--peak_sizes", str(2**40)])
        assert code == 1 and err.startswith(f"error: the peak's matmuls of {2**40} do not fit in memory: give smaller "
                                            f"--peak_sizes (") and why in err and err.count("\n") == 1, err
    # weights the machine cannot hold (model.GPT's MemoryError), an allocation it refuses (torch's RuntimeError)
    for section, error, lower in (
            ("train", MemoryError("3.2e+03 GiB of weights, more than the machine's 16 GiB"), "--batch_size, "),
            ("gen", RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 TB"),
             "--gen_batch, "),
            ("ratio", RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 TB"),
             "--ratio_vocab")):
        def refuse(cfg, error=error):
            raise error
        monkeypatch.setattr(bench, "GPT", refuse)
        code, err = one_line_error(capsys, ["--only", section, "--peak_sizes", "16"])
        assert code == 1 and err.startswith("error: ") and "not fit in memory: give a smaller " in err \
            and lower in err and err.endswith(f" ({error})\n") and err.count("\n") == 1, err
    # any other error is not passed off as one of memory
    monkeypatch.setattr(bench, "GPT", lambda cfg: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="^a bug$"):
        bench.main(["--quick", "--no_write", "--device", "cpu", "--malloc", "default", "--only", "train",
                    "--peak_sizes", "16"])


def test_out_must_be_a_benchmarks_file(tmp_path, monkeypatch, one_thread):
    # --out train.py, or --out the --data file, had the table appended to a script or a corpus
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured before --out was checked"))
    for name, text in (("train.py", "import torch\n"), ("corpus.txt", "Once upon a time.\n")):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=rf"^--out .*{name} is not a BENCHMARKS file"):
            bench.main(["--quick", "--malloc", "default", "--device", "cpu", "--out", str(p)])
        assert p.read_text(encoding="utf-8") == text
    with pytest.raises(UserError, match=r"^--out .*corpus.txt is not a BENCHMARKS file"):
        bench.main(["--quick", "--malloc", "default", "--device", "cpu", "--only", "prepare",
                    "--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "corpus.txt")])
    # bench.py itself holds the table's header, in a string: it is no file of tables all the same
    script = tmp_path / "bench.py"
    script.write_text(open(bench.__file__, encoding="utf-8").read(), encoding="utf-8")
    with pytest.raises(UserError, match=r"^--out .*bench.py is not a BENCHMARKS file"):
        bench.main(["--quick", "--malloc", "default", "--device", "cpu", "--out", str(script)])
    monkeypatch.undo()
    # an empty or blank file, one bench.py wrote (or its title kept by hand), or notes holding one of its tables take
    # the table
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "blank.md").write_text("\n\n")
    (tmp_path / "title.md").write_text("# Benchmarks\n\nemptied by hand\n")
    (tmp_path / "notes.md").write_text("# Notes\n\n" + bench.format_table([]) + "\n")
    for name in ("empty.md", "blank.md", "title.md", "notes.md", "new.md", "new.md"):
        bench.main(["--quick", "--malloc", "default", "--device", "cpu", "--only", "peak", "--peak_sizes", "16",
                    "--out", str(tmp_path / name)])
    assert (tmp_path / "new.md").read_text().count("\n## ") == 2
    assert (tmp_path / "title.md").read_text().count("\n## ") == 1
    # without --out (nor --no_write) the table goes to BENCHMARKS.md, where bench.py runs
    monkeypatch.chdir(tmp_path)
    bench.main(["--quick", "--malloc", "default", "--device", "cpu", "--only", "peak", "--peak_sizes", "16"])
    assert (tmp_path / "BENCHMARKS.md").read_text().startswith("# Benchmarks\n")


def test_the_timed_training_step_clips_gradients_as_train_py(monkeypatch):
    # train.py clips the gradient norm by default (a pass over every gradient, ~2% of small's CPU step): a step
    # without it overstated train.py's tokens/s
    from train import DEFAULTS
    clipped, norms = [], []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, *a, **k:
                        clipped.append(max_norm) or norms.append(float(real(params, max_norm, *a, **k))))
    model = bench.build_model("tiny", torch.device("cpu"), 16, 512, None)
    for dtype in (torch.float32, torch.float16):  # fp16: clipped after the GradScaler unscales
        before = [p.detach().clone() for p in model.parameters()]
        step, _ = bench.make_train_step(model, torch.device("cpu"), dtype, 1)
        step()
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), dtype  # the optimizer stepped
    assert clipped == [DEFAULTS["grad_clip"]] * 2
    # the same model and batch: fp16's norm is the true one, not the GradScaler's 65536 times it
    assert 0.5 < norms[1] / norms[0] < 2, norms


def test_cpu_clock_and_prepare_threads_conflict_in_one_line(monkeypatch, capsys):
    # --clock cpu tokenizes on one thread: --prepare_threads 2 was silently measured with 1
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured with a conflicting option"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, err = one_line_error(capsys, ["--only", "prepare", "--clock", "cpu", "--threads", "1",
                                            "--prepare_threads", "2"])
    finally:
        torch.set_num_threads(n)
    assert code == 1 and err.startswith("error: --prepare_threads 2: --clock cpu ") and err.count("\n") == 1, err
    # 1, as the error says, is taken
    ran = []
    monkeypatch.setattr(bench, "run", lambda args, *a, **k: ran.append(args.prepare_threads) or [])
    torch.set_num_threads(1)
    try:
        bench.main(["--quick", "--no_write", "--device", "cpu", "--malloc", "default", "--only", "prepare",
                    "--clock", "cpu", "--threads", "1", "--prepare_threads", "1"])
    finally:
        torch.set_num_threads(n)
        bench.set_clock("wall")
    assert ran == [1]


def test_no_write_with_out_or_note_is_one_line(monkeypatch, capsys, tmp_path):
    # --out and --note were dropped without a word under --no_write
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured with a conflicting option"))
    for option, value in (("--out", str(tmp_path / "B.md")), ("--note", "busy machine")):
        code, err = one_line_error(capsys, [option, value])
        assert code == 1 and err == f"error: --no_write writes nothing: give {option} or --no_write, not both\n", err
    assert not (tmp_path / "B.md").exists()


def test_gpu_samples_run_steps_back_to_back(monkeypatch, one_second_steps):
    # train.py never waits for the GPU between steps: a sync after each timed step left the GPU idle while the host
    # launched the next one's first kernels (gpt2 B8 on an H200: 17.7 ms of kernels in a 19.4 ms step)
    calls, syncs = [], []
    monkeypatch.setattr(bench, "sync", lambda device: syncs.append(len(calls)))
    gpu = torch.device("cuda")
    group = bench.back_to_back(gpu)
    assert group > 1 and bench.back_to_back(torch.device("cpu")) == 1  # a CPU step runs to its end anyway
    seconds = bench.timed(lambda: calls.append(1), gpu, 2, 3, group)
    assert len(calls) == 2 + 3 * group
    assert syncs == [2 + i * group for i in range(4)]  # after the warm-up, then once per sample
    assert seconds == [1 / group] * 3  # each sample's second (one_second_steps) shared by its steps



def test_two_runs_finishing_together_keep_both_sections(tmp_path, monkeypatch):
    # each run reads the file, adds its section and replaces the file: the second to read, before the first had
    # written, dropped the first's section
    path = str(tmp_path / "BENCHMARKS.md")
    real, first = bench.atomic_write_text, threading.Event()
    second = threading.Thread(target=lambda: (first.wait(), bench.append_benchmarks(path, "## second\n")))
    second.start()

    def slow_write(p, text):  # the first run is mid-write when the second finishes
        if threading.current_thread() is not second:
            first.set()
            time.sleep(0.5)
        real(p, text)
    monkeypatch.setattr(bench, "atomic_write_text", slow_write)
    bench.append_benchmarks(path, "## first\n")
    second.join(30)
    text = open(path, encoding="utf-8").read()
    assert text.startswith("# Benchmarks\n") and text.count("# Benchmarks") == 1
    assert "## first\n" in text and "## second\n" in text


def test_a_gpus_rows_are_per_call_and_say_how_they_were_timed(monkeypatch, one_second_steps, one_thread):
    # on a GPU each sample runs its calls back to back: the peak and training rows are per matmul and per step (not per
    # sample, 5x too slow), and their notes say so; a CPU's notes stay "median of N"
    args = quick_args("--only", "peak,train", "--dtype", "float32", "--peak_sizes", "64", "--steps", "1")
    rows = by_section(bench.run(args, torch.device("cpu"), log=lambda *a: None))
    assert "runs of" not in rows["peak"][0]["note"] and "runs of" not in rows["train"][0]["note"]
    monkeypatch.setattr(bench, "back_to_back", lambda device: 4)  # as a GPU's (one_second_steps: a sample is 1 s)
    rows = by_section(bench.run(args, torch.device("cpu"), log=lambda *a: None))
    peak, (tr,) = rows["peak"][0], rows["train"]
    assert (peak["name"], peak["dtype"]) == ("matmul 64x64", "fp32")
    assert peak["value"] == pytest.approx(4 * 2 * 64 ** 3 / 1e9) and " runs of 4" in peak["note"]
    assert tr["value"] == pytest.approx(4 * 2 * 32) and " runs of 4 steps" in tr["note"]


def test_a_read_only_benchmarks_file_is_replaced_all_the_same(tmp_path, monkeypatch):
    # the section is written by replacing the file, which a read-only file in a writable folder allows: the lock taken
    # first (opening it to append) must not fail the run at its end
    path = str(tmp_path / "BENCHMARKS.md")
    bench.append_benchmarks(path, "## first\n")

    def opener(p, mode="r", *args, **kwargs):
        if p == path and set(mode) & set("wax+"):
            raise PermissionError(13, "Permission denied", p)
        return open(p, mode, *args, **kwargs)
    monkeypatch.setattr(bench, "open", opener, raising=False)
    bench.append_benchmarks(path, "## second\n")
    text = open(path, encoding="utf-8").read()
    assert text.count("# Benchmarks") == 1 and "## first\n" in text and "## second\n" in text


def test_a_first_write_that_fails_leaves_no_empty_benchmarks_file(tmp_path, monkeypatch):
    # the lock is taken on the file, created empty when missing: a failed first write left an empty BENCHMARKS.md
    path = str(tmp_path / "BENCHMARKS.md")

    def full(p, text):
        raise OSError(28, "No space left on device", p)
    monkeypatch.setattr(bench, "atomic_write_text", full)
    with pytest.raises(OSError):
        bench.append_benchmarks(path, "## first\n")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    bench.append_benchmarks(path, "## first\n")
    with pytest.raises(KeyboardInterrupt):  # a file that was there stays, whatever happens
        with monkeypatch.context() as m:
            m.setattr(bench, "atomic_write_text", lambda p, text: (_ for _ in ()).throw(KeyboardInterrupt))
            bench.append_benchmarks(path, "## second\n")
    assert open(path, encoding="utf-8").read().count("## first\n") == 1


def test_three_runs_finishing_together_keep_every_section(tmp_path, monkeypatch):
    # a run that waited for the lock on a file the first run has since replaced holds the lock of a file no one else
    # takes: it must look again, or it writes beside the third run (which locked the new file) and one section is lost
    path = str(tmp_path / "BENCHMARKS.md")
    real = bench.atomic_write_text
    first_writing, third_read = threading.Event(), threading.Event()
    runs = {}

    def run(name):
        runs[threading.current_thread()] = name
        bench.append_benchmarks(path, f"## {name}\n")

    def slow_write(p, text):
        name = runs.get(threading.current_thread(), "first")
        if name == "first":  # the second run opens the file and waits for its lock meanwhile
            first_writing.set()
            time.sleep(0.5)
            real(p, text)
            third.start()  # the third opens the new file, locks it at once and reads it
            assert third_read.wait(30)
            return
        if name == "third":
            third_read.set()
            time.sleep(0.5)  # the second, let in on the old file, writes meanwhile
        real(p, text)
    monkeypatch.setattr(bench, "atomic_write_text", slow_write)
    second = threading.Thread(target=lambda: (first_writing.wait(), run("second")))
    third = threading.Thread(target=run, args=("third",))
    second.start()
    bench.append_benchmarks(path, "## first\n")
    second.join(30)
    third.join(30)
    text = open(path, encoding="utf-8").read()
    assert text.count("# Benchmarks") == 1 and all(f"## {n}\n" in text for n in ("first", "second", "third")), text


# ---------------------------------------------------------------- the figures from the times (a mutation audit's)

@pytest.fixture
def intervals(monkeypatch):
    """intervals(1, 4, 2): the timed intervals last 1, 4, 2, 1, 4, ... seconds in turn (a clock read in pairs: a start,
    then an end), so a median, a min and a mean of them differ."""
    def use(*seconds):
        state = dict(now=0.0, reads=0, k=0)

        def clock():
            if state["reads"] % 2:  # an end: the next interval has passed since its start
                state["now"] += seconds[state["k"] % len(seconds)]
                state["k"] += 1
            state["reads"] += 1
            return state["now"]
        monkeypatch.setattr(bench, "clock", clock)
    return use


def test_a_sample_is_timed_from_before_its_first_call(monkeypatch):
    # a clock that advances one second a call: each call of a group of 4 takes 1 s, warm-up calls untimed
    now = [0.0]
    monkeypatch.setattr(bench, "clock", lambda: now[0])

    def call():
        now[0] += 1.0
    assert bench.timed(call, torch.device("cpu"), 2, 3, group=4) == [1.0] * 3


def test_interleaved_steps_are_warmed_up_and_each_synchronised(monkeypatch):
    # the ratio's two steps in turn: warm-up calls of both, then each timed call waits for the device before its clock
    events, now = [], [0.0]
    monkeypatch.setattr(bench, "clock", lambda: now[0])
    monkeypatch.setattr(bench, "sync", lambda device: events.append("sync"))

    def step(name, seconds):
        def call():
            events.append(name)
            now[0] += seconds
        return call
    times = bench.timed_interleaved([step("a", 1.0), step("b", 3.0)], torch.device("cpu"), 2, 2)
    assert times == [[1.0, 1.0], [3.0, 3.0]]
    assert events == ["a", "b", "a", "b", "sync"] + ["a", "sync", "b", "sync"] * 2


def test_flop_units():
    assert bench.flop_unit(torch.device("cuda")) == (1e12, "TFLOP/s")
    assert bench.flop_unit(torch.device("cpu")) == (1e9, "GFLOP/s")


def test_peak_and_training_rows_are_medians_and_mfu_is_over_the_peak_of_the_dtype_trained_in(intervals, one_thread):
    # samples of 1, 4 and 2 s: the median is 2 s (the min 1 s, the mean 7/3 s, the max 4 s)
    intervals(1, 4, 2)
    cpu = torch.device("cpu")
    assert bench.measure_peak(cpu, torch.float32, 16, warmup=0, iters=3) == 2 * 16 ** 3 / 2
    fpt = bench.build_model("tiny", cpu, 32, 512).flops_per_token(32)
    peaks = {torch.float32: 1e9, torch.bfloat16: 4e9}
    for dtype in (torch.float32, torch.bfloat16):
        r = bench.bench_train("tiny", cpu, dtype, peaks, 2, 32, 512, warmup=0, iters=3)
        assert r["value"] == 2 * 32 / 2 and r["mfu"] == pytest.approx(2 * 32 / 2 * fpt / peaks[dtype])
        assert r["note"].startswith("step 2000 ms, ")


def test_a_compiled_step_gets_one_more_warm_up_and_recomputation_reaches_the_model(monkeypatch, one_thread):
    # torch.compile compiles at the first call: that call must not be timed. (torch.compile stubbed: nothing compiles)
    monkeypatch.setattr(torch, "compile", lambda model, **k: (lambda *a: model(*a)))
    warmups, recompute = [], []
    monkeypatch.setattr(bench, "timed", lambda fn, device, warmup, iters, group=1: warmups.append(warmup) or [1.0])
    monkeypatch.setattr(bench, "timed_interleaved",
                        lambda fns, device, warmup, iters: warmups.append(warmup) or [[1.0] for _ in fns])
    real = bench.make_train_step
    monkeypatch.setattr(bench, "make_train_step",
                        lambda model, *a, **k: recompute.append(model.recompute_activations) or real(model, *a, **k))
    cpu = torch.device("cpu")
    for compile in (False, True):
        bench.bench_train("tiny", cpu, torch.float32, {}, 1, 16, 512, compile=compile, warmup=2, iters=1,
                          recompute_activations=compile)
        bench.bench_ratio("tiny", cpu, torch.float32, {}, 1, 16, 512, compile=compile, warmup=2, iters=1)
    assert warmups == [2, 2, 3, 3]
    assert recompute[0] is False and recompute[3] is True  # (the ratio's models build 2 and 3, 5 and 6: not asked)


def test_fp16_steps_scale_the_loss_as_train_py(monkeypatch):
    # fp16's GradScaler is part of its step's cost: the timed step must use it, and only in fp16
    enabled = []
    monkeypatch.setattr(bench, "train_step", lambda fwd, opt, scaler, *a: enabled.append(scaler.is_enabled()))
    for dtype in (torch.float16, torch.float32):
        model = bench.build_model("tiny", torch.device("cpu"), 16, 512)
        step, _ = bench.make_train_step(model, torch.device("cpu"), dtype, 1)
        step()
    assert enabled == [True, False]


def test_generation_rows_count_the_new_tokens_after_a_warm_up(monkeypatch, intervals):
    # the timed runs take 4 s (B1 without the cache), 1 s (B1 with it), 2 s (B2): the cache's speed-up is 4x
    calls = []

    def generate(model, device, dtype, idx, new_tokens, use_cache):
        calls.append((idx.size(0), new_tokens, use_cache))
        return idx.size(0) * new_tokens
    monkeypatch.setattr(bench, "run_generate", generate)
    intervals(4, 1, 2)
    rows = bench.bench_gen("tiny", torch.device("cpu"), torch.float32, gen_batch=2, prompt_len=4, new_tokens=20,
                           vocab_size=512)
    assert calls == [(1, 8, False), (1, 20, False), (1, 8, True), (1, 20, True), (2, 8, True), (2, 20, True)]
    assert [(r["name"], r["value"]) for r in rows] == [("tiny B1 no cache", 5.0), ("tiny B1 KV cache", 20.0),
                                                        ("tiny B2 KV cache", 20.0), ("tiny B1 cache / no cache", 4.0)]
    # a run that stopped short of its tokens is no figure
    monkeypatch.setattr(bench, "run_generate", lambda model, device, dtype, idx, new_tokens, use_cache:
                        idx.size(0) * new_tokens - (new_tokens > 8))
    with pytest.raises(RuntimeError, match="generation stopped early: 19 of 20 tokens"):
        bench.bench_gen("tiny", torch.device("cpu"), torch.float32, gen_batch=2, prompt_len=4, new_tokens=20,
                        vocab_size=512)


def test_prepare_counts_utf8_bytes_and_one_pass_of_tokens_over_the_median_time(tmp_path, intervals):
    text = "Zoë a vu le café. Un œuf.\nÇa va très bien.\n" * 50  # not ASCII: bytes are not characters
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    intervals(1, 4, 2)
    try:
        mbs, tps = bench.bench_prepare(str(p), threads=1, repeats=3)
    except UserError as e:
        pytest.skip(f"no GPT-2 BPE files here: {e}")
    from setup_tokenizer import get_tokenizer
    enc = get_tokenizer("gpt2")
    lines = text.split("\n")
    assert mbs["value"] * 1e6 == pytest.approx(sum(len(line.encode("utf-8")) for line in lines) / 2)
    assert tps["value"] == pytest.approx(sum(len(enc.encode_ordinary(line)) for line in lines) / 2)


def test_table_values_and_target_boundaries():
    assert [bench.fmt_value(v) for v in (1000, 999.6, 100, 12.34, 9.999, 1.234)] == \
        ["1,000", "1000", "100", "12.3", "10.00", "1.23"]
    gpu = [dict(bench.row("train", "gpt2 B8 T1024 V50259", 1e5, "tokens/s", torch.bfloat16, 0.5), mem=24e9)]
    assert bench.check_targets(gpu, gpu=True)[1].endswith(": 24.0 GB (gpt2 B8 T1024 V50259) met")  # 24 GB fits
    assert bench.check_targets([bench.row("gen", "small B1 cache / no cache", 5.0, "x")]) == \
        ["target small B1 cache speed-up >= 5x: 5.00x met"]
    assert bench.off_target(bench.get_parser().parse_args(["--prompt_len", "64"])) == "--prompt_len"


def test_sizes_just_past_the_bound_are_refused():
    args = bench.get_parser().parse_args(["--batch_size", str(bench.MAX_SIZE + 1)])
    with pytest.raises(UserError, match=r"^--batch_size 1099511627777 is too large: give at most 1,099,511,627,776"):
        bench.check_options(args)
    bench.check_options(bench.get_parser().parse_args(["--batch_size", str(bench.MAX_SIZE)]))


def test_run_hands_each_section_what_its_options_ask(monkeypatch, one_thread):
    # --warmup 0 is no warm-up (not --quick's 1); a dtype named twice trains once; the ratio's fp32 baseline gets an
    # fp32 peak for its MFU whatever --dtype is; --clock cpu tokenizes on one thread (CPU time adds up over threads)
    seen = {}

    def peak(device, dtypes, sizes, **k):
        seen["peak"] = dtypes
        return [], {d: 1.0 for d in dtypes}

    def train(preset, device, dtype, peaks, batch_size, block_size, vocab_size, variant, compile, warmup, *a):
        seen.setdefault("train", []).append((dtype, warmup))
        return bench.row("train", preset, 1, "tokens/s", dtype)

    def prepare(path, threads, **k):
        seen["prepare"] = threads
        return [bench.row("prepare", "tokenizer", 1, "MB/s")]
    monkeypatch.setattr(bench, "bench_peak", peak)
    monkeypatch.setattr(bench, "bench_train", train)
    monkeypatch.setattr(bench, "bench_ratio", lambda *a, **k: [])
    monkeypatch.setattr(bench, "bench_prepare", prepare)
    bench.run(quick_args("--only", "train,ratio", "--dtype", "bfloat16,bfloat16", "--warmup", "0"),
              torch.device("cpu"), log=lambda *a: None)
    assert seen["train"] == [(torch.bfloat16, 0)] and seen["peak"] == [torch.bfloat16, torch.float32]
    try:
        bench.run(quick_args("--only", "prepare", "--clock", "cpu"), torch.device("cpu"), log=lambda *a: None)
    finally:
        bench.set_clock("wall")
    assert seen["prepare"] == 1


def test_default_sizes_without_quick(monkeypatch):
    # the sizes the targets are stated for (off_target: None): peak 2048 and 4096 on a CPU, B8, 500 new tokens after a
    # 16-token prompt, B8 generation
    seen = {}
    monkeypatch.setattr(bench, "bench_peak", lambda device, dtypes, sizes, **k: seen.update(sizes=sizes) or ([], {}))
    monkeypatch.setattr(bench, "bench_train", lambda preset, device, dtype, peaks, batch_size, *a:
                        seen.update(batch_size=batch_size) or bench.row("train", preset, 1, "tokens/s"))
    monkeypatch.setattr(bench, "bench_gen", lambda preset, device, dtype, gen_batch, prompt_len, new_tokens, *a:
                        seen.update(gen=(gen_batch, prompt_len, new_tokens)) or [])
    args = bench.get_parser().parse_args(["--no_write", "--device", "cpu", "--only", "peak,train,gen",
                                          "--model", "tiny", "--dtype", "float32"])
    bench.run(args, torch.device("cpu"), log=lambda *a: None)
    assert seen == dict(sizes=[2048, 4096], batch_size=8, gen=(8, 16, 500)) and bench.off_target(args) is None


def test_device_sync_and_the_tf32_note(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: synced.append("mps"))
    for kind in ("cpu", "cuda", "mps"):
        bench.sync(torch.device(kind))
    assert synced == ["cuda", "mps"]
    # a GPU's fp32 matmuls on tensor cores (main() allows TF32, as train.py): its fp32 peak row says so, bf16's not
    monkeypatch.setattr(bench, "measure_peak", lambda device, dtype, n, warmup, iters: 1e12)
    allowed = torch.backends.cuda.matmul.allow_tf32  # (a property of torch's: monkeypatch cannot undo it)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rows, peaks = bench.bench_peak(torch.device("cuda"), [torch.float32, torch.bfloat16], [64])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    assert [r["note"].endswith(" (TF32 allowed)") for r in rows] == [True, False]
    assert [(r["value"], r["unit"]) for r in rows] == [(1.0, "TFLOP/s")] * 2


def test_model_names_and_which_rows_a_target_judges():
    cpu = torch.device("cpu")
    assert bench.model_name(bench.build_model("small", cpu, 16, 512, "modern")) == "small-modern"
    assert bench.model_name(bench.build_model("tiny", cpu, 16, 512)) == "tiny"  # tiny's own variant is modern
    # the cache target judges the speed-up row only, the 24 GB one gpt2 B8 at T1024 only
    gen = [bench.row("gen", f"small B1 {what}", 100.0, "tokens/s") for what in ("no cache", "KV cache")]
    assert bench.check_targets(gen) == []
    gpu = [dict(bench.row("train", "gpt2 B8 T512 V50259", 1e5, "tokens/s", torch.bfloat16, 0.5), mem=1e9)]
    judged = [line.split(":")[0] for line in bench.check_targets(gpu, gpu=True)]
    assert judged == ["target gpt2 bf16 MFU >= 50% on a GPU"]


def test_prepare_warms_the_tokenizer_up_before_timing(tmp_path, monkeypatch):
    import prepare
    p = tmp_path / "t.txt"
    p.write_text("one line\n" * 300, encoding="utf-8")
    sizes, real = [], prepare.encode_texts
    monkeypatch.setattr(prepare, "encode_texts", lambda enc, texts, threads: sizes.append(len(texts)) or
                        real(enc, texts, threads))
    try:
        bench.bench_prepare(str(p), threads=1, repeats=2)
    except UserError as e:
        pytest.skip(f"no GPT-2 BPE files here: {e}")
    assert sizes == [200, 301, 301]  # tiktoken builds its regex at the first call: not in a timed pass
