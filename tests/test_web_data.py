"""The web tests' own patient (a known month, hostile free text) and the pure presentation of its result.

`web_patient()` is loaded into the sandbox by test_web_app.py and test_browser.py; the tests here pin what the
engine decides for it, so the HTTP and browser tests can assert exact figures.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from billing.periods import YearMonth, zone
from fhir_mapping.canon import (
    ACTIVITY_PERIOD_EXT,
    CARE_PROGRAM_CS,
    CONSENT_SCOPE_CS,
    PARTICIPATION_MODE_CS,
    RPM_ACTIVITY_CS,
    RPM_CONTENT_CS,
)
from fhir_mapping.inbound import InboundCollector
from smart_app.pipeline import RunOptions, evaluate
from smart_app.web import insights, present

NY = zone("America/New_York")
MONTH = "2026-03"
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=NY)  # the app's clock in the web tests
WEB_PATIENT = "web-p1"
NURSE = "Practitioner/prac-nurse-1"  # one of the synthetic population's staff
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & <b>bold</b>'


def fixed_clock() -> datetime:
    return NOW


def web_patient(pid: str = WEB_PATIENT, hostile: str = HOSTILE) -> list[dict[str, Any]]:
    """Consent since February, one device with readings on March 1-5, a 14-minute data review (a time
    entry) and one unanswered call whose payload is hostile markup: no live call yet."""
    ref = {"reference": f"Patient/{pid}"}
    device = f"{pid}-dev"
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "name": [{"given": ["Robin"], "family": "Webtest"}]},
        {
            "resourceType": "Consent",
            "id": f"{pid}-consent",
            "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE_CS, "code": "treatment"}]},
            "category": [{"coding": [{"system": CARE_PROGRAM_CS, "code": "rpm"}]}],
            "patient": ref,
            "dateTime": "2026-02-01T09:00:00-05:00",
            "provision": {"type": "permit", "period": {"start": "2026-02-01"}},
        },
        {
            "resourceType": "Device",
            "id": device,
            "status": "active",
            "patient": ref,
            "type": {"text": "Cuff"},
        },
    ]
    for day in range(1, 6):
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-obs-{day}",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "subject": ref,
                "device": {"reference": f"Device/{device}"},
                "effectiveDateTime": f"2026-03-0{day}T08:00:00-05:00",
                "valueQuantity": {"value": 120, "unit": "mmHg"},
            }
        )
    resources.append(
        {
            "resourceType": "Observation",
            "id": f"{pid}-review",
            "status": "final",
            "code": {"coding": [{"system": RPM_ACTIVITY_CS, "code": "data-review"}]},
            "subject": ref,
            "effectivePeriod": {"start": "2026-03-10T10:00:00-04:00", "end": "2026-03-10T10:14:00-04:00"},
            "performer": [{"reference": NURSE}],
        }
    )
    resources.append(
        {
            "resourceType": "Communication",
            "id": f"{pid}-call",
            "status": "not-done",
            "statusReason": {"text": "no answer"},
            "medium": [{"coding": [{"system": PARTICIPATION_MODE_CS, "code": "PHONE"}]}],
            "subject": ref,
            "topic": {"coding": [{"system": RPM_CONTENT_CS, "code": "physiologic-data"}]},
            "sent": "2026-03-12T15:00:00-04:00",
            "sender": {"reference": NURSE},
            "recipient": [ref],
            "extension": [
                {
                    "url": ACTIVITY_PERIOD_EXT,
                    "valuePeriod": {"start": "2026-03-12T15:00:00-04:00", "end": "2026-03-12T15:01:00-04:00"},
                }
            ],
            "payload": [{"contentString": hostile}],
        }
    )
    return resources


def web_result() -> Any:
    collector = InboundCollector(timezone="America/New_York")
    for resource in web_patient():
        collector.add(resource)
    records, skipped = collector.finish()
    assert not skipped
    return evaluate(records[WEB_PATIENT], RunOptions(YearMonth.parse(MONTH), NOW))


def test_the_web_patients_month() -> None:
    result = web_result()
    assert (result.minutes, result.interactive_count, result.attempt_count) == (14, 0, 1)
    assert result.data_days_in_month == 5 and result.preview
    assert result.policy.name == "cms-2026"
    assert {line.code for line in result.codes} == {"99445", "99453"}
    assert {line.status.value for line in result.codes} == {"planned"}
    assert [s.text for s in insights.month_suggestions(result)] == [
        "a live call with the patient: 99470",
        "6 more minutes including a live call: 99457",
    ]
    view = insights.window_view(result, NOW.date())
    assert view is not None
    assert (view.window.first_day.isoformat(), view.data_days, view.days_left) == ("2026-03-01", 5, 11)
    assert [s.text for s in view.suggestions] == ["11 more days with readings: 99454"]
    assert insights.days_left_in_month(result.month, NOW.date()) == 12


def test_timeline_rows_carry_class_reason_and_the_untouched_free_text() -> None:
    rows = present.timeline(web_result())
    assert [(r.reference, r.activity_class, r.attempt) for r in rows] == [
        (f"Observation/{WEB_PATIENT}-review", "non-interactive", False),
        (f"Communication/{WEB_PATIENT}-call", "non-interactive", True),
    ]
    review, call = rows
    assert review.what == "time entry: data review" and review.seconds == 14 * 60 and review.counts
    assert review.cumulative_minutes == 14
    assert call.what == "telephone (attempt)" and not call.counts and call.reason
    assert HOSTILE in call.notes  # kept as text; the templates escape it


def test_consent_rows_and_summary() -> None:
    result = web_result()
    (row,) = present.consent_rows(result, NOW)
    assert (row.reference, row.status, row.method, row.in_force) == (
        f"Consent/{WEB_PATIENT}-consent",
        "active",
        "verbal",
        True,
    )
    assert present.consent_summary(result, NOW) == "RPM consent in force (verbal)"
    assert present.consent_summary(result, NOW - timedelta(days=60)) == "No RPM consent in force now"
