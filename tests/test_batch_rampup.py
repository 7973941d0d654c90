"""Sample-based training and batch-size ramp-up (train_samples, rampup_batch_size, lr_*_samples):
the iterations Megatron-LM counts, the global batch of every iteration from Megatron-Core's
calculator, the schedule stepped by samples, the checks of the keys, and a run stopped in the middle
of the ramp that resumes exactly."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from megatron.core import num_microbatches_calculator as calculator
from training_runs import assert_losses_close, train

from headless_megatron.config import TrainConfig
from headless_megatron.config.fields import ConfigError
from headless_megatron.config.validation import validate

REQUIRED = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "seq_length": 16, "lr": 1e-3,
            "data_path": ["data/x"]}
# global batch 16 from 4 in steps of 4 over the first 48 samples: 4 4 4 4 8 8 12 12, then 16s
RAMP = {"micro_batch_size": 2, "global_batch_size": 16, "rampup_batch_size": [4, 4, 48], "train_samples": 200}
RAMP_BATCHES = [4, 4, 4, 4, 8, 8, 12, 12] + [16] * 9
SAMPLE_FLAGS = ("--train-iters", "none", "--lr-warmup-iters", "0", "--micro-batch-size", "2", "--train-samples", "200",
                "--rampup-batch-size", "4", "4", "48", "--lr-warmup-samples", "32", "--log-interval", "1")


def megatron_lm_train_iters(config: TrainConfig) -> int:
    """Megatron-LM's update_train_iters, through Megatron-Core's global calculator as it calls it."""
    start, increment, ramp_samples = config.rampup_batch_size
    calculator.init_num_microbatches_calculator(0, [start, increment, ramp_samples], config.global_batch_size,
                                                config.micro_batch_size, 1, False)
    try:
        iterations = consumed = 0
        while consumed <= ramp_samples and consumed <= config.train_samples:
            calculator.update_num_microbatches(consumed, consistency_check=False)
            consumed += calculator.get_current_global_batch_size()
            iterations += 1
        if config.train_samples > consumed:
            iterations += (config.train_samples - consumed) // config.global_batch_size
        return iterations
    finally:
        calculator.destroy_num_microbatches_calculator()


@pytest.mark.parametrize("ramp, samples", [([4, 4, 48], 200), ([8, 4, 1000], 3000), ([12, 4, 1], 100),
                                           ([4, 12, 10], 7)])
def test_train_iters_follow_train_samples_as_megatron_lm_counts_them(ramp, samples):
    config = TrainConfig(**REQUIRED, micro_batch_size=4, global_batch_size=16, rampup_batch_size=ramp,
                         train_samples=samples)
    assert config.train_iters == megatron_lm_train_iters(config)
    assert TrainConfig(**REQUIRED, micro_batch_size=4, global_batch_size=16, train_samples=samples).train_iters \
        == samples // 16
    assert TrainConfig(**REQUIRED, **RAMP).train_iters == len(RAMP_BATCHES) == 17


@pytest.mark.parametrize("overrides, world_size, message", [
    ({"rampup_batch_size": [4, 4, 48], "train_iters": 10}, 1,
     "rampup_batch_size: needs sample-based training: set train_samples instead of train_iters"),
    ({"lr_decay_samples": 100, "train_iters": 10}, 1, "lr_decay_samples: needs sample-based training"),
    ({**RAMP, "train_iters": 20}, 1,
     "train_iters: 20 is set by train_samples 200 (17 iterations); give one of them"),
    ({**RAMP, "lr_warmup_iters": 2}, 1, "lr_warmup_iters: with train_samples the schedule counts samples: use "
     "lr_warmup_samples"),
    ({**RAMP, "lr_warmup_samples": 300}, 1, "lr_warmup_samples: 300 must be below lr_decay_samples 200"),
    ({**RAMP, "rampup_batch_size": [4, 5, 48]}, 1, "rampup_batch_size: the ramp from 4 to global_batch_size 16 is "
     "not a whole number of increments of 5"),
    ({**RAMP, "rampup_batch_size": [4, 4]}, 1, "rampup_batch_size: expected three positive numbers, start increment "
     "samples, with start below global_batch_size 16; got 4 4"),
    ({**RAMP, "rampup_batch_size": [16, 4, 48]}, 1, "rampup_batch_size: expected three positive numbers"),
    ({**RAMP, "rampup_batch_size": [2, 2, 48]}, 2, "rampup_batch_size: the ramp's global batch of 2 is not a "
     "multiple of micro_batch_size x data-parallel size = 4"),
])
def test_sample_based_keys_are_checked(overrides, world_size, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(TrainConfig(**{**REQUIRED, "micro_batch_size": 2, "global_batch_size": 16, **overrides}), world_size)


def _records(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_a_ramped_run_reads_each_iterations_batch_and_steps_the_schedule_by_samples(dataset, tmp_path):
    summary = train(1, dataset, *SAMPLE_FLAGS, "--log-dir", str(tmp_path), iters=1)
    records = _records(tmp_path)
    assert summary.iterations == 17
    assert [record["consumed_samples"] for record in records] == list(itertools.accumulate(RAMP_BATCHES))
    tokens_rate = [record["tokens_per_sec"] * record["iteration_seconds"] for record in records]
    assert tokens_rate == pytest.approx([batch * 64 for batch in RAMP_BATCHES])
    # Warm-up over 32 samples, then cosine decay to min_lr over the 200: by the samples read, not iterations.
    lr, min_lr = 3e-3, 3e-4
    import math

    def expected(consumed):
        if consumed <= 32:
            return lr * consumed / 32
        progress = (consumed - 32) / (200 - 32)
        return min_lr + (lr - min_lr) * 0.5 * (math.cos(math.pi * min(progress, 1.0)) + 1)

    assert [record["lr"] for record in records] == pytest.approx(
        [expected(consumed) for consumed in itertools.accumulate(RAMP_BATCHES)], rel=1e-9)


def test_a_run_stopped_in_the_middle_of_the_ramp_resumes_exactly(dataset, tmp_path):
    run = tmp_path / "run"
    uninterrupted = train(2, dataset, *SAMPLE_FLAGS, iters=1)
    first = train(2, dataset, *SAMPLE_FLAGS, "--save", str(run), "--exit-interval", "5", iters=1)
    assert first.iterations == 5  # global batch 8 then, the ramp half done
    resumed = train(2, dataset, *SAMPLE_FLAGS, "--save", str(run), "--load", str(run), iters=1)
    assert resumed.iterations == 17
    assert_losses_close(first.losses + resumed.losses, uninterrupted.losses, 1e-6, "stopped at 5 and resumed")
