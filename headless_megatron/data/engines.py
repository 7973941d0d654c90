"""Tokenizer engines: HF ``tokenizers`` (the reference) and compiled engines that give its ids faster.

An engine turns a list of texts into their ids, exactly as ``tokenizers.Tokenizer.encode(text,
add_special_tokens=False).ids`` does for the tokenizer's JSON (``Tokenizer.encoder_json``):

- ``hf``: HF ``tokenizers``, one text at a time (the reference; every tokenizer);
- ``fastokens``: a compiled BPE engine, 40-80x faster on two cores (docs/benchmarks.md). It loads
  BPE pipelines of byte-level pre-tokenization, with GPT-2's regex (``--train-tokenizer bpe``, GPT-2)
  or a ``Split`` regex before it (GPT-NeoX, Llama 3, Qwen), and refuses the others (WordPiece,
  Unigram, sentencepiece's normalizers);
- ``gigatoken``: the engine of Megatron-LM's ``preprocess_data_fast.py``. It loads some pipelines it
  does not reproduce (it applies GPT-2's regex where the JSON says otherwise, ignores ``Digits``
  and ``single_word``), so it is offered only for the pipelines it is known to reproduce
  (:func:`gigatoken_reproduces`), and, like every engine, checked before use.

Special-token strings in text (a literal ``<|endoftext|>``) are plain text by default (see
``data/tokenizer.py``); with ``parse_special_tokens`` they become the special token's id, as
Megatron-LM's tools make them. Each engine is told which: HF's ``encode_special_tokens``,
fastokens' ``split_special_tokens``, and for gigatoken, which always parses them, the special
tokens removed from its copy of the JSON.

:func:`choose_engine` never lets an engine change an id: before any document is written, the engine
encodes :data:`ADVERSARIAL_TEXTS`, the tokenizer's own special-token strings in text and a sample of
the corpus, and HF encodes them too; ``auto`` falls back to the next engine, and finally to ``hf``,
on the first difference, with one line saying which text differed; an engine asked for by name that
differs is an error.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from headless_megatron.data.errors import DataError
from headless_megatron.errors import first_line

ENGINES = ("hf", "fastokens", "gigatoken")
AUTO_ORDER = ("fastokens", "gigatoken")
"""The engines ``auto`` tries, fastest first; ``hf`` when none of them reproduces HF."""

ADVERSARIAL_TEXTS = (
    "e\u0301 \u00e9 \u212b \u00c5 A\u030a",  # NFC/NFD pairs
    "\ufb01 \u2460 \uff21\uff22 \u00bd x\u00b2 \u2126",  # NFKC-sensitive: ligature, circled, full-width
    "\u6f22\u5b57\u3068\u304b\u306a \ud55c\uad6d\uc5b4 \u4e2d\u6587\u6587\u672c",  # CJK
    "\U0001f600\U0001f469\u200d\U0001f469\u200d\U0001f467 \U0001f44d\U0001f3fd \U0001f1eb\U0001f1f7",  # emoji, ZWJ
    "Z\u0351\u0308\u0303a\u0350\u0317l\u0357\u0316g\u0346o",  # stacked combining marks
    "".join(chr(code) for code in range(32)) + "\x7f\u200b\u0085\u00a0\u2028\u3000",  # controls, odd spaces
    "a  b   c\t\td\n\ne\r\n\r\nf \t \n g" + " " * 40 + "h" + "\n" * 12,  # runs of whitespace
    " leading space", "  two leading spaces", "trailing space ", "\n\tleading newline and tab",
    "\u0085edge\u0085", "\tedge tab\n",
    "x" * 5000, "Pneumonoultramicroscopicsilicovolcanoconiosis" * 30,  # very long words
    "3.14159265358979323846 1,000,000 007 2026-12-07 0x1F 1e-12 123456789012345678901234567890",
    "It's we'll they'RE I'M don't 'quoted' \"double\" `tick`",
    "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 "  # right-to-left scripts, Devanagari, Thai
    "\u0928\u0645\u0633\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "<|endoftext|> <s> </s> [CLS] [SEP] [MASK] <pad> <unk> <|im_start|>",  # special-token strings as text
    "word<|endoftext|>word", "<|endoftext|>",
)


class EngineUnavailable(Exception):
    """This engine is not installed, or cannot load this tokenizer; the message says which."""


class Engine(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of all ``texts``, concatenated, and the number of ids of each."""


