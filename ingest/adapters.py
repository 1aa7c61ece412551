"""One small adapter per architecture family: where the MLP neurons are and what they read and write.

Everything downstream (activation pass, LM-head decoding, weight similarity, virtual weights)
talks to a model only through ``Adapter``, so adding an architecture means adding one
subclass here and a tiny model in ``tests/tinymodels.py``.

Conventions shared by every adapter:

- A *neuron* is one coordinate of the input to the MLP's output projection (after the
  nonlinearity, and for gated MLPs after the gate multiplies the up projection). A forward
  pre-hook on ``neuron_module(layer)`` reads all of a layer's neurons at once.
- Weight accessors return detached **float32** copies on the model's device, whatever the
  model's own dtype: they feed analysis (top-k logits, cosine similarities), where bf16
  rounding changes rankings.
- Input weights have the pre-MLP norm's gain folded in, so ``normalise(x) @ w_in.T`` is the
  pre-activation up to the norm's bias (a constant that does not depend on the input), where
  ``normalise`` is the norm without its affine part.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from kb.errors import IngestError


class Adapter:
    """Architecture-neutral access to one model's MLP neurons."""

    name: str = ""
    model: PreTrainedModel
    n_layers: int
    d_model: int
    d_mlp: int
    vocab_size: int

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.n_layers = len(self._layers())
        self.d_model = int(self.unembed_module().weight.shape[1])
        self.d_mlp = int(self._out_weight(0).shape[0])
        self.vocab_size = int(self.unembed_module().weight.shape[0])

    # --- the per-family parts -------------------------------------------------------------
    def _layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def neuron_module(self, layer: int) -> nn.Module:
        """The MLP's output projection; its first positional input is the neurons [batch, seq, d_mlp]."""
        raise NotImplementedError

    def _out_weight(self, layer: int) -> torch.Tensor:
        """The output projection's weight as [d_mlp, d_model], in whatever layout the module stores."""
        raise NotImplementedError

    def _in_weights(self, layer: int) -> dict[str, torch.Tensor]:
        """The input projections as [d_mlp, d_model] each, before folding the norm gain."""
        raise NotImplementedError

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        """The norm whose output the MLP reads."""
        raise NotImplementedError

    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    def _gain(self, norm: nn.Module) -> torch.Tensor:
        return norm.weight.detach().float()

    def _centres(self) -> bool:
        """True for LayerNorm (subtracts the mean), False for RMSNorm."""
        return False

    # --- the shared interface -------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IngestError(f"layer {layer} is out of range: the model has layers 0..{self.n_layers - 1}")

    def w_out(self, layer: int) -> torch.Tensor:
        """[d_mlp, d_model]: row i is what neuron i adds to the residual stream per unit of activation."""
        self._check_layer(layer)
        return self._out_weight(layer).detach().float().clone()

    def w_in(self, layer: int) -> dict[str, torch.Tensor]:
        """{"gate", "up"} for gated MLPs, {"in"} otherwise; each [d_mlp, d_model], norm gain folded in."""
        self._check_layer(layer)
        gain = self._gain(self.pre_mlp_norm(layer))
        return {key: w.detach().float() * gain[None, :] for key, w in self._in_weights(layer).items()}

    @property
    def n_inputs(self) -> int:
        """Input matrices per MLP: 2 for gated MLPs (gate, up), 1 otherwise."""
        return len(self._in_weights(0))

    def unembed_module(self) -> nn.Module:
        # get_output_embeddings() is the lm_head / embed_out Linear; when embeddings are tied its
        # weight *is* the input embedding, so tying needs no special case here.
        head = self.model.get_output_embeddings()
        if head is None:
            raise IngestError(f"{type(self.model).__name__} has no LM head: load it as a causal LM")
        return head

    def unembed(self) -> torch.Tensor:
        """[vocab, d_model]: the LM head (the input embedding when tied)."""
        return self.unembed_module().weight.detach().float().clone()

    def fold_final_norm(self, directions: torch.Tensor) -> torch.Tensor:
        """The final norm's linear part applied to residual directions [n, d_model].

        The normaliser (1/std or 1/rms) is a positive scalar per input and the bias does not
        depend on the direction, so neither changes which tokens a direction promotes.
        """
        d = directions.float()
        if self._centres():
            d = d - d.mean(dim=-1, keepdim=True)
        gain = self._gain(self.final_norm()).to(d.device)
        return d * gain

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={self.n_layers}, d_model={self.d_model}, "
            f"d_mlp={self.d_mlp}, vocab={self.vocab_size})"
        )


