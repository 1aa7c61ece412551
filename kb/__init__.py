"""neuron-kb: a knowledge base of language-model neurons, stored as a property graph."""

__version__ = "0.1.0"
__all__ = ["Store", "open_store", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import kb.schema` (and `python -m kb.schema`) stays light.
    if name in ("Store", "open_store"):
        from kb import stores

        return getattr(stores, name)
    raise AttributeError(f"module 'kb' has no attribute {name!r}")
