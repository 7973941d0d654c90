"""Megatron-Core ``BertModel`` for one pipeline stage: headless (CWT on the masked positions) or
with its MLM head (optionally projecting the masked positions only).

``BertModel.forward`` has no post-processing hook, so :class:`HeadlessBertModel` overrides
``forward``: the embedding and encoder part is BertModel's own (``bert_extended_attention_mask``,
``bert_position_ids``, ``self.embedding``, ``self.encoder``), and what follows the encoder's final
norm is ours:

* ``cwt``: :func:`headless_megatron.cwt.cwt_loss` with the MLM loss mask, so that the masked
  positions alone are queries and negatives and the original tokens are the targets, against the
  tied word-embedding table. The model has no LM head (dense + norm) and no output bias at all; the
  output layer only holds Megatron's tied table copy on a last pipeline stage.
* ``ce``: BertModel's LM head, tied output layer and vocab-parallel cross-entropy; with
  ``project_masked_only`` the head and the vocabulary projection see the masked positions only (the
  same loss values, fewer FLOPs), as modern MLM baselines do.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.bert.bert_layer_specs import bert_layer_local_spec
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.transformer.transformer_config import TransformerConfig

from headless_megatron.cwt import CWTOptions, cwt_loss
from headless_megatron.models.attention import SDPAttention
from headless_megatron.models.init import initialize_layout_independent
from headless_megatron.models.post_layer_norm import add_embedding_norm, post_ln_layer_spec
from headless_megatron.models.specs import TorchNorm, local_layer_spec
from headless_megatron.models.vocab_padding import hide_vocab_padding


def make_bert_norms_sequence_parallel_capable() -> None:
    """Let BertModel's own norms run under sequence parallelism without apex or TE.

    BertModel builds its encoder's final norm and its LM head's norm from module-level choices
    (``transformer_block.LayerNormImpl``, ``bert_lm_head.LNImpl``) that fall back to Megatron's
    ``WrappedTorchNorm`` when apex and TE are absent, and that one refuses sequence parallelism.
    Those choices are rebound to :class:`~headless_megatron.models.specs.TorchNorm`: the same torch
    modules and state-dict keys, with parameters tagged for the SP gradient all-reduce. Megatron's
    own ``LocalSpecProvider`` rebinds such a global the same way. A no-op when apex or TE is there.
    """
    from megatron.core.models.bert import bert_lm_head
    from megatron.core.transformer import torch_norm, transformer_block

    if bert_lm_head.LNImpl is torch_norm.WrappedTorchNorm:
        bert_lm_head.LNImpl = TorchNorm
    if transformer_block.LayerNormImpl is torch_norm.WrappedTorchNorm:
        transformer_block.LayerNormImpl = TorchNorm


class HeadlessBertModel(BertModel):
    """``BertModel`` returning the per-token MLM loss ``[b, s]`` (zero off the masked positions)."""

    def __init__(self, *args, cwt: CWTOptions | None = None, project_masked_only: bool = False,
                 post_layer_norm: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if post_layer_norm:
            if self.pre_process:
                add_embedding_norm(self.embedding, self.config)
            self.encoder.final_layernorm = None  # a post-LN encoder ends with its last layer's norm
        self.cwt = cwt
        self.project_masked_only = project_masked_only
        if cwt is not None and self.post_process:
            if not self.share_embeddings_and_output_weights:
                raise ValueError("a headless model scores against its input embeddings: keep them tied")
            del self.lm_head
            self.output_layer.bias = None
        if project_masked_only and self.config.sequence_parallel:
            raise ValueError("mlm_project_masked_only: not supported with sequence_parallel")

    def _sanity_check_attention_and_get_attn_mask_dimension(self) -> str:
        """BertModel asks Transformer Engine's version unless the core attention is exactly Megatron's
        ``DotProductAttention``; ``SDPAttention`` takes the key-padding mask ``[b, 1, 1, s]``."""
        core_attention = self.transformer_layer_spec.submodules.self_attention.submodules.core_attention
        if core_attention is SDPAttention:
            return "b11s"
        return super()._sanity_check_attention_and_get_attn_mask_dimension()

    def forward(self, input_ids, attention_mask, tokentype_ids=None, lm_labels=None, loss_mask=None):
        """``attention_mask`` is BERT's ``[b, s]`` padding mask (1 = keep); ``loss_mask`` marks the
        masked positions, ``lm_labels`` holds their original ids."""
        hidden = self._encode(input_ids, attention_mask, tokentype_ids)
        if not self.post_process:
            return hidden
        if lm_labels is None:
            raise ValueError("HeadlessBertModel needs lm_labels (and loss_mask) on the last stage")
        if self.cwt is not None:
            return cwt_loss(
                hidden, lm_labels.t(), self.shared_embedding_or_output_weight(), loss_mask=loss_mask.t(),
                temperature=self.cwt.temperature, duplicates=self.cwt.duplicates, negatives=self.cwt.negatives,
            ).t().contiguous()
        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        if self.project_masked_only:
            return self._masked_positions_cross_entropy(hidden, lm_labels, loss_mask, weight)
        logits, _ = self.output_layer(self.lm_head(hidden_states=hidden), weight=weight)
        return self.compute_language_model_loss(lm_labels, logits)

    def _encode(self, input_ids, attention_mask, tokentype_ids):
        """BertModel's embedding and encoder: ``[s, b, h]`` after the final norm (``[s/tp, ...]`` with SP)."""
        extended_attention_mask = self.bert_extended_attention_mask(attention_mask)
        encoder_input = None
        if self.pre_process:
            position_ids = self.bert_position_ids(input_ids)
            if tokentype_ids is None and self.embedding.tokentype_embeddings is not None:
                tokentype_ids = torch.zeros_like(input_ids)  # one segment: every token is of type 0
            encoder_input = self.embedding(input_ids=input_ids, position_ids=position_ids, tokentype_ids=tokentype_ids)
        rotary_pos_emb = None
        if self.position_embedding_type == "rope":
            rotary_pos_emb = self.rotary_pos_emb(
                self.rotary_pos_emb.get_rotary_seq_len(None, self.encoder, encoder_input, self.config)
            )
        return self.encoder(hidden_states=encoder_input, attention_mask=extended_attention_mask,
                            rotary_pos_emb=rotary_pos_emb)

    def _masked_positions_cross_entropy(self, hidden, lm_labels, loss_mask, weight):
        """The MLM head and projection on the masked positions only, scattered back to ``[b, s]``."""
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        seq, batch = hidden.shape[:2]
        positions = (loss_mask.t().reshape(-1) != 0).nonzero().squeeze(1)
        selected = hidden.reshape(seq * batch, 1, -1).index_select(0, positions)  # [K, 1, h]
        logits, _ = self.output_layer(self.lm_head(hidden_states=selected), weight=weight)
        rows = vocab_parallel_cross_entropy(logits.float(), lm_labels.t().reshape(-1, 1).index_select(0, positions))
        loss = torch.zeros(seq * batch, dtype=rows.dtype, device=rows.device).index_put((positions,), rows.view(-1))
        return loss.view(seq, batch).t().contiguous()


