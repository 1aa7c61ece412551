"""The one backend contract every graph engine implements.

Callers hand whole frames (or iterables of frames) to ``upsert_nodes`` / ``upsert_rels``;
the store validates them against the schema, de-duplicates, splits them into batches and
writes each batch atomically with its engine's fastest path. Writing the same rows twice
changes nothing.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from kb import cypher, schema, terms
from kb.errors import NkbError, ParameterError, ReadOnlyViolation, SchemaError, SchemaVersionMismatch

Frames = pd.DataFrame | Iterable[pd.DataFrame] | Any  # a DataFrame, a pyarrow Table, or an iterable of them
Progress = Callable[[int], None]  # called with the number of rows just written

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_schema_version(url: str, version: str, created_by: str | None, new_location: str) -> None:
    """Refuse a store written by another schema version, saying what to do about it."""
    if version != str(schema.SCHEMA_VERSION):
        raise SchemaVersionMismatch(
            f"the knowledge base at {url} has schema version {version} "
            f"(written by {created_by or 'another neuron-kb version'}); "
            f"this neuron-kb expects schema version {schema.SCHEMA_VERSION}",
            "open it with the neuron-kb version that wrote it, or re-ingest into a new store with: "
            f"nkb ingest --store {new_location}")


def normalize_params(params: dict[str, Any]) -> dict[str, Any]:
    """Query parameters as plain Python values every engine takes: numpy and pandas values
    unwrapped, nulls as None, and what no engine can store refused with one clear line."""
    out = {}
    for name, value in params.items():
        if not isinstance(name, str):
            raise ParameterError(f"parameter names must be text, not {type(name).__name__} {name!r}")
        out[name] = _param_value(name, value)
    return out


def _param_value(name: str, value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return _param_value(name, value.item())
    if isinstance(value, bool) or isinstance(value, float):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ParameterError(f"parameter ${name} is {value}, outside the 64-bit integer range "
                                 f"({INT64_MIN} to {INT64_MAX})", "pass a smaller integer, or a float")
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ParameterError(f"parameter ${name} is not valid UTF-8 text (at character {e.start + 1})",
                                 "pass UTF-8 text") from None
        return value
    if isinstance(value, (bytes, dt.date, dt.time, dt.timedelta)):
        return value
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [_param_value(name, v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    if isinstance(value, dict):
        return {str(k): _param_value(name, v) for k, v in value.items()}
    raise ParameterError(f"parameter ${name} is a {type(value).__name__}, which no engine can take",
                         "pass numbers, strings, booleans, lists or dicts")


def iter_frames(rows: Frames) -> Iterator[pd.DataFrame]:
    """Yield DataFrames from a DataFrame, a pyarrow Table/RecordBatch, or an iterable of those."""
    if isinstance(rows, pd.DataFrame):
        yield rows
        return
    if hasattr(rows, "to_pandas"):
        yield rows.to_pandas()
        return
    for item in rows:
        if isinstance(item, pd.DataFrame):
            yield item
        elif hasattr(item, "to_pandas"):
            yield item.to_pandas()
        else:
            raise SchemaError(f"cannot write rows of type {type(item).__name__}", "pass pandas DataFrames or Arrow tables")


def chunks(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(df), size):
        yield df.iloc[start : start + size]


def prepare_nodes(nt: schema.NodeType, df: pd.DataFrame) -> pd.DataFrame:
    """Validate a node frame and drop repeated ids (the last row wins)."""
    if "id" not in df.columns:
        raise SchemaError(f"{nt.label} rows need an 'id' column")
    unknown = [c for c in df.columns if c not in nt.columns]
    if unknown:
        raise SchemaError(f"{nt.label} has no propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}",
                          f"{nt.label} properties: {', '.join(nt.columns)}")
    if df["id"].isna().any():
        raise SchemaError(f"{nt.label} rows with an empty id")
    return df.drop_duplicates("id", keep="last").reset_index(drop=True)


def prepare_rels(rt: schema.RelType, df: pd.DataFrame) -> pd.DataFrame:
    """Validate a relationship frame, fill defaulted key columns it lacks, and drop repeated keys
    (the last row wins)."""
    defaults = {p.name: p.default for p in rt.props if p.name in rt.key and p.default is not None}
    absent = {k: v for k, v in defaults.items() if k not in df.columns}
    if absent:
        df = df.assign(**absent)
    missing = [c for c in ("src", "dst", *rt.key) if c not in df.columns]
    if missing:
        raise SchemaError(f"{rt.type} rows need column(s) {', '.join(map(repr, missing))}",
                          f"{rt.type} rows: src, dst{''.join(', ' + k for k in rt.key)} and any of {', '.join(rt.columns) or 'no properties'}")
    unknown = [c for c in df.columns if c not in ("src", "dst", *rt.columns)]
    if unknown:
        raise SchemaError(f"{rt.type} has no propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}",
                          f"{rt.type} properties: {', '.join(rt.columns) or 'none'}")
    key = ["src", "dst", *rt.key]
    if df[key].isna().any().any():
        raise SchemaError(f"{rt.type} rows with an empty {'/'.join(key)}")
    repeated = df.duplicated(key, keep="last")
    # Taking every row of a frame copies its Arrow columns: only a frame with repeats pays it.
    return df[~repeated].reset_index(drop=True) if repeated.any() else df.reset_index(drop=True)


# -- the store's own Cypher, the same text on every engine ------------------------------------
def node_count_query(label: str) -> str:
    return f"MATCH (n:{cypher.quote(label)}) RETURN count(n) AS n"


def rel_count_query(type_: str) -> str:
    return f"MATCH ()-[r:{cypher.quote(type_)}]->() RETURN count(r) AS n"


def delete_by_model_query(nt: schema.NodeType) -> str:
    assert nt.model_prop
    return (f"MATCH (n:{cypher.quote(nt.label)}) WHERE n.{cypher.quote(nt.model_prop)} = $model "
            f"WITH n LIMIT $limit DETACH DELETE n RETURN count(*) AS deleted")


MODEL_TOKENIZER = "MATCH (m:`Model` {id: $model}) RETURN m.`tokenizer` AS tokenizer"
# Detach a batch of the model's activation records, returning the snippets they pointed at.
DETACH_RECORDS = ("MATCH (:`Neuron` {`model`: $model})-[r:`ACTIVATES_ON`]->(s:`Snippet`) "
                  "WITH r, s LIMIT $limit DELETE r RETURN collect(DISTINCT s.id) AS snippets")
# Which of these snippets a record still points at. Records are walked from their neuron:
# the embedded engine stores ACTIVATES_ON forward only (schema.RelType.backward).
USED_SNIPPETS = ("MATCH (:`Neuron`)-[:`ACTIVATES_ON`]->(s:`Snippet`) WHERE s.id IN $ids "
                 "RETURN DISTINCT s.id AS id")
DELETE_SNIPPETS = "UNWIND $ids AS sid MATCH (s:`Snippet` {id: sid}) DETACH DELETE s RETURN count(*) AS deleted"
TOKENIZER_SNIPPETS = "MATCH (s:`Snippet`) WHERE s.`tokenizer` = $tokenizer RETURN s.id AS id"
OTHER_MODELS_WITH_TOKENIZER = ("MATCH (m:`Model`) WHERE m.`tokenizer` = $tokenizer AND m.id <> $model "
                               "RETURN count(m) AS n")
DELETE_TOKENS = ("MATCH (t:`Token`) WHERE t.`tokenizer` = $tokenizer "
                 "WITH t LIMIT $limit DETACH DELETE t RETURN count(*) AS deleted")
# Texts that spell no token any more (their tokenizer's tokens are gone).
DELETE_UNUSED_TEXTS = ("MATCH (x:`TokenText`) WHERE NOT EXISTS { MATCH (x)-[:`SPELLS`]->(:`Token`) } "
                       "WITH x LIMIT $limit DELETE x RETURN count(*) AS deleted")
DELETE_MODEL = "MATCH (m:`Model` {id: $model}) DETACH DELETE m RETURN count(*) AS deleted"
# Terms no explanation mentions any more (their explanations are gone).
DELETE_UNUSED_TERMS = ("MATCH (t:`Term`) WHERE NOT EXISTS { MATCH (:`Explanation`)-[:`MENTIONS`]->(t) } "
                       "WITH t LIMIT $limit DELETE t RETURN count(*) AS deleted")
# The model's ingest records (done markers, saved configuration): left behind, they would make
# a new ingest under the same name skip the stages they mark done.
DELETE_MODEL_META = (f"MATCH (m:{cypher.quote(schema.META.label)}) WHERE m.`key` STARTS WITH $prefix "
                     "DELETE m RETURN count(*) AS deleted")


def model_meta_prefix(model_id: str) -> str:
    """The metadata keys of one model's ingest runs (done markers, saved configuration) start
    with this; deleting the model deletes them."""
    return f"ingest/{model_id}/"


def statements() -> list[str]:
    """Every statement the base class sends (each engine adds its own)."""
    out = [MODEL_TOKENIZER, DETACH_RECORDS, USED_SNIPPETS, DELETE_SNIPPETS, TOKENIZER_SNIPPETS,
           OTHER_MODELS_WITH_TOKENIZER, DELETE_TOKENS, DELETE_UNUSED_TEXTS, DELETE_UNUSED_TERMS, DELETE_MODEL_META,
           DELETE_MODEL]
    out += [node_count_query(nt.label) for nt in schema.NODES]
    out += [delete_by_model_query(nt) for nt in schema.NODES if nt.model_prop]
    out += [rel_count_query(rt.type) for rt in schema.RELS]
    return out


class Store(ABC):
    """A knowledge base on one graph engine."""

    #: Engine name shown to users: "embedded" or "neo4j".
    engine: str = ""
    #: Rows per atomic batch when the caller does not say.
    default_batch_size: int = 50_000

    def __init__(self, url: str, *, read_only: bool):
        self.url = url
        self.read_only = read_only

    # -- writing ------------------------------------------------------------------------
    def upsert_nodes(self, label: str, rows: Frames, *, batch_size: int | None = None,
                     progress: Progress | None = None) -> int:
        """Insert or update nodes by id; columns absent from the frame are left as they are."""
        nt = schema.node_type(label)
        self._check_writable()
        n = 0
        for df in iter_frames(rows):
            df = prepare_nodes(nt, df)
            for batch in chunks(df, batch_size or self.default_batch_size):
                self._upsert_nodes_batch(nt, batch)
                if nt.terms_of is not None and nt.terms_of in batch.columns:
                    self._write_terms(nt, batch)
                n += len(batch)
                if progress:
                    progress(len(batch))
        return n

    def _write_terms(self, nt: schema.NodeType, batch: pd.DataFrame) -> None:
        """The Term nodes and MENTIONS edges of a batch just written (kb.terms)."""
        nodes, mentions = terms.term_frames(batch["id"], batch[nt.terms_of])
        if len(mentions):
            self.upsert_nodes("Term", nodes)
            self.upsert_rels("MENTIONS", mentions)

    def upsert_rels(self, rel_type: str, rows: Frames, *, batch_size: int | None = None,
                    progress: Progress | None = None) -> int:
        """Insert or update relationships by (src, dst, *key). Both endpoints must exist."""
        rt = schema.rel_type(rel_type)
        self._check_writable()
        n = 0
        for df in iter_frames(rows):
            df = prepare_rels(rt, df)
            for batch in chunks(df, batch_size or self.default_batch_size):
                self._upsert_rels_batch(rt, batch)
                n += len(batch)
                if progress:
                    progress(len(batch))
        return n

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyViolation("the store is opened read-only", "open it with read_only=False, or pass --write")

    # -- reading ------------------------------------------------------------------------
    def cypher(self, query: str, params: dict[str, Any] | None = None, *, write: bool = False,
               timeout: float | None = None) -> pd.DataFrame:
        """Run Cypher with parameters and return the rows as a DataFrame.

        Read-only unless ``write=True``: a query with a writing clause (or a call of a
        procedure not known to be read-only) is refused before it reaches the engine, and the
        engine itself is asked for a read-only transaction. ``timeout`` (seconds; None or 0
        for none) cancels a query that runs longer; text too long or too deeply nested for
        the parser is refused first (kb.cypher.check_text).
        """
        timeout = cypher.check_timeout(timeout)
        cypher.check_text(query)
        if not write:
            cypher.check_read_only(query)
        elif self.read_only:
            self._check_writable()
        params = normalize_params(params or {})
        cypher.check_params(query, params)
        if write:
            self._forget_written()
        return self._run(query, params, write=write, timeout=timeout)

    def counts(self) -> dict[str, int]:
        """Number of nodes per label and relationships per type (zero ones included)."""
        out = {nt.label: self._count(node_count_query(nt.label)) for nt in schema.NODES}
        out.update({rt.type: self._count(rel_count_query(rt.type)) for rt in schema.RELS})
        return out

    def _count(self, query: str, params: dict[str, Any] | None = None) -> int:
        return int(self._rows(query, params or {})[0][0])

    # -- deleting -----------------------------------------------------------------------
    #: Nodes (or activation records) removed per statement by delete_model: a neuron brings
    #: its relationships along, and one server transaction must stay well inside its memory.
    delete_batch_size: int = 2_000

    def delete_model(self, model_id: str) -> dict[str, int]:
        """Delete a model, its neurons and everything attached only to them, and the records of
        its ingest runs (metadata under ``model_meta_prefix``).

        Returns how many nodes of each label were deleted. Tokens and snippets still used
        by another model stay. The steps run in batches of ``delete_batch_size``, the Model
        node last, inside ``_deleting`` (one transaction on the embedded engine; on a server,
        a transaction per batch, so an interrupted delete is finished by running it again).
        """
        self._check_writable()
        self._forget_written()
        deleted = {nt.label: 0 for nt in schema.NODES}
        with self._deleting(model_id):
            found = self._rows(MODEL_TOKENIZER, {"model": model_id})
            if not found:
                raise NkbError(f"no model {model_id!r} in the store", "list the models with: nkb stats")
            tokenizer = found[0][0]
            # Snippets are shared between models: only those this model's records point at
            # can become orphans by deleting it.
            limit = {"model": model_id, "limit": self.delete_batch_size}
            pointed_at: set[str] = set()
            while snippets := self._write_rows(DETACH_RECORDS, limit)[0][0]:
                if self.snippets_checked_per_batch:
                    deleted["Snippet"] += self._delete_unused_snippets(list(snippets))
                else:
                    pointed_at.update(snippets)
            deleted["Snippet"] += self._delete_unused_snippets(sorted(pointed_at))
            for nt in schema.NODES:
                if nt.model_prop:
                    deleted[nt.label] += self._delete_all(delete_by_model_query(nt), model=model_id)
            deleted["Term"] += self._delete_all(DELETE_UNUSED_TERMS)
            if tokenizer is not None and not self._count(OTHER_MODELS_WITH_TOKENIZER,
                                                         {"tokenizer": tokenizer, "model": model_id}):
                deleted["Token"] += self._delete_all(DELETE_TOKENS, tokenizer=tokenizer)
                deleted["TokenText"] += self._delete_all(DELETE_UNUSED_TEXTS)
                # No model reads this tokenizer any more, so its unattached snippets (say,
                # from an ingest killed before its records) can never be used.
                ids = [row[0] for row in self._rows(TOKENIZER_SNIPPETS, {"tokenizer": tokenizer})]
                deleted["Snippet"] += self._delete_unused_snippets(ids)
            self._write_rows(DELETE_MODEL_META, {"prefix": model_meta_prefix(model_id)})
            deleted["Model"] += int(self._write_rows(DELETE_MODEL, {"model": model_id})[0][0])
        return deleted

    #: Snippets checked per statement by _delete_unused_snippets. On the embedded engine each
    #: check reads every record once (they are stored forward only), so the batches are large.
    snippet_check_batch_size: int = 50_000
    #: Whether delete_model checks each batch's snippets as soon as their records are gone (a
    #: server, where every batch is its own transaction: an interrupted delete leaves no
    #: earlier batch's orphans behind), or all of them once at the end (one transaction, and a
    #: check that reads every record).
    snippets_checked_per_batch: bool = False

    def _delete_unused_snippets(self, ids: list[str]) -> int:
        """Delete the snippets of ``ids`` that no activation record points at; return how many."""
        total = 0
        for start in range(0, len(ids), self.snippet_check_batch_size):
            batch = ids[start:start + self.snippet_check_batch_size]
            used = {row[0] for row in self._rows(USED_SNIPPETS, {"ids": batch})}
            unused = [i for i in batch if i not in used]
            for at in range(0, len(unused), self.delete_batch_size):
                total += int(self._write_rows(DELETE_SNIPPETS, {"ids": unused[at:at + self.delete_batch_size]})[0][0])
        return total

    def _delete_all(self, query: str, **params: Any) -> int:
        total = 0
        params["limit"] = self.delete_batch_size
        while n := int(self._write_rows(query, params)[0][0]):
            total += n
        return total

    # -- engine-specific ----------------------------------------------------------------
    @abstractmethod
    def _upsert_nodes_batch(self, nt: schema.NodeType, df: pd.DataFrame) -> None: ...

    @abstractmethod
    def _upsert_rels_batch(self, rt: schema.RelType, df: pd.DataFrame) -> None: ...

    @abstractmethod
    def _run(self, query: str, params: dict[str, Any], *, write: bool, timeout: float | None = None) -> pd.DataFrame:
        """Run a user's query (already checked) in a read or write transaction."""

    @abstractmethod
    def _rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        """The rows of one of the store's own reading statements."""

    @abstractmethod
    def _write_rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        """The rows of one of the store's own writing statements, run as one unit."""

    @abstractmethod
    def _deleting(self, model_id: str) -> AbstractContextManager[None]:
        """The scope delete_model's statements run in."""

    def _forget_written(self) -> None:
        """Drop what the store remembers of its own writes: something else may have written."""

    @abstractmethod
    def artifact_dir(self) -> Path:
        """The local directory for files that belong to this knowledge base but not in its graph
        (ingest checkpoints, vector indexes). It may not exist yet; callers create what they need."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def bulk_batch_rows(self, df: pd.DataFrame) -> int:
        """Rows per write for a caller that wants ``df`` stored in as few writes as the store
        can take (``upsert_rels(..., batch_size=...)``)."""
        return self.default_batch_size

    def release_memory(self) -> None:
        """Give back memory the engine keeps for data this process no longer needs (between
        ingest stages); nothing to do for a server."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' read-only' if self.read_only else ''}>"
