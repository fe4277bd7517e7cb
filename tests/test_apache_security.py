"""Broker security: TLS on the binary port, JWT token authentication and namespace
authorization (Apache Pulsar only).

Every test here runs on Apache Pulsar only: pulsar-lite has no TLS, accepts any token and
has no authorization or admin REST API to grant permissions with. The broker is its own,
started once for this module with ``--tls --auth-token`` (superuser role ``admin``); the
bridge connects over ``pulsar+ssl://`` with ``tls_trust_certs_file`` and
``auth = {type = "token", token = "file:..."}``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pulsar
import pytest

from bridge.emulator import EmulatorServer, score
from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.support.apache import ApachePulsar, ApachePulsarBroker, require_apache_pulsar
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

BRIDGE_ROLE = "bridge"  # produce + consume on public/default
CONSUME_ONLY_ROLE = "consume-only"  # consume on public/default, no produce
NAMESPACE = "public/default"
# Small, so that a refused connection (which the client retries until this runs out)
# fails start-up in seconds, not the default 30.
FAST_FAIL = {"operation_timeout_s": 3, "connection_timeout_s": 3}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApachePulsar]:
    """Started for this module only (and stopped after it), so it never runs beside the
    session's plain broker longer than needed on a small machine."""
    require_apache_pulsar()
    data_dir = tmp_path_factory.mktemp("apache-secure")
    with ApachePulsarBroker(data_dir, tls=True, auth_token=True) as server:
        running = server.running
        grant(running, BRIDGE_ROLE, ["produce", "consume"])
        grant(running, CONSUME_ONLY_ROLE, ["consume"])
        yield running


def grant(broker: ApachePulsar, role: str, actions: list[str]) -> None:
    """Grant ``actions`` on the namespace to ``role`` through the admin REST API."""
    response = httpx.post(
        f"{broker.admin_url}/admin/v2/namespaces/{NAMESPACE}/permissions/{role}",
        json=actions,
        headers=broker.admin_headers(),
        timeout=30,
    )
    assert response.status_code == 204, f"grant {role}: {response.status_code} {response.text}"


@pytest.fixture(scope="module")
def admin_client(secure_broker: ApachePulsar) -> Iterator[pulsar.Client]:
    """The test's own client: superuser, over TLS."""
    assert secure_broker.service_url_tls is not None
    assert secure_broker.admin_token is not None
    client = pulsar.Client(
        secure_broker.service_url_tls,
        tls_trust_certs_file_path=str(secure_broker.tls_ca_cert),
        authentication=pulsar.AuthenticationToken(secure_broker.admin_token),
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
    )
    yield client
    client.close()


def token_file(directory: Path, name: str, token: str) -> Path:
    """A token file readable by its owner only (as the bridge expects of secret files)."""
    return secret_file(directory / name, token + "\n")


def forged(token: str) -> str:
    """The same claims (role ``admin``) with a signature from some other key."""
    header, claims, _signature = token.split(".")
    return f"{header}.{claims}.{base64.urlsafe_b64encode(b'x' * 32).decode().rstrip('=')}"


def foreign_ca(directory: Path) -> Path:
    """A CA certificate that did not sign the broker's certificate."""
    cert = directory / "foreign-ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(directory / "foreign-ca.key"),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=some other CA",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert


