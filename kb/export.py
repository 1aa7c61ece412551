"""Moving a whole knowledge base: export to files, import from them.

Two export formats, one file per label and relationship type, written streaming (a batch of
rows at a time, whatever the size of the KB):

- ``parquet``: ``nodes/<Label>.parquet``, ``relationships/<TYPE>.parquet`` (columns ``src``,
  ``dst`` and the properties) and ``meta.parquet`` (the store's ingest markers), typed as in
  ``kb.schema``. ``import_kb`` loads it into any store, so a KB built on a laptop moves to a
  server.
- ``neo4j-admin``: CSV files for ``neo4j-admin database import full``, with the header
  grammar its documentation gives: ``id:ID(<Label>)`` (the id is kept as the ``id`` property
  and is unique within the label's id space), ``:LABEL``, ``:START_ID(<Label>)``,
  ``:END_ID(<Label>)``, ``:TYPE``, and typed properties (``:long``, ``:double``,
  ``:boolean``, ``:string``, and ``[]`` arrays). Arrays are joined with
  ``ARRAY_DELIMITER`` (U+001F, the ASCII unit separator, which token text practically never
  holds; a value that does is refused rather than split wrongly). ``import.sh`` beside the
  files holds the exact command.

Both write into a fresh directory: everything goes to a temporary sibling first and is
renamed into place at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kb import schema
from kb.cypher import quote as _q
from kb.errors import NkbError
from kb.stores.embedded import ARROW_TYPES  # the Arrow type of each schema type, as the embedded engine loads it

EXPORT_FORMAT = "neuron-kb-export"
FORMATS = ("parquet", "neo4j-admin")
MANIFEST = "manifest.json"
ARRAY_DELIMITER = "\x1f"
# Meta keys that belong to the store itself, not to what it holds.
_STORE_META = ("schema_version", "created_by")
_ID_BATCH = 20_000  # nodes fetched per query
_SOURCE_BATCH = 2_000  # source nodes whose relationships are fetched per query

NEO4J_TYPES: dict[str, str] = {
    schema.STRING: "string",
    schema.INT64: "long",
    schema.DOUBLE: "double",
    schema.BOOL: "boolean",
    schema.FLOAT_LIST: "float[]",
    schema.DOUBLE_LIST: "double[]",
    schema.INT64_LIST: "long[]",
    schema.STRING_LIST: "string[]",
}

Progress = Callable[[str, int], None]  # (file name, rows just written)


@dataclass
class ExportReport:
    path: str
    format: str
    rows: dict[str, int] = field(default_factory=dict)


# -- reading a store in batches -----------------------------------------------------------------

def _ids(store, label: str) -> list[str]:
    df = store.cypher(f"MATCH (n:{_q(label)}) RETURN n.id AS id")
    return sorted(str(i) for i in df["id"])


def iter_nodes(store, nt: schema.NodeType, batch: int = _ID_BATCH) -> Iterator[pd.DataFrame]:
    """Every node of one label, ``batch`` at a time, ordered by id; columns as in the schema."""
    cols = ", ".join(f"n.{_q(c)} AS {_q(c)}" for c in nt.columns)
    ids = _ids(store, nt.label)
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        df = store.cypher(f"UNWIND $ids AS i MATCH (n:{_q(nt.label)} {{id: i}}) RETURN {cols}", {"ids": chunk})
        yield df.sort_values("id", kind="stable").reset_index(drop=True)


def iter_rels(store, rt: schema.RelType, batch: int = _SOURCE_BATCH) -> Iterator[pd.DataFrame]:
    """Every relationship of one type, grouped by source node (``batch`` sources at a time)."""
    cols = "".join(f", r.{_q(c)} AS {_q(c)}" for c in rt.columns)
    ids = _ids(store, rt.src)
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        df = store.cypher(f"UNWIND $ids AS i MATCH (a:{_q(rt.src)} {{id: i}})-[r:{_q(rt.type)}]->(b:{_q(rt.dst)}) "
                          f"RETURN a.id AS src, b.id AS dst{cols}", {"ids": chunk})
        if len(df):
            yield df.sort_values(["src", "dst", *rt.key], kind="stable").reset_index(drop=True)


def _meta(store) -> pd.DataFrame:
    df = store.cypher(f"MATCH (m:{_q(schema.META.label)}) RETURN m.key AS key, m.value AS value")
    df = df[~df["key"].isin(_STORE_META)]
    return df.sort_values("key").reset_index(drop=True)


def _table(props: tuple[schema.Prop, ...], df: pd.DataFrame, extra: tuple[str, ...] = ()) -> pa.Table:
    cols = {name: pa.array(df[name].astype(str), type=pa.string()) for name in extra}
    for p in props:
        values = df[p.name] if p.name in df else pd.Series([None] * len(df), dtype=object)
        cols[p.name] = pa.array([_cell(v) for v in values], type=ARROW_TYPES[p.type])
    return pa.table(cols)


def _cell(value):
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# -- export -------------------------------------------------------------------------------------

def export_kb(store, dest: str | Path, fmt: str = "parquet", progress: Progress | None = None) -> ExportReport:
    """Write the whole KB to the new or empty directory ``dest`` in ``fmt``; see the module docstring."""
    if fmt not in FORMATS:
        raise NkbError(f"unknown export format {fmt!r}", f"formats: {', '.join(FORMATS)}")
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise NkbError(f"export directory {dest} is not empty", "export into a new or empty directory")
    parent = dest.parent
    if not parent.is_dir():
        raise NkbError(f"cannot export to {dest}: {parent} does not exist", "create the parent directory first")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as e:
        raise NkbError(f"cannot export to {dest}: {e.strerror}") from None
    report = ExportReport(str(dest), fmt)
    try:
        writer = _write_parquet if fmt == "parquet" else _write_neo4j_admin
        writer(store, tmp, report, progress or (lambda name, n: None))
        manifest = {"format": EXPORT_FORMAT, "export_format": fmt, "schema_version": schema.SCHEMA_VERSION,
                    "created_by": _created_by(), "rows": report.rows}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _created_by() -> str:
    from kb import __version__

    return f"neuron-kb {__version__}"


def _write_parquet(store, root: Path, report: ExportReport, progress: Progress) -> None:
    (root / "nodes").mkdir()
    (root / "relationships").mkdir()
    for nt in schema.NODES:
        _parquet_file(root / "nodes" / f"{nt.label}.parquet", (_table(nt.props, df) for df in iter_nodes(store, nt)),
                      pa.schema([(p.name, ARROW_TYPES[p.type]) for p in nt.props]), nt.label, report, progress)
    for rt in schema.RELS:
        rel_schema = pa.schema([("src", pa.string()), ("dst", pa.string()),
                                *((p.name, ARROW_TYPES[p.type]) for p in rt.props)])
        _parquet_file(root / "relationships" / f"{rt.type}.parquet",
                      (_table(rt.props, df, ("src", "dst")) for df in iter_rels(store, rt)),
                      rel_schema, rt.type, report, progress)
    meta = _meta(store)
    pq.write_table(pa.table({"key": pa.array(meta["key"], pa.string()), "value": pa.array(meta["value"], pa.string())}),
                   root / "meta.parquet")


def _parquet_file(path: Path, tables: Iterator[pa.Table], file_schema: pa.Schema, name: str,
                  report: ExportReport, progress: Progress) -> None:
    report.rows[name] = 0
    with pq.ParquetWriter(path, file_schema) as writer:
        for table in tables:
            writer.write_table(table.select(file_schema.names).cast(file_schema))
            report.rows[name] += table.num_rows
            progress(name, table.num_rows)


def _header(p: schema.Prop) -> str:
    return f"{p.name}:{NEO4J_TYPES[p.type]}"


def _csv_value(value, prop_type: str, where: str) -> str:
    value = _cell(value)
    if value is None:
        return ""
    if prop_type.endswith("[]"):
        parts = [_scalar(v) for v in value]
        if any(ARRAY_DELIMITER in s for s in parts):
            raise NkbError(f"{where} holds the array delimiter U+001F in a list value, which neo4j-admin would split",
                           "export with --format parquet instead")
        return ARRAY_DELIMITER.join(parts)
    return _scalar(value)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _write_neo4j_admin(store, root: Path, report: ExportReport, progress: Progress) -> None:
    nodes, rels = [], []
    meta_label = schema.META.label
    for nt in (*schema.NODES, schema.META):
        path = root / f"{nt.label}.csv"
        key = "id" if nt is not schema.META else "key"
        header = [f"{key}:ID({nt.label})" if p.name == key else _header(p) for p in nt.props] + [":LABEL"]
        frames = iter_nodes(store, nt) if nt is not schema.META else iter([_meta(store)])
        report.rows[nt.label] = _csv_file(path, header, frames, [(p.name, p.type) for p in nt.props],
                                          [nt.label], nt.label, progress)
        nodes.append(path.name)
    for rt in schema.RELS:
        path = root / f"{rt.type}.csv"
        header = [f":START_ID({rt.src})", f":END_ID({rt.dst})", *(_header(p) for p in rt.props), ":TYPE"]
        columns = [("src", schema.STRING), ("dst", schema.STRING), *((p.name, p.type) for p in rt.props)]
        report.rows[rt.type] = _csv_file(path, header, iter_rels(store, rt), columns, [rt.type], rt.type, progress)
        rels.append(path.name)
    # Store metadata is a node label too, so an imported database opens as a neuron-kb store.
    version_rows = [("schema_version", str(schema.SCHEMA_VERSION)), ("created_by", _created_by())]
    with open(root / f"{meta_label}-store.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([f"key:ID({meta_label})", "value:string", ":LABEL"])
        w.writerows([(k, v, meta_label) for k, v in version_rows])
    nodes.append(f"{meta_label}-store.csv")
    (root / "import.sh").write_text(_import_script(nodes, rels))
    (root / "import.sh").chmod(0o755)


def _csv_file(path: Path, header: list[str], frames: Iterator[pd.DataFrame], columns: list[tuple[str, str]],
              tail: list[str], name: str, progress: Progress) -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for df in frames:
            values = [df[c].tolist() if c in df else [None] * len(df) for c, _ in columns]
            for i, row in enumerate(zip(*values)):
                w.writerow([_csv_value(v, t, f"{name} row {n + i + 1}") for v, (_, t) in zip(row, columns)] + tail)
            n += len(df)
            progress(name, len(df))
    return n


def _import_script(nodes: list[str], rels: list[str]) -> str:
    args = " \\\n  ".join([*(f"--nodes=/import/{n}" for n in nodes), *(f"--relationships=/import/{r}" for r in rels)])
    return f"""#!/bin/sh
