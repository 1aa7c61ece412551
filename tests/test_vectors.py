"""Vectors, FAISS indexes, similarity and token edges, Hungarian matching, and their commands.

Every stored result is compared with a slow, obvious computation here: numpy brute force
for nearest neighbours and token tops, a permutation search for matchings, and the tiny
model's own weight tensors read straight from transformers (not through the adapter).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from ingest.pipeline import IngestConfig, ingest
from kb import queries, vectors
from kb.errors import NkbError
from kb.match import match_vectors, solve_sparse
from kb.stores import open_store
from kb.vectors import VectorsMismatch, VectorsMissing
from tinymodels import save_tiny_model

SMALL = dict(tokens=2048, window=32, batch_size=8, top_k=5, n_random=3, n_quantiles=3, per_quantile=1, lmhead_k=4,
             token_k=5, similar_k=4, connect_k=3, embed_activation_tokens=256)
STAGES = ["lmhead", "activations", "embed", "tokens", "similar", "match"]


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n, d, seed, clusters=50):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return vectors.normalise(centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d)))


# -- FAISS indexes ----------------------------------------------------------------------------

def test_exact_knn_equals_brute_force():
    x = clustered(3000, 24, seed=1)
    q = clustered(50, 24, seed=2)
    index = vectors.build_index(x, "auto")
    assert vectors.choose_index(len(x)) == "flat"
    scores, nn = index.search(q, 10)
    brute = q.astype(np.float64) @ x.astype(np.float64).T
    want = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert np.allclose(scores, np.take_along_axis(brute, want, 1), atol=1e-5)
    assert (np.take_along_axis(brute, nn, 1) >= np.take_along_axis(brute, want, 1)[:, -1:] - 1e-5).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_at_10(kind):
    # Queries from the same distribution as the data (held-out points), as neuron queries are.
    both = clustered(10200, 32, seed=3)
    x, q = both[:10000], both[10000:]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    _, got = vectors.build_index(x, kind).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall >= 0.95, f"{kind} recall@10 = {recall:.3f}"
    assert vectors.choose_index(vectors.EXACT_LIMIT + 1) == "ivf"


def test_search_restricted_to_rows_on_every_index_type():
    x = clustered(5000, 16, seed=5)
    ids = np.arange(0, 5000, 7)
    for kind in ("flat", "ivf", "hnsw"):
        index = vectors.build_index(x, kind)
        _, nn = index.search(x[:3], 5, params=vectors.search_params(index, ids))
        assert set(nn.reshape(-1)) <= set(ids), kind


def _rows(model, layer, n):
    ids = [f"{model}/{layer}/{i}" for i in range(n)]
    return pd.DataFrame({"key": ids, "neuron": ids, "layer": layer})


def test_incremental_update_persistence_and_mismatch(embedded_store):
    store = embedded_store
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    vectors.save(store, "m", "weights_out", _rows("m", 0, 40), a)
    first = vectors.open_index(store, "m", "weights_out")
    assert first.action == "built" and first.index.ntotal == 40
    vectors.save(store, "m", "weights_out", _rows("m", 1, 40), b)  # neurons added: appended
    grown = vectors.open_index(store, "m", "weights_out")
    assert grown.action == "added 40" and grown.index.ntotal == 80
    full = unit(np.concatenate([a, b]))
    s, nn = grown.index.search(full[:5].astype(np.float32), 3)
    assert (nn[:, 0] == np.arange(5)).all() and np.allclose(s[:, 0], 1, atol=1e-5)
    # Persistence: a second open loads the file as it is, with the same answers.
    again = vectors.open_index(store, "m", "weights_out")
    assert again.action == "loaded" and (again.index.search(full[:5].astype(np.float32), 3)[1] == nn).all()
    # Replacing rows starts a new generation: the index is rebuilt, the override type sticks.
    vectors.save(store, "m", "weights_out", _rows("m", 0, 40), -a)
    rebuilt = vectors.open_index(store, "m", "weights_out", index_type="hnsw")
    assert rebuilt.action == "rebuilt" and rebuilt.index_type == "hnsw"
    assert vectors.open_index(store, "m", "weights_out").index_type == "hnsw"
    # The store records another generation than the files: refused, with the fix.
    key = "vectors/m/weights_out"
    good = store.get_meta(key)
    store.set_meta(key, json.dumps({**json.loads(good), "generation": "0" * 32}))
    with pytest.raises(VectorsMismatch, match="do not match the knowledge base.*nkb index m --drop"):
        vectors.open_index(store, "m", "weights_out")
    store.set_meta(key, good)
    # An index file left from another generation is detected and rebuilt.
    folder = vectors.files.vectors_dir(store, "m")
    meta = json.loads((folder / "weights_out.faiss.json").read_text())
    (folder / "weights_out.faiss.json").write_text(json.dumps({**meta, "generation": "stale"}))
    assert vectors.open_index(store, "m", "weights_out").action == "rebuilt"
    with pytest.raises(VectorsMissing, match="--stages embed"):
        vectors.load(store, "m", "weights_in")
    assert vectors.drop(store, "m") == ["weights_out"]
    with pytest.raises(VectorsMissing):
        vectors.load(store, "m", "weights_out")


def test_loaded_vectors_and_indexes_are_reused_until_their_files_change(embedded_store):
    store = embedded_store
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 8))
    vectors.save(store, "c", "weights_out", _rows("c", 0, 30), a)
    first, again = vectors.load(store, "c", "weights_out"), vectors.load(store, "c", "weights_out")
    assert again is first and not first.vectors.flags.writeable  # shared, so nobody may change it
    assert list(first.rows_of("c/0/7")) == [7] and len(first.rows_of("c/9/9")) == 0
    index = vectors.open_index(store, "c", "weights_out").index
    assert vectors.open_index(store, "c", "weights_out").index is index
    # Another writer replaces the files (here: the same process, through the files only).
    folder = vectors.files.vectors_dir(store, "c")
    import faiss

    other = faiss.IndexFlatIP(8)
    other.add(np.ascontiguousarray(unit(a), dtype=np.float32))
    faiss.write_index(other, str(folder / "weights_out.faiss.tmp"))
    os.replace(folder / "weights_out.faiss.tmp", folder / "weights_out.faiss")
    reread = vectors.open_index(store, "c", "weights_out")
    assert reread.index is not index and reread.action == "loaded"
    vectors.save(store, "c", "weights_out", _rows("c", 1, 30), rng.normal(size=(30, 8)))
    grown = vectors.load(store, "c", "weights_out")
    assert grown is not first and len(grown) == 60 and len(first) == 30
    assert vectors.open_index(store, "c", "weights_out").index.ntotal == 60


# -- Hungarian --------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(2, 2), (4, 4), (6, 6), (7, 7), (3, 5), (5, 3)])
def test_hungarian_equals_permutation_search(n, m):
    rng = np.random.default_rng(n * 10 + m)
    a, b = vectors.normalise(rng.normal(size=(n, 6))), vectors.normalise(rng.normal(size=(m, 6)))
    sim = a.astype(np.float64) @ b.astype(np.float64).T
    small, big = min(n, m), max(n, m)
    best = max(sum(sim[i, p[i]] if n <= m else sim[p[i], i] for i in range(small))
               for p in itertools.permutations(range(big), small))
    sparse = match_vectors(a, b, solver="sparse", k=big)
    assert sparse["similarity"].sum() == pytest.approx(best, abs=1e-5)
    assert sparse["a"].is_unique and sparse["b"].is_unique and len(sparse) == small
    if n == m:
        assert match_vectors(a, b, solver="dense")["similarity"].sum() == pytest.approx(best, abs=1e-5)
    else:
        with pytest.raises(NkbError, match="same width"):
            match_vectors(a, b, solver="dense")


def test_sparse_and_dense_agree_on_a_planted_matching():
    rng = np.random.default_rng(7)
    a = vectors.normalise(rng.normal(size=(400, 32)))
    perm = rng.permutation(400)
    b = vectors.normalise(a[perm] + 0.05 * rng.normal(size=(400, 32)))  # unit rows: 0.18 a coordinate
    dense = match_vectors(a, b, solver="dense")
    rows, cols, sims = solve_sparse(a, b, k=8)
    assert sims.sum() == pytest.approx(dense["similarity"].sum(), rel=1e-6)
    assert (cols == dense["b"].to_numpy()).all() and (perm[cols] == rows).all()


# -- the stages on a tiny model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama", seed=0)
    url = str(tmp_path_factory.mktemp("kb") / "kb")
    with open_store(url, create=True) as store:
        ingest(store, IngestConfig(model=str(folder), name="tiny", stages=STAGES, **SMALL))
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(folder).eval()
    return url, folder, model


def _weights(model):
    """Straight from the transformers modules: [layer] -> down-projection columns, gate rows (gain folded), and
    the output directions through the final norm's gain; plus the unembedding."""
    layers = model.model.layers
    out = [lay.mlp.down_proj.weight.detach().double().T.numpy() for lay in layers]
    gate = [(lay.mlp.gate_proj.weight.detach().double() * lay.post_attention_layernorm.weight.detach().double()).numpy()
            for lay in layers]
    up = [(lay.mlp.up_proj.weight.detach().double() * lay.post_attention_layernorm.weight.detach().double()).numpy()
          for lay in layers]
    folded = [o * model.model.norm.weight.detach().double().numpy() for o in out]
    return out, gate, up, folded, model.lm_head.weight.detach().double().numpy()


