"""Domain records: what the billing rules need to know about one patient, and nothing about FHIR.

`fhir_mapping` turns FHIR JSON into these records; `billing` decides on them. All datetimes are
timezone-aware (a time read without an offset was placed in the practice time zone by the mapper, which
then sets `naive_time` so the engine can flag it).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar


class PartyKind(StrEnum):
    """Who took part in a communication, resolved from a FHIR reference."""

    PATIENT = "patient"  # the patient themself
    CAREGIVER = "caregiver"  # RelatedPerson of this patient with a recorded relationship
    RELATED_PERSON = "related-person"  # RelatedPerson not verifiable as this patient's caregiver
    PRACTITIONER = "practitioner"
    PRACTITIONER_ROLE = "practitioner-role"
    AI_SYSTEM = "ai-system"  # a Device without a patient: an automated calling system
    DEVICE = "device"  # a patient's own device (not a conversation partner)
    ORGANIZATION = "organization"
    OTHER_PATIENT = "other-patient"
    UNKNOWN = "unknown"  # unresolvable or unsupported reference

    @property
    def is_patient_side(self) -> bool:
        return self in (PartyKind.PATIENT, PartyKind.CAREGIVER)

    @property
    def is_staff(self) -> bool:
        return self in (PartyKind.PRACTITIONER, PartyKind.PRACTITIONER_ROLE)


@dataclass(frozen=True, slots=True)
class Party:
    kind: PartyKind
    reference: str  # e.g. "Practitioner/nurse-1"; "" when the resource had only a display
    display: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """An RPM Consent that passed the contract's selection (scope, category, provision type)."""

    id: str
    status: str  # "active" or "inactive"
    start: datetime | None  # provision.period.start, else dateTime; None: no usable start
    end: datetime | None  # exclusive instant; a date-only end already extended to the next local midnight
    method: str  # "written" | "verbal"
    recorded: datetime | None = None  # Consent.dateTime
    naive_time: bool = False

    @property
    def revoked_without_end(self) -> bool:
        """Inactive with no end date: the revocation time is unknown, so it cannot be counted."""
        return self.status == "inactive" and self.end is None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    status: str | None
    type_code: str | None = None  # first Device.type coding as "system|code"
    type_display: str | None = None
    display: str | None = None  # manufacturer/model for the log


class Reading(NamedTuple):
    """A device Observation (a physiologic reading), reduced to what the day count needs.

    A named tuple rather than a frozen dataclass, unlike the other records: readings are four in five of a
    month's resources, and a tuple costs a fraction of a frozen dataclass to build (no guarded
    `object.__setattr__` per field) and, holding plain values only, is dropped from the garbage collector's
    watch while the rest of the month is read. It is as immutable, and is read by attribute the same way.
    """

    id: str
    time: datetime
    device_id: str | None  # None: no Observation.device (patient-reported)
    identifier: str | None = None  # "system|value" dedupe key
    program: str | None = None  # care-program extension code; None means no attribution (RPM)
    naive_time: bool = False
    code_display: str | None = None


class ActivityKind(StrEnum):
    COMMUNICATION = "communication"
    TIME_ENTRY = "time-entry"


