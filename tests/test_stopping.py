"""Waits that end on a stop: who owns a slot acquired as the stop (or a cancel) comes.

Each race is driven by futures the test resolves, so both sides complete in one loop turn
(asyncio runs callbacks in the order they were scheduled)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import ShutdownRequested
from bridge.stopping import unless_stopping


class Gate:
    """An acquire that waits until the test grants it, then returns a slot."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.released: list[str] = []

    async def acquire(self) -> str:
        self.started.set()
        await self.granted
        return "slot"


async def test_a_slot_acquired_as_the_caller_is_cancelled_is_released() -> None:
    gate, stopping = Gate(), asyncio.Event()
    caller = asyncio.ensure_future(
        unless_stopping(gate.acquire(), stopping, release=gate.released.append)
    )
    await gate.started.wait()  # the caller waits for the acquire
    gate.granted.set_result(None)  # the acquire ends in the next turn ...
    caller.cancel()  # ... the turn the caller learns it was cancelled (a drain)
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert gate.released == ["slot"]


async def test_a_semaphore_slot_acquired_as_the_caller_is_cancelled_is_released() -> None:
    slots, stopping, queued = asyncio.Semaphore(1), asyncio.Event(), asyncio.Event()
    await slots.acquire()

    async def acquire() -> bool:
        queued.set()  # the acquire below queues on the semaphore in this same step
        return await slots.acquire()

    caller = asyncio.ensure_future(
        unless_stopping(acquire(), stopping, release=lambda _: slots.release())
    )
    await queued.wait()
    slots.release()  # hands the slot to the waiting acquire ...
    caller.cancel()  # ... as the caller is cancelled
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not slots.locked(), "the slot the caller never got is free again"


async def test_a_slot_acquired_in_the_turn_of_the_stop_goes_to_the_caller() -> None:
    gate, stopping = Gate(), asyncio.Event()
    caller = asyncio.ensure_future(
        unless_stopping(gate.acquire(), stopping, release=gate.released.append)
    )
    await gate.started.wait()
    gate.granted.set_result(None)
    stopping.set()  # both end in the same turn: the caller gets the slot (and releases it)
    assert await caller == "slot"
    assert gate.released == []


async def test_a_stop_first_cancels_the_acquire() -> None:
    gate, stopping = Gate(), asyncio.Event()
    caller = asyncio.ensure_future(
        unless_stopping(gate.acquire(), stopping, release=gate.released.append)
    )
    await gate.started.wait()
    stopping.set()
    with pytest.raises(ShutdownRequested):
        await caller
    assert gate.granted.cancelled(), "the acquire was cancelled, so it holds nothing"
    assert gate.released == []


async def test_a_stop_already_set_starts_nothing() -> None:
    gate, stopping = Gate(), asyncio.Event()
    stopping.set()
    with pytest.raises(ShutdownRequested):
        await unless_stopping(gate.acquire(), stopping)
    assert not gate.started.is_set()
