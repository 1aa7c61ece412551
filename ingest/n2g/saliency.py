"""Saliency: how much each context token matters to each firing token of a pruned example.

The importance of token ``j`` for the activation at ``i`` (j <= i) is
``1 - (activation at i with token j masked) / (activation at i)``, masking meaning replacing
the token by ``mask_token``; 1 means the neuron needs the token, 0 that it does not care. It
is measured for every *firing* position of the pruned example: the record's peak, and any
other position whose normalised (rescaled) activation reaches ``activation_threshold``.

One masked sequence per context position serves every firing position after it and every
neuron whose pruned example has the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ingest.n2g.config import N2GConfig
from ingest.n2g.pruning import Pruned, Record


@dataclass
class Salient:
    acts: np.ndarray  # the neuron's activations on the pruned example (positions start .. end - 1), unscaled
    firing: list[int]  # firing positions (snippet coordinates), the peak first
    importance: dict[int, np.ndarray]  # firing position i -> importance of tokens start .. i


def masked(tokens: tuple[int, ...], j: int, mask: int) -> tuple[int, ...]:
    return tokens[:j] + (mask,) + tokens[j + 1:]


def saliency(records: Sequence[Record], pruned: Sequence[Pruned], runner, cfg: N2GConfig,
             max_act: dict[int, float]) -> list[Salient]:
    plain = runner.run(r.tokens[q.start: q.end] for r, q in zip(records, pruned))
    firing: list[list[int]] = []
    wanted: set[tuple[int, ...]] = set()
    for r, q in zip(records, pruned):
        a = plain[r.tokens[q.start: q.end]][:, r.neuron]
        norm = a * q.scale / max_act[r.neuron]
        fire = [r.position] + [q.start + i for i in np.flatnonzero(norm >= cfg.activation_threshold).tolist()
                               if q.start + i != r.position]
        firing.append(fire)
        last = max(fire)
        ctx = r.tokens[q.start: last + 1]
        wanted.update(masked(ctx, j, cfg.mask_token) for j in range(len(ctx)))
    hidden = runner.run(wanted)
    out = []
    for r, q, fire in zip(records, pruned, firing):
        a = plain[r.tokens[q.start: q.end]][:, r.neuron]
        ctx = r.tokens[q.start: max(fire) + 1]
        rows = np.stack([hidden[masked(ctx, j, cfg.mask_token)][:, r.neuron] for j in range(len(ctx))])  # [j, i]
        importance = {}
        for i in fire:
            col = i - q.start
            base = float(a[col])
            imp = 1.0 - rows[: col + 1, col] / base if base > 0 else np.zeros(col + 1, dtype=np.float32)
            importance[i] = imp.astype(np.float32)
        out.append(Salient(a, fire, importance))
    return out
