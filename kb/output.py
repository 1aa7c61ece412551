"""Rows as text: the three output formats every row-printing command shares.

- ``table``: aligned columns for people; long cells and lists are shortened.
- ``csv``: one header line and one line per row; lists are written as JSON.
- ``json``: a list of objects with full values (null for missing). It is always strict JSON
  (RFC 8259), whatever the engine returned.

Engines hand back different Python values for the same data (numpy scalars and NaN from the
embedded engine, plain Python, ``neo4j.time`` values and None from Bolt); ``plain`` turns
each into one rendering, the same in every format:

=====================================  =====================================================
value                                  rendering
=====================================  =====================================================
null, NaN, pandas NA / NaT             null (empty in table and CSV). The embedded engine
                                       hands a missing float back as NaN, so NaN and null
                                       cannot be told apart and both print as null.
+Infinity, -Infinity                   the strings ``"Infinity"`` and ``"-Infinity"`` in
                                       JSON (it has no such numbers; the proto3 JSON
                                       mapping does the same); ``inf`` / ``-inf`` in table
                                       and CSV.
date                                   ISO 8601 text, ``"2020-01-01"``. The embedded engine
                                       returns a DATE column as a midnight timestamp, which
                                       prints as ``"2020-01-01T00:00:00"``; dates inside
                                       lists and maps stay dates.
timestamp / datetime                   ISO 8601 text, ``"2020-01-01T10:00:00"`` (with its
                                       UTC offset when it has one, nanoseconds when set).
time                                   ISO 8601 text, ``"10:00:00"``.
interval / duration                    ISO 8601 duration text, ``"P367DT3H"``,
                                       ``"-PT1.5S"``; a Neo4j duration keeps its months:
                                       ``"P1M2DT3S"``.
blob / bytes                           base64 text (RFC 4648, with padding).
UUID                                   the canonical 36-character text.
decimal                                its exact decimal text, ``"1.500"``.
list, map                              a JSON array / object of the renderings above.
anything else                          its ``str()`` text.
=====================================  =====================================================
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import io
import json
import math
import uuid
from typing import Any

import numpy as np
import pandas as pd

FORMATS = ("table", "csv", "json")
MAX_CELL = 60  # characters of one table cell before it is shortened


def iso_duration(value: dt.timedelta | pd.Timedelta) -> str:
    """ISO 8601 duration text of a timedelta: days, hours, minutes, seconds (to the nanosecond)."""
    ns = int(value.value) if isinstance(value, pd.Timedelta) else (value // dt.timedelta(microseconds=1)) * 1000
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    days, ns = divmod(ns, 86_400 * 10**9)
    hours, ns = divmod(ns, 3_600 * 10**9)
    minutes, ns = divmod(ns, 60 * 10**9)
    seconds, frac = divmod(ns, 10**9)
    sec = f"{seconds}.{frac:09d}".rstrip("0") if frac else str(seconds)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if frac or seconds:
        time += f"{sec}S"
    text = (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return f"{sign}P{text or 'T0S'}"


def plain(value: Any) -> Any:
    """A JSON-ready Python value (see the module docstring for each type's rendering); floats
    may still be infinite, which only ``to_json`` needs to spell out."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    elif isinstance(value, np.timedelta64):
        value = pd.Timedelta(value)
    elif isinstance(value, np.generic):
        value = value.item()
    if value is pd.NaT:
        return None
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (dt.date, dt.time)):  # datetime and pd.Timestamp are dates too
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    if hasattr(value, "iso_format"):  # neo4j.time.Duration (months, days, seconds, nanoseconds)
        return value.iso_format()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(c): plain(v) for c, v in zip(df.columns, row)} for row in df.itertuples(index=False, name=None)]


def _text(value: Any) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, dict)):
        return json.dumps(_rounded(value), ensure_ascii=False)
    return str(value)


def _rounded(value: Any) -> Any:
    # For the eye only: float32 activations otherwise print as 2.28629994392395.
    if isinstance(value, float):
        return float(format(value, ".6g"))
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _shorten(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def to_table(df: pd.DataFrame, max_cell: int = MAX_CELL) -> str:
    if len(df.columns) == 0:
        return "(no rows)"
    rows = records(df)
    header = [str(c) for c in df.columns]
    cells = [[_shorten(_text(r[c]), max_cell) for c in header] for r in rows]
    # Numbers line up on the right, everything else on the left.
    numeric = [all((isinstance(r[c], (int, float)) and not isinstance(r[c], bool)) or r[c] is None for r in rows)
               for c in header]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    lines = [line(header), line(["-" * w for w in widths])] + [line(row) for row in cells]
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines)


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([str(c) for c in df.columns])
    for r in records(df):
        writer.writerow([_csv_cell(v) for v in r.values()])
    return buf.getvalue().rstrip("\n")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # full precision for floats: repr round-trips


def to_json(obj: pd.DataFrame | Any) -> str:
    """A frame as a list of objects; a dict of frames (and other values) as an object. Always
    strict JSON: infinities are spelled out as strings (see the module docstring)."""
    return json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, pd.DataFrame):
        return _finite(records(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return _finite(plain(obj))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "table":
        return to_table(df)
    if fmt == "csv":
        return to_csv(df)
    if fmt == "json":
        return to_json(df)
    raise ValueError(f"unknown format {fmt!r}")
