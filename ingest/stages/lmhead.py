"""The lmhead stage: per neuron, the tokens its weights promote, suppress and read through the
LM head (``ingest.lmhead``), as PROMOTES / SUPPRESSES / READS edges to the shared Tokens."""

from __future__ import annotations

import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport
from kb.errors import IngestError


class LMHeadStage(Stage):
    name = "lmhead"
    tuned_heap = True
    help = "tokens each neuron promotes, suppresses and reads through the LM head"
    needs = ("model",)
    settings = (
        Setting("lmhead_k", 10, "Promoted, suppressed and read tokens per neuron.", minimum=1),
    )

    def check_model(self, cfg, lm) -> None:
        k, vocab = cfg.settings["lmhead_k"], lm.adapter.vocab_size
        if k > vocab:
            raise IngestError(f"--lmhead-k {k} is larger than the vocabulary of {vocab} tokens",
                              f"use --lmhead-k between 1 and {vocab}")

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from ingest.lmhead import decode_layer, release_unembedding
        from ingest.memory import LMHEAD_MAX_CHUNK, LMHEAD_WRITE_ROWS

        report = StageReport(self.name)
        d_mlp = ctx.lm.adapter.d_mlp
        # Neurons per product against the whole vocabulary: what the memory plan allows.
        chunk = ctx.memory.lmhead_chunk if ctx.memory is not None else LMHEAD_MAX_CHUNK
        # Layers' edges are written together, up to LMHEAD_WRITE_ROWS at a time: in the
        # embedded store each write into a table that holds rows rewrites them for the
        # tokens it touches. scripts/bench_lmhead_writes.py, SmolLM2-shaped edges: a first
        # model 65.8 s layer by layer against 7.5 s in one write per type; a second model
        # beside it 162.2 s against 16.8 s. A layer is marked done once its edges are stored.
        pending: dict[str, list[pd.DataFrame]] = {rel: [] for rel in RELS}
        pending_layers: list[int] = []
        ctx.reporter.begin(self.name, len(layers) * d_mlp, "neuron")
        for layer in layers:
            tokens = decode_layer(ctx.lm.adapter, layer, k=ctx.cfg.settings["lmhead_k"], device=str(ctx.lm.device),
                                  chunk=chunk)
            for rel, frame in zip(RELS, (tokens.promotes, tokens.suppresses, tokens.reads)):
                edges = token_edges(ctx, layer, frame)
                edges["found"] = "neuron"  # the neuron's own top-k list (the tokens stage adds "token")
                pending[rel].append(edges[["src", "dst", *RELS[rel], "rank", "found"]])
            pending_layers.append(layer)
            ctx.reporter.advance(d_mlp)
            if layer == layers[-1] or sum(len(f) for frames in pending.values() for f in frames) >= LMHEAD_WRITE_ROWS:
                for rel, frames in pending.items():
                    report.rows += ctx.store.upsert_rels(rel, pd.concat(frames, ignore_index=True))
                    frames.clear()
                for done in pending_layers:
                    ctx.mark_done(self, done, report)
                pending_layers.clear()
        ctx.reporter.end()
        release_unembedding(ctx.lm.adapter)  # the memory plan counts it for this stage only
        return report


# The relationships the stage writes, and their value columns.
RELS = {"PROMOTES": ["logit"], "SUPPRESSES": ["logit"], "READS": ["weight", "via"]}


def token_edges(ctx: Context, layer: int, frame: pd.DataFrame) -> pd.DataFrame:
    """A frame of (index, token_id, ...) rows as Neuron -> Token edges (src, dst, ...)."""
    from kb.ids import neuron_ids, token_ids

    return frame.assign(src=neuron_ids(ctx.model_id, layer, frame["index"]),
                        dst=token_ids(ctx.lm.tokenizer_id, frame["token_id"]))
