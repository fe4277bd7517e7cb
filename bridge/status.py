"""``pulsar-bridge status``: what each route of a running daemon is doing, and its lag.

Reads the daemon's ``/status`` twice, ``interval`` apart, to turn counters into rates, and
the broker's view of each subscription's lag (:mod:`bridge.lag`). Prints a table for people
or JSON for scripts; ``--watch`` redraws in place until interrupted.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
import orjson

from bridge.config import Config
from bridge.errors import BridgeError
from bridge.health import parse_bind
from bridge.lag import Lag, read_lag

_CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class RouteStatus:
    name: str
    state: str
    rate_in: float
    rate_out: float
    in_flight: int
    dead_lettered: int
    last_error: str | None
    lag: Lag

    def as_json(self) -> dict[str, Any]:
        return {
            "route": self.name,
            "state": self.state,
            "events_in_per_s": round(self.rate_in, 1),
            "results_out_per_s": round(self.rate_out, 1),
            "in_flight": self.in_flight,
            "dead_lettered": self.dead_lettered,
            "last_error": self.last_error,
            "lag": self.lag.as_json(),
        }


def daemon_url(config: Config) -> str:
    bind = config.bridge.observe.http_bind
    if bind is None:
        raise BridgeError("[observe] http_bind is off; status reads the daemon's /status there")
    host, port = parse_bind(bind)
    if port == 0:
        raise BridgeError("[observe] http_bind has port 0; status needs a fixed port")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


async def collect(config: Config, http: httpx.AsyncClient, interval_s: float) -> list[RouteStatus]:
    url = f"{daemon_url(config)}/status"
    try:
        first = (await http.get(url)).json()
        await asyncio.sleep(interval_s)
        second = (await http.get(url)).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BridgeError(f"cannot read {url}: is the daemon running? ({exc})") from exc
    out = []
    for route in config.routes:
        now = second.get("routes", {}).get(route.name)
        before = first.get("routes", {}).get(route.name, now)
        lag = await read_lag(
            http, config.bridge.pulsar, route.source.topics, route.source.subscription
        )
        if now is None:
            out.append(RouteStatus(route.name, "not running", 0, 0, 0, 0, None, lag))
            continue
        out.append(
            RouteStatus(
                route.name,
                now["state"],
                (now["events_in"] - before["events_in"]) / interval_s,
                (now["results_out"] - before["results_out"]) / interval_s,
                now["in_flight"],
                now["dead_lettered"],
                now.get("last_error"),
                lag,
            )
        )
    return out


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
                f"{r.rate_in:.0f}",
                f"{r.rate_out:.0f}",
                str(r.in_flight),
                str(r.dead_lettered),
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
    config: Config, *, as_json: bool, watch: bool, interval_s: float, out: TextIO = sys.stdout
) -> int:
    async with httpx.AsyncClient(timeout=5.0) as http:
        while True:
            rows = await collect(config, http, interval_s)
            if as_json:
                out.write(orjson.dumps([r.as_json() for r in rows]).decode() + "\n")
            else:
                out.write((_CLEAR if watch else "") + render(rows) + "\n")
            out.flush()
            if not watch:
                return 0
