"""Terminal tables and the files a file-mode run writes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from billing.result import MonthResult
from fhir_mapping.canon import CANON
from fhir_mapping.issues import SkippedResource
from fhir_mapping.monthly_log import log_json, render_log_html
from fhir_mapping.outbound import WriteSettings, charge_items, monthly_document
from smart_app.pipeline import RunOptions

_COLUMNS = (
    ("patient", "Patient"),
    ("codes", "Codes"),
    ("status", "Status"),
    ("minutes", "Min"),
    ("interactive", "Live"),
    ("attempts", "Att"),
    ("data_days", "Days"),
    ("flags", "Flags"),
)


def print_table(
    rows: Iterable[Mapping[str, Any]], out: TextIO, columns: Sequence[tuple[str, str]] = _COLUMNS
) -> None:
    """A plain aligned table, one patient per line (ids only, never names); `columns` are (key, title)."""
    cells = [[_cell(row[key]) for key, _ in columns] for row in rows]
    headers = [title for _, title in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def file_id(kind: str, key: str) -> str:
    """Deterministic resource ids for file output, so the files can be loaded with PUT or $import and a
    re-run produces the same ids (the identifier, not the id, is what makes writes idempotent)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{CANON}/{kind}/{key}"))


def file_resources(
    result: MonthResult, settings: WriteSettings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The month's DocumentReference and ChargeItems with ids assigned, referencing each other by id."""
    document = monthly_document(result, settings)
    document["id"] = file_id("monthly-log", f"{result.patient_id}|{result.month}")
    charges = charge_items(result, settings, f"DocumentReference/{document['id']}")
    for charge, line in zip(charges, result.codes, strict=True):
        charge["id"] = file_id("charge-key", line.charge_key)
    return document, charges


class MonthOutputs:
    """The files of a file-mode run, written one patient at a time (a run never holds every patient's
    result): ChargeItem.ndjson, DocumentReference.ndjson, logs/<patient>-<month>.html and .json, and at
    `close` report.json."""

    def __init__(
        self,
        out_dir: Path,
        options: RunOptions,
        *,
        canon: str = CANON,
        billing_practitioner: str | None = None,
    ) -> None:
        self._dir = out_dir
        self._options = options
        self._settings = WriteSettings(canon=canon, billing_practitioner=billing_practitioner)
        self._logs = out_dir / "logs"
        self._logs.mkdir(parents=True, exist_ok=True)
        self._charges = (out_dir / "ChargeItem.ndjson").open("w", encoding="utf-8")
        self._documents = (out_dir / "DocumentReference.ndjson").open("w", encoding="utf-8")

    def add(self, result: MonthResult) -> None:
        document, charges = file_resources(result, self._settings)
        self._documents.write(json.dumps(document, separators=(",", ":")) + "\n")
        for charge in charges:
            self._charges.write(json.dumps(charge, separators=(",", ":")) + "\n")
        stem = _safe_name(f"{result.patient_id}-{result.month}")
        (self._logs / f"{stem}.html").write_text(render_log_html(result), encoding="utf-8")
        (self._logs / f"{stem}.json").write_text(
            json.dumps(log_json(result), indent=2) + "\n", encoding="utf-8"
        )

    def close(
        self, rows: Sequence[Mapping[str, Any]], skipped: Sequence[SkippedResource], policy_label: str | None
    ) -> None:
        """Finish the NDJSON files and write report.json (`rows`: every patient's `summary_row`)."""
        self._charges.close()
        self._documents.close()
        report = {
            "month": str(self._options.month),
            "asOf": self._options.as_of.isoformat(),
            "policy": policy_label or self._options.policy().label,
            "timezone": self._options.timezone,
            "patients": list(rows),
            "skipped": [
                {
                    "resourceType": s.resource_type,
                    "id": s.resource_id,
                    "patient": s.patient_id,
                    "problem": s.problem,
                }
                for s in skipped
            ],
        }
        (self._dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _safe_name(text: str) -> str:
    """A file name from ids read from the input (never trust them as paths)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).lstrip(".") or "patient"
