"""The Neo4j engine: a knowledge base in a Neo4j 5 database, over Bolt.

URLs: ``bolt://``, ``bolt+s://``, ``neo4j://`` and ``neo4j+s://`` (and the ``+ssc``
variants), optionally naming the database in the path, ``bolt://host:7687/mydb``;
otherwise ``$NKB_NEO4J_DATABASE``, otherwise the server's default database. Credentials
come from ``kb.config.neo4j_credentials`` (URL, environment, config file) and are never
shown: every message carries the URL through ``kb.config.redact``.

Writes are batched ``UNWIND $rows ... MERGE`` statements, one managed write transaction per
batch (atomic, and retried by the driver on transient errors). Reads run in managed *read*
transactions, so the server itself refuses a write the lexical guard did not see.

Every Cypher text this module can send is built by the module-level functions below, and
``statements()`` lists them all, so a test can lint each one with Neo4j's own parser.

The same code also speaks to FalkorDB's Bolt listener, the Neo4j stand-in the test suite
runs without Docker. A ``dialect`` ("neo4j" | "falkordb"), found by probing the server,
switches only what FalkorDB cannot do: its index DDL differs and it has no uniqueness
constraints; its transactions are not transactions (every statement commits on its own),
so a relationship batch is checked for missing endpoints *before* it is written instead of
rolled back after; it labels every error "SyntaxError", so its parser errors are told apart
by their text.
"""

from __future__ import annotations

import datetime as dt
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
from kb.errors import (
    ConnectionFailed,
    NkbError,
    ParameterError,
    QueryError,
    ReadOnlyViolation,
    SchemaError,
    StoreCorrupt,
    StoreNotFound,
)
from kb.stores.base import Store, check_schema_version, model_meta_prefix

DATABASE_ENV = "NKB_NEO4J_DATABASE"
BATCH_SIZE_ENV = "NKB_NEO4J_BATCH_SIZE"
DEFAULT_BATCH_SIZE = 10_000
# Nodes (or activation records) removed per transaction by delete_model: a neuron brings
# its relationships along, and one transaction must stay well inside the server's
# transaction memory.
DELETE_BATCH = 2_000
DIALECTS = ("neo4j", "falkordb")

COMPOSE_HINT = ("start one with: NKB_NEO4J_PASSWORD=... docker compose -f docker/docker-compose.yml up -d, "
                "or check the URL")

# The driver logs connection trouble (say, "Unable to retrieve routing information") at
# ERROR; with no logging configured, Python would print that beside our one-line error.
# A NullHandler keeps it quiet there and still lets an application's handlers see it.
logging.getLogger("neo4j").addHandler(logging.NullHandler())

# FalkorDB's parser errors: "errMsg: Invalid input ... line: 1, column: 10, offset: 9 errCtx: <query> errCtxOffset: 9"
_FALKORDB_PARSE_ERROR = re.compile(r"^errMsg: (.*?)(?: errCtx: .*)?$")


# -- Cypher text: everything the backend sends is built here --------------------------------
def q(name: str) -> str:
    """A quoted identifier; several property names (index, rank, max...) are Cypher words elsewhere."""
    return "`" + name.replace("`", "``") + "`"


PROBE_NEO4J = "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition"
# Neo4j 5 removed db.indexes(); FalkorDB has it. Only sent once PROBE_NEO4J has failed.
PROBE_FALKORDB = "CALL db.indexes() YIELD label, properties RETURN label, properties"

META_GET = f"MATCH (m:{q(schema.META.label)} {{`key`: $key}}) RETURN m.`value` AS value"
META_SET = f"MERGE (m:{q(schema.META.label)} {{`key`: $key}}) SET m.`value` = $value"
# Is there data that is not ours? Creating a knowledge base on top of it would mix the two.
FOREIGN_DATA = f"MATCH (n) WHERE NOT n:{q(schema.META.label)} RETURN 1 AS found LIMIT 1"


