"""decode() and the JSON rules under it: exact numbers, byte offsets, depth the writer can take."""

from __future__ import annotations

from typing import Any, cast, get_args

import orjson
import pytest

from bridge.config_route import RequestFormat
from bridge.events import BadEvent, Event, decode, result_message
from bridge.formats import (
    MAX_EVENT_DEPTH,
    MAX_WRITE_DEPTH,
    UnwritableJson,
    build_body,
    prediction_problem,
    read_json,
)
from bridge.pulsar_source import Received

FORMATS: tuple[RequestFormat, ...] = get_args(RequestFormat)


class FakeReceived:
    """What decode() and result_message() read of a consumed message."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.key = None
        self.topic = "persistent://public/default/events"
        self.message_id = "(1,2,-1,0)"
        self.properties: dict[str, str] = {}
        self.redelivery_count = 0


def decoded(data: bytes) -> Event:
    return decode(cast(Received, FakeReceived(data)))


def reason(data: bytes) -> str:
    with pytest.raises(BadEvent) as info:
        decoded(data)
    return str(info.value)


def published(event: Event, passthrough: list[str]) -> bytes:
    data, _ = result_message(event, 0.5, route="fraud", passthrough=passthrough, served_model=None)
    return data


def nested(depth: int, opener: str = "[") -> bytes:
    """A JSON object ``depth`` levels deep: the object itself plus ``depth - 1`` inside."""
    levels = depth - 1
    inner = {"{": '{"a":' * levels + "1" + "}" * levels, "[": "[" * levels + "]" * levels}
    return f'{{"v":{inner[opener]}}}'.encode()


# --------------------------------------------------------------------------- the common path


def test_an_ordinary_event_decodes_to_plain_python_values() -> None:
    event = decoded(b'{"id": "e1", "amount": 12.5, "age": 42, "big": 18446744073709551615}')

    assert event.row == {"id": "e1", "amount": 12.5, "age": 42, "big": 18446744073709551615}
    assert all(type(v) in (str, float, int) for v in event.row.values())


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"[1, 2]", "list"), (b'"text"', "str"), (b"3", "int"), (b"null", "NoneType")],
)
def test_json_that_is_not_an_object_is_a_bad_event(data: bytes, kind: str) -> None:
    assert reason(data) == f"payload is JSON {kind}, not an object"


# --------------------------------------------------------------------------- exact numbers

BIG = "123456789012345678901234567890"


@pytest.mark.parametrize(
    "number",
    [
        BIG,
        "-" + BIG,
        "18446744073709551616",  # 2**64: the first integer orjson reads as a float
        "-9223372036854775809",  # -2**63 - 1
        "9" * 300,  # still a finite double to orjson, rounded to 17 digits
    ],
)
def test_numbers_orjson_would_round_are_passed_through_as_written(number: str) -> None:
    event = decoded(f'{{"id": {number}, "amount": 1.5}}'.encode())

    assert (
        published(event, ["id", "amount"])
        == f'{{"prediction":0.5,"id":{number},"amount":1.5}}'.encode()
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_big_integer_reaches_the_model_as_written(fmt: RequestFormat) -> None:
    event = decoded(f'{{"id": {BIG}, "n": 7, "f": 0.25}}'.encode())

    body = orjson.dumps(build_body([event.row], fmt))

    assert BIG.encode() in body
    assert b"e+29" not in body


def test_a_big_integer_inside_a_list_is_kept_too() -> None:
    event = decoded(f'{{"ids": [1, {BIG}], "at": {{"n": -{BIG}}}}}'.encode())

    assert published(event, ["ids", "at"]) == (
        f'{{"prediction":0.5,"ids":[1,{BIG}],"at":{{"n":-{BIG}}}}}'.encode()
    )


def test_a_big_integer_in_a_wide_flat_event_is_kept() -> None:
    # Past a few values the raw bytes are scanned instead of each value looked at.
    fields = ", ".join(f'"f{i}": {i}.5' for i in range(30))
    event = decoded(f'{{{fields}, "id": {BIG}}}'.encode())

    assert published(event, ["f29", "id"]) == f'{{"prediction":0.5,"f29":29.5,"id":{BIG}}}'.encode()


@pytest.mark.parametrize(
    "document",
    [
        f'{{"ids": [{BIG}, 1]}}',
        f'{{"ids": [{BIG}]}}',
        f'{{"at": {{"id": {BIG}}}}}',
        f'{{"ids": [{BIG} ]}}',
        f'{{"ids": [{BIG}\n]}}',
        f'{{"ids": [{BIG}\t]}}',
        f'{{"ids": [{BIG}\r]}}',
    ],
)
def test_a_big_integer_is_found_whatever_follows_it(document: str) -> None:
    # Nested, so the raw bytes are scanned rather than the values looked at.
    assert orjson.dumps(decoded(document.encode()).row).count(BIG.encode()) == 1


@pytest.mark.parametrize("data", [b'{"x": 1e19}', b'{"x": [1e19]}'])
def test_a_large_decimal_is_an_ordinary_float(data: bytes) -> None:
    assert decoded(data).row["x"] in (1e19, [1e19])


def test_decimals_are_doubles_however_many_digits_they_have() -> None:
    # As in every JSON reader the model may use; only integers are kept beyond 64 bits.
    event = decoded(b'{"pi": 3.14159265358979323846264338327950288, "v": [0.1]}')

    assert event.row == {"pi": 3.141592653589793, "v": [0.1]}


def test_an_integer_too_long_for_a_double_is_a_bad_event_with_the_reason() -> None:
    # orjson reads integers past 64 bits as doubles, and this one is past a double's range.
    assert reason(b'{"id": ' + b"1" * 400 + b"}") == (
        "payload is not UTF-8 JSON: number is infinity when parsed as double at byte 7"
    )


def test_in_range_numbers_of_a_long_event_stay_numbers() -> None:
    # Long enough to be read by the exact path, which keeps in-range integers as ints.
    data = (
        b'{"card": "4111111111111111111111", "n": -9223372036854775808,'
        b' "u": 18446744073709551615, "f": 0.1}'
    )

    event = decoded(data)

    assert event.row == {
        "card": "4111111111111111111111",
        "n": -(2**63),
        "u": 2**64 - 1,
        "f": 0.1,
    }
    assert orjson.loads(published(event, ["card", "n", "u", "f"])) == {
        "prediction": 0.5,
        **event.row,
    }


def test_read_json_is_exact_for_responses_too() -> None:
    body = read_json(f'{{"predictions": [{BIG}, 0.5]}}'.encode())

    assert orjson.dumps(body) == f'{{"predictions":[{BIG},0.5]}}'.encode()


# --------------------------------------------------------------------------- reasons


def test_invalid_utf8_is_reported_at_its_real_byte_offset() -> None:
    data = b'{"name": "abcdefghijklmn\xff\xfe"}'
    assert data.index(b"\xff") == 24

    assert reason(data) == "payload is not UTF-8 JSON: not UTF-8 (invalid start byte) at byte 24"


def test_a_truncated_multibyte_character_is_reported_where_it_starts() -> None:
    data = '{"näme": "é'.encode() + "€".encode()[:2] + b'"}'

    start = len(data) - 4  # the euro sign's first byte, followed by a quote, not its second
    assert reason(data) == (
        f"payload is not UTF-8 JSON: not UTF-8 (invalid continuation byte) at byte {start}"
    )


def test_a_syntax_error_after_multibyte_text_is_reported_in_bytes_not_characters() -> None:
    data = '{"ééé": NaN}'.encode()
    assert data.index(b"NaN") == 11  # character 8

    assert (
        reason(data)
        == "payload is not UTF-8 JSON: unexpected character, expected a JSON value at byte 11"
    )


def test_an_empty_payload_says_so() -> None:
    assert (
        reason(b"") == "payload is not UTF-8 JSON: Input is a zero-length, empty document at byte 0"
    )


# --------------------------------------------------------------------------- depth


@pytest.mark.parametrize("opener", ["[", "{"])
def test_the_deepest_event_allowed_can_be_sent_in_every_format_and_published(opener: str) -> None:
    event = decoded(nested(MAX_EVENT_DEPTH, opener))

    for fmt in FORMATS:
        orjson.dumps(build_body([event.row], fmt, {"threshold": 0.5}))
    published(event, ["v"])


@pytest.mark.parametrize("opener", ["[", "{"])
def test_an_event_one_level_deeper_is_a_bad_event(opener: str) -> None:
    data = nested(MAX_EVENT_DEPTH + 1, opener)
    # orjson reads it (it reads 1,024 levels) but could not write the request body.
    orjson.loads(data)

    assert reason(data) == (
        f"payload is nested deeper than {MAX_EVENT_DEPTH} levels, "
        "more than a request body can carry"
    )


def test_a_wide_shallow_event_with_many_brackets_is_fine() -> None:
    data = orjson.dumps({"items": [{"x": [i]} for i in range(500)]})

    assert len(decoded(data).row["items"]) == 500


def test_read_json_checks_against_the_writer_by_default() -> None:
    read_json(b"[" * MAX_WRITE_DEPTH + b"]" * MAX_WRITE_DEPTH)
    with pytest.raises(UnwritableJson, match=f"nested deeper than {MAX_WRITE_DEPTH} levels"):
        read_json(b"[" * (MAX_WRITE_DEPTH + 1) + b"]" * (MAX_WRITE_DEPTH + 1))


# --------------------------------------------------------------------------- predictions


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("prediction", [0.5, 3, "fraud", None, True, {"score": [0.1, 0.9]}])
def test_ordinary_predictions_can_be_published(prediction: Any) -> None:
    assert prediction_problem(prediction) is None


def test_a_prediction_is_publishable_up_to_one_level_below_the_writers_limit() -> None:
    event = decoded(b'{"id": 1}')
    fits = deep(MAX_WRITE_DEPTH - 1)
    result_message(event, fits, route="r", passthrough=[], served_model=None)

    assert prediction_problem(fits) is None
    assert prediction_problem(deep(MAX_WRITE_DEPTH)) == (
        f"prediction is nested deeper than {MAX_WRITE_DEPTH - 1} levels"
    )
    with pytest.raises(orjson.JSONEncodeError):
        result_message(event, deep(MAX_WRITE_DEPTH), route="r", passthrough=[], served_model=None)
