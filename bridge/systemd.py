"""Tell systemd how the daemon is doing: sd_notify(3) over ``$NOTIFY_SOCKET``, no threads.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines on an AF_UNIX socket
whose address is in ``$NOTIFY_SOCKET`` (a path, or an abstract name written ``@name``).
It is written out here rather than taken from PyPI: ``sdnotify`` (last release 2017) has
no watchdog or reload helpers and sends on a blocking socket, and ``systemd-python``
compiles against libsystemd headers. Without ``$NOTIFY_SOCKET`` (not under systemd, or
not ``Type=notify``) every call is a no-op, and no call ever raises into the daemon.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

log = structlog.get_logger("bridge.systemd")


class Notifier:
    """Sends state changes to the service manager; a no-op when not run by one."""

    def __init__(self, env: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._pid = os.getpid() if pid is None else pid
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        return self.send("READY=1", *([] if status is None else [_status(status)]))

    def reloading(self) -> bool:
        """A reload has begun; send :meth:`ready` when it is done.

        MONOTONIC_USEC lets systemd >= 253 (``Type=notify-reload``) tell this reload
        from an earlier one; older managers ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has begun (draining)."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.send(_status(text))

    def watchdog(self) -> bool:
        """Keep-alive ping for ``WatchdogSec=``."""
        return self.send("WATCHDOG=1")

    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of ``$WATCHDOG_USEC``, or None when the watchdog is off.

        ``$WATCHDOG_PID`` names the process the watchdog is meant for; when it is another
        process (a child that inherited the environment), this one must not ping.
        """
        if self._watchdog_pid and self._watchdog_pid != str(self._pid):
            return None
        if not self._watchdog_usec.isdigit() or int(self._watchdog_usec) == 0:
            return None
        return int(self._watchdog_usec) / 2 / 1_000_000

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False (and a log line) if not sent."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must cost a lost notification, never a stalled loop.
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", message=assignments[0], error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    if value:
        # e.g. systemd >= 254's "vsock:" addresses, meant for VMs, not for this daemon.
        log.warning("sd_notify_unsupported", notify_socket=value)
    return None


def _status(text: str) -> str:
    # A newline would end the assignment and start a bogus one.
    return "STATUS=" + " ".join(text.splitlines())


async def watchdog_loop(
    notifier: Notifier,
    heartbeat_ok: Callable[[], bool],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Ping the watchdog every interval while ``heartbeat_ok()``; returns at once if it is off.

    A loop that is blocked outright sends nothing anyway; checking the heartbeat as well
    lets systemd also restart a daemon whose loop is starved or whose heartbeat task died.
    """
    interval = notifier.watchdog_interval_s()
    if not notifier.enabled or interval is None:
        return
    withheld = False
    while True:
        ok = heartbeat_ok()
        if ok:
            notifier.watchdog()
        elif not withheld:
            log.warning("watchdog_withheld", reason="event loop heartbeat is stale")
        withheld = not ok
        await sleep(interval)


# (route, state, events consumed, results published), as counted since start.
RouteCounts = tuple[str, str, int, int]


async def status_loop(
    notifier: Notifier,
    counts: Callable[[], Sequence[RouteCounts]],
    interval_s: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Per-route rates for ``systemctl status`` (``STATUS=``), when run by systemd."""
    if not notifier.enabled:
        return
    previous: dict[str, tuple[int, int]] = {}
    while True:
        await sleep(interval_s)
        parts = []
        for name, state, events_in, results_out in counts():
            before_in, before_out = previous.get(name, (events_in, results_out))
            rate_in = (events_in - before_in) / interval_s
            rate_out = (results_out - before_out) / interval_s
            previous[name] = (events_in, results_out)
            parts.append(f"{name} {state} {rate_in:.0f}/s in {rate_out:.0f}/s out")
        notifier.status("; ".join(parts) or "no routes")
