"""Token endpoint answers over real loopback sockets: how each is judged, and how long a
token fetch may take.

The odd answers (429 with Retry-After, an RFC 6749 error on a 400, an HTML 502, a body
dripping forever, a server that never answers) come from :class:`ScriptedServer`, a few
lines of HTTP/1.1 on ``asyncio.start_server``; the Databricks emulator answers the ordinary
ones. Both run in the test's own loop or thread, so what authlib and databricks-sdk really
do with each answer is what is tested, not a mock of it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bridge.auth import BearerAuth, OAuthTokenSource, TokenCache
from bridge.emulator import EmulatorServer, EmulatorState
from bridge.errors import AuthError, EndpointError
from bridge.sdk_auth import DatabricksSdkTokenSource
from bridge.secrets import Secret
from bridge.serving import ServingClient
from tests.support.clock import FakeClock

CLIENT_ID = "bridge-sp"
CLIENT_SECRET = "sp-secret-5d1c"
TOKEN_PATH = "/oidc/v1/token"
INVOKE_PATH = "/serving-endpoints/fraud-model/invocations"


@dataclass(frozen=True)
class Answer:
    """One scripted response; ``drip`` sends the body a byte at a time and never ends it,
    ``hang`` never answers at all."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    drip: bool = False
    hang: bool = False


def json_answer(status: int, body: object, **headers: str) -> Answer:
    return Answer(
        status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )


TOKEN = json_answer(200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600})


class ScriptedServer:
    """Answers ``POST``/``GET`` on loopback from ``routes`` (path -> an answer, or a function
    giving the next one); ``requests`` lists the paths asked, ``gave_up`` counts dripped or
    hung answers whose client went away."""

    def __init__(self, routes: Mapping[str, Answer | Callable[[], Answer]]) -> None:
        self.routes = dict(routes)
        self.requests: list[str] = []
        self.asked: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.gave_up = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            path = lines[0].split(" ")[1].split("?")[0]
            length = next(
                (
                    int(v)
                    for k, _, v in (x.partition(":") for x in lines)
                    if k.lower() == "content-length"
                ),
                0,
            )
            await reader.readexactly(length)
            self.requests.append(path)
            self.asked[path].set()
            route = self.routes.get(path, Answer(404, b"no such path"))
            await self._answer(writer, route() if callable(route) else route)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gave_up += 1
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        if answer.hang:
            await self._release.wait()
            raise ConnectionResetError("released at teardown")
        length = 10**9 if answer.drip else len(answer.body)
        head = f"HTTP/1.1 {answer.status} Scripted\r\nContent-Length: {length}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
        writer.write(f"{head}Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        if not answer.drip:
            writer.write(answer.body)
            await writer.drain()
            return
        while not self._release.is_set():
            # Every read gets a byte well within any per-read timeout; only a bound on
            # the whole answer ends this.
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)
        raise ConnectionResetError("released at teardown")


def oauth_source(url: str, timeout_s: float = 30.0) -> OAuthTokenSource:
    return OAuthTokenSource(
        f"{url}{TOKEN_PATH}",
        grant_type="client_credentials",
        client_id=Secret(CLIENT_ID),
        client_secret=Secret(CLIENT_SECRET),
        timeout_s=timeout_s,
    )


async def fetch_error(answer: Answer) -> AuthError:
    async with ScriptedServer({TOKEN_PATH: answer}) as server:
        source = oauth_source(server.url)
        try:
            with pytest.raises(AuthError) as info:
                await source.fetch()
        finally:
            await source.aclose()
    assert server.requests == [TOKEN_PATH]
    return info.value


# --------------------------------------------------------------------------- the table

