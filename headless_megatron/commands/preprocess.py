"""``headless-megatron preprocess``: text corpora -> Megatron ``.bin/.idx`` datasets (+ tokenizer).

    headless-megatron preprocess --input builtin:python-docs --train-tokenizer bpe --vocab-size 8192 \\
        --output-prefix data/pydocs --workers 2
    headless-megatron preprocess --input corpus/ --tokenizer data/pydocs_tokenizer --output-prefix data/c --shard 0/4
    headless-megatron preprocess --merge --output-prefix data/c

writes ``P_text_document.{bin,idx}`` (the prefix training is given), its sidecar
``P_text_document.json`` and the tokenizer ``P_tokenizer/``. Bad input or usage prints
``headless-megatron preprocess: error: <message>`` and exits with status 2, leaving no output.
The pipeline itself is ``headless_megatron.data.preprocess``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from headless_megatron.data.builtin import DESCRIPTIONS as BUILTIN_CORPORA
from headless_megatron.data.engines import ENGINES
from headless_megatron.data.errors import DataError
from headless_megatron.data.file_reader import TXT_UNITS
from headless_megatron.data.indexed import TOKEN_DTYPES
from headless_megatron.data.tokenizer_training import KINDS as TOKENIZER_KINDS

EXIT_INTERRUPTED = 128 + 2  # what a shell reports for SIGINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "built-in corpora (no download):\n" + "\n".join(
        f"  builtin:{name:14} {text}" for name, text in BUILTIN_CORPORA.items()
    )
    source = parser.add_argument_group("input")
    source.add_argument("--input", nargs="+", metavar="INPUT",
                        help="builtin:NAME, files/directories of .jsonl/.json/.parquet/.csv/.txt, or a Hugging Face "
                             "Hub dataset name")
    source.add_argument("--text-key", default="text", help="field holding the text (default: text); also names "
                        "the output, P_<key>_document")
    source.add_argument("--dataset-config", help="Hub dataset configuration (load_dataset's name)")
    source.add_argument("--split", default="train", help="Hub dataset split (default: train)")
    source.add_argument("--streaming", action="store_true",
                        help="read record by record without the datasets cache and without counting the records "
                             "first (very large corpora; .jsonl and .txt never use the cache); --shard then splits "
                             "by input files")
    source.add_argument("--txt-document", choices=TXT_UNITS, default="line",
                        help=".txt inputs: one document per line (default), paragraph or file")
    source.add_argument("--cache-dir", help="datasets cache directory (default: the Hugging Face default); not used "
                        "by .jsonl and .txt, which are read directly")
    tokenizer = parser.add_argument_group("tokenizer (one of --tokenizer and --train-tokenizer)")
    tokenizer.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                           help="Hugging Face tokenizer directory, tokenizer.json, sentencepiece .model or Hub name")
    tokenizer.add_argument("--train-tokenizer", choices=TOKENIZER_KINDS,
                           help="train a byte-level tokenizer of this kind on the input, saved as P_tokenizer/ "
                                "(the input is read twice)")
    tokenizer.add_argument("--vocab-size", type=int,
                           help="vocabulary size of --train-tokenizer, special tokens included")
    tokenizer.add_argument("--tokenizer-engine", choices=("auto", *ENGINES), default="auto",
                           help="what encodes the text: hf (HF tokenizers, every tokenizer), fastokens or gigatoken "
                                "(compiled BPE engines, many times faster), or auto (default): the fastest that gives "
                                "HF's ids on a built-in adversarial set and the first documents, checked before "
                                "anything is written, else hf")
    tokenizer.add_argument("--parse-special-tokens", action="store_true",
                           help="a special-token string in the text (a literal <|endoftext|>) becomes that token's "
                                "id, as Megatron-LM's tools make it; by default it is plain text")
    tokenizer.add_argument("--tokenizer-only", action="store_true",
                           help="only write P_tokenizer/ (e.g. once, before preprocessing shards with --tokenizer)")
    output = parser.add_argument_group("output")
    output.add_argument("--output-prefix", required=True, metavar="P",
                        help="writes P_<key>_document.{bin,idx,json} and P_tokenizer/")
    output.add_argument("--dtype", choices=["auto", *TOKEN_DTYPES], default="auto",
                        help="token dtype in the .bin (default: the smallest that holds the vocabulary)")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--workers", type=_positive_int, default=1,
                       help="cores tokenizing: processes for the hf engine, threads for a compiled one (default: 1)")
    scale.add_argument("--shard", metavar="I/N",
                       help="preprocess part I of N (from 0) into P-0000I-of-0000N_...; then --merge")
    scale.add_argument("--merge", action="store_true", help="merge the --shard outputs of --output-prefix into P_...")
    scale.add_argument("--quiet", action="store_true", help="no progress bar (the summary line is still printed)")
    source.add_argument("--strict", action="store_true",
                        help="refuse records without the --text-key field instead of skipping and counting them")


def run(args) -> int:
    try:
        with _sigterm_as_exit():
            return _run(args)
    except KeyboardInterrupt:
        print("headless-megatron preprocess: interrupted; partial outputs removed", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args) -> int:
    from headless_megatron.data.indexed import DatasetPaths, publish_tokenizer
    from headless_megatron.data.preprocess import build_dataset, merge_shards, prepare_tokenizer, shard_paths
    from headless_megatron.data.sources import Shard, open_corpus

    _check_usage(args)
    if args.quiet:
        _quiet_datasets()
    paths = DatasetPaths(Path(args.output_prefix), args.text_key)
    if args.merge:
        summary = merge_shards(paths, command=_command_line())
        print(f"preprocess: merged {summary.line()}")
        return 0
    shard = Shard.parse(args.shard) if args.shard else None
    corpus = open_corpus(
        args.input, text_key=args.text_key, dataset_config=args.dataset_config, split=args.split,
        streaming=args.streaming, txt_document=args.txt_document, cache_dir=args.cache_dir, shard=shard,
    )
    start = time.perf_counter()
    tokenizer = prepare_tokenizer(corpus, args.tokenizer, args.train_tokenizer, args.vocab_size)
    added = f", added {' '.join(tokenizer.added_special_tokens)}" if tokenizer.added_special_tokens else ""
    print(f"preprocess: tokenizer {tokenizer.source}: {tokenizer.vocab_size} ids, eod {tokenizer.eod}, "
          f"pad {tokenizer.pad}, mask {tokenizer.mask}{added} ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.tokenizer_only:
        print(f"preprocess: wrote {publish_tokenizer(tokenizer, paths.tokenizer)}")
        return 0
    summary = build_dataset(
        corpus, tokenizer, shard_paths(paths, shard) if shard else paths, dtype=args.dtype, workers=args.workers,
        shard=shard, command=_command_line(), progress=not args.quiet, strict=args.strict,
        engine=args.tokenizer_engine, parse_special_tokens=args.parse_special_tokens,
        say=lambda line: print(f"preprocess: {line}", flush=True),
    )
    print(f"preprocess: wrote {summary.line()}")
    return 0


def _check_usage(args) -> None:
    if args.merge:
        extra = [flag for flag, value in (("--input", args.input), ("--tokenizer", args.tokenizer),
                                          ("--train-tokenizer", args.train_tokenizer), ("--shard", args.shard))
                 if value]
        if extra:
            raise DataError(f"--merge combines existing shards: drop {', '.join(extra)}")
        return
    if not args.input:
        raise DataError("--input is required (or --merge)")
    _check_output_prefix(args.output_prefix)
    if args.shard and args.train_tokenizer:
        raise DataError(
            "--shard with --train-tokenizer would train a different tokenizer per shard: train it once with "
            "--tokenizer-only, then preprocess each shard with --tokenizer P_tokenizer"
        )
    if args.shard and args.tokenizer_only:
        raise DataError("--tokenizer-only writes one tokenizer for every shard: drop --shard")


def _check_output_prefix(prefix: str) -> None:
    """Before the corpus and the tokenizer are loaded: the outputs' directory can be created and written."""
    directory = Path(prefix).expanduser().absolute().parent
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"--output-prefix {prefix}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"--output-prefix {prefix}: cannot write in {existing} (permission denied)")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _quiet_datasets() -> None:
    """No ``datasets`` progress bars either, without importing it for inputs that do not need it."""
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    else:
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when datasets is imported


def _command_line() -> str:
    """This run's command line, for the sidecar."""
    program = Path(sys.argv[0]).name
    program = "python -m headless_megatron" if program == "__main__.py" else shlex.quote(program)
    return " ".join([program, shlex.join(sys.argv[1:])])


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """A batch scheduler's SIGTERM unwinds like Ctrl-C, so that partial outputs are removed."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        print("headless-megatron preprocess: terminated; partial outputs removed", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
