"""Checkpoint safety when a save is interrupted: a rank SIGKILLed while saving leaves the previous
checkpoint as the one that is loaded, and the restarted run continues exactly from it; a stop signal
that reaches every process of a rank, as SLURM sends it, still ends in a saved checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from local_ranks import RankFailure, run_on_ranks
from training_runs import TINY, assert_losses_close, train

from headless_megatron.config import parse_config
from headless_megatron.training.loop import pretrain
from headless_megatron.training.run_directory import CheckpointError, checkpoint_to_resume, latest_checkpoint


def _pretrain_killing_a_rank_in_save(argv, iteration, pid_file):
    """Pretrain; rank 0 SIGKILLs itself as it enters the save of ``iteration``, after it has created
    the staging directory and while rank 1 writes its part (a surviving rank 0 would remove the
    staging directory of a failed save; a dead one leaves it for the restart to replace)."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    save = dist_checkpointing.save

    def save_or_die(state, directory, *args, **kwargs):
        if dist.get_rank() == 0 and Path(directory).name == f"iter_{iteration:07d}.tmp":
            # The processes this rank started (the checkpoint writer's) outlive it, as they would on a
            # cluster; the test stops them by PID.
            Path(pid_file).write_text(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)))
            os.kill(os.getpid(), signal.SIGKILL)
        return save(state, directory, *args, **kwargs)

    dist_checkpointing.save = save_or_die
    pretrain(parse_config(argv))


def _stop(pid_file: Path) -> None:
    for pid in pid_file.read_text().split() if pid_file.exists() else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_rank_killed_while_saving_leaves_the_previous_checkpoint_which_the_restart_uses(dataset, tmp_path):
    run = tmp_path / "run"
    argv = ["--config", TINY, "--data-path", dataset, "--train-iters", "10", "--lr-warmup-iters", "2",
            "--eval-iters", "0", "--num-workers", "0", "--save", str(run), "--load", str(run), "--save-interval", "5"]
    pid_file = tmp_path / "orphans"
    try:
        with pytest.raises(RankFailure, match="rank 0 died with exit code -9"):
            run_on_ranks(_pretrain_killing_a_rank_in_save, 2, args=(argv, 10, str(pid_file)))
    finally:
        _stop(pid_file)

    # The save of iteration 10 never got published: the tracker and the loaded checkpoint stay at 5.
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "5"
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000005", "iter_0000010.tmp"]
    assert latest_checkpoint(run) == run / "iter_0000005"
    # Published by hand, the half-written directory is refused, not loaded.
    forged = tmp_path / "forged"
    shutil.copytree(run, forged)
    (forged / "iter_0000010.tmp").rename(forged / "iter_0000010")
    (forged / "latest_checkpointed_iteration.txt").write_text("10\n")
    with pytest.raises(CheckpointError, match="iter_0000010: incomplete checkpoint: metadata.json is missing"):
        checkpoint_to_resume(forged)
    assert checkpoint_to_resume(forged, fallback=True)[0] == forged / "iter_0000005"

    # The restarted job resumes from 5, replaces the leftover and matches an uninterrupted run.
    resumed = train(2, dataset, "--save", str(run), "--load", str(run), iters=10)
    uninterrupted = train(2, dataset, iters=10)
    assert_losses_close(resumed.losses, uninterrupted.losses[5:], 1e-6, "restarted from 5 vs uninterrupted")
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "10"
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000005", "iter_0000010"]


def _pretrain_killed_between_the_renames_of_a_save_again(argv, iteration):
    """Pretrain; the process SIGKILLs itself in the publish of ``iteration`` when that iteration is
    already published: after the old directory was moved aside, before the new one is renamed in."""
    from headless_megatron import durable
    from headless_megatron.training import run_directory

    replace = durable.replace

    def replace_or_die(source, target):
        if Path(source).name == f"iter_{iteration:07d}.tmp" and run_directory.replaced_dir(Path(target).parent,
                                                                                              iteration).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        replace(source, target)

    durable.replace = replace_or_die
    pretrain(parse_config(argv))


def test_a_kill_while_an_iteration_is_saved_again_is_resumed_with_the_fallback_flag(dataset, tmp_path):
    """Iteration 10's checkpoint is damaged; the run falls back to 5 and saves 10 again, and dies
    between moving the damaged 10 aside and renaming the new one in. The tracker then names a missing
    directory: refused without the flag, resumed from 5 with it, and the run ends as an
    uninterrupted one."""
    run = tmp_path / "run"
    common = ("--save", str(run), "--load", str(run), "--save-interval", "5")
    train(1, dataset, *common, iters=10)
    shard = max((run / "iter_0000010").glob("*.distcp"), key=lambda path: path.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    argv = ["--config", TINY, "--data-path", dataset, "--train-iters", "10", "--lr-warmup-iters", "2",
            "--eval-iters", "0", "--num-workers", "0", *common, "--load-fallback"]
    with pytest.raises(RankFailure, match="rank 0 died with exit code -9"):
        run_on_ranks(_pretrain_killed_between_the_renames_of_a_save_again, 1, args=(argv, 10))
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "10"
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000005", "iter_0000010.replaced",
                                                           "iter_0000010.tmp"]
    with pytest.raises(CheckpointError, match="iter_0000010 is missing; resume from the previous complete checkpoint "
                                              "with --load-fallback"):
        checkpoint_to_resume(run)

    resumed = train(1, dataset, *common, "--load-fallback", iters=10)
    uninterrupted = train(1, dataset, iters=10)
    assert_losses_close(resumed.losses, uninterrupted.losses[5:], 1e-6, "resumed from 5 vs uninterrupted")
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000005", "iter_0000010"]
    assert checkpoint_to_resume(run) == (run / "iter_0000010", "")


# slurmstepd signals every process of a job step (scancel --signal, --signal=USR1@120, and SIGTERM
# on scancel, time limit or preemption): the ranks and every process they started.
@pytest.mark.parametrize("name", ["SIGUSR1", "SIGTERM"])
def test_a_stop_signal_to_every_process_of_the_ranks_still_saves(name, dataset, tmp_path):
    run, output = tmp_path / "run", tmp_path / "output.txt"
    command = [sys.executable, "-m", "headless_megatron", "pretrain", "--nproc-per-node", "2", "--config", TINY,
               "--data-path", dataset, "--train-iters", "40", "--lr-warmup-iters", "2", "--eval-iters", "0",
               "--num-workers", "1", "--log-interval", "1", "--save", str(run), "--save-interval", "2"]
    with output.open("w") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.2)
        # From this process, as slurmstepd does: the ranks and their helpers, not torchrun itself.
        for rank in psutil.Process(launcher.pid).children():
            for process in [rank, *rank.children(recursive=True)]:
                process.send_signal(getattr(signal, name))
        launcher.wait(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    text = output.read_text()
    assert launcher.returncode == 0, text[-3000:]
    stopped_at = int(text.split("stopping after iteration ")[1].split(":")[0])
    assert f"stopping after iteration {stopped_at}: {name}" in text and stopped_at < 40
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == str(stopped_at)
