"""The preprocessing pipeline: corpus -> tokenizer -> Megatron ``.bin/.idx`` + sidecar, and merging.

``build_dataset`` streams the corpus in batches of about ``BATCH_TEXT_BYTES`` through a
``TokenizerPool`` into an ``AtomicDatasetWriter``: the main process reads and writes, the workers
(processes for HF ``tokenizers``, threads of a compiled engine) tokenize, and nothing holds more
than a few batches, so memory does not grow with the corpus. The engine (``data/engines.py``) is
chosen and proven on the corpus's first ``ENGINE_SAMPLE_DOCUMENTS`` documents before anything is
written.

Documents that cannot be used are skipped and counted, never silently dropped: ``empty`` (empty or
whitespace-only, or a missing value) and ``invalid_utf8`` (text that is not valid Unicode, such as a
lone surrogate from a JSON ``\\udc80`` escape). The counts are in the summary line and the sidecar. A
value that is not text (a number, a list) is an error, and so is a corpus left with no document:
both mean the wrong input or ``--text-key``, and no output is written. So is a document that would
be tokenized in one piece of more than ``MAX_PIECE_CHARACTERS`` (see ``workers.piece_bounds``).

``merge_shards`` concatenates the datasets written with ``--shard i/n`` (each to
``P-0000i-of-0000n_<key>_document``) into ``P_<key>_document``, in shard order, after checking
that all ``n`` are there and were made with the same tokenizer.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headless_megatron.data.engines import choose_engine
from headless_megatron.data.errors import DataError
from headless_megatron.data.indexed import AtomicDatasetWriter, DatasetPaths, token_dtype
from headless_megatron.data.sidecar import DatasetInfo, read_sidecar
from headless_megatron.data.sources import Corpus, Shard
from headless_megatron.data.tokenizer import Tokenizer, load_tokenizer
from headless_megatron.data.workers import Batch, TokenizerPool, cuts_keep_ids, piece_bounds

BATCH_TEXT_BYTES = 128 << 10  # small enough to balance a few MB over the workers
BATCH_MAX_DOCUMENTS = 1024
ENGINE_SAMPLE_DOCUMENTS = 256  # the corpus's first documents, on which a fast engine must give HF's ids
# The Rust encoder holds about 150 bytes per character of what it is given at once: about 1.2 GB
# per worker for a piece this long.
MAX_PIECE_CHARACTERS = 8 << 20
SKIP_REASONS = {"empty": "empty", "invalid_utf8": "invalid UTF-8", "no_text_key": "no text (field missing or null)"}


@dataclass
class Summary:
    """What a run wrote, for the closing line and for callers."""

    dataset_prefix: Path
    documents: int
    tokens: int
    text_bytes: int
    dtype: str
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)
    engine: str = "hf"
    """The tokenizer engine that ran (``data/engines.py``)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("inf")

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{SKIP_REASONS[reason]} {count}" for reason, count in self.skipped.items() if count)
        return (
            f"{self.dataset_prefix}: {self.documents} documents, {self.tokens} tokens ({self.dtype}), "
            f"{self.text_bytes / 1e6:.2f} MB of text in {self.seconds:.1f} s "
            f"({self.tokens_per_second:,.0f} tokens/s, {self.text_bytes / 1e6 / max(self.seconds, 1e-9):.2f} MB/s, "
            f"engine {self.engine}); "
            f"skipped {skipped}" + (f" ({reasons})" if skipped else "")
        )


