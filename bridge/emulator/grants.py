"""The token endpoint's grants out of the box, keyed by ``grant_type``."""

from __future__ import annotations

from bridge.emulator.federation import TOKEN_EXCHANGE, token_exchange_grant
from bridge.emulator.oauth import GrantHandler, client_credentials_grant
from bridge.emulator.route_optimized import JWT_BEARER, jwt_bearer_grant


def default_grant_handlers() -> dict[str, GrantHandler]:
    """Client credentials always; token exchange while the state has a federation policy;
    jwt-bearer (endpoint-scoped tokens) while an endpoint is route-optimized."""
    return {
        "client_credentials": client_credentials_grant,
        TOKEN_EXCHANGE: token_exchange_grant,
        JWT_BEARER: jwt_bearer_grant,
    }
