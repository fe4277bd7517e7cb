"""One batch, from request to settled events: score, publish results, then ack.

Every event of a batch ends in exactly one of three ways, and only these:

* its result is published and confirmed, then the event is acked;
* it is dead-lettered (published to the DLQ with an ``error`` reason), then acked;
* it is nacked, so Pulsar redelivers it later.

Failures sort as follows. A retriable failure (429, 5xx, connection errors) is retried in
the bridge a few times (:class:`~bridge.retry.RetryPolicy`); if the circuit opens
meanwhile the batch probes until the endpoint is back instead of spending redeliveries.
When retries are spent the events are handed back: nacked, or dead-lettered once they
have been redelivered ``max_redeliveries`` times. An *event* error (400, 413, 422, or a
200 whose predictions do not line up) is bisected so only the offending events are
dead-lettered; that costs at most log2(batch) extra requests per bad event. Any other
permanent status (401 after a fresh token, 403, 404) says the route is broken, not the
events: they are handed back like a transient failure, so nothing is lost to a
misconfiguration and the reason shows in the logs and, eventually, in the DLQ.

On the way out, a result the broker can never take (larger than its message size limit)
dead-letters its event; a result the broker did not confirm leaves its event unacked:
nacked, or on an ordered route sent again in place until the broker takes it (the
broker's absence never dead-letters an event).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson
import structlog

from bridge.config import RouteSettings
from bridge.errors import BrokerError, EndpointError, ResponseShapeError, ResultRejected
from bridge.events import Event, dead_letter_message, result_message
from bridge.formats import build_body, predictions_of
from bridge.observe import RouteMetrics
from bridge.pulsar_io import OutgoingMessage, Publisher, Received, Source
from bridge.retry import Circuit, RetryPolicy
from bridge.serving import Invocation, ServingClient

EVENT_ERROR_STATUSES = frozenset({400, 413, 422})
# Subscriptions that deliver each key's events in order to one consumer.
ORDERED_SUBSCRIPTIONS = frozenset({"key_shared", "failover", "exclusive"})
log = structlog.get_logger("bridge.batch")


class BatchProcessor:
    """Turns batches of events into settled events for one route."""

    def __init__(
        self,
        route: RouteSettings,
        *,
        source: Source,
        results: Publisher,
        dead_letters: Publisher,
        serving: ServingClient,
        circuit: Circuit,
        metrics: RouteMetrics,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._route = route
        self._source = source
        self._results = results
        self._dead_letters = dead_letters
        self._serving = serving
        self._circuit = circuit
        # Requests at the endpoint at once: held for the request only (retries included),
        # not while results are published.
        self._requests = asyncio.Semaphore(route.endpoint.max_in_flight)
        self._policy = RetryPolicy.from_settings(route.failure)
        self._metrics = metrics
        self._stopping = stopping or asyncio.Event()
        self._max_redeliveries = route.failure.max_redeliveries
        self._ordered = route.source.subscription_type in ORDERED_SUBSCRIPTIONS

    async def process(self, batch: Sequence[Event]) -> None:
        """Settle every event of ``batch``; on cancellation, nack whatever is unsettled."""
        try:
            if self._ordered:
                await self._score_in_order(list(batch))
            else:
                await self._score(list(batch))
        except BaseException:
            # Cancelled by a drain, or a bug: either way no event may be stranded unsettled.
            self.nack([e for e in batch if not e.settled])
            raise

    async def _score_in_order(self, batch: list[Event]) -> None:
        """Ordered routes hold a failed batch and retry it in place instead of nacking.

        A nacked event would be redelivered after later events of its key had already been
        scored; holding keeps per-key order. Each hold round stands for one redelivery, so
        after ``max_redeliveries`` rounds the events are dead-lettered as on other routes.
        """

        async def attempt() -> None:
            await self._score([e for e in batch if not e.settled])

        try:
            await self._policy.persist(
                attempt,
                retry=lambda exc: isinstance(exc, _Held),
                cap_s=self._policy.max_s,
                stopping=self._stopping,
                max_attempts=self._max_redeliveries + 1,
                wait_first=False,  # the first try is the batch's normal one
            )
        except _Held as held:
            pending = [e for e in batch if not e.settled]
            if self._stopping.is_set():
                self.nack(pending)
                return
            reason = f"{held.reason} (after {self._max_redeliveries} in-place retries)"
            for event in pending:
                await self._dead_letter_and_ack(event, reason)

    # ------------------------------------------------------------------ scoring

    async def _score(self, events: list[Event]) -> None:
        body = orjson.dumps(
            build_body(
                [e.row for e in events], self._route.endpoint.format, self._route.endpoint.params
            )
        )
        if len(body) > self._route.endpoint.max_payload_bytes:
            if len(events) == 1:
                limit = self._route.endpoint.max_payload_bytes
                reason = f"event of {len(body)} bytes exceeds the payload limit {limit}"
                await self._dead_letter_and_ack(events[0], reason)
                return
            await self._bisect(events)
            return
        started = time.monotonic()
        try:
            async with self._requests:
                invocation = await self._invoke(body)
            predictions = predictions_of(invocation.body, len(events))
        except ResponseShapeError as exc:
            await self._event_error(events, exc)
            return
        except EndpointError as exc:
            self._metrics.last_error = exc.reason
            if exc.status in EVENT_ERROR_STATUSES:
                await self._event_error(events, exc)
            else:
                self._log_batch(events, started, "held" if self._ordered else "handed_back", exc)
                if self._ordered:
                    raise _Held(exc.reason) from exc
                await self.give_back(events, exc)
            return
        outcome = await self._publish(events, predictions, invocation)
        self._log_batch(events, started, outcome, None, invocation.served_model)

    async def _event_error(self, events: list[Event], exc: EndpointError) -> None:
        if len(events) > 1:
            await self._bisect(events)
            return
        log.warning(
            "event_rejected",
            route=self._route.name,
            reason=exc.reason,
            source_message_id=events[0].received.message_id,
        )
        await self._dead_letter_and_ack(events[0], exc.reason)

    async def _bisect(self, events: list[Event]) -> None:
        # Halves in order, one after the other, so results keep the source order.
        middle = len(events) // 2
        await self._score(events[:middle])
        await self._score(events[middle:])

    async def _invoke(self, body: bytes) -> Invocation:
        """Call the endpoint with retries; while the circuit is open, probe instead."""
        if self._circuit.is_open:
            return await self._probe(body)
        try:
            invocation = await self._policy.call(
                partial(self._request, body), on_retry=self._on_retry
            )
        except EndpointError as exc:
            if exc.retriable and self._circuit.is_open:
                return await self._probe(body)
            raise
        return invocation

    async def _request(self, body: bytes) -> Invocation:
        try:
            invocation = await self._serving.invoke(body)
        except EndpointError as exc:
            self._metrics.request(exc.status)
            if exc.retriable or exc.status not in EVENT_ERROR_STATUSES:
                self._circuit.record_failure()
            raise
        self._metrics.request(200, invocation.elapsed_s)
        self._circuit.record_success()
        return invocation

    async def _probe(self, body: bytes) -> Invocation:
        """One batch at a time re-tries the open circuit with backoff until it answers."""
        async with self._circuit.probe_lock:
            if self._circuit.is_open:
                return await self._policy.probe(
                    partial(self._request, body),
                    cap_s=self._route.failure.circuit_probe_max_s,
                    stopping=self._stopping,
                )
        # Another batch's probe closed the circuit while this one waited for the lock.
        return await self._policy.call(partial(self._request, body), on_retry=self._on_retry)

    def _on_retry(self, exc: EndpointError, delay: float) -> None:
        self._metrics.retry()
        log.info(
            "request_retry", route=self._route.name, reason=exc.reason, delay_s=round(delay, 3)
        )

    # ------------------------------------------------------------------ settling

    async def _publish(
        self, events: list[Event], predictions: list[Any], invocation: Invocation
    ) -> str:
        """Publish results, ack what the broker stored; the batch's outcome for the log."""
        route = self._route
        if invocation.served_model and invocation.served_model != self._metrics.served_model:
            if self._metrics.served_model is not None:
                log.info(
                    "served_model_changed",
                    route=route.name,
                    previous=self._metrics.served_model,
                    current=invocation.served_model,
                )
            self._metrics.served_model = invocation.served_model
        pending: list[tuple[Event, OutgoingMessage]] = []
        for event, prediction in zip(events, predictions, strict=True):
            data, properties = result_message(
                event,
                prediction,
                route=route.name,
                passthrough=route.result.passthrough,
                served_model=invocation.served_model,
            )
            pending.append((event, (data, properties, event.received.key)))

        async def attempt() -> None:
            nonlocal pending
            pending = await self._publish_once(pending)
            if pending and self._ordered:
                raise _Unconfirmed(self._metrics.last_error or "publish not confirmed")

        # Results the broker did not confirm leave their events unacked. Other routes hand
        # them back to Pulsar; an ordered route sends them again in place, for as long as it
        # takes (a nacked event would come back after later ones of its key, and the broker
        # being away is no reason to dead-letter anything). Only a shutdown stops that.
        with contextlib.suppress(_Unconfirmed):
            await self._policy.persist(
                attempt,
                retry=self._publish_retry,
                cap_s=self._policy.max_s,
                stopping=self._stopping,
                max_attempts=None,
                wait_first=False,
            )
        if not pending:
            return "ok"
        self.nack([event for event, _ in pending])
        return "handed_back"

    def _publish_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, _Unconfirmed):
            return False
        log.warning("publish_retry", route=self._route.name, reason=str(exc))
        return True

    async def _publish_once(
        self, pending: list[tuple[Event, OutgoingMessage]]
    ) -> list[tuple[Event, OutgoingMessage]]:
        """Publish; ack what the broker stored, dead-letter what it can never take, and
        return the rest."""
        outcomes = await self._results.publish_all([message for _, message in pending])
        published, unconfirmed = [], []
        rejected: list[tuple[Event, ResultRejected]] = []
        for (event, message), error in zip(pending, outcomes, strict=True):
            if error is None:
                published.append(event)
            elif isinstance(error, ResultRejected):
                rejected.append((event, error))
            else:
                self._metrics.last_error = str(error)
                unconfirmed.append((event, message))
        self._ack(published)
        self._metrics.published(len(published))
        for event, rejection in rejected:
            await self._dead_letter_and_ack(event, f"result not publishable: {rejection}")
        return unconfirmed

    def _ack(self, events: list[Event]) -> None:
        for event in events:
            event.settled = True
            self._source.ack(event.received)

    def nack(self, events: Sequence[Event]) -> None:
        """Hand events back to Pulsar for redelivery."""
        for event in events:
            event.settled = True
            self._source.nack(event.received)
        self._metrics.nack(len(events))

    async def give_back(self, events: Sequence[Event], exc: EndpointError) -> None:
        """Nack events for redelivery; those out of redeliveries go to the DLQ instead."""
        limit = self._max_redeliveries
        exhausted = [e for e in events if e.received.redelivery_count >= limit]
        self.nack([e for e in events if e.received.redelivery_count < limit])
        reason = f"{exc.reason} (after {limit} redeliveries)"
        for event in exhausted:
            await self._dead_letter_and_ack(event, reason)

    async def _dead_letter_and_ack(self, event: Event, reason: str) -> None:
        event.settled = True
        try:
            await self.dead_letter(event.received, reason)
        except BrokerError as exc:
            log.error("dead_letter_failed", route=self._route.name, reason=str(exc))
            self._source.nack(event.received)
            return
        self._ack([event])

    async def dead_letter(self, received: Received, reason: str) -> None:
        """Publish the original bytes to the DLQ with the reason; raises BrokerError."""
        await self._dead_letters.publish(
            received.data,
            dead_letter_message(received, route=self._route.name, reason=reason),
            received.key,
        )
        self._metrics.dead_letter()

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


class _Unconfirmed(Exception):
    """An ordered route's results the broker did not confirm: sent again in place."""


class _Held(Exception):
    """An ordered route's batch failed in a way worth retrying in place."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
