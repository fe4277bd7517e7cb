"""Everything the emulator remembers: endpoints, credentials, tokens, faults, counters.

One :class:`EmulatorState` is shared by the app (on the server's event loop) and by the
test that owns it; tests steer time through the injectable ``clock``.
"""

from __future__ import annotations

import hmac
import secrets
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field

from bridge.emulator.faults import FaultInjector
from bridge.emulator.model import Row

MISSING_CREDENTIAL = "Credential was not sent or was of an unsupported type for this API."


@dataclass(frozen=True)
class ServedModel:
    """A real model answering for every endpoint instead of the built-in ``score``.

    ``predict`` maps rows to one JSON-ready prediction each and raises ValueError for
    input it cannot score (a missing column); ``name`` is its ``served-model-name``,
    e.g. ``"iris-2"``.
    """

    name: str
    predict: Callable[[list[Row]], list[object]]


@dataclass
class EndpointCounters:
    """Invocations of one endpoint."""

    requests: int = 0
    rows_scored: int = 0
    by_status: Counter[int] = field(default_factory=Counter)


@dataclass
class Counters:
    """What the emulator has served since start or the last reset.

    ``requests_by_status`` counts the answers of the token, invocation and endpoint-GET
    routes; discovery and ``/_emulator/`` routes are not counted, nor are dropped
    connections (``connections_dropped``), which never got a status.
    """

    requests_by_status: Counter[int] = field(default_factory=Counter)
    rows_scored: int = 0
    tokens_issued: int = 0
    connections_dropped: int = 0
    endpoints: dict[str, EndpointCounters] = field(default_factory=dict)

    def endpoint(self, name: str) -> EndpointCounters:
        """The counters of endpoint ``name``, created on first use."""
        return self.endpoints.setdefault(name, EndpointCounters())

    def as_json(self) -> dict[str, object]:
        """A JSON-ready copy; status codes become string keys."""
        return {
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
            "rows_scored": self.rows_scored,
            "tokens_issued": self.tokens_issued,
            "connections_dropped": self.connections_dropped,
            "endpoints": {
                name: {
                    "requests": c.requests,
                    "rows_scored": c.rows_scored,
                    "by_status": {str(k): v for k, v in sorted(c.by_status.items())},
                }
                for name, c in sorted(self.endpoints.items())
            },
        }


@dataclass
class IssuedToken:
    """An OAuth access token the emulator handed out."""

    expires_at: float
    scope: str
    revoked: bool = False


@dataclass(frozen=True)
class AuthFailure:
    """Why a request's credentials were refused; ``error_code`` is int for a missing one."""

    error_code: int | str
    message: str


@dataclass(kw_only=True)
class EmulatorState:
    """Configuration and live state of one emulated workspace.

    ``endpoints`` are the serving endpoints that exist (any name when
    ``allow_any_endpoint``); ``clients`` maps OAuth client ids to secrets;
    ``pat_tokens`` are static bearer tokens accepted as is; ``auth=False`` accepts every
    request. ``model`` replaces the built-in scoring formula with a real model for
    every endpoint. ``served_models`` overrides the ``served-model-name`` of an
    endpoint (default the model's name, else ``"<endpoint>-1"``). ``clock`` is
    monotonic seconds and decides token expiry and outages.
    """

    endpoints: Set[str] = frozenset({"fraud-model"})
    allow_any_endpoint: bool = False
    clients: Mapping[str, str] = field(default_factory=dict)
    pat_tokens: Set[str] = frozenset()
    auth: bool = True
    token_ttl_s: int = 3600
    served_models: Mapping[str, str] = field(default_factory=dict)
    model: ServedModel | None = None
    workspace_id: str = "1234567890123456"
    faults: FaultInjector = field(default_factory=FaultInjector)
    clock: Callable[[], float] = time.monotonic
    not_ready: set[str] = field(default_factory=set)
    counters: Counters = field(default_factory=Counters)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)

    def serves(self, endpoint: str) -> bool:
        """Whether endpoint ``endpoint`` exists."""
        return self.allow_any_endpoint or endpoint in self.endpoints

    def served_model_name(self, endpoint: str) -> str:
        """The served model that answers for ``endpoint``."""
        default = self.model.name if self.model is not None else f"{endpoint}-1"
        return self.served_models.get(endpoint, default)

    def endpoint_id(self, endpoint: str) -> str:
        """A stable, id-looking hex string for ``endpoint``."""
        return f"{zlib.crc32(endpoint.encode('utf-8')):08x}" * 4

    def is_ready(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is READY (as opposed to NOT_READY)."""
        return endpoint not in self.not_ready

    def set_ready(self, endpoint: str, ready: bool) -> None:
        """Move ``endpoint`` to READY or NOT_READY."""
        if ready:
            self.not_ready.discard(endpoint)
        else:
            self.not_ready.add(endpoint)

    def client_secret_matches(self, client_id: str, secret: str) -> bool:
        """Whether ``secret`` is the registered secret of ``client_id``."""
        expected = self.clients.get(client_id)
        # compare_digest even in an emulator: the habit should not depend on the context.
        return expected is not None and hmac.compare_digest(expected, secret)

    def issue_token(self, scope: str) -> str:
        """A fresh opaque access token valid for ``token_ttl_s`` from now."""
        token = secrets.token_urlsafe(32)
        self.tokens[token] = IssuedToken(self.clock() + self.token_ttl_s, scope)
        self.counters.tokens_issued += 1
        return token

    def revoke_all(self) -> int:
        """Invalidate every issued token now; the number newly revoked. PATs stay valid."""
        live = [t for t in self.tokens.values() if not t.revoked]
        for issued in live:
            issued.revoked = True
        return len(live)

    def authenticate(self, authorization: str | None) -> AuthFailure | None:
        """None if the ``Authorization`` header grants access, else why not."""
        if not self.auth:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return AuthFailure(401, MISSING_CREDENTIAL)
        if token in self.pat_tokens:
            return None
        issued = self.tokens.get(token)
        if issued is None:
            return AuthFailure("UNAUTHENTICATED", "Invalid access token.")
        if issued.revoked:
            return AuthFailure("UNAUTHENTICATED", "Access token has been revoked.")
        if self.clock() >= issued.expires_at:
            return AuthFailure("UNAUTHENTICATED", "Access token has expired.")
        return None

    def reset(self) -> None:
        """Clear the counters and switch every fault off."""
        self.counters = Counters()
        self.faults.reset()
