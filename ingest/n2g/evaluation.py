"""Scoring a neuron's graph on held-out records: precision, recall and F1 of firing.

A token *fires* when its activation, normalised by the neuron's largest activation on the
corpus, is at least the threshold (0.5 in the paper). Precision = TP / (TP + FP), recall =
TP / (TP + FN), F1 their harmonic mean; a ratio with a zero denominator is 0 (nothing
predicted, nothing to find), as in scikit-learn's ``zero_division=0``.

The paper's baseline, ``TokenLookup``, predicts for a token the largest normalised activation
that token had anywhere in the training records, ignoring context.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def firing_scores(predicted: Iterable[float], actual: Iterable[float], threshold: float = 0.5) -> Scores:
    """P/R/F1 of ``predicted >= threshold`` against ``actual >= threshold``, token by token."""
    tp = fp = fn = 0
    for p, a in zip(predicted, actual, strict=True):
        pf, af = p >= threshold, a >= threshold
        tp += pf and af
        fp += pf and not af
        fn += af and not pf
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, tp, fp, fn)


class TokenLookup:
    """The context-free baseline: a token's prediction is its largest activation in training."""

    def __init__(self, records: Iterable[tuple[Sequence[int], Sequence[float]]]):
        self.table: dict[int, float] = {}
        for tokens, acts in records:
            for t, a in zip(tokens, acts):
                if a > self.table.get(t, float("-inf")):
                    self.table[t] = float(a)

    def predict(self, tokens: Sequence[int]) -> list[float]:
        return [self.table.get(t, 0.0) for t in tokens]
