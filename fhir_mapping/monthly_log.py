"""The monthly log: the audit document that shows why each code was or was not billed.

Two renderings of one `MonthResult`, both deterministic (same result, same bytes):

- `render_log_html`: a complete, printable, self-contained HTML page for billing staff and auditors (inline
  CSS with print styles; no scripts, no external resources; a Content-Security-Policy forbids both).
- `log_json`: the same content as a machine-readable dict (schema name and version, stable key order, ISO
  datetimes with their offsets in the practice time zone).

Everything that came from the EHR (ids, names, displays, notes, reasons) is untrusted: the HTML escapes every
value with `html.escape` at the single point where text enters the page (`_e`).

Conventions shared with the FHIR resources (see `outbound`): a period of whole local days is written with
`start` at local midnight of its first day and `end` at the last second of its last day, each with the offset
in force at that moment (so a March period starts at -05:00 and ends at -04:00 in America/New_York).
Consent and episode intervals are instants instead: `from` inclusive, `until` exclusive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from billing.model import Activity, ActivityKind, ConsentRecord, DeviceRecord, Party
from billing.periods import Period, zone
from billing.result import (
    ActivityOutcome,
    CodeLine,
    Flag,
    MonthResult,
    NotBilled,
    SupplyWindow,
)

SCHEMA = "rpm-billing/monthly-log"
SCHEMA_VERSION = "1.0"
GENERATOR = "rpm-billing"

# Short descriptions in our own words (the CPT descriptors themselves are AMA copyright).
CPT_DESCRIPTIONS = {
    "99453": "RPM initial set-up and patient education on the device",
    "99454": "RPM device supply with data transmission, 16-30 days in 30 days",
    "99445": "RPM device supply with data transmission, 2-15 days in 30 days",
    "99470": "RPM treatment management, first 10 minutes in a calendar month",
    "99457": "RPM treatment management, first 20 minutes in a calendar month",
    "99458": "RPM treatment management, each additional 20 minutes",
}

# v3-ParticipationMode codes as a billing person reads them; unknown codes are shown as they are.
MEDIUM_LABELS = {
    "PHONE": "telephone",
    "VIDEOCONF": "video call",
    "FACE": "in person",
    "ONLINEWRIT": "online chat",
    "EMAILWRIT": "email",
    "WRITTEN": "written",
    "FAXWRIT": "fax",
    "MAILWRIT": "letter",
    "HANDWRIT": "handwritten",
    "TYPEWRIT": "typewritten",
    "ELECTRONIC": "electronic",
    "PHYSICAL": "physical presence",
    "REMOTE": "remote",
    "VERBAL": "verbal",
    "DICTATE": "dictated",
}
ACTIVITY_LABELS = {
    "data-review": "data review",
    "care-plan": "care-plan work",
    "care-coordination": "care coordination",
    "documentation": "documentation",
}
CONTENT_LABELS = {
    "physiologic-data": "physiologic data",
    "symptoms": "symptoms",
    "medication-adherence": "medication adherence",
    "care-plan": "care plan",
}


# --- shared formatting (also used by `outbound` for the FHIR resources) ---------------------------------


def iso_instant(moment: datetime, tz: ZoneInfo) -> str:
    """An aware datetime in the practice zone, to the second, with its offset (FHIR dateTime/instant)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime {moment.isoformat()} has no time zone; outbound times must be aware")
    return moment.astimezone(tz).replace(microsecond=0).isoformat()


def last_second(period: Period, tz: ZoneInfo) -> datetime:
    """The last second inside a half-open period, in the practice zone (its own offset: DST-safe)."""
    return (period.end.astimezone(UTC) - timedelta(seconds=1)).astimezone(tz)


def fhir_period(period: Period, tz: ZoneInfo) -> dict[str, str]:
    """A period of whole local days as FHIR writes it: local midnight .. last second of the last day."""
    return {"start": iso_instant(period.start, tz), "end": iso_instant(last_second(period, tz), tz)}


def _day_period(period: Period, tz: ZoneInfo) -> dict[str, str]:
    first = period.start.astimezone(tz).date()
    last = last_second(period, tz).date()
    return {"first_day": first.isoformat(), "last_day": last.isoformat(), **fhir_period(period, tz)}


