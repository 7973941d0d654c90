"""--profile with the PyTorch profiler on CPU: one trace per chosen rank, of the chosen iterations,
holding the named ranges forward, backward, cwt_loss and optimizer; and the refusals."""

from __future__ import annotations

import json
import re

import pytest
from local_ranks import RankFailure
from training_runs import train

from headless_megatron.config import TrainConfig
from headless_megatron.config.fields import ConfigError
from headless_megatron.config.validation import validate


def _events(trace):
    return json.loads(trace.read_text())["traceEvents"]


def test_a_trace_per_rank_of_the_chosen_iterations_with_our_named_ranges(dataset, tmp_path):
    train(2, dataset, "--profile", "--use-pytorch-profiler", "--profile-step-start", "3", "--profile-step-end", "5",
          "--profile-ranks", "0", "1", "--tensorboard-dir", str(tmp_path), iters=6)
    traces = sorted(tmp_path.glob("*.pt.trace.json"))
    assert [re.match(r"rank(\d)", trace.name).group(1) for trace in traces] == ["0", "1"]
    for trace in traces:
        names = [event.get("name", "") for event in _events(trace)]
        assert sorted({name for name in names if name.startswith("ProfilerStep#")}) == ["ProfilerStep#2",
                                                                                        "ProfilerStep#3"]
        # iterations 3 and 4 (the profiler counts steps from 0), each with its micro-batches
        for name in ("forward", "backward", "cwt_loss", "optimizer"):
            assert names.count(name) >= 2, (trace.name, name)
        backward = [event for event in _events(trace) if event.get("name") == "backward"]
        assert all(event["dur"] > 0 for event in backward)


def test_without_the_pytorch_profiler_a_cpu_run_is_refused_in_one_line(dataset):
    with pytest.raises(RankFailure, match=r"ProfileError: profile: without use_pytorch_profiler it marks the "
                                          r"iterations for NVIDIA Nsight Systems"):
        train(1, dataset, "--profile", "--profile-step-start", "2", "--profile-step-end", "3", iters=3)


@pytest.mark.parametrize("overrides, message", [
    ({"profile_step_start": 5, "profile_step_end": 5}, "profile_step_end: 5 must be above profile_step_start 5"),
    ({"profile_ranks": [0, 2]}, "profile_ranks: rank 2 does not exist in a world of 2 ranks"),
    ({"use_pytorch_profiler": True}, "profile: needs tensorboard_dir, log_dir or save for the traces"),
])
def test_profile_keys_are_checked(overrides, message):
    config = TrainConfig(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16, micro_batch_size=2,
                         global_batch_size=8, train_iters=10, lr=1e-3, data_path=["data/x"], profile=True, **overrides)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(config, 2)
