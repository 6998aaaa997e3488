"""Named, versioned billing policies, kept as data.

A policy is the rule set a month is billed under. Deployments may override individual settings (a payer may
need others); every result names the policy and its rule-set version so a bill can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any

DEFAULT_TIMEZONE = "America/New_York"


class PolicyError(ValueError):
    """An unknown policy name or an invalid override."""


@dataclass(frozen=True)
class Policy:
    name: str
    version: str
    description: str
    # Codes available under this rule set.
    has_99470: bool  # first 10 minutes of treatment management (CPT 2026)
    has_99445: bool  # device supply on 2-15 days (CPT 2026)
    # Treatment management time: "all" = care management time + interactive time (CMS CY2021 correction);
    # "interactive" = only the interactive communications' own durations.
    minutes_basis: str = "all"
    max_99458_units: int = 3  # MUE since 2023-07-01
    interactive_media: frozenset[str] = frozenset({"PHONE", "VIDEOCONF"})
    ai_contacts: bool = True
    live_chat: bool = False
    chat_window: timedelta = timedelta(minutes=5)
    setup_min_days: int = 2  # data days the 99453 window must reach
    rebill_99453_new_episode: bool = False
    timezone: str = DEFAULT_TIMEZONE

    @property
    def supply_min_days(self) -> int:
        """Fewest data days that earn any supply code in a 30-day window."""
        return 2 if self.has_99445 else 16

    @property
    def management_min_minutes(self) -> int:
        return 10 if self.has_99470 else 20

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


CMS_2026 = Policy(
    name="cms-2026",
    version="2026.1",
    description="Medicare PFS CY2026: 99470 and 99445 added; 99453 with 2 data days.",
    has_99470=True,
    has_99445=True,
    setup_min_days=2,
)
CMS_2025 = Policy(
    name="cms-2025",
    version="2025.1",
    description="Medicare PFS CY2025: no 99470 or 99445; 99453 and 99454 need 16 data days.",
    has_99470=False,
    has_99445=False,
    setup_min_days=16,
)
INTERACTIVE_ONLY = replace(
    CMS_2026,
    name="interactive-only",
    version="2026.1",
    description="CMS CY2026 codes, but only interactive communication time counts (strict payers).",
    minutes_basis="interactive",
)

POLICIES: dict[str, Policy] = {p.name: p for p in (CMS_2026, CMS_2025, INTERACTIVE_ONLY)}

# Settings a deployment may override, with how to read each from text (CLI, config files, env).
OVERRIDABLE = {
    "max_99458_units",
    "interactive_media",
    "ai_contacts",
    "live_chat",
    "chat_window",
    "setup_min_days",
    "rebill_99453_new_episode",
    "timezone",
}


def policy_for_month(year: int, month: int) -> Policy:
    """Without a named policy the month picks it: cms-2025 before 2026-01, cms-2026 from then on."""
    return CMS_2025 if (year, month) < (2026, 1) else CMS_2026


def get_policy(name: str | None, year: int, month: int, **overrides: Any) -> Policy:
    """The named policy (or the month's default) with deployment overrides applied."""
    if name is None:
        base = policy_for_month(year, month)
    else:
        try:
            base = POLICIES[name]
        except KeyError:
            raise PolicyError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    return apply_overrides(base, **overrides)


def apply_overrides(policy: Policy, **overrides: Any) -> Policy:
    unknown = set(overrides) - OVERRIDABLE
    if unknown:
        raise PolicyError(f"unknown policy setting(s): {', '.join(sorted(unknown))}")
    values = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
    return replace(policy, **values) if values else policy


def _coerce(key: str, value: Any) -> Any:
    """Accept settings from text (config files, env vars) as well as typed values."""
    kinds = {f.name: f.type for f in fields(Policy)}
    kind = str(kinds[key])
    try:
        if key == "interactive_media":
            items = value.split(",") if isinstance(value, str) else value
            media = frozenset(str(m).strip().upper() for m in items if str(m).strip())
            if not media:
                raise ValueError("empty")
            return media
        if key == "chat_window":
            if isinstance(value, timedelta):
                return value
            return timedelta(minutes=float(value))
        if kind == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            number = int(value)
            if number < 0:
                raise ValueError(value)
            return number
        if key == "timezone":
            return str(value)
    except (TypeError, ValueError):
        raise PolicyError(f"invalid value {value!r} for policy setting {key}") from None
    return value