def bert_layer_spec(backend: str, config: TransformerConfig, post_layer_norm: bool = False):
    """BertModel's layer spec: the post-LN layer when asked for, else TE's when usable, else
    Megatron's local one with SP-capable norms and fused attention."""
    if post_layer_norm:
        return post_ln_layer_spec(config)
    if backend == "transformer_engine":
        from megatron.core.models.bert.bert_layer_specs import get_bert_layer_with_transformer_engine_spec

        return get_bert_layer_with_transformer_engine_spec()
    return local_layer_spec(bert_layer_local_spec, config)


def build_bert_stage(
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    seed: int,
    backend: str = "local",
    real_vocab_size: int | None = None,
    position_embedding_type: str = "learned_absolute",
    cwt: CWTOptions | None = None,
    project_masked_only: bool = False,
    share_embeddings_and_output_weights: bool = True,
    post_layer_norm: bool = False,
    num_tokentypes: int = 0,
    vp_stage: int | None = None,
) -> HeadlessBertModel:
    """The part of the encoder on this rank's pipeline stage (its model chunk ``vp_stage`` with
    virtual pipeline stages), initialised from ``seed``; ``post_layer_norm``: the original BERT's
    layers (:mod:`headless_megatron.models.post_layer_norm`). The MLM head's rows from
    ``real_vocab_size`` up to the padded ``vocab_size`` are never predicted (``hide_vocab_padding``)."""
    make_bert_norms_sequence_parallel_capable()
    model = HeadlessBertModel(
        config=config,
        num_tokentypes=num_tokentypes,
        transformer_layer_spec=bert_layer_spec(backend, config, post_layer_norm),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        vp_stage=vp_stage,
        position_embedding_type=position_embedding_type,
        add_binary_head=False,
        cwt=cwt,
        project_masked_only=project_masked_only,
        post_layer_norm=post_layer_norm,
    )
    if cwt is None and model.post_process and real_vocab_size is not None:
        hide_vocab_padding(model.output_layer, real_vocab_size)
    initialize_layout_independent(model, config, seed)
    return model

