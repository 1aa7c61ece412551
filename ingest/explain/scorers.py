"""Scorers: how well an explanation predicts its neuron.

- ``SimulationScorer`` (OpenAI): a simulator predicts, from the explanation alone, the
  neuron's activation (0-10) on every token of held-out records; the score is the correlation
  between the simulated and the true activations over those records taken together (by default
  5 top records the explainer did not see, the odd ranks, and 5 random records).
  - ``LocalSimulator`` and ``ApiSimulator`` in logprob mode compute each token's expected
    value from the next-token probabilities of "0".."10" after ``token<TAB>``, for all tokens
    of a record in one pass (exact, no sampling).
  - ``ApiSimulator`` falls back to structured output (a JSON list of integers) on servers
    that return no prompt logprobs.
- ``ClassifierScorer`` (delphi's detection and fuzzing): the scorer model says, one text at a
  time, whether a held-out top record (positive) or a random record (negative) matches the
  explanation; for fuzzing, whether the tokens marked in it are the ones the explanation
  describes (correct marks on top records; as many marks on random tokens of random records).
  Probabilities come from P("1") / (P("0") + P("1")) where the model exposes them, and give
  the AUC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ingest.explain import prompts, scoring
from ingest.explain.neurons import NeuronData, Record

Progress = Callable[[int], None] | None
VALUES = list(range(prompts.MAX_NORMALISED + 1))


def score_records(n: NeuronData, n_top: int, n_random: int) -> list[Record]:
    """Held-out records: top records of odd rank (explainers see the even ones), then random ones."""
    return [r for r in n.top if r.rank % 2 == 1][:n_top] + n.random[:n_random]


def records_label(records: Sequence[Record]) -> str:
    """Which records a score used, e.g. 'top:1,3,5;random:0,1' (Score.records)."""
    kinds: dict[str, list[int]] = {}
    for r in records:
        kinds.setdefault(r.kind, []).append(r.rank)
    return ";".join(f"{k}:{','.join(map(str, v))}" for k, v in kinds.items())


@dataclass
class ScoreResult:
    method: str  # simulation | detection | fuzzing
    value: float
    records: str
    f1: float | None = None
    auc: float | None = None
    n: int = 0


# -- simulation -----------------------------------------------------------------------------


def _line_token(token: str) -> str:
    return token.replace("\t", "\\t").replace("\n", "\\n")


class LocalSimulator:
    """Expected values from a ``LocalLM``'s next-token probabilities."""

    mode = "logprobs"

    def __init__(self, lm):
        self.lm = lm
        self.name = lm.name
        offered = [(v, lm.single_token(str(v))) for v in VALUES]
        # Tokenizers that split "10" into "1" "0" offer 0-9 only: P("1") then also holds 10's mass.
        self.values = [v for v, t in offered if t is not None]
        self.candidates = [t for _, t in offered if t is not None]
        self.tab, self.unknown, self.newline = lm.encode("\t"), lm.encode("unknown"), lm.encode("\n")

    def _row(self, head: list[int], tail: list[int], tokens: Sequence[str]) -> tuple[list[int], list[int]]:
        ids, positions = list(head), []
        for token in tokens:
            ids += self.lm.encode(_line_token(token)) + self.tab
            positions.append(len(ids) - 1)  # the distribution of what follows the tab
            ids += self.unknown + self.newline
        return ids + tail, positions

    def simulate(self, items: Sequence[tuple[str, Sequence[Sequence[str]]]], progress: Progress = None
                 ) -> list[list[np.ndarray] | None]:
        rows, positions, owner = [], [], []
        for i, (explanation, records) in enumerate(items):
            head, tail = prompts.simulation_parts(explanation)
            h, t = self.lm.encode(head), self.lm.encode(tail)
            for tokens in records:
                ids, pos = self._row(h, t, tokens)
                rows.append(ids)
                positions.append(pos)
                owner.append(i)
        probs = self.lm.next_token_probs(rows, positions, self.candidates)
        out: list[list[np.ndarray] | None] = [[] for _ in items]
        for i, p in zip(owner, probs):
            out[i].append(scoring.expected_values(p, self.values))
        if progress:
            progress(len(items))
        return out


