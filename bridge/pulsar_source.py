"""What the bridge reads from Pulsar: a received message, its position, a route's consumer
(:class:`Source`: receive, ack, nack) and the tools' :class:`TopicReader`.

Pulsar's exceptions leave this module as :class:`~bridge.errors.BrokerError` naming the
topic; the consumers and readers themselves are made by :mod:`bridge.pulsar_io`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import _pulsar
import pulsar.asyncio as pulsar_asyncio
import structlog

from bridge.closing import close_off_loop
from bridge.errors import BrokerError

log = structlog.get_logger("bridge.pulsar")


class Received:
    """One consumed message, reduced to what the relay needs (slots: one per event).

    Properties and the redelivery count are read from the message only when asked for:
    they matter on the failure paths, and reading them costs per event.
    """

    __slots__ = ("data", "key", "message", "message_id", "topic")

    def __init__(self, message: Any) -> None:
        self.message = message  # the C extension's message: no Python wrapper per event
        self.data: bytes = message.data()
        self.key: str | None = message.partition_key() or None
        self.topic: str = message.topic_name()
        self.message_id: str = str(message.message_id())

    @property
    def properties(self) -> dict[str, str]:
        props: dict[str, str] = self.message.properties()
        return props

    @property
    def redelivery_count(self) -> int:
        return int(self.message.redelivery_count())

    @property
    def schema_version(self) -> int:
        """The version of the topic's schema the producer wrote with; -1 when none."""
        return int(self.message.int_schema_version())

    @property
    def publish_time_ms(self) -> int:
        """When the broker stored the message (milliseconds since the epoch)."""
        return int(self.message.publish_timestamp())

    @property
    def position(self) -> Position:
        return Position.of(self.message.message_id())


@dataclass(frozen=True, order=True)
class Position:
    """Where a message is stored: a broker entry, and its index when the entry is a batch."""

    partition: int
    ledger: int
    entry: int
    batch_index: int  # -1 when the entry holds one message

    @classmethod
    def of(cls, message_id: Any) -> Position:
        return cls(
            int(message_id.partition()),
            int(message_id.ledger_id()),
            int(message_id.entry_id()),
            int(message_id.batch_index()),
        )

    @property
    def entry_key(self) -> tuple[int, int, int]:
        """The entry: Pulsar acknowledges a batch as a whole unless batch-index acks are on."""
        return (self.partition, self.ledger, self.entry)


class Source:
    """A route's consumer: receive, ack, nack."""

    def __init__(self, consumer: pulsar_asyncio.Consumer, description: str) -> None:
        self._consumer = consumer
        self.description = description

    async def receive(self) -> Received:
        """Wait for the next message."""
        try:
            return Received((await self._consumer.receive())._message)
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"receive on {self.description} failed: {exc}") from exc

    def receive_ready(self, limit: int) -> list[Received]:
        """Up to ``limit`` messages already in the client's queue, without waiting.

        One awaited receive wakes the loop per message; taking what has already arrived
        in the same turn is what lets intake keep up with a backlog.
        """
        out: list[Received] = []
        raw = self._consumer._consumer
        try:
            while len(out) < limit:
                out.append(Received(raw.receive(0)))
        except _pulsar.Timeout:
            pass  # the queue is empty: the normal way out
        except _pulsar.PulsarException as exc:
            if not out:
                raise BrokerError(f"receive on {self.description} failed: {exc}") from exc
        return out

    def ack(self, received: Received) -> None:
        """Acknowledge without waiting on the broker.

        The client groups acks and sends them in batches, so its acknowledge returns at
        once; calling it directly avoids a Python callback (and a GIL hand-off from the
        client's thread) per event. A failed ack leaves the event unacked, so it is
        redelivered: a duplicate, never a loss.
        """
        try:
            self._consumer._consumer.acknowledge(received.message)
        except _pulsar.PulsarException as exc:
            log.warning("ack_failed", source=self.description, error=str(exc))

    def is_connected(self) -> bool:
        return bool(self._consumer._consumer.is_connected())

    def nack(self, received: Received) -> None:
        # The asyncio wrapper runs nack in a thread; the C++ call only marks the message for
        # redelivery and does not block, so calling it directly keeps the loop thread-free.
        self._consumer._consumer.negative_acknowledge(received.message)

    async def close(self) -> None:
        try:
            await self._consumer.close()
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"closing {self.description} failed: {exc}") from exc

    async def last_position(self) -> Position | None:
        """The position of the newest message on the topic; None when it has none.

        pulsar-lite answers an empty topic with an error (UnknownError, "Topic has no
        messages"), Apache Pulsar with an id before the first entry: both mean none.
        """
        try:
            found = await asyncio.to_thread(self._consumer._consumer.get_last_message_id)
        except _pulsar.UnknownError:
            return None
        except _pulsar.PulsarException as exc:
            raise BrokerError(f"last message id of {self.description}: {exc}") from exc
        position = Position.of(found)
        return None if position.entry < 0 else position


class TopicReader:
    """Reads a topic from its first message without a durable subscription (the tools).

    The client's reader holds a non-durable subscription that ends with it, so reading
    acknowledges nothing and keeps nothing on the broker (pulsar-lite keeps the reader's
    subscription after it closes: see the README). The synchronous reader calls run in a
    worker thread: they exist in every client version the project supports, the
    asynchronous ones only from 3.13.
    """

    # The wait for a message the broker said is available (it is on its way).
    AVAILABLE_WAIT_MS = 10_000

    def __init__(self, reader: Any, topic: str) -> None:
        self._reader = reader
        self.topic = topic

    async def read_available(self, limit: int) -> list[Received]:
        """Up to ``limit`` of the messages stored so far and not yet read; [] at the end."""
        return await asyncio.to_thread(self._read_available, limit)

    def _read_available(self, limit: int) -> list[Received]:
        out: list[Received] = []
        try:
            while len(out) < limit and self._reader.has_message_available():
                out.append(Received(self._reader.read_next(self.AVAILABLE_WAIT_MS)))
        except _pulsar.UnknownError:
            pass  # pulsar-lite's answer when asked about a topic with no messages yet
        except _pulsar.PulsarException as exc:
            raise BrokerError(f"reading {self.topic} failed: {exc}") from exc
        return out

    async def read(self, timeout_ms: int) -> Received | None:
        """The next message, or None when none arrived within ``timeout_ms``."""
        try:
            return Received(await asyncio.to_thread(self._reader.read_next, timeout_ms))
        except _pulsar.Timeout:
            return None
        except _pulsar.PulsarException as exc:
            raise BrokerError(f"reading {self.topic} failed: {exc}") from exc

    async def close(self) -> None:
        try:
            await close_off_loop(self._reader.close, f"closing the reader of {self.topic}")
        except _pulsar.PulsarException as exc:
            raise BrokerError(f"closing the reader of {self.topic} failed: {exc}") from exc
