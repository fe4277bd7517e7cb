"""Everything the emulator remembers: endpoints, credentials, tokens, faults, counters.

One :class:`EmulatorState` is shared by the apps (the workspace and, for route-optimized
endpoints, the data plane, each on its server's event loop) and by the test that owns it.
Tests steer time through the injectable clocks: ``clock`` (monotonic) for the emulator's
own tokens and outages, ``wall_clock`` (epoch seconds) for the ``exp`` of external JWTs.
"""

from __future__ import annotations

import hmac
import secrets
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class FederatedExchange:
    """One accepted OIDC token exchange: whose external token was swapped for ours.

    ``jwt_id`` is the subject token's ``jti`` (None when it had none), so a test can tell
    a rotated IdP token from the one before it without keeping the token itself.
    """

    issuer: str
    subject: str
    jwt_id: str | None
    client_id: str | None


@dataclass
class Counters:
    """What the emulator has served since start or the last reset.

    ``requests_by_status`` counts the answers of the token, invocation and endpoint-GET
    routes of both planes; discovery and ``/_emulator/`` routes are not counted, nor are
    dropped connections (``connections_dropped``), which never got a status.
    ``endpoints`` counts invocations on the workspace paths, ``data_plane`` those on a
    route-optimized endpoint's own URL. ``tokens_issued`` counts every access token,
    ``scoped_tokens_issued`` those of them scoped to endpoints (jwt-bearer), and
    ``exchanges`` lists the accepted OIDC federation exchanges in order.
    ``invocations_in_progress`` and its high-water mark ``peak_invocations_in_progress``
    count invocations being answered at once (Databricks limits an endpoint's concurrency);
    ``peak_admitted_in_progress`` is the most invocations of one endpoint that held a
    capacity slot at once (never over the ``capacity`` fault), and
    ``rejected_over_capacity`` counts the 429s answered because every slot was taken.
    """

    requests_by_status: Counter[int] = field(default_factory=Counter)
    rows_scored: int = 0
    tokens_issued: int = 0
    scoped_tokens_issued: int = 0
    connections_dropped: int = 0
    invocations_in_progress: int = 0
    peak_invocations_in_progress: int = 0
    peak_admitted_in_progress: int = 0
    rejected_over_capacity: int = 0
    endpoints: dict[str, EndpointCounters] = field(default_factory=dict)
    data_plane: dict[str, EndpointCounters] = field(default_factory=dict)
    exchanges: list[FederatedExchange] = field(default_factory=list)

    def invocation_started(self) -> None:
        self.invocations_in_progress += 1
        self.peak_invocations_in_progress = max(
            self.peak_invocations_in_progress, self.invocations_in_progress
        )

    def invocation_ended(self) -> None:
        self.invocations_in_progress -= 1

    def invocation_admitted(self, slots_in_use: int) -> None:
        """An invocation took a capacity slot; its endpoint now has ``slots_in_use``."""
        self.peak_admitted_in_progress = max(self.peak_admitted_in_progress, slots_in_use)

    def endpoint(self, name: str) -> EndpointCounters:
        """The workspace-path counters of endpoint ``name``, created on first use."""
        return self.endpoints.setdefault(name, EndpointCounters())

    def data_plane_endpoint(self, name: str) -> EndpointCounters:
        """The data-plane counters of endpoint ``name``, created on first use."""
        return self.data_plane.setdefault(name, EndpointCounters())

    def as_json(self) -> dict[str, object]:
        """A JSON-ready copy; status codes become string keys."""
        return {
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
            "rows_scored": self.rows_scored,
            "tokens_issued": self.tokens_issued,
            "scoped_tokens_issued": self.scoped_tokens_issued,
            "connections_dropped": self.connections_dropped,
            "peak_invocations_in_progress": self.peak_invocations_in_progress,
            "peak_admitted_in_progress": self.peak_admitted_in_progress,
            "rejected_over_capacity": self.rejected_over_capacity,
            "endpoints": _endpoint_counters_json(self.endpoints),
            "data_plane": _endpoint_counters_json(self.data_plane),
            "exchanges": [
                {
                    "issuer": e.issuer,
                    "subject": e.subject,
                    "jwt_id": e.jwt_id,
                    "client_id": e.client_id,
                }
                for e in self.exchanges
            ],
        }


