"""Month-end for a population against a live FHIR server: read, compute, write back, report.

Each patient runs on its own (a ThreadPoolExecutor bounded by `concurrency`, one shared `FhirClient` whose
connection pool has as many connections): `reads.fetch_patient_month`, the engine (`pipeline.evaluate`),
`writeback.plan_month_writes` and `writeback.apply_plan`. A patient that fails (an error from the server, a
bug) is reported with the reason while the others complete; nothing about one patient stops the run.

Exit code (one per run, most serious first): AUTH_ERROR or SERVER_ERROR when every patient failed for that
reason; PATIENTS_FAILED when some failed; WRITE_REFUSED when the server would not take the writes (the
resources are in the export files); SKIPPED_RESOURCES when malformed resources were skipped; else OK.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from billing.result import MonthResult
from fhir_mapping.issues import SkippedResource
from fhir_mapping.outbound import WriteSettings
from smart_app.errors import ExitCode, RpmBillingError
from smart_app.fhir_client import FhirClient
from smart_app.http import FhirError, ServerError, TemporaryNetworkError
from smart_app.output import print_table
from smart_app.pipeline import RunOptions, evaluate, format_codes
from smart_app.reads import fetch_patient_month
from smart_app.writeback import WritePlan, WriteResult, apply_plan, plan_month_writes

log = logging.getLogger(__name__)

WRITTEN_TYPES = ("DocumentReference", "ChargeItem")
REPORT_FILE = "report.json"
EXPORT_DIR = "export"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PatientOutcome:
    """One patient's month-end: what was read, decided and written, or why it failed."""

    patient_id: str
    result: MonthResult | None = None
    plan: WritePlan | None = None
    write: WriteResult | None = None
    skipped: tuple[SkippedResource, ...] = ()
    read_requests: int = 0
    notes: tuple[str, ...] = ()
    error: str | None = None  # why the patient failed (reading, computing or writing)
    error_kind: str | None = None  # auth | server | other
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def refused(self) -> bool:
        return self.write is not None and self.write.status == "refused"

    @property
    def write_requests(self) -> int:
        return self.write.requests if self.write is not None else 0


