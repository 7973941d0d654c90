"""The tokenizer type used by preprocessing, training, export and evaluation.

``Tokenizer`` wraps one Hugging Face fast tokenizer (a Rust ``tokenizers`` pipeline) and guarantees
the special tokens the models need: an end-of-document token (``eod``, appended to every document of
a dataset), a padding token distinct from it (``pad``) and a mask token for BERT (``mask``). They are
added when the source tokenizer lacks them, so the vocabulary can grow by up to three entries; that
is why every dataset carries its own copy of the exact tokenizer it was made with (``P_tokenizer/``,
found again with ``tokenizer_for_dataset``).

It satisfies the duck type of Megatron-Core's ``MegatronTokenizer`` that ``GPTDataset`` and the
models use: ``eod``, ``pad``, ``mask``, ``bos``, ``vocab_size``, ``vocab``, ``inv_vocab``,
``unique_identifiers``, ``tokenize(text) -> list[int]`` and ``detokenize(ids) -> str``.

Sources ``load_tokenizer`` accepts:

- a Hugging Face tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json``, what
  ``save_pretrained`` writes), or a model directory that contains one;
- a bare ``tokenizer.json``: the roles of its special tokens are taken from their conventional names
  (``<|endoftext|>``/``</s>`` is the end of document, ``<pad>`` the padding, ...);
- a sentencepiece ``.model``: converted to a fast tokenizer by ``transformers``, as
  ``AutoTokenizer`` does for a directory holding a ``tokenizer.model``. Decoding is lossless, and
  the ids equal sentencepiece's own except where two segmentations score exactly the same;
- a Hugging Face Hub name (``gpt2``, ``EleutherAI/pythia-70m``): needs the network or a warm cache.

Text is tokenized with special-token strings treated as plain text: a document that contains the
characters ``<|endoftext|>`` gets ordinary ids for them, never the real end-of-document id, so the
only ``eod`` in a dataset is the one preprocessing appends (``preprocess --parse-special-tokens``
gives Megatron-LM's ids instead, where such a string is its token). Truncation and padding settings that some
Hub tokenizers bake into their ``tokenizer.json`` are switched off: a document is never cut.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from headless_megatron.data.errors import DataError
from headless_megatron.data.sources import looks_like_a_local_path
from headless_megatron.errors import first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The tokens added when a tokenizer lacks them (and the ones a trained tokenizer gets, ids 0, 1, 2).
EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "<|mask|>"
REQUIRED_SPECIAL_TOKENS = {"eos_token": EOD_TOKEN, "pad_token": PAD_TOKEN, "mask_token": MASK_TOKEN}
UNREACHABLE_PIECE_SCORE = -1e9  # Unigram log-probabilities are a few tens below 0 at worst

# For a bare tokenizer.json, which says which tokens are special but not what each one is for.
CONVENTIONAL_NAMES = {
    "eos_token": ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[EOS]"),
    "pad_token": ("<|pad|>", "<pad>", "[PAD]", "<|padding|>"),
    "mask_token": ("<|mask|>", "<mask>", "[MASK]"),
    "bos_token": ("<|startoftext|>", "<s>", "<bos>", "<|begin_of_text|>", "[BOS]"),
}


class Tokenizer:
    """A fast Hugging Face tokenizer with ``eod``, ``pad`` and ``mask``; see the module docstring.

    Build it with ``load_tokenizer`` (or ``train_tokenizer``), which add missing special tokens;
    the constructor expects them to be there already.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerFast, source: str, added_special_tokens: tuple[str, ...] = ()):
        import tokenizers

        self.hf = hf_tokenizer
        self.source = source
        self.added_special_tokens = added_special_tokens
        self.eod: int = hf_tokenizer.eos_token_id
        self.pad: int = hf_tokenizer.pad_token_id
        self.mask: int = hf_tokenizer.mask_token_id
        self.bos: int | None = hf_tokenizer.bos_token_id
        if None in (self.eod, self.pad, self.mask):
            raise ValueError("Tokenizer needs eos, pad and mask tokens: build it with load_tokenizer()")
        # A private copy of the Rust pipeline: the settings below must not leak into ``self.hf``,
        # which stays exactly what save() writes and what users of the exported model get.
        pipeline = _special_pieces_unreachable(hf_tokenizer.backend_tokenizer.to_str())
        self._encoder = tokenizers.Tokenizer.from_str(pipeline)
        self._encoder.no_truncation()
        self._encoder.no_padding()
        self._encoder.encode_special_tokens = True
        identity = self.encoder_json() + json.dumps(self.special_tokens, sort_keys=True)
        self.fingerprint = "sha256:" + hashlib.sha256(identity.encode("utf-8")).hexdigest()
        self.unique_identifiers = OrderedDict(
            [("class", f"{__name__}.Tokenizer"), ("fingerprint", self.fingerprint)]
        )

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included (the model pads it further)."""
        return len(self.hf)

    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        return self.hf.get_vocab()

    @functools.cached_property
    def inv_vocab(self) -> dict[int, str]:
        """Id -> token; Megatron's BERT dataset looks tokens up per sample, so it is built once."""
        return {token_id: token for token, token_id in self.vocab.items()}

    @property
    def special_tokens(self) -> dict[str, int | None]:
        return {"eod": self.eod, "pad": self.pad, "mask": self.mask, "bos": self.bos}

    def tokenize(self, text: str) -> list[int]:
        """The ids of ``text``, without any special token (no BOS, no EOD)."""
        return self._encoder.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids) -> str:
        """The text of ``ids`` (special tokens included as their strings); inverse of ``tokenize``."""
        return self._encoder.decode([int(token_id) for token_id in ids], skip_special_tokens=False)

    def encoder_json(self) -> str:
        """The serialized tokenization pipeline, for worker processes (``encode_special_tokens``
        is a runtime flag that the JSON does not carry: set it again after loading)."""
        return self._encoder.to_str()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a Hugging Face tokenizer directory loadable by ``AutoTokenizer.from_pretrained``,
        ``PreTrainedTokenizerFast.from_pretrained`` and ``load_tokenizer``; returns its path."""
        directory = Path(directory)
        self.hf.save_pretrained(str(directory))
        # transformers 5 records its own class name, which transformers 4 cannot resolve; the
        # generic fast class exists in both and loads the same tokenizer.json.
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        # transformers 4 reads the roles of the special tokens from this file.
        roles = {role: getattr(self.hf, role) for role in (*REQUIRED_SPECIAL_TOKENS, "bos_token")}
        special_tokens_map = {role: str(token) for role, token in roles.items() if token is not None}
        special_tokens_json = json.dumps(special_tokens_map, indent=2, sort_keys=True) + "\n"
        (directory / "special_tokens_map.json").write_text(special_tokens_json)
        return directory

    def __repr__(self) -> str:
        return (f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, "
                f"eod={self.eod}, pad={self.pad}, mask={self.mask})")


def load_tokenizer(path_or_name: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a directory, a ``tokenizer.json``, a sentencepiece ``.model`` or a Hub name,
    with missing ``eod``/``pad``/``mask`` tokens added (see the module docstring)."""
    spec = str(path_or_name)
    path = Path(spec).expanduser()
    if path.is_dir():
        hf = _from_directory(path, spec)
    elif path.is_file() and path.suffix == ".json":
        hf = _from_tokenizer_json(path)
    elif path.is_file() and path.suffix == ".model":
        hf = _from_sentencepiece_model(path, spec)
    elif path.is_file():
        raise DataError(
            f"tokenizer {spec}: expected a tokenizer directory, a tokenizer.json or a sentencepiece .model file"
        )
    elif looks_like_a_local_path(spec):
        raise DataError(f"tokenizer {spec}: no such file or directory")
    else:
        hf = _from_hub(spec)
    added = _add_required_special_tokens(hf)
    return Tokenizer(hf, source=spec, added_special_tokens=added)


