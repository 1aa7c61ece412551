"""The lmhead stage: per neuron, the tokens its weights promote, suppress and read through the
LM head (``ingest.lmhead``), as PROMOTES / SUPPRESSES / READS edges to the shared Tokens."""

from __future__ import annotations

import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport
from kb.errors import IngestError


class LMHeadStage(Stage):
    name = "lmhead"
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
        from ingest.memory import LMHEAD_MAX_CHUNK

        report = StageReport(self.name)
        d_mlp = ctx.lm.adapter.d_mlp
        # Neurons per product against the whole vocabulary: what the memory plan allows.
        chunk = ctx.memory.lmhead_chunk if ctx.memory is not None else LMHEAD_MAX_CHUNK
        ctx.reporter.begin(self.name, len(layers) * d_mlp, "neuron")
        for layer in layers:
            tokens = decode_layer(ctx.lm.adapter, layer, k=ctx.cfg.settings["lmhead_k"], device=str(ctx.lm.device),
                                  chunk=chunk)
            for rel, frame, value in (("PROMOTES", tokens.promotes, "logit"), ("SUPPRESSES", tokens.suppresses, "logit"),
                                      ("READS", tokens.reads, "weight")):
                edges = token_edges(ctx, layer, frame)
                extra = ["via"] if rel == "READS" else []
                edges["found"] = "neuron"  # the neuron's own top-k list (the tokens stage adds "token")
                report.rows += ctx.store.upsert_rels(rel, edges[["src", "dst", value, "rank", "found", *extra]])
            ctx.mark_done(self, layer, report)
            ctx.reporter.advance(d_mlp)
        ctx.reporter.end()
        release_unembedding(ctx.lm.adapter)  # the memory plan counts it for this stage only
        return report


def token_edges(ctx: Context, layer: int, frame: pd.DataFrame) -> pd.DataFrame:
    """A frame of (index, token_id, ...) rows as Neuron -> Token edges (src, dst, ...)."""
    from kb.ids import neuron_ids, token_ids

    return frame.assign(src=neuron_ids(ctx.model_id, layer, frame["index"]),
                        dst=token_ids(ctx.lm.tokenizer_id, frame["token_id"]))