def clean_documents(corpus: Corpus, skipped: Counter | None = None, strict: bool = False, *,
                    in_pieces: bool) -> Iterator[tuple[str, int]]:
    """``(text, UTF-8 size)`` of each usable document; the others are counted in ``skipped``
    (records without the text field refused instead when ``strict``). A document whose longest
    piece (``piece_bounds`` when ``in_pieces``, else the whole) is over ``MAX_PIECE_CHARACTERS`` is
    refused."""
    skipped = Counter() if skipped is None else skipped
    for number, value in enumerate(corpus.documents()):
        if value is None:  # the field is absent from this record (datasets fills in None) or null
            if strict:
                raise DataError(f"--text-key {corpus.text_key}: record {number} of {corpus.description} has no "
                                "text (the field is missing or null; drop --strict to skip such records)")
            skipped["no_text_key"] += 1
            continue
        if isinstance(value, str) and (not value or value.isspace()):
            skipped["empty"] += 1
            continue
        if not isinstance(value, str):
            raise DataError(
                f"--text-key {corpus.text_key}: record {number} of {corpus.description} holds "
                f"{type(value).__name__} {str(value)[:40]!r}, expected text"
            )
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            skipped["invalid_utf8"] += 1
            continue
        if len(value) > MAX_PIECE_CHARACTERS:
            _refuse_long_pieces(value, f"--input {corpus.description}: record {number}", in_pieces)
        yield value, size


def prepare_tokenizer(
    corpus: Corpus, tokenizer: str | None = None, train: str | None = None, vocab_size: int | None = None
) -> Tokenizer:
    """``--tokenizer`` loaded, or a ``--train-tokenizer`` kind trained on the corpus (one pass)."""
    from headless_megatron.data.tokenizer_training import train_tokenizer

    if (tokenizer is None) == (train is None):
        raise DataError("expected exactly one of --tokenizer and --train-tokenizer")
    if tokenizer is not None:
        if vocab_size is not None:
            raise DataError("--vocab-size goes with --train-tokenizer; a loaded --tokenizer keeps its vocabulary")
        return load_tokenizer(tokenizer)
    if vocab_size is None:
        raise DataError(f"--train-tokenizer {train}: --vocab-size is required")
    # The trainer pre-tokenizes with GPT-2's byte-level rule, as the tokenizer it makes does
    # (workers.cuts_keep_ids), so the pieces hold the same words as the documents: the same
    # tokenizer, in the memory of a piece.
    documents = (text for text, _ in clean_documents(corpus, in_pieces=True))
    texts = (text[start:end] for text in documents for start, end in piece_bounds(text))
    return train_tokenizer(train, vocab_size, _not_empty(texts, corpus), source=corpus.description)


def build_dataset(
    corpus: Corpus,
    tokenizer: Tokenizer,
    paths: DatasetPaths,
    *,
    dtype: str = "auto",
    workers: int = 1,
    shard: Shard | None = None,
    command: str | None = None,
    progress: bool = True,
    strict: bool = False,
    engine: str = "auto",
    parse_special_tokens: bool = False,
    say: Callable[[str], None] = print,
) -> Summary:
    """Tokenize ``corpus`` into the dataset at ``paths``; written only if the whole run succeeds.
    Records without the text field are skipped and counted, or refused when ``strict``. ``engine``
    is ``--tokenizer-engine`` (``data/engines.py``): proven on the first documents before anything
    is written; ``say`` receives the line of an ``auto`` fallback."""
    from tqdm import tqdm

    token_type = token_dtype(dtype, tokenizer.vocab_size)
    if workers < 1:
        raise DataError(f"--workers {workers}: expected at least 1")
    skipped: Counter = Counter({reason: 0 for reason in SKIP_REASONS})
    encoder_json = tokenizer.encoder_json()
    usable = clean_documents(corpus, skipped, strict, in_pieces=cuts_keep_ids(encoder_json))
    sample = list(itertools.islice(usable, ENGINE_SAMPLE_DOCUMENTS))
    choice = choose_engine(engine, encoder_json, [text for text, _ in sample], parse_special_tokens, threads=workers)
    if choice.fallback_note:
        say(f"tokenizer engine: {choice.fallback_note}")
    usable = itertools.chain(sample, usable)
    documents = tokens = text_bytes = 0
    pool = TokenizerPool(tokenizer, token_type, workers, choice.name, parse_special_tokens, choice.engine)
    with AtomicDatasetWriter(paths, token_type) as writer, pool:
        # Timed from here: entering the writer imports Megatron-Core and torch, a once-per-process
        # cost; starting the workers (on the first batch) is part of the work and is counted.
        start = time.perf_counter()
        bar = tqdm(total=corpus.num_documents, unit="doc", unit_scale=True, desc="tokenizing", disable=not progress,
                   mininterval=0.5, dynamic_ncols=True)
        with bar:
            for batch, tokenized in pool.map(_batches(usable)):
                writer.add_documents(tokenized.tokens, tokenized.lengths)
                documents += len(batch.texts)
                tokens += int(tokenized.lengths.sum())
                text_bytes += batch.text_bytes
                elapsed = max(time.perf_counter() - start, 1e-9)
                rates = f"{text_bytes / 1e6 / elapsed:.2f} MB/s, {tokens / elapsed:,.0f} tokens/s"
                bar.set_postfix_str(rates, refresh=False)
                # Skipped records advance the bar too, so that it ends at the corpus size it started with.
                bar.update(documents + sum(skipped.values()) - bar.n)
            bar.update(documents + sum(skipped.values()) - bar.n)  # records skipped after the last batch
        if documents == 0:
            raise DataError(f"--input {corpus.description}: no documents to write{_skipped_note(skipped)}")
        info = DatasetInfo(
            documents=documents,
            tokens=tokens,
            dtype=token_type.__name__,
            text_key=paths.text_key,
            tokenizer={**_tokenizer_record(tokenizer, paths), "engine": choice.name,
                       "parse_special_tokens": parse_special_tokens},
            source={"inputs": corpus.inputs, "shard": str(shard) if shard else None, "text_bytes": text_bytes,
                    "skipped": dict(skipped)},
            command=command,
        )
        writer.publish(tokenizer, info)
    return Summary(paths.dataset_prefix, documents, tokens, text_bytes, info.dtype, time.perf_counter() - start,
                   dict(skipped), choice.name)


