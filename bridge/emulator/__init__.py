"""A local Databricks Model Serving emulator: OAuth, invocations, endpoint state, faults.

``pulsar-bridge emulate`` serves it through :func:`run_emulator`; end-to-end tests run
it in a thread with ``with EmulatorServer(EmulatorState(...)) as server:``.
"""

from bridge.emulator.app import ApiError, ConnectionDropper, create_app
from bridge.emulator.faults import Decision, FaultInjector, Faults, Rejection, merge_faults
from bridge.emulator.model import BIAS, INPUT_KEYS, input_key, rows_from_body, score, weight
from bridge.emulator.oauth import (
    GrantHandler,
    OAuthError,
    TokenRequest,
    bearer_token_body,
    client_credentials_grant,
    default_grant_handlers,
    granted_scope,
)
from bridge.emulator.server import EmulatorServer, build_state, run_emulator
from bridge.emulator.state import AuthFailure, Counters, EmulatorState, IssuedToken

__all__ = [
    "BIAS",
    "INPUT_KEYS",
    "ApiError",
    "AuthFailure",
    "ConnectionDropper",
    "Counters",
    "Decision",
    "EmulatorServer",
    "EmulatorState",
    "FaultInjector",
    "Faults",
    "GrantHandler",
    "IssuedToken",
    "OAuthError",
    "Rejection",
    "TokenRequest",
    "bearer_token_body",
    "build_state",
    "client_credentials_grant",
    "create_app",
    "default_grant_handlers",
    "granted_scope",
    "input_key",
    "merge_faults",
    "rows_from_body",
    "run_emulator",
    "score",
    "weight",
]
