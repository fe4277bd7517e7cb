"""The ``GET /api/2.0/serving-endpoints/{name}`` body: a ServingEndpointDetailed lookalike."""

from __future__ import annotations

from bridge.emulator.state import EmulatorState


def _entity_version(served_name: str) -> str:
    # "fraud-model-3" serves version 3 of its entity; anything else counts as version 1.
    _, _, suffix = served_name.rpartition("-")
    return suffix if suffix.isdigit() else "1"


def endpoint_detail(state: EmulatorState, endpoint: str) -> dict[str, object]:
    """The endpoint's description, its state following :meth:`EmulatorState.is_ready`."""
    ready = state.is_ready(endpoint)
    served = state.served_model_name(endpoint)
    entity = {
        "name": served,
        "entity_name": endpoint,
        "entity_version": _entity_version(served),
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
        "state": {
            "deployment": "DEPLOYMENT_READY" if ready else "DEPLOYMENT_CREATING",
            "deployment_state_message": "" if ready else "Served entity is being created.",
        },
    }
    return {
        "name": endpoint,
        "id": state.endpoint_id(endpoint),
        "creator": "emulator@localhost",
        "state": {
            "ready": "READY" if ready else "NOT_READY",
            "config_update": "NOT_UPDATING" if ready else "IN_PROGRESS",
        },
        "config": {
            "served_entities": [entity],
            "traffic_config": {
                "routes": [{"served_model_name": served, "traffic_percentage": 100}]
            },
        },
        "route_optimized": False,
        "permission_level": "CAN_QUERY",
    }
