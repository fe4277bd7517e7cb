"""Issue #16: what effectively-once result topics cost, beside at-least-once, on Apache Pulsar.

Only Apache Pulsar deduplicates (pulsar-lite has none), so this scenario pair runs on a
standalone broker of its own (:class:`tests.support.apache.ApachePulsarBroker`, through
``scripts/apache-pulsar.sh``: a JDK >= 21 and the cached distribution or Maven), next to the
run's instant emulator. It is not part of the default run; ``--only effectively_once``
selects it. Both rows are the bridge draining a pre-filled backlog, timed as every
throughput scenario (:func:`bench.scenarios.drain`: from the bridge's ``ready`` to the
reader's N-th result), after one uncounted pair that warms the broker's JVM up, and differ
in delivery only:

* the source topic has :data:`PARTITIONS` partitions, pre-filled by the batching producer
  (so result sequence ids come from batched entries, batch index included, as they would
  in production); the subscription is ``failover`` in both rows, since effectively-once
  needs one owner per partition; batch 100, linger 20 ms, ``max_in_flight`` as the
  instant scenario;
* ``eo_at_least_once``: the shipped delivery, its result topic in a namespace without
  deduplication (as such a route runs); ``eo_effectively_once``: ``result.delivery =
  "effectively-once"``, its result topic in a namespace with deduplication on (the route
  refuses to start otherwise), so the row pays all that switching it on costs: one
  unbatched producer per source partition, the reorder buffer, and the broker's
  deduplication.

A repetition counts only if it was valid: the bridge's summary says every event was
consumed once with one result (``settled_once``), and the result topic read back from its
start after the bridge stopped holds every event id (``distinct`` = N) and, for
effectively-once, no id twice (``duplicated`` = 0). The rows are judged on medians: the
effectively-once rate is to be at least :data:`TARGET` of the at-least-once rate. Each
row's CPU per event is kept for the relay and for the broker (``broker_cpu_us_per_event``):
on a shared machine the broker's share decides the rate. With ``--profile`` each row runs
once more under py-spy (``bench/results/profile-eo_*.txt``).
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pulsar

from bench import profile as profiler
from bench.payload import client
from bench.report import Median, Row
from bench.scenarios import BridgeOptions, Rig, Run, drain, settled_once, start_bridge
from tests.support.apache import ApachePulsarBroker, ApachePulsarError, apache_pulsar_available
from tests.support.harness import Topics

PARTITIONS = 2
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.85
AT_LEAST_ONCE, EFFECTIVELY_ONCE = "eo_at_least_once", "eo_effectively_once"
# (scenario, result.delivery, deduplication on the result topic's namespace)
ROWS = (
    (AT_LEAST_ONCE, "at-least-once", False),
    (EFFECTIVELY_ONCE, "effectively-once", True),
)


class Unavailable(RuntimeError):
    """Apache Pulsar cannot run on this machine (or did not start): the pair is not run."""


class ApacheBroker(ApachePulsarBroker):
    """The tests' standalone broker, with its (Java) process id for CPU accounting."""

    @property
    def pid(self) -> int | None:
        return None if self._running is None else self._running.pid


@dataclass(frozen=True)
class ApacheRig:
    """The run's rig on an Apache Pulsar broker, and a namespace per deduplication setting."""

    rig: Rig
    broker: ApacheBroker
    namespaces: Mapping[bool, str]  # deduplication on? -> tenant/namespace


