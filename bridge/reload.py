"""What a reload changes: old config + new config + what runs -> a plan. Pure, no I/O.

A route restarts when its own file changed, when the workspace it calls changed (host,
identity, a secret *reference*: a rotated secret file needs no reload, it is read when
used), or when the bounds of the endpoint limiter it shares with other routes changed
(every route on that endpoint restarts, so they keep sharing one limiter). A route that
is in the new config but not running (new, or failed to start before) is started.
Workspaces whose settings changed get a new token cache; the others keep theirs.
``[pulsar]`` changes need a process restart and are only reported.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from bridge.config import Config
from bridge.config_bridge import WorkspaceSettings
from bridge.config_route import EndpointSettings, RouteSettings
from bridge.identity import invocation_url

EndpointKey = tuple[str, str | None]


@dataclass(frozen=True)
class ReloadPlan:
    stop: tuple[str, ...]  # removed: drain, stop, forget their metric series
    restart: tuple[str, ...]  # changed: drain, stop, start again
    start: tuple[str, ...]  # new, or not running (failed before)
    rebuild_workspaces: tuple[str | None, ...]  # fresh auth (token cache) for these
    pulsar_changed: bool

    @property
    def empty(self) -> bool:
        return not (self.stop or self.restart or self.start or self.rebuild_workspaces)


def endpoint_key(config: Config, route: RouteSettings) -> EndpointKey:
    """Routes with the same key share one endpoint limiter."""
    return invocation_url(config, route), route.endpoint.workspace


def limiter_bounds(config: Config, key: EndpointKey) -> tuple[Any, ...]:
    """What the shared limiter of ``key`` is built from: every sharing route's settings."""
    shared: list[EndpointSettings] = [
        r.endpoint for r in config.routes if endpoint_key(config, r) == key
    ]
    return tuple(
        (e.concurrency, e.min_in_flight, e.max_in_flight, e.max_requests_per_s, e.max_events_per_s)
        for e in shared
    )


def plan_reload(old: Config, new: Config, running: Collection[str]) -> ReloadPlan:
    old_routes = {r.name: r for r in old.routes}
    new_routes = {r.name: r for r in new.routes}
    rebuild = _changed_workspaces(old, new)
    stop = tuple(sorted(n for n in running if n not in new_routes))
    restart = tuple(
        sorted(
            name
            for name in running
            if name in new_routes
            and (
                old_routes.get(name) != new_routes[name]
                or _calls(new_routes[name], rebuild)
                or _bounds_changed(old, new, new_routes[name])
            )
        )
    )
    start = tuple(sorted(n for n in new_routes if n not in running))
    return ReloadPlan(
        stop=stop,
        restart=restart,
        start=start,
        rebuild_workspaces=tuple(sorted(rebuild, key=lambda n: n or "")),
        pulsar_changed=old.bridge.pulsar != new.bridge.pulsar,
    )


def _workspace(config: Config, name: str | None) -> WorkspaceSettings | None:
    return config.bridge.databricks if name is None else config.bridge.workspaces.get(name)


def _changed_workspaces(old: Config, new: Config) -> set[str | None]:
    names: set[str | None] = {None, *old.bridge.workspaces, *new.bridge.workspaces}
    return {n for n in names if _workspace(old, n) != _workspace(new, n)}


def _calls(route: RouteSettings, workspaces: set[str | None]) -> bool:
    return route.endpoint.name is not None and route.endpoint.workspace in workspaces


def _bounds_changed(old: Config, new: Config, route: RouteSettings) -> bool:
    key = endpoint_key(new, route)
    return limiter_bounds(old, key) != limiter_bounds(new, key)
