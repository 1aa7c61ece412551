"""Activation records' per-token activations, as stored on ``ACTIVATES_ON.activations``.

The values travel as a string: base64 of little-endian float16, one value per token of the
snippet. A relationship property of list type makes LadybugDB merge every later bulk load
into the table row by row (measured: 61k records took 8 s into an empty table and 235 s
into one holding another layer's), while a string property appends in linear time on every
engine. float16 keeps three significant digits and magnitudes up to 65504, ample to show
and score what a neuron fires on; the record's exact ``max`` and ``position`` are stored
as typed properties beside it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import numpy as np
import pyarrow as pa


HALF_MAX = 65504.0  # float16's largest finite value: stored activations are clipped to +-HALF_MAX


def encode_activations_array(rows: np.ndarray | Iterable) -> pa.StringArray:
    """[n_records, n_tokens] activations -> one string per record, as one Arrow array: the
    bulk path, where a Python string lives only while its batch is converted."""
    arr = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype="<f4")
    if arr.ndim == 1:
        arr = arr[None, :]
    half = np.clip(arr, -HALF_MAX, HALF_MAX).astype("<f2")
    return pa.array([base64.b64encode(row.tobytes()).decode("ascii") for row in half], pa.string())


def encode_activations(rows: np.ndarray | Iterable) -> list[str]:
    """[n_records, n_tokens] activations -> one string per record."""
    return encode_activations_array(rows).to_pylist()


def decode_activations(text: str) -> np.ndarray:
    """One stored string -> float32 activations, one per token."""
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)
