"""The loss benchmark: shape parsing, id distributions and the printed table (tiny shapes)."""

import pytest
import torch

from headless_megatron.benchmarks.loss import Shape, target_ids
from headless_megatron.commands.bench import main_for_tool


def test_shape_parsing_and_errors():
    assert Shape.parse("encoder:1229x768x50304@8192") == Shape("encoder", 1229, 768, 50304, 8192)
    assert Shape.parse("d:16x8x32").tokens == 16
    with pytest.raises(ValueError, match="expected NAME:KxHxV"):
        Shape.parse("decoder:16376x512")
    with pytest.raises(ValueError, match="need 0 < K <= TOKENS"):
        Shape.parse("e:100x8x32@50")


def test_zipf_ids_repeat_like_text_and_uniform_ids_do_not():
    zipf = target_ids("zipf", 16376, 50304, seed=0)
    uniform = target_ids("uniform", 16376, 50304, seed=0)
    assert 3800 < torch.unique(zipf).numel() < 4600  # text: about 4200 distinct (the issue)
    assert torch.unique(uniform).numel() > 13000
    assert int(zipf.max()) < 50304


def test_table_reports_both_sides_and_ratios(capsys):
    assert main_for_tool("loss", ["--shape", "tiny:256x32x2048", "--ids", "zipf", "--iters", "1"]) == 0
    header, _, row = capsys.readouterr().out.strip().splitlines()[-3:]
    assert header.split(" | ")[0].strip() == "shape" and "memory ratio" in header
    cells = [c.strip() for c in row.split(" | ")]
    assert cells[:3] == ["tiny 256x32x2048", "zipf", "256"]
    assert cells[7].endswith("x") and float(cells[7][:-1]) > 0
