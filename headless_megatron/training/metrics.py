"""What a run reports: a console line per ``log_interval``, a progress bar on a terminal,
``metrics.jsonl`` and, when configured, TensorBoard and Weights & Biases (the same scalars). Also the
FLOP count behind TFLOP/s and MFU.

Only rank 0 reports; every rank may call the logger.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import torch

from headless_megatron.models.registry import family_of

# Dense bf16/fp16 tensor-core peaks (FLOP/s) per device, by a fragment of the name CUDA (or ROCm)
# reports, the most specific first: "NVIDIA H100 PCIe" is not an SXM H100.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
    ("GB200", 2500e12), ("B200", 2250e12), ("A100", 312e12), ("MI300X", 1307.4e12), ("MI325X", 1307.4e12),
    ("L40S", 362e12), ("A10G", 125e12),
)


def peak_flops_per_device(config, device_name: str | None = None) -> float | None:
    """One device's dense half-precision peak for MFU: ``mfu_peak_tflops``, else by the device's
    name; None in fp32, on CPU or for an unlisted device."""
    if not (config.bf16 or config.fp16):
        return None
    if config.mfu_peak_tflops is not None:
        return config.mfu_peak_tflops * 1e12
    if device_name is None and not torch.cuda.is_available():
        return None
    name = device_name or torch.cuda.get_device_name()
    return next((peak for fragment, peak in PEAK_FLOPS if fragment in name), None)


FLOPS_CONVENTION = "megatron-lm"
"""How FLOPs are counted: Megatron-LM's ``num_floating_point_operations`` (dense matmuls, 3 x forward,
causal attention scores halved), with the head of the loss actually used (see :func:`head_flops`)."""


def transformer_flops_per_token(config) -> float:
    """Training FLOPs per token of the transformer body (forward + backward = 3 x forward matmuls).

    ``config`` is a :class:`~headless_megatron.config.TrainConfig`. Megatron-LM's count: QKV (with
    grouped-query key/value widths), output projection, MLP (3 matmuls with SwiGLU), and the two
    attention matmuls ``QK^T`` and ``PV`` over the positions each query attends to, which the model
    family says (:meth:`~headless_megatron.models.family.ModelFamily.attended_positions`: half the
    square for a causal decoder, all of it for an encoder). The head is :func:`head_flops`.
    """
    h, s = config.hidden_size, config.seq_length
    q = config.num_attention_heads * config.head_dim
    kv = config.query_groups * config.head_dim
    attended = family_of(config).attended_positions(s)
    attention = 2 * h * (q + 2 * kv) + 2 * 2 * q * attended + 2 * q * h
    mlp = 2 * h * config.ffn_size * (3 if config.swiglu else 2)
    return 3.0 * config.num_layers * (attention + mlp)


def head_flops(config, padded_vocab: int, projected_positions: int, candidate_products: int) -> float:
    """Training FLOPs of the output head for one iteration.

    Cross-entropy projects each of ``projected_positions`` onto the (padded) vocabulary, ``2 h V`` per
    position (Megatron-LM's logit term): every position, or the masked ones alone with
    ``mlm_project_masked_only``. CWT computes no projection; its matmul scores the K loss positions of
    each micro-batch against the U candidates it contrasts them with (with ``cwt_negatives:
    data_parallel``, the distinct targets of all data-parallel ranks), ``2 h K U``;
    ``candidate_products`` is the sum of K x U over micro-batches and ranks.
    """
    h = config.hidden_size
    if config.loss == "cwt":
        return 3.0 * 2 * h * candidate_products
    return 3.0 * 2 * h * padded_vocab * projected_positions


class CandidateCounter:
    """The K x U products of an iteration's CWT matmuls, counted on the device.

    Each micro-batch adds its K (loss positions) and the set of its target ids as a boolean row over
    the vocabulary: no host synchronisation per micro-batch. :meth:`total` forms U per micro-batch
    (the union over the data-parallel group when negatives are gathered across it) once per
    iteration.
    """

    def __init__(self, vocab_size: int, data_parallel_group=None):
        self.vocab_size = vocab_size
        self.data_parallel_group = data_parallel_group
        self.reset()

    def reset(self) -> None:
        self.positions: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, labels: torch.Tensor, loss_mask: torch.Tensor) -> None:
        is_loss = loss_mask.reshape(-1) > 0
        ids = torch.where(is_loss, labels.reshape(-1), self.vocab_size)  # non-loss positions: a spare slot
        seen = torch.zeros(self.vocab_size + 1, dtype=torch.uint8, device=labels.device)
        self.targets.append(seen.index_fill_(0, ids, 1)[: self.vocab_size])
        self.positions.append(is_loss.sum())

    def total(self, device) -> torch.Tensor:
        """Sum over this rank's micro-batches of K x U (a collective over the data-parallel group
        when one was given); then :meth:`reset`."""
        if not self.positions:
            return torch.zeros((), device=device)
        targets = torch.stack(self.targets)
        if self.data_parallel_group is not None:
            torch.distributed.all_reduce(targets, op=torch.distributed.ReduceOp.MAX, group=self.data_parallel_group)
        products = (torch.stack(self.positions) * targets.sum(1, dtype=torch.int64)).sum().float()
        self.reset()
        return products


# Megatron-Core's timers, with the log level each is created with: the pipeline schedules and
# finalize_model_grads time the first four themselves (TransformerConfig.timers), the trainer the
# rest (training/loop.py). Names and levels are Megatron-LM's.
TIMER_LEVELS = {"forward-backward": 1, "forward-compute": 2, "backward-compute": 2, "all-grads-sync": 1,
                "batch-generator": 1, "optimizer": 1, "save-checkpoint": 0}
TIMER_NAMES = list(TIMER_LEVELS)
COMPUTE_TIMERS = ("forward-compute", "backward-compute")  # a rank's own work, no wait for the others


def megatron_timers(log_option: str):
    """Megatron-Core's ``Timers`` with every timer of :data:`TIMER_LEVELS` created at its level."""
    from megatron.core.timers import Timers

    timers = Timers(log_level=2, log_option=log_option)
    for name, level in TIMER_LEVELS.items():
        timers(name, log_level=level)
    return timers
