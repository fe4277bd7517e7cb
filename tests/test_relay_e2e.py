"""The core relay end to end: pulsar-lite, the emulator, and the bridge as its own process."""

from __future__ import annotations

import json
import signal

import pulsar
import pytest

from bridge.emulator import EmulatorServer, score
from tests.conftest import BridgeFactory
from tests.support.harness import Received, TopicReader, Topics, event, publish, route_config

pytestmark = pytest.mark.integration


def by_id(messages: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for m in messages:
        out.setdefault(m.json["id"], []).append(m)
    return out


@pytest.mark.parametrize("fmt", ["dataframe_records", "dataframe_split", "instances", "inputs"])
def test_every_event_gets_one_correct_correlated_result(
    fmt: str, pulsar_client: pulsar.Client, topics: Topics, start_bridge: BridgeFactory
) -> None:
    n = 1000
    rows = [event(i) for i in range(n)]
    ids = publish(
        pulsar_client,
        topics.source,
        [json.dumps(r).encode() for r in rows],
        key=lambda i: f"card-{i % 7}",
    )
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics, endpoint={"format": fmt})})

    got = results.read_until(lambda ms: len(ms) >= n)
    bridge.stop()

    assert len(got) == n
    results_by_id = by_id(got)
    assert len(results_by_id) == n, "one result per event"
    for i, row in enumerate(rows):
        (result,) = results_by_id[row["id"]]
        assert result.json == {"prediction": score(row), "id": row["id"]}
        assert result.properties["source_message_id"] == ids[i]
        assert result.properties["source_topic"] == topics.source
        assert result.properties["route"] == "fraud"
        assert result.properties["served_model"] == "fraud-model-1"
        assert result.key == f"card-{i % 7}"
    stopped = bridge.events("route_stopped")[0]
    assert stopped["results_out"] == n
    assert stopped["dead_lettered"] == 0


def test_events_that_are_not_json_objects_go_to_the_dead_letter_topic(
    pulsar_client: pulsar.Client, topics: Topics, start_bridge: BridgeFactory
) -> None:
    payloads = [b"not json at all", b"[1, 2, 3]", b"\xff\xfe", json.dumps(event(1)).encode()]
    publish(pulsar_client, topics.source, payloads)
    dead = TopicReader(pulsar_client, topics.dlq)
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge({"fraud": route_config(topics)})

    dead_letters = dead.read_until(lambda ms: len(ms) >= 3)
    good = results.read_until(lambda ms: len(ms) >= 1)
    bridge.stop()

    assert sorted(m.data for m in dead_letters) == sorted(payloads[:3]), "original bytes kept"
    reasons = {m.data: m.properties["error"] for m in dead_letters}
    assert "not UTF-8 JSON" in reasons[b"not json at all"]
    assert "JSON list, not an object" in reasons[b"[1, 2, 3]"]
    assert all(m.properties["route"] == "fraud" for m in dead_letters)
    assert all(m.properties["source_topic"] == topics.source for m in dead_letters)
    assert [m.json["id"] for m in good] == ["e1"]


def test_transient_failures_are_held_retried_and_then_succeed(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    n = 300
    # Every request fails with 503 for a while: the batches are held in the bridge and tried
    # again with backoff (a failing endpoint is no reason to spend Pulsar redeliveries).
    emulator.state.faults.update({"fail_next": 8, "fail_status": 503}, now=0)
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(n)])
    results = TopicReader(pulsar_client, topics.result)
    bridge = start_bridge(
        {"fraud": route_config(topics, failure={"attempts": 1, "circuit_failures": 1000})}
    )

    got = results.read_until(lambda ms: len(by_id(ms)) >= n)
    bridge.stop()

    assert len(by_id(got)) == n
    assert emulator.state.counters.requests_by_status[503] == 8
    stopped = bridge.events("route_stopped")[0]
    assert stopped["nacked"] == 0
    assert stopped["dead_lettered"] == 0
    assert stopped["retries"] > 0
    retried = bridge.events("request_retry")
    assert retried
    assert all(r["reason"].startswith("HTTP 503") for r in retried)