HTML = {"Content-Type": "text/html"}
OVERLOADED = [
    pytest.param(json_answer(400, {"error": "slow_down"}), id="400-slow_down"),
    pytest.param(json_answer(400, {"error": "temporarily_unavailable"}), id="400-temp-unavailable"),
    pytest.param(json_answer(503, {"error": "temporarily_unavailable"}), id="503-rfc6749"),
    pytest.param(json_answer(200, {"error": "server_error"}), id="200-server_error"),
    pytest.param(json_answer(429, {"error": "rate_limited"}), id="429-json"),
    pytest.param(Answer(429, b"Too many requests"), id="429-text"),
    pytest.param(json_answer(500, {"error": "invalid_client"}), id="500-any-code"),
    pytest.param(Answer(502, b"<html><body>Bad Gateway</body></html>", HTML), id="502-html"),
    pytest.param(Answer(504, b""), id="504-empty"),
    pytest.param(Answer(408, b"request timeout"), id="408"),
    pytest.param(Answer(200, b"<html>sign in</html>", HTML), id="200-html"),
    pytest.param(json_answer(200, ["at-1"]), id="200-json-list"),
    pytest.param(json_answer(200, {"token_type": "Bearer"}), id="200-no-access_token"),
]
REFUSED = [
    pytest.param(json_answer(401, {"error": "invalid_client"}), "invalid_client", id="401-client"),
    pytest.param(json_answer(400, {"error": "invalid_client"}), "invalid_client", id="400-client"),
    pytest.param(
        json_answer(400, {"error": "unauthorized_client"}), "unauthorized_client", id="unauth"
    ),
    pytest.param(json_answer(400, {"error": "invalid_grant"}), "invalid_grant", id="grant"),
    pytest.param(json_answer(403, {"error": "access_denied"}), "access_denied", id="denied"),
    pytest.param(json_answer(400, {"error": "invalid_scope"}), "invalid_scope", id="scope"),
    pytest.param(json_answer(400, {"error": "invalid_request"}), "invalid_request", id="other"),
    pytest.param(Answer(401, b"<html>login</html>", HTML), "HTTP 401", id="401-html"),
    pytest.param(Answer(403, b"Forbidden"), "HTTP 403", id="403-text"),
    pytest.param(Answer(404, b"Not Found"), "HTTP 404", id="404-wrong-host"),
    pytest.param(Answer(302, b"", {"Location": "https://login.example/"}), "HTTP 302", id="302"),
]


@pytest.mark.parametrize("answer", OVERLOADED)
async def test_an_overloaded_or_unusable_answer_is_retriable(answer: Answer) -> None:
    error = await fetch_error(answer)

    assert error.retriable is True
    assert error.retry_after is None
    assert CLIENT_SECRET not in str(error)


@pytest.mark.parametrize(("answer", "named"), REFUSED)
async def test_a_refusal_is_not_retriable(answer: Answer, named: str) -> None:
    error = await fetch_error(answer)

    assert error.retriable is False
    assert "refused" in str(error)
    assert named in str(error)


async def test_the_description_of_a_refusal_is_kept() -> None:
    answer = json_answer(
        401, {"error": "invalid_client", "error_description": "Client authentication failed"}
    )

    error = await fetch_error(answer)

    assert str(error) == (
        "token endpoint refused: HTTP 401 invalid_client: Client authentication failed"
    )


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(json_answer(429, {"error": "slow_down"}, **{"Retry-After": "7"}), id="429"),
        pytest.param(Answer(503, b"maintenance", {"Retry-After": "7"}), id="503-text"),
        pytest.param(json_answer(400, {"error": "slow_down"}, **{"Retry-After": "7"}), id="400"),
    ],
)
async def test_retry_after_of_the_token_endpoint_is_kept(answer: Answer) -> None:
    error = await fetch_error(answer)

    assert error.retriable is True
    assert error.retry_after == 7.0


async def test_a_refused_connection_is_retriable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
        source = oauth_source(f"http://127.0.0.1:{closed.getsockname()[1]}")
        try:
            with pytest.raises(AuthError, match="unreachable") as info:
                await source.fetch()
        finally:
            await source.aclose()

    assert info.value.retriable is True
    assert isinstance(info.value.__cause__, httpx.ConnectError)


# --------------------------------------------------------------------------- time bounds


@pytest.mark.parametrize("answer", [Answer(drip=True), Answer(hang=True)], ids=["drip", "hang"])
async def test_a_token_fetch_is_bounded_by_its_timeout(answer: Answer) -> None:
    async with ScriptedServer({TOKEN_PATH: answer}) as server:
        source = oauth_source(server.url, timeout_s=0.5)
        try:
            with pytest.raises(AuthError, match=r"timed out: no token within 0\.5 s") as info:
                await source.fetch()
        finally:
            await source.aclose()

    assert info.value.retriable is True


# --------------------------------------------------------------------------- BearerAuth


async def test_a_retriable_failure_of_the_refresh_after_a_401_surfaces_as_retriable() -> None:
    answers = iter([TOKEN, Answer(503, b"busy", {"Retry-After": "4"})])
    async with (
        ScriptedServer({TOKEN_PATH: lambda: next(answers)}) as idp,
        ScriptedServer({INVOKE_PATH: json_answer(401, {"error_code": "UNAUTHENTICATED"})}) as api,
        httpx.AsyncClient() as http,
    ):
        cache = TokenCache(oauth_source(idp.url))
        client = ServingClient(f"{api.url}{INVOKE_PATH}", http, auth=BearerAuth(cache))
        try:
            with pytest.raises(EndpointError) as info:
                await client.invoke(b'{"inputs": [1]}')
        finally:
            await cache.aclose()

    assert info.value.retriable is True
    assert info.value.retry_after == 4.0
    assert isinstance(info.value.__cause__, AuthError)
    assert "token endpoint unavailable: HTTP 503" in str(info.value)
    assert idp.requests == [TOKEN_PATH, TOKEN_PATH]
    assert api.requests == [INVOKE_PATH]


