import json
import os
import shutil
import signal
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

# tests never touch the network: GPT-2 BPE files and datasets come from ../shared when it is there
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.path.isdir(os.path.join(SHARED, "tiktoken-cache")):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken-cache"))
if os.path.isdir(os.path.join(SHARED, "data")):
    os.environ.setdefault("DATA_MIRROR", os.path.join(SHARED, "data"))
sys.path.insert(0, ROOT)
# the scripts' commands to paste name them by their path from the working directory (`python prepare.py ...`, the
# tests' expectation): pytest started from tests/ (or anywhere) runs as from the repository, where make test runs it
os.chdir(ROOT)
# One OpenMP thread in the test processes and in the scripts they start, unless the caller chose: make test runs two
# pytest workers on a 2-core machine, and two threads each make the workers' tiny matmuls wait for a descheduled
# sibling (test_gen's KV-cache comparison took 17.3 s with two threads, 1.7 s with one). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the commands the scripts print for the user to paste start `python` where that is the interpreter on PATH (an
# activated venv, as here): make test runs .venv/bin/python without activating it (common.python_command)
os.environ["PATH"] = os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + os.environ.get("PATH", "")

# A non-interactive shell starts a background job (`make test &`, `nohup`) with Ctrl-C ignored, and every process the
# tests start would inherit that: the tests of what Ctrl-C does (prepare's renames, serve.py's clean stop, train.py's
# save) need it delivered, so it gets Python's usual handler back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# SIGHUP: the terminal a script was started from went away. Windows has none
HANGUP = getattr(signal, "SIGHUP", None)


def hangup_as(disposition):
    """A preexec_fn that starts a test's script with SIGHUP at disposition: SIG_DFL, as from a terminal's shell (the
    tests may run under nohup, whose SIG_IGN it would inherit, and the tests of what SIGHUP does need it delivered), or
    SIG_IGN, as nohup starts it. (Not set in the test process itself: a `nohup make test` must outlive its terminal.)"""
    return lambda: signal.signal(HANGUP, disposition)


def hangup_not_taken(signum, frame):
    """SIGHUP's handler in a test that sends one to its own process, for the script to take over: its default would
    end pytest itself where the script did not."""
    pytest.fail("SIGHUP reached the handler the script found, not one of its own")


@pytest.fixture(scope="session", autouse=True)
def no_fsync():
    """os.fsync checks its descriptor (fstat: a closed one is still an OSError) and returns, in the test processes: a
    flush to the disk guards against a power cut, which no test makes, and ~5 ms each on an ext4 disk (3,858 of them
    in test_train.py alone, 9.4 s) is the test's time spent waiting. The scripts the tests start fsync as ever. A test
    that patches os.fsync (a full disk, another export landing) patches over this one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: os.fstat(fd) and None)
        yield


def built_once(tmp_path_factory, name, build):
    """A module fixture's files that tests only read (a trained checkpoint): build(folder) once a test session, not on
    each pytest-xdist worker (~10 s of training each; xdist_group marks go unread with pytest 9.2 and xdist 3.8). The
    first worker to ask builds in a folder the workers share, their basetemps' parent, holding a lock; the others
    wait for it and find the same files. Returns build's result, as JSON gives it back (the others read it from a
    file). A test that changes the files works on its own copy."""
    try:
        import fcntl
    except ImportError:  # Windows: each worker builds its own
        fcntl = None
    if not os.environ.get("PYTEST_XDIST_WORKER") or fcntl is None:
        return json.loads(json.dumps(build(tmp_path_factory.mktemp(name))))
    shared = tmp_path_factory.getbasetemp().parent
    folder, result = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (let go however its holder ends)
        if not result.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a build that failed on another worker left
            folder.mkdir()
            result.write_text(json.dumps(build(folder)))
        return json.loads(result.read_text())


def run_cli(main, argv, capsys):
    """A script's main(argv) in-process, through run_main as the script runs it: (exit code, stdout, stderr)."""
    from common import run_main
    try:
        run_main(lambda: main(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


_exit_status = None


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config):
    """Leave without the interpreter's finalization once pytest has reported: an all-green run once aborted after
    its summary ("terminate called without an active exception", 1 of ~6 full runs on 2026-11-23), the way a C++
    library's thread dies when the interpreter tears down under it, and CI would have read that as a failure."""
    if _exit_status is not None and os.environ.get("PYTEST_FINALIZE") != "1":  # PYTEST_FINALIZE=1: the usual exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
