"""The helper processes a rank starts (DataLoader workers, the checkpoint writer's manager): deaf
to stop signals, and never outliving the rank.

SLURM (and a terminal's Ctrl-C) signal every process of a job step, and only the rank itself should
act on a stop signal (:mod:`headless_megatron.training.signals`); a helper that ignores SIGTERM, in
turn, cannot be ended by the ``terminate()`` that ``multiprocessing`` sends its children, so the
rank kills it itself when it must go.
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """For helper processes (DataLoader workers): SLURM signals every process of a job step, and
    only the rank itself should act on a stop signal."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


def helper_process_setup() -> None:
    """Initializer of a helper process that lives as long as the rank (the checkpoint writer's):
    deaf to stop signals, and killed by the kernel when the rank dies, even by SIGKILL."""
    ignore_stop_signals()
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the rank died before the request took effect
            os._exit(1)


def kill_children(daemonic_only: bool = False) -> None:
    """SIGKILL this process's ``multiprocessing`` children (only the daemonic ones, the DataLoader
    workers, with ``daemonic_only``: the others are shut down by their own exit handlers)."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon or not daemonic_only:
            child.kill()
