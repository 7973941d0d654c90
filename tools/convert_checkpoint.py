#!/usr/bin/env python
"""Checkpoint conversion under Megatron-LM's familiar name; the same as ``headless-megatron export-hf``
(the default) or ``headless-megatron import-hf`` (when named first).

    python tools/convert_checkpoint.py --checkpoint runs/gpt_headless_tiny --output hf/tiny --mode add_head
    python tools/convert_checkpoint.py import-hf --model hf/tiny --output runs/from_hf --tensor-model-parallel-size 2
"""

import sys

from headless_megatron.cli import main

DIRECTIONS = ("export-hf", "import-hf")

if __name__ == "__main__":
    argv = sys.argv[1:]
    direction = argv.pop(0) if argv and argv[0] in DIRECTIONS else "export-hf"
    sys.exit(main([direction, *argv]))