MEMORY_KEY, MEMORY_LABEL = ("memory_peak_allocated_gib", "peak allocated") if torch.cuda.is_available() else \
    ("memory_peak_rss_gib", "peak RSS")


class IntervalStats:
    """One rank's sums over the iterations since the last log line, and its memory peak."""

    def __init__(self):
        self.iterations = 0
        self.seconds = self.tokens = self.flops = 0.0
        self.rss_peak = 0

    def add(self, seconds: float, tokens: int, flops: float) -> None:
        self.iterations += 1
        self.seconds += seconds
        self.tokens += tokens
        self.flops += flops
        if not torch.cuda.is_available():
            import psutil

            self.rss_peak = max(self.rss_peak, psutil.Process().memory_info().rss)

    def memory_peak(self) -> int:
        """Bytes: the CUDA allocator's peak since the last line (then reset), or the largest RSS seen."""
        if not torch.cuda.is_available():
            return self.rss_peak
        peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return peak


class StallWatch:
    """Seconds this process was not running at all since the last :meth:`take`: stopped (SIGSTOP, a
    debugger), throttled by its cgroup's CPU quota, swapped out, or its Python threads starved.

    A daemon thread wakes every ``tick`` seconds; a wake-up later than ``threshold`` during which
    the process used less than half that time of CPU counts, less the tick, as a stall (a C call
    that holds the GIL, such as a checkpoint's serialization, keeps the CPU busy: not a stall). The
    compute timers cannot tell a stalled rank apart from its tensor-parallel peers, which wait for
    it inside the same layers; this can.
    """

    def __init__(self, tick: float = 0.1, threshold: float = 0.5):
        self.tick, self.threshold = tick, threshold
        self.stalled = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last, last_cpu = time.monotonic(), time.process_time()
        while not self._stop.wait(self.tick):
            now, cpu = time.monotonic(), time.process_time()
            if now - last > self.threshold and cpu - last_cpu < (now - last) / 2:
                with self._lock:
                    self.stalled += now - last - self.tick
            last, last_cpu = now, cpu

    def take(self) -> float:
        """The stalled seconds since the last call."""
        with self._lock:
            stalled, self.stalled = self.stalled, 0.0
        return stalled

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class RankStats:
    """Every rank's interval, gathered: the step time's spread, the memory peak, the stalls and each
    timer's slowest rank."""

    def __init__(self, rows: list[list[float]]):
        seconds = [row[0] for row in rows]
        self.min_seconds, self.max_seconds = min(seconds), max(seconds)
        self.memory_gib = max(row[1] for row in rows) / 2**30
        stalled = [row[2] for row in rows]
        self.timers = [max(row[3 + index] for row in rows) for index in range(len(rows[0]) - 3)]
        # Ranks wait for each other in every collective, so their step times come out nearly equal:
        # the straggler is the rank whose own compute (forward and backward) took longest.
        compute = [sum(row[3 + TIMER_NAMES.index(name)] for name in COMPUTE_TIMERS) for row in rows] \
            if self.timers else seconds
        self.slowest = compute.index(max(compute))
        self.min_compute, self.max_compute = min(compute), max(compute)
        # A rank that stopped running is named apart: its tensor-parallel peers waited as long inside
        # the layers' all-reduces, so compute alone may name one of them.
        self.stalled_seconds = max(stalled)
        self.stalled_rank = stalled.index(self.stalled_seconds) if self.stalled_seconds else None

    @classmethod
    def gather(cls, seconds: float, memory: int, stalled: float, timers: list[float], world_size: int) -> RankStats:
        """One all-gather of every rank's numbers (a collective call)."""
        mine = torch.tensor([seconds, float(memory), stalled, *timers], dtype=torch.float64)
        if world_size == 1 or not torch.distributed.is_initialized():
            return cls([mine.tolist()])
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else mine.device
        everyone = torch.empty(world_size * len(mine), dtype=torch.float64, device=device)
        torch.distributed.all_gather_into_tensor(everyone, mine.to(device))
        return cls(everyone.view(world_size, len(mine)).tolist())


