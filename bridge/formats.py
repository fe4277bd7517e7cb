"""Request bodies for the four scoring formats, and mapping responses back to events.

Pure functions: rows in, JSON-ready body out; response body in, one prediction per row out.
The formats are MLflow's pyfunc scoring protocol, which Databricks Model Serving exposes
for custom models. :func:`read_json` is how events and responses are read: orjson, but
checked against what orjson can write back, and exact for numbers it would round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from bridge.config_route import RequestFormat
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


# --------------------------------------------------------------------------- reading JSON

# orjson reads documents 1,024 levels deep but writes at most 254: whatever the bridge reads
# must fit the writer, or it fails later, at encoding, where no one can reject it cleanly.
MAX_WRITE_DEPTH = 254
# The request body holds a row's values at most 3 levels further down than the row holds
# them (dataframe_split: body > "dataframe_split" > "data" > row > value).
REQUEST_NESTING = 3
MAX_EVENT_DEPTH = MAX_WRITE_DEPTH - REQUEST_NESTING

# orjson reads an integer outside [-2**63, 2**64 - 1] as a float, silently rounded. Such
# a float is at least 2**63 in magnitude, and such a literal has 19 digits or more, then
# what may follow a value (a string's digits are followed by a quote instead).
_ROUNDED = float(2**63)
_INT_RANGE = range(-(2**63), 2**64)
_LONG_INTEGER = b"0" * 19 + b","
# Up to this many values, looking at each is cheaper than scanning the payload's bytes.
_FEW_VALUES = 16
# Digits become "0", openers "[", what may end a value ",", everything else " ": one C
# pass serves both raw tests.
_SHAPE = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x5B if b in b"[{" else 0x2C if b in b",]} \t\n\r" else 0x20
    for b in range(256)
)


class UnwritableJson(ValueError):
    """JSON that orjson reads but cannot write back (nested too deep)."""


def read_json(data: bytes | bytearray, *, max_depth: int = MAX_WRITE_DEPTH) -> Any:
    """Parse ``data`` like :func:`orjson.loads`, with two guarantees orjson lacks.

    Integers are kept exactly: one beyond orjson's 64 bits is read by the standard library
    instead and kept as :class:`orjson.Fragment`, its text, written back unchanged (orjson
    would round it to a float). Decimals are doubles, as in every JSON reader the model
    may use. And a document nested deeper than ``max_depth`` raises
    :class:`UnwritableJson`. Invalid JSON raises :class:`orjson.JSONDecodeError`.

    A small object of scalars, the usual event, costs a look at its values; anything
    else one ``bytes.translate`` of the payload and a search in it (together about
    orjson's own time). The depth probe (one ``orjson.dumps``) and the exact parse run
    only when those point to a need.
    """
    value = orjson.loads(data)
    if type(value) is dict and len(value) <= _FEW_VALUES and _flat_and_exact(value):
        return value
    shape = data.translate(_SHAPE)
    # Each level takes two bytes and one opener: short or shallow documents skip the probe.
    if (
        len(data) > 2 * max_depth
        and shape.count(b"[") > max_depth
        and not writable(value, MAX_WRITE_DEPTH - max_depth)
    ):
        raise UnwritableJson(f"nested deeper than {max_depth} levels")
    if _LONG_INTEGER in shape:
        # orjson has accepted the document (UTF-8, no NaN, depth), so the standard
        # library only has to read the integers differently.
        value = json.loads(data.decode("utf-8"), parse_int=_exact_int)
    return value


def _flat_and_exact(row: dict[str, Any]) -> bool:
    """True when no value is a list or object and no float is a rounded integer."""
    for value in row.values():
        kind = type(value)
        if kind is float:
            if not -_ROUNDED < value < _ROUNDED:
                return False
        elif kind is dict or kind is list:
            return False
    return True


def writable(value: Any, headroom: int = 0) -> bool:
    """Whether orjson can write ``value`` nested ``headroom`` levels down in a document."""
    for _ in range(headroom):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def prediction_problem(prediction: Any) -> str | None:
    """Why ``prediction`` cannot be written into its result message, or None if it can.

    Cheap for the usual scalar: only a list or object is tried. ServingClient already
    rejects responses orjson could not write back, which covers every prediction taken
    from them; this is the check for one prediction, e.g. before building its result.
    """
    if not isinstance(prediction, list | dict):
        return None
    if writable(prediction, headroom=1):  # the result holds it under "prediction"
        return None
    return f"prediction is nested deeper than {MAX_WRITE_DEPTH - 1} levels"


def _exact_int(text: str) -> int | orjson.Fragment:
    # int() only when short enough to be cheap (and allowed: Python caps it at 4,300 digits).
    if len(text) <= 20:
        number = int(text)
        if number in _INT_RANGE:
            return number
    return orjson.Fragment(text)
