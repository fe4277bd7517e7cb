"""OIDC token federation and route-optimized endpoints end to end: the bridge process against
the emulator, with IdP tokens that rotate and scoped tokens that expire mid-stream."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pulsar
import pytest

from bridge.emulator import DataPlaneServer, EmulatorServer, EmulatorState, IdentityProvider
from tests.conftest import CLIENT_SECRET, BridgeFactory
from tests.support.clock import FakeClock
from tests.support.harness import (
    BridgeProcess,
    TopicReader,
    Topics,
    event,
    publish,
    relay,
    route_config,
)

pytestmark = pytest.mark.integration

ISSUER = "https://token.actions.example.com"
AUDIENCE = "https://emulated.cloud.databricks.com/oidc/v1/token"
SUBJECT = "repo:acme/scoring:environment:production"
WORKLOAD_SP = "5f3c1a9e-bridge-workload"
ENDPOINT = "fraud-model"


@pytest.fixture(scope="module")
def idp_key() -> IdentityProvider:
    return IdentityProvider(ISSUER, kid="ci-key")  # one RSA key for the module: generation is slow


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z, for JWT iat/exp


@pytest.fixture
def idp(idp_key: IdentityProvider, wall: FakeClock) -> IdentityProvider:
    idp_key.clock = wall
    return idp_key


@pytest.fixture
def federated(emulator: EmulatorServer, idp: IdentityProvider, wall: FakeClock) -> EmulatorState:
    """The emulator trusting ``idp`` for AUDIENCE (account-wide), on the test's wall clock."""
    emulator.state.federation_policies = [idp.policy(AUDIENCE)]
    emulator.state.wall_clock = wall
    return emulator.state


@pytest.fixture
def route_optimized(emulator: EmulatorServer) -> Iterator[FakeClock]:
    """ENDPOINT route-optimized with a data plane; the emulator's token clock, to move."""
    clock = FakeClock(5000.0)
    emulator.state.clock = clock  # before any token is issued
    emulator.state.set_route_optimized(ENDPOINT)
    emulator.state.scoped_token_ttl_s = 600
    with DataPlaneServer(emulator.state):
        yield clock


def write_token(path: Path, token: str) -> None:
    """Replace the token file at once, as a projected-token volume does."""
    staged = path.with_suffix(".tmp")
    staged.write_text(token)
    staged.chmod(0o600)
    staged.replace(path)


def start_with_token_file(
    start_bridge: BridgeFactory,
    topics: Topics,
    emulator: EmulatorServer,
    token_file: Path,
    token: str,
    **options: Any,
) -> BridgeProcess:
    """The bridge on ``topics``, federating the IdP token it finds in ``token_file``."""
    write_token(token_file, token)
    return start_bridge(
        {"fraud": route_config(topics)},
        databricks={
            "host": emulator.url,
            "auth_type": "oidc-federation",
            "oidc_token_file": str(token_file),
        },
        **options,
    )


def assert_no_secret_in(bridge: BridgeProcess, state: EmulatorState, *extra: str) -> None:
    """No IdP token, issued workspace or scoped token, or client secret in the output."""
    output = bridge.output
    secrets: Iterable[str] = [*state.tokens, *extra, CLIENT_SECRET]
    leaked = [secret[:8] + "..." for secret in secrets if secret in output]
    assert not leaked, f"secrets in the bridge output: {leaked}"


def jwt_ids(state: EmulatorState) -> list[str | None]:
    return [exchange.jwt_id for exchange in state.counters.exchanges]


def jti(token: str) -> str:
    """The ``jti`` of an IdP token: what the emulator records of each exchange."""
    claims = token.split(".")[1]
    value: str = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["jti"]
    return value


# --- OIDC token federation ----------------------------------------------------------------


def test_federation_from_a_token_file_that_rotates(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    topics: Topics,
    federated: EmulatorState,
    idp: IdentityProvider,
    wall: FakeClock,
    start_bridge: BridgeFactory,
    emulator: EmulatorServer,
) -> None:
    token_file = tmp_path / "idp-token.jwt"
    first = idp.issue(audience=AUDIENCE, subject=SUBJECT, expires_in=300)
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_with_token_file(start_bridge, topics, emulator, token_file, first)
    assert relay(pulsar_client, topics, results, 0, 20) == 20
    assert jwt_ids(federated) == [jti(first)]

    # The IdP rotates the projected token; the old one expires and Databricks drops the
    # workspace token it was exchanged for: only an exchange of the new token works now.
    wall.advance(240)
    second = idp.issue(audience=AUDIENCE, subject=SUBJECT, expires_in=300)
    write_token(token_file, second)
    wall.advance(61)
    federated.revoke_all()

    assert relay(pulsar_client, topics, results, 20, 20) == 40
    assert jwt_ids(federated) == [jti(first), jti(second)]
    assert {e.subject for e in federated.counters.exchanges} == {SUBJECT}
    assert federated.counters.endpoints[ENDPOINT].by_status[401] >= 1
    assert bridge.stop() == 0
    assert_no_secret_in(bridge, federated, first, second)


