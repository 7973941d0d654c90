"""In-process training runs of the tiny recipes, and the reference runs several tests compare against.

    from training_runs import train, assert_losses_close

    run = train(2, dataset, "--tensor-model-parallel-size", "2", "--exit-interval", "10", iters=REFERENCE_ITERS)
    assert_losses_close(run.losses, gpt_reference.losses[:10], 1e-4, "TP2")

``train`` starts the real trainer (:func:`headless_megatron.training.loop.pretrain`) on
``world_size`` local ranks forked from a server that has Megatron-Core imported, and returns rank
0's :class:`~headless_megatron.training.loop.RunSummary`. The reference runs (``gpt_reference``,
``gpt_saved_run`` in conftest) are trained once per session: a test that needs the first ``n``
iterations of the reference runs the same ``train_iters`` (the learning-rate schedule depends on
it) and stops after ``n`` with ``--exit-interval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from local_ranks import run_on_ranks

from headless_megatron.config import parse_config
from headless_megatron.training.loop import RunSummary, pretrain

TINY = "configs/gpt_headless_tiny.yaml"
REFERENCE_ITERS = 30
"""``train_iters`` of the reference runs: every run compared with them uses the same schedule."""


def _pretrain(argv, printing: bool = False):
    """On each rank: pretrain; rank 0 returns its summary (and, when ``printing``, its stdout)."""
    import contextlib
    import io

    import torch.distributed as dist

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed) if printing else contextlib.nullcontext():
        summary = pretrain(parse_config(argv))
    if dist.get_rank() != 0:
        return None
    return (summary, printed.getvalue()) if printing else summary


def _argv(dataset: str, flags, iters: int, config: str) -> list[str]:
    return ["--config", config, "--data-path", dataset, "--train-iters", str(iters), "--lr-warmup-iters", "2",
            "--eval-iters", "0", "--num-workers", "0", "--log-interval", "5", "--save", "none", *flags]


def train(world_size: int, dataset: str, *flags: str, iters: int = 10, config: str = TINY) -> RunSummary:
    """Pretrain ``config`` on ``dataset`` for ``iters`` iterations (no save unless ``flags`` say so)."""
    return run_on_ranks(_pretrain, world_size, args=(_argv(dataset, flags, iters, config),), timeout=600)[0]


def train_printing(world_size: int, dataset: str, *flags: str, iters: int = 10,
                   config: str = TINY) -> tuple[RunSummary, str]:
    """``train``, and what rank 0 printed on its standard output."""
    argv = _argv(dataset, flags, iters, config)
    return run_on_ranks(_pretrain, world_size, args=(argv,), kwargs={"printing": True}, timeout=600)[0]


def assert_losses_close(actual, expected, rtol, what):
    assert len(actual) == len(expected), what
    worst = max(abs(a - e) / abs(e) for a, e in zip(actual, expected))
    assert worst <= rtol, f"{what}: worst relative difference {worst:.2e} > {rtol:.0e}"


@dataclass(frozen=True)
class SavedRun:
    """A run's save directory (copy it before changing anything in it) and its summary."""

    directory: Path
    summary: RunSummary


def train_reference(dataset: str) -> RunSummary:
    """The tiny headless GPT on one rank, ``REFERENCE_ITERS`` iterations without a stop or a save."""
    return train(1, dataset, iters=REFERENCE_ITERS)


def train_saved_run(dataset: str, directory: Path) -> SavedRun:
    """The reference run saved at iterations 10 and 20 and stopped at 20 by ``exit_interval``."""
    summary = train(1, dataset, "--save", str(directory), "--save-interval", "10", "--exit-interval", "20",
                    iters=REFERENCE_ITERS)
    return SavedRun(directory, summary)
