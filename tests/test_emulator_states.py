"""Endpoint states of the emulator as pure decisions: capacity, route-error outages,
scaling from zero and a schema change, steered by a fake clock; and the options of
``pulsar-bridge emulate`` that switch them on."""

from __future__ import annotations

import argparse

import pytest

from bridge.emulator import Decision, FaultInjector, Faults, build_state, merge_faults
from bridge.emulator.cli import add_arguments, endpoint_states
from tests.support.clock import FakeClock

EP = "fraud-model"


def status(decision: Decision) -> int:
    return decision.rejection.status if decision.rejection is not None else 200


# --- capacity -----------------------------------------------------------------------


def test_capacity_admits_that_many_at_once_and_429s_the_rest_without_delay() -> None:
    injector = FaultInjector(Faults(capacity=2, latency_ms=500, retry_after_s=1))
    admitted = [injector.decide(0.0, EP), injector.decide(0.0, EP)]
    assert [(d.holds_slot, d.delay_s) for d in admitted] == [(True, 0.5), (True, 0.5)]
    refused = injector.decide(0.0, EP)
    assert refused.rejection is not None
    assert (refused.rejection.status, refused.rejection.error_code) == (
        429,
        "REQUEST_LIMIT_EXCEEDED",
    )
    assert "provisioned concurrency" in refused.rejection.message
    assert refused.rejection.retry_after_s == 1
    # No queueing and no latency: the refusal is immediate and takes no slot.
    assert (refused.holds_slot, refused.over_capacity, refused.delay_s) == (False, True, 0.0)
    assert injector.in_use(EP) == 2
    injector.release(EP)
    assert injector.decide(0.0, EP).holds_slot
    assert injector.in_use(EP) == 2


def test_capacity_is_per_endpoint() -> None:
    injector = FaultInjector(Faults(capacity=1))
    assert injector.decide(0.0, "a").holds_slot
    assert injector.decide(0.0, "b").holds_slot
    assert injector.decide(0.0, "a").over_capacity


def test_lowering_capacity_applies_to_the_next_request() -> None:
    injector = FaultInjector(Faults(capacity=4))
    for _ in range(3):
        assert injector.decide(0.0, EP).holds_slot
    injector.update({"capacity": 2}, now=0.0)  # halved with 3 in progress: they carry on
    assert injector.decide(0.0, EP).over_capacity
    injector.release(EP)
    assert injector.decide(0.0, EP).over_capacity  # still 2 in progress
    injector.release(EP)
    assert injector.decide(0.0, EP).holds_slot  # 1 in progress: room for one more
    assert injector.decide(0.0, EP).over_capacity
    injector.update({"capacity": None}, now=0.0)
    assert injector.decide(0.0, EP).holds_slot
    assert injector.in_use(EP) == 3


def test_capacity_zero_refuses_everything_and_release_never_goes_negative() -> None:
    injector = FaultInjector(Faults(capacity=0))
    assert injector.decide(0.0, EP).over_capacity
    injector.release(EP)
    assert injector.in_use(EP) == 0


def test_slots_are_counted_even_without_a_capacity() -> None:
    # So a capacity switched on mid-run sees the invocations already being answered.
    injector = FaultInjector()
    injector.decide(0.0, EP)
    injector.decide(0.0, EP)
    injector.update({"capacity": 2}, now=0.0)
    assert injector.decide(0.0, EP).over_capacity
    injector.reset()  # faults off, but the two invocations still hold their slots
    assert injector.in_use(EP) == 2


# --- route-error outages ------------------------------------------------------------


def test_not_found_outage_is_404_until_its_deadline() -> None:
    clock = FakeClock()
    injector = FaultInjector()
    injector.update({"not_found_for_s": 30}, now=clock())
    rejection = injector.route_rejection(clock(), EP)
    assert rejection is not None
    assert (rejection.status, rejection.error_code, rejection.message) == (
        404,
        "RESOURCE_DOES_NOT_EXIST",
        f"Endpoint with name '{EP}' does not exist.",
    )
    assert rejection.retry_after_s is None
    clock.advance(29.9)
    assert injector.route_rejection(clock(), EP) is not None
    clock.advance(0.1)
    assert injector.route_rejection(clock(), EP) is None


def test_forbidden_outage_is_403_and_not_found_wins_while_both_last() -> None:
    clock = FakeClock()
    injector = FaultInjector(Faults(retry_after_s=5))
    injector.update({"forbidden_for_s": 20, "not_found_for_s": 10}, now=clock())
    first = injector.route_rejection(clock(), EP)
    assert first is not None
    assert first.status == 404
    clock.advance(10)
    forbidden = injector.route_rejection(clock(), EP)
    assert forbidden is not None
    assert (forbidden.status, forbidden.error_code, forbidden.retry_after_s) == (
        403,
        "PERMISSION_DENIED",
        None,
    )
    assert EP in forbidden.message
    clock.advance(10)
    assert injector.route_rejection(clock(), EP) is None


