"""Any ``torch_dist`` checkpoint of ours as full, unsharded tensors and its config, in one process.

    checkpoint = open_checkpoint("runs/gpt_headless_tiny")          # the latest iteration
    checkpoint.config                                               # TrainConfig from common.pt
    tensors = checkpoint.load(["decoder.final_layernorm.weight"])   # {key: full tensor}
    layer_3 = checkpoint.load(["decoder.layers.mlp.linear_fc2.weight"], layer=3)  # one layer's slice

How it reads: ``torch.distributed.checkpoint.load(..., no_dist=True)`` into empty tensors of the full
(global) shapes recorded in the checkpoint's ``.metadata``. DCP's default load planner then reads,
for every requested key, each saved chunk that overlaps the full tensor, so whatever TP/PP layout
(and DP replicas) wrote the checkpoint, one process gets the whole tensor without a process group,
GPUs or Megatron's model classes. Only the requested model tensors are read: the optimizer state
(``optimizer.*``, often most of the bytes), the RNG states and the layers' ``_extra_state`` are never
touched. Layer tensors come stacked on a leading global-layer dimension (``decoder.layers.*``), and
embedding/output rows include Megatron's vocabulary padding (see ``models.hf_mapping``).

Memory: ``load(keys, layer=i)`` reads one layer's slice of stacked keys and nothing else. A
planner (:class:`_RegionPlanner`) asks DCP for that region as a local chunk
(``ChunkStorageMetadata`` at offset ``(i, 0, ...)``), exactly as DCP plans a resharded load, so
only the saved chunks that overlap it are read; Megatron saves every layer of a stacked key as
its own chunk (one per TP shard), so a layer's read touches that layer's bytes only. An export
therefore holds one tensor (and the saved chunk being copied into it) at a time, never the model.

Before anything is read, the directory is checked against its own metadata: every ``.distcp`` file
it references must exist at its full size, so a checkpoint whose copy or save was cut short fails
with one line naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from headless_megatron.config import ConfigError, TrainConfig, config_from_dict
from headless_megatron.convert import ConversionError
from headless_megatron.errors import first_line
from headless_megatron.training.checkpoint import root_cause
from headless_megatron.training.run_directory import (
    COMMON_FILE,
    MEGATRON_METADATA_FILE,
    CheckpointError,
    complete_metadata,
    iteration_dir,
    latest_checkpoint,
    read_common,
)

OPTIMIZER_PREFIX = "optimizer."


@dataclass(frozen=True)
class MegatronCheckpoint:
    """One published iteration of a training run: where it is, its config, its model tensors."""

    path: Path
    """The ``iter_NNNNNNN`` directory."""
    iteration: int
    config: TrainConfig
    common: dict[str, Any]
    """Everything ``common.pt`` holds (``iteration``, ``consumed_train_samples``, ``config``...)."""
    model_tensors: dict[str, tuple[torch.Size, torch.dtype]]
    """Key -> full shape and dtype, for every model tensor (optimizer state left out)."""

    def load(self, keys: Iterable[str], layer: int | None = None) -> dict[str, torch.Tensor]:
        """The full tensors of ``keys``, or with ``layer`` the slice ``[layer]`` of each (stacked) key;
        raises :class:`ConversionError` for a key the checkpoint lacks."""
        from torch.distributed.checkpoint import FileSystemReader, load

        keys = list(keys)
        missing = [key for key in keys if key not in self.model_tensors]
        if missing:
            raise ConversionError(
                f"{self.path}: no tensor {', '.join(missing)} in the checkpoint: it is incomplete or does not "
                f"match its config (model {self.config.model})"
            )
        state, offsets = {}, {}
        for key in keys:
            shape, dtype = self.model_tensors[key]
            if layer is not None:
                if len(shape) < 1 or not 0 <= layer < shape[0]:
                    raise ConversionError(f"{self.path}: {key} of shape {tuple(shape)} has no layer {layer}")
                shape = torch.Size((1, *shape[1:]))
            state[key] = torch.empty(shape, dtype=dtype)
            offsets[key] = (0 if layer is None else layer,) + (0,) * (len(shape) - 1)
        try:
            with warnings.catch_warnings():
                # no_dist is exactly the intent; DCP warns about it when no process group exists.
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                load(state, storage_reader=FileSystemReader(str(self.path)), planner=_RegionPlanner(offsets),
                     no_dist=True)
        except Exception as error:  # DCP raises a CheckpointException wrapping anything
            raise ConversionError(
                f"{self.path}: cannot read the model tensors: {first_line(root_cause(error))}"
            ) from error
        return state if layer is None else {key: tensor[0] for key, tensor in state.items()}


class _RegionPlanner(DefaultLoadPlanner):
    """DCP's default load planner, but each state-dict tensor is a region of the saved tensor that
    starts at ``offsets[key]`` (a local chunk, as a resharded load would have) instead of all of it."""

    def __init__(self, offsets: dict[str, tuple[int, ...]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.offsets = offsets

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, tensor in self.state_dict.items():
            region = ChunkStorageMetadata(offsets=torch.Size(self.offsets[key]), sizes=tensor.size())
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [region])
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        # The default looks a chunk's offset up among ShardedTensor shards; ours is the whole tensor.
        return self.state_dict[index.fqn]


def open_checkpoint(path: str | Path, iteration: int | None = None) -> MegatronCheckpoint:
    """The checkpoint at ``path``: a save directory (its latest iteration, or ``iteration``) or one
    ``iter_NNNNNNN`` directory. Checks that it is complete and one of ours; reads no tensor yet."""
    directory = _iteration_directory(Path(path), iteration)
    try:
        metadata = complete_metadata(directory)
    except CheckpointError as error:
        raise ConversionError(str(error)) from error
    try:
        common = read_common(directory)
    except CheckpointError as error:
        raise ConversionError(str(error)) from error
    if not isinstance(common.get("config"), dict):
        raise ConversionError(
            f"{directory}: not a headless-megatron checkpoint ({COMMON_FILE} has no training config)"
        )
    try:
        config = config_from_dict(common["config"])
    except ConfigError as error:
        raise ConversionError(f"{directory}: the saved config is not valid here: {error}") from error
    model_tensors = {
        key: (item.size, item.properties.dtype)
        for key, item in metadata.state_dict_metadata.items()
        if isinstance(item, TensorStorageMetadata) and not key.startswith(OPTIMIZER_PREFIX)
    }
    return MegatronCheckpoint(directory, int(common.get("iteration", 0)), config, common, model_tensors)


def _iteration_directory(path: Path, iteration: int | None) -> Path:
    if not path.is_dir():
        raise ConversionError(f"{path}: no such checkpoint directory")
    if (path / MEGATRON_METADATA_FILE).is_file():
        if iteration is not None:
            raise ConversionError(
                f"{path} is one iteration's directory already; give its save directory to pick --iteration"
            )
        return path
    if iteration is not None:
        directory = iteration_dir(path, iteration)
        if not directory.is_dir():
            saved = sorted(p.name for p in path.glob("iter_*") if p.is_dir())
            raise ConversionError(f"{path}: no iteration {iteration} (found: {', '.join(saved) or 'none'})")
        return directory
    try:
        directory = latest_checkpoint(path)
    except CheckpointError as error:
        raise ConversionError(str(error)) from error
    if directory is None:
        raise ConversionError(
            f"{path}: no checkpoint (neither a save directory with latest_checkpointed_iteration.txt nor "
            "an iter_NNNNNNN directory)"
        )
    return directory
