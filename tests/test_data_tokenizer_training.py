"""--train-tokenizer: byte-level BPE and unigram, lossless on any text, special tokens first."""

import pytest

from headless_megatron.data.builtin import builtin_documents
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer_training import MIN_VOCAB_SIZE, train_tokenizer

TOPICS = list(builtin_documents("python-topics"))
UNSEEN = "日本語のテキスト, emoji 🎉, NUL \x00, tabs\tand CRLF\r\n, double  spaces, combining é"


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_lossless_on_every_document_and_on_unseen_characters(kind):
    tokenizer = train_tokenizer(kind, 600, TOPICS, source="builtin:python-topics")
    assert tokenizer.vocab_size == 600
    assert (tokenizer.eod, tokenizer.pad, tokenizer.mask) == (0, 1, 2)
    assert tokenizer.source == f"trained {kind} (vocab 600) on builtin:python-topics"
    for text in (*TOPICS, UNSEEN, " leading space", ""):
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    assert len(tokenizer.tokenize(TOPICS[0])) < len(TOPICS[0].encode()) / 2, "it learned pieces longer than bytes"


def test_bpe_is_deterministic():
    assert train_tokenizer("bpe", 400, TOPICS).fingerprint == train_tokenizer("bpe", 400, iter(TOPICS)).fingerprint


def test_bad_arguments_name_the_flag():
    with pytest.raises(DataError, match=r"^--train-tokenizer wordpiece: expected one of bpe, unigram$"):
        train_tokenizer("wordpiece", 1000, TOPICS)
    with pytest.raises(DataError, match=rf"^--vocab-size 100: a byte-level tokenizer needs at least {MIN_VOCAB_SIZE} "):
        train_tokenizer("bpe", 100, TOPICS)


def test_an_input_without_anything_to_learn_is_an_error():
    with pytest.raises(DataError, match="the input is too small to learn any bpe piece from"):
        train_tokenizer("bpe", 1000, ["a"])
