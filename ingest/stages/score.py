"""The score stage: scores of every stored explanation of the layers, with a local language
model (``ingest.explain.scorers``). Simulating tens of thousands of neurons on a CPU takes
hours, so ``all`` skips it; ``nkb score`` scores a selection of neurons instead, with a local
model or an OpenAI-compatible server.
"""

from __future__ import annotations

from ingest.stages.base import Context, Setting, Stage, StageReport
from kb.errors import IngestError

METHODS = ("simulation", "detection", "fuzzing")


class ScoreStage(Stage):
    name = "score"
    help = "simulation, detection or fuzzing scores of the stored explanations, with a local LLM"
    needs = ("activations",)
    default = False
    settings = (
        Setting("score_methods", "simulation", "Comma-separated scorers: simulation, detection, fuzzing.", type=str),
        Setting("scorer_model", "smollm2-135m", "The local model that simulates or classifies.", type=str),
        Setting("score_explainer", None, "Score only the explanations of this explainer (default: all).", type=str),
        Setting("score_top", 5, "Held-out top records per score.", minimum=1),
        Setting("score_random", 5, "Random records per score.", minimum=0),
        Setting("score_batch_size", 8, "Prompts per forward pass of the scorer model.", minimum=1, output=False),
    )

    def validate(self, cfg) -> None:
        methods = [m.strip() for m in cfg.settings["score_methods"].split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise IngestError(f"--score-methods: unknown scorer {bad[0] if bad else '(none)'!r}",
                              f"use any of {', '.join(METHODS)}")

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from ingest.explain.make import make_backend, make_scorer
        from ingest.explain.run import score_neurons
        from kb.ids import neuron_ids

        s = ctx.cfg.settings
        same = s["scorer_model"] == ctx.cfg.model and ctx.cfg.name is None
        backend = make_backend("local", local_model=s["scorer_model"], device=str(ctx.lm.device),
                               batch_size=s["score_batch_size"], loaded=ctx.lm if same else None)
        report = StageReport(self.name)
        methods = [m.strip() for m in s["score_methods"].split(",") if m.strip()]
        d_mlp = ctx.lm.adapter.d_mlp
        ctx.reporter.begin(self.name, len(layers) * d_mlp * len(methods), "neuron")
        for layer in layers:
            ids = neuron_ids(ctx.model_id, layer, range(d_mlp))
            for method in methods:
                scorer = make_scorer(method, backend, n_top=s["score_top"], n_random=s["score_random"])
                done = score_neurons(ctx.store, ids, scorer, explainer=s["score_explainer"])
                report.rows += done.written
                ctx.reporter.advance(d_mlp)
            ctx.mark_done(self, layer, report)
        ctx.reporter.end()
        return report
