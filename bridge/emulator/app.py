"""The emulator's HTTP surface as Starlette apps over one :class:`EmulatorState`.

:func:`create_app` is the workspace; :func:`create_data_plane_app` is the data plane that
serves route-optimized endpoints at ``/{workspace_id}/serving-endpoints/{name}/invocations``
on its own port. An invocation passes these gates in order, the first failing one answering:
workspace: auth (401) -> endpoint exists (404) -> not route-optimized, unless
``route_optimized_workspace_path`` (400); data plane: workspace id and route-optimized
endpoint (404) -> a token scoped to that endpoint (401); then both: route-error outage
(404, 403) -> served model exists (404) -> endpoint READY (503) -> scaling from zero
(503) -> capacity (429, both at once) -> pre-parse faults (latency, outage, fail_next,
connection reset, 429) -> Content-Type (415) -> payload size (413) -> JSON object with
exactly one input key (400) -> new signature rejects all (400) -> poisoned row (400) ->
the model rejects the rows (400, only with a real model) -> 200
``{"predictions": [...]}`` with a ``served-model-name`` header. The decisions are
:class:`~bridge.emulator.faults.FaultInjector`'s; this module only applies them.

Routes under ``/_emulator/`` (:mod:`bridge.emulator.control`) steer the emulator from
tests and need no auth.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.emulator.control import control_routes
from bridge.emulator.endpoints import endpoint_detail
from bridge.emulator.faults import Decision, Rejection
from bridge.emulator.grants import default_grant_handlers
from bridge.emulator.model import Row, rows_from_body, score
from bridge.emulator.oauth import (
    GrantHandler,
    authorization_server_metadata,
    databricks_config,
    token_endpoint,
)
from bridge.emulator.state import EmulatorState, EndpointCounters, InvocationRecord

# Drops the connection a request arrived on without answering; True if it did. The
# server supplies it because only the server can reach the socket.
ConnectionDropper = Callable[[Request], bool]
Handler = Callable[[Request], Awaitable[Response]]


class _ConnectionDropped(Exception):
    """The connection was dropped: there is nobody to answer and no status to count."""


class ApiError(Exception):
    """A Databricks REST error: ``{"error_code", "message"}`` with an HTTP status."""

    def __init__(
        self, status: int, error_code: int | str, message: str, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def from_rejection(cls, rejection: Rejection) -> ApiError:
        """The error for a fault-injected rejection."""
        return cls(
            rejection.status, rejection.error_code, rejection.message, rejection.retry_after_s
        )

    def response(self) -> Response:
        """This error as a JSON response, with ``Retry-After`` when one is set."""
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        body = {"error_code": self.error_code, "message": self.message}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _check_access(state: EmulatorState, request: Request, endpoint: str) -> None:
    failure = state.authenticate(request.headers.get("authorization"))
    if failure is not None:
        raise ApiError(401, failure.error_code, failure.message)
    if not state.serves(endpoint):
        message = f"Endpoint with name '{endpoint}' does not exist."
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", message)


def _check_route(state: EmulatorState, endpoint: str) -> None:
    """Raise the 404 or 403 of a route-error outage, for invocations and the GET alike."""
    rejection = state.faults.route_rejection(state.clock(), endpoint)
    if rejection is not None:
        raise ApiError.from_rejection(rejection)


def _check_workspace_invocation(state: EmulatorState, request: Request, endpoint: str) -> None:
    _check_access(state, request, endpoint)
    if state.is_route_optimized(endpoint) and not state.route_optimized_workspace_path:
        message = (
            f"Endpoint '{endpoint}' is route-optimized and is queried only at its endpoint_url "
            "(GET /api/2.0/serving-endpoints/{name})."
        )
        raise ApiError(400, "BAD_REQUEST", message)


def _check_data_plane_invocation(state: EmulatorState, request: Request, endpoint: str) -> None:
    this_workspace = request.path_params["workspace_id"] == state.workspace_id
    if not this_workspace or not state.is_route_optimized(endpoint):
        message = f"No route-optimized endpoint '{endpoint}' is served here."
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", message)
    failure = state.authenticate(request.headers.get("authorization"), endpoint=endpoint)
    if failure is not None:
        raise ApiError(401, failure.error_code, failure.message)


@dataclass(frozen=True)
class _Plane:
    """Where invocations arrive: the workspace paths or a route-optimized data plane."""

    data_plane: bool

    def check(self, state: EmulatorState, request: Request, endpoint: str) -> None:
        """Raise the ApiError of the first access gate the request fails."""
        if self.data_plane:
            _check_data_plane_invocation(state, request, endpoint)
        else:
            _check_workspace_invocation(state, request, endpoint)

    def counters(self, state: EmulatorState, endpoint: str) -> EndpointCounters:
        """The per-endpoint counters invocations on this plane go to."""
        counters = state.counters
        if self.data_plane:
            return counters.data_plane_endpoint(endpoint)
        return counters.endpoint(endpoint)


WORKSPACE, DATA_PLANE = _Plane(data_plane=False), _Plane(data_plane=True)


def _parse_rows(state: EmulatorState, request: Request, raw: bytes) -> tuple[list[Row], str | None]:
    """The rows of the body and its ``client_request_id``, or the ApiError to answer."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        message = f"Content type must be 'application/json', got '{media_type}'."
        raise ApiError(415, "BAD_REQUEST", message)
    oversize = state.faults.check_payload(len(raw))
    if oversize is not None:
        raise ApiError.from_rejection(oversize)
    try:
        body = orjson.loads(raw)  # orjson: the emulator's CPU is part of every benchmark
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "BAD_REQUEST", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        body = {"<non-object body>": body}  # reported through the one-input-key message
    try:
        return rows_from_body(body), body.get("client_request_id")
    except ValueError as exc:
        raise ApiError(400, "BAD_REQUEST", str(exc)) from exc


