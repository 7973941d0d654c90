"""Checkpoint publication: atomic, tracked, loud when missing or broken (resume exactness is in
test_training_loop.py, resharding in test_megatron_layouts.py)."""

from __future__ import annotations

import megatron_helpers as mh
import pytest
from local_ranks import run_on_ranks

from headless_megatron.config import ParallelLayout
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
