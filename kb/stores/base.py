"""The one backend contract every graph engine implements.

Callers hand whole frames (or iterables of frames) to ``upsert_nodes`` / ``upsert_rels``;
the store validates them against the schema, de-duplicates, splits them into batches and
writes each batch atomically with its engine's fastest path. Writing the same rows twice
changes nothing.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from kb import schema
from kb.errors import ParameterError, ReadOnlyViolation, SchemaError, SchemaVersionMismatch

Frames = pd.DataFrame | Iterable[pd.DataFrame] | Any  # a DataFrame, a pyarrow Table, or an iterable of them
Progress = Callable[[int], None]  # called with the number of rows just written

# Clauses that change a graph, in any of the dialects we speak.
_WRITE_CLAUSES = re.compile(
    r"\b(CREATE|MERGE|SET|DELETE|DETACH|REMOVE|DROP|ALTER|COPY|LOAD|INSTALL|ATTACH|IMPORT|EXPORT|FOREACH|CHECKPOINT)\b",
    re.IGNORECASE,
)
_STRINGS_AND_COMMENTS = re.compile(
    r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`|//[^\n]*|/\*.*?\*/""",
    re.DOTALL,
)


_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def check_params(query: str, params: dict[str, Any]) -> None:
    """Refuse a query whose ``$name`` placeholders are not all given: engines differ (LadybugDB
    binds a missing one as NULL, which turns a typo into an empty answer), so refuse on all."""
    needed = set(_PARAM.findall(_STRINGS_AND_COMMENTS.sub(" ", query)))
    missing = sorted(needed - set(params))
    if missing:
        raise ParameterError(f"the query needs parameter ${missing[0]}",
                             f"pass it as params={{{missing[0]!r}: ...}}, or -p {missing[0]}=VALUE on the command line")


def check_schema_version(url: str, version: str, created_by: str | None, new_location: str) -> None:
    """Refuse a store written by another schema version, saying what to do about it."""
    if version != str(schema.SCHEMA_VERSION):
        raise SchemaVersionMismatch(
            f"the knowledge base at {url} has schema version {version} "
            f"(written by {created_by or 'another neuron-kb version'}); "
            f"this neuron-kb expects schema version {schema.SCHEMA_VERSION}",
            "open it with the neuron-kb version that wrote it, or re-ingest into a new store with: "
            f"nkb ingest --store {new_location}")


def write_clause(query: str) -> str | None:
    """The first clause of ``query`` that writes, or None for a read-only query.

    String literals, quoted identifiers and comments are blanked first, so a query that
    merely *mentions* "CREATE" in a value or a comment is not refused.
    """
    m = _WRITE_CLAUSES.search(_STRINGS_AND_COMMENTS.sub(" ", query))
    return m.group(1).upper() if m else None


def check_read_only(query: str) -> None:
    clause = write_clause(query)
    if clause:
        raise ReadOnlyViolation(
            f"the query writes ({clause}) but the store is opened read-only",
            "pass write=True, or --write on the command line, if you mean to change the store",
        )


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
    return df.drop_duplicates(key, keep="last").reset_index(drop=True)


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
                n += len(batch)
                if progress:
                    progress(len(batch))
        return n

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
    def cypher(self, query: str, params: dict[str, Any] | None = None, *, write: bool = False) -> pd.DataFrame:
        """Run Cypher with parameters and return the rows as a DataFrame.

        Read-only unless ``write=True``: a query with a writing clause is refused before it
        reaches the engine, and the engine itself is asked for a read-only transaction
        where it offers one.
        """
        params = params or {}
        if not write:
            check_read_only(query)
        elif self.read_only:
            self._check_writable()
        check_params(query, params)
        return self._run(query, params, write=write)

    # -- engine-specific ----------------------------------------------------------------
    @abstractmethod
    def _upsert_nodes_batch(self, nt: schema.NodeType, df: pd.DataFrame) -> None: ...

    @abstractmethod
    def _upsert_rels_batch(self, rt: schema.RelType, df: pd.DataFrame) -> None: ...

    @abstractmethod
    def _run(self, query: str, params: dict[str, Any], *, write: bool) -> pd.DataFrame: ...

    @abstractmethod
    def delete_model(self, model_id: str) -> dict[str, int]:
        """Delete a model, its neurons and everything attached only to them.

        Returns how many nodes of each label were deleted. Tokens and snippets still used
        by another model stay.
        """

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of nodes per label and relationships per type (zero ones included)."""

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

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' read-only' if self.read_only else ''}>"
