"""The n2g stage: Neuron-to-Graph tries for every neuron of a layer (``ingest.n2g``), stored as
graphs, scored on held-out records, indexed by token and compared with each other.

Per layer it reads the layer's activation records with one query, splits each neuron's top
records by rank (even ranks train, odd ranks test) and adds its random records to the test set
as negatives, builds the tries with shared forward passes, and writes:

- the trie as ``N2GNode``s under ``N2G_ROOT``, walking back through ``N2G_PREV``, each one also
  linked from its neuron by ``HAS_N2G_NODE`` (a whole trie in one step);
- ``FIRES_ON`` (root tokens, with the largest end activation under them) and ``CONTEXT``
  (explicit context tokens, with their largest importance) to the shared ``Token``s;
- ``Neuron.n2g_precision/recall/f1`` of firing on the test records.

It runs on the layers of ``--n2g-layers`` (default: layer 0) among those ingested: a deep layer
takes hours on a CPU (see ``scripts/bench_n2g.py``). A layer left out gets no done marker, so a
later run with ``--n2g-layers`` fills it in.

Neurons that never fire (largest activation <= 0) get no graph and no scores. After each
layer (before its done marker), ``SIMILAR_TO {method: 'n2g'}`` edges are recomputed for every
neuron of the model that has a graph: Jaccard similarity of their sets of firing and context tokens, found through an
inverted index from tokens to neurons (a sparse product), the ``n2g_similar`` best per neuron.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport
from kb.errors import IngestError
from kb.ids import N2GNodeId, NeuronId, token_ids

RECORDS_QUERY = """
MATCH (n:Neuron)-[a:ACTIVATES_ON]->(s:Snippet)
WHERE n.model = $model AND n.layer = $layer AND (a.kind = 'top' OR a.kind = 'random')
RETURN n.idx AS idx, n.max_act AS max_act, a.kind AS kind, a.rank AS rank, a.max AS max,
       a.position AS position, a.activations AS activations, s.id AS snippet
