"""Consent, Device, ChargeItem and the supporting resources (Encounter, RelatedPerson) as domain records.

Each extractor takes one resource dict and returns a record, returns None when the contract says to ignore the
resource quietly, or raises MappingError with the problem in words (the collector turns that into a
SkippedResource). Non-fatal findings go to `notes` (they become the patient's `extra_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from billing.model import ConsentRecord, DeviceRecord, ExistingCharge
from fhir_mapping.canon import CONSENT_SCOPE_CS, CPT_SYSTEM
from fhir_mapping.fhirtime import FhirTime, duration_seconds
from fhir_mapping.inbound_common import (
    Json,
    MapContext,
    as_dict,
    as_list,
    as_str,
    codes,
    codings,
    dicts,
    has_code,
    human_name,
    patient_of,
)
from fhir_mapping.issues import MappingError, quote

CONSENT_IN_FORCE = frozenset(
    {"active", "inactive"}
)  # draft, proposed, rejected, entered-in-error: not consent


# ---------------------------------------------------------------------------------------------- Consent


def consent_claims_rpm(resource: Json, ctx: MapContext) -> bool:
    """`category` or `provision.code` carries care-program#rpm: the Consent presents itself as RPM consent."""
    system = ctx.systems.care_program_cs
    provision = as_dict(resource.get("provision")) or {}
    return has_code(resource.get("category"), system, "rpm") or has_code(provision.get("code"), system, "rpm")


def map_consent(resource: Json, ctx: MapContext, notes: list[str]) -> ConsentRecord | None:
    """An RPM ConsentRecord, or None for a Consent that is not RPM consent (ignored quietly)."""
    if not consent_claims_rpm(resource, ctx):
        return None
    status = as_str(resource.get("status"))
    if status is None:
        raise MappingError("RPM Consent has no status")
    if status not in CONSENT_IN_FORCE:
        return None
    patient_id, problem = patient_of(resource, "patient")
    if patient_id is None:
        raise MappingError(f"RPM Consent {problem}")
    provision = as_dict(resource.get("provision")) or {}
    provision_type = provision.get("type")
    if provision_type == "deny":
        return None
    if provision_type not in (None, "permit"):
        raise MappingError(f"provision.type {quote(provision_type)} is neither permit nor deny")
    if not has_code(resource.get("scope"), CONSENT_SCOPE_CS, "treatment"):
        ident = as_str(resource.get("id")) or "?"
        notes.append(f"Consent/{ident} is coded RPM but its scope is not consentscope#treatment: not counted")
        return None
    return _consent_record(resource, provision, status, ctx)


def _consent_record(resource: Json, provision: Json, status: str, ctx: MapContext) -> ConsentRecord:
    period = as_dict(provision.get("period")) or {}
    recorded = ctx.optional_time(resource.get("dateTime"), "dateTime")
    start = ctx.optional_time(period.get("start"), "provision.period.start") or recorded
    if start is None:
        raise MappingError("RPM Consent has no start (no provision.period.start and no dateTime)")
    end = ctx.optional_time(period.get("end"), "provision.period.end")
    end_at = end.exclusive_end() if end is not None else None
    if end_at is not None and end_at <= start.moment:
        end_text, start_text = quote(period.get("end")), quote(period.get("start"))
        raise MappingError(f"provision.period.end {end_text} is before its start {start_text}")
    written = bool(resource.get("sourceAttachment") or resource.get("sourceReference"))
    return ConsentRecord(
        id=as_str(resource.get("id")) or "",
        status=status,
        start=start.moment,
        end=end_at,
        method="written" if written else "verbal",
        recorded=recorded.moment if recorded is not None else None,
        naive_time=any(t is not None and t.naive for t in (recorded, start, end)),
    )


