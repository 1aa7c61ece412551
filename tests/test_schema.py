from pathlib import Path

import pytest

from kb import schema
from kb.errors import NkbError, SchemaError
from kb.ids import (
    ExplanationId,
    N2GNodeId,
    NeuronId,
    ScoreId,
    neuron_id,
    neuron_ids,
    parse_token_id,
    token_id,
    token_ids,
)

ROOT = Path(__file__).resolve().parents[1]


def test_docs_match_the_code():
    assert (ROOT / "docs" / "schema.md").read_text() == schema.schema_markdown(), (
        "docs/schema.md is stale: run `python -m kb.schema > docs/schema.md`"
    )


def test_every_property_has_a_known_type_and_every_rel_known_endpoints():
    for n in (*schema.NODES, schema.META):
        assert n.columns[0] in ("id", "key")
        assert len(set(n.columns)) == len(n.columns)
        for p in n.props:
            assert p.type in schema.TYPES, (n.label, p.name)
    for r in schema.RELS:
        assert r.src in schema.NODE_BY_LABEL and r.dst in schema.NODE_BY_LABEL, r.type
        assert set(r.key) <= set(r.columns), r.type


def test_unknown_label_and_type_name_the_known_ones():
    with pytest.raises(SchemaError, match="unknown node label 'Nueron'.*Neuron"):
        schema.node_type("Nueron")
    with pytest.raises(SchemaError, match="unknown relationship type 'PROMOTE'.*PROMOTES"):
        schema.rel_type("PROMOTE")


def test_neuron_ids_round_trip_and_models_may_contain_slashes():
    nid = NeuronId.parse("EleutherAI/pythia-70m/3/1024")
    assert nid == NeuronId("EleutherAI/pythia-70m", 3, 1024)
    assert str(nid) == "EleutherAI/pythia-70m/3/1024"
    assert parse_token_id(token_id("tok/x", 7)) == ("tok/x", 7)


@pytest.mark.parametrize("bad", ["smollm2-135m/3", "m/a/1", "/3/4", "m/-1/2", "m/1/2.5"])
def test_bad_neuron_ids_say_the_format(bad):
    with pytest.raises(NkbError, match="MODEL/LAYER/INDEX|must be"):
        NeuronId.parse(bad)


@pytest.mark.parametrize("explainer, method", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "top-activations"),
    ("data", "n2g/lmhead"),
    ("org/model%2F/odd", "100%/sure"),
    ("a", "b"),
])
def test_composite_ids_round_trip_with_slashes_in_the_parts(explainer, method):
    neuron = NeuronId("EleutherAI/pythia-70m", 3, 1024)
    eid = ExplanationId(neuron, explainer, method)
    text = str(eid)
    assert text.startswith("EleutherAI/pythia-70m/3/1024/")
    assert ExplanationId.parse(text) == eid
    sid = ScoreId(eid, "simulation", "Qwen/Qwen2-7B", "top/random")
    assert ScoreId.parse(str(sid)) == sid
    assert len({str(sid), str(ScoreId(eid, "simulation", "Qwen", "Qwen2-7B/top/random"))}) == 2


def test_n2g_node_ids_round_trip_and_bulk_ids_match_single_ones():
    node = N2GNodeId(NeuronId("m/x", 0, 5), (17, -1, 3))
    assert str(node) == "m/x/0/5/17.-1.3"
    assert N2GNodeId.parse(str(node)) == node
    assert neuron_ids("m/x", 2, [0, 7]) == [neuron_id("m/x", 2, 0), neuron_id("m/x", 2, 7)]
    assert token_ids("tok/x", [3]) == [token_id("tok/x", 3)]


@pytest.mark.parametrize("bad", ["m/0/1/explainer", "m/0/1//method", "x/y/z"])
def test_bad_explanation_ids_say_the_format(bad):
    with pytest.raises(NkbError, match="explanation ids look like|MODEL/LAYER/INDEX"):
        ExplanationId.parse(bad)
