"""TokenizerPool: same tokens in-process and in worker processes, in order, with bounded read-ahead; long
documents encoded in bounded pieces with the ids of one piece."""

import json

import numpy as np
import pytest

from headless_megatron.data.builtin import builtin_documents
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer_training import train_tokenizer
from headless_megatron.data.workers import (
    IN_FLIGHT_PER_WORKER,
    PIECE_CHARACTERS,
    Batch,
    BatchEncoder,
    EncoderSpec,
    TokenizerPool,
    cuts_keep_ids,
    piece_bounds,
)

TOPICS = list(builtin_documents("python-topics"))


# Whitespace that GPT-2's regex groups in odd ways (runs, a last space joined to the next word, newlines,
# tabs, CR LF, Unicode spaces, U+001C that Python calls whitespace and Unicode does not), contractions,
# digits, special-token strings as text; and two stretches without whitespace longer than a piece.
AWKWARD = ["  \n\n   x", "it's   'll", "\u3000\xa0y \u2028", "\x1c\x1d z\x1f", "\t\tz\r\n q", " <|endoftext|>",
           "🎉 é\u0301 ", "12345 678\n"]
STRETCHES = ["x" * (PIECE_CHARACTERS + 5), "-" * (2 * PIECE_CHARACTERS)]
TEXT = "".join(topic + AWKWARD[number % len(AWKWARD)] for number, topic in enumerate(TOPICS * 2))
LONG_DOCUMENT = TEXT[:300_000] + STRETCHES[0] + TEXT[300_000:600_000] + STRETCHES[1] + TEXT[600_000:]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("bpe", 500, TOPICS)


@pytest.fixture(scope="module")
def unigram():
    return train_tokenizer("unigram", 500, TOPICS)


class RecordingEncoder:
    """The real Rust encoder, noting the size of each text it is given."""

    def __init__(self, encoder):
        self.encoder, self.sizes = encoder, []

    def encode(self, text, **options):
        self.sizes.append(len(text))
        return self.encoder.encode(text, **options)


def _batches(size=4):
    return [Batch(TOPICS[start:start + size], 0) for start in range(0, len(TOPICS), size)]


def _expected(tokenizer, texts):
    return [ids + [tokenizer.eod] for ids in map(tokenizer.tokenize, texts)]


def _split(tokenized):
    return [part.tolist() for part in np.split(tokenized.tokens, np.cumsum(tokenized.lengths)[:-1])]


def test_batch_encoder_appends_the_end_of_document_id(tokenizer):
    encoder = BatchEncoder(EncoderSpec(tokenizer.encoder_json(), tokenizer.eod, "uint16"))
    encoded = encoder(["first doc", "<|endoftext|> literal"])
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
        BatchEncoder(EncoderSpec(tokenizer.encoder_json(), 499, "uint8"))(["x"])


def test_an_error_in_a_worker_reaches_the_caller(tokenizer):
    with TokenizerPool(tokenizer, np.uint8, 2) as pool, pytest.raises(DataError, match="does not fit --dtype uint8"):
        list(pool.map(_batches()))


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_long_document_is_encoded_in_bounded_pieces_with_the_ids_of_one_piece(kind, tokenizer, unigram):
    trained = {"bpe": tokenizer, "unigram": unigram}[kind]
    encoder = BatchEncoder(EncoderSpec(trained.encoder_json(), trained.eod, "uint16"))
    encoder._engine._tokenizer = recording = RecordingEncoder(encoder._engine._tokenizer)
    encoded = encoder([LONG_DOCUMENT])
    assert _split(encoded) == [trained.tokenize(LONG_DOCUMENT) + [trained.eod]]  # the whole document in one call
    assert sum(recording.sizes) == len(LONG_DOCUMENT) > 10 * PIECE_CHARACTERS
    longer = [size for size in recording.sizes if size > PIECE_CHARACTERS]
    assert len(longer) == len(STRETCHES) and max(longer) < 2 * PIECE_CHARACTERS + 100  # each a stretch, and its end


def test_pieces_cover_the_text_and_end_before_whitespace_that_follows_non_whitespace():
    bounds = list(piece_bounds(LONG_DOCUMENT))
    assert [start for start, _ in bounds[1:]] == [end for _, end in bounds[:-1]]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(LONG_DOCUMENT)
    for _, end in bounds[:-1]:
        assert LONG_DOCUMENT[end] in " \t\n\r" and not LONG_DOCUMENT[end - 1].isspace()
    assert list(piece_bounds("short text")) == [(0, 10)] and list(piece_bounds("x" * 100, budget=10)) == [(0, 100)]


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("change", [
    {"normalizer": {"type": "NFC"}},
    {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}},
    {"added_tokens": [{"id": 499, "content": "  ", "single_word": False, "lstrip": False, "rstrip": False,
                       "normalized": False, "special": False}]},
], ids=["normalizer", "llama3-pre-tokenizer", "added-token"])
def test_other_pipelines_are_encoded_whole(tokenizer, change):
    assert cuts_keep_ids(tokenizer.encoder_json())
    changed = json.dumps({**json.loads(tokenizer.encoder_json()), **change})
    assert not cuts_keep_ids(changed)
    encoder = BatchEncoder(EncoderSpec(changed, tokenizer.eod, "uint16"))
    encoder._engine._tokenizer = recording = RecordingEncoder(encoder._engine._tokenizer)
    document = LONG_DOCUMENT[:3 * PIECE_CHARACTERS]
    encoder([document])
    assert recording.sizes == [len(document)]
