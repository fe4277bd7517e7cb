"""Group events into request batches by count, bytes and linger time, whichever comes first.

Pure logic with an injectable clock: no I/O, no asyncio. The relay asks :meth:`Batcher.add`
for every event and :meth:`Batcher.due` when its wait for the next event times out.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]


class Batcher(Generic[T]):
    """Accumulates items into batches of at most ``max_items`` and ``max_bytes``.

    A batch is released when it is full by count, when the next item would push it past
    ``max_bytes`` (the item then starts the next batch), or ``linger_s`` after its first
    item arrived. An item larger than ``max_bytes`` on its own is released as a batch of
    one, so it is never stuck; whether the endpoint accepts it is the invoker's concern.
    """

    def __init__(
        self,
        *,
        max_items: int,
        max_bytes: int,
        linger_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        # "not >= 0" also rejects NaN, which would never come due.
        if max_items < 1 or max_bytes < 1 or not linger_s >= 0:
            raise ValueError("max_items and max_bytes must be >= 1, linger_s >= 0")
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._clock = clock
        self._items: list[T] = []
        self._bytes = 0
        self._started = 0.0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def deadline(self) -> float | None:
        """Clock time at which the open batch must be released, or None when empty."""
        return self._started + self._linger_s if self._items else None

    def add(self, item: T, size: int) -> list[list[T]]:
        """Add one item; return the batches (zero, one or two) that are now complete."""
        ready: list[list[T]] = []
        if self._items and self._bytes + size > self._max_bytes:
            ready.append(self._take())
        if not self._items:
            self._started = self._clock()
        self._items.append(item)
        self._bytes += size
        if len(self._items) >= self._max_items or self._bytes >= self._max_bytes:
            ready.append(self._take())
        return ready

    def due(self) -> list[T] | None:
        """Release the open batch if its linger time has passed."""
        deadline = self.deadline
        if deadline is not None and self._clock() >= deadline:
            return self._take()
        return None

    def flush(self) -> list[T] | None:
        """Release whatever is open, regardless of time (used when draining)."""
        return self._take() if self._items else None

    def _take(self) -> list[T]:
        items, self._items, self._bytes = self._items, [], 0
        return items


class Lanes(Generic[T]):
    """``count`` batchers; an item's key picks its lane, so one key always shares a lane.

    Ordered routes keep at most one batch per lane in flight, which keeps each key's
    events in order while still using ``count`` requests in parallel. With one lane this
    is a plain :class:`Batcher`. Items without a key go to lane 0.
    """

    def __init__(
        self,
        count: int,
        *,
        max_items: int,
        max_bytes: int,
        linger_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._lanes = [
            Batcher[T](max_items=max_items, max_bytes=max_bytes, linger_s=linger_s, clock=clock)
            for _ in range(count)
        ]

    def lane_of(self, key: str | None) -> int:
        if key is None or len(self._lanes) == 1:
            return 0
        return zlib.crc32(key.encode("utf-8")) % len(self._lanes)

    @property
    def deadline(self) -> float | None:
        deadlines = [d for d in (lane.deadline for lane in self._lanes) if d is not None]
        return min(deadlines) if deadlines else None

    def add(self, key: str | None, item: T, size: int) -> list[tuple[int, list[T]]]:
        lane = self.lane_of(key)
        return [(lane, batch) for batch in self._lanes[lane].add(item, size)]

    def due(self) -> list[tuple[int, list[T]]]:
        return [(i, b) for i, lane in enumerate(self._lanes) if (b := lane.due()) is not None]

    def flush(self) -> list[tuple[int, list[T]]]:
        return [(i, b) for i, lane in enumerate(self._lanes) if (b := lane.flush()) is not None]
