"""A real model end to end: scikit-learn on iris, saved with MLflow, scored by the bridge.

Two servers stand in for Databricks: MLflow's own scoring server (``mlflow models
serve``, reached through an ``endpoint.url`` route) and the emulator serving the same
saved model (``pulsar-bridge emulate --model``, an ``endpoint.name`` route with OAuth).
Every result is compared with the estimator's own ``predict`` computed offline, and
events the model rejects must end in the dead-letter topic with the server's words.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pulsar
import pytest

from bridge.config import load_config
from bridge.config_route import RequestFormat
from bridge.emulator import EmulatorServer, build_state
from bridge.emulator.mlflow_model import json_ready, model_name
from bridge.formats import build_body
from bridge.serving import error_message
from tests.conftest import BridgeFactory
from tests.support.harness import Received, TopicReader, Topics, publish, route_config
from tests.support.mlflow_server import MlflowScoringServer, TrainedModel, train_iris_model

pytestmark = pytest.mark.integration

FORMATS: list[RequestFormat] = ["dataframe_records", "dataframe_split", "instances", "inputs"]
DROPPED = "petal width (cm)"  # the column the rejected events lack
CLIENT_ID = "iris-sp"
CLIENT_SECRET = "iris-sp-secret-19c2"


# Session-scoped, not module-scoped: pytest runs this module's tests in three runs (the
# Apache Pulsar tier, the pulsar-lite tier, the broker-free tests), and a module fixture
# would be trained and served again for each (~10 s each). The server keeps no state.
@pytest.fixture(scope="session")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    # The directory's name is the model's name in the emulator's served-model-name.
    return train_iris_model(tmp_path_factory.mktemp("models") / "iris")


@pytest.fixture(scope="session")
def mlflow_server(
    iris_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowScoringServer]:
    log = tmp_path_factory.mktemp("mlflow-serve") / "serve.log"
    with MlflowScoringServer(iris_model.path, log) as server:
        print(f"mlflow models serve: ready in {server.startup_s:.2f}s")
        yield server


def by_id(messages: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for m in messages:
        out.setdefault(m.json["id"], []).append(m)
    return out


def url_route(
    topics: Topics, url: str, fmt: RequestFormat, max_events: int = 100
) -> dict[str, Any]:
    """A route to a scoring server's own URL (``route_config`` defaults to a named one)."""
    route = route_config(topics, batch={"max_events": max_events, "linger_ms": 10})
    route["endpoint"] = {"url": url, "format": fmt}
    return route


