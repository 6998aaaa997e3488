"""The sandbox's SMART authorization server through HTTP (Flask test client): discovery, authorize, token,
refresh, introspection, EHR and standalone launches, and every refusal the SMART rules call for."""

from __future__ import annotations

import html as htmllib
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet

from smart_app.sandbox.auth_server import CAPABILITIES, SandboxAuthorizationServer
from smart_app.sandbox.clients import CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET, PUBLIC_APP_ID
from tests.test_sandbox_auth_support import (
    APP_LAUNCH,
    FHIR_BASE,
    ORIGIN,
    REDIRECT,
    authorize_params,
    basic_auth,
    get_code,
    keyring,
    make_auth_app,
    pkce_pair,
    redirect_query,
)


@pytest.fixture()
def auto() -> tuple[Flask, SandboxAuthorizationServer]:
    return make_auth_app(auto_approve=True)


@pytest.fixture()
def client(auto: tuple[Flask, SandboxAuthorizationServer]) -> FlaskClient:
    return auto[0].test_client()


@pytest.fixture()
def server(auto: tuple[Flask, SandboxAuthorizationServer]) -> SandboxAuthorizationServer:
    return auto[1]


def exchange(
    client: FlaskClient,
    code: str,
    verifier: str,
    *,
    client_id: str = PUBLIC_APP_ID,
    headers: dict[str, str] | None = None,
    redirect_uri: str = REDIRECT,
) -> Any:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier:
        form["code_verifier"] = verifier
    if headers is None:
        form["client_id"] = client_id
    return client.post("/auth/token", data=form, headers=headers or {})


def standalone_token(client: FlaskClient, scope: str, client_id: str = PUBLIC_APP_ID, **extra: Any) -> Any:
    verifier, challenge = pkce_pair()
    params = authorize_params(scope=scope, client_id=client_id, code_challenge=challenge)
    code = get_code(client, params)
    return exchange(client, code, verifier, client_id=client_id, **extra)


def introspect(client: FlaskClient, token: str) -> Any:
    return client.post(
        "/auth/introspect",
        data={"token": token},
        headers=basic_auth(CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET),
    )


def verify_id_token(client: FlaskClient, id_token: str) -> dict[str, Any]:
    """Check an id_token the way an app must: discovery -> jwks_uri -> RS256 signature."""
    config = client.get("/fhir/.well-known/openid-configuration").get_json()
    jwks = client.get(urlsplit(config["jwks_uri"]).path).get_json()
    token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert token.header["alg"] == "RS256"
    return dict(token.claims)


# ------------------------------------------------------------------------------------------ discovery


