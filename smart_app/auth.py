"""Client-side authorization for unattended FHIR access: none, a static bearer token, client secret, or
SMART Backend Services (`private_key_jwt`).

An `Auth` only builds the Authorization header and obtains tokens; `smart_app.http.HttpTransport` calls
`apply()` before every request and `refresh()` once after a 401. Token-based auths are thread-safe: one token
is cached for all worker threads until `expires_in` minus a leeway, and a refresh after a 401 is done by one
thread only (the others see that the token they used has already been replaced).

Backend Services (SMART `backend-services.md`, `client-confidential-asymmetric.md`): each token request
carries a freshly signed assertion, header `alg` RS384/ES384, `kid`, `typ=JWT`; claims `iss`=`sub`=client id,
`aud`=token URL, `exp` at most 300 s ahead, a new uuid4 `jti` every time. authlib's `PrivateKeyJWT` defaults
to exp=iat+3600 and reuses a `jti` once claims are passed (authlib issue #857), hence `SmartPrivateKeyJWT`.

Secrets (client secret, bearer token, private key) come from files or environment variables, never from
command-line arguments, and are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from smart_app import scopes
from smart_app.errors import ExitCode, RpmBillingError
from smart_app.http import Action, RetryPolicy, Timeout, decide

log = logging.getLogger(__name__)

AuthKind = Literal["none", "bearer", "client-secret", "backend"]
AUTH_KINDS: tuple[AuthKind, ...] = ("none", "bearer", "client-secret", "backend")
PrivateKey = RSAKey | ECKey
MAX_ASSERTION_LIFETIME = 300  # SMART: exp no more than five minutes in the future
TOKEN_TIMEOUT: tuple[float, float] = (5.0, 30.0)
DEFAULT_TOKEN_LIFETIME = (
    300  # assumed when a token response has no expires_in (backend tokens SHOULD be ≤ 300 s)
)

# Environment variables read by create_auth when no file is given.
ENV_BEARER_TOKEN = "RPM_BEARER_TOKEN"
ENV_CLIENT_SECRET = "RPM_CLIENT_SECRET"
ENV_PRIVATE_KEY = "RPM_PRIVATE_KEY"  # the PEM or JWK/JWKS JSON itself


class AuthError(RpmBillingError):
    """Credentials missing or unreadable, or the token endpoint refused us."""

    exit_code = ExitCode.AUTH_ERROR


class Auth(ABC):
    """Builds the Authorization header of FHIR requests."""

    @abstractmethod
    def apply(self, headers: MutableMapping[str, str]) -> None:
        """Add credentials to `headers` (obtaining a token first if none is cached or it is expiring)."""

    def authorize(self) -> None:  # noqa: B027 - optional hook, nothing to do for static credentials
        """Obtain credentials now (so that `granted_scopes` is known before the first FHIR request)."""

    def refresh(self, failed: str | None = None) -> bool:
        """Get new credentials after a 401. `failed` is the Authorization header that was refused.

        Returns False when these credentials cannot be renewed (the caller then reports the 401).
        """
        return False

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        """The scopes granted to us, as the server spelled them; None when unknown."""
        return None

    def missing_scopes(self, required: str | Iterable[str] | Iterable[scopes.Grant]) -> set[scopes.Grant]:
        """The required access the server did not grant (empty when all granted, or when the grant is
        unknown: then only a 403 will tell)."""
        self.authorize()
        granted = self.granted_scopes
        if granted is None:
            return set()
        return scopes.missing(required, granted)


class NoAuth(Auth):
    """An open server: no Authorization header."""

    def apply(self, headers: MutableMapping[str, str]) -> None:
        return None


class BearerAuth(Auth):
    """A static access token obtained elsewhere (it cannot be renewed: a 401 is final)."""

    def __init__(self, token: str, scope: str | None = None) -> None:
        token = token.strip()
        if not token:
            raise AuthError("the bearer token is empty")
        self._header = f"Bearer {token}"
        self._scopes = frozenset(scope.split()) if scope is not None else None

    def apply(self, headers: MutableMapping[str, str]) -> None:
        headers["Authorization"] = self._header

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        return self._scopes

    def __repr__(self) -> str:
        return "BearerAuth(<token hidden>)"


class _TokenEndpointAuth(Auth):
    """A token from an OAuth2 token endpoint (client_credentials), cached until expiry minus `leeway`."""

    def __init__(
        self,
        token_endpoint: str,
        client_id: str,
        scope: str,
        *,
        leeway: float = 60.0,
        timeout: Timeout = TOKEN_TIMEOUT,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token_endpoint:
            raise AuthError("no token endpoint: run SMART discovery or configure it")
        if not client_id:
            raise AuthError("no client id configured")
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self.scope = scope
        self.leeway = leeway
        self.timeout = timeout
        self.policy = policy or RetryPolicy(max_attempts=3)
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._expires_at = 0.0
        self._scopes: frozenset[str] | None = None
        self.token_requests = 0  # how many tokens were fetched (for run reports and tests)

    @abstractmethod
    def _oauth_session(self) -> OAuth2Session:
        """The authlib session that signs and sends the token request."""

    def apply(self, headers: MutableMapping[str, str]) -> None:
        with self._lock:
            if self._access_token is None or self._clock() >= self._expires_at:
                self._fetch_locked()
            headers["Authorization"] = f"Bearer {self._access_token}"

    def authorize(self) -> None:
        with self._lock:
            if self._access_token is None or self._clock() >= self._expires_at:
                self._fetch_locked()

    def refresh(self, failed: str | None = None) -> bool:
        with self._lock:
            if (
                failed is not None
                and self._access_token is not None
                and failed != f"Bearer {self._access_token}"
            ):
                return True  # another thread already replaced the refused token
            self._fetch_locked()
        return True

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        return self._scopes

    def _fetch_locked(self) -> None:
        token = self._request_with_retries()
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthError(f"the token endpoint {self.token_endpoint} answered without an access_token")
        token_type = str(token.get("token_type") or "bearer")
        if token_type.lower() != "bearer":
            raise AuthError(f"the token endpoint issued a {token_type!r} token; only Bearer is supported")
        try:
            lifetime = float(token.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        # Renew `leeway` seconds early, but never so early that a short-lived token is renewed on every call.
        self._expires_at = self._clock() + lifetime - min(self.leeway, lifetime / 2)
        self._access_token = access
        # RFC 6749 §5.1: `scope` may be omitted when it is exactly what was requested.
        granted = token.get("scope")
        self._scopes = (
            frozenset(str(granted).split()) if granted is not None else frozenset(self.scope.split())
        )
        self.token_requests += 1
        log.info("obtained an access token for client %s (expires in %.0f s)", self.client_id, lifetime)

    def _request_with_retries(self) -> Mapping[str, Any]:
        """Token requests may be repeated freely (a new assertion each time): retry temporary failures."""
        attempt = 1
        while True:
            try:
                token = self._oauth_session().fetch_token(
                    self.token_endpoint, grant_type="client_credentials"
                )
                return dict(token)
            except OAuthError as exc:
                if exc.error == "temporarily_unavailable" and attempt < self.policy.max_attempts:
                    delay = self.policy.backoff(attempt)
                else:
                    raise AuthError(
                        f"the token endpoint {self.token_endpoint} refused client {self.client_id}: "
                        f"{exc.error}" + (f" ({exc.description})" if exc.description else "")
                    ) from exc
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                decision = decide(
                    self.policy,
                    method="POST",
                    attempt=attempt,
                    status=status or 500,
                    retry_after=exc.response.headers.get("Retry-After") if exc.response is not None else None,
                    idempotent=True,
                )
                if decision.action is not Action.RETRY:
                    raise AuthError(
                        f"the token endpoint {self.token_endpoint} answered HTTP {status} for client "
                        f"{self.client_id}"
                    ) from exc
                delay = decision.delay
            except requests.RequestException as exc:
                decision = decide(self.policy, method="POST", attempt=attempt, error=exc, idempotent=True)
                if decision.action is not Action.RETRY:
                    raise AuthError(
                        f"the token endpoint {self.token_endpoint} could not be reached: {type(exc).__name__}"
                    ) from exc
                delay = decision.delay
            except ValueError as exc:  # authlib: the response was not a JSON object
                raise AuthError(f"the token endpoint {self.token_endpoint} did not answer JSON") from exc
            log.warning("token request failed (attempt %d); retrying in %.1f s", attempt, delay)
            self._sleep(delay)
            attempt += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, token_endpoint={self.token_endpoint!r})"


class ClientSecretAuth(_TokenEndpointAuth):
    """client_credentials with `client_secret_basic`, for servers that allow a symmetric secret for
    system access (SMART Backend Services itself requires asymmetric keys)."""

    def __init__(
        self, token_endpoint: str, client_id: str, client_secret: str, scope: str = "", **kwargs: Any
    ) -> None:
        super().__init__(token_endpoint, client_id, scope, **kwargs)
        if not client_secret:
            raise AuthError("the client secret is empty")
        self._session = OAuth2Session(
            client_id,
            client_secret,
            token_endpoint_auth_method="client_secret_basic",
            scope=scope or None,
            default_timeout=self.timeout,
        )

    def _oauth_session(self) -> OAuth2Session:
        return self._session


class SmartPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """authlib's `private_key_jwt` client authentication, made SMART-conformant.

    Every call to `sign()` makes a new assertion: uuid4 `jti`, `iat` now, `exp` = iat + lifetime (≤ 300 s),
    header `{alg, kid, typ: JWT}` (plus `jku` when a JWKS URL is registered).
    """

    name = "private_key_jwt"

    def __init__(
        self,
        token_endpoint: str,
        *,
        alg: str,
        kid: str,
        jku: str | None = None,
        lifetime: int = MAX_ASSERTION_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
            raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME} s, not {lifetime}")
        super().__init__(token_endpoint, alg=alg)
        self.kid = kid
        self.jku = jku
        self.lifetime = lifetime
        self._clock = clock

    def sign(self, auth: Any, token_endpoint: str) -> str:
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        if self.jku:
            header["jku"] = self.jku
        issued_at = int(self._clock())
        # A fresh claims dict each time: authlib writes the jti into the dict it is given.
        token: str = private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            claims={"jti": str(uuid.uuid4())},
            header=header,
            issued_at=issued_at,
            expires_at=issued_at + self.lifetime,
        )
        return token


class BackendServicesAuth(_TokenEndpointAuth):
    """SMART Backend Services: client_credentials authenticated by a signed JWT assertion
    (`private_key_jwt`)."""

    def __init__(
        self,
        token_endpoint: str,
        client_id: str,
        private_key: PrivateKey,
        scope: str = "",
        *,
        alg: str | None = None,
        kid: str | None = None,
        jku: str | None = None,
        assertion_lifetime: int = MAX_ASSERTION_LIFETIME,
        **kwargs: Any,
    ) -> None:
        super().__init__(token_endpoint, client_id, scope, **kwargs)
        if not private_key.is_private:
            raise AuthError("backend services need the private key; the key given is public only")
        self.alg = alg or default_alg(private_key)
        self.kid = kid or key_id(private_key)
        self.assertion = SmartPrivateKeyJWT(
            token_endpoint,
            alg=self.alg,
            kid=self.kid,
            jku=jku,
            lifetime=assertion_lifetime,
            clock=self._clock,
        )
        self._session = OAuth2Session(
            client_id,
            private_key,
            token_endpoint_auth_method=self.assertion,
            scope=scope or None,
            default_timeout=self.timeout,
        )

    def _oauth_session(self) -> OAuth2Session:
        return self._session


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------

_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def default_alg(key: PrivateKey) -> str:
    """RS384 for RSA keys, ES384 for P-384 (the two SMART clients SHALL support); ES256/ES512 by curve."""
    if isinstance(key, RSAKey):
        return "RS384"
    curve = key.curve_name
    if curve not in _EC_ALGS:
        raise AuthError(f"unsupported EC curve {curve}; use P-384")
    return _EC_ALGS[curve]


def key_id(key: PrivateKey) -> str:
    """The key's `kid`, or its RFC 7638 thumbprint when it has none (the same value `publish_jwks` uses)."""
    return key.kid or key.thumbprint()


