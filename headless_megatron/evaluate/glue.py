"""GLUE fine-tuning of a Hugging Face encoder with the paper's protocol (Sec. 4.1 and App. E).

    headless-megatron eval glue --model hf/headless-bert --output runs/bert_headless_small
    headless-megatron eval glue --model hf/bert --tasks cola,stsb,mnli --data-dir glue_data/ --seeds 3 --output out/

For each task and seed the encoder is loaded afresh with ``AutoModelForSequenceClassification``
(for ``megatron-bert``, the export of our BERTs: a classifier on the first token's pooled state; any
other encoder works too) and fine-tuned:

- AdamW, lr 1e-5, weight decay 0.01 (not on biases and norm weights), batch 32, 10 epochs, constant
  learning rate after a linear warmup over the first 10% of the steps, sequences of at most 128
  tokens (sentence pairs are encoded as the tokenizer pairs them);
- ``--balanced-ce`` (default): cross-entropy in which each example's loss is divided by the in-batch
  frequency of its class, i.e. the mean over the classes present of their mean loss. STS-B is a
  regression (one output, mean squared error);
- the validation score after every epoch; a run's score is its best epoch;
- the task's score is the mean over ``--seeds`` runs (seeds ``--seed``, ``--seed`` + 1, ...), with
  their standard deviation (sample, 0 for one seed).

Metrics, in percent: Matthews correlation for CoLA, Spearman correlation for STS-B, accuracy
otherwise. MNLI is scored on its matched and mismatched validation sets together (as the paper's
code concatenates them) and both are reported. The GLUE average leaves RTE out, as the paper does
("high standard deviations"); its ± is the standard deviation over seeds of the per-seed average.

Data: the Hugging Face Hub's ``nyu-mll/glue`` by default, or ``--data-dir DIR`` with one folder per
task, named as the task (``cola``) or as in GLUE's own download (``CoLA``, ``SST-2``, ``STS-B``...),
holding for each split either GLUE's TSV (``train.tsv``, ``dev.tsv``; MNLI ``dev_matched.tsv`` and
``dev_mismatched.tsv``) or JSON lines with the Hub's field names (``train.jsonl``,
``validation.jsonl``; MNLI ``validation_matched.jsonl`` and ``validation_mismatched.jsonl``; labels
as ids or as names such as ``entailment``). Results: ``glue.json`` and ``glue.md`` in ``--output``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headless_megatron.evaluate import (
    GLUE_RESULTS_FILE,
    GLUE_TABLE_FILE,
    EvaluationError,
)

HUB_DATASET = "nyu-mll/glue"
EXCLUDED_FROM_AVERAGE = ("rte",)


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
METRIC_NAMES = {"mcc": "MCC", "spearman": "Spearman", "accuracy": "accuracy"}


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


@dataclasses.dataclass(frozen=True)
class Settings:
    """The fine-tuning protocol; the defaults are the paper's."""

    lr: float = 1e-5
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 10
    warmup_ratio: float = 0.1
    max_length: int = 128
    balanced_ce: bool = True
    eval_batch_size: int = 128
    limit: int | None = None  # at most this many examples per split (quick checks only)


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


# ---------------------------------------------------------------------------------------------
# Data


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


# ---------------------------------------------------------------------------------------------
# Metrics and loss


def score(metric: str, predictions: Sequence[float], labels: Sequence[float]) -> float:
    """The task metric in percent. An undefined correlation (constant predictions) counts as 0."""
    if metric == "accuracy":
        return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels)) / max(len(labels), 1)
    if metric == "mcc":
        from sklearn.metrics import matthews_corrcoef

        value = matthews_corrcoef(labels, predictions)
    elif metric == "spearman":
        import warnings

        from scipy.stats import spearmanr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: the correlation is undefined (nan)
            value = spearmanr(predictions, labels).statistic
    else:
        raise ValueError(f"unknown metric {metric}")
    value = float(value)
    return 0.0 if math.isnan(value) else 100.0 * value


def balanced_cross_entropy(logits, labels):
    """Cross-entropy with each example's loss divided by its class's in-batch frequency.

    Equals the mean, over the classes present in the batch, of their mean loss (the weights'
    normalisation of ``F.cross_entropy`` makes the batch size cancel).
    """
    import torch
    import torch.nn.functional as F

    counts = torch.bincount(labels, minlength=logits.shape[-1]).to(logits.dtype)
    weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return F.cross_entropy(logits, labels, weight=weight)


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def _encode(tokenizer, examples: Examples, max_length: int) -> list[dict[str, list[int]]]:
    encoded = tokenizer(*examples.texts, truncation=True, max_length=max_length)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    return [{key: encoded[key][i] for key in keys} for i in range(len(examples))]


def _batches(tokenizer, features, labels, indices, batch_size, regression, device):
    import torch

    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        batch = tokenizer.pad([features[i] for i in chosen], return_tensors="pt")
        target = torch.tensor([labels[i] for i in chosen], dtype=torch.float if regression else torch.long)
        yield {key: value.to(device) for key, value in batch.items()}, target.to(device)


def _predict(model, tokenizer, features, labels, settings: Settings, regression: bool, device) -> list[float]:
    import torch

    model.eval()
    predictions: list[float] = []
    with torch.no_grad():
        for batch, _ in _batches(tokenizer, features, labels, list(range(len(features))),
                                 settings.eval_batch_size, regression, device):
            logits = model(**batch).logits.float()
            predictions += logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
    model.train()
    return predictions


