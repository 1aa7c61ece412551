"""Importers: round trips of fixtures written here in the published formats, idempotence,
and malformed or truncated files (reported with file and line, nothing imported from them)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ingest.explain.importers import import_file
from kb.cli import cli
from kb.errors import NkbError
from kb.records import decode_activations
from kb.stores import open_store


def _record(tokens, acts):
    return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": acts}


def write_openai(root: Path) -> dict:
    """Two neurons of layer 3 in OpenAI's neuron-explainer layout (NeuronRecord,
    NeuronSimulationResults, weight- and activation-based related tokens)."""
    rng = np.random.default_rng(7)
    truth = {}
    for index in (5, 11):
        tops = [_record(["The", " dog", f" barked{i}"], [0.0, float(9 - i), 0.5]) for i in range(4)]
        rand = [_record(["a", " cat"], [0.1, float(rng.uniform(0, 1))]) for _ in range(2)]
        quant = [[_record(["x", " y"], [0.2, 0.3])], [_record(["p", " q"], [1.0, 2.0])]]
        rec = {"dataclass_name": "NeuronRecord",
               "neuron_id": {"dataclass_name": "NeuronId", "layer_index": 3, "neuron_index": index},
               "random_sample": rand, "random_sample_by_quantile": quant, "quantile_boundaries": [0.0, 0.5, 3.0],
               "mean": 0.25, "variance": 0.5, "skewness": 1.0, "kurtosis": 3.0,
               "most_positive_activation_records": tops}
        d = root / "collated-activations" / "3"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{index}.json").write_text(json.dumps(rec, indent=1))
        expl = {"dataclass_name": "NeuronSimulationResults",
                "neuron_id": {"dataclass_name": "NeuronId", "layer_index": 3, "neuron_index": index},
                "scored_explanations": [{"dataclass_name": "ScoredExplanation", "explanation": f" dogs, neuron {index}",
                                         "scored_simulation": {"dataclass_name": "ScoredSimulation",
                                                               "scored_sequence_simulations": [{}, {}, {}],
                                                               "ev_correlation_score": 0.5 + index / 100}}]}
        d = root / "explanations" / "3"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{index}.jsonl").write_text(json.dumps(expl) + "\n")
        tw = lambda toks, vals: {"dataclass_name": "TokensAndWeights", "tokens": toks, "strengths": vals}  # noqa: E731
        weights = {"dataclass_name": "WeightBasedSummaryOfNeuron", "input_positive": tw([" dog"], [0.3]),
                   "input_negative": tw([" cat"], [-0.3]), "output_positive": tw([" bark", "zzz-unknown"], [2.0, 1.0]),
                   "output_negative": tw([" meow"], [-1.5])}
        d = root / "related-tokens" / "weight-based" / "3"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{index}.json").write_text(json.dumps(weights))
        act = {"dataclass_name": "TokenLookupTableSummaryOfNeuron", "tokens": [" dog", " puppy"],
               "average_activations": [4.0, 3.0]}
        d = root / "related-tokens" / "activation-based" / "3"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{index}.json").write_text(json.dumps(act))
        truth[index] = rec
    return truth


def _store_with_vocab(path: str, model: str) -> None:
    """A store holding `model` with a small vocabulary, so related tokens can map by text."""
    import pandas as pd

    with open_store(path, create=True) as store:
        store.upsert_nodes("Model", pd.DataFrame([{"id": model, "kind": "lm", "tokenizer": "tk"}]))
        vocab = [" dog", " bark", " meow", " cat", " puppy"]
        store.upsert_nodes("Token", pd.DataFrame({"id": [f"tk/{i}" for i in range(5)], "tokenizer": "tk",
                                                  "token_id": list(range(5)), "text": vocab}))


def test_openai_round_trip_and_idempotent(tmp_path):
    root = tmp_path / "oai"
    truth = write_openai(root)
    url = str(tmp_path / "kb")
    _store_with_vocab(url, "gpt2-test")
    with open_store(url) as store:
        report = import_file(store, "openai", root, "gpt2-test")
        counts = store.counts()
        again = import_file(store, "openai", root, "gpt2-test")
        assert store.counts() == counts
        n = store.cypher("MATCH (n:Neuron) WHERE n.id = 'gpt2-test/3/5' RETURN n.max_act AS mx, n.mean_act AS mean, "
                         "n.var_act AS var, n.quantile_boundaries AS qb, n.explanation AS e, n.explanation_score AS s")
        recs = store.cypher("MATCH (n:Neuron)-[r:ACTIVATES_ON]->(s:Snippet) WHERE n.id = 'gpt2-test/3/5' "
                            "RETURN r.kind AS kind, r.rank AS rank, r.activations AS acts, s.tokens AS tokens "
                            "ORDER BY kind, rank")
        prom = store.cypher("MATCH (n:Neuron)-[r:PROMOTES]->(t:Token) WHERE n.id = 'gpt2-test/3/5' "
                            "RETURN t.text AS t, r.logit AS v")
        reads = store.cypher("MATCH (n:Neuron)-[r:READS]->(t:Token) WHERE n.id = 'gpt2-test/3/5' RETURN t.text AS t, r.via AS via")
        expl = store.cypher("MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) WHERE n.id = 'gpt2-test/3/11' "
                            "OPTIONAL MATCH (e)-[:HAS_SCORE]->(s:Score) RETURN e.explainer AS who, e.method AS m, "
                            "e.text AS text, s.value AS v, s.method AS sm ORDER BY m")
    assert report.files == again.files == 8 and not report.errors
    assert report.unmatched_tokens == 2  # "zzz-unknown" of each neuron
    row = n.iloc[0]
    assert (row["mx"], row["mean"], row["var"]) == (9.0, 0.25, 0.5) and list(row.qb) == [0.0, 0.5, 3.0]
    assert row.e == "dogs, neuron 5" and row.s == pytest.approx(0.55)
    assert sorted(set(recs["kind"])) == ["quantile_0", "quantile_1", "random", "top"]
    tops = recs[recs["kind"] == "top"]
    for (_, r), orig in zip(tops.iterrows(), truth[5]["most_positive_activation_records"]):
        assert list(r.tokens) == orig["tokens"]
        np.testing.assert_allclose(decode_activations(r.acts), orig["activations"], rtol=1e-3)
    assert dict(zip(prom["t"], prom["v"])) == {" bark": 2.0}
    assert reads.values.tolist() == [[" dog", "in"]]
    rows = expl.astype(object).where(expl.notna(), None).values.tolist()
    assert rows == [
        ["data", "activation-tokens", 'highest mean activation on " dog" (4), " puppy" (3)', None, None],
        ["openai-neuron-explainer", "top-activations", "dogs, neuron 11", pytest.approx(0.61), "simulation"]]


def test_openai_malformed_file_stop_and_skip(tmp_path):
    root = tmp_path / "oai"
    write_openai(root)
    bad = root / "collated-activations" / "3" / "11.json"
    bad.write_text(bad.read_text()[:-40])  # truncated
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as store:
        with pytest.raises(NkbError) as err:
            import_file(store, "openai", root, "m", on_error="stop")
        assert f"{bad}:" in str(err.value) and "not valid JSON" in str(err.value)
        # neuron 5's good file before it is in; nothing of neuron 11 is
        assert store.cypher("MATCH (n:Neuron) RETURN n.id AS id ORDER BY id")["id"].tolist() == ["m/3/5"]
        report = import_file(store, "openai", root, "m", on_error="skip")
        assert len(report.errors) == 1 and str(bad) in report.errors[0]
        tops = store.cypher("MATCH (n:Neuron)-[r:ACTIVATES_ON]->() WHERE n.id = 'm/3/11' RETURN count(r) AS c")
        assert tops["c"].iloc[0] == 0  # its records file was bad; its explanation files were fine
        assert store.cypher("MATCH (n:Neuron {id: 'm/3/11'})-[:EXPLAINED_BY]->(e) RETURN count(e) AS c")["c"].iloc[0] == 2


def _np_write(path: Path, rows: list, gz: bool = True, truncate: bool = False) -> None:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if gz:
        data = gzip.compress(data)
        if truncate:
            data = data[: len(data) // 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_neuronpedia(root: Path) -> None:
    src = root / "gpt2-small" / "6-res-jb"
    feats = [{"modelId": "gpt2-small", "layer": "6-res-jb", "index": str(i), "maxActApprox": 3.5 + i,
              "frac_nonzero": 0.01 * (i + 1), "pos_str": [" dog"], "pos_values": [1.25], "neg_str": [" cat"],
              "neg_values": [-0.5]} for i in range(3)]
    _np_write(src / "features" / "batch-0.jsonl.gz", feats)
    acts = [{"id": f"a{i}{j}", "modelId": "gpt2-small", "layer": "6-res-jb", "index": str(i),
             "tokens": ["<|endoftext|>", f"The{j}", " dog"], "values": [0.0, 0.5, 2.0 + j], "maxValue": 2.0 + j,
             "maxValueTokenIndex": 2, "minValue": 0.0} for i in range(3) for j in range(2)]
    _np_write(src / "activations" / "batch-0.jsonl.gz", acts)
    expl = [{"id": f"e{i}", "modelId": "gpt2-small", "layer": "6-res-jb", "index": str(i), "authorId": "x",
             "description": f"dogs {i}", "typeName": "oai_token-act-pair", "explanationModelName": "gpt-4o-mini"}
            for i in range(3)]
    _np_write(src / "explanations" / "batch-0.jsonl.gz", expl[:2])
    _np_write(src / "explanations" / "batch-1.jsonl", expl[2:], gz=False)


def test_neuronpedia_round_trip(tmp_path):
    root = tmp_path / "np"
    write_neuronpedia(root)
    url = str(tmp_path / "kb")
    _store_with_vocab(url, "gpt2-small/res-jb")
    with open_store(url) as store:
        report = import_file(store, "neuronpedia", root / "gpt2-small")
        counts = store.counts()
        import_file(store, "neuronpedia", root / "gpt2-small")
        assert store.counts() == counts
        neurons = store.cypher("MATCH (m:Model)-[:HAS_NEURON]->(n:Neuron) RETURN m.id AS m, n.id AS id, n.layer AS l, "
                               "n.max_act AS mx, n.density AS d, n.explanation AS e ORDER BY id")
        recs = store.cypher("MATCH (n:Neuron)-[r:ACTIVATES_ON]->() WHERE n.id = 'gpt2-small/res-jb/6/1' "
                            "RETURN r.max AS mx ORDER BY mx")
        prom = store.cypher("MATCH (n:Neuron)-[r:PROMOTES]->(t:Token) RETURN count(r) AS c")
        expl = store.cypher("MATCH (e:Explanation) RETURN e.explainer AS who, e.method AS m ORDER BY who LIMIT 1")
    assert report.files == 4 and report.model == "gpt2-small/res-jb"
    assert neurons["id"].tolist() == [f"gpt2-small/res-jb/6/{i}" for i in range(3)]
    assert set(neurons["l"]) == {6} and neurons["mx"].tolist() == [3.5, 4.5, 5.5]
    assert neurons["e"].tolist() == ["dogs 0", "dogs 1", "dogs 2"]
    assert recs["mx"].tolist() == [2.0, 3.0]
    assert prom["c"].iloc[0] == 3
    assert expl.values.tolist() == [["gpt-4o-mini", "oai_token-act-pair"]]


def test_neuronpedia_truncated_batch(tmp_path):
    root = tmp_path / "np"
    write_neuronpedia(root)
    src = root / "gpt2-small" / "6-res-jb"
    bad = src / "explanations" / "batch-0.jsonl.gz"
    _np_write(bad, [{"modelId": "gpt2-small", "layer": "6-res-jb", "index": str(i), "description": "x" * 4000}
                    for i in range(40)], truncate=True)
    bad_line = src / "explanations" / "batch-1.jsonl"
    bad_line.write_text(bad_line.read_text() + '{"modelId": "gpt2-small", "layer": "6-res-jb", "index": "nine"}\n')
    url = str(tmp_path / "kb")
    with open_store(url, create=True) as store:
        report = import_file(store, "neuronpedia", src, "np", on_error="skip")
        n_expl = store.cypher("MATCH (e:Explanation) RETURN count(e) AS c")["c"].iloc[0]
    assert report.files == 2 and len(report.errors) == 2
    assert str(bad) in report.errors[0] and "truncated" in report.errors[0]
    assert f"{bad_line}:2: index must be an integer" in report.errors[1]
    assert n_expl == 0  # neither bad batch imported anything (batch-1's good first line included)


def test_cli_import_errors(tmp_path):
    runner = CliRunner()
    url = str(tmp_path / "kb")

    def one_line(result) -> str:
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("Error: ") and "Traceback" not in result.output
        return lines[-1]

    assert "unknown import format 'csv'" in one_line(runner.invoke(cli, ["import", "csv", str(tmp_path), "--store", url]))
    assert "does not hold OpenAI's" in one_line(runner.invoke(cli, ["import", "openai", str(tmp_path), "--store", url]))
    assert not Path(url).exists()  # refused before the store was created
    root = tmp_path / "oai"
    write_openai(root)
    (root / "explanations" / "3" / "5.jsonl").write_text('{"scored_explanations": [}\n')
    stop = runner.invoke(cli, ["import", "openai", str(root), "--store", url, "--model", "m"])
    assert "5.jsonl:1: not valid JSON" in one_line(stop)
    skip = runner.invoke(cli, ["import", "openai", str(root), "--store", url, "--model", "m", "--on-error", "skip"])
    assert "1 bad file(s) skipped" in one_line(skip) and "Imported 7 files" in skip.stdout
