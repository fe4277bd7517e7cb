"""What a reload changes (bridge.reload.plan_reload), from two configs and what runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bridge.config import Config, load_config
from bridge.observe import Metrics, RouteMetrics
from bridge.reload import plan_reload
from tests.support.harness import Topics, route_config, write_config

HOST = "https://adb-1.example.net"


def config(
    tmp_path: Path,
    routes: dict[str, dict[str, Any]],
    databricks: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    directory = tmp_path / "config"
    shutil.rmtree(directory, ignore_errors=True)
    write_config(
        directory,
        service_url="pulsar://127.0.0.1:6650",
        databricks=databricks or {"host": HOST, "client_id": "sp", "client_secret": "s3cret-1"},
        routes=routes,
        extra=extra,
    )
    return load_config(directory, env={"NEW_SECRET": "s3cret-from-env"})


def route(name: str, *, url: str | None = None, **sections: Any) -> dict[str, Any]:
    topics = Topics(
        source=f"persistent://public/default/{name}-in",
        result=f"persistent://public/default/{name}-out",
        dlq=f"persistent://public/default/{name}-dlq",
        subscription=f"sub-{name}",
    )
    settings = route_config(topics, **sections)
    if url is not None:
        settings["endpoint"] = {"url": url}
    return settings


def test_an_unchanged_config_changes_nothing(tmp_path: Path) -> None:
    routes = {"a": route("a"), "b": route("b")}
    old = config(tmp_path, routes)
    new = config(tmp_path, routes)
    plan = plan_reload(old, new, {"a", "b"})
    assert plan.empty
    assert not plan.pulsar_changed


def test_added_removed_and_changed_routes(tmp_path: Path) -> None:
    old = config(tmp_path, {"a": route("a"), "b": route("b")})
    new = config(tmp_path, {"a": route("a", batch={"max_events": 7}), "c": route("c")})
    plan = plan_reload(old, new, {"a", "b"})
    assert plan.stop == ("b",)
    assert plan.restart == ("a",)
    assert plan.start == ("c",)


def test_a_route_that_failed_to_start_before_is_started_again(tmp_path: Path) -> None:
    routes = {"a": route("a"), "b": route("b")}
    plan = plan_reload(config(tmp_path, routes), config(tmp_path, routes), {"a"})
    assert plan.start == ("b",)
    assert plan.restart == ()


def test_changed_credentials_rebuild_the_workspace_and_restart_its_routes(
    tmp_path: Path,
) -> None:
    """The old bug: the new config was compared with itself, so the old token stayed."""
    routes = {"a": route("a"), "plain": route("plain", url="http://127.0.0.1:1/x")}
    old = config(tmp_path, routes)
    for changed in (
        {"host": HOST, "client_id": "sp-2", "client_secret": "s3cret-1"},
        {"host": HOST, "client_id": "sp", "client_secret": "env:NEW_SECRET"},
        {"host": "https://adb-2.example.net", "client_id": "sp", "client_secret": "s3cret-1"},
    ):
        new = config(tmp_path, routes, databricks=changed)
        plan = plan_reload(old, new, {"a", "plain"})
        assert plan.rebuild_workspaces == (None,), changed
        assert plan.restart == ("a",), "the route on a plain URL calls no workspace"


def test_a_changed_named_workspace_restarts_only_its_routes(tmp_path: Path) -> None:
    routes = {"a": route("a"), "b": route("b", endpoint={"name": "m", "workspace": "two"})}
    two = {"host": HOST, "token": "dapi-one-token"}
    old = config(tmp_path, routes, extra={"databricks": {"two": two}})
    new = config(
        tmp_path, routes, extra={"databricks": {"two": {**two, "token": "dapi-two-token"}}}
    )
    plan = plan_reload(old, new, {"a", "b"})
    assert plan.rebuild_workspaces == ("two",)
    assert plan.restart == ("b",)


def test_changed_limiter_bounds_restart_every_route_sharing_the_endpoint(
    tmp_path: Path,
) -> None:
    shared = {"name": "fraud-model"}
    old = config(tmp_path, {"a": route("a", endpoint=shared), "b": route("b", endpoint=shared)})
    new = config(
        tmp_path,
        {
            "a": route("a", endpoint={**shared, "max_in_flight": 16}),
            "b": route("b", endpoint=shared),
        },
    )
    plan = plan_reload(old, new, {"a", "b"})
    assert plan.restart == ("a", "b"), "both share one limiter, rebuilt with the new bounds"


def test_a_pulsar_change_is_reported(tmp_path: Path) -> None:
    routes = {"a": route("a")}
    old = config(tmp_path, routes)
    new = config(tmp_path, routes, extra={"pulsar": {"operation_timeout_s": 5}})
    assert plan_reload(old, new, {"a"}).pulsar_changed


def test_a_removed_route_s_metric_series_are_forgotten() -> None:
    metrics = Metrics()
    for name in ("gone", "kept"):
        route_metrics = RouteMetrics(metrics, name)
        route_metrics.consumed(3)
        route_metrics.request(503, 0.1)
        route_metrics.paused("down", None)
    metrics.forget_route("gone")
    text = "\n".join(f"{s.name}{s.labels}" for f in metrics.registry.collect() for s in f.samples)
    assert "'gone'" not in text
    assert "'kept'" in text
    assert metrics.value("bridge_events_in_total", route="kept") == 3
