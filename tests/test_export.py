"""Moving a KB: Parquet export and import round trips on every engine, neo4j-admin CSVs whose
headers follow Neo4j's documented grammar, and refusals that leave nothing behind."""

from __future__ import annotations

import csv
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dump import dump
from kb import schema
from kb.cli import cli
from kb.errors import NkbError
from kb.export import ARRAY_DELIMITER, check_export, export_kb, import_kb
from kb.stores import open_store
from kbdata import build_small_kb


def _meta(store) -> dict[str, str]:
    df = store.cypher("MATCH (m:NkbMeta) RETURN m.key AS k, m.value AS v")
    return {k: v for k, v in zip(df["k"], df["v"]) if k not in ("schema_version", "created_by")}


@pytest.fixture
def small(store):
    build_small_kb(store)
    store.set_meta("ingest/alpha/lmhead/0", '{"settings": "abc", "described": "lmhead_k=3"}')
    return store


@pytest.fixture
def small_embedded(embedded_store):
    """The small KB on the embedded engine alone, for checks of the files that do not depend on the engine."""
    build_small_kb(embedded_store)
    return embedded_store


def test_parquet_round_trip_gives_an_identical_dump(small, tmp_path):
    before = dump(small)
    report = export_kb(small, tmp_path / "out", "parquet")
    assert report.rows["Neuron"] == len(before["Neuron"]) and report.rows["PROMOTES"] == len(before["PROMOTES"])
    # Into a fresh embedded store, whatever engine it came from: the dump is identical.
    with open_store(str(tmp_path / "copy"), create=True) as copy:
        rows = import_kb(copy, tmp_path / "out", batch_rows=7)  # tiny batches: several per file
        assert dump(copy) == before
        assert _meta(copy) == _meta(small)
        # The store's own metadata rows (schema version, creator) are the new store's, not imported.
        assert sum(rows.values()) == sum(len(v) for k, v in before.items() if k != "NkbMeta") + rows.get("NkbMeta", 0)
        import_kb(copy, tmp_path / "out")  # twice changes nothing
        assert dump(copy) == before


def test_import_into_a_server_store(embedded_store, bolt_server, tmp_path):
    build_small_kb(embedded_store)
    before = dump(embedded_store)
    export_kb(embedded_store, tmp_path / "out")
    with open_store(bolt_server.url_for_graph("imported"), create=True) as server:
        import_kb(server, tmp_path / "out")
        assert dump(server) == before


