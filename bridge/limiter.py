"""How many requests one serving endpoint gets at once, and how fast.

    AdaptiveLimit     the algorithm, pure: samples in, a limit out (AIMD with a latency
                      gradient); tested on its own with a fake clock
    FixedLimit        the same interface, always the ceiling (``concurrency = "fixed"``)
    EndpointLimiter   the asyncio side, one per endpoint and shared by every route that calls
                      it: a slot per request, a pause for ``Retry-After``, optional token
                      buckets for requests and events per second
    Slot              one request's permit; it ends with exactly one of ``success`` (a
                      latency sample), ``dropped`` (an overload answer) or ``ignore``

The shape follows Netflix concurrency-limits (a limiter hands out a listener, the caller
reports one outcome, the algorithm only sees samples). The Python packages that implement
parts of it (aioadaptive, aimd-limiter, adaptio) are young single-author releases without
Retry-After or shared pauses, so the algorithm is ours; the token buckets are aiolimiter's.

Why these rules:

* Overload (429, 503, 504, a timeout) cuts the limit multiplicatively, once per burst: an
  answer to a request sent before the last overload cut, arriving within a round trip of
  it (``burst_s`` at least), is of the same burst and neither cuts again nor is
  remembered. Both halves matter: 429s come back at once, before any round trip is known
  (with a round-trip guard alone, a start at the ceiling cut 16 down to 2 in one burst),
  and timeouts come back a whole timeout after their send (with the sent-before rule
  alone, overload seen as timeouts would cut once per timeout period).
* It starts at the ceiling, as a fixed limit would: a healthy endpoint never waits for it
  to grow, and an overloaded one is found by its first answers.
* Success grows it by one per round trip's worth of successes, and only while the limit is
  what holds traffic back (no growth for an idle route) and latency per event is not rising.
  Latency is taken per event, not per batch, so a bigger batch is not mistaken for queueing;
  and it counts as rising only when the round trip it adds is long enough to be queueing
  (``min_queueing_s``), not the jitter of a millisecond answer.
* An endpoint that sheds load with 429 instead of queueing gives no latency signal before
  it rejects, so the concurrency at which it last rejected (the requests in flight when
  the rejected one was sent) is remembered, and growing to it (and each level above) is
  tried once per ``probe_interval_s``: one 429 per interval instead of one per round trip.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol

from aiolimiter import AsyncLimiter

Clock = Callable[[], float]


class Limit(Protocol):
    """A concurrency limit that learns from request outcomes."""

    @property
    def current(self) -> int: ...

    def on_success(self, latency_per_event_s: float, rtt_s: float, in_flight: int) -> None: ...

    def on_dropped(self, sent_at: float, in_flight: int) -> None:
        """An overload answer to a request sent at ``sent_at`` (the limit's clock) with
        ``in_flight`` requests outstanding, itself included."""


class FixedLimit:
    """Always ``limit``: the endpoint's answers never move it."""

    def __init__(self, limit: int) -> None:
        self.current = limit

    def on_success(self, latency_per_event_s: float, rtt_s: float, in_flight: int) -> None:
        return None

    def on_dropped(self, sent_at: float, in_flight: int) -> None:
        return None


class AdaptiveLimit:
    """AIMD on overload answers, with a latency gradient gating growth (see module doc)."""

    def __init__(
        self,
        min_limit: int,
        max_limit: int,
        *,
        initial: int | None = None,
        backoff: float = 0.7,
        tolerance: float = 2.0,
        min_queueing_s: float = 0.01,
        probe_interval_s: float = 5.0,
        burst_s: float = 0.1,
        clock: Clock = time.monotonic,
    ) -> None:
        self.min_limit = min_limit
        self.max_limit = max_limit
        start = initial if initial is not None else max_limit
        self._min_queueing_s = min_queueing_s
        self._limit = float(start)
        self._backoff = backoff
        self._tolerance = tolerance
        self._probe_interval_s = probe_interval_s
        self._clock = clock
        self._short: float | None = None  # recent latency per event (fast EWMA)
        self._long: float | None = None  # its baseline (slow EWMA)
        self._credit = 0.0  # successes towards the next +1
        self._last_cut = -math.inf  # any cut: latency and overload
        self._last_drop_cut = -math.inf  # an overload cut: what a burst of drops is
        self._burst_s = burst_s
        self._rtt_s = 0.0  # the last success's round trip
        self._overloaded_at: int | None = None  # the limit at which overload was last seen
        self._probe_at = -math.inf

    @property
    def current(self) -> int:
        return max(self.min_limit, min(self.max_limit, int(self._limit)))

    def on_success(self, latency_per_event_s: float, rtt_s: float, in_flight: int) -> None:
        """``in_flight``: requests outstanding when this one ended, itself included."""
        self._rtt_s = rtt_s
        sample = max(latency_per_event_s, 1e-9)
        if self._short is None or self._long is None:
            self._short = self._long = sample
            return
        self._short += 0.3 * (sample - self._short)
        self._long += 0.02 * (sample - self._long)
        events = rtt_s / sample
        queueing_s = (self._short - self._long) * events
        if self._short > self._tolerance * self._long and queueing_s > self._min_queueing_s:
            # Latency per event rising: requests are queueing at the endpoint.
            if self._clock() - rtt_s >= self._last_cut:  # not a request of the last cut's
                self._cut(0.9)
            return
        if in_flight < self.current:
            return  # the limit is not what holds traffic back; growing it proves nothing
        self._credit += 1.0 / max(self._limit, 1.0)
        if self._credit < 1.0:
            return
        self._credit = 0.0
        target = self._limit + 1.0
        now = self._clock()
        if self._overloaded_at is not None and int(target) >= self._overloaded_at:
            if now < self._probe_at:
                return
            # Try the level that last overloaded, one level per interval, until one sheds.
            self._probe_at = now + self._probe_interval_s
            self._overloaded_at = int(target) + 1
        self._limit = min(float(self.max_limit), target)

    def on_dropped(self, sent_at: float, in_flight: int) -> None:
        now = self._clock()
        if sent_at < self._last_drop_cut and now - self._last_drop_cut < max(
            self._rtt_s, self._burst_s
        ):
            return  # the same burst: sent before the last cut, answering right after it
        # The concurrency the endpoint refused at, as far as this request tells: it was
        # sent with ``in_flight`` outstanding, and under the limit of the time.
        self._overloaded_at = min(in_flight, self.current)
        self._probe_at = now + self._probe_interval_s
        self._last_drop_cut = now
        self._cut(self._backoff)

    def _cut(self, factor: float) -> None:
        self._last_cut = self._clock()
        self._credit = 0.0
        self._limit = max(float(self.min_limit), self._limit * factor)


class Slot:
    """One request's permit; end it with exactly one of the three outcomes."""

    __slots__ = ("_ended", "_in_flight", "_limiter", "_started")

    def __init__(self, limiter: EndpointLimiter, started: float) -> None:
        self._limiter = limiter
        self._started = started
        self._in_flight = limiter.at_endpoint  # at the start, this request included
        self._ended = False

    def success(self, events: int) -> None:
        """The endpoint answered ``events`` events: a latency sample."""
        if self._end():
            rtt = self._limiter.clock() - self._started
            self._limiter.sample(rtt / max(events, 1), rtt)

    def dropped(self) -> None:
        """The endpoint shed the request (429, 503, 504, a timeout)."""
        if self._end():
            self._limiter.dropped(self._started, self._in_flight)

    def ignore(self) -> None:
        """Failed before a meaningful sample (event errors, bisection, connect errors)."""
        self._end()

    def _end(self) -> bool:
        if self._ended:
            return False
        self._ended = True
        self._limiter.release()
        return True


class EndpointLimiter:
    """Slots for one endpoint, shared by the routes that call it."""

    def __init__(
        self,
        name: str,
        limit: Limit,
        *,
        requests_per_s: float | None = None,
        events_per_s: float | None = None,
        max_batch_events: int = 1,
        clock: Clock = time.monotonic,
        on_change: Callable[[EndpointLimiter], None] | None = None,
    ) -> None:
        self.name = name
        self.limit = limit
        self.clock = clock
        self.in_flight = 0
        # Slots taken but still waiting for a rate token: not at the endpoint, so not a
        # sign the limit holds traffic back (or of the concurrency a 429 answers).
        self._pacing = 0
        self.paused_until = -math.inf
        self.pauses = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._on_change = on_change
        self._requests = None if requests_per_s is None else _bucket(requests_per_s, 1)
        self._events = None if events_per_s is None else _bucket(events_per_s, max_batch_events)

    def try_acquire(self) -> Slot | None:
        """A slot now, without waiting, or None when :meth:`acquire` would have to wait
        (a pause, a full limit, or a rate budget to consult). The common case of a healthy
        endpoint then costs no task and no wait (the hot path takes this first)."""
        if (
            self.in_flight >= self.limit.current
            or self._requests is not None
            or self._events is not None
            or self.paused_until > self.clock()
        ):
            return None
        self.in_flight += 1
        return Slot(self, self.clock())

    async def acquire(self, events: int) -> Slot:
        """Wait for a slot (and any pause and rate budget); cancellable at every wait."""
        loop = asyncio.get_running_loop()
        while True:
            wait_s = self.paused_until - self.clock()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            if self.in_flight < self.limit.current:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1
        self._pacing += 1
        try:
            if self._requests is not None:
                await self._requests.acquire(1)
            if self._events is not None:
                await self._events.acquire(min(events, self._events.max_rate))
        except BaseException:
            self.release()
            raise
        finally:
            self._pacing -= 1
        return Slot(self, self.clock())

    @property
    def at_endpoint(self) -> int:
        """Requests sent or about to be: the slots taken, less those waiting for a rate token."""
        return self.in_flight - self._pacing

    def pause(self, seconds: float) -> None:
        """``Retry-After``: no request leaves for this endpoint for ``seconds``."""
        until = self.clock() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self.pauses += 1
            self._report()

    def sample(self, latency_per_event_s: float, rtt_s: float) -> None:
        before = self.limit.current
        self.limit.on_success(latency_per_event_s, rtt_s, self.at_endpoint + 1)
        if self.limit.current != before:
            self._wake()

    def dropped(self, sent_at: float, in_flight: int) -> None:
        before = self.limit.current
        self.limit.on_dropped(sent_at, in_flight)
        if self.limit.current != before:
            self._report()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        """Let waiters re-check: a slot was freed or the limit moved."""
        self._report()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _report(self) -> None:
        if self._on_change is not None:
            self._on_change(self)


def _bucket(rate_per_s: float, largest_take: int) -> AsyncLimiter:
    """A token bucket refilling at ``rate_per_s`` that can hold ``largest_take`` at once."""
    capacity = max(float(largest_take), rate_per_s, 1.0)
    return AsyncLimiter(capacity, capacity / rate_per_s)