def test_weight_vectors_are_the_normalised_weights(tiny):
    url, _, model = tiny
    out, gate, *_ = _weights(model)
    with open_store(url, read_only=True) as store:
        for kind, want in (("weights_out", out), ("weights_in", gate)):
            vset = vectors.load(store, "tiny", kind)
            for layer in (0, 1):
                rows = vset.rows["layer"] == layer
                idx = vset.rows.loc[rows, "neuron"].str.rsplit("/", n=1).str[1].astype(int).to_numpy()
                assert np.allclose(vset.vectors[rows.to_numpy()], unit(want[layer])[idx], atol=1e-5)


def test_reverse_token_edges_equal_a_brute_force_matmul(tiny):
    url, _, model = tiny
    _, gate, up, folded, unembed = _weights(model)
    k = SMALL["token_k"]
    ids = np.array([f"tiny/{layer}/{i}" for layer in (0, 1) for i in range(folded[0].shape[0])])
    with open_store(url, read_only=True) as store:
        tok = store.cypher("MATCH (t:Token) RETURN t.id AS id, t.token_id AS tid")
        name = dict(zip(tok["tid"], tok["id"]))
        for rel, w, sign, via in (("PROMOTES", folded, 1, None), ("SUPPRESSES", folded, -1, None),
                                  ("READS", gate, 1, "gate"), ("READS", up, 1, "up")):
            logits = unembed @ np.concatenate(w).T  # [vocab, neurons]
            value = "weight" if rel == "READS" else "logit"
            got = store.cypher(f"MATCH (n:Neuron)-[r:{rel}]->(t:Token) WHERE r.found = 'token' "
                               + ("AND r.via = $via " if via else "")
                               + f"RETURN n.id AS neuron, t.token_id AS tid, r.{value} AS v, r.rank AS rank",
                               {"via": via} if via else {})
            assert len(got) == unembed.shape[0] * k
            for t in (0, 7, 100, 511):
                order = np.argsort(-sign * logits[t], kind="stable")[:k]
                mine = got[got["tid"] == t].sort_values("rank")
                assert mine["rank"].tolist() == list(range(k))
                assert np.allclose(mine["v"], logits[t][order], atol=1e-4), (rel, t)
                assert set(mine["neuron"]) == set(ids[order]) or np.allclose(
                    sorted(logits[t][[int(n.split('/')[1]) * 96 + int(n.split('/')[2]) for n in mine["neuron"]]]),
                    sorted(logits[t][order]), atol=1e-5)
        # promotes_token is complete: a token in no neuron's own list still gets its k neurons.
        listed = set(store.cypher("MATCH (:Neuron)-[p:PROMOTES]->(t:Token) WHERE p.found = 'neuron' "
                                  "RETURN DISTINCT t.token_id AS tid")["tid"])
        t = next(t for t in range(unembed.shape[0]) if t not in listed)
        text = store.cypher("MATCH (t:Token {id: $id}) RETURN t.text AS x", {"id": name[t]})["x"].iloc[0]
        if (tok["tid"].map(lambda i: i) >= 0).all():
            rows = vectors.token_neurons(store, text, "promotes", model="tiny", k=k)
            want = np.sort(np.concatenate(folded) @ unembed[t])[::-1][:k]
            same_text = store.cypher("MATCH (t:Token {text: $x}) RETURN count(t) AS n", {"x": text})["n"].iloc[0]
            if same_text == 1:
                assert np.allclose(rows["logit"], want, atol=1e-4) and rows["rank"].isna().all()


