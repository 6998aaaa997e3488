"""SMART discovery (.well-known first, CapabilityStatement oauth-uris fallback) and the v1/v2 scope choice."""

from __future__ import annotations

import pytest
import responses

from smart_app.discovery import OAUTH_URIS_EXT, DiscoveryError, SmartConfiguration, discover, is_loopback
from smart_app.errors import ExitCode
from smart_app.scopes import choose_syntax

BASE = "http://127.0.0.1:8080/fhir"
WELL_KNOWN = f"{BASE}/.well-known/smart-configuration"
METADATA = f"{BASE}/metadata"


def smart_config(**overrides) -> dict:
    doc = {
        "issuer": "http://127.0.0.1:8080",
        "token_endpoint": "http://127.0.0.1:8080/auth/token",
        "authorization_endpoint": "http://127.0.0.1:8080/auth/authorize",
        "jwks_uri": "http://127.0.0.1:8080/auth/jwks",
        "introspection_endpoint": "http://127.0.0.1:8080/auth/introspect",
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["system/*.rs", "openid"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-ehr", "client-confidential-asymmetric", "permission-v2", "permission-v1"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def capability_statement(uris: dict[str, str] | None) -> dict:
    security: dict = {"service": [{"text": "SMART-on-FHIR"}]}
    if uris is not None:
        security["extension"] = [
            {"url": "http://example.org/other", "valueString": "ignored"},
            {
                "url": OAUTH_URIS_EXT,
                "extension": [{"url": name, "valueUri": uri} for name, uri in uris.items()],
            },
        ]
    return {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": security}]}


def no_sleep(_: float) -> None:
    return None


@responses.activate
def test_well_known_is_used_first():
    responses.get(WELL_KNOWN, json=smart_config())
    config = discover(BASE)
    assert config.source == "well-known"
    assert config.token_endpoint == "http://127.0.0.1:8080/auth/token"
    assert config.authorization_endpoint == "http://127.0.0.1:8080/auth/authorize"
    assert config.jwks_uri == "http://127.0.0.1:8080/auth/jwks"
    assert config.introspection_endpoint == "http://127.0.0.1:8080/auth/introspect"
    assert config.issuer == "http://127.0.0.1:8080"
    assert config.grant_types_supported == {"authorization_code", "client_credentials"}
    assert config.token_endpoint_auth_methods == {"private_key_jwt", "client_secret_basic"}
    assert config.scopes_supported == {"system/*.rs", "openid"}
    assert config.code_challenge_methods == {"S256"}
    assert config.supports("permission-v2") and not config.supports("launch-standalone")
    assert config.raw["issuer"] == "http://127.0.0.1:8080"
    assert [c.request.url for c in responses.calls] == [WELL_KNOWN]  # metadata not needed
    assert responses.calls[0].request.headers["Accept"] == "application/json"


@responses.activate
def test_relative_urls_are_resolved_against_the_base():
    responses.get(
        WELL_KNOWN, json=smart_config(token_endpoint="../auth/token", authorization_endpoint="/authz")
    )
    config = discover(BASE + "/")
    assert config.token_endpoint == "http://127.0.0.1:8080/auth/token"
    assert config.authorization_endpoint == "http://127.0.0.1:8080/authz"


@responses.activate
def test_backend_needs_only_a_token_endpoint():
    # a badly advertising server: no capabilities, no auth methods, no grant types
    responses.get(WELL_KNOWN, json={"token_endpoint": "https://auth.example/token"})
    config = discover(BASE)
    assert config.token_endpoint == "https://auth.example/token"
    assert config.capabilities == frozenset() and config.authorization_endpoint is None


@responses.activate
def test_fallback_to_capability_statement_oauth_uris():
    responses.get(WELL_KNOWN, status=404)
    responses.get(
        METADATA,
        json=capability_statement(
            {
                "authorize": "http://127.0.0.1:8080/auth/authorize",
                "token": "auth/token",
                "introspect": "http://127.0.0.1:8080/auth/introspect",
            }
        ),
    )
    config = discover(BASE, need="launch")
    assert config.source == "capability-statement"
    assert config.token_endpoint == "http://127.0.0.1:8080/fhir/auth/token"
    assert config.authorization_endpoint == "http://127.0.0.1:8080/auth/authorize"
    assert config.introspection_endpoint == "http://127.0.0.1:8080/auth/introspect"
    assert responses.calls[1].request.headers["Accept"] == "application/fhir+json"


@responses.activate
def test_well_known_without_token_endpoint_falls_back():
    responses.get(WELL_KNOWN, json={"capabilities": ["launch-ehr"]})
    responses.get(METADATA, json=capability_statement({"token": "http://127.0.0.1:8080/token"}))
    assert discover(BASE).token_endpoint == "http://127.0.0.1:8080/token"


@pytest.mark.parametrize(
    ("well_known", "metadata", "reasons"),
    [
        ({"status": 404}, {"json": capability_statement(None)}, ["(HTTP 404)", "(no token endpoint)"]),
        ({"body": "<html>login</html>"}, {"status": 401}, ["(not JSON)", "(HTTP 401)"]),
        ({"json": ["a list"]}, {"json": {"resourceType": "Patient"}}, ["(not a JSON object)", "not a Capab"]),
    ],
    ids=["404-and-no-extension", "html-and-401", "junk"],
)
@responses.activate
def test_neither_gives_a_discovery_error_naming_what_was_tried(well_known, metadata, reasons):
    responses.get(WELL_KNOWN, **well_known)
    responses.get(METADATA, **metadata)
    with pytest.raises(DiscoveryError) as info:
        discover(BASE, sleep=no_sleep)
    text = str(info.value)
    assert WELL_KNOWN in text and METADATA in text
    for reason in reasons:
        assert reason in text
    assert info.value.exit_code == ExitCode.AUTH_ERROR
    assert len(info.value.attempts) == 2


@responses.activate
def test_launch_needs_an_authorization_endpoint():
    responses.get(WELL_KNOWN, json=smart_config(authorization_endpoint=None))
    responses.get(METADATA, json=capability_statement({"token": "http://127.0.0.1:8080/token"}))
    with pytest.raises(DiscoveryError, match="no authorization endpoint"):
        discover(BASE, need="launch")


@responses.activate
def test_temporary_failures_are_retried():
    responses.get(WELL_KNOWN, status=503)
    responses.get(WELL_KNOWN, json=smart_config())
    slept: list[float] = []
    assert discover(BASE, sleep=slept.append).source == "well-known"
    assert slept == [1.0]


@responses.activate
def test_unreachable_server_is_reported():
    import requests

    responses.get(WELL_KNOWN, body=requests.ConnectionError("refused"))
    responses.get(METADATA, body=requests.ConnectionError("refused"))
    with pytest.raises(DiscoveryError, match="could not be reached"):
        discover(BASE, sleep=no_sleep)


@pytest.mark.parametrize(
    ("token_endpoint", "allow", "ok"),
    [
        ("http://ehr.example/token", False, False),
        ("http://ehr.example/token", True, True),
        ("https://ehr.example/token", False, True),
        ("http://localhost:9000/token", False, True),
        ("http://[::1]:9000/token", False, True),
    ],
)
@responses.activate
def test_credentials_are_only_sent_over_https_or_loopback(token_endpoint, allow, ok):
    responses.get(WELL_KNOWN, json=smart_config(token_endpoint=token_endpoint, authorization_endpoint=None))
    if ok:
        assert discover(BASE, allow_insecure_http=allow).token_endpoint == token_endpoint
    else:
        with pytest.raises(DiscoveryError, match="not https"):
            discover(BASE, allow_insecure_http=allow)


def test_is_loopback():
    assert is_loopback("http://127.0.0.1:1/x") and is_loopback("http://127.8.0.1/x")
    assert is_loopback("http://LOCALHOST/x")
    assert not is_loopback("http://10.0.0.1/x") and not is_loopback("https://ehr.example/x")


@pytest.mark.parametrize(
    ("capabilities", "override", "expected"),
    [
        ({"permission-v2"}, None, "v2"),
        ({"permission-v1", "permission-v2"}, None, "v2"),
        ({"permission-v1"}, None, "v1"),
        (set(), None, "v1"),  # nothing advertised: v1 is what every server reads
        ({"permission-v2"}, "v1", "v1"),  # per-tenant override wins (e.g. Epic)
        ({"permission-v1"}, "v2", "v2"),
    ],
)
def test_choose_syntax(capabilities, override, expected):
    config = SmartConfiguration(token_endpoint="https://x/token", capabilities=frozenset(capabilities))
    assert choose_syntax(config, override) == expected


def test_choose_syntax_without_config_and_bad_override():
    assert choose_syntax(None) == "v1"
    with pytest.raises(ValueError):
        choose_syntax(None, "v3")  # type: ignore[arg-type]
