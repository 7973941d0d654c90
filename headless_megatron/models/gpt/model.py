"""Megatron-Core ``GPTModel`` for one pipeline stage: headless (CWT) or with the usual LM head.

:class:`HeadlessGPTModel` overrides only ``_postprocess``, the step after the decoder's final norm:
instead of projecting to the vocabulary it returns the CWT loss against the tied input-embedding
table (``shared_embedding_or_output_weight()``: the vocab shard on the first stage, or the tied copy
that Megatron keeps in sync on the last stage). No ``[s, b, V]`` logits exist. Building with
``share_embeddings_and_output_weights=True`` gives, from Megatron itself, no output-layer parameter
at PP=1, the synchronised copy at PP>1 (its gradient is all-reduced with the embedding's in
``finalize_model_grads``) and a checkpoint that stores the table once.
"""

from __future__ import annotations

from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from headless_megatron.cwt import CWTOptions, cwt_loss
from headless_megatron.models.init import initialize_layout_independent
from headless_megatron.models.specs import gpt_block_spec
from headless_megatron.models.vocab_padding import hide_vocab_padding


class HeadlessGPTModel(GPTModel):
    """``GPTModel`` whose last stage returns the per-token CWT loss ``[b, s]`` given ``labels``."""

    def __init__(self, *args, cwt: CWTOptions = CWTOptions(), **kwargs):
        super().__init__(*args, **kwargs)
        if not self.share_embeddings_and_output_weights:
            raise ValueError("a headless model scores against its input embeddings: keep them tied")
        if self.config.mtp_num_layers:
            raise ValueError("multi-token prediction has no CWT variant; unset mtp_num_layers")
        self.cwt = cwt

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, loss_mask=None, **kwargs):
        if not self.post_process:
            return hidden_states
        if labels is None:
            # Without a head there are no logits: a headless model's output is its representation.
            if self.config.sequence_parallel:
                from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

                hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
            return hidden_states.transpose(0, 1).contiguous()
        loss = cwt_loss(
            hidden_states,
            labels.t(),
            self.shared_embedding_or_output_weight(),
            loss_mask=None if loss_mask is None else loss_mask.t(),
            temperature=self.cwt.temperature,
            duplicates=self.cwt.duplicates,
            negatives=self.cwt.negatives,
        )
        return loss.t().contiguous()


def build_gpt_stage(
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    seed: int,
    backend: str = "local",
    real_vocab_size: int | None = None,
    position_embedding_type: str = "rope",
    share_embeddings_and_output_weights: bool = True,
    cwt: CWTOptions | None = None,
    rotary_base: int = 10000,
    rotary_percent: float = 1.0,
    vp_stage: int | None = None,
) -> GPTModel:
    """The part of the decoder on this rank's pipeline stage (its model chunk ``vp_stage`` with
    virtual pipeline stages), initialised from ``seed``.

    ``cwt`` given: a :class:`HeadlessGPTModel`; otherwise Megatron's ``GPTModel`` with its
    (tied or untied) vocab-parallel output layer and cross-entropy, whose rows from
    ``real_vocab_size`` up to the padded ``vocab_size`` are never predicted (``hide_vocab_padding``).
    """
    kwargs = dict(
        config=config,
        transformer_layer_spec=gpt_block_spec(config, backend, vp_stage=vp_stage),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        vp_stage=vp_stage,
        position_embedding_type=position_embedding_type,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        rotary_base=rotary_base,
        rotary_percent=rotary_percent,
    )
    model = HeadlessGPTModel(cwt=cwt, **kwargs) if cwt is not None else GPTModel(**kwargs)
    if cwt is None and model.post_process and real_vocab_size is not None:
        hide_vocab_padding(model.output_layer, real_vocab_size)
    initialize_layout_independent(model, config, seed)
    return model
