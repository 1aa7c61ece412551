"""The activation pass equals a brute-force computation over all activations at once.

The brute force runs the tiny model over the whole tiny corpus, keeps every activation of every
layer at once, and recomputes statistics and record selections with numpy sorts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama

from ingest.activations import (
    ActivationCollector,
    RecordConfig,
    plan_windows,
    run_activation_pass,
    sample_keys,
)
from ingest.adapters import adapter_for
from kb.errors import IngestError

N_WINDOWS, WINDOW = 150, 12
# Small reservoirs, so that the quantile machinery is exercised with far more windows than it keeps.
CFG = RecordConfig(top_k=5, n_random=4, n_quantiles=4, per_quantile=2, seed=7, reservoir=12, boundary_sample=40)
BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def corpus(n: int = N_WINDOWS, window: int = WINDOW, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 512, size=(n, window), dtype=np.int64)


def all_activations(adapter, tokens: np.ndarray, bos_id: int | None, batch_size: int) -> dict[int, np.ndarray]:
    """Every layer's activations [n_windows, window, d_mlp], all held at once.

    The forward runs in batches of ``batch_size`` because CPU matrix kernels may round
    differently for a different number of rows: the model itself is not bitwise
    batch-invariant, and this comparison is about what the pass does with the activations.
    """
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(adapter.n_layers)}
    handles = [
        adapter.neuron_module(layer).register_forward_pre_hook(
            lambda module, args, layer=layer: acts[layer].append(args[0].float().clone()))
        for layer in range(adapter.n_layers)
    ]
    ids = torch.from_numpy(tokens)
    if bos_id is not None:
        ids = torch.cat([torch.full((len(ids), 1), bos_id), ids], 1)
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                adapter.model(input_ids=ids[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    start = 1 if bos_id is not None else 0
    return {layer: torch.cat(a)[:, start:].numpy() for layer, a in acts.items()}


def as_half(values: np.ndarray) -> np.ndarray:
    """float32 activations as the graph keeps them: clipped to float16's range, rounded to it."""
    return np.clip(values, -65504, 65504).astype(np.float16).astype(np.float32)


def rows_of(records, kind: str) -> dict[int, list[tuple]]:
    """kind's records as {neuron: [(rank, window, max, position, activations), ...]} in rank order."""
    sub = records[records["kind"] == kind].sort_values(["index", "rank"])
    out: dict[int, list[tuple]] = {}
    for r in sub.itertuples():
        out.setdefault(r.index, []).append((r.rank, r.window, r.max, r.position, list(r.activations)))
    return out


def assert_same_records(a, b) -> None:
    """Two LayerResults keep the same records, to the bit."""
    ra = a.records.sort_values(["kind", "index", "rank"]).reset_index(drop=True)
    rb = b.records.sort_values(["kind", "index", "rank"]).reset_index(drop=True)
    assert ra.drop(columns="activations").equals(rb.drop(columns="activations"))
    assert np.array_equal(np.stack(ra["activations"]), np.stack(rb["activations"]))


def assert_same_results(a, b) -> None:
    """Two LayerResults are identical, to the bit (statistics are merged in window-aligned groups)."""
    assert_same_records(a, b)
    assert a.stats.equals(b.stats)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family(request):
    return request.param


