"""Explainers behind one interface: ``explain(neurons) -> [text or None]``.

Every explanation records who wrote it (``Explanation.explainer``) and how
(``Explanation.method``):

- ``DataExplainer`` (explainer ``data``, method ``summary``): a description assembled from the
  stored data with no language model: the tokens the top records peak on, the N2G firing and
  context tokens where N2G ran, and the tokens the neuron promotes and reads through the LM
  head. It is a summary of measurements, labelled as such, never an LLM explanation.
- ``N2GExplainer`` (explainer ``data``, method ``n2g``): the N2G token index alone, for neurons
  N2G has run on; its F1 is stored as this explanation's score.
- ``LLMExplainer`` (explainer: the model's name, method ``top-activations``): OpenAI's method
  on a local model or an OpenAI-compatible server.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from ingest.explain import prompts
from ingest.explain.neurons import NeuronData, Record

Progress = Callable[[int], None] | None


class Explainer(ABC):
    name: str
    method: str

    @abstractmethod
    def explain(self, neurons: Sequence[NeuronData], progress: Progress = None) -> list[str | None]:
        """One explanation per neuron; None where there is nothing to explain from."""


def _tokens(texts: Sequence[str], k: int) -> str:
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in list(texts)[:k])


class DataExplainer(Explainer):
    name, method = "data", "summary"

    def __init__(self, k: int = 5):
        self.k = k

    def explain(self, neurons: Sequence[NeuronData], progress: Progress = None) -> list[str | None]:
        out = []
        for n in neurons:
            parts = []
            firing = n.firing_tokens()
            if firing:
                total = sum(firing.values())
                parts.append("top records peak on " + ", ".join(
                    f"{json.dumps(t, ensure_ascii=False)} ({c}/{total})" for t, c in firing.most_common(self.k)))
            if n.fires_on:
                parts.append("N2G fires on " + _tokens([t for t, _ in n.fires_on], self.k))
            if n.context:
                parts.append("N2G context " + _tokens([t for t, _ in n.context], self.k))
            if n.promotes:
                parts.append("promotes " + _tokens(n.promotes, self.k))
            if n.suppresses:
                parts.append("suppresses " + _tokens(n.suppresses, self.k))
            if n.reads:
                parts.append("reads " + _tokens(n.reads, self.k))
            out.append("; ".join(parts) if parts else None)
        if progress:
            progress(len(neurons))
        return out


class N2GExplainer(Explainer):
    name, method = "data", "n2g"

    def __init__(self, k: int = 5):
        self.k = k

    def explain(self, neurons: Sequence[NeuronData], progress: Progress = None) -> list[str | None]:
        out = []
        for n in neurons:
            if not n.fires_on:
                out.append(None)
                continue
            text = "fires on " + _tokens([t for t, _ in n.fires_on], self.k)
            if n.context:
                text += " after " + _tokens([t for t, _ in n.context], self.k)
            out.append(text)
        if progress:
            progress(len(neurons))
        return out


def explain_records(n: NeuronData, n_records: int) -> list[Record]:
    """The top records an explainer sees: the even ranks (0, 2, 4...), so the odd ranks stay
    unseen for scoring."""
    return [r for r in n.top if r.rank % 2 == 0][:n_records]


class LLMExplainer(Explainer):
    """OpenAI's method on a ``LocalLM`` or an ``ApiClient`` (``ingest.explain.llm``)."""

    method = "top-activations"

    def __init__(self, backend, *, n_records: int = 5, max_tokens: int = 48):
        self.backend = backend
        self.name = backend.name
        self.n_records, self.max_tokens = n_records, max_tokens

    def explain(self, neurons: Sequence[NeuronData], progress: Progress = None) -> list[str | None]:
        todo = [i for i, n in enumerate(neurons) if explain_records(n, self.n_records)]
        local = hasattr(self.backend, "generate")
        conversations = [prompts.explanation_messages(
            [(r.tokens, r.activations.tolist()) for r in explain_records(neurons[i], self.n_records)], prefill=local)
            for i in todo]
        if local:
            texts = self.backend.generate(conversations, max_new_tokens=self.max_tokens, progress=progress,
                                          prefix=prompts.PRIMER)
        else:
            answers = self.backend.chat([{"messages": m, "max_tokens": self.max_tokens, "temperature": 0}
                                         for m in conversations], progress=progress)
            texts = [a["text"] for a in answers]
        out: list[str | None] = [None] * len(neurons)
        for i, text, conversation in zip(todo, texts, conversations):
            out[i] = prompts.clean_explanation(text, conversation) or None
        return out
