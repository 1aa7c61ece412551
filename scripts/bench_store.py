#!/usr/bin/env python
"""Write throughput of the stores on a synthetic knowledge base the size of SmolLM2-135M.

At --scale 1: 30 layers x 1536 neurons (46,080), a 49,152-token vocabulary, 2,000
snippets of 64 tokens, 10 PROMOTES + 10 SUPPRESSES and 20 ACTIVATES_ON records (64
activations each) per neuron. --scale shrinks neurons per layer, vocabulary and snippets.

Five measurements, each over the very same frames (generated per batch from a fixed seed,
outside the timed region):

  raw_copy      LadybugDB ``COPY T FROM df`` into a fresh database: the embedded baseline
  upsert_new    EmbeddedStore.upsert_* into an empty store
  upsert_again  the same upserts again (the idempotent path: look up, compare, write nothing)
  bolt_raw      ``UNWIND $rows ... CREATE`` of the same rows (``df.to_dict("records")``, one
                write transaction per batch of the store's size) through the neo4j driver into
                FalkorDB over Bolt (tests/servers.py): the Bolt baseline
  bolt          Neo4jStore upserts into another graph of the same server; its ratio is
                against bolt_raw

Each table is handed over as frames of --batch-size rows (default: the embedded store's,
so one frame per table); --batch-size 50000 shows the cost of many batches, which LadybugDB
charges for (see EmbeddedStore.default_batch_size). --repeat N keeps each table's best of N
runs, which steadies the numbers on a busy machine. Also timed: four ways to find which of
50,000 ids are stored. Prints a table and writes JSON (rows/s per table and overall, ratios
against raw_copy). Query latency is measured elsewhere.

Run it from the repository root as a module, so that the test servers import as
``tests.servers``::

    python -m scripts.bench_store --scale 0.1              # smoke test, about a minute
    python -m scripts.bench_store --repeat 3 --no-bolt     # SmolLM2 size
    python -m scripts.bench_store --scale 0.1 --bolt-only --out bench-results/store-bolt.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ladybug as lb
import numpy as np
import pandas as pd

from kb import schema
from kb.errors import NkbError
from kb.records import encode_activations
from kb.stores.embedded import EmbeddedStore, table_ddl

MODEL, TOKENIZER = "smol", "smol"
LAYERS, WIDTH, VOCAB, SNIPPETS, SNIPPET_LEN = 30, 1536, 49_152, 2_000, 64
PER_NEURON = {"HAS_NEURON": 1, "PROMOTES": 10, "SUPPRESSES": 10, "ACTIVATES_ON": 20}
ALL = ("Model", "Token", "Snippet", "Neuron", "HAS_NEURON", "PROMOTES", "SUPPRESSES", "ACTIVATES_ON")
ORDER = list(ALL)  # what this run measures (--tables narrows it)


class Synthetic:
    """Frames of the synthetic KB, batch by batch; the same seed gives the same frames."""

    def __init__(self, scale: float, batch_size: int, seed: int):
        self.width = max(1, round(WIDTH * scale))
        self.vocab = max(20, round(VOCAB * scale))
        self.snippets = max(20, round(SNIPPETS * scale))
        self.batch_size = batch_size
        self.seed = seed
        self.neurons = LAYERS * self.width

    def sizes(self) -> dict[str, int]:
        every = {"Model": 1, "Token": self.vocab, "Snippet": self.snippets, "Neuron": self.neurons,
                 **{t: self.neurons * k for t, k in PER_NEURON.items()}}
        return {name: every[name] for name in ORDER}

    def frames(self, name: str) -> Iterator[pd.DataFrame]:
        per = PER_NEURON.get(name)
        total = self.sizes()[name] if per is None else self.neurons
        step = self.batch_size if per is None else max(1, self.batch_size // per)
        for i, start in enumerate(range(0, total, step)):
            rng = np.random.default_rng([self.seed, ALL.index(name), i])
            yield getattr(self, "_" + name.lower())(rng, start, min(start + step, total))

    def _in_table_order(self, name: str, cols: dict) -> pd.DataFrame:
        # Raw COPY takes columns by position, so every frame carries every column in order.
        if name in schema.NODE_BY_LABEL:
            names = schema.NODE_BY_LABEL[name].columns
        else:
            names = ["src", "dst", *schema.REL_BY_TYPE[name].columns]
        n = len(next(iter(cols.values())))
        return pd.DataFrame({c: cols[c] if c in cols else [None] * n for c in names})

    def _model(self, rng, start, stop):
        return self._in_table_order("Model", {
            "id": [MODEL], "kind": ["lm"], "source": ["synthetic"], "architecture": ["llama"],
            "n_layers": [LAYERS], "d_model": [576], "d_mlp": [self.width], "vocab_size": [self.vocab],
            "tokenizer": [TOKENIZER]})

    def _token(self, rng, start, stop):
        ids = np.arange(start, stop)
        return self._in_table_order("Token", {"id": [f"{TOKENIZER}/{i}" for i in ids], "tokenizer": TOKENIZER,
                                              "token_id": ids, "text": [f" tok{i}" for i in ids]})

    def _snippet(self, rng, start, stop):
        token_ids = rng.integers(0, self.vocab, (stop - start, SNIPPET_LEN))
        tokens = [[f" tok{t}" for t in row] for row in token_ids]
        return self._in_table_order("Snippet", {
            "id": [f"{TOKENIZER}/{i:016x}" for i in range(start, stop)], "tokenizer": TOKENIZER,
            "corpus": "bench", "token_ids": token_ids.tolist(), "tokens": tokens, "text": ["".join(t) for t in tokens]})

    def _neuron_ids(self, start, stop) -> list[str]:
        return [f"{MODEL}/{i // self.width}/{i % self.width}" for i in range(start, stop)]

    def _neuron(self, rng, start, stop):
        n = stop - start
        idx = np.arange(start, stop)
        return self._in_table_order("Neuron", {
            "id": self._neuron_ids(start, stop), "model": MODEL, "layer": idx // self.width, "idx": idx % self.width,
            "kind": "mlp", "max_act": rng.random(n) * 10, "min_act": -rng.random(n), "mean_act": rng.random(n),
            "var_act": rng.random(n), "density": rng.random(n), "n_tokens": np.full(n, 1_000_000),
            "quantile_boundaries": np.sort(rng.random((n, 10)), axis=1).tolist(),
            "n2g_precision": rng.random(n), "n2g_recall": rng.random(n), "n2g_f1": rng.random(n)})

    def _has_neuron(self, rng, start, stop):
        return self._in_table_order("HAS_NEURON", {"src": [MODEL] * (stop - start),
                                                   "dst": self._neuron_ids(start, stop)})

    def _spread(self, rng, start, stop, k: int, pool: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """k distinct targets out of ``pool`` for each neuron: sources, target numbers, ranks."""
        n = stop - start
        base = rng.integers(0, pool, n)
        targets = (base[:, None] + np.arange(k)[None, :] * (pool // k)) % pool
        src = np.repeat(np.array(self._neuron_ids(start, stop), dtype=object), k)
        return src.tolist(), targets.ravel(), np.tile(np.arange(k), n)

    def _logits(self, name, rng, start, stop):
        src, dst, rank = self._spread(rng, start, stop, PER_NEURON[name], self.vocab)
        return self._in_table_order(name, {"src": src, "dst": [f"{TOKENIZER}/{t}" for t in dst],
                                           "logit": rng.normal(size=len(src)), "rank": rank})

    def _promotes(self, rng, start, stop):
        return self._logits("PROMOTES", rng, start, stop)

    def _suppresses(self, rng, start, stop):
        return self._logits("SUPPRESSES", rng, start, stop)

    def _activates_on(self, rng, start, stop):
        src, dst, rank = self._spread(rng, start, stop, PER_NEURON["ACTIVATES_ON"], self.snippets)
        acts = rng.random((len(src), SNIPPET_LEN), dtype=np.float32)
        return self._in_table_order("ACTIVATES_ON", {
            "src": src, "dst": [f"{TOKENIZER}/{t:016x}" for t in dst], "kind": "top", "rank": rank,
            "max": acts.max(axis=1).astype(np.float64), "position": acts.argmax(axis=1),
            "activations": encode_activations(acts)})


def measure(data: Synthetic, write: Callable[[str, pd.DataFrame], None], log: Callable[[str], None],
            tables: list[str] | None = None) -> dict:
    """Time ``write`` over every batch of every table; frame generation is not timed."""
    out, total_rows, total_s = {}, 0, 0.0
    for name in tables or ORDER:
        rows, seconds = 0, 0.0
        for df in data.frames(name):
            t0 = time.perf_counter()
            write(name, df)
            seconds += time.perf_counter() - t0
            rows += len(df)
        out[name] = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else None}
        log(f"  {name:<13} {rows:>9,} rows {seconds:8.2f} s")
        total_rows += rows
        total_s += seconds
    return {"tables": out, "total": {"rows": total_rows, "seconds": round(total_s, 3),
                                    "rows_per_s": round(total_rows / total_s)}}


def keep_best(results: dict, key: str, run: dict) -> None:
    """Keep, per table, the fastest of the repeats: the machine's noise only ever slows a run down."""
    if key not in results:
        results[key] = run
        return
    best = results[key]
    for name, t in run["tables"].items():
        if t["seconds"] < best["tables"][name]["seconds"]:
            best["tables"][name] = t
    rows = sum(t["rows"] for t in best["tables"].values())
    seconds = sum(t["seconds"] for t in best["tables"].values())
    best["total"] = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def raw_copy(data: Synthetic, workdir: Path, log) -> dict:
    path = workdir / "raw"
    path.mkdir()
    db = lb.Database(str(path / "graph.lbug"))
    conn = lb.Connection(db)
    for statement in table_ddl():
        conn.execute(statement)

    def write(name: str, df: pd.DataFrame) -> None:
        conn.execute(f"COPY `{name}` FROM $df", {"df": df})

    try:
        result = measure(data, write, log)
        result["counts"] = {name: int(conn.execute(
            f"MATCH (n:`{name}`) RETURN count(*)" if name in schema.NODE_BY_LABEL
            else f"MATCH ()-[r:`{name}`]->() RETURN count(*)").get_all()[0][0]) for name in ORDER}
    finally:
        conn.close()
        db.close()
    return result


