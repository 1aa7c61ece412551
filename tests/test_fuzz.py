"""Bad input, generated: property-based tests over the CLI's input families.

Every case must end as bad input does (README, "Bad input"): one line on stderr starting
``Error:`` and exit status 1 (click's usage errors: exit 2, the last line ``Error: ...``), no
traceback, no secret in any output, the knowledge base unchanged (a full logical dump,
tests/dump.py) and no file or directory left behind. Some families may also succeed (random
read-only Cypher, say); then the store must still be unchanged.

Runs in-process through click's CliRunner (a handful of cases through a real ``nkb``
subprocess at the end), seeded and reproducible (``derandomize``, no example database).
``NKB_FUZZ_EXAMPLES`` sets the examples per property (default 10; e.g. 500 for a long local
run). Ingest cases use the tiny model from tests/tinymodels.py, never the real SmolLM2, and
the ones whose fault is visible without a model must fail before any model loads.

The last part replays each finding of the fuzz campaign (issue 10) as a plain test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ingest.models
from dump import dump
from kb.cli import cli
from kb.stores import open_store
from kbdata import build_small_kb
from tinymodels import save_tiny_model

EXAMPLES = int(os.environ.get("NKB_FUZZ_EXAMPLES", "10"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
SLOW_FUZZ = settings(FUZZ, max_examples=max(3, EXAMPLES // 3))  # cases that may load the tiny model
SECRET = "S3cr3tPw-fuzz"
SMALL = ["--tokens", "512", "--window", "32", "--batch-size", "8", "--top-k", "4", "--random", "2",
         "--quantiles", "2", "--per-quantile", "1", "--lmhead-k", "4"]


class Sandbox:
    """HOME, XDG dirs, a working directory and one small knowledge base, all under one root."""

    def __init__(self, root: Path):
        self.root = root
        self.kb = root / "kb"
        self.work = root / "work"
        for d in ("home", "config/neuron-kb", "data", "cache", "work", "files"):
            (root / d).mkdir(parents=True, exist_ok=True)
        with open_store(str(self.kb), create=True) as s:
            build_small_kb(s)
        self.kb_dump = self.dump()
        self.tiny = save_tiny_model(root / "files" / "tiny-llama", "llama", seed=0)
        self.config = root / "config" / "neuron-kb" / "config.toml"

    def dump(self):
        with open_store(str(self.kb), read_only=True) as s:
            return dump(s)

    def env(self, **extra: str | None) -> dict[str, str | None]:
        env = {"HOME": str(self.root / "home"), "XDG_CONFIG_HOME": str(self.root / "config"),
               "XDG_DATA_HOME": str(self.root / "data"), "XDG_CACHE_HOME": str(self.root / "cache"),
               "NKB_STORE": str(self.kb), "NKB_ARTIFACT_DIR": None, "NKB_BUFFER_POOL_MB": None,
               "NKB_NEO4J_USER": None, "NKB_NEO4J_PASSWORD": SECRET, "NKB_NEO4J_DATABASE": None,
               "HF_HUB_OFFLINE": "1"}
        env.update(extra)
        return env

    def listing(self) -> set[str]:
        """Every path under the sandbox but inside the knowledge base (compared by its dump)."""
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if self.kb not in p.parents}


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Sandbox:
    return Sandbox(tmp_path_factory.mktemp("fuzz"))


@contextmanager
def model_loads_counted():
    """Counts the times transformers is asked to load a model (ingest.models._load_pretrained)."""
    calls = []
    real = ingest.models._load_pretrained

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    ingest.models._load_pretrained = counting
    try:
        yield calls
    finally:
        ingest.models._load_pretrained = real


def invoke(box: Sandbox, args: list[str], *, config: bytes | None | bool = None, may_succeed: bool = False, **env):
    """Run nkb in-process and check the bad-input contract; returns the result. ``config``:
    the config file's bytes, None for none, False to leave whatever is there."""
    if config is None:
        box.config.unlink(missing_ok=True)
    elif config is not False:
        box.config.write_bytes(config)
    before = box.listing()
    cwd = os.getcwd()
    os.chdir(box.work)
    try:
        result = CliRunner().invoke(cli, args, env=box.env(**env), catch_exceptions=True)
    finally:
        os.chdir(cwd)
        if config is not False:
            box.config.unlink(missing_ok=True)
    check_contract(result, may_succeed=may_succeed)
    if result.exit_code != 0:
        left = box.listing() - before
        assert not left, f"left behind: {sorted(left)[:5]}"
    else:  # a legitimate success (init of a valid new path...) may create; clean it for the next case
        for path in sorted(box.listing() - before, key=len):
            shutil.rmtree(box.root / path, ignore_errors=True)
    assert box.dump() == box.kb_dump, "the knowledge base changed"
    return result


