"""`rpm-billing month-end`: bill a month for the RPM population of a live FHIR server, and write it back.

Reads each patient's month from the EHR's FHIR API, computes the code set, and writes the ChargeItems and the
monthly DocumentReference back exactly once (contract section 4): a second run of an unchanged month writes
nothing. Population: --group, --patient (repeatable), or every patient with an RPM Consent.

Secrets come from files (--token-file, --secret-file, --key-file) or the environment variables
RPM_BEARER_TOKEN, RPM_CLIENT_SECRET, RPM_PRIVATE_KEY; never from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import TextIO

from fhir_mapping.canon import CANON
from fhir_mapping.outbound import WriteSettings
from smart_app import scopes
from smart_app.auth import AUTH_KINDS, Auth, AuthError, create_auth
from smart_app.commands.compute import add_policy_arguments, options_from
from smart_app.discovery import discover
from smart_app.errors import ExitCode, UsageError
from smart_app.fhir_client import FhirClient
from smart_app.month_end import (
    MonthEndRun,
    print_run_table,
    run_month_end,
    table_rows,
    write_capability_problem,
    write_export,
    write_report,
)
from smart_app.pipeline import RunOptions
from smart_app.reads import population

READ_TYPES = ("Patient", "Consent", "Device", "RelatedPerson", "Observation", "Communication", "Encounter")
WRITE_TYPES = ("ChargeItem", "DocumentReference")

EXIT_CODES_HELP = """exit codes:
  0  finished
  2  bad arguments
  4  finished, but some resources were malformed and skipped (listed in the report)
  5  the FHIR server could not be reached or kept failing
  6  authorization failed, or a permission is missing
  7  finished, but some patients failed (listed in the report; run again for them)
  8  the server would not take the writes: the charges are in the export files instead"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "month-end",
        help="run month-end against a FHIR server: read, compute, write ChargeItems and the monthly log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--fhir-base", required=True, help="the FHIR server's base URL")
    parser.add_argument("--month", required=True, help="calendar month to bill, YYYY-MM")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--group", help="bill the members of this Group (id)")
    who.add_argument("--patient", action="append", default=[], help="bill this patient (id); repeatable")
    parser.add_argument(
        "--auth", choices=AUTH_KINDS, default="backend", help="how to authorize (default backend)"
    )
    parser.add_argument("--client-id", help="OAuth client id (client-secret, backend)")
    parser.add_argument("--token-file", help="file holding the bearer token (--auth bearer)")
    parser.add_argument("--secret-file", help="file holding the client secret (--auth client-secret)")
    parser.add_argument("--key-file", help="private key, PEM or JWK/JWKS JSON (--auth backend)")
    parser.add_argument("--kid", help="key id of the private key (default: from the key, or its thumbprint)")
    parser.add_argument(
        "--alg", choices=("RS384", "ES384"), help="assertion algorithm (default: from the key)"
    )
    parser.add_argument("--token-endpoint", help="skip SMART discovery and use this token endpoint")
    parser.add_argument("--scope", help="scopes to ask for, overriding the default system scopes")
    parser.add_argument(
        "--scope-syntax", choices=("v1", "v2"), help="SMART scope syntax (default: discovered)"
    )
    add_policy_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="write nothing; show what would be written")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="stdout format")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for report.json and the export files (default ./rpm-month-end-YYYY-MM)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="patients processed at once (default 8)")
    parser.add_argument(
        "--billing-practitioner", help="ChargeItem.performer reference, e.g. Practitioner/dr-1"
    )
    parser.add_argument(
        "--canon", default=CANON, help=f"canonical base of the project's URLs (default {CANON})"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for an answer (default 60)"
    )
    parser.set_defaults(func=run)


def wanted_scopes(syntax: scopes.Syntax, *, group: bool, dry_run: bool) -> str:
    wanted = {type_: "rs" for type_ in READ_TYPES}
    wanted["Practitioner"] = "rs"  # staff names for the monthly log (optional: not checked)
    if group:
        wanted["Group"] = "rs"
    for type_ in WRITE_TYPES:
        wanted[type_] = "rs" if dry_run else "crus"
    return scopes.format_scopes("system", wanted, syntax)


def build_auth(args: argparse.Namespace) -> tuple[Auth, scopes.Syntax]:
    """The Auth for --auth (discovering the token endpoint when one is needed) and the scope syntax."""
    syntax: scopes.Syntax = args.scope_syntax or "v2"
    if args.auth in ("client-secret", "backend"):
        token_endpoint = args.token_endpoint
        if not token_endpoint or not args.scope_syntax:
            config = discover(args.fhir_base, need="backend")
            token_endpoint = token_endpoint or config.token_endpoint
            syntax = scopes.choose_syntax(config, args.scope_syntax)
        scope = args.scope or wanted_scopes(syntax, group=bool(args.group), dry_run=args.dry_run)
        auth = create_auth(
            args.auth,
            token_endpoint=token_endpoint,
            client_id=args.client_id,
            scope=scope,
            secret_file=args.secret_file,
            key_file=args.key_file,
            kid=args.kid,
            alg=args.alg,
        )
        auth.authorize()
        return auth, syntax
    return create_auth(args.auth, token_file=args.token_file, scope=args.scope or ""), syntax


