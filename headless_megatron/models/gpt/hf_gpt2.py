"""GPT-2-style decoders (``model: gpt``) <-> Hugging Face ``GPT2LMHeadModel``.

GPT-2-style: pre-LN with LayerNorm, learned absolute positions, biases on every linear layer, a
GELU MLP (``gelu_new``, the tanh approximation: ``openai_gelu: true``; or the exact ``gelu``),
multi-head attention, tied head. Megatron-Core's ``GPTModel`` with
``position_embedding_type: learned_absolute``, ``normalization: LayerNorm``, ``swiglu: false`` and
``add_bias_linear: true`` is this model exactly.

HF's ``Conv1D`` layers store ``[in, out]``, the transpose of a linear weight; ``c_attn`` is all
query heads, then all key heads, then all value heads, which Megatron interleaves per head.

Tensor names::

    Megatron-Core checkpoint key (layers stacked)       GPT2LMHeadModel (layer i)
    embedding.word_embeddings.weight                    transformer.wte.weight (vocabulary padding dropped)
    embedding.position_embeddings.weight                transformer.wpe.weight
    decoder.layers.self_attention.linear_qkv
        .layer_norm_weight / .layer_norm_bias           transformer.h.i.ln_1.weight / .bias
        .weight / .bias                                 attn.c_attn.weight (transposed) / .bias ([q; k; v])
    decoder.layers.self_attention.linear_proj           attn.c_proj (transposed)
    decoder.layers.mlp.linear_fc1
        .layer_norm_weight / .layer_norm_bias           transformer.h.i.ln_2.weight / .bias
        .weight / .bias                                 mlp.c_fc (transposed)
    decoder.layers.mlp.linear_fc2                       mlp.c_proj (transposed)
    decoder.final_layernorm                             transformer.ln_f
    output_layer.weight (untied models only)            lm_head.weight

Export modes are Llama's (``hf_llama.py``): ``add_head`` (the input embeddings as the head) and
``lm`` (the trained head).
"""

from __future__ import annotations

from typing import Any

import torch

from headless_megatron.config import TrainConfig
from headless_megatron.models.gpt.hf_llama import LlamaConversion
from headless_megatron.models.hf_mapping import (
    LAYER,
    ConversionError,
    TensorMapping,
    gelu_mlp_settings_missing,
    merge_qkv,
    split_qkv,
    vocab_rows_mapping,
)

HF_LAYER = f"transformer.h.{LAYER}."
GPT2_STYLE = ("LayerNorm, learned absolute positions, biases on every linear layer, a GELU MLP and multi-head "
              "attention")
# GELUs by the names transformers gives them: the tanh approximation (two spellings) or the exact one.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
# Not weights: the causal-mask buffers older transformers versions saved.
LEFT_OUT_ON_IMPORT = (".attn.bias", ".attn.masked_bias")


def _transposed_to_hf(weight: torch.Tensor) -> tuple[torch.Tensor]:
    return (weight.t(),)


