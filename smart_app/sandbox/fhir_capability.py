"""The sandbox FHIR server's CapabilityStatement: exactly what it supports, generated from the same tables
the server runs on (`search.SEARCH_PARAMS`, `search.INCLUDES`), so it cannot drift from the behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from smart_app.sandbox import search

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE_CS = "http://terminology.hl7.org/CodeSystem/restful-security-service"

# oauth-uris extension part -> Flask config key holding its absolute URL (set by the sandbox app).
OAUTH_URI_CONFIG_KEYS = {
    "authorize": "SANDBOX_AUTHORIZE_URL",
    "token": "SANDBOX_TOKEN_URL",
    "introspect": "SANDBOX_INTROSPECT_URL",
    "revoke": "SANDBOX_REVOKE_URL",
    "register": "SANDBOX_REGISTER_URL",
    "manage": "SANDBOX_MANAGE_URL",
}

_READ_INTERACTIONS = ("read", "vread", "history-instance", "search-type")
_WRITE_INTERACTIONS = ("create", "update", "delete")


def capability_statement(
    base: str,
    *,
    config: Mapping[str, Any],
    require_auth: bool,
    readonly_types: frozenset[str],
    timezone: str,
) -> dict[str, Any]:
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": (
            "rpm-billing sandbox EHR: a test double supporting only what the rpm-billing product uses. "
            f"Dates and times without an offset are read in the server's time zone, {timezone}. "
            f"Result parameters: _count (at most {search.MAX_COUNT}; paging by Bundle.link next), "
            "_sort (_id, _lastUpdated or a date parameter), _summary=count, and the _include values listed. "
            "Unsupported search parameters, modifiers, prefixes and _include values answer 400."
        ),
        "security": _security(config, require_auth),
        "resource": [_resource(type_, type_ not in readonly_types) for type_ in search.SUPPORTED_TYPES],
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
    }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "publisher": "rpm-billing",
        "kind": "instance",
        "software": {"name": "rpm-billing sandbox EHR"},
        "implementation": {"description": "rpm-billing sandbox EHR (synthetic data only)", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [rest],
    }


def _security(config: Mapping[str, Any], require_auth: bool) -> dict[str, Any]:
    if not require_auth:
        return {"cors": False, "description": "No authorization: this sandbox was started without it."}
    uris = [
        {"url": part, "valueUri": config[key]}
        for part, key in OAUTH_URI_CONFIG_KEYS.items()
        if config.get(key)
    ]
    security: dict[str, Any] = {
        "cors": False,
        "service": [{"coding": [{"system": SECURITY_SERVICE_CS, "code": "SMART-on-FHIR"}]}],
        "description": "SMART on FHIR: a bearer token is required; v1 and v2 scopes are enforced.",
    }
    if uris:
        security["extension"] = [{"url": OAUTH_URIS, "extension": uris}]
    return security


def _resource(type_: str, writable: bool) -> dict[str, Any]:
    codes = _READ_INTERACTIONS + (_WRITE_INTERACTIONS if writable else ())
    params = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
    params += [{"name": p.name, "type": p.kind} for p in search.SEARCH_PARAMS[type_].values()]
    resource: dict[str, Any] = {
        "type": type_,
        "interaction": [{"code": code} for code in codes],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    }
    includes = [name for name in search.INCLUDES if name.startswith(type_ + ":")]
    if includes:
        resource["searchInclude"] = includes
    return resource
