"""What crosses the hop with a request and lands on its results: request ids, the body's
client_request_id, token failures counted; and the untraced path left untouched."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.config import load_config
from bridge.config_route import RouteSettings
from bridge.correlation import Correlation, with_client_request_id
from bridge.errors import AuthError, BrokerError, EndpointError
from bridge.events import Event
from bridge.gate import RouteGate
from bridge.limiter import EndpointLimiter, FixedLimit
from bridge.observe import Metrics, RouteMetrics
from bridge.processing import BatchProcessor
from bridge.pulsar_publish import Publisher
from bridge.pulsar_source import Received, Source
from bridge.serving import Invocation, ServingClient
from bridge.settle import Settler
from bridge.storm import StormGuard
from bridge.tracing import RouteTracing
from tests.support.harness import Topics, route_config, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def route_settings(tmp_path: Path, **endpoint: Any) -> RouteSettings:
    directory = write_config(
        tmp_path,
        service_url="pulsar://127.0.0.1:1",
        databricks={"host": "http://127.0.0.1:1", "auth_type": "none"},
        routes={"fraud": route_config(Topics(), endpoint={"name": "fraud-model", **endpoint})},
    )
    return load_config(directory).routes[0]


class FakeReceived:
    _ids = itertools.count()

    def __init__(self, properties: dict[str, str]) -> None:
        self.data = b"{}"
        self.key = None
        self.topic = "persistent://public/default/events"
        self.message_id = f"(7,{next(self._ids)},-1,-1)"
        self.properties = properties
        self.redelivery_count = 0


def events(n: int, traced: bool = False) -> list[Event]:
    made = []
    for i in range(n):
        properties = {"traceparent": f"00-{TRACE_ID[:-2]}{i:02x}-00f067aa0ba902b7-01"}
        made.append(Event(cast(Received, FakeReceived(properties if traced else {})), {"i": i}))
    return made


class Endpoint:
    """Answers 0.5 per row with a request id; remembers each body and the headers sent.

    Its ``invoke`` takes ``headers`` only when given: an untraced call must not pass any.
    """

    def __init__(self, request_id: str | None = "req-1", fail: EndpointError | None = None):
        self.url = "https://adb-1.net/serving-endpoints/fraud-model/invocations"
        self.request_id = request_id
        self.fail = fail
        self.calls: list[tuple[bytes, Mapping[str, str] | None]] = []

    async def invoke(self, body: bytes, *args: Any, **kwargs: Any) -> Invocation:
        assert not args
        self.calls.append((body, kwargs.get("headers")))
        if self.fail is not None:
            raise self.fail
        rows = orjson.loads(body)["dataframe_records"]
        return Invocation({"predictions": [0.5] * len(rows)}, "m-1", 0.001, self.request_id)


def serving(endpoint: Endpoint) -> ServingClient:
    return cast(ServingClient, endpoint)


def body_of(rows: int) -> bytes:
    return orjson.dumps({"dataframe_records": [{"i": i} for i in range(rows)]})


async def test_untraced_without_client_ids_passes_the_request_through(tmp_path: Path) -> None:
    endpoint = Endpoint()
    correlation = Correlation(route_settings(tmp_path))
    invocation = await correlation.invoke(serving(endpoint), body_of(2))
    assert endpoint.calls == [(body_of(2), None)]
    assert not correlation.traced
    extras = list(correlation.result_properties(events(2), invocation))
    assert extras == [{"request_id": "req-1"}] * 2
    assert extras[0] is extras[1], "one mapping for the whole batch: nothing per event"


async def test_no_ids_and_no_tracing_leave_results_alone(tmp_path: Path) -> None:
    correlation = Correlation(route_settings(tmp_path))
    invocation = await correlation.invoke(serving(Endpoint(request_id=None)), body_of(1))
    assert list(correlation.result_properties(events(3), invocation)) == [None] * 3


async def test_an_opted_in_route_sends_a_fresh_client_request_id_per_request(
    tmp_path: Path,
) -> None:
    endpoint = Endpoint()
    correlation = Correlation(route_settings(tmp_path, client_request_id=True))
    first = await correlation.invoke(serving(endpoint), body_of(2))
    second = await correlation.invoke(serving(endpoint), body_of(2))
    sent = [orjson.loads(body) for body, _ in endpoint.calls]
    assert [s["client_request_id"] for s in sent] == [
        first.client_request_id,
        second.client_request_id,
    ]
    assert first.client_request_id != second.client_request_id
    assert sent[0]["dataframe_records"] == [{"i": 0}, {"i": 1}], "rows untouched"
    (extra, _) = correlation.result_properties(events(2), first)
    assert extra == {"request_id": "req-1", "client_request_id": first.client_request_id}


async def test_a_request_id_is_redacted_and_bounded(tmp_path: Path) -> None:
    correlation = Correlation(
        route_settings(tmp_path), redact=lambda text: text.replace("s3cret", "[REDACTED]")
    )
    invocation = await correlation.invoke(serving(Endpoint("s3cret" + "x" * 500)), body_of(1))
    (extra,) = correlation.result_properties(events(1), invocation)
    assert extra == {"request_id": "[REDACTED]" + "x" * 122}


@pytest.mark.parametrize(
    ("body", "spliced"),
    [
        (b'{"inputs":[1]}', b'{"client_request_id":"c-1","inputs":[1]}'),
        (b"{ }", b'{"client_request_id":"c-1"}'),
        (b'{\n "a": 1}', b'{"client_request_id":"c-1","a": 1}'),
    ],
)
def test_the_client_request_id_is_spliced_in_first(body: bytes, spliced: bytes) -> None:
    assert with_client_request_id(body, "c-1") == spliced
    assert orjson.loads(spliced)["client_request_id"] == "c-1"


def test_only_an_object_body_takes_a_client_request_id() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        with_client_request_id(b"[1]", "c-1")


async def test_a_request_without_a_token_counts_as_a_token_failure(tmp_path: Path) -> None:
    metrics = Metrics()
    route = route_settings(tmp_path)
    correlation = Correlation(route, metrics=RouteMetrics(metrics, route.name))
    no_token = EndpointError("no token: refused", status=None, retriable=False)
    no_token.__cause__ = AuthError("invalid_client", retriable=False)
    for error in (no_token, EndpointError("HTTP 503", status=503, retriable=True)):
        with pytest.raises(EndpointError):
            await correlation.invoke(serving(Endpoint(fail=error)), body_of(1))
    assert metrics.value("bridge_token_failures_total", route=route.name) == 1


class FakeSource:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def ack(self, received: FakeReceived) -> None:
        self.acked.append(received.message_id)

    def nack(self, received: FakeReceived) -> None:
        raise AssertionError(f"{received.message_id} nacked")


class Results:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, dict[str, str], str | None]] = []

    async def publish_all(
        self, messages: Sequence[tuple[bytes, dict[str, str], str | None]]
    ) -> list[BrokerError | None]:
        self.published.extend(messages)
        return [None] * len(messages)


async def test_a_traced_batch_carries_each_events_trace_to_its_result(tmp_path: Path) -> None:
    route = route_settings(tmp_path, client_request_id=True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = RouteMetrics(Metrics(), route.name)
    correlation = Correlation(
        route, metrics=metrics, tracing=RouteTracing(provider.get_tracer("t"), route)
    )
    source, results, endpoint = FakeSource(), Results(), Endpoint()
    processor = BatchProcessor(
        route,
        results=cast(Publisher, results),
        settler=Settler(route.name, cast(Source, source), cast(Publisher, Results()), metrics),
        serving=serving(endpoint),
        limiter=EndpointLimiter("m", FixedLimit(2)),
        gate=RouteGate(failures_to_pause=5, probe_initial_s=0.001, probe_max_s=0.01),
        storm=StormGuard(0, 1.0),
        metrics=metrics,
        stopping=asyncio.Event(),
        correlation=correlation,
    )
    batch = events(3, traced=True)
    await processor.process(batch)

    assert source.acked == [e.received.message_id for e in batch]
    ((_, headers),) = endpoint.calls
    assert headers is not None
    request_trace = headers["traceparent"].split("-")[1]
    for event, (_, properties, _) in zip(batch, results.published, strict=True):
        source_trace = event.received.properties["traceparent"].split("-")[1]
        assert properties["traceparent"].split("-")[1] == source_trace
        assert properties["request_id"] == "req-1"
        assert (
            properties["client_request_id"]
            == orjson.loads(endpoint.calls[0][0])["client_request_id"]
        )
    process = next(s for s in exporter.get_finished_spans() if s.name.startswith("process"))
    assert process.context is not None
    assert f"{process.context.trace_id:032x}" == request_trace
    assert len(process.links) == 3
    assert metrics.served_models.totals() == {"m-1": 3}
