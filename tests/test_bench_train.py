"""bench train: configs side by side through the real loop, with ratios (tiny, CPU)."""

import json

from headless_megatron.commands.bench import main_for_tool


def _table(out: str, configs: int):
    lines = out.strip().splitlines()
    header, rows = lines[-2 - configs], lines[-configs:]
    return [cell.strip() for cell in header.split("|")], [[cell.strip() for cell in row.split(" | ")] for row in rows]


def test_headless_and_vanilla_tiny_side_by_side(capsys, tmp_path):
    results = tmp_path / "results.jsonl"
    assert main_for_tool("train", [
        "--config", "configs/gpt_headless_tiny.yaml", "--config", "configs/gpt_headless_tiny.yaml",
        "--iters", "2", "--warmup", "1", "--results", str(results), "--group", "tiny",
        "--", "--mock-data", "--vocab-size", "512", "--num-layers", "2",
    ]) == 0
    header, (first, _) = _table(capsys.readouterr().out, 2)
    assert header[:5] == ["config", "layout", "tokens/s", "x", "GFLOP/iter"]
    assert first[0] == "gpt_headless_tiny" and first[1] == "TP1 PP1 DP1 mbs4 gbs16 s64 fp32" and first[3] == "1.00"
    assert float(first[2].replace(",", "")) > 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["group"] for r in records] == ["tiny", "tiny"] and records[0]["iteration_flops"] > 0


def test_masked_only_vanilla_bert_counts_fewer_flops_than_dense(capsys):
    assert main_for_tool("train", [
        "--config", "configs/bert_headless_tiny.yaml --loss ce",
        "--config", "configs/bert_headless_tiny.yaml --loss ce --mlm-project-masked-only",
        "--iters", "1", "--warmup", "1", "--", "--mock-data", "--vocab-size", "4096", "--num-layers", "1",
    ]) == 0
    header, (dense, masked_only) = _table(capsys.readouterr().out, 2)
    flops = header.index("GFLOP/iter")
    assert float(masked_only[flops]) < 0.8 * float(dense[flops])
