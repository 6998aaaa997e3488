"""fhir_mapping.fhirtime: FHIR date/time and UCUM duration parsing, one row per rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from fhir_mapping.fhirtime import FhirTimeError, Precision, duration_seconds, parse_moment, parse_time
from fhir_mapping.issues import MappingError

NY = ZoneInfo("America/New_York")
EST = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("value", "moment", "naive", "precision"),
    [
        pytest.param(
            "2026-03-05T10:00:00Z", datetime(2026, 3, 5, 10, tzinfo=UTC), False, Precision.SECOND, id="utc"
        ),
        pytest.param(
            "2026-03-05T10:00:00-05:00",
            datetime(2026, 3, 5, 10, tzinfo=EST),
            False,
            Precision.SECOND,
            id="offset",
        ),
        pytest.param(
            "2026-03-05T10:00:00",
            datetime(2026, 3, 5, 10, tzinfo=NY),
            True,
            Precision.SECOND,
            id="naive-local",
        ),
        pytest.param(
            "2026-03-05T10:00:00.123456789+00:00",
            datetime(2026, 3, 5, 10, 0, 0, 123456, tzinfo=UTC),
            False,
            Precision.FRACTION,
            id="fraction-cut-to-micro",
        ),
        pytest.param(
            "2026-03-05T10:00:00.5Z",
            datetime(2026, 3, 5, 10, 0, 0, 500000, tzinfo=UTC),
            False,
            Precision.FRACTION,
            id="fraction-short",
        ),
        pytest.param(
            "2026-03-05", datetime(2026, 3, 5, tzinfo=NY), False, Precision.DAY, id="date-only-midnight"
        ),
        pytest.param(
            "2026-03-05T10:30-0500",
            datetime(2026, 3, 5, 10, 30, tzinfo=EST),
            False,
            Precision.MINUTE,
            id="quirk-no-seconds-no-colon",
        ),
        pytest.param(
            "2026-03-05T10:00:00z",
            datetime(2026, 3, 5, 10, tzinfo=UTC),
            False,
            Precision.SECOND,
            id="lower-z",
        ),
        pytest.param(
            "2026-12-31T23:59:60Z",
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
            False,
            Precision.SECOND,
            id="leap-second",
        ),
        pytest.param(
            "2026-03-08T02:30:00",
            datetime(2026, 3, 8, 2, 30, tzinfo=NY),
            True,
            Precision.SECOND,
            id="dst-gap-naive",
        ),
    ],
)
def test_parse_time(value: str, moment: datetime, naive: bool, precision: Precision) -> None:
    parsed = parse_time(value, NY, "effectiveDateTime")
    assert parsed.moment == moment
    assert parsed.moment.utcoffset() == moment.utcoffset()
    assert parsed.naive is naive
    assert parsed.precision is precision


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("2026-13-01", "'2026-13-01' is not a FHIR dateTime", id="month-13"),
        pytest.param("2026-02-30", "no such date", id="feb-30"),
        pytest.param("2026-03-05T24:00:00Z", "24:00 is not a valid time", id="24h"),
        pytest.param("2026-03-05T10:61:00Z", "out of range", id="minute-61"),
        pytest.param("2026-03-05T10:00:00+15:00", "offset out of range", id="offset-15h"),
        pytest.param("2026-03", "too imprecise", id="year-month"),
        pytest.param("2026", "too imprecise", id="year"),
        pytest.param("yesterday", "is not a FHIR dateTime", id="garbage"),
        pytest.param("", "is not a FHIR dateTime", id="empty"),
        pytest.param("2026-03-05 10:00:00", "is not a FHIR dateTime", id="space-separator"),
        pytest.param(20260305, "not a string", id="number"),
        pytest.param(None, "not a string", id="null"),
    ],
)
def test_parse_time_rejects(value: object, problem: str) -> None:
    with pytest.raises(FhirTimeError) as raised:
        parse_time(value, NY, "effectiveDateTime")
    assert str(raised.value).startswith("effectiveDateTime ")
    assert problem in str(raised.value)


def test_long_garbage_is_shortened_in_the_problem() -> None:
    with pytest.raises(FhirTimeError) as raised:
        parse_time("x" * 10_000, NY, "sent")
    assert len(str(raised.value)) < 120


@pytest.mark.parametrize(
    ("value", "end"),
    [
        pytest.param("2026-03-31", datetime(2026, 4, 1, tzinfo=NY), id="date-whole-day"),
        pytest.param("2026-03-07", datetime(2026, 3, 8, tzinfo=NY), id="date-before-dst-start"),
        pytest.param("2026-03-31T23:59:59-04:00", datetime(2026, 4, 1, 0, 0, 0, tzinfo=NY), id="second"),
        pytest.param("2026-03-31T23:59-04:00", datetime(2026, 4, 1, 0, 0, 0, tzinfo=NY), id="minute"),
        pytest.param("2026-03-31T23:59:59.9-04:00", datetime(2026, 4, 1, 0, 0, 0, tzinfo=NY), id="tenth"),
    ],
)
def test_exclusive_end_adds_one_unit_of_precision(value: str, end: datetime) -> None:
    assert parse_time(value, NY, "end").exclusive_end() == end


def test_date_only_end_is_next_local_midnight_across_dst() -> None:
    end = parse_time("2026-03-07", NY, "end").exclusive_end()
    assert end.utcoffset() == timedelta(hours=-5)  # 2026-03-08 00:00 is still EST
    assert end - parse_time("2026-03-07", NY, "start").moment == timedelta(days=1)


UCUM = "http://unitsofmeasure.org"


@pytest.mark.parametrize(
    ("quantity", "seconds"),
    [
        pytest.param({"value": 20, "system": UCUM, "code": "min"}, 1200, id="ucum-min"),
        pytest.param({"value": 90, "system": UCUM, "code": "s"}, 90, id="ucum-s"),
        pytest.param({"value": 1.5, "system": UCUM, "code": "h"}, 5400, id="ucum-h"),
        pytest.param({"value": 20, "code": "min"}, 1200, id="code-without-system"),
        pytest.param({"value": 20, "unit": "minutes"}, 1200, id="unit-text-minutes"),
        pytest.param({"value": 20, "unit": "min"}, 1200, id="unit-text-min"),
        pytest.param({"value": 19.99, "system": UCUM, "code": "min"}, 1199, id="fraction-floored"),
        pytest.param({"value": 0, "system": UCUM, "code": "min"}, 0, id="zero"),
        pytest.param(
            {"value": 5, "system": "http://example.org/units", "code": "min", "unit": "h"},
            18000,
            id="foreign-system-uses-unit-text",
        ),
    ],
)
def test_duration_seconds(quantity: dict[str, object], seconds: int) -> None:
    assert duration_seconds(quantity, "valueQuantity") == seconds


@pytest.mark.parametrize(
    ("quantity", "problem"),
    [
        pytest.param({"value": 20, "system": UCUM, "code": "kg"}, "unit 'kg' is not a time unit", id="kg"),
        pytest.param({"value": 20}, "is not a time unit", id="no-unit"),
        pytest.param({"value": -5, "code": "min"}, "negative", id="negative"),
        pytest.param({"value": "20", "code": "min"}, "is not a number", id="string-value"),
        pytest.param({"value": True, "code": "min"}, "is not a number", id="bool-value"),
        pytest.param({"code": "min"}, "is not a number", id="no-value"),
        pytest.param([20], "is not a Quantity", id="not-an-object"),
    ],
)
def test_duration_rejects(quantity: object, problem: str) -> None:
    with pytest.raises(MappingError) as raised:
        duration_seconds(quantity, "valueQuantity")
    assert problem in str(raised.value)


# ------------------------------------------------------------------- parse_moment's fast paths agree


def _reference_moment(value: object) -> tuple[str, object]:
    try:
        parsed = parse_time(value, NY, "f")
    except FhirTimeError as err:
        return "error", str(err)
    return "ok", (parsed.moment, parsed.naive, parsed.moment.utcoffset())


def _fast_moment(value: object) -> tuple[str, object]:
    try:
        moment, naive = parse_moment(value, NY, "f")
    except FhirTimeError as err:
        return "error", str(err)
    return "ok", (moment, naive, moment.utcoffset())


_SHAPES = (
    "2026-02-01T07:54:53-05:00",
    "2026-03-08T02:30:00-05:00",
    "2026-11-01T01:30:00-04:00",
    "2026-02-01T07:54:53Z",
    "2026-02-01T07:54:53",
    "2026-02-29T07:54:53Z",
    "2026-02-01T24:00:00Z",
    "2026-02-01T23:59:60-05:00",
    "2026-02-01T07:54:53+14:00",
    "2026-02-01T07:54:53+14:01",
    "2026-02-01T07:54:53-05:60",
    "2026-02-01T07:54:53+0500",
    "2026-02-01T07:54:53.123456Z",
    "2026-02-01T07:54:53.1234567+05:30",
    "2026-02-01T07:54",
    "2026-02-01",
)


def test_parse_moment_agrees_with_parse_time_on_mutated_values() -> None:
    """parse_moment reads the common shapes without the tolerant parser: same instant, same offset, same
    naive mark, same error, for the shapes above and 60,000 copies with one or two characters changed
    (separators, digits out of range, non-ASCII digits, spaces, a lower-case z)."""
    rng = random.Random(20261123)
    alphabet = "0123456789-:T+Zz. \u0665\uff12"
    values: list[object] = [*_SHAPES, None, 20260201, ""]
    for _ in range(60_000):
        chars = list(rng.choice(_SHAPES))
        for _ in range(rng.randint(1, 2)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        values.append("".join(chars))
    differ = [v for v in values if _fast_moment(v) != _reference_moment(v)]
    assert differ == []


def test_parse_moment_shares_one_tzinfo_per_offset() -> None:
    first, _ = parse_moment("2026-02-01T07:54:53-05:00", NY, "f")
    second, _ = parse_moment("2026-02-02T08:00:00-05:00", NY, "f")
    via_regex, _ = parse_moment("2026-02-02T08:00:00.5-05:00", NY, "f")
    assert first.tzinfo is second.tzinfo is via_regex.tzinfo
