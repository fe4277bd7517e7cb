"""How BatchProcessor ends events, with the broker and the endpoint replaced by scripted
stand-ins (the e2e suites cover the real ones; a publish failure or a precise sequence of
answers cannot be provoked there on cue)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import structlog.testing

from bridge.config import load_config
from bridge.config_route import RouteSettings
from bridge.effectively_once import EffectivelyOnce
from bridge.errors import BrokerError, EndpointError
from bridge.events import Event
from bridge.gate import RouteGate
from bridge.limiter import EndpointLimiter, FixedLimit
from bridge.observe import Metrics, RouteMetrics
from bridge.partition_line import SequencedPublisher
from bridge.processing import BatchProcessor
from bridge.pulsar_publish import OutgoingMessage, Publisher
from bridge.pulsar_source import Position, Received, Source
from bridge.serving import Invocation, ServingClient
from bridge.settle import Settler
from bridge.storm import StormGuard
from tests.support.harness import Topics, route_config, write_config

Message = tuple[bytes, Mapping[str, str], str | None]


class FakeReceived:
    _ids = itertools.count()

    def __init__(self, key: str) -> None:
        self.data = b"{}"
        self.key = key
        self.topic = "persistent://public/default/events"
        entry = next(self._ids)
        self.message_id = f"(1,{entry},-1,-1)"
        self.position = Position(0, 1, entry, -1)
        self.properties: dict[str, str] = {}
        self.redelivery_count = 0


class FakeSource:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.nacked: list[str] = []

    def ack(self, received: FakeReceived) -> None:
        self.acked.append(received.message_id)

    def nack(self, received: FakeReceived) -> None:
        self.nacked.append(received.message_id)


class FlakyPublisher:
    """Fails the first ``failures`` calls for every message, then stores everything."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[Message]] = []
        self.retried_twice = asyncio.Event()

    async def publish_all(self, messages: Sequence[Message]) -> list[BrokerError | None]:
        self.calls.append(list(messages))
        if len(self.calls) >= 3:
            self.retried_twice.set()
        if len(self.calls) <= self.failures:
            return [BrokerError("publish to results failed: AlreadyClosed")] * len(messages)
        return [None] * len(messages)

    async def publish(self, data: bytes, properties: dict[str, str], key: str | None) -> None:
        (error,) = await self.publish_all([(data, properties, key)])
        if error is not None:
            raise error


class AnsweringEndpoint:
    async def invoke(self, body: bytes) -> Invocation:
        rows = orjson.loads(body)["dataframe_records"]
        return Invocation({"predictions": [0.5] * len(rows)}, "m-1", 0.001)


def settings(tmp_path: Path, subscription_type: str, **sections: Any) -> RouteSettings:
    route = route_config(
        Topics(), source={"subscription_type": subscription_type, "topics": ["events"]}, **sections
    )
    directory = write_config(
        tmp_path,
        service_url="pulsar://127.0.0.1:1",
        databricks={"host": "http://127.0.0.1:1", "auth_type": "none"},
        routes={"fraud": route},
    )
    return load_config(directory).routes[0]


