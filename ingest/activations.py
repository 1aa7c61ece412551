"""Streaming activation records and per-neuron statistics: one forward pass serves every layer.

A forward pre-hook on each requested layer's MLP output projection sees all of that layer's
neurons at once ([batch, tokens, d_mlp]); the hook folds the batch into small fixed-size
per-neuron buffers and lets the activations go. Nothing proportional to the corpus is ever
held, and the forward stops after the last requested layer (later layers and the LM head would
be wasted work).

What is kept per neuron, and how exact it is
--------------------------------------------
Every record selection is "the k windows with the largest int64 key", with different keys.
Keys are distinct per neuron, so each selection is a strict total order: no ties, and no
dependence on batch size, batch composition, device or resumes.

- **Statistics** (exact): max, min, mean, population variance, density (fraction of tokens
  > 0) and n_tokens over every window token (BOS excluded). Per-window maxima, minima, sums,
  centred sums of squares and positive counts are reduced in float32 over one window, then
  merged in float64 with Chan's parallel formulas (no E[x^2] - E[x]^2 cancellation), in
  groups of ``_GROUP`` consecutive windows aligned to window indices: the arithmetic, and so
  every bit of the result, is the same whatever the batch size and wherever a run resumed.
- **top** (exact): the ``top_k`` windows with the largest per-window max activation; ties go
  to the lower window index. Key = (order-preserving bits of the float32 max) << 32 |
  (2^32 - 1 - window).
- **random** (exact uniform sample without replacement): bottom-k / priority sampling. Each
  (layer, neuron, window) has a pseudo-random 64-bit key from a counter-based hash
  (``sample_keys``: splitmix64 of the seed, stream, layer, neuron and window index); the
  ``n_random`` windows with the largest keys are the sample.
- **quantile_<j>** (boundaries estimated; membership exact given them), in the style of
  OpenAI's neuron records: windows are binned by their max activation into ``n_quantiles``
  equal-mass bins, j = 0 the lowest, and ``per_quantile`` windows are sampled per bin. Two
  samples do it in one pass, each with its own independent key stream:

  * a *boundary sample*: the maxima of the ``boundary_sample`` (M) largest-key windows, a
    uniform sample of window maxima. The inner bin edges are its quantiles at
    j / n_quantiles (numpy's default linear interpolation): *estimated*, and exact when the
    corpus has at most M windows. The outer edges are exact: the smallest window max and
    max_act. Bin j is [edge_j, edge_j+1), the last bin closed.
  * a *record reservoir*: the ``reservoir`` (R) largest-key windows, with activations. Bin
    j's records are its members in bin j with the largest keys. As the reservoir is the top-R
    of the same keys, these are *exactly* the ``per_quantile`` largest-key windows of the
    whole corpus in bin j (an exact uniform sample of the bin) whenever the reservoir holds
    at least ``per_quantile`` members of bin j; otherwise the bin gets the fewer it holds
    (probability about 1e-5 per bin at the defaults: Binomial(64, 0.2) < 2).

Records keep the neuron's activation at every window token (``window`` values, aligned with
the Snippet's token_ids) in float32, the dtype the statistics and selections are computed in:
a record's ``max`` and ``position`` come from exactly the kept values, so they agree with the
per-window max that chose the record and with each other; fp16 would overflow on LLMs' "massive
activations" (thousands) and bf16's 8-bit mantissa would create false ties and move argmaxes.
Whatever encoding the graph stores (``kb.records``) is then applied once, at write time. The cost
is bounded and known in advance (``buffer_bytes``: 52 MB per layer for SmolLM2-135M at window 64
and the defaults, half of it the quantile reservoir; 1.6 GB for all 30 layers in one pass).

Hot path
--------
Sampling keys do not depend on the activations, so when the corpus size is known
(``run_activation_pass`` always knows it) the random and quantile samples are *planned*
before the pass: each neuron's windows are fixed, and the hook only copies their activations
as their batch goes by. Only the top records need selection during the pass; on CPU the hook
gathers the (window, neuron) pairs that beat the neuron's current k-th max and merges them in
bulk once per group of windows (or earlier, when many are waiting); on CUDA a dense merge runs
every batch, because a sparse one would synchronise the device at every ``nonzero``. On CPU
the hook's own work runs on one thread: it is a few dozen small operations per layer, and on
a busy machine every multi-threaded one can wait a scheduler time slice for its second
thread, which costs far more than the parallelism saves.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from kb.errors import IngestError

_INT64_MIN = -(2**63)
_U64 = np.uint64
_GAMMA = _U64(0x9E3779B97F4A7C15)  # splitmix64's increment: odd, so w -> w * GAMMA is a bijection
_MIX1, _MIX2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_SIGN = _U64(1 << 63)
_STREAMS = {"random": 1, "quantile": 2, "boundary": 3}  # one independent key stream per sample
_CHECKPOINT_FORMAT = 2
# Windows per statistics group. Groups are aligned to window indices, so the float64 merge
# order never depends on the batch size; 128 windows of partials are ~4 MB per layer at d=1536.
_GROUP = 128
_MAX_WINDOWS = 2**31 - 1  # int32 window indices in the sample plans


@dataclass(frozen=True)
class RecordConfig:
    """Which records to keep per neuron; ``reservoir`` and ``boundary_sample`` size the
    quantile machinery (see the module docstring)."""

    top_k: int = 20
    n_random: int = 10
    n_quantiles: int = 5
    per_quantile: int = 2
    seed: int = 0
    reservoir: int = 64
    boundary_sample: int = 512

    def __post_init__(self) -> None:
        for name in ("top_k", "n_random", "n_quantiles", "per_quantile", "reservoir", "boundary_sample"):
            if getattr(self, name) < 0:
                raise IngestError(f"record setting {name} must be >= 0, got {getattr(self, name)}")
        bad = self.per_quantile < 1 or self.reservoir < self.per_quantile or self.boundary_sample < 1
        if self.n_quantiles and bad:
            raise IngestError(
                f"quantile records need per_quantile >= 1, reservoir >= per_quantile and boundary_sample >= 1 "
                f"(got {self.per_quantile}, {self.reservoir}, {self.boundary_sample})",
                "set n_quantiles=0 to keep no quantile records",
            )


@dataclass
class LayerResults:
    """One layer's statistics (one row per neuron) and records (one row per kept window).

    ``stats``: index, max_act, min_act, mean_act, var_act, density, n_tokens,
    quantile_boundaries (a list of n_quantiles + 1 edges). ``records``: index, window (row of
    the corpus windows), kind ("top" | "random" | "quantile_<j>"), rank (0 = first within the
    kind), max, position (of the first maximum), activations (float32 array of ``window``
    values, one per window token).
    """

    stats: pd.DataFrame
    records: pd.DataFrame


def _refuse(where: str) -> IngestError:
    return IngestError(f"activation checkpoint does not fit this run ({where})",
                       "delete the checkpoint to start the pass afresh")


# --------------------------------------------------------------------------------------------
# Keys


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on uint64 words; a bijection, so distinct inputs stay distinct."""
    z ^= z >> _U64(30)
    z *= _MIX1
    z ^= z >> _U64(27)
    z *= _MIX2
    z ^= z >> _U64(31)
    return z


