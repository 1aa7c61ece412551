"""A whole knowledge base as plain, sorted Python data, for exact comparisons in tests.

``dump`` returns every node of every label and every relationship of every type with all
its properties, and the store's metadata (``NkbMeta``: schema version, per-layer done
markers, saved ingest configurations): two stores with equal dumps hold the same graph.
"""

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


WALL_CLOCK = {"created_at"}


def dump(store: Store) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for nt in (schema.META, *schema.NODES):
        # created_at is the wall-clock time of a write: two equal runs never share it
        cols = ", ".join(f"n.`{c}` AS `{c}`" for c in nt.columns if c not in WALL_CLOCK)
        df = store.cypher(f"MATCH (n:{nt.label}) RETURN {cols}")
        out[nt.label] = sorted(tuple(_plain(v) for v in row) for row in df.itertuples(index=False))
    for rt in schema.RELS:
        cols = "".join(f", r.`{c}` AS `{c}`" for c in rt.columns)
        df = store.cypher(f"MATCH (a:{rt.src})-[r:{rt.type}]->(b:{rt.dst}) RETURN a.id AS src, b.id AS dst{cols}")
        out[rt.type] = sorted(tuple(_plain(v) for v in row) for row in df.itertuples(index=False))
    return out


def without_run_configs(kb: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """The dump less the saved ``ingest/<model>/config`` entries, which record settings that do
    not change the stored results (batch size, checkpoint interval) and so differ between runs
    that must otherwise store the same knowledge base."""
    return {**kb, schema.META.label: [row for row in kb[schema.META.label] if not row[0].endswith("/config")]}


def indexes(store: Store) -> list[tuple]:
    """The engine's own list of indexes (and the constraints' backing indexes), sorted."""
    if store.engine == "embedded":
        df = store.cypher("CALL show_indexes() RETURN *")
    else:
        # On the FalkorDB test server the relay (servers.py) answers this from db.indexes().
        from servers import SHOW_INDEXES

        df = store.cypher(SHOW_INDEXES)
    return sorted(tuple(_plain(v) for v in row) for row in df.itertuples(index=False))
