"""The export-hf and import-hf commands and tools/convert_checkpoint.py: flags, usage errors, Hub upload.

The conversions themselves run end to end in test_convert_export.py and test_convert_importer.py."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import ClassVar

import pytest

from headless_megatron.cli import build_parser, main
from headless_megatron.convert.export import ExportResult


def error_of(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    return error


def test_both_commands_are_listed(capsys):
    build_parser().print_help()
    listing = capsys.readouterr().out
    assert "export-hf" in listing and "import-hf" in listing


def test_usage_errors(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_status:
        main(["export-hf", "--checkpoint", "runs/x"])
    assert exit_status.value.code == 2 and "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import-hf", "--model", "m", "--output", "o", "--tensor-model-parallel-size", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    assert "--private applies to --push-to-hub" in error_of(
        ["export-hf", "--checkpoint", "runs/x", "--output", "o", "--private"], capsys)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "drop --nproc-per-node" in error_of(["export-hf", "--checkpoint", "c", "--output", "o"], capsys)
    assert "starts its own ranks" in error_of(["import-hf", "--model", "m", "--output", "o"], capsys)


@pytest.mark.parametrize("size", ["infGB", "nanGB", "-1GB", "0GB", "0", "1 parsec"])
def test_a_max_shard_size_that_is_not_a_positive_size_is_refused_before_the_checkpoint_is_read(size, tmp_path,
                                                                                                capsys):
    output = tmp_path / "hf"
    argv = ["export-hf", "--checkpoint", str(tmp_path / "no_run"), "--output", str(output), f"--max-shard-size={size}"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"headless-megatron export-hf: error: --max-shard-size {size}: expected a size "
                                       "above 0 like 5GB or 500MB, or a number of bytes\n")
    assert list(tmp_path.iterdir()) == []


class FakeHub:
    """Stands in for huggingface_hub.HfApi and records what would be uploaded."""

    calls: ClassVar[list[tuple]] = []
    fail: ClassVar[bool] = False

    def create_repo(self, repo_id, private, exist_ok):
        FakeHub.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, commit_message):
        if FakeHub.fail:
            raise ConnectionError("Hub unreachable\nsecond line")
        FakeHub.calls.append(("upload_folder", folder_path, repo_id))
        return f"https://huggingface.co/{repo_id}/commit/abc"


@pytest.fixture
def exported(monkeypatch, tmp_path):
    """export-hf without a checkpoint: export_hf pretends to have written tmp_path/hf."""
    output = tmp_path / "hf"
    result = ExportResult(output, "LlamaForCausalLM", "add_head", 3, 1000, 500)
    monkeypatch.setattr("headless_megatron.convert.export.export_hf", lambda *args, **kwargs: result)
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub)
    FakeHub.calls, FakeHub.fail = [], False
    return output


def test_push_to_hub_uploads_the_exported_directory(exported, capsys):
    argv = ["export-hf", "--checkpoint", "runs/x", "--output", str(exported), "--push-to-hub", "me/tiny", "--private"]
    assert main(argv) == 0
    assert FakeHub.calls == [("create_repo", "me/tiny", True, True), ("upload_folder", str(exported), "me/tiny")]
    assert "uploaded to https://huggingface.co/me/tiny/commit/abc" in capsys.readouterr().out


def test_a_failed_upload_keeps_the_export_and_says_why(exported, capsys):
    FakeHub.fail = True
    assert main(["export-hf", "--checkpoint", "runs/x", "--output", str(exported), "--push-to-hub", "me/tiny"]) == 1
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    assert captured.err == "headless-megatron export-hf: error: uploading to me/tiny failed: Hub unreachable\n"


@pytest.mark.parametrize("argv, command", [
    (["--checkpoint", "c", "--output", "o"], ["export-hf", "--checkpoint", "c", "--output", "o"]),
    (["import-hf", "--model", "m", "--output", "o"], ["import-hf", "--model", "m", "--output", "o"]),
])
def test_the_tools_script_runs_export_by_default_or_the_direction_named_first(argv, command, monkeypatch):
    received = []
    monkeypatch.setattr("headless_megatron.cli.main", lambda args: received.append(args) or 0)
    monkeypatch.setattr("sys.argv", ["convert_checkpoint.py", *argv])
    script = Path(__file__).parents[1] / "tools" / "convert_checkpoint.py"
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_status.value.code == 0 and received == [command]


def test_export_help_states_the_shard_size_default_and_what_overwrite_replaces(capsys):
    with pytest.raises(SystemExit):
        main(["export-hf", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max-shard-size SIZE" in help_text and "(default: 50GB, the installed transformers' default)" in help_text
    assert "replace --output if it is an earlier export" in help_text
