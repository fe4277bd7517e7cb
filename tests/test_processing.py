"""BatchProcessor's handling of results the broker does not confirm, with the broker and
the endpoint replaced by scripted stand-ins (the e2e suites cover the real ones; a
publish failure cannot be provoked there on cue)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import orjson

from bridge.config import RouteSettings, load_config
from bridge.errors import BrokerError
from bridge.events import Event
from bridge.observe import Metrics, RouteMetrics
from bridge.processing import BatchProcessor
from bridge.pulsar_io import Publisher, Received, Source
from bridge.retry import Circuit
from bridge.serving import Invocation, ServingClient
from tests.support.harness import Topics, route_config, write_config

Message = tuple[bytes, Mapping[str, str], str | None]


class FakeReceived:
    _ids = itertools.count()

    def __init__(self, key: str) -> None:
        self.data = b"{}"
        self.key = key
        self.topic = "persistent://public/default/events"
        self.message_id = f"(1,{next(self._ids)},-1,-1)"
        self.properties: dict[str, str] = {}
        self.redelivery_count = 0


class FakeSource:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.nacked: list[str] = []

    def ack(self, received: FakeReceived) -> None:
        self.acked.append(received.message_id)

    def nack(self, received: FakeReceived) -> None:
        self.nacked.append(received.message_id)


class FlakyPublisher:
    """Fails the first ``failures`` calls for every message, then stores everything."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[Message]] = []
        self.retried_twice = asyncio.Event()

    async def publish_all(self, messages: Sequence[Message]) -> list[BrokerError | None]:
        self.calls.append(list(messages))
        if len(self.calls) >= 3:
            self.retried_twice.set()
        if len(self.calls) <= self.failures:
            return [BrokerError("publish to results failed: AlreadyClosed")] * len(messages)
        return [None] * len(messages)


class AnsweringEndpoint:
    async def invoke(self, body: bytes) -> Invocation:
        rows = orjson.loads(body)["dataframe_records"]
        return Invocation({"predictions": [0.5] * len(rows)}, "m-1", 0.001)


def settings(tmp_path: Path, subscription_type: str) -> RouteSettings:
    route = route_config(
        Topics(), source={"subscription_type": subscription_type, "topics": ["events"]}
    )
    directory = write_config(
        tmp_path,
        service_url="pulsar://127.0.0.1:1",
        databricks={"host": "http://127.0.0.1:1", "auth_type": "none"},
        routes={"fraud": route},
    )
    return load_config(directory).routes[0]


def processor(
    route: RouteSettings, source: FakeSource, results: FlakyPublisher, stopping: asyncio.Event
) -> BatchProcessor:
    return BatchProcessor(
        route,
        source=cast(Source, source),
        results=cast(Publisher, results),
        dead_letters=cast(Publisher, FlakyPublisher(0)),
        serving=cast(ServingClient, AnsweringEndpoint()),
        circuit=Circuit(10),
        metrics=RouteMetrics(Metrics(), route.name),
        stopping=stopping,
    )


def batch(size: int) -> list[Event]:
    return [Event(cast(Received, FakeReceived(f"card-{i % 3}")), {}) for i in range(size)]


async def test_an_ordered_route_sends_unconfirmed_results_again_in_place(
    tmp_path: Path,
) -> None:
    source, results = FakeSource(), FlakyPublisher(failures=2)
    events = batch(6)
    await processor(settings(tmp_path, "key_shared"), source, results, asyncio.Event()).process(
        events
    )
    assert len(results.calls) == 3, "two failed publishes, then one that was stored"
    assert results.calls[0] == results.calls[2], "the same results, in the same order"
    assert source.nacked == [], "nothing handed back behind later events of its key"
    assert source.acked == [e.received.message_id for e in events]


async def test_a_shared_route_hands_unconfirmed_events_back(tmp_path: Path) -> None:
    source, results = FakeSource(), FlakyPublisher(failures=1)
    events = batch(4)
    await processor(settings(tmp_path, "shared"), source, results, asyncio.Event()).process(events)
    assert len(results.calls) == 1
    assert source.acked == []
    assert source.nacked == [e.received.message_id for e in events]


async def test_a_shutdown_ends_the_in_place_retries_and_hands_the_events_back(
    tmp_path: Path,
) -> None:
    source, results = FakeSource(), FlakyPublisher(failures=10**6)
    stopping = asyncio.Event()
    events = batch(3)
    work = asyncio.ensure_future(
        processor(settings(tmp_path, "key_shared"), source, results, stopping).process(events)
    )
    await asyncio.wait_for(results.retried_twice.wait(), timeout=10)
    stopping.set()
    await asyncio.wait_for(work, timeout=10)
    assert source.acked == []
    assert source.nacked == [e.received.message_id for e in events]
