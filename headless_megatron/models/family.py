"""What a model family is: the interface the rest of the project knows models by.

A family is one folder, ``models/<name>/``, registered in :mod:`headless_megatron.models.registry`:

- ``__init__.py``: the class implementing :class:`ModelFamily` (its keys' checks, its data wiring,
  its forward step, its FLOP terms), importing Megatron-Core only inside its methods so that
  validating a config stays cheap;
- ``model.py``: the Megatron-Core model of one pipeline stage, with its loss head (CWT or the
  vanilla head);
- ``hf_<model_type>.py``: one Hugging Face class's mapping each (a
  :class:`~headless_megatron.models.hf_mapping.Conversion`), if it has any;
- any data wiring of its own (``bert/masking.py``: the MLM corruption).

No module outside a family's folder branches on ``config.model``: the training loop (and with it
``finetune`` and ``bench train``) builds stages, wraps data and runs forward steps through this
interface, the FLOP count asks it how much attention and head it computes, ``export-hf`` and
``import-hf`` find its conversion through the registry, and ``validate_config`` runs its
``validate``.
"""

from __future__ import annotations

import typing
from typing import Protocol

if typing.TYPE_CHECKING:
    import torch
    from megatron.core.transformer.module import MegatronModule
    from torch.utils.data import Dataset

    from headless_megatron.config import TrainConfig
    from headless_megatron.models.hf_mapping import Conversion


class ModelFamily(Protocol):
    """One model family: how to build, feed, run, count and convert it, and which keys it checks."""

    name: str
    """``TrainConfig.model`` of this family."""
    kind: str
    """What a model card calls it: "decoder" or "encoder"."""
    objective: str
    """Its vanilla objective, as a model card names it ("language modelling")."""

    def validate(self, config: TrainConfig) -> None:
        """Raise a one-line :class:`~headless_megatron.config.ConfigError` for a key of ``config``
        that this family does not support or that its own keys rule out. Runs before any rank or
        model exists (no process group, nothing built)."""

    def build_stage(self, config: TrainConfig, transformer_config, **stage_arguments) -> MegatronModule:
        """This rank's pipeline stage (or model chunk ``vp_stage``) with layout-independent initial
        weights; ``stage_arguments`` are those every family's builder takes (vocab_size
        (padded), real_vocab_size, max_sequence_length, seed, backend, position_embedding_type,
        share_embeddings_and_output_weights, cwt, vp_stage)."""

    def wrap_data(self, config: TrainConfig, tokenizer, windows: Dataset) -> Dataset:
        """The micro-batch samples made from packed token ``windows`` (``GPTDataset`` samples)."""

    def forward(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch (on the device) through a model chunk: the last stage's output is the
        per-token loss ``[b, s]``, an earlier stage's its hidden states."""

    def attended_positions(self, seq_length: int) -> float:
        """Positions each query attends to on average, for the FLOP count of ``QK^T`` and ``PV``
        (Megatron-LM's convention: half the square for causal attention)."""

    def projected_positions(self, config: TrainConfig, loss_positions: int, tokens: int) -> int:
        """Positions of an iteration of ``tokens`` tokens that ``loss: ce`` projects onto the
        vocabulary, given its ``loss_positions`` (the FLOP count of the head)."""

    def stage_parameters(self, config: TrainConfig, padded_vocab: int, tp: int, *, first: bool, last: bool) -> int:
        """Parameters of a pipeline stage outside its transformer layers, on one TP rank: the
        embeddings of the ``first`` stage, the final norm and head of the ``last`` (the memory plan,
        ``training/memory_plan.py``)."""

    def hf_conversions(self) -> tuple[type[Conversion], ...]:
        """Its Hugging Face conversions (``export-hf`` and ``import-hf``), one per HF class, none when
        it has none; an export without ``--model-type`` takes the first that represents the
        checkpoint. Imported when asked for, since conversions import torch."""


def embedding_and_output_parameters(config: TrainConfig, padded_vocab: int, tp: int, *, first: bool,
                                    last: bool) -> int:
    """What the stages of every family hold, on one TP rank: the word (and learned position)
    embeddings on the ``first`` stage; on the ``last``, the output layer's weight when it has its
    own (untied), or a copy of the embeddings on a later stage (tied)."""
    vocab_rows = padded_vocab // tp * config.hidden_size
    count = 0
    if first:
        count += vocab_rows
        count += config.max_positions * config.hidden_size if config.position_embedding_type == "learned_absolute" \
            else 0
    if last and (config.untie_embeddings_and_output_weights or not first):
        count += vocab_rows
    return count
