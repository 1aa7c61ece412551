"""Reading, showing and drawing stored Neuron-to-Graph graphs (the n2g stage writes them).

``load_graph`` gets one neuron's trie from the store, or says exactly why there is none (no
such neuron, no activation records yet, never fires, n2g not run for its layer).
``patterns`` lists the graph as text patterns (``nkb show``); ``render`` draws it with Graphviz's
``dot`` like the paper's figures: firing tokens coloured by activation, context tokens by
importance, wildcards grey, walking back from the firing token to the left.
``search`` is token and token-after-context search over the N2G paths.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kb import queries
from kb.errors import NkbError
from kb.ids import N2GNodeId, NeuronId
from kb.stores.base import Store

WILDCARD = -1


@dataclass
class Graph:
    neuron: dict  # the neuron_card row
    nodes: pd.DataFrame  # the n2g_graph rows, plus `path` (token ids from the root)

    def trie(self):
        from ingest.n2g.trie import Trie

        return Trie.from_nodes([(p, a if e else None, i) for p, a, e, i in
                                zip(self.nodes["path"], self.nodes["activation"], self.nodes["is_end"],
                                    self.nodes["importance"])])


def _neuron_row(store: Store, neuron: str) -> dict:
    from kb.card import neuron_card  # its error names the models the store holds

    row = queries.run(store, "neuron_card", {"neuron": neuron})
    if row.empty:
        neuron_card(store, neuron)  # raises the "no neuron" error with its hint
    return row.iloc[0].to_dict()


def load_graph(store: Store, neuron: str) -> Graph:
    nid = NeuronId.parse(neuron)
    row = _neuron_row(store, str(nid))
    nodes = queries.run(store, "n2g_graph", {"neuron": str(nid)})
    if nodes.empty:
        records = store.cypher("MATCH (n:Neuron {id: $id})-[a:ACTIVATES_ON]->(:Snippet) RETURN count(a) AS c",
                               {"id": str(nid)})
        if int(records["c"].iloc[0]) == 0:
            raise NkbError(f"neuron {nid} has no activation records yet",
                           f"run: nkb ingest {nid.model} --stages activations --layers {nid.layer}")
        if row.get("max_act") is not None and row["max_act"] <= 0:
            raise NkbError(f"neuron {nid} never fires (largest activation {row['max_act']:.4g}), so it has no N2G graph")
        raise NkbError(f"neuron {nid} has no N2G graph yet",
                       f"run: nkb ingest {nid.model} --stages n2g --n2g-layers {nid.layer}")
    nodes = nodes.assign(path=[N2GNodeId.parse(i).path for i in nodes["id"]])
    return Graph(row, nodes)


def patterns(graph: Graph) -> list[tuple[list[str], float]]:
    """Each pattern as tokens in reading order (context first, firing token last) and its activation."""
    text = dict(zip(graph.nodes["path"], graph.nodes["token"]))
    out = []
    for path, act, end in zip(graph.nodes["path"], graph.nodes["activation"], graph.nodes["is_end"]):
        if end:
            out.append(([text[path[:k + 1]] for k in range(len(path) - 1, -1, -1)], float(act)))
    return sorted(out, key=lambda p: (-p[1], p[0]))


def _colour(value: float, hue: str) -> str:
    v = min(1.0, max(0.0, float(value or 0.0)))
    light = int(255 - 175 * v)
    return f"#{light:02x}{light:02x}ff" if hue == "blue" else f"#ff{light:02x}{light:02x}"


def dot_source(graph: Graph) -> str:
    """Graphviz source: one box per trie node, edges from each node to the token before it."""
    name = {p: f"n{i}" for i, p in enumerate(graph.nodes["path"])}
    firing: dict[int, float] = {}  # root token -> the largest activation of a pattern through it
    for path, act, end in zip(graph.nodes["path"], graph.nodes["activation"], graph.nodes["is_end"]):
        if end:
            firing[path[0]] = max(firing.get(path[0], 0.0), float(act))
    out = ["digraph n2g {", '  rankdir=RL; node [shape=box, style="rounded,filled", fontname="Helvetica"];',
           f'  label=<{html.escape(str(graph.neuron["neuron"]))}>; labelloc=t;']
    for path, token, imp, end in zip(graph.nodes["path"], graph.nodes["token"], graph.nodes["importance"],
                                     graph.nodes["is_end"]):
        if len(path) == 1:
            fill = _colour(firing.get(path[0], 0.0), "red")
        elif path[-1] == WILDCARD:
            fill = "#dddddd"
        else:
            fill = _colour(imp, "blue")
        # json escapes control characters (a newline token), html the markup characters
        shown = html.escape(json.dumps(token, ensure_ascii=False)[1:-1]) if token != "*" else "*"
        peripheries = 2 if end else 1
        out.append(f'  {name[path]} [label=<{shown or "&#160;"}>, fillcolor="{fill}", peripheries={peripheries}];')
        if len(path) > 1:
            out.append(f"  {name[path]} -> {name[path[:-1]]};")
    out.append("}")
    return "\n".join(out) + "\n"


def render(graph: Graph, out: str | os.PathLike) -> Path:
    """Draw the graph to ``out`` (.svg or .png); nothing is written when anything fails."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise NkbError(f"cannot render to {out}: the file must end in .svg or .png")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise NkbError(f"cannot write {out}: {parent} is not a writable directory"
                       if not parent.is_dir() or not os.access(parent, os.W_OK) else f"cannot write {out}: not writable")
    dot = shutil.which("dot")
    if dot is None:
        raise NkbError("rendering needs Graphviz's dot, which is not installed", "apt-get install graphviz")
    try:  # write access can be granted and still fail (read-only file systems, /proc, root squash)
        fd, tmp = tempfile.mkstemp(prefix=".n2g-", suffix=f".{fmt}", dir=parent)
    except OSError as e:
        raise NkbError(f"cannot write {out}: {e.strerror}") from None
    os.close(fd)
    try:
        done = subprocess.run([dot, f"-T{fmt}", "-o", tmp], input=dot_source(graph), text=True,
                              capture_output=True, timeout=120)
        if done.returncode != 0:
            raise NkbError(f"dot failed: {(done.stderr.strip().splitlines() or ['no message'])[0]}")
        try:
            os.replace(tmp, out)
        except OSError as e:
            raise NkbError(f"cannot write {out}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def search(store: Store, token: str, *, after: str | None = None, model: str | None = None,
           layers: list[int] | None = None, limit: int = 20) -> pd.DataFrame:
    """Neurons whose N2G graph fires on ``token`` (right after ``after``, through the graph's paths)."""
    ranges: list[tuple[int | None, int | None]] = [(None, None)]
    if layers:
        ranges, start = [], None
        for i, layer in enumerate(sorted(set(layers))):
            start = layer if start is None else start
            if i + 1 == len(set(layers)) or sorted(set(layers))[i + 1] != layer + 1:
                ranges.append((start, layer))
                start = None
    frames = [queries.run(store, "fires_on_token", {"token": token, "context": after, "model": model,
                                                    "min_layer": lo, "max_layer": hi, "limit": limit})
              for lo, hi in ranges]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.sort_values(["activation", "neuron"], ascending=[False, True]).head(limit).reset_index(drop=True)
