"""SMART Backend Services against the sandbox: client_credentials with a private_key_jwt assertion (RS384 and
ES384, minted with joserfc) and every refusal of a bad assertion (`invalid_client`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient
from joserfc.jwk import RSAKey

from smart_app.sandbox.auth_server import SandboxAuthorizationServer
from smart_app.sandbox.clients import CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET, SandboxClient
from smart_app.sandbox.keys import public_jwks
from tests.test_sandbox_auth_support import (
    BACKEND_ID,
    ORIGIN,
    TOKEN_URL,
    assertion,
    backend_form,
    basic_auth,
    keyring,
    make_auth_app,
)


@pytest.fixture()
def setup() -> tuple[FlaskClient, SandboxAuthorizationServer]:
    app, server = make_auth_app()
    return app.test_client(), server


def post_token(client: FlaskClient, form: dict[str, str], **kwargs: Any) -> Any:
    return client.post("/auth/token", data=form, **kwargs)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_token_with_rs384_and_es384(
    setup: tuple[FlaskClient, SandboxAuthorizationServer], alg: str
) -> None:
    client, server = setup
    key = keyring().rs384 if alg == "RS384" else keyring().es384
    response = post_token(
        client, backend_form(assertion(key, alg), "system/Observation.rs system/Patient.rs")
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "system/Observation.rs system/Patient.rs"
    assert 0 < body["expires_in"] <= 300  # SMART Backend Services: SHOULD be at most 5 minutes
    assert "refresh_token" not in body and "patient" not in body
    grant = server.tokens.lookup(body["access_token"])
    assert grant is not None
    assert grant.client_id == BACKEND_ID and grant.patient is None and grant.fhir_user is None
    assert grant.scopes == ("system/Observation.rs", "system/Patient.rs")


def test_backend_scopes_are_limited_to_the_clients_allowed_ones(
    setup: tuple[FlaskClient, SandboxAuthorizationServer],
) -> None:
    client, _ = setup
    key = keyring().rs384
    body = post_token(
        client, backend_form(assertion(key, "RS384"), "system/Observation.rs patient/*.rs")
    ).get_json()
    assert body["scope"] == "system/Observation.rs"
    refused = post_token(client, backend_form(assertion(key, "RS384"), "patient/*.rs user/*.rs"))
    assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_scope"


def without_alg(key: RSAKey) -> RSAKey:
    """The same key pair, not pinned to one algorithm (so a test can sign with another)."""
    return RSAKey.import_key({k: v for k, v in key.as_dict(private=True).items() if k != "alg"})


# (case, assertion maker) -> refused with invalid_client
BAD_ASSERTIONS = [
    ("stale exp", lambda k: assertion(k, "RS384", exp_in=-120)),
    ("exp more than 5 minutes ahead", lambda k: assertion(k, "RS384", exp_in=3600)),
    ("wrong aud (the FHIR base)", lambda k: assertion(k, "RS384", aud=ORIGIN + "/fhir")),
    ("wrong aud (another server)", lambda k: assertion(k, "RS384", aud="http://127.0.0.1:9/token")),
    ("signed with an unregistered key", lambda k: assertion(keyring().stranger, "RS384", kid=k.kid)),
    ("RS256 is not a SMART algorithm", lambda k: assertion(without_alg(k), "RS256")),
    ("iss differs from sub", lambda k: assertion(k, "RS384", iss="someone-else")),
    ("unknown client", lambda k: assertion(k, "RS384", client_id="nobody")),
    ("not a JWT", lambda k: "not.a.jwt"),
]


@pytest.mark.parametrize(("case", "make"), BAD_ASSERTIONS, ids=[c for c, _ in BAD_ASSERTIONS])
def test_bad_assertions_are_refused_with_invalid_client(
    setup: tuple[FlaskClient, SandboxAuthorizationServer], case: str, make: Any
) -> None:
    client, _server = setup
    response = post_token(client, backend_form(make(keyring().rs384)))
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] == "invalid_client", response.get_json()


def test_replayed_jti_is_refused(setup: tuple[FlaskClient, SandboxAuthorizationServer]) -> None:
    client, _ = setup
    jti = str(uuid.uuid4())
    first = post_token(client, backend_form(assertion(keyring().rs384, "RS384", jti=jti)))
    assert first.status_code == 200
    replay = post_token(client, backend_form(assertion(keyring().rs384, "RS384", jti=jti)))
    assert replay.get_json()["error"] == "invalid_client"
    assert "jti" in replay.get_json()["error_description"]
    # the same jti from another (well, the same) client with a fresh one is fine again
    fresh = post_token(client, backend_form(assertion(keyring().es384, "ES384")))
    assert fresh.status_code == 200


def test_client_credentials_needs_an_asymmetric_client(
    setup: tuple[FlaskClient, SandboxAuthorizationServer],
) -> None:
    client, _ = setup
    by_secret = post_token(
        client,
        {"grant_type": "client_credentials", "scope": "system/*.rs"},
        headers=basic_auth(CONFIDENTIAL_APP_ID, CONFIDENTIAL_APP_SECRET),
    )
    assert by_secret.get_json()["error"] == "invalid_client"
    no_assertion = post_token(client, {"grant_type": "client_credentials", "client_id": BACKEND_ID})
    assert no_assertion.get_json()["error"] == "invalid_client"


def test_backend_token_can_be_introspected_by_the_backend_client(
    setup: tuple[FlaskClient, SandboxAuthorizationServer],
) -> None:
    client, _ = setup
    token = post_token(client, backend_form(assertion(keyring().rs384, "RS384"))).get_json()["access_token"]
    info = client.post(
        "/auth/introspect",
        data={
            "token": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(keyring().es384, "ES384"),
        },
    ).get_json()
    assert info["active"] is True and info["client_id"] == BACKEND_ID
    assert info["scope"] == "system/Observation.rs" and info["exp"] <= time.time() + 300


@responses.activate
def test_client_registered_with_a_loopback_jwks_uri() -> None:
    app, server = make_auth_app()
    jwks_uri = "http://127.0.0.1:9/jwks.json"
    server.clients["uri-client"] = SandboxClient(
        client_id="uri-client",
        auth_method="private_key_jwt",
        scopes=("system/*",),
        grant_types=("client_credentials",),
        jwks_uri=jwks_uri,
    )
    responses.get(jwks_uri, json=public_jwks([keyring().es384]))
    client = app.test_client()
    ok = post_token(client, backend_form(assertion(keyring().es384, "ES384", client_id="uri-client")))
    assert ok.status_code == 200, ok.get_json()
    assert responses.calls[0].request.url == jwks_uri

    responses.get(jwks_uri, status=500)
    responses.replace(responses.GET, jwks_uri, status=500)
    down = post_token(client, backend_form(assertion(keyring().es384, "ES384", client_id="uri-client")))
    assert down.get_json()["error"] == "invalid_client"


def test_token_url_is_the_only_audience() -> None:
    app, _ = make_auth_app()
    app.config["SANDBOX_BASE_URL"] = "http://127.0.0.1:7777"
    client = app.test_client()
    old = post_token(client, backend_form(assertion(keyring().rs384, "RS384", aud=TOKEN_URL)))
    assert old.get_json()["error"] == "invalid_client"
    new = post_token(
        client, backend_form(assertion(keyring().rs384, "RS384", aud="http://127.0.0.1:7777/auth/token"))
    )
    assert new.status_code == 200
