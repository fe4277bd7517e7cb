"""The reorder buffer of one source partition in front of its result producer
(:class:`PartitionLine`), for :mod:`bridge.effectively_once`.

Its rules (each tested in tests/test_effectively_once.py):

* every message is *admitted* in delivery order before it is scored; one whose id is at
  or below the producer's last stored id already has its result: it is acked at once; a
  second delivery of an id still in progress is dropped (acking the first acks both);
* results are sent in id order, a prefix at a time, only when every lower admitted id has
  its result or has ended otherwise;
* a prefix leaves in batches, each one broker entry named by its highest id, which the
  broker keeps or drops whole: what the broker remembers is then exactly the highest id
  stored, and everything below it is stored. A batch that failed may have been stored
  all the same, so until its highest id is confirmed no batch crosses it: a batch that
  held ids on both sides would be kept for the ids above and store the ids below twice;
* a dead letter ends its id only once the dead-letter topic confirmed it (dead letters are
  at-least-once: the dead-letter topic has no reorder buffer);
* a nack (a stop) *halts* the line: nothing above that id is sent, since a later result
  stored before it would make the broker drop it once redelivered; the line goes on when
  every id handed back is admitted again (redelivered), back in front of later ids.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from bridge.errors import BatchRefused, BrokerError
from bridge.pulsar_publish import DEDUP_BATCH_MAX_BYTES, DEDUP_BATCH_MAX_MESSAGES, OutgoingMessage
from bridge.pulsar_source import Received

log = structlog.get_logger("bridge.effectively_once")


class SequencedPublisher(Protocol):
    """A result producer that sends with explicit sequence ids (pulsar_publish.Publisher)."""

    @property
    def last_sequence_id(self) -> int: ...

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], sequence_id: int
    ) -> BrokerError | None: ...

    async def close(self) -> None: ...


@dataclass
class _Slot:
    received: Received
    message: OutgoingMessage | None = None
    ended: bool = False  # dead-lettered (confirmed): no result to send
    stored: asyncio.Future[BrokerError | None] | None = None


def track(tasks: set[asyncio.Task[None]], task: asyncio.Task[None], **context: str) -> None:
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
    # The highest id the broker has stored, as far as this line knows: the producer's
    # word when it opened, then each confirmed batch's id. (The client's own count is
    # wrong for batches: it counts a batch's ids as consecutive from its first.)
    _stored_through: int = field(init=False)
    # The ids of batches that failed and may have been stored all the same: no batch
    # crosses one until a batch up to it is confirmed.
    _unsure: list[int] = field(default_factory=list)
    _batch_limit: int = field(init=False)  # halved by each batch refused as too large

    def __post_init__(self) -> None:
        self._stored_through = self.publisher.last_sequence_id
        self._batch_limit = DEDUP_BATCH_MAX_MESSAGES

    @property
    def idle(self) -> bool:
        return not self.ids and not self._sending

    @property
    def last_stored(self) -> int:
        return self._stored_through

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
        slot = self.slots.get(seq)
        if slot is None and seq <= self.last_stored:
            # Failed by a halt while its batch was on its way, which the broker then stored.
            stored: asyncio.Future[BrokerError | None] = asyncio.get_running_loop().create_future()
            stored.set_result(None)
            return stored
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
                slot.message = None  # sent only when handed in again, after the halt
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
            track(self._senders, task, source_partition=self.partition)

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
        """Send what is ready, a batch at a time (so ids reach the producer in order), the
        ready prefix worked out again after each send: a nack or a halt may come meanwhile."""
        while True:
            prefix = self._ready_prefix()
            if not prefix:
                return
            for seq in [s for s in prefix if self.slots[s].ended]:
                self._drop(seq)
            sending = [s for s in prefix if s in self.slots]
            if sending and not await self._send_batch(self._first_batch(sending)):
                return  # the processor retries in place and hands the results in again

    def _first_batch(self, ids: list[int]) -> list[int]:
        """The first batch of ``ids`` (ascending): within the bounds of one broker entry
        (the client closes a batch once it is full, so a batch ends where it would), and
        not crossing an id that may have been stored."""
        batch: list[int] = []
        size = 0
        for seq in ids:
            length = _size(self.slots[seq].message)
            if batch and (
                len(batch) >= self._batch_limit
                or size >= DEDUP_BATCH_MAX_BYTES
                or size + length > DEDUP_BATCH_MAX_BYTES
                or any(batch[-1] <= unsure < seq for unsure in self._unsure)
            ):
                break
            batch.append(seq)
            size += length
        return batch

    async def _send_batch(self, batch: list[int]) -> bool:
        """Send one batch named by its highest id; whether the broker has it."""
        messages = [m for m in (self.slots[s].message for s in batch) if m is not None]
        outcome = await self.publisher.publish_batch(messages, batch[-1])
        if isinstance(outcome, BatchRefused):
            # Too large for the broker as a whole: smaller from now on, down to one result,
            # which the broker then refuses (or takes) on its own.
            self._batch_limit = max(1, len(batch) // 2)
            log.warning(
                "result_batch_refused",
                source_partition=self.partition,
                results=len(batch),
                batch_limit=self._batch_limit,
            )
        if outcome is None:
            self._stored_through = max(self._stored_through, batch[-1])
            self._unsure = [unsure for unsure in self._unsure if unsure > batch[-1]]
        elif batch[-1] not in self._unsure:
            bisect.insort(self._unsure, batch[-1])
        for seq in batch:
            slot = self.slots.get(seq)
            if slot is None or slot.stored is None:
                continue
            if outcome is None:
                self._drop(seq)
            else:
                slot.message = None  # sent again only when handed in again
            if not slot.stored.done():
                slot.stored.set_result(outcome)
        return outcome is None


def _size(message: OutgoingMessage | None) -> int:
    """What a result adds to a batch: its payload (all the client counts), and its key and
    properties, which the broker's message size limit counts too."""
    if message is None:
        return 0
    data, properties, key = message
    return len(data) + len(key or "") + sum(len(k) + len(v) + 8 for k, v in properties.items())