def check_read_scopes(auth: Auth, group: bool) -> None:
    """A server that granted less than we read filters its searches silently: say so instead."""
    needed = [scopes.Grant("system", t, frozenset("rs")) for t in READ_TYPES + WRITE_TYPES]
    if group:
        needed.append(scopes.Grant("system", "Group", frozenset("r")))
    missing = auth.missing_scopes(needed)
    if missing:
        raise AuthError(
            f"the server did not grant {scopes.describe_missing(missing)}: its searches would come back "
            "filtered (empty), so the month cannot be billed"
        )


def write_scope_problem(auth: Auth) -> str | None:
    missing = auth.missing_scopes([scopes.Grant("system", t, frozenset("cu")) for t in WRITE_TYPES])
    return scopes.describe_missing(missing) if missing else None


def run(args: argparse.Namespace) -> ExitCode:
    if args.concurrency < 1 or args.concurrency > 64:
        raise UsageError("--concurrency must be between 1 and 64")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    options = options_from(args)
    settings = WriteSettings(canon=args.canon, billing_practitioner=args.billing_practitioner)
    out_dir: Path = args.out or Path(f"rpm-month-end-{options.month}")
    auth, _ = build_auth(args)
    check_read_scopes(auth, bool(args.group))
    with FhirClient(args.fhir_base, auth, timeout=(5.0, args.timeout), pool_size=args.concurrency) as client:
        refusal = None if args.dry_run else write_capability_problem(client, write_scope_problem(auth))
        patient_ids = population(
            client, group=args.group, patients=args.patient, options=options, canon=settings.canon
        )
        if not patient_ids:
            print("no patients to bill (empty Group, or no patient with an RPM Consent)", file=sys.stderr)
        progress = _ProgressBar(sys.stderr) if sys.stderr.isatty() and patient_ids else None
        result = run_month_end(
            client,
            patient_ids,
            options,
            settings,
            dry_run=args.dry_run,
            concurrency=args.concurrency,
            write_refusal=refusal,
            progress=progress,
        )
        if progress:
            progress.finish()
    files: dict[str, Path] = {}
    if not args.dry_run or args.out:
        files["report"] = write_report(result, out_dir)
        files.update(write_export(result, out_dir))
    _print(result, args.format, files, options, sys.stdout)
    return result.exit_code()


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _print(run: MonthEndRun, fmt: str, files: dict[str, Path], options: RunOptions, out: TextIO) -> None:
    if fmt == "json":
        report = run.report()
        report["files"] = {k: str(v) for k, v in files.items()}
        json.dump(report, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return
    print_run_table(table_rows(run), out)
    summary = run.summary()
    out.write("\n")
    out.write(
        f"{options.month}, policy {options.policy().label}, time zone {options.timezone}"
        + (" (dry run: nothing written)" if run.dry_run else "")
        + "\n"
    )
    out.write(
        f"Patients: {summary['patients']} ({summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['write_refused']} write refused)\n"
    )
    codes = ", ".join(f"{code} x{units}" for code, units in summary["codes"].items()) or "none"
    out.write(f"Codes (units): {codes}\n")
    verb = "would be written" if run.dry_run else "written"
    if run.dry_run:
        creates = sum(len(o.plan.creates) for o in run.outcomes if o.plan is not None)
        retires = sum(len(o.plan.retirements) for o in run.outcomes if o.plan is not None)
        out.write(f"Writes {verb}: {creates} created, {retires} retired\n")
    else:
        out.write(
            f"Writes: {summary['created']} created, {summary['retired']} retired, "
            f"{summary['unchanged']} patient(s) unchanged; {summary['write_requests']} write request(s)\n"
        )
    out.write(
        f"Requests per patient: {summary['read_requests_per_patient']} read, "
        f"{summary['write_requests_per_patient']} write; {summary['seconds']} s\n"
    )
    out.write(f"Skipped resources: {summary['skipped']}\n")
    if summary["manual_corrections"]:
        out.write(
            f"Manual corrections needed: {summary['manual_corrections']} (billed charges, see report)\n"
        )
    if run.dry_run:
        for outcome in run.outcomes:
            if outcome.plan is not None and (not outcome.plan.unchanged or outcome.plan.manual):
                out.write(f"\n{outcome.patient_id}:\n")
                for line in outcome.plan.describe():
                    out.write(f"  {line}\n")
    for outcome in run.failed:
        out.write(f"FAILED {outcome.patient_id}: {outcome.error}\n")
    if run.write_refusal:
        out.write(f"WRITE REFUSED: {run.write_refusal}\n")
    for outcome in run.refused:
        if not run.write_refusal and outcome.write is not None:
            out.write(f"WRITE REFUSED {outcome.patient_id}: {outcome.write.message}\n")
    if "ChargeItem" in files or "DocumentReference" in files:
        exported = ", ".join(str(files[t]) for t in ("ChargeItem", "DocumentReference") if t in files)
        out.write(f"The refused resources were exported (nothing lost): {exported}\n")
    for note in run.notes:
        out.write(f"Note: {note}\n")
    if "report" in files:
        out.write(f"Run report: {files['report']}\n")


class _ProgressBar:
    """A one-line progress bar on a terminal (stderr only, and only when it is a terminal)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self.lock:
            filled = self.width * done // total if total else self.width
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {done}/{total} patients")
            self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
