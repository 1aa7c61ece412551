"""Named queries: the questions researchers ask every day, kept as data.

Each question is one file in the ``queries`` package, ``queries/<name>.cypher``, in the
Cypher subset that LadybugDB, FalkorDB and Neo4j 5 all run unchanged. The file opens with
a comment block: what it answers, then one ``@param`` line per parameter::

    // Neurons that most promote a token.
    // @param token     the token text, e.g. " dog" (required)
    // @param model     restrict to one model (default: null = all models)
    // @param limit     rows to return (default: 20)
    // @param min_score lowest score to keep (float, default: null = no bound)

A placeholder can also be computed from a parameter, on a line of its own::

    // @derived term  key_term(phrase): the phrase's longest run of letters and digits

``bind`` fills it in with that function of ``DERIVED`` (outside nkb, pass it yourself); it is
not a parameter the caller gives.

The parameters themselves are derived from the ``$name`` placeholders in the query body,
as datasette does for canned queries; the header documents them and gives defaults. The
closing parenthesis of a ``@param`` line says ``required`` or ``default: <literal>``
(``null``, ``true``/``false``, a number or a quoted string; anything after `` = `` is a
note for the reader), optionally preceded by a type (``int``, ``float``, ``bool``,
``string``) for a parameter whose default is null. ``NamedQuery.problems()`` reports a
placeholder without a header line or a header line without a placeholder; a test keeps the
packaged files free of both.

Values always travel as Cypher parameters. The one thing ever written into a query's text
is the literal ``null`` for a parameter bound to null (see ``with_nulls`` for why).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import pandas as pd

from kb import cypher, terms
from kb.errors import ParameterError, UnknownQuery
from kb.stores.base import Store


class _Required:
    """Marks a parameter the caller must give (there is no default)."""

    _instance: "_Required | None" = None

    def __new__(cls) -> "_Required":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# The types a parameter can be declared with, and the Python type a value is coerced to.
TYPES: dict[str, type] = {"string": str, "int": int, "float": float, "bool": bool}
_TYPE_NAMES = {v: k for k, v in TYPES.items()}

_PARAM_LINE = re.compile(r"^@param\s+([A-Za-z_][A-Za-z0-9_]*)\s*(.*)$")
_DERIVED_LINE = re.compile(r"^@derived\s+([A-Za-z_]\w*)\s+([A-Za-z_]\w*)\(\s*([A-Za-z_]\w*)\s*\)\s*:?\s*(.*)$")

# The functions a @derived line can name: one parameter's value in, the placeholder's out
# (None stays None).
DERIVED: dict[str, Callable[[Any], Any]] = {"key_term": terms.key_term}
# The trailing "(...)" of a @param line: "(required)", "(default: 20)", "(float, default: null = any)".
_PARAM_SPEC = re.compile(
    r"\((?:(?P<type>string|int|float|bool)\s*,\s*)?(?:(?P<required>required)|default:\s*(?P<default>.*?))\)\s*$",
    re.IGNORECASE,
)


def placeholders(text: str) -> list[str]:
    """The ``$name`` parameters a Cypher text uses, in order of first use (a ``$x`` inside a
    string or a comment is not one)."""
    return cypher.placeholders(text)


def _parse_literal(text: str) -> Any:
    """A default as written in a header: null, true/false, a number or a quoted string."""
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end > 0:
            return text[1:end]
    text = text.split(" = ", 1)[0].strip()  # "null = all models": the rest is a note
    if text.lower() in ("null", "none"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    return text


@dataclass(frozen=True)
class NamedQuery:
    """One question: a Cypher text and the parameters it takes."""

    name: str
    description: str
    #: parameter name -> default value, or REQUIRED; in the header's order.
    params: dict[str, Any]
    text: str
    #: parameter name -> the help text from its @param line.
    param_docs: dict[str, str] = field(default_factory=dict)
    #: parameter name -> declared type name (string/int/float/bool), or derived from the default.
    param_types: dict[str, str] = field(default_factory=dict)
    #: @param lines naming no placeholder of the text (see problems()).
    stray_docs: tuple[str, ...] = ()
    #: placeholder -> (function in DERIVED, parameter it is computed from), from @derived lines.
    derived: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: placeholder -> the help text of its @derived line.
    derived_docs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, source: str) -> "NamedQuery":
        header: list[str] = []
        for line in source.splitlines():
            stripped = line.strip()
            if not stripped:
                if header:
                    break
                continue
            if not stripped.startswith("//"):
                break
            header.append(stripped[2:].strip())
        description_lines, docs, defaults, types = [], {}, {}, {}
        derived, derived_docs = {}, {}
        for line in header:
            d = _DERIVED_LINE.match(line)
            if d:
                derived[d.group(1)] = (d.group(2), d.group(3))
                derived_docs[d.group(1)] = d.group(4).strip()
                continue
            m = _PARAM_LINE.match(line)
            if not m:
                if not docs and not derived:  # description lines come before the first @param
                    description_lines.append(line)
                continue
            pname, rest = m.group(1), m.group(2)
            spec = _PARAM_SPEC.search(rest)
            if spec:
                docs[pname] = rest[: spec.start()].strip()
                if spec.group("required"):
                    defaults[pname] = REQUIRED
                else:
                    defaults[pname] = _parse_literal(spec.group("default"))
                declared = spec.group("type")
                if declared:
                    types[pname] = declared.lower()
                elif defaults[pname] is not REQUIRED and defaults[pname] is not None:
                    types[pname] = _TYPE_NAMES[type(defaults[pname])]
            else:
                # A @param line without "(required)" / "(default: ...)" documents a required one.
                docs[pname] = rest.strip()
                defaults[pname] = REQUIRED
        # In the header's order (how the author explains them), then any undocumented ones.
        found = [p for p in placeholders(source) if p not in derived]
        used = [p for p in docs if p in found] + [p for p in found if p not in docs]
        params = {p: defaults.get(p, REQUIRED) for p in used}
        return cls(
            name=name,
            description=" ".join(description_lines),
            params=params,
            text=source,
            param_docs={p: docs[p] for p in used if p in docs},
            param_types={p: types.get(p, "string") for p in used},
            stray_docs=tuple(p for p in docs if p not in params),
            derived=derived,
            derived_docs=derived_docs,
        )

    def problems(self) -> list[str]:
        """What is wrong with the header: undocumented placeholders, documented non-parameters."""
        out = [f"{self.name}: ${p} is used but has no @param line" for p in self.params if p not in self.param_docs]
        out += [f"{self.name}: @param {p} documents no $placeholder of the query" for p in self.stray_docs]
        used = set(placeholders(self.text))
        for d, (function, source) in self.derived.items():
            if function not in DERIVED:
                out.append(f"{self.name}: @derived {d} names no function of kb.queries.DERIVED: {function}")
            if source not in self.params:
                out.append(f"{self.name}: @derived {d} is computed from {source}, which is not a parameter")
            if d not in used:
                out.append(f"{self.name}: @derived {d} names no $placeholder of the query")
        if not self.description:
            out.append(f"{self.name}: no description comment at the top of the file")
        return out

    def signature(self) -> str:
        """The parameters in one line, e.g. ``token (required), model=null, limit=20``."""
        parts = []
        for p, default in self.params.items():
            if default is REQUIRED:
                parts.append(f"{p} (required)")
            else:
                parts.append(f"{p}={json.dumps(default)}")
        return ", ".join(parts) or "no parameters"

    def bind(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The full parameter dict for a run: defaults merged in, values coerced to their types.

        Strings (as they come from the command line) are converted to the parameter's type;
        other values must already be of that type (an int is accepted for a float). The
        placeholders of @derived lines are computed last, from the bound values.
        """
        given = dict(given or {})
        unknown = [p for p in given if p not in self.params]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.params), n=1)
            raise ParameterError(
                f"query {self.name} has no parameter {unknown[0]!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"its parameters: {self.signature()}",
            )
        out: dict[str, Any] = {}
        for p, default in self.params.items():
            if p in given:
                out[p] = self._coerce(p, given[p])
            elif default is REQUIRED:
                raise ParameterError(
                    f"query {self.name} needs parameter {p!r}"
                    + (f": {self.param_docs[p]}" if self.param_docs.get(p) else ""),
                    f"its parameters: {self.signature()}",
                )
            else:
                out[p] = default
        for d, (function, source) in self.derived.items():
            out[d] = DERIVED[function](out[source])
        return out

    def _coerce(self, p: str, value: Any) -> Any:
        type_name = self.param_types.get(p, "string")
        # Null is a value only where it is the default ("null = all models"); elsewhere it
        # would reach the engine as, say, LIMIT null.
        optional = self.params[p] is None
        try:
            return coerce(value, type_name, optional=optional)
        except ValueError as e:
            raise ParameterError(
                f"parameter {p!r} of query {self.name}: {e}",
                f"its parameters: {self.signature()}",
            ) from None


