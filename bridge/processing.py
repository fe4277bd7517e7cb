"""One batch, from request to settled events: score, publish results, then ack.

Every event of a batch ends through :class:`~bridge.settle.Settler` (result then ack,
dead letter then ack, or nack). What a failed request does depends on what it says
(:func:`~bridge.retry.classify`):

* **event** (400, 413, 422, a 200 that cannot be mapped): the batch is bisected so only
  the offending events are rejected; at most log2(batch) extra requests per bad event.
  A batch whose *every* event is rejected waits for the :class:`~bridge.storm.StormGuard`'s
  verdict: poison (dead-lettered) or a storm (the route pauses as for a route error).
* **overload** (429, 503, 504, timeouts) and **transient** (500, 502, connection errors,
  token endpoint unavailable): retried with backoff, ``Retry-After`` pausing the whole
  endpoint; the batch is held, never dead-lettered, and enough failures in a row pause the
  route. Only a batch that keeps failing *while the endpoint answers others* is suspected:
  it is bisected, and a single event still failing alone after ``max_redeliveries`` rounds
  is dead-lettered with the reason.
* **route** (401 after a fresh token, 403, 404, 3xx, other 4xx, refused credentials):
  the route pauses at once and the batch is held until a probe succeeds.

Requests go through the endpoint's shared :class:`~bridge.limiter.EndpointLimiter` and the
route's own ``max_in_flight``. On the way out, a result the broker can never take
dead-letters its event; a result the broker did not confirm leaves its event unacked:
nacked, or on an ordered route sent again in place until the broker takes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from bridge.config_route import RouteSettings
from bridge.correlation import Correlation
from bridge.effectively_once import EffectivelyOnce
from bridge.errors import EndpointError, ShutdownRequested
from bridge.events import Event, result_message
from bridge.formats import build_body, predictions_of
from bridge.gate import ROUTE, STORM, RouteGate
from bridge.limited_call import LimitedCall
from bridge.limiter import EndpointLimiter
from bridge.observe import RouteMetrics
from bridge.publishing import ORDERED_SUBSCRIPTIONS, Rejection, ResultPublisher, Staged
from bridge.pulsar_publish import Publisher
from bridge.redaction import Redactor
from bridge.retry import Failure, RetryPolicy, classify
from bridge.route_schemas import ResultMessage
from bridge.serving import Invocation, ServingClient
from bridge.settle import Settler
from bridge.stopping import sleep_unless_stopping, unless_stopping
from bridge.storm import StormGuard, Verdict

__all__ = ["ORDERED_SUBSCRIPTIONS", "BatchProcessor"]
log = structlog.get_logger("bridge.batch")


class BatchProcessor:
    """Turns batches of events into settled events for one route."""

    def __init__(
        self,
        route: RouteSettings,
        *,
        results: Publisher,
        settler: Settler,
        serving: ServingClient,
        limiter: EndpointLimiter,
        gate: RouteGate,
        storm: StormGuard,
        metrics: RouteMetrics,
        stopping: asyncio.Event | None = None,
        redactor: Redactor | None = None,
        effectively_once: EffectivelyOnce | None = None,
        correlation: Correlation | None = None,
        result_message: ResultMessage = result_message,
    ) -> None:
        self._route = route
        # Trace context and request ids across the hop (bridge.correlation).
        self._correlation = correlation or Correlation.for_route(
            route, metrics=metrics, redactor=redactor
        )
        self._settler = settler
        self._gate = gate
        self._storm = storm
        self._policy = RetryPolicy.from_settings(route.failure)
        self._metrics = metrics
        self._stopping = stopping or asyncio.Event()
        self._request = LimitedCall(
            max_in_flight=route.endpoint.max_in_flight,
            limiter=limiter,
            serving=serving,
            correlation=self._correlation,
            metrics=metrics,
            retry_after_max_s=self._policy.retry_after_max_s,
            stopping=self._stopping,
        )
        self._results = ResultPublisher(
            route,
            results=results,
            settler=settler,
            storm=storm,
            metrics=metrics,
            policy=self._policy,
            stopping=self._stopping,
            correlation=self._correlation,
            redactor=redactor,
            effectively_once=effectively_once,
            result_message=result_message,
        )

    async def process(self, batch: Sequence[Event]) -> None:
        """Settle every event of ``batch``; on a stop or cancellation, nack what is left."""
        try:
            with self._correlation.batch(batch):
                await self._settle_batch(list(batch))
        except ShutdownRequested:
            self._settler.nack(batch)
        except BaseException:
            # Cancelled by a drain, or a bug: either way no event may be stranded unsettled.
            self._settler.nack(batch)
            raise

    def nack(self, events: Sequence[Event]) -> None:
        self._settler.nack(events)

    async def _settle_batch(self, batch: list[Event]) -> None:
        staged: list[Staged] = []  # effectively-once results, confirmed at the end
        scored_at_storm: int | None = None  # the endpoint's successes when it was held
        while True:
            handed = {id(e) for pending, _ in staged for e, _ in pending}
            events = [e for e in batch if not e.settled and id(e) not in handed]
            if not events:
                break
            storms = self._gate.storms
            scoring = _Round(staged)
            try:
                rejected = await self._score(events, scoring, whole=True)
            except _StillStorm:
                continue  # the storm probe was rejected again; the gate times the next one
            if not rejected:
                break
            if self._gate.storms != storms:
                # A storm began while this batch was scored: its rejections may be the
                # storm's, not the events' fault. Score them again (they settle or, if
                # rejected with no storm around, are dead-lettered then).
                continue
            scored_since = scored_at_storm is not None and self._gate.successes > scored_at_storm
            if scoring.scored == 0 and len(rejected) == len(events) and not scored_since:
                verdict = await unless_stopping(
                    self._storm.verdict(storm_in_progress=self._gate.storm), self._stopping
                )
                if verdict is Verdict.STORM:
                    reason = f"poison storm: every event of a batch rejected: {rejected[0][1]}"
                    self._gate.pause(STORM, reason)
                    # Held: scored again once a probe succeeds. Rejected whole again after
                    # the endpoint scored other events, it was poison after all.
                    scored_at_storm = self._gate.successes
                    continue
            for event, reason in rejected:
                await self._settler.dead_letter(event, reason)
            break
        await self._results.confirm(staged)

    # ------------------------------------------------------------------ scoring

    async def _score(
        self, events: list[Event], scoring: _Round, *, whole: bool = False
    ) -> list[Rejection]:
        """Score ``events`` and publish their results; return those the endpoint rejected.
        What the bridge itself cannot send (not encodable, over the payload limit) is
        dead-lettered at once: no storm verdict is needed for the events' own fault."""
        body, unencodable = self._encode(events)
        for event, reason in unencodable:
            await self._settler.dead_letter(event, reason)
        if unencodable:
            good = [e for e in events if not e.settled]
            return await self._score(good, scoring) if good else []
        if body is None:  # every event encodes alone, not together: split them up
            if len(events) == 1:
                await self._settler.dead_letter(events[0], "event cannot be encoded")
                return []
            return await self._bisect(events, scoring)
        limit = self._route.endpoint.max_payload_bytes
        if len(body) > limit:
            if len(events) == 1:
                reason = f"event of {len(body)} bytes exceeds the payload limit {limit}"
                await self._settler.dead_letter(events[0], reason)
                return []
            return await self._bisect(events, scoring)
        started = time.monotonic()
        answer = await self._answer(events, body, scoring, whole=whole, started=started)
        if isinstance(answer, list):
            return answer
        invocation, predictions = answer
        scoring.scored += len(events)
        outcome = await self._results.publish(events, predictions, invocation, scoring.staged)
        self._log_batch(events, started, outcome, None, invocation.served_model)
        return []

    async def _answer(
        self, events: list[Event], body: bytes, scoring: _Round, *, whole: bool, started: float
    ) -> tuple[Invocation, list[Any]] | list[Rejection]:
        """The endpoint's predictions for ``events``, or the events it rejected."""
        rounds = 0
        while True:
            try:
                invocation, probe = await self._call(body, len(events), sample=whole)
                try:
                    predictions = predictions_of(invocation.body, len(events))
                except EndpointError:
                    self._gate_answered(probe)
                    raise
                self._gate.success()  # only a usable answer says the endpoint scores
                return invocation, predictions
            except _Isolated as isolated:
                if len(events) > 1:
                    return await self._bisect(events, scoring)
                rounds += 1
                if rounds > self._route.failure.max_redeliveries:
                    reason = (
                        f"{isolated.error.reason} (failed alone {rounds} rounds while the "
                        "endpoint answered other requests)"
                    )
                    return [(events[0], reason)]
            except EndpointError as exc:  # an event error (_call raises no other)
                self._log_batch(events, started, "rejected", exc)
                if whole and self._gate.storm:
                    raise _StillStorm from exc
                if len(events) > 1:
                    return await self._bisect(events, scoring)
                return [(events[0], exc.reason)]

    def _encode(self, events: list[Event]) -> tuple[bytes | None, list[Rejection]]:
        """The request body, or the events that cannot be encoded and why.

        orjson reads deeper JSON than it writes (and some values cannot be written), so an
        event that decoded can still fail here; it is rejected alone, never loops its batch.
        """
        endpoint = self._route.endpoint
        try:
            rows = [e.row for e in events]
            return orjson.dumps(build_body(rows, endpoint.format, endpoint.params)), []
        except TypeError:  # orjson.JSONEncodeError included
            pass
        bad: list[Rejection] = []
        for event in events:
            try:
                orjson.dumps(event.row)
            except TypeError as exc:
                bad.append((event, f"event cannot be encoded for the request: {exc}"))
        return None, bad

    async def _bisect(self, events: list[Event], scoring: _Round) -> list[Rejection]:
        # Halves in order, one after the other, so results keep the source order.
        middle = len(events) // 2
        first = await self._score(events[:middle], scoring)
        return [*first, *await self._score(events[middle:], scoring)]

    def _gate_answered(self, probe: bool) -> None:
        """The endpoint answered but rejected the events: it is there and reads requests."""
        self._gate.answered()
        if probe and self._gate.paused:
            self._gate.probe_failed()

    async def _call(self, body: bytes, size: int, *, sample: bool) -> tuple[Invocation, bool]:
        """One request, tried until the endpoint answers it; raises an event error or
        _Isolated. Returns the answer and whether it was the paused route's probe.

        Overload and transient failures are retried with backoff; route errors pause the
        route; while it is paused this call waits for its turn to probe. Only transient
        failures (5xx, connection errors) can make a batch suspect: an endpoint shedding
        load (429/503/504/timeouts) says nothing about the events.
        """
        tries = _Tries(self._gate.successes)
        while True:
            probe = await self._gate.admit(self._stopping)
            try:
                invocation = await self._request(body, size, sample=sample and not probe)
            except EndpointError as exc:
                await self._failed(exc, probe, tries)
                continue
            except BaseException:
                if probe:  # a stop, or a bug: the next probe must still go
                    self._gate.probe_failed()
                raise
            return invocation, probe

    async def _failed(self, exc: EndpointError, probe: bool, tries: _Tries) -> None:
        """What one failed request leads to; raises for event errors and _Isolated."""
        failure = classify(exc)
        self._metrics.last_error = exc.reason
        if failure is Failure.EVENT:
            self._gate_answered(probe)
            raise exc
        if probe and self._gate.paused:
            log.info(
                "probe_failed",
                route=self._route.name,
                reason=exc.reason,
                next_probe_s=round(self._gate.probe_failed(), 3),
            )
        if failure is Failure.ROUTE:
            self._gate.pause(ROUTE, exc.reason)
            return
        self._gate.failure(exc.reason)
        tries.failures += 1
        tries.transient += failure is Failure.TRANSIENT
        if tries.transient >= self._policy.attempts:
            if self._gate.successes > tries.others_before:
                raise _Isolated(exc) from exc
            tries.transient, tries.others_before = 0, self._gate.successes
        if not self._gate.paused:
            await self._back_off(exc, tries.failures, failure)

    async def _back_off(self, exc: EndpointError, failures: int, failure: Failure) -> None:
        """Wait before trying again. An endpoint's Retry-After has paused the whole endpoint
        (every request waits at the limiter); any other wait is this request's alone (a
        token endpoint's Retry-After included: it says nothing of the serving endpoint)."""
        if exc.retry_after is not None:
            delay = min(exc.retry_after, self._policy.retry_after_max_s)
        else:
            delay = self._policy.backoff_s(failures)
        self._metrics.retry()
        log.info(
            "request_retry", route=self._route.name, reason=exc.reason, delay_s=round(delay, 3)
        )
        if exc.retry_after is None or failure is not Failure.OVERLOAD:
            await sleep_unless_stopping(delay, self._stopping)

    # ------------------------------------------------------------------ publishing

    def _log_batch(
        self,
        events: list[Event],
        started: float,
        outcome: str,
        exc: EndpointError | None,
        served_model: str | None = None,
    ) -> None:
        log.info(
            "batch",
            route=self._route.name,
            size=len(events),
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            outcome=outcome,
            status=None if exc is None else exc.status,
            reason=None if exc is None else exc.reason,
            served_model=served_model,
        )


class _Tries:
    """One request's failures so far, and the endpoint's successes when they began."""

    __slots__ = ("failures", "others_before", "transient")

    def __init__(self, others_before: int) -> None:
        self.failures = 0
        self.transient = 0
        self.others_before = others_before


class _Round:
    """One scoring round of a batch: how many events were scored, and the effectively-once
    results handed in (confirmed when the batch's other events have ended)."""

    __slots__ = ("scored", "staged")

    def __init__(self, staged: list[Staged]) -> None:
        self.scored = 0
        self.staged = staged


class _Isolated(Exception):
    """A request kept failing (5xx, timeouts) while the endpoint answered other requests."""

    def __init__(self, error: EndpointError) -> None:
        super().__init__(error.reason)
        self.error = error


class _StillStorm(Exception):
    """The probe of a route paused for a poison storm was rejected again."""
