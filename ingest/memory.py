"""Memory planning: an ingest run's peak memory, estimated before it starts, and fitted to a budget.

The estimate adds what the process holds at its peak:

- the runtime (Python, torch, transformers, pandas and the graph engine's code: about 450 MB
  measured after import, rounded up) and the tokenized corpus;
- the model's weights, as loaded (their dtype);
- the embedded store's buffer pool (``kb.config.buffer_pool_bytes()``; none for a server);
- the freed heap the process keeps (``tune_heap``'s trim threshold);
- the larger of the two stages' working sets, which never coexist (the lmhead stage frees
  its float32 unembedding when it ends):

  * **lmhead**: the float32 unembedding, one layer's folded weights, and per chunk of
    neurons the stacked output / input rows and their logits against the whole vocabulary,
    plus the edge frames held until they are written (``LMHEAD_WRITE_ROWS``). The chunk
    follows from the budget (at most ``LMHEAD_MAX_CHUNK`` neurons, at least one), so a
    [d_mlp, vocab] logit matrix never exists whole;
  * **activations**: ``buffer_bytes`` per layer of one pass, the forward pass's own
    transient tensors and the hook's scratch for one batch, and one layer's record frames as
    the stage builds, encodes and writes them (or, at set-up, the sample planner's scratch).

When the estimate exceeds the budget, the layers are split into groups of about equal size,
one forward pass each (``MemoryPlan.groups``); a run whose single layer does not fit is
refused before anything is written. The figures are estimates of what this code allocates,
sized from its arrays' shapes; allocator slack and the store's own write path come on top
(hence the margin in the default budget: 80% of the memory available when the run starts).
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kb.errors import IngestError

MiB = 2**20
RUNTIME_BYTES = 600 * MiB
LMHEAD_MAX_CHUNK = 512  # neurons per LM-head product: larger chunks are no faster on CPU
# Token edges the lmhead stage holds before it writes them (each write after the first into a
# relationship table rewrites what that table holds for the tokens it touches, so few large
# writes beat one per layer); about 400 bytes each in the frames, see lmhead_parts.
LMHEAD_WRITE_ROWS = 1_000_000
DEFAULT_SHARE = 0.8  # of MemAvailable, when --max-memory is not given

_UNITS = {"": None, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'4G', '4GB', '4GiB', '512M', '1.5g' -> bytes (binary units). A bare number is refused:
    bytes and megabytes are both plausible readings."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m or not m.group(2):
        raise IngestError(f"--max-memory {text!r} is not a size with a unit", "write it like 4G, 6GB or 512M")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1:
        raise IngestError(f"--max-memory {text!r} must be positive", "write it like 4G, 6GB or 512M")
    return int(value)


def format_size(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / MiB:.0f} MB"


def available_bytes() -> int | None:
    """Memory the system can still give without swapping (/proc/meminfo's MemAvailable, or
    psutil where installed); None when neither is there."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> None:
    """Hand memory that the process has freed back to the system (glibc's ``malloc_trim``; a
    no-op elsewhere). Freed tensors of a few MB come from the heap, not from their own
    mappings, once glibc has raised its mmap threshold, and stay resident after they are
    freed: trimmed once SmolLM2's activation pass state was released (30 layers), the
    process went from 3.40 to 1.80 GiB before the records were written."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameters, and where its adaptive thresholds stop growing (64-bit).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
GLIBC_MMAP_MAX, GLIBC_TRIM_MAX = 32 << 20, 64 << 20


def forward_tensor_bytes(d_mlp: int, batch_size: int, tokens: int) -> int:
    """The largest tensor of a forward batch, as the hook sees it: float32 [batch, tokens, d_mlp]."""
    return 4 * batch_size * tokens * d_mlp


def heap_thresholds(tensor_bytes: int) -> tuple[int, int]:
    """(mmap, trim) thresholds for a run whose largest forward-pass tensor has ``tensor_bytes``:
    every tensor of a forward pass comes from the heap, and a layer's worth of freed ones stays
    there. Larger blocks (the LM-head stage's logit chunks) still get their own mappings: with
    them from the heap (a threshold of twice the tensor), the 8B-wide model's later tokens
    stage peaked at 5.63 GiB, against 5.44 GiB."""
    return max(64 << 20, tensor_bytes + (1 << 20)), max(32 << 20, 6 * tensor_bytes)


def tune_heap(tensor_bytes: int | None) -> bool:
    """Fix glibc's thresholds at ``heap_thresholds(tensor_bytes)`` for a stage that allocates and
    frees the same large tensors over and over: allocations below the first come from the heap,
    and its free top goes back to the system only past the second (``trim`` gives back the
    rest). ``tensor_bytes`` None: at the ceilings of glibc's own adaptive thresholds (32 and
    64 MB), for the other stages. False where this is not glibc.

    At its defaults glibc adapts both thresholds as the process runs, and a forward pass, which
    allocates and frees tensors of a few MB at every layer, keeps handing pages back to the
    kernel and faulting them in again, zeroed: SmolLM2's body took 1.1 million page faults per
    8,192 tokens. With the thresholds fixed (64 MB; trim at 32, 64 or 256 MB alike) it took 2 or
    3 and ran 17% faster (7.45 -> 6.2 s), and the activation pass 13% faster (11.5 -> 10.0 s), at
    the same peak RSS (1,966 and 1,974 MiB). The trim threshold bounds the freed memory the
    process keeps, but must hold a layer's worth of freed tensors, or the faults come back.
    With every stage tuned, the 8B-wide model's tokens stage peaked at 5.89 GiB (5.38 before):
    the other stages keep glibc's ceilings (``Stage.tuned_heap`` says which are tuned). Setting
    only one threshold turns the adaptation off and leaves the other at its small initial
    value: far worse."""
    if tensor_bytes is None:
        mmap, trim_at = GLIBC_MMAP_MAX, GLIBC_TRIM_MAX
    else:
        mmap, trim_at = heap_thresholds(tensor_bytes)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap) and libc.mallopt(_M_TRIM_THRESHOLD, trim_at))
    except (OSError, AttributeError):
        return False


def peak_resident_bytes() -> int:
    """The most memory this process has held resident so far (0 where it cannot be read)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def default_budget() -> int | None:
    """What the process holds now plus a safe share of what the system still has available."""
    available = available_bytes()
    return None if available is None else resident_bytes() + int(DEFAULT_SHARE * available)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know of a model."""

    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    vocab: int
    n_inputs: int  # input matrices per MLP: 2 for gated (gate, up), 1 otherwise
    n_heads: int
    weight_bytes: int
    dtype_bytes: int  # of the activations the forward pass computes in

    @classmethod
    def of(cls, lm) -> "Shape":
        a, model = lm.adapter, lm.model
        params = {id(p): p for p in model.parameters()} | {id(b): b for b in model.buffers()}
        cfg = model.config
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or max(1, a.d_model // 64)
        return cls(name=lm.name, n_layers=a.n_layers, d_model=a.d_model, d_mlp=a.d_mlp, vocab=a.vocab_size,
                   n_inputs=a.n_inputs, n_heads=int(heads),
                   weight_bytes=sum(p.numel() * p.element_size() for p in params.values()),
                   dtype_bytes=next(model.parameters()).element_size())


@dataclass(frozen=True)
class Settings:
    """The ingest settings the estimate depends on."""

    window: int = 64
    batch_size: int = 16
    n_windows: int = 1024
    top_k: int = 20
    n_random: int = 10
    n_quantiles: int = 5
    per_quantile: int = 2
    lmhead_k: int = 10
    bos: bool = True

    @classmethod
    def of(cls, settings: dict, n_windows: int, bos: bool) -> "Settings":
        keys = ("window", "batch_size", "top_k", "n_random", "n_quantiles", "per_quantile", "lmhead_k")
        return cls(n_windows=n_windows, bos=bos, **{k: settings[k] for k in keys})


@dataclass
class MemoryPlan:
    """The estimate of one run, part by part (bytes), and how the layers are split to fit ``budget``."""

    shape: Shape
    budget: int | None
    base: dict[str, int]  # held throughout: runtime, corpus, weights, buffer pool, heap
    lmhead: dict[str, int] = field(default_factory=dict)  # the lmhead stage's working set at lmhead_chunk
    pass_fixed: dict[str, int] = field(default_factory=dict)  # the activation pass, whatever its layers
    per_layer: int = 0  # the activation state of one layer in a pass
    forward_tensor: int = 0  # bytes of the largest tensor of a forward batch (tune_heap sizes the heap by it)
    lmhead_chunk: int = LMHEAD_MAX_CHUNK
    groups: list[list[int]] = field(default_factory=list)  # layers of each forward pass

    @property
    def layers_per_pass(self) -> int:
        return max((len(g) for g in self.groups), default=0)

    def pass_bytes(self, n_layers: int) -> int:
        return sum(self.pass_fixed.values()) + n_layers * self.per_layer if self.pass_fixed else 0

    def peak(self, layers_per_pass: int | None = None) -> int:
        """The estimated peak with ``layers_per_pass`` layers in a pass (default: as planned)."""
        n = self.layers_per_pass if layers_per_pass is None else layers_per_pass
        return sum(self.base.values()) + max(sum(self.lmhead.values()), self.pass_bytes(n))

    def describe(self) -> list[str]:
        """Human-readable lines: the estimate, its parts, and the split if there is one."""
        n_layers = sum(len(g) for g in self.groups)
        whole = self.peak(n_layers)
        budget = "no limit known" if self.budget is None else f"--max-memory {format_size(self.budget)}"
        parts = [f"{k} {format_size(v)}" for k, v in self.base.items() if v]
        if self.lmhead:
            parts.append(f"lmhead {format_size(sum(self.lmhead.values()))} ({self.lmhead_chunk}-neuron chunks)")
        if self.pass_fixed:
            parts.append(f"activation pass {format_size(self.pass_bytes(n_layers))} "
                         f"({format_size(self.per_layer)} per layer x {n_layers})")
        lines = [f"memory estimate for {self.shape.name}: {format_size(whole)} peak ({budget}): " + ", ".join(parts)]
        if len(self.groups) > 1:
            lines.append(f"the estimate exceeds --max-memory: the activation pass runs in {len(self.groups)} groups "
                         f"of at most {self.layers_per_pass} layers (one forward pass each), "
                         f"estimated peak {format_size(self.peak())}")
        return lines


def lmhead_parts(shape: Shape, chunk: int, k: int) -> dict[str, int]:
    """The lmhead stage's working set (bytes) when it decodes ``chunk`` neurons at a time."""
    rows = 1 + shape.n_inputs  # the output row and each input row of a neuron share one product
    layer_rows = (1 + rows) * shape.d_mlp * k  # promoted, suppressed, and read through each input
    return {
        "unembedding": 4 * shape.vocab * shape.d_model,
        # w_out, its folded copy, and the input matrices, float32
        "layer weights": 4 * (2 + shape.n_inputs) * shape.d_mlp * shape.d_model,
        "logits": chunk * lmhead_chunk_bytes(shape),
        # Edges held until LMHEAD_WRITE_ROWS are pending, plus the layer that crosses it; id
        # strings dominate, and pandas and the store copy them.
        "frames": (min(LMHEAD_WRITE_ROWS, shape.n_layers * layer_rows) + layer_rows) * 400,
    }


