"""Fine-tuning a headless decoder into a language model: the head starts as the input embeddings."""

from __future__ import annotations

import pytest
import torch
from local_ranks import RankFailure, run_on_ranks
from training_runs import train

from headless_megatron.config import parse_config

FINETUNE = ["--loss", "ce", "--untie-embeddings-and-output-weights", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def pretrained(gpt_saved_run):
    """The headless reference run's save directory (its last checkpoint: iteration 20)."""
    return gpt_saved_run.directory


def _initial_finetune_weights(argv):
    from megatron.core import parallel_state as ps

    from headless_megatron.training.loop import start_trainer

    stage = start_trainer(parse_config(argv)).model.module
    return {
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "head": stage.output_layer.weight.detach().clone(),
        "embedding": stage.embedding.word_embeddings.weight.detach().clone(),
        "body": {n: p.detach().clone() for n, p in stage.named_parameters() if not n.startswith("output_layer")},
    }


def _argv(dataset, pretrained, *flags):
    return ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--pretrained", str(pretrained),
            "--train-iters", "30", "--lr-warmup-iters", "2", "--eval-iters", "0", "--num-workers", "0",
            "--save", "none", *FINETUNE, *flags]


def test_new_head_is_the_pretrained_input_embedding_table_in_every_tp_shard(dataset, pretrained):
    (single,) = run_on_ranks(_initial_finetune_weights, 1, args=(_argv(dataset, pretrained),))
    assert torch.equal(single["head"], single["embedding"])
    shards = run_on_ranks(
        _initial_finetune_weights, 2, args=(_argv(dataset, pretrained, "--tensor-model-parallel-size", "2"),)
    )
    assert torch.equal(torch.cat([s["head"] for s in shards]), single["head"])


def test_finetuning_lowers_the_cross_entropy(dataset, pretrained):
    losses = train(1, dataset, "--pretrained", str(pretrained), *FINETUNE, iters=30).losses
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.2


def test_freeze_body_trains_the_head_only(dataset, pretrained, tmp_path):
    train(1, dataset, "--pretrained", str(pretrained), *FINETUNE, "--freeze-body", "--save", str(tmp_path), iters=5)
    (before,) = run_on_ranks(_initial_finetune_weights, 1, args=(_argv(dataset, pretrained),))
    (after,) = run_on_ranks(
        _initial_finetune_weights, 1,
        args=(_argv(dataset, pretrained, "--freeze-body", "--load", str(tmp_path), "--no-load-optim"),)
    )
    assert all(torch.equal(after["body"][name], value) for name, value in before["body"].items())
    assert not torch.equal(after["head"], before["head"])


def test_architecture_mismatch_is_named(dataset, pretrained):
    with pytest.raises(RankFailure, match=r"CheckpointError: num_layers: 2 differs from the pretrained checkpoint's 4"):
        train(1, dataset, "--pretrained", str(pretrained), *FINETUNE, "--num-layers", "2", iters=3)
