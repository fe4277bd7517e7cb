"""The route gate: when a route pauses, who probes, and what resumes it."""

from __future__ import annotations

import asyncio
import random

import pytest

from bridge.errors import ShutdownRequested
from bridge.gate import DOWN, ROUTE, STORM, Pause, RouteGate
from tests.support.clock import FakeClock


def gate(clock: FakeClock, changes: list[Pause | None] | None = None) -> RouteGate:
    return RouteGate(
        failures_to_pause=3,
        probe_initial_s=1.0,
        probe_max_s=8.0,
        clock=clock,
        rng=random.Random(1),
        on_change=None if changes is None else changes.append,
    )


def test_consecutive_failures_pause_once_and_a_success_resumes() -> None:
    changes: list[Pause | None] = []
    g = gate(FakeClock(), changes)
    g.failure("HTTP 503")
    g.failure("HTTP 503")
    g.success()  # resets the count
    for _ in range(5):
        g.failure("HTTP 500")
    assert changes == [Pause(DOWN, "HTTP 500")], "logged once"
    g.success()
    assert changes[-1] is None
    assert not g.paused


def test_a_route_error_pauses_at_once_and_an_answer_resumes_it() -> None:
    g = gate(FakeClock())
    g.pause(ROUTE, "HTTP 404")
    assert g.paused
    g.answered()  # a 400 from the probe: the endpoint is back
    assert not g.paused


def test_a_storm_needs_a_success_to_resume() -> None:
    g = gate(FakeClock())
    g.pause(STORM, "every event rejected")
    g.answered()
    assert g.storm
    g.success()
    assert not g.paused


async def test_one_probe_at_a_time_when_due_with_growing_capped_backoff() -> None:
    clock = FakeClock()
    g = gate(clock)
    stopping = asyncio.Event()
    assert await g.admit(stopping) is False, "running: no probe"
    g.pause(ROUTE, "HTTP 403")
    waits = []
    for _ in range(6):
        due = g._probe_at - clock()
        waits.append(due)
        clock.advance(due)
        assert await g.admit(stopping) is True
        other = asyncio.ensure_future(g.admit(stopping))
        await asyncio.sleep(0)
        assert not other.done(), "a second batch waits while one probes"
        other.cancel()
        g.probe_failed()
    assert waits[0] <= 1.0
    assert waits[3] > waits[0]
    assert max(waits) <= 8.0, "capped at probe_max_s"


async def test_waiters_are_released_when_the_route_resumes() -> None:
    g = gate(FakeClock())
    g.pause(ROUTE, "HTTP 404")
    stopping = asyncio.Event()
    waiting = asyncio.ensure_future(g.wait_resumed(stopping))
    await asyncio.sleep(0)
    assert not waiting.done()
    g.success()
    await asyncio.wait_for(waiting, timeout=5)


async def test_a_stop_ends_every_wait() -> None:
    g = gate(FakeClock())
    g.pause(ROUTE, "HTTP 404")
    stopping = asyncio.Event()
    waiting = asyncio.ensure_future(g.admit(stopping))
    await asyncio.sleep(0)
    stopping.set()
    with pytest.raises(ShutdownRequested):
        await asyncio.wait_for(waiting, timeout=5)


async def test_with_nothing_in_hand_intake_may_take_a_probe_batch_once_due() -> None:
    clock = FakeClock()
    g = gate(clock)
    g.pause(ROUTE, "endpoint missing at start-up")
    stopping = asyncio.Event()
    due = asyncio.ensure_future(g.wait_probe_due(stopping))
    await asyncio.sleep(0)
    assert not due.done()
    clock.advance(10)
    g.probe_failed()  # any change wakes the waiter to re-check the (fake) time
    clock.advance(10)
    g._notify(report=False)
    await asyncio.wait_for(due, timeout=5)
