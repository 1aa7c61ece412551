"""N2G on a tiny random-weight model: pruning and saliency of the batched driver against a
brute-force computation (one sequence per forward, one neuron at a time, no sharing), the
batched and per-neuron runs giving identical graphs, and the stage's stored graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingest.adapters import adapter_for
from ingest.n2g.augmentation import EmbeddingNeighbours
from ingest.n2g.config import N2GConfig
from ingest.n2g.driver import build_graphs
from ingest.n2g.pruning import Record
from ingest.n2g.runner import LayerRunner
from tinymodels import tiny_gpt2, tiny_llama, tiny_neox

LAYER, PREFIX, MASK = 1, (1,), 3


@pytest.fixture(scope="module")
def adapter():
    # Many tiny forwards: on a busy 2-core machine a second thread costs far more than it gives.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield adapter_for(tiny_llama(seed=3, n_layers=2))
    torch.set_num_threads(threads)


def acts_of(adapter, seq) -> np.ndarray:
    """The layer's activations on one sequence, alone in its forward: [len(seq), d_mlp]."""
    got = []
    handle = adapter.neuron_module(LAYER).register_forward_pre_hook(lambda m, a: got.append(a[0][0].clone()))
    try:
        with torch.inference_mode():
            adapter.model(input_ids=torch.tensor([PREFIX + tuple(seq)]), use_cache=False)
    finally:
        handle.remove()
    return got[0][len(PREFIX):].numpy()


@pytest.fixture(scope="module")
def records(adapter):
    rng = np.random.default_rng(0)
    snippets = [tuple(int(t) for t in rng.integers(5, 500, size=12)) for _ in range(2)]
    out = []
    for tokens in snippets:
        full = acts_of(adapter, tokens)
        for n in range(0, 96, 6):
            p = int(np.argmax(full[:, n]))
            if full[p, n] > 0:
                out.append(Record(n, tokens, p, float(full[p, n])))
    return out


def brute_prune(adapter, r: Record, cfg: N2GConfig) -> int:
    length = 0
    while True:
        length += 1
        s = max(0, r.position - length + 1)
        a = acts_of(adapter, r.tokens[s: r.position + 1])[:, r.neuron]
        if s == 0 or length >= cfg.cutoff or (int(np.argmax(a)) == len(a) - 1 and a[-1] >= cfg.prune_threshold * r.max):
            return s


@pytest.mark.parametrize("cfg", [N2GConfig(mask_token=MASK),
                                 N2GConfig(prune_threshold=0.97, cutoff=6, post_context=2, mask_token=MASK)],
                         ids=["paper-defaults", "strict"])
def test_pruning_and_saliency_match_brute_force(adapter, records, cfg):
    max_act = {r.neuron: max(x.max for x in records if x.neuron == r.neuron) for r in records}
    keep: list = []
    build_graphs(LayerRunner(adapter, LAYER, PREFIX, batch_tokens=256, pad_token=MASK), records, max_act, cfg,
                 EmbeddingNeighbours(adapter.model.get_input_embeddings().weight, 2), keep=keep)
    assert len(keep) == len(records)
    starts = []
    for r, q, sal, _ in keep:
        s = brute_prune(adapter, r, cfg)
        assert q.start == s, f"neuron {r.neuron} peak {r.position}: pruned to {q.start}, brute force {s}"
        assert q.end == min(len(r.tokens), r.position + 1 + cfg.post_context)
        starts.append(r.position - s)
        plain = acts_of(adapter, r.tokens[s: r.position + 1])[:, r.neuron]
        assert q.scale == pytest.approx(r.max / plain[-1], rel=1e-4)
        want = [1 - acts_of(adapter, r.tokens[s:j] + (MASK,) + r.tokens[j + 1: r.position + 1])[-1, r.neuron] / plain[-1]
                for j in range(s, r.position + 1)]
        np.testing.assert_allclose(sal.importance[r.position], want, rtol=1e-3, atol=1e-4)
    # not vacuous: some records need context, some do not
    assert min(starts) == 0 and max(starts) >= 2, starts


def test_chunks_are_whole_snippets_of_at_least_the_budget():
    from ingest.n2g.driver import _chunks

    snippets = [[(i, j) for j in range(n)] for i, n in enumerate([3, 1, 5, 2, 2, 7, 1])]
    chunks = list(_chunks(snippets, 4))
    assert [len(c) for c in chunks] == [4, 5, 4, 7, 1]  # 3+1, 5, 2+2, 7, then what is left
    assert [r for c in chunks for r in c] == [r for s in snippets for r in s]


def test_embedding_neighbours_block_by_block_equal_the_whole_matrix():
    torch.manual_seed(0)
    e = torch.randn(100, 16).to(torch.bfloat16)
    unit = e.float() / e.float().norm(dim=1, keepdim=True)
    sim = unit @ unit.T
    sim.fill_diagonal_(-torch.inf)
    sim[:, 3] = -torch.inf  # excluded
    want = sim.topk(4, dim=1).indices.tolist()
    got = EmbeddingNeighbours(e, 4, exclude=[3], block=7)(range(100))  # 15 blocks
    assert [list(got[t]) for t in range(100)] == want