@dataclass(frozen=True)
class Activity:
    """A Communication (contact or attempt) or an RPM time-entry Observation.

    Time: `start` is what places it in a month and is tested against consent. Duration: either an
    interval (`start`..`end`), or a length only (`duration_seconds` with `end` None), or unknown
    (`duration_seconds` None).

    Without `__slots__`, unlike the other records, so that `new_activity` can build one from a dict (the
    mapper builds one per Communication and time entry of a month).
    """

    resource_type: str  # "Communication" | "Observation"
    id: str
    kind: ActivityKind
    status: str
    start: datetime | None
    end: datetime | None = None
    duration_seconds: int | None = None
    duration_source: str | None = (
        None  # "activity-period" | "encounter" | "effectivePeriod" | "valueQuantity"
    )
    # Communication
    medium: tuple[str, ...] = ()  # v3-ParticipationMode codes
    categories: tuple[str, ...] = ()  # communication-category codes
    sender: Party | None = None
    recipients: tuple[Party, ...] = ()
    sent: datetime | None = None
    status_reason: str | None = None
    content: tuple[str, ...] = ()  # rpm-content codes
    encounter_ref: str | None = None
    # Time entry
    activity_code: str | None = None  # rpm-activity code
    performers: tuple[Party, ...] = ()
    # Both
    program: str | None = None  # care-program attribution; None means RPM
    naive_time: bool = False
    notes: tuple[str, ...] = ()  # free text for the log (never parsed to decide anything)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def has_interval(self) -> bool:
        return self.start is not None and self.end is not None

    def with_parties(
        self, sender: Party | None, recipients: tuple[Party, ...], performers: tuple[Party, ...]
    ) -> Activity:
        """This activity with other parties: `dataclasses.replace`, without its generic (and, for the
        thousands of time entries of a month, slow) path."""
        return frozen_from_fields(
            Activity, {**self.__dict__, "sender": sender, "recipients": recipients, "performers": performers}
        )


def new_activity(**values: Any) -> Activity:
    """`Activity(**values)`: the same object, built without the frozen dataclass `__init__`, which pays a
    guarded `object.__setattr__` per field (3.5 against 0.6 us for a Communication's 19 fields; the mapper
    builds one per Communication and time entry of a month). Unknown names are refused like the constructor
    refuses them. tests/test_model.py keeps it in step with the constructor.
    """
    if not (values.keys() <= _ACTIVITY_FIELDS and values.keys() >= _ACTIVITY_REQUIRED):  # subset tests
        unknown = values.keys() - _ACTIVITY_FIELDS
        if unknown:
            raise TypeError(f"Activity has no field {sorted(unknown)[0]!r}")
        raise TypeError(f"Activity needs {sorted(_ACTIVITY_REQUIRED - values.keys())[0]!r}")
    return frozen_from_fields(Activity, {**_ACTIVITY_DEFAULTS, **values})


_Frozen = TypeVar("_Frozen")


def frozen_from_fields(cls: type[_Frozen], values: dict[str, Any]) -> _Frozen:
    """`cls(**values)` for a frozen dataclass without slots whose `values` name every field in order: the
    same object, its `__dict__` set at once instead of the frozen `__init__`'s guarded `object.__setattr__`
    per field. For the records built by the thousand (Activities, their outcomes, windows, code lines);
    each builder has a test keeping it equal to the constructor."""
    built = object.__new__(cls)
    object.__setattr__(built, "__dict__", values)
    return built


@dataclass(frozen=True, slots=True)
class ExistingCharge:
    """A ChargeItem already on the server for this patient (any CPT code)."""

    id: str | None
    code: str  # CPT code
    status: str
    period_start: datetime | None = None  # occurrence (period start or dateTime)
    period_end: datetime | None = None  # exclusive
    charge_key: str | None = None  # identifier value under CANON/charge-key, if ours
    quantity: int | None = None


@dataclass(frozen=True)
class PatientRecords:
    """Everything read for one patient, ready for the engine."""

    patient_id: str
    consents: tuple[ConsentRecord, ...] = ()
    devices: tuple[DeviceRecord, ...] = ()
    readings: tuple[Reading, ...] = ()
    activities: tuple[Activity, ...] = ()
    charges: tuple[ExistingCharge, ...] = ()
    display_name: str | None = None
    extra_flags: tuple[str, ...] = field(default=())  # mapper findings to surface (e.g. skipped resources)


_ACTIVITY_DEFAULTS: dict[str, Any] = {
    f.name: (f.default if f.default is not MISSING else None) for f in fields(Activity)
}
_ACTIVITY_FIELDS = frozenset(_ACTIVITY_DEFAULTS)
_ACTIVITY_REQUIRED = frozenset(
    f.name for f in fields(Activity) if f.default is MISSING and f.default_factory is MISSING
)
