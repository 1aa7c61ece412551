"""The local explainer and the logprob simulator on the real bundled SmolLM2-135M-Instruct,
for a few neurons (records written here: years, closing brackets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingest.explain import prompts
from ingest.explain.explainers import LLMExplainer
from ingest.explain.llm import LocalLM
from ingest.explain.neurons import NeuronData, Record
from ingest.explain.scorers import LocalSimulator, SimulationScorer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return LocalLM("smollm2-135m", batch_size=4)


def _neuron(index: int, words: list[str], firing: set[str]) -> NeuronData:
    recs = []
    for kind, count in (("top", 4), ("random", 2)):
        for rank in range(count):
            acts = np.array([(5.0 - rank) if (kind == "top" and w in firing) else 0.0 for w in words], dtype=np.float32)
            recs.append(Record(words, acts, kind, rank))
    return NeuronData(f"t/0/{index}", "t", 0, index, records=recs)


NEURONS = [
    _neuron(0, ["The", " war", " ended", " in", " 1945", " and", " peace", " came", " in", " 1946", "."], {" 1945", " 1946"}),
    _neuron(1, ["print", "(", "len", "(", "x", "))", " and", " f", "(", "y", ")"], {"))", ")"}),
]


def test_local_explainer_writes_explanations(smol):
    texts = LLMExplainer(smol, n_records=2, max_tokens=24).explain(NEURONS)
    assert len(texts) == 2 and all(t is None or (isinstance(t, str) and "\n" not in t) for t in texts)
    assert any(texts)


def test_logprob_simulator_matches_single_pass(smol):
    sim = LocalSimulator(smol)
    assert sim.values == list(range(10))  # SmolLM2 writes "10" as "1" "0": 0-9 are single tokens
    tokens = NEURONS[0].top[1].tokens
    [[evs]] = sim.simulate([("years", [tokens])])
    # oracle: the whole prompt in one unpadded pass, EVs read after each tab by hand
    head, tail = prompts.simulation_parts("years")
    ids, pos = smol.encode(head), []
    for t in tokens:
        ids += smol.encode(t) + smol.encode("\t")
        pos.append(len(ids) - 1)
        ids += smol.encode("unknown") + smol.encode("\n")
    ids += smol.encode(tail)
    with torch.no_grad():
        logits = smol.model(input_ids=torch.tensor([ids])).logits[0].double()
    digits = [smol.single_token(str(v)) for v in range(10)]
    p = torch.softmax(logits[pos], -1)[:, digits].numpy()
    np.testing.assert_allclose(evs, (p / p.sum(1, keepdims=True)) @ np.arange(10), rtol=1e-3, atol=1e-4)
    [score] = SimulationScorer(sim, n_top=2, n_random=2).score([(NEURONS[0], "years written as four digits")])
    assert score is None or -1.0 <= score.value <= 1.0
