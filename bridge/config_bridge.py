"""``bridge.toml``: the daemon-wide settings (Pulsar, Databricks workspaces, observability,
shutdown), each section a frozen model whose validators hold the rules within it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from bridge.addresses import check_http_url, check_service_url, parse_bind
from bridge.config_section import SecretField, Section


def _bind(bind: str) -> str:
    parse_bind(bind)  # what the health server binds with
    return bind


def _http_url(what: str, *, base_only: bool = False) -> AfterValidator:
    return AfterValidator(lambda url: check_http_url(url, what=what, base_only=base_only))


class PulsarTokenAuth(Section):
    type: Literal["token"]
    token: SecretField


class PulsarOAuth2Auth(Section):
    type: Literal["oauth2"]
    issuer_url: str
    private_key: str  # path to the client-credentials JSON file pulsar-client reads
    audience: str | None = None
    scope: str | None = None


class PulsarSettings(Section):
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


class WorkspaceSettings(Section):
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


class TracingSettings(Section):
    # OpenTelemetry spans (a batch, its requests, its results) sent over OTLP/HTTP; off, the
    # bridge builds no span and reads no trace context (bridge.tracing).
    enabled: bool = False
    otlp_endpoint: Annotated[str, _http_url("observe.tracing.otlp_endpoint")] = (
        "http://127.0.0.1:4318/v1/traces"
    )
    # Of the traces a batch starts; a batch of one event follows its event's sampling.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    service_name: str = Field(default="pulsar-bridge", min_length=1)


class ObserveSettings(Section):
    # Loopback by default: metrics and health are for the local scraper and supervisor.
    http_bind: Annotated[str, AfterValidator(_bind)] | None = "127.0.0.1:9464"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tracing: TracingSettings = TracingSettings()


class DaemonSettings(Section):
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
