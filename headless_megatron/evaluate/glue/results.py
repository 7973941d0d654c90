"""GLUE results: per-task mean and standard deviation over seeds, the average without RTE, and
the ``glue.json``/``glue.md`` files."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from headless_megatron.evaluate import GLUE_RESULTS_FILE, GLUE_TABLE_FILE
from headless_megatron.evaluate.glue.data import TASKS
from headless_megatron.evaluate.glue.metrics import METRIC_NAMES, mean_and_std

EXCLUDED_FROM_AVERAGE = ("rte",)  # the paper leaves RTE out ("high standard deviations")


def summarize(task_runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-task mean and std over seeds, and the average without RTE (per seed, then over seeds)."""
    tasks = {}
    for name, runs in task_runs.items():
        task = TASKS[name]
        mean, std = mean_and_std(run["score"] for run in runs)
        summary = {"metric": task.metric, "score": mean, "std": std}
        for key in ("matched", "mismatched"):
            if key in runs[0]:
                summary[key], summary[f"{key}_std"] = mean_and_std(run[key] for run in runs)
        summary["runs"] = runs
        tasks[name] = summary
    averaged = [name for name in task_runs if name not in EXCLUDED_FROM_AVERAGE]
    average = None
    if averaged:
        seeds = len(task_runs[averaged[0]])
        per_seed = [statistics.fmean(task_runs[name][i]["score"] for name in averaged) for i in range(seeds)]
        mean, std = mean_and_std(per_seed)
        average = {"score": mean, "std": std, "per_seed": per_seed, "tasks": averaged,
                   "excluded": [name for name in task_runs if name in EXCLUDED_FROM_AVERAGE]}
    return {"tasks": tasks, "average": average}


def markdown_table(results: dict[str, Any]) -> str:
    """Tasks as rows (score ± std over seeds, in percent), then the average without RTE."""
    lines = [f"# GLUE: {results['model']}", "",
             f"Best validation epoch per run, mean ± std over seeds {results['seeds']}; scores in percent.", "",
             "| task | metric | score | ± std |", "| --- | --- | ---: | ---: |"]
    for name, task in results["tasks"].items():
        lines.append(f"| {name} | {METRIC_NAMES[task['metric']]} | {task['score']:.2f} | {task['std']:.2f} |")
        for key, label in (("matched", "mnli-m"), ("mismatched", "mnli-mm")):
            if key in task:
                lines.append(f"| {label} | accuracy | {task[key]:.2f} | {task[f'{key}_std']:.2f} |")
    average = results.get("average")
    if average:
        lines.append(f"| **average** (without {', '.join(EXCLUDED_FROM_AVERAGE).upper()}) | | "
                     f"**{average['score']:.2f}** | {average['std']:.2f} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], output: str | os.PathLike) -> tuple[Path, Path]:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    json_path, table_path = output / GLUE_RESULTS_FILE, output / GLUE_TABLE_FILE
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    table_path.write_text(markdown_table(results))
    return json_path, table_path