def lmhead_chunk_bytes(shape: Shape) -> int:
    """LM-head bytes per neuron of a chunk: its rows, their logits, and the top-k's scratch."""
    rows = 1 + shape.n_inputs
    return 4 * rows * shape.d_model + 2 * 4 * rows * shape.vocab


def pass_parts(shape: Shape, s: Settings) -> tuple[dict[str, int], int]:
    """(fixed parts, bytes per layer) of the activation pass."""
    from ingest.activations import RecordConfig, buffer_bytes
    from ingest.activations.collector import wait_capacity
    from ingest.activations.keys import plan_scratch_bytes

    cfg = RecordConfig(top_k=s.top_k, n_random=s.n_random, n_quantiles=s.n_quantiles, per_quantile=s.per_quantile)
    d, b, t = shape.d_mlp, s.batch_size, s.window + (1 if s.bos else 0)
    forward = shape.dtype_bytes * (b * t * (4 * d + 8 * shape.d_model) + 2 * b * shape.n_heads * t * t)
    # The hook's float32 copy and scratch of one layer's activations, its partials, and the
    # copies a merge makes of one layer's waiting top-record candidates (which buffer_bytes holds).
    hook = 4 * (2 * b * t * d + 5 * b * d) + wait_capacity(d, cfg) * (4 * s.window + 32)
    planner = plan_scratch_bytes(d, cfg.boundary_sample if s.n_quantiles else max(s.n_random, 1), s.n_windows)
    # One layer's records: the buffers' sorted copies and the frame's float32 block, the stacked
    # copy the stage encodes, base64 float16 strings, id strings; pandas and the store copy again.
    n_records = d * cfg.records_per_neuron
    record_bytes = 3 * 4 * s.window + 2 * (math.ceil(2 * s.window / 3) * 4 + 60) + 3 * 100 + 64
    snippets = s.n_windows * s.window * 100  # token ids and token texts, written with the first layer
    frames = 2 * n_records * record_bytes + 4 * d * s.top_k * s.window + snippets
    return {"forward": max(forward + hook, planner), "frames": frames}, buffer_bytes(d, s.window, cfg)


