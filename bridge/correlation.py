"""What ties an event to the request that scored it and to its result, for one route.

Around each request: its span and ``traceparent`` header (:mod:`bridge.tracing`, when
tracing is on), a fresh ``client_request_id`` in the body when the route opts in
(``endpoint.client_request_id``: Databricks inference tables record it), and the answer's
``x-request-id``. On each result: ``request_id`` and ``client_request_id``, the same for
the events of one request, and with tracing on the event's own trace context.

With tracing off and no client ids a request passes through untouched and nothing is
done per event: the hot path pays a branch per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager

import orjson

from bridge.config_route import RouteSettings
from bridge.errors import AuthError, EndpointError, SecretError
from bridge.events import Event
from bridge.observe import RouteMetrics
from bridge.redaction import Redactor, scrub
from bridge.serving import Invocation, ServingClient
from bridge.tracing import RouteTracing

# Result properties; request_id is what the endpoint logged the request as (Databricks'
# inference tables: databricks_request_id), client_request_id what the bridge sent.
REQUEST_ID, CLIENT_REQUEST_ID = "request_id", "client_request_id"
# An id is a short token; a longer header value is a peer misbehaving.
_ID_LIMIT = 128
_UNTRACED: AbstractContextManager[object] = contextlib.nullcontext()


class Correlation:
    """Spans, request ids and the properties they leave on results, for one route."""

    def __init__(
        self,
        route: RouteSettings,
        *,
        metrics: RouteMetrics | None = None,
        tracing: RouteTracing | None = None,
        redact: Callable[[str], str] = scrub,
    ) -> None:
        self._client_ids = route.endpoint.client_request_id
        self._metrics = metrics
        self._tracing = tracing
        self._redact = redact

    @classmethod
    def for_route(
        cls, route: RouteSettings, *, metrics: RouteMetrics, redactor: Redactor | None
    ) -> Correlation:
        """The route's correlation, traced when the process has a tracer provider."""
        redact = redactor.redact if redactor is not None else scrub
        tracing = RouteTracing.from_global(route, redact)
        return cls(route, metrics=metrics, tracing=tracing, redact=redact)

    @property
    def traced(self) -> bool:
        return self._tracing is not None

    def batch(self, events: Sequence[Event]) -> AbstractContextManager[object]:
        """The span of a consumed batch for a ``with`` block (nothing when tracing is off)."""
        return _UNTRACED if self._tracing is None else self._tracing.batch(events)

    async def invoke(self, serving: ServingClient, body: bytes) -> Invocation:
        """``serving.invoke(body)`` with what crosses the hop besides the rows."""
        client_id: str | None = None
        if self._client_ids:
            client_id = str(uuid.uuid4())
            body = with_client_request_id(body, client_id)
        try:
            if self._tracing is None:
                invocation = await serving.invoke(body)
            else:
                invocation = await self._traced_invoke(serving, body, client_id)
        except EndpointError as exc:
            # Counted here, where the request is, because the token is fetched inside it.
            if self._metrics is not None and isinstance(exc.__cause__, AuthError | SecretError):
                self._metrics.token_failure()
            raise
        if client_id is not None:
            invocation = dataclasses.replace(invocation, client_request_id=client_id)
        return invocation

    async def _traced_invoke(
        self, serving: ServingClient, body: bytes, client_id: str | None
    ) -> Invocation:
        assert self._tracing is not None
        headers: dict[str, str] = {}
        with self._tracing.request(serving.url, headers, client_id) as span:
            invocation = await serving.invoke(body, headers=headers)
            self._tracing.answered(span, invocation.request_id, invocation.served_model)
        return invocation

    def result_properties(
        self, events: Sequence[Event], invocation: Invocation
    ) -> Iterable[Mapping[str, str] | None]:
        """The properties to add to each event's result, in the order of ``events``."""
        ids: dict[str, str] = {}
        if invocation.request_id:
            # A header the endpoint chose: into every result, so redacted and bounded.
            ids[REQUEST_ID] = self._redact(invocation.request_id[:_ID_LIMIT])
        if invocation.client_request_id is not None:
            ids[CLIENT_REQUEST_ID] = invocation.client_request_id
        if self._tracing is None:
            return itertools.repeat(ids or None, len(events))
        tracing = self._tracing
        return [{**ids, **tracing.result(event)} for event in events]


def with_client_request_id(body: bytes, client_request_id: str) -> bytes:
    """``body``, a JSON object, with ``client_request_id`` as its first field.

    Spliced rather than decoded and encoded again: the rows are encoded once.
    """
    if body[:1] != b"{":
        raise ValueError("a request body is a JSON object")
    rest = body[1:].lstrip()
    field = b'"client_request_id":' + orjson.dumps(client_request_id)
    return b"{" + field + (b"" if rest[:1] == b"}" else b",") + rest
