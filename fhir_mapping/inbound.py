"""Inbound FHIR R4 JSON → per-patient domain records (contract sections 1-2, the reading side).

Resources are plain dicts, read tolerantly: a vendor quirk never rejects a whole resource, a malformed one is
reported as a SkippedResource and skipped, and nothing here raises on bad input.

`InboundCollector` accepts resources in any order (Bulk NDJSON arrives type by type, a Bundle in any
order). Each Observation is reduced to a compact Reading or Activity as it arrives; Communications keep a
small draft until `finish()`, when the Encounters, RelatedPersons and Devices they name are all known.

Choices where the contract is open (see the module docstrings of fhirtime and the extractors, too):
- The same resource (type and id) read twice: the later copy replaces the earlier one.
- A Communication whose status is neither completed, not-done nor entered-in-error is kept with its status.
- Non-fatal findings (an Encounter not found, an unknown code in the project's systems, a ChargeItem kept
  without its occurrence) and every skipped resource of a patient are listed in that patient's
  `PatientRecords.extra_flags`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone, tzinfo
from operator import attrgetter, lt, methodcaller
from typing import Any

from billing.model import (
    Activity,
    ConsentRecord,
    DeviceRecord,
    ExistingCharge,
    PatientRecords,
    Reading,
)
from billing.periods import zone
from fhir_mapping.canon import CANON, CARE_PROGRAM_CODES
from fhir_mapping.inbound_common import Json, MapContext, Systems, as_list, as_str, human_name, patient_of
from fhir_mapping.inbound_communication import (
    CommunicationDraft,
    CommunicationTimes,
    communication_activity,
    communication_times,
    map_communication,
)
from fhir_mapping.inbound_fast import elements_read, fast_communication, fast_reading
from fhir_mapping.inbound_observation import map_observation
from fhir_mapping.inbound_parties import PartyRow, party_of, party_row, resolve_party
from fhir_mapping.inbound_records import (
    DeviceInfo,
    EncounterInfo,
    RelatedPersonInfo,
    map_charge_item,
    map_consent,
    map_device,
    map_encounter,
    map_related_person,
)
from fhir_mapping.issues import MappingError, SkippedResource, quote

__all__ = ["InboundCollector", "PatientRecordsMap", "SkippedResource"]

# The element naming the patient a resource belongs to.
_OWNER_FIELD = {
    "Observation": "subject",
    "Communication": "subject",
    "ChargeItem": "subject",
    "Encounter": "subject",
    "Consent": "patient",
    "Device": "patient",
    "RelatedPerson": "patient",
}
# How the resource type of an NDJSON line usually reads (see `add_line`).
_TEXT_MARKS = ('"Observation"', '"Communication"')
_BYTE_MARKS = (b'"Observation"', b'"Communication"')
# Resource types read only for a name to show in the log.
_NAMED_TYPES = frozenset({"Practitioner", "Organization"})


@dataclass(slots=True)
class _PatientAcc:
    """What has been read for one patient so far, keyed by resource id so a re-read copy replaces the old."""

    display_name: str | None = None
    consents: dict[str, ConsentRecord] = field(default_factory=dict)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    readings: dict[str, Reading] = field(default_factory=dict)
    time_entries: dict[str, Activity] = field(default_factory=dict)
    drafts: dict[str, CommunicationDraft] = field(default_factory=dict)
    charges: dict[str, ExistingCharge] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)


class InboundCollector:
    """Accepts FHIR resources one at a time in ANY order and, at finish(), returns per-patient records."""

    def __init__(self, timezone: str = "America/New_York", canon: str = CANON) -> None:
        self._ctx = MapContext(zone(timezone), Systems.for_canon(canon))
        self._rpm_activity_cs = self._ctx.systems.rpm_activity_cs  # read for every line (add_line)
        self._patients: dict[str, _PatientAcc] = {}
        self._skipped: list[SkippedResource] = []
        self._encounters: dict[str, EncounterInfo] = {}
        self._related: dict[str, RelatedPersonInfo] = {}
        self._devices: dict[str, DeviceInfo] = {}
        self._names: dict[str, str] = {}
        self._unnamed = itertools.count()
        self._handlers: dict[str, Callable[[Json, str, str | None, str | None], None]] = {
            "Patient": self._patient_resource,
            "Consent": self._consent,
            "Device": self._device,
            "Observation": self._observation,
            "Communication": self._communication,
            "ChargeItem": self._charge_item,
            "Encounter": self._encounter,
            "RelatedPerson": self._related_person,
        }

    # ------------------------------------------------------------------------------------------ input

    def add(self, resource: object) -> None:
        """Read one resource. Never raises on bad input: it is recorded as a SkippedResource."""
        if not isinstance(resource, dict):
            self._skip("?", "", f"is not a JSON object (got {type(resource).__name__})", None)
            return
        resource_type = resource.get("resourceType")
        ident = resource.get("id")
        ident = ident if isinstance(ident, str) else ""
        if not isinstance(resource_type, str) or not resource_type:
            self._skip("?", ident, "has no resourceType", None)
            return
        if resource_type == "Bundle":
            self.add_bundle(resource)
            return
        handler = self._handlers.get(resource_type)
        if handler is None:
            if resource_type in _NAMED_TYPES and ident and (name := human_name(resource)):
                self._names[f"{resource_type}/{ident}"] = name
            return  # a type the contract does not read: ignored quietly
        owner_field = _OWNER_FIELD.get(resource_type)
        patient_id, problem = patient_of(resource, owner_field) if owner_field else (ident or None, None)
        try:
            handler(resource, ident, patient_id, problem)
        except MappingError as err:
            self._skip(resource_type, ident, str(err), patient_id)
        except Exception as err:  # a bug or a shape nobody foresaw must not stop the run
            problem = f"could not be read ({type(err).__name__}: {quote(str(err))})"
            self._skip(resource_type, ident, problem, patient_id)

    def add_line(self, line: str | bytes) -> bool:
        """Read one NDJSON line through the typed fast path (see `inbound_fast`).

        True: the line was recorded exactly as `add` of its parsed resource would have recorded it: a device
        reading, a time entry or a Communication in the common shape, one whose status is ignored, or a
        resource of another type that `add` reads (given to it with only the elements it reads).
        False: nothing was recorded; parse the line and `add` it.
        """
        # Which decoder to try, from a glance at the text (the decoded resourceType decides).
        marks: tuple[Any, Any] = _BYTE_MARKS if isinstance(line, bytes) else _TEXT_MARKS
        if marks[0] in line:
            reading = fast_reading(line, self._rpm_activity_cs, self._ctx.tz)
            if reading is not None:
                patient_id, found = reading
                acc = self._patients.get(patient_id)
                if acc is None:
                    acc = self._patients[patient_id] = _PatientAcc()
                if isinstance(found, Reading):
                    acc.readings[found.id] = found
                elif found is not None:  # a time entry
                    acc.time_entries[found.id] = found
                return True
            return False
        if marks[1] in line:
            communication = fast_communication(line, self._ctx)
            if communication is not None:
                patient_id, draft = communication
                acc = self._acc(patient_id)
                if draft is not None:
                    acc.drafts[draft.id] = draft
                return True
            return False
        # Any other type: only the elements `add` reads are decoded (see inbound_fast.ELEMENTS_READ).
        resource = elements_read(line)
        if resource is None:
            return False
        self.add(resource)
        return True

    def add_bundle(self, bundle: object) -> None:
        """Read every `entry.resource` of a Bundle (searchset, collection, transaction, ...)."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            self._skip("Bundle", "", "is not a Bundle", None)
            return
        for position, entry in enumerate(as_list(bundle.get("entry"))):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None:
                ident = as_str(bundle.get("id")) or ""
                self._skip("Bundle", ident, f"entry {position} has no resource", None)
                continue
            self.add(resource)

    # --------------------------------------------------------------------------------------- handlers

    def _patient_resource(self, resource: Json, ident: str, patient_id: str | None, _: str | None) -> None:
        if not ident:
            raise MappingError("Patient has no id")
        self._acc(ident).display_name = human_name(resource)

    def _consent(self, resource: Json, ident: str, patient_id: str | None, _: str | None) -> None:
        notes: list[str] = []
        record = map_consent(resource, self._ctx, notes)
        if patient_id is not None:
            acc = self._acc(patient_id)
            acc.flags.extend(notes)
            if record is not None:
                acc.consents[self._key(ident)] = record

    def _device(self, resource: Json, ident: str, patient_id: str | None, _: str | None) -> None:
        mapped = map_device(resource)
        if mapped is None:
            return
        record, owner = mapped
        if not ident:
            raise MappingError("Device has no id (nothing can reference it)")
        self._devices[ident] = DeviceInfo(owner, record.display)
        if record.display:
            self._names[f"Device/{ident}"] = record.display
        if owner is not None:
            self._acc(owner).devices[ident] = record

    def _observation(self, resource: Json, ident: str, patient_id: str | None, problem: str | None) -> None:
        # The bulk of a month's data: the helpers are inlined.
        if patient_id is None:
            raise MappingError(problem or "has no patient reference")
        mapped = map_observation(resource, patient_id, self._ctx)
        acc = self._patients.get(patient_id)
        if acc is None:
            acc = self._patients[patient_id] = _PatientAcc()
        if mapped is None:
            return
        key = ident or f"#{next(self._unnamed)}"
        if isinstance(mapped, Reading):
            acc.readings[key] = mapped
            program = mapped.program
        else:
            acc.time_entries[key] = mapped
            program = mapped.program
        if program is not None:
            self._check_program(acc, f"Observation/{ident}", program)

    def _communication(self, resource: Json, ident: str, patient_id: str | None, problem: str | None) -> None:
        patient_id = self._require_patient(patient_id, problem)
        notes: list[str] = []
        draft = map_communication(resource, patient_id, self._ctx, notes)
        acc = self._acc(patient_id)
        acc.flags.extend(notes)
        if draft is not None:
            acc.drafts[self._key(ident)] = draft
            self._check_program(acc, f"Communication/{ident}", draft.program)

    def _charge_item(self, resource: Json, ident: str, patient_id: str | None, problem: str | None) -> None:
        patient_id = self._require_patient(patient_id, problem)
        notes: list[str] = []
        charge = map_charge_item(resource, self._ctx, notes)
        acc = self._acc(patient_id)
        acc.flags.extend(notes)
        if charge is not None:
            acc.charges[self._key(ident)] = charge

    def _encounter(self, resource: Json, ident: str, patient_id: str | None, _: str | None) -> None:
        if patient_id is not None:
            self._acc(patient_id)
        if ident:
            self._encounters[f"Encounter/{ident}"] = map_encounter(resource, self._ctx)

    def _related_person(self, resource: Json, ident: str, patient_id: str | None, _: str | None) -> None:
        if patient_id is not None:
            self._acc(patient_id)
        if ident:
            info = map_related_person(resource)
            self._related[ident] = info
            if info.display:
                self._names[f"RelatedPerson/{ident}"] = info.display

    # ---------------------------------------------------------------------------------------- helpers

    def _acc(self, patient_id: str) -> _PatientAcc:
        acc = self._patients.get(patient_id)
        if acc is None:
            acc = self._patients[patient_id] = _PatientAcc()
        return acc

    def _key(self, ident: str) -> str:
        """Dedupe key: the id; a resource without an id never replaces another."""
        return ident or f"#{next(self._unnamed)}"

    @staticmethod
    def _require_patient(patient_id: str | None, problem: str | None) -> str:
        if patient_id is None:
            raise MappingError(problem or "has no patient reference")
        return patient_id

    @staticmethod
    def _check_program(acc: _PatientAcc, where: str, program: str | None) -> None:
        if program is not None and program not in CARE_PROGRAM_CODES:
            acc.flags.append(
                f"{where}: care-program {quote(program)} is not one of {', '.join(CARE_PROGRAM_CODES)}; "
                "treated as another program"
            )

    def _skip(self, resource_type: str, ident: str, problem: str, patient_id: str | None) -> None:
        skipped = SkippedResource(resource_type, ident, problem, patient_id)
        self._skipped.append(skipped)
        if patient_id is not None:
            self._acc(patient_id).flags.append(str(skipped))

    # ----------------------------------------------------------------------------------------- output

    def finish(self) -> tuple[PatientRecordsMap, list[SkippedResource]]:
        """Per-patient records (sorted, so the result does not depend on input order) and skipped resources.

        May be called more than once; it does not change what was collected, and what it returns does not
        change when more is added later. A patient's records are built when they are read from the mapping
        (see PatientRecordsMap).
        """
        skipped = list(self._skipped)
        parts: dict[str, _RecordParts] = {}
        for patient_id in sorted(self._patients):
            parts[patient_id] = self._parts(patient_id, self._patients[patient_id], skipped)
        return PatientRecordsMap(parts), skipped

    def _parts(self, patient_id: str, acc: _PatientAcc, skipped: list[SkippedResource]) -> _RecordParts:
        flags = list(acc.flags)
        resolved: dict[PartyRow, PartyRow] = {}  # a patient's Communications name the same few parties

        def resolve(party: PartyRow) -> PartyRow:
            found = resolved.get(party)
            if found is None:
                found = resolved[party] = resolve_party(
                    party, patient_id, self._related, self._devices, self._names
                )
            return found

        communications: list[_FinishedCommunication] = []
        for draft in acc.drafts.values():
            try:
                times = communication_times(draft, self._encounters, flags)
            except MappingError as err:
                late = SkippedResource("Communication", draft.id, str(err), patient_id)
                skipped.append(late)
                flags.append(str(late))
                continue
            sender = resolve(draft.sender) if draft.sender is not None else None
            communications.append((draft, times, sender, tuple(map(resolve, draft.recipients))))
        return _RecordParts(
            patient_id=patient_id,
            consents=tuple(sorted(acc.consents.values(), key=lambda c: (_order(c.start), c.id))),
            devices=tuple(sorted(acc.devices.values(), key=lambda d: d.id)),
            readings=tuple(acc.readings.values()),
            time_entries=tuple(_time_entry_parties(entry, resolve) for entry in acc.time_entries.values()),
            communications=tuple(communications),
            charges=tuple(
                sorted(acc.charges.values(), key=lambda c: (c.code, _order(c.period_start), c.id or ""))
            ),
            display_name=acc.display_name,
            extra_flags=tuple(sorted(set(flags))),
        )


