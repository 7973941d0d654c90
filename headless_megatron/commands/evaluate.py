"""``headless-megatron eval <target>``: evaluate an exported Hugging Face model.

    headless-megatron eval lm --model hf/headless-70m --output runs/gpt_headless_70m [--tasks ...] [--limit N]
    headless-megatron eval glue --model hf/headless-bert --output runs/bert_headless [--tasks cola,sst2] [--seeds 3]

``lm``: zero-shot tasks of EleutherAI's LM Evaluation Harness on a decoder
(``headless_megatron/evaluate/lm_eval.py``); ``glue``: GLUE fine-tuning of an encoder with the
paper's protocol (``headless_megatron/evaluate/glue.py``). Each writes JSON and markdown results into
``--output`` (``eval_lm.json``/``eval_lm.md``, ``glue.json``/``glue.md``), where ``headless-megatron
report`` finds them when ``--output`` is the run's directory. A usage or input mistake prints
``headless-megatron eval: error: <message>`` and exits with status 2. Targets are imported only when
chosen (the harness alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import os

from headless_megatron.errors import OneLineErrorParser, UsageError

PROG = "headless-megatron eval"

TARGETS = {
    "lm": "zero-shot LM Evaluation Harness tasks on a decoder (default: the paper's)",
    "glue": "GLUE fine-tuning of an encoder with the paper's protocol, mean and std over seeds",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=list(TARGETS), help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the target's own options (see eval TARGET --help)")


def run(args) -> int:
    return main(args.target, args.options)


def main(target: str, argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog=f"{PROG} {target}", description=TARGETS[target])
    (add_lm_arguments if target == "lm" else add_glue_arguments)(parser)
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("runs in one process; drop --nproc-per-node (and torchrun)")
    return run_lm(args) if target == "lm" else run_glue(args)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _limit(text: str) -> float:
    """The harness's --limit: a count (integer >= 1) or a fraction of each task (0 < x < 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None
    if value <= 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or a fraction in (0, 1), got {text!r}")
    return int(value) if value >= 1 else value


# ---- eval lm ----


def add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    from headless_megatron.evaluate.lm_eval import PAPER_TASKS

    parser.add_argument("--model", required=True, metavar="DIR",
                        help="Hugging Face model directory (what export-hf writes) or Hub name")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS), metavar="T1,T2",
                        help=f"comma-separated harness task names (default: the paper's, {','.join(PAPER_TASKS)})")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory for eval_lm.json and eval_lm.md (a run directory, for report)")
    parser.add_argument("--include-path", metavar="DIR",
                        help="directory of task YAML files (harness format) to add; local data files run offline")
    parser.add_argument("--limit", type=_limit, metavar="N",
                        help="at most N documents per task (or a fraction < 1); quick checks, not comparable scores")
    parser.add_argument("--batch-size", default="1", metavar="B",
                        help="batch size, or 'auto' to let the harness find the largest that fits (default 1)")
    parser.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples (default: each task's, 0)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--max-length", type=_positive_int, metavar="N",
                        help="context length (default: the model's max_position_embeddings)")
    parser.add_argument("--bootstrap-iters", type=int, default=100_000, metavar="N",
                        help="bootstrap resamples for the stderr of non-mean metrics such as perplexity (0: none)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the harness's random choices")


def run_lm(args) -> int:
    from headless_megatron.evaluate import EvaluationError
    from headless_megatron.evaluate.lm_eval import (
        evaluate_lm,
        markdown_table,
        parse_tasks,
        table_rows,
        write_results,
    )

    batch_size = args.batch_size
    if batch_size != "auto" and not batch_size.startswith("auto:"):
        if not batch_size.isdigit() or int(batch_size) < 1:
            raise EvaluationError(f"--batch-size {batch_size}: expected an integer >= 1 or 'auto'")
        batch_size = int(batch_size)
    results = evaluate_lm(
        args.model, parse_tasks(args.tasks), include_path=args.include_path, limit=args.limit,
        batch_size=batch_size, num_fewshot=args.num_fewshot, device=args.device, dtype=args.dtype,
        max_length=args.max_length, bootstrap_iters=args.bootstrap_iters, seed=args.seed,
    )
    json_path, table_path = write_results(results, args.output)
    print(markdown_table(table_rows(results)), end="")
    print(f"eval lm: wrote {json_path} and {table_path}")
    return 0


# ---- eval glue ----


def add_glue_arguments(parser: argparse.ArgumentParser) -> None:
    from headless_megatron.evaluate.glue import PAPER_TASKS, TASKS, Settings

    defaults = Settings()
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="Hugging Face encoder directory (what export-hf writes) or Hub name")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS), metavar="T1,T2",
                        help=f"comma-separated, of {','.join(TASKS)} (default: the paper's Table 1, without RTE)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory for glue.json and glue.md (a run directory, for report)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="local GLUE data, one folder per task (GLUE's TSV or JSON lines); default: the Hub")
    parser.add_argument("--seeds", type=_positive_int, default=3, help="fine-tuning runs per task (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed; runs use seed, seed+1, ... (default 0)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"AdamW learning rate (default {defaults.lr})")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help=f"AdamW weight decay (default {defaults.weight_decay})")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size,
                        help=f"training batch size (default {defaults.batch_size})")
    parser.add_argument("--epochs", type=_positive_int, default=defaults.epochs,
                        help=f"epochs; the best epoch's validation score counts (default {defaults.epochs})")
    parser.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio,
                        help=f"fraction of the steps of linear warmup, then constant (default {defaults.warmup_ratio})")
    parser.add_argument("--max-length", type=_positive_int, default=defaults.max_length,
                        help=f"tokens per example (default {defaults.max_length})")
    parser.add_argument("--balanced-ce", action=argparse.BooleanOptionalAction, default=defaults.balanced_ce,
                        help="divide each example's loss by its class's in-batch frequency (default: on)")
    parser.add_argument("--eval-batch-size", type=_positive_int, default=defaults.eval_batch_size,
                        help=f"validation batch size (default {defaults.eval_batch_size})")
    parser.add_argument("--limit", type=_positive_int, metavar="N",
                        help="at most N examples per split; quick checks, not comparable scores")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def run_glue(args) -> int:
    from headless_megatron.evaluate import EvaluationError
    from headless_megatron.evaluate.glue import (
        Settings,
        evaluate_glue,
        markdown_table,
        parse_tasks,
        write_results,
    )

    if not 0 <= args.warmup_ratio < 1:
        raise EvaluationError(f"--warmup-ratio {args.warmup_ratio}: expected a fraction in [0, 1)")
    if args.lr <= 0:
        raise EvaluationError(f"--lr {args.lr}: expected a positive learning rate")
    settings = Settings(
        lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size, epochs=args.epochs,
        warmup_ratio=args.warmup_ratio, max_length=args.max_length, balanced_ce=args.balanced_ce,
        eval_batch_size=args.eval_batch_size, limit=args.limit,
    )
    results = evaluate_glue(args.model, parse_tasks(args.tasks), data_dir=args.data_dir, seeds=args.seeds,
                            first_seed=args.seed, settings=settings, device=args.device)
    json_path, table_path = write_results(results, args.output)
    print(markdown_table(results), end="")
    print(f"eval glue: wrote {json_path} and {table_path}")
    return 0
