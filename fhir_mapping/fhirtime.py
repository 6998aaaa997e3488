"""FHIR `date`, `dateTime` and `instant` values, and UCUM durations, read tolerantly.

FHIR requires an offset on every time of day; feeds often omit it. Such a time is read in the practice time
zone and marked `naive` so the engine can flag it. Choices (also in the report to the lead):

- A date-only value where an instant is needed is local midnight of that date in the practice zone (not
  flagged as naive: a date is legitimately zone-free in FHIR).
- Year or year-month values are too imprecise to place a reading or an activity: rejected.
- Tolerated vendor quirks: a time without seconds (`10:30`), an offset without a colon (`+0100`), a
  lower-case `z`, fractional seconds of any length (cut to microseconds), the leap second `:60` (read as
  `:59`). Not tolerated: `24:00` (not valid FHIR), out-of-range fields, offsets beyond +/-14:00.
- FHIR periods are inclusive at the precision given (`end` 2026-03-31 covers that whole day). The domain's
  ends are exclusive, so `FhirTime.exclusive_end` adds one unit of the value's precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from fhir_mapping.canon import UCUM
from fhir_mapping.issues import MappingError, quote


class FhirTimeError(MappingError):
    """A date/time value that cannot be read; the message names the field and the value."""


class Precision(StrEnum):
    DAY = "day"
    MINUTE = "minute"
    SECOND = "second"
    FRACTION = "fraction"


@dataclass(frozen=True, slots=True)
class FhirTime:
    """An aware instant read from FHIR, with how precisely it was given."""

    moment: datetime  # aware; a date-only value is local midnight in the practice zone
    precision: Precision
    naive: bool = False  # a time of day without an offset, placed in the practice zone
    fraction_digits: int = 0

    def exclusive_end(self) -> datetime:
        """The first instant after this value as an inclusive FHIR `Period.end`.

        A date covers its whole local day (next local midnight, DST-safe); a time covers its last unit.
        """
        if self.precision is Precision.DAY:
            return _midnight(self.moment.date() + timedelta(days=1), self.moment.tzinfo)
        if self.precision is Precision.MINUTE:
            return self.moment + timedelta(minutes=1)
        if self.precision is Precision.SECOND:
            return self.moment + timedelta(seconds=1)
        step = max(1, 10 ** (6 - min(self.fraction_digits, 6)))
        return self.moment + timedelta(microseconds=step)


_DATETIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<offset>[Zz]|[+-]\d{2}:?\d{2})?)?)?)?"
)
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")
# The shape nearly every feed sends (`2026-03-05T10:00:00-05:00`, `...:00.250Z`): ASCII digits, a full time
# of day within range, at most six fraction digits, the offset (if any) with a colon. Such a value gives the
# same instant through `datetime.fromisoformat`, several times faster than the tolerant reading below, which
# still handles (and words the errors of) everything else, including a day that does not exist.
_COMMON = re.compile(
    r"(\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.(\d{1,6}))?)(Z|[+-]\d\d:\d\d)?", re.ASCII
)


def _midnight(day: date, tz: tzinfo | None) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


@lru_cache(maxsize=256)
def _fixed_offset(text: str) -> timezone | None:
    """`Z`, `+05:30`, `-0400` as a fixed-offset tzinfo; None when out of FHIR's range."""
    if text in ("Z", "z"):
        return UTC
    match = _OFFSET.fullmatch(text)
    if match is None:
        return None
    hours, minutes = int(match.group(2)), int(match.group(3))
    if minutes > 59 or hours * 60 + minutes > 14 * 60:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if match.group(1) == "-" else delta)


def parse_time(value: object, tz: ZoneInfo, field: str) -> FhirTime:
    """Read a FHIR date/dateTime/instant where an instant is needed.

    Raises FhirTimeError naming `field` and the value when it is not a usable FHIR date or time.
    """
    if not isinstance(value, str):
        raise FhirTimeError(f"{field} {quote(value)} is not a FHIR dateTime (not a string)")
    common = _COMMON.fullmatch(value)
    if common is not None and (moment := _common_moment(common, tz)) is not None:
        fraction, offset = common.group(2, 3)
        if fraction is None:
            return FhirTime(moment, Precision.SECOND, offset is None)
        return FhirTime(moment, Precision.FRACTION, offset is None, len(fraction))
    match = _DATETIME.fullmatch(value.strip())
    if match is None:
        raise FhirTimeError(f"{field} {quote(value)} is not a FHIR dateTime")
    parts = match.groupdict()
    if parts["day"] is None:
        raise FhirTimeError(f"{field} {quote(value)} is too imprecise: a full date is needed")
    try:
        day = date(int(parts["year"]), int(parts["month"]), int(parts["day"]))
    except ValueError:
        raise FhirTimeError(f"{field} {quote(value)} is not a FHIR dateTime (no such date)") from None
    if parts["hour"] is None:
        return FhirTime(_midnight(day, tz), Precision.DAY)
    return _with_time(value, day, parts, tz, field)


def parse_moment(value: object, tz: ZoneInfo, field: str) -> tuple[datetime, bool]:
    """`parse_time` for a caller that needs only the instant and whether it was read without an offset.

    Device readings are the bulk of a month's data and need no more, so the common shape is read here
    without building a FhirTime; anything else goes through `parse_time` (same instants, same errors).
    """
    if type(value) is str and len(value) in PLAIN_LENGTHS and value.isascii():
        found = plain_moment(value, tz)
        if found is not None:
            return found
    if isinstance(value, str) and (common := _COMMON.fullmatch(value)) is not None:
        local, _, offset = common.groups()
        zone_info = tz if offset is None else _fixed_offset(offset)
        if zone_info is not None:  # the steps of _common_moment, inlined: this runs for every reading
            try:
                parsed_local = datetime.fromisoformat(local)
            except ValueError:
                pass
            else:
                return datetime.combine(parsed_local.date(), parsed_local.time(), zone_info), offset is None
    parsed = parse_time(value, tz, field)
    return parsed.moment, parsed.naive


