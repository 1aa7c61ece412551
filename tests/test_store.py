"""The store contract, run against every engine (see conftest.py: embedded, bolt, neo4j).

The data is a small seeded knowledge base of three models: ``ma`` and ``mb`` share the
tokenizer ``tok`` and some snippets; ``mc`` has a tokenizer of its own. Tests speak only
the public Store API and engine-neutral Cypher; the few that need the embedded engine's
files are named ``test_embedded_*`` and use a temporary directory of their own.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ingest.stages.model import spellings
from ingest.stages.n2g import trie_members
from kb import schema
from kb.errors import (
    NkbError,
    ParameterError,
    QueryError,
    ReadOnlyViolation,
    SchemaError,
    SchemaVersionMismatch,
    StoreCorrupt,
    StoreNotFound,
)
from kb.records import decode_activations, encode_activations
from dump import dump
from kbdata import term_index, text_terms
from kb.stores import open_store

SEED = 1234
LAYERS, WIDTH = 2, 4
N_TOK, N_TOK2, SNIPPET_LEN = 20, 10, 8


def make_kb(seed: int = SEED) -> dict[str, pd.DataFrame]:
    """Frames per label/type for the three-model KB, identical for a given seed."""
    rng = np.random.default_rng(seed)
    models = pd.DataFrame({
        "id": ["ma", "mb", "mc"],
        "kind": "lm",
        "architecture": ["llama", "llama", "gpt2"],
        "n_layers": LAYERS,
        "d_mlp": WIDTH,
        "tokenizer": ["tok", "tok", "tok2"],
    })
    neuron_ids = {m: [f"{m}/{layer}/{i}" for layer in range(LAYERS) for i in range(WIDTH)] for m in models["id"]}
    n_all = sum(len(v) for v in neuron_ids.values())
    neurons = pd.DataFrame({
        "id": [n for m in models["id"] for n in neuron_ids[m]],
        "model": np.repeat(models["id"].to_numpy(), LAYERS * WIDTH),
        "layer": np.tile(np.repeat(np.arange(LAYERS), WIDTH), 3),
        "idx": np.tile(np.arange(WIDTH), 3 * LAYERS),
        "kind": "mlp",
        "max_act": rng.random(n_all) * 10,
        "density": rng.random(n_all),
        "quantile_boundaries": [sorted(rng.random(4).round(6).tolist()) for _ in range(n_all)],
    })
    tokens = pd.concat([
        pd.DataFrame({"id": [f"tok/{i}" for i in range(N_TOK)], "tokenizer": "tok",
                      "token_id": np.arange(N_TOK), "text": [f" w{i}" for i in range(N_TOK)]}),
        pd.DataFrame({"id": [f"tok2/{i}" for i in range(N_TOK2)], "tokenizer": "tok2",
                      # tok2's first token is spelled as tok's is: one TokenText for both
                      "token_id": np.arange(N_TOK2), "text": [" w0"] + [f"v{i}" for i in range(1, N_TOK2)]}),
    ], ignore_index=True)

    def snippet(tokenizer: str, name: str, vocab: int) -> dict:
        ids = rng.integers(0, vocab, SNIPPET_LEN).tolist()
        words = [f"t{i}" for i in ids]
        return {"id": f"{tokenizer}/{name}", "tokenizer": tokenizer, "corpus": "seeded",
                "token_ids": ids, "tokens": words, "text": "".join(words)}

    snippets = pd.DataFrame([snippet("tok", f"s{i}", N_TOK) for i in range(6)]
                            + [snippet("tok2", f"s{i}", N_TOK2) for i in range(3)])

    promotes, activates = [], []
    for m, tokenizer, vocab in (("ma", "tok", N_TOK), ("mb", "tok", N_TOK), ("mc", "tok2", N_TOK2)):
        for k, n in enumerate(neuron_ids[m]):
            for rank, t in enumerate(rng.choice(vocab, 3, replace=False)):
                promotes.append({"src": n, "dst": f"{tokenizer}/{t}", "logit": float(rng.normal()), "rank": rank})
            # ma uses snippets s0-s3, mb s2-s5: s2 and s3 are shared, s0/s1 are ma's alone.
            first = {"ma": 0, "mb": 2, "mc": 0}[m]
            for rank, s in enumerate((first + k % 2, first + 2 + k % 2) if m != "mc" else (k % 3,)):
                acts = rng.random(SNIPPET_LEN).astype(np.float32)
                activates.append({"src": n, "dst": f"{tokenizer}/s{s}", "kind": "top", "rank": rank,
                                  "max": float(acts.max()), "position": int(acts.argmax()),
                                  "activations": encode_activations([acts])[0]})
    explained = [n for m in ("ma", "mb") for n in neuron_ids[m]]
    explanations = pd.DataFrame({
        "id": [f"{n}/data/top" for n in explained],
        "neuron": explained,
        "model": [n.split("/")[0] for n in explained],
        "text": [f"fires on w{i}" for i in range(len(explained))],
        "explainer": "data",
        "method": "top-activations",
    })
    scores = pd.DataFrame({
        "id": [f"{e}/simulation/sim/all" for e in explanations["id"]],
        "model": explanations["model"],
        "method": "simulation",
        "value": rng.random(len(explanations)),
        "scorer": "sim",
        "split": "all",
    })
    n2g = pd.DataFrame({
        "id": [f"{n}/3" for n in neuron_ids["ma"]],
        "neuron": neuron_ids["ma"],
        "model": "ma",
        "token": " w3",
        "token_id": 3,
        "activation": rng.random(len(neuron_ids["ma"])),
        "is_end": True,
        "depth": 0,
    })
    texts, spells = spellings(tokens)
    return {
        "Model": models,
        "Neuron": neurons,
        "Token": tokens,
        "TokenText": texts,
        "Snippet": snippets,
        "Explanation": explanations,
        "Score": scores,
        "N2GNode": n2g,
        "HAS_NEURON": pd.DataFrame({"src": neurons["model"], "dst": neurons["id"]}),
        "PROMOTES": pd.DataFrame(promotes),
        "ACTIVATES_ON": pd.DataFrame(activates),
        "EXPLAINED_BY": pd.DataFrame({"src": explanations["neuron"], "dst": explanations["id"]}),
        "HAS_SCORE": pd.DataFrame({"src": explanations["id"], "dst": scores["id"]}),
        "N2G_ROOT": pd.DataFrame({"src": n2g["neuron"], "dst": n2g["id"]}),
        "HAS_N2G_NODE": trie_members(n2g),
        "SPELLS": spells,
        "SIMILAR_TO": pd.DataFrame({"src": neuron_ids["ma"], "dst": neuron_ids["mb"], "score": 0.5,
                                    "method": "output_weights", "rank": 0}),
    }


def load(store, frames: dict[str, pd.DataFrame]) -> None:
    for name, df in frames.items():
        if name in schema.NODE_BY_LABEL:
            store.upsert_nodes(name, df)
    for name, df in frames.items():
        if name in schema.REL_BY_TYPE:
            store.upsert_rels(name, df)


def records(store, query: str, params: dict | None = None) -> list[dict]:
    """Query rows as dicts, with every engine's null (None, NaN) read as None."""
    df = store.cypher(query, params)
    return [{k: (None if not isinstance(v, (list, np.ndarray)) and pd.isna(v) else v) for k, v in row.items()}
            for row in df.to_dict("records")]


