"""HeadlessBertModel: CWT over the masked positions only, and the sparse MLM head's equal loss."""

from __future__ import annotations

import megatron_helpers as mh
import pytest
import torch
from local_ranks import run_on_ranks
from test_cwt import reference

from headless_megatron.config import ParallelLayout
from headless_megatron.cwt import CWTOptions
from headless_megatron.models.bert.model import build_bert_stage
from headless_megatron.runtime.distributed import init_distributed

BATCH = 2


def _batch(mask_kind):
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(3, 40, (BATCH, mh.SEQ), generator=gen)  # few ids: duplicates
    loss_mask = torch.zeros(BATCH, mh.SEQ)
    if mask_kind == "single":
        loss_mask[1, 5] = 1
    elif mask_kind == "some":
        loss_mask[torch.rand(BATCH, mh.SEQ, generator=gen) < 0.3] = 1
    tokens = torch.where(loss_mask > 0, torch.full_like(labels, 2), labels)
    return tokens, labels, loss_mask


def _bert_losses(tp, loss, mask_kind, masked_only=False):
    init_distributed(ParallelLayout(tp, 1), seed=mh.SEED)
    config = mh.tiny_config(llama=False)
    model = build_bert_stage(config, mh.VOCAB, mh.SEQ, seed=mh.SEED,
                             cwt=CWTOptions() if loss == "cwt" else None, project_masked_only=masked_only)
    captured = {}

    def keep_final_hidden(_module, _inputs, output):
        captured["hidden"] = output.detach().clone()
        output.register_hook(lambda grad: captured.__setitem__("hidden_grad", grad.clone()))

    model.encoder.register_forward_hook(keep_final_hidden)
    tokens, labels, loss_mask = _batch(mask_kind)
    losses = model(tokens, torch.ones_like(tokens), lm_labels=labels, loss_mask=loss_mask)
    (losses * loss_mask).sum().backward()
    table = model.embedding.word_embeddings.weight
    return {
        "losses": losses.detach(),
        "grad_norm": sum(p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None).sqrt().item(),
        "has_lm_head": hasattr(model, "lm_head"),
        "hidden": captured["hidden"],
        "hidden_grad": captured["hidden_grad"],
        "table": mh.gather_tp(table, 0),
        "labels": labels,
        "loss_mask": loss_mask,
    }


def test_headless_bert_loss_is_cwt_over_the_masked_positions():
    (run,) = run_on_ranks(_bert_losses, 1, args=(1, "cwt", "some"))
    assert not run["has_lm_head"]
    (expected,), (hidden_grad,), _ = reference(
        [run["hidden"]], [run["labels"].t()], run["table"], [run["loss_mask"].t()], 1.0, "count", hidden_size=32
    )
    torch.testing.assert_close(run["losses"], expected.t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(run["hidden_grad"], hidden_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["cwt", "ce"])
def test_only_masked_positions_contribute(loss):
    (empty,) = run_on_ranks(_bert_losses, 1, args=(1, loss, "none"))
    if loss == "cwt":  # (the CE path returns every position's loss; the loss function masks it)
        assert (empty["losses"] == 0).all()
    assert empty["grad_norm"] == 0.0
    (single,) = run_on_ranks(_bert_losses, 1, args=(1, loss, "single"))
    if loss == "cwt":  # one query against one candidate: its own target
        assert single["losses"].abs().max() < 1e-6
    else:
        assert single["losses"][1, 5] > 0 and single["grad_norm"] > 0
        assert (single["hidden_grad"].abs().sum(-1) > 0).nonzero().tolist() == [[5, 1]]


@pytest.mark.parametrize("tp", [1, 2])
def test_masked_only_projection_gives_the_same_loss(tp):
    full = run_on_ranks(_bert_losses, tp, args=(tp, "ce", "some"))[0]
    sparse = run_on_ranks(_bert_losses, tp, args=(tp, "ce", "some", True))[0]
    mask = full["loss_mask"] > 0
    torch.testing.assert_close(sparse["losses"][mask], full["losses"][mask], rtol=1e-5, atol=1e-6)
    assert (sparse["losses"][~mask] == 0).all()
    assert sparse["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-5)
