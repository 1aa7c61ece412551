"""The forward-hook driver: one forward pass per batch serves every requested layer.

A forward pre-hook on each requested layer's MLP output projection sees all of that layer's
neurons at once ([batch, tokens, d_mlp]); the hook folds the batch into fixed-size
per-neuron state (statistics, record buffers) and lets the activations go. Nothing
proportional to the corpus is held, and the forward stops after the last requested layer
(later layers and the LM head would be wasted work).

Hot path: one kernel over each layer's activations (``fused.window_pass``, compiled on CPU) gives
the statistics' partials and every (window, neuron) pair's record as a contiguous row. The
sampled records are planned before the pass (``keys.plan_windows``), so the hook only copies
their rows as their batch goes by. Only the top records need selection during the pass; on
CPU the hook gathers the (window, neuron) pairs that beat the neuron's current k-th max and
merges them in bulk once per group of windows (or earlier, when many are waiting); on CUDA a
dense merge runs every batch, because a sparse one would synchronise the device at every
``nonzero``. The hook runs on torch's threads, as the model does (on a quiet 2-core Xeon, one
thread for all but the kernel made the pass 3-5 % slower at 8,192 tokens, and did not lower the
peak memory).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import torch

from ingest.activations.buffers import Candidates, Planned, Rows, TopK
from ingest.activations.config import LayerResults, RecordConfig, refuse_checkpoint
from ingest.activations.frames import boundaries, quantile_records, records
from ingest.activations.keys import key_values, plan_windows, value_keys
from ingest.activations.fused import MAX, Scratch, WindowPass, compile_enabled
from ingest.activations.stats import GROUP, RunningStats
from kb.errors import IngestError

CHECKPOINT_FORMAT = 5  # 5: planned samples kept in window order; 4: record activations as float16
_MAX_WINDOWS = 2**31 - 1  # int32 window indices in the sample plans


class LayerState:
    """Everything the pass keeps for one layer: statistics, top records, planned samples."""

    _RECORDS = ("top", "random", "reservoir", "boundary")

    def __init__(self, layer: int, d: int, window: int, cfg: RecordConfig, device: torch.device, n_windows: int,
                 waiting: int):
        self.stats = RunningStats(d, device)
        self.top = TopK(d, cfg.top_k, window, device)
        self.top_bar = key_values(self.top.smallest)  # float32 [d]: the k-th max, as of the last merge
        self.waiting = Candidates(waiting, window, device)  # top-record candidates for the next bulk merge (CPU)
        nq = cfg.n_quantiles > 0
        sizes = {"random": cfg.n_random, "quantile": cfg.reservoir if nq else 0,
                 "boundary": cfg.boundary_sample if nq else 0}
        payloads = {"random": window, "quantile": window, "boundary": None}
        samples = {}
        for stream, k in sizes.items():
            # The boundary sample's order is never used: skip sorting 512 keys per neuron.
            plan = plan_windows(cfg.seed, stream, layer, d, n_windows, k, ordered=stream != "boundary")
            samples[stream] = Planned(plan, payloads[stream], device)
        self.random, self.reservoir, self.boundary = samples["random"], samples["quantile"], samples["boundary"]

    def state(self) -> dict:
        return {**self.stats.state(), **{name: getattr(self, name).state() for name in self._RECORDS}}

    def load(self, state: dict, where: str) -> None:
        self.stats.load(state, where)
        for name in self._RECORDS:
            part = state.get(name)
            if not isinstance(part, dict):
                raise refuse_checkpoint(f"{where}.{name}")
            getattr(self, name).load(part, f"{where}.{name}")
        self.top_bar = key_values(self.top.smallest)


class _StopForward(Exception):
    """Raised by the last requested layer's hook: the rest of the forward pass is not needed."""


