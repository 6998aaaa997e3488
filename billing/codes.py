"""Code selection rules: treatment management by minutes, device supply by data days, RTM exclusion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from billing.model import ExistingCharge
from billing.periods import Period
from billing.policy import Policy
from billing.result import (
    INACTIVE_CHARGE_STATUSES,
    MANAGEMENT_10,
    MANAGEMENT_20,
    MANAGEMENT_ADDON,
    RTM_CODES,
    SUPPLY_2_15,
    SUPPLY_16_30,
)


@dataclass(frozen=True)
class Pick:
    """A code the rules select, before consent/RTM/preview checks turn it into a charge line."""

    code: str
    units: int
    reason: str


def management_codes(minutes: int, policy: Policy) -> tuple[list[Pick], list[Pick]]:
    """Codes for the month's treatment-management minutes (interactive requirement checked by the caller).

    Returns (billed, not billed) where each not-billed pick carries the reason (units 0).
    """
    billed: list[Pick] = []
    not_billed: list[Pick] = []
    if not policy.has_99470:
        not_billed.append(Pick(MANAGEMENT_10, 0, f"99470 is not in the {policy.name} rule set"))
    if minutes < 20:
        if policy.has_99470 and minutes >= 10:
            billed.append(Pick(MANAGEMENT_10, 1, f"{minutes} minutes of treatment management (10-19)"))
        elif policy.has_99470:
            not_billed.append(Pick(MANAGEMENT_10, 0, f"needs 10 minutes; {minutes} counted"))
        not_billed.append(Pick(MANAGEMENT_20, 0, f"needs 20 minutes; {minutes} counted"))
        not_billed.append(Pick(MANAGEMENT_ADDON, 0, f"needs 40 minutes (add-on to 99457); {minutes} counted"))
        return billed, not_billed
    if policy.has_99470:
        not_billed.append(
            Pick(
                MANAGEMENT_10,
                0,
                "not reported with 99457 in the same month: 99457 covers the first 20 minutes",
            )
        )
    billed.append(Pick(MANAGEMENT_20, 1, f"{minutes} minutes of treatment management: first 20 minutes"))
    extra_units = (minutes - 20) // 20
    if extra_units == 0:
        not_billed.append(Pick(MANAGEMENT_ADDON, 0, f"needs 40 minutes; {minutes} counted"))
        return billed, not_billed
    units = min(extra_units, policy.max_99458_units)
    reason = f"{minutes} minutes: {units} additional full 20-minute unit(s) beyond the first 20"
    if units < extra_units:
        reason += f" (capped at {policy.max_99458_units} by policy {policy.name}; {extra_units} earned)"
    if units > 0:
        billed.append(Pick(MANAGEMENT_ADDON, units, reason))
    else:
        not_billed.append(Pick(MANAGEMENT_ADDON, 0, f"policy {policy.name} allows no 99458 units"))
    return billed, not_billed


def supply_code(days: int, policy: Policy) -> tuple[Pick | None, list[Pick]]:
    """The one supply code for a 30-day window (however many devices), and the codes not billed."""
    if days >= 16:
        not_billed = [Pick(SUPPLY_2_15, 0, f"{days} data days: 99454 (16-30 days) applies instead")]
        if not policy.has_99445:
            not_billed = []
        return Pick(SUPPLY_16_30, 1, f"{days} data days in the 30-day window (16-30)"), not_billed
    not_billed = [Pick(SUPPLY_16_30, 0, f"needs 16 data days; {days} in the window")]
    if policy.has_99445 and days >= 2:
        return Pick(SUPPLY_2_15, 1, f"{days} data days in the 30-day window (2-15)"), not_billed
    if policy.has_99445:
        not_billed.append(Pick(SUPPLY_2_15, 0, f"needs 2 data days; {days} in the window"))
    else:
        not_billed.append(Pick(SUPPLY_2_15, 0, f"99445 is not in the {policy.name} rule set"))
    return None, not_billed


def active_charges(
    charges: Sequence[ExistingCharge], codes: Sequence[str] | frozenset[str]
) -> list[ExistingCharge]:
    """Existing charges for these codes that still stand (not entered-in-error, aborted or not-billable)."""
    return [c for c in charges if c.code in codes and c.status not in INACTIVE_CHARGE_STATUSES]


def rtm_block(charges: Sequence[ExistingCharge], period: Period) -> ExistingCharge | None:
    """An existing RTM charge whose occurrence overlaps the period: RPM and RTM never share a period.

    An occurrence period without an end is ongoing (FHIR Period semantics), so it overlaps every later period.
    """
    for charge in charges:  # `active_charges(charges, RTM_CODES)`, without a list (asked per period)
        if (
            charge.code in RTM_CODES
            and charge.status not in INACTIVE_CHARGE_STATUSES
            and period.overlaps(charge.period_start, charge.period_end)
        ):
            return charge
    return None


def rtm_without_occurrence(charges: Sequence[ExistingCharge]) -> list[ExistingCharge]:
    return [c for c in active_charges(charges, RTM_CODES) if c.period_start is None]
