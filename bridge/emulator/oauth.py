"""The emulated OIDC surface: discovery documents and ``POST /oidc/v1/token``.

Grant types are dispatched through a mapping of ``grant_type`` -> :data:`GrantHandler`,
so token exchange (OIDC federation, ``federation.py``) and ``jwt-bearer``
(route-optimized scoped tokens, ``route_optimized.py``) plug in as more entries without
touching this module; ``grants.py`` assembles the default mapping. A grant that only some
workspaces offer is an :class:`OptionalGrant`: advertised and accepted only while the
state enables it. Errors follow RFC 6749 section 5.2.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.emulator.state import EmulatorState

SUPPORTED_SCOPES = frozenset({"all-apis", "offline_access"})
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 error response: ``{"error", "error_description"}`` with ``status``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class TokenRequest:
    """A parsed token request: the form fields and any HTTP Basic client credentials."""

    form: Mapping[str, str]
    basic: tuple[str, str] | None

    def client_credentials(self) -> tuple[str, str]:
        """The client id and secret, from Basic auth or the form but never both."""
        in_form = "client_id" in self.form or "client_secret" in self.form
        if self.basic is not None:
            if in_form:
                # RFC 6749 2.3: a client MUST NOT use more than one authentication method.
                raise OAuthError(400, "invalid_request", "Client sent credentials twice.")
            return self.basic
        client_id, secret = self.form.get("client_id"), self.form.get("client_secret")
        if not client_id or secret is None:
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        return client_id, secret


# Returns the success body (access_token, token_type, expires_in, scope, ...) or raises
# OAuthError. Synchronous: a grant only consults the in-memory state.
GrantHandler = Callable[[TokenRequest, EmulatorState], dict[str, object]]


@dataclass(frozen=True)
class OptionalGrant:
    """A grant the workspace offers only while ``enabled(state)``, e.g. token exchange
    once a federation policy exists; otherwise ``unsupported_grant_type`` with
    ``disabled_reason``, and the discovery document leaves it out."""

    handler: GrantHandler
    enabled: Callable[[EmulatorState], bool]
    disabled_reason: str

    def __call__(self, request: TokenRequest, state: EmulatorState) -> dict[str, object]:
        if not self.enabled(state):
            raise OAuthError(400, "unsupported_grant_type", self.disabled_reason)
        return self.handler(request, state)


def offered_grants(grants: Mapping[str, GrantHandler], state: EmulatorState) -> list[str]:
    """The grant types ``state`` currently accepts, sorted."""
    return sorted(
        name
        for name, handler in grants.items()
        if not isinstance(handler, OptionalGrant) or handler.enabled(state)
    )


def granted_scope(request: TokenRequest) -> str:
    """The requested scope (default ``all-apis``); invalid_scope for unknown scopes."""
    scope = request.form.get("scope", "all-apis").strip() or "all-apis"
    unknown = sorted(set(scope.split()) - SUPPORTED_SCOPES)
    if unknown:
        raise OAuthError(400, "invalid_scope", f"Unsupported scope(s): {' '.join(unknown)}.")
    return scope


def bearer_token_body(
    state: EmulatorState, scope: str, *, endpoint_ids: Set[str] = frozenset()
) -> dict[str, object]:
    """The success body for a freshly issued token; shared by every grant handler.

    With ``endpoint_ids`` the token is scoped to those endpoints' data planes and lives
    :attr:`EmulatorState.scoped_ttl_s`.
    """
    return {
        "access_token": state.issue_token(scope, endpoint_ids=endpoint_ids),
        "token_type": "Bearer",
        "expires_in": state.scoped_ttl_s if endpoint_ids else state.token_ttl_s,
        "scope": scope,
    }


def client_credentials_grant(request: TokenRequest, state: EmulatorState) -> dict[str, object]:
    """``grant_type=client_credentials``: machine-to-machine OAuth for a service principal."""
    client_id, secret = request.client_credentials()
    if not state.client_secret_matches(client_id, secret):
        raise OAuthError(401, "invalid_client", "Client authentication failed.")
    return bearer_token_body(state, granted_scope(request))


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise OAuthError(400, "invalid_request", "Malformed Basic credentials.") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError(400, "invalid_request", "Malformed Basic credentials.")
    # RFC 6749 2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


async def _parse_token_request(request: Request) -> TokenRequest:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded."
        )
    body = (await request.body()).decode("utf-8", errors="replace")
    # Parsed by hand: Starlette's request.form() would need python-multipart.
    form = dict(parse_qsl(body, keep_blank_values=True))
    return TokenRequest(form, _basic_credentials(request.headers.get("authorization")))


def oauth_error_response(error: OAuthError, basic_used: bool) -> Response:
    """The RFC 6749 JSON error response for ``error``."""
    headers = dict(_NO_STORE)
    if error.status == 401 and basic_used:
        headers["WWW-Authenticate"] = 'Basic realm="emulator"'  # RFC 6749 5.2 requires it
    body = {"error": error.error, "error_description": error.description}
    return JSONResponse(body, status_code=error.status, headers=headers)


async def token_endpoint(
    request: Request, state: EmulatorState, grants: Mapping[str, GrantHandler]
) -> Response:
    """Handle ``POST /oidc/v1/token`` by dispatching on ``grant_type``."""
    basic_used = request.headers.get("authorization", "").lower().startswith("basic ")
    try:
        token_request = await _parse_token_request(request)
        grant_type = token_request.form.get("grant_type")
        if not grant_type:
            raise OAuthError(400, "invalid_request", "Missing grant_type.")
        handler = grants.get(grant_type)
        if handler is None:
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant: {grant_type}.")
        body = handler(token_request, state)
    except OAuthError as error:
        return oauth_error_response(error, basic_used)
    return JSONResponse(body, headers=_NO_STORE)


def _host(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def databricks_config(request: Request, state: EmulatorState) -> Response:
    """``GET /.well-known/databricks-config``: where the OIDC endpoints live."""
    host = _host(request)
    body = {"oidc_endpoint": f"{host}/oidc", "workspace_id": state.workspace_id, "cloud": "AWS"}
    return JSONResponse(body)


def authorization_server_metadata(
    request: Request, state: EmulatorState, grants: Mapping[str, GrantHandler]
) -> Response:
    """``GET /oidc/.well-known/oauth-authorization-server`` (RFC 8414)."""
    oidc = f"{_host(request)}/oidc"
    return JSONResponse(
        {
            "issuer": oidc,
            "authorization_endpoint": f"{oidc}/v1/authorize",
            "token_endpoint": f"{oidc}/v1/token",
            "grant_types_supported": offered_grants(grants, state),
            "response_types_supported": ["code"],
            "scopes_supported": sorted(SUPPORTED_SCOPES),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }
    )
