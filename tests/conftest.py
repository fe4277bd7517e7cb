"""Fixtures over real parts: a broker, the emulator, bridge processes.

Every test that uses ``broker`` (directly or through ``pulsar_client`` / ``start_bridge``)
runs twice: on the embedded pulsar-lite broker and on a real Apache Pulsar standalone
(issue #4: users run Apache Pulsar). Each broker is started once per session. Tests that
need what pulsar-lite lacks run on Apache Pulsar only, by parametrising ``broker`` with
``APACHE_ONLY`` (see tests/test_apache_*.py).

When Apache Pulsar cannot run here (no JDK >= 21, or neither Maven nor a cached
distribution), its tests fail in CI (``CI=true``) and are skipped with the reason locally:
a green CI run must not have silently skipped the real broker.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pulsar
import pytest

from bridge.embedded import EmbeddedBroker
from bridge.emulator import EmulatorServer, EmulatorState
from tests.support import apache, workers
from tests.support.apache import ApachePulsarBroker, require_apache_pulsar
from tests.support.harness import BridgeProcess, Topics, write_config

CLIENT_ID = "bridge-sp"
CLIENT_SECRET = "sp-secret-value-7f3a"

PULSAR_LITE, APACHE = "pulsar-lite", "apache"
BROKERS = [PULSAR_LITE, APACHE]
# For a test module or test that needs the real broker: ``pytestmark = APACHE_ONLY``.
APACHE_ONLY = pytest.mark.parametrize("broker", [APACHE], indirect=True)


class Broker(Protocol):
    """What the tests need of either broker."""

    @property
    def url(self) -> str: ...

    def restart(self) -> None:
        """Stop and start again on the same data and port; clients reconnect."""


def broker_kind(broker: Broker) -> str:
    return PULSAR_LITE if isinstance(broker, EmbeddedBroker) else APACHE


@pytest.fixture(scope="session")
def apache_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApachePulsarBroker]:
    """One plain (no TLS, no auth) Apache Pulsar standalone for the whole session."""
    require_apache_pulsar()
    with ApachePulsarBroker(tmp_path_factory.mktemp("apache-pulsar")) as server:
        yield server


@pytest.fixture(scope="session", params=BROKERS)
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    if request.param == APACHE:
        apache: ApachePulsarBroker = request.getfixturevalue("apache_broker")
        yield apache
        return
    with EmbeddedBroker(tmp_path_factory.mktemp("pulsar-lite")) as running:
        yield running


@pytest.fixture(scope="session")
def pulsar_client(broker: Broker) -> Iterator[pulsar.Client]:
    client = pulsar.Client(broker.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    yield client
    client.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    state = EmulatorState(clients={CLIENT_ID: CLIENT_SECRET}, endpoints=frozenset({"fraud-model"}))
    with EmulatorServer(state) as server:
        yield server


@pytest.fixture
def topics() -> Topics:
    return Topics()


BridgeFactory = Callable[..., BridgeProcess]


@pytest.fixture
def start_bridge(
    tmp_path: Path, broker: Broker, emulator: EmulatorServer
) -> Iterator[BridgeFactory]:
    """Write a config dir and start ``pulsar-bridge run`` on it; stopped at teardown."""
    started: list[BridgeProcess] = []

    def start(
        routes: Mapping[str, Mapping[str, Any]],
        *,
        databricks: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
        config_dir: Path | None = None,
    ) -> BridgeProcess:
        directory = config_dir or tmp_path / f"config-{len(started)}"
        if config_dir is None:
            write_config(
                directory,
                service_url=broker.url,
                databricks=databricks
                or {"host": emulator.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                routes=routes,
                extra=extra,
            )
        process = BridgeProcess(directory, env=env).start()
        started.append(process)
        if wait_ready:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()
    # Across the whole integration run: no client secret and no token the emulator issued
    # may appear in any line any bridge process printed.
    secrets = [CLIENT_SECRET, *emulator.state.tokens]
    for process in started:
        output = process.output
        leaked = [s for s in secrets if s in output]
        assert not leaked, f"{len(leaked)} secret(s)/token(s) in the log of {process.config_dir}"


# ------------------------------------------------------- broker tiers: workers and timing
#
# The suite runs on two pytest-xdist workers (``-n 2`` in pyproject.toml). Each broker tier
# is one unit of work: its session broker starts once, in one worker, and its tests run there
# in collection order; tests that need no broker are spread over both (tests/support/workers.py).

_tier_seconds: dict[str, float] = {}
_tier_tests: dict[str, int] = {}
_apache_starts: dict[str, list[float]] = {}


def _tier(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "broker" in callspec.params:
        return str(callspec.params["broker"])
    if item.path.name.startswith("test_apache_"):
        return APACHE
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return workers.make_scheduler(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        on = str(callspec.params["broker"]) if callspec and "broker" in callspec.params else None
        if workers.tier_in_id(item.nodeid) != on:
            # The workers' scheduler reads the tier from the id: a wrong reading would start a
            # second broker of a tier in another worker, or put a broker test beside no broker.
            raise pytest.UsageError(
                f"{item.nodeid}: its id names tier {workers.tier_in_id(item.nodeid)!r}, "
                f"but it runs on {on!r}; rename the parameter id that looks like a tier"
            )
        tier = _tier(item)
        if tier is not None:
            # Travels with each report from the worker to the process that prints the summary.
            item.user_properties.append(("broker_tier", tier))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown" and apache.CREATED:
        starts = [(server.data_dir.name, list(server.start_times_s)) for server in apache.CREATED]
        report.user_properties.append(("apache_starts", starts))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    properties = dict(report.user_properties)
    tier = properties.get("broker_tier")
    if isinstance(tier, str):
        _tier_seconds[tier] = _tier_seconds.get(tier, 0.0) + report.duration
        if report.when == "teardown":
            _tier_tests[tier] = _tier_tests.get(tier, 0) + 1
    servers = properties.get("apache_starts")
    if isinstance(servers, list):
        for name, starts in servers:
            _apache_starts[name] = starts


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _tier_seconds:
        return
    terminalreporter.section("broker tiers")
    for tier in sorted(_tier_seconds):
        terminalreporter.write_line(
            f"{tier}: {_tier_tests.get(tier, 0)} tests, {_tier_seconds[tier]:.1f}s "
            "(setup, call and teardown, broker start-up included; summed over workers)"
        )
    for name, starts in sorted(_apache_starts.items()):
        listed = ", ".join(f"{s:.1f}s" for s in starts)
        terminalreporter.write_line(f"Apache Pulsar in {name}: starts {listed}")
