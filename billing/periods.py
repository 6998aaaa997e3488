"""Calendar months, 30-day windows and local dates in the practice time zone.

Every day and month in RPM billing is a *local* date in the practice time zone, never a UTC date. Periods
are half-open: `start` is local midnight of the first day, `end` local midnight after the last day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW_DAYS = 30


class PeriodError(ValueError):
    """A malformed month or an unknown time zone."""


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PeriodError(f"unknown time zone {name!r} (use an IANA name such as America/New_York)") from None


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    """The local calendar date of an aware datetime in the practice zone."""
    return moment.astimezone(tz).date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """Local midnight at the start of `day` (DST-safe: midnight exists in every IANA zone we target)."""
    return datetime.combine(day, time(0), tzinfo=tz)


@dataclass(frozen=True, order=True)
class YearMonth:
    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1900 <= self.year <= 9999:
            raise PeriodError(f"invalid month {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> YearMonth:
        match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
        if not match:
            raise PeriodError(f"month must be YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def of(cls, day: date) -> YearMonth:
        return cls(day.year, day.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last_day(self) -> date:
        return self.next().first_day - timedelta(days=1)

    def next(self) -> YearMonth:
        return YearMonth(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> YearMonth:
        return YearMonth(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def period(self, tz: ZoneInfo) -> Period:
        return Period.of_days(self.first_day, self.last_day, tz)

    def contains(self, day: date) -> bool:
        return (day.year, day.month) == (self.year, self.month)


@dataclass(frozen=True)
class Period:
    """A half-open interval [start, end) of aware datetimes, built from whole local days."""

    start: datetime
    end: datetime

    @classmethod
    def of_days(cls, first: date, last: date, tz: ZoneInfo) -> Period:
        return cls(local_midnight(first, tz), local_midnight(last + timedelta(days=1), tz))

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def overlaps(self, start: datetime | None, end: datetime | None) -> bool:
        """Overlap with [start, end); a missing end is open."""
        if start is None:
            return False
        return start < self.end and (end is None or end > self.start)

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(seconds=1)).date()

    def is_closed(self, as_of: datetime) -> bool:
        """Ended at the run's as-of time (otherwise its codes are a preview)."""
        return as_of >= self.end


def window_days(anchor: date, index: int) -> tuple[date, date]:
    """First and last local day of the `index`-th contiguous 30-day window from `anchor` (never stretched)."""
    first = anchor + timedelta(days=WINDOW_DAYS * index)
    return first, first + timedelta(days=WINDOW_DAYS - 1)
