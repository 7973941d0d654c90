"""The learning-rate schedule built from a config: WSD (warmup-stable-decay) point by point against
its closed form and against Megatron-Core's scheduler set up as Megatron-LM sets it up (in samples),
in a unit test and in the lr a real run logs; the WSD keys' checks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from training_runs import TINY, train

from headless_megatron.config import TrainConfig
from headless_megatron.training.optimizer import build_scheduler

REQUIRED = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "seq_length": 16, "micro_batch_size": 2,
            "global_batch_size": 8, "data_path": ["data/x"]}
WSD_STYLES = ["exponential", "linear", "cosine", "minus_sqrt"]


def wsd(step: int, *, lr: float, min_lr: float, warmup: int, decay_end: int, wsd_iters: int, style: str) -> float:
    """WSD as the papers define it: linear warmup from 0, lr held, then ``style`` down to min_lr
    over the last ``wsd_iters`` steps before ``decay_end``, min_lr after."""
    if warmup and step <= warmup:
        return lr * step / warmup
    if step > decay_end:
        return min_lr
    progress = max(0, step - (decay_end - wsd_iters)) / wsd_iters
    coefficient = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                   "exponential": 2 * 0.5 ** progress - 1, "minus_sqrt": 1 - math.sqrt(progress)}[style]
    return min_lr + coefficient * (lr - min_lr)


def lrs(scheduler, steps: int, increment: int = 1) -> list[float]:
    """The learning rate after each of ``steps`` optimizer steps."""
    values = []
    for _ in range(steps):
        scheduler.step(increment)
        values.append(scheduler.optimizer.param_groups[0]["lr"])
    return values


def sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)


@pytest.mark.parametrize("style", WSD_STYLES)
def test_wsd_follows_its_formula_and_megatron_lms_setup_point_by_point(style):
    config = TrainConfig(**REQUIRED, train_iters=100, lr=1e-3, min_lr=1e-5, lr_warmup_iters=10, lr_decay_style="WSD",
                         lr_wsd_decay_iters=30, lr_wsd_decay_style=style, lr_decay_iters=90)
    ours = lrs(build_scheduler(config, sgd()), 100)
    expected = [wsd(step, lr=1e-3, min_lr=1e-5, warmup=10, decay_end=90, wsd_iters=30, style=style)
                for step in range(1, 101)]
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Megatron-LM's training.py: every *_iters times global_batch_size, one step per sample.
    batch = config.global_batch_size
    megatron_lm = OptimizerParamScheduler(
        sgd(), init_lr=0.0, max_lr=1e-3, min_lr=1e-5, lr_warmup_steps=10 * batch, lr_decay_steps=90 * batch,
        lr_decay_style="WSD", start_wd=0.01, end_wd=0.01, wd_incr_steps=100 * batch, wd_incr_style="constant",
        wsd_decay_steps=30 * batch, lr_wsd_decay_style=style)
    assert ours == pytest.approx(lrs(megatron_lm, 100, batch), rel=1e-12, abs=1e-15)
    assert ours[10:60] == [1e-3] * 50 and ours[-1] == 1e-5  # stable, then fully decayed


@pytest.mark.parametrize("overrides, message", [
    ({"lr_decay_style": "WSD"}, "lr_wsd_decay_iters: required with lr_decay_style WSD"),
    ({"lr_wsd_decay_iters": 10}, "lr_wsd_decay_iters: applies to lr_decay_style WSD only, not linear"),
    ({"lr_decay_style": "WSD", "lr_wsd_decay_iters": 95, "lr_warmup_iters": 10}, "lr_wsd_decay_iters: 95 does not fit "
     "after the 10 warmup iterations in lr_decay_iters 100 (train_iters when unset)"),
])
def test_wsd_keys_are_checked(overrides, message):
    from headless_megatron.config.fields import ConfigError
    from headless_megatron.config.validation import validate

    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(TrainConfig(**{**REQUIRED, "train_iters": 100, "lr": 1e-3, **overrides}), 1)


def test_a_run_logs_the_wsd_learning_rate_of_every_iteration(dataset, tmp_path):
    train(1, dataset, "--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "4", "--lr-wsd-decay-style", "linear",
          "--lr-warmup-iters", "2", "--min-lr", "1e-5", "--log-interval", "1", "--log-dir", str(tmp_path), iters=10)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [record["lr"] for record in records if "loss" in record]
    lr = yaml.safe_load(Path(TINY).read_text())["lr"]
    expected = [wsd(step, lr=lr, min_lr=1e-5, warmup=2, decay_end=10, wsd_iters=4, style="linear")
                for step in range(1, 11)]
    assert logged == pytest.approx(expected, rel=1e-9)


def test_a_stable_phase_checkpoint_is_cooled_down_by_a_shorter_resumed_schedule(dataset, tmp_path):
    """WSD's use: a long run (20 iterations, decay over its last 8) saved in its stable phase at 6;
    a resumed run cools it down over 4 iterations to end at 10, with --override-opt-param-scheduler."""
    from local_ranks import RankFailure

    run = tmp_path / "run"
    common = ("--lr-decay-style", "WSD", "--lr-warmup-iters", "2", "--min-lr", "1e-5", "--log-interval", "1")
    train(1, dataset, *common, "--lr-wsd-decay-iters", "8", "--save", str(run), "--exit-interval", "6", iters=20)
    shorter = (*common, "--lr-wsd-decay-iters", "4", "--load", str(run), "--log-dir", str(tmp_path / "cooled"))
    with pytest.raises(RankFailure, match="lr_decay_iters: 10 differs from the checkpoint's 20 \\(and 1 more schedule "
                                          "keys\\); pass --override-opt-param-scheduler"):
        train(1, dataset, *shorter, iters=10)
    train(1, dataset, *shorter, "--override-opt-param-scheduler", iters=10)
    records = [json.loads(line) for line in (tmp_path / "cooled" / "metrics.jsonl").read_text().splitlines()]
    logged = {record["iteration"]: record["lr"] for record in records if "loss" in record}
    lr = yaml.safe_load(Path(TINY).read_text())["lr"]
    assert list(logged) == [7, 8, 9, 10]
    assert list(logged.values()) == pytest.approx(
        [wsd(step, lr=lr, min_lr=1e-5, warmup=2, decay_end=10, wsd_iters=4, style="exponential") for step in logged],
        rel=1e-9)
    assert logged[10] == pytest.approx(1e-5)
