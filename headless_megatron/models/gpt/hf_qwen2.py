"""Llama-style decoders with query/key/value biases (``model: gpt``, ``add_qkv_bias: true``) <->
Hugging Face ``Qwen2ForCausalLM``.

Qwen2 is Llama's architecture (``hf_llama.py``) with biases on ``q_proj``, ``k_proj`` and
``v_proj`` alone, which Megatron-Core holds as ``linear_qkv.bias`` (``add_qkv_bias``), fused per
query group like the weight. Its head is tied (the small models) or untied, its ``rope_theta``
usually 1e6. Sliding-window attention (``use_sliding_window``, or ``sliding_attention`` in
``layer_types``) is attention that Megatron-Core's GPT computes differently: refused.
"""

from __future__ import annotations

from typing import Any

import torch

from headless_megatron.models.gpt.hf_llama import LLAMA_STYLE, LlamaConversion


class Qwen2Conversion(LlamaConversion):
    """:class:`~headless_megatron.models.gpt.hf_llama.LlamaConversion` with query/key/value biases."""

    hf_architecture = "Qwen2ForCausalLM"
    hf_model_type = "qwen2"
    qkv_bias = True
    style = LLAMA_STYLE.replace("no linear biases", "query/key/value biases alone (add_qkv_bias true)")

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        from transformers import Qwen2Config

        config = self.config
        # Qwen2Config has no head_dim; its attention reads one when the config holds it.
        head_dim = {} if config.head_dim * config.num_attention_heads == config.hidden_size else {
            "head_dim": config.head_dim}
        return Qwen2Config(**self.llama_style_config(mode, special_tokens, dtype), use_sliding_window=False,
                           **head_dim)

    @classmethod
    def train_config_values(cls, hf_config) -> dict[str, Any]:
        unsupported = []
        if getattr(hf_config, "use_sliding_window", False):
            unsupported.append(f"use_sliding_window true (sliding_window {hf_config.sliding_window})")
        layer_types = getattr(hf_config, "layer_types", None) or []
        sliding = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
        if sliding and not unsupported:
            unsupported.append(f"layer_types {hf_config.layer_types[sliding[0]]} (layer {sliding[0]})")
        return cls.llama_style_values(hf_config, unsupported)
