"""deterministic_mode: a rank runs with torch's deterministic algorithms, the environment of
cuBLAS, NCCL and Transformer Engine set, and Megatron-Core's switch on; two runs at TP2 with
sequence parallelism give bit-identical losses and checkpoints."""

from __future__ import annotations

import hashlib
import os

from local_ranks import run_on_ranks
from training_runs import TINY

from headless_megatron.runtime.determinism import DETERMINISTIC_ENVIRONMENT

FLAGS = ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--hidden-dropout", "0.1",
         "--attention-dropout", "0.1", "--train-iters", "6", "--lr-warmup-iters", "2", "--eval-iters", "0",
         "--num-workers", "0", "--log-interval", "1", "--save-interval", "6"]


def _train_and_report(argv):
    """On each rank: pretrain, then what deterministic mode switched on in this process."""
    import torch
    import torch.distributed as dist

    from headless_megatron.config import parse_config
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    summary = trainer.train()
    model_config = trainer.model_chunks[0].module.config
    state = {"algorithms": torch.are_deterministic_algorithms_enabled(), "cudnn": torch.backends.cudnn.deterministic,
             "environment": {name: os.environ.get(name) for name in DETERMINISTIC_ENVIRONMENT},
             "megatron": model_config.deterministic_mode}
    return (summary.losses, state) if dist.get_rank() == 0 else state


def _checkpoint_digest(directory) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.glob("*.distcp"))}


def test_two_deterministic_runs_are_bit_identical_and_every_switch_is_on(dataset, tmp_path):
    runs = []
    for name in ("first", "second"):
        argv = ["--config", TINY, "--data-path", dataset, *FLAGS, "--save", str(tmp_path / name),
                "--deterministic-mode"]
        (losses, state), other_rank = run_on_ranks(_train_and_report, 2, args=(argv,), timeout=600)
        runs.append(losses)
        for rank_state in (state, other_rank):
            assert rank_state == {"algorithms": True, "cudnn": True, "environment": DETERMINISTIC_ENVIRONMENT,
                                  "megatron": True}
    assert runs[0] == runs[1] and len(runs[0]) == 6  # exactly, not within a tolerance
    first, second = (_checkpoint_digest(tmp_path / name / "iter_0000006") for name in ("first", "second"))
    assert first and first == second


def test_without_the_mode_nothing_is_switched(dataset, tmp_path):
    argv = ["--config", TINY, "--data-path", dataset, *FLAGS, "--save", str(tmp_path / "run")]
    (_, state), _ = run_on_ranks(_train_and_report, 2, args=(argv,), timeout=600)
    assert state["algorithms"] is False and state["megatron"] is False
