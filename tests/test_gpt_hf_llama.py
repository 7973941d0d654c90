"""Llama-style decoders <-> LlamaForCausalLM: names, shapes, modes, configs (no checkpoint needed)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.models.gpt.hf_llama import LlamaConversion, unsupported_settings
from headless_megatron.models.hf_mapping import megatron_tensor, megatron_to_hf

VOCAB = 100  # padded to 128
SPECIAL_TOKENS = {"bos": None, "eos": 0, "pad": 1}
TRAINING = {"micro_batch_size": 1, "global_batch_size": 1, "train_iters": 1, "lr": 1e-3}


def decoder_config(**overrides) -> TrainConfig:
    values = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=48,
                  seq_length=16, rotary_base=5000, norm_epsilon=1e-6, **TRAINING)
    return TrainConfig(**{**values, **overrides})


def checkpoint_tensors(config: TrainConfig) -> dict[str, torch.Tensor]:
    """Random tensors shaped like a checkpoint of ``config`` (zero vocabulary padding, as imports write)."""
    gen = torch.Generator().manual_seed(0)
    layers, hidden, ffn = config.num_layers, config.hidden_size, config.ffn_size
    qkv_rows = (config.num_attention_heads + 2 * config.query_groups) * config.head_dim

    def table():
        rows = torch.randn(VOCAB, hidden, generator=gen)
        return torch.cat([rows, torch.zeros(config.padded_vocab_size(VOCAB) - VOCAB, hidden)])

    return {
        "embedding.word_embeddings.weight": table(),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": torch.randn(layers, hidden, generator=gen),
        "decoder.layers.self_attention.linear_qkv.weight": torch.randn(layers, qkv_rows, hidden, generator=gen),
        "decoder.layers.self_attention.linear_proj.weight": torch.randn(layers, hidden, hidden, generator=gen),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": torch.randn(layers, hidden, generator=gen),
        "decoder.layers.mlp.linear_fc1.weight": torch.randn(layers, 2 * ffn, hidden, generator=gen),
        "decoder.layers.mlp.linear_fc2.weight": torch.randn(layers, hidden, ffn, generator=gen),
        "decoder.final_layernorm.weight": torch.randn(hidden, generator=gen),
        "output_layer.weight": table(),
    }


@pytest.mark.parametrize("mode, untied", [("add_head", False), ("lm", True), ("lm", False)])
def test_exported_names_and_shapes_are_those_of_transformers_llama(mode, untied):
    config = decoder_config(loss="ce", untie_embeddings_and_output_weights=untied)
    conversion = LlamaConversion(config, VOCAB)
    hf_config = conversion.hf_config(mode, SPECIAL_TOKENS, torch.float32)
    hf = megatron_to_hf(conversion.mappings(mode), checkpoint_tensors(config), config.num_layers)
    model = LlamaForCausalLM(hf_config)
    result = model.load_state_dict(hf, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys == ([] if untied and mode == "lm" else ["lm_head.weight"])
    assert hf_config.tie_word_embeddings == (not (untied and mode == "lm"))
    assert torch.equal(
        model.lm_head.weight, hf["lm_head.weight" if "lm_head.weight" in hf else "model.embed_tokens.weight"]
    )


def test_import_mappings_rebuild_every_checkpoint_tensor_exactly():
    config = decoder_config(loss="ce", untie_embeddings_and_output_weights=True)
    conversion = LlamaConversion(config, VOCAB)
    tensors = checkpoint_tensors(config)
    mappings = conversion.mappings("lm")
    hf = megatron_to_hf(mappings, tensors, config.num_layers)
    assert {mapping.megatron for mapping in mappings} == set(tensors)
    for mapping in mappings:
        if mapping.per_layer:
            rebuilt = torch.stack(
                [megatron_tensor(mapping, hf.__getitem__, layer) for layer in range(config.num_layers)]
            )
        else:
            rebuilt = megatron_tensor(mapping, hf.__getitem__)
        assert torch.equal(rebuilt, tensors[mapping.megatron]), mapping.megatron


def test_default_and_refused_modes():
    headless = LlamaConversion(decoder_config(loss="cwt"), VOCAB)
    vanilla = LlamaConversion(decoder_config(loss="ce", untie_embeddings_and_output_weights=True), VOCAB)
    assert (headless.default_mode(), vanilla.default_mode()) == ("add_head", "lm")
    with pytest.raises(ConversionError, match=r"--mode lm: this checkpoint is headless \(loss cwt\)"):
        headless.check_mode("lm")
    with pytest.raises(ConversionError, match="--mode mlm: a gpt checkpoint exports to LlamaForCausalLM"):
        vanilla.check_mode("mlm")
    assert "output_layer.weight" not in {mapping.megatron for mapping in vanilla.mappings("add_head")}


def test_architectures_llama_cannot_hold_are_named():
    config = decoder_config(normalization="LayerNorm", swiglu=False, add_bias_linear=True,
                            position_embedding_type="learned_absolute")
    assert unsupported_settings(config) == [
        "normalization LayerNorm", "swiglu false", "position_embedding_type learned_absolute", "add_bias_linear true",
    ]
    with pytest.raises(ConversionError, match="cannot represent rotary_percent 0.25: it holds Llama-style"):
        LlamaConversion(decoder_config(rotary_percent=0.25), VOCAB)


def test_hf_config_and_train_config_values_describe_the_same_model():
    config = decoder_config(loss="ce", untie_embeddings_and_output_weights=True, kv_channels=16, seq_length=32)
    hf_config = LlamaConversion(config, VOCAB).hf_config("lm", SPECIAL_TOKENS, torch.bfloat16)
    assert (hf_config.num_key_value_heads, hf_config.head_dim, hf_config.intermediate_size) == (2, 16, 48)
    assert hf_config.rope_parameters["rope_theta"] == 5000 and hf_config.rms_norm_eps == 1e-6
    assert (hf_config.eos_token_id, hf_config.pad_token_id, hf_config.dtype) == (0, 1, torch.bfloat16)
    values = LlamaConversion.train_config_values(hf_config)
    assert values.pop("vocab_size") == VOCAB
    rebuilt = TrainConfig(**values, **TRAINING)
    for field in ("num_layers", "hidden_size", "num_attention_heads", "query_groups", "head_dim", "ffn_size",
                  "max_positions", "norm_epsilon", "rotary_base", "untie_embeddings_and_output_weights"):
        assert getattr(rebuilt, field) == getattr(config, field), field


@pytest.mark.parametrize("setting, named", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, "rope_type llama3"),
    ({"attention_bias": True}, "attention_bias true"),
    ({"hidden_act": "gelu"}, "hidden_act gelu"),
])
def test_hf_llama_settings_without_an_equivalent_are_refused(setting, named):
    hf_config = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, **setting)
    with pytest.raises(ConversionError, match=f"LlamaForCausalLM with {named}"):
        LlamaConversion.train_config_values(hf_config)
