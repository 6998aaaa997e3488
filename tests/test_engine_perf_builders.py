"""The engine's fast paths against what they replace: the same answers, whatever the input looks like."""

from __future__ import annotations

import random
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.consent import Episode
from billing.engine import _readings_between
from billing.model import Activity, ActivityKind, DeviceRecord, Reading
from billing.periods import Period, YearMonth, hour_days, learn_local_day, local_date
from billing.policy import CMS_2026
from billing.result import (
    ActivityClass,
    ActivityOutcome,
    ChargeStatus,
    CodeLine,
    Flag,
    MonthResult,
    NotBilled,
    SupplyWindow,
    activity_outcome,
    code_line,
    month_result,
    supply_window,
)
from billing.supply import SKIP_OUTSIDE_CONSENT, QualifyingReading, device_data


def test_activity_outcome_is_the_constructor() -> None:
    activity = Activity("Communication", "a1", ActivityKind.COMMUNICATION, "completed", None)
    values = (activity, ActivityClass.INTERACTIVE, "why", True, "minutes", 60, 120, True, False)
    built = activity_outcome(*values)
    made = ActivityOutcome(*values)
    assert type(built) is ActivityOutcome
    assert built == made and repr(built) == repr(made) and hash(built) == hash(made)
    assert list(vars(built)) == [f.name for f in fields(ActivityOutcome)] == list(vars(made))
    assert activity_outcome(*values[:7]) == ActivityOutcome(*values[:7])  # the defaults


def _same_object(built: Any, made: Any) -> None:
    """What the constructor would have made: same type, equality, repr, hash and fields in order."""
    assert type(built) is type(made)
    assert built == made and repr(built) == repr(made) and hash(built) == hash(made)
    assert list(vars(built)) == [f.name for f in fields(made)] == list(vars(made))


_PERIOD = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))


def test_supply_window_is_the_constructor() -> None:
    values = (
        1,
        2,
        date(2026, 3, 1),
        date(2026, 3, 30),
        _PERIOD,
        (date(2026, 3, 2),),
        ("scale",),
        True,
        ("a",),
    )
    _same_object(supply_window(*values), SupplyWindow(*values))
    _same_object(supply_window(*values[:8]), SupplyWindow(*values[:8]))  # the default


def test_code_line_is_the_constructor() -> None:
    values = ("99454", 1, _PERIOD, ChargeStatus.PLANNED, "why", "p|99454|2026-03-01", ("Device/d1",))
    _same_object(code_line(*values), CodeLine(*values))
    _same_object(code_line(*values[:6]), CodeLine(*values[:6]))  # the default


def test_month_result_is_the_constructor() -> None:
    window = SupplyWindow(0, 0, date(2026, 3, 1), date(2026, 3, 30), _PERIOD, (), (), False)
    line = CodeLine("99457", 1, _PERIOD, ChargeStatus.BILLABLE, "why", "key")
    values = (
        "p1",
        YearMonth(2026, 3),
        CMS_2026,
        datetime(2026, 4, 15, tzinfo=UTC),
        _PERIOD,
        False,
        (),
        (Episode(0, datetime(2026, 1, 1, tzinfo=UTC), None, ("c1",)),),
        (DeviceRecord("d1", "active"),),
        (window,),
        (),
        1260,
        1,
        0,
        12,
        (("outside RPM consent", 2),),
        (line,),
        (NotBilled("99458", "needs 40 minutes", _PERIOD),),
        (Flag("low-data-days", "text"),),
        "Ann",
    )
    _same_object(month_result(*values), MonthResult(*values))
    _same_object(month_result(*values[:19]), MonthResult(*values[:19]))  # the default


