"""RetryPolicy (attempts, Retry-After, jitter, probe) and Circuit, with a recording fake sleep."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config_route import FailureSettings
from bridge.errors import EndpointError, ResponseShapeError
from bridge.retry import Failure, RetryPolicy, classify, is_retriable


class RecordingSleep:
    """Records requested waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Flaky:
    """Raises the given errors in order, then returns ``result``."""

    def __init__(self, errors: list[BaseException], result: str = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0
        self.raised: list[BaseException] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return self.result


def retriable(status: int | None = 503, retry_after: float | None = None) -> EndpointError:
    return EndpointError("down", status=status, retriable=True, retry_after=retry_after)


def fatal(status: int = 400) -> EndpointError:
    return EndpointError("bad request", status=status, retriable=False)


# --------------------------------------------------------------------------- is_retriable


def test_is_retriable_only_for_retriable_endpoint_errors() -> None:
    assert is_retriable(retriable())
    assert is_retriable(retriable(status=None))
    assert not is_retriable(fatal())
    assert not is_retriable(ResponseShapeError("misaligned"))
    assert not is_retriable(ValueError("x"))
    assert not is_retriable(TimeoutError())


def test_policy_from_settings_converts_milliseconds() -> None:
    policy = RetryPolicy.from_settings(
        FailureSettings(
            attempts=4, backoff_initial_ms=250, backoff_max_ms=8000, retry_after_max_s=12
        )
    )

    assert policy == RetryPolicy(attempts=4, initial_s=0.25, max_s=8.0, retry_after_max_s=12)


def test_policy_defaults_match_failure_settings_defaults() -> None:
    assert RetryPolicy.from_settings(FailureSettings()) == RetryPolicy()


# --------------------------------------------------------------------------- call


async def test_success_first_time_does_not_sleep() -> None:
    sleep = RecordingSleep()
    fn = Flaky([])

    assert await RetryPolicy().call(fn, sleep=sleep) == "ok"
    assert fn.calls == 1
    assert sleep.waits == []


async def test_retriable_errors_are_retried_until_success() -> None:
    sleep = RecordingSleep()
    fn = Flaky([retriable(), retriable(status=None)])

    assert await RetryPolicy(attempts=3).call(fn, sleep=sleep) == "ok"
    assert fn.calls == 3
    assert len(sleep.waits) == 2


async def test_stops_after_attempts_and_reraises_the_last_error() -> None:
    sleep = RecordingSleep()
    errors: list[BaseException] = [retriable(), retriable(), retriable(), retriable()]
    fn = Flaky(errors)

    with pytest.raises(EndpointError) as info:
        await RetryPolicy(attempts=3).call(fn, sleep=sleep)

    assert fn.calls == 3
    assert info.value is fn.raised[-1]
    assert info.value is not fn.raised[0]
    assert len(sleep.waits) == 2


async def test_one_attempt_means_no_retry() -> None:
    sleep = RecordingSleep()
    fn = Flaky([retriable()])

    with pytest.raises(EndpointError):
        await RetryPolicy(attempts=1).call(fn, sleep=sleep)

    assert fn.calls == 1
    assert sleep.waits == []


@pytest.mark.parametrize(
    "error",
    [fatal(400), fatal(404), ResponseShapeError("misaligned"), ValueError("a bug")],
    ids=["400", "404", "shape", "foreign"],
)
async def test_non_retriable_errors_are_raised_at_once(error: Exception) -> None:
    sleep = RecordingSleep()
    fn = Flaky([error])

    with pytest.raises(type(error)) as info:
        await RetryPolicy(attempts=5).call(fn, sleep=sleep)

    assert info.value is error
    assert fn.calls == 1
    assert sleep.waits == []


async def test_non_retriable_error_after_retries_stops_the_loop() -> None:
    sleep = RecordingSleep()
    fn = Flaky([retriable(), fatal()])

    with pytest.raises(EndpointError) as info:
        await RetryPolicy(attempts=5).call(fn, sleep=sleep)

    assert info.value.retriable is False
    assert fn.calls == 2
    assert len(sleep.waits) == 1


async def test_retry_after_is_honoured_and_capped() -> None:
    sleep = RecordingSleep()
    fn = Flaky([retriable(429, retry_after=7), retriable(429, retry_after=600), retriable(503, 0)])
    policy = RetryPolicy(attempts=4, initial_s=0.1, max_s=5, retry_after_max_s=30)

    assert await policy.call(fn, sleep=sleep) == "ok"

    assert sleep.waits == [7, 30, 0]


async def test_waits_without_retry_after_are_jittered_within_the_exponential_window() -> None:
    policy = RetryPolicy(attempts=8, initial_s=0.1, max_s=1.0, retry_after_max_s=30)
    windows = [min(0.1 * 2**n, 1.0) for n in range(7)]  # 0.1, 0.2, 0.4, 0.8, 1, 1, 1
    seen: list[list[float]] = []
    for _ in range(30):
        sleep = RecordingSleep()
        with pytest.raises(EndpointError):
            await policy.call(Flaky([retriable() for _ in range(8)]), sleep=sleep)
        assert len(sleep.waits) == 7
        for wait, window in zip(sleep.waits, windows, strict=True):
            assert 0.0 <= wait <= window
        seen.append(sleep.waits)

    # Full jitter: the waits vary from run to run (30 identical runs would be no jitter).
    assert len({tuple(w) for w in seen}) > 1


async def test_on_retry_is_called_once_per_retry_with_error_and_wait() -> None:
    sleep = RecordingSleep()
    first, second = retriable(429, retry_after=3), retriable(503, retry_after=4)
    fn = Flaky([first, second])
    retries: list[tuple[EndpointError, float]] = []

    await RetryPolicy(attempts=3).call(
        fn, sleep=sleep, on_retry=lambda exc, wait: retries.append((exc, wait))
    )

    assert retries == [(first, 3), (second, 4)]
    assert [wait for _, wait in retries] == sleep.waits


async def test_on_retry_is_not_called_for_the_final_failure() -> None:
    retries: list[EndpointError] = []

    with pytest.raises(EndpointError):
        await RetryPolicy(attempts=2).call(
            Flaky([retriable(), retriable()]),
            sleep=RecordingSleep(),
            on_retry=lambda exc, _wait: retries.append(exc),
        )

    assert len(retries) == 1


# --------------------------------------------------------------------------- probe


# initial_s=0 and a tiny cap keep the probe's real (shutdown-aware) sleeps at ~zero.
PROBE = RetryPolicy(initial_s=0.0, max_s=0.001)


async def test_persist_stops_after_max_attempts_with_its_own_retry_predicate() -> None:
    # A non-retriable EndpointError is retried here because the predicate says so.
    errors: list[BaseException] = [fatal(), fatal(), fatal(), fatal()]
    fn = Flaky(errors)

    with pytest.raises(EndpointError) as info:
        await PROBE.persist(
            fn,
            retry=lambda exc: isinstance(exc, EndpointError),
            cap_s=0.001,
            stopping=asyncio.Event(),
            max_attempts=3,
        )

    assert fn.calls == 3
    assert info.value is fn.raised[-1]


# --------------------------------------------------------------------------- Circuit


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EndpointError("bad row", status=400, retriable=False), Failure.EVENT),
        (EndpointError("too big", status=413, retriable=False), Failure.EVENT),
        (ResponseShapeError("3 predictions for 4 events"), Failure.EVENT),
        (EndpointError("limit", status=429, retriable=True), Failure.OVERLOAD),
        (EndpointError("scaling", status=503, retriable=True), Failure.OVERLOAD),
        (EndpointError("gateway", status=504, retriable=True), Failure.OVERLOAD),
        (EndpointError("boom", status=500, retriable=True), Failure.TRANSIENT),
        (EndpointError("connect", status=None, retriable=True), Failure.TRANSIENT),
        (EndpointError("refused", status=None, retriable=False), Failure.ROUTE),
        (EndpointError("gone", status=404, retriable=False), Failure.ROUTE),
        (EndpointError("grant", status=403, retriable=False), Failure.ROUTE),
        (EndpointError("moved", status=301, retriable=False), Failure.ROUTE),
        (EndpointError("not in retry_statuses", status=500, retriable=False), Failure.ROUTE),
    ],
)
def test_classify_sorts_failures_by_what_they_say(error: EndpointError, expected: Failure) -> None:
    assert classify(error) is expected


def test_a_timeout_is_overload() -> None:
    error = EndpointError("timed out", status=None, retriable=True, timeout=True)
    assert classify(error) is Failure.OVERLOAD


def test_backoff_is_full_jitter_within_the_exponential_window() -> None:
    policy = RetryPolicy(initial_s=0.1, max_s=1.0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (10, 1.0)]:
        waits = [policy.backoff_s(attempt) for _ in range(50)]
        assert all(0 <= w <= ceiling + 1e-9 for w in waits)
        assert max(waits) > ceiling / 4, "jittered over the window, not stuck at zero"
