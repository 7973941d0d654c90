"""Tokenizer engines give HF tokenizers' ids exactly, or are not used: each tokenizer family on the
adversarial set and a real corpus, special-token strings parsed or not, and the fallback when an
engine differs, is missing or cannot load the tokenizer."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import sentencepiece
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from headless_megatron.data.builtin import builtin_documents
from headless_megatron.data.engines import (
    ADVERSARIAL_TEXTS,
    FastokensEngine,
    GigatokenEngine,
    HFEngine,
    build_engine,
    choose_engine,
    probe_texts,
)
from headless_megatron.data.errors import DataError
from headless_megatron.data.tokenizer import load_tokenizer
from headless_megatron.data.tokenizer_training import train_tokenizer

CORPUS = list(builtin_documents("python-topics"))
SAMPLE = CORPUS[:40]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def regex_split_bpe() -> str:
    """A GPT-NeoX / Llama 3 / Qwen style BPE: NFC, a Split regex, then bytes without GPT-2's regex."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer.to_str()


def wordpiece(lowercase: bool) -> str:
    """BERT's WordPiece, uncased (lowercased, accents stripped) or cased."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return tokenizer.to_str()


def sentencepiece_json(tmp_path, model_type: str) -> str:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / model_type), vocab_size=800, model_type=model_type,
        byte_fallback=True, minloglevel=2)
    return load_tokenizer(tmp_path / f"{model_type}.model").encoder_json()


@pytest.fixture(scope="module")
def gpt2_bpe() -> str:
    return train_tokenizer("bpe", 2000, CORPUS).encoder_json()


@pytest.fixture(scope="module")
def llama_bpe() -> str:
    return regex_split_bpe()


def assert_same_ids(engine, encoder_json: str, texts, parse_special_tokens: bool = False) -> None:
    ids, lengths = engine.encode(texts)
    expected_ids, expected_lengths = HFEngine(encoder_json, parse_special_tokens).encode(texts)
    assert np.array_equal(lengths, expected_lengths) and np.array_equal(ids, expected_ids)


@pytest.mark.parametrize("family", ["gpt2_bpe", "llama_bpe"])
@pytest.mark.parametrize("parse_special_tokens", [False, True])
def test_fastokens_gives_hfs_ids_for_byte_level_bpe(family, parse_special_tokens, request):
    encoder_json = request.getfixturevalue(family)
    engine = FastokensEngine(encoder_json, parse_special_tokens)
    assert_same_ids(engine, encoder_json, [*probe_texts(encoder_json), *CORPUS], parse_special_tokens)
    choice = choose_engine("auto", encoder_json, SAMPLE, parse_special_tokens)
    assert (choice.name, choice.fallback_note) == ("fastokens", None)


@pytest.mark.parametrize("family", ["gpt2_bpe", "llama_bpe"])
def test_gigatoken_gives_hfs_ids_for_the_pipelines_it_is_offered(family, request):
    encoder_json = request.getfixturevalue(family)
    engine = GigatokenEngine(encoder_json)
    assert_same_ids(engine, encoder_json, [*probe_texts(encoder_json), *CORPUS])
    assert choose_engine("gigatoken", encoder_json, SAMPLE).name == "gigatoken"


def test_special_token_strings_are_text_unless_parsed(llama_bpe):
    hf, parsed = HFEngine(llama_bpe), HFEngine(llama_bpe, parse_special_tokens=True)
    text = "a<|endoftext|>b"
    special = json.loads(llama_bpe)["added_tokens"][0]["id"]
    assert special not in hf.encode([text])[0] and special in parsed.encode([text])[0]
    for name in ("fastokens", "gigatoken"):
        assert_same_ids(build_engine(name, llama_bpe, parse_special_tokens=True), llama_bpe, [text], True)


@pytest.mark.parametrize("family", ["wordpiece_uncased", "wordpiece_cased", "sentencepiece_bpe",
                                    "sentencepiece_unigram", "byte_level_unigram"])
def test_families_without_an_identical_fast_engine_stay_on_hf_without_a_warning(family, tmp_path):
    encoder_json = {
        "wordpiece_uncased": lambda: wordpiece(lowercase=True),
        "wordpiece_cased": lambda: wordpiece(lowercase=False),
        "sentencepiece_bpe": lambda: sentencepiece_json(tmp_path, "bpe"),
        "sentencepiece_unigram": lambda: sentencepiece_json(tmp_path, "unigram"),
        "byte_level_unigram": lambda: train_tokenizer("unigram", 1000, CORPUS).encoder_json(),
    }[family]()
    assert choose_engine("auto", encoder_json, SAMPLE) == choose_engine("hf", encoder_json, SAMPLE)
    assert choose_engine("auto", encoder_json, SAMPLE).fallback_note is None
    with pytest.raises(DataError, match=r"^--tokenizer-engine fastokens: fastokens cannot load this tokenizer"):
        choose_engine("fastokens", encoder_json, SAMPLE)


def test_an_engine_that_differs_is_passed_over_with_one_line_or_refused_when_named(gpt2_bpe):
    divergent = json.dumps({**json.loads(gpt2_bpe), "pre_tokenizer": None})  # loads in fastokens, other ids
    choice = choose_engine("auto", divergent, SAMPLE)
    assert choice.name == "hf"
    assert choice.fallback_note.startswith("fastokens gives other ids than HF tokenizers on probe text ")
    assert choice.fallback_note.endswith(": tokenizing with hf") and "\n" not in choice.fallback_note
    with pytest.raises(DataError, match=r"^--tokenizer-engine fastokens: fastokens gives other ids than HF tokenizers "
                                        r"on probe text \d+ .*; use auto or hf$"):
        choose_engine("fastokens", divergent, SAMPLE)
    with pytest.raises(DataError, match="gigatoken does not reproduce this tokenizer"):
        choose_engine("gigatoken", divergent, SAMPLE)


def test_a_corpus_document_that_differs_is_named(gpt2_bpe, monkeypatch):
    original = FastokensEngine.encode

    def differing_on_the_last_text(self, texts):
        ids, lengths = original(self, texts)
        ids = ids.astype(np.int64)
        ids[-1] += 1
        return ids, lengths

    monkeypatch.setattr(FastokensEngine, "encode", differing_on_the_last_text)
    choice = choose_engine("auto", gpt2_bpe, SAMPLE)
    assert choice.name == "gigatoken"
    assert choice.fallback_note == f"fastokens gives other ids than HF tokenizers on corpus document {len(SAMPLE) - 1}"


def test_an_engine_that_is_not_installed_is_skipped_or_named(gpt2_bpe, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "fastokens" else
                        find_spec(name, *args))
    assert choose_engine("auto", gpt2_bpe, SAMPLE).name == "gigatoken"
    with pytest.raises(DataError, match=r"^--tokenizer-engine fastokens: fastokens is not installed \(pip install "
                                        r"fastokens\); use auto or hf$"):
        choose_engine("fastokens", gpt2_bpe, SAMPLE)
    with pytest.raises(DataError, match="--tokenizer-engine tiktoken: expected one of auto, hf, fastokens, gigatoken"):
        choose_engine("tiktoken", gpt2_bpe, SAMPLE)


def test_the_adversarial_set_covers_what_the_issue_lists():
    text = "".join(ADVERSARIAL_TEXTS)
    assert "e\u0301" in text and "\ufb01" in text and "\u6f22" in text and "\u200d" in text  # NFC, NFKC, CJK, ZWJ
    assert "\x00" in text and "\t\t" in text and "x" * 5000 in text and "<|endoftext|>" in text
    assert any(t.startswith(" ") for t in ADVERSARIAL_TEXTS) and any(c.isdigit() for c in text)
