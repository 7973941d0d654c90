"""The sbatch scripts of examples/slurm/ run unchanged on a private two-node SLURM (``TwoNodeSlurm``:
two ``slurmd`` in their own network namespaces, 2 CPU ranks per node), and the faults of a cluster
end a job in bounded time, never hang it, and the job resumes exactly.

The layout is TP2 x DP2: the tensor-parallel pairs stay within a node, the data-parallel gradient
reduction crosses the bridge. Every run's losses must equal those of the same layout on one node.
The faults: the second node's ranks killed (under srun, and every process of the node under
torchrun's rendezvous); one rank stopped (SIGSTOP); the first node's ranks stopped, and rank 0's
rendezvous store with them; a straggler stopped for seconds (named, not fatal); and, in the slow
tier, a node's slurmd killed and restarted, and the SLURM time limit with its warning signal. The
scripts (or SLURM, for a lost node) requeue the job, and the resumed attempts' losses must continue
the uninterrupted run's. Skipped where SLURM's daemons or network namespaces (root, iproute2) are
unavailable.
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
# The slow tests' runs: over a minute of training, longer than a first attempt lives under a
# 2-minute limit that warns at 45 s, and than the controller takes to notice a lost slurmd.
LONG_ITERS = 300
LONG = f"--train-iters {LONG_ITERS} --save-interval 10"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with TwoNodeSlurm(tmp_path_factory.mktemp("slurm2")) as running:
        yield running


@pytest.fixture(autouse=True)
def no_job_left_behind(cluster):
    """Cancel what a test submitted and left unfinished (a failed test's requeued job would take the
    nodes of the next test's job)."""
    submitted = len(cluster.jobs)
    yield
    for job in cluster.jobs[submitted:]:
        if not finished(cluster.job(job)):
            cluster.cancel(job)
            cluster.wait(job, finished, timeout=120)


def submit(cluster, run_dir, dataset, nodes=2, launcher="srun", extra="", options=()):
    """pretrain_gpt.sbatch on ``nodes`` nodes, 4 ranks in all; the job's log goes to ``run_dir/job.out``.
    sbatch ``options`` come last and override the others."""
    env = {"PYTHON": sys.executable, "CONFIG": "configs/gpt_headless_tiny.yaml", "DATA_PATH": dataset,
           "SAVE_DIR": str(run_dir / "run"), "LAUNCHER": launcher, "EXTRA_ARGS": f"{TRAINING} {extra}"}
    return cluster.sbatch(PRETRAIN, f"--nodes={nodes}", f"--ntasks-per-node={4 // nodes}", "--gpus-per-node=0",
                          "--cpus-per-task=1", "--time=10", f"--output={run_dir / 'job.out'}", *options, env=env,
                          cwd=REPO)


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


@pytest.fixture(scope="module")
def one_node_long(cluster, dataset, tmp_path_factory):
    """The reference of the slow tests: LONG_ITERS iterations, a minute of training."""
    run_dir = tmp_path_factory.mktemp("one-node-long")
    job = submit(cluster, run_dir, dataset, nodes=1, launcher="torchrun", extra=LONG)
    wait_until_done(cluster, job, run_dir)
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
        return (b"headless_megatron" in command and b"torch.distributed.run" not in command
                and not command[0].endswith(b"srun"))

    def parent(pid) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    ranks = [pid for pid in cluster.processes_on(node) if trainer(pid) and not trainer(parent(pid))]
    return sorted(ranks, key=lambda pid: int(environment(pid)["SLURM_PROCID"]))


def environment(pid) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def job_processes(cluster, node) -> list[int]:
    """Every process of the job on ``node`` that SLURM did not start for itself: the batch shell and
    srun (first node), torchrun's agent, the ranks and their DataLoader workers."""
    def comm(pid) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            return "slurmd"
    return [pid for pid in cluster.processes_on(node) if comm(pid) not in ("slurmd", "slurmstepd")]


def wait_for_a_checkpoint(cluster, job, run_dir, iterations=5) -> None:
    """Until a checkpoint is published and training went on to ``iterations`` past the start."""
    deadline = time.monotonic() + 240
    while not ((run_dir / "run" / "latest_checkpointed_iteration.txt").exists()
               and len(metrics(run_dir)) >= iterations):
        assert time.monotonic() < deadline and not finished(cluster.job(job)), log(run_dir)
        time.sleep(0.2)


def inject_after_a_checkpoint(cluster, job, run_dir, fault) -> float:
    """Once a checkpoint is published and training went on past it, apply ``fault(cluster)``; return
    the time it took for the job to leave RUNNING (requeued or failed)."""
    wait_for_a_checkpoint(cluster, job, run_dir)
    fault(cluster)
    injected = time.monotonic()
    cluster.wait(job, lambda info: info["JobState"] != "RUNNING", timeout=180, poll=0.2)
    return time.monotonic() - injected


def kill_the_second_nodes_ranks(cluster):
    victims = rank_processes(cluster, "hm-node2")
    assert len(victims) == 2, victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


def kill_the_second_node(cluster):
    """Every process of the job on the second node: its torchrun (or the ranks srun started), the
    ranks and their workers, as when the node crashes (its slurmd stays: see the slurmd test)."""
    victims = job_processes(cluster, "hm-node2")
    assert len(victims) >= 2, victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


def stop_the_last_rank(cluster):
    os.kill(rank_processes(cluster, "hm-node2")[-1], signal.SIGSTOP)


def stop_the_first_nodes_ranks(cluster):
    """Ranks 0 and 1, and with rank 0 the rendezvous store that it hosts: for the ranks of the
    second node, the first node is lost (they cannot tell a frozen node from a dead one)."""
    victims = rank_processes(cluster, "hm-node1")
    assert len(victims) == 2, victims
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)


