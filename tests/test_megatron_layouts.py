"""Megatron-Core on CPU/gloo: every parallel layout computes the same thing as a single process."""

from __future__ import annotations

import megatron_helpers as mh
import pytest
import torch
from local_ranks import run_on_ranks
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from headless_megatron.config import ParallelLayout
from headless_megatron.runtime.distributed import init_distributed

LAYOUTS = {
    # name: (world size, TP, PP, sequence parallel)
    "tp1": (1, 1, 1, False),
    "tp2": (2, 2, 1, False),
    "tp2_sp": (2, 2, 1, True),
    "pp2": (2, 1, 2, False),
    "tp2_pp2": (4, 2, 2, False),
    "dp2": (2, 1, 1, False),
}


def _gpt_loss_and_grads(tp, pp, sp):
    init_distributed(ParallelLayout(tp, pp), seed=mh.SEED)
    config = mh.tiny_config(sequence_parallel=sp)
    model = mh.wrap_ddp(config, mh.build_gpt(config))
    model.zero_grad_buffer()
    loss = mh.run_schedule(model, config, mh.gpt_forward_step)
    grads = mh.first_stage_grads(model)
    if not mh.is_reporting_rank():
        return {}
    return {"loss": loss, "grads": grads}


@pytest.fixture(scope="module")
def gpt_reference():
    return mh.merge_rank_results(run_on_ranks(_gpt_loss_and_grads, 1, args=(1, 1, False)))


def _assert_close(actual, expected, what, rtol=1e-5):
    scale = expected.abs().max().clamp_min(1e-12)
    error = (actual - expected).abs().max() / scale
    assert error <= rtol, f"{what}: relative difference {error:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "tp1"])
def test_gpt_layouts_match_single_process(layout, gpt_reference):
    world, tp, pp, sp = LAYOUTS[layout]
    result = mh.merge_rank_results(run_on_ranks(_gpt_loss_and_grads, world, args=(tp, pp, sp)))
    assert abs(result["loss"] - gpt_reference["loss"]) <= 1e-5 * abs(gpt_reference["loss"])
    for name, expected in gpt_reference["grads"].items():
        assert expected.abs().sum() > 0, f"{name} got no gradient in the reference"
        _assert_close(result["grads"][name], expected, f"{layout} {name} grad")


def test_reference_loss_is_the_plain_torch_value(gpt_reference):
    # Random init over 128 tokens: the mean CE is close to log(128), not NaN or zero.
    assert abs(gpt_reference["loss"] - torch.log(torch.tensor(128.0)).item()) < 0.5


def _bert_loss(tp, pp):
    init_distributed(ParallelLayout(tp, pp), seed=mh.SEED)
    config = mh.tiny_config(llama=False)
    model = mh.wrap_ddp(config, mh.build_bert(config))
    model.zero_grad_buffer()
    loss = mh.run_schedule(model, config, mh.bert_forward_step)
    grads = mh.first_stage_grads(model)
    if not mh.is_reporting_rank():
        return {}
    return {"loss": loss, "embedding_grad_norm": grads and grads["embedding"].norm().item()}


def test_bert_forward_backward_under_tp2_and_pp2():
    single, tp2, pp2 = (
        mh.merge_rank_results(run_on_ranks(_bert_loss, world, args=(tp, pp)))
        for world, tp, pp in ((1, 1, 1), (2, 2, 1), (2, 1, 2))
    )
    for result in (tp2, pp2):
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-5)
        assert result["embedding_grad_norm"] == pytest.approx(single["embedding_grad_norm"], rel=1e-5)
    assert single["embedding_grad_norm"] > 0


def _optimizer_step_weights():
    init_distributed(ParallelLayout(1, 1), seed=mh.SEED)
    config = mh.tiny_config()
    model = mh.wrap_ddp(config, mh.build_gpt(config), distributed_optimizer=True)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.1, clip_grad=1.0, use_distributed_optimizer=True),
        [model],
    )
    before = model.module.embedding.word_embeddings.weight.detach().clone()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    mh.run_schedule(model, config, mh.gpt_forward_step)
    update_ok, grad_norm, _ = optimizer.step()
    layer = model.module.decoder.layers[0]
    return {
        "ok": update_ok,
        "grad_norm": grad_norm,
        "optimizers": {type(o).__name__ for o in getattr(optimizer, "chained_optimizers", [optimizer])},
        "changed": (model.module.embedding.word_embeddings.weight - before).abs().max().item(),
        "embedding": model.module.embedding.word_embeddings.weight.detach().clone(),
        "qkv": layer.self_attention.linear_qkv.weight.detach().clone(),
        "fc2": layer.mlp.linear_fc2.weight.detach().clone(),
    }


def test_distributed_optimizer_step_is_identical_under_dp1_and_dp2():
    (dp1,) = run_on_ranks(_optimizer_step_weights, 1)
    dp2 = run_on_ranks(_optimizer_step_weights, 2)
    assert dp1["ok"] and dp1["optimizers"] == {"DistributedOptimizer"}
    assert dp1["changed"] > 1e-3
    assert dp2[0]["grad_norm"] == pytest.approx(dp1["grad_norm"], rel=1e-5)
    for rank_result in dp2:  # the distributed optimizer all-gathers the updated shards to every rank
        for name in ("embedding", "qkv", "fc2"):
            _assert_close(rank_result[name], dp1[name], f"DP2 {name} after one step")


def _save_then_forward(checkpoint_dir):
    init_distributed(ParallelLayout(2, 1), seed=mh.SEED)
    config = mh.tiny_config()
    model = mh.build_gpt(config)
    dist_checkpointing.save(model.sharded_state_dict(), checkpoint_dir)
    return _per_token_losses(mh.wrap_ddp(config, model), config)


def _load_then_forward(checkpoint_dir):
    init_distributed(ParallelLayout(1, 2), seed=mh.SEED)
    config = mh.tiny_config()
    model = mh.build_gpt(config, seed=mh.SEED + 1)  # different init: the values must come from the checkpoint
    dist_checkpointing.load(model.sharded_state_dict(), checkpoint_dir)
    return _per_token_losses(mh.wrap_ddp(config, model), config)


def _per_token_losses(model, config):
    captured = []

    def forward_step(data_iterator, chunk):
        output, loss_func = mh.gpt_forward_step(data_iterator, chunk)
        if ps.is_pipeline_last_stage():
            captured.append(output.detach().clone())
        return output, loss_func

    mh.run_schedule(model, config, forward_step, forward_only=True)
    return torch.cat(captured) if captured and mh.is_reporting_rank() else None


def test_checkpoint_saved_at_tp2_loads_at_tp1_pp2(tmp_path):
    saved = next(r for r in run_on_ranks(_save_then_forward, 2, args=(str(tmp_path),)) if r is not None)
    loaded = next(r for r in run_on_ranks(_load_then_forward, 2, args=(str(tmp_path),)) if r is not None)
    assert saved.shape == (mh.GLOBAL_BATCH, mh.SEQ)
    _assert_close(loaded, saved, "per-token loss after TP2 -> TP1xPP2 load")
