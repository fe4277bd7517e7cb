"""OIDC token federation: an external identity provider's JWT swapped for a workspace token.

    IdentityProvider       a stand-in IdP (tests, local runs): an RSA key signing RS256 JWTs
    verify_subject_token   a JWT checked against the state's federation policies
    token_exchange_grant   ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``

A subject token is refused with 400 ``invalid_request``, as RFC 8693 section 2.2.2
prescribes for an invalid or unacceptable subject token, with a description that says
which check failed (issuer, signature, expiry, audience, subject) and never repeats the
token. A ``client_id`` no service-principal policy names is 401 ``invalid_client``.
``exp`` and ``nbf`` are epoch seconds, so they are checked against the state's
``wall_clock`` (not its monotonic ``clock``, which times the emulator's own tokens).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import authlib.deprecate  # noqa: F401  # imported first: it installs an "always" warning filter

with warnings.catch_warnings():
    # authlib.jose is deprecated in favour of joserfc from authlib 1.7 on, but it is what
    # every authlib the project allows (>= 1.3) provides; the warning would print at start.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.jose import JsonWebKey, JsonWebToken
    from authlib.jose.errors import JoseError

from bridge.emulator.oauth import (
    OAuthError,
    OptionalGrant,
    TokenRequest,
    bearer_token_body,
    granted_scope,
)
from bridge.emulator.state import EmulatorState, FederatedExchange, FederationPolicy

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SIGNING_ALGORITHM = "RS256"

_JWT = JsonWebToken([SIGNING_ALGORITHM])  # one algorithm: no alg=none, no HS256 confusion


class IdentityProvider:
    """A stand-in external identity provider that issues RS256-signed JWTs.

    ``with`` a test: ``idp = IdentityProvider("https://idp.example")``, then
    ``state.federation_policies.append(idp.policy("databricks"))`` and hand
    ``idp.issue(audience="databricks", subject="svc")`` to the client. ``clock`` is
    wall-clock epoch seconds, like the ``exp`` it computes; share one fake clock with
    :attr:`EmulatorState.wall_clock` to expire tokens without waiting (it may be swapped
    later, so one slow-to-generate key can serve many tests).
    """

    def __init__(
        self,
        issuer: str,
        *,
        kid: str | None = None,
        key_size: int = 2048,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.kid = kid if kid is not None else secrets.token_hex(8)
        self._key: Any = JsonWebKey.generate_key("RSA", key_size, {"kid": self.kid}, True)
        self.clock = clock

    def issue(
        self,
        *,
        audience: str | Sequence[str],
        subject: str,
        expires_in: float = 3600.0,
        issued_at: float | None = None,
        claims: Mapping[str, object] | None = None,
    ) -> str:
        """A signed JWT; ``expires_in`` may be negative for one that has already expired.

        Every token gets a fresh ``jti``, which the emulator records per exchange.
        """
        iat = self.clock() if issued_at is None else issued_at
        payload: dict[str, object] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience if isinstance(audience, str) else list(audience),
            "iat": int(iat),
            "exp": int(iat + expires_in),
            "jti": secrets.token_hex(12),
            **(claims or {}),
        }
        header = {"alg": SIGNING_ALGORITHM, "typ": "JWT", "kid": self.kid}
        token: bytes = _JWT.encode(header, payload, self._key)
        return token.decode("ascii")

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (``{"keys": [...]}``) a federation policy trusts."""
        return {"keys": [{**self._key.as_dict(is_private=False), "use": "sig", "alg": "RS256"}]}

    def write_jwks(self, path: Path) -> Path:
        """Write :meth:`jwks` as JSON to ``path`` (for ``emulate --federation-jwks``)."""
        path.write_text(json.dumps(self.jwks(), indent=2))
        return path

    def policy(
        self,
        audiences: str | Iterable[str],
        *,
        subject: str | None = None,
        client_id: str | None = None,
    ) -> FederationPolicy:
        """A federation policy trusting this provider's tokens for ``audiences``."""
        wanted = frozenset({audiences} if isinstance(audiences, str) else audiences)
        return FederationPolicy(self.issuer, wanted, self.jwks(), subject, client_id)


def load_jwks(path: Path) -> dict[str, Any]:
    """A JWK Set from a JSON file; ValueError when it is not one."""
    try:
        jwks = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read a JWK Set from {path}: {exc}") from exc
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError(f'{path} is not a JWK Set: expected {{"keys": [...]}}')
    try:
        JsonWebKey.import_key_set(jwks)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} holds an unusable key: {exc}") from exc
    return jwks


@dataclass(frozen=True)
class VerifiedSubject:
    """A subject token that passed a policy: the policy and the token's claims."""

    policy: FederationPolicy
    claims: Mapping[str, Any]


