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

from collections import defaultdict
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
    # The runner streams [len, d_mlp] arrays; each record keeps its own neuron's column only.
    contexts: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for k, (r, q) in enumerate(zip(records, pruned)):
        contexts[r.tokens[q.start: q.end]].append(k)
    plain: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(records)
    for seq, acts in runner.each(contexts):
        for k in contexts[seq]:
            plain[k] = acts[:, records[k].neuron].copy()
    firing: list[list[int]] = []
    wanted: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)  # masked context -> (record, j)
    rows: list[np.ndarray] = []  # per record, [j, i]: activation at i with token j masked
    for k, (r, q) in enumerate(zip(records, pruned)):
        norm = plain[k] * q.scale / max_act[r.neuron]
        fire = [r.position] + [q.start + i for i in np.flatnonzero(norm >= cfg.activation_threshold).tolist()
                               if q.start + i != r.position]
        firing.append(fire)
        ctx = r.tokens[q.start: max(fire) + 1]
        rows.append(np.empty((len(ctx), len(ctx)), dtype=np.float32))
        for j in range(len(ctx)):
            wanted[masked(ctx, j, cfg.mask_token)].append((k, j))
    for seq, acts in runner.each(wanted):
        for k, j in wanted[seq]:
            rows[k][j] = acts[:, records[k].neuron]
    out = []
    for r, q, fire, a, rows_k in zip(records, pruned, firing, plain, rows):
        importance = {}
        for i in fire:
            col = i - q.start
            base = float(a[col])
            imp = 1.0 - rows_k[: col + 1, col] / base if base > 0 else np.zeros(col + 1, dtype=np.float32)
            importance[i] = imp.astype(np.float32)
        out.append(Salient(a, fire, importance))
    return out
