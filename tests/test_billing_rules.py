"""One row per billing rule (contract sections 1-3): records in, codes / reasons / flags out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from billing.engine import evaluate_month
from billing.model import PatientRecords
from billing.periods import YearMonth
from billing.policy import CMS_2025, CMS_2026, INTERACTIVE_ONLY, Policy, apply_overrides
from billing.result import ChargeStatus, MonthResult
from tests.builders import (
    AI,
    CAREGIVER,
    NURSE,
    NURSE2,
    PATIENT,
    STRANGER,
    call,
    charge,
    consent,
    daily_readings,
    device,
    reading,
    records,
    t,
    time_entry,
)

MARCH = YearMonth(2026, 3)
AFTER_MARCH = "2026-04-20 12:00"  # as-of: March and its windows are closed
TEN_DAYS = daily_readings("2026-03-01", 10)  # enough data days for every rule except 99454


@dataclass
class Row:
    name: str
    recs: PatientRecords
    codes: dict[str, int]  # expected codes billed this month -> units (only those listed in `check`)
    check: tuple[str, ...] = ("99470", "99457", "99458")
    policy: Policy = CMS_2026
    month: YearMonth = MARCH
    as_of: str = AFTER_MARCH
    flags: tuple[str, ...] = ()  # flag codes that must be raised
    no_flags: tuple[str, ...] = ()  # flag codes that must not be raised
    reason_has: dict[str, str] = field(default_factory=dict)  # code -> text in its billed/not-billed reason
    minutes: int | None = None


def mgmt(minutes: float, *extra, readings=TEN_DAYS, **kw) -> PatientRecords:
    """A month with one 5-minute interactive call plus data review making up `minutes` in total."""
    call_minutes = min(5.0, minutes)
    acts = [call("2026-03-10 10:00", call_minutes)]
    if minutes > call_minutes:
        acts.append(time_entry("2026-03-11 09:00", minutes - call_minutes))
    return records(readings=readings, activities=[*acts, *extra], **kw)


def run(row: Row) -> MonthResult:
    return evaluate_month(row.recs, row.month, row.policy, t(row.as_of))


MINUTE_ROWS = [
    Row("9 min 59 s: nothing", mgmt(9 + 59 / 60), {}, minutes=9, reason_has={"99470": "needs 10 minutes"}),
    Row("10 min: 99470", mgmt(10), {"99470": 1}, minutes=10),
    Row(
        "19 min 59 s is 19: 99470",
        mgmt(19 + 59 / 60),
        {"99470": 1},
        minutes=19,
        reason_has={"99457": "needs 20 minutes; 19 counted"},
    ),
    Row("20 min: 99457", mgmt(20), {"99457": 1}, minutes=20, reason_has={"99470": "not reported with 99457"}),
    Row("39 min 59 s: 99457 only", mgmt(39 + 59 / 60), {"99457": 1}, minutes=39),
    Row("40 min: 99457 + 99458", mgmt(40), {"99457": 1, "99458": 1}, minutes=40),
    Row("59 min: 99458 x1", mgmt(59.5), {"99457": 1, "99458": 1}, minutes=59),
    Row("60 min: 99458 x2", mgmt(60), {"99457": 1, "99458": 2}, minutes=60),
    Row("79 min: 99458 x2", mgmt(79), {"99457": 1, "99458": 2}, minutes=79),
    Row("80 min: 99458 x3", mgmt(80), {"99457": 1, "99458": 3}, minutes=80),
    Row(
        "100 min: capped at 3 units",
        mgmt(100),
        {"99457": 1, "99458": 3},
        minutes=100,
        reason_has={"99458": "capped at 3"},
    ),
    Row(
        "unit cap override 2",
        mgmt(100),
        {"99457": 1, "99458": 2},
        policy=apply_overrides(CMS_2026, max_99458_units=2),
        minutes=100,
    ),
    Row(
        "cms-2025: 15 min is nothing",
        mgmt(15),
        {},
        policy=CMS_2025,
        minutes=15,
        reason_has={"99470": "not in the cms-2025"},
    ),
    Row("cms-2025: 45 min", mgmt(45), {"99457": 1, "99458": 1}, policy=CMS_2025),
    Row("interactive-only: data review does not count", mgmt(30), {}, policy=INTERACTIVE_ONLY, minutes=5),
    Row(
        "interactive-only: 25-min call",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 25)]),
        {"99457": 1},
        policy=INTERACTIVE_ONLY,
        minutes=25,
    ),
]

CONTACT_ROWS = [
    Row(
        "no interactive contact: no management code",
        records(readings=TEN_DAYS, activities=[time_entry("2026-03-11 09:00", 45)]),
        {},
        minutes=45,
        reason_has={"99457": "no interactive communication"},
    ),
    Row(
        "voicemail is an attempt, not interactive",
        records(
            readings=TEN_DAYS,
            activities=[
                call("2026-03-10 10:00", 2, status="not-done", status_reason="recipient-unavailable"),
                time_entry("2026-03-11 09:00", 25),
            ],
        ),
        {},
        flags=("unreachable",),
        minutes=25,
    ),
    Row(
        "alert is one-way",
        records(
            readings=TEN_DAYS,
            activities=[
                call("2026-03-10 10:00", 5, categories=("alert",)),
                time_entry("2026-03-11 09:00", 25),
            ],
        ),
        {},
        minutes=25,
    ),
    Row(
        "email is not real-time; staff email still adds minutes",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 12, medium="EMAILWRIT"), call("2026-03-12 10:00", 10)],
        ),
        {"99457": 1},
        minutes=22,
    ),
    Row(
        "care-team only is not interactive but its minutes count",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 15, recipients=(NURSE2,)), call("2026-03-12 10:00", 5)],
        ),
        {"99457": 1},
        minutes=20,
    ),
    Row(
        "contact without clinical content is not interactive",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 25, content=())]),
        {},
        minutes=0,
    ),
    Row(
        "caregiver call is interactive",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 21, recipients=(CAREGIVER,))]),
        {"99457": 1},
    ),
    Row(
        "related person not documented as caregiver",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 21, recipients=(STRANGER,))]),
        {},
    ),
    Row(
        "patient-initiated call is interactive",
        records(
            readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 12, sender=PATIENT, recipients=(NURSE,))]
        ),
        {"99470": 1},
    ),
    Row(
        "AI calling system: interactive and flagged",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 12, sender=AI)]),
        {"99470": 1},
        flags=("ai-contact",),
    ),
    Row(
        "AI contacts off",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 12, sender=AI)]),
        {},
        policy=apply_overrides(CMS_2026, ai_contacts=False),
        no_flags=("ai-contact",),
    ),
    Row(
        "in-person (FACE) belongs to E/M",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 30, medium="FACE")]),
        {},
        minutes=0,
    ),
    Row(
        "video call is interactive",
        records(readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 20, medium="VIDEOCONF")]),
        {"99457": 1},
    ),
    Row(
        "interactive call without duration: counts as contact, 0 minutes, flagged",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", duration=False), time_entry("2026-03-11 09:00", 20)],
        ),
        {"99457": 1},
        flags=("missing-duration",),
        minutes=20,
    ),
    Row(
        "time entry without performer is flagged",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 5), time_entry("2026-03-11 09:00", 10, performer=None)],
        ),
        {"99470": 1},
        flags=("missing-performer",),
    ),
    Row(
        "patient-sent message adds no minutes",
        records(
            readings=TEN_DAYS,
            activities=[
                call("2026-03-10 10:00", 5),
                call("2026-03-11 10:00", 30, medium="ONLINEWRIT", sender=PATIENT, recipients=(NURSE,)),
            ],
        ),
        {},
        minutes=5,
    ),
    Row(
        "overlapping intervals merge: two staff on one call",
        records(
            readings=TEN_DAYS,
            activities=[
                call("2026-03-10 10:00", 15, id="a"),
                call("2026-03-10 10:05", 15, id="b", sender=NURSE2),
            ],
        ),
        {"99457": 1},
        minutes=20,
    ),  # 10:00-10:15 and 10:05-10:20 merge to 20 minutes, not 30
    Row(
        "length-only entries are added as they are",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 10), time_entry("2026-03-10 10:00", 10, length_only=True)],
        ),
        {"99457": 1},
        minutes=20,
    ),
    Row(
        "CCM-attributed time never counts",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 5), time_entry("2026-03-11 09:00", 30, program="ccm")],
        ),
        {},
        minutes=5,
    ),
    Row(
        "CCM-attributed call is not an RPM interactive contact",
        records(
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 25, program="ccm"), time_entry("2026-03-11 09:00", 25)],
        ),
        {},
        minutes=25,
    ),
    Row(
        "activity in another month does not count",
        records(readings=TEN_DAYS, activities=[call("2026-02-27 10:00", 25)]),
        {},
        minutes=0,
    ),
    Row(
        "call starting 23:50 on the last day counts whole in that month",
        records(readings=TEN_DAYS, activities=[call("2026-03-31 23:50", 25)]),
        {"99457": 1},
        minutes=25,
    ),
    Row(
        "call at 00:10 local on April 1 (UTC March 31) is April's",
        records(readings=TEN_DAYS, activities=[call("2026-04-01T04:10:00+00:00", 25)]),
        {},
        minutes=0,
    ),
]

LIVE_CHAT = [
    call("2026-03-10 10:00", 3, medium="ONLINEWRIT", sender=PATIENT, recipients=(NURSE,), id="m1"),
    call("2026-03-10 10:04", 4, medium="ONLINEWRIT", sender=NURSE, recipients=(PATIENT,), id="m2"),
    call(
        "2026-03-10 10:08", 4, medium="ONLINEWRIT", sender=PATIENT, recipients=(NURSE,), id="m3", content=()
    ),
]
CHAT_ROWS = [
    Row(
        "live chat off: secure messages are not interactive",
        records(readings=TEN_DAYS, activities=[*LIVE_CHAT, time_entry("2026-03-11 09:00", 10)]),
        {},
    ),
    Row(
        "live chat on: alternating session is interactive",
        records(readings=TEN_DAYS, activities=[*LIVE_CHAT, time_entry("2026-03-11 09:00", 10)]),
        {"99457": 1},
        policy=apply_overrides(CMS_2026, live_chat=True),
        minutes=21,
    ),
    Row(
        "live chat: gap over the window breaks the session",
        records(
            readings=TEN_DAYS,
            activities=[
                LIVE_CHAT[0],
                replace(
                    LIVE_CHAT[1],
                    sent=t("2026-03-10 10:30"),
                    start=t("2026-03-10 10:30"),
                    end=t("2026-03-10 10:34"),
                ),
                time_entry("2026-03-11 09:00", 10),
            ],
        ),
        {},
        policy=apply_overrides(CMS_2026, live_chat=True),
    ),
    Row(
        "email never forms a chat session",
        records(readings=TEN_DAYS, activities=[replace(m, medium=("EMAILWRIT",)) for m in LIVE_CHAT]),
        {},
        policy=apply_overrides(CMS_2026, live_chat=True),
    ),
]

CONSENT_ROWS = [
    Row(
        "no consent: nothing counts",
        records(consents=[], readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 25)]),
        {},
        check=("99457", "99445", "99453"),
        minutes=0,
    ),
    Row(
        "consent starting mid-month: earlier activity does not count",
        records(
            consents=[consent("2026-03-15 00:00")],
            readings=daily_readings("2026-03-16", 10),
            activities=[call("2026-03-10 10:00", 25), call("2026-03-20 10:00", 12)],
        ),
        {"99470": 1},
        minutes=12,
    ),
    Row(
        "consent revoked mid-month: later activity does not count",
        records(
            consents=[consent("2026-01-01 00:00", "2026-03-15 00:00", status="inactive")],
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 12), call("2026-03-20 10:00", 25)],
        ),
        {"99470": 1},
        minutes=12,
    ),
    Row(
        "inactive consent without an end is not counted and flagged",
        records(
            consents=[consent(status="inactive")],
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 25)],
        ),
        {},
        flags=("consent-inactive-without-end",),
    ),
    Row(
        "written consent bills like verbal",
        records(
            consents=[consent(method="written")], readings=TEN_DAYS, activities=[call("2026-03-10 10:00", 25)]
        ),
        {"99457": 1},
    ),
    Row(
        "consent dateTime after the first counted activity is flagged",
        records(
            consents=[consent("2026-01-01 00:00", recorded="2026-03-12 09:00")],
            readings=TEN_DAYS,
            activities=[call("2026-03-10 10:00", 25)],
        ),
        {"99457": 1},
        flags=("consent-after-first-use",),
    ),
    Row(
        "touching consents merge into one episode",
        records(
            consents=[
                consent("2026-01-01 00:00", "2026-03-10 00:00", id="c1", status="inactive"),
                consent("2026-03-10 00:00", id="c2"),
            ],
            readings=daily_readings("2026-03-01", 20),
        ),
        {"99454": 1},
        check=("99454", "99445"),
    ),
]


def days(n: int, first: str = "2026-03-01", **kw) -> list:
    return daily_readings(first, n, **kw)


SUPPLY = ("99445", "99454")
DATA_ROWS = [
    Row(
        "1 data day: no supply code",
        records(readings=days(1)),
        {},
        check=SUPPLY,
        reason_has={"99445": "needs 2 data days; 1"},
    ),
    Row("2 data days: 99445", records(readings=days(2)), {"99445": 1}, check=SUPPLY),
    Row("15 data days: 99445", records(readings=days(15)), {"99445": 1}, check=SUPPLY),
    Row("16 data days: 99454", records(readings=days(16)), {"99454": 1}, check=SUPPLY),
    Row("cms-2025: 15 data days is nothing", records(readings=days(15)), {}, check=SUPPLY, policy=CMS_2025),
    Row(
        "same-day readings count once",
        records(readings=days(15) + days(15, hour=20)),
        {"99445": 1},
        check=SUPPLY,
    ),
    Row(
        "two devices on the same day count once; flagged as two device types",
        records(
            devices=[device("d1", "bp"), device("d2", "scale")], readings=days(10) + days(10, device_id="d2")
        ),
        {"99445": 1},
        check=SUPPLY,
        flags=("multiple-device-types",),
    ),
    Row(
        "same-identifier duplicates are one reading at the earliest time",
        records(
            readings=[
                *days(15),
                reading("2026-03-20 08:00", identifier="urn:x|dup"),
                reading("2026-03-21 08:00", identifier="urn:x|dup"),
            ]
        ),
        {"99454": 1},
        check=SUPPLY,
    ),
    Row(
        "patient-reported readings never count",
        records(
            readings=[*days(15), *[reading(f"2026-03-{d:02d} 09:00", device_id=None) for d in range(16, 25)]]
        ),
        {"99445": 1},
        check=SUPPLY,
        flags=("readings-skipped",),
    ),
    Row(
        "a device that is not the patient's RPM device does not count",
        records(
            readings=[
                *days(15),
                *[reading(f"2026-03-{d:02d} 09:00", device_id="other") for d in range(16, 25)],
            ]
        ),
        {"99445": 1},
        check=SUPPLY,
        flags=("readings-skipped",),
    ),
    Row(
        "readings outside consent do not count",
        records(  # Feb 10-14 are before consent: 15 days remain
            consents=[consent("2026-02-15 00:00")], readings=days(20, first="2026-02-10")
        ),
        {"99445": 1},
        check=SUPPLY,
    ),
    Row(
        "readings after revocation inside the window are skipped and flagged",
        records(  # 13 days qualify
            consents=[consent("2026-02-01 00:00", "2026-03-05 00:00", status="inactive")],
            readings=days(20, first="2026-02-20"),
        ),
        {"99445": 1},
        check=SUPPLY,
        flags=("readings-skipped",),
        no_flags=("consent-inactive-without-end",),
    ),
    Row(
        "readings attributed to RTM do not count",
        records(
            readings=[*days(15), *[reading(f"2026-03-{d:02d} 09:00", program="rtm") for d in range(16, 25)]]
        ),
        {"99445": 1},
        check=SUPPLY,
    ),
    Row(
        "UTC date differs from local date near midnight",
        records(
            readings=[
                # 23:30 local on 2026-03-01..16 is the next UTC day; still 16 local days, window from 03-01
                reading(
                    (t("2026-03-01 23:30") + timedelta(days=i))
                    .astimezone(t("2026-01-01T00:00:00+00:00").tzinfo)
                    .isoformat()
                )
                for i in range(16)
            ]
        ),
        {"99454": 1},
        check=SUPPLY,
    ),
    Row(
        "DST change day (2026-03-08) is one local day",
        records(
            readings=[
                *days(6, first="2026-03-02"),
                reading("2026-03-08 00:30"),
                reading("2026-03-08 23:30"),
                *days(8, first="2026-03-09"),
            ]
        ),  # 15 local days; counting Mar 8 twice would make it 16
        {"99445": 1},
        check=SUPPLY,
    ),
    Row(
        "management codes with fewer than 2 data days are flagged",
        records(readings=days(1), activities=[call("2026-03-10 10:00", 25)]),
        {"99457": 1},
        flags=("low-data-days",),
    ),
]

WINDOW_ROWS = [
    Row(
        "window from Feb 10 ends Mar 11: belongs to March",
        records(consents=[consent("2026-02-01 00:00")], readings=days(20, first="2026-02-10")),
        {"99454": 1},
        check=SUPPLY,
    ),
    Row(
        "window from Mar 5 ends Apr 3: nothing for March",
        records(readings=days(20, first="2026-03-05")),
        {},
        check=SUPPLY,
        reason_has={"99454/99445": "no 30-day window ends in 2026-03"},
    ),
    Row(
        "window still open at month end: planned preview",
        records(readings=days(20, first="2026-03-05")),
        {"99454": 1},
        check=SUPPLY,
        month=YearMonth(2026, 4),
        as_of="2026-04-02 12:00",
    ),
    Row(
        "windows never stretch: 15 days in window 1, more right after",
        records(
            readings=[*days(15, first="2026-02-01"), *days(10, first="2026-03-03")],
            consents=[consent("2026-01-15 00:00")],
        ),
        {"99445": 1},
        check=SUPPLY,
    ),
    Row(
        "no window starts after the episode ends",
        records(
            consents=[consent("2026-01-01 00:00", "2026-02-05 00:00", status="inactive")],
            readings=days(20, first="2026-01-05"),
        ),
        {},
        check=SUPPLY,
    ),
    Row(
        "a window keeps its 30 days when consent ends inside it",
        records(
            consents=[consent("2026-02-01 00:00", "2026-03-05 00:00", status="inactive")],
            readings=days(30, first="2026-02-10"),
        ),
        {"99454": 1},
        check=SUPPLY,
    ),
]

# A second episode in March 2026 after an earlier episode whose 99453 was billed in June 2025.
NEW_EPISODE_AFTER_BILLED_SETUP = records(
    consents=[
        consent("2025-06-01 00:00", "2025-09-01 00:00", status="inactive", id="old"),
        consent("2026-03-01 00:00", id="new"),
    ],
    readings=days(10),
    charges=[charge("99453", start="2025-06-05 00:00", end="2025-07-05 00:00", key="p1|99453|2025-06-05")],
)

SETUP_ROWS = [
    Row(
        "99453 with the first window reaching 2 days",
        records(readings=days(2)),
        {"99453": 1},
        check=("99453",),
    ),
    Row(
        "99453 already billed for an earlier window",
        records(readings=days(10), charges=[charge("99453", key="p1|99453|2025-06-01")]),
        {},
        check=("99453",),
        reason_has={"99453": "already billed"},
    ),
    Row(
        "our own earlier 99453 for this window keeps the code",
        records(readings=days(10), charges=[charge("99453", key="p1|99453|2026-03-01")]),
        {"99453": 1},
        check=("99453",),
    ),
    Row(
        "entered-in-error 99453 does not block",
        records(
            readings=days(10), charges=[charge("99453", status="entered-in-error", key="p1|99453|2025-06-01")]
        ),
        {"99453": 1},
        check=("99453",),
    ),
    Row("cms-2025: 99453 needs 16 days", records(readings=days(15)), {}, check=("99453",), policy=CMS_2025),
    Row(
        "99453 belongs to an earlier month and was never written: flagged",
        records(consents=[consent("2026-01-01 00:00")], readings=days(10, first="2026-01-20") + days(10)),
        {},
        check=("99453",),
        flags=("setup-earlier-month",),
    ),
    Row(
        "99453 of an earlier month already written: no flag",
        records(
            consents=[consent("2026-01-01 00:00")],
            readings=days(10, first="2026-01-20") + days(10),
            charges=[charge("99453", key="p1|99453|2026-01-20")],
        ),
        {},
        check=("99453",),
        no_flags=("setup-earlier-month",),
    ),
    Row(
        "new episode: earlier 99453 blocks by default",
        NEW_EPISODE_AFTER_BILLED_SETUP,
        {},
        check=("99453",),
    ),
    Row(
        "new episode: rebill setting allows a new 99453",
        NEW_EPISODE_AFTER_BILLED_SETUP,
        {"99453": 1},
        check=("99453",),
        policy=apply_overrides(CMS_2026, rebill_99453_new_episode=True),
    ),
]

RTM_ROWS = [
    Row(
        "RTM charge overlapping the month blocks RPM management",
        records(
            readings=days(20),
            activities=[call("2026-03-10 10:00", 25)],
            charges=[charge("98980", start="2026-03-01 00:00", end="2026-04-01 00:00")],
        ),
        {},
        check=("99457", "99454", "99453"),
        reason_has={"99457": "RPM and RTM"},
    ),
    Row(
        "RTM charge without occurrence blocks nothing and is flagged",
        records(readings=days(20), activities=[call("2026-03-10 10:00", 25)], charges=[charge("98980")]),
        {"99457": 1, "99454": 1, "99453": 1},
        check=("99457", "99454", "99453"),
        flags=("rtm-without-occurrence",),
    ),
    Row(
        "ongoing RTM charge (occurrence without an end) started earlier blocks RPM management",
        records(
            readings=days(20),
            activities=[call("2026-03-10 10:00", 25)],
            charges=[charge("98980", start="2026-01-01 00:00")],
        ),
        {},
        check=("99457",),
        reason_has={"99457": "RPM and RTM"},
    ),
    Row(
        "aborted RTM charge blocks nothing",
        records(
            readings=days(20),
            activities=[call("2026-03-10 10:00", 25)],
            charges=[charge("98980", "aborted", start="2026-03-01 00:00", end="2026-04-01 00:00")],
        ),
        {"99457": 1},
        check=("99457",),
    ),
]

ALL_ROWS = (
    MINUTE_ROWS + CONTACT_ROWS + CHAT_ROWS + CONSENT_ROWS + DATA_ROWS + WINDOW_ROWS + SETUP_ROWS + RTM_ROWS
)


@pytest.mark.parametrize("row", ALL_ROWS, ids=[r.name for r in ALL_ROWS])
def test_rule(row: Row) -> None:
    result = run(row)
    billed = {c.code: c.units for c in result.codes if c.code in row.check}
    assert billed == row.codes, _explain(result)
    if row.minutes is not None:
        assert result.minutes == row.minutes, _explain(result)
    raised = {f.code for f in result.flags}
    for flag in row.flags:
        assert flag in raised, _explain(result)
    for flag in row.no_flags:
        assert flag not in raised, _explain(result)
    for code, text in row.reason_has.items():
        reasons = [c.reason for c in result.codes if c.code == code]
        reasons += [n.reason for n in result.not_billed if n.code == code]
        assert any(text in r for r in reasons), (code, reasons)
    # every code of the policy's set has either a line or a reason
    for code in row.check:
        if code in billed:
            continue
        if code in ("99445", "99454") and not any(n.code == "99454/99445" for n in result.not_billed):
            assert any(n.code == code for n in result.not_billed) or not result.windows, _explain(result)
        elif code not in ("99445", "99454"):
            assert any(n.code == code for n in result.not_billed), (code, _explain(result))


def _explain(result: MonthResult) -> str:
    lines = [f"minutes={result.minutes} codes={result.code_units()}"]
    lines += [f"  not billed {n.code}: {n.reason}" for n in result.not_billed]
    lines += [f"  flag {f.code}: {f.message}" for f in result.flags]
    lines += [
        f"  {o.activity.id}: {o.activity_class} {o.reason} (+{o.added_seconds}s)" for o in result.activities
    ]
    return "\n".join(lines)


def test_preview_month_is_planned_and_closed_month_billable() -> None:
    recs = records(readings=days(20), activities=[call("2026-03-10 10:00", 25)])
    open_month = evaluate_month(recs, MARCH, CMS_2026, t("2026-03-25 12:00"))
    assert open_month.preview
    assert {c.status for c in open_month.codes} == {ChargeStatus.PLANNED}
    closed = evaluate_month(recs, MARCH, CMS_2026, t("2026-04-01 00:00"))
    assert not closed.preview
    management = [c for c in closed.codes if c.code == "99457"]
    assert management[0].status is ChargeStatus.BILLABLE


def test_two_windows_end_in_one_month() -> None:
    # Windows from Jan 1: Jan 1-30, Jan 31-Mar 1, Mar 2-31: two windows end in March.
    recs = records(consents=[consent("2026-01-01 00:00")], readings=days(90, first="2026-01-01"))
    result = evaluate_month(recs, MARCH, CMS_2026, t(AFTER_MARCH))
    supply = sorted((c.period.first_day.isoformat(), c.code) for c in result.codes if c.code == "99454")
    assert supply == [("2026-01-31", "99454"), ("2026-03-02", "99454")]
    keys = {c.charge_key for c in result.codes}
    assert "p1|99454|2026-01-31" in keys and "p1|99454|2026-03-02" in keys


def test_charge_keys_and_running_total() -> None:
    recs = records(
        readings=days(20), activities=[call("2026-03-10 10:00", 12), time_entry("2026-03-11 09:00", 30)]
    )
    result = evaluate_month(recs, MARCH, CMS_2026, t(AFTER_MARCH))
    assert {c.charge_key for c in result.codes} >= {"p1|99457|2026-03-01", "p1|99458|2026-03-01"}
    assert [o.cumulative_minutes for o in result.activities] == [12, 42]
    assert result.policy.name == "cms-2026" and result.policy.version


def test_evidence_lists_consent_devices_and_interactive_communications() -> None:
    recs = records(readings=days(20), activities=[call("2026-03-10 10:00", 25, id="call-1")])
    result = evaluate_month(recs, MARCH, CMS_2026, t(AFTER_MARCH))
    line = next(c for c in result.codes if c.code == "99457")
    assert "Consent/c1" in line.evidence and "Communication/call-1" in line.evidence
    supply = next(c for c in result.codes if c.code == "99454")
    assert "Device/d1" in supply.evidence


def test_every_activity_has_a_reason() -> None:
    recs = records(
        readings=days(5),
        activities=[
            call("2026-03-10 10:00", 5),
            call("2026-03-11 10:00", 1, status="not-done"),
            call("2026-03-12 10:00", 3, categories=("reminder",)),
            time_entry("2026-03-13 10:00", 4),
        ],
    )
    result = evaluate_month(recs, MARCH, CMS_2026, t(AFTER_MARCH))
    assert len(result.activities) == 4
    assert all(o.reason and o.minutes_reason for o in result.activities)
    assert result.attempt_count == 1 and result.interactive_count == 1


def test_naive_times_are_flagged() -> None:
    recs = records(readings=days(5), activities=[replace(call("2026-03-10 10:00", 25), naive_time=True)])
    result = evaluate_month(recs, MARCH, CMS_2026, t(AFTER_MARCH))
    assert "time-without-offset" in {f.code for f in result.flags}


def test_as_of_must_be_aware() -> None:
    from datetime import datetime

    from billing.engine import EngineError

    with pytest.raises(EngineError):
        evaluate_month(records(), MARCH, CMS_2026, datetime(2026, 4, 1))
