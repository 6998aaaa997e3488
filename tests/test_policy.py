"""Policies as data: names, versions, the month's default, and deployment overrides."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.engine import evaluate_month
from billing.periods import PeriodError, YearMonth
from billing.policy import (
    CMS_2025,
    CMS_2026,
    POLICIES,
    PolicyError,
    apply_overrides,
    get_policy,
    policy_for_month,
)
from tests.builders import consent, daily_readings, records, t


@pytest.mark.parametrize(
    ("month", "expected"),
    [((2025, 12), "cms-2025"), ((2026, 1), "cms-2026"), ((2024, 6), "cms-2025"), ((2027, 3), "cms-2026")],
)
def test_the_month_picks_the_policy(month: tuple[int, int], expected: str) -> None:
    assert policy_for_month(*month).name == expected
    assert get_policy(None, *month).name == expected


@pytest.mark.parametrize(
    ("setting", "value", "attribute", "expected"),
    [
        ("max_99458_units", "2", "max_99458_units", 2),
        (
            "interactive_media",
            "phone, videoconf,FACE",
            "interactive_media",
            frozenset({"PHONE", "VIDEOCONF", "FACE"}),
        ),
        ("ai_contacts", "off", "ai_contacts", False),
        ("live_chat", "yes", "live_chat", True),
        ("chat_window", "7.5", "chat_window", timedelta(minutes=7.5)),
        ("setup_min_days", "16", "setup_min_days", 16),
        ("rebill_99453_new_episode", "true", "rebill_99453_new_episode", True),
        ("timezone", "America/Chicago", "timezone", "America/Chicago"),
    ],
)
def test_overrides_from_text(setting: str, value: str, attribute: str, expected: object) -> None:
    policy = apply_overrides(CMS_2026, **{setting: value})
    assert getattr(policy, attribute) == expected
    assert policy.name == "cms-2026" and policy.version == CMS_2026.version


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_99458_units", "-1"),
        ("max_99458_units", "many"),
        ("ai_contacts", "maybe"),
        ("interactive_media", ""),
        ("chat_window", "soon"),
        ("unknown_setting", "1"),
    ],
)
def test_bad_overrides_are_refused(setting: str, value: str) -> None:
    with pytest.raises(PolicyError):
        apply_overrides(CMS_2026, **{setting: value})


def test_unknown_policy_name() -> None:
    with pytest.raises(PolicyError, match="known: cms-2025, cms-2026, interactive-only"):
        get_policy("cms-2099", 2026, 3)


def test_policies_are_versioned_and_distinct() -> None:
    assert {p.name for p in POLICIES.values()} == {"cms-2026", "cms-2025", "interactive-only"}
    assert all(p.version for p in POLICIES.values())
    assert not CMS_2025.has_99470 and not CMS_2025.has_99445 and CMS_2025.setup_min_days == 16
    assert POLICIES["interactive-only"].minutes_basis == "interactive"


def test_unknown_time_zone_is_a_clear_error() -> None:
    with pytest.raises(PeriodError, match="unknown time zone"):
        evaluate_month(
            records(),
            YearMonth(2026, 3),
            apply_overrides(CMS_2026, timezone="Nowhere/Land"),
            t("2026-04-02 00:00"),
        )


def test_setup_window_uses_the_policy_of_its_own_month_when_none_is_named() -> None:
    # Episode from Dec 2025: window 1 (Dec 5 - Jan 3) has 10 days and belongs to January 2026, whose
    # policy (cms-2026) needs 2 days for 99453. Window 0 would need 16 under cms-2025 if it ended in 2025.
    recs = records(consents=[consent("2025-12-01 00:00")], readings=daily_readings("2025-12-05", 10))
    january = YearMonth(2026, 1)
    result = evaluate_month(
        recs,
        january,
        policy_for_month(2026, 1),
        t("2026-02-10 00:00"),
        policy_for_month=lambda m: policy_for_month(m.year, m.month),
    )
    assert "99453" in result.code_units()
    # An episode whose first window ends in December 2025 with 10 days: cms-2025 needs 16, so no 99453
    # there; the next window (ending in January) has 0 days: none at all.
    recs = records(consents=[consent("2025-11-01 00:00")], readings=daily_readings("2025-11-20", 10))
    december = evaluate_month(
        recs,
        YearMonth(2025, 12),
        policy_for_month(2025, 12),
        t("2026-02-10 00:00"),
        policy_for_month=lambda m: policy_for_month(m.year, m.month),
    )
    assert "99453" not in december.code_units()
    assert any("16 data days" in n.reason for n in december.not_billed if n.code == "99453")
