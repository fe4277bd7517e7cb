"""The HTTP surface over a real socket on the test's loop, and the endpoint-state probe."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass, field

import httpx
import pytest

from bridge.addresses import parse_bind
from bridge.emulator import EmulatorServer, EmulatorState
from bridge.errors import BridgeError
from bridge.gate import Pause
from bridge.health import HealthServer, LoopHeartbeat
from bridge.health_app import RouteView
from bridge.health_probe import EndpointReadiness, EndpointStateProbe
from bridge.observe import Metrics, RouteMetrics
from bridge.relay import Route
from tests.support.clock import FakeClock

PAT = "dapi-probe-token"


@dataclass
class FakeRoute:
    name: str
    metrics: RouteMetrics
    state: str = "running"
    in_flight: int = 0
    subscribed: bool = True
    pause: Pause | None = None


@dataclass
class FakeDaemon:
    """A DaemonView whose every answer the test sets."""

    metrics: Metrics
    routes: list[FakeRoute] = field(default_factory=list)
    connected: bool = True
    lag_s: float = 0.0
    states: dict[str, EndpointReadiness | None] = field(default_factory=dict)
    probes: dict[str, EndpointStateProbe] = field(default_factory=dict)

    states_error: Exception | None = None
    failed: dict[str, str] = field(default_factory=dict)

    def add_route(
        self, name: str, *, state: str = "running", subscribed: bool = True, in_flight: int = 0
    ) -> FakeRoute:
        route = FakeRoute(name, RouteMetrics(self.metrics, name), state, in_flight, subscribed)
        self.routes.append(route)
        return route

    def broker_connected(self) -> bool:
        return self.connected

    def failed_routes(self) -> Mapping[str, str]:
        return self.failed

    def loop_lag_s(self) -> float:
        return self.lag_s

    def uptime_s(self) -> float:
        return 42.5

    async def endpoint_states(self) -> Mapping[str, EndpointReadiness | None]:
        if self.states_error is not None:
            raise self.states_error
        probed = {name: await probe.state() for name, probe in self.probes.items()}
        return {**self.states, **probed}


def _route_is_a_route_view(route: Route) -> RouteView:
    return route  # mypy checks that the real Route satisfies the protocol


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon(Metrics())


@pytest.fixture
async def server(daemon: FakeDaemon) -> AsyncIterator[HealthServer]:
    async with HealthServer(daemon, daemon.metrics.registry, "127.0.0.1:0") as running:
        yield running


@pytest.fixture
async def client(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        yield http


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorState(auth=False)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


# --------------------------------------------------------------------------- the server


async def test_binds_a_free_port_and_stops_listening(daemon: FakeDaemon) -> None:
    server = HealthServer(daemon, daemon.metrics.registry, "127.0.0.1:0")
    await server.start()
    assert server.port != 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    url = server.url
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).status_code == 200
        await server.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")
    await server.stop()  # idempotent


async def test_leaves_the_daemons_signal_handlers_alone(daemon: FakeDaemon) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    async with HealthServer(daemon, daemon.metrics.registry, "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.get("/healthz")  # uvicorn is past startup, in its main loop
        during = {sig: signal.getsignal(sig) for sig in before}
    assert during == before


async def test_busy_port_is_a_bridge_error(daemon: FakeDaemon, server: HealthServer) -> None:
    busy = HealthServer(daemon, daemon.metrics.registry, f"127.0.0.1:{server.port}")
    with pytest.raises(BridgeError, match=r"cannot listen on 127\.0\.0\.1:"):
        await busy.start()


async def test_malformed_bind_is_a_bridge_error(daemon: FakeDaemon) -> None:
    with pytest.raises(BridgeError, match="http_bind"):
        await HealthServer(daemon, daemon.metrics.registry, "9464").start()


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_parse_bind(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["9464", ":9464", "host:", "host:http", "host:65536"])
def test_parse_bind_rejects(bind: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_bind(bind)


# --------------------------------------------------------------------------- the routes


async def test_metrics_exposes_the_registry(daemon: FakeDaemon, client: httpx.AsyncClient) -> None:
    daemon.add_route("fraud").metrics.consumed(3)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert 'bridge_events_in_total{route="fraud"} 3.0' in response.text.splitlines()


async def test_healthz_follows_the_loop_lag(daemon: FakeDaemon, client: httpx.AsyncClient) -> None:
    daemon.lag_s = 9.9
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    daemon.lag_s = 10.0
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert "10.0s old" in response.json()["reason"]


async def test_readyz_ok_when_everything_is_up(
    daemon: FakeDaemon, client: httpx.AsyncClient
) -> None:
    daemon.add_route("fraud")
    daemon.add_route("plain-url")
    daemon.states = {"fraud": EndpointReadiness("READY"), "plain-url": None}
    response = await client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"ready": True})


async def test_readyz_names_every_failing_condition(
    daemon: FakeDaemon, client: httpx.AsyncClient
) -> None:
    daemon.connected = False
    daemon.failed = {"spam": "subscribe failed: AuthorizationError"}
    daemon.add_route("fraud")
    daemon.add_route("starting", state="starting", subscribed=False)
    paused = daemon.add_route("paused", state="paused")
    paused.pause = Pause("route", "HTTP 404: RESOURCE_DOES_NOT_EXIST")
    daemon.add_route("plain-url")
    daemon.states = {
        "fraud": EndpointReadiness("NOT_READY"),
        "paused": EndpointReadiness("UNKNOWN", "HTTP 403: PERMISSION_DENIED"),
        "plain-url": None,
    }
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "reasons": [
            "broker: not connected",
            "route spam: failed to start (retrying): subscribe failed: AuthorizationError",
            "route starting: not subscribed",
            "route paused: paused (route): HTTP 404: RESOURCE_DOES_NOT_EXIST",
            "route fraud: endpoint NOT_READY",
            "route paused: endpoint UNKNOWN (HTTP 403: PERMISSION_DENIED)",
        ],
    }


async def test_readyz_is_not_ready_when_the_view_fails(
    daemon: FakeDaemon, client: httpx.AsyncClient
) -> None:
    daemon.states_error = RuntimeError("probe bug")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["endpoint states: RuntimeError: probe bug"]


async def test_status_reports_every_route(daemon: FakeDaemon, client: httpx.AsyncClient) -> None:
    fraud = daemon.add_route("fraud", in_flight=2)
    fraud.metrics.consumed(10)
    fraud.metrics.published(7)
    fraud.metrics.dead_letter(1)
    fraud.metrics.nack(2)
    fraud.metrics.request(200)
    fraud.metrics.request(503)
    fraud.metrics.retry()
    fraud.metrics.last_error = "HTTP 503: busy"
    fraud.metrics.served_model = "fraud-model-3"
    fraud.metrics.scored("fraud-model-2", 1)
    fraud.metrics.scored("fraud-model-3", 3)
    idle = daemon.add_route("idle", state="paused")
    idle.pause = Pause("storm", "every event rejected")
    daemon.lag_s = 0.25
    response = await client.get("/status")
    assert response.status_code == 200
    assert response.json() == {
        "uptime_s": 42.5,
        "broker_connected": True,
        "loop_lag_s": 0.25,
        "routes": {
            "fraud": {
                "state": "running",
                "paused": None,
                "events_in": 10,
                "results_out": 7,
                "dead_lettered": 1,
                "nacked": 2,
                "in_flight": 2,
                "requests": 2,
                "retries": 1,
                "last_error": "HTTP 503: busy",
                "served_model": "fraud-model-3",
                "served_models": {
                    "fraud-model-2": {"events": 1, "recent_share": 0.25},
                    "fraud-model-3": {"events": 3, "recent_share": 0.75},
                },
            },
            "idle": {
                "state": "paused",
                "paused": {"kind": "storm", "reason": "every event rejected"},
                "events_in": 0,
                "results_out": 0,
                "dead_lettered": 0,
                "nacked": 0,
                "in_flight": 0,
                "requests": 0,
                "retries": 0,
                "last_error": None,
                "served_model": None,
                "served_models": {},
            },
        },
    }


# --------------------------------------------------------------------------- the heartbeat


async def test_heartbeat_lag_grows_until_the_loop_beats() -> None:
    clock = FakeClock()
    heartbeat = LoopHeartbeat(clock)
    assert heartbeat.lag_s() == 0.0
    clock.advance(12.0)
    assert heartbeat.lag_s() == 12.0
    task = asyncio.create_task(heartbeat.run(interval_s=3600))
    await asyncio.sleep(0)  # one turn of the loop: run() beats, then sleeps
    assert heartbeat.lag_s() == 0.0
    clock.advance(1.5)
    assert heartbeat.lag_s() == 1.5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- the probe


def _endpoint_gets(server: EmulatorServer) -> int:
    return sum(server.state.counters.requests_by_status.values())


async def test_probe_reads_state_ready_and_caches_it_for_the_ttl(
    emulator: EmulatorServer, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    probe = EndpointStateProbe(http, emulator.url + "/", "fraud-model", ttl_s=30, clock=clock)
    assert await probe.state() == EndpointReadiness("READY")
    emulator.state.set_ready("fraud-model", False)
    clock.advance(29.9)
    assert await probe.state() == EndpointReadiness("READY")  # cached
    assert _endpoint_gets(emulator) == 1
    clock.advance(0.1)
    readiness = await probe.state()
    assert (readiness.state, readiness.ready) == ("NOT_READY", False)
    assert _endpoint_gets(emulator) == 2


async def test_concurrent_callers_share_one_fetch(
    emulator: EmulatorServer, http: httpx.AsyncClient
) -> None:
    probe = EndpointStateProbe(http, emulator.url, "fraud-model")
    answers = await asyncio.gather(*(probe.state() for _ in range(5)))
    assert {a.state for a in answers} == {"READY"}
    assert _endpoint_gets(emulator) == 1


async def test_probe_reports_api_errors_as_unknown(
    emulator: EmulatorServer, http: httpx.AsyncClient
) -> None:
    readiness = await EndpointStateProbe(http, emulator.url, "no-such-model").state()
    assert readiness.state == "UNKNOWN"
    assert readiness.reason is not None
    assert readiness.reason.startswith("HTTP 404: RESOURCE_DOES_NOT_EXIST: ")


async def test_probe_reports_transport_errors_as_unknown(http: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    probe = EndpointStateProbe(http, f"http://127.0.0.1:{closed_port}", "fraud-model")
    readiness = await probe.state()
    assert readiness.state == "UNKNOWN"
    assert readiness.reason is not None
    assert readiness.reason.startswith("ConnectError: ")


class StaticBearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


async def test_probe_sends_its_auth(http: httpx.AsyncClient) -> None:
    with EmulatorServer(EmulatorState(pat_tokens=frozenset({PAT}))) as emulator:
        anonymous = await EndpointStateProbe(http, emulator.url, "fraud-model").state()
        authed = EndpointStateProbe(http, emulator.url, "fraud-model", auth=StaticBearer(PAT))
        assert (await authed.state()).state == "READY"
    assert anonymous.state == "UNKNOWN"
    assert anonymous.reason is not None
    assert anonymous.reason.startswith("HTTP 401")


async def test_readyz_through_a_real_probe(
    daemon: FakeDaemon,
    client: httpx.AsyncClient,
    emulator: EmulatorServer,
    http: httpx.AsyncClient,
) -> None:
    daemon.add_route("fraud")
    daemon.probes["fraud"] = EndpointStateProbe(http, emulator.url, "fraud-model", ttl_s=0)
    assert (await client.get("/readyz")).status_code == 200
    emulator.state.set_ready("fraud-model", False)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["route fraud: endpoint NOT_READY"]
