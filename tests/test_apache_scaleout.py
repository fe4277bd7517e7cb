"""Scale-out: several bridge processes on one subscription (Apache Pulsar only).

Every test here runs on Apache Pulsar only: pulsar-lite cannot let two client processes
share one subscription (their consumer ids collide, "Consumer 0 already exists", and
``subscribe`` times out), and a consumer SIGKILLed on pulsar-lite can stay registered and
stall its subscription until the broker restarts. Both are what scale-out is made of.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pulsar
import pytest

from bridge.emulator import EmulatorServer, score
from tests.conftest import APACHE_ONLY, BridgeFactory
from tests.support.apache import ApachePulsarBroker
from tests.support.harness import (
    BridgeProcess,
    DistinctIds,
    Received,
    TopicReader,
    Topics,
    event,
    key_shared_route,
    route_config,
    seqs_by_key,
)

pytestmark = [pytest.mark.integration, APACHE_ONLY]


def publish_each(
    client: pulsar.Client,
    topic: str,
    payloads: Iterable[bytes],
    *,
    key: Callable[[int], str | None] = lambda _i: None,
) -> int:
    """Publish without producer batching; return how many the broker confirmed.

    Each event is then its own entry, which the broker may hand to any consumer: a
    producer batch goes to one consumer whole (and on Key_Shared a batch mixing keys would
    be routed by one key), which would make the split between processes lumpy.
    """
    producer = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
    confirmed = threading.Condition()
    results: list[Any] = []

    def callback(res: Any, _msg_id: Any) -> None:
        with confirmed:
            results.append(res)
            confirmed.notify_all()

    sent = 0
    for i, payload in enumerate(payloads):
        k = key(i)
        if k is None:
            producer.send_async(payload, callback)
        else:
            producer.send_async(payload, callback, partition_key=k)
        sent += 1
    producer.flush()
    with confirmed:
        assert confirmed.wait_for(lambda: len(results) == sent, timeout=60), "publish stalled"
    producer.close()
    failed = [r for r in results if r != pulsar.Result.Ok]
    assert failed == [], f"{len(failed)} publishes failed: {failed[:3]}"
    return sent


def by_id(messages: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for m in messages:
        out.setdefault(m.json["id"], []).append(m)
    return out


def start_bridges(
    start_bridge: BridgeFactory, count: int, route: dict[str, Any]
) -> list[BridgeProcess]:
    """``count`` bridge processes, each with its own config dir holding the same route."""
    return [start_bridge({"fraud": route}) for _ in range(count)]


def subscription_stats(broker: ApachePulsarBroker, topics: Topics) -> dict[str, Any]:
    """The source subscription's stats from the admin REST API (pulsar-lite has none)."""
    path = topics.source.removeprefix("persistent://")
    response = httpx.get(f"{broker.admin_url}/admin/v2/persistent/{path}/stats", timeout=10)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()["subscriptions"][topics.subscription]
    return stats


def wait_backlog_drained(
    broker: ApachePulsarBroker, topics: Topics, timeout: float = 30
) -> dict[str, Any]:
    """Poll the subscription's stats until nothing is left in its backlog (bounded)."""
    done = threading.Event()
    stats = subscription_stats(broker, topics)
    for _ in range(int(timeout / 0.2)):
        if stats["msgBacklog"] == 0:
            return stats
        done.wait(0.2)
        stats = subscription_stats(broker, topics)
    return stats


