"""One limiter per endpoint (bridge.endpoint_limits): shared bounds, metrics, reloads."""

from __future__ import annotations

from pathlib import Path

from bridge.endpoint_limits import EndpointLimits
from bridge.limiter import AdaptiveLimit, FixedLimit
from bridge.observe import Metrics
from tests.test_reload import config, route


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_routes_calling_one_endpoint_share_a_limiter_bounded_by_all_of_them(
    tmp_path: Path,
) -> None:
    shared = {"name": "fraud-model"}
    cfg = config(
        tmp_path,
        {
            "a": route(
                "a",
                endpoint={**shared, "max_in_flight": 4, "min_in_flight": 3, "concurrency": "fixed"},
            ),
            "b": route(
                "b",
                endpoint={**shared, "max_in_flight": 12, "min_in_flight": 2},
                batch={"max_events": 80},
            ),
            "other": route("other", endpoint={"name": "spam-model", "concurrency": "fixed"}),
        },
    )
    by_name = {r.name: r for r in cfg.routes}
    limits = EndpointLimits(Metrics())
    a = limits.for_route(cfg, by_name["a"])
    assert limits.for_route(cfg, by_name["b"]) is a
    assert limits.for_route(cfg, by_name["other"]) is not a
    assert isinstance(a.limit, AdaptiveLimit), "adaptive when any sharing route asks for it"
    assert a.limit.current == 12, "the highest max_in_flight is the ceiling"
    assert a.limit.min_limit == 2, "the lowest min_in_flight is the floor"
    assert isinstance(limits.for_route(cfg, by_name["other"]).limit, FixedLimit)


def test_the_limit_and_retry_after_pauses_are_exported_per_endpoint(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"a": route("a", endpoint={"name": "fraud-model"})})
    metrics = Metrics()
    limiter = EndpointLimits(metrics).for_route(cfg, cfg.routes[0])
    labels = {"endpoint": "fraud-model"}
    assert sample(metrics, "bridge_endpoint_concurrency_limit", labels) == limiter.limit.current
    limiter.pause(1.0)
    limiter.pause(5.0)
    assert sample(metrics, "bridge_endpoint_pauses_total", labels) == 2


def test_a_reload_keeps_the_limiters_of_routes_still_running(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        {
            "a": route("a", endpoint={"name": "fraud-model"}),
            "b": route("b", endpoint={"name": "spam-model"}),
        },
    )
    a, b = cfg.routes
    limits = EndpointLimits(Metrics())
    kept, dropped = limits.for_route(cfg, a), limits.for_route(cfg, b)
    limits.keep(cfg, [(a, kept)])  # b was stopped (or restarts with new bounds)
    assert limits.for_route(cfg, a) is kept
    assert limits.for_route(cfg, b) is not dropped
