"""The HTTP client for one serving endpoint: send a body, get predictions or an EndpointError.

Every way a call can fail is translated here into :class:`~bridge.errors.EndpointError`
with ``status``, ``retriable``, ``retry_after`` and ``timeout``, so the layers above never
see httpx. Error bodies are parsed whatever their shape (Databricks JSON, RFC 6749 JSON,
plain text, a proxy's HTML page).

The peer is not trusted to behave. ``timeout_s`` is a deadline for the whole exchange, so
a server dripping a byte at a time cannot hold a request past it (httpx's timeouts are per
read). The body is streamed and decompressed here in bounded steps, so neither a huge
answer nor a gzip bomb holds more than ``max_response_bytes`` (httpx would inflate each
64 KiB read in one go, up to 64 MB), and an error body is read only up to
:data:`ERROR_BODY_LIMIT`. A reason always names the exception and how far the exchange got.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bridge.errors import AuthError, EndpointError, ResponseShapeError, SecretError
from bridge.formats import UnwritableJson, read_json
from bridge.redaction import shorten

DEFAULT_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# An error body only ever becomes a short snippet: the rest is not worth the memory.
ERROR_BODY_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 300
# Only what is decoded here in bounded steps is offered (httpx would add br and zstd when
# their packages are installed).
_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"}


@dataclass(frozen=True)
class Invocation:
    """A successful call: the parsed body, which model answered, and which request it was
    (the endpoint's ``x-request-id``; ``client_request_id`` is set by bridge.correlation)."""

    body: Any
    served_model: str | None
    elapsed_s: float
    request_id: str | None = None
    client_request_id: str | None = None


class ServingClient:
    """POSTs invocation bodies to one URL with the route's auth, deadline and size limit.

    An answer over ``max_response_bytes`` is a :class:`ResponseShapeError`, an event
    problem, not a transient one: the size of an answer follows from the events asked
    about (a model echoing a huge input, say), so asking again cannot help, while halves
    of the batch get smaller answers; bisection gives the other events their results and
    dead-letters an event whose answer alone is too large. The same goes for a 200 whose
    body is JSON but not strict JSON (a NaN among the predictions) or is nested too deep
    to write back. A 200 that is not JSON at all (a proxy's HTML page) stays retriable.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        auth: httpx.Auth | None = None,
        timeout_s: float = 120.0,
        retry_statuses: Collection[int] = DEFAULT_RETRY_STATUSES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.url = url
        self._http = http
        self._auth = auth
        self._deadline_s = timeout_s
        # Kept per operation too, with connect capped, so an unreachable host fails fast.
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._retry_statuses = frozenset(retry_statuses)
        self._max_response_bytes = max_response_bytes
        self._where = f"POST {httpx.URL(url).path}"

    async def invoke(self, body: bytes, headers: Mapping[str, str] | None = None) -> Invocation:
        """Send one request body; raise EndpointError for anything but a usable 200.

        ``headers`` are added to the request (trace context, from bridge.correlation)."""
        started = time.monotonic()
        progress = _Progress()
        try:
            async with asyncio.timeout(self._deadline_s):
                response, content = await self._exchange(body, progress, headers)
        except TimeoutError as exc:
            raise EndpointError(
                f"timed out after {self._deadline_s:g} s (deadline for the whole request), "
                f"{self._where} {progress}",
                status=None,
                retriable=True,
                timeout=True,
            ) from exc
        except httpx.TimeoutException as exc:
            # Not reaching the host is a connect failure; a slow answer is an overload.
            raise EndpointError(
                f"timed out: {self._describe(exc, progress)}",
                status=None,
                retriable=True,
                timeout=not isinstance(exc, httpx.ConnectTimeout),
            ) from exc
        except httpx.RequestError as exc:
            raise EndpointError(
                f"connection failed: {self._describe(exc, progress)}",
                status=None,
                retriable=True,
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
        try:
            parsed = read_json(content)
        except orjson.JSONDecodeError as exc:
            message = f"200 with a body that is not JSON ({exc.msg}): "
            message += _snippet(_text(content, response))
            if content.lstrip()[:1] in (b"{", b"["):
                # Meant as JSON but not strict JSON (a NaN prediction): some event's answer.
                raise ResponseShapeError(message) from exc
            # A proxy's maintenance page, say: nothing to do with the events.
            raise EndpointError(message, status=200, retriable=True) from exc
        except UnwritableJson as exc:
            raise ResponseShapeError(f"200 with a body {exc}, too deep to publish") from exc
        served, request_id = _answer_ids(response)
        return Invocation(parsed, served, elapsed, request_id)

    async def _exchange(
        self, body: bytes, progress: _Progress, headers: Mapping[str, str] | None = None
    ) -> tuple[httpx.Response, bytes | bytearray]:
        """The 200 response and its body, or the EndpointError it amounts to."""
        async with self._http.stream(
            "POST",
            self.url,
            content=body,
            headers=_HEADERS if headers is None else {**_HEADERS, **headers},
            auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
            timeout=self._timeout,
        ) as response:
            progress.status = response.status_code
            if response.status_code != 200:
                raise await self._error(response, progress)
            limit = self._max_response_bytes
            announced = _announced_length(response)
            if announced is not None and announced > limit:
                raise ResponseShapeError(
                    f"response of {announced:,} bytes exceeds the limit of {limit:,} bytes "
                    "(endpoint.max_response_bytes); not read"
                )
            try:
                content, complete = await _read_capped(response, limit, progress)
            except _Undecodable as exc:
                # A body that cannot be decoded is a transport failure: worth another try.
                raise EndpointError(
                    f"{exc} on {self._where} {progress}", status=None, retriable=True
                ) from exc
            if not complete:
                raise ResponseShapeError(
                    f"response exceeds the limit of {limit:,} bytes after decompression "
                    f"(endpoint.max_response_bytes); stopped reading {progress}"
                )
            return response, content

    async def _error(self, response: httpx.Response, progress: _Progress) -> EndpointError:
        status = response.status_code
        try:
            content, complete = await _read_capped(response, ERROR_BODY_LIMIT, progress)
        except _Undecodable as exc:
            content, complete = bytearray(), True
            note = f" ({exc})"
        else:
            note = "" if complete else f" (body cut at {ERROR_BODY_LIMIT:,} bytes)"
        return EndpointError(
            _error_text(content, response) + note,
            status=status,
            retriable=status in self._retry_statuses,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _describe(self, exc: Exception, progress: _Progress) -> str:
        """The exception's type and message (some have none), where, and how far it got."""
        message = str(exc) or "(no message)"
        return f"{type(exc).__name__}: {message} on {self._where} {progress}"


class _Progress:
    """How far one exchange got, for the reason of a failure."""

    __slots__ = ("received", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.received = 0

    def __str__(self) -> str:
        if self.status is None:
            return "before the response headers"
        return f"after {self.received:,} bytes of the {self.status} response's body"


class _Undecodable(Exception):
    """The body's Content-Encoding is not one offered, or its data is corrupt."""


async def _read_capped(
    response: httpx.Response, limit: int, progress: _Progress
) -> tuple[bytearray, bool]:
    """The decoded body and True, or its first ``limit`` bytes and False once it is longer.

    Raw chunks are inflated in pieces of at most :data:`_STEP` bytes, so memory stays
    within the limit plus one piece, whatever the compression ratio.
    """
    inflate = _inflater(response.headers.get("Content-Encoding", ""))
    buffer = bytearray()
    async for raw in response.aiter_raw():
        progress.received += len(raw)
        for piece in inflate(raw):
            room = limit - len(buffer)
            if len(piece) > room:
                buffer += memoryview(piece)[:room]
                return buffer, False
            buffer += piece
    return buffer, True


# Inflated output per step: large enough to keep the calls few, small beside any limit.
_STEP = 256 * 1024
# ``raw chunk -> decoded pieces`` for one response's Content-Encoding.
_Inflater = Callable[[bytes], Iterator[bytes]]


def _inflater(content_encoding: str) -> _Inflater:
    """The decoder for a Content-Encoding; only those in the request's Accept-Encoding."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return lambda data: iter((data,))  # a network read: 64 KiB at most
    if encoding in ("gzip", "x-gzip"):
        return _Inflate(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return _Inflate(zlib.MAX_WBITS, raw_fallback=True)
    raise _Undecodable(f"response has Content-Encoding {content_encoding!r}, not offered")


class _Inflate:
    """zlib decompression in pieces of at most :data:`_STEP` bytes."""

    def __init__(self, wbits: int, *, raw_fallback: bool = False) -> None:
        self._zlib = zlib.decompressobj(wbits)
        # "deflate" means zlib-wrapped, but some servers send it raw: decided before the
        # first output, as httpx does.
        self._raw_fallback = raw_fallback

    def __call__(self, data: bytes) -> Iterator[bytes]:
        inflater = self._zlib
        try:
            while not inflater.eof:  # bytes after the end are ignored, as httpx does
                piece = inflater.decompress(data, _STEP)
                if piece:
                    self._raw_fallback = False
                    yield piece
                # A full piece may leave output pending inside zlib even with no input left.
                if len(piece) < _STEP and not inflater.unconsumed_tail:
                    return
                data = inflater.unconsumed_tail
        except zlib.error as exc:
            if not self._raw_fallback:
                raise _Undecodable(f"response body cannot be decoded: zlib.error: {exc}") from exc
            self._raw_fallback = False
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            yield from self(data)


def _announced_length(response: httpx.Response) -> int | None:
    """Content-Length when it is the decoded size (no Content-Encoding)."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _answer_ids(response: httpx.Response) -> tuple[str | None, str | None]:
    """The model that answered (``served-model-name``) and the request's id as the endpoint
    logged it (``x-request-id``, Databricks' and most proxies' header)."""
    headers = response.headers
    return headers.get("served-model-name"), headers.get("x-request-id")


def error_message(response: httpx.Response) -> str:
    """The endpoint's own words for a failure, from any body shape, kept short."""
    return _error_text(response.content, response)


def _error_text(content: bytes | bytearray, response: httpx.Response) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return _snippet(_text(content, response)) or response.reason_phrase
    if isinstance(body, dict):
        code = body.get("error_code") or body.get("error")
        message = body.get("message") or body.get("error_description") or ""
        text = f"{code}: {message}" if code is not None else str(message or body)
        return _snippet(text)
    return _snippet(str(body))


def _text(content: bytes | bytearray, response: httpx.Response) -> str:
    """The body as text in its declared charset (UTF-8 when none or unknown)."""
    try:
        return content.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        return content.decode("utf-8", errors="replace")


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
    start. Cut by ``shorten``: credential shapes hidden first, and no token cut in half
    (its first half would match nothing that hides it downstream).
    """
    text = " ".join(text.split())
    return shorten(text, _MESSAGE_LIMIT, tail=_MESSAGE_LIMIT - _MESSAGE_LIMIT // 4 - 5)
