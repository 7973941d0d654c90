"""The values of single configuration fields: what a field holds, how a value from YAML or a flag
becomes it, its range, and the one-line :class:`ConfigError` that names the key at fault.

The bottom of the config layer: :mod:`~headless_megatron.config.schema` checks every field with
:func:`checked_value` when a :class:`~headless_megatron.config.schema.TrainConfig` is built, and the
rest of the package raises its configuration mistakes through :func:`fail`.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import types
import typing
from typing import Any, Literal, NamedTuple

from headless_megatron.errors import UserError


class ConfigError(UserError):
    """A configuration mistake, in one line that starts with the key (or file) at fault."""


def fail(key: str, problem: str) -> typing.NoReturn:
    """Raise the one-line :class:`ConfigError` ``key: problem``."""
    raise ConfigError(f"{key}: {problem}")


class FieldType(NamedTuple):
    """What a field holds, read from its annotation."""

    kind: type  # bool, int, float, str or list
    optional: bool
    choices: tuple[str, ...] | None
    item: type = str  # of a list: str or int


@functools.cache
def annotated_types(dataclass: type) -> dict[str, FieldType]:
    """Each field's :class:`FieldType` in ``dataclass``, in declaration order."""
    types_by_name = {}
    for name, hint in typing.get_type_hints(dataclass).items():
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if optional:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if typing.get_origin(hint) is Literal:
            types_by_name[name] = FieldType(str, optional, typing.get_args(hint))
        elif typing.get_origin(hint) is list:
            types_by_name[name] = FieldType(list, optional, None, typing.get_args(hint)[0])
        else:
            types_by_name[name] = FieldType(typing.get_origin(hint) or hint, optional, None)
    return types_by_name


# ---- Single fields ----

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _is_positive(value) -> bool:
    return value > 0 and math.isfinite(value)  # inf passes "> 0" and then learns nothing


def _is_non_negative(value) -> bool:
    return value >= 0 and math.isfinite(value)


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
            "keep_last_checkpoints", "keep_checkpoint_interval", "lr_wsd_decay_iters", "train_samples",
            "lr_decay_samples", "lr_wsd_decay_samples", "profile_step_start", "profile_step_end",
            "log_interval", "eval_interval", "exit_interval",
        ),
        (_is_positive, "a positive integer"),
    ),
    **dict.fromkeys(
        (
            "norm_epsilon", "init_method_std", "cwt_temperature", "initial_loss_scale", "lr",
            "adam_eps", "exit_duration_in_mins", "distributed_timeout_minutes", "mfu_peak_tflops",
        ),
        (_is_positive, "a positive number"),
    ),
    **dict.fromkeys(
        ("seed", "lr_warmup_iters", "lr_warmup_samples", "num_workers", "eval_iters"),
        (_is_non_negative, "an integer >= 0"),
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


def checked_value(name: str, value: Any, field_type: FieldType) -> Any:
    """value converted to the field's type (strings from flags and YAML 1.1's '3e-4' included) and
    checked against its choices and range."""
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
        if field_type.item is int:
            value = [_as_int(name, item) for item in value]
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
        if not 0 < weight(w) < math.inf:  # nan and inf too: Megatron's blend would assert on them
            fail("data_path", f"weights must be positive finite numbers, got {w} for {prefix!r}")
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


