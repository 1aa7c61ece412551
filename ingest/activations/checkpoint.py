"""The resumable pass: ``run_activation_pass`` drives a collector over a corpus and
checkpoints its state by elapsed time.

A checkpoint is written atomically (a reader sees the old file or the new one, never half)
when ``checkpoint_seconds`` have passed since the last one, and at the end. By time, not
every N batches: the state is tens of MB per layer, and its cost should be a bounded share
of the run whatever the batch size or the machine's speed.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ingest.activations.collector import ActivationCollector
from ingest.activations.config import RecordConfig
from ingest.memory import trim
from kb.errors import IngestError

# The hook's temporaries (a few MB each, from the heap once glibc has raised its mmap
# threshold) leave freed pages resident between the long-lived state's. On SmolLM2 the pass
# peaked between 3.0 and 3.7 GiB over three runs of the same code; freed pages are handed back
# this often (malloc_trim takes well under a millisecond).
TRIM_SECONDS = 10.0


def corpus_fingerprint(token_ids: np.ndarray) -> str:
    """A short hash of a window array (shape and contents): a checkpoint is only resumed on the same corpus."""
    arr = np.ascontiguousarray(token_ids, dtype=np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def save_atomically(state: dict, path: Path) -> None:
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
    checkpoint_seconds: float = 60.0,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ActivationCollector:
    """One pass over ``windows_token_ids`` [n_windows, window] for ``layers``.

    With ``checkpoint_path``, an existing checkpoint of the same run (layers, records config,
    model shape, dtype, window, BOS and corpus) is resumed, and the state is written
    atomically once ``checkpoint_seconds`` (by ``clock``) have passed since the last write,
    checked after every batch, and at the end. A checkpoint of another run is refused with
    an error rather than silently overwritten. Results do not depend on the batch size, so a
    resume may use another one. ``progress(n)`` receives the number of corpus tokens newly
    accounted for: once with the checkpoint's tokens on a resume, then after every batch.
    """
    tokens = np.asarray(windows_token_ids)
    if tokens.ndim != 2:
        raise IngestError(f"windows must be a 2-d array [n_windows, window], got shape {list(tokens.shape)}")
    if batch_size < 1 or checkpoint_seconds < 0:
        raise IngestError(f"batch_size must be >= 1 and checkpoint_seconds >= 0 "
                          f"(got {batch_size}, {checkpoint_seconds})")
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
        collector.load_state_dict(state.pop("collector"))
        del state
        if progress is not None and collector.windows_done:
            progress(collector.n_tokens)

    saved_at = trimmed_at = clock()
    for start in range(collector.windows_done, n_windows, batch_size):
        batch = tokens[start:start + batch_size]
        collector.process(batch, start)
        if progress is not None:
            progress(batch.size)
        if path is not None and start + batch_size < n_windows and clock() - saved_at >= checkpoint_seconds:
            save_atomically({"run": run, "collector": collector.state_dict()}, path)
            saved_at = clock()
        if clock() - trimmed_at >= TRIM_SECONDS:
            trim()
            trimmed_at = clock()
    if path is not None:
        save_atomically({"run": run, "collector": collector.state_dict()}, path)
    return collector
