"""Any ``torch_dist`` checkpoint of ours as full, unsharded tensors and its config, in one process.

    checkpoint = open_checkpoint("runs/gpt_headless_tiny")          # the latest iteration
    checkpoint.config                                               # TrainConfig from common.pt
    tensors = checkpoint.load(["decoder.final_layernorm.weight"])   # {key: full tensor}

How it reads: ``torch.distributed.checkpoint.load(..., no_dist=True)`` into empty tensors of the full
(global) shapes recorded in the checkpoint's ``.metadata``. DCP's default load planner then reads,
for every requested key, each saved chunk that overlaps the full tensor, so whatever TP/PP layout
(and DP replicas) wrote the checkpoint, one process gets the whole tensor without a process group,
GPUs or Megatron's model classes. Only the requested model tensors are read: the optimizer state
(``optimizer.*``, often most of the bytes), the RNG states and the layers' ``_extra_state`` are never
touched. Layer tensors come stacked on a leading global-layer dimension (``decoder.layers.*``), and
embedding/output rows include Megatron's vocabulary padding (see ``convert.mapping``).

Before anything is read, the directory is checked against its own metadata: every ``.distcp`` file
it references must exist at its full size, so a checkpoint whose copy or save was cut short fails
with one line naming the file.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from headless_megatron.config import ConfigError, TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.data.errors import first_line
from headless_megatron.training.checkpoint import CheckpointError, iteration_dir, latest_checkpoint

COMMON_FILE = "common.pt"
DCP_METADATA_FILE = ".metadata"
MEGATRON_METADATA_FILE = "metadata.json"
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

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The full tensors of ``keys``; raises :class:`ConversionError` for a key the checkpoint lacks."""
        from torch.distributed.checkpoint import FileSystemReader, load

        keys = list(keys)
        missing = [key for key in keys if key not in self.model_tensors]
        if missing:
            raise ConversionError(
                f"{self.path}: no tensor {', '.join(missing)} in the checkpoint: it is incomplete or does not "
                f"match its config (model {self.config.model})"
            )
        state = {}
        for key in keys:
            shape, dtype = self.model_tensors[key]
            state[key] = torch.empty(shape, dtype=dtype)
        try:
            with warnings.catch_warnings():
                # no_dist is exactly the intent; DCP warns about it when no process group exists.
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                load(state, storage_reader=FileSystemReader(str(self.path)), no_dist=True)
        except Exception as error:  # DCP raises a CheckpointException wrapping anything
            raise ConversionError(
                f"{self.path}: cannot read the model tensors: {first_line(_root_cause(error))}"
            ) from error
        return state


def open_checkpoint(path: str | Path, iteration: int | None = None) -> MegatronCheckpoint:
    """The checkpoint at ``path``: a save directory (its latest iteration, or ``iteration``) or one
    ``iter_NNNNNNN`` directory. Checks that it is complete and one of ours; reads no tensor yet."""
    directory = _iteration_directory(Path(path), iteration)
    metadata = _complete_metadata(directory)
    try:
        common = torch.load(directory / COMMON_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors alike
        raise ConversionError(f"{directory}: cannot read {COMMON_FILE}: {first_line(error)}") from error
    if not isinstance(common, dict) or not isinstance(common.get("config"), dict):
        raise ConversionError(
            f"{directory}: not a headless-megatron checkpoint ({COMMON_FILE} has no training config)"
        )
    try:
        config = TrainConfig.from_dict(common["config"])
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


def _complete_metadata(directory: Path):
    """DCP's metadata of ``directory``, after checking that every file it references is whole."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        backend = json.loads((directory / MEGATRON_METADATA_FILE).read_text()).get("sharded_backend")
    except (OSError, ValueError) as error:
        raise ConversionError(f"{directory}: incomplete checkpoint: unreadable {MEGATRON_METADATA_FILE} ({error})")
    if backend != "torch_dist":
        raise ConversionError(f"{directory}: a {backend} checkpoint; only torch_dist checkpoints are read")
    for name in (COMMON_FILE, DCP_METADATA_FILE):
        if not (directory / name).is_file():
            raise ConversionError(f"{directory}: incomplete checkpoint: {name} is missing")
    try:
        metadata = FileSystemReader(str(directory)).read_metadata()
    except Exception as error:  # unpickling a damaged file can raise anything
        raise ConversionError(f"{directory}: incomplete checkpoint: unreadable {DCP_METADATA_FILE} "
                              f"({first_line(error)})") from error
    needed_bytes: dict[str, int] = defaultdict(int)
    for info in (metadata.storage_data or {}).values():
        needed_bytes[info.relative_path] = max(needed_bytes[info.relative_path], info.offset + info.length)
    for name, size in sorted(needed_bytes.items()):
        file = directory / name
        if not file.is_file():
            raise ConversionError(f"{directory}: incomplete checkpoint: {name} is missing")
        if file.stat().st_size < size:
            raise ConversionError(
                f"{directory}: incomplete checkpoint: {name} is truncated ({file.stat().st_size} of {size} bytes)"
            )
    return metadata


def _root_cause(error: BaseException) -> BaseException:
    """DCP reports a failed read as ``CheckpointException({rank: WrappedException})``; the wrapped
    exception is the one worth quoting."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        wrapped = next(iter(failures.values()))
        return getattr(wrapped, "exc", wrapped)
    return error
