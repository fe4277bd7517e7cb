"""Logs and metrics: structlog configuration and the Prometheus metrics of every route.

Logs are JSON lines on stdout (journald-friendly) or a console rendering at a terminal.
Every value of every line (stdlib records and tracebacks included) passes the process's
:class:`~bridge.redaction.Redactor` before rendering, as a second line of defence behind
:class:`~bridge.secrets.Secret`. Metrics live in a registry owned by the daemon (no
module-level collectors), labelled by route.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.redaction import REDACTED, Redactor, scrub
from bridge.rollout import UNNAMED, VersionShares

_SENSITIVE_KEYS = re.compile(r"(token|secret|password|authorization|credential)", re.I)
_NOT_SENSITIVE = frozenset({"token_refreshes"})
# Written by the processors before redaction, or structlog's own bookkeeping.
_OWN_KEYS = frozenset({"timestamp", "level", "_record", "_from_structlog"})
# Made of lines: newlines stay (the JSON renderer escapes them anyway).
_MULTILINE_KEYS = frozenset({"exception", "stack"})

Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]


class _Redact:
    """The structlog processor that puts every value of a log line through the redactor.

    Keys that name a credential are blanked whatever their value; every other string,
    nested ones included, goes through :meth:`~bridge.redaction.Redactor.redact`; values
    of other types that are not plain JSON are rendered with ``repr`` first, as the
    renderers would, so they cannot slip past.
    """

    def __init__(self, redactor: Redactor | None) -> None:
        self._redact = redactor.redact if redactor is not None else scrub
        # Keys come from the code, a few dozen of them: each is judged once.
        self._key_kind: dict[str, int] = {}

    def __call__(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            kind = self._key_kind.get(key)
            if kind is None:
                kind = self._key_kind[key] = _kind_of(key)
            if kind == _OWN or value is None or isinstance(value, _PLAIN):
                continue
            if kind == _SENSITIVE:
                event_dict[key] = REDACTED
            elif isinstance(value, str):
                event_dict[key] = self._redact(value, multiline=kind == _MULTILINE)
            else:
                event_dict[key] = self._nested(value)
        return event_dict

    def _nested(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redact(value)
        if value is None or isinstance(value, _PLAIN):
            return value
        if isinstance(value, list | tuple | set | frozenset):
            return [self._nested(item) for item in value]
        if isinstance(value, dict):
            return {self._redact(str(k)): self._nested(v) for k, v in value.items()}
        return self._redact(repr(value))


_OWN, _SENSITIVE, _MULTILINE, _ONE_LINE = range(4)
_PLAIN = (bool, int, float)


def _kind_of(key: str) -> int:
    if key in _OWN_KEYS:
        return _OWN
    if _SENSITIVE_KEYS.search(key) and key not in _NOT_SENSITIVE:
        return _SENSITIVE
    return _MULTILINE if key in _MULTILINE_KEYS else _ONE_LINE


def log_pipeline(
    fmt: Literal["json", "console"], redactor: Redactor | None = None
) -> tuple[list[Processor], Processor]:
    """The processors every log line passes (structlog's and stdlib records alike), and
    the renderer. Exceptions are formatted before redaction, so a traceback's text is
    redacted too (and a console renderer never prints local variables)."""
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _Redact(redactor),
    ]
    return shared, renderer


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    redactor: Redactor | None = None,
) -> None:
    """Configure structlog (and stdlib logging, for libraries that use it) once.

    ``redactor`` is the process's one :class:`~bridge.redaction.Redactor`, which knows the
    secrets and tokens by value; without it only credential shapes are hidden.
    """
    # Line-buffered even into a pipe: journald and supervisors should see each line as it
    # happens, and a crash must not swallow the last buffered lines.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared, renderer = log_pipeline(fmt, redactor)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # Python warnings would go to stderr as they are; as log records they are redacted.
    logging.captureWarnings(True)


class Metrics:
    """Every Prometheus series the daemon exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("bridge_events_in", "Events consumed", ["route"], registry=r)
        self.results_out = Counter(
            "bridge_results_out", "Results published and acked", ["route"], registry=r
        )
        self.dead_lettered = Counter(
            "bridge_dead_lettered", "Events sent to the dead-letter topic", ["route"], registry=r
        )
        self.nacked = Counter(
            "bridge_nacked", "Events handed back to Pulsar for redelivery", ["route"], registry=r
        )
        self.requests = Counter(
            "bridge_requests", "Endpoint requests by HTTP status", ["route", "status"], registry=r
        )
        self.retries = Counter("bridge_retries", "In-bridge request retries", ["route"], registry=r)
        self.request_seconds = Histogram(
            "bridge_request_seconds",
            "Endpoint request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=r,
        )
        self.batch_events = Histogram(
            "bridge_batch_events",
            "Events per request",
            ["route"],
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.in_flight = Gauge("bridge_in_flight", "Requests outstanding", ["route"], registry=r)
        self.route_paused = Gauge(
            "bridge_route_paused",
            "1 while the route is paused, by why: down, route (error), storm",
            ["route", "kind"],
            registry=r,
        )
        self.route_pauses = Counter(
            "bridge_route_pauses", "Times the route paused, by why", ["route", "kind"], registry=r
        )
        self.already_stored = Counter(
            "bridge_already_stored",
            "Effectively-once: redelivered events acked because their result was stored",
            ["route"],
            registry=r,
        )
        self.request_queue_seconds = Histogram(
            "bridge_request_queue_seconds",
            "Time a request waited for the endpoint's limits (slots, Retry-After, rates)",
            ["route"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.endpoint_limit = Gauge(
            "bridge_endpoint_concurrency_limit",
            "Requests the endpoint may have at once now (adaptive limit)",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_in_flight = Gauge(
            "bridge_endpoint_in_flight", "Requests at the endpoint now", ["endpoint"], registry=r
        )
        self.endpoint_pauses = Counter(
            "bridge_endpoint_pauses",
            "Retry-After pauses of every request to the endpoint",
            ["endpoint"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "bridge_token_refreshes", "OAuth tokens fetched", ["workspace"], registry=r
        )
        self.token_failures = Counter(
            "bridge_token_failures",
            "Requests that got no token (identity provider refused, failed or unreachable)",
            ["route"],
            registry=r,
        )
        self.scored_events = Counter(
            "bridge_scored_events",
            "Events the endpoint answered, by the served model (version) that scored them",
            ["route", "served_model"],
            registry=r,
        )

    def forget_route(self, route: str) -> None:
        """Drop every series labelled with ``route`` (a route removed by a reload)."""
        for collector in list(self.__dict__.values()):
            names = getattr(collector, "_labelnames", ())
            if "route" not in names:
                continue
            seen: set[tuple[str, ...]] = set()
            for family in collector.collect():
                for sample in family.samples:
                    if sample.labels.get("route") == route:
                        values = tuple(sample.labels.get(n, "") for n in names)
                        if values not in seen:
                            seen.add(values)
                            collector.remove(*values)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a series (for status output and tests)."""
        sample = self.registry.get_sample_value(name, labels)
        return 0.0 if sample is None else sample


class RouteMetrics:
    """One route's view of :class:`Metrics`: label children bound once, plus plain counts.

    The plain counts feed status output and the shutdown summary without reading
    Prometheus internals; each method updates both so they cannot disagree.
    """

    def __init__(self, metrics: Metrics, route: str) -> None:
        self._metrics = metrics
        self.route = route
        self._events_in = metrics.events_in.labels(route)
        self._results_out = metrics.results_out.labels(route)
        self._dead_lettered = metrics.dead_lettered.labels(route)
        self._nacked = metrics.nacked.labels(route)
        self._retries = metrics.retries.labels(route)
        self._latency = metrics.request_seconds.labels(route)
        self._batch = metrics.batch_events.labels(route)
        self.in_flight = metrics.in_flight.labels(route)
        self._queue = metrics.request_queue_seconds.labels(route)
        self.events_in = 0
        self.results_out = 0
        self.dead_lettered = 0
        self.nacked = 0
        self.requests = 0
        self.retries = 0
        self.last_error: str | None = None
        self.served_model: str | None = None
        self.served_models = VersionShares()

    def consumed(self, n: int = 1) -> None:
        self.events_in += n
        self._events_in.inc(n)

    def published(self, n: int) -> None:
        self.results_out += n
        self._results_out.inc(n)

    def dead_letter(self, n: int = 1) -> None:
        self.dead_lettered += n
        self._dead_lettered.inc(n)

    def nack(self, n: int) -> None:
        self.nacked += n
        self._nacked.inc(n)

    def retry(self) -> None:
        self.retries += 1
        self._retries.inc()

    def request(self, status: int | None, latency_s: float | None = None) -> None:
        self.requests += 1
        self._metrics.requests.labels(self.route, str(status or "error")).inc()
        if latency_s is not None:
            self._latency.observe(latency_s)

    def already_stored(self, n: int = 1) -> None:
        """Effectively-once: a redelivered event whose result the broker already has."""
        self._metrics.already_stored.labels(self.route).inc(n)

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def paused(self, kind: str | None, previous: str | None) -> None:
        """The route paused (``kind``) or resumed (None)."""
        if previous is not None:
            self._metrics.route_paused.labels(self.route, previous).set(0)
        if kind is not None:
            self._metrics.route_paused.labels(self.route, kind).set(1)
            self._metrics.route_pauses.labels(self.route, kind).inc()

    def batch(self, size: int) -> None:
        self._batch.observe(size)

    def scored(self, served_model: str | None, n: int) -> None:
        """``n`` events were scored by ``served_model`` (one answer)."""
        self.served_models.add(served_model, n)
        self._metrics.scored_events.labels(self.route, served_model or UNNAMED).inc(n)

    def token_failure(self) -> None:
        self._metrics.token_failures.labels(self.route).inc()

    def summary(self) -> dict[str, int]:
        return {
            "events_in": self.events_in,
            "results_out": self.results_out,
            "dead_lettered": self.dead_lettered,
            "nacked": self.nacked,
            "requests": self.requests,
            "retries": self.retries,
        }
