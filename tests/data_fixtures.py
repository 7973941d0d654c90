"""Real-text datasets for tests: a built-in corpus preprocessed with a small trained BPE tokenizer.

    import pytest
    from data_fixtures import tiny_builtin_dataset

    @pytest.fixture(scope="session")
    def pydocs_dataset(tmp_path_factory):
        return tiny_builtin_dataset(tmp_path_factory.mktemp("data"))  # "<dir>/python-docs-bpe512_text_document"

The result is the dataset prefix to give training (``GPTDataset``, ``IndexedDataset``); its
tokenizer is ``tokenizer_for_dataset(prefix)``. The build is deterministic (same arguments, same
bytes) and skipped when ``directory`` already holds the finished dataset, so a session- or
module-scoped fixture, or a directory kept between runs, pays for it once. Cost on 2 CPU cores:
about 3 s for ``python-docs`` (1.8 MB, 2,475 documents, ~0.5 M tokens at vocabulary 512), under
1 s for ``python-topics`` (0.5 MB, 79 long documents).
"""

from __future__ import annotations

import os
from pathlib import Path

from headless_megatron.data.indexed import DatasetPaths
from headless_megatron.data.preprocess import build_dataset, prepare_tokenizer
from headless_megatron.data.sources import open_corpus

TOPICS_VOCAB = 500
"""The conversion tests' vocabulary on ``python-topics``: not a multiple of 128, so checkpoints pad it."""


def tiny_builtin_dataset(directory: str | os.PathLike, vocab_size: int = 512, corpus: str = "python-docs") -> str:
    """Prefix of ``builtin:<corpus>`` tokenized by a BPE tokenizer of ``vocab_size`` trained on it."""
    paths = DatasetPaths(Path(directory) / f"{corpus}-bpe{vocab_size}")
    if not paths.sidecar.is_file():
        source = open_corpus([f"builtin:{corpus}"])
        tokenizer = prepare_tokenizer(source, train="bpe", vocab_size=vocab_size)
        build_dataset(source, tokenizer, paths, progress=False)
    return str(paths.dataset_prefix)
