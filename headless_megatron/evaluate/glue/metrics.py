"""GLUE's metrics in percent (Matthews correlation, Spearman correlation, accuracy) and the
paper's class-balanced cross-entropy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

METRIC_NAMES = {"mcc": "MCC", "spearman": "Spearman", "accuracy": "accuracy"}


def score(metric: str, predictions: Sequence[float], labels: Sequence[float]) -> float:
    """The task metric in percent. An undefined correlation (constant predictions) counts as 0."""
    if metric == "accuracy":
        return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels)) / max(len(labels), 1)
    if metric == "mcc":
        from sklearn.metrics import matthews_corrcoef

        value = matthews_corrcoef(labels, predictions)
    elif metric == "spearman":
        import warnings

        from scipy.stats import spearmanr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: the correlation is undefined (nan)
            value = spearmanr(predictions, labels).statistic
    else:
        raise ValueError(f"unknown metric {metric}")
    value = float(value)
    return 0.0 if math.isnan(value) else 100.0 * value


def balanced_cross_entropy(logits, labels):
    """Cross-entropy with each example's loss divided by its class's in-batch frequency.

    Equals the mean, over the classes present in the batch, of their mean loss (the weights'
    normalisation of ``F.cross_entropy`` makes the batch size cancel).
    """
    import torch
    import torch.nn.functional as F

    counts = torch.bincount(labels, minlength=logits.shape[-1]).to(logits.dtype)
    weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return F.cross_entropy(logits, labels, weight=weight)


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
