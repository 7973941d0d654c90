"""Layer specs: Transformer Engine on GPUs when it is importable, Megatron's local modules otherwise.

The local spec is Megatron-Core's own (``get_gpt_layer_local_spec``, ``bert_layer_local_spec``) with
two substitutions:

* Megatron's ``WrappedTorchNorm`` refuses sequence parallelism, because it cannot tell Megatron that
  its replicated parameters see only a sequence shard. :class:`TorchNorm` builds the same
  ``torch.nn.LayerNorm``/``RMSNorm`` and tags its parameters ``sequence_parallel``, as the apex and
  TE norms do, so that ``finalize_model_grads`` all-reduces their gradients over the TP group.
* The core attention is :class:`~headless_megatron.models.attention.SDPAttention` (torch's fused
  ``scaled_dot_product_attention``) instead of the unfused ``DotProductAttention`` wherever it
  computes the same function (:func:`~headless_megatron.models.attention.sdpa_supports`).
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from headless_megatron.models.attention import SDPAttention, sdpa_supports


class TorchNorm:
    """``torch.nn.LayerNorm``/``RMSNorm`` with Megatron's norm signature and sequence-parallel support."""

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str | None = None,
    ):
        kind = normalization or config.normalization
        if config.layernorm_zero_centered_gamma or zero_centered_gamma:
            raise ValueError("layernorm_zero_centered_gamma needs Transformer Engine or apex norms")
        if kind == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        elif kind == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        else:
            raise ValueError(f"normalization must be LayerNorm or RMSNorm, got {kind!r}")
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def _sp_capable(norm):
    return TorchNorm if norm is WrappedTorchNorm else norm


def local_layer_spec(layer_spec: ModuleSpec, config: TransformerConfig) -> ModuleSpec:
    """Megatron's local layer spec with its torch norms replaced by :class:`TorchNorm` and, where
    ``config`` allows, its core attention by ``SDPAttention``."""
    self_attention = layer_spec.submodules.self_attention
    if sdpa_supports(config):
        self_attention = dataclasses.replace(
            self_attention,
            submodules=dataclasses.replace(self_attention.submodules, core_attention=SDPAttention),
        )
    submodules = dataclasses.replace(
        layer_spec.submodules,
        input_layernorm=_sp_capable(layer_spec.submodules.input_layernorm),
        self_attention=self_attention,
        pre_mlp_layernorm=_sp_capable(layer_spec.submodules.pre_mlp_layernorm),
    )
    return dataclasses.replace(layer_spec, submodules=submodules)


def gpt_block_spec(
    config: TransformerConfig,
    backend: str,
    qk_layernorm: bool = False,
    vp_stage: int | None = None,
) -> ModuleSpec | TransformerBlockSubmodules:
    """The decoder spec for this pipeline stage, for ``GPTModel(transformer_layer_spec=...)``."""
    if backend == "transformer_engine":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    layer = local_layer_spec(
        get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization=config.normalization), config
    )
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    final_norm = _sp_capable(layer.submodules.input_layernorm)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=final_norm)
