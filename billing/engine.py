"""The monthly decision for one patient: which RPM codes, and why (or why not) each one.

`evaluate_month` is pure: the run's as-of time is an argument, so "month closed" and "window still open" are
testable. It applies contract section 3 on records produced by `fhir_mapping`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from billing import codes as rules
from billing.classify import Classifier, Traits, chat_sessions
from billing.consent import Episode, InstantSpans, episodes
from billing.minutes import MonthClock, has_duration
from billing.model import Activity, ConsentRecord, PatientRecords
from billing.periods import Period, YearMonth, zone
from billing.policy import Policy
from billing.result import (
    MANAGEMENT_CODES,
    SETUP,
    SUPPLY_CODES,
    ActivityClass,
    ActivityOutcome,
    ChargeStatus,
    CodeLine,
    Flag,
    MonthResult,
    NotBilled,
    SupplyWindow,
    activity_outcome,
    charge_key,
    code_line,
    month_result,
)
from billing.supply import (
    DeviceData,
    QualifyingReading,
    SkippedReading,
    device_data,
    device_types,
    skipped_counts,
    windows_of_episode,
)

PolicyForMonth = Callable[[YearMonth], Policy]


class _MonthFrame(NamedTuple):
    period: Period
    spans: InstantSpans  # the month's period, asked about the activities' times
    first_day: date
    last_day: date


@lru_cache(maxsize=64)
def _month_frame(month: YearMonth, tz: ZoneInfo) -> _MonthFrame:
    """The month's period and days in the zone, shared by every patient of a run (and the bounds of its
    InstantSpans converted once per UTC offset for all of them)."""
    period = month.period(tz)
    return _MonthFrame(period, InstantSpans([(period.start, period.end)]), month.first_day, month.last_day)


def _remembered(policy_for_month: PolicyForMonth) -> PolicyForMonth:
    """`policy_for_month`, asked once per month during one evaluation (it is asked per window and charge)."""
    known: dict[YearMonth, Policy] = {}

    def policy_at(month: YearMonth) -> Policy:
        policy = known.get(month)
        if policy is None:
            policy = known[month] = policy_for_month(month)
        return policy

    return policy_at


class EngineError(ValueError):
    """The engine was called with inconsistent arguments (a programming error, not bad data)."""


@dataclass
class _Findings:
    """Accumulates codes, codes not billed and flags while the month is evaluated."""

    codes: list[CodeLine]
    not_billed: list[NotBilled]
    flags: list[Flag]

    def flag(self, code: str, message: str) -> None:
        if not any(f.code == code and f.message == message for f in self.flags):
            self.flags.append(Flag(code, message))


def evaluate_month(
    records: PatientRecords,
    month: YearMonth,
    policy: Policy,
    as_of: datetime,
    policy_for_month: PolicyForMonth | None = None,
) -> MonthResult:
    """Compute the month's code set for one patient under `policy`, as known at `as_of`.

    `policy_for_month` gives the rule set of an earlier month, used to find the episode's 99453 window when
    no policy was named (the month picks it); by default every month uses `policy`.
    """
    if as_of.tzinfo is None:
        raise EngineError("as_of must be timezone-aware")
    tz = zone(policy.timezone)
    frame = _month_frame(month, tz)
    month_period = frame.period
    policy_at = _remembered(policy_for_month) if policy_for_month else (lambda _month: policy)
    found = _Findings([], [], [])
    pid = records.patient_id

    all_episodes = episodes(records.consents)
    for consent in records.consents:
        if consent.revoked_without_end:
            found.flag(
                "consent-inactive-without-end",
                f"Consent/{consent.id} is inactive without an end date: not counted; "
                "record the revocation date",
            )

    # Device data
    episode_spans = InstantSpans((e.start, e.end) for e in all_episodes)
    data = device_data(records.readings, records.devices, all_episodes, tz, episode_spans)
    qualifying, skipped = data.qualifying, data.skipped
    first_day, last_day = frame.first_day, frame.last_day
    if len(all_episodes) == 1:
        own_readings = [qualifying]
    else:
        own_readings = [[] for _ in all_episodes]
        for q in qualifying:
            own_readings[q.episode.index].append(q)
    device_type = device_types(records.devices)
    windows: list[SupplyWindow] = []
    # The device ids each window counted, when no other episode's readings can fall on its days.
    devices_read: dict[int, set[str | None]] = {}
    for episode, own in zip(all_episodes, own_readings, strict=True):
        episode_found, device_sets = windows_of_episode(episode, own, device_type, tz, last_day, as_of)
        windows.extend(episode_found)
        if len(all_episodes) == 1:
            devices_read = {id(w): d for w, d in zip(episode_found, device_sets, strict=True)}
    # The windows that belong to the month (`belongs_to == month`: they end in it), by their last day.
    month_windows = [w for w in windows if first_day <= w.last_day <= last_day]
    shown_windows = [w for w in windows if w.first_day <= last_day and w.last_day >= first_day]
    data_days_in_month = len({day for _, _, day in qualifying if first_day <= day <= last_day})
    # Readings are looked at against the month and its windows several times: decide that once. Every window
    # that ends in the month ends after the month starts and no later than it ends, so the month and those
    # windows together are one span, from the earliest of their starts to the month's end.
    reach_start = month_period.start
    for window in month_windows:
        if window.period.start < reach_start:
            reach_start = window.period.start
    reach = (reach_start, month_period.end)
    relevant_qualifying = _readings_between(data, reach)
    # (Few readings are skipped: compared as they are, which is what InstantSpans does, only slower per item.)
    relevant_skipped = [item for item in skipped if reach_start <= item.reading.time < month_period.end]

    # Activities of the month (by their start), in time order
    timed = [(a, a.start) for a in records.activities if a.start is not None]
    in_month = frame.spans.positions([t for _, t in timed])
    month_activities = sorted(
        (a for (a, _), position in zip(timed, in_month, strict=True) if position is not None),
        key=_START_THEN_ID,
    )
    outcomes, traits, total_seconds = _month_outcomes(month_activities, episode_spans, policy)
    interactive = [o for o in outcomes if o.activity_class is ActivityClass.INTERACTIVE]
    attempts = [o for o in outcomes if o.attempt]

    # Codes
    evidence_base = _consent_refs(records.consents, all_episodes, month_period) + tuple(
        f"Device/{d.id}" for d in records.devices if d.status != "entered-in-error"
    )
    _management(
        records, month_period, policy, as_of, outcomes, interactive, total_seconds, evidence_base, found
    )
    for window in month_windows:
        evidence = _window_evidence(window, records, all_episodes, qualifying, devices_read.get(id(window)))
        _supply(records, window, policy, evidence, found)
    if not month_windows:
        found.not_billed.append(NotBilled("99454/99445", _no_window_reason(month, shown_windows, qualifying)))
    _setup(records, month, windows, qualifying, all_episodes, policy_at, devices_read, found)

    skipped_in_reach = skipped_counts(relevant_skipped)
    _flags(
        records,
        policy,
        outcomes,
        traits,
        month_windows,
        relevant_qualifying,
        data,
        skipped_in_reach,
        data_days_in_month,
        found,
    )
    return month_result(
        patient_id=pid,
        month=month,
        policy=policy,
        as_of=as_of,
        month_period=month_period,
        preview=not month_period.is_closed(as_of),
        consents=records.consents,
        episodes=all_episodes,
        devices=records.devices,
        windows=tuple(shown_windows),
        activities=tuple(outcomes),
        total_seconds=total_seconds,
        interactive_count=len(interactive),
        attempt_count=len(attempts),
        data_days_in_month=data_days_in_month,
        readings_skipped=skipped_in_reach,
        codes=tuple(found.codes),
        not_billed=tuple(found.not_billed),
        flags=tuple(found.flags),
        display_name=records.display_name,
    )


_Item = TypeVar("_Item", QualifyingReading, SkippedReading)


def _readings_between(data: DeviceData, span: tuple[datetime, datetime]) -> Sequence[QualifyingReading]:
    """The qualifying readings in `[start, end)`, in order: a slice when their times are totally ordered."""
    if not data.fixed_offsets:
        return _within(InstantSpans([span]), data.qualifying)
    qualifying = data.qualifying
    if not qualifying:
        return []
    start, end = span
    # Comparing times in different UTC offsets costs ~0.5 us each (the bounds are in the practice zone): look
    # at the first and the last reading before bisecting, since most months' readings all fall in the span.
    first = 0 if qualifying[0].reading.time >= start else bisect_left(qualifying, start, key=_READING_TIME)
    if qualifying[-1].reading.time < end:
        return qualifying[first:]
    return qualifying[first : bisect_left(qualifying, end, lo=first, key=_READING_TIME)]


_READING_TIME = attrgetter("reading.time")


def _within(spans: InstantSpans, items: Sequence[_Item]) -> list[_Item]:
    """The readings that fall in one of `spans`, in order."""
    found = spans.positions([item.reading.time for item in items])
    return [item for item, position in zip(items, found, strict=True) if position is not None]


_START_THEN_ID = attrgetter("start", "id")  # (start, id) of an Activity


def _month_outcomes(
    activities: Sequence[Activity], episode_spans: InstantSpans, policy: Policy
) -> tuple[list[ActivityOutcome], list[Traits | None], int]:
    """Classify the month's activities and run the month clock over the ones whose time counts.

    Also the traits of each classified activity (None for those never classified: another program's, or
    outside consent), which the flags read.
    """
    # Attributed to RPM and inside consent: decided once per activity.
    in_force = _in_force(episode_spans, activities)
    counted = [a.program in (None, "rpm") and ok for a, ok in zip(activities, in_force, strict=True)]
    chat_ids: set[str] = set()
    if policy.live_chat:  # chat_sessions finds none otherwise
        chat_ids = chat_sessions([a for a, ok in zip(activities, counted, strict=True) if ok], policy)
    classifier = Classifier(policy)
    clock = MonthClock()
    outcomes: list[ActivityOutcome] = []
    all_traits: list[Traits | None] = []
    for activity, ok in zip(activities, counted, strict=True):
        if activity.program not in (None, "rpm"):
            outcomes.append(
                _not_counted(
                    activity,
                    f"Attributed to the {activity.program.upper()} program, not RPM: no minute counts twice",
                    "time attributed to another program never counts for RPM",
                    clock.total_seconds,
                )
            )
            all_traits.append(None)
            continue
        if not ok:  # outside every consent episode
            outcomes.append(
                _not_counted(
                    activity,
                    "Outside RPM consent: never counts",
                    "outside RPM consent",
                    clock.total_seconds,
                    in_consent=False,
                )
            )
            all_traits.append(None)
            continue
        traits = classifier.traits(activity, activity.id in chat_ids)
        decision = traits.classification
        added = clock.add(activity) if decision.counts_minutes else 0
        outcomes.append(
            activity_outcome(
                activity,
                decision.activity_class,
                decision.reason,
                decision.counts_minutes,
                decision.minutes_reason,
                added,
                clock.total_seconds,
                decision.attempt,
            )
        )
        all_traits.append(traits)
    return outcomes, all_traits, clock.total_seconds


def _in_force(episode_spans: InstantSpans, activities: Sequence[Activity]) -> list[bool]:
    """For each activity, whether a consent episode is in force at its start (`episode_at`, all at once)."""
    starts = [a.start for a in activities if a.start is not None]
    positions = iter(episode_spans.positions(starts))
    return [a.start is not None and next(positions) is not None for a in activities]


def _not_counted(
    activity: Activity, reason: str, minutes_reason: str, running: int, in_consent: bool = True
) -> ActivityOutcome:
    return activity_outcome(
        activity,
        ActivityClass.NON_INTERACTIVE,
        reason,
        False,
        minutes_reason,
        0,
        running,
        activity.status == "not-done",
        in_consent,
    )


def _consent_refs(
    consents: Sequence[ConsentRecord], all_episodes: Sequence[Episode], period: Period
) -> tuple[str, ...]:
    ids = [
        c.id
        for c in consents
        if not c.revoked_without_end and c.start is not None and period.overlaps(c.start, c.end)
    ]
    if not ids:  # evidence for a window that overlaps the month only partly: the episodes' consents
        ids = [cid for e in all_episodes if period.overlaps(e.start, e.end) for cid in e.consent_ids]
    return tuple(f"Consent/{cid}" for cid in dict.fromkeys(ids))


def _status(period: Period, as_of: datetime) -> ChargeStatus:
    """Billable only once the period has ended; until then a preview, written as planned."""
    return ChargeStatus.BILLABLE if period.is_closed(as_of) else ChargeStatus.PLANNED


def _management(
    records: PatientRecords,
    month_period: Period,
    policy: Policy,
    as_of: datetime,
    outcomes: Sequence[ActivityOutcome],
    interactive: Sequence[ActivityOutcome],
    total_seconds: int,
    evidence_base: tuple[str, ...],
    found: _Findings,
) -> None:
    """`interactive`: the outcomes of the interactive activities, in order."""
    minutes = total_seconds // 60
    counted = any(o.counts_minutes and o.in_consent for o in outcomes)

    def refuse_all(reason: str) -> None:
        for code in MANAGEMENT_CODES:
            if code == "99470" and not policy.has_99470:
                reason_here = f"99470 is not in the {policy.name} rule set"
            else:
                reason_here = reason
            found.not_billed.append(NotBilled(code, reason_here, month_period))

    if not counted and not interactive:
        refuse_all("no qualifying treatment-management activity this month while RPM consent was in force")
        return
    if not interactive:
        refuse_all(
            f"{minutes} minutes but no interactive communication with the patient or caregiver this month"
        )
        return
    blocker = rules.rtm_block(records.charges, month_period)
    billed, not_billed = rules.management_codes(minutes, policy)
    for pick in not_billed:
        found.not_billed.append(NotBilled(pick.code, pick.reason, month_period))
    evidence = evidence_base + tuple(o.activity.reference for o in interactive)
    for pick in billed:
        if blocker is not None:
            found.not_billed.append(NotBilled(pick.code, _rtm_reason(blocker), month_period))
            continue
        found.codes.append(
            code_line(
                code=pick.code,
                units=pick.units,
                period=month_period,
                status=_status(month_period, as_of),
                reason=f"{pick.reason}; {len(interactive)} interactive communication(s)",
                charge_key=charge_key(records.patient_id, pick.code, month_period.first_day),
                evidence=evidence,
            )
        )


def _rtm_reason(charge: rules.ExistingCharge) -> str:
    ref = f"ChargeItem/{charge.id}" if charge.id else "an existing charge"
    return f"RPM and RTM are never billed for the same period: RTM {charge.code} ({ref}) overlaps it"


def _window_label(window: SupplyWindow) -> str:
    return f"30-day window {window.first_day.isoformat()} to {window.last_day.isoformat()}"


def _supply(
    records: PatientRecords,
    window: SupplyWindow,
    policy: Policy,
    evidence: tuple[str, ...],
    found: _Findings,
) -> None:
    label = _window_label(window)
    if window.day_count == 0:
        for code in SUPPLY_CODES:
            found.not_billed.append(
                NotBilled(
                    code, f"{label}: no qualifying reading while RPM consent was in force", window.period
                )
            )
        return
    pick, not_billed = rules.supply_code(window.day_count, policy)
    for item in not_billed:
        found.not_billed.append(NotBilled(item.code, f"{label}: {item.reason}", window.period))
    if pick is None:
        return
    blocker = rules.rtm_block(records.charges, window.period)
    if blocker is not None:
        found.not_billed.append(NotBilled(pick.code, f"{label}: {_rtm_reason(blocker)}", window.period))
        return
    found.codes.append(
        code_line(
            code=pick.code,
            units=1,
            period=window.period,
            status=ChargeStatus.BILLABLE if window.closed else ChargeStatus.PLANNED,
            reason=f"{label}: {pick.reason}" + ("" if window.closed else " so far (window still open)"),
            charge_key=charge_key(records.patient_id, pick.code, window.first_day),
            evidence=evidence,
        )
    )


def _window_evidence(
    window: SupplyWindow,
    records: PatientRecords,
    all_episodes: Sequence[Episode],
    qualifying: Sequence[QualifyingReading],
    devices_read: set[str | None] | None,
) -> tuple[str, ...]:
    """The consents in force during the window and the devices whose readings it counted.

    `devices_read`: the device ids of the window's own readings, which are all the readings on its days when
    there is one episode; otherwise (None) every qualifying reading is looked at.
    """
    if devices_read is None:
        devices = {
            q.reading.device_id
            for q in qualifying
            if window.first_day <= q.day <= window.last_day and q.reading.device_id
        }
    else:
        devices = {d for d in devices_read if d}
    consents = _consent_refs(records.consents, all_episodes, window.period)
    return consents + tuple(f"Device/{d}" for d in sorted(devices))


def _no_window_reason(
    month: YearMonth, shown: Sequence[SupplyWindow], qualifying: Sequence[QualifyingReading]
) -> str:
    if not qualifying:
        return "no qualifying device reading while RPM consent was in force: no 30-day window has started"
    if shown:
        current = shown[-1]
        return (
            f"no 30-day window ends in {month}; the current window {current.first_day.isoformat()} to "
            f"{current.last_day.isoformat()} belongs to {current.belongs_to}"
        )
    return f"no 30-day window of an episode overlaps {month}"


def _setup(
    records: PatientRecords,
    month: YearMonth,
    windows: Sequence[SupplyWindow],
    qualifying: Sequence[QualifyingReading],
    all_episodes: Sequence[Episode],
    policy_at: PolicyForMonth,
    devices_read: dict[int, set[str | None]],
    found: _Findings,
) -> None:
    """99453 goes with the episode's earliest window reaching the 99453 minimum, in that window's month."""
    pid = records.patient_id
    existing = rules.active_charges(records.charges, (SETUP,))
    any_setup_window = False
    decided = False  # a 99453 line was added, refused or billed (only this function adds one)
    for episode in all_episodes:
        own = [w for w in windows if w.episode_index == episode.index]
        setup_window = next((w for w in own if w.day_count >= policy_at(w.belongs_to).setup_min_days), None)
        if setup_window is None:
            continue
        any_setup_window = True
        key = charge_key(pid, SETUP, setup_window.first_day)
        blockers = [
            c for c in existing if c.charge_key != key and _blocks_setup(c, episode, policy_at(month))
        ]
        owner = setup_window.belongs_to
        if owner > month:
            continue
        if owner < month:
            if blockers or any(c.charge_key == key for c in existing):
                continue
            found.flag("setup-earlier-month", f"99453 belongs to {owner}, not billed")
            continue
        decided = True  # from here on a 99453 line is added, refused or billed
        if blockers:
            ref = ", ".join(f"ChargeItem/{c.id}" if c.id else c.charge_key or "?" for c in blockers)
            found.not_billed.append(
                NotBilled(SETUP, f"set-up already billed once for this patient ({ref})", setup_window.period)
            )
            continue
        label = _window_label(setup_window)
        rtm = rules.rtm_block(records.charges, setup_window.period)
        if rtm is not None:
            found.not_billed.append(NotBilled(SETUP, f"{label}: {_rtm_reason(rtm)}", setup_window.period))
            continue
        minimum = policy_at(owner).setup_min_days
        found.codes.append(
            code_line(
                code=SETUP,
                units=1,
                period=setup_window.period,
                status=ChargeStatus.BILLABLE if setup_window.closed else ChargeStatus.PLANNED,
                reason=(
                    f"Set-up and education: first {label} of the episode reaching {minimum} data days "
                    f"({setup_window.day_count})"
                ),
                charge_key=key,
                evidence=_window_evidence(
                    setup_window, records, all_episodes, qualifying, devices_read.get(id(setup_window))
                ),
            )
        )
    if not decided:
        if not any_setup_window:
            minimum = policy_at(month).setup_min_days
            reason = f"no 30-day window of the episode has reached {minimum} data days yet"
            if not qualifying:
                reason = "no qualifying device reading while RPM consent was in force"
        else:
            reason = (
                "set-up goes with the episode's first qualifying window, which does not end in this month"
            )
        found.not_billed.append(NotBilled(SETUP, reason))


def _blocks_setup(charge: rules.ExistingCharge, episode: Episode, policy: Policy) -> bool:
    """An existing 99453 blocks a new one: any earlier 99453 by default, only this episode's when the
    policy allows re-billing in a new episode (a charge without an occurrence blocks, to be safe)."""
    if not policy.rebill_99453_new_episode:
        return True
    if charge.period_start is None:
        return True
    return charge.period_start >= episode.start


def _flags(
    records: PatientRecords,
    policy: Policy,
    outcomes: Sequence[ActivityOutcome],
    traits: Sequence[Traits | None],
    month_windows: Sequence[SupplyWindow],
    relevant_qualifying: Sequence[QualifyingReading],
    data: DeviceData,
    skipped_in_reach: tuple[tuple[str, int], ...],
    data_days_in_month: int,
    found: _Findings,
) -> None:
    """The review flags. `relevant_*`: the readings that fall in the month or one of its windows."""
    billed_management = [c for c in found.codes if c.code in MANAGEMENT_CODES]
    if billed_management and data_days_in_month < 2:
        found.flag(
            "low-data-days",
            f"treatment management billed in a month with {data_days_in_month} data day(s) (fewer than 2)",
        )
    # Consent recorded after care it covers.
    counted_times = [
        o.activity.start for o in outcomes if o.counts_minutes and o.in_consent and o.activity.start
    ]
    # In time order (the month's activities are); totally ordered when all carry fixed UTC offsets.
    times_fixed = all(type(t.tzinfo) is timezone for t in counted_times)
    for consent in records.consents:
        if consent.recorded is None or consent.revoked_without_end:
            continue
        early = _covered_before(
            consent, consent.recorded, counted_times, times_fixed, relevant_qualifying, data
        )
        if early:  # the earliest of them is the earliest moment the consent covers
            first = min(early)
            found.flag(
                "consent-after-first-use",
                f"Consent/{consent.id} dateTime {consent.recorded.isoformat()} is later than the first "
                f"counted activity or reading ({first.isoformat()})",
            )
    for reason, count in skipped_in_reach:
        found.flag("readings-skipped", f"{count} reading(s) skipped: {reason}")
    # What the later flags need from the activities is gathered on the way (one pass).
    attempts = 0
    any_interactive = False
    naive: list[str] = []
    for outcome, known in zip(outcomes, traits, strict=True):
        activity = outcome.activity
        interactive = outcome.activity_class is ActivityClass.INTERACTIVE
        if interactive:
            any_interactive = True
        if activity.naive_time:
            naive.append(activity.reference)
        if not outcome.in_consent:
            continue
        if outcome.attempt:
            attempts += 1
        if not (outcome.counts_minutes or interactive):
            continue
        if known is None:  # not classified here (every relevant activity is)
            known = Classifier(policy).traits(activity)
        if not has_duration(activity):
            found.flag(
                "missing-duration",
                f"{activity.reference} ({known.description}) has no duration: counted as 0 minutes",
            )
        if not known.has_performer:
            found.flag("missing-performer", f"{activity.reference} ({known.description}) has no performer")
        if interactive and known.involves_ai:
            found.flag("ai-contact", f"{activity.reference} was an AI-system contact: review before billing")
    for window in month_windows:
        if len(window.device_types) > 1:
            found.flag(
                "multiple-device-types",
                f"{_window_label(window)} has readings from {len(window.device_types)} device types: "
                + ", ".join(window.device_types),
            )
    if attempts and not any_interactive:
        found.flag("unreachable", f"{attempts} attempts, no interactive contact")
    if data.any_naive:
        naive += [f"Observation/{q.reading.id}" for q in relevant_qualifying if q.reading.naive_time]
    naive += [f"Consent/{c.id}" for c in records.consents if c.naive_time]
    if naive:
        found.flag(
            "time-without-offset",
            f"{len(naive)} time(s) without a UTC offset read in {policy.timezone}: "
            + ", ".join(naive[:10])
            + (" ..." if len(naive) > 10 else ""),
        )
    for charge in rules.rtm_without_occurrence(records.charges):
        found.flag(
            "rtm-without-occurrence",
            f"RTM charge {charge.code} (ChargeItem/{charge.id}) has no occurrence: "
            "it blocks nothing; check it",
        )
    for text in records.extra_flags:
        found.flag("input", text)


def _covered_before(
    consent: ConsentRecord,
    limit: datetime,
    activity_times: Sequence[datetime],
    times_fixed: bool,
    readings: Sequence[QualifyingReading],
    data: DeviceData,
) -> list[datetime]:
    """The counted moments (activity times, then the readings' times) `consent` is in force at that are
    earlier than `limit`, in order.

    `consent_covering([consent], t)` for each moment, inlined, and only the moments before `limit` kept: the
    consent-after-first-use flag asks whether the earliest covered moment is before the consent's dateTime,
    which holds exactly when some covered moment is, and then the earliest of those is the earliest of all.
    Keeping only those spares a `min` over every counted moment (slow over mixed UTC offsets). Both kinds of
    moments are in time order: when their times are totally ordered (all with fixed offsets: `times_fixed`,
    `DeviceData.fixed_offsets`) the ones in the span are a slice, found by bisection (usually empty: a
    consent is recorded before the care it covers).
    """
    if consent.start is None or consent.revoked_without_end:
        return []
    end = limit if consent.end is None else min(consent.end, limit)
    span = (consent.start, end)
    if times_fixed:
        early = []
        if activity_times and activity_times[0] < end:
            first = bisect_left(activity_times, consent.start)
            early = list(activity_times[first : bisect_left(activity_times, end, lo=first)])
    else:
        found = InstantSpans([span]).positions(activity_times)
        early = [t for t, position in zip(activity_times, found, strict=True) if position is not None]
    if data.fixed_offsets:
        if readings and readings[0].reading.time < end:
            first = bisect_left(readings, consent.start, key=_READING_TIME)
            last = bisect_left(readings, end, lo=first, key=_READING_TIME)
            early += [q.reading.time for q in readings[first:last]]
    else:
        moments = [q.reading.time for q in readings]
        found = InstantSpans([span]).positions(moments)
        early += [t for t, position in zip(moments, found, strict=True) if position is not None]
    return early
