"""``status`` and the operator tools: loading without Databricks secrets, and what status
decides from the daemon's and the broker's answers (httpx.MockTransport stands in for both;
tests/test_ops_e2e.py runs status against a real broker)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest

from bridge.config import Config, load_config
from bridge.config_load import SecretsRead
from bridge.errors import ConfigError, ConfigProblem
from bridge.status import DAEMON_DOWN, collect, show
from tests.conftest import Broker
from tests.support.harness import unique_topic

HOST = "https://adb-1.azuredatabricks.net"
ROUTE = """
[source]
topics = ["persistent://public/default/tx"]
subscription = "fraud-sub"

[endpoint]
name = "fraud-model"

[result]
topic = "persistent://public/default/scores"
"""
# The README's systemd set-up: the client secret exists only inside the service, and the
# client id in its environment.
DATABRICKS = f"""
[databricks]
host = "{HOST}"
client_id = "env:BRIDGE_SP_ID"
client_secret = "file:${{CREDENTIALS_DIRECTORY}}/databricks-client-secret"
"""
SYSTEMD_BRIDGE = f"""
[pulsar]
metrics_url = "http://127.0.0.1:8080/metrics"

[pulsar.auth]
type = "token"
token = "file:${{CREDENTIALS_DIRECTORY}}/pulsar-token"

[observe]
http_bind = "127.0.0.1:9464"
{DATABRICKS}"""


def write(directory: Path, bridge: str, route: str = ROUTE) -> Path:
    (directory / "routes").mkdir(parents=True)
    (directory / "bridge.toml").write_text(textwrap.dedent(bridge))
    (directory / "routes" / "fraud.toml").write_text(textwrap.dedent(route))
    return directory


def problems(directory: Path, secrets: SecretsRead, env: Mapping[str, str]) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as raised:
        load_config(directory, env, secrets=secrets)
    return list(raised.value.problems)


# --------------------------------------------------------------------------- loading


def test_status_loads_the_systemd_config_where_no_secret_resolves(tmp_path: Path) -> None:
    directory = write(tmp_path, SYSTEMD_BRIDGE)

    config = load_config(directory, {}, secrets="none")

    assert [route.name for route in config.routes] == ["fraud"]
    assert config.bridge.pulsar.metrics_url == "http://127.0.0.1:8080/metrics"
    # run and check stay strict: the same directory fails there, naming each secret.
    strict = problems(directory, "all", {})
    assert {p.key for p in strict} == {
        "databricks.client_id",
        "databricks.client_secret",
        "pulsar.auth.token",
    }


def test_operator_tools_read_the_pulsar_token_but_no_databricks_secret(tmp_path: Path) -> None:
    directory = write(tmp_path, SYSTEMD_BRIDGE)
    credentials = tmp_path / "credentials"
    credentials.mkdir()

    found = problems(directory, "pulsar", {"CREDENTIALS_DIRECTORY": str(credentials)})

    assert [p.key for p in found] == ["pulsar.auth.token"]
    assert "pulsar-token" in found[0].message
    (credentials / "pulsar-token").write_text("a-pulsar-token\n")
    (credentials / "pulsar-token").chmod(0o600)
    config = load_config(directory, {"CREDENTIALS_DIRECTORY": str(credentials)}, secrets="pulsar")
    assert config.bridge.pulsar.auth is not None


def test_a_host_that_only_the_service_environment_sets_is_not_required(tmp_path: Path) -> None:
    # Everything Databricks comes from the unit's Environment=: nothing in the file.
    directory = write(tmp_path, "")

    assert load_config(directory, {}, secrets="none").routes[0].name == "fraud"
    assert [p.key for p in problems(directory, "all", {})] == ["databricks.host"]


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("env:dapi0123456789abcdef0123456789abcdef", "is not an environment variable name"),
        ("file:", "needs the path"),
        ("file:${CREDENTIALS_DIRECTORY/secret", "must start a variable"),
        ("file:Zq8vR2mK9xT4bW7nL3pY6cJ1", "looks like the secret itself"),
    ],
)
def test_a_reference_that_cannot_resolve_anywhere_is_still_refused(
    tmp_path: Path, reference: str, message: str
) -> None:
    bridge = f'[databricks]\nhost = "{HOST}"\ntoken = "{reference}"\n'
    directory = write(tmp_path, bridge)

    (problem,) = problems(directory, "none", {})

    assert problem.key == "databricks.token"
    assert message in problem.message
    target = reference.partition(":")[2]
    if message != "must start a variable" and target:
        assert target not in problem.message  # a pasted secret is never echoed


def test_other_mistakes_are_refused_as_strictly_as_run_refuses_them(tmp_path: Path) -> None:
    route = ROUTE.replace('name = "fraud-model"', 'name = "fraud-model"\nworkspace = "analytcs"')
    bridge = f'[databricks]\nhost = "{HOST}"\nclient_secret = "env:X"\ntypo = 1\n'
    directory = write(tmp_path, bridge, route)

    keys = {p.key for p in problems(directory, "none", {})}

    assert {"databricks.typo", "endpoint.workspace"} <= keys


# --------------------------------------------------------------------------- collecting

DAEMON = "http://127.0.0.1:9464/status"
METRICS = "http://127.0.0.1:8080/metrics"
LABELS = '{namespace="public/default",topic="tx",subscription="fraud-sub"}'
LAG_METRICS = "".join(
    f"# TYPE {name} gauge\n{name}{LABELS} {value}\n"
    for name, value in (
        ("pulsar_subscription_back_log", 42),
        ("pulsar_subscription_unacked_messages", 3),
        ("pulsar_subscription_consumers_count", 0),
    )
)
Handler = Callable[[httpx.Request], httpx.Response]


def status_document(events_in: int, **route: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "state": "running",
        "paused": None,
        "events_in": events_in,
        "results_out": events_in,
        "dead_lettered": 1,
        "in_flight": 2,
        "last_error": None,
        **route,
    }
    return {"routes": {"fraud": fields}}


def answers(daemon: list[httpx.Response] | None) -> Handler:
    """The broker's metrics, and the daemon's answers in turn (None: nothing listens)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if str(request.url) == METRICS:
            return httpx.Response(200, text=LAG_METRICS)
        if str(request.url) == DAEMON:
            if daemon is None:
                raise httpx.ConnectError("All connection attempts failed", request=request)
            return daemon.pop(0)
        return httpx.Response(404)

    return handle


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write(tmp_path, SYSTEMD_BRIDGE), {}, secrets="none")


