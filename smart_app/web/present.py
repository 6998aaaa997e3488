"""Pure presentation of an engine result for the month view: timeline rows, consent status, code tables.

Text that came from the EHR (displays, notes, reasons that quote it) is passed through as plain strings; the
templates escape it (Jinja autoescape; no `|safe` anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing.minutes import activity_seconds
from billing.model import ActivityKind, ConsentRecord, Party
from billing.result import ActivityOutcome, CodeLine, MonthResult, NotBilled
from fhir_mapping.monthly_log import ACTIVITY_LABELS, CONTENT_LABELS, CPT_DESCRIPTIONS, MEDIUM_LABELS


@dataclass(frozen=True)
class TimelineRow:
    start: datetime | None
    reference: str  # "Communication/c1"
    what: str  # "telephone", "time entry: data review"
    seconds: int | None  # own duration
    added_seconds: int
    cumulative_minutes: int
    participants: str
    content: str
    activity_class: str  # "interactive" | "non-interactive"
    reason: str
    minutes_reason: str
    counts: bool
    attempt: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ConsentRow:
    reference: str
    status: str
    start: datetime | None
    end: datetime | None
    method: str
    in_force: bool
    note: str


@dataclass(frozen=True)
class CodeRow:
    code: str
    description: str
    units: int
    status: str
    period_first: str
    period_last: str
    reason: str


def party_text(party: Party) -> str:
    name = party.display or party.reference or "(unidentified)"
    return f"{name} ({party.kind.value})"


def what(outcome: ActivityOutcome) -> str:
    activity = outcome.activity
    if activity.kind is ActivityKind.TIME_ENTRY:
        code = activity.activity_code
        return f"time entry: {ACTIVITY_LABELS.get(code, code)}" if code else "time entry"
    medium = ", ".join(MEDIUM_LABELS.get(m, m) for m in activity.medium) or "communication"
    if outcome.attempt:
        return f"{medium} (attempt)"
    return medium


def timeline(result: MonthResult) -> tuple[TimelineRow, ...]:
    rows = []
    for outcome in result.activities:
        activity = outcome.activity
        parties = ([activity.sender] if activity.sender else []) + list(activity.recipients)
        if activity.kind is ActivityKind.TIME_ENTRY:
            parties = list(activity.performers)
        rows.append(
            TimelineRow(
                start=activity.start,
                reference=activity.reference,
                what=what(outcome),
                seconds=activity_seconds(activity),
                added_seconds=outcome.added_seconds,
                cumulative_minutes=outcome.cumulative_minutes,
                participants=", ".join(party_text(p) for p in parties) or "-",
                content=", ".join(CONTENT_LABELS.get(c, c) for c in activity.content) or "-",
                activity_class=outcome.activity_class.value,
                reason=outcome.reason,
                minutes_reason=outcome.minutes_reason,
                counts=outcome.added_seconds > 0,
                attempt=outcome.attempt,
                notes=activity.notes,
            )
        )
    return tuple(rows)


def consent_rows(result: MonthResult, now: datetime) -> tuple[ConsentRow, ...]:
    rows = []
    for consent in result.consents:
        rows.append(
            ConsentRow(
                reference=f"Consent/{consent.id}",
                status=consent.status,
                start=consent.start,
                end=consent.end,
                method=consent.method,
                in_force=_in_force(consent, now),
                note="inactive without an end date: not counted" if consent.revoked_without_end else "",
            )
        )
    return tuple(rows)


def _in_force(consent: ConsentRecord, now: datetime) -> bool:
    if consent.revoked_without_end or consent.start is None:
        return False
    return consent.start <= now and (consent.end is None or now < consent.end)


def consent_summary(result: MonthResult, now: datetime) -> str:
    """One line: whether RPM consent is in force now, and since when."""
    current = [c for c in result.consents if _in_force(c, now)]
    if current:
        first = min(current, key=lambda c: c.start or now)
        return f"RPM consent in force ({first.method})"
    if result.consents:
        return "No RPM consent in force now"
    return "No RPM consent on record"


def code_rows(lines: tuple[CodeLine, ...]) -> tuple[CodeRow, ...]:
    return tuple(
        CodeRow(
            code=line.code,
            description=CPT_DESCRIPTIONS.get(line.code, ""),
            units=line.units,
            status=line.status.value,
            period_first=line.period.first_day.isoformat(),
            period_last=line.period.last_day.isoformat(),
            reason=line.reason,
        )
        for line in lines
    )


def not_billed_rows(items: tuple[NotBilled, ...]) -> tuple[NotBilled, ...]:
    """Codes not billed, without repeating one code's identical reason."""
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        key = (item.code, item.reason)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)