def shard_paths(paths: DatasetPaths, shard: Shard) -> DatasetPaths:
    """Where ``--shard i/n`` writes: ``P-0000i-of-0000n_<key>_document`` and ``P-0000i-of-0000n_tokenizer``."""
    return DatasetPaths(Path(f"{paths.output_prefix}{shard.suffix}"), paths.text_key)


def find_shards(paths: DatasetPaths) -> list[DatasetPaths]:
    """The complete shard datasets of ``paths``, in order; all ``n`` must be there."""
    prefix = paths.output_prefix
    pattern = re.compile(rf"{re.escape(prefix.name)}-(\d+)-of-(\d+)_{re.escape(paths.text_key)}_document\.json")
    found = {}
    for candidate in (prefix.parent.iterdir() if prefix.parent.is_dir() else ()):
        match = pattern.fullmatch(candidate.name)
        if match:
            found[Shard(int(match[1]), int(match[2]))] = candidate
    if not found:
        raise DataError(
            f"--merge {prefix}: no shards {prefix}-*-of-*_{paths.text_key}_document.json; write them with --shard i/n"
        )
    counts = sorted({shard.count for shard in found})
    if len(counts) > 1:
        splits = ", ".join(f"of {count}" for count in counts)
        raise DataError(f"--merge {prefix}: shards of different splits ({splits}) are mixed")
    expected = [Shard(index, counts[0]) for index in range(counts[0])]
    missing = [str(shard) for shard in expected if shard not in found]
    if missing:
        raise DataError(f"--merge {prefix}: shards {', '.join(missing)} are missing or did not finish")
    return [shard_paths(paths, shard) for shard in expected]


