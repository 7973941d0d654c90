"""``headless-megatron bench preprocess``: the tokenizer engines side by side, each a whole ``preprocess`` process.

    headless-megatron bench preprocess                        # 100 MB; hf, fastokens, gigatoken; 1 and 2 workers
    headless-megatron bench preprocess --megabytes 100 1000   # and 1 GB with the compiled engines (peak RSS)
    headless-megatron bench preprocess --input corpus.jsonl --tokenizer gpt2 --engines hf fastokens

One table, measured in one run on the same corpus and the same tokenizer: every engine of
``--tokenizer-engine`` (``data/engines.py``) at every ``--workers`` count and every corpus size, each
a fresh ``python -m headless_megatron preprocess --tokenizer-engine E --workers W --streaming``
process (``--streaming``: read record by record, as a corpus too large for the ``datasets`` cache
would be, and so that no run finds the Arrow cache another run built). Columns:

- ``tokenize s``, ``MB/s``, ``tokens/s``: the pipeline's own timing, from the ``wrote`` line the
  process prints (reading, tokenizing, writing and publishing; worker start-up included);
- ``process s``: the whole process, interpreter start to exit; ``start-up s`` is ``process s`` less
  ``tokenize s``: the interpreter, the imports (torch and Megatron-Core), opening the corpus, loading
  the tokenizer, the engine's check against HF on the probe texts and the first documents, and exit;
- ``peak RSS MiB``: the largest sum of the resident sets of the process and its children (the HF
  engine's worker processes), sampled every ``SAMPLE_SECONDS``;
- ``tokenize x``, ``process x``: the HF engine's seconds over this row's, at the same size and
  worker count (HF tokenizers in worker processes is the path this project had before the engines);
- ``identical``: the ``.bin`` and ``.idx`` byte-equal to the reference run of the same size (``ref``:
  the first row of that size, the HF engine with the fewest workers when it ran); any ``NO`` makes the
  command exit with status 1.

The corpus (without ``--input``): real English prose that ships in the installed packages, never
downloaded: the documentation strings of every ``.py`` file of the standard library and of
site-packages (a triple-quoted string that opens a line: module, class and function docstrings and a
few other text blocks; dedented; at least ``MIN_DOCUMENT_CHARACTERS`` characters; each kept once),
files in path order, written as JSONL until each ``--megabytes`` size is reached, from the start again
when the unique text runs out (about 58 MB in this project's environment). It is the same on every
machine with the same packages installed. The tokenizer (without ``--tokenizer``) is a
``--train-tokenizer`` kind trained on its first ``--train-megabytes``, once, untimed. The HF engine is
left out above ``--hf-max-megabytes`` (about 3 MB/s on one core: 1 GB would take minutes per row).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENGINE_ORDER = ("hf", "fastokens", "gigatoken")  # hf first: the others' ratios and bytes are against it
MIN_DOCUMENT_CHARACTERS = 200
SAMPLE_SECONDS = 0.02
DOCSTRING = re.compile(r'^[ \t]*[rRuU]?("""|\'\'\')(.*?)\1', re.MULTILINE | re.DOTALL)
WROTE = re.compile(
    r"preprocess: wrote .*: (?P<documents>\d+) documents, (?P<tokens>\d+) tokens \(\w+\), "
    r"(?P<megabytes>[\d.]+) MB of text in [\d.]+ s \((?P<tokens_per_second>[\d,]+) tokens/s, [\d.]+ MB/s, "
    r"engine (?P<engine>\w+)\)"
)
# Left to --workers: the engines read these once, and only when they are not set already.
ENGINE_THREAD_VARIABLES = ("FASTOKENS_BPE_THREADS", "RAYON_NUM_THREADS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--megabytes", type=float, nargs="+", default=[100.0],
                        help="sizes of the generated corpus, MB of UTF-8 text (default: 100)")
    parser.add_argument("--engines", nargs="+", choices=ENGINE_ORDER, default=list(ENGINE_ORDER),
                        help="tokenizer engines to run (default: all three)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="--workers counts to time (default: 1 2)")
    parser.add_argument("--hf-max-megabytes", type=float, default=200.0,
                        help="leave the hf engine out of larger corpora (default: 200)")
    parser.add_argument("--input", nargs="+",
                        help="preprocess this corpus (as for preprocess) instead of the generated one; "
                             "--megabytes then does not apply")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="as for preprocess")
    parser.add_argument("--train-tokenizer", choices=("bpe", "unigram"),
                        help="train one on the corpus first (default: bpe, when --tokenizer is not given)")
    parser.add_argument("--vocab-size", type=int, help="for --train-tokenizer (default: 32768)")
    parser.add_argument("--train-megabytes", type=float, default=10.0,
                        help="train the tokenizer on the corpus's first MB (default: 10)")
    parser.add_argument("--work-dir", help="where the corpus and the datasets are written (default: a temporary "
                                           "directory); removed afterwards")


