"""Decoding neuron weights through the LM head: which tokens a neuron promotes, suppresses and reads.

- **PROMOTES / SUPPRESSES**: a neuron's output direction (its row of ``w_out``) pushed through
  the final norm's linear part and the unembedding gives its direct effect on every logit per
  unit of activation; the ``k`` largest are the promoted tokens, the ``k`` most negative the
  suppressed ones (most negative first).
- **READS**: each input direction (``w_in[via]``, norm gain folded in; "gate" and "up" for
  gated MLPs, "in" otherwise) against the unembedding: the ``k`` tokens whose unembedding
  vector the neuron's pre-activation responds to most.

Each layer is one batched matrix product per chunk of neurons against the cached
unembedding; the output, gate and up rows of a chunk share a single product. Frames are built
with numpy from the top-k tensors, without per-neuron loops.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from kb.errors import IngestError


@dataclass
class LayerTokens:
    """One layer's decoded tokens, ``k`` rows per neuron (and per input matrix for ``reads``)."""

    promotes: pd.DataFrame  # index, token_id, logit, rank
    suppresses: pd.DataFrame  # index, token_id, logit (most negative first), rank
    reads: pd.DataFrame  # index, token_id, weight, rank, via


# adapter -> {device: [vocab, d_model] float32 unembedding}. Weak keys: the cache goes with the
# adapter (and so with its model) instead of pinning a vocabulary-sized matrix forever.
_UNEMBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unembedding(adapter, device: str | torch.device = "cpu") -> torch.Tensor:
    """The adapter's unembedding as contiguous float32 on ``device``, computed once per adapter and device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one copy
        device = torch.device("cuda", torch.cuda.current_device())
    per_device = _UNEMBED.setdefault(adapter, {})
    if device not in per_device:
        per_device[device] = adapter.unembed().to(device=device, dtype=torch.float32).contiguous()
    return per_device[device]


def release_unembedding(adapter) -> None:
    """Drop the adapter's cached unembeddings (vocab x d_model float32 each: 2 GB at Llama-3-8B's
    widths), so that a later stage does not hold them."""
    _UNEMBED.pop(adapter, None)


def _frame(values: np.ndarray, tokens: np.ndarray, value_name: str, **extra) -> pd.DataFrame:
    n, k = tokens.shape
    return pd.DataFrame({
        "index": np.repeat(np.arange(n, dtype=np.int64), k),
        "token_id": tokens.reshape(-1).astype(np.int64),
        value_name: values.reshape(-1).astype(np.float64),
        "rank": np.tile(np.arange(k, dtype=np.int64), n),
        **extra,
    })


def decode_layer(adapter, layer: int, *, k: int = 10, device: str = "cpu", chunk: int = 512) -> LayerTokens:
    """Promoted, suppressed and read tokens of every neuron of ``layer``.

    ``chunk`` neurons are decoded at a time, bounding the logits to
    ``(1 + n_inputs) * chunk * vocab * 4`` bytes: a [d_mlp, vocab] matrix never exists whole
    unless ``chunk >= d_mlp``. The pipeline sizes ``chunk`` from its memory budget
    (``ingest.memory``); the result does not depend on it.
    """
    if k < 1 or chunk < 1:
        raise IngestError(f"k and chunk must be >= 1 (got k={k}, chunk={chunk})")
    unembed = unembedding(adapter, device)
    k = min(k, unembed.shape[0])
    dev = unembed.device
    outputs = adapter.fold_final_norm(adapter.w_out(layer).to(dev))  # [d_mlp, d_model]
    inputs = {via: w.to(dev) for via, w in adapter.w_in(layer).items()}
    vias = list(inputs)
    d = outputs.shape[0]
    n_rows = 1 + len(vias)

    top_v = torch.empty((n_rows, d, k), dtype=torch.float32)
    top_i = torch.empty((n_rows, d, k), dtype=torch.int64)
    bottom_v = torch.empty((d, k), dtype=torch.float32)
    bottom_i = torch.empty((d, k), dtype=torch.int64)
    with torch.inference_mode():
        for start in range(0, d, chunk):
            end = min(d, start + chunk)
            # One product for the chunk's output and input rows: [n_rows * c, d_model] @ [d_model, vocab].
            rows = torch.cat([outputs[start:end], *(inputs[v][start:end] for v in vias)])
            logits = rows @ unembed.T
            v, i = logits.topk(k, dim=1)
            top_v[:, start:end] = v.view(n_rows, end - start, k).cpu()
            top_i[:, start:end] = i.view(n_rows, end - start, k).cpu()
            v, i = logits[: end - start].topk(k, dim=1, largest=False)  # ascending: most negative first
            bottom_v[start:end] = v.cpu()
            bottom_i[start:end] = i.cpu()

    top_v, top_i = top_v.numpy(), top_i.numpy()
    reads = pd.concat(
        [_frame(top_v[1 + j], top_i[1 + j], "weight", via=via) for j, via in enumerate(vias)], ignore_index=True
    )
    return LayerTokens(
        promotes=_frame(top_v[0], top_i[0], "logit"),
        suppresses=_frame(bottom_v.numpy(), bottom_i.numpy(), "logit"),
        reads=reads,
    )
