"""Device data: which readings qualify, data days, and the 30-day supply windows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from operator import attrgetter
from typing import NamedTuple
from zoneinfo import ZoneInfo

from billing.consent import Episode, InstantSpans
from billing.model import DeviceRecord, Reading
from billing.periods import WINDOW_DAYS, HourDays, day_period, hour_days, learn_local_day, window_days
from billing.result import SupplyWindow, supply_window

# Why a reading does not count, in words a billing person understands.
SKIP_PATIENT_REPORTED = "patient-reported (no device)"
SKIP_NOT_RPM_DEVICE = "not one of the patient's RPM devices"
SKIP_OTHER_PROGRAM = "attributed to another care program"
SKIP_OUTSIDE_CONSENT = "outside RPM consent"


# One of each per reading of the month, internal to the engine: named tuples, because building a frozen
# dataclass costs a guarded `object.__setattr__` per field, several times the cost of a tuple.
class QualifyingReading(NamedTuple):
    reading: Reading
    episode: Episode
    day: date  # local date in the practice zone


class SkippedReading(NamedTuple):
    reading: Reading
    reason: str


def qualify_readings(
    readings: Iterable[Reading],
    devices: Sequence[DeviceRecord],
    all_episodes: Sequence[Episode],
    tz: ZoneInfo,
) -> tuple[list[QualifyingReading], list[SkippedReading]]:
    """Split readings into qualifying ones (deduplicated) and skipped ones with the reason.

    Readings sharing an identifier are one reading; among its qualifying copies the earliest time is its time.
    """
    data = device_data(readings, devices, all_episodes, tz)
    return data.qualifying, data.skipped


class DeviceData(NamedTuple):
    """`qualify_readings` with what one pass learns on the way (internal to the engine)."""

    qualifying: list[QualifyingReading]  # in (time, id) order
    skipped: list[SkippedReading]
    # Every qualifying time carries a fixed UTC offset (a `datetime.timezone`): Python then compares them as
    # instants, a total order, so the sorted list can be cut by time (a bisection) and its first moment is
    # the earliest. With a zone's wall-clock time (DST folds compare equal) the engine scans instead.
    fixed_offsets: bool
    any_naive: bool  # some qualifying reading's time was read without an offset


def device_data(
    readings: Iterable[Reading],
    devices: Sequence[DeviceRecord],
    all_episodes: Sequence[Episode],
    tz: ZoneInfo,
    episode_spans: InstantSpans | None = None,
) -> DeviceData:
    """`qualify_readings` in one pass over the readings (this runs for every reading of every month).

    For each reading, in this order: the reason it is skipped, else its consent episode, its local day and
    whether an earlier copy (same identifier) is kept instead. The result is sorted by (time, id) unless the
    readings came in that order (the mapper sorts them), which is checked on the way: then the survivors
    are already in the order the sort would leave them. `episode_spans`: the episodes' InstantSpans, when
    the caller has them.
    """
    rpm_devices = {d.id for d in devices if d.status != "entered-in-error"}
    spans = InstantSpans((e.start, e.end) for e in all_episodes) if episode_spans is None else episode_spans
    single = len(all_episodes) == 1
    first_episode = all_episodes[0] if single else None
    skipped: list[SkippedReading] = []
    best_by_identifier: dict[str, QualifyingReading] = {}
    qualifying: list[QualifyingReading] = []
    new = tuple.__new__  # QualifyingReading(...) without the Python-level __new__ of a named tuple
    zone: object = _NO_ZONE
    bounds: tuple[tuple[datetime, datetime | None], ...] = ()
    # The single episode's bounds in the current offset (set with `zone`).
    start: datetime = _NEVER
    end: datetime | None = None
    days: HourDays = {}
    fixed_offsets = True
    any_naive = False
    in_order = True
    previous_time = _NEVER  # (time, id) of the previous reading that got this far
    previous_id = ""
    for reading in readings:
        # Why a reading does not count, in this order.
        program = reading.program
        if program is not None and program != "rpm":
            skipped.append(SkippedReading(reading, SKIP_OTHER_PROGRAM))
            continue
        device = reading.device_id
        if device is None:
            skipped.append(SkippedReading(reading, SKIP_PATIENT_REPORTED))
            continue
        if device not in rpm_devices:
            skipped.append(SkippedReading(reading, SKIP_NOT_RPM_DEVICE))
            continue
        moment = reading.time
        if moment.tzinfo is not zone:  # readings come in runs of the same offset
            zone = moment.tzinfo
            bounds = spans.in_zone(zone)
            if single:
                ((start, end),) = bounds
            days = hour_days(zone, tz)
            if type(zone) is not timezone:
                fixed_offsets = False
        # The episode in force (InstantSpans.positions, inlined).
        if single:
            if not (start <= moment and (end is None or moment < end)):
                skipped.append(SkippedReading(reading, SKIP_OUTSIDE_CONSENT))
                continue
            episode = first_episode
        else:
            for index, (start, end) in enumerate(bounds):
                if start <= moment and (end is None or moment < end):
                    episode = all_episodes[index]
                    break
            else:
                skipped.append(SkippedReading(reading, SKIP_OUTSIDE_CONSENT))
                continue
        # (time, id) order of the readings that reach this point, as `qualifying.sort` compares them (the
        # first is compared with _NEVER, earlier than any time).
        if in_order:
            if moment < previous_time or (moment == previous_time and reading.id < previous_id):
                in_order = False
            previous_time = moment
            previous_id = reading.id
        if reading.naive_time:
            any_naive = True
        hours = days.get(moment.toordinal())
        day = None if hours is None else hours[moment.hour]
        if day is None:
            day = learn_local_day(days, moment, tz)
        item: QualifyingReading = new(QualifyingReading, (reading, episode, day))
        identifier = reading.identifier
        if identifier is None:
            qualifying.append(item)
            continue
        kept = best_by_identifier.setdefault(identifier, item)  # one look-up for a first copy
        if kept is not item and moment < kept.reading.time:
            best_by_identifier[identifier] = item
    # `qualifying` holds the readings without an identifier so far.
    mixed = bool(best_by_identifier) and bool(qualifying)
    if in_order and fixed_offsets and not mixed:
        # Sorted input, instants totally ordered: no later copy is earlier than the one kept, so the kept
        # copies (in the dict's insertion order) or the readings without identifier are a subsequence of
        # the sorted readings, which is what the stable sort below would return.
        if best_by_identifier:
            qualifying = list(best_by_identifier.values())
    else:
        qualifying.extend(best_by_identifier.values())
        qualifying.sort(key=_TIME_THEN_ID)
    return DeviceData(qualifying, skipped, fixed_offsets, any_naive)


_TIME_THEN_ID = attrgetter("reading.time", "reading.id")  # (time, id) of a QualifyingReading
_NO_ZONE = object()
_OBSERVATION = "Observation/"
_NEVER = datetime.min.replace(tzinfo=UTC)


def episode_windows(
    episode: Episode,
    qualifying: Sequence[QualifyingReading],
    devices: Sequence[DeviceRecord],
    tz: ZoneInfo,
    until: date,
    as_of: datetime,
) -> list[SupplyWindow]:
    """Contiguous 30-day windows of one episode, anchored at its first qualifying reading.

    Windows are never stretched; a window keeps its 30 days when consent ends inside it (only the episode's
    readings count, which by construction fell while consent was in force); no window starts after the
    episode ends, nor after `until`.
    """
    own = [q for q in qualifying if q.episode.index == episode.index]
    windows, _ = windows_of_episode(episode, own, device_types(devices), tz, until, as_of)
    return windows


def device_types(devices: Sequence[DeviceRecord]) -> dict[str, str]:
    """Device id -> its type by display where the EHR gave one (the flag is read by people), else the code."""
    return {d.id: d.type_display or d.type_code or "unknown type" for d in devices}


def windows_of_episode(
    episode: Episode,
    own: Sequence[QualifyingReading],
    device_type: dict[str, str],
    tz: ZoneInfo,
    until: date,
    as_of: datetime,
) -> tuple[list[SupplyWindow], list[set[str | None]]]:
    """`episode_windows` over the episode's own qualifying readings (in order), and the device ids read in
    each window (what its evidence lists, when no other episode has readings on its days)."""
    if not own:
        return [], []
    anchor = own[0].day
    last_start = until
    if episode.end is not None:
        # The instant the episode ends belongs to the previous local day when it is exactly midnight.
        end_day = (episode.end.astimezone(tz) - _EPSILON).date()
        last_start = min(last_start, end_day)
    if anchor > last_start:
        return [], []
    # Each reading falls in at most one window: the one `(day - anchor) // 30` days on (none when earlier than
    # the anchor or later than the last window). One pass, in the readings' order; a reading on a day of the
    # window just found needs no division (days mostly come in order).
    count = (last_start - anchor).days // WINDOW_DAYS + 1
    # The first window past the end, computed only for its OverflowError near year 9999, which the loop this
    # replaced raised (it computed that window to stop).
    window_days(anchor, count)
    buckets: list[list[str]] = [[] for _ in range(count)]  # the ids of the window's readings
    day_sets: list[set[date]] = [set() for _ in range(count)]
    device_sets: list[set[str | None]] = [set() for _ in range(count)]
    first, last = window_days(anchor, 0)
    bucket, in_days, in_devices = buckets[0], day_sets[0], device_sets[0]
    for reading, _, day in own:
        if not first <= day <= last:
            index = (day - anchor).days // WINDOW_DAYS
            if not 0 <= index < count:
                continue
            first, last = window_days(anchor, index)
            bucket, in_days, in_devices = buckets[index], day_sets[index], device_sets[index]
        bucket.append(reading.id)
        in_days.add(day)
        in_devices.add(reading.device_id)
    windows: list[SupplyWindow] = []
    for index, in_window in enumerate(buckets):
        first, last = window_days(anchor, index)
        period = day_period(first, last, tz)
        windows.append(
            supply_window(
                episode_index=episode.index,
                index=index,
                first_day=first,
                last_day=last,
                period=period,
                data_days=tuple(sorted(day_sets[index])),
                device_types=tuple(sorted({device_type.get(d or "", "unknown") for d in device_sets[index]})),
                closed=period.is_closed(as_of),
                reading_refs=tuple(map(_OBSERVATION.__add__, in_window)),
            )
        )
    return windows, device_sets


def skipped_counts(skipped: Iterable[SkippedReading]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}  # (a Counter costs more to set up than a month's few skipped readings)
    for item in skipped:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return tuple(sorted(counts.items()))


_EPSILON = timedelta(microseconds=1)
