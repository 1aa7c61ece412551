"""The nkb command line, through click's CliRunner (and one real subprocess).

Every bad input must end in one line on stderr, ``Error: ...``, a non-zero exit, and the
store exactly as it was. Stores live under tmp_path; NKB_STORE points the CLI at them.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dump import dump
from kb import __version__, config, queries, schema
from kb.records import decode_activations
from kb.cli import cli
from kb.errors import UnknownQuery
from kb.stores import open_store
from kbdata import build_small_kb, make_small_kb, term_index

KB = make_small_kb()


def invoke(store: str | None, *args: str, input: str | None = None):
    env = {"NKB_STORE": store} if store else {}
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def one_error_line(result) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def counts(url: str) -> dict[str, int]:
    with open_store(url, read_only=True) as s:
        return s.counts()


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every node and relationship with its properties, and the store's metadata (tests/dump.py)."""
    with open_store(url, read_only=True) as s:
        return dump(s)


def stats_rows(result) -> dict[tuple[str, str], int]:
    assert result.exit_code == 0, result.output
    return {(r["kind"], r["name"]): r["count"] for r in json.loads(result.output)}


def expected_stats(kb=None) -> dict[tuple[str, str], int]:
    """What `nkb stats` must print, counted by the test from the frames it wrote (not store.counts())."""
    out = {("node", label): 0 for label in schema.NODE_BY_LABEL}
    out.update({("relationship", t): 0 for t in schema.REL_BY_TYPE})
    if kb is not None:
        out.update({("node", label): len(df) for label, df in kb.nodes.items()})
        out.update({("relationship", t): len(df) for t, df in kb.rels.items()})
        out.update({("node" if k == "Term" else "relationship", k): n
                    for k, n in term_index(kb.nodes["Explanation"]["text"]).items()})
        out.update({("model", m): int(n) for m, n in kb.nodes["Neuron"]["model"].value_counts().items()})
    return out


