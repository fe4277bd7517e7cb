"""``pulsar-bridge check --connect`` against a real broker and the emulator over HTTP, run
as an operator runs it: one line per check, ok or FAILED with the reason, exit 1 on any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.embedded import free_port
from bridge.emulator import EmulatorServer
from tests.conftest import CLIENT_ID, CLIENT_SECRET, Broker
from tests.support.harness import Topics, route_config, write_config

pytestmark = pytest.mark.integration

OUTCOMES = ("ok", "FAILED", "skipped")


def check_connect(directory: Path, timeout_s: float = 10) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bridge", "check", "-c", str(directory), "--connect"]
    return subprocess.run(
        [*command, "--timeout", str(timeout_s)], capture_output=True, text=True, timeout=120
    )


def checks(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """Each check line by what it checked: (outcome, detail)."""
    found: dict[str, tuple[str, str]] = {}
    for line in result.stdout.splitlines():
        outcome, _, rest = line.partition(" ")
        if outcome in OUTCOMES:
            what, _, detail = rest.strip().partition(": ")
            found[what] = (outcome, detail)
    return found


def config(
    directory: Path,
    service_url: str,
    emulator: EmulatorServer,
    routes: dict[str, dict[str, Any]],
    client_secret: str = CLIENT_SECRET,
) -> Path:
    databricks = {"host": emulator.url, "client_id": CLIENT_ID, "client_secret": client_secret}
    return write_config(directory, service_url=service_url, databricks=databricks, routes=routes)


def test_everything_reachable_is_ok_once_per_topic_workspace_and_endpoint(
    tmp_path: Path, broker: Broker, emulator: EmulatorServer
) -> None:
    fraud, spam, more = Topics(), Topics(), Topics()
    spam_route = route_config(spam)
    spam_route["source"]["topics"].append(more.source)
    directory = config(
        tmp_path, broker.url, emulator, {"fraud": route_config(fraud), "spam": spam_route}
    )

    result = check_connect(directory)

    assert result.returncode == 0, result.stdout + result.stderr
    assert checks(result) == {
        f"broker {broker.url}": ("ok", "connected"),
        f"topic {fraud.source} (route fraud)": ("ok", "looked up, not partitioned"),
        f"topic {spam.source} (route spam)": ("ok", "looked up, not partitioned"),
        f"topic {more.source} (route spam)": ("ok", "looked up, not partitioned"),
        "token [databricks] (oauth-m2m)": ("ok", "token obtained"),
        "endpoint fraud-model (route fraud, spam)": ("ok", "READY"),
    }
    assert result.stdout.splitlines()[-1] == f"{directory}: connected, 6 check(s) ok"
    assert len(emulator.state.tokens) == 1  # one token fetch for the one workspace


def test_a_wrong_client_secret_fails_the_token_and_is_never_printed(
    tmp_path: Path, broker: Broker, emulator: EmulatorServer
) -> None:
    wrong = "not-the-secret-4c1e9"
    directory = config(
        tmp_path, broker.url, emulator, {"fraud": route_config(Topics())}, client_secret=wrong
    )

    result = check_connect(directory)

    assert result.returncode == 1
    found = checks(result)
    outcome, reason = found["token [databricks] (oauth-m2m)"]
    assert outcome == "FAILED"
    assert "invalid_client" in reason
    assert found["endpoint fraud-model (route fraud)"] == (
        "FAILED",
        "not described: no token for [databricks]",
    )
    assert found[f"broker {broker.url}"] == ("ok", "connected")
    assert result.stdout.splitlines()[-1] == f"{directory}: 2 of 4 check(s) FAILED"
    assert wrong not in result.stdout + result.stderr


def test_a_missing_endpoint_and_one_not_ready_fail_with_what_databricks_said(
    tmp_path: Path, broker: Broker, emulator: EmulatorServer
) -> None:
    emulator.state.set_ready("fraud-model", False)
    missing = route_config(Topics(), endpoint={"name": "no-such-model"})
    routes = {"fraud": route_config(Topics()), "other": missing}
    directory = config(tmp_path, broker.url, emulator, routes)

    result = check_connect(directory)

    assert result.returncode == 1
    found = checks(result)
    assert found["endpoint no-such-model (route other)"] == (
        "FAILED",
        "HTTP 404: RESOURCE_DOES_NOT_EXIST: Endpoint with name 'no-such-model' does not exist.",
    )
    assert found["endpoint fraud-model (route fraud)"] == (
        "FAILED",
        "exists but is NOT_READY (config_update IN_PROGRESS)",
    )
    assert found["token [databricks] (oauth-m2m)"] == ("ok", "token obtained")


def test_an_unreachable_broker_fails_with_the_reason_and_databricks_is_still_tried(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    nowhere = f"pulsar://127.0.0.1:{free_port()}"  # nothing listens there
    first, second = Topics(), Topics()
    routes = {"a": route_config(first), "b": route_config(second)}
    directory = config(tmp_path, nowhere, emulator, routes)

    result = check_connect(directory, timeout_s=1)

    assert result.returncode == 1
    found = checks(result)
    outcome, reason = found[f"broker {nowhere}"]
    assert outcome == "FAILED"
    assert f"cannot look up {first.source} at {nowhere}" in reason
    assert "check [pulsar] service_url" in reason
    assert found[f"topic {second.source} (route b)"] == (
        "FAILED",
        "not looked up: the broker did not answer the first lookup",
    )
    assert found["endpoint fraud-model (route a, b)"] == ("ok", "READY")
    # The client's own lines about the refused connection went to stderr, not among the
    # checks.
    assert "pulsar_client" not in result.stdout
    assert "Connection refused" in result.stderr


def test_an_invalid_config_is_reported_without_connecting(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    route = route_config(Topics(), batch={"max_events": 0})
    directory = config(tmp_path, "pulsar://127.0.0.1:6650", emulator, {"fraud": route})

    result = check_connect(directory)

    assert result.returncode == 1
    assert checks(result) == {}
    assert "batch.max_events" in result.stderr
    assert not emulator.state.tokens
