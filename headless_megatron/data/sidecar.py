"""The JSON sidecar written next to each dataset: ``P_text_document.json`` beside ``.bin/.idx``.

It says what the dataset holds and how it was made, and where its tokenizer is::

    {
      "format": "headless-megatron indexed dataset", "version": 1,
      "documents": 2475, "tokens": 443722, "dtype": "uint16", "text_key": "text",
      "tokenizer": {"path": "pydocs_tokenizer", "source": "trained bpe (vocab 8192) on builtin:python-docs",
                    "vocab_size": 8192, "fingerprint": "sha256:...", "eod": 0, "pad": 1, "mask": 2,
                    "bos": null, "added_special_tokens": []},
      "source": {"inputs": ["builtin:python-docs"], "shard": null, "text_bytes": 1772059,
                 "skipped": {"empty": 0, "invalid_utf8": 0}},
      "command": "headless-megatron preprocess --input builtin:python-docs ...",
      "created_by": "headless-megatron 0.1.0"
    }

- ``tokens`` counts every id in the ``.bin``, the one end-of-document id per document included.
- ``tokenizer.path`` is relative to the sidecar's directory, so a dataset directory can be moved or
  copied to another machine whole.
- The sidecar is the last file a run renames into place: a dataset without one did not finish.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from headless_megatron.data.errors import DataError

FORMAT = "headless-megatron indexed dataset"
VERSION = 1


@dataclass
class DatasetInfo:
    documents: int
    tokens: int
    dtype: str
    text_key: str
    tokenizer: dict
    source: dict
    command: str | None = None
    created_by: str = field(default_factory=lambda: f"headless-megatron {_version()}")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=2) + "\n"


def sidecar_path(dataset_prefix: str | os.PathLike) -> Path:
    """``P_text_document`` -> ``P_text_document.json``."""
    return Path(f"{os.fspath(dataset_prefix)}.json")


def read_sidecar(path: str | os.PathLike) -> DatasetInfo:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such sidecar; the dataset was not made by headless-megatron preprocess, "
            "or its run did not finish"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON sidecar ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a headless-megatron dataset sidecar (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise DataError(
            f"{path}: sidecar version {data.get('version')}, this headless-megatron reads version {VERSION}"
        )
    fields = {name: data[name] for name in DatasetInfo.__dataclass_fields__ if name in data}
    try:
        return DatasetInfo(**fields)
    except TypeError as exc:
        raise DataError(f"{path}: incomplete sidecar ({exc})") from exc


def write_sidecar(path: str | os.PathLike, info: DatasetInfo) -> None:
    Path(path).write_text(info.to_json())


def _version() -> str:
    from headless_megatron import __version__

    return __version__
