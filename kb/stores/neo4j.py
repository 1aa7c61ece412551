"""The Neo4j engine: a knowledge base in a Neo4j 5 database, over Bolt.

URLs: ``bolt://``, ``bolt+s://``, ``neo4j://`` and ``neo4j+s://`` (and the ``+ssc``
variants), optionally naming the database in the path, ``bolt://host:7687/mydb``;
otherwise ``$NKB_NEO4J_DATABASE``, otherwise the server's default database. Credentials
come from ``kb.config.neo4j_credentials`` (URL, environment, config file) and are never
shown: every message carries the URL through ``kb.config.redact``.

Writes go in batches, one managed write transaction each (atomic, and retried by the driver
on transient errors). Keys that are new are written with ``UNWIND $rows ... CREATE``, and
only rows whose key exists go through ``MERGE ... SET``: MERGE looks each row up, and on a
first ingest nothing exists. Which keys exist the store knows without asking for a label (or
relationship type) it has seen empty and written since; otherwise one indexed look-up per
batch tells. A relationship batch is checked for endpoints the store does not know to exist
*before* it is written, so a batch that would fail sends nothing, and the count of rows
written is checked as well, the transaction rolled back when it falls short. Reads run in
managed *read* transactions, so the server itself refuses a write the lexical guard did not
see; a query timeout is the transaction timeout the driver sends.

Every Cypher text this module can send is built by the module-level functions below (and
those of kb.stores.base), and ``statements()`` lists them all, so a test can lint each one
with Neo4j's own parser. The module speaks Neo4j 5 only: the test suite's FalkorDB server is
adapted to it by its relay (tests/servers.py), not the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit, urlunsplit

import neo4j
import numpy as np
import pandas as pd
from neo4j import exceptions as nx

from kb import config, schema
from kb.cypher import quote as q
from kb.errors import (
    ConnectionFailed,
    NkbError,
    ParameterError,
    QueryError,
    QueryTimeout,
    ReadOnlyViolation,
    SchemaError,
    StoreCorrupt,
    StoreNotFound,
)
from kb.stores import base
from kb.stores.base import Store, check_schema_version

DATABASE_ENV = "NKB_NEO4J_DATABASE"
BATCH_SIZE_ENV = "NKB_NEO4J_BATCH_SIZE"
DEFAULT_BATCH_SIZE = 10_000

COMPOSE_HINT = ("start one with: NKB_NEO4J_PASSWORD=... docker compose -f docker/docker-compose.yml up -d, "
                "or check the URL")

# The driver logs connection trouble (say, "Unable to retrieve routing information") at
# ERROR; with no logging configured, Python would print that beside our one-line error.
# A NullHandler keeps it quiet there and still lets an application's handlers see it.
logging.getLogger("neo4j").addHandler(logging.NullHandler())


# -- Cypher text: everything the backend sends is built here --------------------------------
META_GET = f"MATCH (m:{q(schema.META.label)} {{`key`: $key}}) RETURN m.`value` AS value"
META_SET = f"MERGE (m:{q(schema.META.label)} {{`key`: $key}}) SET m.`value` = $value"
# Is there data that is not ours? Creating a knowledge base on top of it would mix the two.
FOREIGN_DATA = f"MATCH (n) WHERE NOT n:{q(schema.META.label)} RETURN 1 AS found LIMIT 1"


def _index_name(label: str, prop: str) -> str:
    return f"nkb_{label.lower()}_{prop.lower()}"


def _unique_key(nt: schema.NodeType) -> str:
    return "key" if nt is schema.META else "id"


def ddl() -> list[str]:
    """Constraints and indexes from kb.schema: a unique key per label, plus NodeType.indexed."""
    out = []
    for nt in (schema.META, *schema.NODES):
        key = _unique_key(nt)
        out.append(f"CREATE CONSTRAINT {_index_name(nt.label, key)} IF NOT EXISTS "
                   f"FOR (n:{q(nt.label)}) REQUIRE n.{q(key)} IS UNIQUE")
        for prop in nt.indexed:
            out.append(f"CREATE INDEX {_index_name(nt.label, prop)} IF NOT EXISTS "
                       f"FOR (n:{q(nt.label)}) ON (n.{q(prop)})")
    return out


def existing_nodes_query(nt: schema.NodeType) -> str:
    return f"UNWIND $ids AS id MATCH (n:{q(nt.label)} {{id: id}}) RETURN n.id AS id"


def create_nodes_query(nt: schema.NodeType, columns: list[str]) -> str:
    props = ", ".join(f"{q(c)}: row.{q(c)}" for c in nt.columns if c in columns)
    return f"UNWIND $rows AS row CREATE (n:{q(nt.label)} {{{props}}})"


def upsert_nodes_query(nt: schema.NodeType, columns: list[str]) -> str:
    sets = [f"n.{q(c)} = row.{q(c)}" for c in nt.columns if c in columns and c != "id"]
    return (f"UNWIND $rows AS row MERGE (n:{q(nt.label)} {{id: row.id}})"
            + (f" SET {', '.join(sets)}" if sets else ""))


def existing_rels_query(rt: schema.RelType) -> str:
    """Which rows (by their ``i``) name a relationship that exists."""
    key = "".join(f" {'WHERE' if n == 0 else 'AND'} r.{q(k)} = row.{q(k)}" for n, k in enumerate(rt.key))
    return (f"UNWIND $rows AS row MATCH (a:{q(rt.src)} {{id: row.src}})-[r:{q(rt.type)}]->(b:{q(rt.dst)} {{id: row.dst}})"
            f"{key} RETURN DISTINCT row.i AS i")


def create_rels_query(rt: schema.RelType, columns: list[str]) -> str:
    props = ", ".join(f"{q(c)}: row.{q(c)}" for c in rt.columns if c in columns)
    return (f"UNWIND $rows AS row "
            f"MATCH (a:{q(rt.src)} {{id: row.src}}) MATCH (b:{q(rt.dst)} {{id: row.dst}}) "
            f"CREATE (a)-[r:{q(rt.type)}{' {' + props + '}' if props else ''}]->(b)"
            " RETURN count(*) AS written")


def upsert_rels_query(rt: schema.RelType, columns: list[str]) -> str:
    key = ", ".join(f"{q(k)}: row.{q(k)}" for k in rt.key)
    sets = [f"r.{q(c)} = row.{q(c)}" for c in rt.columns if c in columns and c not in rt.key]
    return (f"UNWIND $rows AS row "
            f"MATCH (a:{q(rt.src)} {{id: row.src}}) MATCH (b:{q(rt.dst)} {{id: row.dst}}) "
            f"MERGE (a)-[r:{q(rt.type)}{' {' + key + '}' if key else ''}]->(b)"
            + (f" SET {', '.join(sets)}" if sets else "")
            + " RETURN count(*) AS written")


def missing_endpoint_query(rt: schema.RelType) -> str:
    return (f"UNWIND $rows AS row "
            f"OPTIONAL MATCH (a:{q(rt.src)} {{id: row.src}}) OPTIONAL MATCH (b:{q(rt.dst)} {{id: row.dst}}) "
            f"WITH row, a, b WHERE a IS NULL OR b IS NULL "
            f"RETURN row.src AS src, row.dst AS dst, a IS NULL AS src_missing LIMIT 1")


def statements() -> list[str]:
    """Every Cypher statement the backend can send (user queries aside).

    Writes are listed with all their columns and with none but the keys: the statements
    for other column subsets are the same shape with fewer properties.
    """
    out = [META_GET, META_SET, FOREIGN_DATA, *ddl()]
    for nt in schema.NODES:
        out += [existing_nodes_query(nt), create_nodes_query(nt, nt.columns), create_nodes_query(nt, ["id"]),
                upsert_nodes_query(nt, nt.columns), upsert_nodes_query(nt, ["id"])]
    for rt in schema.RELS:
        full, keys = ["src", "dst", *rt.columns], ["src", "dst", *rt.key]
        out += [existing_rels_query(rt), create_rels_query(rt, full), create_rels_query(rt, keys),
                upsert_rels_query(rt, full), upsert_rels_query(rt, keys), missing_endpoint_query(rt)]
    out += base.statements()
    return list(dict.fromkeys(out))


# -- values in and out -----------------------------------------------------------------------
_LIST_ITEM = {schema.FLOAT_LIST: np.float64, schema.DOUBLE_LIST: np.float64, schema.INT64_LIST: np.int64}


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def _is_null(value: Any) -> bool:
    return value is None or (not isinstance(value, (list, tuple, np.ndarray)) and bool(pd.isna(value)))


def _got(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    return f"got {type(value).__name__} {value!r}"


def _scalars(owner: str, prop: schema.Prop, s: pd.Series) -> np.ndarray:
    """The non-null values of ``s`` as a numpy array of the property's type."""
    arr = s.to_numpy()
    if prop.type == schema.STRING:
        bad = [v for v in arr if not isinstance(v, str)]
        if bad:
            raise ValueError(_got(bad[0]))
        return arr
    if prop.type == schema.BOOL:
        bad = [] if arr.dtype.kind == "b" else [v for v in arr if not isinstance(v, (bool, np.bool_))]
        if bad:
            raise ValueError(_got(bad[0]))
        return arr.astype(bool)
    if arr.dtype.kind in "OUS" and any(isinstance(v, (str, bytes)) for v in arr):
        raise ValueError(_got(next(v for v in arr if isinstance(v, (str, bytes)))))
    if prop.type == schema.INT64:
        ints = arr.astype(np.int64)
        if arr.dtype.kind == "f" and not np.array_equal(ints, arr):
            raise ValueError("got values with a fractional part")
        return ints
    return arr.astype(np.float64)


