"""Typed topics end to end: schema producers in, typed consumers reading the results back.

Producers are the Python client's AvroSchema, JsonSchema and ProtobufNativeSchema (the
same payloads and registry entries as Java's); results are read by consumers that
declare the result schema, which on Apache Pulsar decode each result with the writer
schema its version names. pulsar-lite accepts schemas but keeps none and stamps no
versions: there the route's schema files are the writers' schemas, and ``auto`` and
two writer versions on one topic are Apache-only (tested there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pulsar
import pytest
from pulsar.schema import AvroSchema, Double, JsonSchema, ProtobufNativeSchema, Record, String

from bridge.emulator import score
from tests.conftest import APACHE, APACHE_ONLY, BridgeFactory, Broker, broker_kind
from tests.support.harness import TopicReader, Topics, publish, route_config
from tests.support.schemas import transaction_class, transaction_descriptor_set

pytestmark = pytest.mark.integration

RESULT_FIELDS = {
    "_avro_namespace": "pulsar_bridge",
    "prediction": Double(required=True),
    "id": String(required_default=True),
}
# What a typed consumer declares: the record the route "fraud" derives.
FraudResult = type("fraud_result", (Record,), dict(RESULT_FIELDS))
AVRO_RESULTS = {"schema": "avro", "prediction_type": "double", "passthrough": ["id"]}


def transaction(version: int) -> type[Record]:
    """shop.Transaction; version 2 adds a nullable country (compatible both ways)."""
    fields: dict[str, Any] = {
        "_avro_namespace": "shop",
        "id": String(required=True),
        "amount": Double(required=True),
    }
    if version == 2:
        fields["country"] = String(required_default=True)
    return type("Transaction", (Record,), fields)


def typed_results(
    broker: Broker, client: pulsar.Client, topic: str, schema: Any, count: int
) -> list[tuple[Any, dict[str, str]]]:
    """``count`` results read with the declared result ``schema``.

    On Apache Pulsar by a consumer that declares it (and decodes each result with the
    writer schema its version names). The Python client's typed consumer asks pulsar-lite
    for a writer schema even for messages without a version (and waits out a timeout), so
    there the same schema decodes the payloads of a plain consumer.
    """
    declared = broker_kind(broker) == APACHE
    consumer = client.subscribe(
        topic,
        f"typed-reader-{uuid.uuid4().hex[:8]}",  # from the first result, every time
        schema=schema if declared else pulsar.schema.BytesSchema(),
        initial_position=pulsar.InitialPosition.Earliest,
    )
    got: dict[str, tuple[Any, dict[str, str]]] = {}
    try:
        while len(got) < count:
            message = consumer.receive(timeout_millis=60_000)
            value = message.value() if declared else schema.decode(message.data())
            got[str(message.message_id())] = (value, message.properties())
            consumer.acknowledge(message)
    finally:
        consumer.close()
    return list(got.values())


def admin(broker: Broker) -> dict[str, Any]:
    """bridge.toml's [pulsar] admin_url where the broker has an admin API."""
    if broker_kind(broker) != APACHE:
        return {}
    admin_url: str = broker.admin_url  # type: ignore[attr-defined]
    return {"pulsar": {"admin_url": admin_url}}


def send_all(client: pulsar.Client, topic: str, schema: Any, records: list[Any]) -> None:
    producer = client.create_producer(topic, schema=schema)
    for record in records:
        producer.send(record)
    producer.close()


