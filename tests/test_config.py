"""load_config over real config directories: defaults, every problem at once, env fallback."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from bridge.config import Config, load_config
from bridge.errors import ConfigError, ConfigProblem

REPO_CONFIG = Path(__file__).parent.parent / "config"

HOST = "https://adb-123.azuredatabricks.net"
CLIENT_ID = "sp-client-id-41"
CLIENT_SECRET = "sp-client-secret-value-8e2f"

BRIDGE = f"""
[databricks]
host = "{HOST}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
"""

URL_ROUTE = """
[source]
topics = ["persistent://public/default/in"]
subscription = "sub"

[endpoint]
url = "http://127.0.0.1:5001/invocations"

[result]
topic = "persistent://public/default/out"
"""

NAMED_ROUTE = """
[source]
topics = ["persistent://public/default/tx"]
subscription = "fraud-sub"

[endpoint]
name = "fraud-model"

[result]
topic = "persistent://public/default/scores"
"""


def write_config(
    directory: Path, bridge: str | None, routes: Mapping[str, str] | None = None
) -> Path:
    """A config dir with ``bridge.toml`` (unless None) and ``routes/<name>.toml``."""
    directory.mkdir(parents=True, exist_ok=True)
    if bridge is not None:
        (directory / "bridge.toml").write_text(textwrap.dedent(bridge), encoding="utf-8")
    if routes is not None:
        (directory / "routes").mkdir(exist_ok=True)
        for name, text in routes.items():
            (directory / "routes" / f"{name}.toml").write_text(
                textwrap.dedent(text), encoding="utf-8"
            )
    return directory


def load(directory: Path, env: Mapping[str, str] | None = None) -> Config:
    return load_config(directory, env={} if env is None else env)


def problems_of(directory: Path, env: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load(directory, env)
    assert info.value.problems, "ConfigError without problems"
    # The exception text lists every problem, one per line.
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]
    return info.value.problems


def where(problems: list[ConfigProblem]) -> set[tuple[str, str]]:
    """(file name, dotted key) of each problem."""
    return {(Path(p.file).name, p.key) for p in problems}


def find(problems: list[ConfigProblem], file: str, key: str) -> ConfigProblem:
    matches = [p for p in problems if Path(p.file).name == file and p.key == key]
    assert matches, f"no problem at {file}: {key} in {[str(p) for p in problems]}"
    return matches[0]


# --------------------------------------------------------------------------- valid configs


def test_full_valid_config_with_defaults(tmp_path: Path) -> None:
    directory = write_config(tmp_path, BRIDGE, {"fraud": NAMED_ROUTE, "echo": URL_ROUTE})

    config = load(directory)

    assert config.directory == directory
    # Routes are named by file stem and sorted by file name.
    assert [r.name for r in config.routes] == ["echo", "fraud"]
    fraud = config.routes[1]
    assert fraud.file == str(directory / "routes" / "fraud.toml")
    assert fraud.source.topics == ["persistent://public/default/tx"]
    assert fraud.source.subscription == "fraud-sub"
    assert fraud.source.subscription_type == "shared"
    assert fraud.source.initial_position == "earliest"
    assert fraud.endpoint.name == "fraud-model"
    assert fraud.endpoint.url is None
    assert fraud.endpoint.format == "dataframe_records"
    assert fraud.endpoint.params is None
    assert fraud.batch.max_events == 100
    assert fraud.batch.linger_ms == 20
    assert fraud.batch.max_bytes == 4_000_000
    assert fraud.result.passthrough == []
    assert fraud.failure.max_redeliveries == 5
    assert fraud.failure.attempts == 3
    assert fraud.failure.retry_statuses == [429, 500, 502, 503, 504]
    assert fraud.failure.dead_letter_topic is None
    assert fraud.dead_letter_topic == "persistent://public/default/tx-fraud-sub-DLQ"

    assert config.bridge.pulsar.service_url == "pulsar://127.0.0.1:6650"
    assert config.bridge.observe.http_bind == "127.0.0.1:9464"
    assert config.bridge.workspaces == {}
    ws = config.workspace_for(fraud)
    assert ws is config.bridge.databricks
    assert ws.host == HOST
    assert ws.resolved_auth_type == "oauth-m2m"
    assert ws.client_id is not None
    assert ws.client_id.reveal() == CLIENT_ID
    assert ws.client_secret is not None
    assert ws.client_secret.reveal() == CLIENT_SECRET


def test_every_key_set_explicitly(tmp_path: Path) -> None:
    route = """
    [source]
    topics = ["a", "b"]
    subscription = "s"
    subscription_type = "key_shared"
    initial_position = "latest"
    receiver_queue_size = 10

    [endpoint]
    url = "http://127.0.0.1:1/invocations"
    format = "inputs"
    params = { threshold = 0.5 }
    timeout_s = 5
    max_in_flight = 2

    [batch]
    max_events = 7
    max_bytes = 1000
    linger_ms = 2.5

    [result]
    topic = "r"
    passthrough = ["id"]

    [failure]
    max_redeliveries = 0
    dead_letter_topic = "dlq"
    attempts = 1
    retry_statuses = [503]
    """
    config = load(write_config(tmp_path, "", {"r": route}))

    (r,) = config.routes
    assert r.source.subscription_type == "key_shared"
    assert r.source.initial_position == "latest"
    assert r.endpoint.format == "inputs"
    assert r.endpoint.params == {"threshold": 0.5}
    # A TOML integer is accepted where a float is expected.
    assert r.endpoint.timeout_s == 5.0
    assert r.batch.max_events == 7
    assert r.batch.linger_ms == 2.5
    assert r.result.passthrough == ["id"]
    assert r.failure.max_redeliveries == 0
    assert r.failure.retry_statuses == [503]
    assert r.dead_letter_topic == "dlq"


def test_missing_bridge_toml_means_all_defaults(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, None, {"r": URL_ROUTE}))

    assert config.bridge.databricks.host is None
    assert config.bridge.databricks.resolved_auth_type == "none"
    assert config.bridge.daemon.drain_grace_s == 30


def test_settings_are_frozen(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, BRIDGE, {"r": URL_ROUTE}))

    with pytest.raises(ValueError, match="frozen"):
        config.routes[0].batch.max_events = 1


def test_repr_of_config_does_not_leak_secrets(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, BRIDGE, {"r": URL_ROUTE}))

    assert CLIENT_SECRET not in repr(config)
    assert CLIENT_SECRET not in str(config.bridge.databricks)
    assert CLIENT_SECRET not in config.model_dump_json()


def test_repo_config_directory_loads() -> None:
    env = {"DATABRICKS_CLIENT_ID": CLIENT_ID, "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET}

    config = load_config(REPO_CONFIG, env=env)

    assert "fraud" in {r.name for r in config.routes}
    ws = config.bridge.databricks
    assert ws.resolved_auth_type == "oauth-m2m"
    assert ws.client_secret is not None
    assert ws.client_secret.source == "env:DATABRICKS_CLIENT_SECRET"
    assert ws.client_secret.reveal() == CLIENT_SECRET


def test_repo_config_directory_needs_its_env_secrets() -> None:
    problems = problems_of(REPO_CONFIG, env={})

    assert ("bridge.toml", "databricks.client_id") in where(problems)
    assert ("bridge.toml", "databricks.client_secret") in where(problems)


# --------------------------------------------------------------------------- workspaces


def test_databricks_sub_tables_become_workspaces(tmp_path: Path) -> None:
    bridge = (
        BRIDGE
        + """
    [databricks.analytics]
    host = "https://adb-456.azuredatabricks.net"
    token = "dapi-analytics"
    """
    )
    route = NAMED_ROUTE.replace('name = "fraud-model"', 'name = "m"\nworkspace = "analytics"')
    config = load(write_config(tmp_path, bridge, {"r": route}))

    assert set(config.bridge.workspaces) == {"analytics"}
    analytics = config.bridge.workspaces["analytics"]
    assert analytics.host == "https://adb-456.azuredatabricks.net"
    assert analytics.resolved_auth_type == "pat"
    # The sub-table is not a key of the default workspace.
    assert config.bridge.databricks.host == HOST
    assert config.workspace_for(config.routes[0]) is analytics


def test_problem_in_a_workspace_sub_table_is_named_by_its_toml_key(tmp_path: Path) -> None:
    bridge = """
    [databricks.analytics]
    host = "https://h"
    hots = "typo"
    """
    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert where(problems) == {("bridge.toml", "databricks.analytics.hots")}


def test_top_level_workspaces_table_is_rejected(tmp_path: Path) -> None:
    bridge = """
    [workspaces.analytics]
    host = "https://h"
    """
    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert any(p.key.startswith("workspaces") for p in problems)


# --------------------------------------------------------------------------- env fallback


def test_env_fallback_when_keys_are_absent(tmp_path: Path) -> None:
    env = {
        "DATABRICKS_HOST": HOST,
        "DATABRICKS_CLIENT_ID": CLIENT_ID,
        "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
    }
    config = load(write_config(tmp_path, "[databricks]\n", {"r": NAMED_ROUTE}), env)

    ws = config.bridge.databricks
    assert ws.host == HOST
    assert ws.resolved_auth_type == "oauth-m2m"
    assert ws.client_id is not None
    assert ws.client_secret is not None
    # Secrets stay references to the variable, resolved from the injected env.
    assert ws.client_id.source == "env:DATABRICKS_CLIENT_ID"
    assert ws.client_secret.source == "env:DATABRICKS_CLIENT_SECRET"
    assert ws.client_id.reveal() == CLIENT_ID
    assert ws.client_secret.reveal() == CLIENT_SECRET


def test_env_fallback_fills_a_partial_databricks_table(tmp_path: Path) -> None:
    env = {"DATABRICKS_HOST": HOST, "DATABRICKS_TOKEN": "dapi-xyz"}
    config = load(
        write_config(tmp_path, "[databricks]\ntoken_leeway_s = 5\n", {"r": NAMED_ROUTE}), env
    )

    ws = config.bridge.databricks
    assert ws.host == HOST
    assert ws.resolved_auth_type == "pat"
    assert ws.token is not None
    assert ws.token.reveal() == "dapi-xyz"


def test_keys_in_the_file_win_over_env(tmp_path: Path) -> None:
    env = {"DATABRICKS_HOST": "https://from-env", "DATABRICKS_CLIENT_ID": "env-id"}
    config = load(write_config(tmp_path, BRIDGE, {"r": NAMED_ROUTE}), env)

    ws = config.bridge.databricks
    assert ws.host == HOST
    assert ws.client_id is not None
    assert ws.client_id.reveal() == CLIENT_ID


def test_env_fallback_does_not_apply_to_workspace_sub_tables(tmp_path: Path) -> None:
    bridge = """
    [databricks]
    [databricks.analytics]
    host = "https://h"
    """
    env = {"DATABRICKS_HOST": HOST, "DATABRICKS_TOKEN": "dapi-xyz"}
    config = load(write_config(tmp_path, bridge, {"r": URL_ROUTE}), env)

    assert config.bridge.workspaces["analytics"].token is None
    assert config.bridge.workspaces["analytics"].resolved_auth_type == "none"
    assert config.bridge.databricks.resolved_auth_type == "pat"


def test_missing_host_is_a_problem_unless_env_provides_it(tmp_path: Path) -> None:
    directory = write_config(tmp_path, "[databricks]\n", {"fraud": NAMED_ROUTE})

    problem = find(problems_of(directory), "bridge.toml", "databricks.host")
    assert "'fraud'" in problem.message
    assert "DATABRICKS_HOST" in problem.message

    assert load(directory, {"DATABRICKS_HOST": HOST}).bridge.databricks.host == HOST


@pytest.mark.parametrize("bridge", ["", None], ids=["no-databricks-table", "no-bridge-toml"])
def test_env_fallback_without_a_databricks_table(tmp_path: Path, bridge: str | None) -> None:
    env = {
        "DATABRICKS_HOST": HOST,
        "DATABRICKS_CLIENT_ID": CLIENT_ID,
        "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
    }
    config = load(write_config(tmp_path, bridge, {"r": NAMED_ROUTE}), env)

    assert config.bridge.databricks.host == HOST
    assert config.bridge.databricks.resolved_auth_type == "oauth-m2m"


def test_profile_from_env_does_not_override_client_credentials_in_file(tmp_path: Path) -> None:
    env = {"DATABRICKS_CONFIG_PROFILE": "DEFAULT"}
    config = load(write_config(tmp_path, BRIDGE, {"r": NAMED_ROUTE}), env)

    assert config.bridge.databricks.resolved_auth_type == "oauth-m2m"


def test_client_credentials_from_env_do_not_override_a_token_in_file(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    token = "dapi-from-file"
    """
    env = {"DATABRICKS_CLIENT_ID": CLIENT_ID, "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET}
    config = load(write_config(tmp_path, bridge, {"r": NAMED_ROUTE}), env)

    assert config.bridge.databricks.resolved_auth_type == "pat"


# --------------------------------------------------------------------------- auth_type


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (f'host = "{HOST}"\nclient_id = "i"\nclient_secret = "s"', "oauth-m2m"),
        (f'host = "{HOST}"\ntoken = "dapi-1"', "pat"),
        (f'host = "{HOST}"\noidc_token_env = "IDP_TOKEN"', "oidc-federation"),
        ('profile = "DEFAULT"', "databricks-sdk"),
        (f'host = "{HOST}"', "none"),
        (
            f'host = "{HOST}"\nauth_type = "pat"\ntoken = "t"\n'
            'client_id = "i"\nclient_secret = "s"',
            "pat",
        ),
    ],
)
def test_auth_type_inference(tmp_path: Path, table: str, expected: str) -> None:
    config = load(write_config(tmp_path, f"[databricks]\n{table}\n", {"r": URL_ROUTE}))

    assert config.bridge.databricks.resolved_auth_type == expected


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (f'host = "{HOST}"\nauth_type = "pat"', "needs token"),
        (f'host = "{HOST}"\nauth_type = "oauth-m2m"\nclient_id = "i"', "needs client_secret"),
        ('client_id = "i"\nclient_secret = "s"', "needs host"),
        (
            f'host = "{HOST}"\noidc_token_env = "A"\noidc_token_file = "/f"',
            "exactly one of oidc_token_file, oidc_token_env",
        ),
    ],
)
def test_credentials_must_match_auth_type(tmp_path: Path, table: str, message: str) -> None:
    problems = problems_of(write_config(tmp_path, f"[databricks]\n{table}\n", {"r": URL_ROUTE}))

    assert message in find(problems, "bridge.toml", "databricks").message