def test_smart_configuration_is_json_with_absolute_urls_whatever_the_accept_header(
    client: FlaskClient,
) -> None:
    response = client.get("/fhir/.well-known/smart-configuration", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    doc = response.get_json()
    assert doc["authorization_endpoint"] == ORIGIN + "/auth/authorize"
    assert doc["token_endpoint"] == ORIGIN + "/auth/token"
    assert doc["introspection_endpoint"] == ORIGIN + "/auth/introspect"
    assert doc["jwks_uri"] == ORIGIN + "/auth/jwks"
    assert doc["issuer"] == FHIR_BASE
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert {"client_secret_basic", "private_key_jwt"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert doc["response_types_supported"] == ["code"]
    assert set(CAPABILITIES) <= set(doc["capabilities"])
    assert "permission-v2" in doc["capabilities"] and "sso-openid-connect" in doc["capabilities"]
    assert {"launch", "launch/patient", "openid", "fhirUser", "offline_access"} <= set(
        doc["scopes_supported"]
    )


def test_openid_configuration_and_jwks_publish_only_the_public_signing_key(client: FlaskClient) -> None:
    config = client.get("/fhir/.well-known/openid-configuration").get_json()
    assert config["issuer"] == FHIR_BASE
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = client.get("/auth/jwks").get_json()["keys"]
    assert [k["kid"] for k in keys] == [keyring().signing.kid]
    assert all("d" not in k and "p" not in k for k in keys)


def test_configured_base_url_is_used_for_every_endpoint() -> None:
    app, _ = make_auth_app()
    app.config["SANDBOX_BASE_URL"] = "http://127.0.0.1:5555"
    doc = app.test_client().get("/fhir/.well-known/smart-configuration").get_json()
    assert doc["token_endpoint"] == "http://127.0.0.1:5555/auth/token"
    assert doc["issuer"] == "http://127.0.0.1:5555/fhir"


# ----------------------------------------------------------------------------- authorize: refusals

# (case, overrides of a valid request, expected error returned to the app's redirect URI)
REDIRECTED_REFUSALS = [
    ("no PKCE", {"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
    ("plain PKCE", {"code_challenge_method": "plain"}, "invalid_request"),
    ("PKCE without method (means plain)", {"code_challenge_method": None}, "invalid_request"),
    ("wrong aud", {"aud": "http://localhost/other-fhir"}, "invalid_request"),
    ("missing aud", {"aud": None}, "invalid_request"),
    ("unknown launch", {"launch": "not-a-launch", "scope": "launch patient/*.rs"}, "invalid_request"),
    ("launch scope without launch", {"scope": "launch patient/*.rs"}, "invalid_request"),
    ("no allowed scope", {"scope": "system/Observation.rs"}, "invalid_scope"),
    ("implicit flow", {"response_type": "token"}, "unsupported_response_type"),
]


@pytest.mark.parametrize(
    ("case", "overrides", "error"), REDIRECTED_REFUSALS, ids=[r[0] for r in REDIRECTED_REFUSALS]
)
def test_authorize_refusals_go_back_to_the_app_with_state_and_no_code(
    client: FlaskClient, case: str, overrides: dict[str, str | None], error: str
) -> None:
    params = authorize_params(**overrides)
    response = client.get("/auth/authorize", query_string=params)
    assert response.headers["Location"].startswith(REDIRECT)
    query = redirect_query(response)
    assert query["error"] == error, query
    assert query["state"] == params["state"]
    assert "code" not in query


# (case, overrides) refused on a page of the EHR: the redirect URI cannot be trusted, so no redirect
PAGE_REFUSALS = [
    ("unregistered redirect_uri", {"redirect_uri": "http://127.0.0.1:8000/evil"}),
    ("redirect_uri of another origin", {"redirect_uri": "http://example.org/callback"}),
    ("unknown client", {"client_id": "nobody"}),
    ("no client_id", {"client_id": None}),
]


@pytest.mark.parametrize(("case", "overrides"), PAGE_REFUSALS, ids=[r[0] for r in PAGE_REFUSALS])
def test_authorize_refusals_with_an_untrusted_redirect_stay_on_an_error_page(
    client: FlaskClient, case: str, overrides: dict[str, str | None]
) -> None:
    response = client.get("/auth/authorize", query_string=authorize_params(**overrides))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "Authorization refused" in response.get_data(as_text=True)


# --------------------------------------------------------------------------------- token: refusals


def test_wrong_or_missing_code_verifier_is_refused(client: FlaskClient) -> None:
    _verifier, challenge = pkce_pair()
    code = get_code(client, authorize_params(code_challenge=challenge))
    wrong = exchange(client, code, pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_grant"
    code = get_code(client, authorize_params(code_challenge=challenge))
    missing = exchange(client, code, "")
    assert missing.status_code == 400 and missing.get_json()["error"] == "invalid_request"


def test_redirect_uri_must_match_at_the_token_endpoint(client: FlaskClient) -> None:
    verifier, challenge = pkce_pair()
    code = get_code(client, authorize_params(code_challenge=challenge))
    response = exchange(client, code, verifier, redirect_uri="http://127.0.0.1:8000/other")
    assert response.get_json()["error"] == "invalid_grant"


def test_replayed_code_is_refused_and_revokes_the_tokens_issued_from_it(
    client: FlaskClient, server: SandboxAuthorizationServer
) -> None:
    verifier, challenge = pkce_pair()
    code = get_code(client, authorize_params(code_challenge=challenge))
    first = exchange(client, code, verifier)
    assert first.status_code == 200
    access, refresh = first.get_json()["access_token"], first.get_json()["refresh_token"]
    assert server.tokens.lookup(access) is not None

    replay = exchange(client, code, verifier)
    assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_grant"
    assert server.tokens.lookup(access) is None  # RFC 6749 §4.1.2: revoke what the code produced
    assert introspect(client, access).get_json() == {"active": False}
    refreshed = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": PUBLIC_APP_ID},
    )
    assert refreshed.get_json()["error"] == "invalid_grant"


def test_code_of_another_client_is_refused(client: FlaskClient) -> None:
    verifier, challenge = pkce_pair()
    code = get_code(client, authorize_params(code_challenge=challenge))
    response = exchange(
        client, code, verifier, headers=basic_auth(CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET)
    )
    assert response.get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "headers",
    [basic_auth(CONFIDENTIAL_APP_ID, "wrong-secret"), None],
    ids=["wrong secret", "confidential client without its secret"],
)
def test_confidential_client_must_authenticate_with_its_secret(
    client: FlaskClient, headers: dict[str, str] | None
) -> None:
    verifier, challenge = pkce_pair()
    params = authorize_params(client_id=CONFIDENTIAL_APP_ID, code_challenge=challenge)
    code = get_code(client, params)
    response = exchange(client, code, verifier, client_id=CONFIDENTIAL_APP_ID, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


# ------------------------------------------------------------------------------- standalone launch


def test_standalone_launch_token_carries_context_id_token_and_refresh_token(
    client: FlaskClient, server: SandboxAuthorizationServer
) -> None:
    response = standalone_token(
        client, "openid fhirUser launch/patient patient/Observation.rs offline_access"
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["scope"].split() == [
        "openid",
        "fhirUser",
        "launch/patient",
        "patient/Observation.rs",
        "offline_access",
    ]
    assert 0 < body["expires_in"] <= 3600
    assert body["patient"] == "p1"  # auto-approve picks the first patient
    assert body["need_patient_banner"] is True
    assert "refresh_token" in body
    claims = verify_id_token(client, body["id_token"])
    assert claims["iss"] == FHIR_BASE
    assert claims["aud"] == PUBLIC_APP_ID
    assert claims["fhirUser"] == FHIR_BASE + "/Practitioner/n1"
    assert claims["exp"] > claims["iat"]
    grant = server.tokens.lookup(body["access_token"])
    assert grant is not None
    assert grant.patient == "p1" and grant.fhir_user == "Practitioner/n1"
    assert grant.scopes == (
        "openid",
        "fhirUser",
        "launch/patient",
        "patient/Observation.rs",
        "offline_access",
    )


def test_granted_scopes_are_the_requested_ones_the_client_may_have(client: FlaskClient) -> None:
    body = standalone_token(client, "launch/patient patient/Observation.rs system/Observation.rs").get_json()
    assert body["scope"] == "launch/patient patient/Observation.rs"
    assert "refresh_token" not in body and "id_token" not in body  # neither offline_access nor openid


def test_no_refresh_token_without_offline_or_online_access(client: FlaskClient) -> None:
    body = standalone_token(client, "openid fhirUser launch/patient patient/*.rs").get_json()
    assert "refresh_token" not in body
    assert "id_token" in body


def test_confidential_client_code_flow_with_client_secret_basic(client: FlaskClient) -> None:
    auth = basic_auth(CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET)
    response = standalone_token(
        client, "launch/patient patient/*.rs online_access", client_id=CONFIDENTIAL_APP_ID, headers=auth
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["patient"] == "p1" and "refresh_token" in body
    refreshed = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=auth,
    )
    assert refreshed.status_code == 200
    unauthenticated = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refreshed.get_json()["refresh_token"]},
    )
    assert unauthenticated.get_json()["error"] == "invalid_client"


# ------------------------------------------------------------------------------------- approve page


def approve_page() -> tuple[FlaskClient, SandboxAuthorizationServer]:
    app, server = make_auth_app(auto_approve=False)
    return app.test_client(), server


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of the approve form (a minimal parser: the sandbox's own template)."""
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)
    return {name: htmllib.unescape(value) for name, value in fields}


def test_approve_page_lists_patients_escaped_and_approval_issues_the_chosen_context() -> None:
    client, _server = approve_page()
    verifier, challenge = pkce_pair()
    params = authorize_params(code_challenge=challenge)
    page = client.get("/auth/authorize", query_string=params)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "Ada &lt;b&gt;Test&lt;/b&gt;" in html and "<b>Test</b>" not in html  # EHR data is escaped
    assert 'name="patient"' in html and 'name="user"' in html
    form = hidden_fields(html)
    assert form["state"] == params["state"] and form["code_challenge"] == challenge
    form.update(decision="approve", patient="p2", user="Practitioner/dr1")
    query = redirect_query(client.post("/auth/authorize", data=form))
    assert query["state"] == params["state"]
    body = exchange(client, query["code"], verifier).get_json()
    assert body["patient"] == "p2"
    assert verify_id_token(client, body["id_token"])["fhirUser"] == FHIR_BASE + "/Practitioner/dr1"

    reused = client.post("/auth/authorize", data=form)  # the approval is single-use
    assert reused.status_code == 400 and "Location" not in reused.headers


def test_deny_returns_access_denied_with_state() -> None:
    client, _ = approve_page()
    params = authorize_params()
    form = hidden_fields(client.get("/auth/authorize", query_string=params).get_data(as_text=True))
    query = redirect_query(client.post("/auth/authorize", data={**form, "decision": "deny"}))
    assert query["error"] == "access_denied" and query["state"] == params["state"]
    assert "code" not in query


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"patient": "nobody"}, "No patient chosen"),
        ({"patient": "p1", "user": "Practitioner/x"}, "Unknown user"),
    ],
)
def test_approval_with_a_patient_or_user_not_in_the_ehr_is_refused(
    choice: dict[str, str], expected: str
) -> None:
    client, _ = approve_page()
    form = hidden_fields(
        client.get("/auth/authorize", query_string=authorize_params()).get_data(as_text=True)
    )
    response = client.post("/auth/authorize", data={**form, "decision": "approve", **choice})
    assert response.status_code == 400 and expected in response.get_data(as_text=True)


