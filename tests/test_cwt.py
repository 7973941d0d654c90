"""The CWT loss against a plain single-process implementation of the paper's formula.

The reference builds the K x K score matrix of the paper's code (``A @ B.T``, softmax over the
contrast set, duplicates as separate columns) or, for ``duplicates="unique"``, scores each query
against the distinct ids. Parallel runs must match it in loss and in the gradients of the hidden
states and of the embedding table, with many duplicate ids.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from local_ranks import run_on_ranks

from headless_megatron.config import ParallelLayout
from headless_megatron.cwt import cwt_loss
from headless_megatron.runtime.distributed import init_distributed

SEQ, BATCH, HIDDEN, VOCAB = 8, 3, 16, 64


def make_inputs(dp_rank: int, seed: int = 0, distinct_ids: int = 12, scale: float = 1.0):
    """One DP rank's micro-batch and the shared table; ids from few values, so duplicates abound."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(VOCAB, HIDDEN, generator=gen) * scale
    vocabulary = torch.randperm(VOCAB, generator=gen)[:distinct_ids]
    for _ in range(dp_rank + 1):
        hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=gen) * scale
        targets = vocabulary[torch.randint(0, distinct_ids, (SEQ, BATCH), generator=gen)]
        mask = (torch.rand(SEQ, BATCH, generator=gen) > 0.3).float()
    return hidden, targets, table, mask


def reference(hiddens, targets, table, masks, temperature, duplicates, hidden_size=HIDDEN):
    """Per-position losses of each micro-batch, and d(sum of losses)/d(hiddens, table)."""
    hiddens = [h.clone().requires_grad_() for h in hiddens]
    table = table.clone().requires_grad_()
    queries = torch.cat([h.reshape(-1, hidden_size)[m.reshape(-1) > 0] for h, m in zip(hiddens, masks)])
    ids = torch.cat([t.reshape(-1)[m.reshape(-1) > 0] for t, m in zip(targets, masks)])
    if duplicates == "count":
        scores = queries @ table[ids].t() / temperature  # K x K, as the paper's code
        rows = -torch.log_softmax(scores, dim=1).diagonal()
    else:
        distinct = torch.unique(ids)
        scores = queries @ table[distinct].t() / temperature
        rows = F.cross_entropy(scores, torch.searchsorted(distinct, ids), reduction="none")
    rows.sum().backward()
    losses, offset = [], 0
    for m in masks:
        flat = torch.zeros(m.numel())
        count = int(m.sum())
        flat[m.reshape(-1) > 0] = rows[offset : offset + count].detach()
        losses.append(flat.view(m.shape))
        offset += count
    return losses, [h.grad for h in hiddens], table.grad


def _parallel_cwt(tp, sp, dp, temperature, duplicates, negatives, use_mask):
    from megatron.core import parallel_state as ps

    init_distributed(ParallelLayout(tp, 1))
    tp_rank, dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
    hidden, targets, table, mask = make_inputs(dp_rank)
    shard = VOCAB // tp
    table_shard = table[tp_rank * shard : (tp_rank + 1) * shard].clone().requires_grad_()
    if sp:
        hidden = hidden.chunk(tp, dim=0)[tp_rank]
    hidden = hidden.clone().requires_grad_()
    loss = cwt_loss(
        hidden, targets, table_shard, loss_mask=mask if use_mask else None,
        temperature=temperature, duplicates=duplicates, negatives=negatives,
    )
    loss.sum().backward()
    return {"tp_rank": tp_rank, "dp_rank": dp_rank, "loss": loss.detach(), "hidden_grad": hidden.grad,
            "table_grad": table_shard.grad}


def assert_close(actual, expected, what):
    """Max error relative to the tensor's scale, so near-zero entries do not need 1e-5 on their own."""
    error = ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
    assert error <= 1e-5, f"{what}: relative difference {error:.1e}"