class LlamaAdapter(Adapter):
    """Gated MLP: down_proj(act(gate_proj(x)) * up_proj(x)), x = post_attention_layernorm(h); RMSNorm."""

    name = "llama"

    def _layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def neuron_module(self, layer: int) -> nn.Module:
        self._check_layer(layer)
        return self._layers()[layer].mlp.down_proj

    def _out_weight(self, layer: int) -> torch.Tensor:
        return self._layers()[layer].mlp.down_proj.weight.T  # nn.Linear stores [d_model, d_mlp]

    def _in_weights(self, layer: int) -> dict[str, torch.Tensor]:
        mlp = self._layers()[layer].mlp
        return {"gate": mlp.gate_proj.weight, "up": mlp.up_proj.weight}

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        return self._layers()[layer].post_attention_layernorm

    def final_norm(self) -> nn.Module:
        return self.model.model.norm


class GemmaAdapter(LlamaAdapter):
    """Llama layout, but GemmaRMSNorm multiplies by (1 + weight)."""

    def _gain(self, norm: nn.Module) -> torch.Tensor:
        return 1.0 + norm.weight.detach().float()


class GPT2Adapter(Adapter):
    """mlp = c_proj(gelu(c_fc(ln_2(h)))), Conv1D layers (weights stored [in, out]); LayerNorm."""

    name = "gpt2"

    def _layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    def neuron_module(self, layer: int) -> nn.Module:
        self._check_layer(layer)
        return self._layers()[layer].mlp.c_proj

    def _out_weight(self, layer: int) -> torch.Tensor:
        return self._layers()[layer].mlp.c_proj.weight  # Conv1D: already [d_mlp, d_model]

    def _in_weights(self, layer: int) -> dict[str, torch.Tensor]:
        return {"in": self._layers()[layer].mlp.c_fc.weight.T}  # Conv1D [d_model, d_mlp] -> [d_mlp, d_model]

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        return self._layers()[layer].ln_2

    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    def _centres(self) -> bool:
        return True


class GPTNeoXAdapter(Adapter):
    """mlp = dense_4h_to_h(gelu(dense_h_to_4h(post_attention_layernorm(.)))); LayerNorm; untied embed_out.

    With the parallel residual (Pythia's default) the MLP reads post_attention_layernorm of the
    layer's *input*, not of the attention output; the norm whose gain is folded is the same one.
    """

    name = "gpt_neox"

    def _layers(self) -> nn.ModuleList:
        return self.model.gpt_neox.layers

    def neuron_module(self, layer: int) -> nn.Module:
        self._check_layer(layer)
        return self._layers()[layer].mlp.dense_4h_to_h

    def _out_weight(self, layer: int) -> torch.Tensor:
        return self._layers()[layer].mlp.dense_4h_to_h.weight.T  # nn.Linear [d_model, d_mlp]

    def _in_weights(self, layer: int) -> dict[str, torch.Tensor]:
        return {"in": self._layers()[layer].mlp.dense_h_to_4h.weight}

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        return self._layers()[layer].post_attention_layernorm

    def final_norm(self) -> nn.Module:
        return self.model.gpt_neox.final_layer_norm

    def _centres(self) -> bool:
        return True


# model_type -> adapter class. Every entry is exercised on a tiny model in tests/test_adapters.py;
# add a type here only together with such a test.
_ADAPTERS: dict[str, type[Adapter]] = {
    "gpt2": GPT2Adapter,
    "llama": LlamaAdapter,
    "mistral": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "qwen3": LlamaAdapter,
    "gemma": GemmaAdapter,
    "gpt_neox": GPTNeoXAdapter,
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_ADAPTERS)


def adapter_for(model: PreTrainedModel) -> Adapter:
    """The adapter for ``model``, chosen by ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    cls = _ADAPTERS.get(model_type)
    if cls is None:
        raise IngestError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}): "
            f"supported are {', '.join(SUPPORTED_ARCHITECTURES)}",
            "load a causal LM of one of these families",
        )
    if model.get_output_embeddings() is None:
        raise IngestError(
            f"{type(model).__name__} has no LM head: load it with AutoModelForCausalLM",
        )
    return cls(model)