def check_contract(result, *, may_succeed: bool) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        raise AssertionError("a traceback escaped:\n" + "".join(traceback.format_exception(result.exception)))
    text = result.output
    assert "Traceback" not in text
    assert SECRET not in text, "a secret was printed"
    if result.exit_code == 0:
        assert may_succeed, f"bad input was accepted: {result.output[:300]}"
        return
    lines = result.stderr.strip().splitlines()
    if result.exit_code == 1:
        assert len(lines) == 1, result.stderr[:2000]
        assert lines[0].startswith("Error: "), lines[0]
    else:
        assert result.exit_code == 2, (result.exit_code, result.output[:500])
        assert lines and lines[-1].startswith("Error: "), result.stderr[:500]


# -- strategies ---------------------------------------------------------------------------------
weird_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
any_text = st.one_of(weird_text, st.sampled_from(["", " ", "\n", "a\nb", "x" * 5000, "../..", "/", "~", "-", "--"]))

CYPHER_WORDS = ["MATCH", "RETURN", "WITH", "WHERE", "UNWIND", "AS", "ORDER BY", "LIMIT", "SKIP", "OPTIONAL",
                "CREATE", "MERGE", "SET", "DELETE", "DETACH", "REMOVE", "FOREACH", "COPY", "LOAD", "DROP",
                "count(*)", "(n)", "(n:Neuron)", "(t:Token)", "-[r]->", "-[:PROMOTES]->", "n.id", "n.layer",
                "$x", "$create", "'CREATE'", '"x"', "1", "2.5", "-1", "null", "true", "[1, 2]", "{a: 1}",
                "/*x*/", "// c\n", "`CREATE`", ",", ";", "(", ")", "[", "]", "{", "}", "=", "<>", "+", "*", ".",
                "n", "x", "load", "date('2020-01-01')", "interval('1 day')", "UUID('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')"]
cypher = st.one_of(
    st.lists(st.sampled_from(CYPHER_WORDS), min_size=1, max_size=12).map(" ".join),
    weird_text.filter(lambda t: t.strip()),
)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=True, allow_infinity=True), weird_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), inner, max_size=3)),
    max_leaves=8)


def _param_text(value) -> str:
    # Python's json writes NaN / Infinity for non-finite floats: exactly the near-JSON users type.
    return json.dumps(value, ensure_ascii=False)


hosts = st.sampled_from(["127.0.0.1", "[::1]", "[::1", "localhost", "", "h%41", "127.0.0.1:notaport",
                         "127.0.0.1:99999", "[::1]:1", "a" * 300])
schemes = st.sampled_from(["bolt", "neo4j", "bolt+s", "neo4j+ssc", "http", "https", "file", "ftp", "BOLT", "x",
                           "bolt+", "neo4j+s+s"])
