"""The headless-megatron command line, including the --nproc-per-node launch through torchrun."""

import subprocess
import sys

import pytest

from headless_megatron import __version__
from headless_megatron.cli import main
from headless_megatron.runtime.launch import split_nproc_flag


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "headless_megatron", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"headless-megatron {__version__}"


def test_env_reports_versions_device_and_backend(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for line in ("megatron-core         0.16.1", "device                cpu", "distributed backend   gloo",
                 "layer spec            local"):
        assert line in out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["pretrian"])
    assert done.value.code == 2 and "invalid choice: 'pretrian'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["check", "--nproc-per-node", "4", "--seed", "1"], (4, ["check", "--seed", "1"])),
    (["--nproc-per-node=2", "check"], (2, ["check"])),
    (["check"], (None, ["check"])),
])
def test_nproc_flag_is_taken_out_of_the_command_line(argv, expected):
    assert split_nproc_flag(argv) == expected


def test_bad_nproc_value_names_the_flag(capsys):
    assert main(["check", "--nproc-per-node", "two"]) == 2
    expected = "headless-megatron: error: --nproc-per-node: expected a positive integer, got 'two'\n"
    assert capsys.readouterr().err == expected


def test_check_trains_on_two_ranks_with_tensor_and_sequence_parallelism():
    done = _cli("check", "--nproc-per-node", "2", "--tensor-model-parallel-size", "2", "--sequence-parallel",
                "--train-iters", "12")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "world 2 = TP 2 x PP 1 x DP 1 + SP, cpu, local spec" in done.stdout
    assert done.stdout.count("check passed") == 1


def test_pretrain_on_two_ranks_prints_where_checkpoint_and_metrics_are(dataset, tmp_path):
    done = _cli("pretrain", "--nproc-per-node", "2", "--config", "configs/gpt_headless_tiny.yaml",
                "--data-path", dataset, "--train-iters", "4", "--lr-warmup-iters", "1", "--eval-iters", "0",
                "--num-workers", "0", "--save", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained 4 iterations" in done.stdout
    assert f"checkpoint: {tmp_path / 'run' / 'iter_0000004'}" in done.stdout
    assert f"metrics: {tmp_path / 'run' / 'metrics.jsonl'}" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--hiden-size", "8"], "--hiden-size: unknown flag (did you mean --hidden-size?)"),
    ([], "data_path"),
])
def test_pretrain_config_errors_are_one_line_with_exit_code_2(args, message):
    done = _cli("pretrain", "--config", "configs/gpt_headless_tiny.yaml", *args)
    assert done.returncode == 2
    (line,) = [text for text in done.stderr.splitlines() if text.startswith("headless-megatron pretrain: error:")]
    assert message in line
