"""When to try a request again, how long to wait, and when to stop asking a dead endpoint.

RetryPolicy        in-bridge attempts of one request: exponential backoff with full
                   jitter, ``Retry-After`` honoured up to a cap (tenacity underneath)
Circuit            consecutive failures open it; while open, intake pauses and one batch
                   at a time probes with backoff, so an outage does not burn Pulsar
                   redeliveries into the dead-letter topic
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from bridge.config import FailureSettings
from bridge.errors import EndpointError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, EndpointError) and exc.retriable


class _RetryAfterOrJitter(wait_base):
    """The server's ``Retry-After`` (capped) when given, else full-jitter exponential."""

    def __init__(self, initial_s: float, max_s: float, retry_after_max_s: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial_s, max=max_s)
        self._cap = retry_after_max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, EndpointError) and exc.retry_after is not None:
            return min(exc.retry_after, self._cap)
        return float(self._jitter(retry_state))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 0.1
    max_s: float = 5.0
    retry_after_max_s: float = 30.0

    @classmethod
    def from_settings(cls, failure: FailureSettings) -> RetryPolicy:
        return cls(
            attempts=failure.attempts,
            initial_s=failure.backoff_initial_ms / 1000,
            max_s=failure.backoff_max_ms / 1000,
            retry_after_max_s=failure.retry_after_max_s,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        sleep: Sleep = asyncio.sleep,
        on_retry: Callable[[EndpointError, float], None] | None = None,
    ) -> T:
        """Await ``fn()`` up to ``attempts`` times while it raises a retriable EndpointError."""

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is None or state.outcome is None or state.next_action is None:
                return
            exc = state.outcome.exception()
            if isinstance(exc, EndpointError):
                on_retry(exc, state.next_action.sleep)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=_RetryAfterOrJitter(self.initial_s, self.max_s, self.retry_after_max_s),
            retry=retry_if_exception(is_retriable),
            reraise=True,
            sleep=sleep,
            before_sleep=before_sleep,
        )
        return await retrying(fn)

    async def probe(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        cap_s: float,
        stopping: asyncio.Event,
    ) -> T:
        """Await ``fn()`` with jittered backoff up to ``cap_s`` until it stops failing
        retriably, or until ``stopping`` is set (then the last error is raised)."""
        return await self.persist(
            fn, retry=is_retriable, cap_s=cap_s, stopping=stopping, max_attempts=None
        )

    async def persist(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        retry: Callable[[BaseException], bool],
        cap_s: float,
        stopping: asyncio.Event,
        max_attempts: int | None,
        wait_first: bool = True,
    ) -> T:
        """Await ``fn()`` (after a first backoff when ``wait_first``), again while it raises
        what ``retry`` accepts, up to ``max_attempts`` (None: unbounded) or until
        ``stopping`` is set; then the last error is raised. Sleeps wake early on shutdown."""

        async def sleep(delay: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay)

        def stop(state: RetryCallState) -> bool:
            exhausted = max_attempts is not None and state.attempt_number >= max_attempts
            return exhausted or stopping.is_set()

        if wait_first:
            await sleep(self.initial_s)
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=max(self.initial_s, 0.05), max=cap_s),
            retry=retry_if_exception(retry),
            stop=stop,
            reraise=True,
            sleep=sleep,
        )
        return await retrying(fn)


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


class Circuit:
    """Counts consecutive failed requests; at ``threshold`` it opens until one succeeds."""

    def __init__(
        self, threshold: int, on_change: Callable[[CircuitState], None] | None = None
    ) -> None:
        self._threshold = threshold
        self._failures = 0
        self._closed = asyncio.Event()
        self._closed.set()
        self._on_change = on_change
        self._probe_lock = asyncio.Lock()

    @property
    def state(self) -> CircuitState:
        return CircuitState.CLOSED if self._closed.is_set() else CircuitState.OPEN

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    @property
    def probe_lock(self) -> asyncio.Lock:
        """Held by the one batch probing an open circuit; the others wait their turn."""
        return self._probe_lock

    def record_success(self) -> None:
        self._failures = 0
        if not self._closed.is_set():
            self._closed.set()
            if self._on_change is not None:
                self._on_change(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold and self._closed.is_set():
            self._closed.clear()
            if self._on_change is not None:
                self._on_change(CircuitState.OPEN)

    async def wait_closed(self) -> None:
        await self._closed.wait()
