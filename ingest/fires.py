"""Which neurons fire on a text: run the model and rank neurons by their activation relative to
their own largest activation on the corpus (``Neuron.max_act``), Neuronpedia's "search via
inference"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kb import queries
from kb.errors import NkbError


def fires(store, text: str, *, model: str | None = None, k: int = 20, device: str = "cpu", lm=None) -> pd.DataFrame:
    """The ``k`` neurons whose largest activation on ``text`` is the largest fraction of their ``max_act``.

    Columns: neuron, layer, idx, activation (its largest on the text), max_act, ratio, token
    (where it peaked), position, explanation. ``lm`` reuses an already loaded model.
    """
    from ingest.models import load_model, token_texts
    from kb.vectors import check_k

    check_k(k)
    if not text:
        raise NkbError("no text to run the model on", 'give some text, e.g. nkb fires "The dog barked"')
    models = queries.model_ids(store)
    if model is None:
        if len(models) != 1:
            raise NkbError(f"the store holds {len(models)} models; say which one" if models else "the store holds no model",
                           f"pass --model (models: {', '.join(models) or 'none'})")
        model = models[0]
    elif model not in models:
        raise NkbError(f"no model {model!r} in the store", f"models in this store: {', '.join(models) or 'none'}")
    info = store.cypher("MATCH (m:Model {id: $m}) RETURN m.source AS source, m.fingerprint AS fp, "
                        "m.window_prefix AS prefix", {"m": model}).iloc[0]
    stats = store.cypher("MATCH (n:Neuron) WHERE n.model = $m AND n.max_act IS NOT NULL RETURN n.layer AS layer, "
                         "n.idx AS idx, n.max_act AS max_act", {"m": model})
    if stats.empty:
        raise NkbError(f"no neuron of {model} has activation statistics to compare with",
                       f"run: nkb ingest {model} --stages activations")
    if lm is None:
        lm = load_model(info["source"], device=device, name=model)
    if lm.fingerprint != info["fp"]:
        raise NkbError(f"{info['source']} is no longer the model {model} was ingested from (its weights differ)",
                       "ingest it again under another name")
    prefix = list(info["prefix"]) if info["prefix"] is not None else []
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise NkbError("the text has no tokens")
    layers = sorted(stats["layer"].unique().tolist())
    peaks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    handles = []
    for layer in layers:
        def hook(module, args, layer=layer):
            x = args[0][0, len(prefix):].float()  # [tokens, d_mlp]
            v, pos = x.max(dim=0)
            peaks[layer] = (v.cpu().numpy(), pos.cpu().numpy())
        handles.append(lm.adapter.neuron_module(int(layer)).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            lm.model(torch.tensor([prefix + ids], device=lm.device))
    finally:
        for h in handles:
            h.remove()
    act = np.array([peaks[layer][0][idx] for layer, idx in zip(stats["layer"], stats["idx"])])
    pos = np.array([peaks[layer][1][idx] for layer, idx in zip(stats["layer"], stats["idx"])])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(stats["max_act"].to_numpy() > 0, act / stats["max_act"].to_numpy(), np.nan)
    tokens = token_texts(lm.tokenizer, ids)
    df = stats.assign(activation=act.astype(np.float64), ratio=ratio, position=pos.astype(np.int64),
                      token=[tokens[p] for p in pos])
    df = df[np.isfinite(df["ratio"])].sort_values(["ratio", "layer", "idx"], ascending=[False, True, True]).head(k)
    from kb.ids import neuron_id

    df.insert(0, "neuron", [neuron_id(model, int(la), int(i)) for la, i in zip(df["layer"], df["idx"])])
    expl = store.cypher("MATCH (n:Neuron) WHERE n.id IN $ids RETURN n.id AS neuron, n.explanation AS explanation",
                        {"ids": df["neuron"].tolist()})
    df = df.merge(expl, on="neuron", how="left")
    return df[["neuron", "layer", "idx", "activation", "max_act", "ratio", "token", "position", "explanation"]]
