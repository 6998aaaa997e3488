"""Calendar months, 30-day windows and local dates in the practice time zone.

Every day and month in RPM billing is a *local* date in the practice time zone, never a UTC date. Periods
are half-open: `start` is local midnight of the first day, `end` local midnight after the last day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
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


# The local date of a reading, asked for every reading of a month, without a time-zone conversion each time.
# A moment with a fixed UTC offset (what FHIR times carry) lies in one hour of its own wall clock; within that
# hour the practice zone's offset is constant unless the zone changes it inside the hour, which is checked by
# asking the zone at the hour's first and last microsecond (two changes within one hour, back to the same
# offset, occur in no zone). So the shift from the moment's offset to the zone's is computed once per
# (offset, wall-clock hour, zone) and the local date is `(moment + shift).date()`: the zone's wall clock at
# that instant, exactly what `astimezone` gives. Any other tzinfo, or an hour in which the zone changes its
# offset (zones whose changes are not on whole hours), falls back to `astimezone`.
_NO_SHIFT = timedelta.max  # marks an hour that must fall back to astimezone
_SHIFTS: dict[tuple[object, int, int, ZoneInfo], timedelta] = {}
_SHIFTS_LIMIT = 200_000  # about 20 years of hours in a few offsets; cleared when full


def local_day(moment: datetime, tz: ZoneInfo) -> date:
    """`local_date(moment, tz)`, several times faster for many moments (see `_SHIFTS`)."""
    key = (moment.tzinfo, moment.toordinal(), moment.hour, tz)
    shift = _SHIFTS.get(key)
    if shift is None:
        shift = _hour_shift(moment, tz)
        if len(_SHIFTS) >= _SHIFTS_LIMIT:
            _SHIFTS.clear()
        _SHIFTS[key] = shift
    if shift is _NO_SHIFT:
        return moment.astimezone(tz).date()
    return (moment + shift).date()


def _hour_shift(moment: datetime, tz: ZoneInfo) -> timedelta:
    """The zone's UTC offset minus the moment's, the same for the whole wall-clock hour of `moment`; else
    _NO_SHIFT."""
    if type(moment.tzinfo) is not timezone:  # a zone's wall clock is not its instants (DST folds and gaps)
        return _NO_SHIFT
    try:
        first = moment.replace(minute=0, second=0, microsecond=0)
        last = first + _HOUR_LAST  # a fixed offset: wall-clock arithmetic is instant arithmetic
        zone_offset = first.astimezone(tz).utcoffset()
        if zone_offset is None or zone_offset != last.astimezone(tz).utcoffset():
            return _NO_SHIFT  # the zone changes its offset inside this hour
        own_offset = moment.utcoffset()
        return _NO_SHIFT if own_offset is None else zone_offset - own_offset
    except OverflowError:  # within an hour of year 1 or 9999
        return _NO_SHIFT


_HOUR_LAST = timedelta(hours=1) - timedelta(microseconds=1)


# `local_day` for a whole month of readings in one loop: the local date of each wall-clock hour of a moment's
# own fixed offset, looked up as `table[moment.toordinal()][moment.hour]` with no call and no key tuple. An
# hour is entered only when all of it falls on one local date with one shift (`_hour_shift`), so the entry
# is what `local_day` gives for every moment of that hour. Hours that straddle a local midnight (offsets
# that are not whole hours apart) or a change of the zone's offset, and every moment whose tzinfo is not a
# fixed offset, stay None: the caller asks `learn_local_day`, which answers with `local_day` itself.
HourDays = dict[int, list[date | None]]
"""Own-clock ordinal -> the local date of each of its 24 wall-clock hours (None: ask `learn_local_day`)."""

_HOUR_DAYS: dict[tuple[object, ZoneInfo], HourDays] = {}
_HOUR_DAYS_LIMIT = 20_000  # own-clock days per (offset, zone); cleared when full


def hour_days(moment_zone: object, tz: ZoneInfo) -> HourDays:
    """The table of local dates by wall-clock hour for moments whose tzinfo is `moment_zone`."""
    key = (moment_zone, tz)
    table = _HOUR_DAYS.get(key)
    if table is None:
        if len(_HOUR_DAYS) >= 64:
            _HOUR_DAYS.clear()
        table = _HOUR_DAYS[key] = {}
    return table


def learn_local_day(table: HourDays, moment: datetime, tz: ZoneInfo) -> date:
    """`local_day(moment, tz)`, entered in `table` (from `hour_days(moment.tzinfo, tz)`) when the moment's
    whole wall-clock hour falls on that one local date."""
    day = local_day(moment, tz)
    shift = _SHIFTS.get((moment.tzinfo, moment.toordinal(), moment.hour, tz))  # set by local_day
    if shift is None or shift is _NO_SHIFT:
        return day
    try:
        first = moment.replace(minute=0, second=0, microsecond=0) + shift
        if (first + _HOUR_LAST).date() != day or first.date() != day:
            return day  # the hour straddles a local midnight
    except OverflowError:
        return day
    hours = table.get(moment.toordinal())
    if hours is None:
        if len(table) >= _HOUR_DAYS_LIMIT:
            table.clear()
        hours = table[moment.toordinal()] = [None] * 24
    hours[moment.hour] = day
    return day


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
        if cls is YearMonth:
            return _year_month(day.year, day.month)
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
        return _year_month(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> YearMonth:
        return YearMonth(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def period(self, tz: ZoneInfo) -> Period:
        return Period.of_days(self.first_day, self.last_day, tz)

    def contains(self, day: date) -> bool:
        return (day.year, day.month) == (self.year, self.month)


@lru_cache(maxsize=1024)
def _year_month(year: int, month: int) -> YearMonth:
    """YearMonth(year, month), shared (months are asked for per window; a rejected one raises every time)."""
    return YearMonth(year, month)


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


@lru_cache(maxsize=4096)
def day_period(first: date, last: date, tz: ZoneInfo) -> Period:
    """`Period.of_days(first, last, tz)`, shared: the windows of many patients start on the same days."""
    return Period.of_days(first, last, tz)


def window_days(anchor: date, index: int) -> tuple[date, date]:
    """First and last local day of the `index`-th contiguous 30-day window from `anchor` (never stretched)."""
    first = anchor + timedelta(days=WINDOW_DAYS * index)
    return first, first + timedelta(days=WINDOW_DAYS - 1)