def _endpoint_counters_json(counters: Mapping[str, EndpointCounters]) -> dict[str, object]:
    return {
        name: {
            "requests": c.requests,
            "rows_scored": c.rows_scored,
            "by_status": {str(k): v for k, v in sorted(c.by_status.items())},
        }
        for name, c in sorted(counters.items())
    }


@dataclass
class IssuedToken:
    """An OAuth access token the emulator handed out.

    A workspace token has no ``endpoint_ids``; a scoped token (jwt-bearer with
    ``authorization_details``) names the endpoint ids whose data plane it may query and
    is good for nothing else.
    """

    expires_at: float
    scope: str
    revoked: bool = False
    endpoint_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FederationPolicy:
    """Trust in an external identity provider's JWTs, like a Databricks federation policy.

    A subject token passes when it is RS256-signed by a key of ``jwks`` (a JWK Set,
    ``{"keys": [...]}``, public keys), its ``iss`` is ``issuer``, its ``aud`` names one
    of ``audiences``, it has not expired and, when ``subject`` is set, its ``sub`` is
    that. ``client_id`` makes it a service principal's policy (workload identity
    federation): it then applies only to exchanges that send that ``client_id``, and a
    policy without one (account-wide federation) only to exchanges that send none.
    """

    issuer: str
    audiences: frozenset[str]
    jwks: Mapping[str, Any]
    subject: str | None = None
    client_id: str | None = None


