"""The ingest pipeline end to end on tiny local models (fast) and on the bundled SmolLM2 (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from dump import dump
from ingest.pipeline import IngestConfig, Pipeline, ingest, parse_layers
from kb import schema
from kb.errors import IngestError
from kb.records import decode_activations
from kb.stores import open_store
from tinymodels import save_tiny_model

SMALL = dict(tokens=2048, window=32, batch_size=8, top_k=5, n_random=3, n_quantiles=3, per_quantile=1, lmhead_k=4)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama", seed=0)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tiny_dir):
    url = str(tmp_path_factory.mktemp("kb") / "kb")
    cfg = IngestConfig(model=str(tiny_dir), name="tiny", **SMALL)
    with open_store(url, create=True) as store:
        report = ingest(store, cfg)
        return url, cfg, report, dump(store)


def test_parse_layers():
    assert parse_layers("0-2,5") == [0, 1, 2, 5]
    assert parse_layers("all") is None
    with pytest.raises(IngestError, match="cannot read layers"):
        parse_layers("3-1")


def test_every_neuron_gets_tokens_records_and_statistics(ingested):
    _, cfg, report, kb = ingested
    n_layers, d_mlp = 2, 96
    neurons = {row[0]: row for row in kb["Neuron"]}
    assert len(neurons) == n_layers * d_mlp
    assert len(kb["HAS_NEURON"]) == n_layers * d_mlp
    own = {rel: [row for row in kb[rel] if row[-1] == "neuron"] for rel in ("PROMOTES", "SUPPRESSES", "READS")}
    assert len(own["PROMOTES"]) == len(own["SUPPRESSES"]) == n_layers * d_mlp * cfg.lmhead_k
    assert {row[-2] for row in own["READS"]} == {"gate", "up"}
    assert len(own["READS"]) == 2 * n_layers * d_mlp * cfg.lmhead_k
    assert len(kb["Token"]) == 512

    cols = ["src", "dst", "kind", "rank", "max", "position", "activations"]
    records = [dict(zip(cols, r)) for r in kb["ACTIVATES_ON"]]
    by_neuron: dict[str, list[dict]] = {}
    for r in records:
        by_neuron.setdefault(r["src"], []).append(r)
        r["activations"] = decode_activations(r["activations"]).tolist()
        assert len(r["activations"]) == cfg.window
        assert r["max"] == pytest.approx(max(r["activations"]), rel=1e-3, abs=1e-3)
        assert r["activations"][r["position"]] == pytest.approx(r["max"], rel=1e-3, abs=1e-3)
    assert set(by_neuron) == set(neurons)
    max_col = [p.name for p in schema.node_type("Neuron").props].index("max_act")
    for nid, recs in by_neuron.items():
        top = sorted((r for r in recs if r["kind"] == "top"), key=lambda r: r["rank"])
        assert len(top) == cfg.top_k
        assert [r["max"] for r in top] == sorted((r["max"] for r in top), reverse=True)
        assert neurons[nid][max_col] == pytest.approx(top[0]["max"], rel=1e-3, abs=1e-3)
        assert sum(r["kind"] == "random" for r in recs) == cfg.n_random
    snippet_ids = {row[0] for row in kb["Snippet"]}
    assert {r["dst"] for r in records} == snippet_ids
    assert [s.stage for s in report.stages] == ["model", "lmhead", "activations", "embed", "tokens", "similar"]


def test_running_again_changes_nothing(ingested, tiny_dir):
    url, cfg, _, before = ingested
    with open_store(url) as store:
        report = ingest(store, cfg)
        assert dump(store) == before
    assert report.stages[1].layers_skipped == [0, 1] and report.stages[1].layers_done == []
    assert report.stages[2].layers_skipped == [0, 1] and report.stages[2].layers_done == []


def test_models_with_one_tokenizer_share_its_tokens(ingested, tmp_path):
    url, cfg, _, before = ingested
    other = save_tiny_model(tmp_path / "other", "llama", seed=1)
    with open_store(url) as store:
        ingest(store, IngestConfig(model=str(other), name="other", stages=["lmhead"], lmhead_k=2, layers=[0]))
        after = dump(store)
        assert len(after["Token"]) == len(before["Token"])
        assert len(after["Model"]) == 2
        deleted = store.delete_model("other")
        assert deleted.get("Neuron") == 96  # neurons of the requested layer only
        assert dump(store) == before


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(layers=[7]), r"layer 7 is out of range: tiny has 2 layers \(0-1\)"),
        (dict(stages=["nonsense"]), r"unknown stage\(s\): nonsense"),
        (dict(tokens=16), r"less than one window"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, tiny_dir, change, message):
    cfg = IngestConfig(model=str(tiny_dir), name="tiny", **{**SMALL, **change})
    with pytest.raises(IngestError, match=message):
        Pipeline(cfg).prepare()
    assert not (tmp_path / "kb").exists()


def test_a_different_model_under_the_same_name_is_refused(ingested, tmp_path):
    url, cfg, _, before = ingested
    other = save_tiny_model(tmp_path / "other", "llama", seed=2)
    with open_store(url) as store:
        with pytest.raises(IngestError, match="already holds a different model named 'tiny'"):
            ingest(store, IngestConfig(model=str(other), name="tiny", **SMALL))
        assert dump(store) == before


def test_other_settings_are_refused_rather_than_mixed(ingested):
    url, cfg, _, before = ingested
    with open_store(url) as store:
        with pytest.raises(IngestError, match="computed with other settings"):
            ingest(store, IngestConfig(model=cfg.model, name="tiny", **{**SMALL, "tokens": 4096}))
        assert dump(store) == before


@pytest.mark.slow
def test_bundled_smollm2_end_to_end(tmp_path):
    cfg = IngestConfig(model="smollm2-135m", layers=[0, 29], tokens=1024, batch_size=8)
    with open_store(str(tmp_path / "kb"), create=True) as store:
        report = ingest(store, cfg)
        model = store.cypher("MATCH (m:Model) RETURN m.id AS id, m.n_layers AS n, m.d_mlp AS d, m.vocab_size AS v")
        assert model.to_dict("records") == [{"id": "smollm2-135m", "n": 30, "d": 1536, "v": 49152}]
        dog = store.cypher(
            "MATCH (n:Neuron)-[p:PROMOTES]->(t:Token) WHERE t.text = $t RETURN n.id AS id, p.logit AS logit "
            "ORDER BY p.logit DESC LIMIT 5", {"t": " dog"})
        assert len(dog) > 0 and (dog["logit"] > 0).all()
        stats = store.cypher("MATCH (n:Neuron) WHERE n.layer = 29 RETURN n.max_act AS mx, n.density AS d, n.n_tokens AS t")
        assert len(stats) == 1536 and (stats["t"] == 1024).all()
        assert ((stats["d"] >= 0) & (stats["d"] <= 1)).all() and np.isfinite(stats["mx"]).all()
    assert [s.layers_done for s in report.stages] == [[0, 29], [0, 29], [0, 29]]
