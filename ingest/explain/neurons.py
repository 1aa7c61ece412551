"""What an explainer or a scorer sees of a neuron, read from the store in bulk."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kb.records import decode_activations
from kb.stores.base import Store


@dataclass
class Record:
    """One activation record: the snippet's tokens and the neuron's activation at each."""

    tokens: list[str]
    activations: np.ndarray
    kind: str  # top | random | quantile_<k>
    rank: int

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.rank}"


@dataclass
class NeuronData:
    id: str
    model: str
    layer: int
    index: int
    max_act: float | None = None
    n2g_f1: float | None = None
    records: list[Record] = field(default_factory=list)
    promotes: list[str] = field(default_factory=list)  # by rank
    suppresses: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)  # every input direction, by rank then via
    fires_on: list[tuple[str, float]] = field(default_factory=list)  # N2G, strongest first
    context: list[tuple[str, float]] = field(default_factory=list)
    peaks: list[str] | None = None  # the token each top record peaks on, when loaded without records

    def of_kind(self, kind: str) -> list[Record]:
        return sorted((r for r in self.records if r.kind == kind), key=lambda r: r.rank)

    @property
    def top(self) -> list[Record]:
        return self.of_kind("top")

    @property
    def random(self) -> list[Record]:
        return self.of_kind("random")

    def firing_tokens(self) -> Counter:
        """How many top records peak on each token text."""
        if self.peaks is not None:
            return Counter(self.peaks)
        return Counter(r.tokens[int(np.argmax(r.activations))] for r in self.top if len(r.tokens))


# The filters are fixed text chosen here; every value travels as a parameter.
_BY_IDS = "n.id IN $ids"
_BY_LAYER = "n.model = $model AND n.layer = $layer"


def load_neurons(store: Store, ids: list[str] | None = None, *, model: str | None = None, layer: int | None = None,
                 records: bool = True, peaks: bool = False, tokens: bool = True) -> list[NeuronData]:
    """The neurons ``ids`` (in that order), or every neuron of one ``model`` layer (by index),
    with their top and random records and their LM-head and N2G tokens. ``peaks`` (with
    ``records=False``) reads only the token each top record peaks on (``NeuronData.peaks``):
    what a summary needs, without decoding every activation."""
    if ids is not None:
        where, params = _BY_IDS, {"ids": list(ids)}
    else:
        where, params = _BY_LAYER, {"model": model, "layer": int(layer)}
    base = store.cypher(f"MATCH (n:Neuron) WHERE {where} RETURN n.id AS id, n.model AS model, n.layer AS layer, "
                        "n.idx AS idx, n.max_act AS max_act, n.n2g_f1 AS n2g_f1", params)
    found = {row.id: NeuronData(row.id, row.model, int(row.layer), int(row.idx), _num(row.max_act), _num(row.n2g_f1))
             for row in base.itertuples(index=False)}
    if records and found:
        df = store.cypher(f"MATCH (n:Neuron)-[r:ACTIVATES_ON]->(s:Snippet) WHERE {where} "
                          "AND (r.kind = 'top' OR r.kind = 'random') "
                          "RETURN n.id AS id, r.kind AS kind, r.rank AS rank, r.activations AS acts, s.tokens AS tokens",
                          params)
        for row in df.itertuples(index=False):
            found[row.id].records.append(Record(list(row.tokens), decode_activations(row.acts), row.kind, int(row.rank)))
    if peaks and not records and found:
        df = store.cypher(f"MATCH (n:Neuron)-[r:ACTIVATES_ON]->(s:Snippet) WHERE {where} AND r.kind = 'top' "
                          "RETURN n.id AS id, r.rank AS rank, r.position AS position, s.tokens AS tokens", params)
        for n in found.values():
            n.peaks = []
        for row in df.sort_values(["id", "rank"]).itertuples(index=False):
            if 0 <= row.position < len(row.tokens):
                found[row.id].peaks.append(row.tokens[row.position])
    if tokens and found:
        # The neuron's own top-k lists (found = 'neuron'), not the token stage's reverse edges,
        # whose rank is the neuron's place among a token's neurons.
        own = " AND r.found = 'neuron'"
        for rel, attr, value, only in (("PROMOTES", "promotes", "r.rank", own), ("SUPPRESSES", "suppresses", "r.rank", own),
                                       ("READS", "reads", "r.rank", own), ("FIRES_ON", "fires_on", "r.activation", ""),
                                       ("CONTEXT", "context", "r.importance", "")):
            df = store.cypher(f"MATCH (n:Neuron)-[r:{rel}]->(t:Token) WHERE {where}{only} "
                              f"RETURN n.id AS id, t.text AS text, {value} AS value", params)
            if df.empty:
                continue
            ranked = value == "r.rank"
            df = df.sort_values(["id", "value", "text"], ascending=[True, ranked, True])
            texts, values, nids = df["text"].tolist(), df["value"].astype(float).tolist(), df["id"].tolist()
            for start, end in _runs(nids):  # one run of rows per neuron (a groupby, without its cost per group)
                if ranked:
                    # READS has one list per input matrix; keep each token once, best rank first
                    setattr(found[nids[start]], attr, list(dict.fromkeys(texts[start:end])))
                else:
                    setattr(found[nids[start]], attr, list(zip(texts[start:end], values[start:end])))
    if ids is not None:
        return [found[i] for i in ids if i in found]
    return sorted(found.values(), key=lambda n: n.index)


def _runs(keys: list) -> list[tuple[int, int]]:
    """(start, end) of each run of equal consecutive ``keys``."""
    cuts = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    return list(zip([0, *cuts], [*cuts, len(keys)]))


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)
