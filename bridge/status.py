"""``pulsar-bridge status``: what each route is doing, and its backlog, daemon up or down.

Two sources, read independently so that either can answer without the other:

- the daemon's ``/status`` on ``[observe] http_bind``, read twice ``interval`` apart to turn
  counters into rates: state, rates, in flight, dead-lettered, last error or pause;
- the broker's view of each route's subscription (:mod:`bridge.lag`): backlog, unacked,
  consumers. This is what matters most when the daemon is down, so it never depends on it.

When the daemon does not answer, the table says so on its first line and every route's
state reads ``daemon down``; the exit code is then 3 (LSB's "program is not running", as
``systemctl status`` uses it). The config is loaded without reading any secret, so status
works in an operator's shell that lacks the service's credentials. Prints a table for
people or JSON for scripts; ``--watch`` redraws in place until interrupted.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
import orjson

from bridge.addresses import parse_bind
from bridge.config import Config
from bridge.lag import Lag, read_lag

_CLEAR = "\x1b[H\x1b[2J"
# The exit code when the daemon does not answer (LSB init-script status codes).
DAEMON_DOWN = 3


@dataclass(frozen=True)
class RouteStatus:
    """One route's row; the daemon's fields are None when it did not answer."""

    name: str
    state: str
    rate_in: float | None
    rate_out: float | None
    in_flight: int | None
    dead_lettered: int | None
    last_error: str | None
    lag: Lag

    def as_json(self) -> dict[str, Any]:
        return {
            "route": self.name,
            "state": self.state,
            "events_in_per_s": None if self.rate_in is None else round(self.rate_in, 1),
            "results_out_per_s": None if self.rate_out is None else round(self.rate_out, 1),
            "in_flight": self.in_flight,
            "dead_lettered": self.dead_lettered,
            "last_error": self.last_error,
            "lag": self.lag.as_json(),
        }


@dataclass(frozen=True)
class Snapshot:
    """One refresh: every route's row, and why the daemon did not answer (None: it did)."""

    rows: list[RouteStatus]
    daemon_error: str | None
    daemon_url: str | None

    @property
    def daemon_up(self) -> bool:
        return self.daemon_error is None

    def as_json(self) -> list[dict[str, Any]]:
        # A list of rows (what scripts have read so far), each saying whether the daemon
        # answered.
        return [{**row.as_json(), "daemon_error": self.daemon_error} for row in self.rows]

    def render(self) -> str:
        table = render(self.rows)
        if self.daemon_up:
            return table
        if self.daemon_url is None:
            said = f"daemon: not asked ({self.daemon_error})"
        else:
            said = f"daemon: DOWN: {self.daemon_url} does not answer ({self.daemon_error})"
        return f"{said}; BACKLOG and UNACKED are the broker's\n{table}"


def daemon_url(config: Config) -> str:
    """Where the daemon's HTTP server listens; ValueError when ``status`` cannot know."""
    bind = config.bridge.observe.http_bind
    if bind is None:
        raise ValueError("[observe] http_bind is off, so the daemon has no /status to read")
    host, port = parse_bind(bind)
    if port == 0:
        raise ValueError("[observe] http_bind has port 0: status needs a fixed port")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


async def _daemon_status(http: httpx.AsyncClient, url: str) -> tuple[dict[str, Any] | None, str]:
    """The daemon's ``/status`` document, or None and why there is none."""
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}".rstrip(": ")
    if response.status_code != 200:
        return None, f"HTTP {response.status_code} (is another program on that port?)"
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("routes"), dict):
        return None, "the answer is not the daemon's status document"
    return body, ""


async def collect(config: Config, http: httpx.AsyncClient, interval_s: float) -> Snapshot:
    """One refresh: the daemon sampled twice for rates (when it answers), the broker once."""
    try:
        base: str | None = daemon_url(config)
    except ValueError as exc:
        base, error = None, str(exc)
    first = second = None
    if base is not None:
        first, error = await _daemon_status(http, f"{base}/status")
        if first is not None:
            await asyncio.sleep(interval_s)
            second, error = await _daemon_status(http, f"{base}/status")
    lags = await asyncio.gather(
        *(
            read_lag(http, config.bridge.pulsar, route.source.topics, route.source.subscription)
            for route in config.routes
        )
    )
    url = None if base is None else f"{base}/status"
    if first is None or second is None:
        state = "unknown" if url is None else "daemon down"
        rows = [
            RouteStatus(route.name, state, None, None, None, None, None, lag)
            for route, lag in zip(config.routes, lags, strict=True)
        ]
        return Snapshot(rows, error or "no answer", url)
    rows = [
        _row(route.name, first["routes"], second["routes"], lag, interval_s)
        for route, lag in zip(config.routes, lags, strict=True)
    ]
    return Snapshot(rows, None, url)


def _row(
    name: str, first: dict[str, Any], second: dict[str, Any], lag: Lag, interval_s: float
) -> RouteStatus:
    """A route's row from the daemon's two samples (a route it does not run: "not running")."""
    now = second.get(name)
    if not isinstance(now, dict):
        return RouteStatus(name, "not running", 0, 0, 0, 0, None, lag)
    before = first.get(name)
    before = before if isinstance(before, dict) else now
    seconds = interval_s if interval_s > 0 else 1.0
    paused = now.get("paused")
    last_error = now.get("last_error")
    if isinstance(paused, dict):
        # Why a paused route is paused is what an operator looks for first.
        last_error = f"paused ({paused.get('kind')}): {paused.get('reason')}"
    return RouteStatus(
        name,
        str(now.get("state")),
        (now.get("events_in", 0) - before.get("events_in", 0)) / seconds,
        (now.get("results_out", 0) - before.get("results_out", 0)) / seconds,
        int(now.get("in_flight", 0)),
        int(now.get("dead_lettered", 0)),
        last_error if isinstance(last_error, str) else None,
        lag,
    )


def _shown(value: float | int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def render(rows: list[RouteStatus]) -> str:
    header = (
        "ROUTE",
        "STATE",
        "IN/s",
        "OUT/s",
        "IN-FLIGHT",
        "DLQ",
        "BACKLOG",
        "UNACKED",
        "LAST ERROR",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.name,
                r.state,
                _shown(r.rate_in, "{:.0f}"),
                _shown(r.rate_out, "{:.0f}"),
                _shown(r.in_flight),
                _shown(r.dead_lettered),
                "?" if r.lag.backlog is None else str(r.lag.backlog),
                "?" if r.lag.unacked is None else str(r.lag.unacked),
                (r.last_error or r.lag.error or "")[:60],
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    )


async def show(
    config: Config,
    *,
    as_json: bool,
    watch: bool,
    interval_s: float,
    out: TextIO = sys.stdout,
    redact: Callable[[str], str] = str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Print the status (again every ``interval_s`` with ``watch``); 0, or 3 if the daemon
    did not answer. ``redact`` passes everything printed (errors may quote addresses)."""
    async with httpx.AsyncClient(timeout=5.0, transport=transport) as http:
        while True:
            snapshot = await collect(config, http, interval_s)
            if as_json:
                text = redact(orjson.dumps(snapshot.as_json()).decode())
            else:
                text = (_CLEAR if watch else "") + redact(snapshot.render())
            out.write(text + "\n")
            out.flush()
            if not watch:
                return 0 if snapshot.daemon_up else DAEMON_DOWN
            if not snapshot.daemon_up:
                # collect waited the interval between its samples only if the daemon answered.
                await asyncio.sleep(interval_s)
