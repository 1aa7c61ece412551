"""Benchmark of vectors, search, edge building and Hungarian matching -> bench-results/vectors.json.

Measures, in-process:
- search latency p50/p95, query embedding (bundled all-MiniLM-L6-v2) included, over an exact
  index of 46,080 vectors (the bundled model's neuron count; explanation-sized, 384 dims) and
  an automatic (IVF) index of 1,000,000 synthetic clustered vectors; and ``similar`` latency
  over the bundled model's real weights_out vectors (576 dims);
- the compute time of the similar stage's SIMILAR_TO kNN and of the tokens stage's reverse
  top-k over the whole bundled model (store writes not included: see the ingest timings);
- Hungarian: dense 1,536 x 1,536 and sparse 16,384 x 16,384;
- mean matched similarity (weights_out) of the bundled model by layer distance;
- with ``--store`` (an ingested KB of the bundled model, e.g. the demo's ``demo-kb``): the
  Python API end to end, ``kb.vectors.search`` (query embedding, index, the store's neuron
  rows) and ``kb.vectors.similar`` over the model's 46,080 real weights_out vectors.

The baseline for ratios is a plain numpy brute-force search measured in the same run.
Usage: python scripts/bench_vectors.py [--quick] [--store demo-kb]  (--quick: 200k synthetic vectors, fewer pairs)
Results are written after every section, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def pct(xs):
    xs = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(xs, 50)), 2), "p95_ms": round(float(np.percentile(xs, 95)), 2)}


def clustered(n, d, seed, clusters=1000):
    from kb.vectors import normalise

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(n, s + 100_000) - s
        out[s:s + m] = centres[rng.integers(0, clusters, m)] + 0.35 * rng.normal(size=(m, d)).astype(np.float32)
    return normalise(out)


def search_latency(index, texts, embed, repeat=3):
    times = []
    for _ in range(repeat):
        for t in texts:
            t0 = time.perf_counter()
            q = embed([t])
            index.search(q, 10)
            times.append(time.perf_counter() - t0)
    return pct(times)


def api_latency(url: str, texts: list[str], repeat: int = 3) -> dict:
    """``search`` and ``similar`` as a Python user calls them on a real KB (warm: one call of each
    first, which loads the indexes and the text model)."""
    from kb.stores import open_store
    from kb.vectors import load, search, similar

    out: dict = {"store": url}
    with open_store(url, read_only=True) as store:
        model = "smollm2-135m"
        out["explanation_vectors"] = len(load(store, model, "explanation"))
        out["weights_out_vectors"] = len(load(store, model, "weights_out"))
        search(store, texts[0], model=model)
        times = []
        for _ in range(repeat):
            for t in texts:
                t0 = time.perf_counter()
                search(store, t, model=model, k=10)
                times.append(time.perf_counter() - t0)
        out["search"] = pct(times)
        rng = np.random.default_rng(0)
        neurons = [f"{model}/{la}/{i}" for la, i in zip(rng.integers(0, 30, 30), rng.integers(0, 1536, 30))]
        similar(store, neurons[0])
        times = []
        for nid in neurons:
            t0 = time.perf_counter()
            similar(store, nid, k=10)
            times.append(time.perf_counter() - t0)
        out["similar_weights_out_other_layers"] = pct(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--store", help="an ingested KB of smollm2-135m: also time search() and similar() end to end")
    ap.add_argument("--out", default="bench-results/vectors.json")
    args = ap.parse_args()
    from kb import vectors
    from kb.match import match_vectors, solve_sparse
    from kb.vectors.text import embed_texts

    res: dict = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
                 "note": "load average at the start above (a trailing average: it still counts a job that just "
                         "ended); absolute times vary with the machine, compare the ratios measured in the same run"}
    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    res["quick"] = args.quick
    texts = ["dogs and cats", "python source code", "numbers in a list", "the word 'the'", "closing brackets",
             "French words", "past tense verbs", "mathematical notation", "names of cities", "emotions"]
    embed_texts(texts)  # load the text model once
    t0 = time.perf_counter()
    for t in texts:
        embed_texts([t])
    res["query_embedding_ms"] = round((time.perf_counter() - t0) / len(texts) * 1000, 2)

    if args.store:
        res["api_end_to_end"] = api_latency(args.store, texts)
        save()

    # 1. search on a full model's worth of vectors (46,080), exact; and on 1M, automatic (IVF).
    x = clustered(46_080, 384, seed=0)
    idx = vectors.build_index(x)
    res["search_46080_exact"] = {"index": vectors.files.index_type_of(idx), **search_latency(idx, texts, embed_texts)}
    q = clustered(20, 384, seed=9)
    t0 = time.perf_counter()
    for row in q:
        np.argsort(-(x @ row))[:10]
    res["search_46080_numpy_baseline_ms"] = round((time.perf_counter() - t0) / len(q) * 1000, 2)
    save()
    n_big = 200_000 if args.quick else 1_000_000
    big = clustered(n_big, 384, seed=1)
    t0 = time.perf_counter()
    bidx = vectors.build_index(big)
    build_s = time.perf_counter() - t0
    held = clustered(n_big + 100, 384, seed=1)[n_big:]  # same distribution (same seed and centres), unseen rows
    truth = np.argsort(-(held @ big.T), axis=1)[:, :10]
    _, got = bidx.search(held, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
    res[f"search_{n_big}_auto"] = {"index": vectors.files.index_type_of(bidx), "build_s": round(build_s, 1),
                                   "recall_at_10": round(recall, 3), **search_latency(bidx, texts, embed_texts)}
    del big, bidx

    save()
    # 2. Hungarian.
    rng = np.random.default_rng(0)
    a = clustered(1536, 576, seed=2)
    b = vectors.normalise(a[rng.permutation(1536)] + 0.05 * rng.normal(size=a.shape))
    t0 = time.perf_counter()
    match_vectors(a, b, solver="dense")
    res["hungarian_dense_1536_s"] = round(time.perf_counter() - t0, 3)
    a = clustered(16_384, 64, seed=3)
    b = vectors.normalise(a[rng.permutation(16_384)] + 0.05 * rng.normal(size=a.shape))
    t0 = time.perf_counter()
    _, _, sims = solve_sparse(a, b, k=16)
    res["hungarian_sparse_16384_s"] = round(time.perf_counter() - t0, 3)

    save()
    # 3. The bundled model: similar latency, edge compute, matching by layer distance.
    import torch

    from ingest.models import load_model
    from ingest.stages.tokens import reverse_directions, top_neurons

    t0 = time.perf_counter()
    lm = load_model("smollm2-135m")
    res["bundled_model_load_s"] = round(time.perf_counter() - t0, 1)
    ad = lm.adapter
    layers = list(range(ad.n_layers))
    with torch.inference_mode():
        w_out = vectors.normalise(torch.cat([ad.w_out(la) for la in layers]).numpy())
    widx = vectors.build_index(w_out)
    times = []
    for i in rng.integers(0, len(w_out), 50):
        t0 = time.perf_counter()
        widx.search(w_out[i:i + 1], 11)
        times.append(time.perf_counter() - t0)
    res["similar_weights_out_46080"] = pct(times)
    t0 = time.perf_counter()
    for s in range(0, len(w_out), 4096):
        widx.search(w_out[s:s + 4096], 11)
    res["similar_edges_knn_compute_s_per_method"] = round(time.perf_counter() - t0, 1)
    save()
    t0 = time.perf_counter()
    dirs = reverse_directions(ad, layers)
    unembed = ad.unembed()
    for (rel, _), w in dirs.items():
        top_neurons(unembed, w, 10, both=rel == "PROMOTES")
    res["token_edges_compute_s"] = round(time.perf_counter() - t0, 1)

    save()
    per_layer = [w_out[la * ad.d_mlp:(la + 1) * ad.d_mlp] for la in layers]
    distances = [1, 2, 4, 8, 16, 29] if not args.quick else [1, 8, 29]
    rows = []
    for d in distances:
        starts = sorted({0, (ad.n_layers - 1 - d) // 2, ad.n_layers - 1 - d}) if not args.quick else [0]
        for la in starts:
            m = match_vectors(per_layer[la], per_layer[la + d], solver="dense")
            rows.append({"layer": la, "to_layer": la + d, "distance": d, "mean_similarity": round(float(m["similarity"].mean()), 4)})
    res["matching_weights_out_by_distance"] = rows
    by_d = {}
    for r in rows:
        by_d.setdefault(r["distance"], []).append(r["mean_similarity"])
    res["matching_mean_by_distance"] = {d: round(float(np.mean(v)), 4) for d, v in by_d.items()}
    res["delphi_finding"] = ("delphi reports that SAE latents of adjacent layers match closely under a Hungarian "
                             "assignment, and less so as layers are further apart")
    save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
