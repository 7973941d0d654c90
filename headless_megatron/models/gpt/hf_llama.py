"""Llama-style decoders (``model: gpt``) <-> Hugging Face ``LlamaForCausalLM``.

Llama-style: RMSNorm, SwiGLU, rotary positions over whole heads, no linear biases, optionally
grouped-query attention. :class:`LlamaConversion` is also the base of the other Llama-style
classes, which differ only in their config and checks: ``MistralForCausalLM`` (``hf_mistral.py``)
and ``Qwen2ForCausalLM`` (``hf_qwen2.py``, query/key/value biases).

Megatron-Core's non-interleaved rotary embedding is the rotate-half convention of
``transformers``' Llama, so query and key weights are copied without any permutation
(that permutation exists only between Meta's original checkpoints and HF).

Tensor names::

    Megatron-Core checkpoint key (layers stacked)       LlamaForCausalLM (layer i)
    embedding.word_embeddings.weight                    model.embed_tokens.weight (vocabulary padding dropped)
    decoder.layers.self_attention.linear_qkv
        .layer_norm_weight                              model.layers.i.input_layernorm.weight
        .weight                                         self_attn.q_proj / k_proj / v_proj (split per query group)
    decoder.layers.self_attention.linear_proj.weight    self_attn.o_proj.weight
    decoder.layers.mlp.linear_fc1
        .layer_norm_weight                              post_attention_layernorm.weight
        .weight                                         mlp.gate_proj / mlp.up_proj ([gate; up])
    decoder.layers.mlp.linear_fc2.weight                mlp.down_proj.weight
    decoder.final_layernorm.weight                      model.norm.weight
    output_layer.weight (untied models only)            lm_head.weight

Export modes: ``add_head`` uses the input embeddings as the LM head (``tie_word_embeddings``), which
is how the paper evaluates a headless model "used as an LM without fine-tuning"; ``lm`` uses the
trained head: the output layer of an untied model, or the (tied) embeddings of a tied
cross-entropy model, where both modes agree.
"""

from __future__ import annotations

from typing import Any

import torch

from headless_megatron.config import TrainConfig
from headless_megatron.models.hf_mapping import (
    LAYER,
    ConversionError,
    TensorMapping,
    gated_fc1_mapping,
    qkv_mapping,
    vocab_rows_mapping,
)

HF_LAYER = f"model.layers.{LAYER}."
# Not weights: the rotary frequencies that older transformers versions saved.
LEFT_OUT_ON_IMPORT = ("rotary_emb.inv_freq",)
LLAMA_STYLE = "RMSNorm, SwiGLU, rope over whole heads (rotary_percent 1) and no linear biases"


def unsupported_settings(config: TrainConfig, qkv_bias: bool = False) -> list[str]:
    """The settings of ``config`` that a Llama-style HF class cannot represent, as ``key value``;
    ``qkv_bias``: whether the class has query/key/value biases (Qwen2) or none (Llama, Mistral)."""
    unsupported = []
    if config.add_qkv_bias != qkv_bias:
        unsupported.append(f"add_qkv_bias {str(config.add_qkv_bias).lower()}")
    if config.normalization != "RMSNorm":
        unsupported.append(f"normalization {config.normalization}")
    if not config.swiglu:
        unsupported.append("swiglu false")
    if config.position_embedding_type != "rope":
        unsupported.append(f"position_embedding_type {config.position_embedding_type}")
    elif config.rotary_percent != 1.0:
        unsupported.append(f"rotary_percent {config.rotary_percent}")
    if config.add_bias_linear:
        unsupported.append("add_bias_linear true")
    return unsupported


