"""Reading a checkpoint in one process: the full tensors are what Megatron itself loads; damage is named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from local_ranks import run_on_ranks
from test_convert_export import VOCAB, pretrain_each, training_argv

from headless_megatron.config import config_from_dict
from headless_megatron.config.megatron import transformer_config
from headless_megatron.convert import ConversionError
from headless_megatron.convert.checkpoint_reader import open_checkpoint

TP2_PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
UNTIED = ["--loss", "ce", "--untie-embeddings-and-output-weights"]


def megatron_full_tensors(iteration_directory: str, vocab_size: int) -> dict[str, torch.Tensor]:
    """On one rank: the checkpoint loaded by the training loop's loader into a TP1 PP1 model, each
    tensor assembled in full from the model's own sharded-state-dict description."""
    import dataclasses
    from pathlib import Path

    from headless_megatron.config import ParallelLayout
    from headless_megatron.models.gpt.model import build_gpt_stage
    from headless_megatron.models.init import sharded_tensors
    from headless_megatron.runtime.distributed import init_distributed
    from headless_megatron.training.checkpoint import load_checkpoint

    init_distributed(ParallelLayout())
    path = Path(iteration_directory)
    saved = config_from_dict(torch.load(path / "common.pt", weights_only=True)["config"])
    config = dataclasses.replace(saved, tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    model = build_gpt_stage(transformer_config(config, "local", on_gpu=False), config.padded_vocab_size(vocab_size),
                            config.max_positions, seed=99,
                            share_embeddings_and_output_weights=config.share_embeddings_and_output_weights)
    load_checkpoint(path, [model], load_rng=False)
    full = {}
    for shard in sharded_tensors(model.sharded_state_dict()):
        tensor = full.setdefault(shard.key, torch.full(shard.global_shape, float("nan")))
        prepend = shard.prepend_axis_num
        index = (*shard.global_offset[:prepend], *(
            slice(offset, offset + size) for offset, size in zip(shard.global_offset[prepend:], shard.local_shape)
        ))
        tensor[index] = shard.data
    return full


@pytest.fixture(scope="module")
def save(topics_dataset, tmp_path_factory):
    save = tmp_path_factory.mktemp("runs") / "tp2_pp2"
    run_on_ranks(pretrain_each, 4, args=([training_argv(topics_dataset, save, *TP2_PP2, *UNTIED)],), timeout=600)
    return save


def test_full_tensors_equal_what_megatron_loads_and_optimizer_state_is_left_out(save):
    checkpoint = open_checkpoint(save)
    assert checkpoint.iteration == 3 and checkpoint.path == save / "iter_0000003"
    assert (checkpoint.config.tensor_model_parallel_size, checkpoint.config.num_query_groups) == (2, 2)
    assert checkpoint.common["consumed_train_samples"] == 3 * checkpoint.config.global_batch_size
    assert not any(
        key.startswith(("optimizer", "rng_state")) or "_extra_state" in key for key in checkpoint.model_tensors
    )
    tensors = checkpoint.load(checkpoint.model_tensors)
    expected = run_on_ranks(megatron_full_tensors, 1, args=(str(checkpoint.path), VOCAB), timeout=300)[0]
    assert sorted(tensors) == sorted(expected)
    assert "output_layer.weight" in tensors
    assert tensors["decoder.layers.self_attention.linear_qkv.weight"].shape == (4, 128, 64)
    for key, tensor in tensors.items():
        assert torch.equal(tensor, expected[key]), key


def test_one_layer_is_read_alone_and_equals_that_layer_of_the_full_tensor(save):
    checkpoint = open_checkpoint(save)
    stacked = sorted(key for key in checkpoint.model_tensors if key.startswith("decoder.layers."))
    full = checkpoint.load(stacked)
    for layer in range(4):  # layers 0-1 were saved by the first pipeline stage, 2-3 by the second
        sliced = checkpoint.load(stacked, layer=layer)
        for key in stacked:
            assert sliced[key].shape == full[key].shape[1:] and torch.equal(sliced[key], full[key][layer]), (key, layer)
    with pytest.raises(
        ConversionError, match=r"decoder.layers.mlp.linear_fc2.weight of shape \(4, 64, 128\) has no layer 4"
    ):
        checkpoint.load(["decoder.layers.mlp.linear_fc2.weight"], layer=4)


def test_an_iteration_can_be_named_in_either_way(save):
    assert open_checkpoint(save, iteration=3).path == open_checkpoint(save / "iter_0000003").path
    with pytest.raises(ConversionError, match=r"no iteration 4 \(found: iter_0000003\)"):
        open_checkpoint(save, iteration=4)
    with pytest.raises(ConversionError, match="one iteration's directory already"):
        open_checkpoint(save / "iter_0000003", iteration=3)


@pytest.fixture
def damaged(save, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(save, copy)
    return copy


def test_damage_is_named_before_anything_is_read(damaged, tmp_path):
    iteration = damaged / "iter_0000003"
    with pytest.raises(ConversionError, match="no such checkpoint directory"):
        open_checkpoint(tmp_path / "missing")
    with pytest.raises(ConversionError, match="no checkpoint .neither a save directory"):
        open_checkpoint(tmp_path)
    (iteration / "common.pt").rename(iteration / "common.bak")
    with pytest.raises(ConversionError, match="incomplete checkpoint: common.pt is missing"):
        open_checkpoint(damaged)
    (iteration / "common.bak").rename(iteration / "common.pt")
    (iteration / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    with pytest.raises(ConversionError, match="a zarr checkpoint; only torch_dist"):
        open_checkpoint(damaged)


def test_files_cut_short_are_refused(damaged):
    iteration = damaged / "iter_0000003"
    shard = min(iteration.glob("__*.distcp"))
    size = shard.stat().st_size
    with open(shard, "r+b") as file:
        file.truncate(size - 1)
    with pytest.raises(ConversionError, match=f"{shard.name} is truncated \\({size - 1} of {size} bytes\\)"):
        open_checkpoint(damaged)
    shard.unlink()
    with pytest.raises(ConversionError, match=f"incomplete checkpoint: {shard.name} is missing"):
        open_checkpoint(damaged)


def test_checkpoints_of_other_trainers_are_refused(damaged):
    iteration = damaged / "iter_0000003"
    common = torch.load(iteration / "common.pt", weights_only=True)
    torch.save({"args": None, "iteration": 3}, iteration / "common.pt")  # what Megatron-LM's trainer saves
    with pytest.raises(ConversionError, match="not a headless-megatron checkpoint"):
        open_checkpoint(damaged)
    torch.save({**common, "config": {**common["config"], "hidden_sizes": 64}}, iteration / "common.pt")
    with pytest.raises(ConversionError, match="the saved config is not valid here: unknown key 'hidden_sizes'"):
        open_checkpoint(damaged)


def test_a_tensor_the_checkpoint_lacks_is_named(save):
    with pytest.raises(
        ConversionError, match="no tensor decoder.layers.self_attention.linear_qkv.bias in the checkpoint"
    ):
        open_checkpoint(save).load(["decoder.final_layernorm.weight", "decoder.layers.self_attention.linear_qkv.bias"])
