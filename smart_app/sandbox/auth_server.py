"""The sandbox EHR's SMART authorization server, built on authlib's OAuth 2.0 server.

What it does (SMART App Launch 2.x and Backend Services, as far as the product uses them):

- discovery: `GET <fhir base>/.well-known/smart-configuration` (and `openid-configuration` for id_tokens);
- `GET|POST /auth/authorize`: authorization code with PKCE S256 (required; `plain` and missing refused),
  `aud` must be the FHIR base, `state` echoed, `launch` must come from this EHR's launch page (and the same
  client), granted scopes = requested ∩ the client's allowed; an approve page (or auto-approve) with a patient
  picker for standalone `launch/patient`;
- `POST /auth/token`: authorization_code (single-use code; a replayed code is refused and every token issued
  from it revoked, RFC 6749 §4.1.2), refresh_token (rotated), client_credentials with a `private_key_jwt`
  assertion (RS384/ES384; a replayed `jti`, an expired `exp`, an `exp` more than 5 minutes ahead or a wrong
  `aud` is refused with `invalid_client`);
- `POST /auth/introspect` (RFC 7662, confidential clients only), `GET /auth/jwks` (the id_token key);
- `GET /ehr`: an EHR launch page; `GET /ehr/launch` remembers a launch context (patient, user) behind an
  opaque `launch` value and sends the browser to the app's launch URL with `iss` and `launch`.

Access tokens are issued through the shared TokenStore (tokens.py), where the FHIR server checks them.
Nothing here logs a token or patient data; all state is in memory (this is a test double).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, cast
from urllib.parse import urlencode

import requests
from authlib.common.urls import add_params_to_uri
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    grants,
)
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode
from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from smart_app.sandbox.clients import SandboxClient
from smart_app.sandbox.tokens import AccessGrant, TokenStore

log = logging.getLogger(__name__)

# Paths below the sandbox's origin. The FHIR server is mounted at FHIR_PATH by app.py.
FHIR_PATH = "/fhir"
AUTHORIZE_PATH = "/auth/authorize"
TOKEN_PATH = "/auth/token"
INTROSPECT_PATH = "/auth/introspect"
JWKS_PATH = "/auth/jwks"
EHR_PATH = "/ehr"

CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-ehr-patient",
    "context-standalone-patient",
    "context-banner",
    "permission-patient",
    "permission-user",
    "permission-offline",
    "permission-v1",
    "permission-v2",
)
SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.cruds",
    "patient/*.read",
    "patient/*.write",
    "user/*.rs",
    "user/*.cruds",
    "user/*.read",
    "user/*.write",
    "system/*.rs",
    "system/*.cruds",
    "system/*.read",
    "system/*.write",
)
ASSERTION_ALGORITHMS = ["RS384", "ES384"]  # SMART asymmetric client authentication
ASSERTION_MAX_LIFETIME = 300  # SMART: an assertion's exp is no more than 5 minutes in the future
ASSERTION_LEEWAY = 10  # seconds of clock skew tolerated on exp (everything runs on one host)
ID_TOKEN_ALG = "RS256"  # SMART: servers SHALL support RS256 for id_tokens
DEFAULT_USER = "Practitioner/sandbox-practitioner"
LIST_LIMIT = 200  # people shown on the launch page and the patient picker


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuthSettings:
    auto_approve: bool = False  # skip the approve page (tests); a needed patient is the first one listed
    access_token_lifetime: int = 3600  # SMART: access tokens SHOULD live at most an hour
    backend_token_lifetime: int = 300  # SMART Backend Services: SHOULD be at most 5 minutes
    offline_refresh_lifetime: int = 30 * 86400
    online_refresh_lifetime: int = 86400
    code_lifetime: int = 300  # RFC 6749 recommends at most 10 minutes
    launch_lifetime: int = 3600
    approval_lifetime: int = 900


@dataclass(frozen=True)
class SandboxUrls:
    """Absolute URLs of the sandbox, all derived from its origin (e.g. `http://127.0.0.1:8090`)."""

    origin: str

    @property
    def fhir_base(self) -> str:
        return self.origin + FHIR_PATH

    @property
    def authorize(self) -> str:
        return self.origin + AUTHORIZE_PATH

    @property
    def token(self) -> str:
        return self.origin + TOKEN_PATH

    @property
    def introspect(self) -> str:
        return self.origin + INTROSPECT_PATH

    @property
    def jwks(self) -> str:
        return self.origin + JWKS_PATH

    @property
    def ehr(self) -> str:
        return self.origin + EHR_PATH

    @property
    def issuer(self) -> str:
        # id_tokens are issued by the FHIR base, so `{iss}/.well-known/openid-configuration` resolves here.
        return self.fhir_base


def current_urls() -> SandboxUrls:
    """The sandbox's URLs: from `SANDBOX_BASE_URL` when app.py set it, else from the request's own root."""
    origin = current_app.config.get("SANDBOX_BASE_URL") or request.url_root
    return SandboxUrls(origin.rstrip("/"))


# --------------------------------------------------------------------------------------- the directory


@dataclass(frozen=True)
class Person:
    """Someone the launch page or the patient picker can offer: a reference and a display label."""

    reference: str  # "Patient/p1", "Practitioner/n1"
    label: str  # from the EHR data: untrusted, escaped by the templates

    @property
    def id(self) -> str:
        return self.reference.partition("/")[2]


class Directory(Protocol):
    """What the authorization server needs to know of the EHR's people (app.py adapts the FHIR store)."""

    def patients(self, limit: int) -> list[Person]: ...

    def practitioners(self, limit: int) -> list[Person]: ...

    def exists(self, reference: str) -> bool: ...


