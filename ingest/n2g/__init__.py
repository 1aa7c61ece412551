"""Neuron to Graph (Foote et al. 2023, "Neuron to Graph: Interpreting Language Model Neurons
at Scale"), built for a whole layer at a time.

Per neuron, from its top activation records: *prune* each training record to the shortest
context that still makes the neuron fire (``pruning``), measure how much each context token
matters by masking it (``saliency``), replace the important tokens with similar ones and
keep the variants that still fire (``augmentation``), and fold the results into a trie
rooted at the firing tokens (``trie``) that predicts the neuron's activation on new text
(``trie.Trie.predict``) and is scored on held-out records (``evaluation``).

``driver`` runs all of this for every neuron of a layer with shared forward passes
(``runner``): one forward of a variant sequence yields every neuron of the layer, so each
truncation, masking and substitution is run once per snippet, not once per neuron.

``trie`` and ``evaluation`` import nothing heavy (no torch): the CLI loads stored graphs
with them.
"""

from ingest.n2g.config import N2GConfig

__all__ = ["N2GConfig"]
