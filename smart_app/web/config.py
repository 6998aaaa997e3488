"""Configuration of the clinician web app: the EHRs it may be launched from, and deployment settings.

A JSON or TOML file (`rpm-billing serve --config FILE`), then environment variables, which win. The file::

    base_url = "https://rpm.example.org"        # the app's public origin; redirect URI = base_url/callback
    frame_ancestors = ["https://ehr.example.org"]  # who may embed the app in an iframe (CSP frame-ancestors)
    policy = "cms-2026"                            # omit: the month picks its rule set
    timezone = "America/New_York"
    billing_practitioner = "Practitioner/dr-1"     # ChargeItem.performer
    [settings]                                     # policy overrides (max_99458_units, live_chat, ...)
    max_99458_units = 2

    [[issuers]]
    name = "sandbox"                               # a label; also the env-variable infix
    iss = "http://127.0.0.1:8090/fhir"             # the FHIR base the EHR sends as `iss` (the allow-list)
    client_id = "rpm-billing-app"
    # confidential clients: client_secret_file / client_secret_env, or private_key_file / private_key_env
    # scopes = "patient/*.rs ..."                  # replaces the resource scopes the app asks for
    # scope_syntax = "v1"                          # else chosen from the server's capabilities

Environment variables (names upper-cased, non-alphanumerics as `_`): `RPM_APP_BASE_URL`,
`RPM_APP_FRAME_ANCESTORS` (space- or comma-separated), `RPM_APP_POLICY`, `RPM_APP_TIMEZONE`,
`RPM_APP_BILLING_PRACTITIONER`, `RPM_APP_COOKIE_SAMESITE`, `RPM_APP_PORT`; per issuer
`RPM_ISSUER_<NAME>_ISS`, `_CLIENT_ID`, `_CLIENT_SECRET`, `_PRIVATE_KEY` (PEM or JWK text),
`_PRIVATE_KEY_FILE`, `_KID`, `_ALG`, `_SCOPES`, `_SCOPE_SYNTAX`, `_REFRESH_SCOPE`. An issuer named only in the
environment is added when both its `ISS` and `CLIENT_ID` are set.

Secrets are read from files or the environment; an inline `client_secret` in the file is accepted for the
sandbox but discouraged. Nothing here is ever logged with its secret.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from smart_app.auth import AuthError, PrivateKey, load_private_key, load_private_key_file
from smart_app.errors import UsageError

SameSite = Literal["Lax", "Strict", "None"]
DEFAULT_PORT = 8000
REFRESH_SCOPES = ("online_access", "offline_access", "")
_ISSUER_KEYS = {
    "name",
    "iss",
    "client_id",
    "client_secret",
    "client_secret_file",
    "client_secret_env",
    "private_key_file",
    "private_key_env",
    "kid",
    "alg",
    "scopes",
    "scope_syntax",
    "refresh_scope",
}
_APP_KEYS = {
    "base_url",
    "frame_ancestors",
    "policy",
    "timezone",
    "settings",
    "billing_practitioner",
    "organization",
    "canon",
    "cookie_samesite",
    "port",
    "panel_limit",
    "workers",
    "issuers",
}
_ENV_ISSUER_FIELDS = {
    "ISS": "iss",
    "CLIENT_ID": "client_id",
    "CLIENT_SECRET": "client_secret",
    "PRIVATE_KEY": "private_key",
    "PRIVATE_KEY_FILE": "private_key_file",
    "KID": "kid",
    "ALG": "alg",
    "SCOPES": "scopes",
    "SCOPE_SYNTAX": "scope_syntax",
    "REFRESH_SCOPE": "refresh_scope",
}


class ConfigError(UsageError):
    """The app's configuration cannot work; the message names the file or variable and the key."""


