"""Prompts for explaining and scoring neurons.

The explanation and simulation prompts follow the method of OpenAI's neuron explainer
(Bills et al., 2023): records are shown as ``token<TAB>activation`` lines between ``<start>``
and ``<end>``, activations normalised to integers 0-10 against the largest activation shown,
and the explanation is the completion of "the main thing this neuron does is find". The
detection and fuzzing prompts follow delphi's classifiers (one text at a time, answer 1 or
0; fuzzing marks tokens with ``<<`` ``>>``). The wording and every few-shot example are this
project's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PRIMER = "the main thing this neuron does is find"
MAX_NORMALISED = 10
HIGHLIGHT_THRESHOLD = 0.3  # delphi's: tokens at >= 30% of the record's maximum are highlighted

Message = dict[str, str]


def normalise(activations: Sequence[float] | np.ndarray, max_activation: float) -> list[int]:
    """Activations as integers 0-10: floor(10 * max(a, 0) / max_activation), capped at 10;
    all zeros when the maximum is not positive (OpenAI's normalisation)."""
    if not max_activation or max_activation <= 0 or not math.isfinite(max_activation):
        return [0] * len(activations)
    return [min(MAX_NORMALISED, math.floor(MAX_NORMALISED * max(float(a), 0.0) / max_activation)) for a in activations]


def _clean(token: str) -> str:
    # A tab or newline inside a token would break the one-line-per-token format.
    return token.replace("\t", "\\t").replace("\n", "\\n")


def format_records(records: Sequence[tuple[Sequence[str], Sequence[float]]], max_activation: float,
                   *, omit_zeros: bool = False) -> str:
    blocks = []
    for tokens, acts in records:
        lines = [f"{_clean(t)}\t{a}" for t, a in zip(tokens, normalise(acts, max_activation))
                 if not (omit_zeros and a == 0)]
        blocks.append("<start>\n" + "".join(line + "\n" for line in lines) + "<end>\n")
    return "\n".join(blocks)


EXPLAIN_SYSTEM = (
    "We are studying neurons inside a neural network. Each neuron responds to something "
    "particular in short pieces of text. You are shown, for one neuron, the tokens of some "
    "texts with the neuron's activation on each. Work out what the neuron responds to and say "
    "it in a few words, finishing the sentence you are given. Describe what it looks for; do "
    "not list example tokens.\n\n"
    "Each line is token<tab>activation. Activations run from 0 to 10: 0 means the neuron is "
    "silent, and higher values mean it found more of what it looks for."
)

# Written for this project: two invented neurons, with the explanation we would want.
_EXPLAIN_EXAMPLES: list[tuple[list[tuple[list[str], list[float]]], str]] = [
    (
        [
            (["The", " museum", " opened", " in", " 1887", " and", " closed", " in", " 1921", "."],
             [0, 0, 0, 0, 9, 0, 0, 0, 10, 0]),
            (["Sales", " rose", " by", " 2008", ",", " then", " fell", "."], [0, 0, 0, 8, 0, 0, 0, 0]),
        ],
        " years written as four digits",
    ),
    (
        [
            (["print", "(", "len", "(", "items", "))", "\n"], [0, 0, 0, 0, 0, 10, 0]),
            (["f", "(", "x", ",", " g", "(", "y", "))"], [0, 0, 0, 0, 0, 0, 0, 8]),
            (["if", " (", "a", " and", " b", "):"], [0, 0, 0, 0, 0, 6]),
        ],
        " closing brackets that end a nested function call in code",
    ),
]


def _explain_user(n: int, records: Sequence[tuple[Sequence[str], Sequence[float]]], *, primer: bool) -> str:
    top = max((max(acts, default=0.0) for _, acts in records), default=0.0)
    return (f"Neuron {n}\nActivations:\n{format_records(records, top)}\n"
            f"The same activations, with the zeros left out:\n{format_records(records, top, omit_zeros=True)}\n"
            f"Explanation of neuron {n} behavior:" + (f" {PRIMER}" if primer else ""))


def explanation_messages(records: Sequence[tuple[Sequence[str], Sequence[float]]], *,
                         prefill: bool = False) -> list[Message]:
    """The chat messages asking for one neuron's explanation; the answer completes ``PRIMER``.

    A server's chat API cannot be told how the answer begins, so by default the primer ends the
    last user message. With ``prefill`` (a local model, whose prompt we write to the last
    token) every assistant turn begins with the primer and the caller appends it to the
    prompt after the chat template's assistant header (``PRIMER`` is then the prefix to
    continue): the model is mid-sentence, where only an explanation can follow, instead of
    at the start of a turn, where a small model tends to repeat a line of the prompt."""
    messages: list[Message] = [{"role": "system", "content": EXPLAIN_SYSTEM}]
    for i, (example, answer) in enumerate(_EXPLAIN_EXAMPLES, start=1):
        messages.append({"role": "user", "content": _explain_user(i, example, primer=not prefill)})
        messages.append({"role": "assistant", "content": f"{PRIMER}{answer}" if prefill else answer.strip()})
    messages.append({"role": "user", "content": _explain_user(len(_EXPLAIN_EXAMPLES) + 1, records,
                                                             primer=not prefill)})
    return messages


def clean_explanation(completion: str, prompt: Sequence[Message] = ()) -> str:
    """The explanation from a completion of ``PRIMER``: its first sentence, without a repeated
    primer, surrounding quotes or a final full stop. Empty when there is none, or when the
    answer only repeats a line of the ``prompt``'s system or user turns (an echo of the
    question, not an explanation)."""
    text = completion.strip().splitlines()[0].strip() if completion.strip() else ""
    if text.lower().startswith(PRIMER):
        text = text[len(PRIMER):].strip()
    text = text.split(". ")[0].strip("\"'` ")
    text = text[:-1].rstrip() if text.endswith(".") else text
    echoed = {line.strip().lower().rstrip(".:") for m in prompt if m["role"] != "assistant"
              for line in m["content"].splitlines()}
    return "" if text.lower().rstrip(".:") in echoed else text


# -- simulation -----------------------------------------------------------------------------

SIMULATE_HEADER = (
    "We are studying neurons inside a neural network. Each neuron responds to something "
    "particular in short pieces of text. Given an explanation of what a neuron does, predict "
    "its activation on each token of a text.\n\n"
    "Each line is token<tab>activation. Activations run from 0 to 10; most are 0. "
    "\"unknown\" marks an activation still to predict.\n\n"
)

_SIMULATE_EXAMPLE = (
    "years written as four digits",
    ["In", " 1066", " the", " battle", " was", " fought", "."],
    [0, 10, 0, 0, 0, 0, 0],
)


def simulation_parts(explanation: str) -> tuple[str, str]:
    """The text before the record's token lines (header, one worked example, the explanation)
    and the line that closes the record. Token lines are ``token<TAB>unknown``, read one
    position after the tab."""
    text, tokens, acts = _SIMULATE_EXAMPLE
    example = "".join(f"{_clean(t)}\t{a}\n" for t, a in zip(tokens, acts))
    head = (SIMULATE_HEADER
            + f"Neuron 1\nExplanation of neuron 1 behavior: {PRIMER} {text}\nActivations:\n<start>\n{example}<end>\n\n"
            + f"Neuron 2\nExplanation of neuron 2 behavior: {PRIMER} {explanation.strip()}\nActivations:\n<start>\n")
    return head, "<end>\n"


def simulation_json_messages(explanation: str, tokens: Sequence[str]) -> list[Message]:
    """For servers without prompt logprobs: ask for the activations as JSON (structured output)."""
    text, ex_tokens, ex_acts = _SIMULATE_EXAMPLE
    return [
        {"role": "system", "content": SIMULATE_HEADER + 'Answer with JSON: {"activations": [one integer 0-10 per token]}.'},
        {"role": "user", "content": f"Explanation: {PRIMER} {text}\nTokens: {list(ex_tokens)!r}"},
        {"role": "assistant", "content": '{"activations": ' + str([int(a) for a in ex_acts]) + "}"},
        {"role": "user", "content": f"Explanation: {PRIMER} {explanation.strip()}\nTokens: {list(tokens)!r}"},
    ]


def simulation_schema(n_tokens: int) -> dict:
    return {
        "type": "object",
        "properties": {"activations": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 10},
                                       "minItems": n_tokens, "maxItems": n_tokens}},
        "required": ["activations"],
    }