@pytest.mark.parametrize("bos_id", [None, 0])
def test_pass_equals_brute_force(family, bos_id):
    adapter = adapter_for(BUILDERS[family]())
    tokens = corpus()
    layers = list(range(adapter.n_layers))
    collector = run_activation_pass(adapter, tokens, bos_id, layers, CFG, batch_size=16)
    everything = all_activations(adapter, tokens, bos_id, 16)
    d = adapter.d_mlp
    win = np.arange(N_WINDOWS)
    for layer in layers:
        acts = everything[layer]  # [N, T, d]
        flat = acts.reshape(-1, d).astype(np.float64)
        res = collector.layer_results(layer)
        stats = res.stats.set_index("index")

        # statistics: exact over every window token (BOS excluded)
        assert (stats["n_tokens"] == N_WINDOWS * WINDOW).all()
        np.testing.assert_array_equal(stats["max_act"], flat.max(0))
        np.testing.assert_array_equal(stats["min_act"], flat.min(0))
        np.testing.assert_array_equal(stats["density"], (flat > 0).mean(0))
        # mean and variance: float32 sums within a window, float64 across windows
        assert (np.abs(stats["mean_act"] - flat.mean(0)) <= 1e-7 * flat.std(0)).all()
        np.testing.assert_allclose(stats["var_act"], flat.var(0), rtol=1e-6, atol=0)

        wmax = acts.max(1)  # [N, d]
        top = rows_of(res.records, "top")
        rnd = rows_of(res.records, "random")
        random_keys = sample_keys(CFG.seed, "random", layer, d, win)
        for n in range(d):
            # top: the k largest window maxima, ties to the lower window index
            order = np.lexsort((win, -wmax[:, n]))[: CFG.top_k]
            assert [r[1] for r in top[n]] == order.tolist()
            for rank, w, mx, pos, values in top[n]:
                # float16, as the graph stores them (numpy's rounding, not the pass's torch one)
                assert values == as_half(acts[w, :, n]).tolist()
                assert len(values) == WINDOW
                assert mx == wmax[w, n] and pos == int(np.argmax(acts[w, :, n]))
            # random: the windows with the largest keys, largest first
            keys = random_keys[:, n]
            assert [r[1] for r in rnd[n]] == np.argsort(-keys)[: CFG.n_random].tolist()
            for _, w, mx, pos, values in rnd[n]:
                assert values == as_half(acts[w, :, n]).tolist()
                assert mx == wmax[w, n] and pos == int(np.argmax(acts[w, :, n]))

        check_quantiles(res, acts, layer)


def check_quantiles(res, acts: np.ndarray, layer: int) -> None:
    d = acts.shape[2]
    wmax = acts.max(1)
    win = np.arange(len(acts))
    stats = res.stats.set_index("index")
    boundary_keys = sample_keys(CFG.seed, "boundary", layer, d, win)
    quantile_keys = sample_keys(CFG.seed, "quantile", layer, d, win)
    for n in range(d):
        # boundaries: exact outer edges; inner edges = quantiles of the boundary sample's maxima
        bkeys = boundary_keys[:, n]
        sample = wmax[np.argsort(-bkeys)[: CFG.boundary_sample], n].astype(np.float64)
        q = np.arange(1, CFG.n_quantiles) / CFG.n_quantiles
        expected = [float(wmax[:, n].min()), *np.quantile(sample, q).tolist(), float(wmax[:, n].max())]
        edges = stats.loc[n, "quantile_boundaries"]
        np.testing.assert_allclose(edges, expected, rtol=0, atol=0)

        # records: per bin, the largest-key members of the reservoir (the top-R quantile keys)
        qkeys = quantile_keys[:, n]
        reservoir = np.argsort(-qkeys)[: CFG.reservoir]
        bins_all = np.searchsorted(np.asarray(edges[1:-1]), wmax[:, n], side="right")
        sub = res.records[(res.records["index"] == n) & res.records["kind"].str.startswith("quantile_")]
        for j in range(CFG.n_quantiles):
            got = sub[sub["kind"] == f"quantile_{j}"].sort_values("rank")
            members = [w for w in reservoir if bins_all[w] == j]  # already in key order
            assert got["window"].tolist() == members[: CFG.per_quantile]
            assert got["rank"].tolist() == list(range(len(got)))
            lo, hi = edges[j], edges[j + 1]
            assert ((got["max"] >= lo) & ((got["max"] < hi) if j < CFG.n_quantiles - 1 else (got["max"] <= hi))).all()
            for r in got.itertuples():
                assert list(r.activations) == as_half(acts[r.window, :, n]).tolist()
                assert r.max == wmax[r.window, n] and r.position == int(np.argmax(acts[r.window, :, n]))
            # The claim the docs make: with enough reservoir members in a bin, the records are
            # exactly the bin's largest-key windows over the whole corpus.
            if len(members) >= CFG.per_quantile:
                in_bin = np.flatnonzero(bins_all == j)
                best = in_bin[np.argsort(-qkeys[in_bin])][: CFG.per_quantile]
                assert got["window"].tolist() == best.tolist()


