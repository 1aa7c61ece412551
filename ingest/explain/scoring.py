"""Score arithmetic, free of any model: what a simulation or a classification is worth.

- ``correlation``: OpenAI's simulation score, the Pearson correlation between the simulated
  (expected-value) and the true activations over every token of the scored records taken
  together (not an average of per-record correlations); None when either side is constant.
- ``classification``: delphi's detection / fuzzing metrics from binary predictions and, where
  the scorer gives them, probabilities: balanced accuracy, F1, precision, recall, and the ROC
  AUC (the Mann-Whitney statistic: the chance a random positive outranks a random negative,
  ties counting one half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def expected_values(probs: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Expected value per row of a [n, len(values)] probability array, renormalised over the
    values offered (the probability mass on other tokens is dropped, as OpenAI does)."""
    p = np.asarray(probs, dtype=np.float64)
    total = p.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    return (p / total) @ np.asarray(values, dtype=np.float64)


def correlation(true: Sequence[float], simulated: Sequence[float]) -> float | None:
    t = np.asarray(true, dtype=np.float64).ravel()
    s = np.asarray(simulated, dtype=np.float64).ravel()
    if t.shape != s.shape or t.size < 2:
        raise ValueError(f"need two equal-length sequences of at least 2 values, got {t.size} and {s.size}")
    t, s = t - t.mean(), s - s.mean()
    denom = np.sqrt((t * t).sum() * (s * s).sum())
    if denom == 0 or not np.isfinite(denom):
        return None
    return float((t * s).sum() / denom)


@dataclass(frozen=True)
class Classification:
    balanced_accuracy: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    auc: float | None
    n: int


def auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def classification(labels: Sequence[bool], predictions: Sequence[bool],
                   probabilities: Sequence[float] | None = None) -> Classification:
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predictions, dtype=bool)
    if y.shape != p.shape or not y.size:
        raise ValueError("labels and predictions must be non-empty and of equal length")
    tp, tn = int((y & p).sum()), int((~y & ~p).sum())
    fp, fn = int((~y & p).sum()), int((y & ~p).sum())
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    # With one class absent, balanced accuracy is the rate on the class present.
    balanced = (tpr + tnr) / 2 if (tp + fn and tn + fp) else (tpr if tp + fn else tnr)
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * tpr / (precision + tpr) if precision + tpr else 0.0
    area = auc(y, probabilities) if probabilities is not None else None
    return Classification(balanced, (tp + tn) / y.size, precision, tpr, f1, area, int(y.size))
