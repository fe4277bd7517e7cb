"""Request bodies for the four scoring formats, and mapping responses back to events.

Pure functions: rows in, JSON-ready body out; response body in, one prediction per row out.
The formats are MLflow's pyfunc scoring protocol, which Databricks Model Serving exposes
for custom models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bridge.config import RequestFormat
from bridge.errors import ResponseShapeError

Row = Mapping[str, Any]


def build_body(
    rows: Sequence[Row], fmt: RequestFormat, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build the invocation body for ``rows`` in ``fmt``."""
    body: dict[str, Any]
    if fmt == "dataframe_records":
        body = {"dataframe_records": list(rows)}
    elif fmt == "instances":
        body = {"instances": list(rows)}
    elif fmt == "dataframe_split":
        columns = _columns(rows)
        body = {
            "dataframe_split": {
                "columns": columns,
                "data": [[row.get(c) for c in columns] for row in rows],
            }
        }
    elif fmt == "inputs":
        columns = _columns(rows)
        body = {"inputs": {c: [row.get(c) for row in rows] for c in columns}}
    else:  # pragma: no cover - config validation rejects other values
        raise ValueError(f"unknown request format {fmt!r}")
    if params:
        body["params"] = dict(params)
    return body


def _columns(rows: Sequence[Row]) -> list[str]:
    """Union of the rows' keys, in first-seen order (a missing value is sent as null)."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def predictions_of(body: object, expected: int) -> list[Any]:
    """Extract exactly ``expected`` predictions from a response body, in request order.

    Accepts ``{"predictions": [...]}`` (custom models), ``{"outputs": [...]}`` (feature and
    some pyfunc models) and, for a columnar answer, ``{"predictions": {"col": [...], ...}}``
    which is turned into one object per row. Anything else, or a length mismatch, raises
    :class:`ResponseShapeError`: a misaligned result would be worse than none.
    """
    if not isinstance(body, Mapping):
        raise ResponseShapeError(f"response is not a JSON object but {type(body).__name__}")
    for key in ("predictions", "outputs"):
        if key in body:
            values = body[key]
            break
    else:
        raise ResponseShapeError(
            f"response has no 'predictions' or 'outputs' (keys: {sorted(body)[:5]})"
        )
    if isinstance(values, Mapping):
        values = _rows_from_columns(values)
    if not isinstance(values, list):
        raise ResponseShapeError(f"'{key}' is not a list but {type(values).__name__}")
    if len(values) != expected:
        raise ResponseShapeError(f"'{key}' has {len(values)} entries for {expected} events")
    return values


def _rows_from_columns(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    lengths = {len(v) for v in columns.values() if isinstance(v, list)}
    if len(lengths) != 1 or len(columns) != sum(isinstance(v, list) for v in columns.values()):
        raise ResponseShapeError("columnar predictions have columns of different lengths")
    (n,) = lengths
    return [{name: col[i] for name, col in columns.items()} for i in range(n)]