# name: (launcher, fault, the lines that say what was lost, the longest the step may take to end).
# A killed node: srun sees its tasks die and ends the step at once (--kill-on-bad-exit), naming
# them; under torchrun too, but the first node's torchrun then waits for its ranks, which take up
# to 10 s to name the peers whose connections closed before they exit.
# Stopped ranks: the others time out in a collective (distributed_timeout_minutes), then take up to
# 10 s (15 s when the store does not answer) to name the silent ranks before they exit.
FAULTS = {
    "node-killed": ("srun", kill_the_second_nodes_ranks, ["srun: error: hm-node2: tasks 2-3: Killed"], 30),
    "node-killed-torchrun": ("torchrun", kill_the_second_node, ["srun: error: hm-node2: task 1: Killed"], 60),
    "rank-stopped": ("srun", stop_the_last_rank, [f"rank {survivor}: a collective failed ([" for survivor in (0, 1, 2)]
                     + ["lost or hung: rank 3 (hm-node2), silent for 10s"] * 3, FAULT_TIMEOUT_MINUTES * 60 + 40),
    "first-node-stopped": ("srun", stop_the_first_nodes_ranks,
                           [f"rank {survivor}: a collective failed ([" for survivor in (2, 3)]
                           + ["does not answer either (no answer in 15s): lost or hung: ranks 0 (hm-node1), "
                              "1 (hm-node1), the node of the store"] * 2, FAULT_TIMEOUT_MINUTES * 60 + 45),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_lost_node_or_hung_rank_fails_the_step_in_bounded_time_and_the_requeued_job_resumes(
        cluster, dataset, one_node, name, tmp_path):
    launcher, fault, said, bound = FAULTS[name]
    job = submit(cluster, tmp_path, dataset, launcher=launcher,
                 extra=f"--save-interval 2 --distributed-timeout-minutes {FAULT_TIMEOUT_MINUTES}")
    ended_after = inject_after_a_checkpoint(cluster, job, tmp_path, fault)
    text = log(tmp_path)
    print(f"{name}: the step ended {ended_after:.1f}s after the fault")
    assert ended_after < bound, f"{ended_after:.0f}s\n{text}"
    for line in set(said):
        assert text.count(line) >= said.count(line), f"{line!r} not in:\n{text}"
    restart_when_requeued(cluster, job, tmp_path)
    info = wait_until_done(cluster, job, tmp_path)
    text = log(tmp_path)
    resumed_from = int(text.split(f"attempt 2 on 2 node(s) x 2 rank(s), launcher {launcher}: iteration ")[1].split()[0])
    print(f"{name}: resumed from iteration {resumed_from}; {len(metrics(tmp_path)) - ITERS} iteration(s) trained twice")
    assert resumed_from >= 2 and info["Restarts"] == "1" and tracker(tmp_path) == ITERS
    assert_losses_close(losses(tmp_path), one_node, 1e-6, f"{name} + requeued vs uninterrupted")


def test_a_rank_stopped_for_seconds_is_named_the_slowest_and_the_job_completes(cluster, dataset, one_node, tmp_path):
    """A straggler, not a failure: rank 3 stopped for 4 s, well within distributed_timeout_minutes."""
    job = submit(cluster, tmp_path, dataset)
    deadline = time.monotonic() + 240
    while len(metrics(tmp_path)) < 3:
        assert time.monotonic() < deadline and not finished(cluster.job(job)), log(tmp_path)
        time.sleep(0.2)
    slow = rank_processes(cluster, "hm-node2")[-1]
    os.kill(slow, signal.SIGSTOP)
    time.sleep(4)
    os.kill(slow, signal.SIGCONT)
    info = wait_until_done(cluster, job, tmp_path)
    text = log(tmp_path)
    stalled = [record for record in metrics(tmp_path) if record["stalled_seconds"] > 2]
    assert info["Restarts"] == "0" and len(stalled) == 1, text
    assert stalled[0]["stalled_rank"] == 3 and 3.5 < stalled[0]["stalled_seconds"] < 4.5, stalled
    assert stalled[0]["iteration_seconds"] > 3.5 and stalled[0]["slowest_rank"] in (2, 3)  # 3's TP peer waited
    assert f"; rank 3 stalled {stalled[0]['stalled_seconds']:.1f} s)" in text, text
    assert_losses_close(losses(tmp_path), one_node, 1e-6, "a straggler vs none")


@pytest.mark.slow
def test_the_time_limit_warns_the_batch_shell_which_saves_requeues_and_the_run_resumes_exactly(
        cluster, dataset, one_node_long, tmp_path):
    """``--time=2 --signal=B:USR1@45``: the controller checks limits every 30 s and sends the
    warning at the first check at least 120 - 45 - 30 s into an attempt, so 45-75 s in; the attempt
    saves and requeues itself long before the limit, and the next one resumes, until training ends."""
    job = submit(cluster, tmp_path, dataset, extra=LONG, options=("--time=2", "--signal=B:USR1@45"))
    cluster.wait(job, lambda info: info["JobState"] != "PENDING", timeout=120)
    attempts = 1
    while True:
        info = cluster.wait(job, lambda info: finished(info) or info["JobState"] == "PENDING", timeout=240)
        if finished(info):
            break
        attempts += 1
        cluster.release(job)
        cluster.wait(job, lambda info: info["JobState"] != "PENDING", timeout=120)
    text = log(tmp_path)
    print(f"time limit: {attempts} attempt(s)")
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == attempts - 1 >= 1, f"{info}\n{text}"
    assert text.count("batch shell got SIGUSR1: passing it to the training step") == attempts - 1, text
    stops = [int(part.split(":")[0]) for part in text.split("stopping after iteration ")[1:]]
    assert len(stops) == attempts - 1 and all(f"stopping after iteration {at}: SIGUSR1" in text for at in stops)
    for attempt, at in enumerate(stops, 2):
        assert f"attempt {attempt} on 2 node(s) x 2 rank(s), launcher srun: iteration {at} of {LONG_ITERS}" in text
    assert "TIMEOUT" not in text and tracker(tmp_path) == LONG_ITERS
    assert_losses_close(losses(tmp_path), one_node_long, 1e-6, "time-limited attempts vs uninterrupted")


@pytest.mark.slow
def test_slurmd_killed_mid_run_then_restarted_the_job_is_requeued_and_resumes_from_its_last_checkpoint(
        cluster, dataset, one_node_long, tmp_path):
    """The second node's slurmd dies (its job steps go on without it): within slurmd_timeout the
    controller sets the node DOWN and requeues the job; the ranks get SIGTERM, save and exit; the
    restarted slurmd returns the node to service and the requeued job resumes from that save."""
    slurmd_timeout = 20
    with cluster.slurmd_timeout_of(slurmd_timeout):
        job = submit(cluster, tmp_path, dataset, extra=LONG)
        wait_for_a_checkpoint(cluster, job, tmp_path, iterations=12)
        cluster.kill_slurmd("hm-node2")
        killed = time.monotonic()
        try:
            cluster.wait(job, lambda info: info["JobState"] != "RUNNING", timeout=120, poll=0.5)
            noticed_after = time.monotonic() - killed
            assert cluster.node_state("hm-node2").startswith("DOWN")
        finally:
            cluster.start_slurmd("hm-node2")
    print(f"slurmd killed: the job left RUNNING {noticed_after:.0f}s later")
    assert noticed_after < slurmd_timeout + 20
    restart_when_requeued(cluster, job, tmp_path)
    info = wait_until_done(cluster, job, tmp_path)
    text = log(tmp_path)
    assert "srun: error: Node failure on hm-node2" in text and "DUE TO NODE FAILURE" in text, text
    stopped_at = int(text.split("stopping after iteration ")[1].split(":")[0])
    assert f"stopping after iteration {stopped_at}: SIGTERM; saving" in text
    assert f"attempt 2 on 2 node(s) x 2 rank(s), launcher srun: iteration {stopped_at} of {LONG_ITERS}" in text
    assert info["Restarts"] == "1" and tracker(tmp_path) == LONG_ITERS
    assert_losses_close(losses(tmp_path), one_node_long, 1e-6, "slurmd lost + requeued vs uninterrupted")
