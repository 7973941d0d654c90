"""A Hugging Face model directory -> a ``torch_dist`` checkpoint of ours at a chosen TP/PP layout.

Importable ``model_type``s (one module each, ``models/<family>/hf_<model_type>.py``): decoders
``llama``, ``qwen2``, ``gpt2`` and ``mistral``; encoders ``megatron-bert`` and ``bert`` (an encoder
without MLM head, ``MegatronBertModel`` or ``BertModel``, becomes a headless one). What a class
holds that Megatron-Core's GPT or BERT cannot compute exactly (a sliding attention window shorter
than the positions, rope scaling, another activation) is refused naming the config key and value.

    import_hf("hf/llama-tiny", "runs/from_hf", tensor_model_parallel_size=2, pipeline_model_parallel_size=2)

then start training from it with ``--pretrained runs/from_hf`` (or ``--load runs/from_hf
--finetune``): the checkpoint holds the model weights, the RNG states and, in ``common.pt``, a config
built from the HF config, but no optimizer state, so a plain ``--load`` resume does not apply.

How: TP x PP local CPU ranks (``run_local_ranks``, gloo, GPUs hidden) each build their pipeline
stage of the model the training loop would build (``models.registry.build_model_stage``) on the
``meta`` device, for its geometry only, and save it with the training loop's own
``save_checkpoint`` through a streamed torch_dist strategy (``convert.streamed_save``): each
parameter shard is read from the HF tensors through the family's mappings when the writer reaches
it (memory-mapped: only its region of a plain or vocabulary tensor, its layer's tensors for a fused
one), written and dropped. Neither the HF model nor the Megatron stage is ever in memory: a rank
needs about one layer's shards and its embedding shard beyond its start-up. The result is what a
training run at that layout would have saved, iteration 0, and reshards like any of our checkpoints.

The checkpoint's directory also holds ``tokenizer/`` (the HF model's tokenizer, with the
end-of-document, padding and mask tokens ``load_tokenizer`` adds when missing; added tokens get
zero embedding rows), which the saved config names, so that ``export-hf`` finds it. A tokenizer
with more ids of its own than the model has embedding rows is refused: it is not the model's.

The saved config's training fields (batch sizes, iterations, learning rate) are placeholders: a
fine-tuning run brings its own. Weights are stored in float32, which holds bf16/fp16 sources
exactly. Everything is written beside ``output`` and renamed into place at the end, under the
output's lock (``runtime.directory_lock.beside``): a second conversion to the same ``output`` stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headless_megatron.config import ConfigError, TrainConfig, config_from_dict
from headless_megatron.convert import ConversionError
from headless_megatron.convert.atomic import atomic_directory, check_apart, check_output
from headless_megatron.convert.hf_weights import SafetensorsWeights
from headless_megatron.convert.streamed_save import ShardId, TensorSource
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer import Tokenizer
from headless_megatron.errors import first_few, first_line
from headless_megatron.models.hf_mapping import (
    Conversion,
    RegionReader,
    TensorMapping,
    hf_tensor_names,
    megatron_region,
)
from headless_megatron.models.registry import hf_conversions, validate_config
from headless_megatron.runtime.directory_lock import beside
from headless_megatron.training.run_directory import CheckpointError, iteration_dir, read_common

TOKENIZER_DIRECTORY = "tokenizer"
# Everything an import writes at the top of its output (what --overwrite may replace).
IMPORT_ENTRIES = {"iter_0000000", "latest_checkpointed_iteration.txt", TOKENIZER_DIRECTORY}
# Fields a TrainConfig requires that describe training, not the model: a fine-tuning run sets its own.
TRAINING_PLACEHOLDERS = {"micro_batch_size": 1, "global_batch_size": 1, "train_iters": 1, "lr": 1e-4}
# A large model's import on CPU takes a while; a rank that hangs is killed after this.
RANKS_TIMEOUT_S = 6 * 3600
# The ranks run on CPU (see _cuda_hidden), with Megatron's own layers; the checkpoint keys are the same
# as Transformer Engine's.
RANKS_BACKEND = "local"


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote, for the command's summary line."""

    output: Path
    checkpoint: Path
    architecture: str
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    vocab_size: int