def plan(shape: Shape, layers: list[int], settings: Settings, *, stages: set[str], budget: int | None,
         buffer_pool: int) -> MemoryPlan:
    """Estimate the run and split ``layers`` into as few passes as ``budget`` allows.

    Raises IngestError when even one layer (or one neuron of the LM head) does not fit."""
    s = settings
    forward_tensor = forward_tensor_bytes(shape.d_mlp, s.batch_size, s.window + (1 if s.bos else 0))
    base = {"runtime": RUNTIME_BYTES, "corpus": s.n_windows * s.window * 8 + shape.vocab * 100,
            "weights": shape.weight_bytes, "buffer pool": buffer_pool, "heap": heap_thresholds(forward_tensor)[1]}
    p = MemoryPlan(shape=shape, budget=budget, base=base, forward_tensor=forward_tensor)
    room = None if budget is None else budget - sum(base.values())
    if "lmhead" in stages:
        fixed = sum(lmhead_parts(shape, 0, s.lmhead_k).values())
        chunk = LMHEAD_MAX_CHUNK if room is None else (room - fixed) // lmhead_chunk_bytes(shape)
        p.lmhead_chunk = int(min(LMHEAD_MAX_CHUNK, shape.d_mlp, chunk))
        if p.lmhead_chunk < 1:
            need = sum(base.values()) + sum(lmhead_parts(shape, 1, s.lmhead_k).values())
            raise _too_small(budget, need, shape, "the LM-head decode of one layer")
        p.lmhead = lmhead_parts(shape, p.lmhead_chunk, s.lmhead_k)
    if "activations" in stages and layers:
        p.pass_fixed, p.per_layer = pass_parts(shape, s)
        fits = len(layers) if room is None else (room - sum(p.pass_fixed.values())) // p.per_layer
        if fits < 1:
            raise _too_small(budget, sum(base.values()) + p.pass_bytes(1), shape, "the activation pass of one layer")
        p.groups = split(sorted(layers), int(fits))
    else:
        p.groups = [sorted(layers)] if layers else []
    return p


def split(layers: list[int], most: int) -> list[list[int]]:
    """``layers`` in contiguous groups of at most ``most``, as equal in size as possible."""
    if not layers:
        return []
    n = math.ceil(len(layers) / max(1, most))
    size, extra = divmod(len(layers), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(layers[start:end])
        start = end
    return out


def _too_small(budget: int | None, need: int, shape: Shape, what: str) -> IngestError:
    return IngestError(
        f"--max-memory {format_size(budget or 0)} is too small for {what} of {shape.name}: "
        f"it needs about {format_size(need)}",
        f"raise --max-memory to at least {format_size(need)}, or lower NKB_BUFFER_POOL_MB, --window or --top-k",
    )
