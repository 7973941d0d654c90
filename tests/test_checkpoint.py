"""Checkpoint publication: atomic, tracked, loud when missing or broken, one line when the disk fails
(resume exactness is in test_training_loop.py, resharding in test_megatron_layouts.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import megatron_helpers as mh
import pytest
from file_systems import read_only_from_now, remount_read_only, small_disk
from local_ranks import RankFailure, run_on_ranks
from training_runs import train

from headless_megatron.config import ParallelLayout
from headless_megatron.runtime.directory_lock import LOCK_FILE
from headless_megatron.runtime.distributed import init_distributed
from headless_megatron.training.checkpoint import load_checkpoint, save_checkpoint
from headless_megatron.training.run_directory import TRACKER_FILE, CheckpointError, latest_checkpoint


def _save_twice_then_load(root):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    init_distributed(ParallelLayout(1, 1), seed=mh.SEED)
    config = mh.tiny_config()
    model = mh.wrap_ddp(config, mh.build_gpt(config), distributed_optimizer=True)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-3, use_distributed_optimizer=True), [model]
    )
    scheduler = OptimizerParamScheduler(optimizer, 0.0, 1e-3, 0.0, 0, 10, "constant", 0.0, 0.0, 10, "constant")
    common = {"config": {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1}}
    save_checkpoint(root, 5, [model], optimizer, scheduler, common)
    weights_at_5 = model.module.embedding.word_embeddings.weight.detach().clone()
    (root / "iter_0000007.tmp").mkdir()  # a save that was killed half-way
    (root / "iter_0000007.tmp" / "half_written.distcp").write_bytes(b"\0" * 10)
    published_before_retry = latest_checkpoint(root)
    model.module.embedding.word_embeddings.weight.data.add_(1.0)
    save_checkpoint(root, 7, [model], optimizer, scheduler, common)  # retried: replaces the leftover
    model.module.embedding.word_embeddings.weight.data.zero_()
    restored = load_checkpoint(root / "iter_0000005", [model], optimizer, scheduler)
    return {
        "published_before_retry": published_before_retry.name,
        "latest": latest_checkpoint(root).name,
        "restored_iteration": restored["iteration"],
        "restored_exactly": bool((model.module.embedding.word_embeddings.weight == weights_at_5).all()),
        "entries": sorted(p.name for p in root.iterdir()),
    }


def test_checkpoints_are_published_atomically_and_tracked(tmp_path):
    (result,) = run_on_ranks(_save_twice_then_load, 1, args=(tmp_path,))
    assert result["published_before_retry"] == "iter_0000005"  # the half-written one is invisible
    assert result["latest"] == "iter_0000007"
    assert result["entries"] == ["iter_0000005", "iter_0000007", TRACKER_FILE]
    assert result["restored_iteration"] == 5 and result["restored_exactly"]


def test_no_checkpoint_yet_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "never_created") is None


@pytest.mark.parametrize(
    "tracker, message",
    [
        ("latest\n", r"expected an iteration number, found 'latest'"),
        ("3\n", r"names iteration 3, but .*iter_0000003 is missing"),
    ],
)
def test_broken_tracker_fails_loudly(tmp_path, tracker, message):
    (tmp_path / TRACKER_FILE).write_text(tracker)
    with pytest.raises(CheckpointError, match=message):
        latest_checkpoint(tmp_path)


def test_an_unreadable_checkpoint_directory_is_named(tmp_path):
    (tmp_path / "iter_0000001").mkdir()
    with pytest.raises(CheckpointError, match=r"iter_0000001: not a readable torch_dist checkpoint"):
        load_checkpoint(tmp_path / "iter_0000001", [])


# ---- A disk that cannot take the run: one line, nothing published, the space given back ----


def test_a_save_directory_that_cannot_be_written_is_one_line_before_any_iteration(dataset, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RankFailure, match=rf"DirectoryUnwritable: save {tmp_path}/file/run: cannot write there "
                                          r"\(Not a directory\)"):
        train(1, dataset, "--save", str(tmp_path / "file" / "run"), "--log-dir", str(tmp_path / "logs"), iters=10)
    assert not (tmp_path / "logs").exists()  # refused before anything was written, the metrics included
    with small_disk(tmp_path / "disk", "1m") as disk:
        remount_read_only(disk)
        with pytest.raises(RankFailure, match=rf"DirectoryUnwritable: save {disk}/run: cannot write there "
                                              r"\(Read-only file system\)"):
            train(1, dataset, "--save", str(disk / "run"), iters=10)


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_during_a_save_is_one_line_and_publishes_nothing(dataset, tmp_path, ranks):
    with small_disk(tmp_path / "disk", "384k") as disk:  # room for the lock and metrics, not a checkpoint
        with pytest.raises(RankFailure, match=rf"CheckpointError: save: writing iteration 5 to {disk}/run failed "
                                              r"\(No space left on device\); nothing was published"):
            train(ranks, dataset, "--save", str(disk / "run"), "--save-interval", "5", iters=10)
        assert sorted(path.name for path in (disk / "run").iterdir()) == [LOCK_FILE, "config.yaml", "metrics.jsonl"]


def _save_after_the_disk_turned_read_only(argv, disk):
    from headless_megatron.config import parse_config
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    trainer.train_step(trainer.train_data_iterator())
    read_only_from_now(Path(disk) / "run")
    try:
        trainer.save(1)
        trainer.finish_saves()  # a background write fails here, when it is waited for
    except CheckpointError as error:
        return str(error)
    return None


@pytest.mark.parametrize("mode", ["at once", "in the background"])
def test_a_disk_turned_read_only_mid_run_is_one_line_at_the_next_save(mode, dataset, tmp_path):
    with small_disk(tmp_path / "disk", "64m") as disk:
        argv = ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--train-iters", "10",
                "--lr-warmup-iters", "2", "--eval-iters", "0", "--num-workers", "0", "--save", str(disk / "run"),
                *(["--async-save"] if mode == "in the background" else [])]
        try:
            message = run_on_ranks(_save_after_the_disk_turned_read_only, 1, args=(argv, str(disk)), timeout=300)[0]
        finally:
            subprocess.run(["umount", str(disk / "run")])
    assert message == (f"save: writing iteration 1 to {disk}/run failed (Read-only file system); nothing was "
                       "published, the previous checkpoint stays the latest")
