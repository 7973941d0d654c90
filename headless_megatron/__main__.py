"""``python -m headless_megatron`` (and ``torchrun -m headless_megatron``) entry point."""

import sys

from headless_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main())