# Loads this export into an empty Neo4j 5 database with neo4j-admin (the database must be stopped,
# or not exist yet). Run it where neo4j-admin sees this directory as /import; see docker/ in neuron-kb:
#   docker/neo4j-admin-import.sh THIS_DIRECTORY [DATABASE]
set -eu
exec neo4j-admin database import full "${{1:-neo4j}}" --overwrite-destination=true \\
  --id-type=string --array-delimiter=U+001F --multiline-fields=true \\
  {args}
"""


# -- import -------------------------------------------------------------------------------------

def read_manifest(src: str | Path) -> dict:
    """The manifest of a Parquet export in ``src``; refuses anything else, naming what is wrong."""
    src = Path(src).expanduser()
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NkbError(f"{src} is not a neuron-kb export (no {MANIFEST})",
                       "pass a directory written by: nkb export DIR --format parquet") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NkbError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise NkbError(f"{src} is not a neuron-kb export ({MANIFEST} says another format)",
                       "pass a directory written by: nkb export DIR --format parquet")
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        newer = isinstance(version, int) and version > schema.SCHEMA_VERSION
        raise NkbError(f"{src} holds schema version {version}; this neuron-kb reads schema version "
                       f"{schema.SCHEMA_VERSION}",
                       "import it with a newer neuron-kb" if newer else "re-export it with the neuron-kb that wrote it")
    if manifest.get("export_format") != "parquet":
        raise NkbError(f"{src} is a {manifest.get('export_format')} export; nkb import-kb reads Parquet exports",
                       "load neo4j-admin exports with neo4j-admin (see its import.sh)")
    return manifest


def _files(src: Path) -> list[tuple[str, Path, tuple[schema.Prop, ...], bool]]:
    out = [(nt.label, src / "nodes" / f"{nt.label}.parquet", nt.props, False) for nt in schema.NODES]
    out += [(rt.type, src / "relationships" / f"{rt.type}.parquet", rt.props, True) for rt in schema.RELS]
    return out


def _check_files(src: Path) -> None:
    """Every file present, readable, and with exactly the schema's columns and types."""
    for name, path, props, is_rel in _files(src):
        try:
            got = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise NkbError(f"cannot read {path}: {e}", "the export is incomplete or damaged; export it again") from None
        want = [*((("src", pa.string()), ("dst", pa.string())) if is_rel else ()),
                *((p.name, ARROW_TYPES[p.type]) for p in props)]
        if [(f.name, f.type) for f in got] != want:
            raise NkbError(f"{path} does not have the columns of {name} in schema version {schema.SCHEMA_VERSION}",
                           "the export is damaged or from another neuron-kb; export it again")
    try:
        pq.read_schema(src / "meta.parquet")
    except (OSError, pa.ArrowInvalid) as e:
        raise NkbError(f"cannot read {src / 'meta.parquet'}: {e}", "the export is incomplete; export it again") from None


def check_export(src: str | Path) -> None:
    """Refuse ``src`` unless it is a whole, readable Parquet export of this schema version."""
    read_manifest(src)
    _check_files(Path(src).expanduser())


def import_kb(store, src: str | Path, progress: Progress | None = None, batch_rows: int = 100_000) -> dict[str, int]:
    """Load a Parquet export into ``store`` (nodes first, then relationships, then ingest markers).

    The whole export is checked before the first write. Writes are the store's idempotent
    upserts, so importing twice changes nothing and an interrupted import completes when run
    again.
    """
    src = Path(src).expanduser()
    check_export(src)
    meta = pq.read_table(src / "meta.parquet").to_pandas()
    progress = progress or (lambda name, n: None)
    rows: dict[str, int] = {}
    for name, path, _, is_rel in _files(src):
        rows[name] = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            df = batch.to_pandas(types_mapper=None)
            write = store.upsert_rels if is_rel else store.upsert_nodes
            rows[name] += write(name, df)
            progress(name, len(df))
    for key, value in zip(meta["key"], meta["value"]):
        store.set_meta(str(key), str(value))
    return rows
