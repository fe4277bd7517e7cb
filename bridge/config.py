"""Load and validate a config directory into frozen settings.

A config directory holds ``bridge.toml`` (daemon-wide) and ``routes/*.toml`` (one route per
file, named by the file's stem). Every section is a pydantic model with ``extra="forbid"``
and strict types, so a typo is an error rather than a silently ignored key. All problems in
all files are collected and raised together as one :class:`~bridge.errors.ConfigError`,
each naming its file and dotted key. Defaults live here and nowhere else; ``config/``
holds the same defaults as a commented example.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from bridge.errors import ConfigError, ConfigProblem, SecretError
from bridge.secrets import Secret


def _to_secret(value: object, info: ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string: a literal, 'env:NAME' or 'file:PATH'")
    context = info.context or {}
    return Secret(value, base_dir=context.get("base_dir"), env=context.get("env"))


SecretField = Annotated[
    Secret, PlainValidator(_to_secret), PlainSerializer(lambda s: s.source, return_type=str)
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- bridge.toml


class PulsarTokenAuth(_Section):
    type: Literal["token"]
    token: SecretField


class PulsarOAuth2Auth(_Section):
    type: Literal["oauth2"]
    issuer_url: str
    private_key: str  # path to the client-credentials JSON file pulsar-client reads
    audience: str | None = None
    scope: str | None = None


class PulsarSettings(_Section):
    service_url: str = "pulsar://127.0.0.1:6650"
    # Where `pulsar-bridge status` reads subscription lag: the admin REST API, or (for
    # pulsar-lite, which has none) the broker's Prometheus endpoint.
    admin_url: str | None = None
    metrics_url: str | None = None
    tls_trust_certs_file: str | None = None
    tls_allow_insecure: bool = False
    auth: PulsarTokenAuth | PulsarOAuth2Auth | None = Field(default=None, discriminator="type")
    operation_timeout_s: int = Field(default=30, ge=1)
    connection_timeout_s: int = Field(default=10, ge=1)


AuthType = Literal["oauth-m2m", "pat", "none", "oidc-federation", "databricks-sdk"]


class WorkspaceSettings(_Section):
    """One Databricks workspace and the identity used to call it."""

    host: str | None = None
    auth_type: AuthType | None = None
    client_id: SecretField | None = None
    client_secret: SecretField | None = None
    token: SecretField | None = None
    profile: str | None = None
    # OIDC federation (#6): where the external IdP token comes from.
    oidc_token_file: str | None = None
    oidc_token_env: str | None = None
    # Refresh a token this long before it expires.
    token_leeway_s: float = Field(default=60, ge=0)

    @property
    def resolved_auth_type(self) -> AuthType:
        """The auth type, inferred from the credentials present when not given."""
        if self.auth_type is not None:
            return self.auth_type
        if self.profile is not None:
            return "databricks-sdk"
        if self.client_id is not None and self.client_secret is not None:
            return "oauth-m2m"
        if self.oidc_token_file is not None or self.oidc_token_env is not None:
            return "oidc-federation"
        if self.token is not None:
            return "pat"
        return "none"

    @model_validator(mode="after")
    def _credentials_match_auth_type(self) -> WorkspaceSettings:
        kind = self.resolved_auth_type
        needs: dict[str, tuple[str, ...]] = {
            "oauth-m2m": ("host", "client_id", "client_secret"),
            "pat": ("host", "token"),
            "oidc-federation": ("host",),
        }
        missing = [k for k in needs.get(kind, ()) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"auth_type {kind!r} needs {', '.join(missing)}")
        if kind == "oidc-federation" and (self.oidc_token_file is None) == (
            self.oidc_token_env is None
        ):
            raise ValueError("oidc-federation needs exactly one of oidc_token_file, oidc_token_env")
        return self


class ObserveSettings(_Section):
    # Loopback by default: metrics and health are for the local scraper and supervisor.
    http_bind: str | None = "127.0.0.1:9464"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class DaemonSettings(_Section):
    # How long SIGTERM waits for in-flight batches before nacking them.
    drain_grace_s: float = Field(default=30, ge=0)


class BridgeSettings(BaseModel):
    """``bridge.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pulsar: PulsarSettings = PulsarSettings()
    databricks: WorkspaceSettings = WorkspaceSettings()
    workspaces: dict[str, WorkspaceSettings] = {}
    observe: ObserveSettings = ObserveSettings()
    daemon: DaemonSettings = DaemonSettings()