def _salts(seed: int, stream: str, layers: list[int], d_mlp: int) -> np.ndarray:
    """[len(layers), d_mlp] uint64: one pseudo-random offset per (seed, stream, layer, neuron)."""
    # 1-element arrays, not numpy scalars: array arithmetic wraps silently, scalar arithmetic warns.
    base = _mix64(np.array([seed % 2**64], dtype=_U64) * _GAMMA + _U64(_STREAMS[stream]))
    per_layer = _mix64(base + (np.asarray(layers, dtype=_U64) + _U64(1)) * _GAMMA)
    return _mix64(per_layer[:, None] + (np.arange(d_mlp, dtype=_U64)[None, :] + _U64(1)) * _GAMMA)


def _keys_from_salts(salts: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """[..., len(windows), d_mlp] int64 keys for salts [..., d_mlp]."""
    w = (np.asarray(windows, dtype=_U64) + _U64(1)) * _GAMMA
    z = salts[..., None, :] + w[:, None]
    _mix64(z)
    # Flipping the top bit maps unsigned order onto signed order, so int64 comparisons work.
    z ^= _SIGN
    return z.view(np.int64)


def sample_keys(seed: int, stream: str, layer: int, d_mlp: int, windows: np.ndarray) -> np.ndarray:
    """The sampling keys of ``windows`` for every neuron of ``layer``: int64 [len(windows), d_mlp].

    ``stream`` is "random" (random records), "quantile" (the quantile record reservoir) or
    "boundary" (the sample of window maxima that estimates the quantile boundaries). A
    sample is exactly the windows with the largest keys. Keys are distinct across windows
    for a given neuron (splitmix64 of a per-neuron offset plus window * an odd constant is a
    bijection of the window index), and a window's key depends on nothing but these arguments.
    """
    return _keys_from_salts(_salts(seed, stream, [layer], d_mlp)[0], np.asarray(windows))


def plan_windows(seed: int, stream: str, layer: int, d_mlp: int, n_windows: int, k: int,
                 chunk: int = 8192, ordered: bool = True) -> np.ndarray:
    """[d_mlp, k] int64: per neuron, the windows of ``0 .. n_windows - 1`` with the ``k`` largest
    ``sample_keys``, largest key first unless not ``ordered`` (-1 pads when there are fewer
    than k windows)."""
    out = np.full((d_mlp, k), -1, dtype=np.int64)
    if k == 0 or n_windows == 0:
        return out
    salt = _salts(seed, stream, [layer], d_mlp)[0]
    best_key = best_win = None
    for start in range(0, n_windows, chunk):
        w = np.arange(start, min(n_windows, start + chunk))
        key = torch.from_numpy(_keys_from_salts(salt, w)).T  # [d, c]
        win = torch.from_numpy(w)[None, :].expand(key.shape)
        if best_key is not None:
            key, win = torch.cat([best_key, key], 1), torch.cat([best_win, win], 1)
        if key.shape[1] <= k:  # everything seen so far is in the sample
            best_key, best_win = key, win
            continue
        best_key, idx = key.topk(k, dim=1, sorted=False)
        best_win = win.gather(1, idx)
    if ordered:
        best_key, idx = best_key.sort(dim=1, descending=True)
        best_win = best_win.gather(1, idx)
    out[:, : best_win.shape[1]] = best_win.numpy()
    return out


def _value_keys(values: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering (value desc, window asc); ``values`` float32 and ``windows`` broadcast together."""
    # + 0.0 turns -0.0 into +0.0: equal as floats, not as bit patterns.
    bits = (values + 0.0).view(torch.int32).to(torch.int64)
    # IEEE floats order like sign-magnitude integers: flip the magnitude bits of negatives.
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered << 32) | (0xFFFFFFFF - windows)


def _key_values(keys: torch.Tensor) -> torch.Tensor:
    """The float32 value inside ``_value_keys`` keys; -inf for empty slots."""
    ordered = keys >> 32
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(torch.int32)
    return torch.where(keys == _INT64_MIN, -torch.inf, bits.view(torch.float32))


# --------------------------------------------------------------------------------------------
# Record buffers


class _Keep:
    """Per neuron, the ``k`` entries with the largest keys seen so far, with their windows and payloads.

    Slots are unordered and never move: a merge writes only the slots it evicts, so merging a
    few new windows into many neurons touches a few rows of activations, not all of them.
    Empty slots hold key INT64_MIN and window -1; ``smallest`` caches each row's smallest key.
    ``merge_pairs`` takes any number of candidates for any neurons at once (the CPU path);
    ``merge_dense`` takes one candidate per neuron per window of a batch with no host
    synchronisation (the CUDA path).
    """

    def __init__(self, d: int, k: int, payload: tuple[int, ...] | None, device: torch.device):
        self.k = k
        self.key = torch.full((d, k), _INT64_MIN, dtype=torch.int64, device=device)
        self.window = torch.full((d, k), -1, dtype=torch.int64, device=device)
        # Payloads of empty slots are never read: no need to clear them.
        self.payload = None if payload is None else torch.empty((d, k, *payload), dtype=torch.float32, device=device)
        self.smallest = torch.full((d,), _INT64_MIN, dtype=torch.int64, device=device)  # a candidate must beat it

    def merge_pairs(self, neuron: torch.Tensor, key: torch.Tensor, window: torch.Tensor,
                    payload: torch.Tensor | None) -> None:
        """Fold in P candidates: ``neuron``, ``key``, ``window`` [P], ``payload`` [P, ...]."""
        if self.k == 0 or neuron.numel() == 0:
            return
        k, dev = self.k, neuron.device
        neuron, order = torch.sort(neuron, stable=True)
        rows, counts = torch.unique_consecutive(neuron, return_counts=True)
        n_rows, width = rows.numel(), int(counts.max())
        # Lay the candidates out as [rows, width], padded with empty keys.
        row_of = torch.repeat_interleave(torch.arange(n_rows, device=dev), counts)
        starts = torch.cumsum(counts, 0) - counts
        col_of = torch.arange(neuron.numel(), device=dev) - torch.repeat_interleave(starts, counts)
        cand_key = torch.full((n_rows, width), _INT64_MIN, dtype=torch.int64, device=dev)
        cand_key[row_of, col_of] = key[order]
        cand_src = torch.full((n_rows, width), -1, dtype=torch.int64, device=dev)
        cand_src[row_of, col_of] = order

        # The `width` smallest of the k + width entries leave. Keys are distinct except empty
        # ones, which are interchangeable: a padding entry that stays lands in an empty slot.
        comb = torch.cat([self.key[rows], cand_key], 1)
        drop = comb.topk(width, dim=1, largest=False, sorted=False).indices
        dropped = torch.zeros(comb.shape, dtype=torch.bool, device=dev).scatter_(1, drop, True)
        evict_r, evict_slot = dropped[:, :k].nonzero(as_tuple=True)
        take_r, take_c = (~dropped[:, k:]).nonzero(as_tuple=True)
        # Per row, as many slots leave as candidates stay, and nonzero lists both row-major, so
        # the i-th evicted slot takes the i-th staying candidate.
        n_idx = rows[evict_r]
        src = cand_src[take_r, take_c]
        real = src >= 0
        self.key[n_idx, evict_slot] = cand_key[take_r, take_c]
        self.window[n_idx, evict_slot] = torch.where(real, window[src.clamp(min=0)], -1)
        if self.payload is not None:
            self.payload[n_idx, evict_slot] = payload[src.clamp(min=0)]
        self.smallest[rows] = self.key[rows].amin(1)

    def merge_dense(self, key: torch.Tensor, windows: torch.Tensor, src: torch.Tensor | None) -> None:
        """Fold in a batch: ``key`` [B, d], ``windows`` [B], ``src`` [B, d, ...] every entry's payload."""
        if self.k == 0:
            return
        k = self.k
        top, idx = torch.cat([self.key, key.T], 1).topk(k, dim=1, sorted=False)
        from_buf = idx < k
        old, new = idx.clamp(max=k - 1), (idx - k).clamp(min=0)
        self.key = top
        window = torch.where(from_buf, self.window.gather(1, old), windows[new])
        self.window = torch.where(top == _INT64_MIN, -1, window)
        if self.payload is not None:
            view = (*idx.shape, *([1] * (self.payload.dim() - 2)))
            shape = (*idx.shape, *self.payload.shape[2:])
            kept = self.payload.gather(1, old.view(view).expand(shape))
            fresh = src.transpose(0, 1).gather(1, new.view(view).expand(shape))
            self.payload = torch.where(from_buf.view(view), kept, fresh)
        self.smallest = top.amin(1)

    def results(self, windows_done: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(window, payload, valid) on the CPU, each row in key order, largest first."""
        key = self.key.cpu().numpy()
        order = np.argsort(key, axis=1)[:, ::-1]  # keys are distinct; empty slots (INT64_MIN) last
        window = np.take_along_axis(self.window.cpu().numpy(), order, 1)
        payload = None
        if self.payload is not None:
            p = self.payload.cpu().numpy()
            payload = np.take_along_axis(p, order.reshape(*order.shape, *([1] * (p.ndim - 2))), 1)
        return window, payload, window >= 0

    def state(self) -> dict:
        out: dict = {"key": self.key.cpu(), "window": self.window.cpu()}
        if self.payload is not None:
            out["payload"] = self.payload.cpu()
        return out

    def load(self, state: dict, where: str) -> None:
        for name in ("key", "window", "payload"):
            if getattr(self, name) is not None:
                setattr(self, name, _restore(getattr(self, name), state.get(name), f"{where}.{name}"))
        self.smallest = self.key.amin(1)


class _Planned:
    """A sample decided before the pass: per neuron, a fixed list of ``k`` windows (``plan_windows``).

    The pass only copies each planned window's payload as its batch goes by. Planned entries
    are sorted by window, so a batch's share is one contiguous slice, found by a binary search
    on the host (no device synchronisation).
    """

    def __init__(self, plan: np.ndarray, payload: tuple[int, ...], device: torch.device):
        d, k = plan.shape
        self.k = k
        flat = torch.from_numpy(plan.reshape(-1).astype(np.int32))
        pos = torch.nonzero(flat >= 0).squeeze(1)
        # int32 halves the index memory (the boundary sample has d * 512 entries per layer); the
        # order within a window does not matter, and torch's integer sort is a fast radix sort.
        window, order = torch.sort(flat[pos])
        self._entry_window = window.numpy()
        self._entry_window_dev = window.to(device)
        self._entry_pos = pos[order].to(torch.int32).to(device)
        # Slots are read only once their window has been copied in: no need to clear them.
        self.payload = torch.empty((d, k, *payload), dtype=torch.float32, device=device)

    def add(self, first_window: int, batch: int, src: torch.Tensor) -> None:
        """Copy the payloads of planned windows ``first_window .. + batch - 1`` from ``src`` [B, d, ...]."""
        # int32 needles: int64 ones would make numpy convert the whole int32 haystack first.
        lo, hi = np.searchsorted(self._entry_window, np.array([first_window, first_window + batch], dtype=np.int32))
        if lo == hi:
            return
        pos = self._entry_pos[lo:hi]
        b = self._entry_window_dev[lo:hi] - first_window
        self.payload.view(-1, *self.payload.shape[2:])[pos] = src[b, pos // self.k]

    def results(self, windows_done: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d, k = self.payload.shape[:2]
        window = np.full(d * k, -1, dtype=np.int64)
        window[self._entry_pos.cpu().numpy()] = self._entry_window
        window = window.reshape(d, k)
        return window, self.payload.cpu().numpy(), (window >= 0) & (window < windows_done)

    def state(self) -> dict:
        return {"payload": self.payload.cpu()}

    def load(self, state: dict, where: str) -> None:
        self.payload = _restore(self.payload, state.get("payload"), f"{where}.payload")


def _restore(mine: torch.Tensor, theirs: torch.Tensor | None, where: str) -> torch.Tensor:
    if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != tuple(mine.shape):
        raise _refuse(where)
    return theirs.to(device=mine.device, dtype=mine.dtype).clone()


# --------------------------------------------------------------------------------------------
# Per-layer state

# Rows of the per-window partials: max, min, sum, sum of squares around the float32 window
# mean, count of positive tokens.
_MAX, _MIN, _SUM, _SQ, _POS = range(5)


class _LayerState:
    _TENSORS = ("mean", "m2", "positive", "max", "min", "min_window_max", "partials")
    _RECORDS = ("top", "random", "reservoir", "boundary")

    def __init__(self, layer: int, d: int, window: int, cfg: RecordConfig, device: torch.device,
                 n_windows: int | None):
        f64 = dict(dtype=torch.float64, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        # Totals over the groups folded so far (windows 0 .. folded - 1).
        self.mean = torch.zeros(d, **f64)
        self.m2 = torch.zeros(d, **f64)
        self.positive = torch.zeros(d, **f64)  # counts; exact in float64 up to 2^53 tokens
        self.max = torch.full((d,), -torch.inf, **f32)
        self.min = torch.full((d,), torch.inf, **f32)
        self.min_window_max = torch.full((d,), torch.inf, **f32)
        # Per-window partials of the current group, row = window % _GROUP.
        self.partials = torch.zeros((5, _GROUP, d), **f32)
        self.top = _Keep(d, cfg.top_k, (window,), device)
        self.top_bar = _key_values(self.top.smallest)  # float32 [d]: the k-th max, as of the last merge
        # Top-record candidates waiting for a bulk merge (CPU): (neuron, window, max, activations).
        self.waiting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.n_waiting = 0
        nq = cfg.n_quantiles > 0
        sizes = {"random": cfg.n_random, "quantile": cfg.reservoir if nq else 0,
                 "boundary": cfg.boundary_sample if nq else 0}
        payloads = {"random": (window,), "quantile": (window,), "boundary": ()}
        self.planned = n_windows is not None
        samples = {}
        for stream, k in sizes.items():
            if self.planned:
                # The boundary sample's order is never used: skip sorting 512 keys per neuron.
                plan = plan_windows(cfg.seed, stream, layer, d, n_windows, k, ordered=stream != "boundary")
                samples[stream] = _Planned(plan, payloads[stream], device)
            else:
                samples[stream] = _Keep(d, k, payloads[stream], device)
        self.random, self.reservoir, self.boundary = samples["random"], samples["quantile"], samples["boundary"]

    def state(self) -> dict:
        out: dict = {name: getattr(self, name).cpu() for name in self._TENSORS}
        out.update({name: getattr(self, name).state() for name in self._RECORDS})
        return out

    def load(self, state: dict, where: str) -> None:
        for name in self._TENSORS:
            setattr(self, name, _restore(getattr(self, name), state.get(name), f"{where}.{name}"))
        for name in self._RECORDS:
            part = state.get(name)
            if not isinstance(part, dict):
                raise _refuse(f"{where}.{name}")
            getattr(self, name).load(part, f"{where}.{name}")
        self.top_bar = _key_values(self.top.smallest)


def _fold(st: _LayerState, rows: int, tokens: int, n_before: int) -> tuple[torch.Tensor, ...]:
    """Totals after merging the first ``rows`` windows of ``st.partials`` into those of ``n_before`` tokens.

    Returns (mean, m2, positive, max, min, min_window_max) without touching ``st``.
    """
    if rows == 0:
        return st.mean, st.m2, st.positive, st.max, st.min, st.min_window_max
    p = st.partials[:, :rows]
    # The float32 mean each window was centred on, recomputed by the same operation.
    centre = (p[_SUM] / tokens).double()
    mean_w = p[_SUM].double() / tokens
    # Sum of squares around the window's exact mean: subtract the offset of the float32 centre.
    m2_w = p[_SQ].double() - tokens * (mean_w - centre).square()
    mean_g = mean_w.mean(0)
    m2_g = m2_w.sum(0) + tokens * (mean_w - mean_g).square().sum(0)
    n_g = rows * tokens
    n_all = n_before + n_g
    delta = mean_g - st.mean
    mean = st.mean + delta * (n_g / n_all)
    m2 = st.m2 + m2_g + delta.square() * (n_before * n_g / n_all)
    wmax = p[_MAX]
    return (mean, m2, st.positive + p[_POS].double().sum(0), torch.maximum(st.max, wmax.amax(0)),
            torch.minimum(st.min, p[_MIN].amin(0)), torch.minimum(st.min_window_max, wmax.amin(0)))


class _StopForward(Exception):
    """Raised by the last requested layer's hook: the rest of the forward pass is not needed."""


def buffer_bytes(d_mlp: int, window: int, cfg: RecordConfig) -> int:
    """Memory the collector holds per layer on its device (corpus size known), whatever that size."""
    acts = 4 * window  # float32 activations of one record
    q = cfg.n_quantiles > 0
    per_neuron = (
        cfg.top_k * (8 + 8 + acts)  # key, window, activations
        + (cfg.n_random + (cfg.reservoir if q else 0)) * (4 + 4 + acts)  # planned window and slot, activations
        + (cfg.boundary_sample if q else 0) * (4 + 4 + 4)  # planned window and slot, window max
        + 3 * 8 + 3 * 4  # totals
        + 5 * _GROUP * 4  # the current group's per-window partials
    )
    return d_mlp * per_neuron


# --------------------------------------------------------------------------------------------
# The collector


class ActivationCollector:
    """Folds batches of corpus windows into per-neuron statistics and records, for several layers at once.

    Windows must arrive in order: ``process(batch, first_window)`` with ``first_window ==
    windows_done``. With ``n_windows`` (the corpus size; ``run_activation_pass`` always passes
    it) the sampled records are planned before the pass and only copied during it; without,
    they are selected by streaming bottom-k merges. Both keep exactly the same windows; with a
    plan, results taken before all ``n_windows`` are processed hold only the planned windows
    seen so far. The model is moved to ``device`` and cast to ``dtype`` in place (like
    ``nn.Module.to``) if it is not there already.
    """

    def __init__(self, adapter, layers: list[int], window: int, cfg: RecordConfig, *, bos_id: int | None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, n_windows: int | None = None):
        layers = [int(layer) for layer in layers]
        if not layers:
            raise IngestError("no layers requested for the activation pass")
        if len(set(layers)) != len(layers):
            raise IngestError(f"layers requested twice in {layers}")
        for layer in layers:
            if not 0 <= layer < adapter.n_layers:
                raise IngestError(f"layer {layer} is out of range: the model has layers 0..{adapter.n_layers - 1}")
        if window < 1:
            raise IngestError(f"window must be >= 1 token, got {window}")
        if n_windows is not None and not 0 <= n_windows <= _MAX_WINDOWS:
            raise IngestError(f"n_windows must be in 0 .. {_MAX_WINDOWS}, got {n_windows}")
        self.adapter = adapter
        self.layers = layers
        self.window = int(window)
        self.cfg = cfg
        self.bos_id = None if bos_id is None else int(bos_id)
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_windows = None if n_windows is None else int(n_windows)
        self.windows_done = 0
        # CPU: sparse bulk merges, hook work on one thread (see the module docstring).
        # CUDA: dense merges that never synchronise; threads are irrelevant there.
        self._sparse = self.device.type == "cpu"
        self._hook_threads: int | None = 1 if self.device.type == "cpu" else None
        d = adapter.d_mlp
        self._wait_limit = max(4 * d, d * cfg.top_k // 2)  # candidate pairs held before a merge
        model = adapter.model
        param = next(model.parameters())
        if param.device != self.device or param.dtype != dtype:
            model.to(device=self.device, dtype=dtype)
        with torch.inference_mode(False):
            self._state = {layer: _LayerState(layer, d, self.window, cfg, self.device, self.n_windows)
                           for layer in layers}
        if self.n_windows is None:
            self._salts = {stream: _salts(cfg.seed, stream, layers, d) for stream in _STREAMS}
        self._scratch: dict[str, torch.Tensor] = {}
        self._batch_keys: dict[str, torch.Tensor] = {}

    # --- identity, for checkpoints -------------------------------------------------------
    def _identity(self) -> dict:
        a = self.adapter
        return {
            "layers": list(self.layers), "window": self.window, "bos_id": self.bos_id, "cfg": asdict(self.cfg),
            "model": {"architecture": a.name, "n_layers": int(a.n_layers), "d_mlp": int(a.d_mlp),
                      "d_model": int(a.d_model), "vocab_size": int(a.vocab_size)},
            "dtype": str(self.dtype).removeprefix("torch."),
            "n_windows": self.n_windows,
        }

    @property
    def n_tokens(self) -> int:
        """Corpus tokens folded in so far (BOS positions not counted)."""
        return self.windows_done * self.window

    # --- the hot path --------------------------------------------------------------------
    def _buffer(self, name: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        # Reused scratch: a fresh multi-MB tensor per layer per batch costs page faults.
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._scratch[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return buf

    def process(self, token_ids: np.ndarray, first_window: int) -> None:
        """Run windows ``first_window .. first_window + B - 1`` (``token_ids`` [B, window]) and fold them in."""
        ids = np.asarray(token_ids)
        if ids.ndim != 2 or ids.shape[1] != self.window or not np.issubdtype(ids.dtype, np.integer):
            raise IngestError(f"a batch must be integer token ids of shape [batch, {self.window}], "
                              f"got {ids.dtype} {list(ids.shape)}")
        if first_window != self.windows_done:
            raise IngestError(f"windows must be processed in order: expected window {self.windows_done} next, "
                              f"got {first_window}")
        batch = ids.shape[0]
        if batch == 0:
            return
        limit = self.n_windows if self.n_windows is not None else _MAX_WINDOWS
        if first_window + batch > limit:
            raise IngestError(f"windows {first_window}..{first_window + batch - 1} are past the end of the corpus "
                              f"({limit} windows)")
        self._begin_batch(first_window, batch)
        inputs = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        if self.bos_id is not None:
            inputs = torch.cat([torch.full((batch, 1), self.bos_id, dtype=torch.int64), inputs], 1)
        inputs = inputs.to(self.device)

        last = max(self.layers)
        handles = []
        for i, layer in enumerate(self.layers):
            def hook(module, args, i=i, layer=layer):
                self._observe(i, self._state[layer], args[0])
                if layer == last:
                    raise _StopForward
            handles.append(self.adapter.neuron_module(layer).register_forward_pre_hook(hook))
        try:
            with torch.inference_mode():
                self.adapter.model(input_ids=inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
            self._batch_keys = {}
        self.windows_done += batch

    def _begin_batch(self, first_window: int, batch: int) -> None:
        """The batch's window indices (and, without a plan, sampling keys) for all layers, before the forward."""
        self._first_window = first_window
        win_idx = np.arange(first_window, first_window + batch)
        self._batch_windows = torch.from_numpy(win_idx).to(self.device)
        if self.n_windows is None:
            self._batch_keys = {stream: torch.from_numpy(_keys_from_salts(salt, win_idx)).to(self.device)
                                for stream, salt in self._salts.items()}

    def _observe(self, i: int, st: _LayerState, x: torch.Tensor) -> None:
        threads = self._hook_threads
        if threads is None:
            self._observe_batch(i, st, x)
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            self._observe_batch(i, st, x)
        finally:
            torch.set_num_threads(before)

    def _observe_batch(self, i: int, st: _LayerState, x: torch.Tensor) -> None:
        """Fold one layer's activations [B, (1 +) window, d_mlp] into its state."""
        if self.bos_id is not None:
            x = x[:, 1:]  # the BOS position is an attention sink, not corpus text
        if x.dtype != torch.float32:
            x = self._buffer("x", x.shape, torch.float32).copy_(x)
        batch, tokens, d = x.shape
        first = self._first_window

        # Per-window partials, reduced over the token axis in float32 (at most `window` values).
        part = self._buffer("part", (5, batch, d), torch.float32)
        torch.amax(x, 1, out=part[_MAX])
        torch.amin(x, 1, out=part[_MIN])
        torch.sum(x, 1, out=part[_SUM])
        scratch = self._buffer("c", x.shape, torch.float32)
        torch.sub(x, (part[_SUM] / tokens)[:, None], out=scratch).square_()
        torch.sum(scratch, 1, out=part[_SQ])
        # A float 0/1 mask sums several times faster than a bool one; exact up to 2^24 tokens.
        torch.sum(torch.gt(x, 0, out=scratch), 1, out=part[_POS])
        self._stage(st, part, first, batch, tokens)

        wmax = part[_MAX]
        windows = self._batch_windows
        acts = x.permute(0, 2, 1)  # [B, d, T]: payloads are looked up per (window, neuron)
        if self._sparse:
            # Candidates beat the k-th max as of the last merge: a superset of the true ones.
            b, n = torch.nonzero(wmax > st.top_bar, as_tuple=True)
            if b.numel():
                st.waiting.append((n, windows[b], wmax[b, n], acts[b, n]))
                st.n_waiting += b.numel()
                if st.n_waiting > self._wait_limit:
                    self._merge_top(st)
        else:
            st.top.merge_dense(_value_keys(wmax, windows[:, None]), windows, acts)

        if st.planned:
            st.random.add(first, batch, acts)
            st.reservoir.add(first, batch, acts)
            st.boundary.add(first, batch, wmax)
        else:
            for stream, keep, src in (("random", st.random, acts), ("quantile", st.reservoir, acts),
                                      ("boundary", st.boundary, wmax)):
                keys = self._batch_keys[stream][i]
                if self._sparse:
                    b, n = torch.nonzero(keys > keep.smallest, as_tuple=True)
                    keep.merge_pairs(n, keys[b, n], windows[b], src[b, n])
                else:
                    keep.merge_dense(keys, windows, src)

    def _stage(self, st: _LayerState, part: torch.Tensor, first: int, batch: int, tokens: int) -> None:
        """Write a batch's per-window partials into the group rows, folding each group as it completes."""
        done = 0
        while done < batch:
            w = first + done
            row = w % _GROUP
            n = min(batch - done, _GROUP - row)
            st.partials[:, row:row + n] = part[:, done:done + n]
            done += n
            if row + n == _GROUP:
                # The group's windows are w - row .. w - row + _GROUP - 1; tokens before it:
                n_before = (w - row) * tokens
                st.mean, st.m2, st.positive, st.max, st.min, st.min_window_max = _fold(st, _GROUP, tokens, n_before)
                self._merge_top(st)  # refresh the candidate threshold once per group

    def _merge_top(self, st: _LayerState) -> None:
        if not st.waiting:
            return
        n, w, v, a = (torch.cat(parts) for parts in zip(*st.waiting))
        st.waiting, st.n_waiting = [], 0
        st.top.merge_pairs(n, _value_keys(v, w), w, a)
        st.top_bar = _key_values(st.top.smallest)

    def _settle(self) -> None:
        """Merge every waiting top candidate (results and checkpoints see complete buffers)."""
        with torch.inference_mode():
            for st in self._state.values():
                self._merge_top(st)

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume exactly, as CPU tensors and plain values (``torch.save``-able)."""
        self._settle()
        return {
            "format": _CHECKPOINT_FORMAT,
            "identity": self._identity(),
            "windows_done": self.windows_done,
            "layers": {layer: st.state() for layer, st in self._state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        found = state.get("format") if isinstance(state, dict) else None
        if found != _CHECKPOINT_FORMAT:
            raise IngestError(f"activation checkpoint has format {found!r}, expected {_CHECKPOINT_FORMAT}",
                              "delete the checkpoint to start the pass afresh")
        mine, theirs = self._identity(), state.get("identity")
        if theirs != mine:
            diff = sorted(k for k in mine if not isinstance(theirs, dict) or theirs.get(k) != mine[k])
            raise IngestError(f"activation checkpoint belongs to another run (differs in: {', '.join(diff)})",
                              "delete the checkpoint to start the pass afresh")
        layers = state.get("layers")
        with torch.inference_mode(False):
            for layer, st in self._state.items():
                if not isinstance(layers, dict) or not isinstance(layers.get(layer), dict):
                    raise _refuse(f"layer {layer}")
                st.load(layers[layer], f"layer {layer}")
        self.windows_done = int(state["windows_done"])

    # --- results -------------------------------------------------------------------------
    def layer_results(self, layer: int) -> LayerResults:
        """Statistics and records of one layer for the windows processed so far."""
        if layer not in self._state:
            raise IngestError(f"layer {layer} was not part of this activation pass (layers {self.layers})")
        self._settle()
        st, cfg, d = self._state[layer], self.cfg, self.adapter.d_mlp
        done, tokens = self.windows_done, self.window
        n = done * tokens
        # The current, incomplete group is merged into copies: the state is left as it was.
        with torch.inference_mode():
            rows = done % _GROUP
            mean, m2, positive, mx, mn, min_window_max = _fold(st, rows, tokens, (done - rows) * tokens)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = m2.cpu().numpy() / n
            density = positive.cpu().numpy() / n
        mx = mx.cpu().numpy().astype(np.float64)
        boundaries = self._boundaries(st, min_window_max.cpu().numpy().astype(np.float64), mx)
        stats = pd.DataFrame({
            "index": np.arange(d, dtype=np.int64),
            "max_act": mx,
            "min_act": mn.cpu().numpy().astype(np.float64),
            "mean_act": mean.cpu().numpy() if n else np.full(d, np.nan),
            "var_act": var,
            "density": density,
            "n_tokens": np.full(d, n, dtype=np.int64),
            "quantile_boundaries": boundaries.tolist() if boundaries.size else [[] for _ in range(d)],
        })
        frames = [_records(st.top.results(done), "top"), _records(st.random.results(done), "random")]
        if boundaries.size:
            frames.extend(_quantile_records(st.reservoir.results(done), boundaries[:, 1:-1], cfg))
        return LayerResults(stats=stats, records=pd.concat(frames, ignore_index=True))

    def _boundaries(self, st: _LayerState, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """[d, n_quantiles + 1] bin edges: exact outer edges, sample-estimated inner ones ([d, 0] if none)."""
        nq, d = self.cfg.n_quantiles, self.adapter.d_mlp
        if not nq or self.windows_done == 0:
            return np.zeros((d, 0))
        _, sample, valid = st.boundary.results(self.windows_done)
        q = np.arange(1, nq) / nq
        counts = valid.sum(1)
        if (counts == counts[0]).all():  # always so once every window has been processed
            inner = np.quantile(sample[valid].reshape(d, counts[0]).astype(np.float64), q, axis=1)
        else:  # a plan's partial results: each neuron has reached its own number of planned windows
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: no boundaries yet
                inner = np.nanquantile(np.where(valid, sample, np.nan).astype(np.float64), q, axis=1)
        inner = inner.T.reshape(d, nq - 1)
        return np.concatenate([lo[:, None], inner, hi[:, None]], 1)


_RECORD_COLUMNS = ["index", "window", "kind", "rank", "max", "position", "activations"]


def _frame(rows: np.ndarray, windows: np.ndarray, kind: str, rank: np.ndarray, acts: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "index": rows.astype(np.int64),
        "window": windows.astype(np.int64),
        "kind": kind,
        "rank": rank.astype(np.int64),
        "max": acts.max(1).astype(np.float64) if len(acts) else np.zeros(0),
        "position": acts.argmax(1).astype(np.int64) if len(acts) else np.zeros(0, dtype=np.int64),
        # Row views of one float32 block: building 60k Python lists of floats per layer would
        # take longer than everything else here; the stores take arrays for list properties.
        "activations": list(np.ascontiguousarray(acts, dtype=np.float32)),
    }, columns=_RECORD_COLUMNS)


def _records(results: tuple, kind: str) -> pd.DataFrame:
    window, acts, valid = results
    rows, rank = np.nonzero(valid)  # valid entries come first in key order, so the column is the rank
    return _frame(rows, window[rows, rank], kind, rank, acts[rows, rank])


def _quantile_records(results: tuple, inner: np.ndarray, cfg: RecordConfig) -> list[pd.DataFrame]:
    window, acts, valid = results
    wmax = acts.max(2) if acts.size else np.zeros(valid.shape, dtype=np.float32)
    # Bin j holds maxima in [edge_j, edge_j+1): the number of inner edges <= max.
    bins = (wmax[:, :, None].astype(np.float64) >= inner[:, None, :]).sum(2)
    frames = []
    for j in range(cfg.n_quantiles):
        member = valid & (bins == j)
        rank = np.cumsum(member, 1) - 1  # rows are in key order, so this is the rank within the bin
        rows, cols = np.nonzero(member & (rank < cfg.per_quantile))
        frames.append(_frame(rows, window[rows, cols], f"quantile_{j}", rank[rows, cols], acts[rows, cols]))
    return frames


# --------------------------------------------------------------------------------------------
# The driver


def corpus_fingerprint(token_ids: np.ndarray) -> str:
    """A short hash of a window array (shape and contents): a checkpoint is only resumed on the same corpus."""
    arr = np.ascontiguousarray(token_ids, dtype=np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _save_atomically(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a reader (or a resumed run) sees the old checkpoint or the new one, never half


def run_activation_pass(
    adapter,
    windows_token_ids: np.ndarray,
    bos_id: int | None,
    layers: list[int],
    cfg: RecordConfig,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    checkpoint_path: Path | None = None,
    checkpoint_every: int = 50,
    progress: Callable[[int], None] | None = None,
) -> ActivationCollector:
    """One streaming pass over ``windows_token_ids`` [n_windows, window] for ``layers``.

    With ``checkpoint_path``, an existing checkpoint of the same run (layers, records config,
    model shape, dtype, window, BOS and corpus) is resumed, and the state is written
    atomically every ``checkpoint_every`` batches and at the end. A checkpoint of another run
    is refused with an error rather than silently overwritten. Results do not depend on the
    batch size, so a resume may use another one. ``progress(n)`` receives the number of corpus
    tokens newly accounted for: once with the checkpoint's tokens on a resume, then after
    every batch.
    """
    tokens = np.asarray(windows_token_ids)
    if tokens.ndim != 2:
        raise IngestError(f"windows must be a 2-d array [n_windows, window], got shape {list(tokens.shape)}")
    if batch_size < 1 or checkpoint_every < 1:
        raise IngestError(f"batch_size and checkpoint_every must be >= 1 (got {batch_size}, {checkpoint_every})")
    n_windows, window = tokens.shape
    collector = ActivationCollector(adapter, layers, window, cfg, bos_id=bos_id, device=device, dtype=dtype,
                                    n_windows=n_windows)
    run = {"n_windows": int(n_windows), "corpus": corpus_fingerprint(tokens)}
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("run") != run:
            raise IngestError(f"activation checkpoint {path} was written for another corpus",
                              f"delete {path} to start the pass afresh")
        collector.load_state_dict(state["collector"])
        if progress is not None and collector.windows_done:
            progress(collector.n_tokens)

    since_save = 0
    for start in range(collector.windows_done, n_windows, batch_size):
        batch = tokens[start:start + batch_size]
        collector.process(batch, start)
        if progress is not None:
            progress(batch.size)
        since_save += 1
        if path is not None and since_save >= checkpoint_every and start + batch_size < n_windows:
            _save_atomically({"run": run, "collector": collector.state_dict()}, path)
            since_save = 0
    if path is not None:
        _save_atomically({"run": run, "collector": collector.state_dict()}, path)
    return collector