class ScriptedEndpoint:
    """Answers each request by ``answer(rows)``: predictions, or an EndpointError to raise."""

    def __init__(self, answer: Callable[[list[dict[str, Any]]], list[Any] | EndpointError]):
        self.answer = answer
        self.requests: list[list[dict[str, Any]]] = []
        self._requested = asyncio.Event()

    async def reached(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition`` holds, checked as each request arrives."""
        while not condition():
            self._requested.clear()
            await asyncio.wait_for(self._requested.wait(), timeout=10)

    async def invoke(self, body: bytes) -> Invocation:
        rows = orjson.loads(body)["dataframe_records"]
        self.requests.append(rows)
        self._requested.set()
        await asyncio.sleep(0)
        outcome = self.answer(rows)
        if isinstance(outcome, EndpointError):
            raise outcome
        return Invocation({"predictions": outcome}, "m-1", 0.001)


def scores(rows: list[dict[str, Any]]) -> list[Any]:
    return [0.5] * len(rows)


class Parts:
    """A processor and the fakes behind it."""

    def __init__(
        self,
        route: RouteSettings,
        *,
        results: FlakyPublisher | None = None,
        endpoint: ScriptedEndpoint | None = None,
        gate: RouteGate | None = None,
        effectively_once: EffectivelyOnce | None = None,
    ) -> None:
        self.source = FakeSource()
        self.results = results or FlakyPublisher(0)
        self.dead = FlakyPublisher(0)
        self.endpoint = endpoint or ScriptedEndpoint(scores)
        self.stopping = asyncio.Event()
        self.metrics = RouteMetrics(Metrics(), route.name)
        self.gate = gate or RouteGate(
            failures_to_pause=route.failure.circuit_failures,
            probe_initial_s=0.001,
            probe_max_s=0.01,
        )
        self.limiter = EndpointLimiter("m", FixedLimit(route.endpoint.max_in_flight))
        self.storm = StormGuard(route.failure.poison_storm_batches, 0.05)
        settler = Settler(
            route.name,
            cast(Source, self.source),
            self.dead,
            self.metrics,
            on_end=None if effectively_once is None else self._eo_ended,
        )
        self.eo = effectively_once
        self.processor = BatchProcessor(
            route,
            results=cast(Publisher, self.results),
            settler=settler,
            serving=cast(ServingClient, self.endpoint),
            limiter=self.limiter,
            gate=self.gate,
            storm=self.storm,
            metrics=self.metrics,
            stopping=self.stopping,
            effectively_once=effectively_once,
        )

    def _eo_ended(self, received: Received, nacked: bool) -> None:
        assert self.eo is not None
        self.eo.ended(received, nacked=nacked)

    def dead_ids(self) -> list[str]:
        return [props["source_message_id"] for call in self.dead.calls for _, props, _ in call]


def batch(size: int, **fields: Any) -> list[Event]:
    return [
        Event(cast(Received, FakeReceived(f"card-{i % 3}")), {"i": i, **fields})
        for i in range(size)
    ]


async def test_an_ordered_route_sends_unconfirmed_results_again_in_place(
    tmp_path: Path,
) -> None:
    parts = Parts(settings(tmp_path, "key_shared"), results=FlakyPublisher(failures=2))
    events = batch(6)
    await parts.processor.process(events)
    assert len(parts.results.calls) == 3, "two failed publishes, then one that was stored"
    assert parts.results.calls[0] == parts.results.calls[2], "the same results, same order"
    assert parts.source.nacked == [], "nothing handed back behind later events of its key"
    assert parts.source.acked == [e.received.message_id for e in events]


async def test_a_shared_route_hands_unconfirmed_events_back(tmp_path: Path) -> None:
    parts = Parts(settings(tmp_path, "shared"), results=FlakyPublisher(failures=1))
    events = batch(4)
    await parts.processor.process(events)
    assert len(parts.results.calls) == 1
    assert parts.source.acked == []
    assert parts.source.nacked == [e.received.message_id for e in events]


async def test_a_shutdown_ends_the_in_place_retries_and_hands_the_events_back(
    tmp_path: Path,
) -> None:
    parts = Parts(settings(tmp_path, "key_shared"), results=FlakyPublisher(failures=10**6))
    events = batch(3)
    work = asyncio.ensure_future(parts.processor.process(events))
    await asyncio.wait_for(parts.results.retried_twice.wait(), timeout=10)
    parts.stopping.set()
    await asyncio.wait_for(work, timeout=10)
    assert parts.source.acked == []
    assert parts.source.nacked == [e.received.message_id for e in events]


def http(status: int, message: str = "no", retry_after: float | None = None) -> EndpointError:
    return EndpointError(
        message,
        status=status,
        retriable=status in (429, 500, 502, 503, 504),
        retry_after=retry_after,
    )


async def test_one_poison_event_is_bisected_out_and_dead_lettered_alone(tmp_path: Path) -> None:
    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(400, "bad row") if any(r["i"] == 5 for r in rows) else scores(rows)

    parts = Parts(settings(tmp_path, "shared"), endpoint=ScriptedEndpoint(answer))
    events = batch(8)
    await parts.processor.process(events)
    assert parts.dead_ids() == [events[5].received.message_id]
    assert len(parts.source.acked) == 8, "7 results and 1 dead letter, each acked"
    assert len(parts.endpoint.requests) <= 1 + 2 * 3, "at most log2(8) extra requests a side"
    assert not parts.gate.paused


async def test_a_route_error_pauses_the_route_holds_the_batch_and_resumes_on_success(
    tmp_path: Path,
) -> None:
    answers = iter([http(404, "RESOURCE_DOES_NOT_EXIST"), http(403, "PERMISSION_DENIED")])

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return next(answers, None) or scores(rows)

    parts = Parts(settings(tmp_path, "shared"), endpoint=ScriptedEndpoint(answer))
    changes: list[str | None] = []
    parts.gate._on_change = lambda p: changes.append(None if p is None else p.kind)
    events = batch(4)
    await parts.processor.process(events)
    assert changes == ["route", None], "paused once for the route error, resumed once"
    assert len(parts.endpoint.requests) == 3, "the held batch probed until it was answered"
    assert parts.dead.calls == []
    assert parts.source.nacked == []
    assert parts.source.acked == [e.received.message_id for e in events]


async def test_an_endpoint_failing_everything_never_dead_letters_the_batch(
    tmp_path: Path,
) -> None:
    failing = {"on": True}

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(500, "boom") if failing["on"] else scores(rows)

    route = settings(tmp_path, "shared", failure={"attempts": 2, "circuit_failures": 3})
    parts = Parts(route, endpoint=ScriptedEndpoint(answer))
    work = asyncio.ensure_future(parts.processor.process(batch(4)))
    await parts.endpoint.reached(lambda: len(parts.endpoint.requests) >= 12)  # rounds failing
    assert parts.gate.paused
    assert parts.gate.pause_state is not None
    assert parts.gate.pause_state.kind == "down"
    failing["on"] = False
    await asyncio.wait_for(work, timeout=10)
    assert parts.dead.calls == []
    assert parts.source.nacked == []
    assert len(parts.source.acked) == 4


async def test_an_event_failing_alone_while_others_succeed_is_dead_lettered(
    tmp_path: Path,
) -> None:
    """A 5xx only this event provokes (the endpoint answers other requests) is its fault."""
    route = settings(tmp_path, "shared", failure={"attempts": 2, "max_redeliveries": 1})
    parts = Parts(route)
    events = batch(4)

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        if any(r["i"] == 2 for r in rows):
            parts.gate.success()  # meanwhile the endpoint answers other batches
            return http(500, "model crashed")
        return scores(rows)

    parts.endpoint.answer = answer
    await parts.processor.process(events)
    assert parts.dead_ids() == [events[2].received.message_id]
    reason = parts.dead.calls[0][0][1]["error"]
    assert "model crashed" in reason
    assert "failed alone 2 rounds" in reason
    assert len(parts.source.acked) == 4


async def test_a_batch_rejected_whole_waits_and_is_poison_when_another_batch_scores(
    tmp_path: Path,
) -> None:
    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(400, "bad") if rows[0].get("bad") else scores(rows)

    route = settings(tmp_path, "shared", failure={"poison_storm_batches": 3})
    parts = Parts(route, endpoint=ScriptedEndpoint(answer))
    poison, good = batch(2, bad=True), batch(2)
    waiting = asyncio.ensure_future(parts.processor.process(poison))
    await asyncio.sleep(0.001)
    assert parts.dead.calls == [], "undecided: not dead-lettered yet"
    await parts.processor.process(good)
    await asyncio.wait_for(waiting, timeout=10)
    assert sorted(parts.dead_ids()) == sorted(e.received.message_id for e in poison)
    assert not parts.gate.paused


async def test_a_poison_storm_pauses_the_route_and_dead_letters_nothing(tmp_path: Path) -> None:
    redeployed = {"broken": True}

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(400, "Model is missing inputs ['x']") if redeployed["broken"] else scores(rows)

    route = settings(tmp_path, "shared", failure={"poison_storm_batches": 3})
    parts = Parts(route, endpoint=ScriptedEndpoint(answer))
    batches = [batch(3) for _ in range(3)]
    work = [asyncio.ensure_future(parts.processor.process(b)) for b in batches]
    await parts.endpoint.reached(lambda: parts.gate.paused)
    assert parts.gate.pause_state is not None
    assert parts.gate.pause_state.kind == "storm"
    assert "Model is missing inputs" in parts.gate.pause_state.reason
    requests_while_paused = len(parts.endpoint.requests)
    redeployed["broken"] = False  # the model is fixed: the next probe succeeds
    await asyncio.wait_for(asyncio.gather(*work), timeout=10)
    assert parts.dead.calls == [], "no good event dead-lettered"
    assert len(parts.source.acked) == 9
    assert not parts.gate.paused
    assert len(parts.endpoint.requests) > requests_while_paused


async def test_poison_storm_detection_can_be_turned_off(tmp_path: Path) -> None:
    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(400, "bad")

    route = settings(tmp_path, "shared", failure={"poison_storm_batches": 0})
    parts = Parts(route, endpoint=ScriptedEndpoint(answer))
    events = batch(2)
    await parts.processor.process(events)
    assert sorted(parts.dead_ids()) == sorted(e.received.message_id for e in events)


async def test_an_event_that_cannot_be_encoded_is_dead_lettered_and_its_batch_scored(
    tmp_path: Path,
) -> None:
    nested: Any = 0
    for _ in range(300):  # deeper than orjson writes
        nested = [nested]
    parts = Parts(settings(tmp_path, "shared"))
    events = batch(4)
    events[1].row["deep"] = nested
    await parts.processor.process(events)
    assert parts.dead_ids() == [events[1].received.message_id]
    assert "cannot be encoded" in parts.dead.calls[0][0][1]["error"]
    assert len(parts.results.calls[0]) == 3


async def test_a_stop_while_waiting_for_a_retry_after_nacks_at_once(tmp_path: Path) -> None:
    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(429, "slow down", retry_after=30)

    parts = Parts(settings(tmp_path, "shared"), endpoint=ScriptedEndpoint(answer))
    events = batch(2)
    work = asyncio.ensure_future(parts.processor.process(events))
    await parts.endpoint.reached(lambda: bool(parts.endpoint.requests))
    await asyncio.sleep(0)  # the 429 is raised on the processor's next turn
    assert parts.limiter.paused_until > parts.limiter.clock(), "the whole endpoint waits"
    parts.stopping.set()
    await asyncio.wait_for(work, timeout=5)  # not 30 s
    assert parts.source.nacked == [e.received.message_id for e in events]


async def test_rejections_seen_before_a_storm_began_are_scored_again(tmp_path: Path) -> None:
    """A batch bisecting when the model broke must not dead-letter what the storm rejected."""
    model = {"broken": True}
    parts = Parts(settings(tmp_path, "shared"))

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        if len(parts.endpoint.requests) == 4:  # mid-bisection, other batches call a storm
            parts.gate.pause("storm", "every event of 3 batches rejected")
            model["broken"] = False
        return http(400, "missing inputs") if model["broken"] else scores(rows)

    parts.endpoint.answer = answer
    events = batch(4)
    await parts.processor.process(events)
    assert parts.dead.calls == []
    assert len(parts.source.acked) == 4


async def test_a_traffic_split_logs_each_new_version_once_not_every_flip(tmp_path: Path) -> None:
    versions = iter(["m-1", "m-2", "m-1", "m-2", "m-1", "m-3"])

    class SplitEndpoint(ScriptedEndpoint):
        async def invoke(self, body: bytes, headers: Any = None) -> Invocation:
            rows = orjson.loads(body)["dataframe_records"]
            return Invocation({"predictions": scores(rows)}, next(versions), 0.001)

    parts = Parts(settings(tmp_path, "shared"), endpoint=SplitEndpoint(scores))
    with structlog.testing.capture_logs() as logs:
        for _ in range(6):
            await parts.processor.process(batch(2))
    changes = [(e["previous"], e["current"]) for e in logs if e["event"] == "served_model_changed"]
    assert changes == [("m-1", "m-2"), ("m-1", "m-3")]


class SequencedResults:
    """An effectively-once producer: stores each batch it is sent (its id and how many
    results it held), in the order sent."""

    def __init__(self) -> None:
        self.last_sequence_id = -1
        self.sent: list[int] = []
        self.stored = 0

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], sequence_id: int
    ) -> BrokerError | None:
        self.sent.append(sequence_id)
        self.stored += len(messages)
        return None

    async def close(self) -> None:
        return None


async def effectively_once_parts(
    route: RouteSettings, endpoint: ScriptedEndpoint, events: list[Event]
) -> tuple[Parts, SequencedResults]:
    producer = SequencedResults()

    async def open_producer(name: str) -> SequencedPublisher:
        return cast(SequencedPublisher, producer)

    eo = EffectivelyOnce(route.name, "sub", open_producer)
    for event in events:  # what the relay does at intake, in source order
        assert await eo.admit(event.received) == "new"
    return Parts(route, endpoint=endpoint, effectively_once=eo), producer


async def test_effectively_once_a_rejected_event_before_good_ones_does_not_block_them(
    tmp_path: Path,
) -> None:
    """The good results wait in the line for the earlier rejected event; it must be
    dead-lettered before the batch waits for them (it was the other way round)."""

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(400, "bad row") if any(r["i"] == 0 for r in rows) else scores(rows)

    route = settings(tmp_path, "failover")
    events = batch(4)
    parts, producer = await effectively_once_parts(route, ScriptedEndpoint(answer), events)
    await asyncio.wait_for(parts.processor.process(events), timeout=10)
    assert parts.dead_ids() == [events[0].received.message_id]
    assert producer.sent == sorted(producer.sent)
    assert producer.stored == 3
    assert len(parts.source.acked) == 4


async def test_overload_never_makes_an_event_suspect(tmp_path: Path) -> None:
    """429s for one batch while others succeed: held and retried, never dead-lettered."""
    route = settings(tmp_path, "shared", failure={"attempts": 2, "max_redeliveries": 0})
    parts = Parts(route)
    refusals = iter(range(12))

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        if next(refusals, None) is not None:
            parts.gate.success()  # the endpoint answers other batches meanwhile
            return http(429, "slow down")
        return scores(rows)

    parts.endpoint.answer = answer
    events = batch(3)
    await parts.processor.process(events)
    assert parts.dead.calls == []
    assert len(parts.source.acked) == 3


async def test_events_the_bridge_cannot_send_are_dead_lettered_at_once_not_a_storm(
    tmp_path: Path,
) -> None:
    route = settings(
        tmp_path,
        "shared",
        endpoint={"max_payload_bytes": 1024},
        failure={"poison_storm_batches": 2},
    )
    parts = Parts(route)
    batches = [batch(2, blob="x" * 2000) for _ in range(3)]
    for events in batches:
        await asyncio.wait_for(parts.processor.process(events), timeout=5)
    assert len(parts.dead_ids()) == 6
    assert not parts.gate.paused
    assert parts.endpoint.requests == []


async def test_a_probe_that_ends_in_an_unexpected_error_lets_the_next_one_go(
    tmp_path: Path,
) -> None:
    parts = Parts(settings(tmp_path, "shared"))
    parts.gate.pause("route", "HTTP 404")

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        raise RuntimeError("a bug in a hook")

    parts.endpoint.answer = answer
    with pytest.raises(RuntimeError):
        await parts.processor.process(batch(1))
    parts.endpoint.answer = scores
    events = batch(2)
    await asyncio.wait_for(parts.processor.process(events), timeout=5)
    assert not parts.gate.paused, "the next probe went and resumed the route"
    assert len(parts.source.acked) == 2


async def test_a_200_that_does_not_line_up_does_not_resume_a_storm(tmp_path: Path) -> None:
    parts = Parts(settings(tmp_path, "shared"))
    parts.gate.pause("storm", "every event rejected")
    calls = iter([[0.5], None])  # one prediction for two events, then a proper answer

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        wrong = next(calls, None)
        if wrong is not None:
            assert parts.gate.storm, "still paused when the unusable answer came"
            return wrong
        return scores(rows)

    parts.endpoint.answer = answer
    events = batch(2)
    await asyncio.wait_for(parts.processor.process(events), timeout=5)
    assert parts.dead.calls == []
    assert len(parts.source.acked) == 2


async def test_poison_held_through_a_storm_is_dead_lettered_once_others_are_scored(
    tmp_path: Path,
) -> None:
    """Three poison-only batches in a row look like a storm; once the endpoint scores a
    good batch, the held ones rejected again are poison, not a reason to stay paused."""

    def answer(rows: list[dict[str, Any]]) -> list[Any] | EndpointError:
        return http(400, "bad row") if rows[0].get("bad") else scores(rows)

    route = settings(tmp_path, "shared", failure={"poison_storm_batches": 3})
    parts = Parts(route, endpoint=ScriptedEndpoint(answer))
    poison = [batch(1, bad=True) for _ in range(3)]
    held = [asyncio.ensure_future(parts.processor.process(b)) for b in poison]
    await parts.endpoint.reached(lambda: parts.gate.storm)
    good = batch(2)
    await asyncio.wait_for(parts.processor.process(good), timeout=10)  # a new batch probes
    await asyncio.wait_for(asyncio.gather(*held), timeout=10)
    assert sorted(parts.dead_ids()) == sorted(b[0].received.message_id for b in poison)
    assert not parts.gate.paused