# ----------------------------------------------------------------------------------------------- Device


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a Communication needs to know about a Device it names: whose it is (None: nobody's)."""

    patient_id: str | None
    display: str | None


def map_device(resource: Json) -> tuple[DeviceRecord, str | None] | None:
    """The DeviceRecord and its patient id (None: a Device of no patient, e.g. an AI calling system).

    Devices with status entered-in-error are dropped (None).
    """
    status = as_str(resource.get("status"))
    if status == "entered-in-error":
        return None
    patient_id: str | None = None
    if resource.get("patient") is not None:
        patient_id, problem = patient_of(resource, "patient")
        if patient_id is None:
            raise MappingError(f"Device {problem}")
    type_code, type_display = _device_type(resource.get("type"))
    record = DeviceRecord(
        id=as_str(resource.get("id")) or "",
        status=status,
        type_code=type_code,
        type_display=type_display,
        display=_device_display(resource),
    )
    return record, patient_id


def _device_type(device_type: object) -> tuple[str | None, str | None]:
    """First Device.type coding as "system|code" (R4 has one CodeableConcept; R5-style arrays tolerated)."""
    for concept in as_list(device_type):
        for coding in codings(concept):
            code = as_str(coding.get("code"))
            if code is not None:
                system = as_str(coding.get("system")) or ""
                return f"{system}|{code}", as_str(coding.get("display")) or as_str(concept.get("text"))
        text = as_str(concept.get("text")) if isinstance(concept, dict) else None
        if text:
            return None, text
    return None, None


def _device_display(resource: Json) -> str | None:
    names = [as_str(entry.get("name")) for entry in dicts(resource.get("deviceName"))]
    parts = [
        next((name for name in names if name), None),
        as_str(resource.get("manufacturer")),
        as_str(resource.get("modelNumber")),
    ]
    shown = [part for part in parts if part]
    return ", ".join(shown) if shown else None


# ------------------------------------------------------------------------------------------- ChargeItem


def map_charge_item(resource: Json, ctx: MapContext, notes: list[str]) -> ExistingCharge | None:
    """An ExistingCharge for a CPT-coded ChargeItem; None for one without a CPT code (ignored quietly).

    Existing charges block rebilling, so a ChargeItem is never skipped for a bad occurrence, status or
    quantity: it is kept with that part missing (status "unknown", which counts as active) and a note.
    """
    ident = as_str(resource.get("id")) or "?"
    cpt = codes(resource.get("code"), CPT_SYSTEM)
    charge_key = _charge_key(resource, ctx)
    if not cpt:
        if charge_key is not None:
            raise MappingError(f"ChargeItem with charge-key {quote(charge_key)} has no CPT code")
        return None
    status = as_str(resource.get("status"))
    if status is None:
        notes.append(f"ChargeItem/{ident} has no status: kept as 'unknown' (counts as an active charge)")
        status = "unknown"
    try:
        start, end = _occurrence(resource, ctx)
    except MappingError as err:
        notes.append(f"ChargeItem/{ident}: {err}; its occurrence is ignored")
        start = end = None
    return ExistingCharge(
        id=as_str(resource.get("id")),
        code=cpt[0],
        status=status,
        period_start=start,
        period_end=end,
        charge_key=charge_key,
        quantity=_quantity(resource, ident, notes),
    )


def _charge_key(resource: Json, ctx: MapContext) -> str | None:
    for identifier in dicts(resource.get("identifier")):
        if identifier.get("system") == ctx.systems.charge_key_system:
            return as_str(identifier.get("value"))
    return None


def _occurrence(resource: Json, ctx: MapContext) -> tuple[datetime | None, datetime | None]:
    """occurrencePeriod as [start, exclusive end); occurrenceDateTime as the span of its precision.

    A date-only occurrenceDateTime covers that local day; a full time covers one second from it.
    """
    if "occurrencePeriod" in resource:
        period = as_dict(resource["occurrencePeriod"])
        if period is None:
            raise MappingError("occurrencePeriod is not a Period")
        start = ctx.optional_time(period.get("start"), "occurrencePeriod.start")
        end = ctx.optional_time(period.get("end"), "occurrencePeriod.end")
        return (start.moment if start else None), (end.exclusive_end() if end else None)
    if "occurrenceDateTime" in resource:
        moment = ctx.time(resource["occurrenceDateTime"], "occurrenceDateTime")
        return moment.moment, moment.exclusive_end()
    return None, None


def _quantity(resource: Json, ident: str, notes: list[str]) -> int | None:
    quantity = as_dict(resource.get("quantity"))
    if quantity is None or "value" not in quantity:
        return None
    value = quantity["value"]
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    notes.append(f"ChargeItem/{ident}: quantity {quote(value)} is not a whole number; ignored")
    return None


# ------------------------------------------------------------------------------- Encounter, RelatedPerson


@dataclass(frozen=True, slots=True)
class EncounterInfo:
    """An Encounter reduced to what a Communication's duration needs."""

    start: datetime | None  # period.start
    length_seconds: int | None  # `length`, else period end - start
    naive: bool = False
    problem: str | None = None  # why its times cannot be used (the Communication gets no duration from it)


def map_encounter(resource: Json, ctx: MapContext) -> EncounterInfo:
    """Never raises: an unusable Encounter is kept with its problem, so the Communication can say why."""
    if resource.get("status") == "entered-in-error":
        return EncounterInfo(None, None, problem="the Encounter is entered-in-error")
    try:
        period = as_dict(resource.get("period")) or {}
        start = ctx.optional_time(period.get("start"), "Encounter.period.start")
        end = ctx.optional_time(period.get("end"), "Encounter.period.end")
        length = _encounter_length(resource, start, end)
    except MappingError as err:
        return EncounterInfo(None, None, problem=str(err))
    naive = any(t is not None and t.naive for t in (start, end))
    return EncounterInfo(start.moment if start else None, length, naive=naive)


def _encounter_length(resource: Json, start: FhirTime | None, end: FhirTime | None) -> int | None:
    if resource.get("length") is not None:
        return duration_seconds(resource["length"], "Encounter.length")
    if start is None or end is None:
        return None
    elapsed = end.moment - start.moment
    if elapsed < timedelta(0):
        raise MappingError("Encounter.period.end is before its start")
    return int(elapsed.total_seconds())


@dataclass(frozen=True, slots=True)
class RelatedPersonInfo:
    """A RelatedPerson reduced to the caregiver test: whose relative, and is the relationship recorded."""

    patient_id: str | None
    has_relationship: bool
    display: str | None


def map_related_person(resource: Json) -> RelatedPersonInfo:
    patient_id, _ = patient_of(resource, "patient")
    has_relationship = any(
        any(as_str(c.get("code")) for c in codings(concept)) or as_str(concept.get("text"))
        for concept in dicts(resource.get("relationship"))
    )
    return RelatedPersonInfo(patient_id, bool(has_relationship), human_name(resource))
