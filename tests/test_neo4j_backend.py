"""What only the Neo4j backend does: connecting and its failures, batching, values over
Bolt, missing endpoints, read access mode, and which Cypher it sends.

Against the real FalkorDB Bolt server of conftest's ``bolt_server`` (see servers.py), and a
real Neo4j where ``$NKB_NEO4J_URI`` names one (those tests skip, saying so, otherwise). The
contract every engine shares is in test_store.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import neo4j
import numpy as np
import pandas as pd
import pytest

from dump import dump
from kb.errors import (
    ConnectionFailed,
    NkbError,
    ParameterError,
    QueryError,
    ReadOnlyViolation,
    SchemaError,
    StoreCorrupt,
)
from kb.stores import neo4j as backend
from kb.stores import open_store
from kb.stores.neo4j import Neo4jStore, parse_url
from kbdata import NODE_ORDER, make_small_kb, term_index

SECRET = "pw-Never-Shown-42"


@pytest.fixture
def closed_port():
    """A loopback port bound (not listening) for the whole test: nobody else can take it, and
    connecting to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _graph(bolt_server) -> str:
    return bolt_server.url_for_graph(f"t{uuid.uuid4().hex[:12]}")


def _write(store, kb) -> None:
    for label in NODE_ORDER:
        store.upsert_nodes(label, kb.nodes[label])
    for rel_type, df in kb.rels.items():
        store.upsert_rels(rel_type, df)


@pytest.fixture
def fstore(bolt_server):
    with open_store(_graph(bolt_server), create=True) as s:
        yield s


def neo4j_uri() -> str:
    uri = os.environ.get("NKB_NEO4J_URI")
    if not uri:
        pytest.skip("NKB_NEO4J_URI is not set: no real Neo4j server to test against")
    return uri


# -- URLs and connecting --------------------------------------------------------------------
def test_url_names_the_database_and_loses_credentials(monkeypatch):
    monkeypatch.delenv("NKB_NEO4J_DATABASE", raising=False)
    assert parse_url(f"bolt://neo4j:{SECRET}@db.example:7687/mydb") == ("bolt://db.example:7687", "mydb")
    assert parse_url("neo4j+s://db.example") == ("neo4j+s://db.example", None)
    monkeypatch.setenv("NKB_NEO4J_DATABASE", "fromenv")
    assert parse_url("bolt://127.0.0.1:7687") == ("bolt://127.0.0.1:7687", "fromenv")
    assert parse_url("bolt://127.0.0.1:7687/inurl")[1] == "inurl"
    for bad in (f"bolt://u:{SECRET}@h:7687/a/b", f"bolt://u:{SECRET}@h:port/db", "bolt:///db"):
        with pytest.raises(ConnectionFailed) as err:
            parse_url(bad)
        assert SECRET not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("scheme", ["bolt", "neo4j"])
def test_unreachable_server_is_one_line_without_the_password(scheme, closed_port):
    url = f"{scheme}://neo4j:{SECRET}@127.0.0.1:{closed_port}/kb"
    with pytest.raises(ConnectionFailed) as err:
        open_store(url)
    message = str(err.value)
    assert message.startswith(f"cannot reach Neo4j at {scheme}://neo4j:***@127.0.0.1:")
    assert "docker compose" in message and "check the URL" in message
    assert "\n" not in message and SECRET not in message
    assert SECRET not in repr(err.value.args)


def test_wrong_password_is_refused_without_showing_it(bolt_server):
    """FalkorDB checks a Bolt login's password against its requirepass (servers.py sets one)."""
    url = bolt_server.url_for_graph("auth", password=SECRET)
    with pytest.raises(ConnectionFailed) as err:
        open_store(url)
    message = str(err.value)
    assert message.startswith("authentication failed for user 'falkordb' at bolt://falkordb:***@127.0.0.1:")
    assert "NKB_NEO4J_PASSWORD" in message
    assert SECRET not in message and bolt_server.password not in message and "\n" not in message


def test_wrong_password_on_neo4j():
    uri = neo4j_uri()
    parts = uri.split("://", 1)
    host = parts[1].split("@")[-1]
    with pytest.raises(ConnectionFailed) as err:
        open_store(f"{parts[0]}://neo4j:{SECRET}@{host}")
    assert "authentication failed for user 'neo4j'" in str(err.value) and SECRET not in str(err.value)


def test_store_shows_only_the_redacted_url(bolt_server):
    url = _graph(bolt_server)
    with open_store(url, create=True) as s:
        assert s.engine == "neo4j"
        assert bolt_server.password not in repr(s) and bolt_server.password not in s.url
        assert "falkordb:***@" in s.url


