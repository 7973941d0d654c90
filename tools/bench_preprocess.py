#!/usr/bin/env python
"""Preprocessing throughput, 1 vs N workers; same as ``headless-megatron bench preprocess``."""

import sys

from headless_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "preprocess", *sys.argv[1:]]))
