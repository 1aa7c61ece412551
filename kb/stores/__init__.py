"""Open a knowledge base by URL: a directory path is the embedded engine, bolt:// or
neo4j:// (and their +s variants) is a Neo4j server."""

from __future__ import annotations

from kb import config
from kb.stores.base import Store


def open_store(url: str | None = None, *, read_only: bool = False, create: bool = False,
               buffer_pool: int | None = None) -> Store:
    """Open the knowledge base at ``url`` (default: ``config.default_store()``).

    ``create=True`` makes an empty one when none exists; otherwise a missing store is an
    error. A store of another schema version is refused. A location that cannot name a store
    (empty, too long, an unknown URL scheme...) is refused before anything is touched.
    ``buffer_pool`` (bytes) sizes the embedded engine's pool instead of
    ``config.buffer_pool_bytes()``; a server ignores it.
    """
    url = config.default_store() if url is None else config.check_location(url, "store location")
    if config.is_server_url(url):
        from kb.stores.neo4j import Neo4jStore

        return Neo4jStore(url, read_only=read_only, create=create)
    from kb.stores.embedded import EmbeddedStore

    return EmbeddedStore(url, read_only=read_only, create=create, buffer_pool=buffer_pool)


def init_store(url: str | None = None) -> bool:
    """Make an empty knowledge base at ``url`` unless one is there; True when one was created."""
    from kb.errors import StoreNotFound

    try:
        with open_store(url, read_only=True):
            return False
    except StoreNotFound:
        with open_store(url, create=True):
            return True


__all__ = ["Store", "init_store", "open_store"]
