"""The named query library: every query on every engine against the seeded small KB.

Expected rows are computed here with pandas from the frames ``kbdata`` wrote, never copied
from a run: a query that disagrees with the data is wrong on that engine.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import ENGINES, _store_url
from kb import cypher, output, queries
from kb.errors import ParameterError, UnknownQuery
from kb.queries import REQUIRED, NamedQuery
from kb.stores import open_store
from kbdata import build_small_kb, make_small_kb

KB = make_small_kb()


@pytest.fixture(scope="module", params=ENGINES)
def kb_store(request, tmp_path_factory):
    """One small KB per engine, shared by this module's tests (named queries only read)."""
    url = _store_url(request.param, tmp_path_factory.mktemp("kb"), request)
    store = open_store(url, create=True)
    build_small_kb(store)
    yield store
    store.close()


# -- expected rows, from the frames -----------------------------------------------------------

def neurons() -> pd.DataFrame:
    return KB.nodes["Neuron"].rename(columns={"id": "neuron"})


def token_rels(rel_type: str, token: str, model: str | None) -> pd.DataFrame:
    tokens = KB.nodes["Token"][["id", "text", "token_id"]]
    df = KB.rels[rel_type].merge(tokens, left_on="dst", right_on="id").merge(neurons(), left_on="src", right_on="neuron")
    df = df[df["text"] == token]
    return df if model is None else df[df["model"] == model]


def exp_models(p):
    counts = KB.rels["HAS_NEURON"].groupby("src").size()
    df = KB.nodes["Model"].rename(columns={"id": "model"}).sort_values("model")
    return df.assign(neurons=[int(counts.get(m, 0)) for m in df["model"]])


