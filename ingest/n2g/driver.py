"""Build every neuron's N2G graph for one layer, with forward passes shared across neurons.

Training records are processed snippet by snippet, a chunk of whole snippets at a time,
about ``chunk_records`` records (bounding memory: what a chunk asks the runner for grows with
its records, and a snippet holds more records the more neurons a layer has, ~15 for
SmolLM2-135M's 1,536 over 65,536 tokens, ~1,100 for an 8B-wide layer's 14,336 over 8,192):
all records of all neurons in a chunk are pruned together (one batch of truncations
per round), then their saliencies (one batch of maskings), then their augmentations (one batch
of substitutions). ``LayerRunner`` runs each distinct sequence once for all neurons, and the
prefixes the sequences share once for all of them.

``build_graphs`` called with one neuron's records at a time is the per-neuron implementation of
the same algorithm (what the reference does); the benchmark compares the two.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ingest.memory import trim
from ingest.n2g.augmentation import EmbeddingNeighbours, Variant, augment
from ingest.n2g.config import N2GConfig
from ingest.n2g.evaluation import Scores, TokenLookup, firing_scores
from ingest.n2g.pruning import Pruned, Record, prune
from ingest.n2g.saliency import Salient, saliency
from ingest.n2g.trie import WILDCARD, Trie


def record_lines(r: Record, q: Pruned, sal: Salient, variants: Sequence[Variant], cfg: N2GConfig,
                 max_act: float) -> Iterable[tuple[list[int], float, list[float]]]:
    """The trie patterns one pruned record gives: one per firing position, one per kept variant."""
    norm = q.scale / max_act

    def pattern(i: int, tokens: Sequence[int], forced: int | None) -> tuple[list[int], list[float]]:
        imp = sal.importance[i]
        toks, imps = [], []
        for k in range(i, q.start - 1, -1):
            value = float(imp[k - q.start])
            explicit = k == i or k == forced or value >= cfg.importance_threshold
            toks.append(int(tokens[k]) if explicit else WILDCARD)
            imps.append(value)
        last = max(d for d, t in enumerate(toks) if t != WILDCARD)
        return toks[: last + 1], imps[: last + 1]

    for i in sal.firing:
        toks, imps = pattern(i, r.tokens, None)
        yield toks, float(sal.acts[i - q.start]) * norm, imps
    for v in variants:
        tokens = list(r.tokens)
        tokens[v.position] = v.token
        toks, imps = pattern(r.position, tokens, v.position)
        yield toks, v.activation * norm, imps


def build_graphs(runner, records: Sequence[Record], max_act: dict[int, float], cfg: N2GConfig,
                 neighbours: EmbeddingNeighbours, *, chunk_records: int = 512,
                 progress: Callable[[int], None] | None = None, keep: list | None = None) -> dict[int, Trie]:
    """One trie per neuron that has records. ``keep``, when given, receives every record's
    (record, pruned, salient, variants) (tests compare them with a brute-force computation)."""
    tries: dict[int, Trie] = {r.neuron: Trie() for r in records}
    by_snippet: dict[tuple[int, ...], list[Record]] = defaultdict(list)
    for r in records:
        by_snippet[r.tokens].append(r)
    for chunk in _chunks(by_snippet.values(), chunk_records):
        pruned = prune(chunk, runner, cfg)
        salient = saliency(chunk, pruned, runner, cfg, max_act)
        variants = augment(chunk, pruned, salient, runner, cfg, neighbours)
        for r, q, sal, var in zip(chunk, pruned, salient, variants):
            for toks, act, imps in record_lines(r, q, sal, var, cfg, max_act[r.neuron]):
                tries[r.neuron].add(toks, act, imps)
            if keep is not None:
                keep.append((r, q, sal, var))
        if progress is not None:
            progress(len(chunk))
        trim()  # a chunk's arrays are freed: give the heap back before the next one fragments it
    return tries


def _chunks(snippets: Iterable[list[Record]], size: int) -> Iterable[list[Record]]:
    """Whole snippets' records, in chunks of at least ``size`` records (the last one may be smaller)."""
    chunk: list[Record] = []
    for records in snippets:
        chunk.extend(records)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def evaluate(trie: Trie, test: Iterable[tuple[Sequence[int], np.ndarray]], threshold: float,
             train: Iterable[tuple[Sequence[int], np.ndarray]] | None = None) -> tuple[Scores, Scores | None]:
    """Firing P/R/F1 of the trie on ``test`` (tokens, normalised activations) records, and of the
    token-lookup baseline fitted on ``train`` when given."""
    test = list(test)
    predicted = [p for tokens, _ in test for p in trie.predict(tokens)]
    actual = [float(a) for _, acts in test for a in acts]
    scores = firing_scores(predicted, actual, threshold)
    if train is None:
        return scores, None
    lookup = TokenLookup(train)
    base = firing_scores([p for tokens, _ in test for p in lookup.predict(tokens)], actual, threshold)
    return scores, base
