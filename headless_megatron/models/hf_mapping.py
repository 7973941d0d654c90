"""What every model family's Hugging Face conversion shares: tensor mappings, Megatron's fused
layouts, the :class:`Conversion` contract and its :class:`ConversionError`. Each family's own
mappings are its ``hf_<model_type>.py`` modules; :mod:`headless_megatron.convert` runs them (export,
import).

A :class:`TensorMapping` ties one Megatron-Core checkpoint tensor to the Hugging Face tensors it
becomes, with the two functions between them. Checkpoint keys of transformer layers
(``decoder.layers.*``, ``encoder.layers.*``) hold every layer stacked on a leading dimension (the
global layer index, whatever the pipeline layout), so a per-layer mapping works on one slice of
them and names its Hugging Face tensors with ``{layer}``.

Megatron's fused layouts, undone and redone here:

- **QKV.** ``linear_qkv`` is ``[ng * (nq/ng + 2) * d, ...]``, ordered per query group: the group's
  ``nq/ng`` query heads, then its key head, then its value head (``q1 q2 k1 v1 | q3 q4 k2 v2``, as
  ``SelfAttention.get_query_key_value_tensors`` reads it). Multi-head attention is ``ng == nq``.
  Tensor parallelism splits whole groups, so the checkpoint's full tensor is this layout whatever
  the TP size.
- **SwiGLU.** ``linear_fc1`` of a gated MLP is ``[gate; up]`` in the checkpoint (each TP rank holds
  its slice of both; Megatron's sharded state dict reassembles them).
- **Vocabulary.** Embedding and output rows are padded to ``make_vocab_size_divisible_by``; the
  padding rows are dropped on export and zero on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from headless_megatron.config import TrainConfig
from headless_megatron.errors import UserError


class ConversionError(UserError):
    """A checkpoint or model directory that cannot be converted, in one line saying why."""


LAYER = "{layer}"
STACKED_LAYER_PREFIXES = ("decoder.layers.", "encoder.layers.")


def _unchanged_to_hf(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (tensor,)


def _unchanged_to_megatron(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    (tensor,) = tensors
    return tensor


@dataclass(frozen=True)
class TensorMapping:
    """One Megatron checkpoint tensor and the Hugging Face tensors it maps to.

    ``hf`` names contain ``{layer}`` exactly when ``megatron`` is a stacked per-layer key; the
    functions then see one layer's slice. ``to_hf`` returns the tensors in ``hf`` order and
    ``to_megatron`` takes them in that order.
    """

    megatron: str
    hf: tuple[str, ...]
    to_hf: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = _unchanged_to_hf
    to_megatron: Callable[[tuple[torch.Tensor, ...]], torch.Tensor] = _unchanged_to_megatron
    padded_rows: int | None = None
    """For a table with a row per token: the Megatron row count, the HF rows followed by zero rows."""

    def __post_init__(self) -> None:
        stacked = self.megatron.startswith(STACKED_LAYER_PREFIXES)
        if any((LAYER in name) != stacked for name in self.hf):
            raise ValueError(f"{self.megatron}: per-layer keys and only they name HF tensors with {LAYER}")

    @property
    def per_layer(self) -> bool:
        return self.megatron.startswith(STACKED_LAYER_PREFIXES)

    def hf_names(self, layer: int | None) -> tuple[str, ...]:
        return tuple(name.replace(LAYER, str(layer)) for name in self.hf)


def megatron_to_hf(
    mappings: list[TensorMapping], tensors: dict[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of full Megatron ``tensors`` (each HF tensor its own contiguous
    copy: safetensors refuses tensors that share memory, and views of one fused tensor would)."""
    hf: dict[str, torch.Tensor] = {}
    for mapping in mappings:
        full = tensors[mapping.megatron]
        if mapping.per_layer and full.shape[0] != num_layers:
            raise ValueError(f"{mapping.megatron}: {full.shape[0]} stacked layers, expected {num_layers}")
        for layer in range(num_layers) if mapping.per_layer else (None,):
            parts = mapping.to_hf(full if layer is None else full[layer])
            for name, part in zip(mapping.hf_names(layer), parts, strict=True):
                hf[name] = part.clone(memory_format=torch.contiguous_format)
    return hf


def megatron_tensor(
    mapping: TensorMapping, read_hf: Callable[[str], torch.Tensor], layer: int | None = None
) -> torch.Tensor:
    """One Megatron tensor (one layer's slice for a per-layer key) from the HF tensors ``read_hf`` returns."""
    if mapping.per_layer != (layer is not None):
        raise ValueError(f"{mapping.megatron}: a layer index is needed exactly for per-layer keys")
    return mapping.to_megatron(tuple(read_hf(name) for name in mapping.hf_names(layer)))


