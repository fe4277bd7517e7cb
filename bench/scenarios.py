"""The measured scenarios: each returns one :class:`Run` on the shared :class:`Rig`.

Method, the same for every throughput scenario: a fresh source topic is pre-filled with N
1 KB events by a batching producer; a result reader (its own process) subscribes to the
result topic; the relay under test starts as its own process and the clock starts when
it says it is ready (the bridge's ``ready`` log line, the helpers' ``ready``); the clock
stops at the reader's arrival time of the N-th result. So seconds = drain time of a
backlog, start-up excluded, and the reader's cost (0.05-0.15 of a core) is paid by the
ceiling and the bridge alike. Counting results in the bridge itself (its
``route_stopped`` summary or its metrics endpoint) would be cheaper but only readable at
the end or by polling the process being measured; the summary is still read afterwards
to check that every event was settled once.
"""

from __future__ import annotations

import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile as profiler
from bench.payload import prefill
from bench.procs import Bridge, BrokerProcess, CpuWindow, MemorySampler, Worker
from tests.support.harness import Topics, route_config, write_config

BATCH = 100
LINGER_MS = 20.0
ENDPOINT = "fraud-model"


@dataclass(frozen=True)
class Emulator:
    """An emulator process: its base URL, process id and configured latency."""

    url: str
    pid: int
    latency_ms: float


@dataclass(frozen=True)
class Rig:
    """What every scenario shares: one broker, a client to pre-fill it, two emulators."""

    broker: BrokerProcess
    client: Any
    instant: Emulator
    slow: Emulator
    workdir: Path

    @property
    def broker_pid(self) -> int:
        pid = self.broker.pid
        assert pid is not None, "the broker is not running"
        return pid


@dataclass
class Run:
    """One measured repetition of one scenario."""

    scenario: str
    events: int
    seconds: float
    cpu_cores: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def relay_cpu_us_per_event(self) -> float:
        """CPU the relay under test spent per event (all its threads), in microseconds."""
        if not self.events:
            return 0.0
        return self.cpu_cores.get("relay", 0.0) * self.seconds / self.events * 1e6

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate, 1),
            "complete": self.complete,
            "relay_cpu_us_per_event": round(self.relay_cpu_us_per_event, 1),
            "cpu_cores": self.cpu_cores,
            **self.details,
        }


@dataclass
class Started:
    """A relay under test that has said it is ready."""

    pid: int
    stop: Callable[[], dict[str, Any]]  # stops it; returns what it reports at the end
    metrics_url: str | None = None  # the bridge's Prometheus endpoint


@contextmanager
def running_emulator(latency_ms: float, capacity: int | None = None) -> Iterator[Emulator]:
    """An emulator process for as long as the block runs (``capacity``: 429 beyond it)."""
    args = ["--latency-ms", str(latency_ms)]
    worker = Worker("emulator", args if capacity is None else [*args, "--capacity", str(capacity)])
    try:
        ready = worker.wait_for("ready", 30)
        yield Emulator(ready["url"], worker.pid, latency_ms)
    finally:
        worker.stop()


def _reader(rig: Rig, topic: str, count: int, timeout: float, *, latency: bool = False) -> Worker:
    args = ["--service-url", rig.broker.url, "--topic", topic, "--count", str(count)]
    args += ["--timeout", str(timeout)]
    reader = Worker("reader", [*args, "--latency"] if latency else args)
    reader.wait_for("subscribed", 30)
    return reader


def drain(
    rig: Rig,
    scenario: str,
    events: int,
    timeout: float,
    start: Callable[[Topics], Started],
    *,
    extra_pids: Mapping[str, int] | None = None,
    topics: Topics | None = None,
) -> Run:
    """Pre-fill, start the relay, time it from ready to the last result read back."""
    topics = topics or Topics()
    prefill_s = prefill(rig.client, topics.source, events)
    reader = _reader(rig, topics.result, events, timeout)
    started: Started | None = None
    try:
        started = start(topics)
        t0 = time.monotonic()
        pids = {"relay": started.pid, "broker": rig.broker_pid, "reader": reader.pid}
        cpu = CpuWindow({**pids, **(extra_pids or {})})
        done = reader.wait_for("done", timeout + 30)
        cores = cpu.finish()
        report = started.stop()
    finally:
        if started is not None:
            started.stop()
        reader.stop()
    last = done["last"] if done["last"] is not None else time.monotonic()
    return Run(
        scenario,
        events=done["count"] if done["timed_out"] else events,
        seconds=last - t0,
        cpu_cores=cores,
        details={
            "prefill_s": round(prefill_s, 2),
            "reader_duplicates": done["duplicates"],
            "stalled": done["stalled"],
            **report,
        },
        complete=not done["timed_out"],
    )