def pin_neurons(adapter, tokens: np.ndarray) -> list:
    """Make every layer's neurons read what one reference forward (one batch) computed for each
    window, whatever batch the window comes in; returns the hook handles to remove."""
    reference = {layer: torch.from_numpy(a) for layer, a in all_activations(adapter, tokens, None, len(tokens)).items()}
    row_of = {row.tobytes(): i for i, row in enumerate(tokens)}
    batch: list[int] = []

    def see_batch(module, args, kwargs):
        batch[:] = [row_of[row.numpy().tobytes()] for row in kwargs["input_ids"]]

    handles = [adapter.model.register_forward_pre_hook(see_batch, with_kwargs=True)]
    for layer in range(adapter.n_layers):
        handles.append(adapter.neuron_module(layer).register_forward_pre_hook(
            lambda module, args, layer=layer: (reference[layer][batch], *args[1:]), prepend=True))
    return handles


def test_results_do_not_depend_on_batch_size():
    # The CPU forward itself is not bitwise batch-invariant on every CPU and thread count (matrix
    # kernels may round differently for another number of rows), so the neurons are pinned to
    # one reference forward: any difference left is the pass's own.
    adapter = adapter_for(tiny_llama())
    tokens = corpus()
    handles = pin_neurons(adapter, tokens)
    try:
        runs = [run_activation_pass(adapter, tokens, None, [0, 1], CFG, batch_size=bs) for bs in (5, 7, 64, N_WINDOWS)]
    finally:
        for h in handles:
            h.remove()
    for other in runs[1:]:
        for layer in (0, 1):
            assert_same_results(runs[0].layer_results(layer), other.layer_results(layer))


def test_dense_merge_equals_sparse_merge():
    # CUDA uses the dense merge; check it on CPU against the sparse one.
    adapter = adapter_for(tiny_gpt2())
    tokens = corpus()
    out = []
    for sparse in (True, False):
        c = ActivationCollector(adapter, [1, 0], WINDOW, CFG, bos_id=None, n_windows=N_WINDOWS)
        c._sparse = sparse
        for start in range(0, N_WINDOWS, 16):
            c.process(tokens[start:start + 16], start)
        out.append(c)
    for layer in (0, 1):
        assert_same_results(out[0].layer_results(layer), out[1].layer_results(layer))


class Killed(Exception):
    pass


def test_killed_run_resumes_exactly(tmp_path):
    adapter = adapter_for(tiny_llama())
    tokens = corpus()
    path = tmp_path / "run" / "acts.pt"
    # A clock that advances 25 s per batch: a checkpoint is due after batch 3 (75 s >= 60 s).
    now = [0.0]
    seen: list[int] = []

    def die_after_five_batches(n_tokens: int) -> None:
        now[0] += 25.0
        seen.append(n_tokens)
        if len(seen) == 5:
            raise Killed

    with pytest.raises(Killed):
        run_activation_pass(adapter, tokens, 0, [0, 1], CFG, batch_size=8, checkpoint_path=path,
                            checkpoint_seconds=60, progress=die_after_five_batches, clock=lambda: now[0])
    state = torch.load(path, weights_only=True)
    assert state["collector"]["windows_done"] == 24  # saved after batch 3 only: 100 s - 75 s < 60 s at batch 4

    resumed_progress: list[int] = []
    resumed = run_activation_pass(adapter, tokens, 0, [0, 1], CFG, batch_size=8, checkpoint_path=path,
                                  checkpoint_seconds=0, progress=resumed_progress.append)
    assert resumed_progress[0] == 24 * WINDOW and sum(resumed_progress) == tokens.size
    assert not path.with_name(path.name + ".tmp").exists()
    whole = run_activation_pass(adapter, tokens, 0, [0, 1], CFG, batch_size=8)
    for layer in (0, 1):
        assert_same_results(resumed.layer_results(layer), whole.layer_results(layer))