def _opt_iso(moment: datetime | None, tz: ZoneInfo) -> str | None:
    return None if moment is None else iso_instant(moment, tz)


# --- facts derived from the result -------------------------------------------------------------------------


def _duration_seconds(activity: Activity) -> int | None:
    """The activity's own duration (before overlap merging), or None when unknown."""
    if activity.start is not None and activity.end is not None:
        return max(0, int((activity.end - activity.start).total_seconds()))
    return activity.duration_seconds


def _method_codes(activity: Activity) -> tuple[str, ...]:
    if activity.kind is ActivityKind.TIME_ENTRY:
        return (activity.activity_code,) if activity.activity_code else ()
    return activity.medium


def _method_text(activity: Activity) -> str:
    if activity.kind is ActivityKind.TIME_ENTRY:
        code = activity.activity_code
        return f"time entry: {ACTIVITY_LABELS.get(code, code)}" if code else "time entry"
    if not activity.medium:
        return "communication (medium not recorded)"
    return ", ".join(MEDIUM_LABELS.get(m, m) for m in activity.medium)


def _participants(activity: Activity) -> list[tuple[str, Party]]:
    roles: list[tuple[str, Party]] = []
    if activity.sender is not None:
        roles.append(("sender", activity.sender))
    roles.extend(("recipient", p) for p in activity.recipients)
    return roles


def _performers(activity: Activity) -> tuple[Party, ...]:
    """Who did the work: a time entry's performers, else the staff (or AI system) side of a communication."""
    if activity.performers:
        return activity.performers
    parties = [p for _, p in _participants(activity)]
    staff = tuple(p for p in parties if p.kind.is_staff)
    if staff:
        return staff
    return tuple(p for p in parties if p.kind.value == "ai-system")


def _party_text(party: Party) -> str:
    name = party.display or party.reference or "(unidentified)"
    if party.display and party.reference:
        return f"{name} ({party.kind.value}, {party.reference})"
    return f"{name} ({party.kind.value})"


def _lines_for(period: Period, codes: Iterable[CodeLine]) -> list[CodeLine]:
    return [line for line in codes if line.period == period]


def _not_billed_for(period: Period, items: Iterable[NotBilled]) -> list[NotBilled]:
    return [item for item in items if item.period == period]


def _fmt_duration(seconds: int | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs} s" if secs else f"{minutes} min"


def _local(moment: datetime | None, tz: ZoneInfo) -> datetime | None:
    return None if moment is None else moment.astimezone(tz)


# --- JSON --------------------------------------------------------------------------------------------------


def _party_json(party: Party, role: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role} if role else {}
    out.update({"kind": party.kind.value, "reference": party.reference or None, "display": party.display})
    return out


def _consent_json(consent: ConsentRecord, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": consent.id,
        "reference": f"Consent/{consent.id}",
        "status": consent.status,
        "method": consent.method,
        "from": _opt_iso(consent.start, tz),
        "until": _opt_iso(consent.end, tz),
        "recorded": _opt_iso(consent.recorded, tz),
        "revoked_without_end": consent.revoked_without_end,
        "naive_time": consent.naive_time,
    }


def _device_json(device: DeviceRecord) -> dict[str, Any]:
    return {
        "id": device.id,
        "reference": f"Device/{device.id}",
        "status": device.status,
        "type_code": device.type_code,
        "type_display": device.type_display,
        "display": device.display,
    }


def _window_json(window: SupplyWindow, result: MonthResult, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "episode": window.episode_index,
        "index": window.index,
        **_day_period(window.period, tz),
        "belongs_to": str(window.belongs_to),
        "closed": window.closed,
        "data_day_count": window.day_count,
        "data_days": [d.isoformat() for d in window.data_days],
        "device_types": list(window.device_types),
        "codes": [
            {"code": line.code, "units": line.units, "status": line.status.value}
            for line in _lines_for(window.period, result.codes)
        ],
        "not_billed": [
            {"code": item.code, "reason": item.reason}
            for item in _not_billed_for(window.period, result.not_billed)
        ],
        "readings": list(window.reading_refs),
    }