def _index_name(label: str, prop: str) -> str:
    return f"nkb_{label.lower()}_{prop.lower()}"


def _unique_key(nt: schema.NodeType) -> str:
    return "key" if nt is schema.META else "id"


def ddl(dialect: str = "neo4j") -> list[str]:
    """Constraints and indexes from kb.schema: a unique key per label, plus NodeType.indexed."""
    out = []
    for nt in (schema.META, *schema.NODES):
        key = _unique_key(nt)
        if dialect == "neo4j":
            out.append(f"CREATE CONSTRAINT {_index_name(nt.label, key)} IF NOT EXISTS "
                       f"FOR (n:{q(nt.label)}) REQUIRE n.{q(key)} IS UNIQUE")
        else:
            # FalkorDB has no uniqueness constraints in Cypher; MERGE on an indexed id keeps ids unique.
            out.append(f"CREATE INDEX FOR (n:{q(nt.label)}) ON (n.{q(key)})")
        for prop in nt.indexed:
            if dialect == "neo4j":
                out.append(f"CREATE INDEX {_index_name(nt.label, prop)} IF NOT EXISTS "
                           f"FOR (n:{q(nt.label)}) ON (n.{q(prop)})")
            else:
                out.append(f"CREATE INDEX FOR (n:{q(nt.label)}) ON (n.{q(prop)})")
    return out


def _ddl_target(statement: str) -> tuple[str, str]:
    """(label, property) of a FalkorDB CREATE INDEX statement, to skip indexes that exist."""
    m = re.search(r"FOR \(n:`([^`]+)`\) ON \(n\.`([^`]+)`\)", statement)
    assert m, statement
    return m.group(1), m.group(2)


def upsert_nodes_query(nt: schema.NodeType, columns: list[str]) -> str:
    sets = [f"n.{q(c)} = row.{q(c)}" for c in nt.columns if c in columns and c != "id"]
    return (f"UNWIND $rows AS row MERGE (n:{q(nt.label)} {{id: row.id}})"
            + (f" SET {', '.join(sets)}" if sets else ""))


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


def node_count_query(label: str) -> str:
    return f"MATCH (n:{q(label)}) RETURN count(n) AS n"


def rel_count_query(type_: str) -> str:
    return f"MATCH ()-[r:{q(type_)}]->() RETURN count(r) AS n"


MODEL_TOKENIZER = "MATCH (m:`Model` {id: $model}) RETURN m.`tokenizer` AS tokenizer"
# Detach a batch of the model's activation records, returning the snippets they pointed at.
DETACH_RECORDS = ("MATCH (:`Neuron` {`model`: $model})-[r:`ACTIVATES_ON`]->(s:`Snippet`) "
                  "WITH r, s LIMIT $limit DELETE r RETURN collect(DISTINCT s.id) AS snippets")
DELETE_ORPHAN_SNIPPETS = ("UNWIND $ids AS sid MATCH (s:`Snippet` {id: sid}) "
                          "WHERE NOT (s)<-[:`ACTIVATES_ON`]-() DETACH DELETE s RETURN count(*) AS deleted")
OTHER_MODELS_WITH_TOKENIZER = ("MATCH (m:`Model`) WHERE m.`tokenizer` = $tokenizer AND m.id <> $model "
                               "RETURN count(m) AS n")
DELETE_TOKENS = ("MATCH (t:`Token`) WHERE t.`tokenizer` = $tokenizer "
                 "WITH t LIMIT $limit DETACH DELETE t RETURN count(*) AS deleted")
DELETE_UNUSED_SNIPPETS = ("MATCH (s:`Snippet`) WHERE s.`tokenizer` = $tokenizer AND NOT (s)<-[:`ACTIVATES_ON`]-() "
                          "WITH s LIMIT $limit DETACH DELETE s RETURN count(*) AS deleted")
