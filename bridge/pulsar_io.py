"""Everything that touches Pulsar: the client, a route's consumer and its producers.

This is the only module that imports ``pulsar``. It hands the relay :class:`Received`
messages and takes back acks, nacks and publishes; Pulsar's exceptions leave it as
:class:`~bridge.errors.BrokerError` naming the topic and the setting to look at.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _pulsar
import pulsar
import pulsar.asyncio as pulsar_asyncio
import structlog

from bridge.config import PulsarOAuth2Auth, PulsarSettings, PulsarTokenAuth, SourceSettings
from bridge.errors import BrokerError, ResultRejected

log = structlog.get_logger("bridge.pulsar")

_CONSUMER_TYPES = {
    "shared": pulsar.ConsumerType.Shared,
    "key_shared": pulsar.ConsumerType.KeyShared,
    "failover": pulsar.ConsumerType.Failover,
    "exclusive": pulsar.ConsumerType.Exclusive,
}
_POSITIONS = {
    "earliest": pulsar.InitialPosition.Earliest,
    "latest": pulsar.InitialPosition.Latest,
}


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
            await asyncio.to_thread(self._reader.close)
        except _pulsar.PulsarException as exc:
            raise BrokerError(f"closing the reader of {self.topic} failed: {exc}") from exc


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
    ) -> None:
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


class _DeclaredSchema(pulsar.schema.Schema):  # type: ignore[misc]
    """A producer schema given as Pulsar's type name and definition text.

    The client's own schema classes derive the definition from a Python class and
    serialise it themselves; the bridge's result schemas are Avro definitions it derives,
    registered with exactly this text.
    """

    def __init__(self, type_name: str, definition: str) -> None:
        # Not the base __init__: it would serialise a definition object again.
        self._record_cls = None
        schema_type = getattr(_pulsar.SchemaType, type_name)
        self._schema_info = _pulsar.SchemaInfo(schema_type, "", definition)


class PulsarConnection:
    """One client per daemon, shared by all routes (the C++ client multiplexes)."""

    def __init__(self, settings: PulsarSettings) -> None:
        self.settings = settings
        self._client = pulsar_asyncio.Client(settings.service_url, **_client_kwargs(settings))
        self._callback_threads = CallbackThreads()

    async def subscribe(
        self,
        source: SourceSettings,
        *,
        nack_delay_ms: int,
        consumer_name: str | None = None,
    ) -> Source:
        return await self._subscribe(
            list(source.topics),
            source.subscription,
            consumer_type=_CONSUMER_TYPES[source.subscription_type],
            initial_position=_POSITIONS[source.initial_position],
            receiver_queue_size=source.receiver_queue_size,
            negative_ack_redelivery_delay_ms=nack_delay_ms,
            consumer_name=consumer_name,
        )

    async def publisher(
        self,
        topic: str,
        *,
        max_pending: int = 10_000,
        producer_name: str | None = None,
        schema: tuple[str, str] | None = None,
    ) -> Publisher:
        """A producer on ``topic``; at most ``max_pending`` messages wait on the broker.
        A ``producer_name`` is what broker deduplication keys on (effectively-once); such a
        producer does not batch: the C++ client sends a batch with its first message's
        sequence id alone (no highest id) and counts the ids of a batch as consecutive, so
        the broker would remember only the first id of each batch, and a message of the
        batch sent again later would be stored twice (seen in tests/test_effectively_once_e2e).
        ``schema`` (Pulsar's type name and definition text) is declared by the producer,
        so the broker registers it, or refuses it as incompatible, and every message
        carries its version; the caller encodes the payloads."""
        try:
            partitions = await self._partitions(topic)
            named = {} if producer_name is None else {"producer_name": producer_name}
            producer = await self._client.create_producer(
                topic,
                **named,
                schema=None if schema is None else _DeclaredSchema(*schema),
                # Unbounded in the client: Publisher bounds what is pending and waits for
                # room, so a send never fails for a full queue (it would fail silently).
                max_pending_messages=0,
                block_if_queue_full=False,
                batching_enabled=producer_name is None,
                batching_max_publish_delay_ms=5,
                batching_max_messages=1000,
            )
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(
                f"cannot create a producer on {topic}: {exc}{_hint(exc, self.settings)}"
            ) from exc
        return Publisher(
            producer,
            topic,
            self._callback_threads,
            max_pending=max_pending,
            partitioned=any("-partition-" in name for name in partitions),
        )

    async def exclusive_source(self, topic: str, subscription: str) -> Source:
        """One consumer alone on a durable subscription of one topic, from its earliest.

        For the replay tool: a single-topic consumer (the multi-topic one a route uses
        cannot tell the topic's last message id), and Exclusive, so a second replay on
        the same subscription is refused instead of sharing it.
        """
        return await self._subscribe(
            topic,
            subscription,
            consumer_type=pulsar.ConsumerType.Exclusive,
            initial_position=pulsar.InitialPosition.Earliest,
        )

    async def _subscribe(
        self, topics: str | list[str], subscription: str, **options: Any
    ) -> Source:
        """Subscribe; a refusal is a BrokerError naming the topics and a likely cause."""
        names = topics if isinstance(topics, str) else ",".join(topics)
        description = f"{names} (subscription {subscription})"
        try:
            consumer = await self._client.subscribe(topics, subscription, **options)
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(
                f"cannot subscribe to {description} at {self.settings.service_url}: {exc}"
                f"{_hint(exc, self.settings)}"
            ) from exc
        return Source(consumer, description)

    async def reader(self, topic: str) -> TopicReader:
        """A :class:`TopicReader` of ``topic`` from its earliest message."""
        conf = _pulsar.ReaderConfiguration()
        raw = self._client._client
        try:
            reader = await asyncio.to_thread(
                raw.create_reader, topic, _pulsar.MessageId.earliest, conf
            )
        except _pulsar.PulsarException as exc:
            raise BrokerError(
                f"cannot read {topic} at {self.settings.service_url}: {exc}"
                f"{_hint(exc, self.settings)}"
            ) from exc
        return TopicReader(reader, topic)

    async def lookup(self, topic: str) -> list[str]:
        """The topic's partitions (itself when not partitioned), as the broker answers:
        for ``check --connect``, which tries the broker without consuming or publishing."""
        try:
            return await self._partitions(topic)
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(
                f"cannot look up {topic} at {self.settings.service_url}: {exc}"
                f"{_hint(exc, self.settings)}"
            ) from exc

    async def schema_of(self, topic: str, version: int | None = None) -> tuple[str, str] | None:
        """The topic's schema (type name, definition) at ``version`` (None: the latest),
        asked of the broker over the binary protocol; None when it has no such schema."""
        raw = self._client._client
        try:
            info = await asyncio.to_thread(
                raw.get_schema_info, topic, -1 if version is None else version
            )
        except _pulsar.TopicNotFound:
            return None  # the broker's answer for a topic without that schema
        except _pulsar.PulsarException as exc:
            raise BrokerError(
                f"looking up the schema of {topic} failed: {exc}{_hint(exc, self.settings)}"
            ) from exc
        return str(info.schema_type().name), str(info.schema())

    async def _partitions(self, topic: str) -> list[str]:
        """The topic's partitions (the topic itself when it is not partitioned)."""
        answer: asyncio.Future[Sequence[str]] = asyncio.get_running_loop().create_future()
        # pulsar.asyncio's own completion: the result on the loop, PulsarException if not Ok.
        callback = functools.partial(pulsar_asyncio._set_future, answer)
        self._client._client.get_topic_partitions_async(topic, callback)
        return list(await answer)

    async def close(self) -> None:
        try:
            await self._client.close()
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"closing the Pulsar client failed: {exc}") from exc


# The bridge's log level -> the client's. The client's INFO lines (a dozen per producer
# or consumer it opens or closes) are detail for the bridge, shown at its debug level;
# the client's DEBUG lines (some nine per message) only a client developer needs.
_CLIENT_LOG_LEVELS = {
    "debug": pulsar.LoggerLevel.Info,
    "info": pulsar.LoggerLevel.Warn,
    "warning": pulsar.LoggerLevel.Warn,
    "error": pulsar.LoggerLevel.Error,
}
# The C++ client keeps one logger for the whole process, made from the first client's
# configuration; its level is therefore a process setting, chosen by the command before
# it creates a client (set_client_log_level), not a per-connection one.
_client_log_level = "warning"


def set_client_log_level(level: str) -> None:
    """Set the client's own log level from the bridge's: debug, info, warning or error."""
    global _client_log_level
    _client_log_level = level if level in _CLIENT_LOG_LEVELS else "warning"


def _client_kwargs(settings: PulsarSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        # The C++ client's own console logger, which filters by level in C++ and writes
        # to stdout (bridge.client_log turns those lines into structured ones). Handing it
        # a Python logger instead calls into Python for every line of every level, some
        # nine per message at full speed (its wrapper reports DEBUG as enabled), and
        # intermittently aborts the process at exit ("terminate called without an active
        # exception", apache/pulsar-client-python#256).
        "logger": pulsar.ConsoleLogger(_CLIENT_LOG_LEVELS[_client_log_level]),
        "operation_timeout_seconds": settings.operation_timeout_s,
        "connection_timeout_ms": settings.connection_timeout_s * 1000,
        "tls_allow_insecure_connection": settings.tls_allow_insecure,
    }
    if settings.tls_trust_certs_file is not None:
        kwargs["tls_trust_certs_file_path"] = settings.tls_trust_certs_file
    auth = settings.auth
    if isinstance(auth, PulsarTokenAuth):
        kwargs["authentication"] = pulsar.AuthenticationToken(auth.token.reveal())
    elif isinstance(auth, PulsarOAuth2Auth):
        params = {"issuer_url": auth.issuer_url, "private_key": auth.private_key}
        if auth.audience is not None:
            params["audience"] = auth.audience
        if auth.scope is not None:
            params["scope"] = auth.scope
        kwargs["authentication"] = pulsar.AuthenticationOauth2(json.dumps(params))
    return kwargs


def _hint(exc: pulsar_asyncio.PulsarException, settings: PulsarSettings) -> str:
    """Point at the bridge.toml setting most likely behind a connection-level failure."""
    # pulsar.asyncio's exception names its result; the extension's own classes are named
    # after it (a reader is made through the extension).
    name = exc.error().name if hasattr(exc, "error") else type(exc).__name__
    if name == "Timeout" and settings.auth is not None:
        # A broker that rejects a token closes the connection and the client only times
        # out, so with auth configured the credentials are as likely a cause as the address.
        return (
            " (broker unreachable, or it refused the credentials: check [pulsar] auth and "
            "[pulsar] service_url)"
        )
    hints = {
        "AuthenticationError": " (check [pulsar] auth in bridge.toml)",
        "AuthorizationError": " (the [pulsar] auth role lacks permission on this topic)",
        "ConnectError": " (check [pulsar] service_url and tls_trust_certs_file)",
        # A broker that requires a token closes a tokenless session: the client times out.
        "Timeout": (
            " (broker unreachable, or it requires authentication: check [pulsar] "
            "service_url and [pulsar] auth)"
        ),
    }
    return hints.get(name, "")
