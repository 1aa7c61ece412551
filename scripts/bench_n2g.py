"""Neuron to Graph on the bundled model (SmolLM2-135M): speed and quality.

    python scripts/bench_n2g.py                              # layer 0 in full, quality on 7 layers
    python scripts/bench_n2g.py --full-layers 0,15 --quality-layers all --quality-neurons 64
    python scripts/bench_n2g.py --device cuda

1. Activation records for the layers needed, with the ingest defaults (65,536 corpus tokens),
   into a temporary store (not timed).
2. Speed: the n2g stage's algorithm on every neuron of each ``--full-layers`` layer (batched:
   one forward of a variant sequence serves every neuron of the layer), neurons/s.
3. Speed-up: on the first ``--per-neuron`` neurons of the first full layer, the same algorithm
   run one neuron at a time (what the reference implementation does) against the batched run
   on the same neurons, in the same process, back to back; the graphs must be identical.
4. Tree mode: on the first ``--tree-neurons`` neurons of each ``--tree-layers`` layer, the
   runner's tree mode (shared prefixes computed once) against its plain mode (one causal row
   per sequence), back to back in the same process; the graphs must be the same.
5. Quality: mean firing precision, recall and F1 on held-out records per layer (the first
   ``--quality-neurons`` neurons of each ``--quality-layers`` layer), next to the paper's
   token-lookup baseline on the same neurons and records, and the paper's reported trend.
   The seconds per neuron of these layers, interpolated between them, give the whole-model
   extrapolation (an extrapolation: a full layer shares more forwards than a few neurons do).

Writes JSON to ``--out`` (default bench-results/n2g.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ingest.n2g.augmentation import EmbeddingNeighbours
from ingest.n2g.runner import LayerRunner
from ingest.pipeline import IngestConfig, Pipeline, parse_layers
from ingest.stages.n2g import fit_layer, model_prefix, n2g_config, read_layer
from kb.stores import open_store

PAPER_TREND = ("SoLU-6L (Foote et al. 2023): firing F1 about 0.7 in layer 0 falling to about 0.4 in layer 5; "
               "N2G above the token-lookup baseline in every layer")


def _subset(data, n: int):
    from ingest.stages.n2g import LayerData

    out = LayerData()
    out.train = [r for r in data.train if r.neuron < n]
    for name in ("test", "train_full", "max_act"):
        setattr(out, name, {k: v for k, v in getattr(data, name).items() if k < n})
    return out


def _mean(values):
    values = list(values)
    return round(statistics.fmean(values), 4) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--full-layers", default="0", help="layers run in full for neurons/s")
    ap.add_argument("--per-neuron", type=int, default=24, help="neurons for the per-neuron comparison")
    ap.add_argument("--tree-layers", default="0,15", help="layers of the tree-mode against plain-mode comparison")
    ap.add_argument("--tree-neurons", type=int, default=16)
    ap.add_argument("--quality-layers", default="0,5,10,15,20,25,29")
    ap.add_argument("--quality-neurons", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 is faster when other processes load the cores")
    ap.add_argument("--out", default="bench-results/n2g.json")
    args = ap.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.threads:
        torch.set_num_threads(args.threads)

    full = parse_layers(args.full_layers) or []
    quality = parse_layers(args.quality_layers) or list(range(30))
    tree_layers = parse_layers(args.tree_layers) or []
    layers = sorted(set(full) | set(quality) | set(tree_layers))
    result: dict = {"model": args.model, "corpus_tokens": args.tokens, "device": args.device,
                    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = IngestConfig(args.model, layers=layers, stages=["activations"], tokens=args.tokens,
                           device=args.device)
        log(f"activation records for layers {layers} ...")
        pipeline = Pipeline(cfg).prepare()
        store = open_store(str(Path(tmp) / "kb"), create=True)
        pipeline.run(store)
        lm = pipeline.lm
        n2g = n2g_config(cfg.settings, lm.tokenizer)
        result["settings"] = {k: v for k, v in vars(n2g).items()}
        prefix = model_prefix(store, pipeline.model_id)
        neighbours = EmbeddingNeighbours(lm.adapter.model.get_input_embeddings().weight, n2g.n_augment,
                                         exclude=lm.tokenizer.all_special_ids)

        def runner(layer, tree=None):
            return LayerRunner(lm.adapter, layer, prefix, pad_token=n2g.mask_token, tree=tree)

        def same_graphs(a, b) -> bool:
            # Other batch shapes round differently in the last bits: same patterns, activations within 1e-4.
            return a.tries.keys() == b.tries.keys() and all(
                [p for p, _ in a.tries[k].patterns()] == [p for p, _ in b.tries[k].patterns()]
                and all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for (_, x), (_, y)
                        in zip(a.tries[k].patterns(), b.tries[k].patterns()))
                for k in b.tries)

        speed = []
        for layer in full:
            data = read_layer(store, pipeline.model_id, layer)
            r = runner(layer)
            t0 = time.perf_counter()
            graphs = fit_layer(r, data, n2g, neighbours)
            dt = time.perf_counter() - t0
            speed.append({"layer": layer, "neurons": len(graphs.tries), "train_records": len(data.train),
                          "seconds": round(dt, 1), "neurons_per_s": round(len(graphs.tries) / dt, 2),
                          "tokens_forwarded": r.tokens_run, "tokens_with_padding": r.tokens_padded,
                          "forwards": r.forwards,
                          "mean_f1": _mean(s.f1 for s in graphs.scores.values())})
            log(f"layer {layer}: {speed[-1]}")
        result["full_layers"] = speed
        if full and args.per_neuron:
            layer = full[0]
            data = _subset(read_layer(store, pipeline.model_id, layer), args.per_neuron)
            r1 = runner(layer)
            t0 = time.perf_counter()
            one = fit_layer(r1, data, n2g, neighbours, per_neuron=True)
            t_one = time.perf_counter() - t0
            r2 = runner(layer)
            t0 = time.perf_counter()
            batched = fit_layer(r2, data, n2g, neighbours)
            t_batched = time.perf_counter() - t0
            same = same_graphs(one, batched)
            result["per_neuron_comparison"] = {
                "layer": layer, "neurons": len(batched.tries), "per_neuron_seconds": round(t_one, 2),
                "batched_seconds": round(t_batched, 2), "speedup": round(t_one / t_batched, 2),
                "per_neuron_tokens_forwarded": r1.tokens_run, "batched_tokens_forwarded": r2.tokens_run,
                "same_graphs": same,
                "full_layer_per_neuron_estimate": "EXTRAPOLATED: per-neuron seconds / neurons x the full layer's "
                                                  "neurons, against the measured full-layer batched time",
                **({"full_layer_speedup_estimate": round(t_one / len(batched.tries) * speed[0]["neurons"]
                                                         / speed[0]["seconds"], 2)} if speed else {})}
            log(f"per-neuron comparison: {result['per_neuron_comparison']}")

        trees = []
        for layer in tree_layers:
            data = _subset(read_layer(store, pipeline.model_id, layer), args.tree_neurons)
            out = {}
            for mode, tree in (("plain", False), ("tree", True)):
                r = runner(layer, tree)
                t0 = time.perf_counter()
                out[mode] = (fit_layer(r, data, n2g, neighbours), time.perf_counter() - t0, r)
            (g_plain, t_plain, r_plain), (g_tree, t_tree, r_tree) = out["plain"], out["tree"]
            trees.append({"layer": layer, "neurons": len(g_tree.tries), "plain_seconds": round(t_plain, 2),
                          "tree_seconds": round(t_tree, 2), "speedup": round(t_plain / t_tree, 2),
                          "plain_tokens": r_plain.tokens_padded, "tree_tokens": r_tree.tokens_padded,
                          "same_graphs": same_graphs(g_plain, g_tree)})
            log(f"tree mode layer {layer}: {trees[-1]}")
        result["tree_mode"] = {"what": "the same neurons fitted with the runner in plain mode, then in tree mode; "
                                       "tokens forwarded include padding", "layers": trees}

        rows = []
        for layer in quality:
            data = _subset(read_layer(store, pipeline.model_id, layer), args.quality_neurons)
            t0 = time.perf_counter()
            g = fit_layer(runner(layer), data, n2g, neighbours)
            rows.append({
                "layer": layer, "neurons": len(g.tries), "seconds": round(time.perf_counter() - t0, 1),
                "n2g": {"precision": _mean(s.precision for s in g.scores.values()),
                        "recall": _mean(s.recall for s in g.scores.values()),
                        "f1": _mean(s.f1 for s in g.scores.values())},
                "token_lookup": {"precision": _mean(s.precision for s in g.baseline.values()),
                                 "recall": _mean(s.recall for s in g.baseline.values()),
                                 "f1": _mean(s.f1 for s in g.baseline.values())},
            })
            log(f"quality layer {layer}: {rows[-1]}")
        if rows:
            per_neuron = {r["layer"]: r["seconds"] / max(1, r["neurons"]) for r in rows}
            sampled = sorted(per_neuron)
            n_layers = lm.adapter.n_layers
            width = lm.adapter.d_mlp
            estimate = sum(float(np.interp(layer, sampled, [per_neuron[x] for x in sampled])) * width
                           for layer in range(n_layers))
            result["extrapolation_from_sampled_layers"] = {
                "what": "EXTRAPOLATED, not measured: seconds per neuron of the quality layers, interpolated "
                        "linearly between them, x neurons per layer, summed over every layer",
                "seconds_per_neuron": {str(k): round(v, 3) for k, v in per_neuron.items()},
                "all_layers_hours": round(estimate / 3600, 1)}
        result["quality"] = {"split": "top records: even ranks train, odd ranks test; random records added "
                                      "to the test set as negatives",
                             "neurons_per_layer": args.quality_neurons, "layers": rows, "paper": PAPER_TREND}
        store.close()
    result["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
