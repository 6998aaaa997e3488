"""`rpm-billing serve` and `try` as commands: configuration in, the app serving on loopback, the text out."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from smart_app.cli import build_parser
from smart_app.commands import serve
from smart_app.discovery import SmartConfiguration
from smart_app.errors import UsageError
from smart_app.web.app import DiscoveryCache, check_loopback, create_app, start_web_app
from smart_app.web.config import IssuerConfig, WebConfig, load_config

CONFIG = """
[[issuers]]
name = "sandbox"
iss = "http://127.0.0.1:9/fhir"
client_id = "rpm-billing-app"
"""


def test_serve_and_try_are_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "0", "--config", "app.toml"])
    assert args.port == 0 and args.config == Path("app.toml") and args.func is serve.run
    args = parser.parse_args(["try", "--port", "0", "--sandbox-port", "0", "--patients", "2"])
    assert (args.port, args.sandbox_port, args.patients) == (0, 0, 2)


def test_the_configured_app_serves_on_loopback(tmp_path: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_config(path, environ={"RPM_APP_POLICY": "cms-2025"}, port=0)
    running = start_web_app(config)
    try:
        home = requests.get(running.origin + "/", timeout=10)
        assert home.status_code == 200 and "http://127.0.0.1:9/fhir" in home.text
        refused = requests.get(
            running.origin + "/launch",
            params={"iss": "http://127.0.0.1:10/fhir", "launch": "x"},
            allow_redirects=False,
            timeout=10,
        )
        assert refused.status_code == 403 and "Location" not in refused.headers
        assert requests.get(running.origin + "/static/app.css", timeout=10).status_code == 200
    finally:
        running.stop()
    text = serve.describe(config, running.origin)
    assert f"Launch URL:    {config.launch_url}" in text
    assert "sandbox: http://127.0.0.1:9/fhir (client rpm-billing-app, public)" in text
    assert config.policy == "cms-2025"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.org"])
def test_the_app_listens_on_loopback_only(host: str) -> None:
    with pytest.raises(UsageError, match="loopback"):
        check_loopback(host)


def test_behind_https_the_cookie_is_secure_host_only_and_iframe_ready() -> None:
    smart = SmartConfiguration(
        token_endpoint="https://ehr.example.org/token",
        authorization_endpoint="https://ehr.example.org/authorize",
        code_challenge_methods=frozenset({"S256"}),
    )
    config = WebConfig(
        issuers=(IssuerConfig("ehr", "https://ehr.example.org/fhir", "app"),),
        base_url="https://rpm.example.org",
        frame_ancestors=("https://ehr.example.org",),
    )
    app = create_app(config, discovery=DiscoveryCache(fetch=lambda iss: smart))
    response = app.test_client().get("/launch?iss=https://ehr.example.org/fhir&launch=L")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("https://ehr.example.org/authorize?")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-rpm_sid=")
    for attribute in ("Secure", "HttpOnly", "Path=/", "SameSite=None", "Partitioned"):
        assert attribute in cookie
    assert "Domain" not in cookie
    assert "frame-ancestors https://ehr.example.org" in response.headers["Content-Security-Policy"]
