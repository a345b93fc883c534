"""
train.py under torchrun (DDP) on the CPU with gloo, 2 processes: the same loss curve as one process with the same
global batch, checkpoints that resume on another number of ranks at the same point of the epoch, and clean stops on
Ctrl-C and on another rank's death. A run is a real `python -m torch.distributed.run` of train.py where torchrun's part
is checked (its rendezvous, its signals, its stopping the other ranks); elsewhere the ranks are started as torchrun
starts them, without its process (see ranks).
"""
import contextlib
import errno
import inspect
import math
import os
import shutil
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import types

import pytest
import torch

import common
import train
from checkpoint import load_checkpoint
from conftest import built_once
from test_train import ROOT, args_for, env, one_thread, read_metrics  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")

STEPS = 10  # per run; the single-process reference runs 2 * STEPS
MODEL = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64", "--eval_batches", "8",
         "--dtype", "float32", "--lr", "4e-3", "--variant", "modern", "--log_interval", "0.001", "--save_interval", "0"]


def torchrun(argv, nproc=2, launch=("--standalone",), device="cpu", script=None, **popen):
    """train.py (or script, a wrapper that runs it) under torchrun: a Popen if popen options are given, else the
    finished run, which must succeed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={nproc}",
           str(script or os.path.join(ROOT, "train.py")), "--no-color", "--device", device, *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **popen)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def losses(metrics_path, key="train_loss"):
    return {r["step"]: r[key] for r in read_metrics(metrics_path) if r.get(key) is not None}


def assert_same_curve(got, want, steps):
    """The losses of `steps` agree to float summation order. A one-off miss in CI (one step 1.7e-3 off, the others
    within 5e-4) did not reproduce here in 8 runs under load, and a 1e-3 relative noise on every gradient moves these
    curves by at most 1e-5: so a miss is a real difference, and the message shows the whole curve to find it."""
    bad = [s for s in steps if got.get(s) != pytest.approx(want[s], rel=1e-4, abs=1e-4)]
    table = "\n".join(f"step {s}: {got.get(s)} vs {want[s]} ({(got.get(s) or 0) - want[s]:+.2e})" for s in steps)
    assert not bad, f"steps {bad} differ:\n{table}"


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """Single process, batch 8: 2*STEPS steps in one go, and STEPS then stopped. 2 ranks, batch 2 x 2 accumulated
    each: STEPS steps, on two nodes (multi-node as on two machines; --standalone's one node is the other tests').
    Built once for all pytest-xdist workers (built_once): tests write elsewhere."""
    return built_once(tmp_path_factory, "ddp_runs", lambda out: two_rank_runs(env, out))


def two_rank_runs(env, out):
    spe = math.ceil(len(train.Windows(train.load_meta(env["data"], "story"), "train", 64)) / 8)
    evals = ["--eval_interval", 5 * 100 / spe]  # every 5 steps
    one = train.train(args_for(env, out / "one", "--dataset", "story", "--batch_size", "8", "--max_steps", 2 * STEPS,
                               *MODEL, *evals))
    half = train.train(args_for(env, out / "half", "--dataset", "story", "--batch_size", "8", "--max_steps", STEPS,
                                *MODEL, *evals))
    two = out / "two" / "{dataset}.pt"
    # as on two machines: two torchrun agents of one process each, that find each other through --rdzv_endpoint
    # (here both on this machine; one run for both scenarios, as each costs ~10 s of torchrun starting). --eval_batches
    # 16 of 2 windows on each of 2 ranks: the 64 val windows of one process's 8 batches of 8
    argv = ["--data_dir", env["data"], "--dataset", "story", "--output_checkpoint", two, "--batch_size", "2",
            "--grad_accum", "2", "--max_steps", STEPS, *MODEL, *evals, "--eval_batches", "16"]
    launch = rendezvous()
    nodes = [torchrun(argv, nproc=1, launch=launch, stdin=subprocess.DEVNULL) for _ in range(2)]
    logs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs
    return {"out": str(out), "one": one, "half": half, "two": str(two).replace("{dataset}", "story"),
            "log": "".join(stdout for stdout, _ in logs), "spe": spe}  # (which agent has rank 0 is the rendezvous')


def free_port():
    """A port of this machine that was free a moment ago."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rendezvous():
    """torchrun's options for one of 2 agents (machines) that meet at an endpoint on a free port of this machine."""
    return "--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=test"


def ranks(argvs, machines=False, script=None, timeout=240, grace=10):
    """train.py (or script, with argvs as its whole arguments) in one process a rank, argvs[rank] each, started as
    torchrun starts its ranks, by the variables init_process_group and the scripts read, without torchrun's own process:
    for the tests where nothing checked is torchrun's (it costs as much CPU as a rank, importing torch). machines: one
    rank a machine (LOCAL_RANK 0 each, as under two torchrun agents), else the ranks of one machine. Each rank's
    (returncode, stdout, stderr) once all ended, the returncode None where it was killed, still running timeout seconds
    on, or grace seconds after another rank failed (torchrun ends the others at once: they would wait for it until
    --dist_timeout)."""
    port, world = str(free_port()), len(argvs)
    with tempfile.TemporaryDirectory() as logs:
        procs = []
        try:
            for rank, argv in enumerate(argvs):
                local = (0, 1) if machines else (rank, world)
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                       "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(local[0]),
                       "LOCAL_WORLD_SIZE": str(local[1])}
                cmd = [sys.executable, str(script), *map(str, argv)] if script else \
                    [sys.executable, os.path.join(ROOT, "train.py"), "--no-color", "--device", "cpu", *map(str, argv)]
                with open(os.path.join(logs, f"{rank}.out"), "w") as out, \
                        open(os.path.join(logs, f"{rank}.err"), "w") as err:
                    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=err, start_new_session=True))
            deadline = time.time() + timeout
            while any(proc.poll() is None for proc in procs) and time.time() < deadline:
                if any(proc.returncode for proc in procs):  # one failed
                    deadline = min(deadline, time.time() + grace)
                time.sleep(0.1)
        finally:
            codes = [proc.poll() for proc in procs]
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return [(code, *(read(os.path.join(logs, f"{rank}.{s}")) for s in ("out", "err")))
                for rank, code in enumerate(codes)]


def read(path):
    with open(path) as f:
        return f.read()


def ranks_ok(argv, nproc=2):
    """One machine's nproc ranks of train.py with argv (see ranks), which must all succeed: (stdout, stderr), each
    the ranks' joined."""
    done = ranks([argv] * nproc)
    assert [code for code, _, _ in done] == [0] * nproc, [(out[-2000:], err[-3000:]) for _, out, err in done]
    return "".join(out for _, out, _ in done), "".join(err for _, _, err in done)