def _by_neuron(df: pd.DataFrame, value: str, best, keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per neuron (and key): the edges found from the neuron side and the token side merged."""
    rows = []
    for _, g in df.groupby(["neuron", *keys], sort=False):
        ranks = {f: g.loc[g["found"] == f, "rank"] for f in ("neuron", "token")}
        rows.append({**g.iloc[0][["neuron", *keys, "model", "layer", "idx", "explanation"]].to_dict(),
                     value: best(g[value]),
                     "rank": int(ranks["neuron"].min()) if len(ranks["neuron"]) else None,
                     "token_rank": int(ranks["token"].min()) if len(ranks["token"]) else None})
    return pd.DataFrame(rows, columns=["neuron", *keys, "model", "layer", "idx", "explanation", value, "rank",
                                       "token_rank"])


def exp_promotes_token(p):
    df = _by_neuron(token_rels("PROMOTES", p["token"], p.get("model")), "logit", max)
    return df.sort_values(["logit", "neuron"], ascending=[False, True]).head(p.get("limit", 20))


def exp_suppresses_token(p):
    df = _by_neuron(token_rels("SUPPRESSES", p["token"], p.get("model")), "logit", min)
    return df.sort_values(["logit", "neuron"]).head(p.get("limit", 20))


def exp_reads_token(p):
    df = _by_neuron(token_rels("READS", p["token"], p.get("model")), "weight", max, ("via",))
    return df.sort_values(["weight", "neuron", "via"], ascending=[False, True, True]).head(p.get("limit", 20))


def _context_matches(nid: str, token_id: int, context: str, max_back: int = 1) -> int:
    """Nodes ``max_back`` steps back from neuron ``nid``'s root for token ``token_id`` that are ``context``."""
    nodes = KB.nodes["N2GNode"].set_index("id")
    roots = KB.rels["N2G_ROOT"]
    children = KB.rels["N2G_PREV"].groupby("src")["dst"].apply(list).to_dict()
    found = 0
    for root in roots[roots["src"] == nid]["dst"]:
        if nodes.loc[root, "token_id"] != token_id:
            continue
        frontier = [root]
        for _ in range(max_back):
            frontier = [c for f in frontier for c in children.get(f, [])]
            found += sum(nodes.loc[c, "token"] == context for c in frontier)
    return found


def exp_fires_on_token(p):
    df = token_rels("FIRES_ON", p["token"], p.get("model"))
    if p.get("min_layer") is not None:
        df = df[df["layer"] >= p["min_layer"]]
    if p.get("max_layer") is not None:
        df = df[df["layer"] <= p["max_layer"]]
    context = p.get("context")
    df = df.assign(context_matches=[_context_matches(n, t, context) if context else 0
                                    for n, t in zip(df["neuron"], df["token_id"])])
    if context:
        df = df[df["context_matches"] > 0]
    return df.sort_values(["activation", "neuron"], ascending=[False, True]).head(p.get("limit", 20))


def exp_n2g_graph(p):
    df = KB.nodes["N2GNode"]
    return df[df["neuron"] == p["neuron"]].sort_values(["depth", "id"])


def exp_neurons_filter(p):
    df = neurons().rename(columns={"explanation_score": "score"})
    bounds = [("model", "model", "=="), ("min_layer", "layer", ">="), ("max_layer", "layer", "<="),
              ("min_density", "density", ">="), ("max_density", "density", "<="),
              ("min_max_act", "max_act", ">="), ("min_score", "score", ">=")]
    for param, col, op in bounds:
        if p.get(param) is not None:
            v = p[param]
            df = df[df[col] == v] if op == "==" else df[df[col] >= v] if op == ">=" else df[df[col] <= v]
    return df.sort_values(["model", "layer", "idx"]).head(p.get("limit", 100))


def exp_explanations_containing(p):
    e = KB.nodes["Explanation"].rename(columns={"id": "explanation"})
    e = e[e["text"].str.lower().str.contains(p["phrase"].lower(), regex=False)]
    if p.get("model"):
        e = e[e["model"] == p["model"]]
    df = e.drop(columns=["model"]).merge(neurons()[["neuron", "model", "layer", "idx"]], on="neuron")
    return df.sort_values(["model", "layer", "idx", "explanation"]).head(p.get("limit", 50))


def exp_neuron_card(p):
    return neurons()[neurons()["neuron"] == p["neuron"]]


def _neuron_tokens(rel_type, p):
    df = KB.rels[rel_type].merge(KB.nodes["Token"][["id", "text"]], left_on="dst", right_on="id")
    df = df[(df["src"] == p["neuron"]) & (df["found"] == "neuron")]
    return df.rename(columns={"text": "token", "dst": "token_id"})


def exp_neuron_promotes(p):
    return _neuron_tokens("PROMOTES", p).sort_values(["logit", "token_id"], ascending=[False, True]).head(p.get("limit", 10))


def exp_neuron_suppresses(p):
    return _neuron_tokens("SUPPRESSES", p).sort_values(["logit", "token_id"]).head(p.get("limit", 10))


def exp_neuron_reads(p):
    df = _neuron_tokens("READS", p)
    return df[df["rank"] < p.get("limit", 10)].sort_values(["via", "rank", "token_id"])


def exp_neuron_explanations(p):
    e = KB.nodes["Explanation"].rename(columns={"id": "explanation"})
    e = e[e["neuron"] == p["neuron"]]
    s = KB.rels["HAS_SCORE"].merge(KB.nodes["Score"], left_on="dst", right_on="id").rename(
        columns={"src": "explanation", "method": "score_method", "value": "score"})
    df = e.merge(s[["explanation", "score_method", "split", "scorer", "score"]], on="explanation", how="left")
    return df.sort_values(["explanation", "score_method", "split", "scorer"])


def exp_top_records(p):
    r = KB.rels["ACTIVATES_ON"].merge(KB.nodes["Snippet"], left_on="dst", right_on="id")
    r = r[(r["src"] == p["neuron"]) & (r["kind"] == p.get("kind", "top"))]
    r = r.rename(columns={"dst": "snippet", "max": "max_act"})
    return r.sort_values(["rank", "snippet"]).head(p.get("limit", 10))


def exp_similar_neurons(p):
    me = KB.neuron(p["neuron"])
    s = KB.rels["SIMILAR_TO"][lambda d: d["src"] == p["neuron"]].merge(neurons(), left_on="dst", right_on="neuron")
    if p.get("method"):
        s = s[s["method"] == p["method"]]
    if not p.get("same_layer"):
        s = s[(s["layer"] != me["layer"]) | (s["model"] != me["model"])]
    return s.sort_values(["score", "neuron", "method"], ascending=[False, True, True]).head(p.get("limit", 20))


def exp_match_chain(p):
    m = KB.rels["MATCHES"]
    if p.get("method"):
        m = m[m["method"] == p["method"]]
    if p.get("run"):
        m = m[m["run"] == p["run"]]
    hops = min(p.get("hops", 4), 8)
    best: dict[tuple, int] = {}  # (from, to, method, run) -> fewest hops
    frontier = {p["neuron"]}
    for step in range(1, hops + 1):
        edges = m[m["src"].isin(frontier)]
        for e in edges.itertuples():
            key = (e.src, e.dst, e.method, e.run)
            best.setdefault(key, step)
        frontier = set(edges["dst"])
    rows = [{"matched_from": k[0], "neuron": k[1], "method": k[2], "run": k[3], "hops": h} for k, h in best.items()]
    df = pd.DataFrame(rows, columns=["matched_from", "neuron", "method", "run", "hops"])
    df = df.merge(m.rename(columns={"src": "matched_from", "dst": "neuron"}), on=["matched_from", "neuron", "method", "run"])
    df = df.merge(neurons()[["neuron", "layer", "idx"]], on="neuron")
    return df.sort_values(["hops", "matched_from", "neuron", "method", "run"])


# (query, params, columns compared). Every packaged query needs at least one case here.
CASES = [
    ("models", {}, ["model", "kind", "n_layers", "d_mlp", "tokenizer", "neurons"]),
    ("promotes_token", {"token": " dog"}, ["neuron", "model", "layer", "idx", "logit", "rank", "token_rank"]),
    ("promotes_token", {"token": " dog", "model": "beta", "limit": 3}, ["neuron", "logit"]),
    ("promotes_token", {"token": " dog", "model": None}, ["neuron", "logit"]),
    ("suppresses_token", {"token": " dog"}, ["neuron", "logit", "rank", "token_rank"]),
    ("suppresses_token", {"token": " dog", "model": "alpha", "limit": 4}, ["neuron", "logit"]),
    ("reads_token", {"token": " dog"}, ["neuron", "via", "weight", "rank", "token_rank"]),
    ("fires_on_token", {"token": " dog"}, ["neuron", "activation", "n2g_f1"]),
    ("fires_on_token", {"token": " dog", "context": " hot"}, ["neuron", "activation", "context_matches"]),
    ("fires_on_token", {"token": " dog", "context": " the", "model": "alpha"}, ["neuron", "context_matches"]),
    ("fires_on_token", {"token": " dog", "context": " sun"}, ["neuron"]),  # two back: not "right before"
    ("fires_on_token", {"token": " dog", "context": " rain"}, ["neuron"]),
    ("fires_on_token", {"token": " dog", "context": "*"}, ["neuron", "context_matches"]),  # the wildcard
    ("fires_on_token", {"token": " dog", "context": "no such token"}, ["neuron"]),
    ("fires_on_token", {"token": " dog", "min_layer": 1, "max_layer": 1}, ["neuron", "layer", "activation"]),
    ("n2g_graph", {"neuron": "alpha/0/0"}, ["id", "token", "token_id", "activation", "importance", "is_end", "depth"]),
    ("n2g_graph", {"neuron": "alpha/1/0"}, ["id", "token", "depth"]),
    ("neurons_filter", {}, ["neuron", "density", "max_act", "score"]),
    ("neurons_filter", {"model": "alpha", "min_layer": 1, "max_layer": 2, "min_density": 0.1, "limit": 5}, ["neuron"]),
    ("neurons_filter", {"min_max_act": 5.0, "max_density": 0.3, "min_score": 0.25}, ["neuron", "score"]),
    ("explanations_containing", {"phrase": "DOG"}, ["neuron", "model", "layer", "idx", "text", "explanation"]),
    ("explanations_containing", {"phrase": 'word "the"', "model": "beta"}, ["neuron", "text"]),
    ("neuron_card", {"neuron": "alpha/1/2"}, ["neuron", "model", "layer", "idx", "kind", "max_act", "min_act",
                                              "mean_act", "var_act", "density", "n_tokens", "n2g_precision",
                                              "n2g_recall", "n2g_f1", "explanation", "explanation_score"]),
    ("neuron_card", {"neuron": "alpha/9/9"}, ["neuron"]),
    ("neuron_promotes", {"neuron": "alpha/1/2"}, ["rank", "token", "logit", "token_id"]),
    ("neuron_promotes", {"neuron": "beta/2/5", "limit": 2}, ["token", "logit"]),
    ("neuron_suppresses", {"neuron": "alpha/1/2"}, ["rank", "token", "logit", "token_id"]),
    ("neuron_reads", {"neuron": "alpha/1/2", "limit": 2}, ["via", "rank", "token", "weight"]),
    ("neuron_explanations", {"neuron": "alpha/0/0"}, ["explanation", "explainer", "method", "text", "score_method",
                                                      "split", "scorer", "score"]),
    ("neuron_explanations", {"neuron": "alpha/0/1"}, ["explanation", "score_method", "score"]),
    ("top_records", {"neuron": "alpha/0/0"}, ["rank", "max_act", "position", "snippet", "tokens", "activations", "text"]),
    ("top_records", {"neuron": "beta/1/1", "kind": "random", "limit": 1}, ["rank", "snippet", "activations"]),
    ("similar_neurons", {"neuron": "alpha/0/0"}, ["neuron", "layer", "method", "score"]),
    ("similar_neurons", {"neuron": "alpha/2/3", "method": "output_weights", "same_layer": True}, ["neuron", "score"]),
    ("similar_neurons", {"neuron": "beta/1/4", "limit": 2}, ["neuron", "score"]),
    ("match_chain", {"neuron": "alpha/0/0"}, ["hops", "matched_from", "neuron", "layer", "similarity", "method", "run"]),
    ("match_chain", {"neuron": "alpha/0/0", "method": "hungarian-in", "hops": 2}, ["hops", "matched_from", "neuron"]),
    ("match_chain", {"neuron": "alpha/1/3", "method": "hungarian-out", "run": "alpha-layers", "hops": 8},
     ["hops", "matched_from", "neuron", "similarity"]),
    ("match_chain", {"neuron": "alpha/0/2", "hops": 1}, ["hops", "neuron", "run"]),
]


def _same(got, want) -> bool:
    got, want = output.plain(got), output.plain(want)
    if isinstance(want, float) or isinstance(got, float):
        if got is None or want is None:
            return got is None and want is None
        # FLOAT[] lists and DOUBLE values may come back through float32 on some engines.
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    return got == want


@pytest.mark.parametrize("name,params,columns", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_query_returns_expected_rows(kb_store, name, params, columns):
    expected = globals()[f"exp_{name}"](params)
    got = queries.run(kb_store, name, params)
    missing = [c for c in columns if c not in got.columns]
    assert not missing, f"{name} returns no column(s) {missing}: {list(got.columns)}"
    got_rows = [[r[c] for c in columns] for r in output.records(got)]
    want_rows = [[r[c] for c in columns] for r in output.records(expected[columns])]
    assert len(got_rows) == len(want_rows), f"{name}{params}: {len(got_rows)} rows, expected {len(want_rows)}"
    for i, (g, w) in enumerate(zip(got_rows, want_rows)):
        assert all(_same(a, b) for a, b in zip(g, w)), f"{name}{params} row {i}: got {g}, expected {w}"


@pytest.mark.parametrize("engine", ENGINES)
def test_fires_on_token_reads_the_context_in_the_firing_tokens_tokenizer(engine, tmp_path, request):
    """TokenText spells tokens of every tokenizer: a context text that another tokenizer spells
    with another id, or with the same one, must not change which trie nodes count."""
    from kb.ids import token_id
    from kbdata import VOCAB

    store = open_store(_store_url(engine, tmp_path, request), create=True)
    try:
        build_small_kb(store)
        hot, the = VOCAB.index(" hot"), VOCAB.index(" the")
        # "other" spells every text as the KB's tokenizer does (same ids: a context counted twice
        # if the tokenizer were ignored); "swap" spells " the" with the id of " hot".
        other = pd.DataFrame({"id": [token_id("tok-other", i) for i in range(len(VOCAB))], "tokenizer": "tok-other",
                              "token_id": range(len(VOCAB)), "text": VOCAB})
        swap = pd.DataFrame({"id": [token_id("tok-swap", hot)], "tokenizer": "tok-swap", "token_id": [hot],
                             "text": [" the"]})
        for tokens in (other, swap):
            store.upsert_nodes("Token", tokens)
            store.upsert_rels("SPELLS", pd.DataFrame({"src": tokens["text"], "dst": tokens["id"]}))
        assert the != hot
        for params in ({"token": " dog", "context": " the"}, {"token": " dog", "context": " hot"}):
            got = queries.run(store, "fires_on_token", params)
            want = exp_fires_on_token(params)
            assert len(want) and (got[["neuron", "context_matches"]].values.tolist()
                                  == want[["neuron", "context_matches"]].values.tolist()), params
    finally:
        store.close()


def test_cases_are_not_vacuous():
    """Most cases must expect rows, so an always-empty query cannot pass."""
    empty = [(n, p) for n, p, _ in CASES if globals()[f"exp_{n}"](p).empty]
    assert sorted(n for n, _ in empty) == ["fires_on_token"] * 3 + ["neuron_card"], empty


def test_every_query_has_a_case():
    assert {q.name for q in queries.all_queries()} == {name for name, _, _ in CASES}


def test_headers_document_every_placeholder_and_nothing_else():
    problems = [p for q in queries.all_queries() for p in q.problems()]
    assert problems == []


def test_named_queries_only_read(kb_store):
    """Proven by running them, not by the guard: every case of every query, then a full dump
    and the index list compared with what they were."""
    from dump import dump, indexes

    before = (dump(kb_store), indexes(kb_store))
    for name, params, _ in CASES:
        queries.run(kb_store, name, params)
    assert (dump(kb_store), indexes(kb_store)) == before


def test_values_travel_as_parameters(kb_store):
    # Quotes, backslashes, $ and comment markers are data, not Cypher.
    for token in ["x' OR 1=1 //", 'a"b', "back\\slash", "$token", "it's"]:
        assert queries.run(kb_store, "promotes_token", {"token": token}).empty
    texts = queries.run(kb_store, "explanations_containing", {"phrase": '"the"'})["text"]
    assert len(texts) and all('"the"' in t for t in texts)


# -- parsing, binding and coercion ---------------------------------------------------------

SAMPLE = """\
// Sample query used by the tests.
// Second line of the description.
// @param token  the token (required)
// @param limit  rows (default: 20)
// @param score  lowest score (float, default: null = any)
// @param flag   a switch (default: false)
// @param label  a name (default: "x = y")
MATCH (t:Token) WHERE t.text = $token AND ($score IS NULL OR t.s >= $score) AND ($flag OR t.label = $label)
// a comment mentioning $nothing
RETURN t.text AS text, '$not_a_param' AS s LIMIT $limit
"""


def sample() -> NamedQuery:
    return NamedQuery.parse("sample", SAMPLE)


def test_parse_header():
    q = sample()
    assert q.description == "Sample query used by the tests. Second line of the description."
    assert q.params == {"token": REQUIRED, "limit": 20, "score": None, "flag": False, "label": "x = y"}
    assert q.param_types == {"token": "string", "limit": "int", "score": "float", "flag": "bool", "label": "string"}
    assert q.param_docs["score"] == "lowest score"
    assert q.problems() == []
    assert q.signature() == 'token (required), limit=20, score=null, flag=false, label="x = y"'


def test_placeholders_ignore_strings_and_comments():
    assert queries.placeholders(SAMPLE) == ["token", "score", "flag", "label", "limit"]


def test_text_checks_read_each_text_once_and_hand_out_copies():
    """kb.cypher reads a query's tokens once per text (the checks cost more than a point lookup);
    what it hands out must not share state between calls."""
    first = cypher.placeholders(SAMPLE)
    first.append("stray")
    assert cypher.placeholders(SAMPLE) == ["token", "score", "flag", "label", "limit"]
    cypher.write_clause.cache_clear()
    for _ in range(3):
        assert cypher.write_clause("MATCH (n) DETACH DELETE n") == "DETACH"
        assert cypher.write_clause("MATCH (n) RETURN n.delete") is None
    assert cypher.write_clause.cache_info().hits == 4


def test_problems_name_undocumented_and_stray_params():
    q = NamedQuery.parse("bad", "// Bad.\n// @param gone  not used (default: 1)\nMATCH (n:Neuron {id: $id}) RETURN n.id")
    assert q.params == {"id": REQUIRED}
    assert q.problems() == ["bad: $id is used but has no @param line",
                            "bad: @param gone documents no $placeholder of the query"]


@pytest.mark.parametrize("given,expected", [
    ({"token": " dog"}, {"token": " dog", "limit": 20, "score": None, "flag": False, "label": "x = y"}),
    ({"token": "42", "limit": "5", "score": "0.5", "flag": "true"}, {"token": "42", "limit": 5, "score": 0.5, "flag": True}),
    ({"token": "null", "score": "null", "flag": "no"}, {"token": "null", "score": None, "flag": False}),
    ({"token": "t", "limit": 7, "score": 1, "flag": True}, {"limit": 7, "score": 1.0, "flag": True}),
    ({"token": "t", "score": ""}, {"score": None}),
])
def test_bind_merges_defaults_and_coerces(given, expected):
    bound = sample().bind(given)
    assert {k: bound[k] for k in expected} == expected
    assert type(bound["score"]) in (float, type(None))
    assert set(bound) == set(sample().params)


@pytest.mark.parametrize("given,words", [
    ({"token": "t", "limit": "many"}, ["'limit'", "expected an integer, got 'many'", "token (required), limit=20"]),
    ({"token": "t", "score": "high"}, ["'score'", "expected a number, got 'high'"]),
    ({"token": "t", "flag": "maybe"}, ["'flag'", "expected true or false, got 'maybe'"]),
    ({"token": "t", "limit": True}, ["'limit'", "expected an integer, got True"]),
    ({"token": "t", "limit": None}, ["'limit'", "expected a value, got null"]),
    ({"token": "t", "limit": "null"}, ["'limit'", "expected an integer, got 'null'"]),
    ({"token": None}, ["'token'", "expected a value, got null"]),
    ({"token": 5}, ["'token'", "expected text, got 5"]),
    ({}, ["needs parameter 'token': the token", "its parameters: token (required)"]),
    ({"token": "t", "limt": "3"}, ["no parameter 'limt'", "did you mean 'limit'?", "its parameters:"]),
])
def test_bind_refuses_bad_values(given, words):
    with pytest.raises(ParameterError) as e:
        sample().bind(given)
    for w in words:
        assert w in str(e.value)


def test_run_refuses_missing_param_before_touching_the_store():
    with pytest.raises(ParameterError) as e:
        queries.run(None, "promotes_token", {"limit": 3})
    assert e.value.message == "query promotes_token needs parameter 'token': the token text, leading space included, e.g. \" dog\""
    assert e.value.hint == "its parameters: token (required), model=null, limit=20"


def test_unknown_query_suggests_close_names():
    with pytest.raises(UnknownQuery) as e:
        queries.get("promote_token")
    assert e.value.message == "no named query 'promote_token'; did you mean promotes_token?"
    assert e.value.hint == "`nkb queries` lists them"
    with pytest.raises(UnknownQuery) as e:
        queries.get("match_chains")
    assert e.value.message == "no named query 'match_chains'; did you mean match_chain?"
    with pytest.raises(UnknownQuery) as e:
        queries.get("neuron")
    assert e.value.message == "no named query 'neuron'; did you mean one of neuron_card, neuron_reads, neurons_filter?"
    with pytest.raises(UnknownQuery) as e:
        queries.get("zzz")
    assert e.value.message == "no named query 'zzz'"


def test_parse_value_for_adhoc_cypher():
    assert [queries.parse_value(v) for v in ["42", "1.5", "true", "null", '"42"', "[1, 2]", " dog", "it's"]] == \
        [42, 1.5, True, None, "42", [1, 2], " dog", "it's"]


def test_with_nulls_writes_only_the_null_literal():
    text = "// $model in a comment\nMATCH (n:Neuron) WHERE (n.model = $model OR $model IS NULL) AND n.x <> '$model' AND n.y = $models RETURN n"
    assert queries.with_nulls(text, frozenset({"model"})) == (
        "// $model in a comment\nMATCH (n:Neuron) WHERE (n.model = null OR null IS NULL) AND n.x <> '$model' AND n.y = $models RETURN n")
    assert queries.with_nulls(text, frozenset()) is text


def test_null_and_value_runs_share_no_state(kb_store):
    # The same query with a parameter null, then set, then null again: each answers for itself.
    everyone = queries.run(kb_store, "promotes_token", {"token": " dog"})
    beta = queries.run(kb_store, "promotes_token", {"token": " dog", "model": "beta"})
    again = queries.run(kb_store, "promotes_token", {"token": " dog", "model": None})
    assert set(beta["neuron"]) < set(everyone["neuron"]) and list(again["neuron"]) == list(everyone["neuron"])
    assert set(beta["model"]) == {"beta"} and set(everyone["model"]) == {"alpha", "beta"}
