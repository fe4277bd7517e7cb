"""Everything that touches Pulsar: the client, a route's consumer and its producers.

This is the only module that imports ``pulsar``. It hands the relay :class:`Received`
messages and takes back acks, nacks and publishes; Pulsar's exceptions leave it as
:class:`~bridge.errors.BrokerError` naming the topic and the setting to look at.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulsar
import pulsar.asyncio as pulsar_asyncio

from bridge.config import PulsarOAuth2Auth, PulsarSettings, PulsarTokenAuth, SourceSettings
from bridge.errors import BrokerError

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
    """One consumed message, reduced to what the relay needs (slots: one per event)."""

    __slots__ = ("data", "key", "message", "message_id", "properties", "redelivery_count", "topic")

    def __init__(self, message: pulsar.Message) -> None:
        self.message = message
        self.data: bytes = message.data()
        self.key: str | None = message.partition_key() or None
        self.topic: str = message.topic_name()
        self.redelivery_count: int = message.redelivery_count()
        self.message_id: str = str(message.message_id())
        self.properties: dict[str, str] = message.properties()


class Source:
    """A route's consumer: receive, ack, nack."""

    def __init__(self, consumer: pulsar_asyncio.Consumer, description: str) -> None:
        self._consumer = consumer
        self.description = description

    async def receive(self) -> Received:
        try:
            return Received(await self._consumer.receive())
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"receive on {self.description} failed: {exc}") from exc

    async def ack(self, received: Received) -> None:
        try:
            await self._consumer.acknowledge(received.message)
        except pulsar_asyncio.PulsarException as exc:
            # An ack that fails leaves the event unacked: it is redelivered, never lost.
            raise BrokerError(f"ack on {self.description} failed: {exc}") from exc

    def is_connected(self) -> bool:
        return bool(self._consumer._consumer.is_connected())

    def nack(self, received: Received) -> None:
        # The asyncio wrapper runs nack in a thread; the C++ call only marks the message for
        # redelivery and does not block, so calling it directly keeps the loop thread-free.
        self._consumer._consumer.negative_acknowledge(received.message._message)

    async def close(self) -> None:
        try:
            await self._consumer.close()
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"closing {self.description} failed: {exc}") from exc


class Publisher:
    """A producer on one topic; ``publish`` returns once the broker has the message."""

    def __init__(self, producer: pulsar_asyncio.Producer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    async def publish(
        self, data: bytes, properties: Mapping[str, str], key: str | None = None
    ) -> None:
        try:
            await self._producer.send(data, properties=dict(properties), partition_key=key)
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"publish to {self.topic} failed: {exc}") from exc

    async def close(self) -> None:
        try:
            await self._producer.flush()
            await self._producer.close()
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"closing producer on {self.topic} failed: {exc}") from exc


class PulsarConnection:
    """One client per daemon, shared by all routes (the C++ client multiplexes)."""

    def __init__(self, settings: PulsarSettings) -> None:
        self.settings = settings
        self._client = pulsar_asyncio.Client(settings.service_url, **_client_kwargs(settings))

    async def subscribe(
        self,
        source: SourceSettings,
        *,
        nack_delay_ms: int,
        consumer_name: str | None = None,
    ) -> Source:
        description = f"{','.join(source.topics)} (subscription {source.subscription})"
        try:
            consumer = await self._client.subscribe(
                list(source.topics),
                source.subscription,
                consumer_type=_CONSUMER_TYPES[source.subscription_type],
                initial_position=_POSITIONS[source.initial_position],
                receiver_queue_size=source.receiver_queue_size,
                negative_ack_redelivery_delay_ms=nack_delay_ms,
                consumer_name=consumer_name,
            )
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(
                f"cannot subscribe to {description} at {self.settings.service_url}: {exc}"
                f"{_hint(exc)}"
            ) from exc
        return Source(consumer, description)

    async def publisher(self, topic: str, *, max_pending: int = 10_000) -> Publisher:
        try:
            producer = await self._client.create_producer(
                topic,
                max_pending_messages=max_pending,
                # Blocking on a full queue would block the event loop thread; a full queue
                # fails the publish instead, and the event is nacked and redelivered.
                block_if_queue_full=False,
                batching_enabled=True,
                batching_max_publish_delay_ms=5,
                batching_max_messages=1000,
            )
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"cannot create a producer on {topic}: {exc}{_hint(exc)}") from exc
        return Publisher(producer, topic)

    async def close(self) -> None:
        try:
            await self._client.close()
        except pulsar_asyncio.PulsarException as exc:
            raise BrokerError(f"closing the Pulsar client failed: {exc}") from exc


def _client_kwargs(settings: PulsarSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        # The C++ client's own console logger, warnings and up: handing it a Python logger
        # intermittently aborts the process at exit ("terminate called without an active
        # exception", apache/pulsar-client-python#256).
        "logger": pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
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


def _hint(exc: pulsar_asyncio.PulsarException) -> str:
    """Point at the bridge.toml setting most likely behind a connection-level failure."""
    name = exc.error().name if hasattr(exc, "error") else ""
    hints = {
        "AuthenticationError": " (check [pulsar] auth in bridge.toml)",
        "AuthorizationError": " (the [pulsar] auth role lacks permission on this topic)",
        "ConnectError": " (check [pulsar] service_url and tls_trust_certs_file)",
        "Timeout": " (broker unreachable: check [pulsar] service_url)",
    }
    return hints.get(name, "")
