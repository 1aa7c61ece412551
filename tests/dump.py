"""A whole knowledge base as plain, sorted Python data, for exact comparisons in tests."""

from __future__ import annotations

import math

from kb import schema
from kb.stores.base import Store


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def dump(store: Store) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for nt in schema.NODES:
        cols = ", ".join(f"n.`{c}` AS `{c}`" for c in nt.columns)
        df = store.cypher(f"MATCH (n:{nt.label}) RETURN {cols}")
        out[nt.label] = sorted(tuple(_plain(v) for v in row) for row in df.itertuples(index=False))
    for rt in schema.RELS:
        cols = "".join(f", r.`{c}` AS `{c}`" for c in rt.columns)
        df = store.cypher(f"MATCH (a:{rt.src})-[r:{rt.type}]->(b:{rt.dst}) RETURN a.id AS src, b.id AS dst{cols}")
        out[rt.type] = sorted(tuple(_plain(v) for v in row) for row in df.itertuples(index=False))
    return out


def indexes(store: Store) -> list[tuple]:
    """The engine's own list of indexes (and the constraints' backing indexes), sorted."""
    if store.engine == "embedded":
        df = store.cypher("CALL show_indexes() RETURN *")
    else:
        # On the FalkorDB test server the relay (servers.py) answers this from db.indexes().
        from servers import SHOW_INDEXES

        df = store.cypher(SHOW_INDEXES)
    return sorted(tuple(_plain(v) for v in row) for row in df.itertuples(index=False))
