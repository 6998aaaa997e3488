"""The month's pipeline shared by `compute`, `month-end` and the web app: policy, evaluation, summaries.

Data flows one way: FHIR dicts -> `fhir_mapping` (records) -> `billing` (decide) -> `fhir_mapping` (FHIR out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing.engine import evaluate_month
from billing.model import PatientRecords
from billing.periods import PeriodError, YearMonth, zone
from billing.policy import Policy, PolicyError, get_policy
from billing.result import MonthResult
from smart_app.errors import UsageError


@dataclass(frozen=True)
class RunOptions:
    """What a run bills: the month, the rule set and the moment it is run at."""

    month: YearMonth
    as_of: datetime
    policy_name: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # policy overrides (timezone included)

    @property
    def timezone(self) -> str:
        return str(self.settings.get("timezone") or self.policy().timezone)

    def policy(self) -> Policy:
        return self.policy_for(self.month)

    def policy_for(self, month: YearMonth) -> Policy:
        """The named policy for every month, or, with none named, the rule set each month picks."""
        try:
            return get_policy(self.policy_name, month.year, month.month, **dict(self.settings))
        except PolicyError as exc:
            raise UsageError(str(exc)) from None


def parse_month(text: str) -> YearMonth:
    try:
        return YearMonth.parse(text)
    except PeriodError as exc:
        raise UsageError(str(exc)) from None


def parse_as_of(text: str | None, timezone: str) -> datetime:
    """`--as-of` (ISO 8601; a time without offset is read in the practice zone), else now."""
    try:
        tz = zone(timezone)
    except PeriodError as exc:
        raise UsageError(str(exc)) from None
    if not text:
        return datetime.now(tz)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--as-of must be an ISO 8601 date or date-time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def parse_settings(pairs: Iterable[str]) -> dict[str, str]:
    """`--setting key=value` pairs (policy overrides such as max_99458_units=2)."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--setting takes key=value, got {pair!r}")
        settings[key.strip().replace("-", "_")] = value.strip()
    return settings


def evaluate(records: PatientRecords, options: RunOptions) -> MonthResult:
    policy = options.policy()
    return evaluate_month(records, options.month, policy, options.as_of, policy_for_month=options.policy_for)


def summary_row(result: MonthResult) -> dict[str, Any]:
    """One patient's line in the run table (ids only: no names in terminal output or logs)."""
    return {
        "patient": result.patient_id,
        "codes": format_codes(result),
        "status": "preview" if any(c.status == "planned" for c in result.codes) else "final",
        "minutes": result.minutes,
        "interactive": result.interactive_count,
        "attempts": result.attempt_count,
        "data_days": result.data_days_in_month,
        "windows": [
            {"start": w.first_day.isoformat(), "end": w.last_day.isoformat(), "days": w.day_count}
            for w in result.windows
            if w.belongs_to == result.month
        ],
        "flags": list(dict.fromkeys(f.code for f in result.flags)),
    }


def format_codes(result: MonthResult) -> str:
    parts = []
    for line in result.codes:
        parts.append(line.code if line.units == 1 else f"{line.code}x{line.units}")
    return " ".join(parts) or "-"
