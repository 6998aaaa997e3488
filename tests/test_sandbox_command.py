"""The whole sandbox over real loopback HTTP (`start_sandbox`) and the `rpm-billing sandbox` command.

A token from an EHR launch, a standalone launch and Backend Services must be accepted by the FHIR server,
within its context. Keys are kept in one folder for the module (generated once).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smart_app.cli import main
from smart_app.errors import ExitCode, UsageError
from smart_app.sandbox.app import (
    RunningSandbox,
    SandboxConfig,
    check_loopback,
    create_app,
    sandbox_state,
    start_sandbox,
)
from smart_app.sandbox.clients import BACKEND_CLIENT_ID, PUBLIC_APP_ID

APP_LAUNCH = "http://127.0.0.1:8000/launch"
REDIRECT = "http://127.0.0.1:8000/callback"
MONTH = "2026-03"
TIMEOUT = 10


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-keys")


@pytest.fixture(scope="module")
def sandbox(key_dir: Path) -> Iterator[RunningSandbox]:
    config = SandboxConfig(
        patients=3,
        month=MONTH,
        seed=7,
        key_dir=key_dir,
        app_launch_url=APP_LAUNCH,
        auto_approve=True,
    )
    running = start_sandbox(config)
    try:
        yield running
    finally:
        running.stop()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_and_exchange(sandbox: RunningSandbox, scope: str, launch: str | None = None) -> dict[str, Any]:
    """A public client's code flow over HTTP (auto-approve), returning the token response."""
    discovery = requests.get(sandbox.fhir_base + "/.well-known/smart-configuration", timeout=TIMEOUT).json()
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": PUBLIC_APP_ID,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "aud": sandbox.fhir_base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch
    response = requests.get(
        discovery["authorization_endpoint"], params=params, allow_redirects=False, timeout=TIMEOUT
    )
    assert response.status_code == 302, response.text[:300]
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    assert query["state"] == state
    token = requests.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT,
            "client_id": PUBLIC_APP_ID,
            "code_verifier": verifier,
        },
        timeout=TIMEOUT,
    )
    assert token.status_code == 200, token.text
    body: dict[str, Any] = token.json()
    return body


def fhir_get(sandbox: RunningSandbox, path: str, token: str | None) -> requests.Response:
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{sandbox.fhir_base}/{path}", headers=headers, timeout=TIMEOUT)


def patient_ids(sandbox: RunningSandbox) -> list[str]:
    return [p.id for p in sandbox.state.auth.directory.patients(10)]


def test_discovery_over_http_uses_the_real_port(sandbox: RunningSandbox) -> None:
    assert sandbox.fhir_base.startswith("http://127.0.0.1:") and sandbox.fhir_base.endswith("/fhir")
    doc = requests.get(
        sandbox.fhir_base + "/.well-known/smart-configuration", headers={"Accept": "*/*"}, timeout=TIMEOUT
    ).json()
    assert doc["token_endpoint"] == sandbox.base_url + "/auth/token"
    assert sandbox.app.config["SANDBOX_TOKEN_URL"] == doc["token_endpoint"]
    assert sandbox.app.config["SANDBOX_AUTHORIZE_URL"] == doc["authorization_endpoint"]
    assert sandbox.app.config["SANDBOX_INTROSPECT_URL"] == doc["introspection_endpoint"]
    assert sandbox.app.config["SANDBOX_JWKS_URL"] == doc["jwks_uri"]
    metadata = requests.get(sandbox.fhir_base + "/metadata", timeout=TIMEOUT).json()
    assert doc["token_endpoint"] in json.dumps(metadata)  # the CapabilityStatement's oauth-uris


def test_population_is_loaded_from_the_synthetic_generator(sandbox: RunningSandbox) -> None:
    loaded = sandbox.state.loaded
    assert loaded["Patient"] == 3 and loaded["Observation"] > 0 and loaded["Practitioner"] >= 1
    html = requests.get(sandbox.base_url + "/ehr", timeout=TIMEOUT).text
    for pid in patient_ids(sandbox):
        assert f"patient={pid}" in html


