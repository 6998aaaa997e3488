"""`rpm-billing compute`: the month's code set from FHIR files, no server needed.

Reads a Bundle, an NDJSON file or a Bulk Data export directory holding any number of patients, prints a
per-patient table (or JSON) and, with `--out`, writes the ChargeItems, DocumentReferences and monthly logs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from billing.result import MonthResult
from fhir_mapping.canon import CANON
from fhir_mapping.inbound import InboundCollector, PatientRecordsMap
from fhir_mapping.issues import SkippedResource
from smart_app.errors import ExitCode
from smart_app.inputs import BadLine, iter_input
from smart_app.output import MonthOutputs, print_table
from smart_app.pipeline import RunOptions, evaluate, parse_as_of, parse_month, parse_settings, summary_row

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compute",
        help="compute a month's RPM codes from FHIR files (Bundle, NDJSON or Bulk export directory)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--input", required=True, type=Path, help="Bundle JSON, NDJSON file or directory")
    parser.add_argument("--month", required=True, help="calendar month to bill, YYYY-MM")
    add_policy_arguments(parser)
    parser.add_argument(
        "--out", type=Path, help="write ChargeItem.ndjson, DocumentReference.ndjson and logs here"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="stdout format")
    parser.add_argument(
        "--billing-practitioner", help="ChargeItem.performer reference, e.g. Practitioner/dr-1"
    )
    parser.add_argument(
        "--canon", default=CANON, help=f"canonical base of the project's URLs (default {CANON})"
    )
    parser.set_defaults(func=run)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", help="billing policy: cms-2026, cms-2025 or interactive-only (default: the month picks)"
    )
    parser.add_argument("--timezone", help="practice time zone, IANA name (default America/New_York)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy override, repeatable: max_99458_units, interactive_media, ai_contacts, live_chat, "
        "chat_window (minutes), setup_min_days, rebill_99453_new_episode",
    )
    parser.add_argument(
        "--as-of", help="the run's moment (ISO 8601; default now): periods not ended by then are previews"
    )


EXIT_CODES_HELP = """exit codes:
  0  finished
  2  bad arguments
  3  unreadable input
  4  finished, but some resources were malformed and skipped (listed in the report)"""


def options_from(args: argparse.Namespace) -> RunOptions:
    month = parse_month(args.month)
    settings: dict[str, Any] = parse_settings(args.setting)
    if args.timezone:
        settings["timezone"] = args.timezone
    provisional = RunOptions(
        month=month, as_of=parse_as_of(None, "UTC"), policy_name=args.policy, settings=settings
    )
    timezone = provisional.timezone  # validates the policy name and settings
    return RunOptions(
        month=month, as_of=parse_as_of(args.as_of, timezone), policy_name=args.policy, settings=settings
    )


@contextmanager
def records_kept_to_the_end() -> Iterator[Callable[[], None]]:
    """Read the month without Python's cyclic garbage collector, then put what was read out of its sight.

    Reading builds the month's records: hundreds of thousands of small objects that live until the run ends
    and hold no reference cycles (what is dropped is freed at once by reference counting). The collector
    would walk all of them again and again as they pile up (about a tenth of a run's CPU time) and find
    nothing. So it is paused until the caller says reading is done; then `gc.freeze()` moves everything
    alive to the permanent generation, so that collections during evaluation look only at what each
    patient's evaluation allocates. On exit the collector is as it was (`gc.unfreeze()`).
    """
    enabled = gc.isenabled()

    def reading_done() -> None:
        gc.freeze()
        if enabled:
            gc.enable()

    gc.disable()
    try:
        yield reading_done
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def run(args: argparse.Namespace) -> ExitCode:
    options = options_from(args)
    with records_kept_to_the_end() as reading_done:
        patients, skipped = read_month(args.input, options.timezone, args.canon)
        reading_done()
        return _bill(patients, skipped, options, args)


def read_month(path: Path, timezone: str, canon: str) -> tuple[PatientRecordsMap, list[SkippedResource]]:
    """Every patient's records in `path`, and what was skipped (lines that are not JSON first)."""
    collector = InboundCollector(timezone=timezone, canon=canon)
    bad_lines: list[BadLine] = []
    for item in iter_input(path, take_line=collector.add_line):
        if isinstance(item, BadLine):
            bad_lines.append(item)
        else:
            collector.add(item)
    patients, skipped = collector.finish()
    lines = [SkippedResource("?", "", f"{b.source} line {b.line}: {b.problem}") for b in bad_lines]
    return patients, lines + skipped


def _bill(
    patients: PatientRecordsMap,
    skipped: list[SkippedResource],
    options: RunOptions,
    args: argparse.Namespace,
) -> ExitCode:
    """One patient at a time: evaluate, write its files, keep only its table row."""
    outputs = None
    if args.out:
        outputs = MonthOutputs(
            args.out, options, canon=args.canon, billing_practitioner=args.billing_practitioner
        )
    rows: list[dict[str, Any]] = []
    first: MonthResult | None = None
    for pid in sorted(patients):
        result = evaluate(patients[pid], options)
        if first is None:
            first = result
        if outputs is not None:
            outputs.add(result)
        rows.append(summary_row(result))
    if outputs is not None:
        outputs.close(rows, skipped, first.policy.label if first else None)
    _report(rows, first, skipped, args.format, args.out)
    return ExitCode.SKIPPED_RESOURCES if skipped else ExitCode.OK


def _report(
    rows: Sequence[dict[str, Any]],
    first: MonthResult | None,
    skipped: Sequence[SkippedResource],
    fmt: str,
    out: Path | None,
) -> None:
    if fmt == "json":
        payload = {
            "patients": rows,
            "skipped": [_skipped_json(s) for s in skipped],
            "policy": first.policy.label if first else None,
        }
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print_table(rows, sys.stdout)
    if first:
        print(
            f"\n{len(rows)} patient(s), {first.month}, policy {first.policy.label}, "
            f"time zone {first.timezone}"
        )
    if skipped:
        print(f"{len(skipped)} resource(s) skipped as malformed:", file=sys.stderr)
        for item in skipped[:20]:
            print(f"  {_skipped_text(item)}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more (see report.json)", file=sys.stderr)
    if out:
        print(f"wrote ChargeItem.ndjson, DocumentReference.ndjson, logs/ and report.json to {out}")


def _skipped_json(item: SkippedResource) -> dict[str, Any]:
    return {
        "resourceType": item.resource_type,
        "id": item.resource_id,
        "patient": item.patient_id,
        "problem": item.problem,
    }


def _skipped_text(item: SkippedResource) -> str:
    ident = f"{item.resource_type}/{item.resource_id}" if item.resource_id else item.resource_type
    return f"{ident}: {item.problem}"