def expected_counts(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    out = {name: 0 for name in (*schema.NODE_BY_LABEL, *schema.REL_BY_TYPE)}
    out.update({name: len(df) for name, df in frames.items()})
    if "Explanation" in frames:  # the store indexes their texts
        out.update(term_index(frames["Explanation"]["text"]))
    return out


NEURONS_Q = ("MATCH (n:Neuron) RETURN n.id AS id, n.model AS model, n.layer AS layer, n.idx AS idx, "
             "n.max_act AS max_act, n.density AS density, n.quantile_boundaries AS qb ORDER BY id")
PROMOTES_Q = ("MATCH (a:Neuron)-[r:PROMOTES]->(b:Token) RETURN a.id AS src, b.id AS dst, r.logit AS logit, "
              "r.`rank` AS `rank` ORDER BY src, dst")
ACTS_Q = ("MATCH (a:Neuron)-[r:ACTIVATES_ON]->(s:Snippet) RETURN a.id AS src, s.id AS dst, r.kind AS kind, "
          "r.`rank` AS `rank`, r.`max` AS mx, r.position AS position, r.activations AS acts ORDER BY src, dst, kind")


@pytest.fixture
def frames() -> dict[str, pd.DataFrame]:
    return make_kb()


@pytest.fixture
def full(store, frames):
    load(store, frames)
    return store


def _is_dir_url(url: str) -> bool:
    return "://" not in url


# -- opening ------------------------------------------------------------------------------
def test_create_and_reopen(store_url, frames):
    with open_store(store_url, create=True) as s:
        load(s, frames)
        assert s.get_meta("schema_version") == str(schema.SCHEMA_VERSION)
        assert s.get_meta("created_by").startswith("neuron-kb ")
        before = records(s, NEURONS_Q)
    with open_store(store_url) as s:
        assert s.counts() == expected_counts(frames)
        assert records(s, NEURONS_Q) == before
        assert s.get_meta("schema_version") == str(schema.SCHEMA_VERSION)
        assert s.get_meta("no such key") is None


def test_missing_store_is_not_created(store_url):
    with pytest.raises(StoreNotFound) as err:
        open_store(store_url)
    assert "nkb init --store" in str(err.value)
    # The failed open must not have made an empty store on the way.
    with pytest.raises(StoreNotFound):
        open_store(store_url, read_only=True)


def test_schema_version_mismatch_refuses_and_changes_nothing(store_url, frames, monkeypatch):
    with open_store(store_url, create=True) as s:
        load(s, frames)
        s.set_meta("schema_version", "999")
        before = dump(s)
    for read_only in (False, True):
        with pytest.raises(SchemaVersionMismatch) as err:
            open_store(store_url, read_only=read_only)
        message = str(err.value)
        assert "999" in message and f"expects schema version {schema.SCHEMA_VERSION}" in message
        assert "re-ingest" in message
    # Seen by code of version 999, the store is intact.
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 999)
    with open_store(store_url, read_only=True) as s:
        assert dump(s) == before


def test_embedded_mismatch_leaves_files_untouched(tmp_path, frames):
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as s:
        load(s, frames)
        s.set_meta("schema_version", "0")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(url).iterdir()}
    for read_only in (False, True):
        with pytest.raises(SchemaVersionMismatch):
            open_store(url, read_only=read_only)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(url).iterdir()}
    assert after == before


def test_embedded_corrupt_store(tmp_path):
    url = tmp_path / "kb"
    url.mkdir()
    garbage = b"not a graph " * 1000
    (url / "graph.lbug").write_bytes(garbage)
    for read_only in (False, True):
        with pytest.raises(StoreCorrupt) as err:
            open_store(str(url), read_only=read_only, create=True)
        assert str(url) in str(err.value)
    assert (url / "graph.lbug").read_bytes() == garbage


def test_embedded_file_instead_of_directory(tmp_path):
    path = tmp_path / "kb"
    path.write_text("hello")
    with pytest.raises(StoreCorrupt, match="not a knowledge-base directory"):
        open_store(str(path), create=True)


def test_embedded_store_is_a_directory_with_room_beside_the_graph(tmp_path):
    url = tmp_path / "deep" / "kb"
    with open_store(str(url), create=True) as s:
        assert s.engine == "embedded"
    assert (url / "graph.lbug").is_file()
    (url / "index.faiss").write_bytes(b"x")
    with open_store(str(url)) as s:
        assert s.counts()["Neuron"] == 0


def _pool_mb(store) -> int:
    """The buffer pool the engine itself reports (not what we asked for)."""
    return int(store._scalar("CALL bm_info() RETURN mem_limit")) // 2**20


def test_embedded_buffer_pool_setting_is_applied(tmp_path, monkeypatch):
    from kb import config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv(config.BUFFER_POOL_ENV, raising=False)
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as s:
        assert _pool_mb(s) == config.DEFAULT_BUFFER_POOL_MB
    (tmp_path / "cfg" / "neuron-kb").mkdir(parents=True)
    (tmp_path / "cfg" / "neuron-kb" / "config.toml").write_text("buffer_pool_mb = 200\n")
    with open_store(url, read_only=True) as s:
        assert _pool_mb(s) == 200
    monkeypatch.setenv(config.BUFFER_POOL_ENV, "96")  # the environment wins over the file
    for read_only in (False, True):
        with open_store(url, read_only=read_only) as s:
            assert _pool_mb(s) == 96


