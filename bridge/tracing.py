"""OpenTelemetry spans of a route, and the W3C trace context they read and write.

The spans follow the messaging and HTTP semantic conventions:

* a consumed batch is one ``process`` span (CONSUMER) linking the trace context every event
  carries in its ``traceparent``/``tracestate`` properties, the names the Pulsar Java client
  uses since 4.2 (PIP-446); a batch of one event is its event's child as well;
* each HTTP request is a ``POST`` span (CLIENT) under it, sent on as ``traceparent``;
* each result gets a ``create`` span (PRODUCER), a child of its event's context (of the
  batch's when the event carried none) linking the batch, and carries that span's context
  in its properties. So an event's trace id is on its result, and its trace reaches the
  request that scored it through a link.

Off (the default) nothing here runs: :func:`install` sets no tracer provider,
:meth:`RouteTracing.from_global` answers None, and the processor takes its untraced path.
The Python client has no interceptors, hence the bridge does the propagation itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.errors import EndpointError, ShutdownRequested

if TYPE_CHECKING:
    from bridge.config_bridge import TracingSettings
    from bridge.config_route import RouteSettings
    from bridge.events import Event

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
INSTRUMENTATION = "pulsar-serving-bridge"
# Semantic-convention attribute names (the Python constants live in a private module).
SYSTEM = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION = "messaging.destination.name"
SUBSCRIPTION = "messaging.destination.subscription.name"
BATCH_COUNT = "messaging.batch.message_count"
MESSAGE_ID = "messaging.message.id"
REQUEST_ID_ATTRIBUTE = "http.response.header.x-request-id"
CLIENT_REQUEST_ID_ATTRIBUTE = "databricks.client_request_id"
SERVED_MODEL_ATTRIBUTE = "databricks.served_model"
ROUTE_ATTRIBUTE = "bridge.route"

# Header values recorded on spans are cut here (a peer may send anything).
_HEADER_LIMIT = 256
# Stateless: one for the process.
_PROPAGATOR = TraceContextTextMapPropagator()


@contextlib.contextmanager
def install(settings: TracingSettings) -> Iterator[None]:
    """The process's tracer provider, exporting over OTLP/HTTP, for the ``with`` block;
    spans still queued are flushed on the way out. Tracing off: nothing at all."""
    if not settings.enabled:
        yield
        return
    # Imported here: a daemon with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    # Exports from its own thread, dropping spans (never blocking the loop) when full.
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=10))
    )
    trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        provider.shutdown()


def tracing_installed() -> bool:
    """Whether a real tracer provider is set (ours, or an OpenTelemetry distro's)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def context_of(properties: Mapping[str, str]) -> SpanContext | None:
    """The remote span context a message's properties carry, if a valid one."""
    if TRACEPARENT not in properties:
        return None
    context = _PROPAGATOR.extract(properties)
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


class RouteTracing:
    """The spans of one route's batches, requests and results."""

    def __init__(
        self, tracer: Tracer, route: RouteSettings, redact: Callable[[str], str] = str
    ) -> None:
        self._tracer = tracer
        self._route = route.name
        self._subscription = route.source.subscription
        self._result_topic = route.result.topic
        self._redact = redact
        self._create_name = f"create {self._result_topic}"
        self._create_attributes = {
            SYSTEM: "pulsar",
            OPERATION_TYPE: "create",
            OPERATION_NAME: "create",
            DESTINATION: self._result_topic,
        }
        # Each event's context while its batch is in progress, read once for the batch's
        # link and its result's parent (by id: an event is in one batch at a time).
        self._contexts: dict[int, SpanContext] = {}

    @classmethod
    def from_global(
        cls, route: RouteSettings, redact: Callable[[str], str] = str
    ) -> RouteTracing | None:
        """The route's tracing under the process's tracer provider; None when off."""
        if not tracing_installed():
            return None
        return cls(trace.get_tracer(INSTRUMENTATION), route, redact)

    @contextlib.contextmanager
    def batch(self, events: Sequence[Event]) -> Iterator[Span]:
        """The ``process`` span of a consumed batch, current for the ``with`` block."""
        links: list[Link] = []
        topics: set[str] = set()
        for event in events:
            received = event.received
            topics.add(received.topic)
            linked = context_of(received.properties)
            if linked is not None:
                links.append(Link(linked, {MESSAGE_ID: received.message_id}))
                self._contexts[id(event)] = linked
        attributes: dict[str, str | int] = {
            SYSTEM: "pulsar",
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
            SUBSCRIPTION: self._subscription,
            ROUTE_ATTRIBUTE: self._route,
        }
        # An empty context, not the ambient one: a batch starts its own trace...
        parent = Context()
        if len(events) == 1:
            attributes[MESSAGE_ID] = events[0].received.message_id
            if links:  # ... except a batch of one, which continues its event's
                parent = trace.set_span_in_context(trace.NonRecordingSpan(links[0].context))
        else:
            attributes[BATCH_COUNT] = len(events)
        name = "process"
        if len(topics) == 1:
            (topic,) = topics
            attributes[DESTINATION] = topic
            name = f"process {topic}"
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                # A stop or a drain hands the batch back: an outcome, not a failure.
                span.set_attribute("error.type", type(exc).__name__)
                if not isinstance(exc, ShutdownRequested | asyncio.CancelledError):
                    span.set_status(Status(StatusCode.ERROR, self._redact(str(exc))))
                raise
            finally:
                for event in events:
                    self._contexts.pop(id(event), None)

    @contextlib.contextmanager
    def request(
        self, url: str, headers: dict[str, str], client_request_id: str | None
    ) -> Iterator[Span]:
        """A ``POST`` span for one HTTP request; its context goes into ``headers``.

        An EndpointError leaving the block marks the span failed with the redacted reason
        (the reason may quote the peer: never recorded as a raw exception).
        """
        parts = urlsplit(url)
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "url.full": url,
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
        if client_request_id is not None:
            attributes[CLIENT_REQUEST_ID_ATTRIBUTE] = client_request_id
        with self._tracer.start_as_current_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            _PROPAGATOR.inject(headers)
            try:
                yield span
            except EndpointError as exc:
                if exc.status is not None:
                    span.set_attribute("http.response.status_code", exc.status)
                kind = "timeout" if exc.timeout else type(exc).__name__
                span.set_attribute("error.type", str(exc.status or kind))
                span.set_status(Status(StatusCode.ERROR, self._redact(exc.reason)))
                raise

    def answered(self, span: Span, request_id: str | None, served_model: str | None) -> None:
        """What a 200 said about itself, on its request's span (headers the endpoint chose:
        redacted and bounded before they leave the process)."""
        span.set_attribute("http.response.status_code", 200)
        if request_id is not None:
            span.set_attribute(REQUEST_ID_ATTRIBUTE, [self._redact(request_id[:_HEADER_LIMIT])])
        if served_model is not None:
            span.set_attribute(SERVED_MODEL_ATTRIBUTE, self._redact(served_model[:_HEADER_LIMIT]))

    def result(self, event: Event) -> dict[str, str]:
        """The trace properties of ``event``'s result: a ``create`` span's context, in the
        event's trace (or the current batch's), linking the batch. Called inside the
        ``with`` block of the event's :meth:`batch`."""
        batch = trace.get_current_span().get_span_context()
        # The event's context, or else the batch's (the current one).
        parent_context = self._contexts.get(id(event)) or batch
        parent = trace.set_span_in_context(trace.NonRecordingSpan(parent_context))
        properties: dict[str, str] = {}
        if not parent_context.trace_flags.sampled:
            # Nobody records this trace: the result carries its context on as it is, and
            # the span (some 40 us of CPU) is not made.
            _PROPAGATOR.inject(properties, context=parent)
            return properties
        span = self._tracer.start_span(
            self._create_name,
            context=parent,
            kind=SpanKind.PRODUCER,
            links=[Link(batch)] if batch.is_valid else (),
            attributes=self._create_attributes,
        )
        _PROPAGATOR.inject(properties, context=trace.set_span_in_context(span))
        span.end()
        return properties
