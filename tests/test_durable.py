"""durable: every file and directory is fsynced before the rename that publishes it, and the
directory of the new name after it; a publish of each kind (checkpoint, dataset, export) follows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headless_megatron import durable


@pytest.fixture
def journal(monkeypatch):
    """The fsync and rename calls, in order: ("fsync", path) and ("replace", source, target)."""
    calls = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(descriptor):
        calls.append(("fsync", Path(os.readlink(f"/proc/self/fd/{descriptor}"))))
        fsync(descriptor)

    def recorded_replace(source, target):
        calls.append(("replace", Path(source).absolute(), Path(target).absolute()))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    return calls


def synced_before(journal, path: Path, call_index: int) -> bool:
    return any(call == ("fsync", path.resolve()) for call in journal[:call_index])


def assert_published_durably(journal, source: Path, target: Path) -> None:
    """Everything under ``source`` was synced before it was renamed to ``target``, whose directory
    was synced after."""
    renames = [index for index, call in enumerate(journal) if call[0] == "replace" and call[2] == target.absolute()]
    assert renames, f"{target} was not published by a rename"
    rename = renames[-1]
    published = [target, *target.rglob("*")] if target.is_dir() else [target]
    for path in published:
        before = source / path.relative_to(target) if target.is_dir() else source
        assert synced_before(journal, before, rename), f"{before} was not synced before its rename"
    assert ("fsync", target.parent.resolve()) in journal[rename + 1:], f"{target.parent} not synced after the rename"


def test_write_text_syncs_the_file_then_renames_it_then_syncs_the_directory(tmp_path, journal):
    durable.write_text(tmp_path / "tracker.txt", "10\n")
    assert (tmp_path / "tracker.txt").read_text() == "10\n" and not (tmp_path / "tracker.txt.tmp").exists()
    assert journal == [("fsync", (tmp_path / "tracker.txt.tmp").resolve()),
                       ("replace", tmp_path / "tracker.txt.tmp", tmp_path / "tracker.txt"),
                       ("fsync", tmp_path.resolve())]


def test_sync_tree_syncs_every_file_and_each_directory_after_its_contents(tmp_path, journal):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (tmp_path / name).write_text(name)
    durable.sync_tree(tmp_path)
    synced = [call[1] for call in journal]
    root = tmp_path.resolve()
    assert sorted(synced) == sorted([root / "x", root / "a" / "y", root / "a" / "b" / "z", root, root / "a",
                                     root / "a" / "b"])
    for directory in (root / "a" / "b", root / "a", root):
        contents = [path for path in synced if path.parent == directory]
        assert all(synced.index(path) < synced.index(directory) for path in contents), directory


def test_a_dataset_is_synced_before_it_is_published(tmp_path, journal, topics_dataset):
    import numpy as np

    from headless_megatron.data.indexed import AtomicDatasetWriter, DatasetPaths
    from headless_megatron.data.sidecar import DatasetInfo
    from headless_megatron.data.tokenizer import tokenizer_for_dataset

    tokenizer = tokenizer_for_dataset(topics_dataset)
    journal.clear()
    paths = DatasetPaths(tmp_path / "out")
    info = DatasetInfo(documents=1, tokens=3, dtype="uint16", text_key="text", tokenizer={}, source={}, command=None)
    with AtomicDatasetWriter(paths, np.uint16) as writer:
        writer.add_documents(np.array([5, 6, 0], dtype=np.uint16), np.array([3]))
        scratch = writer._scratch
        writer.publish(tokenizer, info)
    for final in (paths.bin, paths.idx, paths.sidecar, paths.tokenizer):
        assert_published_durably(journal, scratch / final.name, final)


def test_an_export_directory_is_synced_before_it_is_published(tmp_path, journal):
    from headless_megatron.convert.atomic import atomic_directory

    with atomic_directory(tmp_path / "export") as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
        (staging / "config.json").write_text("{}")
    assert_published_durably(journal, staging, tmp_path / "export")


def test_a_checkpoint_and_its_tracker_are_synced_before_they_are_published(tmp_path, journal):
    from headless_megatron.training.run_directory import TRACKER_FILE, iteration_dir, publish, staging_dir

    staging = staging_dir(tmp_path, 10)
    staging.mkdir()
    (staging / "common.pt").write_bytes(b"state")
    (staging / "__0_0.distcp").write_bytes(b"shard")
    publish(tmp_path, 10)
    assert_published_durably(journal, staging, iteration_dir(tmp_path, 10))
    assert_published_durably(journal, tmp_path / f"{TRACKER_FILE}.tmp", tmp_path / TRACKER_FILE)
    tracker_written = journal.index(("replace", tmp_path / f"{TRACKER_FILE}.tmp", tmp_path / TRACKER_FILE))
    checkpoint_published = journal.index(("replace", staging.absolute(), iteration_dir(tmp_path, 10).absolute()))
    assert checkpoint_published < tracker_written


def test_saving_a_published_iteration_again_moves_the_old_one_aside_until_the_new_one_is_in(tmp_path, journal):
    from headless_megatron.training.run_directory import iteration_dir, publish, replaced_dir, staging_dir

    for content in (b"first", b"second"):
        staging_dir(tmp_path, 10).mkdir()
        (staging_dir(tmp_path, 10) / "common.pt").write_bytes(content)
        publish(tmp_path, 10)
    assert (iteration_dir(tmp_path, 10) / "common.pt").read_bytes() == b"second"
    assert not replaced_dir(tmp_path, 10).exists()
    renames = [call[1:] for call in journal if call[0] == "replace" and "iter_" in call[1].name]
    final, aside, staging = (path.absolute() for path in (iteration_dir(tmp_path, 10), replaced_dir(tmp_path, 10),
                                                          staging_dir(tmp_path, 10)))
    assert renames == [(staging, final), (final, aside), (staging, final)]
