"""Benchmark of how the lmhead stage's token edges reach the embedded store -> bench-results/lmhead-writes.json.

SmolLM2-shaped edges (30 layers x 1,536 neurons; per neuron 10 PROMOTES, 10 SUPPRESSES and
20 READS, to tokens of a 49,152-token vocabulary drawn with a Zipf-like skew, as real top
tokens are), written for a first model into an empty store and then, through a new handle as
a new ``nkb ingest`` would open it, for a second model beside it. Two ways:

- ``by-layer``: one write per layer and relationship type (the baseline: what the stage did
  before it wrote layers together);
- ``together``: one write per relationship type for all layers (what the stage does now, up to
  ``ingest.memory.LMHEAD_WRITE_ROWS`` rows at a time).

Each way runs in its own process, so its peak RSS is its own. The edges are made with the same
seed both ways, outside the timed writes. Reported: seconds per model, the ratio of the
baseline's time to this way's, and peak RSS.

Usage: python scripts/bench_lmhead_writes.py [--pool-mb 1024] [--layers 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, K, VOCAB = 1536, 10, 49152
RELS = {"PROMOTES": "logit", "SUPPRESSES": "logit", "READS": "weight"}


def edges(model: str, layer: int, rel: str, rng):
    import numpy as np
    import pandas as pd

    from kb.ids import neuron_ids, token_ids

    per = K * (2 if rel == "READS" else 1)
    p = 1 / np.arange(1, VOCAB + 1) ** 0.8
    tok = rng.choice(VOCAB, size=WIDTH * per, p=p / p.sum())
    df = pd.DataFrame({"src": neuron_ids(model, layer, np.repeat(np.arange(WIDTH), per)),
                       "dst": token_ids("tok", tok), RELS[rel]: rng.normal(size=len(tok)),
                       "rank": np.tile(np.arange(K), WIDTH * per // K), "found": "neuron"})
    if rel == "READS":
        df["via"] = np.tile(np.repeat(["gate", "up"], K), WIDTH)
    # A neuron's top-k tokens are distinct (per input matrix): drop the draws that repeat one.
    return df.drop_duplicates(["src", "dst", "via"] if rel == "READS" else ["src", "dst"], ignore_index=True)


def child(way: str, layers: int, store: str) -> dict:
    """One way, in this process: a first model, then a second through a new handle."""
    import numpy as np
    import pandas as pd

    from ingest.memory import peak_resident_bytes
    from kb.ids import neuron_ids, token_ids
    from kb.stores import open_store

    out = {}
    with open_store(store, create=True) as s:
        s.upsert_nodes("Token", pd.DataFrame({"id": token_ids("tok", range(VOCAB)), "tokenizer": "tok",
                                              "token_id": np.arange(VOCAB)}))
    for model in ("first", "second"):
        rng = np.random.default_rng(0 if model == "first" else 1)
        frames = {rel: [edges(model, layer, rel, rng) for layer in range(layers)] for rel in RELS}
        with open_store(store) as s:
            s.upsert_nodes("Neuron", pd.DataFrame({
                "id": [i for layer in range(layers) for i in neuron_ids(model, layer, range(WIDTH))],
                "model": model, "layer": np.repeat(np.arange(layers), WIDTH), "idx": np.tile(np.arange(WIDTH), layers)}))
            t0 = time.perf_counter()
            if way == "by-layer":
                for layer in range(layers):
                    for rel in RELS:
                        s.upsert_rels(rel, frames[rel][layer])
            else:
                for rel in RELS:
                    s.upsert_rels(rel, pd.concat(frames[rel], ignore_index=True))
            out[f"{model}_model_s"] = round(time.perf_counter() - t0, 2)
            out[f"{model}_model_rows"] = int(sum(len(f) for fs in frames.values() for f in fs))
    out["peak_rss_gib"] = round(peak_resident_bytes() / 2**30, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-mb", type=int, default=1024, help="LadybugDB buffer pool for both ways")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "lmhead-writes.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.layers, args.store)))
        return
    env = {**os.environ, "NKB_BUFFER_POOL_MB": str(args.pool_mb),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = {}
    for way in ("by-layer", "together"):
        with tempfile.TemporaryDirectory(prefix="nkb-lmhead-bench-") as tmp:
            done = subprocess.run([sys.executable, __file__, "--child", way, "--layers", str(args.layers),
                                   "--store", str(Path(tmp) / "kb")], env=env, capture_output=True, text=True)
        if done.returncode:
            results[way] = {"failed": done.stderr.strip().splitlines()[-1]}
        else:
            results[way] = json.loads(done.stdout.strip().splitlines()[-1])
        print(way, results[way], flush=True)
    base, new = results["by-layer"], results["together"]
    for model in ("first", "second"):
        key = f"{model}_model_s"
        if key in base and key in new:
            new[f"{model}_model_speedup"] = round(base[key] / new[key], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "load_average": list(os.getloadavg()),
        "pool_mb": args.pool_mb, "layers": args.layers, "width": WIDTH, "k": K, "vocab": VOCAB,
        "baseline": "by-layer", "ways": results,
    }, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
