"""The GPT family (``model: gpt``): a causal decoder trained to predict the next token, headless
(CWT) or with its LM head; exported to and imported from ``LlamaForCausalLM``.

This folder: ``model.py`` (the stage builder and ``HeadlessGPTModel``, its CWT head) and
``hf_conversion.py`` (``LlamaConversion``).

Megatron-Core and torch are imported when a model is built or run, not when the family is looked up,
so that validating a config stays cheap.
"""

from __future__ import annotations

from headless_megatron.config.fields import fail
from headless_megatron.config.schema import TrainConfig, field_defaults

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

    def projected_positions(self, config: TrainConfig, loss_positions: int) -> int:
        return config.tokens_per_iteration

    def hf_conversion(self):
        from headless_megatron.models.gpt.hf_conversion import LlamaConversion

        return LlamaConversion
