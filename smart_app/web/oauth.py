"""SMART App Launch for the clinician app: scopes, authorization request, code exchange, refresh, id_token.

OAuth is authlib's `OAuth2Session` throughout: PKCE S256 (`code_challenge_method="S256"`, a fresh verifier
per request), the code exchange and the refresh grant; client authentication `none` (public app),
`client_secret_basic` or SMART's `private_key_jwt` (smart_app.auth.SmartPrivateKeyJWT). What this module adds
is SMART's part: `aud` = `iss`, `launch`, scopes per server syntax, the launch context in the token response,
and the `fhirUser` of a verified id_token.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app import scopes as smart_scopes
from smart_app.auth import Auth, SmartPrivateKeyJWT, default_alg, key_id
from smart_app.discovery import SmartConfiguration, is_loopback
from smart_app.errors import ExitCode, RpmBillingError
from smart_app.web.config import IssuerConfig

log = logging.getLogger(__name__)

Mode = Literal["ehr", "standalone-patient", "standalone-user"]
TOKEN_TIMEOUT: tuple[float, float] = (5.0, 20.0)
REFRESH_LEEWAY = 30.0  # refresh this many seconds before the access token expires
DEFAULT_LIFETIME = 300.0  # assumed when a token response has no expires_in
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]

# What the app reads and writes (contract section 1 reads; section 4 writes, which also need search and
# update: re-runs look up earlier writes and mark them entered-in-error or superseded).
READ_TYPES = (
    "Patient",
    "Consent",
    "Device",
    "Observation",
    "Communication",
    "Encounter",
    "RelatedPerson",
    "Practitioner",
    "PractitionerRole",
)
WRITE_TYPES = ("ChargeItem", "DocumentReference")


class LaunchError(RpmBillingError):
    """A launch or a token step failed; `title` and `message` are shown to the person on a page."""

    exit_code = ExitCode.AUTH_ERROR

    def __init__(self, title: str, message: str, status: int = 400) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message
        self.status = status


class SessionExpiredError(LaunchError):
    """The access token expired and cannot be refreshed: the person must launch the app again."""

    def __init__(
        self, message: str = "Your sign-in to the EHR has expired. Open the app again from the EHR."
    ) -> None:
        super().__init__("Session expired", message, 401)


# ------------------------------------------------------------------------------------------------ scopes


def resource_wants(context: str) -> dict[str, str]:
    """`{type: letters}` the app asks for in `context` (patient or user)."""
    wants = {type_: "rs" for type_ in READ_TYPES}
    wants.update({type_: "crus" for type_ in WRITE_TYPES})
    return wants


def launch_scopes(issuer: IssuerConfig, smart: SmartConfiguration | None, mode: Mode) -> str:
    """The scope string of an authorization request, in the server's syntax (v2 if it says permission-v2).

    - EHR launch: `launch`, patient-level scopes (used when the EHR puts a patient in context) and user-level
      scopes (a practitioner launch without a patient opens the panel); the EHR grants what it allows.
    - Standalone patient: `launch/patient` and patient-level scopes. Standalone practitioner: user-level.
    Always `openid fhirUser` (who is signed in) and the issuer's refresh scope (default `online_access`).
    """
    syntax = smart_scopes.choose_syntax(smart, issuer.scope_syntax)
    head = {"ehr": ["launch"], "standalone-patient": ["launch/patient"], "standalone-user": []}[mode]
    head += ["openid", "fhirUser"]
    if issuer.refresh_scope:
        head.append(issuer.refresh_scope)
    if issuer.scopes:
        body = issuer.scopes.split()
    else:
        contexts = {
            "ehr": ("patient", "user"),
            "standalone-patient": ("patient",),
            "standalone-user": ("user",),
        }
        body = []
        for context in contexts[mode]:
            body += smart_scopes.format_scopes(context, resource_wants(context), syntax).split()
    return " ".join(dict.fromkeys(head + body))


def write_gaps(granted: frozenset[str], patient_context: bool) -> set[smart_scopes.Grant]:
    """What is missing to write back: ChargeItem and DocumentReference create/read/update/search.

    Covered by patient-level grants (when a patient is in context) or by user-level ones; the smaller gap
    of the two is reported.
    """
    user_need = {smart_scopes.Grant("user", t, frozenset("crus")) for t in WRITE_TYPES}
    user_gap = smart_scopes.missing(user_need, granted)
    if not patient_context:
        return user_gap
    patient_need = {smart_scopes.Grant("patient", t, frozenset("crus")) for t in WRITE_TYPES}
    patient_gap = smart_scopes.missing(patient_need, granted)
    return min(patient_gap, user_gap, key=lambda gaps: sum(len(g.interactions) for g in gaps))


# ------------------------------------------------------------------------------------------- the request


def _oauth_session(
    issuer: IssuerConfig,
    smart: SmartConfiguration,
    *,
    scope: str | None = None,
    redirect_uri: str | None = None,
) -> OAuth2Session:
    """authlib's client for this issuer: PKCE S256 and the client's token endpoint authentication."""
    token_endpoint = smart.token_endpoint or ""
    auth_method: Any
    key: Any = None
    if issuer.client_kind == "asymmetric":
        assert issuer.private_key is not None
        key = issuer.private_key
        auth_method = SmartPrivateKeyJWT(
            token_endpoint,
            alg=issuer.alg or default_alg(issuer.private_key),
            kid=issuer.kid or key_id(issuer.private_key),
        )
    elif issuer.client_kind == "symmetric":
        key = issuer.client_secret
        auth_method = "client_secret_basic"
    else:
        auth_method = "none"
    return OAuth2Session(
        issuer.client_id,
        key,
        token_endpoint_auth_method=auth_method,
        scope=scope,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        default_timeout=TOKEN_TIMEOUT,
    )


@dataclass(frozen=True)
class AuthorizationRequest:
    url: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)
    nonce: str = field(repr=False)


def authorization_request(
    issuer: IssuerConfig,
    smart: SmartConfiguration,
    *,
    scope: str,
    redirect_uri: str,
    state: str,
    launch: str | None,
) -> AuthorizationRequest:
    """The URL to send the browser to: PKCE S256, `aud` = the issuer's FHIR base, `launch` when given."""
    if not smart.authorization_endpoint:
        raise LaunchError(
            "EHR not usable", "The EHR's SMART configuration names no authorization endpoint.", 502
        )
    if smart.code_challenge_methods and "S256" not in smart.code_challenge_methods:
        raise LaunchError(
            "EHR not usable", "The EHR does not support PKCE with S256, which this app requires.", 502
        )
    verifier = generate_token(64)  # 64 characters of [A-Za-z0-9]: RFC 7636 allows 43-128
    nonce = generate_token(32)
    extra: dict[str, str] = {"aud": issuer.iss, "nonce": nonce}
    if launch:
        extra["launch"] = launch
    session = _oauth_session(issuer, smart, scope=scope, redirect_uri=redirect_uri)
    try:
        url, _ = session.create_authorization_url(
            smart.authorization_endpoint, state=state, code_verifier=verifier, **extra
        )
    finally:
        session.close()
    return AuthorizationRequest(url=url, state=state, code_verifier=verifier, nonce=nonce)


