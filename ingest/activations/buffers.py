"""Per-neuron record buffers: the top records, selected during the pass (``TopK``), and the
sampled records, decided before it (``Planned``).

Record activations are kept as float16, the precision the graph stores them in
(``kb.records``: the same clip to +-65504 and the same round to nearest, so the stored bytes do
not change), which halves the pass's largest state. A record's ``max`` and ``position`` are
taken from the float32 values before that rounding (``fused.window_pass``), so they agree
exactly with the per-window max that chose the record and with the statistics. The buffers
take records as ``Rows``: window b's neuron n at row ``b * d + n``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ingest.activations.config import refuse_checkpoint
from ingest.activations.keys import INT64_MIN


class Rows(NamedTuple):
    """A batch's records, one row per (window b, neuron n) at ``b * d + n``: ``half`` [B * d,
    window] float16 activations, ``peak`` [B * d] float32 max and ``position`` [B * d] int32."""

    half: torch.Tensor
    peak: torch.Tensor
    position: torch.Tensor

    def select(self, row: torch.Tensor) -> Rows:
        return Rows(self.half.index_select(0, row), self.peak.index_select(0, row), self.position.index_select(0, row))


def _words(records: torch.Tensor) -> torch.Tensor:
    """``records`` [..., window] float16 viewed as the widest integers that tile a row (int64:
    16 words for a 64-token window), to be scattered by rows: torch's CPU ``index_copy_`` goes
    element by element, so copying 16 words instead of 64 halves is twice as fast (15,000 rows:
    0.29-0.33 against 0.58-0.68 ms; ``index_select`` copies whole rows either way). Integers keep
    every bit as it was."""
    size = records.shape[-1] * records.element_size()
    for dtype in (torch.int64, torch.int32):
        if size % dtype.itemsize == 0:
            return records.view(dtype)
    return records


class Kept(NamedTuple):
    """A buffer's results on the CPU: per neuron row, each slot's ``window`` (-1: none) and
    ``values`` (float32: a record's activations [d, k, window], or a sample's scalars [d, k]),
    whether the slot is ``valid``, and for records each one's ``peak`` and ``position``."""

    window: np.ndarray
    values: np.ndarray
    valid: np.ndarray
    peak: np.ndarray | None = None
    position: np.ndarray | None = None


