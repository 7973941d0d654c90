"""Local ranks: ``headless-megatron <command> --nproc-per-node N ...`` through torchrun, and a
function on N local CPU ranks (:func:`run_local_ranks`, for ``import-hf`` and ``bench``).

With ``--nproc-per-node``, the command re-runs itself as ``torchrun --standalone --nproc-per-node N -m headless_megatron
<command> ...`` (without the flag), so one command line works on a laptop, a GPU node and, with
``torchrun``/``srun`` written out by the user, on a cluster. The CLI has parsed and validated the
command line before (a bad config key is one line, printed once); a rank that still fails on bad
input prints its one line, and the launcher adds nothing to it.

Stop signals are the ranks' to handle (they finish the iteration, save and exit 0): the launcher
passes SIGTERM, SIGUSR1 and SIGINT on to them instead of letting torchrun's agent turn them into a
failure (``SignalException``, exit 1, and SIGKILL after 30 s, possibly in the middle of the save),
and exits 0 with them. torchrun starts the ranks in process groups of their own, so a signal to the
launcher's group (a terminal's Ctrl-C, ``kill -- -PGID``) reaches them only this way; SIGINT is not
passed to a rank in the launcher's own group, which has had it already (a second one aborts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time

from headless_megatron.errors import UsageError

NPROC_FLAG = "--nproc-per-node"
# The signals torchrun's agent may act on itself: hang-ups and quits, never the stop signals.
AGENT_SIGNALS = "SIGHUP,SIGQUIT"


def split_nproc_flag(argv: list[str]) -> tuple[int | None, list[str]]:
    """Remove ``--nproc-per-node N`` (or ``--nproc-per-node=N``) from argv; return (N or None, rest)."""
    rest: list[str] = []
    nproc = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in (NPROC_FLAG, "--nproc_per_node"):
            if i + 1 >= len(argv):
                raise UsageError(f"{NPROC_FLAG}: expected a number of processes after the flag")
            value, i = argv[i + 1], i + 2
        elif arg.startswith((NPROC_FLAG + "=", "--nproc_per_node=")):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
            continue
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"{NPROC_FLAG}: expected a positive integer, got {value!r}")
        nproc = int(value)
    return nproc, rest


# Commands that work in one process (several would race on one output): the CLI refuses the flag.
SINGLE_PROCESS_COMMANDS = {
    "preprocess": "use --workers N to tokenize in parallel",
    "generate": "it runs in one process",
    "export-hf": "it reads any layout in one process",
    "import-hf": "give the layout with --tensor-model-parallel-size and --pipeline-model-parallel-size",
    "eval": "it runs in one process",
    "report": "it runs in one process",
    "env": "it runs in one process",
}


def launch_world_size() -> int:
    """The world size this process was launched into, known before the process group exists."""
    from headless_megatron.runtime.distributed import map_slurm_environment

    map_slurm_environment()
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_local_ranks(nproc: int, argv: list[str]) -> int:
    """Run ``python -m headless_megatron *argv`` on ``nproc`` local ranks; return the exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from headless_megatron.errors import EXIT_BAD_INPUT, REPORTED_MARK_VARIABLE

    if "RANK" in os.environ:
        raise UsageError(
            f"{NPROC_FLAG} given inside an already launched rank (RANK is set); "
            "drop the flag when starting through torchrun or srun"
        )
    # torchrun would otherwise set 1 thread per rank and warn about it; share the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Which signals torchrun's agent turns into a SignalException (and a failed launch): not the stop
    # signals, which are the ranks'. Newer torch takes the flag (and overwrites the variable with
    # its default when the flag is not given); older torch reads only the variable.
    torchrun_args, older_torch = get_args_parser().parse_known_args(
        ["--standalone", f"--nproc-per-node={nproc}", f"--signals-to-handle={AGENT_SIGNALS}",
         "-m", "headless_megatron", *argv]
    )
    if older_torch:
        os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = AGENT_SIGNALS
    # The ranks print their own errors; torchrun's log lines about them would bury those.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="headless-megatron-") as scratch, _stop_signals_passed_to_ranks():
        # A mistake every rank finds (a missing data file) is printed by the first of them only.
        os.environ[REPORTED_MARK_VARIABLE] = os.path.join(scratch, "error-reported")
        try:
            run(torchrun_args)
        except SignalException as error:  # SIGHUP or SIGQUIT: the agent has stopped the ranks
            print(f"headless-megatron: stopped by {error.sigval.name}; the ranks were stopped", file=sys.stderr)
            return 128 + error.sigval.value
        except ChildFailedError as error:
            failures = error.failures
            # A bad-input error (2) stays the command's exit code; ranks that torchrun stopped
            # because of it (SIGTERM, -15) say nothing more.
            exited = {failure.exitcode for failure in failures.values() if failure.exitcode > 0}
            if exited == {EXIT_BAD_INPUT}:
                return EXIT_BAD_INPUT  # a rank has printed the one line that says why
            host = socket.gethostname()
            print("headless-megatron: " + "; ".join(
                f"rank {rank} of {nproc} on {host} {_ended(failure)}" for rank, failure in sorted(failures.items())
            ), file=sys.stderr)
            return exited.pop() if len(exited) == 1 else 1
        finally:
            del os.environ[REPORTED_MARK_VARIABLE]
    return 0