def test_fhir_server_requires_a_token(sandbox: RunningSandbox) -> None:
    pid = patient_ids(sandbox)[0]
    assert fhir_get(sandbox, f"Patient/{pid}", None).status_code == 401


def test_ehr_launch_token_is_accepted_by_the_fhir_server_for_its_patient_only(
    sandbox: RunningSandbox,
) -> None:
    first, second = patient_ids(sandbox)[:2]
    launch_page = requests.get(
        sandbox.base_url + "/ehr/launch",
        params={"client_id": PUBLIC_APP_ID, "patient": first},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert launch_page.status_code == 302
    target = launch_page.headers["Location"]
    assert target.startswith(APP_LAUNCH)
    launch = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
    assert launch["iss"] == sandbox.fhir_base

    body = authorize_and_exchange(sandbox, "launch openid fhirUser patient/*.rs", launch=launch["launch"])
    assert body["patient"] == first and body["need_patient_banner"] is False
    token = body["access_token"]
    own = fhir_get(sandbox, f"Patient/{first}", token)
    assert own.status_code == 200 and own.json()["id"] == first
    observations = fhir_get(sandbox, f"Observation?patient={first}&_count=5", token)
    assert observations.status_code == 200 and observations.json()["resourceType"] == "Bundle"
    assert fhir_get(sandbox, f"Patient/{second}", token).status_code in (403, 404)


def test_standalone_launch_token_is_accepted_by_the_fhir_server(sandbox: RunningSandbox) -> None:
    body = authorize_and_exchange(sandbox, "openid fhirUser launch/patient patient/Patient.rs offline_access")
    assert body["patient"] == patient_ids(sandbox)[0]  # auto-approve: the first patient
    assert body["need_patient_banner"] is True and "refresh_token" in body
    assert fhir_get(sandbox, f"Patient/{body['patient']}", body["access_token"]).status_code == 200
    refreshed = requests.post(
        sandbox.urls.token,
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": PUBLIC_APP_ID,
        },
        timeout=TIMEOUT,
    ).json()
    assert fhir_get(sandbox, f"Patient/{body['patient']}", refreshed["access_token"]).status_code == 200


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_with_the_written_key_files(
    sandbox: RunningSandbox, key_dir: Path, alg: str
) -> None:
    name = "backend-rs384" if alg == "RS384" else "backend-es384"
    pem = (key_dir / f"{name}.pem").read_bytes()
    assert stat.S_IMODE(os.stat(key_dir / f"{name}.pem").st_mode) == 0o600
    key = RSAKey.import_key(pem) if alg == "RS384" else ECKey.import_key(pem)
    kid = json.loads((key_dir / f"{name}.jwk.json").read_text())["kid"]
    now = int(time.time())
    client_assertion = jwt.encode(
        {"alg": alg, "kid": kid, "typ": "JWT"},
        {
            "iss": BACKEND_CLIENT_ID,
            "sub": BACKEND_CLIENT_ID,
            "aud": sandbox.urls.token,
            "exp": now + 240,
            "jti": str(uuid.uuid4()),
        },
        key,
        algorithms=[alg],
    )
    response = requests.post(
        sandbox.urls.token,
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs system/Observation.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion,
        },
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    for pid in patient_ids(sandbox)[:2]:
        assert fhir_get(sandbox, f"Patient/{pid}", token).status_code == 200


def test_keys_are_kept_between_starts(key_dir: Path, sandbox: RunningSandbox) -> None:
    again = start_sandbox(SandboxConfig(key_dir=key_dir))
    try:
        first = requests.get(sandbox.urls.jwks, timeout=TIMEOUT).json()
        second = requests.get(again.urls.jwks, timeout=TIMEOUT).json()
        assert first == second
        assert again.state.loaded == {"Practitioner": 1}  # no population: the default signed-in user only
    finally:
        again.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_sandbox_never_listens_beyond_loopback(host: str) -> None:
    with pytest.raises(UsageError, match="loopback"):
        check_loopback(host)
    with pytest.raises(UsageError):
        start_sandbox(SandboxConfig(host=host))


