"""The sbatch scripts of examples/slurm/ run unchanged on a private two-node SLURM (``TwoNodeSlurm``:
two ``slurmd`` in their own network namespaces, 2 CPU ranks per node), and a lost node or a hung
rank ends the job within ``distributed_timeout_minutes`` instead of hanging it.

The layout is TP2 x DP2: the tensor-parallel pairs stay within a node, the data-parallel gradient
reduction crosses the bridge. Every run's losses must equal those of the same layout on one node.
A fault (every rank of the second node killed, or one rank stopped with SIGSTOP) must fail the
step in bounded time; the scripts then requeue the job (it had published a checkpoint), and the
resumed attempt's losses must continue the uninterrupted run's. Skipped where SLURM's daemons or
network namespaces (root, iproute2) are unavailable.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import TwoNodeSlurm, namespaces_missing_reason, slurm_missing_reason

# One xdist worker runs every SLURM test, one cluster at a time: concurrent jobs of two clusters
# would slow each other past the fault tests' timeouts (and two single-node clusters share job ports).
pytestmark = pytest.mark.xdist_group("slurm")

if slurm_missing_reason() or namespaces_missing_reason():
    pytest.skip(slurm_missing_reason() or namespaces_missing_reason(), allow_module_level=True)

from test_slurm import finished, log, losses, metrics, restart_when_requeued, tracker  # noqa: E402
from training_runs import assert_losses_close  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PRETRAIN = REPO / "examples" / "slurm" / "pretrain_gpt.sbatch"
ITERS = 12
# TP2 x DP2 of the tiny model; 2 micro-batches of 4 per rank and step.
TRAINING = (f"--train-iters {ITERS} --lr-warmup-iters 2 --eval-iters 0 --num-workers 1 --log-interval 1 "
            "--tensor-model-parallel-size 2")
# How long survivors wait for a lost or stopped rank in a fault test: short, but longer than any
# wait in a healthy tiny run on 2 shared cores (start-up, the index build, a checkpoint save).
FAULT_TIMEOUT_MINUTES = 0.25


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with TwoNodeSlurm(tmp_path_factory.mktemp("slurm2")) as running:
        yield running


def submit(cluster, run_dir, dataset, nodes=2, launcher="srun", extra=""):
    """pretrain_gpt.sbatch on ``nodes`` nodes, 4 ranks in all; the job's log goes to ``run_dir/job.out``."""
    env = {"PYTHON": sys.executable, "CONFIG": "configs/gpt_headless_tiny.yaml", "DATA_PATH": dataset,
           "SAVE_DIR": str(run_dir / "run"), "LAUNCHER": launcher, "EXTRA_ARGS": f"{TRAINING} {extra}"}
    return cluster.sbatch(PRETRAIN, f"--nodes={nodes}", f"--ntasks-per-node={4 // nodes}", "--gpus-per-node=0",
                          "--cpus-per-task=1", "--time=10", f"--output={run_dir / 'job.out'}", env=env, cwd=REPO)


def wait_until_done(cluster, job, run_dir):
    info = cluster.wait(job, finished, timeout=300)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log(run_dir)}"
    return info


@pytest.fixture(scope="module")
def one_node(cluster, dataset, tmp_path_factory):
    """The reference: the same TP2 x DP2 layout as 4 ranks of one node (one torchrun)."""
    run_dir = tmp_path_factory.mktemp("one-node")
    job = submit(cluster, run_dir, dataset, nodes=1, launcher="torchrun")
    info = wait_until_done(cluster, job, run_dir)
    assert info["NodeList"] == "hm-node1"
    return losses(run_dir)


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_two_nodes_train_tp_within_and_dp_across_nodes_with_the_losses_of_one_node(
        cluster, dataset, one_node, launcher, tmp_path):
    job = submit(cluster, tmp_path, dataset, launcher=launcher)
    info = wait_until_done(cluster, job, tmp_path)
    assert info["NodeList"] == "hm-node[1-2]" and info["NumNodes"] == "2"
    text = log(tmp_path)
    assert f"on 2 node(s) x 2 rank(s), launcher {launcher}: iteration 0 of {ITERS}" in text
    assert tracker(tmp_path) == ITERS and len(one_node) == ITERS
    assert_losses_close(losses(tmp_path), one_node, 1e-6, f"2 nodes ({launcher}) vs 1 node")


