"""One request to the endpoint through the route's and the endpoint's limits.

The route's ``max_in_flight`` and the endpoint's shared :class:`~bridge.limiter.EndpointLimiter`
are both waited for (a stop ends the wait); what the answer says moves the limiter: a
success of a whole batch is a latency sample, an overload (429, 503, 504, a timeout) cuts
the limit, a Retry-After pauses every request to the endpoint, and anything else (event
errors, bisection halves, probes) leaves it where it is.
"""

from __future__ import annotations

import asyncio
import time

from bridge.correlation import Correlation
from bridge.errors import EndpointError, ShutdownRequested
from bridge.limiter import EndpointLimiter
from bridge.observe import RouteMetrics
from bridge.retry import Failure, classify
from bridge.serving import Invocation, ServingClient
from bridge.stopping import unless_stopping


class LimitedCall:
    """A route's requests to its endpoint, each within both limits."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        limiter: EndpointLimiter,
        serving: ServingClient,
        correlation: Correlation,
        metrics: RouteMetrics,
        retry_after_max_s: float,
        stopping: asyncio.Event,
    ) -> None:
        # The route's own ceiling; the endpoint's limiter may allow fewer.
        self._requests = asyncio.Semaphore(max_in_flight)
        self._limiter = limiter
        self._serving = serving
        self._correlation = correlation
        self._metrics = metrics
        self._retry_after_max_s = retry_after_max_s
        self._stopping = stopping

    async def __call__(self, body: bytes, size: int, *, sample: bool) -> Invocation:
        """Send ``body`` (``size`` events); ``sample``: a whole batch, whose latency counts."""
        queued = time.monotonic()
        if self._stopping.is_set():
            raise ShutdownRequested("stopping")
        # Waits watch for a stop; a free slot is taken at once, with no task to watch it.
        if self._requests.locked():
            await unless_stopping(
                self._requests.acquire(), self._stopping, release=lambda _: self._requests.release()
            )
        else:
            await self._requests.acquire()
        try:
            slot = self._limiter.try_acquire()
            if slot is None:
                slot = await unless_stopping(
                    self._limiter.acquire(size), self._stopping, release=lambda s: s.ignore()
                )
            self._metrics.queued(time.monotonic() - queued)
            try:
                invocation = await self._correlation.invoke(self._serving, body)
            except EndpointError as exc:
                self._metrics.request(exc.status)
                if classify(exc) is Failure.OVERLOAD:
                    slot.dropped()
                    if exc.retry_after is not None:
                        self._limiter.pause(min(exc.retry_after, self._retry_after_max_s))
                else:
                    slot.ignore()
                raise
            except BaseException:
                slot.ignore()
                raise
            self._metrics.request(200, invocation.elapsed_s)
            if sample:
                slot.success(size)
            else:
                slot.ignore()  # bisection halves and probes say little about capacity
            return invocation
        finally:
            self._requests.release()
