"""SMART discovery: where the token (and authorize) endpoints are and what the server says it can do.

Order: `[base]/.well-known/smart-configuration` (SMART 2.x, SHALL), then the deprecated CapabilityStatement
route, `rest.security.extension` oauth-uris (SMART 1, still the only one some servers fill). Relative URLs
are resolved against the FHIR base. Advertised capabilities are hints only (servers rarely fill them in
correctly): backend services need only a `token_endpoint`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import requests

from smart_app.auth import NoAuth
from smart_app.errors import ExitCode, RpmBillingError
from smart_app.http import FHIR_JSON, FhirError, HttpTransport, RetryPolicy, Timeout, make_session

log = logging.getLogger(__name__)

OAUTH_URIS_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/capabilities"
DISCOVERY_TIMEOUT: tuple[float, float] = (5.0, 30.0)

Need = Literal["backend", "launch"]


class DiscoveryError(RpmBillingError):
    """No usable SMART configuration: names every place that was tried and what was wrong there."""

    exit_code = ExitCode.AUTH_ERROR

    def __init__(self, message: str, attempts: tuple[str, ...] = ()) -> None:
        self.attempts = attempts
        detail = "; ".join(attempts)
        super().__init__(f"{message} (tried {detail})" if detail else message)


@dataclass(frozen=True)
class SmartConfiguration:
    """What discovery found. URLs are absolute. `raw` is the document it came from (well-known JSON or the
    CapabilityStatement)."""

    token_endpoint: str | None
    authorization_endpoint: str | None = None
    capabilities: frozenset[str] = frozenset()
    scopes_supported: frozenset[str] = frozenset()
    grant_types_supported: frozenset[str] = frozenset()
    token_endpoint_auth_methods: frozenset[str] = frozenset()
    code_challenge_methods: frozenset[str] = frozenset()
    jwks_uri: str | None = None
    issuer: str | None = None
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None
    registration_endpoint: str | None = None
    management_endpoint: str | None = None
    source: Literal["well-known", "capability-statement"] = "well-known"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def supports(self, capability: str) -> bool:
        """Whether the server advertises a SMART capability (e.g. `permission-v2`). A hint, not a promise."""
        return capability in self.capabilities


def discover(
    base_url: str,
    session: requests.Session | None = None,
    *,
    need: Need = "backend",
    timeout: Timeout = DISCOVERY_TIMEOUT,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    allow_insecure_http: bool = False,
) -> SmartConfiguration:
    """Find the SMART endpoints of the FHIR server at `base_url`.

    `need="backend"` requires a token endpoint; `"launch"` also an authorization endpoint. Endpoints that
    would receive secrets must be https (or on loopback) unless `allow_insecure_http`.
    Raises `DiscoveryError` naming each URL tried and why it did not do.
    """
    base = base_url.rstrip("/") + "/"
    transport = HttpTransport(
        auth=NoAuth(),
        session=session or make_session(2),
        timeout=timeout,
        policy=policy or RetryPolicy(),
        sleep=sleep,
    )
    attempts: list[str] = []

    well_known_url = urljoin(base, ".well-known/smart-configuration")
    doc = _fetch_json(transport, well_known_url, "application/json", attempts)
    if doc is not None:
        config = _from_well_known(doc, base)
        problem = _problem(config, need)
        if problem is None:
            return _checked(config, allow_insecure_http)
        attempts.append(f"{well_known_url} ({problem})")

    metadata_url = urljoin(base, "metadata")
    doc = _fetch_json(transport, metadata_url, FHIR_JSON, attempts)
    if doc is not None:
        if doc.get("resourceType") != "CapabilityStatement":
            attempts.append(f"{metadata_url} (not a CapabilityStatement)")
        else:
            config = _from_capability_statement(doc, base)
            problem = _problem(config, need)
            if problem is None:
                return _checked(config, allow_insecure_http)
            attempts.append(f"{metadata_url} ({problem})")

    raise DiscoveryError(f"no SMART configuration found for {base_url}", tuple(attempts))


def _fetch_json(
    transport: HttpTransport, url: str, accept: str, attempts: list[str]
) -> Mapping[str, Any] | None:
    """GET a JSON object, or record why not and return None."""
    transport.accept = accept
    try:
        response = transport.request("GET", url, raise_for_status=False)
    except FhirError as exc:
        attempts.append(f"{url} ({exc.message if exc.status is None else f'HTTP {exc.status}'})")
        return None
    if response.status_code != 200:
        attempts.append(f"{url} (HTTP {response.status_code})")
        return None
    try:
        doc = response.json()
    except ValueError:
        attempts.append(f"{url} (not JSON)")
        return None
    if not isinstance(doc, Mapping):
        attempts.append(f"{url} (not a JSON object)")
        return None
    return doc


def _problem(config: SmartConfiguration, need: Need) -> str | None:
    if not config.token_endpoint:
        return "no token endpoint"
    if need == "launch" and not config.authorization_endpoint:
        return "no authorization endpoint"
    return None


def _url(value: object, base: str) -> str | None:
    """An absolute URL: SMART says they SHALL be absolute, clients SHOULD resolve relative ones."""
    if not isinstance(value, str) or not value.strip():
        return None
    return urljoin(base, value.strip())


def _strings(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())  # tolerate a space-separated string where a list belongs
    if isinstance(value, list | tuple):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _from_well_known(doc: Mapping[str, Any], base: str) -> SmartConfiguration:
    return SmartConfiguration(
        token_endpoint=_url(doc.get("token_endpoint"), base),
        authorization_endpoint=_url(doc.get("authorization_endpoint"), base),
        capabilities=_strings(doc.get("capabilities")),
        scopes_supported=_strings(doc.get("scopes_supported")),
        grant_types_supported=_strings(doc.get("grant_types_supported")),
        token_endpoint_auth_methods=_strings(doc.get("token_endpoint_auth_methods_supported")),
        code_challenge_methods=_strings(doc.get("code_challenge_methods_supported")),
        jwks_uri=_url(doc.get("jwks_uri"), base),
        issuer=doc.get("issuer") if isinstance(doc.get("issuer"), str) else None,
        introspection_endpoint=_url(doc.get("introspection_endpoint"), base),
        revocation_endpoint=_url(doc.get("revocation_endpoint"), base),
        registration_endpoint=_url(doc.get("registration_endpoint"), base),
        management_endpoint=_url(doc.get("management_endpoint"), base),
        source="well-known",
        raw=doc,
    )


def _from_capability_statement(doc: Mapping[str, Any], base: str) -> SmartConfiguration:
    uris: dict[str, str] = {}
    capabilities: set[str] = set()
    for rest in doc.get("rest") or ():
        security = rest.get("security") if isinstance(rest, Mapping) else None
        if not isinstance(security, Mapping):
            continue
        for ext in security.get("extension") or ():
            if not isinstance(ext, Mapping):
                continue
            if ext.get("url") == OAUTH_URIS_EXT:
                for sub in ext.get("extension") or ():
                    if isinstance(sub, Mapping) and isinstance(sub.get("valueUri"), str):
                        uris.setdefault(str(sub.get("url")), sub["valueUri"])
            elif ext.get("url") == CAPABILITIES_EXT and isinstance(ext.get("valueCode"), str):
                capabilities.add(ext["valueCode"])
    return SmartConfiguration(
        token_endpoint=_url(uris.get("token"), base),
        authorization_endpoint=_url(uris.get("authorize"), base),
        capabilities=frozenset(capabilities),
        introspection_endpoint=_url(uris.get("introspect"), base),
        revocation_endpoint=_url(uris.get("revoke"), base),
        registration_endpoint=_url(uris.get("register"), base),
        management_endpoint=_url(uris.get("manage"), base),
        source="capability-statement",
        raw=doc,
    )


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked(config: SmartConfiguration, allow_insecure_http: bool) -> SmartConfiguration:
    """Refuse to send client secrets or assertions over plain http to anything but loopback."""
    for name in ("token_endpoint", "authorization_endpoint"):
        url = getattr(config, name)
        if url is None or allow_insecure_http:
            continue
        if urlsplit(url).scheme != "https" and not is_loopback(url):
            raise DiscoveryError(
                f"the {name.replace('_', ' ')} {url} is not https; refusing to send credentials"
            )
    log.info("SMART configuration from %s: token endpoint %s", config.source, config.token_endpoint)
    return config
