"""Communication → contact or attempt Activity.

A Communication's duration may come from an Encounter, and its parties from RelatedPersons and Devices, that
arrive later, so mapping is in steps: `map_communication` reads everything the resource itself holds into a
`CommunicationDraft`; once all resources are read, `communication_times` adds the Encounter's times (or finds
that the Communication has no time at all), the collector resolves the parties, and `communication_activity`
builds the Activity (once: it is a large record, built only when the patient's records are).

Interactive or not is the engine's decision; free text (payload, notes) is carried for the log only.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from billing.model import Activity, ActivityKind, new_activity
from fhir_mapping.canon import COMMUNICATION_CATEGORY_CS, PARTICIPATION_MODE_CS, RPM_CONTENT_CODES
from fhir_mapping.fhirtime import parse_moment
from fhir_mapping.inbound_common import (
    Json,
    MapContext,
    as_dict,
    as_list,
    as_str,
    codes,
    codings,
    contained_map,
    dicts,
    find_extension,
    program_of,
    reference_of,
    split_reference,
)
from fhir_mapping.inbound_parties import PartyRow, party_of, provisional_party
from fhir_mapping.inbound_records import EncounterInfo, map_encounter
from fhir_mapping.issues import MappingError, quote

# v3 ParticipationMode under its current URL, its OID, and the pre-R4 URL some systems still send.
PARTICIPATION_MODE_SYSTEMS = (
    PARTICIPATION_MODE_CS,
    "urn:oid:2.16.840.1.113883.5.1064",
    "http://hl7.org/fhir/v3/ParticipationMode",
)


# A time as (instant, read without an offset).
Moment = tuple[datetime, bool]


class CommunicationDraft(NamedTuple):
    """A Communication read from the resource alone: what its Activity needs but the times that depend on its
    Encounter and the final parties (the collector keeps it until finish)."""

    id: str
    status: str
    medium: tuple[str, ...]
    categories: tuple[str, ...]
    sender: PartyRow | None  # provisional (see inbound_parties)
    recipients: tuple[PartyRow, ...]
    sent: Moment | None
    status_reason: str | None
    content: tuple[str, ...]
    encounter_ref: str | None
    program: str | None
    notes: tuple[str, ...]
    period_start: Moment | None  # activity-period extension
    period_end: Moment | None
    encounter_key: str | None  # "Encounter/<id>" to look up once everything is read
    contained_encounter: EncounterInfo | None  # an Encounter found (or not) among `contained`


def map_communication(
    resource: Json, patient_id: str, ctx: MapContext, notes: list[str]
) -> CommunicationDraft | None:
    """A draft, or None for an entered-in-error Communication (ignored quietly).

    Every other status is kept (in-progress, preparation, ...) with its status: the engine treats only
    completed and not-done as contacts and attempts.
    """
    status = as_str(resource.get("status"))
    if status is None:
        raise MappingError("has no status")
    if status == "entered-in-error":
        return None
    ident = as_str(resource.get("id")) or ""
    period_start, period_end = _activity_period(resource, ctx)
    sent_value = resource.get("sent")
    sent = None if sent_value is None else parse_moment(sent_value, ctx.tz, "sent")
    encounter_ref, encounter_key, contained_encounter = _encounter(resource, ctx)
    contained = contained_map(resource) if "contained" in resource else {}
    sender = resource.get("sender")
    # Read in the order the fields were always read, so the first problem found stays the one reported.
    medium = _medium(resource)
    categories = tuple(codes(resource.get("category"), COMMUNICATION_CATEGORY_CS))
    sender_party = provisional_party(sender, patient_id, contained) if isinstance(sender, dict) else None
    recipients = tuple(provisional_party(r, patient_id, contained) for r in dicts(resource.get("recipient")))
    status_reason = _status_reason(resource.get("statusReason"))
    content = _content(resource, ident, ctx, notes)
    program = program_of(resource, ctx) if "extension" in resource else None
    return CommunicationDraft(
        id=ident,
        status=sys.intern(status),  # a handful of statuses, thousands of Communications
        medium=medium,
        categories=categories,
        sender=sender_party,
        recipients=recipients,
        sent=sent,
        status_reason=status_reason,
        content=content,
        encounter_ref=encounter_ref,
        program=program,
        notes=_notes(resource),
        period_start=period_start,
        period_end=period_end,
        encounter_key=encounter_key,
        contained_encounter=contained_encounter,
    )


def _activity_period(resource: Json, ctx: MapContext) -> tuple[Moment | None, Moment | None]:
    extension = find_extension(resource, ctx.systems.activity_period_ext)
    if extension is None:
        return None, None
    period = as_dict(extension.get("valuePeriod"))
    if period is None:
        raise MappingError("activity-period extension has no valuePeriod")
    if period.get("start") is None:
        raise MappingError("activity-period extension has no start")
    start = parse_moment(period["start"], ctx.tz, "activity-period start")
    end_value = period.get("end")
    end = None if end_value is None else parse_moment(end_value, ctx.tz, "activity-period end")
    if end is not None and end[0] < start[0]:
        raise MappingError(
            f"activity-period end {quote(period.get('end'))} is before its start {quote(period.get('start'))}"
        )
    return start, end


def _encounter(resource: Json, ctx: MapContext) -> tuple[str | None, str | None, EncounterInfo | None]:
    """(reference as written/normalized, key to resolve later, contained Encounter if `#id`)."""
    reference = reference_of(resource.get("encounter"))
    if reference is None:
        return None, None, None
    if reference.startswith("#"):
        found = contained_map(resource).get(reference[1:])
        if found is None or found.get("resourceType") != "Encounter":
            return (
                reference,
                None,
                EncounterInfo(None, None, problem=f"contained {reference} is not an Encounter"),
            )
        return reference, None, map_encounter(found, ctx)
    parts = split_reference(reference)
    if parts is None or parts[0] != "Encounter":
        problem = f"encounter {quote(reference)} is not an Encounter reference"
        return reference, None, EncounterInfo(None, None, problem=problem)
    key = f"Encounter/{parts[1]}"
    return key, key, None


def _medium(resource: Json) -> tuple[str, ...]:
    """All ParticipationMode codes of all medium entries, in order, without repeats."""
    found: list[str] = []
    for concept in as_list(resource.get("medium")):
        for coding in codings(concept):
            code = as_str(coding.get("code"))
            if code and coding.get("system") in PARTICIPATION_MODE_SYSTEMS and code not in found:
                found.append(sys.intern(code))
    return tuple(found)


def _status_reason(concept: object) -> str | None:
    """statusReason's first code, else its text."""
    for coding in codings(concept):
        code = as_str(coding.get("code"))
        if code:
            return sys.intern(code)
    found = as_dict(concept)
    return as_str(found.get("text")) if found else None


