"""Megatron-Core's optimizer and learning-rate schedule for a config: the keys mapped onto
``OptimizerConfig`` and ``OptimizerParamScheduler``, nothing added."""

from __future__ import annotations

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from headless_megatron.config import TrainConfig


def build_optimizer(config: TrainConfig, model_chunks, params_dtype):
    """``get_megatron_optimizer`` over the (DDP-wrapped) model chunks: Adam or SGD, gradient
    clipping, mixed precision, and the distributed optimizer when ``use_distributed_optimizer``."""
    return get_megatron_optimizer(
        OptimizerConfig(
            optimizer=config.optimizer,
            lr=config.lr,
            min_lr=config.min_lr,
            weight_decay=config.weight_decay,
            adam_beta1=config.adam_beta1,
            adam_beta2=config.adam_beta2,
            adam_eps=config.adam_eps,
            sgd_momentum=config.sgd_momentum,
            clip_grad=config.clip_grad,
            bf16=config.bf16,
            fp16=config.fp16,
            params_dtype=params_dtype,
            initial_loss_scale=config.initial_loss_scale,
            use_distributed_optimizer=config.use_distributed_optimizer,
        ),
        model_chunks,
    )


def build_scheduler(config: TrainConfig, optimizer) -> OptimizerParamScheduler:
    """Warm-up from 0 to ``lr`` over ``lr_warmup_iters``, then ``lr_decay_style`` down to ``min_lr``
    at ``lr_decay_iters`` (``train_iters`` when unset; with WSD, ``lr`` until the last
    ``lr_wsd_decay_iters`` of them); constant weight decay. With ``train_samples`` the same in
    samples (``lr_*_samples``), as Megatron-LM counts them: the loop then steps the scheduler by
    each iteration's global batch (:func:`scheduler_increment`)."""
    if config.train_samples is None:
        warmup, decay, wsd, total = config.lr_warmup_iters, config.decay_iters, config.lr_wsd_decay_iters, \
            config.train_iters
    else:
        warmup, decay, wsd, total = config.lr_warmup_samples, config.lr_decay_samples or config.train_samples, \
            config.lr_wsd_decay_samples, config.train_samples
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=config.lr,
        min_lr=config.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style=config.lr_decay_style,
        start_wd=config.weight_decay,
        end_wd=config.weight_decay,
        wd_incr_steps=total,
        wd_incr_style="constant",
        wsd_decay_steps=wsd,
        lr_wsd_decay_style=config.lr_wsd_decay_style,
    )


def scheduler_increment(config: TrainConfig, global_batch: int) -> int:
    """How far one optimizer step over ``global_batch`` samples moves the schedule: one iteration,
    or with ``train_samples`` its samples."""
    return 1 if config.train_samples is None else global_batch