def _order(moment: datetime | None) -> tuple[bool, float]:
    """Sort key putting unknown times last."""
    return (moment is None, _timestamp(moment) if moment is not None else 0.0)


# A time entry as finish() leaves it: the Activity and its sender, recipients and performers resolved.
_FinishedTimeEntry = tuple[Activity, PartyRow | None, tuple[PartyRow, ...], tuple[PartyRow, ...]]


def _time_entry_parties(activity: Activity, resolve: Callable[[PartyRow], PartyRow]) -> _FinishedTimeEntry:
    """Resolve a time entry's RelatedPerson and Device parties now that everything has been read."""
    sender = resolve(party_row(activity.sender)) if activity.sender is not None else None
    recipients = tuple(map(resolve, map(party_row, activity.recipients)))
    return activity, sender, recipients, tuple(map(resolve, map(party_row, activity.performers)))


def _time_entry(finished: _FinishedTimeEntry) -> Activity:
    """The time entry with its resolved parties (the same Activity when none changed)."""
    activity, sender_row, recipient_rows, performer_rows = finished
    sender = party_of(sender_row) if sender_row is not None else None
    recipients = tuple(map(party_of, recipient_rows))
    performers = tuple(map(party_of, performer_rows))
    if (sender, recipients, performers) == (activity.sender, activity.recipients, activity.performers):
        return activity
    return activity.with_parties(sender, recipients, performers)


