"""Client registration of the sandbox: the JSON clients file, its errors, defaults and scope matching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smart_app.errors import ExitCode
from smart_app.sandbox.clients import (
    BACKEND_CLIENT_ID,
    CONFIDENTIAL_APP_ID,
    PUBLIC_APP_ID,
    ClientConfigError,
    is_loopback_url,
    load_clients,
    scope_matches,
)
from smart_app.sandbox.keys import public_jwks
from tests.test_sandbox_auth_support import keyring

# (requested scope, allowed pattern, allowed?)
SCOPE_RULES = [
    ("patient/Observation.rs", "patient/*", True),
    ("patient/Observation.rs?category=vital-signs", "patient/*", True),
    ("patient/Observation.read", "patient/*.rs", False),
    ("patient/Observation.rs", "patient/*.rs", True),
    ("user/Observation.rs", "patient/*", False),
    ("launch", "launch", True),
    ("launch/patient", "launch", False),
    ("system/Observation.rs", "system/Observation.r?", False),  # `?` is literal, only `*` is a wildcard
]


@pytest.mark.parametrize(("requested", "pattern", "allowed"), SCOPE_RULES)
def test_scope_patterns(requested: str, pattern: str, allowed: bool) -> None:
    assert scope_matches(requested, pattern) is allowed


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:9/jwks", True),
        ("http://localhost/jwks", True),
        ("https://[::1]/jwks", True),
        ("http://example.org/jwks", False),
        ("http://10.0.0.1/jwks", False),
        ("file:///etc/passwd", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_defaults_register_a_public_a_symmetric_and_a_backend_client() -> None:
    clients = load_clients(
        None, app_launch_url="http://127.0.0.1:5000/launch", backend_jwks=public_jwks([keyring().rs384])
    )
    public, confidential, backend = (
        clients[PUBLIC_APP_ID],
        clients[CONFIDENTIAL_APP_ID],
        clients[BACKEND_CLIENT_ID],
    )
    assert public.is_public and public.launch_url == "http://127.0.0.1:5000/launch"
    assert public.redirect_uris == ("http://127.0.0.1:5000/callback",)
    assert confidential.auth_method == "client_secret_basic" and confidential.check_client_secret(
        "sandbox-secret"
    )
    assert not confidential.check_client_secret("Sandbox-secret")
    assert backend.auth_method == "private_key_jwt" and backend.grant_types == ("client_credentials",)
    assert backend.get_allowed_scope("system/Observation.rs patient/*.rs") == "system/Observation.rs"
    assert backend.get_allowed_scope("patient/*.rs") is None


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_clients_file_adds_and_replaces_clients(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "clients": [
                {"client_id": PUBLIC_APP_ID, "auth": "none", "redirect_uris": ["http://127.0.0.1:1/cb"]},
                {
                    "client_id": "job",
                    "auth": "private_key_jwt",
                    "jwks": public_jwks([keyring().es384]),
                    "scopes": ["system/Observation.rs"],
                },
                {
                    "client_id": "web",
                    "auth": "client_secret_basic",
                    "client_secret": "s",
                    "redirect_uris": ["https://127.0.0.1/cb"],
                },
            ]
        },
    )
    clients = load_clients(path)
    assert clients[PUBLIC_APP_ID].redirect_uris == ("http://127.0.0.1:1/cb",)
    assert clients["job"].grant_types == ("client_credentials",)
    assert (
        clients["job"].get_allowed_scope("system/Observation.rs system/Patient.rs") == "system/Observation.rs"
    )
    assert clients["web"].grant_types == ("authorization_code", "refresh_token")
    assert CONFIDENTIAL_APP_ID in clients  # defaults not named in the file stay


def _jwks_with_private_key() -> dict[str, Any]:
    return {"keys": [keyring().es384.as_dict(private=True)]}


# (case, client entry or whole-file content, words the error must contain)
BAD_FILES: list[tuple[str, Any, str]] = [
    ("not JSON", "{nope", "cannot read"),
    ("no clients list", {"apps": []}, "'clients' list"),
    ("no client_id", {"clients": [{"auth": "none"}]}, "client_id"),
    (
        "unknown auth",
        {"clients": [{"client_id": "a", "auth": "client_secret_post"}]},
        "'auth' must be one of",
    ),
    ("unknown key", {"clients": [{"client_id": "a", "auth": "none", "secret": "x"}]}, "unknown keys"),
    (
        "code flow without redirect",
        {"clients": [{"client_id": "a", "auth": "none"}]},
        "needs 'redirect_uris'",
    ),
    (
        "relative redirect",
        {"clients": [{"client_id": "a", "auth": "none", "redirect_uris": ["/cb"]}]},
        "absolute http(s) URL",
    ),
    (
        "basic without secret",
        {
            "clients": [
                {"client_id": "a", "auth": "client_secret_basic", "redirect_uris": ["http://127.0.0.1/cb"]}
            ]
        },
        "needs a non-empty 'client_secret'",
    ),
    ("jwt without keys", {"clients": [{"client_id": "a", "auth": "private_key_jwt"}]}, "exactly one of"),
    (
        "jwks with a private key",
        {"clients": [{"client_id": "a", "auth": "private_key_jwt", "jwks": _jwks_with_private_key()}]},
        "public keys only",
    ),
    (
        "jwks_uri off loopback",
        {"clients": [{"client_id": "a", "auth": "private_key_jwt", "jwks_uri": "https://example.org/jwks"}]},
        "loopback",
    ),
    (
        "backend with a secret",
        {
            "clients": [
                {
                    "client_id": "a",
                    "auth": "client_secret_basic",
                    "client_secret": "s",
                    "grant_types": ["client_credentials"],
                }
            ]
        },
        "needs auth 'private_key_jwt'",
    ),
    (
        "unsupported grant",
        {
            "clients": [
                {
                    "client_id": "a",
                    "auth": "none",
                    "grant_types": ["password"],
                    "redirect_uris": ["http://127.0.0.1/"],
                }
            ]
        },
        "unsupported grant_types",
    ),
    (
        "duplicate id",
        {
            "clients": [
                {"client_id": "a", "auth": "none", "redirect_uris": ["http://127.0.0.1/cb"]},
                {"client_id": "a", "auth": "none", "redirect_uris": ["http://127.0.0.1/cb"]},
            ]
        },
        "registered twice",
    ),
]


@pytest.mark.parametrize(("case", "content", "words"), BAD_FILES, ids=[c for c, _, _ in BAD_FILES])
def test_bad_clients_files_are_refused_with_a_clear_message(
    tmp_path: Path, case: str, content: Any, words: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ClientConfigError) as info:
        load_clients(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.exit_code == ExitCode.UNREADABLE_INPUT


def test_missing_clients_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="cannot read"):
        load_clients(tmp_path / "absent.json")