# -------------------------------------------------------------------------------------- the token steps


def exchange_code(
    issuer: IssuerConfig, smart: SmartConfiguration, *, code: str, code_verifier: str, redirect_uri: str
) -> dict[str, Any]:
    """The authorization code for tokens (authlib, with the PKCE verifier). LaunchError when refused."""
    if not code_verifier:
        # Never exchange a code without the verifier of the request that produced it.
        raise LaunchError("Sign-in refused", "This sign-in has no PKCE verifier on record; start again.", 400)
    session = _oauth_session(issuer, smart, redirect_uri=redirect_uri)
    try:
        token = session.fetch_token(
            smart.token_endpoint,
            grant_type="authorization_code",
            code=code,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
        )
    except OAuthError as exc:
        raise LaunchError(
            "Sign-in refused",
            f"The EHR refused the authorization code ({exc.error}"
            + (f": {exc.description}" if exc.description else "")
            + "). Open the app again from the EHR.",
            400,
        ) from None
    except requests.RequestException as exc:
        raise LaunchError(
            "EHR unreachable", f"The EHR's token endpoint could not be reached ({type(exc).__name__}).", 502
        ) from None
    except ValueError:
        raise LaunchError("EHR error", "The EHR's token endpoint did not answer JSON.", 502) from None
    finally:
        session.close()
    return dict(token)