def _neurons(layer: int, n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"m/{layer}/{i}" for i in range(n)], "model": "m", "layer": layer,
                         "idx": np.arange(n)})


def test_embedded_many_node_batches_fit_a_small_buffer_pool(tmp_path, monkeypatch):
    """Each node COPY pins ~16 MB of LadybugDB's pool until close: 30 per-layer batches of
    Neurons into 64 MB must not depend on that path."""
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "64")
    with open_store(str(tmp_path / "kb"), create=True) as s:
        for layer in range(30):
            s.upsert_nodes("Neuron", _neurons(layer, 50))
        s.upsert_nodes("Neuron", _neurons(3, 60).assign(max_act=1.5))  # 50 updates and 10 new
        got = s.cypher("MATCH (n:Neuron) RETURN n.layer AS layer, count(*) AS n, max(n.max_act) AS mx "
                       "ORDER BY layer")
    assert got["n"].tolist() == [50] * 3 + [60] + [50] * 26
    assert got["mx"][3] == 1.5 and got["mx"].isna().sum() == 29


def test_embedded_second_model_edges_fit_a_small_buffer_pool(tmp_path, monkeypatch):
    """A COPY into a relationship table the handle has just read keeps pool memory until the
    database closes (LadybugDB 0.22): a second model's per-layer token edges, written into a
    table that the first model's fill, must not add up."""
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "128")
    url, layers, width, k = str(tmp_path / "kb"), 8, 1536, 10
    rng = np.random.default_rng(0)
    tokens = [f"tok/{t}" for t in range(8000)]

    def edges(model: str, layer: int) -> pd.DataFrame:
        src = np.repeat([f"{model}/{layer}/{i}" for i in range(width)], k)
        dst = [tokens[t] for t in rng.choice(len(tokens), size=(width, k), replace=True).ravel()]
        return pd.DataFrame({"src": src, "dst": dst, "logit": 1.0, "rank": np.tile(np.arange(k), width),
                             "found": "neuron"}).drop_duplicates(["src", "dst"])

    with open_store(url, create=True) as s:
        s.upsert_nodes("Token", pd.DataFrame({"id": tokens}))
        for model in ("a", "b"):
            s.upsert_nodes("Neuron", pd.DataFrame({"id": [f"{model}/{layer}/{i}" for layer in range(layers)
                                                          for i in range(width)],
                                                   "model": model, "layer": np.repeat(np.arange(layers), width)}))
        for layer in range(layers):
            s.upsert_rels("PROMOTES", edges("a", layer))
    written = {}
    with open_store(url) as s:  # a new handle: it does not know which neurons have edges
        for layer in range(layers):
            frame = edges("b", layer)
            written[layer] = len(frame)
            s.upsert_rels("PROMOTES", frame)
        got = s.cypher("MATCH (n:Neuron {model: 'b'})-[:PROMOTES]->() RETURN n.layer AS layer, count(*) AS n")
    assert dict(zip(got["layer"], got["n"])) == written


def test_embedded_stores_activation_records_forward_only(tmp_path):
    """ACTIVATES_ON has no backward index in the embedded engine (schema.RelType.backward):
    walking it from its snippet fails there, so every statement of the store walks it from
    the neuron (delete_model's orphan check included, see test_delete_model_*)."""
    assert [rt.type for rt in schema.RELS if not rt.backward] == ["ACTIVATES_ON"]
    with open_store(str(tmp_path / "kb"), create=True) as s:
        s.upsert_nodes("Neuron", pd.DataFrame({"id": ["n0", "n1"]}))
        s.upsert_nodes("Snippet", pd.DataFrame({"id": ["s0", "s1"]}))
        s.upsert_rels("ACTIVATES_ON", pd.DataFrame({"src": ["n0"], "dst": ["s0"], "kind": "top", "rank": 0}))
        got = s.cypher("MATCH (n:Neuron)-[:ACTIVATES_ON]->(s:Snippet {id: 's0'}) RETURN n.id AS n")
        assert got["n"].tolist() == ["n0"]
        with pytest.raises(NkbError, match="keeps ACTIVATES_ON forward only") as err:
            s.cypher("MATCH (s:Snippet) WHERE NOT EXISTS { MATCH (s)<-[:ACTIVATES_ON]-() } RETURN s.id AS s")
        assert "(:Neuron)-[:ACTIVATES_ON]->(:Snippet)" in err.value.hint
        # The promotes edges keep both directions.
        s.cypher("MATCH (t:Token) WHERE NOT EXISTS { MATCH (t)<-[:PROMOTES]-() } RETURN t.id AS t")


def test_embedded_pool_full_during_a_write_rolls_it_back(tmp_path, monkeypatch):
    url = str(tmp_path / "kb")
    acts = encode_activations(np.arange(64, dtype=np.float32).reshape(1, 64))[0]
    with open_store(url, create=True) as s:  # the nodes in the default pool, so that only the records can fail
        s.upsert_nodes("Neuron", pd.DataFrame({"id": [f"n{i}" for i in range(12000)]}))
        s.upsert_nodes("Snippet", pd.DataFrame({"id": [f"s{i}" for i in range(10)]}))
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "40")
    with open_store(url) as s:
        # 120,000 records in one COPY: 60,000 fit a fresh 40 MB pool (ACTIVATES_ON is stored
        # forward only).
        with pytest.raises(NkbError) as err:
            s.upsert_rels("ACTIVATES_ON", pd.DataFrame({
                "src": np.repeat([f"n{i}" for i in range(12000)], 10), "dst": np.tile([f"s{i}" for i in range(10)], 12000),
                "kind": "top", "rank": 0, "max": 1.0, "position": 0, "activations": acts}))
        assert "buffer pool is full" in str(err.value) and "rolled back" in err.value.hint
        assert "post-commit" not in str(err.value) and "NKB_BUFFER_POOL_MB" in err.value.hint
        assert s.counts()["ACTIVATES_ON"] == 0
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "1024")
    with open_store(url) as s:
        assert s.counts()["ACTIVATES_ON"] == 0