async def _await_disconnect(request: Request) -> None:
    # Returning only once the server has seen the connection go keeps it from trying
    # to write a response to the dead socket.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _invoke(
    state: EmulatorState, dropper: ConnectionDropper | None, plane: _Plane, request: Request
) -> Response:
    arrived = asyncio.get_running_loop().time()
    endpoint = request.path_params["name"]
    raw = await request.body()  # read first so every answer leaves the connection reusable
    plane.check(state, request, endpoint)
    _check_route(state, endpoint)
    served = state.served_model_name(endpoint)
    if request.path_params.get("served", served) != served:
        message = f"Served model '{request.path_params['served']}' not found in '{endpoint}'."
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", message)
    if not state.is_ready(endpoint):
        raise ApiError(503, "TEMPORARILY_UNAVAILABLE", f"Endpoint '{endpoint}' is not ready.")
    decision = state.faults.decide(state.clock(), endpoint)
    if not decision.holds_slot:  # refused in front of the model: no latency, no slot
        if decision.over_capacity:
            state.counters.rejected_over_capacity += 1
        assert decision.rejection is not None
        raise ApiError.from_rejection(decision.rejection)
    state.counters.invocation_admitted(state.faults.in_use(endpoint))
    try:
        rows, predictions, client_id = await _answer_admitted(
            state, dropper, request, raw, arrived, decision
        )
    finally:
        state.faults.release(endpoint)
    state.counters.rows_scored += len(rows)
    plane.counters(state, endpoint).rows_scored += len(rows)
    # Databricks answers with the id it logs the request under (x-request-id).
    request_id = str(uuid.uuid4())
    traceparent = request.headers.get("traceparent")
    state.invocation_log.append(InvocationRecord(request_id, client_id, traceparent, len(rows)))
    return Response(
        orjson.dumps({"predictions": predictions}),
        media_type="application/json",
        headers={"served-model-name": served, "x-request-id": request_id},
    )


async def _answer_admitted(
    state: EmulatorState,
    dropper: ConnectionDropper | None,
    request: Request,
    raw: bytes,
    arrived: float,
    decision: Decision,
) -> tuple[list[Row], list[object], str | None]:
    """The rows, their predictions and the body's ``client_request_id`` of an invocation
    holding a slot, or its ApiError."""
    # The latency fault is the time to answer, as a model's would be: the emulator's own
    # work happens within it, so a 50 ms endpoint answers in 50 ms, not 50 ms plus
    # however long this process took to parse and score (which grows with concurrency).
    answer_at = arrived + decision.delay_s
    if decision.drop_connection and dropper is not None and dropper(request):
        await _sleep_until(answer_at)
        state.counters.connections_dropped += 1
        await _await_disconnect(request)
        raise _ConnectionDropped
    try:
        if decision.rejection is not None:
            raise ApiError.from_rejection(decision.rejection)
        rows, client_id = _parse_rows(state, request, raw)
        rejection = state.faults.check_schema(state.clock()) or state.faults.check_poison(rows)
        if rejection is not None:
            raise ApiError.from_rejection(rejection)
        return rows, await _predict(state, rows), client_id
    finally:
        await _sleep_until(answer_at)


