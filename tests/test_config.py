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
        ("c.toml", "result.topic"),
        ("d.toml", "source.subscription"),
        ("e.toml", "result.topic"),
    }


def test_invalid_bridge_toml_does_not_hide_cross_route_problems(tmp_path: Path) -> None:
    bridge = """
    [observe]
    log_levl = "info"
    """
    problems = problems_of(write_config(tmp_path, bridge, _problem_routes()))

    assert where(problems) == {
        ("bridge.toml", "observe.log_levl"),
        ("b.toml", "source.subscripton"),
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
