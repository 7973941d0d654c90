"""``--train-tokenizer {bpe,unigram}``: a byte-level tokenizer trained on the input corpus.

Both kinds are trained with Hugging Face ``tokenizers`` and are byte-level, like GPT-2's: text is
split with the GPT-2 pre-tokenization rule, every byte has its own symbol in the initial alphabet,
and the decoder maps symbols back to bytes. Any UTF-8 text is therefore encoded without unknown
tokens and decoded back exactly (no normalization), which is what the round-trip tests check.

- ``bpe``: byte-pair encoding (GPT-2, Pythia);
- ``unigram``: the unigram language model of SentencePiece, over the same byte-level symbols.

The special tokens come first: ``<|endoftext|>`` = 0 (end of document), ``<|pad|>`` = 1,
``<|mask|>`` = 2. ``vocab_size`` counts them, the 256 byte symbols and the learned pieces; it is
a maximum, which a corpus too small to yield that many pieces does not reach (the tokenizer's own
``vocab_size`` is the number it got, and the one recorded in the sidecar).
Training reads the corpus once as a stream (the trainer keeps word counts, not the text). ``bpe``
is deterministic: the same documents give the same tokenizer, in any process. ``unigram`` is not
bit-for-bit (the trainer walks hash maps in a per-process order), which is harmless because every
dataset keeps the exact tokenizer it was made with.
"""

from __future__ import annotations

from collections.abc import Iterable

from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer import EOD_TOKEN, MASK_TOKEN, PAD_TOKEN, Tokenizer

KINDS = ("bpe", "unigram")
# The special tokens, the 256 byte symbols and room for at least a few merges or pieces.
MIN_VOCAB_SIZE = 3 + 256 + 16


def train_tokenizer(kind: str, vocab_size: int, documents: Iterable[str], source: str = "") -> Tokenizer:
    """A ``kind`` tokenizer (``bpe`` or ``unigram``) of ``vocab_size`` ids learned from ``documents``.

    ``source`` describes the training corpus, for ``Tokenizer.source`` and the dataset sidecar.
    """
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in KINDS:
        raise DataError(f"--train-tokenizer {kind}: expected one of {', '.join(KINDS)}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"--vocab-size {vocab_size}: a byte-level tokenizer needs at least {MIN_VOCAB_SIZE} "
            "(3 special tokens, 256 bytes and some merges)"
        )
    special_tokens = [EOD_TOKEN, PAD_TOKEN, MASK_TOKEN]
    options = dict(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if kind == "bpe":
        rust_tokenizer, trainer = RustTokenizer(models.BPE()), trainers.BpeTrainer(**options)
    else:
        rust_tokenizer, trainer = RustTokenizer(models.Unigram()), trainers.UnigramTrainer(**options)
    rust_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    rust_tokenizer.decoder = decoders.ByteLevel()
    rust_tokenizer.train_from_iterator(documents, trainer)
    if rust_tokenizer.get_vocab_size() <= len(special_tokens) + 256:
        raise DataError(f"--train-tokenizer {kind}: the input is too small to learn any {kind} piece from")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=rust_tokenizer, eos_token=EOD_TOKEN, pad_token=PAD_TOKEN, mask_token=MASK_TOKEN
    )
    described = f"trained {kind} (vocab {vocab_size})" + (f" on {source}" if source else "")
    return Tokenizer(hf, source=described)
