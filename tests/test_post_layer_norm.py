"""The post-LN layer built from Megatron-Core's submodules computes HF's BertLayer exactly."""

from __future__ import annotations

import pytest
import torch
from local_ranks import run_on_ranks

HIDDEN, HEADS, FFN, SEQ, BATCH = 32, 4, 48, 8, 2


def _layer_against_hf_bert_layer():
    import torch.nn.functional as F
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    from headless_megatron.config import ParallelLayout
    from headless_megatron.models.hf_mapping import split_qkv
    from headless_megatron.models.post_layer_norm import post_ln_layer_spec
    from headless_megatron.runtime.distributed import init_distributed

    init_distributed(ParallelLayout())
    config = TransformerConfig(num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_hidden_size=FFN,
                               normalization="LayerNorm", activation_func=F.gelu, add_bias_linear=True,
                               hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
                               layernorm_epsilon=1e-12)
    layer = build_module(post_ln_layer_spec(config), config=config, layer_number=1).eval()
    hf = BertLayer(BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3 + (parameter.dim() == 1) * 0.1)
        attention = layer.self_attention
        for kind in ("weight", "bias"):
            parts = split_qkv(getattr(attention.linear_qkv, kind), HEADS, HEADS, HIDDEN // HEADS)
            for name, part in zip(("query", "key", "value"), parts, strict=True):
                getattr(getattr(hf.attention.self, name), kind).copy_(part)
            getattr(hf.attention.output.dense, kind).copy_(getattr(attention.linear_proj, kind))
            getattr(hf.attention.output.LayerNorm, kind).copy_(getattr(layer.post_self_attn_layernorm, kind))
            getattr(hf.intermediate.dense, kind).copy_(getattr(layer.mlp.linear_fc1, kind))
            getattr(hf.output.dense, kind).copy_(getattr(layer.mlp.linear_fc2, kind))
            getattr(hf.output.LayerNorm, kind).copy_(getattr(layer.post_mlp_layernorm, kind))
        hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=generator)
        ours, _ = layer(hidden_states=hidden, attention_mask=None)
        theirs = hf(hidden.transpose(0, 1))
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    return ours.transpose(0, 1), theirs, sorted(name for name, _ in layer.named_parameters())


def test_the_post_ln_layer_is_hf_berts_layer():
    ours, theirs, names = run_on_ranks(_layer_against_hf_bert_layer, 1, timeout=300)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert "post_self_attn_layernorm.weight" in names and "post_mlp_layernorm.bias" in names
    assert not any("input_layernorm" in name or "pre_mlp_layernorm" in name for name in names)


def test_a_layer_with_pre_norms_is_refused():
    from megatron.core.transformer.transformer_config import TransformerConfig

    from headless_megatron.models.post_layer_norm import PostLayerNormSubmodules, PostLayerNormTransformerLayer
    from headless_megatron.models.specs import TorchNorm

    config = TransformerConfig(num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS)
    with pytest.raises(ValueError, match="its pre-norms must be IdentityOp"):
        PostLayerNormTransformerLayer(config, PostLayerNormSubmodules(input_layernorm=TorchNorm))
