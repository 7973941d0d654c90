"""Virtual pipeline parallelism (interleaved 1F1B): PP2 x VPP2 trains like one process, and its
checkpoints reshard to and from PP1."""

from __future__ import annotations

import shutil

import pytest
from training_runs import assert_losses_close, train

VPP = ["--pipeline-model-parallel-size", "2", "--virtual-pipeline-model-parallel-size", "2"]
BERT = "configs/bert_headless_tiny.yaml"


@pytest.mark.parametrize("recipe", ["configs/gpt_headless_tiny.yaml", BERT], ids=["gpt", "bert"])
def test_interleaved_pipeline_first_losses_equal_a_single_process(recipe, dataset):
    single = train(1, dataset, config=recipe, iters=6)
    interleaved = train(2, dataset, *VPP, config=recipe, iters=6)
    assert_losses_close(interleaved.losses, single.losses, 1e-4, f"{recipe} PP2 x VPP2")


def test_checkpoints_reshard_between_interleaved_and_single_stage(dataset, tmp_path):
    full = train(1, dataset, iters=12)
    saved = train(2, dataset, *VPP, "--save", str(tmp_path / "vpp"), "--exit-interval", "6", iters=12)
    assert saved.iterations == 6
    assert_losses_close(saved.losses, full.losses[:6], 1e-4, "PP2 x VPP2 before its save")
    at_pp1 = train(1, dataset, "--load", str(tmp_path / "vpp"), iters=12)
    assert_losses_close(at_pp1.losses, full.losses[6:], 1e-4, "saved at PP2 x VPP2, resumed at PP1")

    train(1, dataset, "--save", str(tmp_path / "pp1"), "--exit-interval", "6", iters=12)
    shutil.rmtree(tmp_path / "vpp")
    at_vpp = train(2, dataset, *VPP, "--load", str(tmp_path / "pp1"), iters=12)
    assert_losses_close(at_vpp.losses, full.losses[6:], 1e-4, "saved at PP1, resumed at PP2 x VPP2")
