"""Shared helpers of the sandbox authorization-server tests (no tests here).

Keys are generated once per test process (functools.cache), since RSA key generation is the slow part.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smart_app.sandbox.auth_server import (
    AuthSettings,
    Person,
    SandboxAuthorizationServer,
    create_auth_blueprint,
)
from smart_app.sandbox.clients import SandboxClient, default_clients
from smart_app.sandbox.keys import new_client_key, new_signing_key, public_jwks
from smart_app.sandbox.tokens import TokenStore

ORIGIN = "http://localhost"  # the Flask test client's host
FHIR_BASE = ORIGIN + "/fhir"
TOKEN_URL = ORIGIN + "/auth/token"
APP_LAUNCH = "http://127.0.0.1:8000/launch"
REDIRECT = "http://127.0.0.1:8000/callback"
BACKEND_ID = "test-backend"


@dataclass(frozen=True)
class KeyRing:
    signing: RSAKey
    rs384: RSAKey
    es384: ECKey
    stranger: RSAKey  # a key nobody registered


@functools.cache
def keyring() -> KeyRing:
    stranger = new_client_key("RS384")
    assert isinstance(stranger, RSAKey)
    rs, es = new_client_key("RS384"), new_client_key("ES384")
    assert isinstance(rs, RSAKey) and isinstance(es, ECKey)
    return KeyRing(new_signing_key(), rs, es, stranger)


class StaticDirectory:
    """A fixed set of people, standing in for the FHIR store."""

    def __init__(self, patients: list[Person], practitioners: list[Person]) -> None:
        self._patients = patients
        self._practitioners = practitioners

    def patients(self, limit: int) -> list[Person]:
        return self._patients[:limit]

    def practitioners(self, limit: int) -> list[Person]:
        return self._practitioners[:limit]

    def exists(self, reference: str) -> bool:
        return any(p.reference == reference for p in self._patients + self._practitioners)


PATIENTS = [Person("Patient/p1", "Ada <b>Test</b>"), Person("Patient/p2", "Bob Example")]
PRACTITIONERS = [Person("Practitioner/n1", "Nurse One"), Person("Practitioner/dr1", "Dr Two")]


def make_clients() -> dict[str, SandboxClient]:
    keys = keyring()
    clients = default_clients(APP_LAUNCH, (REDIRECT,), public_jwks([keys.rs384]))
    clients[BACKEND_ID] = SandboxClient(
        client_id=BACKEND_ID,
        auth_method="private_key_jwt",
        scopes=("system/*",),
        grant_types=("client_credentials",),
        jwks=public_jwks([keys.rs384, keys.es384]),
    )
    return clients


def make_auth_app(**settings: Any) -> tuple[Flask, SandboxAuthorizationServer]:
    """A Flask app serving only the authorization server (no FHIR store), for the Flask test client."""
    tokens = TokenStore()
    server = SandboxAuthorizationServer(
        clients=make_clients(),
        tokens=tokens,
        signing_key=keyring().signing,
        directory=StaticDirectory(PATIENTS, PRACTITIONERS),
        settings=AuthSettings(**settings),
    )
    app = Flask("sandbox-auth-test")
    app.register_blueprint(create_auth_blueprint(server))
    return app, server


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(**overrides: str | None) -> dict[str, str]:
    """A valid standalone authorization request of the public test app; override or drop (None) fields."""
    _, challenge = pkce_pair()
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": "rpm-billing-app",
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser launch/patient patient/Observation.rs offline_access",
        "state": "st-" + secrets.token_hex(8),
        "aud": FHIR_BASE,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def redirect_query(response: Any) -> dict[str, str]:
    """The query parameters of a redirect's Location (asserting it is a redirect)."""
    assert response.status_code == 302, (response.status_code, response.get_data(as_text=True)[:500])
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    return {k: v[0] for k, v in query.items()}


def get_code(client: FlaskClient, params: dict[str, str]) -> str:
    """Run an (auto-approved) authorization request and return the code."""
    query = redirect_query(client.get("/auth/authorize", query_string=params))
    assert query.get("state") == params.get("state")
    assert "code" in query, query
    return query["code"]


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def assertion(
    key: RSAKey | ECKey,
    alg: str,
    *,
    client_id: str = BACKEND_ID,
    aud: str = TOKEN_URL,
    exp_in: int = 240,
    jti: str | None = None,
    kid: str | None = None,
    iss: str | None = None,
) -> str:
    """A SMART client assertion (private_key_jwt), signed with joserfc."""
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", "kid": kid or key.kid or ""}
    claims = {
        "iss": iss or client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + exp_in,
        "jti": jti or str(uuid.uuid4()),
    }
    return jwt.encode(header, claims, key, algorithms=[alg])


def backend_form(client_assertion: str, scope: str = "system/Observation.rs") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion,
    }
