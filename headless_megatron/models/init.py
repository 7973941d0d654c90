"""Initial weights that depend only on the seed and the model config, never on the parallel layout.

Megatron initialises each rank's shard from that rank's RNG stream, so TP=2 and PP=2 runs start from
different weights than TP=1 and cannot be compared step by step. Here every parameter is first drawn
*in full* from a generator seeded by (seed, checkpoint key, layer index), with the config's own init
functions, and each rank keeps only its shard. The shard geometry comes from the model's
``sharded_state_dict()``, the same description ``dist_checkpointing`` uses to reshard checkpoints, so
any layout Megatron can save is covered: TP-split and SwiGLU-interleaved weights, layers stacked
across pipeline stages, and the tied embedding copy on the last pipeline stage.
"""

from __future__ import annotations

import hashlib

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.transformer.transformer_config import TransformerConfig

# Megatron initialises these with config.output_layer_init_method (std / sqrt(2 * num_layers)).
_OUTPUT_PROJECTIONS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def _seed_for(seed: int, key: str, layer_offsets: tuple[int, ...]) -> int:
    text = f"{seed}/{key}/{'/'.join(map(str, layer_offsets))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def _full_value(config: TransformerConfig, key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    leaf = key.rsplit(".", 1)[-1]
    if leaf.endswith("bias"):
        return torch.zeros(shape)
    if "norm" in key and leaf.endswith("weight"):
        return torch.ones(shape)
    full = torch.empty(shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if key.endswith(_OUTPUT_PROJECTIONS):
            config.output_layer_init_method(full)
        else:
            config.init_method(full)
    return full


def sharded_tensors(sharded_state_dict):
    for value in sharded_state_dict.values():
        if isinstance(value, ShardedTensorFactory):
            built = value.build()
            yield from sharded_tensors(built if isinstance(built, dict) else dict(enumerate(built)))
        elif isinstance(value, ShardedTensor):
            yield value
        elif isinstance(value, dict):
            yield from sharded_tensors(value)


@torch.no_grad()
def initialize_layout_independent(model: torch.nn.Module, config: TransformerConfig, seed: int) -> None:
    """Overwrite every parameter of ``model`` (one pipeline chunk, unwrapped) with its shard of the
    layout-independent initial value. Call before wrapping the model in DDP."""
    covered = set()
    for tensor in sharded_tensors(model.sharded_state_dict()):
        if tensor.flattened_range is not None:
            raise ValueError(f"{tensor.key}: flattened shards are optimizer state, not parameters")
        prepend = tensor.prepend_axis_num
        layer_offsets = tuple(tensor.global_offset[:prepend])
        full = _full_value(
            config, tensor.key, tuple(tensor.global_shape[prepend:]), _seed_for(seed, tensor.key, layer_offsets)
        )
        index = tuple(
            slice(offset, offset + size)
            for offset, size in zip(tensor.global_offset[prepend:], tensor.local_shape)
        )
        tensor.data.copy_(full[index])
        covered.add(tensor.data.untyped_storage().data_ptr())
    missed = [
        name for name, param in model.named_parameters()
        if param.untyped_storage().data_ptr() not in covered
    ]
    if missed:
        raise ValueError(f"parameters without a checkpoint shard, cannot initialise them: {missed}")
