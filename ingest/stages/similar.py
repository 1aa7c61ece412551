"""The similar stage: nearest-neighbour edges between neurons, and virtual-weight connections.

- ``SIMILAR_TO {score, method, rank}``: for every embedded neuron of the model and every
  method in ``--similar-methods`` whose vectors exist, its ``similar_k`` nearest neurons
  anywhere in the model by cosine (exact FAISS search up to ``kb.vectors.EXACT_LIMIT``
  neurons, approximate beyond);
- ``CONNECTS_TO {weight, rank}``: for every neuron, the ``connect_k`` neurons of later layers
  with the largest virtual weight |W_out(l1)[i] . W_in(l2)[j]| (the gate for gated MLPs):
  how strongly its output feeds their input directly through the residual stream.

Neighbours are over every neuron the model has vectors for, so adding layers changes earlier
answers: each run replaces the model's SIMILAR_TO and CONNECTS_TO edges.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport, done_marker
from kb.errors import IngestError


class SimilarStage(Stage):
    name = "similar"
    help = "k nearest neurons per similarity method (SIMILAR_TO) and virtual-weight connections (CONNECTS_TO)"
    needs = ("embed",)
    settings = (
        Setting("similar_methods", "weights_out,weights_in,explanation",
                "Comma-separated methods for SIMILAR_TO (those whose vectors exist are used).", type=str),
        Setting("similar_k", 10, "SIMILAR_TO neighbours per neuron and method.", minimum=1, maximum=1000),
        Setting("connect_k", 10, "CONNECTS_TO edges per neuron (0 = none).", minimum=0, maximum=1000),
    )

    def validate(self, cfg) -> None:
        from kb.vectors import KINDS

        bad = [m for m in methods(cfg) if m not in KINDS]
        if bad or not methods(cfg):
            raise IngestError(f"--similar-methods: unknown method {bad[0]!r}" if bad else "--similar-methods is empty",
                              f"methods: {', '.join(KINDS)}")

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from kb import vectors

        report = StageReport(self.name)
        k = ctx.cfg.settings["similar_k"]
        every = sorted(set(layers) | {layer for layer in range(ctx.lm.adapter.n_layers)
                                      if ctx.store.get_meta(done_marker(ctx.model_id, self.name, layer))})
        if len(every) > len(layers):  # earlier neighbours of this model are superseded
            for rel in ("SIMILAR_TO", "CONNECTS_TO"):
                ctx.store.cypher(f"MATCH (n:Neuron)-[r:{rel}]->(:Neuron) WHERE n.model = $m DELETE r",
                                 {"m": ctx.model_id}, write=True)
        todo = methods(ctx.cfg)
        ctx.reporter.begin(self.name, len(todo) + 1, "method")
        for method in todo:
            try:
                loaded = vectors.open_index(ctx.store, ctx.model_id, method)
            except vectors.VectorsMissing:
                ctx.reporter.note(f"similar: no {method} vectors of {ctx.model_id} yet, skipped")
                ctx.reporter.advance(1)
                continue
            edges = knn_edges(loaded, k, every)
            report.rows += ctx.store.upsert_rels("SIMILAR_TO", edges.assign(method=method))
            ctx.reporter.advance(1)
        if ctx.cfg.settings["connect_k"]:
            report.rows += ctx.store.upsert_rels("CONNECTS_TO", connect_edges(ctx, every, ctx.cfg.settings["connect_k"]))
        ctx.reporter.advance(1)
        for layer in layers:
            ctx.mark_done(self, layer, report)
        ctx.reporter.end()
        return report


def methods(cfg) -> list[str]:
    return [m.strip() for m in cfg.settings["similar_methods"].split(",") if m.strip()]


def knn_edges(loaded, k: int, layers: list[int]) -> pd.DataFrame:
    """src, dst, score, rank: each neuron's ``k`` nearest other neurons (explanation rows averaged per neuron)."""
    from kb import vectors
    from kb.match import _neuron_vectors

    vset = loaded.vset
    if vset.kind == "explanation" and vset.rows["neuron"].duplicated().any():
        # One vector per neuron: an exact index over the per-neuron means.
        parts = [_neuron_vectors(vset, layer) for layer in sorted(vset.rows["layer"].unique())]
        ids = np.concatenate([p[0] for p in parts])
        x = np.concatenate([p[1] for p in parts])
        index = vectors.build_index(x)
    else:
        ids, x, index = vset.rows["neuron"].to_numpy(), vset.vectors, loaded.index
    layer_of = pd.Series(ids).str.rsplit("/", n=2).str[1].astype(int).to_numpy()
    queries_ = np.flatnonzero(np.isin(layer_of, layers))
    kk = min(k + 1, len(ids))
    out = []
    for start in range(0, len(queries_), 4096):
        q = queries_[start:start + 4096]
        scores, nn = index.search(np.ascontiguousarray(x[q]), kk)
        # Drop each neuron itself (it may not come first when another vector is identical),
        # then keep the first k that are left in each row.
        keep = (nn != q[:, None]) & (nn >= 0)
        seen = np.cumsum(keep, axis=1)  # kept neighbours up to and including each column
        keep &= seen <= k
        rows, cols = np.nonzero(keep)
        rank = seen[rows, cols] - 1
        out.append(pd.DataFrame({"src": ids[q[rows]], "dst": ids[nn[rows, cols]],
                                 "score": scores[rows, cols].astype(np.float64), "rank": rank.astype(np.int64)}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["src", "dst", "score", "rank"])


def connect_edges(ctx: Context, layers: list[int], k: int) -> pd.DataFrame:
    """src, dst, weight, rank: per neuron of ``layers``, the ``k`` later-layer neurons with the largest |virtual weight|."""
    import torch

    from kb.ids import neuron_ids

    adapter = ctx.lm.adapter
    d = adapter.d_mlp
    w_in = {layer: _input(adapter, layer) for layer in layers}
    out = []
    for l1 in layers:
        later = [layer for layer in layers if layer > l1]
        if not later:
            continue
        targets = np.concatenate([np.asarray(neuron_ids(ctx.model_id, layer, range(d))) for layer in later])
        with torch.inference_mode():
            w = adapter.w_out(l1) @ torch.cat([w_in[layer] for layer in later]).T  # [d, d * len(later)]
            kk = min(k, w.shape[1])
            _, idx = w.abs().topk(kk, dim=1)
            vals = torch.gather(w, 1, idx)
        out.append(pd.DataFrame({"src": np.repeat(np.asarray(neuron_ids(ctx.model_id, l1, range(d))), kk),
                                 "dst": targets[idx.numpy().reshape(-1)],
                                 "weight": vals.numpy().reshape(-1).astype(np.float64),
                                 "rank": np.tile(np.arange(kk, dtype=np.int64), d)}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["src", "dst", "weight", "rank"])


def _input(adapter, layer: int):
    w = adapter.w_in(layer)
    return w["gate"] if "gate" in w else w["in"]
