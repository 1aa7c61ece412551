"""Vectors of neurons and what is built on them: search by meaning, similar neurons, token search.

- ``files``: per-model vector sets and their FAISS indexes, beside the graph;
- ``text``: sentence embeddings (the bundled all-MiniLM-L6-v2 by default);
- this module: the questions, each answered as a DataFrame.

Everything here reads the store; only ``embed_explanations`` writes (vector files and their
record in the store).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from kb import queries
from kb.errors import NkbError
from kb.ids import NeuronId
from kb.vectors.files import (EXACT_LIMIT, INDEX_TYPES, KIND_HELP, KINDS, LoadedIndex, VectorSet, VectorsMismatch,
                              VectorsMissing, build_index, choose_index, drop, load, normalise, open_index, save,
                              search_params, status)
from kb.vectors.text import DEFAULT_MODEL, embed_texts

__all__ = ["EXACT_LIMIT", "INDEX_TYPES", "KINDS", "KIND_HELP", "LoadedIndex", "VectorSet", "VectorsMismatch",
           "VectorsMissing", "build_index", "choose_index", "drop", "embed_explanations", "embed_texts", "load",
           "normalise", "open_index", "parse_layer_filter", "save", "search", "search_params", "similar", "status",
           "token_neurons"]

_RELATIONS = {"promotes": "promotes_token", "suppresses": "suppresses_token", "reads": "reads_token"}


def check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise NkbError(f"{name} must be a positive integer, got {k!r}", f"pass --{name} 1 or more")


def _models(store, model: str | None) -> list[str]:
    known = queries.model_ids(store)
    if model is None:
        return known
    if model not in known:
        raise NkbError(f"no model {model!r} in the store", f"models in this store: {', '.join(known) or 'none'}")
    return [model]


def _neuron_info(store, ids: list[str]) -> pd.DataFrame:
    if not ids:
        return pd.DataFrame(columns=["neuron", "model", "layer", "idx", "explanation"])
    # One primary-key lookup per id (UNWIND): `n.id IN $ids` scans every neuron (measured on the
    # demo KB: 3.4 ms against 21.5 ms for 10 ids).
    return store.cypher("UNWIND $ids AS i MATCH (n:Neuron {id: i}) RETURN n.id AS neuron, n.model AS model, "
                        "n.layer AS layer, n.idx AS idx, n.explanation AS explanation", {"ids": ids})


# -- explanations -----------------------------------------------------------------------------

def embed_explanations(store, model: str, text_model: str = DEFAULT_MODEL, *, summaries: bool = False,
                       batch_size: int = 128) -> VectorSet | None:
    """Embed the model's explanations not embedded yet (or whose text changed); None when it has none.

    The describe stage's data-derived summaries (explainer ``data``) are embedded only with
    ``summaries``: one per neuron, a hundred-odd word pieces each, they cost about 30 minutes
    for SmolLM2's 46,080 neurons on 2 CPU cores, and their lists of subword tokens say little a
    sentence embedding can use. Explanations written by an LLM or imported are always embedded.

    Rows are keyed by explanation id and a digest of the text, so a rewritten explanation is
    embedded again and its old vector dropped; unchanged ones are reused, not recomputed.
    """
    df = store.cypher("MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) WHERE n.model = $m "
                      "AND ($summaries OR e.explainer IS NULL OR e.explainer <> 'data') "
                      "RETURN e.id AS id, n.id AS neuron, n.layer AS layer, e.text AS text",
                      {"m": model, "summaries": summaries})
    df = df[df["text"].notna() & (df["text"].astype(str).str.strip() != "")]
    if df.empty:
        return None
    keys = df["id"] + "#" + [hashlib.blake2b(t.encode(), digest_size=6).hexdigest() for t in df["text"]]
    rows = pd.DataFrame({"key": keys, "neuron": df["neuron"], "layer": df["layer"].astype(np.int64)}).reset_index(drop=True)
    info = {"text_model": text_model, "summaries": summaries}
    try:
        old = load(store, model, "explanation")
        if old.meta.get("info") != info:
            old = None
    except (VectorsMissing, VectorsMismatch):
        old = None
    have = dict(zip(old.rows["key"], range(len(old)))) if old is not None else {}
    wanted = set(rows["key"])
    if old is not None and set(have) <= wanted:
        new = rows[~rows["key"].isin(have)]
        if new.empty:
            return old
        return save(store, model, "explanation", new, embed_texts(df["text"].to_numpy()[new.index].tolist(), text_model,
                                                                  batch_size=batch_size), info=info)
    # Some stored rows are gone or changed: write the set afresh, reusing what is still wanted.
    vectors = np.zeros((len(rows), 0), dtype=np.float32)
    todo = [i for i, k in enumerate(rows["key"]) if k not in have]
    fresh = embed_texts(df["text"].to_numpy()[todo].tolist(), text_model, batch_size=batch_size) if todo else None
    dim = fresh.shape[1] if fresh is not None else old.vectors.shape[1]
    vectors = np.zeros((len(rows), dim), dtype=np.float32)
    if todo:
        vectors[todo] = fresh
    reused = [i for i, k in enumerate(rows["key"]) if k in have]
    if reused:
        vectors[reused] = old.vectors[[have[k] for k in rows["key"].to_numpy()[reused]]]
    drop_set(store, model, "explanation")
    return save(store, model, "explanation", rows, vectors, info=info)


def drop_set(store, model: str, kind: str) -> None:
    from kb.vectors.files import _paths, meta_key, vectors_dir

    for path in _paths(vectors_dir(store, model), kind).values():
        path.unlink(missing_ok=True)
    store.cypher("MATCH (m:NkbMeta {key: $k}) DELETE m", {"k": meta_key(model, kind)}, write=True)


# -- search -----------------------------------------------------------------------------------

def parse_layer_filter(text: str | None, own_layer: int | None = None) -> tuple[str, set[int] | None]:
    """'other' | 'all' | 'A-B' | 'A,B,...' -> (mode, layers); mode 'other' excludes ``own_layer``."""
    if text is None or text == "all":
        return "all", None
    if text == "other":
        return "other", None
    if not re.fullmatch(r"\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*", text):
        raise NkbError(f"cannot read layers {text!r}", "use other, all, a range A-B or a list like 1,3,5-7")
    layers: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
        if lo_i > hi_i:
            raise NkbError(f"cannot read layers {text!r}: {lo_i} > {hi_i}", "write ranges low-high, e.g. 3-7")
        layers.update(range(lo_i, hi_i + 1))
    return "set", layers


def _selected(vset: VectorSet, layers: set[int] | None, exclude_layer: int | None = None,
              exclude_neuron: str | None = None) -> np.ndarray | None:
    if layers is None and exclude_layer is None and exclude_neuron is None:
        return None
    keep = np.ones(len(vset), dtype=bool)
    if layers is not None:
        keep &= np.isin(vset.layers, list(layers))
    if exclude_layer is not None:
        keep &= vset.layers != exclude_layer
    if exclude_neuron is not None:
        keep[vset.rows_of(exclude_neuron)] = False
    return np.flatnonzero(keep)


def _knn(loaded: LoadedIndex, query: np.ndarray, k: int, ids: np.ndarray | None, per_neuron: bool) -> pd.DataFrame:
    """Top rows for one query, at most one per neuron when ``per_neuron`` (explanation rows)."""
    if ids is not None and len(ids) == 0:
        return pd.DataFrame(columns=["neuron", "score"])
    params = search_params(loaded.index, ids)
    fetch = k
    while True:
        fetch = min(fetch, loaded.index.ntotal)
        scores, rows = loaded.index.search(query[None, :].astype(np.float32), fetch, params=params)
        rows, scores = rows[0], scores[0]
        ok = rows >= 0
        df = pd.DataFrame({"neuron": loaded.vset.neurons[rows[ok]], "score": scores[ok]})
        if per_neuron:
            df = df.drop_duplicates("neuron")
        # Several explanations of one neuron can crowd the top: ask for more until k neurons.
        if len(df) >= k or fetch >= loaded.index.ntotal or ok.sum() < fetch:
            return df.head(k)
        fetch *= 4


def search(store, text: str, *, model: str | None = None, layers: str | None = None, min_score: float | None = None,
           k: int = 20, text_model: str | None = None) -> pd.DataFrame:
    """Neurons whose explanations mean most nearly ``text`` (cosine of sentence embeddings), best first."""
    check_k(k)
    if not text or not text.strip():
        raise NkbError("nothing to search for", 'give some text, e.g. nkb search "dogs and cats"')
    _, layer_set = parse_layer_filter(layers)
    frames, missing = [], []
    for m in _models(store, model):
        try:
            loaded = open_index(store, m, "explanation", save_file=not store.read_only)
        except VectorsMissing:
            missing.append(m)
            continue
        query = embed_texts([text], text_model or loaded.vset.meta["info"]["text_model"])[0]
        df = _knn(loaded, query, k, _selected(loaded.vset, layer_set), per_neuron=True)
        frames.append(df)
    if not frames:
        which = model or (missing[0] if len(missing) == 1 else "MODEL")
        raise VectorsMissing(f"no explanations of {', '.join(missing) or 'any model'} have been embedded",
                             f"write explanations first (the stage that explains neurons), then embed them: "
                             f"nkb index {which} --update")
    df = pd.concat(frames, ignore_index=True).sort_values(["score", "neuron"], ascending=[False, True])
    if min_score is not None:
        df = df[df["score"] >= min_score]
    df = df.head(k)
    return df.merge(_neuron_info(store, df["neuron"].tolist()), on="neuron", how="left")[
        ["neuron", "model", "layer", "idx", "score", "explanation"]].reset_index(drop=True)


def similar(store, neuron: str, *, method: str = "weights_out", layers: str | None = "other", k: int = 10,
            to_model: str | None = None) -> pd.DataFrame:
    """The ``k`` neurons nearest ``neuron`` under ``method`` (cosine), in other layers by default.

    ``layers``: ``other`` (every layer but the neuron's own), ``all``, or a list/range like
    ``3-7``. ``to_model`` searches another model's vectors of the same kind (same width).
    """
    check_k(k)
    nid = NeuronId.parse(neuron)
    found = store.cypher("MATCH (n:Neuron {id: $id}) RETURN n.layer AS layer", {"id": str(nid)})
    if found.empty:
        models = queries.model_ids(store)
        raise NkbError(f"no neuron {str(nid)!r} in the store",
                       f"models in this store: {', '.join(models) or 'none'}" if nid.model not in models else
                       f"list {nid.model}'s neurons with `nkb query --name neurons_filter --param model={nid.model}`")
    own = load(store, nid.model, method)
    if method == "explanation":
        mine = own.vectors[own.rows_of(str(nid))]
        if not len(mine):
            raise NkbError(f"{nid} has no embedded explanation", f"embed its explanations: nkb index {nid.model} --update")
        query = normalise(mine.mean(axis=0, keepdims=True))[0]
    else:
        hit = own.rows_of(str(nid))
        if not len(hit):
            raise VectorsMissing(f"no {method} vector of {nid}: layer {nid.layer} was not embedded",
                                 f"run: nkb ingest {nid.model} --stages embed --layers {nid.layer}")
        query = own.vectors[hit[0]]
    target = to_model or nid.model
    loaded = open_index(store, target, method, save_file=not store.read_only)
    if loaded.vset.vectors.shape[1] != len(query):
        raise NkbError(f"{method} vectors of {nid.model} and {target} differ in width "
                       f"({len(query)} against {loaded.vset.vectors.shape[1]})", "compare models of the same shape")
    mode, layer_set = parse_layer_filter(layers)
    same_model = target == nid.model
    ids = _selected(loaded.vset, layer_set, exclude_layer=nid.layer if mode == "other" and same_model else None,
                    exclude_neuron=str(nid) if same_model else None)
    df = _knn(loaded, query, k, ids, per_neuron=method == "explanation")
    df = df.merge(_neuron_info(store, df["neuron"].tolist()), on="neuron", how="left")
    return df.assign(method=method)[["neuron", "model", "layer", "idx", "method", "score", "explanation"]]


def token_neurons(store, token: str, relation: str = "promotes", *, model: str | None = None, k: int = 20) -> pd.DataFrame:
    """The neurons that most promote / suppress / read ``token`` (the token's exact text), from the graph.

    Complete once the tokens stage has stored every token's top neurons; the rows say how
    each was found (``rank``: in the neuron's own list; ``token_rank``: in the token's).
    """
    check_k(k)
    if relation not in _RELATIONS:
        raise NkbError(f"unknown relation {relation!r}", f"relations: {', '.join(_RELATIONS)}")
    _models(store, model)
    return queries.run(store, _RELATIONS[relation], {"token": token, "model": model, "limit": k})
