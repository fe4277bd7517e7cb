"""Load and validate a config directory into frozen settings.

A config directory holds ``bridge.toml`` (daemon-wide) and ``routes/*.toml`` (one route per
file, named by the file's stem). Every section is a pydantic model with ``extra="forbid"``
and strict types, so a typo is an error rather than a silently ignored key. All problems in
all files are collected and raised together as one :class:`~bridge.errors.ConfigError`,
each naming its file, dotted key and the offending value; an unknown key comes with the
known key it most resembles. Rules within one section are validators here; rules between
sections and files are in :mod:`bridge.config_rules`. ``check`` and ``run`` both load
through :func:`inspect_config`, so ``check`` refuses whatever ``run`` would. Defaults live
here and nowhere else; ``config/`` holds the same defaults as a commented example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import topics
from bridge.addresses import check_http_url, check_service_url, parse_bind
from bridge.errors import ConfigError, ConfigProblem
from bridge.redaction import Redactor
from bridge.secrets import Secret

if TYPE_CHECKING:
    from bridge.config_load import SecretsRead


def _to_secret(value: object, info: ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string: a literal, 'env:NAME' or 'file:PATH'")
    context = info.context or {}
    return Secret(
        value,
        base_dir=context.get("base_dir"),
        env=context.get("env"),
        # Revealed values are registered with the process's redactor (never printed).
        redactor=context.get("redactor"),
        identifier=info.field_name == "client_id",
    )


SecretField = Annotated[
    Secret, PlainValidator(_to_secret), PlainSerializer(lambda s: s.source, return_type=str)
]


def _topic(name: str) -> str:
    # Kept as written (the client takes every form); comparisons normalise (bridge.topics).
    topics.parse(name)
    return name


def _bind(bind: str) -> str:
    parse_bind(bind)  # what the health server binds with
    return bind


def _http_url(what: str, *, base_only: bool = False) -> AfterValidator:
    return AfterValidator(lambda url: check_http_url(url, what=what, base_only=base_only))


TopicField = Annotated[str, AfterValidator(_topic)]


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
    service_url: Annotated[str, AfterValidator(check_service_url)] = "pulsar://127.0.0.1:6650"
    # Where `pulsar-bridge status` reads subscription lag: the admin REST API, or (for
    # pulsar-lite, which has none) the broker's Prometheus endpoint.
    admin_url: Annotated[str, _http_url("admin_url")] | None = None
    metrics_url: Annotated[str, _http_url("metrics_url")] | None = None
    tls_trust_certs_file: str | None = None
    tls_allow_insecure: bool = False
    auth: PulsarTokenAuth | PulsarOAuth2Auth | None = Field(default=None, discriminator="type")
    operation_timeout_s: int = Field(default=30, ge=1)
    connection_timeout_s: int = Field(default=10, ge=1)


AuthType = Literal["oauth-m2m", "pat", "none", "oidc-federation", "databricks-sdk"]


class WorkspaceSettings(_Section):
    """One Databricks workspace and the identity used to call it."""

    host: Annotated[str, _http_url("the workspace URL", base_only=True)] | None = None
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


class TracingSettings(_Section):
    # OpenTelemetry spans (a batch, its requests, its results) sent over OTLP/HTTP; off, the
    # bridge builds no span and reads no trace context (bridge.tracing).
    enabled: bool = False
    otlp_endpoint: Annotated[str, _http_url("observe.tracing.otlp_endpoint")] = (
        "http://127.0.0.1:4318/v1/traces"
    )
    # Of the traces a batch starts; a batch of one event follows its event's sampling.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    service_name: str = Field(default="pulsar-bridge", min_length=1)


class ObserveSettings(_Section):
    # Loopback by default: metrics and health are for the local scraper and supervisor.
    http_bind: Annotated[str, AfterValidator(_bind)] | None = "127.0.0.1:9464"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tracing: TracingSettings = TracingSettings()


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
    # Declared before `topics`, whose validator reads it. A non-persistent topic keeps
    # nothing for a consumer that is not connected or not keeping up: events are lost by
    # design, which a bridge that promises at-least-once must not do unless asked to.
    allow_non_persistent: bool = False
    topics: list[TopicField] = Field(min_length=1)
    subscription: str = Field(min_length=1)
    subscription_type: SubscriptionType = "shared"
    # Earliest, unlike Pulsar's default: a new subscription must not skip events that
    # were published before the bridge first started.
    initial_position: Literal["earliest", "latest"] = "earliest"
    receiver_queue_size: int = Field(default=1000, ge=1)
    # Typed topics (bridge.schemas): "json" (schemaless JSON objects); "avro", "json-schema"
    # or "protobuf" with schema_file (and message_type, a protobuf message's full name);
    # "auto": each message's schema version, read from the broker's registry.
    # (Named schema_kind in code: a field named schema would shadow BaseModel.schema.)
    schema_kind: Literal["json", "avro", "json-schema", "protobuf", "auto"] = Field(
        default="json", alias="schema"
    )
    message_type: str | None = None
    schema_file: str | None = Field(default=None, validate_default=True)

    @field_validator("schema_file")
    @classmethod
    def _schema_file_reads(cls, value: str | None, info: ValidationInfo) -> str | None:
        from bridge.schema_config import source_schema_file  # fastavro, protobuf: when used

        base_dir = (info.context or {}).get("base_dir")
        kind = info.data.get("schema_kind", "json")
        return source_schema_file(kind, value, info.data.get("message_type"), base_dir)

    @field_validator("topics")
    @classmethod
    def _persistent_unless_allowed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("allow_non_persistent", False):
            return value
        lossy = [t for t in value if not topics.parse(t).persistent]
        if lossy:
            raise ValueError(
                f"{', '.join(map(repr, lossy))}: a non-persistent topic drops events while the "
                "bridge is down or behind; set source.allow_non_persistent = true to accept that"
            )
        return value


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
    # Send a fresh client_request_id in each request body, which Databricks inference
    # tables record, so their rows join to results. Off by default: not every scoring
    # server accepts the extra field.
    client_request_id: bool = False

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
    topic: TopicField
    passthrough: list[str] = []
    # "effectively-once": Apache Pulsar's deduplication drops results stored before (a
    # crash, a restart, a redelivery); needs one owner per source partition (failover or
    # exclusive), pulsar.admin_url and deduplication enabled for the result topic.
    delivery: Literal["at-least-once", "effectively-once"] = "at-least-once"
    # Typed results (bridge.result_schema): "none" (schemaless JSON), or "avro" or
    # "json-schema" with a record schema derived from prediction_type (an Avro type) and
    # the passthrough fields' types (from the source schema, or passthrough_types),
    # registered on the topic.
    schema_kind: Literal["none", "json-schema", "avro"] = Field(default="none", alias="schema")
    prediction_type: str | dict[str, Any] | list[Any] | None = None
    passthrough_types: dict[str, str | dict[str, Any] | list[Any]] = {}

    @field_validator("prediction_type")
    @classmethod
    def _avro_prediction_type(cls, value: object) -> object:
        from bridge.schema_config import avro_type

        return None if value is None else avro_type(value)

    @field_validator("passthrough_types")
    @classmethod
    def _avro_passthrough_types(cls, value: dict[str, object]) -> dict[str, object]:
        from bridge.schema_config import avro_type

        return {name: avro_type(declared) for name, declared in value.items()}


class FailureSettings(_Section):
    # Rounds of in-bridge attempts a batch may fail alone (a 5xx or timeout while the
    # endpoint answers other requests) before it is split, and a single event dead-lettered.
    max_redeliveries: int = Field(default=5, ge=0)
    dead_letter_topic: TopicField | None = None
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

    @field_validator("retry_statuses")
    @classmethod
    def _failure_statuses(cls, value: list[int]) -> list[int]:
        reasons = [
            f"{status} {_not_retriable(status)}" for status in value if _not_retriable(status)
        ]
        if reasons:
            raise ValueError("; ".join(reasons))
        return value

    # A field validator (not a model one), so it runs even when another key is wrong.
    @field_validator("backoff_max_ms")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial_ms")
        if initial is not None and initial > value:
            raise ValueError(
                f"{value:g} is below backoff_initial_ms ({initial:g}): the first wait would "
                "exceed the cap"
            )
        return value


# The endpoint's verdict on the events themselves: the batch is bisected and the offending
# events dead-lettered; retrying the same request would only get the same answer. Kept
# equal to the set the batch processor acts on (a test compares them).
EVENT_ERROR_STATUSES = frozenset({400, 413, 422})


def _not_retriable(status: int) -> str:
    """Why ``status`` cannot be a retry status, or "" when it can."""
    if 200 <= status < 400:
        return "is not a failure (2xx/3xx)"
    if status in EVENT_ERROR_STATUSES:
        return "is an event error: its batch is split and the bad events dead-lettered"
    if not 400 <= status < 600:
        return "is not an HTTP error status (4xx/5xx)"
    return ""


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

    @model_validator(mode="after")
    def _one_owner_per_partition(self) -> RouteSettings:
        if self.result.delivery == "effectively-once" and self.source.subscription_type not in (
            "failover",
            "exclusive",
        ):
            raise ValueError(
                "result.delivery = 'effectively-once' needs source.subscription_type "
                "'failover' or 'exclusive': one owner per source partition publishes its "
                f"results in source order (got {self.source.subscription_type!r})"
            )
        return self

    @field_validator("result")
    @classmethod
    def _result_schema_derives(cls, value: ResultSettings, info: ValidationInfo) -> ResultSettings:
        from bridge.schema_config import check_result

        source = info.data.get("source")
        if isinstance(source, SourceSettings):
            check_result(
                info.data.get("name", "route"),
                source,
                kind=value.schema_kind,
                prediction_type=value.prediction_type,
                passthrough=value.passthrough,
                declared=value.passthrough_types,
            )
        return value

    @property
    def effectively_once(self) -> bool:
        return self.result.delivery == "effectively-once"

    @property
    def dead_letter_topic(self) -> str:
        """The configured DLQ, or Pulsar's conventional ``<topic>-<subscription>-DLQ``."""
        if self.failure.dead_letter_topic is not None:
            return self.failure.dead_letter_topic
        return topics.default_dead_letter_topic(self.source.topics[0], self.source.subscription)


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


