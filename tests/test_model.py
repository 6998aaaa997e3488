"""billing.model: the domain records' own helpers."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields, replace
from datetime import UTC, datetime

import pytest

from billing.model import Activity, ActivityKind, Party, PartyKind, new_activity


def test_with_parties_is_replace_of_the_three_party_fields() -> None:
    """Every field set to something other than its default: `with_parties` must carry each one over."""
    values: dict[str, object] = {
        "resource_type": "Observation",
        "id": "te1",
        "kind": ActivityKind.TIME_ENTRY,
        "status": "final",
        "start": datetime(2026, 3, 5, 9, tzinfo=UTC),
        "end": datetime(2026, 3, 5, 9, 12, tzinfo=UTC),
        "duration_seconds": 720,
        "duration_source": "effectivePeriod",
        "medium": ("PHONE",),
        "categories": ("notification",),
        "sender": Party(PartyKind.PATIENT, "Patient/p1"),
        "recipients": (Party(PartyKind.PATIENT, "Patient/p1"),),
        "sent": datetime(2026, 3, 5, 9, tzinfo=UTC),
        "status_reason": "x",
        "content": ("care-plan",),
        "encounter_ref": "Encounter/e1",
        "activity_code": "data-review",
        "performers": (Party(PartyKind.PRACTITIONER, "Practitioner/n1"),),
        "program": "rpm",
        "naive_time": True,
        "notes": ("n",),
    }
    assert set(values) == {f.name for f in fields(Activity)}
    activity = Activity(**values)  # type: ignore[arg-type]
    sender = Party(PartyKind.PRACTITIONER, "Practitioner/n1", "Nurse")
    recipients = (Party(PartyKind.CAREGIVER, "RelatedPerson/r1", "Daughter"),)
    performers = (Party(PartyKind.PRACTITIONER, "Practitioner/n2", "Doctor"),)
    assert activity.with_parties(sender, recipients, performers) == replace(
        activity, sender=sender, recipients=recipients, performers=performers
    )


def test_new_activity_is_the_constructors_object() -> None:
    values = {
        "resource_type": "Communication",
        "id": "c1",
        "kind": ActivityKind.COMMUNICATION,
        "status": "completed",
        "start": datetime(2026, 3, 5, 9, tzinfo=UTC),
        "medium": ("PHONE",),
        "sender": Party(PartyKind.PRACTITIONER, "Practitioner/n1"),
    }
    built, constructed = new_activity(**values), Activity(**values)  # type: ignore[arg-type]
    assert built == constructed and hash(built) == hash(constructed)
    assert vars(built) == vars(constructed)
    with pytest.raises(FrozenInstanceError):
        built.status = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field 'colour'"):
        new_activity(**values, colour="red")
    with pytest.raises(TypeError, match="needs 'status'"):
        new_activity(**{k: v for k, v in values.items() if k != "status"})
