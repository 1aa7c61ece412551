"""One neuron's N2G graph: a trie of token patterns, rooted at the tokens the neuron fires on.

A *pattern* is read backwards from a firing token: ``pattern[0]`` is the token the neuron fires
on, ``pattern[1]`` the token right before it, and so on. Context tokens that did not matter
are ``WILDCARD`` (match any token). A pattern ends in an *end* carrying the normalised
activation the neuron had on it.

Prediction at position ``i`` of a text walks back from token ``i`` through every matching
branch (explicit tokens and wildcards) and returns the end activation of the *longest* match:
the deepest end reached; between ends at the same depth, the one reached through explicit
tokens before wildcards (depth first, explicit child first). No match: 0. This is the
reference implementation's intent ("return the activation on the longest sequence"); where it
first merges sibling branches into wildcard branches so that a greedy walk finds them, this
trie searches both branches instead, which gives the same answer without rewriting the trie.

Adding a pattern that already ends somewhere keeps the larger end activation, and a node keeps
the largest importance it was added with.

Pure Python on purpose: the CLI loads stored graphs with it, with no torch installed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

WILDCARD = -1


@dataclass
class Node:
    token: int
    depth: int
    children: dict[int, "Node"] = field(default_factory=dict)
    end: float | None = None  # the pattern's activation when a pattern ends here
    importance: float = 0.0


class Trie:
    def __init__(self) -> None:
        self.roots: dict[int, Node] = {}

    def __len__(self) -> int:
        return sum(1 for _ in self.nodes())

    def add(self, pattern: Sequence[int], activation: float, importances: Sequence[float] | None = None) -> None:
        """Add ``pattern`` (firing token first, then walking back; WILDCARD for any token)."""
        if not pattern or pattern[0] == WILDCARD:
            raise ValueError("a pattern starts with the (explicit) token the neuron fires on")
        level, node = self.roots, None
        for depth, token in enumerate(pattern):
            node = level.get(token)
            if node is None:
                node = level[token] = Node(int(token), depth)
            if importances is not None:
                node.importance = max(node.importance, float(importances[depth]))
            level = node.children
        node.end = float(activation) if node.end is None else max(node.end, float(activation))

    def predict_at(self, tokens: Sequence[int], i: int) -> float:
        """The activation predicted for ``tokens[i]`` given the tokens before it."""
        root = self.roots.get(tokens[i])
        if root is None:
            return 0.0
        best_depth, best = -1, 0.0
        stack = [root]
        while stack:
            node = stack.pop()
            if node.end is not None and node.depth > best_depth:
                best_depth, best = node.depth, node.end
            back = i - node.depth - 1
            if back < 0 or not node.children:
                continue
            # Pushed in reverse: the explicit child is searched first, so on equal depth its end wins.
            wild = node.children.get(WILDCARD)
            if wild is not None:
                stack.append(wild)
            explicit = node.children.get(tokens[back])
            if explicit is not None and explicit.token != WILDCARD:
                stack.append(explicit)
        return best

    def predict(self, tokens: Sequence[int]) -> list[float]:
        """Predicted activation at every position of ``tokens``."""
        return [self.predict_at(tokens, i) for i in range(len(tokens))]

    def nodes(self) -> Iterator[tuple[tuple[int, ...], Node]]:
        """Every node with its path of tokens from the root, parents before children."""
        stack = [((node.token,), node) for node in self.roots.values()]
        while stack:
            path, node = stack.pop()
            yield path, node
            stack.extend((path + (child.token,), child) for child in node.children.values())

    def patterns(self) -> list[tuple[tuple[int, ...], float]]:
        """Every pattern that ends somewhere, with its end activation."""
        return sorted((path, node.end) for path, node in self.nodes() if node.end is not None)

    def firing_tokens(self) -> dict[int, float]:
        """Root token -> the largest end activation under it."""
        out: dict[int, float] = {}
        for path, node in self.nodes():
            if node.end is not None:
                out[path[0]] = max(out.get(path[0], 0.0), node.end)
        return out

    def context_tokens(self) -> dict[int, float]:
        """Explicit context token (not a root) -> the largest importance it has anywhere in the trie."""
        out: dict[int, float] = {}
        for path, node in self.nodes():
            if len(path) > 1 and node.token != WILDCARD:
                out[node.token] = max(out.get(node.token, 0.0), node.importance)
        return out

    @classmethod
    def from_nodes(cls, rows: Sequence[tuple[Sequence[int], float | None, float]]) -> "Trie":
        """Rebuild a trie from (path, end activation or None, importance) rows, e.g. stored N2GNodes."""
        trie = cls()
        for path, end, importance in sorted(rows, key=lambda r: len(r[0])):
            level = trie.roots
            for depth, token in enumerate(path[:-1]):
                level = level.setdefault(token, Node(int(token), depth)).children
            node = level.setdefault(path[-1], Node(int(path[-1]), len(path) - 1))
            node.end = None if end is None else float(end)
            node.importance = float(importance or 0.0)
        return trie
