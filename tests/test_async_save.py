"""Checkpoints written in the background (``--async-save``): the same checkpoints as a synchronous
save, at any layout, for GPT and BERT; a stop signal waits for the write in flight and saves the
stop checkpoint; a killed writer or a full disk publishes nothing and stops the run in one line."""

from __future__ import annotations

import json
import signal

import pytest
from fault_runs import FaultRun, pretrain_argv
from file_systems import small_disk
from local_ranks import RankFailure
from training_runs import REFERENCE_ITERS, assert_losses_close, train

from headless_megatron.runtime.directory_lock import LOCK_FILE
from headless_megatron.training.run_directory import checkpoint_to_resume

LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2": [],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_run_saved_in_the_background_resumes_to_the_uninterrupted_losses(layout, dataset, gpt_reference, tmp_path):
    run = tmp_path / "run"
    saved = train(2, dataset, *LAYOUTS[layout], "--async-save", "--save", str(run), "--save-interval", "5",
                  "--exit-interval", "10", iters=REFERENCE_ITERS)
    assert saved.iterations == 10 and saved.checkpoint == str(run / "iter_0000010")
    assert checkpoint_to_resume(run) == (run / "iter_0000010", "") and not list(run.glob("*.tmp"))
    resumed = train(1, dataset, "--load", str(run), "--save", str(run), "--exit-interval", "12", iters=REFERENCE_ITERS)
    assert_losses_close(resumed.losses, gpt_reference.losses[10:12], 1e-4, f"saved in the background at {layout}")


def test_a_bert_run_saved_in_the_background_resumes_as_one_saved_at_once(dataset, tmp_path):
    bert = ["--tensor-model-parallel-size", "2"]
    config = "configs/bert_headless_tiny.yaml"
    for mode in ("sync", "async"):
        train(2, dataset, *bert, *(["--async-save"] if mode == "async" else []), "--save", str(tmp_path / mode),
              "--save-interval", "3", "--exit-interval", "6", iters=10, config=config)
    resumed = {mode: train(1, dataset, "--load", str(tmp_path / mode), "--save", str(tmp_path / mode),
                           "--exit-interval", "8", iters=10, config=config).losses for mode in ("sync", "async")}
    assert_losses_close(resumed["async"], resumed["sync"], 1e-6, "BERT resumed from a background save")


def test_a_stop_signal_waits_for_the_write_in_flight_then_saves_and_exits_0(dataset, tmp_path):
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--async-save", "--save-interval", "2", "--num-workers", "1", nproc=2,
                         iters=400)
    run = FaultRun(argv, tmp_path)
    run.wait_until(lambda: "saved checkpoint" in run.stdout_path.read_text(), timeout=120)
    run.signal_group(signal.SIGTERM)
    result = run.finish(timeout=180)
    assert result.code == 0 and not result.leftovers, result.stderr[-3000:]
    stops = [line for line in result.stdout.splitlines() if line.startswith("stopping after iteration")]
    stopped_at = int(stops[0].split()[3].rstrip(":"))
    assert f"saved checkpoint {save / f'iter_{stopped_at:07d}'}" in result.stdout
    assert checkpoint_to_resume(save) == (save / f"iter_{stopped_at:07d}", "") and not list(save.glob("*.tmp"))


@pytest.mark.parametrize("fault", ["SIGKILL write 4", "SIGKILL training 5"], ids=["writer-killed", "rank-killed"])
def test_a_kill_during_a_background_write_keeps_the_previous_checkpoint_and_resumes_exactly(fault, dataset,
                                                                                           tmp_path):
    """The save of iteration 4 is being written (its writer killed, or a rank killed before the write
    was finalized): iteration 2 stays the latest, and a resumed run continues the uninterrupted one."""
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--async-save", "--save-interval", "2", "--num-workers", "0", nproc=2,
                         iters=400)
    result = FaultRun(argv, tmp_path / "killed", fault=fault).finish(timeout=180)
    assert result.code not in (0, None) and not result.leftovers, result.stderr[-3000:]
    if fault.startswith("SIGKILL write"):  # the ranks live on: one line, and the staging directory removed
        assert result.error_lines[0].startswith(
            f"headless-megatron pretrain: error: save: writing iteration 4 to {save} failed (the background writer"
        ), result.stderr[-3000:]
        assert not list(save.glob("*.tmp"))
    assert checkpoint_to_resume(save) == (save / "iter_0000002", "")

    resumed = FaultRun(pretrain_argv(dataset, save, "--load", str(save), "--exit-interval", "4", "--num-workers",
                                     "0", nproc=2, iters=400), tmp_path / "resumed").finish(timeout=120)
    assert resumed.code == 0 and f"loaded {save / 'iter_0000002'} (iteration 2)" in resumed.stdout, resumed.stderr
    assert checkpoint_to_resume(save) == (save / "iter_0000004", "") and not list(save.glob("*.tmp"))
    uninterrupted = train(2, dataset, "--exit-interval", "4", iters=400)
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    after_resume = {r["iteration"]: r["loss"] for r in records if "loss" in r}  # the resumed run's come last
    assert_losses_close([after_resume[3], after_resume[4]], uninterrupted.losses[2:4], 1e-6, "resumed after the kill")


def test_a_full_disk_under_a_background_write_is_one_line_and_publishes_nothing(dataset, tmp_path):
    with small_disk(tmp_path / "disk", "384k") as disk:
        with pytest.raises(RankFailure, match=rf"CheckpointError: save: writing iteration 5 to {disk}/run failed "
                                              r"\(No space left on device\); nothing was published"):
            train(1, dataset, "--async-save", "--save", str(disk / "run"), "--save-interval", "5", iters=10)
        assert sorted(path.name for path in (disk / "run").iterdir()) == [LOCK_FILE, "config.yaml", "metrics.jsonl"]
