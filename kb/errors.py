"""Errors that reach the user as one readable line.

Every failure a user can cause (bad input, a missing store, a wrong password) is an
``NkbError``: its message says what failed and why, and ``hint`` names the command or
option that fixes it. The CLI prints ``Error: <message> (<hint>)`` and exits non-zero; the
traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class NkbError(Exception):
    """Base class of every error neuron-kb reports to its user."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class StoreNotFound(NkbError):
    """No knowledge base exists at the given location."""


class StoreCorrupt(NkbError):
    """The location exists but does not hold a readable knowledge base."""


class SchemaVersionMismatch(NkbError):
    """The knowledge base was written by another schema version."""


class ConnectionFailed(NkbError):
    """A server could not be reached or refused the credentials."""


class QueryError(NkbError):
    """A Cypher query failed: syntax, semantics or a runtime error."""


class ReadOnlyViolation(NkbError):
    """A query that writes was run without ``write=True`` / ``--write``."""


class UnknownQuery(NkbError):
    """No named query has that name."""


class ParameterError(NkbError):
    """A query parameter is missing, unknown or of the wrong type."""


class SchemaError(NkbError):
    """Rows do not fit the graph schema (unknown label, missing key column...)."""


class IngestError(NkbError):
    """An ingest run cannot go on (bad model, corpus, layers or store state)."""


class ConfigError(NkbError):
    """A setting (config file, environment variable, store location) cannot be used."""


class QueryTimeout(QueryError):
    """A query ran longer than its timeout and was cancelled."""