@pytest.mark.parametrize(
    "argv",
    [
        ["--patients", "-1"],
        ["--month", "2026-13"],
        ["--timezone", "Mars/Olympus"],
        ["--patients", "2", "--month", "March"],
    ],
)
def test_bad_arguments_exit_with_bad_arguments(argv: list[str], tmp_path: Path) -> None:
    assert main(["sandbox", "--port", "0", "--keys-dir", str(tmp_path), *argv]) == ExitCode.BAD_ARGUMENTS


def test_command_prints_connection_details_and_stops_on_sigterm(key_dir: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smart_app.cli",
            "sandbox",
            "--port",
            "0",
            "--patients",
            "2",
            "--month",
            MONTH,
            "--keys-dir",
            str(key_dir),
            "--app-launch-url",
            APP_LAUNCH,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        assert process.stdout is not None
        while not any("Press Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            assert line, f"sandbox exited early: {process.stderr.read() if process.stderr else ''}"
            lines.append(line.rstrip("\n"))
        fields = {}
        for line in lines:
            label, sep, value = line.partition(":")
            if sep:
                fields[label.strip()] = value.strip()
        fhir_base = fields["FHIR base"]
        assert fhir_base.startswith("http://127.0.0.1:") and fhir_base.endswith("/fhir")
        assert (
            requests.get(fhir_base + "/.well-known/smart-configuration", timeout=TIMEOUT).status_code == 200
        )
        link = fields["EHR launch link"]
        redirect = requests.get(link, allow_redirects=False, timeout=TIMEOUT)
        assert redirect.status_code == 302 and redirect.headers["Location"].startswith(APP_LAUNCH + "?iss=")
        assert fields["client_id"] == BACKEND_CLIENT_ID
        assert fields["token URL"] == fhir_base.removesuffix("/fhir") + "/auth/token"
        backend = json.loads((key_dir / "backend-client.json").read_text())
        assert backend["client_id"] == BACKEND_CLIENT_ID and backend["token_url"] == fields["token URL"]
        assert {k["alg"] for k in backend["keys"]} == {"RS384", "ES384"}
        assert all(Path(k["private_key_pem"]).exists() for k in backend["keys"])
        assert str(key_dir) in "\n".join(lines)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert "stopped" in out


def test_picker_and_encounter_context_from_the_real_store(key_dir: Path) -> None:
    """Not auto-approved: the picker lists the store's patients; an EHR launch can carry an encounter."""
    app = create_app(
        SandboxConfig(patients=3, month=MONTH, seed=7, key_dir=key_dir, app_launch_url=APP_LAUNCH)
    )
    client = app.test_client()
    store = sandbox_state(app).store
    patients = store.search("Patient", [("_count", "10")]).matches
    encounter = store.search("Encounter", [("_count", "1")]).matches[0]
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": PUBLIC_APP_ID,
        "redirect_uri": REDIRECT,
        "scope": "launch/patient patient/*.rs",
        "state": "s1",
        "aud": "http://localhost/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    html = client.get("/auth/authorize", query_string=params).get_data(as_text=True)
    for patient in patients:
        assert f'<option value="{patient["id"]}">' in html
    assert patients[0]["name"][0]["family"] in html

    enc_patient = encounter["subject"]["reference"].split("/")[1]
    launch = client.get(
        "/ehr/launch",
        query_string={"client_id": PUBLIC_APP_ID, "patient": enc_patient, "encounter": encounter["id"]},
    )
    launch_value = parse_qs(urlsplit(launch.headers["Location"]).query)["launch"][0]
    page = client.get(
        "/auth/authorize", query_string={**params, "scope": "launch patient/*.rs", "launch": launch_value}
    ).get_data(as_text=True)
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
    approved = client.post("/auth/authorize", data={**form, "decision": "approve"})
    code = parse_qs(urlsplit(approved.headers["Location"]).query)["code"][0]
    token = client.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": PUBLIC_APP_ID,
            "code_verifier": verifier,
        },
    ).get_json()
    assert token["patient"] == enc_patient and token["encounter"] == encounter["id"]
