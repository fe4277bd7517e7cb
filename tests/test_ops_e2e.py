"""Operating the daemon: sd_notify, health and metrics, reload, status, and no secret in logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pulsar
import pytest
import tomli_w

from bridge.embedded import free_port
from bridge.emulator import EmulatorServer
from tests.conftest import CLIENT_SECRET, BridgeFactory, Broker
from tests.support.harness import (
    BridgeProcess,
    TopicReader,
    Topics,
    event,
    publish,
    route_config,
    secret_file,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def next_notification(sock: socket.socket, wanted: str) -> list[str]:
    """Receive datagrams until one contains ``wanted``; return that datagram's lines."""
    while True:
        lines = sock.recv(4096).decode().splitlines()
        if wanted in lines or any(line.startswith(wanted) for line in lines):
            return lines


def http_url(bridge: BridgeProcess) -> str:
    return str(bridge.wait_for("http_listening")["url"])


def test_systemd_notifications_across_ready_reload_and_stop(
    notify_socket: socket.socket,
    topics: Topics,
    start_bridge: BridgeFactory,
) -> None:
    address = notify_socket.getsockname()
    bridge = start_bridge({"fraud": route_config(topics)}, env={"NOTIFY_SOCKET": address})

    ready = next_notification(notify_socket, "READY=1")
    assert any(line.startswith("STATUS=1 route(s) running") for line in ready)
    assert bridge.events("ready"), "READY=1 only once every route is consuming"

    bridge.signal(signal.SIGHUP)
    reloading = next_notification(notify_socket, "RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
    next_notification(notify_socket, "READY=1")

    bridge.signal(signal.SIGTERM)
    next_notification(notify_socket, "STOPPING=1")
    assert bridge.wait_exit(30) == 0


def test_metrics_health_and_readiness_over_http(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics)})
    base = http_url(bridge)
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(120)])
    results.read_until(lambda ms: len(ms) >= 120)

    metrics = httpx.get(f"{base}/metrics").text
    assert 'bridge_results_out_total{route="fraud"} 120.0' in metrics
    assert 'bridge_requests_total{route="fraud",status="200"}' in metrics
    assert "bridge_request_seconds_bucket" in metrics
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200, ready.text

    status = httpx.get(f"{base}/status").json()
    assert status["routes"]["fraud"]["results_out"] == 120
    assert status["routes"]["fraud"]["state"] == "running"
    bridge.stop()


def test_readyz_reports_an_endpoint_that_is_not_ready(
    topics: Topics, emulator: EmulatorServer, start_bridge: BridgeFactory
) -> None:
    emulator.state.set_ready("fraud-model", False)
    bridge = start_bridge({"fraud": route_config(topics)})

    ready = httpx.get(f"{http_url(bridge)}/readyz")

    assert ready.status_code == 503
    assert "fraud" in ready.text
    assert "NOT_READY" in ready.text
    bridge.stop()


def test_sighup_adds_removes_and_changes_routes_and_rejects_a_bad_config(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    start_bridge: BridgeFactory,
) -> None:
    first, second = Topics(), Topics()
    bridge = start_bridge({"first": route_config(first)})
    routes = bridge.config_dir / "routes"

    # Add a route.
    (routes / "second.toml").write_text(tomli_w.dumps(route_config(second)))
    bridge.signal(signal.SIGHUP)
    reloaded = bridge.wait_for("reloaded")
    assert reloaded["started"] == ["second"]
    reader = TopicReader(pulsar_client, second.result)
    publish(pulsar_client, second.source, [json.dumps(event(i)).encode() for i in range(10)])
    assert len(reader.read_until(lambda ms: len(ms) >= 10)) == 10

    # An invalid config is rejected whole; the running routes carry on.
    (routes / "broken.toml").write_text("[source]\ntopics = 5\n")
    bridge.signal(signal.SIGHUP)
    rejected = bridge.wait_for("reload_rejected")
    assert any("broken.toml" in p and "source.topics" in p for p in rejected["problems"])
    publish(pulsar_client, second.source, [json.dumps(event(i)).encode() for i in range(10, 20)])
    assert len(reader.read_until(lambda ms: len(ms) >= 20)) == 20
    (routes / "broken.toml").unlink()

    # Change one route, remove the other.
    (routes / "first.toml").unlink()
    (routes / "second.toml").write_text(
        tomli_w.dumps(route_config(second, batch={"max_events": 7}))
    )
    bridge.signal(signal.SIGHUP)
    changed = bridge.wait_for("reloaded", lambda line: "first" in line["stopped"])
    assert changed["stopped"] == ["first"]
    assert changed["restarted"] == ["second"]
    assert changed["started"] == []
    metrics = httpx.get(f"{http_url(bridge)}/metrics").text
    assert 'route="first"' not in metrics, "a removed route's series are gone"
    assert 'route="second"' in metrics
    publish(pulsar_client, second.source, [json.dumps(event(i)).encode() for i in range(20, 34)])
    assert len(reader.read_until(lambda ms: len(ms) >= 34)) == 34
    assert bridge.stop() == 0


