"""Benchmark: explanations and their scores on the bundled SmolLM2-135M, on CPU.

Measures, in one run:
- the local explainer (SmolLM2-135M-Instruct) on N neurons, batched against one by one;
- the logprob simulation scorer on the same N explanations, batched against one by one;
- the distribution of the simulation scores over those N neurons (mean, share >= 0.8: OpenAI
  reports more than 1,000 of GPT-2 XL's 307,200 neurons at >= 0.8);
- the data-derived explainer (the ``describe`` stage) over every neuron of the model.

It needs a KB with the model's records and LM-head tokens: ``--kb`` names one, else a small
one is ingested into a temporary directory (``--tokens`` corpus tokens, default 4096).

    python scripts/bench_explain.py --n 8 --out bench-results/explain.json
    python scripts/bench_explain.py --kb demo-kb --tokens 65536 --n 8   # on the demo's KB
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", help="an ingested KB of smollm2-135m (default: ingest a small one)")
    ap.add_argument("--tokens", type=int, default=4096,
                    help="corpus tokens of the ingest (default 4096); with --kb, the KB's own (the demo's: 65536)")
    ap.add_argument("--n", type=int, default=8, help="neurons to explain and score (default 8)")
    ap.add_argument("--layer", type=int, default=15, help="layer the N neurons are taken from")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="bench-results/explain.json")
    args = ap.parse_args()

    from ingest.explain.explainers import LLMExplainer
    from ingest.explain.llm import LocalLM
    from ingest.explain.neurons import load_neurons
    from ingest.explain.run import explain_neurons, score_neurons
    from ingest.explain.scorers import LocalSimulator, SimulationScorer
    from ingest.pipeline import IngestConfig, Pipeline
    from kb.stores import open_store

    result: dict = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs (shared; absolute "
                               "rates are noisy, ratios are measured in the same run)"}
    tmp = None
    if args.kb:
        url = args.kb
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-explain-")
        url = str(Path(tmp.name) / "kb")
    t0 = time.perf_counter()
    cfg = IngestConfig("smollm2-135m", stages=["lmhead", "activations", "describe"], tokens=args.tokens)
    pipeline = Pipeline(cfg).prepare()
    with open_store(url, create=True) as store:
        report = pipeline.run(store)
    describe = next(s for s in report.stages if s.stage == "describe")
    n_neurons = pipeline.lm.adapter.n_layers * pipeline.lm.adapter.d_mlp
    result["kb"] = {"ingested_here": args.kb is None, "tokens": args.tokens if args.kb is None else None,
                    "seconds": round(time.perf_counter() - t0, 1)}
    result["data_explainer"] = {
        "neurons": n_neurons, "explanations_written": describe.rows,
        "seconds": round(describe.seconds, 2) if describe.layers_done else None,
        "neurons_per_s": round(n_neurons / describe.seconds, 1) if describe.layers_done else None,
        "note": "describe stage over every layer (reads records and tokens, writes Explanations, "
                "refreshes Neuron.explanation)" if describe.layers_done else "already done in --kb",
    }

    lm = LocalLM(loaded=pipeline.lm, batch_size=args.batch_size)
    one = LocalLM(loaded=pipeline.lm, batch_size=1)
    with open_store(url) as store:
        ids = store.cypher("MATCH (n:Neuron) WHERE n.model = $m AND n.layer = $l RETURN n.id AS id "
                           "ORDER BY n.max_act DESC LIMIT $k", {"m": pipeline.model_id, "l": args.layer, "k": args.n}
                           )["id"].tolist()
        neurons = load_neurons(store, ids)

        t = time.perf_counter()
        single = LLMExplainer(one).explain(neurons)
        t_single = time.perf_counter() - t
        t = time.perf_counter()
        rep = explain_neurons(store, ids, LLMExplainer(lm), batch_size=len(ids))
        t_batched = time.perf_counter() - t
        with_text = store.cypher("MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) WHERE n.id IN $ids "
                                 "AND e.method = 'top-activations' RETURN n.id AS n, e.text AS text", {"ids": ids})
        result["explanations"] = {
            "n": len(ids), "layer": args.layer, "batch_size": args.batch_size,
            "batched_per_s": round(len(ids) / t_batched, 3), "one_by_one_per_s": round(len(ids) / t_single, 3),
            "speedup": round(t_single / t_batched, 2), "written": rep.written,
            "same_text_batched_and_single": sum(a == b for a, b in zip(single, LLMExplainer(lm).explain(neurons))),
            "examples": dict(zip(with_text["n"][:4], with_text["text"][:4])),
        }

        items = [(n, t) for n, t in zip(neurons, with_text.set_index("n").reindex(ids)["text"]) if isinstance(t, str)]
        t = time.perf_counter()
        SimulationScorer(LocalSimulator(one)).score(items)
        s_single = time.perf_counter() - t
        t = time.perf_counter()
        srep = score_neurons(store, ids, SimulationScorer(LocalSimulator(lm)), explainer=lm.name, rescore=True)
        s_batched = time.perf_counter() - t
        values = srep.values
        result["simulation"] = {
            "n": len(items), "records_per_score": "5 top (held out) + 5 random",
            "batched_per_s": round(len(items) / s_batched, 3), "one_by_one_per_s": round(len(items) / s_single, 3),
            "speedup": round(s_single / s_batched, 2),
            "scores": {"n": len(values), "undefined": len(srep.skipped),
                       "mean": round(statistics.fmean(values), 4) if values else None,
                       "share_ge_0_8": round(sum(v >= 0.8 for v in values) / len(values), 4) if values else None,
                       "values": [round(v, 4) for v in values]},
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
