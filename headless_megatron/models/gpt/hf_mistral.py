"""Llama-style decoders (``model: gpt``) <-> Hugging Face ``MistralForCausalLM``.

Mistral is Llama's architecture with grouped-query attention and, in its first release, a
sliding attention window. Its tensors are named as Llama's (``hf_llama.py``); only the config
differs. A window shorter than the model's positions (Mistral-7B-v0.1: 4096 of 32768) is attention
that Megatron-Core's GPT computes differently, so such a model is refused, never converted
approximately; later Mistrals set ``sliding_window`` null. Export writes Mistral only when asked
(``export-hf --model-type mistral``): the same checkpoint is also a Llama.
"""

from __future__ import annotations

from typing import Any

import torch

from headless_megatron.models.gpt.hf_llama import LlamaConversion


class MistralConversion(LlamaConversion):
    """:class:`~headless_megatron.models.gpt.hf_llama.LlamaConversion` with Mistral's config."""

    hf_architecture = "MistralForCausalLM"
    hf_model_type = "mistral"

    def hf_config(self, mode: str, special_tokens: dict[str, int | None], dtype: torch.dtype):
        from transformers import MistralConfig

        return MistralConfig(**self.llama_style_config(mode, special_tokens, dtype), head_dim=self.config.head_dim,
                             sliding_window=None)

    @classmethod
    def train_config_values(cls, hf_config) -> dict[str, Any]:
        window, positions = getattr(hf_config, "sliding_window", None), hf_config.max_position_embeddings
        unsupported = []
        if window is not None and window < positions:
            unsupported.append(f"sliding_window {window} (attention over the last {window} positions of "
                               f"max_position_embeddings {positions})")
        return cls.llama_style_values(hf_config, unsupported)