def _activity_json(outcome: ActivityOutcome, tz: ZoneInfo) -> dict[str, Any]:
    activity = outcome.activity
    start = _local(activity.start, tz)
    return {
        "reference": activity.reference,
        "kind": activity.kind.value,
        "status": activity.status,
        "date": start.date().isoformat() if start else None,
        "time": start.strftime("%H:%M:%S") if start else None,
        "start": _opt_iso(activity.start, tz),
        "end": _opt_iso(activity.end, tz),
        "method": _method_text(activity),
        "method_codes": list(_method_codes(activity)),
        "categories": list(activity.categories),
        "duration_seconds": _duration_seconds(activity),
        "duration_source": activity.duration_source,
        "participants": [_party_json(p, role) for role, p in _participants(activity)],
        "performers": [_party_json(p) for p in _performers(activity)],
        "content": list(activity.content),
        "class": outcome.activity_class.value,
        "reason": outcome.reason,
        "counts_minutes": outcome.counts_minutes,
        "minutes_reason": outcome.minutes_reason,
        "added_seconds": outcome.added_seconds,
        "cumulative_seconds": outcome.cumulative_seconds,
        "cumulative_minutes": outcome.cumulative_minutes,
        "attempt": outcome.attempt,
        "in_consent": outcome.in_consent,
        "status_reason": activity.status_reason,
        "program": activity.program,
        "naive_time": activity.naive_time,
        "notes": list(activity.notes),
    }


def _attempt_json(outcome: ActivityOutcome, tz: ZoneInfo) -> dict[str, Any]:
    activity = outcome.activity
    start = _local(activity.start, tz)
    return {
        "reference": activity.reference,
        "date": start.date().isoformat() if start else None,
        "time": start.strftime("%H:%M:%S") if start else None,
        "method": _method_text(activity),
        "participants": [_party_json(p, role) for role, p in _participants(activity)],
        "status_reason": activity.status_reason,
        "notes": list(activity.notes),
    }


def _code_json(line: CodeLine, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "code": line.code,
        "description": CPT_DESCRIPTIONS.get(line.code),
        "units": line.units,
        "period": _day_period(line.period, tz),
        "status": line.status.value,
        "reason": line.reason,
        "charge_key": line.charge_key,
        "evidence": list(line.evidence),
    }


def _not_billed_json(item: NotBilled, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "code": item.code,
        "description": CPT_DESCRIPTIONS.get(item.code),
        "period": _day_period(item.period, tz) if item.period else None,
        "reason": item.reason,
    }


def _policy_json(result: MonthResult) -> dict[str, Any]:
    p = result.policy
    return {
        "name": p.name,
        "version": p.version,
        "description": p.description,
        "settings": {
            "minutes_basis": p.minutes_basis,
            "max_99458_units": p.max_99458_units,
            "interactive_media": sorted(p.interactive_media),
            "ai_contacts": p.ai_contacts,
            "live_chat": p.live_chat,
            "chat_window_seconds": int(p.chat_window.total_seconds()),
            "setup_min_days": p.setup_min_days,
            "rebill_99453_new_episode": p.rebill_99453_new_episode,
            "timezone": p.timezone,
        },
    }


def log_json(result: MonthResult) -> dict[str, Any]:
    """The monthly log as a machine-readable dict (insertion order is the schema's key order)."""
    tz = zone(result.timezone)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "patient": {
            "id": result.patient_id,
            "reference": f"Patient/{result.patient_id}",
            "name": result.display_name,
        },
        "month": str(result.month),
        "period": _day_period(result.month_period, tz),
        "time_zone": result.timezone,
        "as_of": iso_instant(result.as_of, tz),
        "preview": result.preview,
        "document_status": "preliminary" if result.preview else "final",
        "policy": _policy_json(result),
        "consents": [_consent_json(c, tz) for c in result.consents],
        "episodes": [
            {"from": iso_instant(e.start, tz), "until": iso_instant(e.end, tz) if e.end else None}
            for e in result.episodes
        ],
        "devices": [_device_json(d) for d in result.devices],
        "windows": [_window_json(w, result, tz) for w in result.windows],
        "activities": [_activity_json(o, tz) for o in result.activities],
        "attempts": [_attempt_json(o, tz) for o in result.activities if o.attempt],
        "summary": {
            "total_seconds": result.total_seconds,
            "minutes": result.minutes,
            "interactive_count": result.interactive_count,
            "attempt_count": result.attempt_count,
            "data_days_in_month": result.data_days_in_month,
        },
        "codes": [_code_json(line, tz) for line in result.codes],
        "not_billed": [_not_billed_json(item, tz) for item in result.not_billed],
        "flags": [{"code": f.code, "message": f.message} for f in result.flags],
        "readings_skipped": [{"reason": reason, "count": count} for reason, count in result.readings_skipped],
    }


