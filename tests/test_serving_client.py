"""ServingClient over respx: success, every error body shape, Retry-After, transport errors, 401,
and the limits on what a peer can make it do (size, decompression, deadline, depth)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from bridge.auth import BearerAuth, StaticTokenSource, Token, TokenCache
from bridge.errors import AuthError, EndpointError, ResponseShapeError
from bridge.formats import MAX_WRITE_DEPTH
from bridge.secrets import Secret
from bridge.serving import (
    DEFAULT_RETRY_STATUSES,
    Invocation,
    ServingClient,
    error_message,
    parse_retry_after,
)

URL = "https://adb-123.azuredatabricks.net/serving-endpoints/fraud-model/invocations"
WHERE = "POST /serving-endpoints/fraud-model/invocations"
BODY = orjson.dumps({"dataframe_records": [{"amount": 1.5}, {"amount": 2}]})


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def invoke_error(client: ServingClient) -> EndpointError:
    with pytest.raises(EndpointError) as info:
        await client.invoke(BODY)
    return info.value


# --------------------------------------------------------------------------- success


async def test_200_returns_body_and_served_model(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = router.post(URL).respond(
        200, json={"predictions": [0.1, 0.9]}, headers={"served-model-name": "fraud-model-3"}
    )

    invocation = await ServingClient(URL, http).invoke(BODY)

    assert isinstance(invocation, Invocation)
    assert invocation.body == {"predictions": [0.1, 0.9]}
    assert invocation.served_model == "fraud-model-3"
    assert invocation.elapsed_s >= 0
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.content == BODY
    assert request.headers["Content-Type"] == "application/json"


async def test_200_without_served_model_header(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    router.post(URL).respond(200, json={"outputs": [1]})

    invocation = await ServingClient(URL, http).invoke(BODY)

    assert invocation.served_model is None
    assert invocation.body == {"outputs": [1]}


@pytest.mark.parametrize(("timeout_s", "connect_s"), [(120.0, 10.0), (3.0, 3.0)])
async def test_request_timeout_is_the_routes_with_connect_capped_at_10s(
    router: respx.MockRouter, http: httpx.AsyncClient, timeout_s: float, connect_s: float
) -> None:
    route = router.post(URL).respond(200, json={"predictions": []})

    await ServingClient(URL, http, timeout_s=timeout_s).invoke(BODY)

    assert route.calls.last.request.extensions["timeout"] == {
        "connect": connect_s,
        "read": timeout_s,
        "write": timeout_s,
        "pool": timeout_s,
    }


async def test_200_with_a_body_that_is_not_json(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    router.post(URL).respond(200, html="<html>\n  <title>Maintenance</title>\n</html>")

    error = await invoke_error(ServingClient(URL, http))

    assert error.status == 200
    assert error.retriable is True
    assert "not JSON" in error.message
    assert "<title>Maintenance</title>" in error.message
    assert isinstance(error.__cause__, orjson.JSONDecodeError)


# --------------------------------------------------------------------------- error bodies


@pytest.mark.parametrize(
    ("response", "message", "retriable"),
    [
        (
            httpx.Response(
                404,
                json={
                    "error_code": "RESOURCE_DOES_NOT_EXIST",
                    "message": "Endpoint fraud-model does not exist",
                },
            ),
            "RESOURCE_DOES_NOT_EXIST: Endpoint fraud-model does not exist",
            False,
        ),
        (
            httpx.Response(400, json={"error_code": "BAD_REQUEST", "message": "bad column"}),
            "BAD_REQUEST: bad column",
            False,
        ),
        (
            httpx.Response(400, json={"error_code": 400, "message": "Invalid input"}),
            "400: Invalid input",
            False,
        ),
        (
            httpx.Response(
                429,
                json={"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Exceeded rate limit"},
            ),
            "REQUEST_LIMIT_EXCEEDED: Exceeded rate limit",
            True,
        ),
        (
            httpx.Response(
                401, json={"error": "invalid_token", "error_description": "Token expired"}
            ),
            "invalid_token: Token expired",
            False,
        ),
        (
            httpx.Response(500, json={"message": "internal failure"}),
            "internal failure",
            True,
        ),
        (
            httpx.Response(503, text="upstream connect error or disconnect/reset before headers"),
            "upstream connect error or disconnect/reset before headers",
            True,
        ),
        (httpx.Response(502, text="  Bad\n\n gateway \t here "), "Bad gateway here", True),
        (httpx.Response(504, content=b""), "Gateway Timeout", True),
        (httpx.Response(400, json=["not", "an", "object"]), "['not', 'an', 'object']", False),
    ],
    ids=[
        "databricks-404",
        "databricks-400",
        "int-error-code",
        "databricks-429",
        "rfc6749",
        "message-only",
        "plain-text-503",
        "whitespace-collapsed",
        "empty-body",
        "json-list",
    ],
)
async def test_error_bodies_become_endpoint_errors(
    router: respx.MockRouter,
    http: httpx.AsyncClient,
    response: httpx.Response,
    message: str,
    retriable: bool,
) -> None:
    router.post(URL).mock(return_value=response)

    error = await invoke_error(ServingClient(URL, http))

    assert error.status == response.status_code
    assert error.message == message
    assert error.retriable is retriable
    assert error.retry_after is None
    assert error.reason == f"HTTP {response.status_code}: {message}"


async def test_html_error_page_is_collapsed_and_truncated(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    page = (
        "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
        + "<p>filler</p>\n" * 100
        + "</body>\n</html>\n"
    )
    router.post(URL).respond(502, html=page)

    error = await invoke_error(ServingClient(URL, http))

    assert error.status == 502
    assert error.retriable is True
    assert "<title>502 Bad Gateway</title>" in error.message
    assert "\n" not in error.message
    assert 280 < len(error.message) <= 300  # cut between words, never inside one
    # The middle goes, the start and the end (where servers put the cause) stay.
    assert " ... " in error.message
    assert error.message.endswith("</body> </html>")


@pytest.mark.parametrize("status", sorted(DEFAULT_RETRY_STATUSES))
async def test_default_retry_statuses_are_retriable(
    router: respx.MockRouter, http: httpx.AsyncClient, status: int
) -> None:
    router.post(URL).respond(status, text="try later")

    assert (await invoke_error(ServingClient(URL, http))).retriable is True


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501])
async def test_other_statuses_are_not_retriable(
    router: respx.MockRouter, http: httpx.AsyncClient, status: int
) -> None:
    router.post(URL).respond(status, text="no")

    error = await invoke_error(ServingClient(URL, http))

    assert error.status == status
    assert error.retriable is False


async def test_retry_statuses_are_configurable(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    client = ServingClient(URL, http, retry_statuses=[409])
    router.post(URL).respond(409, text="conflict")
    assert (await invoke_error(client)).retriable is True

    router.post(URL).respond(503, text="down")
    assert (await invoke_error(client)).retriable is False


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, "7", 7.0),
        (503, "120", 120.0),
        (429, " 2 ", 2.0),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # long past: no wait
        (429, "soon", None),
    ],
)
async def test_retry_after_header_is_parsed(
    router: respx.MockRouter,
    http: httpx.AsyncClient,
    status: int,
    header: str,
    expected: float | None,
) -> None:
    router.post(URL).respond(status, text="slow down", headers={"Retry-After": header})

    error = await invoke_error(ServingClient(URL, http))

    assert error.retry_after == expected


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("Sat, 01 Mar 2025 12:00:45 GMT", 45.0),
        ("Sat, 01 Mar 2025 13:00:00 GMT", 3600.0),
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),
        ("Saturday, 01-Mar-25 12:00:10 GMT", 10.0),  # obsolete RFC 850 form
        ("Sat Mar  1 12:00:20 2025", 20.0),  # obsolete asctime form
        (None, None),
        ("", None),
        ("   ", None),
        ("in a while", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_date_defaults_to_the_wall_clock() -> None:
    in_an_hour = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    waited = parse_retry_after(format_datetime(in_an_hour, usegmt=True))

    assert waited is not None
    assert 3500.0 < waited <= 3600.0


# --------------------------------------------------------------------------- transport errors


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("read"), httpx.ConnectTimeout("connect"), httpx.PoolTimeout("pool")],
)
async def test_timeouts_are_retriable_without_status(
    router: respx.MockRouter, http: httpx.AsyncClient, exc: httpx.TimeoutException
) -> None:
    router.post(URL).mock(side_effect=exc)

    error = await invoke_error(ServingClient(URL, http))

    assert error.status is None
    assert error.retriable is True
    assert error.message == (
        f"timed out: {type(exc).__name__}: {exc} on {WHERE} before the response headers"
    )
    assert error.reason.startswith("transport: timed out")
    assert error.__cause__ is exc
    # Not reaching the host says nothing about the endpoint's load; a slow answer does.
    assert error.timeout is not isinstance(exc, httpx.ConnectTimeout)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ReadError("reset by peer"),
    ],
)
async def test_connection_failures_are_retriable_without_status(
    router: respx.MockRouter, http: httpx.AsyncClient, exc: httpx.TransportError
) -> None:
    router.post(URL).mock(side_effect=exc)

    error = await invoke_error(ServingClient(URL, http))

    assert error.status is None
    assert error.retriable is True
    assert error.timeout is False
    assert error.message == (
        f"connection failed: {type(exc).__name__}: {exc} on {WHERE} before the response headers"
    )


async def test_undecodable_body_is_an_endpoint_error(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    router.post(URL).respond(
        200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
    )

    error = await invoke_error(ServingClient(URL, http))

    # A body that cannot be decoded is a transport failure: worth another try.
    assert error.status is None
    assert error.retriable is True


# --------------------------------------------------------------------------- hostile answers
# (more, over real sockets, in tests/test_hostile_peers.py)


def limited(http: httpx.AsyncClient, max_response_bytes: int = 4096) -> ServingClient:
    return ServingClient(URL, http, max_response_bytes=max_response_bytes)


async def test_only_encodings_decoded_in_bounded_steps_are_offered(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = router.post(URL).respond(200, json={"predictions": []})

    await ServingClient(URL, http).invoke(BODY)

    assert route.calls.last.request.headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),
    ],
    ids=["gzip", "deflate-zlib", "deflate-raw"],
)
async def test_compressed_answers_are_decoded(
    router: respx.MockRouter, http: httpx.AsyncClient, encoding: str, compress: Any
) -> None:
    answer = orjson.dumps({"predictions": [0.25] * 500})
    router.post(URL).respond(
        200, headers={"Content-Encoding": encoding}, stream=httpx.ByteStream(compress(answer))
    )

    invocation = await limited(http).invoke(BODY)

    assert invocation.body == {"predictions": [0.25] * 500}


async def test_another_content_encoding_is_a_transport_failure(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    router.post(URL).respond(200, headers={"Content-Encoding": "br"}, content=b"\x0b\x02")

    error = await invoke_error(ServingClient(URL, http))

    assert error.status is None
    assert error.retriable is True
    assert error.message.startswith("response has Content-Encoding 'br', not offered")


async def test_an_answer_just_at_the_limit_is_read(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    answer = b'{"predictions": [' + b" " * (4096 - 20) + b"1]}"
    assert len(answer) == 4096
    router.post(URL).respond(
        200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(gzip.compress(answer))
    )

    assert (await limited(http).invoke(BODY)).body == {"predictions": [1]}


async def test_an_answer_nested_deeper_than_results_can_be_written_is_an_event_error(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    depth = MAX_WRITE_DEPTH - 1
    router.post(URL).respond(
        200, content=b'{"predictions": [' + b"[" * depth + b"]" * depth + b"]}"
    )

    error = await invoke_error(ServingClient(URL, http))

    assert isinstance(error, ResponseShapeError)
    assert error.message == (
        f"200 with a body nested deeper than {MAX_WRITE_DEPTH} levels, too deep to publish"
    )


async def test_big_integers_in_an_answer_are_kept_exactly(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    router.post(URL).respond(200, content=b'{"predictions": [123456789012345678901234567890]}')

    invocation = await ServingClient(URL, http).invoke(BODY)

    assert orjson.dumps(invocation.body) == b'{"predictions":[123456789012345678901234567890]}'


async def test_the_deadline_covers_the_whole_request(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    async def never_answer(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    router.post(URL).mock(side_effect=never_answer)

    error = await invoke_error(ServingClient(URL, http, timeout_s=0.05))

    assert error.status is None
    assert error.retriable is True
    assert error.timeout is True
    assert error.message == (
        f"timed out after 0.05 s (deadline for the whole request), {WHERE} "
        "before the response headers"
    )


# --------------------------------------------------------------------------- BearerAuth


class SequenceSource:
    """Issues ``token-1``, ``token-2``, ... that never expire."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self) -> Token:
        self.fetches += 1
        return Token(f"token-{self.fetches}", float("inf"))

    async def aclose(self) -> None:
        return None


