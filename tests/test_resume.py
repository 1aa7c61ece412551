"""A real ingest process killed with SIGKILL at a chosen point, then resumed, yields exactly the
knowledge base of an uninterrupted run.

The kill comes from the pipeline's own progress reports, not a timer: the child process runs
the ingest with a Reporter that SIGKILLs its own process at the n-th report of a given kind,
so every run stops at the same point whatever the machine's speed. Its pipes are drained by
``subprocess.run``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dump import dump
from ingest.pipeline import IngestConfig, ingest
from kb.stores import open_store

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, signal, sys
from ingest.pipeline import IngestConfig, Reporter, ingest
from kb.stores import open_store

spec = json.loads(sys.argv[1])

class KillAt(Reporter):
    stage, seen = None, 0

    def begin(self, stage, total, unit):
        self.stage = stage

    def advance(self, n):
        self.event(self.stage, "advance")

    def layer_written(self, stage, layer):
        self.event(stage, f"written {layer}")

    def event(self, stage, what):
        if (stage, what) == (spec["stage"], spec["event"]):
            self.seen += 1
            if self.seen == spec["nth"]:
                os.kill(os.getpid(), signal.SIGKILL)

with open_store(spec["store"], create=True) as store:
    ingest(store, IngestConfig(**spec["config"]), KillAt())
sys.exit(3)  # the kill point was never reached
"""


def kill_at(store: Path, cfg: IngestConfig, stage: str, event: str, nth: int) -> None:
    spec = {"store": str(store), "config": cfg.as_dict(), "stage": stage, "event": event, "nth": nth}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, f"exit {done.returncode}:\n{done.stderr[-3000:]}"


def markers(store: Path, stage: str) -> list[int]:
    with open_store(str(store), read_only=True) as s:
        keys = s.cypher("MATCH (m:NkbMeta) WHERE m.key STARTS WITH $p RETURN m.key AS k", {"p": f"ingest/tiny/{stage}/"})
    return sorted(int(k.rsplit("/", 1)[1]) for k in keys["k"])


def count(store: Path, rel: str) -> int:
    with open_store(str(store), read_only=True) as s:
        return int(s.cypher(f"MATCH ()-[r:{rel}]->() RETURN count(r) AS c")["c"].iloc[0])


@pytest.mark.parametrize("stage, event, nth", [
    ("lmhead", "advance", 2),  # during lmhead: both layers decoded, nothing written yet (layers are written together)
    ("lmhead", "written 1", 1),  # every layer's edges written, layer 0 marked done, layer 1 not
    ("activations", "advance", 3),  # during the activation pass: after batch 3 of 5 (checkpointed after every batch)
    ("activations", "written 0", 1),  # layer 0's records written, its done marker not
], ids=["during-lmhead", "lmhead-written-not-all-marked", "during-activation-pass", "records-written-not-marked"])
def test_killed_ingest_resumes_to_the_same_kb(tiny_run, tmp_path, stage, event, nth):
    store = tmp_path / "killed"
    cfg = tiny_run.config()
    kill_at(store, cfg, stage, event, nth)

    checkpoint = store / "artifacts" / "tiny" / "activations.pt"
    if stage == "lmhead" and event == "advance":
        assert markers(store, "lmhead") == [] and count(store, "PROMOTES") == 0
    elif stage == "lmhead":
        assert markers(store, "lmhead") == [0] and count(store, "READS") == count(store, "SUPPRESSES") * 2 > 0
    elif event == "advance":
        assert markers(store, "lmhead") == [0, 1] and markers(store, "activations") == []
        assert checkpoint.exists() and count(store, "ACTIVATES_ON") == 0
    else:
        assert markers(store, "activations") == [] and count(store, "ACTIVATES_ON") > 0

    with open_store(str(store)) as s:
        ingest(s, cfg)
        assert dump(s) == tiny_run.dump
    assert not checkpoint.exists()