def lag_source(broker: object) -> dict[str, str]:
    """Where status reads lag: Apache Pulsar's admin API, or pulsar-lite's metrics."""
    admin_url = getattr(broker, "admin_url", None)
    if admin_url:
        return {"admin_url": admin_url}
    return {"metrics_url": str(getattr(broker, "metrics_url", None))}


def test_status_command_prints_rates_and_lag(
    pulsar_client: pulsar.Client,
    broker: object,
    topics: Topics,
    start_bridge: BridgeFactory,
) -> None:
    port = free_port()
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        extra={"observe": {"http_bind": f"127.0.0.1:{port}"}, "pulsar": lag_source(broker)},
    )
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(50)])
    bridge.wait_for("batch")

    command = [sys.executable, "-m", "bridge", "status", "-c", str(bridge.config_dir)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    as_json = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    bridge.stop()

    assert table.stdout.splitlines()[0].split()[:4] == ["ROUTE", "STATE", "IN/s", "OUT/s"]
    assert table.stdout.splitlines()[1].split()[:2] == ["fraud", "running"]
    (row,) = json.loads(as_json.stdout)
    assert row["route"] == "fraud"
    assert row["state"] == "running"
    assert set(row["lag"]) == {"backlog", "unacked", "consumers", "error"}
    assert row["daemon_error"] is None


def test_status_with_the_daemon_down_and_no_secret_resolvable_shows_the_backlog(
    pulsar_client: pulsar.Client, broker: Broker, topics: Topics, tmp_path: Path
) -> None:
    # The README's systemd set-up, asked from a shell outside the unit: its client secret
    # is in $CREDENTIALS_DIRECTORY, which exists only inside the service, and no daemon
    # listens on http_bind.
    directory = write_config(
        tmp_path / "conf",
        service_url=broker.url,
        databricks={
            "host": "https://adb-1.azuredatabricks.net",
            "client_id": "bridge-sp",
            "client_secret": "file:${CREDENTIALS_DIRECTORY}/databricks-client-secret",
        },
        routes={"fraud": route_config(topics)},
        extra={
            "observe": {"http_bind": f"127.0.0.1:{free_port()}"},
            "pulsar": lag_source(broker),
        },
    )
    pulsar_client.subscribe(topics.source, topics.subscription).close()
    # One message per entry: the broker's backlog counts entries, a batch as one.
    producer = pulsar_client.create_producer(topics.source, batching_enabled=False)
    for i in range(25):
        producer.send(json.dumps(event(i)).encode())
    producer.close()
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    command = [sys.executable, "-m", "bridge", "status", "-c", str(directory)]

    # pulsar-lite refreshes its metrics every few seconds: ask until it counts all 25 (the
    # admin API of Apache Pulsar answers at once). Every answer must say the daemon is down.
    for _ in range(60):
        as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env)
        assert as_json.returncode == 3, as_json.stderr
        (row,) = json.loads(as_json.stdout)
        assert row["state"] == "daemon down"
        assert "ConnectError" in row["daemon_error"]
        if row["lag"]["backlog"] == 25:
            break
    assert row["lag"]["backlog"] == 25, row
    table = subprocess.run(command, capture_output=True, text=True, env=env)

    assert table.returncode == 3, table.stderr
    first, header, fraud = table.stdout.splitlines()
    assert first.startswith("daemon: DOWN: http://127.0.0.1:")
    assert "BACKLOG and UNACKED are the broker's" in first
    assert header.split()[:2] == ["ROUTE", "STATE"]
    assert fraud.split()[:8] == ["fraud", "daemon", "down", "-", "-", "-", "-", "25"]


def test_no_secret_or_token_reaches_any_log_line(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    client_secret = secret_file(tmp_path / "client-secret", CLIENT_SECRET + "\n")
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        databricks={
            "host": emulator.url,
            "client_id": "bridge-sp",
            "client_secret": f"file:{client_secret}",
        },
        extra={"observe": {"log_level": "debug"}},
    )
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(50)])
    results.read_until(lambda ms: len(ms) >= 50)
    emulator.state.revoke_all()  # forces a 401, a refresh and a retry: the riskiest path
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(50, 60)])
    results.read_until(lambda ms: len(ms) >= 60)
    bridge.stop()

    output = bridge.output
    assert len(bridge.lines) > 5
    assert CLIENT_SECRET not in output
    tokens = list(emulator.state.tokens)
    assert len(tokens) >= 2
    for token in tokens:
        assert token not in output