@dataclass(frozen=True)
class IssuerConfig:
    """One EHR (FHIR server) the app may be launched from, and how the app is registered there."""

    name: str
    iss: str  # FHIR base URL, without a trailing slash
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    private_key: PrivateKey | None = field(default=None, repr=False, compare=False)
    kid: str | None = None
    alg: str | None = None
    scopes: str | None = None  # replaces the resource scopes the app asks for
    scope_syntax: Literal["v1", "v2"] | None = None
    refresh_scope: str = "online_access"  # asked for so that expired access tokens can be refreshed

    @property
    def client_kind(self) -> Literal["public", "symmetric", "asymmetric"]:
        if self.private_key is not None:
            return "asymmetric"
        return "symmetric" if self.client_secret else "public"

    def matches(self, iss: str) -> bool:
        return normalize_iss(iss) == self.iss


@dataclass(frozen=True)
class WebConfig:
    """Everything the app factory needs. `issuers` is the allow-list of `iss` values."""

    issuers: tuple[IssuerConfig, ...]
    base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    frame_ancestors: tuple[str, ...] | None = None  # None: 'self' and the issuers' origins
    policy: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # policy overrides, timezone included
    billing_practitioner: str | None = None
    organization: str | None = None
    canon: str | None = None
    cookie_samesite: SameSite | None = None  # None: Lax on http, None (+Secure, Partitioned) on https
    port: int = DEFAULT_PORT
    panel_limit: int = 200  # most patients listed on the panel
    workers: int = 8  # parallel reads (panel: patients at once)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _check_url(self.base_url, "base_url").rstrip("/"))
        names = [i.name for i in self.issuers]
        if len(set(names)) != len(names):
            raise ConfigError(f"issuer names must be unique, got {names}")
        if self.cookie_samesite not in (None, "Lax", "Strict", "None"):
            raise ConfigError(f"cookie_samesite must be Lax, Strict or None, not {self.cookie_samesite!r}")
        if self.cookie_samesite == "None" and not self.secure:
            raise ConfigError("cookie_samesite None needs an https base_url (browsers require Secure)")
        if self.panel_limit < 1 or self.workers < 1:
            raise ConfigError("panel_limit and workers must be at least 1")

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/callback"

    @property
    def launch_url(self) -> str:
        return f"{self.base_url}/launch"

    @property
    def secure(self) -> bool:
        """Behind https (the public base URL): cookies get Secure."""
        return urlsplit(self.base_url).scheme == "https"

    @property
    def samesite(self) -> SameSite:
        """Lax by default on http; None on https so the session survives a cross-site EHR iframe."""
        if self.cookie_samesite is not None:
            return self.cookie_samesite
        return "None" if self.secure else "Lax"

    @property
    def timezone(self) -> str | None:
        value = self.settings.get("timezone")
        return str(value) if value else None

    def ancestors(self) -> tuple[str, ...]:
        if self.frame_ancestors is not None:
            return self.frame_ancestors
        origins = ["'self'"]
        for issuer in self.issuers:
            origin = origin_of(issuer.iss)
            if origin not in origins:
                origins.append(origin)
        return tuple(origins)

    def issuer_for(self, iss: str) -> IssuerConfig | None:
        """The configured issuer for an `iss` value, or None: not on the allow-list."""
        return next((i for i in self.issuers if i.matches(iss)), None)