def test_similar_and_connects_edges_equal_brute_force(tiny):
    url, _, model = tiny
    out, gate, *_ = _weights(model)
    x = unit(np.concatenate(out))
    ids = np.array([f"tiny/{layer}/{i}" for layer in (0, 1) for i in range(96)])
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    with open_store(url, read_only=True) as store:
        got = store.cypher("MATCH (a:Neuron)-[s:SIMILAR_TO]->(b:Neuron) WHERE s.method = 'weights_out' "
                           "RETURN a.id AS src, b.id AS dst, s.score AS score, s.rank AS rank")
        assert len(got) == len(ids) * SMALL["similar_k"]
        for i in (0, 50, 150):
            want = np.sort(sim[i])[::-1][:SMALL["similar_k"]]
            mine = got[got["src"] == ids[i]].sort_values("rank")
            assert np.allclose(mine["score"], want, atol=1e-5)
        # CONNECTS_TO: layer 0 -> layer 1 virtual weights, top |w| per source neuron.
        vw = out[0] @ gate[1].T  # [96, 96]
        conn = store.cypher("MATCH (a:Neuron)-[c:CONNECTS_TO]->(b:Neuron) RETURN a.id AS src, b.idx AS j, "
                            "c.weight AS w, c.rank AS rank")
        assert len(conn) == 96 * SMALL["connect_k"]
        for i in (0, 33, 95):
            mine = conn[conn["src"] == f"tiny/0/{i}"].sort_values("rank")
            assert np.allclose(mine["w"], vw[i][mine["j"]], atol=1e-5)
            assert np.allclose(np.abs(mine["w"]), np.sort(np.abs(vw[i]))[::-1][:SMALL["connect_k"]], atol=1e-5)
        # The library's similar() answers the same as the edges (live FAISS search).
        df = vectors.similar(store, "tiny/0/50", layers="all", k=SMALL["similar_k"])
        assert np.allclose(df["score"], np.sort(sim[50])[::-1][:SMALL["similar_k"]], atol=1e-5)
        assert (vectors.similar(store, "tiny/0/50", layers="other", k=5)["layer"] == 1).all()