class RegionReader(Protocol):
    """HF tensors read whole (``reader(name)``) or in part, without reading the rest."""

    def __call__(self, name: str) -> torch.Tensor: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def region(self, name: str, index: tuple[slice, ...]) -> torch.Tensor: ...


def megatron_region(
    mapping: TensorMapping, read_hf: RegionReader, layer: int | None, index: tuple[slice, ...]
) -> tuple[tuple[int, ...], Callable[[], torch.Tensor]]:
    """The full shape of one Megatron tensor (one layer's slice for a per-layer key) and a function
    that returns its region ``index``; nothing is read until that function is called. A plain copy
    or a table of vocabulary rows reads only that region of its HF tensor (what a TP shard needs); a
    fused tensor (QKV, SwiGLU) is built whole from the layer's HF tensors and then cut (its shape is
    that of the same fusion of tensors on the ``meta`` device)."""
    (name,) = mapping.hf_names(layer) if len(mapping.hf) == 1 else (None,)
    if name is not None and mapping.to_megatron is _unchanged_to_megatron:
        return read_hf.shape(name), lambda: read_hf.region(name, index)
    if name is not None and mapping.padded_rows is not None:
        hf_shape = read_hf.shape(name)
        return (mapping.padded_rows, *hf_shape[1:]), lambda: _padded_rows_region(read_hf, name, hf_shape[0], index)
    shapes_only = tuple(torch.empty(read_hf.shape(hf_name), device="meta") for hf_name in mapping.hf_names(layer))
    shape = tuple(mapping.to_megatron(shapes_only).shape)
    return shape, lambda: megatron_tensor(mapping, read_hf, layer)[index]


def _padded_rows_region(read_hf: RegionReader, name: str, real_rows: int, index: tuple[slice, ...]) -> torch.Tensor:
    rows, rest = index[0], index[1:]
    real = slice(min(rows.start, real_rows), min(rows.stop, real_rows))
    part = read_hf.region(name, (real, *rest))
    if real.stop - real.start == rows.stop - rows.start:
        return part
    return pad_vocab(part, rows.stop - rows.start)


# ---- Megatron's fused layouts ----


def split_qkv(
    fused: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query ``[nq*d, ...]``, key and value ``[ng*d, ...]`` of a fused ``linear_qkv`` weight or bias."""
    per_group = num_heads // num_groups
    trailing = fused.shape[1:]  # (hidden,) for a weight, () for a bias
    grouped = fused.reshape(num_groups, per_group + 2, head_dim, *trailing)
    query = grouped[:, :per_group].reshape(num_heads * head_dim, *trailing)
    key = grouped[:, per_group].reshape(num_groups * head_dim, *trailing)
    value = grouped[:, per_group + 1].reshape(num_groups * head_dim, *trailing)
    return query, key, value


def merge_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
) -> torch.Tensor:
    """The fused ``linear_qkv`` weight or bias of separate query, key and value (inverse of :func:`split_qkv`)."""
    per_group = num_heads // num_groups
    trailing = query.shape[1:]
    grouped = torch.cat(
        [
            query.reshape(num_groups, per_group, head_dim, *trailing),
            key.reshape(num_groups, 1, head_dim, *trailing),
            value.reshape(num_groups, 1, head_dim, *trailing),
        ],
        dim=1,
    )
    return grouped.reshape(num_groups * (per_group + 2) * head_dim, *trailing)


def split_gated_fc1(fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate and up projections of a SwiGLU ``linear_fc1`` (``[gate; up]``)."""
    gate, up = torch.chunk(fused, 2, dim=0)
    return gate, up


def merge_gated_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up], dim=0)