@dataclass
class Run:
    label: str
    engine: str
    workers: int
    process_seconds: float = 0.0
    peak_rss: int = 0
    megabytes: float = 0.0
    tokens: int = 0
    tokens_per_second: float = 0.0
    digest: str = ""
    error: str | None = None

    @property
    def tokenize_seconds(self) -> float:
        return self.tokens / self.tokens_per_second


def run(args) -> int:
    from headless_megatron.data.errors import DataError
    from headless_megatron.data.sources import open_corpus

    if any(count < 1 for count in args.workers):
        raise DataError(f"--workers {' '.join(map(str, args.workers))}: expected counts of at least 1")
    if args.tokenizer and (args.train_tokenizer or args.vocab_size):
        raise DataError("--tokenizer is used as it is: drop --train-tokenizer and --vocab-size")
    if any(megabytes <= 0 for megabytes in args.megabytes):
        raise DataError(f"--megabytes {' '.join(f'{size:g}' for size in args.megabytes)}: expected sizes above 0")
    if args.engines == ["hf"] * len(args.engines) and not args.input and min(args.megabytes) > args.hf_max_megabytes:
        raise DataError(f"nothing to run: the hf engine alone, on corpora above --hf-max-megabytes "
                        f"{args.hf_max_megabytes:g}")
    given = open_corpus(args.input, text_key=args.text_key, streaming=True) if args.input else None
    engines = [engine for engine in ENGINE_ORDER if engine in args.engines]
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hm-bench-preprocess-", dir=args.work_dir) as scratch:
        scratch = Path(scratch)
        if given is not None:
            corpora = [(given.description, list(args.input), None)]
            training_texts = _texts_of(given)
            description = given.description
        else:
            prose = Prose()
            corpora = []
            for megabytes in sorted(set(args.megabytes)):
                path = scratch / f"corpus-{megabytes:g}MB.jsonl"
                prose.write_jsonl(path, megabytes)
                corpora.append((f"{megabytes:g} MB", [str(path)], megabytes))
            prose.read(args.train_megabytes)  # the same tokenizer whatever the sizes
            training_texts = prose.documents()
            description = (f"docstrings of the installed packages ({prose.unique_bytes / 1e6:.1f} MB unique in "
                           f"{len(prose.lines):,} documents, repeated to size)")
        tokenizer = _tokenizer(args, training_texts, args.train_megabytes, description, scratch / "tokenizer")
        print(f"corpus: {description}; tokenizer: {tokenizer.source} ({tokenizer.vocab_size} ids); "
              f"{os.cpu_count()} CPUs; {_versions()}", flush=True)
        runs = []
        for label, inputs, megabytes in corpora:
            for engine in engines:
                if engine == "hf" and megabytes is not None and megabytes > args.hf_max_megabytes:
                    continue
                for workers in sorted(set(args.workers)):
                    result = _measure(label, engine, workers, inputs, args.text_key, scratch)
                    runs.append(result)
                    print(f"bench preprocess: {label}, {engine} x{workers}: "
                          + (f"failed: {result.error}" if result.error else
                             f"{result.process_seconds:.1f} s, {result.megabytes / result.tokenize_seconds:.2f} MB/s"),
                          file=sys.stderr, flush=True)
    return _print_table(runs)