# ------------------------------------------------------------------------------------------ the records


@dataclass(frozen=True)
class LaunchContext:
    """The resource owner of an authorization (authlib's "user"): who is signed in, and the launch context."""

    fhir_user: str | None  # "Practitioner/x"
    patient: str | None = None  # patient id
    encounter: str | None = None
    kind: str = "standalone"  # "ehr" or "standalone"

    @property
    def need_patient_banner(self) -> bool:
        # In an EHR launch the EHR shows its own banner around the app; a standalone app must show one.
        return self.kind != "ehr"

    def get_user_id(self) -> str:
        return self.fhir_user or "anonymous"


@dataclass(frozen=True)
class PendingLaunch:
    client_id: str
    context: LaunchContext
    expires_at: float


@dataclass(frozen=True)
class PendingApproval:
    client_id: str
    redirect_uri: str | None
    expires_at: float


@dataclass(frozen=True)
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    context: LaunchContext
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass(frozen=True)
class IssuedToken:
    """An access or refresh token the server issued (for refresh, introspection, code-replay revocation)."""

    value: str = field(repr=False)
    kind: str  # "access_token" or "refresh_token"
    client_id: str
    scope: str
    context: LaunchContext | None
    issued_at: float
    expires_at: float
    origin_code: str | None  # the authorization code this token descends from

    def check_client(self, client: SandboxClient) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - self.issued_at)

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return False  # revoked tokens are forgotten by AuthState, so they are never found


