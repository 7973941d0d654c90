"""GLUE's metrics in percent and the class-balanced cross-entropy, against hand-computed values."""

import pytest
import torch
import torch.nn.functional as F

from headless_megatron.evaluate.glue.metrics import balanced_cross_entropy, score


def test_scores_in_percent():
    assert score("accuracy", [1, 0, 2, 2], [1, 0, 2, 1]) == 75.0
    # MCC of TP=2, TN=1, FP=1, FN=0: (2*1 - 1*0) / sqrt(3*2*2*1)
    assert score("mcc", [1, 1, 0, 1], [1, 0, 0, 1]) == pytest.approx(100 * 2 / 12 ** 0.5)
    assert score("spearman", [0.1, 0.5, 0.3], [1.0, 3.0, 2.0]) == pytest.approx(100.0)
    assert score("spearman", [0.2, 0.2, 0.2], [1.0, 3.0, 2.0]) == 0.0  # constant: undefined -> 0


def test_balanced_cross_entropy_is_the_mean_over_classes_of_their_mean_loss():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 2])
    per_example = F.cross_entropy(logits, labels, reduction="none")
    per_class = [per_example[labels == c].mean() for c in range(3)]
    assert balanced_cross_entropy(logits, labels) == pytest.approx(float(sum(per_class) / 3))
    balanced = torch.tensor([0, 1, 2, 0, 1, 2])
    assert balanced_cross_entropy(logits, balanced) == pytest.approx(float(F.cross_entropy(logits, balanced)))
