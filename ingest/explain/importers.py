"""Importers of published explanation datasets, streaming, idempotent, batch by batch.

- ``openai``: a local copy of OpenAI's neuron-explainer dataset (the layout of
  ``openaipublic/neuron-explainer/data``):
  - ``collated-activations/{layer}/{neuron}.json``: a NeuronRecord (records as token and
    activation lists, moments, quantile boundaries) -> ``ACTIVATES_ON`` records (kinds top,
    random, quantile_<k>) on text Snippets, and Neuron statistics;
  - ``explanations/{layer}/{neuron}.jsonl``: NeuronSimulationResults -> Explanations (explainer
    ``openai-neuron-explainer``, method ``top-activations``) with their simulation scores
    (``ev_correlation_score``);
  - ``related-tokens/weight-based/{layer}/{neuron}.json`` -> PROMOTES / SUPPRESSES / READS
    (via ``in``) to the KB's Tokens with the same text, when the model's tokenizer is stored;
    ``related-tokens/activation-based/...`` -> a data-derived Explanation (method
    ``activation-tokens``) listing the tokens with the highest mean activation.
- ``neuronpedia``: Neuronpedia export batches, ``features/``, ``activations/`` and
  ``explanations/`` as ``batch-N.jsonl[.gz]``, under one source directory (``<model>/<source>``)
  or a model directory holding several. Features give Neuron statistics and promoted/suppressed
  tokens, activations give top records, explanations give Explanations (explainer: the export's
  ``explanationModelName``, method: its ``typeName``). Neuronpedia's exports carry no scores.

A batch is one file: it is parsed and checked whole before any of it is written, so a
malformed or truncated file imports nothing and is reported with its path and line. With
``on_error='stop'`` the import stops there (batches before it stay imported); with ``'skip'``
it goes on and reports every bad file at the end. Model and Neuron nodes are created when
absent; writing the same files again changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kb.errors import NkbError
from kb.ids import ExplanationId, NeuronId, ScoreId, neuron_id
from kb.records import encode_activations
from kb.stores.base import Store

FORMATS = ("openai", "neuronpedia")
OPENAI_EXPLAINER = "openai-neuron-explainer"
SNIPPET_TOKENIZER = "text"  # imported snippets carry token texts, not ids: their ids hash the texts


class BadBatch(Exception):
    def __init__(self, path: Path, line: int | None, reason: str):
        super().__init__(f"{path}{f':{line}' if line else ''}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass
class ImportReport:
    format: str
    model: str
    files: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unmatched_tokens: int = 0

    def add(self, label: str, n: int) -> None:
        if n:
            self.rows[label] = self.rows.get(label, 0) + n


class _Frames:
    """Rows of one batch, by label / relationship type, written together once the batch is valid."""

    def __init__(self) -> None:
        self.nodes: dict[str, list[dict]] = {}
        self.rels: dict[str, list[dict]] = {}
        self.records: set[tuple[str, str, str]] = set()

    def node(self, label: str, row: dict) -> None:
        self.nodes.setdefault(label, []).append(row)

    def rel(self, type_: str, row: dict) -> None:
        self.rels.setdefault(type_, []).append(row)

    def write(self, store: Store, report: ImportReport) -> None:
        # Nodes before relationships: a relationship needs both ends stored.
        for label in ("Model", "Neuron", "Snippet", "Explanation", "Score"):
            if self.nodes.get(label):
                report.add(label, store.upsert_nodes(label, pd.DataFrame(self.nodes[label])))
        for type_, rows in self.rels.items():
            if rows:
                report.add(type_, store.upsert_rels(type_, pd.DataFrame(rows)))


def _snippet(tokens: list[str], corpus: str) -> dict:
    digest = hashlib.blake2b(json.dumps(tokens, ensure_ascii=False).encode(), digest_size=8).hexdigest()
    return {"id": f"{SNIPPET_TOKENIZER}/{digest}", "tokenizer": SNIPPET_TOKENIZER, "corpus": corpus,
            "token_ids": [], "tokens": tokens, "text": "".join(tokens)}


def _record(frames: _Frames, nid: str, tokens: Any, acts: Any, kind: str, rank: int, corpus: str, where: str) -> float:
    if not isinstance(tokens, list) or not isinstance(acts, list) or len(tokens) != len(acts) or not tokens:
        raise ValueError(f"{where}: tokens and activations must be non-empty lists of equal length")
    if not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{where}: tokens must be strings")
    values = np.asarray(acts, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: activations must be finite numbers")
    snip = _snippet(tokens, corpus)
    key = (nid, snip["id"], kind)
    if key in frames.records:
        # One record per neuron, snippet and kind (the ACTIVATES_ON key): the best-ranked stays.
        return float(values.max())
    frames.records.add(key)
    frames.node("Snippet", snip)
    frames.rel("ACTIVATES_ON", {"src": nid, "dst": snip["id"], "kind": kind, "rank": rank,
                                "max": float(values.max()), "position": int(values.argmax()),
                                "activations": encode_activations(values[None, :])[0]})
    return float(values.max())


def _read_json(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadBatch(path, e.lineno, f"not valid JSON ({e.msg})") from None


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """Every line of a .jsonl or .jsonl.gz file, parsed; a bad or truncated one raises BadBatch."""
    rows, line_no = [], 0
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((line_no, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BadBatch(path, line_no, f"not valid JSON ({e.msg})") from None
    except (EOFError, gzip.BadGzipFile, OSError, UnicodeDecodeError) as e:
        if isinstance(e, BadBatch):
            raise
        raise BadBatch(path, line_no + 1, f"truncated or unreadable ({type(e).__name__}: {e})") from None
    return rows


class _Importer:
    def __init__(self, store: Store, fmt: str, model: str, on_error: str, progress: Callable[[int], None] | None):
        if on_error not in ("stop", "skip"):
            raise NkbError(f"--on-error must be stop or skip, got {on_error!r}")
        self.store, self.on_error, self.progress = store, on_error, progress
        self.report = ImportReport(fmt, model)
        self.model = model
        self._token_map: dict[str, str] | None = None
        self._seen_neurons: set[str] = set()
        self._model_props: dict | None = None

    def ensure_model(self, props: dict) -> None:
        """Create the Model with ``props`` when absent, with the first good batch (so a bad first
        file writes nothing at all); an existing Model is left as it is."""
        self._model_props = props

    def _write_model(self) -> None:
        if self._model_props is None:
            return
        found = self.store.cypher("MATCH (m:Model) WHERE m.id = $id RETURN m.id AS id", {"id": self.model})
        if found.empty:
            self.report.add("Model", self.store.upsert_nodes("Model", pd.DataFrame([{"id": self.model,
                                                                                     **self._model_props}])))
        self._model_props = None

    def token_map(self) -> dict[str, str]:
        """Token text -> Token id in the model's tokenizer (empty when it is not stored)."""
        if self._token_map is None:
            df = self.store.cypher("MATCH (m:Model) WHERE m.id = $id MATCH (t:Token) WHERE t.tokenizer = m.tokenizer "
                                   "RETURN t.text AS text, t.id AS id, t.token_id AS tid ORDER BY tid", {"id": self.model})
            self._token_map = {}
            for text, tid in zip(df["text"], df["id"]):
                self._token_map.setdefault(text, tid)
        return self._token_map

    def neuron(self, frames: _Frames, layer: int, index: int, kind: str, **stats: Any) -> str:
        nid = neuron_id(self.model, layer, index)
        row = {"id": nid, "model": self.model, "layer": layer, "idx": index, "kind": kind, **stats}
        frames.node("Neuron", row)
        if nid not in self._seen_neurons:
            frames.rel("HAS_NEURON", {"src": self.model, "dst": nid})
            self._seen_neurons.add(nid)
        return nid

    def token_edges(self, frames: _Frames, rel: str, nid: str, tokens: Any, values: Any, value: str,
                    where: str, **extra: Any) -> None:
        if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
            raise ValueError(f"{where}: token and value lists must have equal length")
        mapping = self.token_map()
        for rank, (text, v) in enumerate(zip(tokens, values)):
            tid = mapping.get(text)
            if tid is None:
                self.report.unmatched_tokens += 1
                continue
            frames.rel(rel, {"src": nid, "dst": tid, value: float(v), "rank": rank, **extra})

    def batch(self, path: Path, build: Callable[[_Frames], None]) -> None:
        """Build one file's rows, then write them all; a bad file writes nothing."""
        frames = _Frames()
        seen = set(self._seen_neurons)
        try:
            build(frames)
        except BadBatch as e:
            self._bad(e, seen)
            return
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._bad(BadBatch(path, getattr(e, "line", None), _reason(e)), seen)
            return
        self._write_model()
        frames.write(self.store, self.report)
        explained = sorted({r["src"] for r in frames.rels.get("EXPLAINED_BY", [])})
        if explained:
            from ingest.explain.run import refresh_best

            refresh_best(self.store, explained)
        self.report.files += 1
        if self.progress:
            self.progress(1)

    def _bad(self, e: BadBatch, seen: set[str]) -> None:
        self._seen_neurons = seen  # the bad file's neurons were not written
        if self.on_error == "stop":
            raise NkbError(f"cannot import {e}; stopped after {self.report.files} good file(s), "
                           "nothing from this file was written",
                           "fix or remove the file and run the import again, or pass --on-error skip")
        self.report.errors.append(str(e))


