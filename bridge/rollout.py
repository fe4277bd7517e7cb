"""Which served model versions scored a route's events: totals, and the split right now.

While an endpoint rolls a new version out it splits traffic between served models (its
``traffic_config.routes``), and each answer names the one that scored it
(``served-model-name``). The share each version took of the last ``window`` scored events
shows the split as it stands, where totals since start-up would average it away.
"""

from __future__ import annotations

from collections import Counter, deque

DEFAULT_WINDOW = 10_000
# Counted under this name when the endpoint names no model (a local MLflow server).
UNNAMED = "unknown"


class VersionShares:
    """Events per served model version: all of them, and the last ``window`` or so.

    The window moves a batch at a time, so it holds between ``window`` and ``window``
    plus one batch of events; each ``add`` costs O(1) amortised.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 event")
        self._window = window
        self._totals: Counter[str] = Counter()
        self._recent: Counter[str] = Counter()
        self._batches: deque[tuple[str, int]] = deque()
        self._recent_events = 0

    def add(self, version: str | None, events: int) -> None:
        """``events`` were scored by ``version``."""
        name = version or UNNAMED
        self._totals[name] += events
        self._recent[name] += events
        self._batches.append((name, events))
        self._recent_events += events
        while self._recent_events - self._batches[0][1] >= self._window:
            old, count = self._batches.popleft()
            self._recent_events -= count
            self._recent[old] -= count
            if not self._recent[old]:
                del self._recent[old]

    def totals(self) -> dict[str, int]:
        return dict(self._totals)

    def shares(self) -> dict[str, float]:
        """Each version's share of the recent events (versions seen recently only)."""
        if not self._recent_events:
            return {}
        return {name: n / self._recent_events for name, n in self._recent.items()}

    def status(self) -> dict[str, dict[str, float]]:
        """Per version: events since start-up and the share of the recent ones (for /status)."""
        shares = self.shares()
        return {
            name: {"events": total, "recent_share": round(shares.get(name, 0.0), 4)}
            for name, total in sorted(self._totals.items())
        }
