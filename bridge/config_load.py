"""Read a config directory into settings, turning everything wrong into a ConfigProblem.

    read_directory   bridge.toml and routes/*.toml -> a ConfigReport (config or problems,
                     and warnings either way); bridge.config.load_config raises on problems
                     (``secrets`` says which secrets it reads: see SecretsRead)
    read_toml, route_files   the files themselves

Each table becomes its model through :func:`bridge.config_validate.validate`, which turns
every pydantic error into a problem naming file, dotted key and value.

Each file is validated on its own and the rules between files (:mod:`bridge.config_rules`)
run on whatever could be read, so ``check`` lists every problem in one pass: a missing
config directory is the one exception, reported alone since nothing else can be judged.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bridge import config_rules
from bridge.config import Config, ConfigReport
from bridge.config_bridge import BridgeSettings, WorkspaceSettings
from bridge.config_route import RouteSettings
from bridge.config_section import SecretField
from bridge.config_validate import validate
from bridge.errors import ConfigProblem
from bridge.redaction import Redactor
from bridge.secrets import Secret

_CREDENTIAL_KEYS = frozenset(
    {
        "auth_type",
        "client_id",
        "client_secret",
        "token",
        "profile",
        "oidc_token_file",
        "oidc_token_env",
    }
)
_ENV_FALLBACK = {
    "host": "DATABRICKS_HOST",
    "auth_type": "DATABRICKS_AUTH_TYPE",
    "client_id": "DATABRICKS_CLIENT_ID",
    "client_secret": "DATABRICKS_CLIENT_SECRET",
    "token": "DATABRICKS_TOKEN",
    "profile": "DATABRICKS_CONFIG_PROFILE",
}


# Which secrets a load reads: "all" (run, check); "pulsar" (send, tail, replay, which
# connect to the broker); "none" (status, which reads HTTP APIs only). The others are only
# checked for a well-formed reference (config_rules.check_references), and a host is not
# required: both may come from the service's environment alone (``file:${CREDENTIALS_
# DIRECTORY}/...`` exists inside the systemd unit only; DATABRICKS_HOST in its unit).
SecretsRead = Literal["all", "pulsar", "none"]


def read_directory(
    directory: Path,
    env: Mapping[str, str],
    redactor: Redactor | None,
    *,
    secrets: SecretsRead = "all",
) -> ConfigReport:
    """Every problem and warning in ``directory``, and the config when there is no problem."""
    if not directory.is_dir():
        # Nothing else can be judged, and anything else said would only mislead.
        what = "is not a directory" if directory.exists() else "does not exist"
        return ConfigReport(
            None, [ConfigProblem(str(directory), "", f"config directory {what}")], []
        )
    context = {"base_dir": directory, "env": env, "redactor": redactor}
    problems: list[ConfigProblem] = []
    bridge_file = directory / "bridge.toml"
    data, from_env = _bridge_data(
        read_toml(bridge_file, problems, required=False), bridge_file, env, problems
    )
    bridge = None
    if data is not None:
        found: list[ConfigProblem] = []
        bridge = validate(BridgeSettings, data, bridge_file, context, found, hidden={"workspaces"})
        problems.extend(_as_written(found, from_env))

    routes_dir = directory / "routes"
    files, warnings = route_files(routes_dir)
    if not files:
        problems.append(ConfigProblem(str(routes_dir), "", "no route files (routes/*.toml)"))
    routes, views = _read_routes(files, context, problems)

    problems.extend(config_rules.check_subscriptions(views))
    problems.extend(config_rules.check_loops(views))
    warnings.extend(config_rules.non_persistent_outputs(views))
    if data is not None:
        everything = secrets == "all"
        workspaces = _workspaces(data, context)
        problems.extend(
            config_rules.check_workspaces(workspaces, views, bridge_file, require_host=everything)
        )
        references = config_rules.secret_references(data)
        read = {
            key: _secret(key, reference, context)
            for key, reference in references.items()
            if everything or (secrets == "pulsar" and key.startswith("pulsar."))
        }
        unread = {k: v for k, v in references.items() if k not in read}
        problems.extend(config_rules.check_secrets(read, bridge_file, warnings))
        problems.extend(config_rules.check_references(unread, bridge_file))
        problems.extend(
            config_rules.check_credential_files(
                data, env, bridge_file, warnings, databricks=everything
            )
        )
    if bridge is not None and bridge.pulsar.admin_url is None:
        problems.extend(
            ConfigProblem(
                route.file,
                "result.delivery",
                "'effectively-once' needs pulsar.admin_url (Apache Pulsar's admin API, to "
                "verify deduplication at start); pulsar-lite has no deduplication",
            )
            for route in routes
            if route.effectively_once
        )
    # Grouped by file, bridge.toml first; each file's problems stay in the order found.
    problems.sort(key=lambda p: (p.file != str(bridge_file), p.file))
    if problems or bridge is None:
        return ConfigReport(None, problems, warnings)
    config = Config(
        directory=directory, bridge=bridge, routes=tuple(routes), warnings=tuple(warnings)
    )
    return ConfigReport(config, [], warnings)


def _read_routes(
    files: list[Path], context: Mapping[str, Any], problems: list[ConfigProblem]
) -> tuple[list[RouteSettings], list[config_rules.RouteView]]:
    """The valid routes, and a view of every readable route file for the rules between them."""
    routes: list[RouteSettings] = []
    views: list[config_rules.RouteView] = []
    for path in files:
        raw = read_toml(path, problems, required=True)
        if raw is None:
            continue
        views.append(config_rules.RouteView.read(path.stem, str(path), raw))
        reserved = sorted({"name", "file"} & raw.keys())
        for key in reserved:
            # The route's name is its file name; a key of that name would be ignored.
            problems.append(ConfigProblem(str(path), key, "Extra inputs are not permitted"))
        if reserved:
            continue
        data = {**raw, "name": path.stem, "file": str(path)}
        route = validate(RouteSettings, data, path, context, problems, hidden={"name", "file"})
        if route is not None:
            routes.append(route)
    return routes, views


def _bridge_data(
    raw: dict[str, Any] | None, path: Path, env: Mapping[str, str], problems: list[ConfigProblem]
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """bridge.toml as BridgeSettings takes it: sub-tables split out, the env fallback applied.

    Also returns the keys the environment filled in, by the variable each came from.
    """
    if raw is None:
        return None, {}
    data = dict(raw)
    if "workspaces" in data:
        # Extra workspaces are written [databricks.<name>]; this key is ours, not the user's.
        problems.append(
            ConfigProblem(
                str(path),
                "workspaces",
                "Extra inputs are not permitted; did you mean 'databricks.<name>'?",
            )
        )
        return None, {}
    databricks = data.get("databricks", {})
    if not isinstance(databricks, dict):
        return data, {}
    # [databricks.<profile>] sub-tables are extra workspaces selected by endpoint.workspace.
    data["workspaces"] = {k: v for k, v in databricks.items() if isinstance(v, dict)}
    table = {k: v for k, v in databricks.items() if not isinstance(v, dict)}
    data["databricks"] = _with_env_fallback(table, env)
    from_env = {
        f"databricks.{key}": _ENV_FALLBACK[key] for key in data["databricks"].keys() - table.keys()
    }
    return data, from_env


def _as_written(problems: list[ConfigProblem], from_env: Mapping[str, str]) -> list[ConfigProblem]:
    """Problems of bridge.toml named as the file spells them, and where a value came from."""
    named = []
    for problem in problems:
        key = problem.key
        if key.startswith("workspaces."):
            key = "databricks." + key.removeprefix("workspaces.")
        message = problem.message
        if key in from_env:
            message += f" (from the environment variable {from_env[key]})"
        named.append(ConfigProblem(problem.file, key, message))
    return named


def _with_env_fallback(section: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Fill unset keys from the Databricks unified-auth environment variables.

    The host always falls back. Credentials fall back only when the file names none:
    mixing a file's client secret with a token from the environment would silently change
    which identity the bridge uses.
    """
    out = dict(section)
    if "host" not in out and env.get("DATABRICKS_HOST"):
        out["host"] = env["DATABRICKS_HOST"]
    if not _CREDENTIAL_KEYS & out.keys():
        for key, var in _ENV_FALLBACK.items():
            if key != "host" and env.get(var):
                out[key] = env[var] if key in ("auth_type", "profile") else f"env:{var}"
    return out


