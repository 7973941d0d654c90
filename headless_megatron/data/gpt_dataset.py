"""Pretraining data for the decoder: Megatron's ``GPTDataset`` over indexed datasets, and the
order in which data-parallel ranks read it.

Datasets come from ``BlendedMegatronDatasetBuilder`` (blends with weights, a train/valid/test split,
cached sample indices), exactly as Megatron-LM builds them. Every rank builds them (rank 0 first,
writing the index cache, the others then read the cache) and reads its own micro-batches, so no
CUDA broadcast is needed inside a tensor-parallel group.

:class:`MicroBatchSampler` reproduces Megatron-LM's pretraining sampler: a global batch is
``micro_batch_size x data_parallel_size x num_microbatches`` consecutive samples, and each group of
``micro_batch_size x dp`` consecutive samples is split over the DP ranks. The composition of every
micro-batch is therefore the same whatever the DP size, which the CWT loss needs to be comparable
across layouts (its negatives are the micro-batch), and resuming only needs the number of samples
consumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from headless_megatron.data.errors import DataError
from headless_megatron.data.index_header import IndexHeader, IndexProblem, read_index_header
from headless_megatron.data.sidecar import read_sidecar, sidecar_path
from headless_megatron.data.tokenizer import Tokenizer
from headless_megatron.quiet import drop_log_records
from headless_megatron.runtime.processes import ignore_stop_signals


class MicroBatchSampler:
    """Yields this DP rank's micro-batches of sample indices, from ``consumed_samples`` on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size * self.dp_size)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch_size * self.dp_size
        first = self.dp_rank * self.micro_batch_size
        for start in range(self.consumed_samples, self.total_samples - step + 1, step):
            yield list(range(start + first, start + first + self.micro_batch_size))


