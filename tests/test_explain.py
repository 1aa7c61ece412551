"""Explainers, scorers and the explain / score runs on a small KB and a tiny random model.

The local back end's probabilities (the simulator's expected values, the classifier's
P(1)) are checked against a slow oracle: the model run unbatched, unpadded, on each prefix
alone. The data-derived description is checked against the KB's frames decoded in pandas.
"""

from __future__ import annotations

import types
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ingest.explain import prompts
from ingest.explain.explainers import DataExplainer, LLMExplainer, N2GExplainer
from ingest.explain.llm import LocalLM
from ingest.explain.neurons import NeuronData, Record, load_neurons
from ingest.explain.run import explain_neurons, score_neurons, select_neurons
from ingest.explain.scorers import (ClassifierScorer, LocalSimulator, SimulationScorer, classification_samples,
                                    score_records)
from kb.cli import cli
from kb.errors import NkbError, ReadOnlyViolation
from kb.records import decode_activations
from kb.stores import open_store
from kbdata import build_small_kb
from tinymodels import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("explain") / "kb")
    with open_store(path, create=True) as store:
        kb = build_small_kb(store)
    return path, kb


@pytest.fixture
def fresh_kb(tmp_path):
    path = str(tmp_path / "kb")
    with open_store(path, create=True) as store:
        kb = build_small_kb(store)
    return path, kb


@pytest.fixture(scope="module")
def tiny_lm():
    loaded = types.SimpleNamespace(name="tiny-llama", model=tiny_llama(seed=3, n_layers=2), tokenizer=tiny_tokenizer())
    return LocalLM(loaded=loaded, batch_size=3)


def _firing_counts(kb, nid: str) -> Counter:
    rec = kb.rels["ACTIVATES_ON"]
    snippets = kb.nodes["Snippet"].set_index("id")
    out = Counter()
    for row in rec[(rec["src"] == nid) & (rec["kind"] == "top")].itertuples():
        acts = decode_activations(row.activations)
        out[snippets.loc[row.dst, "tokens"][int(np.argmax(acts))]] += 1
    return out


def test_load_neurons_matches_frames(kb_path):
    path, kb = kb_path
    with open_store(path, read_only=True) as store:
        [n] = load_neurons(store, ["alpha/1/2"])
    assert [r.rank for r in n.top] == [0, 1, 2, 3] and [r.rank for r in n.random] == [0, 1]
    prom = kb.rels["PROMOTES"]
    texts = kb.token_text()
    expected = [texts[t] for t in prom[prom["src"] == "alpha/1/2"].sort_values("rank")["dst"]]
    assert n.promotes == expected
    assert n.firing_tokens() == _firing_counts(kb, "alpha/1/2")


def test_load_neurons_of_a_whole_layer_gives_each_neuron_its_own_lists(kb_path):
    path, kb = kb_path
    with open_store(path, read_only=True) as store:
        neurons = load_neurons(store, model="alpha", layer=1, records=False, peaks=True)
    texts = kb.token_text()
    assert len(neurons) > 2
    for rel, attr in (("PROMOTES", "promotes"), ("SUPPRESSES", "suppresses")):
        frame = kb.rels[rel]
        for n in neurons:
            assert getattr(n, attr) == [texts[t] for t in frame[frame["src"] == n.id].sort_values("rank")["dst"]], n.id


def test_load_neurons_reads_the_neurons_own_lists_and_peaks(fresh_kb):
    path, kb = fresh_kb
    texts = kb.token_text()
    prom = kb.rels["PROMOTES"]
    own = prom[prom["src"] == "alpha/1/2"]
    other = next(t for t in texts if t not in set(own["dst"]))
    with open_store(path) as store:
        # A token stage edge: alpha/1/2 is the top neuron of some other token. It is not in the
        # neuron's own list and must not enter it.
        store.upsert_rels("PROMOTES", pd.DataFrame({"src": ["alpha/1/2"], "dst": [other], "logit": [9.0],
                                                     "rank": [0], "found": ["token"]}))
        [n] = load_neurons(store, ["alpha/1/2"])
        [p] = load_neurons(store, ["alpha/1/2"], records=False, peaks=True)
    assert n.promotes == [texts[t] for t in own.sort_values("rank")["dst"]]
    assert p.records == [] and p.promotes == n.promotes
    assert p.firing_tokens() == n.firing_tokens() == _firing_counts(kb, "alpha/1/2")


def test_data_explainer_text(kb_path):
    path, kb = kb_path
    with open_store(path, read_only=True) as store:
        neurons = load_neurons(store, ["alpha/0/0", "alpha/0/1"])
    texts = DataExplainer(k=3).explain(neurons)
    for n, text in zip(neurons, texts):
        counts = _firing_counts(kb, n.id)
        top_token, top_count = counts.most_common(1)[0]
        assert f'"{top_token}" ({top_count}/4)' in text
        assert "promotes " + ", ".join(f'"{t}"' for t in n.promotes[:3]) in text
    # alpha/0/0 has N2G tokens (even neurons), alpha/0/1 none
    assert "N2G fires on" in texts[0] and "N2G" not in texts[1]
    assert N2GExplainer().explain(neurons)[1] is None


