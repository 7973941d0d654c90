"""The rules of a training configuration that involve several fields or the world size.

:func:`validate` raises a one-line :class:`~headless_megatron.config.fields.ConfigError` that starts
with the key at fault. It needs no process group and builds nothing, so a launcher runs it before any
rank is spawned. One field's own type, choices and range are checked earlier, whenever a
:class:`~headless_megatron.config.schema.TrainConfig` is built (:mod:`~headless_megatron.config.fields`);
a model family's own keys later, by the family
(:func:`headless_megatron.models.registry.validate_config` runs this and the family's checks).

A new key's cross-field rule goes into the ``_validate_*`` function of its concern below, or into
its family's ``validate`` when it belongs to one model family.
"""

from __future__ import annotations

import math

from headless_megatron.config.fields import fail, split_shares
from headless_megatron.config.megatron import kernel_backend
from headless_megatron.config.schema import TrainConfig

# ---- Cross-field checks ----


def validate(config: TrainConfig, world_size: int) -> None:
    """Check what involves several fields or the world size; raises :class:`ConfigError`."""
    _validate_model(config)
    _validate_objective(config)
    _validate_training(config)
    _validate_layout(config, world_size)
    _validate_profile(config, world_size)
    _validate_kernels(config)


def _validate_model(config: TrainConfig) -> None:
    tp = config.tensor_model_parallel_size
    heads, groups = config.num_attention_heads, config.query_groups
    if config.kv_channels is None and config.hidden_size % heads:
        fail(
            "hidden_size", f"{config.hidden_size} is not divisible by num_attention_heads "
            f"{heads}; change one of them or set kv_channels"
        )
    if heads % groups:
        fail("num_query_groups", f"{groups} does not divide num_attention_heads {heads}")
    if config.ffn_size < 1:
        fail(
            "ffn_hidden_size", f"the SwiGLU default int(4 x {config.hidden_size} x 2/3 / 64) x 64 "
            "is 0 for so small a hidden_size; set ffn_hidden_size"
        )
    if config.max_positions < config.seq_length:
        learned = config.position_embedding_type == "learned_absolute"
        table = ("a learned position table needs a row per position" if learned
                 else "the model (and its Hugging Face export) would claim fewer positions than it is trained on")
        fail(
            "max_position_embeddings", f"{config.max_positions} is below seq_length {config.seq_length}; {table}; "
            "raise it or leave it unset"
        )
    for key, size, what in (
        ("num_attention_heads", heads, "attention heads"),
        ("num_query_groups", groups, "key/value heads"),
        ("ffn_hidden_size", config.ffn_size, "MLP columns"),
    ):
        if size % tp:
            fail(
                key, f"{size} is not divisible by tensor_model_parallel_size {tp}; each TP "
                f"rank holds an equal share of the {what}"
            )
    if config.make_vocab_size_divisible_by % tp:
        fail(
            "make_vocab_size_divisible_by", f"{config.make_vocab_size_divisible_by} is not "
            f"divisible by tensor_model_parallel_size {tp}; the padded vocabulary is split "
            f"evenly over TP ranks: use a multiple of {tp}, e.g. "
            f"{math.lcm(config.make_vocab_size_divisible_by, tp)}"
        )
    if config.fp8_format is not None and config.transformer_impl == "local":
        fail("fp8_format", "needs Transformer Engine; set transformer_impl auto or transformer_engine")
    if config.fp8_format is not None and config.transformer_block_type == "post_ln":
        fail("fp8_format", "needs Transformer Engine layers, and post_ln layers are Megatron-Core's local ones")
    if config.openai_gelu and config.swiglu:
        fail("openai_gelu", "chooses the GELU of a non-gated MLP; set swiglu false with it, or drop it")

def _validate_objective(config: TrainConfig) -> None:
    if config.loss == "cwt" and config.untie_embeddings_and_output_weights:
        fail(
            "untie_embeddings_and_output_weights", "loss cwt scores against the input "
            "embeddings and has no output layer to untie; set it false or use loss ce"
        )
    if config.freeze_body:
        if config.pretrained is None:
            fail("freeze_body", "needs pretrained (the checkpoint whose body stays frozen)")
        if config.loss != "ce" or not config.untie_embeddings_and_output_weights:
            fail(
                "freeze_body", "trains an output layer only: set loss ce and "
                "untie_embeddings_and_output_weights true"
            )

