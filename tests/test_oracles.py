"""What the pipeline stores equals independent, brute-force computations.

The tests read the knowledge base back with Cypher and recompute every stored row from the
model's own modules, without ingest's adapters, activation pass or LM-head decoder:

- every PROMOTES / SUPPRESSES / READS row against full logit vectors from the modules' weights,
  sorted with numpy, attached to the neuron its ``layer`` and ``idx`` name;
- every activation record by running the model on ``Model.window_prefix + Snippet.token_ids``
  (the recipe of docs/schema.md's last section: records are reproducible from the KB alone)
  and reading the input of the neuron's MLP output projection;
- every statistic, and the choice of top records, against all activations of all windows
  of the corpus, cut into windows here, independently of ``ingest.corpus``.

The fast tests run a tiny random-weight Llama; the slow one a few neurons of the real
SmolLM2-135M.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ingest.pipeline import IngestConfig, Pipeline
from kb.records import decode_activations
from kb.stores import open_store
from tinyingest import N_WINDOWS, SETTINGS, WINDOW, corpus_documents

def corpus_windows(tokenizer, documents: list[str], window: int, tokens: int) -> np.ndarray:
    """The corpus as the docs describe it: documents tokenized without special tokens, joined by
    the separator (the tiny tokenizer has no <|endoftext|>, so its EOS), cut into whole windows."""
    ids: list[int] = []
    for i, doc in enumerate(documents):
        if i:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if len(ids) >= tokens:
            break
    n = min(len(ids), tokens) // window
    return np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)


def mlp_output_projection(model, architecture: str, layer: int) -> torch.nn.Module:
    """The module whose input is the layer's neurons (docs/schema.md), found without ingest.adapters."""
    if architecture == "llama":
        return model.model.layers[layer].mlp.down_proj
    raise AssertionError(f"no oracle for {architecture}")


