"""Adapters against the real modules of tiny random models: every weight accessor is checked by
reproducing what the model itself computes, so a transposed, unfolded or wrong weight fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ingest.adapters import SUPPORTED_ARCHITECTURES, Adapter, adapter_for
from kb.errors import IngestError
from tinymodels import GATED_TYPES, tiny_gpt2, tiny_llama, tiny_neox

CASES = {
    "gpt2": lambda: tiny_gpt2(),
    **{t: (lambda t=t: tiny_llama(model_type=t)) for t in GATED_TYPES},
    "llama-untied": lambda: tiny_llama(tie_word_embeddings=False),
    "gpt_neox": lambda: tiny_neox(),
    "gpt_neox-serial": lambda: tiny_neox(use_parallel_residual=False),
}
FAMILY = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "gpt_neox-serial": "gpt_neox"}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    model = CASES[request.param]()
    return request.param, model, adapter_for(model)


def _ids(model, batch=2, seq=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, seq), generator=gen)


def _capture(model, hooks):
    """Run one forward pass with ``hooks`` = {key: (module, "pre" | "out")}; return what each saw."""
    seen, handles = {}, []
    for key, (module, kind) in hooks.items():
        if kind == "pre":
            handles.append(module.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0])))
        elif kind == "in":  # a forward hook that keeps the module's input
            handles.append(module.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, out)))
    try:
        with torch.no_grad():
            logits = model(_ids(model)).logits
    finally:
        for h in handles:
            h.remove()
    seen["logits"] = logits
    return seen


def _normalise(norm, x):
    """The norm without its affine part, computed independently of the adapter."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
    if isinstance(norm, torch.nn.LayerNorm):
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _in_projections(adapter, layer):
    mlp = adapter.neuron_module(layer)  # only to reach the parent MLP below
    block = adapter._layers()[layer].mlp
    assert mlp in block.modules()
    if adapter.name == "llama":
        return {"gate": block.gate_proj, "up": block.up_proj}, block.act_fn
    if adapter.name == "gpt2":
        return {"in": block.c_fc}, block.act
    return {"in": block.dense_h_to_4h}, block.act


def test_family_and_dimensions(case):
    key, model, adapter = case
    cfg = model.config
    assert isinstance(adapter, Adapter)
    assert adapter.name == FAMILY.get(key, "llama")
    assert adapter.model is model
    assert adapter.n_layers == cfg.num_hidden_layers
    assert adapter.d_model == cfg.hidden_size
    assert adapter.d_mlp == (cfg.n_inner if key == "gpt2" else cfg.intermediate_size)
    assert adapter.vocab_size == cfg.vocab_size
    assert adapter.d_mlp != adapter.d_model  # otherwise a transposed weight could pass a shape check


def test_pre_hook_sees_neurons(case):
    _, model, adapter = case
    hooks = {layer: (adapter.neuron_module(layer), "pre") for layer in range(adapter.n_layers)}
    seen = _capture(model, hooks)
    for layer in range(adapter.n_layers):
        assert seen[layer].shape == (2, 7, adapter.d_mlp)
    assert not torch.equal(seen[0], seen[1])  # each layer's module is its own


def test_w_out_reconstructs_mlp_output(case):
    _, model, adapter = case
    for layer in range(adapter.n_layers):
        module = adapter.neuron_module(layer)
        seen = _capture(model, {"acts": (module, "pre"), "out": (module, "out")})
        w_out = adapter.w_out(layer)
        assert w_out.shape == (adapter.d_mlp, adapter.d_model)
        assert w_out.dtype == torch.float32
        bias = module.bias if getattr(module, "bias", None) is not None else torch.zeros(adapter.d_model)
        torch.testing.assert_close(seen["acts"] @ w_out + bias, seen["out"], atol=1e-5, rtol=1e-4)
        # one neuron's row is exactly its contribution: zero all other neurons
        acts = torch.zeros_like(seen["acts"])
        acts[..., 5] = seen["acts"][..., 5]
        with torch.no_grad():
            torch.testing.assert_close(module(acts) - bias, acts[..., 5:6] * w_out[5], atol=1e-6, rtol=1e-4)


