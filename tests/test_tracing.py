"""The spans of a route and the trace context they read and write, with an in-memory
exporter behind a provider of the test's own (the process-wide one is set once, by run)."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import tracing
from bridge.config import load_config
from bridge.config_bridge import TracingSettings
from bridge.config_route import EndpointSettings, RouteSettings
from bridge.errors import EndpointError, ShutdownRequested
from bridge.events import Event
from bridge.pulsar_source import Received
from bridge.tracing import RouteTracing, context_of
from tests.support.harness import Topics, route_config, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


class FakeReceived:
    _ids = itertools.count()

    def __init__(self, properties: dict[str, str], topic: str = "persistent://t/n/events"):
        self.data = b"{}"
        self.key = None
        self.topic = topic
        self.message_id = f"(1,{next(self._ids)},-1,-1)"
        self.properties = properties


def event(
    properties: dict[str, str] | None = None, topic: str = "persistent://t/n/events"
) -> Event:
    return Event(cast(Received, FakeReceived(properties or {}, topic)), {"amount": 1})


def traced(trace_id: str, span_id: str = SPAN_ID, state: str | None = None) -> Event:
    properties = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    if state is not None:
        properties["tracestate"] = state
    return event(properties)


def route_settings(tmp_path: Path) -> RouteSettings:
    directory = write_config(
        tmp_path,
        service_url="pulsar://127.0.0.1:1",
        databricks={"host": "http://127.0.0.1:1", "auth_type": "none"},
        routes={"fraud": route_config(Topics())},
    )
    return load_config(directory).routes[0]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def route_tracing(tmp_path: Path, exporter: InMemorySpanExporter) -> RouteTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hide = lambda text: text.replace("s3cret", "[REDACTED]")  # noqa: E731
    return RouteTracing(provider.get_tracer("test"), route_settings(tmp_path), hide)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name.split(" ")[0]: span for span in exporter.get_finished_spans()}


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def test_a_batch_span_links_every_event_that_carries_a_context(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    events = [traced(TRACE_ID), event(), traced(other, state="vendor=1")]
    with route_tracing.batch(events):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "process persistent://t/n/events"
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is None, "a batch of several events starts its own trace"
    linked = [(f"{link.context.trace_id:032x}", link.attributes) for link in span.links]
    assert linked == [
        (TRACE_ID, {"messaging.message.id": events[0].received.message_id}),
        (other, {"messaging.message.id": events[2].received.message_id}),
    ]
    assert span.links[1].context.trace_state.get("vendor") == "1"
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "pulsar"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.batch.message_count"] == 3
    assert str(attributes["messaging.destination.subscription.name"]).startswith("bridge-")


def test_a_batch_of_one_event_continues_its_trace(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    with route_tracing.batch([traced(TRACE_ID)]):
        pass
    (span,) = exporter.get_finished_spans()
    assert hex_trace(span) == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == SPAN_ID
    assert len(span.links) == 1


def test_events_of_several_topics_name_no_destination(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    with route_tracing.batch(
        [event(topic="persistent://t/n/a"), event(topic="persistent://t/n/b")]
    ):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "process"
    assert "messaging.destination.name" not in (span.attributes or {})


def test_a_request_span_sends_its_context_and_records_the_answer(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    headers: dict[str, str] = {}
    with (
        route_tracing.batch([traced(TRACE_ID), traced(TRACE_ID)]),
        route_tracing.request(
            "https://adb-1.net/serving-endpoints/m/invocations", headers, "c-1"
        ) as span,
    ):
        route_tracing.answered(span, "req-9 s3cret", "m-2")
    spans = by_name(exporter)
    request, batch = spans["POST"], spans["process"]
    assert request.kind is SpanKind.CLIENT
    assert request.parent is not None
    assert batch.context is not None
    assert request.parent.span_id == batch.context.span_id
    assert request.context is not None
    _version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (trace_id, span_id) == (
        f"{request.context.trace_id:032x}",
        f"{request.context.span_id:016x}",
    )
    assert int(flags, 16) & 1, "sampled"
    attributes = dict(request.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["server.address"] == "adb-1.net"
    assert attributes["server.port"] == 443
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.response.header.x-request-id"] == ("req-9 [REDACTED]",)
    assert attributes["databricks.client_request_id"] == "c-1"
    assert attributes["databricks.served_model"] == "m-2"


def test_a_failed_request_is_marked_with_the_redacted_reason_only(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    error = EndpointError("overloaded; token s3cret", status=503, retriable=True)
    with (
        pytest.raises(EndpointError),
        route_tracing.request("http://127.0.0.1:5000/invocations", {}, None),
    ):
        raise error
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "HTTP 503: overloaded; token [REDACTED]"
    assert dict(span.attributes or {})["error.type"] == "503"
    assert dict(span.attributes or {})["server.port"] == 5000
    assert span.events == (), "no exception event: its message quotes the peer"


def test_a_timeout_is_its_error_type(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    error = EndpointError("timed out", status=None, retriable=True, timeout=True)
    with pytest.raises(EndpointError), route_tracing.request("http://h/i", {}, None):
        raise error
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {})["error.type"] == "timeout"


def test_a_result_carries_its_events_trace_and_links_the_batch(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    first, untraced = traced(TRACE_ID, state="vendor=1"), event()
    with route_tracing.batch([first, untraced]) as batch:
        properties = route_tracing.result(first)
        orphan = route_tracing.result(untraced)
    batch_context = batch.get_span_context()
    assert properties["traceparent"].split("-")[1] == TRACE_ID
    assert properties["tracestate"] == "vendor=1"
    assert orphan["traceparent"].split("-")[1] == f"{batch_context.trace_id:032x}"
    creates = [s for s in exporter.get_finished_spans() if s.name.startswith("create ")]
    assert len(creates) == 2
    made = creates[0]
    assert made.kind is SpanKind.PRODUCER
    assert made.parent is not None
    assert f"{made.parent.span_id:016x}" == SPAN_ID
    assert [link.context.span_id for link in made.links] == [batch_context.span_id]
    assert made.context is not None
    assert properties["traceparent"].split("-")[2] == f"{made.context.span_id:016x}"
    assert dict(made.attributes or {})["messaging.operation.type"] == "create"


def test_a_stopped_batch_is_an_outcome_a_bug_is_an_error(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(ShutdownRequested), route_tracing.batch([event()]):
        raise ShutdownRequested
    with pytest.raises(KeyError), route_tracing.batch([event()]):
        raise KeyError("bug")
    stopped, crashed = exporter.get_finished_spans()
    assert stopped.status.status_code is StatusCode.UNSET
    assert dict(stopped.attributes or {})["error.type"] == "ShutdownRequested"
    assert crashed.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"traceparent": "garbage"},
        {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"},  # an all-zero trace id is invalid
        {"tracestate": "vendor=1"},
    ],
)
def test_properties_without_a_valid_traceparent_have_no_context(
    properties: dict[str, str],
) -> None:
    assert context_of(properties) is None


def test_tracing_off_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: object) -> None:
        raise AssertionError("a tracer provider was set with tracing off")

    monkeypatch.setattr(trace, "set_tracer_provider", refuse)
    with tracing.install(TracingSettings()):
        pass


def test_without_a_provider_a_route_has_no_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    assert not tracing.tracing_installed()
    assert RouteTracing.from_global(route_settings(tmp_path)) is None


def test_the_config_reference_shows_the_defaults() -> None:
    root = Path(__file__).resolve().parent.parent
    reference = tomllib.loads((root / "config" / "bridge.toml").read_text())
    assert reference["observe"]["tracing"] == TracingSettings().model_dump()
    route = tomllib.loads((root / "config" / "routes" / "fraud.toml").read_text())
    assert route["endpoint"]["client_request_id"] is False
    assert EndpointSettings.model_fields["client_request_id"].default is False


def test_an_unsampled_events_result_carries_its_context_without_a_span(
    route_tracing: RouteTracing, exporter: InMemorySpanExporter
) -> None:
    quiet = event({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00", "tracestate": "vendor=1"})
    with route_tracing.batch([quiet]):
        properties = route_tracing.result(quiet)
    assert properties == {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00", "tracestate": "vendor=1"}
    assert exporter.get_finished_spans() == (), "an unsampled trace records nothing"
