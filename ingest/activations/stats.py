"""Exact per-neuron statistics over every window token, merged with Chan's parallel formulas.

max, min, mean, population variance, density (fraction of tokens > 0) and n_tokens.
Per-window maxima, minima, sums, centred sums of squares and positive counts are reduced in
float32 over one window (``fused.window_pass``), then merged in float64 with Chan et al.'s
pairwise formulas (no E[x^2] - E[x]^2 cancellation), in groups of ``GROUP`` consecutive
windows aligned to window indices: the arithmetic, and so every bit of the result, is the
same whatever the batch size and wherever a run resumed (given the same ``window_pass``:
compiled and eager may differ in the last places of a window's sums).
"""

from __future__ import annotations

import torch

from ingest.activations.buffers import restore
from ingest.activations.fused import MAX, MIN, POS, SQ, SUM

# Windows per statistics group. Groups are aligned to window indices, so the float64 merge
# order never depends on the batch size; 128 windows of partials are ~4 MB per layer at d=1536.
GROUP = 128


class RunningStats:
    """One layer's totals over the groups folded so far, and the current group's per-window partials."""

    _TENSORS = ("mean", "m2", "positive", "max", "min", "min_window_max", "partials")

    def __init__(self, d: int, device: torch.device):
        f64 = dict(dtype=torch.float64, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        self.mean = torch.zeros(d, **f64)
        self.m2 = torch.zeros(d, **f64)
        self.positive = torch.zeros(d, **f64)  # counts; exact in float64 up to 2^53 tokens
        self.max = torch.full((d,), -torch.inf, **f32)
        self.min = torch.full((d,), torch.inf, **f32)
        self.min_window_max = torch.full((d,), torch.inf, **f32)  # the lowest quantile edge
        self.partials = torch.zeros((5, GROUP, d), **f32)  # row = window % GROUP

    def add(self, part: torch.Tensor, first: int, tokens: int) -> int:
        """Stage a batch's partials [5, B, d] for windows ``first ..``; fold every group it
        completes. Returns the number of groups folded."""
        batch, done, folded = part.shape[1], 0, 0
        while done < batch:
            w = first + done
            row = w % GROUP
            n = min(batch - done, GROUP - row)
            self.partials[:, row:row + n] = part[:, done:done + n]
            done += n
            if row + n == GROUP:
                # The group's windows are w - row .. w - row + GROUP - 1; tokens before it:
                totals = self.totals(GROUP, tokens, (w - row) * tokens)
                self.mean, self.m2, self.positive, self.max, self.min, self.min_window_max = totals
                folded += 1
        return folded

    def totals(self, rows: int, tokens: int, n_before: int) -> tuple[torch.Tensor, ...]:
        """Totals after merging the first ``rows`` windows of the partials into those of ``n_before`` tokens.

        Returns (mean, m2, positive, max, min, min_window_max) without changing the state.
        """
        if rows == 0:
            return self.mean, self.m2, self.positive, self.max, self.min, self.min_window_max
        p = self.partials[:, :rows]
        # The float32 mean each window was centred on, recomputed by the same operation.
        centre = (p[SUM] / tokens).double()
        mean_w = p[SUM].double() / tokens
        # Sum of squares around the window's exact mean: subtract the offset of the float32 centre.
        m2_w = p[SQ].double() - tokens * (mean_w - centre).square()
        mean_g = mean_w.mean(0)
        m2_g = m2_w.sum(0) + tokens * (mean_w - mean_g).square().sum(0)
        n_g = rows * tokens
        n_all = n_before + n_g
        delta = mean_g - self.mean
        mean = self.mean + delta * (n_g / n_all)
        m2 = self.m2 + m2_g + delta.square() * (n_before * n_g / n_all)
        wmax = p[MAX]
        return (mean, m2, self.positive + p[POS].double().sum(0), torch.maximum(self.max, wmax.amax(0)),
                torch.minimum(self.min, p[MIN].amin(0)), torch.minimum(self.min_window_max, wmax.amin(0)))

    def state(self) -> dict:
        return {name: getattr(self, name).cpu() for name in self._TENSORS}

    def load(self, state: dict, where: str) -> None:
        for name in self._TENSORS:
            setattr(self, name, restore(getattr(self, name), state.get(name), f"{where}.{name}"))