class HFEngine:
    """HF ``tokenizers``, one text at a time: the reference every other engine is checked against."""

    name = "hf"

    def __init__(self, encoder_json: str, parse_special_tokens: bool = False) -> None:
        import tokenizers

        self._tokenizer = tokenizers.Tokenizer.from_str(encoder_json)
        # A runtime flag, not part of the JSON: special-token strings in text are plain text.
        self._tokenizer.encode_special_tokens = not parse_special_tokens

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [self._tokenizer.encode(text, add_special_tokens=False).ids for text in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.fromiter((i for ids in encoded for i in ids), dtype=np.int64, count=int(lengths.sum()))
        return ids, lengths


class FastokensEngine:
    """``fastokens``: a batch encoded into one flat buffer, on ``threads`` of its own threads."""

    name = "fastokens"

    def __init__(self, encoder_json: str, parse_special_tokens: bool = False, threads: int = 1) -> None:
        fastokens = _import("fastokens")
        # Read once, at this process's first encode; idle pool threads spin, so no more than asked.
        os.environ.setdefault("FASTOKENS_BPE_THREADS", str(threads))
        try:
            self._tokenizer = fastokens.Tokenizer.from_json_str(encoder_json)
        except Exception as error:  # noqa: BLE001 - its loader raises plain exceptions for what it lacks
            raise EngineUnavailable(f"fastokens cannot load this tokenizer ({first_line(error)})") from error
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._split_special_tokens = not parse_special_tokens

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, offsets = self._tokenizer.encode_batch_flat(
            list(texts), add_special_tokens=False, split_special_tokens=self._split_special_tokens
        )
        return np.frombuffer(ids, dtype=np.uint32), np.diff(np.frombuffer(offsets, dtype=np.uint64)).astype(np.int64)


class GigatokenEngine:
    """``gigatoken`` (Megatron-LM's fast engine), for the pipelines :func:`gigatoken_reproduces`."""

    name = "gigatoken"

    def __init__(self, encoder_json: str, parse_special_tokens: bool = False, threads: int = 1) -> None:
        gigatoken = _import("gigatoken")
        config = json.loads(encoder_json)
        problem = gigatoken_reproduces(config)
        if problem:
            raise EngineUnavailable(f"gigatoken does not reproduce this tokenizer ({problem})")
        if not parse_special_tokens:  # it always parses added tokens: drop the special ones
            config["added_tokens"] = [token for token in config.get("added_tokens") or [] if not token.get("special")]
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        try:
            self._tokenizer = gigatoken.Tokenizer.from_json(json.dumps(config, ensure_ascii=False))
        except Exception as error:  # noqa: BLE001 - its loader raises plain exceptions for what it lacks
            raise EngineUnavailable(f"gigatoken cannot load this tokenizer ({first_line(error)})") from error
        self._parallel = threads > 1

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        layout = self._tokenizer.encode_batch(list(texts), parallel=self._parallel).layout  # awkward lists
        offsets = np.asarray(layout.offsets.data)
        return np.asarray(layout.content.data)[offsets[0]:offsets[-1]], np.diff(offsets).astype(np.int64)


def gigatoken_reproduces(config: dict) -> str | None:
    """Why gigatoken would give other ids than HF for the tokenizer JSON ``config``, or None: it
    reproduces BPE behind GPT-2's byte-level regex, or behind one isolating ``Split`` and a byte
    level without regex, with no normalizer or NFC only (tested in tests/test_data_engines.py)."""
    model, pre = config.get("model") or {}, config.get("pre_tokenizer") or {}
    normalizer = config.get("normalizer")
    normalizers = normalizer.get("normalizers", [normalizer]) if normalizer else []
    if model.get("type") != "BPE":
        return f"a {model.get('type')} model"
    if model.get("byte_fallback") or model.get("dropout"):
        return "byte fallback or dropout"
    if any(step.get("type") != "NFC" for step in normalizers):
        return "a normalizer other than NFC"
    steps = pre.get("pretokenizers", [pre]) if pre else []
    byte_level_alone = [step.get("type") for step in steps] == ["ByteLevel"] and steps[0].get("use_regex", True)
    split_then_bytes = (
        [step.get("type") for step in steps] == ["Split", "ByteLevel"]
        and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
        and steps[1].get("use_regex") is False
    )
    if not (byte_level_alone or split_then_bytes):
        return "a pre-tokenizer other than GPT-2's byte level, or a Split then a byte level"
    if any(token.get("single_word") for token in config.get("added_tokens") or []):
        return "a single_word added token"
    return None


ENGINE_CLASSES = {"hf": HFEngine, "fastokens": FastokensEngine, "gigatoken": GigatokenEngine}


def build_engine(name: str, encoder_json: str, parse_special_tokens: bool = False, threads: int = 1) -> Engine:
    """The engine ``name`` for the tokenizer ``encoder_json``; raises :class:`EngineUnavailable`."""
    if name == "hf":
        return HFEngine(encoder_json, parse_special_tokens)
    return ENGINE_CLASSES[name](encoder_json, parse_special_tokens, threads)


@dataclass(frozen=True)
class EngineChoice:
    """The engine a run uses, and the line to print when ``auto`` passed over one that differed."""

    name: str
    fallback_note: str | None = None
    engine: Engine | None = None
    """The engine that passed the check, built for ``threads``: loading a tokenizer into an engine
    takes a tenth of a second or more, so the run encodes with this one (``None`` for ``hf``)."""


def choose_engine(requested: str, encoder_json: str, sample: Sequence[str], parse_special_tokens: bool = False,
                  threads: int = 1) -> EngineChoice:
    """The engine for ``--tokenizer-engine requested``, proven on ``sample`` (the corpus's first
    documents) and :func:`probe_texts` to give HF's ids. ``auto`` takes the first of
    :data:`AUTO_ORDER` that loads and agrees, else ``hf``; a named engine that is not installed,
    cannot load the tokenizer or differs raises a one-line :class:`DataError`."""
    if requested not in ("auto", *ENGINES):
        raise DataError(f"--tokenizer-engine {requested}: expected one of auto, {', '.join(ENGINES)}")
    if requested == "hf":
        return EngineChoice("hf")
    texts = [*probe_texts(encoder_json), *sample]
    reference = HFEngine(encoder_json, parse_special_tokens)
    notes = []
    for name in AUTO_ORDER if requested == "auto" else (requested,):
        try:
            engine = build_engine(name, encoder_json, parse_special_tokens, threads)
        except EngineUnavailable as error:
            if requested != "auto":
                raise DataError(f"--tokenizer-engine {requested}: {error}; use auto or hf") from error
            continue
        difference = first_difference(engine, reference, texts, len(texts) - len(sample))
        if difference is None:
            return EngineChoice(name, "; ".join(notes) or None, engine)
        if requested != "auto":
            raise DataError(f"--tokenizer-engine {requested}: {difference}; use auto or hf")
        notes.append(difference)
    return EngineChoice("hf", ("; ".join(notes) + ": tokenizing with hf") if notes else None)


def probe_texts(encoder_json: str) -> list[str]:
    """:data:`ADVERSARIAL_TEXTS` and this tokenizer's added-token strings inside text."""
    added = [token["content"] for token in json.loads(encoder_json).get("added_tokens") or []]
    return [*ADVERSARIAL_TEXTS, *(f"a {token}b{token} {token}\n{token}" for token in added)]


def first_difference(engine: Engine, reference: HFEngine, texts: Sequence[str], probes: int) -> str | None:
    """Where ``engine`` first gives other ids than ``reference`` on ``texts`` (the first ``probes``
    are the probe texts, the rest corpus documents), or None when it never does."""
    ids, lengths = engine.encode(texts)
    expected_ids, expected_lengths = reference.encode(texts)
    if np.array_equal(lengths, expected_lengths) and np.array_equal(ids, expected_ids):
        return None
    ends, expected_ends = np.cumsum(lengths), np.cumsum(expected_lengths)
    for number, (length, expected) in enumerate(zip(lengths, expected_lengths, strict=True)):
        mine = ids[ends[number] - length:ends[number]]
        theirs = expected_ids[expected_ends[number] - expected:expected_ends[number]]
        if not np.array_equal(mine, theirs):
            where = f"probe text {number} {texts[number][:30]!r}" if number < probes else \
                f"corpus document {number - probes}"
            return f"{engine.name} gives other ids than HF tokenizers on {where}"
    raise AssertionError("arrays differ but no text does")


def _import(module: str):
    if importlib.util.find_spec(module) is None:
        raise EngineUnavailable(f"{module} is not installed (pip install {module})")
    return importlib.import_module(module)