def report_rate(n: int, started: float, what: str) -> None:
    """Print the wall time from first publish to last result (shown by ``pytest -rP``)."""
    elapsed = time.monotonic() - started
    print(f"{what}: {n} events in {elapsed:.2f}s, {n / elapsed:.0f} rows/s")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gets_the_models_own_predictions_from_mlflow_serve(
    fmt: RequestFormat,
    iris_model: TrainedModel,
    mlflow_server: MlflowScoringServer,
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
) -> None:
    n = 2000
    rows = [iris_model.event(i) for i in range(n)]
    expected = iris_model.predict_by_id(rows)
    assert len(set(expected.values())) == 3, "the events cover every class"
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    bridge = start_bridge(
        {"iris": url_route(topics, mlflow_server.invocations_url, fmt)},
        databricks={"auth_type": "none"},
    )

    started = time.monotonic()
    publish(pulsar_client, topics.source, [json.dumps(r).encode() for r in rows])
    got = results.read_until(lambda ms: len(ms) >= n)
    report_rate(n, started, f"mlflow models serve, {fmt}")
    bridge.stop()

    results_by_id = by_id(got)
    assert len(got) == n
    assert len(results_by_id) == n, "one result per event"
    for event_id, label in expected.items():
        (result,) = results_by_id[event_id]
        assert result.json == {"prediction": label, "id": event_id}
        assert result.properties["route"] == "iris"
    assert dead.read_quiet(300) == []
    assert bridge.events("route_stopped")[0]["dead_lettered"] == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_events_missing_a_column_are_dead_lettered_with_mlflows_error(
    fmt: RequestFormat,
    iris_model: TrainedModel,
    mlflow_server: MlflowScoringServer,
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
) -> None:
    n, bad, batch = 300, {7, 150, 151, 299}, 64
    rows = [iris_model.event(i) for i in range(n)]
    for i in bad:
        del rows[i][DROPPED]
    results = TopicReader(pulsar_client, topics.result)
    dead = TopicReader(pulsar_client, topics.dlq)
    publish(pulsar_client, topics.source, [json.dumps(r).encode() for r in rows])
    route = url_route(topics, mlflow_server.invocations_url, fmt, max_events=batch)
    bridge = start_bridge({"iris": route}, databricks={"auth_type": "none"})

    good = results.read_until(lambda ms: len(ms) >= n - len(bad))
    dead_letters = dead.read_until(lambda ms: len(ms) >= len(bad))
    bridge.stop()

    good_rows = [r for i, r in enumerate(rows) if i not in bad]
    assert {m.json["id"]: m.json["prediction"] for m in good} == iris_model.predict_by_id(good_rows)
    assert sorted(m.json["id"] for m in dead_letters) == sorted(f"e{i}" for i in bad)
    # Bisection ends on the bad event alone, so the reason is what the server says about
    # that one event in a request of its own, as the bridge condenses it.
    with httpx.Client() as client:
        for m in dead_letters:
            alone = client.post(
                mlflow_server.invocations_url,
                content=orjson.dumps(build_body([m.json], fmt)),
                headers={"Content-Type": "application/json"},
            )
            assert alone.status_code == 400
            assert f"Model is missing inputs ['{DROPPED}']" in alone.json()["message"]
            assert m.properties["error"] == f"HTTP 400: {error_message(alone)}"
    stopped = bridge.events("route_stopped")[0]
    assert stopped["dead_lettered"] == len(bad)
    # Each bad event costs at most two requests per halving of its batch.
    assert stopped["requests"] <= -(-n // batch) + 2 * len(bad) * (batch.bit_length() - 1)


def test_the_dead_letter_reason_names_the_missing_column(
    iris_model: TrainedModel, mlflow_server: MlflowScoringServer
) -> None:
    row = {k: v for k, v in iris_model.event(1).items() if k != DROPPED}
    alone = httpx.post(
        mlflow_server.invocations_url,
        content=orjson.dumps(build_body([row], "dataframe_split")),
        headers={"Content-Type": "application/json"},
    )
    assert alone.status_code == 400
    assert DROPPED in error_message(alone)


def test_the_emulator_serves_the_real_model_behind_oauth(
    iris_model: TrainedModel,
    pulsar_client: pulsar.Client,
    topics: Topics,
    start_bridge: BridgeFactory,
    tmp_path: Path,
) -> None:
    n = 2000
    rows = [iris_model.event(i) for i in range(n)]
    expected = iris_model.predict_by_id(rows)
    with EmulatorCli(iris_model.path, tmp_path / "emulate.log", model_version=4) as emulator:
        results = TopicReader(pulsar_client, topics.result)
        route = route_config(
            topics,
            endpoint={"name": "iris-classifier", "format": "dataframe_split"},
            batch={"max_events": 100},
        )
        databricks = {"host": emulator.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        bridge = start_bridge({"iris": route}, databricks=databricks)
        started = time.monotonic()
        publish(pulsar_client, topics.source, [json.dumps(r).encode() for r in rows])
        got = results.read_until(lambda ms: len(ms) >= n)
        report_rate(n, started, "emulator --model, dataframe_split")
        bridge.stop()
        stats = httpx.get(f"{emulator.url}/_emulator/stats").json()

    results_by_id = by_id(got)
    assert len(results_by_id) == n
    for event_id, label in expected.items():
        (result,) = results_by_id[event_id]
        assert result.json == {"prediction": label, "id": event_id}
        assert result.properties["served_model"] == "iris-4"
    assert stats["tokens_issued"] >= 1
    assert stats["endpoints"]["iris-classifier"]["rows_scored"] == n
    assert set(stats["requests_by_status"]) <= {"200"}


def test_the_emulator_rejects_a_missing_column_like_mlflow(iris_model: TrainedModel) -> None:
    row = iris_model.event(1)
    partial_row = {k: v for k, v in row.items() if k != DROPPED}
    state = build_state(endpoints=("iris",), no_auth=True, model=iris_model.path, model_version=2)
    url = "/serving-endpoints/iris/invocations"
    with EmulatorServer(state) as server, httpx.Client(base_url=server.url) as client:
        ok = client.post(url, json=build_body([row, row], "dataframe_split"))
        rejected = client.post(url, json=build_body([partial_row], "dataframe_records"))
        mixed = client.post(url, json=build_body([row, partial_row], "dataframe_records"))

    assert ok.status_code == 200
    assert ok.headers["served-model-name"] == "iris-2"
    assert ok.json() == {"predictions": iris_model.predict([row, row])}
    assert rejected.status_code == 400
    assert rejected.json()["error_code"] == "BAD_REQUEST"
    assert f"Model is missing inputs ['{DROPPED}']" in rejected.json()["message"]
    # With the column present elsewhere in the batch the gap is NaN, which the estimator
    # refuses: still a 400, so the bridge bisects down to the event without the column.
    assert mixed.status_code == 400
    assert "Input X contains NaN" in mixed.json()["message"]
    assert state.counters.rows_scored == 2


def test_predictions_become_json_values_whatever_the_model_returns() -> None:
    assert json_ready(np.array([1, 2], dtype=np.int64)) == [1, 2]
    assert type(json_ready(np.array([1.5]))[0]) is float
    assert json_ready(np.array([[0.25, 0.75]])) == [[0.25, 0.75]]
    assert json_ready(pd.Series(["a", "b"])) == ["a", "b"]
    frame = pd.DataFrame({"label": ["a", "b"], "p": np.array([0.5, 0.25])})
    assert json_ready(frame) == [{"label": "a", "p": 0.5}, {"label": "b", "p": 0.25}]
    assert json_ready({"label": np.array(["a", "b"])}) == [{"label": "a"}, {"label": "b"}]
    assert json_ready([np.int64(3), {"k": np.float32(0.5)}]) == [3, {"k": 0.5}]
    assert json.dumps(json_ready(frame))  # nothing numpy left for the JSON encoder
    with pytest.raises(TypeError, match="cannot serve predictions"):
        json_ready(object())


def test_the_served_name_is_the_mlmodel_name_else_the_directory(tmp_path: Path) -> None:
    assert model_name(tmp_path / "churn", None) == "churn"
    assert model_name(tmp_path / "churn", {"name": "churn-v2"}) == "churn-v2"
    assert model_name(tmp_path / "churn", {"name": ""}) == "churn"


def test_the_example_configs_are_valid() -> None:
    examples = Path(__file__).resolve().parents[1] / "examples" / "mlflow"
    emulated = load_config(examples, env={"MY_MODEL_SP_SECRET": "dev-secret"})
    served = load_config(examples / "mlflow-serve", env={})

    (named,) = emulated.routes
    (by_url,) = served.routes
    assert named.endpoint.name == "my-model"
    assert by_url.endpoint.url == "http://127.0.0.1:5001/invocations"
    # The two variants differ only in how they reach the model.
    assert named.model_dump(exclude={"endpoint", "file"}) == by_url.model_dump(
        exclude={"endpoint", "file"}
    )


def test_emulate_refuses_a_path_without_a_model(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bridge", "emulate", "--no-auth", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "cannot load an MLflow model" in completed.stderr


class EmulatorCli:
    """``pulsar-bridge emulate --model PATH`` as a user runs it, on a free port.

    Its URL is read from the "listening" line it prints once the socket accepts
    connections; output goes to a file so a full pipe cannot stall it.
    """

    def __init__(self, model: Path, log_path: Path, *, model_version: int) -> None:
        self._command = [
            sys.executable,
            "-m",
            "bridge",
            "emulate",
            "--port",
            "0",
            "--endpoint",
            "iris-classifier",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--model",
            str(model),
            "--model-version",
            str(model_version),
        ]
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> EmulatorCli:
        with self._log_path.open("wb") as log:
            env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
            self._process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            self.url = self._wait_for_url(time.monotonic() + 60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_for_url(self, deadline: float) -> str:
        assert self._process is not None
        while time.monotonic() < deadline:
            found = re.search(r"emulator listening on (\S+)", self._log_path.read_text())
            if found:
                return found.group(1)
            try:
                code = self._process.wait(timeout=0.1)  # the poll interval, and early exit
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"emulate exited with {code}:\n{self._log_path.read_text()}")
        raise RuntimeError(f"emulate printed no URL in time:\n{self._log_path.read_text()}")

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)