def test_w_in_reproduces_pre_activations_and_neurons(case):
    _, model, adapter = case
    for layer in range(adapter.n_layers):
        norm = adapter.pre_mlp_norm(layer)
        projections, act_fn = _in_projections(adapter, layer)
        hooks = {"x": (norm, "pre"), "acts": (adapter.neuron_module(layer), "pre")}
        hooks.update({k: (m, "out") for k, m in projections.items()})
        seen = _capture(model, hooks)
        x_hat = _normalise(norm, seen["x"])
        w_in = adapter.w_in(layer)
        assert sorted(w_in) == sorted(projections)
        norm_bias = norm.bias if getattr(norm, "bias", None) is not None else torch.zeros(adapter.d_model)
        pre = {}
        for k, proj in projections.items():
            assert w_in[k].shape == (adapter.d_mlp, adapter.d_model)
            with torch.no_grad():
                constant = proj(norm_bias)  # norm bias through the projection, plus its own bias
            pre[k] = x_hat @ w_in[k].T + constant
            torch.testing.assert_close(pre[k], seen[k], atol=1e-4, rtol=1e-4)
            # the check has teeth: the raw weight (gain not folded) does not reproduce it
            raw = proj.weight.T if adapter.name == "gpt2" else proj.weight
            assert not torch.allclose(x_hat @ raw.detach().T + constant, seen[k], atol=1e-3)
        neurons = act_fn(pre["gate"]) * pre["up"] if "gate" in pre else act_fn(pre["in"])
        torch.testing.assert_close(neurons, seen["acts"], atol=1e-4, rtol=1e-4)


def test_unembed_and_final_norm_give_the_logits(case):
    key, model, adapter = case
    u = adapter.unembed()
    assert u.shape == (adapter.vocab_size, adapter.d_model)
    tied = key not in ("gpt_neox", "gpt_neox-serial", "llama-untied")
    embed = model.get_input_embeddings().weight
    assert torch.equal(u, embed.detach()) is tied
    seen = _capture(model, {"final": (adapter.final_norm(), "out")})
    torch.testing.assert_close(seen["final"] @ u.T, seen["logits"], atol=1e-4, rtol=1e-4)


def test_fold_final_norm_matches_the_norm_up_to_scale(case):
    _, model, adapter = case
    norm = adapter.final_norm()
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(6, adapter.d_model, generator=gen) + 0.7  # an offset, so centring matters
    folded = adapter.fold_final_norm(d)
    assert folded.shape == d.shape
    with torch.no_grad():
        out = norm(d)
    if getattr(norm, "bias", None) is not None:
        out = out - norm.bias
    # the norm's normaliser is one positive scalar per direction
    scale = (out * folded).sum(-1) / (folded * folded).sum(-1)
    assert (scale > 0).all()
    torch.testing.assert_close(folded * scale[:, None], out, atol=1e-5, rtol=1e-4)
    # and a bare gain multiply (no centring, or no gain) is not enough
    wrong = d if adapter.name == "llama" else d * adapter._gain(norm)
    s2 = (out * wrong).sum(-1) / (wrong * wrong).sum(-1)
    assert not torch.allclose(wrong * s2[:, None], out, atol=1e-3)


def test_layer_out_of_range(case):
    _, _, adapter = case
    with pytest.raises(IngestError, match="out of range"):
        adapter.w_out(adapter.n_layers)
    with pytest.raises(IngestError, match="out of range"):
        adapter.neuron_module(-1)


def test_weights_are_float32_for_a_bf16_model():
    model = tiny_llama().to(torch.bfloat16)
    adapter = adapter_for(model)
    assert adapter.w_out(0).dtype == torch.float32
    assert adapter.w_in(0)["gate"].dtype == torch.float32
    assert adapter.unembed().dtype == torch.float32
    assert adapter.fold_final_norm(torch.ones(2, adapter.d_model, dtype=torch.bfloat16)).dtype == torch.float32


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(IngestError) as err:
        adapter_for(bert)
    message = str(err.value)
    assert "unsupported architecture 'bert'" in message
    for name in SUPPORTED_ARCHITECTURES:
        assert name in message
    assert set(SUPPORTED_ARCHITECTURES) >= {"gpt2", "llama", "gpt_neox"}

    fake = tiny_gpt2()
    fake.config.model_type = "not-a-model"
    with pytest.raises(IngestError, match="unsupported architecture 'not-a-model'.*supported are gpt2"):
        adapter_for(fake)


def test_headless_model_is_refused():
    model = tiny_llama().model  # the bare LlamaModel: no LM head
    with pytest.raises(IngestError, match="no LM head"):
        adapter_for(model)
