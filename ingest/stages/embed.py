"""The embed stage: per-neuron vectors for similarity search and matching (``kb.vectors``).

Per layer, every neuron's L2-normalised output direction (``weights_out``: its down-projection
column) and input direction (``weights_in``: the gate row for gated MLPs, else the input row,
pre-MLP norm gain folded in); optionally (``--embed-activation-tokens``) its activations on
the first tokens of the corpus, centred, so that cosine similarity is their correlation. Then
the sentence embeddings of whatever explanations the store holds for the model
(``kb.vectors.embed_explanations``: only new or changed ones are embedded).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ingest.stages.base import Context, Setting, Stage, StageReport
from kb.errors import IngestError


class EmbedStage(Stage):
    name = "embed"
    help = "weight-direction vectors (and explanation embeddings) of every neuron, for search and matching"
    needs = ("model",)
    uses_corpus = True  # only read with --embed-activation-tokens; a default run tokenizes the corpus anyway
    settings = (
        Setting("embed_text_model", "all-MiniLM-L6-v2", "sentence-transformers model for explanation embeddings "
                "(the bundled default works offline; a local folder or hub id otherwise).", type=str),
        Setting("embed_explanations", "llm", "Explanations to embed for the 'explanation' similarity method: llm "
                "(those an LLM wrote or an import brought) or all (also the describe stage's data-derived "
                "summaries: about 30 min for SmolLM2 on 2 CPU cores).", type=str, choices=("llm", "all"),
                output=False),
        Setting("embed_activation_tokens", 0, "Also store each neuron's activations on this many corpus tokens "
                "(the 'activations' similarity method; 0 = off).", minimum=0, maximum=65536),
    )

    def validate(self, cfg) -> None:
        t = cfg.settings["embed_activation_tokens"]
        if t and t > cfg.settings["tokens"]:
            raise IngestError(f"--embed-activation-tokens {t} is more than the corpus tokens (--tokens "
                              f"{cfg.settings['tokens']})", "lower it, or raise --tokens")

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        from kb import vectors

        report = StageReport(self.name)
        adapter = ctx.lm.adapter
        fingerprint = ctx.lm.fingerprint
        ctx.reporter.begin(self.name, len(layers) * adapter.d_mlp, "neuron")
        acts = activation_sample(ctx, layers) if ctx.cfg.settings["embed_activation_tokens"] else None
        for layer in layers:
            ids = neuron_keys(ctx.model_id, layer, adapter.d_mlp)
            rows = pd.DataFrame({"key": ids, "neuron": ids, "layer": layer})
            w_in = adapter.w_in(layer)
            per_kind = {"weights_out": adapter.w_out(layer).numpy(),
                        "weights_in": (w_in["gate"] if "gate" in w_in else w_in["in"]).numpy()}
            if acts is not None:
                per_kind["activations"] = acts[0][layer]
            for kind, x in per_kind.items():
                info = acts[1] if kind == "activations" else {}
                vectors.save(ctx.store, ctx.model_id, kind, rows, x, fingerprint=fingerprint, info=info)
                report.rows += len(rows)
            ctx.mark_done(self, layer, report)
            ctx.reporter.advance(adapter.d_mlp)
        ctx.reporter.end()
        summaries = ctx.cfg.settings["embed_explanations"] == "all"
        ctx.reporter.begin("embed explanations", None, "text")
        explained = vectors.embed_explanations(ctx.store, ctx.model_id, ctx.cfg.settings["embed_text_model"],
                                               summaries=summaries)
        ctx.reporter.end()
        if explained is None:
            ctx.reporter.note("embed: no explanations to embed yet (the explanation method needs them: `nkb explain`, "
                              "then `nkb index --update`" + ("" if summaries else
                                                            ", or --embed-explanations all for the data summaries") + ")")
        return report


def neuron_keys(model: str, layer: int, d_mlp: int) -> list[str]:
    from kb.ids import neuron_ids

    return neuron_ids(model, layer, range(d_mlp))


def activation_sample(ctx: Context, layers: list[int]) -> tuple[dict[int, np.ndarray], dict]:
    """Each layer's [d_mlp, T] activations on the first T corpus tokens (whole windows), centred per neuron."""
    import torch

    want = ctx.cfg.settings["embed_activation_tokens"]
    w = ctx.windows
    n_windows = min(w.n_windows, -(-want // w.window))
    tokens = w.token_ids[:n_windows]
    prefix = [w.bos_id] if w.bos_id is not None else []
    batch = torch.as_tensor(np.concatenate([np.tile(np.asarray(prefix, dtype=np.int64), (n_windows, 1)), tokens], axis=1))
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        def hook(module, args, layer=layer):
            seen[layer].append(args[0][:, len(prefix):].detach().float().reshape(-1, args[0].shape[-1]).cpu())
        handles.append(ctx.lm.adapter.neuron_module(layer).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for start in range(0, n_windows, 8):
                ctx.lm.model(batch[start:start + 8].to(ctx.lm.device))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for layer in layers:
        x = torch.cat(seen[layer])[:want].T.numpy()  # [d_mlp, T]
        out[layer] = x - x.mean(axis=1, keepdims=True)
    digest = hashlib.blake2b(np.ascontiguousarray(tokens).tobytes(), digest_size=8).hexdigest()
    info = {"tokens": int(min(want, tokens.size)), "corpus": w.corpus, "token_digest": digest, "prefix": prefix}
    return out, info
