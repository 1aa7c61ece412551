"""``nkb predict``: a neuron's graph's prediction on new text next to its real activation.

The real activation comes from running the model the store names (``Model.source``) on
``Model.window_prefix`` + the text's tokens, exactly as the activation records were made;
both are shown normalised by the neuron's largest activation on the corpus (firing at 0.5).
"""

from __future__ import annotations

import pandas as pd

from kb.errors import NkbError
from kb.ids import NeuronId


def predict_text(store, neuron: str, text: str, *, device: str = "cpu") -> pd.DataFrame:
    """One row per token: position, token, real (raw), real_norm, predicted_norm, fires (real), predicted_fires."""
    from ingest.models import load_model, token_texts
    from ingest.n2g.runner import LayerRunner
    from ingest.stages.n2g import model_prefix
    from kb.n2g import load_graph

    if not text.strip():
        raise NkbError("no text to predict on", 'give the text as the second argument, e.g. nkb predict M/0/1 "Hello"')
    nid = NeuronId.parse(neuron)
    graph = load_graph(store, str(nid))
    found = store.cypher("MATCH (m:Model) WHERE m.id = $id RETURN m.source AS source, m.fingerprint AS fp",
                         {"id": nid.model})
    lm = load_model(found["source"].iloc[0], device=device, name=nid.model)
    if lm.fingerprint != found["fp"].iloc[0]:
        raise NkbError(f"the model at {found['source'].iloc[0]} is not the one {nid.model} was ingested from "
                       "(its weights differ)")
    tokens = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not tokens:
        raise NkbError("the text has no tokens")
    acts = LayerRunner(lm.adapter, nid.layer, model_prefix(store, nid.model)).run([tokens])[tuple(tokens)]
    real = acts[:, nid.index].astype(float)
    max_act = float(graph.neuron["max_act"])
    predicted = graph.trie().predict(tokens)
    texts = token_texts(lm.tokenizer, tokens)
    df = pd.DataFrame({"position": range(len(tokens)), "token": texts, "real": real, "real_norm": real / max_act,
                       "predicted_norm": predicted})
    df["fires"] = df["real_norm"] >= 0.5
    df["predicted_fires"] = df["predicted_norm"] >= 0.5
    return df