def _validate_training(config: TrainConfig) -> None:
    if config.bf16 and config.fp16:
        fail("fp16", "cannot be combined with bf16; choose one")
    if config.optimizer == "sgd" and config.use_distributed_optimizer:
        fail("optimizer", "sgd needs use_distributed_optimizer false (Megatron-Core shards Adam's state only); "
             "pass --no-use-distributed-optimizer")
    if config.data_path is None and not config.mock_data:
        fail("data_path", "required unless mock_data; pass --data-path PREFIX (or --mock-data)")
    if config.mock_data and config.vocab_size is None and config.tokenizer is None:
        fail("vocab_size", "mock_data needs vocab_size or tokenizer to know the vocabulary")
    if config.eval_iters and split_shares(config.split)[1] == 0:
        fail(
            "eval_iters", f"{config.eval_iters} validation batches, but split '{config.split}' "
            "leaves no validation data; set eval_iters 0 or give split a validation share"
        )
    _validate_samples(config)
    if config.lr_warmup_iters >= config.decay_iters:
        fail(
            "lr_warmup_iters", f"{config.lr_warmup_iters} must be below lr_decay_iters "
            f"{config.decay_iters} (train_iters when unset), as Megatron's scheduler requires"
        )
    if config.lr_decay_style == "WSD" and config.lr_wsd_decay_iters is None and config.train_samples is None:
        fail("lr_wsd_decay_iters", "required with lr_decay_style WSD: the iterations of the final decay, at the end "
             "of lr_decay_iters (train_iters when unset)")
    if config.lr_wsd_decay_iters is not None and config.lr_decay_style != "WSD":
        fail("lr_wsd_decay_iters", f"applies to lr_decay_style WSD only, not {config.lr_decay_style}")
    wsd_iters = config.lr_wsd_decay_iters
    if wsd_iters is not None and wsd_iters > config.decay_iters - config.lr_warmup_iters:
        fail("lr_wsd_decay_iters", f"{config.lr_wsd_decay_iters} does not fit after the {config.lr_warmup_iters} "
             f"warmup iterations in lr_decay_iters {config.decay_iters} (train_iters when unset)")
    if config.min_lr > config.lr:
        fail("min_lr", f"{config.min_lr} is above lr {config.lr}")
    if config.overlap_param_gather and not (config.use_distributed_optimizer and config.overlap_grad_reduce):
        fail("overlap_param_gather", "needs use_distributed_optimizer and overlap_grad_reduce")
    # Megatron DDP waits for a parameter's all-gather in the forward pre-hook of the module that
    # owns it; with loss cwt the last stage's tied copy of the embeddings belongs to an output
    # layer whose forward never runs, so CWT would read it before its all-gather finished.
    if config.overlap_param_gather and config.pipeline_model_parallel_size > 1 and config.loss == "cwt":
        fail(
            "overlap_param_gather", "cannot be combined with pipeline_model_parallel_size > 1 and "
            "loss cwt (the last stage's copy of the embeddings would be read before its all-gather); "
            "drop --overlap-param-gather"
        )
    if config.override_opt_param_scheduler and config.use_checkpoint_opt_param_scheduler:
        fail(
            "override_opt_param_scheduler", "and use_checkpoint_opt_param_scheduler contradict each other; "
            "keep the one that says which schedule a resumed run follows"
        )
    _validate_retention(config)
    if config.finetune and config.load is None:
        fail(
            "finetune", "needs load (the checkpoint whose weights to start from); to start "
            "from another run's checkpoint set pretrained instead"
        )
    _validate_recompute(config)

def _validate_samples(config: TrainConfig) -> None:
    """Iteration-based or sample-based training, never a mix (Megatron-LM's rules)."""
    if config.train_iters is None:
        fail("train_iters", "required (or train_samples)")
    by_samples = ("lr_warmup_samples", "lr_decay_samples", "lr_wsd_decay_samples", "rampup_batch_size")
    by_iterations = ("lr_warmup_iters", "lr_decay_iters", "lr_wsd_decay_iters")
    if config.train_samples is None:
        for key in by_samples:
            if getattr(config, key):
                fail(key, "needs sample-based training: set train_samples instead of train_iters")
        return
    if config.train_iters != config.iterations_for_samples():
        fail("train_iters", f"{config.train_iters} is set by train_samples {config.train_samples} "
             f"({config.iterations_for_samples()} iterations); give one of them")
    for key in by_iterations:
        if getattr(config, key):
            samples_key = key.replace("_iters", "_samples")
            fail(key, f"with train_samples the schedule counts samples: use {samples_key}")
    decay = config.lr_decay_samples or config.train_samples
    if config.lr_warmup_samples >= decay:
        fail("lr_warmup_samples", f"{config.lr_warmup_samples} must be below lr_decay_samples {decay} "
             "(train_samples when unset)")
    wsd = config.lr_wsd_decay_samples
    if (config.lr_decay_style == "WSD") != (wsd is not None):
        fail("lr_wsd_decay_samples", "goes with lr_decay_style WSD, and WSD needs it with train_samples")
    if wsd is not None and wsd > decay - config.lr_warmup_samples:
        fail("lr_wsd_decay_samples", f"{wsd} does not fit after the {config.lr_warmup_samples} warmup samples in "
             f"lr_decay_samples {decay} (train_samples when unset)")


