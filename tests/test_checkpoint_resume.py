"""What a resumed run loads, and what it refuses: without a tracker file the newest complete
checkpoint (never a silent restart that saves over the old ones), a truncated shard named with the
flag to fall back, another run's save directory, another model shape; the W&B run id survives a
requeue."""

from __future__ import annotations

import json
import random

import pytest
from local_ranks import RankFailure
from training_runs import REFERENCE_ITERS, assert_losses_close, train, train_printing

from headless_megatron.training.run_directory import TRACKER_FILE


@pytest.fixture(scope="module")
def saved_run(gpt_saved_run, gpt_reference):
    """A run of 30 iterations stopped at 20, saved at 10 and 20, and the losses of the whole run."""
    return gpt_saved_run.directory, gpt_reference.losses


def copy_of(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def snapshot(run):
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run.rglob("*") if p.is_file() and p.parent.name.startswith("iter_")}


def truncate_largest_shard(iteration_dir):
    shard = max(iteration_dir.glob("*.distcp"), key=lambda p: p.stat().st_size)
    with shard.open("r+b") as stream:
        stream.truncate(shard.stat().st_size // 2)
    return shard


def metrics_iterations(run):
    return [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_without_a_tracker_the_newest_complete_checkpoint_is_resumed(saved_run, dataset, tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    (run / TRACKER_FILE).unlink()
    before = snapshot(run)
    resumed = train(1, dataset, "--load", str(run), "--save", str(run), "--save-interval", "10", iters=REFERENCE_ITERS)
    assert resumed.iterations == 30 and len(resumed.losses) == 10  # from 20, not from 0
    assert_losses_close(resumed.losses, saved_run[1][20:], 1e-6, "resumed without a tracker")
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("iter_0000030")} == before  # nothing overwritten
    assert (run / TRACKER_FILE).read_text().strip() == "30"
    logged = metrics_iterations(run)
    assert logged == sorted(logged), "a second run from iteration 0 was appended to metrics.jsonl"


def test_without_a_tracker_a_truncated_newest_checkpoint_is_passed_over(saved_run, dataset, tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    (run / TRACKER_FILE).unlink()
    truncate_largest_shard(run / "iter_0000020")
    resumed = train(1, dataset, "--load", str(run), "--save", str(tmp_path / "next"), "--exit-interval", "12",
                    iters=REFERENCE_ITERS)
    assert resumed.iterations == 12 and len(resumed.losses) == 2  # from 10


def test_a_truncated_shard_of_the_latest_checkpoint_is_named_and_the_fallback_flag_resumes(saved_run, dataset,
                                                                                          tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    shard = truncate_largest_shard(run / "iter_0000020")
    with pytest.raises(RankFailure, match=(
            rf"CheckpointError: {run / 'iter_0000020'}: incomplete checkpoint: {shard.name} is truncated \(\d+ of "
            r"\d+ bytes\); resume from the previous complete checkpoint with --load-fallback")):
        train(1, dataset, "--load", str(run), "--save", str(run), iters=REFERENCE_ITERS)
    assert not (run / "iter_0000030").exists()
    resumed = train(1, dataset, "--load", str(run), "--save", str(run), "--load-fallback", "--exit-interval", "12",
                    iters=REFERENCE_ITERS)
    assert resumed.iterations == 12 and len(resumed.losses) == 2
    assert_losses_close(resumed.losses, saved_run[1][10:12], 1e-6, "fallen back to iteration 10")


def test_a_fresh_run_never_saves_over_another_runs_checkpoints(saved_run, dataset, tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    before = snapshot(run)
    with pytest.raises(RankFailure, match=(
            rf"CheckpointError: save: {run} holds the checkpoints of another run and this run starts from iteration "
            rf"0; resume it with --load {run}, or save to a new directory")):
        train(1, dataset, "--save", str(run), iters=12)
    assert snapshot(run) == before


def test_resuming_with_another_model_shape_is_one_line(saved_run, dataset, tmp_path):
    latest = saved_run[0] / "iter_0000020"
    with pytest.raises(RankFailure, match=rf"CheckpointError: hidden_size: 128 here, 64 in {latest}; a resumed run "
                                          r"keeps the checkpoint's model"):
        train(1, dataset, "--load", str(saved_run[0]), "--save", str(tmp_path / "other"), "--hidden-size", "128",
              iters=REFERENCE_ITERS)
    assert not (tmp_path / "other").exists()


def test_load_equal_to_save_without_a_checkpoint_says_it_starts_fresh_and_wandb_keeps_its_run_id(dataset, tmp_path):
    save = tmp_path / "run"
    flags = ("--save", str(save), "--load", str(save), "--wandb-project", "faults", "--wandb-mode", "offline")
    first, printed = train_printing(1, dataset, *flags, "--exit-interval", "3", iters=6)
    assert first.iterations == 3 and f"load: no checkpoint in {save} yet; starting from iteration 0" in printed
    run_id = (save / "wandb_run_id.txt").read_text().strip()
    # The requeued job: a new process that finds the checkpoint and the run id.
    second, printed = train_printing(1, dataset, *flags, iters=6)
    assert second.iterations == 6 and f"loaded {save / 'iter_0000003'} (iteration 3)" in printed, printed
    assert (save / "wandb_run_id.txt").read_text().strip() == run_id
    runs = sorted(path.name for path in (save / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs), runs


# ---- What a resumed run takes from the checkpoint and what from its flags (docs: "Resuming a run") ----


def _started(argv):
    """On a rank: start the trainer of ``argv`` (it resumes) and report where it stands."""
    from headless_megatron.config import parse_config
    from headless_megatron.training.loop import start_trainer

    trainer = start_trainer(parse_config(argv))
    scheduler = trainer.scheduler
    return {"iteration": trainer.iteration, "consumed": trainer.consumed_train_samples, "max_lr": scheduler.max_lr,
            "min_lr": scheduler.min_lr, "decay_steps": scheduler.lr_decay_steps}


def start(dataset, run, *flags):
    from local_ranks import run_on_ranks

    argv = ["--config", "configs/gpt_headless_tiny.yaml", "--data-path", dataset, "--train-iters",
            str(REFERENCE_ITERS), "--lr-warmup-iters", "2", "--eval-iters", "0", "--num-workers", "0",
            "--save", str(run), "--load", str(run), *flags]
    return run_on_ranks(_started, 1, args=(argv,), timeout=300)[0]


def test_a_changed_global_batch_size_continues_at_the_first_unread_sample_and_counts_right(saved_run, dataset,
                                                                                           tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    assert start(dataset, run, "--global-batch-size", "32")["consumed"] == 20 * 16
    summary, output = train_printing(1, dataset, "--save", str(run), "--load", str(run), "--global-batch-size", "32",
                                     "--exit-interval", "22", "--log-interval", "1", iters=REFERENCE_ITERS)
    assert summary.iterations == 22
    assert "global_batch_size: 32 from iteration 21 (the checkpoint's 16); the data continues at sample 320" in output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["consumed_samples"]) for r in records if r.get("iteration", 0) > 20 and "loss" in r] \
        == [(21, 352), (22, 384)]
    import torch

    common = torch.load(run / "iter_0000022" / "common.pt", weights_only=True)
    assert common["consumed_train_samples"] == 384


def test_a_changed_schedule_is_refused_unless_a_flag_says_which_one_to_follow(saved_run, dataset, tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    with pytest.raises(RankFailure, match=r"CheckpointError: lr: 0\.002 differs from the checkpoint's 0\.003; pass "
                                          r"--override-opt-param-scheduler .* or --use-checkpoint-opt-param-scheduler"):
        start(dataset, run, "--lr", "2e-3")
    with pytest.raises(RankFailure, match=r"CheckpointError: lr_decay_iters: 40 differs from the checkpoint's 30"):
        start(dataset, run, "--train-iters", "40")
    applied = start(dataset, run, "--lr", "2e-3", "--min-lr", "1e-4", "--override-opt-param-scheduler")
    assert (applied["max_lr"], applied["min_lr"], applied["iteration"]) == (2e-3, 1e-4, 20)
    extended = start(dataset, run, "--train-iters", "40", "--override-opt-param-scheduler")
    assert extended["decay_steps"] == 40
    kept = start(dataset, run, "--lr", "2e-3", "--use-checkpoint-opt-param-scheduler")
    assert (kept["max_lr"], kept["min_lr"]) == (3e-3, 3e-4)


def test_another_sequence_length_or_tokenizer_is_refused_unless_overridden(saved_run, dataset, topics_dataset,
                                                                          tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    with pytest.raises(RankFailure, match=rf"CheckpointError: seq_length: 32 here, 64 in {run}/iter_0000020; a "
                                          r"sample would mean something else .* --override-checkpoint-data"):
        start(dataset, run, "--seq-length", "32")
    assert start(dataset, run, "--seq-length", "32", "--override-checkpoint-data")["iteration"] == 20
    with pytest.raises(RankFailure, match=r"CheckpointError: tokenizer: tokenizer sha256:\S+ here, tokenizer "
                                          r"sha256:\S+ in .*iter_0000020"):
        start(topics_dataset, run)


@pytest.mark.parametrize("damage", ["metadata.json missing", "common.pt truncated"])
def test_every_kind_of_incomplete_latest_checkpoint_is_named_and_the_fallback_flag_resumes(saved_run, dataset,
                                                                                          tmp_path, damage):
    run = copy_of(saved_run[0], tmp_path)
    latest = run / "iter_0000020"
    if damage == "metadata.json missing":
        (latest / "metadata.json").unlink()
        expected = "incomplete checkpoint: metadata.json is missing"
    else:
        (latest / "common.pt").write_bytes((latest / "common.pt").read_bytes()[:100])
        expected = "not a readable torch_dist checkpoint \\(its common.pt: "
    with pytest.raises(RankFailure, match=rf"CheckpointError: {latest}: {expected}.*--load-fallback"):
        start(dataset, run)
    assert start(dataset, run, "--load-fallback")["iteration"] == 10


def test_a_damaged_pretrained_checkpoint_is_named_in_one_line(saved_run, dataset, tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    shard = truncate_largest_shard(run / "iter_0000020")
    with pytest.raises(RankFailure, match=rf"CheckpointError: pretrained: {run / 'iter_0000020'}: incomplete "
                                          rf"checkpoint: {shard.name} is truncated"):
        train(1, dataset, "--pretrained", str(run), "--save", str(tmp_path / "finetuned"), iters=12)


def test_a_shard_damaged_in_place_is_one_line_naming_the_checkpoint(saved_run, dataset, tmp_path):
    run = copy_of(saved_run[0], tmp_path)
    shard = max((run / "iter_0000020").glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(random.Random(0).randbytes(shard.stat().st_size))  # same size: the completeness check passes
    with pytest.raises(RankFailure, match=rf"CheckpointError: {run / 'iter_0000020'}: damaged: a shard cannot be "
                                          r"read \(UnpicklingError\); resume from an earlier checkpoint") as error:
        start(dataset, run)
    assert "FrameSummary" not in str(error.value)


@pytest.mark.parametrize("aside", ["complete", "damaged"])
def test_a_crash_while_an_iteration_was_saved_again_is_named_and_the_fallback_flag_resumes(saved_run, dataset,
                                                                                          tmp_path, aside):
    """What ``publish`` leaves when killed between its two renames: the tracker names 20, whose
    directory was moved aside and not yet replaced by the new save of 20. The fallback loads the copy
    set aside when it is complete, else the previous checkpoint."""
    run = copy_of(saved_run[0], tmp_path)
    (run / "iter_0000020").rename(run / "iter_0000020.replaced")
    if aside == "damaged":
        truncate_largest_shard(run / "iter_0000020.replaced")
    with pytest.raises(RankFailure, match=(
            rf"CheckpointError: {run / TRACKER_FILE} names iteration 20, but {run / 'iter_0000020'} is missing; "
            r"resume from the previous complete checkpoint with --load-fallback")):
        start(dataset, run)
    assert start(dataset, run, "--load-fallback")["iteration"] == (20 if aside == "complete" else 10)