def rank_processes(cluster, node) -> list[int]:
    """The trainer processes (ranks, not their DataLoader workers) running on ``node``, by rank."""
    def trainer(pid) -> bool:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        return b"headless_megatron" in command and b"torch.distributed.run" not in command

    def parent(pid) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    ranks = [pid for pid in cluster.processes_on(node) if trainer(pid) and not trainer(parent(pid))]
    return sorted(ranks, key=lambda pid: int(environment(pid)["SLURM_PROCID"]))


def environment(pid) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def inject_after_a_checkpoint(cluster, job, run_dir, fault) -> float:
    """Once a checkpoint is published and training went on past it, apply ``fault`` to the ranks of
    the second node; return the time it took for the job to leave RUNNING (requeued or failed)."""
    deadline = time.monotonic() + 240
    while not ((run_dir / "run" / "latest_checkpointed_iteration.txt").exists() and len(metrics(run_dir)) >= 5):
        assert time.monotonic() < deadline and not finished(cluster.job(job)), log(run_dir)
        time.sleep(0.2)
    victims = rank_processes(cluster, "hm-node2")
    assert len(victims) == 2, victims
    fault(victims)
    injected = time.monotonic()
    cluster.wait(job, lambda info: info["JobState"] != "RUNNING", timeout=180, poll=0.2)
    return time.monotonic() - injected


def kill(pids):
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def stop_the_last(pids):
    os.kill(pids[-1], signal.SIGSTOP)


# fault: (the line that names the lost ranks, the longest the step may take to end after it).
# A killed node: srun sees its tasks die and ends the step at once (--kill-on-bad-exit), naming
# them. A stopped rank: the others time out in a collective (distributed_timeout_minutes), then
# take up to 10 s to find and name the silent rank before they exit.
FAULTS = {
    kill: ("srun: error: hm-node2: tasks 2-3: Killed", 30),
    stop_the_last: ("a collective failed ([", FAULT_TIMEOUT_MINUTES * 60 + 40),
}
STOPPED_RANK = "lost or hung: rank 3 (hm-node2), silent for 10s"


@pytest.mark.parametrize("fault", list(FAULTS), ids=["node-killed", "rank-stopped"])
def test_a_lost_node_or_hung_rank_fails_the_step_in_bounded_time_and_the_requeued_job_resumes(
        cluster, dataset, one_node, fault, tmp_path):
    job = submit(cluster, tmp_path, dataset,
                 extra=f"--save-interval 2 --distributed-timeout-minutes {FAULT_TIMEOUT_MINUTES}")
    ended_after = inject_after_a_checkpoint(cluster, job, tmp_path, fault)
    said, bound = FAULTS[fault]
    text = log(tmp_path)
    print(f"{fault.__name__}: the step ended {ended_after:.1f}s after the fault")
    assert ended_after < bound and said in text, f"{ended_after:.0f}s\n{text}"
    if fault is stop_the_last:
        for survivor in (0, 1, 2):
            assert f"rank {survivor}: a collective failed ([" in text, text
        assert text.count(STOPPED_RANK) == 3, text
    restart_when_requeued(cluster, job, tmp_path)
    info = wait_until_done(cluster, job, tmp_path)
    text = log(tmp_path)
    resumed_from = int(text.split("attempt 2 on 2 node(s) x 2 rank(s), launcher srun: iteration ")[1].split()[0])
    print(f"{fault.__name__}: resumed from iteration {resumed_from}; "
          f"{len(metrics(tmp_path)) - ITERS} iteration(s) trained twice")
    assert resumed_from >= 2 and info["Restarts"] == "1" and tracker(tmp_path) == ITERS
    assert_losses_close(losses(tmp_path), one_node, 1e-6, f"{fault.__name__} + requeued vs uninterrupted")
