"""What Megatron-Core's pipeline schedule calls for each micro-batch: the forward step (the batch to
the device, through the family's forward) and the loss function it returns."""

from __future__ import annotations

from functools import partial

import torch

from headless_megatron.models.family import ModelFamily
from headless_megatron.training.metrics import CandidateCounter
from headless_megatron.training.profiling import backward_range


def loss_func(loss_mask, count_candidates, output):
    """Megatron's loss function: called on the model chunk that returns the per-token loss."""
    losses = output.float() * loss_mask
    total, tokens = losses.sum(), loss_mask.sum()
    if count_candidates is not None:
        count_candidates()
    return total, tokens.to(torch.int), {"lm loss": torch.stack([total.detach(), tokens])}


def forward_step(data_iterator, model, *, device, family: ModelFamily, candidates: CandidateCounter | None,
                 batch_timer=None, profiled: bool = False):
    """One micro-batch through this model chunk; the last one's output is the per-token loss ``[b, s]``.
    ``batch_timer``: Megatron-Core's timer of the wait for the data (training only); ``profiled``:
    the ranges ``forward`` and ``backward`` in a profile (``training/profiling.py``)."""
    if batch_timer is not None:
        batch_timer.start()
    batch = {key: value.to(device, non_blocking=True) for key, value in next(data_iterator).items()}
    if batch_timer is not None:
        batch_timer.stop()
    if profiled:
        with torch.profiler.record_function("forward"):
            output = backward_range(family.forward(model, batch))
    else:
        output = family.forward(model, batch)
    count = partial(candidates.add, batch["labels"], batch["loss_mask"]) if candidates is not None else None
    return output, partial(loss_func, batch["loss_mask"], count)