def test_a_zero_duration_ends_a_state_early() -> None:
    clock = FakeClock()
    injector = FaultInjector()
    injector.update({"forbidden_for_s": 600, "scale_from_zero_s": 600}, now=clock())
    injector.update({"forbidden_for_s": 0, "scale_from_zero_s": 0}, now=clock())
    assert injector.route_rejection(clock(), EP) is None
    assert not injector.scaling_from_zero(clock())


# --- scale from zero ----------------------------------------------------------------


def test_scaling_from_zero_is_503_at_once_then_ready() -> None:
    clock = FakeClock()
    injector = FaultInjector(Faults(latency_ms=100, retry_after_s=2, capacity=1))
    injector.update({"scale_from_zero_s": 15}, now=clock())
    assert injector.scaling_from_zero(clock())
    decision = injector.decide(clock(), EP)
    assert decision.rejection is not None
    assert (decision.rejection.status, decision.rejection.error_code) == (
        503,
        "TEMPORARILY_UNAVAILABLE",
    )
    assert "scaling up from zero" in decision.rejection.message
    assert decision.rejection.retry_after_s == 2
    assert (decision.holds_slot, decision.over_capacity, decision.delay_s) == (False, False, 0.0)
    assert injector.in_use(EP) == 0  # a cold endpoint answers nobody, so holds no slot
    clock.advance(15)
    assert not injector.scaling_from_zero(clock())
    assert injector.decide(clock(), EP) == Decision(delay_s=0.1)


# --- schema change ------------------------------------------------------------------


def test_reject_all_fails_every_request_with_mlflows_missing_inputs_message() -> None:
    injector = FaultInjector(Faults(reject_all=True))
    rejection = injector.check_schema(now=0.0)
    assert rejection is not None
    assert (rejection.status, rejection.error_code, rejection.message) == (
        400,
        "BAD_REQUEST",
        "Model is missing inputs ['new_feature'].",
    )
    assert injector.decide(0.0, EP) == Decision()  # the request reaches the model server
    injector.update({"reject_all": False}, now=0.0)
    assert injector.check_schema(now=0.0) is None


def test_reject_all_for_s_lasts_until_its_deadline() -> None:
    clock = FakeClock()
    injector = FaultInjector()
    injector.update({"reject_all_for_s": 60}, now=clock())
    assert injector.check_schema(clock()) is not None
    clock.advance(60)
    assert injector.check_schema(clock()) is None


# --- validation, options ------------------------------------------------------------


@pytest.mark.parametrize(
    "patch",
    [
        {"capacity": -1},
        {"capacity": 2.5},
        {"capacity": True},
        {"reject_all": 1},
        {"not_found_until": "soon"},
    ],
)
def test_bad_state_values_are_rejected(patch: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid value"):
        merge_faults(Faults(), patch, now=0.0)


@pytest.mark.parametrize(
    "key", ["not_found_for_s", "forbidden_for_s", "scale_from_zero_s", "reject_all_for_s"]
)
def test_durations_become_deadlines_and_must_not_be_negative(key: str) -> None:
    merged = merge_faults(Faults(), {key: 30}, now=100.0)
    deadline = key.removesuffix("_s").removesuffix("_for") + "_until"
    assert getattr(merged, deadline) == 130.0
    with pytest.raises(ValueError, match=key):
        merge_faults(Faults(), {key: -1}, now=0.0)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_emulate_options_describe_the_endpoint_states() -> None:
    assert endpoint_states(parse()) == {}
    args = parse(
        "--capacity",
        "4",
        "--not-found-for",
        "10",
        "--forbidden-for",
        "20",
        "--scale-from-zero",
        "30",
        "--reject-all",
        "--reject-all-for",
        "40",
    )
    assert endpoint_states(args) == {
        "capacity": 4,
        "not_found_for_s": 10.0,
        "forbidden_for_s": 20.0,
        "scale_from_zero_s": 30.0,
        "reject_all_for_s": 40.0,
        "reject_all": True,
    }


def test_build_state_applies_the_states_from_start_up() -> None:
    state = build_state(no_auth=True, faults={"capacity": 3, "scale_from_zero_s": 30})
    faults = state.faults.faults
    assert faults.capacity == 3
    assert faults.scale_from_zero_until is not None
    assert state.faults.scaling_from_zero(state.clock())
    with pytest.raises(ValueError, match="capacity"):
        build_state(no_auth=True, faults={"capacity": -2})
