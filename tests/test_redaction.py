"""No secret or token leaves the process: the Redactor, and every channel it guards.

The unit tests pin what :class:`~bridge.redaction.Redactor` hides and what it leaves alone.
The end-to-end tests fire each known leak against a hostile Databricks look-alike on a real
socket (an endpoint and a workspace API echoing the token in 401/403 bodies, a token
endpoint echoing Basic credentials, a token with a newline in it, ``env:<the secret>`` in
the config) and grep every output channel for the secrets: log lines (structlog's and
stdlib's), ``/status``, ``/readyz`` and ``/metrics`` from the real HealthServer, the
dead-letter properties, and the output of ``pulsar-bridge check`` and ``run``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog

from bridge.auth import BearerAuth, OAuthTokenSource, TokenCache
from bridge.errors import AuthError, EndpointError, SecretError
from bridge.events import dead_letter_message
from bridge.gate import Pause
from bridge.health import HealthServer
from bridge.health_probe import EndpointReadiness, EndpointStateProbe
from bridge.observe import Metrics, RouteMetrics, log_pipeline
from bridge.pulsar_source import Received
from bridge.redaction import REDACTED, Redactor, scrub, shorten
from bridge.secrets import Secret
from bridge.serving import ServingClient
from tests.support.harness import Topics, route_config, write_config

ROOT = Path(__file__).resolve().parents[1]

ECHO_ID, ECHO_SECRET = "sp-echo", "echo-secret-" + secrets.token_hex(8)
NEWLINE_ID, NEWLINE_SECRET = "sp-newline", "newline-secret-" + secrets.token_hex(8)
REFUSED_ID, REFUSED_SECRET = "sp-refused", "refused-secret-" + secrets.token_hex(8)
# What someone pastes after env: instead of a variable's name.
PASTED_SECRET = "dose" + secrets.token_hex(16)


# ------------------------------------------------------------------ the Redactor alone


def test_known_values_are_hidden_in_every_form_they_leave_in() -> None:
    redactor = Redactor()
    token = "tok " + secrets.token_hex(12) + "\n\x1b[31m/+"
    redactor.register_token(token)

    forms = [
        token,
        " ".join(token.split()),  # an error snippet folds whitespace
        repr(token.encode())[2:-1],  # an httpx error quotes the header as bytes
        json.dumps(token)[1:-1],  # a JSON body echoing it
        quote(token, safe=""),  # a URL or a form
    ]
    for form in forms:
        redacted = redactor.redact(f"refused {form} (401)")
        assert redacted == f"refused {REDACTED} (401)", form


def test_short_values_are_not_registered() -> None:
    redactor = Redactor()
    redactor.register("abc12")

    assert redactor.redact("abc12 abc123") == "abc12 abc123"
    assert redactor.rebuilds == 0


def test_the_pattern_is_rebuilt_only_when_a_value_is_new() -> None:
    redactor = Redactor(max_tokens=2)
    first, second, third = (f"token-{n}-" + secrets.token_hex(8) for n in range(3))
    redactor.register(ECHO_SECRET)
    redactor.register(ECHO_SECRET)  # read again at the next token fetch
    redactor.register_token(first)
    redactor.register_token(second)

    assert redactor.rebuilds == 3
    redactor.register_token(third)  # the oldest token (long expired in real life) goes
    assert redactor.redact(f"{first} {second} {third} {ECHO_SECRET}") == (
        f"{first} {REDACTED} {REDACTED} {REDACTED}"
    )


def test_a_result_remembered_before_a_value_was_known_is_not_served_after() -> None:
    redactor = Redactor()
    token = "opaque-" + secrets.token_hex(16)
    line = f"HTTP 401: token {token} expired"
    assert redactor.redact(line) == line  # unknown, and no credential shape

    redactor.register_token(token)

    assert redactor.redact(line) == f"HTTP 401: token {REDACTED} expired"


def test_client_id_pairs_are_hidden_but_the_id_is_not() -> None:
    redactor = Redactor()
    redactor.register_client_id(ECHO_ID)
    redactor.register(ECHO_SECRET)
    basic = base64.b64encode(f"{ECHO_ID}:{ECHO_SECRET}".encode()).decode()

    assert redactor.redact(f"client {ECHO_ID}:some-other-value refused") == (
        f"client {ECHO_ID}:{REDACTED} refused"
    )
    padding = "=" * basic.count("=")  # not part of the pair: left as it is
    assert redactor.redact(f"credentials {basic} refused") == (
        f"credentials {REDACTED}{padding} refused"
    )
    assert redactor.redact(f"client {ECHO_ID} refused") == f"client {ECHO_ID} refused"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123_456", f"Authorization: Bearer {REDACTED}"),
        ("authorization: bearer " + "x" * 40, f"authorization: bearer {REDACTED}"),
        ("Basic " + base64.b64encode(b"who:pw-123456").decode(), f"Basic {REDACTED}"),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzcCJ9.c2ln", f"jwt {REDACTED}"),
        ("pat dapi" + "0a1b" * 8 + "-2", f"pat {REDACTED}"),
        # A long token cut in two by a length limit: its exact value no longer matches.
        ("... Zx8Qw2Lm9Rt4Yp7Kd3Vb6Nc1Hs5Jf0Ga2Ue8Io", f"... {REDACTED}"),
        ("client_secret = env:sp-secret-value-7f3a", f"client_secret = env:{REDACTED}"),
        # An id of its own: the secret is drawn per process, and the suite's workers must
        # all collect the same test ids.
        pytest.param(
            "token = file:" + PASTED_SECRET, f"token = file:{REDACTED}", id="pasted-file-secret"
        ),
    ],
)
def test_credential_shapes_are_hidden_without_knowing_them(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        'WWW-Authenticate: Basic realm="emulator"',
        "basic validation failed: Model is missing inputs ['V1', 'V2']",
        "request 1c7f0e5e-0d2c-4a8e-9a4f-3b1c2d3e4f5a for FraudModelVersion2Production",
        "persistent://public/default/transactions-fraud-scores-v2 (endpoint fraud-model)",
        "env:DATABRICKS_CLIENT_SECRET file:${CREDENTIALS_DIRECTORY}/client-secret",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert scrub(text) == text


def test_control_characters_are_escaped() -> None:
    forged = 'ok\n{"level": "error", "event": "forged"}\r\x1b[2J\u2028'

    assert scrub(forged) == 'ok\\n{"level": "error", "event": "forged"}\\r\\x1b[2J\\u2028'
    assert scrub("line one\n\tline two\x07", multiline=True) == "line one\n\tline two\\x07"


SPLIT_SECRET = "Zq7sEcRetV4lue9fQ2Kx"  # no credential shape: only its known value hides it


def straddling(limit: int, token: str) -> str:
    """Words with ``token`` across position ``limit``, and more words after it."""
    lead = "w " * ((limit - len(token) // 2) // 2)
    return f"{lead}{token} " + "tail " * 100


@pytest.mark.parametrize("token", [SPLIT_SECRET, "dapi" + "0a1b" * 8])
def test_a_cut_never_splits_a_token_so_none_is_half_shown(token: str) -> None:
    text = straddling(60, token)
    assert 0 < text.index(token) < 60 < text.index(token) + len(token)
    clipped = shorten(text, 60)
    assert len(clipped) <= 60
    assert token[:4] not in clipped
    # The last characters kept: the cut falls before the token, not inside it.
    assert not clipped.endswith(token[:1])


def test_a_cut_before_the_tail_never_splits_a_token() -> None:
    text = "head " * 100 + f"{SPLIT_SECRET} the cause"
    clipped = shorten(text, 100, tail=20)
    assert "the cause" in clipped
    assert SPLIT_SECRET[-4:] not in clipped


def test_shapes_are_hidden_before_the_cut_and_short_text_is_kept() -> None:
    bearer = "Bearer " + "k" * 40
    assert shorten(f"refused {bearer} for sp", 300) == f"refused Bearer {REDACTED} for sp"
    assert shorten("Model is missing inputs ['V1']", 300) == "Model is missing inputs ['V1']"


# ------------------------------------------------------------------ secrets


def test_a_secret_pasted_after_env_is_never_printed() -> None:
    redactor = Redactor()
    secret = Secret(f"env:{PASTED_SECRET}", env={}, redactor=redactor)

    with pytest.raises(SecretError) as failure:
        secret.reveal()

    assert secret.source == f"env:{REDACTED}"
    assert PASTED_SECRET not in repr(secret)
    assert PASTED_SECRET not in str(failure.value)
    assert "not an environment variable name" in str(failure.value)
    assert redactor.redact(f"value {PASTED_SECRET}") == f"value {REDACTED}"


def test_a_variable_name_after_env_is_shown_as_it_is() -> None:
    secret = Secret("env:SP_SECRET", env={})

    with pytest.raises(SecretError, match="environment variable SP_SECRET is not set"):
        secret.reveal()
    assert secret.source == "env:SP_SECRET"


def test_reveal_registers_secrets_and_client_ids(tmp_path: Path) -> None:
    redactor = Redactor()
    (tmp_path / "secret").write_text(ECHO_SECRET + "\n")
    Secret("file:secret", base_dir=tmp_path, redactor=redactor).reveal()
    Secret(ECHO_ID, redactor=redactor, identifier=True).reveal()

    assert redactor.redact(f"{ECHO_ID}:{ECHO_SECRET} {ECHO_SECRET}") == (
        f"{ECHO_ID}:{REDACTED} {REDACTED}"
    )


# ------------------------------------------------------------------ a hostile peer


@dataclass
class HostilePeer:
    """A Databricks look-alike on loopback that echoes every credential it is sent.

    ``/oidc/v1/token`` issues opaque tokens (no credential shape: only their exact value
    can hide them), one with a newline for ``sp-newline``, and refuses ``sp-refused``
    quoting its Basic header and its ``id:secret``. ``echo-401`` and ``echo-403`` answer
    invocations and the workspace API with the bearer token in the message.
    """

    tokens: list[str] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        token = authorization.removeprefix("Bearer ")
        if method == "POST" and path == "/oidc/v1/token":
            encoded = authorization.removeprefix("Basic ")
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
            if client_id == REFUSED_ID:
                description = f"client {client_id}:{secret} refused ({authorization})"
                return 401, {"error": "invalid_client", "error_description": description}
            issued = "opaque-" + secrets.token_hex(20)
            if client_id == NEWLINE_ID:
                issued = "nl-" + secrets.token_hex(12) + '\n{"event": "forged"}'
            self.tokens.append(issued)
            return 200, {"access_token": issued, "token_type": "Bearer", "expires_in": 3600}
        if path == "/serving-endpoints/echo-401/invocations":
            return 401, {"error_code": 401, "message": f"token {token} is not valid"}
        if path in (
            "/serving-endpoints/echo-403/invocations",
            "/api/2.0/serving-endpoints/echo-403",
        ):
            return 403, {"error_code": "PERMISSION_DENIED", "message": f"{token} may not use it"}
        return 404, {"error_code": "NOT_FOUND", "message": path}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in head[1:] if line)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            status, body = self.answer(method, target, headers.get("authorization", ""))
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} Answer\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a client that gave up before sending (the newline token never leaves)
        finally:
            writer.close()


@pytest.fixture
async def peer() -> AsyncIterator[HostilePeer]:
    hostile = HostilePeer()
    server = await asyncio.start_server(hostile.serve, "127.0.0.1", 0)
    hostile.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield hostile


def token_cache(peer: HostilePeer, redactor: Redactor, client_id: str, secret: str) -> TokenCache:
    """How the daemon builds a workspace's token cache, with the redactor wired in."""
    source = OAuthTokenSource(
        f"{peer.url}/oidc/v1/token",
        grant_type="client_credentials",
        client_id=Secret(client_id, redactor=redactor, identifier=True),
        client_secret=Secret(secret, redactor=redactor),
    )
    return TokenCache(source, on_token=redactor.register_token)


