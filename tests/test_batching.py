"""Batcher: release by count, by bytes, by linger time, and on flush, with an injected clock."""

from __future__ import annotations

import math

import pytest

from bridge.batching import Batcher
from tests.support.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


def make(
    clock: FakeClock, *, max_items: int = 3, max_bytes: int = 100, linger_s: float = 0.5
) -> Batcher[str]:
    return Batcher(max_items=max_items, max_bytes=max_bytes, linger_s=linger_s, clock=clock)


def test_releases_a_batch_when_the_count_limit_is_reached(clock: FakeClock) -> None:
    batcher = make(clock, max_items=3)

    assert batcher.add("a", 1) == []
    assert batcher.add("b", 1) == []
    assert len(batcher) == 2
    assert batcher.add("c", 1) == [["a", "b", "c"]]
    assert len(batcher) == 0
    assert batcher.deadline is None
    # The next item opens a fresh batch rather than appending to the released one.
    assert batcher.add("d", 1) == []
    assert batcher.flush() == ["d"]


def test_item_that_would_overflow_the_byte_limit_starts_the_next_batch(
    clock: FakeClock,
) -> None:
    batcher = make(clock, max_items=10, max_bytes=10)

    assert batcher.add("a", 4) == []
    assert batcher.add("b", 4) == []
    # 4 + 4 + 3 > 10: the open batch goes out and "c" opens the next one.
    assert batcher.add("c", 3) == [["a", "b"]]
    assert len(batcher) == 1
    assert batcher.flush() == ["c"]


def test_reaching_the_byte_limit_exactly_releases_the_batch(clock: FakeClock) -> None:
    batcher = make(clock, max_items=10, max_bytes=10)

    assert batcher.add("a", 6) == []
    assert batcher.add("b", 4) == [["a", "b"]]
    assert len(batcher) == 0


def test_byte_limit_counts_only_the_open_batch(clock: FakeClock) -> None:
    batcher = make(clock, max_items=10, max_bytes=10)

    assert batcher.add("a", 6) == []
    assert batcher.add("b", 6) == [["a"]]
    # "b" (6 bytes) is alone now; 6 + 3 fits, so "c" joins it.
    assert batcher.add("c", 3) == []
    assert batcher.flush() == ["b", "c"]


def test_oversized_item_is_released_alone(clock: FakeClock) -> None:
    batcher = make(clock, max_items=10, max_bytes=10)

    assert batcher.add("small", 2) == []
    # The open batch is released first, then the oversized item on its own: two batches.
    assert batcher.add("huge", 50) == [["small"], ["huge"]]
    assert len(batcher) == 0
    assert batcher.deadline is None


def test_oversized_item_into_an_empty_batcher_is_one_batch_of_one(clock: FakeClock) -> None:
    batcher = make(clock, max_items=10, max_bytes=10)

    assert batcher.add("huge", 11) == [["huge"]]
    assert batcher.flush() is None


def test_deadline_is_none_while_empty(clock: FakeClock) -> None:
    batcher = make(clock)

    assert batcher.deadline is None
    assert batcher.due() is None
    assert batcher.flush() is None


def test_deadline_is_linger_after_the_first_item(clock: FakeClock) -> None:
    batcher = make(clock, linger_s=0.5)

    batcher.add("a", 1)
    assert batcher.deadline == pytest.approx(100.5)
    clock.advance(0.3)
    batcher.add("b", 1)
    # A later item does not extend the batch's deadline.
    assert batcher.deadline == pytest.approx(100.5)


def test_due_releases_only_once_the_deadline_has_passed(clock: FakeClock) -> None:
    batcher = make(clock, linger_s=0.5)
    batcher.add("a", 1)
    batcher.add("b", 1)

    clock.advance(0.25)
    assert batcher.due() is None
    assert len(batcher) == 2

    clock.now = 100.5  # exactly at the deadline
    assert batcher.due() == ["a", "b"]
    assert batcher.deadline is None
    assert batcher.due() is None


def test_next_batch_gets_its_own_deadline(clock: FakeClock) -> None:
    batcher = make(clock, max_items=2, linger_s=1.0)
    batcher.add("a", 1)
    clock.advance(0.75)
    assert batcher.add("b", 1) == [["a", "b"]]

    clock.advance(0.5)
    batcher.add("c", 1)
    # Measured from "c" (at 101.25), not from the released batch's first item.
    assert batcher.deadline == 102.25
    clock.advance(0.75)
    assert batcher.due() is None
    clock.advance(0.25)
    assert batcher.due() == ["c"]


def test_byte_overflow_starts_the_new_batch_deadline_at_the_overflowing_item(
    clock: FakeClock,
) -> None:
    batcher = make(clock, max_items=10, max_bytes=10, linger_s=1.0)
    batcher.add("a", 8)
    clock.advance(0.75)

    assert batcher.add("b", 8) == [["a"]]
    assert batcher.deadline == 101.75


def test_zero_linger_is_due_immediately(clock: FakeClock) -> None:
    batcher = make(clock, linger_s=0)

    assert batcher.add("a", 1) == []
    assert batcher.due() == ["a"]


def test_flush_releases_whatever_is_open_regardless_of_time(clock: FakeClock) -> None:
    batcher = make(clock, linger_s=60)
    batcher.add("a", 1)
    batcher.add("b", 1)

    assert batcher.flush() == ["a", "b"]
    assert len(batcher) == 0
    assert batcher.deadline is None
    assert batcher.flush() is None


def test_released_batches_keep_arrival_order_and_lose_nothing(clock: FakeClock) -> None:
    batcher = make(clock, max_items=4, max_bytes=20)
    items = [(f"e{i}", size) for i, size in enumerate([5, 9, 1, 12, 30, 2, 2, 2, 2, 7])]

    released: list[list[str]] = []
    for item, size in items:
        released.extend(batcher.add(item, size))
    rest = batcher.flush()
    if rest is not None:
        released.append(rest)

    assert [item for batch in released for item in batch] == [item for item, _ in items]
    sizes = dict(items)
    for batch in released:
        assert 1 <= len(batch) <= 4
        # Only a batch of one may exceed the byte limit.
        assert len(batch) == 1 or sum(sizes[i] for i in batch) <= 20


@pytest.mark.parametrize(
    ("max_items", "max_bytes", "linger_s"),
    [(0, 100, 0.1), (-1, 100, 0.1), (10, 0, 0.1), (10, -5, 0.1), (10, 100, -0.001)],
)
def test_invalid_arguments_are_rejected(max_items: int, max_bytes: int, linger_s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Batcher[str](max_items=max_items, max_bytes=max_bytes, linger_s=linger_s)


def test_nan_linger_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be"):
        Batcher[str](max_items=10, max_bytes=100, linger_s=math.nan)
