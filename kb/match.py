"""Hungarian matching of neurons between two layers, or between the same layer of two models.

The similarity of two neurons is the cosine of their vectors of one kind (``kb.vectors``:
weight directions, explanation embeddings, or activations on a shared corpus sample, whose
cosine is their correlation). A matching pairs every neuron of the narrower side with a
distinct neuron of the other so that the summed similarity is largest:

- ``dense``: ``scipy.optimize.linear_sum_assignment`` on the full similarity matrix;
- ``sparse``: only each neuron's ``k`` nearest candidates (FAISS, both directions) are
  allowed, solved with ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``. It
  equals the dense optimum whenever the optimal pairs are among the candidates, and scales
  to tens of thousands of neurons a side.

Each run is summarised by its mean matched similarity and by the share of matched pairs
whose top promoted token is the same (the LM-head paper's measure), and stored as
``MATCHES {similarity, method, run}`` edges from the first layer (model) to the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kb import queries
from kb.errors import NkbError

SOLVERS = ("auto", "dense", "sparse")
#: ``auto`` solves problems up to this many neurons a side densely.
DENSE_LIMIT = 4096


def solve_dense(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the matching that maximises the summed similarity (rows <= columns or not)."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(np.asarray(sim, dtype=np.float64), maximize=True)


def candidate_graph(a: np.ndarray, b: np.ndarray, k: int):
    """The sparse similarity graph of each row's ``k`` nearest columns and each column's ``k`` nearest rows."""
    import faiss
    from scipy import sparse

    k_ab, k_ba = min(k, len(b)), min(k, len(a))
    ib = faiss.IndexFlatIP(b.shape[1])
    ib.add(np.ascontiguousarray(b, dtype=np.float32))
    s1, j1 = ib.search(np.ascontiguousarray(a, dtype=np.float32), k_ab)
    ia = faiss.IndexFlatIP(a.shape[1])
    ia.add(np.ascontiguousarray(a, dtype=np.float32))
    s2, i2 = ia.search(np.ascontiguousarray(b, dtype=np.float32), k_ba)
    rows = np.concatenate([np.repeat(np.arange(len(a)), k_ab), i2.reshape(-1)])
    cols = np.concatenate([j1.reshape(-1), np.repeat(np.arange(len(b)), k_ba)])
    sims = np.concatenate([s1.reshape(-1), s2.reshape(-1)]).astype(np.float64)
    graph = sparse.coo_matrix((sims, (rows, cols)), shape=(len(a), len(b))).tocsr()
    graph.sum_duplicates()  # a pair found from both sides was added twice
    dup = sparse.coo_matrix((np.ones_like(sims), (rows, cols)), shape=(len(a), len(b))).tocsr()
    graph.data /= dup.data  # back to the similarity itself
    return graph


def solve_sparse(a: np.ndarray, b: np.ndarray, k: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matching over the k-nearest candidate pairs of unit vectors ``a`` and ``b``: rows, columns, similarities.

    Doubles ``k`` until a matching of every neuron of the narrower side exists among the candidates.
    """
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    transpose = len(a) > len(b)
    if transpose:
        a, b = b, a
    k = max(1, min(k, len(b)))
    while True:
        graph = candidate_graph(a, b, k)
        cost = graph.copy()
        # Costs must be positive (an explicit zero would be read as "no edge"): 2 - cosine lies in (0, 3].
        cost.data = 2.0 - cost.data + 1e-9
        try:
            rows, cols = min_weight_full_bipartite_matching(cost)
            break
        except ValueError:
            if k >= len(b):
                raise
            k = min(len(b), k * 2)
    sims = np.asarray(graph[rows, cols]).ravel()
    if transpose:
        rows, cols = cols, rows
        order = np.argsort(rows)
        rows, cols, sims = rows[order], cols[order], sims[order]
    return rows, cols, sims


def match_vectors(a: np.ndarray, b: np.ndarray, *, solver: str = "auto", k: int = 32) -> pd.DataFrame:
    """Match rows of ``a`` to rows of ``b`` (unit vectors): a frame of a, b, similarity."""
    if solver not in SOLVERS:
        raise NkbError(f"unknown solver {solver!r}", f"solvers: {', '.join(SOLVERS)}")
    if solver == "auto":
        solver = "dense" if max(len(a), len(b)) <= DENSE_LIMIT else "sparse"
    if solver == "dense":
        if len(a) != len(b):
            raise NkbError(f"a dense match needs layers of the same width, got {len(a)} and {len(b)} neurons",
                           "use --solver sparse, which matches every neuron of the narrower side")
        sim = a @ b.T
        rows, cols = solve_dense(sim)
        sims = sim[rows, cols]
    else:
        rows, cols, sims = solve_sparse(a, b, k)
    return pd.DataFrame({"a": rows.astype(np.int64), "b": cols.astype(np.int64), "similarity": sims.astype(np.float64)})


# -- matching neurons of a knowledge base ------------------------------------------------------

@dataclass
class MatchResult:
    edges: pd.DataFrame  # src, dst, similarity, method, run
    summary: pd.DataFrame  # one row per layer pair


def _model_shape(store, model: str) -> tuple[int, int]:
    df = store.cypher("MATCH (m:Model {id: $m}) RETURN m.n_layers AS n_layers, m.d_mlp AS d_mlp", {"m": model})
    if df.empty:
        known = queries.model_ids(store)
        raise NkbError(f"no model {model!r} in the store", f"models in this store: {', '.join(known) or 'none'}")
    return int(df["n_layers"].iloc[0]), int(df["d_mlp"].iloc[0])


