"""The model families, by ``TrainConfig.model``: the one place a family is registered.

Everything that depends on the family asks here: :func:`family_of` for a config's family,
:func:`validate_config` for the whole pre-launch check (the config's rules, then its family's),
:func:`build_model_stage` for this rank's model, :func:`hf_conversions` for the Hugging Face
``model_type`` each family converts to and from, :func:`conversion_for` for a checkpoint's.

Adding a family (``docs/architecture.md``, "Adding a model family"): a folder ``models/<name>/``
with its :class:`~headless_megatron.models.family.ModelFamily` and one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import typing

from headless_megatron.config import TrainConfig, validate
from headless_megatron.config.fields import closest, fail
from headless_megatron.models.bert import BertFamily
from headless_megatron.models.family import ModelFamily
from headless_megatron.models.gpt import GPTFamily

if typing.TYPE_CHECKING:
    from headless_megatron.models.hf_mapping import Conversion

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (GPTFamily(), BertFamily())}


def family_of(config: TrainConfig) -> ModelFamily:
    """The family of ``config.model``; a one-line ConfigError names the registered ones otherwise."""
    family = FAMILIES.get(config.model)
    if family is None:
        close = closest(config.model, FAMILIES)
        hint = f" (did you mean {close!r}?)" if close else ""
        fail("model", f"expected one of {', '.join(FAMILIES)}, got {config.model!r}{hint}")
    return family


def validate_config(config: TrainConfig, world_size: int) -> TrainConfig:
    """Every check a launch of ``world_size`` ranks needs before any rank or model exists: the
    family is known, the config's rules across fields hold, the family accepts its keys. Returns
    ``config``; raises a one-line ConfigError."""
    family = family_of(config)
    validate(config, world_size)
    family.validate(config)
    return config


def build_model_stage(config: TrainConfig, transformer_config, vocab_size: int, backend: str,
                      vp_stage: int | None = None):
    """This pipeline stage (or its model chunk ``vp_stage``) of the model ``config`` describes, for a
    vocabulary of ``vocab_size`` real tokens (padded here; the padding is never predicted), with
    layout-independent initial weights."""
    from headless_megatron.cwt import CWTOptions

    cwt = None
    if config.loss == "cwt":
        cwt = CWTOptions(config.cwt_temperature, config.cwt_duplicates, config.cwt_negatives)
    return family_of(config).build_stage(
        config,
        transformer_config,
        vocab_size=config.padded_vocab_size(vocab_size),
        real_vocab_size=vocab_size,
        max_sequence_length=config.max_positions,
        seed=config.seed,
        backend=backend,
        position_embedding_type=config.position_embedding_type,
        share_embeddings_and_output_weights=config.share_embeddings_and_output_weights,
        cwt=cwt,
        vp_stage=vp_stage,
    )


def hf_conversions() -> dict[str, type[Conversion]]:
    """Every family's Hugging Face conversions, by the ``model_type`` each writes and reads."""
    return {
        conversion.hf_model_type: conversion
        for family in FAMILIES.values() for conversion in family.hf_conversions()
    }


def conversion_for(config: TrainConfig, vocab_size: int, model_type: str | None = None) -> Conversion:
    """The conversion of a checkpoint to the HF ``model_type`` asked for, else to the first of its
    family's that represents it; raises ``ConversionError`` naming what each one cannot represent."""
    from headless_megatron.models.hf_mapping import ConversionError

    conversions = {conversion.hf_model_type: conversion for conversion in family_of(config).hf_conversions()}
    if not conversions:
        exportable = [name for name, family in FAMILIES.items() if family.hf_conversions()]
        raise ConversionError(f"model {config.model}: no Hugging Face export (exportable: {', '.join(exportable)})")
    if model_type is not None:
        if model_type not in conversions:
            raise ConversionError(f"--model-type {model_type}: a {config.model} checkpoint exports to "
                                  f"{', '.join(conversions)}")
        return conversions[model_type](config, vocab_size)
    for conversion in conversions.values():
        if not conversion.cannot_represent(config):
            return conversion(config, vocab_size)
    reasons = "; ".join(f"{name} cannot hold {', '.join(conversion.cannot_represent(config))}"
                        for name, conversion in conversions.items())
    raise ConversionError(f"no Hugging Face class holds this {config.model} checkpoint: {reasons}")
