"""GPT-2-style decoders <-> GPT2LMHeadModel: Conv1D transposes, c_attn's [q | k | v], what is refused."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.models.gpt.hf_gpt2 import GPT2Conversion, c_attn_mapping
from headless_megatron.models.hf_mapping import megatron_tensor, megatron_to_hf

VOCAB = 100
SPECIAL_TOKENS = {"bos": 0, "eos": 0, "pad": None}
GPT2_STYLE = dict(model="gpt", num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16,
                  normalization="LayerNorm", swiglu=False, openai_gelu=True, position_embedding_type="learned_absolute",
                  add_bias_linear=True, loss="ce", micro_batch_size=1, global_batch_size=1, train_iters=1, lr=1e-3)


def test_c_attn_holds_all_queries_then_all_keys_then_all_values():
    heads, head_dim, hidden = 4, 8, 32
    fused = torch.arange(3 * hidden * hidden, dtype=torch.float).reshape(3 * hidden, hidden)  # per head [q k v]
    mapping = c_attn_mapping("decoder.layers.self_attention.linear_qkv.weight", "h.{layer}.attn.c_attn.weight",
                             heads, head_dim, weight=True)
    (c_attn,) = mapping.to_hf(fused)
    assert c_attn.shape == (hidden, 3 * hidden)  # Conv1D: [in, out]
    assert torch.equal(c_attn[:, :head_dim].t(), fused[:head_dim])  # head 0's query
    assert torch.equal(c_attn[:, hidden:hidden + head_dim].t(), fused[head_dim:2 * head_dim])  # head 0's key
    assert torch.equal(c_attn[:, 2 * hidden + head_dim:2 * hidden + 2 * head_dim].t(), fused[5 * head_dim:6 * head_dim])
    assert torch.equal(mapping.to_megatron((c_attn,)), fused)


@pytest.mark.parametrize("untied", [False, True])
def test_exported_names_and_shapes_are_gpt2s_and_import_inverts_export(untied):
    config = TrainConfig(**GPT2_STYLE, untie_embeddings_and_output_weights=untied)
    conversion = GPT2Conversion(config, VOCAB)
    model = GPT2LMHeadModel(conversion.hf_config("lm", SPECIAL_TOKENS, torch.float32))
    hf = {name: torch.randn_like(tensor) for name, tensor in model.state_dict().items()
          if not (name == "lm_head.weight" and not untied)}
    mappings = conversion.mappings("lm")
    tensors = {}
    for mapping in mappings:
        layers = (0, 1) if mapping.per_layer else (None,)
        rebuilt = [megatron_tensor(mapping, hf.__getitem__, layer) for layer in layers]
        tensors[mapping.megatron] = torch.stack(rebuilt) if mapping.per_layer else rebuilt[0]
    assert tensors["embedding.word_embeddings.weight"].shape[0] == config.padded_vocab_size(VOCAB)
    again = megatron_to_hf(mappings, tensors, config.num_layers)
    assert set(again) == set(hf)
    assert all(torch.equal(again[name], hf[name]) for name in hf)
    assert model.config.activation_function == "gelu_new" and model.config.tie_word_embeddings == (not untied)


def test_what_gpt2_cannot_hold_is_named():
    with pytest.raises(ConversionError, match="GPT2LMHeadModel cannot represent normalization RMSNorm, swiglu true, "
                                              "position_embedding_type rope, add_bias_linear false: it holds GPT-2"):
        GPT2Conversion(TrainConfig(**{**GPT2_STYLE, "normalization": "RMSNorm", "swiglu": True, "openai_gelu": False,
                                      "position_embedding_type": "rope", "add_bias_linear": False}), VOCAB)


@pytest.mark.parametrize("setting, named", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx true"),
    ({"scale_attn_weights": False}, "scale_attn_weights false"),
    ({"activation_function": "relu"}, "activation_function relu"),
])
def test_hf_gpt2_settings_without_an_exact_equivalent_are_refused(setting, named):
    with pytest.raises(ConversionError, match=f"^GPT2LMHeadModel with {named} has no Megatron equivalent here"):
        GPT2Conversion.train_config_values(GPT2Config(n_embd=32, n_layer=2, n_head=4, **setting))


def test_train_config_values_keep_the_gelu_and_the_mlp_width():
    values = GPT2Conversion.train_config_values(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                                           activation_function="gelu"))
    assert (values["openai_gelu"], values["ffn_hidden_size"], values["position_embedding_type"]) == (
        False, 48, "learned_absolute")
