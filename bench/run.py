"""``python -m bench.run [--quick] [--events N] [--reps R] [--profile]``: issue #7's benchmark.

One run starts one embedded pulsar-lite broker and two emulators (instant, and 50 ms)
and measures, each scenario in its own processes on that broker:

1. ceiling: a bare Python relay with no HTTP (:mod:`bench.ceiling`);
2. the bridge against the instant endpoint (batch 100);
3. the bridge against the 50 ms endpoint with ``max_in_flight`` 8, against Little's law
   (``max_in_flight * batch / latency`` = 16,000 events/s), and, for reference, a bare
   httpx client keeping 8 requests in flight on that endpoint (:mod:`bench.endpoint_probe`);
4. a naive per-event synchronous script (:mod:`bench.naive`);
5. publish -> result latency at half of the bridge's measured rate (:mod:`bench.pacer`);
6. the bridge's peak RSS while it drains a 1,000,000 and a 250,000 event backlog;
7. the bridge against an endpoint that answers at most C (``--capacity``, 4) requests at
   once in 50 ms and 429 beyond: the adaptive limit (ceiling 4C) against fixed limits C
   and 2C, and how fast the adaptive limit follows when C is halved mid-run
   (:mod:`bench.capacity`);
8. only when asked for (``--only effectively_once``: it starts Apache Pulsar, which needs
   Java): effectively-once result topics against at-least-once on the instant endpoint
   (:mod:`bench.effectively_once`).

Scenarios 1-4 and 7 repeat ``--reps`` times, interleaved so that a burst of load from elsewhere
on the machine hits all of them alike; the table shows medians and the ratios between
them. How the time is taken is in :mod:`bench.scenarios`. ``--profile`` adds two py-spy
recordings of the bridge in scenario 2 (all threads; GIL holder only), summarised by
:mod:`bench.profile`. A run that does not finish (pulsar-lite can stop dispatching to a
consumer) is repeated once. Results go to ``bench/results/latest.json`` (gitignored);
the exit status is 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import capacity, effectively_once, profile, report
from bench.payload import EVENT_BYTES, client
from bench.procs import Broker
from bench.scenarios import (
    BridgeOptions,
    Rig,
    Run,
    bridge_drain,
    ceiling,
    endpoint_probe,
    latency,
    naive,
    running_emulator,
)

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = (
    "ceiling",
    "bridge_instant",
    "bridge_50ms",
    "naive",
    "latency",
    "memory",
    "capacity",
    "capacity_halved",
)
# Run only when named in --only: Apache Pulsar needs a JDK, and make bench must not.
OPTIONAL = ("effectively_once",)
SLOW_LATENCY_MS = 50.0
SLOW_IN_FLIGHT = 8
ATTEMPTS = 2


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 rep (~1 min)")
    parser.add_argument("--events", type=int, help="backlog per throughput run (100,000)")
    parser.add_argument("--reps", type=int, help="repetitions of scenarios 1-5 (3)")
    parser.add_argument("--naive-events", type=int, help="events for the naive script (3,000)")
    parser.add_argument("--latency-seconds", type=float, help="paced seconds per rep (10)")
    parser.add_argument(
        "--memory-events",
        type=int,
        nargs=2,
        metavar=("SMALL", "LARGE"),
        help="backlogs of the memory scenario (250,000 1,000,000); 0 0 skips it",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=4, help="instant scenario (default 4, as shipped)"
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=4,
        help="requests the capacity scenarios' endpoint answers at once (default 4, >= 2)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the instant scenario")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(SCENARIOS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SCENARIOS + OPTIONAL)} (latency needs "
        "bridge_instant; effectively_once runs only when named)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "events": 30_000 if quick else 100_000,
        "reps": 1 if quick else 3,
        "naive_events": 500 if quick else 3_000,
        "latency_seconds": 3.0 if quick else 10.0,
        "memory_events": [25_000, 100_000] if quick else [250_000, 1_000_000],
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = args.only - set(SCENARIOS + OPTIONAL)
    if unknown:
        parser.error(f"unknown scenario(s) in --only: {', '.join(sorted(unknown))}")
    if args.capacity < 2:
        parser.error("--capacity must be at least 2 (it is halved)")
    return args


def _timeout(events: int, slowest_rate: float) -> float:
    """A run's time bound: the backlog at a rate far below any expected one, plus start-up."""
    return 30 + events / slowest_rate


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress(label: str, run: Run) -> None:
    cores = ", ".join(f"{k} {v:.2f}" for k, v in run.cpu_cores.items())
    status = "" if run.complete else "  INCOMPLETE (time bound reached)"
    if run.details.get("settled_once") is False:
        status += f"  NOT SETTLED ONCE: {run.details.get('summary')}"
    if "share_429" in run.details:
        status += f"  429s {run.details['share_429']:.1%}"
    if "reaction_s" in run.details:
        status += f", limit at C/2 after {run.details['reaction_s']} s"
    _say(
        f"  {label}: {run.events:,} events in {run.seconds:.2f} s = {run.rate:,.0f}/s, "
        f"relay CPU {run.relay_cpu_us_per_event:.0f} us/event  [cores: {cores}]{status}"
    )


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("pulsar-client", "pulsar-lite", "httpx", "uvicorn", "orjson", "structlog"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **_source_version(),
        "argv": sys.argv[1:],
        "quick": args.quick,
        "events": args.events,
        "reps": args.reps,
        "event_bytes": EVENT_BYTES,
        "naive_events": args.naive_events,
        "latency_seconds": args.latency_seconds,
        "memory_events": args.memory_events,
        "max_in_flight": args.max_in_flight,
        "slow_latency_ms": SLOW_LATENCY_MS,
        "slow_in_flight": SLOW_IN_FLIGHT,
        "capacity": args.capacity,
        "capacity_latency_ms": capacity.LATENCY_MS,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _source_version() -> dict[str, Any]:
    """The commit measured, and bridge/ files that differ from it (read-only git calls)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", *args],
                cwd=RESULTS.parent.parent,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain", "--", "bridge").splitlines()]
    return {"git_head": git("rev-parse", "HEAD") or None, "bridge_uncommitted": changed}


def _measure(
    name: str, measure: Callable[[], Run], runs: dict[str, list[Run]], failed: dict[str, list[Run]]
) -> Run:
    """Run a scenario; once more if it did not finish (a stalled broker, a busy machine).

    The incomplete attempt is kept apart in ``failed`` for the JSON; if the second one
    fails too it is the repetition's result, so the scenario shows as incomplete.
    """
    for attempt in range(ATTEMPTS):
        run = measure()
        _progress(name, run)
        if run.complete or attempt == ATTEMPTS - 1:
            runs[name].append(run)
            return run
        failed[name].append(run)
        _say(f"  {name}: did not finish (stalled: {run.details.get('stalled')}); once more")
    raise AssertionError("unreachable")


def _throughput(
    rig: Rig, args: argparse.Namespace, runs: dict[str, list[Run]], failed: dict[str, list[Run]]
) -> None:
    n = args.events
    scenarios: list[tuple[str, Callable[[], Run]]] = [
        ("ceiling", lambda: ceiling(rig, n, _timeout(n, 2000))),
        (
            "bridge_instant",
            lambda: bridge_drain(
                rig,
                "bridge_instant",
                n,
                _timeout(n, 1000),
                BridgeOptions(rig.instant, args.max_in_flight),
            ),
        ),
        (
            "bridge_50ms",
            lambda: bridge_drain(
                rig, "bridge_50ms", n, _timeout(n, 1000), BridgeOptions(rig.slow, SLOW_IN_FLIGHT)
            ),
        ),
        ("naive", lambda: naive(rig, args.naive_events, _timeout(args.naive_events, 50))),
    ]
    scenarios = [(name, measure) for name, measure in scenarios if name in args.only]
    if "bridge_50ms" in args.only:  # the reference the 50 ms scenario is read against
        probe = ("endpoint_50ms", lambda: endpoint_probe(rig, rig.slow, n, SLOW_IN_FLIGHT))
        scenarios.append(probe)
    scenarios += _capacity_scenarios(rig, args)
    for rep in range(args.reps if scenarios else 0):
        _say(f"repetition {rep + 1}/{args.reps}")
        for name, measure in scenarios:
            _measure(name, measure, runs, failed)


def _capacity_scenarios(rig: Rig, args: argparse.Namespace) -> list[tuple[str, Callable[[], Run]]]:
    """The capacity rows (adaptive, fixed C, fixed 2C) and the halving, as asked for."""
    n, c, timeout = args.events, args.capacity, _timeout(args.events, 1000)
    out: list[tuple[str, Callable[[], Run]]] = []
    if "capacity" in args.only:
        out += [
            (row.scenario, partial(capacity.capacity_drain, rig, row, n, timeout, c))
            for row in capacity.ROWS
        ]
        reference = partial(capacity.capacity_reference, rig, n, c)
        out.append(("endpoint_capacity", reference))
    if "capacity_halved" in args.only:
        out.append(("capacity_halved", partial(capacity.capacity_halved, rig, n, timeout, c)))
    return out


def _latency(
    rig: Rig, args: argparse.Namespace, runs: dict[str, list[Run]], failed: dict[str, list[Run]]
) -> None:
    measured = [r.rate for r in runs["bridge_instant"] if r.complete]
    if not measured:
        _say("latency: skipped, the instant scenario did not finish")
        return
    rate = statistics.median(measured) / 2
    _say(f"latency at half of {2 * rate:,.0f}/s")
    for _ in range(args.reps):
        run = _measure(
            "latency",
            lambda: latency(rig, rate, args.latency_seconds, args.max_in_flight),
            runs,
            failed,
        )
        _say(f"    publish -> result ms: {run.details['latency_ms']}")


def _memory(
    rig: Rig, args: argparse.Namespace, runs: dict[str, list[Run]], failed: dict[str, list[Run]]
) -> None:
    for name, events in zip(("memory_small", "memory_large"), args.memory_events, strict=True):
        if events <= 0:
            continue
        _say(f"memory: pre-filling and draining {events:,} events")
        options = BridgeOptions(rig.instant, args.max_in_flight, sample_memory=True)
        run = _measure(
            name,
            partial(bridge_drain, rig, name, events, _timeout(events, 1000), options),
            runs,
            failed,
        )
        _say(f"    {run.details['memory']}")


def _profile(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    if profile.py_spy() is None:
        _say("profile: skipped, py-spy is not installed (.venv/bin/pip install py-spy)")
        return {"skipped": "py-spy not installed"}
    out: dict[str, Any] = {}
    for kind, gil in (("all_threads", False), ("gil_holder", True)):
        raw = RESULTS / f"profile-{kind}.raw"
        options = BridgeOptions(rig.instant, args.max_in_flight, profile=raw, profile_gil=gil)
        run = bridge_drain(
            rig, f"profile_{kind}", args.events, _timeout(args.events, 1000), options
        )
        _progress(f"profiled ({kind})", run)
        summary = profile.summarize(raw, events=run.events)
        text = profile.render(summary)
        (RESULTS / f"profile-{kind}.txt").write_text(text)
        out[kind] = {"run": run.as_json(), **summary}
        _say(f"profile ({kind}), also in {RESULTS / f'profile-{kind}.txt'}:\n{text}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = _meta(args)
    runs: dict[str, list[Run]] = defaultdict(list)
    failed: dict[str, list[Run]] = defaultdict(list)
    profiles: dict[str, Any] = {}
    eo_rows: list[report.Row] = []
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pulsar-bench-"))
    broker = Broker(workdir / "broker")
    try:
        broker.start()
        pulsar_client = client(broker.url)
        with running_emulator(0) as instant, running_emulator(SLOW_LATENCY_MS) as slow:
            rig = Rig(broker, pulsar_client, instant, slow, workdir)
            _throughput(rig, args, runs, failed)
            if "latency" in args.only:
                _latency(rig, args, runs, failed)
            if "memory" in args.only:
                _memory(rig, args, runs, failed)
            if "effectively_once" in args.only:
                measure = partial(_measure, runs=runs, failed=failed)
                timeout = _timeout(args.events, 300)
                eo_rows = effectively_once.run_pair(rig, args, timeout, measure, _say)
            if args.profile:
                profiles = _profile(rig, args)
        pulsar_client.close()
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["wall_seconds"] = round(time.monotonic() - started, 1)
    settings = {
        "capacity": args.capacity,
        "max_in_flight": args.max_in_flight,
        "slow_in_flight": SLOW_IN_FLIGHT,
        "slow_latency_ms": SLOW_LATENCY_MS,
    }
    rows = report.build(runs, settings) + eo_rows
    result = report.as_json(runs, rows, meta, failed)
    if profiles:
        result["profile"] = profiles
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(rows))
    print(report.load_note(runs))
    print(f"\n{args.output} ({meta['wall_seconds']:.0f} s)")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
