"""The effectively-once benchmark's decisions without processes: which repetitions count,
the rows' verdict against at-least-once, reading results back, and what happens when
Apache Pulsar cannot run (the pair says so instead of failing the default run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import effectively_once as eo
from bench import run as bench_run
from bench.scenarios import Emulator, Rig, Run


def _run(scenario: str, rate: float, *, distinct: int = 1000, duplicated: int = 0) -> Run:
    events = 1000
    return Run(
        scenario,
        events=events,
        seconds=events / rate,
        cpu_cores={"relay": 0.5, "broker": 0.5},
        details={
            "settled_once": True,
            "read_back": {"distinct": distinct, "duplicated": duplicated},
            "broker_cpu_us_per_event": 100.0,
        },
    )


def test_a_repetition_counts_when_every_event_has_one_result() -> None:
    assert eo.valid(_run(eo.EFFECTIVELY_ONCE, 900))
    assert not eo.valid(_run(eo.EFFECTIVELY_ONCE, 900, distinct=999))
    assert not eo.valid(_run(eo.EFFECTIVELY_ONCE, 900, duplicated=1))
    unsettled = _run(eo.EFFECTIVELY_ONCE, 900)
    unsettled.details["settled_once"] = False
    assert not eo.valid(unsettled)


def test_at_least_once_may_store_a_result_twice_but_not_miss_one() -> None:
    assert eo.valid(_run(eo.AT_LEAST_ONCE, 900, duplicated=3))
    assert not eo.valid(_run(eo.AT_LEAST_ONCE, 900, distinct=999))


def test_effectively_once_meets_the_target_at_085_of_at_least_once_on_medians() -> None:
    alo = [_run(eo.AT_LEAST_ONCE, r) for r in (900, 1000, 1100)]
    rows = eo.rows({eo.AT_LEAST_ONCE: alo, eo.EFFECTIVELY_ONCE: [_run(eo.EFFECTIVELY_ONCE, 850)]})
    assert [row.met for row in rows] == [None, True]
    assert rows[1].ratio.startswith("0.85 x at-least-once")

    rows = eo.rows({eo.AT_LEAST_ONCE: alo, eo.EFFECTIVELY_ONCE: [_run(eo.EFFECTIVELY_ONCE, 840)]})
    assert rows[1].met is False


def test_an_invalid_repetition_of_either_row_fails_the_target() -> None:
    alo = [_run(eo.AT_LEAST_ONCE, 1000, distinct=999)]
    rows = eo.rows({eo.AT_LEAST_ONCE: alo, eo.EFFECTIVELY_ONCE: [_run(eo.EFFECTIVELY_ONCE, 990)]})
    assert rows[1].met is False
    assert "valid 0/1" in rows[0].ratio


class _Message:
    def __init__(self, event_id: str) -> None:
        self._data = orjson.dumps({"id": event_id, "prediction": 0.5})

    def data(self) -> bytes:
        return self._data


class _Reader:
    def __init__(self, ids: list[str]) -> None:
        self._left = [_Message(i) for i in ids]
        self.closed = False

    def has_message_available(self) -> bool:
        return bool(self._left)

    def read_next(self, timeout_millis: int) -> _Message:
        return self._left.pop(0)

    def close(self) -> None:
        self.closed = True


class _Client:
    def __init__(self, reader: _Reader) -> None:
        self.reader = reader

    def create_reader(self, topic: str, start: Any, **options: Any) -> _Reader:
        return self.reader


def test_read_back_counts_messages_distinct_ids_and_ids_stored_twice() -> None:
    reader = _Reader(["e0", "e1", "e1", "e2", "e2", "e2"])

    got = eo.read_back(_Client(reader), "persistent://public/bench/results")

    assert got == {"messages": 6, "distinct": 3, "duplicated": 2}
    assert reader.closed


class _NoBroker:
    """The run's pulsar-lite broker, which the pair never uses."""

    url = "pulsar://127.0.0.1:1"
    pid = None


def test_the_pair_says_why_it_did_not_run_when_apache_pulsar_cannot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(eo, "apache_pulsar_available", lambda: False)
    emulator = Emulator("http://127.0.0.1:1", 0, 0.0)
    rig = Rig(_NoBroker(), None, emulator, emulator, tmp_path)
    said: list[str] = []
    args = argparse.Namespace(events=10, reps=1, max_in_flight=4, profile=False)

    rows = eo.run_pair(rig, args, 60.0, lambda name, measure: measure(), said.append)

    assert [(row.scenario, row.met) for row in rows] == [
        ("effectively-once vs at-least-once: NOT RUN", False)
    ]
    assert "no JDK >= 21" in rows[0].ratio
    assert len(said) == 1
    assert "NOT RUN" in said[0]


def test_the_pair_runs_only_when_named() -> None:
    assert "effectively_once" not in bench_run._arguments([]).only
    assert bench_run._arguments(["--only", "effectively_once"]).only == {"effectively_once"}
