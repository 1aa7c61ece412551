"""The ingest pipeline: runs the registered stages (``ingest.stages``) of one model into a store.

Every stage is resumable and idempotent:

- all input is validated (every setting, the model, layers, corpus and store state) before
  the first write, so bad input leaves the store exactly as it was;
- each stage writes through the store's idempotent upserts, so repeating a write changes
  nothing;
- a stage records, per layer, that it finished (``NkbMeta`` keys ``ingest/<model>/<stage>/<layer>``)
  together with a digest of the settings that define its output, so a re-run skips finished
  work and refuses to mix results computed with other settings;
- a stage whose needs are neither requested nor done for the layers at hand is refused,
  naming the stage to run first.

The library never prints: it reports to a ``Reporter``; the CLI plugs in progress bars.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ingest.memory import peak_resident_bytes, trim, tune_heap
from ingest.stages import REGISTRY, Context, Stage, StageReport, all_settings, default_stages, defaults, digest, resolve
from kb import config
from kb.errors import IngestError
from kb.stores.base import Store, model_meta_prefix
from kb.vectors.files import release_vector_cache


class Reporter:
    """Where the pipeline reports progress. The base class reports nowhere."""

    def begin(self, stage: str, total: int | None, unit: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def end(self) -> None: ...

    def note(self, message: str) -> None: ...

    def layer_written(self, stage: str, layer: int) -> None:
        """``stage`` has written every row of ``layer`` and is about to mark it done. A run
        killed here must resume to the same store (tests kill it here on purpose)."""


class IngestConfig:
    """Everything that determines an ingest run; saved with the run (there are no secrets in it).

    ``settings`` holds every stage's and the pipeline's options by name (``ingest.stages``
    defines each one, with its default, once); they are also readable as attributes.
    """

    def __init__(self, model: str = "smollm2-135m", *, name: str | None = None, layers: list[int] | None = None,
                 stages: list[str] | None = None, **settings: Any):
        self.model, self.name, self.layers = model, name, layers
        self.stages = list(stages) if stages is not None else default_stages()
        unknown = sorted(set(settings) - set(defaults()))
        if unknown:
            raise IngestError(f"unknown ingest setting {unknown[0]!r}", f"settings: {', '.join(defaults())}")
        self.settings: dict[str, Any] = {**defaults(), **settings}

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "name": self.name, "layers": self.layers, "stages": self.stages, **self.settings}

    def validate(self) -> list[Stage]:
        """Every check that needs neither the model nor the store; returns the stages to run."""
        check_model_spec(self.model)
        if self.name is not None:
            check_model_name(self.name, "--name")
        stages = resolve(self.stages)
        if self.layers is not None and not self.layers:
            raise IngestError("no layer to ingest", "pass --layers with at least one layer, e.g. 0-5,12")
        for s in all_settings():
            s.check(self.settings[s.name])
        if self.settings["max_memory"] is not None:
            from ingest.memory import parse_size

            parse_size(self.settings["max_memory"])
        for stage in stages:
            stage.validate(self)
        return stages


@dataclass
class IngestReport:
    model: str
    store: str
    stages: list[StageReport] = field(default_factory=list)
    seconds: float = 0.0


MAX_NAME = 200  # characters of a model id in the store (it starts every neuron id)
MAX_LAYER = 10_000  # far beyond any model; keeps "0-99999999999" from building a huge list


def check_model_spec(spec: str) -> None:
    """Refuse a MODEL argument that cannot name a model, before anything is loaded."""
    if not spec or not spec.strip():
        raise IngestError("no model given: MODEL is empty", "pass a bundled name (smollm2-135m), a Hugging Face id, "
                          "a model directory or a .gguf file")
    if len(spec) > config.MAX_LOCATION or not spec.isprintable():
        raise IngestError(f"not a model name or path: {config.shorten(spec, 60)}",
                          f"a model is a bundled name, a Hugging Face id, a directory or a .gguf file; "
                          f"at most {config.MAX_LOCATION} printable characters")


def check_model_name(name: str, what: str = "the model name") -> None:
    """A model id must read back as typed: printable, no surrounding spaces, not too long."""
    if not name or not name.isprintable() or name != name.strip() or len(name) > MAX_NAME:
        raise IngestError(f"{what} '{config.shorten(name, 60)}' cannot be a model id",
                          f"use 1 to {MAX_NAME} printable characters with no line breaks or surrounding "
                          "spaces, e.g. --name my-model")


def parse_layers(text: str | None, flag: str = "--layers") -> list[int] | None:
    """'0-5,12' -> [0, 1, 2, 3, 4, 5, 12]; None or 'all' -> None (every layer). ``flag`` names
    the option in error messages."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            lo, sep, hi = part.partition("-")
            lo_i = int(lo)
            hi_i = int(hi) if sep else lo_i
            if lo_i > hi_i or lo_i < 0:
                raise ValueError
        except ValueError:
            raise IngestError(f"cannot read layers '{config.shorten(text, 60)}' in {flag}",
                              "use a list of layers and ranges, e.g. 0-5,12") from None
        if hi_i > MAX_LAYER:
            raise IngestError(f"layer {hi_i:,} in {flag} '{config.shorten(text, 60)}' is beyond any model",
                              "use the model's layer numbers, e.g. 0-5,12")
        layers.update(range(lo_i, hi_i + 1))
    return sorted(layers)


