"""The index header the launcher reads without Megatron-Core says what Megatron-Core's own reader
says: counts, token size, the ``.bin`` size; and the split bounds are Megatron's split matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType, IndexedDataset, IndexedDatasetBuilder

from headless_megatron.data.gpt_dataset import split_bounds
from headless_megatron.data.index_header import MAGIC, TOKEN_BYTES, IndexProblem, read_index_header


def test_the_layout_constants_are_megatrons():
    assert MAGIC == _INDEX_HEADER
    assert TOKEN_BYTES == {code.value: np.dtype(DType.dtype_from_code(code.value)).itemsize for code in DType}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_counts_and_bin_size_equal_what_megatron_reads(dtype, tmp_path):
    prefix = str(tmp_path / "data")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    generator = np.random.default_rng(0)
    for _document in range(7):
        for _sequence in range(generator.integers(1, 4)):
            tokens = generator.integers(0, 200, generator.integers(1, 50)).astype(dtype)
            builder.add_item(torch.from_numpy(tokens))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    header, megatron = read_index_header(prefix + ".idx"), IndexedDataset(prefix)
    assert header.sequences == len(megatron) and header.documents == len(megatron.document_indices) - 1 == 7
    assert header.token_bytes == np.dtype(dtype).itemsize
    assert header.bin_bytes == (tmp_path / "data.bin").stat().st_size


def test_the_tokenized_corpus_header_equals_megatrons(dataset):
    header, megatron = read_index_header(dataset + ".idx"), IndexedDataset(dataset)
    assert (header.sequences, header.documents) == (len(megatron), len(megatron.document_indices) - 1)


def test_a_damaged_index_is_named(dataset, tmp_path):
    damaged = tmp_path / "damaged.idx"
    damaged.write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(IndexProblem, match="no Megatron index header"):
        read_index_header(damaged)
    whole = open(dataset + ".idx", "rb").read()
    damaged.write_bytes(whole[:-8])
    with pytest.raises(IndexProblem, match=rf"{len(whole) - 8} bytes, its header describes {len(whole)}"):
        read_index_header(damaged)
    damaged.write_bytes(whole[:20])
    with pytest.raises(IndexProblem, match="20-byte header"):
        read_index_header(damaged)


@pytest.mark.parametrize("split", ["969,30,1", "99,1,0", "1", "100,0,0", "0,1,0", "98,2", "1,1,1", "0.7,0.2,0.1",
                                   "99990,9,1"])
def test_split_bounds_are_megatrons_split_matrix(split):
    assert split_bounds(split) == convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
