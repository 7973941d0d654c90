"""MLM masking: the two schemes' statistics over 10k sequences, determinism, special tokens."""

import math

import pytest
import torch

from headless_megatron.models.bert.masking import MaskedLMDataset, Masking, mask_tokens

VOCAB, SEQ, SEQUENCES = 1000, 128, 10_000
SPECIALS = (0, 1, 2)  # eod, pad, mask
MASK = 2


def _corpus():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (SEQUENCES, SEQ), generator=gen)
    tokens[:, ::16] = 0  # end-of-document tokens, never masked by the bert scheme
    return tokens


def _statistics(scheme):
    masking = Masking(scheme, 0.15, MASK, VOCAB, SPECIALS)
    corpus = _corpus()
    gen = torch.Generator().manual_seed(1)
    corrupted, selected = zip(*(mask_tokens(row, masking, gen) for row in corpus))
    corrupted, selected = torch.stack(corrupted), torch.stack(selected).bool()
    return corpus, corrupted, selected


def test_bert_scheme_masks_15_percent_of_ordinary_tokens_80_10_10():
    original, corrupted, selected = _statistics("bert")
    ordinary = original != 0
    assert not selected[~ordinary].any()
    assert abs(selected[ordinary].float().mean().item() - 0.15) < 0.005
    picked_original, picked_corrupted = original[selected], corrupted[selected]
    as_mask = (picked_corrupted == MASK).float().mean().item()
    unchanged = (picked_corrupted == picked_original).float().mean().item()
    randomized = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.005 and abs(randomized - 0.1) < 0.005 and abs(unchanged - 0.1) < 0.005
    assert (corrupted[~selected] == original[~selected]).all()


def test_paper_scheme_masks_exactly_ceil_15_percent_and_randomizes_10_percent_everywhere():
    original, corrupted, selected = _statistics("paper")
    assert (selected.sum(1) == math.ceil(0.15 * SEQ)).all()
    picked = corrupted[selected]
    assert abs((picked == MASK).float().mean().item() - 0.8) < 0.005
    context_changed = (corrupted[~selected] != original[~selected]).float().mean().item()
    assert abs(context_changed - 0.1 * (1 - 1 / VOCAB)) < 0.005  # a random id may equal the original


def test_samples_are_masked_the_same_way_every_time_and_differently_per_index():
    windows = [{"tokens": row} for row in _corpus()[:4]]
    dataset = MaskedLMDataset(windows, Masking("bert", 0.15, MASK, VOCAB, SPECIALS), seed=7)
    first, again = dataset[1], dataset[1]
    assert torch.equal(first["tokens"], again["tokens"]) and torch.equal(first["loss_mask"], again["loss_mask"])
    assert torch.equal(first["labels"], windows[1]["tokens"])
    assert not torch.equal(dataset[2]["loss_mask"], first["loss_mask"])
    other_seed = MaskedLMDataset(windows, dataset.masking, seed=8)
    assert not torch.equal(other_seed[1]["loss_mask"], first["loss_mask"])


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="masking must be 'bert' or 'paper'"):
        mask_tokens(torch.arange(5), Masking("span", 0.15, MASK, VOCAB), torch.Generator())
