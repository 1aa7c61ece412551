"""Shared forward passes: one forward of a variant sequence yields every neuron of a layer.

``LayerRunner.each`` takes any number of token sequences (tuples of ids, without the window
prefix) and yields, for each, the layer's MLP activations at every position, [len, d_mlp]
float32, one forward batch at a time: what the caller keeps of them (N2G keeps one neuron's
column) is all that stays in memory, so the memory does not grow with the number of
sequences times d_mlp (14,336 at Llama-3.1-8B's width). ``run`` returns them all at once, for
small sets. It puts ``prefix`` (``Model.window_prefix``: the BOS the activation pass put before
every window) before each sequence and drops its positions from the result, exactly as the
activation records were made, and stops the forward at the hooked layer (later layers and
the LM head would be wasted work).

N2G's sequences share long prefixes: the truncations of one context, the maskings and
substitutions of one pruned example (everything before the changed token is the same). The
model is causal, so a token's activation depends only on the tokens before it, and a shared
prefix need be computed once. The runner puts every sequence into one token trie and runs the
trie's nodes, not the sequences:

- *tree mode* (models that take a 4-D attention mask and position ids, e.g. Llama, GPT-2):
  subtrees of the trie are packed into rows of ``row_tokens``; each token attends to the prefix
  and to its ancestors in the trie only, and sits at its depth's position. A subtree too large
  for a row is split below its root, and the path down to each part is repeated in that part's
  row. Work: the trie's nodes, plus those repeated paths.
- *plain mode* (any other model, or where a probe of tree mode does not reproduce a plain
  forward): each sequence that is no prefix of another runs as one causal row, right-padded
  in batches of similar length (with causal attention a position never sees the padding after
  it, so no mask is needed). Work: the tokens of those sequences.

Which mode a runner uses is decided on its first call, by running two short sequences both
ways and comparing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch


class _Stop(Exception):
    pass


class LayerRunner:
    def __init__(self, adapter, layer: int, prefix: Sequence[int] = (), *, batch_tokens: int = 4096,
                 pad_token: int = 0, row_tokens: int = 256, tree: bool | None = None):
        self.adapter, self.layer = adapter, layer
        self.prefix = tuple(int(t) for t in prefix)
        self.batch_tokens, self.pad_token, self.row_tokens = batch_tokens, pad_token, row_tokens
        self.tree = tree  # None: decided by a probe on the first call
        self.device = next(adapter.model.parameters()).device
        self.dtype = next(adapter.model.parameters()).dtype
        self.tokens_run = 0  # tokens forwarded (prefix included, padding not)
        self.tokens_padded = 0  # tokens forwarded, padding included: the work done
        self.forwards = 0

    def run(self, seqs: Iterable[Sequence[int]]) -> dict[tuple[int, ...], np.ndarray]:
        """Every distinct non-empty sequence's activations, all held at once (``each`` streams them)."""
        return dict(self.each(seqs))

    def each(self, seqs: Iterable[Sequence[int]]) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        """(sequence, its activations [len, d_mlp] float32) for every distinct non-empty sequence,
        in no particular order. The arrays may be views of one batch's output: copy what is kept."""
        wanted = {tuple(int(t) for t in s) for s in seqs}
        wanted.discard(())
        if not wanted:
            return
        if self.tree is None:
            self.tree = self._tree_works()
        yield from self._each_tree(wanted) if self.tree else self._each_plain(wanted)

    # -- plain mode ---------------------------------------------------------------------
    def _each_plain(self, wanted: set[tuple[int, ...]]) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        ordered = sorted(wanted)
        # In lexicographic order every sequence that extends s comes right after s, so s is a
        # prefix of another exactly when it is a prefix of its successor; chains resolve backwards.
        owner: dict[tuple[int, ...], tuple[int, ...]] = {}
        for k in range(len(ordered) - 1, -1, -1):
            s = ordered[k]
            nxt = ordered[k + 1] if k + 1 < len(ordered) else None
            owner[s] = owner[nxt] if nxt is not None and nxt[: len(s)] == s else s
        owned: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for s, o in owner.items():
            owned.setdefault(o, []).append(s)
        longest = sorted(owned, key=len)
        p = len(self.prefix)
        for batch in self._batches([len(s) + p for s in longest]):
            rows = [longest[k] for k in batch]
            width = max(len(s) for s in rows) + p
            ids = torch.full((len(rows), width), self.pad_token, dtype=torch.int64)
            for row, s in enumerate(rows):
                ids[row, : p + len(s)] = torch.tensor(self.prefix + s, dtype=torch.int64)
            out = self._forward(ids, tokens=sum(p + len(s) for s in rows))
            for row, o in enumerate(rows):
                for s in owned[o]:
                    yield s, out[row, p: p + len(s)]

    def _batches(self, widths: list[int]) -> Iterable[list[int]]:
        """Indices of ``widths`` (sorted ascending) in batches: a batch ends at the token budget,
        or where padding would exceed a quarter of a row."""
        start = 0
        while start < len(widths):
            end = start + 1
            while end < len(widths):
                w = widths[end]
                if w * (end - start + 1) > self.batch_tokens or w > widths[start] * 1.25 + 2:
                    break
                end += 1
            yield list(range(start, end))
            start = end

    # -- tree mode ----------------------------------------------------------------------
    def _each_tree(self, wanted: set[tuple[int, ...]]) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
        # The trie: node 0 is the (virtual) root after the prefix; nodes are numbered in order
        # of creation, so a parent's number is below its children's.
        tokens, parent, depth = [0], [-1], [0]
        children: list[dict[int, int]] = [{}]
        paths: dict[tuple[int, ...], list[int]] = {}
        for s in wanted:
            node, path = 0, []
            for t in s:
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(tokens)
                    tokens.append(t)
                    parent.append(node)
                    depth.append(depth[node] + 1)
                    children.append({})
                    children[node][t] = nxt
                node = nxt
                path.append(node)
            paths[s] = path
        size = [1] * len(tokens)
        for node in range(len(tokens) - 1, 0, -1):
            size[parent[node]] += size[node]

        # Units: a subtree with the path down to it, small enough for a row.
        p = len(self.prefix)
        cap = max(self.row_tokens - p, max(len(s) for s in wanted))
        units: list[list[int]] = []
        stack = [(child, ()) for child in children[0].values()]
        while stack:
            node, above = stack.pop()
            if size[node] + len(above) <= cap:
                unit, todo = list(above), [node]
                while todo:  # depth first: a parent before its children
                    n = todo.pop()
                    unit.append(n)
                    todo.extend(children[n].values())
                units.append(unit)
            else:
                stack.extend((child, above + (node,)) for child in children[node].values())

        # Rows: units packed next-fit, the longest first, then rows batched by width.
        units.sort(key=len, reverse=True)
        # A sequence is read from the first unit that holds its last node: every unit that
        # holds a node holds the node's ancestors too (the path above it, or its subtree's).
        ending: dict[int, list[tuple[int, ...]]] = {}
        for s, path in paths.items():
            ending.setdefault(path[-1], []).append(s)
        read_in: dict[int, list[tuple[int, ...]]] = {}
        for u, unit in enumerate(units):
            for node in unit:
                if node in ending:
                    read_in.setdefault(u, []).extend(ending.pop(node))
        assert not ending, "a sequence's last node is in no unit"
        rows: list[list[int]] = []  # unit indices
        fill = cap + 1
        for u, unit in enumerate(units):
            if fill + len(unit) > cap:
                rows.append([])
                fill = 0
            rows[-1].append(u)
            fill += len(unit)
        rows.sort(key=lambda r: sum(len(units[u]) for u in r))
        widths = [p + sum(len(units[u]) for u in r) for r in rows]
        for batch in self._batches(widths):
            width = widths[batch[-1]]
            n = len(batch)
            ids = torch.full((n, width), self.pad_token, dtype=torch.int64)
            pos = torch.zeros((n, width), dtype=torch.int64)
            allow = np.zeros((n, width, width), dtype=bool)
            reads: list[tuple[int, dict[int, int], list[tuple[int, ...]]]] = []  # (row, node -> column, sequences)
            for row, k in enumerate(batch):
                col_ids, col_pos, col_parent = list(self.prefix), list(range(p)), list(range(-1, p - 1))
                for u in rows[k]:
                    local: dict[int, int] = {}
                    for node in units[u]:
                        local[node] = len(col_ids)
                        col_parent.append(local.get(parent[node], p - 1))
                        col_ids.append(tokens[node])
                        col_pos.append(p + depth[node] - 1)
                    if u in read_in:
                        reads.append((row, local, read_in[u]))
                m = len(col_ids)
                ids[row, :m] = torch.tensor(col_ids, dtype=torch.int64)
                pos[row, :m] = torch.tensor(col_pos, dtype=torch.int64)
                a = allow[row]
                for col in range(m):  # a token sees what its parent sees, and itself
                    if col_parent[col] >= 0:
                        a[col] = a[col_parent[col]]
                    a[col, col] = True
                for col in range(m, width):  # padding sees itself only (no empty softmax)
                    a[col, col] = True
            mask = torch.zeros((n, 1, width, width), dtype=self.dtype)
            mask.masked_fill_(~torch.from_numpy(allow)[:, None], torch.finfo(self.dtype).min)
            out = self._forward(ids, tokens=sum(widths[k] for k in batch), mask=mask, positions=pos)
            for row, local, seqs in reads:
                for s in seqs:
                    yield s, out[row, [local[node] for node in paths[s]]]

    def _tree_works(self) -> bool:
        """Whether tree mode reproduces plain forwards on this model (a probe of two short,
        branching sequences)."""
        vocab = self.adapter.model.get_input_embeddings().weight.shape[0]
        a, b, c, d = (min(t, vocab - 1) for t in (11, 12, 13, 14))
        probe = {(a, b, c), (a, d), (a, b, d, c)}
        try:
            plain = dict(self._each_plain(probe))
            tree = dict(self._each_tree(probe))
        except Exception:  # noqa: BLE001 - a model that refuses the mask or positions runs plain
            return False
        finally:
            self.tokens_run = self.tokens_padded = self.forwards = 0
        return all(np.allclose(tree[s], plain[s], rtol=1e-3, atol=1e-4) for s in probe)

    # -- the forward --------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, *, tokens: int, mask: torch.Tensor | None = None,
                 positions: torch.Tensor | None = None) -> np.ndarray:
        captured: list[torch.Tensor] = []

        def hook(module, args):
            captured.append(args[0].detach().to(torch.float32).cpu())
            raise _Stop

        extra = {} if mask is None else {"attention_mask": mask.to(self.device),
                                          "position_ids": positions.to(self.device)}
        handle = self.adapter.neuron_module(self.layer).register_forward_pre_hook(hook)
        try:
            with torch.inference_mode():
                self.adapter.model(input_ids=ids.to(self.device), use_cache=False, **extra)
        except _Stop:
            pass
        finally:
            handle.remove()
        self.tokens_run += tokens
        self.tokens_padded += ids.numel()
        self.forwards += 1
        return captured[0].numpy()
