"""A local Databricks Model Serving emulator: OAuth (client credentials, OIDC token
federation, endpoint-scoped tokens), invocations on the workspace and on a route-optimized
data plane, endpoint state, faults.

``pulsar-bridge emulate`` serves it through :func:`run_emulator`; end-to-end tests run
it in a thread with ``with EmulatorServer(EmulatorState(...)) as server:``, and mint
external IdP tokens with :class:`IdentityProvider`.
"""

from bridge.emulator.app import ApiError, ConnectionDropper, create_app, create_data_plane_app
from bridge.emulator.faults import Decision, FaultInjector, Faults, Rejection, merge_faults
from bridge.emulator.federation import (
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    IdentityProvider,
    VerifiedSubject,
    load_jwks,
    token_exchange_grant,
    verify_subject_token,
)
from bridge.emulator.grants import default_grant_handlers
from bridge.emulator.model import BIAS, INPUT_KEYS, input_key, rows_from_body, score, weight
from bridge.emulator.oauth import (
    GrantHandler,
    OAuthError,
    OptionalGrant,
    TokenRequest,
    bearer_token_body,
    client_credentials_grant,
    granted_scope,
    offered_grants,
)
from bridge.emulator.route_optimized import (
    JWT_BEARER,
    QUERY_ACTION,
    jwt_bearer_grant,
    requested_endpoint_ids,
)
from bridge.emulator.server import DataPlaneServer, EmulatorServer, build_state, run_emulator
from bridge.emulator.state import (
    AuthFailure,
    Counters,
    EmulatorState,
    EndpointCounters,
    FederatedExchange,
    FederationPolicy,
    IssuedToken,
)

__all__ = [
    "BIAS",
    "INPUT_KEYS",
    "JWT_BEARER",
    "JWT_TOKEN_TYPE",
    "QUERY_ACTION",
    "TOKEN_EXCHANGE",
    "ApiError",
    "AuthFailure",
    "ConnectionDropper",
    "Counters",
    "DataPlaneServer",
    "Decision",
    "EmulatorServer",
    "EmulatorState",
    "EndpointCounters",
    "FaultInjector",
    "Faults",
    "FederatedExchange",
    "FederationPolicy",
    "GrantHandler",
    "IdentityProvider",
    "IssuedToken",
    "OAuthError",
    "OptionalGrant",
    "Rejection",
    "TokenRequest",
    "VerifiedSubject",
    "bearer_token_body",
    "build_state",
    "client_credentials_grant",
    "create_app",
    "create_data_plane_app",
    "default_grant_handlers",
    "granted_scope",
    "input_key",
    "jwt_bearer_grant",
    "load_jwks",
    "merge_faults",
    "offered_grants",
    "requested_endpoint_ids",
    "rows_from_body",
    "run_emulator",
    "score",
    "token_exchange_grant",
    "verify_subject_token",
    "weight",
]