ZONES = ("America/New_York", "America/Santiago", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham")
OFFSETS = (UTC, *(timezone(timedelta(minutes=m)) for m in (-300, -240, 330, 345, -570, 840)))


@pytest.mark.parametrize("zone_name", ZONES)
def test_hour_table_matches_astimezone(zone_name: str) -> None:
    """Moments looked up in the hour table (filled by `learn_local_day`) get what `astimezone` gives."""
    tz = ZoneInfo(zone_name)
    rng = random.Random(zone_name)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        moment = (start + timedelta(seconds=rng.randrange(0, 2 * 366 * 86400))).astimezone(
            rng.choice(OFFSETS)
        )
        table = hour_days(moment.tzinfo, tz)
        hours = table.get(moment.toordinal())
        day = None if hours is None else hours[moment.hour]
        if day is None:
            day = learn_local_day(table, moment, tz)
        assert day == local_date(moment, tz), (zone_name, moment.isoformat())


def _reference(
    readings: list[Reading], devices: list[DeviceRecord], all_episodes: list[Episode], tz: ZoneInfo
) -> tuple[list[tuple[str, datetime, int, date]], list[tuple[str, str]]]:
    """qualify_readings as it was written before the one-pass version (episodes by `contains`)."""
    rpm = {d.id for d in devices if d.status != "entered-in-error"}
    skipped: list[tuple[str, str]] = []
    best: dict[str, QualifyingReading] = {}
    kept: list[QualifyingReading] = []
    for r in readings:
        if r.program is not None and r.program != "rpm":
            skipped.append((r.id, "program"))
        elif r.device_id is None or r.device_id not in rpm:
            skipped.append((r.id, "device"))
        else:
            episode = next((e for e in all_episodes if e.contains(r.time)), None)
            if episode is None:
                skipped.append((r.id, SKIP_OUTSIDE_CONSENT))
                continue
            item = QualifyingReading(r, episode, local_date(r.time, tz))
            if r.identifier is None:
                kept.append(item)
            elif r.identifier not in best or r.time < best[r.identifier].reading.time:
                best[r.identifier] = item
    kept.extend(best.values())
    kept.sort(key=lambda q: (q.reading.time, q.reading.id))
    return [(q.reading.id, q.reading.time, q.episode.index, q.day) for q in kept], skipped


@pytest.mark.parametrize("seed", range(40))
def test_device_data_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    tz = ZoneInfo(rng.choice(ZONES))
    base = datetime(2026, 3, 1, tzinfo=tz)
    devices = [DeviceRecord("d1", "active"), DeviceRecord("d2", "entered-in-error")]
    all_episodes = [Episode(0, base - timedelta(days=40), base + timedelta(days=10, hours=5), ("c1",))]
    if seed % 2:
        all_episodes.append(Episode(1, base + timedelta(days=12), None, ("c2",)))
    readings = []
    for i in range(rng.choice([5, 60, 120])):
        moment = base + timedelta(days=rng.uniform(-45, 30), seconds=rng.randrange(86400))
        if seed % 3 == 0 and rng.random() < 0.2:
            moment = moment.astimezone(tz).replace(fold=rng.choice([0, 1]))  # a zone's wall clock
        else:
            moment = moment.astimezone(rng.choice(OFFSETS))
        identifier = rng.choice([None, f"s|{rng.randrange(20)}", f"s|{i}"]) if seed % 4 else f"s|{i % 50}"
        readings.append(
            Reading(
                id=f"o{rng.randrange(200)}",
                time=moment,
                device_id=rng.choice(["d1", "d1", "d1", "d2", None, "dx"]),
                identifier=identifier,
                program=rng.choice([None] * 6 + ["rpm", "ccm"]),
            )
        )
    orders = [sorted(readings, key=lambda r: (r.time, r.id)), readings]
    for given in orders:
        data = device_data(given, devices, all_episodes, tz)
        expected, skipped = _reference(given, devices, all_episodes, tz)
        got = [(q.reading.id, q.reading.time, q.episode.index, q.day) for q in data.qualifying]
        assert got == expected
        assert [(s.reading.id, s.reason) for s in data.skipped if s.reason == SKIP_OUTSIDE_CONSENT] == [
            s for s in skipped if s[1] == SKIP_OUTSIDE_CONSENT
        ]
        assert len(data.skipped) == len(skipped)
        # The same tzinfo objects too (isoformat shows the offset a reading was given in).
        assert [q.reading.time.isoformat() for q in data.qualifying] == [
            t.isoformat() for _, t, _, _ in expected
        ]


@pytest.mark.parametrize("seed", range(20))
def test_readings_between_matches_the_span_test(seed: int) -> None:
    """The first/last shortcut of `_readings_between` against the test it stands for, spans around, inside
    and outside the readings (fixed offsets: a slice; the practice zone's bounds)."""
    rng = random.Random(seed)
    tz = ZoneInfo("America/New_York")
    base = datetime(2026, 3, 1, tzinfo=UTC)
    devices = [DeviceRecord("d1", "active")]
    all_episodes = [Episode(0, base - timedelta(days=90), None, ("c1",))]
    readings = [
        Reading(
            id=f"o{i}",
            time=(base + timedelta(days=rng.uniform(-60, 40))).astimezone(rng.choice(OFFSETS)),
            device_id="d1",
            identifier=f"s|{i}",
        )
        for i in range(rng.choice([0, 1, 5, 50]))
    ]
    readings.sort(key=lambda r: (r.time, r.id))
    data = device_data(readings, devices, all_episodes, tz)
    for _ in range(30):
        start = datetime(2026, 3, 1, tzinfo=tz) - timedelta(days=rng.choice([0, 1, 29, 70, 120]))
        end = datetime(2026, 3, 1, tzinfo=tz) + timedelta(days=rng.choice([-80, 0, 10, 31, 60]))
        expected = [q for q in data.qualifying if start <= q.reading.time < end]
        assert _readings_between(data, (start, end)) == expected