# --------------------------------------------------------------------------- helpers' relays


def _helper(module: str, args: list[str]) -> Started:
    worker = Worker(module, args)
    worker.wait_for("ready", 60)
    report: dict[str, Any] = {}

    def stop() -> dict[str, Any]:
        if not report:
            try:
                report["relayed"] = worker.wait_for("done", 10)["count"]
            except RuntimeError:
                report["relayed"] = None
            worker.stop()
        return report

    return Started(worker.pid, stop)


def ceiling(rig: Rig, events: int, timeout: float) -> Run:
    """The bare relay of :mod:`bench.ceiling` on ``events`` events."""

    def start(topics: Topics) -> Started:
        return _helper(
            "ceiling",
            [
                *("--service-url", rig.broker.url, "--source", topics.source),
                *("--subscription", topics.subscription, "--result", topics.result),
                *("--count", str(events), "--timeout", str(timeout)),
            ],
        )

    return drain(rig, "ceiling", events, timeout, start)


def naive(rig: Rig, events: int, timeout: float) -> Run:
    """The per-event synchronous script of :mod:`bench.naive` against the instant endpoint."""
    url = f"{rig.instant.url}/serving-endpoints/{ENDPOINT}/invocations"

    def start(topics: Topics) -> Started:
        return _helper(
            "naive",
            [
                *("--service-url", rig.broker.url, "--source", topics.source),
                *("--subscription", topics.subscription, "--result", topics.result),
                *("--endpoint-url", url, "--count", str(events), "--timeout", str(timeout)),
            ],
        )

    return drain(rig, "naive", events, timeout, start, extra_pids={"emulator": rig.instant.pid})


