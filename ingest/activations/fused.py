"""The hook's work on a layer's activations, fused into one kernel by ``torch.compile``.

``window_pass`` reduces each (window, neuron) pair's activations to the statistics' partials
and turns them into the record the buffers keep: float16 values laid out as rows (window
b, neuron n at row ``b * d + n``, one contiguous block), with the float32 max and its first
position. Every record the pass keeps (top candidates, planned samples) is then a row lookup.

Measured inside the pass (SmolLM2-135M, batches of 16 windows of 64 tokens, 1,536 neurons, a
2-core Xeon): compiled by inductor (C++ and OpenMP, built with the machine's compiler) it takes
2.2 ms per layer and batch on torch's two threads; 4.3 ms on one thread with the max's position
from inductor's fused max-with-index, which alone costs 0.4-0.6 ms more than finding the first
token equal to the max in the second sweep (3.2 against 2.8 ms, one thread, warm caches).
``window_pass_eager`` (eager operations into reused buffers: nine reads of the activations)
took 9.4 ms on one thread; ``window_pass`` itself run eagerly, allocating every intermediate,
16 ms. On CPU the pass compiles it when the collector is made (the inductor cache keeps the
build across processes: ~9 s the first time, ~4 s afterwards) and runs ``window_pass_eager``
instead, after one warning, where compiling fails, e.g. on a machine with no C++ compiler.
``NKB_COMPILE=0`` skips compiling.

The two give the same bits for the max, min, positions, positive counts and float16 values
(a NaN may differ in its bits); the sum and the centred sum of squares may differ in their last float32
places (another summation order within the window).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from kb.config import shorten
from kb.errors import ConfigError
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
    peak = x.amax(1)
    part[MAX] = peak
    part[MIN] = x.amin(1)
    part[SUM] = total
    part[SQ] = (x - (total / tokens)[:, None]).square().sum(1)
    part[POS] = torch.where(x > 0, 1.0, 0.0).sum(1)  # exact up to 2^24 tokens
    # The first token equal to the max (or the first NaN, where the max is NaN), read in the
    # same second sweep as the centred squares: inductor's fused max-with-index is slower.
    token = torch.arange(tokens, dtype=torch.int32, device=x.device)[None, :, None]
    position.copy_(torch.where((x == peak[:, None]) | torch.isnan(x), token, tokens).amin(1))
    half.copy_(x.clamp(-HALF_MAX, HALF_MAX).transpose(1, 2))


def window_pass_eager(x: torch.Tensor, part: torch.Tensor, half: torch.Tensor, position: torch.Tensor,
                      scratch: torch.Tensor, index: torch.Tensor, converted: torch.Tensor | None = None) -> None:
    """``window_pass`` as eager torch operations into reused buffers: float32 ones the shape of
    ``x`` (``scratch``; ``converted`` for an ``x`` that is not float32) and ``index`` (int64, the
    shape of ``position``). Used where compiling fails, and off the CPU. ``window_pass`` run
    eagerly allocates every intermediate afresh: 16 ms against 9.4 per layer and batch above."""
    if x.dtype != torch.float32:
        x = converted.copy_(x)
    tokens = x.shape[1]
    torch.max(x, 1, out=(part[MAX], index))  # the first of equal maxima; 2x faster than argmax alone
    position.copy_(index)
    torch.amin(x, 1, out=part[MIN])
    torch.sum(x, 1, out=part[SUM])
    torch.sub(x, (part[SUM] / tokens)[:, None], out=scratch).square_()
    torch.sum(scratch, 1, out=part[SQ])
    torch.sum(torch.gt(x, 0, out=scratch), 1, out=part[POS])  # a float mask sums faster than a bool one
    half.copy_(torch.clamp(x, -HALF_MAX, HALF_MAX, out=scratch).transpose(1, 2))


COMPILE_ENV = "NKB_COMPILE"
_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def compile_enabled() -> bool:
    """Whether the pass compiles ``window_pass`` on CPU: yes unless ``$NKB_COMPILE`` says no
    (0, false, no, off); a value that says neither is refused."""
    raw = os.environ.get(COMPILE_ENV, "").strip()
    if not raw:
        return True
    if raw.lower() not in _SWITCH:
        raise ConfigError(f"${COMPILE_ENV} must be 1 or 0 (also true/false, yes/no, on/off), not '{shorten(raw, 60)}'",
                          "unset it to compile the activation pass's kernel where the machine can")
    return _SWITCH[raw.lower()]


class Scratch:
    """Working tensors on ``device``, reused across calls by name: a fresh multi-MB tensor per
    layer per batch costs page faults."""

    def __init__(self, device: torch.device):
        self.device = device
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        buf = self._tensors.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._tensors[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return buf


class WindowPass:
    """``window_pass`` into the caller's output buffers: compiled once where ``compile`` is
    true, else ``window_pass_eager`` (its working tensors from ``scratch``).

    The first call compiles (shapes are symbolic, so another batch size or layer width does not
    compile again, but for a batch of one window). If compiling fails, then or at a later
    recompile, this and every later call run eagerly.
    """

    def __init__(self, compile: bool, scratch: Scratch):
        self._compiled = torch.compile(window_pass, dynamic=True) if compile else None
        self._scratch = scratch

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _eager(self, x: torch.Tensor, part: torch.Tensor, half: torch.Tensor, position: torch.Tensor) -> None:
        get = self._scratch.get
        converted = None if x.dtype == torch.float32 else get("converted", x.shape, torch.float32)
        window_pass_eager(x, part, half, position, get("scratch", x.shape, torch.float32),
                          get("index", position.shape, torch.int64), converted)

    def __call__(self, x: torch.Tensor, part: torch.Tensor, half: torch.Tensor, position: torch.Tensor) -> None:
        if self._compiled is None:
            self._eager(x, part, half, position)
            return
        try:
            with warnings.catch_warnings():
                # inductor's note on a bfloat16 input beside the float16 output: not the user's concern
                warnings.filterwarnings("ignore", "bf16 and fp16 are mixed", UserWarning)
                self._compiled(x, part, half, position)
        except Exception as e:  # noqa: BLE001 -- any failure to build the kernel: run eagerly
            log.warning("compiling the activation pass's kernel failed (%s: %s); running it eagerly, "
                        "which is slower (NKB_COMPILE=0 skips the attempt)", type(e).__name__,
                        str(e).strip().splitlines()[0] if str(e).strip() else "no message")
            self._compiled = None
            self._eager(x, part, half, position)
