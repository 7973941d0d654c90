"""The pretraining sampler: Megatron-LM's order, identical micro-batches in every DP layout."""

from headless_megatron.data.gpt_dataset import MicroBatchSampler


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
