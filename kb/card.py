"""One neuron's card: everything ``nkb show`` prints, as data any front end can render.

``neuron_card`` gathers it from the named queries; the CLI renders it as text or JSON, and a
web page could render the same structure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kb import output, queries
from kb.errors import NkbError
from kb.stores.base import Store


@dataclass
class Card:
    neuron: dict[str, Any]  # the neuron_card query's row: id, layer, statistics, N2G scores, best explanation
    promotes: list[dict[str, Any]] = field(default_factory=list)  # rank, token, logit, token_id
    suppresses: list[dict[str, Any]] = field(default_factory=list)
    reads: list[dict[str, Any]] = field(default_factory=list)  # via, rank, token, weight, token_id
    records: list[dict[str, Any]] = field(default_factory=list)  # rank, max_act, position, snippet, tokens, activations, text
    record_kind: str = "top"
    explanations: list[dict[str, Any]] = field(default_factory=list)  # one row per explanation and score
    # The N2G graph as patterns, strongest first: tokens in reading order (the firing token last, "*"
    # for any token) and the activation the pattern predicts (normalised); empty without a graph.
    n2g: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def neuron_card(store: Store, neuron: str, *, tokens: int = 10, records: int = 5, record_kind: str = "top") -> Card:
    """The card of ``neuron``; raises NkbError, with the models the store does hold, when it has no such neuron."""
    row = queries.run(store, "neuron_card", {"neuron": neuron})
    if row.empty:
        model = neuron.rsplit("/", 2)[0]
        models = queries.model_ids(store)
        hint = (f"model {model} has no such neuron; list its neurons with "
                f"`nkb query --name neurons_filter --param model={model}`") if model in models else (
            f"models in this store: {', '.join(models) or 'none'}")
        raise NkbError(f"no neuron {neuron!r} in the store", hint)

    def rows(name: str, **params: Any) -> list[dict[str, Any]]:
        return output.records(queries.run(store, name, {"neuron": neuron, **params}))

    return Card(
        neuron=output.records(row)[0],
        promotes=rows("neuron_promotes", limit=tokens),
        suppresses=rows("neuron_suppresses", limit=tokens),
        reads=rows("neuron_reads", limit=tokens),
        records=rows("top_records", kind=record_kind, limit=records),
        record_kind=record_kind,
        explanations=rows("neuron_explanations"),
        n2g=_n2g_patterns(store, neuron),
    )


def _n2g_patterns(store: Store, neuron: str) -> list[dict[str, Any]]:
    from kb.ids import N2GNodeId
    from kb.n2g import Graph, patterns

    nodes = queries.run(store, "n2g_graph", {"neuron": neuron})
    if nodes.empty:
        return []
    graph = Graph({}, nodes.assign(path=[N2GNodeId.parse(i).path for i in nodes["id"]]))
    return [{"tokens": tokens, "activation": act} for tokens, act in patterns(graph)]