class ApiSimulator:
    """Simulation through an ``ApiClient``: prompt logprobs where the server returns them
    (``mode='logprobs'``), else structured output (``mode='json'``); ``mode=None`` finds out."""

    def __init__(self, client, mode: str | None = None):
        self.client = client
        self.name = client.name
        self.mode = mode

    def _prompt(self, explanation: str, tokens: Sequence[str]) -> str:
        head, tail = prompts.simulation_parts(explanation)
        return head + "".join(f"{_line_token(t)}\tunknown\n" for t in tokens) + tail

    @staticmethod
    def _parse_logprobs(answer: dict, n_tokens: int) -> np.ndarray | None:
        tokens, tops = answer.get("tokens"), answer.get("top_logprobs")
        if not tokens or not tops or len(tokens) != len(tops):
            return None
        evs = []
        for i in range(1, len(tokens)):
            if tokens[i - 1].endswith("\t") and tokens[i].startswith("unknown"):
                dist = tops[i] or {}
                probs = np.zeros(len(VALUES))
                for tok, lp in dist.items():
                    if tok.strip() in {str(v) for v in VALUES} and tok.strip() == tok:
                        probs[int(tok)] += math.exp(lp)
                evs.append(scoring.expected_values(probs[None, :], VALUES)[0])
        return np.asarray(evs) if len(evs) == n_tokens else None

    def _logprobs(self, items, progress) -> list[list[np.ndarray] | None]:
        flat = [(i, tokens) for i, (_, records) in enumerate(items) for tokens in records]
        answers = self.client.complete([{"prompt": self._prompt(items[i][0], tokens), "echo": True, "max_tokens": 1,
                                         "logprobs": 15, "temperature": 0} for i, tokens in flat])
        out: list[list[np.ndarray] | None] = [[] for _ in items]
        for (i, tokens), answer in zip(flat, answers):
            ev = self._parse_logprobs(answer, len(tokens))
            if ev is None or out[i] is None:
                out[i] = None
            else:
                out[i].append(ev)
        if progress:
            progress(len(items))
        return out

    def _json(self, items, progress) -> list[list[np.ndarray] | None]:
        flat = [(i, tokens) for i, (_, records) in enumerate(items) for tokens in records]
        answers = self.client.chat([{
            "messages": prompts.simulation_json_messages(items[i][0], tokens), "temperature": 0,
            "max_tokens": 8 + 4 * len(tokens),
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "activations", "schema": prompts.simulation_schema(len(tokens))}},
        } for i, tokens in flat])
        out: list[list[np.ndarray] | None] = [[] for _ in items]
        for (i, tokens), answer in zip(flat, answers):
            try:
                acts = json.loads(answer["text"])["activations"]
                values = np.clip(np.asarray(acts, dtype=np.float64), 0, prompts.MAX_NORMALISED)
            except (ValueError, KeyError, TypeError):
                values = None
            if values is None or values.shape != (len(tokens),) or out[i] is None:
                out[i] = None  # an answer of the wrong shape scores nothing rather than something made up
            else:
                out[i].append(values)
        if progress:
            progress(len(items))
        return out

    def simulate(self, items: Sequence[tuple[str, Sequence[Sequence[str]]]], progress: Progress = None
                 ) -> list[list[np.ndarray] | None]:
        if self.mode is None:
            probe = self._logprobs(items[:1], None) if items else [None]
            self.mode = "logprobs" if probe[0] is not None else "json"
        return (self._logprobs if self.mode == "logprobs" else self._json)(items, progress)


class SimulationScorer:
    method = "simulation"

    def __init__(self, simulator, *, n_top: int = 5, n_random: int = 5):
        self.simulator = simulator
        self.name = f"{simulator.name}"
        self.n_top, self.n_random = n_top, n_random

    def score(self, items: Sequence[tuple[NeuronData, str]], progress: Progress = None) -> list[ScoreResult | None]:
        chosen = [score_records(n, self.n_top, self.n_random) for n, _ in items]
        sims = self.simulator.simulate([(text, [r.tokens for r in recs]) for (_, text), recs in zip(items, chosen)],
                                       progress)
        out: list[ScoreResult | None] = []
        for recs, sim in zip(chosen, sims):
            if not recs or sim is None:
                out.append(None)
                continue
            true = np.concatenate([r.activations for r in recs])
            value = scoring.correlation(true, np.concatenate(sim))
            out.append(None if value is None else
                       ScoreResult(self.method, value, records_label(recs), n=len(recs)))
        return out


