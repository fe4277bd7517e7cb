"""A batch's predictions become stored results: build, publish, ack; or hand back.

Each result is built as JSON or in the result topic's schema; one that cannot be built
(not encodable, not fitting the schema) is returned as that event's rejection. Results go
to the broker directly, or through the effectively-once line of their source partition.
What the broker stores is acked; what it can never take is dead-lettered; what it did not
confirm is nacked on shared routes and sent again in place on ordered ones (a nacked event
would come back after later events of its key).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from bridge.config_route import RouteSettings
from bridge.correlation import Correlation
from bridge.effectively_once import EffectivelyOnce
from bridge.errors import BrokerError, ResultRejected
from bridge.events import Event, result_message
from bridge.observe import RouteMetrics
from bridge.pulsar_publish import OutgoingMessage, Publisher
from bridge.redaction import Redactor, scrub
from bridge.result_schema import ResultDoesNotFit
from bridge.retry import RetryPolicy
from bridge.route_schemas import ResultMessage
from bridge.serving import Invocation
from bridge.settle import Settler
from bridge.storm import StormGuard

# Subscriptions that deliver each key's events in order to one consumer.
ORDERED_SUBSCRIPTIONS = frozenset({"key_shared", "failover", "exclusive"})
log = structlog.get_logger("bridge.batch")

Rejection = tuple[Event, str]
# Effectively-once results handed in to their lines, with the futures that confirm them.
Staged = tuple[list[tuple[Event, OutgoingMessage]], list["asyncio.Future[BrokerError | None]"]]


class ResultPublisher:
    """Publishes one route's results and settles their events."""

    def __init__(
        self,
        route: RouteSettings,
        *,
        results: Publisher,
        settler: Settler,
        storm: StormGuard,
        metrics: RouteMetrics,
        policy: RetryPolicy,
        stopping: asyncio.Event,
        correlation: Correlation,
        redactor: Redactor | None = None,
        effectively_once: EffectivelyOnce | None = None,
        result_message: ResultMessage = result_message,
    ) -> None:
        self._route = route
        self._results = results
        self._settler = settler
        self._storm = storm
        self._metrics = metrics
        self._policy = policy
        self._stopping = stopping
        self._correlation = correlation
        self._redactor = redactor
        # Effectively-once routes publish through the reorder buffer, with sequence ids.
        self._eo = effectively_once
        # How a result message is built: JSON, or the result topic's schema (route_schemas).
        self._result_message = result_message
        self._ordered = route.source.subscription_type in ORDERED_SUBSCRIPTIONS
        self._versions_seen: set[str] = set()

    async def publish(
        self,
        events: list[Event],
        predictions: list[Any],
        invocation: Invocation,
        staged: list[Staged] | None = None,
    ) -> str:
        """Publish results and ack what the broker stored; the outcome for the log line.

        An event whose result cannot be built is dead-lettered at once (its own fault). On
        an effectively-once route, with ``staged``, results are only handed in to their
        partition's line and the batch confirms them with :meth:`confirm` once its other
        events have ended: a result waits in the line for every earlier event, the batch's
        own rejected ones included, so waiting here could wait for itself."""
        route = self._route
        # A header the endpoint chose: it goes into every result and the status output.
        served_model = invocation.served_model
        if served_model is not None:
            served_model = (
                self._redactor.redact(served_model) if self._redactor else scrub(served_model)
            )
        self._note_served_model(served_model)
        self._metrics.scored(served_model, len(events))
        pending: list[tuple[Event, OutgoingMessage]] = []
        rejected: list[Rejection] = []
        extras = self._correlation.result_properties(events, invocation)
        for event, prediction, extra in zip(events, predictions, extras, strict=True):
            try:
                data, properties = self._result_message(
                    event,
                    prediction,
                    route=route.name,
                    passthrough=route.result.passthrough,
                    served_model=served_model,
                    extra=extra,
                )
            except (TypeError, ResultDoesNotFit) as exc:  # orjson.JSONEncodeError included
                rejected.append((event, f"result cannot be encoded: {exc}"))
                continue
            pending.append((event, (data, properties, event.received.key)))
        for event, reason in rejected:
            await self._settler.dead_letter(event, reason)
        if not pending:
            return "ok"
        self._storm.scored()
        if self._eo is not None and staged is not None:
            staged.append((pending, self._eo.hand_in([(e.received, m) for e, m in pending])))
            return "handed_in"
        return await self._publish_pending(pending)

    async def confirm(self, staged: list[Staged]) -> None:
        """Effectively-once: wait until the handed-in results are stored, then ack; what
        the broker did not confirm is sent again in place (see :meth:`publish`)."""
        for pending, futures in staged:
            outcomes = list(await asyncio.gather(*futures))
            unconfirmed = await self._settle_outcomes(pending, outcomes)
            if unconfirmed:
                await self._publish_pending(unconfirmed)
        staged.clear()

    async def _publish_pending(self, pending: list[tuple[Event, OutgoingMessage]]) -> str:

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
        self._settler.nack([event for event, _ in pending])
        return "handed_back"

    def _note_served_model(self, served_model: str | None) -> None:
        """One log line when a version is first seen (not at every flip of a traffic
        split: the share per version is in the metrics and the status output)."""
        if not served_model or served_model == self._metrics.served_model:
            return
        if self._metrics.served_model is not None and served_model not in self._versions_seen:
            log.info(
                "served_model_changed",
                route=self._route.name,
                previous=self._metrics.served_model,
                current=served_model,
            )
        self._versions_seen.add(served_model)
        self._metrics.served_model = served_model

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
        if self._eo is not None:
            outcomes = await self._eo.publish_all([(e.received, m) for e, m in pending])
        else:
            outcomes = await self._results.publish_all([message for _, message in pending])
        return await self._settle_outcomes(pending, outcomes)

    async def _settle_outcomes(
        self, pending: list[tuple[Event, OutgoingMessage]], outcomes: list[BrokerError | None]
    ) -> list[tuple[Event, OutgoingMessage]]:
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
        self._settler.stored(published)
        for event, rejection in rejected:
            await self._settler.dead_letter(event, f"result not publishable: {rejection}")
        return unconfirmed


class _Unconfirmed(Exception):
    """An ordered route's results the broker did not confirm: sent again in place."""
