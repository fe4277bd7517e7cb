"""One request within the route's and the endpoint's limits (bridge.limited_call): what
each answer does to the shared limiter, and that a stop ends the waits."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from bridge.correlation import Correlation
from bridge.errors import EndpointError, ShutdownRequested
from bridge.limited_call import LimitedCall
from bridge.limiter import AdaptiveLimit, EndpointLimiter, FixedLimit
from bridge.observe import Metrics, RouteMetrics
from bridge.serving import Invocation, ServingClient
from tests.support.clock import FakeClock


class ScriptedEndpoint:
    """Stands in for Correlation.invoke: answers or raises what the test queued, and can
    hold a request until released."""

    def __init__(self, *answers: EndpointError | None) -> None:
        self.answers = list(answers)
        self.hold: asyncio.Event | None = None
        self.calls = 0
        self.entered: asyncio.Queue[None] = asyncio.Queue()  # one item per request in

    async def requests_in(self, count: int) -> None:
        for _ in range(count):
            await self.entered.get()

    async def invoke(self, serving: ServingClient, body: bytes) -> Invocation:
        self.calls += 1
        self.entered.put_nowait(None)
        if self.hold is not None:
            await self.hold.wait()
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return Invocation(body={"predictions": []}, served_model=None, elapsed_s=0.01)


def call(
    limiter: EndpointLimiter, endpoint: ScriptedEndpoint, *, stopping: asyncio.Event | None = None
) -> LimitedCall:
    return LimitedCall(
        max_in_flight=2,
        limiter=limiter,
        serving=cast(ServingClient, None),
        correlation=cast(Correlation, endpoint),
        metrics=RouteMetrics(Metrics(), "fraud"),
        retry_after_max_s=30.0,
        stopping=stopping or asyncio.Event(),
    )


async def test_an_overload_cuts_the_limit_and_a_retry_after_pauses_the_endpoint() -> None:
    clock = FakeClock()
    limiter = EndpointLimiter("m", AdaptiveLimit(1, 10), clock=clock)
    overloaded = EndpointError("429", status=429, retriable=True, retry_after=120.0)
    request = call(limiter, ScriptedEndpoint(overloaded))
    with pytest.raises(EndpointError):
        await request(b"{}", 100, sample=True)
    assert limiter.limit.current == 7, "cut x0.7"
    assert limiter.paused_until == clock() + 30.0, "Retry-After capped by retry_after_max_s"
    assert limiter.in_flight == 0


async def test_an_event_error_leaves_the_limit_where_it_is() -> None:
    limiter = EndpointLimiter("m", AdaptiveLimit(1, 10))
    request = call(limiter, ScriptedEndpoint(EndpointError("400", status=400, retriable=False)))
    with pytest.raises(EndpointError):
        await request(b"{}", 100, sample=True)
    assert limiter.limit.current == 10
    assert limiter.pauses == 0
    assert limiter.in_flight == 0


async def test_the_route_s_own_ceiling_holds_even_when_the_endpoint_allows_more() -> None:
    limiter = EndpointLimiter("m", FixedLimit(10))
    endpoint = ScriptedEndpoint()
    endpoint.hold = asyncio.Event()
    request = call(limiter, endpoint)  # max_in_flight 2
    sent = [asyncio.ensure_future(request(b"{}", 1, sample=True)) for _ in range(3)]
    await endpoint.requests_in(2)
    for _ in range(10):  # turns enough for the third to have gone, were it free to
        await asyncio.sleep(0)
    assert endpoint.calls == 2, "the third waits for the route's slot"
    endpoint.hold.set()
    await asyncio.gather(*sent)
    assert endpoint.calls == 3
    assert limiter.in_flight == 0


async def test_a_stop_ends_the_wait_for_a_slot_and_gives_nothing_away() -> None:
    limiter = EndpointLimiter("m", FixedLimit(1))
    endpoint = ScriptedEndpoint()
    endpoint.hold = asyncio.Event()
    stopping = asyncio.Event()
    request = call(limiter, endpoint, stopping=stopping)
    first = asyncio.ensure_future(request(b"{}", 1, sample=True))
    await endpoint.requests_in(1)
    waiting = asyncio.ensure_future(request(b"{}", 1, sample=True))  # the endpoint is full
    await asyncio.sleep(0)
    stopping.set()
    with pytest.raises(ShutdownRequested):
        await waiting
    endpoint.hold.set()
    await first
    assert limiter.in_flight == 0
    with pytest.raises(ShutdownRequested):
        await request(b"{}", 1, sample=True)