@dataclass(frozen=True)
class ConfigReport:
    """Everything found in a config directory: the config when valid, else its problems."""

    config: Config | None
    problems: list[ConfigProblem]
    warnings: list[str]


def load_config(
    directory: Path,
    env: Mapping[str, str] | None = None,
    *,
    redactor: Redactor | None = None,
    secrets: SecretsRead = "all",
) -> Config:
    """Read, validate and cross-check a config directory; raise ConfigError with every problem.

    Secrets are resolved once here so an unreadable secret file fails ``check`` and start-up,
    but they are read again whenever used; ``redactor`` learns every value revealed.
    Commands that never call Databricks read fewer (``secrets``: "pulsar" or "none").
    """
    report = inspect_config(directory, env, redactor=redactor, secrets=secrets)
    if report.config is None:
        raise ConfigError(report.problems)
    return report.config


def inspect_config(
    directory: Path,
    env: Mapping[str, str] | None = None,
    *,
    redactor: Redactor | None = None,
    secrets: SecretsRead = "all",
) -> ConfigReport:
    """Like :func:`load_config`, but returns the problems with the warnings (for ``check``)."""
    # Imported here: the loader builds the models above, so it imports this module.
    from bridge.config_load import read_directory

    env = dict(os.environ if env is None else env)
    return read_directory(directory, env, redactor, secrets=secrets)
