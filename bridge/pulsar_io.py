"""The Pulsar client: one connection per daemon, and the consumers, producers, readers and
lookups made through it.

With :mod:`bridge.pulsar_source` (received messages, consumers, readers) and
:mod:`bridge.pulsar_publish` (producers and their confirmations), this is one of the only
modules that import ``pulsar``. Pulsar's exceptions leave them as
:class:`~bridge.errors.BrokerError` naming the topic and the setting to look at.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from typing import Any

import _pulsar
import pulsar
import pulsar.asyncio as pulsar_asyncio

from bridge.closing import close_off_loop
from bridge.config_bridge import PulsarOAuth2Auth, PulsarSettings, PulsarTokenAuth
from bridge.config_route import SourceSettings
from bridge.errors import BrokerError
from bridge.pulsar_publish import (
    DEDUP_BATCH_MAX_BYTES,
    DEDUP_BATCH_MAX_MESSAGES,
    CallbackThreads,
    Publisher,
)
from bridge.pulsar_source import Source, TopicReader

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
        producer is made for :meth:`Publisher.publish_batch`: it batches up to the bounds
        of one deduplicated batch and never on a timer, so each batch the caller composes
        and flushes leaves as one entry, kept or dropped whole by its one sequence id.
        (Batched by the client's own rules instead, a batch would carry its first
        message's id alone, the broker would remember only that, and a message of the
        batch sent again later would be stored twice: seen in tests/test_effectively_once_e2e.)
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
                **(_BATCHING if producer_name is None else _DEDUP_BATCHING),
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
        """Close the client: its producers, consumers and connections.

        The blocking close, on a thread and bounded (:mod:`bridge.closing`), rather than
        pulsar.asyncio's: the C++ client completes a close from a detached thread of its
        own, which then drops the callback it was given. pulsar.asyncio's callback is a
        Python object, and dropping it needs the GIL; when the process is already exiting
        by then, that thread dies inside a destructor and the process aborts ("terminate
        called without an active exception", or a segfault: 8 of 150 runs of open, close
        and exit here; the blocking close, whose callback is C++ only, 0 of 150;
        apache/pulsar-client-python#256).
        """
        try:
            await close_off_loop(self._client._client.close, "closing the Pulsar client")
        except _pulsar.PulsarException as exc:
            raise BrokerError(f"closing the Pulsar client failed: {exc}") from exc


# Results and dead letters: batches of what is ready, closed after 5 ms at the latest.
_BATCHING: dict[str, Any] = {
    "batching_enabled": True,
    "batching_max_publish_delay_ms": 5,
    "batching_max_messages": 1000,
}
# Deduplicated batches (Publisher.publish_batch): closed by a flush or when full, never by
# time, so a batch the caller composed is never split (the timer is set beyond any flush).
_DEDUP_BATCHING: dict[str, Any] = {
    "batching_enabled": True,
    "batching_max_publish_delay_ms": 3_600_000,
    "batching_max_messages": DEDUP_BATCH_MAX_MESSAGES,
    "batching_max_allowed_size_in_bytes": DEDUP_BATCH_MAX_BYTES,
}


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