def test_a_token_that_expires_mid_stream_is_refreshed_without_failures(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    bridge = start_bridge({"fraud": route_config(topics)})
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(200)])
    results.read_until(lambda ms: len(ms) >= 200)
    issued_before = emulator.state.counters.tokens_issued

    # The workspace revokes every token (as expiry would, seen from the server side):
    # the bridge's next request gets a 401, refreshes once and retries.
    emulator.state.revoke_all()
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(200, 400)])
    got = results.read_until(lambda ms: len(ms) >= 400)
    bridge.stop()

    assert len(by_id(got)) == 400
    assert emulator.state.counters.tokens_issued > issued_before
    assert emulator.state.counters.requests_by_status[401] >= 1
    assert dead.read_quiet(500) == []
    assert not [b for b in bridge.events("batch") if b["outcome"] != "ok"]


def test_poison_events_are_isolated_by_bisection(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    n, poison = 200, {17, 133}
    rows = [event(i, _poison=i in poison) for i in range(n)]
    publish(pulsar_client, topics.source, [json.dumps(r).encode() for r in rows])
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    bridge = start_bridge({"fraud": route_config(topics, batch={"max_events": 64})})

    good = results.read_until(lambda ms: len(ms) >= n - len(poison))
    dead_letters = dead.read_until(lambda ms: len(ms) >= len(poison))
    bridge.stop()

    assert set(by_id(good)) == {f"e{i}" for i in range(n) if i not in poison}
    assert {json.loads(m.data)["id"] for m in dead_letters} == {"e17", "e133"}
    assert all(m.properties["error"].startswith("HTTP 400") for m in dead_letters)
    # Bisection costs at most ~2*log2(64) extra requests per bad event.
    rejected = emulator.state.counters.requests_by_status[400]
    assert rejected <= 2 * 2 * 6


def slow_backlog(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    n: int,
    *,
    latency_ms: float,
) -> TopicReader:
    """``n`` events waiting on the source, an endpoint answering in ``latency_ms``, and a
    reader of the result topic."""
    emulator.state.faults.update({"latency_ms": latency_ms}, now=0)
    publish(pulsar_client, topics.source, [json.dumps(event(i)).encode() for i in range(n)])
    return TopicReader(pulsar_client, topics.result)


def test_requests_at_the_endpoint_never_exceed_max_in_flight(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    # Slow answers keep every request slot busy, so the bound is reached, not just kept.
    n = 300
    results = slow_backlog(pulsar_client, topics, emulator, n, latency_ms=50)
    route = route_config(topics, batch={"max_events": 10}, endpoint={"max_in_flight": 3})
    bridge = start_bridge({"fraud": route})
    got = results.read_until(lambda ms: len(by_id(ms)) >= n)
    bridge.stop()
    assert len(by_id(got)) == n
    assert emulator.state.counters.peak_invocations_in_progress == 3


def test_sigterm_drains_in_flight_batches_and_exits_zero(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    n = 400
    results = slow_backlog(pulsar_client, topics, emulator, n, latency_ms=300)
    route = route_config(topics, batch={"max_events": 20}, endpoint={"max_in_flight": 2})
    bridge = start_bridge({"fraud": route})
    bridge.wait_for("batch")  # mid-stream: some batches done, others in flight

    bridge.signal(signal.SIGTERM)
    assert bridge.wait_exit(30) == 0
    drained = bridge.events("route_stopped")[0]
    assert drained["results_out"] < n, "stopped mid-stream"
    assert bridge.events("stopped")

    # Nothing was lost: a second run finishes the rest.
    emulator.state.faults.update({"latency_ms": 0}, now=0)
    second = start_bridge({"fraud": route})
    got = results.read_until(lambda ms: len(by_id(ms)) >= n)
    second.stop()
    assert len(by_id(got)) == n