def endpoint_probe(
    rig: Rig, emulator: Emulator, events: int, concurrency: int, scenario: str = "endpoint_50ms"
) -> Run:
    """:mod:`bench.endpoint_probe`: what ``concurrency`` bare requests of BATCH get."""
    url = f"{emulator.url}/serving-endpoints/{ENDPOINT}/invocations"
    worker = Worker(
        "endpoint_probe",
        [
            *("--endpoint-url", url, "--concurrency", str(concurrency)),
            *("--requests", str(max(1, events // BATCH)), "--batch", str(BATCH)),
        ],
    )
    try:
        worker.wait_for("ready", 60)
        cpu = CpuWindow({"relay": worker.pid, "emulator": emulator.pid})
        done = worker.wait_for("done", 30 + events / 1000)
        cores = cpu.finish()
    finally:
        worker.stop()
    return Run(
        scenario,
        events=done["count"],
        seconds=done["seconds"],
        cpu_cores=cores,
        details={"request_ms_p50": done["p50_ms"]},
    )


# --------------------------------------------------------------------------- the bridge


@dataclass(frozen=True)
class BridgeOptions:
    """How one bridge scenario runs the bridge and what it watches while it works."""

    emulator: Emulator
    max_in_flight: int
    concurrency: str | None = None  # "adaptive" | "fixed"; None: the shipped default
    sample_memory: bool = False
    profile: Path | None = None  # py-spy raw output path
    profile_gil: bool = False  # only samples holding the GIL
    route: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # more route keys
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # bridge.toml


def _bridge_config(rig: Rig, topics: Topics, options: BridgeOptions) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="bridge-", dir=rig.workdir))
    route = route_config(
        topics,
        endpoint={
            "name": ENDPOINT,
            "max_in_flight": options.max_in_flight,
            **({} if options.concurrency is None else {"concurrency": options.concurrency}),
        },
        batch={"max_events": BATCH, "linger_ms": LINGER_MS},
        result={"topic": topics.result, "passthrough": ["id", "ts"]},
    )
    for section, values in options.route.items():
        route.setdefault(section, {}).update(values)
    return write_config(
        directory,
        service_url=rig.broker.url,
        databricks={"host": options.emulator.url, "auth_type": "none"},
        routes={"bench": route},
        extra=options.settings,
    )


def _bridge_report(bridge: Bridge) -> dict[str, Any]:
    stopped = bridge.events("route_stopped")
    # Effectively-once batches are "handed_in" (their results are stored in source order).
    batches = [b for b in bridge.events("batch") if b.get("outcome") in ("ok", "handed_in")]
    latencies = sorted(float(b["latency_ms"]) for b in batches)
    sizes = [int(b["size"]) for b in batches]
    return {
        "summary": stopped[0] if stopped else None,
        "batches": len(batches),
        "mean_batch": round(statistics.fmean(sizes), 1) if sizes else None,
        "request_ms_p50": latencies[len(latencies) // 2] if latencies else None,
        "request_ms_p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


def start_bridge(rig: Rig, topics: Topics, options: BridgeOptions) -> Started:
    """The bridge as in production, plus the optional memory sampler and profiler."""
    bridge = Bridge(_bridge_config(rig, topics, options))
    bridge.start()
    bridge.wait_ready(timeout=60)
    listening = bridge.events("http_listening")
    memory = MemorySampler(bridge.pid) if options.sample_memory else None
    spy = (
        None
        if options.profile is None
        else profiler.start(bridge.pid, options.profile, gil=options.profile_gil)
    )
    report: dict[str, Any] = {}

    def stop() -> dict[str, Any]:
        if report:
            return report
        if memory is not None:
            report["memory"] = memory.finish()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            _, err = spy.communicate(timeout=60)
            report["profile_stderr"] = err.decode(errors="replace")[-500:]
        code = bridge.stop(timeout=60)
        bridge.kill()
        report.update(_bridge_report(bridge), exit_code=code)
        return report

    return Started(bridge.pid, stop, str(listening[0]["url"]) + "/metrics" if listening else None)


def settled_once(run: Run, events: int) -> bool:
    """Whether the bridge's own summary agrees: every event consumed once (pulsar-lite
    redelivers what is acked late), one result each, nothing nacked or dead-lettered."""
    summary = run.details.get("summary") or {}
    return bool(
        summary.get("events_in") == events
        and summary.get("results_out") == events
        and summary.get("nacked") == 0
        and summary.get("dead_lettered") == 0
    )


def bridge_drain(
    rig: Rig, scenario: str, events: int, timeout: float, options: BridgeOptions
) -> Run:
    """The bridge draining a backlog of ``events`` through ``options.emulator``
    (``settled_once`` in its details, see :func:`settled_once`)."""
    run = drain(
        rig,
        scenario,
        events,
        timeout,
        lambda topics: start_bridge(rig, topics, options),
        extra_pids={"emulator": options.emulator.pid},
    )
    run.details["settled_once"] = settled_once(run, events)
    return run


def latency(rig: Rig, rate: float, seconds: float, max_in_flight: int) -> Run:
    """A paced producer at ``rate`` for ``seconds``; publish -> result latency per event."""
    topics = Topics()
    count = max(1, int(rate * seconds))
    timeout = seconds + 60
    reader = _reader(rig, topics.result, count, timeout, latency=True)
    options = BridgeOptions(rig.instant, max_in_flight)
    bridge: Started | None = None
    pacer: Worker | None = None
    try:
        bridge = start_bridge(rig, topics, options)
        pacer = Worker(
            "pacer",
            [
                *("--service-url", rig.broker.url, "--topic", topics.source),
                *("--rate", str(rate), "--count", str(count)),
            ],
        )
        pacer.wait_for("ready", 60)
        t0 = time.monotonic()
        cpu = CpuWindow(
            {
                "relay": bridge.pid,
                "broker": rig.broker_pid,
                "reader": reader.pid,
                "emulator": rig.instant.pid,
                "pacer": pacer.pid,
            }
        )
        done = reader.wait_for("done", timeout + 30)
        cores = cpu.finish()
        paced = pacer.wait_for("done", 30)
        report = bridge.stop()
    finally:
        if pacer is not None:
            pacer.stop()
        if bridge is not None:
            bridge.stop()
        reader.stop()
    last = done["last"] if done["last"] is not None else time.monotonic()
    return Run(
        "latency",
        events=done["count"],
        seconds=last - t0,
        cpu_cores=cores,
        details={
            "target_rate": round(rate, 1),
            "paced_s": paced["seconds"],
            "latency_ms": done["latency_ms"],
            "p99_ms_by_second": done["p99_ms_by_second"],
            "reader_duplicates": done["duplicates"],
            "stalled": done["stalled"],
            **report,
        },
        complete=not done["timed_out"],
    )