def test_match_stage_and_library_are_optimal(tiny):
    url, _, model = tiny
    out, *_ = _weights(model)
    from scipy.optimize import linear_sum_assignment

    sim = unit(out[0]) @ unit(out[1]).T
    r, c = linear_sum_assignment(-sim)
    with open_store(url, read_only=True) as store:
        got = store.cypher("MATCH (a:Neuron)-[m:MATCHES]->(b:Neuron) RETURN a.idx AS i, b.idx AS j, "
                           "m.similarity AS s, m.run AS run, m.method AS method")
        assert len(got) == 96 and set(got["run"]) == {"tiny/0->tiny/1"} and set(got["method"]) == {"weights_out"}
        assert got["s"].sum() == pytest.approx(sim[r, c].sum(), abs=1e-4)
        assert np.allclose(got["s"], sim[got["i"], got["j"]], atol=1e-5)
        chain = queries.run(store, "match_chain", {"neuron": "tiny/0/5"})
        assert len(chain) == 1 and chain["layer"].iloc[0] == 1
        from kb.match import match

        result = match(store, "tiny", layers="0,1", write=False)
        assert result.summary["mean_similarity"].iloc[0] == pytest.approx(sim[r, c].mean(), abs=1e-5)
        acts = match(store, "tiny", layers="0,1", method="activations", solver="sparse", write=False)
        assert len(acts.edges) == 96 and acts.edges["dst"].is_unique and acts.edges["similarity"].between(-1, 1).all()


