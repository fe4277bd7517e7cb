"""databricks-sdk unified auth (env vars, ~/.databrickscfg profiles) as a bounded TokenSource.

The SDK is synchronous and may do HTTP to get a token, so each fetch runs it in a thread:
the one place the daemon leaves its loop, and only at token refresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bridge.auth import REFUSAL_CODES, Clock, Token
from bridge.errors import AuthError

_T = TypeVar("_T")


class DatabricksSdkTokenSource:
    """Whatever databricks-sdk unified auth resolves (env, ~/.databrickscfg profile, ...).

    The SDK caches and refreshes its own token; asking it again every ``recheck_s`` costs
    nothing while that token is valid.

    ``timeout_s`` bounds a fetch. The SDK's own HTTP timeout and retry budget (60 s and
    300 s by default; an unreachable host took 310 s) are set to it, but only some of its
    calls use them: its OIDC discovery keeps the defaults and its token POST has no
    timeout at all. So the wait is bounded here. A call that outlives it cannot be
    stopped: it goes on in a daemon thread (which never holds up the daemon's exit), and
    the next fetch waits for that call rather than starting a second one.
    """

    def __init__(
        self,
        *,
        host: str | None,
        profile: str | None,
        recheck_s: float = 300.0,
        timeout_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._host = host
        self._profile = profile
        self._recheck_s = recheck_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._config: Any = None
        self._pending: concurrent.futures.Future[dict[str, str]] | None = None

    def _authenticate(self) -> dict[str, str]:
        from databricks.sdk.core import Config as SdkConfig
        from databricks.sdk.errors.base import DatabricksError

        try:
            if self._config is None:
                self._config = SdkConfig(
                    host=self._host,
                    profile=self._profile,
                    http_timeout_seconds=self._timeout_s,
                    retry_timeout_seconds=max(1, math.ceil(self._timeout_s)),
                )
            headers: dict[str, str] = self._config.authenticate()
        except (DatabricksError, ValueError) as exc:
            # The SDK reports the token endpoint's answer as "<error code>: <description>".
            refused = any(f"{code}:" in str(exc) for code in REFUSAL_CODES)
            raise AuthError(f"databricks-sdk auth failed: {exc}", retriable=not refused) from exc
        except OSError as exc:  # requests' connection errors, outside the SDK's retries
            raise AuthError(f"databricks-sdk auth failed: {exc!r}", retriable=True) from exc
        return headers

    async def fetch(self) -> Token:
        if self._pending is None or self._pending.done():
            self._pending = _in_daemon_thread(self._authenticate)
        try:
            answer = asyncio.wrap_future(self._pending)
            # Once the wait is abandoned, nobody retrieves how the call ended (asyncio
            # would log it as never retrieved): that is the next fetch's business.
            answer.add_done_callback(lambda done: done.cancelled() or done.exception())
            async with asyncio.timeout(self._timeout_s):
                # shield: a timeout abandons the wait, not the call, which the next fetch joins.
                headers = await asyncio.shield(answer)
        except TimeoutError as exc:
            raise AuthError(
                f"databricks-sdk auth timed out: no token within {self._timeout_s:g} s "
                "(its call goes on in a thread; the next fetch waits for it)",
                retriable=True,
            ) from exc
        value = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not value:
            raise AuthError("databricks-sdk auth produced no bearer token", retriable=False)
        return Token(value, self._clock() + self._recheck_s)

    async def aclose(self) -> None:
        return None


def _in_daemon_thread(call: Callable[[], _T]) -> concurrent.futures.Future[_T]:
    """``call()`` in a new daemon thread.

    Not ``asyncio.to_thread``: a call that outlived its timeout would keep a worker of the
    default executor, which ``asyncio.run`` joins at exit, so SIGTERM would wait for a hung
    SDK call (300 s and more).
    """
    outcome: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(call())
        except Exception as exc:  # raised where the future is awaited
            outcome.set_exception(exc)

    threading.Thread(target=run, name="databricks-sdk-auth", daemon=True).start()
    return outcome
