"""The endpoint limiter: how the adaptive limit moves (pure, fake clock) and how slots,
Retry-After pauses and rate caps behave on a loop."""

from __future__ import annotations

import asyncio

import pytest

from bridge.limiter import AdaptiveLimit, EndpointLimiter, FixedLimit
from tests.support.clock import FakeClock

RTT = 0.05


class SheddingEndpoint:
    """A fake endpoint of ``capacity`` requests at once, RTT each, that rejects any request
    beyond it (the emulator's capacity fault) with a 429 that takes ``reject_s`` to come
    back, driven by a limit on a fake clock."""

    def __init__(self, capacity: int, clock: FakeClock, reject_s: float = 0.002) -> None:
        self.capacity = capacity
        self.clock = clock
        self.reject_s = reject_s
        self.rejections: list[float] = []  # when each rejected request was sent

    def run(self, limit: AdaptiveLimit, seconds: float) -> None:
        # (due, sent, in flight at the send, served?) of every outstanding request
        outstanding: list[tuple[float, float, int, bool]] = []
        end = self.clock() + seconds
        while self.clock() < end:
            for request in sorted(outstanding):
                due, sent, in_flight_at_send, served = request
                if due <= self.clock():
                    outstanding.remove(request)
                    if served:
                        limit.on_success(RTT / 100, RTT, len(outstanding) + 1)
                    else:
                        limit.on_dropped(sent, in_flight_at_send)
            while len(outstanding) < limit.current:
                now, in_flight = self.clock(), len(outstanding) + 1
                serving = sum(1 for r in outstanding if r[3])
                if serving < self.capacity:
                    outstanding.append((now + RTT, now, in_flight, True))
                else:
                    self.rejections.append(now)
                    outstanding.append((now + self.reject_s, now, in_flight, False))
            self.clock.advance(0.001)


def saturated(limit: AdaptiveLimit, clock: FakeClock, n: int, latency: float = 0.001) -> None:
    """``n`` successes while the limit is fully used, one round trip apart per limit's worth."""
    for _ in range(n):
        clock.advance(RTT / max(limit.current, 1))
        limit.on_success(latency, RTT, limit.current)


def test_grows_by_one_per_round_trip_while_saturated_and_healthy() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(1, 8, initial=1, clock=clock)
    saturated(limit, clock, 1 + 1)  # first sample sets the baseline, then one round trip
    assert limit.current == 2
    saturated(limit, clock, 200)
    assert limit.current == 8, "up to the ceiling, never past it"


def test_does_not_grow_while_the_limit_is_not_what_holds_traffic_back() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(1, 8, initial=2, clock=clock)
    for _ in range(100):
        clock.advance(RTT)
        limit.on_success(0.001, RTT, in_flight=1)
    assert limit.current == 2


def test_overload_cuts_multiplicatively_once_per_burst() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(1, 16, initial=10, clock=clock)
    sent = clock()
    clock.advance(0.001)
    limit.on_dropped(sent, 10)
    assert limit.current == 7
    limit.on_dropped(sent, 9)  # another request of the same burst, sent before the cut
    assert limit.current == 7, "one burst counts once"
    clock.advance(0.001)
    limit.on_dropped(clock(), 7)  # sent after the cut: the new limit is too high as well
    assert limit.current == 4
    for _ in range(10):
        clock.advance(0.001)
        limit.on_dropped(clock(), 4)
    assert limit.current == 1, "never below min_in_flight"


def test_timeouts_of_requests_sent_before_a_cut_still_cut_once_a_round_trip_has_passed() -> None:
    """Overload seen as timeouts: every answer comes a whole timeout after its send, so all
    were sent before the first cut; each one arriving after the burst window cuts again."""
    clock = FakeClock()
    limit = AdaptiveLimit(1, 16, burst_s=0.1, clock=clock)
    sent = clock()
    clock.advance(120.0)
    for _ in range(16):
        limit.on_dropped(sent, 16)
        clock.advance(0.2)
    assert limit.current == 1