@contextlib.contextmanager
def captured_logs(redactor: Redactor) -> Iterator[io.StringIO]:
    """The daemon's log pipeline for structlog and stdlib records, into a buffer, for the
    length of the block (structlog's global configuration is restored after)."""
    previous = structlog.get_config()
    shared, renderer = log_pipeline("json", redactor)
    out = io.StringIO()
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    library = logging.getLogger("tests.redaction.library")
    library.addHandler(handler)
    try:
        yield out
    finally:
        library.removeHandler(handler)
        structlog.configure(**previous)


@dataclass
class FakeRoute:
    name: str
    metrics: RouteMetrics
    state: str = "running"
    in_flight: int = 0
    subscribed: bool = True
    pause: Pause | None = None


@dataclass
class FakeDaemon:
    routes: list[FakeRoute]
    probe: EndpointStateProbe

    def broker_connected(self) -> bool:
        return True

    def failed_routes(self) -> dict[str, str]:
        return {}

    def loop_lag_s(self) -> float:
        return 0.0

    def uptime_s(self) -> float:
        return 1.0

    async def endpoint_states(self) -> dict[str, EndpointReadiness | None]:
        return {"echo-403": await self.probe.state()}


class FakeMessage:
    """The pulsar message a dead-lettered event came from."""

    def data(self) -> bytes:
        return b'{"id": 1}'

    def partition_key(self) -> str:
        return ""

    def topic_name(self) -> str:
        return "persistent://public/default/events"

    def message_id(self) -> str:
        return "(1,2,-1,0)"

    def properties(self) -> dict[str, str]:
        return {"origin": "test"}

    def redelivery_count(self) -> int:
        return 5


