"""What the term index of explanation texts (kb.terms) costs to write and saves to search.

    python -m scripts.bench_terms --store demo-kb [--runs 30] [--out bench-results/terms.json]

Both halves use a real ingested KB, read-only:

- write: its Explanation rows (and their neurons and EXPLAINED_BY edges) written into a fresh
  embedded store, as the describe stage writes them (a layer at a time), with the index (the
  store as it is) and without it (the baseline: the same store with Explanation's ``terms_of``
  unset for the run); seconds, the ratio, and the Term and MENTIONS rows written.
- search: ``explanations_containing`` through the index against the query it replaced (a
  lower-cased scan of every text; the baseline), run in alternation on the same store, for
  phrases of every kind: rare and common words, a word in every text, phrases with spaces,
  punctuation only. p50 / p95 in ms and the ratio of the p50s; the two must return the same
  rows, or the script stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from kb import queries, schema
from kb.queries import with_nulls
from kb.stores import open_store

SCAN = """MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation)
WHERE toLower(e.text) CONTAINS toLower($phrase) AND (e.model = $model OR $model IS NULL)
RETURN n.id AS neuron, n.model AS model, n.layer AS layer, n.idx AS idx,
       e.text AS text, e.id AS explanation
ORDER BY model, layer, idx, explanation
LIMIT $limit"""

# (phrase, what kind of phrase it is)
PHRASES = [("dog", "rare word"), ("Rain", "rare word"), ("code", "word in ~1% of texts"),
           ("TypeError", "word in ~1% of texts"), ("peak", "word in every text"),
           ("opening bracket", "two words"), ('records peak on "', "words and punctuation"),
           ("(", "punctuation only"), ("zzzz", "no match")]


@contextmanager
def index_off():
    """Explanation texts written without their terms, for the baseline."""
    nt = schema.NODE_BY_LABEL["Explanation"]
    schema.NODE_BY_LABEL["Explanation"] = dataclasses.replace(nt, terms_of=None)
    try:
        yield
    finally:
        schema.NODE_BY_LABEL["Explanation"] = nt


def write(frames: dict[str, pd.DataFrame], layers: list[int]) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(str(Path(tmp) / "kb"), create=True) as store:
            store.upsert_nodes("Neuron", frames["Neuron"])
            t = time.perf_counter()
            for layer in layers:  # as the describe stage writes them
                rows = frames["Explanation"][frames["Explanation"]["layer"] == layer].drop(columns="layer")
                store.upsert_nodes("Explanation", rows)
                store.upsert_rels("EXPLAINED_BY", pd.DataFrame({"src": rows["neuron"], "dst": rows["id"]}))
            seconds = time.perf_counter() - t
            counts = store.counts()
    return seconds, {k: counts[k] for k in ("Explanation", "Term", "MENTIONS")}


def timed(store, text: str, params: dict, runs: int) -> tuple[list[float], pd.DataFrame]:
    out, df = [], None
    for _ in range(runs):
        t = time.perf_counter()
        df = store.cypher(text, params)
        out.append((time.perf_counter() - t) * 1e3)
    return out, df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="an ingested embedded KB (read-only)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="bench-results/terms.json")
    args = ap.parse_args()
    result: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "store": args.store,
                    "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "cpus": os.cpu_count()},
                    "load_average_before": os.getloadavg()}

    with open_store(args.store, read_only=True) as store:
        frames = {
            "Neuron": store.cypher("MATCH (n:Neuron) RETURN n.id AS id, n.model AS model, n.layer AS layer, "
                                   "n.idx AS idx"),
            "Explanation": store.cypher("MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) RETURN e.id AS id, "
                                        "e.neuron AS neuron, e.model AS model, e.text AS text, "
                                        "e.explainer AS explainer, e.method AS method, n.layer AS layer"),
        }
        query = queries.get("explanations_containing")
        search = []
        for phrase, kind in PHRASES:
            bound = query.bind({"phrase": phrase})
            nulls = frozenset(k for k, v in bound.items() if v is None)
            params = {k: v for k, v in bound.items() if k not in nulls}
            texts = {"index": with_nulls(query.text, nulls), "scan": with_nulls(SCAN, nulls)}
            times: dict[str, list[float]] = {"index": [], "scan": []}
            rows = {}
            for name, text in texts.items():
                timed(store, text, params, args.warmup)
            for _ in range(args.runs):  # in alternation, so both see the same machine
                for name, text in texts.items():
                    ts, rows[name] = timed(store, text, params, 1)
                    times[name] += ts
            if not rows["index"].reset_index(drop=True).equals(rows["scan"].reset_index(drop=True)):
                raise SystemExit(f"the index and the scan disagree on {phrase!r}")
            row = {"phrase": phrase, "kind": kind, "term": bound["term"], "rows": len(rows["index"]),
                   **{f"{n}_p{q}_ms": round(float(np.percentile(t, q)), 2) for n, t in times.items() for q in (50, 95)}}
            row["speedup_p50"] = round(statistics.median(times["scan"]) / statistics.median(times["index"]), 2)
            search.append(row)
            print(f"{phrase!r:22} {kind:24} index p50 {row['index_p50_ms']:7.2f} p95 {row['index_p95_ms']:7.2f}"
                  f"   scan p50 {row['scan_p50_ms']:7.2f} p95 {row['scan_p95_ms']:7.2f}   x{row['speedup_p50']}")
        result["search"] = search

    layers = sorted(frames["Explanation"]["layer"].unique().tolist())
    with index_off():
        base_s, base_counts = write(frames, layers)
    index_s, index_counts = write(frames, layers)
    result["write"] = {"explanations": int(len(frames["Explanation"])), "baseline_s": round(base_s, 2),
                       "index_s": round(index_s, 2), "ratio": round(index_s / base_s, 2),
                       "baseline_counts": base_counts, "index_counts": index_counts}
    print(f"write {len(frames['Explanation']):,} explanations: without the index {base_s:.1f} s, with it "
          f"{index_s:.1f} s (x{index_s / base_s:.2f}; {index_counts['Term']:,} Term, {index_counts['MENTIONS']:,} MENTIONS)")
    result["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