def tokenizer_for_dataset(prefix: str | os.PathLike) -> Tokenizer:
    """The tokenizer a dataset was made with, from its prefix (``P_text_document``, the path
    given to training) or its sidecar (``P_text_document.json``)."""
    from headless_megatron.data.sidecar import read_sidecar, sidecar_path

    path = Path(prefix)
    sidecar = path if path.suffix == ".json" else sidecar_path(path)
    info = read_sidecar(sidecar)
    return load_tokenizer(sidecar.parent / info.tokenizer["path"])


def _special_pieces_unreachable(encoder_json: str) -> str:
    """A Unigram model (sentencepiece's, converted) also lists its special tokens as pieces
    (``<s>``, ``</s>``, ``<unk>``) with the best possible score, so once special tokens are encoded
    as text, a literal ``</s>`` in a document would still come out as the end-of-document id.
    sentencepiece never produces those pieces from text; give them a score no segmentation picks."""
    config = json.loads(encoder_json)
    model = config["model"]
    if model.get("type") != "Unigram":
        return encoder_json
    for token in config.get("added_tokens") or []:
        if token.get("special") and token["id"] < len(model["vocab"]):
            model["vocab"][token["id"]][1] = UNREACHABLE_PIECE_SCORE
    return json.dumps(config, ensure_ascii=False)