def test_embedded_bulk_writes_are_sized_to_the_buffer_pool(tmp_path, monkeypatch):
    """bulk_batch_rows gives a COPY at most a twelfth of the pool, counted in the frame's
    bytes, and the records written in such batches are all stored. (Small COPYs are not free:
    a COPY into a table that holds rows needs more pool than the first one, so splitting only
    pays at scale; see EmbeddedStore.copy_pool_share.)"""
    acts = encode_activations(np.arange(64, dtype=np.float32).reshape(1, 64))[0]
    edges = pd.DataFrame({
        "src": np.repeat([f"n{i}" for i in range(6000)], 10), "dst": np.tile([f"s{i}" for i in range(10)], 6000),
        "kind": "top", "rank": 0, "max": 1.0, "position": 0, "activations": acts})
    with open_store(str(tmp_path / "kb"), create=True) as s:  # the nodes in the default pool
        s.upsert_nodes("Neuron", pd.DataFrame({"id": [f"n{i}" for i in range(6000)]}))
        s.upsert_nodes("Snippet", pd.DataFrame({"id": [f"s{i}" for i in range(10)]}))
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "96")
    with open_store(str(tmp_path / "kb")) as s:
        rows = s.bulk_batch_rows(edges)
        per_row = edges.memory_usage(index=False, deep=True).sum() / len(edges)
        assert rows == int(96 * 2**20 // 12 // int(per_row)) and rows < len(edges)
        assert s.upsert_rels("ACTIVATES_ON", edges, batch_size=rows) == len(edges)
        assert s.counts()["ACTIVATES_ON"] == len(edges)
        assert s.bulk_batch_rows(edges.iloc[:10]) == 10  # never more rows than the frame has


def test_embedded_pool_full_after_commit(tmp_path, monkeypatch):
    """LadybugDB can fail in the checkpoint that follows a commit, saying the transaction
    committed and is durable. What is true afterwards: every earlier batch is stored; the
    failing one may or may not be (we have seen both: nodes came back on reopening,
    relationships did not). The message says only that, and the handle is closed so nothing
    reads a state that may not last."""
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "48")
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as s:
        s.upsert_nodes("Neuron", pd.DataFrame({"id": [f"n{i}" for i in range(10)]}))
        with pytest.raises(NkbError) as err:
            s.upsert_nodes("Snippet", pd.DataFrame({"id": [f"s{i}" for i in range(88_000)]}))
        message = f"{err.value} {err.value.hint}"
        assert "post-commit checkpoint failed" in message, message
        assert "rolled back" not in message and "as it was" not in message
        assert "may be missing" in message and "NKB_BUFFER_POOL_MB" in message
        with pytest.raises(NkbError, match="closed"):
            s.counts()
    monkeypatch.setenv("NKB_BUFFER_POOL_MB", "1024")
    # Where the failed checkpoint is left to the next read-write open (we saw that after
    # relationship batches), a read-only open is refused with a line saying so, not called
    # corrupt; the read-write open finishes it.
    try:
        open_store(url, read_only=True).close()
    except StoreCorrupt as e:
        assert "checkpoint to finish" in str(e)
    with open_store(url) as s:
        s.counts()
    with open_store(url, read_only=True) as s:
        counts = s.counts()
    assert counts["Neuron"] == 10 and counts["Snippet"] in (0, 88_000)


# -- writing ------------------------------------------------------------------------------
def test_counts_cover_every_label_and_type(full, frames):
    counts = full.counts()
    assert set(counts) == set(schema.NODE_BY_LABEL) | set(schema.REL_BY_TYPE)
    assert schema.META.label not in counts
    assert counts == expected_counts(frames)
    assert counts["READS"] == 0 and counts["Neuron"] == 24


def test_node_upsert_is_idempotent(full, frames):
    before = dump(full)
    assert full.upsert_nodes("Neuron", frames["Neuron"]) == len(frames["Neuron"])
    assert dump(full) == before


def test_rel_upsert_is_idempotent(full, frames):
    before = dump(full)
    for name in ("PROMOTES", "ACTIVATES_ON", "SIMILAR_TO", "HAS_NEURON"):
        full.upsert_rels(name, frames[name])
    assert dump(full) == before


def _arrow_backed(df: pd.DataFrame) -> pd.DataFrame:
    """The same frame with its text columns in Arrow (as the activations stage builds records)."""
    return df.assign(**{c: pd.arrays.ArrowExtensionArray(pa.array(df[c].tolist(), pa.string()))
                        for c in ("src", "kind", "activations")})


def test_arrow_backed_rel_frames_are_stored_like_object_frames(store, frames):
    acts = frames["ACTIVATES_ON"]
    # A repeated key: the last row wins.
    repeat = acts.iloc[[0]].assign(activations=encode_activations([np.full(SNIPPET_LEN, 7.0)])[0])
    rows = pd.concat([acts, repeat], ignore_index=True)
    load(store, {**frames, "ACTIVATES_ON": acts.iloc[:0]})
    store.release_memory()  # the store goes on as before after giving its memory back
    arrow = _arrow_backed(rows)
    assert store.upsert_rels("ACTIVATES_ON", arrow, batch_size=store.bulk_batch_rows(arrow)) == len(acts)
    last = rows.drop_duplicates(["src", "dst", "kind"], keep="last")
    expected = sorted(({"src": r.src, "dst": r.dst, "kind": r.kind, "rank": r.rank, "mx": r.max, "position": r.position,
                        "acts": r.activations} for r in last.itertuples()), key=lambda r: (r["src"], r["dst"], r["kind"]))
    assert records(store, ACTS_Q) == expected
    assert store.counts()["ACTIVATES_ON"] == len(acts)


def test_encode_activations_array_is_base64_of_float16_per_row():
    import base64

    from kb.records import encode_activations_array

    rng = np.random.default_rng(3)
    for width in (1, 2, 3, 64):
        rows = (rng.standard_normal((5, width)) * 3e4).astype(np.float32)
        got = encode_activations_array(rows)
        assert got.type == pa.string() and len(got) == 5
        assert got.to_pylist() == [base64.b64encode(np.clip(r, -65504, 65504).astype("<f2").tobytes()).decode()
                                   for r in rows]
        assert np.allclose([decode_activations(t)[0] for t in got.to_pylist()],
                           np.clip(rows[:, 0], -65504, 65504), rtol=1e-3)
    assert len(encode_activations_array(np.zeros((0, 64), np.float32))) == 0


