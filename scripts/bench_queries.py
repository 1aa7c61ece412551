"""Latency of every named query on a synthetic knowledge base the size of SmolLM2-135M.

    python -m scripts.bench_queries                    # full size, embedded engine
    python -m scripts.bench_queries --scale 0.1        # a tenth of the neurons
    python -m scripts.bench_queries --synthetic-store DIR   # build into DIR, or reuse it if built
    python -m scripts.bench_queries --bolt             # also on a FalkorDB Bolt server
    python -m scripts.bench_queries --store demo-kb    # a real ingested KB, parameters drawn from it

Full size: 46,080 neurons (30 layers x 1536), 49,152 tokens, 10 PROMOTES + 10 SUPPRESSES +
10 READS (5 gate, 5 up) per neuron, 20 ACTIVATES_ON records of 32 tokens per neuron, one
explanation and score per neuron, an N2G trie (two firing tokens, each with two context
tokens) per neuron, 5 SIMILAR_TO per neuron and a Hungarian MATCHES permutation between
consecutive layers. Token popularity follows a power law, as real promoted tokens do.

Each query runs with realistic, varying parameters: a few warm-up runs, then --runs timed
runs. Reported: p50 / p95 in milliseconds, and each p50 as a ratio to a baseline measured
in the same run (a point lookup, ``MATCH (n:Neuron {id: $id}) RETURN n.id``), so figures from
different machines compare. The goal is p95 < 10 ms on the embedded engine.

``--store PATH`` measures a real ingested knowledge base instead (read-only, nothing is
built): its models, neurons and tokens supply the parameters (tokens the neurons promote
and read most, random neurons, layer ranges of its models).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.stages.model import spellings
from ingest.stages.n2g import trie_members
from kb import config, queries
from kb.records import encode_activations
from kb.stores import Store, open_store

MODEL = "synth-135m"
TOKENIZER = "synth-49152"
LAYERS, WIDTH, VOCAB = 30, 1536, 49_152
WORDS = [" dog", " cat", " the", " hot", " code", " red", " and", " of", " sun", " rain",
         " bark", " fox", " run", " blue", " tree", " house", " water", " city", " music", " data"]
SNIPPET_LEN = 32
BASELINE = "MATCH (n:Neuron {id: $id}) RETURN n.id"


def token_text(i: int) -> str:
    # The named words take ranks 100.. so " dog" is a common but not the commonest token.
    return WORDS[i - 100] if 100 <= i < 100 + len(WORDS) else f" w{i}"


class Synth:
    """Frames of the synthetic KB, generated layer by layer (never all in memory)."""

    def __init__(self, scale: float, seed: int = 0):
        self.layers = LAYERS
        self.width = max(4, round(WIDTH * scale))
        self.vocab = VOCAB
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(self.vocab, dtype=np.float64)
        p = 1.0 / (ranks + 20.0)  # power-law popularity of tokens
        self.token_p = p / p.sum()
        # Records spread over many windows, as top activations of different neurons do.
        self.n_snippets = max(200, 4 * self.layers * self.width)

    def nid(self, layer: int, index: np.ndarray) -> np.ndarray:
        return np.char.add(f"{MODEL}/{layer}/", index.astype(str))

    def tid(self, t: np.ndarray) -> np.ndarray:
        return np.char.add(f"{TOKENIZER}/", t.astype(str))

    def sid(self, s: np.ndarray) -> np.ndarray:
        return np.char.add(f"{TOKENIZER}/s", s.astype(str))

    def tokens(self) -> pd.DataFrame:
        ids = np.arange(self.vocab)
        return pd.DataFrame({"id": self.tid(ids), "tokenizer": TOKENIZER, "token_id": ids,
                             "text": [token_text(i) for i in range(self.vocab)]})

    def model(self) -> pd.DataFrame:
        return pd.DataFrame([{"id": MODEL, "kind": "lm", "source": "synthetic", "architecture": "llama",
                              "n_layers": self.layers, "d_model": 576, "d_mlp": self.width,
                              "vocab_size": self.vocab, "tokenizer": TOKENIZER}])

    def snippets(self) -> Iterator[pd.DataFrame]:
        for start in range(0, self.n_snippets, 20_000):
            ids = np.arange(start, min(start + 20_000, self.n_snippets))
            toks = self.rng.choice(self.vocab, size=(len(ids), SNIPPET_LEN), p=self.token_p)
            texts = [[token_text(t) for t in row] for row in toks]
            yield pd.DataFrame({"id": self.sid(ids), "tokenizer": TOKENIZER, "corpus": "synthetic",
                                "token_ids": toks.tolist(), "tokens": texts, "text": ["".join(t) for t in texts]})

    def _idx(self) -> np.ndarray:
        return np.arange(self.width)

    def explained(self, layer: int) -> tuple[list[str], np.ndarray]:
        """Explanation text and score of each neuron of a layer (the same on every call)."""
        rng = np.random.default_rng((layer, 7))
        texts = [f"{w.strip()} and related words" for w in rng.choice(WORDS + ["numbers", "code"], self.width)]
        return texts, rng.uniform(-0.2, 0.9, self.width)

    def neurons(self) -> Iterator[pd.DataFrame]:
        for layer in range(self.layers):
            i, n = self._idx(), self.width
            p, r = self.rng.uniform(0.1, 1, n), self.rng.uniform(0.1, 1, n)
            texts, scores = self.explained(layer)
            yield pd.DataFrame({
                "id": self.nid(layer, i), "model": MODEL, "layer": layer, "idx": i, "kind": "mlp",
                "max_act": self.rng.uniform(0.5, 20, n), "min_act": -self.rng.uniform(0, 0.3, n),
                "mean_act": self.rng.uniform(0, 0.5, n), "var_act": self.rng.uniform(0, 1, n),
                "density": self.rng.beta(0.5, 8, n), "n_tokens": 100_000,
                "n2g_precision": p, "n2g_recall": r, "n2g_f1": 2 * p * r / (p + r),
                "explanation": texts, "explanation_score": scores,
            })

    def per_neuron(self, k: int, fn: Callable[[int, np.ndarray, np.ndarray], dict]) -> Iterator[pd.DataFrame]:
        """One frame per layer with k rows per neuron; fn(layer, src ids, rank) gives the columns."""
        for layer in range(self.layers):
            src = np.repeat(self.nid(layer, self._idx()), k)
            rank = np.tile(np.arange(k), self.width)
            yield pd.DataFrame({"src": src, "rank": rank, **fn(layer, src, rank)})

    def distinct_tokens(self, k: int) -> np.ndarray:
        # k distinct popular-weighted tokens per neuron: sample extra and keep first k unique.
        out = np.empty((self.width, k), dtype=np.int64)
        draws = self.rng.choice(self.vocab, size=(self.width, 3 * k), p=self.token_p)
        for row, d in enumerate(draws):
            u = pd.unique(d)[:k]
            if len(u) < k:
                u = np.concatenate([u, self.rng.choice(self.vocab, k - len(u), replace=False)])
            out[row] = u
        return out.reshape(-1)

    def logit_rels(self, sign: float) -> Iterator[pd.DataFrame]:
        def cols(layer, src, rank):
            logit = np.sort(self.rng.uniform(0.5, 5, (self.width, 10)), axis=1)[:, ::-1].reshape(-1)
            return {"dst": self.tid(self.distinct_tokens(10)), "logit": sign * logit}
        return self.per_neuron(10, cols)

    def reads(self) -> Iterator[pd.DataFrame]:
        def cols(layer, src, rank):
            return {"dst": self.tid(self.distinct_tokens(10)), "weight": self.rng.uniform(0.1, 2, len(src)),
                    "via": np.where(rank < 5, "gate", "up")}
        for df in self.per_neuron(10, cols):
            df["rank"] = df["rank"] % 5
            yield df

    def records(self) -> Iterator[pd.DataFrame]:
        def cols(layer, src, rank):
            n = len(src)
            acts = self.rng.uniform(0, 1, (n, SNIPPET_LEN)).astype(np.float32)
            pos = self.rng.integers(0, SNIPPET_LEN, n)
            peak = np.where(rank < 10, 10 - rank, self.rng.uniform(0, 1, n)).astype(np.float32)
            acts[np.arange(n), pos] = peak
            dst = np.concatenate([self.rng.choice(self.n_snippets, 20, replace=False) for _ in range(self.width)])
            return {"dst": self.sid(dst), "kind": np.where(rank < 10, "top", "random"),
                    "max": peak.astype(np.float64), "position": pos, "activations": encode_activations(acts)}
        for df in self.per_neuron(20, cols):
            df["rank"] = df["rank"] % 10
            yield df

    def explanations(self) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
        for layer in range(self.layers):
            nids = pd.Series(self.nid(layer, self._idx()))
            texts, scores = self.explained(layer)
            eid = nids + "/data/top-activations"
            sid = eid + "/simulation/synth/top"
            yield (
                pd.DataFrame({"id": eid, "neuron": nids, "model": MODEL, "text": texts,
                              "explainer": "data", "method": "top-activations", "created_at": "2024-01-01T00:00:00"}),
                pd.DataFrame({"id": sid, "model": MODEL, "method": "simulation", "value": scores,
                              "scorer": "synth", "split": "top"}),
                pd.DataFrame({"src": nids, "dst": eid}),
                pd.DataFrame({"src": eid, "dst": sid}),
            )

    def n2g(self) -> Iterator[dict[str, pd.DataFrame]]:
        """Two firing tokens per neuron, each with two context tokens one step back."""
        for layer in range(self.layers):
            nids = self.nid(layer, self._idx())
            fire = self.distinct_tokens(2).reshape(self.width, 2)
            ctx = self.rng.choice(self.vocab, size=(self.width, 2, 2), p=self.token_p)
            roots, nodes, prev, fires, context = [], [], [], [], []
            for j, nid in enumerate(nids):
                for a in range(2):
                    f = int(fire[j, a])
                    rid = f"{nid}/{f}"
                    act = float(self.rng.uniform(1, 10))
                    nodes.append((rid, nid, MODEL, token_text(f), f, act, 1.0, False, 0))
                    roots.append((nid, rid))
                    fires.append((nid, f"{TOKENIZER}/{f}", act))
                    for b in range(2):
                        c = int(ctx[j, a, b])
                        cid = f"{rid}.{c}"
                        if b == 1 and c == int(ctx[j, a, 0]):
                            continue
                        imp = float(self.rng.uniform(0, 1))
                        nodes.append((cid, nid, MODEL, token_text(c), c, act, imp, True, 1))
                        prev.append((rid, cid))
                        context.append((nid, f"{TOKENIZER}/{c}", imp))
            yield {
                "N2GNode": pd.DataFrame(nodes, columns=["id", "neuron", "model", "token", "token_id", "activation",
                                                        "importance", "is_end", "depth"]),
                "N2G_ROOT": pd.DataFrame(roots, columns=["src", "dst"]),
                "N2G_PREV": pd.DataFrame(prev, columns=["src", "dst"]),
                "FIRES_ON": pd.DataFrame(fires, columns=["src", "dst", "activation"]),
                "CONTEXT": pd.DataFrame(context, columns=["src", "dst", "importance"]).drop_duplicates(["src", "dst"]),
            }

    def similar(self) -> Iterator[pd.DataFrame]:
        def cols(layer, src, rank):
            n = len(src)
            other_layer = self.rng.integers(0, self.layers, n)
            other = self.rng.integers(0, self.width, n)
            dst = np.array([f"{MODEL}/{l}/{i}" for l, i in zip(other_layer, other)])
            score = np.sort(self.rng.uniform(0.2, 1, (self.width, 5)), axis=1)[:, ::-1].reshape(-1)
            return {"dst": dst, "score": score, "method": "output_weights"}
        for df in self.per_neuron(5, cols):
            yield df[df["src"] != df["dst"]].drop_duplicates(["src", "dst"])

    def matches(self) -> Iterator[pd.DataFrame]:
        for layer in range(self.layers - 1):
            perm = self.rng.permutation(self.width)
            yield pd.DataFrame({"src": self.nid(layer, self._idx()), "dst": self.nid(layer + 1, perm),
                                "similarity": self.rng.uniform(0.2, 1, self.width),
                                "method": "hungarian-out", "run": "layers"})


def build(store: Store, synth: Synth, log: Callable[[str], None]) -> dict[str, float]:
    """Write the synthetic KB; returns seconds per step.

    On the embedded engine each label and type goes in as one batch: LadybugDB's COPY into
    a relationship table that already holds rows costs time in proportion to what is there,
    so thirty per-layer batches cost far more than one.
    """
    timings: dict[str, float] = {}
    one_batch = store.engine == "embedded"

    def write(kind: str, name: str, frames) -> None:
        t = time.perf_counter()
        df = pd.concat(list(frames), ignore_index=True) if not isinstance(frames, pd.DataFrame) else frames
        upsert = store.upsert_nodes if kind == "node" else store.upsert_rels
        upsert(name, df, batch_size=max(1, len(df)) if one_batch else None)
        timings[name] = round(time.perf_counter() - t, 2)
        log(f"  {name}: {len(df):,} rows in {timings[name]} s")

    write("node", "Model", synth.model())
    tokens = synth.tokens()
    write("node", "Token", tokens)
    texts, spells = spellings(tokens)
    write("node", "TokenText", texts)
    write("rel", "SPELLS", spells)
    write("node", "Neuron", synth.neurons())
    write("rel", "HAS_NEURON", (pd.DataFrame({"src": MODEL, "dst": synth.nid(layer, synth._idx())})
                                for layer in range(synth.layers)))
    write("node", "Snippet", synth.snippets())
    write("rel", "PROMOTES", synth.logit_rels(+1))
    write("rel", "SUPPRESSES", synth.logit_rels(-1))
    write("rel", "READS", synth.reads())
    write("rel", "ACTIVATES_ON", synth.records())
    parts = list(zip(*synth.explanations()))
    write("node", "Explanation", parts[0])
    write("node", "Score", parts[1])
    write("rel", "EXPLAINED_BY", parts[2])
    write("rel", "HAS_SCORE", parts[3])
    n2g = list(synth.n2g())
    write("node", "N2GNode", (f["N2GNode"] for f in n2g))
    write("rel", "HAS_N2G_NODE", (trie_members(f["N2GNode"]) for f in n2g))
    for rel_type in ("N2G_ROOT", "N2G_PREV", "FIRES_ON", "CONTEXT"):
        write("rel", rel_type, (f[rel_type] for f in n2g))
    del n2g
    write("rel", "SIMILAR_TO", synth.similar())
    write("rel", "MATCHES", synth.matches())
    return timings


def query_params(model: str, tokens: list[str], neurons: list[str], filters: list[dict],
                 chains: list[dict], n2g_neurons: list[str] | None = None) -> dict[str, list[dict]]:
    """Parameters per named query (several values, cycled through the runs); every named query must have some."""
    every = {
        "models": [{}],
        "promotes_token": [{"token": t} for t in tokens],
        "suppresses_token": [{"token": t, "model": model} for t in tokens],
        "reads_token": [{"token": t, "limit": 10} for t in tokens],
        "fires_on_token": [{"token": t} for t in tokens] + [{"token": " dog", "context": " the"}],
        "neurons_filter": filters,
        "explanations_containing": [{"phrase": w, "limit": 50} for w in ("dog", "Rain", "code")],
        **{name: [{"neuron": n} for n in neurons]
           for name in ("neuron_card", "neuron_promotes", "neuron_suppresses", "neuron_reads", "neuron_explanations",
                        "top_records", "similar_neurons")},
        "n2g_graph": [{"neuron": n} for n in n2g_neurons or neurons],
        "match_chain": chains,
    }
    missing = {q.name for q in queries.all_queries()} - set(every)
    if missing:
        raise SystemExit(f"no workload for named quer{'y' if len(missing) == 1 else 'ies'}: {', '.join(sorted(missing))}")
    return every


def workload(width: int, seed: int = 1) -> dict[str, list[dict]]:
    """Realistic parameters per named query on the synthetic store."""
    rng = np.random.default_rng(seed)
    neurons = [f"{MODEL}/{l}/{i}" for l, i in zip(rng.integers(0, LAYERS, 16), rng.integers(0, width, 16))]
    tokens = [" dog", " cat", " the", " code", " rain", " w5000"]
    filters = [{"model": MODEL, "min_layer": lo, "max_layer": lo + 2, "max_density": 0.05, "min_score": 0.5}
               for lo in (0, 10, 20)]
    chains = [{"neuron": f"{MODEL}/{l}/{i}", "hops": 4} for l, i in zip(rng.integers(0, LAYERS - 4, 8),
                                                                       rng.integers(0, width, 8))]
    return query_params(MODEL, tokens, neurons, filters, chains)


def timed(fn: Callable[[int], object], runs: int, warmup: int) -> tuple[list[float], object]:
    result = None
    for i in range(warmup):
        result = fn(i)
    times = []
    for i in range(runs):
        t = time.perf_counter()
        result = fn(i)
        times.append((time.perf_counter() - t) * 1000)
    return times, result


def summary(times: list[float]) -> dict[str, float]:
    q = np.percentile(times, [50, 95])
    # min shows the floor when other processes share the machine and push p50 up.
    return {"p50_ms": round(float(q[0]), 3), "p95_ms": round(float(q[1]), 3), "min_ms": round(min(times), 3),
            "mean_ms": round(statistics.fmean(times), 3)}


def real_workload(store: Store, seed: int = 1) -> tuple[dict[str, list[dict]], list[str]]:
    """Parameters per named query drawn from a real store, and neuron ids for the baseline."""
    rng = np.random.default_rng(seed)
    models = store.cypher("MATCH (m:Model) RETURN m.id AS id, m.n_layers AS layers, m.d_mlp AS width ORDER BY id")
    if models.empty:
        raise SystemExit("the store holds no model: ingest one first (nkb ingest smollm2-135m --store ...)")
    m = models.iloc[0]
    model, layers, width = str(m["id"]), int(m["layers"]), int(m["width"])
    neurons = [f"{model}/{l}/{i}" for l, i in zip(rng.integers(0, layers, 32), rng.integers(0, width, 32))]
    popular = store.cypher("MATCH (:Neuron)-[:PROMOTES]->(t:Token) RETURN t.text AS text, count(*) AS c "
                           "ORDER BY c DESC, text LIMIT 3")["text"].tolist()
    some = store.cypher("MATCH (t:Token) WHERE t.token_id IN $ids RETURN t.text AS text",
                        {"ids": [int(x) for x in rng.integers(100, 40_000, 3)]})["text"].tolist()
    tokens = list(dict.fromkeys([" dog", " the"] + popular + some))
    filters = [{"model": model, "min_layer": lo, "max_layer": lo + 2, "max_density": 0.05}
               for lo in range(0, max(1, layers - 2), max(1, layers // 3))]
    # Graphs and chains from neurons that have them where the KB has any (the demo builds N2G
    # for layer 0 only, and stores matches only after nkb match), so the data path is timed.
    def having(rel: str, k: int) -> list[str] | None:
        ids = store.cypher(f"MATCH (n:Neuron)-[:{rel}]->() WHERE n.model = $m RETURN DISTINCT n.id AS id ORDER BY id",
                           {"m": model})["id"].tolist()
        return [str(x) for x in rng.choice(ids, min(k, len(ids)), replace=False)] if ids else None

    n2g_neurons = having("N2G_ROOT", 16)
    chains = [{"neuron": n, "hops": 4} for n in having("MATCHES", 8) or neurons[:8]]
    return query_params(model, tokens, neurons, filters, chains, n2g_neurons), neurons


def bench_real(url: str, args, log) -> dict:
    with open_store(url, read_only=True) as store:
        counts = store.counts()
        cases, ids = real_workload(store)
        log(f"measuring the real KB at {config.redact(url)} on {store.engine} ({args.runs} runs after "
            f"{args.warmup} warm-up runs)")
        load_before = _load()
        result = measure(store, 0, args.runs, args.warmup, log, cases=cases, ids=ids)
        result["load_average"] = {"before": load_before, "after": _load()}
        engine = store.engine
    return {"engine": engine, "url": config.redact(url), "real": True, "sizes": counts, "workload": cases, **result}


def measure(store: Store, width: int, runs: int, warmup: int, log: Callable[[str], None],
            cases: dict[str, list[dict]] | None = None, ids: list[str] | None = None) -> dict:
    ids = ids or [f"{MODEL}/{l}/{i}" for l, i in zip(np.random.default_rng(2).integers(0, LAYERS, 32),
                                                     np.random.default_rng(3).integers(0, width, 32))]
    base_times, _ = timed(lambda i: store.cypher(BASELINE, {"id": ids[i % len(ids)]}), runs, warmup)
    base = summary(base_times)
    log(f"  {'baseline (point lookup)':<26} p50 {base['p50_ms']:8.2f} ms  p95 {base['p95_ms']:8.2f} ms")
    out = {"baseline": {"query": BASELINE, **base}, "queries": {}}
    for name, params in (cases or workload(width)).items():
        rows = []

        def run(i: int, name=name, params=params, rows=rows):
            result = queries.run(store, name, params[i % len(params)])
            rows.append(len(result))
            return result

        times, last = timed(run, runs, warmup)
        s = summary(times)
        s["ratio_p50"] = round(s["p50_ms"] / base["p50_ms"], 2) if base["p50_ms"] else None
        s["rows_last_run"] = int(len(last))
        s["rows_max"] = int(max(rows))  # 0: the KB holds nothing this query finds, so it timed an empty answer
        s["meets_10ms_p95"] = s["p95_ms"] < 10
        out["queries"][name] = s
        log(f"  {name:<26} p50 {s['p50_ms']:8.2f} ms  p95 {s['p95_ms']:8.2f} ms  min {s['min_ms']:7.2f}  x{s['ratio_p50']:<6} "
            f"rows {s['rows_last_run']}{'' if s['meets_10ms_p95'] else '   <-- p95 over 10 ms'}"
            f"{'' if s['rows_max'] else '   (no rows for any parameter: the KB holds nothing it finds)'}")
    return out


def bench_store(url: str, scale: float, args, log) -> dict:
    synth = Synth(scale)
    built = None
    with open_store(url, create=True) as store:
        have = store.counts().get("Neuron", 0)
        if have == 0:
            log(f"building the synthetic KB at {config.redact(url)} (scale {scale}: {synth.layers * synth.width:,} neurons)")
            t = time.perf_counter()
            built = {"steps_s": build(store, synth, log)}
            built["total_s"] = round(time.perf_counter() - t, 1)
            log(f"  built in {built['total_s']} s")
        elif have != synth.layers * synth.width:
            raise SystemExit(f"{config.redact(url)} holds {have} neurons, not the {synth.layers * synth.width} "
                             f"of --scale {scale}")
        counts = store.counts()
    # Measure the way users query: a fresh, read-only handle.
    with open_store(url, read_only=True) as store:
        log(f"measuring on {store.engine} ({args.runs} runs after {args.warmup} warm-up runs)")
        load_before = _load()
        result = measure(store, synth.width, args.runs, args.warmup, log)
        result["load_average"] = {"before": load_before, "after": _load()}
        engine = store.engine
    return {"engine": engine, "url": config.redact(url), "scale": scale, "sizes": counts, "build": built, **result}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 1536 neurons per layer (default 1)")
    ap.add_argument("--store", help="measure this real, ingested KB (read-only; parameters drawn from it) "
                                    "instead of a synthetic one")
    ap.add_argument("--synthetic-store", help="embedded directory to build the synthetic KB into, or reuse "
                                              "(default: a temporary one)")
    ap.add_argument("--bolt", action="store_true", help="also measure on a FalkorDB Bolt server (tests/servers.py)")
    ap.add_argument("--bolt-scale", type=float, default=None, help="scale for the Bolt run (default: --scale)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="bench-results/queries.json")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    runs = []
    tmp = None
    try:
        if args.store:
            runs.append(bench_real(args.store, args, log))
            return _write(runs, args, log)
        url = args.synthetic_store
        if url is None:
            tmp = tempfile.mkdtemp(prefix="nkb-bench-")
            url = str(Path(tmp) / "kb")
        runs.append(bench_store(url, args.scale, args, log))
        if args.bolt:
            from tests.servers import FalkorDBServer  # the test suite's real Bolt server (run with -m)

            with FalkorDBServer() as server:
                runs.append(bench_store(server.url_for_graph("bench"), args.bolt_scale or args.scale, args, log))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    _write(runs, args, log)


def _write(runs: list[dict], args, log) -> None:
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    log(f"wrote {out}")


def _load() -> list[float] | None:
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