def lookups(n: int = 50_000) -> dict:
    """Seconds to find which of n ids (half of them stored) exist, by each way the engine offers."""
    import pyarrow as pa

    with tempfile.TemporaryDirectory() as tmp:
        db = lb.Database(str(Path(tmp) / "graph.lbug"))
        conn = lb.Connection(db)
        conn.execute("CREATE NODE TABLE N(id STRING PRIMARY KEY, x DOUBLE)")
        stored = [f"m/{i // 1536}/{i % 1536}" for i in range(n)]
        conn.execute("COPY N FROM $df", {"df": pa.table({"id": stored, "x": np.arange(n, dtype=float)})})
        rng = np.random.default_rng(0)
        probe = rng.permutation(stored)[: n // 2].tolist() + [f"x/{i}" for i in range(n - n // 2)]
        ways = {
            "MATCH (n) WHERE n.id IN $ids": lambda: conn.execute(
                "MATCH (n:N) WHERE n.id IN $ids RETURN n.id", {"ids": probe}).get_as_arrow().num_rows,
            "UNWIND $ids MATCH (n {id: i})": lambda: conn.execute(
                "UNWIND $ids AS i MATCH (n:N {id: i}) RETURN i", {"ids": probe}).get_as_arrow().num_rows,
            "LOAD FROM $arrow MATCH (n {id: _id})": lambda: conn.execute(
                "LOAD FROM $keys MATCH (n:N {id: _id}) RETURN _id", {"keys": pa.table({"_id": probe})}
            ).get_as_arrow().num_rows,
            "cached set: read all ids once": lambda: len(set(conn.execute(
                "MATCH (n:N) RETURN n.id").get_as_arrow().column(0).to_pylist()) & set(probe)),
        }
        out = {}
        for name, run in ways.items():
            t0 = time.perf_counter()
            found = run()
            out[name] = {"seconds": round(time.perf_counter() - t0, 4), "found": found}
        conn.close()
        db.close()
    return out


def store_writer(store, progress=None) -> Callable[[str, pd.DataFrame], None]:
    def write(name: str, df: pd.DataFrame) -> None:
        if name in schema.NODE_BY_LABEL:
            store.upsert_nodes(name, df, progress=progress)
        else:
            store.upsert_rels(name, df, progress=progress)
    return write


def raw_unwind_create(driver, graph: str, batch_size: int) -> Callable[[str, pd.DataFrame], None]:
    """The Bolt baseline: the store's own CREATE statements, rows straight from pandas."""
    from kb.stores.neo4j import create_nodes_query, create_rels_query

    def write(name: str, df: pd.DataFrame) -> None:
        if name in schema.NODE_BY_LABEL:
            query = create_nodes_query(schema.NODE_BY_LABEL[name], list(df.columns))
        else:
            query = create_rels_query(schema.REL_BY_TYPE[name], list(df.columns))
        for start in range(0, len(df), batch_size):
            rows = df.iloc[start:start + batch_size].to_dict("records")
            with driver.session(database=graph) as session:
                session.execute_write(lambda tx: tx.run(query, rows=rows).consume())
    return write


def bolt(data: Synthetic, budget_s: float, log) -> dict:
    """Raw UNWIND CREATE and the store's upserts on one FalkorDB Bolt server, or why not."""
    try:
        import neo4j

        from kb.stores import open_store
        from tests.servers import FalkorDBServer
    except ImportError as e:
        return {"not_measured": f"the Bolt store or test server is not available ({e}); "
                                "run from the repository root: python -m scripts.bench_store"}
    out: dict = {}
    try:
        with FalkorDBServer() as server:
            store = open_store(server.url_for_graph("bench"), create=True)
            driver = neo4j.GraphDatabase.driver(f"bolt://127.0.0.1:{server.port}", auth=("falkordb", server.password))
            try:
                # The raw graph gets the same indexes the store made for itself, so both sides
                # find endpoints by index.
                raw = open_store(server.url_for_graph("raw"), create=True)
                raw.close()
                for key, write in (("bolt_raw", raw_unwind_create(driver, "raw", store.default_batch_size)),
                                   ("bolt", store_writer(store))):
                    log(f"{key}: {'raw UNWIND CREATE' if key == 'bolt_raw' else 'Neo4jStore upserts'} over Bolt")
                    out[key] = _budgeted(data, write, budget_s, log)
            finally:
                driver.close()
                store.close()
    except (OSError, RuntimeError, TimeoutError, NkbError) as e:
        return {"not_measured": f"the Bolt path failed: {type(e).__name__}: {e}"}
    return out


def _budgeted(data: Synthetic, write: Callable[[str, pd.DataFrame], None], budget_s: float, log) -> dict:
    done: dict = {"tables": {}}
    start = time.perf_counter()
    for name in ORDER:
        if time.perf_counter() - start > budget_s:
            done["over_budget"] = f"stopped after {budget_s:.0f} s (--bolt-budget); later tables not measured"
            log(f"  {done['over_budget']}")
            break
        done["tables"].update(measure(data, write, log, tables=[name])["tables"])
    rows = sum(t["rows"] for t in done["tables"].values())
    seconds = sum(t["seconds"] for t in done["tables"].values())
    if rows and seconds:
        done["total"] = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}
    return done


