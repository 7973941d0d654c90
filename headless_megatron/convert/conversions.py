"""Every Hugging Face conversion, by the ``model_type`` it reads and writes: ``export-hf`` finds a
checkpoint's by the ``hf_model_type`` its model family names, ``import-hf`` by the HF config's."""

from __future__ import annotations

from headless_megatron.convert.llama import LlamaConversion
from headless_megatron.convert.mapping import Conversion
from headless_megatron.convert.megatron_bert import MegatronBertConversion

CONVERSIONS: dict[str, type[Conversion]] = {
    conversion.hf_model_type: conversion for conversion in (LlamaConversion, MegatronBertConversion)
}