def _ended(failure) -> str:
    """How a rank ended, from torchrun's ``ProcessFailure``: its exit code, or the signal that killed it."""
    if failure.exitcode < 0:
        return f"was killed by {failure.signal_name()}"
    return f"failed (exit code {failure.exitcode})"


@contextlib.contextmanager
def _stop_signals_passed_to_ranks():
    import psutil

    def pass_on(signum, _frame):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                # A second SIGINT aborts a rank, so a rank that shares our process group, and got
                # this one from the terminal or a group kill already, does not get it again.
                if signum != signal.SIGINT or os.getpgid(child.pid) != os.getpgrp():
                    child.send_signal(signum)

    previous = {number: signal.signal(number, pass_on) for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# ---- A function on local CPU ranks (import-hf, bench) ----

# What every rank imports anyway: the fork server imports it once, and each rank forks from it.
RANK_PRELOAD = ["torch", "megatron.core.parallel_state", "megatron.core.models.gpt", "headless_megatron"]


class RankFailure(RuntimeError):
    """A local rank raised, died or did not finish in time; the message ends with its error."""


def rank_process_context():
    """The ``multiprocessing`` context local ranks start from: a fork server with torch and
    Megatron-Core imported on a CPU machine (a rank then starts in a fraction of a second); fresh
    interpreters where CUDA is available, since a process forked after CUDA was initialised (which
    importing Megatron may do) cannot use it."""
    import multiprocessing

    import torch

    if torch.cuda.is_available():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(RANK_PRELOAD)
    return context


def free_port() -> int:
    """A TCP port that nothing on this host listens on now (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_local_world(rank: int, world_size: int, port: int, env: dict[str, str]) -> None:
    """Make this process rank ``rank`` of a ``world_size``-rank world on this host (torchrun's
    variables, then ``env``) and give it its share of the cores: oversubscribed intra-op threads
    make gloo collectives crawl. ``OMP_NUM_THREADS``, when set, is that share (as for torchrun)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )
    os.environ.update(env)
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0
                          else max(1, (os.cpu_count() or 1) // world_size))


def _local_rank(rank, fn, world_size, port, args, env, results) -> None:
    join_local_world(rank, world_size, port, env)
    try:
        results.put((rank, fn(*args)))
    finally:
        from headless_megatron.runtime.distributed import destroy_distributed

        with contextlib.suppress(Exception):  # the rank's own error, if any, is the one to report
            destroy_distributed()


def run_local_ranks(fn, world_size: int, args: tuple = (), env: dict[str, str] | None = None,
                    timeout_s: float = 3600.0) -> list:
    """``fn(*args)`` on ``world_size`` local ranks of one world (gloo on CPU); each rank's result,
    by rank. ``torch.multiprocessing`` starts and watches them: when one fails the others are
    stopped, and :class:`RankFailure` carries the failing rank's traceback."""
    import torch.multiprocessing
    from torch.multiprocessing.spawn import ProcessException

    context = rank_process_context()
    results = context.SimpleQueue()
    ranks = torch.multiprocessing.start_processes(
        _local_rank, args=(fn, world_size, free_port(), tuple(args), env or {}, results),
        nprocs=world_size, join=False, start_method=context.get_start_method(),
    )
    values: dict[int, object] = {}
    deadline = time.monotonic() + timeout_s
    try:
        finished = False
        while not finished:
            while not results.empty():  # read as they come: a full pipe would block the rank
                rank, value = results.get()
                values[rank] = value
            if time.monotonic() > deadline:
                raise RankFailure(f"{fn.__name__}: ranks did not finish within {timeout_s:.0f} s (stopped)")
            finished = ranks.join(timeout=1.0)
    except ProcessException as error:
        raise RankFailure(str(error).strip()) from None
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
    while not results.empty():
        rank, value = results.get()
        values[rank] = value
    return [values[rank] for rank in range(world_size)]
