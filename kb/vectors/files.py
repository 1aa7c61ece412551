"""Per-neuron vectors and their FAISS indexes, as files beside the graph.

Each model has a folder ``<store.artifact_dir()>/<model>/vectors`` holding, per vector kind:

- ``<kind>.npy``: float32 rows, each L2-normalised (so inner product = cosine similarity);
- ``<kind>.rows.npz``: what each row is: ``key`` (the neuron id, or the explanation id for
  explanation rows), ``neuron`` and ``layer``;
- ``<kind>.json``: the set's identity: model fingerprint, dimension, row count, and a
  ``generation`` that changes whenever stored rows change or go (appending keeps it);
- ``<kind>.faiss`` and ``<kind>.faiss.json``: the FAISS index, with the generation and row
  count it was built from.

The store records each saved set under the meta key ``vectors/<model>/<kind>`` (generation and
row count). Loading compares the three: an index behind its vectors is brought up to date (the
new rows added, or rebuilt when rows changed); vectors that disagree with the store were not
written with it, and are refused with the command that recomputes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kb.errors import NkbError

#: Vector kinds, each a similarity method. The stage that builds every one is ``embed``.
KINDS = ("weights_out", "weights_in", "explanation", "activations")
KIND_HELP = {
    "weights_out": "output direction: the neuron's down-projection column (what it writes)",
    "weights_in": "input direction: the gate row for gated MLPs, else the input row (what it reads), norm gain folded in",
    "explanation": "sentence embedding of its explanations",
    "activations": "its activations on a shared sample of corpus tokens, centred (cosine = correlation)",
}
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
#: Above this many rows ``auto`` builds an approximate index (IVF) instead of an exact one.
EXACT_LIMIT = 100_000


class VectorsMissing(NkbError):
    """A method whose vectors were never built."""


class VectorsMismatch(NkbError):
    """Vector files that do not belong to the knowledge base they sit beside."""


def vectors_dir(store, model: str) -> Path:
    return store.artifact_dir() / model.replace("/", "--") / "vectors"


def meta_key(model: str, kind: str) -> str:
    return f"vectors/{model}/{kind}"


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise NkbError(f"unknown method {kind!r}", f"methods: {', '.join(KINDS)}")


@dataclass
class VectorSet:
    """One model's vectors of one kind: ``vectors[i]`` belongs to ``rows.iloc[i]``."""

    model: str
    kind: str
    vectors: np.ndarray  # [n, dim] float32, rows L2-normalised
    rows: pd.DataFrame  # key, neuron, layer
    meta: dict[str, Any]

    @property
    def generation(self) -> str:
        return self.meta["generation"]

    @functools.cached_property
    def layers(self) -> np.ndarray:
        """Each row's layer, as a numpy array (kept: a loaded set is shared and never changed)."""
        return self.rows["layer"].to_numpy(dtype=np.int64)

    @functools.cached_property
    def neurons(self) -> np.ndarray:
        """Each row's neuron id, as a numpy array."""
        return self.rows["neuron"].to_numpy(dtype=object)

    def rows_of(self, neuron: str) -> np.ndarray:
        """The rows of one neuron (several for explanations), by a lookup built once."""
        return self._rows_by_neuron.get(neuron, np.zeros(0, dtype=np.int64))

    @functools.cached_property
    def _rows_by_neuron(self) -> dict[str, np.ndarray]:
        return self.rows.groupby("neuron", sort=False).indices

    def __len__(self) -> int:
        return len(self.rows)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def _paths(folder: Path, kind: str) -> dict[str, Path]:
    return {"vectors": folder / f"{kind}.npy", "rows": folder / f"{kind}.rows.npz", "meta": folder / f"{kind}.json",
            "index": folder / f"{kind}.faiss", "index_meta": folder / f"{kind}.faiss.json"}


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class _FileCache:
    """Objects read from files, kept in this process while the files are unchanged (same inode,
    modification time and size: every write here replaces a file atomically), so repeated
    searches in one process read and parse nothing. Least recently used entries go first past
    ``budget`` bytes."""

    def __init__(self, budget: int):
        self.budget, self.entries = budget, {}

    @staticmethod
    def signature(paths) -> tuple | None:
        try:
            return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in (Path(p).stat() for p in paths))
        except FileNotFoundError:
            return None

    def get(self, key, paths, extra=None):
        hit = self.entries.pop(key, None)
        if hit is None or hit[0] != (self.signature(paths), extra):
            return None
        self.entries[key] = hit  # most recently used last
        return hit[1]

    def put(self, key, paths, value, nbytes: int, extra=None) -> None:
        sig = self.signature(paths)
        if sig is None or nbytes > self.budget:
            return
        self.entries[key] = ((sig, extra), value, nbytes)
        while sum(e[2] for e in self.entries.values()) > self.budget:
            self.entries.pop(next(iter(self.entries)))

    def clear(self) -> None:
        self.entries.clear()


