"""The describe stage: a data-derived description of every neuron, with no language model.

It writes, per neuron, an Explanation by explainer ``data``, method ``summary`` (the tokens
its top records peak on, its N2G tokens where N2G ran, and the tokens it promotes, suppresses
and reads through the LM head), and, for neurons N2G has run on, one of method ``n2g`` with
the N2G F1 as its score (Score method ``n2g``). These are summaries of measurements and are
labelled so; LLM explanations come from ``nkb explain`` (``ingest.explain``).
"""

from __future__ import annotations

from ingest.stages.base import Context, Setting, Stage, StageReport


class DescribeStage(Stage):
    name = "describe"
    help = "a data-derived description of every neuron from its records and tokens (no LLM)"
    needs = ("lmhead", "activations")
    settings = (
        Setting("describe_tokens", 5, "Tokens per list in the data-derived descriptions.", minimum=1),
    )

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from ingest.explain.explainers import DataExplainer, N2GExplainer
        from ingest.explain.neurons import load_neurons
        from ingest.explain.run import refresh_best, write_explanations, write_scores
        from ingest.explain.scorers import ScoreResult

        k = ctx.cfg.settings["describe_tokens"]
        report = StageReport(self.name)
        ctx.reporter.begin(self.name, len(layers), "layer")
        for layer in layers:
            neurons = load_neurons(ctx.store, model=ctx.model_id, layer=layer, records=False, peaks=True)
            ids = write_explanations(ctx.store, neurons, DataExplainer(k).explain(neurons), "data", "summary")
            n2g = N2GExplainer(k).explain(neurons)
            n2g_ids = write_explanations(ctx.store, neurons, n2g, "data", "n2g")
            scored = [n for n, t in zip(neurons, n2g) if t and n.n2g_f1 is not None]
            by_neuron = {eid.rsplit("/", 2)[0]: eid for eid in n2g_ids}
            report.rows += len(ids) + len(n2g_ids) + write_scores(
                ctx.store, [(by_neuron[n.id], n.model, "n2g", ScoreResult("n2g", n.n2g_f1, "n2g")) for n in scored],
                split="all")
            refresh_best(ctx.store, [n.id for n in neurons])
            ctx.mark_done(self, layer, report)
            ctx.reporter.advance(1)
        ctx.reporter.end()
        return report
