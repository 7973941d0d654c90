"""Reading a training configuration: YAML files, ``--dashed-flags`` and Megatron-LM's spellings.

A run is described by a YAML file (``configs/*.yaml``) whose keys are field names, overridden by
command-line flags spelled the Megatron-LM way::

    headless-megatron pretrain --config configs/gpt_headless_160m.yaml \\
        --tensor-model-parallel-size 2 --lr 3e-4 --data-path 0.3 owt2_text 0.7 wiki_text

Precedence, lowest first: the field defaults, ``defaults`` given by the program, the YAML file, the
flags. Flag conventions:

- every field ``x_y`` is the flag ``--x-y``; abbreviations are refused (Megatron-LM does the same);
- a bool field is ``--x`` (true), ``--no-x`` (false) or ``--x true|false`` (for scripts);
- an optional field is reset with ``--x none``;
- a list field takes several values: ``--data-path PREFIX`` or ``--data-path W1 P1 W2 P2``.

Every mistake stops before any work with a one-line :class:`ConfigError` that starts with the key
(and the file, for file errors), says what is expected and, for a typo, suggests the closest key.
Each field is checked when a :class:`TrainConfig` is built (type, choices, range);
:func:`~headless_megatron.config.validation.validate` adds the checks that involve several fields or the world size.

Each field's docstring (the string right below it in :mod:`~headless_megatron.config.schema`) is
also the ``--help`` text of its flag (:func:`field_docs`), and the ``# ---- Section ----`` comments
group the flags in ``--help``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from headless_megatron.config.fields import ConfigError, checked_value, closest, fail
from headless_megatron.config.schema import TrainConfig, field_types

# Megatron-LM arguments that are spelled differently here: key -> (field, value to give it or None).
_MEGATRON_LM_SPELLINGS = {
    "disable_bias_linear": ("add_bias_linear", False),
    "group_query_attention": ("num_query_groups", None),
    "use_rotary_position_embeddings": ("position_embedding_type", "rope"),
    "layernorm_epsilon": ("norm_epsilon", None),
    "fp8": ("fp8_format", None),
    "num_layers_per_virtual_pipeline_stage": ("virtual_pipeline_model_parallel_size", None),
    "tokenizer_type": ("tokenizer", None),
    "tokenizer_model": ("tokenizer", None),
    "vocab_file": ("tokenizer", None),
    "pretrained_checkpoint": ("pretrained", None),
    "lr_warmup_fraction": ("lr_warmup_iters", None),
}


def field_defaults() -> dict[str, Any]:
    """Each field's default value (``dataclasses.MISSING`` for a required field)."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def required_fields(values: dict[str, Any] | None = None) -> list[str]:
    """The fields a config must set: those without a default, and train_iters unless ``values``
    give train_samples (which sets it)."""
    required = [
        f.name for f in dataclasses.fields(TrainConfig)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if (values or {}).get("train_samples") is None:
        required.insert(required.index("global_batch_size") + 1, "train_iters")
    return required


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unknown_key_hint(key: str, as_flag: bool) -> str:
    if key in _MEGATRON_LM_SPELLINGS:
        field, value = _MEGATRON_LM_SPELLINGS[key]
        if as_flag:
            spelled = (
                _flag(field) if value is None
                else _flag(("" if value else "no_") + field) if isinstance(value, bool)
                else f"{_flag(field)} {value}"
            )
            return f" (Megatron-LM's {_flag(key)} is {spelled} here)"
        spelled = field if value is None else f"{field}: {str(value).lower() if isinstance(value, bool) else value}"
        return f" (Megatron-LM's {key} is {spelled} here)"
    close = closest(key, field_types())
    if close is None:
        return ""
    return f" (did you mean {_flag(close)}?)" if as_flag else f" (did you mean {close!r}?)"


def checked_mapping(values: dict, what: str) -> dict[str, Any]:
    """values with unknown keys refused and each value checked; what names a key in messages."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping of field names to values, got {type(values).__name__}")
    for key in values:
        if key not in field_types():
            raise ConfigError(f"unknown {what} {key!r}{_unknown_key_hint(str(key), as_flag=False)}")
    return {key: checked_value(key, value, field_types()[key]) for key, value in values.items()}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A config from a mapping of field names (such as ``TrainConfig.to_dict``'s), checked field by
    field; raises :class:`ConfigError` on an unknown key, a bad value or a missing required key."""
    return build(checked_mapping(values, "key"))


def config_from_yaml(path: str | Path) -> TrainConfig:
    """A config from a YAML file; errors start with the file's path."""
    values = read_yaml(path)
    try:
        return build(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def build(values: dict[str, Any]) -> TrainConfig:
    missing = [name for name in required_fields(values) if name not in values]
    if missing:
        flags = ", ".join(_flag(name) for name in missing)
        fail(", ".join(missing), f"required; set in the config file or pass {flags}")
    return TrainConfig(**values)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config with a key twice is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (again at line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The checked field values of a YAML config file; errors start with the path."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a YAML text file (byte {error.start} is not UTF-8)") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        return checked_mapping(values, "key")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


# ---- Command line ----


class _BoolFlag(argparse.Action):
    """``--x`` or ``--x true|false``; the matching ``--no-x`` is a separate, store-false flag."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", const=True, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one flag per :class:`TrainConfig` field, grouped by section, with
    the field docstrings as help. Flags default to absent, so only the given ones override the
    file. Also turns off argparse's prefix matching, as Megatron-LM does: ``--hidden`` would
    otherwise silently mean ``--hidden-size``."""
    parser.allow_abbrev = False
    parser.add_argument(
        "--config", metavar="FILE",
        help="YAML file of field: value pairs (see configs/); the flags below override it",
    )
    required = set(required_fields())
    defaults = field_defaults()
    groups = {}
    for name, (section, doc) in field_docs().items():
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        group = groups[section]
        field_type = field_types()[name]
        shown = "required" if name in required else f"default: {_yaml_scalar(defaults[name])}"
        help_text = f"{doc} ({shown})".replace("%", "%%")
        if field_type.kind is bool:
            group.add_argument(
                _flag(name), action=_BoolFlag, dest=name, default=argparse.SUPPRESS,
                metavar="true|false", help=f"{help_text[:-1]}; {_flag('no_' + name)} sets false)",
            )
            group.add_argument(
                _flag("no_" + name), action="store_false", dest=name, default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            metavar = (
                "{" + ",".join(field_type.choices) + "}" if field_type.choices
                else _METAVARS[field_type.kind]
            )
            group.add_argument(
                _flag(name), dest=name, default=argparse.SUPPRESS, metavar=metavar, help=help_text,
                nargs="+" if field_type.kind is list else None,
            )


_METAVARS = {int: "N", float: "NUM", str: "STR", list: "ITEM"}


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "none"  # as the flags spell it
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def reject_unknown_flags(extra_argv: list[str]) -> None:
    """Raise :class:`ConfigError` for what ``parser.parse_known_args`` left over: an unknown flag
    (with the closest known one) or a stray value."""
    if not extra_argv:
        return
    flag = next((token for token in extra_argv if token.startswith("-")), None)
    if flag is None:
        raise ConfigError(f"{extra_argv[0]}: unexpected value; every value follows a --flag")
    flag = flag.split("=", 1)[0]
    hint = _unknown_key_hint(flag.lstrip("-").replace("-", "_"), as_flag=True)
    raise ConfigError(f"{flag}: unknown flag{hint}")


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The config described by a namespace parsed with :func:`add_config_arguments`'s flags:
    ``defaults`` < ``--config`` file < flags. Other attributes of the namespace are ignored."""
    values = {}
    if defaults:
        try:
            values.update(checked_mapping(defaults, "default"))
        except ConfigError as error:
            raise ConfigError(f"defaults: {error}") from None
    if getattr(args, "config", None):
        values.update(read_yaml(args.config))
    values.update(checked_mapping(
        {name: getattr(args, name) for name in field_types() if hasattr(args, name)}, "flag",
    ))
    return build(values)


def parse_config(argv: list[str], defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The config given by a command line: ``[--config FILE] [--flag value ...]`` (see the module
    docstring for the flag conventions)."""
    parser = argparse.ArgumentParser(
        prog="headless-megatron pretrain", usage="%(prog)s [--config FILE] [--flag VALUE ...]"
    )
    add_config_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    reject_unknown_flags(extra)
    return config_from_args(args, defaults)


_SECTION = re.compile(r"^\s*# -+ (.+?) -+$")


@functools.cache
def field_docs() -> dict[str, tuple[str, str]]:
    """``{field: (section, docstring)}`` read from the source of :class:`TrainConfig` and of the field
    classes it derives from (``config/reporting.py``), in that order: the docstring right below each
    field and the ``# ---- Section ----`` comment above it."""
    docs = {}
    for cls in TrainConfig.__mro__:
        if dataclasses.is_dataclass(cls):
            docs.update(_class_field_docs(cls))
    return docs


def _class_field_docs(cls) -> dict[str, tuple[str, str]]:
    lines, _ = inspect.getsourcelines(cls)
    sections = {}
    section = ""
    for number, line in enumerate(lines, start=1):
        match = _SECTION.match(line)
        section = match.group(1) if match else section
        sections[number] = section
    docs = {}
    body = ast.parse("".join(lines)).body[0].body
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = " ".join(inspect.cleandoc(following.value.value).split())
            docs[node.target.id] = (sections[node.lineno], text)
    return docs