def test_state_dict_round_trip_in_a_new_collector(tmp_path):
    adapter = adapter_for(tiny_gpt2())
    tokens = corpus()
    first = ActivationCollector(adapter, [0, 1], WINDOW, CFG, bos_id=None, n_windows=N_WINDOWS)
    for start in range(0, 48, 16):
        first.process(tokens[start:start + 16], start)
    torch.save(first.state_dict(), tmp_path / "s.pt")
    second = ActivationCollector(adapter, [0, 1], WINDOW, CFG, bos_id=None, n_windows=N_WINDOWS)
    second.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert second.windows_done == 48
    for start in range(48, N_WINDOWS, 16):
        second.process(tokens[start:start + 16], start)
    whole = run_activation_pass(adapter, tokens, None, [0, 1], CFG, batch_size=16)
    for layer in (0, 1):
        assert_same_results(second.layer_results(layer), whole.layer_results(layer))


def test_checkpoint_of_another_run_is_refused(tmp_path):
    adapter = adapter_for(tiny_llama())
    tokens = corpus()
    path = tmp_path / "acts.pt"
    run_activation_pass(adapter, tokens, 0, [0, 1], CFG, checkpoint_path=path)
    with pytest.raises(IngestError, match="another run .*cfg"):
        run_activation_pass(adapter, tokens, 0, [0, 1], RecordConfig(seed=1), checkpoint_path=path)
    with pytest.raises(IngestError, match="another run .*layers"):
        run_activation_pass(adapter, tokens, 0, [1], CFG, checkpoint_path=path)
    with pytest.raises(IngestError, match="another corpus"):
        run_activation_pass(adapter, corpus(seed=1), 0, [0, 1], CFG, checkpoint_path=path)


def test_checkpoint_of_an_older_format_is_refused(tmp_path):
    """Format 4 kept the planned samples in [d, k] slots; format 5 keeps them in window order,
    so a format-4 checkpoint must not be loaded into the new buffers."""
    from ingest.activations.collector import CHECKPOINT_FORMAT

    adapter = adapter_for(tiny_llama())
    tokens = corpus()
    path = tmp_path / "acts.pt"
    run_activation_pass(adapter, tokens, 0, [0, 1], CFG, batch_size=8, checkpoint_path=path, checkpoint_seconds=0)
    state = torch.load(path, weights_only=True)
    assert state["collector"]["format"] == CHECKPOINT_FORMAT
    state["collector"]["format"] = CHECKPOINT_FORMAT - 1
    torch.save(state, path)
    with pytest.raises(IngestError, match=f"format {CHECKPOINT_FORMAT - 1}, expected {CHECKPOINT_FORMAT}"):
        run_activation_pass(adapter, tokens, 0, [0, 1], CFG, checkpoint_path=path)
    assert path.exists()  # refused, not deleted: the message says to delete it


