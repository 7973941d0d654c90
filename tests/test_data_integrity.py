"""A dataset rewritten under the same prefix is never read through the sample indices Megatron
cached for the old one: the cache folder is keyed by the files' identity."""

from __future__ import annotations

from test_hangs import small_dataset
from training_runs import train


def test_a_dataset_preprocessed_again_under_the_same_prefix_gets_fresh_indices(dataset, tmp_path):
    prefix = small_dataset(dataset, tmp_path / "data", 400)
    first = train(1, prefix, iters=3)
    caches = sorted(p.name for p in (tmp_path / "data" / "small_text_document" / "cache").iterdir())
    # preprocess again into the same prefix, now a much smaller corpus: the old indices point past its end.
    assert small_dataset(dataset, tmp_path / "data", 40) == prefix
    second = train(1, prefix, iters=3)
    assert len(second.losses) == 3 and len(first.losses) == 3
    after = sorted(p.name for p in (tmp_path / "data" / "small_text_document" / "cache").iterdir())
    assert len(caches) == 1 and len(after) == 2 and caches[0] in after
