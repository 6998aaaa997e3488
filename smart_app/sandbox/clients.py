"""Clients registered with the sandbox's SMART authorization server, from a JSON file and defaults.

File format (all keys but `client_id` and `auth` optional; an entry with an id of a default replaces it)::

    {"clients": [
      {"client_id": "my-app", "name": "My app", "auth": "none",
       "redirect_uris": ["http://127.0.0.1:8000/callback"], "launch_url": "http://127.0.0.1:8000/launch",
       "scopes": ["launch", "openid", "fhirUser", "patient/*"]},
      {"client_id": "my-web", "auth": "client_secret_basic", "client_secret": "s3cret",
       "redirect_uris": [...]},
      {"client_id": "my-job", "auth": "private_key_jwt", "jwks": {"keys": [...]},
       "grant_types": ["client_credentials"], "scopes": ["system/*"]}
    ]}

`auth` is the token endpoint authentication method: `none` (public, PKCE only), `client_secret_basic`, or
`private_key_jwt` (RS384/ES384, with `jwks` or a loopback `jwks_uri`). `scopes` are the scopes the client may
be granted; `*` matches any run of characters (`patient/*` allows every patient-level scope, v1 or v2); the
granted set is the requested scopes that match.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from smart_app.errors import InputError

AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
CLIENT_KEY_TYPES = {"RSA": "RS384", "EC": "ES384"}  # the SMART asymmetric algorithms, by key type

DEFAULT_APP_LAUNCH_URL = "http://127.0.0.1:8000/launch"
PUBLIC_APP_ID = "rpm-billing-app"
CONFIDENTIAL_APP_ID = "rpm-billing-confidential"
CONFIDENTIAL_APP_SECRET = "sandbox-secret"  # synthetic; the sandbox only listens on loopback
BACKEND_CLIENT_ID = "rpm-billing-backend"

APP_SCOPES = (
    "launch",
    "launch/patient",
    "launch/encounter",
    "openid",
    "fhirUser",
    "profile",
    "offline_access",
    "online_access",
    "patient/*",
    "user/*",
)
BACKEND_SCOPES = ("system/*",)


class ClientConfigError(InputError):
    """The clients file cannot be read or registers a client that cannot work."""


def scope_matches(requested: str, pattern: str) -> bool:
    """True when a requested scope is allowed by one registered scope pattern (`*` = any characters)."""
    if "*" not in pattern:
        return requested == pattern
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, requested) is not None


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL whose host is a loopback address (the only network the sandbox may use)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


@dataclass(frozen=True)
class SandboxClient:
    """One registered client. Implements what authlib's server needs of a client (`ClientMixin` methods)."""

    client_id: str
    auth_method: str  # one of AUTH_METHODS
    name: str = ""
    client_secret: str | None = None
    redirect_uris: tuple[str, ...] = ()
    launch_url: str | None = None
    scopes: tuple[str, ...] = APP_SCOPES  # allowed scope patterns
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    jwks: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    jwks_uri: str | None = None

    @property
    def is_public(self) -> bool:
        return self.auth_method == "none"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only unambiguous: with several registered URIs the request must name one.
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def granted_scopes(self, requested: Iterable[str]) -> list[str]:
        """The requested scopes this client may have, in request order, without duplicates."""
        granted: list[str] = []
        for scope in requested:
            if scope not in granted and any(scope_matches(scope, p) for p in self.scopes):
                granted.append(scope)
        return granted

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """Requested ∩ allowed, as a scope string; None (authlib: invalid_scope) when nothing is left."""
        granted = self.granted_scopes((scope or "").split())
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.auth_method
        # Introspection (and any other protected endpoint) is for authenticated, confidential clients only.
        return method == self.auth_method and not self.is_public

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{what}' must be a list of strings")
    return tuple(value)


def _absolute_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"'{what}' must be an absolute http(s) URL without a fragment, not {url!r}")
    return url


def _check_jwks(jwks: object) -> Mapping[str, Any]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("'jwks' must be a JWKS object with a non-empty 'keys' list")
    try:
        key_set = KeySet.import_key_set(cast(Any, jwks))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"'jwks' holds a key that cannot be read ({exc})") from exc
    for key in key_set.keys:
        if key.key_type not in CLIENT_KEY_TYPES:
            raise ValueError(f"'jwks' key type {key.key_type} is not RSA or EC (RS384/ES384)")
        if not key.kid:
            raise ValueError("every 'jwks' key needs a 'kid'")
        if key.is_private:
            raise ValueError("'jwks' must hold public keys only")
    return jwks