def test_two_ranks_follow_one_process_with_the_same_global_batch(runs):
    one, two = losses(runs["one"]["metrics"]), losses(os.path.join(runs["out"], "two", "story_metrics.jsonl"))
    assert sorted(two) == list(range(1, STEPS + 1))
    assert two[STEPS] < two[1] - 0.3  # it learns (10 steps of warmup: 6.25 -> 5.78 in the epoch order of seed 1337)
    assert_same_curve(two, one, sorted(two))
    # evaluations split the val windows between the ranks: the same val loss as one process
    val_one, val_two = (losses(m, "val_loss") for m in (runs["one"]["metrics"],
                                                          os.path.join(runs["out"], "two", "story_metrics.jsonl")))
    assert val_two and all(val_two[s] == pytest.approx(val_one[s], rel=1e-4) for s in val_two)
    bpb_one, bpb_two = (losses(m, "val_bpb") for m in (runs["one"]["metrics"],
                                                       os.path.join(runs["out"], "two", "story_metrics.jsonl")))
    assert bpb_two.keys() == val_two.keys() and all(bpb_two[s] == pytest.approx(bpb_one[s], rel=1e-4) for s in bpb_two)
    # one rank logs: each line once; the banner shows the ranks
    assert len(re.findall(rf"^step {STEPS} ", runs["log"], re.M)) == 1 and "2 ranks x 2x2x64" in runs["log"]
    ck = load_checkpoint(runs["two"])
    assert ck["step"] == STEPS and ck["epoch_windows"] == 8 * STEPS and ck["args"]["world_size"] == 2


def test_a_two_rank_checkpoint_resumes_in_one_process(env, runs, tmp_path, capsys):
    # the batch is per rank: one process takes twice as much to keep the global batch of the 2-rank run
    out = tmp_path / "resumed1"
    r = train.train(args_for(env, out, "--checkpoint", runs["two"], "--batch_size", "8", "--grad_accum", "1",
                             "--max_steps", STEPS,
                             "--output_checkpoint", out / "{dataset}.pt", fresh=False))
    assert "windows a step" not in capsys.readouterr().err  # the same global batch: nothing to warn of
    assert r["steps"] == 2 * STEPS
    one = losses(runs["one"]["metrics"])
    resumed = losses(r["metrics"])
    assert sorted(resumed) == list(range(STEPS + 1, 2 * STEPS + 1))  # on from the 2-rank run's last step
    assert_same_curve(resumed, one, range(STEPS + 1, 2 * STEPS + 1))
    a, b = load_checkpoint(runs["one"]["checkpoint"]), load_checkpoint(r["checkpoint"])
    assert a["epoch_windows"] == b["epoch_windows"] == 16 * STEPS  # the same point of the epoch
    # equal up to float summation order, which Adam amplifies where gradients are ~0 (the key biases: attention
    # ignores a constant added to every key): ~1e-5 after 2*STEPS steps of lr 4e-3
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4), k


def test_a_one_process_checkpoint_resumes_on_two_ranks(env, runs, tmp_path):
    out = tmp_path / "resumed2"
    ranks_ok(["--checkpoint", runs["half"]["checkpoint"], "--batch_size", "4", "--max_steps", STEPS,
              "--output_checkpoint", out / "{dataset}.pt"])
    one, resumed = losses(runs["one"]["metrics"]), losses(out / "story_metrics.jsonl")
    assert_same_curve(resumed, one, range(STEPS + 1, 2 * STEPS + 1))
    assert load_checkpoint(str(out / "story.pt"))["epoch_windows"] == 16 * STEPS


def test_a_two_rank_run_with_dropout_resumes_exactly(env, tmp_path, capsys):
    """Dropout draws each rank's masks from its own random stream; only rank 0's is in the checkpoint, so the others
    must draw the same masks after a resume by construction: 2 epochs in one go equal the first epoch's checkpoint
    continued for the second, bit for bit."""
    whole = tmp_path / "whole"
    # (1 layer x 32, not MODEL's 2 x 64: the masks are the same draws in a smaller model, at a third of the steps' time)
    ranks_ok(["--data_dir", env["data"], "--dataset", "mini", "--batch_size", "4", *MODEL, "--n_layer", "1", "--n_embd",
              "32", "--dropout", "0.1",
              "--eval_interval", "0", "--epochs", "2", "--output_checkpoint", whole / "{dataset}_{epoch}.pt"])
    stdout, _ = ranks_ok(["--checkpoint", whole / "mini_1.pt", "--output_checkpoint",
                          tmp_path / "resumed" / "{dataset}_{epoch}.pt"])
    a, b = losses(whole / "mini_metrics.jsonl"), losses(tmp_path / "resumed" / "mini_metrics.jsonl")
    assert len(b) > 3 and set(b) < set(a)
    assert all(b[s] == a[s] for s in b), assert_same_curve(b, a, sorted(b))  # bit for bit, else show the curves
    ck_a, ck_b = load_checkpoint(str(whole / "mini_2.pt")), load_checkpoint(str(tmp_path / "resumed" / "mini_2.pt"))
    assert ck_a["step"] == ck_b["step"] and all(torch.equal(ck_a["model"][k], ck_b["model"][k]) for k in ck_a["model"])
    # on another number of processes the masks are others: said where the resume is, as the one thing not exact
    assert "dropout: the run drew" not in stdout
    train.train(train.parse_args(["--checkpoint", str(whole / "mini_1.pt"), "--batch_size", "8", "--max_steps", "1",
                                  "--output_checkpoint", str(tmp_path / "one" / "{dataset}_{epoch}.pt"), "--no-color"]))
    assert ("(dropout: the run drew its masks in 2 process(es), this one in 1, so it goes on with other masks, "
            "not bit for bit as on 2)") in capsys.readouterr().out


def test_each_rank_draws_its_own_dropout_masks_and_again_on_resume(monkeypatch):
    """Every rank starts from the same --seed: without a stream of their own the ranks drew the same dropout masks,
    half the noise of the global batch, which no loss curve shows (the run above resumes exactly either way: every
    rank goes on with rank 0's saved stream). One take_step on ranks 0 to 2, its train_step a mask dropout draws."""
    def draw():
        return torch.nn.functional.dropout(torch.ones(64), 0.5)

    def mask(*step_args, **kw):
        masks.append(draw())
        return torch.tensor(0.0)

    def step(rank, at_step):
        run = types.SimpleNamespace(
            args=types.SimpleNamespace(seed=1337, compile=False, block_size=64, grad_clip=1.0),
            p=types.SimpleNamespace(step=at_step, epoch_windows=0, tokens=0),
            dist=types.SimpleNamespace(rank=rank, world=3),
            clock=types.SimpleNamespace(agreed=0, held_back=0), config=types.SimpleNamespace(dropout=0.1),
            optimizer=types.SimpleNamespace(param_groups=[{}]), tally=types.SimpleNamespace(add=lambda *a: None),
            total_steps=10, budget=None, budget_warmup=None, run_steps=0, run_tokens=0, fwd=None, scaler=None,
            device=torch.device("cpu"), dtype=torch.float32)
        train.Run.take_step(run, [], 1, 64)
        return masks.pop()

    masks = []
    monkeypatch.setattr(train, "train_step", mask)
    monkeypatch.setattr(train, "step_lr", lambda *a: 1e-3)
    with torch.random.fork_rng(devices=[]):  # (the session's generator as it was, after)
        torch.manual_seed(1337)  # as train.py seeds every rank
        state = torch.get_rng_state()
        drawn = []
        for rank in range(3):
            torch.set_rng_state(state)
            drawn.append(step(rank, 5))
        assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2])
        assert not torch.equal(drawn[0], drawn[2])
        torch.set_rng_state(state)  # rank 0 draws from the stream of one process, the one saved in checkpoints
        assert torch.equal(drawn[0], draw())
        torch.manual_seed(7)  # a rank resumed at step 5 (only rank 0's stream is in checkpoints) draws the same
        assert torch.equal(step(1, 5), drawn[1]) and torch.equal(step(2, 5), drawn[2])
        assert not torch.equal(step(1, 6), drawn[1])  # and other masks each step


