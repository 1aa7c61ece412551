"""Augmentation: replace important tokens with similar ones, keep the variants that still fire.

The paper asks a masked language model (DistilBERT) for plausible replacements. Offline, with
nothing to download, the replacements here are the token's nearest neighbours in the subject
model's own input embedding (cosine similarity), special tokens excluded. Chosen over the
subject model's next-token predictions because the neighbours of a token are the same in every
context, so they are computed once per token for a whole layer, and because predictions would
need the full forward pass up to the LM head for every pruned context, while the rest of N2G
stops the forward at the neuron's layer (for layer 0 of a 30-layer model, ~30x more work).
No measured comparison of the two was made.

A variant replaces one important token (importance for the peak at least
``importance_threshold``; the peak token itself included) of the pruned context up to the
peak, and is kept when its activation at the peak is at least ``augment_keep`` times the
pruned example's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ingest.n2g.config import N2GConfig
from ingest.n2g.pruning import Pruned, Record
from ingest.n2g.saliency import Salient


class EmbeddingNeighbours:
    """Each token's ``n`` nearest neighbours by cosine similarity of input embeddings (cached).

    The embedding is read in place, in its own dtype, and taken to unit float32 rows a block
    of ``block`` rows at a time (the row norms are computed once): a whole float32 copy would be 805 MB at an 8B model's width
    and SmolLM2's vocabulary, 2.1 GB with Llama 3's."""

    def __init__(self, embedding: torch.Tensor, n: int, exclude: Iterable[int] = (), *, block: int = 8192):
        self.embedding = embedding.detach()
        self.n = n
        self.block = block
        vocab = self.embedding.shape[0]
        self.norm = torch.cat([self.embedding[lo:lo + block].to(device="cpu", dtype=torch.float32).norm(dim=1)
                               for lo in range(0, vocab, block)]).clamp_min(1e-12)
        self.exclude = torch.tensor(sorted(set(exclude)), dtype=torch.int64)
        self.cache: dict[int, tuple[int, ...]] = {}

    def _unit(self, rows: torch.Tensor | slice) -> torch.Tensor:
        return self.embedding[rows].to(device="cpu", dtype=torch.float32) / self.norm[rows, None]

    def __call__(self, tokens: Iterable[int]) -> dict[int, tuple[int, ...]]:
        tokens = {int(t) for t in tokens}
        todo = sorted(tokens - set(self.cache))
        vocab = self.embedding.shape[0]
        for start in range(0, len(todo), 1024):
            q = torch.tensor(todo[start:start + 1024], dtype=torch.int64)
            unit_q = self._unit(q)
            sim = torch.empty((len(q), vocab), dtype=torch.float32)
            for lo in range(0, vocab, self.block):
                hi = min(lo + self.block, vocab)
                sim[:, lo:hi] = unit_q @ self._unit(slice(lo, hi)).T
            sim[torch.arange(len(q)), q] = -torch.inf
            if len(self.exclude):
                sim[:, self.exclude] = -torch.inf
            top = sim.topk(self.n, dim=1).indices.tolist() if self.n else [[] for _ in q]
            self.cache.update(zip(q.tolist(), (tuple(row) for row in top)))
        return {t: self.cache[t] for t in tokens}


@dataclass(frozen=True)
class Variant:
    position: int  # snippet position of the replaced token
    token: int  # the replacement
    activation: float  # at the peak, unscaled


def augment(records: Sequence[Record], pruned: Sequence[Pruned], salient: Sequence[Salient], runner,
            cfg: N2GConfig, neighbours: EmbeddingNeighbours) -> list[list[Variant]]:
    if cfg.n_augment == 0:
        return [[] for _ in records]
    important = []
    for r, q, sal in zip(records, pruned, salient):
        imp = sal.importance[r.position]
        important.append([q.start + j for j in np.flatnonzero(imp >= cfg.importance_threshold).tolist()])
    near = neighbours(r.tokens[j] for r, js in zip(records, important) for j in js)

    def variant(r: Record, q: Pruned, j: int, t: int) -> tuple[int, ...]:
        ctx = r.tokens[q.start: r.position + 1]
        k = j - q.start
        return ctx[:k] + (t,) + ctx[k + 1:]

    wanted: dict[tuple[int, ...], list[tuple[int, int, int]]] = defaultdict(list)  # variant -> (record, j, t)
    for k, (r, q, js) in enumerate(zip(records, pruned, important)):
        for j in js:
            for t in near[r.tokens[j]]:
                wanted[variant(r, q, j, t)].append((k, j, t))
    peak: list[dict[tuple[int, int], float]] = [{} for _ in records]  # the runner streams: keep one value each
    for seq, acts in runner.each(wanted):
        for k, j, t in wanted[seq]:
            peak[k][j, t] = float(acts[-1, records[k].neuron])
    out = []
    for r, q, sal, js, peak_k in zip(records, pruned, salient, important, peak):
        base = float(sal.acts[r.position - q.start])
        kept = []
        for j in js:
            for t in near[r.tokens[j]]:
                a = peak_k[j, t]
                if base > 0 and a >= cfg.augment_keep * base:
                    kept.append(Variant(j, t, a))
        out.append(kept)
    return out
