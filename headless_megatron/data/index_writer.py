"""Writing a Megatron ``.bin/.idx`` pair without importing Megatron-Core.

Preprocessing writes nothing but this format, and importing Megatron-Core for its
``IndexedDatasetBuilder`` costs about 3 s of start-up (it imports most of torch's compiler stack),
as long as tokenizing 100 MB with a compiled engine takes. :class:`IndexWriter` writes the same
bytes: ``tests/test_data_index_writer.py`` compares its files with the builder's, byte for byte,
for documents, merged datasets and every token dtype. The layout is the one ``index_header``
describes: the ``.bin`` is the tokens of each document in order; the ``.idx`` is a 9-byte magic, a
uint64 version (1), a uint8 ``DType`` code, the uint64 sequence and document-boundary counts, then
the int32 length of each sequence, the int64 byte offset of each sequence in the ``.bin`` and the
int64 document boundaries (0, then the sequence count after each document). A document added here
is one sequence, as Megatron-LM's ``preprocess_data.py`` writes them; a dataset added whole keeps
its own boundaries.
"""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np

from headless_megatron.data.index_header import HEADER_BYTES, MAGIC, read_index_header

VERSION = 1
# Megatron's DType codes (megatron/core/datasets/indexed_dataset.py) of the token dtypes we write.
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.uint16): 8}


class IndexWriter:
    """Appends documents to ``bin_path``; :meth:`finalize` writes the index. What it keeps in memory
    takes 12 bytes per document."""

    def __init__(self, bin_path: str | os.PathLike, dtype) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"no Megatron DType code for {self.dtype}")
        self._bin = open(bin_path, "wb")  # noqa: SIM115 - closed by finalize or close
        self._lengths: list[np.ndarray] = []
        self._boundaries: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self._sequences = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as one concatenated array and the length of each."""
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes(order="C"))
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self._boundaries.append(self._sequences + np.arange(1, len(lengths) + 1, dtype=np.int64))
        self._sequences += len(lengths)

    def add_dataset(self, prefix: str | os.PathLike) -> None:
        """Every document of the dataset at ``prefix`` (its ``.bin`` copied as it is)."""
        header = read_index_header(f"{prefix}.idx")
        with open(f"{prefix}.idx", "rb") as index:
            code = index.read(18)[17]
            if code != DTYPE_CODES[self.dtype]:
                raise ValueError(f"{prefix}: token dtype code {code}, this dataset's is {DTYPE_CODES[self.dtype]}")
            index.seek(HEADER_BYTES)
            lengths = np.frombuffer(index.read(4 * header.sequences), dtype=np.int32)
            index.seek(8 * header.sequences, os.SEEK_CUR)  # the offsets, which finalize recomputes
            boundaries = np.frombuffer(index.read(8 * (header.documents + 1)), dtype=np.int64)
        with open(f"{prefix}.bin", "rb") as data:
            shutil.copyfileobj(data, self._bin)
        self._lengths.append(lengths.copy())
        self._boundaries.append(self._sequences + boundaries[1:])
        self._sequences += header.sequences

    def finalize(self, idx_path: str | os.PathLike) -> None:
        """Close the ``.bin`` and write the ``.idx``."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.empty(0, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        boundaries = np.concatenate(self._boundaries)
        with open(idx_path, "wb") as index:
            index.write(MAGIC)
            index.write(struct.pack("<Q", VERSION))
            index.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            index.write(struct.pack("<Q", len(lengths)))
            index.write(struct.pack("<Q", len(boundaries)))
            index.write(lengths.tobytes(order="C"))
            index.write(pointers.tobytes(order="C"))
            index.write(boundaries.tobytes(order="C"))

    def close(self) -> None:
        self._bin.close()