# --------------------------------------------------------------------------- routes/*.toml

SubscriptionType = Literal["shared", "key_shared", "failover", "exclusive"]
RequestFormat = Literal["dataframe_records", "dataframe_split", "instances", "inputs"]


class SourceSettings(_Section):
    topics: list[str] = Field(min_length=1)
    subscription: str = Field(min_length=1)
    subscription_type: SubscriptionType = "shared"
    # Earliest, unlike Pulsar's default: a new subscription must not skip events that
    # were published before the bridge first started.
    initial_position: Literal["earliest", "latest"] = "earliest"
    receiver_queue_size: int = Field(default=1000, ge=1)


class EndpointSettings(_Section):
    name: str | None = None
    url: str | None = None
    workspace: str | None = None
    served_model: str | None = None
    format: RequestFormat = "dataframe_records"
    params: dict[str, Any] | None = None
    # A deadline for the whole request, from connecting to the last byte of the answer.
    timeout_s: float = Field(default=120, gt=0)
    # "adaptive": the limit of requests at the endpoint moves between min_in_flight and
    # max_in_flight with the endpoint's answers (429/503/timeouts cut it, success grows it);
    # "fixed": always max_in_flight.
    concurrency: Literal["adaptive", "fixed"] = "adaptive"
    max_in_flight: int = Field(default=4, ge=1, le=256)
    min_in_flight: int = Field(default=1, ge=1, le=256)
    # Optional caps for AI Gateway rate limits, shared by every route calling the endpoint.
    max_requests_per_s: float | None = Field(default=None, gt=0)
    max_events_per_s: float | None = Field(default=None, gt=0)
    # Databricks rejects request bodies over 16 MB; batches are split below this.
    max_payload_bytes: int = Field(default=16_000_000, ge=1024)
    # Answers larger than this (after decompression) fail the request; error bodies are
    # cut well before it.
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _name_or_url(self) -> EndpointSettings:
        if (self.name is None) == (self.url is None):
            raise ValueError("exactly one of 'name' or 'url' is required")
        if self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"min_in_flight ({self.min_in_flight}) is above max_in_flight "
                f"({self.max_in_flight})"
            )
        if self.url is not None and self.workspace is not None:
            raise ValueError("'workspace' applies to 'name' endpoints only")
        return self


class BatchSettings(_Section):
    max_events: int = Field(default=100, ge=1)
    max_bytes: int = Field(default=4_000_000, ge=1)
    linger_ms: float = Field(default=20, ge=0)


class ResultSettings(_Section):
    topic: str = Field(min_length=1)
    passthrough: list[str] = []


class FailureSettings(_Section):
    # Rounds of in-bridge attempts a batch may fail alone (a 5xx or timeout while the
    # endpoint answers other requests) before it is split, and a single event dead-lettered.
    max_redeliveries: int = Field(default=5, ge=0)
    dead_letter_topic: str | None = None
    # Delay before Pulsar redelivers a nacked event.
    nack_delay_ms: int = Field(default=1000, ge=0)
    # In-bridge attempts of one request before its events are nacked.
    attempts: int = Field(default=3, ge=1, le=20)
    retry_statuses: list[int] = [429, 500, 502, 503, 504]
    backoff_initial_ms: float = Field(default=100, ge=0)
    backoff_max_ms: float = Field(default=5000, ge=0)
    retry_after_max_s: float = Field(default=30, ge=0)
    # Consecutive failed requests that pause the route, and the probe interval cap.
    circuit_failures: int = Field(default=10, ge=1)
    circuit_probe_max_s: float = Field(default=30, gt=0)
    # Batches in a row whose every event the endpoint rejects (400/422) that pause the
    # route as a route error (a model redeployed with a new signature) instead of
    # dead-lettering them; 0 turns it off. Undecided batches wait at most
    # poison_storm_window_s for another batch to tell poison from a storm.
    poison_storm_batches: int = Field(default=3, ge=0)
    poison_storm_window_s: float = Field(default=10, gt=0)


