"""``headless-megatron bench checkpoint``: how long a checkpoint save blocks the training loop,
saved at once and in the background (``--async-save``), for one model and layout in one run.

    headless-megatron bench checkpoint --config configs/gpt_headless_160m.yaml --saves 3 \\
        -- --mock-data --vocab-size 50304 --seq-length 128 --micro-batch-size 1 --global-batch-size 1

Each mode starts the real trainer on ``--nproc-per-node`` fresh local ranks, trains one iteration
(so that the optimizer state exists) and saves ``--saves`` times into a scratch directory, one
iteration apart. "blocked" is the time the loop spends in ``Trainer.save``: the whole write when
saving at once; staging the state and starting the writer in the background. "written" is the time
until the checkpoint is published (for the background mode, until the wait for the write returns).
Each figure is the median over the saves, with its ratio to the synchronous save.
"""

from __future__ import annotations

import shlex
import statistics
import tempfile
import time
from pathlib import Path

from headless_megatron.benchmarks import print_table

MODES = {"sync": [], "async": ["--async-save"]}


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="configs/gpt_headless_tiny.yaml", metavar="'YAML [--flag value ...]'",
                        help="the recipe whose model and layout are saved (default: the tiny GPT)")
    parser.add_argument("--saves", type=int, default=3, help="saves per mode (the median is reported)")
    parser.add_argument("--nproc-per-node", dest="ranks", type=int, default=1, help="local ranks")
    parser.add_argument("--directory", help="where to write the checkpoints (default: a scratch directory)")
    parser.add_argument("overrides", nargs="*", help="after --: flags applied to the recipe")


def _measure(argv: list[str], saves: int) -> dict | None:
    import torch.distributed as dist

    from headless_megatron.config import parse_config
    from headless_megatron.models.registry import family_of
    from headless_megatron.training.loop import start_trainer

    config = parse_config(argv)
    trainer = start_trainer(config)
    data = trainer.train_data_iterator()
    blocked, written = [], []
    for _ in range(saves):
        trainer.train_step(data)
        dist.barrier()
        started = time.perf_counter()
        trainer.save(trainer.iteration)
        blocked.append(time.perf_counter() - started)
        trainer.finish_saves()
        written.append(time.perf_counter() - started)
    if dist.get_rank() != 0:
        return None
    checkpoint = Path(trainer.saves.latest)
    size = sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file())
    parameters = sum(param.numel() for chunk in trainer.model_chunks for param in chunk.parameters())
    return {"blocked": statistics.median(blocked), "written": statistics.median(written), "bytes": size,
            "parameters": parameters * dist.get_world_size() // config.data_parallel_size(dist.get_world_size()),
            "model": family_of(config).name}


def run(args) -> int:
    from headless_megatron.config import parse_config
    from headless_megatron.models.registry import validate_config
    from headless_megatron.runtime.launch import run_local_ranks

    path, *own_flags = shlex.split(args.config)
    fixed = ["--train-iters", str(args.saves + 10), "--lr-warmup-iters", "0", "--eval-iters", "0", "--num-workers",
             "0", "--log-interval", str(10**9), "--exit-signal-handler", "false", "--load", "none"]
    with tempfile.TemporaryDirectory(dir=args.directory, prefix="bench-checkpoint-") as scratch:
        results = {}
        for mode, flags in MODES.items():
            argv = ["--config", path, *own_flags, *args.overrides, *fixed, *flags, "--save",
                    str(Path(scratch) / mode)]
            validate_config(parse_config(argv), args.ranks)  # every mistake in one line before any rank starts
            results[mode] = run_local_ranks(_measure, args.ranks, args=(argv, args.saves))[0]
            print(f"measured {mode}: blocked {results[mode]['blocked']:.2f} s per save", flush=True)
    base = results["sync"]
    print(f"{base['model']} of {base['parameters'] / 1e6:.1f}M parameters, {base['bytes'] / 1e9:.2f} GB per "
          f"checkpoint, {args.ranks} rank(s), median of {args.saves} saves")
    print_table(
        ["mode", "blocked s", "blocked vs sync", "written s", "written vs sync"],
        [[mode, f"{r['blocked']:.2f}", f"{r['blocked'] / base['blocked']:.0%}", f"{r['written']:.2f}",
          f"{r['written'] / base['written']:.0%}"] for mode, r in results.items()],
    )
    return 0