def test_overwriting_the_best_file_drops_its_bar_on_every_rank(env, runs, tmp_path):
    """--reset_epoch --overwrite removes the run's best file at the first save, and its val loss as the bar with it:
    on rank 0 only, so the other ranks counted --patience against the old bar and stopped alone (a lost rank)."""
    shutil.copytree(os.path.dirname(runs["half"]["checkpoint"]), tmp_path / "half")
    ck = tmp_path / "half" / os.path.basename(runs["half"]["checkpoint"])
    step = 100 / runs["spe"]  # one step, in % of an epoch
    stdout, stderr = ranks_ok(["--checkpoint", ck, "--reset_epoch", "--overwrite", "--batch_size", "4", "--lr",
                               "1e-12", "--min_lr", "1e-13", "--max_steps", "12", "--save_interval", step,
                               "--eval_interval", 3 * step, "--patience", "1"])
    assert "stopping early" in stdout + stderr and (tmp_path / "half" / "story_best.pt").exists()


def test_another_global_batch_keeps_the_place_in_the_schedule(env, runs, tmp_path, capsys):
    # resumed on one process with the per-rank batch options: half the global batch, so twice the steps per
    # epoch; the step count follows the windows done, which keeps the learning rate where the run was
    out = tmp_path / "smaller"
    r = train.train(args_for(env, out, "--checkpoint", runs["two"], "--max_steps", 1, "--output_checkpoint",
                             out / "{dataset}.pt", fresh=False))
    # said, with the option that keeps the run's 2 ranks x 2 x 2 windows (it was silent: the user scaling down got
    # another run than the one continued)
    assert ("the checkpoint's run took 8 windows a step on 2 process(es), this one 4 on 1 (--batch_size and "
            "--grad_accum are per process): not the same steps as that run; --grad_accum 4 keeps its 8"
            ) in capsys.readouterr().err
    ck = load_checkpoint(r["checkpoint"])
    assert ck["epoch_windows"] == 8 * STEPS + 4 and ck["step"] == 2 * STEPS + 1


def test_another_global_batch_that_no_options_keep_is_said_so():
    """16 windows a step continued on 3 processes: no whole --batch_size and --grad_accum make it, and the warning
    named "a --batch_size x --grad_accum x 3 processes of 16" as if some did."""
    per_process = types.SimpleNamespace(batch_size=4, grad_accum=2)
    said = train.other_global_batch(per_process, 16, 2, 24, 3)
    assert said.endswith("; no options keep its 16 on 3 processes, which take a multiple of 3"), said
    said = train.other_global_batch(per_process, 15, 1, 24, 3)  # 5 x 1 x 3 does
    assert said.endswith("; a --batch_size x --grad_accum x 3 processes of 15 keeps it"), said


def test_a_time_budget_ends_every_rank_at_the_same_step(env, tmp_path):
    """The budget's clock is agreed on by the ranks each step: the learning rate, the evaluations and the end are
    the same on both, so the run ends together (a rank that went on alone would hang in its next all-reduce)."""
    out = tmp_path / "budget"
    budget = 4.8  # seconds: 7 epochs of mini on a busy 1-core machine, where the test asks for more than 1
    stdout, _ = ranks_ok(["--data_dir", env["data"], "--dataset", "mini", "--output_checkpoint", out / "{dataset}.pt",
                          "--batch_size", "4", "--time_budget", budget / 60, *MODEL])
    assert stdout.count("time budget: ") == 1, stdout[-2000:]
    ck = load_checkpoint(str(out / "mini.pt"))
    recs = read_metrics(out / "mini_metrics.jsonl")
    assert ck["step"] == recs[-1]["step"] and recs[-1]["val_loss"] is not None  # evaluated when the budget ended
    # stopped early enough to fit the last eval and save
    assert ck["epoch"] > 1 and 0.8 * budget < ck["elapsed"] < budget + 5


def two_machines(argvs):
    """Two ranks, one a machine as under two torchrun agents, each with its own argv (see ranks; the rendezvous of
    torchrun's agents is the runs fixture's): their stderr, once both ended (60 s at most: they were killed, and the
    test failed)."""
    done = ranks(argvs, machines=True, timeout=60, grace=60)
    codes, logs = [code for code, _, _ in done], [err for _, _, err in done]
    if None in codes:
        pytest.fail(f"a machine's ranks waited for the other's, which had ended: {logs}")
    assert codes == [1, 1], logs
    assert not [log for log in logs if "Traceback" in log], logs
    return logs


def test_a_machine_without_the_data_ends_the_other_at_once(env, tmp_path):
    """Two machines, one without data/ (not copied there): its ranks failed before joining the process group, and the
    other machine's waited in the join, with no word, for its 30-minute timeout (torchrun does not learn of another
    machine's failure). Joined first, they lose contact at once and say so."""
    argv = ["--dataset", "mini", "--output_checkpoint", tmp_path / "models" / "{dataset}.pt", *MODEL, "--max_steps", 2]
    logs = two_machines([["--data_dir", data, *argv] for data in (env["data"], tmp_path / "not_copied")])
    assert "not_copied" in logs[1] and "lost contact with the other ranks before training" in logs[0], logs


def test_machines_with_other_copies_of_the_data_are_refused(env, tmp_path):
    """Each machine reads its own copy of data/: copies that differed (another dataset, or a prepare.py run again on
    one) trained on without a word, or, epochs of other lengths, ended in gloo's abort ("collective mismatch")."""
    shutil.copytree(os.path.join(env["data"], "story"), tmp_path / "other" / "mini")
    argv = ["--dataset", "mini", "--output_checkpoint", tmp_path / "models" / "{dataset}.pt", *MODEL, "--max_steps", 2]
    logs = two_machines([["--data_dir", data, *argv] for data in (env["data"], tmp_path / "other")])
    for log in logs:  # each machine says it
        assert log.count("error: the ranks read different copies of the data") == 1, logs
    assert not os.path.exists(tmp_path / "models")  # refused before anything is written


