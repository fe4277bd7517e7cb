"""One route: source -> batcher -> (bounded) in-flight batches -> results, acks after publish.

The intake loop pulls messages, decodes them and feeds the :class:`~bridge.batching.Batcher`.
At most ``max_in_flight`` requests are at the endpoint at once; a batch publishing its
results no longer holds one, so by Little's law the endpoint's latency alone sets the
rate. A full batch waits for one of ``2 * max_in_flight`` batch slots, so a slow endpoint
slows consumption instead of filling memory; while the endpoint circuit is open, intake
pauses. Messages that are not JSON objects go straight to the dead-letter topic. On stop,
intake ends, the open batch is dispatched, in-flight batches get ``grace`` seconds, and
the rest are nacked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from bridge import eo_intake
from bridge.batching import Lanes
from bridge.config_route import RouteSettings
from bridge.effectively_once import EffectivelyOnce
from bridge.errors import BrokerError, ShutdownRequested
from bridge.events import BadEvent, Event
from bridge.gate import ROUTE, Pause, RouteGate
from bridge.limiter import EndpointLimiter
from bridge.observe import Metrics, RouteMetrics
from bridge.processing import ORDERED_SUBSCRIPTIONS, BatchProcessor
from bridge.pulsar_io import PulsarConnection
from bridge.pulsar_publish import Publisher
from bridge.pulsar_source import Received, Source
from bridge.redaction import Redactor
from bridge.route_schemas import RouteSchemas, SchemaUnavailable
from bridge.serving import ServingClient
from bridge.settle import Settler
from bridge.stopping import unless_stopping
from bridge.storm import StormGuard

log = structlog.get_logger("bridge.route")


class Route:
    """A running route. ``open`` subscribes; ``run`` relays until ``stop``; ``close`` drains."""

    def __init__(
        self,
        settings: RouteSettings,
        serving: ServingClient,
        metrics: Metrics,
        *,
        limiter: EndpointLimiter,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], Awaitable[None]] | None = None,
        paused_because: str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._serving = serving
        self.metrics = RouteMetrics(metrics, settings.name)
        self._clock = clock
        self._on_close = on_close
        self._stopping = asyncio.Event()
        # Batches in progress: as many again may be waiting for a request or publishing
        # results while max_in_flight are at the endpoint (BatchProcessor bounds those).
        self._slots = asyncio.Semaphore(self.max_batches)
        self._tasks: set[asyncio.Future[None]] = set()
        self._lane_tasks: dict[int, asyncio.Future[None]] = {}
        # Key lanes keep each key's batches one after the other. An effectively-once route
        # needs none: its partition lines store results in source order whatever order the
        # batches finish in, and lanes there could wait on each other (a batch's results
        # wait for earlier events that a full lane would not let through).
        self._ordered = (
            settings.source.subscription_type in ORDERED_SUBSCRIPTIONS
            and not settings.effectively_once
        )
        self._limiter = limiter
        failure = settings.failure
        self._last_pause: Pause | None = None
        self._gate = RouteGate(
            failures_to_pause=failure.circuit_failures,
            probe_initial_s=failure.backoff_initial_ms / 1000,
            probe_max_s=failure.circuit_probe_max_s,
            clock=clock,
            on_change=self._gate_changed,
        )
        if paused_because is not None:
            # Known broken at start (the endpoint is missing): probe before taking events.
            self._gate.pause(ROUTE, paused_because)
        # A storm needs that many undecided batches at once; no more can be in progress.
        self._storm = StormGuard(
            min(failure.poison_storm_batches, self.max_batches), failure.poison_storm_window_s
        )
        self._redactor = redactor
        self._settler: Settler | None = None
        self._schemas = RouteSchemas()  # typed topics (bridge.route_schemas); JSON until open
        self._eo: EffectivelyOnce | None = None
        self._source: Source | None = None
        self._publishers: list[Publisher] = []
        self._processor: BatchProcessor | None = None
        self.subscribed = False

    @property
    def state(self) -> str:
        if self._stopping.is_set():
            return "draining"
        if not self.subscribed:
            return "starting"
        return "paused" if self._gate.paused else "running"

    @property
    def limiter(self) -> EndpointLimiter:
        """The endpoint's limiter this route shares with the others calling it."""
        return self._limiter

    @property
    def pause(self) -> Pause | None:
        """Why the route is paused, if it is."""
        return self._gate.pause_state

    @property
    def connected(self) -> bool:
        """Whether the consumer has a live connection to the broker."""
        return self._source is not None and self._source.is_connected()

    @property
    def max_batches(self) -> int:
        """Batches in progress at most (memory and unacked events are bounded by it)."""
        return 2 * self.settings.endpoint.max_in_flight

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def open(self, pulsar: PulsarConnection) -> None:
        """Create producers first, then subscribe: nothing is consumed that cannot be settled."""
        s = self.settings
        max_pending = max(1000, self.max_batches * s.batch.max_events)
        self._schemas = await RouteSchemas.open(s, pulsar)
        result_schema = self._schemas.result_schema
        results = await pulsar.publisher(
            s.result.topic, max_pending=max_pending, schema=result_schema
        )
        self._publishers.append(results)
        if s.effectively_once:
            self._eo = eo_intake.open_lines(
                pulsar, s, results, max_pending=max_pending, schema=result_schema
            )
        dead_letters = await pulsar.publisher(s.dead_letter_topic)
        self._publishers.append(dead_letters)
        self._source = await pulsar.subscribe(s.source, nack_delay_ms=s.failure.nack_delay_ms)
        self._settler = Settler(
            self.name,
            self._source,
            dead_letters,
            self.metrics,
            self._redactor,
            on_end=None if self._eo is None else self._eo_ended,
            persist_dead_letters=self._eo is not None,
        )
        self._processor = BatchProcessor(
            s,
            results=results,
            settler=self._settler,
            serving=self._serving,
            limiter=self._limiter,
            gate=self._gate,
            storm=self._storm,
            metrics=self.metrics,
            stopping=self._stopping,
            redactor=self._redactor,
            effectively_once=self._eo,
            result_message=self._schemas.result_message,
        )
        self.subscribed = True
        log.info("route_subscribed", route=self.name, source=self._source.description)

    def _opened(self) -> tuple[Source, BatchProcessor]:
        if self._source is None or self._processor is None:
            raise RuntimeError(f"route {self.name} used before open()")
        return self._source, self._processor

    def stop(self) -> None:
        """Stop intake; ``run`` returns once the open batch is dispatched."""
        self._stopping.set()

    async def run(self) -> None:
        """Relay until :meth:`stop`. Raises BrokerError only for failures that cannot heal."""
        source, _ = self._opened()
        s = self.settings.batch
        lanes: Lanes[Event] = Lanes(
            self.settings.endpoint.max_in_flight if self._ordered else 1,
            max_items=s.max_events,
            max_bytes=s.max_bytes,
            linger_s=s.linger_ms / 1000,
            clock=self._clock,
        )
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        receiving: asyncio.Future[Any] | None = None
        # At most one batch's worth per turn, so linger deadlines and dispatch stay timely.
        intake_burst = s.max_events
        try:
            while not self._stopping.is_set():
                if self._gate.paused and not await self._may_take_events():
                    continue
                if receiving is None:
                    receiving = asyncio.ensure_future(source.receive())
                deadline = lanes.deadline
                timeout = None if deadline is None else max(0.0, deadline - self._clock())
                # Waiting on the receive future without cancelling it on timeout: a
                # cancelled receive would drop a message the client already took.
                done, _ = await asyncio.wait(
                    {receiving, stop_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if receiving in done:
                    received, receiving = receiving.result(), None
                    await self._take(received, source, lanes, intake_burst)
                for lane, batch in lanes.due():
                    await self._dispatch(lane, batch)
            # Stopping: the open batches never reached the endpoint; Pulsar redelivers them.
            for _, batch in lanes.flush():
                self._processor_nack(batch)
        finally:
            stop_wait.cancel()
            if receiving is not None:
                await self._abandon(receiving)

    async def _take(
        self, received: Received, source: Source, lanes: Lanes[Event], burst: int
    ) -> None:
        """Take ``received`` and whatever else has already arrived, in the same turn."""
        messages = [received, *source.receive_ready(burst)]
        if self._eo is not None:
            messages = await eo_intake.admit(
                self._eo,
                messages,
                source=source,
                metrics=self.metrics,
                stopping=self._stopping,
                reject=lambda message, reason: self._spawn(self._reject(message, reason)),
            )
        self.metrics.consumed(len(messages))  # once per turn, not per event
        # Writer schemas of versions new to the route; effectively-once waits for the
        # registry in place (a nack would halt the partition's line: see prepare).
        hold = self._stopping if self._eo is not None else None
        await self._schemas.prepare(messages, hold=hold)
        for message in messages:
            for lane, batch in self._intake(message, lanes):
                await self._dispatch(lane, batch)

    def _eo_ended(self, received: Received, nacked: bool) -> None:
        assert self._eo is not None
        self._eo.ended(received, nacked=nacked)

    async def _may_take_events(self) -> bool:
        """While paused: wait for a change; True when intake may take one probe batch."""
        try:
            if not self._tasks or self._gate.storm:
                # Nothing in hand to probe with (or, in a storm, only batches the endpoint
                # keeps rejecting, which may be poison after all): take events once a
                # probe is due, so a batch the endpoint can score may end the pause.
                await self._gate.wait_probe_due(self._stopping)
                return True
            resumed = asyncio.ensure_future(self._gate.wait_resumed(self._stopping))
            try:
                await asyncio.wait({resumed, *self._tasks}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                resumed.cancel()
                await asyncio.gather(resumed, return_exceptions=True)
        except ShutdownRequested:
            pass
        return False

    def _processor_nack(self, batch: list[Event]) -> None:
        self._opened()[1].nack(batch)

    def _intake(self, received: Received, lanes: Lanes[Event]) -> list[tuple[int, list[Event]]]:
        try:
            event = self._schemas.decode(received)
        except SchemaUnavailable:
            # Its writer schema cannot be looked up now: nobody's fault, so handed back
            # (effectively-once: only when stopping, since prepare held it until then).
            self._processor_nack([Event(received, {})])
            return []
        except BadEvent as exc:
            self._spawn(self._reject(received, str(exc)))
            return []
        return lanes.add(received.key, event, event.size)

    async def _reject(self, received: Received, reason: str) -> None:
        assert self._settler is not None
        await self._settler.dead_letter_received(received, reason)

    async def _dispatch(self, lane: int, batch: list[Event]) -> None:
        _, processor = self._opened()
        try:
            await unless_stopping(
                self._slots.acquire(), self._stopping, release=lambda _: self._slots.release()
            )
        except ShutdownRequested:
            processor.nack(batch)  # never reached the endpoint
            return
        self.metrics.batch(len(batch))
        previous = self._lane_tasks.get(lane) if self._ordered else None
        work = processor.process(batch) if previous is None else self._after(previous, batch)
        self._lane_tasks[lane] = self._spawn(work, slot=True)

    async def _after(self, previous: asyncio.Future[None], batch: list[Event]) -> None:
        """Process ``batch`` once its lane's previous batch is settled: a key's batches are
        sent one after the other, while intake goes on filling the other lanes."""
        _, processor = self._opened()
        try:
            await asyncio.wait({previous})
        except asyncio.CancelledError:
            processor.nack([e for e in batch if not e.settled])  # drained before it started
            raise
        await processor.process(batch)

    def _spawn(
        self, work: Coroutine[Any, Any, None], *, slot: bool = False
    ) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        gauge = self.metrics.in_flight
        gauge.set(len(self._tasks))

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            gauge.set(len(self._tasks))
            if slot:
                self._slots.release()
            if not t.cancelled() and t.exception() is not None:
                log.error("batch_failed", route=self.name, error=repr(t.exception()))

        task.add_done_callback(done)
        return task

    async def _abandon(self, receiving: asyncio.Future[Any]) -> None:
        """Give back a message that arrived while stopping; cancel a receive still waiting."""
        if receiving.done():
            if not receiving.cancelled() and receiving.exception() is None:
                self._opened()[0].nack(receiving.result())
            return
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError, BrokerError):
            await receiving

    async def drain(self, grace_s: float) -> None:
        """Let in-flight batches finish for ``grace_s``; cancel (and so nack) the rest."""
        if self._tasks:
            log.info("route_draining", route=self.name, in_flight=len(self._tasks), grace_s=grace_s)
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def close(self) -> None:
        """Flush and close producers, then the consumer (which releases anything unacked)."""
        if self._eo is not None:
            await self._eo.close()
        for publisher in self._publishers:
            with contextlib.suppress(BrokerError):
                await publisher.close()
        if self._source is not None:
            with contextlib.suppress(BrokerError):
                await self._source.close()
        if self._on_close is not None:
            await self._on_close()
        log.info("route_stopped", route=self.name, **self.metrics.summary())

    def _gate_changed(self, pause: Pause | None) -> None:
        previous, self._last_pause = self._last_pause, pause
        self.metrics.paused(
            None if pause is None else pause.kind, None if previous is None else previous.kind
        )
        if pause is not None:
            log.warning("route_paused", route=self.name, kind=pause.kind, reason=pause.reason)
        else:
            log.info("route_resumed", route=self.name)
