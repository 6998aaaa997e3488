"""Observation → Reading (a device reading) or time-entry Activity (RPM management time that is not a call).

Which readings count (an RPM device of the same patient, inside consent, not another program) is the engine's
decision; this module carries `device_id`, `program` and the dedupe `identifier` faithfully.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from functools import lru_cache, partial
from typing import Final

from billing.model import Activity, ActivityKind, Reading, new_activity
from fhir_mapping.canon import RPM_ACTIVITY_CODES
from fhir_mapping.fhirtime import FhirTime, duration_seconds, parse_moment
from fhir_mapping.inbound_common import (
    REFERENCE_CACHE,
    Json,
    MapContext,
    as_dict,
    as_list,
    as_str,
    codes,
    contained_map,
    dicts,
    program_of,
    split_reference,
)
from fhir_mapping.inbound_parties import party_of, provisional_party
from fhir_mapping.issues import MappingError, quote

# Statuses of a result that exists; registered/cancelled/entered-in-error/unknown are ignored quietly.
OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})

# `Reading(...)` with its fields in order, without the named tuple's keyword-taking constructor: this builds
# every device reading of a month.
new_reading: Final = partial(tuple.__new__, Reading)


def is_time_entry(resource: Json, ctx: MapContext) -> bool:
    """`code` has a coding from the project's rpm-activity CodeSystem."""
    code = resource.get("code")
    if not isinstance(code, dict):
        return False
    system = ctx.systems.rpm_activity_cs
    for coding in as_list(code.get("coding")):
        if isinstance(coding, dict) and coding.get("system") == system:
            return True
    return False


def is_ignored_status(status: str) -> bool:
    """A status `map_observation` ignores quietly (before reading anything else of the resource)."""
    stripped = as_str(status)
    return stripped is not None and stripped not in OBSERVATION_STATUSES


def map_observation(resource: Json, patient_id: str, ctx: MapContext) -> Reading | Activity | None:
    """A Reading or a time-entry Activity; None for a status that is not a result (ignored quietly)."""
    status = resource.get("status")
    if not (isinstance(status, str) and status in OBSERVATION_STATUSES):  # a plain "final" needs no strip
        status = as_str(status)
        if status is None:
            raise MappingError("has no status")
        if status not in OBSERVATION_STATUSES:
            return None  # is_ignored_status
    if is_time_entry(resource, ctx):
        return _time_entry(resource, status, patient_id, ctx)
    return _reading(resource, ctx)


def _reading(resource: Json, ctx: MapContext) -> Reading:
    """A device reading. Each step reads the common shape directly; repeated strings are shared."""
    value = resource.get("effectiveDateTime")
    if value is not None:
        moment, naive = parse_moment(value, ctx.tz, "effectiveDateTime")
    else:
        start, _ = effective(resource, ctx, prefer_period=False)
        moment, naive = start.moment, start.naive
    device_id = _device_id(resource)
    display = _code_display(resource)
    return new_reading(
        (
            as_str(resource.get("id")) or "",
            moment,
            device_id,
            _dedupe_key(resource) if "identifier" in resource else None,
            program_of(resource, ctx) if "extension" in resource else None,
            naive,
            sys.intern(display) if display else None,
        )
    )


def _device_id(resource: Json) -> str | None:
    """The Device id of `Observation.device`; None only when there is no `device` at all (patient-reported).

    A `device` that is not a plain Device reference (DeviceMetric, a contained `#id`, only a display) is kept
    verbatim, or as "" without a reference, so it can never match one of the patient's RPM devices.
    """
    element = resource.get("device")
    if element is None:
        return None
    reference = element.get("reference") if isinstance(element, dict) else None
    return device_reference_id(reference) if isinstance(reference, str) else ""


@lru_cache(maxsize=REFERENCE_CACHE)
def device_reference_id(raw: str) -> str:
    """`_device_id` of a `device.reference` string (a patient's readings name the same few devices)."""
    reference = as_str(raw)
    if reference is None:
        return ""
    parts = split_reference(reference)
    return sys.intern(parts[1] if parts is not None and parts[0] == "Device" else reference)


def _dedupe_key(resource: Json) -> str | None:
    """The first identifier with both system and value, as the reading's dedupe key "system|value"."""
    for identifier in as_list(resource.get("identifier")):
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and isinstance(value, str):
            system, value = system.strip(), value.strip()
            if system and value:
                return f"{system}|{value}"
    return None


def _code_display(resource: Json) -> str | None:
    """`code.text`, else the first display of its codings (the reading's name in the log)."""
    code = resource.get("code")
    if not isinstance(code, dict):
        return None
    text = code.get("text")
    if isinstance(text, str) and (text := text.strip()):
        return text
    for coding in as_list(code.get("coding")):
        if isinstance(coding, dict):
            display = coding.get("display")
            if isinstance(display, str) and (display := display.strip()):
                return display
    return None


def effective(resource: Json, ctx: MapContext, *, prefer_period: bool) -> tuple[FhirTime, FhirTime | None]:
    """The effective start, and the effectivePeriod end when there is one."""
    fields = ("effectiveDateTime", "effectiveInstant", "effectivePeriod")
    if prefer_period:
        fields = ("effectivePeriod", "effectiveDateTime", "effectiveInstant")
    for field in fields:
        value = resource.get(field)
        if value is None:
            continue
        if field != "effectivePeriod":
            return ctx.time(value, field), None
        period = as_dict(value)
        if period is None:
            raise MappingError("effectivePeriod is not a Period")
        if period.get("start") is None:
            raise MappingError("effectivePeriod has no start")
        start = ctx.time(period["start"], "effectivePeriod.start")
        return start, ctx.optional_time(period.get("end"), "effectivePeriod.end")
    if resource.get("effectiveTiming") is not None:
        raise MappingError("effectiveTiming is not supported (a single time is needed)")
    raise MappingError("has no effective time (effectiveDateTime, effectiveInstant or effectivePeriod)")


def _time_entry(resource: Json, status: str, patient_id: str, ctx: MapContext) -> Activity:
    found = codes(resource.get("code"), ctx.systems.rpm_activity_cs)
    known = [code for code in found if code in RPM_ACTIVITY_CODES]
    if not known:
        raise MappingError(
            f"code {quote(found[0] if found else None)} is not an rpm-activity code "
            f"({', '.join(RPM_ACTIVITY_CODES)})"
        )
    start, end = effective(resource, ctx, prefer_period=True)
    seconds: int | None = None
    source: str | None = None
    if end is not None:
        if end.moment < start.moment:
            raise MappingError("effectivePeriod.end is before its start")
        seconds, source = int((end.moment - start.moment) // timedelta(seconds=1)), "effectivePeriod"
    elif resource.get("valueQuantity") is not None:
        seconds, source = duration_seconds(resource["valueQuantity"], "valueQuantity"), "valueQuantity"
    contained = contained_map(resource) if "contained" in resource else {}
    performers = [
        party_of(provisional_party(p, patient_id, contained)) for p in dicts(resource.get("performer"))
    ]
    notes = [text for note in dicts(resource.get("note")) if (text := as_str(note.get("text")))]
    return new_activity(
        resource_type="Observation",
        id=as_str(resource.get("id")) or "",
        kind=ActivityKind.TIME_ENTRY,
        status=status,
        start=start.moment,
        end=end.moment if end is not None else None,
        duration_seconds=seconds,
        duration_source=source,
        activity_code=known[0],
        performers=tuple(performers),
        program=program_of(resource, ctx) if "extension" in resource else None,
        naive_time=start.naive or (end is not None and end.naive),
        notes=tuple(notes),
    )
