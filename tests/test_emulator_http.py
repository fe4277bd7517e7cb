"""The emulator over real sockets: OAuth, invocations, endpoint state, faults, control routes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.emulator import (
    EmulatorServer,
    EmulatorState,
    TokenRequest,
    bearer_token_body,
    default_grant_handlers,
    score,
)
from tests.support.clock import FakeClock
from tests.support.sdk import workspace_client

CLIENT_ID = "sp-client"
CLIENT_SECRET = "sp-secret"
PAT = "dapi-static-token"
TTL_S = 60
INVOKE = "/serving-endpoints/fraud-model/invocations"
ROWS: list[dict[str, object]] = [
    {"amount": 12.5, "age": 3, "country": "NL"},
    {"amount": -4, "age": 0.5, "flag": True},
]
PREDICTIONS = [score(row) for row in ROWS]  # pinned by test_emulator_model
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> EmulatorState:
    return EmulatorState(
        clients={CLIENT_ID: CLIENT_SECRET}, pat_tokens={PAT}, token_ttl_s=TTL_S, clock=clock
    )


@pytest.fixture
def server(state: EmulatorState) -> Iterator[EmulatorServer]:
    with EmulatorServer(state) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def fetch_token(http: httpx.Client) -> str:
    response = http.post(
        "/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def invoke(http: httpx.Client, body: object, path: str = INVOKE) -> httpx.Response:
    return http.post(path, json=body, headers=bearer(PAT))


# --- discovery and tokens -----------------------------------------------------------


def test_discovery_documents_point_at_this_host(http: httpx.Client, server: EmulatorServer) -> None:
    config = http.get("/.well-known/databricks-config").json()
    assert config["oidc_endpoint"] == f"{server.url}/oidc"
    assert config["workspace_id"] == server.state.workspace_id
    metadata = http.get("/oidc/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == f"{server.url}/oidc"
    assert metadata["token_endpoint"] == f"{server.url}/oidc/v1/token"
    assert metadata["authorization_endpoint"] == f"{server.url}/oidc/v1/authorize"
    assert metadata["grant_types_supported"] == ["client_credentials"]


def test_client_credentials_via_basic_auth(http: httpx.Client) -> None:
    response = http.post(
        "/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == TTL_S
    assert body["scope"] == "all-apis"
    assert len(body["access_token"]) >= 32
    assert response.headers["cache-control"] == "no-store"
    scored = http.post(INVOKE, json={"instances": [1]}, headers=bearer(body["access_token"]))
    assert scored.json() == {"predictions": [score({"x": 1})]}


def test_client_credentials_via_form_fields(http: httpx.Client) -> None:
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
    response = http.post("/oidc/v1/token", data={**form, "client_secret": CLIENT_SECRET})
    assert response.status_code == 200
    assert response.json()["scope"] == "all-apis"  # the default when no scope is asked for
    token = response.json()["access_token"]
    assert token != fetch_token(http)  # every grant mints a fresh token


@pytest.mark.parametrize(
    ("basic", "form"),
    [
        ((CLIENT_ID, "wrong"), {}),
        (("nobody", CLIENT_SECRET), {}),
        (None, {"client_id": CLIENT_ID, "client_secret": "wrong"}),
        (None, {}),
    ],
)
def test_bad_client_credentials_are_invalid_client(
    http: httpx.Client, basic: tuple[str, str] | None, form: dict[str, str]
) -> None:
    data = {"grant_type": "client_credentials", **form}
    auth = basic if basic is not None else httpx.USE_CLIENT_DEFAULT
    response = http.post("/oidc/v1/token", data=data, auth=auth)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.json()["error_description"]
    # RFC 6749 5.2: a failed Basic authentication must carry a WWW-Authenticate challenge.
    assert ("www-authenticate" in response.headers) is (basic is not None)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"scope": "all-apis"}, "invalid_request"),
        ({"grant_type": "client_credentials", "scope": "sql"}, "invalid_scope"),
        ({"grant_type": "client_credentials", "client_id": CLIENT_ID}, "invalid_request"),
    ],
)
def test_bad_token_requests_are_400(http: httpx.Client, data: dict[str, str], error: str) -> None:
    response = http.post("/oidc/v1/token", data=data, auth=(CLIENT_ID, CLIENT_SECRET))
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_token_request_must_be_form_encoded(http: httpx.Client) -> None:
    response = http.post("/oidc/v1/token", json={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_extra_grant_handlers_plug_into_the_token_endpoint(state: EmulatorState) -> None:
    def token_exchange(request: TokenRequest, state: EmulatorState) -> dict[str, object]:
        assert request.form["subject_token"] == "jwt-from-idp"
        return bearer_token_body(state, "all-apis")

    grants = {**default_grant_handlers(), TOKEN_EXCHANGE: token_exchange}
    with (
        EmulatorServer(state, grant_handlers=grants) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        metadata = http.get("/oidc/.well-known/oauth-authorization-server").json()
        assert TOKEN_EXCHANGE in metadata["grant_types_supported"]
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": "jwt-from-idp"}
        token = http.post("/oidc/v1/token", data=form).json()["access_token"]
        assert http.post(INVOKE, json={"instances": [1]}, headers=bearer(token)).is_success


# --- invocations --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_records": ROWS},
        {"dataframe_split": {"columns": ["amount", "age"], "data": [[12.5, 3], [-4, 0.5]]}},
        {"instances": ROWS},
        {"inputs": {"amount": [12.5, -4], "age": [3, 0.5]}, "params": {"k": 1}},
    ],
)
def test_every_format_is_scored_in_order(http: httpx.Client, body: dict[str, object]) -> None:
    response = http.post(INVOKE, json=body, headers=bearer(fetch_token(http)))
    assert response.status_code == 200
    assert response.json() == {"predictions": PREDICTIONS}
    assert response.headers["served-model-name"] == "fraud-model-1"


def test_served_model_path_and_configured_name() -> None:
    state = EmulatorState(pat_tokens={PAT}, served_models={"fraud-model": "fraud-model-7"})
    with EmulatorServer(state) as server, httpx.Client(base_url=server.url) as http:
        path = "/serving-endpoints/fraud-model/served-models/fraud-model-7/invocations"
        response = invoke(http, {"instances": [{"a": 1}]}, path)
        assert response.json() == {"predictions": [score({"a": 1})]}
        assert response.headers["served-model-name"] == "fraud-model-7"
        wrong = invoke(http, {"instances": [1]}, path.replace("-7/", "-1/"))
        assert wrong.status_code == 404
        assert wrong.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_missing_credentials_are_401_with_integer_error_code(http: httpx.Client) -> None:
    expected = {
        "error_code": 401,
        "message": "Credential was not sent or was of an unsupported type for this API.",
    }
    assert http.post(INVOKE, json={"instances": [1]}).json() == expected
    basic = http.post(INVOKE, json={"instances": [1]}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert (basic.status_code, basic.json()) == (401, expected)


def test_tokens_expire_on_the_state_clock(http: httpx.Client, clock: FakeClock) -> None:
    token = fetch_token(http)
    clock.advance(TTL_S - 1)
    assert http.post(INVOKE, json={"instances": [1]}, headers=bearer(token)).status_code == 200
    clock.advance(1)
    response = http.post(INVOKE, json={"instances": [1]}, headers=bearer(token))
    assert response.status_code == 401
    assert response.json() == {
        "error_code": "UNAUTHENTICATED",
        "message": "Access token has expired.",
    }


def test_unknown_token_is_401(http: httpx.Client) -> None:
    response = http.post(INVOKE, json={"instances": [1]}, headers=bearer("made-up"))
    assert response.status_code == 401
    assert response.json() == {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}


def test_revoke_invalidates_issued_tokens_but_not_pats(http: httpx.Client) -> None:
    old = fetch_token(http)
    assert http.post("/_emulator/revoke").json() == {"revoked": 1}
    response = http.post(INVOKE, json={"instances": [1]}, headers=bearer(old))
    assert response.status_code == 401
    assert "revoked" in response.json()["message"]
    assert invoke(http, {"instances": [1]}).status_code == 200
    assert http.post(INVOKE, json={"instances": [1]}, headers=bearer(fetch_token(http))).is_success


def test_auth_can_be_disabled() -> None:
    with EmulatorServer(EmulatorState(auth=False)) as server, httpx.Client() as http:
        response = http.post(f"{server.url}{INVOKE}", json={"instances": [2]})
        assert response.json() == {"predictions": [score({"x": 2})]}


def test_non_json_content_type_is_415(http: httpx.Client) -> None:
    headers = {**bearer(PAT), "Content-Type": "text/csv"}
    response = http.post(INVOKE, content=b"amount\n1\n", headers=headers)
    assert response.status_code == 415
    assert response.json()["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [1], "inputs": [1]},
        {"params": {}},
        {"instances": [1], "unknown": True},
        [{"a": 1}],
    ],
)
def test_body_needs_exactly_one_input_field(http: httpx.Client, body: object) -> None:
    response = invoke(http, body)
    assert response.status_code == 400
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert response.json()["message"].startswith(
        "The input must be a JSON dictionary with exactly one of the input fields "
        "{'dataframe_split', 'instances', 'inputs', 'dataframe_records'}."
    )


def test_malformed_json_and_shapes_are_400(http: httpx.Client) -> None:
    garbled = http.post(
        INVOKE, content=b"{nope", headers={**bearer(PAT), "Content-Type": "application/json"}
    )
    assert (garbled.status_code, garbled.json()["error_code"]) == (400, "BAD_REQUEST")
    shape = invoke(http, {"dataframe_records": [1, 2]})
    assert shape.status_code == 400
    assert "dataframe_records[0] must be a JSON object" in shape.json()["message"]


def test_unknown_endpoint_is_404_unless_any_name_is_allowed(http: httpx.Client) -> None:
    response = invoke(http, {"instances": [1]}, "/serving-endpoints/nope/invocations")
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    with (
        EmulatorServer(EmulatorState(pat_tokens={PAT}, allow_any_endpoint=True)) as server,
        httpx.Client(base_url=server.url) as other,
    ):
        anything = invoke(other, {"instances": [1]}, "/serving-endpoints/nope/invocations")
        assert anything.headers["served-model-name"] == "nope-1"


# --- faults -------------------------------------------------------------------------


def test_429_with_and_without_retry_after(http: httpx.Client) -> None:
    faults = http.put("/_emulator/faults", json={"rate_429": 1.0, "retry_after_s": 7})
    assert faults.json()["rate_429"] == 1.0
    limited = invoke(http, {"instances": [1]})
    assert limited.status_code == 429
    assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert limited.headers["retry-after"] == "7"
    http.put("/_emulator/faults", json={"retry_after_s": None})
    bare = invoke(http, {"instances": [1]})
    assert bare.status_code == 429
    assert "retry-after" not in bare.headers


def test_fail_next_fails_exactly_that_many_requests(http: httpx.Client) -> None:
    http.put("/_emulator/faults", json={"fail_next": 2, "retry_after_s": 1})
    responses = [invoke(http, {"instances": [1]}) for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert responses[0].headers["retry-after"] == "1"


def test_outage_lasts_until_the_clock_passes_it(http: httpx.Client, clock: FakeClock) -> None:
    http.put("/_emulator/faults", json={"outage_for_s": 30})
    assert invoke(http, {"instances": [1]}).status_code == 503
    clock.advance(30)
    assert invoke(http, {"instances": [1]}).status_code == 200


def test_poisoned_row_fails_the_request_naming_it(http: httpx.Client) -> None:
    response = invoke(http, {"dataframe_records": [{"a": 1}, {"a": 2, "_poison": True}]})
    assert response.status_code == 400
    assert "row 1" in response.json()["message"]
    assert http.get("/_emulator/stats").json()["rows_scored"] == 0


def test_payload_over_the_limit(http: httpx.Client) -> None:
    http.put("/_emulator/faults", json={"max_payload_bytes": 64})
    big = {"dataframe_records": [{"a": i} for i in range(20)]}
    assert invoke(http, {"instances": [1]}).status_code == 200
    assert invoke(http, big).status_code == 413
    http.put("/_emulator/faults", json={"oversize_status": 400})
    assert invoke(http, big).status_code == 400


def test_connection_reset_sends_no_response(http: httpx.Client) -> None:
    http.put("/_emulator/faults", json={"reset_connection_rate": 1.0})
    with pytest.raises(httpx.TransportError):
        invoke(http, {"instances": [1]})
    stats = http.get("/_emulator/stats").json()
    assert stats["connections_dropped"] == 1
    assert stats["requests_by_status"] == {}  # no status ever reached the client
    http.post("/_emulator/reset")
    assert invoke(http, {"instances": [1]}).status_code == 200


def test_latency_delays_the_answer(http: httpx.Client) -> None:
    http.put("/_emulator/faults", json={"latency_ms": 200})
    started = time.monotonic()
    assert invoke(http, {"instances": [1]}).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_unknown_fault_is_rejected(http: httpx.Client) -> None:
    response = http.put("/_emulator/faults", json={"rate_430": 1})
    assert response.status_code == 400
    assert "rate_430" in response.json()["message"]


# --- endpoint state, stats, lifecycle -----------------------------------------------


def test_endpoint_description_and_readiness(http: httpx.Client, server: EmulatorServer) -> None:
    path = "/api/2.0/serving-endpoints/fraud-model"
    assert http.get(path).status_code == 401
    detail = http.get(path, headers=bearer(PAT)).json()
    assert detail["name"] == "fraud-model"
    assert detail["id"] == server.state.endpoint_id("fraud-model")
    assert detail["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    entity = detail["config"]["served_entities"][0]
    assert (entity["name"], entity["entity_version"]) == ("fraud-model-1", "1")
    assert entity["state"]["deployment"] == "DEPLOYMENT_READY"
    assert detail["route_optimized"] is False

    http.put("/_emulator/endpoints/fraud-model", json={"ready": False})
    assert http.get(path, headers=bearer(PAT)).json()["state"]["ready"] == "NOT_READY"
    assert invoke(http, {"instances": [1]}).status_code == 503
    http.put("/_emulator/endpoints/fraud-model", json={"ready": True})
    assert invoke(http, {"instances": [1]}).status_code == 200
    assert http.get("/api/2.0/serving-endpoints/nope", headers=bearer(PAT)).status_code == 404


def test_stats_count_requests_rows_and_tokens(http: httpx.Client) -> None:
    fetch_token(http)
    invoke(http, {"dataframe_records": ROWS})
    http.post(INVOKE, json={"instances": [1]})  # 401
    invoke(http, {"instances": [1]}, "/serving-endpoints/nope/invocations")  # 404
    stats = http.get("/_emulator/stats").json()
    assert stats["tokens_issued"] == 1
    assert stats["rows_scored"] == 2
    assert stats["requests_by_status"] == {"200": 2, "401": 1, "404": 1}
    assert stats["endpoints"] == {
        "fraud-model": {"requests": 2, "rows_scored": 2, "by_status": {"200": 1, "401": 1}}
    }
    http.put("/_emulator/faults", json={"rate_429": 1.0})
    http.post("/_emulator/reset")
    assert invoke(http, {"instances": [1]}).status_code == 200  # faults are off again
    assert http.get("/_emulator/stats").json()["requests_by_status"] == {"200": 1}


def test_server_stops_cleanly_and_frees_its_port(state: EmulatorState) -> None:
    server = EmulatorServer(state)
    with server:
        url = server.url
        assert httpx.get(f"{url}/.well-known/databricks-config").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/.well-known/databricks-config")
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url


def test_foreground_run_reports_its_url_and_stops_on_request(state: EmulatorState) -> None:
    # run() is what `pulsar-bridge emulate` blocks in; a thread stands in for the CLI.
    server = EmulatorServer(state)
    ready = threading.Event()
    urls: list[str] = []

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    runner = threading.Thread(target=server.run, kwargs={"on_ready": on_ready})
    runner.start()
    try:
        assert ready.wait(30)
        assert urls == [server.url]
        assert httpx.post(f"{urls[0]}{INVOKE}", json={"instances": [1]}).status_code == 401
    finally:
        server.stop()
        runner.join(30)
    assert not runner.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{urls[0]}/.well-known/databricks-config")


def test_databricks_sdk_talks_to_the_emulator(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The SDK's own oauth-m2m flow (discovery, token, query, get) is the compatibility bar.
    client = workspace_client(server.url, CLIENT_ID, CLIENT_SECRET, monkeypatch, tmp_path)
    result = client.serving_endpoints.query("fraud-model", dataframe_records=ROWS)
    assert result.predictions == PREDICTIONS
    assert result.served_model_name == "fraud-model-1"
    endpoint = client.serving_endpoints.get("fraud-model")
    assert endpoint.state is not None
    assert endpoint.state.ready is not None
    assert endpoint.state.ready.value == "READY"
    assert server.state.counters.tokens_issued == 1
