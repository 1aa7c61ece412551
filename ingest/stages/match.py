"""The match stage: Hungarian matching of every pair of adjacent layers (``kb.match``), stored as
MATCHES edges, under one similarity method. Not in ``all``: ``nkb match`` runs any matching on
demand, and this stage is for keeping the adjacent-layer chains in the graph."""

from __future__ import annotations

from ingest.stages.base import Context, Setting, Stage, StageReport


class MatchStage(Stage):
    name = "match"
    help = "Hungarian matching of adjacent layers (MATCHES edges)"
    needs = ("embed",)
    default = False
    settings = (
        Setting("match_method", "weights_out", "Similarity for matching.", type=str,
                choices=("weights_out", "weights_in", "explanation", "activations")),
    )

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from kb.match import match

        report = StageReport(self.name)
        pairs = [layer for layer in layers if layer + 1 in ctx.layers]
        ctx.reporter.begin(self.name, len(pairs), "pair")
        for layer in pairs:
            result = match(ctx.store, ctx.model_id, layers=f"{layer},{layer + 1}", method=ctx.cfg.settings["match_method"])
            report.rows += len(result.edges)
            ctx.reporter.advance(1)
        for layer in layers:
            ctx.mark_done(self, layer, report)
        ctx.reporter.end()
        return report
