"""The stage contract: what every ingest stage declares and does.

A stage computes one kind of data from a model (and the store) and writes it in bulk. It
declares, as data:

- ``name`` and ``help``: how users call it (``nkb ingest --stages NAME``) and what ``--help``
  says of it;
- ``needs``: the stages whose stored output it reads. The pipeline runs stages in dependency
  order, and refuses to run a stage whose needs are neither requested nor already done for
  the layers at hand, naming the stage to run first;
- ``settings``: its options. Each ``Setting`` carries its default, type, bounds and help,
  once: the CLI builds its ``--option`` from it and the pipeline validates it before any
  write. Settings with ``output=True`` define the stage's output: their digest is stored
  with every per-layer done marker, and a re-run with other values is refused rather than
  mixed;
- ``uses_corpus``: whether the pipeline must tokenize the corpus for it (before any write);
- ``tuned_heap``: whether it allocates and frees the same large tensors over and over (forward
  passes, LM-head chunks), so that the pipeline fixes glibc's heap thresholds while it runs
  (``ingest.memory.tune_heap``).

and may check what it will be given before anything is written: ``validate(cfg)`` (settings
together, before the model loads), ``check_model(cfg, lm)`` (against the loaded model) and
``check_corpus(cfg, windows)`` (against the tokenized corpus, e.g. a count of records per
neuron bounded by the windows there are).

and implements ``run(ctx, layers)``, which computes and writes the given layers (those not
yet done) and calls ``ctx.mark_done(self, layer, report)`` once a layer's writes are complete.
Writes go through the store's idempotent upserts, so a stage killed between writing a layer
and marking it done simply writes the same rows again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kb.config import shorten
from kb.errors import IngestError

if TYPE_CHECKING:
    from ingest.pipeline import IngestConfig, Reporter
    from kb.stores.base import Store


@dataclass(frozen=True)
class Setting:
    """One option of a stage (or of the pipeline): its default is defined here and only here."""

    name: str  # key in IngestConfig.settings; the CLI option is --name-with-dashes unless ``option`` says
    default: Any
    help: str
    type: type = int
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    output: bool = True  # part of the stage's output digest (False: device, batch size, ...)
    option: str | None = None
    #: For text settings whose values are not a fixed list: a regular expression the whole
    #: value must match, and how to say what matches (``valid``), for the error message.
    pattern: str | None = None
    valid: str | None = None

    @property
    def flag(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """Refuse a value outside this setting's type, choices or bounds (before any write)."""
        if value is None:
            return
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise IngestError(f"{self.flag} must be an integer, got {value!r}")
        if self.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise IngestError(f"{self.flag} must be a number, got {value!r}")
        if self.type is str and not isinstance(value, str):
            raise IngestError(f"{self.flag} must be text, got {value!r}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise IngestError(f"{self.flag} must be {self.valid or 'of the form ' + self.pattern}, "
                              f"got '{shorten(value, 60)}'")
        if self.choices is not None and value not in self.choices:
            raise IngestError(f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise IngestError(f"{self.flag} must be at least {_num(self.minimum)}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise IngestError(f"{self.flag} must be at most {_num(self.maximum)}, got {value}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def digest(settings: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


@dataclass
class StageReport:
    stage: str
    layers_done: list[int] = field(default_factory=list)
    layers_skipped: list[int] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    peak_rss: int = 0  # the process's peak resident bytes when the stage ended (0: unknown)


class Stage:
    """Base class of ingest stages; see the module docstring for the contract."""

    name: ClassVar[str]
    help: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[tuple[Setting, ...]] = ()
    uses_corpus: ClassVar[bool] = False
    #: Allocates and frees the same large tensors over and over (forward passes, LM-head chunks):
    #: the heap is tuned to reuse them while it runs (``ingest.memory.tune_heap``).
    tuned_heap: ClassVar[bool] = False
    #: Runs when no --stages are given (``all``). A stage that costs money or hours says False.
    default: ClassVar[bool] = True

    def output_settings(self, cfg: "IngestConfig") -> dict[str, Any]:
        """What this stage's stored output depends on; digested into its done markers."""
        return {s.name: cfg.settings[s.name] for s in self.settings if s.output}

    def validate(self, cfg: "IngestConfig") -> None:
        """Checks across settings, beyond each Setting's own bounds. Runs before any write."""

    def check_model(self, cfg: "IngestConfig", lm: Any) -> None:
        """Checks that need the loaded model (vocabulary size, width). Runs before any write."""

    def check_corpus(self, cfg: "IngestConfig", windows: Any) -> None:
        """Checks that need the tokenized corpus (``ingest.corpus.Windows``: how many windows
        there are), for stages that use it. Runs before any write."""

    def run(self, ctx: "Context", layers: list[int]) -> StageReport:
        raise NotImplementedError


@dataclass
class Context:
    """What a running stage sees: the configuration, the store, the loaded model and corpus."""

    cfg: "IngestConfig"
    store: "Store"
    lm: Any  # ingest.models.LoadedModel
    model_id: str
    layers: list[int]
    reporter: "Reporter"
    windows: Any = None  # ingest.corpus.Windows when a requested stage uses the corpus
    snippet_ids: list[str] | None = None
    token_text: list[str] | None = None
    memory: Any = None  # ingest.memory.MemoryPlan: LM-head chunk and layer groups within the budget

    def marker(self, stage: str, layer: int) -> str:
        return done_marker(self.model_id, stage, layer)

    def done(self, stage: Stage | str, layer: int) -> bool:
        name = stage if isinstance(stage, str) else stage.name
        return self.store.get_meta(self.marker(name, layer)) is not None

    def mark_done(self, stage: Stage, layer: int, report: StageReport) -> None:
        """Record in the store that ``stage`` wrote all of ``layer`` (and in ``report``)."""
        self.reporter.layer_written(stage.name, layer)
        settings = stage.output_settings(self.cfg)
        described = ", ".join(f"{k}={v}" for k, v in settings.items())
        self.store.set_meta(self.marker(stage.name, layer),
                            json.dumps({"settings": digest(settings), "described": described}))
        report.layers_done.append(layer)

    def artifact_dir(self) -> Path:
        """This model's directory for files beside the graph (checkpoints, indexes)."""
        return self.store.artifact_dir() / self.model_id.replace("/", "--")


def done_marker(model_id: str, stage: str, layer: int) -> str:
    from kb.stores.base import model_meta_prefix  # deleting the model deletes its markers by this prefix

    return f"{model_meta_prefix(model_id)}{stage}/{layer}"
