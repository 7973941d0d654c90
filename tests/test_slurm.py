"""The sbatch scripts of examples/slurm/ run for real on a private single-node SLURM (2 CPU ranks).

They cover both launch modes (one task per rank, one torchrun per node), both ways SIGUSR1
arrives (at the job steps, as ``--signal=USR1@120`` sends it; at the batch shell, as
``--signal=B:USR1@120`` does), the requeue and the resumed run, whose losses continue the
uninterrupted run's, a ``scancel`` that saves and ends the job without a requeue, fine-tuning
from a pretrained run, stopped by ``exit_interval`` (no signal) and requeued as well, and a job with
a bad key that fails before any rank starts, in one line. Skipped
where SLURM's daemons are not installed (``.ci/run`` installs them on Debian).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import LocalSlurm, slurm_missing_reason
from training_runs import assert_losses_close

# One xdist worker runs every SLURM test, one cluster at a time: concurrent jobs of two clusters
# would slow each other past the fault tests' timeouts (and two single-node clusters share job ports).
pytestmark = pytest.mark.xdist_group("slurm")

if slurm_missing_reason():
    pytest.skip(slurm_missing_reason(), allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "examples" / "slurm"
ITERS = 40
# What the scripts get from the environment: the tiny model on 2 CPU ranks of this machine.
TRAINING = f"--train-iters {ITERS} --lr-warmup-iters 2 --eval-iters 0 --num-workers 1 --log-interval 1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def submit(cluster, script, run_dir, dataset, config="configs/gpt_headless_tiny.yaml", launcher="srun", extra="",
           env=None):
    """Submit ``script`` for 2 ranks on this node; the job's log goes to ``run_dir/job.out``."""
    env = {"PYTHON": sys.executable, "CONFIG": config, "DATA_PATH": dataset, "SAVE_DIR": str(run_dir / "run"),
           "LAUNCHER": launcher, "EXTRA_ARGS": f"{TRAINING} {extra}", **(env or {})}
    # Command-line options override the script's #SBATCH lines: no GPUs, a short limit, the log here.
    return cluster.sbatch(SCRIPTS / script, "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
                          "--time=10", f"--output={run_dir / 'job.out'}", env=env, cwd=REPO)


def finished(info):
    return info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def wait_until_done(cluster, job, run_dir):
    info = cluster.wait(job, finished, timeout=240)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log(run_dir)}"
    return info


def log(run_dir) -> str:
    path = Path(run_dir) / "job.out"
    return path.read_text(errors="replace") if path.exists() else "(no job log)"


def metrics(run_dir) -> list[dict]:
    """The records of metrics.jsonl; a line still being written (no newline yet) is left out."""
    path = Path(run_dir) / "run" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def losses(run_dir) -> list[float]:
    """Loss per iteration 1..N; both attempts of a requeued job append to the same file, the last record wins."""
    by_iteration = {r["iteration"]: r["loss"] for r in metrics(run_dir) if "loss" in r}
    assert sorted(by_iteration) == list(range(1, len(by_iteration) + 1)), sorted(by_iteration)
    return [by_iteration[i] for i in sorted(by_iteration)]


def tracker(run_dir) -> int:
    return int((Path(run_dir) / "run" / "latest_checkpointed_iteration.txt").read_text())


def stop_after_a_few_iterations(cluster, job, run_dir, batch: bool) -> None:
    """Send SIGUSR1 once training has logged 3 iterations, then let the requeued job start again."""
    deadline = time.monotonic() + 180
    while len(metrics(run_dir)) < 3:
        assert time.monotonic() < deadline and not finished(cluster.job(job)), log(run_dir)
        time.sleep(0.2)
    cluster.signal(job, "USR1", batch=batch)
    restart_when_requeued(cluster, job, run_dir)


def restart_when_requeued(cluster, job, run_dir) -> None:
    info = cluster.wait(job, lambda info: finished(info) or (info["Restarts"] == "1" and info["JobState"] == "PENDING"),
                        timeout=180)
    assert info["JobState"] == "PENDING", f"expected a requeued job: {info}\n{log(run_dir)}"
    cluster.release(job)


@pytest.fixture(scope="module")
def uninterrupted_gpt(cluster, dataset, tmp_path_factory):
    """The headless GPT pretrained by one torchrun on the node, start to end: the reference run."""
    run_dir = tmp_path_factory.mktemp("gpt")
    job = submit(cluster, "pretrain_gpt.sbatch", run_dir, dataset, launcher="torchrun")
    return run_dir, wait_until_done(cluster, job, run_dir)


def test_gpt_job_completes_with_a_checkpoint_metrics_and_a_log(uninterrupted_gpt):
    run_dir, info = uninterrupted_gpt
    assert info["Restarts"] == "0"
    assert tracker(run_dir) == ITERS and (run_dir / "run" / f"iter_{ITERS:07d}" / "metadata.json").is_file()
    assert len(losses(run_dir)) == ITERS
    text = log(run_dir)
    assert "launcher torchrun: iteration 0 of 40" in text and "training finished: checkpoint at iteration 40" in text


