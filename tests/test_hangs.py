"""No fault makes a run hang or leaves a process behind: each case below runs the real command line
in its own session under a 60-second limit and asserts a prompt non-zero exit with one error line,
and that no process of the session (ranks, DataLoader workers, the checkpoint writer's helper, the
resource tracker, the launcher) is left."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from fault_runs import FaultRun, pretrain_argv

from headless_megatron.data.indexed import DatasetPaths
from headless_megatron.data.preprocess import build_dataset
from headless_megatron.data.sources import open_corpus
from headless_megatron.data.tokenizer import tokenizer_for_dataset
from headless_megatron.training.run_directory import checkpoint_to_resume

LIMIT = 60


def copy_dataset(prefix: str, directory) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    copy = str(directory / os.path.basename(prefix))
    for suffix in (".bin", ".idx", ".json"):
        shutil.copy(prefix + suffix, copy + suffix)
    tokenizer = prefix.removesuffix("_text_document") + "_tokenizer"
    shutil.copytree(tokenizer, directory / os.path.basename(tokenizer))
    return copy


def small_dataset(dataset: str, directory, documents: int) -> str:
    """``documents`` short documents, tokenized with ``dataset``'s tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i}: " + "the quick brown fox " * 40}) + "\n"
                              for i in range(documents)))
    paths = DatasetPaths(directory / "small")
    build_dataset(open_corpus([str(corpus)]), tokenizer_for_dataset(dataset), paths, progress=False)
    return str(paths.dataset_prefix)


def assert_prompt_failure(result, error: str | None = None) -> None:
    assert result.code not in (0, None), f"exit {result.code} after {result.seconds:.0f}s:\n{result.stderr[-3000:]}"
    assert result.seconds < LIMIT
    assert not result.leftovers, result.leftovers
    if error is not None:
        assert result.error_lines == [error], result.error_lines


@pytest.mark.parametrize("nproc", [1, 2])
def test_an_unexpected_error_with_dataloader_workers_exits_promptly(nproc, dataset, tmp_path):
    argv = pretrain_argv(dataset, tmp_path / "run", "--num-workers", "2", nproc=nproc)
    result = FaultRun(argv, tmp_path, fault="raise training 3").finish(timeout=LIMIT)
    assert_prompt_failure(result)
    assert "RuntimeError: injected fault: raise training 3" in result.stderr


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_truncated_bin_is_one_line_and_leaves_no_save_directory(nproc, dataset, tmp_path):
    copy = copy_dataset(dataset, tmp_path / "data")
    with open(copy + ".bin", "r+b") as stream:
        stream.truncate(os.path.getsize(copy + ".bin") // 2)
    result = FaultRun(pretrain_argv(copy, tmp_path / "run", nproc=nproc), tmp_path).finish(timeout=LIMIT)
    size = os.path.getsize(copy + ".bin")
    line = (f"headless-megatron pretrain: error: {copy}.bin: {size} bytes, but its .idx describes {2 * size}: one "
            "of them is truncated or was rewritten without the other; preprocess the corpus again")
    assert_prompt_failure(result)
    # With 2 ranks, the first rank to find it prints it; the launcher adds nothing.
    assert result.code == 2 and result.error_lines == [line] and result.stderr.count(line) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_truncated_idx_is_one_line(dataset, tmp_path):
    copy = copy_dataset(dataset, tmp_path / "data")
    with open(copy + ".idx", "r+b") as stream:
        stream.truncate(os.path.getsize(copy + ".idx") - 100)
    result = FaultRun(pretrain_argv(copy, None), tmp_path).finish(timeout=LIMIT)
    assert_prompt_failure(result)
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith(f"headless-megatron pretrain: error: {copy}.idx: not a readable "
                                            "Megatron index, truncated or damaged")


def test_a_small_corpus_trains_with_the_splits_it_has(dataset, tmp_path):
    """30 documents with the default split 969,30,1: the 1% test split is empty; Megatron looped
    forever on it at 100% CPU without a word."""
    small = small_dataset(dataset, tmp_path / "data", 30)
    result = FaultRun(pretrain_argv(small, None, iters=3), tmp_path).finish(timeout=LIMIT)
    assert result.code == 0, result.stderr[-3000:]
    assert "trained 3 iterations" in result.stdout and not result.leftovers


def test_a_small_corpus_with_an_empty_validation_split_is_one_line(dataset, tmp_path):
    small = small_dataset(dataset, tmp_path / "data", 10)
    result = FaultRun(pretrain_argv(small, None, "--eval-iters", "1", iters=3), tmp_path).finish(timeout=LIMIT)
    assert_prompt_failure(result, f"headless-megatron pretrain: error: split: '969,30,1' leaves the valid split of "
                                  f"{small} (10 documents) empty; give it a larger share or set eval_iters 0")


def test_a_killed_rank_takes_its_helpers_with_it(dataset, tmp_path):
    """Rank 1 is SIGKILLed while writing its second checkpoint (the writer's helper and the resource
    tracker are running): the run fails promptly and nothing of it stays alive."""
    save = tmp_path / "run"
    argv = pretrain_argv(dataset, save, "--save-interval", "2", nproc=2, iters=40)
    result = FaultRun(argv, tmp_path, fault="SIGKILL save 4 1").finish(timeout=LIMIT)
    assert_prompt_failure(result)
    assert checkpoint_to_resume(save) == (save / "iter_0000002", "")
    assert re.search(r"^headless-megatron: .*rank 1 of 2 on \S+ was killed by SIGKILL", result.stderr, re.M), \
        result.stderr[-2000:]