def _evaluate(task, model, tokenizer, validation, settings, device) -> dict[str, float]:
    """``{"score": ...}`` and, for MNLI, ``matched`` and ``mismatched`` too."""
    regression = task.num_labels == 1
    all_predictions, all_labels, result = [], [], {}
    for split, (features, labels) in validation.items():
        predictions = _predict(model, tokenizer, features, labels, settings, regression, device)
        all_predictions += predictions
        all_labels += labels
        if len(validation) > 1:
            result[split.removeprefix("validation_")] = score(task.metric, predictions, labels)
    result["score"] = score(task.metric, all_predictions, all_labels)
    return result


def finetune(model_path: str, task: GlueTask, data: dict[str, Examples], seed: int, settings: Settings,
             device: str, progress_position: int = 0) -> dict[str, Any]:
    """Fine-tune one fresh copy of the encoder on one task; returns the per-epoch and best scores."""
    import torch
    import torch.nn.functional as F
    import transformers
    from tqdm.auto import tqdm

    transformers.set_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "newly initialized weights": the classifier, expected
    transformers.logging.disable_progress_bar()  # one bar per task and seed is ours
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=task.num_labels,
            problem_type="regression" if task.num_labels == 1 else "single_label_classification",
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).train()
    max_length = min(settings.max_length, getattr(model.config, "max_position_embeddings", None) or settings.max_length)
    regression = task.num_labels == 1

    train = data["train"].head(settings.limit)
    features = _encode(tokenizer, train, max_length)
    validation = {}
    for split, _ in task.validation_splits:
        examples = data[split].head(settings.limit)
        validation[split] = (_encode(tokenizer, examples, max_length), examples.labels)

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = transformers.get_constant_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps))
    generator = torch.Generator().manual_seed(seed)

    epochs, started = [], time.monotonic()
    bar = tqdm(total=total_steps, desc=f"{task.name} seed {seed}", unit="step", leave=False,
               position=progress_position, disable=None, dynamic_ncols=True)
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(features), generator=generator).tolist()
        losses = []
        for batch, target in _batches(tokenizer, features, train.labels, order, settings.batch_size,
                                      regression, device):
            logits = model(**batch).logits.float()
            if regression:
                loss = F.mse_loss(logits[:, 0], target)
            elif settings.balanced_ce:
                loss = balanced_cross_entropy(logits, target)
            else:
                loss = F.cross_entropy(logits, target)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        result = {"epoch": epoch, "train_loss": statistics.fmean(losses) if losses else float("nan")}
        result.update(_evaluate(task, model, tokenizer, validation, settings, device))
        epochs.append(result)
        bar.set_postfix(epoch=epoch, val=f"{result['score']:.2f}")
    bar.close()
    best = max(epochs, key=lambda record: record["score"])  # the first best epoch on ties
    return {
        "seed": seed, "best_epoch": best["epoch"], "score": best["score"],
        **{key: best[key] for key in ("matched", "mismatched") if key in best},
        "epochs": epochs, "train_examples": len(features),
        "seconds": time.monotonic() - started,
    }


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


def evaluate_glue(model: str, tasks: Sequence[str] = PAPER_TASKS, *, data_dir: str | None = None,
                  seeds: int = 3, first_seed: int = 0, settings: Settings = Settings(),
                  device: str | None = None, log=print) -> dict[str, Any]:
    """Fine-tune ``model`` on every task for every seed; returns the results written to ``glue.json``."""
    import torch

    from headless_megatron.evaluate.lm_eval import check_model_path

    check_model_path(model)
    if seeds < 1:
        raise EvaluationError(f"--seeds {seeds}: expected at least 1")
    _check_model_loads(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # All data first: a missing file stops the command before hours of fine-tuning.
    data = {name: load_task_data(TASKS[name], data_dir) for name in tasks}
    for name, splits in data.items():
        empty = [split for split, examples in splits.items() if not len(examples)]
        if empty:
            raise EvaluationError(f"GLUE task {name}: split {', '.join(empty)} has no examples")
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in tasks:
        runs[name] = []
        for seed in range(first_seed, first_seed + seeds):
            run = finetune(model, TASKS[name], data[name], seed, settings, device)
            runs[name].append(run)
            extra = "".join(f", {key} {run[key]:.2f}" for key in ("matched", "mismatched") if key in run)
            log(f"glue {name} seed {seed}: best {METRIC_NAMES[TASKS[name].metric]} {run['score']:.2f}{extra} "
                f"at epoch {run['best_epoch']}/{settings.epochs} ({run['seconds']:.0f} s)")
    results = summarize(runs)
    return {
        "model": model, "data": data_dir or HUB_DATASET, "device": device,
        "seeds": list(range(first_seed, first_seed + seeds)), "settings": dataclasses.asdict(settings),
        **results,
    }


def _check_model_loads(model: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from headless_megatron.errors import first_line

    for what, loader in (("config", AutoConfig), ("tokenizer", AutoTokenizer)):
        try:
            loader.from_pretrained(model)
        except Exception as error:  # noqa: BLE001 - transformers raises OSError, ValueError, hub errors...
            raise EvaluationError(f"--model {model}: cannot load its {what}: {first_line(error)}") from None


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
