"""The monthly log (contract section 4): HTML for people, JSON for machines, deterministic and escaped."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from billing.periods import YearMonth
from billing.result import Flag
from fhir_mapping.monthly_log import (
    SCHEMA,
    SCHEMA_VERSION,
    fhir_period,
    log_fingerprint,
    log_json,
    log_json_text,
    render_log_html,
)
from tests.fixtures.outbound.rich_month import IMG, NY, SCRIPT, rich_result

FIXTURES = Path(__file__).parent / "fixtures" / "outbound"
UPDATE = os.environ.get("RPM_UPDATE_GOLDEN") == "1"
PREVIEW_AS_OF = datetime(2026, 3, 20, 12, 0, tzinfo=NY)


def golden(name: str, text: str) -> str:
    """The stored golden text (written first when RPM_UPDATE_GOLDEN=1)."""
    path = FIXTURES / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    return path.read_text(encoding="utf-8")


class TagCollector(HTMLParser):
    """Every start tag and attribute name the browser would see."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs |= {name for name, _ in attrs}

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html_text: str) -> TagCollector:
    collector = TagCollector()
    collector.feed(html_text)
    collector.close()
    return collector


# --- JSON --------------------------------------------------------------------------------------------------


def test_json_header_names_schema_patient_month_zone_policy_and_as_of() -> None:
    log = log_json(rich_result())
    assert list(log)[:12] == [
        "schema",
        "schema_version",
        "generator",
        "patient",
        "month",
        "period",
        "time_zone",
        "as_of",
        "preview",
        "document_status",
        "policy",
        "consents",
    ]
    assert (log["schema"], log["schema_version"]) == (SCHEMA, SCHEMA_VERSION)
    assert log["patient"] == {"id": "p-100", "reference": "Patient/p-100", "name": f"Pat {IMG}"}
    assert log["month"] == "2026-03"
    assert log["time_zone"] == "America/New_York"
    assert log["as_of"] == "2026-04-02T09:00:00-04:00"
    assert (log["preview"], log["document_status"]) == (False, "final")
    assert log["policy"]["name"] == "cms-2026" and log["policy"]["version"] == "2026.1"
    assert log["policy"]["settings"]["interactive_media"] == ["PHONE", "VIDEOCONF"]


@pytest.mark.parametrize(
    ("month", "start", "end"),
    [
        ("2026-03", "2026-03-01T00:00:00-05:00", "2026-03-31T23:59:59-04:00"),  # spring forward on 03-08
        ("2026-11", "2026-11-01T00:00:00-04:00", "2026-11-30T23:59:59-05:00"),  # fall back on 11-01
        ("2026-07", "2026-07-01T00:00:00-04:00", "2026-07-31T23:59:59-04:00"),
        ("2026-01", "2026-01-01T00:00:00-05:00", "2026-01-31T23:59:59-05:00"),
    ],
)
def test_day_periods_start_at_local_midnight_and_end_at_last_second_with_their_own_offsets(
    month: str, start: str, end: str
) -> None:
    assert fhir_period(YearMonth.parse(month).period(NY), NY) == {"start": start, "end": end}


def test_fhir_period_converts_a_utc_period_to_the_practice_zone() -> None:
    period = YearMonth.parse("2026-03").period(NY)
    utc_period = replace(period, start=period.start.astimezone(UTC), end=period.end.astimezone(UTC))
    assert fhir_period(utc_period, NY) == fhir_period(period, NY)


def test_json_consents_episodes_and_devices() -> None:
    log = log_json(rich_result())
    written, verbal = log["consents"]
    assert written["method"] == "written" and written["status"] == "active"
    assert written["from"] == "2026-01-10T00:00:00-05:00" and written["until"] is None
    assert verbal["method"] == "verbal" and verbal["until"] == "2025-12-01T00:00:00-05:00"
    assert log["episodes"] == [{"from": "2026-01-10T00:00:00-05:00", "until": "2026-04-01T00:00:00-04:00"}]
    assert [d["id"] for d in log["devices"]] == ["dev-bp", "dev-scale"]