def test_node_values_round_trip(full, frames):
    got = records(full, NEURONS_Q)
    want = frames["Neuron"].sort_values("id")
    assert [r["id"] for r in got] == want["id"].tolist()
    assert [r["layer"] for r in got] == want["layer"].tolist()
    assert [r["idx"] for r in got] == want["idx"].tolist()
    assert [r["max_act"] for r in got] == want["max_act"].tolist()
    assert [list(r["qb"]) for r in got] == want["quantile_boundaries"].tolist()


def test_list_properties_round_trip(full, frames):
    snippets = records(full, "MATCH (s:Snippet) RETURN s.id AS id, s.token_ids AS ids, s.tokens AS tokens ORDER BY id")
    want = frames["Snippet"].sort_values("id")
    assert [list(r["ids"]) for r in snippets] == want["token_ids"].tolist()
    assert [list(r["tokens"]) for r in snippets] == want["tokens"].tolist()
    acts = records(full, ACTS_Q)
    want = frames["ACTIVATES_ON"].sort_values(["src", "dst"])
    assert len(acts) == len(want)
    for got, (_, row) in zip(acts, want.iterrows()):
        assert (got["src"], got["dst"], got["kind"], got["rank"]) == (row["src"], row["dst"], "top", row["rank"])
        assert got["acts"] == row["activations"]
        assert got["mx"] == pytest.approx(row["max"])


def test_nulls_for_every_type(store):
    store.upsert_nodes("Neuron", pd.DataFrame({
        "id": ["m/0/0", "m/0/1"],
        "layer": pd.array([3, None], dtype="Int64"),
        "max_act": [1.5, np.nan],
        "kind": ["mlp", None],
        "quantile_boundaries": [None, [0.5, 1.5]],
    }))
    got = records(store, "MATCH (n:Neuron) RETURN n.id AS id, n.layer AS layer, n.max_act AS max_act, "
                         "n.kind AS kind, n.quantile_boundaries AS qb, n.n_tokens AS n_tokens ORDER BY id")
    assert [(r["layer"], r["max_act"], r["kind"], r["n_tokens"]) for r in got] == [(3, 1.5, "mlp", None),
                                                                                   (None, None, None, None)]
    assert got[0]["qb"] is None and list(got[1]["qb"]) == [0.5, 1.5]


def test_partial_columns_update_only_those(full, frames):
    neurons = frames["Neuron"]
    target = neurons["id"].iloc[5]
    full.upsert_nodes("Neuron", pd.DataFrame({"id": [target], "density": [0.125], "n2g_f1": [0.75]}))
    got = records(full, "MATCH (n:Neuron {id: $id}) RETURN n.density AS density, n.n2g_f1 AS f1, "
                        "n.max_act AS max_act, n.layer AS layer, n.quantile_boundaries AS qb", {"id": target})
    assert got[0]["density"] == 0.125 and got[0]["f1"] == 0.75
    assert got[0]["max_act"] == neurons["max_act"].iloc[5]
    assert got[0]["layer"] == neurons["layer"].iloc[5]
    assert list(got[0]["qb"]) == neurons["quantile_boundaries"].iloc[5]
    # The same for a relationship property: rank stays, logit changes.
    row = frames["PROMOTES"].iloc[0]
    full.upsert_rels("PROMOTES", pd.DataFrame({"src": [row["src"]], "dst": [row["dst"]], "logit": [42.0]}))
    got = records(full, "MATCH (a:Neuron {id: $s})-[r:PROMOTES]->(b:Token {id: $d}) RETURN r.logit AS logit, "
                        "r.`rank` AS `rank`", {"s": row["src"], "d": row["dst"]})
    assert got == [{"logit": 42.0, "rank": row["rank"]}]
    assert full.counts() == expected_counts(frames)


def test_changed_values_update_in_place(full, frames):
    acts = frames["ACTIVATES_ON"].copy()
    acts["rank"] = acts["rank"] + 10
    acts.loc[0, "activations"] = encode_activations([np.zeros(SNIPPET_LEN)])[0]
    full.upsert_rels("ACTIVATES_ON", acts)
    assert full.counts() == expected_counts(frames)
    got = records(full, ACTS_Q)
    assert sorted(r["rank"] for r in got) == sorted(acts["rank"].tolist())
    first = [r for r in got if (r["src"], r["dst"]) == (acts.loc[0, "src"], acts.loc[0, "dst"])]
    assert decode_activations(first[0]["acts"]).tolist() == [0.0] * SNIPPET_LEN


def test_one_batch_updates_and_adds(full, frames):
    tokens = pd.DataFrame({"id": ["tok/0", "tok/new"], "text": ["changed", "fresh"]})
    full.upsert_nodes("Token", tokens)
    got = records(full, "MATCH (t:Token) WHERE t.id IN ['tok/0', 'tok/new'] RETURN t.id AS id, t.text AS text, "
                        "t.token_id AS token_id ORDER BY id")
    assert got == [{"id": "tok/0", "text": "changed", "token_id": 0}, {"id": "tok/new", "text": "fresh", "token_id": None}]
    row = frames["PROMOTES"].iloc[0]
    full.upsert_rels("PROMOTES", pd.DataFrame({"src": [row["src"], row["src"]], "dst": [row["dst"], "tok/new"],
                                               "logit": [-1.0, -2.0], "rank": [5, 6]}))
    got = records(full, "MATCH (a:Neuron {id: $s})-[r:PROMOTES]->(b:Token) WHERE b.id IN [$d, 'tok/new'] "
                        "RETURN b.id AS dst, r.logit AS logit, r.`rank` AS `rank` ORDER BY `rank`",
                  {"s": row["src"], "d": row["dst"]})
    assert got == [{"dst": row["dst"], "logit": -1.0, "rank": 5}, {"dst": "tok/new", "logit": -2.0, "rank": 6}]
    assert full.counts()["PROMOTES"] == len(frames["PROMOTES"]) + 1


def test_rel_key_distinguishes_relationships(full, frames):
    row = frames["ACTIVATES_ON"].iloc[0]
    other_kind = pd.DataFrame([{**row.to_dict(), "kind": "random", "rank": 7}])
    full.upsert_rels("ACTIVATES_ON", other_kind)
    full.upsert_rels("ACTIVATES_ON", other_kind)
    got = records(full, "MATCH (a:Neuron {id: $s})-[r:ACTIVATES_ON]->(b:Snippet {id: $d}) "
                        "RETURN r.kind AS kind, r.`rank` AS `rank` ORDER BY kind", {"s": row["src"], "d": row["dst"]})
    assert got == [{"kind": "random", "rank": 7}, {"kind": "top", "rank": row["rank"]}]


