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

Data: the Hugging Face Hub's ``nyu-mll/glue`` by default, or ``--data-dir DIR`` with GLUE's TSV or
JSON lines. Results: ``glue.json`` and ``glue.md`` in ``--output``.

Modules: :mod:`.data` (task table, readers), :mod:`.metrics`, :mod:`.finetune` (one run),
:mod:`.results` (statistics over seeds, writers); this one runs them for every task and seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from headless_megatron.evaluate import EvaluationError
from headless_megatron.evaluate.glue.data import HUB_DATASET, PAPER_TASKS, TASKS, load_task_data, parse_tasks
from headless_megatron.evaluate.glue.finetune import Settings, finetune
from headless_megatron.evaluate.glue.metrics import METRIC_NAMES
from headless_megatron.evaluate.glue.results import markdown_table, summarize, write_results

__all__ = ["PAPER_TASKS", "TASKS", "Settings", "evaluate_glue", "markdown_table", "parse_tasks", "write_results"]


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