# --------------------------------------------------------------------------- problems


def test_unknown_key_in_bridge_toml(tmp_path: Path) -> None:
    bridge = """
    [pulsar]
    service_urll = "pulsar://x:6650"

    [daemon]
    drain_grace = 5
    """
    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert where(problems) == {
        ("bridge.toml", "pulsar.service_urll"),
        ("bridge.toml", "daemon.drain_grace"),
    }
    assert all("Extra inputs are not permitted" in p.message for p in problems)


def test_unknown_top_level_table_in_bridge_toml(tmp_path: Path) -> None:
    problems = problems_of(
        write_config(tmp_path, "[observer]\nlog_level = 'info'\n", {"r": URL_ROUTE})
    )

    assert where(problems) == {("bridge.toml", "observer")}


def test_unknown_key_in_a_route(tmp_path: Path) -> None:
    route = URL_ROUTE + "\n[batch]\nmax_event = 5\n"

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert where(problems) == {("r.toml", "batch.max_event")}
    assert problems[0].file == str(tmp_path / "routes" / "r.toml")


def test_unknown_top_level_table_in_a_route(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, "", {"r": URL_ROUTE + "\n[retry]\nx = 1\n"}))

    assert where(problems) == {("r.toml", "retry")}


def test_name_key_in_a_route_file_is_rejected(tmp_path: Path) -> None:
    route = 'name = "other-name"\n' + URL_ROUTE

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert ("r.toml", "name") in where(problems)


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("batch", 'max_events = "100"', "batch.max_events"),
        ("batch", "linger_ms = true", "batch.linger_ms"),
        ("endpoint", 'format = "csv"', "endpoint.format"),
        ("failure", "attempts = 0", "failure.attempts"),
        ("source", "receiver_queue_size = 1.5", "source.receiver_queue_size"),
    ],
)
def test_wrong_type_or_value_names_the_dotted_key(
    tmp_path: Path, section: str, value: str, key: str
) -> None:
    if f"[{section}]" in URL_ROUTE:
        route = URL_ROUTE.replace(f"[{section}]", f"[{section}]\n{value}")
    else:
        route = f"{URL_ROUTE}\n[{section}]\n{value}\n"

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert where(problems) == {("r.toml", key)}


