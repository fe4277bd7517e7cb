"""How an event ends: the one place that acks, nacks and dead-letters.

Every consumed event ends in exactly one of these ways, each counted once:

* ``stored``: its result is confirmed by the broker, then the event is acked;
* ``dead_letter``: it is published to the dead-letter topic with the reason, then acked
  (if the dead-letter topic does not take it, it is nacked instead: never dropped);
* ``nack``: handed back to Pulsar, which redelivers it after ``nack_delay_ms``.

Holding (a batch waiting for its endpoint to come back) is not an ending: the events stay
unacked in the batch until one of the three happens. ``settled`` on each event makes a
second ending a no-op, so a batch cancelled mid-way can nack "whatever is left".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog

from bridge.errors import BrokerError
from bridge.events import dead_letter_message
from bridge.observe import RouteMetrics
from bridge.pulsar_io import Received, Source
from bridge.redaction import Redactor

log = structlog.get_logger("bridge.settle")


class Settleable(Protocol):
    received: Received
    settled: bool


class DeadLetterSink(Protocol):
    async def publish(self, data: bytes, properties: dict[str, str], key: str | None) -> None: ...


class Settler:
    """Ends events of one route."""

    def __init__(
        self,
        route: str,
        source: Source,
        dead_letters: DeadLetterSink,
        metrics: RouteMetrics,
        redactor: Redactor | None = None,
        on_end: Callable[[Received, bool], None] | None = None,
    ) -> None:
        self._route = route
        self._redactor = redactor
        # Told when an event ended without a result: dead-lettered (False, once the
        # dead-letter topic confirmed it) or nacked (True). Effectively-once lines use it.
        self._on_end = on_end
        self._source = source
        self._dead_letters = dead_letters
        self._metrics = metrics

    def stored(self, events: Sequence[Settleable]) -> None:
        """Results confirmed: ack."""
        fresh = [e for e in events if not e.settled]
        for event in fresh:
            event.settled = True
            self._source.ack(event.received)
        self._metrics.published(len(fresh))

    def nack(self, events: Iterable[Settleable]) -> None:
        """Hand back for redelivery."""
        count = 0
        for event in events:
            if event.settled:
                continue
            event.settled = True
            self._source.nack(event.received)
            if self._on_end is not None:
                self._on_end(event.received, True)
            count += 1
        if count:
            self._metrics.nack(count)

    async def dead_letter(self, event: Settleable, reason: str) -> None:
        """Publish the original message to the DLQ with ``reason``, then ack it."""
        if event.settled:
            return
        event.settled = True
        await self.dead_letter_received(event.received, reason)

    async def dead_letter_received(self, received: Received, reason: str) -> None:
        """The same for a message that never became an event (it did not decode)."""
        log.warning(
            "event_dead_lettered",
            route=self._route,
            reason=reason,
            source_message_id=received.message_id,
        )
        try:
            await self._dead_letters.publish(
                received.data,
                dead_letter_message(
                    received, route=self._route, reason=reason, redactor=self._redactor
                ),
                received.key,
            )
        except BrokerError as exc:
            log.error("dead_letter_failed", route=self._route, reason=str(exc))
            self._source.nack(received)
            self._metrics.nack(1)
            if self._on_end is not None:
                self._on_end(received, True)
            return
        self._metrics.dead_letter()
        if self._on_end is not None:
            self._on_end(received, False)
        self._source.ack(received)