def unpad_vocab(table: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The first ``vocab_size`` rows: the real tokens, without Megatron's padding."""
    if table.shape[0] < vocab_size:
        raise ValueError(f"a table of {table.shape[0]} rows cannot hold a vocabulary of {vocab_size}")
    return table[:vocab_size]


def pad_vocab(table: torch.Tensor, padded_size: int) -> torch.Tensor:
    """``table`` with zero rows appended up to ``padded_size`` (rows no token id ever reaches)."""
    if table.shape[0] > padded_size:
        raise ValueError(f"a table of {table.shape[0]} rows does not fit a padded vocabulary of {padded_size}")
    padding = table.new_zeros(padded_size - table.shape[0], *table.shape[1:])
    return torch.cat([table, padding], dim=0)


# ---- Mappings of the fused layouts ----


def vocab_rows_mapping(megatron: str, hf: str, vocab_size: int, padded_vocab_size: int) -> TensorMapping:
    """A table or bias with a row per token: padding rows dropped on export, zero rows added on import."""
    return TensorMapping(
        megatron, (hf,),
        lambda table: (unpad_vocab(table, vocab_size),),
        lambda tensors: pad_vocab(tensors[0], padded_vocab_size),
        padded_rows=padded_vocab_size,
    )


def qkv_mapping(
    megatron: str, hf: tuple[str, str, str], num_heads: int, num_groups: int, head_dim: int
) -> TensorMapping:
    """A fused ``linear_qkv`` weight or bias and its separate query, key and value tensors."""
    return TensorMapping(
        megatron, hf,
        lambda fused: split_qkv(fused, num_heads, num_groups, head_dim),
        lambda tensors: merge_qkv(*tensors, num_heads, num_groups, head_dim),
    )


def gated_fc1_mapping(megatron: str, gate: str, up: str) -> TensorMapping:
    """A SwiGLU ``linear_fc1`` and its gate and up projections."""
    return TensorMapping(megatron, (gate, up), split_gated_fc1, lambda tensors: merge_gated_fc1(*tensors))


def gelu_mlp_settings_missing(config: TrainConfig) -> list[str]:
    """What keeps ``config`` from the block GPT-2 and BERT share (LayerNorm, a GELU MLP, learned
    absolute positions, biases on every linear layer, multi-head attention over the whole width),
    as ``key value``."""
    unsupported = []
    if config.normalization != "LayerNorm":
        unsupported.append(f"normalization {config.normalization}")
    if config.swiglu:
        unsupported.append("swiglu true")
    if config.position_embedding_type != "learned_absolute":
        unsupported.append(f"position_embedding_type {config.position_embedding_type}")
    if not config.add_bias_linear:
        unsupported.append("add_bias_linear false")
    if config.query_groups != config.num_attention_heads:
        unsupported.append(f"num_query_groups {config.query_groups}")
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        unsupported.append(f"kv_channels {config.kv_channels}")
    return unsupported


# ---- The contract of a model family ----


class Conversion(Protocol):
    """Megatron <-> Hugging Face for one model family, built from a checkpoint's config.

    Construction checks the architecture and raises :class:`~headless_megatron.convert.ConversionError`
    naming every setting the Hugging Face class cannot represent.
    """

    hf_architecture: str
    """The Hugging Face model class written on export (``LlamaForCausalLM``); it may depend on the
    checkpoint (a headless encoder has no MLM head to export)."""
    modes: tuple[str, ...]
    """Export modes this family offers (``add_head``, ``lm``, ``mlm``)."""
    import_mode: str
    """The mode whose mappings are every tensor of the model, its own head included (what an import
    writes)."""
    config: TrainConfig
    vocab_size: int
    """Real tokens: the rows of the exported embedding."""
    padded_vocab_size: int
    """Rows of the checkpoint's embedding (``TrainConfig.padded_vocab_size``)."""

    @classmethod
    def cannot_represent(cls, config: TrainConfig) -> list[str]:
        """The settings of ``config`` the HF class cannot hold, as ``key value``; empty when it can
        (construction raises naming them)."""

    def default_mode(self) -> str:
        """The mode used when none is asked for (e.g. ``add_head`` for a headless checkpoint)."""

    def check_mode(self, mode: str) -> None:
        """Raise ``ConversionError`` when ``mode`` makes no sense for this checkpoint."""

    def mappings(self, mode: str) -> list[TensorMapping]:
        """Every tensor the export of ``mode`` reads and the import writes."""

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        """The ``transformers`` config of the exported model (a ``PretrainedConfig``)."""

    def pipeline_tag(self, mode: str) -> str:
        """The Hub's task for the exported model (``text-generation``, ``fill-mask``...)."""

    def head_description(self, mode: str) -> str:
        """What the exported model's output head is, for the model card."""

    def usage(self, path: str) -> str:
        """Python code that loads the exported model from ``path`` and uses it, for the model card."""

    def unused_hf_tensor(self, name: str) -> bool:
        """Whether an import may find the HF tensor ``name`` and leave it out on purpose (a copy of a
        tied tensor, a buffer, a head our models lack); any other tensor without a mapping is refused."""

    # Import: the family is chosen by the HF config's model_type, before any TrainConfig exists.

    hf_model_type: str
    """The ``model_type`` of the HF configs this family imports (``llama``)."""

    @classmethod
    def train_config_values(cls, hf_config) -> dict:
        """The architecture fields (and ``vocab_size``) of a ``TrainConfig`` for ``hf_config``."""


def hf_tensor_names(conversion: Conversion, mode: str) -> set[str]:
    """Every HF tensor name the mappings of ``mode`` read or write, each layer's spelled out."""
    return {
        name
        for mapping in conversion.mappings(mode)
        for layer in (range(conversion.config.num_layers) if mapping.per_layer else (None,))
        for name in mapping.hf_names(layer)
    }