def merge_shards(paths: DatasetPaths, *, command: str | None = None) -> Summary:
    """Concatenate the ``--shard`` datasets of ``paths`` into ``paths``, in shard order."""
    start = time.perf_counter()
    shards = find_shards(paths)
    infos = [read_sidecar(shard.sidecar) for shard in shards]
    for shard, info in zip(shards[1:], infos[1:], strict=True):
        if info.tokenizer["fingerprint"] != infos[0].tokenizer["fingerprint"]:
            raise DataError(
                f"--merge {paths.output_prefix}: {shard.dataset_prefix} was made with another tokenizer than "
                f"{shards[0].dataset_prefix}; preprocess every shard with the same --tokenizer"
            )
        if info.dtype != infos[0].dtype:
            raise DataError(f"--merge {paths.output_prefix}: {shard.dataset_prefix} is {info.dtype}, "
                            f"{shards[0].dataset_prefix} is {infos[0].dtype}; use the same --dtype for every shard")
    tokenizer = load_tokenizer(shards[0].sidecar.parent / infos[0].tokenizer["path"])
    skipped = sum((Counter(info.source["skipped"]) for info in infos), Counter({reason: 0 for reason in SKIP_REASONS}))
    merged = DatasetInfo(
        documents=sum(info.documents for info in infos),
        tokens=sum(info.tokens for info in infos),
        dtype=infos[0].dtype,
        text_key=paths.text_key,
        tokenizer={**infos[0].tokenizer, "path": _relative_tokenizer_path(paths)},
        source={"inputs": infos[0].source["inputs"], "shard": None,
                "text_bytes": sum(info.source["text_bytes"] for info in infos), "skipped": dict(skipped),
                "merged_from": [shard.dataset_prefix.name for shard in shards]},
        command=command,
    )
    with AtomicDatasetWriter(paths, np.dtype(merged.dtype).type) as writer:
        for shard in shards:
            writer.add_dataset(shard.dataset_prefix)
        writer.publish(tokenizer, merged)
    return Summary(paths.dataset_prefix, merged.documents, merged.tokens, merged.source["text_bytes"], merged.dtype,
                   time.perf_counter() - start, dict(skipped))


def _batches(documents: Iterator[tuple[str, int]]) -> Iterator[Batch]:
    texts: list[str] = []
    size = 0
    for text, text_bytes in documents:
        texts.append(text)
        size += text_bytes
        if size >= BATCH_TEXT_BYTES or len(texts) >= BATCH_MAX_DOCUMENTS:
            yield Batch(texts, size)
            texts, size = [], 0
    if texts:
        yield Batch(texts, size)


def _refuse_long_pieces(text: str, record: str, in_pieces: bool) -> None:
    if not in_pieces:
        raise DataError(
            f"{record} has {len(text):,} characters, more than the {MAX_PIECE_CHARACTERS:,} that the --tokenizer "
            "encodes at once (only byte-level BPE and unigram tokenizers with GPT-2's pre-tokenization, as "
            "--train-tokenizer makes, are encoded in pieces); split the document"
        )
    longest = max(end - start for start, end in piece_bounds(text))
    if longest > MAX_PIECE_CHARACTERS:
        raise DataError(
            f"{record} has a stretch of {longest:,} characters without whitespace to cut at, more than the "
            f"{MAX_PIECE_CHARACTERS:,} that are encoded at once; split the document"
        )


def _not_empty(texts: Iterator[str], corpus: Corpus) -> Iterator[str]:
    """``texts``, or a ``DataError`` if there is none (a tokenizer cannot be trained on nothing)."""
    first = next(texts, None)
    if first is None:
        raise DataError(f"--input {corpus.description}: no documents to train a tokenizer on")
    yield first
    yield from texts


def _tokenizer_record(tokenizer: Tokenizer, paths: DatasetPaths) -> dict:
    return {
        "path": _relative_tokenizer_path(paths),
        "source": tokenizer.source,
        "vocab_size": tokenizer.vocab_size,
        "fingerprint": tokenizer.fingerprint,
        **tokenizer.special_tokens,
        "added_special_tokens": list(tokenizer.added_special_tokens),
    }


def _relative_tokenizer_path(paths: DatasetPaths) -> str:
    """Relative to the sidecar's directory, so that the dataset directory can move."""
    return os.path.relpath(paths.tokenizer, paths.sidecar.parent)


def _skipped_note(skipped: Counter) -> str:
    total = sum(skipped.values())
    if not total:
        return " (the input is empty)"
    reasons = ", ".join(f"{SKIP_REASONS[reason]} {count}" for reason, count in skipped.items() if count)
    return f" (all {total} records were skipped: {reasons})"