def test_files_are_typed_as_the_schema_says(small_embedded, tmp_path):
    export_kb(small_embedded, tmp_path / "out")
    t = pq.read_schema(tmp_path / "out" / "nodes" / "Snippet.parquet")
    assert t.field("token_ids").type == pa.list_(pa.int64())
    assert pq.read_schema(tmp_path / "out" / "relationships" / "READS.parquet").names == ["src", "dst", "weight",
                                                                                           "rank", "via", "found"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["schema_version"] == schema.SCHEMA_VERSION and manifest["export_format"] == "parquet"


# -- neo4j-admin ------------------------------------------------------------------------------
# The header grammar, written from the neo4j-admin import documentation ("CSV header format"):
# each field is <name>:<field type>, the name optional for ID/START_ID/END_ID/LABEL/TYPE/IGNORE;
# ID, START_ID and END_ID may name an id space in parentheses; property types are int, long,
# float, double, boolean, byte, short, char, string, point, date, localtime, time,
# localdatetime, datetime, duration, each optionally an array with []. A field without a type
# is a string property.
_SPECIAL = {"ID", "START_ID", "END_ID", "LABEL", "TYPE", "IGNORE"}
_PROPERTY_TYPES = {"int", "long", "float", "double", "boolean", "byte", "short", "char", "string", "point", "date",
                   "localtime", "time", "localdatetime", "datetime", "duration"}
_FIELD = re.compile(r"^(?P<name>[^:]*)(?::(?P<type>[A-Za-z_]+)(?:\((?P<space>[^()]+)\))?(?P<array>\[\])?)?$")


def parse_header_field(field: str) -> dict:
    m = _FIELD.match(field)
    if not m:
        raise ValueError(f"not a header field: {field!r}")
    name, kind, space, array = m.group("name"), m.group("type"), m.group("space"), m.group("array")
    if kind is None:
        if not name:
            raise ValueError("a property needs a name")
        return {"name": name, "type": "string", "array": False}
    if kind in _SPECIAL:
        if array:
            raise ValueError(f"{kind} cannot be an array")
        if space and kind not in ("ID", "START_ID", "END_ID"):
            raise ValueError(f"only ID fields take an id space: {field!r}")
        return {"name": name or None, "type": kind, "space": space}
    if kind.lower() not in _PROPERTY_TYPES or space:
        raise ValueError(f"unknown field type in {field!r}")
    if not name:
        raise ValueError(f"a property needs a name: {field!r}")
    return {"name": name, "type": kind.lower(), "array": bool(array)}


def test_the_header_parser_knows_the_grammar():
    assert parse_header_field("id:ID(Neuron)") == {"name": "id", "type": "ID", "space": "Neuron"}
    assert parse_header_field(":START_ID(Neuron)")["space"] == "Neuron"
    assert parse_header_field("tokens:string[]") == {"name": "tokens", "type": "string", "array": True}
    for bad in ("x:strin", ":LABEL[]", "x:long(Space)", ":long", "a:TYPE(x)"):
        with pytest.raises(ValueError):
            parse_header_field(bad)


def test_neo4j_admin_csvs(small_embedded, tmp_path):
    before = dump(small_embedded)
    export_kb(small_embedded, tmp_path / "csv", "neo4j-admin")
    out = tmp_path / "csv"
    for nt in schema.NODES:
        with open(out / f"{nt.label}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        fields = [parse_header_field(h) for h in rows[0]]
        assert fields[0] == {"name": "id", "type": "ID", "space": nt.label}
        assert fields[-1]["type"] == "LABEL" and all(r[-1] == nt.label for r in rows[1:])
        by_name = {f["name"]: f for f in fields if f.get("name")}
        for p in nt.props[1:]:
            want = {"STRING": "string", "INT64": "long", "DOUBLE": "double", "BOOLEAN": "boolean"}.get(p.type)
            assert by_name[p.name]["type"] == (want or p.type[:-2].lower().replace("int64", "long")), p
        assert len(rows) - 1 == len(before[nt.label])
    for rt in schema.RELS:
        with open(out / f"{rt.type}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        fields = [parse_header_field(h) for h in rows[0]]
        assert fields[0] == {"name": None, "type": "START_ID", "space": rt.src}
        assert fields[1] == {"name": None, "type": "END_ID", "space": rt.dst}
        assert fields[-1]["type"] == "TYPE"
        assert sorted((r[0], r[1]) for r in rows[1:]) == sorted((r[0], r[1]) for r in before[rt.type])
    # A list value comes back whole when split on the delimiter neo4j-admin is told about.
    with open(out / "Snippet.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header = next(h for h in rows[0] if h.startswith("tokens:"))
    stored = {r[0]: r for r in before["Snippet"]}
    cols = schema.node_type("Snippet").columns
    for r in rows:
        assert tuple(r[header].split(ARRAY_DELIMITER)) == stored[r["id:ID(Snippet)"]][cols.index("tokens")]
    script = (out / "import.sh").read_text()
    assert "neo4j-admin database import full" in script and "--array-delimiter=U+001F" in script
    assert "--relationships=/import/PROMOTES.csv" in script


# -- bad input --------------------------------------------------------------------------------

def test_export_refuses_a_directory_that_is_not_empty(small_embedded, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(NkbError, match="is not empty"):
        export_kb(small_embedded, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "kb") == ["out"]  # no partial directory left


def test_import_refuses_what_is_not_an_export_and_creates_no_store(tmp_path, embedded_store):
    runner = CliRunner()
    (tmp_path / "junk").mkdir()
    r = runner.invoke(cli, ["import-kb", str(tmp_path / "junk"), "--store", str(tmp_path / "new-kb")])
    assert r.exit_code == 1 and "is not a neuron-kb export" in r.output
    assert not (tmp_path / "new-kb").exists()


def test_import_refuses_a_newer_schema_version(small_embedded, tmp_path):
    export_kb(small_embedded, tmp_path / "out")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    m["schema_version"] = schema.SCHEMA_VERSION + 1
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(NkbError, match=f"schema version {schema.SCHEMA_VERSION + 1}") as e:
        check_export(tmp_path / "out")
    assert "newer neuron-kb" in e.value.hint


def test_import_refuses_a_damaged_export_before_writing(small_embedded, tmp_path):
    export_kb(small_embedded, tmp_path / "out")
    (tmp_path / "out" / "relationships" / "PROMOTES.parquet").write_bytes(b"not parquet")
    with open_store(str(tmp_path / "copy"), create=True) as copy:
        before = dump(copy)
        with pytest.raises(NkbError, match="PROMOTES.parquet"):
            import_kb(copy, tmp_path / "out")
        assert dump(copy) == before


def test_cli_export_and_import(small_embedded, tmp_path):
    runner, store_url = CliRunner(), small_embedded.url
    small_embedded.close()  # the CLI opens the store itself
    r = runner.invoke(cli, ["export", str(tmp_path / "out"), "--store", store_url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["import-kb", str(tmp_path / "out"), "--store", str(tmp_path / "copy")])
    assert r.exit_code == 0, r.output
    with open_store(str(tmp_path / "copy"), read_only=True) as copy, open_store(store_url, read_only=True) as original:
        assert dump(copy) == dump(original)
    r = runner.invoke(cli, ["export", str(tmp_path / "out"), "--store", store_url])
    assert r.exit_code == 1 and "is not empty" in r.output
