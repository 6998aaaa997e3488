"""The month view's pure helpers: thresholds, "what would change it", device-day windows, panel attention."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest

from billing.periods import Period, YearMonth, zone
from billing.policy import CMS_2025, CMS_2026, INTERACTIVE_ONLY, Policy
from billing.result import MonthResult, SupplyWindow
from smart_app.web import insights

NY = zone("America/New_York")
MARCH = YearMonth(2026, 3)


def window(first: date, data_days: list[int], *, closed: bool = False) -> SupplyWindow:
    last = first + timedelta(days=29)
    return SupplyWindow(
        episode_index=0,
        index=0,
        first_day=first,
        last_day=last,
        period=Period.of_days(first, last, NY),
        data_days=tuple(first + timedelta(days=d) for d in data_days),
        device_types=(),
        closed=closed,
    )


def result(
    minutes: int = 0,
    interactive: int = 0,
    attempts: int = 0,
    *,
    policy: Policy = CMS_2026,
    preview: bool = True,
    windows: tuple[SupplyWindow, ...] = (),
    pid: str = "p1",
) -> MonthResult:
    return MonthResult(
        patient_id=pid,
        month=MARCH,
        policy=policy,
        as_of=datetime(2026, 3, 20, 12, tzinfo=NY),
        month_period=MARCH.period(NY),
        preview=preview,
        consents=(),
        episodes=(),
        devices=(),
        windows=windows,
        activities=(),
        total_seconds=minutes * 60 + 30,
        interactive_count=interactive,
        attempt_count=attempts,
        data_days_in_month=0,
        readings_skipped=(),
        codes=(),
        not_billed=(),
        flags=(),
    )


# One row per rule: the policy's thresholds.
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            CMS_2026,
            [
                (10, "99470"),
                (20, "99457"),
                (40, "99457 + 99458"),
                (60, "99457 + 99458 x2"),
                (80, "99457 + 99458 x3"),
            ],
        ),
        (
            CMS_2025,
            [(20, "99457"), (40, "99457 + 99458"), (60, "99457 + 99458 x2"), (80, "99457 + 99458 x3")],
        ),
        (replace(CMS_2026, max_99458_units=1), [(10, "99470"), (20, "99457"), (40, "99457 + 99458")]),
        (replace(CMS_2026, max_99458_units=0), [(10, "99470"), (20, "99457")]),
    ],
    ids=["cms-2026", "cms-2025 (no 99470)", "cap 1 unit", "cap 0 units"],
)
def test_management_thresholds_follow_the_policy(policy: Policy, expected: list[tuple[int, str]]) -> None:
    assert [(t.minutes, t.label) for t in insights.management_thresholds(policy)] == expected


@pytest.mark.parametrize(
    ("minutes", "interactive", "policy", "expected"),
    [
        (0, 0, CMS_2026, ["10 more minutes including a live call: 99470"]),
        (9, 1, CMS_2026, ["1 more minute: 99470"]),
        # the brief's example: 14 minutes, no live call yet, cms-2025 has no 99470
        (14, 0, CMS_2025, ["6 more minutes including a live call: 99457"]),
        (
            14,
            0,
            CMS_2026,
            ["a live call with the patient: 99470", "6 more minutes including a live call: 99457"],
        ),
        (14, 2, CMS_2026, ["6 more minutes: 99457"]),
        (20, 1, CMS_2026, ["20 more minutes: 99457 + 99458"]),
        (
            25,
            0,
            CMS_2026,
            ["a live call with the patient: 99457", "15 more minutes including a live call: 99457 + 99458"],
        ),
        (79, 1, CMS_2026, ["1 more minute: 99457 + 99458 x3"]),
        (80, 1, CMS_2026, []),
        (95, 0, CMS_2026, ["a live call with the patient: 99457 + 99458 x3"]),
        (12, 1, INTERACTIVE_ONLY, ["8 more minutes of live calls: 99457"]),
        (45, 1, replace(CMS_2026, max_99458_units=1), []),
    ],
)
def test_management_suggestions(minutes: int, interactive: int, policy: Policy, expected: list[str]) -> None:
    assert [s.text for s in insights.management_suggestions(minutes, interactive, policy)] == expected


def test_minutes_progress_marks_reached_thresholds_and_minutes_short() -> None:
    progress = insights.minutes_progress(23, CMS_2026)
    assert [(p.threshold.minutes, p.reached, p.minutes_short) for p in progress] == [
        (10, True, 0),
        (20, True, 0),
        (40, False, 17),
        (60, False, 37),
        (80, False, 57),
    ]


@pytest.mark.parametrize(
    ("days", "left", "policy", "expected"),
    [
        (
            0,
            30,
            CMS_2026,
            [("2 more days with readings: 99445", True), ("16 more days with readings: 99454", True)],
        ),
        (
            1,
            1,
            CMS_2026,
            [
                ("1 more day with readings: 99445", True),
                ("99454 is out of reach in this window: 15 more days needed, 1 left", False),
            ],
        ),
        (5, 11, CMS_2026, [("11 more days with readings: 99454", True)]),
        (5, 10, CMS_2026, [("99454 is out of reach in this window: 11 more days needed, 10 left", False)]),
        (16, 3, CMS_2026, []),
        (5, 20, CMS_2025, [("11 more days with readings: 99454", True)]),
    ],
)
def test_supply_suggestions(days: int, left: int, policy: Policy, expected: list[tuple[str, bool]]) -> None:
    assert [(s.text, s.reachable) for s in insights.supply_suggestions(days, left, policy)] == expected


@pytest.mark.parametrize(
    ("today", "data", "expected"),
    [
        (date(2026, 3, 20), [0, 1], 11),  # 20th..30th, no reading today
        (date(2026, 3, 20), [19], 10),  # today already has a reading: it cannot add another day
        (date(2026, 2, 20), [], 30),  # before the window: all of it
        (date(2026, 3, 30), [], 1),
        (date(2026, 3, 31), [], 0),  # after the window
    ],
)
def test_window_days_left(today: date, data: list[int], expected: int) -> None:
    assert insights.window_days_left(window(date(2026, 3, 1), data), today) == expected


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 3, 1), 31),
        (date(2026, 3, 30), 2),
        (date(2026, 3, 31), 1),
        (date(2026, 4, 1), 0),
        (date(2026, 2, 1), 31),
    ],
)
def test_days_left_in_month_counts_today(today: date, expected: int) -> None:
    assert insights.days_left_in_month(MARCH, today) == expected


def test_calendar_has_thirty_days_and_marks_the_days_that_reached_2_and_16() -> None:
    w = window(date(2026, 3, 3), list(range(0, 20)))
    days = insights.window_calendar(w, date(2026, 3, 20), MARCH, insights.supply_marks(CMS_2026))
    assert len(days) == 30
    marked = {d.day: d.mark for d in days if d.mark}
    assert marked == {date(2026, 3, 4): "2-day mark: 99445", date(2026, 3, 18): "16-day mark: 99454"}
    assert [d.is_today for d in days].count(True) == 1
    assert days[-1].day == date(2026, 4, 1) and not days[-1].in_month and days[-1].is_future
    assert sum(d.has_data for d in days) == 20


def test_calendar_under_cms_2025_has_only_the_16_day_mark() -> None:
    w = window(date(2026, 3, 1), list(range(0, 20)))
    days = insights.window_calendar(w, date(2026, 3, 25), MARCH, insights.supply_marks(CMS_2025))
    assert [d.mark for d in days if d.mark] == ["16-day mark: 99454"]


def test_current_window_holds_today_else_the_latest_started() -> None:
    first = window(date(2026, 2, 10), [0, 1])
    second = window(date(2026, 3, 12), [0])
    r = result(windows=(first, second))
    assert insights.current_window(r, date(2026, 3, 5)) is first
    assert insights.current_window(r, date(2026, 3, 20)) is second
    # a past month: anchored on its last day
    assert insights.current_window(r, date(2026, 5, 1)) is second
    assert insights.current_window(result(), date(2026, 3, 5)) is None


def test_window_view_of_a_closed_window_has_no_suggestions() -> None:
    r = result(windows=(window(date(2026, 2, 1), [0, 1, 2], closed=True),))
    view = insights.window_view(r, date(2026, 3, 2))
    assert view is not None and view.suggestions == ()
    assert view.marks == ((2, "99445", True), (16, "99454", False))


def test_a_closed_month_shows_no_suggestions() -> None:
    assert insights.month_suggestions(result(14, 0, preview=False)) == ()
    assert [s.text for s in insights.month_suggestions(result(14, 1))] == ["6 more minutes: 99457"]


@pytest.mark.parametrize(
    ("minutes", "interactive", "attempts", "rank", "reasons"),
    [
        (3, 0, 2, 0, ["unreachable: 2 attempts, no live contact"]),
        (8, 0, 1, 0, ["unreachable: 1 attempt, no live contact", "2 min to 99470"]),
        (17, 1, 0, 1, ["3 min to 99457"]),
        (2, 0, 0, 2, ["no live contact yet"]),
        (12, 1, 0, 3, []),
        (80, 1, 0, 3, []),
    ],
)
def test_attention(minutes: int, interactive: int, attempts: int, rank: int, reasons: list[str]) -> None:
    found = insights.attention(result(minutes, interactive, attempts))
    assert (found.rank, list(found.reasons)) == (rank, reasons)


def test_panel_order_unreachable_then_near_then_no_contact_then_the_rest() -> None:
    rows = [
        ("Ann", result(12, 1, 0, pid="a")),
        ("Bob", result(19, 1, 0, pid="b")),
        ("Cy", result(2, 0, 0, pid="c")),
        ("Di", result(5, 0, 3, pid="d")),
        ("Ed", result(16, 2, 0, pid="e")),
    ]
    assert [r.patient_id for _, r, _ in insights.rank_panel(rows)] == ["d", "b", "e", "c", "a"]