def wait_capacity(d_mlp: int, cfg: RecordConfig) -> int:
    """Top-record candidates a layer holds before a bulk merge (CPU): 10 per neuron at the defaults."""
    return max(4 * d_mlp, d_mlp * cfg.top_k // 2)


def buffer_bytes(d_mlp: int, window: int, cfg: RecordConfig) -> int:
    """Memory the collector holds per layer on its device, whatever the corpus size: 35 MB for
    SmolLM2-135M (d_mlp 1536) at window 64 and the default records, 13.5 MB of it the quantile
    reservoir and 2.3 MB the waiting top-record candidates (on CUDA, which merges every batch
    and holds none, 2.3 MB less)."""
    record = 2 * window + 4 + 4  # float16 activations of one record, its max and its position
    q = cfg.n_quantiles > 0
    waiting = wait_capacity(d_mlp, cfg) * (3 * 8 + record)  # neuron, key, window; the record
    return waiting + d_mlp * (
        cfg.top_k * (8 + 8 + record)  # key, window, record
        + (cfg.n_random + (cfg.reservoir if q else 0)) * (4 + 4 + record)  # planned window and slot, record
        + (cfg.boundary_sample if q else 0) * (4 + 4 + 4)  # planned window and slot, window max
        + 3 * 8 + 3 * 4  # totals
        + 5 * GROUP * 4  # the current group's per-window partials
    )


class ActivationCollector:
    """Folds batches of corpus windows into per-neuron statistics and records, for several layers at once.

    ``n_windows`` is the corpus size: the sampled records are planned for it before the pass.
    Windows must arrive in order: ``process(batch, first_window)`` with ``first_window ==
    windows_done``; results taken before all ``n_windows`` are processed hold the windows
    seen so far. The model is moved to ``device`` and cast to ``dtype`` in place (like
    ``nn.Module.to``) if it is not there already.
    """

    def __init__(self, adapter, layers: list[int], window: int, cfg: RecordConfig, *, bos_id: int | None,
                 n_windows: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
        layers = [int(layer) for layer in layers]
        if not layers:
            raise IngestError("no layers requested for the activation pass")
        if len(set(layers)) != len(layers):
            raise IngestError(f"layers requested twice in {layers}")
        for layer in layers:
            if not 0 <= layer < adapter.n_layers:
                raise IngestError(f"layer {layer} is out of range: the model has layers 0..{adapter.n_layers - 1}")
        if window < 1:
            raise IngestError(f"window must be >= 1 token, got {window}")
        if not 0 <= n_windows <= _MAX_WINDOWS:
            raise IngestError(f"n_windows must be in 0 .. {_MAX_WINDOWS}, got {n_windows}")
        self.adapter = adapter
        self.layers = layers
        self.window = int(window)
        self.cfg = cfg
        self.bos_id = None if bos_id is None else int(bos_id)
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_windows = int(n_windows)
        self.windows_done = 0
        # CPU: sparse bulk merges. CUDA: dense merges that never synchronise.
        self._sparse = self.device.type == "cpu"
        d = adapter.d_mlp
        model = adapter.model
        param = next(model.parameters())
        if param.device != self.device or param.dtype != dtype:
            model.to(device=self.device, dtype=dtype)
        with torch.inference_mode(False):
            waiting = wait_capacity(d, cfg) if self._sparse else 0
            self._state = {layer: LayerState(layer, d, self.window, cfg, self.device, self.n_windows, waiting)
                           for layer in layers}
        self._scratch = Scratch(self.device)
        # CPU: the hook's work on the activations compiled into a single kernel (``fused``).
        self._window_pass = WindowPass(self.device.type == "cpu" and compile_enabled(), self._scratch)
        if self._window_pass.compiled:
            self._compile()

    def _compile(self) -> None:
        """Build the kernel now, on a stand-in batch laid out as the hook's will be, so that the
        first batch does not pay for it (setup time, not pass time)."""
        d, tokens, skip = self.adapter.d_mlp, self.window, int(self.bos_id is not None)
        with torch.inference_mode():  # as the hook's tensors are: a tensor made outside would compile twice
            x = torch.zeros((2, skip + tokens, d), dtype=self.dtype, device=self.device)[:, skip:]
            get = self._scratch.get
            self._window_pass(x, get("part", (5, 2, d), torch.float32), get("half", (2, d, tokens), torch.float16),
                              get("position", (2, d), torch.int32))

    # --- identity, for checkpoints -------------------------------------------------------
    def _identity(self) -> dict:
        a = self.adapter
        return {
            "layers": list(self.layers), "window": self.window, "bos_id": self.bos_id, "cfg": asdict(self.cfg),
            "model": {"architecture": a.name, "n_layers": int(a.n_layers), "d_mlp": int(a.d_mlp),
                      "d_model": int(a.d_model), "vocab_size": int(a.vocab_size)},
            "dtype": str(self.dtype).removeprefix("torch."),
            "n_windows": self.n_windows,
        }

    @property
    def n_tokens(self) -> int:
        """Corpus tokens folded in so far (BOS positions not counted)."""
        return self.windows_done * self.window

    # --- the hot path --------------------------------------------------------------------
    def process(self, token_ids: np.ndarray, first_window: int) -> None:
        """Run windows ``first_window .. first_window + B - 1`` (``token_ids`` [B, window]) and fold them in."""
        ids = np.asarray(token_ids)
        if ids.ndim != 2 or ids.shape[1] != self.window or not np.issubdtype(ids.dtype, np.integer):
            raise IngestError(f"a batch must be integer token ids of shape [batch, {self.window}], "
                              f"got {ids.dtype} {list(ids.shape)}")
        if first_window != self.windows_done:
            raise IngestError(f"windows must be processed in order: expected window {self.windows_done} next, "
                              f"got {first_window}")
        if len(self._state) < len(self.layers):
            raise IngestError("this pass released a layer's state (release): it cannot process more windows")
        batch = ids.shape[0]
        if batch == 0:
            return
        if first_window + batch > self.n_windows:
            raise IngestError(f"windows {first_window}..{first_window + batch - 1} are past the end of the corpus "
                              f"({self.n_windows} windows)")
        self._first_window = first_window
        inputs = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        if self.bos_id is not None:
            inputs = torch.cat([torch.full((batch, 1), self.bos_id, dtype=torch.int64), inputs], 1)
        inputs = inputs.to(self.device)

        last = max(self.layers)
        handles = []
        for layer in self.layers:
            def hook(module, args, layer=layer):
                self._observe_batch(self._state[layer], args[0])
                if layer == last:
                    raise _StopForward
            handles.append(self.adapter.neuron_module(layer).register_forward_pre_hook(hook))
        try:
            with torch.inference_mode():
                self.adapter.model(input_ids=inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        self.windows_done += batch

    def _observe_batch(self, st: LayerState, x: torch.Tensor) -> None:
        """Fold one layer's activations [B, (1 +) window, d_mlp] into its state."""
        if self.bos_id is not None:
            x = x[:, 1:]  # the BOS position is an attention sink, not corpus text
        batch, tokens, d = x.shape
        first = self._first_window

        # One kernel over the activations gives the statistics' partials and every (window, neuron)
        # pair's record as a row: each record kept below is a row lookup.
        part = self._scratch.get("part", (5, batch, d), torch.float32)
        half = self._scratch.get("half", (batch, d, tokens), torch.float16)
        position = self._scratch.get("position", (batch, d), torch.int32)
        self._window_pass(x, part, half, position)
        if st.stats.add(part, first, tokens):
            self._merge_top(st)  # refresh the candidate threshold once per group
        wmax = part[MAX]
        rows = Rows(half.view(batch * d, tokens), wmax.view(-1), position.view(-1))
        if self._sparse:
            # Candidates beat the k-th max as of the last merge: a superset of the true ones.
            flat = torch.nonzero((wmax > st.top_bar).view(-1)).squeeze(1)
            if p := flat.numel():
                n = flat % d
                w = flat // d + first
                key = value_keys(rows.peak[flat], w)
                if not st.waiting.fits(p):
                    self._merge_top(st)
                if st.waiting.fits(p):
                    st.waiting.add(n, key, w, rows, flat)
                else:  # more than a buffer's worth in one batch (early in the pass): merge them now
                    st.top.merge_pairs(n, key, w, rows.select(flat))
                    st.top_bar = key_values(st.top.smallest)
        else:
            windows = torch.arange(first, first + batch, device=self.device)
            st.top.merge_dense(value_keys(wmax, windows[:, None]), windows, rows)
        st.random.add(first, batch, rows)
        st.reservoir.add(first, batch, rows)
        st.boundary.add(first, batch, rows.peak)

    def _merge_top(self, st: LayerState) -> None:
        if not st.waiting.n:
            return
        st.top.merge_pairs(*st.waiting.take())
        st.top_bar = key_values(st.top.smallest)

    def _settle(self) -> None:
        """Merge every waiting top candidate (results and checkpoints see complete buffers)."""
        with torch.inference_mode():
            for st in self._state.values():
                self._merge_top(st)

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume exactly, as CPU tensors and plain values (``torch.save``-able).

        On CPU the tensors are the live state, not copies: save them before processing more."""
        self._settle()
        return {
            "format": CHECKPOINT_FORMAT,
            "identity": self._identity(),
            "windows_done": self.windows_done,
            "layers": {layer: st.state() for layer, st in self._state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()`` output; its tensors are taken over, not copied."""
        found = state.get("format") if isinstance(state, dict) else None
        if found != CHECKPOINT_FORMAT:
            raise IngestError(f"activation checkpoint has format {found!r}, expected {CHECKPOINT_FORMAT}",
                              "delete the checkpoint to start the pass afresh")
        mine, theirs = self._identity(), state.get("identity")
        if theirs != mine:
            diff = sorted(k for k in mine if not isinstance(theirs, dict) or theirs.get(k) != mine[k])
            raise IngestError(f"activation checkpoint belongs to another run (differs in: {', '.join(diff)})",
                              "delete the checkpoint to start the pass afresh")
        layers = state.get("layers")
        with torch.inference_mode(False):
            for layer, st in self._state.items():
                if not isinstance(layers, dict) or not isinstance(layers.get(layer), dict):
                    raise refuse_checkpoint(f"layer {layer}")
                st.load(layers[layer], f"layer {layer}")
        self.windows_done = int(state["windows_done"])

    # --- results -------------------------------------------------------------------------
    def release(self, layer: int) -> None:
        """Free ``layer``'s state once its results are taken; the pass cannot go on after this."""
        self._state.pop(layer, None)

    def layer_results(self, layer: int) -> LayerResults:
        """Statistics and records of one layer for the windows processed so far."""
        if layer not in self._state:
            raise IngestError(f"layer {layer} was not part of this activation pass (layers {self.layers})")
        self._settle()
        st, cfg, d = self._state[layer], self.cfg, self.adapter.d_mlp
        done, tokens = self.windows_done, self.window
        n = done * tokens
        # The current, incomplete group is merged into copies: the state is left as it was.
        with torch.inference_mode():
            rows = done % GROUP
            mean, m2, positive, mx, mn, min_window_max = st.stats.totals(rows, tokens, (done - rows) * tokens)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = m2.cpu().numpy() / n
            density = positive.cpu().numpy() / n
        mx = mx.cpu().numpy().astype(np.float64)
        edges = np.zeros((d, 0))
        if cfg.n_quantiles and done:
            kept = st.boundary.results(done)
            edges = boundaries(kept.values, kept.valid, min_window_max.cpu().numpy().astype(np.float64), mx, cfg.n_quantiles)
        stats = pd.DataFrame({
            "index": np.arange(d, dtype=np.int64),
            "max_act": mx,
            "min_act": mn.cpu().numpy().astype(np.float64),
            "mean_act": mean.cpu().numpy() if n else np.full(d, np.nan),
            "var_act": var,
            "density": density,
            "n_tokens": np.full(d, n, dtype=np.int64),
            "quantile_boundaries": edges.tolist() if edges.size else [[] for _ in range(d)],
        })
        frames = [records(st.top.results(), "top"), records(st.random.results(done), "random")]
        if edges.size:
            frames.extend(quantile_records(st.reservoir.results(done), edges[:, 1:-1], cfg))
        return LayerResults(stats=stats, records=pd.concat(frames, ignore_index=True))