class TopK:
    """Per neuron, the ``k`` entries with the largest keys seen so far, with their windows and
    activations ([d, k, window] float16, with each one's float32 max and its position).

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
        # Payloads of empty slots are never read: no need to clear them. Maxima are compared
        # for every slot (and the empty ones masked afterwards), so they start defined.
        self.payload = torch.empty((d, k, window), dtype=torch.float16, device=device)
        self.peak = torch.zeros((d, k), dtype=torch.float32, device=device)
        self.position = torch.zeros((d, k), dtype=torch.int32, device=device)
        self.smallest = torch.full((d,), INT64_MIN, dtype=torch.int64, device=device)  # a candidate must beat it

    def merge_pairs(self, neuron: torch.Tensor, key: torch.Tensor, window: torch.Tensor, record: Rows) -> None:
        """Fold in P candidates: ``neuron``, ``key``, ``window`` [P] and their ``record`` (P rows)."""
        if self.k == 0 or neuron.numel() == 0:
            return
        k, dev = self.k, neuron.device
        neuron, order = torch.sort(neuron, stable=True)
        rows, counts = torch.unique_consecutive(neuron, return_counts=True)
        n_rows, width = rows.numel(), int(counts.max())
        # Lay the candidates out as [rows, width], padded with empty keys. Every scatter and
        # gather below goes through one flat index (index_select / index_copy_): indexing with
        # a pair of index tensors takes torch's general path, 2-4x slower on CPU.
        row_of = torch.repeat_interleave(torch.arange(n_rows, device=dev), counts)
        starts = torch.cumsum(counts, 0) - counts
        cell = row_of * width + torch.arange(neuron.numel(), device=dev) - torch.repeat_interleave(starts, counts)
        cand_key = torch.full((n_rows * width,), INT64_MIN, dtype=torch.int64, device=dev)
        cand_key.index_copy_(0, cell, key.index_select(0, order))
        cand_src = torch.full((n_rows * width,), -1, dtype=torch.int64, device=dev)
        cand_src.index_copy_(0, cell, order)

        # The `width` smallest of the k + width entries leave. Keys are distinct except empty
        # ones, which are interchangeable: a padding entry that stays lands in an empty slot.
        comb = torch.cat([self.key.index_select(0, rows), cand_key.view(n_rows, width)], 1)
        drop = comb.topk(width, dim=1, largest=False, sorted=False).indices
        dropped = torch.zeros(comb.shape, dtype=torch.bool, device=dev).scatter_(1, drop, True)
        evict_r, evict_slot = dropped[:, :k].nonzero(as_tuple=True)
        take_r, take_c = (~dropped[:, k:]).nonzero(as_tuple=True)
        # Per row, as many slots leave as candidates stay, and nonzero lists both row-major, so
        # the i-th evicted slot takes the i-th staying candidate.
        slot = rows.index_select(0, evict_r) * k + evict_slot  # into the flattened [d * k] buffers
        taken = take_r * width + take_c
        src = cand_src.index_select(0, taken)
        real = src >= 0
        self.key.view(-1).index_copy_(0, slot, cand_key.index_select(0, taken))
        take = src.clamp(min=0)
        self.window.view(-1).index_copy_(0, slot, torch.where(real, window.index_select(0, take), -1))
        _words(self.payload.view(-1, self.payload.shape[2])).index_copy_(0, slot, _words(record.half.index_select(0, take)))
        self.peak.view(-1).index_copy_(0, slot, record.peak.index_select(0, take))
        self.position.view(-1).index_copy_(0, slot, record.position.index_select(0, take))
        self.smallest.index_copy_(0, rows, self.key.index_select(0, rows).amin(1))

    def merge_dense(self, key: torch.Tensor, windows: torch.Tensor, record: Rows) -> None:
        """Fold in a batch: ``key`` [B, d], ``windows`` [B] and every entry's ``record`` (B * d rows)."""
        if self.k == 0:
            return
        k = self.k
        top, idx = torch.cat([self.key, key.T], 1).topk(k, dim=1, sorted=False)
        from_buf = idx < k
        old, new = idx.clamp(max=k - 1), (idx - k).clamp(min=0)
        self.key = top
        window = torch.where(from_buf, self.window.gather(1, old), windows[new])
        self.window = torch.where(top == INT64_MIN, -1, window)
        # Entry (window new, neuron n) of the batch is its row new * d + n.
        d = key.shape[1]
        row = (new * d + torch.arange(d, device=new.device)[:, None]).reshape(-1)
        taken = record.select(row)
        shape = (*idx.shape, self.payload.shape[2])
        kept = self.payload.gather(1, old[..., None].expand(shape))
        self.payload = torch.where(from_buf[..., None], kept, taken.half.view(shape))
        self.peak = torch.where(from_buf, self.peak.gather(1, old), taken.peak.view(idx.shape))
        self.position = torch.where(from_buf, self.position.gather(1, old), taken.position.view(idx.shape))
        self.smallest = top.amin(1)

    _STATE = ("key", "window", "payload", "peak", "position")

    def results(self) -> Kept:
        """The records on the CPU, each row in key order, largest first."""
        key = self.key.cpu().numpy()
        order = np.argsort(key, axis=1)[:, ::-1]  # keys are distinct; empty slots (INT64_MIN) last
        window = np.take_along_axis(self.window.cpu().numpy(), order, 1)
        payload = np.take_along_axis(self.payload.cpu().numpy(), order[..., None], 1).astype(np.float32)
        return Kept(window, payload, window >= 0, np.take_along_axis(self.peak.cpu().numpy(), order, 1),
                    np.take_along_axis(self.position.cpu().numpy(), order, 1))

    def state(self) -> dict:
        return {name: getattr(self, name).cpu() for name in self._STATE}

    def load(self, state: dict, where: str) -> None:
        for name in self._STATE:
            setattr(self, name, restore(getattr(self, name), state.get(name), f"{where}.{name}"))
        self.smallest = self.key.amin(1)


class Candidates:
    """Top-record candidates waiting for a bulk merge into ``TopK`` (the CPU path), held in
    buffers allocated once per layer: ``neuron``, ``key``, ``window`` [capacity] and their
    records (``Rows`` of ``capacity`` rows).

    They used to wait as a list of per-batch tensors, which lived across batches scattered
    among the forward pass's transient tensors and kept glibc from reusing its heap: with
    SmolLM2's 30 layers in one pass (65,536 tokens) the heap grew by up to 1.4 GB of free chunks
    between two trims, and the pass's peak RSS with it (2.81-2.91 GiB; 2.34 GiB with buffers).
    """

    def __init__(self, capacity: int, window: int, device: torch.device):
        self.capacity = capacity
        self.neuron = torch.empty(capacity, dtype=torch.int64, device=device)
        self.key = torch.empty(capacity, dtype=torch.int64, device=device)
        self.window = torch.empty(capacity, dtype=torch.int64, device=device)
        self.record = Rows(torch.empty((capacity, window), dtype=torch.float16, device=device),
                           torch.empty(capacity, dtype=torch.float32, device=device),
                           torch.empty(capacity, dtype=torch.int32, device=device))
        self.n = 0

    def fits(self, p: int) -> bool:
        return self.n + p <= self.capacity

    def add(self, neuron: torch.Tensor, key: torch.Tensor, window: torch.Tensor, rows: Rows,
            row: torch.Tensor) -> None:
        """Append P candidates (the caller checked ``fits(P)``), each one's record at ``row[i]`` of ``rows``."""
        i, j = self.n, self.n + neuron.numel()
        self.neuron[i:j], self.key[i:j], self.window[i:j] = neuron, key, window
        for src, out in zip(rows, self.record):
            torch.index_select(src, 0, row, out=out[i:j])
        self.n = j

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Rows]:
        """The waiting candidates (views of the buffers, valid until the next ``add``); empties the buffer."""
        n, self.n = self.n, 0
        return self.neuron[:n], self.key[:n], self.window[:n], Rows(*(part[:n] for part in self.record))