@contextmanager
def apache_rig(rig: Rig) -> Iterator[ApacheRig]:
    """A standalone broker under ``rig.workdir`` for as long as the block runs, with
    ``rig``'s emulators; raises :class:`Unavailable` when it cannot run or start here."""
    if not apache_pulsar_available():
        raise Unavailable(
            "Apache Pulsar cannot run here: scripts/apache-pulsar.sh check found no JDK >= 21 "
            "(set PULSAR_JAVA_HOME) or neither Maven nor a cached distribution "
            "(~/.cache/pulsar-serving-bridge); pulsar-lite has no deduplication"
        )
    broker = ApacheBroker(rig.workdir / "apache-pulsar")
    try:
        broker.start()
    except ApachePulsarError as exc:
        broker.stop()
        raise Unavailable(f"Apache Pulsar did not start: {exc}") from exc
    try:
        namespaces = {dedup: f"public/bench-{uuid.uuid4().hex[:6]}" for dedup in (False, True)}
        for dedup, name in namespaces.items():
            broker.create_namespace(name, deduplication=dedup)
        pulsar_client = client(broker.url)
        try:
            yield ApacheRig(
                Rig(broker, pulsar_client, rig.instant, rig.slow, rig.workdir), broker, namespaces
            )
        finally:
            pulsar_client.close()
    finally:
        broker.stop()


def read_back(pulsar_client: Any, topic: str) -> dict[str, int]:
    """Every message on ``topic`` from its start: how many, how many distinct event ids,
    and how many ids have more than one result. Read after the bridge stopped, so what is
    available is all there is (no waiting for a quiet period)."""
    reader = pulsar_client.create_reader(topic, pulsar.MessageId.earliest, receiver_queue_size=1000)
    ids: Counter[str] = Counter()
    try:
        while reader.has_message_available():
            ids[orjson.loads(reader.read_next(timeout_millis=30_000).data())["id"]] += 1
    finally:
        reader.close()
    return {
        "messages": sum(ids.values()),
        "distinct": len(ids),
        "duplicated": sum(1 for count in ids.values() if count > 1),
    }


def valid(run: Run) -> bool:
    """Whether the repetition counts: settled once, every event with exactly one result
    (at-least-once may store a result twice after a redelivery; none is expected here)."""
    got = run.details.get("read_back") or {}
    once = got.get("duplicated") == 0 or run.scenario == AT_LEAST_ONCE
    return bool(run.details.get("settled_once") and got.get("distinct") == run.events and once)


def bridge_drain(
    apache: ApacheRig,
    scenario: str,
    delivery: str,
    dedup: bool,
    events: int,
    timeout: float,
    max_in_flight: int,
    profile: Path | None = None,
) -> Run:
    """One row's repetition: fresh topics in the row's namespace, drained and read back."""
    stem = uuid.uuid4().hex[:8]
    namespace = apache.namespaces[dedup]
    topics = Topics(
        source=f"persistent://{namespace}/events-{stem}",
        result=f"persistent://{namespace}/results-{stem}",
        dlq=f"persistent://{namespace}/dlq-{stem}",
        subscription=f"bench-{stem}",
    )
    apache.broker.create_partitioned_topic(topics.source, PARTITIONS)
    options = BridgeOptions(
        apache.rig.instant,
        max_in_flight,
        route={"source": {"subscription_type": "failover"}, "result": {"delivery": delivery}},
        settings={"pulsar": {"admin_url": apache.broker.admin_url}},
        profile=profile,
    )
    run = drain(
        apache.rig,
        scenario,
        events,
        timeout,
        lambda t: start_bridge(apache.rig, t, options),
        extra_pids={"emulator": apache.rig.instant.pid},
        topics=topics,
    )
    run.details["settled_once"] = settled_once(run, events)
    run.details["read_back"] = read_back(apache.rig.client, topics.result)
    run.details["valid"] = valid(run)
    # The broker's CPU per event moves with how results are stored (batched or not).
    broker_s = run.cpu_cores.get("broker", 0.0) * run.seconds
    run.details["broker_cpu_us_per_event"] = round(broker_s / max(run.events, 1) * 1e6, 1)
    return run


def scenarios(
    apache: ApacheRig, events: int, timeout: float, max_in_flight: int
) -> list[tuple[str, Callable[[], Run]]]:
    """The pair, each a measurement the run repeats (interleaved, as every scenario)."""
    return [
        (name, partial(bridge_drain, apache, name, delivery, dedup, events, timeout, max_in_flight))
        for name, delivery, dedup in ROWS
    ]