# `2026-03-05T10:00:00-05:00`, `2026-03-05T15:00:00Z`, `2026-03-05T10:00:00`: the common shape without a
# fraction, told by its length and separators (and read by `datetime.fromisoformat`, which checks the
# digits, the day and the ranges of the time exactly as `_COMMON` and `_common_moment` do), without the
# regular expression. ASCII only, as `_COMMON` (`str.isdigit` and `fromisoformat` know other digits).
PLAIN_LENGTHS = frozenset({19, 20, 25})


def plain_moment(value: str, tz: ZoneInfo) -> tuple[datetime, bool] | None:
    """`parse_moment` of a value of the plain common shape; None when the general reading must decide."""
    if value[4:17:3] != "--T::":  # the separators at 4, 7, 10, 13 and 16
        return None
    length = len(value)
    zone_info: tzinfo | None
    if length == 25:
        offset = value[19:]
        zone_info = _PLAIN_OFFSETS.get(offset)
        if zone_info is None:
            if offset[0] not in "+-" or offset[3] != ":" or not (offset[1:3] + offset[4:]).isdigit():
                return None
            zone_info = _fixed_offset(offset)
            if zone_info is None:
                return None
            if len(_PLAIN_OFFSETS) < 64:  # a handful of offsets in any real feed
                _PLAIN_OFFSETS[offset] = zone_info
    elif length == 20:
        if value[19] != "Z":
            return None
        zone_info = UTC
    else:
        zone_info = tz
    try:
        local = datetime.fromisoformat(value[:19])
    except ValueError:
        return None
    return datetime.combine(local, local.time(), zone_info), length == 19


_PLAIN_OFFSETS: dict[str, tzinfo] = {}


def _common_moment(common: re.Match[str], tz: ZoneInfo) -> datetime | None:
    """The instant of a value of the common shape; None when the tolerant parser must decide."""
    offset = common.group(3)
    zone_info = tz if offset is None else _fixed_offset(offset)
    if zone_info is None:
        return None  # beyond +/-14:00 or minutes over 59
    try:
        local = datetime.fromisoformat(common.group(1))
    except ValueError:
        return None  # no such day
    # combine(), not replace(): several times faster, and every reading shares one tzinfo per offset.
    return datetime.combine(local.date(), local.time(), zone_info)


def _with_time(value: str, day: date, parts: dict[str, str | None], tz: ZoneInfo, field: str) -> FhirTime:
    hour, minute = int(parts["hour"] or 0), int(parts["minute"] or 0)
    second = int(parts["second"]) if parts["second"] is not None else 0
    if hour == 24:
        raise FhirTimeError(f"{field} {quote(value)} is not a FHIR dateTime (24:00 is not a valid time)")
    if hour > 23 or minute > 59 or second > 60:
        raise FhirTimeError(f"{field} {quote(value)} is not a FHIR dateTime (time out of range)")
    second = min(second, 59)  # a leap second is read as the last second of its minute
    fraction = parts["fraction"] or ""
    micro = int((fraction + "000000")[:6]) if fraction else 0
    if parts["offset"] is None:
        zone_info: tzinfo = tz
        naive = True
    else:
        offset = _fixed_offset(parts["offset"])
        if offset is None:
            raise FhirTimeError(f"{field} {quote(value)} is not a FHIR dateTime (offset out of range)")
        zone_info, naive = offset, False
    moment = datetime.combine(day, time(hour, minute, second, micro), tzinfo=zone_info)
    if fraction:
        precision = Precision.FRACTION
    elif parts["second"] is not None:
        precision = Precision.SECOND
    else:
        precision = Precision.MINUTE
    return FhirTime(moment, precision, naive=naive, fraction_digits=len(fraction))


# UCUM time units the contract names, with the unit texts vendors write instead.
_UCUM_SECONDS = {"s": 1, "min": 60, "h": 3600}
_TEXT_SECONDS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
}


def duration_seconds(quantity: object, field: str) -> int:
    """Whole seconds of a FHIR Quantity/Duration in UCUM `s`, `min` or `h` (or that unit written as text).

    Fractions of a second are dropped (19.99 min is 1199 s). Raises MappingError for a missing, negative or
    non-numeric value, or a unit that is not a time unit.
    """
    if not isinstance(quantity, dict):
        raise MappingError(f"{field} is not a Quantity")
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MappingError(f"{field}.value {quote(value)} is not a number")
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise MappingError(f"{field}.value {quote(value)} is not a duration (negative or not finite)")
    factor = _unit_seconds(quantity)
    if factor is None:
        unit = quantity.get("code", quantity.get("unit"))
        raise MappingError(f"{field} unit {quote(unit)} is not a time unit (use UCUM min, s or h)")
    return int(amount * factor)


def _unit_seconds(quantity: dict[str, object]) -> int | None:
    system, code, unit = quantity.get("system"), quantity.get("code"), quantity.get("unit")
    # A code is trusted only when it is UCUM or carries no system; otherwise the human unit text decides.
    if isinstance(code, str) and system in (None, UCUM) and code in _UCUM_SECONDS:
        return _UCUM_SECONDS[code]
    if isinstance(unit, str):
        return _TEXT_SECONDS.get(unit.strip().lower())
    return None