def _reason(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return str(e) or type(e).__name__


def _line_error(line: int, message: str) -> ValueError:
    err = ValueError(message)
    err.line = line  # type: ignore[attr-defined]
    return err


def _numbered(directory: Path, suffix: str) -> Iterator[tuple[int, int, Path]]:
    """(layer, neuron, path) for directory/{layer}/{neuron}{suffix}, in numeric order."""
    if not directory.is_dir():
        return
    layers = sorted((int(p.name), p) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    for layer, ldir in layers:
        files = sorted((int(p.name[: -len(suffix)]), p) for p in ldir.iterdir()
                       if p.name.endswith(suffix) and p.name[: -len(suffix)].isdigit())
        for index, path in files:
            yield layer, index, path


# -- OpenAI ---------------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def import_openai(store: Store, path: Path, model: str | None = None, *, on_error: str = "stop",
                  progress: Callable[[int], None] | None = None) -> ImportReport:
    root = Path(path)
    parts = [root / "collated-activations", root / "explanations", root / "related-tokens"]
    if not any(p.is_dir() for p in parts):
        raise NkbError(f"{root} does not hold OpenAI's neuron-explainer dataset layout",
                       "expected collated-activations/, explanations/ or related-tokens/ under it")
    imp = _Importer(store, "openai", model or "gpt2-xl", on_error, progress)
    imp.ensure_model({"kind": "lm", "source": f"openai-neuron-explainer:{root.name}", "architecture": "gpt2"})
    corpus = "openai-neuron-explainer"

    for layer, index, file in _numbered(root / "collated-activations", ".json"):
        def build(frames: _Frames, layer=layer, index=index, file=file) -> None:
            rec = _read_json(file)
            if not isinstance(rec, dict):
                raise ValueError("a NeuronRecord must be a JSON object")
            nid_obj = rec.get("neuron_id") or {}
            if (nid_obj.get("layer_index"), nid_obj.get("neuron_index")) != (layer, index):
                raise ValueError(f"neuron_id {nid_obj!r} does not match the file's place {layer}/{index}")
            nid = neuron_id(imp.model, layer, index)
            tops = [_record(frames, nid, r["tokens"], r["activations"], "top", i, corpus, f"most_positive_activation_records[{i}]")
                    for i, r in enumerate(rec.get("most_positive_activation_records") or [])]
            for i, r in enumerate(rec.get("random_sample") or []):
                _record(frames, nid, r["tokens"], r["activations"], "random", i, corpus, f"random_sample[{i}]")
            for q, group in enumerate(rec.get("random_sample_by_quantile") or []):
                for i, r in enumerate(group):
                    _record(frames, nid, r["tokens"], r["activations"], f"quantile_{q}", i, corpus,
                            f"random_sample_by_quantile[{q}][{i}]")
            stats = {"max_act": max(tops) if tops else None, "mean_act": _finite(rec.get("mean")),
                     "var_act": _finite(rec.get("variance"))}
            if rec.get("quantile_boundaries") is not None:
                stats["quantile_boundaries"] = [float(x) for x in rec["quantile_boundaries"]]
            imp.neuron(frames, layer, index, "mlp", **stats)
        imp.batch(file, build)

    for layer, index, file in _numbered(root / "explanations", ".jsonl"):
        def build(frames: _Frames, layer=layer, index=index, file=file) -> None:
            rows = _read_jsonl(file)
            nid = imp.neuron(frames, layer, index, "mlp")
            k = 0
            for line, row in rows:
                if not isinstance(row, dict) or not isinstance(row.get("scored_explanations"), list):
                    raise _line_error(line, "expected NeuronSimulationResults with a scored_explanations list")
                for item in row["scored_explanations"]:
                    text = item.get("explanation") if isinstance(item, dict) else None
                    if not isinstance(text, str) or not text.strip():
                        raise _line_error(line, "a scored explanation without explanation text")
                    k += 1
                    method = "top-activations" if k == 1 else f"top-activations#{k}"
                    eid = str(ExplanationId(NeuronId.parse(nid), OPENAI_EXPLAINER, method))
                    frames.node("Explanation", {"id": eid, "neuron": nid, "model": imp.model, "text": text.strip(),
                                                "explainer": OPENAI_EXPLAINER, "method": method, "created_at": None})
                    frames.rel("EXPLAINED_BY", {"src": nid, "dst": eid})
                    sim = item.get("scored_simulation") or {}
                    value = _finite(sim.get("ev_correlation_score"))
                    if value is not None:
                        sid = str(ScoreId(ExplanationId.parse(eid), "simulation", OPENAI_EXPLAINER, "all"))
                        n = len(sim.get("scored_sequence_simulations") or [])
                        frames.node("Score", {"id": sid, "explanation": eid, "model": imp.model, "method": "simulation",
                                              "value": value, "scorer": OPENAI_EXPLAINER, "split": "all",
                                              "records": f"openai:{n} sequences", "n_records": n})
                        frames.rel("HAS_SCORE", {"src": eid, "dst": sid})
        imp.batch(file, build)

    for layer, index, file in _numbered(root / "related-tokens" / "weight-based", ".json"):
        def build(frames: _Frames, layer=layer, index=index, file=file) -> None:
            d = _read_json(file)
            nid = imp.neuron(frames, layer, index, "mlp")
            for key, rel, extra in (("output_positive", "PROMOTES", {}), ("output_negative", "SUPPRESSES", {}),
                                    ("input_positive", "READS", {"via": "in"})):
                part = d[key]
                imp.token_edges(frames, rel, nid, part["tokens"], part["strengths"],
                                "weight" if rel == "READS" else "logit", key, **extra)
        imp.batch(file, build)

    for layer, index, file in _numbered(root / "related-tokens" / "activation-based", ".json"):
        def build(frames: _Frames, layer=layer, index=index, file=file) -> None:
            d = _read_json(file)
            tokens, acts = d["tokens"], d["average_activations"]
            if not isinstance(tokens, list) or not isinstance(acts, list) or len(tokens) != len(acts):
                raise ValueError("tokens and average_activations must be lists of equal length")
            nid = imp.neuron(frames, layer, index, "mlp")
            if tokens:
                eid = str(ExplanationId(NeuronId.parse(nid), "data", "activation-tokens"))
                text = "highest mean activation on " + ", ".join(
                    f"{json.dumps(t, ensure_ascii=False)} ({float(a):.3g})" for t, a in list(zip(tokens, acts))[:10])
                frames.node("Explanation", {"id": eid, "neuron": nid, "model": imp.model, "text": text,
                                            "explainer": "data", "method": "activation-tokens", "created_at": None})
                frames.rel("EXPLAINED_BY", {"src": nid, "dst": eid})
        imp.batch(file, build)
    return imp.report


# -- Neuronpedia ----------------------------------------------------------------------------

_BATCH = re.compile(r"^batch-(\d+)\.jsonl(\.gz)?$")
_LAYER = re.compile(r"^(\d+)(?:-(.+))?$")


def _batches(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _BATCH.match(p.name))]
    return [p for _, p in sorted(found)]