class AuthState:
    """Everything the authorization server remembers between requests. Thread-safe, in memory."""

    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens
        self._lock = threading.Lock()
        self._codes: dict[str, AuthorizationCode] = {}
        self._used_codes: dict[str, float] = {}  # code -> when to forget it
        self._launches: dict[str, PendingLaunch] = {}
        self._approvals: dict[str, PendingApproval] = {}
        self._issued: dict[str, IssuedToken] = {}
        self._by_code: dict[str, set[str]] = {}  # origin code -> values of tokens issued from it
        self._jtis: dict[tuple[str, str], float] = {}  # (client_id, jti) -> when to forget it
        self._nonces: set[tuple[str, str]] = set()

    def _prune(self, now: float) -> None:
        for store in (self._codes, self._launches, self._approvals):
            for key in [k for k, v in store.items() if v.expires_at <= now]:
                del store[key]
        for key in [k for k, exp in self._used_codes.items() if exp <= now]:
            del self._used_codes[key]
        for jti in [k for k, exp in self._jtis.items() if exp <= now]:
            del self._jtis[jti]
        for value in [k for k, t in self._issued.items() if t.expires_at <= now]:
            del self._issued[value]

    # launches and approvals
    def add_launch(self, launch: PendingLaunch) -> str:
        value = secrets.token_urlsafe(24)
        with self._lock:
            self._prune(time.time())
            self._launches[value] = launch
        return value

    def launch(self, value: str) -> PendingLaunch | None:
        with self._lock:
            found = self._launches.get(value)
        return found if found and found.expires_at > time.time() else None

    def add_approval(self, approval: PendingApproval) -> str:
        value = secrets.token_urlsafe(24)
        with self._lock:
            self._prune(time.time())
            self._approvals[value] = approval
        return value

    def take_approval(self, value: str) -> PendingApproval | None:
        with self._lock:
            found = self._approvals.pop(value, None)
        return found if found and found.expires_at > time.time() else None

    # codes
    def add_code(self, code: AuthorizationCode) -> None:
        with self._lock:
            self._prune(time.time())
            self._codes[code.code] = code
            if code.nonce:
                self._nonces.add((code.client_id, code.nonce))

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return (client_id, nonce) in self._nonces

    def redeem_code(self, value: str, client_id: str) -> AuthorizationCode | None:
        """The code, consumed (single use). A code presented again revokes all tokens issued from it."""
        now = time.time()
        with self._lock:
            if value in self._used_codes:
                self._revoke_from_code_locked(value)
                log.warning("authorization code replayed by client %s: its tokens are revoked", client_id)
                return None
            code = self._codes.get(value)
            if code is None or code.client_id != client_id:
                return None
            del self._codes[value]
            self._used_codes[value] = now + 24 * 3600
        return code if code.expires_at > now else None

    def _revoke_from_code_locked(self, code: str) -> None:
        for value in self._by_code.pop(code, set()):
            self._issued.pop(value, None)
            self._tokens.revoke(value)

    # tokens
    def add_token(self, token: IssuedToken) -> None:
        with self._lock:
            self._prune(time.time())
            self._issued[token.value] = token
            if token.origin_code:
                self._by_code.setdefault(token.origin_code, set()).add(token.value)

    def find_token(self, value: str, kind: str | None = None) -> IssuedToken | None:
        """A live token by value (and kind, if given). Access tokens must also still be in the TokenStore."""
        with self._lock:
            found = self._issued.get(value)
        if found is None or (kind and found.kind != kind) or found.is_expired():
            return None
        if found.kind == "access_token" and self._tokens.lookup(value) is None:
            return None
        return found

    def revoke_token(self, value: str) -> None:
        with self._lock:
            found = self._issued.pop(value, None)
            if found and found.origin_code:
                self._by_code.get(found.origin_code, set()).discard(value)
        self._tokens.revoke(value)

    # client assertions
    def use_jti(self, client_id: str, jti: str, forget_at: float) -> bool:
        """Record an assertion's jti; False if this client already used it (a replay)."""
        with self._lock:
            self._prune(time.time())
            if (client_id, jti) in self._jtis:
                return False
            self._jtis[(client_id, jti)] = forget_at
            return True


# --------------------------------------------------------------------------------------- scope policy


def scopes_for_context(scopes: Iterable[str], context: LaunchContext) -> list[str]:
    """The granted scopes once the launch context is known.

    Patient-level scopes need a patient in context: without one (a practitioner launch with no patient) they
    are dropped rather than granted with nothing to restrict them.
    """
    return [s for s in scopes if context.patient or not s.startswith("patient/")]


def needs_patient_choice(scopes: Iterable[str], launch: str | None) -> bool:
    """A standalone launch asking for `launch/patient` must have a patient picked before approval."""
    return launch is None and "launch/patient" in scopes


def _ascii(text: str) -> str:
    """An OAuth error description: RFC 6749 allows only printable ASCII without `"` and `\\`."""
    cleaned = "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" for c in text)
    return cleaned[:300]


# ------------------------------------------------------------------------------------ authlib pieces


