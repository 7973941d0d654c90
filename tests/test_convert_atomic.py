"""Output directories appear whole or not at all."""

from __future__ import annotations

import os
import stat

import pytest
from file_systems import small_disk

from headless_megatron.convert import ConversionError
from headless_megatron.convert.atomic import atomic_directory, check_apart


def test_the_directory_appears_only_when_the_block_succeeds(tmp_path):
    output = tmp_path / "nested" / "model"
    with atomic_directory(output) as staging:
        (staging / "config.json").write_text("{}")
        assert not output.exists()
    assert (output / "config.json").read_text() == "{}"
    assert [p.name for p in output.parent.iterdir()] == ["model"]


def test_a_failure_leaves_nothing_and_keeps_the_previous_output(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    (output / "old").write_text("kept")
    with pytest.raises(KeyboardInterrupt), \
            atomic_directory(output, overwrite=True, replaceable=lambda directory: None) as staging:
        (staging / "new").write_text("x")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in output.iterdir()] == ["old"]


def test_a_non_empty_output_is_refused_unless_overwritten(tmp_path):
    output = tmp_path / "model"
    output.mkdir()
    with atomic_directory(output) as staging:  # an empty directory is fine
        (staging / "a").write_text("1")
    with pytest.raises(ConversionError, match=r"model: already exists and is not empty \(--overwrite"), \
            atomic_directory(output):
        pytest.fail("the block must not run")
    with pytest.raises(ConversionError, match="replaces only an earlier output of this command, and this "
                       "directory is nothing may be replaced here"), atomic_directory(output, overwrite=True):
        pytest.fail("the block must not run")
    with pytest.raises(ConversionError, match="this directory is not ours; give another --output"), \
            atomic_directory(output, overwrite=True, replaceable=lambda directory: "not ours"):
        pytest.fail("the block must not run")
    with atomic_directory(output, overwrite=True, replaceable=lambda directory: None) as staging:
        (staging / "b").write_text("2")
    assert [p.name for p in output.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConversionError, match="exists and is not a directory"), \
            atomic_directory(tmp_path / "file", overwrite=True):
        pass


def test_published_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "model") as staging:
            private = staging / "weights"
            private.write_text("x")
            private.chmod(0o600)  # what safetensors leaves
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "model" / "weights").stat().st_mode) == 0o644


def test_an_output_is_kept_apart_from_what_the_command_reads(tmp_path):
    run = tmp_path / "runs" / "C"
    (run / "iter_0000010").mkdir(parents=True)
    check_apart(tmp_path / "runs" / "hf", [run], "checkpoint")  # a sibling is fine
    for output, relation in [(run, "is"), (run / "hf", "is inside"), (tmp_path / "runs", "contains"),
                             (run / ".." / "C", "is")]:
        with pytest.raises(ConversionError, match=f"output {output}: {relation} the checkpoint {run}"):
            check_apart(output, [run], "checkpoint")
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(ConversionError, match="is the checkpoint"):
        check_apart(tmp_path / "link", [run], "checkpoint")


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        output = disk / "model"
        with pytest.raises(ConversionError) as refused, atomic_directory(output) as staging:
            (staging / "config.json").write_text("{}")
            (staging / "weights.bin").write_bytes(bytes(2 << 20))
        assert str(refused.value) == f"output {output}: cannot write it: No space left on device"
        assert list(disk.iterdir()) == []
