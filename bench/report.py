"""Medians, ratios and targets of one benchmark run; the printed table and the JSON.

Every ratio is taken between medians of the same run (same broker, same machine load),
as issue #7 asks. A scenario that did not finish within its time bound still reports
what it did, and its targets count as not met.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench import capacity
from bench.scenarios import BATCH, LINGER_MS, Run

# Peak RSS of the 1M backlog may exceed the small backlog's by this much and still count
# as "not growing with backlog size" (allocator noise, not a per-event leak).
GROWTH_TOLERANCE = 0.10
MAX_RSS_MB = 200.0
# The adaptive limit against an endpoint of capacity C: this share of C x batch / latency
# (a round trip pays both HTTP stacks on top of the 50 ms), with at most this share of 429s.
CAPACITY_MIN_RATIO = 0.90
CAPACITY_MAX_429 = 0.02
# After the capacity is halved, the limit is at or below C/2 within this many seconds.
HALVING_MAX_S = 5.0


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    scenario: str
    events: int
    seconds: float
    rate: float
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass(frozen=True)
class Median:
    """The median repetition of a scenario: events, seconds and events/s."""

    events: int
    seconds: float
    rate: float
    complete: bool

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Median:
        """Over the repetitions that finished; ``complete`` only if every one did."""
        finished = [r for r in runs if r.complete] or list(runs)
        return cls(
            events=int(statistics.median(r.events for r in finished)),
            seconds=statistics.median(r.seconds for r in finished),
            rate=statistics.median(r.rate for r in finished),
            complete=all(r.complete for r in runs),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate, 1),
            "complete": self.complete,
        }


def _row(label: str, median: Median, **extra: Any) -> Row:
    return Row(label, median.events, median.seconds, median.rate, **extra)


def _latency(runs: Sequence[Run], key: str) -> float:
    return statistics.median(float(r.details["latency_ms"][key]) for r in runs)


def _peak_mb(run: Run) -> float:
    return float(run.details["memory"]["peak_rss_mb"])


def build(runs: Mapping[str, Sequence[Run]], settings: Mapping[str, Any]) -> list[Row]:
    """The table rows for whichever scenarios ran."""
    medians = {name: Median.of(r) for name, r in runs.items() if r}
    rows: list[Row] = []
    ceiling = medians.get("ceiling")
    instant = medians.get("bridge_instant")
    if ceiling:
        rows.append(_row("ceiling: bare relay, no HTTP", ceiling))
    if instant:
        label = f"bridge, instant endpoint (batch {BATCH}, in flight {settings['max_in_flight']})"
        if ceiling:
            ratio = instant.rate / ceiling.rate
            ok = ratio >= 0.80 and instant.complete and ceiling.complete
            rows.append(
                _row(label, instant, ratio=f"{ratio:.2f} x ceiling", target=">= 0.80", met=ok)
            )
        else:
            rows.append(_row(label, instant))
    slow = medians.get("bridge_50ms")
    if slow:
        capacity = settings["slow_in_flight"] * BATCH / (settings["slow_latency_ms"] / 1000)
        ratio = slow.rate / capacity
        rows.append(
            _row(
                f"bridge, {settings['slow_latency_ms']:.0f} ms endpoint "
                f"(in flight {settings['slow_in_flight']})",
                slow,
                ratio=f"{ratio:.2f} x {capacity:,.0f}/s",
                target=">= 0.95 (Little)",
                met=ratio >= 0.95 and slow.complete,
            )
        )
    probe = medians.get("endpoint_50ms")
    if probe:
        rows.append(
            _row(
                f"  reference: bare httpx client, {settings['slow_in_flight']} in flight",
                probe,
                ratio=f"bridge {slow.rate / probe.rate:.2f} x" if slow else "",
            )
        )
    naive = medians.get("naive")
    if naive:
        extra: dict[str, Any] = {}
        if instant:
            ratio = instant.rate / naive.rate if naive.rate else float("inf")
            extra = {"ratio": f"bridge {ratio:.1f} x", "target": ">= 30", "met": ratio >= 30}
        rows.append(_row("naive: one event at a time, sync", naive, **extra))
    if runs.get("latency"):
        latency_runs = runs["latency"]
        p50, p99 = _latency(latency_runs, "p50"), _latency(latency_runs, "p99")
        steady = _latency(latency_runs, "p99_after_first_second")
        budget = LINGER_MS + 10
        rate = statistics.median(float(r.details["target_rate"]) for r in latency_runs)
        rows.append(
            _row(
                f"latency at half max ({rate:,.0f}/s paced)",
                medians["latency"],
                ratio=f"p50 {p50:.1f} / p99 {p99:.1f} ms ({steady:.1f} after 1st s)",
                target=f"p99 added <= {budget:.0f} ms",
                met=p99 <= budget and medians["latency"].complete,
            )
        )
    rows += _memory_rows(runs)
    rows += _capacity_rows(runs, settings["capacity"])
    return rows


def _median_detail(runs: Sequence[Run], key: str) -> float | None:
    values = [float(r.details[key]) for r in runs if r.details.get(key) is not None]
    return statistics.median(values) if values else None


def _capacity_rows(runs: Mapping[str, Sequence[Run]], c: int) -> list[Row]:
    """Adaptive vs fixed limits against capacity ``c``, then the halving of ``c``."""
    rows: list[Row] = []
    ideal = capacity.little(c)
    for limiting in capacity.ROWS:
        row_runs = runs.get(limiting.scenario)
        if not row_runs:
            continue
        median = Median.of(row_runs)
        ratio = median.rate / ideal
        share = _median_detail(row_runs, "share_429") or 0.0
        extra: dict[str, Any] = {"ratio": f"{ratio:.2f} x {ideal:,.0f}/s, 429s {share:.1%}"}
        if limiting.concurrency == "adaptive":
            extra["target"] = f">= {CAPACITY_MIN_RATIO:.2f}, 429s <= {CAPACITY_MAX_429:.0%}"
            extra["met"] = (
                ratio >= CAPACITY_MIN_RATIO and share <= CAPACITY_MAX_429 and median.complete
            )
        limit = f"{limiting.capacity_multiple * c}"
        label = "adaptive, ceiling " if limiting.concurrency == "adaptive" else "fixed "
        rows.append(_row(f"capacity {c} at once, 50 ms: {label}{limit}", median, **extra))
    probe = runs.get("endpoint_capacity")
    if probe:
        median = Median.of(probe)
        adaptive = runs.get(capacity.ROWS[0].scenario)
        ratio_text = f"{median.rate / ideal:.2f} x {ideal:,.0f}/s"
        if adaptive:
            ratio_text += f"; adaptive {Median.of(adaptive).rate / median.rate:.2f} x"
        rows.append(
            _row(f"  reference: bare httpx client, {c} in flight", median, ratio=ratio_text)
        )
    halved = runs.get("capacity_halved")
    if halved:
        median = Median.of(halved)
        reaction = [r.details.get("reaction_s") for r in halved]
        # A repetition whose limit never came down counts as slower than any that did.
        seconds = statistics.median(float("inf") if s is None else float(s) for s in reaction)
        above = all((r.details.get("limit_at_halving") or 0) > c // 2 for r in halved)
        after = _median_detail(halved, "rate_after_halving")
        half_ideal = capacity.little(c // 2)
        reached = f"limit <= {c // 2} after {seconds:.2f} s"
        if after is not None:
            reached += f"; then {after / half_ideal:.2f} x {half_ideal:,.0f}/s"
        rows.append(
            _row(
                f"capacity halved {c} -> {c // 2} mid-run (adaptive)",
                median,
                ratio=reached,
                target=f"<= {HALVING_MAX_S:.0f} s",
                met=seconds <= HALVING_MAX_S and above and median.complete,
            )
        )
    return rows


def _memory_rows(runs: Mapping[str, Sequence[Run]]) -> list[Row]:
    small, large = runs.get("memory_small"), runs.get("memory_large")
    rows: list[Row] = []
    if small:
        peak = _peak_mb(small[0])
        rows.append(
            _row(
                f"memory: backlog {small[0].events:,}",
                Median.of(small),
                ratio=f"peak RSS {peak:.0f} MB",
                target=f"< {MAX_RSS_MB:.0f} MB",
                met=peak < MAX_RSS_MB and small[0].complete,
            )
        )
    if large:
        peak = _peak_mb(large[0])
        ok = peak < MAX_RSS_MB and large[0].complete
        ratio = f"peak RSS {peak:.0f} MB"
        target = f"< {MAX_RSS_MB:.0f} MB"
        if small:
            growth = peak - _peak_mb(small[0])
            ratio += f" ({growth:+.0f})"
            target += ", flat"
            ok = ok and growth <= GROWTH_TOLERANCE * _peak_mb(small[0])
        rows.append(
            _row(
                f"memory: backlog {large[0].events:,}",
                Median.of(large),
                ratio=ratio,
                target=target,
                met=ok,
            )
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = ("scenario", "events", "seconds", "events/s", "ratio", "target", "met?")
    cells = [header] + [
        (
            r.scenario,
            f"{r.events:,}",
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            r.ratio,
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    numeric = {1, 2, 3}
    lines = []
    for n, cell in enumerate(cells):
        parts = [
            c.rjust(widths[i]) if i in numeric and n else c.ljust(widths[i])
            for i, c in enumerate(cell)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def as_json(
    runs: Mapping[str, Sequence[Run]],
    rows: Sequence[Row],
    meta: Mapping[str, Any],
    failed: Mapping[str, Sequence[Run]],
) -> dict[str, Any]:
    """Everything: settings, each repetition, medians, target verdicts, repeated attempts."""
    return {
        "meta": dict(meta),
        "table": [
            {
                "scenario": r.scenario,
                "events": r.events,
                "seconds": round(r.seconds, 3),
                "events_per_s": round(r.rate, 1),
                "ratio": r.ratio,
                "target": r.target,
                "met": r.met,
            }
            for r in rows
        ],
        "scenarios": {
            name: {
                "median": Median.of(scenario_runs).as_json(),
                "runs": [r.as_json() for r in scenario_runs],
                "failed_attempts": [r.as_json() for r in failed.get(name, ())],
            }
            for name, scenario_runs in runs.items()
            if scenario_runs
        },
    }


def load_note(runs: Mapping[str, Sequence[Run]]) -> str:
    """One line on what else ran: on a shared 2-core machine it decides the numbers."""
    all_runs = [r for scenario_runs in runs.values() for r in scenario_runs]
    if not all_runs:
        return "no scenario ran"
    other = statistics.median(r.cpu_cores.get("other", 0.0) for r in all_runs)
    busiest = max(r.cpu_cores.get("other", 0.0) for r in all_runs)
    per_event = {
        name: statistics.median(r.relay_cpu_us_per_event for r in scenario_runs)
        for name, scenario_runs in runs.items()
        if scenario_runs
        and (
            name in ("ceiling", "bridge_instant", "bridge_50ms", "naive")
            or name.startswith(("capacity", "eo_"))
        )
    }
    costs = ", ".join(f"{name} {us:.0f}" for name, us in per_event.items())
    return (
        f"CPU of processes outside the benchmark during the runs: median {other:.2f} cores, "
        f"max {busiest:.2f}.\nRelay CPU per event (us, all threads): {costs}."
    )
