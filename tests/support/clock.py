"""A clock for tests: it moves only when told to."""

from __future__ import annotations


class FakeClock:
    """Monotonic or epoch seconds (``now``), moved by :meth:`advance`; call it to read."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