def test_json_windows_list_data_days_count_state_and_their_codes() -> None:
    w0, w1 = log_json(rich_result())["windows"]
    assert (w0["first_day"], w0["last_day"], w0["belongs_to"], w0["closed"]) == (
        "2026-02-08",
        "2026-03-09",
        "2026-03",
        True,
    )
    assert w0["data_day_count"] == 18 == len(w0["data_days"])
    assert w0["end"] == "2026-03-09T23:59:59-04:00"
    assert [c["code"] for c in w0["codes"]] == ["99453", "99454"]
    assert (w1["closed"], w1["codes"], w1["not_billed"][0]["code"]) == (False, [], "99445")


def test_json_activities_keep_time_method_class_reason_and_running_total() -> None:
    acts = log_json(rich_result())["activities"]
    assert [a["reference"] for a in acts] == [
        "Observation/te-1",
        "Communication/call-1",
        "Communication/call-2",
        "Observation/te-2",
        "Communication/call-3",
    ]
    call = acts[1]
    assert (call["date"], call["time"], call["start"]) == (
        "2026-03-09",
        "14:00:00",
        "2026-03-09T14:00:00-04:00",
    )
    assert call["method"] == "telephone" and call["method_codes"] == ["PHONE"]
    assert call["class"] == "interactive" and call["duration_seconds"] == 900
    assert [p["role"] for p in call["participants"]] == ["sender", "recipient"]
    assert call["performers"][0]["reference"] == "Practitioner/nurse-1"
    assert call["content"] == ["physiologic-data", "symptoms"]
    assert call["notes"] == [f"BP 168/101, escalated to Dr. Ray {SCRIPT}"]
    assert [a["cumulative_minutes"] for a in acts] == [12, 27, 27, 47, 47]
    assert acts[0]["start"].endswith("-05:00")  # before the DST change
    assert acts[3]["duration_seconds"] == 1200 and acts[3]["end"] is None  # known only by its length
    assert acts[4]["duration_seconds"] is None  # no duration at all


def test_json_attempts_codes_not_billed_flags_and_skipped_readings() -> None:
    log = log_json(rich_result())
    assert [a["reference"] for a in log["attempts"]] == ["Communication/call-2"]
    assert log["attempts"][0]["status_reason"] == "voicemail left"
    assert log["summary"] == {
        "total_seconds": 2820,
        "minutes": 47,
        "interactive_count": 2,
        "attempt_count": 1,
        "data_days_in_month": 11,
    }
    codes = {c["code"]: c for c in log["codes"]}
    assert codes["99457"]["period"]["start"] == "2026-03-01T00:00:00-05:00"
    assert codes["99457"]["charge_key"] == "p-100|99457|2026-03-01"
    assert codes["99458"]["units"] == 1 and codes["99458"]["status"] == "billable"
    assert (log["not_billed"][0]["code"], log["not_billed"][0]["reason"]) == (
        "99470",
        "99457 billed instead (20 minutes or more)",
    )
    assert [f["code"] for f in log["flags"]] == ["ai-contact", "no-duration"]
    assert log["readings_skipped"] == [
        {"reason": "patient-reported (no device)", "count": 3},
        {"reason": "outside consent", "count": 1},
    ]


def test_json_preview_is_preliminary_with_planned_codes() -> None:
    log = log_json(rich_result(as_of=PREVIEW_AS_OF))
    assert (log["preview"], log["document_status"]) == (True, "preliminary")
    assert {c["code"]: c["status"] for c in log["codes"]}["99457"] == "planned"


def test_json_is_deterministic_and_matches_the_golden_file() -> None:
    text = log_json_text(rich_result())
    assert text == log_json_text(rich_result())
    assert json.loads(text) == log_json(rich_result())
    assert text == golden("rich-2026-03.log.json", text)


