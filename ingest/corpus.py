"""Text to run a model on: corpus sources, and fixed-size token windows cut from them.

Sources (``load_corpus``):

- ``None`` / ``"builtin"`` / ``"pydoc"``: Python's bundled documentation topics
  (``pydoc_data.topics``, ~465k characters of English prose, present on every Python
  install), in a fixed seeded shuffle of topic order so a small token budget samples many
  topics instead of the alphabetically first few.
- a ``.txt`` / ``.md`` file: the whole file is **one document** (a book or an article stays one
  context; for one document per line use ``.jsonl``).
- a ``.jsonl`` file: one JSON object per line, its ``text_field`` (default ``"text"``) is a
  document; blank lines are skipped.
- a ``.parquet`` file: the ``text_field`` column, one document per row, read in batches.
- a directory: every such file below it (recursively, hidden ones excluded), in sorted
  path order; files with other extensions are skipped.
- ``hf:NAME[:CONFIG][:SPLIT]``: a Hugging Face dataset, streamed (``datasets`` package, the
  ``[hf]`` extra; split defaults to ``train``; ``hf:NAME::SPLIT`` gives a split without a config).

Files must be UTF-8: undecodable bytes are an error naming the file and byte offset, never
silently replaced, because replaced text would become snippets nobody can trace back.

Windows (``make_windows``): documents are tokenized in order without special tokens and
joined with a separator token, then cut into consecutive non-overlapping windows; the tail
shorter than a window is dropped. Which tokens act as separator and BOS is decided by
``separator_id`` and ``bos_id_for``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from kb.config import shorten
from kb.errors import IngestError

TEXT_EXTENSIONS = (".txt", ".md")
CORPUS_EXTENSIONS = (*TEXT_EXTENSIONS, ".jsonl", ".parquet")
BUILTIN_NAMES = ("builtin", "pydoc")
_PYDOC_SEED = 0
_BATCH_CHARS = 1_000_000  # characters tokenized per batch: big enough for the fast tokenizer's threads
_BATCH_DOCS = 256
_HF_HINT = "pip install 'neuron-kb[hf]'"


@dataclass
class Corpus:
    name: str
    documents: Callable[[], Iterator[str]]  # a fresh iterator on every call


@dataclass
class Windows:
    token_ids: np.ndarray  # [n_windows, window] int64, corpus tokens only (no BOS)
    bos_id: int | None  # prepended at run time by the activation pass when not None
    corpus: str

    @property
    def n_windows(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def window(self) -> int:
        return int(self.token_ids.shape[1])


# --- sources ----------------------------------------------------------------------------------


def _pydoc_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    keys = sorted(topics)  # sorted first: dict order is an implementation detail
    random.Random(_PYDOC_SEED).shuffle(keys)
    for key in keys:
        yield topics[key]


def _decode(data: bytes, path: Path, offset: int = 0, where: str = "") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise IngestError(
            f"{path}{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte offset {offset + err.start})",
            "convert the file to UTF-8",
        ) from None


def _unreadable(path: Path, err: OSError) -> IngestError:
    return IngestError(f"cannot read corpus file {path}: {err.strerror or type(err).__name__}",
                       "make it readable, or leave it out of --corpus")


def _text_documents(path: Path) -> Iterator[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte-order mark is not text
    yield _decode(data[start:], path, offset=start)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    offset = 0
    try:
        f = path.open("rb")
    except OSError as e:
        raise _unreadable(path, e) from None
    with f:
        for line_no, raw in enumerate(f, start=1):
            line = _decode(raw, path, offset, where=f" line {line_no}")
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise IngestError(f"{path} line {line_no}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise IngestError(f"{path} line {line_no}: JSON nested too deeply to read",
                                  'each line must be an object such as {"text": "..."}') from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise IngestError(
                    f"{path} line {line_no}: no {text_field!r} field (has: {keys})",
                    "choose the field with --text-field",
                )
            text = record[text_field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise IngestError(f"{path} line {line_no}: {text_field!r} is a {type(text).__name__}, not text")
            yield text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        if not isinstance(e, pa.ArrowException):
            raise _unreadable(path, e) from None
        raise IngestError(f"{path} is not a readable Parquet file: {str(e).splitlines()[0][:200]}",
                          "pass a Parquet file, or give the file its real extension (.txt, .md, .jsonl)") from None
    if text_field not in pf.schema_arrow.names:
        raise IngestError(
            f"{path}: no {text_field!r} column (has: {', '.join(pf.schema_arrow.names)})",
            "choose the column with --text-field",
        )
    batches = pf.iter_batches(columns=[text_field], batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:  # a damaged row group
            raise IngestError(f"{path}: cannot read the {text_field!r} column: {str(e).splitlines()[0][:200]}") from None
        if batch is None:
            return
        column = batch.column(0)
        if not (column.type.equals("string") or column.type.equals("large_string")):
            raise IngestError(f"{path}: column {text_field!r} holds {column.type}, not text")
        for text in column.to_pylist():
            if text is not None:
                yield text


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        return _text_documents(path)
    if suffix == ".jsonl":
        return _jsonl_documents(path, text_field)
    return _parquet_documents(path, text_field)


def _directory_files(root: Path) -> list[Path]:
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in CORPUS_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _hf_corpus(spec: str, text_field: str) -> Corpus:
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise IngestError(f"not a Hugging Face corpus spec: {spec!r}", "use hf:NAME[:CONFIG][:SPLIT]")
    parts += [""] * (3 - len(parts))
    name, config, split = parts[0], parts[1] or None, parts[2] or "train"
    if importlib.util.find_spec("datasets") is None:
        raise IngestError("hf: corpora need the datasets package", _HF_HINT)

    def documents() -> Iterator[str]:
        import datasets

        try:
            dataset = datasets.load_dataset(name, config, split=split, streaming=True)
        except (OSError, ValueError) as err:  # not found / offline (OSError family), bad config or split
            raise IngestError(
                f"cannot load dataset {name!r}: {str(err).splitlines()[0][:200]}",
                "hf: corpora need the network or a cached copy",
            ) from None
        for row in dataset:
            if text_field not in row:
                raise IngestError(
                    f"dataset {name!r} has no {text_field!r} field (has: {', '.join(row)})",
                    "choose the field with --text-field",
                )
            if row[text_field] is not None:
                yield row[text_field]

    return Corpus(name=spec, documents=documents)


def load_corpus(spec: str | None, *, text_field: str = "text") -> Corpus:
    """A corpus from a spec (see the module docstring); paths are checked now, contents when read."""
    if spec is None or spec in BUILTIN_NAMES:
        return Corpus(name="pydoc", documents=_pydoc_documents)
    if spec.startswith("hf:"):
        return _hf_corpus(spec, text_field)
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # a name too long, a directory we may not enter
        raise IngestError(f"cannot use corpus {shorten(spec)}: {e.strerror}", "pass a file, a directory, builtin or hf:NAME") from None
    if not exists:
        raise IngestError(f"no such corpus file or directory: {shorten(spec)}", "pass a file, a directory, builtin or hf:NAME")
    path = path.resolve()
    if path.is_dir():
        try:
            files = _directory_files(path)
        except OSError as e:
            raise _unreadable(Path(e.filename or path), e) from None
        if not files:
            raise IngestError(f"{path} holds no corpus files ({', '.join(CORPUS_EXTENSIONS)})")

        def documents() -> Iterator[str]:
            for file in files:
                yield from _file_documents(file, text_field)

        return Corpus(name=path.name, documents=documents)
    if path.suffix.lower() not in CORPUS_EXTENSIONS:
        raise IngestError(
            f"{path}: unknown corpus file type {path.suffix or '(no extension)'!r}",
            f"use one of {', '.join(CORPUS_EXTENSIONS)}, or a directory of them",
        )
    return Corpus(name=path.stem, documents=lambda: _file_documents(path, text_field))


def check_corpus(corpus: Corpus) -> None:
    """Read the corpus up to its first non-empty document, so that a file that cannot be read
    (not UTF-8, not JSON, not Parquet, unreadable) or holds no text fails now, before a model
    is loaded, rather than after. A Hugging Face dataset is left for later: opening one may
    need the network."""
    if corpus.name.startswith("hf:"):
        return
    if not any(doc for doc in corpus.documents()):
        raise IngestError(f"corpus {corpus.name!r} has no text")


# --- windows ----------------------------------------------------------------------------------


def separator_id(tokenizer) -> int | None:
    """The token put between documents.

    ``<|endoftext|>`` when the vocabulary has it: it is the pretraining document separator of
    GPT-2, Pythia, SmolLM2 and Qwen, whose chat variants set ``eos_token`` to an end-of-turn
    marker instead. Otherwise the EOS token, else the BOS token, else none.
    """
    endoftext = tokenizer.get_vocab().get("<|endoftext|>")
    if endoftext is not None:
        return int(endoftext)
    for candidate in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return None


def bos_id_for(tokenizer) -> int | None:
    """The token the activation pass puts before each window, or None.

    The BOS the tokenizer itself prepends (Llama, Mistral, Gemma) when it does; otherwise the
    document separator, which packed-document models (GPT-2, Pythia, SmolLM2) saw at the start of
    every context. Either way position 0 holds a token the model expects there, so the first
    corpus token is not read as the attention sink.
    """
    bos = tokenizer.bos_token_id
    if bos is not None:
        encoded = tokenizer("a", add_special_tokens=True)["input_ids"]
        if encoded and encoded[0] == bos:
            return int(bos)
    return separator_id(tokenizer)


def _batches(documents: Iterable[str], char_limit: Callable[[], int]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in documents:
        if not doc:
            continue
        batch.append(doc)
        chars += len(doc)
        if chars >= char_limit() or len(batch) >= _BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def make_windows(corpus: Corpus, tokenizer, *, window: int = 64, max_tokens: int | None = None) -> Windows:
    """Cut ``corpus`` into ``[n, window]`` token windows; stops reading once ``max_tokens`` are collected."""
    if window < 1:
        raise IngestError(f"window must be at least 1 token, not {window}")
    if max_tokens is not None and max_tokens < window:
        raise IngestError(f"max_tokens ({max_tokens}) is smaller than one window ({window} tokens)")
    wanted = None if max_tokens is None else (max_tokens // window) * window
    sep = separator_id(tokenizer)
    tokens: list[int] = []
    n_docs = 0

    def char_limit() -> int:
        # With a budget, batch about as much text as the remaining tokens need (English runs at
        # ~4 characters a token; 6 leaves headroom), so a small budget reads a few documents only.
        if wanted is None:
            return _BATCH_CHARS
        return min(_BATCH_CHARS, max(wanted - len(tokens), 1) * 6)

    for batch in _batches(corpus.documents(), char_limit):
        # verbose=False: long documents are fine here, the "longer than the model max" warning is noise
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            if n_docs and sep is not None:
                tokens.append(sep)
            tokens.extend(ids)
            n_docs += 1
            if wanted is not None and len(tokens) >= wanted:
                break
        if wanted is not None and len(tokens) >= wanted:
            break

    if not n_docs:
        raise IngestError(f"corpus {corpus.name!r} has no text")
    n_windows = len(tokens) // window if wanted is None else min(len(tokens), wanted) // window
    if n_windows == 0:
        raise IngestError(
            f"corpus {corpus.name!r} has only {len(tokens)} tokens, fewer than one window of {window}",
            "use a larger corpus or a smaller --window",
        )
    token_ids = np.asarray(tokens[: n_windows * window], dtype=np.int64).reshape(n_windows, window)
    return Windows(token_ids=token_ids, bos_id=bos_id_for(tokenizer), corpus=corpus.name)


def snippet_id(tokenizer_id: str, token_ids: np.ndarray) -> str:
    """``<tokenizer_id>/<16 hex>``: the same tokens under the same vocabulary always get the same id."""
    data = np.ascontiguousarray(np.asarray(token_ids), dtype="<i8").tobytes()
    return f"{tokenizer_id}/{hashlib.blake2b(data, digest_size=8).hexdigest()}"
