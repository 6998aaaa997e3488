"""`rpm-billing synth`: write a synthetic RPM population in the Bulk Data export layout (NDJSON per type)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fhir_mapping.canon import CANON
from smart_app import synth
from smart_app.errors import ExitCode, UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic population (one NDJSON file per resource type)",
        description=(
            "Write a deterministic synthetic RPM population for one month as FHIR R4 NDJSON, one file per "
            "resource type (the Bulk Data export layout). The same arguments always give identical files."
        ),
    )
    parser.add_argument(
        "--patients", type=int, default=100, metavar="N", help="number of patients (default 100)"
    )
    parser.add_argument(
        "--month", required=True, metavar="YYYY-MM", help="the billing month the data is built for"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    parser.add_argument(
        "--timezone",
        default=synth.DEFAULT_TIMEZONE,
        metavar="TZ",
        help=f"practice time zone, IANA name (default {synth.DEFAULT_TIMEZONE})",
    )
    parser.add_argument("--canon", default=CANON, metavar="URL", help=f"canonical base (default {CANON})")
    parser.add_argument(
        "--force", action="store_true", help="replace NDJSON files already in the output directory"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> ExitCode:
    try:
        resources = synth.generate(args.patients, args.month, args.seed, args.timezone, args.canon)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    existing = sorted(out.glob("*.ndjson")) if out.is_dir() else []
    if existing and not args.force:
        names = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise UsageError(f"{out} already holds NDJSON files ({names}); use --force to replace them")
    try:
        for path in existing:  # a type absent from this population must not survive from an earlier one
            if path.stem in synth.RESOURCE_TYPES:
                path.unlink()
        counts = synth.write_bulk(resources, out)
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror or exc}") from None
    summary = ", ".join(f"{rtype} {n}" for rtype, n in counts.items())
    print(
        f"synth: wrote {sum(counts.values())} resources for {args.patients} patients "
        f"({args.month}, seed {args.seed}, {args.timezone}) to {out}: {summary}"
    )
    return ExitCode.OK
