"""Numerical faults are skipped on every rank; a stop signal saves and the run resumes exactly."""

from __future__ import annotations

import math
import os
import signal

import pytest
from local_ranks import RankFailure, run_on_ranks
from training_runs import assert_losses_close, train

from headless_megatron.config import parse_config


def _train_with_fault(argv, fault, at_iteration, on_rank):
    """Train, injecting ``fault`` ("nan" or "sigusr1") on one rank while computing ``at_iteration``."""
    import torch.distributed as dist

    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    forward_step = trainer.forward_step

    def faulty_forward_step(data_iterator, model):
        output, loss_func = forward_step(data_iterator, model)
        if trainer.iteration + 1 == at_iteration and dist.get_rank() == on_rank:
            if fault == "nan":
                output = output * float("nan")
            else:
                os.kill(os.getpid(), signal.SIGUSR1)
        return output, loss_func

    trainer.forward_step = faulty_forward_step
    summary = trainer.train()
    finite_weights = all(bool(p.isfinite().all()) for p in trainer.model.parameters())
    return {"summary": summary, "finite_weights": finite_weights}


def _argv(dataset, *flags, iters=8):
    return ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--train-iters", str(iters),
            "--lr-warmup-iters", "2", "--eval-iters", "0", "--num-workers", "0", "--log-interval", "1",
            "--save", "none", *flags]


def test_a_nan_on_one_rank_is_skipped_by_every_rank(dataset):
    results = run_on_ranks(_train_with_fault, 2, args=(_argv(dataset), "nan", 3, 1))
    for result in results:
        summary = result["summary"]
        assert summary.skipped_iterations == 1 and summary.iterations == 8
        assert math.isnan(summary.losses[2]) and all(math.isfinite(x) for i, x in enumerate(summary.losses) if i != 2)
        assert result["finite_weights"]


def test_consecutive_faults_stop_the_run_with_a_clear_message(dataset):
    with pytest.raises(RankFailure, match=r"NumericalError: max_skipped_iters: 1 consecutive iterations had a NaN"):
        run_on_ranks(_train_with_fault, 1, args=(_argv(dataset, "--max-skipped-iters", "1"), "nan", 2, 0))


def test_sigusr1_saves_stops_and_the_resumed_run_continues_exactly(dataset, tmp_path):
    full = train(2, dataset, "--tensor-model-parallel-size", "2", iters=8)
    run = tmp_path / "run"
    argv = _argv(dataset, "--tensor-model-parallel-size", "2", "--save", str(run))
    stopped = run_on_ranks(_train_with_fault, 2, args=(argv, "sigusr1", 4, 1))[0]["summary"]
    assert stopped.stopped_by == "SIGUSR1" and stopped.iterations == 4  # the signal reached rank 1 only
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    resumed = train(2, dataset, "--tensor-model-parallel-size", "2", "--save", str(run), "--load", str(run), iters=8)
    assert_losses_close(stopped.losses + resumed.losses, full.losses, 1e-6, "stopped + resumed")
