"""`billing.periods.local_day` (cached zone offsets per hour) against `astimezone`, the reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from billing.periods import local_date, local_day

# US zones (whole-hour changes), no DST, half-hour and 45-minute zones, a zone that changes by 30 minutes,
# and zones that change at local midnight (so that a moment in a half-hour offset, whose wall-clock hour
# straddles the change, has a local date that depends on which side of the change it falls).
ZONES = (
    "America/Santiago",
    "America/Havana",
    "America/New_York",
    "America/Los_Angeles",
    "America/Phoenix",
    "Pacific/Honolulu",
    "Europe/London",
    "Asia/Kolkata",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
)
OFFSETS = tuple(timezone(timedelta(minutes=m)) for m in (0, -300, -240, -420, 330, 345, -570, 840, -720))
UTC_START = datetime(2024, 1, 1, tzinfo=UTC)
HOURS = 4 * 366 * 24  # every hour of 2024-2027


@pytest.mark.parametrize("zone_name", ZONES)
def test_every_hour_of_four_years_matches_astimezone(zone_name: str) -> None:
    tz = ZoneInfo(zone_name)
    for hour in range(HOURS):
        instant = UTC_START + timedelta(hours=hour, minutes=(hour * 7) % 60, seconds=hour % 60)
        offset = OFFSETS[hour % len(OFFSETS)]
        for moment in (instant, instant + timedelta(minutes=59, microseconds=999_999)):
            shown = moment.astimezone(offset)
            assert local_day(shown, tz) == local_date(shown, tz), (zone_name, shown.isoformat())


@pytest.mark.parametrize("zone_name", ZONES)
def test_every_minute_around_each_offset_change(zone_name: str) -> None:
    tz = ZoneInfo(zone_name)
    previous = UTC_START.astimezone(tz).utcoffset()
    for hour in range(HOURS):
        instant = UTC_START + timedelta(hours=hour)
        offset_now = instant.astimezone(tz).utcoffset()
        if offset_now == previous:
            continue
        previous = offset_now
        for minute in range(-180, 180):
            for fixed in OFFSETS:
                moment = (instant + timedelta(minutes=minute)).astimezone(fixed)
                assert local_day(moment, tz) == local_date(moment, tz), (zone_name, moment.isoformat())
                later = moment + timedelta(seconds=59, microseconds=999_999)
                assert local_day(later, tz) == local_date(later, tz), (zone_name, later.isoformat())


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 8, 1, 30, tzinfo=ZoneInfo("America/New_York")),  # a zone's own wall clock
        datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),  # the repeated hour
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=-5))),  # near the smallest datetime
        datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=5))),  # near the largest
    ],
)
def test_other_tzinfo_and_extremes_fall_back_to_astimezone(moment: datetime) -> None:
    tz = ZoneInfo("America/Chicago")
    try:
        expected = local_date(moment, tz)
    except OverflowError:
        with pytest.raises(OverflowError):
            local_day(moment, tz)
        return
    assert local_day(moment, tz) == expected
