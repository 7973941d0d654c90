"""FLOP accounting and the rank-0 metrics log."""

import json

from headless_megatron.config import parse_config
from headless_megatron.training.metrics import MetricsLogger, head_flops, transformer_flops_per_token


def _config(*flags):
    return parse_config(["--config", "configs/gpt_headless_tiny.yaml", "--mock-data", "--vocab-size", "512", *flags])


def test_body_flops_follow_the_dense_transformer_count():
    config = _config()  # 4 layers, h 64, 4 heads, seq 64, SwiGLU ffn
    h, s, f = 64, 64, config.ffn_size
    per_layer = 2 * h * 3 * h + 2 * h * h + 4 * s * h + 2 * h * f * 3
    assert transformer_flops_per_token(config) == 3 * 4 * per_layer
    gqa = _config("--num-query-groups", "2")
    assert transformer_flops_per_token(gqa) < transformer_flops_per_token(config)


def test_cwt_head_counts_its_matmul_and_no_vocabulary_projection():
    cwt, ce = _config(), _config("--loss", "ce")
    positions = cwt.tokens_per_iteration
    assert head_flops(ce, 50304, positions, candidate_products=0) == 3 * 2 * 64 * 50304 * positions
    assert head_flops(cwt, 50304, positions, candidate_products=positions * 300) == 3 * 2 * 64 * 300 * positions


def test_logger_writes_one_record_per_log_interval_on_rank_zero(tmp_path, capsys):
    config = _config("--log-interval", "2", "--train-iters", "4", "--lr-warmup-iters", "1")
    logger = MetricsLogger(config, str(tmp_path), 0, rank_zero=True, world_size=2)
    for iteration in range(1, 5):
        logger.train(iteration, loss=5.0 - iteration, lr=1e-3, grad_norm=0.5, seconds=0.5, flops=1e12)
    logger.validation(4, 0.9)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 4]
    assert records[0]["tokens_per_sec"] == config.tokens_per_iteration / 0.5
    assert records[0]["tflops_per_device"] == 1.0  # 1e12 FLOP in 0.5 s over 2 devices
    assert records[2] == {"iteration": 4, "val_loss": 0.9}
    out = capsys.readouterr().out
    assert "iteration       2/4 | loss 3.0000" in out and "val loss 0.9000" in out

    silent = MetricsLogger(config, str(tmp_path / "other"), 0, rank_zero=False, world_size=2)
    silent.train(2, 1.0, 1e-3, 0.5, 0.5, 1e12)
    assert not (tmp_path / "other").exists()
