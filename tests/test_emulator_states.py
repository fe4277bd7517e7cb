"""Endpoint states of the emulator as pure decisions: capacity, route-error outages,
scaling from zero and a schema change, steered by a fake clock; and the options of
``pulsar-bridge emulate`` that switch them on."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx
import pytest

from bridge.emulator import (
    Decision,
    EmulatorServer,
    EmulatorState,
    FaultInjector,
    Faults,
    build_state,
    merge_faults,
    score,
)
from bridge.emulator.cli import add_arguments, endpoint_states
from bridge.emulator.state import ServedModel
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


# --- over real sockets --------------------------------------------------------------

PAT = "dapi-states"
INVOKE = f"/serving-endpoints/{EP}/invocations"
DETAIL = f"/api/2.0/serving-endpoints/{EP}"
ROWS: list[dict[str, object]] = [{"amount": 12.5}, {"amount": -4}]
BODY: dict[str, object] = {"dataframe_records": ROWS}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorState(pat_tokens={PAT}, clock=clock)) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {PAT}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def put_faults(http: httpx.Client, patch: dict[str, object]) -> dict[str, object]:
    response = http.put("/_emulator/faults", json=patch)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize(
    ("patch", "status", "error"),
    [
        (
            {"not_found_for_s": 30},
            404,
            {
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": f"Endpoint with name '{EP}' does not exist.",
            },
        ),
        (
            {"forbidden_for_s": 30},
            403,
            {
                "error_code": "PERMISSION_DENIED",
                "message": f"User does not have permission to query serving endpoint '{EP}'.",
            },
        ),
    ],
)
def test_route_error_outage_covers_invocations_and_the_get(
    http: httpx.Client,
    clock: FakeClock,
    patch: dict[str, object],
    status: int,
    error: dict[str, str],
) -> None:
    put_faults(http, patch)
    responses = [http.post(INVOKE, json=BODY), http.get(DETAIL), http.post(INVOKE, json={})]
    assert [(r.status_code, r.json()) for r in responses] == [(status, error)] * 3
    clock.advance(30)
    assert http.post(INVOKE, json=BODY).status_code == 200
    assert http.get(DETAIL).json()["state"]["ready"] == "READY"
    counted = http.get("/_emulator/stats").json()["requests_by_status"]
    assert counted == {str(status): 3, "200": 2}


def test_scale_from_zero_is_503_and_not_ready_then_ready(
    http: httpx.Client, clock: FakeClock
) -> None:
    put_faults(http, {"scale_from_zero_s": 20, "retry_after_s": 3})
    cold = http.post(INVOKE, json=BODY)
    assert cold.status_code == 503
    assert cold.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "scaling up from zero" in cold.json()["message"]
    assert cold.headers["retry-after"] == "3"
    detail = http.get(DETAIL).json()
    assert detail["state"] == {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}
    entity = detail["config"]["served_entities"][0]
    assert entity["scale_to_zero_enabled"] is True
    assert entity["state"]["deployment"] == "DEPLOYMENT_CREATING"
    clock.advance(20)
    assert http.post(INVOKE, json=BODY).json() == {"predictions": [score(r) for r in ROWS]}
    detail = http.get(DETAIL).json()
    assert detail["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    entity = detail["config"]["served_entities"][0]
    assert (entity["scale_to_zero_enabled"], entity["state"]["deployment"]) == (
        True,
        "DEPLOYMENT_READY",
    )


def test_reject_all_fails_every_request_until_switched_off(
    http: httpx.Client, clock: FakeClock
) -> None:
    put_faults(http, {"reject_all": True})
    bodies: list[dict[str, object]] = [BODY, {"instances": [1]}, {"inputs": {"a": [1, 2]}}]
    for body in bodies:
        response = http.post(INVOKE, json=body)
        assert response.status_code == 400
        assert response.json() == {
            "error_code": "BAD_REQUEST",
            "message": "Model is missing inputs ['new_feature'].",
        }
    assert http.get(DETAIL).json()["state"]["ready"] == "READY"  # the endpoint is up
    put_faults(http, {"reject_all": False, "reject_all_for_s": 10})
    assert http.post(INVOKE, json=BODY).status_code == 400
    clock.advance(10)
    assert http.post(INVOKE, json=BODY).status_code == 200
    assert http.get("/_emulator/stats").json()["rows_scored"] == 2


class GatedModel:
    """A served model whose every predict waits for :attr:`gate`, so a test decides
    when admitted invocations finish; it counts how many run at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def predict(self, rows: list[dict[str, object]]) -> list[object]:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.entered.release()
        try:
            if not self.gate.wait(60):
                raise RuntimeError("the test never opened the gate")
            return [score(row) for row in rows]
        finally:
            with self._lock:
                self.running -= 1

    def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=60), "an admitted invocation never ran"


