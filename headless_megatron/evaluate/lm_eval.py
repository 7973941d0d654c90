"""Zero-shot evaluation of a Hugging Face decoder with EleutherAI's LM Evaluation Harness.

    headless-megatron eval lm --model hf/headless-70m --output runs/gpt_headless_70m
    headless-megatron eval lm --model hf/ft --tasks lambada_openai,sciq --limit 200 --batch-size 16 --output out/
    headless-megatron eval lm --model hf/ft --tasks my_cloze --include-path my_tasks/ --output out/   # offline

The harness runs through its Python API (``lm_eval.simple_evaluate``) with its Hugging Face backend
(``HFLM``) on the directory that ``export-hf`` writes (or any causal LM it can load). The default
tasks are the paper's (Table 3 and 4): LAMBADA (OpenAI version), BoolQ, CrowS-Pairs (English),
RACE, SciQ, PubMedQA and QASPER (its yes/no part, which is scored by accuracy).

``--include-path DIR`` adds a directory of task YAML files, in the harness's own format, to the
registry; a task whose data are local files (``dataset_path: json`` with ``data_files``) runs
without network. When every requested task is found there, the harness's ~15,000 built-in tasks are
not indexed at all (that index alone takes half a minute).

Tokenizer settings the harness depends on are checked before any work:

- an end-of-text token (``eos``) is required: the harness stops generation at it and, for a model
  without a beginning-of-sequence token, uses it as the prefix of a context-free continuation
  (perplexity tasks). A model of ours was trained on documents separated by that very token, so it
  is also the right "start of document" marker;
- a padding token: the one the tokenizer has (ours: ``<|pad|>``), else the harness pads with eos;
- ``bos``: prepended only when the tokenizer itself adds it (ours has none, as in training).

The chosen values are printed and recorded in the results (``tokenizer_*``, ``eot_token_id``).
Results are the harness's JSON (``eval_lm.json``) and a markdown table of task, metric, value and
standard error (``eval_lm.md``), both in ``--output``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headless_megatron.evaluate import LM_RESULTS_FILE, LM_TABLE_FILE, EvaluationError

# The paper's zero-shot tasks, by their harness names.
PAPER_TASKS = (
    "lambada_openai",
    "boolq",
    "crows_pairs_english",
    "race",
    "sciq",
    "pubmedqa",
    "qasper_bool",
)


def parse_tasks(text: str) -> list[str]:
    """``a,b, c`` -> ``["a", "b", "c"]``, without empty items or repeats."""
    tasks = [name.strip() for name in text.split(",") if name.strip()]
    if not tasks:
        raise EvaluationError("--tasks: expected a comma-separated list of task names")
    return list(dict.fromkeys(tasks))


def check_model_path(model: str) -> None:
    """A local ``--model`` must be a Hugging Face model directory; other strings are Hub names."""
    from headless_megatron.data.sources import looks_like_a_local_path

    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EvaluationError(f"--model {model}: not a Hugging Face model directory (no config.json)")
    elif looks_like_a_local_path(model) or model.count("/") > 1 or _under_a_local_directory(path):
        # Refused here rather than after the Hub's retries (about a minute offline).
        raise EvaluationError(f"--model {model}: no such directory")


def _under_a_local_directory(path: Path) -> bool:
    """``hf/my-model`` where ``hf/`` is a local directory means a local model, not the Hub's."""
    return len(path.parts) > 1 and path.parent.is_dir()


