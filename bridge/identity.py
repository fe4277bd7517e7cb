"""Which credentials a route's endpoint calls use: one httpx.Auth per workspace.

Maps a :class:`~bridge.config_bridge.WorkspaceSettings` to a token source (OAuth M2M, OIDC
federation, a PAT, or none) wrapped in a shared :class:`~bridge.auth.TokenCache`, so routes
on the same workspace share one token and one refresh.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from bridge.auth import (
    BearerAuth,
    OAuthTokenSource,
    StaticTokenSource,
    Token,
    TokenCache,
    TokenSource,
)
from bridge.config import Config
from bridge.config_bridge import WorkspaceSettings
from bridge.config_route import RouteSettings
from bridge.errors import AuthError, ConfigError, ConfigProblem, SecretError
from bridge.sdk_auth import DatabricksSdkTokenSource
from bridge.secrets import Secret

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

log = structlog.get_logger("bridge.identity")


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
    if kind == "databricks-sdk":
        return DatabricksSdkTokenSource(host=ws.host, profile=ws.profile)
    raise ConfigError(
        [ConfigProblem("bridge.toml", f"{where}.auth_type", f"{kind!r} is not supported")]
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
    config: Config,
    on_refresh: Callable[[str], None] | None = None,
    on_token: Callable[[str], None] | None = None,
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
                source,
                leeway_s=ws.token_leeway_s,
                on_refresh=_bind(on_refresh, label),
                on_token=on_token,
            )
        auths[name] = WorkspaceAuth(label, cache)
    return auths


async def first_tokens(auths: Mapping[str | None, WorkspaceAuth]) -> None:
    """Fetch each workspace's token once: a refused client is a config error, found now."""
    for auth in auths.values():
        if auth.cache is None:
            continue
        try:
            await auth.cache.get()
        except AuthError as exc:
            if not exc.retriable:
                raise
            # The identity provider may be down; requests will retry the token with backoff.
            log.warning("token_unavailable", workspace=auth.name, error=str(exc))


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


@dataclass
class EndpointTarget:
    """Where a route sends requests and with which auth; ``cache`` is the route's own
    scoped token cache for a route-optimized endpoint (closed with the route)."""

    url: str
    auth: httpx.Auth | None
    route_optimized: bool = False
    cache: TokenCache | None = None
    # Set when Databricks says the endpoint does not exist or may not be read: the route
    # starts paused and probes instead of failing every event.
    missing: str | None = None

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()


async def resolve_endpoint(
    config: Config,
    route: RouteSettings,
    http: httpx.AsyncClient,
    workspace: WorkspaceAuth | None,
) -> EndpointTarget:
    """The invocation target of a route, asking Databricks whether it is route-optimized.

    A route-optimized endpoint is queried on its own data-plane URL with a token scoped to
    that endpoint (``authorization_details``), exchanged from the workspace token. When the
    endpoint cannot be described (no permission to read it, an old workspace), the route
    uses the workspace URL, which is right for every endpoint that is not route-optimized.
    """
    url = invocation_url(config, route)
    if route.endpoint.name is None or workspace is None:
        return EndpointTarget(url, None)
    auth = workspace.httpx_auth
    cache = workspace.cache
    host = (config.workspace_for(route).host or "").rstrip("/")
    if cache is None or not host:
        return EndpointTarget(url, auth)
    details, missing = await _describe(http, host, route.endpoint.name, auth)
    if details is None or not details.get("route_optimized"):
        return EndpointTarget(url, auth, missing=missing)
    data_plane = _data_plane_url(details)
    endpoint_id = details.get("id")
    if data_plane is None or not isinstance(endpoint_id, str):
        log.warning("route_optimized_without_url", route=route.name)
        return EndpointTarget(url, auth)
    authorization = json.dumps(
        [
            {
                "type": "workspace_permission",
                "object_type": "serving-endpoints",
                "object_path": f"/serving-endpoints/{endpoint_id}",
                "actions": ["query_inference_endpoint"],
            }
        ]
    )
    assertion = _WorkspaceAssertion(cache)
    scoped = TokenCache(
        _RefreshRefusedAssertion(
            OAuthTokenSource(
                f"{host}/oidc/v1/token",
                grant_type=JWT_BEARER,
                client_id=None,
                client_secret=None,
                form=lambda: {"authorization_details": authorization},
                assertion=assertion,
            ),
            assertion,
        ),
        leeway_s=config.workspace_for(route).token_leeway_s,
        on_token=cache.on_token,
    )
    if route.endpoint.served_model is not None:
        # The data plane serves one served model of the endpoint the way the workspace does.
        base = data_plane.removesuffix("/invocations")
        data_plane = (
            f"{base}/served-models/{quote(route.endpoint.served_model, safe='')}/invocations"
        )
    log.info("route_optimized", route=route.name, url=data_plane)
    return EndpointTarget(data_plane, BearerAuth(scoped), True, scoped)


class _WorkspaceAssertion:
    """The workspace token used as the jwt-bearer assertion; remembers the last one sent."""

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache
        self.last: str | None = None

    async def __call__(self) -> str:
        self.last = await self.cache.get()
        return self.last


class _RefreshRefusedAssertion:
    """A scoped-token source that, when the exchange refuses the workspace token (revoked
    before it expired), drops that token and exchanges a fresh one once."""

    def __init__(self, source: OAuthTokenSource, assertion: _WorkspaceAssertion) -> None:
        self._source = source
        self._assertion = assertion

    async def fetch(self) -> Token:
        try:
            return await self._source.fetch()
        except AuthError as exc:
            if exc.retriable or self._assertion.last is None:
                raise
            self._assertion.cache.invalidate(self._assertion.last)
            return await self._source.fetch()

    async def aclose(self) -> None:
        await self._source.aclose()


# Start-up waits on this describe; a hanging workspace API must not hold the route long.
DESCRIBE_TIMEOUT_S = 10.0


async def _describe(
    http: httpx.AsyncClient, host: str, name: str, auth: httpx.Auth | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The endpoint's details, or None; and why it is missing, when Databricks says so."""
    url = f"{host}/api/2.0/serving-endpoints/{quote(name, safe='')}"
    try:
        async with asyncio.timeout(DESCRIBE_TIMEOUT_S):
            response = await http.get(url, auth=auth or httpx.USE_CLIENT_DEFAULT)
    except (httpx.HTTPError, AuthError, SecretError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        log.warning("endpoint_describe_failed", endpoint=name, error=error)
        return None, None
    if response.status_code != 200:
        log.warning("endpoint_describe_failed", endpoint=name, status=response.status_code)
        if response.status_code in (403, 404):
            word = "does not exist" if response.status_code == 404 else "may not be read"
            return None, f"endpoint {name!r} {word} (HTTP {response.status_code} at start-up)"
        return None, None
    try:
        body = response.json()
    except ValueError:
        return None, None
    return (body if isinstance(body, dict) else None), None


def _data_plane_url(details: dict[str, Any]) -> str | None:
    url = details.get("endpoint_url")
    if not isinstance(url, str):
        info = details.get("data_plane_info", {})
        query = info.get("query_info", {}) if isinstance(info, dict) else {}
        url = query.get("endpoint_url") if isinstance(query, dict) else None
    if not isinstance(url, str) or not url:
        return None
    # Databricks documents the full invocation URL; accept a base URL too.
    return url if url.rstrip("/").endswith("/invocations") else url.rstrip("/") + "/invocations"
