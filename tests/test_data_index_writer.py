"""Our .bin/.idx writer writes Megatron-Core's IndexedDatasetBuilder's bytes, and IndexedDataset reads them."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from headless_megatron.data.index_writer import IndexWriter


def documents(dtype, count: int, seed: int) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    high = min(np.iinfo(dtype).max, 70000)
    return [generator.integers(0, high, size=generator.integers(1, 300), dtype=np.int64).astype(dtype)
            for _ in range(count)]


def write_ours(prefix, dtype, docs, merged=()) -> None:
    writer = IndexWriter(f"{prefix}.bin", dtype)
    if docs:
        writer.add_documents(np.concatenate(docs), np.array([len(doc) for doc in docs]))
    for other in merged:
        writer.add_dataset(other)
    writer.finalize(f"{prefix}.idx")


def write_megatrons(prefix, dtype, docs, merged=()) -> None:
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        builder.add_document(doc, [len(doc)])
    for other in merged:
        builder.add_index(str(other))
    builder.finalize(f"{prefix}.idx")


def assert_same_files(ours, megatrons) -> None:
    for suffix in (".bin", ".idx"):
        assert open(f"{ours}{suffix}", "rb").read() == open(f"{megatrons}{suffix}", "rb").read(), suffix


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_documents_are_written_as_megatron_writes_them(dtype, tmp_path):
    docs = documents(dtype, 50, seed=0)
    write_ours(tmp_path / "ours", dtype, docs)
    write_megatrons(tmp_path / "megatron", dtype, docs)
    assert_same_files(tmp_path / "ours", tmp_path / "megatron")
    dataset = IndexedDataset(str(tmp_path / "ours"))
    assert len(dataset) == 50 and all(np.array_equal(dataset[i], doc) for i, doc in enumerate(docs))


def test_merged_datasets_and_an_empty_one_are_written_as_megatron_writes_them(tmp_path):
    shards = []
    for number in range(3):
        shard = tmp_path / f"shard{number}"
        write_megatrons(shard, np.uint16, documents(np.uint16, 10 + number, seed=number))
        shards.append(shard)
    extra = documents(np.uint16, 4, seed=9)
    write_ours(tmp_path / "ours", np.uint16, extra, merged=shards)
    write_megatrons(tmp_path / "megatron", np.uint16, extra, merged=shards)
    assert_same_files(tmp_path / "ours", tmp_path / "megatron")
    write_ours(tmp_path / "empty_ours", np.uint16, [])
    write_megatrons(tmp_path / "empty_megatron", np.uint16, [])
    assert_same_files(tmp_path / "empty_ours", tmp_path / "empty_megatron")


def test_a_dataset_of_another_dtype_is_refused(tmp_path):
    write_ours(tmp_path / "bytes", np.uint8, documents(np.uint8, 3, seed=0))
    writer = IndexWriter(tmp_path / "wide.bin", np.uint16)
    with pytest.raises(ValueError, match="token dtype code 1, this dataset's is 8"):
        writer.add_dataset(tmp_path / "bytes")
    writer.close()
