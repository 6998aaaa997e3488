"""`rpm-billing demo`: the main job on the embedded default — no server, no network.

Generates a synthetic population (`synth`), then bills the month from those files (`compute`) and writes
the ChargeItems, DocumentReferences and the monthly logs, so a new user sees the whole pipeline at once.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from billing.periods import YearMonth
from smart_app.commands import compute
from smart_app.errors import ExitCode
from smart_app.synth import PHYSICIAN, RESOURCE_TYPES, generate, write_bulk


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="generate synthetic patients and bill a month from them (no server needed)",
        description=__doc__,
    )
    parser.add_argument("--patients", type=int, default=25, help="how many synthetic patients (default 25)")
    parser.add_argument("--month", help="month to bill, YYYY-MM (default: last month, so it is closed)")
    parser.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default ./demo-out)"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> ExitCode:
    month = args.month or str(YearMonth.of(date.today()).previous())
    input_dir: Path = args.out / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    for kind in RESOURCE_TYPES:  # a smaller population must not inherit files of an earlier, larger run
        (input_dir / f"{kind}.ndjson").unlink(missing_ok=True)
    counts = write_bulk(generate(args.patients, month, args.seed), input_dir)
    total = sum(counts.values())
    print(f"synthetic input: {args.patients} patients, {total} resources in {input_dir}")
    compute_args = argparse.Namespace(
        input=input_dir,
        month=month,
        policy=None,
        timezone=None,
        setting=[],
        as_of=None,
        out=args.out / "output",
        format=args.format,
        billing_practitioner=f"Practitioner/{PHYSICIAN}",
        canon=compute.CANON,
    )
    code = compute.run(compute_args)
    if args.format == "table":
        print(f"open {args.out / 'output' / 'logs'} in a browser to read each patient's monthly log")
    return code