def test_a_test_server_that_died_is_replaced_by_a_working_one():
    """conftest reruns a bolt test the server failed by dying, on a server restarted this way."""
    from servers import FalkorDBServer

    with FalkorDBServer() as server:
        assert server.healthy()
        url = server.url_for_graph("before")
        with open_store(url, create=True) as s:
            s.upsert_nodes("Model", pd.DataFrame({"id": ["m"], "n_layers": [1]}))
        server._proc.kill()
        server._proc.wait(timeout=10)
        assert not server.healthy()
        with pytest.raises(ConnectionFailed):
            open_store(url)
        report = server.restart("a test killed it")
        assert "a test killed it" in report and "exited with status -9" in report and "Ready to accept" in report
        assert server.healthy()
        with open_store(server.url_for_graph("after"), create=True) as s:
            s.upsert_nodes("Model", pd.DataFrame({"id": ["m"], "n_layers": [1]}))
            assert s.cypher("MATCH (m:Model) RETURN m.id AS id")["id"].tolist() == ["m"]


def test_graphs_on_one_server_are_separate(bolt_server):
    a, b = _graph(bolt_server), _graph(bolt_server)
    with open_store(a, create=True) as sa:
        sa.upsert_nodes("Model", pd.DataFrame({"id": ["only-in-a"]}))
        with open_store(b, create=True) as sb:
            assert sb.counts()["Model"] == 0
            sb.upsert_nodes("Model", pd.DataFrame({"id": ["b1", "b2"]}))
        assert sa.counts()["Model"] == 1
    with open_store(b) as sb:
        assert sb.counts()["Model"] == 2


def test_create_refuses_a_database_holding_other_data(bolt_server):
    url = _graph(bolt_server)
    with open_store(url, create=True) as s:
        s.cypher("CREATE (:Somebody {name: 'else'})", write=True)
        s.cypher("MATCH (m:NkbMeta) DETACH DELETE m", write=True)
    with pytest.raises(StoreCorrupt, match="holds data but no neuron-kb metadata"):
        open_store(url, create=True)


# -- writing -------------------------------------------------------------------------------
def test_batch_size_from_argument_and_environment(bolt_server, monkeypatch):
    url = _graph(bolt_server)
    with Neo4jStore(url, create=True, batch_size=7) as s:
        assert s.default_batch_size == 7
    monkeypatch.setenv("NKB_NEO4J_BATCH_SIZE", "5")
    with open_store(url) as s:
        assert s.default_batch_size == 5
    monkeypatch.setenv("NKB_NEO4J_BATCH_SIZE", "lots")
    with pytest.raises(NkbError, match="NKB_NEO4J_BATCH_SIZE must be a positive number"):
        open_store(url)
    monkeypatch.delenv("NKB_NEO4J_BATCH_SIZE")
    with open_store(url) as s:
        assert s.default_batch_size == backend.DEFAULT_BATCH_SIZE


