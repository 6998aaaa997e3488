"""`rpm-billing sandbox`: run the sandbox EHR (FHIR R4 + SMART authorization server) on loopback."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from smart_app.commands.serving import quiet_request_log, serve_until_stopped
from smart_app.errors import ExitCode
from smart_app.sandbox.app import RunningSandbox, SandboxConfig, start_sandbox
from smart_app.sandbox.auth_server import EHR_PATH, LIST_LIMIT
from smart_app.sandbox.clients import BACKEND_CLIENT_ID, DEFAULT_APP_LAUNCH_URL, PUBLIC_APP_ID
from smart_app.sandbox.keys import BACKEND_CLIENT_FILE

DEFAULT_PORT = 8090
DEFAULT_PATIENTS = 20
BACKEND_SCOPE = (
    "system/Patient.rs system/Group.rs system/Observation.rs system/Communication.rs system/Consent.rs "
    "system/Device.rs system/Encounter.rs system/Practitioner.rs system/RelatedPerson.rs "
    "system/ChargeItem.crus system/DocumentReference.crus"
)


def default_keys_dir() -> Path:
    """Kept between runs (until the temp dir is cleaned) so an integrator's key configuration stays valid."""
    return Path(tempfile.gettempdir()) / "rpm-billing-sandbox-keys"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local test EHR (FHIR R4 + SMART) with a synthetic population",
        description=(
            "Run the sandbox EHR on 127.0.0.1: a FHIR R4 server and a SMART authorization server, loaded "
            "with synthetic patients. For demos, tests and integrators; never a real EHR."
        ),
    )
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, help="synthetic patients to load")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--month", help="month of the synthetic data, YYYY-MM (default: this month)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic population")
    parser.add_argument("--timezone", default="America/New_York", help="practice time zone (IANA name)")
    parser.add_argument(
        "--app-launch-url", default=DEFAULT_APP_LAUNCH_URL, help="launch URL of the registered test app"
    )
    parser.add_argument(
        "--app-redirect-uri",
        action="append",
        default=[],
        help="redirect URI of the test app (repeatable; default: /callback at the launch URL's origin)",
    )
    parser.add_argument(
        "--keys-dir", type=Path, help=f"where the key files are written (default: {default_keys_dir()})"
    )
    parser.add_argument("--clients", type=Path, help="JSON file of extra clients to register")
    parser.add_argument("--db", default=":memory:", help="SQLite file of the FHIR store (default: in memory)")
    parser.add_argument("--auto-approve", action="store_true", help="skip the approve page (for tests)")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        host="127.0.0.1",
        port=args.port,
        patients=args.patients,
        seed=args.seed,
        month=args.month,
        timezone=args.timezone,
        db_path=args.db,
        clients_file=args.clients,
        auto_approve=args.auto_approve,
        app_launch_url=args.app_launch_url,
        app_redirect_uris=tuple(args.app_redirect_uri),
        key_dir=args.keys_dir or default_keys_dir(),
    )


def write_backend_client_file(running: RunningSandbox) -> Path | None:
    """Write `backend-client.json` (everything a Backend Services client needs) into the keys folder."""
    keys = running.state.backend_keys
    if keys.jwks_file is None:
        return None
    path = keys.jwks_file.parent / BACKEND_CLIENT_FILE
    doc = {
        "fhir_base": running.fhir_base,
        "token_url": running.urls.token,
        "client_id": BACKEND_CLIENT_ID,
        "scope": BACKEND_SCOPE,
        "keys": [
            {
                "alg": alg,
                "kid": key.kid,
                "private_key_pem": str(keys.files[alg]),
                "private_jwk": str(keys.files[alg].with_suffix(".jwk.json")),
            }
            for alg, key in keys.keys.items()
        ],
        "jwks": str(keys.jwks_file),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def launch_link(running: RunningSandbox) -> str:
    """A ready-made EHR launch link: the test app launched for the first patient (or with none)."""
    patients = running.state.auth.directory.patients(1)
    query = {"client_id": PUBLIC_APP_ID}
    if patients:
        query["patient"] = patients[0].id
    return f"{running.base_url}{EHR_PATH}/launch?{urlencode(query)}"


def describe(running: RunningSandbox, backend_file: Path | None) -> str:
    """The text printed at start: where everything is, and how to connect an app or a backend client."""
    state = running.state
    urls = running.urls
    clients = state.auth.clients
    app = clients.get(PUBLIC_APP_ID)
    loaded = ", ".join(f"{n} {t}" for t, n in sorted(state.loaded.items())) or "nothing"
    lines = [
        "rpm-billing sandbox: a test EHR with synthetic data (loopback only; not a real EHR)",
        f"FHIR base:        {urls.fhir_base}",
        f"SMART discovery:  {urls.fhir_base}/.well-known/smart-configuration",
        f"EHR launch page:  {urls.ehr}",
        f"EHR launch link:  {launch_link(running)}",
    ]
    if app is not None:
        lines.append(
            f"  opens the app at {app.launch_url} with iss and launch; redirect URIs: "
            f"{', '.join(app.redirect_uris)}"
        )
    lines.append(f"Loaded:           {loaded}")
    lines.append(
        "Clients:          " + ", ".join(f"{c.client_id} ({c.auth_method})" for c in clients.values())
    )
    keys = state.backend_keys
    lines += [
        "Backend services client:",
        f"  client_id:      {BACKEND_CLIENT_ID}",
        f"  token URL:      {urls.token}",
        f"  scope:          {BACKEND_SCOPE}",
    ]
    for alg, key in keys.keys.items():
        where = keys.files.get(alg)
        lines.append(f"  {alg} key:      {where or '(in memory)'} (kid {key.kid})")
    if keys.jwks_file is not None:
        lines.append(f"  public JWKS:    {keys.jwks_file}")
    if backend_file is not None:
        lines.append(f"  config file:    {backend_file}")
        lines.append(f"Key files are in {backend_file.parent}")
    lines.append(f"(launch page lists up to {LIST_LIMIT} patients) Press Ctrl-C to stop.")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO | None = None) -> ExitCode:
    out = out or sys.stdout
    quiet_request_log(getattr(args, "verbose", False))
    running = start_sandbox(config_from_args(args))
    return serve_until_stopped(
        "sandbox",
        [running],
        running.stop,
        lambda: describe(running, write_backend_client_file(running)),
        out,
    )
