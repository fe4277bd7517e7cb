"""The emulator's deterministic model: request bodies to rows, rows to scores.

Tests recompute every prediction from the formula below, so it must stay stable:

    weight(name) = ((crc32(utf8(name)) mod 2001) - 1000) / 1000      # in [-1, 1]
    z            = BIAS + sum(weight(name) * value)                   # numeric fields only
    score(row)   = round(1 / (1 + exp(-z)), 6)

A numeric field is an ``int`` or ``float`` (``bool`` excluded) with a finite value;
every other field is ignored, so any row object scores.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping

BIAS = -0.25
INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# MLflow's wording, byte for byte up to the received keys, so clients can match on it.
_INPUT_KEYS_MESSAGE = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'instances', 'inputs', 'dataframe_records'}. "
    "Received dictionary with input fields: %s."
)

Row = dict[str, object]


def weight(name: str) -> float:
    """The model weight of field ``name``, in [-1, 1]."""
    return ((zlib.crc32(name.encode("utf-8")) % 2001) - 1000) / 1000


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range carries no usable signal
        return None
    return number if math.isfinite(number) else None


def _sigmoid(z: float) -> float:
    if math.isnan(z):  # +inf and -inf contributions cancelled out
        return 0.5
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    # Split so exp() never overflows for very negative z.
    e = math.exp(z)
    return e / (1.0 + e)


def score(row: Mapping[str, object]) -> float:
    """Logistic score of ``row`` over its numeric fields, rounded to 6 decimals."""
    z = BIAS
    for name, value in row.items():
        number = _numeric(value)
        if number is not None:
            z += weight(name) * number
    return round(_sigmoid(z), 6)


def input_key(body: Mapping[str, object]) -> str:
    """The one input-format key of ``body``; ValueError unless it has exactly one.

    Besides the input key only ``params`` and ``client_request_id`` (a string Databricks
    records in inference tables) are allowed: the emulator is stricter than MLflow here so
    that a client sending stray keys is caught in tests.
    """
    keys = [key for key in INPUT_KEYS if key in body]
    extra = set(body) - set(INPUT_KEYS) - {"params", "client_request_id"}
    if len(keys) != 1 or extra:
        raise ValueError(_INPUT_KEYS_MESSAGE % sorted(body))
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise ValueError("'params' must be a JSON object.")
    if not isinstance(body.get("client_request_id", ""), str):
        raise ValueError("'client_request_id' must be a string.")
    return keys[0]


def _row_object(value: object, where: str) -> Row:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}.")
    return {str(key): item for key, item in value.items()}


def _positional_row(values: list[object], columns: list[str] | None = None) -> Row:
    names = columns if columns is not None else [f"c{i}" for i in range(len(values))]
    return dict(zip(names, values, strict=True))


def _instance_row(value: object, where: str) -> Row:
    """A tensor-style row: an object as is, a list as columns c0.., a scalar as x."""
    if isinstance(value, dict):
        return _row_object(value, where)
    if isinstance(value, list):
        return _positional_row(value)
    return {"x": value}


def _records(payload: object) -> list[Row]:
    if not isinstance(payload, list):
        raise ValueError("'dataframe_records' must be a list of row objects.")
    return [_row_object(item, f"dataframe_records[{i}]") for i, item in enumerate(payload)]


def _split_columns(split: dict[str, object]) -> list[str] | None:
    columns = split.get("columns")
    if columns is None:
        return None
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ValueError("'dataframe_split.columns' must be a list of strings.")
    return [str(c) for c in columns]


def _split(payload: object) -> list[Row]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("'dataframe_split' must be an object with a 'data' list.")
    columns = _split_columns(payload)
    data: list[object] = payload["data"]
    index = payload.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise ValueError("'dataframe_split.index' must be a list as long as 'data'.")
    rows = []
    for i, values in enumerate(data):
        if not isinstance(values, list) or (columns is not None and len(values) != len(columns)):
            raise ValueError(f"'dataframe_split.data[{i}]' must be a list, one value per column.")
        rows.append(_positional_row(values, columns))
    return rows


def _instances(payload: object) -> list[Row]:
    if not isinstance(payload, list):
        raise ValueError("'instances' must be a list.")
    return [_instance_row(item, f"instances[{i}]") for i, item in enumerate(payload)]


def _inputs(payload: object) -> list[Row]:
    if isinstance(payload, list):
        return [_instance_row(item, f"inputs[{i}]") for i, item in enumerate(payload)]
    if not isinstance(payload, dict):
        raise ValueError("'inputs' must be a list of rows or an object of columns.")
    columns = list(payload.values())
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) > 1:
        raise ValueError("Columnar 'inputs' must map every column to a list of equal length.")
    names = [str(name) for name in payload]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _parsers() -> Mapping[str, Callable[[object], list[Row]]]:
    return {
        "dataframe_records": _records,
        "dataframe_split": _split,
        "instances": _instances,
        "inputs": _inputs,
    }


def rows_from_body(body: Mapping[str, object]) -> list[Row]:
    """The rows of a scoring request body, in request order; ValueError if malformed."""
    key = input_key(body)
    return _parsers()[key](body[key])