def test_explain_run_writes_labelled_and_idempotent(fresh_kb):
    path, kb = fresh_kb
    ids = [f"beta/2/{i}" for i in range(6)]
    with open_store(path) as store:
        report = explain_neurons(store, ids, DataExplainer())
        before = store.counts()
        again = explain_neurons(store, ids, DataExplainer())
        assert store.counts() == before  # same ids: updated, not duplicated
        rows = store.cypher("MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation) WHERE e.method = 'summary' "
                            "RETURN n.id AS nid, e.id AS id, e.explainer AS explainer, n.explanation AS best, "
                            "n.explanation_score AS score ORDER BY nid")
    assert report.written == again.written == 6
    assert rows["nid"].tolist() == ids
    assert (rows["explainer"] == "data").all()
    assert rows["id"].tolist() == [f"{i}/data/summary" for i in ids]
    # the small KB's scored explanations still win the denormalised columns
    neurons = kb.nodes["Neuron"].set_index("id")
    assert rows["best"].tolist() == [neurons.loc[i, "explanation"] for i in ids]
    assert rows["score"].tolist() == pytest.approx([neurons.loc[i, "explanation_score"] for i in ids])


def test_selection(kb_path):
    path, _ = kb_path
    with open_store(path, read_only=True) as store:
        assert select_neurons(store, ["alpha/0/1, alpha/0/2", "alpha/0/1"]) == ["alpha/0/1", "alpha/0/2"]
        got = select_neurons(store, select="MATCH (n:Neuron) WHERE n.model = 'beta' AND n.layer = 1 "
                                           "RETURN n.id ORDER BY n.idx", limit=4)
        assert got == [f"beta/1/{i}" for i in range(4)]
        with pytest.raises(NkbError, match="selection is empty"):
            select_neurons(store, select="MATCH (n:Neuron) WHERE n.layer = 99 RETURN n.id")
        with pytest.raises(ReadOnlyViolation):
            select_neurons(store, select="MATCH (n:Neuron) SET n.layer = 0 RETURN n.id")
        with pytest.raises(NkbError, match="neuron ids in its first column"):
            select_neurons(store, select="MATCH (n:Neuron) RETURN n.layer LIMIT 1")
        with pytest.raises(NkbError, match="no neuron 'alpha/0/77'"):
            select_neurons(store, ["alpha/0/77"])
        with pytest.raises(NkbError, match="no neurons to explain"):
            select_neurons(store)


def _oracle_evs(lm: LocalLM, explanation: str, tokens: list[str]) -> np.ndarray:
    """Each token's expected value from the model run on the prompt up to that token's tab, alone."""
    head, tail = prompts.simulation_parts(explanation)
    digits = [(v, lm.tokenizer.encode(str(v), add_special_tokens=False)) for v in range(11)]
    digits = [(v, ids[0]) for v, ids in digits if len(ids) == 1]
    prefix = lm.tokenizer.encode(head, add_special_tokens=False)
    out = []
    for tok in tokens:
        prefix = prefix + lm.tokenizer.encode(tok, add_special_tokens=False) + lm.tokenizer.encode("\t", add_special_tokens=False)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([prefix])).logits[0, -1].double()
        p = torch.softmax(logits, -1)[[t for _, t in digits]].numpy()
        out.append(float((p / p.sum()) @ np.array([v for v, _ in digits], dtype=float)))
        prefix = prefix + lm.tokenizer.encode("unknown", add_special_tokens=False) + lm.tokenizer.encode("\n", add_special_tokens=False)
    return np.array(out)


def test_local_simulator_matches_unbatched_oracle(tiny_lm):
    items = [("years written as digits", [["The", " year", " 1999"], ["a", " b"]]),
             ("closing brackets", [["f", "(", "x", ")", ")"]])]
    sims = LocalSimulator(tiny_lm).simulate(items)
    for (expl, records), got in zip(items, sims):
        assert len(got) == len(records)
        for tokens, evs in zip(records, got):
            np.testing.assert_allclose(evs, _oracle_evs(tiny_lm, expl, tokens), rtol=1e-4, atol=1e-5)


