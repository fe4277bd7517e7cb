"""The ``GET /api/2.0/serving-endpoints/{name}`` body: a ServingEndpointDetailed lookalike.

Its state follows the endpoint: NOT_READY with a config update IN_PROGRESS and the served
entity DEPLOYMENT_CREATING while it is set not ready; NOT_READY while it scales up from
zero, with no config update (nothing in the config changes) and the served entity, which
has scale to zero enabled, DEPLOYMENT_CREATING. Which deployment state Databricks reports
during a scale-up is unconfirmed; READY needs neither.

A route-optimized endpoint also carries ``endpoint_url`` and
``data_plane_info.query_info`` (its data-plane URL and the ``authorization_details`` to
scope a token with) while the data-plane server runs.
"""

from __future__ import annotations

import json

from bridge.emulator.state import EmulatorState


def _entity_version(served_name: str) -> str:
    # "fraud-model-3" serves version 3 of its entity; anything else counts as version 1.
    _, _, suffix = served_name.rpartition("-")
    return suffix if suffix.isdigit() else "1"


def _deployment_state(updating: bool, scaling: bool) -> dict[str, str]:
    if updating:
        return {
            "deployment": "DEPLOYMENT_CREATING",
            "deployment_state_message": "Served entity is being created.",
        }
    if scaling:
        return {
            "deployment": "DEPLOYMENT_CREATING",
            "deployment_state_message": "Scaling up from zero.",
        }
    return {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}


def endpoint_detail(state: EmulatorState, endpoint: str) -> dict[str, object]:
    """The endpoint's description, its state following :meth:`EmulatorState.is_ready`
    and the scale-from-zero fault."""
    updating = not state.is_ready(endpoint)
    scaling = state.faults.scaling_from_zero(state.clock())
    ready = not updating and not scaling
    served = state.served_model_name(endpoint)
    entity = {
        "name": served,
        "entity_name": endpoint,
        "entity_version": _entity_version(served),
        "workload_size": "Small",
        # An endpoint that scales up from zero has scale to zero enabled, before and after.
        "scale_to_zero_enabled": state.faults.faults.scale_from_zero_until is not None,
        "state": _deployment_state(updating, scaling),
    }
    detail: dict[str, object] = {
        "name": endpoint,
        "id": state.endpoint_id(endpoint),
        "creator": "emulator@localhost",
        "state": {
            "ready": "READY" if ready else "NOT_READY",
            "config_update": "IN_PROGRESS" if updating else "NOT_UPDATING",
        },
        "config": {
            "served_entities": [entity],
            "traffic_config": {
                "routes": [{"served_model_name": served, "traffic_percentage": 100}]
            },
        },
        "route_optimized": state.is_route_optimized(endpoint),
        "permission_level": "CAN_QUERY",
    }
    url = state.invocation_url(endpoint)
    if url is not None:
        # Both places the SDK reads it from; only route-optimized endpoints have either.
        detail["endpoint_url"] = url
        detail["data_plane_info"] = {
            "query_info": {
                "endpoint_url": url,
                "authorization_details": json.dumps(_query_permission(state, endpoint)),
            }
        }
    return detail


def _query_permission(state: EmulatorState, endpoint: str) -> list[dict[str, object]]:
    """The ``authorization_details`` a scoped token for ``endpoint`` is requested with."""
    return [
        {
            "type": "workspace_permission",
            "object_type": "serving-endpoints",
            "object_path": f"/serving-endpoints/{state.endpoint_id(endpoint)}",
            "actions": ["query_inference_endpoint"],
        }
    ]
