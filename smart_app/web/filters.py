"""Jinja filters of the web app: local dates and times, durations, plural words. Output is plain text (the
templates autoescape it like everything else)."""

from __future__ import annotations

from datetime import date, datetime

from flask import Flask

from billing.periods import Period, zone


def local_time(moment: datetime | None, timezone: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if moment is None:
        return "-"
    return moment.astimezone(zone(timezone)).strftime(fmt)


def day(value: date | None, fmt: str = "%a %b %d") -> str:
    return value.strftime(fmt) if value is not None else "-"


def duration(seconds: int | None) -> str:
    """`12 min 30 s`, `45 s`, or `-` when unknown."""
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(seconds), 60)
    if minutes and rest:
        return f"{minutes} min {rest} s"
    return f"{minutes} min" if minutes else f"{rest} s"


def period_days(period: Period | None) -> str:
    if period is None:
        return "-"
    return f"{period.first_day.isoformat()} to {period.last_day.isoformat()}"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


def install(app: Flask) -> None:
    app.add_template_filter(local_time)
    app.add_template_filter(day)
    app.add_template_filter(duration)
    app.add_template_filter(period_days)
    app.add_template_filter(plural)