def test_a_latency_cut_does_not_hide_the_429s_that_follow_it() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(1, 16, clock=clock)
    for _ in range(50):
        clock.advance(RTT)
        limit.on_success(0.001, RTT, 16)
    for _ in range(5):
        clock.advance(RTT)
        limit.on_success(0.01, RTT, 16)  # queueing: a latency cut
    after_latency = limit.current
    assert after_latency < 16
    limit.on_dropped(clock() - 0.001, 16)  # sent just before that cut
    assert limit.current == int(after_latency * 0.7)


def test_a_burst_from_the_ceiling_settles_at_the_capacity_within_a_round_trip_or_two() -> None:
    """Started at a ceiling of 16 against an endpoint that answers 4 at once and rejects
    the rest at once: the rejections of the first burst count once, and the concurrency
    remembered is the one the endpoint rejected at (5), not the limit left after the cuts
    (at 2, the limit waited a probe interval per level: 10 s at half rate in the bench)."""
    clock = FakeClock()
    limit = AdaptiveLimit(1, 16, probe_interval_s=5.0, clock=clock)
    endpoint = SheddingEndpoint(capacity=4, clock=clock)
    start = clock()
    endpoint.run(limit, seconds=1.0)
    assert limit.current == 4
    assert endpoint.rejections, "the burst met the capacity"
    assert max(endpoint.rejections) - start < RTT, "and no 429 came after its round trip"


def test_growth_past_the_level_that_overloaded_is_tried_once_per_probe_interval() -> None:
    """An endpoint that sheds load with 429 (no latency warning): one 429 per interval."""
    clock = FakeClock()
    limit = AdaptiveLimit(1, 8, initial=3, probe_interval_s=5.0, clock=clock)
    limit.on_success(0.001, RTT, 3)
    limit.on_dropped(clock(), 3)  # capacity is 2
    assert limit.current == 2
    saturated(limit, clock, 40)  # 40 successes take 1 s
    assert limit.current == 2, "does not walk straight back into the 429"
    clock.advance(5.0)
    saturated(limit, clock, 10)
    assert limit.current == 3, "tries the level again after the interval"
    saturated(limit, clock, 40)
    assert limit.current == 3, "and the next level only after another interval"


def test_rising_latency_per_event_cuts_the_limit() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(1, 16, initial=8, clock=clock)
    for _ in range(50):
        clock.advance(RTT)
        limit.on_success(0.001, RTT, 8)
    before = limit.current
    for _ in range(5):
        clock.advance(RTT)
        limit.on_success(0.01, RTT, 8)  # ten times slower per event: queueing
    assert limit.current < before


def test_a_bigger_batch_at_the_same_latency_per_event_is_not_queueing() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(1, 16, initial=8, clock=clock)
    for size in [10, 100, 10, 100] * 40:
        clock.advance(RTT)
        rtt = 0.0005 * size
        limit.on_success(rtt / size, rtt, limit.current)
    assert limit.current == 16


def test_fixed_limit_never_moves() -> None:
    limit = FixedLimit(4)
    limit.on_dropped(0.0, 5)
    limit.on_success(1.0, 1.0, 4)
    assert limit.current == 4


async def test_slots_bound_requests_and_a_release_lets_the_next_one_in() -> None:
    limiter = EndpointLimiter("m", FixedLimit(2))
    first, second = await limiter.acquire(1), await limiter.acquire(1)
    third = asyncio.ensure_future(limiter.acquire(1))
    await asyncio.sleep(0)
    assert not third.done()
    assert limiter.in_flight == 2
    first.success(1)
    slot = await asyncio.wait_for(third, timeout=5)
    second.ignore()
    slot.dropped()
    assert limiter.in_flight == 0


async def test_an_outcome_is_counted_once() -> None:
    limiter = EndpointLimiter("m", FixedLimit(2))
    slot = await limiter.acquire(1)
    slot.success(1)
    slot.dropped()
    assert limiter.in_flight == 0


