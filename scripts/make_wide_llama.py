#!/usr/bin/env python
"""Write a random-weight Llama checkpoint with Llama-3.1-8B's widths, for measuring ingest at 8B scale offline.

    python scripts/make_wide_llama.py /tmp/wide-llama            # 2 layers, bf16, ~1.7 GB
    nkb ingest /tmp/wide-llama --dtype bfloat16 --tokens 8192

The checkpoint is a local safetensors directory (config.json, model.safetensors and the
tokenizer files) that transformers loads with no network: hidden size 4096, MLP width
14,336, 32 attention heads, 8 key-value heads, an untied LM head (as Llama-3.1-8B), and
the bundled SmolLM2 tokenizer (vocabulary 49,152) instead of Llama's 128,256 tokens,
because no Llama tokenizer is available offline. Weights are N(0, 0.02) with unit norms,
seeded, so two runs write the same bytes; they mean nothing, which is fine for timing and
memory (the work per neuron does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HIDDEN, MLP, HEADS, KV_HEADS = 4096, 14_336, 32, 8


def smollm2_tokenizer():
    """The bundled SmolLM2 tokenizer, read from its GGUF file without loading the model."""
    from transformers import AutoTokenizer

    from ingest.models import BUNDLED

    gguf = BUNDLED["smollm2-135m"].path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tensor_shapes(layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    head_dim = HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HEADS * head_dim, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * head_dim),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "mlp.gate_proj.weight": (MLP, HIDDEN),
            p + "mlp.up_proj.weight": (MLP, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, MLP),
        })
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (vocab, HIDDEN)
    return shapes


def write(out: Path, layers: int = 2, seed: int = 0) -> dict:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = smollm2_tokenizer()
    vocab = len(tok)
    tok.save_pretrained(out)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": MLP, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "num_hidden_layers": layers, "vocab_size": vocab,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500_000.0,
        "max_position_embeddings": 131_072, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "torch_dtype": "bfloat16",
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in tensor_shapes(layers, vocab).items():
        if len(shape) == 1:
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:  # drawn in float32 row blocks, so no float32 copy of a whole matrix exists
            t = torch.empty(shape, dtype=torch.bfloat16)
            for start in range(0, shape[0], 4096):
                block = torch.randn((min(4096, shape[0] - start), *shape[1:]), generator=gen)
                t[start:start + len(block)] = block.mul_(0.02)
            tensors[name] = t
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(t.numel() for t in tensors.values())
    return {"dir": str(out), "layers": layers, "vocab": vocab, "params": n_params,
            "weights_bytes": (out / "model.safetensors").stat().st_size}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="directory to write (created)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    info = write(args.out, args.layers, args.seed)
    print(f"wrote {info['dir']}: {info['layers']} layers, {info['params']:,} parameters, "
          f"{info['weights_bytes'] / 2**30:.2f} GiB of bf16 weights, vocabulary {info['vocab']:,}")


if __name__ == "__main__":
    main()
