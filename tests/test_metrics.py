"""FLOP accounting and the rank-0 metrics log."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from local_ranks import run_on_ranks

from headless_megatron.config import parse_config
from headless_megatron.training.metrics import (
    COMPUTE_TIMERS,
    FLOPS_CONVENTION,
    MEMORY_KEY,
    TIMER_NAMES,
    CandidateCounter,
    MetricsLogger,
    RankStats,
    StallWatch,
    head_flops,
    peak_flops_per_device,
    transformer_flops_per_token,
)


def _config(*flags):
    return parse_config(["--config", "configs/gpt_headless_tiny.yaml", "--mock-data", "--vocab-size", "512", *flags])


def megatron_lm_num_floating_point_operations(args, batch_size):
    """Transcription of Megatron-LM's ``num_floating_point_operations`` (megatron/training/training.py,
    main in 2026), ``transformer_flops`` for dense MHA/GQA layers without MoE, MTP, MLA or an
    attention output gate, which covers every recipe here."""
    num_query_groups = args.num_query_groups if args.group_query_attention else args.num_attention_heads
    forward_backward_expansion_factor = 3
    fma_expansion_factor = 2
    ffn_expansion_factor = 3 if args.swiglu else 2
    query_projection_size = args.kv_channels * args.num_attention_heads
    key_projection_size = args.kv_channels * num_query_groups
    value_projection_size = args.kv_channels * num_query_groups
    standard_self_attn_term = (
        forward_backward_expansion_factor
        * fma_expansion_factor
        * (
            args.hidden_size * (query_projection_size + key_projection_size + value_projection_size)
            + query_projection_size * args.seq_length / 2 * 2  # causal: half the square; QK^T and PV
            + query_projection_size * args.hidden_size
        )
    )
    self_attn_term = standard_self_attn_term * args.num_layers
    return (
        batch_size
        * args.seq_length
        * (
            forward_backward_expansion_factor * fma_expansion_factor * args.hidden_size
            * (args.ffn_hidden_size * ffn_expansion_factor) * args.num_layers
            + self_attn_term
            + forward_backward_expansion_factor * fma_expansion_factor * args.hidden_size * args.padded_vocab_size
        )
    )


def _megatron_args(config, padded_vocab):
    return SimpleNamespace(
        num_layers=config.num_layers, hidden_size=config.hidden_size, ffn_hidden_size=config.ffn_size,
        num_attention_heads=config.num_attention_heads, kv_channels=config.head_dim,
        group_query_attention=config.num_query_groups is not None, num_query_groups=config.num_query_groups,
        swiglu=config.swiglu, seq_length=config.seq_length, padded_vocab_size=padded_vocab,
    )


RECIPES = sorted(str(path) for path in Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: Path(path).stem)
def test_flops_of_every_recipe_follow_megatron_lm(recipe):
    config = parse_config(["--config", recipe, "--mock-data"])
    padded_vocab = config.padded_vocab_size(config.vocab_size or 50277)
    args = _megatron_args(config, padded_vocab)
    batch, tokens = config.global_batch_size, config.tokens_per_iteration
    megatron = megatron_lm_num_floating_point_operations(args, batch)
    logits = 3 * 2 * config.hidden_size * padded_vocab * tokens
    body = transformer_flops_per_token(config) * tokens
    if config.model == "bert":
        # Bidirectional attention computes the whole s x s square that Megatron-LM halves for decoders.
        q = config.num_attention_heads * config.head_dim
        megatron += 3 * 2 * config.num_layers * q * config.seq_length / 2 * 2 * tokens
    if config.loss == "ce" and not config.mlm_project_masked_only:
        assert body + head_flops(config, padded_vocab, tokens, 0) == pytest.approx(megatron, rel=1e-12)
    else:
        assert body == pytest.approx(megatron - logits, rel=1e-12)
    if config.loss == "cwt":
        products = tokens * 300
        assert head_flops(config, padded_vocab, tokens, products) == 3 * 2 * config.hidden_size * products


def test_causal_attention_is_counted_over_half_the_square():
    gpt = _config()  # 4 layers, h 64, 4 heads, seq 64, SwiGLU ffn
    h, s, f = 64, 64, gpt.ffn_size
    per_layer = 2 * h * 3 * h + 2 * h * h + 2 * 2 * h * s / 2 + 2 * h * f * 3
    assert transformer_flops_per_token(gpt) == 3 * 4 * per_layer
    gqa = _config("--num-query-groups", "2")
    assert transformer_flops_per_token(gqa) == 3 * 4 * (per_layer - 2 * h * 2 * h / 2)
    encoder = parse_config(["--config", "configs/bert_headless_tiny.yaml", "--mock-data", "--vocab-size", "512"])
    h, s = encoder.hidden_size, encoder.seq_length
    full_square = 3 * encoder.num_layers * 2 * 2 * h * s
    as_decoder = parse_config(["--config", "configs/bert_headless_tiny.yaml", "--mock-data", "--vocab-size", "512",
                               "--model", "gpt"])
    assert transformer_flops_per_token(encoder) - transformer_flops_per_token(as_decoder) == full_square / 2


def test_masked_only_head_projects_the_masked_positions_alone():
    dense = parse_config(["--config", "configs/bert_vanilla_base.yaml", "--mock-data"])
    masked = parse_config(["--config", "configs/bert_vanilla_base.yaml", "--mock-data", "--mlm-project-masked-only"])
    masked_positions = int(0.15 * dense.tokens_per_iteration)
    assert head_flops(masked, 30592, masked_positions, 0) == 3 * 2 * 768 * 30592 * masked_positions
    assert head_flops(masked, 30592, masked_positions, 0) < head_flops(dense, 30592, dense.tokens_per_iteration, 0)


def _cwt_products(labels, loss_mask):
    """K x U of each micro-batch, the plain way."""
    return sum(int(m.sum()) * len(set(row[m > 0].tolist())) for row, m in zip(labels, loss_mask))


def test_candidate_counter_counts_k_times_u_per_micro_batch():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 40, (3, 2, 16), generator=gen)
    loss_mask = (torch.rand(3, 2, 16, generator=gen) > 0.3).float()
    counter = CandidateCounter(vocab_size=40)
    for micro_batch in range(3):
        counter.add(labels[micro_batch], loss_mask[micro_batch])
    assert counter.total("cpu").item() == _cwt_products(labels, loss_mask)
    assert counter.total("cpu").item() == 0  # reset by total()


def _data_parallel_products(all_labels, all_masks):
    from megatron.core import parallel_state as ps

    from headless_megatron.config import ParallelLayout
    from headless_megatron.runtime.distributed import init_distributed

    init_distributed(ParallelLayout(1, 1), seed=0)
    rank = ps.get_data_parallel_rank()
    counter = CandidateCounter(vocab_size=40, data_parallel_group=ps.get_data_parallel_group())
    for labels, mask in zip(all_labels[rank], all_masks[rank]):
        counter.add(labels, mask)
    return counter.total("cpu").item()


def test_candidate_counter_uses_the_gathered_candidates_across_data_parallel_ranks():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 40, (2, 3, 2, 8), generator=gen)  # [rank, micro-batch, b, s]
    masks = (torch.rand(2, 3, 2, 8, generator=gen) > 0.5).float()
    per_rank = run_on_ranks(_data_parallel_products, 2, args=(labels, masks))
    expected = [
        sum(int(masks[rank, m].sum()) * len(set(labels[:, m][masks[:, m] > 0].tolist())) for m in range(3))
        for rank in range(2)
    ]
    assert per_rank == expected
    assert sum(expected) > _cwt_products(labels[0], masks[0]) + _cwt_products(labels[1], masks[1])


def test_logger_writes_one_record_per_log_interval_on_rank_zero(tmp_path, capsys):
    config = _config("--log-interval", "2", "--train-iters", "4", "--lr-warmup-iters", "1")
    logger = MetricsLogger(config, str(tmp_path), 0, rank_zero=True, world_size=2)
    for iteration in range(1, 5):
        logger.train(iteration, loss=5.0 - iteration, lr=1e-3, grad_norm=0.5, seconds=0.5, flops=1e12,
                     consumed_samples=iteration * 16, tokens=config.tokens_per_iteration)
    logger.validation(4, 0.9)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 4]
    assert records[0]["tokens_per_sec"] == config.tokens_per_iteration / 0.5
    assert records[0]["tflops_per_device"] == 1.0  # 1e12 FLOP in 0.5 s over 2 devices
    assert records[0]["flops_convention"] == FLOPS_CONVENTION == "megatron-lm"
    assert records[2] == {"iteration": 4, "val_loss": 0.9}
    out = capsys.readouterr().out
    assert "TFLOP/s/device (megatron-lm)" in out
    assert "iteration       2/4 | loss 3.0000" in out and "val loss 0.9000" in out

    silent = MetricsLogger(config, str(tmp_path / "other"), 0, rank_zero=False, world_size=2)
    silent.train(2, 1.0, 1e-3, 0.5, 0.5, 1e12, 32, config.tokens_per_iteration)
    assert not (tmp_path / "other").exists()


def test_rates_are_the_intervals_means_not_the_last_iterations(tmp_path):
    config = _config("--log-interval", "3", "--train-iters", "3", "--lr-warmup-iters", "1")
    logger = MetricsLogger(config, str(tmp_path), 0, rank_zero=True, world_size=1)
    for iteration, (seconds, tokens, flops) in enumerate([(1.0, 1000, 1e12), (2.0, 1000, 1e12), (0.5, 4000, 4e12)], 1):
        logger.train(iteration, loss=1.0, lr=1e-3, grad_norm=0.5, seconds=seconds, flops=flops,
                     consumed_samples=iteration * 16, tokens=tokens)
    logger.close()
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["tokens_per_sec"] == 6000 / 3.5  # the last iteration alone would say 8000
    assert record["iteration_seconds"] == record["iteration_seconds_max"] == 3.5 / 3
    assert record["tflops_per_device"] == pytest.approx(6e12 / 3.5 / 1e12)
    assert record["slowest_rank"] == 0 and 0.05 < record[MEMORY_KEY] < 64  # this process's peak RSS, in GiB


def _train_with_a_slow_rank(argv, slow_rank):
    """On each rank: pretrain, ``slow_rank`` 100 ms slower in each micro-batch's forward step; returns
    what the rank printed."""
    import contextlib
    import io
    import time

    import torch.distributed as dist

    from headless_megatron.config import parse_config
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    forward_step = trainer.forward_step

    def slow_forward_step(data_iterator, model):
        if dist.get_rank() == slow_rank:
            time.sleep(0.1)  # well above the noise of a loaded 2-core machine
        return forward_step(data_iterator, model)

    trainer.forward_step = slow_forward_step
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.train()
    return printed.getvalue()


def test_the_log_names_the_slowest_rank_and_megatron_timers_per_iteration(dataset, tmp_path):
    argv = ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--train-iters", "4",
            "--lr-warmup-iters", "1", "--eval-iters", "0", "--num-workers", "0", "--log-interval", "2",
            "--log-dir", str(tmp_path), "--timing-log-level", "1", "--save-interval", "2", "--save",
            str(tmp_path / "run")]
    printed = run_on_ranks(_train_with_a_slow_rank, 2, args=(argv, 1), timeout=600)[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in records] == [2, 4]
    for record in records:
        assert record["slowest_rank"] == 1  # 2 micro-batches x 100 ms more compute than rank 0
        assert record["forward_compute_seconds"] > 0.04
        compute = record["forward_compute_seconds"] + record["backward_compute_seconds"]
        assert record["forward_backward_seconds"] > compute * 0.5
        assert 0 < record["optimizer_seconds"] and 0 < record["all_grads_sync_seconds"]
        assert record["iteration_seconds_max"] >= record["iteration_seconds_min"] > 0.04
    # The save of iteration 2 comes after its log line: its time is in the next interval's.
    assert "save_checkpoint_seconds" not in records[0] and records[1]["save_checkpoint_seconds"] > 0
    assert "slowest rank 1)" in printed and "(min, max) time across ranks (ms):" in printed
    assert printed.count("    forward-compute ....") == 2


_STALLED_CHILD = """
import sys, time
from headless_megatron.training.metrics import StallWatch
watch = StallWatch()
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
print(watch.take(), flush=True)
"""


def test_the_stall_watch_measures_how_long_the_process_was_stopped():
    child = subprocess.Popen([sys.executable, "-c", _STALLED_CHILD, "3"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(1.5)
    os.kill(child.pid, signal.SIGCONT)
    stalled = float(child.stdout.readline())
    assert child.wait(timeout=30) == 0
    assert 1.2 < stalled < 2.0, stalled


def test_a_busy_call_that_holds_the_gil_is_not_a_stall():
    import re

    watch = StallWatch()
    started = time.monotonic()
    re.match(r"(a+)+b", "a" * 25)  # backtracks for seconds inside the regex engine, the GIL held
    assert time.monotonic() - started > 1.0
    assert watch.take() == 0.0
    watch.close()


def test_a_stalled_rank_is_named_though_its_tensor_parallel_peer_computed_as_long():
    timers = {name: 0.0 for name in TIMER_NAMES}

    def row(seconds, compute, stalled):
        return [seconds, 2**30, stalled, *[compute / 2 if name in COMPUTE_TIMERS else timers[name]
                                           for name in TIMER_NAMES]]

    # Rank 3 was stopped for 4 s in its forward pass; rank 2 waited for it in the same layers.
    ranks = RankStats([row(4.5, 0.3, 0.0), row(4.5, 0.3, 0.0), row(4.5, 4.3, 0.0), row(4.5, 4.25, 4.0)])
    assert ranks.slowest == 2 and (ranks.stalled_rank, ranks.stalled_seconds) == (3, 4.0)
    assert (ranks.min_compute, ranks.max_compute) == (0.3, 4.3)
    quiet = RankStats([row(0.5, 0.3, 0.0), row(0.5, 0.4, 0.0)])
    assert quiet.slowest == 1 and (quiet.stalled_rank, quiet.stalled_seconds) == (None, 0.0)


@pytest.mark.parametrize("name, teraflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA B200", 2250), ("NVIDIA GB200", 2500),
    ("AMD Instinct MI300X", 1307.4), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_flops_by_exact_device_name_and_the_override(name, teraflops):
    bf16 = SimpleNamespace(bf16=True, fp16=False, mfu_peak_tflops=None)
    assert peak_flops_per_device(bf16, name) == (None if teraflops is None else pytest.approx(teraflops * 1e12))
    assert peak_flops_per_device(SimpleNamespace(bf16=True, fp16=False, mfu_peak_tflops=500.0), name) == 500e12
    assert peak_flops_per_device(SimpleNamespace(bf16=False, fp16=False, mfu_peak_tflops=None), name) is None
