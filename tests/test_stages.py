"""The stage contract: the registry, its order and dependency refusals, settings defined once,
and where stores keep their side files."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from dump import dump
from ingest import stages
from ingest.pipeline import IngestConfig, Pipeline, ingest
from ingest.stages import REGISTRY, Setting, Stage, StageReport, resolve
from kb import config
from kb.cli import cli
from kb.errors import IngestError
from kb.stores import open_store
from tinymodels import save_tiny_model

SMALL = dict(tokens=1024, window=32, batch_size=8, top_k=3, n_random=2, n_quantiles=2, per_quantile=1, lmhead_k=3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama", seed=0)


def test_registry_is_in_dependency_order():
    names = list(REGISTRY)
    assert names[0] == "model"
    for i, name in enumerate(names):
        for need in REGISTRY[name].needs:
            assert names.index(need) < i, f"{name} runs before its need {need}"


def test_resolve_orders_and_always_adds_the_model_stage():
    assert [s.name for s in resolve(["activations", "lmhead"])] == ["model", "lmhead", "activations"]
    assert [s.name for s in resolve(["all"])] == ["model", *[n for n in stages.default_stages() if n != "model"]]
    with pytest.raises(IngestError, match=r"unknown stage\(s\): nope"):
        resolve(["lmhead", "nope"])
    with pytest.raises(IngestError, match="no stage to run"):
        resolve([" ", ""])  # what `--stages ''` gives


def test_every_setting_is_defined_once_and_is_a_cli_option():
    names = [s.name for s in stages.all_settings()]
    assert len(names) == len(set(names))
    options = {p.name: p for p in cli.commands["ingest"].params if isinstance(p, click.Option)}
    for s in stages.all_settings():
        assert s.name in options, f"nkb ingest has no option for setting {s.name}"
        assert options[s.name].default == s.default, s.name
        assert s.flag in options[s.name].opts


def test_help_lists_every_registered_stage():
    out = CliRunner().invoke(cli, ["ingest", "--help"]).output
    for name in REGISTRY:
        assert f"{name}:" in " ".join(out.split())


def test_settings_are_checked_against_their_bounds():
    Setting("k", 3, "k", minimum=1, maximum=5).check(5)
    with pytest.raises(IngestError, match="--k must be at least 1, got 0"):
        Setting("k", 3, "k", minimum=1).check(0)
    with pytest.raises(IngestError, match="--k must be at most 5, got 6"):
        Setting("k", 3, "k", maximum=5).check(6)
    with pytest.raises(IngestError, match="--k must be an integer"):
        Setting("k", 3, "k").check("3")
    with pytest.raises(IngestError, match="--dtype must be one of"):
        Setting("dtype", "a", "d", type=str, choices=("a", "b")).check("c")
    with pytest.raises(IngestError, match="unknown ingest setting 'topk'"):
        IngestConfig("m", topk=3)
    with pytest.raises(IngestError, match="--random must be at least 0, got -1"):
        IngestConfig("m", n_random=-1).validate()


class _Needy(Stage):
    name = "needy"
    help = "a test stage that reads the activation records"
    needs = ("activations",)

    def run(self, ctx, layers):
        report = StageReport(self.name)
        for layer in layers:
            ctx.mark_done(self, layer, report)
        return report


@pytest.fixture
def needy(monkeypatch):
    registry = dict(REGISTRY)
    registry["needy"] = _Needy()
    monkeypatch.setattr(stages, "REGISTRY", registry)
    return registry["needy"]


def test_a_stage_whose_needs_are_not_done_is_refused_naming_the_stage_to_run(tmp_path, tiny_dir, needy):
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as store:
        before = dump(store)
        cfg = IngestConfig(str(tiny_dir), name="tiny", stages=["needy"], layers=[1], **SMALL)
        with pytest.raises(IngestError) as e:
            ingest(store, cfg)
        assert "stage needy needs activations for layer(s) 1 of tiny" in e.value.message
        assert "--stages activations --layers 1" in e.value.hint
        assert dump(store) == before

        # Requested together, the need runs first; once done, the stage runs alone.
        report = ingest(store, IngestConfig(str(tiny_dir), name="tiny", stages=["activations", "needy"],
                                            layers=[1], **SMALL))
        assert [s.stage for s in report.stages] == ["model", "activations", "needy"]
        again = ingest(store, IngestConfig(str(tiny_dir), name="tiny", stages=["needy"], layers=[1], **SMALL))
        assert again.stages[-1].layers_skipped == [1]


def test_bad_settings_are_refused_before_the_model_loads(tmp_path):
    # The model path does not exist: a setting error must come first, from validation alone.
    with pytest.raises(IngestError, match="--per-quantile must be at least 1"):
        Pipeline(IngestConfig(str(tmp_path / "no-such-model"), per_quantile=0))
    with pytest.raises(IngestError, match="corpus"):
        Pipeline(IngestConfig(str(tmp_path / "no-such-model"), corpus=str(tmp_path / "missing.txt"))).prepare()


def test_embedded_artifacts_live_inside_the_store(tmp_path):
    with open_store(str(tmp_path / "kb"), create=True) as store:
        assert store.artifact_dir() == tmp_path / "kb" / "artifacts"


def test_server_artifacts_are_keyed_by_server_and_database_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv(config.ARTIFACT_ENV, str(tmp_path / "art"))
    a = config.server_artifact_dir("bolt://neo4j:S3cret@host:7687", "kb1")
    assert a.parent == tmp_path / "art"
    assert a == config.server_artifact_dir("bolt://other:pw2@host:7687", "kb1")  # credentials do not matter
    assert a != config.server_artifact_dir("bolt://host:7687", "kb2")
    assert a != config.server_artifact_dir("bolt://host2:7687", "kb1")
    assert "S3cret" not in str(a)
    monkeypatch.delenv(config.ARTIFACT_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert config.server_artifact_dir("bolt://host:7687", None).parent == tmp_path / "cache" / "neuron-kb" / "servers"
    (tmp_path / "cfg" / "neuron-kb").mkdir(parents=True)
    (tmp_path / "cfg" / "neuron-kb" / "config.toml").write_text(f'artifact_dir = "{tmp_path / "mine"}"\n')
    assert config.server_artifact_dir("bolt://host:7687", None).parent == tmp_path / "mine"


def test_bolt_store_artifacts(bolt_server, tmp_path, monkeypatch):
    monkeypatch.setenv(config.ARTIFACT_ENV, str(tmp_path / "art"))
    url = bolt_server.url_for_graph("artifacts")
    with open_store(url, create=True) as store:
        d = store.artifact_dir()
    assert d.parent == tmp_path / "art"
    with open_store(bolt_server.url_for_graph("artifacts2"), create=True) as other:
        assert other.artifact_dir() != d


def test_model_records_its_window_prefix(tmp_path, tiny_dir):
    from ingest.corpus import bos_id_for
    from ingest.models import load_model

    with open_store(str(tmp_path / "kb"), create=True) as store:
        ingest(store, IngestConfig(str(tiny_dir), name="tiny", stages=["lmhead"], layers=[0], **SMALL))
        got = store.cypher("MATCH (m:Model {id: 'tiny'}) RETURN m.window_prefix AS p")["p"].iloc[0]
    bos = bos_id_for(load_model(str(tiny_dir)).tokenizer)
    assert list(got) == ([] if bos is None else [bos])