def _refused(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description)


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, not yet trusted: only to pick the policy whose keys verify it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _refused("The subject token is not a JWT (expected three dot-separated parts).")
    try:
        decoded = [
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            for part in parts[:2]
        ]
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refused("The subject token is not a JWT (undecodable header or claims).") from exc
    header, claims = decoded
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _refused("The subject token is not a JWT (header or claims not an object).")
    return header, claims


def _policies_for(state: EmulatorState, client_id: str | None) -> list[FederationPolicy]:
    policies = [p for p in state.federation_policies if p.client_id == client_id]
    if policies:
        return policies
    if client_id is not None:
        raise OAuthError(
            401, "invalid_client", f"No federation policy exists for service principal {client_id}."
        )
    raise _refused(
        "No account-wide federation policy exists; workload identity federation needs the "
        "service principal's client_id."
    )


def _verify_signature(token: str, policy: FederationPolicy) -> Mapping[str, Any] | None:
    try:
        claims: Mapping[str, Any] = _JWT.decode(token, JsonWebKey.import_key_set(policy.jwks))
    except (JoseError, ValueError):  # ValueError: no key with the token's kid
        return None
    return claims


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _check_claims(
    state: EmulatorState, policy: FederationPolicy, claims: Mapping[str, Any]
) -> None:
    now, leeway = state.wall_clock(), state.jwt_leeway_s
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise _refused("The subject token has no exp claim.")
    if now >= exp + leeway:
        raise _refused(
            f"The subject token expired at {_iso(exp)} (emulator wall clock {_iso(now)})."
        )
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now + leeway < nbf:
        raise _refused(f"The subject token is not valid before {_iso(nbf)}.")
    aud = claims.get("aud")
    audiences = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
    if not audiences & policy.audiences:
        raise _refused(
            f"The subject token's audience {sorted(map(str, audiences))} is not one the "
            f"federation policy accepts ({sorted(policy.audiences)})."
        )
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise _refused("The subject token has no sub claim.")
    if policy.subject is not None and subject != policy.subject:
        raise _refused(
            f"The subject token's subject {subject!r} is not the one the federation policy "
            f"allows ({policy.subject!r})."
        )


def verify_subject_token(
    state: EmulatorState, token: str, client_id: str | None
) -> VerifiedSubject:
    """The policy that accepts ``token`` and its claims; OAuthError saying why none does."""
    header, unverified = _unverified_parts(token)
    if header.get("alg") != SIGNING_ALGORITHM:
        raise _refused(f"The subject token must be signed with {SIGNING_ALGORITHM}.")
    issuer = unverified.get("iss")
    trusting = [p for p in _policies_for(state, client_id) if p.issuer == issuer]
    if not trusting:
        raise _refused(f"The subject token's issuer {issuer!r} is not trusted by any policy.")
    first_refusal: OAuthError | None = None
    for policy in trusting:
        claims = _verify_signature(token, policy)
        if claims is None:
            first_refusal = first_refusal or _refused(
                f"The subject token's signature does not verify with the keys of {issuer!r}."
            )
            continue
        try:
            _check_claims(state, policy, claims)
        except OAuthError as refusal:
            first_refusal = first_refusal or refusal
            continue
        return VerifiedSubject(policy, claims)
    assert first_refusal is not None  # trusting is not empty
    raise first_refusal


def _exchange(request: TokenRequest, state: EmulatorState) -> dict[str, object]:
    if request.basic is not None or "client_secret" in request.form:
        raise OAuthError(
            400, "invalid_request", "Token exchange takes no client secret: send client_id only."
        )
    subject_token = request.form.get("subject_token")
    if not subject_token:
        raise OAuthError(400, "invalid_request", "Missing subject_token.")
    token_type = request.form.get("subject_token_type")
    if token_type != JWT_TOKEN_TYPE:
        raise OAuthError(
            400,
            "invalid_request",
            f"subject_token_type must be {JWT_TOKEN_TYPE}, got {token_type!r}.",
        )
    client_id = request.form.get("client_id") or None
    scope = granted_scope(request)
    verified = verify_subject_token(state, subject_token, client_id)
    jti = verified.claims.get("jti")
    state.counters.exchanges.append(
        FederatedExchange(
            issuer=verified.policy.issuer,
            subject=str(verified.claims["sub"]),
            jwt_id=jti if isinstance(jti, str) else None,
            client_id=client_id,
        )
    )
    return {**bearer_token_body(state, scope), "issued_token_type": ACCESS_TOKEN_TYPE}


token_exchange_grant = OptionalGrant(
    _exchange,
    enabled=lambda state: bool(state.federation_policies),
    disabled_reason="Token exchange is not enabled: this workspace has no federation policy.",
)
"""RFC 8693 token exchange, offered while the state has a federation policy."""
