"""RetryPolicy (attempts, Retry-After, jitter, probe) and Circuit, with a recording fake sleep."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config import FailureSettings
from bridge.errors import EndpointError, ResponseShapeError
from bridge.retry import Circuit, CircuitState, RetryPolicy, is_retriable


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


async def test_probe_returns_once_the_call_succeeds() -> None:
    fn = Flaky([retriable(), retriable(), retriable()])

    result = await PROBE.probe(fn, cap_s=0.001, stopping=asyncio.Event())

    assert result == "ok"
    assert fn.calls == 4


async def test_probe_is_not_bounded_by_attempts() -> None:
    fn = Flaky([retriable() for _ in range(10)])

    assert (
        await RetryPolicy(attempts=2, initial_s=0.0).probe(
            fn, cap_s=0.001, stopping=asyncio.Event()
        )
        == "ok"
    )
    assert fn.calls == 11


async def test_probe_raises_non_retriable_errors_at_once() -> None:
    error = fatal(404)
    fn = Flaky([retriable(), error])

    with pytest.raises(EndpointError) as info:
        await PROBE.probe(fn, cap_s=0.001, stopping=asyncio.Event())

    assert info.value is error
    assert fn.calls == 2


async def test_probe_stops_with_the_last_error_when_stopping_is_set() -> None:
    stopping = asyncio.Event()
    calls = 0
    raised: list[EndpointError] = []

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 3:
            stopping.set()
        error = retriable()
        raised.append(error)
        raise error

    with pytest.raises(EndpointError) as info:
        await PROBE.probe(fn, cap_s=0.001, stopping=stopping)

    assert calls == 3
    assert info.value is raised[-1]


async def test_probe_sleep_wakes_early_on_stopping() -> None:
    stopping = asyncio.Event()
    fn = Flaky([retriable() for _ in range(5)])
    # An hour-long initial wait: only the stopping event can end it within the test timeout.
    policy = RetryPolicy(initial_s=3600.0)

    task = asyncio.create_task(policy.probe(fn, cap_s=3600.0, stopping=stopping))
    for _ in range(5):
        await asyncio.sleep(0)
    assert fn.calls == 0
    assert not task.done()

    stopping.set()
    with pytest.raises(EndpointError):
        await asyncio.wait_for(task, timeout=5)
    assert fn.calls == 1


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


def test_circuit_opens_at_the_threshold() -> None:
    changes: list[CircuitState] = []
    circuit = Circuit(3, on_change=changes.append)

    circuit.record_failure()
    circuit.record_failure()
    before = circuit.state
    assert not circuit.is_open
    assert changes == []

    circuit.record_failure()
    assert before is CircuitState.CLOSED
    assert circuit.state is CircuitState.OPEN
    assert circuit.is_open
    assert changes == [CircuitState.OPEN]

    circuit.record_failure()
    circuit.record_failure()
    assert changes == [CircuitState.OPEN]  # once per transition, not per failure


def test_success_closes_the_circuit_once() -> None:
    changes: list[CircuitState] = []
    circuit = Circuit(1, on_change=changes.append)
    circuit.record_failure()

    circuit.record_success()
    circuit.record_success()

    assert circuit.state is CircuitState.CLOSED
    assert changes == [CircuitState.OPEN, CircuitState.CLOSED]


def test_success_resets_the_consecutive_failure_count() -> None:
    changes: list[CircuitState] = []
    circuit = Circuit(3, on_change=changes.append)

    for _ in range(5):
        circuit.record_failure()
        circuit.record_failure()
        circuit.record_success()

    assert circuit.state is CircuitState.CLOSED
    assert changes == []


def test_reopens_after_threshold_failures_again() -> None:
    changes: list[CircuitState] = []
    circuit = Circuit(2, on_change=changes.append)
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()

    circuit.record_failure()
    assert not circuit.is_open
    circuit.record_failure()

    assert circuit.is_open
    assert changes == [CircuitState.OPEN, CircuitState.CLOSED, CircuitState.OPEN]


def test_circuit_works_without_on_change() -> None:
    circuit = Circuit(1)
    circuit.record_failure()
    assert circuit.is_open
    circuit.record_success()
    assert not circuit.is_open


async def test_wait_closed_returns_at_once_while_closed() -> None:
    circuit = Circuit(2)

    await asyncio.wait_for(circuit.wait_closed(), timeout=5)

    assert not circuit.is_open


async def test_wait_closed_blocks_while_open() -> None:
    circuit = Circuit(1)
    circuit.record_failure()

    waiter = asyncio.create_task(circuit.wait_closed())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()

    circuit.record_success()
    await asyncio.wait_for(waiter, timeout=5)
    assert waiter.done()


async def test_probe_lock_is_one_per_circuit() -> None:
    circuit = Circuit(1)

    async with circuit.probe_lock:
        assert circuit.probe_lock.locked()
    assert not circuit.probe_lock.locked()
    assert circuit.probe_lock is circuit.probe_lock