def tree_digest(path: Path) -> str:
    """A digest of every file under path: proves an unreadable store was left untouched."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def kb_template(tmp_path_factory) -> Path:
    """The small KB on the embedded engine, built once; tests get a copy."""
    path = tmp_path_factory.mktemp("template") / "kb"
    with open_store(str(path), create=True) as s:
        build_small_kb(s)
    return path


@pytest.fixture
def kb_path(kb_template, tmp_path) -> str:
    dst = tmp_path / "kb"
    if kb_template.is_dir():
        shutil.copytree(kb_template, dst)
    else:
        shutil.copy2(kb_template, dst)
    return str(dst)


# -- the commands ------------------------------------------------------------------------

def test_every_command_has_help():
    for name, command in cli.commands.items():
        assert command.help and command.help.strip(), name
        result = invoke(None, name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_version():
    assert invoke(None, "--version").output.strip() == f"nkb, version {__version__}"


def test_init_then_stats(tmp_path):
    url = str(tmp_path / "new")
    result = invoke(url, "init")
    assert result.exit_code == 0
    assert result.output.strip() == f"Created an empty knowledge base at {url}"
    again = invoke(url, "init")
    assert again.exit_code == 0 and again.output.strip() == f"A knowledge base already exists at {url}"
    assert stats_rows(invoke(url, "stats", "--format", "json")) == expected_stats()


def test_stats(kb_path):
    by_name = stats_rows(invoke(kb_path, "stats", "--format", "json"))
    assert by_name == expected_stats(KB)
    assert by_name[("model", "alpha")] == 24 and by_name[("model", "beta")] == 18
    table = invoke(kb_path, "stats").output
    assert table.splitlines()[0].split() == ["kind", "name", "count"]


def test_query_with_params(kb_path):
    cypher = "MATCH (n:Neuron) WHERE n.layer = $layer AND n.model = $model RETURN n.id AS id ORDER BY id"
    result = invoke(kb_path, "query", cypher, "-p", "layer=1", "--param", "model=alpha", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.output)] == [f"alpha/1/{i}" for i in range(6)]


def test_formats_parse_back_to_the_same_rows(kb_path):
    args = ["query", "--name", "promotes_token", "-p", "token= dog", "-p", "limit=5"]
    as_json = json.loads(invoke(kb_path, *args, "--format", "json").output)
    as_csv = list(csv.DictReader(io.StringIO(invoke(kb_path, *args, "--format", "csv").output)))
    table = invoke(kb_path, *args).output.splitlines()
    with open_store(kb_path, read_only=True) as s:
        lib = queries.run(s, "promotes_token", {"token": " dog", "limit": 5})
    assert [r["neuron"] for r in as_json] == list(lib["neuron"]) == [r["neuron"] for r in as_csv]
    assert [r["logit"] for r in as_json] == [float(r["logit"]) for r in as_csv] == list(lib["logit"])
    assert list(as_json[0]) == list(as_csv[0]) == list(lib.columns)
    assert table[0].split()[:4] == ["neuron", "model", "layer", "idx"] and len(table) == 2 + 5
    assert all(r["neuron"] in line for r, line in zip(as_json, table[2:]))


def test_csv_writes_lists_as_json_and_nulls_empty(kb_path):
    result = invoke(kb_path, "query", "--name", "top_records", "-p", "neuron=alpha/0/0", "-p", "limit=1", "--format", "csv")
    row = next(csv.DictReader(io.StringIO(result.output)))
    assert isinstance(json.loads(row["tokens"]), list) and len(decode_activations(row["activations"])) == 8
    result = invoke(kb_path, "query", "MATCH (m:Model {id: 'alpha'}) RETURN m.base_model AS b, m.id AS id", "--format", "csv")
    assert result.output.splitlines() == ["b,id", ",alpha"]


def test_named_query_table(kb_path):
    result = invoke(kb_path, "query", "--name", "similar_neurons", "-p", "neuron=alpha/0/0", "-p", "method=explanation")
    assert result.exit_code == 0
    header, rule, *rows = result.output.splitlines()
    assert header.split()[:3] == ["neuron", "model", "layer"] and set(rule) <= {"-", " "}
    assert rows and all("explanation" in r for r in rows)


def test_queries_lists_every_named_query():
    rows = json.loads(invoke(None, "queries", "--format", "json").output)
    assert [r["name"] for r in rows] == [q.name for q in queries.all_queries()]
    assert all(r["description"] for r in rows)
    one = invoke(None, "queries", "promotes_token").output
    assert "token (required)" not in one and "required" in one and "(t:Token)<-[p:PROMOTES]-(n:Neuron)" in one


def test_show(kb_path):
    result = invoke(kb_path, "show", "alpha/0/0")
    assert result.exit_code == 0, result.output
    text = result.output
    n = KB.neuron("alpha/0/0")
    assert text.splitlines()[0].startswith("alpha/0/0")
    for section in ("Promotes:", "Suppresses:", "Reads (gate):", "Reads (up):", "Activation records (top):", "N2G graph",
                    "Explanations:"):
        assert section in text
    assert json.dumps(n["explanation"]) in text
    # Every record marks at least its maximum token, and nothing is marked by ANSI off a TTY.
    records = [line for line in text.split("Activation records (top):")[1].split("N2G graph")[0].splitlines() if line.strip()]
    assert len(records) == 4 and all("[[" in r and "]]" in r for r in records)
    assert "\x1b[" not in text
    for e in KB.nodes["Explanation"][lambda d: d["neuron"] == "alpha/0/0"].itertuples():
        assert f"{e.explainer}/{e.method}: {json.dumps(e.text)}" in text


def test_show_json(kb_path):
    card = json.loads(invoke(kb_path, "show", "beta/1/2", "--format", "json", "--tokens", "2").output)
    assert card["neuron"]["neuron"] == "beta/1/2"
    assert len(card["promotes"]) == 2 and len(card["suppresses"]) == 2
    assert set(card) == {"neuron", "promotes", "suppresses", "reads", "records", "record_kind", "explanations", "n2g"}


def _kb_patterns(neuron: str) -> list[tuple[list[str], float]]:
    """The small KB's N2G patterns of one neuron, in reading order, worked out from its node rows."""
    nodes = KB.nodes["N2GNode"][lambda d: d["neuron"] == neuron]
    text = {r.id: r.token for r in nodes.itertuples()}
    out = []
    for r in nodes[nodes["is_end"]].itertuples():
        head, path = r.id.rsplit("/", 1)
        ids = path.split(".")
        out.append(([text[f"{head}/{'.'.join(ids[:k])}"] for k in range(len(ids), 0, -1)], r.activation))
    return sorted(out, key=lambda p: (-p[1], p[0]))


