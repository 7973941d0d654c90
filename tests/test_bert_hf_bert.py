"""Post-LN encoders <-> BertForMaskedLM / BertModel: names and shapes, token types, what is refused."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from headless_megatron.config import TrainConfig
from headless_megatron.convert import ConversionError
from headless_megatron.models.bert.hf_bert import BertConversion
from headless_megatron.models.hf_mapping import megatron_tensor, megatron_to_hf

VOCAB = 100
SPECIAL_TOKENS = {"bos": None, "eos": None, "pad": 0}
ENCODER = dict(model="bert", transformer_block_type="post_ln", num_layers=2, hidden_size=32, num_attention_heads=4,
               ffn_hidden_size=48, seq_length=16, normalization="LayerNorm", swiglu=False, add_bias_linear=True,
               position_embedding_type="learned_absolute", micro_batch_size=1, global_batch_size=1, train_iters=1,
               lr=1e-3)


@pytest.mark.parametrize("loss, token_types", [("ce", 2), ("cwt", 2), ("ce", 0)])
def test_names_and_shapes_are_berts_and_import_inverts_export(loss, token_types):
    conversion = BertConversion(TrainConfig(**ENCODER, loss=loss, num_tokentypes=token_types), VOCAB)
    hf_config = conversion.hf_config("mlm", SPECIAL_TOKENS, torch.float32)
    model = (BertModel(hf_config, add_pooling_layer=False) if loss == "cwt" else BertForMaskedLM(hf_config))
    hf = {name: torch.randn_like(tensor) for name, tensor in model.state_dict().items()
          if not name.endswith(("decoder.weight", "decoder.bias", "position_ids", "token_type_ids"))}
    if not token_types:
        hf["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, 32)  # what an export writes
    tensors = {}
    for mapping in conversion.mappings("mlm"):
        layers = (0, 1) if mapping.per_layer else (None,)
        rebuilt = [megatron_tensor(mapping, hf.__getitem__, layer) for layer in layers]
        tensors[mapping.megatron] = torch.stack(rebuilt) if mapping.per_layer else rebuilt[0]
    again = megatron_to_hf(conversion.mappings("mlm"), tensors, 2)
    assert set(again) == set(hf) and all(torch.equal(again[name], hf[name]) for name in hf)
    assert conversion.hf_architecture == ("BertModel" if loss == "cwt" else "BertForMaskedLM")
    assert hf_config.type_vocab_size == (token_types or 1)


def test_a_pre_ln_encoder_is_not_a_bert():
    with pytest.raises(ConversionError, match="^Bert cannot represent transformer_block_type pre_ln: it holds encoders "
                                              "that are post-LN"):
        BertConversion(TrainConfig(**{**ENCODER, "transformer_block_type": "pre_ln"}), VOCAB)


@pytest.mark.parametrize("setting, named", [
    ({"hidden_act": "gelu_new"}, "hidden_act gelu_new"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type relative_key"),
    ({"is_decoder": True}, "is_decoder true"),
])
def test_hf_bert_settings_without_an_exact_equivalent_are_refused(setting, named):
    hf_config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, **setting)
    with pytest.raises(ConversionError, match=f"^BERT with {named} has no Megatron equivalent here"):
        BertConversion.train_config_values(hf_config)


def test_a_bert_for_pretraining_imports_as_a_vanilla_encoder_with_its_token_types():
    hf_config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                           architectures=["BertForPreTraining"])
    values = BertConversion.train_config_values(hf_config)
    assert (values["loss"], values["num_tokentypes"], values["transformer_block_type"]) == ("ce", 2, "post_ln")
    assert BertConversion.train_config_values(BertConfig(architectures=["BertModel"]))["loss"] == "cwt"
