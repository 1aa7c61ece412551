"""The ingest pipeline: stages that compute data from a model and write it to a store.

Every stage is resumable and idempotent:

- all input is validated (model, layers, corpus, store state) before the first write, so
  bad input leaves the store exactly as it was;
- each stage writes through the store's idempotent upserts, so repeating a write changes
  nothing;
- a stage records, per layer, that it finished (``NkbMeta`` keys ``ingest/<model>/<stage>/<layer>``)
  together with a digest of the settings it ran with, so a re-run skips finished work and
  refuses to mix results computed with other settings;
- the activation pass checkpoints its streaming state to the run directory as it goes, so a
  killed run (Ctrl-C or kill -9) resumes from the last checkpoint and computes exactly what
  an uninterrupted run would.

The library never prints: it reports to a ``Reporter``; the CLI plugs in progress bars.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kb import config
from kb.errors import IngestError
from kb.ids import neuron_id, token_id
from kb.records import encode_activations
from kb.stores.base import Store

STAGES = ("lmhead", "activations")
DEFAULT_TOKENS = 65_536


class Reporter:
    """Where the pipeline reports progress. The base class reports nowhere."""

    def begin(self, stage: str, total: int | None, unit: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def end(self) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class IngestConfig:
    """Everything that determines an ingest run; saved with the run (there are no secrets in it)."""

    model: str = "smollm2-135m"
    name: str | None = None
    corpus: str | None = None
    tokens: int | None = DEFAULT_TOKENS
    window: int = 64
    layers: list[int] | None = None
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 16
    top_k: int = 20
    n_random: int = 10
    n_quantiles: int = 5
    per_quantile: int = 2
    lmhead_k: int = 10
    seed: int = 0
    checkpoint_every: int = 20  # batches

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise IngestError(f"unknown stage(s): {', '.join(unknown)}", f"stages: {', '.join(STAGES)}")
        positive = {"window": self.window, "batch-size": self.batch_size, "top-k": self.top_k,
                    "lmhead-k": self.lmhead_k, "checkpoint-every": self.checkpoint_every}
        if self.tokens is not None:
            positive["tokens"] = self.tokens
        for option, value in positive.items():
            if value < 1:
                raise IngestError(f"--{option} must be at least 1, got {value}")
        if self.tokens is not None and self.tokens < self.window:
            raise IngestError(f"--tokens {self.tokens} is less than one window of {self.window} tokens",
                              "raise --tokens or lower --window")

    def activation_settings(self) -> dict[str, Any]:
        """What the activation records depend on (not the device, batch size or checkpointing)."""
        return {k: getattr(self, k) for k in ("corpus", "tokens", "window", "dtype", "top_k", "n_random",
                                              "n_quantiles", "per_quantile", "seed")}

    def lmhead_settings(self) -> dict[str, Any]:
        return {"lmhead_k": self.lmhead_k}


@dataclass
class StageReport:
    stage: str
    layers_done: list[int] = field(default_factory=list)
    layers_skipped: list[int] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0


@dataclass
class IngestReport:
    model: str
    store: str
    stages: list[StageReport] = field(default_factory=list)
    seconds: float = 0.0


def parse_layers(text: str | None) -> list[int] | None:
    """'0-5,12' -> [0, 1, 2, 3, 4, 5, 12]; None or 'all' -> None (every layer)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                layers.update(range(lo, hi + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise IngestError(f"cannot read layers {text!r}", "use a list of layers and ranges, e.g. 0-5,12") from None
    return sorted(layers)


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


def _marker(model: str, stage: str, layer: int) -> str:
    return f"ingest/{model}/{stage}/{layer}"


def run_dir(store: Store, model: str) -> Path:
    """Where a model's ingest checkpoints live: inside an embedded store's directory, or in
    the user cache for a server store (keyed by the server URL without credentials)."""
    if store.engine == "embedded":
        base = Path(store.url) / "ingest"
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        key = hashlib.blake2b(config.redact(store.url).encode(), digest_size=6).hexdigest()
        base = Path(cache) / "neuron-kb" / "runs" / key
    safe = model.replace("/", "--")
    return base / safe


class Pipeline:
    """One ingest run of one model: ``prepare()`` validates everything that needs no store,
    ``run(store)`` checks the store's state, then writes."""

    def __init__(self, cfg: IngestConfig, reporter: Reporter | None = None):
        cfg.validate()
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self.windows = None

    # -- validation: nothing is written before all of this passes --------------------------
    def prepare(self) -> "Pipeline":
        try:
            from ingest.models import load_model, resolve_device
        except ImportError as e:
            raise IngestError(f"ingesting needs the model stack, which is not installed ({e.name} is missing)",
                              "pip install 'neuron-kb[ingest]'") from None

        cfg = self.cfg
        self.reporter.note(f"loading {cfg.model}")
        self.lm = load_model(cfg.model, device=resolve_device(cfg.device), dtype=cfg.dtype, name=cfg.name)
        self.model_id = self.lm.name
        n_layers = self.lm.adapter.n_layers
        layers = cfg.layers if cfg.layers is not None else list(range(n_layers))
        bad = [layer for layer in layers if not 0 <= layer < n_layers]
        if bad:
            raise IngestError(f"layer {bad[0]} is out of range: {self.model_id} has {n_layers} layers (0-{n_layers - 1})",
                              f"use --layers within 0-{n_layers - 1}")
        self.layers = layers
        if "activations" in cfg.stages:
            from ingest.corpus import load_corpus, make_windows, snippet_id

            self.reporter.note("tokenizing the corpus")
            self.windows = make_windows(load_corpus(cfg.corpus), self.lm.tokenizer, window=cfg.window,
                                        max_tokens=cfg.tokens)
            self.snippet_ids = [snippet_id(self.lm.tokenizer_id, row) for row in self.windows.token_ids]
        return self

    def _check_store(self) -> None:
        existing = self.store.cypher("MATCH (m:Model) WHERE m.id = $id RETURN m.fingerprint AS fp, m.source AS source",
                                     {"id": self.model_id})
        if len(existing) and existing["fp"].iloc[0] != self.lm.fingerprint:
            raise IngestError(
                f"the store already holds a different model named {self.model_id!r} (from {existing['source'].iloc[0]})",
                f"choose another name with --name, or remove it first: nkb delete-model {self.model_id}",
            )
        for stage, settings in (("lmhead", self.cfg.lmhead_settings()), ("activations", self.cfg.activation_settings())):
            if stage in self.cfg.stages:
                self._check_settings(stage, settings)

    def _check_settings(self, stage: str, settings: dict[str, Any]) -> None:
        digest = _digest(settings)
        for layer in self.layers:
            found = self.store.get_meta(_marker(self.model_id, stage, layer))
            if found is not None and json.loads(found)["settings"] != digest:
                raise IngestError(
                    f"{stage} of {self.model_id} layer {layer} were computed with other settings "
                    f"({json.loads(found)['described']})",
                    f"re-run with those settings, or recompute from scratch: nkb delete-model {self.model_id}",
                )

    def _todo(self, stage: str) -> list[int]:
        return [layer for layer in self.layers if self.store.get_meta(_marker(self.model_id, stage, layer)) is None]

    def _mark(self, stage: str, layer: int, settings: dict[str, Any]) -> None:
        described = ", ".join(f"{k}={v}" for k, v in settings.items())
        self.store.set_meta(_marker(self.model_id, stage, layer),
                            json.dumps({"settings": _digest(settings), "described": described}))

    # -- the run ----------------------------------------------------------------------------
    def run(self, store: Store) -> IngestReport:
        started = time.perf_counter()
        self.store = store
        self._check_store()
        report = IngestReport(self.model_id, config.redact(self.store.url))
        report.stages.append(self._write_model())
        if "lmhead" in self.cfg.stages:
            report.stages.append(self._lmhead())
        if "activations" in self.cfg.stages:
            report.stages.append(self._activations())
        report.seconds = time.perf_counter() - started
        return report

    def _write_model(self) -> StageReport:
        t0 = time.perf_counter()
        lm, store, a = self.lm, self.store, self.lm.adapter
        store.upsert_nodes("Model", pd.DataFrame([{
            "id": self.model_id, "kind": "lm", "source": lm.source, "architecture": a.name,
            "n_layers": a.n_layers, "d_model": a.d_model, "d_mlp": a.d_mlp, "vocab_size": a.vocab_size,
            "tokenizer": lm.tokenizer_id, "fingerprint": lm.fingerprint, "config": lm.config_json,
        }]))
        self.token_text = self._token_texts()
        rows = store.upsert_nodes("Token", pd.DataFrame({
            "id": [token_id(lm.tokenizer_id, i) for i in range(a.vocab_size)],
            "tokenizer": lm.tokenizer_id,
            "token_id": np.arange(a.vocab_size, dtype=np.int64),
            "text": self.token_text,
        }))
        for layer in self.layers:
            ids = [neuron_id(self.model_id, layer, i) for i in range(a.d_mlp)]
            rows += store.upsert_nodes("Neuron", pd.DataFrame({
                "id": ids, "model": self.model_id, "layer": layer,
                "idx": np.arange(a.d_mlp, dtype=np.int64), "kind": "mlp",
            }))
            rows += store.upsert_rels("HAS_NEURON", pd.DataFrame({"src": self.model_id, "dst": ids}))
        store.set_meta(f"ingest/{self.model_id}/config", json.dumps(asdict(self.cfg)))
        return StageReport("model", list(self.layers), [], rows, time.perf_counter() - t0)

    def _token_texts(self) -> list[str]:
        tok = self.lm.tokenizer
        known = min(len(tok), self.lm.adapter.vocab_size)
        texts = tok.batch_decode([[i] for i in range(known)])
        # Embedding rows past the tokenizer's vocabulary (padding for speed) have no text.
        return texts + [""] * (self.lm.adapter.vocab_size - known)

    def _lmhead(self) -> StageReport:
        from ingest.lmhead import decode_layer

        t0 = time.perf_counter()
        settings = self.cfg.lmhead_settings()
        todo = self._todo("lmhead")
        report = StageReport("lmhead", layers_skipped=[layer for layer in self.layers if layer not in todo])
        device = self.lm.model.device
        self.reporter.begin("lmhead", len(todo) * self.lm.adapter.d_mlp, "neuron")
        for layer in todo:
            tokens = decode_layer(self.lm.adapter, layer, k=self.cfg.lmhead_k, device=str(device))
            for rel, frame, value in (("PROMOTES", tokens.promotes, "logit"), ("SUPPRESSES", tokens.suppresses, "logit"),
                                      ("READS", tokens.reads, "weight")):
                edges = self._token_edges(layer, frame)
                extra = ["via"] if rel == "READS" else []
                report.rows += self.store.upsert_rels(rel, edges[["src", "dst", value, "rank", *extra]])
            self._mark("lmhead", layer, settings)
            report.layers_done.append(layer)
            self.reporter.advance(self.lm.adapter.d_mlp)
        self.reporter.end()
        report.seconds = time.perf_counter() - t0
        return report

    def _token_edges(self, layer: int, frame: pd.DataFrame) -> pd.DataFrame:
        prefix_n = f"{self.model_id}/{layer}/"
        prefix_t = f"{self.lm.tokenizer_id}/"
        out = frame.copy()
        out["src"] = prefix_n + frame["index"].astype(str)
        out["dst"] = prefix_t + frame["token_id"].astype(str)
        return out

    def _activations(self) -> StageReport:
        import torch

        from ingest.activations import RecordConfig, run_activation_pass

        t0 = time.perf_counter()
        cfg, settings = self.cfg, self.cfg.activation_settings()
        todo = self._todo("activations")
        report = StageReport("activations", layers_skipped=[layer for layer in self.layers if layer not in todo])
        if not todo:
            return report
        rundir = run_dir(self.store, self.model_id)
        rundir.mkdir(parents=True, exist_ok=True)
        ckpt, sidecar = rundir / "activations.pt", rundir / "activations.json"
        # A checkpoint from an earlier, killed run of the same settings covering these layers
        # is resumed with the layers it was started with; anything else starts afresh.
        pass_layers = todo
        if sidecar.exists():
            prior = json.loads(sidecar.read_text())
            if prior["settings"] == _digest(settings) and set(todo) <= set(prior["layers"]):
                pass_layers = prior["layers"]
            else:
                ckpt.unlink(missing_ok=True)
        sidecar.write_text(json.dumps({"settings": _digest(settings), "layers": pass_layers,
                                       "config": asdict(cfg)}))
        w = self.windows
        self.reporter.begin("activations", int(w.token_ids.size), "tok")
        collector = run_activation_pass(
            self.lm.adapter, w.token_ids, w.bos_id, pass_layers,
            RecordConfig(top_k=cfg.top_k, n_random=cfg.n_random, n_quantiles=cfg.n_quantiles,
                         per_quantile=cfg.per_quantile, seed=cfg.seed),
            batch_size=cfg.batch_size, device=str(self.lm.model.device), dtype=getattr(torch, cfg.dtype),
            checkpoint_path=ckpt, checkpoint_every=cfg.checkpoint_every, progress=self.reporter.advance,
        )
        self.reporter.end()
        self.reporter.begin("write records", len(todo), "layer")
        written: set[int] = set()
        for layer in todo:
            report.rows += self._write_layer_records(layer, collector.layer_results(layer), written)
            self._mark("activations", layer, settings)
            report.layers_done.append(layer)
            self.reporter.advance(1)
        self.reporter.end()
        ckpt.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        report.seconds = time.perf_counter() - t0
        return report

    def _write_layer_records(self, layer: int, res: Any, written: set[int]) -> int:
        """Write one layer's statistics and records; snippets are written once, by the first
        layer whose records use them (``written`` tracks which windows are stored)."""
        prefix = f"{self.model_id}/{layer}/"
        stats = res.stats.assign(id=prefix + res.stats["index"].astype(str)).drop(columns=["index"])
        rows = self.store.upsert_nodes("Neuron", stats)
        records = res.records
        new = sorted(set(records["window"].unique().tolist()) - written)
        if new:
            w = self.windows
            token_ids = w.token_ids[new]
            texts = np.asarray(self.token_text, dtype=object)
            rows += self.store.upsert_nodes("Snippet", pd.DataFrame({
                "id": [self.snippet_ids[i] for i in new], "tokenizer": self.lm.tokenizer_id, "corpus": w.corpus,
                "token_ids": list(token_ids),
                "tokens": [texts[row].tolist() for row in token_ids],
                "text": self.lm.tokenizer.batch_decode(token_ids.tolist()),
            }))
            written.update(new)
        edges = records.assign(src=prefix + records["index"].astype(str),
                               dst=[self.snippet_ids[i] for i in records["window"]],
                               activations=encode_activations(np.stack(records["activations"].to_numpy())))
        rows += self.store.upsert_rels(
            "ACTIVATES_ON", edges[["src", "dst", "kind", "rank", "max", "position", "activations"]])
        return rows


def ingest(store: Store, cfg: IngestConfig, reporter: Reporter | None = None) -> IngestReport:
    """Ingest one model into ``store`` with ``cfg``; see the module docstring for the guarantees."""
    return Pipeline(cfg, reporter).prepare().run(store)