DELETE_MODEL = "MATCH (m:`Model` {id: $model}) DETACH DELETE m RETURN count(*) AS deleted"
# The model's ingest records (done markers, saved configuration): left behind, they would make
# a new ingest under the same name skip the stages they mark done.
DELETE_MODEL_META = (f"MATCH (m:{q(schema.META.label)}) WHERE m.`key` STARTS WITH $prefix "
                     "DELETE m RETURN count(*) AS deleted")


def delete_by_model_query(nt: schema.NodeType) -> str:
    assert nt.model_prop
    return (f"MATCH (n:{q(nt.label)}) WHERE n.{q(nt.model_prop)} = $model "
            f"WITH n LIMIT $limit DETACH DELETE n RETURN count(*) AS deleted")


def statements(dialect: str = "neo4j") -> list[str]:
    """Every Cypher statement the backend can send in ``dialect`` (user queries aside).

    Upserts are listed with all their columns and with none but the keys: the statements
    for other column subsets are the same shape with fewer SET items.
    """
    out = [PROBE_NEO4J, *([PROBE_FALKORDB] if dialect == "falkordb" else []),
           META_GET, META_SET, FOREIGN_DATA, DELETE_MODEL_META, *ddl(dialect)]
    for nt in schema.NODES:
        out += [upsert_nodes_query(nt, nt.columns), upsert_nodes_query(nt, ["id"]), node_count_query(nt.label)]
        if nt.model_prop:
            out.append(delete_by_model_query(nt))
    for rt in schema.RELS:
        full = ["src", "dst", *rt.columns]
        out += [upsert_rels_query(rt, full), upsert_rels_query(rt, ["src", "dst", *rt.key]),
                missing_endpoint_query(rt), rel_count_query(rt.type)]
    out += [MODEL_TOKENIZER, DETACH_RECORDS, DELETE_ORPHAN_SNIPPETS, OTHER_MODELS_WITH_TOKENIZER,
            DELETE_TOKENS, DELETE_UNUSED_SNIPPETS, DELETE_MODEL]
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


