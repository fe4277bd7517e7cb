"""The HTTP client for one serving endpoint: send a body, get predictions or an EndpointError.

Every way a call can fail is translated here into :class:`~bridge.errors.EndpointError`
with ``status``, ``retriable`` and ``retry_after``, so the layers above never see httpx.
Error bodies are parsed whatever their shape (Databricks JSON, RFC 6749 JSON, plain text,
a proxy's HTML page).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bridge.errors import AuthError, EndpointError, SecretError

DEFAULT_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Invocation:
    """A successful call: the parsed body and which model answered."""

    body: Any
    served_model: str | None
    elapsed_s: float


class ServingClient:
    """POSTs invocation bodies to one URL with the route's auth and timeout."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        auth: httpx.Auth | None = None,
        timeout_s: float = 120.0,
        retry_statuses: Collection[int] = DEFAULT_RETRY_STATUSES,
    ) -> None:
        self.url = url
        self._http = http
        self._auth = auth
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._retry_statuses = frozenset(retry_statuses)

    async def invoke(self, body: bytes) -> Invocation:
        """Send one request body; raise EndpointError for anything but a usable 200."""
        started = time.monotonic()
        try:
            response = await self._http.post(
                self.url,
                content=body,
                headers={"Content-Type": "application/json"},
                auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise EndpointError(
                f"timed out: {type(exc).__name__}", status=None, retriable=True
            ) from exc
        except httpx.RequestError as exc:
            raise EndpointError(
                f"connection failed: {type(exc).__name__}: {exc}", status=None, retriable=True
            ) from exc
        except AuthError as exc:
            raise EndpointError(
                f"no token: {exc}",
                status=None,
                retriable=exc.retriable,
                retry_after=exc.retry_after,
            ) from exc
        except SecretError as exc:
            # A credential file gone missing may come back (rotation, a remount): retry.
            raise EndpointError(f"no token: {exc}", status=None, retriable=True) from exc
        elapsed = time.monotonic() - started
        if response.status_code != 200:
            raise self._error(response)
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise EndpointError(
                f"200 with a body that is not JSON: {_snippet(response.text)}",
                status=200,
                retriable=True,
            ) from exc
        return Invocation(parsed, response.headers.get("served-model-name"), elapsed)

    def _error(self, response: httpx.Response) -> EndpointError:
        status = response.status_code
        return EndpointError(
            error_message(response),
            status=status,
            retriable=status in self._retry_statuses,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )


def error_message(response: httpx.Response) -> str:
    """The endpoint's own words for a failure, from any body shape, kept short."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return _snippet(response.text) or response.reason_phrase
    if isinstance(body, dict):
        code = body.get("error_code") or body.get("error")
        message = body.get("message") or body.get("error_description") or ""
        text = f"{code}: {message}" if code is not None else str(message or body)
        return _snippet(text)
    return _snippet(str(body))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _snippet(text: str) -> str:
    """Whitespace folded, at most ``_MESSAGE_LIMIT`` characters, head and tail kept.

    Servers tend to open with context (MLflow repeats the rejected input) and end with the
    cause ("Model is missing inputs [...]"), so a long message keeps its end, not just its
    start.
    """
    text = " ".join(text.split())
    if len(text) <= _MESSAGE_LIMIT:
        return text
    head = _MESSAGE_LIMIT // 4
    tail = _MESSAGE_LIMIT - head - 5
    return f"{text[:head]} ... {text[-tail:]}"