class _S256CodeChallenge(CodeChallenge):
    """PKCE, required on every authorization request, S256 only (SMART: servers SHALL NOT support plain)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            # A missing method means plain (RFC 7636 §4.3), which is refused too.
            raise InvalidRequestError("code_challenge_method must be S256 (plain is not supported)")
        super().validate_code_challenge(grant, redirect_uri)


class _SmartLaunchChecks:
    """Authorization request checks of SMART: `aud` is the FHIR base; `launch` is one this EHR issued."""

    def __init__(self, server: SandboxAuthorizationServer) -> None:
        self.server = server

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        aud = data.get("aud")
        if not aud:
            raise InvalidRequestError("Missing 'aud': send the FHIR base URL of this server")
        if aud.rstrip("/") != current_urls().fhir_base:
            raise InvalidRequestError("'aud' is not the FHIR base URL of this server")
        launch = data.get("launch")
        scopes = (grant.request.scope or "").split()
        if launch:
            pending = self.server.state.launch(launch)
            if pending is None or pending.client_id != grant.request.client.client_id:
                raise InvalidRequestError("Unknown or expired 'launch' for this client")
        elif "launch" in scopes:
            raise InvalidRequestError("Scope 'launch' needs the 'launch' parameter of an EHR launch")


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "private_key_jwt", "none"]
    server: SandboxAuthorizationServer

    def save_authorization_code(self, code: str, request: Any) -> None:
        context: LaunchContext = request.user
        data = request.payload.data
        scope = " ".join(scopes_for_context((request.scope or "").split(), context))
        now = time.time()
        self.server.state.add_code(
            AuthorizationCode(
                code=code,
                client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri,
                scope=scope,
                context=context,
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                nonce=data.get("nonce"),
                auth_time=int(now),
                expires_at=now + self.server.settings.code_lifetime,
            )
        )

    def query_authorization_code(self, code: str, client: SandboxClient) -> AuthorizationCode | None:
        return self.server.state.redeem_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # already consumed by redeem_code, atomically with its lookup

    def authenticate_user(self, authorization_code: AuthorizationCode) -> LaunchContext:
        return authorization_code.context


class _RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "private_key_jwt", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotate: the old refresh token is revoked below
    server: SandboxAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        return self.server.state.find_token(refresh_token, "refresh_token")

    def authenticate_user(self, refresh_token: IssuedToken) -> LaunchContext | None:
        return refresh_token.context

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        self.server.state.revoke_token(refresh_token.value)


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):
    # SMART Backend Services: asymmetric client authentication only.
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["private_key_jwt"]


class _PrivateKeyJwt(JWTBearerClientAssertion):
    """`private_key_jwt` client authentication (RFC 7523 §2.2) with SMART's rules on the assertion."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: SandboxAuthorizationServer) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [current_urls().token]

    def resolve_client_public_key(self, client: SandboxClient) -> KeySet:
        if client.jwks is not None:
            return KeySet.import_key_set(cast(Any, dict(client.jwks)))
        if client.jwks_uri is None:
            raise InvalidClientError(description="The client has no registered keys")
        # The URI was checked to be loopback when the client was registered.
        try:
            response = requests.get(client.jwks_uri, timeout=5)
            response.raise_for_status()
            return KeySet.import_key_set(response.json())
        except (requests.RequestException, ValueError, JoseError) as exc:
            log.warning("cannot fetch the JWKS of client %s: %s", client.client_id, type(exc).__name__)
            raise InvalidClientError(description="The client's jwks_uri could not be read") from exc

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except JoseError as exc:
            raise InvalidClientError(
                description=_ascii(f"Client assertion rejected ({exc.error}); RS384 or ES384 needed")
            ) from exc
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True},
            sub={"essential": True},
            aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(
                description=_ascii(f"Client assertion rejected: {exc.description}")
            ) from exc
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="Client assertion rejected: 'iss' and 'sub' differ")
        now = time.time()
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp > now + ASSERTION_MAX_LIFETIME + self.leeway:
            raise InvalidClientError(
                description="Client assertion rejected: 'exp' is more than 5 minutes ahead"
            )
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="Client assertion rejected: 'jti' was already used")

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        # Keep the jti until the assertion could no longer be accepted anyway.
        return self.server.state.use_jti(str(claims["sub"]), str(jti), float(claims["exp"]) + self.leeway)