class Planned:
    """A sample decided before the pass: per neuron, a fixed list of ``k`` windows (``plan_windows``).

    The pass only copies each planned window's payload as its batch goes by. Entries are kept
    in window order, so a batch's share is one contiguous slice of them, found by a binary
    search on the host (no device synchronisation) and written as one block; ``results``
    puts them back in plan order once, at the end.
    """

    def __init__(self, plan: np.ndarray, record_len: int | None, device: torch.device):
        """``record_len``: each entry keeps a record of that many activations (float16, with its
        max and position, as ``TopK``); None: one float32 value (a window max) per entry."""
        d, k = plan.shape
        self.d, self.k = d, k
        flat = torch.from_numpy(plan.reshape(-1).astype(np.int32))
        pos = torch.nonzero(flat >= 0).squeeze(1)
        # int32 halves the index memory (the boundary sample has d * 512 entries per layer); the
        # order within a window does not matter, and torch's integer sort is a fast radix sort.
        window, order = torch.sort(flat[pos])
        self._entry_window = window.numpy()
        self._entry_window_dev = window.to(device)
        self._entry_pos = pos[order].to(torch.int32).to(device)  # the entry's slot n * k + j in plan order
        n = len(window)
        # Entries are read only once their window has been copied in: no need to clear them.
        self.records = record_len is not None
        if self.records:
            self.payload = torch.empty((n, record_len), dtype=torch.float16, device=device)
            self.peak = torch.empty(n, dtype=torch.float32, device=device)
            self.position = torch.empty(n, dtype=torch.int32, device=device)
        else:
            self.payload = torch.empty(n, dtype=torch.float32, device=device)

    @property
    def _state_names(self) -> tuple[str, ...]:
        return ("payload", "peak", "position") if self.records else ("payload",)

    def add(self, first_window: int, batch: int, src: Rows | torch.Tensor) -> None:
        """Copy the payloads of planned windows ``first_window .. + batch - 1`` from ``src``: window
        b's neuron n at row b * d + n (``Rows``, or [B * d] values)."""
        # int32 needles: int64 ones would make numpy convert the whole int32 haystack first.
        lo, hi = np.searchsorted(self._entry_window, np.array([first_window, first_window + batch], dtype=np.int32))
        if lo == hi:
            return
        row = (self._entry_window_dev[lo:hi] - first_window) * self.d + self._entry_pos[lo:hi] // self.k
        if not self.records:
            torch.index_select(src, 0, row, out=self.payload[lo:hi])
            return
        for part, out in zip(src, (self.payload, self.peak, self.position)):
            torch.index_select(part, 0, row, out=out[lo:hi])

    def results(self, windows_done: int) -> Kept:
        """Each row in plan order; entries of windows not yet seen are invalid."""
        d, k = self.d, self.k
        pos = self._entry_pos.cpu().numpy()
        window = np.full(d * k, -1, dtype=np.int64)
        window[pos] = self._entry_window
        window = window.reshape(d, k)
        valid = (window >= 0) & (window < windows_done)
        seen = self._entry_window < windows_done

        def in_plan_order(entries: torch.Tensor, dtype) -> np.ndarray:
            # Slots with no entry, or whose window is not yet seen, are zero (quantile_records
            # bins every slot's maximum before masking).
            out = np.zeros((d * k, *entries.shape[1:]), dtype=dtype)
            out[pos[seen]] = entries.cpu().numpy()[seen]
            return out.reshape(d, k, *entries.shape[1:])

        if not self.records:
            return Kept(window, in_plan_order(self.payload, np.float32), valid)
        return Kept(window, in_plan_order(self.payload, np.float32), valid, in_plan_order(self.peak, np.float32),
                    in_plan_order(self.position, np.int32))

    def state(self) -> dict:
        return {name: getattr(self, name).cpu() for name in self._state_names}

    def load(self, state: dict, where: str) -> None:
        for name in self._state_names:
            setattr(self, name, restore(getattr(self, name), state.get(name), f"{where}.{name}"))


def restore(mine: torch.Tensor, theirs: torch.Tensor | None, where: str) -> torch.Tensor:
    """``theirs`` (from a checkpoint) in place of ``mine``, once its shape is checked.

    The tensor is taken over, not copied, when it is already on the right device and dtype:
    a copy would hold the whole state twice while resuming."""
    if not isinstance(theirs, torch.Tensor) or tuple(theirs.shape) != tuple(mine.shape):
        raise refuse_checkpoint(where)
    return theirs.to(device=mine.device, dtype=mine.dtype)
