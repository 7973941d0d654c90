"""Llama-style decoders with query/key/value biases <-> Qwen2ForCausalLM: the fused bias, refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.models.gpt.hf_qwen2 import Qwen2Conversion
from headless_megatron.models.hf_mapping import megatron_to_hf, split_qkv

VOCAB = 100
SPECIAL_TOKENS = {"bos": None, "eos": 0, "pad": 1}
DECODER = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=48,
               seq_length=16, add_qkv_bias=True, loss="ce", micro_batch_size=1, global_batch_size=1, train_iters=1,
               lr=1e-3)


def test_the_fused_qkv_bias_becomes_qwen2s_three_biases():
    config = TrainConfig(**DECODER)
    conversion = Qwen2Conversion(config, VOCAB)
    bias = torch.randn(2, (4 + 2 * 2) * 8)
    (mapping,) = [m for m in conversion.mappings("lm") if m.megatron.endswith("linear_qkv.bias")]
    hf = megatron_to_hf([mapping], {mapping.megatron: bias}, 2)
    query, key, value = split_qkv(bias[1], 4, 2, 8)
    assert torch.equal(hf["model.layers.1.self_attn.k_proj.bias"], key)
    model = Qwen2ForCausalLM(conversion.hf_config("lm", SPECIAL_TOKENS, torch.float32))
    assert set(hf) <= set(model.state_dict()) and model.config.use_sliding_window is False
    assert set(conversion.mappings("lm")[0].hf) <= set(model.state_dict())


def test_a_decoder_without_qkv_biases_is_not_a_qwen2():
    with pytest.raises(ConversionError, match="Qwen2ForCausalLM cannot represent add_qkv_bias false: it holds"):
        Qwen2Conversion(TrainConfig(**{**DECODER, "add_qkv_bias": False}), VOCAB)


@pytest.mark.parametrize("setting, named", [
    ({"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window true \\(sliding_window 16\\)"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types sliding_attention \\(layer 1\\)"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_type yarn"),
])
def test_hf_qwen2_settings_without_an_exact_equivalent_are_refused(setting, named):
    hf_config = Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, **setting)
    with pytest.raises(ConversionError, match=f"^Qwen2ForCausalLM with {named}"):
        Qwen2Conversion.train_config_values(hf_config)
