"""Following events across the hop: the bridge as a process with tracing on, exporting to a
loopback OTLP collector, and the emulator logging every request as an inference table would.

One event alone keeps its trace id on the source message, on the HTTP request the emulator
saw and on its result; every batch span links all its events; every result carries the id
of the request that scored it (the emulator's ``x-request-id``) and the client_request_id
that request sent, so inference-table rows join to results.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pulsar
import pytest

from bridge.emulator import EmulatorServer
from bridge.emulator.state import InvocationRecord
from tests.conftest import BridgeFactory
from tests.support.harness import Received, TopicReader, Topics, event, route_config
from tests.support.otlp import (
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_PRODUCER,
    OtlpCollector,
    ReceivedSpan,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class SourceTrace:
    trace_id: str
    span_id: str

    @classmethod
    def new(cls) -> SourceTrace:
        return cls(uuid.uuid4().hex, uuid.uuid4().hex[:16])

    @property
    def properties(self) -> dict[str, str]:
        return {"traceparent": f"00-{self.trace_id}-{self.span_id}-01", "tracestate": "up=1"}


def trace_of(traceparent: str | None) -> str:
    assert traceparent is not None
    return traceparent.split("-")[1]


def test_an_events_trace_and_its_request_ids_reach_its_result(
    pulsar_client: pulsar.Client,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    sources = {f"e{i}": SourceTrace.new() for i in range(31)}
    with OtlpCollector() as collector:
        results = TopicReader(pulsar_client, topics.result)
        bridge = start_bridge(
            {"fraud": route_config(topics, endpoint={"client_request_id": True})},
            extra={"observe": {"tracing": {"enabled": True, "otlp_endpoint": collector.url}}},
        )
        producer = pulsar_client.create_producer(topics.source)
        # e0 alone first, so it is a batch of one; then the rest, batched as they come.
        producer.send(json.dumps(event(0)).encode(), properties=sources["e0"].properties)
        results.read_until(lambda ms: len(ms) >= 1)
        for i in range(1, 31):
            payload = json.dumps(event(i)).encode()
            producer.send(payload, properties=sources[f"e{i}"].properties)
        got = {m.json["id"]: m for m in results.read_until(lambda ms: len(ms) >= 31)}
        producer.close()
        assert bridge.stop() == 0  # the last spans are flushed on the way out
        spans = collector.wait_for(lambda s: sum(x.kind == KIND_PRODUCER for x in s) >= 31)
    assert sorted(got) == sorted(sources)
    logged = {record.request_id: record for record in emulator.state.invocation_log}

    # One event, one trace id: its source message, the request the emulator saw, its result.
    lone, lone_result = sources["e0"], got["e0"]
    lone_request = logged[lone_result.properties["request_id"]]
    assert trace_of(lone_request.traceparent) == lone.trace_id
    assert trace_of(lone_result.properties["traceparent"]) == lone.trace_id

    for name, result in got.items():
        _assert_joined(sources[name], result, logged[result.properties["request_id"]], spans)

    process = [s for s in spans if s.kind == KIND_CONSUMER]
    linked = [link for span in process for link in span.links]
    assert sorted(linked) == sorted((s.trace_id, s.span_id) for s in sources.values())
    for span in process:
        assert len(span.links) == span.attributes.get("messaging.batch.message_count", 1)
        assert span.attributes["messaging.system"] == "pulsar"
        assert span.service == "pulsar-bridge"
    assert any(len(span.links) > 1 for span in process), "no batch of several events"


def _assert_joined(
    source: SourceTrace, result: Received, request: InvocationRecord, spans: list[ReceivedSpan]
) -> None:
    """The result, the request that scored it (as the emulator logged it) and the spans
    between them agree."""
    properties = result.properties
    assert request.client_request_id == properties["client_request_id"]
    assert properties["served_model"] == "fraud-model-1"
    assert trace_of(properties["traceparent"]) == source.trace_id
    assert properties["tracestate"] == "up=1"
    # The HTTP span that carried the request, and the batch span it belongs to.
    (client,) = [
        s
        for s in spans
        if s.kind == KIND_CLIENT
        and s.attributes.get("http.response.header.x-request-id") == (request.request_id,)
    ]
    assert client.trace_id == trace_of(request.traceparent)
    assert client.attributes["databricks.client_request_id"] == request.client_request_id
    (batch,) = [s for s in spans if s.span_id == client.parent_span_id]
    assert batch.kind == KIND_CONSUMER
    assert (source.trace_id, source.span_id) in batch.links
    # The result's own span: a child of the event's, linking the batch.
    (made,) = [s for s in spans if s.span_id == properties["traceparent"].split("-")[2]]
    assert made.kind == KIND_PRODUCER
    assert made.parent_span_id == source.span_id
    assert (batch.trace_id, batch.span_id) in made.links
