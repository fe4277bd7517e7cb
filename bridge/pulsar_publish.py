"""Publishing to Pulsar: :class:`Publisher` (a producer on one topic), the callbacks one
batch waits for, and the pinning of the client threads that run those callbacks.

A publish returns once the broker has the messages; its failures come back per message as
:class:`~bridge.errors.BrokerError` or :class:`~bridge.errors.ResultRejected`. The producers
themselves are made by :mod:`bridge.pulsar_io`.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import _pulsar
import pulsar.asyncio as pulsar_asyncio

from bridge.errors import BatchRefused, BrokerError, ResultRejected


class CallbackThreads:
    """Keeps a Python thread state alive on each client thread that runs our callbacks.

    The client answers sends and flushes by calling Python from its own I/O thread. For
    a thread Python did not start, pybind11 creates a thread state before each call and
    destroys it after: a 16 KiB frame-stack mmap and munmap per call, each unmap
    interrupting the loop's CPU to flush its TLB. Measured on 100,000 send confirmations:
    13 us of CPU per call, 3.5 us with the state kept. One outstanding
    ``PyGILState_Ensure`` on the thread keeps it for the thread's lifetime: the pattern
    CPython's C-API documentation gives for foreign threads that call in repeatedly
    (python/cpython#146219; pybind/pybind11#6179). A state is a few hundred bytes, and
    the client's threads live as long as the client.
    """

    def __init__(self) -> None:
        self._pinned: set[int] = set()

    def pin(self) -> None:
        """Call from inside a callback: pins the calling thread's state on first use."""
        ident = threading.get_ident()
        if ident not in self._pinned:
            ctypes.pythonapi.PyGILState_Ensure()  # never released, on purpose
            self._pinned.add(ident)


# A message to publish: payload, properties (a dict, as the extension takes them), key.
OutgoingMessage = tuple[bytes, dict[str, str], str | None]

# Results of a send that fail the same way every time.
_REJECTED = frozenset({_pulsar.Result.MessageTooBig, _pulsar.Result.InvalidMessage})

# A message this large may exceed the broker's message size limit on its own, and a batch
# the client cannot send fails alone; so each such message gets its own confirmation.
CONFIRM_EACH_ABOVE_BYTES = 64 * 1024

# What one deduplicated batch (:meth:`Publisher.publish_batch`) may hold. A producer made
# for them batches up to exactly these bounds and has no time bound, so the client closes
# a batch only when it is full or flushed: a batch within them leaves as one broker entry.
DEDUP_BATCH_MAX_MESSAGES = 1000
DEDUP_BATCH_MAX_BYTES = 512 * 1024


class Publisher:
    """A producer on one topic; publishing returns once the broker has the messages.

    How a batch is confirmed. The client calls back on its I/O thread, and each callback
    into Python takes the GIL from the event loop: one per message cost more CPU than the
    rest of the relay (bench: 47 -> 31 us per event without them). So messages go out
    without a callback and the batch ends with one ``flush``, whose callback fires when
    the producer's last pending send completes. Sends complete in order, and the client
    fails every pending send on a timeout or when the producer closes, so an Ok flush
    means the whole batch is stored; any other outcome fails every message of the batch
    (redelivered: duplicates at worst, never a loss). What a flush cannot report are
    failures of one send alone, and those are covered instead:

    * a full producer queue: the client's queue is unbounded (``max_pending_messages``
      0, no client memory limit) and this class bounds what is pending, waiting for room;
    * a message too large for the broker: messages over ``CONFIRM_EACH_ABOVE_BYTES`` are
      confirmed one by one;
    * partitioned topics, whose flush answers for the partitions together and can return
      before a concurrent batch is stored: every message is confirmed one by one.

    Left uncovered: a send the broker rejects for a checksum mismatch (corruption
    between the client's memory and the broker); the client logs it as a warning.
    """

    def __init__(
        self,
        producer: pulsar_asyncio.Producer,
        topic: str,
        threads: CallbackThreads,
        *,
        max_pending: int,
        partitioned: bool,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._threads = threads
        self._max_pending = max_pending
        self._confirm_each = partitioned
        self._pending = 0
        self._room = asyncio.Event()

    @property
    def last_sequence_id(self) -> int:
        """The highest sequence id the broker confirmed for this producer's name (-1: none);
        with deduplication on, known from the broker as soon as the producer is created."""
        return int(self._producer._producer.last_sequence_id())

    @property
    def confirms_each_message(self) -> bool:
        """Whether each message is confirmed on its own (partitioned topics)."""
        return self._confirm_each

    async def publish(
        self, data: bytes, properties: dict[str, str], key: str | None = None
    ) -> None:
        (error,) = await self.publish_all([(data, properties, key)])
        if error is not None:
            raise error

    async def publish_all(
        self, messages: Sequence[OutgoingMessage], sequence_ids: Sequence[int] | None = None
    ) -> list[BrokerError | None]:
        """Publish in order; one outcome per message (None when the broker stored it).
        ``sequence_ids``, when given, are set on the messages (broker deduplication)."""
        outcomes: list[BrokerError | None] = [None] * len(messages)
        for start in range(0, len(messages), self._max_pending):
            chunk = messages[start : start + self._max_pending]
            await self._reserve(len(chunk))
            await self._send(chunk, outcomes, start, sequence_ids)
        return outcomes

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], sequence_id: int
    ) -> BrokerError | None:
        """Publish ``messages`` as one batch, one broker entry, that broker deduplication
        keeps or drops as a whole by ``sequence_id``; None once the broker has it.

        The producer must be one made for deduplicated batches (``dedup_batches`` in
        :meth:`bridge.pulsar_io.PulsarConnection.publisher`) and the batch within
        ``DEDUP_BATCH_MAX_MESSAGES`` and ``DEDUP_BATCH_MAX_BYTES`` of payload. Every message
        carries ``sequence_id``: the C++ client names a batch by its first message's id and
        sends no highest id, so the broker remembers exactly the id given here. A batch of
        more than one message refused as too large comes back as BatchRefused.
        """
        outcomes: list[BrokerError | None] = [None] * len(messages)
        await self._reserve(len(messages))
        flushed = await self._send(messages, outcomes, 0, [sequence_id] * len(messages))
        refused = flushed in _REJECTED or any(isinstance(o, ResultRejected) for o in outcomes)
        if refused and len(messages) > 1:
            return BatchRefused(f"publish to {self.topic} failed: {flushed}: batch too large")
        return next((outcome for outcome in outcomes if outcome is not None), None)

    async def _reserve(self, count: int) -> None:
        while self._pending and self._pending + count > self._max_pending:
            self._room.clear()
            await self._room.wait()
        self._pending += count

    def _release(self, count: int) -> None:
        self._pending -= count
        self._room.set()

    async def _send(
        self,
        chunk: Sequence[OutgoingMessage],
        outcomes: list[BrokerError | None],
        start: int,
        sequence_ids: Sequence[int] | None = None,
    ) -> Any:
        """Send ``chunk`` and flush; fills ``outcomes`` and returns the flush's result."""
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()
        confirmations = _Confirmations(
            loop, self._threads.pin, functools.partial(self._settle, settled, len(chunk))
        )
        raw = self._producer._producer
        for index, (data, properties, key) in enumerate(chunk, start):
            builder = _pulsar.MessageBuilder()
            builder.content(data)
            builder.properties(properties)  # one call into the extension, not one per key
            if key:
                builder.partition_key(key)
            if sequence_ids is not None:
                builder.sequence_id(sequence_ids[index])
            confirm_each = self._confirm_each or len(data) > CONFIRM_EACH_ABOVE_BYTES
            callback = confirmations.expect(index) if confirm_each else None
            try:
                raw.send_async(builder.build(), callback)
            except _pulsar.PulsarException as exc:
                outcomes[index] = BrokerError(f"publish to {self.topic} failed: {exc}")
                if callback is not None:
                    confirmations.unexpect()
        raw.flush_async(confirmations.flushed)
        await settled
        for index, result in confirmations.failed.items():
            kind = ResultRejected if result in _REJECTED else BrokerError
            outcomes[index] = kind(f"publish to {self.topic} failed: {result}")
        if confirmations.flush_result != _pulsar.Result.Ok and not self._confirm_each:
            error = BrokerError(f"publish to {self.topic} failed: {confirmations.flush_result}")
            for index in range(start, start + len(chunk)):
                outcomes[index] = outcomes[index] or error
        return confirmations.flush_result

    def _settle(self, settled: asyncio.Future[None], count: int) -> None:
        # Room is given back here, on the loop, even if the publishing task was cancelled:
        # the messages stayed with the client until now.
        self._release(count)
        if not settled.done():
            settled.set_result(None)

    async def close(self) -> None:
        try:
            await self._producer.flush()
            await self._producer.close()
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"closing producer on {self.topic} failed: {exc}") from exc


class _Confirmations:
    """The callbacks one batch waits for: its flush, and each message confirmed alone.

    They run on the client's I/O thread; the last one to arrive schedules ``on_settled``
    on the event loop.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pin: Callable[[], None],
        on_settled: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._pin = pin
        self._on_settled = on_settled
        self._lock = threading.Lock()
        self._waiting = 1  # the flush
        self.flush_result: Any = None
        self.failed: dict[int, Any] = {}

    def expect(self, index: int) -> Callable[[Any, Any], None]:
        """The send callback for the message at ``index``."""
        with self._lock:
            self._waiting += 1
        return functools.partial(self._confirmed, index)

    def unexpect(self) -> None:
        """A send that raised: its callback will not come."""
        self._done()

    def flushed(self, result: Any) -> None:
        self._pin()
        self.flush_result = result
        self._done()

    def _confirmed(self, index: int, result: Any, _message_id: Any) -> None:
        self._pin()
        if result != _pulsar.Result.Ok:
            self.failed[index] = result
        self._done()

    def _done(self) -> None:
        with self._lock:
            self._waiting -= 1
            last = self._waiting == 0
        if last:
            self._loop.call_soon_threadsafe(self._on_settled)
