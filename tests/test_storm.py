"""The storm guard's verdicts on batches whose every event was rejected."""

from __future__ import annotations

import asyncio

from bridge.storm import StormGuard, Verdict


async def test_a_batch_scored_elsewhere_makes_the_waiting_ones_poison() -> None:
    guard = StormGuard(3, window_s=10)
    waiting = asyncio.ensure_future(guard.verdict(storm_in_progress=False))
    await asyncio.sleep(0)
    assert not waiting.done()
    guard.scored()
    assert await waiting is Verdict.POISON


async def test_threshold_batches_rejected_at_once_are_a_storm() -> None:
    guard = StormGuard(3, window_s=10)
    verdicts = await asyncio.gather(*(guard.verdict(storm_in_progress=False) for _ in range(3)))
    assert verdicts == [Verdict.STORM] * 3


async def test_undecided_for_the_window_is_poison() -> None:
    guard = StormGuard(3, window_s=0.01)
    assert await guard.verdict(storm_in_progress=False) is Verdict.POISON


async def test_during_a_storm_a_rejected_batch_is_storm_at_once() -> None:
    guard = StormGuard(3, window_s=10)
    assert await guard.verdict(storm_in_progress=True) is Verdict.STORM


async def test_threshold_zero_turns_it_off() -> None:
    guard = StormGuard(0, window_s=10)
    assert await guard.verdict(storm_in_progress=True) is Verdict.POISON


async def test_batches_rejected_one_after_the_other_are_a_storm_too() -> None:
    """One ordered lane: the batches come one after another, never side by side."""
    guard = StormGuard(3, window_s=0.01)
    first = await guard.verdict(storm_in_progress=False)
    second = await guard.verdict(storm_in_progress=False)
    third = await guard.verdict(storm_in_progress=False)
    assert [first, second, third] == [Verdict.POISON, Verdict.POISON, Verdict.STORM]


async def test_a_scored_batch_breaks_the_streak() -> None:
    guard = StormGuard(3, window_s=0.01)
    await guard.verdict(storm_in_progress=False)
    await guard.verdict(storm_in_progress=False)
    guard.scored()
    assert await guard.verdict(storm_in_progress=False) is Verdict.POISON