_cache = _FileCache(budget=1 << 30)


def release_vector_cache() -> None:
    """Forget every vector set and index read so far (a long job frees their memory)."""
    _cache.clear()


def _hint_embed(model: str, kind: str) -> str:
    if kind == "explanation":
        return (f"write explanations first (the stage that explains neurons), then embed them: nkb index {model} --update"
                f" (or nkb ingest {model} --stages embed)")
    extra = " --embed-activation-tokens 1024" if kind == "activations" else ""
    return f"run: nkb ingest {model} --stages embed{extra}"


def load(store, model: str, kind: str, *, check: bool = True) -> VectorSet:
    """The saved vectors of ``kind``; refuses missing vectors, and (``check``) ones the store did not record."""
    check_kind(kind)
    p = _paths(vectors_dir(store, model), kind)
    recorded = store.get_meta(meta_key(model, kind))
    if not p["meta"].is_file():
        if recorded is not None:
            raise VectorsMismatch(f"the store records {kind} vectors of {model}, but their files are missing from "
                                  f"{p['meta'].parent}", f"drop the record and recompute: nkb index {model} --drop, then "
                                  + _hint_embed(model, kind))
        raise VectorsMissing(f"no {kind} vectors of {model} were built", _hint_embed(model, kind))
    meta = json.loads(p["meta"].read_text())
    if check:
        want = json.loads(recorded) if recorded else None
        if want is None or want["generation"] != meta["generation"] or want["n"] != meta["n"]:
            found = f"{meta['n']} rows of generation {meta['generation'][:8]}"
            expected = f"{want['n']} rows of generation {want['generation'][:8]}" if want else "none"
            raise VectorsMismatch(f"the {kind} vectors in {p['meta'].parent} do not match the knowledge base "
                                  f"(files: {found}; the store records {expected})",
                                  f"recompute them: nkb index {model} --drop, then {_hint_embed(model, kind)}")
    files = (p["vectors"], p["rows"], p["meta"])
    cached = _cache.get(("vectors", str(p["vectors"])), files)
    if cached is not None:
        return cached
    vectors = np.load(p["vectors"])
    vectors.flags.writeable = False  # shared by every caller in this process
    with np.load(p["rows"], allow_pickle=False) as z:
        rows = pd.DataFrame({"key": z["key"].astype(str), "neuron": z["neuron"].astype(str), "layer": z["layer"]})
    if vectors.shape != (meta["n"], meta["dim"]) or len(rows) != meta["n"]:
        raise VectorsMismatch(f"the {kind} vectors in {p['meta'].parent} are damaged (shape {vectors.shape}, "
                              f"{len(rows)} rows, expected {meta['n']} x {meta['dim']})",
                              f"recompute them: nkb index {model} --drop, then {_hint_embed(model, kind)}")
    vset = VectorSet(model, kind, vectors, rows, meta)
    _cache.put(("vectors", str(p["vectors"])), files, vset, vectors.nbytes + 200 * len(rows))
    return vset


