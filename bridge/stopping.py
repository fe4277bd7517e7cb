"""Waits that end early when the route stops.

A batch that has not reached the endpoint yet (waiting for a slot, a ``Retry-After``
pause, a backoff or a probe turn) should be handed back at once on SIGTERM, not after
the drain grace: only requests already at the endpoint deserve the grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bridge.errors import ShutdownRequested

T = TypeVar("T")


async def unless_stopping(
    work: Awaitable[T],
    stopping: asyncio.Event,
    *,
    release: Callable[[T], object] | None = None,
) -> T:
    """Await ``work``; if ``stopping`` is set first, cancel it and raise ShutdownRequested.

    Work that ended with a result returns it, even when the stop came in the same turn:
    the caller owns it then. ``release`` gives back what the work acquired (a slot) when
    the caller cannot get it: the caller was cancelled (a drain) as the work ended.
    """
    if stopping.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        raise ShutdownRequested("stopping")
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    except BaseException:
        _give_back(task, release)
        await asyncio.wait({task})  # the work's own clean-up ends before the caller's
        raise
    finally:
        stop.cancel()
    if task.cancelled():
        raise ShutdownRequested("stopping")
    return task.result()


def _give_back(task: asyncio.Future[T], release: Callable[[T], object] | None) -> None:
    """The caller will not get ``task``'s result: cancel it, and release what it acquires
    all the same (it ended in the caller's last turn, or outran the cancel)."""

    def done(finished: asyncio.Future[T]) -> None:
        if finished.cancelled() or finished.exception() is not None:
            return  # an exception here is the work's own; nobody is left to raise it to
        if release is not None:
            release(finished.result())

    task.cancel()
    task.add_done_callback(done)


async def sleep_unless_stopping(seconds: float, stopping: asyncio.Event) -> None:
    """Sleep ``seconds``; raise ShutdownRequested as soon as ``stopping`` is set."""
    await unless_stopping(asyncio.sleep(seconds), stopping)