def test_bos_position_is_ignored():
    adapter = adapter_for(tiny_llama())
    tokens = corpus(n=20)
    res = run_activation_pass(adapter, tokens, 0, [0], CFG, batch_size=len(tokens)).layer_results(0)
    assert (res.stats["n_tokens"] == tokens.size).all()
    assert (res.records["activations"].map(len) == WINDOW).all()
    # Position 0 (the BOS) would change the statistics of some neurons if it were counted.
    ids = torch.cat([torch.zeros((len(tokens), 1), dtype=torch.int64), torch.from_numpy(tokens)], 1)
    seen: list[torch.Tensor] = []
    h = adapter.neuron_module(0).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.inference_mode():
        adapter.model(input_ids=ids, use_cache=False)
    h.remove()
    acts = seen[0].numpy()
    d = adapter.d_mlp
    own, everything = acts[:, 1:].reshape(-1, d).astype(np.float64), acts.reshape(-1, d).astype(np.float64)
    assert np.array_equal(res.stats["max_act"], own.max(0))
    np.testing.assert_allclose(res.stats["mean_act"], own.mean(0), rtol=1e-5, atol=1e-9)
    assert not np.allclose(res.stats["mean_act"], everything.mean(0), rtol=1e-3, atol=0)


def test_windows_must_come_in_order():
    adapter = adapter_for(tiny_llama())
    c = ActivationCollector(adapter, [0], WINDOW, CFG, bos_id=None, n_windows=N_WINDOWS)
    with pytest.raises(IngestError, match="in order"):
        c.process(corpus(n=4), 4)
    with pytest.raises(IngestError, match=r"shape \[batch, 12\]"):
        c.process(corpus(n=4, window=5), 0)


def test_bfloat16_pass_runs():
    adapter = adapter_for(tiny_llama())
    tokens = corpus(n=40)
    res = run_activation_pass(adapter, tokens, 0, [0, 1], CFG, dtype=torch.bfloat16, batch_size=16).layer_results(1)
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    assert (res.stats["n_tokens"] == tokens.size).all()
    assert np.isfinite(res.stats[["max_act", "min_act", "mean_act", "var_act"]].to_numpy()).all()
    top = res.records[res.records["kind"] == "top"]
    assert len(top) == adapter.d_mlp * CFG.top_k
    # every stored value is a bf16 value, and the record max is the list's max
    values = np.array(top["activations"].tolist(), dtype=np.float32)
    assert np.array_equal(torch.from_numpy(values).bfloat16().float().numpy(), values)
    assert np.array_equal(values.max(1), top["max"].to_numpy(dtype=np.float32))
    maxima = res.stats.set_index("index")["max_act"]
    assert np.array_equal(top[top["rank"] == 0].set_index("index")["max"].sort_index(), maxima)


def test_sample_keys_are_distinct_and_independent_per_stream():
    w = np.arange(5000)
    keys = sample_keys(0, "random", 3, 8, w)
    assert keys.shape == (5000, 8) and keys.dtype == np.int64
    assert all(len(np.unique(keys[:, n])) == 5000 for n in range(8))
    assert not np.array_equal(keys, sample_keys(0, "quantile", 3, 8, w))
    assert not np.array_equal(keys, sample_keys(0, "random", 4, 8, w))
    assert not np.array_equal(keys, sample_keys(1, "random", 3, 8, w))
    # roughly uniform: every neuron's top-10% by key is about 10% of every window range
    top = np.argsort(-keys, axis=0)[:500]
    assert np.all(np.abs((top < 2500).mean(0) - 0.5) < 0.1)
    # keys of a window do not depend on which other windows are asked for
    assert np.array_equal(sample_keys(0, "random", 3, 8, w[1234:1240]), keys[1234:1240])


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_plan_windows_is_the_largest_keys_in_order(chunk):
    keys = sample_keys(3, "random", 2, 16, np.arange(150))
    for k in (1, 5, 40):
        plan = plan_windows(3, "random", 2, 16, 150, k, chunk=chunk)
        assert np.array_equal(plan, np.argsort(-keys, axis=0)[:k].T)
    short = plan_windows(3, "random", 2, 16, 3, 5, chunk=chunk)  # fewer windows than k: padded
    assert np.array_equal(short[:, :3], np.argsort(-keys[:3], axis=0).T) and (short[:, 3:] == -1).all()