def _content(resource: Json, ident: str, ctx: MapContext, notes: list[str]) -> tuple[str, ...]:
    """rpm-content codes from topic and reasonCode. Unknown codes in that system are dropped with a note."""
    system = ctx.systems.rpm_content_cs
    found: list[str] = []
    for code in codes(resource.get("topic"), system) + codes(resource.get("reasonCode"), system):
        if code not in RPM_CONTENT_CODES:
            notes.append(f"Communication/{ident}: {quote(code)} is not an rpm-content code; ignored")
        elif code not in found:
            found.append(code)
    return tuple(found)


def _notes(resource: Json) -> tuple[str, ...]:
    texts: list[str] = []
    for field, key in (("payload", "contentString"), ("note", "text")):
        for item in as_list(resource.get(field)):
            if isinstance(item, dict) and (text := as_str(item.get(key))):
                texts.append(text)
    return tuple(texts)


# start, end, duration in seconds, where the duration came from, some time read without an offset
CommunicationTimes = tuple[datetime, datetime | None, int | None, str | None, bool]


def communication_times(
    draft: CommunicationDraft, encounters: Mapping[str, EncounterInfo], notes: list[str]
) -> CommunicationTimes:
    """Start and duration from activity-period, else the Encounter, else `sent`.

    Raises MappingError when nothing gives the Communication a time.
    """
    if draft.period_start is not None and draft.period_end is not None:  # most calls and visits
        (first, first_naive), (last, last_naive) = draft.period_start, draft.period_end
        naive_sent = draft.sent is not None and draft.sent[1]
        return first, last, _seconds(last - first), "activity-period", first_naive or last_naive or naive_sent
    naive = [t[1] for t in (draft.period_start, draft.period_end, draft.sent) if t is not None]
    encounter = _find_encounter(draft, encounters, notes)
    sent = draft.sent[0] if draft.sent is not None else None
    period_start = draft.period_start[0] if draft.period_start is not None else None
    start: datetime | None
    end: datetime | None = None
    seconds: int | None = None
    source: str | None = None
    if encounter is None:
        start = period_start or sent
    else:
        naive.append(encounter.naive)
        start = period_start or encounter.start or sent
        seconds = encounter.length_seconds
        source = "encounter" if seconds is not None else None
        end = start + timedelta(seconds=seconds) if start is not None and seconds is not None else None
    if start is None:
        raise MappingError("has no time (no activity-period start, Encounter period.start or sent)")
    return start, end, seconds, source, any(naive)


def communication_activity(
    draft: CommunicationDraft,
    times: CommunicationTimes,
    sender: PartyRow | None,
    recipients: tuple[PartyRow, ...],
) -> Activity:
    """The finished Activity, with its times and its resolved parties."""
    start, end, seconds, source, naive = times
    return new_activity(
        resource_type="Communication",
        id=draft.id,
        kind=ActivityKind.COMMUNICATION,
        status=draft.status,
        start=start,
        end=end,
        duration_seconds=seconds,
        duration_source=source,
        medium=draft.medium,
        categories=draft.categories,
        sender=party_of(sender) if sender is not None else None,
        recipients=tuple(map(party_of, recipients)),
        sent=draft.sent[0] if draft.sent is not None else None,
        status_reason=draft.status_reason,
        content=draft.content,
        encounter_ref=draft.encounter_ref,
        program=draft.program,
        naive_time=naive,
        notes=draft.notes,
    )


def _find_encounter(
    draft: CommunicationDraft, encounters: Mapping[str, EncounterInfo], notes: list[str]
) -> EncounterInfo | None:
    """The usable Encounter of the draft, or None (with a note when one was named but cannot be used)."""
    where = f"Communication/{draft.id}"
    encounter = draft.contained_encounter
    if encounter is None and draft.encounter_key is not None:
        encounter = encounters.get(draft.encounter_key)
        if encounter is None:
            notes.append(f"{where}: {draft.encounter_key} was not found; no duration from an Encounter")
            return None
    if encounter is not None and encounter.problem is not None:
        notes.append(f"{where}: {draft.encounter_ref} not used: {encounter.problem}")
        return None
    return encounter


def _seconds(elapsed: timedelta) -> int:
    return int(elapsed // _SECOND)


_SECOND = timedelta(seconds=1)
