"""The daemon's HTTP surface: /metrics, /healthz, /readyz and /status on the daemon's own loop.

    LoopHeartbeat        a task that stamps a monotonic time; its lag is the loop's liveness
    DaemonView           what the server reads from the daemon (a Protocol, faked in tests)
    EndpointStateProbe   a Databricks endpoint's ``state.ready``, cached for a TTL
    HealthServer         uvicorn serving the Starlette app as one task of the daemon's loop

Why uvicorn rather than a hand-written ``asyncio.start_server`` handler: both are already
dependencies (the emulator serves with them), and h11's request parsing, keep-alive and
slow-client handling are not worth re-implementing for four GET routes. uvicorn runs via
``Server.serve()`` inside the running loop, so there are no threads. Two of its defaults
do not suit a guest in someone else's loop and are switched off: it installs process-wide
SIGINT/SIGTERM handlers (the daemon owns signals) and it calls ``sys.exit`` when it cannot
bind (the socket is bound here first, so a busy port is a :class:`BridgeError` at start-up).

A loop that is blocked outright cannot answer /healthz at all, which the prober sees as a
timeout; the heartbeat lag catches the slower failures: a starved loop or a dead task.

Every answer passes the daemon's :class:`~bridge.redaction.Redactor` on its way out: route
errors and endpoint reasons quote peers, and a peer may echo the token it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.addresses import parse_bind as parse_bind  # re-exported for status
from bridge.errors import BridgeError
from bridge.gate import Pause
from bridge.observe import RouteMetrics
from bridge.redaction import Redactor, redact_json, scrub

log = structlog.get_logger("bridge.health")

Clock = Callable[[], float]

DEFAULT_LAG_THRESHOLD_S = 10.0
READY = "READY"
UNKNOWN = "UNKNOWN"
_REASON_LIMIT = 200


class LoopHeartbeat:
    """Stamps the time each time the loop gets round to it; ``lag_s`` is the time since."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()  # fresh from construction, so start-up is not reported as a hang

    def beat(self) -> None:
        self._last = self._clock()

    def lag_s(self) -> float:
        return max(0.0, self._clock() - self._last)

    async def run(self, interval_s: float = 1.0) -> None:
        """Beat every ``interval_s`` until cancelled."""
        while True:
            self.beat()
            await asyncio.sleep(interval_s)


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


@dataclass(frozen=True)
class EndpointReadiness:
    """A serving endpoint's ``state.ready`` ("READY", "NOT_READY") or "UNKNOWN" and why."""

    state: str
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == READY


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


class EndpointStateProbe:
    """``GET {host}/api/2.0/serving-endpoints/{name}`` -> ``state.ready``, cached for a TTL.

    The answer, failures included, is kept for ``ttl_s`` so a readiness prober polling
    every second costs Databricks one request per TTL; concurrent callers share one fetch.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        host: str,
        endpoint: str,
        *,
        auth: httpx.Auth | None = None,
        ttl_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
        redactor: Redactor | None = None,
    ) -> None:
        self.endpoint = endpoint
        # The reasons quote the workspace API, which may echo the token (a 403 naming it).
        self._redact = redactor.redact if redactor is not None else scrub
        self.url = f"{host.rstrip('/')}/api/2.0/serving-endpoints/{quote(endpoint, safe='')}"
        self._http = http
        self._auth = auth
        self._ttl_s = ttl_s
        # Short: /readyz waits on this, and a prober gives up long before the invoke timeout.
        self._timeout = httpx.Timeout(timeout_s)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cached: EndpointReadiness | None = None
        self._fetched_at = 0.0

    async def state(self) -> EndpointReadiness:
        async with self._lock:
            if self._cached is None or self._clock() - self._fetched_at >= self._ttl_s:
                fresh = await self._fetch()
                if fresh != self._cached:
                    log.info("endpoint_state", endpoint=self.endpoint, **vars(fresh))
                self._cached, self._fetched_at = fresh, self._clock()
            return self._cached

    async def _fetch(self) -> EndpointReadiness:
        try:
            response = await self._http.get(self.url, auth=self._auth, timeout=self._timeout)
        except (httpx.HTTPError, BridgeError) as exc:  # BridgeError: the auth flow's AuthError
            return EndpointReadiness(UNKNOWN, self._reason(f"{type(exc).__name__}: {exc}"))
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            # Databricks errors are {"error_code": ..., "message": ...}; a proxy's may be HTML.
            detail = body if isinstance(body, dict) else {}
            words = [str(detail[k]) for k in ("error_code", "message") if detail.get(k)]
            reason = ": ".join([f"HTTP {response.status_code}", *words])
            return EndpointReadiness(UNKNOWN, self._reason(reason))
        state = body.get("state") if isinstance(body, dict) else None
        ready = state.get("ready") if isinstance(state, dict) else None
        if not isinstance(ready, str):
            return EndpointReadiness(UNKNOWN, "response has no state.ready")
        return EndpointReadiness(self._redact(ready))

    def _reason(self, text: str) -> str:
        # Redacted before it is clipped: a token cut in two no longer matches its value.
        return _clip(self._redact(text))


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def create_app(
    view: DaemonView,
    registry: CollectorRegistry,
    *,
    lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S,
    redactor: Redactor | None = None,
) -> Starlette:
    """The ASGI app behind :class:`HealthServer`; every answer passes ``redactor``."""
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
        return [*reasons, _clip(redact(f"endpoint states: {type(exc).__name__}: {exc}"))]
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


class _GuestServer(uvicorn.Server):
    """uvicorn as a guest in the daemon's loop: no signal handlers, a started event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn (>= 0.29; earlier: install_signal_handlers) would swap the daemon's
        # SIGTERM/SIGINT handlers for its own and re-raise the signals when it stops; the
        # daemon decides when the HTTP surface goes away. A test guards the hook's name.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.started_event.set()


