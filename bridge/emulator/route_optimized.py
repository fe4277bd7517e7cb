"""Route-optimized endpoints: tokens scoped to one endpoint, for its data plane only.

``POST /oidc/v1/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
exchanges a live workspace token (``assertion``) for one scoped by
``authorization_details`` (RFC 9396) to endpoints::

    [{"type": "workspace_permission", "object_type": "serving-endpoints",
      "object_path": "/serving-endpoints/<endpoint id>", "actions": ["query_inference_endpoint"]}]

A bad assertion is 400 ``invalid_grant`` (RFC 7523 section 3.1); details that do not
parse or name no known endpoint are 400 ``invalid_authorization_details`` (RFC 9396
section 5). The data plane itself is served by ``app.create_data_plane_app``.
"""

from __future__ import annotations

import json

from bridge.emulator.oauth import (
    OAuthError,
    OptionalGrant,
    TokenRequest,
    bearer_token_body,
    granted_scope,
)
from bridge.emulator.state import AuthFailure, EmulatorState

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
QUERY_ACTION = "query_inference_endpoint"
_PATH_PREFIX = "/serving-endpoints/"


def _invalid_details(description: str) -> OAuthError:
    return OAuthError(400, "invalid_authorization_details", description)


def _endpoint_id(state: EmulatorState, entry: object) -> str:
    """The endpoint id one authorization_details entry grants querying."""
    if not isinstance(entry, dict):
        raise _invalid_details("Each authorization_details entry must be a JSON object.")
    if entry.get("type") != "workspace_permission":
        raise _invalid_details(
            f"Unsupported authorization_details type {entry.get('type')!r}; "
            "expected 'workspace_permission'."
        )
    if entry.get("object_type") != "serving-endpoints":
        raise _invalid_details(
            f"Unsupported object_type {entry.get('object_type')!r}; expected 'serving-endpoints'."
        )
    actions = entry.get("actions")
    if not isinstance(actions, list) or QUERY_ACTION not in actions:
        raise _invalid_details(f"authorization_details actions must include {QUERY_ACTION!r}.")
    path = entry.get("object_path")
    if not isinstance(path, str) or not path.startswith(_PATH_PREFIX):
        raise _invalid_details(f"object_path must be '{_PATH_PREFIX}<endpoint id>', got {path!r}.")
    endpoint_id = path.removeprefix(_PATH_PREFIX)
    if state.endpoint_by_id(endpoint_id) is None and not state.allow_any_endpoint:
        raise _invalid_details(f"No serving endpoint has id {endpoint_id!r}.")
    return endpoint_id


def requested_endpoint_ids(state: EmulatorState, raw: str | None) -> frozenset[str]:
    """The endpoint ids an ``authorization_details`` form field asks for."""
    if not raw:
        raise OAuthError(
            400,
            "invalid_request",
            "Missing authorization_details: a data-plane token must be scoped to endpoints.",
        )
    try:
        details = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _invalid_details("authorization_details is not valid JSON.") from exc
    if not isinstance(details, list) or not details:
        raise _invalid_details("authorization_details must be a non-empty JSON array.")
    return frozenset(_endpoint_id(state, entry) for entry in details)


def _scoped_token(request: TokenRequest, state: EmulatorState) -> dict[str, object]:
    assertion = request.form.get("assertion")
    if not assertion:
        raise OAuthError(400, "invalid_request", "Missing assertion.")
    if assertion in state.pat_tokens:
        raise OAuthError(
            400, "invalid_grant", "A personal access token cannot be exchanged; use an OAuth token."
        )
    issued = state.live_token(assertion)
    if isinstance(issued, AuthFailure):
        raise OAuthError(400, "invalid_grant", f"The assertion is refused: {issued.message}")
    if issued.endpoint_ids:
        raise OAuthError(
            400, "invalid_grant", "The assertion must be a workspace token, not a scoped one."
        )
    endpoint_ids = requested_endpoint_ids(state, request.form.get("authorization_details"))
    body = bearer_token_body(state, granted_scope(request), endpoint_ids=endpoint_ids)
    return {**body, "authorization_details": json.loads(request.form["authorization_details"])}


jwt_bearer_grant = OptionalGrant(
    _scoped_token,
    enabled=lambda state: bool(state.route_optimized),
    disabled_reason="jwt-bearer is only offered for route-optimized endpoints; none exists.",
)
"""RFC 7523 jwt-bearer for scoped tokens, offered while an endpoint is route-optimized."""
