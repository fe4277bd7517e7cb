"""TokenCache with a fake source and clock; the requests OAuthTokenSource sends, over respx.

How each token endpoint answer is judged is tested over real sockets in
tests/test_token_states.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from bridge.auth import (
    OAuthTokenSource,
    StaticTokenSource,
    Token,
    TokenCache,
    token_answer_error,
)
from bridge.errors import AuthError, SecretError
from bridge.secrets import Secret
from tests.support.clock import FakeClock

TOKEN_URL = "https://adb-123.azuredatabricks.net/oidc/v1/token"
CLIENT_ID = "sp-client-id"
CLIENT_SECRET = "sp-client-secret-3b9e"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


class FakeSource:
    """Issues ``token-1``, ``token-2``, ... valid ``ttl`` seconds; can be held or made to fail."""

    def __init__(self, clock: FakeClock, ttl: float = 600.0) -> None:
        self.clock = clock
        self.ttl = ttl
        self.fetches = 0
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.errors: list[BaseException] = []
        self.closed = False

    async def fetch(self) -> Token:
        self.fetches += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return Token(f"token-{self.fetches}", self.clock() + self.ttl)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(clock: FakeClock) -> FakeSource:
    return FakeSource(clock)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def form_of(request: httpx.Request) -> dict[str, str]:
    parsed = parse_qs(request.content.decode("ascii"), strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values()), parsed
    return {k: v[0] for k, v in parsed.items()}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


# --------------------------------------------------------------------------- TokenCache


async def test_token_is_cached_until_expiry_minus_leeway(
    source: FakeSource, clock: FakeClock
) -> None:
    refreshed: list[None] = []
    cache = TokenCache(source, leeway_s=60, clock=clock, on_refresh=lambda: refreshed.append(None))

    assert await cache.get() == "token-1"  # expires at 1600, refreshed from 1540 on
    clock.now = 1539.5
    assert await cache.get() == "token-1"
    assert source.fetches == 1

    clock.now = 1540.0
    assert await cache.get() == "token-2"
    assert source.fetches == 2
    assert cache.refreshes == 2
    assert len(refreshed) == 2

    clock.advance(100)
    assert await cache.get() == "token-2"
    assert source.fetches == 2


async def test_zero_leeway_refreshes_exactly_at_expiry(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, leeway_s=0, clock=clock)
    assert await cache.get() == "token-1"

    clock.now = 1599.0
    assert await cache.get() == "token-1"
    clock.now = 1600.0
    assert await cache.get() == "token-2"


async def test_concurrent_gets_while_expired_share_one_fetch(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, leeway_s=60, clock=clock)
    assert await cache.get() == "token-1"
    clock.advance(10_000)
    source.gate = asyncio.Event()
    source.entered.clear()

    tasks = [asyncio.create_task(cache.get()) for _ in range(20)]
    await source.entered.wait()  # one task is inside fetch; the others queue on the lock
    assert source.fetches == 2
    source.gate.set()
    values = await asyncio.gather(*tasks)

    assert values == ["token-2"] * 20
    assert source.fetches == 2
    assert cache.refreshes == 2


async def test_invalidate_drops_only_the_matching_token(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, leeway_s=60, clock=clock)
    assert await cache.get() == "token-1"

    cache.invalidate("some-older-token")
    assert await cache.get() == "token-1"
    assert source.fetches == 1

    cache.invalidate("token-1")
    assert await cache.get() == "token-2"
    assert source.fetches == 2

    # A late 401 for the replaced token must not throw away its successor.
    cache.invalidate("token-1")
    assert await cache.get() == "token-2"
    assert source.fetches == 2


async def test_invalidate_on_an_empty_cache_is_harmless(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, clock=clock)

    cache.invalidate("token-1")

    assert await cache.get() == "token-1"


async def test_failed_fetch_propagates_and_a_get_after_the_pause_tries_again(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, clock=clock, retry_pause_s=1.0)
    source.errors.append(AuthError("idp down", retriable=True))

    with pytest.raises(AuthError, match="idp down"):
        await cache.get()
    assert cache.refreshes == 0

    clock.advance(1.0)
    assert await cache.get() == "token-2"
    assert cache.refreshes == 1


async def test_a_token_shorter_lived_than_the_leeway_is_used_for_three_quarters_of_its_life(
    source: FakeSource, clock: FakeClock
) -> None:
    source.ttl = 3.0
    cache = TokenCache(source, leeway_s=60, clock=clock)

    assert await cache.get() == "token-1"  # expires at 1003: refreshed from 1002.25 on
    clock.now = 1002.24
    assert await cache.get() == "token-1"
    clock.now = 1002.25
    assert await cache.get() == "token-2"
    assert source.fetches == 2


async def test_3s_tokens_are_fetched_every_23rd_of_832_requests_100ms_apart(
    source: FakeSource, clock: FakeClock
) -> None:
    # The finding: 3 s tokens and the default 60 s leeway made 834 token requests for
    # 832 invocations. Refreshing at 2.25 s, requests 100 ms apart share one per 2.3 s.
    source.ttl = 3.0
    cache = TokenCache(source, leeway_s=60, clock=clock)

    for _ in range(832):
        await cache.get()
        clock.advance(0.1)

    assert source.fetches == len(range(0, 832, 23)) == 37


async def test_a_failed_refresh_keeps_using_the_unexpired_token_and_pauses(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, leeway_s=60, clock=clock, retry_pause_s=1.0)
    assert await cache.get() == "token-1"  # expires at 1600, due from 1540
    clock.now = 1545.0
    source.errors.append(AuthError("idp overloaded", retriable=True))

    assert await cache.get() == "token-1"
    assert source.fetches == 2
    clock.advance(0.5)
    assert await cache.get() == "token-1"  # inside the pause: the IdP is not asked
    assert source.fetches == 2

    clock.advance(0.5)
    assert await cache.get() == "token-3"
    assert cache.refreshes == 2


async def test_a_failure_is_raised_again_until_its_retry_after_with_the_time_left(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, clock=clock, retry_pause_s=1.0)
    source.errors.append(AuthError("slow_down", retriable=True, retry_after=5.0))

    with pytest.raises(AuthError) as first:
        await cache.get()
    assert first.value.retry_after == 5.0
    clock.advance(2.0)
    with pytest.raises(AuthError, match="slow_down") as again:
        await cache.get()

    assert again.value.retriable is True
    assert again.value.retry_after == 3.0
    assert source.fetches == 1
    clock.advance(3.0)
    assert await cache.get() == "token-2"


async def test_a_refusal_is_raised_again_during_the_pause_as_a_refusal(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, clock=clock, retry_pause_s=1.0)
    source.errors.append(AuthError("invalid_client", retriable=False))

    with pytest.raises(AuthError):
        await cache.get()
    with pytest.raises(AuthError, match="invalid_client") as again:
        await cache.get()

    assert again.value.retriable is False
    assert source.fetches == 1


async def test_callers_waiting_on_a_failing_refresh_share_its_failure(
    source: FakeSource, clock: FakeClock
) -> None:
    cache = TokenCache(source, clock=clock)
    source.gate = asyncio.Event()
    source.errors.append(AuthError("idp down", retriable=True))

    tasks = [asyncio.create_task(cache.get()) for _ in range(20)]
    await source.entered.wait()
    source.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(o, AuthError) and o.retriable for o in outcomes)
    assert source.fetches == 1  # not 20 attempts one after the other


async def test_callers_waiting_share_a_token_that_is_due_on_arrival(
    source: FakeSource, clock: FakeClock
) -> None:
    source.ttl = 0.0  # expires_in: 0
    cache = TokenCache(source, clock=clock)
    source.gate = asyncio.Event()

    tasks = [asyncio.create_task(cache.get()) for _ in range(5)]
    await source.entered.wait()
    source.gate.set()

    assert await asyncio.gather(*tasks) == ["token-1"] * 5
    assert source.fetches == 1


async def test_aclose_closes_the_source(source: FakeSource, clock: FakeClock) -> None:
    cache = TokenCache(source, clock=clock)

    await cache.aclose()

    assert source.closed


def test_token_repr_hides_the_value() -> None:
    token = Token("eyJ-secret-jwt", 123.0)

    assert "eyJ-secret-jwt" not in repr(token)
    assert "123.0" in repr(token)


# --------------------------------------------------------------------------- StaticTokenSource


async def test_static_token_never_expires_and_is_re_read(tmp_path: Path) -> None:
    path = tmp_path / "pat"
    path.write_text("dapi-first\n", encoding="utf-8")
    source = StaticTokenSource(Secret("file:pat", base_dir=tmp_path))

    first = await source.fetch()
    assert first.value == "dapi-first"
    assert first.expires_at == float("inf")

    path.write_text("dapi-second\n", encoding="utf-8")
    assert (await source.fetch()).value == "dapi-second"
    await source.aclose()


# --------------------------------------------------------------------------- OAuthTokenSource


def client_credentials(clock: FakeClock, secret: Secret | None = None) -> OAuthTokenSource:
    return OAuthTokenSource(
        TOKEN_URL,
        grant_type="client_credentials",
        client_id=Secret(CLIENT_ID),
        client_secret=secret or Secret(CLIENT_SECRET),
        clock=clock,
    )


async def test_client_credentials_grant(router: respx.MockRouter, clock: FakeClock) -> None:
    route = router.post(TOKEN_URL).respond(
        200, json={"access_token": "at-1", "token_type": "Bearer", "expires_in": 1800}
    )
    source = client_credentials(clock)
    try:
        token = await source.fetch()
    finally:
        await source.aclose()

    assert token.value == "at-1"
    assert token.expires_at == 1000.0 + 1800
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert request.headers["Authorization"] == basic(CLIENT_ID, CLIENT_SECRET)
    form = form_of(request)
    assert form == {"grant_type": "client_credentials", "scope": "all-apis"}
    assert CLIENT_SECRET not in request.content.decode()


async def test_missing_expires_in_defaults_to_an_hour(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    router.post(TOKEN_URL).respond(200, json={"access_token": "at-1", "token_type": "Bearer"})
    source = client_credentials(clock)
    try:
        token = await source.fetch()
    finally:
        await source.aclose()

    assert token.expires_at == 1000.0 + 3600


async def test_expires_in_as_a_string_is_understood(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    router.post(TOKEN_URL).respond(200, json={"access_token": "at-1", "expires_in": "1800"})
    source = client_credentials(clock)
    try:
        token = await source.fetch()
    finally:
        await source.aclose()

    assert token.expires_at == 1000.0 + 1800


async def test_each_fetch_asks_again(router: respx.MockRouter, clock: FakeClock) -> None:
    route = router.post(TOKEN_URL)
    route.side_effect = [
        httpx.Response(200, json={"access_token": "at-1", "expires_in": 60}),
        httpx.Response(200, json={"access_token": "at-2", "expires_in": 60}),
    ]
    source = client_credentials(clock)
    try:
        assert (await source.fetch()).value == "at-1"
        clock.advance(30)
        second = await source.fetch()
    finally:
        await source.aclose()

    assert second.value == "at-2"
    assert second.expires_at == 1030.0 + 60
    assert route.call_count == 2


async def test_token_exchange_sends_the_form_fields_without_basic_auth(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.post(TOKEN_URL).respond(200, json={"access_token": "at-x", "expires_in": 300})
    subjects = iter(["idp-jwt-1", "idp-jwt-2"])

    def form() -> dict[str, str]:
        return {"subject_token": next(subjects), "subject_token_type": JWT_TYPE}

    source = OAuthTokenSource(
        TOKEN_URL,
        grant_type=TOKEN_EXCHANGE,
        client_id=Secret(CLIENT_ID),
        client_secret=None,
        form=form,
        clock=clock,
    )
    try:
        token = await source.fetch()
        await source.fetch()
    finally:
        await source.aclose()

    assert token.value == "at-x"
    assert token.expires_at == 1300.0
    first, second = (call.request for call in route.calls)
    assert "Authorization" not in first.headers
    assert form_of(first) == {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": "idp-jwt-1",
        "subject_token_type": JWT_TYPE,
        "scope": "all-apis",
        "client_id": CLIENT_ID,
    }
    # The form is built again at each fetch, so a rotated IdP token is sent.
    assert form_of(second)["subject_token"] == "idp-jwt-2"


async def test_token_exchange_without_client_id_sends_no_client_id(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.post(TOKEN_URL).respond(200, json={"access_token": "at-x", "expires_in": 300})
    source = OAuthTokenSource(
        TOKEN_URL,
        grant_type=TOKEN_EXCHANGE,
        client_id=None,
        client_secret=None,
        form=lambda: {"subject_token": "idp-jwt", "subject_token_type": JWT_TYPE},
        clock=clock,
    )
    try:
        await source.fetch()
    finally:
        await source.aclose()

    assert "client_id" not in form_of(route.calls.last.request)


async def test_rotated_client_secret_file_is_used_by_the_next_fetch(
    router: respx.MockRouter, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "client.secret"
    path.write_text("secret-v1", encoding="utf-8")
    path.chmod(0o600)
    route = router.post(TOKEN_URL).respond(200, json={"access_token": "at", "expires_in": 60})
    source = client_credentials(clock, Secret("file:client.secret", base_dir=tmp_path))
    try:
        await source.fetch()
        path.write_text("secret-v2", encoding="utf-8")
        await source.fetch()
    finally:
        await source.aclose()

    first, second = (call.request for call in route.calls)
    assert first.headers["Authorization"] == basic(CLIENT_ID, "secret-v1")
    assert second.headers["Authorization"] == basic(CLIENT_ID, "secret-v2")


async def test_unreadable_subject_token_is_an_auth_error(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    router.post(TOKEN_URL).respond(200, json={"access_token": "at", "expires_in": 60})

    def form() -> dict[str, str]:
        raise SecretError("cannot read secret file /var/run/secrets/tokens/databricks")

    source = OAuthTokenSource(
        TOKEN_URL,
        grant_type=TOKEN_EXCHANGE,
        client_id=Secret(CLIENT_ID),
        client_secret=None,
        form=form,
        clock=clock,
    )
    try:
        with pytest.raises(AuthError):
            await source.fetch()
    finally:
        await source.aclose()


def test_a_long_refusal_is_cut_without_showing_half_a_token() -> None:
    # The description is cut at 200 characters; an echoed secret lies across the cut.
    secret = "Zq7sEcRetV4lue9fQ2Kx"
    description = "bad " * 44 + f"client secret {secret} for this client " + "x " * 50
    assert description.index(secret) < 200 < description.index(secret) + len(secret)
    error = token_answer_error(
        httpx.Response(401, json={"error": "invalid_client", "error_description": description})
    )
    assert error is not None
    assert "token endpoint refused: HTTP 401 invalid_client: bad bad" in str(error)
    assert secret[:4] not in str(error)
