"""The daemon: start every route, run until a signal, reload on SIGHUP, shut down in order.

Start-up: loop heartbeat and systemd watchdog first (a slow start must not look like a hang),
the health server, credentials (a refused client fails fast), the Pulsar client, then the
routes; ``READY=1`` once every route is consuming.

SIGHUP re-reads the config directory. An invalid config is rejected whole and the running
routes are untouched. Otherwise added routes start, removed routes drain and stop, and
changed routes (their file, or the workspace they call) drain and restart. ``[pulsar]``
changes need a restart of the process, which is logged.

Shutdown (SIGTERM/SIGINT): ``STOPPING=1``, stop intake on every route, give in-flight
batches ``drain_grace_s``, nack what is left, flush and close producers and consumers, close
the client. A route whose intake dies is fatal: the daemon drains the others and exits 1 so
the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import httpx
import structlog

from bridge.config import Config, load_config
from bridge.config_route import RouteSettings
from bridge.endpoint_limits import EndpointLimits
from bridge.errors import BridgeError, ConfigError
from bridge.health import HealthServer, LoopHeartbeat
from bridge.health_app import DEFAULT_LAG_THRESHOLD_S
from bridge.health_probe import EndpointReadiness, EndpointStateProbe
from bridge.identity import WorkspaceAuth, build_workspace_auth, first_tokens
from bridge.observe import Metrics
from bridge.pulsar_io import PulsarConnection
from bridge.redaction import Redactor
from bridge.relay import Route
from bridge.reload import plan_reload
from bridge.route_start import start_route
from bridge.systemd import Notifier, RouteCounts, status_loop, watchdog_loop

log = structlog.get_logger("bridge")

STATUS_INTERVAL_S = 10.0
START_RETRY_S = 5.0
START_RETRY_MAX_S = 60.0


class Bridge:
    """All routes of one config directory, sharing one Pulsar client and one HTTP pool."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.config = config
        # Knows every secret and issued token; whatever leaves the process passes it.
        self._redactor = redactor or Redactor()
        self.metrics = metrics or Metrics()
        self._notifier = notifier or Notifier()
        self._heartbeat = LoopHeartbeat()
        self._running: dict[str, tuple[Route, asyncio.Future[None]]] = {}
        self._probes: dict[str, EndpointStateProbe] = {}
        self._auths: dict[str | None, WorkspaceAuth] = {}
        # One limiter per endpoint (URL and identity), shared by the routes calling it.
        self._limits = EndpointLimits(self.metrics)
        # Routes that failed to start after a reload, and why (shown in /readyz; retried).
        self._failed: dict[str, str] = {}
        self._start_retry_s = START_RETRY_S
        self._stop = asyncio.Event()
        self._stop_requested_at: float | None = None  # the drain grace counts from here
        self._reload = asyncio.Event()
        self._started = time.monotonic()
        self._pulsar: PulsarConnection | None = None
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------- DaemonView (health)

    @property
    def routes(self) -> Sequence[Route]:
        return [route for route, _ in self._running.values()]

    def failed_routes(self) -> Mapping[str, str]:
        return dict(self._failed)

    def broker_connected(self) -> bool:
        return bool(self._running) and all(r.connected for r in self.routes)

    def loop_lag_s(self) -> float:
        return self._heartbeat.lag_s()

    def _route_counts(self) -> list[RouteCounts]:
        return [(r.name, r.state, r.metrics.events_in, r.metrics.results_out) for r in self.routes]

    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    async def endpoint_states(self) -> Mapping[str, EndpointReadiness | None]:
        probes = {r.name: self._probes.get(r.name) for r in self.routes}
        return {name: None if p is None else await p.state() for name, p in probes.items()}

    # ------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            # Intake ends everywhere now, even while a reload still drains its routes:
            # the shutdown that follows has only what is left of the grace.
            for route in self.routes:
                route.stop()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        background = [
            asyncio.ensure_future(self._heartbeat.run(1.0)),
            asyncio.ensure_future(
                watchdog_loop(
                    self._notifier,
                    lambda: self._heartbeat.lag_s() < DEFAULT_LAG_THRESHOLD_S,
                )
            ),
            asyncio.ensure_future(
                status_loop(self._notifier, self._route_counts, STATUS_INTERVAL_S)
            ),
        ]
        bind = self.config.bridge.observe.http_bind
        health = (
            HealthServer(self, self.metrics.registry, bind, redactor=self._redactor)
            if bind
            else None
        )
        try:
            async with httpx.AsyncClient(limits=_limits(self.config)) as http:
                self._http = http
                code = await self._serve(health)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._notifier.close()
            log.info("stopped", uptime_s=round(self.uptime_s(), 1))
        return code

    async def _serve(self, health: HealthServer | None) -> int:
        for warning in self.config.warnings:
            log.warning("config_warning", detail=warning)
        try:
            if health is not None:
                await health.start()
                log.info("http_listening", url=health.url)
            if not await self._unless_stopped(self._start()):
                log.info("stopping", reason="signal during start-up")
                return 0
            _freeze_startup_objects()
            log.info("ready", routes=sorted(self._running))
            self._notifier.ready(f"{len(self._running)} route(s) running")
            return await self._supervise()
        except BridgeError as exc:
            log.error("start_failed", error=str(exc))
            return 1
        finally:
            self._notifier.stopping()
            await self._shutdown()
            if health is not None:
                await health.stop()

    async def _start(self) -> None:
        self._auths = self._build_auths(self.config, {})
        await first_tokens(self._auths)
        self._pulsar = PulsarConnection(self.config.bridge.pulsar)
        # Concurrently: one slow workspace API or topic must not hold the other routes.
        await _all_or_first_error(self._start_route(s) for s in self.config.routes)

    async def _unless_stopped(self, work: Awaitable[Any]) -> bool:
        """Run ``work`` unless a stop signal comes first (then cancel it); True if it ran."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()  # a start-up failure raises here
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    async def _supervise(self) -> int:
        """Wait for a signal or a failed route; handle reloads and start retries between."""
        while True:
            stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            reload: asyncio.Future[Any] = asyncio.ensure_future(self._reload.wait())
            runs: dict[asyncio.Future[Any], Route] = {
                task: route for route, task in self._running.values()
            }
            # Routes that failed to start after a reload are tried again on a timer.
            retry_s = self._start_retry_s if self._failed else None
            done, _ = await asyncio.wait(
                {stop, reload, *runs}, timeout=retry_s, return_when=asyncio.FIRST_COMPLETED
            )
            stop.cancel()
            reload.cancel()
            failed = [runs[t] for t in done if t in runs and t.exception() is not None]
            for route in failed:
                task = self._running[route.name][1]
                log.error("route_failed", route=route.name, error=repr(task.exception()))
            if failed:
                return 1
            if stop in done:
                log.info("stopping", reason="signal")
                return 0
            if reload in done:
                self._reload.clear()
                await self._apply_reload()
            elif not done:
                await self._retry_failed_starts()

    async def _apply_reload(self) -> None:
        self._notifier.reloading()
        log.info("reloading", config=str(self.config.directory))
        try:
            new = load_config(self.config.directory, redactor=self._redactor)
        except ConfigError as exc:
            log.error("reload_rejected", problems=[str(p) for p in exc.problems])
            self._notifier.ready(f"reload rejected; {len(self._running)} route(s) running")
            return
        plan = plan_reload(self.config, new, self._running.keys())
        if plan.pulsar_changed:
            log.warning("reload_pulsar_changed", action="restart the process to apply [pulsar]")
        # Together, so a reload's drains take one grace at most, as a shutdown's do.
        await asyncio.gather(*(self._stop_route(name) for name in (*plan.stop, *plan.restart)))
        for name in plan.stop:
            self.metrics.forget_route(name)
        old_auths, self.config = self._auths, new
        self._auths = self._build_auths(new, old_auths, plan.rebuild_workspaces)
        for auth in old_auths.values():
            if auth not in self._auths.values() and auth.cache is not None:
                await auth.cache.aclose()
        self._limits.keep(new, ((r.settings, r.limiter) for r, _ in self._running.values()))
        self._failed = {n: why for n, why in self._failed.items() if n in plan.start}
        starting = sorted({*plan.restart, *plan.start})
        await self._start_routes(starting)
        if self._stop.is_set():
            return  # a stop signal came during the starts; the supervisor stops next
        log.info(
            "reloaded",
            stopped=list(plan.stop),
            restarted=list(plan.restart),
            started=[n for n in plan.start if n in self._running],
            failed=sorted(self._failed),
            routes=sorted(self._running),
        )
        self._notifier.ready(f"{len(self._running)} route(s) running")

    async def _start_routes(self, names: Sequence[str]) -> None:
        """Start routes; one that fails is recorded, reported in /readyz and retried.

        Concurrently, as at start-up, and given up on a stop signal: a reload whose routes
        wait for a slow workspace must not hold a SIGTERM (the routes not started yet are
        simply not running when the daemon stops)."""
        by_name = {r.name: r for r in self.config.routes}

        async def start(name: str) -> None:
            try:
                await self._start_route(by_name[name])
            except BridgeError as exc:
                self._failed[name] = str(exc)
                log.error("route_start_failed", route=name, error=str(exc))
            else:
                self._failed.pop(name, None)

        await self._unless_stopped(asyncio.gather(*(start(name) for name in names)))
        self._start_retry_s = START_RETRY_S if self._failed else self._start_retry_s

    async def _retry_failed_starts(self) -> None:
        names = sorted(self._failed)
        log.info("route_start_retry", routes=names)
        await self._start_routes(names)
        if self._failed:
            self._start_retry_s = min(self._start_retry_s * 2, START_RETRY_MAX_S)

    def _build_auths(
        self,
        config: Config,
        current: Mapping[str | None, WorkspaceAuth],
        rebuild: Sequence[str | None] = (),
    ) -> dict[str | None, WorkspaceAuth]:
        """Auth per used workspace; those not in ``rebuild`` keep their token cache."""
        fresh = build_workspace_auth(
            config,
            on_refresh=lambda ws: self.metrics.token_refreshes.labels(ws).inc(),
            on_token=self._redactor.register_token,
        )
        return {
            name: current[name] if name in current and name not in rebuild else auth
            for name, auth in fresh.items()
        }

    async def _start_route(self, settings: RouteSettings) -> None:
        assert self._pulsar is not None
        assert self._http is not None
        named = settings.endpoint.name is not None
        started = await start_route(
            settings,
            config=self.config,
            pulsar=self._pulsar,
            http=self._http,
            workspace=self._auths[settings.endpoint.workspace] if named else None,
            limiter=self._limits.for_route(self.config, settings),
            metrics=self.metrics,
            redactor=self._redactor,
        )
        if started.probe is not None:
            self._probes[settings.name] = started.probe
        route = started.route
        self._running[settings.name] = (route, asyncio.ensure_future(route.run()))

    async def _stop_route(self, name: str) -> None:
        route, task = self._running.pop(name)
        self._probes.pop(name, None)
        route.stop()
        await asyncio.wait({task})
        await route.drain(self.config.bridge.daemon.drain_grace_s)
        await route.close()

    async def _shutdown(self) -> None:
        routes = list(self._running.values())
        for route, _ in routes:
            route.stop()
        await asyncio.gather(*(task for _, task in routes), return_exceptions=True)
        grace = self._grace_left()
        await asyncio.gather(*(route.drain(grace) for route, _ in routes))
        for route, _ in routes:
            await route.close()
        self._running.clear()
        if self._pulsar is not None:
            with contextlib.suppress(BridgeError):
                await self._pulsar.close()
        for auth in self._auths.values():
            if auth.cache is not None:
                await auth.cache.aclose()

    def _grace_left(self) -> float:
        """The drain grace, counted from the stop signal: a reload that was draining a
        route when it came has used part of it."""
        grace = self.config.bridge.daemon.drain_grace_s
        if self._stop_requested_at is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self._stop_requested_at))


def _limits(config: Config) -> httpx.Limits:
    # No cap on connections: requests are bounded by each endpoint's limiter and each
    # route's max_in_flight, and a static pool cap sized at start would make routes added
    # by a reload queue for connections. Keep-alive is sized for the routes at start.
    keep = sum(r.endpoint.max_in_flight for r in config.routes) + 8
    return httpx.Limits(max_connections=None, max_keepalive_connections=keep)


async def _all_or_first_error(starts: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Await every start; if any failed, raise the first failure (after all have ended)."""
    outcomes = await asyncio.gather(*starts, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _freeze_startup_objects() -> None:
    """Exclude what start-up built from the collector's full passes.

    The imported libraries, config and clients live as long as the process, yet each
    full collection walked them all: 18-27 ms pauses on the relay's loop, the worst
    tail of the latency benchmark. Frozen objects are never collected or scanned again;
    what is garbage now is collected first.
    """
    gc.collect()
    gc.freeze()
