"""``pulsar-bridge check --connect``: try, once, everything ``run`` will connect to.

After the static checks pass, each of these is tried with a short timeout and reported as
one :class:`Check` (ok, FAILED with the reason, or skipped with why):

    broker    the Pulsar client reaches [pulsar] service_url (TLS, auth): the first route's
              first source topic is looked up through it
    topic     every other source topic can be looked up too
    token     one token per workspace a named-endpoint route uses, from the token source
              ``run`` builds for it (bridge.identity)
    endpoint  each named endpoint exists and is READY (``GET /api/2.0/serving-endpoints/
              {name}`` with that token)

Nothing is consumed, published or invoked. The broker and Databricks are tried at the same
time, so the whole check takes about two timeouts at most. Reasons may quote what a server
said; the caller prints them through the process's Redactor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
import structlog

from bridge.config import Config
from bridge.config_bridge import WorkspaceSettings
from bridge.errors import AuthError, BridgeError, SecretError
from bridge.identity import WorkspaceAuth, build_workspace_auth
from bridge.observe import log_pipeline
from bridge.pulsar_io import PulsarConnection, set_client_log_level
from bridge.redaction import Redactor

Outcome = Literal["ok", "FAILED", "skipped"]
_REASON_LIMIT = 300


@dataclass(frozen=True)
class Check:
    """One thing tried: what, how it went, and the detail or reason."""

    what: str
    outcome: Outcome
    detail: str

    @property
    def failed(self) -> bool:
        return self.outcome == "FAILED"

    def line(self) -> str:
        return f"{self.outcome:<8}{self.what}: {self.detail}"


async def run_checks(config: Config, redactor: Redactor, timeout_s: float) -> list[Check]:
    """Every check, broker first, in a stable order."""
    broker, databricks = await asyncio.gather(
        check_broker(config, timeout_s), check_databricks(config, redactor, timeout_s)
    )
    return [*broker, *databricks]


def client_lines_to_stderr(redactor: Redactor) -> None:
    """The Pulsar client's warnings and errors (bridge.client_log) as redacted lines on
    stderr, so that stdout holds the checks alone."""
    set_client_log_level("warning")
    shared, _ = log_pipeline("console", redactor)
    structlog.configure(
        processors=[*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


# --------------------------------------------------------------------------- the broker


async def check_broker(config: Config, timeout_s: float) -> list[Check]:
    """The broker line, then one line per source topic (each topic once)."""
    routes_of: dict[str, list[str]] = {}
    for route in config.routes:
        for topic in route.source.topics:
            routes_of.setdefault(topic, []).append(route.name)

    def topic_check(topic: str, outcome: Outcome, detail: str) -> Check:
        names = ", ".join(routes_of[topic])
        return Check(f"topic {topic} (route {names})", outcome, detail)

    pulsar = config.bridge.pulsar
    # The client's own timeouts, not only ours: an operation it still runs after we gave
    # up would complete on an event loop that is gone.
    whole = max(1, math.ceil(timeout_s))
    settings = pulsar.model_copy(
        update={"operation_timeout_s": whole, "connection_timeout_s": whole}
    )
    where = f"broker {pulsar.service_url}"
    try:
        connection = PulsarConnection(settings)
    except Exception as exc:  # a client that cannot even be built (TLS file, auth plugin)
        return [Check(where, "FAILED", f"cannot create the client: {_reason(exc, timeout_s)}")]
    topics = list(routes_of)
    try:
        first = await _lookup(connection, topics[0], whole)
        if isinstance(first, BaseException):
            failed = Check(where, "FAILED", _reason(first, whole))
            unreached = "not looked up: the broker did not answer the first lookup"
            return [failed, *(topic_check(t, "FAILED", unreached) for t in topics[1:])]
        checks = [Check(where, "ok", "connected"), topic_check(topics[0], "ok", first)]
        rest = await asyncio.gather(*(_lookup(connection, t, whole) for t in topics[1:]))
        for topic, found in zip(topics[1:], rest, strict=True):
            if isinstance(found, BaseException):
                checks.append(topic_check(topic, "FAILED", _reason(found, whole)))
            else:
                checks.append(topic_check(topic, "ok", found))
        return checks
    finally:
        try:
            async with asyncio.timeout(whole):
                await connection.close()
        except (BridgeError, TimeoutError):
            pass  # nothing of the check depends on a clean close


async def _lookup(connection: PulsarConnection, topic: str, timeout_s: int) -> str | BaseException:
    """What the broker said of ``topic``, or the error."""
    try:
        # A margin over the client's own operation timeout, which should answer first.
        async with asyncio.timeout(timeout_s + 2):
            partitions = await connection.lookup(topic)
    except (BridgeError, TimeoutError) as exc:
        return exc
    partitioned = [p for p in partitions if "-partition-" in p]
    if partitioned:
        return f"looked up, {len(partitioned)} partition(s)"
    return "looked up, not partitioned"


# --------------------------------------------------------------------------- Databricks


async def check_databricks(config: Config, redactor: Redactor, timeout_s: float) -> list[Check]:
    """One token line per workspace in use, then one line per named endpoint."""
    if not any(route.endpoint.name is not None for route in config.routes):
        return []
    try:
        auths = build_workspace_auth(config, on_token=redactor.register_token)
    except BridgeError as exc:
        return [Check("databricks", "FAILED", _reason(exc, timeout_s))]
    try:
        tokens = await asyncio.gather(
            *(_token(config, name, auth, timeout_s) for name, auth in auths.items())
        )
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as http:
            endpoints = await _endpoints(config, auths, tokens, http, timeout_s)
    finally:
        for auth in auths.values():
            if auth.cache is not None:
                await auth.cache.aclose()
    return [check for check in tokens if check is not None] + endpoints


def _workspace(config: Config, name: str | None) -> WorkspaceSettings:
    return config.bridge.databricks if name is None else config.bridge.workspaces[name]


def _section(name: str | None) -> str:
    return "databricks" if name is None else f"databricks.{name}"


async def _token(
    config: Config, name: str | None, auth: WorkspaceAuth, timeout_s: float
) -> Check | None:
    """One token fetched for workspace ``name``; None when it uses no token at all."""
    if auth.cache is None:
        return None
    workspace = _workspace(config, name)
    what = f"token [{_section(name)}] ({workspace.resolved_auth_type})"
    try:
        async with asyncio.timeout(timeout_s):
            await auth.cache.get()
    except (AuthError, SecretError, TimeoutError) as exc:
        return Check(what, "FAILED", _reason(exc, timeout_s))
    return Check(what, "ok", "token obtained")


async def _endpoints(
    config: Config,
    auths: dict[str | None, WorkspaceAuth],
    tokens: Sequence[Check | None],
    http: httpx.AsyncClient,
    timeout_s: float,
) -> list[Check]:
    """Each named endpoint once per workspace, described with that workspace's token."""
    no_token = {name for name, token in zip(auths, tokens, strict=True) if token and token.failed}
    routes_of: dict[tuple[str | None, str], list[str]] = {}
    for route in config.routes:
        if route.endpoint.name is not None:
            key = (route.endpoint.workspace, route.endpoint.name)
            routes_of.setdefault(key, []).append(route.name)

    async def one(workspace: str | None, endpoint: str) -> Check:
        what = f"endpoint {endpoint} (route {', '.join(routes_of[(workspace, endpoint)])})"
        host = (_workspace(config, workspace).host or "").rstrip("/")
        if workspace in no_token:
            return Check(what, "FAILED", f"not described: no token for [{_section(workspace)}]")
        if not host:
            return Check(what, "skipped", "databricks-sdk resolves the host; not described")
        auth = auths[workspace].httpx_auth
        return await _describe(http, host, endpoint, auth, what, timeout_s)

    return list(await asyncio.gather(*(one(ws, name) for ws, name in routes_of)))