def test_missing_required_result_topic(tmp_path: Path) -> None:
    route = URL_ROUTE.replace('topic = "persistent://public/default/out"', "")

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert where(problems) == {("r.toml", "result.topic")}
    assert "required" in problems[0].message.lower()


def test_missing_required_source_table(tmp_path: Path) -> None:
    route = """
    [endpoint]
    url = "http://x/invocations"
    [result]
    topic = "out"
    """
    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert where(problems) == {("r.toml", "source")}


def test_empty_topics_list(tmp_path: Path) -> None:
    route = URL_ROUTE.replace('topics = ["persistent://public/default/in"]', "topics = []")

    assert where(problems_of(write_config(tmp_path, "", {"r": route}))) == {
        ("r.toml", "source.topics")
    }


@pytest.mark.parametrize(
    "endpoint",
    [
        'name = "m"\nurl = "http://x/invocations"',
        'format = "instances"',
    ],
    ids=["both", "neither"],
)
def test_endpoint_needs_exactly_one_of_name_or_url(tmp_path: Path, endpoint: str) -> None:
    route = URL_ROUTE.replace('url = "http://127.0.0.1:5001/invocations"', endpoint)

    problems = problems_of(write_config(tmp_path, BRIDGE, {"r": route}))

    problem = find(problems, "r.toml", "endpoint")
    assert "exactly one of 'name' or 'url'" in problem.message


