"""One writer per directory: the lock itself, and two training runs started at the same moment on one
directory (fresh, and both auto-resuming), several times: one trains, the other stops in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import pytest
from local_ranks import RankFailure
from training_runs import train

from headless_megatron.runtime.directory_lock import (
    LOCK_FILE,
    STALE_AFTER_S,
    DirectoryInUse,
    DirectoryLock,
    beside,
    holding,
)
from headless_megatron.training.run_directory import checkpoint_problem, latest_checkpoint

HOLD = ("import sys, time\nfrom headless_megatron.runtime.directory_lock import holding\n"
        "with holding(sys.argv[1], 'save'):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _holder(directory):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(DirectoryInUse) as error:
            DirectoryLock(tmp_path / LOCK_FILE, f"save {tmp_path}").acquire()
        assert str(error.value).startswith(f"save {tmp_path}: in use by PID {holder.pid} on ")
        assert "\n" not in str(error.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with holding(tmp_path, "save"):  # the kernel released the flock; the lease is this host's
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: an empty lease


def test_a_fresh_lease_of_another_host_refuses_a_stale_one_does_not(tmp_path):
    """Where flock does not span hosts, the lease and its heartbeat are what a second host sees."""
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"host": "node-a", "pid": 4242, "started": "2026-12-07 00:00:00"}))
    with pytest.raises(DirectoryInUse, match=r"in use by PID 4242 on node-a .*heartbeat 0 s ago.*retry after"):
        DirectoryLock(lock_file, "save").acquire()
    stale = time.time() - STALE_AFTER_S - 1
    os.utime(lock_file, (stale, stale))
    with DirectoryLock(lock_file, "save"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_the_heartbeat_keeps_the_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr("headless_megatron.runtime.directory_lock.HEARTBEAT_S", 0.05)
    with holding(tmp_path, "save"):
        old = time.time() - 100
        os.utime(tmp_path / LOCK_FILE, (old, old))
        time.sleep(0.3)
        assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 5


def test_an_output_lock_beside_it_is_removed_when_released(tmp_path):
    with beside(tmp_path / "model", "output") as lock:
        assert lock.lock_file == tmp_path / ".model.lock" and lock.lock_file.exists()
        with pytest.raises(DirectoryInUse):
            beside(tmp_path / "model", "output").acquire()
    assert list(tmp_path.iterdir()) == []


def _start_together(runs):
    """Run each callable in its own thread, released at the same moment; their results or errors."""
    barrier = threading.Barrier(len(runs))
    outcomes = [None] * len(runs)

    def go(index, run):
        barrier.wait()
        try:
            outcomes[index] = run()
        except RankFailure as error:
            outcomes[index] = error

    threads = [threading.Thread(target=go, args=(index, run)) for index, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("auto_resume", [False, True], ids=["fresh", "auto-resume"])
def test_two_runs_started_together_on_one_directory_one_trains_the_other_stops_in_one_line(
        dataset, tmp_path, auto_resume):
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        flags = ["--save", str(run), "--save-interval", "5", *(["--load", str(run)] if auto_resume else [])]
        outcomes = _start_together([partial(train, 1, dataset, *flags, iters=10)] * 2)
        refused = [outcome for outcome in outcomes if isinstance(outcome, RankFailure)]
        finished = [outcome for outcome in outcomes if not isinstance(outcome, RankFailure)]
        assert len(refused) == 1 and len(finished) == 1, outcomes
        assert f"DirectoryInUse: save {run}: in use by PID " in str(refused[0])
        assert finished[0].iterations == 10
        assert latest_checkpoint(run) == run / "iter_0000010" and checkpoint_problem(run / "iter_0000010") is None
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        iterations = [record["iteration"] for record in records if "loss" in record]
        assert iterations == [5, 10], iterations  # one run's metrics (log_interval 5), each iteration once