def _param(name: str, value: Any) -> Any:
    """A query parameter as a value the driver can send (numpy and pandas values included)."""
    if value is pd.NA or value is pd.NaT:  # NaT passes for a datetime
        return None
    if value is None or isinstance(value, (bool, int, float, str, bytes, dt.date, dt.time, dt.timedelta)):
        return value
    if isinstance(value, np.generic):
        return _param(name, value.item())
    if isinstance(value, np.ndarray):
        return [_param(name, v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_param(name, v) for v in value]
    if isinstance(value, pd.Series):
        return [_param(name, v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): _param(name, v) for k, v in value.items()}
    raise ParameterError(f"parameter ${name} is a {type(value).__name__}, which cannot be sent to Neo4j",
                         "pass numbers, strings, booleans, lists or dicts")


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
    """kb.config.redact, also for a URL too broken to parse (say, a non-numeric port)."""
    try:
        return config.redact(url)
    except ValueError:
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


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
    """A knowledge base in a Neo4j database (or FalkorDB's Bolt listener, for tests)."""

    engine = "neo4j"

    def __init__(self, url: str, *, read_only: bool = False, create: bool = False, batch_size: int | None = None):
        # Only the redacted URL is kept where it can be shown (repr, messages).
        super().__init__(redact(url), read_only=read_only)
        self.default_batch_size = _batch_size(batch_size)
        self.delete_batch_size = DELETE_BATCH
        driver_url, self.database = parse_url(url)
        self.user, password = config.neo4j_credentials(url)
        self._secret = password
        self._bookmarks = neo4j.GraphDatabase.bookmark_manager()
        self._driver: neo4j.Driver | None = None
        self.dialect: str | None = None  # "neo4j" or "falkordb", once the server has answered
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
            self.dialect = self._detect_dialect()
            self._open(create=create and not read_only)
        except BaseException:
            # Whatever stopped the open, the driver's connections must not outlive it.
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        # Driver messages name hosts, not passwords; this makes sure of it (a password of a
        # character or two would only garble the message, and tells nothing on its own).
        return text.replace(self._secret, "***") if len(self._secret) > 2 else text

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

    def _detect_dialect(self) -> str:
        # FalkorDB introduces itself as "Neo4j/5.13.0", so ask for something only Neo4j has.
        try:
            rows = self._read(lambda tx: tx.run(PROBE_NEO4J).data(), opening=True)
            if rows and str(rows[0].get("name", "")).startswith("Neo4j"):
                return "neo4j"
        except QueryError:
            pass  # not Neo4j; see whether it is FalkorDB
        try:
            self._read(lambda tx: tx.run(PROBE_FALKORDB).consume(), opening=True)
        except QueryError:
            raise ConnectionFailed(f"the Bolt server at {self.url} is not Neo4j (nor FalkorDB)",
                                   "point the URL at a Neo4j 5 server") from None
        return "falkordb"

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

        todo = ddl(self.dialect)
        if self.dialect == "falkordb":
            # FalkorDB's CREATE INDEX has no IF NOT EXISTS: skip what an interrupted create made.
            existing = {(r["label"], p) for r in self._read(lambda tx: tx.run(PROBE_FALKORDB).data())
                        for p in r["properties"]}
            todo = [s for s in todo if _ddl_target(s) not in existing]
        for statement in todo:
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

    def _read(self, work: Callable[[neo4j.ManagedTransaction], Any], *, opening: bool = False) -> Any:
        return self._transact(neo4j.READ_ACCESS, work, opening)

    def _write(self, work: Callable[[neo4j.ManagedTransaction], Any]) -> Any:
        return self._transact(neo4j.WRITE_ACCESS, work, False)

    def _transact(self, mode: str, work: Callable[[neo4j.ManagedTransaction], Any], opening: bool) -> Any:
        try:
            with self._session(mode) as session:
                if mode == neo4j.READ_ACCESS:
                    return session.execute_read(work)
                return session.execute_write(work)
        except nx.Neo4jError as e:
            if opening and (e.code or "").endswith("Database.DatabaseNotFound"):
                raise self._open_error(e) from None
            raise self._query_error(e) from None
        except (nx.ServiceUnavailable, nx.SessionExpired) as e:
            raise ConnectionFailed(f"lost the connection to Neo4j at {self.url}: {self._reason(e)}",
                                   COMPOSE_HINT) from None

    def _query_error(self, e: nx.Neo4jError) -> NkbError:
        code = e.code or ""
        line = self._scrub(_first_line(e.message or "") or code)
        if self.dialect == "falkordb":
            m = _FALKORDB_PARSE_ERROR.match(line)
            if m:
                return QueryError(f"Cypher syntax error: {m.group(1)}")
            if line == "Missing parameters":
                return ParameterError("the query needs a parameter it was not given")
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
    def _upsert_nodes_batch(self, nt: schema.NodeType, df: pd.DataFrame) -> None:
        props = [p for p in nt.props if p.name in df.columns]
        rows = frame_rows(nt.label, props, df)
        query = upsert_nodes_query(nt, list(df.columns))
        self._write(lambda tx: tx.run(query, rows=rows).consume())

    def _upsert_rels_batch(self, rt: schema.RelType, df: pd.DataFrame) -> None:
        props = [schema.Prop("src", schema.STRING), schema.Prop("dst", schema.STRING),
                 *(p for p in rt.props if p.name in df.columns)]
        rows = frame_rows(rt.type, props, df)
        query = upsert_rels_query(rt, list(df.columns))
        ends = [{"src": r["src"], "dst": r["dst"]} for r in rows]

        def work(tx: neo4j.ManagedTransaction) -> None:
            if self.dialect == "falkordb":
                # FalkorDB cannot roll back, so look before writing.
                self._check_endpoints(tx, rt, ends)
            written = tx.run(query, rows=rows).single()["written"]
            if written != len(rows):
                # Raising inside the transaction function rolls the batch back.
                self._check_endpoints(tx, rt, ends)

        self._write(work)

    @staticmethod
    def _check_endpoints(tx: neo4j.ManagedTransaction, rt: schema.RelType, ends: list[dict]) -> None:
        missing = tx.run(missing_endpoint_query(rt), rows=ends).single()
        if missing is None:
            return
        label, value = (rt.src, missing["src"]) if missing["src_missing"] else (rt.dst, missing["dst"])
        raise SchemaError(f"{rt.type} rows refer to a {label} that is not in the store: {value!r}",
                          f"write the {label} nodes before their {rt.type} relationships; "
                          "the batch was not written")

    def delete_model(self, model_id: str) -> dict[str, int]:
        """See Store.delete_model. Runs as a series of batch transactions, the Model node
        last, so an interrupted delete is finished by running it again."""
        self._check_writable()
        found = self._read(lambda tx: tx.run(MODEL_TOKENIZER, model=model_id).data())
        if not found:
            raise NkbError(f"no model {model_id!r} in the store", "list the models with: nkb stats")
        tokenizer = found[0]["tokenizer"]
        deleted = {nt.label: 0 for nt in schema.NODES}

        def detach_records(tx: neo4j.ManagedTransaction) -> int | None:
            snippets = tx.run(DETACH_RECORDS, model=model_id, limit=self.delete_batch_size).single()["snippets"]
            if not snippets:
                return None
            return tx.run(DELETE_ORPHAN_SNIPPETS, ids=snippets).single()["deleted"]

        while (n := self._write(detach_records)) is not None:
            deleted["Snippet"] += n
        for nt in schema.NODES:
            if nt.model_prop:
                deleted[nt.label] += self._delete_all(delete_by_model_query(nt), model=model_id)
        if tokenizer is not None:
            others = self._read(lambda tx: tx.run(OTHER_MODELS_WITH_TOKENIZER, tokenizer=tokenizer,
                                                  model=model_id).single()["n"])
            if not others:
                deleted["Token"] += self._delete_all(DELETE_TOKENS, tokenizer=tokenizer)
                # No model reads this tokenizer any more, so its unattached snippets (say,
                # from an ingest killed before its records) can never be used.
                deleted["Snippet"] += self._delete_all(DELETE_UNUSED_SNIPPETS, tokenizer=tokenizer)
        self._write(lambda tx: tx.run(DELETE_MODEL_META, prefix=model_meta_prefix(model_id)).consume())
        deleted["Model"] += self._write(lambda tx: tx.run(DELETE_MODEL, model=model_id).single()["deleted"])
        return deleted

    def _delete_all(self, query: str, **params: Any) -> int:
        total = 0
        params["limit"] = self.delete_batch_size
        while n := self._write(lambda tx: tx.run(query, params).single()["deleted"]):
            total += n
        return total

    # -- reading ------------------------------------------------------------------------
    def _run(self, query: str, params: dict[str, Any], *, write: bool) -> pd.DataFrame:
        sent = {str(k): _param(str(k), v) for k, v in params.items()}

        def work(tx: neo4j.ManagedTransaction) -> pd.DataFrame:
            result = tx.run(query, sent)
            keys = list(result.keys())
            rows = [[_out(v) for v in record.values()] for record in result]
            return pd.DataFrame(rows, columns=keys) if rows else pd.DataFrame({k: [] for k in keys})

        return self._write(work) if write else self._read(work)

    def counts(self) -> dict[str, int]:
        def work(tx: neo4j.ManagedTransaction) -> dict[str, int]:
            out = {nt.label: tx.run(node_count_query(nt.label)).single()["n"] for nt in schema.NODES}
            out.update({rt.type: tx.run(rel_count_query(rt.type)).single()["n"] for rt in schema.RELS})
            return out

        return self._read(work)

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


__all__ = ["Neo4jStore", "statements", "ddl", "parse_url", "DIALECTS"]
