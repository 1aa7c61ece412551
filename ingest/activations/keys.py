"""Sampling keys: every record selection is "the k windows with the largest int64 key".

- Sampled records (random, the quantile reservoir, the quantile boundary sample) use a
  pseudo-random 64-bit key per (seed, stream, layer, neuron, window) from a counter-based
  hash (splitmix64). Keys do not depend on the activations, so ``plan_windows`` decides each
  neuron's sample before the pass.
- Top records use ``value_keys``: the order-preserving bits of the float32 window max in the
  high half and the inverted window index in the low half, so larger maxima win and ties go
  to the lower window.

Keys are distinct per neuron, so each selection is a strict total order: no ties, and no
dependence on batch size, batch composition, device or resumes.
"""

from __future__ import annotations

import numpy as np
import torch

INT64_MIN = -(2**63)  # the key of an empty slot: below every real key
_U64 = np.uint64
_GAMMA = _U64(0x9E3779B97F4A7C15)  # splitmix64's increment: odd, so w -> w * GAMMA is a bijection
_MIX1, _MIX2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_SIGN = _U64(1 << 63)
STREAMS = {"random": 1, "quantile": 2, "boundary": 3}  # one independent key stream per sample
# Keys are computed [d_mlp, chunk] at a time while planning: this many keys per chunk keeps
# the planner's scratch near 200 MB whatever the layer width.
PLAN_KEYS_PER_CHUNK = 2**23


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
    base = _mix64(np.array([seed % 2**64], dtype=_U64) * _GAMMA + _U64(STREAMS[stream]))
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
                 chunk: int | None = None, ordered: bool = True) -> np.ndarray:
    """[d_mlp, k] int64: per neuron, the windows of ``0 .. n_windows - 1`` with the ``k`` largest
    ``sample_keys``, largest key first unless not ``ordered`` (-1 pads when there are fewer
    than k windows). ``chunk`` windows are keyed at a time (default: from the layer width)."""
    out = np.full((d_mlp, k), -1, dtype=np.int64)
    if k == 0 or n_windows == 0:
        return out
    if chunk is None:
        chunk = max(64, PLAN_KEYS_PER_CHUNK // d_mlp)
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


def plan_scratch_bytes(d_mlp: int, k: int, n_windows: int) -> int:
    """Peak scratch of ``plan_windows`` at its default chunk: a chunk's keys, then keys and
    windows concatenated with the best so far, and the top-k's outputs; int64 each."""
    chunk = min(n_windows, max(64, PLAN_KEYS_PER_CHUNK // d_mlp))
    return 8 * d_mlp * (3 * chunk + 4 * k)


def value_keys(values: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering (value desc, window asc); ``values`` float32 and ``windows`` broadcast together."""
    # + 0.0 turns -0.0 into +0.0: equal as floats, not as bit patterns.
    bits = (values + 0.0).view(torch.int32).to(torch.int64)
    # IEEE floats order like sign-magnitude integers: flip the magnitude bits of negatives.
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered << 32) | (0xFFFFFFFF - windows)


def key_values(keys: torch.Tensor) -> torch.Tensor:
    """The float32 value inside ``value_keys`` keys; -inf for empty slots."""
    ordered = keys >> 32
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(torch.int32)
    return torch.where(keys == INT64_MIN, -torch.inf, bits.view(torch.float32))
