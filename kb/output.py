"""Rows as text: the three output formats every row-printing command shares.

- ``table``: aligned columns for people; long cells and lists are shortened.
- ``csv``: one header line and one line per row; lists are written as JSON.
- ``json``: a list of objects with full values (null for missing).

Engines hand back slightly different Python values for the same data (numpy scalars and
NaN from the embedded engine, plain Python and None from Bolt); ``plain`` evens them out
so that each format prints the same thing whatever the engine.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd

FORMATS = ("table", "csv", "json")
MAX_CELL = 60  # characters of one table cell before it is shortened


def plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars and arrays unwrapped, NaN and NA as None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


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
    """A frame as a list of objects; a dict of frames (and other values) as an object."""
    return json.dumps(_jsonable(obj), indent=2, ensure_ascii=False)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, pd.DataFrame):
        return records(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return plain(obj)


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "table":
        return to_table(df)
    if fmt == "csv":
        return to_csv(df)
    if fmt == "json":
        return to_json(df)
    raise ValueError(f"unknown format {fmt!r}")