@dataclass(frozen=True)
class MonthEndRun:
    """The whole run: every patient's outcome and the facts the report needs."""

    options: RunOptions
    outcomes: tuple[PatientOutcome, ...]
    dry_run: bool
    write_refusal: str | None = None  # the server cannot take our writes at all (capability or scopes)
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> list[PatientOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def refused(self) -> list[PatientOutcome]:
        return [o for o in self.outcomes if o.refused]

    def exit_code(self) -> ExitCode:
        failed = self.failed
        if failed and len(failed) == len(self.outcomes):
            kinds = {o.error_kind for o in failed}
            if kinds == {"auth"}:
                return ExitCode.AUTH_ERROR
            if kinds == {"server"}:
                return ExitCode.SERVER_ERROR
        if failed:
            return ExitCode.PATIENTS_FAILED
        if self.refused:
            return ExitCode.WRITE_REFUSED
        if any(o.skipped for o in self.outcomes):
            return ExitCode.SKIPPED_RESOURCES
        return ExitCode.OK

    def codes_by_cpt(self) -> dict[str, int]:
        """Units per CPT code over the run's patients (billable and planned alike)."""
        units: Counter[str] = Counter()
        for outcome in self.outcomes:
            if outcome.result is not None:
                units.update(outcome.result.code_units())
        return dict(sorted(units.items()))

    def summary(self) -> dict[str, Any]:
        writes = [o.write for o in self.outcomes if o.write is not None]
        processed = [o for o in self.outcomes if not o.failed]
        reads = sum(o.read_requests for o in processed)
        write_requests = sum(o.write_requests for o in processed)
        return {
            "patients": len(self.outcomes),
            "ok": len(processed) - len(self.refused),
            "failed": len(self.failed),
            "write_refused": len(self.refused),
            "codes": self.codes_by_cpt(),
            "created": sum(len(w.created) for w in writes),
            "retired": sum(len(w.retired) for w in writes),
            "unchanged": sum(1 for w in writes if w.status == "unchanged"),
            "manual_corrections": sum(len(o.plan.manual) for o in self.outcomes if o.plan is not None),
            "skipped": sum(len(o.skipped) for o in self.outcomes),
            "read_requests": reads,
            "write_requests": write_requests,
            "read_requests_per_patient": round(reads / len(processed), 2) if processed else 0,
            "write_requests_per_patient": round(write_requests / len(processed), 2) if processed else 0,
            "seconds": round(self.seconds, 3),
        }

    def report(self) -> dict[str, Any]:
        """The run report (JSON): ids, codes, writes and reasons only; no names, no clinical text."""
        policy = self.options.policy()
        return {
            "month": str(self.options.month),
            "as_of": self.options.as_of.isoformat(),
            "policy": policy.label,
            "time_zone": self.options.timezone,
            "dry_run": self.dry_run,
            "write_refusal": self.write_refusal,
            "notes": list(self.notes),
            "exit_code": int(self.exit_code()),
            "summary": self.summary(),
            "patients": [_patient_json(o) for o in self.outcomes],
        }


def write_capability_problem(client: FhirClient, missing_scopes: str | None = None) -> str | None:
    """Why the server cannot take our writes (CapabilityStatement, or scopes not granted), or None."""
    lacking = [
        f"{type_} {interaction}"
        for type_ in WRITTEN_TYPES
        for interaction in ("create", "update")
        if not client.supports(type_, interaction)
    ]
    if lacking:
        return "the server's CapabilityStatement does not offer " + ", ".join(lacking)
    if missing_scopes:
        return f"the server did not grant {missing_scopes}"
    return None


def process_patient(
    client: FhirClient,
    patient_id: str,
    options: RunOptions,
    settings: WriteSettings,
    *,
    dry_run: bool = False,
    write_refusal: str | None = None,
) -> PatientOutcome:
    """Read, compute, plan and write one patient's month. Never raises: a failure is the outcome."""
    started = time.monotonic()
    stage = "reading"
    fetch = None
    result = None
    plan = None
    try:
        fetch = fetch_patient_month(client, patient_id, options, canon=settings.canon)
        stage = "computing"
        result = evaluate(fetch.records, options)
        stage = "planning the writes"
        plan = plan_month_writes(result, fetch, settings)
        stage = "writing"
        if write_refusal and not dry_run and not plan.unchanged:
            write = WriteResult(
                patient_id, "refused", message=write_refusal, unwritten=tuple(plan.export_resources())
            )
        else:
            write = apply_plan(client, plan, dry_run=dry_run)
    except Exception as exc:  # one patient never stops the run
        kind = _error_kind(exc)
        if kind == "other" and not isinstance(exc, RpmBillingError):
            log.debug("patient %s failed while %s:\n%s", patient_id, stage, traceback.format_exc())
            text = f"internal error while {stage}: {type(exc).__name__}: {exc}"
        else:
            text = f"{stage}: {exc}"
        return PatientOutcome(
            patient_id,
            result=result,
            plan=plan,
            skipped=tuple(fetch.skipped) if fetch else (),
            read_requests=fetch.requests if fetch else 0,
            notes=fetch.notes if fetch else (),
            error=text,
            error_kind=kind,
            seconds=time.monotonic() - started,
        )
    error = None if write.ok or write.status == "refused" else f"writing: {write.message}"
    return PatientOutcome(
        patient_id,
        result=result,
        plan=plan,
        write=write,
        skipped=tuple(fetch.skipped),
        read_requests=fetch.requests,
        notes=fetch.notes,
        error=error,
        error_kind=_error_kind(write.error) if error and write.error else ("other" if error else None),
        seconds=time.monotonic() - started,
    )


def run_month_end(
    client: FhirClient,
    patient_ids: Sequence[str],
    options: RunOptions,
    settings: WriteSettings,
    *,
    dry_run: bool = False,
    concurrency: int = 8,
    write_refusal: str | None = None,
    progress: Progress | None = None,
) -> MonthEndRun:
    """Month-end for `patient_ids`, `concurrency` patients at a time."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    started = time.monotonic()
    outcomes: dict[str, PatientOutcome] = {}
    total = len(patient_ids)
    if progress:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="month-end") as pool:
        futures = {
            pool.submit(
                process_patient,
                client,
                pid,
                options,
                settings,
                dry_run=dry_run,
                write_refusal=write_refusal,
            ): pid
            for pid in patient_ids
        }
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[outcome.patient_id] = outcome
            if outcome.failed:
                log.warning("patient %s failed: %s", outcome.patient_id, outcome.error)
            if progress:
                progress(len(outcomes), total)
    notes = tuple(dict.fromkeys(n for o in outcomes.values() for n in o.notes))
    return MonthEndRun(
        options=options,
        outcomes=tuple(outcomes[pid] for pid in patient_ids),
        dry_run=dry_run,
        write_refusal=write_refusal,
        seconds=time.monotonic() - started,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def write_report(run: MonthEndRun, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    path.write_text(json.dumps(run.report(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_export(run: MonthEndRun, out_dir: Path) -> dict[str, Path]:
    """The resources the server refused, as NDJSON per type under `out_dir/export` (nothing silently lost).

    Returns the files written (none when nothing was refused); stale export files of an earlier run are
    removed so the folder always shows this run's refusals.
    """
    folder = out_dir / EXPORT_DIR
    by_type: dict[str, list[dict[str, Any]]] = {}
    for outcome in run.refused:
        assert outcome.write is not None
        for resource in outcome.write.unwritten:
            by_type.setdefault(str(resource.get("resourceType")), []).append(resource)
    for type_ in WRITTEN_TYPES:
        stale = folder / f"{type_}.ndjson"
        if type_ not in by_type and stale.exists():
            stale.unlink()
    written: dict[str, Path] = {}
    if by_type:
        folder.mkdir(parents=True, exist_ok=True)
    for type_, resources in by_type.items():
        path = folder / f"{type_}.ndjson"
        with path.open("w", encoding="utf-8") as handle:
            for resource in resources:
                handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
        written[type_] = path
    return written


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _error_kind(exc: BaseException | None) -> str:
    if isinstance(exc, RpmBillingError) and exc.exit_code is ExitCode.AUTH_ERROR:
        return "auth"
    if isinstance(exc, ServerError | TemporaryNetworkError):
        return "server"
    if isinstance(exc, FhirError) and exc.status is None:
        return "server"
    return "other"


def _patient_json(outcome: PatientOutcome) -> dict[str, Any]:
    result, plan, write = outcome.result, outcome.plan, outcome.write
    data: dict[str, Any] = {"patient": outcome.patient_id}
    if outcome.failed:
        data["status"] = "failed"
    elif outcome.refused:
        data["status"] = "write-refused"
    else:
        data["status"] = write.status if write is not None else "?"
    if outcome.error:
        data["error"] = outcome.error
    if result is not None:
        data["codes"] = [
            {
                "code": line.code,
                "units": line.units,
                "status": line.status.value,
                "charge_key": line.charge_key,
                "reason": line.reason,
            }
            for line in result.codes
        ]
        data["preview"] = result.preview
        data["minutes"] = result.minutes
        data["data_days"] = result.data_days_in_month
        data["flags"] = [f.code for f in result.flags]
    if plan is not None:
        data["planned_writes"] = plan.describe()
        data["manual_corrections"] = [
            {"charge": f"ChargeItem/{m.charge_id}", "code": m.code, "message": m.message} for m in plan.manual
        ]
    if write is not None:
        data["writes"] = {
            "status": write.status,
            "created": list(write.created),
            "retired": list(write.retired),
            "requests": write.requests,
        }
        if write.message and write.status != "dry-run":
            data["writes"]["message"] = write.message
    data["read_requests"] = outcome.read_requests
    data["skipped"] = [{"resource": s.reference, "problem": s.problem} for s in outcome.skipped]
    if outcome.notes:
        data["notes"] = list(outcome.notes)
    data["seconds"] = round(outcome.seconds, 3)
    return data


def table_rows(run: MonthEndRun) -> list[dict[str, Any]]:
    """One line per patient for the terminal table (ids only)."""
    rows = []
    for outcome in run.outcomes:
        result, write = outcome.result, outcome.write
        rows.append(
            {
                "patient": outcome.patient_id,
                "codes": format_codes(result) if result is not None else "-",
                "period": ("preview" if result.preview else "final") if result is not None else "-",
                "minutes": result.minutes if result is not None else "-",
                "days": result.data_days_in_month if result is not None else "-",
                "writes": _writes_cell(outcome, write),
                "skipped": len(outcome.skipped),
                "flags": len(result.flags) if result is not None else 0,
            }
        )
    return rows


def _writes_cell(outcome: PatientOutcome, write: WriteResult | None) -> str:
    if outcome.failed:
        return "FAILED"
    if write is None:
        return "-"
    if write.status == "refused":
        return "REFUSED (exported)"
    if write.status == "unchanged":
        return "none (unchanged)"
    plan = outcome.plan
    if write.status == "dry-run" and plan is not None:
        return f"would: +{len(plan.creates)} -{len(plan.retirements)}"
    return f"+{len(write.created)} -{len(write.retired)}"


RUN_TABLE_COLUMNS = (
    ("patient", "Patient"),
    ("codes", "Codes"),
    ("period", "Period"),
    ("minutes", "Min"),
    ("days", "Days"),
    ("writes", "Writes"),
    ("skipped", "Skipped"),
    ("flags", "Flags"),
)


def print_run_table(rows: Iterable[Mapping[str, Any]], out: Any) -> None:
    print_table(rows, out, RUN_TABLE_COLUMNS)
