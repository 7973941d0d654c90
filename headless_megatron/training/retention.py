"""Checkpoint retention (``keep_last_checkpoints``, ``keep_checkpoint_interval``): which published
checkpoints of a run directory are deleted after each save, and how, so that nothing a run may
resume from, or is writing, is ever lost."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from headless_megatron.config import TrainConfig
from headless_megatron.training.run_directory import iteration_of, latest_checkpoint, published_iterations


def apply_retention(config: TrainConfig, say: Callable[[str], None]) -> None:
    """After a checkpoint of the run ``config`` is published: rank 0 deletes what retention does not
    keep, and ``say``s which (nothing without ``keep_last_checkpoints``)."""
    keep_last, keep_interval = config.keep_last_checkpoints, config.keep_checkpoint_interval
    if not keep_last or dist.get_rank() != 0:
        return
    removed = prune_checkpoints(config.save, keep_last, keep_interval)
    if removed:
        say(f"removed {', '.join(path.name for path in removed)} (keep_last_checkpoints {keep_last}, "
            f"keep_checkpoint_interval {keep_interval})")


def prune_checkpoints(root: str | Path, keep_last: int, keep_interval: int | None = None) -> list[Path]:
    """Delete the published checkpoints of ``root`` that retention does not keep, and return them.

    Kept: the ``keep_last`` newest, those whose iteration is a multiple of ``keep_interval``, the
    one the tracker names and any newer than it (a run resumed from an earlier checkpoint must not
    delete what it has not replaced yet). Staging directories (a checkpoint being written) are never
    touched. Each deleted directory is first renamed out of the published names, so a crash while
    deleting leaves nothing that looks like a checkpoint; leftovers of such a crash go next time.
    Rank 0's job, after a publish."""
    root = Path(root)
    for leftover in root.glob("iter_*.deleting"):
        shutil.rmtree(leftover, ignore_errors=True)
    latest = latest_checkpoint(root)
    if latest is None:
        return []
    published = published_iterations(root)
    kept = set(published[-keep_last:]) | {latest}
    doomed = [
        path for path in published
        if path not in kept and iteration_of(path) < iteration_of(latest)
        and not (keep_interval and iteration_of(path) % keep_interval == 0)
    ]
    for path in doomed:
        deleting = path.with_name(path.name + ".deleting")
        os.replace(path, deleting)
        shutil.rmtree(deleting)
    return doomed