def import_hf(
    model: str | os.PathLike,
    output: str | os.PathLike,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Write a checkpoint of the HF model ``model`` (a directory, or a Hub name to download) under
    ``output`` at the given layout; raises :class:`ConversionError` (and writes nothing) when it cannot,
    and ``DirectoryInUse`` while another conversion writes ``output``."""
    directory = _model_directory(str(model))
    check_apart(output, [directory], "model directory")
    with beside(output, f"output {output}"):
        output = check_output(output, overwrite, earlier_import)
        hf_config = _hf_config(directory)
        importable = hf_conversions()
        family = importable.get(hf_config.model_type)
        if family is None:
            raise ConversionError(f"{directory}: model_type {hf_config.model_type} cannot be imported; supported: "
                                  f"{', '.join(importable)}")
        hf_tokenizer = _tokenizer(directory, tokenizer)
        values = family.train_config_values(hf_config)
        vocab_size = _vocab_size(values.pop("vocab_size"), hf_tokenizer,
                                 f"--tokenizer {tokenizer}" if tokenizer is not None else str(directory))
        config = imported_train_config(
            {**values, **TRAINING_PLACEHOLDERS, "vocab_size": vocab_size,
             "tokenizer": str(output.resolve() / TOKENIZER_DIRECTORY),
             "tensor_model_parallel_size": tensor_model_parallel_size,
             "pipeline_model_parallel_size": pipeline_model_parallel_size},
        )
        conversion = family(config, vocab_size)
        weights = SafetensorsWeights(directory, hf_tensor_names(conversion, conversion.import_mode))
        _check_weights(weights, conversion)
        with atomic_directory(output, overwrite, earlier_import) as staging:
            hf_tokenizer.save(staging / TOKENIZER_DIRECTORY)
            with _cuda_hidden():
                _run_ranks(hf_config.model_type, config, vocab_size, directory, staging, provenance=str(model))
    return ImportResult(output, iteration_dir(output, 0), conversion.hf_architecture,
                        tensor_model_parallel_size, pipeline_model_parallel_size, vocab_size)


def earlier_import(directory: Path) -> str | None:
    """None when ``directory`` is a checkpoint this command wrote (iteration 0 of an import, its
    tokenizer, nothing else), else what it is not; only such a directory may be replaced by --overwrite."""
    extra = sorted(entry.name for entry in directory.iterdir() if entry.name not in IMPORT_ENTRIES)
    if extra:
        return f"not an earlier import: it also holds {first_few(extra, shown=3)}"
    try:
        common = read_common(iteration_dir(directory, 0))
    except CheckpointError:  # missing, damaged or foreign: not ours to delete
        common = {}
    if "imported_from" not in common:
        return "not an earlier import: its iter_0000000 was not written by import-hf"
    return None


def _model_directory(model: str) -> Path:
    """A local model directory as is; anything else is a Hub name, downloaded (weights, configs and
    tokenizer files only) into the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from headless_megatron.data.sources import looks_like_a_local_path

    if looks_like_a_local_path(model):
        raise ConversionError(f"{model}: no such model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"]))
    except Exception as error:  # network, authentication and missing-repo errors alike
        raise ConversionError(f"{model}: not a local directory, and downloading it from the Hub failed: "
                              f"{first_line(error)}") from error


def _hf_config(directory: Path):
    from transformers import AutoConfig

    if not (directory / "config.json").is_file():
        raise ConversionError(f"{directory}: no config.json; not a Hugging Face model directory")
    try:
        return AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(f"{directory}: transformers cannot read its config.json: {first_line(error)}") from error


def _tokenizer(directory: Path, override: str | os.PathLike | None):
    from headless_megatron.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(override if override is not None else directory)
    except DataError as error:
        raise ConversionError(f"no tokenizer: {error} (give one with --tokenizer)") from error


def _vocab_size(embedding_rows: int, hf_tokenizer: Tokenizer, tokenizer_source: str) -> int:
    """The checkpoint's vocabulary: the model's embedding rows, and beyond them only the special
    tokens that ``load_tokenizer`` added (zero rows: the model never saw them). A tokenizer whose own
    ids go past the rows is not the model's: its extra tokens would get zero embeddings silently."""
    own_ids = hf_tokenizer.vocab_size - len(hf_tokenizer.added_special_tokens)
    if own_ids > embedding_rows:
        raise ConversionError(
            f"{tokenizer_source}: the tokenizer has {own_ids} ids but the model's vocab_size is {embedding_rows}; "
            f"give the tokenizer the model was trained with (at most {embedding_rows} ids) with --tokenizer"
        )
    return max(embedding_rows, hf_tokenizer.vocab_size)


def imported_train_config(values: dict[str, Any]) -> TrainConfig:
    """The config to save, checked as a training run at its layout would check it, with values that
    equal their field's default left at the default (None), as a recipe spells them: fine-tuning
    compares the saved architecture fields with the run's."""
    try:
        config = TrainConfig(**values)
        for field, resolved in (("ffn_hidden_size", "ffn_size"), ("num_query_groups", "query_groups"),
                                ("kv_channels", "head_dim")):
            default = dataclasses.replace(config, **{field: None})
            if getattr(default, resolved) == getattr(config, resolved):
                config = default
        # The checks also want data to train on; the layout and architecture checks are the point.
        validate_config(dataclasses.replace(config, mock_data=True), config.layout.model_parallel_size)
    except ConfigError as error:
        raise ConversionError(f"cannot import at this layout: {error}") from error
    return config


def _check_weights(weights: SafetensorsWeights, conversion: Conversion) -> None:
    """Refuse a weight file that lacks a tensor the model needs, or holds one it would drop."""
    needed = hf_tensor_names(conversion, conversion.import_mode)
    missing = sorted(needed - weights.names())
    if missing:
        raise ConversionError(f"{weights.directory}: the weights lack {first_few(missing)}")
    unused = sorted(name for name in weights.names() - needed if not conversion.unused_hf_tensor(name))
    if unused:
        raise ConversionError(f"{weights.directory}: tensors the conversion has no place for: {first_few(unused)}")


