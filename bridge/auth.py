"""Bearer tokens for the serving endpoint, as an ``httpx.Auth``.

    TokenSource        where a token comes from (OAuth via authlib, databricks-sdk, a PAT)
    TokenCache         one cached token, refreshed before expiry, one refresh at a time
    BearerAuth         httpx.Auth: adds the header; on 401 forces one refresh and retries once
    token_answer_error the one place a token endpoint's answer is judged (table below)

Every way of not getting a token is an AuthError. ``retriable=False`` is a refusal, a config
problem that asking again will not fix (start-up fails on it); ``retriable=True`` means the
identity provider is overloaded or unreachable, and ``retry_after`` keeps its Retry-After:

    answer of the token endpoint                                         retriable
    error slow_down, temporarily_unavailable, server_error (any status)  yes
    HTTP 408, 429, 5xx (any body)                                        yes
    2xx that is not a token (HTML, not a JSON object, no access_token)   yes
    connect error, timeout (``timeout_s`` bounds the whole answer)       yes
    error invalid_client, unauthorized_client, invalid_grant,
      access_denied, invalid_scope, or any other error code              no
    HTTP 401, 403, and any other 3xx/4xx                                 no

authlib does the protocol (client authentication, the grant's form); its errors drop the
status and headers, so the answer is judged in its ``access_token_response`` hook instead.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import structlog

with warnings.catch_warnings():
    # authlib deprecates plain httpx in favour of its httpx2 fork at import; the bridge
    # is built on httpx, and the warning would otherwise print at every start.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

from bridge.errors import AuthError, SecretError
from bridge.redaction import shorten
from bridge.secrets import Secret
from bridge.serving import parse_retry_after

Clock = Callable[[], float]

log = structlog.get_logger("bridge.auth")

# Codes meaning "not now". None is among RFC 6749 5.2's token endpoint codes, yet identity
# providers send them there: slow_down (RFC 8628), server_error, temporarily_unavailable
# (RFC 6749 4.1.2.1).
_UNAVAILABLE_CODES = frozenset({"slow_down", "temporarily_unavailable", "server_error"})
# The refusals named in the table, which databricks-sdk's messages are matched against.
REFUSAL_CODES = frozenset(
    {"invalid_client", "unauthorized_client", "invalid_grant", "access_denied", "invalid_scope"}
)
_DESCRIPTION_LIMIT = 200


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
    """Caches one token; concurrent callers share a single refresh.

    A token is refreshed ``min(leeway_s, lifetime / 4)`` before it expires, its lifetime
    measured when it arrives. The leeway lets a request that leaves with the token arrive
    before it expires; a quarter of the lifetime keeps a token whose whole life is shorter
    than the leeway (3 s against 60) in use for three quarters of it instead of refreshing
    it before every request.

    A failed refresh is not tried again for the Retry-After the identity provider sent, or
    ``retry_pause_s``: meanwhile the token in hand is used while it has not expired, and
    otherwise the failure is raised again with the time left as ``retry_after``, so a down
    identity provider is asked once per pause, not once per request.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        leeway_s: float = 60.0,
        clock: Clock = time.monotonic,
        on_refresh: Callable[[], None] | None = None,
        retry_pause_s: float = 1.0,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        self._source = source
        # Told every token as it arrives, before any use: the redactor's register_token,
        # so an error that echoes the token can be scrubbed wherever it is printed.
        self._on_token = on_token
        self._leeway_s = leeway_s
        self._clock = clock
        self._on_refresh = on_refresh
        self._retry_pause_s = retry_pause_s
        self._token: Token | None = None
        self._refresh_at = -math.inf
        self._failure: AuthError | None = None
        self._retry_at = -math.inf
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def get(self) -> str:
        """The cached token, refreshed first when it is due."""
        seen = self._token
        if seen is not None and self._clock() < self._refresh_at:
            return seen.value
        async with self._lock:
            current = self._token
            if current is not None and (current is not seen or self._clock() < self._refresh_at):
                # Refreshed while this task waited for the lock: as fresh as a token gets.
                return current.value
            return await self._refresh(current)

    async def _refresh(self, current: Token | None) -> str:
        now = self._clock()
        if now < self._retry_at and self._failure is not None:
            if current is not None and now < current.expires_at:
                return current.value
            failure = self._failure
            raise AuthError(
                str(failure), retriable=failure.retriable, retry_after=self._retry_at - now
            ) from failure
        try:
            token = await self._source.fetch()
        except AuthError as exc:
            now = self._clock()
            self._failure = exc
            self._retry_at = now + (
                exc.retry_after if exc.retry_after is not None else self._retry_pause_s
            )
            if current is None or now >= current.expires_at:
                raise
            log.warning(
                "token_refresh_failed",
                error=str(exc),
                retriable=exc.retriable,
                current_token_valid_s=round(current.expires_at - now, 1),
            )
            return current.value
        if self._on_token is not None:
            self._on_token(token.value)
        now = self._clock()
        lifetime = max(0.0, token.expires_at - now)
        self._token = token
        self._refresh_at = token.expires_at - min(self._leeway_s, lifetime / 4)
        self._failure = None
        self._retry_at = -math.inf
        self.refreshes += 1
        if self._on_refresh is not None:
            self._on_refresh()
        return token.value

    def on_token(self, value: str) -> None:
        """Pass a token derived from this cache's (a scoped one) to the same listener."""
        if self._on_token is not None:
            self._on_token(value)

    def invalidate(self, value: str) -> None:
        """Drop ``value`` if it is still the cached token (a 401 said it is no good)."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def aclose(self) -> None:
        await self._source.aclose()


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer``; a 401 forces one refresh and one retry.

    An AuthError of that refresh propagates as it is, retriable or not, and httpx closes
    the 401 response on its way out.
    """

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