def _check_against_reference(results, tp, sp, dp, temperature, duplicates, negatives, use_mask):
    inputs = [make_inputs(d) for d in range(dp)]
    masks = [m if use_mask else torch.ones_like(m) for *_, m in inputs]
    hiddens, targets, table = [i[0] for i in inputs], [i[1] for i in inputs], inputs[0][2]
    if negatives == "data_parallel":
        losses, hidden_grads, table_grad = reference(hiddens, targets, table, masks, temperature, duplicates)
    else:  # each DP rank is its own contrast set; DDP sums the table gradients
        per_rank = [
            reference([h], [t], table, [m], temperature, duplicates) for h, t, m in zip(hiddens, targets, masks)
        ]
        losses = [r[0][0] for r in per_rank]
        hidden_grads = [r[1][0] for r in per_rank]
        table_grad = sum(r[2] for r in per_rank)
    assert max(len(torch.unique(t)) for t in targets) <= SEQ * BATCH / 2  # duplicates abound
    shard = VOCAB // tp
    summed_table_grad = torch.zeros(VOCAB, HIDDEN)
    for r in results:
        d, t = r["dp_rank"], r["tp_rank"]
        assert_close(r["loss"], losses[d], f"loss on DP {d} TP {t}")
        expected_hidden = hidden_grads[d].chunk(tp, dim=0)[t] if sp else hidden_grads[d]
        assert_close(r["hidden_grad"], expected_hidden, f"hidden grad on DP {d} TP {t}")
        summed_table_grad[t * shard : (t + 1) * shard] += r["table_grad"]
    assert_close(summed_table_grad, table_grad, "embedding table grad")