def test_avro_events_become_typed_results_and_bad_bytes_are_dead_lettered(
    broker: Broker,
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
    tmp_path: Path,
) -> None:
    tx = transaction(1)
    schema_file = tmp_path / "tx.avsc"
    schema_file.write_text(AvroSchema(tx).schema_info().schema())
    rows = [{"id": f"e{i}", "amount": float(i)} for i in range(20)]
    send_all(pulsar_client, topics.source, AvroSchema(tx), [tx(**row) for row in rows])
    garbage = b"\x02g\x00\x00"  # id "g", then a double cut short
    publish(pulsar_client, topics.source, [garbage])  # a schemaless producer: no version
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(
        topics,
        source={"schema": "avro", "schema_file": str(schema_file)},
        result=AVRO_RESULTS,
    )
    bridge = start_bridge({"fraud": route})

    results = typed_results(
        broker, pulsar_client, topics.result, AvroSchema(FraudResult), len(rows)
    )
    (letter,) = dead.read_until(lambda ms: len(ms) >= 1)
    assert {value.id: value.prediction for value, _ in results} == {
        row["id"]: score(row) for row in rows
    }
    assert all(properties["route"] == "fraud" for _, properties in results)
    assert letter.data == garbage, "the original bytes"
    assert letter.properties["error"].startswith("payload is not Avro of the route's schema file")

    tail = subprocess.run(
        [
            *(sys.executable, "-m", "bridge", "tail", "-c", str(bridge.config_dir)),
            *("--topic", topics.result, "--json", "--limit", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (shown,) = [json.loads(line) for line in tail.stdout.splitlines()]
    if broker_kind(broker) == APACHE:
        # Results carry their schema version, and tail decodes them with the registry's.
        assert shown["schema"] == "AVRO v0"
        assert set(shown["value"]) == {"prediction", "id"}
    else:
        assert "value" not in shown, "pulsar-lite stamps no schema version"
    bridge.stop()


@APACHE_ONLY
def test_a_new_writer_version_mid_stream_is_decoded_without_a_restart(
    broker: Broker, pulsar_client: pulsar.Client, topics: Topics, start_bridge: BridgeFactory
) -> None:
    v1, v2 = transaction(1), transaction(2)
    first = [{"id": f"a{i}", "amount": float(i)} for i in range(10)]
    send_all(pulsar_client, topics.source, AvroSchema(v1), [v1(**row) for row in first])
    route = route_config(topics, source={"schema": "auto"}, result=AVRO_RESULTS)
    bridge = start_bridge({"fraud": route}, extra=admin(broker))
    typed_results(broker, pulsar_client, topics.result, AvroSchema(FraudResult), len(first))

    later = [{"id": f"b{i}", "amount": i / 2, "country": "DE"} for i in range(10)]
    send_all(pulsar_client, topics.source, AvroSchema(v2), [v2(**row) for row in later])
    results = typed_results(
        broker, pulsar_client, topics.result, AvroSchema(FraudResult), len(first) + len(later)
    )
    bridge.stop()

    expected = {row["id"]: score(row) for row in first + later}
    assert {value.id: value.prediction for value, _ in results} == expected
    assert [line["version"] for line in bridge.events("schema_version_seen")] == [0, 1]
    assert len(bridge.events("route_subscribed")) == 1, "no restart"
    assert bridge.events("route_stopped")[0]["dead_lettered"] == 0


def test_json_schema_topic_in_typed_json_results_out(
    broker: Broker,
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
    tmp_path: Path,
) -> None:
    tx = transaction(1)
    schema_file = tmp_path / "tx.json"
    schema_file.write_text(JsonSchema(tx).schema_info().schema())
    rows = [{"id": f"j{i}", "amount": i * 1.5} for i in range(10)]
    send_all(pulsar_client, topics.source, JsonSchema(tx), [tx(**row) for row in rows])
    publish(pulsar_client, topics.source, [b'{"amount": 2.0}'])
    dead = TopicReader(pulsar_client, topics.dlq)
    route = route_config(
        topics,
        source={"schema": "json-schema", "schema_file": str(schema_file)},
        result={**AVRO_RESULTS, "schema": "json-schema"},
    )
    bridge = start_bridge({"fraud": route})

    results = typed_results(
        broker, pulsar_client, topics.result, JsonSchema(FraudResult), len(rows)
    )
    (letter,) = dead.read_until(lambda ms: len(ms) >= 1)
    bridge.stop()
    assert {value.id: value.prediction for value, _ in results} == {
        row["id"]: score(row) for row in rows
    }
    assert "lacks field(s) id" in letter.properties["error"]


def test_protobuf_topic_in_typed_avro_results_out(
    broker: Broker,
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
    tmp_path: Path,
) -> None:
    cls = transaction_class()
    descriptor_set = tmp_path / "tx.desc"
    descriptor_set.write_bytes(transaction_descriptor_set())
    rows = [{"id": f"p{i}", "amount": i + 0.25, "count": i} for i in range(10)]
    send_all(pulsar_client, topics.source, ProtobufNativeSchema(cls), [cls(**r) for r in rows])
    publish(pulsar_client, topics.source, [b"\xff\xff\xff"])
    dead = TopicReader(pulsar_client, topics.dlq)
    source = {"schema": "protobuf", "schema_file": str(descriptor_set)}
    route = route_config(
        topics, source={**source, "message_type": "shop.Transaction"}, result=AVRO_RESULTS
    )
    bridge = start_bridge({"fraud": route})

    results = typed_results(
        broker, pulsar_client, topics.result, AvroSchema(FraudResult), len(rows)
    )
    (letter,) = dead.read_until(lambda ms: len(ms) >= 1)
    bridge.stop()
    # The model sees every field; only the numeric ones (amount, count) score.
    assert {value.id: value.prediction for value, _ in results} == {
        row["id"]: score(row) for row in rows
    }
    assert "not a shop.Transaction" in letter.properties["error"]


def test_a_prediction_that_does_not_fit_the_result_schema_is_dead_lettered(
    pulsar_client: pulsar.Client, topics: Topics, start_bridge: BridgeFactory
) -> None:
    rows = [{"id": f"e{i}", "amount": float(i)} for i in range(5)]
    publish(pulsar_client, topics.source, [json.dumps(row).encode() for row in rows])
    dead = TopicReader(pulsar_client, topics.dlq)
    result = {**AVRO_RESULTS, "prediction_type": "long", "passthrough_types": {"id": "string"}}
    # Every batch fails alike: dead-letter them rather than pause for a poison storm.
    route = route_config(topics, result=result, failure={"poison_storm_batches": 0})
    bridge = start_bridge({"fraud": route})

    letters = dead.read_until(lambda ms: len(ms) >= len(rows))
    bridge.stop()
    assert sorted(json.loads(m.data)["id"] for m in letters) == [row["id"] for row in rows]
    for letter in letters:
        assert (
            "result does not fit the result schema: prediction is <" in (letter.properties["error"])
        )
        assert "expected long" in letter.properties["error"]


@APACHE_ONLY
def test_an_incompatible_result_schema_fails_the_route_at_start(
    broker: Broker, pulsar_client: pulsar.Client, topics: Topics, start_bridge: BridgeFactory
) -> None:
    taken = type(
        "fraud_result",
        (Record,),
        {"_avro_namespace": "pulsar_bridge", "prediction": String(required=True)},
    )
    pulsar_client.create_producer(topics.result, schema=AvroSchema(taken)).close()
    result = {**AVRO_RESULTS, "passthrough_types": {"id": "string"}}
    bridge = start_bridge(
        {"fraud": route_config(topics, result=result)}, extra=admin(broker), wait_ready=False
    )

    assert bridge.wait_exit() == 1, bridge.tail()
    (failed,) = bridge.events("start_failed")
    assert f"the broker refused the result schema on {topics.result}: HTTP 409" in (failed["error"])
    assert "compatibility check" in failed["error"]
