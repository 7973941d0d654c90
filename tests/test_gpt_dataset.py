"""The pretraining sampler (Megatron-LM's order, identical micro-batches in every DP layout) and the
data checks that run before anything is built (the files, and the tokenizer they were made with)."""

from pathlib import Path

import pytest

from headless_megatron.cli import main
from headless_megatron.config import ConfigError, parse_config
from headless_megatron.data.errors import DataError
from headless_megatron.data.gpt_dataset import MicroBatchSampler, check_data, check_tokenizer_matches_data
from headless_megatron.data.sidecar import read_sidecar, sidecar_path
from headless_megatron.data.tokenizer import load_tokenizer, tokenizer_for_dataset


def _micro_batches(dp_size, micro_batch_size=4, total=64, consumed=0):
    per_rank = [list(MicroBatchSampler(total, consumed, micro_batch_size, rank, dp_size)) for rank in range(dp_size)]
    return per_rank


def test_micro_batches_are_the_same_whatever_the_data_parallel_size():
    (single,) = _micro_batches(1)
    for dp in (2, 4):
        ranks = _micro_batches(dp)
        assert sorted(map(tuple, sum(ranks, []))) == sorted(map(tuple, single))
        # Rank r takes every dp-th micro-batch, so each global batch keeps its micro-batches.
        assert ranks[1][0] == single[1] and ranks[0][1] == single[dp]


def test_resuming_continues_where_the_consumed_samples_end():
    (full,) = _micro_batches(1)
    (resumed,) = _micro_batches(1, consumed=32)
    assert resumed == full[8:]
    assert len(MicroBatchSampler(64, 32, 4, 0, 2)) == 4


def test_a_partial_last_step_is_not_served():
    assert list(MicroBatchSampler(10, 0, 4, 1, 2)) == [[4, 5, 6, 7]]


def test_the_data_is_checked_before_anything_is_built(dataset, capsys):
    """An empty split is refused from the index headers alone, in the launching process: no rank,
    no model (Megatron's GPTDataset would loop forever on it)."""
    flags = ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--eval-iters", "1"]
    check_data(parse_config(flags))  # the recipe's own split has documents everywhere
    with pytest.raises(ConfigError, match=r"split: '99990,9,1' leaves the valid split of .* empty"):
        check_data(parse_config([*flags, "--split", "99990,9,1"]))
    check_data(parse_config([*flags, "--split", "99990,9,1", "--eval-iters", "0"]))  # nobody reads it
    assert main(["pretrain", "--nproc-per-node", "2", *flags, "--split", "99990,9,1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("headless-megatron pretrain: error: split: '99990,9,1' leaves the valid split")


def test_a_tokenizer_or_vocabulary_the_data_was_not_made_with_is_refused_before_training(dataset, topics_dataset):
    other = Path(topics_dataset).parent / read_sidecar(sidecar_path(topics_dataset)).tokenizer["path"]
    flags = ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset]

    def check(*extra):
        config = parse_config([*flags, *extra])
        tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else tokenizer_for_dataset(dataset)
        check_tokenizer_matches_data(config, tokenizer, config.vocab_size or tokenizer.vocab_size)

    check()  # the dataset's own tokenizer
    check("--tokenizer", str(Path(dataset).parent / read_sidecar(sidecar_path(dataset)).tokenizer["path"]))
    with pytest.raises(DataError, match=rf"^tokenizer: 500 ids, but {dataset} holds ids up to 511 \(its tokenizer has "
                                        r"512\); use the dataset's tokenizer and leave vocab_size unset$"):
        check("--tokenizer", str(other))
    with pytest.raises(DataError, match=rf"^tokenizer: {other} is not the tokenizer {dataset} was made with "
                                        r"\(\S+\); pass that one, or drop --tokenizer to use it$"):
        check("--tokenizer", str(other), "--vocab-size", "512")
    with pytest.raises(DataError, match=r"^vocab_size: 256 ids, but .* holds ids up to 511"):
        check("--vocab-size", "256")
