"""The algorithm's parameters, with the reference implementation's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class N2GConfig:
    """Parameters of N2G. Defaults follow the reference implementation (alexjfoote/Neuron2Graph):
    pruning keeps at least half the activation (``proportion_threshold=-0.5``) with a context of
    at most 30 tokens and 5 tokens of post-context; augmentation tries 5 replacements per important
    token and keeps the variants that keep at least half the activation; a token is important at
    0.75 and fires at 0.5 (normalised by the neuron's largest activation on the corpus)."""

    prune_threshold: float = 0.5  # a pruned context keeps at least this share of the activation
    cutoff: int = 30  # longest context (tokens up to and including the firing token) tried
    post_context: int = 5  # tokens kept after the firing token
    importance_threshold: float = 0.75  # a context token at least this important becomes an explicit node
    activation_threshold: float = 0.5  # normalised activation at which a token counts as firing
    n_augment: int = 5  # replacements tried per important token
    augment_keep: float = 0.5  # a variant is kept when it keeps at least this share of the activation
    mask_token: int = 0  # token id that replaces a token when measuring its importance

    def __post_init__(self) -> None:
        from kb.errors import IngestError

        if not 0 < self.prune_threshold <= 1:
            raise IngestError(f"prune threshold must be in (0, 1], got {self.prune_threshold}")
        if self.cutoff < 1 or self.post_context < 0 or self.n_augment < 0:
            raise IngestError("N2G cutoff must be >= 1, post-context and augmentation counts >= 0")
