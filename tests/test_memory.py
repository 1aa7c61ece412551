"""The memory planner (ingest.memory): its estimates against what the code really holds, the
layer-group split, the LM-head chunk at an 8B model's widths, and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import struct

import numpy as np
import pytest
import torch
from tinymodels import save_tiny_model, tiny_llama

from ingest import memory
from ingest.activations import ActivationCollector, RecordConfig, buffer_bytes
from ingest.adapters import adapter_for
from ingest.lmhead import decode_layer
from kb.errors import IngestError

GIB = 2**30
STAGES = {"model", "lmhead", "activations"}
# Llama-3.1-8B's widths; its weights are 16 GB in bf16.
LLAMA_8B = memory.Shape("llama-3.1-8b", n_layers=32, d_model=4096, d_mlp=14_336, vocab=128_256, n_inputs=2,
                        n_heads=32, weight_bytes=16_060_522_496, dtype_bytes=2)
SMOLLM2 = memory.Shape("smollm2-135m", n_layers=30, d_model=576, d_mlp=1536, vocab=49_152, n_inputs=2, n_heads=9,
                       weight_bytes=134_515_008 * 4, dtype_bytes=4)


@pytest.mark.parametrize("text, expected", [("4G", 4 * GIB), ("4GB", 4 * GIB), ("4GiB", 4 * GIB), ("512M", 512 * 2**20),
                                            ("1.5g", int(1.5 * GIB)), ("64k", 64 * 1024)])
def test_parse_size(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("text", ["4000", "lots", "-1G", "0G", ""])
def test_parse_size_refuses_what_it_cannot_read(text):
    with pytest.raises(IngestError, match="--max-memory"):
        memory.parse_size(text)


def _held_bytes(obj, seen: set[int] | None = None) -> int:
    """Bytes of every tensor and array reachable from obj's attributes, each storage once."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if isinstance(base, np.ndarray):
            if id(base) in seen or base.__array_interface__["data"][0] in seen:
                return 0
            seen.add(base.__array_interface__["data"][0])
            return base.nbytes
        return 0  # a view of a tensor's storage, counted with the tensor
    if isinstance(obj, dict):
        return sum(_held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_held_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_held_bytes(v, seen) for v in vars(obj).values())
    return 0


def test_buffer_bytes_is_what_a_layer_state_holds():
    adapter = adapter_for(tiny_llama(d_mlp=96))
    cfg = RecordConfig(top_k=5, n_random=4, n_quantiles=4, per_quantile=2, reservoir=12, boundary_sample=40)
    c = ActivationCollector(adapter, [0, 1], 12, cfg, bos_id=None, n_windows=150)
    held = [_held_bytes(c._state[layer]) for layer in (0, 1)]
    expected = buffer_bytes(96, 12, cfg)
    # The estimate leaves out two [d] caches (the top records' smallest key and its value).
    for h in held:
        assert expected <= h <= expected + 12 * 96, (h, expected)


