"""The term index of explanation texts: what lets a phrase search read only the explanations
that can contain the phrase, instead of lower-casing every text in the store.

A *term* is a run of a text between ASCII characters other than letters, digits and ``_``
(spaces, punctuation, control characters), kept as written; non-ASCII characters belong to
runs. Each Explanation MENTIONS every term of its text, and also ``ANY``, ``*``, which no
run contains.

Why the index finds every match: the engines' ``toLower`` changes no ASCII separator and
makes none, so within ``toLower(text)`` an occurrence of ``toLower(phrase)`` puts each run of
the phrase inside one run of the text, and ``toLower(term) CONTAINS toLower(run)`` holds for
that term. ``explanations_containing`` therefore takes the explanations mentioning a term that
contains the phrase's longest run (``key_term``), and then checks the phrase against their
whole text as before. A phrase with no run at all (only spaces or punctuation) has ``ANY``
as its key: every explanation is a candidate.

An explanation whose text is rewritten keeps the terms of its old text too: they only add
candidates, which the check of the whole text drops.
"""

from __future__ import annotations

import re

import pandas as pd

#: What separates terms: the ASCII characters that are not letters, digits or '_'.
SEPARATORS = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]+")
#: The term every explanation mentions (no run contains a '*').
ANY = "*"


def terms(text: str) -> set[str]:
    """The distinct terms of ``text``, and ``ANY``."""
    out = set(SEPARATORS.split(text))
    out.discard("")
    out.add(ANY)
    return out


def key_term(phrase: str | None) -> str | None:
    """The term to look a phrase up by: its longest run (the first of equals), or ``ANY`` for a
    phrase with no run."""
    if phrase is None:
        return None
    return max(SEPARATORS.split(phrase), key=len) or ANY


def term_frames(ids: pd.Series, texts: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Term nodes and MENTIONS relationships of explanations (a null text mentions nothing)."""
    src: list[str] = []
    dst: list[str] = []
    for eid, text in zip(ids, texts):
        if pd.isna(text):
            continue
        found = terms(str(text))
        src.extend([eid] * len(found))
        dst.extend(found)
    mentions = pd.DataFrame({"src": src, "dst": dst}, dtype=object)
    return pd.DataFrame({"id": pd.unique(mentions["dst"])}, dtype=object), mentions
