"""Waits that end early when the route stops.

A batch that has not reached the endpoint yet (waiting for a slot, a ``Retry-After``
pause, a backoff or a probe turn) should be handed back at once on SIGTERM, not after
the drain grace: only requests already at the endpoint deserve the grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from bridge.errors import ShutdownRequested

T = TypeVar("T")


async def unless_stopping(work: Awaitable[T], stopping: asyncio.Event) -> T:
    """Await ``work``; if ``stopping`` is set first, cancel it and raise ShutdownRequested."""
    if stopping.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        raise ShutdownRequested("stopping")
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ShutdownRequested("stopping")
    return task.result()


async def sleep_unless_stopping(seconds: float, stopping: asyncio.Event) -> None:
    """Sleep ``seconds``; raise ShutdownRequested as soon as ``stopping`` is set."""
    await unless_stopping(asyncio.sleep(seconds), stopping)