def _workspaces(
    data: Mapping[str, Any], context: Mapping[str, Any]
) -> dict[str | None, WorkspaceSettings | None]:
    """Each workspace section on its own, None where invalid, so one bad section (already
    reported) leaves the others checkable against the routes."""
    tables: dict[str | None, object] = {None: data.get("databricks", {})}
    tables.update(data.get("workspaces", {}))
    found: dict[str | None, WorkspaceSettings | None] = {}
    for name, table in tables.items():
        try:
            found[name] = WorkspaceSettings.model_validate(table, context=dict(context))
        except ValidationError:
            found[name] = None
    return found


class _Secret(BaseModel):
    """One secret on its own, so an error beside it does not hide a secret that won't resolve."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    client_id: SecretField | None = None
    client_secret: SecretField | None = None
    token: SecretField | None = None


def _secret(key: str, reference: str, context: Mapping[str, Any]) -> Secret:
    """The secret at dotted ``key``, built as the settings build it."""
    field = key.rpartition(".")[2]
    secret = getattr(_Secret.model_validate({field: reference}, context=dict(context)), field)
    assert isinstance(secret, Secret)
    return secret


# --------------------------------------------------------------------------- files


def read_toml(
    path: Path, problems: list[ConfigProblem], *, required: bool
) -> dict[str, Any] | None:
    """The file's table; ``{}`` for an optional file that is absent, None on a problem."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            problems.append(ConfigProblem(str(path), "", "file not found"))
        return {} if not required else None
    except tomllib.TOMLDecodeError as exc:
        problems.append(ConfigProblem(str(path), "", f"invalid TOML: {exc}"))
    except OSError as exc:
        problems.append(ConfigProblem(str(path), "", f"cannot read: {exc.strerror}"))
    return None


def route_files(routes_dir: Path) -> tuple[list[Path], list[str]]:
    """``routes/*.toml`` in name order, and a warning for each other entry, which is ignored.

    Hidden entries (a leading dot: editor swap files, the ``..data`` links of a Kubernetes
    ConfigMap volume) are passed over in silence, as tools conventionally do.
    """
    if not routes_dir.is_dir():
        return [], []
    files, warnings = [], []
    for path in sorted(routes_dir.iterdir()):
        if path.suffix == ".toml":
            files.append(path)
        elif not path.name.startswith("."):
            kind = "directory" if path.is_dir() else "file"
            warnings.append(f"{path}: ignored {kind}: only routes/*.toml files are routes")
    return files, warnings