store_urls = st.one_of(
    st.builds(lambda s, u, h, port, path, q: f"{s}://{u}{h}{port}{path}{q}",
              schemes, st.sampled_from(["", "u@", f"u:{SECRET}@", f":{SECRET}@", f"u:{SECRET}@x@"]), hosts,
              st.sampled_from(["", ":1", ":0", ":x", ":65536"]), st.sampled_from(["", "/", "/db", "/a/b", "/%00"]),
              st.sampled_from(["", f"?password={SECRET}", f"?x={SECRET}&y=1", f"#{SECRET}", "?"])),
    any_text,
    st.sampled_from(["/dev/null", "/dev/null/kb", "/proc/self/kb", "/etc/passwd", "a/" * 2100, "x" * 300,
                     "/tmp/" + "y" * 256 + "/kb"]),
)

toml_scalars = st.one_of(weird_text.map(json.dumps), st.integers(-(2**70), 2**70).map(str),
                         st.floats(allow_nan=False).map(repr), st.sampled_from(["true", "false", "[]", "{}",
                                                                              "1979-05-27", "inf", "nan"]))
toml_keys = st.sampled_from(["store", "artifact_dir", "buffer_pool_mb", "password", "user", "neo4j", "stor", '"a b"'])
config_files = st.one_of(
    st.binary(max_size=200),
    weird_text.map(lambda t: t.encode("utf-8")),
    st.lists(st.tuples(st.sampled_from(["", "[neo4j]\n", "[x]\n", "[neo4j.deep]\n"]), toml_keys, toml_scalars),
             min_size=1, max_size=4).map(lambda rows: "".join(f"{sec}{k} = {v}\n" for sec, k, v in rows).encode()),
    st.sampled_from([b"store = ", b'neo4j = "oops"', b"[neo4j]\npassword = 12345678", b'store = "\xff\xfe"',
                     b"store = '" + b"a" * (1 << 20) + b"'", b"a = " + b"[" * 5000 + b"]" * 5000,
                     b'store = "http://x"', b'store = ""', b"buffer_pool_mb = -1", b'buffer_pool_mb = "big"']),
)


# -- families -----------------------------------------------------------------------------------
@FUZZ
@given(text=cypher, fmt=st.sampled_from(["table", "csv", "json"]))
def test_cypher_text(box, text, fmt):
    result = invoke(box, ["query", text, "--format", fmt], may_succeed=True)
    if result.exit_code == 0 and fmt == "json":
        _strict_json(result.stdout)


@FUZZ
@given(value=json_values, raw=st.booleans(), key=st.sampled_from(["x", "create", "limit", "é", "1x", ""]))
def test_parameters(box, value, raw, key):
    text = _param_text(value) if not raw else (value if isinstance(value, str) else repr(value))
    result = invoke(box, ["query", f"RETURN ${key or 'x'} AS v", "-p", f"{key}={text}", "--format", "json"],
                    may_succeed=True)
    if result.exit_code == 0:
        rows = _strict_json(result.stdout)
        if not raw and (isinstance(value, (bool, int)) or (isinstance(value, str) and value.isalnum())):
            assert rows == [{"v": value}]


@FUZZ
@given(url=store_urls, command=st.sampled_from(["stats", "init", "queries-run", "delete-model"]))
def test_store_urls_and_paths(box, url, command):
    if command == "init" and "://" not in url:
        command = "stats"  # init at a plain path may legitimately create a store (even at "/")
    args = {"stats": ["stats"], "init": ["init"], "queries-run": ["query", "--name", "models"],
            "delete-model": ["delete-model", "m", "--yes"]}[command]
    result = invoke(box, [*args, "--store", url], may_succeed=command == "init")
    if result.exit_code == 0:  # init made a store at a plain relative path: no scheme, nothing odd
        assert "://" not in url


@FUZZ
@given(content=config_files)
def test_config_files(box, content):
    invoke(box, ["stats"], config=content, NKB_STORE=None)


@FUZZ
@given(store=st.one_of(st.none(), store_urls), data=st.one_of(st.none(), any_text, st.just("/dev/null")),
       home=st.one_of(st.none(), any_text), command=st.sampled_from(["stats", "init"]))