def test_sigusr1_saves_requeues_and_the_resumed_run_continues_the_losses(cluster, dataset, uninterrupted_gpt, tmp_path):
    job = submit(cluster, "pretrain_gpt.sbatch", tmp_path, dataset, launcher="srun", extra="--save-interval 2")
    stop_after_a_few_iterations(cluster, job, tmp_path, batch=False)
    info = wait_until_done(cluster, job, tmp_path)
    text = log(tmp_path)
    stopped_at = int(text.split("stopping after iteration ")[1].split(":")[0])
    assert 3 <= stopped_at < ITERS and f"stopping after iteration {stopped_at}: SIGUSR1" in text
    assert f"saved checkpoint {tmp_path / 'run' / f'iter_{stopped_at:07d}'}" in text
    assert f"requeueing job {job}" in text and f"loaded {tmp_path / 'run' / f'iter_{stopped_at:07d}'}" in text
    assert info["Restarts"] == "1" and tracker(tmp_path) == ITERS
    assert_losses_close(losses(tmp_path), losses(uninterrupted_gpt[0]), 1e-6, "stopped + resumed vs uninterrupted")


def test_sigusr1_to_the_batch_shell_requeues_and_scancel_then_ends_the_job_for_good(cluster, dataset, tmp_path):
    # torchrun per node, the signal at the batch shell (--signal=B:USR1@120), the encoder. No data
    # loader workers: SIGTERM from SLURM kills them (test_checkpoint_kill.py, the xfail cases).
    job = submit(cluster, "pretrain_bert.sbatch", tmp_path, dataset, config="configs/bert_headless_tiny.yaml",
                 launcher="torchrun", extra="--num-workers 0")
    stop_after_a_few_iterations(cluster, job, tmp_path, batch=True)
    first_stop = int(log(tmp_path).split("stopping after iteration ")[1].split(":")[0])
    # The resumed run trains on; a plain scancel (SIGTERM to every process) saves and must not requeue.
    deadline = time.monotonic() + 180
    while len(losses(tmp_path)) < first_stop + 3:
        assert time.monotonic() < deadline and not finished(cluster.job(job)), log(tmp_path)
        time.sleep(0.2)
    cluster.cancel(job)
    info = cluster.wait(job, finished, timeout=120)
    text = log(tmp_path)
    assert "batch shell got SIGUSR1: passing it to the training step" in text
    assert f"loaded {tmp_path / 'run' / f'iter_{first_stop:07d}'} (iteration {first_stop})" in text
    second_stop = int(text.split("stopping after iteration ")[2].split(":")[0])
    assert first_stop + 3 <= second_stop < ITERS and f"stopping after iteration {second_stop}: SIGTERM" in text
    assert "SLURM is ending the job" in text and "not requeueing" in text
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "1" and tracker(tmp_path) == second_stop


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_a_stop_signal_to_every_rank_under_srun_saves_and_the_step_exits_0(cluster, dataset, tmp_path, name):
    """srun starts the ranks itself, and ``scancel --signal`` reaches every process of the step (the
    ranks and their DataLoader workers): the ranks save, the step exits 0, and the script, which
    SLURM has not asked to end the job, requeues it to go on (cancelled here)."""
    job = submit(cluster, "pretrain_gpt.sbatch", tmp_path, dataset, launcher="srun", extra="--save-interval 2")
    deadline = time.monotonic() + 180
    while len(metrics(tmp_path)) < 3:
        assert time.monotonic() < deadline and not finished(cluster.job(job)), log(tmp_path)
        time.sleep(0.2)
    cluster.signal(job, name)
    cluster.wait(job, lambda info: finished(info) or info["JobState"] == "PENDING", timeout=180)
    cluster.cancel(job)
    text = log(tmp_path)
    stopped_at = int(text.split("stopping after iteration ")[1].split(":")[0])
    assert f"stopping after iteration {stopped_at}: SIG{name}; saving" in text
    assert f"stopped at iteration {stopped_at} of {ITERS} (step exit code 0): requeueing" in text, text
    assert tracker(tmp_path) == stopped_at and "Traceback" not in text


def test_finetune_job_starts_from_the_pretrained_run_and_resumes_from_its_own_checkpoint(
        cluster, dataset, uninterrupted_gpt, tmp_path):
    pretrained = uninterrupted_gpt[0] / "run"
    # exit_interval stops the first attempt at iteration 5 without any signal; the job requeues itself.
    job = submit(cluster, "finetune_gpt.sbatch", tmp_path, dataset, env={"PRETRAINED": str(pretrained)},
                 extra="--train-iters 10 --exit-interval 5 --loss ce --untie-embeddings-and-output-weights")
    restart_when_requeued(cluster, job, tmp_path)
    wait_until_done(cluster, job, tmp_path)
    text = log(tmp_path)
    assert f"starting from the weights of {pretrained} (iteration {ITERS})" in text
    assert "stopping after iteration 5: exit_interval" in text
    assert f"loaded {tmp_path / 'run' / 'iter_0000005'} (iteration 5)" in text
    assert tracker(tmp_path) == 10 and len(losses(tmp_path)) == 10


def test_a_bad_key_fails_the_job_in_one_line_before_any_rank_starts(cluster, dataset, tmp_path):
    # 2 ranks cannot hold tensor-parallel size 4: found by the first node's check, not by the ranks.
    job = submit(cluster, "pretrain_gpt.sbatch", tmp_path, dataset, extra="--tensor-model-parallel-size 4")
    info = cluster.wait(job, finished, timeout=120)
    text = log(tmp_path)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", f"{info}\n{text}"
    errors = [line for line in text.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("headless-megatron pretrain: error: "), text
    assert "the world size 2 is not divisible by tensor x pipeline model-parallel size = 4 x 1" in errors[0], text
    assert "Traceback" not in text and "not starting the training step" in text
    assert not (tmp_path / "run").exists()
