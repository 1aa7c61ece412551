"""The registry of ingest stages, in dependency order.

A new stage is a module in this package with one ``Stage`` subclass, listed in ``_MODULES``.
Stage modules import nothing heavy at import time (torch, transformers): the CLI reads their
settings to build its options, and a query-only install must still start.
"""

from __future__ import annotations

import importlib

from ingest.stages.base import Context, Setting, Stage, StageReport, digest, done_marker
from kb.config import shorten
from kb.errors import IngestError

# Modules holding one stage each. Order breaks ties between stages that do not depend on each other.
# describe comes before embed so that one run embeds the explanations it has just written.
_MODULES = ("model", "lmhead", "activations", "n2g", "describe", "score", "embed", "tokens", "similar", "match")

# Options of the pipeline itself (how the model runs), shared by every stage.
PIPELINE_SETTINGS: tuple[Setting, ...] = (
    Setting("device", "cpu", "cpu, cuda, cuda:N, mps or auto.", type=str, output=False,
            pattern=r"cpu|auto|mps|cuda(:[0-9]{1,4})?", valid="cpu, cuda, cuda:N, mps or auto"),
    Setting("dtype", "float32", "Model weights and activations dtype.", type=str,
            choices=("float32", "bfloat16", "float16"), output=False),
    Setting("max_memory", None, "Memory the run may use, e.g. 4G (default: what it holds when it starts plus 80% "
            "of the memory still available). The estimate is printed; past it the activation pass runs in groups "
            "of layers.", type=str, output=False),
)


def _load() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    for module in _MODULES:
        mod = importlib.import_module(f"ingest.stages.{module}")
        found = [v for v in vars(mod).values()
                 if isinstance(v, type) and issubclass(v, Stage) and v is not Stage and v.__module__ == mod.__name__]
        if len(found) != 1:
            raise RuntimeError(f"ingest.stages.{module} must define exactly one Stage, found {len(found)}")
        stage = found[0]()
        stages[stage.name] = stage
    seen = {s.name for s in PIPELINE_SETTINGS}
    for stage in stages.values():
        for s in stage.settings:
            if s.name in seen:
                raise RuntimeError(f"setting {s.name!r} of stage {stage.name} is defined twice")
            seen.add(s.name)
        for need in stage.needs:
            if need not in stages:
                raise RuntimeError(f"stage {stage.name} needs unknown stage {need!r}")
    return _ordered(stages)


def _ordered(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Stages in dependency order (stable with respect to _MODULES)."""
    out: dict[str, Stage] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in out:
            return
        if name in visiting:
            raise RuntimeError(f"stage dependencies form a cycle through {name}")
        visiting.add(name)
        for need in stages[name].needs:
            visit(need)
        visiting.discard(name)
        out[name] = stages[name]

    for name in stages:
        visit(name)
    return out


REGISTRY: dict[str, Stage] = _load()


def all_settings() -> tuple[Setting, ...]:
    """Every option: the pipeline's, then each stage's in registry order."""
    return PIPELINE_SETTINGS + tuple(s for stage in REGISTRY.values() for s in stage.settings)


def defaults() -> dict[str, object]:
    return {s.name: s.default for s in all_settings()}


def default_stages() -> list[str]:
    return [name for name, stage in REGISTRY.items() if stage.default]


def resolve(names: list[str]) -> list[Stage]:
    """The named stages ('all' for every default one), in dependency order; the model stage always runs."""
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise IngestError("no stage to run: --stages is empty", f"pass --stages with any of: all, {', '.join(REGISTRY)}")
    unknown = [name for name in names if name != "all" and name not in REGISTRY]
    if unknown:
        raise IngestError(f"unknown stage(s): {', '.join(shorten(n, 40) for n in unknown)}",
                          f"stages: all, {', '.join(REGISTRY)}")
    wanted: set[str] = set()
    for name in names:
        wanted.update(default_stages() if name == "all" else [name])
    wanted.add("model")
    return [stage for name, stage in REGISTRY.items() if name in wanted]


__all__ = ["Context", "PIPELINE_SETTINGS", "REGISTRY", "Setting", "Stage", "StageReport", "all_settings",
           "default_stages", "defaults", "digest", "done_marker", "resolve"]