# ------------------------------------------------------------------------------------- EHR launch


def ehr_launch(client: FlaskClient, **query: str) -> dict[str, str]:
    """Open a launch link of the EHR page; return the app launch URL's parameters (iss, launch)."""
    response = client.get("/ehr/launch", query_string={"client_id": PUBLIC_APP_ID, **query})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(APP_LAUNCH + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_ehr_page_lists_patients_with_launch_links(client: FlaskClient) -> None:
    html = client.get("/ehr").get_data(as_text=True)
    assert "Ada &lt;b&gt;Test&lt;/b&gt;" in html
    assert "/ehr/launch?client_id=rpm-billing-app&amp;patient=p1" in html
    assert "/ehr/launch?client_id=rpm-billing-app&amp;patient=p2" in html
    assert 'id="launch-no-patient"' in html


def test_ehr_launch_returns_the_remembered_patient_and_user(client: FlaskClient) -> None:
    launch = ehr_launch(client, patient="p2", user="Practitioner/dr1")
    assert launch["iss"] == FHIR_BASE
    verifier, challenge = pkce_pair()
    params = authorize_params(
        scope="launch openid fhirUser patient/*.rs",
        launch=launch["launch"],
        code_challenge=challenge,
        aud=launch["iss"],
    )
    body = exchange(client, get_code(client, params), verifier).get_json()
    assert body["patient"] == "p2"
    assert body["need_patient_banner"] is False  # the EHR shows its own banner around an embedded app
    assert verify_id_token(client, body["id_token"])["fhirUser"] == FHIR_BASE + "/Practitioner/dr1"


def test_practitioner_launch_without_patient_grants_user_scopes_only(
    client: FlaskClient, server: SandboxAuthorizationServer
) -> None:
    launch = ehr_launch(client, user="Practitioner/n1")
    verifier, challenge = pkce_pair()
    params = authorize_params(
        scope="launch user/Observation.rs patient/Observation.rs",
        launch=launch["launch"],
        code_challenge=challenge,
    )
    body = exchange(client, get_code(client, params), verifier).get_json()
    assert "patient" not in body
    assert body["scope"] == "launch user/Observation.rs"
    grant = server.tokens.lookup(body["access_token"])
    assert grant is not None and grant.patient is None and grant.fhir_user == "Practitioner/n1"


def test_launch_of_another_client_is_refused(client: FlaskClient) -> None:
    launch = ehr_launch(client, patient="p1")
    params = authorize_params(
        client_id=CONFIDENTIAL_APP_ID, scope="launch patient/*.rs", launch=launch["launch"]
    )
    assert redirect_query(client.get("/auth/authorize", query_string=params))["error"] == "invalid_request"


@pytest.mark.parametrize(
    "query",
    [{"patient": "nobody"}, {"user": "Practitioner/ghost"}, {"client_id": "nobody"}, {"encounter": "e-x"}],
    ids=["unknown patient", "unknown user", "unknown app", "unknown encounter"],
)
def test_ehr_launch_of_unknown_things_is_refused(client: FlaskClient, query: dict[str, str]) -> None:
    response = client.get("/ehr/launch", query_string={"client_id": PUBLIC_APP_ID, **query})
    assert response.status_code == 404 and "Location" not in response.headers


# ------------------------------------------------------------------------------------------ refresh


def test_refresh_rotates_the_refresh_token_and_keeps_the_context(client: FlaskClient) -> None:
    first = standalone_token(
        client, "launch/patient patient/Observation.rs patient/Patient.rs offline_access"
    )
    body = first.get_json()

    def refresh(token: str, **extra: str) -> Any:
        data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": PUBLIC_APP_ID, **extra}
        return client.post("/auth/token", data=data)

    second = refresh(body["refresh_token"])
    assert second.status_code == 200 and second.headers["Cache-Control"] == "no-store"
    renewed = second.get_json()
    assert renewed["access_token"] != body["access_token"]
    assert renewed["patient"] == "p1" and renewed["scope"] == body["scope"]
    assert renewed["refresh_token"] != body["refresh_token"]
    assert refresh(body["refresh_token"]).get_json()["error"] == "invalid_grant"  # the old one is gone

    narrower = refresh(renewed["refresh_token"], scope="patient/Observation.rs offline_access")
    assert narrower.get_json()["scope"] == "patient/Observation.rs offline_access"
    wider = refresh(narrower.get_json()["refresh_token"], scope="patient/Observation.rs patient/Device.rs")
    assert wider.get_json()["error"] == "invalid_scope"


def test_refresh_token_of_another_client_is_refused(client: FlaskClient) -> None:
    body = standalone_token(client, "launch/patient patient/*.rs offline_access").get_json()
    response = client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers=basic_auth(CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET),
    )
    assert response.get_json()["error"] == "invalid_grant"


# ------------------------------------------------------------------------------------ introspection


def test_introspection_reports_active_tokens_with_their_context(client: FlaskClient) -> None:
    body = standalone_token(client, "openid fhirUser launch/patient patient/*.rs offline_access").get_json()
    info = introspect(client, body["access_token"]).get_json()
    assert info["active"] is True
    assert info["client_id"] == PUBLIC_APP_ID and info["scope"] == body["scope"]
    assert info["patient"] == "p1"
    assert info["fhirUser"] == FHIR_BASE + "/Practitioner/n1"
    assert info["exp"] > info["iat"]
    assert introspect(client, body["refresh_token"]).get_json()["active"] is True
    assert introspect(client, "no-such-token").get_json() == {"active": False}


@pytest.mark.parametrize(
    "headers",
    [{}, basic_auth(CONFIDENTIAL_APP_ID, "wrong")],
    ids=["no client authentication", "wrong secret"],
)
def test_introspection_needs_an_authenticated_confidential_client(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    response = client.post(
        "/auth/introspect", data={"token": "x", "client_id": PUBLIC_APP_ID}, headers=headers
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