def test_fires_matches_a_forward_pass(tiny):
    url, folder, model = tiny
    from ingest.fires import fires

    text = "The dog barked at the cat"
    with open_store(url, read_only=True) as store:
        df = fires(store, text, k=5)
        prefix = store.cypher("MATCH (m:Model) RETURN m.window_prefix AS p")["p"].iloc[0] or []
        stats = store.cypher("MATCH (n:Neuron) RETURN n.id AS id, n.max_act AS max_act")
    tok = __import__("transformers").AutoTokenizer.from_pretrained(folder)
    ids = list(prefix) + tok(text, add_special_tokens=False)["input_ids"]
    seen = {}
    hooks = [model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
        lambda m, a, i=i: seen.__setitem__(i, a[0][0, len(prefix):].max(dim=0).values.double().numpy())) for i in (0, 1)]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    max_act = dict(zip(stats["id"], stats["max_act"]))
    ratio = {f"tiny/{layer}/{i}": seen[layer][i] / max_act[f"tiny/{layer}/{i}"] for layer in (0, 1) for i in range(96)
             if max_act[f"tiny/{layer}/{i}"] > 0}
    want = sorted(ratio.values(), reverse=True)[:5]
    assert np.allclose(df["ratio"], want, rtol=1e-4)


# -- explanations and the commands ------------------------------------------------------------

def nkb(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "kb.cli", *args], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def explained(tiny):
    url, *_ = tiny
    texts = {"tiny/0/1": "dogs, puppies and other pets", "tiny/0/2": "Python source code and functions",
             "tiny/1/3": "numbers and arithmetic", "tiny/1/4": "cats and kittens"}
    with open_store(url) as store:
        store.upsert_nodes("Explanation", pd.DataFrame({"id": [f"{n}/test/manual" for n in texts], "neuron": list(texts),
                                                         "model": "tiny", "text": list(texts.values())}))
        store.upsert_rels("EXPLAINED_BY", pd.DataFrame({"src": list(texts), "dst": [f"{n}/test/manual" for n in texts]}))
        vset = vectors.embed_explanations(store, "tiny")
        assert len(vset) == 4
        assert vectors.embed_explanations(store, "tiny").generation == vset.generation  # nothing new: unchanged
    return url, texts


def test_search_by_meaning_ranks_the_right_explanation_first(explained):
    url, texts = explained
    out = nkb("search", "a small dog", "--store", url, "--format", "json")
    rows = json.loads(out.stdout)
    assert rows[0]["neuron"] == "tiny/0/1" and len(rows) == 4
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    with open_store(url, read_only=True) as store:  # in-process: the text model loads once
        assert vectors.search(store, "kitten", layers="1")["neuron"].tolist() == ["tiny/1/4", "tiny/1/3"]
        assert vectors.search(store, "kitten", min_score=0.99).empty
        assert vectors.similar(store, "tiny/1/4", method="explanation", layers="all", k=1)["neuron"].tolist() == ["tiny/0/1"]