def _transposed_to_megatron(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tensors[0].t()


def conv1d_mapping(megatron: str, hf: str) -> TensorMapping:
    """A linear weight and HF's ``Conv1D`` weight, its transpose."""
    return TensorMapping(megatron, (hf,), _transposed_to_hf, _transposed_to_megatron)


def c_attn_mapping(megatron: str, hf: str, num_heads: int, head_dim: int, weight: bool) -> TensorMapping:
    """Megatron's per-head fused QKV weight (or bias) and ``c_attn``'s ``[q | k | v]`` columns."""

    def to_hf(fused: torch.Tensor) -> tuple[torch.Tensor]:
        columns = torch.cat(split_qkv(fused, num_heads, num_heads, head_dim))
        return (columns.t() if weight else columns,)

    def to_megatron(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        rows = tensors[0].t() if weight else tensors[0]
        return merge_qkv(*torch.chunk(rows, 3), num_heads, num_heads, head_dim)

    return TensorMapping(megatron, (hf,), to_hf, to_megatron)


def unsupported_settings(config: TrainConfig) -> list[str]:
    """The settings of ``config`` that ``GPT2LMHeadModel`` cannot represent, as ``key value``."""
    return gelu_mlp_settings_missing(config)


class GPT2Conversion(LlamaConversion):
    """A GPT-2-style decoder checkpoint; its modes and model card are those of the Llama-style ones."""

    hf_architecture = "GPT2LMHeadModel"
    hf_model_type = "gpt2"
    family_style = "GPT-2-style"
    style = GPT2_STYLE

    @classmethod
    def cannot_represent(cls, config: TrainConfig) -> list[str]:
        return unsupported_settings(config)

    def mappings(self, mode: str) -> list[TensorMapping]:
        heads, head_dim = self.config.num_attention_heads, self.config.head_dim
        attention, mlp = HF_LAYER + "attn.", HF_LAYER + "mlp."
        mappings = [
            vocab_rows_mapping("embedding.word_embeddings.weight", "transformer.wte.weight", self.vocab_size,
                               self.padded_vocab_size),
            TensorMapping("embedding.position_embeddings.weight", ("transformer.wpe.weight",)),
            c_attn_mapping("decoder.layers.self_attention.linear_qkv.weight", attention + "c_attn.weight", heads,
                           head_dim, weight=True),
            c_attn_mapping("decoder.layers.self_attention.linear_qkv.bias", attention + "c_attn.bias", heads,
                           head_dim, weight=False),
            conv1d_mapping("decoder.layers.self_attention.linear_proj.weight", attention + "c_proj.weight"),
            TensorMapping("decoder.layers.self_attention.linear_proj.bias", (attention + "c_proj.bias",)),
            conv1d_mapping("decoder.layers.mlp.linear_fc1.weight", mlp + "c_fc.weight"),
            TensorMapping("decoder.layers.mlp.linear_fc1.bias", (mlp + "c_fc.bias",)),
            conv1d_mapping("decoder.layers.mlp.linear_fc2.weight", mlp + "c_proj.weight"),
            TensorMapping("decoder.layers.mlp.linear_fc2.bias", (mlp + "c_proj.bias",)),
        ]
        for kind in ("weight", "bias"):
            mappings += [
                TensorMapping(f"decoder.layers.self_attention.linear_qkv.layer_norm_{kind}",
                              (f"{HF_LAYER}ln_1.{kind}",)),
                TensorMapping(f"decoder.layers.mlp.linear_fc1.layer_norm_{kind}", (f"{HF_LAYER}ln_2.{kind}",)),
                TensorMapping(f"decoder.final_layernorm.{kind}", (f"transformer.ln_f.{kind}",)),
            ]
        if self.lm_head_is_output_layer(mode):
            mappings.append(
                vocab_rows_mapping("output_layer.weight", "lm_head.weight", self.vocab_size, self.padded_vocab_size)
            )
        return mappings

    def unused_hf_tensor(self, name: str) -> bool:
        tied_copy = name == "lm_head.weight" and not self.config.untie_embeddings_and_output_weights
        return tied_copy or name.endswith(LEFT_OUT_ON_IMPORT)

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        """The ``GPT2Config``; ``special_tokens`` has the tokenizer's ``bos``, ``eos`` and ``pad`` ids."""
        from transformers import GPT2Config

        config = self.config
        return GPT2Config(
            architectures=[self.hf_architecture],
            vocab_size=self.vocab_size,
            n_positions=config.max_positions,
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_attention_heads,
            n_inner=None if config.ffn_size == 4 * config.hidden_size else config.ffn_size,
            activation_function=TANH_GELUS[0] if config.openai_gelu else "gelu",
            resid_pdrop=config.hidden_dropout,
            embd_pdrop=config.hidden_dropout,
            attn_pdrop=config.attention_dropout,
            layer_norm_epsilon=config.norm_epsilon,
            initializer_range=config.init_method_std,
            tie_word_embeddings=not self.lm_head_is_output_layer(mode),
            bos_token_id=special_tokens["bos"],
            eos_token_id=special_tokens["eos"],
            pad_token_id=special_tokens["pad"],
            dtype=dtype,
        )

    @classmethod
    def train_config_values(cls, hf_config) -> dict[str, Any]:
        """The architecture fields of a :class:`TrainConfig` for a ``transformers`` GPT-2 config;
        raises ``ConversionError`` naming what Megatron-Core's GPT cannot compute exactly."""
        unsupported = []
        if hf_config.activation_function not in (*TANH_GELUS, "gelu"):
            unsupported.append(f"activation_function {hf_config.activation_function}")
        if not hf_config.scale_attn_weights:
            unsupported.append("scale_attn_weights false")
        if hf_config.scale_attn_by_inverse_layer_idx:
            unsupported.append("scale_attn_by_inverse_layer_idx true")
        if getattr(hf_config, "add_cross_attention", False):
            unsupported.append("add_cross_attention true")
        if unsupported:
            raise ConversionError(
                f"{cls.hf_architecture} with {', '.join(unsupported)} has no Megatron equivalent here "
                f"(its decoders are {GPT2_STYLE}, with tanh or exact GELU)"
            )
        return {
            "model": "gpt",
            "num_layers": hf_config.n_layer,
            "hidden_size": hf_config.n_embd,
            "ffn_hidden_size": hf_config.n_inner or 4 * hf_config.n_embd,
            "num_attention_heads": hf_config.n_head,
            "seq_length": hf_config.n_positions,
            "normalization": "LayerNorm",
            "norm_epsilon": hf_config.layer_norm_epsilon,
            "swiglu": False,
            "openai_gelu": hf_config.activation_function in TANH_GELUS,
            "position_embedding_type": "learned_absolute",
            "add_bias_linear": True,
            "untie_embeddings_and_output_weights": not hf_config.tie_word_embeddings,
            "init_method_std": hf_config.initializer_range,
            "vocab_size": hf_config.vocab_size,
            "loss": "ce",
        }
