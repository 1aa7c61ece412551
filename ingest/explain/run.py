"""Selecting neurons, and the explain / score runs that write Explanations and Scores.

Writes are idempotent upserts: an explanation's id is ``<neuron>/<explainer>/<method>`` and a
score's ``<explanation>/<method>/<scorer>/<split>``, so running the same explainer or scorer
again updates the same nodes. After each batch, ``Neuron.explanation`` and
``Neuron.explanation_score`` are recomputed for the neurons touched (``refresh_best``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from ingest.explain.neurons import NeuronData, load_neurons
from ingest.explain.scorers import ScoreResult
from kb.errors import NkbError
from kb.ids import ExplanationId, NeuronId, ScoreId
from kb.stores.base import Store

Progress = Callable[[int], None] | None
SPLIT = "holdout"  # our scorers use records the explainer did not see, plus random ones


def select_neurons(store: Store, neurons: Sequence[str] = (), select: str | None = None,
                   limit: int | None = None, *, what: str = "explain") -> list[str]:
    """Neuron ids from ``neurons`` (ids, comma- or space-separated) and/or the rows of the
    read-only Cypher query ``select`` (its first column), in order, each once, at most ``limit``.

    The query runs as a query with no parameters spliced in; one that writes is refused before
    it reaches the engine (``kb.errors.ReadOnlyViolation``)."""
    if not neurons and not select:
        raise NkbError(f"no neurons to {what}", "pass --neurons ID... or --select \"MATCH (n:Neuron) ... RETURN n.id\"")
    ids = [str(NeuronId.parse(part)) for text in neurons for part in text.replace(",", " ").split()]
    if select:
        df = store.cypher(select)
        if df.shape[1] == 0:
            raise NkbError("the --select query returns no column", "end it with RETURN n.id")
        for value in df.iloc[:, 0].tolist():
            if not isinstance(value, str):
                raise NkbError(f"the --select query must return neuron ids in its first column, got {value!r}",
                               "end it with RETURN n.id")
            ids.append(str(NeuronId.parse(value)))
    ids = list(dict.fromkeys(ids))
    if limit is not None:
        ids = ids[:limit]
    if not ids:
        raise NkbError(f"the selection is empty: no neuron to {what}",
                       "check the --select query with `nkb query`, or pass --neurons")
    found = set(store.cypher("MATCH (n:Neuron) WHERE n.id IN $ids RETURN n.id AS id", {"ids": ids})["id"])
    missing = [i for i in ids if i not in found]
    if missing:
        raise NkbError(f"no neuron {missing[0]!r} in the store"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                       "list neurons with `nkb query --name neurons_filter`")
    return ids


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def explanation_id(n: NeuronData, explainer: str, method: str) -> str:
    return str(ExplanationId(NeuronId(n.model, n.layer, n.index), explainer, method))


def write_explanations(store: Store, neurons: Sequence[NeuronData], texts: Sequence[str | None],
                       explainer: str, method: str) -> list[str]:
    """Upsert one Explanation per neuron with a text; returns their ids (None texts write nothing)."""
    rows = [{"id": explanation_id(n, explainer, method), "neuron": n.id, "model": n.model, "text": t,
             "explainer": explainer, "method": method, "created_at": _now()}
            for n, t in zip(neurons, texts) if t]
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    store.upsert_nodes("Explanation", frame)
    store.upsert_rels("EXPLAINED_BY", pd.DataFrame({"src": frame["neuron"], "dst": frame["id"]}))
    return frame["id"].tolist()


def write_scores(store: Store, scores: Sequence[tuple[str, str, str, ScoreResult]], split: str = SPLIT) -> int:
    """Upsert Scores: (explanation id, model, scorer, result) each."""
    rows = [{"id": str(ScoreId(ExplanationId.parse(eid), r.method, scorer, split)), "explanation": eid, "model": model,
             "method": r.method, "value": float(r.value), "scorer": scorer, "split": split, "records": r.records,
             "f1": r.f1, "auc": r.auc, "n_records": r.n, "created_at": _now()}
            for eid, model, scorer, r in scores]
    if not rows:
        return 0
    frame = pd.DataFrame(rows)
    store.upsert_nodes("Score", frame)
    store.upsert_rels("HAS_SCORE", pd.DataFrame({"src": frame["explanation"], "dst": frame["id"]}))
    return len(rows)


def best_explanations(frame: pd.DataFrame) -> pd.DataFrame:
    """Per neuron, the explanation to denormalise onto it: the best simulation score wins; a
    neuron with no simulation score gets an LLM explanation before a data-derived one, and the
    data summary before the N2G token list. Columns in: neuron, text, explainer, method, score."""
    if frame.empty:
        return pd.DataFrame(columns=["id", "explanation", "explanation_score"])
    f = frame.assign(
        has_score=frame["score"].notna(),
        llm=frame["explainer"] != "data",
        summary=frame["method"] == "summary",
        score_key=frame["score"].fillna(float("-inf")),
    ).sort_values(["neuron", "has_score", "score_key", "llm", "summary", "text"],
                  ascending=[True, False, False, False, False, True], kind="mergesort")
    best = f.drop_duplicates("neuron", keep="first")
    return pd.DataFrame({"id": best["neuron"].to_numpy(), "explanation": best["text"].to_numpy(),
                         "explanation_score": best["score"].astype("float64").to_numpy()})


def refresh_best(store: Store, neuron_ids: Sequence[str]) -> None:
    """Recompute Neuron.explanation / explanation_score for ``neuron_ids``."""
    if not neuron_ids:
        return
    df = store.cypher(
        "MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) WHERE n.id IN $ids "
        "OPTIONAL MATCH (e)-[:HAS_SCORE]->(s:Score) WHERE s.method = 'simulation' "
        "RETURN n.id AS neuron, e.text AS text, e.explainer AS explainer, e.method AS method, max(s.value) AS score",
        {"ids": list(neuron_ids)})
    best = best_explanations(df)
    if len(best):
        store.upsert_nodes("Neuron", best)


@dataclass
class RunReport:
    neurons: int = 0
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # neurons (or explanations) with nothing written
    values: list[float] = field(default_factory=list)
    seconds: float = 0.0


def explain_neurons(store: Store, ids: Sequence[str], explainer, *, batch_size: int = 64,
                    progress: Progress = None) -> RunReport:
    """Explain ``ids`` with ``explainer`` (``ingest.explain.explainers``) and store the results."""
    t0, report = time.perf_counter(), RunReport(neurons=len(ids))
    for start in range(0, len(ids), batch_size):
        chunk = list(ids[start : start + batch_size])
        data = load_neurons(store, chunk)
        texts = explainer.explain(data, progress)
        report.written += len(write_explanations(store, data, texts, explainer.name, explainer.method))
        report.skipped += [n.id for n, t in zip(data, texts) if not t]
        refresh_best(store, chunk)
    report.seconds = time.perf_counter() - t0
    return report


def score_neurons(store: Store, ids: Sequence[str], scorer, *, explainer: str | None = None,
                  rescore: bool = False, batch_size: int = 32, progress: Progress = None) -> RunReport:
    """Score the stored explanations of ``ids`` (those by ``explainer`` only, when given) with
    ``scorer`` (``ingest.explain.scorers``); explanations that already hold this scorer's score
    are skipped unless ``rescore``."""
    t0, report = time.perf_counter(), RunReport(neurons=len(ids))
    for start in range(0, len(ids), batch_size):
        chunk = list(ids[start : start + batch_size])
        expl = store.cypher("MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) WHERE n.id IN $ids "
                            "RETURN n.id AS neuron, e.id AS id, e.text AS text, e.explainer AS explainer, "
                            "e.model AS model ORDER BY id", {"ids": chunk})
        if explainer is not None:
            expl = expl[expl["explainer"] == explainer]
        if not rescore and len(expl):
            done = set(store.cypher("MATCH (e:Explanation)-[:HAS_SCORE]->(s:Score) WHERE e.id IN $ids "
                                    "AND s.method = $method AND s.scorer = $scorer RETURN e.id AS id",
                                    {"ids": expl["id"].tolist(), "method": scorer.method, "scorer": scorer.name})["id"])
            expl = expl[~expl["id"].isin(done)]
        if expl.empty:
            continue
        data = {n.id: n for n in load_neurons(store, sorted(set(expl["neuron"])), tokens=False)}
        rows = [r for r in expl.itertuples(index=False) if r.neuron in data]
        results = scorer.score([(data[r.neuron], r.text) for r in rows], progress)
        done_rows = [(r.id, r.model, scorer.name, res) for r, res in zip(rows, results) if res is not None]
        report.written += write_scores(store, done_rows)
        report.values += [res.value for res in results if res is not None]
        report.skipped += [r.id for r, res in zip(rows, results) if res is None]
        refresh_best(store, chunk)
    report.seconds = time.perf_counter() - t0
    return report