class _OpenIdConnect(OpenIDCode):
    """id_token for `openid` requests: RS256, signed with the sandbox key, `fhirUser` when requested."""

    def __init__(self, server: SandboxAuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.server.state.nonce_used(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: SandboxClient) -> RSAKey:
        return self.server.signing_key

    def get_client_algorithm(self, client: SandboxClient) -> str:
        return ID_TOKEN_ALG

    def get_encode_header(self, client: SandboxClient) -> dict[str, str]:
        return {"alg": ID_TOKEN_ALG, "kid": self.server.signing_key.kid or "", "typ": "JWT"}

    def get_client_claims(self, client: SandboxClient) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": current_urls().issuer, "aud": client.client_id, "iat": now, "exp": now + 3600}

    def generate_user_info(self, user: LaunchContext, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": user.get_user_id()}
        if "fhirUser" in scope.split() and user.fhir_user:
            claims["fhirUser"] = f"{current_urls().fhir_base}/{user.fhir_user}"
        return claims


class _Introspection(IntrospectionEndpoint):
    """RFC 7662 token introspection, for confidential clients (a resource server's stand-in)."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "private_key_jwt"]
    server: SandboxAuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        state = self.server.state
        return state.find_token(token_string, token_type_hint) or state.find_token(token_string)

    def check_permission(self, token: IssuedToken, client: SandboxClient, request: Any) -> bool:
        return True  # any authenticated confidential client may introspect (documented choice)

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "exp": int(token.expires_at),
            "iat": int(token.issued_at),
            "iss": current_urls().issuer,
        }
        context = token.context
        if context is not None:
            if context.fhir_user:
                payload["sub"] = context.fhir_user
                payload["fhirUser"] = f"{current_urls().fhir_base}/{context.fhir_user}"
            if context.patient:
                payload["patient"] = context.patient
            if context.encounter:
                payload["encounter"] = context.encounter
        return payload


# ---------------------------------------------------------------------------------------- the server


class SandboxAuthorizationServer(AuthorizationServer):
    """authlib's Flask authorization server wired to the sandbox's clients, TokenStore and signing key."""

    def __init__(
        self,
        *,
        clients: Mapping[str, SandboxClient],
        tokens: TokenStore,
        signing_key: RSAKey,
        directory: Directory,
        settings: AuthSettings,
    ) -> None:
        super().__init__()
        self.clients = dict(clients)
        self.tokens = tokens
        self.signing_key = signing_key
        self.directory = directory
        self.settings = settings
        self.state = AuthState(tokens)
        self.register_token_generator("default", self._generate_token)
        self.register_client_auth_method("private_key_jwt", _PrivateKeyJwt(self))
        self.register_grant(
            _AuthorizationCodeGrant,
            [_S256CodeChallenge(required=True), _SmartLaunchChecks(self), _OpenIdConnect(self)],
        )
        self.register_grant(_RefreshTokenGrant)
        self.register_grant(_ClientCredentialsGrant)
        self.register_endpoint(_Introspection)

    def query_client(self, client_id: str) -> SandboxClient | None:
        return self.clients.get(client_id)

    def _generate_token(
        self,
        grant_type: str,
        client: SandboxClient,
        user: LaunchContext | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Issue the access token into the TokenStore and build the token response with the launch context."""
        if grant_type == "client_credentials":
            scope = client.get_allowed_scope(scope)
            if not scope:
                raise InvalidScopeError("None of the requested scopes is allowed for this client")
            lifetime = self.settings.backend_token_lifetime
        else:
            lifetime = self.settings.access_token_lifetime
        if expires_in is not None:
            lifetime = expires_in
        scopes = tuple((scope or "").split())
        now = time.time()
        access = self.tokens.issue(
            AccessGrant(
                client_id=client.client_id,
                scopes=scopes,
                expires_at=now + lifetime,
                patient=user.patient if user else None,
                fhir_user=user.fhir_user if user else None,
                encounter=user.encounter if user else None,
                extra={"grant_type": grant_type, "launch": user.kind if user else "backend"},
            )
        )
        self.state.add_token(
            IssuedToken(
                access, "access_token", client.client_id, scope or "", user, now, now + lifetime, None
            )
        )
        token: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope or "",
        }
        if user is not None and user.patient:
            token["patient"] = user.patient
            token["need_patient_banner"] = user.need_patient_banner
        if user is not None and user.encounter:
            token["encounter"] = user.encounter
        if include_refresh_token and user is not None and {"offline_access", "online_access"} & set(scopes):
            refresh_lifetime = (
                self.settings.offline_refresh_lifetime
                if "offline_access" in scopes
                else self.settings.online_refresh_lifetime
            )
            refresh = secrets.token_urlsafe(36)
            self.state.add_token(
                IssuedToken(
                    refresh,
                    "refresh_token",
                    client.client_id,
                    scope or "",
                    user,
                    now,
                    now + refresh_lifetime,
                    None,
                )
            )
            token["refresh_token"] = refresh
        return token

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Tie the new tokens to the authorization code they descend from (to revoke them on code replay)."""
        origin: str | None = None
        if isinstance(request.authorization_code, AuthorizationCode):
            origin = request.authorization_code.code
        elif isinstance(request.refresh_token, IssuedToken):
            origin = request.refresh_token.origin_code
        if origin is None:
            return
        for kind in ("access_token", "refresh_token"):
            value = token.get(kind)
            found = self.state.find_token(value, kind) if value else None
            if found is not None:
                self.state.add_token(replace(found, origin_code=origin))

    def default_user(self) -> str:
        practitioners = self.directory.practitioners(1)
        return practitioners[0].reference if practitioners else DEFAULT_USER

    def create_launch(
        self, client_id: str, patient: str | None, user: str | None, encounter: str | None = None
    ) -> str:
        """Remember an EHR launch context and return its opaque `launch` value."""
        context = LaunchContext(
            fhir_user=user or self.default_user(), patient=patient, encounter=encounter, kind="ehr"
        )
        expires = time.time() + self.settings.launch_lifetime
        return self.state.add_launch(PendingLaunch(client_id, context, expires))

    def discovery(self, urls: SandboxUrls) -> dict[str, Any]:
        return {
            "issuer": urls.issuer,
            "jwks_uri": urls.jwks,
            "authorization_endpoint": urls.authorize,
            "token_endpoint": urls.token,
            "introspection_endpoint": urls.introspect,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "scopes_supported": list(SCOPES_SUPPORTED),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": list(CAPABILITIES),
        }

    def openid_configuration(self, urls: SandboxUrls) -> dict[str, Any]:
        return {
            "issuer": urls.issuer,
            "jwks_uri": urls.jwks,
            "authorization_endpoint": urls.authorize,
            "token_endpoint": urls.token,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
            "scopes_supported": ["openid", "fhirUser", "profile"],
            "claims_supported": ["sub", "fhirUser", "iss", "aud", "exp", "iat"],
        }


# ------------------------------------------------------------------------------------- the blueprint

_OAUTH_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "launch",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "prompt",
)


def _error_page(title: str, message: str, status: int = 400) -> tuple[str, int]:
    return render_template("sandbox_error.html", title=title, message=message), status


def _json(payload: Mapping[str, Any], cache: str = "no-store") -> Response:
    response = jsonify(payload)
    response.headers["Cache-Control"] = cache
    return response


def create_auth_blueprint(server: SandboxAuthorizationServer) -> Blueprint:
    """Routes of the authorization server and the EHR launch page (no URL prefix: paths are absolute)."""
    bp = Blueprint("sandbox_auth", __name__, template_folder="templates")

    @bp.get(FHIR_PATH + "/.well-known/smart-configuration")
    def smart_configuration() -> Response:
        # JSON whatever the Accept header says (SMART App Launch, conformance).
        return _json(server.discovery(current_urls()), cache="max-age=60")

    @bp.get(FHIR_PATH + "/.well-known/openid-configuration")
    def openid_configuration() -> Response:
        return _json(server.openid_configuration(current_urls()), cache="max-age=60")

    @bp.get(JWKS_PATH)
    def jwks() -> Response:
        return _json({"keys": [server.signing_key.as_dict(private=False)]}, cache="max-age=3600")

    @bp.post(TOKEN_PATH)
    def token() -> Any:
        return server.create_token_response()

    @bp.post(INTROSPECT_PATH)
    def introspect() -> Any:
        return server.create_endpoint_response(_Introspection.ENDPOINT_NAME)

    @bp.route(AUTHORIZE_PATH, methods=["GET", "POST"])
    def authorize() -> Any:
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            if error.redirect_uri:  # a registered redirect URI: the error goes back to the app, with state
                return server.handle_error_response(None, error)
            return _error_page("Authorization refused", f"{error.error}: {error.description or ''}")
        oauth = grant.request
        client: SandboxClient = oauth.client
        params = {k: oauth.payload.data[k] for k in _OAUTH_PARAMS if oauth.payload.data.get(k)}
        scopes = (oauth.scope or "").split()
        launch_value = params.get("launch")
        pending = server.state.launch(launch_value) if launch_value else None
        needs_patient = needs_patient_choice(scopes, launch_value)
        if request.method == "POST" and "decision" in request.form:
            approval = server.state.take_approval(request.form.get("approval", ""))
            if (
                approval is None
                or approval.client_id != client.client_id
                or approval.redirect_uri != params.get("redirect_uri")
            ):
                return _error_page("Approval expired", "This approval form was already used or has expired.")
            if request.form["decision"] != "approve":
                return server.create_authorization_response(grant=grant, grant_user=None)
            patient = request.form.get("patient") or None
            user = request.form.get("user") or None
        elif server.settings.auto_approve:
            listed = server.directory.patients(1) if needs_patient else []
            patient = listed[0].id if listed else None
            user = None
        else:
            approval_id = server.state.add_approval(
                PendingApproval(
                    client.client_id,
                    params.get("redirect_uri"),
                    time.time() + server.settings.approval_lifetime,
                )
            )
            return render_template(
                "sandbox_approve.html",
                client=client,
                scopes=scopes,
                params=params,
                approval=approval_id,
                needs_patient=needs_patient,
                patients=server.directory.patients(LIST_LIMIT) if needs_patient else [],
                users=server.directory.practitioners(LIST_LIMIT),
                launch=pending,
                action=AUTHORIZE_PATH,
            )
        if pending is not None:
            context = pending.context
        else:
            if needs_patient and not (patient and server.directory.exists(f"Patient/{patient}")):
                return _error_page("No patient chosen", "Pick a patient of this EHR to continue.")
            if user and not server.directory.exists(user):
                return _error_page("Unknown user", "The user to sign in as is not in this EHR.")
            context = LaunchContext(
                fhir_user=user or server.default_user(),
                patient=patient if needs_patient else None,
                kind="standalone",
            )
        return server.create_authorization_response(grant=grant, grant_user=context)

    @bp.get(EHR_PATH)
    def ehr() -> Any:
        apps = [c for c in server.clients.values() if c.launch_url]
        chosen = server.clients.get(request.args.get("client_id", "")) or (apps[0] if apps else None)
        users = server.directory.practitioners(LIST_LIMIT)
        user = request.args.get("user") or (users[0].reference if users else DEFAULT_USER)
        links = []
        if chosen is not None:
            for person in server.directory.patients(LIST_LIMIT):
                query = {"client_id": chosen.client_id, "patient": person.id, "user": user}
                links.append((person, f"{EHR_PATH}/launch?{urlencode(query)}"))
            no_patient = f"{EHR_PATH}/launch?{urlencode({'client_id': chosen.client_id, 'user': user})}"
        else:
            no_patient = ""
        return render_template(
            "sandbox_ehr.html",
            apps=apps,
            chosen=chosen,
            users=users,
            user=user,
            links=links,
            no_patient=no_patient,
            fhir_base=current_urls().fhir_base,
        )

    @bp.get(EHR_PATH + "/launch")
    def ehr_launch() -> Any:
        client = server.clients.get(request.args.get("client_id", ""))
        if client is None or not client.launch_url:
            return _error_page("Unknown app", "That app is not registered with a launch URL.", 404)
        patient = request.args.get("patient") or None
        if patient is not None and not server.directory.exists(f"Patient/{patient}"):
            return _error_page("Unknown patient", "That patient is not in this EHR.", 404)
        user = request.args.get("user") or None
        if user is not None and not server.directory.exists(user):
            return _error_page("Unknown user", "That user is not a Practitioner of this EHR.", 404)
        encounter = request.args.get("encounter") or None
        if encounter is not None and not server.directory.exists(f"Encounter/{encounter}"):
            return _error_page("Unknown encounter", "That encounter is not in this EHR.", 404)
        launch = server.create_launch(client.client_id, patient, user, encounter)
        target = add_params_to_uri(client.launch_url, [("iss", current_urls().fhir_base), ("launch", launch)])
        return redirect(target, code=302)

    return bp
