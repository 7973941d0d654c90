"""Process-group start-up: environment mapping, layout validation, single- and multi-rank init."""

import subprocess
import sys

import pytest
from local_ranks import run_on_ranks

from headless_megatron.config import ConfigError, ParallelLayout
from headless_megatron.runtime.distributed import init_distributed, map_slurm_environment


def test_srun_task_environment_becomes_torch_rendezvous_variables():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "node7"}
    map_slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "8", "1")
    assert env["MASTER_ADDR"] == "node7" and env["MASTER_PORT"] == "29500"


def test_torchrun_variables_win_over_slurm():
    env = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "3"}
    map_slurm_environment(env)
    assert env["RANK"] == "0" and "LOCAL_RANK" not in env


def test_world_size_must_be_a_multiple_of_tp_times_pp():
    assert ParallelLayout(2, 2).data_parallel_size(8) == 2
    with pytest.raises(ConfigError, match="world size 6 is not divisible by .* 2 x 2"):
        ParallelLayout(2, 2).data_parallel_size(6)


def _layout_seen_by_megatron(tp, pp):
    from megatron.core import parallel_state as ps

    device = init_distributed(ParallelLayout(tp, pp))
    return (
        device.type,
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_data_parallel_world_size(),
        ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_rank(),
    )


def test_megatron_parallel_state_follows_the_layout():
    ranks = run_on_ranks(_layout_seen_by_megatron, 4, args=(2, 1))
    assert {r[:4] for r in ranks} == {("cpu", 2, 1, 2)}
    assert [r[4] for r in ranks] == [0, 1, 0, 1]  # TP ranks are adjacent, as in Megatron-LM


def test_single_process_without_launcher_environment():
    code = (
        "from headless_megatron.runtime.distributed import init_distributed;"
        "from megatron.core import parallel_state as ps;"
        "init_distributed(); print(ps.get_data_parallel_world_size(), ps.get_tensor_model_parallel_world_size())"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def _collective_with_a_silent_rank(silent_rank):
    import contextlib
    import io
    import socket
    import time

    import torch
    import torch.distributed as dist

    from headless_megatron.runtime.distributed import naming_lost_ranks

    init_distributed(timeout_minutes=0.1)  # collectives give up after 6 s
    if dist.get_rank() == silent_rank:
        time.sleep(12)  # alive but never reaching the collective: a hung rank
        return None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(RuntimeError):
        with naming_lost_ranks(wait_seconds=2):
            dist.all_reduce(torch.ones(1))
    return printed.getvalue().strip(), socket.gethostname()


def test_a_failed_collective_names_the_rank_that_did_not_answer_and_its_host():
    results = run_on_ranks(_collective_with_a_silent_rank, 3, args=(2,), timeout=120)
    for rank, (line, host) in enumerate(results[:2]):
        assert line.startswith(f"rank {rank}: a collective failed (")
        assert line.endswith(f"; lost or hung: rank 2 ({host}), silent for 2s"), line


def _collective_with_rank_zero_stopped():
    """Rank 0, which hosts the rendezvous store, stops (SIGSTOP) before the collective; rank 1 wakes
    it once the census has named it."""
    import contextlib
    import io
    import os
    import signal
    import socket

    import torch
    import torch.distributed as dist

    from headless_megatron.runtime.distributed import naming_lost_ranks

    init_distributed(timeout_minutes=0.1)
    store = dist.distributed_c10d._get_default_store()
    if dist.get_rank() == 0:
        store.set("pid", str(os.getpid()))
        dist.barrier()
        os.kill(os.getpid(), signal.SIGSTOP)
        return None
    stopped = int(store.get("pid"))
    dist.barrier()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), pytest.raises(RuntimeError):
            with naming_lost_ranks(wait_seconds=2):
                dist.all_reduce(torch.ones(1))
    finally:
        if dist.get_rank() == 1:
            os.kill(stopped, signal.SIGCONT)
    return printed.getvalue().strip(), socket.gethostname()


def test_a_census_without_the_store_names_the_ranks_on_the_stores_node():
    results = run_on_ranks(_collective_with_rank_zero_stopped, 3, timeout=120)
    for rank, (line, host) in enumerate(results[1:], 1):
        assert line.startswith(f"rank {rank}: a collective failed (")
        assert "the rendezvous store at 127.0.0.1 does not answer either (" in line, line
        # Every rank of this test runs on the store's host, so all the others are named.
        others = ", ".join(f"{other} ({host})" for other in range(3) if other != rank)
        assert line.endswith(f"lost or hung: ranks {others}, the node of the store"), line


def _error_outside_a_collective():
    from headless_megatron.runtime.distributed import naming_lost_ranks

    init_distributed()
    with naming_lost_ranks(wait_seconds=2):
        raise RuntimeError("not a collective")


def test_errors_that_are_not_collective_failures_pass_through_without_a_census(capfd):
    with pytest.raises(Exception, match="not a collective"):
        run_on_ranks(_error_outside_a_collective, 2, timeout=60)
    assert "a collective failed" not in capfd.readouterr().out
