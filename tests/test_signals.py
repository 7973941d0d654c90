"""Stop signals, as SLURM and a terminal send them, to every process of every rank (the launcher,
the ranks, their DataLoader workers and checkpoint-writer helpers), in each phase of a run: each
ends with exit 0, one line saying where it stopped, the checkpoint of that iteration published (or
the previous one still the latest), no staging directory and no process left. A second Ctrl-C
aborts at once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_runs import FaultRun, pretrain_argv

from headless_megatron.training.run_directory import checkpoint_to_resume

# (signal, phase, iteration, DataLoader workers): every signal in every phase, with and without workers.
STOPS = [
    ("SIGTERM", "training", 3, 1),
    ("SIGUSR1", "training", 3, 0),
    ("SIGTERM", "validation", 4, 0),
    ("SIGUSR1", "validation", 4, 1),
    ("SIGTERM", "save", 4, 1),  # the second save: the checkpoint writer's helper is running
    ("SIGUSR1", "save", 2, 0),  # the first save: the helper starts while the signal is pending
    ("SIGINT", "training", 3, 1),
    ("SIGINT", "save", 4, 0),
]


@pytest.mark.parametrize("name, phase, iteration, workers", STOPS, ids=lambda v: str(v))
def test_a_stop_signal_to_every_process_saves_and_exits_0(name, phase, iteration, workers, dataset, tmp_path):
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--save-interval", "2", "--eval-interval", "4", "--eval-iters", "1",
                         "--num-workers", str(workers), nproc=2, iters=40)
    result = FaultRun(argv, tmp_path, fault=f"{name} {phase} {iteration}").finish(timeout=120)
    assert result.code == 0, result.stderr[-3000:]
    stops = [line for line in result.stdout.splitlines() if line.startswith("stopping after iteration")]
    assert stops == [f"stopping after iteration {iteration}: {name}; saving, resume with --load {save}"], result.stdout
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == str(iteration)
    assert checkpoint_to_resume(save) == (save / f"iter_{iteration:07d}", "")
    assert not list(save.glob("*.tmp")), sorted(p.name for p in save.iterdir())
    assert not result.leftovers
    assert not [line for line in result.stderr.splitlines() if "Traceback" in line or "failed" in line], result.stderr


def test_a_single_rank_stops_on_sigterm_to_its_process_group_after_a_periodic_save(dataset, tmp_path):
    """No launcher: the rank is the session leader, as with ``setsid headless-megatron ... &``."""
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--save-interval", "2", "--num-workers", "2", iters=40)
    result = FaultRun(argv, tmp_path, fault="SIGTERM training 5").finish(timeout=60)
    assert result.code == 0 and not result.leftovers, result.stderr[-3000:]
    assert "stopping after iteration 5: SIGTERM" in result.stdout
    assert checkpoint_to_resume(save) == (save / "iter_0000005", "")


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_previous_checkpoint(dataset, tmp_path):
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--save-interval", "2", nproc=2, iters=40)
    result = FaultRun(argv, tmp_path, fault="SIGINTx2 training 3").finish(timeout=60)
    assert result.code not in (0, None) and result.seconds < 60 and not result.leftovers, result.stderr[-3000:]
    assert checkpoint_to_resume(save) == (save / "iter_0000002", "")
    assert "press Ctrl-C again to abort without saving" in result.stderr


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_sent_from_outside_to_every_process_of_the_launch_exits_0(name, dataset, tmp_path):
    """As ``scancel``, SLURM's time limit and a terminal's Ctrl-C do: the launcher, torchrun's agent, the
    ranks and their DataLoader workers all get it at once, at a moment the run does not choose."""
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--save-interval", "2", "--num-workers", "2", nproc=2, iters=400)
    run = FaultRun(argv, tmp_path)
    run.wait_until(lambda: "saved checkpoint" in run.stdout_path.read_text(), timeout=120)
    run.signal_group(getattr(signal, name))
    result = run.finish(timeout=180)
    assert result.code == 0, result.stderr[-3000:]
    stops = [line for line in result.stdout.splitlines() if line.startswith("stopping after iteration")]
    assert len(stops) == 1 and stops[0].endswith(f": {name}; saving, resume with --load {save}"), result.stdout
    stopped_at = int(stops[0].split()[3].rstrip(":"))
    assert checkpoint_to_resume(save) == (save / f"iter_{stopped_at:07d}", "")
    # Nothing else on stderr: no "rank ? failed", no torch "death signal" line (Ctrl-C's hint is rank 0's).
    hints = [line for line in result.stderr.splitlines() if "press Ctrl-C again to abort without saving" in line]
    assert result.stderr.splitlines() == hints and len(hints) == (name == "SIGINT"), result.stderr[-3000:]
    assert not result.leftovers


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGTERM"])
def test_a_stop_signal_during_start_up_trains_one_iteration_saves_and_exits_0(name, dataset, tmp_path):
    """SLURM's time-limit warning or a preemption while the rank still imports torch and builds the
    model: recorded, not fatal; the run saves after its first iteration, so a requeue makes progress."""
    save = tmp_path / "run"
    run = FaultRun(pretrain_argv(dataset, save, iters=40), tmp_path)
    maps = Path(f"/proc/{run.process.pid}/maps")
    run.wait_until(lambda: "libtorch" in maps.read_text(), timeout=60)  # importing torch: seconds before the trainer
    assert "iteration" not in run.stdout_path.read_text()
    run.signal_group(getattr(signal, name))
    result = run.finish(timeout=120)
    assert result.code == 0, result.stderr[-3000:]
    assert f"stopping after iteration 1: {name}; saving, resume with --load {save}" in result.stdout, result.stdout
    assert checkpoint_to_resume(save) == (save / "iter_0000001", "")


_START_UP_THEN_NO_HANDLER = """
import os, signal, sys
from headless_megatron.training.signals import StopConditions, record_stop_signals_during_start_up
record_stop_signals_during_start_up()
if sys.argv[1] == "signalled":
    os.kill(os.getpid(), signal.SIGUSR1)
StopConditions(handle_signals=False, exit_duration_in_mins=None, exit_interval=None)
print(signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def test_with_exit_signal_handler_off_a_start_up_signal_ends_the_rank_as_without_recording():
    quiet = subprocess.run([sys.executable, "-c", _START_UP_THEN_NO_HANDLER, "quiet"], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "True", quiet.stderr
    signalled = subprocess.run([sys.executable, "-c", _START_UP_THEN_NO_HANDLER, "signalled"], capture_output=True)
    assert signalled.returncode == -signal.SIGUSR1 and not signalled.stdout