# --------------------------------------------------------------------------- the emulator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def short_lived(clock: FakeClock) -> Iterator[EmulatorServer]:
    """The emulator issuing 3 s tokens, on the test's clock."""
    state = EmulatorState(clients={CLIENT_ID: CLIENT_SECRET}, token_ttl_s=3, clock=clock)
    with EmulatorServer(state) as server:
        yield server


async def test_3s_tokens_from_the_emulator_are_fetched_once_per_23_requests(
    short_lived: EmulatorServer, clock: FakeClock
) -> None:
    source = OAuthTokenSource(
        f"{short_lived.url}{TOKEN_PATH}",
        grant_type="client_credentials",
        client_id=Secret(CLIENT_ID),
        client_secret=Secret(CLIENT_SECRET),
        clock=clock,
    )
    cache = TokenCache(source, leeway_s=60, clock=clock)
    async with httpx.AsyncClient(base_url=short_lived.url, auth=BearerAuth(cache)) as http:
        try:
            for _ in range(230):
                response = await http.post(INVOKE_PATH, json={"dataframe_records": [{"a": 1}]})
                assert response.status_code == 200
                clock.advance(0.1)
        finally:
            await cache.aclose()

    counters = short_lived.state.counters
    assert counters.tokens_issued == 10  # was 230: one per request
    assert counters.requests_by_status[401] == 0


async def test_a_wrong_client_secret_at_the_emulator_is_a_refusal(
    short_lived: EmulatorServer,
) -> None:
    source = OAuthTokenSource(
        f"{short_lived.url}{TOKEN_PATH}",
        grant_type="client_credentials",
        client_id=Secret(CLIENT_ID),
        client_secret=Secret("not-the-secret"),
    )
    try:
        with pytest.raises(AuthError, match="invalid_client") as info:
            await source.fetch()
    finally:
        await source.aclose()

    assert info.value.retriable is False


# --------------------------------------------------------------------------- databricks-sdk


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], None]:
    """Only what a test passes reaches databricks-sdk: no environment, no ~/.databrickscfg."""
    for name in ["DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "missing.cfg"))
    monkeypatch.setenv("DATABRICKS_AUTH_TYPE", "oauth-m2m")
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)

    def use_secret(secret: str) -> None:
        monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", secret)

    use_secret(CLIENT_SECRET)
    return use_secret


@pytest.fixture
async def hung_idp() -> AsyncIterator[ScriptedServer]:
    """A workspace whose discovery answers and whose token endpoint never does."""
    server = ScriptedServer({TOKEN_PATH: Answer(hang=True)})
    async with server:
        server.routes["/.well-known/databricks-config"] = json_answer(
            200, {"oidc_endpoint": f"{server.url}/oidc", "workspace_id": "1"}
        )
        server.routes["/oidc/.well-known/oauth-authorization-server"] = json_answer(
            200,
            {
                "authorization_endpoint": f"{server.url}/oidc/v1/authorize",
                "token_endpoint": f"{server.url}{TOKEN_PATH}",
            },
        )
        yield server


async def test_sdk_token_fetch_is_bounded_and_a_lingering_call_is_joined(
    sdk_env: Callable[[str], None], hung_idp: ScriptedServer
) -> None:
    source = DatabricksSdkTokenSource(host=hung_idp.url, profile=None, timeout_s=0.5)

    with pytest.raises(AuthError, match=r"timed out: no token within 0\.5 s") as info:
        await source.fetch()
    assert info.value.retriable is True
    await hung_idp.asked[TOKEN_PATH].wait()  # the abandoned call goes on to the token POST
    with pytest.raises(AuthError, match=r"timed out: no token within 0\.5 s") as again:
        await source.fetch()

    assert again.value.retriable is True
    # The second fetch waited for the first call instead of starting another.
    assert hung_idp.requests.count(TOKEN_PATH) == 1
    assert [t.name for t in threading.enumerate()].count("databricks-sdk-auth") == 1


async def test_sdk_unreachable_host_fails_retriably_within_the_timeout(
    sdk_env: Callable[[str], None],
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        source = DatabricksSdkTokenSource(
            host=f"http://127.0.0.1:{closed.getsockname()[1]}", profile=None, timeout_s=1.0
        )
        # Unbounded, the SDK retried discovery for its 300 s budget.
        with pytest.raises(AuthError) as info:
            await source.fetch()

    assert info.value.retriable is True


async def test_sdk_invalid_client_is_a_refusal(
    sdk_env: Callable[[str], None], short_lived: EmulatorServer
) -> None:
    sdk_env("not-the-secret")
    source = DatabricksSdkTokenSource(host=short_lived.url, profile=None)

    with pytest.raises(AuthError, match="invalid_client") as info:
        await source.fetch()

    assert info.value.retriable is False
