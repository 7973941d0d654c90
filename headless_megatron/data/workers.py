"""Tokenizing batches of documents, in this process or in a pool of worker processes.

``TokenizerPool(tokenizer, dtype, workers)`` turns batches of texts into token arrays, in order.
With ``workers == 1`` it tokenizes in the calling process; with more, batches go to a
``ProcessPoolExecutor`` whose workers each build the tokenizer once (from its JSON, with the Rust
``tokenizers`` library only: this module imports neither ``transformers`` nor torch, so a worker
starts in a fraction of a second). Each worker encodes one document at a time on one core, so
``workers`` is the number of cores used for tokenization.

Memory stays bounded whatever the corpus size: at most ``IN_FLIGHT_PER_WORKER * workers`` batches
are submitted and not yet consumed (``Pool.imap`` would instead read the whole input ahead into its
task queue). Workers are started with ``spawn``: forking a process whose reader threads
(``datasets``, tqdm) or Rust thread pools are running can deadlock.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from headless_megatron.data.errors import DataError

if TYPE_CHECKING:
    from headless_megatron.data.tokenizer import Tokenizer

IN_FLIGHT_PER_WORKER = 4


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


class BatchEncoder:
    """Documents -> ids with the end-of-document id appended, as the dataset stores them."""

    def __init__(self, encoder_json: str, eod: int, dtype_name: str) -> None:
        import tokenizers

        self._encoder = tokenizers.Tokenizer.from_str(encoder_json)
        self._encoder.encode_special_tokens = True  # a runtime flag, not in the JSON; see tokenizer.py
        self._eod = eod
        self._dtype = np.dtype(dtype_name)

    def __call__(self, texts: list[str]) -> TokenizedBatch:
        ids: list[int] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        for number, text in enumerate(texts):
            document = self._encoder.encode(text, add_special_tokens=False).ids
            ids.extend(document)
            ids.append(self._eod)
            lengths[number] = len(document) + 1
        tokens = np.array(ids, dtype=np.int64)
        # token_dtype() sized the dtype from the vocabulary; a tokenizer whose ids exceed its own
        # vocabulary size must still never be written truncated.
        if tokens.size and tokens.max() > np.iinfo(self._dtype).max:
            raise DataError(f"the tokenizer produced id {tokens.max()}, which does not fit --dtype {self._dtype.name}")
        return TokenizedBatch(tokens.astype(self._dtype), lengths)


_worker_encoder: BatchEncoder | None = None


def _start_worker(encoder_json: str, eod: int, dtype_name: str) -> None:
    global _worker_encoder
    _worker_encoder = BatchEncoder(encoder_json, eod, dtype_name)


def _encode_in_worker(texts: list[str]) -> TokenizedBatch:
    return _worker_encoder(texts)


class TokenizerPool:
    """Ordered, bounded tokenization of batches with ``workers`` processes (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, dtype, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._arguments = (tokenizer.encoder_json(), tokenizer.eod, np.dtype(dtype).name)
        self._executor: ProcessPoolExecutor | None = None
        self._encoder: BatchEncoder | None = None

    def __enter__(self) -> TokenizerPool:
        if self.workers == 1:
            self._encoder = BatchEncoder(*self._arguments)
        else:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=self._arguments,
            )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, TokenizedBatch]]:
        """Each batch with its tokens, in input order."""
        if self._executor is None:
            for batch in batches:
                yield batch, self._encoder(batch.texts)
            return
        in_flight: deque[tuple[Batch, Future]] = deque()
        try:
            for batch in batches:
                if len(in_flight) >= IN_FLIGHT_PER_WORKER * self.workers:
                    done, future = in_flight.popleft()
                    yield done, future.result()
                in_flight.append((batch, self._executor.submit(_encode_in_worker, batch.texts)))
            while in_flight:
                done, future = in_flight.popleft()
                yield done, future.result()
        finally:
            for _, future in in_flight:
                future.cancel()
