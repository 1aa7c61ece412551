"""Typed ids with one canonical string form, parsed in one place.

- Neuron:  ``<model>/<layer>/<index>``  e.g. ``smollm2-135m/3/1024``
- Token:   ``<tokenizer>/<token_id>``   e.g. ``tok-49152-1f2e3d4c/7661``
- Explanation: ``<neuron>/<explainer>/<method>``, Score: ``<explanation>/<method>/<scorer>/<split>``,
  N2GNode: ``<neuron>/<token ids on the path, joined by '.'>`` (see below for escaping)

Model and tokenizer names may themselves contain ``/`` (Hugging Face ids such as
``EleutherAI/pythia-70m``), so ids are split from the right.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kb.errors import NkbError


@dataclass(frozen=True, order=True)
class NeuronId:
    model: str
    layer: int
    index: int

    def __str__(self) -> str:
        return f"{self.model}/{self.layer}/{self.index}"

    @classmethod
    def parse(cls, text: str) -> "NeuronId":
        parts = text.rsplit("/", 2)
        if len(parts) != 3 or not parts[0]:
            raise NkbError(
                f"not a neuron id: {text!r}", "neuron ids look like MODEL/LAYER/INDEX, e.g. smollm2-135m/3/1024"
            )
        model, layer, index = parts
        try:
            layer_i, index_i = int(layer), int(index)
        except ValueError:
            raise NkbError(
                f"not a neuron id: {text!r} (layer and index must be integers)",
                "neuron ids look like MODEL/LAYER/INDEX, e.g. smollm2-135m/3/1024",
            ) from None
        if layer_i < 0 or index_i < 0:
            raise NkbError(f"not a neuron id: {text!r} (layer and index must be >= 0)")
        return cls(model, layer_i, index_i)


def neuron_id(model: str, layer: int, index: int) -> str:
    return f"{model}/{layer}/{index}"


def token_id(tokenizer: str, token: int) -> str:
    return f"{tokenizer}/{token}"


def parse_token_id(text: str) -> tuple[str, int]:
    tokenizer, _, tid = text.rpartition("/")
    if not tokenizer or not tid.isdigit():
        raise NkbError(f"not a token id: {text!r}", "token ids look like TOKENIZER/TOKEN_ID")
    return tokenizer, int(tid)


def neuron_ids(model: str, layer: int, indices: Iterable[int]) -> list[str]:
    """Neuron ids of ``indices`` in one layer, built in bulk (the same strings as ``neuron_id``)."""
    prefix = f"{model}/{layer}/"
    return [prefix + str(int(i)) for i in indices]


def token_ids(tokenizer: str, tokens: Iterable[int]) -> list[str]:
    """Token ids in bulk (the same strings as ``token_id``)."""
    prefix = f"{tokenizer}/"
    return [prefix + str(int(t)) for t in tokens]


# -- explanations and scores ------------------------------------------------------------------
# An explainer may be a Hugging Face id with '/' in it ("HuggingFaceTB/SmolLM2-135M-Instruct"),
# and the neuron id already holds '/', so these ids escape the parts they append: '%' as '%25'
# and '/' as '%2F' (percent-encoding of just those two characters). The neuron id stays
# readable as the prefix, and ``parse_*`` gives back exactly what was built.


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F")


def _unescape(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


@dataclass(frozen=True)
class ExplanationId:
    neuron: NeuronId
    explainer: str
    method: str

    def __str__(self) -> str:
        return f"{self.neuron}/{_escape(self.explainer)}/{_escape(self.method)}"

    @classmethod
    def parse(cls, text: str) -> "ExplanationId":
        head, explainer, method = _split_tail(text, 2, "explanation", "NEURON/EXPLAINER/METHOD")
        return cls(NeuronId.parse(head), _unescape(explainer), _unescape(method))


@dataclass(frozen=True)
class ScoreId:
    explanation: ExplanationId
    method: str
    scorer: str
    split: str

    def __str__(self) -> str:
        return f"{self.explanation}/{_escape(self.method)}/{_escape(self.scorer)}/{_escape(self.split)}"

    @classmethod
    def parse(cls, text: str) -> "ScoreId":
        head, method, scorer, split = _split_tail(text, 3, "score", "EXPLANATION/METHOD/SCORER/SPLIT")
        return cls(ExplanationId.parse(head), _unescape(method), _unescape(scorer), _unescape(split))


@dataclass(frozen=True)
class N2GNodeId:
    """A node of a neuron's N2G trie: the token ids on the path from the root (the firing token)."""

    neuron: NeuronId
    path: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.neuron}/{'.'.join(str(t) for t in self.path)}"

    @classmethod
    def parse(cls, text: str) -> "N2GNodeId":
        head, path = _split_tail(text, 1, "N2G node", "NEURON/TOKEN.TOKEN...")
        try:
            tokens = tuple(int(t) for t in path.split("."))
        except ValueError:
            raise NkbError(f"not an N2G node id: {text!r}", "N2G node ids look like NEURON/TOKEN.TOKEN...") from None
        return cls(NeuronId.parse(head), tokens)


def _split_tail(text: str, n: int, what: str, form: str) -> list[str]:
    parts = text.rsplit("/", n)
    if len(parts) != n + 1 or not all(parts):
        raise NkbError(f"not a valid {what} id: {text!r}", f"{what} ids look like {form}")
    return parts
