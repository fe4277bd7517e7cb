"""The Publisher against a real broker: batches confirmed by one flush, and the cases a
flush cannot answer for (an oversized message, partitioned topics, a closed producer)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import _pulsar
import httpx
import pulsar
import pytest

from bridge.config_bridge import PulsarSettings
from bridge.errors import BrokerError, ResultRejected
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_publish import CONFIRM_EACH_ABOVE_BYTES
from tests.conftest import APACHE_ONLY, Broker
from tests.support.harness import unique_topic

Message = tuple[bytes, dict[str, str], str | None]


@pytest.fixture
async def connection(broker: Broker) -> AsyncIterator[PulsarConnection]:
    pulsar_connection = PulsarConnection(PulsarSettings(service_url=broker.url))
    yield pulsar_connection
    await pulsar_connection.close()


def read_all(client: pulsar.Client, topic: str, count: int) -> list[pulsar.Message]:
    """The first ``count`` messages stored on ``topic``, in order (fails if fewer)."""
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    try:
        return [reader.read_next(timeout_millis=10_000) for _ in range(count)]
    finally:
        reader.close()


def nothing_more(client: pulsar.Client, topic: str, stored: int) -> bool:
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    try:
        for _ in range(stored):
            reader.read_next(timeout_millis=10_000)
        return not reader.has_message_available()
    finally:
        reader.close()


async def test_batches_are_stored_in_order_with_room_bounded(
    connection: PulsarConnection, pulsar_client: pulsar.Client
) -> None:
    topic = unique_topic("publisher")
    publisher = await connection.publisher(topic, max_pending=64)
    messages = [(f'{{"n": {n}}}'.encode(), {"n": str(n)}, f"key-{n % 7}") for n in range(500)]
    # Two batches at once, each larger than the room: both wait their turn, in chunks.
    first, second = await asyncio.gather(
        publisher.publish_all(messages[:250]), publisher.publish_all(messages[250:])
    )
    assert first + second == [None] * 500
    stored = read_all(pulsar_client, topic, 500)
    by_n = {int(m.properties()["n"]): m for m in stored}
    assert sorted(by_n) == list(range(500)), "every message stored once"
    for n, message in by_n.items():
        assert message.data() == messages[n][0]
        assert message.partition_key() == f"key-{n % 7}"
    # Within one publish_all call, order is kept.
    first_half = [int(m.properties()["n"]) for m in stored if int(m.properties()["n"]) < 250]
    assert first_half == list(range(250))
    await publisher.close()


async def test_an_oversized_message_fails_alone(
    connection: PulsarConnection, pulsar_client: pulsar.Client
) -> None:
    topic = unique_topic("oversized")
    publisher = await connection.publisher(topic)
    too_big = b"x" * (6 * 1024 * 1024)  # over the broker's 5 MiB default
    large_but_fine = b"y" * (CONFIRM_EACH_ABOVE_BYTES + 1)
    outcomes = await publisher.publish_all(
        [
            (b"before", {}, None),
            (too_big, {}, None),
            (large_but_fine, {}, None),
            (b"after", {}, None),
        ]
    )
    assert [outcome is None for outcome in outcomes] == [True, False, True, True]
    assert isinstance(outcomes[1], ResultRejected), "sending it again cannot help"
    assert "MessageTooBig" in str(outcomes[1])
    assert topic in str(outcomes[1])
    stored = [m.data() for m in read_all(pulsar_client, topic, 3)]
    assert stored == [b"before", large_but_fine, b"after"]
    assert nothing_more(pulsar_client, topic, 3)
    await publisher.close()


async def test_a_closed_producer_fails_the_whole_batch(connection: PulsarConnection) -> None:
    publisher = await connection.publisher(unique_topic("closed"))
    await publisher.close()
    outcomes = await publisher.publish_all([(b"a", {}, None), (b"b", {}, None)])
    assert all(isinstance(outcome, BrokerError) for outcome in outcomes), outcomes


async def test_room_comes_back_when_a_publishing_task_is_cancelled(
    connection: PulsarConnection, pulsar_client: pulsar.Client
) -> None:
    topic = unique_topic("cancelled")
    publisher = await connection.publisher(topic, max_pending=10)
    batch: list[Message] = [(f"{n}".encode(), {}, None) for n in range(10)]
    task = asyncio.ensure_future(publisher.publish_all(batch))
    await asyncio.sleep(0)  # sent, waiting on the broker
    task.cancel()
    # The cancelled batch's room is given back once the broker has answered, so the
    # next batch neither waits forever nor goes over the bound.
    assert await asyncio.wait_for(publisher.publish_all(batch), timeout=30) == [None] * 10
    assert len(read_all(pulsar_client, topic, 20)) == 20
    await publisher.close()


@APACHE_ONLY
async def test_partitioned_topics_confirm_every_message(
    broker: Broker, connection: PulsarConnection, pulsar_client: pulsar.Client
) -> None:
    topic = unique_topic("partitioned")
    admin_url = getattr(broker, "admin_url")  # noqa: B009 - the Apache broker's admin API
    async with httpx.AsyncClient(timeout=30) as admin:
        response = await admin.put(
            f"{admin_url}/admin/v2/persistent/public/default/{topic.rsplit('/', 1)[1]}/partitions",
            content="3",
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code in (204, 409), response.text
    publisher = await connection.publisher(topic)
    assert publisher.confirms_each_message, "a partitioned topic is detected"
    messages: list[Message] = [(f"{n}".encode(), {}, f"key-{n}") for n in range(300)]
    assert await publisher.publish_all(messages) == [None] * 300
    stored = read_all(pulsar_client, topic, 300)
    assert sorted(int(m.data()) for m in stored) == list(range(300))
    await publisher.close()


async def test_unpartitioned_topics_confirm_by_flush(connection: PulsarConnection) -> None:
    publisher = await connection.publisher(unique_topic("plain"))
    assert not publisher.confirms_each_message
    await publisher.close()


def test_a_flush_waits_for_sends_the_client_already_handed_to_the_broker(
    pulsar_client: pulsar.Client,
) -> None:
    # Publisher relies on this (apache/pulsar-client-cpp#303, #353): a full batch goes out
    # at once, so the flush finds nothing left to batch; it must still answer only after
    # the broker stored what was sent. Older clients answered such a flush at once.
    producer = pulsar_client.create_producer(
        unique_topic("flush"), batching_max_messages=10, batching_max_publish_delay_ms=1000
    )
    raw = producer._producer  # the C extension's producer, as Publisher uses it
    for _ in range(5):
        assert one_full_batch_then_flush(raw) == ["stored", "flushed"]
    producer.close()


def one_full_batch_then_flush(raw: Any) -> list[str]:
    """Send exactly one full batch (the last send with a callback), then flush; the order
    in which the two callbacks came."""
    order: list[str] = []
    flushed = threading.Event()

    def stored(_result: Any, _message_id: Any) -> None:
        order.append("stored")

    def on_flush(_result: Any) -> None:
        order.append("flushed")
        flushed.set()

    for n in range(10):
        builder = _pulsar.MessageBuilder()
        builder.content(f"{n}".encode())
        raw.send_async(builder.build(), stored if n == 9 else None)
    raw.flush_async(on_flush)
    assert flushed.wait(10), "the flush never answered"
    return order


class _RecordingClient:
    """Stands in for the C extension's client: records how it was closed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")

    def close_async(self, callback: Any) -> None:
        self.calls.append("close_async")
        callback(_pulsar.Result.Ok)


async def test_closing_leaves_no_python_callback_in_the_client() -> None:
    # The C++ client drops a close's callback on a detached thread after the close has
    # completed; a Python callback dropped there while the process exits aborts it
    # (apache/pulsar-client-python#256). So the close is the blocking one, in a thread.
    connection = PulsarConnection(PulsarSettings(service_url="pulsar://127.0.0.1:9"))
    real, recording = connection._client._client, _RecordingClient()
    connection._client._client = recording
    try:
        await connection.close()
    finally:
        connection._client._client = real
        real.close()
    assert recording.calls == ["close"]
