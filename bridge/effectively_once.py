"""Effectively-once result topics: Apache Pulsar's deduplication, fed in source order.

The broker drops a message whose producer name and sequence id it has already stored, and
any id lower than the last one stored. So each source partition gets one result producer
with a stable name (route, subscription, partition), and each result the sequence id of
its source message's position, a strictly increasing function of (ledger, entry, batch
index) - the batch index included, unlike Pulsar Functions (apache/pulsar#17061), so every
message of a batched entry keeps its own id. Results then have to reach the broker in
source order, while batches finish out of order: :class:`PartitionLine` is the reorder
buffer between them.

The rules of a line are in :mod:`bridge.partition_line`.

Handing a partition over. A failover subscription moves a partition between processes
(one stopped, killed, or joining), and only one producer of a name may be connected: the
new owner's is refused (ProducerBusy) while the old one's is open. So a line with nothing
in progress closes its producer after ``IDLE_CLOSE_S``, and opening one retries
ProducerBusy with backoff; the new owner then learns the last id the old one stored. A
halted line lets go too (its handed-back events may now be another process's): its halt
is kept for the partition's next line here, which ends it when a handed-back event comes
back or once the broker has stored past it. Left open: if another owner dead-letters a
handed-back event and stores nothing after it, and the partition then comes back here,
nothing ends the halt until this process restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import quote

import structlog

from bridge.errors import BrokerError
from bridge.partition_line import PartitionLine, SequencedPublisher, track
from bridge.pulsar_publish import OutgoingMessage
from bridge.pulsar_source import Position, Received

log = structlog.get_logger("bridge.effectively_once")

LEDGER_BITS, ENTRY_BITS, BATCH_BITS = 31, 22, 10
IDLE_CLOSE_S = 3.0
BUSY_RETRY_MAX_S = 2.0


class OutOfRange(ValueError):
    """A source position beyond what a 63-bit sequence id can hold."""


def sequence_id(position: Position) -> int:
    """A strictly increasing function of (ledger, entry, batch index) within a partition.

    31 bits of ledger id (2.1e9 ledgers), 22 of entry (4.2M entries a ledger; Pulsar rolls
    ledgers over at 50,000 by default) and 10 of batch index (1,024 messages an entry; the
    Java, Go and Python producers batch at most 1,000 by default).
    """
    batch = max(position.batch_index, 0)
    if not (
        0 <= position.ledger < 1 << LEDGER_BITS
        and 0 <= position.entry < 1 << ENTRY_BITS
        and batch < 1 << BATCH_BITS
    ):
        raise OutOfRange(
            f"source position (ledger {position.ledger}, entry {position.entry}, batch index "
            f"{position.batch_index}) exceeds the effectively-once sequence range"
        )
    return (position.ledger << (ENTRY_BITS + BATCH_BITS)) | (position.entry << BATCH_BITS) | batch


class EffectivelyOnce:
    """One route's lines, one per source partition; its result sink and admission desk."""

    def __init__(
        self,
        route: str,
        subscription: str,
        open_producer: Callable[[str], Awaitable[SequencedPublisher]],
    ) -> None:
        self._route = route
        self._subscription = subscription
        self._open_producer = open_producer
        self._lines: dict[str, PartitionLine] = {}
        self._opening: dict[str, asyncio.Future[PartitionLine]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # The handed-back ids of a halted line that let go of its producer, for the next.
        self._handed_back: dict[str, set[int]] = {}

    def producer_name(self, source_topic: str) -> str:
        """Stable across restarts and processes: the broker keys deduplication on it."""
        return f"pulsar-bridge.{self._route}.{self._subscription}.{quote(source_topic, safe='')}"

    async def admit(self, received: Received) -> str:
        """``"new"``, ``"stored"`` or ``"duplicate"`` (see :meth:`PartitionLine.admit`);
        raises OutOfRange for a position no sequence id can hold."""
        line = await self._line(received.topic)
        return line.admit(sequence_id(received.position), received)

    def admit_now(self, received: Received) -> str | None:
        """:meth:`admit` without waiting, once the partition's line is open; None while
        it is not (then :meth:`admit` opens it). Every event after a partition's first
        takes this way: no task and no wait per event."""
        line = self._lines.get(received.topic)
        if line is None:
            return None
        return line.admit(sequence_id(received.position), received)

    def hand_in(
        self, pending: Sequence[tuple[Received, OutgoingMessage]]
    ) -> list[asyncio.Future[BrokerError | None]]:
        """Hand results in; each future says whether the broker stored it (None) or not."""
        return [
            self._lines[r.topic].result(sequence_id(r.position), message) for r, message in pending
        ]

    async def publish_all(
        self, pending: Sequence[tuple[Received, OutgoingMessage]]
    ) -> list[BrokerError | None]:
        """Hand results in; return once each is stored (None) or failed."""
        return list(await asyncio.gather(*self.hand_in(pending)))

    def ended(self, received: Received, *, nacked: bool) -> None:
        line = self._lines.get(received.topic)
        if line is not None:
            with contextlib.suppress(OutOfRange):
                line.ended(sequence_id(received.position), nacked=nacked)

    async def _line(self, topic: str) -> PartitionLine:
        line = self._lines.get(topic)
        if line is not None:
            return line
        opening = self._opening.get(topic)
        if opening is None:
            opening = asyncio.ensure_future(self._open(topic))
            self._opening[topic] = opening
        return await asyncio.shield(opening)

    async def _open(self, topic: str) -> PartitionLine:
        try:
            publisher = await self._open_busy(self.producer_name(topic))
        finally:
            self._opening.pop(topic, None)
        line = PartitionLine(
            publisher,
            handed_back=self._handed_back.pop(topic, set()),
            on_idle=lambda line: self._idle_soon(topic, line),
            partition=topic,
        )
        self._lines[topic] = line
        # A line may never hold an id (every event it sees already stored, as after a
        # failover): only a drop schedules the idle check, so schedule one now too.
        self._idle_soon(topic, line)
        log.info(
            "result_producer_opened",
            route=self._route,
            source_partition=topic,
            last_sequence_id=publisher.last_sequence_id,
        )
        return line

    async def _open_busy(self, name: str) -> SequencedPublisher:
        """Open the producer; while the partition's previous owner still holds the name
        (ProducerBusy), or the broker cannot be reached, try again with backoff (the
        caller stops waiting on shutdown)."""
        delay = 0.1
        while True:
            try:
                return await self._open_producer(name)
            except BrokerError as exc:
                event = (
                    "result_producer_busy"
                    if "ProducerBusy" in str(exc)
                    else "result_producer_failed"
                )
                log.info(event, route=self._route, producer=name, retry_s=delay, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_RETRY_MAX_S)

    def _idle_soon(self, topic: str, line: PartitionLine) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(IDLE_CLOSE_S, self._close_if_idle, topic, line)

    def _close_if_idle(self, topic: str, line: PartitionLine) -> None:
        if self._lines.get(topic) is not line or not line.idle:
            return
        # Let go of the name, so whoever owns the partition next can open it. A halted
        # line's halt goes on to the next line: forgotten, a later event redelivered first
        # would be stored above the handed-back one, which would then count as stored.
        del self._lines[topic]
        if line.halted_at is not None:
            self._handed_back[topic] = set(line.handed_back)
        task = asyncio.get_running_loop().create_task(line.close())
        track(self._closing, task, route=self._route, source_partition=topic)

    async def close(self) -> None:
        """Close every line's producer (the route is stopping)."""
        # A producer still being opened (retrying ProducerBusy) would otherwise keep trying
        # after the route closed, and open a producer nobody closes.
        opening = list(self._opening.values())
        for future in opening:
            future.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        lines, self._lines = list(self._lines.values()), {}
        await asyncio.gather(*(line.close() for line in lines))
        await asyncio.gather(*self._closing, return_exceptions=True)  # failures are logged
