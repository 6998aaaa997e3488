"""Pure helpers behind the month view and the panel: progress, calendars, "what would change it", attention.

Everything here is computed from the engine's result (minutes, interactive count, windows, flags) and the
thresholds of the result's own policy, plus `today` (a local date in the practice time zone, passed in: no
clock reads). No I/O, no Flask: unit-tested on their own.

Choices (documented in docs/web-app.md):
- "Days left in the month" counts today: on the 30th of a 31-day month, 2 days are left.
- A window's days left are the days from today to its last day, today included unless today already has a
  reading (it cannot add another data day).
- Suggestions are shown for periods still open; a closed month shows none (its activities are in the past).
- The panel ranks: unreachable first, then near a threshold (5 minutes or less to the next code), then no
  live contact yet, then the rest; ties by fewest minutes to the next code, then by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from billing.periods import YearMonth
from billing.policy import Policy
from billing.result import (
    MANAGEMENT_10,
    MANAGEMENT_20,
    MANAGEMENT_ADDON,
    SUPPLY_2_15,
    SUPPLY_16_30,
    MonthResult,
    SupplyWindow,
)

NEAR_MINUTES = 5  # "near a threshold": this many minutes or fewer to the next management code
SUPPLY_16_DAYS = 16
SUPPLY_2_DAYS = 2


@dataclass(frozen=True)
class Threshold:
    """A minute count and the management codes it earns (with an interactive communication that month)."""

    minutes: int
    label: str  # "99457 + 99458 x2"


@dataclass(frozen=True)
class ThresholdProgress:
    threshold: Threshold
    reached: bool
    minutes_short: int  # 0 when reached


@dataclass(frozen=True)
class Suggestion:
    """One thing that would change the code set, in words ("6 more minutes including a live call: 99457")."""

    text: str
    code: str
    minutes: int = 0  # more minutes needed (management)
    days: int = 0  # more data days needed (supply)
    reachable: bool = True  # False: not enough days left in the window


@dataclass(frozen=True)
class CalendarDay:
    day: date
    has_data: bool
    is_today: bool
    is_future: bool
    in_month: bool  # the day falls in the month being viewed
    mark: str | None = None  # "2-day mark: 99445" on the data day that reached a mark


@dataclass(frozen=True)
class WindowView:
    window: SupplyWindow
    days: tuple[CalendarDay, ...]
    data_days: int
    days_left: int
    marks: tuple[tuple[int, str, bool], ...]  # (days, code, reached) for the 2- and 16-day marks
    suggestions: tuple[Suggestion, ...]


@dataclass(frozen=True)
class Attention:
    rank: int  # 0 unreachable, 1 near a threshold, 2 no live contact yet, 3 nothing pressing
    minutes_to_next: int | None
    reasons: tuple[str, ...]

    def sort_key(self, name: str) -> tuple[int, int, str]:
        return (self.rank, self.minutes_to_next if self.minutes_to_next is not None else 10_000, name.lower())


# --------------------------------------------------------------------------------------------- minutes


def management_thresholds(policy: Policy) -> tuple[Threshold, ...]:
    """10 (99470, where the policy has it), 20 (99457), then 40/60/80 (99458 units up to the policy's cap)."""
    marks = []
    if policy.has_99470:
        marks.append(Threshold(10, MANAGEMENT_10))
    marks.append(Threshold(20, MANAGEMENT_20))
    for units in range(1, policy.max_99458_units + 1):
        addon = MANAGEMENT_ADDON if units == 1 else f"{MANAGEMENT_ADDON} x{units}"
        marks.append(Threshold(20 + 20 * units, f"{MANAGEMENT_20} + {addon}"))
    return tuple(marks)


def minutes_progress(minutes: int, policy: Policy) -> tuple[ThresholdProgress, ...]:
    return tuple(
        ThresholdProgress(t, minutes >= t.minutes, max(0, t.minutes - minutes))
        for t in management_thresholds(policy)
    )


def next_threshold(minutes: int, policy: Policy) -> Threshold | None:
    return next((t for t in management_thresholds(policy) if t.minutes > minutes), None)


def management_suggestions(minutes: int, interactive_count: int, policy: Policy) -> tuple[Suggestion, ...]:
    """What more treatment-management time (and a live call) would bill, from the policy's thresholds.

    Management codes need at least one interactive communication in the month: without one, a live call alone
    earns the codes the minutes already reach, and the next threshold needs the minutes *including* a call.
    Under a policy that counts only interactive time, the minutes must be live-call minutes.
    """
    out: list[Suggestion] = []
    reached = [t for t in management_thresholds(policy) if t.minutes <= minutes]
    upcoming = next_threshold(minutes, policy)
    live_only = policy.minutes_basis == "interactive"
    if interactive_count == 0 and reached:
        out.append(Suggestion(f"a live call with the patient: {reached[-1].label}", reached[-1].label))
    if upcoming is not None:
        need = upcoming.minutes - minutes
        unit = "minute" if need == 1 else "minutes"
        if live_only:
            text = f"{need} more {unit} of live calls: {upcoming.label}"
        elif interactive_count == 0:
            text = f"{need} more {unit} including a live call: {upcoming.label}"
        else:
            text = f"{need} more {unit}: {upcoming.label}"
        out.append(Suggestion(text, upcoming.label, minutes=need))
    return tuple(out)


# --------------------------------------------------------------------------------------------- device days


def supply_marks(policy: Policy) -> tuple[tuple[int, str], ...]:
    """The data-day marks of a 30-day window: 2 days (99445, where the policy has it) and 16 days (99454)."""
    marks = [(SUPPLY_2_DAYS, SUPPLY_2_15)] if policy.has_99445 else []
    return (*marks, (SUPPLY_16_DAYS, SUPPLY_16_30))


def supply_suggestions(data_days: int, days_left: int, policy: Policy) -> tuple[Suggestion, ...]:
    out = []
    for mark, code in supply_marks(policy):
        if data_days >= mark:
            continue
        need = mark - data_days
        unit = "day" if need == 1 else "days"
        if need <= days_left:
            out.append(Suggestion(f"{need} more {unit} with readings: {code}", code, days=need))
        else:
            out.append(
                Suggestion(
                    f"{code} is out of reach in this window: {need} more {unit} needed, {days_left} left",
                    code,
                    days=need,
                    reachable=False,
                )
            )
    return tuple(out)


def window_days_left(window: SupplyWindow, today: date) -> int:
    """Days of the window from today on that could still add a data day (today counts if it has none yet)."""
    if today > window.last_day:
        return 0
    start = max(today, window.first_day)
    left = (window.last_day - start).days + 1
    if start == today and today in window.data_days:
        left -= 1
    return left


def window_calendar(
    window: SupplyWindow, today: date, month: YearMonth, marks: Sequence[tuple[int, str]] = ()
) -> tuple[CalendarDay, ...]:
    """The window's 30 days, each with or without data; the data day that reached a mark carries it."""
    data = set(window.data_days)
    ordered = sorted(data)
    marked = {ordered[n - 1]: f"{n}-day mark: {code}" for n, code in marks if 0 < n <= len(ordered)}
    days = []
    for offset in range((window.last_day - window.first_day).days + 1):
        day = window.first_day + timedelta(days=offset)
        days.append(
            CalendarDay(day, day in data, day == today, day > today, month.contains(day), marked.get(day))
        )
    return tuple(days)


def current_window(result: MonthResult, today: date) -> SupplyWindow | None:
    """The window to show: the one holding today (or the month's last day, for a past month), else the latest
    window overlapping the month."""
    anchor = min(today, result.month.last_day)
    windows = sorted(result.windows, key=lambda w: w.first_day)
    holding = [w for w in windows if w.first_day <= anchor <= w.last_day]
    if holding:
        return holding[-1]
    started = [w for w in windows if w.first_day <= anchor]
    return started[-1] if started else (windows[0] if windows else None)


def window_view(result: MonthResult, today: date) -> WindowView | None:
    window = current_window(result, today)
    if window is None:
        return None
    left = window_days_left(window, today)
    marks = tuple((m, code, window.day_count >= m) for m, code in supply_marks(result.policy))
    suggestions = supply_suggestions(window.day_count, left, result.policy) if not window.closed else ()
    return WindowView(
        window=window,
        days=window_calendar(window, today, result.month, supply_marks(result.policy)),
        data_days=window.day_count,
        days_left=left,
        marks=marks,
        suggestions=suggestions,
    )


# ------------------------------------------------------------------------------------------- the month


def days_left_in_month(month: YearMonth, today: date) -> int:
    """Days of `month` from today to its end, today included (0 once it is over)."""
    if today > month.last_day:
        return 0
    start = max(today, month.first_day)
    return (month.last_day - start).days + 1


def month_suggestions(result: MonthResult) -> tuple[Suggestion, ...]:
    """What would change the month's management codes; none once the month is closed."""
    if not result.preview:
        return ()
    return management_suggestions(result.minutes, result.interactive_count, result.policy)


def attention(result: MonthResult) -> Attention:
    """Why a patient needs attention this month, and how urgently (see the module doc for the order)."""
    reasons: list[str] = []
    rank = 3
    upcoming = next_threshold(result.minutes, result.policy)
    to_next = upcoming.minutes - result.minutes if upcoming is not None else None
    if result.attempt_count and not result.interactive_count:
        attempts = "attempt" if result.attempt_count == 1 else "attempts"
        reasons.append(f"unreachable: {result.attempt_count} {attempts}, no live contact")
        rank = min(rank, 0)
    if upcoming is not None and to_next is not None and to_next <= NEAR_MINUTES:
        reasons.append(f"{to_next} min to {upcoming.label}")
        rank = min(rank, 1)
    if not result.interactive_count and not result.attempt_count:
        reasons.append("no live contact yet")
        rank = min(rank, 2)
    return Attention(rank, to_next, tuple(reasons))


def rank_panel(rows: Sequence[tuple[str, MonthResult]]) -> list[tuple[str, MonthResult, Attention]]:
    """(name, result) rows sorted by who needs attention first."""
    scored = [(name, result, attention(result)) for name, result in rows]
    return sorted(scored, key=lambda row: (*row[2].sort_key(row[0]), row[1].patient_id))