def micro_batches(dataset, consumed_samples: int, micro_batch_size: int, num_workers: int,
                  total_samples: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """This DP rank's micro-batches (dicts of stacked tensors) through a ``DataLoader``."""
    from megatron.core import parallel_state as ps

    sampler = MicroBatchSampler(
        total_samples=len(dataset) if total_samples is None else total_samples,
        consumed_samples=consumed_samples,
        micro_batch_size=micro_batch_size,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        # A stop signal is the rank's to handle: workers would die of it, and the rank with them.
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
    return iter(loader)


def samples_per_split(config, train_samples: int | None = None) -> tuple[int, int, int]:
    """The (train, valid, test) samples a run of ``config`` reads: validation only when it runs;
    ``train_samples`` when a resumed run needs another count than train_iters x global_batch_size."""
    batch = config.global_batch_size
    valid = config.eval_iters * batch if config.eval_interval and config.eval_iters else 0
    return train_samples or config.train_iters * batch, valid, 0


def check_data(config) -> None:
    """Refuse, in one line, data the run of ``config`` cannot train on: a missing, truncated or
    mismatched ``.bin``/``.idx``, or a split it reads that gets no document. Reads only the index
    headers, without importing Megatron-Core, so it runs before any model is built (and in the
    launcher, in a second, before any rank starts)."""
    if config.mock_data:
        return
    headers = {prefix: check_indexed_dataset(prefix) for prefix in config.data_blend()[0]}
    _check_every_split_has_documents(config, split_bounds(config.split), samples_per_split(config), headers)


def check_tokenizer_matches_data(config, tokenizer: Tokenizer | None, vocab_size: int) -> None:
    """Refuse, in one line, a tokenizer the data was not made with (its sidecar records the
    tokenizer's fingerprint), or a vocabulary smaller than the data's ids: either would train on
    ids that mean other tokens, or fail deep in the embedding. Datasets without a sidecar (made by
    another tool) record nothing to compare."""
    if config.mock_data:
        return
    for prefix in config.data_blend()[0]:
        if not sidecar_path(prefix).is_file():
            continue
        recorded = read_sidecar(sidecar_path(prefix)).tokenizer
        if recorded.get("vocab_size", 0) > vocab_size:
            key = "vocab_size" if config.vocab_size else "tokenizer"
            raise DataError(
                f"{key}: {vocab_size} ids, but {prefix} holds ids up to {recorded['vocab_size'] - 1} (its tokenizer "
                f"has {recorded['vocab_size']}); use the dataset's tokenizer and leave vocab_size unset"
            )
        made_with = recorded.get("fingerprint")
        if config.tokenizer and tokenizer is not None and made_with not in (None, tokenizer.fingerprint):
            raise DataError(
                f"tokenizer: {config.tokenizer} is not the tokenizer {prefix} was made with "
                f"({recorded.get('path')}); pass that one, or drop --tokenizer to use it"
            )


def split_bounds(split: str) -> list[tuple[float, float] | None]:
    """Megatron's split matrix of ``split`` ("969,30,1" -> the (start, end) fraction of the documents
    of train, valid and test, None for an empty share), as its ``parse_and_normalize_split`` and
    ``convert_split_vector_to_split_matrix`` compute it (a test checks that they agree)."""
    import re

    shares = [float(share) for share in re.findall(r"[.0-9]+", split)]
    shares += [0.0] * (3 - len(shares))
    total = sum(shares)
    bounds, start = [], 0.0
    for share in shares:
        end = start + share / total
        bounds.append((start, end) if end > start else None)
        start = end
    return bounds


def build_gpt_datasets(config, tokenizer: Tokenizer | None, train_samples: int | None = None):
    """(train, valid, test) ``GPTDataset``s (or Megatron's mock data) of :func:`samples_per_split`
    samples each, from data :func:`check_data` accepted.

    ``config`` is a :class:`~headless_megatron.config.TrainConfig`.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    blend = config.data_blend()
    samples = samples_per_split(config, train_samples)
    dataset_config = GPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=config.seq_length,
        blend=blend,
        split=config.split,
        path_to_cache=None if config.mock_data else _index_cache_directory(config),
        tokenizer=tokenizer if tokenizer is not None else _MockTokenizer(config.vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=config.eod_mask_loss,
        # Causal attention needs no explicit mask: Megatron builds it (TE fuses it).
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    if not config.mock_data:
        # A split nobody reads is not built: Megatron's GPTDataset loops forever over an empty one
        # even when asked for 0 samples (megatron-core 0.16.1), e.g. the 1% test split of a small corpus.
        dataset_config.split_matrix = [
            bounds if wanted else None for bounds, wanted in zip(dataset_config.split_matrix, samples)
        ]
    else:
        # Mock data is cheap to rebuild and given no cache directory on purpose; Megatron warns of it per split.
        drop_log_records(
            MockGPTDataset.__module__, r"^Unable to save MockGPTDataset indexes because path_to_cache is None$"
        )
    dataset_class = MockGPTDataset if config.mock_data else GPTDataset
    return BlendedMegatronDatasetBuilder(dataset_class, list(samples), lambda: True, dataset_config).build()


def check_indexed_dataset(prefix: str) -> IndexHeader:
    """The header of ``prefix``'s index; a one-line :class:`DataError` naming the file when its
    ``.bin``/``.idx`` are missing, unreadable or disagree (one cut short, or rewritten without the
    other)."""
    from headless_megatron.data.errors import DataError

    for suffix in (".idx", ".bin"):
        if not Path(prefix + suffix).is_file():
            raise DataError(f"data_path: {prefix}{suffix} does not exist (give the prefix preprocess printed)")
    try:
        header = read_index_header(prefix + ".idx")
    except IndexProblem as problem:
        raise DataError(f"{prefix}.idx: not a readable Megatron index, truncated or damaged ({problem})") from None
    actual = Path(prefix + ".bin").stat().st_size
    if actual != header.bin_bytes:
        raise DataError(
            f"{prefix}.bin: {actual} bytes, but its .idx describes {header.bin_bytes}: one of them is truncated or "
            "was rewritten without the other; preprocess the corpus again"
        )
    return header


def _index_cache_directory(config) -> str:
    """Where Megatron caches the sample indices of ``config``'s datasets: a folder named after the
    identity (size, modification time) of every ``.bin``/``.idx``.

    Megatron keys its cache by the dataset path, split and seed only, so indices built for an
    earlier dataset under the same prefix would be reused for a new one (an ``IndexError``, or
    samples silently read from the wrong places). Preprocessing writes new files, hence new keys.
    """
    import hashlib

    identity = hashlib.sha256()
    for prefix in config.data_blend()[0]:
        for suffix in (".bin", ".idx"):
            path = Path(prefix + suffix)
            stat = path.stat() if path.exists() else None
            identity.update(f"{path.resolve()}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}\n".encode())
    root = config.data_cache_path or str(Path(config.data_blend()[0][0]) / "cache")
    return str(Path(root) / f"data-{identity.hexdigest()[:16]}")


def _check_every_split_has_documents(config, bounds, samples, headers: dict[str, IndexHeader]) -> None:
    """Refuse a split that would get no document: Megatron's GPTDataset then loops forever
    looking for enough epochs (megatron-core 0.16.1)."""
    from headless_megatron.config import ConfigError

    for prefix, header in headers.items():
        documents = header.documents
        for name, split, wanted in zip(("train", "valid", "test"), bounds, samples):
            # The same rounding as BlendedMegatronDatasetBuilder uses to cut the documents.
            if wanted and split and round(split[1] * documents) - round(split[0] * documents) <= 0:
                raise ConfigError(
                    f"split: {config.split!r} leaves the {name} split of {prefix} ({documents} documents) "
                    f"empty; give it a larger share{' or set eval_iters 0' if name == 'valid' else ''}"
                )


class _MockTokenizer:
    """What ``MockGPTDataset`` needs of a tokenizer when there is no data (benchmarks)."""

    def __init__(self, vocab_size: int):
        from collections import OrderedDict

        self.vocab_size = vocab_size
        self.eod = vocab_size - 1
        # GPTDataset zeroes the loss where labels equal pad, in place on a mask it caches for all
        # samples (megatron-core 0.16.1), so a pad id that occurs in the data would make every
        # sample's mask depend on which sample was read first. -1 never occurs.
        self.pad = -1
        self.unique_identifiers = OrderedDict([("class", "MockTokenizer"), ("vocab_size", vocab_size)])


def shut_down_workers(data) -> None:
    """Stop the worker processes of a DataLoader iterator (or of each model chunk's iterator) now,
    even while an exception's traceback still holds it (it would otherwise only stop them when
    garbage-collected)."""
    for iterator in data if isinstance(data, list) else [data]:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