def test_upserts_see_rows_written_by_other_means(store_url):
    """Rows that came from a Cypher write or an earlier session are updated, never duplicated."""
    nodes = pd.DataFrame({"id": ["n/0/0", "n/0/1"]})
    token = pd.DataFrame({"id": ["t/1"]})
    with open_store(store_url, create=True) as s:
        s.upsert_nodes("Neuron", nodes)
        s.upsert_nodes("Token", token)
        s.upsert_rels("PROMOTES", pd.DataFrame({"src": ["n/0/0"], "dst": ["t/1"], "logit": [1.0]}))
        s.cypher("MATCH (a:Neuron {id: 'n/0/1'}), (b:Token {id: 't/1'}) CREATE (a)-[:PROMOTES {logit: 2.0, found: 'neuron'}]->(b)",
                 write=True)
        s.upsert_rels("PROMOTES", pd.DataFrame({"src": ["n/0/1"], "dst": ["t/1"], "logit": [3.0]}))
        assert s.counts()["PROMOTES"] == 2
    with open_store(store_url) as s:
        s.upsert_rels("PROMOTES", pd.DataFrame({"src": ["n/0/0", "n/0/1"], "dst": ["t/1", "t/1"], "logit": [4.0, 5.0]}))
        assert records(s, PROMOTES_Q) == [{"src": "n/0/0", "dst": "t/1", "logit": 4.0, "rank": None},
                                          {"src": "n/0/1", "dst": "t/1", "logit": 5.0, "rank": None}]


def test_duplicate_ids_in_one_frame_last_wins(store):
    store.upsert_nodes("Token", pd.DataFrame({"id": ["t/1", "t/2", "t/1"], "text": ["first", "two", "last"]}))
    assert records(store, "MATCH (t:Token) RETURN t.id AS id, t.text AS text ORDER BY id") == [
        {"id": "t/1", "text": "last"}, {"id": "t/2", "text": "two"}]
    store.upsert_nodes("Neuron", pd.DataFrame({"id": ["n/0/0"]}))
    store.upsert_rels("PROMOTES", pd.DataFrame({"src": ["n/0/0"] * 2, "dst": ["t/1"] * 2, "logit": [1.0, 2.0]}))
    assert records(store, PROMOTES_Q) == [{"src": "n/0/0", "dst": "t/1", "logit": 2.0, "rank": None}]


def test_rel_with_missing_endpoint_writes_nothing(full, frames):
    before = dump(full)
    good = frames["PROMOTES"].iloc[:2]
    for bad in ({"src": "ma/9/9", "dst": "tok/1"}, {"src": "ma/0/0", "dst": "tok/999"}):
        rows = pd.concat([good.assign(logit=100.0), pd.DataFrame([{**bad, "logit": 1.0, "rank": 0}])],
                         ignore_index=True)
        with pytest.raises(SchemaError) as err:
            full.upsert_rels("PROMOTES", rows)
        missing = bad["src"] if bad["src"] == "ma/9/9" else bad["dst"]
        assert "PROMOTES" in str(err.value) and missing in str(err.value)
    assert dump(full) == before


def test_failed_batch_leaves_store_as_before(full, frames):
    """One batch that updates existing rows, adds new ones, then fails: none of it stays."""
    before = dump(full)
    existing = frames["ACTIVATES_ON"].iloc[:3].assign(rank=99)
    new = frames["ACTIVATES_ON"].iloc[:2].assign(kind="random")
    broken = frames["ACTIVATES_ON"].iloc[:1].assign(dst="tok/nowhere", kind="random")
    with pytest.raises(SchemaError):
        full.upsert_rels("ACTIVATES_ON", pd.concat([existing, new, broken], ignore_index=True), batch_size=100)
    assert dump(full) == before
    # Whole batches before the failing one stay written: batches are the unit of atomicity.
    with pytest.raises(SchemaError):
        full.upsert_rels("ACTIVATES_ON", pd.concat([new, broken], ignore_index=True), batch_size=2)
    assert full.counts()["ACTIVATES_ON"] == len(before["ACTIVATES_ON"]) + 2


def test_rows_that_do_not_fit_the_schema(store):
    before = dump(store)
    with pytest.raises(SchemaError, match="no property 'colour'"):
        store.upsert_nodes("Token", pd.DataFrame({"id": ["t/1"], "colour": ["red"]}))
    with pytest.raises(SchemaError, match="unknown node label"):
        store.upsert_nodes("Tokens", pd.DataFrame({"id": ["t/1"]}))
    with pytest.raises(SchemaError, match="token_id"):
        store.upsert_nodes("Token", pd.DataFrame({"id": ["t/1"], "token_id": ["seven"]}))
    assert dump(store) == before


# -- reading ------------------------------------------------------------------------------
def test_cypher_with_params_returns_a_dataframe(full):
    df = full.cypher("MATCH (n:Neuron) WHERE n.model = $m AND n.layer = $layer RETURN n.id AS id ORDER BY id",
                     {"m": "mb", "layer": 1})
    assert isinstance(df, pd.DataFrame)
    assert df["id"].tolist() == [f"mb/1/{i}" for i in range(WIDTH)]
    assert full.cypher("MATCH (n:Neuron) WHERE n.model = $m RETURN n.id AS id", {"m": "nope"}).empty


def test_missing_parameter(full):
    with pytest.raises(ParameterError, match="layer"):
        full.cypher("MATCH (n:Neuron) WHERE n.layer = $layer RETURN n.id AS id")


def test_syntax_error_is_one_line(full):
    with pytest.raises(QueryError) as err:
        full.cypher("MATCH (n:Neuron RETURN n")
    assert "\n" not in str(err.value)
    assert "syntax" in str(err.value).lower()


