"""Stopping a run cleanly: on SIGTERM/SIGUSR1 (preemption, ``#SBATCH --signal=USR1@120``), on the
first SIGINT (Ctrl-C), at ``exit_duration_in_mins``, or at ``exit_interval``.

A handler only records the signal; the loop asks :meth:`StopConditions.reason` once per iteration,
and the answer is agreed by all ranks (a MAX all-reduce), because a signal reaches the ranks at
slightly different times and every rank must stop after the same iteration to save together. A
second SIGINT ends the process at once, without saving (the previous checkpoint stays the latest).

SLURM (and a terminal's Ctrl-C) signal every process, so the processes a rank starts must neither
die of a stop signal nor outlive the rank: see :mod:`headless_megatron.runtime.processes`,
:func:`stop_signals_deferred` and :func:`kill_helpers_at_exit`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time

from headless_megatron.runtime.processes import STOP_SIGNALS, kill_children

_REASONS = ("", "SIGTERM", "SIGUSR1", "exit_duration_in_mins", "exit_interval", "SIGINT")
# Each stop signal's code: its index in _REASONS, and what the ranks' MAX all-reduce compares.
_SIGNAL_CODES = {signal.SIGTERM: 1, signal.SIGUSR1: 2, signal.SIGINT: 5}
_START_UP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_signal_during_start_up = 0  # the first one received, 0 if none


def _record_during_start_up(signum, _frame) -> None:
    global _signal_during_start_up
    _signal_during_start_up = _signal_during_start_up or signum


def record_stop_signals_during_start_up() -> None:
    """Record SIGTERM/SIGUSR1 from here on instead of dying of them; the first thing a rank does.

    SLURM's time-limit warning or a preemption can come while ranks still import torch or load a
    checkpoint. Recorded, the run trains one iteration, saves and stops (progress, so the job
    requeues itself); by default the rank would die unsaved. :class:`StopConditions` takes over.
    """
    for number in _START_UP_SIGNALS:
        signal.signal(number, _record_during_start_up)


class StopConditions:
    """Records stop signals and checks the time budget; see the module docstring."""

    def __init__(self, handle_signals: bool, exit_duration_in_mins: float | None, exit_interval: int | None):
        self.started = time.monotonic()
        self.exit_duration_in_mins = exit_duration_in_mins
        self.exit_interval = exit_interval
        self.received = _SIGNAL_CODES.get(_signal_during_start_up, 0) if handle_signals else 0
        self.previous_handlers = {}
        if handle_signals:
            for number, code in _SIGNAL_CODES.items():
                self.previous_handlers[number] = signal.signal(number, self._record(code))
            return
        # Signals are not ours to handle (exit_signal_handler off): their default actions again,
        # and a signal that came during start-up ends the process, as it would have without us.
        for number in _START_UP_SIGNALS:
            if signal.getsignal(number) is _record_during_start_up:
                signal.signal(number, signal.SIG_DFL)
        if _signal_during_start_up:
            os.kill(os.getpid(), _signal_during_start_up)

    def _record(self, code: int):
        def handler(signum, _frame):
            self.received = self.received or code
            if signum == signal.SIGINT:
                # The next Ctrl-C kills the process at once: the user wants out, not a save.
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if os.environ.get("RANK", "0") == "0":
                    print("SIGINT: finishing this iteration and saving; press Ctrl-C again to abort without saving",
                          file=sys.stderr, flush=True)

        return handler

    def reason(self, iteration: int, device) -> str:
        """Why every rank should stop after ``iteration`` ("" to go on); a collective call."""
        import torch
        import torch.distributed as dist

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


@contextlib.contextmanager
def stop_signals_deferred():
    """Block the stop signals while the body runs; they are delivered (and recorded) afterwards.

    A save is never cut in half by Ctrl-C, and processes started meanwhile inherit the blocked mask,
    so the stop signal SLURM sends to every process of a step cannot kill them before they set
    themselves up (the checkpoint writer's helper, the resource tracker).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _kill_daemonic_helpers() -> None:
    kill_children(daemonic_only=True)


def kill_helpers_at_exit() -> None:
    """Kill this process's daemonic helpers (DataLoader workers) when it exits.

    They ignore SIGTERM (see :func:`~headless_megatron.runtime.processes.ignore_stop_signals`), and
    ``multiprocessing``'s exit handler stops them with SIGTERM and then joins them without a timeout:
    after an error that left a DataLoader alive (its iterator held by the traceback), the process
    would never exit. Handlers registered later run first, so this one runs before
    ``multiprocessing``'s.
    """
    import multiprocessing.util  # noqa: F401 - registers its own exit handler first

    atexit.unregister(_kill_daemonic_helpers)
    atexit.register(_kill_daemonic_helpers)
