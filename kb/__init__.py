"""neuron-kb: a knowledge base of language-model neurons, stored as a property graph."""

from kb.stores import Store, open_store

__version__ = "0.1.0"
__all__ = ["Store", "open_store", "__version__"]