def test_read_only_guard(full, frames):
    before = full.counts()
    with pytest.raises(ReadOnlyViolation, match="CREATE"):
        full.cypher("CREATE (:Model {id: 'sneaky'})")
    with pytest.raises(ReadOnlyViolation):
        full.cypher("MATCH (n:Neuron) DETACH DELETE n")
    assert full.counts() == before
    # The word inside a value, a parameter or a comment writes nothing and is allowed.
    got = full.cypher("MATCH (m:Model) WHERE m.id <> 'CREATE (x)' AND m.kind <> $k // SET\n RETURN count(*) AS c",
                      {"k": "DELETE"})
    assert int(got["c"].iloc[0]) == 3
    full.cypher("CREATE (:Model {id: 'wanted'})", write=True)
    assert full.counts()["Model"] == before["Model"] + 1


def test_read_only_store_refuses_writes(store_url, frames):
    with open_store(store_url, create=True) as s:
        load(s, frames)
    with open_store(store_url, read_only=True) as s:
        assert s.read_only
        with pytest.raises(ReadOnlyViolation):
            s.upsert_nodes("Token", frames["Token"].assign(text="changed"))
        with pytest.raises(ReadOnlyViolation):
            s.upsert_rels("PROMOTES", frames["PROMOTES"])
        with pytest.raises(ReadOnlyViolation):
            s.cypher("CREATE (:Model {id: 'x'})", write=True)
        with pytest.raises(ReadOnlyViolation):
            s.set_meta("k", "v")
        with pytest.raises(ReadOnlyViolation):
            s.delete_model("ma")
        assert s.counts() == expected_counts(frames)
        assert len(s.cypher("MATCH (t:Token) RETURN t.id AS id")) == len(frames["Token"])


def test_embedded_engine_itself_refuses_writes_when_read_only(tmp_path):
    url = str(tmp_path / "kb")
    open_store(url, create=True).close()
    with open_store(url, read_only=True) as s:
        # Past the lexical guard, straight to the engine: the read-only open refuses.
        with pytest.raises(QueryError, match="read-only"):
            s._run("CREATE (:Model {id: 'x'})", {}, write=True)
    with open_store(url) as s:
        # On a read-write store, reads run in a READ ONLY transaction.
        with pytest.raises(QueryError, match="read-only"):
            s._run("CREATE (:Model {id: 'x'})", {}, write=False)
        assert s.counts()["Model"] == 0


# -- deleting -----------------------------------------------------------------------------
def test_delete_model_keeps_what_others_use(full, frames):
    deleted = full.delete_model("ma")
    texts = frames["Explanation"].groupby(frames["Explanation"]["model"] == "ma")["text"]
    only_ma = set().union(*map(text_terms, texts.get_group(True))) - set().union(*map(text_terms, texts.get_group(False)))
    assert only_ma  # the terms of ma's texts that no other text has go with it
    assert {k: v for k, v in deleted.items() if v} == {
        "Model": 1, "Neuron": 8, "Explanation": 8, "Score": 8, "N2GNode": 8, "Snippet": 2, "Term": len(only_ma)}
    counts = full.counts()
    want = expected_counts(frames)
    assert counts["Model"] == 2 and counts["Neuron"] == 16
    assert counts["Token"] == want["Token"]  # mb still uses tokenizer tok
    assert counts["Snippet"] == want["Snippet"] - 2
    assert counts["SIMILAR_TO"] == 0 and counts["N2G_ROOT"] == 0 and counts["HAS_N2G_NODE"] == 0
    assert counts["TokenText"] == want["TokenText"] and counts["SPELLS"] == want["SPELLS"]
    assert counts["PROMOTES"] == want["PROMOTES"] - 24
    left = {r["id"] for r in records(full, "MATCH (s:Snippet) RETURN s.id AS id")}
    assert {"tok/s0", "tok/s1"}.isdisjoint(left) and {"tok/s2", "tok/s3", "tok/s4", "tok/s5"} <= left
    assert not full.cypher("MATCH (n:Neuron) WHERE n.model = 'ma' RETURN n.id AS id").shape[0]
    # mb's data is whole.
    assert len(full.cypher("MATCH (n:Neuron {model: 'mb'})-[:EXPLAINED_BY]->(e)-[:HAS_SCORE]->(s) RETURN s.id AS id")) == 8


def test_delete_model_drops_tokens_no_model_uses(full, frames):
    deleted = full.delete_model("mc")
    assert deleted["Token"] == N_TOK2 and deleted["Snippet"] == 3 and deleted["Neuron"] == 8
    assert records(full, "MATCH (t:Token) WHERE t.tokenizer = 'tok2' RETURN t.id AS id") == []
    assert full.counts()["Token"] == N_TOK
    # Texts only tok2 spelled go with it; " w0" still spells tok's token.
    assert deleted["TokenText"] == N_TOK2 - 1 and full.counts()["TokenText"] == N_TOK
    assert records(full, "MATCH (:TokenText {id: ' w0'})-[:SPELLS]->(t:Token) RETURN t.id AS id") == [{"id": "tok/0"}]


def test_delete_unknown_model(full, frames):
    before = dump(full)
    with pytest.raises(NkbError, match="no model 'zz' in the store") as err:
        full.delete_model("zz")
    assert "nkb stats" in str(err.value)
    assert dump(full) == before


def test_delete_model_forgets_its_ingest_runs(full):
    """Left behind, a deleted model's done markers would make a new ingest under its name skip work."""
    for key in ("ingest/ma/lmhead/0", "ingest/ma/config", "ingest/mb/lmhead/0", "ingest/mab/lmhead/0"):
        full.set_meta(key, "{}")
    full.delete_model("ma")
    assert full.get_meta("ingest/ma/lmhead/0") is None and full.get_meta("ingest/ma/config") is None
    assert full.get_meta("ingest/mb/lmhead/0") == "{}" and full.get_meta("ingest/mab/lmhead/0") == "{}"


