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

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog

from bridge.errors import BrokerError
from bridge.events import dead_letter_message
from bridge.observe import RouteMetrics
from bridge.pulsar_source import Received, Source
from bridge.redaction import Redactor

log = structlog.get_logger("bridge.settle")
DEAD_LETTER_RETRY_MAX_S = 5.0


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
        persist_dead_letters: bool = False,
    ) -> None:
        self._route = route
        self._redactor = redactor
        # Told when an event ended without a result: dead-lettered (False, once the
        # dead-letter topic confirmed it) or nacked (True). Effectively-once lines use it.
        self._on_end = on_end
        self._persist = persist_dead_letters
        self._source = source
        self._dead_letters = dead_letters
        self._metrics = metrics

    def _hand_back(self, received: Received) -> None:
        self._source.nack(received)
        self._metrics.nack(1)
        if self._on_end is not None:
            self._on_end(received, True)

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
        try:
            await self.dead_letter_received(event.received, reason)
        except BaseException:
            # Cancelled by a drain while the dead letter was on its way: hand it back.
            self._hand_back(event.received)
            raise

    async def dead_letter_received(self, received: Received, reason: str) -> None:
        """The same for a message that never became an event (it did not decode)."""
        log.warning(
            "event_dead_lettered",
            route=self._route,
            reason=reason,
            source_message_id=received.message_id,
        )
        message = dead_letter_message(
            received, route=self._route, reason=reason, redactor=self._redactor
        )
        delay_s = 0.1
        while True:
            try:
                await self._dead_letters.publish(received.data, message, received.key)
                break
            except BrokerError as exc:
                log.error("dead_letter_failed", route=self._route, reason=str(exc))
                if not self._persist:
                    self._hand_back(received)
                    return
            # Effectively-once: a nack would halt the partition's line (nothing after the
            # event may be stored before it), so the dead letter is sent again in place.
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, DEAD_LETTER_RETRY_MAX_S)
        self._metrics.dead_letter()
        if self._on_end is not None:
            self._on_end(received, False)
        self._source.ack(received)
