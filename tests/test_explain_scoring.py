"""Score arithmetic and prompt helpers against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ingest.explain import prompts, scoring
from ingest.explain.run import best_explanations


def test_normalise_matches_openai_rule():
    # floor(10 * relu(a) / max), capped at 10
    assert prompts.normalise([0.0, 1.0, 2.5, 4.99, 5.0, -3.0, 7.0], 5.0) == [0, 2, 5, 9, 10, 0, 10]
    assert prompts.normalise([1.0, 2.0], 0.0) == [0, 0]
    assert prompts.normalise([1.0, 2.0], -1.0) == [0, 0]


def test_format_records_and_zero_omission():
    text = prompts.format_records([(["a", " b", "\tc"], [0.0, 2.0, 4.0])], 4.0)
    assert text == "<start>\na\t0\n b\t5\n\\tc\t10\n<end>\n"
    assert prompts.format_records([(["a", " b"], [0.0, 2.0])], 4.0, omit_zeros=True) == "<start>\n b\t5\n<end>\n"


def test_explanation_prompt_is_primed():
    messages = prompts.explanation_messages([(["x", "y"], [0.0, 1.0])])
    assert messages[0]["role"] == "system"
    assert messages[-1]["content"].endswith("behavior: " + prompts.PRIMER)
    assert "x\t0\ny\t10" in messages[-1]["content"]


def test_prefilled_prompt_puts_the_primer_in_every_answer():
    messages = prompts.explanation_messages([(["x", "y"], [0.0, 1.0])], prefill=True)
    assert messages[-1]["role"] == "user" and messages[-1]["content"].endswith("behavior:")
    assert prompts.PRIMER not in messages[-1]["content"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert answers and all(a.startswith(prompts.PRIMER + " ") for a in answers)


def test_an_echo_of_the_question_is_not_an_explanation():
    messages = prompts.explanation_messages([(["x", "y"], [0.0, 1.0])])
    assert prompts.clean_explanation("The same activations, with the zeros left out:", messages) == ""
    assert prompts.clean_explanation(" Activations.", messages) == ""
    assert prompts.clean_explanation(" the letter y after x", messages) == "the letter y after x"


@pytest.mark.parametrize("completion, expected", [
    (" years in dates.\nmore", "years in dates"),
    (" years as four digits. The first digit is the year", "years as four digits"),
    ("the main thing this neuron does is find commas", "commas"),
    ('  "closing brackets"  ', "closing brackets"),
    ("", ""),
])
def test_clean_explanation(completion, expected):
    assert prompts.clean_explanation(completion) == expected


def test_highlight_runs():
    assert prompts.highlight(["a", " b", " c", " d"], [False, True, True, False]) == "a<< b c>> d"
    assert prompts.highlight(["a", " b"], [True, True]) == "<<a b>>"


def test_expected_values_renormalise():
    # p(0)=0.1, p(1)=0.3, p(2)=0.1 of 0.5 offered mass -> EV = (0*0.1 + 1*0.3 + 2*0.1)/0.5 = 1.0
    probs = np.array([[0.1, 0.3, 0.1], [0.0, 0.0, 0.0]])
    assert scoring.expected_values(probs, [0, 1, 2]).tolist() == pytest.approx([1.0, 0.0])


def test_correlation_by_hand():
    # x = [1, 2, 3], y = [2, 4, 7]: centred x = [-1, 0, 1], centred y = [-2.333, -0.333, 2.667]
    # cov = 5, |x| = sqrt(2), |y| = sqrt(12.667) -> 5 / sqrt(25.333) = 0.99340
    assert scoring.correlation([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert scoring.correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert scoring.correlation([1, 2, 3], [5, 5, 5]) is None  # undefined, not 0
    with pytest.raises(ValueError):
        scoring.correlation([1, 2], [1, 2, 3])


def test_correlation_pools_records_rather_than_averaging():
    # Two records, each perfectly correlated on its own, but the second's scale is off:
    # pooled correlation is below 1 (per-record averaging would say 1).
    true = np.array([0, 1, 0, 10])
    sim = np.array([0, 10, 0, 1])
    assert scoring.correlation(true, sim) < 0.5


def test_classification_by_hand():
    labels = [1, 1, 1, 0, 0]
    preds = [1, 1, 0, 1, 0]
    probs = [0.9, 0.8, 0.3, 0.6, 0.1]
    c = scoring.classification(labels, preds, probs)
    # TP=2 FN=1 FP=1 TN=1: TPR=2/3, TNR=1/2, balanced=7/12; precision=2/3, F1=2/3
    assert c.balanced_accuracy == pytest.approx(7 / 12)
    assert c.accuracy == pytest.approx(3 / 5)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3)
    # pairs (pos, neg): 0.9>0.6, 0.9>0.1, 0.8>0.6, 0.8>0.1, 0.3<0.6, 0.3>0.1 -> 5/6
    assert c.auc == pytest.approx(5 / 6)
    assert c.n == 5
    assert scoring.classification(labels, preds).auc is None


def test_auc_ties_count_half():
    assert scoring.auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert scoring.auc([1, 1], [0.5, 0.7]) is None


def test_best_explanation_rule():
    frame = pd.DataFrame([
        ("n1", "data words", "data", "summary", None),
        ("n1", "llm words", "smol", "top-activations", None),
        ("n2", "low", "smol", "top-activations", 0.1),
        ("n2", "high", "gpt", "top-activations", 0.7),
        ("n2", "data", "data", "summary", None),
        ("n3", "tokens", "data", "n2g", None),
        ("n3", "summary", "data", "summary", None),
    ], columns=["neuron", "text", "explainer", "method", "score"])
    best = best_explanations(frame).set_index("id")
    assert best.loc["n1", "explanation"] == "llm words" and math.isnan(best.loc["n1", "explanation_score"])
    assert best.loc["n2", "explanation"] == "high" and best.loc["n2", "explanation_score"] == 0.7
    assert best.loc["n3", "explanation"] == "summary"
