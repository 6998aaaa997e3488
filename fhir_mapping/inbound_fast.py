"""A typed fast path for the bulk of a month's input: device-reading Observations in their common shape.

Device readings are four in five of the resources a month-end reads. Parsing each NDJSON line into a dict
of everything (components, categories, meta) and then picking out the eight values a reading needs costs
most of a run. Here msgspec decodes a line straight into small typed structs holding only those values
(everything else in the line is checked to be valid JSON and skipped without building objects), and
`fast_reading` turns them into the same `Reading` the tolerant path (`inbound_observation._reading`)
builds.

The fast path only ever says yes or "not mine": a line that is not an Observation, that has any element in an
unexpected JSON type, an extension (care-program attribution), a status that needs reading tolerantly, a
time entry's code, no effectiveDateTime string, a subject that is not a plain Patient reference, or that the
tolerant path would report as a problem, is left to the caller, which parses it as before and gives it to
`InboundCollector.add`. So what is accepted, how it is read and every error message stay those of the
tolerant path; the fast path only decides sooner for lines that path would accept unchanged.
"""

from __future__ import annotations

import sys
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from billing.model import Reading
from fhir_mapping.fhirtime import parse_moment
from fhir_mapping.inbound_common import patient_reference_id
from fhir_mapping.inbound_observation import OBSERVATION_STATUSES, device_reference_id, new_reading


class _Coding(msgspec.Struct):
    system: Any = None
    code: Any = None
    display: Any = None


class _Code(msgspec.Struct):
    coding: list[_Coding] | None = None
    text: Any = None


class _Reference(msgspec.Struct):
    reference: Any = None


class _Identifier(msgspec.Struct):
    system: Any = None
    value: Any = None


class _Observation(msgspec.Struct, rename="camel"):
    """The elements of an Observation a device reading needs; JSON `null` and absent both read as None
    (as `dict.get` reads them on the tolerant path), except `extension`, whose presence alone matters."""

    resource_type: Any = None
    id: Any = None
    status: Any = None
    code: _Code | None = None
    subject: _Reference | None = None
    effective_date_time: Any = None
    device: _Reference | None = None
    identifier: list[_Identifier] | None = None
    extension: Any = msgspec.UNSET


_DECODER = msgspec.json.Decoder(_Observation)
_NOT_A_READING = None


def fast_reading(line: str | bytes, rpm_activity_system: str, tz: ZoneInfo) -> tuple[str, Reading] | None:
    """(patient id, Reading) of a device-reading Observation line in the common shape, else None.

    None means "read this line the usual way": nothing is decided here about it.
    """
    try:
        obs = _DECODER.decode(line)
    except (msgspec.DecodeError, UnicodeError):  # any other JSON shape, or not JSON at all
        return _NOT_A_READING
    if obs.resource_type != "Observation" or obs.extension is not msgspec.UNSET:
        return _NOT_A_READING
    status = obs.status
    if not (isinstance(status, str) and status in OBSERVATION_STATUSES):
        return _NOT_A_READING
    ident = obs.id
    if not (isinstance(ident, str) and ident and not ident[0].isspace() and not ident[-1].isspace()):
        return _NOT_A_READING  # no id, or one the tolerant path strips: its keys differ from the id
    subject = obs.subject
    reference = subject.reference if subject is not None else None
    patient_id = patient_reference_id(reference) if isinstance(reference, str) else None
    if patient_id is None:
        return _NOT_A_READING
    code = obs.code
    display: str | None = None
    if code is not None:
        codings = code.coding or ()
        for coding in codings:
            if coding.system == rpm_activity_system:
                return _NOT_A_READING  # a time entry, not a reading
        text = code.text
        if isinstance(text, str) and (text := text.strip()):
            display = text
        else:
            for coding in codings:
                shown = coding.display
                if isinstance(shown, str) and (shown := shown.strip()):
                    display = shown
                    break
    value = obs.effective_date_time
    if not isinstance(value, str):
        return _NOT_A_READING
    try:
        moment, naive = parse_moment(value, tz, "effectiveDateTime")
    except Exception:  # reported, in its own words, by the tolerant path
        return _NOT_A_READING
    device = obs.device
    device_id: str | None
    if device is None:
        device_id = None  # patient-reported
    else:
        device_ref = device.reference
        device_id = device_reference_id(device_ref) if isinstance(device_ref, str) else ""
    dedupe_key: str | None = None
    for identifier in obs.identifier or ():
        id_system, id_value = identifier.system, identifier.value
        if isinstance(id_system, str) and isinstance(id_value, str):
            id_system, id_value = id_system.strip(), id_value.strip()
            if id_system and id_value:
                dedupe_key = f"{id_system}|{id_value}"
                break
    return patient_id, new_reading(
        (ident, moment, device_id, dedupe_key, None, naive, sys.intern(display) if display else None)
    )
