"""The operator tools' decisions without a broker: lines to send, dead letters to replay,
messages new to a reader, and the Pulsar client's log lines."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import pytest

from bridge.client_log import parse_line as parse_client_line
from bridge.events import dead_letter_message
from bridge.pulsar_source import Received
from bridge.tools.dead_letters import (
    BATCHED_WITH_OTHERS,
    DEAD_LETTER_PROPERTIES,
    NO_DESTINATION,
    Selection,
    destination,
    judge,
    parse_rate,
    parse_time,
    replay_properties,
)
from bridge.tools.send import BadLine, Line, parse_line, read_lines
from bridge.tools.tail import FirstSight, as_json


@dataclass
class FakeId:
    ledger: int
    entry: int
    batch: int = -1
    part: int = -1

    def partition(self) -> int:
        return self.part

    def ledger_id(self) -> int:
        return self.ledger

    def entry_id(self) -> int:
        return self.entry

    def batch_index(self) -> int:
        return self.batch

    def __str__(self) -> str:
        return f"({self.ledger},{self.entry},{self.part},{self.batch})"


@dataclass
class FakeMessage:
    """What Received reads of the client's message."""

    id: FakeId
    props: dict[str, str] = field(default_factory=dict)
    payload: bytes = b"{}"
    key: str = ""
    published_ms: int = 0
    topic: str = "persistent://public/default/t"

    def data(self) -> bytes:
        return self.payload

    def partition_key(self) -> str:
        return self.key

    def topic_name(self) -> str:
        return self.topic

    def message_id(self) -> FakeId:
        return self.id

    def properties(self) -> dict[str, str]:
        return self.props

    def publish_timestamp(self) -> int:
        return self.published_ms

    def redelivery_count(self) -> int:
        return 0


def letter(entry: int, error: str = "HTTP 400", *, batch: int = -1, at_ms: int = 0) -> Received:
    return Received(FakeMessage(FakeId(1, entry, batch), {"error": error}, published_ms=at_ms))


# ------------------------------------------------------------------------------ send lines


def test_a_json_object_line_is_sent_as_written_with_its_key() -> None:
    assert parse_line(3, b' {"id": 7, "card": "c1"}\n', "card") == Line(
        3, b'{"id": 7, "card": "c1"}', "c1"
    )
    assert parse_line(1, b'{"id": 7}', "id") == Line(1, b'{"id": 7}', "7")
    assert parse_line(1, b'{"ok": true}', "ok") == Line(1, b'{"ok": true}', "true")
    assert parse_line(1, b"   \n", None) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "line 4: not JSON"),
        (b"\xff\xfe{}", "line 4: not UTF-8"),
        (b"[1, 2]", "line 4: JSON list, not an object"),
        (b'{"id": 1}', "line 4: no field 'card' for the key"),
        (b'{"card": null}', "line 4: field 'card' is null"),
        (b'{"card": {"n": 1}}', "line 4: field 'card' is dict"),
        (b'{"card": ""}', "line 4: field 'card' is empty"),
    ],
)
def test_a_bad_line_says_why_with_its_number(raw: bytes, reason: str) -> None:
    with pytest.raises(BadLine, match=f"^{reason}"):
        parse_line(4, raw, "card")


def test_lines_are_numbered_as_in_the_file_blank_ones_included() -> None:
    read = list(read_lines([b"{}\n", b"\n", b"x\n", b'{"a": 1}\n'], None))
    assert [r.number for r in read] == [1, 3, 4]
    assert isinstance(read[1], BadLine)


# --------------------------------------------------------------------------- replay rules


def test_replayed_properties_are_the_events_own() -> None:
    source = Received(FakeMessage(FakeId(1, 2), {"trace": "t1", "tenant": "a"}, key="k"))
    added = dead_letter_message(source, route="fraud", reason="HTTP 400")
    # The names dropped are exactly the ones dead-lettering adds.
    assert added.keys() - source.properties.keys() == DEAD_LETTER_PROPERTIES
    assert replay_properties(added) == {"trace": "t1", "tenant": "a"}


def test_a_selection_takes_errors_containing_text_in_a_time_window() -> None:
    selection = Selection(error_contains="400", since_ms=1_000, until_ms=2_000)
    assert selection.takes(letter(1, "HTTP 400: bad row", at_ms=1_000))
    assert not selection.takes(letter(1, "HTTP 400: bad row", at_ms=2_000))
    assert not selection.takes(letter(1, "HTTP 400: bad row", at_ms=999))
    assert not selection.takes(letter(1, "HTTP 503", at_ms=1_500))
    assert Selection().takes(letter(1, ""))