async def test_retry_after_pauses_every_request_to_the_endpoint() -> None:
    limiter = EndpointLimiter("m", FixedLimit(4))
    limiter.pause(0.2)
    started = asyncio.get_running_loop().time()
    slot = await limiter.acquire(1)
    assert asyncio.get_running_loop().time() - started >= 0.15
    assert limiter.pauses == 1
    slot.ignore()


async def test_a_waiting_acquire_can_be_cancelled_without_leaking_a_slot() -> None:
    limiter = EndpointLimiter("m", FixedLimit(1))
    held = await limiter.acquire(1)
    waiting = asyncio.ensure_future(limiter.acquire(1))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.ignore()
    assert limiter.in_flight == 0


def test_try_acquire_takes_a_free_slot_without_waiting() -> None:
    clock = FakeClock()
    limiter = EndpointLimiter("m", FixedLimit(2), clock=clock)
    first, second = limiter.try_acquire(), limiter.try_acquire()
    assert first is not None
    assert second is not None
    assert limiter.try_acquire() is None, "the limit is full: acquire() must wait"
    first.ignore()
    third = limiter.try_acquire()
    assert third is not None
    assert limiter.in_flight == 2
    second.ignore()
    third.ignore()
    assert limiter.in_flight == 0


def test_try_acquire_leaves_pauses_and_rate_caps_to_acquire() -> None:
    clock = FakeClock()
    paused = EndpointLimiter("m", FixedLimit(4), clock=clock)
    paused.pause(1.0)
    assert paused.try_acquire() is None
    clock.advance(1.0)
    slot = paused.try_acquire()
    assert slot is not None, "the pause is over"
    slot.ignore()
    capped = EndpointLimiter("m", FixedLimit(4), requests_per_s=100.0, clock=clock)
    assert capped.try_acquire() is None, "a rate budget is consulted by acquire() alone"
    assert capped.in_flight == 0
    assert paused.in_flight == 0


async def test_a_slot_waiting_for_a_rate_token_is_not_counted_at_the_endpoint() -> None:
    """The rate cap, not the limit, holds it back: counted as outstanding, it would make a
    rate-capped endpoint look saturated and grow the limit to its ceiling."""
    seen: list[int] = []

    class Recording(FixedLimit):
        def on_success(self, latency_per_event_s: float, rtt_s: float, in_flight: int) -> None:
            seen.append(in_flight)

    limiter = EndpointLimiter("m", Recording(4), requests_per_s=1.0)
    sent = await limiter.acquire(1)  # the bucket's one token
    pacing = asyncio.ensure_future(limiter.acquire(1))  # the next token is a second away
    await asyncio.sleep(0)
    assert limiter.in_flight == 2, "its slot is taken"
    assert limiter.at_endpoint == 1
    sent.success(1)
    assert seen == [1], "the sample saw one request at the endpoint, itself"
    pacing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pacing
    assert (limiter.in_flight, limiter.at_endpoint) == (0, 0)


async def test_adaptive_limit_changes_are_reported() -> None:
    seen: list[int] = []
    limiter = EndpointLimiter(
        "m", AdaptiveLimit(1, 4, initial=4), on_change=lambda lim: seen.append(lim.limit.current)
    )
    slot = await limiter.acquire(1)
    slot.dropped()
    assert seen[-1] == 2


def test_it_starts_at_the_ceiling() -> None:
    assert AdaptiveLimit(1, 8).current == 8


def test_jitter_of_a_millisecond_answer_is_not_queueing() -> None:
    """A 1 ms answer (10 us an event) that now and then takes 15 ms (a pause somewhere)
    is many times slower per event, yet adds no queueing worth cutting for: the instant
    endpoint of the bench lost a quarter of its rate to such cuts."""
    clock = FakeClock()
    limit = AdaptiveLimit(1, 8, clock=clock)
    for i in range(200):
        clock.advance(0.002)
        per_event = 0.00015 if i % 10 == 9 else 0.00001
        limit.on_success(per_event, per_event * 100, limit.current)
    assert limit.current == 8