def refresher_for(issuer: IssuerConfig, smart: SmartConfiguration) -> Callable[[str], dict[str, Any]]:
    """A function that trades a refresh token for new tokens (authlib's refresh grant)."""

    def refresh(refresh_token: str) -> dict[str, Any]:
        session = _oauth_session(issuer, smart)
        try:
            return dict(session.refresh_token(smart.token_endpoint, refresh_token=refresh_token))
        except (OAuthError, requests.RequestException, ValueError) as exc:
            log.info("token refresh refused for client %s: %s", issuer.client_id, type(exc).__name__)
            raise SessionExpiredError() from None
        finally:
            session.close()

    return refresh


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    expires_at: float
    scope: str
    refresh_token: str | None = field(default=None, repr=False)


def token_set(token: Mapping[str, Any], requested_scope: str, now: float) -> TokenSet:
    """The parts of a token response kept for FHIR calls. LaunchError when it is not a usable Bearer token."""
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise LaunchError("Sign-in failed", "The EHR answered without an access token.", 502)
    kind = str(token.get("token_type") or "")
    if kind.lower() != "bearer":
        raise LaunchError(
            "Sign-in failed", f"The EHR issued a {kind or 'typeless'} token; only Bearer works.", 502
        )
    try:
        lifetime = float(token.get("expires_in") or DEFAULT_LIFETIME)
    except (TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    granted = token.get("scope")
    refresh = token.get("refresh_token")
    return TokenSet(
        access_token=access,
        expires_at=now + lifetime,
        scope=str(granted) if isinstance(granted, str) else requested_scope,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
    )


class TokenKeeper:
    """The tokens of one launch, refreshed shortly before they expire (or after a 401). Thread-safe."""

    def __init__(
        self,
        tokens: TokenSet,
        refresher: Callable[[str], Mapping[str, Any]] | None,
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = REFRESH_LEEWAY,
    ) -> None:
        self._tokens = tokens
        self._refresher = refresher
        self._clock = clock
        self._leeway = leeway
        self._lock = threading.Lock()
        self.refreshes = 0

    @property
    def scope(self) -> str:
        return self._tokens.scope

    @property
    def can_refresh(self) -> bool:
        return self._tokens.refresh_token is not None and self._refresher is not None

    def header(self) -> str:
        """`Bearer <token>`, refreshing first when the token is about to expire."""
        with self._lock:
            if self._clock() >= self._tokens.expires_at - self._leeway:
                self._refresh_locked()
            return f"Bearer {self._tokens.access_token}"

    def refresh(self, failed: str | None = None) -> bool:
        """After a 401: refresh unless another thread already did. False when it cannot be refreshed."""
        with self._lock:
            if failed is not None and failed != f"Bearer {self._tokens.access_token}":
                return True
            if not self.can_refresh:
                return False
            self._refresh_locked()
            return True

    def _refresh_locked(self) -> None:
        if self._tokens.refresh_token is None or self._refresher is None:
            raise SessionExpiredError()
        answer = self._refresher(self._tokens.refresh_token)
        fresh = token_set(answer, self._tokens.scope, self._clock())
        # A new refresh token replaces the old one (SMART: discard the previous); none issued: keep ours.
        self._tokens = TokenSet(
            access_token=fresh.access_token,
            expires_at=fresh.expires_at,
            scope=fresh.scope,
            refresh_token=fresh.refresh_token or self._tokens.refresh_token,
        )
        self.refreshes += 1


class LaunchAuth(Auth):
    """FhirClient credentials of one launch (the transport calls apply per request, refresh after a 401)."""

    def __init__(self, keeper: TokenKeeper) -> None:
        self.keeper = keeper

    def apply(self, headers: Any) -> None:
        headers["Authorization"] = self.keeper.header()

    def refresh(self, failed: str | None = None) -> bool:
        try:
            return self.keeper.refresh(failed)
        except SessionExpiredError:
            return False

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        return frozenset(self.keeper.scope.split())

    def __repr__(self) -> str:
        return "LaunchAuth(<token hidden>)"


# ---------------------------------------------------------------------------------------------- identity


def _unverified_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise LaunchError("Sign-in failed", "The EHR's id_token is not a JWT.", 502) from None
    if not isinstance(data, dict):
        raise LaunchError("Sign-in failed", "The EHR's id_token is not a JWT.", 502)
    return data


def _safe_url(url: object) -> str:
    """Keys are fetched only over https (or on loopback)."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise LaunchError("Sign-in failed", "The EHR's OpenID configuration has no usable URL.", 502)
    if urlsplit(url).scheme != "https" and not is_loopback(url):
        raise LaunchError("Sign-in failed", "The EHR's OpenID keys are not served over https.", 502)
    return url


def _get_json(url: str, http: requests.Session) -> Any:
    try:
        response = http.get(url, timeout=TOKEN_TIMEOUT, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as exc:
        raise LaunchError(
            "Sign-in failed", f"The EHR's OpenID keys could not be read ({type(exc).__name__}).", 502
        ) from None


def verify_id_token(
    id_token: str,
    *,
    client_id: str,
    issuers: set[str],
    nonce: str | None,
    http: requests.Session | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of a verified id_token (SMART "Steps for using an ID token").

    Its `iss` must be one we expect (the FHIR base or the discovered issuer: keys are never fetched from a
    place the token alone names); then `{iss}/.well-known/openid-configuration` -> `jwks_uri` -> signature
    (RS256 is what SMART servers SHALL support), `aud` = our client id, `exp`, and `nonce` when sent back.
    """
    claims = _unverified_claims(id_token)
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss.rstrip("/") not in {i.rstrip("/") for i in issuers}:
        raise LaunchError("Sign-in failed", "The id_token was issued by an unexpected party.", 502)
    session = http or requests.Session()
    try:
        config = _get_json(_safe_url(iss.rstrip("/") + "/.well-known/openid-configuration"), session)
        if not isinstance(config, dict):
            raise LaunchError("Sign-in failed", "The EHR's OpenID configuration is not a JSON object.", 502)
        jwks = _get_json(_safe_url(config.get("jwks_uri")), session)
    finally:
        if http is None:
            session.close()
    try:
        keys = KeySet.import_key_set(jwks)
        token = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            now=int(now) if now is not None else None,
            leeway=60,
            iss={"essential": True, "value": iss},
            aud={"essential": True, "value": client_id},
            exp={"essential": True},
        ).validate(token.claims)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise LaunchError(
            "Sign-in failed", f"The EHR's id_token did not verify ({type(exc).__name__}).", 502
        ) from None
    if nonce is not None and "nonce" in token.claims and token.claims["nonce"] != nonce:
        raise LaunchError("Sign-in failed", "The id_token answers another sign-in (nonce mismatch).", 400)
    return dict(token.claims)


def fhir_user_reference(value: object) -> str | None:
    """`Practitioner/123` from a fhirUser claim (absolute or relative URL); None when it is not one."""
    if not isinstance(value, str):
        return None
    parts = [p for p in urlsplit(value).path.split("/") if p]
    if len(parts) >= 2 and parts[-2] in (
        "Practitioner",
        "PractitionerRole",
        "Patient",
        "RelatedPerson",
        "Person",
    ):
        return f"{parts[-2]}/{parts[-1]}"
    return None


# ---------------------------------------------------------------------------------------- launch context


@dataclass(frozen=True)
class LaunchContext:
    patient: str | None
    need_patient_banner: bool
    encounter: str | None


def launch_context(token: Mapping[str, Any]) -> LaunchContext:
    """The launch context a token response carries (SMART: top-level `patient`, `need_patient_banner`...)."""
    patient = token.get("patient")
    encounter = token.get("encounter")
    banner = token.get("need_patient_banner")
    return LaunchContext(
        patient=patient if isinstance(patient, str) and patient else None,
        # Absent: assume the app must show who the patient is (the safe reading).
        need_patient_banner=banner if isinstance(banner, bool) else True,
        encounter=encounter if isinstance(encounter, str) and encounter else None,
    )