def _list_value(prop: schema.Prop, value: Any) -> list:
    if isinstance(value, str):
        raise ValueError(_got(value))
    if prop.type == schema.STRING_LIST:
        items = list(value)
        bad = [v for v in items if not isinstance(v, str)]
        if bad:
            raise ValueError(f"an item {_got(bad[0])}")
        return items
    return np.asarray(value, dtype=_LIST_ITEM[prop.type]).tolist()


def column_values(owner: str, prop: schema.Prop, s: pd.Series) -> list:
    """A frame column as plain Python values of the property's type, nulls as None."""
    try:
        if prop.type in _LIST_ITEM or prop.type == schema.STRING_LIST:
            return [None if _is_null(v) else _list_value(prop, v) for v in s.to_numpy(dtype=object)]
        null = s.isna().to_numpy()
        if not null.any():
            return _scalars(owner, prop, s).tolist()
        out = np.full(len(s), None, dtype=object)
        if not null.all():
            out[~null] = _scalars(owner, prop, s[~null]).tolist()
        return out.tolist()
    except (ValueError, TypeError, OverflowError) as e:
        raise SchemaError(f"{owner}.{prop.name} must be {prop.type}: {_first_line(str(e))}") from None


def frame_rows(owner: str, props: list[schema.Prop], df: pd.DataFrame) -> list[dict[str, Any]]:
    names = [p.name for p in props]
    columns = [column_values(owner, p, df[p.name]) for p in props]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _out(value: Any) -> Any:
    """A driver value as plain Python: nodes and relationships become dicts of their properties."""
    if isinstance(value, (neo4j.graph.Node, neo4j.graph.Relationship)):
        return {k: _out(v) for k, v in value.items()}
    if isinstance(value, neo4j.graph.Path):
        return {"nodes": [_out(n) for n in value.nodes], "relationships": [_out(r) for r in value.relationships]}
    if isinstance(value, list):
        return [_out(v) for v in value]
    if isinstance(value, dict):
        return {k: _out(v) for k, v in value.items()}
    if hasattr(value, "to_native"):  # neo4j.time values
        return value.to_native()
    return value


