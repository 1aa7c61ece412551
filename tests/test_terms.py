"""The term index of explanation texts (kb.terms) and the phrase search that reads it.

The search through the index is compared with the search it replaced, a lower-cased scan of
every explanation's text, run by the same engine (so both use that engine's own ``toLower``),
and, for ASCII phrases, with pandas.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest

from conftest import ENGINES, _store_url
from kb import queries, terms
from kb.errors import ParameterError
from kb.stores import open_store

# Texts whose case, separators and characters test the claim in kb.terms: non-ASCII letters
# inside runs (and whose lower case is longer, or ASCII: 'İ', the Kelvin sign), '_' inside a
# run, control characters and emoji, and runs that only a case-insensitive search joins.
TEXTS = [
    "Fires on 'dog' (12/20), \"hot dogs\" and DOGGED",
    "İstanbul, İzmir: Turkish city names",
    "temperatures in \u212a (Kelvin) and °C",
    "ÉCOLE, naïve café; Straße vs STRASSE",
    "snake_case_names like __init__ and self.x_y",
    "tabs\tand\nnewlines\rand\x1fcontrols",
    "emoji 🙂dog and 🙂 alone",
    "ΟΔΟΣ and Σίσυφος (Greek sigma)",
    "a/b-c.d+e=f?g!h",
    "(/)",
]

SCAN = """MATCH (n:Neuron)-[:EXPLAINED_BY]->(e:Explanation)
WHERE toLower(e.text) CONTAINS toLower($phrase)
RETURN n.id AS neuron, e.id AS explanation ORDER BY neuron, explanation"""


def write_explanations(store, texts: list[str], model: str = "m") -> pd.DataFrame:
    store.upsert_nodes("Model", pd.DataFrame({"id": [model], "n_layers": [1], "d_mlp": [len(texts)]}))
    neurons = pd.DataFrame({"id": [f"{model}/0/{i}" for i in range(len(texts))], "model": model, "layer": 0,
                            "idx": range(len(texts))})
    store.upsert_nodes("Neuron", neurons)
    store.upsert_rels("HAS_NEURON", pd.DataFrame({"src": model, "dst": neurons["id"]}))
    expl = pd.DataFrame({"id": [f"{n}/data/summary" for n in neurons["id"]], "neuron": neurons["id"], "model": model,
                         "text": texts})
    store.upsert_nodes("Explanation", expl)
    store.upsert_rels("EXPLAINED_BY", pd.DataFrame({"src": expl["neuron"], "dst": expl["id"]}))
    return expl


def phrases(seed: int = 0) -> list[str]:
    """Substrings of the texts (every start, lengths 1-8) in three cases, and a few more."""
    rng = random.Random(seed)
    out = set()
    for text in TEXTS:
        for start in range(len(text)):
            for length in (1, 2, 3, 5, 8):
                piece = text[start:start + length]
                out.update({piece, piece.upper(), piece.lower()})
    out.update({"dog", "DOG", "g' (1", "naÏve", "strasse", "k", "KELVIN", "σ", "🙂", "", " ", "*", "(/)", "zzz"})
    return sorted(rng.sample(sorted(out), 400) + ["dog", "g' (1", "(/)", "*", " ", "🙂dog", "istanbul", "k"])


@pytest.fixture(scope="module", params=ENGINES)
def term_store(request, tmp_path_factory):
    store = open_store(_store_url(request.param, tmp_path_factory.mktemp("terms"), request), create=True)
    write_explanations(store, TEXTS)
    yield store
    store.close()


def search(store, phrase: str) -> list[tuple[str, str]]:
    got = queries.run(store, "explanations_containing", {"phrase": phrase, "limit": 1000})
    return sorted(zip(got["neuron"], got["explanation"]))


def test_terms_are_the_runs_between_ascii_separators():
    assert terms.terms("Fires on 'dog' (12/20), naïve_x İ") == {"Fires", "on", "dog", "12", "20", "naïve_x", "İ", terms.ANY}
    assert terms.terms("") == {terms.ANY}
    assert terms.key_term('the word "the"') == "word"
    assert terms.key_term("naïve café") == "naïve"
    assert terms.key_term("(/)") == terms.ANY
    assert terms.key_term("") == terms.ANY
    assert terms.key_term(None) is None


def test_the_phrase_search_finds_what_a_scan_of_every_text_finds(term_store):
    checked = 0
    for phrase in phrases():
        want = sorted(map(tuple, term_store.cypher(SCAN, {"phrase": phrase})[["neuron", "explanation"]].values.tolist()))
        assert search(term_store, phrase) == want, f"phrase {phrase!r} (key term {terms.key_term(phrase)!r})"
        if phrase and phrase.isascii():  # (the engines find no empty phrase in a text; Python finds it in all)
            # Where Python lower-cases as the engines do: ASCII phrases in ASCII texts.
            plain = [i for i, t in enumerate(TEXTS) if t.isascii()]
            by_python = sorted((f"m/0/{i}", f"m/0/{i}/data/summary") for i in plain
                               if phrase.lower() in TEXTS[i].lower())
            assert [w for w in want if int(w[0].split("/")[2]) in plain] == by_python, phrase
        checked += bool(want)
    assert checked > 100  # most phrases find something: an always-empty search cannot pass


def test_the_store_writes_every_term_of_every_text(term_store):
    mentions = term_store.cypher("MATCH (e:Explanation)-[:MENTIONS]->(t:Term) RETURN e.id AS e, t.id AS t")
    got = {(e, t) for e, t in zip(mentions["e"], mentions["t"])}
    want = {(f"m/0/{i}/data/summary", t) for i, text in enumerate(TEXTS) for t in terms.terms(text)}
    assert got == want
    ids = set(term_store.cypher("MATCH (t:Term) RETURN t.id AS id")["id"])
    assert ids == {t for _, t in want}


@pytest.mark.parametrize("engine", ENGINES)
def test_rewriting_and_deleting_explanations_keeps_the_index_right(engine, tmp_path, request):
    store = open_store(_store_url(engine, tmp_path, request), create=True)
    try:
        expl = write_explanations(store, ["shared words and apples", "shared words and pears"], model="a")
        write_explanations(store, ["shared words only"], model="b")
        before = store.counts()
        write_explanations(store, ["shared words and apples", "shared words and pears"], model="a")
        assert store.counts() == before  # writing the same texts again adds nothing
        # A new text: found by its new words, no longer by its old ones.
        store.upsert_nodes("Explanation", expl.assign(text=["shared words and plums", "shared words and pears"]))
        assert search(store, "PLUMS") == [("a/0/0", "a/0/0/data/summary")]
        assert search(store, "apples") == []
        deleted = store.delete_model("a")
        assert deleted["Term"] == len({"and", "apples", "pears", "plums"})
        left = set(store.cypher("MATCH (t:Term) RETURN t.id AS id")["id"])
        assert left == {"shared", "words", "only", terms.ANY}
        assert search(store, "words") == [("b/0/0", "b/0/0/data/summary")]
    finally:
        store.close()


DERIVED = """\
// A query with a computed placeholder.
// @param phrase  text (required)
// @derived key   key_term(phrase): the key
MATCH (t:Term {id: $key}) WHERE t.id CONTAINS $phrase RETURN t.id AS id
"""


def test_a_derived_placeholder_is_computed_not_given():
    q = queries.NamedQuery.parse("derived", DERIVED)
    assert list(q.params) == ["phrase"] and q.problems() == []
    assert q.bind({"phrase": "a (longer) run"}) == {"phrase": "a (longer) run", "key": "longer"}
    with pytest.raises(ParameterError, match="has no parameter 'key'"):
        q.bind({"phrase": "x", "key": "y"})
    bad = queries.NamedQuery.parse("bad", DERIVED.replace("key_term(phrase)", "nothing(limit)"))
    assert bad.problems() == ["bad: @derived key names no function of kb.queries.DERIVED: nothing",
                              "bad: @derived key is computed from limit, which is not a parameter"]
