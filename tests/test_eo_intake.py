"""An effectively-once route's intake (bridge.eo_intake): what each admitted event becomes,
with scripted producers in place of the broker."""

from __future__ import annotations

import asyncio
from typing import cast

from bridge import eo_intake
from bridge.effectively_once import EffectivelyOnce
from bridge.observe import Metrics, RouteMetrics
from bridge.partition_line import SequencedPublisher
from bridge.pulsar_source import Position, Received, Source
from tests.test_effectively_once import FakeReceived, ScriptedProducer, seq
from tests.test_settle import FakeSource


def received(entry: int) -> Received:
    return cast(Received, FakeReceived(entry))


async def test_stored_events_are_acked_second_deliveries_dropped_the_rest_kept() -> None:
    async def open_producer(name: str) -> SequencedPublisher:
        return cast(SequencedPublisher, ScriptedProducer(last=seq(2)))

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    registry = Metrics()
    source, metrics = FakeSource(), RouteMetrics(registry, "fraud")
    rejected: list[tuple[Received, str]] = []
    beyond = cast(Received, FakeReceived(0))
    beyond.position = Position(0, 1 << 31, 0, -1)  # type: ignore[misc]  # no id can hold it
    messages = [received(1), received(2), received(3), received(3), beyond, received(4)]
    fresh = await eo_intake.admit(
        eo,
        messages,
        source=cast(Source, source),
        metrics=metrics,
        stopping=asyncio.Event(),
        reject=lambda message, reason: rejected.append((message, reason)),
    )
    assert [m.message_id for m in fresh] == ["(5,3,-1,-1)", "(5,4,-1,-1)"]
    assert source.acked == ["(5,1,-1,-1)", "(5,2,-1,-1)"], "their results are stored"
    stored = registry.registry.get_sample_value("bridge_already_stored_total", {"route": "fraud"})
    assert stored == 2
    assert [m for m, _ in rejected] == [beyond]
    assert "exceeds the effectively-once sequence range" in rejected[0][1]
    assert source.nacked == []


async def test_a_stop_while_a_line_opens_hands_the_events_back() -> None:
    opened = asyncio.Event()

    async def open_producer(name: str) -> SequencedPublisher:
        await opened.wait()  # the previous owner still holds the name
        return cast(SequencedPublisher, ScriptedProducer())

    eo = EffectivelyOnce("fraud", "sub", open_producer)
    source, stopping = FakeSource(), asyncio.Event()
    admitting = asyncio.ensure_future(
        eo_intake.admit(
            eo,
            [received(1), received(2)],
            source=cast(Source, source),
            metrics=RouteMetrics(Metrics(), "fraud"),
            stopping=stopping,
            reject=lambda message, reason: None,
        )
    )
    await asyncio.sleep(0)
    stopping.set()
    assert await admitting == []
    assert source.nacked == ["(5,1,-1,-1)", "(5,2,-1,-1)"]
    opened.set()
    await eo.close()