# -- the store -------------------------------------------------------------------------------
def redact(url: str) -> str:
    """kb.config.redact (which works on text, so also for a URL too broken to parse)."""
    return config.redact(url)


def parse_url(url: str) -> tuple[str, str | None]:
    """(URL for the driver, database name): the path names the database and is taken off,
    and so are credentials, which travel separately."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConnectionFailed(f"bad Neo4j URL {redact(url)}: {e}",
                               "use bolt://HOST:7687 or neo4j://HOST:7687, optionally with /DATABASE") from None
    if not parts.hostname:
        raise ConnectionFailed(f"bad Neo4j URL {redact(url)}: no host",
                               "use bolt://HOST:7687 or neo4j://HOST:7687, optionally with /DATABASE")
    path = unquote(parts.path.strip("/"))
    if "/" in path:
        raise ConnectionFailed(f"bad Neo4j URL {redact(url)}: the path must be one database name",
                               "use bolt://HOST:7687/DATABASE")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc, path="", fragment="")), (path or os.environ.get(DATABASE_ENV) or None)


def _batch_size(value: int | None) -> int:
    if value is None:
        raw = os.environ.get(BATCH_SIZE_ENV)
        if not raw:
            return DEFAULT_BATCH_SIZE
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise NkbError(f"{BATCH_SIZE_ENV} must be a positive number of rows, not {raw!r}")
    if value <= 0:
        raise NkbError(f"batch_size must be a positive number of rows, not {value}")
    return value


class Neo4jStore(Store):
    """A knowledge base in a Neo4j 5 database."""

    engine = "neo4j"
    snippets_checked_per_batch = True  # a transaction per batch (see Store.delete_model)

    def __init__(self, url: str, *, read_only: bool = False, create: bool = False, batch_size: int | None = None):
        # Only the redacted URL is kept where it can be shown (repr, messages).
        super().__init__(redact(url), read_only=read_only)
        self.default_batch_size = _batch_size(batch_size)
        driver_url, self.database = parse_url(url)
        self.user, password = config.neo4j_credentials(url)
        self._raw_url, self._secret = url, password
        self._bookmarks = neo4j.GraphDatabase.bookmark_manager()
        self._driver: neo4j.Driver | None = None
        # Per label: the ids this store has created since it found the label empty (so any
        # other id is new), or None when it found the label holding nodes. Per relationship
        # type: the sources written since it found the type empty, or None. Absent: not
        # looked at yet. Dropped by anything else that writes (see _forget_written).
        self._ids: dict[str, set[str] | None] = {}
        self._sources: dict[str, set[str] | None] = {}
        try:
            from kb import __version__

            self._driver = neo4j.GraphDatabase.driver(
                driver_url, auth=(self.user, password), user_agent=f"neuron-kb/{__version__}",
                telemetry_disabled=True)
        except (nx.ConfigurationError, ValueError) as e:
            raise ConnectionFailed(f"bad Neo4j URL {self.url}: {self._scrub(str(e))}",
                                   "use bolt://HOST:7687 or neo4j://HOST:7687, optionally with /DATABASE") from None
        try:
            self._connect()
            self._open(create=create and not read_only)
        except BaseException:
            # Whatever stopped the open, the driver's connections must not outlive it.
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        # Driver messages can echo the URI they were given (query string included) and name
        # hosts; this makes sure no password or query value gets through.
        return config.scrub(text, self._raw_url, self._secret)

    def _connect(self) -> None:
        try:
            self.driver.verify_connectivity()
        except nx.Neo4jError as e:
            raise self._open_error(e) from None
        except (nx.ServiceUnavailable, nx.SessionExpired, OSError) as e:
            raise ConnectionFailed(f"cannot reach Neo4j at {self.url}: {self._reason(e)}", COMPOSE_HINT) from None
        except nx.DriverError as e:
            raise ConnectionFailed(f"cannot connect to Neo4j at {self.url}: {self._reason(e)}", COMPOSE_HINT) from None

    def _reason(self, e: BaseException) -> str:
        text = " ".join(str(e).split())
        # "Couldn't connect to h:p (resolved to ...): Failed to establish ... (reason [Errno 111] Connection refused)"
        m = re.search(r"\(reason (.*)\)\s*$", text)
        return self._scrub(m.group(1) if m else _first_line(str(e)) or type(e).__name__)

    def _open_error(self, e: nx.Neo4jError) -> NkbError:
        code = e.code or ""
        if isinstance(e, nx.AuthError) or code.endswith(".Security.Unauthorized"):
            return ConnectionFailed(
                f"authentication failed for user {self.user!r} at {self.url}",
                f"check the user and password: in the URL, in NKB_NEO4J_USER / NKB_NEO4J_PASSWORD, "
                f"or in the [neo4j] section of {config.config_path()}")
        if code.endswith("Database.DatabaseNotFound"):
            return StoreNotFound(f"the Neo4j server at {self.url} has no database {self.database!r}",
                                 "name an existing database in the URL path, or leave it out for the default one")
        return ConnectionFailed(f"Neo4j at {self.url} refused the connection: {self._scrub(_first_line(e.message or ''))}",
                                COMPOSE_HINT)

    def _open(self, *, create: bool) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            if not create:
                raise StoreNotFound(f"no knowledge base at {self.url}",
                                    f"create one with: nkb init --store {self.url}, "
                                    f"or fill one with: nkb ingest --store {self.url}")
            if self._read(lambda tx: tx.run(FOREIGN_DATA).data()):
                raise StoreCorrupt(f"the database at {self.url} holds data but no neuron-kb metadata",
                                   "use an empty database (or clear this one) for a knowledge base")
            self._create()
            return
        check_schema_version(self.url, version, self.get_meta("created_by"), "NEWURL")

    def _create(self) -> None:
        from kb import __version__

        for statement in ddl():
            # Schema changes cannot share a transaction with data writes on Neo4j.
            self._write(lambda tx, s=statement: tx.run(s).consume())
        # The metadata goes last: a store without it reads as not created, so an
        # interrupted create is simply run again.
        self.set_meta("created_by", f"neuron-kb {__version__}")
        self.set_meta("schema_version", str(schema.SCHEMA_VERSION))

    # -- plumbing -----------------------------------------------------------------------
    @property
    def driver(self) -> neo4j.Driver:
        if self._driver is None:
            raise NkbError(f"the knowledge base at {self.url} is closed", "open it again with open_store()")
        return self._driver

    def _session(self, mode: str) -> neo4j.Session:
        return self.driver.session(database=self.database, default_access_mode=mode,
                                   bookmark_manager=self._bookmarks)

    def _read(self, work: Callable[[neo4j.ManagedTransaction], Any], *, opening: bool = False,
              timeout: float | None = None) -> Any:
        return self._transact(neo4j.READ_ACCESS, work, opening, timeout)

    def _write(self, work: Callable[[neo4j.ManagedTransaction], Any], *, timeout: float | None = None) -> Any:
        return self._transact(neo4j.WRITE_ACCESS, work, False, timeout)

    def _transact(self, mode: str, work: Callable[[neo4j.ManagedTransaction], Any], opening: bool,
                  timeout: float | None = None) -> Any:
        if timeout is not None:
            # Sent with BEGIN: the server terminates the transaction when it runs longer.
            work = neo4j.unit_of_work(timeout=timeout)(work)
        try:
            with self._session(mode) as session:
                if mode == neo4j.READ_ACCESS:
                    return session.execute_read(work)
                return session.execute_write(work)
        except nx.Neo4jError as e:
            if opening and (e.code or "").endswith("Database.DatabaseNotFound"):
                raise self._open_error(e) from None
            raise self._query_error(e, timeout) from None
        except (nx.ServiceUnavailable, nx.SessionExpired) as e:
            raise ConnectionFailed(f"lost the connection to Neo4j at {self.url}: {self._reason(e)}",
                                   COMPOSE_HINT) from None

    def _query_error(self, e: nx.Neo4jError, timeout: float | None = None) -> NkbError:
        code = e.code or ""
        line = self._scrub(_first_line(e.message or "") or code)
        if ".Transaction.TransactionTimedOut" in code and timeout is not None:
            return QueryTimeout(f"the query ran longer than its {timeout:g} s timeout and was cancelled",
                                "pass a longer --timeout (or timeout=), or narrow the query with LIMIT or a WHERE")
        if code.endswith("Statement.SyntaxError"):
            return QueryError(f"Cypher syntax error: {line}")
        if code.endswith("Statement.ParameterMissing"):
            return ParameterError(line)
        if code.endswith("Statement.AccessMode") or code.endswith("Security.Forbidden"):
            return ReadOnlyViolation(f"the server refused a write in a read transaction: {line}",
                                     "pass write=True, or --write on the command line, if you mean to change the store")
        if ".ClientError." in code:
            return QueryError(f"Cypher error: {line}")
        return QueryError(f"query failed: {line}")

    # -- writing ------------------------------------------------------------------------
    def _tracked(self, memo: dict[str, set[str] | None], name: str, count_query: str) -> set[str] | None:
        """What the store wrote under ``name`` since it found it empty; None when it was not empty."""
        if name not in memo:
            memo[name] = None if self._count(count_query) else set()
        return memo[name]

    def _upsert_nodes_batch(self, nt: schema.NodeType, df: pd.DataFrame) -> None:
        props = [p for p in nt.props if p.name in df.columns]
        rows = frame_rows(nt.label, props, df)
        ids = self._tracked(self._ids, nt.label, base.node_count_query(nt.label))
        if ids is not None:
            exists = {r["id"] for r in rows if r["id"] in ids}
        else:
            wanted = [r["id"] for r in rows]
            exists = set(self._read(lambda tx: tx.run(existing_nodes_query(nt), ids=wanted).value()))
        new = [r for r in rows if r["id"] not in exists]
        old = [r for r in rows if r["id"] in exists]
        columns = list(df.columns)

        def work(tx: neo4j.ManagedTransaction) -> None:
            if new:
                tx.run(create_nodes_query(nt, columns), rows=new).consume()
            if old:
                tx.run(upsert_nodes_query(nt, columns), rows=old).consume()

        self._write(work)
        if ids is not None:
            ids.update(r["id"] for r in new)

    def _upsert_rels_batch(self, rt: schema.RelType, df: pd.DataFrame) -> None:
        props = [schema.Prop("src", schema.STRING), schema.Prop("dst", schema.STRING),
                 *(p for p in rt.props if p.name in df.columns)]
        rows = frame_rows(rt.type, props, df)
        columns = list(df.columns)
        sources = self._tracked(self._sources, rt.type, base.rel_count_query(rt.type))
        # Only rows from a source already written to can name a relationship that exists.
        maybe = [i for i, r in enumerate(rows) if sources is None or r["src"] in sources]
        exists: set[int] = set()
        if maybe:
            keys = [{"i": i, "src": rows[i]["src"], "dst": rows[i]["dst"], **{k: rows[i][k] for k in rt.key}}
                    for i in maybe]
            exists = set(self._read(lambda tx: tx.run(existing_rels_query(rt), rows=keys).value()))
        new = [r for i, r in enumerate(rows) if i not in exists]
        old = [rows[i] for i in sorted(exists)]
        # Endpoints this store did not write itself are looked up before anything is sent.
        src_ids, dst_ids = self._ids.get(rt.src), self._ids.get(rt.dst)
        unsure = [{"src": r["src"], "dst": r["dst"]} for r in new
                  if src_ids is None or dst_ids is None or r["src"] not in src_ids or r["dst"] not in dst_ids]

        def work(tx: neo4j.ManagedTransaction) -> None:
            if unsure:
                self._check_endpoints(tx, rt, unsure)
            if new and tx.run(create_rels_query(rt, columns), rows=new).single()["written"] != len(new):
                # Raising inside the transaction function rolls the batch back.
                self._check_endpoints(tx, rt, [{"src": r["src"], "dst": r["dst"]} for r in new])
                raise NkbError(f"writing {len(rows)} {rt.type} rows failed: fewer were written than sent",
                               "the batch was rolled back")
            if old:
                tx.run(upsert_rels_query(rt, columns), rows=old).consume()

        self._write(work)
        if sources is not None:
            sources.update(r["src"] for r in new)

    @staticmethod
    def _check_endpoints(tx: neo4j.ManagedTransaction, rt: schema.RelType, ends: list[dict]) -> None:
        missing = tx.run(missing_endpoint_query(rt), rows=ends).single()
        if missing is None:
            return
        label, value = (rt.src, missing["src"]) if missing["src_missing"] else (rt.dst, missing["dst"])
        raise SchemaError(f"{rt.type} rows refer to a {label} that is not in the store: {value!r}",
                          f"write the {label} nodes before their {rt.type} relationships; "
                          "the batch was not written")

    def _forget_written(self) -> None:
        self._ids.clear()
        self._sources.clear()

    # -- the base class's own statements ----------------------------------------------------
    def _deleting(self, model_id: str) -> contextlib.AbstractContextManager[None]:
        # A transaction per statement (see delete_model): nothing to open around them.
        return contextlib.nullcontext()

    def _rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        return self._read(lambda tx: [list(r.values()) for r in tx.run(query, params)])

    def _write_rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        return self._write(lambda tx: [list(r.values()) for r in tx.run(query, params)])

    # -- reading ------------------------------------------------------------------------
    def _run(self, query: str, params: dict[str, Any], *, write: bool, timeout: float | None = None) -> pd.DataFrame:
        def work(tx: neo4j.ManagedTransaction) -> pd.DataFrame:
            result = tx.run(query, params)
            keys = list(result.keys())
            rows = [[_out(v) for v in record.values()] for record in result]
            return pd.DataFrame(rows, columns=keys) if rows else pd.DataFrame({k: [] for k in keys})

        return self._write(work, timeout=timeout) if write else self._read(work, timeout=timeout)

    def artifact_dir(self) -> Path:
        return config.server_artifact_dir(self.url, self.database)

    def get_meta(self, key: str) -> str | None:
        rows = self._read(lambda tx: tx.run(META_GET, key=key).data(), opening=True)
        value = rows[0]["value"] if rows else None
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        self._check_writable()
        self._write(lambda tx: tx.run(META_SET, key=key, value=str(value)).consume())

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
            self._driver = None


__all__ = ["Neo4jStore", "statements", "ddl", "parse_url"]