def test_the_destination_is_to_or_the_routes_topic_or_the_dead_letters_source() -> None:
    two = ["events-a", "persistent://public/default/events-b"]
    from_b = {"source_topic": "persistent://public/default/events-b-partition-3"}
    assert destination(from_b, two, "elsewhere") == "elsewhere"
    assert destination({}, ["only"], None) == "only"
    assert destination(from_b, two, None) == "persistent://public/default/events-b"
    assert destination({"source_topic": "persistent://public/default/events-a"}, two, None) == (
        "events-a"
    )
    assert destination({"source_topic": "persistent://public/default/other"}, two, None) is None
    assert destination({}, two, None) is None


def test_an_entry_is_replayed_whole_or_not_at_all() -> None:
    selection = Selection(error_contains="A")
    batch = [letter(5, "A1", batch=0), letter(5, "B", batch=1), letter(5, "A2", batch=2)]

    mixed = judge(batch, selection, ["src"], None)
    whole = judge(batch, Selection(), ["src"], None)
    none = judge([letter(6, "B")], selection, ["src"], None)

    assert (mixed.replay, mixed.left) == ([], 1)
    assert [reason for _, reason in mixed.held] == [BATCHED_WITH_OTHERS] * 2
    assert [(m.properties["error"], to) for m, to in whole.replay] == [
        ("A1", "src"),
        ("B", "src"),
        ("A2", "src"),
    ]
    assert (none.replay, none.held, none.left) == ([], [], 1)


def test_an_entry_with_a_dead_letter_of_unknown_destination_is_held() -> None:
    entry = [letter(5, "A", batch=0), letter(5, "A", batch=1)]
    verdict = judge(entry, Selection(), ["a", "b"], None)
    assert verdict.replay == []
    assert [reason for _, reason in verdict.held] == [NO_DESTINATION] * 2


def test_times_and_rates_parse_or_explain() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == parse_time("2026-01-02T03:04:05")
    assert parse_time("2026-01-02T04:04:05+01:00") == parse_time("2026-01-02T03:04:05")
    assert parse_time("2026-01-02T03:04:05.250") % 1000 == 250
    assert parse_rate("50/s") == 50.0
    assert parse_rate("0.5") == 0.5
    for bad_time in ("yesterday", "2026-13-01"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_time(bad_time)
    for bad_rate in ("fast", "0/s", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad_rate)


# ------------------------------------------------------------------------------------ tail


def test_a_reader_sees_each_message_once_per_partition() -> None:
    new = FirstSight()
    seen = [new(letter(e, batch=b)) for e, b in [(1, -1), (2, 0), (2, 1), (2, 0), (1, -1), (3, -1)]]
    assert seen == [True, True, True, False, False, True]
    other_partition = Received(FakeMessage(FakeId(1, 1, part=2)))
    assert new(other_partition)


def test_tail_json_shows_text_payloads_as_text_and_others_as_base64() -> None:
    text = Received(FakeMessage(FakeId(1, 1), {"b": "2", "a": "1"}, b'{"x": 1}', "k", 0))
    binary = Received(FakeMessage(FakeId(1, 2), payload=b"\xff\x00"))
    assert as_json(text) == {
        "topic": "persistent://public/default/t",
        "message_id": "(1,1,-1,-1)",
        "publish_time": "1970-01-01T00:00:00.000Z",
        "key": "k",
        "properties": {"a": "1", "b": "2"},
        "payload": '{"x": 1}',
    }
    assert as_json(binary)["payload_base64"] == "/wA="
    assert "payload" not in as_json(binary)


# --------------------------------------------------------------------- the client's lines


def test_a_client_log_line_becomes_a_level_and_fields() -> None:
    line = (
        "2026-12-01 02:04:14.385 WARN  [139937478256320] ConsumerImpl:381 | "
        "[persistent://public/default/dl, replay, 3] Temporary error: ResultDisconnected"
    )
    assert parse_client_line(line) == (
        logging.WARNING,
        {
            "source": "ConsumerImpl:381",
            "message": "[persistent://public/default/dl, replay, 3] Temporary error: "
            "ResultDisconnected",
        },
    )
    info = "2026-12-01 02:04:14.385 INFO  [1] ClientImpl:802 | Closing Pulsar client"
    assert parse_client_line(info)[0] == logging.INFO
    assert parse_client_line("something else") == (
        logging.WARNING,
        {"source": "stdout", "message": "something else"},
    )
