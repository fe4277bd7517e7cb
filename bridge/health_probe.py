"""A Databricks serving endpoint's readiness: ``state.ready``, fetched and cached for a TTL.

:class:`EndpointStateProbe` is what /readyz asks about each route's endpoint; its reasons
quote the workspace API and are redacted before they are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from bridge.errors import BridgeError
from bridge.redaction import Redactor, scrub

log = structlog.get_logger("bridge.health")

Clock = Callable[[], float]

READY = "READY"
UNKNOWN = "UNKNOWN"
_REASON_LIMIT = 200


@dataclass(frozen=True)
class EndpointReadiness:
    """A serving endpoint's ``state.ready`` ("READY", "NOT_READY") or "UNKNOWN" and why."""

    state: str
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == READY


class EndpointStateProbe:
    """``GET {host}/api/2.0/serving-endpoints/{name}`` -> ``state.ready``, cached for a TTL.

    The answer, failures included, is kept for ``ttl_s`` so a readiness prober polling
    every second costs Databricks one request per TTL; concurrent callers share one fetch.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        host: str,
        endpoint: str,
        *,
        auth: httpx.Auth | None = None,
        ttl_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
        redactor: Redactor | None = None,
    ) -> None:
        self.endpoint = endpoint
        # The reasons quote the workspace API, which may echo the token (a 403 naming it).
        self._redact = redactor.redact if redactor is not None else scrub
        self.url = f"{host.rstrip('/')}/api/2.0/serving-endpoints/{quote(endpoint, safe='')}"
        self._http = http
        self._auth = auth
        self._ttl_s = ttl_s
        # Short: /readyz waits on this, and a prober gives up long before the invoke timeout.
        self._timeout = httpx.Timeout(timeout_s)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cached: EndpointReadiness | None = None
        self._fetched_at = 0.0

    async def state(self) -> EndpointReadiness:
        async with self._lock:
            if self._cached is None or self._clock() - self._fetched_at >= self._ttl_s:
                fresh = await self._fetch()
                if fresh != self._cached:
                    log.info("endpoint_state", endpoint=self.endpoint, **vars(fresh))
                self._cached, self._fetched_at = fresh, self._clock()
            return self._cached

    async def _fetch(self) -> EndpointReadiness:
        try:
            response = await self._http.get(self.url, auth=self._auth, timeout=self._timeout)
        except (httpx.HTTPError, BridgeError) as exc:  # BridgeError: the auth flow's AuthError
            return EndpointReadiness(UNKNOWN, self._reason(f"{type(exc).__name__}: {exc}"))
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            # Databricks errors are {"error_code": ..., "message": ...}; a proxy's may be HTML.
            detail = body if isinstance(body, dict) else {}
            words = [str(detail[k]) for k in ("error_code", "message") if detail.get(k)]
            reason = ": ".join([f"HTTP {response.status_code}", *words])
            return EndpointReadiness(UNKNOWN, self._reason(reason))
        state = body.get("state") if isinstance(body, dict) else None
        ready = state.get("ready") if isinstance(state, dict) else None
        if not isinstance(ready, str):
            return EndpointReadiness(UNKNOWN, "response has no state.ready")
        return EndpointReadiness(self._redact(ready))

    def _reason(self, text: str) -> str:
        # Redacted before it is clipped: a token cut in two no longer matches its value.
        return clip_reason(self._redact(text))


def clip_reason(text: str) -> str:
    """``text`` cut to the length a readiness reason is shown at."""
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."