def _safetensors_bytes(path) -> int:
    """Bytes of the tensors a safetensors file stores, from its JSON header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from ingest.models import load_model

    path = save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "llama", seed=0, n_layers=3)
    return path, load_model(str(path), name="tiny")


def test_shape_of_a_loaded_model(tiny_lm):
    path, lm = tiny_lm
    shape = memory.Shape.of(lm)
    assert (shape.n_layers, shape.d_model, shape.d_mlp, shape.vocab, shape.n_inputs) == (3, 32, 96, 512, 2)
    stored = _safetensors_bytes(path / "model.safetensors")
    # The weights as stored, plus the non-persistent buffers (rotary frequencies) of a few hundred bytes.
    assert stored <= shape.weight_bytes <= stored + 4096


def test_plan_splits_layers_to_fit_and_refuses_below_one_layer(tiny_lm):
    _, lm = tiny_lm
    shape, s = memory.Shape.of(lm), memory.Settings(window=32, batch_size=8, n_windows=64)
    layers = [0, 1, 2]
    free = memory.plan(shape, layers, s, stages=STAGES, budget=None, buffer_pool=GIB)
    assert free.groups == [[0, 1, 2]]
    assert free.per_layer == buffer_bytes(96, 32, RecordConfig())
    # The estimate grows by one layer's state per layer in a pass, and holds the buffer pool.
    assert free.peak(3) - free.peak(2) == free.per_layer
    assert free.base["buffer pool"] == GIB
    assert free.peak(1) > GIB + shape.weight_bytes + memory.RUNTIME_BYTES

    one = memory.plan(shape, layers, s, stages=STAGES, budget=free.peak(1) + free.per_layer // 2, buffer_pool=GIB)
    assert one.groups == [[0], [1], [2]] and one.peak() <= one.budget
    two = memory.plan(shape, layers, s, stages=STAGES, budget=free.peak(2), buffer_pool=GIB)
    assert two.groups == [[0, 1], [2]]
    assert "2 groups of at most 2 layers" in two.describe()[1]

    with pytest.raises(IngestError, match="too small for the activation pass of one layer of tiny"):
        memory.plan(shape, layers, s, stages=STAGES, budget=free.peak(1) - 1, buffer_pool=GIB)
    # Without the activations stage, layers need no pass at all.
    lmhead_only = memory.plan(shape, layers, s, stages={"model", "lmhead"}, budget=free.peak(1) - 1, buffer_pool=GIB)
    assert lmhead_only.pass_fixed == {} and lmhead_only.peak() <= lmhead_only.budget


def test_groups_are_contiguous_and_balanced():
    assert memory.split(list(range(30)), 14) == [list(range(10)), list(range(10, 20)), list(range(20, 30))]
    assert memory.split([0, 5, 7], 1) == [[0], [5], [7]]
    assert memory.split([3, 4], 10) == [[3, 4]]


def test_lmhead_chunk_follows_the_budget_at_8b_widths():
    s = memory.Settings()
    layers = list(range(32))
    roomy = memory.plan(LLAMA_8B, layers, s, stages={"model", "lmhead"}, budget=24 * GIB, buffer_pool=GIB)
    tight = memory.plan(LLAMA_8B, layers, s, stages={"model", "lmhead"}, budget=21 * GIB, buffer_pool=GIB)
    assert roomy.lmhead_chunk == memory.LMHEAD_MAX_CHUNK
    assert 1 <= tight.lmhead_chunk < roomy.lmhead_chunk
    for p in (roomy, tight):
        assert p.peak() <= p.budget
        # the logits of a chunk, never of the whole layer: [3 * chunk, vocab] float32
        assert p.lmhead["logits"] >= 3 * p.lmhead_chunk * LLAMA_8B.vocab * 4
        assert p.lmhead_chunk < LLAMA_8B.d_mlp
    # 14,336 x 128,256 float32 logits alone would be 7.3 GB.
    assert tight.lmhead["logits"] < 14_336 * 128_256 * 4 / 4
    with pytest.raises(IngestError, match="too small for the LM-head decode of one layer"):
        memory.plan(LLAMA_8B, layers, s, stages={"model", "lmhead"}, budget=19 * GIB, buffer_pool=GIB)


def test_8b_activation_pass_is_split_and_smollm2_fits_one_pass_at_4g():
    layers = list(range(32))
    p = memory.plan(LLAMA_8B, layers, memory.Settings(), stages=STAGES, budget=24 * GIB, buffer_pool=GIB)
    assert len(p.groups) > 1 and p.peak() <= 24 * GIB
    assert sorted(sum(p.groups, [])) == layers
    # SmolLM2-135M at the defaults: all 30 layers in one pass need about 37 MB each (records
    # kept as float16, 33 MB; 52 MB in float32; and 4 MB of top-record candidates).
    smol = memory.plan(SMOLLM2, list(range(30)), memory.Settings(), stages=STAGES, budget=None, buffer_pool=GIB)
    assert 39 * 2**20 > smol.per_layer > 35 * 2**20
    assert 3 * GIB < smol.peak(30) < 5 * GIB


def test_chunked_lmhead_equals_unchunked():
    adapter = adapter_for(tiny_llama(d_mlp=96))
    shape = memory.Shape("tiny", 2, 32, 96, 512, 2, 4, 0, 4)
    base = memory.plan(shape, [0, 1], memory.Settings(), stages={"lmhead"}, budget=None, buffer_pool=0)
    # A budget that leaves room for 7 neurons per product: the decode runs in 14 chunks.
    budget = sum(base.base.values()) + sum(memory.lmhead_parts(shape, 7, 10).values())
    p = memory.plan(shape, [0, 1], memory.Settings(), stages={"lmhead"}, budget=budget, buffer_pool=0)
    assert p.lmhead_chunk == 7
    for layer in (0, 1):
        chunked = decode_layer(adapter, layer, k=10, chunk=p.lmhead_chunk)
        whole = decode_layer(adapter, layer, k=10, chunk=adapter.d_mlp)
        for name, value in (("promotes", "logit"), ("suppresses", "logit"), ("reads", "weight")):
            a, b = getattr(chunked, name), getattr(whole, name)
            assert a.drop(columns=value).equals(b.drop(columns=value))
            np.testing.assert_allclose(a[value], b[value], rtol=1e-6, atol=1e-6)


_FAULTS = """
import resource, sys
import numpy as np
from ingest.memory import tune_heap
tuned = sys.argv[1] == "tuned" and tune_heap(8 << 20)
def step():  # what a forward pass does at every layer: several tensors of a few MB, freed together
    held = [np.ones(2 << 20, dtype=np.float32) for _ in range(5)]
    del held
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and page-fault counts are glibc/Linux")
def test_tuned_heap_keeps_freed_pages():
    """At glibc's adaptive defaults, memory freed by one step goes back to the kernel and faults in
    again, zeroed, in the next (about 2,000 pages of 4 KiB per step here); once tune_heap has
    fixed the thresholds for tensors of that size, the steps reuse it."""
    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        tuned, faults = out.stdout.split()
        return int(tuned), int(faults)

    assert run("default")[1] > 5_000  # the cost tune_heap removes is there to begin with
    tuned, faults = run("tuned")
    assert tuned == 1
    assert faults < 500
