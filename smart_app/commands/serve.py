"""`rpm-billing serve`: the clinician web app (SMART on FHIR) alone, against the EHRs it is configured for.

The app listens on 127.0.0.1 (default port 8000). Configure each EHR it may be launched from (the allowed
`iss`, client id, secret or key, scopes) in a JSON or TOML file and/or environment variables; see
docs/web-app.md. Register `<base_url>/launch` as the app's launch URL and `<base_url>/callback` as its
redirect URI with the EHR or SMART launcher. To publish it beyond this machine, put a TLS reverse proxy in
front and set `base_url` to the public https URL (cookies then become Secure and iframe-friendly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from smart_app.commands.serving import quiet_request_log, serve_until_stopped
from smart_app.errors import ExitCode
from smart_app.web.app import start_web_app
from smart_app.web.config import WebConfig, load_config


def register(subparsers: Any) -> None:
    if "serve" in subparsers.choices:
        return
    parser = subparsers.add_parser(
        "serve",
        help="run the clinician web app (SMART on FHIR EHR and standalone launch)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default 8000, or RPM_APP_PORT / config)")
    parser.add_argument("--config", type=Path, help="configuration file, JSON or TOML (issuers and settings)")
    parser.set_defaults(func=run)


def describe(config: WebConfig, origin: str) -> str:
    lines = [
        "rpm-billing web app",
        f"Listening:     {origin}",
        f"Launch URL:    {config.launch_url}",
        f"Redirect URI:  {config.redirect_uri}",
        f"Start page:    {config.base_url}/ (standalone launch)",
        "Allowed EHRs (iss):",
    ]
    if not config.issuers:
        lines.append("  none configured: every launch will be refused (see --config)")
    for issuer in config.issuers:
        lines.append(f"  {issuer.name}: {issuer.iss} (client {issuer.client_id}, {issuer.client_kind})")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO | None = None) -> ExitCode:
    out = out or sys.stdout
    quiet_request_log(getattr(args, "verbose", False))
    config = load_config(args.config, port=args.port)
    running = start_web_app(config)
    return serve_until_stopped(
        "serve", [running], running.stop, lambda: describe(config, running.origin), out
    )
