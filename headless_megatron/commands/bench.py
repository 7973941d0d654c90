"""``headless-megatron bench <target>``: benchmarks that print a table, one module per target.

Each target module in ``headless_megatron/benchmarks/`` defines ``add_arguments(parser)`` and
``run(args)``, like a subcommand; ``tools/bench_<target>.py`` calls the same module.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "loss": ("headless_megatron.benchmarks.loss", "CWT loss vs output projection + cross-entropy"),
    "preprocess": ("headless_megatron.benchmarks.preprocess", "tokenization throughput, 1 vs N workers"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, help_text) in TARGETS.items():
        target = targets.add_parser(name, help=help_text, description=help_text)
        target.set_defaults(bench_module=module)
        importlib.import_module(module).add_arguments(target)


def run(args) -> int:
    return int(importlib.import_module(args.bench_module).run(args) or 0)


def main_for_tool(target: str, argv: list[str] | None = None) -> int:
    """Entry for ``tools/bench_<target>.py``."""
    module = importlib.import_module(TARGETS[target][0])
    parser = argparse.ArgumentParser(prog=f"bench_{target}.py", description=TARGETS[target][1])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)