def test_environment(box, store, data, home, command):
    safe = store is None and (data in (None, "", "/dev/null") or (data.isalnum() and data.isascii()))
    if command == "init" and not safe:
        command = "stats"  # init at an arbitrary path may legitimately create a store there
    result = invoke(box, [command], may_succeed=True, NKB_STORE=store, XDG_DATA_HOME=data,
                    XDG_CONFIG_HOME=home if home is not None else str(box.root / "config"))
    if result.exit_code == 0:
        assert command == "init" or (store is None and data is None)


# Ingest: one option is certainly bad; the rest vary. Faults seen without a model must be
# reported before any model loads.
EARLY_FAULTS = st.one_of(
    st.tuples(st.sampled_from(["--device"]), st.sampled_from(["mps", "meta", "cuda:x", "gpu", "", "cpu ", "cuda:99999"])),
    st.tuples(st.sampled_from(["--tokens", "--window", "--top-k", "--per-quantile", "--batch-size",
                               "--checkpoint-every", "--lmhead-k"]), st.integers(-(2**70), 0).map(str)),
    st.tuples(st.sampled_from(["--random", "--quantiles"]), st.integers(-(2**70), -1).map(str)),
    st.tuples(st.sampled_from(["--layers"]), st.sampled_from(["x", "3-1", "-1", "0-99999999999", "1,,2", "0-"])),
    st.tuples(st.sampled_from(["--stages"]), st.sampled_from(["", ",", "nonsense", "all,x", " "])),
    st.tuples(st.sampled_from(["--name"]), st.sampled_from(["", "a\nb", " x", "x" * 5000, "a\x00b", "\u200b"])),
    st.tuples(st.sampled_from(["--corpus"]), st.sampled_from(["/nonexistent/c.txt", "x" * 5000, "c.pdf", "/dev/null",
                                                               "hf:", "hf:a:b:c:d"])),
    st.tuples(st.sampled_from(["--dtype"]), st.sampled_from(["float64", "int8", ""])),
    st.tuples(st.just("MODEL"), st.sampled_from(["", "x" * 5000, "/nonexistent/model", "a/b/c", "m.gguf",
                                                  "line\nbreak"])),
)


@SLOW_FUZZ
@given(fault=EARLY_FAULTS, seed=st.integers(-(2**40), 2**40), store=st.sampled_from(["kb", "new"]))
def test_ingest_options_fail_before_the_model_loads(box, fault, seed, store):
    flag, value = fault
    model = value if flag == "MODEL" else str(box.tiny)
    extra = [] if flag == "MODEL" else [flag, value]
    where = str(box.kb) if store == "kb" else str(box.root / "work" / "new-kb")
    with model_loads_counted() as loads:
        invoke(box, ["ingest", model, *SMALL, "--seed", str(seed), *extra, "--store", where])
    assert not loads, "the model was loaded before a fault visible without it was reported"


def _model_dir(box: Sandbox, config: bytes) -> str:
    d = box.root / "files" / "models" / "m"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "config.json").write_bytes(config)
    return str(d)


model_configs = st.one_of(
    st.binary(max_size=50),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"model_type": st.sampled_from(["llama", "gpt2", "gpt_neox", "bert", "nonsense", "", 7])},
                          optional={"hidden_size": st.one_of(st.integers(-3, 64), weird_text),
                                    "num_hidden_layers": st.integers(-2, 3),
                                    "vocab_size": st.one_of(st.integers(-1, 600), st.none())}).map(
        lambda d: json.dumps(d).encode()),
)


@SLOW_FUZZ
@given(config=model_configs)
def test_model_directories(box, config):
    """A directory with a config.json and no weights can never load: always one clear line."""
    invoke(box, ["ingest", _model_dir(box, config), *SMALL, "--store", str(box.kb)])


def _corpus(box: Sandbox, name: str, data: bytes) -> str:
    path = box.root / "files" / "corpus" / name
    shutil.rmtree(path.parent, ignore_errors=True)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return str(path)


