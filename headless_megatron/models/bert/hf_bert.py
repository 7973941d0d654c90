"""The original BERT (``model: bert``, ``transformer_block_type: post_ln``) <-> Hugging Face
``BertForMaskedLM`` / ``BertModel``: ``bert-base-uncased`` and its kin.

HF's BERT is post-LN: LayerNorm on the summed embeddings, then after each residual add, and no final
norm. Megatron-Core's layer is pre-LN, so these checkpoints build their layers from
:mod:`headless_megatron.models.post_layer_norm` (Megatron-Core's submodules, norms after the adds),
which trains at any TP/PP/SP layout with the CWT loss as the pre-LN encoder does. The token-type
table is kept (``num_tokentypes``: ``type_vocab_size``); our data has one segment, so training uses
row 0, as single-sentence BERT inputs do. The pooler and the next-sentence head of
``BertForPreTraining`` are left out on import (our encoders have neither). An encoder without token
types exports one zero row.

- A vanilla encoder (``loss: ce``) exports to ``BertForMaskedLM`` with its trained MLM head.
- A headless encoder (``loss: cwt``) has no MLM head: it exports to ``BertModel`` (the encoder,
  saved without the ``bert.`` prefix), which is what the paper fine-tunes on GLUE; HF adds its
  pooler, randomly initialised.

Tensor names (layer i; ``P`` is ``bert.`` for the MLM model and empty for the encoder)::

    Megatron-Core checkpoint key (layers stacked)        BERT
    embedding.word_embeddings.weight                     P embeddings.word_embeddings.weight (padding dropped)
    embedding.position_embeddings.weight                 P embeddings.position_embeddings.weight
    embedding.tokentype_embeddings.weight                P embeddings.token_type_embeddings.weight
    embedding.layernorm                                  P embeddings.LayerNorm
    encoder.layers.self_attention.linear_qkv             P encoder.layer.i.attention.self.query / key / value
    encoder.layers.self_attention.linear_proj            attention.output.dense
    encoder.layers.post_self_attn_layernorm              attention.output.LayerNorm
    encoder.layers.mlp.linear_fc1                        intermediate.dense
    encoder.layers.mlp.linear_fc2                        output.dense
    encoder.layers.post_mlp_layernorm                    output.LayerNorm
    lm_head.dense / lm_head.layer_norm                   cls.predictions.transform.dense / .LayerNorm
    output_layer.bias                                    cls.predictions.bias (padding dropped)
    output_layer.weight (untied models only)             cls.predictions.decoder.weight
"""

from __future__ import annotations

from typing import Any

import torch

from headless_megatron.config import TrainConfig
from headless_megatron.models.bert.hf_megatron_bert import (
    MegatronBertConversion,
    encoder_values,
    with_zero_token_type,
)
from headless_megatron.models.hf_mapping import (
    LAYER,
    ConversionError,
    TensorMapping,
    gelu_mlp_settings_missing,
    qkv_mapping,
    vocab_rows_mapping,
)

BERT_STYLE = ("post-LN with LayerNorm on the embeddings, learned absolute positions, token types, linear biases, "
              "exact GELU and multi-head attention")
# What an import may find and leave out on purpose: the pooler and next-sentence head, buffers, and
# copies of tied tensors.
LEFT_OUT_ON_IMPORT = ("pooler.", "cls.seq_relationship.", "cls.predictions.decoder.bias", "position_ids",
                      "token_type_ids")
MASKED_LM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining")


def unsupported_settings(config: TrainConfig) -> list[str]:
    """The settings of ``config`` that HF's BERT cannot represent, as ``key value``."""
    unsupported = []
    if config.transformer_block_type != "post_ln":
        unsupported.append(f"transformer_block_type {config.transformer_block_type}")
    if config.openai_gelu:
        unsupported.append("openai_gelu true")
    return unsupported + gelu_mlp_settings_missing(config)


