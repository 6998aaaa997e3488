"""Device data: which readings qualify, data days, and the 30-day supply windows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from operator import attrgetter
from typing import NamedTuple
from zoneinfo import ZoneInfo

from billing.consent import Episode, InstantSpans
from billing.model import DeviceRecord, Reading
from billing.periods import WINDOW_DAYS, Period, local_day, window_days
from billing.result import SupplyWindow

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
    rpm_devices = {d.id for d in devices if d.status != "entered-in-error"}
    skipped: list[SkippedReading] = []
    best_by_identifier: dict[str, QualifyingReading] = {}
    qualifying: list[QualifyingReading] = []
    readings = readings if isinstance(readings, list | tuple) else list(readings)
    # episode_at for every reading, at once
    in_force = InstantSpans((e.start, e.end) for e in all_episodes).positions([r.time for r in readings])
    for reading, position in zip(readings, in_force, strict=True):
        # Why a reading does not count, in this order (this runs for every reading of the month).
        if reading.program is not None and reading.program != "rpm":
            skipped.append(SkippedReading(reading, SKIP_OTHER_PROGRAM))
            continue
        if reading.device_id is None:
            skipped.append(SkippedReading(reading, SKIP_PATIENT_REPORTED))
            continue
        if reading.device_id not in rpm_devices:
            skipped.append(SkippedReading(reading, SKIP_NOT_RPM_DEVICE))
            continue
        moment = reading.time
        if position is None:
            skipped.append(SkippedReading(reading, SKIP_OUTSIDE_CONSENT))
            continue
        item = QualifyingReading(reading, all_episodes[position], local_day(moment, tz))
        identifier = reading.identifier
        if identifier is None:
            qualifying.append(item)
            continue
        kept = best_by_identifier.get(identifier)
        if kept is None or moment < kept.reading.time:
            best_by_identifier[identifier] = item
    qualifying.extend(best_by_identifier.values())
    qualifying.sort(key=_TIME_THEN_ID)
    return qualifying, skipped


_TIME_THEN_ID = attrgetter("reading.time", "reading.id")  # (time, id) of a QualifyingReading


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
    if not own:
        return []
    anchor = own[0].day
    last_start = until
    if episode.end is not None:
        # The instant the episode ends belongs to the previous local day when it is exactly midnight.
        end_day = (episode.end.astimezone(tz) - _EPSILON).date()
        last_start = min(last_start, end_day)
    # Device types by their display where the EHR gave one (the flag is read by people), else the code.
    device_type = {d.id: d.type_display or d.type_code or "unknown type" for d in devices}
    if anchor > last_start:
        return []
    # Each reading falls in at most one window: the one `(day - anchor) // 30` days on (none when earlier than
    # the anchor or later than the last window). One pass, in the readings' order.
    count = (last_start - anchor).days // WINDOW_DAYS + 1
    window_days(anchor, count)  # the first window past the end, as the loop this replaces computed it
    buckets: list[list[QualifyingReading]] = [[] for _ in range(count)]
    for q in own:
        index = (q.day - anchor).days // WINDOW_DAYS
        if 0 <= index < count:
            buckets[index].append(q)
    windows: list[SupplyWindow] = []
    for index, in_window in enumerate(buckets):
        first, last = window_days(anchor, index)
        period = Period.of_days(first, last, tz)
        windows.append(
            SupplyWindow(
                episode_index=episode.index,
                index=index,
                first_day=first,
                last_day=last,
                period=period,
                data_days=tuple(sorted({q.day for q in in_window})),
                device_types=tuple(
                    sorted({device_type.get(q.reading.device_id or "", "unknown") for q in in_window})
                ),
                closed=period.is_closed(as_of),
                reading_refs=tuple(f"Observation/{q.reading.id}" for q in in_window),
            )
        )
    return windows


def skipped_counts(skipped: Iterable[SkippedReading]) -> tuple[tuple[str, int], ...]:
    counts = Counter(s.reason for s in skipped)
    return tuple(sorted(counts.items()))


_EPSILON = timedelta(microseconds=1)