def rows_payloads(n: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    rows = [event(i, seq=i) for i in range(n)]
    return rows, [json.dumps(r).encode() for r in rows]


@pytest.mark.parametrize("processes", [2, 3])
def test_bridge_processes_on_one_shared_subscription_split_the_load(
    processes: int,
    pulsar_client: pulsar.Client,
    apache_broker: ApachePulsarBroker,
    topics: Topics,
    start_bridge: BridgeFactory,
) -> None:
    """Needs Apache Pulsar: pulsar-lite refuses a second process on one subscription."""
    n = 3000
    rows, payloads = rows_payloads(n)
    results = TopicReader(pulsar_client, topics.result)
    bridges = start_bridges(start_bridge, processes, route_config(topics))

    publish_each(pulsar_client, topics.source, payloads)
    distinct = DistinctIds()
    got = results.read_until(lambda ms: distinct(ms) >= n)
    for bridge in bridges:
        assert bridge.stop() == 0, bridge.tail()

    results_by_id = by_id(got)
    assert len(results_by_id) == n, "every event has a result"
    for row in rows:
        assert all(r.json["prediction"] == score(row) for r in results_by_id[row["id"]])
    out = [bridge.events("route_stopped")[0]["results_out"] for bridge in bridges]
    print(f"\n{processes} processes, results_out per process: {out}")
    assert all(count > 0 for count in out), f"every process took a share: {out}"
    assert sum(out) == len(got), "no result was published twice"
    assert wait_backlog_drained(apache_broker, topics)["msgBacklog"] == 0


@pytest.mark.parametrize("processes", [2, 3])
def test_a_sigkilled_process_loses_nothing_its_unacked_events_go_to_the_others(
    processes: int,
    pulsar_client: pulsar.Client,
    apache_broker: ApachePulsarBroker,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    """Needs Apache Pulsar: shared subscription across processes, and a SIGKILLed consumer
    whose unacked events the broker must hand to the others (pulsar-lite can keep it
    registered and stall the subscription)."""
    n = 2000
    # Slow enough that the victim dies with batches in flight and events prefetched.
    emulator.state.faults.update({"latency_ms": 50}, now=0)
    rows, payloads = rows_payloads(n)
    results = TopicReader(pulsar_client, topics.result)
    route = route_config(topics, batch={"max_events": 10}, endpoint={"max_in_flight": 2})
    bridges = start_bridges(start_bridge, processes, route)
    victim, survivors = bridges[0], bridges[1:]

    publish_each(pulsar_client, topics.source, payloads)
    victim.wait_for("batch", lambda line: line["outcome"] == "ok")
    distinct = DistinctIds()
    before_kill = distinct(results.read_until(lambda ms: distinct(ms) >= n // 5))
    victim.kill()  # SIGKILL: no drain, no nack, no close; the broker sees the socket drop
    assert before_kill < n, "killed mid-stream"

    got = results.read_until(lambda ms: distinct(ms) >= n)
    for bridge in survivors:
        assert bridge.stop() == 0, bridge.tail()

    results_by_id = by_id(got)
    missing = [r["id"] for r in rows if r["id"] not in results_by_id]
    assert missing == [], f"{len(missing)} events lost, e.g. {missing[:5]}"
    for row in rows:
        assert all(r.json["prediction"] == score(row) for r in results_by_id[row["id"]])
    # A second result *message* for an event (the same message read twice is the reader's).
    duplicates = sum(len({m.message_id for m in ms}) - 1 for ms in results_by_id.values())
    victim_ok = sum(b["size"] for b in victim.events("batch") if b["outcome"] == "ok")
    survivor_out = [b.events("route_stopped")[0]["results_out"] for b in survivors]
    print(
        f"\n{processes} processes, SIGKILL of one after {before_kill} results: "
        f"victim published {victim_ok} (logged), survivors {survivor_out}, "
        f"duplicates {duplicates}"
    )
    assert all(count > 0 for count in survivor_out)
    # A duplicate can only be an event the victim published but had not yet acked: at
    # most its batches in progress (twice max_in_flight: see bridge.relay).
    in_flight = 2 * route["endpoint"]["max_in_flight"] * route["batch"]["max_events"]
    assert duplicates <= victim_ok + in_flight
    stats = wait_backlog_drained(apache_broker, topics)
    assert stats["msgBacklog"] == 0, f"events left unacked: {stats}"


def test_key_shared_across_two_processes_keeps_per_key_order(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    """Needs Apache Pulsar: two processes on one Key_Shared subscription (pulsar-lite
    refuses the second process)."""
    n, keys = 1200, 24
    emulator.state.faults.update({"rate_429": 0.3, "seed": 7, "latency_ms": 5}, now=0)
    _, payloads = rows_payloads(n)
    results = TopicReader(pulsar_client, topics.result)
    route = key_shared_route(topics)
    bridges = start_bridges(start_bridge, 2, route)

    publish_each(pulsar_client, topics.source, payloads, key=lambda i: f"card-{i % keys}")
    distinct = DistinctIds()
    got = results.read_until(lambda ms: distinct(ms) >= n)
    for bridge in bridges:
        assert bridge.stop() == 0, bridge.tail()

    assert len(by_id(got)) == n
    assert emulator.state.counters.requests_by_status[429] > 0, "faults were injected"
    per_key = seqs_by_key(got)
    assert len(per_key) == keys
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"results of {key} reordered"
    out = [bridge.events("route_stopped")[0]["results_out"] for bridge in bridges]
    assert all(count > 0 for count in out), f"both processes took keys: {out}"
    retried = sum(len(bridge.events("request_retry")) for bridge in bridges)
    print(f"\nkey_shared, results_out per process: {out}, requests tried again: {retried}")
    assert retried > 0, "batches were held and tried again in place (per-key order under 429s)"
