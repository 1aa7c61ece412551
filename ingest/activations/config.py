"""What the activation pass keeps per neuron (``RecordConfig``) and what it returns (``LayerResults``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kb.errors import IngestError


@dataclass(frozen=True)
class RecordConfig:
    """Which records to keep per neuron; ``reservoir`` and ``boundary_sample`` size the
    quantile machinery (see ``ingest.activations``)."""

    top_k: int = 20
    n_random: int = 10
    n_quantiles: int = 5
    per_quantile: int = 2
    seed: int = 0
    reservoir: int = 64
    boundary_sample: int = 512

    def __post_init__(self) -> None:
        for name in ("top_k", "n_random", "n_quantiles", "per_quantile", "reservoir", "boundary_sample"):
            if getattr(self, name) < 0:
                raise IngestError(f"record setting {name} must be >= 0, got {getattr(self, name)}")
        bad = self.per_quantile < 1 or self.reservoir < self.per_quantile or self.boundary_sample < 1
        if self.n_quantiles and bad:
            raise IngestError(
                f"quantile records need per_quantile >= 1, reservoir >= per_quantile and boundary_sample >= 1 "
                f"(got {self.per_quantile}, {self.reservoir}, {self.boundary_sample})",
                "set n_quantiles=0 to keep no quantile records",
            )

    @property
    def records_per_neuron(self) -> int:
        """Records a neuron gets when the corpus has enough windows."""
        return self.top_k + self.n_random + self.n_quantiles * self.per_quantile


@dataclass
class LayerResults:
    """One layer's statistics (one row per neuron) and records (one row per kept window).

    ``stats``: index, max_act, min_act, mean_act, var_act, density, n_tokens,
    quantile_boundaries (a list of n_quantiles + 1 edges). ``records``: index, window (row of
    the corpus windows), kind ("top" | "random" | "quantile_<j>"), rank (0 = first within the
    kind), max and position (of the first maximum, both from the float32 activations),
    activations (``window`` values, one per window token, rounded to float16 as the graph keeps
    them (``kb.records``) and held in a float32 array).
    """

    stats: pd.DataFrame
    records: pd.DataFrame


def refuse_checkpoint(where: str) -> IngestError:
    return IngestError(f"activation checkpoint does not fit this run ({where})",
                       "delete the checkpoint to start the pass afresh")
