"""The web app's configuration: JSON/TOML files, environment overrides, refusals that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from smart_app.web.config import ConfigError, IssuerConfig, WebConfig, load_config

TOML = """
base_url = "http://127.0.0.1:8123"
policy = "cms-2026"
timezone = "America/Chicago"
billing_practitioner = "Practitioner/dr-1"
frame_ancestors = ["https://ehr.example.org"]

[settings]
max_99458_units = 2

[[issuers]]
name = "sandbox"
iss = "http://127.0.0.1:8090/fhir/"
client_id = "rpm-billing-app"

[[issuers]]
name = "epic-test"
iss = "https://fhir.example.org/api/FHIR/R4"
client_id = "abc"
client_secret_env = "EPIC_SECRET"
scope_syntax = "v1"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "app.toml", TOML), environ={"EPIC_SECRET": "s3cret"})
    assert config.base_url == "http://127.0.0.1:8123"
    assert config.redirect_uri == "http://127.0.0.1:8123/callback"
    assert config.settings == {"max_99458_units": 2, "timezone": "America/Chicago"}
    assert config.frame_ancestors == ("https://ehr.example.org",)
    sandbox, epic = config.issuers
    assert sandbox.iss == "http://127.0.0.1:8090/fhir" and sandbox.client_kind == "public"
    assert epic.client_secret == "s3cret" and epic.client_kind == "symmetric" and epic.scope_syntax == "v1"
    assert "s3cret" not in repr(epic)
    # the allow-list ignores a trailing slash, nothing else
    assert config.issuer_for("http://127.0.0.1:8090/fhir/") is sandbox
    assert config.issuer_for("http://127.0.0.1:8090/fhir2") is None
    assert config.issuer_for("http://evil.example/fhir") is None


def test_json_file_and_environment_overrides(tmp_path: Path) -> None:
    doc = {"issuers": [{"name": "main", "iss": "http://127.0.0.1:9/fhir", "client_id": "one"}], "port": 8001}
    path = write(tmp_path, "app.json", json.dumps(doc))
    env = {
        "RPM_APP_BASE_URL": "https://rpm.example.org",
        "RPM_APP_FRAME_ANCESTORS": "https://ehr.example.org, https://portal.example.org",
        "RPM_ISSUER_MAIN_CLIENT_ID": "two",
        "RPM_ISSUER_MAIN_CLIENT_SECRET": "from-env",
        "RPM_ISSUER_OTHER_EHR_ISS": "https://other.example.org/fhir",
        "RPM_ISSUER_OTHER_EHR_CLIENT_ID": "three",
        "RPM_ISSUER_OTHER_EHR_SCOPE_SYNTAX": "v2",
    }
    config = load_config(path, environ=env)
    assert config.base_url == "https://rpm.example.org" and config.port == 8001
    assert config.frame_ancestors == ("https://ehr.example.org", "https://portal.example.org")
    main, other = config.issuers
    assert (main.client_id, main.client_secret) == ("two", "from-env")
    assert (other.name, other.iss, other.client_id, other.scope_syntax) == (
        "other_ehr",
        "https://other.example.org/fhir",
        "three",
        "v2",
    )


def test_environment_alone_and_command_line_port() -> None:
    env = {"RPM_ISSUER_SBX_ISS": "http://127.0.0.1:8090/fhir", "RPM_ISSUER_SBX_CLIENT_ID": "rpm-billing-app"}
    config = load_config(None, environ=env, port=8555)
    assert config.port == 8555 and config.base_url == "http://127.0.0.1:8555"
    assert [i.iss for i in config.issuers] == ["http://127.0.0.1:8090/fhir"]


def test_private_key_from_a_file(tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048, private=True)
    pem = key.as_pem(private=True)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem if isinstance(pem, bytes) else pem.encode())
    doc = {
        "issuers": [
            {
                "name": "a",
                "iss": "https://a.example/fhir",
                "client_id": "c",
                "private_key_file": str(key_file),
            }
        ]
    }
    config = load_config(write(tmp_path, "c.json", json.dumps(doc)), environ={})
    assert config.issuers[0].client_kind == "asymmetric"


@pytest.mark.parametrize(
    ("doc", "env", "problem"),
    [
        (
            {"issuers": [{"name": "a", "iss": "ftp://x/fhir", "client_id": "c"}]},
            {},
            "iss must be an absolute",
        ),
        ({"issuers": [{"name": "a", "iss": "https://x/fhir"}]}, {}, "client_id must be a non-empty string"),
        (
            {"issuers": [{"name": "a", "iss": "https://x/fhir", "client_id": "c", "colour": 1}]},
            {},
            "unknown keys",
        ),
        (
            {
                "issuers": [
                    {"name": "a", "iss": "https://x/fhir", "client_id": "c", "client_secret_env": "NOPE"}
                ]
            },
            {},
            "NOPE",
        ),
        (
            {
                "issuers": [
                    {"name": "a", "iss": "https://x/fhir", "client_id": "c", "private_key": "-----BEGIN"}
                ]
            },
            {},
            "never inline",
        ),
        (
            {"issuers": [{"name": "a", "iss": "https://x/fhir", "client_id": "c", "scope_syntax": "v3"}]},
            {},
            "scope_syntax",
        ),
        (
            {"issuers": [{"name": "a", "iss": "https://x/fhir", "client_id": "c", "alg": "RS256"}]},
            {},
            "RS384 or ES384",
        ),
        (
            {
                "issuers": [
                    {"name": "a", "iss": "https://x/fhir", "client_id": "c"},
                    {"name": "A", "iss": "https://y/fhir", "client_id": "d"},
                ]
            },
            {},
            "two issuers",
        ),
        ({"cookie_samesite": "None"}, {}, "needs an https base_url"),
        ({"frame_ancestors": ["javascript:alert(1)"]}, {}, "is not an origin"),
        ({"port": "eighty"}, {}, "port must be a number"),
        ({"colour": "blue"}, {}, "unknown keys"),
        ({}, {"RPM_ISSUER_X_ISS": "https://x/fhir"}, "RPM_ISSUER_X_ISS and _CLIENT_ID"),
    ],
)
def test_refusals_name_the_problem(tmp_path: Path, doc: dict, env: dict, problem: str) -> None:
    path = write(tmp_path, "bad.json", json.dumps(doc))
    with pytest.raises(ConfigError, match=problem):
        load_config(path, environ=env)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "x.toml", "issuers = ["), environ={})
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(write(tmp_path, "x.json", "{"), environ={})


@pytest.mark.parametrize(
    ("base_url", "samesite", "expected", "secure"),
    [
        ("http://127.0.0.1:8000", None, "Lax", False),
        ("https://rpm.example.org", None, "None", True),
        ("https://rpm.example.org", "Lax", "Lax", True),
    ],
)
def test_cookie_defaults(base_url: str, samesite: str | None, expected: str, secure: bool) -> None:
    config = WebConfig(issuers=(), base_url=base_url, cookie_samesite=samesite)  # type: ignore[arg-type]
    assert (config.samesite, config.secure) == (expected, secure)


def test_frame_ancestors_default_to_self_and_the_issuers() -> None:
    issuers = (
        IssuerConfig("a", "https://ehr.example.org/fhir/r4", "c"),
        IssuerConfig("b", "https://ehr.example.org/other", "d"),
        IssuerConfig("c", "http://127.0.0.1:8090/fhir", "e"),
    )
    assert WebConfig(issuers=issuers).ancestors() == (
        "'self'",
        "https://ehr.example.org",
        "http://127.0.0.1:8090",
    )