class Prose:
    """The documentation strings of the installed Python sources (see the module docstring), read
    lazily: as many as the largest corpus needs, then the same again."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # one JSONL line per document
        self.unique_bytes = 0
        self._sizes: list[int] = []
        self._source = _package_docstrings()

    def documents(self) -> Iterator[str]:
        for line in self.lines:
            yield json.loads(line)["text"]

    def read(self, megabytes: float) -> None:
        """Read documents until ``megabytes`` MB of unique text are in, or none are left."""
        while self.unique_bytes < megabytes * 1e6 and self._read_one():
            pass

    def write_jsonl(self, path: Path, megabytes: float) -> None:
        """Write documents as ``{"text": ...}`` lines until they hold ``megabytes`` MB of text."""
        wanted, written = megabytes * 1e6, 0
        with open(path, "wb") as file:
            for number in itertools.count():
                if written >= wanted:
                    return
                if number == len(self.lines) and not self._read_one():
                    if not self.lines:
                        raise RuntimeError("no documentation strings found in the installed packages")
                file.write(self.lines[number % len(self.lines)])
                written += self._sizes[number % len(self._sizes)]

    def _read_one(self) -> bool:
        text = next(self._source, None)
        if text is None:
            return False
        self.lines.append((json.dumps({"text": text}, ensure_ascii=False) + "\n").encode())
        self._sizes.append(len(text.encode()))
        self.unique_bytes += self._sizes[-1]
        return True


def _package_docstrings() -> Iterator[str]:
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "purelib", "platlib"):
        root = Path(paths[key]).resolve()
        if root.is_dir() and not any(root == seen or seen in root.parents for seen in roots):
            roots.append(root)
    seen: set[str] = set()
    for root in roots:
        for path in sorted(root.rglob("*.py"), key=lambda path: path.relative_to(root).as_posix()):
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for match in DOCSTRING.finditer(source):
                text = inspect.cleandoc(match.group(2)).strip()
                if len(text) >= MIN_DOCUMENT_CHARACTERS and text not in seen:
                    seen.add(text)
                    yield text


def _texts_of(corpus) -> Iterator[str]:
    return (value for value in corpus.documents() if isinstance(value, str) and value.strip())


def _tokenizer(args, texts: Iterator[str], megabytes: float, description: str, directory: Path):
    """``--tokenizer`` loaded, or one trained on the first ``megabytes`` of ``texts``, saved as ``directory``."""
    from headless_megatron.data.indexed import publish_tokenizer
    from headless_megatron.data.preprocess import prepare_tokenizer
    from headless_megatron.data.sources import Corpus

    if args.tokenizer:
        tokenizer = prepare_tokenizer(None, args.tokenizer)
    else:
        def first_megabytes() -> Iterator[str]:
            total = 0
            for text in texts:
                if total >= megabytes * 1e6:
                    return
                total += len(text.encode())
                yield text

        sample = Corpus(f"the first {megabytes:g} MB of the {description.split(' (')[0]}", [], "text", None,
                        first_megabytes)
        tokenizer = prepare_tokenizer(sample, None, args.train_tokenizer or "bpe", args.vocab_size or 32768)
    publish_tokenizer(tokenizer, directory)
    return tokenizer


def _measure(label: str, engine: str, workers: int, inputs: list[str], text_key: str, scratch: Path) -> Run:
    """One fresh ``preprocess`` process: its wall time, peak RSS of its tree and its own figures."""
    result = Run(label, engine, workers)
    output = scratch / f"run-{engine}-{workers}"
    command = [sys.executable, "-m", "headless_megatron", "preprocess", "--input", *inputs, "--text-key", text_key,
               "--streaming", "--tokenizer", str(scratch / "tokenizer"), "--output-prefix", str(output / "data"),
               "--tokenizer-engine", engine, "--workers", str(workers), "--quiet"]
    environment = {name: value for name, value in os.environ.items() if name not in ENGINE_THREAD_VARIABLES}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment)
    sampler = threading.Thread(target=_sample_peak_rss, args=(process, result), daemon=True)
    sampler.start()
    printed, _ = process.communicate()
    result.process_seconds = time.perf_counter() - start
    sampler.join()
    match = WROTE.search(printed)
    if process.returncode != 0 or match is None:
        lines = printed.strip().splitlines() or [f"exit status {process.returncode}"]
        result.error = lines[-1]
    else:
        result.megabytes = float(match["megabytes"])
        result.tokens = int(match["tokens"])
        result.tokens_per_second = float(match["tokens_per_second"].replace(",", ""))
        if match["engine"] != engine:
            result.error = f"ran engine {match['engine']}"
        digest = hashlib.sha256()
        for suffix in (".bin", ".idx"):
            with open(output / f"data_{text_key}_document{suffix}", "rb") as file:
                for block in iter(lambda: file.read(1 << 24), b""):
                    digest.update(block)
        result.digest = digest.hexdigest()
    shutil.rmtree(output, ignore_errors=True)
    return result


def _sample_peak_rss(process: subprocess.Popen, result: Run) -> None:
    """Keep the largest sum of resident sets of ``process`` and its descendants in ``result.peak_rss``;
    the tree is looked up every 10th sample (a scan of all processes), the sizes at every sample."""
    import psutil

    try:
        root = psutil.Process(process.pid)
    except psutil.NoSuchProcess:
        return
    members = [root]
    for number in itertools.count():
        if process.poll() is not None:
            return
        if number % 10 == 0:
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
        total = 0
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:  # exited meanwhile
                pass
        result.peak_rss = max(result.peak_rss, total)
        time.sleep(SAMPLE_SECONDS)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("tokenizers", "fastokens", "gigatoken"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def _print_table(runs: list[Run]) -> int:
    from headless_megatron.benchmarks import print_table

    header = ["corpus MB", "engine", "workers", "tokens", "tokenize s", "MB/s", "tokens/s", "tokenize x",
              "process s", "start-up s", "process x", "peak RSS MiB", "identical"]
    rows, differing = [], 0
    for label, group in itertools.groupby(runs, key=lambda run: run.label):
        group = list(group)
        done = [run for run in group if run.error is None]
        reference = done[0] if done else None
        hf = {run.workers: run for run in done if run.engine == "hf"}
        for run in group:
            if run.error is not None:
                rows.append([label, run.engine, str(run.workers), f"failed: {run.error}", *[""] * 9])
                continue
            baseline = hf.get(run.workers)
            identical = "ref" if run is reference else "yes" if run.digest == reference.digest else "NO"
            differing += identical == "NO"
            rows.append([
                f"{run.megabytes:.2f}", run.engine, str(run.workers), f"{run.tokens:,}", f"{run.tokenize_seconds:.2f}",
                f"{run.megabytes / run.tokenize_seconds:.2f}", f"{run.tokens_per_second:,.0f}",
                f"{baseline.tokenize_seconds / run.tokenize_seconds:.2f}x" if baseline else "-",
                f"{run.process_seconds:.2f}", f"{run.process_seconds - run.tokenize_seconds:.2f}",
                f"{baseline.process_seconds / run.process_seconds:.2f}x" if baseline else "-",
                f"{run.peak_rss / 2**20:,.0f}", identical,
            ])
    print_table(header, rows)
    if differing:
        print(f"{differing} run(s) wrote other bytes than the reference run of their corpus")
    return 1 if differing or any(run.error for run in runs) else 0
