"""An effectively-once route's side of intake (bridge.effectively_once has the rules).

Its partition lines get their producers on the result topic, and every received event is
admitted before it is batched: one whose result the broker already stored is acked at
once, a second delivery of one in progress is dropped, and the rest go on in source order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.config_route import RouteSettings
from bridge.effectively_once import EffectivelyOnce, OutOfRange
from bridge.errors import BrokerError, ShutdownRequested
from bridge.observe import RouteMetrics
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_publish import Publisher
from bridge.pulsar_source import Received, Source
from bridge.stopping import unless_stopping


def open_lines(
    pulsar: PulsarConnection,
    settings: RouteSettings,
    results: Publisher,
    *,
    max_pending: int,
    schema: tuple[str, str] | None,
) -> EffectivelyOnce:
    """The route's partition lines; each opens its named producer on first use."""
    if results.confirms_each_message:
        raise BrokerError(
            f"result.delivery = 'effectively-once' needs a non-partitioned result "
            f"topic ({settings.result.topic} is partitioned)"
        )

    async def open_line(name: str) -> Publisher:
        publisher = await pulsar.publisher(
            settings.result.topic, max_pending=max_pending, producer_name=name, schema=schema
        )
        return publisher  # closed by the EffectivelyOnce lines

    return EffectivelyOnce(settings.name, settings.source.subscription, open_line)


async def admit(
    eo: EffectivelyOnce,
    messages: list[Received],
    *,
    source: Source,
    metrics: RouteMetrics,
    stopping: asyncio.Event,
    reject: Callable[[Received, str], object],
) -> list[Received]:
    """The messages to score, in order; the others are acked, dropped, handed back (a stop
    while a line is still opening) or rejected (a position no sequence id can hold)."""
    fresh = []
    for index, message in enumerate(messages):
        try:
            # A partition's line is open after its first event: no task, no wait.
            verdict = eo.admit_now(message) or await unless_stopping(eo.admit(message), stopping)
        except ShutdownRequested:
            for left in messages[index:]:
                source.nack(left)
            break
        except OutOfRange as exc:
            reject(message, str(exc))
            continue
        if verdict == "new":
            fresh.append(message)
        elif verdict == "stored":
            source.ack(message)
            metrics.already_stored()
    return fresh
