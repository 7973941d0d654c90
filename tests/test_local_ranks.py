"""The multi-rank test harness: results by rank, failures and hangs surfaced with each rank's traceback."""

import os
import time

import pytest
from local_ranks import RankFailure, run_on_ranks


def _whoami(offset):
    return int(os.environ["RANK"]) + offset, int(os.environ["WORLD_SIZE"])


def _fail_on_rank_one():
    if os.environ["RANK"] == "1":
        raise ValueError("boom on purpose")
    return "fine"


def _sleep_forever():
    time.sleep(60)


def test_results_come_back_in_rank_order():
    assert run_on_ranks(_whoami, 3, args=(10,)) == [(10, 3), (11, 3), (12, 3)]


def test_a_failing_rank_raises_with_its_traceback():
    with pytest.raises(RankFailure) as failure:
        run_on_ranks(_fail_on_rank_one, 2, timeout=60)
    message = str(failure.value)
    assert "--- rank 1 ---" in message and "ValueError: boom on purpose" in message
    assert "--- rank 0 ---" not in message


def test_a_hanging_rank_is_killed_after_the_timeout():
    started = time.monotonic()
    with pytest.raises(RankFailure, match=r"ranks \[0\] did not finish within 2s"):
        run_on_ranks(_sleep_forever, 1, timeout=2)
    assert time.monotonic() - started < 30