def test_records_can_be_switched_off():
    adapter = adapter_for(tiny_gpt2())
    cfg = RecordConfig(top_k=3, n_random=0, n_quantiles=0)
    res = run_activation_pass(adapter, corpus(n=40), None, [1], cfg).layer_results(1)
    assert set(res.records["kind"]) == {"top"}
    assert (res.stats["quantile_boundaries"].map(len) == 0).all()
    with pytest.raises(IngestError, match="per_quantile"):
        RecordConfig(per_quantile=0)


def test_partial_results_of_a_planned_pass_hold_only_windows_seen():
    adapter = adapter_for(tiny_llama())
    tokens = corpus()
    c = ActivationCollector(adapter, [0], WINDOW, CFG, bos_id=None, n_windows=N_WINDOWS)
    for start in range(0, 100, 20):
        c.process(tokens[start:start + 20], start)
    res = c.layer_results(0)
    assert res.records["window"].max() < 100
    assert (res.stats["n_tokens"] == 100 * WINDOW).all()
    assert (res.stats["quantile_boundaries"].map(len) == CFG.n_quantiles + 1).all()
    with pytest.raises(IngestError, match="past the end"):
        c.process(tokens[:60], 100)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_window_pass_keeps_the_bytes_float32_would_store(compiled):
    """The pass rounds record activations to float16 (torch) where the stage used to round the
    float32 values when encoding them (numpy, kb.records): the stored strings must not change.
    Includes values past float16's range, subnormals, exact ties and negative zero. The same
    pass gives each window's statistics partials, checked against numpy, compiled or not."""
    from ingest.activations.fused import MAX, MIN, POS, SQ, SUM, Scratch, WindowPass
    from kb.records import encode_activations_array

    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal((200, 64)) * 10.0 ** rng.integers(-9, 6, (200, 1)),
        np.array([[70000.0, -70000.0, 65504.0, 65520.0, 1e-8, -1e-8, 6e-8, 2.0**-24 * 1.5, -0.0]
                  + [1.0 + 2.0**-11] * 55]),  # 1 + 2^-11 lies halfway between two float16 values
        np.zeros((1, 64)), -np.ones((1, 64)), np.full((1, 64), 1e6),  # ties everywhere: the first is the max's
    ]).astype(np.float32)
    batch, d = 2, len(values) // 2  # window b's neuron n is row b * d + n
    x = torch.from_numpy(values.reshape(batch, d, 64).transpose(0, 2, 1).copy())  # [batch, tokens, d]
    part, half = torch.empty((5, batch, d)), torch.empty((batch, d, 64), dtype=torch.float16)
    position = torch.empty((batch, d), dtype=torch.int32)
    fold = WindowPass(compiled, Scratch(torch.device("cpu")))
    with torch.inference_mode():
        fold(x, part, half, position)
    assert fold.compiled == compiled
    half = half.view(-1, 64).numpy()
    assert encode_activations_array(half.astype(np.float32)).equals(encode_activations_array(values))
    assert np.array_equal(half.view(np.uint16), np.clip(values, -65504, 65504).astype(np.float16).view(np.uint16))
    part = part.view(5, -1).numpy()
    assert np.array_equal(part[MAX], values.max(1)) and np.array_equal(part[MIN], values.min(1))
    assert np.array_equal(position.view(-1).numpy(), values.argmax(1))
    assert np.array_equal(part[POS], (values > 0).sum(1))
    exact = values.astype(np.float64)
    scale = np.abs(exact).sum(1)
    assert np.all(np.abs(part[SUM] - exact.sum(1)) <= 1e-6 * scale)
    centred = (exact - (part[SUM] / np.float32(64)).astype(np.float64)[:, None]) ** 2
    assert np.all(np.abs(part[SQ] - centred.sum(1)) <= 1e-5 * centred.sum(1) + 1e-30)


