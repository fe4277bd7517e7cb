"""ServingClient against misbehaving servers of our own on real loopback sockets.

Each server reads one request and then misbehaves: an answer far over the size limit, a
gzip bomb, a body dripped a byte at a time, NaN in the JSON, a connection reset with no
message, a huge error page. The tests check the error's class and reason, and that the
client stopped reading early; two run the client in a subprocess and check its peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from bridge.errors import EndpointError, ResponseShapeError
from bridge.serving import ERROR_BODY_LIMIT, ServingClient

ROOT = Path(__file__).resolve().parents[1]
PATH = "/serving-endpoints/model/invocations"
WHERE = f"POST {PATH}"
MIB = 1024 * 1024
CHUNK = b"0," * 32768  # 64 KiB of a JSON list's middle


class Peer:
    """One connection's writer and what the server managed to send on it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.sent = 0

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def send_chunked(self, data: bytes) -> None:
        await self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), which the client sees as an error."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Behaviour = Callable[[Peer], Awaitable[None]]


class HostileServer:
    """An HTTP/1.1 server on loopback that reads a request, then runs ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self.peers: list[Peer] = []
        self.hung_up = asyncio.Event()  # the client closed while the server was sending
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{PATH}"

    @property
    def sent(self) -> int:
        return sum(peer.sent for peer in self.peers)

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer)
        self.peers.append(peer)
        try:
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            await self._behaviour(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up.set()
        finally:
            writer.close()


def head(status: int, *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", *headers, "", ""]
    return "\r\n".join(lines).encode()


def gzip_of_zeros(size: int, level: int) -> bytes:
    packer = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"\0" * MIB
    return b"".join([*(packer.compress(block) for _ in range(size // MIB)), packer.flush()])


def endless_answer(total: int, status: int = 200) -> Behaviour:
    """A chunked answer of ``total`` bytes, sent as fast as the client takes it."""

    async def behave(peer: Peer) -> None:
        await peer.send(head(status, "Transfer-Encoding: chunked"))
        await peer.send_chunked(b"[")
        while peer.sent < total:
            await peer.send_chunked(CHUNK)
        await peer.send_chunked(b"0]")
        await peer.send(b"0\r\n\r\n")

    return behave


def answer(status: int, body: bytes, *headers: str) -> Behaviour:
    async def behave(peer: Peer) -> None:
        await peer.send(head(status, f"Content-Length: {len(body)}", *headers) + body)

    return behave


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """16 MiB of zeros in about 16 KB of gzip."""
    return gzip_of_zeros(16 * MIB, 9)


async def failure(
    server: HostileServer, http: httpx.AsyncClient, **options: float
) -> EndpointError:
    client = ServingClient(server.url, http, **options)  # type: ignore[arg-type]
    with pytest.raises(EndpointError) as info:
        await client.invoke(b'{"dataframe_records": [{"x": 1}]}')
    return info.value


# --------------------------------------------------------------------------- size


async def test_a_huge_answer_is_read_only_up_to_the_limit(http: httpx.AsyncClient) -> None:
    total = 64 * MIB
    async with HostileServer(endless_answer(total)) as server:
        error = await failure(server, http, max_response_bytes=MIB)
        await server.hung_up.wait()

    # An event-level problem: halves of the batch get smaller answers.
    assert isinstance(error, ResponseShapeError)
    assert re.fullmatch(
        r"response exceeds the limit of 1,048,576 bytes after decompression "
        r"\(endpoint\.max_response_bytes\); stopped reading after [\d,]+ bytes "
        r"of the 200 response's body",
        error.message,
    )
    assert server.sent < total


async def test_an_answer_announced_over_the_limit_is_not_read(http: httpx.AsyncClient) -> None:
    body = b"[" + CHUNK * 64 + b"0]"
    async with HostileServer(answer(200, body)) as server:
        error = await failure(server, http, max_response_bytes=MIB)

    assert isinstance(error, ResponseShapeError)
    assert error.message == (
        f"response of {len(body):,} bytes exceeds the limit of 1,048,576 bytes "
        "(endpoint.max_response_bytes); not read"
    )


async def test_a_gzip_bomb_is_inflated_only_up_to_the_limit(
    http: httpx.AsyncClient, bomb: bytes
) -> None:
    async with HostileServer(answer(200, bomb, "Content-Encoding: gzip")) as server:
        error = await failure(server, http, max_response_bytes=MIB)

    assert isinstance(error, ResponseShapeError)
    assert error.message.startswith(
        "response exceeds the limit of 1,048,576 bytes after decompression"
    )


async def test_a_huge_error_page_is_cut(http: httpx.AsyncClient) -> None:
    total = 64 * MIB
    async with HostileServer(endless_answer(total, status=503)) as server:
        error = await failure(server, http)
        await server.hung_up.wait()

    assert type(error) is EndpointError
    assert error.status == 503
    assert error.retriable is True
    assert error.message.startswith("[0,0,0,")
    assert error.message.endswith(f" (body cut at {ERROR_BODY_LIMIT:,} bytes)")
    assert server.sent < total


async def test_a_gzip_bomb_as_an_error_page_is_cut(http: httpx.AsyncClient, bomb: bytes) -> None:
    async with HostileServer(answer(500, bomb, "Content-Encoding: gzip")) as server:
        error = await failure(server, http)

    assert error.status == 500
    assert error.retriable is True
    # 64 KiB of the zeros read, no more. Escaped, they are one run with no separator, which
    # a snippet leaves out whole rather than cut (a cut run could be half a credential).
    note = f" (body cut at {ERROR_BODY_LIMIT:,} bytes)"
    assert error.message == " ... " + note


async def test_a_corrupt_gzip_body_is_a_transport_failure(http: httpx.AsyncClient) -> None:
    async with HostileServer(answer(200, b"not gzip", "Content-Encoding: gzip")) as server:
        error = await failure(server, http)

    assert error.status is None
    assert error.retriable is True
    assert error.message == (
        "response body cannot be decoded: zlib.error: Error -3 while decompressing data: "
        f"incorrect header check on {WHERE} after 8 bytes of the 200 response's body"
    )


# --------------------------------------------------------------------------- time


async def test_a_drip_fed_answer_ends_at_the_deadline(http: httpx.AsyncClient) -> None:
    length = 10_000

    async def drip(peer: Peer) -> None:
        await peer.send(head(200, f"Content-Length: {length}"))
        for _ in range(length):
            # Each byte comes well within the per-read timeout: only a deadline ends this.
            await peer.send(b" ")
            await asyncio.sleep(0.05)

    async with HostileServer(drip) as server:
        error = await failure(server, http, timeout_s=1.0)
        await server.hung_up.wait()

    assert error.status is None
    assert error.retriable is True
    assert error.timeout is True
    assert re.fullmatch(
        rf"timed out after 1 s \(deadline for the whole request\), {WHERE} "
        r"after [\d,]+ bytes of the 200 response's body",
        error.message,
    )


# --------------------------------------------------------------------------- content


async def test_an_answer_with_nan_is_an_event_error(http: httpx.AsyncClient) -> None:
    body = b'{"predictions": [0.1, NaN]}'
    async with HostileServer(answer(200, body, "Content-Type: application/json")) as server:
        error = await failure(server, http)

    # The same events get the same answer: bisect to find the one, don't retry the batch.
    assert isinstance(error, ResponseShapeError)
    assert error.retriable is False
    assert error.reason == (
        "HTTP 200: 200 with a body that is not JSON "
        '(unexpected character, expected a JSON value): {"predictions": [0.1, NaN]}'
    )


async def test_a_reset_before_the_answer_names_the_error_and_where(
    http: httpx.AsyncClient,
) -> None:
    async def reset(peer: Peer) -> None:
        peer.reset()

    async with HostileServer(reset) as server:
        error = await failure(server, http)

    assert error.retriable is True
    assert error.timeout is False
    assert error.reason == (
        f"transport: connection failed: ReadError: (no message) on {WHERE} "
        "before the response headers"
    )


async def test_a_reset_in_the_middle_of_the_body_names_the_error_and_where(
    http: httpx.AsyncClient,
) -> None:
    async def cut(peer: Peer) -> None:
        await peer.send(head(200, "Content-Length: 100") + b'{"predict')
        peer.reset()

    async with HostileServer(cut) as server:
        error = await failure(server, http)

    assert error.retriable is True
    # Whether the kernel hands over the 10 bytes before the reset is its choice.
    assert re.fullmatch(
        rf"connection failed: ReadError: \(no message\) on {WHERE} "
        r"(before the response headers|after \d+ bytes of the 200 response's body)",
        error.message,
    )


# --------------------------------------------------------------------------- memory

# Runs in a subprocess so its peak RSS (VmHWM) is the client's alone.
MEASURE = """
import asyncio, json, sys
import httpx
from bridge.errors import EndpointError
from bridge.serving import ServingClient

