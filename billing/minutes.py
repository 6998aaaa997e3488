"""The month's treatment-management clock: one clock per patient.

Overlapping intervals of counted activities are merged before summing (two staff on the same call, or a
call logged twice, count once); activities known only by a length are added as they are. Seconds are summed
first and whole minutes taken at the end (19 min 59 s is 19).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from billing.model import Activity


def activity_seconds(activity: Activity) -> int | None:
    """The activity's own duration in whole seconds, or None when unknown."""
    if activity.start is not None and activity.end is not None:
        return max(0, int((activity.end - activity.start).total_seconds()))
    if activity.duration_seconds is not None:
        return max(0, activity.duration_seconds)
    return None


def has_duration(activity: Activity) -> bool:
    """`activity_seconds(activity) is not None` (an interval or a length), without computing it."""
    return (activity.start is not None and activity.end is not None) or activity.duration_seconds is not None


class MonthClock:
    """Adds counted activities in time order and reports what each one added after merging overlaps."""

    def __init__(self) -> None:
        self.total_seconds = 0
        self._covered_until: datetime | None = None

    def add(self, activity: Activity) -> int:
        """Count the activity; return the seconds it added to the clock. Call in order of start time."""
        if activity.start is not None and activity.end is not None:
            start, end = activity.start, max(activity.start, activity.end)
            if self._covered_until is not None and start < self._covered_until:
                start = self._covered_until  # the overlapping part is already on the clock
            added = max(0, int((end - start).total_seconds()))
            if self._covered_until is None or end > self._covered_until:
                self._covered_until = end
        else:
            added = max(0, activity.duration_seconds or 0)
        self.total_seconds += added
        return added


def merged_seconds(activities: Iterable[Activity]) -> int:
    """Total seconds of the given activities with overlapping intervals merged."""
    clock = MonthClock()
    for activity in sorted(activities, key=lambda a: (a.start is None, a.start or datetime.min)):
        clock.add(activity)
    return clock.total_seconds
