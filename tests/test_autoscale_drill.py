"""Autoscaling drill (#18): what KEDA does, from the signal it uses, on Apache Pulsar.

KEDA's Pulsar scaler reads ``subscriptions[sub].msgBacklog`` from the admin API's topic
stats and the HPA behind it wants ``ceil(backlog / threshold)`` replicas. Here a scaler
loop in the test applies that rule every second to bridge processes on one shared
subscription, while a producer publishes at a fixed rate an endpoint too slow for one or
two replicas: the drill goes 1 -> 3 -> 1, each scale-in a SIGTERM, and then checks that
every event has a result, counts second results, and reports throughput per replica.

Apache Pulsar only, for the reasons in tests/test_apache_scaleout.py (pulsar-lite cannot
put two processes on one subscription, and has no admin API to read the backlog from).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pulsar
import pytest

from bridge.emulator import EmulatorServer, score
from tests.conftest import APACHE_ONLY, BridgeFactory
from tests.support.apache import ApachePulsarBroker
from tests.support.harness import BridgeProcess, DistinctIds, TopicReader, Topics, route_config
from tests.test_apache_scaleout import (
    by_id,
    publish_each,
    rows_payloads,
    subscription_stats,
    wait_backlog_drained,
)

# One replica serves at most MAX_IN_FLIGHT * MAX_EVENTS / LATENCY = 40 events/s: a ceiling
# (the emulator's latency is a floor), so two replicas (<= 80/s) cannot keep up with RATE
# and the backlog must reach the 3-replica level, whatever the machine's load.
LATENCY_MS, MAX_IN_FLIGHT, MAX_EVENTS = 500, 2, 10
RATE_PER_S, EVENTS = 100, 9000
THRESHOLD, COOLDOWN_S, MAX_REPLICAS = 300, 10.0, 3
# Events a replica holds unacked while it keeps up (prefetch + batches in progress) count
# in msgBacklog: a small prefetch lets three replicas bring it under THRESHOLD under load,
# and leaves little for a scale-in to hand back.
RECEIVER_QUEUE = 20


@dataclass
class BacklogRule:
    """KEDA's rule on one metric: ``desired = ceil(backlog / threshold)``, clamped.

    Scale-out goes straight to the desired count (the HPA's default scale-up has no
    stabilization window); scale-in removes one replica, only once the backlog has stayed
    under the threshold for ``cooldown_s`` (the HPA's scale-down stabilization, shortened),
    and each further step waits a cooldown of its own.
    """

    threshold: int
    cooldown_s: float
    min_replicas: int = 1
    max_replicas: int = MAX_REPLICAS
    _below_since: float | None = field(default=None, init=False)

    def replicas(self, backlog: int, current: int, now: float) -> int:
        """How many replicas to run, given the backlog read at ``now`` (monotonic s)."""
        desired = max(
            self.min_replicas, min(self.max_replicas, math.ceil(backlog / self.threshold))
        )
        if backlog >= self.threshold:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        if desired > current:
            return desired
        below = self._below_since
        if desired < current and below is not None and now - below >= self.cooldown_s:
            self._below_since = now
            return current - 1
        return current


def test_rule_scales_out_at_once_to_the_clamped_desired_count() -> None:
    rule = BacklogRule(threshold=100, cooldown_s=10)
    assert rule.replicas(backlog=100, current=1, now=0) == 1
    assert rule.replicas(backlog=101, current=1, now=1) == 2
    assert rule.replicas(backlog=250, current=1, now=2) == 3
    assert rule.replicas(backlog=10_000, current=2, now=3) == 3


def test_rule_scales_in_one_step_per_cooldown_below_the_threshold() -> None:
    rule = BacklogRule(threshold=100, cooldown_s=10)
    # Over the threshold, a lower desired count is not a reason to scale in.
    assert rule.replicas(backlog=150, current=3, now=0) == 3
    assert rule.replicas(backlog=50, current=3, now=1) == 3
    assert rule.replicas(backlog=0, current=3, now=10.9) == 3
    assert rule.replicas(backlog=0, current=3, now=11) == 2
    assert rule.replicas(backlog=0, current=2, now=20) == 2
    assert rule.replicas(backlog=0, current=2, now=21) == 1
    assert rule.replicas(backlog=0, current=1, now=100) == 1


def test_rule_restarts_the_cooldown_when_the_backlog_comes_back() -> None:
    rule = BacklogRule(threshold=100, cooldown_s=10)
    assert rule.replicas(backlog=50, current=2, now=0) == 2
    assert rule.replicas(backlog=120, current=2, now=5) == 2
    assert rule.replicas(backlog=50, current=2, now=9) == 2
    assert rule.replicas(backlog=50, current=2, now=18) == 2
    assert rule.replicas(backlog=50, current=2, now=19) == 1


def paced(payloads: Iterable[bytes], rate_per_s: float, stop: threading.Event) -> Iterator[bytes]:
    """``payloads`` at a fixed rate (each is due at ``i / rate`` from the start)."""
    began = time.monotonic()
    for i, payload in enumerate(payloads):
        delay = began + i / rate_per_s - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        yield payload


@dataclass
class Replica:
    process: BridgeProcess
    ready_at: float
    stopped_at: float | None = None


@dataclass
class Drill:
    """The replicas the scaler runs, and what it did when (seconds from the drill's start)."""

    start: Callable[[], BridgeProcess]
    began: float = field(default_factory=time.monotonic)
    running: list[Replica] = field(default_factory=list)
    stopped: list[Replica] = field(default_factory=list)
    history: list[tuple[float, int, int]] = field(default_factory=list)  # (t, replicas, backlog)

    def at(self) -> float:
        return time.monotonic() - self.began

    def scale_to(self, target: int, backlog: int) -> None:
        while len(self.running) < target:
            process = self.start()  # waits for "ready", as a pod's readiness probe would
            self.running.append(Replica(process, time.monotonic()))
        if len(self.running) > target:
            newest = self.running.pop()
            code = newest.process.stop()  # SIGTERM: drain in-flight batches, nack the rest
            newest.stopped_at = time.monotonic()
            self.stopped.append(newest)
            assert code == 0, newest.process.tail()
        self.history.append((round(self.at(), 1), len(self.running), backlog))


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(600)
@APACHE_ONLY
def test_backlog_autoscaling_goes_1_3_1_under_steady_load_and_loses_nothing(
    pulsar_client: pulsar.Client,
    apache_broker: ApachePulsarBroker,
    topics: Topics,
    emulator: EmulatorServer,
    start_bridge: BridgeFactory,
) -> None:
    """Needs Apache Pulsar: several processes on one shared subscription, and the admin
    API's msgBacklog (the signal KEDA's Pulsar scaler reads)."""
    emulator.state.faults.update({"latency_ms": LATENCY_MS}, now=0)
    route = route_config(
        topics,
        source={"receiver_queue_size": RECEIVER_QUEUE},
        batch={"max_events": MAX_EVENTS},
        endpoint={"concurrency": "fixed", "max_in_flight": MAX_IN_FLIGHT},
    )
    rows, payloads = rows_payloads(EVENTS)
    results = TopicReader(pulsar_client, topics.result)
    drill = Drill(lambda: start_bridge({"fraud": route}))
    drill.scale_to(1, backlog=0)  # the subscription exists before the first event

    stop_producer = threading.Event()
    published: list[int] = []
    producer_errors: list[BaseException] = []

    def produce() -> None:
        # Unbatched: msgBacklog counts entries, so with a batching producer KEDA's
        # threshold would be in batches, not events.
        try:
            published.append(
                publish_each(
                    pulsar_client, topics.source, paced(payloads, RATE_PER_S, stop_producer)
                )
            )
        except BaseException as exc:  # re-raised in the test's thread
            producer_errors.append(exc)

    producer = threading.Thread(target=produce, name="steady-producer", daemon=True)
    producer.start()
    rule, tick, peak = BacklogRule(THRESHOLD, COOLDOWN_S), threading.Event(), 0
    try:
        # Bounded: the load lasts EVENTS / RATE_PER_S = 90 s; then the drain, two cooldowns.
        for _ in range(600):
            backlog = int(subscription_stats(apache_broker, topics)["msgBacklog"])
            peak = max(peak, backlog)
            target = rule.replicas(backlog, len(drill.running), time.monotonic())
            if target != len(drill.running):
                drill.scale_to(target, backlog)
            if not producer.is_alive() and backlog == 0 and len(drill.running) == 1:
                break
            tick.wait(1.0)
    finally:
        stop_producer.set()
        producer.join(120)
    assert producer_errors == [], producer_errors
    assert published == [EVENTS], f"the producer published {published} of {EVENTS}"
    counts = [replicas for _, replicas, _ in drill.history]
    assert MAX_REPLICAS in counts, f"never scaled out to {MAX_REPLICAS}: {drill.history}"
    assert counts[-1] == 1, f"did not scale back in to 1: {drill.history}"

    distinct = DistinctIds()
    results.read_until(lambda ms: distinct(ms) >= EVENTS, timeout=120)
    last = drill.running.pop()
    assert last.process.stop() == 0, last.process.tail()
    last.stopped_at = time.monotonic()
    replicas = sorted([*drill.stopped, last], key=lambda r: r.ready_at)
    got = results.read_quiet(2000)  # and any second result published late

    results_by_id = by_id(got)
    missing = [r["id"] for r in rows if r["id"] not in results_by_id]
    assert missing == [], f"{len(missing)} events lost, e.g. {missing[:5]}"
    for row in rows:
        assert all(r.json["prediction"] == score(row) for r in results_by_id[row["id"]])
    # A second result *message* for an event (the same message read twice is the reader's).
    duplicates = sum(len({m.message_id for m in ms}) - 1 for ms in results_by_id.values())
    stopped_lines = [r.process.events("route_stopped")[0] for r in replicas]
    out = [line["results_out"] for line in stopped_lines]
    assert sum(out) == len(got), "every result published was read back"
    assert all(line["dead_lettered"] == 0 for line in stopped_lines), stopped_lines
    # A scale-in can repeat at most the batches the stopped replica had in progress
    # (twice max_in_flight: see bridge.relay) whose acks did not reach the broker.
    scale_ins = len(drill.stopped)
    assert duplicates <= scale_ins * 2 * MAX_IN_FLIGHT * MAX_EVENTS, duplicates
    stats = wait_backlog_drained(apache_broker, topics)
    assert stats["msgBacklog"] == 0, f"events left unacked: {stats}"

    print(f"\nautoscale drill: {EVENTS} events at {RATE_PER_S}/s, 0 lost, {duplicates} duplicates")
    print(f"replica history (t s, replicas, backlog): {drill.history}")
    print(f"peak backlog {peak}, wall {drill.at():.1f}s")
    for number, (replica, count) in enumerate(zip(replicas, out, strict=True), start=1):
        assert replica.stopped_at is not None
        lifetime = replica.stopped_at - replica.ready_at
        print(
            f"replica {number}: up {replica.ready_at - drill.began:.1f}s"
            f"-{replica.stopped_at - drill.began:.1f}s, {count} results, "
            f"{count / lifetime:.1f} results/s over its {lifetime:.1f}s"
        )
