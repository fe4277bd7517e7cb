"""sd_notify against real AF_UNIX datagram sockets, a path one and an abstract one."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.systemd import Notifier, RouteCounts, status_loop, watchdog_loop


class Receiver:
    """The service manager's end: a bound datagram socket and its NOTIFY_SOCKET value."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def messages(self) -> list[str]:
        """Every datagram queued so far (a local datagram is queued by the time send returns)."""
        out: list[str] = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


def _receiver(address: str, notify_socket: str) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    try:
        yield Receiver(sock, notify_socket)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        yield from _receiver(path, path)
    else:
        name = f"pulsar-bridge-test-{uuid.uuid4().hex}"
        yield from _receiver("\0" + name, "@" + name)


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[Notifier]:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    yield notifier
    notifier.close()


def test_lifecycle_messages(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.ready(status="2 routes running")
    assert notifier.status("draining 3 batches")
    assert notifier.stopping()
    assert notifier.watchdog()
    assert receiver.messages() == [
        "READY=1",
        "READY=1\nSTATUS=2 routes running",
        "STATUS=draining 3 batches",
        "STOPPING=1",
        "WATCHDOG=1",
    ]


def test_reloading_carries_the_monotonic_clock(receiver: Receiver, notifier: Notifier) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = receiver.messages()
    first, second = message.split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_stays_one_assignment(receiver: Receiver, notifier: Notifier) -> None:
    notifier.status("line one\nLINE=two")
    assert receiver.messages() == ["STATUS=line one LINE=two"]


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unusable_addresses_disable_notification(value: str) -> None:
    assert not Notifier({"NOTIFY_SOCKET": value}).enabled


def test_send_failure_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with capture_logs() as logs:
        assert not notifier.ready()
    notifier.close()
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
    assert logs[0]["message"] == "READY=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/notify", **env}, pid=4242)
    assert notifier.watchdog_interval_s() == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval_s() == 1.0


class Stop(Exception):
    pass


async def test_watchdog_loop_pings_only_while_the_heartbeat_is_fresh(
    receiver: Receiver,
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket, "WATCHDOG_USEC": "30000000"})
    fresh = iter([True, False, False, True])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 4:
            raise Stop

    with capture_logs() as logs, pytest.raises(Stop):
        await watchdog_loop(notifier, lambda: next(fresh), sleep=sleep)
    notifier.close()
    assert slept == [15.0] * 4
    assert receiver.messages() == ["WATCHDOG=1", "WATCHDOG=1"]
    # One warning when the pings stop, not one per missed ping.
    assert [entry["event"] for entry in logs] == ["watchdog_withheld"]


@pytest.mark.parametrize(
    "env",
    [{"WATCHDOG_USEC": "30000000"}, {"NOTIFY_SOCKET": "/run/notify"}],
    ids=["no-notify-socket", "no-watchdog"],
)
async def test_watchdog_loop_returns_when_there_is_no_watchdog(env: dict[str, str]) -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError("the loop should not have started")

    await watchdog_loop(Notifier(env), lambda: True, sleep=sleep)


async def test_status_loop_reports_each_route_s_rates_since_the_last_report(
    receiver: Receiver,
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    counts: list[list[RouteCounts]] = [
        [("fraud", "running", 100, 90)],
        [("fraud", "running", 300, 290), ("spam", "paused", 7, 0)],
        [],
    ]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 4:
            raise Stop

    with pytest.raises(Stop):
        await status_loop(notifier, lambda: counts[len(slept) - 1], 10.0, sleep=sleep)
    notifier.close()
    assert receiver.messages() == [
        "STATUS=fraud running 0/s in 0/s out",  # the first report has no interval behind it
        "STATUS=fraud running 20/s in 20/s out; spam paused 0/s in 0/s out",
        "STATUS=no routes",
    ]


async def test_status_loop_returns_when_not_run_by_systemd() -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError("no reports without a service manager")

    await status_loop(Notifier({}), list, 10.0, sleep=sleep)