def test_workspace_on_a_url_endpoint_is_rejected(tmp_path: Path) -> None:
    route = URL_ROUTE.replace("[endpoint]", '[endpoint]\nworkspace = "analytics"')

    problem = find(problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", "endpoint")
    assert "'name' endpoints only" in problem.message


def test_two_routes_on_the_same_subscription_and_topic(tmp_path: Path) -> None:
    other = URL_ROUTE.replace("default/out", "default/out2")

    problems = problems_of(write_config(tmp_path, "", {"a": URL_ROUTE, "b": other}))

    assert where(problems) == {("b.toml", "source.subscription")}
    assert str(tmp_path / "routes" / "a.toml") in problems[0].message


def test_same_topic_on_different_subscriptions_is_fine(tmp_path: Path) -> None:
    other = URL_ROUTE.replace('"sub"', '"sub2"').replace("default/out", "default/out2")

    config = load(write_config(tmp_path, "", {"a": URL_ROUTE, "b": other}))

    assert len(config.routes) == 2


def test_result_topic_equal_to_a_source_topic(tmp_path: Path) -> None:
    route = URL_ROUTE.replace(
        'topic = "persistent://public/default/out"', 'topic = "persistent://public/default/in"'
    )

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert where(problems) == {("r.toml", "result.topic")}


def test_route_naming_an_unknown_workspace(tmp_path: Path) -> None:
    route = NAMED_ROUTE.replace('name = "fraud-model"', 'name = "m"\nworkspace = "analytics"')

    problems = problems_of(write_config(tmp_path, BRIDGE, {"r": route}))

    assert where(problems) == {("r.toml", "endpoint.workspace")}
    assert "[databricks.analytics]" in problems[0].message


def test_unreadable_file_secret(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    token = "file:databricks.pat"
    """
    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    problem = find(problems, "bridge.toml", "databricks.token")
    assert str(tmp_path / "databricks.pat") in problem.message


def test_file_secret_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    token = "file:databricks.pat"
    """
    directory = write_config(tmp_path / "conf", bridge, {"r": URL_ROUTE})
    (directory / "databricks.pat").write_text("dapi-from-file\n", encoding="utf-8")

    token = load(directory).bridge.databricks.token
    assert token is not None
    assert token.reveal() == "dapi-from-file"


def test_unset_env_secret(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    client_id = "env:SP_ID"
    client_secret = "env:SP_SECRET"

    [databricks.analytics]
    host = "{HOST}"
    token = "env:ANALYTICS_TOKEN"

    [pulsar.auth]
    type = "token"
    token = "env:PULSAR_TOKEN"
    """
    directory = write_config(tmp_path, bridge, {"r": URL_ROUTE})

    problems = problems_of(directory, env={"SP_ID": "id"})

    assert where(problems) == {
        ("bridge.toml", "databricks.client_secret"),
        ("bridge.toml", "databricks.analytics.token"),
        ("bridge.toml", "pulsar.auth.token"),
    }
    assert all("is not set" in p.message for p in problems)
    full_env = {"SP_ID": "i", "SP_SECRET": "s", "ANALYTICS_TOKEN": "t", "PULSAR_TOKEN": "p"}
    assert len(load(directory, full_env).routes) == 1


def test_invalid_toml_in_bridge_and_route(tmp_path: Path) -> None:
    directory = write_config(tmp_path, "[pulsar\n", {"good": URL_ROUTE, "bad": "x = = 1\n"})

    problems = problems_of(directory)

    assert where(problems) == {("bridge.toml", ""), ("bad.toml", "")}
    assert all("invalid TOML" in p.message for p in problems)


def test_missing_routes_directory(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, BRIDGE, None))

    assert len(problems) == 1
    assert problems[0].file == str(tmp_path / "routes")
    assert "no route files" in problems[0].message


def test_empty_routes_directory(tmp_path: Path) -> None:
    problems = problems_of(write_config(tmp_path, BRIDGE, {}))

    assert [p.file for p in problems] == [str(tmp_path / "routes")]


def test_missing_config_directory(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent")

    assert [(p.file, p.message) for p in problems] == [
        (str(tmp_path / "absent"), "config directory does not exist")
    ]


def _problem_routes() -> dict[str, str]:
    typo = URL_ROUTE.replace("[source]", "[source]\nsubscripton = 'x'")
    # Result topic equal to its own source topic.
    loop = URL_ROUTE.replace('"sub"', '"sub-loop"').replace("default/out", "default/in")
    # Same subscription and topic as "a".
    clash = URL_ROUTE.replace("default/out", "default/out3")
    no_result = NAMED_ROUTE.replace('topic = "persistent://public/default/scores"', "")
    return {"a": URL_ROUTE, "b": typo, "c": loop, "d": clash, "e": no_result}


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    token = "env:UNSET_TOKEN"
    """
    problems = problems_of(write_config(tmp_path, bridge, _problem_routes()))

    assert where(problems) == {
        ("bridge.toml", "databricks.token"),
        ("b.toml", "source.subscripton"),
        # b.toml is invalid, yet still checked against the other routes: it shares a's
        # subscription on a's topic.
        ("b.toml", "source.subscription"),
        ("c.toml", "result.topic"),
        ("d.toml", "source.subscription"),
        ("e.toml", "result.topic"),
    }
    # Grouped by file, bridge.toml first.
    assert Path(problems[0].file).name == "bridge.toml"


def test_invalid_bridge_toml_does_not_hide_cross_route_problems(tmp_path: Path) -> None:
    bridge = """
    [observe]
    log_levl = "info"
    """
    problems = problems_of(write_config(tmp_path, bridge, _problem_routes()))

    assert where(problems) == {
        ("bridge.toml", "observe.log_levl"),
        # e.toml names an endpoint, and bridge.toml (though invalid) has no host for it.
        ("bridge.toml", "databricks.host"),
        ("b.toml", "source.subscripton"),
        ("b.toml", "source.subscription"),
        ("c.toml", "result.topic"),
        ("d.toml", "source.subscription"),
        ("e.toml", "result.topic"),
    }


def test_secret_problems_are_reported_with_route_problems(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    token = "env:UNSET_TOKEN"
    """
    typo = URL_ROUTE.replace("[source]", "[source]\nsubscripton = 'x'")

    problems = problems_of(write_config(tmp_path, bridge, {"a": typo}))

    assert where(problems) == {
        ("bridge.toml", "databricks.token"),
        ("a.toml", "source.subscripton"),
    }


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o600, False)])
def test_secret_file_readable_by_others_is_a_warning(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    write_config(
        tmp_path / "cfg",
        bridge=f"""
            [databricks]
            host = "https://example.invalid"
            token = "file:{secret}"
        """,
        routes={
            "r": """
                [source]
                topics = ["in"]
                subscription = "s"
                [endpoint]
                name = "m"
                [result]
                topic = "out"
            """
        },
    )

    warnings = load(tmp_path / "cfg").warnings

    if warned:
        (warning,) = warnings
        assert "databricks.token" in warning
        assert "mode 644" in warning
        assert "s3cret" not in warning
    else:
        assert warnings == ()


# --------------------------------------------------------------------------- topic names


def route_with(
    source: str = "persistent://public/default/in",
    result: str = "persistent://public/default/out",
    *,
    subscription: str = "sub",
    extra: str = "",
) -> str:
    """A URL route reading ``source`` into ``result``; ``extra`` is appended (TOML tables)."""
    return f"""
[source]
topics = [{source!r}]
subscription = {subscription!r}

[endpoint]
url = "http://127.0.0.1:5001/invocations"

[result]
topic = {result!r}
{extra}
"""


@pytest.mark.parametrize(
    ("key", "route", "reason"),
    [
        ("source.topics[0]", route_with(source="public/tx"), "write <topic>, <tenant>/"),
        ("result.topic", route_with(result="http://public/default/x"), "unknown domain 'http'"),
        (
            "failure.dead_letter_topic",
            route_with(extra='[failure]\ndead_letter_topic = "persistent://acme!/ns/dlq"'),
            "the tenant is 'acme!'",
        ),
    ],
)
def test_invalid_topic_names_are_rejected_with_the_reason(
    tmp_path: Path, key: str, route: str, reason: str
) -> None:
    problem = find(problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", key)

    assert reason in problem.message


def test_topics_are_kept_as_written(tmp_path: Path) -> None:
    route = route_with(source="transactions", result="acme/payments/scores")

    (r,) = load(write_config(tmp_path, "", {"r": route})).routes

    assert r.source.topics == ["transactions"]
    assert r.result.topic == "acme/payments/scores"
    assert r.dead_letter_topic == "transactions-sub-DLQ"


def test_result_topic_equal_to_its_source_under_another_spelling(tmp_path: Path) -> None:
    route = route_with(source="persistent://public/default/transactions", result="transactions")

    problems = problems_of(write_config(tmp_path, "", {"fraud": route}))

    problem = find(problems, "fraud.toml", "result.topic")
    assert where(problems) == {("fraud.toml", "result.topic")}
    assert problem.message.startswith(
        "'transactions' is this route's source 'persistent://public/default/transactions' "
        "(both are persistent://public/default/transactions)"
    )
    assert "every result would be consumed again" in problem.message


def test_dead_letter_topic_equal_to_its_source(tmp_path: Path) -> None:
    route = route_with(source="tx", extra='[failure]\ndead_letter_topic = "public/default/tx"')

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    problem = find(problems, "r.toml", "failure.dead_letter_topic")
    assert "'public/default/tx' is this route's source 'tx'" in problem.message
    assert "every dead letter would be consumed again" in problem.message


def test_result_topic_on_a_partition_of_its_source(tmp_path: Path) -> None:
    route = route_with(source="tx", result="tx-partition-1")

    problem = find(problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", "result.topic")
    assert "(both are persistent://public/default/tx, or a partition of it)" in problem.message


def test_two_routes_feeding_each_other_are_both_rejected(tmp_path: Path) -> None:
    a = route_with(source="topic-a", result="persistent://public/default/topic-b")
    b = route_with(source="public/default/topic-b", result="topic-a", subscription="sub-b")

    problems = problems_of(write_config(tmp_path, "", {"a": a, "b": b}))

    assert where(problems) == {("a.toml", "result.topic"), ("b.toml", "result.topic")}
    on_a = find(problems, "a.toml", "result.topic").message
    assert on_a.startswith(
        "'persistent://public/default/topic-b' leads back to this route's source 'topic-a': "
        f"route 'b' ({tmp_path / 'routes' / 'b.toml'}) consumes it and publishes "
        "result.topic 'topic-a'"
    )
    on_b = find(problems, "b.toml", "result.topic").message
    assert f"route 'a' ({tmp_path / 'routes' / 'a.toml'})" in on_b


def test_a_three_route_cycle_names_every_hop(tmp_path: Path) -> None:
    routes = {
        "a": route_with(source="t1", result="t2", subscription="a"),
        "b": route_with(source="t2", result="t3", subscription="b"),
        "c": route_with(source="t3", result="t1", subscription="c"),
    }

    problems = problems_of(write_config(tmp_path, "", routes))

    assert where(problems) == {(f"{n}.toml", "result.topic") for n in "abc"}
    message = find(problems, "a.toml", "result.topic").message
    assert "route 'b'" in message
    assert "publishes result.topic 't3'; route 'c'" in message
    assert "publishes result.topic 't1'" in message


def test_dead_letters_replayed_into_the_source_are_a_cycle(tmp_path: Path) -> None:
    main = route_with(source="tx", extra='[failure]\ndead_letter_topic = "tx-dlq"')
    replay = route_with(source="tx-dlq", result="tx", subscription="replay")

    problems = problems_of(write_config(tmp_path, "", {"main": main, "replay": replay}))

    assert where(problems) == {
        ("main.toml", "failure.dead_letter_topic"),
        ("replay.toml", "result.topic"),
    }
    assert (
        "every dead letter would come back"
        in find(problems, "main.toml", "failure.dead_letter_topic").message
    )


def test_the_default_dead_letter_topic_is_checked_too(tmp_path: Path) -> None:
    main = route_with(source="tx")  # dead letters go to tx-sub-DLQ
    replay = route_with(source="tx-sub-DLQ", result="tx", subscription="replay")

    problems = problems_of(write_config(tmp_path, "", {"main": main, "replay": replay}))

    assert (
        "'tx-sub-DLQ' leads back to this route's source 'tx'"
        in find(problems, "main.toml", "failure.dead_letter_topic").message
    )


def test_chains_of_routes_without_a_way_back_are_fine(tmp_path: Path) -> None:
    routes = {
        "score": route_with(source="tx", result="scores", subscription="score"),
        "alert": route_with(source="scores", result="alerts", subscription="alert"),
        # Reprocessing a dead-letter topic elsewhere is fine as well.
        "retry": route_with(source="tx-score-DLQ", result="retried", subscription="retry"),
    }

    assert len(load(write_config(tmp_path, "", routes)).routes) == 3


def test_a_loop_is_found_even_when_the_route_has_other_errors(tmp_path: Path) -> None:
    route = route_with(source="tx", result="tx").replace("[endpoint]", "[endpoint]\nmax_in = 1")

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert where(problems) == {("r.toml", "endpoint.max_in"), ("r.toml", "result.topic")}


def test_one_subscription_on_one_topic_under_two_spellings(tmp_path: Path) -> None:
    a = route_with(source="tx", result="out-a")
    b = route_with(source="persistent://public/default/tx", result="out-b")

    problems = problems_of(write_config(tmp_path, "", {"a": a, "b": b}))

    problem = find(problems, "b.toml", "source.subscription")
    assert problem.message == (
        "subscription 'sub' on topic 'persistent://public/default/tx' is already used by "
        f"{tmp_path / 'routes' / 'a.toml'} (both are persistent://public/default/tx)"
    )


def test_non_persistent_source_is_an_error_unless_allowed(tmp_path: Path) -> None:
    source = "non-persistent://public/default/clicks"

    problems = problems_of(write_config(tmp_path, "", {"r": route_with(source=source)}))

    problem = find(problems, "r.toml", "source.topics")
    assert problem.message.startswith(f"{source!r}: a non-persistent topic drops events")
    assert "source.allow_non_persistent = true" in problem.message

    allowed = route_with(source=source).replace("[source]", "[source]\nallow_non_persistent = true")
    (r,) = load(write_config(tmp_path, "", {"r": allowed})).routes
    assert r.source.allow_non_persistent is True


def test_non_persistent_result_topic_is_a_warning(tmp_path: Path) -> None:
    route = route_with(result="non-persistent://public/default/scores")

    config = load(write_config(tmp_path, "", {"r": route}))

    (warning,) = config.warnings
    assert warning.startswith(f"{tmp_path / 'routes' / 'r.toml'}: result.topic: ")
    assert "non-persistent" in warning


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8080", "'http://127.0.0.1:8080' has http://: the broker's binary"),
        ("127.0.0.1:6650", "'127.0.0.1:6650' has no scheme"),
        ("pulsar://broker", "'broker' is not host:port"),
        ("pulsar://broker:6650/ns", "must be pulsar://host:port with no path"),
        ("pulsar://broker:0", "has port 0"),
    ],
)
def test_pulsar_service_url_must_be_pulsar_host_and_port(
    tmp_path: Path, url: str, message: str
) -> None:
    bridge = f'[pulsar]\nservice_url = "{url}"\n'

    problem = find(
        problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE})),
        "bridge.toml",
        "pulsar.service_url",
    )
    assert message in problem.message


@pytest.mark.parametrize(
    "url", ["pulsar+ssl://broker.example:6651", "pulsar://b1:6650,b2:6650/", "pulsar://[::1]:6650"]
)
def test_valid_pulsar_service_urls(tmp_path: Path, url: str) -> None:
    config = load(write_config(tmp_path, f'[pulsar]\nservice_url = "{url}"\n', {"r": URL_ROUTE}))

    assert config.bridge.pulsar.service_url == url


@pytest.mark.parametrize("bind", ["localhost", "127.0.0.1:http", ":9464", "[::1]:70000"])
def test_http_bind_is_validated_as_the_health_server_binds(tmp_path: Path, bind: str) -> None:
    from bridge.addresses import parse_bind

    with pytest.raises(ValueError, match="is not host:port") as refused:
        parse_bind(bind)

    problem = find(
        problems_of(write_config(tmp_path, f'[observe]\nhttp_bind = "{bind}"\n', {"r": URL_ROUTE})),
        "bridge.toml",
        "observe.http_bind",
    )
    assert problem.message == str(refused.value)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            "adb-123.azuredatabricks.net",
            "has no scheme: the workspace URL must start with https://",
        ),
        ("ftp://adb-123.net", "has the scheme 'ftp'"),
        ("https://", "has no host"),
        ("https://adb-1.azuredatabricks.net/?o=123", "has a path or query"),
        ("https://adb-1.azuredatabricks.net/api/2.0", "like https://adb-1.azuredatabricks.net"),
    ],
)
def test_databricks_host_must_be_an_http_url_with_a_host(
    tmp_path: Path, host: str, message: str
) -> None:
    bridge = f'[databricks]\nhost = "{host}"\ntoken = "dapi-1"\n'

    problem = find(
        problems_of(write_config(tmp_path, bridge, {"r": NAMED_ROUTE})),
        "bridge.toml",
        "databricks.host",
    )
    assert message in problem.message
    assert repr(host) in problem.message


def test_a_bad_host_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = {"DATABRICKS_HOST": "adb-123.azuredatabricks.net", "DATABRICKS_TOKEN": "dapi-1"}

    problems = problems_of(write_config(tmp_path, None, {"r": NAMED_ROUTE}), env)

    problem = find(problems, "bridge.toml", "databricks.host")
    assert problem.message.endswith("(from the environment variable DATABRICKS_HOST)")


def test_admin_and_metrics_urls_must_be_http_urls(tmp_path: Path) -> None:
    bridge = '[pulsar]\nadmin_url = "127.0.0.1:8080"\nmetrics_url = "http://:8080/metrics"\n'

    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert "has no scheme" in find(problems, "bridge.toml", "pulsar.admin_url").message
    assert "has no host" in find(problems, "bridge.toml", "pulsar.metrics_url").message


def test_missing_tls_trust_certs_file(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    bridge = f'[pulsar]\nservice_url = "pulsar+ssl://b:6651"\ntls_trust_certs_file = "{missing}"\n'

    problem = find(
        problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE})),
        "bridge.toml",
        "pulsar.tls_trust_certs_file",
    )
    assert problem.message == f"no file {missing}"


# --------------------------------------------------------------------------- failure


@pytest.mark.parametrize(
    ("statuses", "message"),
    [
        ("[200]", "200 is not a failure (2xx/3xx)"),
        ("[503, 302]", "302 is not a failure (2xx/3xx)"),
        ("[400]", "400 is an event error: its batch is split and the bad events dead-lettered"),
        ("[413]", "413 is an event error"),
        ("[422]", "422 is an event error"),
        ("[99]", "99 is not an HTTP error status (4xx/5xx)"),
        ("[600]", "600 is not an HTTP error status (4xx/5xx)"),
        ("[200, 422]", "200 is not a failure (2xx/3xx); 422 is an event error"),
    ],
)
def test_retry_statuses_are_failures_that_a_retry_can_fix(
    tmp_path: Path, statuses: str, message: str
) -> None:
    route = route_with(extra=f"[failure]\nretry_statuses = {statuses}")

    problem = find(
        problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", "failure.retry_statuses"
    )
    assert message in problem.message


def test_retry_statuses_beyond_the_defaults_are_accepted(tmp_path: Path) -> None:
    route = route_with(extra="[failure]\nretry_statuses = [408, 409, 425, 429, 500, 503]")

    (r,) = load(write_config(tmp_path, "", {"r": route})).routes

    assert r.failure.retry_statuses == [408, 409, 425, 429, 500, 503]


def test_event_error_statuses_match_what_the_batch_processor_splits_on() -> None:
    from bridge import retry
    from bridge.config_route import EVENT_ERROR_STATUSES

    assert retry.EVENT_ERROR_STATUSES == EVENT_ERROR_STATUSES


def test_backoff_initial_above_backoff_max(tmp_path: Path) -> None:
    route = route_with(
        extra="[failure]\nbackoff_initial_ms = 9000\nbackoff_max_ms = 500\nattempts = 0"
    )

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    # Reported together with another problem of the same table.
    assert where(problems) == {("r.toml", "failure.backoff_max_ms"), ("r.toml", "failure.attempts")}
    assert find(problems, "r.toml", "failure.backoff_max_ms").message == (
        "500 is below backoff_initial_ms (9000): the first wait would exceed the cap"
    )


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("section", "typo", "key", "suggestion"),
    [
        ("endpoint", "max_in_flite = 3", "endpoint.max_in_flite", "'max_in_flight'"),
        ("batch", "linger = 3", "batch.linger", "'linger_ms'"),
        ("failure", "retry_status = [503]", "failure.retry_status", "'retry_statuses'"),
        (
            "source",
            "allow_nonpersistent = true",
            "source.allow_nonpersistent",
            "'allow_non_persistent'",
        ),
    ],
)
def test_unknown_key_suggests_the_key_meant(
    tmp_path: Path, section: str, typo: str, key: str, suggestion: str
) -> None:
    route = URL_ROUTE.replace(f"[{section}]", f"[{section}]\n{typo}")
    if f"[{section}]" not in URL_ROUTE:
        route = f"{URL_ROUTE}\n[{section}]\n{typo}\n"

    problem = find(problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", key)

    assert problem.message == f"Extra inputs are not permitted; did you mean {suggestion}?"


def test_unknown_table_suggests_the_table_meant(tmp_path: Path) -> None:
    route = URL_ROUTE.replace("[result]", "[reslt]") + '\n[result]\ntopic = "out"\n'

    problem = find(problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", "reslt")

    assert problem.message.endswith("did you mean 'result'?")


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    route = f"{URL_ROUTE}\n[batch]\nzzz = 1\n"

    problem = find(problems_of(write_config(tmp_path, "", {"r": route})), "r.toml", "batch.zzz")

    assert problem.message == (
        "Extra inputs are not permitted; known keys here: max_events, max_bytes, linger_ms"
    )


def test_keys_the_loader_sets_are_never_suggested(tmp_path: Path) -> None:
    problem = find(
        problems_of(write_config(tmp_path, "", {"r": URL_ROUTE + "\n[fil]\nx = 1\n"})),
        "r.toml",
        "fil",
    )

    # 'file' is the route's own field, filled in from the file name; not a key to write.
    assert "'file'" not in problem.message
    assert "'failure'" in problem.message


@pytest.mark.parametrize(
    ("bridge", "key", "suggestion"),
    [
        ('[pulsar]\nservice_ur = "pulsar://b:6650"', "pulsar.service_ur", "'service_url'"),
        ("[databricks]\ntoken_leway_s = 5", "databricks.token_leway_s", "'token_leeway_s'"),
        ('[databricks.analytics]\nhots = "https://h"', "databricks.analytics.hots", "'host'"),
        (
            '[pulsar.auth]\ntype = "token"\ntoken = "t"\ntokn = "t"',
            "pulsar.auth.tokn",
            "'token'",
        ),
        ("[daemon]\ndrain_grace = 5", "daemon.drain_grace", "'drain_grace_s'"),
        ("[observ]\nlog_level = 'info'", "observ", "'observe'"),
    ],
)
def test_unknown_key_in_bridge_toml_suggests_the_key_meant(
    tmp_path: Path, bridge: str, key: str, suggestion: str
) -> None:
    problem = find(
        problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE})), "bridge.toml", key
    )

    assert problem.message == f"Extra inputs are not permitted; did you mean {suggestion}?"


def test_unknown_workspace_suggests_the_workspace_meant(tmp_path: Path) -> None:
    bridge = BRIDGE + '\n[databricks.analytics]\nhost = "https://h"\ntoken = "t"\n'
    route = NAMED_ROUTE.replace('name = "fraud-model"', 'name = "m"\nworkspace = "analytcs"')

    problem = find(
        problems_of(write_config(tmp_path, bridge, {"r": route})), "r.toml", "endpoint.workspace"
    )
    assert problem.message.endswith("; did you mean 'analytics'?")


def test_offending_values_are_shown_and_list_items_indexed(tmp_path: Path) -> None:
    route = route_with(extra='[batch]\nmax_events = 0\n[failure]\nretry_statuses = [503, "502"]')

    problems = problems_of(write_config(tmp_path, "", {"r": route}))

    assert find(problems, "r.toml", "batch.max_events").message == (
        "Input should be greater than or equal to 1 (got 0)"
    )
    assert find(problems, "r.toml", "failure.retry_statuses[1]").message == (
        "Input should be a valid integer (got '502')"
    )


def test_secret_values_are_never_shown_in_a_problem(tmp_path: Path) -> None:
    bridge = f'[databricks]\nhost = "{HOST}"\nclient_id = 424242\nclient_secret = 987654321\n'

    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert where(problems) == {
        ("bridge.toml", "databricks.client_id"),
        ("bridge.toml", "databricks.client_secret"),
    }
    assert all("987654321" not in str(p) and "424242" not in str(p) for p in problems)


# --------------------------------------------------------------------------- all at once


def test_a_secret_problem_is_not_hidden_by_another_bridge_toml_problem(tmp_path: Path) -> None:
    bridge = f"""
    [databricks]
    host = "{HOST}"
    token = "file:databricks.pat"

    [observe]
    http_bind = "localhost"
    """
    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert where(problems) == {
        ("bridge.toml", "databricks.token"),
        ("bridge.toml", "observe.http_bind"),
    }
    assert (
        str(tmp_path / "databricks.pat")
        in find(problems, "bridge.toml", "databricks.token").message
    )


def test_a_secret_in_an_invalid_workspace_is_still_resolved(tmp_path: Path) -> None:
    bridge = """
    [databricks.analytics]
    host = "adb-1.net"
    token = "env:ANALYTICS_TOKEN"
    """
    problems = problems_of(write_config(tmp_path, bridge, {"r": URL_ROUTE}))

    assert where(problems) == {
        ("bridge.toml", "databricks.analytics.host"),
        ("bridge.toml", "databricks.analytics.token"),
    }
    assert (
        "ANALYTICS_TOKEN is not set"
        in find(problems, "bridge.toml", "databricks.analytics.token").message
    )


def test_unset_oidc_subject_token_is_a_warning(tmp_path: Path) -> None:
    bridge = f'[databricks]\nhost = "{HOST}"\noidc_token_env = "IDP_TOKEN"\n'

    config = load(write_config(tmp_path, bridge, {"r": NAMED_ROUTE}))

    (warning,) = config.warnings
    assert warning.startswith(f"{tmp_path / 'bridge.toml'}: databricks.oidc_token_env: ")
    assert "IDP_TOKEN" in warning


# --------------------------------------------------------------------------- the directory


def test_files_in_routes_that_are_not_toml_are_warned_about(tmp_path: Path) -> None:
    directory = write_config(tmp_path, "", {"r": URL_ROUTE})
    routes = directory / "routes"
    (routes / "fraud.toml.disabled").write_text(URL_ROUTE)
    (routes / "spam.yaml").write_text("x: 1\n")
    (routes / "old").mkdir()
    # Hidden entries (editor swap files, a ConfigMap's ..data) are passed over in silence.
    (routes / ".r.toml.swp").write_text("")
    (routes / "..data").mkdir()

    config = load(directory)

    assert [r.name for r in config.routes] == ["r"]
    assert config.warnings == (
        f"{routes / 'fraud.toml.disabled'}: ignored file: only routes/*.toml files are routes",
        f"{routes / 'old'}: ignored directory: only routes/*.toml files are routes",
        f"{routes / 'spam.yaml'}: ignored file: only routes/*.toml files are routes",
    )


def test_warnings_are_reported_with_problems(tmp_path: Path) -> None:
    from bridge.config import inspect_config

    directory = write_config(tmp_path, "", {"r": route_with(source="tx", result="tx")})
    (directory / "routes" / "r.yaml").write_text("")

    report = inspect_config(directory, env={})

    assert report.config is None
    assert where(report.problems) == {("r.toml", "result.topic")}
    assert report.warnings == [
        f"{directory / 'routes' / 'r.yaml'}: ignored file: only routes/*.toml files are routes"
    ]


def test_missing_config_directory_is_the_only_problem(tmp_path: Path) -> None:
    # An environment that would be a problem of its own once there is a directory.
    env = {"DATABRICKS_HOST": "not-a-url", "DATABRICKS_AUTH_TYPE": "nonsense"}

    problems = problems_of(tmp_path / "absent", env)

    assert [str(p) for p in problems] == [f"{tmp_path / 'absent'}: config directory does not exist"]


def test_config_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "bridge.toml").write_text("")

    problems = problems_of(tmp_path / "bridge.toml")

    assert [str(p) for p in problems] == [
        f"{tmp_path / 'bridge.toml'}: config directory is not a directory"
    ]


# --------------------------------------------------------------------------- the check command


@pytest.fixture
def no_databricks_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the process environment: none of the fallback variables."""
    for var in ("HOST", "AUTH_TYPE", "CLIENT_ID", "CLIENT_SECRET", "TOKEN", "CONFIG_PROFILE"):
        monkeypatch.delenv(f"DATABRICKS_{var}", raising=False)


@pytest.mark.usefixtures("no_databricks_env")
def test_check_prints_every_problem_and_warning_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import main

    directory = write_config(
        tmp_path, '[observe]\nhttp_bind = "localhost"\n', {"r": route_with(result="in")}
    )
    (directory / "routes" / "notes.txt").write_text("")

    code = main(["check", "-c", str(directory)])

    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err == [
        f"warning: {directory / 'routes' / 'notes.txt'}: ignored file: only routes/*.toml "
        "files are routes",
        f"{directory}: 2 problem(s):",
        f"  {directory / 'bridge.toml'}: observe.http_bind: 'localhost' is not host:port "
        "(port 0 picks a free one)",
        f"  {directory / 'routes' / 'r.toml'}: result.topic: 'in' is this route's source "
        "'persistent://public/default/in' (both are persistent://public/default/in): every "
        "result would be consumed again as a new event, without end",
    ]


@pytest.mark.usefixtures("no_databricks_env")
def test_check_lists_the_routes_with_full_topic_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import main

    directory = write_config(tmp_path, "", {"r": route_with(source="tx", result="acme/ns/out")})

    code = main(["check", "-c", str(directory)])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [
        "route r: persistent://public/default/tx -> http://127.0.0.1:5001/invocations -> "
        "persistent://acme/ns/out (DLQ persistent://public/default/tx-sub-DLQ)",
        f"{directory}: OK, 1 route(s)",
    ]
