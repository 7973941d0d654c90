"""``headless-megatron report RUN_DIR [RUN_DIR ...] --output DIR``: plots and a summary of runs.

    headless-megatron report runs/gpt_headless_70m runs/gpt_vanilla_70m --output reports/70m

Training and validation loss against tokens and against training time, and throughput, with every
run on the same figures (PNG), plus ``report.md``/``report.json``: final losses, tokens, time,
tokens/s and the ``eval lm``/``eval glue`` results found in each run directory
(``eval_lm.json``, ``glue.json``). The work is ``headless_megatron/evaluate/report.py``. A missing
or unreadable run prints ``headless-megatron report: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (a run's save or log_dir, holding metrics.jsonl)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory for the PNG plots, report.md and report.json")
    parser.add_argument("--labels", metavar="L1,L2",
                        help="comma-separated names of the runs in the plots and table (default: directory names)")


def run(args) -> int:
    from headless_megatron.evaluate.report import make_report

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    result = make_report(args.runs, args.output, labels)
    print(result["markdown"].read_text(), end="")
    print(f"report: wrote {', '.join(str(p) for p in result['plots'].values())}, {result['markdown']} "
          f"and {result['json']}")
    return 0