def _from_directory(path: Path, spec: str) -> PreTrainedTokenizerFast:
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise DataError(
            f"tokenizer {spec}: the directory has no tokenizer.json, tokenizer_config.json or tokenizer.model"
        )
    try:
        hf = _tokenizer_class(path).from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"tokenizer {spec}: transformers could not load it: {first_line(exc)}") from exc
    return _require_fast(hf, spec)


def _tokenizer_class(path: Path):
    """The class ``AutoTokenizer`` would load the directory ``path`` with: ``PreTrainedTokenizerFast``
    itself for a tokenizer directory that names it and holds no model config (what ``save`` writes:
    preprocessing's ``P_tokenizer/``), without ``AutoTokenizer``'s 2 s import of the model classes
    and torch; ``AutoTokenizer`` for the rest (a model directory's ``model_type`` decides)."""
    config = path / "tokenizer_config.json"
    if not (path / "config.json").exists() and config.is_file() and (path / "tokenizer.json").is_file():
        try:
            named = json.loads(config.read_text()).get("tokenizer_class")
        except (OSError, ValueError):
            named = None
        if named == "PreTrainedTokenizerFast":
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer


def _from_tokenizer_json(path: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    try:
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as exc:  # the Rust loader raises plain Exception on malformed JSON
        raise DataError(f"tokenizer {path}: not a tokenizers JSON file: {first_line(exc)}") from exc
    special = {str(token) for token in hf.backend_tokenizer.get_added_tokens_decoder().values() if token.special}
    for role, names in CONVENTIONAL_NAMES.items():
        name = next((name for name in names if name in special), None)
        if name is not None:
            hf.add_special_tokens({role: name})
    return hf


def _from_sentencepiece_model(path: Path, spec: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    # AutoTokenizer converts a directory's tokenizer.model through sentencepiece's model proto;
    # a loose .model file is given that layout in a scratch directory.
    with tempfile.TemporaryDirectory(prefix="hm-spm-") as scratch:
        shutil.copyfile(path, Path(scratch) / "tokenizer.model")
        try:
            hf = AutoTokenizer.from_pretrained(scratch)
        except Exception as exc:  # protobuf's DecodeError, sentencepiece's RuntimeError, ...
            raise DataError(f"tokenizer {spec}: not a sentencepiece model: {first_line(exc)}") from exc
    return _require_fast(hf, spec)


def _from_hub(name: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"tokenizer {name}: not a local path, and loading it from the Hugging Face Hub failed: {first_line(exc)}"
        ) from exc
    return _require_fast(hf, name)


def _require_fast(hf, spec: str) -> PreTrainedTokenizerFast:
    if not getattr(hf, "is_fast", False):
        raise DataError(
            f"tokenizer {spec}: {type(hf).__name__} has no fast (Rust) implementation; save it as a tokenizer.json"
        )
    return hf


def _add_required_special_tokens(hf: PreTrainedTokenizerFast) -> tuple[str, ...]:
    """Give ``hf`` the end-of-document, padding and mask tokens it lacks; returns the ones added.

    A padding token equal to the end-of-document token (a common Hub setting) is replaced by a
    distinct one: Megatron masks padding out of the loss, and must not mask the document ends.
    """
    added = []
    for role, token in REQUIRED_SPECIAL_TOKENS.items():
        current = getattr(hf, role)
        if current is None or (role == "pad_token" and current == hf.eos_token):
            hf.add_special_tokens({role: token})
            added.append(token)
    return tuple(added)

