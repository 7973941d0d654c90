"""Atomic writing of Megatron .bin/.idx + sidecar + tokenizer, and the token dtype choice."""

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from headless_megatron.data.errors import DataError
from headless_megatron.data.indexed import AtomicDatasetWriter, DatasetPaths, publish_tokenizer, token_dtype
from headless_megatron.data.sidecar import DatasetInfo, read_sidecar
from headless_megatron.data.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<|endoftext|>": 26, "<|pad|>": 27, "<|mask|>": 28}
    rust = RustTokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    rust.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    hf = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                 mask_token="<|mask|>")
    return Tokenizer(hf, source="letters")


def _info(documents, tokens):
    return DatasetInfo(documents=documents, tokens=tokens, dtype="uint8", text_key="text",
                       tokenizer={"path": "p_tokenizer"},
                       source={"inputs": ["test"], "shard": None, "text_bytes": 0, "skipped": {}})


def _files(directory):
    return sorted(path.name for path in directory.iterdir())


def test_paths_follow_megatron_lm_naming(tmp_path):
    paths = DatasetPaths(tmp_path / "corpus", "content")
    assert paths.dataset_prefix == tmp_path / "corpus_content_document"
    assert (paths.bin.name, paths.idx.name, paths.sidecar.name, paths.tokenizer.name) == (
        "corpus_content_document.bin", "corpus_content_document.idx", "corpus_content_document.json",
        "corpus_tokenizer")


@pytest.mark.parametrize(
    "vocab_size, dtype", [(256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.int32)]
)
def test_auto_dtype_is_the_smallest_that_holds_every_id(vocab_size, dtype):
    assert token_dtype("auto", vocab_size) is dtype


def test_a_dtype_too_small_for_the_vocabulary_is_an_error():
    assert token_dtype("int32", 50_000) is np.int32
    with pytest.raises(DataError, match=r"^--dtype uint16: the tokenizer has 70000 ids, more than uint16 holds "
                                        r"\(65536\); choose a wider dtype or --dtype auto$"):
        token_dtype("uint16", 70_000)


def test_publish_writes_a_dataset_megatron_reads(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path / "p")
    with AtomicDatasetWriter(paths, np.uint8) as writer:
        writer.add_documents(np.array([7, 4, 26, 1, 26, 2, 3, 26], dtype=np.uint8), np.array([3, 2, 3]))
        # only the scratch directory
        assert _files(tmp_path)[0].startswith(".p_text_document.") and len(_files(tmp_path)) == 1
        writer.publish(tokenizer, _info(3, 8))
    assert _files(tmp_path) == ["p_text_document.bin", "p_text_document.idx", "p_text_document.json", "p_tokenizer"]
    dataset = IndexedDataset(str(paths.dataset_prefix))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [[7, 4, 26], [1, 26], [2, 3, 26]]
    assert dataset.document_indices.tolist() == [0, 1, 2, 3] and dataset.index.dtype == np.uint8
    assert read_sidecar(paths.sidecar).documents == 3
    assert load_tokenizer(paths.tokenizer).fingerprint == tokenizer.fingerprint


def test_a_failed_run_leaves_the_previous_dataset_and_no_scratch(tmp_path, tokenizer):
    paths = DatasetPaths(tmp_path / "p")
    with AtomicDatasetWriter(paths, np.uint8) as writer:
        writer.add_documents(np.array([0, 26], dtype=np.uint8), np.array([2]))
        writer.publish(tokenizer, _info(1, 2))
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path) if name != "p_tokenizer"}
    with pytest.raises(KeyboardInterrupt), AtomicDatasetWriter(paths, np.uint8) as writer:
        writer.add_documents(np.array([5, 5, 26], dtype=np.uint8), np.array([3]))
        raise KeyboardInterrupt
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path) if name != "p_tokenizer"} == before
    assert _files(tmp_path) == ["p_text_document.bin", "p_text_document.idx", "p_text_document.json", "p_tokenizer"]


def test_a_new_run_replaces_every_file_and_add_dataset_concatenates(tmp_path, tokenizer):
    first, second = DatasetPaths(tmp_path / "a"), DatasetPaths(tmp_path / "b")
    for paths, tokens in ((first, [1, 2, 26]), (second, [3, 26])):
        with AtomicDatasetWriter(paths, np.uint8) as writer:
            writer.add_documents(np.array(tokens, dtype=np.uint8), np.array([len(tokens)]))
            writer.publish(tokenizer, _info(1, len(tokens)))
    with AtomicDatasetWriter(first, np.uint8) as writer:
        writer.add_dataset(first.dataset_prefix)
        writer.add_dataset(second.dataset_prefix)
        writer.publish(tokenizer, _info(2, 5))
    merged = IndexedDataset(str(first.dataset_prefix))
    assert [merged[i].tolist() for i in range(len(merged))] == [[1, 2, 26], [3, 26]]
    assert read_sidecar(first.sidecar).documents == 2
    assert not [name for name in _files(tmp_path) if name.startswith(".")]


def test_publish_tokenizer_replaces_a_directory_whole(tmp_path, tokenizer):
    target = tmp_path / "tok"
    target.mkdir()
    (target / "stale.txt").write_text("from an older tokenizer")
    assert publish_tokenizer(tokenizer, target) == target
    assert _files(target) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert _files(tmp_path) == ["tok"]
