"""A checkpoint of ours -> a Hugging Face model directory that ``from_pretrained`` loads.

    export_hf("runs/gpt_headless_tiny", "hf/tiny")                 # latest iteration, default mode
    export_hf("runs/gpt_vanilla_70m", "hf/70m", mode="lm", iteration=1000, dtype=torch.bfloat16)
    export_hf("runs/gpt_headless_1b", "hf/1b", max_shard_size="1GB")   # model-0000k-of-0000n.safetensors

The directory holds ``config.json``, ``generation_config.json``, the weights (``model.safetensors``,
or, above ``max_shard_size``, ``model-00001-of-0000n.safetensors``... and
``model.safetensors.index.json``, split and indexed exactly as ``save_pretrained`` splits them, by
``huggingface_hub``'s own splitter), the tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``) and ``README.md``, a model card with the training config and the CWT
settings. It is written beside ``output`` and renamed into place at the end, so a failed export
leaves nothing behind (``convert.atomic``).

The tokenizer is, in this order: the one given, the config's ``tokenizer``, or the one saved with
the first dataset of ``data_path`` (``tokenizer_for_dataset``). Its size (or the config's
``vocab_size`` when set) is the exported vocabulary: Megatron's padding rows are dropped.

Families (``models/<family>/hf_<model_type>.py``): decoders (``model: gpt``) export to
``LlamaForCausalLM``, ``Qwen2ForCausalLM`` (query/key/value biases), ``GPT2LMHeadModel`` (LayerNorm,
learned positions, biases) or, with ``model_type="mistral"``, ``MistralForCausalLM``; encoders
(``model: bert``) to ``MegatronBertForMaskedLM`` (pre-LN) or ``BertForMaskedLM`` (post-LN), or the
encoder alone (``MegatronBertModel``, ``BertModel``) when headless. Without ``model_type`` the
first class that represents the checkpoint is written. Modes (``--mode``): ``add_head`` (a headless decoder; the input
embeddings serve as the LM head, the paper's "headless model used as an LM without fine-tuning"),
``lm`` (the trained head of a vanilla or fine-tuned decoder), ``mlm`` (encoders). The default is
``add_head`` for a CWT decoder, ``lm`` for another decoder, ``mlm`` for an encoder.

Memory: streamed. The HF tensors' shapes are worked out first from meta tensors, which fixes the
split into files; then one checkpoint tensor at a time (one layer's slice of a stacked key) is read
(``checkpoint_reader``), converted to its HF tensors in ``dtype`` (default: the checkpoint's) and
handed to the :class:`ShardWriter`, which writes a file as soon as all its tensors are there. The
peak is therefore about one weight file plus twice the largest tensor (a tensor and its converted
copy), whatever the model's size and whatever layout saved it.

Safety: ``output`` may not be, contain or lie inside the checkpoint or its run directory,
``overwrite`` replaces only an earlier export (:func:`earlier_export`), and two conversions never
write the same ``output`` at once (its lock, ``runtime.directory_lock.beside``, is held throughout).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from huggingface_hub.serialization import StateDictSplit, split_state_dict_into_shards_factory
from huggingface_hub.serialization._base import parse_size_to_int
from safetensors import SafetensorError
from safetensors.torch import save_file

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.convert.atomic import atomic_directory, check_apart, check_output
from headless_megatron.convert.checkpoint_reader import MegatronCheckpoint, open_checkpoint
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer import Tokenizer
from headless_megatron.errors import first_few
from headless_megatron.models.hf_mapping import Conversion, TensorMapping
from headless_megatron.models.registry import conversion_for, family_of
from headless_megatron.runtime.directory_lock import beside

MODES = ("add_head", "lm", "mlm")
WEIGHTS_PATTERN = "model{suffix}.safetensors"  # model.safetensors, or model-00001-of-00003.safetensors...
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# transformers' own default (PreTrainedModel.save_pretrained's max_shard_size; 5GB before v5), so an
# export shards like save_pretrained; a test checks it against the installed version.
DEFAULT_MAX_SHARD_SIZE = "50GB"
MODEL_CARD_FILE = "README.md"
# In every model card's front matter (tags); recognises a directory --overwrite may replace.
MODEL_CARD_MARKER = "- headless-megatron"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote, for the command's summary line."""

    output: Path
    architecture: str
    mode: str
    iteration: int
    parameters: int
    vocab_size: int
    weight_files: int = 1


