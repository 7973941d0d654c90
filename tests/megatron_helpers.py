"""Tiny Megatron-Core models and one training step, shared by the multi-rank tests.

Everything here runs inside a rank started by ``local_ranks.run_on_ranks`` (tests/local_ranks.py).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.models.gpt import GPTModel
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.transformer_config import TransformerConfig

from headless_megatron.models.bert.model import build_bert_stage
from headless_megatron.models.gpt.model import build_gpt_stage

VOCAB = 128
SEQ = 16
GLOBAL_BATCH = 4
SEED = 7


def tiny_config(sequence_parallel=False, llama=True, **overrides) -> TransformerConfig:
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    arch = dict(
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False
    ) if llama else dict(normalization="LayerNorm")
    return TransformerConfig(
        num_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        ffn_hidden_size=64,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=sequence_parallel and tp > 1,
        pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        calculate_per_token_loss=True,  # DDP reads it at construction: sum grads, scale by 1/tokens
        **arch,
        **overrides,
    )


def build_gpt(config: TransformerConfig, seed: int = SEED) -> GPTModel:
    return build_gpt_stage(config, vocab_size=VOCAB, max_sequence_length=SEQ, seed=seed)


def build_bert(config: TransformerConfig) -> BertModel:
    """A vanilla BERT (MLM head, cross-entropy) with the project's local spec (fused attention)."""
    return build_bert_stage(config, vocab_size=VOCAB, max_sequence_length=SEQ, seed=SEED)


def wrap_ddp(config, model, distributed_optimizer=False) -> DistributedDataParallel:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer
    )
    config.finalize_model_grads_func = finalize_model_grads
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def global_batch(seed: int = SEED):
    """The same global batch in every layout: tokens, next-token labels, a loss mask with holes."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 100, (GLOBAL_BATCH, SEQ + 1), generator=gen)
    loss_mask = torch.ones(GLOBAL_BATCH, SEQ)
    loss_mask[:, :3] = 0
    return text[:, :-1].contiguous(), text[:, 1:].contiguous(), loss_mask


def micro_batches(micro_batch_size: int):
    """This data-parallel rank's micro-batches of the global batch."""
    tokens, labels, loss_mask = global_batch()
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = GLOBAL_BATCH // dp
    rows = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
    tokens, labels, loss_mask = tokens[rows], labels[rows], loss_mask[rows]
    return [
        (tokens[i : i + micro_batch_size], labels[i : i + micro_batch_size], loss_mask[i : i + micro_batch_size])
        for i in range(0, per_rank, micro_batch_size)
    ]


def _token_sum_loss(loss_mask, output):
    losses = output.float() * loss_mask
    num_tokens = loss_mask.sum().to(torch.int)
    return losses.sum(), num_tokens, {"loss": torch.stack([losses.sum(), num_tokens.float()])}


def gpt_forward_step(data_iterator, model):
    tokens, labels, loss_mask = next(data_iterator)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    output = model(tokens, positions, None, labels=labels)
    return output, partial(_token_sum_loss, loss_mask)


def bert_forward_step(data_iterator, model):
    tokens, labels, loss_mask = next(data_iterator)
    padding_mask = torch.ones_like(tokens)
    output = model(tokens, padding_mask, lm_labels=labels)
    if isinstance(output, tuple):  # last stage: (per-token loss, binary-head logits)
        output = output[0]
    return output, partial(_token_sum_loss, loss_mask)


def run_schedule(model, config, forward_step, micro_batch_size=1, forward_only=False):
    """Forward/backward over this rank's micro-batches; returns the global mean loss (last stage) or None."""
    batches = micro_batches(micro_batch_size)
    reports = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    if not ps.is_pipeline_last_stage():
        return None
    total = torch.stack([r["loss"] for r in reports]).sum(0)
    dist.all_reduce(total, group=ps.get_data_parallel_group())
    return (total[0] / total[1]).item()


def gather_tp(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenate the TP shards of ``tensor`` along ``dim`` (the TP=1 layout for non-SwiGLU weights)."""
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return tensor.detach().clone()
    parts = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(parts, tensor.detach().contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim)


def first_stage_grads(model) -> dict[str, torch.Tensor] | None:
    """Full (TP-gathered) main grads of the embedding and of layer 0, on the first pipeline stage."""
    if not ps.is_pipeline_first_stage():
        return None
    module = model.module
    layer = module.decoder.layers[0] if hasattr(module, "decoder") else module.encoder.layers[0]
    return {
        "embedding": gather_tp(module.embedding.word_embeddings.weight.main_grad, 0),
        "qkv": gather_tp(layer.self_attention.linear_qkv.weight.main_grad, 0),
        "proj": gather_tp(layer.self_attention.linear_proj.weight.main_grad, 1),
        "input_norm": layer.input_layernorm.weight.main_grad.detach().clone(),
    }


def is_reporting_rank() -> bool:
    return ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0


def merge_rank_results(results: list[dict]) -> dict:
    """Combine the per-rank dicts returned by the tests (each key reported by exactly one rank)."""
    merged: dict = {}
    for result in results:
        for key, value in (result or {}).items():
            if value is not None:
                merged[key] = value
    return merged
