"""One training loop for pretraining (and, later, fine-tuning), made of Megatron-Core's own pieces.

Per iteration: ``zero_grad_buffer`` -> ``get_forward_backward_func()`` runs this rank's micro-batches
through its pipeline stage (1F1B p2p when PP > 1; interleaved 1F1B over the rank's model chunks with
``virtual_pipeline_model_parallel_size``); the last stage's model returns a per-token loss
(CWT or cross-entropy) and ``training/forward.loss_func`` returns ``(sum, tokens, report)`` ->
backward -> ``finalize_model_grads`` (DP reduce-scatter, SP-norm and tied-embedding all-reduces, 1/tokens
scaling over the global batch) -> ``optimizer.step()`` (clip, Adam, all-gather of updated shards) ->
``OptimizerParamScheduler.step`` -> metrics, validation, checkpoint.

The loop knows models through their family (:mod:`headless_megatron.models.registry`) only; what a
run starts from is :mod:`~headless_megatron.training.resume`'s, how a checkpoint is written
:mod:`~headless_megatron.training.checkpoint`'s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from headless_megatron.config import TrainConfig
from headless_megatron.config.megatron import kernel_backend, transformer_config
from headless_megatron.data.gpt_dataset import (
    build_gpt_datasets,
    check_data,
    check_tokenizer_matches_data,
    micro_batches,
    shut_down_workers,
)
from headless_megatron.models.registry import build_model_stage, family_of, validate_config
from headless_megatron.runtime.determinism import use_deterministic_algorithms
from headless_megatron.runtime.distributed import init_distributed, naming_lost_ranks, on_rank_zero_for_all
from headless_megatron.runtime.launch import launch_world_size
from headless_megatron.training.forward import forward_step
from headless_megatron.training.metrics import (
    CandidateCounter,
    MetricsLogger,
    head_flops,
    megatron_timers,
    transformer_flops_per_token,
)
from headless_megatron.training.optimizer import build_optimizer, build_scheduler, scheduler_increment
from headless_megatron.training.profiling import StepProfiler
from headless_megatron.training.resume import DataIdentity, resume
from headless_megatron.training.run_directory import (
    lock_run_directories,
    metrics_file,
    release_run_directories,
    wandb_run_id,
    write_resolved_config,
)
from headless_megatron.training.saving import RunSaves
from headless_megatron.training.signals import StopConditions, kill_helpers_at_exit


@dataclass
class RunSummary:
    """What a finished run tells its caller (rank 0 prints it)."""

    iterations: int
    final_loss: float
    val_loss: float | None
    checkpoint: str | None
    metrics: str | None
    losses: list[float]
    stopped_by: str = ""
    """Why the run stopped before ``train_iters`` (SIGTERM, SIGUSR1, exit_duration_in_mins,
    exit_interval), or "" when it completed."""
    skipped_iterations: int = 0


def start_trainer(config: TrainConfig) -> Trainer:
    """Validate ``config`` for this launch, start the parallel runtime and build this rank's
    :class:`Trainer` (model, optimizer, scheduler, data; the checkpoint to resume is loaded).

    The one way to start training in a process: ``pretrain``, ``bench train`` and the tests that
    drive a trainer step by step all start here, so what runs is what the CLI runs.
    """
    kill_helpers_at_exit()
    validate_config(config, launch_world_size())
    if config.deterministic_mode:
        use_deterministic_algorithms()
    device = init_distributed(config.layout, seed=config.seed, timeout_minutes=config.distributed_timeout_minutes)
    with naming_lost_ranks():
        return Trainer(config, device)


def pretrain(config: TrainConfig) -> RunSummary:
    """Validate ``config`` for this launch, start the parallel runtime and train."""
    trainer = start_trainer(config)
    with naming_lost_ranks():
        return trainer.train()


class NumericalError(RuntimeError):
    """Too many consecutive iterations with a NaN/Inf loss or gradient."""


class Trainer:
    """Builds model, optimizer, scheduler and data for ``config`` on this rank, and runs the loop."""

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config = config
        self.device = device
        self.family = family_of(config)
        check_data(config)  # before anything is built or loaded
        self.world_size = dist.get_world_size()
        self.num_microbatches = config.num_microbatches(self.world_size)  # at the full global batch
        self.tokenizer = self._tokenizer()
        self.vocab_size = config.vocab_size or self.tokenizer.vocab_size
        check_tokenizer_matches_data(config, self.tokenizer, self.vocab_size)
        self.padded_vocab = config.padded_vocab_size(self.vocab_size)
        self.directory_locks = on_rank_zero_for_all(lambda: lock_run_directories(config)) or []
        try:
            self._build(config, device, backend=kernel_backend(config.transformer_impl))
        except BaseException:
            release_run_directories(self.directory_locks, failed=True)
            raise

    def _build(self, config: TrainConfig, device: torch.device, backend: str) -> None:
        self.transformer_config = transformer_config(config, backend)
        self.transformer_config.finalize_model_grads_func = finalize_model_grads
        # One model chunk per virtual pipeline stage (interleaved 1F1B), else one per rank.
        virtual_stages = config.virtual_pipeline_model_parallel_size
        vp_stages = range(virtual_stages) if virtual_stages else [None]
        self.model_chunks = [self._wrap_chunk(build_model_stage(
            config, self.transformer_config, self.vocab_size, backend, vp_stage=vp_stage
        ).to(device), first=vp_stage in (None, 0)) for vp_stage in vp_stages]
        if config.overlap_grad_reduce:
            no_sync = [chunk.no_sync for chunk in self.model_chunks]
            self.transformer_config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        self.optimizer = build_optimizer(config, self.model_chunks, self.transformer_config.params_dtype)
        if config.fp16:
            self.transformer_config.grad_scale_func = self.optimizer.scale_loss
        self.scheduler = build_scheduler(config, self.optimizer)
        data = DataIdentity(config.seq_length, self.padded_vocab, getattr(self.tokenizer, "fingerprint", None))
        start = resume(config, self.model_chunks, self.optimizer, self.scheduler, data, self._say)
        if dist.get_rank() == 0:
            write_resolved_config(config)
        self.data_identity = data
        self.iteration, self.consumed_train_samples = start.iteration, start.consumed_train_samples
        self.skipped_iterations = self.skipped_in_a_row = 0
        self.train_data, self.valid_data, _ = build_gpt_datasets(config, self.tokenizer, self._train_samples_needed())
        self.train_data, self.valid_data = (
            self.family.wrap_data(config, self.tokenizer, windows) if windows is not None else None
            for windows in (self.train_data, self.valid_data)
        )
        self.candidates = None
        if config.loss == "cwt":  # K x U per micro-batch, for the FLOP count of the CWT matmul
            gathered = config.cwt_negatives == "data_parallel" and ps.get_data_parallel_world_size() > 1
            self.candidates = CandidateCounter(self.padded_vocab, ps.get_data_parallel_group() if gathered else None)
        # Megatron-LM's timers, on every rank (MetricsLogger reports them across ranks); Megatron-Core's
        # schedules and finalize_model_grads time their own parts through the TransformerConfig.
        self.timers = self.transformer_config.timers = megatron_timers(config.timing_log_option)
        self.eval_forward_step = partial(forward_step, device=device, family=self.family, candidates=self.candidates)
        self.forward_step = partial(self.eval_forward_step, batch_timer=self.timers("batch-generator"),
                                    profiled=config.profile)
        self.logger = MetricsLogger(
            config, config.metrics_dir, self.iteration, dist.get_rank() == 0, self.world_size,
            wandb_id=wandb_run_id(config.metrics_dir, dist.get_rank() == 0) if config.wandb_enabled else None,
            timers=self.timers,
        )
        self.saves = RunSaves(config, self.timers, self.logger.message)
        self.flops_per_token = transformer_flops_per_token(config)
        dp, rank = ps.get_data_parallel_world_size(), dist.get_rank()
        self.rampup = config.rampup_calculator(dp, rank) if config.rampup_batch_size else None
        self.global_batch = config.global_batch_size  # of the last iteration: ramp-up's while it lasts

    def _wrap_chunk(self, stage, first: bool) -> DistributedDataParallel:
        config = self.config
        if config.freeze_body:  # a probe: DDP and the optimizer see the output layer only
            for name, param in stage.named_parameters():
                param.requires_grad = name.startswith("output_layer.")
        if config.bf16 or config.fp16:
            stage = Float16Module(self.transformer_config, stage)
        return DistributedDataParallel(
            config=self.transformer_config,
            ddp_config=DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=config.overlap_grad_reduce,
                overlap_param_gather=config.overlap_param_gather,
                use_distributed_optimizer=config.use_distributed_optimizer,
            ),
            module=stage,
            disable_bucketing=not first,  # as Megatron-LM: later chunks' grads in one bucket each
        )

    @property
    def model(self) -> DistributedDataParallel:
        """This rank's model, when it is one chunk (no virtual pipeline stages)."""
        if len(self.model_chunks) != 1:
            raise AttributeError("model: this rank holds several model chunks; use model_chunks")
        return self.model_chunks[0]

    def _data_iterators(self, data):
        """What the schedule reads: one iterator, or one per model chunk (each replays the same
        micro-batches, from which the first chunk takes the tokens and the last one the labels)."""
        if len(self.model_chunks) == 1:
            return data()
        return [data() for _ in self.model_chunks]

    def _tokenizer(self):
        from headless_megatron.data.tokenizer import load_tokenizer, tokenizer_for_dataset

        if self.config.tokenizer:
            return load_tokenizer(self.config.tokenizer)
        if self.config.mock_data:
            return None
        return tokenizer_for_dataset(self.config.data_blend()[0][0])

    @staticmethod
    def _say(line: str) -> None:
        if dist.get_rank() == 0:
            print(line, flush=True)

    def _run_schedule(self, data, num_microbatches: int, forward_only: bool) -> torch.Tensor:
        """Forward (and backward) over ``num_microbatches``; on all ranks, the global [loss sum, tokens,
        K x U, gradient buffers with a NaN/Inf] in one all-reduce."""
        if self.candidates is not None:
            self.candidates.reset()
        reports = get_forward_backward_func()(
            forward_step_func=self.eval_forward_step if forward_only else self.forward_step,
            data_iterator=data,
            model=self.model_chunks,
            num_microbatches=num_microbatches,
            seq_length=self.config.seq_length,
            micro_batch_size=self.config.micro_batch_size,
            forward_only=forward_only,
        )
        totals = torch.zeros(4, device=self.device)
        # Each DP replica's last stage reports once (from TP rank 0); the world sum is the global batch.
        if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
            products = self.candidates.total(self.device) if self.candidates is not None else totals[2]
            totals[:3] = torch.cat([torch.stack([r["lm loss"] for r in reports]).sum(0), products.view(1)])
        if not forward_only:  # this rank's gradient buffers holding a NaN/Inf, counted on the device
            totals[3] = sum((~torch.isfinite(buffer.grad_data)).any().float()
                            for chunk in self.model_chunks for buffer in chunk.buffers)
        dist.all_reduce(totals)
        return totals

    def evaluate(self) -> float:
        config = self.config
        data = self._data_iterators(partial(
            micro_batches, self.valid_data, 0, config.micro_batch_size, num_workers=0,
            total_samples=config.eval_iters * config.global_batch_size,
        ))
        for chunk in self.model_chunks:
            chunk.eval()
        totals = torch.zeros(4, device=self.device)
        with torch.no_grad():
            for _ in range(config.eval_iters):
                totals += self._run_schedule(data, self.num_microbatches, forward_only=True)
        for chunk in self.model_chunks:
            chunk.train()
        return (totals[0] / totals[1]).item()

    def _train_samples_needed(self) -> int:
        """Samples of the train split the run reads to its end: those read before it resumed, then a
        global batch per remaining iteration (the same as train_iters x global_batch_size, unless
        the batch size changed on resume)."""
        config = self.config
        if config.train_samples is not None:  # the ramp-up included
            return max(config.train_samples, self.consumed_train_samples)
        remaining = (config.train_iters - self.iteration) * config.global_batch_size
        return max(config.train_iters * config.global_batch_size, self.consumed_train_samples + remaining)

    def save(self, iteration: int) -> None:
        """Save ``iteration`` (``training/saving.py``: at once or in the background)."""
        common = {"config": self.config.to_dict(), "consumed_train_samples": self.consumed_train_samples,
                  "data": self.data_identity.to_dict()}
        self.saves.save(iteration, self.model_chunks, self.optimizer, self.scheduler, common)

    def finish_saves(self) -> None:
        """Wait for the checkpoint being written in the background, if any (collective)."""
        self.saves.finish()

    def train_step(self, data) -> tuple[float, float | None, float]:
        """One optimizer step over a global batch; returns (mean loss, grad norm, FLOPs).

        An iteration whose loss or gradients are not finite on any rank is skipped by every rank
        (no optimizer or scheduler step; its data is consumed), and after ``max_skipped_iters``
        such iterations in a row the run stops with :class:`NumericalError`.
        """
        for chunk in self.model_chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        if self.rampup is not None:  # Megatron-Core's calculator, at the samples read so far
            self.rampup.update(self.consumed_train_samples, consistency_check=True)
            self.global_batch = self.rampup.get_current_global_batch_size()
        num_microbatches = self.num_microbatches * self.global_batch // self.config.global_batch_size
        totals = self._run_schedule(data, num_microbatches, forward_only=False)
        self.iteration += 1
        self.consumed_train_samples += self.global_batch  # read, even when the step is skipped
        # The iteration's one host sync: the NaN/Inf check rides on it, with no collective of its own.
        loss_sum, loss_tokens, candidate_products, nonfinite_gradients = totals.tolist()
        tokens = self.global_batch * self.config.seq_length
        projected = self.family.projected_positions(self.config, loss_tokens, tokens)
        flops = self.flops_per_token * tokens + head_flops(self.config, self.padded_vocab, projected,
                                                           candidate_products)
        loss = loss_sum / loss_tokens if loss_tokens else float("nan")
        if not math.isfinite(loss_sum) or nonfinite_gradients:
            self.skipped_iterations += 1
            self.skipped_in_a_row += 1
            self.logger.message(f"iteration {self.iteration}: NaN/Inf loss or gradient, skipped "
                                f"({self.skipped_in_a_row} in a row, {self.skipped_iterations} in all)")
            if self.skipped_in_a_row >= self.config.max_skipped_iters:
                raise NumericalError(
                    f"max_skipped_iters: {self.skipped_in_a_row} consecutive iterations had a NaN/Inf loss or "
                    f"gradient (last: {self.iteration}); lower lr or check the data, then resume from the last "
                    "checkpoint"
                )
            return loss, None, flops
        self.skipped_in_a_row = 0
        self.timers("optimizer").start()
        with torch.profiler.record_function("optimizer"):
            update_ok, grad_norm, _ = self.optimizer.step()
        self.timers("optimizer").stop()
        if update_ok:
            self.scheduler.step(increment=scheduler_increment(self.config, self.global_batch))
        return loss, grad_norm, flops

    def train_data_iterator(self):
        return self._data_iterators(partial(
            micro_batches, self.train_data, self.consumed_train_samples, self.config.micro_batch_size,
            self.config.num_workers, total_samples=self._train_samples_needed(),
        ))

    def train(self) -> RunSummary:
        config = self.config
        # A signal while the model was built or the checkpoint loaded was recorded since the rank's
        # first line (record_stop_signals_during_start_up): it stops the run after this iteration.
        stop = StopConditions(config.exit_signal_handler, config.exit_duration_in_mins, config.exit_interval)
        data = self.train_data_iterator()
        profiler = StepProfiler(config, dist.get_rank(), self.iteration + 1)
        losses, val_loss, saved_at, stopped_by = [], None, self.iteration, ""
        for chunk in self.model_chunks:
            chunk.train()
        self.logger.training_started()
        try:
            while self.iteration < config.train_iters:
                iteration_started = time.perf_counter()
                loss, grad_norm, flops = self.train_step(data)
                losses.append(loss)
                profiler.step()
                self.logger.train(
                    self.iteration, loss, self.optimizer.param_groups[0]["lr"], grad_norm,
                    time.perf_counter() - iteration_started, flops, self.consumed_train_samples,
                    self.global_batch * config.seq_length, self.skipped_iterations,
                )
                # Every eval_interval, and after the last iteration (Megatron-LM's final evaluation).
                last = self.iteration == config.train_iters
                if config.eval_interval and config.eval_iters and (self.iteration % config.eval_interval == 0 or last):
                    val_loss = self.evaluate()
                    self.logger.validation(self.iteration, val_loss)
                self.saves.poll()
                if config.save and config.save_interval and self.iteration % config.save_interval == 0:
                    self.save(self.iteration)
                    saved_at = self.iteration
                stopped_by = stop.reason(self.iteration, self.device)
                if stopped_by:
                    self.logger.message(
                        f"stopping after iteration {self.iteration}: {stopped_by}"
                        + (f"; saving, resume with --load {config.save}" if config.save
                           else "; nothing saved (no save)")
                    )
                    break
            if config.save and saved_at != self.iteration:
                self.save(self.iteration)
            self.finish_saves()  # the run ends when its last checkpoint is written
        finally:
            profiler.close()
            stop.restore()
            shut_down_workers(data)
            release_run_directories(self.directory_locks)
        self.logger.close()
        metrics = metrics_file(config)
        return RunSummary(self.iteration, losses[-1] if losses else float("nan"), val_loss, self.saves.latest,
                          None if metrics is None else str(metrics),
                          losses, stopped_by, self.skipped_iterations)
