"""The ``headless-megatron`` command line: one program, one subcommand per job.

Subcommands live in their own modules, imported only when chosen, so ``--version`` and ``--help``
stay instant. Each module defines ``add_arguments(parser)`` and ``run(args) -> int``. Any subcommand
accepts ``--nproc-per-node N`` to start N local ranks through torchrun.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from headless_megatron import __version__
from headless_megatron.runtime.launch import launch_local_ranks, split_nproc_flag

# name -> (module, one-line help)
SUBCOMMANDS = {
    "env": ("headless_megatron.commands.env", "print versions, device, backend and kernels that will be used"),
    "check": (
        "headless_megatron.commands.check",
        "train a tiny GPT for a few steps on this launch's parallel layout (install/NCCL/gloo smoke test)",
    ),
    "pretrain": ("headless_megatron.commands.pretrain", "pretrain a headless (CWT) or vanilla GPT/BERT from a YAML config"),
    "finetune": (
        "headless_megatron.commands.finetune",
        "train on from a pretrained checkpoint (a headless GPT gets an LM head initialised from its embeddings)",
    ),
    "preprocess": ("headless_megatron.commands.preprocess", "text corpora -> Megatron .bin/.idx datasets"),
    "bench": ("headless_megatron.commands.bench", "benchmarks that print a table (bench loss | train | preprocess)"),
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
    parser = argparse.ArgumentParser(
        prog="headless-megatron",
        description="Megatron-Core trainer for headless language models (Contrastive Weight Tying).",
        epilog="Any subcommand also takes --nproc-per-node N to run on N local ranks.",
    )
    parser.add_argument("--version", action="version", version=f"headless-megatron {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def quiet_known_warnings() -> None:
    """Megatron-Core warns at import about every optional kernel it does not find, and torch about
    collectives Megatron still calls by their old names; ``headless-megatron env`` reports the former."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf")


def main(argv: list[str] | None = None) -> int:
    quiet_known_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    nproc, argv = split_nproc_flag(argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # handles --version/--help and reports an unknown command
        parser.print_help()
        return 2
    if nproc is not None:
        return launch_local_ranks(nproc, argv)
    command = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    sub_parser = argparse.ArgumentParser(
        prog=f"headless-megatron {argv[0]}", description=SUBCOMMANDS[argv[0]][1]
    )
    command.add_arguments(sub_parser)
    args, unknown = sub_parser.parse_known_args(argv[1:])
    if unknown:
        # A command may explain unknown flags better than argparse (e.g. suggest the right key).
        explain = getattr(command, "reject_unknown_arguments", None)
        if explain is None:
            sub_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return explain(unknown)
    return int(command.run(args) or 0)