class RouteSettings(BaseModel):
    """One ``routes/<name>.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    file: str
    source: SourceSettings
    endpoint: EndpointSettings
    batch: BatchSettings = BatchSettings()
    result: ResultSettings
    failure: FailureSettings = FailureSettings()

    @property
    def dead_letter_topic(self) -> str:
        """The configured DLQ, or Pulsar's conventional ``<topic>-<subscription>-DLQ``."""
        if self.failure.dead_letter_topic is not None:
            return self.failure.dead_letter_topic
        return f"{self.source.topics[0]}-{self.source.subscription}-DLQ"


class Config(BaseModel):
    """A whole config directory."""

    model_config = ConfigDict(frozen=True)

    directory: Path
    bridge: BridgeSettings
    routes: tuple[RouteSettings, ...]
    # Not errors, but worth a line at start-up (e.g. a secret file readable by others).
    warnings: tuple[str, ...] = ()

    def workspace_for(self, route: RouteSettings) -> WorkspaceSettings:
        """The workspace a named-endpoint route calls."""
        if route.endpoint.workspace is None:
            return self.bridge.databricks
        return self.bridge.workspaces[route.endpoint.workspace]


# --------------------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)

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


def load_config(directory: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and cross-check a config directory; raise ConfigError with every problem.

    Secrets are resolved once here so an unreadable secret file fails ``check`` and start-up,
    but they are read again whenever used.
    """
    env = dict(os.environ if env is None else env)
    context = {"base_dir": directory, "env": env}
    problems: list[ConfigProblem] = []
    warnings: list[str] = []
    bridge_file = directory / "bridge.toml"
    raw_bridge = _read_toml(bridge_file, problems, required=False)
    bridge = _parse_bridge(raw_bridge, bridge_file, env, context, problems)

    routes: list[RouteSettings] = []
    routes_dir = directory / "routes"
    files = sorted(routes_dir.glob("*.toml")) if routes_dir.is_dir() else []
    if not files and directory.is_dir():
        problems.append(ConfigProblem(str(routes_dir), "", "no route files (routes/*.toml)"))
    if not directory.is_dir():
        problems.append(ConfigProblem(str(directory), "", "config directory does not exist"))
    for path in files:
        raw = _read_toml(path, problems, required=True)
        if raw is None:
            continue
        reserved = sorted({"name", "file"} & raw.keys())
        for key in reserved:
            # The route's name is its file name; a key of that name would be ignored.
            problems.append(ConfigProblem(str(path), key, "Extra inputs are not permitted"))
        if reserved:
            continue
        data = {**raw, "name": path.stem, "file": str(path)}
        route = _validate(RouteSettings, data, path, context, problems)
        if route is not None:
            routes.append(route)

    problems.extend(_check_routes(routes))
    if bridge is not None:
        problems.extend(_check_workspaces(bridge, routes, bridge_file))
        problems.extend(_check_secrets(bridge, bridge_file, warnings))
    if problems:
        raise ConfigError(problems)
    assert bridge is not None
    return Config(
        directory=directory, bridge=bridge, routes=tuple(routes), warnings=tuple(warnings)
    )


def _read_toml(
    path: Path, problems: list[ConfigProblem], *, required: bool
) -> dict[str, Any] | None:
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


def _parse_bridge(
    raw: dict[str, Any] | None,
    path: Path,
    env: Mapping[str, str],
    context: dict[str, Any],
    problems: list[ConfigProblem],
) -> BridgeSettings | None:
    if raw is None:
        return None
    data = dict(raw)
    if "workspaces" in data:
        # Extra workspaces are written [databricks.<name>]; this key is ours, not the user's.
        problems.append(ConfigProblem(str(path), "workspaces", "Extra inputs are not permitted"))
        return None
    databricks = data.get("databricks", {})
    if isinstance(databricks, dict):
        # [databricks.<profile>] sub-tables are extra workspaces selected by endpoint.workspace.
        data["workspaces"] = {k: v for k, v in databricks.items() if isinstance(v, dict)}
        data["databricks"] = _with_env_fallback(
            {k: v for k, v in databricks.items() if not isinstance(v, dict)}, env
        )
    return _validate(BridgeSettings, data, path, context, problems)


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


def _validate(
    model: type[M],
    data: dict[str, Any],
    path: Path,
    context: dict[str, Any],
    problems: list[ConfigProblem],
) -> M | None:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            loc = [
                str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))
            ]
            key = ".".join(loc)
            if key.startswith("workspaces."):
                key = "databricks." + key[len("workspaces.") :]
            message = err["msg"].removeprefix("Value error, ")
            problems.append(ConfigProblem(str(path), key, message))
        return None


def _check_routes(routes: list[RouteSettings]) -> list[ConfigProblem]:
    """Problems between routes, found whatever state bridge.toml is in."""
    problems: list[ConfigProblem] = []
    claimed: dict[tuple[str, str], str] = {}
    for route in routes:
        for topic in route.source.topics:
            key = (route.source.subscription, topic)
            if key in claimed:
                problems.append(
                    ConfigProblem(
                        route.file,
                        "source.subscription",
                        f"subscription {key[0]!r} on topic {topic!r} is already used by "
                        f"{claimed[key]}",
                    )
                )
            claimed.setdefault(key, route.file)
        if route.result.topic in route.source.topics:
            problems.append(
                ConfigProblem(route.file, "result.topic", "must differ from the source topics")
            )
    return problems


def _check_workspaces(
    bridge: BridgeSettings, routes: list[RouteSettings], bridge_file: Path
) -> list[ConfigProblem]:
    """Every named-endpoint route has a workspace with a host."""
    problems: list[ConfigProblem] = []
    for route in routes:
        if route.endpoint.name is None:
            continue
        ws_name = route.endpoint.workspace
        if ws_name is not None and ws_name not in bridge.workspaces:
            problems.append(
                ConfigProblem(
                    route.file, "endpoint.workspace", f"no [databricks.{ws_name}] in {bridge_file}"
                )
            )
            continue
        workspace = bridge.workspaces[ws_name] if ws_name else bridge.databricks
        if workspace.host is None and workspace.resolved_auth_type != "databricks-sdk":
            section = "databricks" if ws_name is None else f"databricks.{ws_name}"
            problems.append(
                ConfigProblem(
                    str(bridge_file),
                    f"{section}.host",
                    f"required by route {route.name!r} (endpoint.name); or set DATABRICKS_HOST",
                )
            )
    return problems


def _check_secrets(
    bridge: BridgeSettings, bridge_file: Path, warnings: list[str]
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    sections = {"databricks": bridge.databricks} | {
        f"databricks.{name}": ws for name, ws in bridge.workspaces.items()
    }
    for section, ws in sections.items():
        for field in ("client_id", "client_secret", "token"):
            secret = getattr(ws, field)
            if secret is None:
                continue
            try:
                secret.reveal(
                    warn=lambda text, where=f"{section}.{field}": warnings.append(
                        f"{bridge_file}: {where}: {text}"
                    )
                )
            except SecretError as exc:
                problems.append(ConfigProblem(str(bridge_file), f"{section}.{field}", str(exc)))
    auth = bridge.pulsar.auth
    if isinstance(auth, PulsarTokenAuth):
        try:
            auth.token.reveal(
                warn=lambda text: warnings.append(f"{bridge_file}: pulsar.auth.token: {text}")
            )
        except SecretError as exc:
            problems.append(ConfigProblem(str(bridge_file), "pulsar.auth.token", str(exc)))
    return problems
