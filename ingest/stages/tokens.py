"""The tokens stage: reverse token edges, so that token questions get complete answers.

The lmhead stage stores each neuron's top-k tokens; a token that is in no neuron's top-k list
then has no edges at all, although some neurons promote it more than others. This stage
stores the other direction: for every token, the ``token_k`` neurons of the model that
promote it most, suppress it most, and (per input matrix) read it most, as PROMOTES /
SUPPRESSES / READS edges marked ``found = 'token'`` with ``rank`` among the token's neurons.

The answer for one token is the inner product of its unembedding row with every neuron's
output direction folded through the final norm (the same logit the lmhead stage stores), so
the whole stage is one chunked product [tokens, d_model] x [d_model, neurons] per direction,
the largest and smallest values of each chunk taken from the same product.

Top-k per token is over every neuron of the model the stage has seen, so adding layers
changes earlier answers: each run recomputes over all of them and replaces the model's
token-found edges.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport, done_marker


class TokensStage(Stage):
    name = "tokens"
    help = "every token's top neurons (promote, suppress, read): complete answers to token questions"
    needs = ("model",)
    settings = (
        Setting("token_k", 10, "Neurons stored per token and direction.", minimum=1, maximum=1000),
    )

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from kb.ids import neuron_ids, token_ids

        report = StageReport(self.name)
        adapter = ctx.lm.adapter
        k_want = ctx.cfg.settings["token_k"]
        every = sorted(set(layers) | {layer for layer in range(adapter.n_layers)
                                      if ctx.store.get_meta(done_marker(ctx.model_id, self.name, layer))})
        ids = np.concatenate([np.asarray(neuron_ids(ctx.model_id, layer, range(adapter.d_mlp))) for layer in every])
        directions = reverse_directions(adapter, every)
        unembed = adapter.unembed()
        ctx.reporter.begin(self.name, len(directions) * unembed.shape[0], "token")
        if len(every) > len(layers):  # earlier token edges of this model are superseded
            for rel in ("PROMOTES", "SUPPRESSES", "READS"):
                ctx.store.cypher(f"MATCH (n:Neuron)-[p:{rel}]->(:Token) WHERE n.model = $m AND p.found = 'token' "
                                 "DELETE p", {"m": ctx.model_id}, write=True)
        tok_ids = np.asarray(token_ids(ctx.lm.tokenizer_id, range(unembed.shape[0])))
        for (rel, via), w in directions.items():
            k = min(k_want, w.shape[0])
            frames = top_neurons(unembed, w, k, both=rel == "PROMOTES", progress=ctx.reporter.advance)
            for name, (vals, idx) in frames.items():
                n_tok = vals.shape[0]
                edges = pd.DataFrame({"src": ids[idx.reshape(-1)], "dst": np.repeat(tok_ids[:n_tok], k),
                                      ("weight" if rel == "READS" else "logit"): vals.reshape(-1).astype(np.float64),
                                      "rank": np.tile(np.arange(k, dtype=np.int64), n_tok), "found": "token"})
                if rel == "READS":
                    edges["via"] = via
                report.rows += ctx.store.upsert_rels(name, edges)
        for layer in layers:
            ctx.mark_done(self, layer, report)
        ctx.reporter.end()
        return report


def reverse_directions(adapter, layers: list[int]) -> dict[tuple[str, str | None], "object"]:
    """{(relation, via): [neurons, d_model]} over ``layers``: the folded output directions, and each input matrix."""
    import torch

    out = {("PROMOTES", None): torch.cat([adapter.fold_final_norm(adapter.w_out(layer)) for layer in layers])}
    vias = list(adapter.w_in(layers[0]))
    for via in vias:
        out[("READS", via)] = torch.cat([adapter.w_in(layer)[via] for layer in layers])
    return out


def top_neurons(unembed, w, k: int, *, both: bool, chunk: int = 1024, progress=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per token (row of ``unembed``), the ``k`` largest (and with ``both`` the ``k`` smallest) of ``unembed @ w.T``.

    Returns {"PROMOTES"|"READS": (values, neuron indices)}, plus "SUPPRESSES" (most negative
    first) with ``both``; arrays are [tokens, k].
    """
    import torch

    n_tok = unembed.shape[0]
    top_v = np.empty((n_tok, k), dtype=np.float32)
    top_i = np.empty((n_tok, k), dtype=np.int64)
    bot_v = np.empty((n_tok, k), dtype=np.float32) if both else None
    bot_i = np.empty((n_tok, k), dtype=np.int64) if both else None
    wt = w.float().T.contiguous()
    with torch.inference_mode():
        for start in range(0, n_tok, chunk):
            end = min(n_tok, start + chunk)
            logits = unembed[start:end].float() @ wt
            v, i = logits.topk(k, dim=1)
            top_v[start:end], top_i[start:end] = v.numpy(), i.numpy()
            if both:
                v, i = logits.topk(k, dim=1, largest=False)
                bot_v[start:end], bot_i[start:end] = v.numpy(), i.numpy()
            if progress:
                progress(end - start)
    if both:
        return {"PROMOTES": (top_v, top_i), "SUPPRESSES": (bot_v, bot_i)}
    return {"READS": (top_v, top_i)}