def _validate_profile(config: TrainConfig, world_size: int) -> None:
    if not config.profile:
        return
    if config.profile_step_end <= config.profile_step_start:
        fail("profile_step_end",
             f"{config.profile_step_end} must be above profile_step_start {config.profile_step_start}")
    outside = [rank for rank in config.profile_ranks or [] if not 0 <= rank < world_size]
    if outside:
        fail("profile_ranks", f"rank {outside[0]} does not exist in a world of {world_size} ranks")
    if config.use_pytorch_profiler and not (config.tensorboard_dir or config.metrics_dir):
        fail("profile", "needs tensorboard_dir, log_dir or save for the traces")


def _validate_retention(config: TrainConfig) -> None:
    if config.keep_checkpoint_interval is not None and config.keep_last_checkpoints is None:
        fail("keep_checkpoint_interval", "only thins out checkpoints with keep_last_checkpoints (without it every "
             "checkpoint is kept); set --keep-last-checkpoints too")
    if config.keep_last_checkpoints is not None and config.save is None:
        fail("keep_last_checkpoints", "needs save (the directory whose checkpoints it deletes)")
    interval, every = config.keep_checkpoint_interval, config.save_interval
    if interval is not None and every is not None and interval % every:
        fail("keep_checkpoint_interval", f"{interval} is not a multiple of save_interval {every}, so most of the "
             f"checkpoints it would keep are never saved; use a multiple of {every}")


def _validate_recompute(config: TrainConfig) -> None:
    granularity, method, count = (
        config.recompute_granularity, config.recompute_method, config.recompute_num_layers,
    )
    if granularity == "full" and (method is None or count is None):
        fail(
            "recompute_granularity", "full needs recompute_method (uniform or block) and "
            "recompute_num_layers"
        )
    if granularity != "full" and (method is not None or count is not None):
        key = "recompute_method" if method is not None else "recompute_num_layers"
        fail(key, "applies only with recompute_granularity full")
    layers_per_chunk = config.num_layers // (
        config.pipeline_model_parallel_size * (config.virtual_pipeline_model_parallel_size or 1)
    )
    if count is not None and count > layers_per_chunk:
        fail(
            "recompute_num_layers", f"{count} exceeds the {layers_per_chunk} layers of each "
            "pipeline stage"
        )


def _validate_layout(config: TrainConfig, world_size: int) -> None:
    tp, pp, vpp = (
        config.tensor_model_parallel_size,
        config.pipeline_model_parallel_size,
        config.virtual_pipeline_model_parallel_size,
    )
    if config.sequence_parallel and tp == 1:
        fail(
            "sequence_parallel", "needs tensor_model_parallel_size > 1; pass "
            "--no-sequence-parallel or raise --tensor-model-parallel-size"
        )
    if config.sequence_parallel and config.seq_length % tp:
        fail(
            "seq_length", f"{config.seq_length} is not divisible by tensor_model_parallel_size "
            f"{tp}, which sequence_parallel splits it over"
        )
    if vpp is not None and pp == 1:
        fail("virtual_pipeline_model_parallel_size", "needs pipeline_model_parallel_size > 1")
    chunks = pp * (vpp or 1)
    if config.num_layers % chunks:
        stages = f"pipeline_model_parallel_size {pp}" if vpp is None else (
            f"pipeline x virtual pipeline size = {pp} x {vpp} = {chunks}"
        )
        fail("num_layers", f"{config.num_layers} is not divisible by {stages}")
    microbatches = config.num_microbatches(world_size)
    if config.rampup_batch_size:
        start, increment, _ = config.rampup_batch_size
        per_pass = config.micro_batch_size * config.data_parallel_size(world_size)
        uneven = [size for size in range(start, config.global_batch_size, increment) if size % per_pass]
        if uneven:
            fail("rampup_batch_size", f"the ramp's global batch of {uneven[0]} is not a multiple of micro_batch_size "
                 f"x data-parallel size = {per_pass}; use a start and increment that are multiples of {per_pass}")
        sizes = range(start, config.global_batch_size, increment)
        if vpp is not None and any((size // per_pass) % pp for size in sizes):
            fail("rampup_batch_size", f"the interleaved schedule needs every global batch of the ramp to be a "
                 f"multiple of {per_pass * pp} (micro-batches a multiple of pipeline_model_parallel_size {pp})")
    if vpp is not None and microbatches % pp:
        fail(
            "global_batch_size", f"gives {microbatches} micro-batches per step, which the "
            f"interleaved schedule needs to be a multiple of pipeline_model_parallel_size {pp}"
        )


def _validate_kernels(config: TrainConfig) -> None:
    """Transformer Engine, when asked for, must be usable here: a launcher checks the node its
    ranks run on, and without this check the ranks would find out after building the model."""
    if config.transformer_impl == "local" or (config.transformer_impl == "auto" and config.fp8_format is None):
        return  # nothing to ask of the node (and no need to import torch to ask it)
    if kernel_backend(config.transformer_impl) != "transformer_engine":
        fail("fp8_format", "needs Transformer Engine, which needs a GPU and an importable transformer_engine here")