# -- detection and fuzzing ------------------------------------------------------------------

CLASSIFY_SYSTEM = (
    "We are studying neurons inside a neural network, each described by a short explanation. "
    "You are shown an explanation and one text. Answer 1 if the text is an example of what the "
    "explanation describes, and 0 if it is not. Answer with the single digit only."
)
FUZZ_SYSTEM = (
    "We are studying neurons inside a neural network, each described by a short explanation. "
    "You are shown an explanation and one text in which some tokens are marked <<like this>>. "
    "Answer 1 if the marked tokens are what the explanation describes, and 0 if they are not. "
    "Answer with the single digit only."
)

# Written for this project.
_DETECT_EXAMPLES = [
    ("years written as four digits", "The bridge was finished in 1932 after a long delay.", "1"),
    ("years written as four digits", "She poured the tea and sat down by the window.", "0"),
]
_FUZZ_EXAMPLES = [
    ("years written as four digits", "The bridge was finished in <<1932>> after a long delay.", "1"),
    ("years written as four digits", "She <<poured>> the tea and sat down by the window.", "0"),
]


def classify_messages(explanation: str, text: str, *, fuzz: bool) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": FUZZ_SYSTEM if fuzz else CLASSIFY_SYSTEM}]
    for ex_expl, ex_text, answer in (_FUZZ_EXAMPLES if fuzz else _DETECT_EXAMPLES):
        messages.append({"role": "user", "content": f"Explanation: {PRIMER} {ex_expl}\nText: {ex_text}"})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": f"Explanation: {PRIMER} {explanation.strip()}\nText: {text}"})
    return messages


def highlight(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """The text with runs of marked tokens wrapped in << >>."""
    out, inside = [], False
    for token, m in zip(tokens, marked):
        if m and not inside:
            out.append("<<")
        elif not m and inside:
            out.append(">>")
        inside = bool(m)
        out.append(token)
    if inside:
        out.append(">>")
    return "".join(out)
