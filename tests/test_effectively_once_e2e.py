"""Effectively-once result topics on Apache Pulsar: no duplicate result after crashes,
restarts, redeliveries and a failover (Apache Pulsar only: pulsar-lite has no
deduplication, and a route asking for it there is refused by `check`; tested too).

The source topic has two partitions and is published with producer batching, so result
sequence ids come from batched entries (batch index included). Two bridge processes share
a failover subscription (each owns a partition; a killed one's partition fails over to the
other). Along 10,000 events: endpoint faults, a broker restart, SIGTERM + restart, SIGKILL
mid-batch + restart of each process. Every event ends with exactly one result message.
"""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from typing import Any

import pulsar
import pytest

from bridge.config import load_config
from bridge.config_bridge import PulsarSettings
from bridge.emulator import EmulatorServer, score
from bridge.errors import ConfigError
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_publish import (
    DEDUP_BATCH_MAX_BYTES,
    DEDUP_BATCH_MAX_MESSAGES,
    OutgoingMessage,
)
from tests.conftest import APACHE_ONLY, CLIENT_ID, CLIENT_SECRET, BridgeFactory
from tests.support.apache import ApachePulsarBroker
from tests.support.harness import (
    BridgeProcess,
    DistinctIds,
    Received,
    TopicReader,
    Topics,
    event,
    publish,
    route_config,
    write_config,
)

EVENTS = 10_000
CHUNKS = 10


def test_check_refuses_effectively_once_without_an_admin_api_or_one_owner(
    tmp_path: Path,
) -> None:
    topics = Topics()
    route = route_config(
        topics, source={"subscription_type": "shared"}, result={"delivery": "effectively-once"}
    )
    directory = write_config(
        tmp_path,
        service_url="pulsar://127.0.0.1:6650",
        databricks={"host": "http://127.0.0.1:1", "auth_type": "none"},
        routes={"fraud": route},
    )
    with pytest.raises(ConfigError) as raised:
        load_config(directory)
    text = str(raised.value)
    assert "needs source.subscription_type 'failover' or 'exclusive'" in text
    route["source"]["subscription_type"] = "failover"
    write_config(
        tmp_path,
        service_url="pulsar://127.0.0.1:6650",
        databricks={"host": "http://127.0.0.1:1", "auth_type": "none"},
        routes={"fraud": route},
    )
    with pytest.raises(ConfigError) as raised:
        load_config(directory)
    assert "needs pulsar.admin_url" in str(raised.value)
    assert "pulsar-lite has no deduplication" in str(raised.value)


def namespace(broker: ApachePulsarBroker, *, deduplication: bool) -> str:
    name = f"public/eo-{uuid.uuid4().hex[:8]}"
    broker.create_namespace(name, deduplication=deduplication)
    return name


def topics_in(ns: str) -> Topics:
    stem = uuid.uuid4().hex[:8]
    return Topics(
        source=f"persistent://{ns}/events-{stem}",
        result=f"persistent://{ns}/results-{stem}",
        dlq=f"persistent://{ns}/dlq-{stem}",
        subscription=f"bridge-{stem}",
    )


def eo_route(topics: Topics) -> dict[str, Any]:
    return route_config(
        topics,
        source={"subscription_type": "failover"},
        result={"delivery": "effectively-once", "passthrough": ["id"]},
        endpoint={"max_in_flight": 4},
        batch={"max_events": 50, "linger_ms": 5},
        failure={"circuit_probe_max_s": 0.5, "retry_after_max_s": 1},
    )


@APACHE_ONLY
@pytest.mark.integration
async def test_a_deduplicated_batch_is_one_entry_the_broker_keeps_or_drops_whole(
    apache_broker: ApachePulsarBroker, pulsar_client: pulsar.Client
) -> None:
    """What the result lines rely on, asked of the real client and broker: a batch sent
    with publish_batch is one entry, under its one id, whatever its size within the
    bounds, and a batch under an id at or below the highest stored is dropped whole."""
    topic = topics_in(namespace(apache_broker, deduplication=True)).result
    name = f"eo-batch-{uuid.uuid4().hex[:8]}"
    connection = PulsarConnection(PulsarSettings(service_url=apache_broker.url))
    try:
        publisher = await connection.publisher(topic, producer_name=name)
        small: list[OutgoingMessage] = [(b"a%d" % i, {}, None) for i in range(3)]
        counted: list[OutgoingMessage] = [
            (b"c%d" % i, {}, None) for i in range(DEDUP_BATCH_MAX_MESSAGES)
        ]
        piece = DEDUP_BATCH_MAX_BYTES // 8  # the byte bound exactly, in 8 messages
        sized: list[OutgoingMessage] = [(bytes([65 + i]) * piece, {}, None) for i in range(8)]
        assert await publisher.publish_batch(small, 12) is None
        assert await publisher.publish_batch(small, 12) is None, "sent again: dropped"
        assert await publisher.publish_batch(small[:2], 11) is None, "below: dropped"
        assert await publisher.publish_batch(counted, 2000) is None
        assert await publisher.publish_batch(sized, 3000) is None
        await publisher.close()
        again = await connection.publisher(topic, producer_name=name)
        assert again.last_sequence_id == 3000, "the broker remembers the highest id"
        await again.close()
    finally:
        await connection.close()
    stored = TopicReader(pulsar_client, topic).read_quiet(2000)
    assert [m.data for m in stored] == [m[0] for m in small + counted + sized]
    # "(ledger,entry,partition,batch index)": the first two name the entry
    entries = {tuple(m.message_id.strip("()").split(",")[:2]) for m in stored}
    assert len(entries) == 3, "one entry per batch"