class Pipeline:
    """One ingest run of one model: ``prepare()`` validates everything that needs no store,
    ``run(store)`` checks the store's state, then runs the stages in dependency order."""

    def __init__(self, cfg: IngestConfig, reporter: Reporter | None = None):
        self.stages = cfg.validate()
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self.windows = None
        self.memory = None  # ingest.memory.MemoryPlan, from prepare()
        self.snippet_ids: list[str] | None = None

    # -- validation: nothing is written before all of this passes --------------------------
    def prepare(self, store_url: str | None = None) -> "Pipeline":
        """Load and check the model and the corpus, and plan the run's memory (``ingest.memory``).
        ``store_url`` tells the planner whether an embedded store's buffer pool counts (it
        does when the URL is not given)."""
        try:
            from ingest.models import load_model, resolve_device
        except ImportError as e:
            raise IngestError(f"ingesting needs the model stack, which is not installed ({e.name} is missing)",
                              "pip install 'neuron-kb[ingest]'") from None
        from ingest.corpus import check_corpus, load_corpus, make_windows, snippet_id
        from ingest.stages.model import vocabulary_texts

        cfg, s = self.cfg, self.cfg.settings
        uses_corpus = any(stage.uses_corpus for stage in self.stages)
        # Everything that can be checked without the model is checked before it loads (which
        # takes ~25 s for SmolLM2): the corpus opens and holds text, the device exists.
        corpus = load_corpus(s["corpus"]) if uses_corpus else None
        if corpus is not None:
            check_corpus(corpus)
        device = resolve_device(s["device"])
        if any(stage.name == "activations" for stage in self.stages):
            from ingest.activations.fused import compile_enabled

            compile_enabled()  # a $NKB_COMPILE that says neither yes nor no is refused before the model loads
        self.reporter.note(f"loading {cfg.model}")
        self.lm = load_model(cfg.model, device=device, dtype=s["dtype"], name=cfg.name)
        self.model_id = self.lm.name
        check_model_name(self.model_id, "the model name (from MODEL; choose another with --name)")
        n_layers = self.lm.adapter.n_layers
        layers = cfg.layers if cfg.layers is not None else list(range(n_layers))
        bad = [layer for layer in layers if not 0 <= layer < n_layers]
        if bad:
            raise IngestError(f"layer {bad[0]} is out of range: {self.model_id} has {n_layers} layers (0-{n_layers - 1})",
                              f"use --layers within 0-{n_layers - 1}")
        self.layers = layers
        for stage in self.stages:
            stage.check_model(cfg, self.lm)
        if corpus is not None:
            self.reporter.note("tokenizing the corpus")
            self.windows = make_windows(corpus, self.lm.tokenizer, window=s["window"], max_tokens=s["tokens"])
            self.snippet_ids = [snippet_id(self.lm.tokenizer_id, row) for row in self.windows.token_ids]
            for stage in self.stages:
                if stage.uses_corpus:
                    stage.check_corpus(cfg, self.windows)
        self.token_text = vocabulary_texts(self.lm)
        self.memory = self._plan_memory(store_url)
        return self

    def _plan_memory(self, store_url: str | None):
        from ingest import memory

        s = self.cfg.settings
        budget = memory.parse_size(s["max_memory"]) if s["max_memory"] is not None else memory.default_budget()
        pool = 0 if store_url is not None and config.is_server_url(store_url) else config.buffer_pool_bytes()
        w = self.windows
        settings = memory.Settings.of(s, n_windows=0 if w is None else len(w.token_ids),
                                      bos=w is not None and w.bos_id is not None)
        plan = memory.plan(memory.Shape.of(self.lm), self.layers, settings,
                           stages={stage.name for stage in self.stages}, budget=budget, buffer_pool=pool)
        for line in plan.describe():
            self.reporter.note(line)
        return plan

    def _check_store(self, ctx: Context) -> None:
        existing = ctx.store.cypher("MATCH (m:Model) WHERE m.id = $id RETURN m.fingerprint AS fp, m.source AS source",
                                    {"id": self.model_id})
        if len(existing) and existing["fp"].iloc[0] != self.lm.fingerprint:
            raise IngestError(
                f"the store already holds a different model named {self.model_id!r} (from {existing['source'].iloc[0]})",
                f"choose another name with --name, or remove it first: nkb delete-model {self.model_id}",
            )
        names = {stage.name for stage in self.stages}
        for stage in self.stages:
            self._check_settings(ctx, stage)
            for need in stage.needs:
                if need in names:
                    continue
                missing = [layer for layer in self.layers if not ctx.done(need, layer)]
                if missing:
                    raise IngestError(
                        f"stage {stage.name} needs {need} for layer(s) {layer_list(missing)} of {self.model_id}, "
                        "which are not done",
                        f"run it first: nkb ingest {self.cfg.model} --stages {need}"
                        + (f" --layers {layer_list(missing)}" if self.cfg.layers is not None else ""),
                    )

    def _check_settings(self, ctx: Context, stage: Stage) -> None:
        wanted = digest(stage.output_settings(self.cfg))
        for layer in self.layers:
            found = ctx.store.get_meta(ctx.marker(stage.name, layer))
            if found is not None and json.loads(found)["settings"] != wanted:
                raise IngestError(
                    f"{stage.name} of {self.model_id} layer {layer} were computed with other settings "
                    f"({json.loads(found)['described']})",
                    f"re-run with those settings, or recompute from scratch: nkb delete-model {self.model_id}",
                )

    # -- the run ----------------------------------------------------------------------------
    def context(self, store: Store) -> Context:
        return Context(cfg=self.cfg, store=store, lm=self.lm, model_id=self.model_id, layers=self.layers,
                       reporter=self.reporter, windows=self.windows, snippet_ids=self.snippet_ids,
                       token_text=self.token_text, memory=self.memory)

    def run(self, store: Store) -> IngestReport:
        started = time.perf_counter()
        ctx = self.context(store)
        self._check_store(ctx)
        report = IngestReport(self.model_id, config.redact(store.url))
        for stage in self.stages:
            t0 = time.perf_counter()
            # The model stage always writes (cheap, idempotent): the Model node and its Tokens
            # are not per layer, and a later stage may be run for a layer it never saw.
            todo = [layer for layer in self.layers if stage.name == "model" or not ctx.done(stage, layer)]
            tune_heap(self.memory.forward_tensor if stage.tuned_heap else None)
            sub = stage.run(ctx, todo) if todo else StageReport(stage.name)
            release_vector_cache()  # what a stage read stays in memory no longer than the stage
            store.release_memory()  # nor what the engine cached of what it wrote
            trim()
            sub.layers_skipped = [layer for layer in self.layers if layer not in todo]
            sub.seconds = time.perf_counter() - t0
            sub.peak_rss = peak_resident_bytes()  # a high-water mark: the stage that raises it set it
            report.stages.append(sub)
            if stage.name == "model":
                store.set_meta(f"{model_meta_prefix(self.model_id)}config", json.dumps(self.cfg.as_dict()))
        report.seconds = time.perf_counter() - started
        return report


def layer_list(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(out)


def ingest(store: Store, cfg: IngestConfig, reporter: Reporter | None = None) -> IngestReport:
    """Ingest one model into ``store`` with ``cfg``; see the module docstring for the guarantees."""
    return Pipeline(cfg, reporter).prepare(store.url).run(store)


__all__ = ["REGISTRY", "IngestConfig", "IngestReport", "Pipeline", "Reporter", "ingest", "layer_list", "parse_layers"]
