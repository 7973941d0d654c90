"""The ``headless-megatron`` command line: one program, one subcommand per job.

Subcommands live in their own modules, imported only when chosen, so ``--version`` and ``--help``
stay instant. Each module defines ``add_arguments(parser)`` and ``run(args) -> int``, and may define
``reject_unknown_arguments(unknown)`` (raises the ``UserError`` that explains them) and
``validate_for_launch(args, world_size)``. Any subcommand accepts ``--nproc-per-node N`` to start N
local ranks through torchrun; the command line is parsed and, where the command can, validated in
the launching process first (:func:`validate_launch` does the same for launchers of their own).

A :class:`~headless_megatron.errors.UserError` from any command is printed here as one line,
``headless-megatron <command>: error: <message>``, with exit status 2; any other exception keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from headless_megatron import __version__
from headless_megatron.errors import OneLineErrorParser, UsageError, UserError, report_user_error
from headless_megatron.quiet import VERBOSE_VARIABLE, quiet_known_warnings
from headless_megatron.runtime.launch import (
    NPROC_FLAG,
    SINGLE_PROCESS_COMMANDS,
    launch_local_ranks,
    split_nproc_flag,
)

VERBOSE_FLAG = "--verbose"

# name -> (module, one-line help)
TRAINING_COMMANDS = ("pretrain", "finetune")  # their processes are ranks that save when stopped
SUBCOMMANDS = {
    "env": ("headless_megatron.commands.env", "print versions, device, backend and kernels that will be used"),
    "check": (
        "headless_megatron.commands.check",
        "train a tiny GPT for a few steps on this launch's parallel layout (install/NCCL/gloo smoke test)",
    ),
    "pretrain": (
        "headless_megatron.commands.pretrain", "pretrain a headless (CWT) or vanilla GPT/BERT from a YAML config"
    ),
    "finetune": (
        "headless_megatron.commands.finetune",
        "train on from a pretrained checkpoint (a headless GPT gets an LM head initialised from its embeddings)",
    ),
    "preprocess": ("headless_megatron.commands.preprocess", "text corpora -> Megatron .bin/.idx datasets"),
    "bench": (
        "headless_megatron.commands.bench",
        "benchmarks that print a table (bench attention | layer | loss | train | preprocess | convert)",
    ),
    "generate": ("headless_megatron.commands.generate", "continue a prompt with an exported decoder (transformers)"),
    "export-hf": (
        "headless_megatron.commands.export_hf",
        "checkpoint -> Hugging Face model directory (LlamaForCausalLM, MegatronBert), tokenizer, model card",
    ),
    "import-hf": (
        "headless_megatron.commands.import_hf",
        "Hugging Face model -> torch_dist checkpoint at a chosen TP/PP layout, to train from",
    ),
    "eval": (
        "headless_megatron.commands.evaluate",
        "evaluate a Hugging Face model: eval lm (LM Evaluation Harness tasks) | eval glue (GLUE fine-tuning)",
    ),
    "report": (
        "headless_megatron.commands.report",
        "plots (loss vs tokens and time, throughput) and a summary table of one or more runs",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="headless-megatron",
        description="Megatron-Core trainer for headless language models (Contrastive Weight Tying).",
        epilog="Any subcommand also takes --nproc-per-node N to run on N local ranks.",
    )
    parser.add_argument("--version", action="version", version=f"headless-megatron {__version__}")
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="also show the third-party warnings hidden by default (before the command)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [VERBOSE_FLAG]:
        argv = argv[1:]
        os.environ[VERBOSE_VARIABLE] = "1"  # read by this process and by the ranks it starts
    quiet_known_warnings()
    try:
        nproc, argv = split_nproc_flag(argv)
    except UsageError as error:
        return report_user_error("headless-megatron", error)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # handles --version/--help and reports an unknown command
        parser.print_help()
        return 2
    try:
        return _run_command(argv, nproc)
    except UserError as error:
        return report_user_error(f"headless-megatron {argv[0]}", error)


def _run_command(argv: list[str], nproc: int | None) -> int:
    if nproc is None and argv[0] in TRAINING_COMMANDS:
        # This process is a rank (started by srun, torchrun or our launcher), or trains alone.
        from headless_megatron.training.signals import record_stop_signals_during_start_up

        record_stop_signals_during_start_up()
    if nproc is not None and argv[0] in SINGLE_PROCESS_COMMANDS:
        raise UsageError(f"{NPROC_FLAG}: {argv[0]} does not run on ranks; {SINGLE_PROCESS_COMMANDS[argv[0]]}")
    command, args = _parse_command(argv)
    if getattr(args, "dry_run", None) is not None:  # pretrain/finetune --dry-run: no rank starts
        return command.dry_run(args, args.dry_run or nproc or 1)
    if nproc is not None:
        # A mistake in the configuration is reported here, once, before any rank starts.
        _validate_for_launch(command, args, nproc)
        return launch_local_ranks(nproc, argv)
    return int(command.run(args) or 0)


def _parse_command(argv: list[str]):
    """The chosen command's module and its parsed arguments (``argv[0]`` names the command)."""
    command = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    sub_parser = OneLineErrorParser(prog=f"headless-megatron {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
    command.add_arguments(sub_parser)
    args, unknown = sub_parser.parse_known_args(argv[1:])
    if unknown:
        # A command may explain unknown flags better than argparse (e.g. suggest the right key).
        explain = getattr(command, "reject_unknown_arguments", None)
        if explain is not None:
            explain(unknown)
        sub_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return command, args


def _validate_for_launch(command, args, world_size: int) -> None:
    validate = getattr(command, "validate_for_launch", None)
    if validate is not None:
        validate(args, world_size)


def validate_launch(argv: list[str], world_size: int) -> int:
    """Check ``headless-megatron`` arguments (``argv[0]`` the command) for a launch of ``world_size``
    ranks, as ``--nproc-per-node`` does before it starts its ranks, without starting any: for cluster
    launchers that start the ranks themselves (``examples/slurm/common.sh``). Returns 0, or prints
    the one-line error and returns 2.
    """
    quiet_known_warnings()
    if not argv or argv[0] not in SUBCOMMANDS:
        named = repr(argv[0]) if argv else "no command"
        return report_user_error(
            "headless-megatron", UsageError(f"{named}: not a command; expected one of {', '.join(SUBCOMMANDS)}")
        )
    try:
        command, args = _parse_command(argv)
        _validate_for_launch(command, args, world_size)
    except UserError as error:
        return report_user_error(f"headless-megatron {argv[0]}", error)
    return 0
