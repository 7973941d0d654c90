"""Megatron-Core ``GPTModel`` for one pipeline stage, with layout-independent initial weights."""

from __future__ import annotations

from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from headless_megatron.models.init import initialize_layout_independent
from headless_megatron.models.specs import gpt_block_spec


def build_gpt_stage(
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    seed: int,
    backend: str = "local",
    position_embedding_type: str = "rope",
    share_embeddings_and_output_weights: bool = True,
) -> GPTModel:
    """The part of the decoder that lives on this rank's pipeline stage, initialised from ``seed``."""
    model = GPTModel(
        config,
        gpt_block_spec(config, backend),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        position_embedding_type=position_embedding_type,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
    )
    initialize_layout_independent(model, config, seed)
    return model