# -- the write guard, judged by what the store holds ------------------------------------------
# Every form must be refused without write=True, and leave the dump and the index list as
# they were (on the FalkorDB test server a read transaction is not enforced, so the guard is
# all that stands between these and the data).
WRITES = [
    "CREATE (:Model {id: 'sneaky'})",
    "MERGE (:Model {id: 'sneaky'})",
    "MATCH (n:Neuron) SET n.layer = 99",
    "MATCH (n:Neuron) REMOVE n.layer",
    "MATCH (n:Neuron) DELETE n",
    "MATCH (n:Neuron) DETACH DELETE n",
    "MATCH (n:Neuron) WITH collect(n) AS ns FOREACH (x IN ns | SET x.layer = 0)",
    "CALL db.idx.fulltext.createNodeIndex('Neuron', 'id')",
    "CALL db.createLabel('Sneaky')",
    "CALL create_fts_index('Neuron', 'nkb_fts', ['kind'])",
    "CALL threads=1",
    "LOAD CSV FROM 'file:///etc/hostname' AS row CREATE (:Model {id: row[0]})",
    "LOAD FROM '/etc/hostname' RETURN *",
    "COPY Model FROM '/etc/hostname'",
    "/*x*/CREATE (:Model {id: 'sneaky'})",
    "MATCH (n:Neuron) /* a comment */ SeT n.layer = 1",
    "mErGe (:Model {id: 'sneaky'})",
    "MATCH (n:Neuron)\n// SET in a comment, then the real one\nDeTaCh\nDeLeTe n",
    "CALL { CREATE (:Model {id: 'sneaky'}) } RETURN 1 AS one",
    "RETURN 1 AS one; CREATE (:Model {id: 'sneaky'})",
    "MATCH (n:Model) WITH n, n.id AS set SET n.kind = set",
    "RETURN 1 AS x; COMMIT",
    "CREATE INDEX FOR (n:Neuron) ON (n.kind)",
    "DROP INDEX nkb_neuron_model",
]


def test_read_only_refuses_every_write_form(full):
    from dump import dump, indexes

    before = (dump(full), indexes(full))
    for text in WRITES:
        with pytest.raises(ReadOnlyViolation) as err:
            full.cypher(text)
        assert "\n" not in str(err.value) and "--write" in str(err.value)
        assert (dump(full), indexes(full)) == before, text


@pytest.mark.parametrize("text, params", [
    ("RETURN $create AS x", {"create": 1}),
    ("MATCH (n:Neuron) RETURN n.id AS load LIMIT 1", {}),
    ("MATCH (n:Neuron) RETURN n.layer AS set, n.id AS `delete` LIMIT 1", {}),
    ("RETURN {merge: 1, remove: 2} AS m", {}),
    ("MATCH (n:Neuron) WHERE n.kind = 'CREATE' // DETACH DELETE\n RETURN count(*) AS c", {}),
])
def test_keywords_as_names_are_not_writes(full, text, params):
    """The guard judges statements, not words: an alias, property, parameter or map key named
    like a write keyword passes it (an engine may still find the name bad Cypher)."""
    try:
        full.cypher(text, params)
    except ReadOnlyViolation:
        pytest.fail(f"refused a read: {text}")
    except QueryError:
        pass  # LadybugDB, say, takes no $create: a syntax error, not a refusal


def test_read_only_procedures_are_allowed(full):
    if full.engine == "embedded":
        assert "Neuron" in set(full.cypher("CALL show_tables() RETURN name")["name"])
    else:
        assert "Neuron" in set(full.cypher("CALL db.labels() YIELD label RETURN label")["label"])


@pytest.mark.parametrize("text, words", [
    ("RETURN " + "(" * 20_000 + "1" + ")" * 20_000, "nests brackets 20000 levels deep; the limit is 32"),
    ("RETURN " + "+".join(["1"] * 30_000), "has 29,999 operators; the limit is 1,000"),
    ("RETURN 1 AS x //" + "x" * 200_000, "characters long; the limit is 100,000"),
    ("RETURN 'a\udcff' AS x", "not valid UTF-8: the byte 0xff at character 10"),
])
def test_text_the_parser_would_choke_on_is_refused_at_once(store, text, words):
    with pytest.raises(QueryError) as err:
        store.cypher(text)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("params, words", [
    ({"x": 2**63}, "parameter $x is 9223372036854775808, outside the 64-bit integer range"),
    ({"x": [1, -(2**63) - 1]}, "outside the 64-bit integer range"),
    ({"x": "a\udcff"}, "parameter $x is not valid UTF-8 text"),
    ({"x": object()}, "parameter $x is a object, which no engine can take"),
])
def test_parameters_no_engine_can_take(store, params, words):
    with pytest.raises(ParameterError) as err:
        store.cypher("RETURN $x AS x", params)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_embedded_parameters_it_cannot_type(embedded_store):
    for value, words in (([], "is an empty list"), ([None], "a list of nulls only"), ([[]], "is an empty list"),
                         ([1, "a", None], "mixes numbers and text"), ([True, 1], "mixes booleans and numbers")):
        with pytest.raises(ParameterError) as err:
            embedded_store.cypher("RETURN $x AS x", {"x": value})
        assert words in str(err.value) and "\n" not in str(err.value)
    assert embedded_store.cypher("RETURN $x AS x", {"x": [1, 2.5]})["x"].iloc[0] == [1.0, 2.5]


def test_embedded_engine_messages_are_whole_lines(embedded_store):
    with pytest.raises(QueryError) as err:
        embedded_store.cypher("RETURN substring('a') AS s")
    message = str(err.value)
    assert "did not receive correct arguments" in message and "Expected: (STRING,INT64,INT64)" in message
    assert "\n" not in message


# 900 million rows: on a quiet 2-core machine this runs for over ten seconds, so a 0.2 s
# timeout has to cancel it however fast the machine is.
SLOW = "UNWIND range(1, 30000) AS a UNWIND range(1, 30000) AS b WITH a * b AS x WHERE x % 7 = 3 RETURN sum(x) AS s"


def test_embedded_query_timeout_cancels_and_the_store_goes_on(embedded_store):
    from kb.errors import QueryTimeout

    start = time.perf_counter()
    with pytest.raises(QueryTimeout, match=r"ran longer than its 0\.2 s timeout and was cancelled"):
        embedded_store.cypher(SLOW, timeout=0.2)
    assert time.perf_counter() - start < 20
    # The connection is usable, with no timeout left behind, and a write still commits.
    assert int(embedded_store.cypher(SLOW.replace("30000", "300"))["s"].iloc[0]) > 0
    embedded_store.cypher("CREATE (:Model {id: 'after'})", write=True)
    assert embedded_store.counts()["Model"] == 1


def test_timeout_must_be_a_positive_number(store):
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ParameterError, match="timeout must be a positive number of seconds"):
            store.cypher("RETURN 1 AS x", timeout=bad)
    assert store.cypher("RETURN 1 AS x", timeout=0)["x"].tolist() == [1]