LAYOUTS = {  # name: (TP, SP, DP)
    "tp1": (1, False, 1),
    "tp2": (2, False, 1),
    "tp4": (4, False, 1),
    "tp2_sp": (2, True, 1),
    "dp2": (1, False, 2),
    "tp2_sp_dp2": (2, True, 2),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("duplicates", ["count", "unique"])
def test_parallel_loss_and_gradients_equal_the_reference(layout, duplicates):
    tp, sp, dp = LAYOUTS[layout]
    negatives = "data_parallel" if dp > 1 else "micro_batch"
    for temperature, use_mask in ((1.0, True), (0.5, False)):
        args = (tp, sp, dp, temperature, duplicates, negatives, use_mask)
        _check_against_reference(run_on_ranks(_parallel_cwt, tp * dp, args=args), *args)


def test_micro_batch_negatives_under_dp_ignore_other_ranks():
    args = (1, False, 2, 1.0, "count", "micro_batch", True)
    _check_against_reference(run_on_ranks(_parallel_cwt, 2, args=args), *args)


def test_without_parallel_state_matches_the_reference_and_paper_floor():
    hidden, targets, table, mask = make_inputs(0)
    loss = cwt_loss(hidden, targets, table, loss_mask=mask)
    (expected,), _, _ = reference([hidden], [targets], table, [mask], 1.0, "count")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert (loss[mask == 0] == 0).all()
    # A row whose target occurs m times in the contrast set cannot go below log m (the paper's loss).
    ids = targets[mask > 0]
    counts = {int(i): int((ids == i).sum()) for i in ids}
    floors = torch.tensor([math.log(counts[int(i)]) for i in ids])
    assert (loss[mask > 0] >= floors - 1e-6).all()


def test_unique_mode_has_no_floor_and_count_mode_does():
    torch.manual_seed(0)
    table = torch.randn(VOCAB, HIDDEN)
    targets = torch.tensor([[3, 3], [3, 5]])
    hidden = table[targets] * 50  # every query points hard at its own target
    count = cwt_loss(hidden, targets, table, duplicates="count")
    unique = cwt_loss(hidden, targets, table, duplicates="unique")
    assert unique.max() < 1e-4
    torch.testing.assert_close(count[targets == 3], torch.full((3,), math.log(3)), rtol=1e-4, atol=1e-4)


def test_large_logits_stay_finite_in_fp32_and_bf16():
    hidden, targets, table, mask = make_inputs(0, scale=10.0)  # dot products ~ 1e3 .. 1e4
    for dtype in (torch.float32, torch.bfloat16):
        h = hidden.to(dtype).detach().requires_grad_()
        t = table.to(dtype).detach().requires_grad_()
        loss = cwt_loss(h, targets, t, loss_mask=mask)
        assert (h.detach().float().reshape(-1, HIDDEN) @ t.detach().float().t()).abs().max() > 1e3
        loss.sum().backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
        assert torch.isfinite(h.grad).all() and torch.isfinite(t.grad).all()


def test_empty_mask_gives_zero_loss_connected_to_the_graph():
    hidden, targets, table, _ = make_inputs(0)
    hidden.requires_grad_()
    loss = cwt_loss(hidden, targets, table, loss_mask=torch.zeros(SEQ, BATCH))
    assert (loss == 0).all()
    loss.sum().backward()
    assert (hidden.grad == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"duplicates": "twice"}, "duplicates must be 'count' or 'unique'"),
        ({"negatives": "global"}, "negatives must be 'micro_batch' or 'data_parallel'"),
        ({"temperature": 0.0}, "temperature must be positive"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    hidden, targets, table, _ = make_inputs(0)
    with pytest.raises(ValueError, match=message):
        cwt_loss(hidden, targets, table, **kwargs)


def test_mismatched_sequence_length_is_explained():
    hidden, targets, table, _ = make_inputs(0)
    with pytest.raises(ValueError, match="hidden has 3 positions for 8 target positions"):
        cwt_loss(hidden[:3], targets, table)


def _headless_gpt_last_stage_tied_copy():
    """PP2: the loss runs on the last stage against Megatron's tied copy of the embedding table."""
    from functools import partial

    import megatron_helpers as mh
    from megatron.core import parallel_state as ps

    from headless_megatron.cwt import CWTOptions
    from headless_megatron.models.gpt.model import build_gpt_stage

    init_distributed(ParallelLayout(1, 2), seed=mh.SEED)
    config = mh.tiny_config()
    stage = build_gpt_stage(config, mh.VOCAB, mh.SEQ, seed=mh.SEED, cwt=CWTOptions())
    model = mh.wrap_ddp(config, stage)
    config.finalize_model_grads_func = None  # keep the copy's gradient to the loss path alone
    captured = []
    if ps.is_pipeline_last_stage():
        def keep_final_hidden(_module, _inputs, output):
            entry = {"hidden": output.detach().clone()}
            output.register_hook(lambda grad: entry.__setitem__("grad", grad.clone()))
            captured.append(entry)

        stage.decoder.register_forward_hook(keep_final_hidden)

    def forward_step(data_iterator, chunk):
        tokens, labels, loss_mask = next(data_iterator)
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        output = chunk(tokens, positions, None, labels=labels, loss_mask=loss_mask)
        captured_batch.append((labels, loss_mask))
        return output, partial(mh._token_sum_loss, loss_mask)

    captured_batch = []
    model.zero_grad_buffer()
    mh.run_schedule(model, config, forward_step)
    if not ps.is_pipeline_last_stage():
        return None
    tied = stage.shared_embedding_or_output_weight()
    assert tied is stage.output_layer.weight  # the last stage's copy, not the first stage's table
    return {"captured": captured, "batches": captured_batch, "table": tied.detach().clone(),
            "table_grad": tied.main_grad.clone()}


def test_pp2_loss_on_last_stage_uses_the_tied_copy_exactly():
    result = next(r for r in run_on_ranks(_headless_gpt_last_stage_tied_copy, 2) if r is not None)
    table_grad = torch.zeros_like(result["table"])
    for entry, (labels, mask) in zip(result["captured"], result["batches"]):
        hidden = entry["hidden"]
        (loss,), (hidden_grad,), grad = reference(
            [hidden], [labels.t()], result["table"], [mask.t()], 1.0, "count", hidden_size=hidden.shape[-1]
        )
        assert_close(entry["grad"], hidden_grad, "final hidden-state grad")
        table_grad += grad
    assert table_grad.abs().sum() > 0
    assert_close(result["table_grad"], table_grad, "tied copy grad")
