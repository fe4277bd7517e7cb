"""Start-up's first token per workspace (bridge.identity.first_tokens): a refusal is a
config error found at once; an identity provider that is down only delays the tokens."""

from __future__ import annotations

from typing import cast

import pytest
from structlog.testing import capture_logs

from bridge.auth import TokenCache
from bridge.errors import AuthError
from bridge.identity import WorkspaceAuth, first_tokens


class FakeCache:
    def __init__(self, error: AuthError | None = None) -> None:
        self.error = error
        self.asked = 0

    async def get(self) -> str:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return "token"


def auth(name: str, cache: FakeCache | None) -> WorkspaceAuth:
    return WorkspaceAuth(name, cast(TokenCache, cache))


async def test_a_refused_client_fails_the_start() -> None:
    refused = FakeCache(AuthError("invalid_client", retriable=False))
    with pytest.raises(AuthError, match="invalid_client"):
        await first_tokens({None: auth("default", refused)})


async def test_an_unavailable_provider_is_logged_and_every_workspace_still_asked() -> None:
    down = FakeCache(AuthError("token endpoint answered 503", retriable=True))
    fine = FakeCache()
    with capture_logs() as logs:
        await first_tokens(
            {None: auth("default", down), "b": auth("b", fine), "c": auth("c", None)}
        )
    assert down.asked == 1
    assert fine.asked == 1
    assert [(e["event"], e["workspace"]) for e in logs] == [("token_unavailable", "default")]
