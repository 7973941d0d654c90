"""One error path: every subcommand answers a bad flag and a bad file with one line on stderr,
``headless-megatron <command>[ <target>]: error: <message>``, and exit status 2; under
``--nproc-per-node 2`` the line is printed once, by the launcher or the first failing rank, without
torchrun's traceback."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from headless_megatron.cli import SUBCOMMANDS, main, validate_launch

TARGETS = r"( (lm|glue|loss|train|preprocess|attention|convert))?"


def _bad_flag(tmp_path) -> dict[str, list[str]]:
    return {
        "env": ["env", "--bogus"],
        "check": ["check", "--tensor-model-parallel-size", "two"],
        "pretrain": ["pretrain", "--config", "configs/gpt_headless_tiny.yaml", "--hiden-size", "8"],
        "finetune": ["finetune", "--config", "configs/gpt_headless_tiny.yaml", "--mock-data", "--vocab-size", "512"],
        "preprocess": ["preprocess", "--input", "builtin:python-topics", "--output-prefix", str(tmp_path / "p"),
                       "--workers", "0"],
        "bench": ["bench", "train", "--config", "configs/gpt_headless_tiny.yaml", "--bogus"],
        "generate": ["generate", "--model", str(tmp_path), "--prompt", "x", "--max-new-tokens", "many"],
        "export-hf": ["export-hf", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o"), "--mode", "x"],
        "import-hf": ["import-hf", "--model", str(tmp_path), "--output", str(tmp_path / "o"),
                      "--tensor-model-parallel-size", "0"],
        "eval": ["eval", "lm", "--model", str(tmp_path), "--output", str(tmp_path / "o"), "--limit", "-1"],
        "report": ["report", str(tmp_path), "--bogus"],
    }


def _bad_file(tmp_path) -> dict[str, list[str]]:
    missing = str(tmp_path / "missing")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)))
    return {
        "pretrain": ["pretrain", "--config", str(garbage)],
        "finetune": ["finetune", "--config", missing + ".yaml"],
        "preprocess": ["preprocess", "--input", missing + ".jsonl", "--tokenizer", "gpt2",
                       "--output-prefix", str(tmp_path / "p")],
        "bench": ["bench", "train", "--config", missing + ".yaml"],
        "generate": ["generate", "--model", missing, "--prompt", "x"],
        "export-hf": ["export-hf", "--checkpoint", missing, "--output", str(tmp_path / "o")],
        "import-hf": ["import-hf", "--model", str(garbage), "--output", str(tmp_path / "o")],
        "eval": ["eval", "glue", "--model", missing, "--output", str(tmp_path / "o")],
        "report": ["report", missing, "--output", str(tmp_path / "o")],
    }


# Commands that read no file of the user's: env reports, check trains on synthetic data.
NO_FILE_INPUT = {"env", "check"}


def _one_line_error(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_status:  # argparse's usage errors
        code = exit_status.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and re.match(rf"headless-megatron {re.escape(argv[0])}{TARGETS}: error: \S", lines[0]), err
    return lines[0]


def test_every_subcommand_is_covered(tmp_path):
    assert set(_bad_flag(tmp_path)) == set(SUBCOMMANDS)
    assert set(_bad_file(tmp_path)) | NO_FILE_INPUT == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_a_bad_flag_is_one_line_and_exit_2(command, tmp_path, capsys):
    line = _one_line_error(_bad_flag(tmp_path)[command], capsys)
    expected = {
        "pretrain": "--hiden-size: unknown flag (did you mean --hidden-size?)",
        "finetune": "pretrained: finetune starts from a checkpoint: give --pretrained DIR",
        "preprocess": "argument --workers: expected a positive integer, got '0'",
        "bench": "unrecognized arguments: --bogus",
    }
    assert expected.get(command, "") in line


@pytest.mark.parametrize("command", sorted(set(SUBCOMMANDS) - NO_FILE_INPUT))
def test_a_bad_file_is_one_line_and_exit_2(command, tmp_path, capsys):
    argv = _bad_file(tmp_path)[command]
    line = _one_line_error(argv, capsys)
    assert str(tmp_path) in line, line  # names the file


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, capsys):
    from headless_megatron.commands import env

    def broken(_args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(env, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["env"])


def _launch(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headless_megatron", *argv], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("flags, message", [
    (["--hiden-size", "8"], "--hiden-size: unknown flag (did you mean --hidden-size?)"),
    # Known to be wrong only for this launch's world size: validated by the launcher for 2 ranks.
    (["--tensor-model-parallel-size", "3"], "not divisible by tensor_model_parallel_size 3"),
    # A missing dataset: found by the launcher's data check too.
    (["--data-path", "/nonexistent/corpus_text_document"], "/nonexistent/corpus_text_document"),
])
def test_a_bad_config_under_nproc_per_node_is_one_line_printed_once(flags, message):
    done = _launch("pretrain", "--nproc-per-node", "2", "--config", "configs/gpt_headless_tiny.yaml", *flags)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("headless-megatron pretrain: error: ") and message in lines[0], \
        done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr and done.stdout == ""


TINY = ["--config", "configs/gpt_headless_tiny.yaml", "--vocab-size", "512"]


@pytest.mark.parametrize("argv, world_size, message", [
    (["pretrain", *TINY, "--mock-data", "--tensor-model-parallel-size", "2"], 4, None),
    (["pretrain", *TINY, "--mock-data", "--tensor-model-parallel-size", "4"], 2,
     "headless-megatron pretrain: error: tensor_model_parallel_size: the world size 2 is not divisible by"),
    (["finetune", *TINY, "--mock-data"], 2, "headless-megatron finetune: error: pretrained: "),
    (["pretrain", *TINY, "--hiden-size", "8"], 1, "headless-megatron pretrain: error: --hiden-size: unknown flag"),
    (["pretrain", *TINY, "--data-path", "/nonexistent/corpus_text_document"], 1, "/nonexistent/corpus_text_document"),
    (["train", *TINY], 1, "headless-megatron: error: 'train': not a command; expected one of env, check, pretrain"),
])
def test_validate_launch_checks_a_command_line_for_a_world_size_before_any_rank(argv, world_size, message, capsys):
    # What examples/slurm/common.sh runs on the first node before srun starts the job's ranks.
    code = validate_launch(argv, world_size)
    err = capsys.readouterr().err
    if message is None:
        assert (code, err) == (0, "")
    else:
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
