"""Which credentials a route's endpoint calls use: one httpx.Auth per workspace.

Maps a :class:`~bridge.config.WorkspaceSettings` to a token source (OAuth M2M, OIDC
federation, a PAT, or none) wrapped in a shared :class:`~bridge.auth.TokenCache`, so routes
on the same workspace share one token and one refresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from bridge.auth import BearerAuth, OAuthTokenSource, StaticTokenSource, TokenCache, TokenSource
from bridge.config import Config, RouteSettings, WorkspaceSettings
from bridge.errors import ConfigError, ConfigProblem, SecretError
from bridge.secrets import Secret

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@dataclass
class WorkspaceAuth:
    """The auth of one workspace: ``cache`` is None for ``auth_type = "none"``."""

    name: str
    cache: TokenCache | None

    @property
    def httpx_auth(self) -> httpx.Auth | None:
        return None if self.cache is None else BearerAuth(self.cache)


def token_source(ws: WorkspaceSettings, where: str) -> TokenSource | None:
    """Build the token source for a workspace; ``where`` names it in errors."""
    kind = ws.resolved_auth_type
    host = (ws.host or "").rstrip("/")
    if kind == "none":
        return None
    if kind == "pat":
        assert ws.token is not None  # guaranteed by WorkspaceSettings validation
        return StaticTokenSource(ws.token)
    if kind == "oauth-m2m":
        return OAuthTokenSource(
            f"{host}/oidc/v1/token",
            grant_type="client_credentials",
            client_id=ws.client_id,
            client_secret=ws.client_secret,
        )
    if kind == "oidc-federation":
        return OAuthTokenSource(
            f"{host}/oidc/v1/token",
            grant_type=TOKEN_EXCHANGE,
            client_id=ws.client_id,
            client_secret=None,
            form=_subject_token_form(ws),
        )
    raise ConfigError(
        [ConfigProblem("bridge.toml", f"{where}.auth_type", f"{kind!r} is not supported yet")]
    )


def _subject_token_form(ws: WorkspaceSettings) -> Callable[[], dict[str, str]]:
    """The token-exchange fields; the IdP token is re-read at every exchange (it rotates)."""
    if ws.oidc_token_file is not None:
        subject = Secret(f"file:{ws.oidc_token_file}")
    else:
        subject = Secret(f"env:{ws.oidc_token_env}", env=os.environ)

    def form() -> dict[str, str]:
        try:
            token = subject.reveal()
        except SecretError as exc:
            raise SecretError(f"OIDC subject token: {exc}") from exc
        return {"subject_token": token, "subject_token_type": JWT_TOKEN_TYPE}

    return form


def build_workspace_auth(
    config: Config, on_refresh: Callable[[str], None] | None = None
) -> dict[str | None, WorkspaceAuth]:
    """One WorkspaceAuth per workspace used by a named-endpoint route (None = default)."""
    used = {r.endpoint.workspace for r in config.routes if r.endpoint.name is not None}
    auths: dict[str | None, WorkspaceAuth] = {}
    for name in sorted(used, key=lambda n: n or ""):
        ws = config.bridge.databricks if name is None else config.bridge.workspaces[name]
        label = "default" if name is None else name
        where = "databricks" if name is None else f"databricks.{name}"
        source = token_source(ws, where)
        cache = None
        if source is not None:
            cache = TokenCache(
                source, leeway_s=ws.token_leeway_s, on_refresh=_bind(on_refresh, label)
            )
        auths[name] = WorkspaceAuth(label, cache)
    return auths


def _bind(callback: Callable[[str], None] | None, label: str) -> Callable[[], None] | None:
    if callback is None:
        return None
    return lambda: callback(label)


def invocation_url(config: Config, route: RouteSettings) -> str:
    """Where a route's requests go: its ``url``, or the workspace's invocations path."""
    endpoint = route.endpoint
    if endpoint.url is not None:
        return endpoint.url
    host = (config.workspace_for(route).host or "").rstrip("/")
    if endpoint.served_model is not None:
        return (
            f"{host}/serving-endpoints/{endpoint.name}/served-models/"
            f"{endpoint.served_model}/invocations"
        )
    return f"{host}/serving-endpoints/{endpoint.name}/invocations"