async def failure(client: ServingClient) -> EndpointError:
    with pytest.raises(EndpointError) as caught:
        await client.invoke(b'{"dataframe_records": [{"id": 1}]}')
    return caught.value


def leaked(secrets_: list[str], text: str) -> list[str]:
    """The secrets (or any line of a multi-line one) that appear in ``text``."""
    parts = {part for s in secrets_ for part in (s, *s.splitlines()) if len(part) >= 6}
    return sorted(part for part in parts if part in text)


async def test_tokens_echoed_by_peers_reach_no_output_channel(peer: HostilePeer) -> None:
    redactor = Redactor()
    metrics = Metrics()
    async with httpx.AsyncClient() as http:
        echo = token_cache(peer, redactor, ECHO_ID, ECHO_SECRET)
        newline = token_cache(peer, redactor, NEWLINE_ID, NEWLINE_SECRET)
        refused = token_cache(peer, redactor, REFUSED_ID, REFUSED_SECRET)
        with captured_logs(redactor) as logs:
            reasons = [
                (
                    await failure(
                        ServingClient(
                            f"{peer.url}/serving-endpoints/{name}/invocations",
                            http,
                            auth=BearerAuth(cache),
                        )
                    )
                ).reason
                for name, cache in (("echo-401", echo), ("echo-403", echo), ("x", newline))
            ]
            with pytest.raises(AuthError) as refusal:
                await refused.get()
            probe = EndpointStateProbe(
                http, peer.url, "echo-403", auth=BearerAuth(echo), redactor=redactor
            )
            routes = []
            for name, reason in zip(("echo-401", "echo-403", "newline"), reasons, strict=True):
                route = FakeRoute(name, RouteMetrics(metrics, name))
                route.metrics.last_error = reason  # what the batch processor records
                routes.append(route)
                # The lines the core writes with these reasons.
                structlog.get_logger("bridge.batch").info(
                    "batch", route=name, size=1, outcome="handed_back", reason=reason
                )
                logging.getLogger("tests.redaction.library").warning("request failed: %s", reason)
            structlog.get_logger("bridge").error("start_failed", error=str(refusal.value))
            # Label values come from the config, not from peers: this one proves the channel.
            metrics.token_refreshes.labels(f"workspace {peer.tokens[0]}").inc()
            dead_letters = [
                dead_letter_message(
                    Received(FakeMessage()),
                    route="echo",
                    reason=reason,
                    redactor=redactor,
                )
                for reason in reasons
            ]
            async with HealthServer(
                FakeDaemon(routes, probe), metrics.registry, "127.0.0.1:0", redactor=redactor
            ) as health:
                status = (await http.get(f"{health.url}/status")).text
                readyz = await http.get(f"{health.url}/readyz")
                exposition = (await http.get(f"{health.url}/metrics")).text
        log_text = logs.getvalue()

    basic = base64.b64encode(f"{REFUSED_ID}:{REFUSED_SECRET}".encode()).decode()
    every_secret = [*peer.tokens, ECHO_SECRET, NEWLINE_SECRET, REFUSED_SECRET, basic]
    # Each leak did fire: the peers' words quote the credentials before redaction.
    assert len(peer.tokens) == 3  # echo, echo again after the 401, newline
    assert peer.tokens[1] in reasons[0]
    assert peer.tokens[1] in reasons[1]
    assert repr(peer.tokens[2].encode())[2:-1] in reasons[2]
    assert REFUSED_SECRET in str(refusal.value)
    assert "(Basic " in str(refusal.value)  # its shape is scrubbed before the cut already
    assert readyz.status_code == 503
    assert "PERMISSION_DENIED" in readyz.text
    # ... and no channel carries them.
    channels = {
        "logs": log_text,
        "/status": status,
        "/readyz": readyz.text,
        "/metrics": exposition,
        "dead letters": json.dumps(dead_letters),
    }
    for channel, text in channels.items():
        assert leaked(every_secret, text) == [], channel
        assert REDACTED in text, channel
    assert all(line.startswith("{") for line in log_text.splitlines())  # none split
    assert all(
        d["error"] == redactor.redact(reason)
        for d, reason in zip(dead_letters, reasons, strict=True)
    )
    assert all(d["origin"] == "test" for d in dead_letters)  # the event's own properties kept
    assert json.loads(status)["routes"]["echo-403"]["last_error"].startswith("HTTP 403")


