"""BERT-style encoders (``model: bert``) <-> Hugging Face ``MegatronBertForMaskedLM`` / ``MegatronBertModel``.

Megatron-Core's ``BertModel`` is pre-LN with a final LayerNorm and no embedding LayerNorm, which is
exactly ``transformers``' MegatronBert ("Megatron BERT moves that layer norm after the drop-out
(and to each layer)"); HF's post-LN ``BertForMaskedLM`` is ``hf_bert.py`` (``transformer_block_type:
post_ln``), which shares this class's modes, head and model card.

- A vanilla encoder (``loss: ce``) exports to ``MegatronBertForMaskedLM`` with its trained MLM head
  (dense, GELU, LayerNorm, the tied or untied decoder and its bias).
- A headless encoder (``loss: cwt``) has no MLM head at all: it exports to ``MegatronBertModel``
  (the encoder, saved without the ``bert.`` prefix, as HF saves base models), which is what the
  paper fine-tunes on GLUE. HF adds its pooler, randomly initialised, as for the paper's exports.

Our encoders have no token types (``num_tokentypes`` 0): the export writes one zero token-type row;
an import adds row 0 (the row single-segment inputs use) to the position table, which is exact for
them, and leaves the other rows out.

Tensor names (layer i; ``P`` is ``bert.`` for the MLM model and empty for the encoder)::

    Megatron-Core checkpoint key (layers stacked)          MegatronBert
    embedding.word_embeddings.weight                       P embeddings.word_embeddings.weight (padding dropped)
    embedding.position_embeddings.weight                   P embeddings.position_embeddings.weight
                                                           (+ P embeddings.token_type_embeddings.weight, zero)
    encoder.layers.self_attention.linear_qkv
        .layer_norm_weight / .layer_norm_bias              P encoder.layer.i.attention.ln.weight / .bias
        .weight / .bias                                    attention.self.query / key / value (split per head)
    encoder.layers.self_attention.linear_proj              attention.output.dense
    encoder.layers.mlp.linear_fc1
        .layer_norm_weight / .layer_norm_bias              P encoder.layer.i.ln.weight / .bias
        .weight / .bias                                    intermediate.dense
    encoder.layers.mlp.linear_fc2                          output.dense
    encoder.final_layernorm                                P encoder.ln
    lm_head.dense / lm_head.layer_norm                     cls.predictions.transform.dense / .LayerNorm
    output_layer.bias                                      cls.predictions.bias (padding dropped)
    output_layer.weight (untied models only)               cls.predictions.decoder.weight

The MLP's activation is exact GELU, as Megatron defines it; a GPU run with bias-activation fusion
computed the tanh approximation instead, so its exported outputs differ from its training-time
ones in the third decimal.
"""

from __future__ import annotations

from typing import Any

import torch

from headless_megatron.config import TrainConfig
from headless_megatron.models.hf_mapping import (
    LAYER,
    ConversionError,
    TensorMapping,
    gelu_mlp_settings_missing,
    qkv_mapping,
    vocab_rows_mapping,
)

BERT_STYLE = "LayerNorm, a GELU MLP, learned absolute positions, linear biases and multi-head attention"
MASKED_LM = "MegatronBertForMaskedLM"
ENCODER = "MegatronBertModel"
# What an import may find in an HF MegatronBert directory and leave out on purpose: the pooler and
# next-sentence head (our encoders have neither), and copies of tied tensors.
LEFT_OUT_ON_IMPORT = ("pooler.", "cls.seq_relationship.", "cls.predictions.decoder.bias", "position_ids")


def unsupported_settings(config: TrainConfig) -> list[str]:
    """The settings of ``config`` that MegatronBert cannot represent, as ``key value``."""
    unsupported = []
    if config.transformer_block_type != "pre_ln":
        unsupported.append(f"transformer_block_type {config.transformer_block_type}")
    if config.num_tokentypes:
        unsupported.append(f"num_tokentypes {config.num_tokentypes}")
    if config.openai_gelu:
        unsupported.append("openai_gelu true")
    return unsupported + gelu_mlp_settings_missing(config)


