"""The capacity scenarios: the bridge against an endpoint that answers at most C at once.

Each run gets an emulator process of its own (latency 50 ms, the ``capacity`` fault at C:
an invocation beyond C concurrent ones gets 429 at once), so its counters and its
capacity belong to that run alone; the backlog, reader and clock are those of every
throughput scenario (:func:`bench.scenarios.drain`).

* :func:`capacity_drain`: one row per way of limiting concurrency (:data:`ROWS`): the
  adaptive limit with a ceiling of 4C, well above capacity, and fixed limits of C and 2C.
  The share of requests answered 429 comes from the emulator's counters
  (``GET /_emulator/stats``) after the run. The bridge's ``/metrics`` is read every
  :data:`TRACE_INTERVAL_S` for the limit over time: two small GETs a second, the same
  for every row. For reference, :func:`capacity_reference` keeps exactly C requests in
  flight from a bare httpx client (:mod:`bench.endpoint_probe`): what any client gets
  from that endpoint on this machine, the round trips' HTTP cost included.
* :func:`capacity_halved`: the adaptive bridge, and once a quarter of the results are in
  and the limit is above C/2, the capacity is halved through ``PUT /_emulator/faults``.
  ``/metrics`` is read every :data:`HALVING_POLL_S`; the reaction is the time from just
  before that PUT to the first answer showing ``bridge_endpoint_concurrency_limit`` at
  or below C/2 (so it includes up to one poll interval).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.scenarios import (
    BATCH,
    ENDPOINT,
    BridgeOptions,
    Emulator,
    Rig,
    Run,
    Started,
    drain,
    endpoint_probe,
    running_emulator,
    settled_once,
    start_bridge,
)
from tests.support.harness import Topics

LATENCY_MS = 50.0
TRACE_INTERVAL_S = 0.5
HALVING_POLL_S = 0.1


@dataclass(frozen=True)
class Limiting:
    """How one capacity row limits concurrency: a multiple of the endpoint's capacity."""

    scenario: str
    concurrency: str  # "adaptive" | "fixed"
    capacity_multiple: int  # max_in_flight = capacity_multiple x C


ROWS = (
    Limiting("capacity_adaptive", "adaptive", 4),
    Limiting("capacity_fixed_c", "fixed", 1),
    Limiting("capacity_fixed_2c", "fixed", 2),
)


def little(capacity: int) -> float:
    """Events/s an endpoint of ``capacity`` at once can answer: C x batch / latency."""
    return capacity * BATCH / (LATENCY_MS / 1000)


# --------------------------------------------------------------------------- observing


@dataclass(frozen=True)
class Sample:
    """One reading of the bridge's ``/metrics``; ``t`` is when the answer arrived."""

    t: float
    limit: float | None
    in_flight: float | None
    results_out: float
    requests: float
    rejected_429: float


def parse_metrics(text: str, t: float, endpoint: str = ENDPOINT) -> Sample:
    """The series the capacity scenarios watch, out of a Prometheus text page."""
    gauges: dict[str, float] = {}
    results = requests = rejected = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("bridge_endpoint_concurrency_limit", "bridge_endpoint_in_flight"):
                if s.labels.get("endpoint") == endpoint:
                    gauges[s.name] = s.value
            elif s.name == "bridge_results_out_total":
                results += s.value
            elif s.name == "bridge_requests_total":
                requests += s.value
                rejected += s.value if s.labels.get("status") == "429" else 0.0
    return Sample(
        t,
        gauges.get("bridge_endpoint_concurrency_limit"),
        gauges.get("bridge_endpoint_in_flight"),
        results,
        requests,
        rejected,
    )


class MetricsPoller:
    """Reads ``url`` every ``interval_s`` on a thread; ``on_sample`` sees each reading there.

    A failed read is counted and skipped: the bridge may be stopping.
    """

    def __init__(
        self,
        url: str,
        interval_s: float,
        on_sample: Callable[[Sample], None] | None = None,
    ) -> None:
        self.samples: list[Sample] = []
        self.failed_reads = 0
        self._url = url
        self._interval_s = interval_s
        self._on_sample = on_sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as http:
            while True:
                try:
                    text = http.get(self._url).raise_for_status().text
                except httpx.HTTPError:
                    self.failed_reads += 1
                else:
                    sample = parse_metrics(text, time.monotonic())
                    self.samples.append(sample)
                    if self._on_sample is not None:
                        self._on_sample(sample)
                if self._stop.wait(self._interval_s):
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def trace(samples: list[Sample], t0: float) -> list[list[float | None]]:
    """``[seconds since t0, limit, in flight, results]`` per reading, for the JSON."""
    return [
        [round(s.t - t0, 2), s.limit, s.in_flight, int(s.results_out)] for s in samples if s.t >= t0
    ]


def emulator_counts(emulator: Emulator) -> dict[str, Any]:
    """Invocations of the endpoint by status, as the emulator counted them."""
    stats = httpx.get(f"{emulator.url}/_emulator/stats", timeout=10).raise_for_status().json()
    by_status = {int(k): int(v) for k, v in stats["endpoints"][ENDPOINT]["by_status"].items()}
    total = sum(by_status.values())
    return {
        "requests": total,
        "by_status": {str(k): v for k, v in sorted(by_status.items())},
        "share_429": by_status.get(429, 0) / total if total else 0.0,
        "rejected_over_capacity": stats["rejected_over_capacity"],
        "peak_admitted_in_progress": stats["peak_admitted_in_progress"],
    }


def set_capacity(emulator: Emulator, capacity: int) -> None:
    response = httpx.put(f"{emulator.url}/_emulator/faults", json={"capacity": capacity})
    response.raise_for_status()


# --------------------------------------------------------------------------- the runs