def load_tokenizer_for_harness(model: str):
    """The model's tokenizer, and the harness options that make it behave as in training.

    Returns ``(tokenizer, options)`` where ``options`` are ``HFLM`` keyword arguments. Raises
    :class:`EvaluationError` for a tokenizer the harness cannot use (no eos token).
    """
    from transformers import AutoTokenizer

    from headless_megatron.errors import first_line

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as error:  # noqa: BLE001 - transformers raises OSError, ValueError, hub errors...
        raise EvaluationError(f"--model {model}: cannot load its tokenizer: {first_line(error)}") from None
    if tokenizer.eos_token_id is None:
        raise EvaluationError(
            f"--model {model}: its tokenizer has no eos (end-of-text) token, which the harness needs to stop "
            "generating and to start context-free continuations; set eos_token in tokenizer_config.json"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return tokenizer, {"prefix_token_id": prefix}


def task_manager_for(tasks: Sequence[str], include_path: str | None = None):
    """A harness ``TaskManager`` that knows every name in ``tasks``, or :class:`EvaluationError`.

    With ``include_path``, the built-in tasks are indexed only when a task is not found there.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise EvaluationError(f"--include-path {include_path}: no such directory")
        local = TaskManager(include_path=str(include_path), include_defaults=False, verbosity="ERROR")
        if all(name in local.all_tasks for name in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None, verbosity="ERROR")
    check_task_names(tasks, manager.all_tasks, include_path)
    return manager


def check_task_names(tasks: Sequence[str], known: Sequence[str], include_path: str | None = None) -> None:
    """Raise :class:`EvaluationError` naming the unknown tasks, with the closest known names."""
    known_set = set(known)
    missing = [name for name in tasks if name not in known_set]
    if not missing:
        return
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            hints.append(f"{name}: did you mean {', '.join(close)}?")
    where = "the harness's tasks" + (f" or --include-path {include_path}" if include_path else "")
    raise EvaluationError(
        f"--tasks: unknown task{'s' if len(missing) > 1 else ''} {', '.join(missing)} (not in {where})"
        + ("; " + "; ".join(hints) if hints else "")
    )


def evaluate_lm(
    model: str,
    tasks: Sequence[str] = PAPER_TASKS,
    *,
    include_path: str | None = None,
    limit: float | None = None,
    batch_size: int | str = 1,
    num_fewshot: int | None = None,
    device: str | None = None,
    dtype: str = "auto",
    max_length: int | None = None,
    bootstrap_iters: int = 100_000,
    seed: int = 1234,
) -> dict[str, Any]:
    """Run the harness on ``model`` (an HF directory or Hub name); returns its results dictionary.

    ``limit``: at most this many documents per task (a fraction of each task when below 1), as the
    harness's ``--limit``, for quick checks: such scores are not comparable with published ones.
    """
    check_model_path(model)  # before the harness's imports (seconds)
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    from headless_megatron.errors import first_line

    check_model_path(model)
    tasks = list(tasks)
    manager = task_manager_for(tasks, include_path)
    tokenizer, options = load_tokenizer_for_harness(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, backend="causal", device=device, dtype=dtype,
            batch_size=batch_size, max_length=max_length, **options,
        )
    except Exception as error:  # noqa: BLE001 - a model transformers cannot load, in one line
        raise EvaluationError(f"--model {model}: cannot load it as a causal LM: {first_line(error)}") from None
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except (OSError, ConnectionError) as error:
        # Typically a task's dataset that is neither cached nor reachable (HF_DATASETS_OFFLINE=1).
        raise EvaluationError(f"a task's data could not be loaded: {first_line(error)}") from None
    results = dict(results)
    results.pop("samples", None)
    results["headless_megatron"] = {
        "model": model, "tasks": tasks, "include_path": include_path, "limit": limit,
        "num_fewshot": num_fewshot, "batch_size": batch_size, "device": device, "dtype": dtype,
        "prefix_token_id": options["prefix_token_id"],
    }
    return results


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task and metric: ``{"task", "metric", "value", "stderr"}`` (stderr may be None).

    Metric keys of the harness are ``metric,filter``; the filter is kept in the name unless it is
    ``none``.
    """
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append({
                "task": task,
                "metric": metric if filter_name == "none" else f"{metric} ({filter_name})",
                "value": value if isinstance(value, (int, float)) else None,
                "stderr": stderr if isinstance(stderr, (int, float)) else None,
            })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| task | metric | value | stderr |", "| --- | --- | ---: | ---: |"]
    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.4f}"
        stderr = "n/a" if row["stderr"] is None else f"{row['stderr']:.4f}"
        lines.append(f"| {row['task']} | {row['metric']} | {value} | {stderr} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], output: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval_lm.json`` (the harness's results) and ``eval_lm.md`` into ``output``."""
    from lm_eval.utils import handle_non_serializable

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    json_path, table_path = output / LM_RESULTS_FILE, output / LM_TABLE_FILE
    json_path.write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    model = results.get("headless_megatron", {}).get("model", "")
    table_path.write_text(f"# LM Evaluation Harness: {model}\n\n" + markdown_table(table_rows(results)))
    return json_path, table_path
