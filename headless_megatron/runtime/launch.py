"""``headless-megatron <command> --nproc-per-node N ...``: start N local ranks through torchrun.

The command re-runs itself as ``torchrun --standalone --nproc-per-node N -m headless_megatron
<command> ...`` (without the flag), so one command line works on a laptop, a GPU node and, with
``torchrun``/``srun`` written out by the user, on a cluster. The CLI has parsed and validated the
command line before (a bad config key is one line, printed once); a rank that still fails on bad
input prints its one line, and the launcher adds nothing to it.

Stop signals are the ranks' to handle (they finish the iteration, save and exit 0): the launcher
passes SIGTERM and SIGUSR1 on to them instead of letting torchrun's agent turn them into a failure
(``SignalException``, exit 1, and SIGKILL after 30 s, possibly in the middle of the save). SIGINT
from a terminal reaches the ranks directly (same process group), so the launcher only waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile

from headless_megatron.errors import UsageError

NPROC_FLAG = "--nproc-per-node"


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


def launch_local_ranks(nproc: int, argv: list[str]) -> int:
    """Run ``python -m headless_megatron *argv`` on ``nproc`` local ranks; return the exit code."""
    from torch.distributed.run import get_args_parser, run

    from headless_megatron.errors import EXIT_BAD_INPUT, REPORTED_MARK_VARIABLE

    if "RANK" in os.environ:
        raise UsageError(
            f"{NPROC_FLAG} given inside an already launched rank (RANK is set); "
            "drop the flag when starting through torchrun or srun"
        )
    # torchrun would otherwise set 1 thread per rank and warn about it; share the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    torchrun_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "headless_megatron", *argv]
    )
    # torchrun's agent reads which signals it turns into SignalException from this variable.
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGHUP,SIGQUIT"
    # The ranks print their own errors; torchrun's log lines about them would bury those.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="headless-megatron-") as scratch, _stop_signals_passed_to_ranks():
        # A mistake every rank finds (a missing data file) is printed by the first of them only.
        os.environ[REPORTED_MARK_VARIABLE] = os.path.join(scratch, "error-reported")
        try:
            run(torchrun_args)
        except Exception as error:
            failures = getattr(error, "failures", None) or {}
            codes = sorted({failure.exitcode for failure in failures.values()})
            # A bad-input error (2) stays the command's exit code; ranks that torchrun stopped
            # because of it (SIGTERM, -15) say nothing more.
            exited = {code for code in codes if code > 0}
            if exited == {EXIT_BAD_INPUT}:
                return EXIT_BAD_INPUT  # a rank has printed the one line that says why
            ranks = ", ".join(map(str, sorted(failures))) or "?"
            print(f"headless-megatron: rank {ranks} of {nproc} failed (exit code {', '.join(map(str, codes)) or '?'})",
                  file=sys.stderr)
            return exited.pop() if len(exited) == 1 else 1
        finally:
            del os.environ[REPORTED_MARK_VARIABLE]
    return 0


@contextlib.contextmanager
def _stop_signals_passed_to_ranks():
    import psutil

    def pass_on(signum, _frame):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signum)

    previous = {number: signal.signal(number, pass_on) for number in (signal.SIGTERM, signal.SIGUSR1)}
    # A handler, not SIG_IGN, which the ranks would inherit.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
