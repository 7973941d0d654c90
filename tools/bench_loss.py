#!/usr/bin/env python
"""CWT loss vs output projection + cross-entropy; same as ``headless-megatron bench loss``."""

import sys

from headless_megatron.commands.bench import main_for_tool

if __name__ == "__main__":
    sys.exit(main_for_tool("loss"))
