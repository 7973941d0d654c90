#!/usr/bin/env python
"""Text corpora -> Megatron ``.bin/.idx``; same as ``headless-megatron preprocess`` (Megatron-LM's usual entry).

    python tools/preprocess_data.py --input corpus.jsonl --tokenizer gpt2 --output-prefix data/corpus --workers 8
"""

import sys

from headless_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
