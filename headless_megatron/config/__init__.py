"""The training configuration, a module per concern, lowest first (each imports only those above it
in this list; the package imports nothing else of the project but ``errors``):

- :mod:`~headless_megatron.config.fields`: one field's type, conversion, choices and range, and
  :class:`ConfigError`;
- :mod:`~headless_megatron.config.layout`: :class:`ParallelLayout`, how the ranks are split;
- :mod:`~headless_megatron.config.derived`: the values the fields imply (``ffn_size``, ``layout``);
- :mod:`~headless_megatron.config.schema`: :class:`TrainConfig`, the fields (Megatron-LM's argument
  names, grouped by concern, each with its docstring);
- :mod:`~headless_megatron.config.megatron`: the mapping to Megatron-Core's ``TransformerConfig`` and
  the kernel backend this node runs;
- :mod:`~headless_megatron.config.validation`: every rule across fields and the world size, run
  before any rank is spawned (a model family adds its own: ``models.registry.validate_config``);
- :mod:`~headless_megatron.config.loader`: YAML files, ``--dashed-flags``, Megatron-LM's spellings.
"""

from headless_megatron.config.fields import ConfigError
from headless_megatron.config.layout import ParallelLayout
from headless_megatron.config.loader import (
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_from_yaml,
    field_docs,
    parse_config,
    reject_unknown_flags,
)
from headless_megatron.config.schema import TrainConfig
from headless_megatron.config.validation import validate

__all__ = [
    "ConfigError",
    "ParallelLayout",
    "TrainConfig",
    "config_from_dict",
    "config_from_yaml",
    "validate",
    "add_config_arguments",
    "config_from_args",
    "field_docs",
    "parse_config",
    "reject_unknown_flags",
]