def test_commands_refuse_bad_input(explained, tiny, tmp_path):
    url, _ = explained
    cases = [
        (["similar", "tiny/5/1", "--store", url], "no neuron 'tiny/5/1'"),
        (["similar", "tiny/0/1", "--k", "0", "--store", url], "k must be a positive integer"),
        (["match", "tiny", "--layers", "0,1", "--to", "nope", "--store", url], "no model 'nope'"),
        (["match", "tiny", "--store", url], "say which layers"),
        (["search", "dogs", "--k", "-3", "--store", url], "k must be a positive integer"),
    ]
    for args, message in cases:
        proc = nkb(*args, ok=False)
        assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    # A second model of another shape; its activations were never embedded.
    other = save_tiny_model(tmp_path / "tiny-gpt2", "gpt2", seed=1)
    with open_store(url) as store:
        ingest(store, IngestConfig(model=str(other), name="other", stages=["embed"], tokens=2048, window=32))
    before = (tmp_path / "x").exists()
    for args, message in [(["match", "tiny", "--to", "other", "--store", url], "differ in shape"),
                          (["similar", "other/0/1", "--method", "activations", "--store", url],
                           "no activations vectors of other were built (run: nkb ingest other --stages embed "
                           "--embed-activation-tokens")]:
        proc = nkb(*args, ok=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    # The index files of a model do not match the store: said, and nothing written.
    with open_store(url) as store:
        good = store.get_meta("vectors/other/weights_out")
        store.set_meta("vectors/other/weights_out", json.dumps({"generation": "x" * 32, "n": 1}))
    proc = nkb("similar", "other/0/1", "--store", url, ok=False)
    assert "do not match the knowledge base" in proc.stderr and "nkb index other --drop" in proc.stderr
    with open_store(url) as store:
        store.set_meta("vectors/other/weights_out", good)
    assert not before


def test_match_command_writes_edges_summary_and_plot(explained, tmp_path):
    url, _ = explained
    plot = tmp_path / "m.png"
    out = nkb("match", "tiny", "--adjacent", "--method", "weights_in", "--plot", str(plot), "--store", url,
              "--format", "json")
    summary = json.loads(out.stdout)
    assert summary[0]["run"] == "tiny/0->tiny/1" and summary[0]["matched"] == 96
    assert 0 <= summary[0]["same_top_token"] <= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open_store(url, read_only=True) as store:
        n = store.cypher("MATCH ()-[m:MATCHES]->() WHERE m.method = 'weights_in' RETURN count(m) AS n")["n"].iloc[0]
    assert n == 96
    proc = nkb("match", "tiny", "--adjacent", "--plot", str(tmp_path / "m.txt"), "--store", url, ok=False)
    assert proc.returncode == 2 and not (tmp_path / "m.txt").exists()


@pytest.mark.slow
def test_search_similar_and_fires_on_the_bundled_model(tmp_path):
    """The real SmolLM2 (two layers): similar by weights, search by meaning, fires on a text."""
    from ingest.fires import fires

    url = str(tmp_path / "kb")
    with open_store(url, create=True) as store:
        ingest(store, IngestConfig(model="smollm2-135m", layers=[28, 29], stages=["activations", "embed", "tokens"],
                                   tokens=2048, window=64, token_k=3))
        store.upsert_nodes("Explanation", pd.DataFrame({"id": ["smollm2-135m/29/808/test/manual", "smollm2-135m/28/1/test/manual"],
                                                         "neuron": ["smollm2-135m/29/808", "smollm2-135m/28/1"],
                                                         "model": "smollm2-135m",
                                                         "text": ["dogs, cats and other pets", "closing parentheses in code"]}))
        store.upsert_rels("EXPLAINED_BY", pd.DataFrame({"src": ["smollm2-135m/29/808", "smollm2-135m/28/1"],
                                                         "dst": ["smollm2-135m/29/808/test/manual", "smollm2-135m/28/1/test/manual"]}))
        vectors.embed_explanations(store, "smollm2-135m")
    with open_store(url, read_only=True) as store:
        assert vectors.search(store, "a puppy", k=1)["neuron"].tolist() == ["smollm2-135m/29/808"]
        sim = vectors.similar(store, "smollm2-135m/29/808", k=5)
        assert len(sim) == 5 and (sim["layer"] == 28).all() and sim["score"].is_monotonic_decreasing
        # ' dog' is in neuron 29/808's own top 10 (README); the token side now finds it too, ranked by logit.
        dog = vectors.token_neurons(store, " dog", model="smollm2-135m", k=3)
        assert len(dog) == 3 and dog["token_rank"].notna().all() and dog["logit"].is_monotonic_decreasing
        df = fires(store, "My dog and my cat sleep on the sofa.", k=10)
        assert len(df) == 10 and df["ratio"].is_monotonic_decreasing and (df["ratio"] > 0).all()
