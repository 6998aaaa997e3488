"""`rpm-billing try`: the sandbox EHR and the clinician app together on loopback, and the link that
launches the app from the sandbox EHR.

Both run on 127.0.0.1 only, with synthetic patients. Open the printed EHR launch link in a browser: the
sandbox EHR launches the app for a patient (SMART EHR launch), the app signs in (PKCE) and shows the month.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode

from smart_app.commands.serving import quiet_request_log, serve_until_stopped
from smart_app.errors import ExitCode
from smart_app.sandbox.app import RunningSandbox, SandboxConfig, start_sandbox
from smart_app.sandbox.auth_server import EHR_PATH
from smart_app.sandbox.clients import PUBLIC_APP_ID
from smart_app.web.app import Clock, RunningWebApp, bind_web_app, create_app
from smart_app.web.config import IssuerConfig, WebConfig

DEFAULT_APP_PORT = 8000
DEFAULT_SANDBOX_PORT = 8090
DEFAULT_PATIENTS = 20
SANDBOX_ISSUER = "sandbox"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "try",
        help="start the sandbox EHR and the clinician app together and print the launch link",
        description=__doc__,
    )
    parser.add_argument("--port", type=int, default=DEFAULT_APP_PORT, help="app port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--sandbox-port",
        type=int,
        default=DEFAULT_SANDBOX_PORT,
        help="sandbox EHR port on 127.0.0.1 (0: any)",
    )
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS, help="synthetic patients to load")
    parser.add_argument("--month", help="month of the synthetic data, YYYY-MM (default: this month)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic population")
    parser.add_argument("--timezone", default="America/New_York", help="practice time zone (IANA name)")
    parser.add_argument("--policy", help="billing policy (default: the month picks)")
    parser.add_argument("--auto-approve", action="store_true", help="skip the sandbox's approve page")
    parser.set_defaults(func=run)


@dataclass
class TryStack:
    """The sandbox EHR and the app, both serving. `stop()` stops both."""

    sandbox: RunningSandbox
    web: RunningWebApp
    config: WebConfig

    @property
    def app_origin(self) -> str:
        return self.web.origin

    def ehr_launch_link(self, patient: str | None = None, *, first_patient: bool = True) -> str:
        """The sandbox EHR link that launches the app (for `patient`, the first patient, or none)."""
        query = {"client_id": PUBLIC_APP_ID}
        if patient is None and first_patient:
            listed = self.sandbox.state.auth.directory.patients(1)
            patient = listed[0].id if listed else None
        if patient is not None:
            query["patient"] = patient
        return f"{self.sandbox.base_url}{EHR_PATH}/launch?{urlencode(query)}"

    def stop(self) -> None:
        self.web.stop()
        self.sandbox.stop()

    def __enter__(self) -> TryStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stack(
    *,
    app_port: int = DEFAULT_APP_PORT,
    sandbox_port: int = DEFAULT_SANDBOX_PORT,
    patients: int = DEFAULT_PATIENTS,
    month: str | None = None,
    seed: int = 1,
    timezone: str = "America/New_York",
    policy: str | None = None,
    auto_approve: bool = False,
    clock: Clock | None = None,
    frame_ancestors: tuple[str, ...] = (),
) -> TryStack:
    """Bind the app's port, start the sandbox registered with that launch URL, then serve the app.

    The app may be framed by itself, the sandbox EHR and `frame_ancestors` (more origins: a test page)."""
    from smart_app.synth import PHYSICIAN

    web = bind_web_app("127.0.0.1", app_port)
    try:
        sandbox = start_sandbox(
            SandboxConfig(
                host="127.0.0.1",
                port=sandbox_port,
                patients=patients,
                seed=seed,
                month=month,
                timezone=timezone,
                auto_approve=auto_approve,
                app_launch_url=f"{web.origin}/launch",
            )
        )
    except BaseException:
        web.stop()
        raise
    config = WebConfig(
        issuers=(IssuerConfig(name=SANDBOX_ISSUER, iss=sandbox.fhir_base, client_id=PUBLIC_APP_ID),),
        base_url=web.origin,
        frame_ancestors=("'self'", sandbox.base_url, *frame_ancestors),
        policy=policy,
        settings={"timezone": timezone},
        billing_practitioner=f"Practitioner/{PHYSICIAN}" if patients else None,
        port=web.port,
    )
    web.serve(create_app(config, clock=clock))
    return TryStack(sandbox=sandbox, web=web, config=config)


def describe(stack: TryStack) -> str:
    sandbox = stack.sandbox
    return "\n".join(
        [
            "rpm-billing try: the sandbox EHR and the clinician app (loopback only; synthetic data)",
            f"Launch the app from the sandbox EHR:  {stack.ehr_launch_link()}",
            f"  practitioner launch (panel):        {stack.ehr_launch_link(first_patient=False)}",
            f"  pick another patient:               {sandbox.urls.ehr}",
            f"Standalone launch (app start page):  {stack.app_origin}/",
            f"FHIR base (iss):                      {sandbox.fhir_base}",
            "Press Ctrl-C to stop.",
        ]
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> ExitCode:
    out = out or sys.stdout
    quiet_request_log(getattr(args, "verbose", False))
    stack = start_stack(
        app_port=args.port,
        sandbox_port=args.sandbox_port,
        patients=args.patients,
        month=args.month,
        seed=args.seed,
        timezone=args.timezone,
        policy=args.policy,
        auto_approve=args.auto_approve,
    )
    return serve_until_stopped("try", [stack.web, stack.sandbox], stack.stop, lambda: describe(stack), out)
