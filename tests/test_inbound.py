"""fhir_mapping.inbound: FHIR R4 JSON → PatientRecords, one table row per mapping rule of the contract."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.model import Activity, ActivityKind, PartyKind, PatientRecords
from fhir_mapping import inbound_observation
from fhir_mapping.canon import CANON
from fhir_mapping.inbound import InboundCollector
from fhir_mapping.issues import SkippedResource

NY = ZoneInfo("America/New_York")
EDT = timezone(timedelta(hours=-4))
EST = timezone(timedelta(hours=-5))
UCUM = "http://unitsofmeasure.org"
MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
CPT = "http://www.ama-assn.org/go/cpt"
SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
DROP = object()  # marks a key to remove in `merged`


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with top-level `changes` applied (DROP removes a key)."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            result.pop(key, None)
        else:
            result[key] = copy.deepcopy(value)
    return result


def coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def program(code: str) -> dict[str, Any]:
    return {
        "url": f"{CANON}/StructureDefinition/care-program",
        "valueCoding": {"system": f"{CANON}/CodeSystem/care-program", "code": code},
    }


def activity_period(start: str, end: str | None = None) -> dict[str, Any]:
    period = {"start": start} if end is None else {"start": start, "end": end}
    return {"url": f"{CANON}/StructureDefinition/activity-period", "valuePeriod": period}


CONSENT = {
    "resourceType": "Consent",
    "id": "cons1",
    "status": "active",
    "scope": coding(SCOPE, "treatment"),
    "category": [coding(f"{CANON}/CodeSystem/care-program", "rpm")],
    "patient": {"reference": "Patient/p1"},
    "dateTime": "2026-02-27T09:00:00-05:00",
    "sourceAttachment": {"contentType": "application/pdf", "title": "signed consent"},
    "provision": {"type": "permit", "period": {"start": "2026-03-01T09:00:00-05:00"}},
}
READING = {
    "resourceType": "Observation",
    "id": "obs1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-03-05T07:30:00-05:00",
    "device": {"reference": "Device/dev1"},
    "valueQuantity": {"value": 72, "unit": "/min", "system": UCUM, "code": "/min"},
}
TIME_ENTRY = {
    "resourceType": "Observation",
    "id": "te1",
    "status": "final",
    "code": coding(f"{CANON}/CodeSystem/rpm-activity", "data-review"),
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2026-03-12T09:00:00-04:00", "end": "2026-03-12T09:12:00-04:00"},
    "performer": [{"reference": "Practitioner/nurse1", "display": "Nurse One"}],
}
CALL = {
    "resourceType": "Communication",
    "id": "call1",
    "status": "completed",
    "medium": [coding(MODE, "PHONE")],
    "subject": {"reference": "Patient/p1"},
    "sender": {"reference": "Practitioner/nurse1"},
    "recipient": [{"reference": "Patient/p1"}],
    "sent": "2026-03-10T14:05:00-04:00",
    "topic": coding(f"{CANON}/CodeSystem/rpm-content", "physiologic-data"),
}
CHARGE = {
    "resourceType": "ChargeItem",
    "id": "ch1",
    "status": "billable",
    "code": coding(CPT, "99454"),
    "subject": {"reference": "Patient/p1"},
    "identifier": [{"system": f"{CANON}/charge-key", "value": "p1|99454|2026-03-01"}],
    "occurrencePeriod": {"start": "2026-03-01T00:00:00-05:00", "end": "2026-03-30T23:59:59-04:00"},
    "quantity": {"value": 1},
}


def collect(*resources: object, timezone_name: str = "America/New_York", canon: str = CANON):
    collector = InboundCollector(timezone_name, canon)
    for resource in resources:
        collector.add(resource)
    return collector.finish()


def patient(*resources: object, patient_id: str = "p1") -> tuple[PatientRecords, list[SkippedResource]]:
    records, skipped = collect(*resources)
    return records[patient_id], skipped


def only_activity(*resources: object) -> Activity:
    records, skipped = patient(*resources)
    assert skipped == []
    assert len(records.activities) == 1
    return records.activities[0]


def assert_skipped(skipped: list[SkippedResource], resource_type: str, ident: str, problem: str) -> None:
    assert len(skipped) == 1, skipped
    assert (skipped[0].resource_type, skipped[0].resource_id) == (resource_type, ident)
    assert problem in skipped[0].problem, skipped[0].problem


# ----------------------------------------------------------------------------------------------- Consent


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {"status": "active", "method": "written", "start": datetime(2026, 3, 1, 9, tzinfo=EST)},
            id="active-permit-written",
        ),
        pytest.param({"sourceAttachment": DROP}, {"method": "verbal"}, id="no-source-is-verbal"),
        pytest.param(
            {"sourceAttachment": DROP, "sourceReference": {"reference": "DocumentReference/d1"}},
            {"method": "written"},
            id="source-reference-is-written",
        ),
        pytest.param(
            {"provision": {"type": "permit"}},
            {"start": datetime(2026, 2, 27, 9, tzinfo=EST)},
            id="start-from-dateTime",
        ),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-01"}}},
            {"start": datetime(2026, 3, 1, tzinfo=NY), "naive_time": False},
            id="date-only-start-local-midnight",
        ),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-01", "end": "2026-03-15"}}},
            {"end": datetime(2026, 3, 16, tzinfo=NY)},
            id="date-only-end-whole-day",
        ),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-01", "end": "2026-03-15T12:00:00-04:00"}}},
            {"end": datetime(2026, 3, 15, 12, 0, 1, tzinfo=EDT)},
            id="end-inclusive-second",
        ),
        pytest.param(
            {"status": "inactive", "provision": {"period": {"start": "2026-03-01", "end": "2026-03-15"}}},
            {"status": "inactive", "end": datetime(2026, 3, 16, tzinfo=NY), "revoked_without_end": False},
            id="inactive-with-end",
        ),
        pytest.param(
            {"status": "inactive"},
            {"status": "inactive", "end": None, "revoked_without_end": True},
            id="inactive-without-end-flaggable",
        ),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-01"}}},
            {"status": "active"},
            id="type-absent-is-permit",
        ),
        pytest.param(
            {
                "category": [coding("http://loinc.org", "59284-0")],
                "provision": {
                    "code": [coding(f"{CANON}/CodeSystem/care-program", "rpm")],
                    "period": {"start": "2026-03-01"},
                },
            },
            {"status": "active"},
            id="rpm-in-provision-code",
        ),
        pytest.param({}, {"recorded": datetime(2026, 2, 27, 9, tzinfo=EST)}, id="recorded-is-dateTime"),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-01T09:00:00"}}},
            {"naive_time": True},
            id="naive-start-flagged",
        ),
    ],
)
def test_consent_selected(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    records, skipped = patient(merged(CONSENT, changes))
    assert skipped == []
    assert len(records.consents) == 1
    consent = records.consents[0]
    for name, value in expected.items():
        assert getattr(consent, name) == value, name


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"provision": {"type": "deny", "period": {"start": "2026-03-01"}}}, id="deny"),
        pytest.param({"category": [coding(f"{CANON}/CodeSystem/care-program", "ccm")]}, id="other-program"),
        pytest.param({"category": [coding("http://loinc.org", "59284-0")]}, id="not-rpm"),
        pytest.param({"status": "draft"}, id="draft"),
        pytest.param({"status": "proposed"}, id="proposed"),
        pytest.param({"status": "rejected"}, id="rejected"),
        pytest.param({"status": "entered-in-error"}, id="entered-in-error"),
        pytest.param({"scope": coding(SCOPE, "patient-privacy")}, id="scope-not-treatment"),
        pytest.param(
            {"category": [coding("http://loinc.org", "59284-0")], "patient": DROP}, id="not-rpm-no-patient"
        ),
    ],
)
def test_consent_ignored_quietly(changes: dict[str, Any]) -> None:
    records, skipped = collect(merged(CONSENT, changes))
    assert skipped == []
    assert all(r.consents == () for r in records.values())


def test_consent_with_wrong_scope_is_explained_in_the_flags() -> None:
    records, _ = patient(merged(CONSENT, {"scope": coding(SCOPE, "research")}))
    assert any("Consent/cons1" in flag and "scope" in flag for flag in records.extra_flags)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"dateTime": DROP, "provision": {"type": "permit"}}, "has no start", id="no-start"),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-32"}}},
            "provision.period.start '2026-03-32'",
            id="bad-start",
        ),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-01", "end": "soon"}}},
            "provision.period.end 'soon'",
            id="bad-end",
        ),
        pytest.param(
            {"provision": {"period": {"start": "2026-03-10", "end": "2026-03-01"}}},
            "before its start",
            id="end-before-start",
        ),
        pytest.param({"dateTime": "2026-02-30"}, "dateTime '2026-02-30'", id="bad-dateTime"),
        pytest.param({"provision": {"type": "maybe"}}, "neither permit nor deny", id="bad-provision-type"),
        pytest.param({"status": DROP}, "has no status", id="no-status"),
    ],
)
def test_rpm_consent_unusable_is_skipped(changes: dict[str, Any], problem: str) -> None:
    records, skipped = patient(merged(CONSENT, changes))
    assert_skipped(skipped, "Consent", "cons1", problem)
    assert skipped[0].patient_id == "p1"
    assert records.consents == ()
    assert any(problem in flag for flag in records.extra_flags)


def test_rpm_consent_without_patient_is_skipped() -> None:
    records, skipped = collect(merged(CONSENT, {"patient": DROP}))
    assert_skipped(skipped, "Consent", "cons1", "has no patient")
    assert records == {}


# ------------------------------------------------------------------------------------------------ Device

DEVICE = {
    "resourceType": "Device",
    "id": "dev1",
    "status": "active",
    "patient": {"reference": "Patient/p1"},
    "type": {
        "coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "528391", "display": "BP monitor"}]
    },
    "deviceName": [{"name": "Home BP cuff", "type": "user-friendly-name"}],
    "manufacturer": "Acme Medical",
    "modelNumber": "BP-200",
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {
                "id": "dev1",
                "status": "active",
                "type_code": "urn:iso:std:iso:11073:10101|528391",
                "type_display": "BP monitor",
                "display": "Home BP cuff, Acme Medical, BP-200",
            },
            id="patient-device",
        ),
        pytest.param({"status": "inactive"}, {"status": "inactive"}, id="inactive-kept"),
        pytest.param(
            {"type": [coding("http://snomed.info/sct", "43770009")]},
            {"type_code": "http://snomed.info/sct|43770009"},
            id="type-as-array-tolerated",
        ),
        pytest.param(
            {"type": DROP, "deviceName": DROP, "manufacturer": DROP, "modelNumber": DROP},
            {"type_code": None, "display": None},
            id="bare-device",
        ),
    ],
)
def test_device(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    records, skipped = patient(merged(DEVICE, changes))
    assert skipped == []
    (device,) = records.devices
    for name, value in expected.items():
        assert getattr(device, name) == value, name


def test_device_without_id_is_skipped() -> None:
    records, skipped = collect(merged(DEVICE, {"id": DROP}))
    assert_skipped(skipped, "Device", "", "Device has no id")
    assert records["p1"].devices == ()


def test_device_entered_in_error_is_dropped_and_device_without_patient_is_nobodys() -> None:
    records, skipped = collect(
        merged(DEVICE, {"status": "entered-in-error"}), merged(DEVICE, {"id": "ai1", "patient": DROP})
    )
    assert skipped == []
    assert records == {}


# ---------------------------------------------------------------------------------------------- Readings


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {
                "id": "obs1",
                "time": datetime(2026, 3, 5, 7, 30, tzinfo=EST),
                "device_id": "dev1",
                "naive_time": False,
                "program": None,
                "identifier": None,
                "code_display": "Heart rate",
            },
            id="final-with-device",
        ),
        pytest.param({"status": "amended"}, {"id": "obs1"}, id="amended"),
        pytest.param({"status": "corrected"}, {"id": "obs1"}, id="corrected"),
        pytest.param({"status": "preliminary"}, {"id": "obs1"}, id="preliminary"),
        pytest.param(
            {"effectiveDateTime": "2026-03-05T12:30:00Z"},
            {"time": datetime(2026, 3, 5, 12, 30, tzinfo=UTC)},
            id="utc",
        ),
        pytest.param(
            {"effectiveDateTime": "2026-03-05T07:30:00"},
            {"time": datetime(2026, 3, 5, 7, 30, tzinfo=NY), "naive_time": True},
            id="naive-time-local",
        ),
        pytest.param(
            {"effectiveDateTime": DROP, "effectiveInstant": "2026-03-05T12:30:00.250Z"},
            {"time": datetime(2026, 3, 5, 12, 30, 0, 250000, tzinfo=UTC)},
            id="effectiveInstant",
        ),
        pytest.param(
            {
                "effectiveDateTime": DROP,
                "effectivePeriod": {"start": "2026-03-05T07:30:00-05:00", "end": "2026-03-05T07:31:00-05:00"},
            },
            {"time": datetime(2026, 3, 5, 7, 30, tzinfo=EST)},
            id="effectivePeriod-start",
        ),
        pytest.param(
            {"effectiveDateTime": "2026-03-05"},
            {"time": datetime(2026, 3, 5, tzinfo=NY), "naive_time": False},
            id="date-only-local-midnight",
        ),
        pytest.param({"device": DROP}, {"device_id": None}, id="no-device-patient-reported"),
        pytest.param(
            {"device": {"reference": "https://ehr.example/fhir/Device/dev9/_history/3"}},
            {"device_id": "dev9"},
            id="absolute-device-url",
        ),
        pytest.param(
            {"device": {"reference": "DeviceMetric/m1"}},
            {"device_id": "DeviceMetric/m1"},
            id="device-metric-never-matches",
        ),
        pytest.param(
            {"device": {"display": "a cuff"}}, {"device_id": ""}, id="device-display-only-never-matches"
        ),
        pytest.param(
            {
                "identifier": [
                    {"value": "no-system"},
                    {"system": "urn:phd", "value": "abc"},
                    {"system": "urn:other", "value": "x"},
                ]
            },
            {"identifier": "urn:phd|abc"},
            id="identifier-first-with-system-and-value",
        ),
        pytest.param({"extension": [program("rtm")]}, {"program": "rtm"}, id="program-rtm"),
        pytest.param({"extension": [program("rpm")]}, {"program": "rpm"}, id="program-rpm"),
        pytest.param(
            {
                "extension": [
                    {"url": f"{CANON}/StructureDefinition/care-program", "valueCoding": {"code": "ccm"}}
                ]
            },
            {"program": "ccm"},
            id="program-coding-without-system",
        ),
        pytest.param(
            {"subject": {"reference": "https://ehr.example/fhir/Patient/p1"}},
            {"id": "obs1"},
            id="absolute-patient-url",
        ),
    ],
)
def test_reading(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    records, skipped = patient(merged(READING, changes))
    assert skipped == []
    (reading,) = records.readings
    for name, value in expected.items():
        actual = getattr(reading, name)
        assert actual == value, name
        if isinstance(value, datetime):
            assert actual.utcoffset() == value.utcoffset()


@pytest.mark.parametrize("status", ["registered", "cancelled", "entered-in-error", "unknown"])
def test_reading_status_not_a_result_is_ignored_quietly(status: str) -> None:
    records, skipped = patient(merged(READING, {"status": status}))
    assert skipped == []
    assert records.readings == ()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"subject": DROP}, "has no subject", id="no-subject"),
        pytest.param(
            {"subject": {"reference": "Group/g1"}},
            "subject 'Group/g1' is not a Patient reference",
            id="subject-group",
        ),
        pytest.param({"subject": {"display": "Jane"}}, "subject has no reference", id="subject-display-only"),
        pytest.param({"subject": "Patient/p1"}, "subject is not a Reference", id="subject-string"),
        pytest.param({"status": DROP}, "has no status", id="no-status"),
        pytest.param({"effectiveDateTime": DROP}, "has no effective time", id="no-effective"),
        pytest.param(
            {"effectiveDateTime": "2026-13-01"},
            "effectiveDateTime '2026-13-01' is not a FHIR dateTime",
            id="bad-month",
        ),
        pytest.param({"effectiveDateTime": "2026-03-05T24:00:00Z"}, "24:00", id="24h"),
        pytest.param(
            {"effectiveDateTime": DROP, "effectivePeriod": {"end": "2026-03-05T07:30:00Z"}},
            "effectivePeriod has no start",
            id="period-without-start",
        ),
        pytest.param(
            {"effectiveDateTime": DROP, "effectiveTiming": {"event": ["2026-03-05"]}},
            "effectiveTiming",
            id="timing",
        ),
        pytest.param(
            {"extension": [{"url": f"{CANON}/StructureDefinition/care-program", "valueString": "rpm"}]},
            "care-program extension has no valueCoding",
            id="program-unreadable",
        ),
        pytest.param(
            {
                "extension": [
                    {
                        "url": f"{CANON}/StructureDefinition/care-program",
                        "valueCoding": {"system": "urn:x", "code": "rpm"},
                    }
                ]
            },
            "coding system 'urn:x'",
            id="program-foreign-system",
        ),
    ],
)
def test_reading_malformed_is_skipped(changes: dict[str, Any], problem: str) -> None:
    records, skipped = collect(merged(READING, changes))
    assert_skipped(skipped, "Observation", "obs1", problem)
    assert all(r.readings == () for r in records.values())


def test_unknown_program_code_is_kept_and_flagged() -> None:
    records, skipped = patient(merged(READING, {"extension": [program("RPM")]}))
    assert skipped == []
    assert records.readings[0].program == "RPM"  # never counted as RPM by the engine
    assert any("'RPM' is not one of" in flag for flag in records.extra_flags)


def test_duplicate_identifier_readings_are_both_carried_for_the_engine_to_dedupe() -> None:
    key = [{"system": "urn:phd", "value": "abc"}]
    first = merged(READING, {"identifier": key})
    second = merged(
        READING, {"id": "obs2", "identifier": key, "effectiveDateTime": "2026-03-05T07:00:00-05:00"}
    )
    records, _ = patient(first, second)
    assert [(r.id, r.identifier) for r in records.readings] == [
        ("obs2", "urn:phd|abc"),
        ("obs1", "urn:phd|abc"),
    ]


# ------------------------------------------------------------------------------------------ Time entries


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {
                "kind": ActivityKind.TIME_ENTRY,
                "activity_code": "data-review",
                "status": "final",
                "start": datetime(2026, 3, 12, 9, tzinfo=EDT),
                "end": datetime(2026, 3, 12, 9, 12, tzinfo=EDT),
                "duration_seconds": 720,
                "duration_source": "effectivePeriod",
            },
            id="effectivePeriod-interval",
        ),
        pytest.param(
            {
                "effectivePeriod": DROP,
                "effectiveDateTime": "2026-03-12T09:00:00-04:00",
                "valueQuantity": {"value": 15, "system": UCUM, "code": "min"},
            },
            {
                "start": datetime(2026, 3, 12, 9, tzinfo=EDT),
                "end": None,
                "duration_seconds": 900,
                "duration_source": "valueQuantity",
                "has_interval": False,
            },
            id="valueQuantity-min-length-only",
        ),
        pytest.param(
            {
                "effectivePeriod": {"start": "2026-03-12T09:00:00-04:00"},
                "valueQuantity": {"value": 90, "system": UCUM, "code": "s"},
            },
            {"duration_seconds": 90, "end": None},
            id="valueQuantity-s",
        ),
        pytest.param(
            {
                "effectivePeriod": DROP,
                "effectiveInstant": "2026-03-12T13:00:00Z",
                "valueQuantity": {"value": 0.5, "system": UCUM, "code": "h"},
            },
            {"duration_seconds": 1800},
            id="valueQuantity-h",
        ),
        pytest.param(
            {
                "effectivePeriod": DROP,
                "effectiveDateTime": "2026-03-12T09:00:00-04:00",
                "valueQuantity": {"value": 20, "unit": "minutes"},
            },
            {"duration_seconds": 1200},
            id="valueQuantity-unit-text",
        ),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-12T09:00:00-04:00"}},
            {"duration_seconds": None, "duration_source": None},
            id="no-duration",
        ),
        pytest.param(
            {
                "effectivePeriod": {"start": "2026-03-12T09:00:00-04:00", "end": "2026-03-12T09:12:00-04:00"},
                "valueQuantity": {"value": 99, "unit": "min"},
            },
            {"duration_seconds": 720, "duration_source": "effectivePeriod"},
            id="period-wins-over-quantity",
        ),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-31T23:50:00-04:00", "end": "2026-04-01T00:10:00-04:00"}},
            {"duration_seconds": 1200},
            id="across-midnight",
        ),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-12T09:00:00", "end": "2026-03-12T09:12:00"}},
            {"naive_time": True, "duration_seconds": 720},
            id="naive",
        ),
        pytest.param({"extension": [program("ccm")]}, {"program": "ccm"}, id="program-ccm"),
        pytest.param(
            {"status": "preliminary", "note": [{"text": "reviewed BP log"}]},
            {"status": "preliminary", "notes": ("reviewed BP log",)},
            id="notes",
        ),
        pytest.param(
            {
                "code": {
                    "coding": [
                        {"system": "http://loinc.org", "code": "x"},
                        {"system": f"{CANON}/CodeSystem/rpm-activity", "code": "care-coordination"},
                    ]
                }
            },
            {"activity_code": "care-coordination"},
            id="activity-code-among-others",
        ),
    ],
)
def test_time_entry(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    entry = only_activity(merged(TIME_ENTRY, changes))
    assert entry.resource_type == "Observation"
    for name, value in expected.items():
        assert getattr(entry, name) == value, name


def test_time_entry_performers() -> None:
    entry = only_activity(
        merged(
            TIME_ENTRY,
            {
                "performer": [
                    {"reference": "Practitioner/nurse1", "display": "Nurse One"},
                    {"reference": "PractitionerRole/role1"},
                ]
            },
        )
    )
    assert [(p.kind, p.reference, p.display) for p in entry.performers] == [
        (PartyKind.PRACTITIONER, "Practitioner/nurse1", "Nurse One"),
        (PartyKind.PRACTITIONER_ROLE, "PractitionerRole/role1", None),
    ]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param(
            {"code": coding(f"{CANON}/CodeSystem/rpm-activity", "golf")},
            "'golf' is not an rpm-activity code",
            id="unknown-activity-code",
        ),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-12T09:12:00-04:00", "end": "2026-03-12T09:00:00-04:00"}},
            "end is before its start",
            id="end-before-start",
        ),
        pytest.param(
            {
                "effectivePeriod": DROP,
                "effectiveDateTime": "2026-03-12T09:00:00-04:00",
                "valueQuantity": {"value": 12, "system": UCUM, "code": "kg"},
            },
            "valueQuantity unit 'kg' is not a time unit",
            id="not-a-time-unit",
        ),
        pytest.param(
            {
                "effectivePeriod": DROP,
                "effectiveDateTime": "2026-03-12T09:00:00-04:00",
                "valueQuantity": {"value": -3, "unit": "min"},
            },
            "negative",
            id="negative",
        ),
        pytest.param({"effectivePeriod": DROP}, "has no effective time", id="no-time"),
    ],
)
def test_time_entry_malformed_is_skipped(changes: dict[str, Any], problem: str) -> None:
    _, skipped = collect(merged(TIME_ENTRY, changes))
    assert_skipped(skipped, "Observation", "te1", problem)


def test_time_entry_cancelled_is_ignored_quietly() -> None:
    records, skipped = patient(merged(TIME_ENTRY, {"status": "cancelled"}))
    assert (records.activities, skipped) == ((), [])


# ---------------------------------------------------------------------------------------- Communications

ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2026-03-10T14:06:00-04:00", "end": "2026-03-10T14:26:00-04:00"},
}
SENT = datetime(2026, 3, 10, 14, 5, tzinfo=EDT)


@pytest.mark.parametrize(
    ("call_changes", "others", "expected"),
    [
        pytest.param(
            {
                "extension": [activity_period("2026-03-10T14:05:30-04:00", "2026-03-10T14:17:30-04:00")],
                "encounter": {"reference": "Encounter/enc1"},
            },
            [ENCOUNTER],
            {
                "start": datetime(2026, 3, 10, 14, 5, 30, tzinfo=EDT),
                "duration_seconds": 720,
                "duration_source": "activity-period",
                "end": datetime(2026, 3, 10, 14, 17, 30, tzinfo=EDT),
            },
            id="activity-period-wins",
        ),
        pytest.param(
            {"encounter": {"reference": "Encounter/enc1"}},
            [merged(ENCOUNTER, {"length": {"value": 12, "system": UCUM, "code": "min"}})],
            {
                "start": datetime(2026, 3, 10, 14, 6, tzinfo=EDT),
                "duration_seconds": 720,
                "duration_source": "encounter",
                "end": datetime(2026, 3, 10, 14, 18, tzinfo=EDT),
            },
            id="encounter-length-from-period-start",
        ),
        pytest.param(
            {"encounter": {"reference": "Encounter/enc1"}},
            [ENCOUNTER],
            {
                "start": datetime(2026, 3, 10, 14, 6, tzinfo=EDT),
                "duration_seconds": 1200,
                "duration_source": "encounter",
            },
            id="encounter-period",
        ),
        pytest.param(
            {"encounter": {"reference": "Encounter/enc1"}},
            [merged(ENCOUNTER, {"period": DROP, "length": {"value": 600, "system": UCUM, "code": "s"}})],
            {
                "start": SENT,
                "duration_seconds": 600,
                "end": SENT + timedelta(minutes=10),
                "duration_source": "encounter",
            },
            id="encounter-length-from-sent",
        ),
        pytest.param(
            {"encounter": {"reference": "https://ehr.example/fhir/Encounter/enc1"}},
            [ENCOUNTER],
            {"duration_seconds": 1200, "encounter_ref": "Encounter/enc1"},
            id="encounter-absolute-url",
        ),
        pytest.param(
            {
                "encounter": {"reference": "#e"},
                "contained": [merged(ENCOUNTER, {"id": "e", "subject": DROP})],
            },
            [],
            {"duration_seconds": 1200, "duration_source": "encounter", "encounter_ref": "#e"},
            id="encounter-contained",
        ),
        pytest.param(
            {
                "extension": [activity_period("2026-03-10T14:07:00-04:00")],
                "encounter": {"reference": "Encounter/enc1"},
            },
            [merged(ENCOUNTER, {"length": {"value": 5, "unit": "min"}})],
            {
                "start": datetime(2026, 3, 10, 14, 7, tzinfo=EDT),
                "duration_seconds": 300,
                "end": datetime(2026, 3, 10, 14, 12, tzinfo=EDT),
            },
            id="activity-period-start-only-encounter-length",
        ),
        pytest.param(
            {},
            [],
            {"start": SENT, "duration_seconds": None, "duration_source": None, "end": None},
            id="sent-only-no-duration",
        ),
        pytest.param(
            {"encounter": {"reference": "Encounter/enc1"}},
            [merged(ENCOUNTER, {"period": {"start": "2026-03-10T14:06:00-04:00"}})],
            {
                "start": datetime(2026, 3, 10, 14, 6, tzinfo=EDT),
                "duration_seconds": None,
                "duration_source": None,
            },
            id="encounter-without-length-or-end",
        ),
        pytest.param(
            {"extension": [activity_period("2026-03-10T14:05:00", "2026-03-10T14:10:00")]},
            [],
            {"naive_time": True, "duration_seconds": 300},
            id="naive-activity-period",
        ),
        pytest.param({"sent": "2026-03-10T14:05:00"}, [], {"naive_time": True}, id="naive-sent"),
    ],
)
def test_communication_duration(
    call_changes: dict[str, Any], others: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    activity = only_activity(merged(CALL, call_changes), *others)
    assert activity.kind is ActivityKind.COMMUNICATION
    assert activity.sent == (SENT if "sent" not in call_changes else activity.sent)
    for name, value in expected.items():
        assert getattr(activity, name) == value, name


@pytest.mark.parametrize(
    ("encounter", "flag"),
    [
        pytest.param(None, "Encounter/enc1 was not found", id="missing"),
        pytest.param(
            merged(ENCOUNTER, {"status": "entered-in-error"}), "entered-in-error", id="entered-in-error"
        ),
        pytest.param(
            merged(ENCOUNTER, {"length": {"value": 5, "unit": "parsecs"}}), "not a time unit", id="bad-length"
        ),
        pytest.param(
            merged(
                ENCOUNTER,
                {"period": {"start": "2026-03-10T14:26:00-04:00", "end": "2026-03-10T14:06:00-04:00"}},
            ),
            "before its start",
            id="end-before-start",
        ),
    ],
)
def test_communication_encounter_unusable_gives_no_duration_and_a_flag(
    encounter: dict[str, Any] | None, flag: str
) -> None:
    resources = [merged(CALL, {"encounter": {"reference": "Encounter/enc1"}})]
    if encounter is not None:
        resources.append(encounter)
    records, skipped = patient(*resources)
    assert skipped == []
    (activity,) = records.activities
    assert (activity.start, activity.duration_seconds) == (SENT, None)
    assert any("Communication/call1" in f and flag in f for f in records.extra_flags), records.extra_flags


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"sent": DROP}, "has no time", id="no-time-at-all"),
        pytest.param(
            {"sent": "2026-03-10T14:05:00+25:00"}, "sent '2026-03-10T14:05:00+25:00'", id="bad-sent"
        ),
        pytest.param(
            {"extension": [activity_period("2026-03-10T14:10:00Z", "2026-03-10T14:00:00Z")]},
            "activity-period end '2026-03-10T14:00:00Z' is before its start",
            id="period-reversed",
        ),
        pytest.param(
            {
                "extension": [
                    {"url": f"{CANON}/StructureDefinition/activity-period", "valueDuration": {"value": 5}}
                ]
            },
            "activity-period extension has no valuePeriod",
            id="period-wrong-type",
        ),
        pytest.param(
            {
                "extension": [
                    {
                        "url": f"{CANON}/StructureDefinition/activity-period",
                        "valuePeriod": {"end": "2026-03-10T14:00:00Z"},
                    }
                ]
            },
            "activity-period extension has no start",
            id="period-without-start",
        ),
        pytest.param({"status": DROP}, "has no status", id="no-status"),
        pytest.param({"subject": DROP}, "has no subject", id="no-subject"),
        pytest.param(
            {"subject": {"reference": "Group/g"}}, "is not a Patient reference", id="subject-not-patient"
        ),
    ],
)
def test_communication_malformed_is_skipped(changes: dict[str, Any], problem: str) -> None:
    _, skipped = collect(merged(CALL, changes))
    assert_skipped(skipped, "Communication", "call1", problem)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {
                "status": "completed",
                "medium": ("PHONE",),
                "content": ("physiologic-data",),
                "categories": (),
                "status_reason": None,
                "program": None,
                "notes": (),
            },
            id="completed-call",
        ),
        pytest.param(
            {
                "status": "not-done",
                "statusReason": coding(
                    "http://terminology.hl7.org/CodeSystem/communication-not-done-reason",
                    "recipient-unavailable",
                ),
            },
            {"status": "not-done", "status_reason": "recipient-unavailable"},
            id="attempt-reason-code",
        ),
        pytest.param(
            {"status": "not-done", "statusReason": {"text": "voicemail"}},
            {"status_reason": "voicemail"},
            id="attempt-reason-text",
        ),
        pytest.param({"status": "in-progress"}, {"status": "in-progress"}, id="other-status-kept"),
        pytest.param(
            {
                "medium": [
                    {
                        "coding": [
                            {"system": MODE, "code": "VIDEOCONF"},
                            {"system": "urn:local", "code": "ZOOM"},
                        ]
                    },
                    coding(MODE, "PHONE"),
                    coding(MODE, "VIDEOCONF"),
                ]
            },
            {"medium": ("VIDEOCONF", "PHONE")},
            id="medium-all-codings",
        ),
        pytest.param(
            {"medium": [coding("urn:oid:2.16.840.1.113883.5.1064", "ONLINEWRIT")]},
            {"medium": ("ONLINEWRIT",)},
            id="medium-oid-system",
        ),
        pytest.param(
            {"medium": [coding("urn:local", "PHONE")]}, {"medium": ()}, id="medium-foreign-system-ignored"
        ),
        pytest.param(
            {"category": [coding(CATEGORY, "alert"), coding(CATEGORY, "reminder")]},
            {"categories": ("alert", "reminder")},
            id="categories",
        ),
        pytest.param(
            {
                "topic": DROP,
                "reasonCode": [
                    coding(f"{CANON}/CodeSystem/rpm-content", "symptoms"),
                    coding("http://snomed.info/sct", "38341003"),
                ],
            },
            {"content": ("symptoms",)},
            id="content-from-reasonCode",
        ),
        pytest.param(
            {
                "reasonCode": [
                    coding(f"{CANON}/CodeSystem/rpm-content", "care-plan"),
                    coding(f"{CANON}/CodeSystem/rpm-content", "physiologic-data"),
                ]
            },
            {"content": ("physiologic-data", "care-plan")},
            id="content-topic-and-reason",
        ),
        pytest.param(
            {"topic": {"text": "talked about BP"}}, {"content": ()}, id="free-text-topic-is-no-content"
        ),
        pytest.param(
            {
                "payload": [{"contentString": "BP ok"}, {"contentAttachment": {"title": "x"}}],
                "note": [{"text": "left message <b>"}],
            },
            {"notes": ("BP ok", "left message <b>")},
            id="notes-plain-text",
        ),
        pytest.param({"extension": [program("rtm")]}, {"program": "rtm"}, id="program-rtm"),
    ],
)
def test_communication_fields(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    activity = only_activity(merged(CALL, changes))
    for name, value in expected.items():
        assert getattr(activity, name) == value, name


def test_communication_entered_in_error_is_ignored_quietly() -> None:
    records, skipped = patient(merged(CALL, {"status": "entered-in-error"}))
    assert (records.activities, skipped) == ((), [])


def test_unknown_rpm_content_code_is_dropped_with_a_flag() -> None:
    records, skipped = patient(merged(CALL, {"topic": coding(f"{CANON}/CodeSystem/rpm-content", "weather")}))
    assert skipped == []
    assert records.activities[0].content == ()
    assert any("'weather' is not an rpm-content code" in f for f in records.extra_flags)


RELATED = {
    "resourceType": "RelatedPerson",
    "id": "rp1",
    "patient": {"reference": "Patient/p1"},
    "relationship": [coding("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "DAU")],
    "name": [{"given": ["Ann"], "family": "Example"}],
}
AI_DEVICE = {
    "resourceType": "Device",
    "id": "bot1",
    "status": "active",
    "deviceName": [{"name": "Call bot", "type": "user-friendly-name"}],
}
OWN_DEVICE = merged(DEVICE, {"id": "dev1"})


@pytest.mark.parametrize(
    ("reference", "others", "kind", "display"),
    [
        pytest.param({"reference": "Patient/p1"}, [], PartyKind.PATIENT, None, id="patient"),
        pytest.param({"reference": "Patient/p2"}, [], PartyKind.OTHER_PATIENT, None, id="other-patient"),
        pytest.param(
            {"reference": "RelatedPerson/rp1"}, [RELATED], PartyKind.CAREGIVER, "Ann Example", id="caregiver"
        ),
        pytest.param(
            {"reference": "RelatedPerson/rp1"},
            [merged(RELATED, {"relationship": DROP})],
            PartyKind.RELATED_PERSON,
            "Ann Example",
            id="related-person-no-relationship",
        ),
        pytest.param(
            {"reference": "RelatedPerson/rp1"},
            [merged(RELATED, {"patient": {"reference": "Patient/p2"}})],
            PartyKind.RELATED_PERSON,
            "Ann Example",
            id="related-person-of-another-patient",
        ),
        pytest.param(
            {"reference": "RelatedPerson/rp1", "display": "Ann"},
            [],
            PartyKind.RELATED_PERSON,
            "Ann",
            id="related-person-not-found",
        ),
        pytest.param(
            {"reference": "Practitioner/nurse1"},
            [{"resourceType": "Practitioner", "id": "nurse1", "name": [{"text": "Nurse One"}]}],
            PartyKind.PRACTITIONER,
            "Nurse One",
            id="practitioner-named",
        ),
        pytest.param(
            {"reference": "https://ehr.example/fhir/PractitionerRole/r1"},
            [],
            PartyKind.PRACTITIONER_ROLE,
            None,
            id="practitioner-role-absolute",
        ),
        pytest.param(
            {"reference": "Device/bot1"}, [AI_DEVICE], PartyKind.AI_SYSTEM, "Call bot", id="ai-system"
        ),
        pytest.param(
            {"reference": "Device/dev1"},
            [OWN_DEVICE],
            PartyKind.DEVICE,
            "Home BP cuff, Acme Medical, BP-200",
            id="patient-device",
        ),
        pytest.param({"reference": "Device/ghost"}, [], PartyKind.UNKNOWN, None, id="device-not-found"),
        pytest.param(
            {"reference": "Organization/o1"},
            [{"resourceType": "Organization", "id": "o1", "name": "Clinic"}],
            PartyKind.ORGANIZATION,
            "Clinic",
            id="organization",
        ),
        pytest.param({"reference": "CareTeam/t1"}, [], PartyKind.UNKNOWN, None, id="unsupported-type"),
        pytest.param({"display": "someone"}, [], PartyKind.UNKNOWN, "someone", id="display-only"),
        pytest.param({"reference": "#rp"}, [], PartyKind.CAREGIVER, "Ann Example", id="contained-caregiver"),
        pytest.param({"reference": "#bot"}, [], PartyKind.AI_SYSTEM, "Call bot", id="contained-ai-device"),
        pytest.param({"reference": "#nobody"}, [], PartyKind.UNKNOWN, None, id="contained-missing"),
    ],
)
def test_party_kinds(
    reference: dict[str, Any], others: list[dict[str, Any]], kind: PartyKind, display: str | None
) -> None:
    contained = [merged(RELATED, {"id": "rp"}), merged(AI_DEVICE, {"id": "bot"})]
    call = merged(CALL, {"sender": reference, "recipient": [reference], "contained": contained})
    activity = only_activity(call, *others)
    assert activity.sender is not None
    assert (activity.sender.kind, activity.sender.display) == (kind, display)
    assert activity.recipients == (activity.sender,)


def test_order_independence_communication_before_its_encounter_and_related_person() -> None:
    call = merged(
        CALL,
        {
            "recipient": [{"reference": "RelatedPerson/rp1"}],
            "sender": {"reference": "Device/bot1"},
            "encounter": {"reference": "Encounter/enc1"},
        },
    )
    resources = [
        call,
        ENCOUNTER,
        RELATED,
        AI_DEVICE,
        READING,
        TIME_ENTRY,
        CONSENT,
        CHARGE,
        OWN_DEVICE,
        {"resourceType": "Patient", "id": "p1", "name": [{"text": "Pat Example"}]},
    ]
    expected = collect(*resources)
    rng = random.Random(7)
    for _ in range(10):
        shuffled = resources[:]
        rng.shuffle(shuffled)
        assert collect(*shuffled) == expected
    records = expected[0]["p1"]
    call_activity = next(a for a in records.activities if a.id == "call1")
    assert call_activity.recipients[0].kind is PartyKind.CAREGIVER
    assert call_activity.sender is not None and call_activity.sender.kind is PartyKind.AI_SYSTEM
    assert call_activity.duration_source == "encounter"
    assert records.display_name == "Pat Example"
    assert (len(records.consents), len(records.devices), len(records.readings), len(records.charges)) == (
        1,
        1,
        1,
        1,
    )


# ----------------------------------------------------------------------------------------------- Charges


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {},
            {
                "id": "ch1",
                "code": "99454",
                "status": "billable",
                "charge_key": "p1|99454|2026-03-01",
                "quantity": 1,
                "period_start": datetime(2026, 3, 1, tzinfo=EST),
                "period_end": datetime(2026, 3, 31, tzinfo=NY),
            },
            id="own-charge",
        ),
        pytest.param(
            {"occurrencePeriod": {"start": "2026-03-01", "end": "2026-03-31"}},
            {"period_start": datetime(2026, 3, 1, tzinfo=NY), "period_end": datetime(2026, 4, 1, tzinfo=NY)},
            id="date-only-end-next-midnight",
        ),
        pytest.param(
            {"occurrencePeriod": DROP, "occurrenceDateTime": "2026-03-15T10:00:00-04:00"},
            {
                "period_start": datetime(2026, 3, 15, 10, tzinfo=EDT),
                "period_end": datetime(2026, 3, 15, 10, 0, 1, tzinfo=EDT),
            },
            id="occurrenceDateTime-one-second",
        ),
        pytest.param(
            {"occurrencePeriod": DROP, "occurrenceDateTime": "2026-03-15"},
            {
                "period_start": datetime(2026, 3, 15, tzinfo=NY),
                "period_end": datetime(2026, 3, 16, tzinfo=NY),
            },
            id="occurrenceDateTime-date-whole-day",
        ),
        pytest.param(
            {"occurrencePeriod": DROP}, {"period_start": None, "period_end": None}, id="no-occurrence"
        ),
        pytest.param(
            {
                "code": {"coding": [{"system": "urn:local", "code": "X"}, {"system": CPT, "code": "98976"}]},
                "identifier": DROP,
            },
            {"code": "98976", "charge_key": None},
            id="rtm-foreign-charge",
        ),
        pytest.param({"quantity": {"value": 2.0}}, {"quantity": 2}, id="quantity-integral-float"),
        pytest.param({"quantity": DROP}, {"quantity": None}, id="no-quantity"),
        pytest.param({"status": "entered-in-error"}, {"status": "entered-in-error"}, id="status-kept"),
    ],
)
def test_charge_item(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    records, skipped = patient(merged(CHARGE, changes))
    assert skipped == []
    (charge,) = records.charges
    for name, value in expected.items():
        assert getattr(charge, name) == value, name


@pytest.mark.parametrize(
    ("changes", "expected", "flag"),
    [
        pytest.param(
            {"status": DROP}, {"status": "unknown"}, "has no status", id="no-status-kept-as-unknown"
        ),
        pytest.param(
            {"occurrencePeriod": {"start": "March"}},
            {"period_start": None},
            "occurrencePeriod.start 'March'",
            id="bad-occurrence-kept",
        ),
        pytest.param(
            {"quantity": {"value": 1.5}}, {"quantity": None}, "quantity 1.5", id="fractional-quantity"
        ),
    ],
)
def test_charge_item_is_kept_despite_bad_parts(
    changes: dict[str, Any], expected: dict[str, Any], flag: str
) -> None:
    records, skipped = patient(merged(CHARGE, changes))
    assert skipped == []
    (charge,) = records.charges
    for name, value in expected.items():
        assert getattr(charge, name) == value, name
    assert any(f.startswith("ChargeItem/ch1") and flag in f for f in records.extra_flags), records.extra_flags


def test_charge_item_without_cpt_is_ignored_unless_it_is_ours() -> None:
    hcpcs = {"code": coding("urn:hcpcs", "G0511")}
    records, skipped = patient(merged(CHARGE, {**hcpcs, "identifier": DROP}))
    assert (records.charges, skipped) == ((), [])
    _, skipped = patient(merged(CHARGE, hcpcs))
    assert_skipped(skipped, "ChargeItem", "ch1", "has no CPT code")


def test_charge_item_without_subject_is_skipped() -> None:
    _, skipped = collect(merged(CHARGE, {"subject": DROP}))
    assert_skipped(skipped, "ChargeItem", "ch1", "has no subject")


# -------------------------------------------------------------------------------------- The collector


@pytest.mark.parametrize(
    ("resource", "resource_type", "problem"),
    [
        pytest.param("Observation", "?", "is not a JSON object", id="string"),
        pytest.param(["x"], "?", "is not a JSON object", id="list"),
        pytest.param({"id": "x"}, "?", "has no resourceType", id="no-resourceType"),
        pytest.param({"resourceType": "Patient"}, "Patient", "Patient has no id", id="patient-without-id"),
        pytest.param(
            {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1"}]},
            "Bundle",
            "entry 0 has no resource",
            id="bundle-entry-without-resource",
        ),
    ],
)
def test_malformed_input_is_reported_never_raised(resource: object, resource_type: str, problem: str) -> None:
    _, skipped = collect(resource)
    assert len(skipped) == 1
    assert skipped[0].resource_type == resource_type
    assert problem in skipped[0].problem


def test_unexpected_error_in_an_extractor_is_a_skip_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(inbound_observation, "_reading", explode)
    records, skipped = collect(READING, CALL)
    assert_skipped(skipped, "Observation", "obs1", "could not be read (RuntimeError: 'boom')")
    assert len(records["p1"].activities) == 1


def test_bundle_entries_in_any_order_and_nested_bundles() -> None:
    inner = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": ENCOUNTER}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": merged(CALL, {"encounter": {"reference": "Encounter/enc1"}}),
                "search": {"mode": "match"},
            },
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
            {"resource": inner},
            {"resource": READING},
        ],
    }
    collector = InboundCollector()
    collector.add_bundle(bundle)
    records, skipped = collector.finish()
    assert skipped == []
    assert records["p1"].activities[0].duration_seconds == 1200
    assert len(records["p1"].readings) == 1


def test_add_bundle_rejects_a_non_bundle() -> None:
    collector = InboundCollector()
    collector.add_bundle(READING)
    _, skipped = collector.finish()
    assert skipped[0].problem == "is not a Bundle"


def test_patients_come_from_references_and_patient_resources() -> None:
    records, _ = collect(
        {"resourceType": "Patient", "id": "p9", "name": [{"given": ["Pat"], "family": "Nine"}]},
        merged(READING, {"subject": {"reference": "Patient/p2"}}),
        merged(CONSENT, {"patient": {"reference": "Patient/p3"}, "category": [coding("urn:x", "y")]}),
        merged(RELATED, {"patient": {"reference": "Patient/p4"}}),
    )
    assert list(records) == ["p2", "p3", "p4", "p9"]
    assert records["p9"].display_name == "Pat Nine"
    assert records["p2"].display_name is None


def test_same_resource_read_twice_is_counted_once_latest_wins() -> None:
    later = merged(READING, {"effectiveDateTime": "2026-03-06T07:30:00-05:00"})
    records, _ = patient(READING, later, CALL, CALL)
    assert [r.time.day for r in records.readings] == [6]
    assert len(records.activities) == 1


def test_resources_without_id_are_all_kept() -> None:
    records, _ = patient(merged(READING, {"id": DROP}), merged(READING, {"id": DROP}))
    assert [r.id for r in records.readings] == ["", ""]


def test_skipped_resources_are_listed_in_the_patients_flags_and_finish_is_repeatable() -> None:
    collector = InboundCollector()
    collector.add(merged(READING, {"effectiveDateTime": "2026-13-01"}))
    collector.add(merged(CALL, {"sent": DROP}))  # found to have no time only at finish
    first = collector.finish()
    assert first == collector.finish()
    records, skipped = first
    assert sorted((s.resource_type, s.patient_id) for s in skipped) == [
        ("Communication", "p1"),
        ("Observation", "p1"),
    ]
    assert sorted(records["p1"].extra_flags) == sorted(str(s) for s in skipped)
    assert str(skipped[0]).startswith("Observation/obs1 skipped: effectiveDateTime '2026-13-01'")


def test_practice_time_zone_places_naive_times() -> None:
    records, _ = collect(
        merged(READING, {"effectiveDateTime": "2026-07-01T08:00:00"}), timezone_name="America/Los_Angeles"
    )
    reading = records["p1"].readings[0]
    assert reading.naive_time
    assert reading.time == datetime(2026, 7, 1, 15, tzinfo=UTC)


def test_custom_canon_is_honoured() -> None:
    canon = "https://fhir.example.org/rpm"
    entry = merged(TIME_ENTRY, {"code": coding(f"{canon}/CodeSystem/rpm-activity", "documentation")})
    default_entry = merged(TIME_ENTRY, {"id": "te2"})  # default canon: just an ordinary Observation here
    records, skipped = collect(entry, default_entry, canon=canon)
    assert skipped == []
    assert [a.activity_code for a in records["p1"].activities] == ["documentation"]
    assert [r.id for r in records["p1"].readings] == ["te2"]


def test_hostile_text_is_carried_verbatim_never_interpreted() -> None:
    script = "<script>alert(1)</script>"
    activity = only_activity(
        merged(
            CALL,
            {
                "payload": [{"contentString": script}],
                "sender": {"reference": "Practitioner/x", "display": script},
            },
        )
    )
    assert activity.notes == (script,)
    assert activity.sender is not None and activity.sender.display == script


@pytest.mark.parametrize(
    "times",
    [
        pytest.param(
            [
                "2026-03-08T07:00:00-04:00",
                "2026-03-08T06:30:00-05:00",
                "2026-03-08T11:15:00Z",
                "2026-03-08T11:00:00Z",
            ],
            id="mixed-offsets",
        ),
        pytest.param(
            ["2026-03-08T11:00:00Z", "2026-03-08T07:00:00-04:00", "2026-03-08T06:00:00-05:00"], id="ties"
        ),
        pytest.param(
            ["0001-01-01T01:00:00+05:00", "9999-12-31T20:00:00-05:00", "2026-03-05T07:30:00Z"], id="edges"
        ),
        pytest.param(
            ["2026-03-05T07:30:00-05:00", "2026-03-05T12:31:00Z", "2026-03-05T08:32:00-04:00"],
            id="increasing-across-offsets",
        ),
    ],
)
def test_readings_in_time_order_then_id(times: list[str]) -> None:
    """The records list readings by instant, the same instant by id, whatever their offsets."""
    rng = random.Random(3)
    resources = [
        merged(READING, {"id": f"obs{i}", "effectiveDateTime": value, "identifier": DROP})
        for i, value in enumerate(times)
    ]
    expected_ids: list[str] | None = None
    for order in range(4):  # as listed, reversed, twice shuffled (in order or not, ties or not)
        if order == 1:
            resources.reverse()
        elif order > 1:
            rng.shuffle(resources)
        records, skipped = patient(*resources)
        assert skipped == []
        expected = sorted(records.readings, key=lambda r: (r.time, r.id))  # aware datetimes: as instants
        assert [r.id for r in records.readings] == [r.id for r in expected]
        assert expected_ids in (None, [r.id for r in expected])
        expected_ids = [r.id for r in expected]
        assert len(records.readings) == len(times)
