"""Every auth mode end to end over real sockets: M2M, PAT, databricks-sdk profiles,
several workspaces, and secrets that rotate or expire mid-stream."""

from __future__ import annotations

from pathlib import Path

import pulsar
import pytest

from bridge.emulator import EmulatorServer, EmulatorState
from tests.conftest import CLIENT_ID, CLIENT_SECRET, BridgeFactory
from tests.support.harness import (
    TopicReader,
    Topics,
    relay,
    route_config,
    secret_file,
)

pytestmark = pytest.mark.integration


def test_personal_access_token_from_a_file(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    emulator.state.pat_tokens = frozenset({"dapi-test-token-0001"})
    token_file = secret_file(tmp_path / "pat", "dapi-test-token-0001\n")
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        databricks={"host": emulator.url, "auth_type": "pat", "token": f"file:{token_file}"},
    )

    assert relay(pulsar_client, topics, results, 0, 50) == 50
    bridge.stop()
    assert emulator.state.counters.tokens_issued == 0, "a PAT needs no OAuth round trip"
    assert "dapi-test-token-0001" not in bridge.output


def test_a_rotated_client_secret_file_is_used_after_the_old_one_is_revoked(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    rotating = secret_file(tmp_path / "secret", CLIENT_SECRET)
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        databricks={
            "host": emulator.url,
            "client_id": CLIENT_ID,
            "client_secret": f"file:{rotating}",
        },
    )
    assert relay(pulsar_client, topics, results, 0, 20) == 20

    # The service principal's secret is rotated: the old one and its tokens stop working.
    emulator.state.clients = {CLIENT_ID: "rotated-secret-value"}
    rotating.write_text("rotated-secret-value")
    emulator.state.revoke_all()

    assert relay(pulsar_client, topics, results, 20, 20) == 40
    bridge.stop()
    assert "rotated-secret-value" not in bridge.output


def test_routes_on_two_workspaces_with_their_own_service_principals(
    pulsar_client: pulsar.Client,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    other_state = EmulatorState(clients={"analytics-sp": "analytics-secret"})
    with EmulatorServer(other_state) as other:
        main, analytics = Topics(), Topics()
        main_results = TopicReader(pulsar_client, main.result)
        analytics_results = TopicReader(pulsar_client, analytics.result)
        bridge = start_bridge(
            {
                "main": route_config(main),
                "analytics": route_config(analytics, endpoint={"workspace": "analytics"}),
            },
            databricks={
                "host": emulator.url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "analytics": {
                    "host": other.url,
                    "client_id": "analytics-sp",
                    "client_secret": "analytics-secret",
                },
            },
        )
        assert relay(pulsar_client, main, main_results, 0, 30) == 30
        assert relay(pulsar_client, analytics, analytics_results, 0, 30) == 30
        bridge.stop()

        assert emulator.state.counters.rows_scored == 30
        assert other_state.counters.rows_scored == 30
        assert other_state.counters.tokens_issued >= 1


def test_databricks_sdk_unified_auth_with_a_config_profile(
    pulsar_client: pulsar.Client,
    tmp_path: Path,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    databrickscfg = tmp_path / "databrickscfg"
    databrickscfg.write_text(
        f"[emulated]\nhost = {emulator.url}\nclient_id = {CLIENT_ID}\n"
        f"client_secret = {CLIENT_SECRET}\n"
    )
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        databricks={"host": emulator.url, "auth_type": "databricks-sdk", "profile": "emulated"},
        env={"DATABRICKS_CONFIG_FILE": str(databrickscfg), "HOME": str(tmp_path)},
    )

    assert relay(pulsar_client, topics, results, 0, 40) == 40
    bridge.stop()
    assert emulator.state.counters.tokens_issued >= 1, "the SDK fetched an OAuth token"
    assert CLIENT_SECRET not in bridge.output


def test_a_refused_client_secret_fails_start_up_with_a_clear_error(
    topics: Topics, emulator: EmulatorServer, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(
        {"fraud": route_config(topics)},
        databricks={
            "host": emulator.url,
            "client_id": CLIENT_ID,
            "client_secret": "not-the-secret-4711",
        },
        wait_ready=False,
    )

    assert bridge.wait_exit(60) == 1
    failure = bridge.wait_for("start_failed")
    assert "invalid_client" in failure["error"]
    assert "not-the-secret-4711" not in bridge.output
