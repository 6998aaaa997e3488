"""A typed fast path for the bulk of a month's input: device-reading Observations in their common shape.

Device readings are four in five of the resources a month-end reads. Parsing each NDJSON line into a dict
of everything (components, categories, meta) and then picking out the eight values a reading needs costs
most of a run. Here msgspec decodes a line straight into small typed structs holding only those values
(everything else in the line is checked to be valid JSON and skipped without building objects), and
`fast_reading` turns them into the same `Reading` the tolerant path (`inbound_observation._reading`)
builds.

The fast path only ever says yes or "not mine": a line with any element in an unexpected JSON type, a
care-program attribution, contained resources, an id or status that needs reading tolerantly, a time
entry's code, a reading without an effectiveDateTime string, a subject that is not a plain Patient
reference, or anything the tolerant path would report as a problem or a finding, is left to the caller,
which parses it as before and gives it to `InboundCollector.add`. So what is accepted, how it is read and
every message stay those of the tolerant path; the fast path only decides sooner for lines that path would
accept without a word.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Final, TypeGuard
from zoneinfo import ZoneInfo

import msgspec

from billing.model import Activity, ActivityKind, PartyKind, Reading, new_activity
from fhir_mapping.canon import COMMUNICATION_CATEGORY_CS, RPM_ACTIVITY_CODES, RPM_CONTENT_CODES
from fhir_mapping.fhirtime import PLAIN_LENGTHS, parse_moment, plain_moment
from fhir_mapping.inbound_common import MapContext, as_str, patient_reference_id, split_reference
from fhir_mapping.inbound_communication import PARTICIPATION_MODE_SYSTEMS, CommunicationDraft
from fhir_mapping.inbound_observation import (
    OBSERVATION_STATUSES,
    device_reference_id,
    is_ignored_status,
    new_reading,
)
from fhir_mapping.inbound_parties import PartyRow, party_of, referenced_party


class _Coding(msgspec.Struct):
    system: Any = None
    code: Any = None
    display: Any = None


class _Code(msgspec.Struct):
    coding: list[_Coding] | None = None
    text: Any = None


class _Reference(msgspec.Struct):
    reference: Any = None
    display: Any = None


class _Identifier(msgspec.Struct):
    system: Any = None
    value: Any = None


class _Period(msgspec.Struct):
    start: Any = None
    end: Any = None


class _Annotation(msgspec.Struct):
    text: Any = None


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
    # time entries
    effective_period: _Period | None = None
    performer: list[_Reference] | None = None
    note: list[_Annotation] | None = None
    contained: Any = None


class _Extension(msgspec.Struct, rename="camel"):
    url: Any = None
    value_period: _Period | None = None
    value_coding: _Coding | None = None


class _Payload(msgspec.Struct, rename="camel"):
    content_string: Any = None


class _Communication(msgspec.Struct, rename="camel"):
    """The elements of a Communication its draft needs; `contained` only to see that there is none."""

    resource_type: Any = None
    id: Any = None
    status: Any = None
    subject: _Reference | None = None
    extension: list[_Extension] | None = None
    contained: Any = None
    medium: list[_Code] | None = None
    category: list[_Code] | None = None
    sender: _Reference | None = None
    recipient: list[_Reference] | None = None
    sent: Any = None
    status_reason: _Code | None = None
    topic: _Code | None = None
    reason_code: list[_Code] | None = None
    encounter: _Reference | None = None
    payload: list[_Payload] | None = None
    note: list[_Annotation] | None = None


_DECODER = msgspec.json.Decoder(_Observation)
_CONTENT_CODES = frozenset(RPM_CONTENT_CODES)
_COMMUNICATION_DECODER = msgspec.json.Decoder(_Communication)
_ABSENT = msgspec.UNSET


def _is_plain_id(ident: object) -> TypeGuard[str]:
    """An id the tolerant path keeps as it is: a string, not blank, not padded (a padded id is stripped for
    the record but not for the key a later copy replaces it under)."""
    return type(ident) is str and ident != "" and ident == ident.strip()


def _patient_of(subject: _Reference | None) -> str | None:
    """`inbound_common.patient_of` for a subject that is a plain Patient reference; None otherwise."""
    reference = subject.reference if subject is not None else None
    return patient_reference_id(reference) if isinstance(reference, str) else None


def fast_reading(
    line: str | bytes, rpm_activity_system: str, tz: ZoneInfo
) -> tuple[str, Reading | Activity | None] | None:
    """(patient id, Reading) of a device-reading Observation line in the common shape, (patient id, Activity)
    of a time entry in its common shape (an effectivePeriod with start and end), (patient id, None) of an
    Observation whose status is not a result (entered-in-error, cancelled, ...), else None.

    None means "read this line the usual way": nothing is decided here about it.
    """
    try:
        obs = _DECODER.decode(line)
    except (msgspec.DecodeError, UnicodeError):  # any other JSON shape, or not JSON at all
        return None
    if obs.resource_type != "Observation":
        return None
    patient_id = _patient_of(obs.subject)
    if patient_id is None:
        return None
    status = obs.status
    if not (type(status) is str and status in OBSERVATION_STATUSES):
        # `map_observation` ignores any other non-blank status quietly, before reading anything else: all
        # that the tolerant path keeps of such a line is that its patient exists.
        return (patient_id, None) if type(status) is str and is_ignored_status(status) else None
    ident = obs.id
    if obs.extension is not _ABSENT or not _is_plain_id(ident):
        return None
    code = obs.code
    display: str | None = None
    if code is not None:
        codings = code.coding or ()
        for coding in codings:
            if coding.system == rpm_activity_system:
                return _time_entry_of(obs, status, ident, patient_id, rpm_activity_system, tz)
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
        return None
    # parse_moment, its plain-shape step first without the call in between (this runs for every reading)
    plain = plain_moment(value, tz) if len(value) in PLAIN_LENGTHS and value.isascii() else None
    if plain is not None:
        moment, naive = plain
    else:
        try:
            moment, naive = parse_moment(value, tz, "effectiveDateTime")
        except Exception:  # reported, in its own words, by the tolerant path
            return None
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


def fast_communication(line: str | bytes, ctx: MapContext) -> tuple[str, CommunicationDraft | None] | None:
    """(patient id, draft) of a Communication line in the common shape, (patient id, None) of an
    entered-in-error one (which `map_communication` ignores quietly); None: read it the usual way."""
    try:
        comm = _COMMUNICATION_DECODER.decode(line)
    except (msgspec.DecodeError, UnicodeError):
        return None
    try:
        return _communication_draft(comm, ctx)
    except Exception:  # _NotCommon, or a problem reported in its own words by the tolerant path
        return None


class _NotCommon(Exception):
    """The line is not in the common shape: the tolerant path reads it."""


def _communication_draft(comm: _Communication, ctx: MapContext) -> tuple[str, CommunicationDraft | None]:
    if comm.resource_type != "Communication":
        raise _NotCommon
    status = as_str(comm.status)
    patient_id = _patient_of(comm.subject)
    if status is None or patient_id is None:
        raise _NotCommon
    if status == "entered-in-error":
        return patient_id, None  # ignored before anything else is read: only the patient is known
    ident = comm.id
    if not _is_plain_id(ident) or comm.contained is not None:
        raise _NotCommon
    systems = ctx.systems
    period_start = period_end = None
    for extension in comm.extension or ():
        url = extension.url
        if url == systems.care_program_ext:
            raise _NotCommon  # an attribution: read (and checked) by the tolerant path
        if url == systems.activity_period_ext and period_start is None:
            period = extension.value_period
            if period is None or period.start is None:
                raise _NotCommon
            period_start = parse_moment(period.start, ctx.tz, "activity-period start")
            if period.end is not None:
                period_end = parse_moment(period.end, ctx.tz, "activity-period end")
                if period_end[0] < period_start[0]:
                    raise _NotCommon
    sent = None if comm.sent is None else parse_moment(comm.sent, ctx.tz, "sent")
    encounter_key = None
    if comm.encounter is not None and (encounter := as_str(comm.encounter.reference)) is not None:
        parts = split_reference(encounter)
        if encounter.startswith("#") or parts is None or parts[0] != "Encounter":
            raise _NotCommon
        encounter_key = f"Encounter/{parts[1]}"
    medium: list[str] = []
    for concept in comm.medium or ():
        for coding in concept.coding or ():
            code = as_str(coding.code)
            if code and coding.system in PARTICIPATION_MODE_SYSTEMS and code not in medium:
                medium.append(sys.intern(code))
    categories = _codes(comm.category or (), COMMUNICATION_CATEGORY_CS)
    sender = _party(comm.sender, patient_id) if comm.sender is not None else None
    recipients = tuple([_party(r, patient_id) for r in comm.recipient or ()])
    content = _codes([comm.topic] if comm.topic is not None else (), systems.rpm_content_cs)
    for code in _codes(comm.reason_code or (), systems.rpm_content_cs):
        if code not in content:
            content.append(code)
    if not _CONTENT_CODES.issuperset(content):
        raise _NotCommon  # the tolerant path drops it with a finding
    notes = [text for item in comm.payload or () if (text := as_str(item.content_string))]
    notes += [text for item in comm.note or () if (text := as_str(item.text))]
    return patient_id, _new_draft(
        (
            ident,  # id
            sys.intern(status),  # status
            tuple(medium),  # medium
            tuple(categories),  # categories
            sender,  # sender
            recipients,  # recipients
            sent,  # sent
            _status_reason(comm.status_reason),  # status_reason
            tuple(content),  # content
            encounter_key,  # encounter_ref
            None,  # program
            tuple(notes),  # notes
            period_start,  # period_start
            period_end,  # period_end
            encounter_key,  # encounter_key
            None,  # contained_encounter
        )
    )


# `CommunicationDraft(...)` with its fields in order, without the named tuple's keyword-taking constructor
# (tests/test_inbound_fast.py compares the drafts both paths make).
_new_draft: Final = functools.partial(tuple.__new__, CommunicationDraft)


def _codes(concepts: Iterable[_Code], system: str) -> list[str]:
    """`inbound_common.codes` over typed concepts: codes under `system`, in order, without repeats."""
    found: list[str] = []
    for concept in concepts:
        for coding in concept.coding or ():
            code = as_str(coding.code)
            if coding.system == system and code is not None and code not in found:
                found.append(sys.intern(code))
    return found


def _party(element: _Reference, patient_id: str) -> PartyRow:
    """`inbound_parties.provisional_party` of a Reference without contained resources."""
    reference, display = element.reference, element.display
    return _referenced(
        reference if type(reference) is str else None, display if type(display) is str else None, patient_id
    )


@functools.lru_cache(maxsize=4096)
def _referenced(reference: str | None, display: str | None, patient_id: str) -> PartyRow:
    """`_party` of a reference and display that are strings or absent (anything else reads as absent).

    A patient's Communications name the same few parties, so the rows are made once (they are tuples)."""
    display = as_str(display)
    reference = as_str(reference)
    if reference is None:
        return PartyKind.UNKNOWN.value, "", display
    if reference.startswith("#"):
        raise _NotCommon
    return referenced_party(reference, display, patient_id)