async def test_daemon_down_still_shows_the_brokers_backlog(config: Config) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(answers(None))) as http:
        snapshot = await collect(config, http, interval_s=0)

    assert not snapshot.daemon_up
    (row,) = snapshot.rows
    assert (row.state, row.lag.backlog, row.lag.unacked, row.rate_in) == (
        "daemon down",
        42,
        3,
        None,
    )
    table = snapshot.render().splitlines()
    assert table[0].startswith(f"daemon: DOWN: {DAEMON} does not answer (ConnectError")
    assert table[2].split() == ["fraud", "daemon", "down", "-", "-", "-", "-", "42", "3"]


async def test_show_exits_3_when_the_daemon_is_down_and_says_why_in_json(config: Config) -> None:
    out = io.StringIO()
    transport = httpx.MockTransport(answers(None))

    code = await show(config, as_json=True, watch=False, interval_s=0, out=out, transport=transport)

    assert code == DAEMON_DOWN
    (row,) = json.loads(out.getvalue())
    assert row["state"] == "daemon down"
    assert row["daemon_error"].startswith("ConnectError")
    assert row["lag"] == {"backlog": 42, "unacked": 3, "consumers": 0, "error": None}


async def test_daemon_up_gives_rates_from_two_samples_and_a_pause_reason(config: Config) -> None:
    paused = {"kind": "route", "reason": "HTTP 404 RESOURCE_DOES_NOT_EXIST"}
    daemon = [
        httpx.Response(200, json=status_document(100)),
        httpx.Response(200, json=status_document(160, state="paused", paused=paused)),
    ]
    async with httpx.AsyncClient(transport=httpx.MockTransport(answers(daemon))) as http:
        snapshot = await collect(config, http, interval_s=0)

    assert snapshot.daemon_up
    (row,) = snapshot.rows
    assert (row.state, row.rate_in, row.in_flight, row.lag.backlog) == ("paused", 60, 2, 42)
    assert row.last_error == "paused (route): HTTP 404 RESOURCE_DOES_NOT_EXIST"
    assert snapshot.render().splitlines()[0].split()[:2] == ["ROUTE", "STATE"]


