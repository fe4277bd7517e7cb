"""What the daemon's HTTP surface answers: /metrics, /healthz, /readyz and /status.

    RouteView, DaemonView   what the app reads from a route and from the daemon (Protocols,
                            faked in tests)
    create_app              the Starlette app over a DaemonView

Every answer passes the daemon's :class:`~bridge.redaction.Redactor` on its way out: route
errors and endpoint reasons quote peers, and a peer may echo the token it was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.gate import Pause
from bridge.health_probe import EndpointReadiness, clip_reason
from bridge.observe import RouteMetrics
from bridge.redaction import Redactor, redact_json, scrub

DEFAULT_LAG_THRESHOLD_S = 10.0


class RouteView(Protocol):
    """What the HTTP surface reads from one route (:class:`bridge.relay.Route` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...  # "starting" | "running" | "paused" | "draining"

    @property
    def pause(self) -> Pause | None: ...  # why a paused route is paused

    @property
    def in_flight(self) -> int: ...

    @property
    def subscribed(self) -> bool: ...

    @property
    def metrics(self) -> RouteMetrics: ...


class DaemonView(Protocol):
    """What the HTTP surface reads from the daemon; never raises."""

    @property
    def routes(self) -> Sequence[RouteView]: ...

    def broker_connected(self) -> bool: ...

    def failed_routes(self) -> Mapping[str, str]:
        """Routes that failed to start after a reload (retried), and why."""
        ...

    def loop_lag_s(self) -> float: ...

    def uptime_s(self) -> float: ...

    async def endpoint_states(self) -> Mapping[str, EndpointReadiness | None]:
        """Route name -> its endpoint's readiness; None for a route on a plain URL."""
        ...


def create_app(
    view: DaemonView,
    registry: CollectorRegistry,
    *,
    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S,
    redactor: Redactor | None = None,
) -> Starlette:
    """The ASGI app that :class:`bridge.health.HealthServer` serves; every answer passes
    ``redactor``."""
    redact = redactor.redact if redactor is not None else scrub

    def answer(content: Any, status_code: int = 200) -> Response:
        """The one way this app answers JSON: every string in it redacted."""
        return JSONResponse(redact_json(content, redact), status_code=status_code)

    async def metrics(request: Request) -> Response:
        # Label values come from the config, not from peers; redacted all the same.
        text = redact(generate_latest(registry).decode("utf-8"), multiline=True)
        return Response(text.encode("utf-8"), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        lag = view.loop_lag_s()
        if lag < lag_threshold_s:
            return answer({"status": "ok"})
        reason = f"event loop heartbeat is {lag:.1f}s old (limit {lag_threshold_s:g}s)"
        return answer({"status": "unhealthy", "reason": reason}, status_code=503)

    async def readyz(request: Request) -> Response:
        reasons = await _unready_reasons(view, redact)
        if reasons:
            return answer({"ready": False, "reasons": reasons}, status_code=503)
        return answer({"ready": True})

    async def status(request: Request) -> Response:
        return answer(
            {
                "uptime_s": round(view.uptime_s(), 3),
                "broker_connected": view.broker_connected(),
                "loop_lag_s": round(view.loop_lag_s(), 3),
                "routes": {route.name: _route_status(route) for route in view.routes},
            }
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
        ]
    )


async def _unready_reasons(view: DaemonView, redact: Callable[[str], str]) -> list[str]:
    reasons = [] if view.broker_connected() else ["broker: not connected"]
    for name, why in sorted(view.failed_routes().items()):
        reasons.append(f"route {name}: failed to start (retrying): {why}")
    for route in view.routes:
        if not route.subscribed:
            reasons.append(f"route {route.name}: not subscribed")
        elif route.pause is not None:
            pause = route.pause
            reasons.append(f"route {route.name}: paused ({pause.kind}): {pause.reason}")
        elif route.state != "running":
            reasons.append(f"route {route.name}: {route.state}")
    try:
        states = await view.endpoint_states()
    except Exception as exc:  # a bug behind the view must read as "not ready", not as a 500
        return [*reasons, clip_reason(redact(f"endpoint states: {type(exc).__name__}: {exc}"))]
    for name, readiness in sorted(states.items()):
        if readiness is not None and not readiness.ready:
            why = f" ({readiness.reason})" if readiness.reason else ""
            reasons.append(f"route {name}: endpoint {readiness.state}{why}")
    return reasons


def _route_status(route: RouteView) -> dict[str, object]:
    m = route.metrics
    return {
        "state": route.state,
        "paused": None
        if route.pause is None
        else {"kind": route.pause.kind, "reason": route.pause.reason},
        "events_in": m.events_in,
        "results_out": m.results_out,
        "dead_lettered": m.dead_lettered,
        "nacked": m.nacked,
        "in_flight": route.in_flight,
        "requests": m.requests,
        "retries": m.retries,
        "last_error": m.last_error,
        "served_model": m.served_model,
        # Events per served model version and each one's share of the recent ones.
        "served_models": m.served_models.status(),
    }
