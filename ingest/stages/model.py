"""The model stage: the Model node, its tokenizer's Tokens (with the TokenText ways in to them)
and one Neuron per MLP neuron.

Every other stage writes onto these nodes, so the pipeline always runs this one first. It is
cheap and idempotent: re-running it rewrites nothing that is already stored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ingest.stages.base import Context, Stage, StageReport
from kb.ids import neuron_ids, token_ids


class ModelStage(Stage):
    name = "model"
    help = "the Model node, its tokenizer's Tokens and one Neuron per MLP neuron (always runs)"

    def run(self, ctx: Context, layers: list[int]) -> StageReport:
        lm, store, a = ctx.lm, ctx.store, ctx.lm.adapter
        report = StageReport(self.name)
        report.rows += store.upsert_nodes("Model", pd.DataFrame([{
            "id": ctx.model_id, "kind": "lm", "source": lm.source, "architecture": a.name,
            "n_layers": a.n_layers, "d_model": a.d_model, "d_mlp": a.d_mlp, "vocab_size": a.vocab_size,
            "tokenizer": lm.tokenizer_id, "fingerprint": lm.fingerprint, "config": lm.config_json,
            "window_prefix": window_prefix(lm.tokenizer),
        }]))
        tokens = pd.DataFrame({
            "id": token_ids(lm.tokenizer_id, range(a.vocab_size)),
            "tokenizer": lm.tokenizer_id,
            "token_id": np.arange(a.vocab_size, dtype=np.int64),
            "text": ctx.token_text,
        })
        report.rows += store.upsert_nodes("Token", tokens)
        texts, spells = spellings(tokens)
        report.rows += store.upsert_nodes("TokenText", texts)
        report.rows += store.upsert_rels("SPELLS", spells)
        for layer in layers:
            ids = neuron_ids(ctx.model_id, layer, range(a.d_mlp))
            report.rows += store.upsert_nodes("Neuron", pd.DataFrame({
                "id": ids, "model": ctx.model_id, "layer": layer,
                "idx": np.arange(a.d_mlp, dtype=np.int64), "kind": "mlp",
            }))
            report.rows += store.upsert_rels("HAS_NEURON", pd.DataFrame({"src": ctx.model_id, "dst": ids}))
            ctx.mark_done(self, layer, report)
        return report


def spellings(tokens: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The TokenText nodes and SPELLS rows for Token rows (``id``, ``text``): one node per
    distinct text, spelling each token. Padding rows decode to '': no way in by text."""
    spelled = tokens[tokens["text"] != ""]
    return (pd.DataFrame({"id": spelled["text"].unique()}),
            pd.DataFrame({"src": spelled["text"], "dst": spelled["id"]}))


def window_prefix(tokenizer) -> list[int]:
    """The token ids the activation pass puts before every window (``Model.window_prefix``)."""
    from ingest.corpus import bos_id_for

    bos = bos_id_for(tokenizer)
    return [] if bos is None else [int(bos)]


def vocabulary_texts(lm) -> list[str]:
    """Each vocabulary entry's text (``ingest.models.token_texts``); embedding rows past the
    tokenizer (padding) get ''."""
    from ingest.models import token_texts

    known = min(len(lm.tokenizer), lm.adapter.vocab_size)
    return token_texts(lm.tokenizer, range(known)) + [""] * (lm.adapter.vocab_size - known)