class MetricsLogger:
    """Rank-0 reporting of training and validation metrics."""

    def __init__(self, config, log_dir: str | None, start_iteration: int, rank_zero: bool, world_size: int,
                 wandb_id: str | None = None, timers=None):
        self.config = config
        self.timers = timers
        self.interval = IntervalStats()
        self.stalls: StallWatch | None = None
        self.rank_zero = rank_zero
        self.world_size = world_size
        self.start_iteration = start_iteration
        self.started = time.monotonic()
        self.path = Path(log_dir) / "metrics.jsonl" if log_dir else None
        self.progress = None
        self.wandb = self.tensorboard = None
        if not rank_zero:
            return
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(
                total=config.train_iters, initial=start_iteration, unit="it", dynamic_ncols=True, leave=False
            )
        if config.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=config.tensorboard_dir)
        if config.wandb_enabled:
            import wandb

            self.wandb = wandb.init(
                project=config.wandb_project,
                name=config.wandb_exp_name,
                mode=config.wandb_mode,
                dir=log_dir,
                config=config.to_dict(),
                id=wandb_id,
                resume="allow",
            )

    def _emit(self, record: dict) -> None:
        if self.path:
            with self.path.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "iteration"}, step=record["iteration"])
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, record["iteration"])

    def _print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.write(line)
        else:
            print(line, flush=True)

    def training_started(self) -> None:
        """Start counting stalls: from here on (start-up is not a stall)."""
        self.stalls = self.stalls or StallWatch()

    def train(self, iteration: int, loss: float, lr: float, grad_norm: float | None, seconds: float,
              flops: float, consumed_samples: int, tokens: int, skipped: int = 0) -> None:
        """Record one iteration of ``tokens`` tokens; every ``log_interval`` iterations and at the
        last one, print and emit the interval's means (a collective call: every rank calls it)."""
        self.interval.add(seconds, tokens, flops)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{loss:.4f}")
        if iteration % self.config.log_interval and iteration != self.config.train_iters:
            return
        interval, self.interval = self.interval, IntervalStats()
        timer_seconds = [self.timers(name).elapsed(reset=False) for name in TIMER_NAMES] if self.timers else []
        ranks = RankStats.gather(interval.seconds / interval.iterations, interval.memory_peak(),
                                 self.stalls.take() if self.stalls else 0.0,
                                 timer_seconds, self.world_size)
        timers_line = self._timers_line(interval.iterations)
        if not self.rank_zero:
            return
        step = interval.seconds / interval.iterations
        tflops = interval.flops / interval.seconds / self.world_size / 1e12
        peak = peak_flops_per_device(self.config)
        eta = step * (self.config.train_iters - iteration)
        record = {
            "iteration": iteration,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_sec": interval.tokens / interval.seconds,
            "tflops_per_device": tflops,
            "iteration_seconds": step,
            "iteration_seconds_min": ranks.min_seconds,
            "iteration_seconds_max": ranks.max_seconds,
            "slowest_rank": ranks.slowest,
            "stalled_rank": ranks.stalled_rank,
            "stalled_seconds": ranks.stalled_seconds,
            MEMORY_KEY: ranks.memory_gib,
            "elapsed_seconds": time.monotonic() - self.started,
            "consumed_samples": consumed_samples,
            "skipped_iterations": skipped,
            "flops_convention": FLOPS_CONVENTION,
            **{f"{name.replace('-', '_')}_seconds": value / interval.iterations
               for name, value in zip(TIMER_NAMES, ranks.timers, strict=False) if value},
        }
        if peak:
            record["mfu"] = tflops * 1e12 / peak
        self._emit(record)
        norm = "n/a" if grad_norm is None or math.isnan(grad_norm) else f"{grad_norm:.3f}"
        mfu = f" | MFU {record['mfu']:.1%}" if peak else ""
        compute = f"{ranks.min_compute / interval.iterations:.3f}-{ranks.max_compute / interval.iterations:.3f}"
        stalled = f"; rank {ranks.stalled_rank} stalled {ranks.stalled_seconds:.1f} s" if ranks.stalled_seconds else ""
        spread = f" ({ranks.min_seconds:.3f}-{ranks.max_seconds:.3f} s; compute {compute} s, slowest rank " \
                 f"{ranks.slowest}{stalled})" if self.world_size > 1 else ""
        self._print(
            f"iteration {iteration:>7d}/{self.config.train_iters} | loss {loss:.4f} | lr {lr:.3e} | "
            f"grad norm {norm} | {record['tokens_per_sec']:,.0f} tokens/s | {tflops:.3f} TFLOP/s/device "
            f"({FLOPS_CONVENTION}){mfu} | step {step:.3f} s{spread} | {MEMORY_LABEL} {ranks.memory_gib:.2f} GiB | "
            f"ETA {_duration(eta)}"
        )
        if timers_line:
            self._print(timers_line)

    def _timers_line(self, iterations: int) -> str | None:
        """With ``timing_log_level`` 1, Megatron-Core's block of the timers' times per iteration
        across ranks (a collective call); the timers are reset for the next interval either way."""
        if self.timers is None:
            return None
        if self.config.timing_log_level >= 1:
            return self.timers.get_all_timers_string(TIMER_NAMES, normalizer=iterations, reset=True)
        for name in TIMER_NAMES:
            self.timers(name).reset()
        return None

    def validation(self, iteration: int, val_loss: float) -> None:
        if not self.rank_zero:
            return
        self._emit({"iteration": iteration, "val_loss": val_loss})
        self._print(f"validation at iteration {iteration} | val loss {val_loss:.4f}")

    def message(self, text: str) -> None:
        if self.rank_zero:
            self._print(text)

    def close(self) -> None:
        if self.stalls is not None:
            self.stalls.close()
        if self.progress is not None:
            self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
