"""N2G trie semantics and the P/R/F1 arithmetic, on hand-built cases (no model)."""

from __future__ import annotations

import pytest

from ingest.n2g.evaluation import TokenLookup, firing_scores
from ingest.n2g.trie import WILDCARD as W
from ingest.n2g.trie import Trie

A, B, C, D, X = 10, 11, 12, 13, 99


def test_a_wildcard_matches_any_token_but_an_explicit_token_only_itself():
    t = Trie()
    t.add([A, W, B], 0.8)
    assert t.predict([B, X, A]) == [0.0, 0.0, 0.8]
    assert t.predict([B, C, A]) == [0.0, 0.0, 0.8]
    assert t.predict([C, X, A]) == [0.0, 0.0, 0.0]  # B is required two back
    assert t.predict([X, A]) == [0.0, 0.0]  # the text starts before the pattern can match


def test_the_longest_match_wins_even_through_a_wildcard():
    t = Trie()
    t.add([A], 0.3)
    t.add([A, B], 0.9)
    t.add([A, W, C], 0.6)
    assert t.predict_at([B, A], 1) == 0.9
    assert t.predict_at([D, A], 1) == 0.3  # only the firing token matches
    assert t.predict_at([C, B, A], 2) == 0.6  # depth 2 beats the depth-1 end of [A, B]
    assert t.predict_at([C, D, A], 2) == 0.6
    assert t.predict_at([D, D, A], 2) == 0.3


def test_on_equal_depth_the_explicit_token_wins_over_the_wildcard():
    t = Trie()
    t.add([A, B], 0.9)
    t.add([A, W], 0.2)
    assert t.predict_at([B, A], 1) == 0.9
    assert t.predict_at([X, A], 1) == 0.2


def test_end_activations_and_importances_keep_the_largest():
    t = Trie()
    t.add([A, B], 0.4, [1.0, 0.8])
    t.add([A, B], 0.7, [0.9, 0.95])
    t.add([A, B], 0.5, [0.5, 0.5])
    assert t.patterns() == [((A, B), 0.7)]
    assert t.roots[A].importance == 1.0 and t.roots[A].children[B].importance == 0.95
    assert t.firing_tokens() == {A: 0.7}
    assert t.context_tokens() == {B: 0.95}


def test_a_node_without_an_end_predicts_nothing():
    t = Trie()
    t.add([A, B, C], 0.9)
    assert t.predict([B, A]) == [0.0, 0.0]  # A and A<-B are on the path but no pattern ends there
    assert t.predict([C, B, A]) == [0.0, 0.0, 0.9]


def test_patterns_start_with_an_explicit_firing_token():
    with pytest.raises(ValueError):
        Trie().add([W, A], 0.5)


def test_a_trie_rebuilt_from_its_nodes_predicts_the_same():
    t = Trie()
    t.add([A, W, B], 0.8, [1, 0.1, 0.9])
    t.add([A, C], 0.6, [1, 0.8])
    t.add([D], 0.4, [0.7])
    rows = [(path, node.end, node.importance) for path, node in t.nodes()]
    u = Trie.from_nodes(rows)
    assert u.patterns() == t.patterns()
    text = [B, C, A, D, B, X, A]
    assert u.predict(text) == t.predict(text)
    assert u.context_tokens() == t.context_tokens()


def test_precision_recall_f1_arithmetic():
    s = firing_scores([0.6, 0.1, 0.7, 0.2, 0.5], [0.9, 0.8, 0.1, 0.0, 0.5])
    # fires at 0.5 and above: TP positions 0 and 4, FP position 2, FN position 1
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(2 / 3)
    s = firing_scores([0.9, 0.9, 0.0], [1.0, 0.0, 0.0])
    assert (s.precision, s.recall) == (0.5, 1.0) and s.f1 == pytest.approx(2 * 0.5 / 1.5)
    nothing = firing_scores([0.0, 0.1], [0.9, 0.0])
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)
    assert firing_scores([0.3], [0.35], threshold=0.3).f1 == 1.0
    with pytest.raises(ValueError):
        firing_scores([0.1, 0.2], [0.1])


def test_token_lookup_predicts_a_tokens_largest_training_activation():
    lookup = TokenLookup([([A, B, A], [0.2, 0.9, 0.6]), ([B, C], [0.4, 0.1])])
    assert lookup.predict([A, B, C, D]) == [0.6, 0.9, 0.1, 0.0]
