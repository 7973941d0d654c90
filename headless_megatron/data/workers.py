"""Tokenizing batches of documents, in this process or in a pool of worker processes.

``TokenizerPool(tokenizer, dtype, workers)`` turns batches of texts into token arrays, in order.
A compiled engine, or HF ``tokenizers`` with ``workers == 1``, tokenizes in the calling process, on
a thread beside the one reading the corpus; HF ``tokenizers`` with more workers sends batches to a
``ProcessPoolExecutor`` whose workers each build the tokenizer once (from its JSON, with the Rust
``tokenizers`` library only: this module imports neither ``transformers`` nor torch, so a worker
starts in a fraction of a second). Each worker encodes one document at a time on one core, so
``workers`` is the number of cores used for tokenization.

A long document is encoded in pieces of about ``PIECE_CHARACTERS`` (``piece_bounds``) when the
tokenizer gives the same ids piece by piece as in one piece (``cuts_keep_ids``): the Rust encoder
holds some 150 bytes per character of the text it is given (a 50 MB one-line document took 7.5 GB),
so its memory is that of a piece, not of the document.

Memory stays bounded whatever the corpus size: at most ``IN_FLIGHT_PER_WORKER * workers`` batches
(``READ_AHEAD_BATCHES`` in this process) are submitted and not yet consumed (``Pool.imap`` would
instead read the whole input ahead into its task queue). Workers are started with ``spawn``: forking
a process whose reader threads (``datasets``, tqdm) or Rust thread pools are running can deadlock.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from headless_megatron.data.errors import DataError

if TYPE_CHECKING:
    from headless_megatron.data.engines import Engine
    from headless_megatron.data.tokenizer import Tokenizer

IN_FLIGHT_PER_WORKER = 4
READ_AHEAD_BATCHES = 2  # in this process: one being encoded, one read ahead
PIECE_CHARACTERS = 1 << 16  # ~10 MB in the Rust encoder, and long enough that the calls cost nothing

# A cut goes before an ASCII whitespace character that follows a non-whitespace one. Python's \S
# leaves out every character that the tokenizers' regex engine counts as \s (Python's whitespace
# adds U+001C..U+001F to Unicode's), so the character before a cut is \S to both.
_LAST_CUT = re.compile(r".*\S(?=[ \t\n\r\x0b\x0c])", re.DOTALL)
_NEXT_CUT = re.compile(r"\S(?=[ \t\n\r\x0b\x0c])")


@dataclass
class Batch:
    """Documents to tokenize, with their UTF-8 size (for the MB/s of the progress bar)."""

    texts: list[str]
    text_bytes: int


@dataclass
class TokenizedBatch:
    """The documents of a batch as one array of ids (each ending with the end-of-document id)."""

    tokens: np.ndarray
    lengths: np.ndarray


def cuts_keep_ids(encoder_json: str) -> bool:
    """Whether the tokenizer serialized in ``encoder_json`` gives the ids of a whole text when it
    encodes the pieces of ``piece_bounds`` one by one.

    True for BPE and unigram models (each encodes every pre-token on its own) behind GPT-2's
    byte-level pre-tokenization, with no normalizer and no added token matched inside the text
    (special tokens are encoded as text here): what ``--train-tokenizer`` makes, and GPT-2's own.
    Every alternative of GPT-2's regex matches either no whitespace or whitespace only (after at
    most one leading space), so no pre-token holds a non-whitespace character and the whitespace
    after it: a cut there is a pre-token boundary of the whole text; the regex looks one character
    ahead at most and never behind, so the pre-tokens on either side of the cut are the same in the
    piece as in the whole. Other pipelines may join or change characters across a cut (a
    normalizer; Llama 3's pre-tokenizer, which keeps punctuation with the newlines after it).
    """
    config = json.loads(encoder_json)
    pre_tokenizer = config.get("pre_tokenizer") or {}
    model = config.get("model") or {}
    return (
        config.get("normalizer") is None
        and pre_tokenizer.get("type") == "ByteLevel"
        and pre_tokenizer.get("add_prefix_space") is False
        and pre_tokenizer.get("use_regex", True) is True
        and model.get("type") in ("BPE", "Unigram")
        and not model.get("dropout")
        and all(token.get("special") for token in config.get("added_tokens") or [])
    )


def piece_bounds(text: str, budget: int = PIECE_CHARACTERS) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive pieces of ``text``, cut where ``cuts_keep_ids`` holds, each at
    most ``budget`` characters unless a stretch of ``text`` has no such cut (it then ends at the
    next one)."""
    start = 0
    while len(text) - start > budget:
        cut = _LAST_CUT.match(text, start, start + budget + 1) or _NEXT_CUT.search(text, start + budget)
        if cut is None:
            break
        yield start, cut.end()
        start = cut.end()
    yield start, len(text)


@dataclass(frozen=True)
class EncoderSpec:
    """What a process needs to tokenize: the tokenizer's JSON, the end-of-document id, the dataset's
    dtype and the engine (``data/engines.py``) with its options."""

    encoder_json: str
    eod: int
    dtype_name: str
    engine: str = "hf"
    parse_special_tokens: bool = False
    threads: int = 1


class BatchEncoder:
    """Documents -> ids with the end-of-document id appended, as the dataset stores them."""

    def __init__(self, spec: EncoderSpec, engine: Engine | None = None) -> None:
        """``engine``: ``spec``'s engine when it is already built (``EngineChoice.engine``)."""
        from headless_megatron.data.engines import build_engine

        self._engine = engine or build_engine(spec.engine, spec.encoder_json, spec.parse_special_tokens, spec.threads)
        self._in_pieces = cuts_keep_ids(spec.encoder_json)
        self._eod = spec.eod
        self._dtype = np.dtype(spec.dtype_name)

    def __call__(self, texts: list[str]) -> TokenizedBatch:
        if not texts:
            return TokenizedBatch(np.empty(0, dtype=self._dtype), np.empty(0, dtype=np.int64))
        bounds = [list(piece_bounds(text)) if self._in_pieces else [(0, len(text))] for text in texts]
        pieces = [text[start:end] for text, cuts in zip(texts, bounds, strict=True) for start, end in cuts]
        # In the dataset's dtype at once: a list of Python ints would take 36 bytes per token.
        ids, piece_lengths = self._engine.encode(pieces)
        pieces_per_document = np.array([len(cuts) for cuts in bounds])
        lengths = np.add.reduceat(piece_lengths, np.cumsum(pieces_per_document) - pieces_per_document)
        end_of_document = self._fitting(np.array([self._eod]))
        tokens = np.insert(self._fitting(ids), np.cumsum(lengths), end_of_document)  # each document, then its EOD
        return TokenizedBatch(tokens, lengths + 1)

    def _fitting(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` in the dataset's dtype. token_dtype() sized it from the vocabulary; a tokenizer
        whose ids exceed its own vocabulary size must still never be written truncated."""
        if ids.size and int(ids.max()) > np.iinfo(self._dtype).max:
            raise DataError(f"the tokenizer produced id {ids.max()}, which does not fit --dtype {self._dtype.name}")
        return ids.astype(self._dtype, copy=False)


_worker_encoder: BatchEncoder | None = None


def _start_worker(spec: EncoderSpec) -> None:
    global _worker_encoder
    _worker_encoder = BatchEncoder(spec)


def _encode_in_worker(texts: list[str]) -> TokenizedBatch:
    return _worker_encoder(texts)


class TokenizerPool:
    """Ordered, bounded tokenization of batches on ``workers`` cores (see the module docstring): HF
    ``tokenizers`` in ``workers`` processes, a compiled engine in this process on ``workers`` of its
    own threads (it releases the GIL; processes would only add the cost of sending the texts). In
    this process, the encoder runs on a thread of its own, so that reading the next batch (JSON
    parsing holds the GIL) overlaps the encoding of this one."""

    def __init__(self, tokenizer: Tokenizer, dtype, workers: int = 1, engine: str = "hf",
                 parse_special_tokens: bool = False, built_engine: Engine | None = None) -> None:
        """``built_engine``: the engine ``engine`` already built for ``workers`` threads, to use in
        this process instead of building another."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._spec = EncoderSpec(tokenizer.encoder_json(), tokenizer.eod, np.dtype(dtype).name, engine,
                                 parse_special_tokens, threads=workers)
        self._executor: Executor | None = None
        self._encode: Callable[[list[str]], TokenizedBatch] = _encode_in_worker
        self._in_flight = IN_FLIGHT_PER_WORKER * workers
        self._built_engine = built_engine

    def __enter__(self) -> TokenizerPool:
        if self.workers > 1 and self._spec.engine == "hf":
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self._spec,),
            )
        else:
            self._encode, self._in_flight = BatchEncoder(self._spec, self._built_engine), READ_AHEAD_BATCHES
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, TokenizedBatch]]:
        """Each batch with its tokens, in input order."""
        in_flight: deque[tuple[Batch, Future]] = deque()
        try:
            for batch in batches:
                if len(in_flight) >= self._in_flight:
                    done, future = in_flight.popleft()
                    yield done, future.result()
                in_flight.append((batch, self._executor.submit(self._encode, batch.texts)))
            while in_flight:
                done, future = in_flight.popleft()
                yield done, future.result()
        finally:
            for _, future in in_flight:
                future.cancel()
