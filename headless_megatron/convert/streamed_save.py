"""A ``torch_dist`` checkpoint whose tensors are made one at a time while they are written.

Megatron's ``dist_checkpointing.save`` writes what the model's ``sharded_state_dict()`` describes,
and its torch_dist strategy expects every tensor to exist in memory (its writer even copies them
all before writing). An import has no use for that: its tensors come from files on disk. Here the
model may live on the ``meta`` device, giving only the geometry (keys, global shapes, offsets,
replicas), and each tensor is produced by its :data:`TensorSource` when the writer reaches it, written,
and dropped. PyTorch's writer (2.13) keeps the last tensor of each key until the rank's file is
closed, so a rank holds at most one shard per key: one layer's shards and the embedding's, whatever
the number of layers.

Everything else is Megatron's and PyTorch's own: ``dist_checkpointing.save`` with this strategy still
applies the factories, checks that every shard is saved exactly once, writes ``common.pt`` and
``metadata.json`` (backend ``torch_dist``, version 1); the tensors go through Megatron's translation
into DCP objects and its ``MCoreSavePlanner``, written by PyTorch's ``FileSystemWriter`` (one
``__<rank>_0.distcp`` file per rank, DCP's ``.metadata``). Only ``resolve_data``, which hands the
writer each tensor, differs. The result is the checkpoint a training run at that layout would save.

    save_checkpoint(root, 0, [meta_stage], None, None, common, sharded_strategy=StreamedSaveStrategy(sources))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

TensorSource = Callable[[], torch.Tensor]
"""Makes one local shard of a checkpoint tensor (its ``local_shape``, any dtype that converts)."""

ShardId = tuple[str, tuple[int, ...]]
"""A local shard: its checkpoint key and global offset (prepended layer axes included)."""

# Megatron's torch_dist format, as its default strategy records it in metadata.json.
BACKEND, VERSION = "torch_dist", 1


class StreamedSaveStrategy(TorchDistSaveShardedStrategy):
    """Megatron's torch_dist save strategy, with each tensor shard taken from ``sources`` (by its key
    and global offset) at the moment it is written instead of from the shard's data."""

    def __init__(self, sources: dict[ShardId, TensorSource]):
        super().__init__(BACKEND, VERSION, thread_count=1)
        self.sources = sources

    def save(self, sharded_state_dict, checkpoint_dir: str | Path) -> None:
        from torch.distributed.checkpoint import FileSystemWriter, save

        # What TorchDistSaveShardedStrategy.async_save does before writing: one DCP object per key
        # (replicas left out), keyed by checkpoint key.
        sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, self.keep_only_main_replica
        )
        state_dict = mcore_to_pyt_state_dict(sharded_state_dict, is_loading=False)
        # One thread: PyTorch's writer then resolves and writes the items one by one (Megatron's
        # FileSystemWriterAsync would first copy every tensor into memory).
        writer = FileSystemWriter(checkpoint_dir, single_file_per_rank=True, thread_count=1)
        planner = _StreamedSavePlanner(self.sources, dedup_replicated_tensors=False, flatten_state_dict=False)
        save(state_dict, storage_writer=writer, planner=planner)


class _StreamedSavePlanner(MCoreSavePlanner):
    def __init__(self, sources: dict[ShardId, TensorSource], **kwargs):
        super().__init__(**kwargs)
        self.sources = sources

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:  # ShardedObjects (RNG states), already serialised
            return super().resolve_data(write_item)
        index = write_item.index
        chunk = write_item.tensor_data.chunk
        tensor = self.sources[(index.fqn, tuple(index.offset))]()
        # The chunk has the prepended layer axes (size 1) that the local shard lacks.
        return tensor.to(write_item.tensor_data.properties.dtype).reshape(chunk.sizes)