def normalize_iss(iss: str) -> str:
    return iss.strip().rstrip("/")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check_url(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{what} must be an absolute http(s) URL without query or fragment, not {value!r}")
    return value.strip()


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty string")
    return value.strip()


def _opt_str(value: object, what: str) -> str | None:
    return None if value is None else _str(value, what)


def env_name(name: str) -> str:
    """The environment-variable infix of an issuer name: upper case, non-alphanumerics as `_`."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: object = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold an object (table) at the top level")
    return data


def _secret_from(raw: Mapping[str, Any], environ: Mapping[str, str], where: str) -> str | None:
    if raw.get("client_secret") is not None:
        return _str(raw["client_secret"], f"{where}: client_secret")
    if raw.get("client_secret_file") is not None:
        path = Path(_str(raw["client_secret_file"], f"{where}: client_secret_file"))
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read client_secret_file {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{where}: client_secret_file {path} is empty")
        return value
    if raw.get("client_secret_env") is not None:
        name = _str(raw["client_secret_env"], f"{where}: client_secret_env")
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"{where}: the environment variable {name} (client_secret_env) is not set")
        return value
    return None


def _key_from(raw: Mapping[str, Any], environ: Mapping[str, str], where: str) -> PrivateKey | None:
    kid = _opt_str(raw.get("kid"), f"{where}: kid")
    try:
        if raw.get("private_key") is not None:  # from the environment only (never inline in a file)
            return load_private_key(str(raw["private_key"]), kid=kid)
        if raw.get("private_key_file") is not None:
            return load_private_key_file(_str(raw["private_key_file"], f"{where}: private_key_file"), kid=kid)
        if raw.get("private_key_env") is not None:
            name = _str(raw["private_key_env"], f"{where}: private_key_env")
            value = environ.get(name, "").strip()
            if not value:
                raise ConfigError(f"{where}: the environment variable {name} (private_key_env) is not set")
            return load_private_key(value, kid=kid)
    except AuthError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return None


def parse_issuer(raw: Mapping[str, Any], environ: Mapping[str, str], where: str) -> IssuerConfig:
    """One issuer entry (file keys, or env fields merged in); ConfigError naming `where` and the key."""
    if unknown := sorted(set(raw) - _ISSUER_KEYS - {"private_key"}):
        raise ConfigError(f"{where}: unknown keys {unknown}")
    name = _str(raw.get("name"), f"{where}: name")
    iss = normalize_iss(_check_url(raw.get("iss"), f"{where}: iss"))
    client_id = _str(raw.get("client_id"), f"{where}: client_id")
    secret = _secret_from(raw, environ, where)
    key = _key_from(raw, environ, where)
    if secret and key is not None:
        raise ConfigError(f"{where}: give a client secret or a private key, not both")
    syntax = raw.get("scope_syntax")
    if syntax not in (None, "v1", "v2"):
        raise ConfigError(f"{where}: scope_syntax must be v1 or v2, not {syntax!r}")
    refresh = raw.get("refresh_scope", "online_access")
    if refresh not in REFRESH_SCOPES:
        raise ConfigError(f"{where}: refresh_scope must be one of {list(REFRESH_SCOPES)}, not {refresh!r}")
    alg = _opt_str(raw.get("alg"), f"{where}: alg")
    if alg is not None and alg not in ("RS384", "ES384"):
        raise ConfigError(f"{where}: alg must be RS384 or ES384 (SMART asymmetric client authentication)")
    return IssuerConfig(
        name=name,
        iss=iss,
        client_id=client_id,
        client_secret=secret,
        private_key=key,
        kid=_opt_str(raw.get("kid"), f"{where}: kid"),
        alg=alg,
        scopes=_opt_str(raw.get("scopes"), f"{where}: scopes"),
        scope_syntax=syntax,
        refresh_scope=str(refresh),
    )


def _env_issuers(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`RPM_ISSUER_<NAME>_<FIELD>` variables grouped by NAME (longest field names tried first)."""
    found: dict[str, dict[str, str]] = {}
    fields_longest_first = sorted(_ENV_ISSUER_FIELDS, key=len, reverse=True)
    for key, value in environ.items():
        if not key.startswith("RPM_ISSUER_"):
            continue
        rest = key[len("RPM_ISSUER_") :]
        for suffix in fields_longest_first:
            if rest.endswith("_" + suffix) and len(rest) > len(suffix) + 1:
                found.setdefault(rest[: -len(suffix) - 1], {})[_ENV_ISSUER_FIELDS[suffix]] = value
                break
    return found


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> WebConfig:
    """The app's configuration from `path` (JSON or TOML; optional) and the environment (which wins).

    `overrides` (e.g. `port=` from the command line) win over both. Raises ConfigError.
    """
    env = os.environ if environ is None else environ
    data = _read_file(Path(path)) if path is not None else {}
    where = str(path) if path is not None else "configuration"
    if unknown := sorted(set(data) - _APP_KEYS):
        raise ConfigError(f"{where}: unknown keys {unknown}")

    raw_issuers = data.get("issuers") or []
    if not isinstance(raw_issuers, list):
        raise ConfigError(f"{where}: issuers must be a list of tables/objects")
    entries: dict[str, dict[str, Any]] = {}
    for index, raw in enumerate(raw_issuers):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: issuers[{index}] must be a table/object")
        if "private_key" in raw:
            raise ConfigError(
                f"{where}: issuers[{index}]: put the private key in a file (private_key_file) or the "
                "environment (private_key_env), never inline"
            )
        name = _str(raw.get("name"), f"{where}: issuers[{index}].name")
        if env_name(name) in {env_name(n) for n in entries}:
            raise ConfigError(f"{where}: two issuers are named {name!r}")
        entries[name] = dict(raw)
    by_env = {env_name(n): n for n in entries}
    for infix, values in _env_issuers(env).items():
        known = by_env.get(infix)
        if known is None:
            known = infix.lower()
            entries[known] = {"name": known}
        entry = entries[known]
        if "client_secret" in values or "private_key" in values or "private_key_file" in values:
            for key in ("client_secret", "client_secret_file", "client_secret_env"):
                entry.pop(key, None)
            for key in ("private_key_file", "private_key_env"):
                entry.pop(key, None)
        entry.update(values)
    issuers = []
    for name, entry in entries.items():
        label = f"issuer {name!r}"
        if name not in by_env.values() and not (entry.get("iss") and entry.get("client_id")):
            raise ConfigError(f"environment: RPM_ISSUER_{env_name(name)}_ISS and _CLIENT_ID must both be set")
        issuers.append(parse_issuer(entry, env, label))

    app: dict[str, Any] = {k: v for k, v in data.items() if k != "issuers"}
    for key in ("base_url", "policy", "timezone", "billing_practitioner", "cookie_samesite", "port"):
        value = env.get(f"RPM_APP_{key.upper()}")
        if value:
            app[key] = value
    if env.get("RPM_APP_FRAME_ANCESTORS"):
        app["frame_ancestors"] = [v for v in re.split(r"[\s,]+", env["RPM_APP_FRAME_ANCESTORS"]) if v]
    app.update({k: v for k, v in overrides.items() if v is not None})
    return _web_config(app, tuple(issuers), where)


def _web_config(app: Mapping[str, Any], issuers: tuple[IssuerConfig, ...], where: str) -> WebConfig:
    try:
        port = int(app.get("port", DEFAULT_PORT))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: port must be a number, not {app.get('port')!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port must be 0..65535")
    settings = app.get("settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: settings must be a table/object of policy overrides")
    settings = dict(settings)
    if app.get("timezone"):
        settings["timezone"] = _str(app["timezone"], f"{where}: timezone")
    ancestors = app.get("frame_ancestors")
    if ancestors is not None:
        if isinstance(ancestors, str):
            ancestors = [ancestors]
        if not isinstance(ancestors, list) or not all(isinstance(a, str) and a.strip() for a in ancestors):
            raise ConfigError(f"{where}: frame_ancestors must be a list of origins")
        for origin in ancestors:
            if origin not in ("'self'", "'none'") and not re.fullmatch(
                r"https?://[A-Za-z0-9.\-\[\]:*]+", origin
            ):
                raise ConfigError(f"{where}: frame_ancestors entry {origin!r} is not an origin")
        ancestors = tuple(a.strip() for a in ancestors)
    base_url = app.get("base_url") or f"http://127.0.0.1:{port or DEFAULT_PORT}"
    try:
        return WebConfig(
            issuers=issuers,
            base_url=base_url,
            frame_ancestors=ancestors,
            policy=_opt_str(app.get("policy"), f"{where}: policy"),
            settings=settings,
            billing_practitioner=_opt_str(app.get("billing_practitioner"), f"{where}: billing_practitioner"),
            organization=_opt_str(app.get("organization"), f"{where}: organization"),
            canon=_opt_str(app.get("canon"), f"{where}: canon"),
            cookie_samesite=app.get("cookie_samesite"),
            port=port,
            panel_limit=int(app.get("panel_limit", 200)),
            workers=int(app.get("workers", 8)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def with_issuers(config: WebConfig, *issuers: IssuerConfig) -> WebConfig:
    """A copy of `config` with more issuers (used by `rpm-billing try` once the sandbox is up)."""
    return replace(config, issuers=config.issuers + tuple(issuers))