async def _sleep_until(deadline: float) -> None:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def _predict(state: EmulatorState, rows: list[Row]) -> list[object]:
    """Predictions from the configured model, else from the built-in formula."""
    if state.model is None:
        return [score(row) for row in rows]
    try:
        # A real model's predict is blocking CPU work: off the loop, so token requests
        # and fault steering stay responsive while a big batch is scored.
        return await asyncio.to_thread(state.model.predict, rows)
    except ValueError as exc:  # what MLflow answers for a missing column or a bad type
        raise ApiError(400, "BAD_REQUEST", str(exc)) from exc


async def _get_endpoint(state: EmulatorState, request: Request) -> Response:
    endpoint = request.path_params["name"]
    _check_access(state, request, endpoint)
    _check_route(state, endpoint)
    return JSONResponse(endpoint_detail(state, endpoint))


def _counted(state: EmulatorState, handler: Handler, plane: _Plane = WORKSPACE) -> Handler:
    """``handler`` turning ApiError into its response and counting the status."""

    async def counted(request: Request) -> Response:
        is_invocation = request.url.path.endswith("/invocations")
        if is_invocation:
            state.counters.invocation_started()
        try:
            response = await handler(request)
        except ApiError as error:
            response = error.response()
        except _ConnectionDropped:
            return Response()  # uvicorn discards it: the socket is already gone
        finally:
            if is_invocation:
                state.counters.invocation_ended()
        state.counters.requests_by_status[response.status_code] += 1
        endpoint = request.path_params.get("name")
        if endpoint is not None and is_invocation and state.serves(endpoint):
            counters = plane.counters(state, endpoint)
            counters.requests += 1
            counters.by_status[response.status_code] += 1
        return response

    return counted


def create_app(
    state: EmulatorState,
    *,
    grant_handlers: Mapping[str, GrantHandler] | None = None,
    connection_dropper: ConnectionDropper | None = None,
) -> Starlette:
    """The emulator app serving ``state``.

    ``grant_handlers`` replaces the token endpoint's grants (default: client
    credentials). Without ``connection_dropper`` the connection-reset fault is a no-op
    and the request proceeds, since only the server can drop a socket.
    """
    grants = dict(default_grant_handlers() if grant_handlers is None else grant_handlers)
    invoke = _counted(state, partial(_invoke, state, connection_dropper, WORKSPACE))

    async def config(request: Request) -> Response:
        return databricks_config(request, state)

    async def oidc_metadata(request: Request) -> Response:
        return authorization_server_metadata(request, state, grants)

    async def token(request: Request) -> Response:
        return await token_endpoint(request, state, grants)

    routes = [
        Route("/.well-known/databricks-config", config, methods=["GET"]),
        Route("/oidc/.well-known/oauth-authorization-server", oidc_metadata, methods=["GET"]),
        Route("/oidc/v1/token", _counted(state, token), methods=["POST"]),
        Route("/serving-endpoints/{name}/invocations", invoke, methods=["POST"]),
        Route(
            "/serving-endpoints/{name}/served-models/{served}/invocations",
            invoke,
            methods=["POST"],
        ),
        Route(
            "/api/2.0/serving-endpoints/{name}",
            _counted(state, partial(_get_endpoint, state)),
            methods=["GET"],
        ),
        *control_routes(state),
    ]
    return Starlette(routes=routes)


def create_data_plane_app(
    state: EmulatorState, *, connection_dropper: ConnectionDropper | None = None
) -> Starlette:
    """The data plane of ``state``'s route-optimized endpoints: invocations only, each
    accepting only tokens scoped to its endpoint. Faults and counters are the state's."""
    invoke = _counted(state, partial(_invoke, state, connection_dropper, DATA_PLANE), DATA_PLANE)
    base = "/{workspace_id}/serving-endpoints/{name}"
    return Starlette(
        routes=[
            Route(f"{base}/invocations", invoke, methods=["POST"]),
            Route(f"{base}/served-models/{{served}}/invocations", invoke, methods=["POST"]),
        ]
    )
