"""The hook's one read of a layer's activations, fused into a single kernel by ``torch.compile``.

``window_pass`` reduces each (window, neuron) pair's activations to the statistics' partials
and turns them into the record the buffers keep: float16 values laid out as rows (window
b, neuron n at row ``b * d + n``, one contiguous block), with the float32 max and its first
position. Every record the pass keeps (top candidates, planned samples) is then a row lookup.

Run as a dozen eager torch operations, this reads the activations about eight times and
takes ~8 ms per layer and batch of 16 windows of 64 tokens for SmolLM2's 1,536 neurons on one
2-core Xeon thread; compiled by inductor (C++ and OpenMP, built with the machine's compiler)
it is one loop over the values, ~3 ms. On CPU the pass compiles it once per process (the
inductor cache keeps the build across processes; the first build takes ~10 s) and falls back
to the same function run eagerly, with one warning, where compiling fails, e.g. on a machine
with no C++ compiler. ``NKB_COMPILE=0`` turns compiling off.

The two differ only in the rounding of sums: max, min, positions, positive counts and the
float16 values are the same bits; the sum and the centred sum of squares may differ in their
last float32 places (a different summation order within the window).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from kb.records import HALF_MAX

log = logging.getLogger(__name__)

# Rows of the per-window partials: max, min, sum, sum of squares around the float32 window
# mean, count of positive tokens.
MAX, MIN, SUM, SQ, POS = range(5)


def window_pass(x: torch.Tensor, part: torch.Tensor, half: torch.Tensor, position: torch.Tensor) -> None:
    """One layer's activations ``x`` [B, tokens, d] (any float dtype) into ``part`` [5, B, d]
    float32 (the rows above), ``half`` [B, d, tokens] float16 (the values clamped to +-65504
    and rounded to nearest, as ``kb.records`` stores them) and ``position`` [B, d] int32 (the
    first token holding the window's max, as numpy's argmax)."""
    x = x.float()
    tokens = x.shape[1]
    total = x.sum(1)
    part[MAX] = x.amax(1)
    part[MIN] = x.amin(1)
    part[SUM] = total
    part[SQ] = (x - (total / tokens)[:, None]).square().sum(1)
    part[POS] = (x > 0).float().sum(1)  # exact up to 2^24 tokens
    position.copy_(x.argmax(1))
    half.copy_(x.clamp(-HALF_MAX, HALF_MAX).transpose(1, 2))


def compile_enabled() -> bool:
    """Whether the pass compiles ``window_pass`` on CPU (``NKB_COMPILE=0`` says no)."""
    return os.environ.get("NKB_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


class WindowPass:
    """``window_pass``, compiled once and called with reused output buffers.

    The first call compiles (shapes are symbolic, so a new batch size or layer width does
    not compile again); if that fails, this and every later call run the function eagerly.
    """

    def __init__(self, compile: bool):
        self._fn = torch.compile(window_pass, dynamic=True) if compile else window_pass
        self._proven = not compile

    @property
    def compiled(self) -> bool:
        return self._fn is not window_pass

    def __call__(self, x: torch.Tensor, part: torch.Tensor, half: torch.Tensor, position: torch.Tensor) -> None:
        if self._proven:
            self._fn(x, part, half, position)
            return
        try:
            with warnings.catch_warnings():
                # inductor's note on a bfloat16 input beside the float16 output: not the user's concern
                warnings.filterwarnings("ignore", "bf16 and fp16 are mixed", UserWarning)
                self._fn(x, part, half, position)
        except Exception as e:  # noqa: BLE001 -- any failure to build the kernel: run the same code eagerly
            log.warning("compiling the activation pass's kernel failed (%s: %s); running it eagerly, "
                        "which is slower (NKB_COMPILE=0 skips the attempt)", type(e).__name__,
                        str(e).strip().splitlines()[0] if str(e).strip() else "no message")
            self._fn = window_pass
            window_pass(x, part, half, position)
        self._proven = True