def _content_id(rows: pd.DataFrame, vectors: np.ndarray) -> str:
    """A new generation's id: a hash of its keys and vectors, so equal builds (a re-run, another
    batch size) record the same generation and different contents never share one."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\x00".join(rows["key"].astype(str)).encode())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return h.hexdigest()


def save(store, model: str, kind: str, rows: pd.DataFrame, vectors: np.ndarray, *, fingerprint: str | None = None,
         info: dict[str, Any] | None = None) -> VectorSet:
    """Add or replace rows (by ``key``) of a model's vectors of ``kind`` and record them in the store.

    Rows whose key is new are appended, keeping the generation (an index then only adds them);
    replacing or dropping a row starts a new generation (an index is rebuilt). ``info`` (the
    embedding model, the corpus sample) must equal what the saved set has, else it starts over.
    """
    check_kind(kind)
    vectors = normalise(vectors)
    rows = rows[["key", "neuron", "layer"]].reset_index(drop=True)
    if len(rows) != len(vectors):
        raise ValueError(f"{len(rows)} rows but {len(vectors)} vectors")
    folder = vectors_dir(store, model)
    p = _paths(folder, kind)
    info = info or {}
    old = None
    if p["meta"].is_file():
        try:
            old = load(store, model, kind)
        except VectorsMismatch:
            old = None  # not ours: start over
    if old is not None and (old.meta.get("info") != info or old.meta.get("fingerprint") != fingerprint
                            or old.vectors.shape[1] != vectors.shape[1]):
        old = None
    if old is None:
        merged_rows, merged, generation = rows, vectors, _content_id(rows, vectors)
    else:
        replaced = old.rows["key"].isin(set(rows["key"]))
        if replaced.any():
            keep = ~replaced.to_numpy()
            merged_rows = pd.concat([old.rows[keep], rows], ignore_index=True)
            merged = np.concatenate([old.vectors[keep], vectors])
            generation = _content_id(merged_rows, merged)
        else:
            merged_rows = pd.concat([old.rows, rows], ignore_index=True)
            merged = np.concatenate([old.vectors, vectors])
            generation = old.generation
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "kind": kind, "fingerprint": fingerprint, "dim": int(merged.shape[1]),
            "n": int(len(merged_rows)), "generation": generation, "info": info}
    _atomic_write(p["vectors"], lambda t: np.save(open(t, "wb"), merged))
    _atomic_write(p["rows"], lambda t: np.savez(open(t, "wb"), key=merged_rows["key"].to_numpy(dtype=str),
                                                neuron=merged_rows["neuron"].to_numpy(dtype=str),
                                                layer=merged_rows["layer"].to_numpy(dtype=np.int64)))
    _atomic_write(p["meta"], lambda t: t.write_text(json.dumps(meta)))
    store.set_meta(meta_key(model, kind), json.dumps({"generation": generation, "n": meta["n"]}))
    return VectorSet(model, kind, merged, merged_rows, meta)


def drop(store, model: str) -> list[str]:
    """Delete a model's vector files and their records (the embed stage's done markers too)."""
    folder = vectors_dir(store, model)
    dropped = [k for k in KINDS if store.get_meta(meta_key(model, k)) is not None or _paths(folder, k)["meta"].is_file()]
    store.cypher("MATCH (m:NkbMeta) WHERE m.key STARTS WITH $a OR m.key STARTS WITH $b DELETE m",
                 {"a": f"vectors/{model}/", "b": f"ingest/{model}/embed/"}, write=True)
    if folder.is_dir():
        shutil.rmtree(folder)
    return dropped


# -- FAISS indexes ---------------------------------------------------------------------------

def choose_index(n: int, index_type: str = "auto") -> str:
    if index_type not in INDEX_TYPES:
        raise NkbError(f"unknown index type {index_type!r}", f"index types: {', '.join(INDEX_TYPES)}")
    if index_type != "auto":
        return index_type
    return "flat" if n <= EXACT_LIMIT else "ivf"


def build_index(vectors: np.ndarray, index_type: str = "auto", *, seed: int = 0):
    """An inner-product FAISS index over ``vectors``: exact (flat) up to EXACT_LIMIT rows, IVF beyond.

    IVF: ``sqrt(n)`` lists trained on a sample of up to 64 rows per list, searching one list
    in 16 (at least 16 lists); HNSW: 32 links per node. Both reach recall >= 0.95 at k=10 on
    clustered data (tests/test_vectors.py); exact search is the reference.
    """
    import faiss

    n, dim = vectors.shape
    chosen = choose_index(n, index_type)
    if chosen == "flat" or n == 0:
        index = faiss.IndexFlatIP(dim)
    elif chosen == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        nlist = int(min(max(16, math.sqrt(n)), max(1, n // 39)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 20
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, 64 * nlist, replace=False)] if n > 64 * nlist else vectors
        index.train(np.ascontiguousarray(sample))
        index.nprobe = max(16, nlist // 16)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def index_type_of(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


def search_params(index, ids: np.ndarray | None):
    """FAISS search parameters restricting results to row ``ids`` (None: every row)."""
    import faiss

    if ids is None:
        return None
    # A bitmap over the index's rows: one bit test per candidate (IDSelectorBatch hashes each).
    bits = np.zeros(index.ntotal, dtype=bool)
    bits[ids] = True
    packed = np.packbits(bits, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    sel.referenced = packed  # the selector keeps a raw pointer: keep the bytes alive with it
    kind = index_type_of(index)
    if kind == "ivf":
        return faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


@dataclass
class LoadedIndex:
    vset: VectorSet
    index: Any
    action: str  # loaded | added <n> | built | rebuilt

    @property
    def index_type(self) -> str:
        return index_type_of(self.index)


def open_index(store, model: str, kind: str, *, index_type: str | None = None, rebuild: bool = False,
               save_file: bool = True) -> LoadedIndex:
    """The FAISS index of a model's vectors, brought up to date with them.

    An index file built from the same generation is loaded and, when rows were appended
    since, extended with them; one from another generation (rows replaced), of another type
    than ``index_type`` asks, or ``rebuild=True`` is rebuilt. The result is written back
    beside the vectors when ``save_file`` (and the index changed).
    """
    import faiss

    vset = load(store, model, kind)
    p = _paths(vectors_dir(store, model), kind)
    files = (p["index"], p["index_meta"])
    want = (vset.generation, len(vset), index_type or "auto")
    if not rebuild and (cached := _cache.get(("index", str(p["index"])), files, want)) is not None:
        return LoadedIndex(vset, cached, "loaded")
    index, action = None, "built"
    if p["index"].is_file() and p["index_meta"].is_file() and not rebuild:
        imeta = json.loads(p["index_meta"].read_text())
        if imeta.get("generation") == vset.generation and imeta.get("n", 0) <= len(vset):
            index = faiss.read_index(str(p["index"]))
            if index.ntotal != imeta["n"] or index.d != vset.vectors.shape[1]:
                index, action = None, "rebuilt"
            elif index_type not in (None, "auto") and index_type_of(index) != index_type:
                index, action = None, "rebuilt"
            elif imeta["n"] < len(vset):
                index.add(vset.vectors[imeta["n"]:])
                action = f"added {len(vset) - imeta['n']}"
            else:
                action = "loaded"
        else:
            action = "rebuilt"
    elif rebuild:
        action = "rebuilt"
    if index is None:
        previous = json.loads(p["index_meta"].read_text()).get("requested") if p["index_meta"].is_file() else None
        requested = index_type or previous or "auto"  # an override sticks until another is given
        index = build_index(vset.vectors, requested)
    else:
        requested = json.loads(p["index_meta"].read_text()).get("requested", "auto")
    if save_file and action != "loaded":
        _atomic_write(p["index"], lambda t: faiss.write_index(index, str(t)))
        _atomic_write(p["index_meta"], lambda t: t.write_text(json.dumps(
            {"generation": vset.generation, "n": int(index.ntotal), "type": index_type_of(index),
             "requested": requested})))
    if save_file or action == "loaded":  # cached only as the file on disk holds it
        _cache.put(("index", str(p["index"])), files, index, 4 * index.d * index.ntotal, want)
    return LoadedIndex(vset, index, action)


def status(store, model: str) -> pd.DataFrame:
    """One row per vector kind: rows, dimension, index type, and whether files and store agree."""
    out = []
    folder = vectors_dir(store, model)
    for kind in KINDS:
        p = _paths(folder, kind)
        row = {"model": model, "method": kind, "rows": None, "dim": None, "index": None, "state": "not built"}
        try:
            vset = load(store, model, kind)
            row.update(rows=len(vset), dim=vset.vectors.shape[1], state="ok")
            if p["index_meta"].is_file():
                imeta = json.loads(p["index_meta"].read_text())
                row["index"] = imeta["type"]
                if imeta["generation"] != vset.generation or imeta["n"] != len(vset):
                    row["state"] = "index behind its vectors: brought up to date on next use"
            else:
                row["index"] = "none yet"
        except VectorsMissing:
            pass
        except VectorsMismatch as e:
            row["state"] = e.message
        out.append(row)
    return pd.DataFrame(out)