@pytest.fixture
def run_bridge(
    tmp_path: Path, secure_broker: ApachePulsar, emulator: EmulatorServer
) -> Iterator[Any]:
    """Start ``pulsar-bridge run`` against the secure broker with the given [pulsar] keys."""
    started: list[BridgeProcess] = []

    def run(
        topics: Topics, pulsar_settings: Mapping[str, Any], *, wait_ready: bool = True
    ) -> BridgeProcess:
        directory = write_config(
            tmp_path / f"config-{len(started)}",
            service_url=str(secure_broker.service_url_tls),
            databricks={
                "host": emulator.url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            routes={"fraud": route_config(topics)},
            extra={"pulsar": dict(pulsar_settings)},
        )
        process = BridgeProcess(directory).start()
        started.append(process)
        if wait_ready:
            process.wait_ready()
        return process

    yield run
    for process in started:
        process.kill()


def tls_with_token(broker: ApachePulsar, token: Path) -> dict[str, Any]:
    return {
        "tls_trust_certs_file": str(broker.tls_ca_cert),
        "auth": {"type": "token", "token": f"file:{token}"},
    }


def start_failure(bridge: BridgeProcess) -> str:
    """Wait for the process to exit non-zero; its ``start_failed`` error."""
    code = bridge.wait_exit(60)
    assert code != 0, f"exit {code}:\n{bridge.tail()}"
    failed = bridge.events("start_failed")
    assert failed, f"no start_failed line:\n{bridge.tail()}"
    assert not bridge.events("ready")
    return str(failed[0]["error"])


def backlog(broker: ApachePulsar, topics: Topics) -> int:
    path = topics.source.removeprefix("persistent://")
    response = httpx.get(
        f"{broker.admin_url}/admin/v2/persistent/{path}/stats",
        headers=broker.admin_headers(),
        timeout=10,
    )
    response.raise_for_status()
    count: int = response.json()["subscriptions"][topics.subscription]["msgBacklog"]
    return count


def test_connects_over_tls_with_a_token_and_relays_end_to_end(
    secure_broker: ApachePulsar,
    admin_client: pulsar.Client,
    run_bridge: Any,
    tmp_path: Path,
) -> None:
    n = 300
    topics = Topics()
    rows = [event(i) for i in range(n)]
    publish(admin_client, topics.source, [json.dumps(r).encode() for r in rows])
    results = TopicReader(admin_client, topics.result)
    token = token_file(tmp_path, "bridge.token", secure_broker.token(BRIDGE_ROLE))
    bridge = run_bridge(topics, tls_with_token(secure_broker, token))

    got = results.read_until(lambda ms: len(ms) >= n)
    assert bridge.stop() == 0, bridge.tail()

    assert str(secure_broker.service_url_tls).startswith("pulsar+ssl://")
    assert {m.json["id"]: m.json["prediction"] for m in got} == {r["id"]: score(r) for r in rows}
    assert bridge.events("route_stopped")[0]["results_out"] == n
    assert secure_broker.admin_token is not None
    assert secure_broker.admin_token not in bridge.output
    assert not bridge.events("config_warning"), "the token file is private"


@pytest.mark.parametrize("token", ["forged", "missing"])
def test_a_wrong_or_missing_token_fails_at_start_up_naming_the_auth_setting(
    token: str,
    secure_broker: ApachePulsar,
    run_bridge: Any,
    tmp_path: Path,
) -> None:
    topics = Topics()
    settings: dict[str, Any] = {"tls_trust_certs_file": str(secure_broker.tls_ca_cert)}
    if token == "forged":
        assert secure_broker.admin_token is not None
        path = token_file(tmp_path, "forged.token", forged(secure_broker.admin_token))
        settings["auth"] = {"type": "token", "token": f"file:{path}"}
    bridge = run_bridge(topics, {**settings, **FAST_FAIL}, wait_ready=False)

    error = start_failure(bridge)

    # The broker closes the connection of a rejected (or absent) token and the client
    # only times out, so the bridge's hint for a timeout must name the auth setting too.
    assert "[pulsar] auth" in error, error


def test_an_untrusted_certificate_fails_at_start_up_naming_tls_trust_certs_file(
    secure_broker: ApachePulsar,
    run_bridge: Any,
    tmp_path: Path,
) -> None:
    topics = Topics()
    token = token_file(tmp_path, "bridge.token", secure_broker.token(BRIDGE_ROLE))
    settings = tls_with_token(secure_broker, token)
    settings["tls_trust_certs_file"] = str(foreign_ca(tmp_path))
    bridge = run_bridge(topics, {**settings, **FAST_FAIL}, wait_ready=False)

    error = start_failure(bridge)

    assert "tls_trust_certs_file" in error, error


def test_a_role_without_produce_permission_fails_the_route_loudly_and_keeps_the_events(
    secure_broker: ApachePulsar,
    admin_client: pulsar.Client,
    run_bridge: Any,
    tmp_path: Path,
) -> None:
    n = 100
    topics = Topics()
    # The subscription exists before the events, so they are its backlog from the start.
    admin_client.subscribe(
        topics.source,
        topics.subscription,
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
    ).close()
    # Unbatched, so the subscription's backlog (counted in entries) is the event count.
    producer = admin_client.create_producer(topics.source, batching_enabled=False)
    for i in range(n):
        producer.send(json.dumps(event(i)).encode())
    producer.close()
    results = TopicReader(admin_client, topics.result)
    consume_only = token_file(
        tmp_path, "consume-only.token", secure_broker.token(CONSUME_ONLY_ROLE)
    )
    denied = run_bridge(
        topics, {**tls_with_token(secure_broker, consume_only), **FAST_FAIL}, wait_ready=False
    )

    error = start_failure(denied)

    assert topics.result in error, f"names the result topic: {error}"
    assert "[pulsar] auth" in error, error
    assert results.read_quiet(500) == [], "nothing was published"
    assert backlog(secure_broker, topics) == n, "every event is still unacked"

    # The same events, once the role may produce: nothing was dropped.
    good = token_file(tmp_path, "bridge.token", secure_broker.token(BRIDGE_ROLE))
    bridge = run_bridge(topics, tls_with_token(secure_broker, good))
    got = results.read_until(lambda ms: len(ms) >= n)
    assert bridge.stop() == 0, bridge.tail()
    assert {m.json["id"] for m in got} == {f"e{i}" for i in range(n)}
    assert backlog(secure_broker, topics) == 0