def test_classifier_probabilities_match_oracle(tiny_lm):
    n = _synthetic_neuron()
    scorer = ClassifierScorer(tiny_lm, fuzz=False, n_top=2, n_random=2)
    texts, labels, _ = classification_samples(n, fuzz=False, n_top=2, n_random=2)
    answers = scorer._ask([prompts.classify_messages("years", t, fuzz=False) for t in texts])
    zero, one = tiny_lm.single_token("0"), tiny_lm.single_token("1")
    for text, (pred, prob) in zip(texts, answers):
        ids = tiny_lm.chat_ids(prompts.classify_messages("years", text, fuzz=False))
        with torch.no_grad():
            p = torch.softmax(tiny_lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
        expected = float(p[one] / (p[one] + p[zero]))
        assert prob == pytest.approx(expected, rel=1e-4)
        assert pred == (expected > 0.5)
    assert labels == [True, True, False, False]


def _synthetic_neuron() -> NeuronData:
    rng = np.random.default_rng(0)
    words = ["The", " year", " 1999", " was", " long", " and", " 2001", " too"]
    records = []
    for kind, count in (("top", 4), ("random", 2)):
        for rank in range(count):
            acts = rng.uniform(0, 0.5, len(words)).astype(np.float32)
            if kind == "top":
                acts[2] = 5.0 - rank
            records.append(Record(words, acts, kind, rank))
    return NeuronData("tiny/0/0", "tiny", 0, 0, records=records)


def test_fuzzing_samples_mark_firing_tokens():
    n = _synthetic_neuron()
    texts, labels, recs = classification_samples(n, fuzz=True, n_top=2, n_random=2, seed=1)
    assert labels == [True, True, False, False]
    assert [r.label for r in recs] == ["top:1", "top:3", "random:0", "random:1"]
    # positives: only " 1999" is at >= 30% of the maximum
    assert texts[0] == "The year<< 1999>> was long and 2001 too"
    # negatives: as many marks (1) on a random token; the same seed gives the same text
    assert all(t.count("<<") == 1 for t in texts[2:])
    assert classification_samples(n, fuzz=True, n_top=2, n_random=2, seed=1)[0] == texts


def test_score_run_on_store(fresh_kb, tiny_lm):
    path, _ = fresh_kb
    ids = ["alpha/3/0", "alpha/3/1"]
    with open_store(path) as store:
        scorer = SimulationScorer(LocalSimulator(tiny_lm), n_top=2, n_random=2)
        report = score_neurons(store, ids, scorer, explainer="data")
        rows = store.cypher("MATCH (e:Explanation)-[:HAS_SCORE]->(s:Score) WHERE e.neuron IN $ids "
                            "AND s.scorer = 'tiny-llama' RETURN e.id AS eid, s.method AS m, s.value AS v, "
                            "s.records AS r, s.split AS split, s.n_records AS n ORDER BY eid", {"ids": ids})
        neurons = load_neurons(store, ids)
        again = score_neurons(store, ids, scorer, explainer="data")
        redo = score_neurons(store, ids, scorer, explainer="data", rescore=True)
    assert report.written == 2 and again.written == 0 and redo.written == 2
    assert rows["eid"].tolist() == [f"{i}/data/top-activations" for i in ids]
    assert set(rows["r"]) == {"top:1,3;random:0,1"} and set(rows["split"]) == {"holdout"}
    assert set(rows["n"]) == {4}
    # the stored value is the pooled correlation of the oracle's EVs with the true activations
    texts = dict(zip(rows["eid"], rows["v"]))
    for n in neurons:
        recs = score_records(n, 2, 2)
        with open_store(path, read_only=True) as store:
            store_text = store.cypher("MATCH (e:Explanation) WHERE e.id = $id RETURN e.text AS t",
                                      {"id": f"{n.id}/data/top-activations"})["t"].iloc[0]
        sim = np.concatenate([_oracle_evs(tiny_lm, store_text, r.tokens) for r in recs])
        true = np.concatenate([r.activations for r in recs])
        assert texts[f"{n.id}/data/top-activations"] == pytest.approx(np.corrcoef(true, sim)[0, 1], abs=1e-4)


def test_local_explainer_on_tiny_model_batched_equals_single(kb_path, tiny_lm):
    path, _ = kb_path
    with open_store(path, read_only=True) as store:
        neurons = load_neurons(store, [f"alpha/2/{i}" for i in range(4)])
    batched = LLMExplainer(tiny_lm, n_records=2, max_tokens=6).explain(neurons)
    one = LocalLM(loaded=types.SimpleNamespace(name="tiny-llama", model=tiny_lm.model, tokenizer=tiny_lm.tokenizer),
                  batch_size=1)
    single = LLMExplainer(one, n_records=2, max_tokens=6).explain(neurons)
    assert batched == single  # left padding changes nothing a greedy decode sees


def test_cli_explain_data_and_bad_selection(fresh_kb):
    path, _ = fresh_kb
    runner = CliRunner()
    ok = runner.invoke(cli, ["explain", "--explainer", "data", "--store", path, "--select",
                             "MATCH (n:Neuron) WHERE n.model = 'beta' RETURN n.id", "--limit", "3"])
    assert ok.exit_code == 0, ok.output
    assert "Explained 3 of 3 neurons" in ok.stdout
    with open_store(path, read_only=True) as store:
        before = store.counts()
    for args, message in (
        (["--select", "MATCH (n:Neuron) DETACH DELETE n RETURN 1"], "the query writes (DETACH)"),
        (["--select", "MATCH (n:Neuron) WHERE n.layer = 42 RETURN n.id"], "the selection is empty"),
        ([], "no neurons to explain"),
    ):
        bad = runner.invoke(cli, ["explain", "--explainer", "data", "--store", path, *args])
        assert bad.exit_code == 1
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], bad.stderr
    with open_store(path, read_only=True) as store:
        assert store.counts() == before