async def test_another_program_on_the_daemons_port_is_not_taken_for_the_daemon(
    config: Config,
) -> None:
    daemon = [httpx.Response(200, text="<html>hello</html>")]
    async with httpx.AsyncClient(transport=httpx.MockTransport(answers(daemon))) as http:
        snapshot = await collect(config, http, interval_s=0)

    assert snapshot.daemon_error == "the answer is not the daemon's status document"
    assert snapshot.rows[0].lag.backlog == 42


async def test_without_http_bind_status_says_it_cannot_ask(config: Config) -> None:
    # TOML has no null, so the settings are what turns the HTTP server off.
    observe = config.bridge.observe.model_copy(update={"http_bind": None})
    config = config.model_copy(
        update={"bridge": config.bridge.model_copy(update={"observe": observe})}
    )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answers(None))) as http:
        snapshot = await collect(config, http, interval_s=0)

    assert snapshot.rows[0].state == "unknown"
    assert snapshot.render().startswith("daemon: not asked ([observe] http_bind is off")


async def test_admin_api_gets_the_pulsar_token_read_when_used(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    bridge = SYSTEMD_BRIDGE.replace(
        'metrics_url = "http://127.0.0.1:8080/metrics"', 'admin_url = "http://127.0.0.1:8081"'
    )
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    config = load_config(write(tmp_path / "conf", bridge), env, secrets="none")
    seen: list[tuple[str, str | None]] = []

    def admin(request: httpx.Request) -> httpx.Response:
        seen.append(
            (request.url.host + ":" + str(request.url.port), request.headers.get("authorization"))
        )
        stats = {"msgBacklog": 7, "unackedMessages": 1, "consumers": [{}]}
        return httpx.Response(200, json={"subscriptions": {"fraud-sub": stats}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        missing = await collect(config, http, interval_s=0)
        (credentials / "pulsar-token").write_text("the-pulsar-token\n")
        (credentials / "pulsar-token").chmod(0o600)
        found = await collect(config, http, interval_s=0)

    assert missing.rows[0].lag.backlog is None
    assert "[pulsar] auth token: cannot read secret file" in str(missing.rows[0].lag.error)
    assert (found.rows[0].lag.backlog, found.rows[0].lag.consumers) == (7, 1)
    # The token goes to the admin API, and nowhere else (not to the daemon's port).
    assert {auth for where, auth in seen if where == "127.0.0.1:8081"} == {
        "Bearer the-pulsar-token"
    }
    assert {auth for where, auth in seen if where != "127.0.0.1:8081"} == {None}


# --------------------------------------------------------------------------- the tools


@pytest.mark.integration
def test_send_and_tail_run_where_the_databricks_secrets_do_not_resolve(
    tmp_path: Path, broker: Broker
) -> None:
    topic = unique_topic("tools")
    directory = write(tmp_path, f'[pulsar]\nservice_url = "{broker.url}"\n{DATABRICKS}')
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    command = [sys.executable, "-m", "bridge"]

    sent = subprocess.run(
        [*command, "send", "-c", str(directory), "--topic", topic],
        input='{"id": 1}\n',
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    shown = subprocess.run(
        [*command, "tail", "-c", str(directory), "--topic", topic, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert sent.returncode == 0, sent.stderr
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["payload"] for line in shown.stdout.splitlines()] == ['{"id": 1}']
