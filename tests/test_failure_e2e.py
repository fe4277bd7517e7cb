"""Failure semantics end to end: order under faults, circuit, redelivery limits, oversize."""

from __future__ import annotations

import json

import pulsar
import pytest

from bridge.emulator import EmulatorServer
from bridge.emulator.state import ServedModel
from tests.conftest import BridgeFactory
from tests.support.harness import (
    Received,
    TopicReader,
    Topics,
    event,
    key_shared_route,
    publish,
    route_config,
    seqs_by_key,
)

pytestmark = pytest.mark.integration


def ids(messages: list[Received]) -> set[str]:
    return {m.json["id"] for m in messages}


def test_key_shared_keeps_per_key_order_under_429s_with_several_requests_in_flight(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    n, keys = 1200, 12
    emulator.state.faults.update({"rate_429": 0.3, "seed": 11, "latency_ms": 5}, now=0)
    rows = [event(i, seq=i) for i in range(n)]
    publish(
        pulsar_client,
        topics.source,
        [json.dumps(r).encode() for r in rows],
        key=lambda i: f"card-{i % keys}",
    )
    results = TopicReader(pulsar_client, topics.result)
    route = key_shared_route(topics)
    bridge = start_bridge({"fraud": route})

    got = results.read_until(lambda ms: len(ids(ms)) >= n)
    bridge.stop()

    assert len(ids(got)) == n
    assert emulator.state.counters.requests_by_status[429] > 0, "faults were injected"
    assert bridge.events("request_retry"), "batches were held and tried again"
    per_key = seqs_by_key(got)
    assert len(per_key) == keys
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"results of {key} reordered"


def test_an_endpoint_outage_pauses_the_route_which_resumes_by_itself_and_loses_nothing(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    n = 400
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(
        topics,
        batch={"max_events": 20},
        failure={
            "attempts": 2,
            "circuit_failures": 3,
            "circuit_probe_max_s": 0.3,
            "max_redeliveries": 1,
        },
    )
    bridge = start_bridge({"fraud": route})
    # Down for a while: an outage is the endpoint's fault, so nothing is dead-lettered.
    emulator.state.faults.update({"outage_for_s": 3}, now=emulator.state.clock())
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(n)])

    paused = bridge.wait_for("route_paused")
    resumed = bridge.wait_for("route_resumed", timeout=30)
    got = results.read_until(lambda ms: len(ids(ms)) >= n)
    bridge.stop()

    assert paused["kind"] == "down"
    assert resumed
    assert len(ids(got)) == n
    assert dead.read_quiet(500) == []
    assert len(bridge.events("route_paused")) == 1, "state change logged once"
    assert emulator.state.counters.requests_by_status[503] >= 3


def test_an_endpoint_failing_every_request_never_dead_letters_and_recovers(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    # "500 forever" is the endpoint's fault, not the events': they are held, the route
    # pauses, and once the endpoint answers again every event gets its result.
    emulator.state.faults.update({"fail_next": 10_000, "fail_status": 500}, now=0)
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(10)])
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(
        topics,
        failure={
            "attempts": 1,
            "max_redeliveries": 0,
            "circuit_failures": 3,
            "circuit_probe_max_s": 0.2,
        },
    )
    bridge = start_bridge({"fraud": route})

    paused = bridge.wait_for("route_paused")
    emulator.state.faults.update({"fail_next": 0}, now=0)
    got = results.read_until(lambda ms: len(ids(ms)) >= 10)
    bridge.stop()

    assert paused["kind"] == "down"
    assert paused["reason"].startswith("HTTP 500")
    assert ids(got) == {f"e{i}" for i in range(10)}
    assert dead.read_quiet(500) == []
    assert bridge.events("route_stopped")[0]["nacked"] == 0


def test_retry_after_is_honoured_and_the_request_then_succeeds(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    emulator.state.faults.update({"fail_next": 1, "fail_status": 429, "retry_after_s": 1}, now=0)
    publish(pulsar_client, topics.source, [json.dumps(event(1)).encode()])
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics)})

    got = results.read_until(lambda ms: len(ms) >= 1)
    bridge.stop()

    assert ids(got) == {"e1"}
    (retry,) = bridge.events("request_retry")
    assert retry["delay_s"] == 1.0, "waited what the server asked, not the jittered backoff"
    assert retry["reason"].startswith("HTTP 429")


def test_an_oversized_event_is_dead_lettered_and_its_batch_still_scored(
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
) -> None:
    big = event(0, blob="x" * 20_000)
    payloads = [json.dumps(big).encode()] + [json.dumps(event(i)).encode() for i in range(1, 30)]
    publish(pulsar_client, topics.source, payloads)
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(topics, endpoint={"max_payload_bytes": 8_000}, batch={"max_events": 30})
    bridge = start_bridge({"fraud": route})

    got = results.read_until(lambda ms: len(ms) >= 29)
    (dead_letter,) = dead.read_until(lambda ms: len(ms) >= 1)
    bridge.stop()

    assert ids(got) == {f"e{i}" for i in range(1, 30)}
    assert dead_letter.data == payloads[0]
    assert "exceeds the payload limit 8000" in dead_letter.properties["error"]


@pytest.mark.parametrize("subscription_type", ["shared", "key_shared"])
def test_a_result_too_large_for_the_broker_dead_letters_its_event(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
    subscription_type: str,
) -> None:
    # A model answering one row with 6 MiB: over the broker's 5 MiB message limit, so that
    # result can never be published, however often the event comes back.
    def predict(rows: list[dict[str, object]]) -> list[object]:
        return ["y" * (6 * 1024 * 1024) if row.get("huge") else 0.5 for row in rows]

    emulator.state.model = ServedModel("huge-1", predict)
    payloads = [json.dumps(event(i, huge=i == 3)).encode() for i in range(10)]
    publish(pulsar_client, topics.source, payloads)
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(
        topics, source={"subscription_type": subscription_type}, batch={"max_events": 10}
    )
    bridge = start_bridge({"fraud": route})

    got = results.read_until(lambda ms: len(ms) >= 9)
    (dead_letter,) = dead.read_until(lambda ms: len(ms) >= 1)
    bridge.stop()

    assert ids(got) == {f"e{i}" for i in range(10) if i != 3}
    assert dead_letter.data == payloads[3]
    assert "result not publishable" in dead_letter.properties["error"]
    assert "MessageTooBig" in dead_letter.properties["error"]
    summary = bridge.events("route_stopped")[0]
    assert summary["nacked"] == 0, "dead-lettered at once, not redelivered"