bad_json_lines = st.one_of(st.binary(min_size=1, max_size=30).filter(lambda b: b.strip() and b"\n" not in b),
                           st.sampled_from([b"[" * 100000 + b"]" * 100000, b'{"text": 5}', b"[1]", b'{"txt": "a"}',
                                            b'{"text": "\xff"}', b"{", b"null"]))
corpora = st.one_of(
    st.tuples(st.just("c.jsonl"), st.lists(bad_json_lines, min_size=1, max_size=3).map(b"\n".join)),
    st.tuples(st.just("c.parquet"), st.binary(max_size=64)),
    st.tuples(st.sampled_from(["c.txt", "c.md"]), st.sampled_from([b"", b"\xff\xfe text", b"ok \xc3", b"   "])),
)


@SLOW_FUZZ
@given(corpus=corpora)
def test_corpus_files(box, corpus):
    name, data = corpus
    with model_loads_counted() as loads:
        invoke(box, ["ingest", str(box.tiny), *SMALL, "--corpus", _corpus(box, name, data), "--store", str(box.kb)])
    try:
        data.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    # Seen without a model: a file that is not Parquet, not UTF-8, or empty. A .jsonl's later
    # lines, and whitespace that may or may not make a window, are only known once tokenized.
    if name.endswith(".parquet") or (name.endswith((".txt", ".md")) and (not data or not utf8)):
        assert not loads


@SLOW_FUZZ
@given(option=st.sampled_from(["--lmhead-k", "--top-k", "--random", "--per-quantile", "--window"]),
       value=st.integers(513, 2**40))
