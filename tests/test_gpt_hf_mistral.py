"""Llama-style decoders <-> MistralForCausalLM: Llama's tensors, Mistral's config, no sliding window."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.models.gpt.hf_llama import LlamaConversion
from headless_megatron.models.gpt.hf_mistral import MistralConversion

TRAINING = dict(micro_batch_size=1, global_batch_size=1, train_iters=1, lr=1e-3)


def test_a_window_shorter_than_the_positions_is_refused_and_none_is_imported_as_full_attention():
    shape = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    with pytest.raises(ConversionError, match=r"^MistralForCausalLM with sliding_window 16 \(attention over the last "
                                              r"16 positions of max_position_embeddings 64\) has no Megatron"):
        MistralConversion.train_config_values(MistralConfig(**shape, sliding_window=16))
    for window in (None, 64):
        values = MistralConversion.train_config_values(MistralConfig(**shape, sliding_window=window, head_dim=16))
        assert (values["num_query_groups"], values["kv_channels"], values["seq_length"]) == (2, 16, 64)


def test_the_export_is_llamas_tensors_with_mistrals_config():
    config = TrainConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, seq_length=16,
                         **TRAINING)
    mistral, llama = MistralConversion(config, 100), LlamaConversion(config, 100)
    assert [m.hf for m in mistral.mappings("add_head")] == [m.hf for m in llama.mappings("add_head")]
    hf_config = mistral.hf_config("add_head", {"bos": None, "eos": 0, "pad": 1}, torch.float32)
    assert (type(hf_config).__name__, hf_config.sliding_window, hf_config.num_key_value_heads) == (
        "MistralConfig", None, 2)
