"""One small ingest of a tiny Llama, shared by the oracle, invariance and kill-point tests.

``tiny_run`` (a session fixture in conftest.py) ingests it once, cleanly, into the embedded
store; tests that need other runs of the same model and corpus build them with ``config``,
which changes only what they name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WINDOW, N_WINDOWS = 16, 40
SETTINGS = dict(tokens=WINDOW * N_WINDOWS, window=WINDOW, batch_size=8, checkpoint_seconds=0.0, top_k=4, n_random=3,
                n_quantiles=3, per_quantile=1, lmhead_k=5, seed=11)


def corpus_documents() -> list[str]:
    """Short real documents, so that the windows hold several document separators."""
    from pydoc_data.topics import topics

    return [topics[key][:240] for key in sorted(topics)[:40]]


@dataclass
class TinyRun:
    model_dir: Path
    corpus: str
    url: str  # the clean run's store (embedded); open it read-only
    dump: dict  # tests/dump.py's dump of it

    def config(self, **changes):
        from ingest.pipeline import IngestConfig

        return IngestConfig(model=str(self.model_dir), name="tiny", corpus=self.corpus, **{**SETTINGS, **changes})


def make_tiny_run(root: Path) -> TinyRun:
    from dump import dump
    from ingest.pipeline import ingest
    from kb.stores import open_store
    from tinymodels import save_tiny_model

    model_dir = save_tiny_model(root / "tiny-llama", "llama", seed=0)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in corpus_documents()))
    run = TinyRun(model_dir, str(corpus), str(root / "clean"), {})
    with open_store(run.url, create=True) as store:
        ingest(store, run.config())
        run.dump = dump(store)
    return run