class MegatronBertConversion:
    """A BERT-style encoder checkpoint of ``config`` with a vocabulary of ``vocab_size`` real tokens."""

    hf_model_type = "megatron-bert"
    modes = ("mlm",)
    import_mode = "mlm"
    masked_lm_architecture = MASKED_LM
    encoder_architecture = ENCODER
    style = BERT_STYLE
    """What the HF classes hold, for refusals."""

    @classmethod
    def cannot_represent(cls, config: TrainConfig) -> list[str]:
        """The settings of ``config`` these HF classes cannot hold, as ``key value`` (none: they can)."""
        return unsupported_settings(config)

    def __init__(self, config: TrainConfig, vocab_size: int):
        unsupported = self.cannot_represent(config)
        if unsupported:
            name = self.masked_lm_architecture.removesuffix("ForMaskedLM")
            raise ConversionError(
                f"{name} cannot represent {', '.join(unsupported)}: it holds encoders that are {self.style}"
            )
        self.config = config
        self.vocab_size = vocab_size
        self.padded_vocab_size = config.padded_vocab_size(vocab_size)
        self.headless = config.loss == "cwt"
        self.hf_architecture = self.encoder_architecture if self.headless else self.masked_lm_architecture

    # ---- Modes ----

    def default_mode(self) -> str:
        return "mlm"

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ConversionError(
                f"--mode {mode}: a bert checkpoint exports to {self.hf_architecture} with --mode mlm "
                "(add_head and lm are for gpt decoders)"
            )

    # ---- Tensors ----

    def mappings(self, mode: str) -> list[TensorMapping]:
        heads, head_dim, vocab, padded = (
            self.config.num_attention_heads, self.config.head_dim, self.vocab_size, self.padded_vocab_size,
        )
        prefix = "" if self.headless else "bert."
        embeddings, layer = prefix + "embeddings.", f"{prefix}encoder.layer.{LAYER}."
        attention = layer + "attention."
        mappings = [
            vocab_rows_mapping(
                "embedding.word_embeddings.weight", embeddings + "word_embeddings.weight", vocab, padded
            ),
            TensorMapping("embedding.position_embeddings.weight",
                          (embeddings + "position_embeddings.weight", embeddings + "token_type_embeddings.weight"),
                          with_zero_token_type, _token_type_zero_into_positions),
        ]
        for kind in ("weight", "bias"):
            mappings += [
                TensorMapping(f"encoder.layers.self_attention.linear_qkv.layer_norm_{kind}",
                              (f"{attention}ln.{kind}",)),
                qkv_mapping(f"encoder.layers.self_attention.linear_qkv.{kind}",
                            tuple(f"{attention}self.{name}.{kind}" for name in ("query", "key", "value")),
                            heads, heads, head_dim),
                TensorMapping(f"encoder.layers.self_attention.linear_proj.{kind}",
                              (f"{attention}output.dense.{kind}",)),
                TensorMapping(f"encoder.layers.mlp.linear_fc1.layer_norm_{kind}", (f"{layer}ln.{kind}",)),
                TensorMapping(f"encoder.layers.mlp.linear_fc1.{kind}", (f"{layer}intermediate.dense.{kind}",)),
                TensorMapping(f"encoder.layers.mlp.linear_fc2.{kind}", (f"{layer}output.dense.{kind}",)),
                TensorMapping(f"encoder.final_layernorm.{kind}", (f"{prefix}encoder.ln.{kind}",)),
            ]
        return mappings + self.mlm_head_mappings()

    def mlm_head_mappings(self) -> list[TensorMapping]:
        """The MLM head's tensors (none for a headless encoder)."""
        if self.headless:
            return []
        vocab, padded, transform = self.vocab_size, self.padded_vocab_size, "cls.predictions.transform."
        mappings = [
            TensorMapping(f"lm_head.{megatron}.{kind}", (f"{transform}{hf}.{kind}",))
            for megatron, hf in (("dense", "dense"), ("layer_norm", "LayerNorm")) for kind in ("weight", "bias")
        ]
        mappings.append(vocab_rows_mapping("output_layer.bias", "cls.predictions.bias", vocab, padded))
        if self.config.untie_embeddings_and_output_weights:
            mappings.append(vocab_rows_mapping("output_layer.weight", "cls.predictions.decoder.weight", vocab, padded))
        return mappings

    def unused_hf_tensor(self, name: str) -> bool:
        return any(part in name for part in LEFT_OUT_ON_IMPORT) or (
            name == "cls.predictions.decoder.weight" and not self.config.untie_embeddings_and_output_weights
        )

    # ---- Configs and model card ----

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        """The ``MegatronBertConfig``; ``special_tokens`` has the tokenizer's ``bos``, ``eos`` and ``pad`` ids."""
        from transformers import MegatronBertConfig

        return MegatronBertConfig(**self.bert_config_values(special_tokens, dtype), type_vocab_size=1)

    def bert_config_values(self, special_tokens: dict[str, int | None], dtype: torch.dtype) -> dict[str, Any]:
        """The config values HF's BERT and MegatronBert share."""
        config = self.config
        return dict(
            architectures=[self.hf_architecture],
            vocab_size=self.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.ffn_size,
            hidden_act="gelu",
            hidden_dropout_prob=config.hidden_dropout,
            attention_probs_dropout_prob=config.attention_dropout,
            max_position_embeddings=config.max_positions,
            initializer_range=config.init_method_std,
            layer_norm_eps=config.norm_epsilon,
            tie_word_embeddings=not config.untie_embeddings_and_output_weights,
            bos_token_id=special_tokens["bos"],
            eos_token_id=special_tokens["eos"],
            pad_token_id=special_tokens["pad"],
            dtype=dtype,
        )

    def pipeline_tag(self, mode: str) -> str:
        return "feature-extraction" if self.headless else "fill-mask"

    def head_description(self, mode: str) -> str:
        if self.headless:
            return (f"none: a headless encoder has no MLM head, so this is the encoder alone ({self.hf_architecture}), "
                    "to fine-tune on a task, as the paper does on GLUE")
        tied = "untied" if self.config.untie_embeddings_and_output_weights else "tied to the input embeddings"
        return f"the trained MLM head (dense, GELU, LayerNorm, then the decoder, {tied}, and its bias)"

    def usage(self, path: str) -> str:
        if self.headless:
            return (f'from transformers import AutoModel, AutoTokenizer\n\n'
                    f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
                    f'encoder = AutoModel.from_pretrained("{path}")\n'
                    f'states = encoder(**tokenizer("Hello world", return_tensors="pt")).last_hidden_state')
        return (f'from transformers import pipeline\n\n'
                f'fill = pipeline("fill-mask", model="{path}")\n'
                f'print(fill("def add(a, b): return a {{mask}} b".format(mask=fill.tokenizer.mask_token)))')

    @classmethod
    def train_config_values(cls, hf_config) -> dict[str, Any]:
        """The architecture fields of a :class:`TrainConfig` for a ``transformers`` MegatronBert config
        (a ``MegatronBertModel`` becomes a headless encoder: it has no MLM head)."""
        if hf_config.hidden_act != "gelu":
            raise ConversionError(
                f"MegatronBert with hidden_act {hf_config.hidden_act} has no Megatron equivalent here "
                f"(encoders are {BERT_STYLE}, with exact GELU)"
            )
        return encoder_values(hf_config, masked_lm=MASKED_LM in (hf_config.architectures or [MASKED_LM]))


def encoder_values(hf_config, masked_lm: bool) -> dict[str, Any]:
    """The architecture fields of an encoder that HF's BERT and MegatronBert configs give alike; one
    without MLM head (``masked_lm`` false) becomes a headless encoder."""
    return {
        "model": "bert",
        "num_layers": hf_config.num_hidden_layers,
        "hidden_size": hf_config.hidden_size,
        "ffn_hidden_size": hf_config.intermediate_size,
        "num_attention_heads": hf_config.num_attention_heads,
        "seq_length": hf_config.max_position_embeddings,
        "normalization": "LayerNorm",
        "norm_epsilon": hf_config.layer_norm_eps,
        "swiglu": False,
        "position_embedding_type": "learned_absolute",
        "add_bias_linear": True,
        "untie_embeddings_and_output_weights": masked_lm and not hf_config.tie_word_embeddings,
        "init_method_std": hf_config.initializer_range,
        "vocab_size": hf_config.vocab_size,
        "loss": "ce" if masked_lm else "cwt",
    }


def with_zero_token_type(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return positions, positions.new_zeros(1, positions.shape[1])


def _token_type_zero_into_positions(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    positions, token_types = tensors
    return positions + token_types[0]
