"""The states a serving endpoint goes through, end to end: the route pauses, probes and
resumes by itself, and no good event is lost or dead-lettered.

One bridge process relays a stream while the emulator takes its endpoint through a 20 s
404 outage (recreated or renamed), a 20 s 403 outage (a grant revoked and restored), a
scale from zero (503 and NOT_READY), a model redeployed with a new signature (every row
400: a poison storm) and a capacity drop mid-stream (429 beyond it). Each phase's events
are published while the state holds; the phase ends when every one of them has a result.
A last, hostile phase: a model that answers a few events with more than the route's
``max_response_bytes``; only those events are dead-lettered, with the reason.
Runs on both brokers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pulsar
import pytest

from bridge.emulator import EmulatorServer
from bridge.emulator.state import ServedModel
from tests.conftest import BridgeFactory
from tests.support.harness import (
    DistinctIds,
    Received,
    TopicReader,
    Topics,
    event,
    publish,
    route_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

PROBE_MAX_S = 2.0
PER_PHASE = 300


def ids(messages: list[Received]) -> set[str]:
    return {m.json["id"] for m in messages}


@pytest.mark.timeout(600)
def test_endpoint_states_pause_and_resume_the_route_losing_nothing(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    state = emulator.state
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(
        topics,
        endpoint={"max_in_flight": 6, "max_response_bytes": 200_000},
        batch={"max_events": 25, "linger_ms": 5},
        failure={
            "attempts": 2,
            "circuit_failures": 4,
            "circuit_probe_max_s": PROBE_MAX_S,
            "poison_storm_batches": 3,
            "max_redeliveries": 1,
        },
    )
    bridge = start_bridge({"fraud": route})
    published = 0
    distinct = DistinctIds()  # counts as results arrive: every phase reads the same list
    recovery_s: dict[str, float] = {}

    def phase(name: str, fault: dict[str, Any], seconds: float, kind: str | None) -> None:
        nonlocal published
        seen_before = len(bridge.lines)  # only what the bridge logs from here on counts
        state.faults.update(fault, now=state.clock())
        ends_at = time.monotonic() + seconds
        rows = [event(i) for i in range(published, published + PER_PHASE)]
        published += PER_PHASE
        publish(pulsar_client, topics.source, [json.dumps(r).encode() for r in rows])
        if kind is not None:
            # wait_for scans every line logged so far: keep to this phase's own lines.
            paused = bridge.wait_for(
                "route_paused",
                lambda line: line["kind"] == kind and bridge.lines.index(line) >= seen_before,
            )
            resumed = bridge.wait_for(
                "route_resumed",
                lambda line: line["timestamp"] > paused["timestamp"],
                timeout=seconds + 60,
            )
            recovery_s[name] = time.monotonic() - ends_at
            assert resumed
        results.read_until(lambda ms: distinct(ms) >= published, timeout=120)

    phase("404 outage", {"not_found_for_s": 20}, 20, "route")
    phase("403 outage", {"forbidden_for_s": 20}, 20, "route")
    phase("scale from zero", {"scale_from_zero_s": 8}, 8, "down")
    phase("new signature", {"reject_all_for_s": 8}, 8, "storm")
    state.faults.update({"capacity": 4, "latency_ms": 20}, now=0)
    phase("capacity 4", {}, 0, None)
    phase("capacity drop to 2", {"capacity": 2}, 0, None)
    # Hostile: a few answers far over the response limit (their events' fault here).
    huge = {f"e{i}" for i in range(published, published + PER_PHASE, 50)}
    state.model = ServedModel(
        "fraud-model-2", lambda rows: ["x" * 300_000 if r["id"] in huge else 0.5 for r in rows]
    )
    rows = [event(i) for i in range(published, published + PER_PHASE)]
    publish(pulsar_client, topics.source, [json.dumps(r).encode() for r in rows])
    published += PER_PHASE
    got = results.read_until(lambda ms: distinct(ms) >= published - len(huge))
    dead_letters = dead.read_until(lambda ms: len(ms) >= len(huge))
    bridge.stop()

    assert ids(got) == {f"e{i}" for i in range(published)} - huge, "every good event scored"
    assert {m.json["id"] for m in dead.read_quiet(500)} == huge, "only the hostile answers"
    assert all("max_response_bytes" in m.properties["error"] for m in dead_letters)
    summary = bridge.events("route_stopped")[0]
    assert summary["dead_lettered"] == len(huge)
    # Back within the probe cap after the endpoint recovered (plus the broker's and the
    # loaded machine's time to deliver the first result).
    for name, seconds in recovery_s.items():
        assert seconds <= PROBE_MAX_S + 15, f"{name}: resumed {seconds:.1f}s after recovery"
    print(f"recovery after each state: { {k: round(v, 1) for k, v in recovery_s.items()} }")
    print(f"requests by status: {dict(state.counters.requests_by_status)}")
