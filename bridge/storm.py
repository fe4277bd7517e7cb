"""Poison or storm: is a batch whose every event the endpoint rejects bad, or is the model?

One bad event in a batch is the event's fault, and bisection finds it. A batch in which
*every* event is rejected is ambiguous: a batch of bad events, or a model redeployed with
a new signature that rejects everything (a "storm"). Dead-lettering on the first guess
would pour the whole stream into the dead-letter topic, so such a batch waits for its
verdict here, holding its events:

* another batch has events scored meanwhile: the endpoint works, so it was poison;
* ``threshold`` such batches in a row (waiting at once, or one after the other with no
  event scored in between): a storm (the route pauses and probes);
* nothing decides within ``window_s``: poison (a lone bad batch at the end of a stream).

On a route where batches cannot be in progress side by side (one ordered lane: keyless
events on an ordered subscription, or ``max_in_flight = 1``) the first ``threshold - 1``
batches of a storm wait out the window and are dead-lettered before it is recognised.

While the route is paused for a storm, a rejected batch is a storm without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum


class Verdict(enum.Enum):
    POISON = "poison"
    STORM = "storm"


class StormGuard:
    def __init__(self, threshold: int, window_s: float) -> None:
        self.threshold = threshold  # 0: every fully rejected batch is poison
        self.window_s = window_s
        self._waiting: list[asyncio.Future[Verdict]] = []
        self._streak = 0  # fully rejected batches since events were last scored

    def scored(self) -> None:
        """Some batch had events scored: whatever waits was poison."""
        self._streak = 0
        self._resolve(Verdict.POISON)

    async def verdict(self, *, storm_in_progress: bool) -> Verdict:
        """Wait for the verdict on a batch whose every event was rejected."""
        if self.threshold == 0:
            return Verdict.POISON
        if storm_in_progress:
            return Verdict.STORM
        waiter: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._streak += 1
        if self._streak >= self.threshold:
            self._streak = 0
            self._resolve(Verdict.STORM)
        try:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(waiter), self.window_s)
            return Verdict.POISON
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def _resolve(self, verdict: Verdict) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(verdict)