def embedded(data: Synthetic, args: argparse.Namespace, results: dict, log) -> None:
    """The embedded measurements (raw COPY, upserts into an empty store, the same again) and the id look-ups."""
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for r in range(args.repeat):
            workdir = Path(tmp) / f"run{r}"
            workdir.mkdir()
            if args.repeat > 1:
                log(f"-- repeat {r + 1} of {args.repeat}")
            log(f"raw COPY into a fresh LadybugDB ({workdir})")
            keep_best(results, "raw_copy", raw_copy(data, workdir, log))
            with EmbeddedStore(str(workdir / "store"), create=True) as store:
                log("EmbeddedStore upserts into an empty store")
                keep_best(results, "upsert_new", measure(data, store_writer(store), log))
                log("EmbeddedStore upserts of the same frames again")
                keep_best(results, "upsert_again", measure(data, store_writer(store), log))
                counts = store.counts()
            for name in ORDER:
                want = results["raw_copy"]["counts"][name]
                if counts[name] != want:
                    raise SystemExit(f"bench: {name} has {counts[name]} rows in the store, {want} after raw COPY")
    log("finding 50,000 ids (half stored) by each way LadybugDB offers")
    results["id_lookup_50k"] = lookups()
    for name, r in results["id_lookup_50k"].items():
        log(f"  {name:<38} {r['seconds']:8.3f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of SmolLM2 size (default 1)")
    ap.add_argument("--batch-size", type=int, default=EmbeddedStore.default_batch_size,
                    help="rows per frame handed to each write (default: the store's batch size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-results/store.json", help="JSON results (default %(default)s)")
    ap.add_argument("--no-bolt", action="store_true", help="skip the Bolt measurements")
    ap.add_argument("--bolt-only", action="store_true", help="only the Bolt measurements (raw UNWIND CREATE and the store)")
    ap.add_argument("--bolt-budget", type=float, default=300,
                    help="seconds the Bolt run may take; tables not done by then are not measured (default %(default)s)")
    ap.add_argument("--workdir", help="where the databases go (default: a temporary directory)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the embedded measurements this many times and keep each table's best (default 1)")
    ap.add_argument("--tables", help="comma-separated relationship types to measure (default: all); "
                                     "node tables are always written, as the relationships need them")
    args = ap.parse_args(argv)
    if args.tables:
        wanted = {t.strip() for t in args.tables.split(",") if t.strip()}
        unknown = wanted - set(PER_NEURON)
        if unknown:
            ap.error(f"--tables: not a measured relationship type: {', '.join(sorted(unknown))}")
        ORDER[:] = [name for name in ORDER if name not in PER_NEURON or name in wanted]

    data = Synthetic(args.scale, args.batch_size, args.seed)
    log = print
    results: dict = {}
    if not args.bolt_only:
        embedded(data, args, results, log)
    if args.no_bolt:
        results["bolt"] = {"not_measured": "--no-bolt"}
    else:
        results.update(bolt(data, args.bolt_budget, log))

    # Same rows on both sides, so the throughput ratio is the ratio of times; over the tables
    # both runs finished (a Bolt run may stop early).
    for key, base_key in (("upsert_new", "raw_copy"), ("upsert_again", "raw_copy"), ("bolt", "bolt_raw")):
        run, base = results.get(key, {}), results.get(base_key, {})
        if "total" not in run or "total" not in base:
            continue
        both = [name for name in run["tables"] if name in base["tables"]]
        run[f"ratio_vs_{base_key}"] = round(sum(base["tables"][n]["seconds"] for n in both)
                                            / sum(run["tables"][n]["seconds"] for n in both), 3)
        for name in both:
            t = run["tables"][name]
            t[f"ratio_vs_{base_key}"] = round(base["tables"][name]["seconds"] / t["seconds"], 3) if t["seconds"] else None

    report = {
        "benchmark": "store write throughput",
        "scale": args.scale,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "tables": ORDER,
        "seed": args.seed,
        "sizes": data.sizes(),
        "ladybug": lb.__version__,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    runs = [k for k in ("raw_copy", "upsert_new", "upsert_again", "bolt_raw", "bolt") if "total" in results.get(k, {})]
    log("")
    log(f"{'rows/s':<13}" + "".join(f"{k:>14}" for k in runs))
    for name in [*ORDER, "total"]:
        cells = [results[k]["total"] if name == "total" else results[k]["tables"].get(name) for k in runs]
        log(f"{name:<13}" + "".join(f"{c['rows_per_s']:>14,}" if c else f"{'-':>14}" for c in cells))
    log(f"{'vs baseline':<13}" + "".join(
        f"{results[k].get('ratio_vs_raw_copy', results[k].get('ratio_vs_bolt_raw', 1.0)):>14.2f}" for k in runs))
    if "bolt" in runs and "over_budget" in results["bolt"]:
        log(f"bolt: {results['bolt']['over_budget']}; its ratio covers the tables it finished")
    if "not_measured" in results.get("bolt", {}):
        log(f"bolt: not measured ({results['bolt']['not_measured']})")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