def test_machines_given_other_options_are_refused(env, tmp_path):
    """Each machine runs its own train.py command: one given another --batch_size trained on without a word, its
    ranks cutting the epoch's steps at other places than the other machine's (a train loss of 8.0 where one command
    gave 4.7). The paths of a machine's own files, its device and how it waits may differ."""
    class Rank:  # one machine's rank: the values it gives Dist.agree, and the other's, agreed
        world = 2

        def __init__(self, other=None):
            self.other, self.given = other, None

        def agree(self, *values):
            self.given = values
            return tuple(map(max, values, self.other.given)) if self.other else values

    def check(argv, other_argv):
        first = Rank()
        train.check_same_options(first, train.parse_args(other_argv))
        train.check_same_options(Rank(first), train.parse_args(argv))
    argv = ["--dataset", "story", "--batch_size", "4"]
    check(argv, argv)
    check([*argv, "--data_dir", "/mnt/data", "--output_checkpoint", "m/{dataset}.pt", "--device", "cpu",
           "--dist_timeout", "30", "--no_color"], argv)
    with pytest.raises(train.UserError, match=r"^the machines were given different train.py options \(--batch_size, "
                                              r"--lr\): give each the same command, but for the paths of its files$"):
        check(["--dataset", "story", "--batch_size", "8", "--lr", "1e-3"], argv)


def test_machines_with_other_copies_of_the_checkpoint_are_refused(env, tmp_path):
    """Each machine reads its own copy of the checkpoint it continues: an older one on one machine resumed its ranks
    from another step, optimizer state and place in the epoch. (Here two runs' checkpoints, of one step each.)"""
    copies = [train.train(args_for(env, tmp_path / name, "--dataset", "mini", "--max_steps", 1, *MODEL, "--seed", seed,
                                   "--eval_interval", 0))["checkpoint"] for name, seed in (("a", 1), ("b", 2))]
    logs = two_machines([["--data_dir", env["data"], "--checkpoint", ckpt, "--max_steps", 1, "--output_checkpoint",
                          tmp_path / "models" / "{dataset}.pt"] for ckpt in copies])
    for log in logs:  # each machine says it
        assert log.count("error: the ranks read different copies of the checkpoint") == 1, logs
    assert not os.path.exists(tmp_path / "models")  # refused before anything is written


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_two_gpus_with_nccl_follow_one_gpu(env, tmp_path):
    run = ["--dataset", "story", "--max_steps", STEPS, *MODEL, "--eval_interval", "0"]
    one = train.train(args_for(env, tmp_path / "one", *run, "--batch_size", "8", "--device", "cuda"))
    torchrun(["--data_dir", env["data"], *run, "--batch_size", "4", "--output_checkpoint",
              tmp_path / "two" / "{dataset}.pt"], device="cuda")
    a, b = losses(one["metrics"]), losses(tmp_path / "two" / "story_metrics.jsonl")
    assert sorted(b) == sorted(a) == list(range(1, STEPS + 1))
    for step in a:  # TF32 matmuls on the GPU: equal to float32 rounding of a few steps
        assert b[step] == pytest.approx(a[step], rel=1e-3), step


def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert os.path.exists(path), proc.communicate(timeout=30)


def rank_pids(agent):
    """The worker processes torchrun started: its children, by RANK in their environment."""
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # the field after the state, past "(name)"
            if ppid != agent.pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        pids[int(env[b"RANK"])] = int(pid)
    return pids


def long_run(env, out):
    """A two-rank run of 50 epochs (~145 steps each) that saves every 5% of an epoch: its first save at step 7, not
    20%'s 29, steps that cost the tests waiting for it a second or two under load for nothing."""
    return torchrun(["--data_dir", env["data"], "--dataset", "story", "--output_checkpoint", out / "{dataset}.pt",
                     "--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64", "--batch_size", "4",
                     "--epochs", "50", "--save_interval", "5", "--eval_interval", "0", "--dtype", "float32"],
                    stdin=subprocess.DEVNULL)