@dataclass
class _Watched:
    """The bridge of one run and the poller reading its metrics from ready on."""

    poller: MetricsPoller | None = None
    ready_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)


def _watched_drain(
    rig: Rig,
    scenario: str,
    events: int,
    timeout: float,
    options: BridgeOptions,
    interval_s: float,
    on_sample: Callable[[Sample], None] | None = None,
) -> tuple[Run, _Watched]:
    """:func:`bench.scenarios.drain` of the bridge with its ``/metrics`` read throughout."""
    watched = _Watched()

    def start(topics: Topics) -> Started:
        started = start_bridge(rig, topics, options)
        watched.ready_at = time.monotonic()
        if started.metrics_url is None:
            raise RuntimeError("the bridge did not log http_listening; no /metrics to read")
        poller = MetricsPoller(started.metrics_url, interval_s, on_sample)
        watched.poller = poller

        def stop() -> dict[str, Any]:
            poller.stop()
            return started.stop()

        return Started(started.pid, stop, started.metrics_url)

    run = drain(
        rig, scenario, events, timeout, start, extra_pids={"emulator": options.emulator.pid}
    )
    run.details["settled_once"] = settled_once(run, events)
    if watched.poller is not None:
        watched.samples = list(watched.poller.samples)
        run.details["metrics_failed_reads"] = watched.poller.failed_reads
    return run, watched


def capacity_drain(rig: Rig, limiting: Limiting, events: int, timeout: float, capacity: int) -> Run:
    """The bridge limited as ``limiting`` says, draining ``events`` through capacity C."""
    with running_emulator(LATENCY_MS, capacity) as emulator:
        options = BridgeOptions(
            emulator, limiting.capacity_multiple * capacity, concurrency=limiting.concurrency
        )
        run, watched = _watched_drain(
            rig, limiting.scenario, events, timeout, options, TRACE_INTERVAL_S
        )
        counts = emulator_counts(emulator)
    limits = [s.limit for s in watched.samples if s.limit is not None]
    run.details.update(
        capacity=capacity,
        concurrency=limiting.concurrency,
        max_in_flight=options.max_in_flight,
        emulator=counts,
        share_429=counts["share_429"],
        limit_median=sorted(limits)[len(limits) // 2] if limits else None,
        limit_trace=trace(watched.samples, watched.ready_at),
    )
    return run


def capacity_reference(rig: Rig, events: int, capacity: int) -> Run:
    """A bare httpx client keeping exactly C requests in flight on an endpoint of capacity C."""
    with running_emulator(LATENCY_MS, capacity) as emulator:
        run = endpoint_probe(rig, emulator, events, capacity, scenario="endpoint_capacity")
        counts = emulator_counts(emulator)
    run.details.update(emulator=counts, share_429=counts["share_429"])
    return run


class Halving:
    """Halves the endpoint's capacity once the run is under way, then times the reaction.

    Called with each ``/metrics`` reading on the poller's thread. It halves once a quarter
    of the results are in and the limit is above C/2 (else the reaction would be measured
    from a limit already there); at half of the results it halves regardless, and
    ``limit_at_halving`` shows why the time then means little.
    """

    def __init__(
        self,
        set_capacity: Callable[[int], None],
        capacity: int,
        events: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._set_capacity = set_capacity
        self._events = events
        self._clock = clock
        self.half = capacity // 2
        self.halved_at: float | None = None
        self.limit_at_halving: float | None = None
        self.reacted_at: float | None = None

    def __call__(self, sample: Sample) -> None:
        if self.halved_at is None:
            above = sample.limit is not None and sample.limit > self.half
            due = sample.results_out >= self._events / 4 and above
            if due or sample.results_out >= self._events / 2:
                self.limit_at_halving = sample.limit
                self.halved_at = self._clock()
                self._set_capacity(self.half)
        elif self.reacted_at is None and sample.limit is not None and sample.limit <= self.half:
            self.reacted_at = sample.t

    @property
    def reaction_s(self) -> float | None:
        if self.halved_at is None or self.reacted_at is None:
            return None
        return round(self.reacted_at - self.halved_at, 3)


def rate_after(samples: list[Sample], since: float, events: int) -> float | None:
    """Results per second from ``since`` until the backlog was drained, from the readings."""
    window = [s for s in samples if s.t >= since]
    if len(window) < 2:
        return None
    end = next((s for s in window if s.results_out >= events), window[-1])
    seconds = end.t - window[0].t
    return (end.results_out - window[0].results_out) / seconds if seconds > 0 else None


def capacity_halved(rig: Rig, events: int, timeout: float, capacity: int) -> Run:
    """The adaptive bridge (ceiling 4C) while the endpoint's capacity drops from C to C/2."""
    with running_emulator(LATENCY_MS, capacity) as emulator:
        halving = Halving(partial(set_capacity, emulator), capacity, events)
        options = BridgeOptions(emulator, 4 * capacity, concurrency="adaptive")
        run, watched = _watched_drain(
            rig, "capacity_halved", events, timeout, options, HALVING_POLL_S, halving
        )
        counts = emulator_counts(emulator)
    after = None
    if halving.halved_at is not None:
        after = rate_after(watched.samples, halving.halved_at, events)
    run.details.update(
        capacity=capacity,
        halved_to=halving.half,
        max_in_flight=options.max_in_flight,
        emulator=counts,
        share_429=counts["share_429"],
        halved_after_s=(
            None if halving.halved_at is None else round(halving.halved_at - watched.ready_at, 2)
        ),
        limit_at_halving=halving.limit_at_halving,
        reaction_s=halving.reaction_s,
        rate_after_halving=None if after is None else round(after, 1),
        limit_trace=trace(watched.samples, watched.ready_at),
    )
    return run
