"""One limiter per endpoint (its URL and identity), shared by every route that calls it.

The limiter's bounds cover all of those routes: the highest ``max_in_flight`` is the
ceiling, the lowest ``min_in_flight`` the floor, the lowest rate caps apply, and the limit
adapts if any of them asks for it. Its level, requests in flight and Retry-After pauses
are exported per endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.config import Config
from bridge.config_route import RouteSettings
from bridge.limiter import AdaptiveLimit, EndpointLimiter, FixedLimit, Limit
from bridge.observe import Metrics
from bridge.reload import EndpointKey, endpoint_key


class EndpointLimits:
    """The daemon's endpoint limiters, built on first use and kept across reloads."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._limiters: dict[EndpointKey, EndpointLimiter] = {}
        self._pauses_counted: dict[str, int] = {}

    def for_route(self, config: Config, settings: RouteSettings) -> EndpointLimiter:
        """The limiter of the endpoint ``settings`` calls, built if none is yet."""
        key = endpoint_key(config, settings)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._build(config, settings, key)
            self._limiters[key] = limiter
            self._changed(limiter)
        return limiter

    def keep(
        self, config: Config, running: Iterable[tuple[RouteSettings, EndpointLimiter]]
    ) -> None:
        """After a reload: keep the limiters of routes still running; the others (no route
        uses them any more, or their bounds changed and their routes restart) are built
        afresh when next asked for."""
        self._limiters = {}
        for settings, limiter in running:
            self._limiters.setdefault(endpoint_key(config, settings), limiter)

    def _build(self, config: Config, settings: RouteSettings, key: EndpointKey) -> EndpointLimiter:
        sharing = [r.endpoint for r in config.routes if endpoint_key(config, r) == key] or [
            settings.endpoint
        ]
        ceiling = max(e.max_in_flight for e in sharing)
        limit: Limit = FixedLimit(ceiling)
        if any(e.concurrency == "adaptive" for e in sharing):
            limit = AdaptiveLimit(min(e.min_in_flight for e in sharing), ceiling)
        return EndpointLimiter(
            settings.endpoint.name or key[0],
            limit,
            requests_per_s=_lowest(e.max_requests_per_s for e in sharing),
            events_per_s=_lowest(e.max_events_per_s for e in sharing),
            max_batch_events=max(r.batch.max_events for r in config.routes),
            on_change=self._changed,
        )

    def _changed(self, limiter: EndpointLimiter) -> None:
        metrics = self._metrics
        metrics.endpoint_limit.labels(limiter.name).set(limiter.limit.current)
        metrics.endpoint_in_flight.labels(limiter.name).set(limiter.in_flight)
        counted = self._pauses_counted.get(limiter.name, 0)
        if limiter.pauses > counted:
            metrics.endpoint_pauses.labels(limiter.name).inc(limiter.pauses - counted)
            self._pauses_counted[limiter.name] = limiter.pauses


def _lowest(values: Iterable[float | None]) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None
