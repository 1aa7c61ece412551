"""The ingest pipeline end to end on tiny local models (fast) and on the bundled SmolLM2 (slow)."""

from __future__ import annotations

import gc
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from dump import dump, without_run_configs
from ingest.activations import ActivationCollector
from ingest.pipeline import IngestConfig, Pipeline, Reporter, ingest, parse_layers
from ingest.stages import default_stages
from kb import schema
from kb.cli import cli
from kb.errors import ConfigError, IngestError
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
    # every token is reachable from its text (TokenText -SPELLS->), and only from it
    texts = {t[0]: t[3] for t in kb["Token"]}
    assert sorted((r[0], r[1]) for r in kb["SPELLS"]) == sorted((text, tid) for tid, text in texts.items() if text)
    assert sorted(r[0] for r in kb["TokenText"]) == sorted({text for text in texts.values() if text})

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
    assert [s.stage for s in report.stages] == ["model", "lmhead", "activations", "n2g", "describe", "embed",
                                                "tokens", "similar"]
    # n2g: graphs for layer 0 only (--n2g-layers' default)
    assert {row[1].split("/")[1] for row in kb["N2GNode"]} == {"0"}
    # describe: one data-derived summary per neuron, labelled as such
    summaries = [row for row in kb["Explanation"] if row[0].endswith("/data/summary")]
    assert len(summaries) == len(neurons)


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
    "change, args, message",
    [
        (dict(layers=[7]), ["--layers", "7"], r"layer 7 is out of range: tiny has 2 layers \(0-1\)"),
        (dict(stages=["nonsense"]), ["--stages", "nonsense"], r"unknown stage\(s\): nonsense"),
        (dict(tokens=16), ["--tokens", "16"], r"less than one window"),
        (dict(max_memory="4000"), ["--max-memory", "4000"], r"--max-memory '4000' is not a size with a unit"),
        (dict(max_memory="1M"), ["--max-memory", "1M"], r"--max-memory 1 MB is too small for .* one layer of tiny"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(ingested, tmp_path, tiny_dir, change, args, message):
    # Into an existing store: refused, and the store is exactly as it was.
    url, _, _, before = ingested
    with open_store(url) as store:
        with pytest.raises(IngestError, match=message):
            ingest(store, IngestConfig(model=str(tiny_dir), name="tiny", **{**SMALL, **change}))
        assert dump(store) == before
    # From the command line, into a store that does not exist yet: none is created.
    new = tmp_path / "kb"
    result = CliRunner().invoke(cli, ["ingest", str(tiny_dir), "--name", "tiny", "--store", str(new), *args])
    assert result.exit_code == 1 and re.search(message, result.stderr), result.output
    assert not new.exists() and not list(tmp_path.iterdir())


def test_a_bad_nkb_compile_fails_before_anything_is_written(ingested, tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("NKB_COMPILE", "maybe")
    message = "$NKB_COMPILE must be 1 or 0 (also true/false, yes/no, on/off), not 'maybe'"
    url, _, _, before = ingested
    with open_store(url) as store:
        with pytest.raises(ConfigError, match=re.escape(message)):
            ingest(store, IngestConfig(model=str(tiny_dir), name="tiny", **SMALL))
        assert dump(store) == before
    new = tmp_path / "kb"
    result = CliRunner().invoke(cli, ["ingest", str(tiny_dir), "--name", "tiny", "--store", str(new)])
    assert result.exit_code == 1 and result.stderr.splitlines() == [
        f"Error: {message} (unset it to compile the activation pass's kernel where the machine can)"], result.output
    assert not new.exists() and not list(tmp_path.iterdir())


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
    cfg = IngestConfig(model="smollm2-135m", layers=[0, 29], tokens=1024, batch_size=8, top_k=10, n2g_neurons=32)
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
    assert [s.stage for s in report.stages] == default_stages()
    # N2G runs on --n2g-layers, layer 0 by default: a deep layer takes hours on a CPU.
    assert {s.stage: s.layers_done for s in report.stages} == {name: [0] if name == "n2g" else [0, 29]
                                                               for name in default_stages()}


def _one_layer_per_pass(tiny_dir) -> str:
    """A --max-memory that fits the pass of one layer of the tiny model, not two."""
    plan = Pipeline(IngestConfig(model=str(tiny_dir), name="tiny", max_memory="1T", **SMALL)).prepare().memory
    return f"{(plan.peak(1) + plan.per_layer // 2) // 1024}K"


class GroupWatch(Reporter):
    """Records the activation groups begun, the collectors alive as each begins, the notes,
    and the tokens reported; raises Killed at the ``kill_at``-th advance of ``kill_in``."""

    def __init__(self, kill_in: str | None = None, kill_at: int = 0):
        self.groups, self.alive, self.notes, self.advances = [], [], [], []
        self.kill_in, self.kill_at, self.stage = kill_in, kill_at, None

    def begin(self, stage, total, unit):
        self.stage = stage
        if stage.startswith("activations"):
            self.groups.append(stage)
            self.alive.append(sum(type(o) is ActivationCollector for o in gc.get_objects()))
            self.in_stage = 0

    def advance(self, n):
        if self.stage and self.stage.startswith("activations"):
            self.advances.append(n)
            self.in_stage += 1
            if self.stage == self.kill_in and self.in_stage == self.kill_at:
                raise Killed

    def note(self, message):
        self.notes.append(message)


class Killed(Exception):
    pass


def test_layer_groups_give_the_kb_of_one_pass(ingested, tiny_dir, tmp_path):
    _, _, _, one_pass = ingested
    cfg = IngestConfig(model=str(tiny_dir), name="tiny", max_memory=_one_layer_per_pass(tiny_dir), **SMALL)
    watch = GroupWatch()
    with open_store(str(tmp_path / "kb"), create=True) as store:
        ingest(store, cfg, watch)
        assert without_run_configs(dump(store)) == without_run_configs(one_pass)  # max_memory is saved
    assert watch.groups == ["activations 1/2", "activations 2/2"]
    assert watch.alive == [0, 0]  # the first group's state is gone before the second begins
    assert any(n.startswith("memory estimate for tiny:") for n in watch.notes)
    assert any("2 groups of at most 1 layers" in n for n in watch.notes)


def test_a_killed_grouped_run_resumes_its_group(ingested, tiny_dir, tmp_path):
    _, _, _, one_pass = ingested
    settings = dict(SMALL, max_memory=_one_layer_per_pass(tiny_dir), checkpoint_seconds=0.0)
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as store:
        with pytest.raises(Killed):
            ingest(store, IngestConfig(model=str(tiny_dir), name="tiny", **settings),
                   GroupWatch(kill_in="activations 2/2", kill_at=3))
        checkpoint = store.artifact_dir() / "tiny" / "activations.pt"
        assert checkpoint.exists()
        assert json.loads(checkpoint.with_name("activations.json").read_text())["layers"] == [1]
        watch = GroupWatch()
        report = ingest(store, IngestConfig(model=str(tiny_dir), name="tiny", **settings), watch)
        assert without_run_configs(dump(store)) == without_run_configs(one_pass)  # max_memory is saved
        assert not checkpoint.exists()
    assert report.stages[2].layers_done == [1] and report.stages[2].layers_skipped == [0]
    # The group resumed from its checkpoint: 2 of 8 batches saved before the third was killed.
    assert watch.groups == ["activations"] and watch.advances[0] == 2 * SMALL["batch_size"] * SMALL["window"]


def test_max_memory_too_small_is_one_line_and_writes_nothing(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from kb.cli import cli

    store = tmp_path / "kb"
    result = CliRunner().invoke(cli, ["ingest", str(tiny_dir), "--name", "tiny", "--tokens", "2048",
                                      "--max-memory", "100M", "--store", str(store)], catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("Error: --max-memory 100 MB is too small for the LM-head decode of one layer of tiny: "
                               "it needs about ")
    assert "(raise --max-memory to at least " in lines[0]
    assert not store.exists()
