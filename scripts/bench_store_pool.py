"""How much of LadybugDB's buffer pool one write of SmolLM2's activation records needs.

SmolLM2-135M's main job writes 1.84 million ACTIVATES_ON records (30 layers x 1,536 neurons x
40 records, 64 float16 activations each as base64) into a fresh store. This script writes
records of that shape, through the engine alone (no kb code on the write path), in 1 or more
COPYs at several pool sizes, for one model or for a second one beside the first (whose
neurons share the first one's node group, so its COPY rewrites the first one's records), with
the relationship table stored forward only (as the store keeps it) or in both directions (the
engine's default). Each trial runs in its own process, so that its peak RSS is its own. It
prints a table and writes bench-results/store-pool.json:

- ``ok``: whether every COPY succeeded ("the buffer pool is full" is a failure);
- ``seconds``: the (last model's) COPYs' wall time; ``ratio_to_one_copy``: against one model's
  one COPY, both directions, at the largest pool (the layout and pool before forward-only);
- ``peak_rss_gib`` of the trial's process (it also holds the records, 0.46 GB in Arrow).

    .venv/bin/python scripts/bench_store_pool.py                     # the default trials
    .venv/bin/python scripts/bench_store_pool.py --trial 2048:2      # POOL_MB:COPIES (forward only)
    .venv/bin/python scripts/bench_store_pool.py --trial 3072:1:2    # POOL_MB:COPIES:MODELS
    .venv/bin/python scripts/bench_store_pool.py --trial 3072:1:1:both
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS, D_MLP, PER_NEURON, WINDOWS, WINDOW = 30, 1536, 40, 1024, 64
# POOL_MB:COPIES[:MODELS[:DIRECTION]]: "fwd" stores ACTIVATES_ON forward only, as the store does
# (schema.RelType.backward); "both" keeps the engine's default backward index too.
TRIALS = ["2048:1:1:both", "2560:1:1:both", "3072:1:1:both", "1536:1", "2048:1", "1280:2", "1024:3", "1536:4",
          "1536:2:2"]


def records(model: str = "smollm2-135m", seed: int = 0):
    import pyarrow as pa

    from kb.records import encode_activations_array

    rng = np.random.default_rng(seed)
    neurons = [f"{model}/{layer}/{i}" for layer in range(LAYERS) for i in range(D_MLP)]
    snippets = [f"smollm2-135m:python-docs:{w}" for w in range(WINDOWS)]
    n = len(neurons) * PER_NEURON
    kinds = ["top"] * 20 + ["random"] * 10 + [f"quantile_{j}" for j in range(5) for _ in range(2)]
    acts = pa.chunked_array([encode_activations_array(rng.standard_normal((D_MLP * PER_NEURON, WINDOW)))
                             for _ in range(LAYERS)])
    table = pa.table({
        "_src": pa.array(np.repeat(np.array(neurons, dtype=object), PER_NEURON), pa.string()),
        "_dst": pa.array(np.array(snippets, dtype=object)[rng.integers(0, WINDOWS, n)], pa.string()),
        "kind": pa.array(kinds * len(neurons), pa.string()),
        "rank": np.tile(np.arange(PER_NEURON), len(neurons)),
        "max": rng.random(n),
        "position": rng.integers(0, WINDOW, n),
        "activations": acts,
    })
    return neurons, snippets, table


def trial(pool_mb: int, parts: int, models: int, direction: str, path: str) -> dict:
    """One trial, in this process: a fresh store; per model its nodes, then its records in
    ``parts`` COPYs. Timed: the last model's COPYs."""
    import ladybug as lb
    import pyarrow as pa

    db = lb.Database(path, buffer_pool_size=pool_mb * 2**20)
    conn = lb.Connection(db)
    conn.execute("CREATE NODE TABLE Neuron(id STRING, PRIMARY KEY(id))")
    conn.execute("CREATE NODE TABLE Snippet(id STRING, PRIMARY KEY(id))")
    conn.execute("CREATE REL TABLE ACTIVATES_ON(FROM Neuron TO Snippet, kind STRING, rank INT64, max DOUBLE, "
                 "position INT64, activations STRING)"
                 + (" WITH (storage_direction = 'fwd')" if direction == "fwd" else ""))
    error = None
    for m in range(models):
        neurons, snippets, table = records(f"model-{m}", seed=m)
        if m:  # LadybugDB runs CREATE into a filled node table; the store does the same (see its node writes)
            conn.execute("LOAD FROM $rows CREATE (:Neuron {id: id})", {"rows": pa.table({"id": neurons})})
        else:
            conn.execute("COPY Neuron FROM $rows", {"rows": pa.table({"id": neurons})})
            conn.execute("COPY Snippet FROM $rows", {"rows": pa.table({"id": snippets})})
        step = -(-table.num_rows // parts)
        started = time.perf_counter()
        try:
            for k in range(parts):
                conn.execute("COPY ACTIVATES_ON FROM $rows", {"rows": table.slice(k * step, step)})
        except RuntimeError as e:
            error = f"model {m + 1}: " + str(e).splitlines()[0][:160]
        seconds = time.perf_counter() - started
        if error:
            break
        del table
    return {"pool_mb": pool_mb, "copies": parts, "models": models, "direction": direction,
            "rows": LAYERS * D_MLP * PER_NEURON,
            "ok": error is None, "error": error, "seconds": round(seconds, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trial", action="append",
                    help="POOL_MB:COPIES[:MODELS[:fwd|both]] (repeatable); default: " + " ".join(TRIALS))
    ap.add_argument("--out", default="bench-results/store-pool.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # POOL_MB:COPIES:MODELS:DIRECTION:PATH, run by the parent
    args = ap.parse_args()
    if args.one:
        pool, parts, models, direction, path = args.one.split(":", 4)
        print(json.dumps(trial(int(pool), int(parts), int(models), direction, path)))
        return
    results = []
    for spec in args.trial or TRIALS:
        fields = spec.split(":")
        pool, parts, models, direction = (fields + ["1", "fwd"][len(fields) - 2:])[:4]
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--one", f"{pool}:{parts}:{models}:{direction}:{tmp}/kb"],
                                 capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"pool {r['pool_mb']:>5} MB  {r['direction']:>4}  {r['models']} model(s)  {r['copies']} COPY  "
              f"{'ok  ' if r['ok'] else 'FAIL'}  {r['seconds']:6.1f} s  peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    # The baseline: one model's records in one COPY, both directions, in the largest pool.
    base = max((r for r in results if r["ok"] and r["copies"] == 1 and r["models"] == 1 and r["direction"] == "both"),
               key=lambda r: r["pool_mb"], default=None)
    for r in results:
        r["ratio_to_one_copy"] = round(r["seconds"] / base["seconds"], 2) if base and r["ok"] else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
                                          "trials": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