# ------------------------------------------------------------------ the command line


def bridge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", *args]


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *bridge_command(*args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


def config_dir(tmp_path: Path, host: str, databricks: dict[str, str]) -> Path:
    return write_config(
        tmp_path / "config",
        service_url="pulsar://127.0.0.1:1",  # never reached: these runs stop before it
        databricks={"host": host, **databricks},
        routes={"echo": route_config(Topics(), endpoint={"name": "echo-403"})},
    )


@pytest.mark.parametrize("command", ["check", "run"])
async def test_a_secret_pasted_after_env_stays_out_of_the_cli_output(
    command: str, tmp_path: Path
) -> None:
    directory = config_dir(
        tmp_path,
        "http://127.0.0.1:1",
        {"client_id": ECHO_ID, "client_secret": f"env:{PASTED_SECRET}"},
    )

    code, output = await run_cli(command, "-c", str(directory))

    assert code == 1
    assert f"databricks.client_secret: env:{REDACTED} is not an environment variable" in output
    assert PASTED_SECRET not in output


async def test_a_token_endpoint_echoing_basic_credentials_leaks_nothing_at_start(
    tmp_path: Path, peer: HostilePeer
) -> None:
    directory = config_dir(
        tmp_path, peer.url, {"client_id": REFUSED_ID, "client_secret": REFUSED_SECRET}
    )

    code, output = await run_cli("run", "-c", str(directory))

    assert code == 1
    lines = [json.loads(line) for line in output.splitlines()]
    (failed,) = [line for line in lines if line["event"] == "start_failed"]
    assert "invalid_client" in failed["error"]
    assert f"{REFUSED_ID}:{REDACTED}" in failed["error"]
    basic = base64.b64encode(f"{REFUSED_ID}:{REFUSED_SECRET}".encode()).decode()
    assert leaked([REFUSED_SECRET, basic], output) == []
