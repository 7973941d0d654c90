"""bench train: two configs side by side through the real loop, with ratios (tiny, CPU)."""

from headless_megatron.commands.bench import main_for_tool


def test_headless_and_vanilla_tiny_side_by_side(capsys):
    assert main_for_tool("train", [
        "--config", "configs/gpt_headless_tiny.yaml", "--config", "configs/gpt_headless_tiny.yaml",
        "--iters", "2", "--warmup", "1", "--", "--mock-data", "--vocab-size", "512", "--num-layers", "2",
    ]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = lines[-4], lines[-2:]
    assert [cell.strip() for cell in header.split("|")][:4] == ["config", "layout", "tokens/s", "x"]
    first = [cell.strip() for cell in rows[0].split(" | ")]
    assert first[0] == "gpt_headless_tiny" and first[1] == "TP1 PP1 DP1 mbs4 gbs16" and first[3] == "1.00"
    assert float(first[2].replace(",", "")) > 0
