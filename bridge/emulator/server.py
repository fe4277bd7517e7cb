"""Run the emulator app with uvicorn: in the foreground for the CLI, or in a thread for tests.

The listening socket is bound before uvicorn starts, so ``port=0`` yields a free port
that is known up front; readiness is signalled by uvicorn's own startup, never guessed.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request

from bridge.emulator.app import create_app, create_data_plane_app
from bridge.emulator.faults import FaultInjector, Faults
from bridge.emulator.mlflow_model import load_served_model
from bridge.emulator.oauth import GrantHandler
from bridge.emulator.state import EmulatorState, FederationPolicy
from bridge.lifecycle import Running

_log = logging.getLogger(__name__)


class _NotifyingServer(uvicorn.Server):
    """A uvicorn server that calls ``on_started`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


class _UvicornThread(Running):
    """One Starlette app on ``host``:``port`` (0 picks a free port), served by uvicorn.

    :meth:`start` serves from a daemon thread and returns once connections are accepted;
    :meth:`run` serves in the foreground until SIGINT/SIGTERM. Subclasses build the app
    in ``__init__`` (with :meth:`_drop_connection` as its connection dropper).
    """

    _thread_name = "emulator"

    def __init__(self, *, host: str, port: int, startup_timeout_s: float) -> None:
        self._host = host
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._app: Starlette | None = None
        self._socket: socket.socket | None = None
        self._bound_port: int | None = None
        self._server: _NotifyingServer | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port; only known once started."""
        if self._bound_port is None:
            raise RuntimeError(f"the {self._thread_name} is not running")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def _prepare(self, on_started: Callable[[], None]) -> tuple[_NotifyingServer, socket.socket]:
        if self._socket is not None:
            raise RuntimeError(f"the {self._thread_name} is already running")
        assert self._app is not None, "subclasses build the app in __init__"
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._requested_port), family=family)
        # Accepted connections inherit this: without it, uvicorn's separate writes of headers
        # and body meet Nagle and delayed ACKs, and every response waits ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",  # no websockets import, whose deprecation warnings would fail tests
            loop="asyncio",
            access_log=False,
            log_config=None,  # leave the host application's logging setup alone
            timeout_graceful_shutdown=5,
        )
        self._socket = sock
        # Kept apart from the socket, which uvicorn closes on its way out.
        self._bound_port = int(sock.getsockname()[1])
        self._server = _NotifyingServer(config, on_started)
        return self._server, sock

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._bound_port = None
        self._server = None
        self._thread = None
        self._started.clear()

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the foreground until SIGINT/SIGTERM; ``on_ready(url)`` once listening."""

        def started() -> None:
            _log.info("%s listening on %s", self._thread_name, self.url)
            if on_ready is not None:
                on_ready(self.url)

        server, sock = self._prepare(started)
        try:
            server.run(sockets=[sock])
        finally:
            self._release()

    def _serve_in_thread(self, server: _NotifyingServer, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to start()/stop() in the owning thread
            self._error = exc
        finally:
            self._started.set()  # wakes start() even when startup failed

    def start(self) -> None:
        """Serve from a daemon thread; returns once the server accepts connections."""
        self._error = None
        server, sock = self._prepare(self._started.set)
        self._thread = threading.Thread(
            target=self._serve_in_thread, args=(server, sock), name=self._thread_name, daemon=True
        )
        self._thread.start()
        if not self._started.wait(self._startup_timeout_s) or not server.started:
            self.stop()
            raise RuntimeError(f"the {self._thread_name} failed to start") from self._error

    def request_stop(self) -> None:
        """Ask the server to stop without waiting for it (so several stop together)."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        """Ask the server to stop; for a background one, also wait for it. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.should_exit = True
        if thread is None:  # run() is serving in some thread and releases on its way out
            return
        thread.join(self._startup_timeout_s)
        if thread.is_alive():  # in-flight requests outlived the graceful timeout
            server.force_exit = True
            thread.join(self._startup_timeout_s)
        self._release()

    def _drop_connection(self, request: Request) -> bool:
        """Reset the TCP connection ``request`` came on (RST, no response)."""
        server = self._server
        client = request.scope.get("client")
        if server is None or client is None:
            return False
        for protocol in list(server.server_state.connections):
            if getattr(protocol, "client", None) != client:
                continue
            transport = protocol.transport
            raw = transport.get_extra_info("socket")
            if raw is not None:
                # Linger 0 makes close() send RST, which is what a crashed peer looks like.
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return True
        return False


class DataPlaneServer(_UvicornThread):
    """The data plane of route-optimized endpoints, on its own loopback port.

    It shares ``state`` with the workspace server and, while running, publishes its URL as
    :attr:`EmulatorState.data_plane_url`, from which endpoint descriptions build their
    ``endpoint_url``. ``with DataPlaneServer(state):`` beside a running
    :class:`EmulatorServer`, or ``EmulatorServer(state, data_plane=True)`` for both.
    """

    _thread_name = "emulator data plane"

    def __init__(
        self,
        state: EmulatorState,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(host=host, port=port, startup_timeout_s=startup_timeout_s)
        self.state = state
        self._app = create_data_plane_app(state, connection_dropper=self._drop_connection)

    def start(self) -> None:
        super().start()
        self.state.data_plane_url = self.url

    def stop(self) -> None:
        if self._bound_port is not None and self.state.data_plane_url == self.url:
            self.state.data_plane_url = None
        super().stop()


class EmulatorServer(_UvicornThread):
    """The emulator on ``host``:``port`` (0 picks a free port); a context manager for tests.

    ``with EmulatorServer(state) as server:`` serves from a background thread until the
    block ends; ``server.url`` is the base URL. :meth:`run` serves in the foreground
    until SIGINT/SIGTERM instead. ``data_plane=True`` also serves a
    :class:`DataPlaneServer` (``server.data_plane``) on another port of the same host for
    as long as the workspace server runs.
    """

    def __init__(
        self,
        state: EmulatorState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        grant_handlers: Mapping[str, GrantHandler] | None = None,
        startup_timeout_s: float = 30.0,
        data_plane: bool = False,
    ) -> None:
        super().__init__(host=host, port=port, startup_timeout_s=startup_timeout_s)
        self.state = state if state is not None else EmulatorState()
        self._app = create_app(
            self.state, grant_handlers=grant_handlers, connection_dropper=self._drop_connection
        )
        self.data_plane = (
            DataPlaneServer(self.state, host=host, startup_timeout_s=startup_timeout_s)
            if data_plane
            else None
        )

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (the data plane from a thread)."""
        if self.data_plane is None:
            super().run(on_ready)
            return
        self.data_plane.start()
        try:
            super().run(on_ready)
        finally:
            self.data_plane.stop()

    def start(self) -> None:
        if self.data_plane is not None:
            self.data_plane.start()
        try:
            super().start()
        except BaseException:
            if self.data_plane is not None:
                self.data_plane.stop()
            raise

    def stop(self) -> None:
        if self.data_plane is not None:
            self.data_plane.request_stop()  # both wind down at once, then both are joined
        super().stop()
        if self.data_plane is not None:
            self.data_plane.stop()


def build_state(
    *,
    endpoints: Sequence[str] = ("fraud-model",),
    any_endpoint: bool = False,
    client_id: str | None = None,
    client_secret: str | None = None,
    pat_tokens: Sequence[str] = (),
    token_ttl_s: int = 3600,
    latency_ms: float = 0.0,
    no_auth: bool = False,
    model: Path | None = None,
    model_version: int = 1,
    federation: Sequence[FederationPolicy] = (),
    route_optimized: Sequence[str] = (),
    scoped_token_ttl_s: int | None = None,
    faults: Mapping[str, object] | None = None,
) -> EmulatorState:
    """The state for command-line options; ValueError on inconsistent ones.

    ``model`` is a saved MLflow model to serve on every endpoint as
    ``<name>-<model_version>``; it is loaded here, so a bad path fails at start-up.
    ``federation`` policies enable OIDC token exchange; ``route_optimized`` endpoints
    are served on the data plane with tokens that live ``scoped_token_ttl_s``.
    ``faults`` is a patch as ``PUT /_emulator/faults`` takes it (endpoint states such
    as ``{"capacity": 4, "scale_from_zero_s": 20}``); durations count from now.
    """
    if (client_id is None) != (client_secret is None):
        raise ValueError("client_id and client_secret must be given together")
    if not no_auth and client_id is None and not pat_tokens and not federation:
        raise ValueError(
            "auth is on but no OAuth client or PAT (nor a federation policy) is configured "
            "(or use no_auth)"
        )
    if token_ttl_s <= 0:
        raise ValueError("token_ttl_s must be positive")
    if scoped_token_ttl_s is not None and scoped_token_ttl_s <= 0:
        raise ValueError("scoped_token_ttl_s must be positive")
    if latency_ms < 0:
        raise ValueError("latency_ms must not be negative")
    if model_version < 1:
        raise ValueError("model_version must be at least 1")
    unknown = sorted(set(route_optimized) - set(endpoints))
    if unknown and not any_endpoint:
        raise ValueError(f"route-optimized endpoint(s) not served: {', '.join(unknown)}")
    clients = {client_id: client_secret} if client_id and client_secret is not None else {}
    state = EmulatorState(
        endpoints=frozenset(endpoints),
        allow_any_endpoint=any_endpoint,
        clients=clients,
        pat_tokens=frozenset(pat_tokens),
        auth=not no_auth,
        token_ttl_s=token_ttl_s,
        faults=FaultInjector(Faults(latency_ms=latency_ms)),
        model=None if model is None else load_served_model(model, model_version),
        federation_policies=list(federation),
        route_optimized=set(route_optimized),
        scoped_token_ttl_s=scoped_token_ttl_s,
    )
    state.faults.update(faults or {}, state.clock())  # ValueError for a bad value
    return state


def run_emulator(
    state: EmulatorState,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``state`` (see :func:`build_state`) in the foreground until SIGINT/SIGTERM.

    ``on_ready(url)`` runs once the socket accepts connections (print the URL there:
    with ``port=0`` it is the only way to learn the port). With route-optimized
    endpoints a data plane is served too, on a free port of ``host``; endpoint
    descriptions name it.
    """
    server = EmulatorServer(state, host=host, port=port, data_plane=bool(state.route_optimized))
    server.run(on_ready=on_ready)
