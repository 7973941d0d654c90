"""Bad input to the commands is one line and exit 2, before any slow work: a binary config file,
an empty prompt or a negative token count for ``generate``, a local-looking ``eval lm --model``
that does not exist (no Hub retries)."""

from __future__ import annotations

import time

import pytest

from headless_megatron.cli import main
from headless_megatron.config import ConfigError, parse_config


def test_a_binary_config_file_is_one_line(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=rf"^{binary}: not a YAML text file \(byte 128 is not UTF-8\)$"):
        parse_config(["--config", str(binary)])


@pytest.mark.parametrize("flags, message", [
    (["--prompt", ""], "--prompt: expected some text to continue, got an empty prompt"),
    (["--prompt", "def", "--max-new-tokens", "-3"], "--max-new-tokens -3: expected a positive number of tokens"),
    (["--prompt", "def", "--temperature", "-1"], "--temperature -1.0: expected 0 (greedy) or a positive temperature"),
])
def test_generate_refuses_bad_arguments_in_one_line(flags, message, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["generate", "--model", str(tmp_path), *flags]) == 2
    assert capsys.readouterr().err.splitlines() == [f"headless-megatron generate: error: {message}"]


def test_eval_lm_refuses_a_missing_local_model_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf").mkdir()
    started = time.monotonic()
    assert main(["eval", "lm", "--model", "hf/headless-70m", "--output", str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == "headless-megatron eval: error: --model hf/headless-70m: no such directory"
    )
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()
