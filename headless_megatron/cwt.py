"""Contrastive Weight Tying (CWT): the headless loss, vocab-parallel, with exact gradients.

For the K loss positions of a micro-batch, with final hidden states a_r, targets y_r and the model's
own input-embedding table E (tied, not detached),

    L = -(1/K) sum_r log( exp(a_r . E[y_r] / tau) / sum_{c in S} exp(a_r . E[y_c] / tau) )

(Godey et al., ICLR 2024). No K x K or K x V matrix is built. Write U for the distinct target ids of
the contrast set S and m_u for how often u occurs in it. The denominator sums over S, so it equals
sum_u m_u exp(a . E[u] / tau), and each row's loss is a softmax cross-entropy over U:

    duplicates="count"  (the paper):  L_r = CE_u(a_r . E[u] / tau + log m_u ; y_r) + log m_{y_r}
    duplicates="unique":              L_r = CE_u(a_r . E[u] / tau ; y_r)

Under tensor parallelism the embedding table is vocab-sharded, and so is U: each rank scores only
the candidates its shard owns (``[K, U/tp]`` logits), and Megatron's own
``vocab_parallel_cross_entropy`` combines the shards with three small all-reduces over ``[K]``. The
hidden states enter through Megatron's mappings, so their gradient is reduced over TP exactly as for
the output layer: ``copy_to_tensor_model_parallel_region`` (all-reduce in backward) or, with sequence
parallelism, ``gather_from_sequence_parallel_region`` (reduce-scatter in backward). Embedding rows
are gathered from the local shard, so their gradient lands in the local shard and no ``[K, h]``
embedding block ever crosses ranks.

``negatives="data_parallel"`` widens S to the loss positions of every data-parallel rank. Only the
target ids cross ranks: the embeddings are replicated over DP, so each rank scores the global
candidates against its own queries, and DDP's gradient all-reduce completes the embedding gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

Duplicates = Literal["count", "unique"]
Negatives = Literal["micro_batch", "data_parallel"]

# Padded candidate columns must never win the max nor add to the sum; finite, so that the
# MAX all-reduce of the vocab-parallel softmax stays finite.
_PADDING_LOGIT = -1e30


@dataclass(frozen=True)
class CWTOptions:
    """The knobs of :func:`cwt_loss`, as a model carries them."""

    temperature: float = 1.0
    duplicates: Duplicates = "count"
    negatives: Negatives = "micro_batch"


@dataclass(frozen=True)
class _Groups:
    parallel_state: bool = False
    tp_size: int = 1
    tp_rank: int = 0
    dp_group: dist.ProcessGroup | None = None
    dp_size: int = 1


def _parallel_groups() -> _Groups:
    from megatron.core import parallel_state as ps

    if not (dist.is_initialized() and ps.model_parallel_is_initialized()):
        return _Groups()
    return _Groups(
        parallel_state=True,
        tp_size=ps.get_tensor_model_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        dp_group=ps.get_data_parallel_group(),
        dp_size=ps.get_data_parallel_world_size(),
    )


@torch.profiler.record_function("cwt_loss")  # a named range in profiles (--profile)
def cwt_loss(
    hidden: torch.Tensor,
    target_ids: torch.Tensor,
    embedding_weight: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    duplicates: Duplicates = "count",
    negatives: Negatives = "micro_batch",
) -> torch.Tensor:
    """Per-position CWT loss ``[s, b]`` (zero where ``loss_mask`` is 0); its masked mean is L.

    Args:
        hidden: ``[s, b, h]`` final-norm output in Megatron's layout, ``[s/tp, b, h]`` when sequence
            parallelism is on (detected from the shapes).
        target_ids: ``[s, b]`` int64 target token ids, identical on all TP ranks.
        embedding_weight: this rank's ``[V/tp, h]`` vocab shard of the input-embedding table (the
            full ``[V, h]`` table when TP=1, or the tied copy on the last pipeline stage).
        loss_mask: ``[s, b]``; positions where it is 0 are neither queries nor negatives.
        temperature: tau; logits are dot products divided by it.
        duplicates: ``"count"`` keeps one denominator term per occurrence (the paper);
            ``"unique"`` one per distinct id (no false negatives).
        negatives: ``"micro_batch"`` (the paper) or ``"data_parallel"`` (the loss positions of all
            data-parallel ranks' micro-batches).

    Works with or without Megatron's parallel state (without it: TP=1, DP=1).
    """
    if duplicates not in ("count", "unique"):
        raise ValueError(f"duplicates must be 'count' or 'unique', got {duplicates!r}")
    if negatives not in ("micro_batch", "data_parallel"):
        raise ValueError(f"negatives must be 'micro_batch' or 'data_parallel', got {negatives!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    groups = _parallel_groups()
    seq, batch = target_ids.shape
    sequence_parallel = _is_sequence_parallel(hidden, seq, groups.tp_size)

    flat_mask = torch.ones(seq * batch, dtype=torch.bool, device=target_ids.device)
    if loss_mask is not None:
        flat_mask = loss_mask.reshape(-1) != 0
    positions = flat_mask.nonzero().squeeze(1)
    targets = target_ids.reshape(-1)[positions]
    candidates = targets
    if negatives == "data_parallel" and groups.dp_size > 1:
        candidates = _all_gather_variable(targets, groups.dp_group, groups.dp_size)
    if targets.numel() == 0:
        # No queries here; the zero still joins the graph so that the schedule's backward runs.
        return hidden.new_zeros(seq, batch, dtype=torch.float32) + 0.0 * hidden.sum()

    full_hidden = _enter_tensor_parallel_region(hidden, groups.tp_size, sequence_parallel)
    queries = full_hidden.reshape(seq * batch, -1).index_select(0, positions)
    row_loss = _contrastive_cross_entropy(
        queries, targets, candidates, embedding_weight, temperature, duplicates, groups
    )
    loss = torch.zeros(seq * batch, dtype=row_loss.dtype, device=row_loss.device)
    return loss.index_put((positions,), row_loss).view(seq, batch)


def _is_sequence_parallel(hidden: torch.Tensor, seq: int, tp_size: int) -> bool:
    if hidden.shape[0] == seq:
        return False
    if tp_size > 1 and hidden.shape[0] * tp_size == seq:
        return True
    raise ValueError(
        f"hidden has {hidden.shape[0]} positions for {seq} target positions; expected {seq} "
        f"(no sequence parallelism) or {seq}/{tp_size} (sequence parallel over TP={tp_size})"
    )


def _enter_tensor_parallel_region(hidden, tp_size, sequence_parallel):
    """Full ``[s, b, h]`` hidden states whose gradient is summed over the TP ranks' candidate shards."""
    if tp_size == 1:
        return hidden
    from megatron.core import tensor_parallel

    if sequence_parallel:
        return tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
    return tensor_parallel.copy_to_tensor_model_parallel_region(hidden)


def _all_gather_variable(ids: torch.Tensor, group, group_size: int) -> torch.Tensor:
    """Concatenate every rank's 1-D ``ids`` (of possibly different lengths) in rank order."""
    length = torch.tensor([ids.numel()], device=ids.device)
    lengths = [torch.empty_like(length) for _ in range(group_size)]
    dist.all_gather(lengths, length, group=group)
    longest = int(max(n.item() for n in lengths))
    padded = F.pad(ids, (0, longest - ids.numel()))
    gathered = [torch.empty_like(padded) for _ in range(group_size)]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([chunk[: int(n.item())] for chunk, n in zip(gathered, lengths)])


def _contrastive_cross_entropy(queries, targets, candidates, embedding_weight, temperature, duplicates, groups):
    """Row losses ``[K]`` of ``queries`` against the distinct ``candidates`` of this rank's vocab shard."""
    unique_ids, counts = torch.unique(candidates, sorted=True, return_counts=True)
    target_column = torch.searchsorted(unique_ids, targets)
    shard_size = embedding_weight.shape[0]
    # unique_ids is sorted, so each rank's owned ids are one contiguous run; every rank computes
    # every run's bounds from the same ids, without communication.
    owner = torch.div(unique_ids, shard_size, rounding_mode="floor")
    owned_per_rank = torch.bincount(owner, minlength=groups.tp_size)[: groups.tp_size]
    run_starts = torch.cumsum(owned_per_rank, 0) - owned_per_rank
    width = int(owned_per_rank.max().item())
    start = int(run_starts[groups.tp_rank].item())
    own = slice(start, start + int(owned_per_rank[groups.tp_rank].item()))

    candidate_embeddings = embedding_weight.index_select(0, unique_ids[own] - groups.tp_rank * shard_size)
    if temperature != 1.0:  # on the [K, h] queries rather than the [K, U] logits
        queries = queries / temperature
    # The largest tensor, [K, U/tp]: every later step on it is in place, on the matmul's own output
    # (or on its fp32 copy for bf16/fp16 inputs), so that its memory is paid once.
    logits = (queries @ candidate_embeddings.t()).float()
    if duplicates == "count":
        logits.add_(counts[own].float().log())
    if logits.shape[1] < width:
        logits = F.pad(logits, (0, width - logits.shape[1]), value=_PADDING_LOGIT)
    target_owner = owner[target_column]
    parallel_target = target_owner * width + (target_column - run_starts[target_owner])
    if groups.parallel_state:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        # Megatron's softmax works in place and saves only the softmax: one [K, U/tp] buffer.
        row_loss = vocab_parallel_cross_entropy(logits, parallel_target)
    else:
        row_loss = F.cross_entropy(logits, parallel_target, reduction="none")
    if duplicates == "count":
        row_loss = row_loss + counts[target_column].float().log()
    return row_loss
