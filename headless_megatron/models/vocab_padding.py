"""Megatron's vocabulary padding kept out of every prediction.

Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by`` so that it splits
evenly over TP ranks. The padded rows of the output layer are no token; left as they are, they give
logits (zero at first) that take part in the softmax: the loss is not the one the unpadded model
(its Hugging Face export) computes on the same tokens, and training pushes gradient into rows that
no export keeps. :func:`hide_vocab_padding` sets their logits to ``-inf`` on the output layer's own
output, which every consumer of logits reads (the cross-entropy of GPT and BERT, the masked-positions
projection, logits returned for generation): their probability is exactly 0, their gradient too, so
the padded rows stay zero, are never predicted, and the loss is the unpadded model's.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.utils import VocabUtility


def hide_vocab_padding(output_layer: torch.nn.Module, vocab_size: int) -> None:
    """Give the logits of ``output_layer`` (a vocab-parallel ``ColumnParallelLinear``) for ids at or
    above ``vocab_size`` the value ``-inf``, on this TP rank's columns."""

    def hide(_module, _inputs, output):
        logits, bias = output
        first, last = VocabUtility.vocab_range_from_per_partition_vocab_size(
            logits.shape[-1], ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
        )
        if last <= vocab_size:
            return output
        padded = torch.arange(first, last, device=logits.device) >= vocab_size
        return logits.masked_fill(padded, float("-inf")), bias

    output_layer.register_forward_hook(hide)
