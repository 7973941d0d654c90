"""Masked-language-model samples: packed windows of an indexed dataset, masked deterministically.

The windows are Megatron's ``GPTDataset`` samples (documents concatenated with end-of-document
tokens and cut to ``seq_length``, shuffled by the seed), as the paper's encoder data is packed BPE
with no [CLS]/[SEP]. Masking happens per sample with a generator seeded by (seed, sample index),
so a sample is masked the same way on every rank and in every run, whatever the layout.

Two schemes:

* ``bert`` (Devlin et al.): each non-special position is selected with probability ``mask_prob``;
  a selected position becomes the mask token (80%), a random token (10%) or stays (10%).
* ``paper`` (the headless-lm code, inherited from electra-pytorch): first any position, selected or
  not, is replaced by a random token with probability 0.1; then exactly ``ceil(mask_prob * n)``
  positions per sequence are selected, and each becomes the mask token with probability 0.8.

The loss is taken at the selected positions only, against the original tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Masking:
    """How to corrupt a sequence; ``special_ids`` are never selected by the ``bert`` scheme."""

    scheme: str
    mask_prob: float
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()


def mask_tokens(
    tokens: torch.Tensor, masking: Masking, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input ids, loss mask) for one 1-D sequence of token ids."""
    if masking.scheme == "bert":
        return _bert_masking(tokens, masking, generator)
    if masking.scheme == "paper":
        return _paper_masking(tokens, masking, generator)
    raise ValueError(f"masking must be 'bert' or 'paper', got {masking.scheme!r}")


def _random_ids(count: int, masking: Masking, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, masking.vocab_size, (count,), generator=generator)


def _bert_masking(tokens, masking, generator):
    eligible = ~torch.isin(tokens, torch.tensor(masking.special_ids, dtype=tokens.dtype))
    selected = eligible & (torch.rand(tokens.shape, generator=generator) < masking.mask_prob)
    action = torch.rand(tokens.shape, generator=generator)
    corrupted = tokens.clone()
    corrupted[selected & (action < 0.8)] = masking.mask_id
    randomized = selected & (action >= 0.8) & (action < 0.9)
    corrupted[randomized] = _random_ids(int(randomized.sum()), masking, generator)
    return corrupted, selected.float()


def _paper_masking(tokens, masking, generator):
    corrupted = tokens.clone()
    randomized = torch.rand(tokens.shape, generator=generator) < 0.1
    corrupted[randomized] = _random_ids(int(randomized.sum()), masking, generator)
    count = math.ceil(masking.mask_prob * tokens.numel())
    selected = torch.zeros(tokens.shape, dtype=torch.bool)
    selected[torch.rand(tokens.shape, generator=generator).topk(count).indices] = True
    corrupted[selected & (torch.rand(tokens.shape, generator=generator) < 0.8)] = masking.mask_id
    return corrupted, selected.float()


def _sample_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"mlm/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class MaskedLMDataset(torch.utils.data.Dataset):
    """MLM samples (``tokens``, ``labels``, ``loss_mask``, ``padding_mask``) over packed windows."""

    def __init__(self, windows, masking: Masking, seed: int):
        self.windows = windows
        self.masking = masking
        self.seed = seed

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        original = self.windows[index]["tokens"]
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, int(index)))
        corrupted, loss_mask = mask_tokens(original, self.masking, generator)
        return {
            "tokens": corrupted,
            "labels": original,
            "loss_mask": loss_mask,
            "padding_mask": torch.ones_like(original),  # packed windows: no padding
        }