@dataclass(frozen=True)
class InvocationRecord:
    """An answered invocation as an inference table logs it: the id the emulator gave it
    (its ``x-request-id``), the caller's ``client_request_id``, the ``traceparent`` header
    it arrived with, and how many rows it scored."""

    request_id: str
    client_request_id: str | None
    traceparent: str | None
    rows: int


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

    OIDC federation: ``federation_policies`` are the trusted external issuers (token
    exchange is refused while there are none); the ``exp``/``nbf`` of their JWTs are
    epoch seconds and are checked against ``wall_clock``, allowing ``jwt_leeway_s``.

    Route optimization: endpoints in ``route_optimized`` are queried on the data plane
    at ``data_plane_url`` (set by the running data-plane server) with tokens scoped to
    them, which live ``scoped_token_ttl_s`` (default ``token_ttl_s``). Databricks
    refuses the workspace invocation path of route-optimized endpoints created since
    2025-09-22 and serves it for older ones: ``route_optimized_workspace_path`` picks
    the older behaviour.
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
    federation_policies: list[FederationPolicy] = field(default_factory=list)
    wall_clock: Callable[[], float] = time.time
    jwt_leeway_s: float = 0.0
    route_optimized: set[str] = field(default_factory=set)
    data_plane_url: str | None = None
    scoped_token_ttl_s: int | None = None
    route_optimized_workspace_path: bool = False
    # The latest answered invocations, oldest first (bounded: the emulator runs for hours).
    invocation_log: deque[InvocationRecord] = field(default_factory=lambda: deque(maxlen=10_000))

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

    def is_route_optimized(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is queried on the data plane."""
        return endpoint in self.route_optimized and self.serves(endpoint)

    def set_route_optimized(self, endpoint: str, optimized: bool = True) -> None:
        """Turn route optimization of ``endpoint`` on or off."""
        if optimized:
            self.route_optimized.add(endpoint)
        else:
            self.route_optimized.discard(endpoint)

    def endpoint_by_id(self, endpoint_id: str) -> str | None:
        """The name of the known endpoint whose id is ``endpoint_id``, if any."""
        for name in sorted(self.endpoints | self.route_optimized):
            if self.endpoint_id(name) == endpoint_id:
                return name
        return None

    def invocation_url(self, endpoint: str) -> str | None:
        """The data-plane URL of a route-optimized endpoint; None while none is served."""
        if self.data_plane_url is None or not self.is_route_optimized(endpoint):
            return None
        base = self.data_plane_url.rstrip("/")
        return f"{base}/{self.workspace_id}/serving-endpoints/{endpoint}/invocations"

    @property
    def scoped_ttl_s(self) -> int:
        """The lifetime of endpoint-scoped tokens."""
        return self.token_ttl_s if self.scoped_token_ttl_s is None else self.scoped_token_ttl_s

    def issue_token(self, scope: str, *, endpoint_ids: Set[str] = frozenset()) -> str:
        """A fresh opaque access token: a workspace token valid ``token_ttl_s`` from now,
        or with ``endpoint_ids`` a data-plane token for them valid ``scoped_ttl_s``."""
        token = secrets.token_urlsafe(32)
        ttl = self.scoped_ttl_s if endpoint_ids else self.token_ttl_s
        self.tokens[token] = IssuedToken(
            self.clock() + ttl, scope, endpoint_ids=frozenset(endpoint_ids)
        )
        self.counters.tokens_issued += 1
        if endpoint_ids:
            self.counters.scoped_tokens_issued += 1
        return token

    def live_token(self, token: str) -> IssuedToken | AuthFailure:
        """The issued token ``token`` if known, unrevoked and unexpired, else why not."""
        issued = self.tokens.get(token)
        if issued is None:
            return AuthFailure("UNAUTHENTICATED", "Invalid access token.")
        if issued.revoked:
            return AuthFailure("UNAUTHENTICATED", "Access token has been revoked.")
        if self.clock() >= issued.expires_at:
            return AuthFailure("UNAUTHENTICATED", "Access token has expired.")
        return issued

    def revoke_all(self, *, scoped_only: bool = False) -> int:
        """Invalidate every issued token now (with ``scoped_only``, only endpoint-scoped
        ones); the number newly revoked. PATs stay valid."""
        live = [
            t for t in self.tokens.values() if not t.revoked and (t.endpoint_ids or not scoped_only)
        ]
        for issued in live:
            issued.revoked = True
        return len(live)

    def authenticate(
        self, authorization: str | None, *, endpoint: str | None = None
    ) -> AuthFailure | None:
        """None if the ``Authorization`` header grants access, else why not.

        Without ``endpoint`` the request is for the workspace (its APIs and invocation
        paths), where scoped tokens are refused; with it, for that endpoint's data plane,
        which takes only OAuth tokens scoped to that endpoint.
        """
        if not self.auth:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return AuthFailure(401, MISSING_CREDENTIAL)
        if token in self.pat_tokens:
            if endpoint is None:
                return None
            return AuthFailure(
                "UNAUTHENTICATED",
                "Route-optimized endpoints accept only OAuth tokens, not personal access tokens.",
            )
        issued = self.live_token(token)
        if isinstance(issued, AuthFailure):
            return issued
        if endpoint is None:
            if issued.endpoint_ids:
                return AuthFailure(
                    "UNAUTHENTICATED",
                    "This token is scoped to a serving endpoint's data plane and is not "
                    "valid for workspace APIs.",
                )
            return None
        if not issued.endpoint_ids:
            return AuthFailure(
                "UNAUTHENTICATED",
                f"Endpoint '{endpoint}' is route-optimized: query it with a token scoped to it "
                "(authorization_details), not with a workspace token.",
            )
        if self.endpoint_id(endpoint) not in issued.endpoint_ids:
            return AuthFailure(
                "UNAUTHENTICATED", f"This token is not scoped to serving endpoint '{endpoint}'."
            )
        return None

    def reset(self) -> None:
        """Clear the counters and switch every fault off."""
        self.counters = Counters()
        self.faults.reset()
