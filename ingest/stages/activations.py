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
import pyarrow as pa

from ingest.stages.base import Context, Setting, Stage, StageReport, digest
from kb.ids import neuron_ids
from kb.records import encode_activations_array

DEFAULT_TOKENS = 65_536


class ActivationsStage(Stage):
    name = "activations"
    tuned_heap = True
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
        from ingest.memory import trim

        cfg, w, s = ctx.cfg, ctx.windows, ctx.cfg.settings
        ctx.reporter.begin(label, int(w.token_ids.size), "tok")
        collector = run_activation_pass(
            ctx.lm.adapter, w.token_ids, w.bos_id, group, record_config(cfg),
            batch_size=s["batch_size"], device=str(ctx.lm.device), dtype=getattr(torch, s["dtype"]),
            checkpoint_path=ckpt, checkpoint_seconds=s["checkpoint_seconds"], progress=ctx.reporter.advance,
        )
        ctx.reporter.end()
        if not write:
            return 0
        # Everything the group computed is written at once: the Snippets its records use, the
        # statistics on its Neurons, and its records in as few relationship COPYs as the
        # buffer pool takes (Store.bulk_batch_rows). LadybugDB writes a relationship COPY
        # straight to disk only into an empty table; a COPY per layer rewrites what earlier
        # layers wrote at every checkpoint (SmolLM2's 1.84 million records took 213 s in 30
        # COPYs on a quiet 2-core machine, 29 s in 3). Each layer's pass state is released as
        # soon as its records are taken, so they never sit beside all of it.
        ctx.reporter.begin("write records", len(write), "layer")
        stats, edges = [], []
        for layer in write:
            layer_stats, layer_edges = layer_rows(ctx, layer, collector.layer_results(layer))
            collector.release(layer)
            stats.append(layer_stats)
            edges.append(layer_edges)
            ctx.reporter.advance(1)
        trim()  # the pass state is freed: give it back before the store's write needs its pool
        rows = write_rows(ctx, pd.concat(stats, ignore_index=True), pd.concat(edges, ignore_index=True), written)
        del stats, edges
        for layer in write:
            ctx.mark_done(self, layer, report)
        ctx.reporter.end()
        return rows


def record_config(cfg):
    from ingest.activations import RecordConfig

    s = cfg.settings
    return RecordConfig(top_k=s["top_k"], n_random=s["n_random"], n_quantiles=s["n_quantiles"],
                        per_quantile=s["per_quantile"], seed=s["seed"])


def layer_rows(ctx: Context, layer: int, res: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One layer's Neuron statistics and ACTIVATES_ON rows (with the window of each record).

    The record frame's strings are Arrow columns: all the layers' records reach the store
    together (one COPY), and as Python strings SmolLM2's 1.84 million would take about a
    gigabyte beside the 0.4 GB they take in Arrow."""
    stats = res.stats.assign(id=neuron_ids(ctx.model_id, layer, res.stats["index"])).drop(columns=["index"])
    records = res.records
    edges = pd.DataFrame({"src": _arrow(pa.array(neuron_ids(ctx.model_id, layer, records["index"]), pa.string())),
                          "window": records["window"], "kind": _arrow(pa.array(records["kind"], pa.string())),
                          "rank": records["rank"], "max": records["max"], "position": records["position"],
                          "activations": _arrow(encode_activations_array(np.stack(records["activations"].to_numpy())))})
    return stats, edges


def _arrow(values: pa.Array) -> pd.api.extensions.ExtensionArray:
    return pd.arrays.ArrowExtensionArray(values)


def write_rows(ctx: Context, stats: pd.DataFrame, edges: pd.DataFrame, written: set[int]) -> int:
    """Write statistics and records; each Snippet is written once, by the first write whose
    records use it (``written`` tracks which windows are stored)."""
    rows = ctx.store.upsert_nodes("Neuron", stats)
    new = sorted(set(edges["window"].unique().tolist()) - written)
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
    snippet = np.asarray(ctx.snippet_ids, dtype=object)
    edges = edges.assign(dst=snippet[edges["window"].to_numpy()]).drop(columns=["window"])
    # As few writes as the store takes: COPYs that fit the embedded engine's buffer pool (see
    # _run_group), the server's batch size for Neo4j.
    return rows + ctx.store.upsert_rels("ACTIVATES_ON", edges, batch_size=ctx.store.bulk_batch_rows(edges))
