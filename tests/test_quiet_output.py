"""Quiet by default: a normal run's stderr holds none of the third-party warnings that Megatron-Core
and torch print (optional kernels, deprecated collectives, mock-data cache notes, CUDA-only advice),
from the launcher, the ranks, the DataLoader workers or the checkpoint writer; ``--verbose`` shows
them again."""

from __future__ import annotations

import os
import re
import subprocess
import sys

NOISE = re.compile(r"Warning|warn\(|^\[W |site-packages|megatron/|torch/|Unable to save")
TINY = ["--config", "configs/gpt_headless_tiny.yaml", "--mock-data", "--vocab-size", "512"]


def _run(*argv: str) -> subprocess.CompletedProcess:
    # Without the filters an in-process cli.main of another test exported into this process's environment.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-m", "headless_megatron", *argv], capture_output=True, text=True,
                          timeout=300, env=env)


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def test_pretrain_on_two_ranks_prints_no_third_party_warning(tmp_path):
    # TP 2 + SP: the tensor-parallel collectives and Megatron's CUDA stream advice; eval, a DataLoader
    # worker and a checkpoint (its writer process) on top.
    done = _run("pretrain", "--nproc-per-node", "2", *TINY, "--tensor-model-parallel-size", "2", "--sequence-parallel",
                "--train-iters", "4", "--lr-warmup-iters", "1", "--eval-interval", "4", "--eval-iters", "1",
                "--num-workers", "1", "--save", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 4 iterations" in done.stdout and "checkpoint:" in done.stdout
    assert _noise(done.stderr) == [], done.stderr[-3000:]


def test_bench_train_prints_no_third_party_warning():
    done = _run("bench", "train", "--config", "configs/gpt_headless_tiny.yaml", "--iters", "2", "--warmup", "1",
                "--", *TINY[2:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokens/s" in done.stdout
    assert _noise(done.stderr) == [], done.stderr[-3000:]


def test_verbose_shows_the_hidden_warnings(tmp_path):
    done = _run("--verbose", "pretrain", *TINY, "--train-iters", "1", "--lr-warmup-iters", "0", "--eval-iters", "0",
                "--save", "none")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Apex is not installed" in done.stderr
    assert "Unable to save MockGPTDataset indexes" in done.stderr
