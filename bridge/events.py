"""Source events in, result and dead-letter messages out: the pure message shapes.

An :class:`Event` is one consumed message that parsed as a JSON object; :func:`decode`
says why one did not. :func:`result_message` and :func:`dead_letter_message` build the
bytes and properties the relay publishes, correlated to the source by
``source_message_id`` and ``source_topic``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from bridge.pulsar_io import Received
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
    """Parse the message payload; raise BadEvent with a reason naming the message."""
    try:
        row = orjson.loads(received.data)
    except orjson.JSONDecodeError as exc:
        # exc.msg only: the full message can quote the undecodable bytes themselves.
        raise BadEvent(f"payload is not UTF-8 JSON: {exc.msg} at byte {exc.pos}") from exc
    if not isinstance(row, dict):
        raise BadEvent(f"payload is JSON {type(row).__name__}, not an object")
    return Event(received, row)


def result_message(
    event: Event,
    prediction: Any,
    *,
    route: str,
    passthrough: Sequence[str],
    served_model: str | None,
) -> tuple[bytes, dict[str, str]]:
    """The result for one event: ``{"prediction": ..., <passthrough fields>}`` and properties."""
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
