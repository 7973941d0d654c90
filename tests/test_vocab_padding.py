"""Megatron's padded vocabulary rows: logits -inf on the TP rank that holds them, no gradient, the
cross-entropy of the real rows alone."""

from __future__ import annotations

import torch
from local_ranks import run_on_ranks

VOCAB, PADDED, HIDDEN = 11, 16, 8  # TP2: rank 0 holds ids 0-7 (all real), rank 1 ids 8-15 (3 real)


def _hidden_padding_on_tp_ranks():
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from headless_megatron.config import ParallelLayout
    from headless_megatron.models.vocab_padding import hide_vocab_padding
    from headless_megatron.runtime.distributed import init_distributed

    init_distributed(ParallelLayout(tensor_model_parallel_size=2))
    rank = ps.get_tensor_model_parallel_rank()
    table = torch.randn(PADDED, HIDDEN, generator=torch.Generator().manual_seed(0))
    shard = torch.nn.Parameter(table[rank * 8:(rank + 1) * 8].clone())

    class OutputLayer(torch.nn.Module):  # a vocab-parallel projection's signature: (logits, bias)
        def forward(self, hidden):
            return hidden @ shard.t(), None

    layer = OutputLayer()
    hide_vocab_padding(layer, VOCAB)
    hidden = torch.randn(3, 2, HIDDEN, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[0, 10], [9, 3], [7, 1]])
    logits, _ = layer(hidden)
    kept = logits.detach().clone()
    loss = vocab_parallel_cross_entropy(logits, labels)
    loss.sum().backward()
    reference = torch.nn.functional.cross_entropy((hidden @ table[:VOCAB].t()).reshape(6, VOCAB), labels.reshape(6),
                                                  reduction="none").reshape(3, 2)
    return {"logits": kept, "loss": loss.detach(), "reference": reference, "grad": shard.grad.clone()}


def test_padded_rows_are_never_predicted_and_get_no_gradient():
    rank0, rank1 = run_on_ranks(_hidden_padding_on_tp_ranks, 2, timeout=300)
    assert torch.isfinite(rank0["logits"]).all()
    assert torch.isfinite(rank1["logits"][..., :3]).all() and torch.isneginf(rank1["logits"][..., 3:]).all()
    torch.testing.assert_close(rank0["loss"], rank0["reference"], rtol=1e-6, atol=1e-6)
    assert not rank1["grad"][3:].any() and rank1["grad"][:3].abs().sum() > 0
