"""``headless-megatron bench <target>``: benchmarks that print a table, one module per target.

Each target module in ``headless_megatron/benchmarks/`` defines ``add_arguments(parser)`` and
``run(args)``, like a subcommand; ``tools/bench_<target>.py`` runs the same command. Bad input
raises a ``UserError``, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import importlib

from headless_megatron.errors import OneLineErrorParser

TARGETS = {
    "attention": ("headless_megatron.benchmarks.attention", "fused (SDPA) vs Megatron's unfused core attention"),
    "layer": (
        "headless_megatron.benchmarks.layer",
        "each layer fusion (activation, bias-dropout-add, norms, CE, torch.compile) vs the unfused path",
    ),
    "loss": ("headless_megatron.benchmarks.loss", "CWT loss vs output projection + cross-entropy"),
    "preprocess": ("headless_megatron.benchmarks.preprocess", "tokenizer engines: speed, start-up, memory"),
    "train": ("headless_megatron.benchmarks.train", "training iterations of several configs side by side"),
    "checkpoint": (
        "headless_megatron.benchmarks.checkpoint",
        "time a checkpoint save blocks training, at once vs in the background",
    ),
    "convert": (
        "headless_megatron.benchmarks.convert", "import-hf / export-hf round trip: time, peak memory, bit-equality"
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Targets are imported only when chosen: each may pull heavy dependencies.
    parser.add_argument("target", choices=list(TARGETS), help="; ".join(f"{k}: {v[1]}" for k, v in TARGETS.items()))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the target's own options (see bench TARGET --help)")


def run(args) -> int:
    return main_for_tool(args.target, args.options, prog=f"headless-megatron bench {args.target}")


def main_for_tool(target: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse the target's options and run it."""
    module = importlib.import_module(TARGETS[target][0])
    parser = OneLineErrorParser(prog=prog or f"bench_{target}.py", description=TARGETS[target][1])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)