def test_ctrl_c_stops_every_rank_at_the_same_step_and_saves(env, tmp_path):
    out = tmp_path / "models"
    proc = long_run(env, out)
    ckpt = out / "story.pt"
    wait_for(ckpt, proc)
    first = load_checkpoint(str(ckpt))["step"]
    time.sleep(1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does to torchrun, which passes it on to the ranks
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert stdout.count("interrupted at step ") == 1, (stdout, stderr)  # rank 0 only
    at = int(stdout.split("interrupted at step ")[1].split(":")[0].replace(",", ""))
    ck = load_checkpoint(str(ckpt))
    assert ck["step"] == at > first
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


SLOW_SAVE = """
import sys, time
sys.path.insert(0, {root!r})
import train
save_checkpoint, saves = train.save_checkpoint, [0]

def slow_save(*args, **kwargs):  # a large model's checkpoint, a slow disk (rank 0 alone saves)
    saves[0] += 1
    if saves[0] > 1:  # (not the first, which the test waits for before its Ctrl-C: 2 s more to wait, for nothing)
        time.sleep(2)  # ample: torchrun stops the ranks within its 0.1-s monitor interval of another's end
    return save_checkpoint(*args, **kwargs)

train.save_checkpoint = slow_save
train.main(sys.argv[1:])
"""


def test_ctrl_c_that_reaches_the_ranks_alone_still_saves(env, tmp_path):
    """Ctrl-C typed on another machine's terminal reaches the ranks through the agreement of each step, not the
    torchrun of rank 0's machine, which stops every rank (SIGTERM) when one ends with an error: the others ended at
    once, and rank 0 was stopped mid-save, without its checkpoint or its "interrupted at step" line."""
    wrapper = tmp_path / "slow_save.py"
    wrapper.write_text(SLOW_SAVE.format(root=ROOT))
    out = tmp_path / "models"
    proc = torchrun(["--data_dir", env["data"], "--dataset", "story", "--output_checkpoint", out / "{dataset}.pt",
                     "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--batch_size", "4",
                     "--epochs", "50", "--save_interval", "20", "--eval_interval", "0", "--dtype", "float32"],
                    script=wrapper, stdin=subprocess.DEVNULL)
    ckpt = out / "story.pt"
    wait_for(ckpt, proc)
    for pid in rank_pids(proc).values():  # the ranks, not torchrun
        os.kill(pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert stdout.count("interrupted at step ") == 1, (stdout[-2000:], stderr[-3000:])
    at = int(stdout.split("interrupted at step ")[1].split(":")[0].replace(",", ""))
    assert load_checkpoint(str(ckpt))["step"] == at
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_a_second_sigint_under_torchrun_still_saves(monkeypatch, capsys):
    """A scheduler's SIGINT to the whole job (scancel --signal=INT) reaches each rank, then torchrun passes its own on:
    the second quit at once, without the save the first asked for, and the other ranks lost contact."""
    monkeypatch.setattr(train, "quiet", True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    stop = train.GracefulInterrupt()
    stop.handler(signal.SIGINT, None)
    try:
        stop.handler(signal.SIGINT, None)
    except KeyboardInterrupt:  # (not left to escape: it would end the test session)
        pytest.fail("a second SIGINT under torchrun quit without the save after this step")
    assert stop.requested
    monkeypatch.delenv("LOCAL_RANK")  # one process: a second Ctrl-C is the user's, and quits without saving
    with pytest.raises(KeyboardInterrupt):
        stop.handler(signal.SIGINT, None)


def test_the_command_to_continue_under_torchrun_runs_where_it_is_pasted(tmp_path, monkeypatch):
    """Ctrl-C under torchrun said `continue with torchrun --nproc_per_node=2 train.py --checkpoint ...`: pasted in the
    folder of runs it was started from (train.py elsewhere), that named no file, and with the venv not activated no
    torchrun, or another install's. It names train.py by its path and the torchrun beside this Python, as
    common.script_command names Python."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    for path in (os.path.dirname(os.path.abspath(sys.executable)), str(tmp_path / "nowhere")):  # activated, or not
        monkeypatch.setenv("PATH", path)
        words = shlex.split(train.Dist(rank=0, world=2).continue_command("models/story.pt", 0))
        at = words.index("--nproc_per_node=2")
        launcher, script = words[:at - 1], words[at + 1]
        assert words[at - 1] == "--standalone"  # one machine (without it torchrun meets at port 29500)
        assert words[at + 2:] == ["--checkpoint", "models/story.pt"]
        assert os.path.samefile(script, os.path.join(ROOT, "train.py"))
        if path.endswith("nowhere"):  # (the launcher's path: started, as torch's import makes it a few seconds)
            r = subprocess.run([*launcher, "--help"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0 and "--nproc_per_node" in r.stdout, (launcher, r.stderr[-2000:])
        else:
            assert launcher == ["torchrun"] or launcher[1:] == ["-m", "torch.distributed.run"], launcher
    # two machines of 2 (WORLD_SIZE 4): no --standalone, which would start a run of this machine's processes alone
    words = shlex.split(train.Dist(rank=0, world=4).continue_command("models/story.pt", 0))
    assert "--standalone" not in words and "--nproc_per_node=2" in words


def test_help_and_usage_errors_come_once_a_machine(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(common, "LATE_FIRST_S", 0)  # (waits for rank 0's word: see the test below)
    for argv in (["--help"], ["--no_such_option"]):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert capsys.readouterr() == ("", "")  # local rank 0 says it
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert capsys.readouterr().out.startswith("usage: ")


def test_ctrl_c_while_waiting_for_the_first_process_adds_nothing(monkeypatch, capsys):
    """A process that leaves the word to local rank 0 waits for torchrun's SIGTERM (see the test below): Ctrl-C in
    that wait was a traceback of the bad input and of KeyboardInterrupt."""
    def ctrl_c(seconds):
        raise KeyboardInterrupt
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(common.time, "sleep", ctrl_c)
    for bad in (lambda: train.load_meta("data", "nosuch"), lambda: train.parse_args(["--bogus"])):
        try:
            with pytest.raises(SystemExit) as e:
                common.run_main(bad)
        except KeyboardInterrupt:  # (not left to escape: it would end the test session)
            pytest.fail("Ctrl-C while waiting for local rank 0 ended in a traceback")
        assert e.value.code in (1, 2, 130) and capsys.readouterr() == ("", "")


def test_a_file_the_ranks_cannot_read_is_said_once_a_machine(monkeypatch, capsys):
    """Every rank reads the same files: a train.bin without read permission was said by each process, at times
    written into one line of the terminal."""
    def unreadable():
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "data/story/train.bin")
    monkeypatch.setattr(common, "LATE_FIRST_S", 0)  # (waits for local rank 0's word)
    for local_rank, said in (("1", ""), ("0", "error: Permission denied: data/story/train.bin: check its "
                                              "permissions, or use another path\n")):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(SystemExit) as e:
            common.run_main(unreadable)
        assert e.value.code == 1 and capsys.readouterr().err == said


def test_scripts_other_than_train_are_refused_under_torchrun(monkeypatch, capsys):
    """`torchrun --nproc_per_node 2 gen.py ...`, a launcher's habit, ran gen.py once in each process: two different
    samples, eval.py's table twice after the same work done twice. One line names the command that runs it once."""
    import eval as eval_script
    import gen
    monkeypatch.setattr(common, "LATE_FIRST_S", 0)  # (waits for local rank 0's word)
    monkeypatch.setattr(sys, "argv", ["gen.py", "models/story.pt", "--prompt", "Once upon"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    for local_rank, said in (("1", ""), ("0", "error: gen.py is not for torchrun")):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(SystemExit) as e:
            common.run_main(gen.main)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(said), err
    assert err.rstrip().endswith("gen.py models/story.pt --prompt 'Once upon'`"), err
    with pytest.raises(SystemExit):
        common.run_main(eval_script.main)
    assert capsys.readouterr().err.startswith("error: eval.py is not for torchrun")
    # one process of torchrun, or a job's WORLD_SIZE without torchrun's LOCAL_RANK: run as asked
    for env_now in ({"WORLD_SIZE": "1", "LOCAL_RANK": "0"}, {"WORLD_SIZE": "2"}):
        monkeypatch.delenv("LOCAL_RANK")
        for k, v in env_now.items():
            monkeypatch.setenv(k, v)
        assert common.run_main(lambda: "ran") == "ran"
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert common.run_main(lambda: "ran", ranks=True) == "ran"  # train.py's


def test_a_dead_rank_stops_the_others_and_the_checkpoint_stays_intact(env, tmp_path):
    out = tmp_path / "models"
    proc = long_run(env, out)
    ckpt = out / "story.pt"
    wait_for(ckpt, proc)
    os.kill(rank_pids(proc)[1], signal.SIGKILL)  # rank 1 dies without a word
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode != 0
    # rank 0 ends on one line (its collective failed) or quietly (torchrun's SIGTERM came first): no traceback
    assert "[rank0]: Traceback" not in stderr, stderr[-3000:]
    ck = load_checkpoint(str(ckpt))  # loads: whole, as last written
    assert ck["step"] > 0 and ck["epoch_windows"] == 8 * ck["step"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_a_rank_sent_sigterm_alone_says_why_it_stopped(env, tmp_path):
    """SIGTERM to one rank (`kill`, a scheduler's notice to one process) ends it at once, as torchrun's own does: it
    ended without a word, torchrun's report said "exitcode 143", and rank 0 "lost contact ... see its lines above"."""
    out = tmp_path / "models"
    proc = long_run(env, out)
    ckpt = out / "story.pt"
    wait_for(ckpt, proc)
    os.kill(rank_pids(proc)[1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert stderr.count("rank 1: stopped by SIGTERM, without saving") == 1, stderr[-3000:]
    assert "[rank0]: Traceback" not in stderr and "[rank1]: Traceback" not in stderr, stderr[-3000:]
    assert load_checkpoint(str(ckpt))["step"] > 0 and not [f for f in os.listdir(out) if f.endswith(".tmp")]


STUCK_RANK = """
import os, sys, time
sys.path.insert(0, {root!r})
import train
original, calls = train.{name}, [0]

def stuck(*args, **kwargs):  # rank 1 hangs in its {call}th call (a hung GPU, a stalled file system), alive
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == {call}:
        open({mark!r}, "w").close()
        time.sleep(120)
    return original(*args, **kwargs)

train.{name} = stuck
train.main(sys.argv[1:])
"""


def stuck_run(env, tmp_path, name, call, *argv):
    """A two-rank run with --dist_timeout 0.05 (3 s) whose rank 1 hangs in its call-th call of train's name: the run's
    stderr, once it ends, within 30 s of the hang."""
    mark = tmp_path / "stuck"
    wrapper = tmp_path / "stuck_rank.py"
    wrapper.write_text(STUCK_RANK.format(root=ROOT, mark=str(mark), name=name, call=call))
    proc = torchrun(["--data_dir", env["data"], "--dataset", "mini", "--n_layer", "1", "--n_head", "2", "--n_embd",
                     "32", "--block_size", "64", "--batch_size", "4", "--eval_interval", "0", "--dist_timeout", "0.05",
                     "--output_checkpoint", tmp_path / "models" / "{dataset}.pt", *argv], script=wrapper,
                    stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(mark, proc)
        t = time.time()
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the other rank still waited for the stuck one a minute on, past --dist_timeout's 3 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and time.time() - t < 30, err[-3000:]
    return err


def test_a_stuck_rank_ends_the_run_after_dist_timeout(env, tmp_path):
    """A rank that hangs, not dies, left the others waiting in the step's all-reduce for gloo's 30 minutes, without a
    word: --dist_timeout bounds the wait (10 minutes by default), and the line says what it was and how to allow
    more."""
    err = stuck_run(env, tmp_path, "train_step", 3, "--epochs", "50", "--save_interval", "0")
    assert err.count("error: no word from another rank in 0.05 minute(s) at step 2 (--dist_timeout): one is stuck "
                     "(see its lines, on its machine)") == 1, err[-3000:]
    assert "rank 1: stopped by SIGTERM" in err, err[-3000:]  # torchrun's, once rank 0 ended: said by the stuck one
    assert "[rank0]: Traceback" not in err, err[-3000:]


def test_a_rank_stuck_before_training_ends_the_run_after_dist_timeout(env, tmp_path):
    """A rank that hangs before training (reading its files from a stalled file system) leaves the others waiting in
    the ranks' first agreement: --dist_timeout bounds that wait too, and the line says so, with where it was."""
    err = stuck_run(env, tmp_path, "load_meta", 1, "--max_steps", "2")
    assert err.count("error: no word from another rank in 0.05 minute(s) before training (--dist_timeout): one is "
                     "stuck (see its lines, on its machine), or its reading of the data and checkpoint "
                     "took longer") == 1, \
        err[-3000:]
    assert "[rank0]: Traceback" not in err and not os.path.exists(tmp_path / "models" / "mini.pt"), err[-3000:]


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "ten"])
def test_a_dist_timeout_that_is_no_wait_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--dist_timeout", bad])
    assert "argument --dist_timeout: " in capsys.readouterr().err


def test_inner_accumulation_steps_skip_the_all_reduce(env):
    """DDP all-reduces in the backward of every forward unless inside no_sync(): train_step uses it for all but the
    last micro-batch of a step."""
    import contextlib

    class Recording(torch.nn.Module):  # stands in for DistributedDataParallel: records which passes would sync
        def __init__(self, model):
            super().__init__()
            self.module, self.syncing, self.passes = model, True, []

        @contextlib.contextmanager
        def no_sync(self):
            self.syncing = False
            try:
                yield
            finally:
                self.syncing = True

        def forward(self, *args):
            self.passes.append(self.syncing)
            return self.module(*args)

    w = train.Windows(train.load_meta(env["data"], "mini"), "train", 64)
    model = train.GPT(train.make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=64, vocab_size=512))
    ddp = Recording(model)
    fwd = train.Forward(ddp)
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    micro = list(w.micro_batches(list(range(12)), 4))
    train.train_step(fwd, opt, scaler, micro, torch.device("cpu"), torch.float32, 1.0, world=2)
    assert ddp.passes == [False, False, True]


def test_compiling_ddp_adds_no_profiler_notice_from_every_rank(monkeypatch):
    """--compile under torchrun compiles the DDP model, whose forward opens a profiler record_function: dynamo's
    warning that it ignores it came from every rank ("[rank1]:W1207 ... Profiler record function <class ...> will be
    ignored"), two lines of torch's log in every run on two processes. (Traced with the eager backend: dynamo's own
    tracing says it, in a second; DDP's record_function stands in a module of its own.)"""
    import functools
    import logging
    from torch._dynamo.variables import ctx_manager
    from torch._logging._internal import warning_once

    class Recorded(torch.nn.Module):  # DistributedDataParallel.forward's record_function, without a process group
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            with torch.autograd.profiler.record_function("DistributedDataParallel.forward"):
                return self.lin(x)

    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())
    if "Profiler record function" not in inspect.getsource(ctx_manager):
        pytest.skip(f"torch {torch.__version__} says no such notice")  # (2.6 did not; 2.11 and 2.13 do)
    assert ctx_manager.log.name == train.DYNAMO_CONTEXT_LOG  # (torch moved it: the filter would filter nothing)
    handler = Keep()
    ctx_manager.log.addHandler(handler)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    warning_once.cache_clear()  # (said once a process: a compile before this one would have said it)
    try:
        fwd = train.Forward(Recorded(), compile=True)
        fwd(torch.ones(2, 4))
    finally:
        ctx_manager.log.removeHandler(handler)
        torch._dynamo.reset()
    assert fwd.fn is not fwd.model  # compiled, not fallen back to eager
    assert not [m for m in said if "Profiler record function" in m], said


def test_under_torchrun_nothing_prompts_and_devices_are_checked(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    assert not train.is_interactive()  # a terminal, but torchrun's: never ask which GPU or how many epochs
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(train.UserError, match="under torchrun: use cuda"):
        train.init_distributed("mps")  # refused before joining any process group
    monkeypatch.setenv("LOCAL_RANK", "5")
    if not torch.cuda.is_available():
        with pytest.raises(train.UserError, match=r"^--device cuda under torchrun: this machine has no CUDA GPU; use "
                                                  r"--device cpu$"):  # not "use --nproc_per_node 0 or fewer"
            train.init_distributed("cuda")
    elif torch.cuda.device_count() <= 5:
        with pytest.raises(train.UserError, match="local rank 5 has no GPU") as e:
            train.init_distributed("cuda")
        assert e.value.every_rank  # the ranks below 5 have theirs: this rank alone can say it
    if torch.cuda.is_available():
        with pytest.raises(train.UserError, match="each process takes the GPU of its local rank; give --device cuda"):
            train.init_distributed("cuda:1")  # was silently ignored


@pytest.mark.parametrize("bad, named", [(["--dataset", "nosuch"], "nosuch"),
                                        (["--dataset", "story", "--batch_size", "0"], "--batch_size"),
                                        (["--bogus"], "--bogus")])
def test_bad_input_under_torchrun_is_said_once_when_the_first_process_is_late(env, tmp_path, bad, named):
    """Every rank meets the same bad input: one error line, not one a process (two of them had been written into one
    line of the terminal). And torchrun stops every process the moment one ends: local rank 0 a moment behind the
    other (a busy CI machine) was stopped before it said why, and the run ended with torchrun's report alone. (One
    run for both: the line is said once whichever process comes first, and rank 0 late is the harder case.)"""
    late = tmp_path / "late_first.py"
    late.write_text(f"import os, runpy, sys, time\nsys.path.insert(0, {ROOT!r})\n"
                    f"if os.environ['LOCAL_RANK'] == '0':\n    time.sleep(2)\n"  # (torchrun stops the rest in 0.1 s)
                    f"runpy.run_path({os.path.join(ROOT, 'train.py')!r}, run_name='__main__')\n")
    r = torchrun(["--data_dir", env["data"], *bad], script=late, stdin=subprocess.DEVNULL)
    _, err = r.communicate(timeout=240)
    assert r.returncode != 0 and err.count("error: ") == 1 and "usage: " not in err, err[-3000:]
    assert named in err, err[-3000:]


def time_to_end(proc, act):
    """(seconds, stderr) from act(), 0.4 s after, to the end of the torchrun proc (started in a session of its
    own, whose ranks are killed on the way out: left waiting, the test failed). (0.4 s: the waiting rank is past its
    mark and inside the wait, milliseconds on, with room for a busy machine; it was 1 s, of 4 runs' waiting.)"""
    try:
        time.sleep(0.4)
        act()
        t = time.time()
        _, err = proc.communicate(timeout=20)
        return time.time() - t, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


CTRL_C_BEFORE_THE_LOOP = """
import os, sys, time
sys.path.insert(0, {root!r})
import train
rank, marks = os.environ["RANK"], {marks!r}
metrics_init, train_step = train.Metrics.__init__, train.train_step

def late(self, *args, **kwargs):  # set up for DDP, not yet in the training loop
    metrics_init(self, *args, **kwargs)
    if rank == {late!r}:
        open(os.path.join(marks, "late"), "w").close()
        time.sleep(60)

def in_loop(*args, **kwargs):  # at the first step: its all-reduce waits for the late rank
    if rank != {late!r}:
        open(os.path.join(marks, "in_loop"), "w").close()
    return train_step(*args, **kwargs)

train.Metrics.__init__, train.train_step = late, in_loop
train.main(sys.argv[1:])
"""


@pytest.mark.parametrize("late", ["0", "1"])
def test_ctrl_c_while_a_rank_is_before_its_loop_ends_every_rank_at_once(env, tmp_path, late):
    """Ctrl-C while one rank is still setting up (a busy machine): it quits on it, and the other, in its loop, lost
    contact at the step's all-reduce. Said "error: lost contact ... did one fail?" (rank 0), or, rank 1, waited for a
    SIGTERM that torchrun, stopping on the Ctrl-C, never sends, until torchrun killed it 30 s later."""
    wrapper = tmp_path / "ctrl_c.py"
    wrapper.write_text(CTRL_C_BEFORE_THE_LOOP.format(root=ROOT, marks=str(tmp_path), late=late))
    proc = torchrun(["--data_dir", env["data"], "--dataset", "mini", "--n_layer", "1", "--n_head", "2", "--n_embd",
                     "32", "--block_size", "64", "--batch_size", "4", "--output_checkpoint",
                     tmp_path / "models" / "{dataset}.pt"], script=wrapper, stdin=subprocess.DEVNULL,
                    start_new_session=True)
    wait_for(tmp_path / "late", proc)
    wait_for(tmp_path / "in_loop", proc)
    # what Ctrl-C does to torchrun, which passes it on to the ranks
    seconds, err = time_to_end(proc, lambda: proc.send_signal(signal.SIGINT))
    assert proc.returncode != 0 and seconds < 15, err[-3000:]
    assert err.count("interrupted") == 1 and "error: " not in err, err[-3000:]


LATE_TO_JOIN = """
import os, runpy, sys, time
sys.path.insert(0, {root!r})
import torch.distributed as td
join = td.init_process_group

def joining(*args, **kwargs):
    open({mark!r}, "w").close()
    return join(*args, **kwargs)

if os.environ["RANK"] == "1":
    time.sleep(60)  # still loading, on a busy machine
td.init_process_group = joining
runpy.run_path({train!r}, run_name="__main__")
"""


@pytest.mark.parametrize("how", ["ctrl_c", "death"])
def test_a_rank_waiting_for_another_to_join_ends_at_once(env, tmp_path, how):
    """Joining the process group waits in C++, where no Python signal handler runs: Ctrl-C while another rank was
    still loading, or torchrun's SIGTERM when one ended before joining, went unheard until torchrun killed the waiting
    rank 30 s later."""
    mark = tmp_path / "joining"
    wrapper = tmp_path / "late_to_join.py"
    wrapper.write_text(LATE_TO_JOIN.format(root=ROOT, mark=str(mark), train=os.path.join(ROOT, "train.py")))
    proc = torchrun(["--data_dir", env["data"], "--dataset", "mini", "--n_layer", "1", "--n_head", "2", "--n_embd",
                     "32", "--block_size", "64", "--output_checkpoint", tmp_path / "models" / "{dataset}.pt"],
                    script=wrapper, stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(mark, proc)  # rank 0 waits for rank 1 to join
    # Ctrl-C to torchrun, which passes it on to the ranks; or rank 1's death, on which torchrun stops rank 0 (SIGTERM)
    seconds, err = time_to_end(proc, lambda: proc.send_signal(signal.SIGINT) if how == "ctrl_c" else
                               os.kill(rank_pids(proc)[1], signal.SIGKILL))
    assert proc.returncode != 0 and seconds < 15, err[-3000:]
    assert "forcefully exiting" not in err, err[-3000:]  # torchrun's SIGKILL


def test_a_run_rank_0_refuses_ends_every_rank_quietly(env, runs, tmp_path):
    """Rank 0 alone checks the files; the others waited at the next collective and died there with a gloo traceback
    when it refused a run over an earlier one."""
    shutil.copytree(os.path.dirname(runs["one"]["checkpoint"]), tmp_path / "one")  # (the fixture's, that others read)
    r = torchrun(["--data_dir", env["data"], "--dataset", "story", *MODEL, "--max_steps", "1", "--output_checkpoint",
                  tmp_path / "one" / "{dataset}_epoch{epoch}.pt"],
                 stdin=subprocess.DEVNULL)
    _, err = r.communicate(timeout=240)
    assert r.returncode != 0 and err.count("error: ") == 1 and "hold an earlier run" in err, err[-3000:]
    assert "[rank1]" not in err and "Connection closed" not in err, err[-3000:]  # (torchrun's own report stays)


SHARED_NS = '''
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from model import orthogonalize, orthogonalize_shared
dist.init_process_group("gloo")
torch.manual_seed(0)  # the same stacks on both ranks, as DDP's averaged gradients are
for k, shape in [(1, (8, 8)), (2, (8, 16)), (3, (16, 8)), (5, (8, 12))]:
    G = torch.randn(k, *shape)
    got = orthogonalize_shared(G)
    assert got.shape == G.shape, (got.shape, G.shape)
    torch.testing.assert_close(got, orthogonalize(G), rtol=1e-5, atol=1e-5)
    both = [torch.empty_like(got) for _ in range(2)]
    dist.all_gather(both, got)
    assert torch.equal(both[0], both[1]), k  # every rank steps its weights alike
print(f"ok{dist.get_rank()}", flush=True)
dist.destroy_process_group()
'''


def test_ranks_share_muons_orthogonalization(tmp_path):
    # each of 2 ranks orthogonalizes part of a stack (3 and 5 matrices: one rank also does zeros) and gets the whole
    # (2 processes started as torchrun starts its ranks: see ranks)
    script = tmp_path / "shared_ns.py"
    script.write_text(SHARED_NS)
    done = ranks([[ROOT]] * 2, script=script, timeout=120)
    assert [code for code, _, _ in done] == [0, 0], done
    assert [out for _, out, _ in done] == ["ok0\n", "ok1\n"], done


def test_a_continued_run_that_loses_a_rank_before_saving_names_the_checkpoint_it_continued(tmp_path):
    """A rank lost before the run's first save: "last checkpoint: none" sent a user who continued from story.pt to
    start over; the checkpoint continued holds the run as far as it was saved."""
    run = types.SimpleNamespace(args=train.parse_args(["--checkpoint", "models/story.pt", "--dist_timeout", "10"]),
                                p=types.SimpleNamespace(step=7), dist=types.SimpleNamespace(world=2),
                                interrupt=types.SimpleNamespace(requested=False), saved={"path": None}, continuing=True)
    run.last_checkpoint = lambda: train.Run.last_checkpoint(run)
    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert str(train.Run.loop_error(run, lost)).endswith("; last checkpoint: models/story.pt")
    run.saved["path"] = "models/story_epoch2.pt"  # once it saved, its own save
    assert str(train.Run.loop_error(run, lost)).endswith("; last checkpoint: models/story_epoch2.pt")
    run.continuing, run.saved["path"] = False, None  # a new run that saved nothing has none
    assert str(train.Run.loop_error(run, lost)).endswith("; last checkpoint: none")


class Killed(BaseException):
    """SIGKILL's stand-in in a run in this process: nothing of the run goes on after it, no save on the way out."""


def killed_at_save(n, saves):
    """train.save_checkpoint's stand-in that notes each save's step in saves, and is killed (Killed) at the n-th."""
    real_save = train.save_checkpoint

    def save(path, *a, **kw):
        saves.append(kw["step"])
        if len(saves) == n:
            raise Killed
        real_save(path, *a, **kw)
    return save


def as_torchrun_attempt(monkeypatch, tmp_path, job, attempt):
    """The variables torchrun's agent gives its ranks in a job's attempt (restart): the job's rendezvous id as a user's
    --rdzv_id, which the next job may give again, and an error file in the folder the agent made for the job's logs."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "story")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "logs" / f"story_{job}" / f"attempt_{attempt}" / "0" /
                                                      "error.json"))


def test_a_torchrun_restart_continues_the_job_from_its_newest_checkpoint(env, tmp_path, monkeypatch, capsys):
    """torchrun --max-restarts starts a failed attempt's command again: it was refused by the files its first attempt
    wrote ("hold an earlier run"), on every restart. It continues from the job's newest checkpoint, exactly, with what
    is left of the job's --max_steps; another job's attempt (the same --rdzv_id) is still refused."""
    spe = math.ceil(len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) / 4)
    argv = ["--dataset", "mini", "--batch_size", "4", "--max_steps", "8", "--eval_interval", "0", "--log_interval",
            100 / spe, "--save_interval", 3 * 100 / spe]  # a record a step, a save every 3 steps
    want = losses(train.train(args_for(env, tmp_path / "one", *argv))["metrics"])
    assert sorted(want) == list(range(1, 9))
    real_save, saves = train.save_checkpoint, []
    as_torchrun_attempt(monkeypatch, tmp_path, "job1", 0)
    monkeypatch.setattr(train, "save_checkpoint", killed_at_save(2, saves))  # steps 4 to 6 trained, logged and lost
    with pytest.raises(Killed):
        train.train(args_for(env, tmp_path / "two", *argv))
    assert saves == [3, 6]
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    capsys.readouterr()
    as_torchrun_attempt(monkeypatch, tmp_path, "job1", 1)
    done = train.train(args_for(env, tmp_path / "two", *argv))
    first = os.path.join(tmp_path, "two", "mini_epoch1.pt")
    assert f"torchrun restart 1: this job's newest checkpoint is {first} (step 3): continuing from it, as " \
           f"--checkpoint {first} --max_steps 5 (what is left of the job's) would\n" in capsys.readouterr().out
    assert done["steps"] == 8
    assert_same_curve(losses(done["metrics"]), want, range(1, 9))
    # restarted after the job's last save (a rank's abort as it ended): done, not refused as done on every restart
    as_torchrun_attempt(monkeypatch, tmp_path, "job1", 2)
    with pytest.raises(SystemExit) as ended:
        train.train(args_for(env, tmp_path / "two", *argv))
    assert ended.value.code == 0 and "(step 8), where the job's run ended: nothing left to train\n" in \
        capsys.readouterr().out
    # the next job given the same --rdzv_id: its attempt is refused, restarted or not, as without torchrun
    as_torchrun_attempt(monkeypatch, tmp_path, "job2", 1)
    with pytest.raises(train.UserError, match="holds an earlier run: continue it with --checkpoint"):
        train.train(args_for(env, tmp_path / "two", *argv))


def test_a_torchrun_restart_of_a_resume_run_keeps_to_the_jobs_max_steps(env, tmp_path, monkeypatch, capsys):
    """--resume counts each start's --max_steps, but a torchrun --max-restarts restart is an attempt of the same job:
    it took the job's --max_steps anew from its newest checkpoint, and the job trained the steps before the crash and
    all of them again (3 + 8 of its 8). A start of its own (the command run again) counts its own, as before."""
    argv = ["--dataset", "mini", "--batch_size", "4", "--max_steps", "8", "--eval_interval", "0", "--save_interval",
            3 * 100 / math.ceil(len(train.Windows(train.load_meta(env["data"], "mini"), "train", 64)) / 4),
            "--resume"]  # a save every 3 steps
    real_save = train.save_checkpoint
    as_torchrun_attempt(monkeypatch, tmp_path, "job1", 0)
    monkeypatch.setattr(train, "save_checkpoint", killed_at_save(2, []))
    with pytest.raises(Killed):
        train.train(args_for(env, tmp_path, *argv))
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    capsys.readouterr()
    as_torchrun_attempt(monkeypatch, tmp_path, "job1", 1)
    assert train.train(args_for(env, tmp_path, *argv))["steps"] == 8
    assert "(step 3): continuing from it, as --checkpoint" in capsys.readouterr().out
    as_torchrun_attempt(monkeypatch, tmp_path, "job1", 2)  # restarted after the job's last save: done
    with pytest.raises(SystemExit) as ended:
        train.train(args_for(env, tmp_path, *argv))
    assert ended.value.code == 0 and "where the job's run ended: nothing left to train" in capsys.readouterr().out
    as_torchrun_attempt(monkeypatch, tmp_path, "job2", 0)  # the next job: a start of its own
    assert train.train(args_for(env, tmp_path, *argv))["steps"] == 16