def layer_pairs(n_layers: int, layers: str | None, adjacent: bool, to_model: str | None) -> list[tuple[int, int]]:
    """Which (layer, layer) pairs a request means; with ``to_model``, layers pair with themselves."""
    if layers and adjacent:
        raise NkbError("give either --layers or --adjacent, not both")
    if layers:
        parts = [p.strip() for p in layers.split(",")]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise NkbError(f"cannot read layers {layers!r}", "use --layers A,B (two layers), or one layer with --to") from None
        if to_model is None and len(nums) != 2:
            raise NkbError(f"--layers takes two layers, A,B; got {layers!r}", "e.g. --layers 3,4, or --adjacent")
        bad = [n for n in nums if not 0 <= n < n_layers]
        if bad:
            raise NkbError(f"layer {bad[0]} is out of range: the model has layers 0-{n_layers - 1}")
        return [(n, n) for n in nums] if to_model else [(nums[0], nums[1])]
    if to_model:
        return [(layer, layer) for layer in range(n_layers)]
    if adjacent:
        return [(layer, layer + 1) for layer in range(n_layers - 1)]
    raise NkbError("say which layers to match", "--layers A,B, --adjacent, or --to MODEL2 for the same layers of two models")


def _neuron_vectors(vset, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(neuron ids, unit vectors) of one layer; a neuron with several explanation rows gets their mean."""
    from kb.vectors import normalise

    mask = vset.layers == layer
    ids = vset.neurons[mask]
    x = vset.vectors[mask]
    if len(np.unique(ids)) == len(ids):
        return ids, x
    codes, uniq = pd.factorize(ids)
    sums = np.zeros((len(uniq), x.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, x)
    return np.asarray(uniq), normalise(sums)


def _top_tokens(store, neurons: list[str]) -> dict[str, str]:
    df = store.cypher("MATCH (n:Neuron)-[p:PROMOTES]->(t:Token) WHERE n.id IN $ids AND p.found = 'neuron' "
                      "AND p.rank = 0 RETURN n.id AS neuron, t.id AS token", {"ids": neurons})
    return dict(zip(df["neuron"], df["token"]))


def match(store, model: str, *, layers: str | None = None, adjacent: bool = False, to_model: str | None = None,
          method: str = "weights_out", solver: str = "auto", k: int = 32, write: bool = True,
          progress=None) -> MatchResult:
    """Match neurons layer to layer (or model to model) and, when ``write``, store MATCHES edges.

    The summary has, per pair: layers, distance, neurons matched, mean matched similarity and
    the share of matched pairs whose top promoted token is the same (null without lmhead data).
    """
    from kb.vectors import check_k, load

    check_k(k)
    n_layers, d_mlp = _model_shape(store, model)
    other = to_model or model
    if to_model:
        shape = _model_shape(store, to_model)
        if shape != (n_layers, d_mlp):
            raise NkbError(f"{model} and {to_model} differ in shape ({n_layers} layers x {d_mlp} neurons against "
                           f"{shape[0]} x {shape[1]})", "match models of the same shape, e.g. a model and its fine-tune")
    pairs = layer_pairs(n_layers, layers, adjacent, to_model)
    va = load(store, model, method)
    vb = load(store, other, method) if to_model else va
    if method == "activations" and to_model and va.meta.get("info") != vb.meta.get("info"):
        raise NkbError(f"the activation vectors of {model} and {to_model} come from different corpus tokens",
                       "embed both with the same corpus and --embed-activation-tokens")
    edges, summary = [], []
    for la, lb in pairs:
        ids_a, xa = _neuron_vectors(va, la)
        ids_b, xb = _neuron_vectors(vb, lb)
        if not len(ids_a) or not len(ids_b):
            missing = (model, la) if not len(ids_a) else (other, lb)
            raise NkbError(f"no {method} vectors of {missing[0]} layer {missing[1]}",
                           f"run: nkb ingest {missing[0]} --stages embed --layers {missing[1]}")
        m = match_vectors(xa, xb, solver=solver, k=k)
        run = f"{model}/{la}->{other}/{lb}"
        e = pd.DataFrame({"src": ids_a[m["a"]], "dst": ids_b[m["b"]], "similarity": m["similarity"],
                          "method": method, "run": run})
        tops = _top_tokens(store, list(e["src"]) + list(e["dst"]))
        a_tok = e["src"].map(tops)
        b_tok = e["dst"].map(tops)
        both = a_tok.notna() & b_tok.notna()
        summary.append({"run": run, "model": model, "layer": la, "to_model": other, "to_layer": lb,
                        "distance": abs(lb - la), "method": method, "matched": len(e),
                        "mean_similarity": float(e["similarity"].mean()),
                        "same_top_token": float((a_tok[both] == b_tok[both]).mean()) if both.any() else None})
        edges.append(e)
        if progress:
            progress(1)
    edges_df = pd.concat(edges, ignore_index=True)
    if write:
        store.upsert_rels("MATCHES", edges_df)
    return MatchResult(edges_df, pd.DataFrame(summary))


def plot_by_distance(summary: pd.DataFrame, path, *, title: str | None = None) -> None:
    """A PNG of mean matched similarity against layer distance (one point per pair, a line through the means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, g in summary.groupby("method"):
        ax.scatter(g["distance"], g["mean_similarity"], s=12, alpha=0.5)
        means = g.groupby("distance")["mean_similarity"].mean()
        ax.plot(means.index, means.values, marker="o", label=method)
    ax.set_xlabel("layer distance")
    ax.set_ylabel("mean matched similarity")
    ax.set_title(title or "Hungarian matching by layer distance")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