# -- detection and fuzzing ------------------------------------------------------------------


def _marks(record: Record) -> list[bool]:
    top = float(record.activations.max()) if record.activations.size else 0.0
    return [bool(top > 0 and a >= prompts.HIGHLIGHT_THRESHOLD * top) for a in record.activations]


def classification_samples(n: NeuronData, *, fuzz: bool, n_top: int, n_random: int, seed: int = 0
                           ) -> tuple[list[str], list[bool], list[Record]]:
    """The texts shown, their labels (True: should be recognised) and the records used."""
    positives = [r for r in n.top if r.rank % 2 == 1][:n_top]
    negatives = n.random[:n_random]
    texts: list[str] = []
    if not fuzz:
        texts = ["".join(r.tokens) for r in positives + negatives]
    else:
        marks = [_marks(r) for r in positives]
        texts = [prompts.highlight(r.tokens, m) for r, m in zip(positives, marks)]
        # delphi: mark as many tokens on negatives as positives have on average, chosen at random
        k = max(1, math.ceil(np.mean([sum(m) for m in marks]))) if marks else 1
        rng = np.random.default_rng([seed, n.layer, n.index])
        for r in negatives:
            below = [i for i, m in enumerate(_marks(r)) if not m] or list(range(len(r.tokens)))
            chosen = set(rng.choice(below, size=min(k, len(below)), replace=False).tolist()) if below else set()
            texts.append(prompts.highlight(r.tokens, [i in chosen for i in range(len(r.tokens))]))
    return texts, [True] * len(positives) + [False] * len(negatives), positives + negatives


class ClassifierScorer:
    def __init__(self, backend, *, fuzz: bool, n_top: int = 5, n_random: int = 5, seed: int = 0):
        self.backend, self.fuzz = backend, fuzz
        self.method = "fuzzing" if fuzz else "detection"
        self.name = backend.name
        self.n_top, self.n_random, self.seed = n_top, n_random, seed

    def _ask(self, conversations: list[list[dict]]) -> list[tuple[bool, float | None]]:
        b = self.backend
        if hasattr(b, "next_token_probs"):
            zero, one = b.single_token("0"), b.single_token("1")
            rows = [b.chat_ids(c) for c in conversations]
            probs = b.next_token_probs(rows, [[len(r) - 1] for r in rows], [zero, one])
            out = []
            for p in probs:
                p0, p1 = float(p[0, 0]), float(p[0, 1])
                prob = p1 / (p0 + p1) if p0 + p1 > 0 else 0.5
                out.append((prob > 0.5, prob))
            return out
        answers = b.chat([{"messages": c, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
                          for c in conversations])
        out = []
        for a in answers:
            tops = (a.get("top_logprobs") or [None])[0]
            p0 = sum(math.exp(lp) for t, lp in (tops or {}).items() if t.strip() == "0")
            p1 = sum(math.exp(lp) for t, lp in (tops or {}).items() if t.strip() == "1")
            if p0 + p1 > 0:
                out.append((p1 > p0, p1 / (p0 + p1)))
            else:
                out.append((a["text"].strip()[:1] == "1", None))
        return out

    def score(self, items: Sequence[tuple[NeuronData, str]], progress: Progress = None) -> list[ScoreResult | None]:
        convs, spans, per_item = [], [], []
        for n, text in items:
            texts, labels, recs = classification_samples(n, fuzz=self.fuzz, n_top=self.n_top,
                                                         n_random=self.n_random, seed=self.seed)
            spans.append((len(convs), len(texts)))
            per_item.append((labels, recs))
            convs += [prompts.classify_messages(text, t, fuzz=self.fuzz) for t in texts]
        answers = self._ask(convs) if convs else []
        out: list[ScoreResult | None] = []
        for (start, count), (labels, recs) in zip(spans, per_item):
            if not count:
                out.append(None)
                continue
            got = answers[start : start + count]
            probs = [p for _, p in got]
            c = scoring.classification(labels, [pred for pred, _ in got],
                                       probs if all(p is not None for p in probs) else None)
            out.append(ScoreResult(self.method, c.balanced_accuracy, records_label(recs), f1=c.f1, auc=c.auc, n=c.n))
        if progress:
            progress(len(items))
        return out
