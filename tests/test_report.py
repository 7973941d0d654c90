"""``headless-megatron report``: plots and summary of runs from their ``metrics.jsonl`` (no training)."""

from __future__ import annotations

import json

import pytest

from headless_megatron.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")  # matplotlib's first three cycle colours: runs 1, 2, (3)


def write_run(directory, *, loss0: float, seconds: float, tokens_per_iteration: int, resumed: bool = False):
    directory.mkdir(parents=True)
    records = []
    for iteration in range(10, 101, 10):
        records.append({
            "iteration": iteration, "loss": loss0 / iteration ** 0.2, "lr": 1e-3, "grad_norm": 1.0,
            "tokens_per_sec": tokens_per_iteration / seconds, "tflops_per_device": 0.1,
            "iteration_seconds": seconds, "consumed_samples": iteration * 8, "skipped_iterations": 0,
        })
        if iteration % 50 == 0:
            records.append({"iteration": iteration, "val_loss": loss0 / iteration ** 0.2 + 0.1})
    if resumed:  # killed after iteration 70, resumed from the checkpoint at 60: 70 is logged again
        records = [r for r in records if r["iteration"] <= 70] + [r for r in records if r["iteration"] >= 70]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def color_fraction(image, color: str) -> float:
    import numpy as np

    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return float((np.abs(image[..., :3] - rgb).max(axis=-1) < 0.02).mean())


def test_report_of_two_runs(tmp_path, capsys):
    import matplotlib.image
    import torch

    headless, vanilla = tmp_path / "runs" / "headless", tmp_path / "runs" / "vanilla"
    write_run(headless, loss0=8.0, seconds=0.5, tokens_per_iteration=4096, resumed=True)
    write_run(vanilla, loss0=9.0, seconds=1.0, tokens_per_iteration=4096)
    # The headless run has a checkpoint whose config gives the tokens per iteration (2 x 2048).
    (headless / "iter_0000100").mkdir()
    torch.save({"iteration": 100, "config": {"global_batch_size": 2, "seq_length": 2048}},
               headless / "iter_0000100" / "common.pt")
    (headless / "latest_checkpointed_iteration.txt").write_text("100")
    (headless / "eval_lm.json").write_text(json.dumps(
        {"results": {"lambada_openai": {"alias": "lambada_openai", "perplexity,none": 153.5, "acc,none": 0.222,
                                        "acc_stderr,none": 0.005}}}))
    (vanilla / "glue.json").write_text(json.dumps(
        {"tasks": {"cola": {"metric": "mcc", "score": 54.66, "std": 0.5}}, "average": {"score": 82.43, "std": 0.12}}))

    output = tmp_path / "report"
    assert main(["report", str(headless), str(vanilla), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "| headless |" in printed and "| vanilla |" in printed

    for name in ("loss_vs_tokens.png", "loss_vs_time.png", "throughput.png"):
        path = output / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100
        # One curve per run: each run's colour is drawn, and no third one.
        assert color_fraction(image, COLORS[0]) > 1e-4 and color_fraction(image, COLORS[1]) > 1e-4, name
        assert color_fraction(image, COLORS[2]) == 0.0, name

    summary = {run["run"]: run for run in json.loads((output / "report.json").read_text())["runs"]}
    h, v = summary["headless"], summary["vanilla"]
    assert h["tokens_source"] == "checkpoint config" and v["tokens_source"] == "metrics.jsonl"
    assert h["tokens"] == v["tokens"] == 100 * 4096
    assert h["iterations"] == 100 and h["final_loss"] == pytest.approx(8.0 / 100 ** 0.2)
    assert h["final_val_loss"] == pytest.approx(8.0 / 100 ** 0.2 + 0.1)
    assert h["train_seconds"] == pytest.approx(100 * 0.5) and v["train_seconds"] == pytest.approx(100 * 1.0)
    assert h["tokens_per_sec"] == pytest.approx(8192) and v["tokens_per_sec"] == pytest.approx(4096)
    assert h["evaluations"] == {"lambada_openai acc": pytest.approx(22.2)}
    assert v["evaluations"] == {"glue cola": 54.66, "glue avg": 82.43}
    table = (output / "report.md").read_text()
    assert "| run | lambada_openai acc | glue cola | glue avg |" in table and "![loss_vs_tokens.png]" in table


def test_resumed_log_and_errors(tmp_path, capsys):
    from headless_megatron.evaluate.report import load_run

    write_run(tmp_path / "run", loss0=8.0, seconds=2.0, tokens_per_iteration=1000, resumed=True)
    run = load_run(tmp_path / "run")
    assert [r["iteration"] for r in run.train] == list(range(10, 101, 10))
    assert [r["iteration"] for r in run.validation] == [50, 100]
    assert run.validation[0]["seconds"] == pytest.approx(100.0) and run.validation[0]["tokens"] == 50_000

    def error_of(argv) -> str:
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("headless-megatron report: error: "), error
        return error

    (tmp_path / "empty").mkdir()
    assert "no metrics.jsonl" in error_of(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    assert "no such run directory" in error_of(["report", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert "--labels: 1 labels for 2 runs" in error_of(
        ["report", str(tmp_path / "run"), str(tmp_path / "run"), "--labels", "a", "--output", str(tmp_path / "o")])
