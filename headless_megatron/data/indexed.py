"""Writing Megatron indexed datasets atomically: ``.bin/.idx`` + sidecar + tokenizer directory.

Names follow Megatron-LM's ``tools/preprocess_data.py``: ``--output-prefix P`` with text key
``text`` gives the dataset prefix ``P_text_document`` (the path training is given), i.e.
``P_text_document.bin``, ``P_text_document.idx`` and the sidecar ``P_text_document.json``, plus the
tokenizer directory ``P_tokenizer/``.

The files are written by :class:`~headless_megatron.data.index_writer.IndexWriter`, byte for byte
what Megatron-Core's ``IndexedDatasetBuilder`` writes (one entry per document, document boundaries
in the index) without its 3 s import, so ``IndexedDataset``, ``GPTDataset`` and Megatron-LM's tools
read them. Everything is first written to a scratch directory beside the outputs (same file system,
so a rename is atomic) and moved into place only when complete and synced to disk (``durable``):
the old sidecar and index are removed first, then the tokenizer, ``.bin``, ``.idx`` are renamed in,
and the sidecar last. An interrupted or failed run therefore leaves either the previous complete
dataset, or files without an index or without a sidecar, which nothing mistakes for a finished
dataset; its scratch directory is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from headless_megatron import durable
from headless_megatron.data.errors import DataError
from headless_megatron.data.index_writer import IndexWriter
from headless_megatron.data.sidecar import DatasetInfo, sidecar_path, write_sidecar

if TYPE_CHECKING:
    from headless_megatron.data.tokenizer import Tokenizer

# Token dtypes by name (``--dtype``); each is a Megatron ``DType`` code. "auto" picks the smallest.
TOKEN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "int32": np.int32, "int64": np.int64}


@dataclass(frozen=True)
class DatasetPaths:
    """The files of the dataset written for ``--output-prefix`` and ``--text-key``."""

    output_prefix: Path
    text_key: str = "text"

    @property
    def dataset_prefix(self) -> Path:
        """``P_text_document``: what training and ``IndexedDataset`` are given."""
        return Path(f"{self.output_prefix}_{self.text_key}_document")

    @property
    def bin(self) -> Path:
        return Path(f"{self.dataset_prefix}.bin")

    @property
    def idx(self) -> Path:
        return Path(f"{self.dataset_prefix}.idx")

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.dataset_prefix)

    @property
    def tokenizer(self) -> Path:
        return Path(f"{self.output_prefix}_tokenizer")


def token_dtype(name: str, vocab_size: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    """The dtype for ``--dtype name``; ``auto`` is the smallest that holds ids ``0..vocab_size-1``."""
    if name == "auto":
        return next(dtype for dtype in TOKEN_DTYPES.values() if vocab_size - 1 <= np.iinfo(dtype).max)
    if name not in TOKEN_DTYPES:
        raise DataError(f"--dtype {name}: expected auto or one of {', '.join(TOKEN_DTYPES)}")
    dtype = TOKEN_DTYPES[name]
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise DataError(
            f"--dtype {name}: the tokenizer has {vocab_size} ids, more than {name} holds "
            f"({np.iinfo(dtype).max + 1}); choose a wider dtype or --dtype auto"
        )
    return dtype


class AtomicDatasetWriter:
    """Builds one dataset in a scratch directory and renames it into place on ``publish``.

    Use as a context manager: leaving the block without ``publish`` (an error, Ctrl-C) removes the
    scratch directory and leaves any previous dataset at these paths as it was::

        with AtomicDatasetWriter(paths, np.uint16) as writer:
            writer.add_documents(tokens, lengths)
            writer.publish(tokenizer, info)
    """

    def __init__(self, paths: DatasetPaths, dtype) -> None:
        self.paths = paths
        self.dtype = dtype
        self._scratch: Path | None = None
        self._builder = None

    def __enter__(self) -> AtomicDatasetWriter:
        parent = self.paths.dataset_prefix.parent
        parent.mkdir(parents=True, exist_ok=True)
        name = self.paths.dataset_prefix.name
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent))
        self._builder = IndexWriter(self._scratch / self.paths.bin.name, self.dtype)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._builder is not None:
            self._builder.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one concatenated array and the length of each document."""
        self._builder.add_documents(tokens, lengths)

    def add_dataset(self, dataset_prefix: str | os.PathLike) -> None:
        """Append every document of an existing dataset (a file copy, as Megatron's ``add_index``)."""
        self._builder.add_dataset(dataset_prefix)

    def publish(self, tokenizer: Tokenizer, info: DatasetInfo) -> None:
        """Finish the index, save the tokenizer and the sidecar, and move them all into place."""
        self._builder.finalize(self._scratch / self.paths.idx.name)
        self._builder = None
        tokenizer.save(self._scratch / self.paths.tokenizer.name)
        write_sidecar(self._scratch / self.paths.sidecar.name, info)
        durable.sync_tree(self._scratch)
        for stale in (self.paths.sidecar, self.paths.idx):
            stale.unlink(missing_ok=True)
        _replace_directory(self._scratch / self.paths.tokenizer.name, self.paths.tokenizer)
        for final in (self.paths.bin, self.paths.idx, self.paths.sidecar):
            os.replace(self._scratch / final.name, final)
        durable.sync_directory(self.paths.sidecar.parent)


def publish_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    """Save ``tokenizer`` as ``directory``, replacing it only once fully written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        tokenizer.save(scratch / directory.name)
        durable.sync_tree(scratch / directory.name)
        _replace_directory(scratch / directory.name, directory)
        durable.sync_directory(directory.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is moved aside first (a directory
    cannot be replaced in one rename) and deleted after."""
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside / target.name)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)
