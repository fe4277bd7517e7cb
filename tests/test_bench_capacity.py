"""The capacity benchmark's decisions without processes: reading the bridge's metrics,
when to halve the capacity and how the reaction is timed, and the rows' verdicts."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from bench import report
from bench.capacity import Halving, Sample, parse_metrics, rate_after
from bench.scenarios import Run
from bridge.observe import Metrics


def _sample(t: float, limit: float | None, results: float) -> Sample:
    return Sample(t, limit, None, results, 0.0, 0.0)


def test_parse_metrics_reads_the_series_the_bridge_exports() -> None:
    metrics = Metrics()
    metrics.endpoint_limit.labels("fraud-model").set(3)
    metrics.endpoint_limit.labels("other-model").set(9)
    metrics.endpoint_in_flight.labels("fraud-model").set(2)
    metrics.results_out.labels("bench").inc(500)
    metrics.requests.labels("bench", "200").inc(5)
    metrics.requests.labels("bench", "429").inc(2)

    sample = parse_metrics(generate_latest(metrics.registry).decode(), t=1.5)

    assert sample == Sample(1.5, 3.0, 2.0, 500.0, 7.0, 2.0)


def test_parse_metrics_without_the_endpoint_has_no_limit() -> None:
    sample = parse_metrics(generate_latest(Metrics().registry).decode(), t=0.0)

    assert (sample.limit, sample.results_out) == (None, 0.0)


class _Recorder:
    def __init__(self) -> None:
        self.capacities: list[int] = []
        self.now = 0.0

    def set_capacity(self, capacity: int) -> None:
        self.capacities.append(capacity)

    def clock(self) -> float:
        return self.now


def test_halving_waits_for_a_quarter_of_the_results_and_a_limit_above_half() -> None:
    endpoint = _Recorder()
    halving = Halving(endpoint.set_capacity, capacity=4, events=1000, clock=endpoint.clock)

    halving(_sample(0.1, 4.0, 100))  # too early
    halving(_sample(0.2, 2.0, 300))  # the limit is already at C/2: nothing to time
    assert endpoint.capacities == []

    endpoint.now = 0.3
    halving(_sample(0.3, 4.0, 400))
    assert endpoint.capacities == [2]
    assert (halving.halved_at, halving.limit_at_halving) == (0.3, 4.0)

    halving(_sample(0.4, 3.0, 500))
    assert halving.reaction_s is None
    halving(_sample(0.55, 2.0, 600))
    halving(_sample(0.65, 1.0, 700))  # the first reading at C/2 counts, not later ones
    assert halving.reaction_s == 0.25
    assert endpoint.capacities == [2]


def test_halving_at_half_of_the_results_regardless_of_the_limit() -> None:
    endpoint = _Recorder()
    halving = Halving(endpoint.set_capacity, capacity=4, events=1000, clock=endpoint.clock)

    halving(_sample(0.1, 2.0, 500))

    assert endpoint.capacities == [2]
    assert halving.limit_at_halving == 2.0


def test_rate_after_counts_until_the_backlog_is_drained() -> None:
    samples = [
        _sample(0.0, 4.0, 0),
        _sample(1.0, 2.0, 100),
        _sample(2.0, 2.0, 300),
        _sample(3.0, 2.0, 500),
        _sample(4.0, 2.0, 500),  # idle after the last result: not part of the rate
    ]

    assert rate_after(samples, since=1.0, events=500) == 200.0


def _run(scenario: str, rate: float, complete: bool = True, **details: Any) -> Run:
    return Run(scenario, 1000, 1000 / rate, {}, dict(details), complete)


def _verdicts(runs: dict[str, list[Run]]) -> dict[str, bool | None]:
    rows = report.build(runs, {"capacity": 4})
    return {row.scenario: row.met for row in rows}


def test_adaptive_row_needs_both_the_rate_and_few_429s() -> None:
    good = _run("capacity_adaptive", 7400, share_429=0.01)
    many_429 = _run("capacity_adaptive", 7400, share_429=0.05)
    slow = _run("capacity_adaptive", 7000, share_429=0.0)
    label = "capacity 4 at once, 50 ms: adaptive, ceiling 16"

    assert _verdicts({"capacity_adaptive": [good]}) == {label: True}
    assert _verdicts({"capacity_adaptive": [many_429]}) == {label: False}
    assert _verdicts({"capacity_adaptive": [slow]}) == {label: False}


def test_fixed_rows_carry_no_target() -> None:
    runs = {"capacity_fixed_c": [_run("capacity_fixed_c", 7000, share_429=0.0)]}

    assert _verdicts(runs) == {"capacity 4 at once, 50 ms: fixed 4": None}


def test_halved_row_is_met_only_when_the_limit_came_down_in_time_from_above() -> None:
    label = "capacity halved 4 -> 2 mid-run (adaptive)"

    def verdict(**details: Any) -> bool | None:
        return _verdicts({"capacity_halved": [_run("capacity_halved", 5000, **details)]})[label]

    assert verdict(reaction_s=0.4, limit_at_halving=4.0) is True
    assert verdict(reaction_s=6.0, limit_at_halving=4.0) is False
    assert verdict(reaction_s=None, limit_at_halving=4.0) is False
    assert verdict(reaction_s=0.0, limit_at_halving=2.0) is False
