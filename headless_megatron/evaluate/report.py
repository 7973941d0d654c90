"""Plots and a summary table of training runs, side by side (for example headless vs vanilla).

    headless-megatron report runs/gpt_headless_70m runs/gpt_vanilla_70m --output reports/70m

A run directory is what ``save`` (or ``log_dir``) names: it holds ``metrics.jsonl`` (one JSON object
per logged iteration, see ``training/metrics.py``), usually checkpoints, and the results that
``headless-megatron eval lm|glue --output RUN_DIR`` wrote there (``eval_lm.json``, ``glue.json``).

Axes:

- tokens: iteration x tokens per iteration (``global_batch_size`` x ``seq_length``), read from the
  config saved in the run's latest checkpoint (``iter_NNNNNNN/common.pt``) or, without a
  checkpoint, derived from the log itself (``tokens_per_sec`` x ``iteration_seconds`` of a record);
- wall-clock: training time only (no validation or checkpointing), accumulated from
  ``iteration_seconds``: each logged iteration's time stands for every iteration since the
  previous record (the log keeps one iteration per ``log_interval``);
- a resumed run appends to the same log; a record whose iteration is not past the previous one
  starts a new segment, and the records it re-does are replaced by the new ones.

Outputs in ``--output``: ``loss_vs_tokens.png``, ``loss_vs_time.png`` (training loss solid,
validation loss dashed with markers, one colour per run), ``throughput.png`` (tokens/s against
tokens), ``report.md`` (final losses, tokens, time, mean throughput and the evaluation results
found) and ``report.json`` (the same numbers).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headless_megatron.evaluate import (
    GLUE_RESULTS_FILE,
    LM_RESULTS_FILE,
    EvaluationError,
)

METRICS_FILE = "metrics.jsonl"
PLOTS = ("loss_vs_tokens.png", "loss_vs_time.png", "throughput.png")


@dataclasses.dataclass
class Run:
    """One run's curves. ``train`` and ``validation`` are lists of records sorted by iteration;
    each train record gets ``tokens`` and ``seconds`` (cumulative training time), each validation
    record ``tokens`` and ``seconds`` (interpolated)."""

    label: str
    directory: Path
    tokens_per_iteration: int | None
    tokens_source: str
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    evaluations: dict[str, Any]


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Train and validation records of a ``metrics.jsonl``, later records replacing re-done ones."""
    train: dict[int, dict] = {}
    validation: dict[int, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise EvaluationError(f"{path}: line {number} is not JSON") from None
        if not isinstance(record, dict) or "iteration" not in record:
            raise EvaluationError(f"{path}: line {number} has no iteration")
        iteration = int(record["iteration"])
        target = validation if "val_loss" in record else train if "loss" in record else None
        if target is None:
            continue
        if target is train:
            # A resumed run re-does iterations after its last checkpoint: keep the new segment.
            for stale in [i for i in train if i >= iteration]:
                del train[stale]
        target[iteration] = record
    return [train[i] for i in sorted(train)], [validation[i] for i in sorted(validation)]


def tokens_per_iteration_from_checkpoint(directory: Path) -> int | None:
    """``global_batch_size`` x ``seq_length`` from the config in the latest checkpoint's ``common.pt``."""
    import torch

    candidates = sorted(directory.glob("iter_*/common.pt"))
    latest = directory / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        text = latest.read_text().strip()
        if text.isdigit():
            preferred = directory / f"iter_{int(text):07d}" / "common.pt"
            if preferred.is_file():
                candidates.append(preferred)
    for path in reversed(candidates):
        try:
            config = torch.load(path, map_location="cpu", weights_only=True)["config"]
            return int(config["global_batch_size"]) * int(config["seq_length"])
        except Exception:  # noqa: BLE001, S112 - an unreadable or foreign checkpoint: try the next, then the log
            continue
    return None


def tokens_per_iteration_from_log(train: Sequence[dict]) -> int | None:
    """tokens_per_sec = tokens per iteration / iteration_seconds, so their product gives it back."""
    for record in train:
        rate, seconds = record.get("tokens_per_sec"), record.get("iteration_seconds")
        if isinstance(rate, (int, float)) and isinstance(seconds, (int, float)) and rate > 0 and seconds > 0:
            return round(rate * seconds)
    return None


def load_run(directory: str | os.PathLike, label: str | None = None) -> Run:
    directory = Path(directory)
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: no such run directory")
    path = directory / METRICS_FILE
    if not path.is_file():
        raise EvaluationError(f"{directory}: no {METRICS_FILE} (is it a run's save or log_dir?)")
    train, validation = read_metrics(path)
    if not train and not validation:
        raise EvaluationError(f"{path}: no training or validation records")
    per_iteration, source = tokens_per_iteration_from_checkpoint(directory), "checkpoint config"
    if per_iteration is None:
        per_iteration, source = tokens_per_iteration_from_log(train), "metrics.jsonl"
    elapsed, previous = 0.0, 0
    for record in train:
        seconds = record.get("iteration_seconds")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            elapsed += (record["iteration"] - previous) * seconds
        previous = record["iteration"]
        record["seconds"] = elapsed
        record["tokens"] = record["iteration"] * per_iteration if per_iteration else None
    for record in validation:
        record["tokens"] = record["iteration"] * per_iteration if per_iteration else None
        record["seconds"] = _interpolate(record["iteration"], train)
    return Run(label or directory.resolve().name, directory, per_iteration, source, train, validation,
               find_evaluations(directory))


def _interpolate(iteration: int, train: Sequence[dict]) -> float | None:
    import numpy as np

    if not train:
        return None
    xs = [0] + [record["iteration"] for record in train]
    ys = [0.0] + [record["seconds"] for record in train]
    return float(np.interp(iteration, xs, ys))


def find_evaluations(directory: Path) -> dict[str, Any]:
    """The results of ``eval lm`` and ``eval glue`` written into the run directory, if any."""
    found = {}
    for key, name in (("lm", LM_RESULTS_FILE), ("glue", GLUE_RESULTS_FILE)):
        path = directory / name
        if path.is_file():
            try:
                found[key] = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise EvaluationError(f"{path}: not JSON") from None
    return found


def _lm_scores(results: dict[str, Any]) -> dict[str, float]:
    """``task metric`` -> value: each task's accuracy (else its first metric), in percent."""
    scores = {}
    for task, metrics in results.get("results", {}).items():
        values = {key.split(",")[0]: value for key, value in metrics.items()
                  if "," in key and "_stderr," not in key and isinstance(value, (int, float))}
        if not values:
            continue
        metric = "acc" if "acc" in values else next(iter(values))
        value = values[metric]
        scores[f"{task} {metric}"] = 100 * value if metric.startswith(("acc", "pct")) else value
    return scores


def _glue_scores(results: dict[str, Any]) -> dict[str, float]:
    scores = {f"glue {task}": summary["score"] for task, summary in results.get("tasks", {}).items()}
    if results.get("average"):
        scores["glue avg"] = results["average"]["score"]
    return scores


def summary(run: Run) -> dict[str, Any]:
    last = run.train[-1] if run.train else {}
    rates = [r["tokens_per_sec"] for r in run.train if isinstance(r.get("tokens_per_sec"), (int, float))]
    steady = rates[1:] or rates  # the first logged iteration includes compilation and warm-up
    iterations = max([r["iteration"] for r in run.train + run.validation])
    evaluations = {}
    if "lm" in run.evaluations:
        evaluations.update(_lm_scores(run.evaluations["lm"]))
    if "glue" in run.evaluations:
        evaluations.update(_glue_scores(run.evaluations["glue"]))
    return {
        "run": run.label,
        "directory": str(run.directory),
        "iterations": iterations,
        "tokens": iterations * run.tokens_per_iteration if run.tokens_per_iteration else None,
        "tokens_per_iteration": run.tokens_per_iteration,
        "tokens_source": run.tokens_source,
        "train_seconds": last.get("seconds"),
        "final_loss": last.get("loss"),
        "final_val_loss": run.validation[-1]["val_loss"] if run.validation else None,
        "best_val_loss": min(r["val_loss"] for r in run.validation) if run.validation else None,
        "tokens_per_sec": statistics.fmean(steady) if steady else None,
        "evaluations": evaluations,
    }


def plot(runs: Sequence[Run], output: Path) -> dict[str, Path]:
    """Write the three figures; returns ``{name: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    longest = max([r["seconds"] for run in runs for r in run.train] or [0.0])
    unit, per_unit = ("hours", 3600) if longest >= 7200 else ("minutes", 60) if longest >= 120 else ("seconds", 1)
    paths = {}
    for name, x_key, y_keys, x_label, y_label in (
        ("loss_vs_tokens.png", "tokens", ("loss", "val_loss"), "tokens", "loss"),
        ("loss_vs_time.png", "seconds", ("loss", "val_loss"), f"training time ({unit})", "loss"),
        ("throughput.png", "tokens", ("tokens_per_sec",), "tokens", "tokens/s"),
    ):
        figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
        for index, run in enumerate(runs):
            color = colors[index % len(colors)]
            for y_key in y_keys:
                records = run.validation if y_key == "val_loss" else run.train
                points = [(r[x_key], r[y_key]) for r in records
                          if r.get(x_key) is not None and isinstance(r.get(y_key), (int, float))]
                if not points:
                    continue
                xs, ys = zip(*points)
                if x_key == "seconds":
                    xs = [x / per_unit for x in xs]
                if y_key == "val_loss":
                    axes.plot(xs, ys, "--o", color=color, markersize=3, label=f"{run.label} (validation)")
                else:
                    axes.plot(xs, ys, "-", color=color, label=run.label if y_key != "loss" else f"{run.label} (train)")
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(f"{y_label} vs {x_label}")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
        figure.tight_layout()
        paths[name] = output / name
        figure.savefig(paths[name])
        plt.close(figure)
    return paths


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def markdown(summaries: Sequence[dict[str, Any]], plots: dict[str, Path]) -> str:
    lines = ["# Training report", "",
             "| run | iterations | tokens | train time | tokens/s | final loss | final val loss | best val loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        rate = "n/a" if s["tokens_per_sec"] is None else f"{s['tokens_per_sec']:,.0f}"
        lines.append(f"| {s['run']} | {_number(s['iterations'])} | {_number(s['tokens'])} | "
                     f"{_duration(s['train_seconds'])} | {rate} | {_number(s['final_loss'])} | "
                     f"{_number(s['final_val_loss'])} | {_number(s['best_val_loss'])} |")
    lines += ["", ("Tokens/s: mean over the logged iterations after the first; train time excludes validation "
                   "and checkpointing.")]
    columns = list(dict.fromkeys(key for s in summaries for key in s["evaluations"]))
    if columns:
        lines += ["", "## Evaluations", "",
                  "LM Evaluation Harness accuracies and GLUE scores in percent (other metrics as reported).", "",
                  "| run | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
        for s in summaries:
            values = [_number(s["evaluations"].get(c), 2) for c in columns]
            lines.append(f"| {s['run']} | " + " | ".join(values) + " |")
    lines += ["", "## Plots", ""] + [f"![{name}]({path.name})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def make_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike,
                labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Read the runs, write the plots, ``report.md`` and ``report.json``; returns the summaries and paths."""
    if labels is not None and len(labels) != len(run_dirs):
        raise EvaluationError(f"--labels: {len(labels)} labels for {len(run_dirs)} runs")
    runs = [load_run(directory, labels[i] if labels else None) for i, directory in enumerate(run_dirs)]
    names = [run.label for run in runs]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        # Two runs called e.g. "run" in different parents: tell them apart by their parent's name.
        for run in runs:
            if run.label in duplicates and not labels:
                run.label = f"{run.directory.resolve().parent.name}/{run.label}"
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    plots = plot(runs, output)
    summaries = [summary(run) for run in runs]
    (output / "report.md").write_text(markdown(summaries, plots))
    (output / "report.json").write_text(json.dumps({"runs": summaries}, indent=2) + "\n")
    return {"runs": summaries, "plots": plots, "markdown": output / "report.md", "json": output / "report.json"}