def test_show_includes_the_n2g_graph(kb_path):
    text = invoke(kb_path, "show", "alpha/0/0").output
    graph = text.split("N2G graph (")[1].split("Explanations:")[0].splitlines()[1:]
    want = _kb_patterns("alpha/0/0")
    assert any("*" in tokens for tokens, _ in want)  # the KB gives this neuron a wildcard context

    def shown(t):  # tokens are quoted, the wildcard is not
        return "*" if t == "*" else json.dumps(t)

    assert want and [line.strip() for line in graph if line.strip()] == [
        f"{act:.2f}  {' '.join(shown(t) for t in tokens[:-1])} [{shown(tokens[-1])}]" for tokens, act in want]
    card = json.loads(invoke(kb_path, "show", "alpha/0/0", "--format", "json").output)
    assert [(p["tokens"], p["activation"]) for p in card["n2g"]] == [(t, a) for t, a in want]
    assert "N2G graph (0 patterns" in invoke(kb_path, "show", "alpha/0/1").output


def test_a_search_by_an_unknown_token_text_names_it(kb_path):
    result = invoke(kb_path, "search", "--fires-on", " dog", "--after", "no such token")
    assert result.exit_code == 1 and "no token's text is 'no such token'" in result.output
    # A text the vocabulary has is no error, whatever the search finds.
    assert " puppy" in KB.nodes["TokenText"]["id"].tolist()
    assert invoke(kb_path, "search", "--fires-on", " puppy", "--after", " puppy").exit_code == 0


def test_search_fires_on_after(kb_path):
    rows = json.loads(invoke(kb_path, "search", "--fires-on", " dog", "--after", " hot", "--format", "json").output)
    fires = KB.rels["FIRES_ON"].merge(KB.nodes["Token"], left_on="dst", right_on="id")
    dog = set(fires[fires["text"] == " dog"]["src"])
    # kbdata: neurons 0, 8, 16... of each model fire on " dog" after " hot", the other dog neurons after " the"
    assert rows and {r["neuron"] for r in rows} < dog and all(r["context_matches"] == 1 for r in rows)
    the = json.loads(invoke(kb_path, "search", "--fires-on", " dog", "--after", " the", "--format", "json").output)
    assert {r["neuron"] for r in rows} | {r["neuron"] for r in the} == dog
    layered = json.loads(invoke(kb_path, "search", "--fires-on", " dog", "--layers", "0,2-3", "--format", "json").output)
    assert {r["neuron"] for r in layered} == {n for n in dog if KB.neuron(n)["layer"] in (0, 2, 3)}


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot is not installed (scripts/test.sh installs it where it can)")
def test_render_svg(kb_path, tmp_path):
    import xml.etree.ElementTree as ET

    out = tmp_path / "g.svg"
    result = invoke(kb_path, "render", "alpha/0/0", "--out", str(out))
    assert result.exit_code == 0, result.output
    svg = ET.parse(out).getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    for tokens, _ in _kb_patterns("alpha/0/0"):
        for t in tokens:
            assert json.dumps(t)[1:-1] in texts


@pytest.mark.parametrize("out,expected", [
    ("missing-dir/g.svg", "is not a writable directory"),
    ("g.txt", "must end in .svg or .png"),
])
def test_render_refuses_bad_output_paths(kb_path, tmp_path, out, expected):
    line = one_error_line(invoke(kb_path, "render", "alpha/0/0", "--out", str(tmp_path / out)))
    assert expected in line
    assert not (tmp_path / out).exists() and not (tmp_path / "missing-dir").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".n2g-")]


