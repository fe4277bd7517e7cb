"""The settler: each way an event ends, counted once."""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

import pytest

from bridge.errors import BrokerError
from bridge.observe import Metrics, RouteMetrics
from bridge.pulsar_source import Received, Source
from bridge.settle import Settler

_ids = itertools.count()


class FakeReceived:
    def __init__(self) -> None:
        self.data = b'{"id": 1}'
        self.key = "k"
        self.topic = "persistent://public/default/events"
        self.message_id = f"(1,{next(_ids)},-1,-1)"
        self.properties = {"origin": "test"}
        self.redelivery_count = 2


class FakeEvent:
    def __init__(self) -> None:
        self.received = cast(Received, FakeReceived())
        self.settled = False


class FakeSource:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.nacked: list[str] = []

    def ack(self, received: Received) -> None:
        self.acked.append(received.message_id)

    def nack(self, received: Received) -> None:
        self.nacked.append(received.message_id)


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[bytes, dict[str, str], str | None]] = []

    async def publish(self, data: bytes, properties: dict[str, str], key: str | None) -> None:
        if self.fail:
            raise BrokerError("DLQ unavailable")
        self.sent.append((data, properties, key))


def settler(source: FakeSource, sink: Sink) -> tuple[Settler, RouteMetrics]:
    metrics = RouteMetrics(Metrics(), "fraud")
    return Settler("fraud", cast(Source, source), sink, metrics), metrics


def test_stored_acks_each_event_once() -> None:
    source, sink = FakeSource(), Sink()
    s, metrics = settler(source, sink)
    events = [FakeEvent(), FakeEvent()]
    s.stored(events)
    s.stored(events)
    s.nack(events)
    assert len(source.acked) == 2
    assert source.nacked == []
    assert metrics.results_out == 2


async def test_a_dead_letter_keeps_the_original_and_says_why_then_acks() -> None:
    source, sink = FakeSource(), Sink()
    s, metrics = settler(source, sink)
    event = FakeEvent()
    await s.dead_letter(event, "HTTP 400: bad row")
    ((data, props, key),) = sink.sent
    assert data == b'{"id": 1}'
    assert key == "k"
    assert props["error"] == "HTTP 400: bad row"
    assert props["origin"] == "test"
    assert props["route"] == "fraud"
    assert source.acked == [event.received.message_id]
    assert metrics.dead_lettered == 1


async def test_a_dead_letter_the_broker_refuses_is_nacked_never_dropped() -> None:
    source, sink = FakeSource(), Sink(fail=True)
    s, metrics = settler(source, sink)
    event = FakeEvent()
    await s.dead_letter(event, "HTTP 400: bad row")
    assert source.acked == []
    assert source.nacked == [event.received.message_id]
    assert metrics.dead_lettered == 0
    assert metrics.nacked == 1


def test_nack_skips_settled_events() -> None:
    source, sink = FakeSource(), Sink()
    s, metrics = settler(source, sink)
    done, left = FakeEvent(), FakeEvent()
    s.stored([done])
    s.nack([done, left])
    assert source.nacked == [left.received.message_id]
    assert metrics.nacked == 1


class FlakySink(Sink):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, data: bytes, properties: dict[str, str], key: str | None) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerError("DLQ unavailable")
        await super().publish(data, properties, key)


async def test_an_effectively_once_dead_letter_is_sent_again_in_place_not_nacked() -> None:
    source, sink = FakeSource(), FlakySink(failures=2)
    ended: list[bool] = []
    metrics = RouteMetrics(Metrics(), "fraud")
    s = Settler(
        "fraud",
        cast(Source, source),
        sink,
        metrics,
        on_end=lambda _r, nacked: ended.append(nacked),
        persist_dead_letters=True,
    )
    event = FakeEvent()
    await s.dead_letter(event, "HTTP 400: bad row")
    assert len(sink.sent) == 1
    assert source.acked == [event.received.message_id]
    assert source.nacked == []
    assert ended == [False]


async def test_a_dead_letter_cancelled_on_its_way_is_handed_back() -> None:
    source = FakeSource()
    gate = asyncio.Event()

    class Stuck(Sink):
        async def publish(self, data: bytes, properties: dict[str, str], key: str | None) -> None:
            await gate.wait()

    s, _ = settler(source, Stuck())
    event = FakeEvent()
    task = asyncio.ensure_future(s.dead_letter(event, "HTTP 400: bad row"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.nacked == [event.received.message_id]