def export_hf(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    mode: str | None = None,
    model_type: str | None = None,
    iteration: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write the Hugging Face model directory ``output`` from a checkpoint (save directory or
    ``iter_NNNNNNN``) as the HF ``model_type`` asked for (default: the first of the family's
    conversions that represents it); raises :class:`ConversionError` (and writes nothing) when it cannot, and
    ``DirectoryInUse`` while another conversion writes ``output``. ``progress`` receives a line per
    weight file written."""
    max_shard_bytes = shard_size_bytes(max_shard_size)  # a mistyped flag costs no checkpoint opening
    source = open_checkpoint(checkpoint, iteration)
    check_apart(output, _run_directories(checkpoint, source), "checkpoint")
    with beside(output, f"output {output}"):
        check_output(output, overwrite, earlier_export)  # before the minutes a large checkpoint takes to read
        hf_tokenizer = checkpoint_tokenizer(source.config, tokenizer)
        vocab_size = source.config.vocab_size or hf_tokenizer.vocab_size
        if hf_tokenizer.vocab_size > vocab_size:
            raise ConversionError(
                f"the tokenizer has {hf_tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}"
            )
        conversion = conversion_for(source.config, vocab_size, model_type)
        mode = mode or conversion.default_mode()
        conversion.check_mode(mode)
        mappings = conversion.mappings(mode)
        _check_tensors(source, conversion)
        dtype = dtype or source.model_tensors[mappings[0].megatron][1]
        units = _read_units(mappings, source.config.num_layers)
        shapes = _hf_shapes(source, units)
        split = split_state_dict_into_shards_factory(
            {name: math.prod(shape) * dtype.itemsize for name, shape in shapes.items()},
            get_storage_size=int, filename_pattern=WEIGHTS_PATTERN, max_shard_size=max_shard_bytes,
        )
        special_tokens = {"bos": hf_tokenizer.bos, "eos": hf_tokenizer.eod, "pad": hf_tokenizer.pad}
        hf_config = conversion.hf_config(mode, special_tokens, dtype)
        parameters = sum(math.prod(shape) for shape in shapes.values())
        with atomic_directory(output, overwrite, earlier_export, writer_errors=(SafetensorError,)) as staging:
            _write_config(staging, hf_config)
            writer = ShardWriter(staging, split, parameters, progress)
            for name, tensor in _hf_tensors(source, units, dtype):
                writer.add(name, tensor)
            writer.finish()
            hf_tokenizer.save(staging)
            result = ExportResult(Path(output), conversion.hf_architecture, mode, source.iteration, parameters,
                                  vocab_size, len(split.filename_to_tensors))
            (staging / MODEL_CARD_FILE).write_text(model_card(source, conversion, result))
    return result


def shard_size_bytes(size: int | str) -> int:
    """``--max-shard-size`` in bytes, parsed as ``transformers``' ``save_pretrained`` parses it
    (``"5GB"``: 5 * 10**9, ``"500MB"``, ``"1.5GB"``; an int, or a string of digits, is bytes)."""
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    try:
        value = size if isinstance(size, int) else parse_size_to_int(size)
    except (ValueError, OverflowError):  # OverflowError: "infGB" parses to an infinite number of bytes
        value = None
    if value is None or value <= 0:
        raise ConversionError(f"--max-shard-size {size}: expected a size above 0 like 5GB or 500MB, or a number of "
                              "bytes")
    return value


def earlier_export(directory: Path) -> str | None:
    """None when ``directory`` is a model directory this command wrote (plain files, a config.json
    and our model card), else what it lacks; only such a directory may be replaced by --overwrite."""
    entries = list(directory.iterdir())
    subdirectories = sorted(entry.name for entry in entries if entry.is_dir())
    if subdirectories:
        return f"not an earlier export: it holds directories ({first_few(subdirectories, shown=3)})"
    if not (directory / "config.json").is_file():
        return "not an earlier export: no config.json"
    card = directory / MODEL_CARD_FILE
    if not card.is_file() or MODEL_CARD_MARKER not in card.read_text(errors="replace"):
        return f"not an earlier export: no {MODEL_CARD_FILE} written by headless-megatron export-hf"
    return None


def _run_directories(checkpoint: str | os.PathLike, source: MegatronCheckpoint) -> list[Path]:
    """What an export must not write into or over: the directory given, the iteration read and,
    for an iteration directory, the training run around it (its other checkpoints, its metrics)."""
    directories = [Path(checkpoint), source.path]
    if source.path.name.startswith("iter_"):
        directories.append(source.path.parent)
    return directories


# ---- Streaming: one tensor read, converted and handed to the shard writer at a time ----


@dataclass(frozen=True)
class _ReadUnit:
    """One checkpoint read: a key (one layer's slice of it for a stacked key) and its mapping."""

    mapping: TensorMapping
    layer: int | None

    @property
    def hf_names(self) -> tuple[str, ...]:
        return self.mapping.hf_names(self.layer)


def _read_units(mappings: list[TensorMapping], num_layers: int) -> list[_ReadUnit]:
    """Every read of the export in the order of the weight files: the embeddings, each layer in
    turn (its tensors in mapping order), then the rest (final norm, heads), as HF models list them."""
    embeddings = [_ReadUnit(m, None) for m in mappings if not m.per_layer and m.megatron.startswith("embedding.")]
    layers = [_ReadUnit(m, layer) for layer in range(num_layers) for m in mappings if m.per_layer]
    rest = [_ReadUnit(m, None) for m in mappings if not m.per_layer and not m.megatron.startswith("embedding.")]
    return embeddings + layers + rest


def _hf_shapes(source: MegatronCheckpoint, units: list[_ReadUnit]) -> dict[str, tuple[int, ...]]:
    """The shape of every HF tensor, in write order, found by converting meta tensors (no data)."""
    shapes = {}
    for unit in units:
        shape, dtype = source.model_tensors[unit.mapping.megatron]
        if unit.layer is not None:
            if shape[0] != source.config.num_layers:
                raise ConversionError(f"{source.path}: {unit.mapping.megatron} stacks {shape[0]} layers, the config "
                                      f"has {source.config.num_layers}")
            shape = shape[1:]
        parts = unit.mapping.to_hf(torch.empty(shape, dtype=dtype, device="meta"))
        shapes.update(zip(unit.hf_names, (tuple(part.shape) for part in parts), strict=True))
    return shapes


def _hf_tensors(
    source: MegatronCheckpoint, units: list[_ReadUnit], dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, tensor)`` in write order, each tensor its own contiguous memory in ``dtype``
    (safetensors refuses tensors that share memory, and views of one fused tensor would); at most
    one checkpoint tensor and its converted parts are alive here at a time."""
    for unit in units:
        key = unit.mapping.megatron
        tensor = source.load([key], unit.layer)[key]
        parts = unit.mapping.to_hf(tensor)
        for name, part in zip(unit.hf_names, parts, strict=True):
            owns_its_memory = part.is_contiguous() and part.untyped_storage().nbytes() == part.nbytes
            if part.dtype != dtype or not owns_its_memory or len(parts) > 1:
                part = part.to(dtype, memory_format=torch.contiguous_format, copy=True)
            yield name, part
        del tensor, parts, part  # before the next read


class ShardWriter:
    """Writes each weight file as soon as all its tensors have arrived, then lets them go, and the
    index (``model.safetensors.index.json``, as ``save_pretrained`` writes it) when there are several."""

    def __init__(self, directory: Path, split: StateDictSplit, parameters: int,
                 progress: Callable[[str], None] | None = None):
        self.directory, self.split, self.parameters, self.progress = directory, split, parameters, progress
        self.pending: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        self.written: list[str] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        file = self.split.tensor_to_filename[name]
        self.pending[file][name] = tensor
        if len(self.pending[file]) == len(self.split.filename_to_tensors[file]):
            tensors = self.pending.pop(file)
            save_file(tensors, self.directory / file, metadata={"format": "pt"})
            self.written.append(file)
            if self.progress:
                size = sum(tensor.nbytes for tensor in tensors.values())
                self.progress(f"wrote {file} ({len(self.written)}/{len(self.split.filename_to_tensors)}, "
                              f"{len(tensors)} tensors, {size / 1e9:.2f} GB)")

    def finish(self) -> None:
        if self.pending or len(self.written) != len(self.split.filename_to_tensors):
            raise RuntimeError(f"weight files left incomplete: {sorted(self.pending)}")
        if self.split.is_sharded:
            index = {"metadata": {"total_parameters": self.parameters, **self.split.metadata},
                     "weight_map": self.split.tensor_to_filename}
            (self.directory / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def checkpoint_tokenizer(config: TrainConfig, override: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer to ship with the model: ``override``, else the config's, else its dataset's."""
    from headless_megatron.data.tokenizer import load_tokenizer, tokenizer_for_dataset

    try:
        if override is not None:
            return load_tokenizer(override)
        if config.tokenizer:
            return load_tokenizer(config.tokenizer)
        if config.data_path and not config.mock_data:
            return tokenizer_for_dataset(config.data_blend()[0][0])
    except DataError as error:
        raise ConversionError(f"no tokenizer: {error} (give one with --tokenizer)") from error
    raise ConversionError(
        "no tokenizer: the checkpoint's config names neither a tokenizer nor a dataset (give one with --tokenizer)"
    )


def _check_tensors(source: MegatronCheckpoint, conversion: Conversion) -> None:
    """Refuse a checkpoint with tensors no mode of the conversion knows (weights would be lost
    silently) or with an embedding table that the vocabulary does not explain (wrong tokenizer)."""
    known = {mapping.megatron for mode in conversion.modes for mapping in conversion.mappings(mode)}
    unknown = sorted(set(source.model_tensors) - known)
    if unknown:
        raise ConversionError(
            f"{source.path}: tensors its config does not describe, which {conversion.hf_architecture} "
            f"has no place for: {', '.join(unknown)}"
        )
    embedding = source.model_tensors.get("embedding.word_embeddings.weight")
    if embedding is not None and embedding[0][0] != conversion.padded_vocab_size:
        raise ConversionError(
            f"{source.path}: the embedding has {embedding[0][0]} rows, but a vocabulary of "
            f"{conversion.vocab_size} pads to {conversion.padded_vocab_size}: is the tokenizer the one "
            "the model was trained with?"
        )


def _write_config(directory: Path, hf_config) -> None:
    from transformers import GenerationConfig

    hf_config.save_pretrained(directory)
    GenerationConfig.from_model_config(hf_config).save_pretrained(directory)


def model_card(source: MegatronCheckpoint, conversion: Conversion, result: ExportResult) -> str:
    """The README of the exported model: what it is, how it was trained, how to load it."""
    config = source.config
    family = family_of(config)
    samples = source.common.get("consumed_train_samples")
    trained = (
        f"{result.iteration} iterations, {samples:,} sequences of {config.seq_length} tokens"
        if samples is not None else f"{result.iteration} iterations"
    )
    if config.loss == "cwt":
        objective = (
            "headless: Contrastive Weight Tying (Godey et al., ICLR 2024), temperature "
            f"{config.cwt_temperature}, duplicate targets `{config.cwt_duplicates}`, negatives "
            f"`{config.cwt_negatives}`; no output layer is trained"
        )
    else:
        objective = f"cross-entropy over the vocabulary (vanilla {family.objective})"
    tags = ["headless-megatron", "megatron-core"] + (["contrastive-weight-tying"] if config.loss == "cwt" else [])
    front_matter = yaml.safe_dump(
        {"library_name": "transformers", "pipeline_tag": conversion.pipeline_tag(result.mode), "tags": tags},
        sort_keys=False,
    )
    training_config = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return f"""---
{front_matter}---

# {result.output.name}

A {config.num_layers}-layer {family.kind} ({result.parameters:,} parameters) trained with headless-megatron,
a Megatron-Core trainer for headless language models, and exported to `{result.architecture}`
(mode `{result.mode}`).

- Training objective: {objective}.
- Output head: {conversion.head_description(result.mode)}.
- Checkpoint: `{source.path}`, {trained}.
- Vocabulary: {result.vocab_size} tokens (the tokenizer in this directory).

## Usage

```python
{conversion.usage(f"path/to/{result.output.name}")}
```

## Training configuration

```yaml
{training_config}```

## Citation

```bibtex
@inproceedings{{godey2024headless,
  title = {{Headless Language Models: Learning without Predicting with Contrastive Weight Tying}},
  author = {{Godey, Nathan and de la Clergerie, Éric and Sagot, Benoît}},
  booktitle = {{The Twelfth International Conference on Learning Representations}},
  year = {{2024}}
}}
```
"""


def push_to_hub(directory: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload an exported directory to the Hugging Face Hub as ``repo_id`` (created when missing);
    returns the commit URL. Credentials are huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(directory), repo_id=repo_id, commit_message="Upload from headless-megatron"
    )
    return str(commit)
