"""The checks of a training configuration.

Two kinds, both raising a one-line :class:`~headless_megatron.config.schema.ConfigError` that starts
with the key at fault:

- :func:`checked_value`: one field's value, converted to its type and checked against its choices
  and range (``_RANGES``), whenever a :class:`~headless_megatron.config.schema.TrainConfig` is built;
- :func:`validate`: every rule that involves several fields or the world size, and the model
  family's own keys (:meth:`headless_megatron.models.family.ModelFamily.validate`). It needs no
  process group and builds nothing, so a launcher runs it before any rank is spawned.

A new key's cross-field rule goes into the ``_validate_*`` function of its concern below, or into
its family's ``validate`` when it belongs to one model family.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from headless_megatron.config.schema import TrainConfig, fail, field_types

# ---- Cross-field checks ----


def validate(config: TrainConfig, world_size: int) -> None:
    """Check what involves several fields or the world size, and the model family's own keys;
    raises :class:`ConfigError`."""
    from headless_megatron.models.family import family_of

    _validate_model(config)
    _validate_objective(config)
    _validate_training(config)
    _validate_layout(config, world_size)
    _validate_kernels(config)
    family_of(config).validate(config)


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
    if config.position_embedding_type == "learned_absolute" and config.max_positions < config.seq_length:
        fail(
            "max_position_embeddings", f"{config.max_positions} is below seq_length "
            f"{config.seq_length}; a learned position table needs a row per position"
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
    if config.data_path is None and not config.mock_data:
        fail("data_path", "required unless mock_data; pass --data-path PREFIX (or --mock-data)")
    if config.mock_data and config.vocab_size is None and config.tokenizer is None:
        fail("vocab_size", "mock_data needs vocab_size or tokenizer to know the vocabulary")
    if config.eval_iters and split_shares(config.split)[1] == 0:
        fail(
            "eval_iters", f"{config.eval_iters} validation batches, but split '{config.split}' "
            "leaves no validation data; set eval_iters 0 or give split a validation share"
        )
    if config.lr_warmup_iters >= config.decay_iters:
        fail(
            "lr_warmup_iters", f"{config.lr_warmup_iters} must be below lr_decay_iters "
            f"{config.decay_iters} (train_iters when unset), as Megatron's scheduler requires"
        )
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
    if config.finetune and config.load is None:
        fail(
            "finetune", "needs load (the checkpoint whose weights to start from); to start "
            "from another run's checkpoint set pretrained instead"
        )
    _validate_recompute(config)

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
    if vpp is not None and microbatches % pp:
        fail(
            "global_batch_size", f"gives {microbatches} micro-batches per step, which the "
            f"interleaved schedule needs to be a multiple of pipeline_model_parallel_size {pp}"
        )


def _validate_kernels(config: TrainConfig) -> None:
    """Transformer Engine, when asked for, must be usable here: a launcher checks the node its
    ranks run on, and without this check the ranks would find out after building the model."""
    needs_te = config.transformer_impl == "transformer_engine" or (
        config.fp8_format is not None and config.transformer_impl == "auto"
    )
    if not needs_te:
        return
    from headless_megatron.config.megatron import transformer_engine_available

    if transformer_engine_available():
        return
    if config.transformer_impl == "transformer_engine":
        fail(
            "transformer_impl", "transformer_engine needs a GPU and an importable transformer_engine; "
            "use transformer_impl: local (or auto)"
        )
    fail("fp8_format", "needs Transformer Engine, which needs a GPU and an importable transformer_engine here")


# ---- Single fields ----

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _is_positive(value) -> bool:
    return value > 0


def _is_non_negative(value) -> bool:
    return value >= 0


def _is_fraction(value) -> bool:
    return 0 <= value < 1


def _is_open_fraction(value) -> bool:
    return 0 < value < 1


def _is_positive_fraction(value) -> bool:
    return 0 < value <= 1


# Range checks of single fields, done whenever a TrainConfig is built: (predicate, what is expected).
_RANGES = {
    **dict.fromkeys(
        (
            "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
            "kv_channels", "seq_length", "max_position_embeddings", "rotary_base",
            "make_vocab_size_divisible_by", "vocab_size", "tensor_model_parallel_size",
            "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
            "micro_batch_size", "global_batch_size", "train_iters", "fp8_amax_history_len",
            "recompute_num_layers", "lr_decay_iters", "save_interval", "max_skipped_iters",
            "log_interval", "eval_interval", "exit_interval",
        ),
        (_is_positive, "a positive integer"),
    ),
    **dict.fromkeys(
        (
            "norm_epsilon", "init_method_std", "cwt_temperature", "initial_loss_scale", "lr",
            "adam_eps", "exit_duration_in_mins", "distributed_timeout_minutes",
        ),
        (_is_positive, "a positive number"),
    ),
    **dict.fromkeys(
        ("seed", "lr_warmup_iters", "num_workers", "eval_iters"), (_is_non_negative, "an integer >= 0")
    ),
    **dict.fromkeys(("min_lr", "weight_decay", "clip_grad"), (_is_non_negative, "a number >= 0")),
    **dict.fromkeys(
        ("hidden_dropout", "attention_dropout", "adam_beta1", "adam_beta2", "sgd_momentum"),
        (_is_fraction, "a number in [0, 1)"),
    ),
    "mask_prob": (_is_open_fraction, "a number in (0, 1)"),
    "rotary_percent": (_is_positive_fraction, "a number in (0, 1]"),
}


def closest(word: str, candidates) -> str | None:
    """The candidate closest to ``word`` (a typo's hint), or None when none is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def checked_value(name: str, value: Any) -> Any:
    """value converted to the field's type (strings from flags and YAML 1.1's '3e-4' included) and
    checked against its choices and range."""
    field_type = field_types()[name]
    if value is None or (
        field_type.optional and isinstance(value, str) and value.lower() in ("none", "null")
    ):
        if field_type.optional:
            return None
        fail(name, "cannot be none; leave the key out for its default")
    kind = field_type.kind
    if kind is bool:
        value = _as_bool(name, value)
    elif kind is int:
        value = _as_int(name, value)
    elif kind is float:
        value = _as_float(name, value)
    elif kind is list:
        value = _as_string_list(name, value)
    else:
        value = _as_string(name, value, field_type.choices)
    predicate, expected = _RANGES.get(name, (None, None))
    if predicate is not None and not predicate(value):
        fail(name, f"expected {expected}, got {value}")
    if name == "data_path":
        parse_blend(value)
    if name == "split":
        split_shares(value)
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    fail(name, f"expected true or false, got {value!r}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    fail(name, f"expected an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:  # PyYAML reads 3e-4 as a string (YAML 1.1 wants 3.0e-4); accept it as a number
            return float(value)
        except ValueError:
            pass
    fail(name, f"expected a number, got {value!r}")


def _as_string(name: str, value: Any, choices: tuple[str, ...] | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        fail(name, f"expected {'one of ' + ', '.join(choices) if choices else 'a string'}, got {value!r}")
    value = str(value)
    if choices and value not in choices:
        close = closest(value, choices)
        hint = f" (did you mean {close!r}?)" if close else ""
        fail(name, f"expected one of {', '.join(choices)}, got {value!r}{hint}")
    return value


def _as_string_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or any(
        isinstance(item, (bool, list, dict)) or item is None for item in value
    ):
        fail(name, f"expected one or more values, got {value!r}")
    return [str(item) for item in value]


def parse_blend(items: list[str]) -> tuple[list[str], list[float] | None]:
    def weight(item: str) -> float | None:
        try:
            return float(item)
        except ValueError:
            return None

    example = "expected PREFIX [PREFIX ...] or WEIGHT PREFIX [WEIGHT PREFIX ...]"
    if weight(items[0]) is None:
        stray = next((item for item in items if weight(item) is not None), None)
        if stray is not None:
            fail("data_path", f"{example}; {stray!r} is a weight but the first item is a prefix")
        return list(items), None
    weights, prefixes = items[0::2], items[1::2]
    if len(weights) != len(prefixes):
        fail("data_path", f"{example}; the last weight {weights[-1]!r} has no prefix")
    for w, prefix in zip(weights, prefixes):
        if weight(w) is None or weight(prefix) is not None:
            fail("data_path", f"{example}; got {w!r} {prefix!r} where a WEIGHT PREFIX pair belongs")
        if weight(w) <= 0:
            fail("data_path", f"weights must be positive, got {w} for {prefix!r}")
    return prefixes, [weight(w) for w in weights]


def split_shares(split: str) -> list[float]:
    """split as three shares (train, validation, test); raises on a malformed split."""
    try:
        shares = [float(part) for part in split.split(",")]
    except ValueError:
        shares = []
    if not 1 <= len(shares) <= 3 or any(share < 0 for share in shares) or shares[0] <= 0:
        fail("split", f"expected up to three comma-separated shares with train > 0 (e.g. 969,30,1), got {split!r}")
    return shares + [0.0] * (3 - len(shares))


