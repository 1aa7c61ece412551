"""Pruning: the shortest context, ending at the record's most activating token, that keeps it firing.

For a record whose neuron peaks at position ``p`` with activation ``a0``, contexts
``tokens[p - L + 1 .. p]`` are tried for L = 1, 2, ... up to ``cutoff`` tokens (or the
start of the snippet); the first one where ``p`` is still the argmax of the truncated
sequence (strictly above every earlier position, as ``argmax`` picks the first maximum) and
its activation is at least ``prune_threshold * a0`` is kept. When none qualifies, the last
one tried is kept, as the reference implementation does. The pruned example then runs to
``post_context`` tokens after ``p``.

Every record of every neuron is pruned in rounds of L, and each round is one batch of
truncated sequences for ``LayerRunner``: records of different neurons on the same snippet
and position share one sequence.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ingest.n2g.config import N2GConfig


@dataclass(frozen=True)
class Record:
    """One training record of one neuron: its snippet's tokens, peak position and peak activation."""

    neuron: int  # index of the neuron in its layer
    tokens: tuple[int, ...]
    position: int
    max: float


@dataclass(frozen=True)
class Pruned:
    start: int  # first token of the pruned context
    end: int  # one past its last token (post-context included)
    scale: float  # a0 / activation at the peak in the pruned context: maps pruned activations back


def prune(records: Sequence[Record], runner, cfg: N2GConfig) -> list[Pruned]:
    out: list[Pruned | None] = [None] * len(records)
    pending = list(range(len(records)))
    length = 0
    while pending:
        length += 1
        groups: dict[tuple[tuple[int, ...], int, int], list[int]] = defaultdict(list)
        for k in pending:
            r = records[k]
            groups[(r.tokens, max(0, r.position - length + 1), r.position)].append(k)
        by_seq: dict[tuple[int, ...], list[tuple[int, list[int]]]] = defaultdict(list)
        for (tokens, s, p), ks in groups.items():
            by_seq[tokens[s: p + 1]].append((s, ks))
        pending = []
        for seq, a in runner.each(by_seq):
            for s, ks in by_seq[seq]:
                neurons = np.fromiter((records[k].neuron for k in ks), dtype=np.int64, count=len(ks))
                peak = a[-1, neurons]
                before = a[:-1, neurons].max(axis=0) if len(a) > 1 else np.full(len(ks), -np.inf, dtype=np.float32)
                last_try = s == 0 or length >= cfg.cutoff
                for k, a_p, b in zip(ks, peak.tolist(), before.tolist()):
                    r = records[k]
                    if last_try or (a_p > b and a_p >= cfg.prune_threshold * r.max):
                        scale = r.max / a_p if a_p > 0 else 1.0
                        out[k] = Pruned(s, min(len(r.tokens), r.position + 1 + cfg.post_context), scale)
                    else:
                        pending.append(k)
    return out  # type: ignore[return-value]