@contextlib.contextmanager
def _cuda_hidden() -> Iterator[None]:
    """The import ranks run on CPU with gloo whatever the machine: a TP x PP layout may need more
    GPUs than the node has, and copying weights gains nothing from them. Ranks started with the
    spawn method (on GPU machines) inherit this process's environment at start."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if previous is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def _run_ranks(
    hf_model_type: str, config: TrainConfig, vocab_size: int, directory: Path, root: Path, provenance: str
) -> None:
    from headless_megatron.runtime.launch import RankFailure, run_local_ranks

    try:
        run_local_ranks(
            _write_stage, config.layout.model_parallel_size,
            args=(hf_model_type, config.to_dict(), vocab_size, str(directory), str(root), provenance),
            timeout_s=RANKS_TIMEOUT_S, env={"CUDA_VISIBLE_DEVICES": ""},
        )
    except RankFailure as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise ConversionError(f"writing the checkpoint failed: {lines[-1].strip()}") from error


def _write_stage(
    hf_model_type: str, config_values: dict[str, Any], vocab_size: int, directory: str, root: str, provenance: str
) -> None:
    """One rank: describe this pipeline stage, save it (all ranks together) with every shard read
    from the HF weights as it is written."""
    from headless_megatron.config.megatron import transformer_config
    from headless_megatron.convert.streamed_save import StreamedSaveStrategy
    from headless_megatron.models.registry import build_model_stage
    from headless_megatron.runtime.distributed import init_distributed
    from headless_megatron.training.checkpoint import save_checkpoint

    config = config_from_dict(config_values)
    init_distributed(config.layout, seed=config.seed)
    megatron_config = transformer_config(config, RANKS_BACKEND, on_gpu=False)
    # Only the stage's geometry is needed: every weight is replaced by the HF one, read when written.
    with torch.device("meta"):
        stage = build_model_stage(config, megatron_config, vocab_size, RANKS_BACKEND)
    conversion = hf_conversions()[hf_model_type](config, vocab_size)
    weights = SafetensorsWeights(directory, hf_tensor_names(conversion, conversion.import_mode))
    sources = hf_sources(stage, conversion.mappings(conversion.import_mode), weights)
    common = {"config": config.to_dict(), "consumed_train_samples": 0, "imported_from": provenance}
    save_checkpoint(root, 0, [stage], None, None, common, sharded_strategy=StreamedSaveStrategy(sources))


def hf_sources(
    stage: torch.nn.Module, mappings: list[TensorMapping], read_hf: RegionReader
) -> dict[ShardId, TensorSource]:
    """For every parameter shard of ``stage`` (one pipeline stage, this rank's TP shard, possibly on
    the ``meta`` device), the function that reads its part of the Megatron tensor that ``mappings``
    build from the HF tensors ``read_hf`` returns, by checkpoint key and global offset.

    The shard geometry is the stage's ``sharded_state_dict()``, the description ``dist_checkpointing``
    saves and reshards with, so TP splits, SwiGLU halves, stacked layers and the tied embedding copy
    of the last pipeline stage are all covered the way a checkpoint save would cover them. Each shard
    reads only its own region of a plain or vocabulary-row HF tensor (``megatron_region``), so a
    TP rank reads half the embedding, not all of it. Shapes are checked here, before anything is read.
    """
    from headless_megatron.models.init import sharded_tensors
    from headless_megatron.training.checkpoint import SHARDING_METADATA

    by_key = {mapping.megatron: mapping for mapping in mappings}
    sources: dict[ShardId, TensorSource] = {}
    covered = set()
    for shard in sharded_tensors(stage.sharded_state_dict(metadata=SHARDING_METADATA)):
        if shard.key not in by_key:
            raise ConversionError(f"{shard.key}: no Hugging Face tensor maps to this parameter")
        prepend = shard.prepend_axis_num
        layer = shard.global_offset[0] if prepend else None
        index = tuple(
            slice(offset, offset + size) for offset, size in zip(shard.global_offset[prepend:], shard.local_shape)
        )
        shape, read_region = megatron_region(by_key[shard.key], read_hf, layer, index)
        expected = tuple(shard.global_shape[prepend:])
        if shape != expected:
            raise ConversionError(f"{shard.key}: the Hugging Face tensors give shape {shape}, "
                                  f"the model expects {expected}")
        sources[(shard.key, tuple(shard.global_offset))] = read_region
        covered.add(_storage_of(shard.data))
    missed = [name for name, param in stage.named_parameters() if _storage_of(param) not in covered]
    if missed:
        raise ConversionError(f"parameters without a checkpoint shard, not imported: {', '.join(missed)}")
    return sources


def _storage_of(tensor: torch.Tensor) -> int:
    """The identity of ``tensor``'s storage, shared by its views; on the ``meta`` device too, where
    every data pointer is 0."""
    return tensor.untyped_storage()._cdata