@APACHE_ONLY
@pytest.mark.integration
def test_a_route_is_refused_when_the_result_topic_has_no_deduplication(
    apache_broker: ApachePulsarBroker, start_bridge: BridgeFactory
) -> None:
    topics = topics_in(namespace(apache_broker, deduplication=False))
    bridge = start_bridge(
        {"fraud": eo_route(topics)},
        extra={"pulsar": {"admin_url": apache_broker.admin_url}},
        wait_ready=False,
    )
    failed = bridge.wait_for("start_failed", timeout=60)
    assert "deduplication is not enabled" in failed["error"]
    assert bridge.wait_exit(30) == 1


@APACHE_ONLY
@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_no_duplicate_results_through_crashes_restarts_and_a_failover(
    pulsar_client: pulsar.Client,
    apache_broker: ApachePulsarBroker,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
    tmp_path: Path,
) -> None:
    ns = namespace(apache_broker, deduplication=True)
    topics = topics_in(ns)
    apache_broker.create_partitioned_topic(topics.source, 2)
    rows = [event(i) for i in range(EVENTS)]
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    extra = {"pulsar": {"admin_url": apache_broker.admin_url}, "daemon": {"drain_grace_s": 5}}
    configs = [tmp_path / "a", tmp_path / "b"]
    for directory in configs:
        write_config(
            directory,
            service_url=apache_broker.url,
            databricks={
                "host": emulator.url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            routes={"fraud": eo_route(topics)},
            extra=extra,
        )
    processes: dict[str, BridgeProcess] = {}

    def start(which: str) -> BridgeProcess:
        process = start_bridge({}, config_dir=configs[0 if which == "a" else 1])
        processes[which] = process
        return process

    def feed(chunk: int) -> None:
        size = EVENTS // CHUNKS
        part = rows[chunk * size : (chunk + 1) * size]
        publish(
            pulsar_client,
            topics.source,
            [json.dumps(r).encode() for r in part],
            key=lambda i: f"card-{i % 17}",
        )

    distinct = DistinctIds()  # counts as results arrive: every wait reads the same list

    def settled(count: int) -> None:
        got = results.read_until(lambda ms: distinct(ms) >= count, timeout=180)
        assert distinct(got) >= count, f"stalled before {count} results"

    start("a")
    start("b")
    feed(0)
    feed(1)
    settled(2000)
    emulator.state.faults.update({"rate_429": 0.2, "fail_next": 20, "fail_status": 503}, now=0)
    feed(2)
    settled(3000)
    emulator.state.faults.update({"rate_429": 0.0}, now=0)
    apache_broker.restart()  # both processes reconnect; in-flight results are sent again
    feed(3)
    settled(4000)
    processes["a"].signal(signal.SIGTERM)
    assert processes["a"].wait_exit(60) == 0, processes["a"].tail(60)
    feed(4)
    start("a")
    settled(5000)
    feed(5)
    processes["a"].wait_for("batch", lambda line: line["outcome"] in ("ok", "handed_in"))
    processes["a"].kill()  # SIGKILL mid-stream: its partition fails over to b
    feed(6)
    settled(7000)
    start("a")
    feed(7)
    processes["b"].wait_for("batch", lambda line: line["outcome"] in ("ok", "handed_in"))
    processes["b"].kill()
    start("b")
    feed(8)
    feed(9)
    settled(EVENTS)
    for process in processes.values():
        assert process.stop() == 0, process.tail()

    verdict(results.read_quiet(2000), rows, processes, emulator)
    assert dead.read_quiet(500) == []


def verdict(
    got: list[Received],
    rows: list[dict[str, Any]],
    processes: dict[str, BridgeProcess],
    emulator: EmulatorServer,
) -> None:
    """Every event has exactly one result message with the right prediction."""
    by_id: dict[str, set[str]] = {}
    for m in got:
        by_id.setdefault(m.json["id"], set()).add(m.message_id)
        assert m.json["prediction"] == score(rows[int(m.json["id"][1:])])
    missing = [r["id"] for r in rows if r["id"] not in by_id]
    duplicates = {k: len(v) for k, v in by_id.items() if len(v) > 1}
    print(
        f"\neffectively-once: {len(by_id)} events with results, {len(duplicates)} duplicates, "
        f"{len(missing)} missing, requests {dict(emulator.state.counters.requests_by_status)}"
    )
    assert missing == []
    for key in sorted(duplicates)[:4]:  # what a failure needs to be understood
        print("duplicate", key, [(m.message_id, m.properties) for m in got if m.json["id"] == key])
    for name, process in processes.items():
        opened = process.events("result_producer_opened")
        print(name, [(line["source_partition"], line["last_sequence_id"]) for line in opened])
    assert duplicates == {}, f"{len(duplicates)} events with more than one result"
