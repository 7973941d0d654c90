"""``headless-megatron bench preprocess``: preprocessing throughput with 1 and N tokenizing workers.

    headless-megatron bench preprocess --input builtin:python-docs --train-tokenizer bpe --vocab-size 8192 --workers 1 2

Each row is one full ``build_dataset`` run (read, tokenize, write ``.bin/.idx``, publish) into a
scratch directory, with the same corpus and tokenizer; worker start-up is included, tokenizer
loading or training is not (done once, first). The corpus is read once before the first timing so
that every row finds it in the same (warm) cache; ``--repeat K`` feeds it K times per run, for
corpora so small that worker start-up would dominate. The speed-up is relative to the first row.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", default=["builtin:python-docs"],
                        help="as for preprocess (default: builtin:python-docs)")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="as for preprocess")
    parser.add_argument("--train-tokenizer", choices=("bpe", "unigram"),
                        help="train one on the input first (default: bpe, when --tokenizer is not given)")
    parser.add_argument("--vocab-size", type=int, help="for --train-tokenizer (default: 8192)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="worker counts to time (default: 1 and the number of CPUs)")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the corpus per run (default: 1)")


def run(args) -> int:
    from headless_megatron.data.indexed import DatasetPaths
    from headless_megatron.data.preprocess import build_dataset, prepare_tokenizer
    from headless_megatron.data.sources import Corpus, open_corpus

    corpus = open_corpus(args.input, text_key=args.text_key)
    train = args.train_tokenizer or (None if args.tokenizer else "bpe")
    vocab_size = 8192 if train and args.vocab_size is None else args.vocab_size
    tokenizer = prepare_tokenizer(corpus, args.tokenizer, train, vocab_size)
    for _ in corpus.documents():  # warm whatever cache the input goes through
        pass
    repeated = Corpus(
        corpus.description + (f" x{args.repeat}" if args.repeat > 1 else ""), corpus.inputs, corpus.text_key,
        None if corpus.num_documents is None else corpus.num_documents * args.repeat,
        lambda: itertools.chain.from_iterable(corpus.documents() for _ in range(args.repeat)),
    )
    print(f"corpus {repeated.description}, tokenizer {tokenizer.source} ({tokenizer.vocab_size} ids), "
          f"{os.cpu_count()} CPUs")
    columns = {"workers": 7, "documents": 10, "tokens": 11, "MB": 7, "seconds": 8, "tokens/s": 11, "MB/s": 6,
               "speed-up": 8}
    print(" ".join(f"{name:>{width}}" for name, width in columns.items()))
    baseline = None
    with tempfile.TemporaryDirectory(prefix="hm-bench-preprocess-") as scratch:
        for workers in args.workers:
            summary = build_dataset(repeated, tokenizer, DatasetPaths(Path(scratch) / f"w{workers}"),
                                    workers=workers, progress=False)
            baseline = baseline or summary.tokens_per_second
            print(f"{workers:>7} {summary.documents:>10} {summary.tokens:>11} {summary.text_bytes / 1e6:>7.2f} "
                  f"{summary.seconds:>8.2f} {summary.tokens_per_second:>11,.0f} "
                  f"{summary.text_bytes / 1e6 / summary.seconds:>6.2f} {summary.tokens_per_second / baseline:>7.2f}x",
                  flush=True)
    return 0