_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def coerce(value: Any, type_name: str, *, optional: bool = True) -> Any:
    """Convert ``value`` to the parameter type ``type_name``; ValueError says why not.

    A string is parsed (the command line gives only strings); for an int, float or bool
    parameter whose default is null, the strings "null" and "" mean null. A string parameter takes any text
    verbatim, so a token such as "null" or "42" can be asked about.
    """
    if value is None:
        if optional:
            return None
        raise ValueError("expected a value, got null")
    if type_name == "string":
        if isinstance(value, str):
            return value
        raise ValueError(f"expected text, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("null", "none", ""):
            return None
        if type_name == "int":
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if type_name == "float":
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if type_name == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"expected true or false, got {value!r}")
    # Values from Python callers: bool is an int subclass, so check it first.
    if type_name == "bool" and isinstance(value, bool):
        return value
    if type_name == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if type_name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    expected = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(type_name, type_name)
    raise ValueError(f"expected {expected}, got {value!r}")


def parse_value(text: str) -> Any:
    """A command-line value for ad-hoc Cypher, which declares no types: JSON if it parses
    (numbers, true/false/null, "quoted text", lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- the packaged library -----------------------------------------------------------------

def _query_files() -> Iterable[Traversable]:
    return list(resources.files("queries").iterdir())


@lru_cache(maxsize=1)
def _library() -> dict[str, NamedQuery]:
    out = {}
    for entry in sorted(_query_files(), key=lambda e: e.name):
        if entry.name.endswith(".cypher"):
            name = entry.name[: -len(".cypher")]
            out[name] = NamedQuery.parse(name, entry.read_text(encoding="utf-8"))
    return out


def all_queries() -> list[NamedQuery]:
    """Every named query, sorted by name."""
    return list(_library().values())


def get(name: str) -> NamedQuery:
    library = _library()
    if name in library:
        return library[name]
    close = _close_names(name, list(library))
    suggestion = ""
    if len(close) == 1:
        suggestion = f"; did you mean {close[0]}?"
    elif close:
        suggestion = f"; did you mean one of {', '.join(close)}?"
    raise UnknownQuery(
        f"no named query {name!r}{suggestion}",
        "`nkb queries` lists them",
    )


def _close_names(name: str, names: list[str]) -> list[str]:
    """Names like ``name``: the best match and any nearly as good (at most three)."""
    scored = sorted(((difflib.SequenceMatcher(None, name, n).ratio(), n) for n in names), reverse=True)
    if not scored or scored[0][0] < 0.5:
        return []
    return [n for r, n in scored[:3] if r >= max(0.5, scored[0][0] - 0.15)]


def run(store: Store, name: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> pd.DataFrame:
    """Run the named query ``name`` on ``store`` with ``params`` (defaults filled in).

    Named queries only read: they run in the store's read-only mode whatever it was
    opened with. A parameter bound to null is written into the text as the literal
    ``null`` (see ``with_nulls``); every other value travels as a parameter. ``timeout``
    is as for ``Store.cypher``.
    """
    query = get(name)
    bound = query.bind(params)  # refuse bad parameters before touching the store
    nulls = frozenset(k for k, v in bound.items() if v is None)
    return store.cypher(with_nulls(query.text, nulls), {k: v for k, v in bound.items() if k not in nulls},
                        timeout=timeout)


@lru_cache(maxsize=1024)
def with_nulls(text: str, nulls: frozenset[str]) -> str:
    """``text`` with the placeholders named in ``nulls`` replaced by the literal ``null``.

    LadybugDB cannot cache the plan of a query whose parameter is null (the value has no
    type), so it plans it again on every run: 100 ms and more for a multi-hop pattern, and
    "null = no filter" is the default of most optional parameters. Written as a literal,
    the null lets every engine fold the filter away and cache one plan per combination of
    null parameters. Only the null literal is ever written into the text, never a value.
    """
    if not nulls:
        return text
    return cypher.replace_placeholders(text, lambda name: "null" if name in nulls else None)


# -- composite views built from several named queries --------------------------------------

def store_stats(store: Store) -> pd.DataFrame:
    """Nodes per label, relationships per type and neurons per model: (kind, name, count) rows."""
    from kb import schema

    kinds = {**{n.label: "node" for n in schema.NODES}, **{r.type: "relationship" for r in schema.RELS}}
    rows = [(kinds.get(k, "node"), k, int(v)) for k, v in store.counts().items()]
    models = run(store, "models")
    rows += [("model", str(m), int(n)) for m, n in zip(models["model"], models["neurons"])]
    return pd.DataFrame(rows, columns=["kind", "name", "count"])


def model_ids(store: Store) -> list[str]:
    """The models in the store, by id (the Model nodes alone: no neuron count, so it stays cheap)."""
    return [str(m) for m in store.cypher("MATCH (m:Model) RETURN m.id AS model ORDER BY model")["model"]]
