"""What a model family is (GPT, BERT), and the registry that finds the family of a config.

The rest of the project knows models through this interface only: the training loop (and with it
``finetune`` and ``bench train``) builds stages, wraps data and runs forward steps through it, the
FLOP count asks it how much attention and head it computes, ``export-hf``/``import-hf`` convert it
to and from the Hugging Face ``model_type`` it names, and the config validation runs its
``validate``. No module outside a
family's own branches on ``config.model``.

Adding a family:

1. a module in ``models/families/`` with a class implementing :class:`ModelFamily` (its model
   classes in ``models/``, as ``models/gpt.py`` and ``models/bert.py``);
2. its ``name`` added to :data:`FAMILIES` below and to the choices of ``TrainConfig.model``
   (``config/schema.py``);
3. its keys (a ``# ---- Section ----`` of ``TrainConfig``) checked in its ``validate``;
4. its ``hf_model_type`` (or None: no Hugging Face export or import) and a
   :class:`~headless_megatron.convert.mapping.Conversion` for that ``model_type`` in ``convert/``,
   listed in ``convert/conversions.py`` (the conversions depend on the families, not the reverse);
5. a recipe in ``configs/`` and tests: ``tests/test_model_family.py`` (registry, validation, FLOPs),
   a layout test in ``tests/test_megatron_layouts.py``, a conversion round trip.
"""

from __future__ import annotations

import typing
from typing import Protocol

from headless_megatron.models.families.bert import BertFamily
from headless_megatron.models.families.gpt import GPTFamily

if typing.TYPE_CHECKING:
    import torch
    from megatron.core.transformer.module import MegatronModule
    from torch.utils.data import Dataset

    from headless_megatron.config import TrainConfig


class ModelFamily(Protocol):
    """One model family: how to build, feed, run, count and convert it, and which keys it checks."""

    name: str
    """``TrainConfig.model`` of this family."""
    kind: str
    """What a model card calls it: "decoder" or "encoder"."""
    objective: str
    """Its vanilla objective, as a model card names it ("language modelling")."""
    hf_model_type: str | None
    """The Hugging Face ``model_type`` its checkpoints are exported to and imported from (the
    conversion lives in ``convert/``), or None when it has none."""

    def validate(self, config: TrainConfig) -> None:
        """Raise a one-line :class:`~headless_megatron.config.ConfigError` for a key of ``config``
        that this family does not support or that its own keys rule out. Runs before any rank or
        model exists (no process group, nothing built)."""

    def build_stage(self, config: TrainConfig, transformer_config, **stage_arguments) -> MegatronModule:
        """This rank's pipeline stage (or model chunk ``vp_stage``) with layout-independent initial
        weights; ``stage_arguments`` are those every family's builder takes (vocab_size,
        max_sequence_length, seed, backend, position_embedding_type,
        share_embeddings_and_output_weights, cwt, vp_stage)."""

    def wrap_data(self, config: TrainConfig, tokenizer, windows: Dataset) -> Dataset:
        """The micro-batch samples made from packed token ``windows`` (``GPTDataset`` samples)."""

    def forward(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch (on the device) through a model chunk: the last stage's output is the
        per-token loss ``[b, s]``, an earlier stage's its hidden states."""

    def attended_positions(self, seq_length: int) -> float:
        """Positions each query attends to on average, for the FLOP count of ``QK^T`` and ``PV``
        (Megatron-LM's convention: half the square for causal attention)."""

    def projected_positions(self, config: TrainConfig, loss_positions: int) -> int:
        """Positions of an iteration that ``loss: ce`` projects onto the vocabulary, given the
        iteration's ``loss_positions`` (the FLOP count of the head)."""


FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (GPTFamily(), BertFamily())}


def family_of(config: TrainConfig) -> ModelFamily:
    """The family of ``config.model``."""
    return FAMILIES[config.model]
