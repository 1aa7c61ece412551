"""The embedded engine: a knowledge base in one local directory, on LadybugDB.

LadybugDB (pip ``ladybug``, the maintained fork of Kùzu) is an in-process graph database
that speaks Cypher and bulk-loads Arrow and pandas frames with ``COPY``. The database is a
single file, so a store is a *directory* holding it, with room beside it for what belongs
to the knowledge base but not in the graph (FAISS indexes, ingest checkpoints)::

    <store>/graph.lbug      the graph (LadybugDB keeps its log and lock files beside it)
    <store>/artifacts/      files beside the graph: ingest checkpoints, vector indexes

Writes take the bulk path. In each batch, rows whose key is new are ``COPY``-ed (or, for a
node table that already holds rows, ``CREATE``-d); rows whose key exists are compared with
what is stored and only those that differ are ``SET``. A batch is atomic, so a failed batch
leaves the store as it was, and writing the same rows twice writes nothing the second time.
The one exception is LadybugDB failing in the checkpoint after a commit: see
``EmbeddedStore._write_failed``.

The engine's buffer pool is set from ``kb.config.buffer_pool_bytes()`` (or by the opener, as
``nkb delete-model`` does): LadybugDB's own default is most of the machine's memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ladybug as lb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kb import config, schema
from kb.cypher import quote as _q
from kb.errors import (
    NkbError,
    ParameterError,
    QueryError,
    QueryTimeout,
    SchemaError,
    StoreCorrupt,
    StoreNotFound,
)
from kb.stores.base import Store, check_schema_version

GRAPH_FILE = "graph.lbug"

# Arrow types matching the LadybugDB column types; frames are converted to these before
# they reach the engine, because its pandas scanner rejects nullable extension dtypes
# (Int64, boolean) and numpy arrays inside object columns, while Arrow nulls work for
# every type.
ARROW_TYPES: dict[str, pa.DataType] = {
    schema.STRING: pa.string(),
    schema.INT64: pa.int64(),
    schema.DOUBLE: pa.float64(),
    schema.BOOL: pa.bool_(),
    schema.FLOAT_LIST: pa.list_(pa.float32()),
    schema.DOUBLE_LIST: pa.list_(pa.float64()),
    schema.INT64_LIST: pa.list_(pa.int64()),
    schema.STRING_LIST: pa.list_(pa.string()),
}

_MISSING_KEY = re.compile(r"Unable to find primary key value (.*)\.$")
_NO_TRANSACTION = "No active transaction"
_OUT_OF_POOL = "The buffer pool is full"
_CHECKPOINT_FAILED = "post-commit checkpoint failed"
_RECOVERY_PENDING = "checkpoint recovery is pending"


def _var(prop: str) -> str:
    """The LOAD FROM column carrying ``prop``; prefixed so it can clash with no keyword or pattern variable."""
    return _q("_p_" + prop)


def primary_key(nt: schema.NodeType) -> str:
    return "id" if "id" in nt.columns else nt.columns[0]


# Neo4j's toString, which LadybugDB lacks (it has CAST and string()), so that the named queries
# keep one text for both engines. neurons_filter builds each neuron's id from its model, layer
# and index with it: reading the unique id strings of every neuron the scan passes cost 5 of its
# 7 ms on the demo KB. Integers and text convert as on Neo4j; a float prints with six decimals.
MACROS = ("CREATE MACRO toString(x) AS CAST(x AS STRING)",)


def table_ddl() -> list[str]:
    """``CREATE ... TABLE`` statements for every label and type in kb.schema (and the metadata table)."""
    statements = []
    for nt in (schema.META, *schema.NODES):
        cols = ", ".join(f"{_q(p.name)} {p.type}" for p in nt.props)
        statements.append(f"CREATE NODE TABLE {_q(nt.label)}({cols}, PRIMARY KEY({_q(primary_key(nt))}))")
    for rt in schema.RELS:
        cols = "".join(f", {_q(p.name)} {p.type}" for p in rt.props)
        forward_only = "" if rt.backward else " WITH (storage_direction = 'fwd')"
        statements.append(f"CREATE REL TABLE {_q(rt.type)}(FROM {_q(rt.src)} TO {_q(rt.dst)}{cols}){forward_only}")
    return statements


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _one_line(err: BaseException) -> str:
    """The engine's message in one line. Some run over several ("Function X did not receive
    correct arguments:" then the types); a parser error ends with the query and a caret
    line, which say nothing the first line does not."""
    lines = []
    for line in str(err).strip().splitlines():
        if line.startswith('"') or (line.strip() and not line.strip("^ ")):
            break
        lines.append(" ".join(line.split()))
    return " ".join(part for part in lines if part) or type(err).__name__


def _query_error(err: RuntimeError, timeout: float | None = None) -> NkbError:
    line = _one_line(err)
    if line == "Interrupted." and timeout is not None:
        return QueryTimeout(f"the query ran longer than its {timeout:g} s timeout and was cancelled",
                            "pass a longer --timeout (or timeout=), or narrow the query with LIMIT or a WHERE")
    kind, _, rest = line.partition(": ")
    if kind == "Parser exception":
        line = f"Cypher syntax error: {rest}"
    elif kind == "Binder exception":
        line = f"Cypher error: {rest}"
    if re.search(r"\bparameter\b", line, re.IGNORECASE):
        return ParameterError(line)
    backward = _NO_BACKWARD.search(line)
    if backward:
        rt = schema.rel_type(backward.group(1))
        return QueryError(f"Cypher error: this store keeps {rt.type} forward only, and the query walks it "
                          f"from its {rt.dst} end",
                          f"write the pattern from the {rt.src} side: (:{rt.src})-[:{rt.type}]->(:{rt.dst})")
    return QueryError(line)


# LadybugDB's words for a walk against a relationship table stored forward only.
_NO_BACKWARD = re.compile(r'Failed to get bwd data for rel table "([^"]+)"')


def _remove_empty(made: list[Path]) -> None:
    """Remove the directories a failed create made (outermost first in ``made``), where empty."""
    for path in reversed(made):
        try:
            path.rmdir()
        except OSError:
            return


class _Mixed(Exception):
    def __init__(self, a: str, b: str):
        super().__init__(f"{a} and {b}")


def _kind(value: Any) -> Any:
    """The engine type family of a parameter value: LadybugDB types a list by its first item
    and then fails on an item of another family (a ValueError from deep in its binding), so
    mixed lists are found here first. None fits anything."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, float, np.number)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple, np.ndarray)):
        kind = None
        for item in value:
            kind = _merge(kind, _kind(item))
        return ("list", kind)
    if isinstance(value, dict):
        return ("map", {str(k): _kind(v) for k, v in value.items()})
    return type(value).__name__


