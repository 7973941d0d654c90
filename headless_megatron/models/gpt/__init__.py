"""The GPT family (``model: gpt``): a causal decoder trained to predict the next token, headless
(CWT) or with its LM head; exported to and imported from ``LlamaForCausalLM``,
``Qwen2ForCausalLM``, ``GPT2LMHeadModel`` and ``MistralForCausalLM``.

This folder: ``model.py`` (the stage builder and ``HeadlessGPTModel``, its CWT head) and one module
per Hugging Face class: ``hf_llama.py``, ``hf_qwen2.py``, ``hf_gpt2.py``, ``hf_mistral.py``.

Megatron-Core and torch are imported when a model is built or run, not when the family is looked up,
so that validating a config stays cheap.
"""

from __future__ import annotations

from headless_megatron.config.fields import fail
from headless_megatron.config.loader import field_defaults
from headless_megatron.config.schema import TrainConfig
from headless_megatron.models.family import embedding_and_output_parameters

# Keys of the masked-LM objective: a decoder learns every next token, so a value set here for a GPT
# would be ignored without a word.
_MASKED_LM_KEYS = ("masking", "mask_prob")


class GPTFamily:
    """:class:`~headless_megatron.models.family.ModelFamily` of :mod:`headless_megatron.models.gpt.model`."""

    name = "gpt"
    kind = "decoder"
    objective = "language modelling"

    def validate(self, config: TrainConfig) -> None:
        if config.mlm_project_masked_only:
            fail("mlm_project_masked_only", "applies to model bert with loss ce only")
        defaults = field_defaults()
        for key in _MASKED_LM_KEYS:
            if getattr(config, key) != defaults[key]:
                fail(key, "applies to model bert only (a GPT learns every next token); remove it")
        if config.transformer_block_type != "pre_ln":
            fail("transformer_block_type", "post_ln applies to model bert only (GPT decoders are pre_ln)")
        if config.num_tokentypes:
            fail("num_tokentypes", "applies to model bert only (a GPT has no token types); remove it")

    def build_stage(self, config: TrainConfig, transformer_config, **stage_arguments):
        from headless_megatron.models.gpt.model import build_gpt_stage

        return build_gpt_stage(
            transformer_config, rotary_base=config.rotary_base, rotary_percent=config.rotary_percent,
            **stage_arguments,
        )

    def wrap_data(self, config: TrainConfig, tokenizer, windows):
        return windows  # a window's tokens are their own next-token labels

    def forward(self, model, batch):
        return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"], loss_mask=batch["loss_mask"])

    def attended_positions(self, seq_length: int) -> float:
        return seq_length / 2

    def projected_positions(self, config: TrainConfig, loss_positions: int, tokens: int) -> int:
        return tokens

    def stage_parameters(self, config: TrainConfig, padded_vocab: int, tp: int, *, first: bool, last: bool) -> int:
        final_norm = config.norm_parameters if last else 0
        return embedding_and_output_parameters(config, padded_vocab, tp, first=first, last=last) + final_norm

    def hf_conversions(self):
        from headless_megatron.models.gpt.hf_gpt2 import GPT2Conversion
        from headless_megatron.models.gpt.hf_llama import LlamaConversion
        from headless_megatron.models.gpt.hf_mistral import MistralConversion
        from headless_megatron.models.gpt.hf_qwen2 import Qwen2Conversion

        return LlamaConversion, Qwen2Conversion, GPT2Conversion, MistralConversion