class BertConversion(MegatronBertConversion):
    """A post-LN BERT checkpoint of ``config`` with a vocabulary of ``vocab_size`` real tokens; its modes,
    head and model card are those of :class:`MegatronBertConversion`."""

    hf_model_type = "bert"
    masked_lm_architecture = "BertForMaskedLM"
    encoder_architecture = "BertModel"
    style = BERT_STYLE

    @classmethod
    def cannot_represent(cls, config: TrainConfig) -> list[str]:
        return unsupported_settings(config)

    def mappings(self, mode: str) -> list[TensorMapping]:
        heads, head_dim, vocab, padded = (
            self.config.num_attention_heads, self.config.head_dim, self.vocab_size, self.padded_vocab_size,
        )
        prefix = "" if self.headless else "bert."
        embeddings, layer = prefix + "embeddings.", f"{prefix}encoder.layer.{LAYER}."
        positions, token_types = embeddings + "position_embeddings.weight", embeddings + "token_type_embeddings.weight"
        mappings = [
            vocab_rows_mapping("embedding.word_embeddings.weight", embeddings + "word_embeddings.weight", vocab,
                               padded),
        ]
        if self.config.num_tokentypes:
            mappings += [TensorMapping("embedding.position_embeddings.weight", (positions,)),
                         TensorMapping("embedding.tokentype_embeddings.weight", (token_types,))]
        else:  # one zero row, which every token uses
            mappings.append(TensorMapping("embedding.position_embeddings.weight", (positions, token_types),
                                          with_zero_token_type, _positions_without_token_types))
        for kind in ("weight", "bias"):
            mappings += [
                TensorMapping(f"embedding.layernorm.{kind}", (f"{embeddings}LayerNorm.{kind}",)),
                qkv_mapping(f"encoder.layers.self_attention.linear_qkv.{kind}",
                            tuple(f"{layer}attention.self.{name}.{kind}" for name in ("query", "key", "value")),
                            heads, heads, head_dim),
                TensorMapping(f"encoder.layers.self_attention.linear_proj.{kind}",
                              (f"{layer}attention.output.dense.{kind}",)),
                TensorMapping(f"encoder.layers.post_self_attn_layernorm.{kind}",
                              (f"{layer}attention.output.LayerNorm.{kind}",)),
                TensorMapping(f"encoder.layers.mlp.linear_fc1.{kind}", (f"{layer}intermediate.dense.{kind}",)),
                TensorMapping(f"encoder.layers.mlp.linear_fc2.{kind}", (f"{layer}output.dense.{kind}",)),
                TensorMapping(f"encoder.layers.post_mlp_layernorm.{kind}", (f"{layer}output.LayerNorm.{kind}",)),
            ]
        return mappings + self.mlm_head_mappings()

    def unused_hf_tensor(self, name: str) -> bool:
        return any(part in name for part in LEFT_OUT_ON_IMPORT) or (
            name == "cls.predictions.decoder.weight" and not self.config.untie_embeddings_and_output_weights
        )

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        """The ``BertConfig``; ``special_tokens`` has the tokenizer's ``bos``, ``eos`` and ``pad`` ids."""
        from transformers import BertConfig

        return BertConfig(**self.bert_config_values(special_tokens, dtype),
                          type_vocab_size=self.config.num_tokentypes or 1)

    @classmethod
    def train_config_values(cls, hf_config) -> dict[str, Any]:
        """The architecture fields of a :class:`TrainConfig` for a ``transformers`` BERT config (a
        ``BertModel`` becomes a headless encoder: it has no MLM head); raises ``ConversionError``
        naming what Megatron-Core's encoder cannot compute exactly."""
        unsupported = []
        if hf_config.hidden_act != "gelu":
            unsupported.append(f"hidden_act {hf_config.hidden_act}")
        position_type = getattr(hf_config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            unsupported.append(f"position_embedding_type {position_type}")
        for key in ("is_decoder", "add_cross_attention"):
            if getattr(hf_config, key, False):
                unsupported.append(f"{key} true")
        if unsupported:
            raise ConversionError(
                f"BERT with {', '.join(unsupported)} has no Megatron equivalent here (its encoders are {BERT_STYLE})"
            )
        masked_lm = any(name in (hf_config.architectures or ["BertForMaskedLM"]) for name in MASKED_LM_ARCHITECTURES)
        return {**encoder_values(hf_config, masked_lm), "transformer_block_type": "post_ln",
                "num_tokentypes": hf_config.type_vocab_size}


def _positions_without_token_types(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    positions, token_types = tensors
    if token_types.any():
        raise ConversionError("a token-type table with non-zero rows needs num_tokentypes")
    return positions