async def _describe(
    http: httpx.AsyncClient,
    host: str,
    endpoint: str,
    auth: httpx.Auth | None,
    what: str,
    timeout_s: float,
) -> Check:
    url = f"{host}/api/2.0/serving-endpoints/{quote(endpoint, safe='')}"
    try:
        async with asyncio.timeout(timeout_s):
            response = await http.get(url, auth=auth or httpx.USE_CLIENT_DEFAULT)
    except (httpx.HTTPError, AuthError, SecretError, TimeoutError) as exc:
        reason = _reason(exc, timeout_s)
        if isinstance(exc, httpx.HTTPError):
            reason = f"{type(exc).__name__}: {reason}"
        return Check(what, "FAILED", f"GET {url}: {reason}")
    body = _json(response)
    if response.status_code != 200:
        said = [str(body.get(k)) for k in ("error_code", "message") if body.get(k)]
        reason = ": ".join([f"HTTP {response.status_code}", *said])
        return Check(what, "FAILED", _reason(BridgeError(reason), timeout_s))
    state = body.get("state")
    state = state if isinstance(state, dict) else {}
    ready = state.get("ready")
    if ready != "READY":
        update = state.get("config_update")
        detail = f"exists but is {ready or 'in no known state'}" + (
            f" (config_update {update})" if update else ""
        )
        return Check(what, "FAILED", detail)
    optimized = ", route-optimized" if body.get("route_optimized") else ""
    return Check(what, "ok", f"READY{optimized}")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