def token_answer_error(response: httpx.Response) -> AuthError | None:
    """What is wrong with a token endpoint's answer (see the module's table), or None for a
    usable token."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    code = body.get("error") if isinstance(body.get("error"), str) else None
    if 200 <= status < 300 and code is None:
        value = body.get("access_token")
        if isinstance(value, str) and value:
            return None
        # Not the body's text: a 2xx body may hold credentials under another name.
        kind = response.headers.get("Content-Type", "no content type")
        return AuthError(
            f"token endpoint answered no access_token: HTTP {status}, {kind}", retriable=True
        )
    description = body.get("error_description")
    return _classify(
        status,
        code,
        description if isinstance(description, str) else None,
        parse_retry_after(response.headers.get("Retry-After")),
    )


def _classify(
    status: int | None, code: str | None, description: str | None, retry_after: float | None
) -> AuthError:
    """The table's rows for an error answer; ``status`` is None when authlib hid it."""
    what = " ".join(part for part in (f"HTTP {status}" if status else "", code or "") if part)
    if description:
        # Scrubbed before it is cut, and never cut inside a token: half a token would no
        # longer be recognised by the redaction of whatever prints the error.
        what += f": {shorten(' '.join(description.split()), _DESCRIPTION_LIMIT)}"
    if code in _UNAVAILABLE_CODES or status in (408, 429) or (status or 0) >= 500:
        return AuthError(
            f"token endpoint unavailable: {what}", retriable=True, retry_after=retry_after
        )
    return AuthError(f"token endpoint refused: {what}", retriable=False)


def _check_token_answer(response: httpx.Response) -> httpx.Response:
    """authlib's ``access_token_response`` hook: raise unless ``response`` holds a token."""
    error = token_answer_error(response)
    if error is not None:
        raise error
    return response


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
    credentials go as HTTP Basic when a secret is given. ``timeout_s`` bounds the whole
    exchange (httpx's timeouts bound each read, so a token endpoint dripping its answer
    would otherwise hold the refresh, and every request waiting on it, indefinitely).
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
            self._client.register_compliance_hook("access_token_response", _check_token_answer)
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
                # exchanged for one scoped to a route-optimized endpoint), bounded by its
                # own source's timeout.
                fields["assertion"] = await self._assertion()
            fields.update(self._form())
            async with asyncio.timeout(self._timeout_s):
                data: dict[str, Any] = await client.fetch_token(
                    self._token_endpoint, grant_type=self._grant_type, auth=auth, **fields
                )
        except SecretError as exc:
            # A credential file gone missing may come back (rotation, a remount).
            raise AuthError(f"credential unavailable: {exc}", retriable=True) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise AuthError(
                f"token endpoint timed out: no token within {self._timeout_s:g} s",
                retriable=True,
            ) from exc
        except httpx.HTTPError as exc:
            raise AuthError(f"token endpoint unreachable: {exc!r}", retriable=True) from exc
        except OAuthError as exc:
            # Not expected: the hook judges every answer before authlib parses it.
            raise _classify(None, exc.error, exc.description, None) from exc
        return Token(data["access_token"], self._clock() + _lifetime(data.get("expires_in")))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _lifetime(expires_in: object) -> float:
    """``expires_in`` in seconds; some identity providers send it as a string."""
    try:
        seconds = float(expires_in) if isinstance(expires_in, int | float | str) else math.nan
    except ValueError:
        seconds = math.nan
    # RFC 6749 leaves it optional; Databricks tokens live an hour.
    return seconds if math.isfinite(seconds) else 3600.0


class _NoClientAuth(httpx.Auth):
    """Sends the token request as is (authlib otherwise adds its own client auth)."""