def neuron_inputs(model, architecture: str, layers, prefix: list[int], rows: np.ndarray,
                  batch: int = 64) -> dict[int, np.ndarray]:
    """{layer: [len(rows), window, d_mlp]}: each row run as prefix + row, the prefix dropped."""
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [mlp_output_projection(model, architecture, layer).register_forward_pre_hook(
        lambda module, args, layer=layer: seen[layer].append(args[0].float().clone())) for layer in layers]
    ids = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    ids = torch.cat([torch.tensor(prefix, dtype=torch.int64).expand(len(ids), len(prefix)), ids], 1)
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), batch):
                model(input_ids=ids[start:start + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(a)[:, len(prefix):].numpy() for layer, a in seen.items()}


# -- reading the knowledge base back ------------------------------------------------------------

def read_kb(store) -> SimpleNamespace:
    """Everything the oracles compare, straight from the store."""
    model = store.cypher("MATCH (m:Model) RETURN m.id AS id, m.source AS source, m.architecture AS arch, "
                         "m.window_prefix AS prefix, m.tokenizer AS tokenizer, m.n_layers AS n_layers, "
                         "m.d_mlp AS d_mlp").to_dict("records")
    assert len(model) == 1
    neurons = store.cypher(
        "MATCH (m:Model)-[:HAS_NEURON]->(n:Neuron) RETURN n.id AS id, n.model AS model, n.layer AS layer, "
        "n.idx AS idx, n.max_act AS max_act, n.min_act AS min_act, n.mean_act AS mean_act, n.var_act AS var_act, "
        "n.density AS density, n.n_tokens AS n_tokens, n.quantile_boundaries AS qb")
    tokens = store.cypher("MATCH (t:Token) RETURN t.id AS id, t.token_id AS token_id, t.text AS text")
    snippets = store.cypher("MATCH (s:Snippet) RETURN s.id AS id, s.token_ids AS token_ids, s.tokens AS tokens, "
                            "s.text AS text")
    rels = {}
    for rel, value in (("PROMOTES", "logit"), ("SUPPRESSES", "logit"), ("READS", "weight")):
        via = ", r.via AS via" if rel == "READS" else ""
        # The per-neuron top-k (found = 'neuron'); the tokens stage's reverse edges have their own oracle.
        rels[rel] = store.cypher(f"MATCH (n:Neuron)-[r:{rel}]->(t:Token) WHERE r.found = 'neuron' "
                                 f"RETURN n.id AS src, t.id AS dst, r.{value} AS value, r.`rank` AS `rank`{via}")
    records = store.cypher("MATCH (n:Neuron)-[r:ACTIVATES_ON]->(s:Snippet) RETURN n.id AS src, s.id AS dst, "
                           "r.kind AS kind, r.`rank` AS `rank`, r.`max` AS mx, r.position AS position, "
                           "r.activations AS activations")
    m = model[0]
    return SimpleNamespace(
        model=m, prefix=[int(t) for t in m["prefix"]],
        neurons=neurons.set_index("id", drop=False),
        token_id=dict(zip(tokens["id"], tokens["token_id"])),
        token_text=dict(zip(tokens["token_id"], tokens["text"])),
        snippets=snippets.set_index("id", drop=False), rels=rels, records=records,
    )


def where(kb, neuron_id: str) -> tuple[int, int]:
    """(layer, idx) of a stored neuron, from its properties (not from parsing its id)."""
    row = kb.neurons.loc[neuron_id]
    return int(row["layer"]), int(row["idx"])


# -- the oracles ---------------------------------------------------------------------------------

def check_neurons(kb, layers: list[int]) -> None:
    m = kb.model
    got = sorted(zip(kb.neurons["layer"], kb.neurons["idx"], kb.neurons["id"], kb.neurons["model"]))
    want = sorted((layer, i, f"{m['id']}/{layer}/{i}", m["id"]) for layer in layers for i in range(m["d_mlp"]))
    assert got == want


def decode(model, architecture: str, layer: int, rows: list[int]):
    """Full logit vectors of the neurons ``rows`` of ``layer``, from the modules' weights (Llama:
    RMSNorm, so the final norm's linear part is its gain; input weights get the pre-MLP gain)."""
    assert architecture == "llama", f"no oracle for {architecture}"
    with torch.no_grad():
        unembed = model.get_output_embeddings().weight.float()
        block = model.model.layers[layer]
        out = block.mlp.down_proj.weight.T.float()[rows] * model.model.norm.weight.float()
        gain = block.post_attention_layernorm.weight.float()
        inputs = {"gate": block.mlp.gate_proj.weight.float()[rows] * gain,
                  "up": block.mlp.up_proj.weight.float()[rows] * gain}
        logits = (out @ unembed.T).double().numpy()
        reads = {via: (w @ unembed.T).double().numpy() for via, w in inputs.items()}
    return logits, reads


def check_lmhead(kb, model, layers: list[int], k: int, neurons: dict[int, list[int]] | None = None) -> None:
    """Every stored PROMOTES / SUPPRESSES / READS row is the brute-force decode (full logits,
    numpy sorts) of the neuron its ``layer`` and ``idx`` name; with ``neurons``, exactly those
    neurons' rows are checked."""
    expected: dict[str, dict[tuple, tuple[int, float]]] = defaultdict(dict)
    for layer in layers:
        rows = neurons[layer] if neurons else list(range(kb.model["d_mlp"]))
        logits, reads = decode(model, kb.model["arch"], layer, rows)
        desc = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        asc = np.argsort(logits, axis=1, kind="stable")[:, :k]
        read_top = {via: np.argsort(-r, axis=1, kind="stable")[:, :k] for via, r in reads.items()}
        for j, idx in enumerate(rows):
            for rank in range(k):
                expected["PROMOTES"][layer, idx, rank] = (int(desc[j, rank]), logits[j, desc[j, rank]])
                expected["SUPPRESSES"][layer, idx, rank] = (int(asc[j, rank]), logits[j, asc[j, rank]])
                for via in reads:
                    t = int(read_top[via][j, rank])
                    expected["READS"][layer, idx, via, rank] = (t, reads[via][j, t])
    for rel, want in expected.items():
        got = {}
        for r in kb.rels[rel].itertuples(index=False):
            layer, idx = where(kb, r.src)
            if neurons and idx not in neurons.get(layer, ()):
                continue
            key = (layer, idx, r.via, r.rank) if rel == "READS" else (layer, idx, r.rank)
            assert key not in got, f"two {rel} rows for {key}"
            got[key] = (int(kb.token_id[r.dst]), r.value)
        assert sorted(got) == sorted(want), f"{rel}: rows attached to the wrong neurons, inputs or ranks"
        for key, (token, value) in want.items():
            assert got[key][0] == token, f"{rel} {key}: token {got[key][0]}, brute force {token}"
            assert got[key][1] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{rel} {key}"


def check_records(kb, model, layers: list[int], windows: np.ndarray, cfg: dict,
                  neurons: dict[int, list[int]] | None = None) -> None:
    """Every stored record and statistic against brute-force activations.

    Records are recomputed from the KB alone (the prefix and each snippet's token ids);
    statistics and the choice of top records from every window of the corpus. The model
    runs here in other batches than in the pass, and CPU kernels may round differently for
    another number of rows, so values agree to float32 rounding (rel 1e-5), stored float16
    activations to float16 rounding (rel 1e-3).
    """
    arch, prefix = kb.model["arch"], kb.prefix
    snippet_ids = list(kb.snippets.index)
    snippet_rows = np.stack([np.asarray(t, dtype=np.int64) for t in kb.snippets["token_ids"]])
    from_kb = neuron_inputs(model, arch, layers, prefix, snippet_rows)
    everything = neuron_inputs(model, arch, layers, prefix, windows)
    # Each snippet is one window of the corpus, and its text is the decoded tokens.
    window_of = {tuple(row): w for w, row in enumerate(windows.tolist())}
    assert len(window_of) == len(windows), "the test corpus has repeated windows: pick other documents"
    snippet_window = {}
    for sid, row, tokens in zip(snippet_ids, snippet_rows.tolist(), kb.snippets["tokens"]):
        assert tuple(row) in window_of, f"snippet {sid} is not a window of the corpus"
        snippet_window[sid] = window_of[tuple(row)]
        assert list(tokens) == [kb.token_text[t] for t in row]
    n_tokens = windows.size
    by_neuron = defaultdict(list)
    for r in kb.records.itertuples(index=False):
        by_neuron[where(kb, r.src)].append(r)
    for layer in layers:
        acts, snippet_acts = everything[layer], from_kb[layer]  # [N, T, d], [S, T, d]
        wmax = acts.max(1)  # [N, d]
        flat = acts.reshape(-1, acts.shape[2]).astype(np.float64)
        for idx in (neurons[layer] if neurons else range(acts.shape[2])):
            n = kb.neurons.loc[f"{kb.model['id']}/{layer}/{idx}"]
            x = flat[:, idx]
            assert n["n_tokens"] == n_tokens
            assert n["max_act"] == pytest.approx(x.max(), rel=1e-5, abs=1e-6)
            assert n["min_act"] == pytest.approx(x.min(), rel=1e-5, abs=1e-6)
            assert n["mean_act"] == pytest.approx(x.mean(), rel=1e-4, abs=1e-6 * x.std())
            assert n["var_act"] == pytest.approx(x.var(), rel=1e-4)
            # A value within rounding of 0 may fall on either side of it: allow one token.
            assert abs(n["density"] - (x > 0).mean()) <= 1.01 / n_tokens
            q = np.arange(1, cfg["n_quantiles"]) / cfg["n_quantiles"]
            edges = [wmax[:, idx].min(), *np.quantile(wmax[:, idx].astype(np.float64), q), wmax[:, idx].max()]
            np.testing.assert_allclose(n["qb"], edges, rtol=1e-5, atol=1e-6)  # exact: boundary sample > windows

            recs = by_neuron[layer, idx]
            for r in recs:
                values = snippet_acts[snippet_ids.index(r.dst), :, idx]
                stored = decode_activations(r.activations)
                np.testing.assert_allclose(stored, values, rtol=2e-3, atol=2e-3 * np.abs(values).max() + 1e-6,
                                           err_msg=f"{r.kind} record {r.rank} of {r.src} on {r.dst}")
                assert r.mx == pytest.approx(values.max(), rel=1e-5, abs=1e-6)
                assert values[r.position] == pytest.approx(values.max(), rel=1e-5, abs=1e-6)
            top = sorted((r for r in recs if r.kind == "top"), key=lambda r: r.rank)
            order = np.lexsort((np.arange(len(wmax)), -wmax[:, idx]))[: cfg["top_k"]]
            assert [snippet_window[r.dst] for r in top] == order.tolist(), f"top records of {layer}/{idx}"
            assert [r.rank for r in top] == list(range(cfg["top_k"]))
            random = sorted(r.rank for r in recs if r.kind == "random")
            assert random == list(range(cfg["n_random"]))
            assert len({r.dst for r in recs if r.kind == "random"}) == cfg["n_random"]
            for j in range(cfg["n_quantiles"]):
                for r in (r for r in recs if r.kind == f"quantile_{j}"):
                    lo, hi = edges[j], edges[j + 1]
                    assert lo - 1e-5 * abs(lo) - 1e-6 <= r.mx <= hi + 1e-5 * abs(hi) + 1e-6
            assert {r.kind for r in recs} <= {"top", "random", *(f"quantile_{j}" for j in range(cfg["n_quantiles"]))}


# -- the tiny model, fast ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_run):
    with open_store(tiny_run.url, read_only=True) as store:
        kb = read_kb(store)
    model = AutoModelForCausalLM.from_pretrained(kb.model["source"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(kb.model["source"])
    return SimpleNamespace(kb=kb, model=model, tokenizer=tokenizer, layers=[0, 1],
                           windows=corpus_windows(tokenizer, corpus_documents(), WINDOW, SETTINGS["tokens"]))


def test_neurons_are_where_their_ids_say(tiny):
    assert tiny.kb.model["source"] and tiny.kb.model["arch"] == "llama"
    check_neurons(tiny.kb, tiny.layers)


def test_lmhead_rows_equal_the_brute_force_decode(tiny):
    check_lmhead(tiny.kb, tiny.model, tiny.layers, SETTINGS["lmhead_k"])


def test_records_and_statistics_equal_brute_force_activations(tiny):
    # The tiny tokenizer prepends nothing, so the pass puts the document separator first.
    assert tiny.kb.prefix == [tiny.tokenizer.eos_token_id]
    assert (tiny.windows == tiny.tokenizer.eos_token_id).any(), "the windows should hold document separators"
    assert len(tiny.windows) == N_WINDOWS
    check_records(tiny.kb, tiny.model, tiny.layers, tiny.windows, SETTINGS)
    assert len(tiny.kb.records) == 2 * 96 * (SETTINGS["top_k"] + SETTINGS["n_random"]) + sum(
        1 for r in tiny.kb.records.itertuples() if r.kind.startswith("quantile_"))


def test_snippet_text_is_the_decoded_tokens(tiny):
    for row in tiny.kb.snippets.itertuples(index=False):
        assert row.text == tiny.tokenizer.decode(list(row.token_ids))


# -- the real SmolLM2, slow ----------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_neurons_equal_brute_force(tmp_path):
    layers, picked = [0, 29], {0: [0, 17, 1535], 29: [808, 3, 1000]}
    s = dict(tokens=512, window=32, batch_size=8, top_k=3, n_random=2, n_quantiles=2, per_quantile=1, lmhead_k=5)
    pipeline = Pipeline(IngestConfig(model="smollm2-135m", layers=layers, **s)).prepare()
    with open_store(str(tmp_path / "kb"), create=True) as store:
        pipeline.run(store)
        kb = read_kb(store)
    model = pipeline.lm.model  # the loaded weights are shared; every computation below is the test's own
    assert kb.prefix == [0]  # SmolLM2: <|endoftext|>, the separator it was trained with, comes first
    check_neurons(kb, layers)
    check_lmhead(kb, model, layers, s["lmhead_k"], neurons=picked)
    check_records(kb, model, layers, pipeline.windows.token_ids, s, neurons=picked)