class LlamaConversion:
    """A Llama-style decoder checkpoint of ``config`` with a vocabulary of ``vocab_size`` real tokens."""

    hf_architecture = "LlamaForCausalLM"
    hf_model_type = "llama"
    modes = ("add_head", "lm")
    import_mode = "lm"
    qkv_bias = False
    """Whether the HF class has query/key/value biases (and no other)."""
    family_style = "Llama-style"
    """What the decoders the HF class holds are called, for refusals."""
    style = LLAMA_STYLE
    """What the HF class holds, for refusals."""

    @classmethod
    def cannot_represent(cls, config: TrainConfig) -> list[str]:
        """The settings of ``config`` this HF class cannot hold, as ``key value`` (none: it can)."""
        return unsupported_settings(config, cls.qkv_bias)

    def __init__(self, config: TrainConfig, vocab_size: int):
        unsupported = self.cannot_represent(config)
        if unsupported:
            raise ConversionError(
                f"{self.hf_architecture} cannot represent {', '.join(unsupported)}: it holds {self.family_style} "
                f"decoders ({self.style})"
            )
        self.config = config
        self.vocab_size = vocab_size
        self.padded_vocab_size = config.padded_vocab_size(vocab_size)

    # ---- Modes ----

    def default_mode(self) -> str:
        return "add_head" if self.config.loss == "cwt" else "lm"

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ConversionError(
                f"--mode {mode}: a gpt checkpoint exports to {self.hf_architecture} with --mode "
                f"{' or '.join(self.modes)} (mlm is for bert encoders)"
            )
        if mode == "lm" and self.config.loss == "cwt":
            raise ConversionError(
                "--mode lm: this checkpoint is headless (loss cwt) and has no trained LM head; export it "
                "with --mode add_head (its input embeddings as the head) or fine-tune it with loss ce first"
            )

    def lm_head_is_output_layer(self, mode: str) -> bool:
        """Whether ``mode`` exports the checkpoint's own output layer (else the tied input embeddings)."""
        return mode == "lm" and self.config.untie_embeddings_and_output_weights

    # ---- Tensors ----

    def mappings(self, mode: str) -> list[TensorMapping]:
        config = self.config
        attention, mlp = HF_LAYER + "self_attn.", HF_LAYER + "mlp."
        mappings = [
            vocab_rows_mapping("embedding.word_embeddings.weight", "model.embed_tokens.weight",
                               self.vocab_size, self.padded_vocab_size),
            TensorMapping("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
                          (HF_LAYER + "input_layernorm.weight",)),
            qkv_mapping("decoder.layers.self_attention.linear_qkv.weight",
                        (attention + "q_proj.weight", attention + "k_proj.weight", attention + "v_proj.weight"),
                        config.num_attention_heads, config.query_groups, config.head_dim),
            *self.qkv_bias_mappings(),
            TensorMapping("decoder.layers.self_attention.linear_proj.weight", (attention + "o_proj.weight",)),
            TensorMapping("decoder.layers.mlp.linear_fc1.layer_norm_weight",
                          (HF_LAYER + "post_attention_layernorm.weight",)),
            gated_fc1_mapping("decoder.layers.mlp.linear_fc1.weight", mlp + "gate_proj.weight", mlp + "up_proj.weight"),
            TensorMapping("decoder.layers.mlp.linear_fc2.weight", (mlp + "down_proj.weight",)),
            TensorMapping("decoder.final_layernorm.weight", ("model.norm.weight",)),
        ]
        if self.lm_head_is_output_layer(mode):
            mappings.append(
                vocab_rows_mapping("output_layer.weight", "lm_head.weight", self.vocab_size, self.padded_vocab_size)
            )
        return mappings

    def qkv_bias_mappings(self) -> list[TensorMapping]:
        if not self.config.add_qkv_bias:
            return []
        attention, config = HF_LAYER + "self_attn.", self.config
        return [qkv_mapping("decoder.layers.self_attention.linear_qkv.bias",
                            (attention + "q_proj.bias", attention + "k_proj.bias", attention + "v_proj.bias"),
                            config.num_attention_heads, config.query_groups, config.head_dim)]

    def unused_hf_tensor(self, name: str) -> bool:
        tied_copy = name == "lm_head.weight" and not self.config.untie_embeddings_and_output_weights
        return tied_copy or name.endswith(LEFT_OUT_ON_IMPORT)

    # ---- Configs and model card ----

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        """The ``LlamaConfig``; ``special_tokens`` has the tokenizer's ``bos``, ``eos`` and ``pad`` ids."""
        from transformers import LlamaConfig

        return LlamaConfig(**self.llama_style_config(mode, special_tokens, dtype), attention_bias=False,
                           mlp_bias=False, head_dim=self.config.head_dim)

    def llama_style_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype) -> dict:
        """The config values every Llama-style HF class shares."""
        config = self.config
        return dict(
            architectures=[self.hf_architecture],
            vocab_size=self.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.ffn_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.query_groups,
            hidden_act="silu",
            max_position_embeddings=config.max_positions,
            rms_norm_eps=config.norm_epsilon,
            initializer_range=config.init_method_std,
            rope_parameters={"rope_type": "default", "rope_theta": float(config.rotary_base)},
            tie_word_embeddings=not self.lm_head_is_output_layer(mode),
            bos_token_id=special_tokens["bos"],
            eos_token_id=special_tokens["eos"],
            pad_token_id=special_tokens["pad"],
            dtype=dtype,
        )

    def pipeline_tag(self, mode: str) -> str:
        return "text-generation"

    def head_description(self, mode: str) -> str:
        if mode == "add_head":
            return ("the input embeddings, tied (the headless model used as a language model without "
                    "fine-tuning; the paper finds it needs fine-tuning to be a good one)")
        if self.config.untie_embeddings_and_output_weights:
            return "the trained output layer"
        return "the input embeddings, tied, as in training"

    def usage(self, path: str) -> str:
        return (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
                f'model = AutoModelForCausalLM.from_pretrained("{path}")\n'
                f'ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids\n'
                f'print(tokenizer.decode(model.generate(ids, max_new_tokens=20)[0]))')

    @classmethod
    def train_config_values(cls, hf_config) -> dict[str, Any]:
        """The architecture fields of a :class:`TrainConfig` for a ``transformers`` Llama config;
        raises ``ConversionError`` naming what our decoders cannot represent."""
        unsupported = []
        if getattr(hf_config, "attention_bias", False):
            unsupported.append("attention_bias true")
        if getattr(hf_config, "mlp_bias", False):
            unsupported.append("mlp_bias true")
        return cls.llama_style_values(hf_config, unsupported)

    @classmethod
    def llama_style_values(cls, hf_config, unsupported: list[str]) -> dict[str, Any]:
        """:meth:`train_config_values` of any Llama-style class, after its own checks found
        ``unsupported`` (``key value`` of the HF config)."""
        unsupported = list(unsupported)
        if hf_config.hidden_act != "silu":
            unsupported.insert(0, f"hidden_act {hf_config.hidden_act}")
        rope = getattr(hf_config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            unsupported.append(f"rope_type {rope['rope_type']} (rope scaling)")
        rope_theta = rope.get("rope_theta", 10000.0)
        if rope_theta != int(rope_theta):
            unsupported.append(f"rope_theta {rope_theta} (rotary_base is an integer)")
        if unsupported:
            raise ConversionError(
                f"{cls.hf_architecture} with {', '.join(unsupported)} has no Megatron equivalent here "
                f"(its decoders are {cls.style})"
            )
        heads = hf_config.num_attention_heads
        return {
            "model": "gpt",
            "num_layers": hf_config.num_hidden_layers,
            "hidden_size": hf_config.hidden_size,
            "ffn_hidden_size": hf_config.intermediate_size,
            "num_attention_heads": heads,
            "num_query_groups": hf_config.num_key_value_heads or heads,
            "kv_channels": getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
            "seq_length": hf_config.max_position_embeddings,
            "normalization": "RMSNorm",
            "norm_epsilon": hf_config.rms_norm_eps,
            "swiglu": True,
            "position_embedding_type": "rope",
            "rotary_base": int(rope_theta),
            "rotary_percent": 1.0,
            "add_bias_linear": False,
            "add_qkv_bias": cls.qkv_bias,
            "untie_embeddings_and_output_weights": not hf_config.tie_word_embeddings,
            "init_method_std": hf_config.initializer_range,
            "vocab_size": hf_config.vocab_size,
            "loss": "ce",
        }