def rows(runs: Mapping[str, Sequence[Run]]) -> list[Row]:
    """The table's rows: at-least-once, and effectively-once against it."""
    out: list[Row] = []
    alo, eo = runs.get(AT_LEAST_ONCE), runs.get(EFFECTIVELY_ONCE)
    where = f"Apache Pulsar, failover, {PARTITIONS} partitions"
    if alo:
        median = Median.of(alo)
        out.append(
            Row(
                f"{where}: at-least-once",
                median.events,
                median.seconds,
                median.rate,
                ratio=_validity(alo),
            )
        )
    if eo:
        median = Median.of(eo)
        extra: dict[str, Any] = {"ratio": _validity(eo)}
        if alo:
            ratio = median.rate / Median.of(alo).rate
            all_valid = all(valid(r) for r in (*alo, *eo))
            extra = {
                "ratio": f"{ratio:.2f} x at-least-once; {_validity(eo)}",
                "target": f">= {TARGET:.2f}, each event 1 result",
                "met": ratio >= TARGET and all_valid and median.complete,
            }
        out.append(
            Row(f"{where}: effectively-once", median.events, median.seconds, median.rate, **extra)
        )
    return out


def _validity(runs: Sequence[Run]) -> str:
    """Valid repetitions, events with two results, and CPU per event (relay, broker)."""
    good = sum(1 for r in runs if valid(r))
    duplicated = sum(int((r.details.get("read_back") or {}).get("duplicated", 0)) for r in runs)
    relay = statistics.median(r.relay_cpu_us_per_event for r in runs)
    broker = statistics.median(float(r.details.get("broker_cpu_us_per_event", 0)) for r in runs)
    return (
        f"valid {good}/{len(runs)}, {duplicated} duplicated; "
        f"CPU/event relay {relay:.0f} us, broker {broker:.0f} us"
    )


def not_run(reason: str) -> Row:
    """The row that says why the pair did not run (a requested target left unchecked)."""
    return Row(
        "effectively-once vs at-least-once: NOT RUN", 0, 0.0, 0.0, ratio=reason[:120], met=False
    )


def run_pair(
    rig: Rig,
    args: argparse.Namespace,
    timeout: float,
    measure: Callable[[str, Callable[[], Run]], Run],
    say: Callable[[str], None],
) -> list[Row]:
    """Start Apache Pulsar, ``measure`` the pair ``args.reps`` times (interleaved) with
    ``args.events`` and ``args.max_in_flight``; its rows, or one saying why it did not run."""
    runs: dict[str, list[Run]] = {}
    try:
        with apache_rig(rig) as apache:
            pair = scenarios(apache, args.events, timeout, args.max_in_flight)
            # The broker's JIT compiles its hot paths during the first drains (its CPU per
            # event fell 2-3x over three repetitions): one pair first, not counted.
            for name, one in pair:
                warm = one()
                say(f"  warm-up {name}: {warm.rate:,.0f}/s (not counted)")
            for rep in range(args.reps):
                say(f"effectively-once on Apache Pulsar: repetition {rep + 1}/{args.reps}")
                for name, one in pair:
                    runs.setdefault(name, []).append(measure(name, one))
            if args.profile:
                _profile(apache, args.events, timeout, args.max_in_flight, say)
    except Unavailable as exc:
        say(f"effectively_once: NOT RUN. {exc}")
        return [not_run(str(exc))]
    return rows(runs)


def _profile(
    apache: ApacheRig, events: int, timeout: float, max_in_flight: int, say: Callable[[str], None]
) -> None:
    """Each row once more under py-spy (all threads), summarised beside the raw samples."""
    if profiler.py_spy() is None:
        say("profile: skipped, py-spy is not installed (.venv/bin/pip install py-spy)")
        return
    for name, delivery, dedup in ROWS:
        raw = RESULTS / f"profile-{name}.raw"
        run = bridge_drain(
            apache, name, delivery, dedup, events, timeout, max_in_flight, profile=raw
        )
        text = profiler.render(profiler.summarize(raw, events=run.events))
        (RESULTS / f"profile-{name}.txt").write_text(text)
        say(f"profile of {name} ({run.rate:,.0f}/s), also in {RESULTS / f'profile-{name}.txt'}:")
        say(text)