def test_fingerprint_ignores_the_as_of_time_but_not_the_content() -> None:
    closed = rich_result()
    later = rich_result(as_of=datetime(2026, 4, 5, 8, 0, tzinfo=NY))  # window 2 still open
    assert log_json(closed)["as_of"] != log_json(later)["as_of"]
    assert log_fingerprint(closed) == log_fingerprint(later)
    assert log_fingerprint(closed) != log_fingerprint(rich_result(units_99458=2))
    assert log_fingerprint(closed) != log_fingerprint(rich_result(as_of=PREVIEW_AS_OF))
    assert log_fingerprint(closed) != log_fingerprint(rich_result(as_of=datetime(2026, 5, 1, tzinfo=NY)))
    flagged = replace(closed, flags=(*closed.flags, Flag("x", "another flag")))
    assert log_fingerprint(closed) != log_fingerprint(flagged)


# --- HTML --------------------------------------------------------------------------------------------------

SECTIONS = [
    "Consent",
    "Devices",
    "Data days per 30-day window",
    "Activities",
    "Contact attempts",
    "Codes",
    "Codes not billed",
    "Flags",
    "Readings skipped",
]


def test_html_is_a_complete_page_with_every_section() -> None:
    page = render_log_html(rich_result())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "<footer>Generated by rpm-billing" in page


@pytest.mark.parametrize(
    "fact",
    [
        "p-100",  # patient id
        "2026-03 (2026-03-01 to 2026-03-31)",  # month
        "America/New_York",  # time zone
        "cms-2026 version 2026.1",  # policy and version
        "2026-04-02 09:00 EDT",  # as-of
        "written",  # consent method
        "verbal",
        "Blood pressure cuff",  # device type
        "02-10, 02-11",  # data days listed
        "99445 not billed: window ends in 2026-04",  # window's code not billed
        "open (preview)",  # window state
        "14:00 EDT",  # local time after the DST change
        "10:00 EST",  # and before it
        "time entry: data review",  # method of a time entry
        "telephone",  # medium
        "physiologic data, symptoms",  # content
        "two-way phone call with the patient about physiologic data",  # class reason
        "47 min",  # running total
        "voicemail left",  # attempt reason
        "p-100|99457|2026-03-01",  # charge key
        "99457 billed instead (20 minutes or more)",  # code not billed
        "AI-system contact Communication/call-3 counted as interactive",  # flag
        "patient-reported (no device)",  # skipped readings
    ],
)
def test_html_shows_what_an_auditor_needs(fact: str) -> None:
    text = "".join(parse(render_log_html(rich_result())).text)
    assert fact in text


def test_html_escapes_everything_from_the_ehr() -> None:
    page = render_log_html(rich_result())
    parsed = parse(page)
    # Only the tags the renderer writes itself: the payloads never become elements or attributes.
    assert set(parsed.tags) <= {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "div", "dl", "dt", "dd",
        "section", "table", "thead", "tbody", "tr", "th", "td", "p", "ul", "li", "span", "br", "strong",
        "footer",
    }  # fmt: skip
    assert not parsed.attrs & {"src", "href", "onerror", "onload", "style"}
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    text = "".join(parsed.text)
    assert SCRIPT in text and IMG in text  # shown as text, not lost


def test_html_is_self_contained_and_printable() -> None:
    page = render_log_html(rich_result())
    assert "@media print" in page and "@page" in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page
    assert "Content-Security-Policy" in page


def test_preview_banner_only_for_an_open_month() -> None:
    assert "PREVIEW" in render_log_html(rich_result(as_of=PREVIEW_AS_OF))
    assert "PREVIEW" not in render_log_html(rich_result())
    assert "preliminary (preview)" in render_log_html(rich_result(as_of=PREVIEW_AS_OF))


def test_html_without_a_patient_name_or_activities_still_renders() -> None:
    bare = replace(rich_result(), display_name=None, activities=(), flags=(), readings_skipped=(), codes=())
    page = render_log_html(bare)
    assert ">p-100<" in page
    assert page.count('class="muted">none</td>') >= 3
    assert '<p class="muted">none</p>' in page


def test_html_is_deterministic_and_matches_the_golden_file() -> None:
    page = render_log_html(rich_result())
    assert page == render_log_html(rich_result())
    assert page == golden("rich-2026-03.log.html", page)