def _status_reason(concept: _Code | None) -> str | None:
    """`inbound_communication._status_reason`: the first code, else the text."""
    if concept is None:
        return None
    for coding in concept.coding or ():
        code = as_str(coding.code)
        if code:
            return sys.intern(code)
    return as_str(concept.text)


def _time_entry_of(
    obs: _Observation, status: str, ident: str, patient_id: str, system: str, tz: ZoneInfo
) -> tuple[str, Activity] | None:
    """`inbound_observation._time_entry` for a time entry with an effectivePeriod start and end, no
    contained resources and no attribution; None for anything else."""
    period = obs.effective_period
    if period is None or obs.contained is not None or obs.code is None:
        return None
    known = [code for code in _codes([obs.code], system) if code in RPM_ACTIVITY_CODES]
    if not known or period.start is None or period.end is None:
        return None
    try:
        start, start_naive = parse_moment(period.start, tz, "effectivePeriod.start")
        end, end_naive = parse_moment(period.end, tz, "effectivePeriod.end")
        performers = tuple(party_of(_party(p, patient_id)) for p in obs.performer or ())
    except Exception:  # _NotCommon, or a problem reported in its own words by the tolerant path
        return None
    if end < start:
        return None
    notes = tuple(text for item in obs.note or () if (text := as_str(item.text)))
    return patient_id, new_activity(
        resource_type="Observation",
        id=ident,
        kind=ActivityKind.TIME_ENTRY,
        status=status,
        start=start,
        end=end,
        duration_seconds=int((end - start) // _SECOND),
        duration_source="effectivePeriod",
        activity_code=known[0],
        performers=performers,
        program=None,
        naive_time=start_naive or end_naive,
        notes=notes,
    )


_SECOND = timedelta(seconds=1)


# ------------------------------------------------------------------------------------- other resources

# The elements `InboundCollector.add` reads of each resource type it reads for more than its id (besides
# `resourceType` and `id`), for Observation and Communication see above. A line of one of these types is
# decoded into these elements only (the rest of the line is validated and skipped without building
# objects) and given to `add` as a dict of them, so everything is read, checked and reported by the
# tolerant path itself. tests/test_inbound_fast.py records which elements `add` reads of thousands of
# (damaged) resources and fails when one is not listed here.
ELEMENTS_READ: dict[str, tuple[str, ...]] = {
    "Patient": ("name",),
    "Practitioner": ("name",),
    "Organization": ("name",),
    "RelatedPerson": ("patient", "name", "relationship"),
    "Device": ("status", "patient", "type", "deviceName", "manufacturer", "modelNumber"),
    "Consent": (
        "status",
        "patient",
        "category",
        "scope",
        "provision",
        "dateTime",
        "sourceAttachment",
        "sourceReference",
    ),
    "Encounter": ("status", "subject", "period", "length"),
    "ChargeItem": (
        "status",
        "subject",
        "code",
        "identifier",
        "occurrencePeriod",
        "occurrenceDateTime",
        "quantity",
    ),
}


def _elements_struct(resource_type: str, elements: tuple[str, ...]) -> type[msgspec.Struct]:
    """A struct of `id` and `elements`, tagged by resourceType. JSON `null` reads as None, an absent element
    as UNSET: `add` tells the two apart (`"occurrencePeriod" in resource`)."""
    fields = [(name, Any, msgspec.UNSET) for name in ("id", *elements)]
    return msgspec.defstruct(f"_{resource_type}Elements", fields, tag_field="resourceType", tag=resource_type)


_ELEMENTS_DECODER = msgspec.json.Decoder(
    functools.reduce(operator.or_, (_elements_struct(*item) for item in ELEMENTS_READ.items()))
)


def elements_read(line: str | bytes) -> dict[str, Any] | None:
    """The resource of a line of one of the types in ELEMENTS_READ, with only the elements `add` reads;
    None for any other line (another type, not a JSON object, not JSON): read it the usual way."""
    try:
        decoded = _ELEMENTS_DECODER.decode(line)
    except (msgspec.DecodeError, UnicodeError):
        return None
    resource = {"resourceType": decoded.__struct_config__.tag}
    for name in decoded.__struct_fields__:
        value = getattr(decoded, name)
        if value is not _ABSENT:
            resource[name] = value
    return resource
