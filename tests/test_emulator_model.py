"""Pure tests of the emulator's model (formats -> rows -> scores) and fault decisions."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping

import pytest

from bridge.emulator import (
    BIAS,
    Decision,
    FaultInjector,
    Faults,
    Rejection,
    build_state,
    input_key,
    merge_faults,
    rows_from_body,
    score,
    weight,
)

ROWS: list[dict[str, object]] = [
    {"amount": 12.5, "age": 3, "country": "NL"},
    {"amount": -4, "age": 0.5, "flag": True},
]
# Pinned literals: a change to the formula must be deliberate, as tests elsewhere rely on it.
ROW_SCORES = [0.011997, 0.519615]


def expected_score(row: Mapping[str, object]) -> float:
    """The documented formula, written out independently of the module."""
    z = -0.25
    for name, value in row.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            z += ((zlib.crc32(name.encode("utf-8")) % 2001) - 1000) / 1000 * value
    return round(1 / (1 + math.exp(-z)), 6)


def test_weight_follows_the_documented_crc32_formula() -> None:
    for name in ["amount", "age", "c0", "x", "ünïcode"]:
        expected = ((zlib.crc32(name.encode("utf-8")) % 2001) - 1000) / 1000
        assert weight(name) == expected
        assert -1 <= weight(name) <= 1


def test_score_matches_formula_and_pinned_values() -> None:
    assert [score(row) for row in ROWS] == ROW_SCORES
    assert [expected_score(row) for row in ROWS] == ROW_SCORES


def test_score_ignores_non_numeric_fields() -> None:
    baseline = round(1 / (1 + math.exp(-BIAS)), 6)
    junk: dict[str, object] = {
        "s": "12",
        "b": True,
        "n": None,
        "l": [1, 2],
        "d": {"a": 1},
        "nan": float("nan"),
        "inf": float("inf"),
        "huge": 10**400,
    }
    assert score({}) == baseline
    assert score(junk) == baseline


def test_score_stays_a_probability_for_extreme_inputs() -> None:
    positive = next(name for name in ("a", "b", "c", "d") if weight(name) > 0)
    assert score({positive: 1e300}) == 1.0
    assert score({positive: -1e300}) == 0.0
    assert score({positive: 1e308, f"{positive}_": 1e308, "other": -1e308}) in {0.0, 0.5, 1.0}


FORMAT_BODIES: list[dict[str, object]] = [
    {"dataframe_records": ROWS},
    {
        "dataframe_split": {
            "columns": ["amount", "age", "country"],
            "index": [7, 8],
            "data": [[12.5, 3, "NL"], [-4, 0.5, None]],
        }
    },
    {"instances": ROWS},
    {"inputs": {"amount": [12.5, -4], "age": [3, 0.5]}},
    {"inputs": ROWS, "params": {"threshold": 0.5}},
]


@pytest.mark.parametrize("body", FORMAT_BODIES)
def test_every_format_yields_the_same_scores(body: dict[str, object]) -> None:
    rows = rows_from_body(body)
    assert len(rows) == 2
    assert [score(row) for row in rows] == ROW_SCORES


def test_split_rows_keep_column_names_and_order() -> None:
    body = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}}
    assert rows_from_body(body) == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert rows_from_body({"dataframe_split": {"data": [[1, 2]]}}) == [{"c0": 1, "c1": 2}]


def test_instances_lists_become_positional_columns_and_scalars_x() -> None:
    body = {"instances": [[1, 2.5], 3, {"k": 4}]}
    assert rows_from_body(body) == [{"c0": 1, "c1": 2.5}, {"x": 3}, {"k": 4}]


def test_columnar_inputs_become_rows() -> None:
    body = {"inputs": {"a": [1, 2, 3], "b": ["x", "y", "z"]}}
    assert rows_from_body(body) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}]


def test_empty_inputs_yield_no_rows() -> None:
    assert rows_from_body({"dataframe_records": []}) == []
    assert rows_from_body({"inputs": {}}) == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"dataframe_records": {"a": 1}}, "'dataframe_records' must be a list"),
        ({"dataframe_records": [1]}, "dataframe_records[0] must be a JSON object"),
        ({"dataframe_split": [[1]]}, "must be an object with a 'data' list"),
        ({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}, "data[0]"),
        ({"dataframe_split": {"columns": [1], "data": []}}, "list of strings"),
        (
            {"dataframe_split": {"data": [[1]], "index": [1, 2]}},
            "index' must be a list",
        ),
        ({"instances": {"a": 1}}, "'instances' must be a list"),
        ({"inputs": {"a": [1, 2], "b": [1]}}, "equal length"),
        ({"inputs": {"a": 1}}, "equal length"),
        ({"inputs": "x"}, "'inputs' must be a list of rows"),
        ({"instances": [], "params": []}, "'params' must be a JSON object"),
    ],
)
def test_malformed_shapes_raise_clear_errors(body: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        rows_from_body(body)


@pytest.mark.parametrize(
    "body",
    [{}, {"instances": [], "inputs": []}, {"instances": [], "extra": 1}, {"params": {}}],
)
def test_input_key_requires_exactly_one_input_field(body: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one of the input fields") as info:
        input_key(body)
    assert f"Received dictionary with input fields: {sorted(body)}." in str(info.value)


def test_input_key_names_the_format() -> None:
    assert input_key({"dataframe_split": {}, "params": {}}) == "dataframe_split"


# --- faults -------------------------------------------------------------------------


def test_default_faults_let_everything_through() -> None:
    injector = FaultInjector()
    assert [injector.decide(now=0.0) for _ in range(100)] == [Decision()] * 100
    assert injector.check_payload(16 * 1024 * 1024) is None
    assert injector.check_poison([{"a": 1}, {"_poison": 0}]) is None


def test_latency_is_reported_as_a_delay_on_every_decision() -> None:
    injector = FaultInjector(Faults(latency_ms=250, fail_next=1))
    assert injector.decide(0.0).delay_s == 0.25
    assert injector.decide(0.0) == Decision(delay_s=0.25)


def test_outage_rejects_until_its_deadline() -> None:
    injector = FaultInjector(Faults(outage_until=100.0, retry_after_s=5))
    rejection = injector.decide(now=99.9).rejection
    assert rejection is not None
    assert (rejection.status, rejection.error_code, rejection.retry_after_s) == (
        503,
        "TEMPORARILY_UNAVAILABLE",
        5,
    )
    assert injector.decide(now=100.0).rejection is None


def test_fail_next_counts_down_with_its_status() -> None:
    injector = FaultInjector(Faults(fail_next=2, fail_status=504, retry_after_s=3))
    decisions = [injector.decide(0) for _ in range(3)]
    statuses = [d.rejection.status if d.rejection else 200 for d in decisions]
    assert statuses == [504, 504, 200]
    assert injector.faults.fail_next == 0


def test_retry_after_only_on_429_and_503() -> None:
    for status, expected in [(503, 3), (500, None), (504, None)]:
        injector = FaultInjector(Faults(fail_next=1, fail_status=status, retry_after_s=3))
        rejection = injector.decide(0).rejection
        assert rejection is not None
        assert rejection.retry_after_s == expected
    rejection = FaultInjector(Faults(rate_429=1.0, retry_after_s=3)).decide(0).rejection
    assert rejection is not None
    assert (rejection.status, rejection.error_code, rejection.retry_after_s) == (
        429,
        "REQUEST_LIMIT_EXCEEDED",
        3,
    )


def test_outage_takes_precedence_over_fail_next_and_leaves_it_queued() -> None:
    injector = FaultInjector(Faults(outage_until=10.0, fail_next=1, fail_status=500))
    first = injector.decide(now=0.0).rejection
    assert first is not None
    assert first.status == 503
    assert injector.faults.fail_next == 1


def test_random_faults_are_reproducible_per_seed() -> None:
    def pattern(seed: int) -> list[str]:
        injector = FaultInjector(Faults(rate_429=0.3, reset_connection_rate=0.2, seed=seed))
        decisions = [injector.decide(0.0) for _ in range(200)]
        return ["drop" if d.drop_connection else "429" if d.rejection else "ok" for d in decisions]

    first = pattern(seed=42)
    assert first == pattern(seed=42)
    assert first != pattern(seed=43)
    assert {"drop", "429", "ok"} == set(first)


def test_update_with_seed_restarts_the_random_sequence() -> None:
    injector = FaultInjector(Faults(rate_429=0.5, seed=1))
    before = [injector.decide(0.0).rejection is None for _ in range(50)]
    injector.update({"seed": 1}, now=0.0)
    assert [injector.decide(0.0).rejection is None for _ in range(50)] == before


def test_payload_limit_uses_the_configured_status() -> None:
    injector = FaultInjector(Faults(max_payload_bytes=10))
    assert injector.check_payload(10) is None
    oversize = injector.check_payload(11)
    assert oversize is not None
    assert (oversize.status, oversize.error_code) == (413, "BAD_REQUEST")
    injector.update({"oversize_status": 400}, now=0.0)
    assert injector.check_payload(11) == Rejection(400, "BAD_REQUEST", oversize.message)


def test_poison_names_the_first_poisoned_row() -> None:
    rows: list[dict[str, object]] = [{"a": 1}, {"_poison": False}, {"_poison": 1}, {"_poison": "y"}]
    rejection = FaultInjector().check_poison(rows)
    assert rejection is not None
    assert rejection.status == 400
    assert "row 2" in rejection.message
    assert FaultInjector(Faults(poison_field=None)).check_poison(rows) is None
    assert FaultInjector(Faults(poison_field="bad")).check_poison([{"bad": 1}]) is not None


def test_merge_faults_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        merge_faults(Faults(), {"rate_428": 1}, now=0.0)
    patches: list[dict[str, object]] = [
        {"rate_429": 1.5},
        {"fail_next": -1},
        {"fail_next": True},
        {"fail_status": 200},
    ]
    for patch in patches:
        with pytest.raises(ValueError, match="invalid value"):
            merge_faults(Faults(), patch, now=0.0)


def test_merge_faults_turns_outage_for_s_into_a_deadline() -> None:
    merged = merge_faults(Faults(), {"outage_for_s": 30, "retry_after_s": 2}, now=100.0)
    assert (merged.outage_until, merged.retry_after_s) == (130.0, 2)
    with pytest.raises(ValueError, match="outage_for_s"):
        merge_faults(Faults(), {"outage_for_s": -1}, now=0.0)


def test_reset_switches_every_fault_off() -> None:
    injector = FaultInjector(Faults(rate_429=1.0, latency_ms=5))
    injector.reset()
    assert injector.faults == Faults()
    assert injector.decide(0.0) == Decision()


# --- command-line state -------------------------------------------------------------


def test_build_state_maps_cli_options() -> None:
    state = build_state(
        endpoints=["a", "b"], client_id="id", client_secret="s", token_ttl_s=5, latency_ms=20
    )
    assert state.serves("a")
    assert not state.serves("c")
    assert state.client_secret_matches("id", "s")
    assert (state.token_ttl_s, state.faults.faults.latency_ms, state.auth) == (5, 20, True)
    assert not build_state(no_auth=True).auth


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"client_id": "id"}, "together"),
        ({}, "no OAuth client or PAT"),
        ({"pat_tokens": ["p"], "token_ttl_s": 0}, "token_ttl_s"),
        ({"no_auth": True, "latency_ms": -1.0}, "latency_ms"),
    ],
)
def test_build_state_rejects_inconsistent_options(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_state(**options)  # type: ignore[arg-type]
