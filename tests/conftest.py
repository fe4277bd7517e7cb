"""Fixtures over real parts: an embedded pulsar-lite broker, the emulator, bridge processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pulsar
import pytest

from bridge.embedded import EmbeddedBroker
from bridge.emulator import EmulatorServer, EmulatorState
from tests.support.harness import BridgeProcess, Topics, write_config

CLIENT_ID = "bridge-sp"
CLIENT_SECRET = "sp-secret-value-7f3a"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("pulsar-lite")) as running:
        yield running


@pytest.fixture(scope="session")
def pulsar_client(broker: EmbeddedBroker) -> Iterator[pulsar.Client]:
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
    tmp_path: Path, broker: EmbeddedBroker, emulator: EmulatorServer
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
