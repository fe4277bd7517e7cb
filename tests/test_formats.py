"""Request bodies in the four scoring formats, and predictions mapped back to rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from bridge.config_route import RequestFormat
from bridge.errors import EndpointError, ResponseShapeError
from bridge.formats import build_body, predictions_of

# The second row lacks "country" and adds "flag": the columnar formats must take the union.
ROWS: list[dict[str, Any]] = [
    {"amount": 12.5, "age": 3, "country": "NL"},
    {"age": 0.5, "amount": -4, "flag": True},
]


# --------------------------------------------------------------------------- build_body


def test_dataframe_records_sends_rows_as_they_are() -> None:
    body = build_body(ROWS, "dataframe_records")

    assert body == {"dataframe_records": ROWS}


def test_instances_sends_rows_as_they_are() -> None:
    body = build_body(ROWS, "instances")

    assert body == {"instances": ROWS}


def test_dataframe_split_uses_union_of_columns_in_first_seen_order_with_nulls() -> None:
    body = build_body(ROWS, "dataframe_split")

    assert body == {
        "dataframe_split": {
            "columns": ["amount", "age", "country", "flag"],
            "data": [
                [12.5, 3, "NL", None],
                [-4, 0.5, None, True],
            ],
        }
    }


def test_inputs_is_columnar_with_union_of_columns_and_nulls() -> None:
    body = build_body(ROWS, "inputs")

    assert body == {
        "inputs": {
            "amount": [12.5, -4],
            "age": [3, 0.5],
            "country": ["NL", None],
            "flag": [None, True],
        }
    }
    assert list(body["inputs"]) == ["amount", "age", "country", "flag"]


FORMATS: list[RequestFormat] = ["dataframe_records", "dataframe_split", "instances", "inputs"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_params_are_added_in_every_format(fmt: RequestFormat) -> None:
    params = {"threshold": 0.5, "mode": "strict"}

    body = build_body(ROWS, fmt, params)

    assert body["params"] == params
    assert body["params"] is not params  # a copy: the route's settings cannot be mutated
    assert set(body) == {fmt, "params"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_params_key_without_params(fmt: RequestFormat) -> None:
    assert "params" not in build_body(ROWS, fmt)
    assert "params" not in build_body(ROWS, fmt, None)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bodies_are_json_serialisable_and_round_trip(fmt: RequestFormat) -> None:
    body = build_body(ROWS, fmt, {"k": 1})

    assert orjson.loads(orjson.dumps(body)) == body


@pytest.mark.parametrize("fmt", FORMATS)
def test_does_not_mutate_the_rows(fmt: RequestFormat) -> None:
    rows = [dict(r) for r in ROWS]

    build_body(rows, fmt, {"k": 1})

    assert rows == ROWS


def test_columnar_formats_of_a_single_row() -> None:
    row: list[Mapping[str, Any]] = [{"x": 1}]

    assert build_body(row, "dataframe_split") == {
        "dataframe_split": {"columns": ["x"], "data": [[1]]}
    }
    assert build_body(row, "inputs") == {"inputs": {"x": [1]}}


# --------------------------------------------------------------------------- predictions_of


def test_predictions_list() -> None:
    assert predictions_of({"predictions": [0.1, 0.9]}, 2) == [0.1, 0.9]


def test_outputs_list() -> None:
    assert predictions_of({"outputs": [[1, 2], [3, 4]]}, 2) == [[1, 2], [3, 4]]


def test_predictions_win_over_outputs() -> None:
    assert predictions_of({"predictions": [1], "outputs": [2]}, 1) == [1]


def test_columnar_predictions_become_one_object_per_row() -> None:
    body = {"predictions": {"score": [0.1, 0.9], "label": ["ok", "fraud"]}}

    assert predictions_of(body, 2) == [
        {"score": 0.1, "label": "ok"},
        {"score": 0.9, "label": "fraud"},
    ]


def test_columnar_outputs_become_one_object_per_row() -> None:
    assert predictions_of({"outputs": {"y": [1, 2, 3]}}, 3) == [{"y": 1}, {"y": 2}, {"y": 3}]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"predictions": [1, 2, 3]}, 2),
        ({"predictions": [1]}, 2),
        ({"outputs": []}, 1),
        ({"predictions": {"a": [1, 2], "b": [3, 4]}}, 3),
    ],
)
def test_length_mismatch_raises(body: Mapping[str, Any], expected: int) -> None:
    with pytest.raises(ResponseShapeError, match=f"for {expected} events"):
        predictions_of(body, expected)


@pytest.mark.parametrize(
    "columns",
    [
        {"a": [1, 2], "b": [3]},
        {"a": [1, 2], "b": "not a column"},
        {},
    ],
)
def test_ragged_or_non_list_columns_raise(columns: Mapping[str, Any]) -> None:
    with pytest.raises(ResponseShapeError, match="columns"):
        predictions_of({"predictions": columns}, 2)


@pytest.mark.parametrize("body", [[0.1, 0.9], "0.1", 3, None])
def test_non_object_body_raises(body: object) -> None:
    with pytest.raises(ResponseShapeError, match="not a JSON object"):
        predictions_of(body, 2)


def test_missing_key_raises_and_names_the_keys_found() -> None:
    with pytest.raises(ResponseShapeError, match="no 'predictions' or 'outputs'") as info:
        predictions_of({"result": [1, 2], "model": "m"}, 2)

    assert "result" in str(info.value)


@pytest.mark.parametrize("values", ["0.1", 7, None, True])
def test_scalar_predictions_raise(values: object) -> None:
    with pytest.raises(ResponseShapeError, match="'predictions' is not a list"):
        predictions_of({"predictions": values}, 1)


def test_shape_errors_are_non_retriable_endpoint_errors_with_status_200() -> None:
    with pytest.raises(EndpointError) as info:
        predictions_of({"predictions": [1]}, 2)

    assert isinstance(info.value, ResponseShapeError)
    assert info.value.status == 200
    assert info.value.retriable is False
    assert info.value.reason.startswith("HTTP 200: ")