@pytest.fixture
def gated() -> Iterator[tuple[GatedModel, httpx.Client]]:
    model = GatedModel()
    state = EmulatorState(
        pat_tokens={PAT}, model=ServedModel(name=f"{EP}-1", predict=model.predict)
    )
    headers = {"Authorization": f"Bearer {PAT}"}
    with (
        EmulatorServer(state) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=60) as http,
    ):
        try:
            yield model, http
        finally:
            model.gate.set()  # before the server stops: it waits for requests in flight


def test_capacity_429s_concurrent_invocations_beyond_it(
    gated: tuple[GatedModel, httpx.Client],
) -> None:
    model, http = gated
    put_faults(http, {"capacity": 3})
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(http.post, INVOKE, json=BODY) for _ in range(8)]
        model.wait_entered(3)
        # Admitted invocations cannot finish before the gate opens, so the first five
        # answers are all the refusals, and no slot was freed while they were decided.
        done = as_completed(futures, timeout=60)
        refused = [next(done).result() for _ in range(5)]
        assert [r.status_code for r in refused] == [429] * 5
        assert {r.json()["error_code"] for r in refused} == {"REQUEST_LIMIT_EXCEEDED"}
        model.gate.set()
        answered = [future.result(timeout=60) for future in futures]
    assert sorted(r.status_code for r in answered) == [200] * 3 + [429] * 5
    assert model.peak == 3
    stats = http.get("/_emulator/stats").json()
    assert stats["rejected_over_capacity"] == 5
    assert stats["peak_admitted_in_progress"] == 3
    assert stats["requests_by_status"] == {"200": 3, "429": 5}


def test_halving_capacity_applies_to_the_next_invocation(
    gated: tuple[GatedModel, httpx.Client],
) -> None:
    model, http = gated
    assert put_faults(http, {"capacity": 4})["capacity"] == 4
    with ThreadPoolExecutor(max_workers=3) as pool:
        held = [pool.submit(http.post, INVOKE, json=BODY) for _ in range(3)]
        model.wait_entered(3)
        assert put_faults(http, {"capacity": 2})["capacity"] == 2
        assert http.post(INVOKE, json=BODY).status_code == 429  # 3 in progress, 2 allowed
        model.gate.set()
        assert [f.result(timeout=60).status_code for f in held] == [200] * 3
    assert http.post(INVOKE, json=BODY).status_code == 200  # the slots were given back
    stats = http.get("/_emulator/stats").json()
    assert (stats["peak_admitted_in_progress"], stats["rejected_over_capacity"]) == (3, 1)


def test_emulate_command_starts_in_the_states_its_flags_name(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bridge", "emulate", "--port", "0", "--no-auth"]
    flags = ["--capacity", "1", "--forbidden-for", "600", "--scale-from-zero", "600"]
    with (
        (tmp_path / "stderr").open("wb") as stderr,
        subprocess.Popen(
            [*command, *flags, "--reject-all"], stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as process,
    ):
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # printed once the socket accepts connections
            assert line.startswith("emulator listening on "), (tmp_path / "stderr").read_text()
            with httpx.Client(base_url=line.split()[-1], timeout=30) as http:
                assert http.post(INVOKE, json=BODY).status_code == 403
                assert http.get(DETAIL).status_code == 403
                assert put_faults(http, {"forbidden_for_s": 0})["capacity"] == 1
                assert http.get(DETAIL).json()["state"]["ready"] == "NOT_READY"
                assert http.post(INVOKE, json=BODY).status_code == 503
                put_faults(http, {"scale_from_zero_s": 0})
                assert http.post(INVOKE, json=BODY).status_code == 400
                put_faults(http, {"reject_all": False})
                assert http.post(INVOKE, json=BODY).status_code == 200
        finally:
            process.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it handled.
    assert process.returncode in (0, -signal.SIGTERM)
