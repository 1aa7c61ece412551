"""From record buffers to frames: record rows per kind, and the quantile bins.

Quantile records, in the style of OpenAI's neuron records: windows are binned by their max
activation into ``n_quantiles`` equal-mass bins, j = 0 the lowest, and ``per_quantile``
windows are sampled per bin. Two planned samples do it in one pass, each with its own
independent key stream (``ingest.activations.keys``):

* a *boundary sample*: the maxima of the ``boundary_sample`` (M) largest-key windows, a
  uniform sample of window maxima. The inner bin edges are its quantiles at j / n_quantiles
  (numpy's default linear interpolation): *estimated*, and exact when the corpus has at most
  M windows. The outer edges are exact: the smallest window max and max_act. Bin j is
  [edge_j, edge_j+1), the last bin closed.
* a *record reservoir*: the ``reservoir`` (R) largest-key windows, with activations. Bin j's
  records are its members in bin j with the largest keys. As the reservoir is the top-R of
  the same keys, these are *exactly* the ``per_quantile`` largest-key windows of the whole
  corpus in bin j (an exact uniform sample of the bin) whenever the reservoir holds at least
  ``per_quantile`` members of bin j; otherwise the bin gets the fewer it holds (probability
  about 1e-5 per bin at the defaults: Binomial(64, 0.2) < 2).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ingest.activations.buffers import Kept
from ingest.activations.config import RecordConfig

RECORD_COLUMNS = ["index", "window", "kind", "rank", "max", "position", "activations"]


def frame(kept: Kept, rows: np.ndarray, cols: np.ndarray, kind: str, rank: np.ndarray) -> pd.DataFrame:
    """The records in slots ``kept[rows, cols]``."""
    acts = kept.values[rows, cols]
    return pd.DataFrame({
        "index": rows.astype(np.int64),
        "window": kept.window[rows, cols].astype(np.int64),
        "kind": kind,
        "rank": rank.astype(np.int64),
        "max": kept.peak[rows, cols].astype(np.float64),
        "position": kept.position[rows, cols].astype(np.int64),
        # Row views of one float32 block: building 60k Python lists of floats per layer would
        # take longer than everything else here.
        "activations": list(np.ascontiguousarray(acts, dtype=np.float32)),
    }, columns=RECORD_COLUMNS)


def records(kept: Kept, kind: str) -> pd.DataFrame:
    """Rows of a buffer's results, each row in key order."""
    rows, rank = np.nonzero(kept.valid)  # valid entries come first in key order, so the column is the rank
    return frame(kept, rows, rank, kind, rank)


def boundaries(sample: np.ndarray, valid: np.ndarray, lo: np.ndarray, hi: np.ndarray, nq: int) -> np.ndarray:
    """[d, nq + 1] bin edges: exact outer edges ``lo`` / ``hi`` [d], inner ones estimated from
    the boundary sample's window maxima ``sample`` [d, M] where ``valid``."""
    d = len(lo)
    q = np.arange(1, nq) / nq
    counts = valid.sum(1)
    if (counts == counts[0]).all():  # always so once every window has been processed
        inner = np.quantile(sample[valid].reshape(d, counts[0]).astype(np.float64), q, axis=1)
    else:  # partial results: each neuron has reached its own number of planned windows
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: no boundaries yet
            inner = np.nanquantile(np.where(valid, sample, np.nan).astype(np.float64), q, axis=1)
    inner = inner.T.reshape(d, nq - 1)
    return np.concatenate([lo[:, None], inner, hi[:, None]], 1)


def quantile_records(kept: Kept, inner: np.ndarray, cfg: RecordConfig) -> list[pd.DataFrame]:
    """One frame per bin: the reservoir's (key-ordered) members of each bin, ``per_quantile`` at most."""
    # Bin j holds maxima in [edge_j, edge_j+1): the number of inner edges <= max.
    bins = (kept.peak[:, :, None].astype(np.float64) >= inner[:, None, :]).sum(2)
    frames = []
    for j in range(cfg.n_quantiles):
        member = kept.valid & (bins == j)
        rank = np.cumsum(member, 1) - 1  # rows are in key order, so this is the rank within the bin
        rows, cols = np.nonzero(member & (rank < cfg.per_quantile))
        frames.append(frame(kept, rows, cols, f"quantile_{j}", rank[rows, cols]))
    return frames
