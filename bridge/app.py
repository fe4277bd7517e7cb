"""The daemon: start every route, run until a signal, then shut down in order.

Start-up order: credentials (fail fast on a refused client), Pulsar client, producers and
consumers of every route. Shutdown order (SIGTERM/SIGINT): stop intake on every route,
give in-flight batches ``drain_grace_s``, nack what is left, flush and close producers and
consumers, close the client. A route whose intake dies is a fatal error: the daemon drains
the others and exits non-zero so the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import httpx
import structlog

from bridge.config import Config
from bridge.errors import AuthError, BridgeError
from bridge.identity import WorkspaceAuth, build_workspace_auth, invocation_url
from bridge.observe import Metrics
from bridge.pulsar_io import PulsarConnection
from bridge.relay import Route
from bridge.serving import ServingClient

log = structlog.get_logger("bridge")


class Bridge:
    """All routes of one config directory, sharing one Pulsar client and one HTTP pool."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.routes: list[Route] = []
        self._stop = asyncio.Event()
        self._started = time.monotonic()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        max_conns = sum(r.endpoint.max_in_flight for r in self.config.routes) + 4
        limits = httpx.Limits(max_connections=max_conns, max_keepalive_connections=max_conns)
        auths = build_workspace_auth(
            self.config, on_refresh=lambda ws: self.metrics.token_refreshes.labels(ws).inc()
        )
        pulsar: PulsarConnection | None = None
        async with httpx.AsyncClient(limits=limits) as http:
            try:
                await _first_tokens(auths)
                pulsar = PulsarConnection(self.config.bridge.pulsar)
                await self._open_routes(pulsar, http, auths)
                log.info("ready", routes=[r.name for r in self.routes])
                code = await self._relay_until_stopped()
            except BridgeError as exc:
                log.error("start_failed", error=str(exc))
                code = 1
            finally:
                await self._shutdown(pulsar, auths)
        return code

    async def _open_routes(
        self,
        pulsar: PulsarConnection,
        http: httpx.AsyncClient,
        auths: dict[str | None, WorkspaceAuth],
    ) -> None:
        for settings in self.config.routes:
            auth = auths[settings.endpoint.workspace].httpx_auth if settings.endpoint.name else None
            serving = ServingClient(
                invocation_url(self.config, settings),
                http,
                auth=auth,
                timeout_s=settings.endpoint.timeout_s,
                retry_statuses=settings.failure.retry_statuses,
            )
            route = Route(settings, serving, self.metrics)
            self.routes.append(route)
            await route.open(pulsar)

    async def _relay_until_stopped(self) -> int:
        runs: dict[asyncio.Future[Any], Route] = {
            asyncio.ensure_future(r.run()): r for r in self.routes
        }
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({*runs, stop}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task is not stop and task.exception() is not None:
                log.error("route_failed", route=runs[task].name, error=repr(task.exception()))
                code = 1
        log.info("stopping", reason="signal" if stop in done else "route failure")
        for route in self.routes:
            route.stop()
        stop.cancel()
        await asyncio.wait(runs)
        return code

    async def _shutdown(
        self, pulsar: PulsarConnection | None, auths: dict[str | None, WorkspaceAuth]
    ) -> None:
        grace = self.config.bridge.daemon.drain_grace_s
        for route in self.routes:
            route.stop()
        await asyncio.gather(*(r.drain(grace) for r in self.routes))
        for route in self.routes:
            await route.close()
        if pulsar is not None:
            with contextlib.suppress(BridgeError):
                await pulsar.close()
        for auth in auths.values():
            if auth.cache is not None:
                await auth.cache.aclose()
        log.info("stopped", uptime_s=round(time.monotonic() - self._started, 1))


async def _first_tokens(auths: dict[str | None, WorkspaceAuth]) -> None:
    """Fetch each workspace's token once: a refused client is a config error, found now."""
    for auth in auths.values():
        if auth.cache is None:
            continue
        try:
            await auth.cache.get()
        except AuthError as exc:
            if not exc.retriable:
                raise
            # The identity provider may be down; requests will retry the token with backoff.
            log.warning("token_unavailable", workspace=auth.name, error=str(exc))