def peak_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

async def main(url):
    async with httpx.AsyncClient() as http:
        client = ServingClient(url, http)  # the default limit: 32 MiB
        before = peak_kb()
        try:
            await client.invoke(b"{}")
            outcome = "answered"
        except EndpointError as exc:
            outcome = f"{type(exc).__name__}: {exc.reason}"
        print(json.dumps({"before_kb": before, "peak_kb": peak_kb(), "outcome": outcome}))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("kind", ["200 MB answer", "gzip bomb of 300 MB"])
async def test_peak_memory_stays_bounded(kind: str) -> None:
    if kind == "200 MB answer":
        behaviour = endless_answer(200 * MIB)
    else:
        # Level 1: a second to build (300 MB at level 9 takes several); 1.4 MB on the wire.
        behaviour = answer(200, gzip_of_zeros(300 * MIB, 1), "Content-Encoding: gzip")
    async with HostileServer(behaviour) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MEASURE,
            server.url,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
    assert process.returncode == 0
    report = json.loads(out)

    grown_mb = (report["peak_kb"] - report["before_kb"]) / 1024
    assert report["outcome"].startswith(
        "ResponseShapeError: HTTP 200: response exceeds the limit of 33,554,432 bytes"
    )
    assert grown_mb < 100, f"peak RSS grew {grown_mb:.0f} MB reading a {kind}"
