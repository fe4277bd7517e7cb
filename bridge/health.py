"""The daemon's HTTP surface: /metrics, /healthz, /readyz and /status on the daemon's own loop.

    LoopHeartbeat        a task that stamps a monotonic time; its lag is the loop's liveness
    HealthServer         uvicorn serving the Starlette app as one task of the daemon's loop

What the app answers is :mod:`bridge.health_app` (reading a ``DaemonView``); an endpoint's
``state.ready`` is :mod:`bridge.health_probe`.

Why uvicorn rather than a hand-written ``asyncio.start_server`` handler: both are already
dependencies (the emulator serves with them), and h11's request parsing, keep-alive and
slow-client handling are not worth re-implementing for four GET routes. uvicorn runs via
``Server.serve()`` inside the running loop, so there are no threads. Two of its defaults
do not suit a guest in someone else's loop and are switched off: it installs process-wide
SIGINT/SIGTERM handlers (the daemon owns signals) and it calls ``sys.exit`` when it cannot
bind (the socket is bound here first, so a busy port is a :class:`BridgeError` at start-up).

A loop that is blocked outright cannot answer /healthz at all, which the prober sees as a
timeout; the heartbeat lag catches the slower failures: a starved loop or a dead task.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from bridge.addresses import parse_bind
from bridge.errors import BridgeError
from bridge.health_app import DEFAULT_LAG_THRESHOLD_S, DaemonView, create_app
from bridge.redaction import Redactor

log = structlog.get_logger("bridge.health")

Clock = Callable[[], float]


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
