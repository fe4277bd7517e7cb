"""Starting one route: the effectively-once deduplication check, the endpoint resolved
(described, when it is named), its serving client and state probe, then the route's
producers and consumer opened. A refusal is a BridgeError naming what refused; a route
opened half-way is closed again before the error (or a cancellation) goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from bridge.config import Config
from bridge.config_route import RouteSettings
from bridge.deduplication import verify_deduplication
from bridge.health_probe import EndpointStateProbe
from bridge.identity import WorkspaceAuth, resolve_endpoint
from bridge.limiter import EndpointLimiter
from bridge.observe import Metrics
from bridge.pulsar_io import PulsarConnection
from bridge.redaction import Redactor
from bridge.relay import Route
from bridge.serving import ServingClient

log = structlog.get_logger("bridge")


@dataclass(frozen=True)
class StartedRoute:
    route: Route  # opened: subscribed, its producers created
    probe: EndpointStateProbe | None  # reads a named endpoint's state for /readyz


async def start_route(
    settings: RouteSettings,
    *,
    config: Config,
    pulsar: PulsarConnection,
    http: httpx.AsyncClient,
    workspace: WorkspaceAuth | None,
    limiter: EndpointLimiter,
    metrics: Metrics,
    redactor: Redactor,
) -> StartedRoute:
    """Open ``settings``' route; ``workspace`` is the auth of a named endpoint's workspace."""
    admin_url = config.bridge.pulsar.admin_url
    if settings.effectively_once and admin_url is not None:
        # Without deduplication the "effectively-once" route would be at-least-once
        # while claiming otherwise: refuse to start it.
        await verify_deduplication(http, admin_url, settings.result.topic)
    probe = None
    if settings.endpoint.name is not None and workspace is not None:
        probe = EndpointStateProbe(
            http,
            config.workspace_for(settings).host or "",
            settings.endpoint.name,
            auth=workspace.httpx_auth,
            redactor=redactor,
        )
    target = await resolve_endpoint(config, settings, http, workspace)
    serving = ServingClient(
        target.url,
        http,
        auth=target.auth,
        timeout_s=settings.endpoint.timeout_s,
        retry_statuses=settings.failure.retry_statuses,
        max_response_bytes=settings.endpoint.max_response_bytes,
    )
    if target.missing is not None:
        log.warning("route_starts_paused", route=settings.name, reason=target.missing)
    route = Route(
        settings,
        serving,
        metrics,
        limiter=limiter,
        on_close=target.aclose,
        paused_because=target.missing,
        redactor=redactor,
    )
    try:
        await route.open(pulsar)
    except BaseException:  # refused, or cancelled by a stop signal
        await route.close()
        raise
    return StartedRoute(route, probe)
