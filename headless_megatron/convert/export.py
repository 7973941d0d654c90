"""A checkpoint of ours -> a Hugging Face model directory that ``from_pretrained`` loads.

    export_hf("runs/gpt_headless_tiny", "hf/tiny")                 # latest iteration, default mode
    export_hf("runs/gpt_vanilla_70m", "hf/70m", mode="lm", iteration=1000, dtype=torch.bfloat16)

The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (one file,
every tensor contiguous and unshared), the tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``) and ``README.md``, a model card with the training config and the CWT
settings. It is written beside ``output`` and renamed into place at the end, so a failed export
leaves nothing behind (``convert.atomic``).

The tokenizer is, in this order: the one given, the config's ``tokenizer``, or the one saved with
the first dataset of ``data_path`` (``tokenizer_for_dataset``). Its size (or the config's
``vocab_size`` when set) is the exported vocabulary: Megatron's padding rows are dropped.

Families: decoders (``model: gpt``) export to ``LlamaForCausalLM`` (``convert.llama``), encoders
(``model: bert``) to ``MegatronBertForMaskedLM``, or ``MegatronBertModel`` when headless
(``convert.megatron_bert``). Modes (``--mode``): ``add_head`` (a headless decoder; the input
embeddings serve as the LM head, the paper's "headless model used as an LM without fine-tuning"),
``lm`` (the trained head of a vanilla or fine-tuned decoder), ``mlm`` (encoders). The default is
``add_head`` for a CWT decoder, ``lm`` for another decoder, ``mlm`` for an encoder.

Memory: the model's tensors are held twice at the peak (checkpoint and HF layouts), in the
checkpoint's dtype unless ``dtype`` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.convert.atomic import atomic_directory, check_output
from headless_megatron.convert.checkpoint_reader import MegatronCheckpoint, open_checkpoint
from headless_megatron.convert.llama import LlamaConversion
from headless_megatron.convert.mapping import Conversion, megatron_to_hf
from headless_megatron.convert.megatron_bert import MegatronBertConversion
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer import Tokenizer

MODES = ("add_head", "lm", "mlm")
# model of the saved config -> the conversion that exports it.
EXPORTABLE = {"gpt": LlamaConversion, "bert": MegatronBertConversion}
WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote, for the command's summary line."""

    output: Path
    architecture: str
    mode: str
    iteration: int
    parameters: int
    vocab_size: int


def export_hf(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    mode: str | None = None,
    iteration: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write the Hugging Face model directory ``output`` from a checkpoint (save directory or
    ``iter_NNNNNNN``); raises :class:`ConversionError` (and writes nothing) when it cannot."""
    check_output(output, overwrite)  # before the minutes a large checkpoint takes to read
    source = open_checkpoint(checkpoint, iteration)
    hf_tokenizer = checkpoint_tokenizer(source.config, tokenizer)
    vocab_size = source.config.vocab_size or hf_tokenizer.vocab_size
    if hf_tokenizer.vocab_size > vocab_size:
        raise ConversionError(
            f"the tokenizer has {hf_tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}"
        )
    conversion = conversion_for(source.config, vocab_size)
    mode = mode or conversion.default_mode()
    conversion.check_mode(mode)
    mappings = conversion.mappings(mode)
    _check_tensors(source, conversion)
    tensors = source.load(mapping.megatron for mapping in mappings)
    hf_tensors = megatron_to_hf(mappings, tensors, source.config.num_layers)
    del tensors
    dtype = dtype or next(iter(hf_tensors.values())).dtype
    hf_tensors = {name: tensor.to(dtype) for name, tensor in hf_tensors.items()}
    special_tokens = {"bos": hf_tokenizer.bos, "eos": hf_tokenizer.eod, "pad": hf_tokenizer.pad}
    hf_config = conversion.hf_config(mode, special_tokens, dtype)
    with atomic_directory(output, overwrite) as staging:
        _write_model(staging, hf_config, hf_tensors)
        hf_tokenizer.save(staging)
        result = ExportResult(
            Path(output), conversion.hf_architecture, mode, source.iteration,
            sum(tensor.numel() for tensor in hf_tensors.values()), vocab_size,
        )
        (staging / MODEL_CARD_FILE).write_text(model_card(source, conversion, result))
    return result


def conversion_for(config: TrainConfig, vocab_size: int) -> Conversion:
    """The conversion of a checkpoint's model family; raises for families without an HF export."""
    if config.model not in EXPORTABLE:
        raise ConversionError(f"model {config.model}: no Hugging Face export (exportable: {', '.join(EXPORTABLE)})")
    return EXPORTABLE[config.model](config, vocab_size)


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


def _write_model(directory: Path, hf_config, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    hf_config.save_pretrained(directory)
    GenerationConfig.from_model_config(hf_config).save_pretrained(directory)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})


def model_card(source: MegatronCheckpoint, conversion: Conversion, result: ExportResult) -> str:
    """The README of the exported model: what it is, how it was trained, how to load it."""
    config = source.config
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
        objective = "cross-entropy over the vocabulary (vanilla " + (
            "masked language modelling)" if config.model == "bert" else "language modelling)"
        )
    tags = ["headless-megatron", "megatron-core"] + (["contrastive-weight-tying"] if config.loss == "cwt" else [])
    front_matter = yaml.safe_dump(
        {"library_name": "transformers", "pipeline_tag": conversion.pipeline_tag(result.mode), "tags": tags},
        sort_keys=False,
    )
    kind = {"gpt": "decoder", "bert": "encoder"}[config.model]
    training_config = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return f"""---
{front_matter}---

# {result.output.name}

A {config.num_layers}-layer {kind} ({result.parameters:,} parameters) trained with headless-megatron,
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
    commit = api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message="Upload from headless-megatron")
    return str(commit)
