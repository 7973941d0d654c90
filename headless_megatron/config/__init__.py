"""The training configuration, a module per concern:

- :mod:`~headless_megatron.config.schema`: :class:`TrainConfig`, the fields (Megatron-LM's argument
  names, grouped by concern, each with its docstring) and the values derived from them;
- :mod:`~headless_megatron.config.validation`: each field's type, choices and range, and every
  rule across fields (with the model family's own keys), run before any rank is spawned;
- :mod:`~headless_megatron.config.megatron`: the mapping to Megatron-Core's ``TransformerConfig``;
- :mod:`~headless_megatron.config.loader`: YAML files, ``--dashed-flags``, Megatron-LM's spellings.
"""

from headless_megatron.config.loader import (
    add_config_arguments,
    config_from_args,
    field_docs,
    parse_config,
    reject_unknown_flags,
)
from headless_megatron.config.schema import ConfigError, TrainConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "add_config_arguments",
    "config_from_args",
    "field_docs",
    "parse_config",
    "reject_unknown_flags",
]
