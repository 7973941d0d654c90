"""The BERT family (``model: bert``): a bidirectional encoder trained on masked positions, headless
(CWT on the masked positions) or with its MLM head; exported to and imported from
``MegatronBertForMaskedLM``. Its keys are the ``masking``, ``mask_prob`` and ``mlm_*`` fields.

This folder: ``model.py`` (the stage builder and ``HeadlessBertModel``, its CWT and MLM heads),
``masking.py`` (the MLM corruption of the data) and one module per Hugging Face class:
``hf_megatron_bert.py`` (pre-LN, ``MegatronBertConversion``) and ``hf_bert.py`` (the original
post-LN BERT, ``BertConversion``).

Megatron-Core and torch are imported when a model is built or run, not when the family is looked up,
so that validating a config stays cheap.
"""

from __future__ import annotations

from headless_megatron.config.fields import fail
from headless_megatron.config.schema import TrainConfig
from headless_megatron.models.family import embedding_and_output_parameters


class BertFamily:
    """:class:`~headless_megatron.models.family.ModelFamily` of :mod:`headless_megatron.models.bert.model`."""

    name = "bert"
    kind = "encoder"
    objective = "masked language modelling"

    def validate(self, config: TrainConfig) -> None:
        if config.mlm_project_masked_only and config.loss != "ce":
            fail("mlm_project_masked_only", "applies to model bert with loss ce only")
        if config.mlm_project_masked_only and config.sequence_parallel:
            fail("mlm_project_masked_only", "not supported with sequence_parallel; drop one of them")

    def build_stage(self, config: TrainConfig, transformer_config, **stage_arguments):
        from headless_megatron.models.bert.model import build_bert_stage

        return build_bert_stage(
            transformer_config, project_masked_only=config.mlm_project_masked_only,
            post_layer_norm=config.transformer_block_type == "post_ln", num_tokentypes=config.num_tokentypes,
            **stage_arguments,
        )

    def wrap_data(self, config: TrainConfig, tokenizer, windows):
        from headless_megatron.models.bert.masking import MaskedLMDataset

        return MaskedLMDataset(windows, masking_for(config, tokenizer), config.seed)

    def forward(self, model, batch):
        return model(batch["tokens"], batch["padding_mask"], lm_labels=batch["labels"], loss_mask=batch["loss_mask"])

    def attended_positions(self, seq_length: int) -> float:
        return seq_length

    def projected_positions(self, config: TrainConfig, loss_positions: int, tokens: int) -> int:
        # mlm_project_masked_only: the head sees the loss (masked) positions alone
        return loss_positions if config.mlm_project_masked_only else tokens

    def stage_parameters(self, config: TrainConfig, padded_vocab: int, tp: int, *, first: bool, last: bool) -> int:
        h, norm = config.hidden_size, config.norm_parameters
        post_ln = config.transformer_block_type == "post_ln"
        count = embedding_and_output_parameters(config, padded_vocab, tp, first=first, last=last)
        if first:
            count += config.num_tokentypes * h + (norm if post_ln else 0)  # BERT's embedding norm
        if last:
            count += 0 if post_ln else norm  # the encoder's final norm
            if config.loss == "ce":  # BertLMHead (dense, GELU, norm) and the output bias
                count += h * h + h + norm + padded_vocab // tp
        return count

    def hf_conversions(self):
        from headless_megatron.models.bert.hf_bert import BertConversion
        from headless_megatron.models.bert.hf_megatron_bert import MegatronBertConversion

        return MegatronBertConversion, BertConversion


def masking_for(config: TrainConfig, tokenizer):
    """The MLM corruption of ``config`` with ``tokenizer``'s mask and special ids (mock data: the last ids)."""
    from headless_megatron.models.bert.masking import Masking

    vocab = config.vocab_size or tokenizer.vocab_size
    if tokenizer is None:
        return Masking(config.masking, config.mask_prob, mask_id=vocab - 2, vocab_size=vocab, special_ids=(vocab - 1,))
    specials = tuple(i for i in (tokenizer.eod, tokenizer.pad, tokenizer.mask, tokenizer.bos) if i is not None)
    return Masking(config.masking, config.mask_prob, tokenizer.mask, vocab, specials)
