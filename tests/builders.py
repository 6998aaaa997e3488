"""Small builders for domain records in billing tests (times are local America/New_York unless given)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from billing.model import (
    Activity,
    ActivityKind,
    ConsentRecord,
    DeviceRecord,
    ExistingCharge,
    Party,
    PartyKind,
    PatientRecords,
    Reading,
)

NY = ZoneInfo("America/New_York")
PID = "p1"
PATIENT = Party(PartyKind.PATIENT, f"Patient/{PID}")
NURSE = Party(PartyKind.PRACTITIONER, "Practitioner/nurse-1")
NURSE2 = Party(PartyKind.PRACTITIONER, "Practitioner/nurse-2")
CAREGIVER = Party(PartyKind.CAREGIVER, "RelatedPerson/daughter")
STRANGER = Party(PartyKind.RELATED_PERSON, "RelatedPerson/neighbour")
AI = Party(PartyKind.AI_SYSTEM, "Device/ai-caller")


def t(text: str, tz: ZoneInfo = NY) -> datetime:
    """'2026-03-05 10:00' (local) or an ISO string with an offset."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def consent(
    start: str = "2025-12-01 00:00",
    end: str | None = None,
    *,
    id: str = "c1",
    status: str = "active",
    method: str = "verbal",
    recorded: str | None = None,
) -> ConsentRecord:
    return ConsentRecord(
        id=id,
        status=status,
        start=t(start),
        end=t(end) if end else None,
        method=method,
        recorded=t(recorded) if recorded else None,
    )


def device(id: str = "d1", type_code: str = "bp") -> DeviceRecord:
    return DeviceRecord(id=id, status="active", type_code=type_code)


def reading(
    when: str,
    *,
    device_id: str | None = "d1",
    id: str | None = None,
    identifier: str | None = None,
    program: str | None = None,
) -> Reading:
    moment = t(when)
    return Reading(
        id=id or f"r-{moment.isoformat()}-{device_id}",
        time=moment,
        device_id=device_id,
        identifier=identifier,
        program=program,
    )


def daily_readings(first: str, days: int, *, hour: int = 8, device_id: str = "d1") -> list[Reading]:
    start = t(first).replace(hour=hour)
    return [reading((start + timedelta(days=i)).isoformat(), device_id=device_id) for i in range(days)]


def call(
    when: str,
    minutes: float = 0,
    *,
    id: str | None = None,
    medium: str = "PHONE",
    sender: Party = NURSE,
    recipients: tuple[Party, ...] = (PATIENT,),
    status: str = "completed",
    content: tuple[str, ...] = ("physiologic-data",),
    categories: tuple[str, ...] = (),
    program: str | None = None,
    duration: bool = True,
    status_reason: str | None = None,
) -> Activity:
    start = t(when)
    return Activity(
        resource_type="Communication",
        id=id or f"comm-{start.isoformat()}",
        kind=ActivityKind.COMMUNICATION,
        status=status,
        start=start,
        end=start + timedelta(seconds=round(minutes * 60)) if duration else None,
        duration_source="activity-period" if duration else None,
        medium=(medium,),
        categories=categories,
        sender=sender,
        recipients=recipients,
        sent=start,
        content=content,
        program=program,
        status_reason=status_reason,
    )


def time_entry(
    when: str,
    minutes: float,
    *,
    id: str | None = None,
    code: str = "data-review",
    performer: Party | None = NURSE,
    program: str | None = None,
    length_only: bool = False,
) -> Activity:
    start = t(when)
    seconds = round(minutes * 60)
    return Activity(
        resource_type="Observation",
        id=id or f"te-{start.isoformat()}-{code}",
        kind=ActivityKind.TIME_ENTRY,
        status="final",
        start=start,
        end=None if length_only else start + timedelta(seconds=seconds),
        duration_seconds=seconds,
        duration_source="valueQuantity" if length_only else "effectivePeriod",
        activity_code=code,
        performers=(performer,) if performer else (),
        program=program,
    )


def charge(
    code: str,
    status: str = "billable",
    *,
    start: str | None = None,
    end: str | None = None,
    key: str | None = None,
    id: str = "ci-1",
) -> ExistingCharge:
    return ExistingCharge(
        id=id,
        code=code,
        status=status,
        period_start=t(start) if start else None,
        period_end=t(end) if end else None,
        charge_key=key,
    )


def records(*, consents=None, devices=None, readings=(), activities=(), charges=()) -> PatientRecords:
    return PatientRecords(
        patient_id=PID,
        consents=tuple(consents if consents is not None else [consent()]),
        devices=tuple(devices if devices is not None else [device()]),
        readings=tuple(readings),
        activities=tuple(activities),
        charges=tuple(charges),
    )
