"""Stopping a run cleanly: on SIGTERM/SIGUSR1 (preemption, ``#SBATCH --signal=USR1@120``), at
``exit_duration_in_mins``, or at ``exit_interval``.

A handler only records the signal; the loop asks :meth:`StopConditions.reason` once per iteration,
and the answer is agreed by all ranks (a MAX all-reduce), because a signal reaches the ranks at
slightly different times and every rank must stop after the same iteration to save together.
"""

from __future__ import annotations

import contextlib
import signal
import time

import torch
import torch.distributed as dist

_REASONS = ("", "SIGTERM", "SIGUSR1", "exit_duration_in_mins", "exit_interval")


class StopConditions:
    """Records stop signals and checks the time budget; see the module docstring."""

    def __init__(self, handle_signals: bool, exit_duration_in_mins: float | None, exit_interval: int | None):
        self.started = time.monotonic()
        self.exit_duration_in_mins = exit_duration_in_mins
        self.exit_interval = exit_interval
        self.received = 0
        self.previous_handlers = {}
        if handle_signals:
            for code, number in ((1, signal.SIGTERM), (2, signal.SIGUSR1)):
                self.previous_handlers[number] = signal.signal(number, self._record(code))

    def _record(self, code: int):
        def handler(_signum, _frame):
            self.received = self.received or code

        return handler

    def reason(self, iteration: int, device: torch.device) -> str:
        """Why every rank should stop after ``iteration`` ("" to go on); a collective call."""
        code = self.received
        if not code and self.exit_duration_in_mins is not None:
            if time.monotonic() - self.started > 60 * self.exit_duration_in_mins:
                code = 3
        if not code and self.exit_interval and iteration % self.exit_interval == 0:
            code = 4
        agreed = torch.tensor([code], dtype=torch.int, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        return _REASONS[int(agreed.item())]

    def restore(self) -> None:
        """Put back the handlers that were there before (the process may go on, e.g. in tests)."""
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """For helper processes (DataLoader workers): SLURM signals every process of a job step, and
    only the rank itself should act on a stop signal."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_deferred():
    """Block the stop signals while the body runs; they are delivered (and recorded) afterwards.

    Processes started meanwhile inherit the blocked mask and so are not killed by the stop signal
    SLURM sends to every process of a step: Megatron's checkpoint writer starts its helper process
    during the first save and keeps it for the following ones.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
