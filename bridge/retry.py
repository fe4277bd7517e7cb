"""How a failed request is sorted, and how long to wait before trying again.

Failure / classify  what a failed request says: the events' fault, overload, a transient
                    failure, or a route error (each handled differently by the processor)
RetryPolicy         backoff with full jitter, ``Retry-After`` honoured up to a cap
                    (tenacity underneath); ``persist`` retries until a condition or a stop
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

from bridge.config_route import FailureSettings
from bridge.errors import EndpointError, ResponseShapeError

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

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter exponential wait before try ``attempt + 1`` (tenacity's strategy)."""
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        wait = wait_random_exponential(multiplier=max(self.initial_s, 0.001), max=self.max_s)
        return float(wait(state))

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


class Failure(enum.Enum):
    """What a failed request says, and so what the bridge does about it (README table)."""

    EVENT = "event"  # the events are bad: bisect, dead-letter the offenders
    OVERLOAD = "overload"  # the endpoint sheds load: cut the limit, back off, retry
    TRANSIENT = "transient"  # the endpoint or the network failed: back off, retry
    ROUTE = "route"  # the route cannot work as configured now: pause and probe


EVENT_ERROR_STATUSES = frozenset({400, 413, 422})
OVERLOAD_STATUSES = frozenset({429, 503, 504})


def classify(exc: EndpointError) -> Failure:
    """Sort a failed request; ``exc.retriable`` already reflects ``retry_statuses``."""
    if isinstance(exc, ResponseShapeError) or exc.status in EVENT_ERROR_STATUSES:
        return Failure.EVENT
    if exc.status is None:
        if exc.timeout:
            return Failure.OVERLOAD
        return Failure.TRANSIENT if exc.retriable else Failure.ROUTE
    if exc.retriable:
        return Failure.OVERLOAD if exc.status in OVERLOAD_STATUSES else Failure.TRANSIENT
    return Failure.ROUTE
