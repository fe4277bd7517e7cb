"""The ``/_emulator/`` routes: tests and operators steer a running emulator over HTTP.

They need no auth and are not counted. ``PUT /_emulator/faults`` merges a patch into the
faults and endpoint states (:func:`~bridge.emulator.faults.merge_faults`; durations such
as ``scale_from_zero_s`` count from the emulator's clock) and answers with all of them;
``PUT /_emulator/endpoints/{name}`` sets ``ready`` / ``route_optimized``;
``GET /_emulator/stats`` reads the counters; ``POST /_emulator/revoke`` and
``POST /_emulator/reset`` revoke tokens and switch everything off. A bad request is a
Databricks-style 400.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.emulator.state import EmulatorState


class _BadRequest(Exception):
    """The control request cannot be applied; the message says why."""


async def _read_json_object(request: Request) -> dict[str, object]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


async def _put_faults(state: EmulatorState, request: Request) -> Response:
    try:
        faults = state.faults.update(await _read_json_object(request), state.clock())
    except ValueError as exc:
        raise _BadRequest(str(exc)) from exc
    return JSONResponse(dataclasses.asdict(faults))


async def _put_endpoint_state(state: EmulatorState, request: Request) -> Response:
    """``{"ready": bool}`` and/or ``{"route_optimized": bool}`` for one endpoint."""
    body = await _read_json_object(request)
    flags = {
        k: v for k, v in body.items() if k in ("ready", "route_optimized") and isinstance(v, bool)
    }
    if not flags or len(flags) != len(body):
        raise _BadRequest('Expected {"ready": true|false} and/or {"route_optimized": true|false}.')
    name = request.path_params["name"]
    if "ready" in flags:
        state.set_ready(name, flags["ready"])
    if "route_optimized" in flags:
        state.set_route_optimized(name, flags["route_optimized"])
    return JSONResponse(flags)


def control_routes(state: EmulatorState) -> list[Route]:
    """The ``/_emulator/`` routes over ``state``."""

    async def stats(request: Request) -> Response:
        return JSONResponse(state.counters.as_json())

    async def revoke(request: Request) -> Response:
        scoped_only = request.query_params.get("scoped_only", "").lower() in ("1", "true")
        return JSONResponse({"revoked": state.revoke_all(scoped_only=scoped_only)})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    def guarded(
        handler: Callable[[EmulatorState, Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await handler(state, request)
            except _BadRequest as error:
                body = {"error_code": "BAD_REQUEST", "message": str(error)}
                return JSONResponse(body, status_code=400)

        return run

    return [
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/faults", guarded(_put_faults), methods=["PUT"]),
        Route("/_emulator/revoke", revoke, methods=["POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/endpoints/{name}", guarded(_put_endpoint_state), methods=["PUT"]),
    ]
