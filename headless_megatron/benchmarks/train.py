"""``headless-megatron bench train``: whole training iterations of several configs, side by side.

    headless-megatron bench train --config configs/gpt_headless_160m.yaml \\
        --config configs/gpt_vanilla_160m.yaml --iters 50 -- --mock-data --vocab-size 50304
    headless-megatron bench train --config configs/bert_vanilla_small.yaml \\
        --config "configs/bert_vanilla_small.yaml --mlm-project-masked-only" -- --mock-data --vocab-size 50304

Each config runs ``--warmup`` + ``--iters`` iterations of the real training loop (model, DDP,
distributed optimizer, schedule) on ``--nproc-per-node`` fresh local ranks, one config after the
other, so that peak memory is each config's own. Options after ``--`` override every config (for
example ``--mock-data`` when no dataset is at hand, or ``--micro-batch-size``). The table reports the
median iteration time over the timed iterations as tokens/s, the FLOPs of one iteration and TFLOP/s
per device (Megatron-LM's count, :mod:`headless_megatron.training.metrics`: no vocabulary projection
for CWT but its matmuls, the masked positions alone with ``mlm_project_masked_only``), MFU where the
device's peak is known, peak memory, and each figure's ratio to the first config. ``--results FILE``
also appends each config's figures to FILE as a JSON line (``tools/bench_gpu.sh`` builds its one
table from them).
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from pathlib import Path

from headless_megatron.benchmarks import print_table


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", action="append", required=True, metavar="'YAML [--flag value ...]'",
        help="a YAML recipe, optionally followed by flags for it alone (repeat for each config)",
    )
    parser.add_argument("--iters", type=int, default=50, help="timed iterations per config")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--nproc-per-node", dest="ranks", type=int, default=1, help="local ranks per config")
    parser.add_argument("--results", metavar="FILE", help="append each config's figures to FILE (JSON lines)")
    parser.add_argument("--group", default="", help="a label stored with each record of --results")
    parser.add_argument("overrides", nargs="*", help="after --: flags applied to every config")


def _peak_memory_bytes() -> int:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(argv: list[str], iters: int, warmup: int) -> dict | None:
    import torch
    import torch.distributed as dist

    from headless_megatron.config import parse_config
    from headless_megatron.training.loop import start_trainer
    from headless_megatron.training.metrics import peak_flops_per_device

    config = parse_config(argv)
    trainer = start_trainer(config)
    data = trainer.train_data_iterator()
    seconds, flops, losses = [], [], []
    for step in range(warmup + iters):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss, _, step_flops = trainer.train_step(data)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
            flops.append(step_flops)
            losses.append(loss)
    peak = torch.tensor([_peak_memory_bytes()], dtype=torch.float64, device=trainer.device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if dist.get_rank() != 0:
        return None
    median = statistics.median(seconds)
    world = dist.get_world_size()
    tflops = statistics.median(flops) / median / world / 1e12
    device_peak = peak_flops_per_device(config)
    vpp = config.virtual_pipeline_model_parallel_size
    return {
        "tokens_per_sec": config.tokens_per_iteration / median,
        "iteration_flops": statistics.median(flops),
        "tflops": tflops,
        "mfu": tflops * 1e12 / device_peak if device_peak else None,
        "peak_bytes": int(peak.item()),
        "loss": losses[-1],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "layout": f"TP{config.tensor_model_parallel_size} PP{config.pipeline_model_parallel_size}"
                  + (f"xVPP{vpp}" if vpp else "")
                  + f" DP{config.data_parallel_size(world)} mbs{config.micro_batch_size} gbs{config.global_batch_size} "
                  + f"s{config.seq_length} {'bf16' if config.bf16 else 'fp16' if config.fp16 else 'fp32'}",
    }


def run(args) -> int:
    from headless_megatron.config import parse_config
    from headless_megatron.models.registry import validate_config
    from headless_megatron.runtime.launch import run_local_ranks
    from headless_megatron.training.metrics import FLOPS_CONVENTION

    fixed = ["--train-iters", str(args.warmup + args.iters), "--lr-warmup-iters", "0", "--eval-iters", "0",
             "--num-workers", "0", "--log-interval", str(10**9), "--save", "none", "--load", "none"]
    runs = []
    for config in args.config:
        path, *own_flags = shlex.split(config)
        argv = ["--config", path, *args.overrides, *own_flags, *fixed]
        # Every config's mistakes are one line here, before any rank of any config starts.
        validate_config(parse_config(argv), args.ranks)
        runs.append((config, path, own_flags, argv))
    results = []
    for config, path, own_flags, argv in runs:
        result = run_local_ranks(_measure, args.ranks, args=(argv, args.iters, args.warmup))[0]
        name = " ".join([Path(path).stem, *own_flags])
        results.append((name, result))
        print(f"measured {config}: {result['tokens_per_sec']:,.0f} tokens/s", flush=True)
        if args.results:
            with open(args.results, "a") as stream:
                stream.write(json.dumps({"group": args.group, "config": name, **result}) + "\n")
    base = results[0][1]
    header = ("config", "layout", "tokens/s", "x", "GFLOP/iter", "TFLOP/s/dev", "MFU", "peak MB", "x", "last loss")
    rows = [
        (
            name,
            r["layout"],
            f"{r['tokens_per_sec']:,.0f}",
            f"{r['tokens_per_sec'] / base['tokens_per_sec']:.2f}",
            f"{r['iteration_flops'] / 1e9:.4g}",
            f"{r['tflops']:.3f}",
            f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a",
            f"{r['peak_bytes'] / 2**20:,.0f}",
            f"{r['peak_bytes'] / base['peak_bytes']:.2f}",
            f"{r['loss']:.3f}",
        )
        for name, r in results
    ]
    print(f"\n{args.iters} timed iterations after {args.warmup} warm-up, median; device {base['device']}, "
          f"{args.ranks} rank(s); FLOPs counted as {FLOPS_CONVENTION}; ratios against {results[0][0]}")
    print_table(header, rows)
    return 0
