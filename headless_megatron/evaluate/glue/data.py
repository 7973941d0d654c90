"""GLUE's tasks and their data: the task table, and the readers of the Hugging Face Hub's
``nyu-mll/glue``, of GLUE's own TSV download and of JSON lines with the Hub's field names.

``--data-dir DIR`` holds one folder per task, named as the task (``cola``) or as in GLUE's own
download (``CoLA``, ``SST-2``, ``STS-B``...), with for each split either GLUE's TSV (``train.tsv``,
``dev.tsv``; MNLI ``dev_matched.tsv`` and ``dev_mismatched.tsv``) or JSON lines with the Hub's field
names (``train.jsonl``, ``validation.jsonl``; MNLI ``validation_matched.jsonl`` and
``validation_mismatched.jsonl``; labels as ids or as names such as ``entailment``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headless_megatron.evaluate import EvaluationError

HUB_DATASET = "nyu-mll/glue"


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str
    text_fields: tuple[str, ...]  # the Hub's field names of the one or two texts
    num_labels: int  # 1: regression
    metric: str  # mcc | spearman | accuracy
    label_names: tuple[str, ...] = ()  # the Hub's label order, for labels given as names
    folder: str = ""  # the task's folder in GLUE's own download
    tsv_columns: tuple[str, ...] = ()  # header names of the texts then the label in GLUE's TSV
    validation_splits: tuple[tuple[str, str], ...] = (("validation", "dev"),)  # (Hub split, TSV file)


NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
TASKS = {
    task.name: task
    for task in (
        # CoLA's TSV has no header: source, label, original label, sentence (columns by position).
        GlueTask("cola", ("sentence",), 2, "mcc", folder="CoLA", tsv_columns=("3", "1")),
        GlueTask("sst2", ("sentence",), 2, "accuracy", folder="SST-2", tsv_columns=("sentence", "label")),
        GlueTask("mrpc", ("sentence1", "sentence2"), 2, "accuracy", folder="MRPC",
                 tsv_columns=("#1 String", "#2 String", "Quality")),
        GlueTask("stsb", ("sentence1", "sentence2"), 1, "spearman", folder="STS-B",
                 tsv_columns=("sentence1", "sentence2", "score")),
        GlueTask("qqp", ("question1", "question2"), 2, "accuracy", folder="QQP",
                 tsv_columns=("question1", "question2", "is_duplicate")),
        GlueTask("mnli", ("premise", "hypothesis"), 3, "accuracy", NLI3, folder="MNLI",
                 tsv_columns=("sentence1", "sentence2", "gold_label"),
                 validation_splits=(("validation_matched", "dev_matched"),
                                    ("validation_mismatched", "dev_mismatched"))),
        GlueTask("qnli", ("question", "sentence"), 2, "accuracy", NLI2, folder="QNLI",
                 tsv_columns=("question", "sentence", "label")),
        GlueTask("rte", ("sentence1", "sentence2"), 2, "accuracy", NLI2, folder="RTE",
                 tsv_columns=("sentence1", "sentence2", "label")),
    )
}
PAPER_TASKS = ("mrpc", "cola", "stsb", "sst2", "qnli", "qqp", "mnli")  # Table 1's columns (no RTE)


@dataclasses.dataclass
class Examples:
    """One split: the texts (one list per text field) and the labels (ints, or floats for STS-B)."""

    texts: list[list[str]]
    labels: list[float | int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Examples:
        if count is None:
            return self
        return Examples([column[:count] for column in self.texts], self.labels[:count])


def parse_tasks(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    if not names:
        raise EvaluationError("--tasks: expected a comma-separated list of GLUE tasks")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise EvaluationError(
            f"--tasks: unknown GLUE task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(expected some of {', '.join(TASKS)})"
        )
    return names



def load_task_data(task: GlueTask, data_dir: str | os.PathLike | None = None) -> dict[str, Examples]:
    """``{"train": ..., <validation split>: ...}`` from ``data_dir`` or, without it, the Hub."""
    splits = [("train", "train")] + list(task.validation_splits)
    if data_dir is None:
        return _load_from_hub(task, [hub for hub, _ in splits])
    folder = _task_folder(task, Path(data_dir))
    return {hub: _read_split(task, folder, hub, tsv) for hub, tsv in splits}


def _task_folder(task: GlueTask, data_dir: Path) -> Path:
    if not data_dir.is_dir():
        raise EvaluationError(f"--data-dir {data_dir}: no such directory")
    for name in (task.name, task.folder, task.folder.lower()):
        if (data_dir / name).is_dir():
            return data_dir / name
    raise EvaluationError(f"--data-dir {data_dir}: no folder {task.name}/ or {task.folder}/ for task {task.name}")


def _read_split(task: GlueTask, folder: Path, hub_split: str, tsv_split: str) -> Examples:
    for path in (folder / f"{hub_split}.jsonl", folder / f"{hub_split}.json"):
        if path.is_file():
            return _read_json(task, path)
    if (folder / f"{tsv_split}.tsv").is_file():
        return _read_tsv(task, folder / f"{tsv_split}.tsv")
    raise EvaluationError(
        f"{folder}: no {hub_split}.jsonl, {hub_split}.json or {tsv_split}.tsv for task {task.name}"
    )


def _read_json(task: GlueTask, path: Path) -> Examples:
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path}: not JSON lines: {error}") from None
    texts: list[list[str]] = [[] for _ in task.text_fields]
    labels = []
    for number, record in enumerate(records, 1):
        missing = [key for key in (*task.text_fields, "label") if key not in record]
        if missing:
            raise EvaluationError(f"{path}: record {number} has no {', '.join(missing)} (task {task.name})")
        for column, key in zip(texts, task.text_fields):
            column.append(str(record[key]))
        labels.append(_label(task, record["label"], path, number))
    return Examples(texts, labels)


def _read_tsv(task: GlueTask, path: Path) -> Examples:
    lines = path.read_text(encoding="utf-8").splitlines()
    positional = all(column.isdigit() for column in task.tsv_columns)
    if positional:
        indices = [int(column) for column in task.tsv_columns]
    else:
        header = lines.pop(0).split("\t") if lines else []
        try:
            indices = [header.index(column) for column in task.tsv_columns]
        except ValueError:
            raise EvaluationError(
                f"{path}: expected GLUE's header with columns {', '.join(task.tsv_columns)} (task {task.name})"
            ) from None
    texts: list[list[str]] = [[] for _ in task.text_fields]
    labels = []
    for number, line in enumerate(lines, 1 if positional else 2):
        fields = line.split("\t")
        if not line.strip() or len(fields) <= max(indices):
            continue  # GLUE's QQP and MNLI files have a few malformed lines; their loaders skip them too
        for column, index in zip(texts, indices[:-1]):
            column.append(fields[index])
        labels.append(_label(task, fields[indices[-1]], path, number))
    return Examples(texts, labels)


def _label(task: GlueTask, value: Any, path: Path, number: int) -> float | int:
    try:
        if task.num_labels == 1:
            return float(value)
        if isinstance(value, str) and value in task.label_names:
            return task.label_names.index(value)
        label = int(value)
    except (TypeError, ValueError):
        label = -1
    if not 0 <= label < task.num_labels:
        names = f" or one of {', '.join(task.label_names)}" if task.label_names else ""
        raise EvaluationError(
            f"{path}: line/record {number}: label {value!r} is not a class id 0-{task.num_labels - 1}{names} "
            f"(task {task.name})"
        )
    return label


def _load_from_hub(task: GlueTask, splits: Sequence[str]) -> dict[str, Examples]:
    import datasets

    from headless_megatron.errors import first_line

    try:
        data = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as error:  # noqa: BLE001 - offline, hub and cache errors, reported in one line
        raise EvaluationError(
            f"GLUE task {task.name}: cannot load {HUB_DATASET} from the Hugging Face Hub ({first_line(error)}); "
            "give --data-dir with local files"
        ) from None
    return {
        split: Examples([list(data[split][field]) for field in task.text_fields], list(data[split]["label"]))
        for split in splits
    }
