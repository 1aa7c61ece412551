"""Neo4j dialect conformance: every statement the Neo4j backend can send, and every named
query in queries/, passes Neo4j's own Cypher linter (npm ``@neo4j-cypher/language-support``)
without an error.

The store suite runs the backend against FalkorDB, whose Cypher is not Neo4j's in every
corner; this is what keeps the text the backend sends to a real Neo4j honest. Warnings are
allowed and printed (run pytest with -s to see them).

The linter lives in .ci/node_modules: ``.ci/install-cypher-lint`` puts it there. Without it
these tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kb import cypher, schema
from kb.stores import neo4j as backend

ROOT = Path(__file__).resolve().parents[1]
LINT_SCRIPT = Path(__file__).with_name("cypher_lint.mjs")
LINTER_DIR = Path(os.environ.get("NKB_CYPHER_LINT_DIR", ROOT / ".ci"))
QUERY_FILES = sorted((ROOT / "queries").glob("*.cypher"))
INSTALL_HINT = "run .ci/install-cypher-lint"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _linter_problem() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (LINTER_DIR / "node_modules" / "@neo4j-cypher" / "language-support" / "package.json").is_file():
        return f"Neo4j's Cypher linter is not installed in {LINTER_DIR / 'node_modules'}"
    return None


def lint_schema() -> dict:
    """The graph as the linter should know it, from kb.schema."""
    nodes = (schema.META, *schema.NODES)
    keys = {p.name for nt in nodes for p in nt.props} | {p.name for rt in schema.RELS for p in rt.props}
    # row.src / row.dst read the UNWIND rows' map keys, which the linter cannot tell apart
    # from property reads; without them every relationship upsert would warn.
    keys |= {"src", "dst"}
    return {
        "labels": [nt.label for nt in nodes],
        "relationshipTypes": [rt.type for rt in schema.RELS],
        "propertyKeys": sorted(keys),
        "graphSchema": [{"from": rt.src, "to": rt.dst, "relType": rt.type} for rt in schema.RELS],
    }


def run_linter(queries: dict[str, str]) -> dict[str, list[dict]]:
    """Diagnostics per query name. Parameters are declared from each query's own $names:
    the store checks that callers pass them; here only the Cypher is on trial."""
    request = {
        "schema": lint_schema(),
        "queries": [{"name": name, "query": text,
                     "parameters": {p: None for p in cypher.placeholders(text)}}
                    for name, text in queries.items()],
    }
    env = {**os.environ, "NKB_CYPHER_LINT_DIR": str(LINTER_DIR)}
    done = subprocess.run(["node", str(LINT_SCRIPT)], input=json.dumps(request), capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, f"the linter failed:\n{done.stderr[-3000:]}"
    return {item["name"]: item["diagnostics"] for item in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def linter():
    problem = _linter_problem()
    if problem:
        message = f"{problem}: {INSTALL_HINT}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return run_linter


def _statement_names() -> dict[str, str]:
    return {f"backend {i:03d}": text for i, text in enumerate(backend.statements())}


# What a real Neo4j 5 refuses; the linter must flag each, or the tests below prove nothing.
BROKEN = {
    "broken: syntax": "MATCH (n:Neuron RETURN n",
    "broken: falkordb constraint syntax": "CREATE CONSTRAINT ON (n:Model) ASSERT n.id IS UNIQUE",
    "broken: undefined variable": "MATCH (n:Neuron) RETURN m.id",
    "broken: unknown function": "MATCH (n:Neuron) RETURN toUpperCase(n.id) AS id",
    "broken: unknown procedure": "CALL db.indexes() YIELD label, properties RETURN label, properties",
}
FINE = {"fine: node upsert": backend.upsert_nodes_query(schema.node_type("Neuron"), ["id", "model"])}


@pytest.fixture(scope="module")
def results(linter) -> dict[str, list[dict]]:
    # One linter run for the whole module: loading Neo4j's parser costs seconds.
    queries = {**BROKEN, **FINE, **_statement_names()}
    queries.update({f"queries/{p.name}": p.read_text() for p in QUERY_FILES})
    return linter(queries)


def _errors(name: str, diagnostics: list[dict]) -> list[str]:
    for d in diagnostics:
        if d["severity"] != "error":
            print(f"{name}: {d['severity']} at {d['line']}:{d['column']}: {d['message']}")
    return [f"{d['line']}:{d['column']}: {d['message']}" for d in diagnostics if d["severity"] == "error"]


def test_linter_reports_errors_in_broken_cypher(results):
    """The conformance tests can fail: the linter flags what a real Neo4j 5 would refuse."""
    for name, text in BROKEN.items():
        assert any(d["severity"] == "error" for d in results[name]), f"{name}: no error for {text!r}: {results[name]}"
    for name in FINE:
        assert results[name] == []


def test_backend_statements_are_neo4j_cypher(results):
    statements = _statement_names()
    assert len(statements) > 50  # DDL, upserts for every label and type, deletes, meta, counts
    failures = {name: errs for name in statements if (errs := _errors(name, results[name]))}
    assert not failures, "\n".join(f"{statements[n]}\n  {e}" for n, errs in failures.items() for e in errs)


@pytest.mark.parametrize("path", QUERY_FILES, ids=[p.name for p in QUERY_FILES])
def test_named_query_is_neo4j_cypher(results, path):
    name = f"queries/{path.name}"
    errors = _errors(name, results[name])
    assert not errors, f"{name}:\n" + "\n".join(errors)
