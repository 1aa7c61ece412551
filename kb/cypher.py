"""Cypher text, read the way every engine reads it: one tokenizer, and what is built on it.

Both stores, the named-query library and the lint test use these helpers, so that "a
placeholder", "a comment" and "a write" mean the same thing everywhere:

- ``quote`` writes an identifier in backticks (several of our property names, such as
  ``rank``, ``max`` and ``index``, are Cypher words somewhere);
- ``tokens`` splits a text into words, parameters, strings, comments and symbols;
  ``strip`` blanks the strings, quoted names and comments; ``placeholders`` lists the
  ``$name`` parameters; ``replace_placeholders`` rewrites them (the one rewrite we make);
- ``write_clause`` / ``check_read_only``: the write guard. It judges statements, not words:
  a write keyword used as a property (``n.load``), a parameter (``$create``), an alias
  (``AS set``), a label or type (``:Merge``) or a map key (``{delete: 1}``) writes nothing.
  Any other use of the keyword is refused, and so is every procedure call that is not on
  ``READ_ONLY_PROCEDURES``;
- ``check_text``: bounds on the work one text can cause (length, bracket nesting,
  operators), each measured on LadybugDB, whose parser slows down faster than linearly;
- ``check_params``: every placeholder has a value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kb.errors import ParameterError, QueryError, ReadOnlyViolation

#: Longest Cypher text accepted, in characters. Values belong in parameters, so a longer
#: text is a mistake (or an attack); a 10,000-item list literal (50 KB) parses in about 1 s.
MAX_CHARS = 100_000
#: Deepest nesting of (), [] and {}. LadybugDB's parser slows down steeply with depth
#: (measured on 2 busy cores: lists 32 deep 0.08 s, 50 deep 0.6 s, 100 deep 2.9 s; the fuzz
#: campaign's 20,000 levels ran past 60 s and 2.9 GB). Our named queries nest 4 deep.
MAX_DEPTH = 32
#: Most operators (+, AND, =, IN...) in one text. A chain of binary operators nests as deep
#: as it is long in the parser: 1,000 terms of 1+1+... take 0.5 s, 2,000 take 2.5 s, and
#: the fuzz campaign's 30,000 ran past 60 s. Our named queries use fewer than 60.
MAX_OPERATORS = 1_000
#: Seconds a query may run from the command line before it is cancelled (``--timeout``).
DEFAULT_TIMEOUT_S = 60.0

#: Keywords that start a clause (or command) that changes a graph or the session, in any of
#: the engines we speak: Neo4j, LadybugDB, and FalkorDB (the test server). BEGIN, COMMIT and
#: ROLLBACK are here because a read runs inside a read-only transaction it must not leave.
WRITE_KEYWORDS = frozenset({
    "CREATE", "MERGE", "SET", "DELETE", "DETACH", "REMOVE", "DROP", "ALTER", "COPY", "LOAD",
    "INSTALL", "ATTACH", "IMPORT", "EXPORT", "FOREACH", "CHECKPOINT", "BEGIN", "COMMIT", "ROLLBACK",
    "GRANT", "DENY", "REVOKE", "RENAME",
})

#: Procedures a read-only query may CALL (lower case): schema look-ups that change nothing.
#: Any other ``CALL name`` is refused without --write: procedures can write data or create
#: indexes (FalkorDB's db.idx.fulltext.createNodeIndex did, from a read-only store), and
#: LadybugDB's ``CALL threads=4`` changes the session.
READ_ONLY_PROCEDURES = frozenset({
    # Neo4j 5 (and FalkorDB for the db.* look-ups)
    "db.labels", "db.relationshiptypes", "db.propertykeys", "db.info", "dbms.components",
    "db.schema.visualization", "db.schema.nodetypeproperties", "db.schema.reltypeproperties",
    # LadybugDB
    "show_tables", "table_info", "show_connection", "db_version", "show_functions",
    "show_indexes", "show_warnings", "current_setting",
})

OPERATOR_WORDS = frozenset({"AND", "OR", "XOR", "NOT", "IN", "IS", "STARTS", "ENDS", "CONTAINS"})

_TOKEN = re.compile(r"""
   (?P<space>\s+)
  |(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
  |(?P<string>'(?:[^'\\]|\\.)*(?:'|\Z)|"(?:[^"\\]|\\.)*(?:"|\Z))
  |(?P<name>`(?:[^`]|``)*(?:`|\Z))
  |(?P<param>\$(?:[^\W\d]\w*|`(?:[^`]|``)*`|\d+))
  |(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  |(?P<word>[^\W\d]\w*)
  |(?P<op><>|<=|>=|=~|\+=|!=|[-+*/%^=<>])
  |(?P<open>[(\[{])
  |(?P<close>[)\]}])
  |(?P<other>.)
""", re.VERBOSE | re.DOTALL)

# Tokens that carry no code: what "strip" blanks.
_INERT = frozenset({"space", "comment", "string", "name"})


@dataclass(frozen=True)
class Token:
    kind: str  # space, comment, string, name (`quoted`), param, number, word, op, open, close, other
    text: str
    start: int

    @property
    def upper(self) -> str:
        return self.text.upper()


def quote(name: str) -> str:
    """``name`` as a quoted identifier, safe whatever it holds."""
    return "`" + name.replace("`", "``") + "`"


def tokens(text: str) -> Iterator[Token]:
    """Every token of ``text``, in order; joined back together they give ``text`` again."""
    for m in _TOKEN.finditer(text):
        yield Token(m.lastgroup or "other", m.group(), m.start())


def strip(text: str) -> str:
    """``text`` with strings, quoted names and comments blanked (same length, same lines)."""
    return "".join(re.sub(r"\S", " ", t.text) if t.kind in _INERT else t.text for t in tokens(text))


def _param_name(token: Token) -> str:
    name = token.text[1:]
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def placeholders(text: str) -> list[str]:
    """The ``$name`` parameters ``text`` uses, in order of first use (not those in strings or comments)."""
    return list(_placeholders(text))


# The checks below read every token of a query: measured on the demo KB, reading them on
# every run made neuron_card take 5.6 ms where the engine answers in 0.2 ms (2.9 ms with
# the cache). A session runs the same few texts again and again, so each text is read
# once; the cache holds at most _CACHED texts.
_CACHED = 256


@lru_cache(maxsize=_CACHED)
def _placeholders(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_param_name(t) for t in tokens(text) if t.kind == "param"))


def replace_placeholders(text: str, replace: Callable[[str], str | None]) -> str:
    """``text`` with each placeholder for which ``replace(name)`` gives text replaced by it."""
    out = []
    for t in tokens(text):
        new = replace(_param_name(t)) if t.kind == "param" else None
        out.append(t.text if new is None else new)
    return "".join(out)


def _code(text: str) -> list[Token]:
    return [t for t in tokens(text) if t.kind not in ("space", "comment")]


@lru_cache(maxsize=_CACHED)
def write_clause(text: str) -> str | None:
    """What in ``text`` writes (``"CREATE"``, ``"CALL db.idx.create"``...), or None for a read.

    A write keyword counts unless it is a property (``n.set``), an alias (``AS load``), a
    label or type (``:Create``) or a map key (``{merge: 1}``); parameters (``$delete``),
    strings, quoted names and comments are not words at all. A ``CALL`` of a procedure
    not on READ_ONLY_PROCEDURES counts; ``CALL {`` (a subquery) does not, its clauses are
    judged like the rest.
    """
    code = _code(text)
    for i, t in enumerate(code):
        word = t.upper if t.kind == "word" else ""
        if (word not in WRITE_KEYWORDS and word != "CALL") or _is_a_name(code, i):
            continue
        if word != "CALL":
            return word
        procedure = _procedure(code, i + 1)
        if procedure is not None and procedure.lower() not in READ_ONLY_PROCEDURES:
            return f"CALL {procedure}"
    return None


def _is_a_name(code: list[Token], i: int) -> bool:
    """Is the word ``code[i]`` a name here rather than a keyword?"""
    if not i:
        return False
    before, t = code[i - 1], code[i]
    after = code[i + 1] if i + 1 < len(code) else None
    if before.text == "." and before.start + 1 == t.start:
        return True  # a property: n.load
    if before.text == ":":
        return True  # a label or relationship type: (n:Create), [:SET]
    if before.kind == "word" and before.upper == "AS":
        return True  # an alias: RETURN n.id AS load
    # a map key: {delete: 1}
    return before.text in ("{", ",") and after is not None and after.text == ":"


def _procedure(code: list[Token], i: int) -> str | None:
    """The procedure name a CALL at ``code[i-1]`` calls; None for a subquery (``CALL {``, ``CALL (x) {``)."""
    if i >= len(code) or code[i].text in ("{", "("):
        return None
    parts = []
    while i < len(code) and code[i].kind in ("word", "name"):
        part = code[i].text
        parts.append(part[1:-1].replace("``", "`") if code[i].kind == "name" else part)
        if i + 1 < len(code) and code[i + 1].text == ".":
            i += 2
            continue
        break
    # Anything that is not a plain dotted name (say, CALL threads=4) is refused by name "?".
    return ".".join(parts) or "?"


def check_read_only(text: str) -> None:
    clause = write_clause(text)
    if clause:
        what = "calls a procedure that is not known to be read-only" if clause.startswith("CALL ") else "writes"
        raise ReadOnlyViolation(
            f"the query {what} ({clause}) but it runs read-only",
            "pass write=True, or --write on the command line, if you mean to change the store",
        )


def check_text(text: str) -> None:
    """Refuse text that is not UTF-8, or would cost the parser more than any real query does."""
    if not isinstance(text, str):
        raise QueryError(f"the Cypher text must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        what = f"the byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"the lone surrogate U+{ord(bad):04X}"
        raise QueryError(f"the Cypher text is not valid UTF-8: {what} at character {e.start + 1}",
                         "save the query as UTF-8 text") from None
    if len(text) > MAX_CHARS:
        raise QueryError(f"the Cypher text is {len(text):,} characters long; the limit is {MAX_CHARS:,}",
                         "pass values as parameters (-p NAME=VALUE, or params=) instead of writing them into the text")
    deepest, operators = _shape(text)
    if deepest > MAX_DEPTH:
        raise QueryError(f"the Cypher text nests brackets {deepest} levels deep; the limit is {MAX_DEPTH}",
                         "flatten the expression, or compute the value in Python and pass it as a parameter")
    if operators > MAX_OPERATORS:
        raise QueryError(f"the Cypher text has {operators:,} operators; the limit is {MAX_OPERATORS:,}",
                         "split the expression, or compute the value in Python and pass it as a parameter")


@lru_cache(maxsize=_CACHED)
def _shape(text: str) -> tuple[int, int]:
    """How deep ``text`` nests brackets, and how many operators it has."""
    depth = deepest = operators = 0
    for t in tokens(text):
        if t.kind == "open":
            depth += 1
            deepest = max(deepest, depth)
        elif t.kind == "close":
            depth = max(depth - 1, 0)
        elif t.kind == "op" or (t.kind == "word" and t.upper in OPERATOR_WORDS):
            operators += 1
    return deepest, operators


def check_params(text: str, params: Mapping[str, Any]) -> None:
    """Refuse a query whose ``$name`` placeholders are not all given: engines differ (LadybugDB
    binds a missing one as NULL, which turns a typo into an empty answer), so refuse on all."""
    missing = [p for p in _placeholders(text) if p not in params]
    if missing:
        raise ParameterError(f"the query needs parameter ${missing[0]}",
                             f"pass it as params={{{missing[0]!r}: ...}}, or -p {missing[0]}=VALUE on the command line")


def check_timeout(timeout: float | None) -> float | None:
    """A query timeout in seconds: None or 0 for none, else a positive finite number."""
    if timeout is None or timeout == 0:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 10**9:
        raise ParameterError(f"the query timeout must be a positive number of seconds, not {timeout!r}",
                             "pass --timeout SECONDS (0 for none), or timeout=SECONDS")
    return float(timeout)
