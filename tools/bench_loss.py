#!/usr/bin/env python
"""CWT loss vs output projection + cross-entropy; same as ``headless-megatron bench loss``."""

import sys

from headless_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "loss", *sys.argv[1:]]))