def _source_dirs(root: Path) -> list[Path]:
    kinds = ("features", "activations", "explanations")
    if any((root / k).is_dir() for k in kinds):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and any((p / k).is_dir() for k in kinds)) if root.is_dir() else []


def _np_place(row: dict, line: int) -> tuple[str, int, str, int]:
    """(Neuronpedia model id, layer number, source set, index) of one export row."""
    model, layer, index = row.get("modelId"), row.get("layer"), row.get("index")
    m = _LAYER.match(str(layer)) if layer is not None else None
    if not isinstance(model, str) or m is None:
        raise _line_error(line, f"expected modelId and a layer like '6-res-jb', got {model!r} and {layer!r}")
    try:
        idx = int(index)
    except (TypeError, ValueError):
        raise _line_error(line, f"index must be an integer, got {index!r}") from None
    if idx < 0:
        raise _line_error(line, f"index must be >= 0, got {idx}")
    return model, int(m.group(1)), m.group(2) or "", idx


def import_neuronpedia(store: Store, path: Path, model: str | None = None, *, on_error: str = "stop",
                       progress: Callable[[int], None] | None = None) -> ImportReport:
    root = Path(path)
    sources = _source_dirs(root)
    if not sources:
        raise NkbError(f"{root} holds no Neuronpedia export",
                       "expected features/, activations/ or explanations/ with batch-N.jsonl.gz files")
    imp: _Importer | None = None
    report: ImportReport | None = None
    for source in sources:
        for kind in ("features", "activations", "explanations"):
            for file in _batches(source / kind):
                rows = None
                try:
                    rows = _read_jsonl(file)
                except BadBatch as e:
                    if imp is None:
                        imp = _Importer(store, "neuronpedia", model or "neuronpedia", on_error, progress)
                    imp._bad(e, set(imp._seen_neurons))
                    continue
                if imp is None:
                    first = next((r for _, r in rows if isinstance(r, dict)), {})
                    np_model = first.get("modelId") if isinstance(first.get("modelId"), str) else "neuronpedia"
                    m = _LAYER.match(str(first.get("layer", "")))
                    sset = m.group(2) if m and m.group(2) else ""
                    imp = _Importer(store, "neuronpedia", model or (f"{np_model}/{sset}" if sset else np_model),
                                    on_error, progress)
                    imp.ensure_model({"kind": "sae" if sset else "lm", "source": f"neuronpedia:{np_model}/{sset}",
                                      "architecture": "sae" if sset else None, "base_model": np_model if sset else None})
                imp.batch(file, lambda frames, kind=kind, rows=rows: _np_build(imp, frames, kind, rows))
    assert imp is not None
    report = imp.report
    return report


