"""A small knowledge base built from code with a fixed seed, for query and CLI tests.

``build_small_kb(store)`` writes it through ``Store.upsert_nodes`` / ``upsert_rels`` only,
and returns the frames it wrote (``KB.nodes[label]``, ``KB.rels[type]``) so that tests
compute the rows a query should return with pandas, independently of any engine.

Shape: two models, ``alpha`` (4 layers) and ``beta`` (3 layers), 6 neurons a layer, sharing
one tokenizer of 24 tokens. Several neurons of both models promote, suppress, read and fire
on `` dog``; some N2G patterns fire on `` dog`` after `` hot``, others after `` the``.
MATCHES chains alpha's layers (two methods, so a method filter matters) and alpha/0 to
beta/0 (a second run).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from ingest.stages.model import spellings
from ingest.stages.n2g import trie_members
from kb.ids import neuron_id, token_id
from kb.records import encode_activations

SEED = 20240611
TOKENIZER = "tok-test-24"
VOCAB = [" dog", " cat", " the", " hot", " Dog", "dog", " a", " bark", " puppy", " fox",
         " code", " def", " return", " is", ".", ",", " and", " of", " sun", " rain",
         " red", " blue", " run", " null"]
MODELS = {"alpha": 4, "beta": 3}  # model -> layers
D_MLP = 6
EXPLANATION_WORDS = ["dogs", "animals", "Python code", "weather words", "colours", "punctuation",
                     'the word "the"', "hot dogs", "pets", "running"]


@dataclass
class KB:
    nodes: dict[str, pd.DataFrame] = field(default_factory=dict)
    rels: dict[str, pd.DataFrame] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {**{k: len(v) for k, v in self.nodes.items()}, **{k: len(v) for k, v in self.rels.items()}}

    def neuron(self, nid: str) -> dict:
        df = self.nodes["Neuron"]
        return df[df["id"] == nid].iloc[0].to_dict()

    def token_text(self) -> dict[str, str]:
        return dict(zip(self.nodes["Token"]["id"], self.nodes["Token"]["text"]))


def _round(x: float) -> float:
    # Values exactly representable in float32 within 1e-6 relative are not needed; rounding
    # to 4 places only keeps the printed tables readable.
    return round(x, 4)


def make_small_kb() -> KB:
    """The frames of the small KB (nothing is written)."""
    rng = random.Random(SEED)
    kb = KB()
    tokens = pd.DataFrame({
        "id": [token_id(TOKENIZER, i) for i in range(len(VOCAB))],
        "tokenizer": TOKENIZER,
        "token_id": list(range(len(VOCAB))),
        "text": VOCAB,
    })
    tid = dict(zip(VOCAB, tokens["id"]))
    kb.nodes["Model"] = pd.DataFrame([
        {"id": m, "kind": "lm", "source": f"test/{m}", "architecture": "llama", "n_layers": n,
         "d_model": 8, "d_mlp": D_MLP, "vocab_size": len(VOCAB), "tokenizer": TOKENIZER}
        for m, n in MODELS.items()
    ])
    kb.nodes["Token"] = tokens
    kb.nodes["TokenText"], kb.rels["SPELLS"] = spellings(tokens)

    neurons, has = [], []
    for m, n_layers in MODELS.items():
        for layer in range(n_layers):
            for index in range(D_MLP):
                nid = neuron_id(m, layer, index)
                p, r = rng.uniform(0.2, 1), rng.uniform(0.2, 1)
                neurons.append({
                    "id": nid, "model": m, "layer": layer, "idx": index, "kind": "mlp",
                    "max_act": _round(rng.uniform(0.5, 10)), "min_act": _round(-rng.uniform(0, 0.3)),
                    "mean_act": _round(rng.uniform(0, 0.5)), "var_act": _round(rng.uniform(0, 1)),
                    "density": _round(rng.uniform(0.001, 0.5)), "n_tokens": 4096,
                    "n2g_precision": _round(p), "n2g_recall": _round(r), "n2g_f1": _round(2 * p * r / (p + r)),
                })
                has.append({"src": m, "dst": nid})
    ids = [n["id"] for n in neurons]
    kb.rels["HAS_NEURON"] = pd.DataFrame(has)

    # Output and input weights. Every third neuron is made to promote " dog", every fourth to
    # suppress it, every fifth to read it, so token queries have rows in both models.
    promotes, suppresses, reads = [], [], []
    for i, nid in enumerate(ids):
        choice = rng.sample(VOCAB, 10)
        if i % 3 == 0 and " dog" not in choice[:5]:
            choice = [" dog"] + [t for t in choice if t != " dog"][:9]
        if i % 4 == 0 and " dog" not in choice[5:]:
            choice = [t for t in choice if t != " dog"][:5] + [" dog"] + [t for t in choice if t != " dog"][5:9]
        for rank, (text, logit) in enumerate(zip(choice[:5], sorted((rng.uniform(0.5, 5) for _ in range(5)), reverse=True))):
            promotes.append({"src": nid, "dst": tid[text], "logit": _round(logit), "rank": rank})
        for rank, (text, logit) in enumerate(zip(choice[5:], sorted(-rng.uniform(0.5, 5) for _ in range(5)))):
            suppresses.append({"src": nid, "dst": tid[text], "logit": _round(logit), "rank": rank})
        for via in ("gate", "up"):
            read = rng.sample(VOCAB, 3)
            if i % 5 == 0 and via == "gate" and " dog" not in read:
                read[0] = " dog"
            for rank, (text, w) in enumerate(zip(read, sorted((rng.uniform(0.1, 2) for _ in range(3)), reverse=True))):
                reads.append({"src": nid, "dst": tid[text], "weight": _round(w), "rank": rank, "via": via})
    # Edges found from the token side (the tokens stage): for " dog", the first two neurons that
    # already list it (the same pair twice, under the other marker) and one that does not.
    dog = tid[" dog"]
    for rows, extra in ((promotes, 0.05), (suppresses, -0.05), (reads, 0.05)):
        found = [dict(r, found="token", rank=j) for j, r in enumerate([r for r in rows if r["dst"] == dog][:2])]
        listed = {r["src"] for r in rows if r["dst"] == dog}
        other = next(n for n in ids if n not in listed)
        found.append({**{k: v for k, v in rows[0].items() if k not in ("src", "dst")}, "src": other, "dst": dog,
                      ("weight" if "weight" in rows[0] else "logit"): extra, "rank": 2, "found": "token"})
        for r in rows:
            r.setdefault("found", "neuron")
        rows.extend(found)
    kb.rels["PROMOTES"] = pd.DataFrame(promotes)
    kb.rels["SUPPRESSES"] = pd.DataFrame(suppresses)
    kb.rels["READS"] = pd.DataFrame(reads)

    # Snippets and activation records: 4 "top" and 2 "random" records per neuron.
    snippets = []
    for _ in range(20):
        toks = rng.choices(range(len(VOCAB)), k=8)
        h = hashlib.blake2b(bytes(str(toks), "ascii"), digest_size=8).hexdigest()
        snippets.append({"id": f"{TOKENIZER}/{h}", "tokenizer": TOKENIZER, "corpus": "test",
                         "token_ids": toks, "tokens": [VOCAB[t] for t in toks],
                         "text": "".join(VOCAB[t] for t in toks)})
    kb.nodes["Snippet"] = pd.DataFrame(snippets).drop_duplicates("id").reset_index(drop=True)
    snippet_ids = list(kb.nodes["Snippet"]["id"])
    records = []
    for nid in ids:
        picked = rng.sample(snippet_ids, 6)
        top_max = sorted((rng.uniform(1, 10) for _ in range(4)), reverse=True)
        for kind, sids, maxes in (("top", picked[:4], top_max), ("random", picked[4:], [rng.uniform(0, 1) for _ in range(2)])):
            for rank, (sid, mx) in enumerate(zip(sids, maxes)):
                pos = rng.randrange(8)
                acts = [_round(rng.uniform(0, mx / 2)) for _ in range(8)]
                acts[pos] = _round(mx)
                records.append({"src": nid, "dst": sid, "kind": kind, "rank": rank, "max": _round(mx),
                                "position": pos, "activations": encode_activations([acts])[0]})
    kb.rels["ACTIVATES_ON"] = pd.DataFrame(records)

    # Explanations and scores. Every neuron has a data-derived explanation; every other one
    # also an LLM one. The neuron carries the text and score of its best-scoring explanation.
    explanations, scores, explained, has_score = [], [], [], []
    for i, nid in enumerate(ids):
        model = nid.split("/")[0]
        kinds = [("data", "top-activations")] + ([("llm-test", "lmhead")] if i % 2 == 0 else [])
        for explainer, method in kinds:
            eid = f"{nid}/{explainer}/{method}"
            text = f"{rng.choice(['Fires on', 'Mentions of', 'Text about'])} {rng.choice(EXPLANATION_WORDS)}"
            explanations.append({"id": eid, "neuron": nid, "model": model, "text": text, "explainer": explainer,
                                 "method": method, "created_at": "2024-06-11T00:00:00"})
            explained.append({"src": nid, "dst": eid})
            for score_method, split in (("simulation", "top"), ("detection", "all"))[: 1 + (i % 3 == 0)]:
                sid = f"{eid}/{score_method}/test-scorer/{split}"
                scores.append({"id": sid, "model": model, "method": score_method, "value": _round(rng.uniform(-0.2, 0.9)),
                               "scorer": "test-scorer", "split": split})
                has_score.append({"src": eid, "dst": sid})
    kb.nodes["Explanation"] = pd.DataFrame(explanations)
    kb.nodes["Score"] = pd.DataFrame(scores)
    kb.rels["EXPLAINED_BY"] = pd.DataFrame(explained)
    kb.rels["HAS_SCORE"] = pd.DataFrame(has_score)
    simulation = {s["id"].rsplit("/", 3)[0]: s["value"] for s in scores if s["method"] == "simulation"}
    best_by_neuron: dict[str, tuple[str, float]] = {}
    for e in explanations:  # the first of equal scores wins
        value = simulation[e["id"]]
        if e["neuron"] not in best_by_neuron or value > best_by_neuron[e["neuron"]][1]:
            best_by_neuron[e["neuron"]] = (e["text"], value)
    for n in neurons:
        n["explanation"], n["explanation_score"] = best_by_neuron[n["id"]]
    kb.nodes["Neuron"] = pd.DataFrame(neurons)

    # Neuron-to-Graph tries for every other neuron: 1-2 firing tokens (roots), each with
    # 1-2 context tokens one back and possibly one more two back. Neurons 0, 4, 8... fire on
    # " dog": after " hot" when i % 8 == 0, after " the" otherwise (and those with a second root,
    # i % 12 == 0, fire on it after the other one of the two).
    n2g_nodes, roots, prev, fires, context = [], [], [], [], []
    for i, nid in enumerate(ids):
        if i % 2:
            continue
        model = nid.split("/")[0]
        firing = rng.sample([t for t in VOCAB if t != " dog"], 1 + (i % 3 == 0))
        if i % 4 == 0:
            firing[0] = " dog"
        for text in firing:
            path = [VOCAB.index(text)]
            root = {"id": f"{nid}/{'.'.join(map(str, path))}", "neuron": nid, "model": model, "token": text,
                    "token_id": path[0], "activation": _round(rng.uniform(1, 8)), "importance": 1.0,
                    "is_end": False, "depth": 0}
            n2g_nodes.append(root)
            roots.append({"src": nid, "dst": root["id"]})
            fires.append({"src": nid, "dst": tid[text], "activation": root["activation"]})
            ctx_tokens = rng.sample([t for t in VOCAB if t not in (" hot", " the")], 2)[: 1 + i % 2]
            if text == " dog":
                ctx_tokens = [" hot"] if i % 8 == 0 else [" the"]
            elif firing[0] == " dog":  # the other root has the other context: a context counts under its own root
                ctx_tokens = [" the"] if i % 8 == 0 else [" hot"]
            for ctext in ctx_tokens:
                child_path = path + [VOCAB.index(ctext)]
                child = {"id": f"{nid}/{'.'.join(map(str, child_path))}", "neuron": nid, "model": model,
                         "token": ctext, "token_id": child_path[-1], "activation": _round(rng.uniform(1, 8)),
                         "importance": _round(rng.uniform(0, 1)), "is_end": True, "depth": 1}
                n2g_nodes.append(child)
                prev.append({"src": root["id"], "dst": child["id"]})
                context.append({"src": nid, "dst": tid[ctext], "importance": child["importance"]})
                # A second step back on alternate patterns, so context matching looks past depth 1.
                if i % 8 == 4:
                    gtext = " sun"
                    grand_path = child_path + [VOCAB.index(gtext)]
                    grand = {"id": f"{nid}/{'.'.join(map(str, grand_path))}", "neuron": nid, "model": model,
                             "token": gtext, "token_id": grand_path[-1], "activation": _round(rng.uniform(1, 8)),
                             "importance": _round(rng.uniform(0, 1)), "is_end": True, "depth": 2}
                    child["is_end"] = False
                    n2g_nodes.append(grand)
                    prev.append({"src": child["id"], "dst": grand["id"]})
                    context.append({"src": nid, "dst": tid[gtext], "importance": grand["importance"]})
            if text == " dog" and i % 8 == 0:  # a wildcard one step back: N2G's '*', token id -1
                wild = {"id": f"{nid}/{path[0]}.-1", "neuron": nid, "model": model, "token": "*", "token_id": -1,
                        "activation": _round(rng.uniform(1, 8)), "importance": _round(rng.uniform(0, 1)),
                        "is_end": True, "depth": 1}
                n2g_nodes.append(wild)
                prev.append({"src": root["id"], "dst": wild["id"]})
    kb.nodes["N2GNode"] = pd.DataFrame(n2g_nodes)
    kb.rels["HAS_N2G_NODE"] = trie_members(kb.nodes["N2GNode"])
    kb.rels["N2G_ROOT"] = pd.DataFrame(roots)
    kb.rels["N2G_PREV"] = pd.DataFrame(prev)
    kb.rels["FIRES_ON"] = pd.DataFrame(fires).drop_duplicates(["src", "dst"])
    kb.rels["CONTEXT"] = pd.DataFrame(context).drop_duplicates(["src", "dst"])

    # kNN edges: 3 output-weight neighbours and 2 explanation neighbours per neuron, anywhere
    # (the same layer included, which similar_neurons leaves out by default).
    similar = []
    for nid in ids:
        for method, k in (("output_weights", 3), ("explanation", 2)):
            others = rng.sample([o for o in ids if o != nid], k)
            for rank, (o, s) in enumerate(zip(others, sorted((rng.uniform(0.1, 1) for _ in range(k)), reverse=True))):
                similar.append({"src": nid, "dst": o, "score": _round(s), "method": method, "rank": rank})
    kb.rels["SIMILAR_TO"] = pd.DataFrame(similar).drop_duplicates(["src", "dst", "method"])

    # Hungarian matches: a permutation between consecutive layers of alpha under method
    # "hungarian-out" (run "alpha-layers"); "hungarian-in" matches only layers 0->1 and 1->2;
    # run "alpha-beta" matches alpha layer 0 to beta layer 0.
    matches = []
    for method, last in (("hungarian-out", MODELS["alpha"] - 1), ("hungarian-in", 2)):
        for layer in range(last):
            perm = rng.sample(range(D_MLP), D_MLP)
            for index, target in enumerate(perm):
                matches.append({"src": neuron_id("alpha", layer, index), "dst": neuron_id("alpha", layer + 1, target),
                                "similarity": _round(rng.uniform(0.3, 1)), "method": method, "run": "alpha-layers"})
    perm = rng.sample(range(D_MLP), D_MLP)
    for index, target in enumerate(perm):
        matches.append({"src": neuron_id("alpha", 0, index), "dst": neuron_id("beta", 0, target),
                        "similarity": _round(rng.uniform(0.3, 1)), "method": "hungarian-out", "run": "alpha-beta"})
    kb.rels["MATCHES"] = pd.DataFrame(matches)
    return kb


# The term index the store writes with every explanation text (kb.terms), defined here again:
# the runs between ASCII characters that are not letters, digits or '_', and '*' for all.
_NOT_IN_RUNS = re.compile(r"[^0-9A-Za-z_\u0080-\U0010ffff]+")


def text_terms(text: str) -> set[str]:
    return {run for run in _NOT_IN_RUNS.split(text) if run} | {"*"}


def term_index(texts: Iterable[str]) -> dict[str, int]:
    """How many Term nodes and MENTIONS edges the store writes for these explanation texts."""
    per_text = [text_terms(t) for t in texts]
    return {"Term": len(set().union(*per_text)), "MENTIONS": sum(map(len, per_text))}


# Nodes before the relationships that need them.
NODE_ORDER = ("Model", "Token", "TokenText", "Neuron", "Snippet", "Explanation", "Score", "N2GNode")


def build_small_kb(store) -> KB:
    """Write the small KB into ``store`` and return the frames written."""
    kb = make_small_kb()
    for label in NODE_ORDER:
        store.upsert_nodes(label, kb.nodes[label])
    for rel_type, df in kb.rels.items():
        store.upsert_rels(rel_type, df)
    return kb