def test_render_and_predict_refuse_a_neuron_without_a_graph(kb_path, tmp_path):
    assert "has no N2G graph yet" in one_error_line(invoke(kb_path, "render", "alpha/0/1", "--out", str(tmp_path / "g.svg")))
    assert one_error_line(invoke(kb_path, "render", "alpha/9/9", "--out", str(tmp_path / "g.svg"))).startswith(
        "Error: no neuron 'alpha/9/9' in the store")
    assert not (tmp_path / "g.svg").exists()


def test_mark_firing():
    from kb.cli import mark_firing

    from kb.records import encode_activations

    stored = encode_activations([[0.1, 2.0, 4.0, 0.0]])[0]
    assert mark_firing([" the", " hot", " dog", "."], stored, color=False) == " the [[hot]] [[dog]]."
    assert mark_firing(["a", "b"], encode_activations([[0.0, 0.0]])[0], color=False) == "ab"


def test_delete_model(kb_path):
    before, unchanged = counts(kb_path), snapshot(kb_path)
    refused = invoke(kb_path, "delete-model", "beta", input="n\n")
    assert refused.exit_code == 1 and snapshot(kb_path) == unchanged
    result = invoke(kb_path, "delete-model", "beta", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Deleted model beta: ")
    after = counts(kb_path)
    assert after["Neuron"] == before["Neuron"] - 18 and after["Model"] == 1
    assert after["Token"] == before["Token"]  # alpha still uses the shared tokenizer
    rows = json.loads(invoke(kb_path, "query", "--name", "models", "--format", "json").output)
    assert [r["model"] for r in rows] == ["alpha"]


def test_delete_model_takes_a_larger_buffer_pool(kb_path, monkeypatch, tmp_path):
    """The embedded engine holds the whole delete in one transaction, and the demo KB's model ran
    out of the 1 GiB default; a pool the user sets still wins."""
    from kb.stores.embedded import EmbeddedStore

    pools = []
    real = EmbeddedStore.delete_model

    def spy(self, model_id):
        pools.append(int(self._scalar("CALL bm_info() RETURN mem_limit")) // 2**20)  # as the engine reports it
        return real(self, model_id)

    monkeypatch.setattr(EmbeddedStore, "delete_model", spy)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv(config.BUFFER_POOL_ENV, raising=False)
    assert invoke(kb_path, "delete-model", "beta", "--yes").exit_code == 0
    monkeypatch.setenv(config.BUFFER_POOL_ENV, "200")
    assert invoke(kb_path, "delete-model", "alpha", "--yes").exit_code == 0
    assert pools == [config.DELETE_BUFFER_POOL_MB, 200]


def test_delete_model_refuses_a_bad_buffer_pool_and_names_its_own_default(kb_path, monkeypatch):
    unchanged = snapshot(kb_path)
    monkeypatch.setenv(config.BUFFER_POOL_ENV, "lots")
    line = one_error_line(invoke(kb_path, "delete-model", "beta", "--yes"))
    assert line == (f"Error: ${config.BUFFER_POOL_ENV} must be a positive number of MiB, not 'lots' "
                    f"(unset it for the default of {config.DELETE_BUFFER_POOL_MB} MiB)")
    monkeypatch.delenv(config.BUFFER_POOL_ENV)
    assert snapshot(kb_path) == unchanged


def test_write_needs_write_flag(kb_path):
    before, unchanged = counts(kb_path), snapshot(kb_path)
    create = "CREATE (:Model {id: 'gamma', kind: 'lm'})"
    line = one_error_line(invoke(kb_path, "query", create))
    assert line.startswith("Error: the query writes (CREATE) but it runs read-only (")
    assert "--write" in line
    assert snapshot(kb_path) == unchanged
    assert invoke(kb_path, "query", create, "--write").exit_code == 0
    assert counts(kb_path)["Model"] == before["Model"] + 1


def test_real_subprocess(kb_path, tmp_path):
    exe = shutil.which("nkb", path=str(Path(sys.executable).parent)) or shutil.which("nkb")
    assert exe, "the nkb console script is not installed"
    env = {**os.environ, "NKB_STORE": kb_path}
    done = subprocess.run([exe, "query", "--name", "models", "--format", "json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [r["model"] for r in json.loads(done.stdout)] == ["alpha", "beta"]
    failed = subprocess.run([exe, "query", "--name", "nope"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip() == "Error: no named query 'nope' (`nkb queries` lists them)"


# -- bad input: one line, non-zero exit, store unchanged --------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["query", "--name", "promotes_tokn", "-p", "token=x"],
     "Error: no named query 'promotes_tokn'; did you mean promotes_token? (`nkb queries` lists them)"),
    (["query", "--name", "promotes_token"],
     "Error: query promotes_token needs parameter 'token': the token text, leading space included, e.g. \" dog\" "
     "(its parameters: token (required), model=null, limit=20)"),
    (["query", "--name", "promotes_token", "-p", "token= dog", "-p", "limit=lots"],
     "Error: parameter 'limit' of query promotes_token: expected an integer, got 'lots' "
     "(its parameters: token (required), model=null, limit=20)"),
    (["query", "--name", "promotes_token", "-p", "token= dog", "-p", "modle=alpha"],
     "Error: query promotes_token has no parameter 'modle' (did you mean 'model'?) "
     "(its parameters: token (required), model=null, limit=20)"),
    (["show", "alpha/x/1"], None),
    (["show", "alpha/9/9"], "Error: no neuron 'alpha/9/9' in the store (model alpha has no such neuron; "
                            "list its neurons with `nkb query --name neurons_filter --param model=alpha`)"),
    (["show", "gamma/0/0"], "Error: no neuron 'gamma/0/0' in the store (models in this store: alpha, beta)"),
    (["search", "--promotes", "🙂"], "Error: no token's text is '🙂' (a token's text keeps its leading space, as in "
                                     "' dog', and a token that holds part of a character is spelled by its bytes, "
                                     "as in '\\xf0\\x9f')"),
    (["search", "--fires-on", " dog", "--after", "no such token"], None),
    (["delete-model", "gamma", "--yes"], None),
    (["query", "MATCH (n:Neuron RETURN n"], None),
    (["query", "MATCH (n:Nope) RETURN n"], None),
])
def test_bad_input_is_one_line(kb_path, args, expected):
    before = snapshot(kb_path)
    line = one_error_line(invoke(kb_path, *args))
    if expected:
        assert line == expected
    assert snapshot(kb_path) == before


def test_debug_shows_the_exception(kb_path):
    with pytest.raises(UnknownQuery):
        invoke(kb_path, "--debug", "query", "--name", "nope")


@pytest.mark.parametrize("args", [
    ["query"],
    ["query", "RETURN 1", "--name", "models"],
    ["query", "RETURN 1", "-p", "novalue"],
    ["query", "RETURN $a", "-p", "a=1", "-p", "a=2"],
    ["query", "--name", "models", "--write"],
    ["query", "RETURN 1", "--format", "xml"],
    ["show", "alpha/0/0", "--format", "csv"],
    ["index", "alpha", "--update", "--explanations", "some"],
    ["ingest", "smollm2-135m", "--embed-explanations", "some"],
])
def test_usage_errors_exit_2(kb_path, args):
    before = snapshot(kb_path)
    result = invoke(kb_path, *args)
    assert result.exit_code == 2, result.output
    assert snapshot(kb_path) == before


def test_missing_store(tmp_path):
    url = str(tmp_path / "nowhere")
    for args in (["stats"], ["query", "RETURN 1 AS x"], ["show", "alpha/0/0"], ["delete-model", "alpha", "--yes"]):
        line = one_error_line(invoke(url, *args))
        assert "nowhere" in line
    assert not (tmp_path / "nowhere").exists()


def test_corrupt_store(kb_path):
    path = Path(kb_path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    graph = max(files, key=lambda p: p.stat().st_size)  # the graph file, not a small sidecar
    graph.write_bytes(b"this is not a graph database\n" * 100)
    digest = tree_digest(path.parent)
    for args in (["stats"], ["query", "--name", "models"], ["query", "RETURN 1 AS x", "--write"]):
        one_error_line(invoke(kb_path, *args))
    assert tree_digest(path.parent) == digest


def test_other_schema_version(kb_path):
    with open_store(kb_path) as s:
        s.set_meta("schema_version", "0")
    digest = tree_digest(Path(kb_path).parent)
    for args in (["stats"], ["query", "--name", "models"], ["show", "alpha/0/0"], ["delete-model", "alpha", "--yes"]):
        line = one_error_line(invoke(kb_path, *args))
        assert "schema" in line.lower() and "0" in line
    assert tree_digest(Path(kb_path).parent) == digest


def test_server_unreachable():
    # The port stays bound (and not listening) for the whole test, so nobody can take it and
    # a connection to it is refused.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"bolt://127.0.0.1:{held.getsockname()[1]}"
        for args in (["stats"], ["query", "RETURN 1 AS x"]):
            line = one_error_line(invoke(url, *args))
            assert "127.0.0.1" in line


def test_wrong_password(bolt_server):
    """The FalkorDB test server checks Bolt passwords against its requirepass."""
    url = bolt_server.url_for_graph("wrong_password", password="definitely-wrong")
    for args in (["stats"], ["query", "--name", "models"]):
        line = one_error_line(invoke(url, *args))
        assert "definitely-wrong" not in line  # the password is never printed


def test_wrong_password_real_neo4j():
    uri = os.environ.get("NKB_NEO4J_URI")
    if not uri:
        pytest.skip("NKB_NEO4J_URI is not set: no real Neo4j to refuse a password")
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    bad = urlunsplit(parts._replace(netloc=f"neo4j:definitely-wrong@{parts.hostname}:{parts.port or 7687}"))
    line = one_error_line(invoke(bad, "stats"))
    assert "definitely-wrong" not in line


# -- the same flow on every engine -------------------------------------------------------------

def test_flow_on_every_engine(store_url):
    assert invoke(store_url, "init").exit_code == 0
    with open_store(store_url) as s:
        kb = build_small_kb(s)
        expected = dump(s)
    assert stats_rows(invoke(store_url, "stats", "--format", "json")) == expected_stats(kb)
    got = json.loads(invoke(store_url, "query", "--name", "match_chain", "-p", "neuron=alpha/0/0", "-p", "hops=1",
                            "--format", "json").output)
    assert {r["matched_from"] for r in got} == {"alpha/0/0"} and len(got) == 3
    assert "Activation records (top):" in invoke(store_url, "show", "alpha/1/2").output
    one_error_line(invoke(store_url, "query", "MATCH (n:Neuron RETURN n"))
    one_error_line(invoke(store_url, "query", "CREATE (:Model {id: 'gamma'})"))
    one_error_line(invoke(store_url, "query", "--name", "promotes_token"))
    assert snapshot(store_url) == expected


def test_ingest_prints_each_stage_with_the_peak_memory_so_far(tmp_path):
    from ingest.memory import resident_bytes
    from tinymodels import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", "llama", seed=1)
    held = resident_bytes()  # the peak can only be higher
    result = invoke(str(tmp_path / "kb"), "ingest", str(model), "--name", "tiny", "--stages", "lmhead",
                    "--lmhead-k", "2")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if "peak RSS" in line}
    assert list(lines) == ["model", "lmhead"], result.output
    peaks = [float(line.split("peak RSS")[1].split()[0]) * 2**30 for line in lines.values()]
    assert held - 0.006 * 2**30 <= peaks[0] <= peaks[1], (held, peaks)  # printed to 0.01 GB
    # scripts/bench_ingest.py reads these lines back: its pattern must follow the format.
    spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).parent.parent / "scripts" / "bench_ingest.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parsed = [bench.STAGE_LINE.match(line.strip()) for line in lines.values()]
    assert all(parsed) and [m[1] for m in parsed] == ["model", "lmhead"], lines
    assert [float(m[5]) * 2**30 for m in parsed] == peaks
