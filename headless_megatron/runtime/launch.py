"""``headless-megatron <command> --nproc-per-node N ...``: start N local ranks through torchrun.

The command re-runs itself as ``torchrun --standalone --nproc-per-node N -m headless_megatron
<command> ...`` (without the flag), so one command line works on a laptop, a GPU node and, with
``torchrun``/``srun`` written out by the user, on a cluster.
"""

from __future__ import annotations

import os

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
                raise SystemExit(f"{NPROC_FLAG}: expected a number of processes after the flag")
            value, i = argv[i + 1], i + 2
        elif arg.startswith((NPROC_FLAG + "=", "--nproc_per_node=")):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
            continue
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"{NPROC_FLAG}: expected a positive integer, got {value!r}")
        nproc = int(value)
    return nproc, rest


def launch_local_ranks(nproc: int, argv: list[str]) -> int:
    """Run ``python -m headless_megatron *argv`` on ``nproc`` local ranks; return the exit code."""
    from torch.distributed.run import get_args_parser, run

    if "RANK" in os.environ:
        raise SystemExit(
            f"{NPROC_FLAG} given inside an already launched rank (RANK is set); "
            "drop the flag when starting through torchrun or srun"
        )
    # torchrun would otherwise set 1 thread per rank and warn about it; share the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    torchrun_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "headless_megatron", *argv]
    )
    try:
        run(torchrun_args)
    except Exception as error:  # torchrun's ChildFailedError already printed each rank's error
        print(f"headless-megatron: {nproc} ranks failed: {type(error).__name__}")
        return 1
    return 0