def _activity_order(activity: Activity) -> tuple[tuple[bool, float], str, str]:
    return _order(activity.start), activity.resource_type, activity.id


def _in_time_order(readings: tuple[Reading, ...]) -> list[Reading]:
    """Readings by time, the same time by id, else as given (a stable sort by `(time, id)`).

    Aware datetimes with different UTC offsets compare as the instants they are, but each such comparison
    asks both for their offset; a patient's readings carry two or three offsets (DST, UTC). So the sort
    keys are the times in UTC, made once each, in C (`astimezone`), with the position as the last key.
    Readings mostly come in time order: strictly increasing times need no sort (no two are equal, so no id
    decides), and one comparison per reading tells.
    """
    times = list(map(_TIME, readings))
    if all(map(lt, times, itertools.islice(times, 1, None))):
        return list(readings)
    try:
        utc = list(map(_IN_UTC, times))
    except OverflowError:  # a time within hours of year 1 or 9999: compare the times themselves
        return sorted(readings, key=_TIME_THEN_ID)
    keys = sorted(zip(utc, map(_ID, readings), range(len(readings)), strict=True))
    return [readings[key[2]] for key in keys]


_TIME = attrgetter("time")
_TIME_THEN_ID = attrgetter("time", "id")
_ID = attrgetter("id")
_IN_UTC = methodcaller("astimezone", UTC)
_START_TYPE_ID = attrgetter("start", "resource_type", "id")  # `_activity_order` when every start is known


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_IN: dict[tzinfo | None, datetime] = {}


