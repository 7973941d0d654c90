"""Checkpoint retention (keep_last_checkpoints, keep_checkpoint_interval): which checkpoints are
deleted, never the latest, a newer one or one being written; and a run, saving at once and in the
background, that ends with exactly the kept ones."""

from __future__ import annotations

import pytest
from training_runs import train_printing

from headless_megatron.training.retention import prune_checkpoints
from headless_megatron.training.run_directory import TRACKER_FILE


def fake_run(root, iterations, tracked, writing=()):
    for iteration in iterations:
        (root / f"iter_{iteration:07d}").mkdir()
    for iteration in writing:
        (root / f"iter_{iteration:07d}.tmp").mkdir()
    (root / TRACKER_FILE).write_text(f"{tracked}\n")
    return root


def names(root):
    return sorted(path.name for path in root.iterdir() if path.name.startswith("iter_"))


@pytest.mark.parametrize("keep_last, keep_interval, kept", [
    (1, None, [50]),
    (2, None, [40, 50]),
    (2, 20, [20, 40, 50]),
    (5, None, [10, 20, 30, 40, 50]),
])
def test_the_newest_and_the_multiples_are_kept(tmp_path, keep_last, keep_interval, kept):
    root = fake_run(tmp_path, [10, 20, 30, 40, 50], tracked=50)
    removed = prune_checkpoints(root, keep_last, keep_interval)
    assert names(root) == [f"iter_{iteration:07d}" for iteration in kept]
    assert sorted(path.name for path in removed) == sorted(
        f"iter_{iteration:07d}" for iteration in {10, 20, 30, 40, 50} - set(kept))


def test_the_tracked_checkpoint_newer_ones_and_those_being_written_are_never_deleted(tmp_path):
    """A run resumed from 20 (the tracker points there) has not replaced 30-50 yet."""
    root = fake_run(tmp_path, [10, 20, 30, 40, 50], tracked=20, writing=[60])
    prune_checkpoints(root, 1)
    assert names(root) == ["iter_0000020", "iter_0000030", "iter_0000040", "iter_0000050", "iter_0000060.tmp"]


def test_a_deletion_cut_short_looks_like_no_checkpoint_and_is_finished_next_time(tmp_path):
    root = fake_run(tmp_path, [10, 20], tracked=20)
    (root / "iter_0000005.deleting").mkdir()
    (root / "iter_0000005.deleting" / "common.pt").write_bytes(b"half deleted")
    assert prune_checkpoints(root, 1) == [root / "iter_0000010"]
    assert names(root) == ["iter_0000020"]


@pytest.mark.parametrize("background", [False, True])
def test_a_run_keeps_the_last_two_and_every_fourth(dataset, tmp_path, background):
    run = tmp_path / "run"
    summary, printed = train_printing(
        1, dataset, "--save", str(run), "--save-interval", "2", "--keep-last-checkpoints", "2",
        "--keep-checkpoint-interval", "4", *(["--async-save"] if background else []), iters=10)
    assert names(run) == ["iter_0000004", "iter_0000008", "iter_0000010"]
    assert (run / TRACKER_FILE).read_text().strip() == "10"
    removed = [line for line in printed.splitlines() if line.startswith("removed ")]
    assert removed == ["removed iter_0000002 (keep_last_checkpoints 2, keep_checkpoint_interval 4)",
                       "removed iter_0000006 (keep_last_checkpoints 2, keep_checkpoint_interval 4)"]
