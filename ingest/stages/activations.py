"""The activations stage: one forward pass over the corpus serves every layer of a group
(``ingest.activations``); per neuron it stores statistics on the Neuron and its top, random
and quantile records as ACTIVATES_ON edges to shared Snippets.

The layers run in as few groups as the memory plan allows (``ingest.memory``; one group
unless the estimate exceeds ``--max-memory``), one pass each; a group's state is freed before
the next one starts. Results do not depend on the grouping. The pass checkpoints its state
in the store's artifact directory, beside a sidecar naming the settings and the group's
layers, so a killed run resumes that group where it stopped and computes exactly what an
uninterrupted run would.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import numpy as np
import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport, digest
from kb.ids import neuron_ids
from kb.records import encode_activations

DEFAULT_TOKENS = 65_536


class ActivationsStage(Stage):
    name = "activations"
    help = "top, random and quantile activation records and statistics, from one pass over the corpus"
    needs = ("model",)
    uses_corpus = True
    settings = (
        Setting("corpus", None, "Text to run: a .txt/.jsonl/.parquet file or directory, or hf:NAME[:CONFIG][:SPLIT]. "
                "Default: Python's bundled documentation.", type=str),
        Setting("tokens", DEFAULT_TOKENS, "Corpus token budget.", minimum=1),
        Setting("window", 64, "Tokens per text window (snippet).", minimum=1),
        Setting("top_k", 20, "Top-activating records per neuron.", minimum=1),
        Setting("n_random", 10, "Random records per neuron.", minimum=0, option="--random"),
        Setting("n_quantiles", 5, "Activation quantile bins to sample records from (0: none).", minimum=0,
                option="--quantiles"),
        Setting("per_quantile", 2, "Records per quantile bin.", minimum=1),
        Setting("seed", 0, "Seed of the record sampling."),
        Setting("batch_size", 16, "Windows per forward pass.", minimum=1, output=False),
        Setting("checkpoint_seconds", 60.0, "Seconds between checkpoints of the activation pass.", type=float,
                minimum=0, output=False),
    )

    def output_settings(self, cfg) -> dict[str, Any]:
        return {**super().output_settings(cfg), "dtype": cfg.settings["dtype"]}

    def validate(self, cfg) -> None:
        from kb.errors import IngestError

        s = cfg.settings
        if s["tokens"] is not None and s["tokens"] < s["window"]:
            raise IngestError(f"--tokens {s['tokens']} is less than one window of {s['window']} tokens",
                              "raise --tokens or lower --window")
        record_config(cfg)  # RecordConfig's own checks (reservoir against per_quantile, ...)

    def check_model(self, cfg, lm) -> None:
        from ingest.stages.model import window_prefix
        from kb.errors import IngestError

        config = lm.model.config
        limit = next((getattr(config, a) for a in ("max_position_embeddings", "n_positions", "n_ctx")
                      if isinstance(getattr(config, a, None), int)), None)
        need = cfg.settings["window"] + len(window_prefix(lm.tokenizer))
        if limit is not None and need > limit:
            raise IngestError(f"--window {cfg.settings['window']} does not fit the model's context of {limit} "
                              f"positions (with {need - cfg.settings['window']} prefix token(s))",
                              f"use --window {limit - (need - cfg.settings['window'])} or less")

    def check_corpus(self, cfg, windows) -> None:
        # Each record is a distinct window, so a neuron cannot have more records of a kind than
        # the corpus has windows; asking for more is refused rather than silently given less.
        from kb.errors import IngestError

        s, n = cfg.settings, windows.n_windows
        asked = [("--top-k", s["top_k"]), ("--random", s["n_random"])]
        if s["n_quantiles"]:
            asked.append(("--per-quantile", s["per_quantile"]))
        if s["n_quantiles"] * s["per_quantile"] > n:
            asked.append((f"--quantiles {s['n_quantiles']} x --per-quantile", s["n_quantiles"] * s["per_quantile"]))
        for flag, k in asked:
            if k > n:
                raise IngestError(f"{flag} {k} is more than the {n} windows the corpus gave "
                                  f"({s['tokens']} tokens in windows of {s['window']})",
                                  f"use {flag} {n} or less, or a larger corpus / --tokens")

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from ingest.memory import split

        cfg, report = ctx.cfg, StageReport(self.name)
        settings = digest(self.output_settings(cfg))
        rundir = ctx.artifact_dir()
        rundir.mkdir(parents=True, exist_ok=True)
        ckpt, sidecar = rundir / "activations.pt", rundir / "activations.json"
        todo = sorted(layers)
        most = ctx.memory.layers_per_pass if ctx.memory is not None and ctx.memory.groups else len(todo)
        groups: list[list[int]] = []
        # A checkpoint from an earlier, killed run of the same settings is resumed first, with
        # the layers its pass was started with, if any of them is still to do and the group
        # fits this run's plan; anything else starts afresh.
        if sidecar.exists():
            prior = json.loads(sidecar.read_text())
            if prior["settings"] == settings and set(prior["layers"]) & set(todo) and len(prior["layers"]) <= most:
                groups.append(prior["layers"])
            else:
                ckpt.unlink(missing_ok=True)
        groups += split([layer for layer in todo if not groups or layer not in groups[0]], most)
        if len(groups) > 1:
            ctx.reporter.note(f"activation pass in {len(groups)} groups of layers: "
                              + "; ".join(",".join(map(str, g)) for g in groups))
        written: set[int] = set()  # windows whose Snippet is stored
        for i, group in enumerate(groups):
            sidecar.write_text(json.dumps({"settings": settings, "layers": group}))
            label = self.name if len(groups) == 1 else f"{self.name} {i + 1}/{len(groups)}"
            report.rows += self._run_group(ctx, group, [layer for layer in group if layer in todo], ckpt, label,
                                           report, written)
            gc.collect()  # the group's state went with _run_group's frame; nothing may keep it for the next
            ckpt.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
        return report

    def _run_group(self, ctx: Context, group: list[int], write: list[int], ckpt, label: str,
                   report: StageReport, written: set[int]) -> int:
        """One pass over the corpus for ``group``; writes the layers in ``write``. Returns rows written."""
        import torch

        from ingest.activations import run_activation_pass

        cfg, w, s = ctx.cfg, ctx.windows, ctx.cfg.settings
        ctx.reporter.begin(label, int(w.token_ids.size), "tok")
        collector = run_activation_pass(
            ctx.lm.adapter, w.token_ids, w.bos_id, group, record_config(cfg),
            batch_size=s["batch_size"], device=str(ctx.lm.device), dtype=getattr(torch, s["dtype"]),
            checkpoint_path=ckpt, checkpoint_seconds=s["checkpoint_seconds"], progress=ctx.reporter.advance,
        )
        ctx.reporter.end()
        ctx.reporter.begin("write records", len(write), "layer")
        rows = 0
        for layer in write:
            rows += write_layer_records(ctx, layer, collector.layer_results(layer), written)
            ctx.mark_done(self, layer)
            report.layers_done.append(layer)
            ctx.reporter.advance(1)
        ctx.reporter.end()
        return rows


def record_config(cfg):
    from ingest.activations import RecordConfig

    s = cfg.settings
    return RecordConfig(top_k=s["top_k"], n_random=s["n_random"], n_quantiles=s["n_quantiles"],
                        per_quantile=s["per_quantile"], seed=s["seed"])


def write_layer_records(ctx: Context, layer: int, res: Any, written: set[int]) -> int:
    """Write one layer's statistics and records; snippets are written once, by the first
    layer whose records use them (``written`` tracks which windows are stored)."""
    stats = res.stats.assign(id=neuron_ids(ctx.model_id, layer, res.stats["index"])).drop(columns=["index"])
    rows = ctx.store.upsert_nodes("Neuron", stats)
    records = res.records
    new = sorted(set(records["window"].unique().tolist()) - written)
    if new:
        w = ctx.windows
        token_ids = w.token_ids[new]
        texts = np.asarray(ctx.token_text, dtype=object)
        rows += ctx.store.upsert_nodes("Snippet", pd.DataFrame({
            "id": [ctx.snippet_ids[i] for i in new], "tokenizer": ctx.lm.tokenizer_id, "corpus": w.corpus,
            "token_ids": list(token_ids),
            "tokens": [texts[row].tolist() for row in token_ids],
            "text": ctx.lm.tokenizer.batch_decode(token_ids.tolist()),
        }))
        written.update(new)
    edges = records.assign(src=neuron_ids(ctx.model_id, layer, records["index"]),
                           dst=[ctx.snippet_ids[i] for i in records["window"]],
                           activations=encode_activations(np.stack(records["activations"].to_numpy())))
    rows += ctx.store.upsert_rels(
        "ACTIVATES_ON", edges[["src", "dst", "kind", "rank", "max", "position", "activations"]])
    return rows
