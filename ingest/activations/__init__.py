"""The activation pass: per-neuron statistics and activation records from one forward pass
over the corpus, for every requested layer at once.

What is kept per neuron, and how exact it is (every selection is "the k windows with the
largest int64 key", with keys distinct per neuron, so nothing depends on batch size,
device or resumes):

- **statistics** (exact): max, min, mean, population variance, density and n_tokens over
  every window token, the BOS position excluded (``stats``);
- **top** (exact): the ``top_k`` windows with the largest per-window max; ties go to the
  lower window index (``keys.value_keys``, ``buffers.TopK``);
- **random** (exact uniform sample without replacement): the ``n_random`` windows with the
  largest pseudo-random keys, planned before the pass (``keys``, ``buffers.Planned``);
- **quantile_<j>**: ``per_quantile`` windows sampled per activation quantile bin, with
  estimated inner bin edges (``frames``).

Each record keeps the neuron's activation at every window token (``window`` values, aligned
with the Snippet's token_ids), computed in float32 and kept as float16, the precision the
stage stores them in (base64 little-endian float16 strings, ``kb.records``); its ``max`` and
``position`` come from the float32 values. The state is bounded and known in advance
(``buffer_bytes``: 35 MB per layer for SmolLM2-135M at window 64 and the defaults), so
``ingest.memory`` can split the layers into groups, one pass each.

Modules: ``keys`` (sampling keys and plans), ``buffers`` (record buffers), ``stats`` (Chan
statistics), ``fused`` (the hook's one kernel over the activations, compiled on CPU), ``collector``
(the forward-hook driver), ``checkpoint`` (the resumable pass),
``frames`` (result frames and quantile bins), ``config`` (settings and result types).
"""

from ingest.activations.checkpoint import corpus_fingerprint, run_activation_pass
from ingest.activations.collector import ActivationCollector, buffer_bytes
from ingest.activations.config import LayerResults, RecordConfig
from ingest.activations.keys import plan_windows, sample_keys

__all__ = ["ActivationCollector", "LayerResults", "RecordConfig", "buffer_bytes", "corpus_fingerprint",
           "plan_windows", "run_activation_pass", "sample_keys"]
