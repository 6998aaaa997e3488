"""SMART launch on the client side: scopes, the authorization request, code exchange, refresh, id_token."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from joserfc import jwt
from joserfc.jwk import RSAKey

from smart_app.discovery import SmartConfiguration
from smart_app.web import oauth
from smart_app.web.config import IssuerConfig

ISS = "http://127.0.0.1:8090/fhir"
TOKEN_URL = "http://127.0.0.1:8090/auth/token"
SMART_V2 = SmartConfiguration(
    token_endpoint=TOKEN_URL,
    authorization_endpoint="http://127.0.0.1:8090/auth/authorize",
    capabilities=frozenset({"permission-v2", "permission-v1", "launch-ehr"}),
    code_challenge_methods=frozenset({"S256"}),
    issuer=ISS,
)
SMART_V1 = SmartConfiguration(
    token_endpoint=TOKEN_URL, authorization_endpoint=SMART_V2.authorization_endpoint
)
PUBLIC = IssuerConfig("sbx", ISS, "rpm-app")


# ---------------------------------------------------------------------------------------------- scopes


@pytest.mark.parametrize(
    ("mode", "smart", "issuer", "present", "absent"),
    [
        (
            "ehr",
            SMART_V2,
            PUBLIC,
            [
                "launch",
                "openid",
                "fhirUser",
                "online_access",
                "patient/Observation.rs",
                "user/Consent.rs",
                "patient/ChargeItem.crus",
                "user/DocumentReference.crus",
            ],
            ["launch/patient", "patient/Observation.read", "offline_access"],
        ),
        (
            "standalone-patient",
            SMART_V2,
            PUBLIC,
            ["launch/patient", "openid", "fhirUser", "patient/Communication.rs", "patient/ChargeItem.crus"],
            ["launch", "user/Communication.rs"],
        ),
        (
            "standalone-user",
            SMART_V2,
            PUBLIC,
            ["openid", "fhirUser", "user/Observation.rs", "user/ChargeItem.crus"],
            ["launch", "launch/patient", "patient/Observation.rs"],
        ),
        (
            "ehr",
            SMART_V1,  # no permission-v2 advertised: v1 syntax
            PUBLIC,
            ["launch", "patient/Observation.read", "patient/ChargeItem.read", "patient/ChargeItem.write"],
            ["patient/Observation.rs"],
        ),
        (
            "ehr",
            SMART_V2,
            IssuerConfig("x", ISS, "c", scope_syntax="v1", refresh_scope="offline_access"),
            ["patient/Device.read", "offline_access"],
            ["patient/Device.rs", "online_access"],
        ),
        (
            "ehr",
            SMART_V2,
            IssuerConfig("x", ISS, "c", scopes="patient/*.rs user/*.rs", refresh_scope=""),
            ["launch", "openid", "fhirUser", "patient/*.rs", "user/*.rs"],
            ["patient/Observation.rs", "online_access"],
        ),
    ],
)
def test_launch_scopes(
    mode: oauth.Mode, smart: SmartConfiguration, issuer: IssuerConfig, present: list[str], absent: list[str]
) -> None:
    scopes = oauth.launch_scopes(issuer, smart, mode).split()
    assert len(scopes) == len(set(scopes))
    for scope in present:
        assert scope in scopes
    for scope in absent:
        assert scope not in scopes


@pytest.mark.parametrize(
    ("granted", "patient_context", "missing"),
    [
        ("patient/ChargeItem.crus patient/DocumentReference.crus", True, set()),
        ("user/ChargeItem.cruds user/DocumentReference.cruds", True, set()),
        (
            "patient/ChargeItem.crus patient/DocumentReference.crus",
            False,
            {"user/ChargeItem.crus", "user/DocumentReference.crus"},
        ),
        (
            "patient/ChargeItem.read patient/ChargeItem.write patient/DocumentReference.rs",
            True,
            {"patient/DocumentReference.cu"},
        ),
        ("patient/*.rs", True, {"patient/ChargeItem.cu", "patient/DocumentReference.cu"}),
    ],
)
def test_write_gaps(granted: str, patient_context: bool, missing: set[str]) -> None:
    gaps = oauth.write_gaps(frozenset(granted.split()), patient_context)
    assert {g.spell("v2") for g in gaps} == missing


# ---------------------------------------------------------------------------------- the request


def test_authorization_request_has_pkce_s256_aud_launch_and_state() -> None:
    request = oauth.authorization_request(
        PUBLIC,
        SMART_V2,
        scope="launch openid",
        redirect_uri="http://127.0.0.1:8000/callback",
        state="st" * 22,
        launch="L1",
    )
    parts = urlsplit(request.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == SMART_V2.authorization_endpoint
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    challenge = base64.urlsafe_b64encode(hashlib.sha256(request.code_verifier.encode()).digest()).rstrip(b"=")
    assert query == {
        "response_type": "code",
        "client_id": "rpm-app",
        "redirect_uri": "http://127.0.0.1:8000/callback",
        "scope": "launch openid",
        "state": "st" * 22,
        "aud": ISS,
        "launch": "L1",
        "nonce": request.nonce,
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    assert 43 <= len(request.code_verifier) <= 128
    again = oauth.authorization_request(
        PUBLIC,
        SMART_V2,
        scope="openid",
        redirect_uri="http://127.0.0.1:8000/callback",
        state="x",
        launch=None,
    )
    assert "launch" not in parse_qs(urlsplit(again.url).query)
    assert again.code_verifier != request.code_verifier


def test_an_ehr_without_s256_is_refused() -> None:
    plain_only = SmartConfiguration(
        token_endpoint=TOKEN_URL,
        authorization_endpoint=SMART_V2.authorization_endpoint,
        code_challenge_methods=frozenset({"plain"}),
    )
    with pytest.raises(oauth.LaunchError, match="S256"):
        oauth.authorization_request(
            PUBLIC, plain_only, scope="openid", redirect_uri="http://x/cb", state="s", launch=None
        )


# ------------------------------------------------------------------------------------- code exchange


def _form(request: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.body).items()}


@responses.activate
def test_public_client_exchanges_the_code_with_its_verifier() -> None:
    responses.post(
        TOKEN_URL, json={"access_token": "A", "token_type": "Bearer", "expires_in": 60, "patient": "p1"}
    )
    token = oauth.exchange_code(
        PUBLIC, SMART_V2, code="CODE", code_verifier="V" * 64, redirect_uri="http://127.0.0.1:8000/callback"
    )
    assert token["patient"] == "p1"
    sent = responses.calls[0].request
    assert _form(sent) == {
        "grant_type": "authorization_code",
        "code": "CODE",
        "code_verifier": "V" * 64,
        "redirect_uri": "http://127.0.0.1:8000/callback",
        "client_id": "rpm-app",
    }
    assert "Authorization" not in sent.headers


@responses.activate
def test_confidential_clients_authenticate_at_the_token_endpoint() -> None:
    responses.post(TOKEN_URL, json={"access_token": "A", "token_type": "Bearer"})
    symmetric = IssuerConfig("s", ISS, "conf", client_secret="s3cret")
    oauth.exchange_code(symmetric, SMART_V2, code="C", code_verifier="V" * 64, redirect_uri="http://x/cb")
    assert (
        responses.calls[0].request.headers["Authorization"]
        == "Basic " + base64.b64encode(b"conf:s3cret").decode()
    )

    key = RSAKey.generate_key(2048, private=True, parameters={"kid": "k1"})
    asymmetric = IssuerConfig("a", ISS, "asym", private_key=key)
    oauth.exchange_code(asymmetric, SMART_V2, code="C", code_verifier="V" * 64, redirect_uri="http://x/cb")
    form = _form(responses.calls[1].request)
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assertion = jwt.decode(form["client_assertion"], key, algorithms=["RS384"])
    assert assertion.header["alg"] == "RS384" and assertion.header["kid"] == "k1"
    claims = assertion.claims
    assert claims["iss"] == claims["sub"] == "asym" and claims["aud"] == TOKEN_URL
    assert claims["exp"] - claims["iat"] <= 300 and claims["jti"]


@responses.activate
def test_a_refused_code_is_a_clear_error() -> None:
    responses.post(
        TOKEN_URL, status=400, json={"error": "invalid_grant", "error_description": "code already used"}
    )
    with pytest.raises(oauth.LaunchError, match="invalid_grant") as err:
        oauth.exchange_code(PUBLIC, SMART_V2, code="C", code_verifier="V" * 64, redirect_uri="http://x/cb")
    assert err.value.status == 400


def test_no_verifier_no_exchange() -> None:
    with responses.RequestsMock() as mock:  # any request would fail the test
        with pytest.raises(oauth.LaunchError, match="PKCE verifier"):
            oauth.exchange_code(PUBLIC, SMART_V2, code="C", code_verifier="", redirect_uri="http://x/cb")
        assert not mock.calls


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ({"token_type": "Bearer"}, "without an access token"),
        ({"access_token": "A", "token_type": "mac"}, "only Bearer"),
    ],
)
def test_unusable_token_responses(token: dict[str, Any], problem: str) -> None:
    with pytest.raises(oauth.LaunchError, match=problem):
        oauth.token_set(token, "openid", 0.0)


def test_token_set_defaults() -> None:
    tokens = oauth.token_set({"access_token": "A", "token_type": "bearer"}, "asked for", 100.0)
    assert tokens.scope == "asked for" and tokens.expires_at == 100.0 + oauth.DEFAULT_LIFETIME
    assert tokens.refresh_token is None
    assert "A" not in repr(tokens)


# ------------------------------------------------------------------------------------------- refresh


class Refresher:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.seen: list[str] = []

    def __call__(self, refresh_token: str) -> dict[str, Any]:
        self.seen.append(refresh_token)
        return self.answers.pop(0)


def test_tokens_are_refreshed_shortly_before_they_expire() -> None:
    now = [1000.0]
    refresher = Refresher(
        [{"access_token": "A2", "token_type": "Bearer", "expires_in": 100, "refresh_token": "R2"}]
    )
    keeper = oauth.TokenKeeper(
        oauth.TokenSet("A1", 1100.0, "s", "R1"), refresher, clock=lambda: now[0], leeway=30
    )
    assert keeper.header() == "Bearer A1" and not refresher.seen
    now[0] = 1075.0  # within the leeway
    assert keeper.header() == "Bearer A2"
    assert refresher.seen == ["R1"] and keeper.refreshes == 1


def test_refresh_after_a_401_keeps_the_refresh_token_when_none_is_issued() -> None:
    refresher = Refresher(
        [
            {"access_token": "A2", "token_type": "Bearer", "expires_in": 3600},
            {"access_token": "A3", "token_type": "Bearer", "expires_in": 3600},
        ]
    )
    keeper = oauth.TokenKeeper(oauth.TokenSet("A1", 1e12, "s", "R1"), refresher)
    assert keeper.refresh("Bearer A1") is True
    assert keeper.header() == "Bearer A2"
    assert keeper.refresh("Bearer A1") is True  # another thread already replaced A1: no second refresh
    assert refresher.seen == ["R1"]
    assert keeper.refresh("Bearer A2") is True
    assert refresher.seen == ["R1", "R1"]


def test_without_a_refresh_token_an_expired_session_must_relaunch() -> None:
    keeper = oauth.TokenKeeper(oauth.TokenSet("A1", 0.0, "s"), Refresher([]))
    assert keeper.refresh("Bearer A1") is False
    with pytest.raises(oauth.SessionExpiredError):
        keeper.header()
    auth = oauth.LaunchAuth(keeper)
    assert auth.refresh("Bearer A1") is False


@responses.activate
def test_the_refresh_grant_goes_through_authlib() -> None:
    responses.post(TOKEN_URL, json={"access_token": "A2", "token_type": "Bearer", "refresh_token": "R2"})
    refresh = oauth.refresher_for(PUBLIC, SMART_V2)
    assert refresh("R1")["access_token"] == "A2"
    assert _form(responses.calls[0].request) == {
        "grant_type": "refresh_token",
        "refresh_token": "R1",
        "client_id": "rpm-app",
    }
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_grant"})
    with pytest.raises(oauth.SessionExpiredError):
        refresh("R2")


# ------------------------------------------------------------------------------------------ id_token

KEY = RSAKey.generate_key(2048, private=True, parameters={"kid": "sig"})
OTHER_KEY = RSAKey.generate_key(2048, private=True, parameters={"kid": "sig"})


def id_token(key: RSAKey = KEY, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISS,
        "aud": "rpm-app",
        "sub": "u1",
        "iat": now,
        "exp": now + 300,
        "fhirUser": f"{ISS}/Practitioner/dr-1",
        **claims,
    }
    return jwt.encode({"alg": "RS256", "kid": "sig"}, body, key)


def serve_keys(jwks_uri: str = "http://127.0.0.1:8090/auth/jwks") -> None:
    responses.get(f"{ISS}/.well-known/openid-configuration", json={"issuer": ISS, "jwks_uri": jwks_uri})
    responses.get(jwks_uri, json={"keys": [KEY.as_dict(private=False)]})


@responses.activate
def test_a_valid_id_token_gives_the_fhir_user() -> None:
    serve_keys()
    claims = oauth.verify_id_token(id_token(nonce="n1"), client_id="rpm-app", issuers={ISS}, nonce="n1")
    assert oauth.fhir_user_reference(claims["fhirUser"]) == "Practitioner/dr-1"


@pytest.mark.parametrize(
    ("token_kwargs", "problem"),
    [
        ({"aud": "someone-else"}, "did not verify"),
        ({"exp": 1000}, "did not verify"),
        ({"key": OTHER_KEY}, "did not verify"),
        ({"nonce": "other"}, "nonce mismatch"),
    ],
)
@responses.activate
def test_an_id_token_that_does_not_verify_is_refused(token_kwargs: dict[str, Any], problem: str) -> None:
    serve_keys()
    with pytest.raises(oauth.LaunchError, match=problem):
        oauth.verify_id_token(id_token(**token_kwargs), client_id="rpm-app", issuers={ISS}, nonce="n1")


def test_keys_are_never_fetched_from_an_issuer_the_token_alone_names() -> None:
    with responses.RequestsMock() as mock:
        with pytest.raises(oauth.LaunchError, match="unexpected party"):
            oauth.verify_id_token(
                id_token(iss="https://evil.example"), client_id="rpm-app", issuers={ISS}, nonce=None
            )
        assert not mock.calls
    with pytest.raises(oauth.LaunchError, match="not a JWT"):
        oauth.verify_id_token("garbage", client_id="rpm-app", issuers={ISS}, nonce=None)


@responses.activate
def test_keys_are_fetched_over_https_or_loopback_only() -> None:
    serve_keys(jwks_uri="http://keys.example.org/jwks")
    with pytest.raises(oauth.LaunchError, match="https"):
        oauth.verify_id_token(id_token(), client_id="rpm-app", issuers={ISS}, nonce=None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8090/fhir/Practitioner/dr-1", "Practitioner/dr-1"),
        ("PractitionerRole/r9", "PractitionerRole/r9"),
        ("https://x/fhir/Patient/p1/_history/2", None),
        ("Observation/o1", None),
        (None, None),
    ],
)
def test_fhir_user_reference(value: object, expected: str | None) -> None:
    assert oauth.fhir_user_reference(value) == expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ({"patient": "p1", "need_patient_banner": False}, oauth.LaunchContext("p1", False, None)),
        (
            {"patient": "p1", "encounter": "e1"},
            oauth.LaunchContext("p1", True, "e1"),
        ),  # absent: show a banner
        ({"need_patient_banner": "false"}, oauth.LaunchContext(None, True, None)),
    ],
)
def test_launch_context(token: dict[str, Any], expected: oauth.LaunchContext) -> None:
    assert oauth.launch_context(token) == expected