def test_compiled_window_pass_equals_eager_on_real_shapes():
    """The compiled kernel and the eager function agree: the same bits for everything but the
    sums, which agree to float32 rounding; a bfloat16 input is read as float32 by both. A NaN
    is the max of its window and its first one the position, as torch.max has it; so is a
    window's first infinity."""
    from ingest.activations.fused import MAX, SQ, SUM, Scratch, WindowPass

    rng = np.random.default_rng(1)
    for dtype in (torch.float32, torch.bfloat16):
        full = torch.from_numpy(rng.standard_normal((5, 65, 96)).astype(np.float32)).to(dtype)
        full[0, [12, 30], 3] = float("nan")  # tokens 11 and 29 of the window (the BOS is cut)
        full[1, 21:, 4] = float("inf")
        x = full[:, 1:]  # the hook's BOS slice: a strided view
        outs = []
        for compiled in (True, False):
            out = (torch.empty((5, 5, 96)), torch.empty((5, 96, 64), dtype=torch.float16),
                   torch.empty((5, 96), dtype=torch.int32))
            with torch.inference_mode():
                WindowPass(compiled, Scratch(torch.device("cpu")))(x, *out)
            outs.append(out)
        (pc, hc, qc), (pe, he, qe) = outs
        assert torch.equal(qc, qe)
        torch.testing.assert_close(hc, he, rtol=0, atol=0, equal_nan=True)  # a NaN's bits may differ (0xFFFF compiled, 0x7E00 eager)
        assert qc[0, 3] == 11 and qc[1, 4] == 20 and pc[MAX, 0, 3].isnan() and pc[MAX, 1, 4] == float("inf")
        exact = [i for i in range(5) if i not in (SUM, SQ)]
        torch.testing.assert_close(pc[exact], pe[exact], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(pc[[SUM, SQ]], pe[[SUM, SQ]], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_window_pass_runs_eagerly_where_compiling_fails(tmp_path):
    """No C++ compiler (and no cached build): one warning, then the same results from the eager
    function. A subprocess, so that the compiler setting and the empty cache are its own."""
    code = (
        "import torch\n"
        "from ingest.activations.fused import Scratch, WindowPass\n"
        "x = torch.randn(2, 8, 16)\n"
        "out = (torch.empty(5, 2, 16), torch.empty(2, 16, 8, dtype=torch.float16), torch.empty(2, 16, dtype=torch.int32))\n"
        "fold = WindowPass(True, Scratch(torch.device('cpu')))\n"
        "fold(x, *out)\n"
        "print('compiled' if fold.compiled else 'eager', torch.equal(out[0][0], x.amax(1)))\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["eager", "True"]
    warning = [line for line in done.stderr.splitlines() if "compiling the activation pass's kernel failed" in line]
    assert len(warning) == 1 and "Traceback" not in done.stderr


def test_compiled_and_eager_passes_keep_the_same_records(monkeypatch):
    """The pass compiles its kernel on CPU unless NKB_COMPILE=0; both keep the same records to
    the bit, and the same statistics up to the rounding of the window sums."""
    adapter = adapter_for(tiny_llama())
    tokens = corpus()
    runs = []
    for setting in (None, "0"):
        if setting is None:
            monkeypatch.delenv("NKB_COMPILE", raising=False)
        else:
            monkeypatch.setenv("NKB_COMPILE", setting)
        c = ActivationCollector(adapter, [1, 0], WINDOW, CFG, bos_id=0, n_windows=N_WINDOWS)
        for start in range(0, N_WINDOWS, 16):
            c.process(tokens[start:start + 16], start)
        runs.append(c)
    assert runs[0]._window_pass.compiled and not runs[1]._window_pass.compiled
    for layer in (0, 1):
        a, b = runs[0].layer_results(layer), runs[1].layer_results(layer)
        assert_same_records(a, b)
        exact = ["index", "max_act", "min_act", "density", "n_tokens", "quantile_boundaries"]
        assert a.stats[exact].equals(b.stats[exact])
        for column in ("mean_act", "var_act"):
            np.testing.assert_allclose(a.stats[column], b.stats[column], rtol=1e-6, atol=1e-9)
