"""LM-head decoding equals a brute-force computation: full logits for every neuron, then argsort."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama, tiny_neox

from ingest.adapters import adapter_for
from ingest.lmhead import decode_layer, unembedding
from kb.errors import IngestError

K = 7
BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "gpt_neox": tiny_neox}


def brute_force(adapter, layer: int, k: int = K):
    """Every neuron's full logit vector, computed directly from the modules' weights, sorted."""
    model = adapter.model
    with torch.no_grad():
        unembed = model.get_output_embeddings().weight.float()
        if adapter.name == "llama":
            mlp = model.model.layers[layer].mlp
            w_out = mlp.down_proj.weight.T.float()
            gain = model.model.layers[layer].post_attention_layernorm.weight.float()
            inputs = {"gate": mlp.gate_proj.weight.float() * gain, "up": mlp.up_proj.weight.float() * gain}
            final = model.model.norm.weight.float()
            out = w_out * final
        elif adapter.name == "gpt2":
            block = model.transformer.h[layer]
            w_out = block.mlp.c_proj.weight.float()
            inputs = {"in": block.mlp.c_fc.weight.T.float() * block.ln_2.weight.float()}
            out = (w_out - w_out.mean(1, keepdim=True)) * model.transformer.ln_f.weight.float()
        else:
            block = model.gpt_neox.layers[layer]
            w_out = block.mlp.dense_4h_to_h.weight.T.float()
            inputs = {"in": block.mlp.dense_h_to_4h.weight.float() * block.post_attention_layernorm.weight.float()}
            out = (w_out - w_out.mean(1, keepdim=True)) * model.gpt_neox.final_layer_norm.weight.float()
        logits = (out @ unembed.T).numpy().astype(np.float64)
        reads = {via: (w @ unembed.T).numpy().astype(np.float64) for via, w in inputs.items()}
    desc = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    asc = np.argsort(logits, axis=1, kind="stable")[:, :k]
    read_top = {via: np.argsort(-r, axis=1, kind="stable")[:, :k] for via, r in reads.items()}
    return logits, desc, asc, reads, read_top


def as_matrix(frame, column: str, d: int, k: int = K) -> np.ndarray:
    frame = frame.sort_values(["index", "rank"])
    assert frame["index"].tolist() == np.repeat(np.arange(d), k).tolist()
    assert frame["rank"].tolist() == np.tile(np.arange(k), d).tolist()
    return frame[column].to_numpy().reshape(d, k)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("layer", [0, 1])
def test_decode_equals_brute_force(family, layer):
    adapter = adapter_for(BUILDERS[family]())
    d = adapter.d_mlp
    tokens = decode_layer(adapter, layer, k=K, chunk=40)  # several chunks, the last one short
    logits, desc, asc, reads, read_top = brute_force(adapter, layer)
    rows = np.arange(d)[:, None]

    np.testing.assert_array_equal(as_matrix(tokens.promotes, "token_id", d), desc)
    np.testing.assert_allclose(as_matrix(tokens.promotes, "logit", d), logits[rows, desc], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(as_matrix(tokens.suppresses, "token_id", d), asc)
    np.testing.assert_allclose(as_matrix(tokens.suppresses, "logit", d), logits[rows, asc], rtol=1e-5, atol=1e-6)
    assert (np.diff(as_matrix(tokens.suppresses, "logit", d), axis=1) >= 0).all()  # most negative first

    expected_vias = ["gate", "up"] if family == "llama" else ["in"]
    assert sorted(tokens.reads["via"].unique()) == sorted(expected_vias)
    for via in expected_vias:
        sub = tokens.reads[tokens.reads["via"] == via]
        np.testing.assert_array_equal(as_matrix(sub, "token_id", d), read_top[via])
        np.testing.assert_allclose(as_matrix(sub, "weight", d), reads[via][rows, read_top[via]], rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_the_result():
    adapter = adapter_for(tiny_llama())
    a = decode_layer(adapter, 1, k=5, chunk=1)
    b = decode_layer(adapter, 1, k=5, chunk=10_000)
    for name in ("promotes", "suppresses", "reads"):
        fa, fb = getattr(a, name), getattr(b, name)
        assert fa.drop(columns=[c for c in fa.columns if c in ("logit", "weight")]).equals(
            fb.drop(columns=[c for c in fb.columns if c in ("logit", "weight")]))


def test_frames_have_the_schema_columns_and_types():
    adapter = adapter_for(tiny_gpt2())
    t = decode_layer(adapter, 0, k=3)
    assert list(t.promotes.columns) == ["index", "token_id", "logit", "rank"]
    assert list(t.suppresses.columns) == ["index", "token_id", "logit", "rank"]
    assert list(t.reads.columns) == ["index", "token_id", "weight", "rank", "via"]
    assert t.promotes["token_id"].dtype == np.int64 and t.promotes["logit"].dtype == np.float64
    assert len(t.promotes) == adapter.d_mlp * 3 and len(t.reads) == adapter.d_mlp * 3


def test_unembedding_is_cached_per_adapter_and_device():
    adapter = adapter_for(tiny_llama())
    assert unembedding(adapter) is unembedding(adapter, "cpu")
    assert unembedding(adapter).dtype == torch.float32


def test_bad_arguments():
    adapter = adapter_for(tiny_llama())
    with pytest.raises(IngestError, match="k and chunk"):
        decode_layer(adapter, 0, k=0)
    with pytest.raises(IngestError, match="out of range"):
        decode_layer(adapter, 5)