def load_private_key(data: str | bytes, *, kid: str | None = None) -> PrivateKey:
    """A private RSA or EC key from PEM text, a JWK, or a JWKS (pick `kid`, or its only private key)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = _import_pem(text)
        elif text.startswith("{"):
            key = _import_jwk_json(json.loads(text), kid)
        else:
            raise AuthError("the private key is neither PEM nor JWK/JWKS JSON")
    except (JoseError, ValueError, TypeError) as exc:
        # Never echo the key material: say what kind of problem it was.
        raise AuthError(f"cannot read the private key: {type(exc).__name__}") from exc
    if not key.is_private:
        raise AuthError("the key is a public key; backend services need the private key")
    if kid and not key.kid:
        key = type(key).import_key(key.as_dict(private=True), {"kid": kid})
    return key


def load_private_key_file(path: str | os.PathLike[str], *, kid: str | None = None) -> PrivateKey:
    try:
        data = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthError(f"cannot read the private key file {path}: {exc.strerror}") from exc
    return load_private_key(data, kid=kid)


def _import_pem(text: str) -> PrivateKey:
    try:
        return RSAKey.import_key(text)
    except (JoseError, ValueError, TypeError):
        return ECKey.import_key(text)


def _import_jwk_json(doc: object, kid: str | None) -> PrivateKey:
    if not isinstance(doc, dict):
        raise AuthError("the key JSON is not an object")
    if "keys" in doc:
        candidates = [k for k in doc["keys"] if isinstance(k, dict) and "d" in k]
        if kid is not None:
            candidates = [k for k in candidates if k.get("kid") == kid]
        if len(candidates) != 1:
            which = f"with kid {kid!r}" if kid else "(several or none; pass the kid)"
            raise AuthError(f"the JWKS holds {len(candidates)} private keys {which}")
        doc = candidates[0]
    kty = doc.get("kty")
    if kty == "RSA":
        return RSAKey.import_key(doc)
    if kty == "EC":
        return ECKey.import_key(doc)
    raise AuthError(f"unsupported key type {kty!r}; use RSA or EC (P-384)")


def publish_jwks(
    private_key: PrivateKey, *, alg: str | None = None, kid: str | None = None
) -> dict[str, Any]:
    """The public JWKS to register with the EHR (or serve at the registered JWKS URL)."""
    public = dict(private_key.as_dict(private=False))
    public["kid"] = kid or key_id(private_key)
    public["alg"] = alg or default_alg(private_key)
    public["use"] = "sig"
    return {"keys": [public]}


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


def _secret(what: str, file: str | os.PathLike[str] | None, env_name: str, environ: Mapping[str, str]) -> str:
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"cannot read the {what} file {file}: {exc.strerror}") from exc
        if not value:
            raise AuthError(f"the {what} file {file} is empty")
        return value
    value = environ.get(env_name, "").strip()
    if not value:
        raise AuthError(f"no {what}: give a file or set the environment variable {env_name}")
    return value


def create_auth(
    kind: AuthKind,
    *,
    token_endpoint: str | None = None,
    client_id: str | None = None,
    scope: str = "",
    token_file: str | os.PathLike[str] | None = None,
    secret_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    kid: str | None = None,
    alg: str | None = None,
    jku: str | None = None,
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Auth:
    """Build the `Auth` for `kind`; secrets come from the given files, else from environment variables
    (`RPM_BEARER_TOKEN`, `RPM_CLIENT_SECRET`, `RPM_PRIVATE_KEY`). Extra keyword arguments (`timeout`,
    `leeway`, `policy`, `sleep`, `clock`) go to the token-endpoint auths."""
    env = os.environ if environ is None else environ
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        return BearerAuth(_secret("bearer token", token_file, ENV_BEARER_TOKEN, env), scope=scope or None)
    if kind in ("client-secret", "backend"):
        if not token_endpoint:
            raise AuthError(f"--auth {kind} needs the token endpoint (from SMART discovery or configuration)")
        if not client_id:
            raise AuthError(f"--auth {kind} needs a client id")
        if kind == "client-secret":
            secret = _secret("client secret", secret_file, ENV_CLIENT_SECRET, env)
            return ClientSecretAuth(token_endpoint, client_id, secret, scope, **kwargs)
        if key_file is not None:
            key = load_private_key_file(key_file, kid=kid)
        else:
            key = load_private_key(_secret("private key", None, ENV_PRIVATE_KEY, env), kid=kid)
        return BackendServicesAuth(token_endpoint, client_id, key, scope, alg=alg, kid=kid, jku=jku, **kwargs)
    raise AuthError(f"unknown auth kind {kind!r}; choose one of {', '.join(AUTH_KINDS)}")
