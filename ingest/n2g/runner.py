"""Shared forward passes: one forward of a variant sequence yields every neuron of a layer.

``LayerRunner.run`` takes any number of token sequences (tuples of ids, without the window
prefix) and returns, for each, the layer's MLP activations at every position, [len, d_mlp]
float32. It

- runs each distinct sequence once, and a sequence that is a prefix of another not at all:
  the model is causal, so the longer sequence's first positions are the shorter one's
  activations (truncations of one context, maskings past the firing token, ... collapse);
- batches sequences of similar length together (padding under a quarter of a row), right-padded: with causal attention a
  position never sees the padding after it, so no attention mask is needed;
- puts ``prefix`` (``Model.window_prefix``: the BOS the activation pass put before every
  window) before each sequence and drops its positions from the result, exactly as the
  activation records were made;
- stops the forward at the hooked layer (later layers and the LM head would be wasted work).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


class _Stop(Exception):
    pass


class LayerRunner:
    def __init__(self, adapter, layer: int, prefix: Sequence[int] = (), *, batch_tokens: int = 4096,
                 pad_token: int = 0):
        self.adapter, self.layer = adapter, layer
        self.prefix = tuple(int(t) for t in prefix)
        self.batch_tokens, self.pad_token = batch_tokens, pad_token
        self.device = next(adapter.model.parameters()).device
        self.tokens_run = 0  # tokens of the sequences forwarded (prefix included, padding not)
        self.tokens_padded = 0  # tokens forwarded, padding included: the work done
        self.forwards = 0

    def run(self, seqs: Iterable[Sequence[int]]) -> dict[tuple[int, ...], np.ndarray]:
        wanted = {tuple(int(t) for t in s) for s in seqs}
        wanted.discard(())
        ordered = sorted(wanted)
        # In lexicographic order every sequence that extends s comes right after s, so s is a
        # prefix of another exactly when it is a prefix of its successor; chains resolve backwards.
        owner: dict[tuple[int, ...], tuple[int, ...]] = {}
        for k in range(len(ordered) - 1, -1, -1):
            s = ordered[k]
            nxt = ordered[k + 1] if k + 1 < len(ordered) else None
            owner[s] = owner[nxt] if nxt is not None and nxt[: len(s)] == s else s
        longest = sorted({o for o in owner.values()}, key=len)
        acts: dict[tuple[int, ...], np.ndarray] = {}
        start = 0
        while start < len(longest):
            # Sequences sorted by length: a batch of similar lengths wastes little on padding.
            end, width = start, 0
            first = len(longest[start]) + len(self.prefix)
            while end < len(longest):
                w = len(longest[end]) + len(self.prefix)
                # A batch ends at the token budget, or where padding would exceed a quarter of a row.
                if end > start and (w * (end - start + 1) > self.batch_tokens or w > first * 1.25 + 2):
                    break
                width = w
                end += 1
            batch = longest[start:end]
            out = self._forward(batch, width)
            for row, s in enumerate(batch):
                acts[s] = out[row, len(self.prefix): len(self.prefix) + len(s)]
            start = end
        return {s: acts[o][: len(s)] for s, o in owner.items()}

    def _forward(self, batch: list[tuple[int, ...]], width: int) -> np.ndarray:
        ids = torch.full((len(batch), width), self.pad_token, dtype=torch.int64)
        for row, s in enumerate(batch):
            ids[row, : len(self.prefix) + len(s)] = torch.tensor(self.prefix + s, dtype=torch.int64)
        captured: list[torch.Tensor] = []

        def hook(module, args):
            captured.append(args[0].detach().to(torch.float32).cpu())
            raise _Stop

        handle = self.adapter.neuron_module(self.layer).register_forward_pre_hook(hook)
        try:
            with torch.inference_mode():
                self.adapter.model(input_ids=ids.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        self.tokens_run += sum(len(self.prefix) + len(s) for s in batch)
        self.tokens_padded += ids.numel()
        self.forwards += 1
        return captured[0].numpy()
