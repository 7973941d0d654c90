"""What a Megatron ``.idx`` says about its dataset, read from the file without Megatron-Core.

``check_data`` runs in the launcher before any rank starts (``--nproc-per-node``, and the first
node of a SLURM job): importing Megatron-Core there would cost seconds (it imports most of torch's
compiler stack) for a few numbers. Megatron-Core's ``IndexedDataset`` stays the reader of record:
the ranks read their data through it, and ``tests/test_data_index_header.py`` checks every figure
here against it.

Megatron's layout (``megatron/core/datasets/indexed_dataset.py``): a 9-byte magic, a uint64
version, a uint8 ``DType`` code, the uint64 sequence and document counts, then int32 sequence
lengths, int64 sequence byte offsets into the ``.bin`` and int64 document boundaries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 34
# Megatron's DType codes -> bytes per token.
TOKEN_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}


@dataclass(frozen=True)
class IndexHeader:
    sequences: int
    documents: int
    """Documents in the dataset (the index stores one more boundary than that)."""
    token_bytes: int
    bin_bytes: int
    """The size the ``.bin`` must have: the end of its last sequence."""


class IndexProblem(ValueError):
    """The ``.idx`` is not a whole Megatron index; the message says what is wrong."""


def read_index_header(path: str | Path) -> IndexHeader:
    """The counts and the ``.bin`` size that the index at ``path`` describes, or :class:`IndexProblem`."""
    path = Path(path)
    with path.open("rb") as stream:
        header = stream.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            raise IndexProblem(f"{len(header)}-byte header")
        if header[:9] != MAGIC:
            raise IndexProblem("no Megatron index header")
        code = header[17]
        if code not in TOKEN_BYTES:
            raise IndexProblem(f"unknown token dtype code {code}")
        sequences, boundaries = struct.unpack("<QQ", header[18:34])
        expected = HEADER_BYTES + 12 * sequences + 8 * boundaries
        actual = path.stat().st_size
        if actual != expected:
            raise IndexProblem(f"{actual} bytes, its header describes {expected}")
        bin_bytes = 0
        if sequences:
            stream.seek(HEADER_BYTES + 4 * (sequences - 1))
            (last_length,) = struct.unpack("<i", stream.read(4))
            stream.seek(HEADER_BYTES + 4 * sequences + 8 * (sequences - 1))
            (last_offset,) = struct.unpack("<q", stream.read(8))
            bin_bytes = last_offset + last_length * TOKEN_BYTES[code]
    return IndexHeader(sequences, max(boundaries - 1, 0), TOKEN_BYTES[code], bin_bytes)