def test_a_token_for_the_wrong_audience_fails_start_up_clearly(
    tmp_path: Path,
    topics: Topics,
    federated: EmulatorState,
    idp: IdentityProvider,
    start_bridge: BridgeFactory,
    emulator: EmulatorServer,
) -> None:
    wrong = idp.issue(audience="api://some-other-service", subject=SUBJECT)
    bridge = start_with_token_file(
        start_bridge, topics, emulator, tmp_path / "idp-token.jwt", wrong, wait_ready=False
    )

    assert bridge.wait_exit(60) == 1
    failure = bridge.wait_for("start_failed")
    assert "token endpoint refused: HTTP 400 invalid_request" in failure["error"]
    assert "audience ['api://some-other-service']" in failure["error"]
    assert federated.counters.tokens_issued == 0
    assert_no_secret_in(bridge, federated, wrong)


def test_workload_identity_federation_from_an_environment_variable(
    pulsar_client: pulsar.Client,
    topics: Topics,
    federated: EmulatorState,
    idp: IdentityProvider,
    start_bridge: BridgeFactory,
    emulator: EmulatorServer,
) -> None:
    federated.federation_policies = [idp.policy(AUDIENCE, subject=SUBJECT, client_id=WORKLOAD_SP)]
    token = idp.issue(audience=AUDIENCE, subject=SUBJECT)
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        databricks={
            "host": emulator.url,
            "auth_type": "oidc-federation",
            "oidc_token_env": "CI_OIDC_TOKEN",
            "client_id": WORKLOAD_SP,
        },
        env={"CI_OIDC_TOKEN": token},
    )

    assert relay(pulsar_client, topics, results, 0, 30) == 30
    [exchange] = federated.counters.exchanges
    assert (exchange.subject, exchange.client_id, exchange.jwt_id) == (
        SUBJECT,
        WORKLOAD_SP,
        jti(token),
    )
    assert bridge.stop() == 0
    assert_no_secret_in(bridge, federated, token)


# --- route-optimized endpoints --------------------------------------------------------------


def test_route_optimized_endpoint_through_the_data_plane_with_scoped_tokens(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    route_optimized: FakeClock,
    start_bridge: BridgeFactory,
) -> None:
    state = emulator.state
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics)})

    announced = bridge.wait_for("route_optimized")
    assert announced["url"] == state.invocation_url(ENDPOINT)
    assert relay(pulsar_client, topics, results, 0, 30) == 30
    plane = state.counters.data_plane[ENDPOINT]
    assert plane.rows_scored == 30
    assert set(plane.by_status) == {200}
    assert ENDPOINT not in state.counters.endpoints, "nothing went to the workspace path"
    assert state.counters.scoped_tokens_issued == 1

    # The scoped token expires mid-stream (its TTL is 600 s, the workspace token's 3600 s):
    # the data plane answers 401 and the bridge exchanges its workspace token again.
    route_optimized.advance(601)
    assert relay(pulsar_client, topics, results, 30, 30) == 60
    assert plane.rows_scored == 60
    assert plane.by_status[401] >= 1
    assert state.counters.scoped_tokens_issued == 2
    assert ENDPOINT not in state.counters.endpoints
    assert bridge.stop() == 0
    assert_no_secret_in(bridge, state)


def test_route_optimized_endpoint_with_a_federated_identity(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    topics: Topics,
    emulator: EmulatorServer,
    federated: EmulatorState,
    idp: IdentityProvider,
    route_optimized: FakeClock,
    start_bridge: BridgeFactory,
) -> None:
    token = idp.issue(audience=AUDIENCE, subject=SUBJECT)
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_with_token_file(
        start_bridge, topics, emulator, tmp_path / "idp-token.jwt", token
    )

    bridge.wait_for("route_optimized")
    assert relay(pulsar_client, topics, results, 0, 25) == 25
    assert federated.counters.data_plane[ENDPOINT].rows_scored == 25
    assert jwt_ids(federated) == [jti(token)]
    assert federated.counters.scoped_tokens_issued == 1
    assert bridge.stop() == 0
    assert_no_secret_in(bridge, federated, token)


def test_route_optimized_endpoint_survives_revoked_workspace_tokens(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    route_optimized: FakeClock,
    start_bridge: BridgeFactory,
) -> None:
    state = emulator.state
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics)})
    assert relay(pulsar_client, topics, results, 0, 20) == 20

    # Every token is revoked (a security response): the scoped token's 401 leads to a
    # jwt-bearer exchange whose assertion, the cached workspace token, is refused too.
    state.revoke_all()
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(20, 40)])
    relayed = results.read_until(lambda ms: len(ms) >= 40, timeout=15)
    assert len(relayed) == 40, bridge.tail(12)
    assert bridge.stop() == 0
    assert_no_secret_in(bridge, state)


def test_route_optimized_endpoint_keeps_a_pinned_served_model(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    route_optimized: FakeClock,
    start_bridge: BridgeFactory,
) -> None:
    state = emulator.state
    pinned = state.served_model_name(ENDPOINT)
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics, endpoint={"name": ENDPOINT, "served_model": pinned})}
    )

    announced = bridge.wait_for("route_optimized")
    endpoint_url = state.invocation_url(ENDPOINT)
    assert endpoint_url is not None
    base = endpoint_url.removesuffix("/invocations")
    assert announced["url"] == f"{base}/served-models/{pinned}/invocations"
    assert relay(pulsar_client, topics, results, 0, 10) == 10
