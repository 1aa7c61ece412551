"""Corpus sources and token windows, with the tiny offline BPE tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydoc_data.topics import topics

from ingest import corpus as corpus_mod
from ingest.corpus import Corpus, bos_id_for, load_corpus, make_windows, separator_id, snippet_id
from kb.errors import IngestError
from tinymodels import tiny_tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Lists are mutable sequences, typically used to store collections of items.",
    "A function definition defines a user-defined function object.",
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _expected_stream(tok, docs):
    sep = separator_id(tok)
    out = []
    for i, doc in enumerate(docs):
        if i:
            out.append(sep)
        out.extend(_encode(tok, doc))
    return out


def _counting(docs):
    """A corpus that records how many documents were pulled from it."""
    pulled = []

    def documents():
        for doc in docs:
            pulled.append(doc)
            yield doc

    return Corpus("counted", documents), pulled


# --- sources -------------------------------------------------------------------------------


def test_builtin_is_pydoc_in_a_fixed_shuffle():
    corpus = load_corpus(None)
    assert corpus.name == "pydoc"
    docs = list(corpus.documents())
    assert docs == list(corpus.documents())  # re-iterable, same order
    assert docs == list(load_corpus("builtin").documents()) == list(load_corpus("pydoc").documents())
    assert sorted(docs) == sorted(topics.values())
    in_key_order = [topics[k] for k in sorted(topics)]
    assert docs != in_key_order  # shuffled, so a small budget is not all "assert"/"assignment"


def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Para one.\n\nPara two.\n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.name == "book"
    assert list(corpus.documents()) == ["Para one.\n\nPara two.\n"]


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello \xc3\xa9t\xc3\xa9")
    assert list(load_corpus(str(path)).documents()) == ["hello été"]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": DOCS[0], "id": 1}, {"text": None}, {"text": DOCS[1]}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n", encoding="utf-8")
    assert list(load_corpus(str(path)).documents()) == DOCS[:2]  # blank line and null skipped
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    assert list(load_corpus(str(other), text_field="body").documents()) == ["x"]


def test_parquet_text_column(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), path)
    corpus = load_corpus(str(path))
    assert corpus.name == "docs"
    assert list(corpus.documents()) == DOCS


def test_directory_reads_supported_files_in_path_order(tmp_path):
    root = tmp_path / "mycorpus"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "b" / "2.txt").write_text(DOCS[1], encoding="utf-8")
    (root / "a.jsonl").write_text(json.dumps({"text": DOCS[0]}) + "\n", encoding="utf-8")
    (root / "c.txt").write_text(DOCS[2], encoding="utf-8")
    (root / "notes.csv").write_text("ignored", encoding="utf-8")
    (root / ".hidden" / "x.txt").write_text("ignored", encoding="utf-8")
    corpus = load_corpus(str(root))
    assert corpus.name == "mycorpus"
    assert list(corpus.documents()) == DOCS


# --- source errors -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(IngestError, match="^no such corpus file or directory: .*nope.txt"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"data.csv: unknown corpus file type '.csv' \(use one of .txt, .md, .jsonl"):
        load_corpus(str(path))


def test_directory_without_corpus_files(tmp_path):
    (tmp_path / "x.csv").write_text("a", encoding="utf-8")
    with pytest.raises(IngestError, match="holds no corpus files"):
        load_corpus(str(tmp_path))


def test_undecodable_text_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf".encode() + b"\xe9 au lait")
    corpus = load_corpus(str(path))  # contents are read lazily
    with pytest.raises(IngestError) as err:
        list(corpus.documents())
    assert str(err.value) == f"{path}: not UTF-8 text (byte 0xe9 at byte offset 3) (convert the file to UTF-8)"


def test_undecodable_jsonl_offset_counts_from_file_start(tmp_path):
    path = tmp_path / "bad.jsonl"
    first = (json.dumps({"text": "ok"}) + "\n").encode()
    path.write_bytes(first + b'{"text": "\xff"}\n')
    offset = len(first) + len(b'{"text": "')
    with pytest.raises(IngestError, match=rf"bad.jsonl line 2: not UTF-8 text \(byte 0xff at byte offset {offset}\)"):
        list(load_corpus(str(path)).documents())


def test_jsonl_bad_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(IngestError, match="x.jsonl line 2: not valid JSON"):
        list(load_corpus(str(path)).documents())
    path.write_text('{"body": "a", "id": 3}\n', encoding="utf-8")
    with pytest.raises(IngestError, match=r"x.jsonl line 1: no 'text' field \(has: body, id\) \(choose the field"):
        list(load_corpus(str(path)).documents())
    path.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(IngestError, match="'text' is a int, not text"):
        list(load_corpus(str(path)).documents())


def test_parquet_without_the_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": DOCS}), path)
    with pytest.raises(IngestError, match=r"no 'text' column \(has: body\)"):
        list(load_corpus(str(path)).documents())


def test_hf_without_datasets_gives_the_install_hint(monkeypatch):
    real = corpus_mod.importlib.util.find_spec
    monkeypatch.setattr(
        corpus_mod.importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )
    with pytest.raises(IngestError) as err:
        load_corpus("hf:wikitext:wikitext-2-raw-v1:train")
    assert str(err.value) == "hf: corpora need the datasets package (pip install 'neuron-kb[hf]')"
    with pytest.raises(IngestError, match="use hf:NAME"):
        load_corpus("hf:")


# --- windows -------------------------------------------------------------------------------


def test_windows_equal_the_tokenizers_own_encoding(tok):
    corpus = Corpus("three", lambda: iter(DOCS))
    stream = _expected_stream(tok, DOCS)
    w = make_windows(corpus, tok, window=8)
    assert w.token_ids.dtype == np.int64
    assert w.token_ids.shape == (len(stream) // 8, 8) == (w.n_windows, w.window)
    assert w.token_ids.ravel().tolist() == stream[: w.n_windows * 8]  # tail dropped, no BOS inside
    assert w.corpus == "three"
    assert stream.count(separator_id(tok)) == 2  # between documents, not after the last


def test_pydoc_windows_are_deterministic(tok):
    a = make_windows(load_corpus(None), tok, window=32, max_tokens=2000)
    b = make_windows(load_corpus(None), tok, window=32, max_tokens=2000)
    assert a.token_ids.shape == (62, 32)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)


def test_budget_stops_reading_early(tok):
    docs = [f"Document number {i} talks about topic {i % 7} at some length." for i in range(5000)]
    corpus, pulled = _counting(docs)
    w = make_windows(corpus, tok, window=16, max_tokens=100)
    assert w.token_ids.shape == (6, 16)  # 100 // 16 windows
    assert w.token_ids.ravel().tolist() == _expected_stream(tok, docs[:50])[:96]
    assert len(pulled) < 100  # a few documents, not all 5000
    full = make_windows(Corpus("all", lambda: iter(docs)), tok, window=16)
    np.testing.assert_array_equal(full.token_ids[:6], w.token_ids)


def test_empty_corpus(tok, tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(IngestError, match="^corpus 'empty' has no text$"):
        make_windows(load_corpus(str(tmp_path / "empty.txt")), tok)


def test_too_few_tokens_says_how_many(tok):
    n = len(_encode(tok, DOCS[0]))
    with pytest.raises(IngestError) as err:
        make_windows(Corpus("short", lambda: iter(DOCS[:1])), tok, window=64)
    assert str(err.value) == (
        f"corpus 'short' has only {n} tokens, fewer than one window of 64 (use a larger corpus or a smaller --window)"
    )


def test_bad_window_arguments(tok):
    corpus = Corpus("c", lambda: iter(DOCS))
    with pytest.raises(IngestError, match="window must be at least 1"):
        make_windows(corpus, tok, window=0)
    with pytest.raises(IngestError, match=r"max_tokens \(10\) is smaller than one window \(64 tokens\)"):
        make_windows(corpus, tok, window=64, max_tokens=10)


def test_separator_and_bos_choice(tok):
    # no <|endoftext|>, no BOS added by the tokenizer: EOS separates and starts windows
    assert separator_id(tok) == tok.eos_token_id == 1
    assert make_windows(Corpus("c", lambda: iter(DOCS)), tok, window=8).bos_id == 1
    # a tokenizer that prepends its BOS itself (Llama-style) gets that BOS
    assert bos_id_for(tiny_tokenizer(add_bos=True)) == 0
    # GPT-2 / Pythia / SmolLM2 style: the pretraining separator <|endoftext|> wins over a chat EOS
    packed = tiny_tokenizer()
    packed.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    eot = packed.convert_tokens_to_ids("<|endoftext|>")
    assert separator_id(packed) == bos_id_for(packed) == eot != packed.eos_token_id


def test_snippet_ids_stable_and_distinct(tok):
    w = make_windows(load_corpus(None), tok, window=16, max_tokens=400)
    ids = [snippet_id("tok-512-abcdef01", row) for row in w.token_ids]
    assert len(set(ids)) == len(ids)
    assert ids[0].startswith("tok-512-abcdef01/") and len(ids[0].rsplit("/", 1)[1]) == 16
    # depends on the values only, not on dtype, memory layout or the array object
    row = w.token_ids[0]
    assert snippet_id("tok-512-abcdef01", row.astype(np.int32)) == ids[0]
    assert snippet_id("tok-512-abcdef01", list(row)) == ids[0]
    assert snippet_id("tok-512-abcdef01", w.token_ids[:, ::-1][0][::-1]) == ids[0]
    # the same tokens under another vocabulary are another snippet
    assert snippet_id("tok-999-00000000", row) != ids[0]
    # pinned: the id must not change between releases (stored graphs refer to it)
    assert snippet_id("t", np.arange(4)) == "t/e1ee3e32a0cd57eb"