"""
# A layer's records share a few snippets (every neuron's top records come from the same
# corpus): their tokens are read once each, by key, not once per record.
SNIPPETS_QUERY = "MATCH (s:Snippet) WHERE s.id IN $ids RETURN s.id AS snippet, s.token_ids AS token_ids"


class N2GStage(Stage):
    name = "n2g"
    tuned_heap = True
    help = "Neuron-to-Graph tries per neuron: token search, prediction, P/R/F1, n2g similarity"
    needs = ("activations",)
    settings = (
        Setting("n2g_prune_threshold", 0.5, "N2G: a pruned context keeps at least this share of the activation.",
                type=float, minimum=0.01, maximum=1),
        Setting("n2g_cutoff", 30, "N2G: longest context tried when pruning, in tokens.", minimum=1),
        Setting("n2g_post_context", 5, "N2G: tokens kept after the firing token.", minimum=0),
        Setting("n2g_importance", 0.75, "N2G: importance at which a context token becomes a graph node.",
                type=float, minimum=0, maximum=1),
        Setting("n2g_fire", 0.5, "N2G: normalised activation at which a token fires.", type=float,
                minimum=0.01, maximum=1),
        Setting("n2g_augment", 5, "N2G: replacements tried per important token (0: no augmentation).", minimum=0),
        Setting("n2g_augment_keep", 0.5, "N2G: a replacement is kept when it keeps this share of the activation.",
                type=float, minimum=0, maximum=1),
        Setting("n2g_layers", "0", "N2G: the layers it runs on, among those ingested: a list such as 0-3,12, or "
                "all. A deep layer takes hours on a CPU, so by default only layer 0.", type=str, output=False),
        Setting("n2g_neurons", None, "N2G: only the first N neurons of each layer (default: all).", minimum=1),
        Setting("n2g_similar", 10, "N2G: SIMILAR_TO {method: 'n2g'} neighbours kept per neuron.", minimum=0),
        Setting("n2g_batch_tokens", 4096, "N2G: tokens per forward batch.", minimum=64, output=False),
    )

    def validate(self, cfg) -> None:
        wanted_layers(cfg.settings)

    def check_model(self, cfg, lm) -> None:
        n = lm.adapter.n_layers
        bad = [layer for layer in wanted_layers(cfg.settings) or [] if layer >= n]
        if bad:
            raise IngestError(f"layer {bad[0]} in --n2g-layers is out of range: the model has {n} layers (0-{n - 1})",
                              f"use --n2g-layers within 0-{n - 1}")

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from ingest.n2g.augmentation import EmbeddingNeighbours
        from ingest.n2g.runner import LayerRunner
        from ingest.pipeline import layer_list

        # Layers left out stay without a done marker: a later run with --n2g-layers fills them.
        wanted = wanted_layers(ctx.cfg.settings)
        left = [layer for layer in layers if wanted is not None and layer not in wanted]
        layers = [layer for layer in layers if layer not in left]
        if left:
            ctx.reporter.note(f"n2g: layer(s) {layer_list(left)} left out by --n2g-layers "
                              f"{ctx.cfg.settings['n2g_layers']} (a deep layer takes hours on a CPU; to build them: "
                              f"nkb ingest {ctx.cfg.model}{f' --name {ctx.cfg.name}' if ctx.cfg.name else ''} "
                              f"--stages n2g --n2g-layers {layer_list(left)})")
        report = StageReport(self.name)
        if not layers:
            return report
        cfg = n2g_config(ctx.cfg.settings, ctx.lm.tokenizer)
        prefix = model_prefix(ctx.store, ctx.model_id)
        neighbours = EmbeddingNeighbours(ctx.lm.adapter.model.get_input_embeddings().weight, cfg.n_augment,
                                         exclude=ctx.lm.tokenizer.all_special_ids)
        for layer in layers:
            data = read_layer(ctx.store, ctx.model_id, layer, ctx.cfg.settings["n2g_neurons"])
            ctx.reporter.begin(f"n2g layer {layer}", len(data.train), "rec")
            runner = LayerRunner(ctx.lm.adapter, layer, prefix, batch_tokens=ctx.cfg.settings["n2g_batch_tokens"],
                                 pad_token=cfg.mask_token)
            graphs = fit_layer(runner, data, cfg, neighbours, progress=ctx.reporter.advance)
            ctx.reporter.end()
            report.rows += write_layer(ctx, layer, graphs)
            # Before the done marker: a run killed in between redoes the layer and its similarities.
            if ctx.cfg.settings["n2g_similar"]:
                report.rows += write_similar(ctx.store, ctx.model_id, ctx.cfg.settings["n2g_similar"])
            ctx.mark_done(self, layer, report)
        return report


def wanted_layers(s: dict[str, Any]) -> list[int] | None:
    """The layers of --n2g-layers (None: every layer)."""
    from ingest.pipeline import parse_layers

    return parse_layers(s["n2g_layers"], "--n2g-layers")


def n2g_config(s: dict[str, Any], tokenizer) -> "Any":
    from ingest.n2g.config import N2GConfig

    mask = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    return N2GConfig(prune_threshold=s["n2g_prune_threshold"], cutoff=s["n2g_cutoff"],
                     post_context=s["n2g_post_context"], importance_threshold=s["n2g_importance"],
                     activation_threshold=s["n2g_fire"], n_augment=s["n2g_augment"],
                     augment_keep=s["n2g_augment_keep"], mask_token=int(mask))


def model_prefix(store, model_id: str) -> list[int]:
    found = store.cypher("MATCH (m:Model) WHERE m.id = $id RETURN m.window_prefix AS prefix", {"id": model_id})
    prefix = found["prefix"].iloc[0] if len(found) else None
    return [] if prefix is None else [int(t) for t in prefix]


class LayerData:
    """One layer's records, split: ``train`` (pruning.Record), and per neuron ``test`` and
    ``train_full`` lists of (tokens, normalised activations), and ``max_act``."""

    def __init__(self) -> None:
        self.train: list = []
        self.test: dict[int, list] = {}
        self.train_full: dict[int, list] = {}
        self.max_act: dict[int, float] = {}


def read_layer(store, model_id: str, layer: int, n_neurons: int | None = None) -> LayerData:
    from ingest.n2g.pruning import Record
    from kb.records import decode_activations

    df = store.cypher(RECORDS_QUERY, {"model": model_id, "layer": layer})
    data = LayerData()
    if n_neurons is not None:
        df = df[df["idx"] < n_neurons]
    df = df[df["max_act"] > 0]  # a neuron that never fires has nothing to explain
    df = df.sort_values(["idx", "kind", "rank"], kind="stable")
    if df.empty:  # nothing to read (and an empty list of ids is no parameter the engine can type)
        return data
    # Only the snippets of the records kept.
    snippets = store.cypher(SNIPPETS_QUERY, {"ids": sorted(set(df["snippet"]))})
    tokens_of = {s: tuple(int(t) for t in ids) for s, ids in zip(snippets["snippet"], snippets["token_ids"])}
    for row in df.itertuples(index=False):
        idx = int(row.idx)
        data.max_act[idx] = float(row.max_act)
        tokens = tokens_of[row.snippet]
        norm = decode_activations(row.activations) / float(row.max_act)
        if row.kind == "top" and row.rank % 2 == 0:
            if row.max > 0:
                data.train.append(Record(idx, tokens, int(row.position), float(row.max)))
            data.train_full.setdefault(idx, []).append((tokens, norm))
        else:
            data.test.setdefault(idx, []).append((tokens, norm))
    return data


class LayerGraphs:
    def __init__(self, tries: dict, scores: dict, baseline: dict):
        self.tries, self.scores, self.baseline = tries, scores, baseline


def fit_layer(runner, data: LayerData, cfg, neighbours, *, progress=None, per_neuron: bool = False) -> LayerGraphs:
    """Tries, scores and token-lookup baseline scores for every neuron of ``data``. With
    ``per_neuron`` the same algorithm runs one neuron at a time (the benchmark's baseline)."""
    from ingest.n2g.driver import build_graphs, evaluate

    if per_neuron:
        tries = {}
        for idx in sorted({r.neuron for r in data.train}):
            tries.update(build_graphs(runner, [r for r in data.train if r.neuron == idx], data.max_act, cfg,
                                      neighbours, progress=progress))
    else:
        tries = build_graphs(runner, data.train, data.max_act, cfg, neighbours, progress=progress)
    scores, baseline = {}, {}
    for idx, trie in tries.items():
        scores[idx], baseline[idx] = evaluate(trie, data.test.get(idx, []), cfg.activation_threshold,
                                              train=data.train_full.get(idx, []))
    return LayerGraphs(tries, scores, baseline)


def graph_frames(model_id: str, layer: int, tokenizer_id: str, token_text: list[str], graphs: LayerGraphs
                 ) -> dict[str, pd.DataFrame]:
    """The rows one layer's graphs are stored as, by label or relationship type."""
    from ingest.n2g.trie import WILDCARD

    nodes, roots, prev, fires, context, neurons = [], [], [], [], [], []
    for idx, trie in sorted(graphs.tries.items()):
        nid = NeuronId(model_id, layer, idx)
        nid_s = str(nid)
        for path, node in trie.nodes():
            node_id = str(N2GNodeId(nid, path))
            nodes.append((node_id, nid_s, model_id, "*" if node.token == WILDCARD else token_text[node.token],
                          node.token, node.end, node.importance, node.end is not None, node.depth))
            if len(path) == 1:
                roots.append((nid_s, node_id))
            else:
                prev.append((str(N2GNodeId(nid, path[:-1])), node_id))
        fires += [(nid_s, tok, act) for tok, act in trie.firing_tokens().items()]
        context += [(nid_s, tok, imp) for tok, imp in trie.context_tokens().items()]
        s = graphs.scores[idx]
        neurons.append((nid_s, s.precision, s.recall, s.f1))
    n2g_nodes = pd.DataFrame(nodes, columns=["id", "neuron", "model", "token", "token_id", "activation",
                                             "importance", "is_end", "depth"])
    frames = {
        "N2GNode": n2g_nodes,
        "HAS_N2G_NODE": trie_members(n2g_nodes),
        "N2G_ROOT": pd.DataFrame(roots, columns=["src", "dst"]),
        "N2G_PREV": pd.DataFrame(prev, columns=["src", "dst"]),
        "FIRES_ON": pd.DataFrame(fires, columns=["src", "dst", "activation"]),
        "CONTEXT": pd.DataFrame(context, columns=["src", "dst", "importance"]),
        "Neuron": pd.DataFrame(neurons, columns=["id", "n2g_precision", "n2g_recall", "n2g_f1"]),
    }
    for rel in ("FIRES_ON", "CONTEXT"):
        frames[rel]["dst"] = token_ids(tokenizer_id, frames[rel]["dst"])
    return frames


def trie_members(n2g_nodes: pd.DataFrame) -> pd.DataFrame:
    """HAS_N2G_NODE rows for N2GNode rows: each node from its own neuron."""
    return pd.DataFrame({"src": n2g_nodes["neuron"], "dst": n2g_nodes["id"]})


def write_layer(ctx: Context, layer: int, graphs: LayerGraphs) -> int:
    frames = graph_frames(ctx.model_id, layer, ctx.lm.tokenizer_id, ctx.token_text, graphs)
    rows = 0
    for label in ("N2GNode", "Neuron"):
        if len(frames[label]):
            rows += ctx.store.upsert_nodes(label, frames[label])
    for rel in ("HAS_N2G_NODE", "N2G_ROOT", "N2G_PREV", "FIRES_ON", "CONTEXT"):
        if len(frames[rel]):
            rows += ctx.store.upsert_rels(rel, frames[rel])
    return rows


SIMILAR_FEATURES = """
MATCH (n:Neuron)-[:FIRES_ON]->(t:Token) WHERE n.model = $model RETURN n.id AS neuron, 'f' AS kind, t.id AS token
UNION ALL
MATCH (n:Neuron)-[:CONTEXT]->(t:Token) WHERE n.model = $model RETURN n.id AS neuron, 'c' AS kind, t.id AS token
"""


def similar_edges(features: pd.DataFrame, k: int, chunk: int = 512) -> pd.DataFrame:
    """The ``k`` most similar neurons of every neuron (Jaccard of their feature sets), through an
    inverted index: neuron x feature incidence times its transpose counts shared features, and
    only neurons sharing a feature are ever compared."""
    from scipy import sparse

    if features.empty or k == 0:
        return pd.DataFrame(columns=["src", "dst", "score", "method", "rank"])
    features = features.drop_duplicates()
    neurons, row = np.unique(features["neuron"].to_numpy(), return_inverse=True)
    _, col = np.unique((features["kind"] + ":" + features["token"]).to_numpy(), return_inverse=True)
    x = sparse.csr_matrix((np.ones(len(row), dtype=np.float32), (row, col)),
                          shape=(len(neurons), int(col.max()) + 1))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    xt = x.T.tocsc()
    src, dst, score, rank = [], [], [], []
    for start in range(0, len(neurons), chunk):
        shared = (x[start:start + chunk] @ xt).tocsr()
        for r in range(shared.shape[0]):
            i = start + r
            lo, hi = shared.indptr[r], shared.indptr[r + 1]
            cols, inter = shared.indices[lo:hi], shared.data[lo:hi]
            keep = cols != i
            cols, inter = cols[keep], inter[keep]
            if not len(cols):
                continue
            jac = inter / (sizes[i] + sizes[cols] - inter)
            order = np.lexsort((neurons[cols], -jac))[:k]
            src += [neurons[i]] * len(order)
            dst += neurons[cols[order]].tolist()
            score += jac[order].astype(float).tolist()
            rank += list(range(len(order)))
    return pd.DataFrame({"src": src, "dst": dst, "score": score, "method": "n2g", "rank": rank})


def write_similar(store, model_id: str, k: int) -> int:
    edges = similar_edges(store.cypher(SIMILAR_FEATURES, {"model": model_id}), k)
    # The neighbours of neurons already there change as layers are added: replace, not merge.
    store.cypher("MATCH (a:Neuron)-[r:SIMILAR_TO]->(:Neuron) WHERE a.model = $model AND r.method = 'n2g' DELETE r",
                 {"model": model_id}, write=True)
    return store.upsert_rels("SIMILAR_TO", edges) if len(edges) else 0


__all__ = ["N2GStage", "fit_layer", "graph_frames", "read_layer", "similar_edges"]
