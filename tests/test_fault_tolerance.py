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
    """Train, injecting ``fault`` on one rank while computing ``at_iteration``: "nan" (the loss),
    "nan-gradient" (one weight's gradient, the loss finite) or "sigusr1"."""
    import torch.distributed as dist

    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    forward_step = trainer.forward_step

    def faulty_forward_step(data_iterator, model):
        output, loss_func = forward_step(data_iterator, model)
        if trainer.iteration + 1 == at_iteration and dist.get_rank() == on_rank:
            if fault == "nan":
                output = output * float("nan")
            elif fault == "nan-gradient":
                output = output + 0 * _nan_in_backward(next(model.parameters())).sum()
            else:
                os.kill(os.getpid(), signal.SIGUSR1)
        return output, loss_func

    trainer.forward_step = faulty_forward_step
    summary = trainer.train()
    finite_weights = all(bool(p.isfinite().all()) for p in trainer.model.parameters())
    return {"summary": summary, "finite_weights": finite_weights}


def _nan_in_backward(tensor):
    """``tensor`` itself, whose gradient comes back as NaN."""
    import torch

    class NaNGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.view_as(value)

        @staticmethod
        def backward(ctx, gradient):
            return gradient * float("nan")

    return NaNGradient.apply(tensor)


def _count_syncs_and_collectives(argv):
    """On each rank: the host syncs (tensor to Python) and collectives of three training steps,
    outside Megatron-Core's schedule and optimizer step (theirs are theirs)."""
    from collections import Counter

    import torch
    import torch.distributed as dist

    from headless_megatron.training import loop
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    counts, ours = Counter(), [False]

    def theirs(original):
        """``original``, whose own syncs and collectives are not counted (nor a torch-function
        mode's second call of the same method)."""
        def call(*args, **kwargs):
            ours[0], inside = False, ours[0]
            try:
                return original(*args, **kwargs)
            finally:
                ours[0] = inside
        return call

    def counted(kind, original):
        uncounted = theirs(original)

        def call(*args, **kwargs):
            counts[kind] += ours[0]
            return uncounted(*args, **kwargs)
        return call

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        setattr(torch.Tensor, name, counted("host syncs", getattr(torch.Tensor, name)))
    for name in ("all_reduce", "all_gather_into_tensor", "broadcast", "barrier"):
        setattr(dist, name, counted("collectives", getattr(dist, name)))
    schedule = loop.get_forward_backward_func
    loop.get_forward_backward_func = lambda: theirs(schedule())
    trainer.optimizer.step = theirs(trainer.optimizer.step)
    data = trainer.train_data_iterator()
    for _ in range(3):
        ours[0] = True
        trainer.train_step(data)
        ours[0] = False
    return dict(counts)


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


def test_a_nan_in_one_ranks_gradient_alone_is_skipped_by_every_rank(dataset):
    results = run_on_ranks(_train_with_fault, 2, args=(_argv(dataset), "nan-gradient", 3, 1))
    for result in results:
        summary = result["summary"]
        assert summary.skipped_iterations == 1 and all(math.isfinite(loss) for loss in summary.losses)
        assert result["finite_weights"]


def test_the_nan_check_rides_on_the_steps_one_host_sync_and_one_all_reduce(dataset):
    counts = run_on_ranks(_count_syncs_and_collectives, 2, args=(_argv(dataset, "--log-interval", "100"),))
    assert counts == [{"host syncs": 3, "collectives": 3}] * 2  # per step: totals.tolist() and its all-reduce


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