def test_ingest_counts_bounded_by_what_exists(box, option, value):
    """Counts beyond the vocabulary (512), the corpus windows (16) or the context (128) need the
    model to see; refused before any write."""
    result = invoke(box, ["ingest", str(box.tiny), *SMALL, option, str(value),
                          "--store", str(box.kb)])
    assert result.exit_code == 1


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# -- the real command, a few cases --------------------------------------------------------------
@pytest.mark.parametrize("args, env, expect", [
    (["stats", "--store", f"bolt://127.0.0.1:1?password={SECRET}"], {}, "bolt:// URLs take no query string"),
    (["stats"], {"NKB_STORE": "bolt://[::1"}, "$NKB_STORE bolt://[::1 is not a valid URL"),
    (["init", "--store", "http://x"], {}, "unsupported scheme http://"),
    (["ingest", "smollm2-135m", "--device", "meta"], {}, "--device must be cpu, cuda, cuda:N, mps or auto"),
    (["stats"], {"CONFIG": b"[neo4j]\npassword = 12345678\n", "NKB_STORE": None}, "neo4j.password must be"),
])
def test_real_nkb(box, args, env, expect):
    env = dict(env)
    config = env.pop("CONFIG", None)
    before = box.listing()
    if config:
        box.config.write_bytes(config)
    full = {k: v for k, v in {**os.environ, **box.env(**env)}.items() if v is not None}
    full["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), full.get("PYTHONPATH", "")])
    try:
        proc = subprocess.run([sys.executable, "-m", "kb.cli", *args], capture_output=True, text=True, env=full,
                              cwd=box.work, timeout=300)
    finally:
        box.config.unlink(missing_ok=True)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert box.listing() == before


# -- the campaign's findings, one by one (issue 10) ----------------------------------------------
CONFIG_FINDINGS = [
    (b"store = ", "is not valid TOML"),
    (b'neo4j = "oops"', "neo4j must be a table"),
    (b"[neo4j]\npassword = 12345678", "neo4j.password must be the Neo4j password, as a quoted string, not a TOML integer"),
    (b'store = "\xff\xfe"', "is not UTF-8 text (byte 0xff at offset 9)"),
    (b"store = '" + b"a" * (1 << 20) + b"'", "is larger than 1 MiB"),
    (b"store = '" + b"a" * 5000 + b"'", "is 5,000 characters long"),
    (b"stor = 'x'", "unknown key 'stor'"),
]


@pytest.mark.parametrize("content, message", CONFIG_FINDINGS)
def test_config_file_findings(box, content, message):
    result = invoke(box, ["stats", "--store", "bolt://127.0.0.1:1"], config=content)
    line = result.stderr.strip()
    assert message in line and str(box.config) in line


def test_unreadable_config_file(box):
    box.config.mkdir()  # a directory where the file should be: unreadable as a file, also for root
    try:
        result = invoke(box, ["stats"], config=False, NKB_STORE=None)
    finally:
        box.config.rmdir()
    assert "config file" in result.stderr and str(box.config) in result.stderr


@pytest.mark.parametrize("args, env, message", [
    (["stats"], {"NKB_STORE": "bolt://[::1"}, "is not a valid URL: Invalid IPv6 URL"),
    (["stats"], {"NKB_STORE": "a" * 120_000}, "$NKB_STORE is 120,000 characters long"),
    (["init"], {"NKB_STORE": None, "XDG_DATA_HOME": "/dev/null"}, "/dev/null/neuron-kb/default: Not a directory"),
    (["stats", "--store", "bolt://u:pw@[::1"], {}, "bolt://u:***@[::1 is not a valid URL"),
    (["stats", "--store", "b" * 120_000], {}, "--store is 120,000 characters long"),
    (["init", "--store", "http://x"], {}, "has the unsupported scheme http://"),
    (["stats", "--store", ""], {}, "--store is empty"),
    (["init", "--store", "/tmp/" + "y" * 300 + "/kb"], {}, "File name too long"),
    (["stats", "--store", f"bolt://127.0.0.1:1?password={SECRET}"], {}, "bolt://127.0.0.1:1?password=***"),
    (["stats", "--store", f"neo4j://127.0.0.1:1?password={SECRET}"], {}, "neo4j://127.0.0.1:1?password=***"),
])
def test_store_location_findings(box, args, env, message):
    result = invoke(box, args, **env)
    assert message in result.stderr
    assert not (box.work / "http:").exists()


def test_driver_messages_are_scrubbed():
    from kb import config

    url = f"neo4j://u:{SECRET}@h:1/db?password={SECRET}x&policy=p"
    driver_message = f"Given URI: 'neo4j://h:1?password={SECRET}x&policy=p' for user u:{SECRET}"
    scrubbed = config.scrub(driver_message, url, SECRET)
    assert SECRET not in scrubbed and "password=***" in scrubbed
    assert config.redact(url) == "neo4j://u:***@h:1/db?password=***&policy=***"


@pytest.mark.parametrize("query, expected", [
    ("RETURN date('2020-01-01') AS v", "2020-01-01T00:00:00"),  # a DATE column arrives as a midnight timestamp
    ("RETURN [date('2020-01-01')] AS v", ["2020-01-01"]),
    ("RETURN timestamp('2020-01-01 10:00:00.5') AS v", "2020-01-01T10:00:00.500000"),
    ("RETURN interval('1 year 2 days 3 hours') AS v", "P367DT3H"),
    ("RETURN {a: interval('90 seconds')} AS v", {"a": "PT1M30S"}),
    ("RETURN BLOB('\\\\xAA\\\\xBB') AS v", "qrs="),
    ("RETURN UUID('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11') AS v", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("RETURN CAST(1.5 AS DECIMAL(10,3)) AS v", "1.500"),
    ("RETURN cast('inf' AS DOUBLE) AS v", "Infinity"),
    ("RETURN cast('-inf' AS DOUBLE) AS v", "-Infinity"),
    ("RETURN cast('nan' AS DOUBLE) AS v", None),
])
def test_json_output_is_json_for_every_value_type(box, query, expected):
    result = invoke(box, ["query", query, "--format", "json"], may_succeed=True)
    assert _strict_json(result.stdout) == [{"v": expected}]


@pytest.mark.parametrize("value, expected", [("1e309", "Infinity"), ("-1e309", "-Infinity"), ("NaN", None)])
def test_non_finite_parameters_print_as_json(box, value, expected):
    result = invoke(box, ["query", "RETURN $x AS v", "-p", f"x={value}", "--format", "json"], may_succeed=True)
    assert _strict_json(result.stdout) == [{"v": expected}]


@pytest.mark.parametrize("value, message", [
    ('[1,"a",null]', "parameter $x is a list that mixes numbers and text"),
    ("[true, 1]", "mixes booleans and numbers"),
    ('[{"a":1},{"b":2}]', "mixes a map with keys a and a map with keys b"),
    ('{"k": [[1], ["a"]]}', "mixes a number and text"),
])
def test_mixed_list_parameters(box, value, message):
    result = invoke(box, ["query", "RETURN $x AS v", "-p", f"x={value}"])
    assert message in result.stderr


@pytest.mark.parametrize("extra, message, loads", [
    (["--device", "mps"], "device 'mps' requested but Apple's MPS is not available", False),
    (["--device", "meta"], "--device must be cpu, cuda, cuda:N, mps or auto, got 'meta'", False),
    (["--name", "a\nb"], "--name 'a\\nb' cannot be a model id", False),
    (["--stages", ""], "no stage to run: --stages is empty", False),
    (["--random", "-1"], "--random must be at least 0", False),
    (["--quantiles", "-1"], "--quantiles must be at least 0", False),
    (["--per-quantile", "0"], "--per-quantile must be at least 1", False),
    (["--corpus", "/nonexistent/corpus.txt"], "no such corpus file or directory", False),
    (["--layers", "0-99999999999"], "is beyond any model", False),
    (["--lmhead-k", "60000"], "--lmhead-k 60000 is larger than the vocabulary of 512 tokens", True),
    (["--top-k", "17"], "--top-k 17 is more than the 16 windows the corpus gave", True),
    (["--random", "100"], "--random 100 is more than the 16 windows", True),
    (["--per-quantile", "20"], "--per-quantile 20 is more than the 16 windows", True),
    (["--window", "200", "--tokens", "4096"], "--window 200 does not fit the model's context of 128 positions", True),
])
def test_ingest_findings(box, extra, message, loads):
    with model_loads_counted() as calls:
        result = invoke(box, ["ingest", str(box.tiny), *SMALL, *extra, "--store", str(box.root / "work" / "new")])
    assert message in result.stderr
    assert bool(calls) == loads


@pytest.mark.parametrize("name, data, message", [
    ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000, "line 1: JSON nested too deeply"),
    ("fake.parquet", b"PAR1 not really", "is not a readable Parquet file"),
    ("empty.txt", b"", "has no text"),
])
def test_corpus_findings(box, name, data, message):
    with model_loads_counted() as calls:
        result = invoke(box, ["ingest", str(box.tiny), *SMALL, "--corpus", _corpus(box, name, data),
                              "--store", str(box.kb)])
    assert message in result.stderr and not calls


@pytest.mark.parametrize("config, message", [
    (b"{}", "Should have a `model_type` key"),
    (b'{"model_type": "llama", "hidden_size": "x"}', "hidden_size"),
    (b'{"model_type": "nonsense"}', "model type `nonsense`"),
    (b"[]", "config.json is not a usable model config"),
])
def test_model_directory_findings(box, config, message):
    result = invoke(box, ["ingest", _model_dir(box, config), *SMALL, "--store", str(box.kb)])
    assert message in result.stderr and "config.json" in result.stderr


def test_a_5000_character_model_name(box):
    result = invoke(box, ["ingest", "m" * 5000, "--store", str(box.kb)])
    assert "not a model name or path" in result.stderr and len(result.stderr) < 400


def test_json_never_has_bare_non_finite_numbers():
    from kb import output

    text = output.to_json({"a": [math.inf, -math.inf, math.nan, 1.5]})
    assert _strict_json(text) == {"a": ["Infinity", "-Infinity", None, 1.5]}
