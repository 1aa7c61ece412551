"""A real `nkb ingest` process killed with SIGKILL mid-run, then resumed, yields exactly the
knowledge base of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dump import dump
from kb.stores import open_store
from tinymodels import save_tiny_model

NKB = str(Path(sys.executable).parent / "nkb")
ARGS = ["--tokens", "32768", "--window", "32", "--batch-size", "2", "--checkpoint-seconds", "0.2",
        "--top-k", "5", "--random", "3", "--quantiles", "2", "--per-quantile", "1", "--lmhead-k", "3"]


def _ingest(model_dir: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, "NKB_STORE": str(store)}
    return subprocess.Popen([NKB, "ingest", str(model_dir), "--name", "tiny", *ARGS], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "gpt2", seed=3)


def test_killed_ingest_resumes_to_the_same_kb(tmp_path, model_dir):
    clean = _ingest(model_dir, tmp_path / "clean")
    out, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err

    store = tmp_path / "killed"
    checkpoint = store / "artifacts" / "tiny" / "activations.pt"
    proc = _ingest(model_dir, store)
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, f"ingest ended before its first checkpoint: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with open_store(str(store), read_only=True) as s:
        interrupted = s.cypher("MATCH (n:NkbMeta) WHERE n.key STARTS WITH 'ingest/tiny/activations/' "
                               "RETURN count(*) AS c")["c"].iloc[0]
    assert interrupted < 2, "the run was not interrupted during the activation pass"

    resumed = _ingest(model_dir, store)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert not checkpoint.exists()

    with open_store(str(tmp_path / "clean"), read_only=True) as a, open_store(str(store), read_only=True) as b:
        assert dump(b) == dump(a)
