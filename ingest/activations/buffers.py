"""Per-neuron record buffers: the top records, selected during the pass (``TopK``), and the
sampled records, decided before it (``Planned``).

Record activations are kept in float32, the dtype the statistics and selections are computed
in: a record's ``max`` and ``position`` come from exactly the kept values, so they agree with
the per-window max that chose the record and with each other. The graph stores them as
float16 (``kb.records``), applied once, at write time.
"""

from __future__ import annotations

import numpy as np
import torch

from ingest.activations.config import refuse_checkpoint
from ingest.activations.keys import INT64_MIN


class TopK:
    """Per neuron, the ``k`` entries with the largest keys seen so far, with their windows and
    activations ([d, k, window] float32).

    Slots are unordered and never move: a merge writes only the slots it evicts, so merging a
    few new windows into many neurons touches a few rows of activations, not all of them.
    Empty slots hold key INT64_MIN and window -1; ``smallest`` caches each row's smallest key.
    ``merge_pairs`` takes any number of candidates for any neurons at once (the CPU path);
    ``merge_dense`` takes one candidate per neuron per window of a batch with no host
    synchronisation (the CUDA path).
    """

    def __init__(self, d: int, k: int, window: int, device: torch.device):
        self.k = k
        self.key = torch.full((d, k), INT64_MIN, dtype=torch.int64, device=device)
        self.window = torch.full((d, k), -1, dtype=torch.int64, device=device)
        # Payloads of empty slots are never read: no need to clear them.
        self.payload = torch.empty((d, k, window), dtype=torch.float32, device=device)
        self.smallest = torch.full((d,), INT64_MIN, dtype=torch.int64, device=device)  # a candidate must beat it

    def merge_pairs(self, neuron: torch.Tensor, key: torch.Tensor, window: torch.Tensor,
                    payload: torch.Tensor) -> None:
        """Fold in P candidates: ``neuron``, ``key``, ``window`` [P], ``payload`` [P, window]."""
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
        cand_key = torch.full((n_rows, width), INT64_MIN, dtype=torch.int64, device=dev)
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
        self.payload[n_idx, evict_slot] = payload[src.clamp(min=0)]
        self.smallest[rows] = self.key[rows].amin(1)

    def merge_dense(self, key: torch.Tensor, windows: torch.Tensor, src: torch.Tensor) -> None:
        """Fold in a batch: ``key`` [B, d], ``windows`` [B], ``src`` [B, d, window] every entry's activations."""
        if self.k == 0:
            return
        k = self.k
        top, idx = torch.cat([self.key, key.T], 1).topk(k, dim=1, sorted=False)
        from_buf = idx < k
        old, new = idx.clamp(max=k - 1), (idx - k).clamp(min=0)
        self.key = top
        window = torch.where(from_buf, self.window.gather(1, old), windows[new])
        self.window = torch.where(top == INT64_MIN, -1, window)
        shape = (*idx.shape, self.payload.shape[2])
        kept = self.payload.gather(1, old[..., None].expand(shape))
        fresh = src.transpose(0, 1).gather(1, new[..., None].expand(shape))
        self.payload = torch.where(from_buf[..., None], kept, fresh)
        self.smallest = top.amin(1)

    def results(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(window, payload, valid) on the CPU, each row in key order, largest first."""
        key = self.key.cpu().numpy()
        order = np.argsort(key, axis=1)[:, ::-1]  # keys are distinct; empty slots (INT64_MIN) last
        window = np.take_along_axis(self.window.cpu().numpy(), order, 1)
        payload = np.take_along_axis(self.payload.cpu().numpy(), order[..., None], 1)
        return window, payload, window >= 0

    def state(self) -> dict:
        return {"key": self.key.cpu(), "window": self.window.cpu(), "payload": self.payload.cpu()}

    def load(self, state: dict, where: str) -> None:
        for name in ("key", "window", "payload"):
            setattr(self, name, restore(getattr(self, name), state.get(name), f"{where}.{name}"))
        self.smallest = self.key.amin(1)


class Planned:
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
        """(window, payload, valid), each row in plan order; entries of windows not yet seen are invalid."""
        d, k = self.payload.shape[:2]
        window = np.full(d * k, -1, dtype=np.int64)
        window[self._entry_pos.cpu().numpy()] = self._entry_window
        window = window.reshape(d, k)
        return window, self.payload.cpu().numpy(), (window >= 0) & (window < windows_done)

    def state(self) -> dict:
        return {"payload": self.payload.cpu()}

    def load(self, state: dict, where: str) -> None:
        self.payload = restore(self.payload, state.get("payload"), f"{where}.payload")


def restore(mine: torch.Tensor, theirs: torch.Tensor | None, where: str) -> torch.Tensor:
    """``theirs`` (from a checkpoint) in place of ``mine``, once its shape is checked.

    The tensor is taken over, not copied, when it is already on the right device and dtype:
    a copy would hold the whole state twice while resuming."""
    if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != tuple(mine.shape):
        raise refuse_checkpoint(where)
    return theirs.to(device=mine.device, dtype=mine.dtype)
