"""Bearer tokens for the serving endpoint, as an ``httpx.Auth``.

    TokenSource        where a token comes from (OAuth M2M via authlib, a static PAT, ...)
    TokenCache         one cached token, refreshed ``leeway`` before expiry, one refresh at a time
    BearerAuth         httpx.Auth: adds the header; on 401 forces one refresh and retries once

The OAuth protocol itself (client authentication, form encoding, RFC 6749 error bodies) is
authlib's; this module only decides when to ask for a token and what to do with it.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

with warnings.catch_warnings():
    # authlib deprecates plain httpx in favour of its httpx2 fork at import; the bridge
    # is built on httpx, and the warning would otherwise print at every start.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

from bridge.errors import AuthError, SecretError
from bridge.secrets import Secret

Clock = Callable[[], float]


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # clock time; float("inf") for tokens that never expire

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at})"


class TokenSource(Protocol):
    """Fetches a fresh token; knows nothing of caching."""

    async def fetch(self) -> Token: ...

    async def aclose(self) -> None: ...


class TokenCache:
    """Caches one token; concurrent callers share a single refresh."""

    def __init__(
        self,
        source: TokenSource,
        *,
        leeway_s: float = 60.0,
        clock: Clock = time.monotonic,
        on_refresh: Callable[[], None] | None = None,
    ) -> None:
        self._source = source
        self._leeway_s = leeway_s
        self._clock = clock
        self._on_refresh = on_refresh
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0

    def _fresh(self, token: Token | None) -> bool:
        return token is not None and self._clock() < token.expires_at - self._leeway_s

    async def get(self) -> str:
        """A token valid for at least ``leeway`` more seconds."""
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token.value
        async with self._lock:
            # Another task may have refreshed while this one waited for the lock.
            if not self._fresh(self._token):
                self._token = await self._source.fetch()
                self.refreshes += 1
                if self._on_refresh is not None:
                    self._on_refresh()
            assert self._token is not None
            return self._token.value

    def invalidate(self, value: str) -> None:
        """Drop ``value`` if it is still the cached token (a 401 said it is no good)."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def aclose(self) -> None:
        await self._source.aclose()


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer``; a 401 forces one refresh and one retry."""

    def __init__(self, cache: TokenCache) -> None:
        self._cache = cache

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._cache.get()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            self._cache.invalidate(token)
            token = await self._cache.get()
            request.headers["Authorization"] = f"Bearer {token}"
            yield request


class StaticTokenSource:
    """A personal access token: never expires from the bridge's point of view."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    async def fetch(self) -> Token:
        # Re-read each time so a rotated token file is picked up after a 401.
        return Token(self._secret.reveal(), float("inf"))

    async def aclose(self) -> None:
        return None


class OAuthTokenSource:
    """Any OAuth grant at ``{host}/oidc/v1/token``, done by authlib.

    ``form`` returns the grant's extra form fields at each fetch (so a rotated subject token
    file is re-read); ``assertion``, when given, supplies the jwt-bearer assertion; client
    credentials go as HTTP Basic when a secret is given.
    """

    def __init__(
        self,
        token_endpoint: str,
        *,
        grant_type: str,
        client_id: Secret | None,
        client_secret: Secret | None,
        form: Callable[[], dict[str, str]] = dict,
        assertion: Callable[[], Awaitable[str]] | None = None,
        clock: Clock = time.monotonic,
        timeout_s: float = 30.0,
    ) -> None:
        self._token_endpoint = token_endpoint
        self._grant_type = grant_type
        self._client_id = client_id
        self._client_secret = client_secret
        self._form = form
        self._assertion = assertion
        self._clock = clock
        self._timeout_s = timeout_s
        self._client: AsyncOAuth2Client | None = None

    def _oauth_client(self) -> AsyncOAuth2Client:
        if self._client is None:
            # No credentials here: they are read at each fetch, so a rotated secret file
            # is picked up without a restart.
            self._client = AsyncOAuth2Client(scope="all-apis", timeout=self._timeout_s)
        return self._client

    def _credentials(self) -> tuple[httpx.Auth, dict[str, str]]:
        """Client authentication for one token request: HTTP Basic, or the id in the form."""
        client_id = self._client_id.reveal() if self._client_id is not None else None
        if self._client_secret is not None and client_id is not None:
            return httpx.BasicAuth(client_id, self._client_secret.reveal()), {}
        # Public client (federation): no Basic auth; the id, when there is one, is a form field.
        return _NoClientAuth(), ({"client_id": client_id} if client_id is not None else {})

    async def fetch(self) -> Token:
        client = self._oauth_client()
        try:
            auth, fields = self._credentials()
            if self._assertion is not None:
                # jwt-bearer: the assertion is another token of ours (a workspace token
                # exchanged for one scoped to a route-optimized endpoint).
                fields["assertion"] = await self._assertion()
            data: dict[str, Any] = await client.fetch_token(
                self._token_endpoint,
                grant_type=self._grant_type,
                auth=auth,
                **fields,
                **self._form(),
            )
        except SecretError as exc:
            # A credential file gone missing may come back (rotation, a remount).
            raise AuthError(f"credential unavailable: {exc}", retriable=True) from exc
        except OAuthError as exc:
            raise AuthError(
                f"token endpoint refused: {exc.error}: {exc.description}", retriable=False
            ) from exc
        except httpx.HTTPError as exc:
            raise AuthError(f"token endpoint unreachable: {exc!r}", retriable=True) from exc
        except ValueError as exc:
            # authlib raises ValueError-family errors when the body is not a token (5xx pages).
            raise AuthError(f"token endpoint answered no token: {exc}", retriable=True) from exc
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError("token endpoint answered without access_token", retriable=True)
        expires_in = data.get("expires_in")
        ttl = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        return Token(value, self._clock() + ttl)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _NoClientAuth(httpx.Auth):
    """Sends the token request as is (authlib otherwise adds its own client auth)."""


class DatabricksSdkTokenSource:
    """Whatever databricks-sdk unified auth resolves (env, ~/.databrickscfg profile, ...).

    The SDK is synchronous and may do HTTP to get a token, so each fetch runs in a worker
    thread: the one place the daemon leaves its loop, and only at token refresh. The SDK
    caches and refreshes its own token; asking it again every ``recheck_s`` costs nothing
    while that token is valid.
    """

    def __init__(
        self,
        *,
        host: str | None,
        profile: str | None,
        recheck_s: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._host = host
        self._profile = profile
        self._recheck_s = recheck_s
        self._clock = clock
        self._config: Any = None

    def _authenticate(self) -> dict[str, str]:
        from databricks.sdk.core import Config as SdkConfig
        from databricks.sdk.errors.base import DatabricksError

        try:
            if self._config is None:
                self._config = SdkConfig(host=self._host, profile=self._profile)
            headers: dict[str, str] = self._config.authenticate()
        except (DatabricksError, ValueError) as exc:
            raise AuthError(f"databricks-sdk auth failed: {exc}", retriable=True) from exc
        return headers

    async def fetch(self) -> Token:
        headers = await asyncio.to_thread(self._authenticate)
        value = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not value:
            raise AuthError("databricks-sdk auth produced no bearer token", retriable=False)
        return Token(value, self._clock() + self._recheck_s)

    async def aclose(self) -> None:
        return None
