"""The test suite's own helpers (conftest.py), where a fault would not fail a test but make them slow or flaky."""
import concurrent.futures
import os
import time

import pytest

from conftest import built_once


class WorkerFactory:
    """A pytest-xdist worker's tmp_path_factory, as built_once uses it: its basetemp in the run's shared folder."""

    def __init__(self, shared, worker):
        self.base = shared / f"popen-{worker}"

    def getbasetemp(self):
        return self.base


@pytest.mark.skipif(os.name == "nt", reason="no fcntl: each worker builds its own")
def test_built_once_builds_once_for_every_worker_and_afresh_after_a_failed_build(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # (the branch the workers take)
    builds = []

    def build(folder):
        builds.append(folder)
        time.sleep(0.5)  # the other worker asks meanwhile: it waits, then reads the same files
        (folder / "model.pt").write_text("weights")
        return {"checkpoint": str(folder / "model.pt")}

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda w: built_once(WorkerFactory(tmp_path, w), "trained", build), ["gw0", "gw1"]))
    assert len(builds) == 1 and got[0] == got[1] == {"checkpoint": str(tmp_path / "trained" / "model.pt")}
    assert (tmp_path / "trained" / "model.pt").read_text() == "weights"

    def fails(folder):
        (folder / "half.pt").write_text("")
        raise RuntimeError("the build failed")

    with pytest.raises(RuntimeError, match="the build failed"):
        built_once(WorkerFactory(tmp_path, "gw0"), "broken", fails)
    # the next worker to ask builds again, in a folder without what the failed build left
    assert built_once(WorkerFactory(tmp_path, "gw1"), "broken", lambda folder: os.listdir(folder)) == []
