"""TokenizerPool: same tokens in-process and in worker processes, in order, with bounded read-ahead."""

import numpy as np
import pytest

from headless_megatron.data.builtin import builtin_documents
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer_training import train_tokenizer
from headless_megatron.data.workers import IN_FLIGHT_PER_WORKER, Batch, BatchEncoder, TokenizerPool

TOPICS = list(builtin_documents("python-topics"))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("bpe", 500, TOPICS)


def _batches(size=4):
    return [Batch(TOPICS[start:start + size], 0) for start in range(0, len(TOPICS), size)]


def _expected(tokenizer, texts):
    return [ids + [tokenizer.eod] for ids in map(tokenizer.tokenize, texts)]


def _split(tokenized):
    return [part.tolist() for part in np.split(tokenized.tokens, np.cumsum(tokenized.lengths)[:-1])]


def test_batch_encoder_appends_the_end_of_document_id(tokenizer):
    encoded = BatchEncoder(tokenizer.encoder_json(), tokenizer.eod, "uint16")(["first doc", "<|endoftext|> literal"])
    assert encoded.tokens.dtype == np.uint16 and encoded.lengths.sum() == encoded.tokens.size
    assert _split(encoded) == _expected(tokenizer, ["first doc", "<|endoftext|> literal"])


@pytest.mark.parametrize("workers", [1, 2])
def test_every_batch_comes_back_in_order(tokenizer, workers):
    batches = _batches()
    with TokenizerPool(tokenizer, np.uint16, workers) as pool:
        results = list(pool.map(batches))
    assert [batch for batch, _ in results] == batches
    for batch, tokenized in results:
        assert _split(tokenized) == _expected(tokenizer, batch.texts)


def test_read_ahead_is_bounded(tokenizer):
    pulled = 0

    def source():
        nonlocal pulled
        for batch in _batches(size=1):
            pulled += 1
            yield batch

    with TokenizerPool(tokenizer, np.uint16, 2) as pool:
        for consumed, _ in enumerate(pool.map(source()), start=1):
            assert pulled <= consumed + IN_FLIGHT_PER_WORKER * 2


def test_ids_that_do_not_fit_the_dtype_are_an_error_not_a_wraparound(tokenizer):
    with pytest.raises(DataError, match="the tokenizer produced id 4.., which does not fit --dtype uint8"):
        BatchEncoder(tokenizer.encoder_json(), 499, "uint8")(["x"])


def test_an_error_in_a_worker_reaches_the_caller(tokenizer):
    with TokenizerPool(tokenizer, np.uint8, 2) as pool, pytest.raises(DataError, match="does not fit --dtype uint8"):
        list(pool.map(_batches()))
