"""Typed ids with one canonical string form, parsed in one place.

- Neuron:  ``<model>/<layer>/<index>``  e.g. ``smollm2-135m/3/1024``
- Token:   ``<tokenizer>/<token_id>``   e.g. ``tok-49152-1f2e3d4c/7661``

Model and tokenizer names may themselves contain ``/`` (Hugging Face ids such as
``EleutherAI/pythia-70m``), so ids are split from the right.
"""

from __future__ import annotations

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
