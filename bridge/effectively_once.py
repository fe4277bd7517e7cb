"""Effectively-once result topics: Apache Pulsar's deduplication, fed in source order.

The broker drops a message whose producer name and sequence id it has already stored, and
any id lower than the last one stored. So each source partition gets one result producer
with a stable name (route, subscription, partition), and each result the sequence id of
its source message's position, a strictly increasing function of (ledger, entry, batch
index) - the batch index included, unlike Pulsar Functions (apache/pulsar#17061), so every
message of a batched entry keeps its own id. Results then have to reach the broker in
source order, while batches finish out of order: :class:`PartitionLine` is the reorder
buffer between them.

Rules of a line (each tested in tests/test_effectively_once.py):

* every message is *admitted* in delivery order before it is scored; one whose id is at
  or below the producer's last stored id already has its result: it is acked at once; a
  second delivery of an id still in progress is dropped (acking the first acks both);
* results are sent in id order, a prefix at a time, only when every lower admitted id has
  its result or has ended otherwise;
* a dead letter ends its id only once the dead-letter topic confirmed it (dead letters are
  at-least-once: the dead-letter topic has no reorder buffer);
* a nack (a stop) *halts* the line: nothing above that id is sent, since a later result
  stored before it would make the broker drop it once redelivered; the line goes on when
  every id handed back is admitted again (redelivered), back in front of later ids.

Handing a partition over. A failover subscription moves a partition between processes
(one stopped, killed, or joining), and only one producer of a name may be connected: the
new owner's is refused (ProducerBusy) while the old one's is open. So a line with nothing
in progress closes its producer after ``IDLE_CLOSE_S``, and opening one retries
ProducerBusy with backoff; the new owner then learns the last id the old one stored.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

import structlog

from bridge.errors import BrokerError
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


class SequencedPublisher(Protocol):
    """A result producer that sends with explicit sequence ids (pulsar_publish.Publisher)."""

    @property
    def last_sequence_id(self) -> int: ...

    async def publish_all(
        self, messages: Sequence[OutgoingMessage], sequence_ids: Sequence[int] | None = None
    ) -> list[BrokerError | None]: ...

    async def close(self) -> None: ...


@dataclass
class _Slot:
    received: Received
    message: OutgoingMessage | None = None
    ended: bool = False  # dead-lettered (confirmed): no result to send
    stored: asyncio.Future[BrokerError | None] | None = None


def _track(tasks: set[asyncio.Task[None]], task: asyncio.Task[None], **context: str) -> None:
    """Keep ``task`` referenced until it ends (the loop holds tasks weakly) and log what
    it raised (an exception nobody awaits is otherwise only reported when collected)."""
    tasks.add(task)

    def done(finished: asyncio.Task[None]) -> None:
        tasks.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            log.error("effectively_once_task_failed", error=repr(finished.exception()), **context)

    task.add_done_callback(done)


@dataclass
class PartitionLine:
    """The reorder buffer of one source partition, in front of its result producer."""

    publisher: SequencedPublisher
    ids: list[int] = field(default_factory=list)  # admitted, not yet done, ascending
    slots: dict[int, _Slot] = field(default_factory=dict)
    handed_back: set[int] = field(default_factory=set)  # nacked, not admitted again
    on_idle: Callable[[PartitionLine], None] | None = None
    partition: str = ""  # the source partition, for log lines
    _sending: bool = False
    _senders: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def idle(self) -> bool:
        return not self.ids and not self._sending

    @property
    def last_stored(self) -> int:
        return self.publisher.last_sequence_id

    @property
    def halted_at(self) -> int | None:
        """Nothing above this id is sent: the lowest id handed back, not admitted again,
        and not stored after all (a send already on its way when it was handed back)."""
        return min((s for s in self.handed_back if s > self.last_stored), default=None)

    def admit(self, seq: int, received: Received) -> str:
        """``"new"``, ``"stored"`` (ack it now) or ``"duplicate"`` (drop it)."""
        if seq <= self.last_stored:
            return "stored"
        if seq in self.slots:
            return "duplicate"
        # A handed-back event is back: from now on the line orders it before later ids, so
        # their results (failed while halted, handed in again) wait for it rather than
        # overtake it. Only a halt for good would wedge the line until a restart.
        self.handed_back.discard(seq)
        bisect.insort(self.ids, seq)
        self.slots[seq] = _Slot(received)
        return "new"

    def result(self, seq: int, message: OutgoingMessage) -> asyncio.Future[BrokerError | None]:
        """Hand in ``seq``'s result; the future says whether the broker stored it."""
        slot = self.slots[seq]
        slot.stored = asyncio.get_running_loop().create_future()
        if self.halted_at is not None and seq > self.halted_at:
            slot.stored.set_result(BrokerError("the line halted: an earlier event was handed back"))
            return slot.stored
        slot.message = message
        self._pump()
        return slot.stored

    def ended(self, seq: int, *, nacked: bool) -> None:
        """``seq`` ended without a result: dead-lettered (confirmed), or nacked."""
        slot = self.slots.get(seq)
        if slot is None:
            return
        if nacked:
            self.handed_back.add(seq)
            self._drop(seq)
            self._fail_from(seq, "the line halted: an earlier event was handed back")
            return
        slot.ended = True
        self._pump()

    def _drop(self, seq: int) -> None:
        self.slots.pop(seq, None)
        index = bisect.bisect_left(self.ids, seq)
        if index < len(self.ids) and self.ids[index] == seq:
            del self.ids[index]
        if not self.ids and self.on_idle is not None:
            self.on_idle(self)

    def _fail_from(self, seq: int, reason: str) -> None:
        for other in [s for s in self.ids if s > seq]:
            slot = self.slots[other]
            if slot.stored is not None and not slot.stored.done():
                slot.stored.set_result(BrokerError(reason))

    def _ready_prefix(self) -> list[int]:
        prefix, halted_at = [], self.halted_at
        for seq in self.ids:
            if halted_at is not None and seq > halted_at:
                break
            slot = self.slots[seq]
            if not slot.ended and slot.message is None:
                break
            prefix.append(seq)
        return prefix

    def _pump(self) -> None:
        if not self._sending:
            self._sending = True
            task = asyncio.get_running_loop().create_task(self._send_ready())
            _track(self._senders, task, source_partition=self.partition)

    async def close(self) -> None:
        """Stop sending (what waits fails like an unconfirmed send), close the producer."""
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        with contextlib.suppress(BrokerError):
            await self.publisher.close()

    def _fail_handed_in(self, reason: str) -> None:
        for slot in self.slots.values():
            if slot.stored is not None and not slot.stored.done():
                slot.message = None  # sent again only when handed in again
                slot.stored.set_result(BrokerError(reason))

    async def _send_ready(self) -> None:
        try:
            await self._send_prefixes()
        except BaseException as exc:
            # A producer raising instead of answering, a bug, or the line closing: the
            # results handed in must not wait forever. They fail like a send the broker did
            # not confirm, so the processor hands them in again (or hands them back at a stop).
            self._fail_handed_in(f"sending results failed: {exc!r}")
            raise
        finally:
            self._sending = False

    async def _send_prefixes(self) -> None:
        """Send ready prefixes, one at a time (so ids reach the producer in order)."""
        while True:
            prefix = self._ready_prefix()
            if not prefix:
                return
            for seq in [s for s in prefix if self.slots[s].ended]:
                self._drop(seq)
            sending = [s for s in prefix if s in self.slots]
            if not sending:
                continue
            messages = [self.slots[s].message for s in sending]
            outcomes = await self.publisher.publish_all(
                [m for m in messages if m is not None], sending
            )
            for seq, outcome in zip(sending, outcomes, strict=True):
                slot = self.slots.get(seq)
                if slot is None or slot.stored is None:
                    continue
                if outcome is None:
                    self._drop(seq)
                else:
                    slot.message = None  # sent again only when handed in again
                if not slot.stored.done():
                    slot.stored.set_result(outcome)
            if any(outcome is not None for outcome in outcomes):
                return  # the processor retries in place and hands the results in again


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
            publisher, on_idle=lambda line: self._idle_soon(topic, line), partition=topic
        )
        self._lines[topic] = line
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
        if self._lines.get(topic) is not line or not line.idle or line.halted_at is not None:
            # A halted line keeps its producer: closing it would forget the halt, and the
            # handed-back event, once redelivered, would sit below later stored ids.
            return
        # Let go of the name, so whoever owns the partition next can open it.
        del self._lines[topic]
        task = asyncio.get_running_loop().create_task(line.close())
        _track(self._closing, task, route=self._route, source_partition=topic)

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