def parse_client(entry: object) -> SandboxClient:
    """One client from its JSON object; ValueError naming the problem if it cannot work."""
    if not isinstance(entry, dict):
        raise ValueError("a client must be a JSON object")
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        raise ValueError("'client_id' is missing or empty")
    known = {
        "client_id",
        "name",
        "auth",
        "client_secret",
        "redirect_uris",
        "launch_url",
        "scopes",
        "grant_types",
        "jwks",
        "jwks_uri",
    }
    if unknown := sorted(set(entry) - known):
        raise ValueError(f"unknown keys {unknown}")
    auth = entry.get("auth")
    if auth not in AUTH_METHODS:
        raise ValueError(f"'auth' must be one of {list(AUTH_METHODS)}, not {auth!r}")
    redirect_uris = tuple(
        _absolute_url(u, "redirect_uris") for u in _strings(entry.get("redirect_uris"), "redirect_uris")
    )
    launch_url = entry.get("launch_url")
    if launch_url is not None:
        if not isinstance(launch_url, str):
            raise ValueError("'launch_url' must be a string")
        _absolute_url(launch_url, "launch_url")
    default_grants = ("client_credentials",) if auth == "private_key_jwt" and not redirect_uris else None
    grant_types = (
        _strings(entry.get("grant_types"), "grant_types")
        or default_grants
        or ("authorization_code", "refresh_token")
    )
    if bad := [g for g in grant_types if g not in GRANT_TYPES]:
        raise ValueError(f"unsupported grant_types {bad} (supported: {list(GRANT_TYPES)})")
    if "authorization_code" in grant_types and not redirect_uris:
        raise ValueError("a client using authorization_code needs 'redirect_uris'")
    if "client_credentials" in grant_types and auth != "private_key_jwt":
        raise ValueError("client_credentials (SMART Backend Services) needs auth 'private_key_jwt'")
    secret = entry.get("client_secret")
    if auth == "client_secret_basic":
        if not isinstance(secret, str) or not secret:
            raise ValueError("auth 'client_secret_basic' needs a non-empty 'client_secret'")
    elif secret is not None:
        raise ValueError(f"'client_secret' is only for auth 'client_secret_basic', not {auth!r}")
    jwks = entry.get("jwks")
    jwks_uri = entry.get("jwks_uri")
    if auth == "private_key_jwt":
        if (jwks is None) == (jwks_uri is None):
            raise ValueError("auth 'private_key_jwt' needs exactly one of 'jwks' and 'jwks_uri'")
        if jwks is not None:
            jwks = _check_jwks(jwks)
        if jwks_uri is not None and (not isinstance(jwks_uri, str) or not is_loopback_url(jwks_uri)):
            raise ValueError("'jwks_uri' must be an http(s) URL on a loopback address (127.0.0.1)")
    elif jwks is not None or jwks_uri is not None:
        raise ValueError("'jwks'/'jwks_uri' are only for auth 'private_key_jwt'")
    name = entry.get("name", client_id)
    if not isinstance(name, str):
        raise ValueError("'name' must be a string")
    scopes = _strings(entry.get("scopes"), "scopes") or (
        BACKEND_SCOPES if grant_types == ("client_credentials",) else APP_SCOPES
    )
    return SandboxClient(
        client_id=client_id,
        auth_method=auth,
        name=name,
        client_secret=secret,
        redirect_uris=redirect_uris,
        launch_url=launch_url,
        scopes=scopes,
        grant_types=grant_types,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )


def default_redirect_uris(app_launch_url: str) -> tuple[str, ...]:
    """The test app's redirect URI when none is configured: `/callback` at the launch URL's origin."""
    return (origin_of(app_launch_url) + "/callback",)


def default_clients(
    app_launch_url: str = DEFAULT_APP_LAUNCH_URL,
    app_redirect_uris: Sequence[str] = (),
    backend_jwks: Mapping[str, Any] | None = None,
) -> dict[str, SandboxClient]:
    """A public test app, a confidential symmetric app (same URLs) and, given its JWKS, a backend client."""
    _absolute_url(app_launch_url, "app launch URL")
    redirects = tuple(_absolute_url(u, "redirect URI") for u in app_redirect_uris) or default_redirect_uris(
        app_launch_url
    )
    clients = [
        SandboxClient(
            client_id=PUBLIC_APP_ID,
            auth_method="none",
            name="RPM billing (public app)",
            redirect_uris=redirects,
            launch_url=app_launch_url,
        ),
        SandboxClient(
            client_id=CONFIDENTIAL_APP_ID,
            auth_method="client_secret_basic",
            name="RPM billing (confidential app)",
            client_secret=CONFIDENTIAL_APP_SECRET,
            redirect_uris=redirects,
            launch_url=app_launch_url,
        ),
    ]
    if backend_jwks is not None:
        clients.append(
            SandboxClient(
                client_id=BACKEND_CLIENT_ID,
                auth_method="private_key_jwt",
                name="RPM billing month-end (backend services)",
                scopes=BACKEND_SCOPES,
                grant_types=("client_credentials",),
                jwks=_check_jwks(dict(backend_jwks)),
            )
        )
    return {c.client_id: c for c in clients}


def load_clients(
    path: Path | None,
    *,
    app_launch_url: str = DEFAULT_APP_LAUNCH_URL,
    app_redirect_uris: Sequence[str] = (),
    backend_jwks: Mapping[str, Any] | None = None,
) -> dict[str, SandboxClient]:
    """The default clients, extended (or, by `client_id`, replaced) by those of the JSON file at `path`.

    Raises ClientConfigError naming the file, the client and the problem.
    """
    try:
        clients = default_clients(app_launch_url, app_redirect_uris, backend_jwks)
    except ValueError as exc:
        raise ClientConfigError(f"default clients: {exc}") from exc
    if path is None:
        return clients
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClientConfigError(f"{path}: cannot read the clients file ({exc})") from exc
    entries = data.get("clients") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ClientConfigError(f"{path}: expected a JSON object with a 'clients' list")
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = entry.get("client_id") if isinstance(entry, dict) else None
        try:
            client = parse_client(entry)
        except ValueError as exc:
            raise ClientConfigError(f"{path}: client #{index + 1} ({label or 'no id'}): {exc}") from exc
        if client.client_id in seen:
            raise ClientConfigError(f"{path}: client_id {client.client_id!r} is registered twice")
        seen.add(client.client_id)
        clients[client.client_id] = client
    return clients
