"""Source events in, result and dead-letter messages out: the pure message shapes.

An :class:`Event` is one consumed message that parsed as a JSON object; :func:`decode`
says why one did not. :func:`result_message` and :func:`dead_letter_message` build the
bytes and properties the relay publishes, correlated to the source by
``source_message_id`` and ``source_topic``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from bridge.formats import MAX_EVENT_DEPTH, UnwritableJson, read_json
from bridge.pulsar_source import Received
from bridge.redaction import Redactor, scrub


class Event:
    """A consumed message whose payload is a JSON object. ``settled`` once acked or nacked."""

    __slots__ = ("received", "row", "settled")

    def __init__(self, received: Received, row: dict[str, Any]) -> None:
        self.received = received
        self.row = row
        self.settled = False

    @property
    def size(self) -> int:
        return len(self.received.data)


class BadEvent(ValueError):
    """The message is not a UTF-8 JSON object; ``reason`` says what it is instead."""


def decode(received: Received) -> Event:
    """Parse the message payload; raise BadEvent with a reason naming the message.

    Numbers keep the value the event wrote (an integer beyond 64 bits is not rounded to a
    float), and an event nested deeper than the request body can carry is rejected here,
    where it is one bad event, rather than failing every time its batch is encoded.
    """
    data = received.data
    try:
        row = read_json(data, max_depth=MAX_EVENT_DEPTH)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(_not_json(data, exc)) from exc
    except UnwritableJson as exc:
        raise BadEvent(f"payload is {exc}, more than a request body can carry") from exc
    if not isinstance(row, dict):
        raise BadEvent(f"payload is JSON {type(row).__name__}, not an object")
    return Event(received, row)


def _not_json(data: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why ``data`` is not JSON, with the offset in bytes of the first bad one.

    orjson reports invalid UTF-8 at position 0 and counts other positions in characters,
    so the offset is worked out here. Never the bytes themselves: they may not be text.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"payload is not UTF-8 JSON: not UTF-8 ({bad.reason}) at byte {bad.start}"
    offset = len(text[: exc.pos].encode("utf-8"))
    return f"payload is not UTF-8 JSON: {exc.msg} at byte {offset}"


def result_message(
    event: Event,
    prediction: Any,
    *,
    route: str,
    passthrough: Sequence[str],
    served_model: str | None,
    extra: Mapping[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The result for one event: ``{"prediction": ..., <passthrough fields>}`` and properties.

    ``extra`` properties (request ids, trace context: bridge.correlation) are added."""
    body: dict[str, Any] = {"prediction": prediction}
    row = event.row
    for field in passthrough:
        if field in row:
            body[field] = row[field]
    properties = {
        "source_message_id": event.received.message_id,
        "source_topic": event.received.topic,
        "route": route,
    }
    if served_model is not None:
        properties["served_model"] = served_model
    if extra:
        properties.update(extra)
    return orjson.dumps(body), properties


def dead_letter_message(
    received: Received, *, route: str, reason: str, redactor: Redactor | None = None
) -> dict[str, str]:
    """Properties for a dead-lettered event: the original ones plus why and where from.

    The payload is the original bytes, untouched, so the event can be replayed as it was.
    The reason often quotes a peer (an endpoint's error body may echo the request's token),
    so it passes the process's ``redactor`` (credential shapes only without one).
    """
    return {
        **received.properties,
        "error": redactor.redact(reason) if redactor is not None else scrub(reason),
        "route": route,
        "source_topic": received.topic,
        "source_message_id": received.message_id,
        "redelivery_count": str(received.redelivery_count),
    }
