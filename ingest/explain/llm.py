"""The two language-model back ends explainers and scorers run on.

- ``LocalLM``: a transformers chat model on this machine (default: the bundled
  SmolLM2-135M-Instruct), batched. It gives exact next-token probabilities, so simulation
  and classification need no sampling.
- ``ApiClient``: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp's server, Ollama...)
  through the ``openai`` package. Requests run with bounded concurrency; the client retries
  rate limits (429), server errors and dropped connections with exponential backoff (the
  ``openai`` package's own retry loop, which honours ``Retry-After``); every response is
  cached on disk keyed by the endpoint, the model and the whole request, so a re-run costs
  nothing. The API key is handed to the client and never printed or stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kb import config
from kb.errors import ConnectionFailed, NkbError

Message = dict[str, str]

# -- a local transformers model -------------------------------------------------------------


class LocalLM:
    """A causal chat model held in memory; ``name`` is what explanations and scores record."""

    def __init__(self, spec: str = "smollm2-135m", *, device: str = "cpu", loaded: Any = None,
                 batch_size: int = 8):
        if loaded is None:
            from ingest.models import load_model

            loaded = load_model(spec, device=device)
        self.name = loaded.name
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.batch_size = batch_size
        self.device = next(self.model.parameters()).device

    # token ids ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        # A model without a chat template reads the conversation as plain text.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode(text)

    def single_token(self, text: str) -> int | None:
        ids = self.encode(text)
        return ids[0] if len(ids) == 1 else None

    # model calls -------------------------------------------------------------------------
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    def _pad(self, rows: Sequence[Sequence[int]], left: bool):
        import torch

        width = max(len(r) for r in rows)
        pad = self._pad_id()
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if left:
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            else:
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(self, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int = 48,
                 progress: Callable[[int], None] | None = None, prefix: str = "") -> list[str]:
        """Greedy completions of each conversation, ``batch_size`` at a time. A ``prefix`` is
        the start of the answer: it follows the assistant header, and the completion continues
        it (the returned text leaves it out)."""
        import torch

        out: list[str] = []
        prompts = [self.chat_ids(c) + (self.encode(prefix) if prefix else []) for c in conversations]
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            ids, mask = self._pad(chunk, left=True)  # left padding: every row continues at the same column
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=self._pad_id(),
                                          eos_token_id=self.tokenizer.eos_token_id)
            out += self.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
            if progress:
                progress(len(chunk))
        return out

    def next_token_probs(self, rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
                         candidates: Sequence[int]) -> list[Any]:
        """For each row, the probabilities of the ``candidates`` tokens as the next token after
        each of its ``positions`` (one forward pass per batch, softmax over the whole vocabulary):
        a list of [len(positions[i]), len(candidates)] arrays."""
        import torch

        out = []
        cand = torch.tensor(list(candidates), device=self.device)
        for start in range(0, len(rows), self.batch_size):
            chunk, pos = rows[start : start + self.batch_size], positions[start : start + self.batch_size]
            ids, mask = self._pad(chunk, left=False)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            for i, p in enumerate(pos):
                probs = torch.softmax(logits[i, list(p)], dim=-1)[:, cand]
                out.append(probs.cpu().numpy())
        return out


# -- an OpenAI-compatible server ------------------------------------------------------------

BASE_URL_ENV, API_KEY_ENV, MODEL_ENV = "NKB_OPENAI_BASE_URL", "NKB_OPENAI_API_KEY", "NKB_OPENAI_MODEL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass
class ApiSettings:
    base_url: str
    model: str
    api_key: str = field(repr=False)
    concurrency: int = 4
    max_retries: int = 6
    timeout: float = 120.0


def api_settings(base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 concurrency: int | None = None, max_retries: int | None = None,
                 timeout: float | None = None) -> ApiSettings:
    """Endpoint settings from the arguments, else $NKB_OPENAI_BASE_URL / $NKB_OPENAI_MODEL /
    $NKB_OPENAI_API_KEY, else the ``[openai]`` section of the config file."""
    section = config.load_config().get("openai", {})
    url = base_url or os.environ.get(BASE_URL_ENV) or section.get("base_url") or DEFAULT_BASE_URL
    name = model or os.environ.get(MODEL_ENV) or section.get("model")
    key = api_key or os.environ.get(API_KEY_ENV) or section.get("api_key")
    if not name:
        raise NkbError(f"no model named for the OpenAI-compatible endpoint at {url}",
                       f"pass --api-model, or set ${MODEL_ENV} or model in the [openai] section of {config.config_path()}")
    if not key:
        raise NkbError(f"no API key for the OpenAI-compatible endpoint at {url}",
                       f"set ${API_KEY_ENV} (any string for a local server) or api_key in the [openai] section "
                       f"of {config.config_path()}")
    return ApiSettings(url.rstrip("/"), name, key,
                       concurrency=int(concurrency or section.get("concurrency") or 4),
                       max_retries=int(max_retries if max_retries is not None else section.get("max_retries", 6)),
                       timeout=float(timeout or section.get("timeout") or 120.0))


class ResponseCache:
    """Responses on disk (SQLite), keyed by a hash of everything that determines them."""

    def __init__(self, path: Path | None):
        self.path = path
        self._db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path))
            self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.blake2b(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode(), digest_size=16).hexdigest()

    def get(self, key: str) -> Any:
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class ApiClient:
    """Chat and completion requests to one OpenAI-compatible endpoint, cached and concurrent."""

    def __init__(self, settings: ApiSettings, *, cache_path: Path | None = None):
        try:
            import openai
        except ImportError:
            raise NkbError("the API explainer needs the openai package", "pip install openai") from None
        self.settings = settings
        self.name = settings.model
        self._openai = openai
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key,
                                     max_retries=settings.max_retries, timeout=settings.timeout)
        self.cache = ResponseCache(cache_path)
        self.requests_sent = 0

    def close(self) -> None:
        self.cache.close()
        self._client.close()

    def check(self) -> None:
        """Fail fast, naming the URL, when the endpoint cannot be reached or refuses the key."""
        o = self._openai
        try:
            self._client.with_options(max_retries=0, timeout=min(self.settings.timeout, 15.0)).models.list()
        except o.AuthenticationError:
            raise ConnectionFailed(f"the OpenAI-compatible endpoint at {self.settings.base_url} refused the API key",
                                   f"check ${API_KEY_ENV} or api_key in the [openai] config section") from None
        except o.APIConnectionError:
            raise ConnectionFailed(f"cannot reach the OpenAI-compatible endpoint at {self.settings.base_url}",
                                   f"start the server, or point --base-url / ${BASE_URL_ENV} at a running one") from None
        except o.APIStatusError as e:
            if e.status_code not in (404, 405):  # servers without /models still serve completions
                raise ConnectionFailed(f"the OpenAI-compatible endpoint at {self.settings.base_url} answered "
                                       f"HTTP {e.status_code} to a model listing") from None

    def _fail(self, e: Exception) -> NkbError:
        o = self._openai
        url = self.settings.base_url
        if isinstance(e, o.APIConnectionError):
            return ConnectionFailed(f"lost the OpenAI-compatible endpoint at {url} "
                                    f"(after {self.settings.max_retries} retries)")
        if isinstance(e, o.APIStatusError):
            return ConnectionFailed(f"the OpenAI-compatible endpoint at {url} answered HTTP {e.status_code}"
                                    + (f" after {self.settings.max_retries} retries" if e.status_code in (408, 409, 429)
                                       or e.status_code >= 500 else ""),
                                    (str(e.message)[:200] if getattr(e, "message", None) else None))
        return NkbError(f"request to {url} failed: {type(e).__name__}")

    def _many(self, kind: str, requests: Sequence[dict[str, Any]], call: Callable[[dict[str, Any]], Any],
              progress: Callable[[int], None] | None) -> list[Any]:
        keys = [ResponseCache.key({"endpoint": self.settings.base_url, "model": self.settings.model, "kind": kind,
                                   "request": r}) for r in requests]
        out: list[Any] = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        if progress and len(todo) < len(out):
            progress(len(out) - len(todo))
        if not todo:
            return out
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency)) as pool:
            futures = {pool.submit(call, requests[i]): i for i in todo}
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        out[i] = fut.result()
                    except self._openai.OpenAIError as e:
                        raise self._fail(e) from None
                    self.requests_sent += 1
                    self.cache.put(keys[i], out[i])  # kept even if a later request fails
                    if progress:
                        progress(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return out

    def chat(self, requests: Sequence[dict[str, Any]], *, progress: Callable[[int], None] | None = None) -> list[dict]:
        """Each request: ``messages`` plus chat parameters. Returns {text, top_logprobs} per request,
        top_logprobs a list (one per generated token) of {token: logprob}, or None."""

        def call(r: dict[str, Any]) -> dict:
            resp = self._client.chat.completions.create(model=self.settings.model, **r)
            choice = resp.choices[0]
            tops = None
            if getattr(choice, "logprobs", None) is not None and choice.logprobs.content:
                tops = [{t.token: t.logprob for t in (c.top_logprobs or [])} or {c.token: c.logprob}
                        for c in choice.logprobs.content]
            return {"text": choice.message.content or "", "top_logprobs": tops}

        return self._many("chat", requests, call, progress)

    def complete(self, requests: Sequence[dict[str, Any]], *,
                 progress: Callable[[int], None] | None = None) -> list[dict]:
        """Legacy completions (``prompt``, ``echo``, ``logprobs``...). Returns {text, tokens, top_logprobs}."""

        def call(r: dict[str, Any]) -> dict:
            resp = self._client.completions.create(model=self.settings.model, **r)
            choice = resp.choices[0]
            lp = choice.logprobs
            return {"text": choice.text or "", "tokens": list(lp.tokens or []) if lp else None,
                    "top_logprobs": [dict(d or {}) for d in (lp.top_logprobs or [])] if lp else None}

        return self._many("complete", requests, call, progress)