def test_tiny_batches_write_the_same_knowledge_base(bolt_server, monkeypatch):
    kb = make_small_kb()
    with open_store(_graph(bolt_server), create=True) as whole:
        _write(whole, kb)
        expected = dump(whole)
    with Neo4jStore(_graph(bolt_server), create=True, batch_size=4) as tiny:
        transactions = []
        real = tiny._write
        monkeypatch.setattr(tiny, "_write", lambda work: transactions.append(1) or real(work))
        _write(tiny, kb)
        want = sum(-(-len(df) // 4) for df in (*kb.nodes.values(), *kb.rels.values()))
        texts = kb.nodes["Explanation"]["text"].tolist()
        for at in range(0, len(texts), 4):  # each batch of explanations writes its terms in batches of 4
            want += sum(-(-n // 4) for n in term_index(texts[at:at + 4]).values())
        assert len(transactions) == want  # one transaction per batch of 4 rows
        assert dump(tiny) == expected
        _write(tiny, kb)  # and writing it all again changes nothing
        assert dump(tiny) == expected


def test_values_from_numpy_and_pandas(fstore):
    fstore.upsert_nodes("Neuron", pd.DataFrame({
        "id": ["m/0/0", "m/0/1", "m/0/2"],
        "layer": np.array([0, 1, 2], dtype=np.int32),
        "idx": pd.array([5, None, 7], dtype="Int64"),
        "max_act": np.array([1.5, np.nan, 2.25], dtype=np.float32),
        "mean_act": pd.Series([0.1, None, 0.3], dtype=object),
        "density": [np.float64(0.5), np.float32(0.25), None],
        "quantile_boundaries": [np.array([0.0, 1.0]), None, [2, 3]],
        "kind": ["mlp", None, "sae"],
        "n_tokens": [10.0, 11.0, np.nan],
    }))
    fstore.upsert_nodes("Snippet", pd.DataFrame({"id": ["s"], "token_ids": [np.arange(3, dtype=np.int16)],
                                                 "tokens": [np.array(["a", "b'", 'c"\\'])]}))
    rows = fstore.cypher("MATCH (n:Neuron) RETURN n.id AS id, n.layer AS layer, n.idx AS idx, "
                         "n.max_act AS mx, n.mean_act AS mean, n.density AS d, n.quantile_boundaries AS qb, "
                         "n.kind AS kind, n.n_tokens AS nt ORDER BY id").to_dict("records")
    got = [{k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v) for k, v in r.items()}
           for r in rows]
    assert got == [
        {"id": "m/0/0", "layer": 0, "idx": 5, "mx": 1.5, "mean": 0.1, "d": 0.5, "qb": [0.0, 1.0], "kind": "mlp", "nt": 10},
        {"id": "m/0/1", "layer": 1, "idx": None, "mx": None, "mean": None, "d": 0.25, "qb": None, "kind": None, "nt": 11},
        {"id": "m/0/2", "layer": 2, "idx": 7, "mx": 2.25, "mean": 0.3, "d": None, "qb": [2.0, 3.0], "kind": "sae", "nt": None},
    ]
    # INT64 columns are stored as integers, even from a float column (the frame above
    # only reads them back as floats because of the null beside them).
    texts = fstore.cypher("MATCH (n:Neuron) WHERE n.n_tokens IS NOT NULL RETURN toString(n.n_tokens) AS t ORDER BY t")
    assert texts["t"].tolist() == ["10", "11"]
    snippet = fstore.cypher("MATCH (s:Snippet) RETURN s.token_ids AS ids, s.tokens AS tokens").iloc[0]
    assert snippet["ids"] == [0, 1, 2] and snippet["tokens"] == ["a", "b'", 'c"\\']
    got = fstore.cypher("RETURN $i AS i, $f AS f, $a AS a, $n AS n",
                        {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(3), "n": None}).iloc[0]
    assert (got["i"], got["f"], got["a"], got["n"]) == (3, 0.5, [0, 1, 2], None)


@pytest.mark.parametrize("column, value, complaint", [
    ("layer", "three", "Neuron.layer must be INT64"),
    ("layer", 1.5, "Neuron.layer must be INT64: got values with a fractional part"),
    ("kind", 7, "Neuron.kind must be STRING: got int 7"),
    ("quantile_boundaries", "0.5", "Neuron.quantile_boundaries must be DOUBLE[]"),
])
def test_values_that_do_not_fit_the_property_type(fstore, column, value, complaint):
    before = dump(fstore)
    with pytest.raises(SchemaError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        fstore.upsert_nodes("Neuron", pd.DataFrame({"id": ["m/0/0"], column: [value]}))
    assert dump(fstore) == before


def test_unsendable_parameter(fstore):
    with pytest.raises(ParameterError, match=r"parameter \$x is a object"):
        fstore.cypher("RETURN $x AS x", {"x": object()})


@pytest.mark.parametrize("reopen", [False, True], ids=["ids-it-wrote", "ids-it-did-not"])
def test_missing_endpoint_names_type_and_id_and_writes_nothing(bolt_server, reopen):
    """The store looks before it writes for every endpoint it did not write itself, so a
    batch that names a missing node sends nothing (FalkorDB could not roll it back)."""
    url = _graph(bolt_server)
    with open_store(url, create=True) as s:
        s.upsert_nodes("Neuron", pd.DataFrame({"id": ["m/0/0", "m/0/1"]}))
        s.upsert_nodes("Token", pd.DataFrame({"id": ["t/1", "t/2"]}))
    fstore = open_store(url) if reopen else None
    with fstore or open_store(url) as s:
        if not reopen:
            s.upsert_nodes("Token", pd.DataFrame({"id": ["t/1", "t/2"]}))  # known to this store now
        before = dump(s)
        rows = pd.DataFrame({"src": ["m/0/0", "m/0/1", "m/0/1"], "dst": ["t/1", "t/2", "t/404"], "logit": 1.0})
        with pytest.raises(SchemaError) as err:
            s.upsert_rels("PROMOTES", rows)
        assert str(err.value).startswith("PROMOTES rows refer to a Token that is not in the store: 't/404'")
        assert dump(s) == before
        bad_src = rows.assign(src=["m/0/0", "m/9/9", "m/0/1"], dst="t/1")
        with pytest.raises(SchemaError, match="refer to a Neuron that is not in the store: 'm/9/9'"):
            s.upsert_rels("PROMOTES", bad_src, batch_size=1)


def test_missing_endpoint_rolls_back_on_neo4j():
    uri = neo4j_uri()
    from servers import clear_neo4j

    clear_neo4j(uri)
    with open_store(uri, create=True) as s:
        s.upsert_nodes("Neuron", pd.DataFrame({"id": ["m/0/0"]}))
        s.upsert_nodes("Token", pd.DataFrame({"id": ["t/1"]}))
        before = dump(s)
        with pytest.raises(SchemaError, match="'t/404'"):
            s.upsert_rels("PROMOTES", pd.DataFrame({"src": ["m/0/0", "m/0/0"], "dst": ["t/1", "t/404"]}))
        assert dump(s) == before
        names = set(s.cypher("SHOW CONSTRAINTS YIELD name RETURN name")["name"])
        assert {"nkb_neuron_id", "nkb_nkbmeta_key"} <= names


# -- reading -------------------------------------------------------------------------------
def test_reads_use_read_access_mode(fstore, monkeypatch):
    modes = []
    real_session = fstore._driver.session

    def session(**kwargs):
        modes.append(kwargs.get("default_access_mode"))
        return real_session(**kwargs)

    monkeypatch.setattr(fstore._driver, "session", session)
    fstore.cypher("MATCH (n:Neuron) RETURN count(n) AS n")
    fstore.counts()
    fstore.get_meta("schema_version")
    assert modes and set(modes) == {neo4j.READ_ACCESS}
    modes.clear()
    fstore.cypher("CREATE (:Model {id: 'w'})", write=True)
    fstore.set_meta("k", "v")
    assert modes == [neo4j.WRITE_ACCESS, neo4j.WRITE_ACCESS]


def test_neo4j_refuses_writes_in_read_transactions():
    """Past the lexical guard, a real Neo4j still refuses: reads run in read transactions.
    (FalkorDB does not enforce access modes, so only a real Neo4j can show this.)"""
    uri = neo4j_uri()
    from servers import clear_neo4j

    clear_neo4j(uri)
    with open_store(uri, create=True) as s:
        with pytest.raises(ReadOnlyViolation, match="refused a write in a read transaction"):
            s._run("CREATE (:Model {id: 'x'})", {}, write=False)
        assert s.counts()["Model"] == 0


def test_query_timeout_is_the_transaction_timeout(fstore, bolt_server):
    """The timeout travels as the driver's transaction timeout, which Neo4j enforces (the
    FalkorDB test server does not, so here the relay shows what reached the server)."""
    shim = bolt_server._shim
    shim.tx_timeouts.clear()
    fstore.cypher("RETURN 1 AS x", timeout=2.5)
    fstore.cypher("RETURN 1 AS x")
    assert shim.tx_timeouts == [2500]


def test_query_timeout_on_neo4j():
    uri = neo4j_uri()
    from kb.errors import QueryTimeout

    with pytest.raises(QueryTimeout, match="timeout and was cancelled"):
        with open_store(uri, create=True) as s:
            s.cypher("UNWIND range(1, 100000000) AS a WITH a WHERE a % 7 = 3 RETURN sum(a) AS s", timeout=0.5)


def test_query_errors_are_one_line(fstore):
    with pytest.raises(QueryError) as err:
        fstore.cypher("MATCH (n:Neuron RETURN n")
    assert str(err.value).startswith("Cypher syntax error: Invalid input") and "\n" not in str(err.value)
    with pytest.raises(QueryError) as err:
        fstore.cypher("RETURN 1 / 0 AS x")
    assert "\n" not in str(err.value) and "zero" in str(err.value).lower()
    with pytest.raises(ParameterError, match=r"\$b"):
        fstore.cypher("RETURN $a + $b AS x", {"a": 1})


def test_nodes_and_relationships_come_back_as_property_dicts(fstore):
    fstore.upsert_nodes("Neuron", pd.DataFrame({"id": ["m/0/0"], "layer": [0]}))
    fstore.upsert_nodes("Token", pd.DataFrame({"id": ["t/1"], "text": [" dog"]}))
    fstore.upsert_rels("PROMOTES", pd.DataFrame({"src": ["m/0/0"], "dst": ["t/1"], "logit": [2.5], "rank": [0]}))
    row = fstore.cypher("MATCH (n:Neuron)-[r:PROMOTES]->(t:Token) RETURN n, r, t").iloc[0]
    assert row["n"] == {"id": "m/0/0", "layer": 0}
    assert row["r"] == {"logit": 2.5, "rank": 0, "found": "neuron"}
    assert row["t"] == {"id": "t/1", "text": " dog"}
    empty = fstore.cypher("MATCH (n:Neuron {id: 'nope'}) RETURN n.id AS id, n.layer AS layer")
    assert list(empty.columns) == ["id", "layer"] and empty.empty


def test_closed_store_says_so(bolt_server):
    s = open_store(_graph(bolt_server), create=True)
    s.close()
    s.close()
    with pytest.raises(NkbError, match="is closed"):
        s.counts()


# -- the Cypher it sends ---------------------------------------------------------------------
def test_every_statement_sent_is_listed(bolt_server, monkeypatch):
    """statements() is what test_cypher_lint.py checks against Neo4j's parser, so it must
    hold every statement the backend sends (user queries aside). Upserts are built by two
    functions whose full- and key-column forms are listed; other column subsets only drop
    SET items."""
    sent = []
    real_run = neo4j.ManagedTransaction.run

    def run(self, query, parameters=None, **kwargs):
        sent.append(query)
        return real_run(self, query, parameters, **kwargs)

    monkeypatch.setattr(neo4j.ManagedTransaction, "run", run)
    url = _graph(bolt_server)
    with open_store(url, create=True) as s:
        kb = make_small_kb()
        _write(s, kb)
        s.counts()
        s.set_meta("k", "v")
        with pytest.raises(SchemaError):
            s.upsert_rels("PROMOTES", pd.DataFrame({"src": ["alpha/0/0"], "dst": ["nowhere"]}))
        s.delete_model("alpha")
        s.delete_model("beta")
    with open_store(url, read_only=True) as s:
        s.get_meta("schema_version")
    listed = set(backend.statements())
    writes = ("UNWIND $rows AS row MERGE (n:", "UNWIND $rows AS row CREATE (n:", "UNWIND $rows AS row MATCH (a:")
    unlisted = {q for q in sent if q not in listed and not q.startswith(writes)}
    assert not unlisted
    assert {q for q in sent if q.startswith(writes)} and set(backend.ddl()) <= set(sent)


def test_delete_model_in_batches_of_transactions(fstore, monkeypatch):
    kb = make_small_kb()
    _write(fstore, kb)
    # Every snippet of the small KB is shared between models: add one only alpha points at.
    alpha_neuron = kb.nodes["Neuron"].loc[kb.nodes["Neuron"]["model"] == "alpha", "id"].iloc[0]
    fstore.upsert_nodes("Snippet", pd.DataFrame({"id": ["alpha-only"]}))
    fstore.upsert_rels("ACTIVATES_ON", pd.DataFrame({"src": [alpha_neuron], "dst": ["alpha-only"], "kind": "top",
                                                     "rank": 9}))
    before = fstore.counts()
    fstore.delete_batch_size = 5
    transactions = []
    real = fstore._write
    monkeypatch.setattr(fstore, "_write", lambda work: transactions.append(1) or real(work))
    deleted = fstore.delete_model("alpha")
    n_alpha = int((kb.nodes["Neuron"]["model"] == "alpha").sum())
    assert deleted["Model"] == 1 and deleted["Neuron"] == n_alpha and deleted["Token"] == 0
    after = fstore.counts()
    assert after["Neuron"] == before["Neuron"] - n_alpha and after["Token"] == before["Token"]
    # The snippet only alpha's records pointed at went with them (checked batch by batch); the
    # shared ones stay.
    assert deleted["Snippet"] == 1 and after["Snippet"] == before["Snippet"] - 1
    assert fstore.cypher("MATCH (s:Snippet {id: 'alpha-only'}) RETURN s.id AS id").empty
    assert fstore.cypher("MATCH (n:Neuron {model: 'alpha'}) RETURN n.id AS id").empty
    assert len(transactions) > n_alpha // 5  # the neurons alone took that many batches
    # The last model of a tokenizer takes its tokens along.
    assert fstore.delete_model("beta")["Token"] == before["Token"]
    assert fstore.counts()["Token"] == 0 and fstore.counts()["Snippet"] == 0


# -- the test server itself ------------------------------------------------------------------
def test_falkordb_server_stops_even_when_the_test_fails():
    from servers import FalkorDBServer

    with pytest.raises(RuntimeError, match="boom"):
        with FalkorDBServer() as server:
            proc = server._proc
            port = server.port
            assert proc.poll() is None
            raise RuntimeError("boom")
    assert proc.wait(timeout=10) is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert subprocess.run(["kill", "-0", str(proc.pid)], capture_output=True).returncode != 0
