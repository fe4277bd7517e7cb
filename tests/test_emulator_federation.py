"""The emulator's OIDC token federation and route-optimized data plane over real sockets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from bridge.emulator import (
    JWT_BEARER,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    DataPlaneServer,
    EmulatorServer,
    EmulatorState,
    FederationPolicy,
    IdentityProvider,
    build_state,
    load_jwks,
    score,
)
from tests.support.clock import FakeClock
from tests.support.sdk import workspace_client

CLIENT_ID = "sp-client"
CLIENT_SECRET = "sp-secret"
PAT = "dapi-static-token"
ISSUER = "https://idp.example.com"
AUDIENCE = "databricks-workspace"
SUBJECT = "system:serviceaccount:scoring:bridge"
WORKLOAD_SP = "7b2d0a0e-workload-sp"
TTL_S = 3600
SCOPED_TTL_S = 300
ROUTED, OTHER_ROUTED, PLAIN = "fraud-model", "churn-model", "plain-model"
ROWS: list[dict[str, object]] = [{"amount": 12.5, "age": 3}, {"amount": -4, "age": 0.5}]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def idp_key() -> IdentityProvider:
    # RSA key generation is the slow part; the clock is swapped per test below.
    return IdentityProvider(ISSUER, kid="idp-key-1")


@pytest.fixture
def idp(idp_key: IdentityProvider, wall: FakeClock) -> IdentityProvider:
    idp_key.clock = wall
    return idp_key


@pytest.fixture
def state(clock: FakeClock, wall: FakeClock, idp: IdentityProvider) -> EmulatorState:
    return EmulatorState(
        endpoints=frozenset({ROUTED, OTHER_ROUTED, PLAIN}),
        clients={CLIENT_ID: CLIENT_SECRET},
        pat_tokens={PAT},
        token_ttl_s=TTL_S,
        scoped_token_ttl_s=SCOPED_TTL_S,
        clock=clock,
        wall_clock=wall,
        federation_policies=[idp.policy(AUDIENCE)],
        route_optimized={ROUTED, OTHER_ROUTED},
    )


@pytest.fixture
def server(state: EmulatorState) -> Iterator[EmulatorServer]:
    with EmulatorServer(state, data_plane=True) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def exchange(http: httpx.Client, subject_token: str, /, **extra: str) -> httpx.Response:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TOKEN_TYPE,
        "scope": "all-apis",
        **extra,
    }
    return http.post("/oidc/v1/token", data=form)


def workspace_token(http: httpx.Client) -> str:
    response = http.post(
        "/oidc/v1/token", data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def permission(endpoint_id: str, actions: list[str] | None = None) -> str:
    return json.dumps(
        [
            {
                "type": "workspace_permission",
                "object_type": "serving-endpoints",
                "object_path": f"/serving-endpoints/{endpoint_id}",
                "actions": ["query_inference_endpoint"] if actions is None else actions,
            }
        ]
    )


def scoped(http: httpx.Client, assertion: str, details: str | None) -> httpx.Response:
    form = {"grant_type": JWT_BEARER, "assertion": assertion}
    if details is not None:
        form["authorization_details"] = details
    return http.post("/oidc/v1/token", data=form)


def scoped_token(http: httpx.Client, state: EmulatorState, endpoint: str = ROUTED) -> str:
    response = scoped(http, workspace_token(http), permission(state.endpoint_id(endpoint)))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def data_plane_path(state: EmulatorState, endpoint: str = ROUTED) -> str:
    url = state.invocation_url(endpoint)
    assert url is not None
    return url


def assert_refused(response: httpx.Response, status: int, error: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert fragment in body["error_description"]
    assert response.headers["cache-control"] == "no-store"


# --- token exchange (OIDC federation) -------------------------------------------------


def test_token_exchange_issues_a_workspace_token(
    http: httpx.Client, idp: IdentityProvider, state: EmulatorState
) -> None:
    subject_token = idp.issue(audience=AUDIENCE, subject=SUBJECT)
    response = exchange(http, subject_token)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == TTL_S
    assert body["scope"] == "all-apis"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    token = body["access_token"]
    assert token != subject_token
    plain = f"/serving-endpoints/{PLAIN}/invocations"
    scored = http.post(plain, json={"dataframe_records": ROWS}, headers=bearer(token))
    assert scored.json() == {"predictions": [score(row) for row in ROWS]}
    [seen] = state.counters.exchanges
    assert (seen.issuer, seen.subject, seen.client_id) == (ISSUER, SUBJECT, None)
    assert seen.jwt_id is not None
    assert seen.jwt_id in json.dumps(state.counters.as_json())


def _other_issuer(idp: IdentityProvider) -> str:
    other = IdentityProvider("https://evil.example.com", kid=idp.kid, clock=idp.clock)
    return other.issue(audience=AUDIENCE, subject=SUBJECT)


def _impostor(idp: IdentityProvider) -> str:
    # Same issuer, same key id, different key: only the signature gives it away.
    impostor = IdentityProvider(ISSUER, kid=idp.kid, clock=idp.clock)
    return impostor.issue(audience=AUDIENCE, subject=SUBJECT)


@pytest.mark.parametrize(
    ("mint", "fragment"),
    [
        (lambda idp: idp.issue(audience="someone-else", subject=SUBJECT), "audience"),
        (_other_issuer, "issuer 'https://evil.example.com' is not trusted"),
        (lambda idp: idp.issue(audience=AUDIENCE, subject=SUBJECT, expires_in=-1), "expired at"),
        (_impostor, "signature does not verify"),
        (lambda idp: idp.issue(audience=AUDIENCE, subject=SUBJECT, claims={"sub": ""}), "no sub"),
        (lambda idp: idp.issue(audience=AUDIENCE, subject=SUBJECT)[:-4] + "AAAA", "signature"),
        (lambda idp: "not-a-jwt", "not a JWT"),
    ],
    ids=["audience", "issuer", "expired", "signature", "no-subject", "tampered", "garbage"],
)
def test_refused_subject_tokens_are_invalid_request(
    http: httpx.Client,
    idp: IdentityProvider,
    state: EmulatorState,
    mint: Callable[[IdentityProvider], str],
    fragment: str,
) -> None:
    subject_token = mint(idp)
    response = exchange(http, subject_token)

    # RFC 8693 2.2.2: an unacceptable subject token is invalid_request.
    assert_refused(response, 400, "invalid_request", fragment)
    assert subject_token not in response.text
    assert state.counters.tokens_issued == 0
    assert state.counters.exchanges == []


def test_expiry_is_judged_on_the_wall_clock(
    http: httpx.Client, idp: IdentityProvider, wall: FakeClock, clock: FakeClock
) -> None:
    subject_token = idp.issue(audience=AUDIENCE, subject=SUBJECT, expires_in=60)
    clock.advance(10_000)  # the monotonic clock does not matter for JWTs
    assert exchange(http, subject_token).status_code == 200
    wall.advance(60)
    assert_refused(exchange(http, subject_token), 400, "invalid_request", "expired at")


def test_not_before_and_subject_pinned_by_the_policy(
    http: httpx.Client, idp: IdentityProvider, state: EmulatorState, wall: FakeClock
) -> None:
    early = idp.issue(audience=AUDIENCE, subject=SUBJECT, claims={"nbf": int(wall() + 30)})
    assert_refused(exchange(http, early), 400, "invalid_request", "not valid before")

    state.federation_policies = [idp.policy([AUDIENCE, "other"], subject=SUBJECT)]
    stranger = idp.issue(audience=AUDIENCE, subject="someone-else")
    assert_refused(exchange(http, stranger), 400, "invalid_request", "subject 'someone-else'")
    listed = idp.issue(audience=["other", "unrelated"], subject=SUBJECT)
    assert exchange(http, listed).status_code == 200


def test_workload_identity_federation_needs_the_service_principal(
    http: httpx.Client, idp: IdentityProvider, state: EmulatorState
) -> None:
    state.federation_policies = [idp.policy(AUDIENCE, client_id=WORKLOAD_SP)]
    subject_token = idp.issue(audience=AUDIENCE, subject=SUBJECT)

    assert exchange(http, subject_token, client_id=WORKLOAD_SP).status_code == 200
    assert state.counters.exchanges[-1].client_id == WORKLOAD_SP
    assert_refused(exchange(http, subject_token), 400, "invalid_request", "account-wide")
    unknown = exchange(http, subject_token, client_id="nobody")
    assert_refused(unknown, 401, "invalid_client", "nobody")


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        ({"subject_token": ""}, "Missing subject_token"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "subject_token_type"),
        ({"client_secret": "s"}, "no client secret"),
        ({"scope": "sql"}, "Unsupported scope"),
    ],
)
def test_malformed_exchange_requests(
    http: httpx.Client, idp: IdentityProvider, form: dict[str, str], fragment: str
) -> None:
    response = exchange(http, idp.issue(audience=AUDIENCE, subject=SUBJECT), **form)
    error = "invalid_scope" if "scope" in form else "invalid_request"
    assert_refused(response, 400, error, fragment)


def test_token_exchange_is_offered_only_with_a_federation_policy(
    http: httpx.Client, idp: IdentityProvider, state: EmulatorState
) -> None:
    metadata = http.get("/oidc/.well-known/oauth-authorization-server").json()
    assert metadata["grant_types_supported"] == sorted(
        ["client_credentials", TOKEN_EXCHANGE, JWT_BEARER]
    )
    state.federation_policies = []
    state.route_optimized = set()
    metadata = http.get("/oidc/.well-known/oauth-authorization-server").json()
    assert metadata["grant_types_supported"] == ["client_credentials"]
    response = exchange(http, idp.issue(audience=AUDIENCE, subject=SUBJECT))
    assert_refused(response, 400, "unsupported_grant_type", "no federation policy")


def test_databricks_sdk_file_oidc_exchanges_through_the_emulator(
    server: EmulatorServer,
    idp: IdentityProvider,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The SDK's own federation flow (discovery, token exchange, query) is the compatibility bar.
    for name in ["DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "missing.cfg"))
    token_file = tmp_path / "idp-token"
    token_file.write_text(idp.issue(audience=AUDIENCE, subject=SUBJECT))
    config = Config(host=server.url, auth_type="file-oidc", oidc_token_filepath=str(token_file))
    client = WorkspaceClient(config=config)
    result = client.serving_endpoints.query(PLAIN, dataframe_records=ROWS)
    assert result.predictions == [score(row) for row in ROWS]
    assert [e.subject for e in server.state.counters.exchanges] == [SUBJECT]


# --- route-optimized endpoints: scoped tokens and the data plane ------------------------


def test_route_optimized_endpoint_description(http: httpx.Client, state: EmulatorState) -> None:
    detail = http.get(f"/api/2.0/serving-endpoints/{ROUTED}", headers=bearer(PAT)).json()
    data_plane = state.data_plane_url
    assert data_plane is not None
    assert data_plane != str(http.base_url).rstrip("/")
    url = f"{data_plane}/{state.workspace_id}/serving-endpoints/{ROUTED}/invocations"
    assert detail["route_optimized"] is True
    assert detail["endpoint_url"] == url
    query_info = detail["data_plane_info"]["query_info"]
    assert query_info["endpoint_url"] == url
    assert query_info["authorization_details"] == permission(detail["id"])

    plain = http.get(f"/api/2.0/serving-endpoints/{PLAIN}", headers=bearer(PAT)).json()
    assert plain["route_optimized"] is False
    assert "endpoint_url" not in plain
    assert "data_plane_info" not in plain


def test_jwt_bearer_scopes_a_token_to_one_endpoint(
    http: httpx.Client, state: EmulatorState
) -> None:
    details = permission(state.endpoint_id(ROUTED))
    response = scoped(http, workspace_token(http), details)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_in"] == SCOPED_TTL_S
    assert body["authorization_details"] == json.loads(details)
    token = body["access_token"]
    scored = http.post(
        data_plane_path(state), json={"dataframe_records": ROWS}, headers=bearer(token)
    )
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"predictions": [score(row) for row in ROWS]}
    assert scored.headers["served-model-name"] == f"{ROUTED}-1"
    counters = state.counters
    assert (counters.tokens_issued, counters.scoped_tokens_issued) == (2, 1)
    assert counters.data_plane[ROUTED].by_status == {200: 1}
    assert counters.data_plane[ROUTED].rows_scored == 2
    assert ROUTED not in counters.endpoints
    stats = http.get("/_emulator/stats").json()
    assert stats["data_plane"][ROUTED]["by_status"] == {"200": 1}


@pytest.mark.parametrize(
    ("details", "error", "fragment"),
    [
        (lambda _state: None, "invalid_request", "Missing authorization_details"),
        (lambda _state: "{not json", "invalid_authorization_details", "not valid JSON"),
        (lambda _state: "[]", "invalid_authorization_details", "non-empty JSON array"),
        (lambda _state: permission("0" * 32), "invalid_authorization_details", "No serving"),
        (
            lambda state: permission(state.endpoint_id(ROUTED), actions=["manage"]),
            "invalid_authorization_details",
            "actions must include",
        ),
    ],
    ids=["unscoped", "garbled", "empty", "unknown-endpoint", "no-query-action"],
)
def test_jwt_bearer_needs_valid_authorization_details(
    http: httpx.Client,
    state: EmulatorState,
    details: Callable[[EmulatorState], str | None],
    error: str,
    fragment: str,
) -> None:
    response = scoped(http, workspace_token(http), details(state))
    assert_refused(response, 400, error, fragment)
    assert state.counters.scoped_tokens_issued == 0


def test_jwt_bearer_needs_a_live_workspace_token_as_assertion(
    http: httpx.Client, state: EmulatorState, clock: FakeClock
) -> None:
    details = permission(state.endpoint_id(ROUTED))
    assert_refused(scoped(http, "made-up", details), 400, "invalid_grant", "Invalid access token")
    assert_refused(scoped(http, PAT, details), 400, "invalid_grant", "personal access token")
    assert_refused(
        scoped(http, scoped_token(http, state), details), 400, "invalid_grant", "workspace token"
    )
    revoked = workspace_token(http)
    state.revoke_all()
    assert_refused(scoped(http, revoked, details), 400, "invalid_grant", "revoked")
    expiring = workspace_token(http)
    clock.advance(TTL_S)
    assert_refused(scoped(http, expiring, details), 400, "invalid_grant", "expired")


def test_data_plane_accepts_only_tokens_scoped_to_its_endpoint(
    http: httpx.Client, state: EmulatorState
) -> None:
    body = {"instances": [1]}
    ws_token = workspace_token(http)
    for credential in [ws_token, PAT, scoped_token(http, state, OTHER_ROUTED)]:
        response = http.post(data_plane_path(state), json=body, headers=bearer(credential))
        assert response.status_code == 401, response.text
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert http.post(data_plane_path(state), json=body).status_code == 401

    token = scoped_token(http, state)
    assert http.post(data_plane_path(state), json=body, headers=bearer(token)).is_success
    # ... and it is good for nothing else: not workspace APIs, not another endpoint.
    describe = http.get(f"/api/2.0/serving-endpoints/{ROUTED}", headers=bearer(token))
    assert describe.status_code == 401
    assert "scoped" in describe.json()["message"]
    other = http.post(data_plane_path(state, OTHER_ROUTED), json=body, headers=bearer(token))
    assert other.status_code == 401
    assert state.counters.data_plane[ROUTED].by_status == {401: 4, 200: 1}


def test_data_plane_serves_only_route_optimized_endpoints_of_its_workspace(
    http: httpx.Client, state: EmulatorState
) -> None:
    token = scoped_token(http, state)
    base = state.data_plane_url
    wrong_workspace = f"{base}/999/serving-endpoints/{ROUTED}/invocations"
    not_optimized = f"{base}/{state.workspace_id}/serving-endpoints/{PLAIN}/invocations"
    for url in [wrong_workspace, not_optimized]:
        response = http.post(url, json={"instances": [1]}, headers=bearer(token))
        assert response.status_code == 404
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert http.post(f"{base}/oidc/v1/token", data={}).status_code == 404


def test_scoped_tokens_expire_on_their_own_ttl(
    http: httpx.Client, state: EmulatorState, clock: FakeClock
) -> None:
    token = scoped_token(http, state)
    clock.advance(SCOPED_TTL_S - 1)
    url = data_plane_path(state)
    assert http.post(url, json={"instances": [1]}, headers=bearer(token)).status_code == 200
    clock.advance(1)
    expired = http.post(url, json={"instances": [1]}, headers=bearer(token))
    assert expired.status_code == 401
    assert expired.json()["message"] == "Access token has expired."


def test_revoking_only_scoped_tokens_keeps_workspace_tokens(
    http: httpx.Client, state: EmulatorState
) -> None:
    ws_token = workspace_token(http)
    token = scoped_token(http, state)
    assert state.revoke_all(scoped_only=True) == 1
    url = data_plane_path(state)
    assert http.post(url, json={"instances": [1]}, headers=bearer(token)).status_code == 401
    describe = http.get(f"/api/2.0/serving-endpoints/{ROUTED}", headers=bearer(ws_token))
    assert describe.status_code == 200


def test_workspace_path_of_a_route_optimized_endpoint(
    http: httpx.Client, state: EmulatorState
) -> None:
    path = f"/serving-endpoints/{ROUTED}/invocations"
    refused = http.post(path, json={"instances": [1]}, headers=bearer(workspace_token(http)))
    assert refused.status_code == 400
    assert "endpoint_url" in refused.json()["message"]
    # Endpoints created before 2025-09-22 serve both paths.
    state.route_optimized_workspace_path = True
    legacy = http.post(path, json={"instances": [1]}, headers=bearer(workspace_token(http)))
    assert legacy.status_code == 200
    assert state.counters.endpoints[ROUTED].by_status == {400: 1, 200: 1}


def test_control_routes_steer_route_optimization_and_revoke_scoped_tokens(
    http: httpx.Client, state: EmulatorState
) -> None:
    switched = http.put(f"/_emulator/endpoints/{PLAIN}", json={"route_optimized": True})
    assert switched.json() == {"route_optimized": True}
    detail = http.get(f"/api/2.0/serving-endpoints/{PLAIN}", headers=bearer(PAT)).json()
    assert detail["endpoint_url"] == state.invocation_url(PLAIN)
    bad = http.put(f"/_emulator/endpoints/{PLAIN}", json={"route_optimized": "yes"})
    assert bad.status_code == 400

    ws_token, token = workspace_token(http), scoped_token(http, state, PLAIN)
    assert http.post("/_emulator/revoke?scoped_only=true").json() == {"revoked": 1}
    assert state.authenticate(f"Bearer {ws_token}") is None
    assert state.authenticate(f"Bearer {token}", endpoint=PLAIN) is not None


def test_jwt_bearer_is_offered_only_with_route_optimized_endpoints(
    http: httpx.Client, state: EmulatorState
) -> None:
    state.route_optimized = set()
    response = scoped(http, workspace_token(http), permission(state.endpoint_id(ROUTED)))
    assert_refused(response, 400, "unsupported_grant_type", "route-optimized")


def test_databricks_sdk_queries_the_data_plane(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The SDK's route-optimized flow (describe, jwt-bearer, data-plane query).
    client = workspace_client(server.url, CLIENT_ID, CLIENT_SECRET, monkeypatch, tmp_path)
    result = client.serving_endpoints_data_plane.query(ROUTED, dataframe_records=ROWS)
    assert result.predictions == [score(row) for row in ROWS]
    counters = server.state.counters
    assert counters.data_plane[ROUTED].by_status == {200: 1}
    assert counters.scoped_tokens_issued == 1


# --- servers and options ----------------------------------------------------------------


def test_a_data_plane_server_beside_a_running_emulator(state: EmulatorState) -> None:
    state.data_plane_url = None
    with EmulatorServer(state) as server, httpx.Client(base_url=server.url) as http:
        detail = http.get(f"/api/2.0/serving-endpoints/{ROUTED}", headers=bearer(PAT)).json()
        assert detail["route_optimized"] is True
        assert "endpoint_url" not in detail  # no data plane is serving yet
        with DataPlaneServer(state) as data_plane:
            data_plane_url = data_plane.url
            assert state.data_plane_url == data_plane_url
            token = scoped_token(http, state)
            response = http.post(
                data_plane_path(state), json={"instances": [1]}, headers=bearer(token)
            )
            assert response.status_code == 200
        assert state.data_plane_url is None
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{data_plane_url}/x", timeout=5)


def test_identity_provider_jwks_round_trips_through_a_file(
    idp: IdentityProvider, tmp_path: Path
) -> None:
    jwks = load_jwks(idp.write_jwks(tmp_path / "jwks.json"))
    assert jwks == idp.jwks()
    assert "d" not in jwks["keys"][0], "only the public key is published"
    (tmp_path / "bad.json").write_text('{"keys": []}')
    with pytest.raises(ValueError, match="not a JWK Set"):
        load_jwks(tmp_path / "bad.json")


def test_build_state_with_federation_and_route_optimization(idp: IdentityProvider) -> None:
    policy = FederationPolicy(ISSUER, frozenset({AUDIENCE}), idp.jwks())
    state = build_state(
        endpoints=[ROUTED, PLAIN],
        federation=[policy],
        route_optimized=[ROUTED],
        scoped_token_ttl_s=30,
    )
    assert state.federation_policies == [policy]
    assert state.is_route_optimized(ROUTED)
    assert not state.is_route_optimized(PLAIN)
    assert state.scoped_ttl_s == 30
    with pytest.raises(ValueError, match="not served: nope"):
        build_state(pat_tokens=["p"], route_optimized=["nope"])
    with pytest.raises(ValueError, match="scoped_token_ttl_s"):
        build_state(pat_tokens=["p"], scoped_token_ttl_s=0)
