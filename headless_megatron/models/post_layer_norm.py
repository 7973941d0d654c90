"""Post-LayerNorm transformer layers (the original BERT's) from Megatron-Core's own submodules.

Megatron-Core's ``TransformerLayer`` is pre-LN: ``h + attention(norm(h))``, then
``h + mlp(norm(h))``, with a final norm after the last layer. The original BERT (HF ``bert``)
normalises after each residual add instead, and normalises the embeddings::

    h = dropout(norm_e(word + position + token type))
    h = norm_1(h + attention(h))
    h = norm_2(h + mlp(h))          (no final norm)

:class:`PostLayerNormTransformerLayer` is ``TransformerLayer`` with its two pre-norms set to
``IdentityOp`` and two norms of its own applied after its residual adds, which it computes with
Megatron's own ``_forward_attention`` and ``_forward_mlp`` (bias-dropout-add, recomputation and
sequence parallelism included). Its norms are :class:`~headless_megatron.models.specs.TorchNorm`,
tagged for sequence parallelism, so the layer trains at any TP/PP/SP layout. Checkpoint keys:
``<layer>.post_self_attn_layernorm.{weight,bias}`` and ``<layer>.post_mlp_layernorm.{weight,bias}``.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from headless_megatron.models.specs import TorchNorm, local_layer_spec


@dataclasses.dataclass
class PostLayerNormSubmodules(TransformerLayerSubmodules):
    """``TransformerLayerSubmodules`` with the norms after the attention and MLP residual adds."""

    post_self_attn_layernorm: ModuleSpec | type = IdentityOp
    post_mlp_layernorm: ModuleSpec | type = IdentityOp


class PostLayerNormTransformerLayer(TransformerLayer):
    """``norm_1(h + attention(h))``, then ``norm_2(h + mlp(h))``."""

    def __init__(self, config: TransformerConfig, submodules: PostLayerNormSubmodules, *args, **kwargs):
        if submodules.input_layernorm is not IdentityOp or submodules.pre_mlp_layernorm is not IdentityOp:
            raise ValueError("a post-LN layer normalises after its residual adds: its pre-norms must be IdentityOp")
        super().__init__(config, submodules, *args, **kwargs)
        norm = dict(config=self.config, hidden_size=self.config.hidden_size, eps=self.config.layernorm_epsilon)
        self.post_self_attn_layernorm = build_module(submodules.post_self_attn_layernorm, **norm)
        self.post_mlp_layernorm = build_module(submodules.post_mlp_layernorm, **norm)

    def forward(self, *args, **kwargs):
        kwargs.pop("dynamic_inference_decode_only", None)
        attended, context = self._forward_attention(*args, **kwargs)
        output = self._forward_mlp(
            self.post_self_attn_layernorm(attended), kwargs.get("inference_context"),
            padding_mask=kwargs.get("padding_mask"),
        )
        return self.post_mlp_layernorm(output), context


def post_ln_layer_spec(config: TransformerConfig) -> ModuleSpec:
    """BERT's post-LN layer: Megatron-Core's local BERT layer (with ``SDPAttention`` where it
    applies) with its norms moved after the residual adds."""
    pre_ln = local_layer_spec(bert_layer_local_spec, config)
    submodules = PostLayerNormSubmodules(
        **{field.name: getattr(pre_ln.submodules, field.name) for field in dataclasses.fields(pre_ln.submodules)},
    )
    submodules = dataclasses.replace(
        submodules, input_layernorm=IdentityOp, pre_mlp_layernorm=IdentityOp,
        post_self_attn_layernorm=TorchNorm, post_mlp_layernorm=TorchNorm, sharded_state_dict_keys_map={},
    )
    return ModuleSpec(module=PostLayerNormTransformerLayer, submodules=submodules)


def add_embedding_norm(embedding: torch.nn.Module, config: TransformerConfig) -> None:
    """Give Megatron's ``LanguageModelEmbedding`` the post-LN embedding norm, ``embedding.layernorm``,
    applied where BERT applies it: to the summed embeddings, before their dropout (and after the
    sequence-parallel scatter, so its parameters are tagged for the SP gradient all-reduce). It runs
    as a forward pre-hook of the embedding's dropout, the one place between the sum and the dropout
    that ``LanguageModelEmbedding.forward`` calls out to."""
    embedding.layernorm = TorchNorm(config, config.hidden_size, eps=config.layernorm_epsilon)
    embedding.embedding_dropout.register_forward_pre_hook(lambda _dropout, inputs: (embedding.layernorm(*inputs),))
