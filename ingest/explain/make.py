"""Building explainers and scorers from their names (what the CLI and the stages pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kb.errors import NkbError

EXPLAINERS = ("data", "local", "api")
SCORERS = ("simulation", "detection", "fuzzing")
BACKENDS = ("local", "api")
DEFAULT_LOCAL_MODEL = "smollm2-135m"


def make_backend(kind: str, *, local_model: str = DEFAULT_LOCAL_MODEL, device: str = "cpu", batch_size: int = 8,
                 api: dict[str, Any] | None = None, cache_path: Path | None = None, loaded: Any = None):
    """A ``LocalLM`` or a checked ``ApiClient`` (unreachable endpoints fail here, before any write)."""
    from ingest.explain import llm

    if kind == "local":
        return llm.LocalLM(local_model, device=device, loaded=loaded, batch_size=batch_size)
    if kind == "api":
        client = llm.ApiClient(llm.api_settings(**(api or {})), cache_path=cache_path)
        client.check()
        return client
    raise NkbError(f"unknown language-model back end {kind!r}", f"back ends: {', '.join(BACKENDS)}")


def make_explainer(kind: str, backend: Any = None, *, n_records: int = 5, k: int = 5):
    from ingest.explain.explainers import DataExplainer, LLMExplainer

    if kind == "data":
        return DataExplainer(k)
    if kind in ("local", "api"):
        return LLMExplainer(backend, n_records=n_records)
    raise NkbError(f"unknown explainer {kind!r}", f"explainers: {', '.join(EXPLAINERS)}")


def make_scorer(method: str, backend: Any, *, n_top: int = 5, n_random: int = 5, simulation_mode: str | None = None):
    from ingest.explain.llm import LocalLM
    from ingest.explain.scorers import ApiSimulator, ClassifierScorer, LocalSimulator, SimulationScorer

    if method == "simulation":
        sim = LocalSimulator(backend) if isinstance(backend, LocalLM) else ApiSimulator(backend, simulation_mode)
        return SimulationScorer(sim, n_top=n_top, n_random=n_random)
    if method in ("detection", "fuzzing"):
        return ClassifierScorer(backend, fuzz=method == "fuzzing", n_top=n_top, n_random=n_random)
    raise NkbError(f"unknown scorer {method!r}", f"scorers: {', '.join(SCORERS)}")


def cache_path(store) -> Path:
    """The API response cache, beside the store's graph."""
    return store.artifact_dir() / "llm-cache.sqlite"
