"""Communication → contact or attempt Activity.

A Communication's duration may come from an Encounter that arrives later, so mapping is two-step:
`map_communication` reads everything the resource itself holds into a `CommunicationDraft`;
`complete_communication` adds the Encounter's times once all resources are read.

Interactive or not is the engine's decision; free text (payload, notes) is carried for the log only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from billing.model import Activity, ActivityKind
from fhir_mapping.canon import COMMUNICATION_CATEGORY_CS, PARTICIPATION_MODE_CS, RPM_CONTENT_CODES
from fhir_mapping.fhirtime import FhirTime
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
from fhir_mapping.inbound_parties import provisional_party
from fhir_mapping.inbound_records import EncounterInfo, map_encounter
from fhir_mapping.issues import MappingError, quote

# v3 ParticipationMode under its current URL, its OID, and the pre-R4 URL some systems still send.
PARTICIPATION_MODE_SYSTEMS = (
    PARTICIPATION_MODE_CS,
    "urn:oid:2.16.840.1.113883.5.1064",
    "http://hl7.org/fhir/v3/ParticipationMode",
)


@dataclass(frozen=True, slots=True)
class CommunicationDraft:
    """A Communication read from the resource alone; times that depend on its Encounter are still open."""

    activity: Activity  # start/end/duration not yet set
    period_start: FhirTime | None  # activity-period extension
    period_end: FhirTime | None
    sent: FhirTime | None
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
    sent = ctx.optional_time(resource.get("sent"), "sent")
    encounter_ref, encounter_key, contained_encounter = _encounter(resource, ctx)
    contained = contained_map(resource)
    sender = resource.get("sender")
    activity = Activity(
        resource_type="Communication",
        id=ident,
        kind=ActivityKind.COMMUNICATION,
        status=status,
        start=None,
        medium=_medium(resource),
        categories=tuple(codes(resource.get("category"), COMMUNICATION_CATEGORY_CS)),
        sender=provisional_party(sender, patient_id, contained) if isinstance(sender, dict) else None,
        recipients=tuple(
            provisional_party(r, patient_id, contained) for r in dicts(resource.get("recipient"))
        ),
        sent=sent.moment if sent is not None else None,
        status_reason=_status_reason(resource.get("statusReason")),
        content=_content(resource, ident, ctx, notes),
        encounter_ref=encounter_ref,
        program=program_of(resource, ctx),
        notes=_notes(resource),
    )
    return CommunicationDraft(activity, period_start, period_end, sent, encounter_key, contained_encounter)


def _activity_period(resource: Json, ctx: MapContext) -> tuple[FhirTime | None, FhirTime | None]:
    extension = find_extension(resource, ctx.systems.activity_period_ext)
    if extension is None:
        return None, None
    period = as_dict(extension.get("valuePeriod"))
    if period is None:
        raise MappingError("activity-period extension has no valuePeriod")
    if period.get("start") is None:
        raise MappingError("activity-period extension has no start")
    start = ctx.time(period["start"], "activity-period start")
    end = ctx.optional_time(period.get("end"), "activity-period end")
    if end is not None and end.moment < start.moment:
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
                found.append(code)
    return tuple(found)


def _status_reason(concept: object) -> str | None:
    """statusReason's first code, else its text."""
    for coding in codings(concept):
        code = as_str(coding.get("code"))
        if code:
            return code
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
    texts = [as_str(payload.get("contentString")) for payload in dicts(resource.get("payload"))]
    texts += [as_str(note.get("text")) for note in dicts(resource.get("note"))]
    return tuple(text for text in texts if text)


def complete_communication(
    draft: CommunicationDraft, encounters: Mapping[str, EncounterInfo], notes: list[str]
) -> Activity:
    """The finished Activity: start and duration from activity-period, else the Encounter, else `sent`.

    Raises MappingError when nothing gives the Communication a time.
    """
    activity = draft.activity
    naive = [t.naive for t in (draft.period_start, draft.period_end, draft.sent) if t is not None]
    if draft.period_start is not None and draft.period_end is not None:
        first, last = draft.period_start.moment, draft.period_end.moment
        return replace(
            activity,
            start=first,
            end=last,
            duration_seconds=_seconds(last - first),
            duration_source="activity-period",
            naive_time=any(naive),
        )
    encounter = _find_encounter(draft, encounters, notes)
    sent = draft.sent.moment if draft.sent is not None else None
    period_start = draft.period_start.moment if draft.period_start is not None else None
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
    return replace(
        activity,
        start=start,
        end=end,
        duration_seconds=seconds,
        duration_source=source,
        naive_time=any(naive),
    )


def _find_encounter(
    draft: CommunicationDraft, encounters: Mapping[str, EncounterInfo], notes: list[str]
) -> EncounterInfo | None:
    """The usable Encounter of the draft, or None (with a note when one was named but cannot be used)."""
    where = f"Communication/{draft.activity.id}"
    encounter = draft.contained_encounter
    if encounter is None and draft.encounter_key is not None:
        encounter = encounters.get(draft.encounter_key)
        if encounter is None:
            notes.append(f"{where}: {draft.encounter_key} was not found; no duration from an Encounter")
            return None
    if encounter is not None and encounter.problem is not None:
        notes.append(f"{where}: {draft.activity.encounter_ref} not used: {encounter.problem}")
        return None
    return encounter


def _seconds(elapsed: timedelta) -> int:
    return int(elapsed // timedelta(seconds=1))