def _timestamp(moment: datetime) -> float:
    """`moment.timestamp()`, the same float, several times faster for the fixed offsets FHIR times carry.

    For an aware datetime, timestamp() is `(moment - epoch).total_seconds()`; with the epoch expressed in the
    moment's own fixed-offset tzinfo the subtraction needs no UTC offsets and gives the same timedelta.
    """
    zone = moment.tzinfo
    epoch = _EPOCH_IN.get(zone)
    if epoch is None:
        if type(zone) is not timezone:
            return moment.timestamp()
        epoch = _EPOCH_IN[zone] = _EPOCH.astimezone(zone)
    if epoch.tzinfo is not zone:  # an equal offset held by another object: the subtraction would convert
        return moment.timestamp()
    return (moment - epoch).total_seconds()


# A Communication as finish() leaves it: its draft, its times, its resolved sender and recipients. The
# Activity is built with the patient's records.
_FinishedCommunication = tuple[CommunicationDraft, CommunicationTimes, PartyRow | None, tuple[PartyRow, ...]]


@dataclass(frozen=True, slots=True)
class _RecordParts:
    """One patient's records as `finish()` leaves them: final, but readings not yet sorted and Communications
    still rows (a month's Activities for every patient at once would cost much of the memory a run needs)."""

    patient_id: str
    consents: tuple[ConsentRecord, ...]
    devices: tuple[DeviceRecord, ...]
    readings: tuple[Reading, ...]  # in the order read; sorted when the records are built
    time_entries: tuple[_FinishedTimeEntry, ...]
    communications: tuple[_FinishedCommunication, ...]
    charges: tuple[ExistingCharge, ...]
    display_name: str | None
    extra_flags: tuple[str, ...]

    def records(self) -> PatientRecords:
        readings = _in_time_order(self.readings)
        activities = [_time_entry(entry) for entry in self.time_entries]
        for draft, times, sender, recipients in self.communications:
            activities.append(communication_activity(draft, times, sender, recipients))
        if all(activity.start is not None for activity in activities):  # always, as the mapper builds them
            activities.sort(key=_START_TYPE_ID)
        else:
            activities.sort(key=_activity_order)
        return PatientRecords(
            patient_id=self.patient_id,
            consents=self.consents,
            devices=self.devices,
            readings=tuple(readings),
            activities=tuple(activities),
            charges=self.charges,
            display_name=self.display_name,
            extra_flags=self.extra_flags,
        )


class PatientRecordsMap(Mapping[str, PatientRecords]):
    """Patient id -> PatientRecords, in patient id order, built when read.

    A patient's records are built (readings sorted, Communications made Activities) when that patient is
    asked for, so evaluating patients one after another never holds every Activity of the month at once.
    Each read builds the records afresh (equal every time); nothing collected later changes them.
    """

    def __init__(self, parts: dict[str, _RecordParts]) -> None:
        self._parts = parts

    def __getitem__(self, patient_id: str) -> PatientRecords:
        return self._parts[patient_id].records()

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"PatientRecordsMap({list(self._parts)!r})"