class HealthServer:
    """Serves :func:`create_app` on ``bind`` as a task of the running loop.

    ``await start()`` returns once the socket accepts connections; ``port`` is the bound
    port (useful with port 0); ``await stop()`` closes it. Also an async context manager.
    """

    def __init__(
        self,
        view: DaemonView,
        registry: CollectorRegistry,
        bind: str,
        *,
        lag_threshold_s: float = DEFAULT_LAG_THRESHOLD_S,
        redactor: Redactor | None = None,
    ) -> None:
        self.bind = bind
        self._app = create_app(view, registry, lag_threshold_s=lag_threshold_s, redactor=redactor)
        self._server: _GuestServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        if self._address is None:
            raise RuntimeError("the health server is not running")
        return self._address[1]

    @property
    def url(self) -> str:
        if self._address is None:
            raise RuntimeError("the health server is not running")
        host, port = self._address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Bind and serve; BridgeError if ``bind`` is malformed or cannot be listened on."""
        if self._task is not None:
            raise RuntimeError("the health server is already running")
        sock = self._listen()
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",  # no websockets import, whose deprecation warnings are not ours
            access_log=False,
            log_config=None,  # the daemon configured logging; uvicorn's loggers propagate
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = _GuestServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="health-http")
        started = asyncio.create_task(server.started_event.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not server.started:
            sock.close()
            self._address = None
            failure = task.exception() if task.done() else None
            raise BridgeError(f"health server on {self.bind} failed to start") from failure
        self._server, self._task = server, task
        task.add_done_callback(_report_exit)
        log.info("health_listening", url=self.url)

    def _listen(self) -> socket.socket:
        try:
            host, port = parse_bind(self.bind)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family)
            # Inherited by accepted connections: no Nagle delay on split response writes.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except ValueError as exc:
            raise BridgeError(f"observe.http_bind: {exc}") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise BridgeError(f"observe.http_bind: cannot listen on {self.bind}: {reason}") from exc
        self._address = (host, int(sock.getsockname()[1]))
        return sock

    async def stop(self) -> None:
        """Stop accepting, let open requests finish briefly, close; idempotent."""
        server, task = self._server, self._task
        self._server = self._task = None
        self._address = None
        if server is None or task is None:
            return
        server.should_exit = True
        with contextlib.suppress(Exception):  # _report_exit has logged it
            await task

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _report_exit(task: asyncio.Task[None]) -> None:
    # The HTTP surface dying must not take the relay with it, but it must not be silent.
    if not task.cancelled() and task.exception() is not None:
        log.error("health_server_failed", error=repr(task.exception()))