def _merge(a: Any, b: Any) -> Any:
    if a is None or a == b:
        return b if a is None else a
    if b is None:
        return a
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            return ("list", _merge(a[1], b[1]))
        if set(a[1]) != set(b[1]):
            # The engine would give every map the first one's keys, silently relabelling values.
            raise _Mixed(f"a map with keys {', '.join(sorted(a[1])) or '(none)'}",
                         f"a map with keys {', '.join(sorted(b[1])) or '(none)'}")
        return ("map", {k: _merge(a[1][k], b[1][k]) for k in a[1]})
    raise _Mixed(_describe(a), _describe(b))


def _describe(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "a list" if kind[0] == "list" else "a map"
    return "null" if kind is None else {"boolean": "a boolean", "number": "a number", "text": "text"}.get(kind, kind)


def _check_uniform(name: str, value: Any) -> None:
    """Refuse items of different families anywhere in one list (also across nested lists and
    between the maps of a list), which _check_param does not look for."""
    try:
        _kind(value)
    except _Mixed as e:
        raise ParameterError(f"parameter ${name} mixes {e} in one list, which the embedded engine cannot bind",
                             "give every item of a list (and every value of one key in a list of maps) one type")


def _check_param(name: str, value: Any) -> None:
    """Refuse list parameters LadybugDB cannot type: it infers a list's type from its items,
    so an empty list (or one of nulls) fails with "This should not happen", and one that
    mixes types fails with a Python conversion error."""
    if isinstance(value, dict):
        for v in value.values():
            _check_param(name, v)
    if not isinstance(value, list):
        return
    items = [v for v in value if v is not None]
    if not items:
        raise ParameterError(f"parameter ${name} is {'an empty list' if not value else 'a list of nulls only'}, "
                             "whose item type the embedded engine cannot tell",
                             "give at least one item that is not null, or pass null instead of the list")
    kinds = {_KINDS.get(type(v), type(v).__name__) for v in items}
    if len(kinds) > 1:
        raise ParameterError(f"parameter ${name} is a list that mixes {' and '.join(sorted(kinds))}; "
                             "the embedded engine needs one type per list", "pass items of one type")
    for v in items:
        _check_param(name, v)


_KINDS = {bool: "booleans", int: "numbers", float: "numbers", str: "text", list: "lists", dict: "maps"}


def _column(owner: str, prop: schema.Prop, values: pd.Series) -> pa.Array | pa.ChunkedArray:
    """A frame column as Arrow of the property's type; an Arrow-backed column stays as it is (chunked)."""
    try:
        return pa.array(values, type=ARROW_TYPES[prop.type], from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SchemaError(f"{owner}.{prop.name} must be {prop.type}: {_first_line(e)}") from None


def _as_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _differs(new: pa.Array, old: pa.Array) -> np.ndarray:
    """Per row: does ``new`` differ from ``old``? Nulls equal nulls; lists compare element by element."""
    if old.type != new.type:
        old = old.cast(new.type)
    if pa.types.is_list(new.type):
        return _lists_differ(new, old)
    both_null = pc.and_(new.is_null(), old.is_null())
    same = pc.or_(pc.fill_null(pc.equal(new, old), False), both_null)
    return ~same.to_numpy(zero_copy_only=False)


def _lists_differ(new: pa.Array, old: pa.Array) -> np.ndarray:
    # -1 marks a null list, so null vs empty and null vs null come out right from lengths alone.
    len_new = pc.fill_null(pc.list_value_length(new), -1).to_numpy(zero_copy_only=False)
    len_old = pc.fill_null(pc.list_value_length(old), -1).to_numpy(zero_copy_only=False)
    differs = len_new != len_old
    rows = np.flatnonzero(~differs & (len_new > 0))
    if len(rows):
        idx = pa.array(rows)
        items = _differs(pc.list_flatten(new.take(idx)), pc.list_flatten(old.take(idx)))
        owner = np.repeat(np.arange(len(rows)), len_new[rows])
        differs[rows[np.bincount(owner, weights=items, minlength=len(rows)) > 0]] = True
    return differs


class _Hashes:
    """A set of strings kept as their 64-bit hashes in one sorted array.

    A set of str would hold one small object per source, made while a batch's transient
    objects are alive, and each pins an arena of Python's small-object allocator: with the
    explanations' 1.36M MENTIONS rows (a fresh str per term), a set of their 47,616 sources
    kept ~120 MB that no trim gave back, enough to push the 8B-wide model's peak over its
    budget. A hash collision only makes ``isdisjoint`` say no, which costs a look-up.
    """

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)

    @staticmethod
    def _hash(values: pa.Array) -> np.ndarray:
        return pd.util.hash_array(np.asarray(values.to_numpy(zero_copy_only=False), dtype=object))

    def add(self, values: pa.Array) -> None:
        self._sorted = np.union1d(self._sorted, self._hash(values))

    def isdisjoint(self, values: pa.Array) -> bool:
        if not len(self._sorted):
            return True
        h = self._hash(values)
        at = np.minimum(np.searchsorted(self._sorted, h), len(self._sorted) - 1)
        return not bool((self._sorted[at] == h).any())


class EmbeddedStore(Store):
    """A knowledge base in a local directory (LadybugDB); no server."""

    engine = "embedded"
    # LadybugDB writes a relationship COPY straight to disk only while the table's node
    # group is empty; a later COPY into the same group rewrites what the group already holds
    # at the next checkpoint, so writing a table in many batches costs the square of the
    # batches. Measured on SmolLM2-sized activation records (921,600 rows, 64 floats each):
    # one COPY 13-20 s, one per layer (30) 86 s, with the later batches slowing from 0.5 s to
    # 5-7 s each. So a frame handed over whole reaches the engine whole; in Arrow a million
    # such records take a few hundred MB.
    default_batch_size = 1_000_000

    def __init__(self, url: str, *, read_only: bool = False, create: bool = False, buffer_pool: int | None = None):
        super().__init__(url, read_only=read_only)
        #: the engine's buffer pool in bytes (``config.buffer_pool_bytes()`` unless given)
        self.buffer_pool = buffer_pool or config.buffer_pool_bytes()
        self.path = Path(url).expanduser()
        self.graph_path = self.path / GRAPH_FILE
        self._db: lb.Database | None = None
        self._conn: lb.Connection | None = None
        # Per relationship type that was empty when this store first wrote to it: the
        # sources written since. Only they can have relationships of that type, so a batch
        # of other sources needs no look-up at all. Dropped by anything else that writes.
        self._sources_written: dict[str, _Hashes] = {}
        try:
            is_file = self.path.exists() and not self.path.is_dir()
            exists = self.graph_path.exists()
        except OSError as e:  # a name too long, a directory we may not enter...
            raise StoreNotFound(f"cannot use {url} as a knowledge base: {e.strerror or type(e).__name__}",
                                "pass a directory you can read (and write, to create one)") from None
        if is_file:
            raise StoreCorrupt(f"{url} is a file, not a knowledge-base directory",
                               f"pass the directory that holds {GRAPH_FILE}")
        if not exists:
            if not create:
                raise StoreNotFound(f"no knowledge base at {url}",
                                    f"create one with: nkb init --store {url}, or fill one with: nkb ingest --store {url}")
            self._create()
        self._open()

    # -- opening ------------------------------------------------------------------------
    def _connect(self, *, read_only: bool) -> tuple[lb.Database, lb.Connection]:
        try:
            db = lb.Database(str(self.graph_path), read_only=read_only, buffer_pool_size=self.buffer_pool)
            return db, lb.Connection(db)
        except RuntimeError as e:
            line = _first_line(e)
            if "lock" in line.lower():
                raise NkbError(f"the knowledge base at {self.url} is in use by another process ({line})",
                               "wait for it to finish, or open the store read-only") from None
            raise StoreCorrupt(f"the knowledge base at {self.url} cannot be opened: {line}",
                               f"restore {self.graph_path} from a backup, or re-ingest into a new store "
                               "with: nkb ingest --store NEWPATH") from None

    def _open(self) -> None:
        # Validate through a read-only handle first: a read-write open rewrites the file
        # header even when nothing else changes, and a store we refuse must stay untouched.
        # A store whose last checkpoint failed (see _write_failed) opens read-write only:
        # that open replays the log and finishes the checkpoint.
        try:
            db, conn = self._connect(read_only=True)
        except StoreCorrupt as e:
            if _RECOVERY_PENDING not in str(e):
                raise
            if self.read_only:
                raise StoreCorrupt(f"the knowledge base at {self.url} has a checkpoint to finish and cannot be "
                                   "opened read-only until then",
                                   "open it once for writing (e.g. run the interrupted nkb ingest again)") from None
            db, conn = self._connect(read_only=False)
        try:
            self._validate(conn)
        except NkbError:
            conn.close()
            db.close()
            raise
        if self.read_only:
            self._db, self._conn = db, conn
        else:
            conn.close()
            db.close()
            self._db, self._conn = self._connect(read_only=False)

    def _validate(self, conn: lb.Connection) -> None:
        try:
            tables = set(conn.execute("CALL show_tables() RETURN name").get_as_df()["name"])
            if schema.META.label not in tables:
                raise StoreCorrupt(f"{self.graph_path} is a LadybugDB database but not a neuron-kb store (no metadata)",
                                   "point --store at a knowledge base, or create one with: nkb init --store NEWPATH")
            rows = conn.execute(f"MATCH (m:{_q(schema.META.label)}) RETURN m.key AS key, m.value AS value").get_as_df()
        except RuntimeError as e:
            raise StoreCorrupt(f"the knowledge base at {self.url} cannot be read: {_first_line(e)}",
                               "restore it from a backup, or re-ingest into a new store with: nkb ingest --store NEWPATH") from None
        meta = dict(zip(rows["key"], rows["value"]))
        version = meta.get("schema_version")
        if version is None:
            raise StoreCorrupt(f"the knowledge base at {self.url} records no schema version",
                               "re-ingest into a new store with: nkb ingest --store NEWPATH")
        check_schema_version(self.url, version, meta.get("created_by"), "NEWPATH")
        missing = [t for t in (*schema.NODE_BY_LABEL, *schema.REL_BY_TYPE) if t not in tables]
        if missing:
            raise StoreCorrupt(f"the knowledge base at {self.url} lacks table(s) {', '.join(missing)}",
                               "re-ingest into a new store with: nkb ingest --store NEWPATH")

    def _create(self) -> None:
        from kb import __version__

        # The directories this creates, outermost first: a failed create removes them again.
        made = [p for p in (self.path, *self.path.parents) if not p.exists()][::-1]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _remove_empty(made)
            raise NkbError(f"cannot create a knowledge base at {self.url}: {e.strerror or type(e).__name__}",
                           "pass a directory you can write to with --store or $NKB_STORE") from None
        try:
            db, conn = self._connect(read_only=False)
        except NkbError:
            for leftover in self.path.glob(GRAPH_FILE + "*"):
                leftover.unlink()
            _remove_empty(made)
            raise
        try:
            conn.execute("BEGIN TRANSACTION")
            for statement in (*table_ddl(), *MACROS):
                conn.execute(statement)
            meta = pa.table({"key": ["schema_version", "created_by"],
                             "value": [str(schema.SCHEMA_VERSION), f"neuron-kb {__version__}"]})
            conn.execute(f"COPY {_q(schema.META.label)} FROM $rows", {"rows": meta})
            conn.execute("COMMIT")
        except RuntimeError as e:
            conn.close()
            db.close()
            # A half-made store would later read as corrupt; leave nothing behind instead.
            for leftover in self.path.glob(GRAPH_FILE + "*"):
                leftover.unlink()
            _remove_empty(made)
            raise NkbError(f"cannot create a knowledge base at {self.url}: {_first_line(e)}") from None
        conn.close()
        db.close()

    # -- plumbing -----------------------------------------------------------------------
    @property
    def conn(self) -> lb.Connection:
        if self._conn is None:
            raise NkbError(f"the knowledge base at {self.url} is closed", "open it again with open_store()")
        return self._conn

    def _execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return self.conn.execute(query, params or {})

    def _table(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._execute(query, params).get_as_arrow()

    def _scalar(self, query: str, params: dict[str, Any] | None = None) -> Any:
        rows = self._execute(query, params).get_all()
        return rows[0][0] if rows else None

    @contextmanager
    def _transaction(self, *, read_only: bool = False) -> Iterator[None]:
        self._execute("BEGIN TRANSACTION READ ONLY" if read_only else "BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._execute("COMMIT")

    def _rollback(self) -> None:
        try:
            self._execute("ROLLBACK")
        except RuntimeError as e:
            # A statement that fails inside a transaction makes the engine roll the whole
            # transaction back itself; then there is nothing left to roll back.
            if _NO_TRANSACTION not in str(e):
                raise

    def _node_count(self, label: str) -> int:
        return int(self._scalar(f"MATCH (n:{_q(label)}) RETURN count(*)"))

    def _rel_count(self, type_: str) -> int:
        return int(self._scalar(f"MATCH ()-[r:{_q(type_)}]->() RETURN count(*)"))

    # -- writing ------------------------------------------------------------------------
    def _upsert_nodes_batch(self, nt: schema.NodeType, df: pd.DataFrame) -> None:
        present = [p for p in nt.props if p.name in df.columns]
        cols = {p.name: _column(nt.label, p, df[p.name]) for p in present}
        pk = primary_key(nt)
        ids = cols[pk]
        # A repeated key in a COPY kills the process (LadybugDB 0.22), so make sure none
        # got past prepare_nodes, whatever the input types were.
        if pc.count_distinct(ids).as_py() != len(ids):
            raise SchemaError(f"{nt.label} rows repeat an id")
        values = [p for p in present if p.name != pk]
        label = _q(nt.label)
        match = f"MATCH (n:{label} {{{_q(pk)}: {_var(pk)}}})"
        try:
            new, changed = np.arange(len(ids)), np.array([], dtype=np.int64)
            filled = bool(self._node_count(nt.label))
            if filled:
                keys = pa.table({"_row": pa.array(np.arange(len(ids))), "_p_" + pk: ids})
                got = "".join(f", n.{_q(p.name)} AS {_var(p.name)}" for p in values)
                old = self._table(f"LOAD FROM $keys {match} RETURN _row{got}", {"keys": keys})
                new, changed = self._split(len(ids), cols, values, old["_row"].to_numpy(), old)
            writes = []
            if len(changed) and values:
                take = pa.array(changed)
                rows = pa.table({"_p_" + p.name: cols[p.name].take(take) for p in present})
                sets = ", ".join(f"n.{_q(p.name)} = {_var(p.name)}" for p in values)
                writes.append((f"LOAD FROM $rows {match} SET {sets}", {"rows": rows}))
            if len(new) and filled:
                # Every COPY into a node table pins about 16 MB of the buffer pool (the
                # primary-key index's pages) until the database is closed, whatever its size
                # (LadybugDB 0.22: 100 rows or 4,000 alike, CHECKPOINT does not free it), so
                # thirty per-layer COPYs held half a gigabyte. CREATE from the same frame
                # pins nothing; only a table's first batch, the big one, takes COPY.
                take = pa.array(new)
                rows = pa.table({"_p_" + p.name: cols[p.name].take(take) for p in present})
                props = ", ".join(f"{_q(p.name)}: {_var(p.name)}" for p in present)
                writes.append((f"LOAD FROM $rows CREATE (n:{label} {{{props}}})", {"rows": rows}))
            elif len(new):
                rows = pa.table({p.name: cols[p.name] if p.name in cols else pa.nulls(len(new), ARROW_TYPES[p.type])
                                 for p in nt.props})
                writes.append((f"COPY {label} FROM $rows", {"rows": rows}))
            self._write(writes)
        except RuntimeError as e:
            raise self._write_failed(e, len(ids), nt.label) from None

    def _upsert_rels_batch(self, rt: schema.RelType, df: pd.DataFrame) -> None:
        src = _column(rt.type, schema.Prop("src", schema.STRING), df["src"])
        dst = _column(rt.type, schema.Prop("dst", schema.STRING), df["dst"])
        present = [p for p in rt.props if p.name in df.columns]
        cols = {p.name: _column(rt.type, p, df[p.name]) for p in present}
        values = [p for p in present if p.name not in rt.key]
        copied = None
        try:
            new, changed = np.arange(len(src)), np.array([], dtype=np.int64)
            looked, found = self._stored_rels(rt, src, values)
            if found is not None and found.num_rows:
                rows, old = self._align(rt, src, dst, cols, found)
                new, changed = self._split(len(src), cols, values, rows, old)
            writes = []
            if len(changed) and values:
                take = pa.array(changed)
                rows = pa.table({"_src": src.take(take), "_dst": dst.take(take),
                                 **{"_p_" + p.name: cols[p.name].take(take) for p in present}})
                match = (f"MATCH (a:{_q(rt.src)} {{id: _src}})-[r:{_q(rt.type)}]->(b:{_q(rt.dst)} {{id: _dst}})"
                         + "".join(f" {'WHERE' if i == 0 else 'AND'} r.{_q(k)} = {_var(k)}"
                                   for i, k in enumerate(rt.key)))
                sets = ", ".join(f"r.{_q(p.name)} = {_var(p.name)}" for p in values)
                writes.append((f"LOAD FROM $rows {match} SET {sets}", {"rows": rows}))
            if len(new):
                take = None if len(new) == len(src) else pa.array(new)
                part = (lambda a: a) if take is None else (lambda a: a.take(take))
                copied = pa.table({"_src": part(src), "_dst": part(dst),
                                   **{p.name: part(cols[p.name]) if p.name in cols
                                      else pa.nulls(len(new), ARROW_TYPES[p.type]) for p in rt.props}})
                writes.append((f"COPY {_q(rt.type)} FROM $rows", {"rows": copied}))
            self._write(writes)
            if copied is not None and rt.type in self._sources_written:
                self._sources_written[rt.type].add(pc.unique(copied["_src"]))
            if copied is not None and looked:
                # A COPY into a relationship table that this handle has just read keeps
                # buffer-pool memory it never gives back until the database is closed
                # (LadybugDB 0.22). Measured on SmolLM2-sized lmhead edges written layer by
                # layer for a second model: about 55 MB more per layer at first, failing a
                # 1 GB pool after 5 of 30 layers (a 6 GB pool after 17); with a reopen after
                # each such COPY the process stayed at 0.32 GB. A reopen takes about 30 ms;
                # a first ingest, which never reads before it copies, never pays it.
                self._reopen()
        except RuntimeError as e:
            m = _MISSING_KEY.search(_first_line(e))
            if m and copied is not None:
                missing = m.group(1)
                label = rt.src if pc.any(pc.equal(copied["_src"], missing)).as_py() else rt.dst
                raise SchemaError(f"{rt.type} rows refer to a {label} that is not in the store: {missing!r}",
                                  f"write the {label} nodes before their {rt.type} relationships; "
                                  "the batch was rolled back") from None
            raise self._write_failed(e, len(src), rt.type) from None

    def _write_failed(self, err: RuntimeError, n: int, name: str) -> NkbError:
        """The error for a batch the engine refused, saying what is true of the store afterwards."""
        line = _first_line(err)
        more = ""
        if _OUT_OF_POOL in line:
            more = "; " + self._raise_pool()
        if _CHECKPOINT_FAILED in line:
            # LadybugDB reports the transaction committed and durable, yet (0.22, tested in
            # test_embedded_pool_full_after_commit) reopening the store can come back without
            # the batch. So this handle's view may not be what is on disk: close it, so nothing
            # more is read or written through it, and promise only what held in that test.
            self.close()
            return NkbError(f"writing {n} {name} rows failed after LadybugDB committed them: {line}",
                            "the batches before this one are stored; this one may be missing when the store "
                            "is opened again; run the same command again (writes are idempotent, ingest "
                            "resumes)" + more)
        return NkbError(f"writing {n} {name} rows failed: {line}",
                        "the batch was rolled back; the store is as it was" + more)

    def _stored_rels(self, rt: schema.RelType, src: pa.Array,
                     values: list[schema.Prop]) -> tuple[bool, pa.Table | None]:
        """Whether the table had to be read, and every stored relationship of this type leaving
        the batch's sources (None: there are none)."""
        # A first ingest writes new sources batch after batch, which must cost next to
        # nothing: a set look-up while this store has seen the table from empty, else one
        # cheap probe (0.07 s for 2,500 neurons, against 0.37 s for the fetch below, at 500k
        # stored activation records).
        sources = pa.table({"_src": pc.unique(src)})
        label, type_ = _q(rt.src), _q(rt.type)
        written = self._sources_written.get(rt.type)
        if written is None and not self._rel_count(rt.type):
            written = self._sources_written[rt.type] = _Hashes()
        if written is not None:
            if written.isdisjoint(sources["_src"]):
                return False, None
        else:
            probe = f"LOAD FROM $sources MATCH (a:{label} {{id: _src}})-[:{type_}]->() RETURN _src LIMIT 1"
            if not self._table(probe, {"sources": sources}).num_rows:
                return True, None
        # Fetched by source alone: matching on source *and* target makes the planner scan the
        # whole relationship table into a hash join, once per batch.
        got = "".join(f", r.{_q(name)} AS {_var(name)}" for name in (*rt.key, *(p.name for p in values)))
        return True, self._table(f"LOAD FROM $sources MATCH (a:{label} {{id: _src}})-[r:{type_}]->(b:{_q(rt.dst)}) "
                                 f"RETURN _src, b.id AS _dst{got}", {"sources": sources})

    @staticmethod
    def _align(rt: schema.RelType, src: pa.Array, dst: pa.Array, cols: dict[str, pa.Array],
               found: pa.Table) -> tuple[np.ndarray, pa.Table]:
        """Pair batch rows with the stored relationships of the same (src, dst, *key)."""
        keys = ["_src", "_dst", *("_p_" + k for k in rt.key)]
        batch = pa.table({"_row": pa.array(np.arange(len(src))), "_src": src, "_dst": dst,
                          **{"_p_" + k: cols[k] for k in rt.key}})
        stored = pa.table({k: _as_array(found[k]).cast(batch[k].type) for k in keys})
        stored = stored.append_column("_i", pa.array(np.arange(found.num_rows)))
        # Only integer payloads go through the join (Arrow joins refuse list columns).
        pairs = batch.join(stored, keys, join_type="inner")
        old = found.take(pairs["_i"])
        return pairs["_row"].to_numpy(), old

    def _write(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        """Run one batch's writing statements so that they all happen or none does."""
        # One statement is atomic by itself (a failing COPY writes nothing), so it runs in
        # auto-commit: inside BEGIN...COMMIT a relationship COPY is not written straight to
        # disk but spends about as long again at COMMIT, and on a busy disk we measured that
        # path over ten times slower (300k activation records: 34 s against more than 8 min).
        # Only a batch that both updates and adds needs the explicit transaction.
        if len(statements) == 1:
            self._execute(*statements[0])
            return
        with self._transaction():
            for query, params in statements:
                self._execute(query, params)

    @staticmethod
    def _split(n: int, cols: dict[str, pa.Array], values: list[schema.Prop], found: np.ndarray,
               old: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the batch (of ``n``) that are new, and stored ones whose values differ.

        ``found[i]`` is the batch row that the stored values ``old[i]`` belong to.
        """
        is_new = np.ones(n, dtype=bool)
        is_new[found] = False
        differs = np.zeros(len(found), dtype=bool)
        if len(found):
            take = pa.array(found)
            for p in values:
                differs |= _differs(cols[p.name].take(take), _as_array(old["_p_" + p.name]))
        return np.flatnonzero(is_new), np.unique(found[differs])

    # -- deleting (the steps are the base class's) ---------------------------------------
    # One transaction holds the whole delete, so nothing is gained by small batches.
    delete_batch_size = 2**62

    @contextmanager
    def _deleting(self, model_id: str) -> Iterator[None]:
        try:
            with self._transaction():
                yield
        except RuntimeError as e:
            line = _first_line(e)
            raise NkbError(f"deleting model {model_id!r} failed: {line}",
                           "nothing was deleted; the store is as it was"
                           + ("; " + self._raise_pool() if _OUT_OF_POOL in line else "")) from None

    def _raise_pool(self) -> str:
        return (f"raise LadybugDB's buffer pool (now {self.buffer_pool // 2**20} MB) with "
                f"{config.BUFFER_POOL_ENV}=MB or buffer_pool_mb in {config.config_path()}")

    def _rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        return self._execute(query, params).get_all()

    def _write_rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        return self._execute(query, params).get_all()

    def _forget_written(self) -> None:
        self._sources_written.clear()

    # -- reading ------------------------------------------------------------------------
    def _run(self, query: str, params: dict[str, Any], *, write: bool, timeout: float | None = None) -> pd.DataFrame:
        for name, value in params.items():
            _check_param(name, value)
            _check_uniform(name, value)
        # LadybugDB checks the timeout while it executes and interrupts the query; the
        # connection stays usable, and a read's transaction is rolled back with it.
        self.conn.set_query_timeout(0 if timeout is None else max(1, round(timeout * 1000)))
        try:
            if write:
                return self._result(self._execute(query, params))
            # The base class has already refused writing clauses by reading the text. A
            # READ ONLY transaction makes the engine refuse them too, so a write the lexical
            # guard cannot see (say, a procedure that writes) still fails on a read-write
            # store; a read-only store is protected by its read-only open as well.
            with self._transaction(read_only=True):
                return self._result(self._execute(query, params))
        except RuntimeError as e:
            raise _query_error(e, timeout) from None
        finally:
            if self._conn is not None:
                self._conn.set_query_timeout(0)

    @staticmethod
    def _result(result: Any) -> pd.DataFrame:
        # Several statements separated by ';' give one result each; the last one answers.
        if isinstance(result, list):
            result = result[-1]
        return result.get_as_df()

    def artifact_dir(self) -> Path:
        return self.path / "artifacts"

    def get_meta(self, key: str) -> str | None:
        value = self._scalar(f"MATCH (m:{_q(schema.META.label)} {{key: $k}}) RETURN m.value", {"k": key})
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        self._check_writable()
        self._execute(f"MERGE (m:{_q(schema.META.label)} {{key: $k}}) SET m.value = $v", {"k": key, "v": str(value)})

    def _reopen(self) -> None:
        """Close the database and open it again, as this handle had it: the one way to get
        back buffer-pool memory that LadybugDB keeps (see _upsert_rels_batch)."""
        self.close()
        self._db, self._conn = self._connect(read_only=self.read_only)

    #: A COPY holds what it writes in the buffer pool until it commits, several times over, and
    #: the checkpoint after it needs room too. With ACTIVATES_ON stored forward only, SmolLM2's
    #: 0.46 GB of Arrow records (0.49 GB as the stage's frame) in one COPY failed a 1.5 GiB pool
    #: and fit 2 GiB when the engine wrote them alone (scripts/bench_store_pool.py); in the real
    #: ingest, COPYs of 813k rows (a sixth of a 1.25 GiB pool) failed in the checkpoint after the
    #: second, while four of 460k rows fit a 1.5 GiB pool, five of 390k 1.25 GiB and six of 310k
    #: 1 GiB. A COPY gets at most this share of the pool, counted in the frame's bytes.
    copy_pool_share: int = 12

    def bulk_batch_rows(self, df: pd.DataFrame) -> int:
        if not len(df):
            return 1
        row_bytes = max(1, int(df.memory_usage(index=False, deep=True).sum()) // len(df))
        return max(1, min(len(df), self.buffer_pool // self.copy_pool_share // row_bytes))

    def release_memory(self) -> None:
        # The buffer pool keeps the pages a stage read or wrote resident until it needs the
        # room, so one stage's pages would sit beside the next stage's own memory.
        self._reopen()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._db is not None:
            self._db.close()
            self._db = None