def _np_build(imp: _Importer, frames: _Frames, kind: str, rows: list[tuple[int, Any]]) -> None:
    ranks: dict[str, int] = {}
    methods: dict[tuple[str, str, str], int] = {}
    for line, row in rows:
        if not isinstance(row, dict):
            raise _line_error(line, "each line must be a JSON object")
        _, layer, sset, index = _np_place(row, line)
        nkind = "sae" if sset else "mlp"
        try:
            if kind == "features":
                stats = {"max_act": _finite(row.get("maxActApprox")), "density": _finite(row.get("frac_nonzero"))}
                nid = imp.neuron(frames, layer, index, nkind, **{k: v for k, v in stats.items() if v is not None})
                imp.token_edges(frames, "PROMOTES", nid, row.get("pos_str") or [], row.get("pos_values") or [],
                                "logit", "pos_str")
                imp.token_edges(frames, "SUPPRESSES", nid, row.get("neg_str") or [], row.get("neg_values") or [],
                                "logit", "neg_str")
            elif kind == "activations":
                nid = imp.neuron(frames, layer, index, nkind)
                rank = ranks.get(nid, 0)
                ranks[nid] = rank + 1
                _record(frames, nid, row["tokens"], row["values"], "top", rank, "neuronpedia", "activation")
            else:
                text = row.get("description")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("an explanation without description")
                nid = imp.neuron(frames, layer, index, nkind)
                explainer = str(row.get("explanationModelName") or "neuronpedia")
                method = str(row.get("typeName") or "neuronpedia")
                k = methods.get((nid, explainer, method), 0) + 1
                methods[(nid, explainer, method)] = k
                eid = str(ExplanationId(NeuronId.parse(nid), explainer, method if k == 1 else f"{method}#{k}"))
                frames.node("Explanation", {"id": eid, "neuron": nid, "model": imp.model, "text": text.strip(),
                                            "explainer": explainer, "method": method if k == 1 else f"{method}#{k}",
                                            "created_at": row.get("createdAt")})
                frames.rel("EXPLAINED_BY", {"src": nid, "dst": eid})
        except (ValueError, KeyError, TypeError) as e:
            if getattr(e, "line", None):
                raise
            raise _line_error(line, _reason(e)) from None


def check_source(fmt: str, path: str | Path) -> Path:
    """Refuse an unknown format or a path that holds nothing of it (before any store is opened)."""
    if fmt not in FORMATS:
        raise NkbError(f"unknown import format {fmt!r}", f"formats: {', '.join(FORMATS)}")
    p = Path(path).expanduser()
    if not p.exists():
        raise NkbError(f"no such file or directory: {p}")
    if fmt == "openai" and not any((p / d).is_dir() for d in ("collated-activations", "explanations", "related-tokens")):
        raise NkbError(f"{p} does not hold OpenAI's neuron-explainer dataset layout",
                       "expected collated-activations/, explanations/ or related-tokens/ under it")
    if fmt == "neuronpedia" and not _source_dirs(p):
        raise NkbError(f"{p} holds no Neuronpedia export",
                       "expected features/, activations/ or explanations/ with batch-N.jsonl.gz files")
    return p


def import_file(store: Store, fmt: str, path: str | Path, model: str | None = None, *, on_error: str = "stop",
                progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import ``path`` in ``fmt`` (one of FORMATS); see the module docstring."""
    p = check_source(fmt, path)
    fn = import_openai if fmt == "openai" else import_neuronpedia
    return fn(store, p, model, on_error=on_error, progress=progress)
