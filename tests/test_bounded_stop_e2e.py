"""SIGTERM is obeyed within drain_grace_s in every state, not only while relaying.

Each test sets ``drain_grace_s`` (and the broker's operation timeout) far above the bound it
asserts, so a stop that waited for the grace, a Retry-After or a broker time-out fails.
"""

from __future__ import annotations

import json
import signal
import socket

import pulsar
import pytest
import tomli_w

from bridge.embedded import free_port
from bridge.emulator import EmulatorServer
from tests.conftest import CLIENT_ID, CLIENT_SECRET, BridgeFactory
from tests.support.harness import Topics, event, publish, route_config

pytestmark = pytest.mark.integration

LONG = {"daemon": {"drain_grace_s": 120}, "pulsar": {"operation_timeout_s": 120}}
BOUND_S = 20  # well under every wait above; the old behaviour took 30-310 s


def test_sigterm_during_start_up_with_the_broker_unreachable(
    tmp_path: object, topics: Topics, start_bridge: BridgeFactory
) -> None:
    extra = {
        **LONG,
        "pulsar": {**LONG["pulsar"], "service_url": f"pulsar://127.0.0.1:{free_port()}"},
    }
    bridge = start_bridge({"fraud": route_config(topics)}, extra=extra, wait_ready=False)
    bridge.wait_for("http_listening")
    bridge.signal(signal.SIGTERM)
    assert bridge.wait_exit(BOUND_S) == 0
    assert bridge.events("ready") == []


def test_sigterm_while_the_route_is_paused_hands_the_held_batches_back(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    emulator.state.faults.update({"not_found_for_s": 3600}, now=emulator.state.clock())
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(40)])
    bridge = start_bridge({"fraud": route_config(topics)}, extra=LONG)
    bridge.wait_for("probe_failed")  # a batch is in hand, held
    bridge.signal(signal.SIGTERM)
    assert bridge.wait_exit(BOUND_S) == 0
    summary = bridge.events("route_stopped")[0]
    assert summary["nacked"] > 0, "held batches handed back"
    assert summary["dead_lettered"] == 0


def test_sigterm_during_a_retry_after_wait(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    emulator.state.faults.update(
        {"fail_next": 1000, "fail_status": 429, "retry_after_s": 600}, now=0
    )
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(10)])
    route = route_config(topics, failure={"retry_after_max_s": 600})
    bridge = start_bridge({"fraud": route}, extra=LONG)
    bridge.wait_for("request_retry")
    bridge.signal(signal.SIGTERM)
    assert bridge.wait_exit(BOUND_S) == 0
    assert bridge.events("route_stopped")[0]["nacked"] == 10


def test_sigterm_during_a_reload_whose_routes_wait_for_a_silent_workspace(
    emulator: EmulatorServer, start_bridge: BridgeFactory
) -> None:
    # A workspace that takes connections and never answers: each route the reload adds
    # waits for its token and endpoint describe until they time out (10 s or more each;
    # the old reload started them one after another and held the SIGTERM meanwhile).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        workspaces = {
            "host": emulator.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "silent": {
                "host": f"http://127.0.0.1:{silent.getsockname()[1]}",
                "client_id": "silent-sp",
                "client_secret": "silent-secret",
            },
        }
        bridge = start_bridge({"first": route_config(Topics())}, databricks=workspaces, extra=LONG)
        routes = bridge.config_dir / "routes"
        for name in ("a", "b", "c"):
            added = route_config(Topics(), endpoint={"workspace": "silent"})
            (routes / f"{name}.toml").write_text(tomli_w.dumps(added))
        bridge.signal(signal.SIGHUP)
        bridge.wait_for("reloading")
        bridge.signal(signal.SIGTERM)
        assert bridge.wait_exit(BOUND_S) == 0
    assert bridge.events("reloaded") == [], "the stop came first; the reload was given up"
    assert bridge.events("route_stopped")[0]["route"] == "first"
