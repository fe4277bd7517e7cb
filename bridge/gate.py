"""Whether a route may call its endpoint now: running, or paused with a reason and a probe.

A route pauses when the endpoint, not the events, is the problem:

==============  ===========================================================  ==============
kind            entered on                                                   left on
==============  ===========================================================  ==============
``down``        ``circuit_failures`` consecutive overload or transient       a 200, or the
                failures (429/5xx/timeouts/connect errors, token endpoint    endpoint
                unavailable)                                                 answering 4xx
``route``       a route error at once: 401 after a fresh token, 403, 404,    same
                3xx, other 4xx, a refused token request, a missing
                endpoint at start-up
``storm``       every event of ``poison_storm_batches`` batches rejected     a 200 only
==============  ===========================================================  ==============

While paused, intake stops and the batches in hand wait (they spend nothing: no
redelivery, no dead letter). One of them at a time is let through as the *probe* on a timer
with jittered, capped exponential backoff; the probe's answer decides whether the route
resumes. With no batch in hand, intake may take one batch when the probe is due, so a
route that starts paused still probes. Every change is reported once through
``on_change``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import ShutdownRequested

Clock = Callable[[], float]

DOWN = "down"
ROUTE = "route"
STORM = "storm"


@dataclass(frozen=True)
class Pause:
    kind: str  # DOWN | ROUTE | STORM
    reason: str


class RouteGate:
    def __init__(
        self,
        *,
        failures_to_pause: int,
        probe_initial_s: float,
        probe_max_s: float,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        on_change: Callable[[Pause | None], None] | None = None,
    ) -> None:
        self._failures_to_pause = failures_to_pause
        self._probe_initial_s = max(probe_initial_s, 0.01)
        self._probe_max_s = probe_max_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_change = on_change
        self.pause_state: Pause | None = None
        self.successes = 0  # 200s seen, ever: lets a failing batch tell whether others succeed
        self.storms = 0  # storm pauses, ever: rejections seen before one are suspect
        self._failures = 0
        self._probing = False
        self._probe_round = 0
        self._probe_at = 0.0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def paused(self) -> bool:
        return self.pause_state is not None

    @property
    def storm(self) -> bool:
        return self.pause_state is not None and self.pause_state.kind == STORM

    # ---------------------------------------------------------------- what happened

    def pause(self, kind: str, reason: str) -> None:
        """Pause (or keep paused with the newer reason)."""
        first = self.pause_state is None
        if kind == STORM and (first or self.pause_state is None or self.pause_state.kind != STORM):
            self.storms += 1
        self.pause_state = Pause(kind, reason)
        if first:
            self._probe_round = 0
            self._probe_at = self._clock() + self._backoff()
        self._notify(report=first)

    def success(self) -> None:
        """A 200: the endpoint scores events."""
        self.successes += 1
        self._failures = 0
        self._resume()

    def answered(self) -> None:
        """The endpoint rejected events (400/413/422): it is there and reads requests."""
        self._failures = 0
        if self.pause_state is not None and self.pause_state.kind != STORM:
            self._resume()

    def failure(self, reason: str) -> None:
        """An overload or transient failure; enough in a row pause the route."""
        self._failures += 1
        if self._failures >= self._failures_to_pause:
            self.pause(DOWN, reason)

    def probe_failed(self) -> float:
        """The probe's request did not resume the route: the next one waits longer.
        Returns the seconds until the next probe."""
        self._probing = False
        self._probe_round += 1
        wait_s = self._backoff()
        self._probe_at = self._clock() + wait_s
        self._notify(report=False)
        return wait_s

    # ---------------------------------------------------------------- waiting

    async def admit(self, stopping: asyncio.Event) -> bool:
        """Wait until a request may go; True when it goes as the paused route's probe."""
        while True:
            if self.pause_state is None:
                return False
            if not self._probing and self._clock() >= self._probe_at:
                self._probing = True
                return True
            timeout = None if self._probing else max(0.0, self._probe_at - self._clock())
            await self._wait_change(timeout, stopping)

    async def wait_probe_due(self, stopping: asyncio.Event) -> None:
        """Return once the route runs again, or a probe may go and none is under way."""
        while self.pause_state is not None:
            if not self._probing and self._clock() >= self._probe_at:
                return
            timeout = None if self._probing else max(0.0, self._probe_at - self._clock())
            await self._wait_change(timeout, stopping)

    async def wait_resumed(self, stopping: asyncio.Event) -> None:
        while self.pause_state is not None:
            await self._wait_change(None, stopping)

    # ---------------------------------------------------------------- internals

    def _resume(self) -> None:
        self._probing = False
        if self.pause_state is not None:
            self.pause_state = None
            self._notify(report=True)

    def _backoff(self) -> float:
        """Jittered exponential: between half and all of initial * 2^round, capped."""
        ceiling = min(
            self._probe_max_s, self._probe_initial_s * float(2 ** min(self._probe_round, 30))
        )
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _notify(self, *, report: bool) -> None:
        if report and self._on_change is not None:
            self._on_change(self.pause_state)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_change(self, within: float | None, stopping: asyncio.Event) -> None:
        if stopping.is_set():
            raise ShutdownRequested("stopping")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({waiter, stop}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if stopping.is_set():
            raise ShutdownRequested("stopping")