def log_json_text(result: MonthResult) -> str:
    """The JSON attachment's text: indented, non-ASCII kept, one trailing newline."""
    return json.dumps(log_json(result), ensure_ascii=False, indent=2) + "\n"


def log_fingerprint(result: MonthResult) -> str:
    """SHA-256 (hex) of the log's content except the run's as-of time.

    Two runs of an unchanged month give the same fingerprint even though their as-of times differ; any change
    a reader of the log could see (a code, a minute, a flag, preview becoming final) changes it.
    """
    content = log_json(result)
    del content["as_of"]
    canonical = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- HTML --------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """The only way text enters the page: escaped, quotes included (safe in text and attribute values)."""
    return escape("" if value is None else str(value), quote=True)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 11pt;
  color: #111; margin: 1.5em; }
h1 { font-size: 1.5em; margin: 0 0 .3em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; border-bottom: 1px solid #999; }
table { border-collapse: collapse; width: 100%; margin: .3em 0 .8em; }
th, td { border: 1px solid #bbb; padding: .25em .4em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num, th.num { text-align: right; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: 0; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
.banner { border: 3px solid #b00; color: #b00; font-weight: 700; padding: .5em .8em; margin: .8em 0;
  font-size: 1.1em; }
.muted { color: #555; }
.interactive { font-weight: 600; }
ul { margin: .2em 0 .6em 1.2em; padding: 0; }
footer { margin-top: 2em; border-top: 1px solid #999; padding-top: .4em; font-size: .9em; color: #444; }
@page { size: landscape; margin: 12mm; }
@media print {
  body { margin: 0; font-size: 8.5pt; }
  .banner { border-width: 2px; }
  thead { display: table-header-group; }
  tr, .banner, dl.meta { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; page-break-after: avoid; }
}
""".strip()

# No scripts, no external resources: the page works offline and an injected tag could not load anything.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table whose cells are already-escaped HTML fragments."""

    def attr(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{attr(i)}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{attr(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _lines(items: Iterable[str]) -> str:
    """Escaped items separated by line breaks."""
    return "<br>".join(_e(i) for i in items)


def _when(moment: datetime | None, tz: ZoneInfo) -> str:
    local = _local(moment, tz)
    return local.strftime("%Y-%m-%d %H:%M %Z") if local else "not recorded"


def _days(period: Period, tz: ZoneInfo) -> str:
    first = period.start.astimezone(tz).date()
    last = last_second(period, tz).date()
    return f"{first.isoformat()} to {last.isoformat()}"


def _date_list(days: Sequence[date]) -> str:
    return ", ".join(d.strftime("%m-%d") for d in days) if days else "none"


def _header_html(result: MonthResult, tz: ZoneInfo) -> str:
    patient = result.patient_id if not result.display_name else f"{result.display_name} ({result.patient_id})"
    items = [
        ("Patient", patient),
        ("Month", f"{result.month} ({_days(result.month_period, tz)})"),
        ("Time zone", result.timezone),
        ("Policy", f"{result.policy.name} version {result.policy.version}"),
        ("As of", _when(result.as_of, tz)),
        ("Document status", "preliminary (preview)" if result.preview else "final (month closed)"),
    ]
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    banner = (
        '<div class="banner">PREVIEW: this month had not ended at the as-of time. Codes are shown as planned '
        "and are not billable.</div>"
        if result.preview
        else ""
    )
    return f'<header><h1>RPM monthly log</h1>{banner}<dl class="meta">{meta}</dl></header>'


def _consent_html(result: MonthResult, tz: ZoneInfo) -> str:
    rows = [
        [
            _e(c.id),
            _e(c.status + (" (no end date: not counted)" if c.revoked_without_end else "")),
            _e(c.method),
            _e(_when(c.start, tz)),
            _e(_when(c.end, tz) if c.end else "open"),
            _e(_when(c.recorded, tz)),
        ]
        for c in result.consents
    ]
    episodes = [
        [str(i + 1), _e(_when(e.start, tz)), _e(_when(e.end, tz)) if e.end else "open"]
        for i, e in enumerate(result.episodes)
    ]
    return (
        "<section><h2>Consent</h2>"
        + _table(["Consent", "Status", "Method", "In force from", "Until (exclusive)", "Recorded"], rows)
        + "<p>Episodes of continuous RPM consent:</p>"
        + _table(["Episode", "From", "Until (exclusive)"], episodes, numeric=(0,))
        + "</section>"
    )


def _devices_html(result: MonthResult) -> str:
    rows = [
        [
            _e(d.id),
            _e(d.display or ""),
            _e(d.type_display or d.type_code or "not recorded"),
            _e(d.status or ""),
        ]
        for d in result.devices
    ]
    return (
        "<section><h2>Devices</h2>" + _table(["Device", "Description", "Type", "Status"], rows) + "</section>"
    )


def _windows_html(result: MonthResult, tz: ZoneInfo) -> str:
    rows = []
    for w in result.windows:
        codes = [f"{c.code} x{c.units} ({c.status.value})" for c in _lines_for(w.period, result.codes)]
        codes += [f"{n.code} not billed: {n.reason}" for n in _not_billed_for(w.period, result.not_billed)]
        rows.append(
            [
                _e(f"{w.episode_index + 1}.{w.index + 1}"),
                _e(_days(w.period, tz)),
                _e(str(w.belongs_to)),
                _e("closed" if w.closed else "open (preview)"),
                str(w.day_count),
                _e(_date_list(w.data_days)),
                _e(", ".join(w.device_types) or "not recorded"),
                _lines(codes) or '<span class="muted">no code</span>',
            ]
        )
    return (
        "<section><h2>Data days per 30-day window</h2>"
        + _table(
            ["Window", "Days", "Belongs to", "State", "Data days", "Dates (MM-DD)", "Device types", "Code"],
            rows,
            numeric=(4,),
        )
        + f"<p>Data days in {_e(str(result.month))}: {result.data_days_in_month}</p></section>"
    )


def _activity_row(outcome: ActivityOutcome, tz: ZoneInfo) -> list[str]:
    a = outcome.activity
    start = _local(a.start, tz)
    counted = _fmt_duration(outcome.added_seconds) if outcome.counts_minutes else "0 min"
    minutes_note = outcome.minutes_reason + ("" if outcome.in_consent else " (outside consent)")
    notes = list(a.notes)
    if a.status_reason:
        notes.insert(0, f"status reason: {a.status_reason}")
    css = ' class="interactive"' if outcome.activity_class.value == "interactive" else ""
    return [
        _e(start.strftime("%Y-%m-%d") if start else "not recorded"),
        _e(start.strftime("%H:%M %Z") if start else ""),
        _e(_method_text(a)) + f'<br><span class="muted">{_e(a.reference)}</span>',
        _e(_fmt_duration(_duration_seconds(a))),
        _lines(f"{role}: {_party_text(p)}" for role, p in _participants(a)) or _e("not recorded"),
        _lines(_party_text(p) for p in _performers(a)) or _e("not recorded"),
        _e(", ".join(CONTENT_LABELS.get(c, c) for c in a.content) or "none"),
        f"<span{css}>{_e(outcome.activity_class.value)}</span>",
        _e(outcome.reason),
        _e(counted) + f'<br><span class="muted">{_e(minutes_note)}</span>',
        _e(f"{outcome.cumulative_minutes} min")
        + f'<br><span class="muted">{_e(outcome.cumulative_seconds)} s</span>',
        _lines(notes),
    ]


def _activities_html(result: MonthResult, tz: ZoneInfo) -> str:
    headers = [
        "Date",
        "Local time",
        "Method",
        "Duration",
        "Participants",
        "Performer",
        "Content",
        "Class",
        "Reason",
        "Minutes counted",
        "Running total",
        "Escalation / notes",
    ]
    rows = [_activity_row(o, tz) for o in result.activities]
    summary = (
        f"<p>Management time: <strong>{result.minutes} min</strong> "
        f"({result.total_seconds} s, overlaps merged); "
        f"interactive communications: {result.interactive_count}; attempts: {result.attempt_count}.</p>"
    )
    return "<section><h2>Activities</h2>" + _table(headers, rows) + summary + "</section>"


def _attempts_html(result: MonthResult, tz: ZoneInfo) -> str:
    rows = [
        [
            _e(_when(o.activity.start, tz)),
            _e(_method_text(o.activity)),
            _lines(f"{role}: {_party_text(p)}" for role, p in _participants(o.activity))
            or _e("not recorded"),
            _e(o.activity.status_reason or "not recorded"),
            _e(o.activity.reference),
        ]
        for o in result.activities
        if o.attempt
    ]
    return (
        "<section><h2>Contact attempts</h2>"
        + _table(["When", "Method", "Participants", "Reason not done", "Record"], rows)
        + "</section>"
    )


def _codes_html(result: MonthResult, tz: ZoneInfo) -> str:
    rows = [
        [
            _e(c.code),
            _e(CPT_DESCRIPTIONS.get(c.code, "")),
            str(c.units),
            _e(_days(c.period, tz)),
            _e(c.status.value),
            _e(c.reason),
            _lines(c.evidence),
            _e(c.charge_key),
        ]
        for c in result.codes
    ]
    not_billed = [
        [
            _e(n.code),
            _e(CPT_DESCRIPTIONS.get(n.code, "")),
            _e(_days(n.period, tz) if n.period else ""),
            _e(n.reason),
        ]
        for n in result.not_billed
    ]
    return (
        "<section><h2>Codes</h2>"
        + _table(
            ["Code", "Description", "Units", "Period", "Status", "Reason", "Evidence", "Charge key"],
            rows,
            numeric=(2,),
        )
        + "<h2>Codes not billed</h2>"
        + _table(["Code", "Description", "Period", "Reason"], not_billed)
        + "</section>"
    )


def _flags_html(flags: Sequence[Flag]) -> str:
    items = "".join(f'<li>{_e(f.message)} <span class="muted">[{_e(f.code)}]</span></li>' for f in flags)
    return (
        "<section><h2>Flags</h2>"
        + (f"<ul>{items}</ul>" if items else '<p class="muted">none</p>')
        + "</section>"
    )


def _skipped_html(result: MonthResult) -> str:
    rows = [[_e(reason), str(count)] for reason, count in result.readings_skipped]
    return (
        "<section><h2>Readings skipped</h2>" + _table(["Reason", "Count"], rows, numeric=(1,)) + "</section>"
    )


def _footer_html(result: MonthResult, tz: ZoneInfo) -> str:
    return (
        f"<footer>Generated by {_e(GENERATOR)} (monthly log schema {_e(SCHEMA_VERSION)}) "
        "under billing policy "
        f"{_e(result.policy.name)} version {_e(result.policy.version)}: {_e(result.policy.description)} "
        f"As of {_e(_when(result.as_of, tz))}; times in {_e(result.timezone)}.</footer>"
    )


def render_log_html(result: MonthResult) -> str:
    """The monthly log as one self-contained, printable HTML page."""
    tz = zone(result.timezone)
    title = f"RPM monthly log {result.month} - patient {result.patient_id}"
    body = "".join(
        [
            _header_html(result, tz),
            _consent_html(result, tz),
            _devices_html(result),
            _windows_html(result, tz),
            _activities_html(result, tz),
            _attempts_html(result, tz),
            _codes_html(result, tz),
            _flags_html(result.flags),
            _skipped_html(result),
            _footer_html(result, tz),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
