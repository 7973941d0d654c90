#!/usr/bin/env python
"""Preprocessing throughput, 1 vs N workers; same as ``headless-megatron bench preprocess``."""

import sys

from headless_megatron.cli import quiet_known_warnings
from headless_megatron.commands.bench import main_for_tool

if __name__ == "__main__":
    quiet_known_warnings()  # Megatron-Core's import-time notes about optional kernels, as the CLI does
    sys.exit(main_for_tool("preprocess"))