async def test_bearer_token_is_sent(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = router.post(URL).respond(200, json={"predictions": []})
    source = SequenceSource()
    client = ServingClient(URL, http, auth=BearerAuth(TokenCache(source)))

    await client.invoke(BODY)
    await client.invoke(BODY)

    assert [c.request.headers["Authorization"] for c in route.calls] == ["Bearer token-1"] * 2
    assert source.fetches == 1


async def test_401_forces_one_refresh_and_one_retry(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer token-1":
            return httpx.Response(401, json={"error_code": "UNAUTHENTICATED", "message": "x"})
        return httpx.Response(200, json={"predictions": [1, 2]})

    route = router.post(URL).mock(side_effect=respond)
    source = SequenceSource()
    cache = TokenCache(source)
    client = ServingClient(URL, http, auth=BearerAuth(cache))

    invocation = await client.invoke(BODY)

    assert invocation.body == {"predictions": [1, 2]}
    assert source.fetches == 2
    assert cache.refreshes == 2
    assert route.call_count == 2
    first, second = (c.request for c in route.calls)
    assert first.headers["Authorization"] == "Bearer token-1"
    assert second.headers["Authorization"] == "Bearer token-2"
    assert second.content == BODY
    # The new token is kept for the next request.
    await client.invoke(BODY)
    assert route.calls.last.request.headers["Authorization"] == "Bearer token-2"
    assert source.fetches == 2


async def test_second_401_is_a_non_retriable_endpoint_error(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = router.post(URL).respond(
        401, json={"error_code": "PERMISSION_DENIED", "message": "not allowed"}
    )
    source = SequenceSource()
    client = ServingClient(URL, http, auth=BearerAuth(TokenCache(source)))

    error = await invoke_error(client)

    assert error.status == 401
    assert error.retriable is False
    assert error.message == "PERMISSION_DENIED: not allowed"
    assert route.call_count == 2
    assert source.fetches == 2


async def test_concurrent_401s_share_one_refresh(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    stale_requests = 0
    all_stale_sent = asyncio.Event()

    async def respond(request: httpx.Request) -> httpx.Response:
        nonlocal stale_requests
        if request.headers["Authorization"] == "Bearer token-1":
            # Hold every stale request until all five were sent with the same old token.
            stale_requests += 1
            if stale_requests == 5:
                all_stale_sent.set()
            await all_stale_sent.wait()
            return httpx.Response(401, text="expired")
        return httpx.Response(200, json={"predictions": []})

    route = router.post(URL).mock(side_effect=respond)
    source = SequenceSource()
    cache = TokenCache(source)
    assert await cache.get() == "token-1"
    client = ServingClient(URL, http, auth=BearerAuth(cache))

    results = await asyncio.gather(*(client.invoke(BODY) for _ in range(5)))

    assert all(r.body == {"predictions": []} for r in results)
    assert stale_requests == 5
    # Each 401 invalidated token-1 only; the first refresh's token-2 served all retries.
    assert source.fetches == 2
    assert route.call_count == 10


async def test_auth_error_becomes_an_endpoint_error(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = router.post(URL).respond(200, json={"predictions": []})

    class FailingSource:
        async def fetch(self) -> Token:
            raise AuthError("token endpoint unreachable", retriable=True)

        async def aclose(self) -> None:
            return None

    client = ServingClient(URL, http, auth=BearerAuth(TokenCache(FailingSource())))

    error = await invoke_error(client)

    assert error.status is None
    assert error.retriable is True
    assert "no token" in error.message
    assert isinstance(error.__cause__, AuthError)
    assert route.call_count == 0


async def test_unreadable_token_secret_becomes_an_endpoint_error(
    router: respx.MockRouter, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    router.post(URL).respond(200, json={"predictions": []})
    source = StaticTokenSource(Secret("file:missing.pat", base_dir=tmp_path))
    client = ServingClient(URL, http, auth=BearerAuth(TokenCache(source)))

    error = await invoke_error(client)

    assert error.status is None


def test_a_long_error_is_cut_without_showing_half_a_token() -> None:
    # The message keeps its first 75 and last 220 characters; tokens lie across both cuts.
    head_token, tail_token = "Zq7sEcRetV4lue9fQ2Kx", "Pm4wKeyP4rtTw0Rs8Lz"
    words = "w " * 33 + head_token + " " + "middle " * 80 + tail_token + " end" * 52
    assert words.index(head_token) < 75 < words.index(head_token) + len(head_token)
    tail_at = len(words) - 220
    assert words.index(tail_token) < tail_at < words.index(tail_token) + len(tail_token)
    message = error_message(httpx.Response(500, text=words))
    assert len(message) <= 300
    assert head_token[:4] not in message
    assert tail_token[-4:] not in message
    assert message.endswith("end")