def test_augmentation_matches_brute_force(adapter, records):
    """Each kept variant replaces one important token with an embedding neighbour, and keeps
    at least augment_keep of the activation at the peak, each measured by a forward of its own."""
    cfg = N2GConfig(mask_token=MASK, importance_threshold=0.3)
    max_act = {r.neuron: max(x.max for x in records if x.neuron == r.neuron) for r in records}
    near = EmbeddingNeighbours(adapter.model.get_input_embeddings().weight, 3)
    keep: list = []
    build_graphs(LayerRunner(adapter, LAYER, PREFIX, batch_tokens=256, pad_token=MASK), records, max_act, cfg,
                 near, keep=keep)
    tried = kept = 0
    for r, q, sal, variants in keep:
        base = float(sal.acts[r.position - q.start])
        important = [q.start + j for j in np.flatnonzero(sal.importance[r.position] >= cfg.importance_threshold)]
        want = []
        for j in important:
            for t in near([r.tokens[j]])[r.tokens[j]]:
                ctx = list(r.tokens[q.start: r.position + 1])
                ctx[j - q.start] = t
                a = float(acts_of(adapter, tuple(ctx))[-1, r.neuron])
                tried += 1
                if base > 0 and a >= cfg.augment_keep * base:
                    want.append((j, t, a))
        assert [(v.position, v.token) for v in variants] == [(j, t) for j, t, _ in want]
        np.testing.assert_allclose([v.activation for v in variants], [a for _, _, a in want], rtol=1e-3, atol=1e-4)
        kept += len(want)
    assert 0 < kept < tried, (kept, tried)  # not vacuous: some variants kept, some dropped


def test_batched_and_per_neuron_runs_build_identical_graphs(adapter, records):
    cfg = N2GConfig(mask_token=MASK, importance_threshold=0.3)
    max_act = {r.neuron: max(x.max for x in records if x.neuron == r.neuron) for r in records}
    near = EmbeddingNeighbours(adapter.model.get_input_embeddings().weight, 3)
    shared = LayerRunner(adapter, LAYER, PREFIX, pad_token=MASK)
    batched = build_graphs(shared, records, max_act, cfg, near)
    single = LayerRunner(adapter, LAYER, PREFIX, pad_token=MASK)
    for n in sorted(batched):
        alone = build_graphs(single, [r for r in records if r.neuron == n], max_act, cfg, near)
        got, want = alone[n].patterns(), batched[n].patterns()
        # other batch shapes round differently in the last bits, nothing more
        assert [p for p, _ in got] == [p for p, _ in want]
        np.testing.assert_allclose([a for _, a in got], [a for _, a in want], rtol=1e-4)
    assert sum(len(t.patterns()) for t in batched.values()) > len(batched)  # augmentation and context added patterns
    assert shared.tokens_run < single.tokens_run  # the point of sharing


def test_runner_matches_one_sequence_per_forward(adapter):
    seqs = [(5, 6, 7, 8), (5, 6), (9, 10, 11), (5, 6, 7, 8, 12, 13)]
    got = LayerRunner(adapter, LAYER, PREFIX, batch_tokens=8).run(seqs)
    for s in seqs:
        np.testing.assert_allclose(got[s], acts_of(adapter, s), rtol=1e-4, atol=1e-5)


def n2g_like_sequences(seed: int) -> list[tuple[int, ...]]:
    """Snippets with their truncations and maskings: the prefix-sharing sets N2G asks for."""
    rng = np.random.default_rng(seed)
    snippets = [tuple(int(t) for t in rng.integers(5, 500, size=int(rng.integers(1, 40)))) for _ in range(20)]
    out = set(snippets)
    for s in snippets:
        for j in range(len(s)):
            out.add(s[: j + 1])
            out.add(s[:j] + (MASK,) + s[j + 1:])
    return sorted(out)


@pytest.mark.parametrize("make", [lambda: tiny_llama(seed=3, n_layers=2), lambda: tiny_gpt2(seed=3),
                                  lambda: tiny_neox(seed=3)], ids=["llama", "gpt2", "neox"])
@pytest.mark.parametrize("row_tokens", [16, 256])
def test_tree_mode_equals_plain_forwards_with_less_work(make, row_tokens):
    """Shared prefixes computed once (4-D ancestor mask, depth positions) give each sequence's
    activations as a forward of that sequence alone would, on every architecture adapter."""
    adapter = adapter_for(make())
    seqs = n2g_like_sequences(0)
    tree = LayerRunner(adapter, LAYER, PREFIX, batch_tokens=512, row_tokens=row_tokens)
    plain = LayerRunner(adapter, LAYER, PREFIX, batch_tokens=512, tree=False)
    got, want = tree.run(seqs), plain.run(seqs)
    assert tree.tree is True  # the probe accepted tree mode
    for s in seqs:
        np.testing.assert_allclose(got[s], want[s], rtol=1e-4, atol=1e-5)
    for s in seqs[::25]:
        np.testing.assert_allclose(got[s], acts_of(adapter, s), rtol=1e-4, atol=1e-5)
    # Rows that hold whole subtrees share the most; narrow rows repeat the paths down to their parts.
    assert tree.tokens_run < (0.75 if row_tokens == 256 else 1) * plain.tokens_run, (tree.tokens_run, plain.tokens_run)


class DeafModel(torch.nn.Module):
    """A real model that drops the attention mask and positions it is given: tree mode cannot work."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, use_cache=False, **ignored):
        return self.inner(input_ids=input_ids, use_cache=use_cache)


def test_a_model_that_ignores_the_tree_mask_runs_plain(adapter):
    from types import SimpleNamespace

    deaf = SimpleNamespace(model=DeafModel(adapter.model), neuron_module=adapter.neuron_module)
    runner = LayerRunner(deaf, LAYER, PREFIX, batch_tokens=512)
    seqs = n2g_like_sequences(1)[:60]
    got = runner.run(seqs)
    assert runner.tree is False
    for s in seqs[::10]:
        np.testing.assert_allclose(got[s], acts_of(adapter, s), rtol=1e-4, atol=1e-5)
