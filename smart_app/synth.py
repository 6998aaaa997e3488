"""A deterministic synthetic RPM population, as FHIR R4 JSON in the integration contract's format.

`generate()` yields plain FHIR JSON dicts (shared staff first, then patient by patient); `write_bulk()` writes
them in the Bulk Data export layout (one NDJSON file per resource type). The sandbox EHR, the demo and the
benchmarks load these; tests use them to exercise every rule of the contract (sections 1-3).

Determinism: each patient draws from its own `random.Random` seeded from (seed, patient index), never from
the global RNG or the clock, and ids are derived from the patient index. So the same arguments always give
byte-identical output, and a population of N patients is a prefix of a larger one with the same seed.

Coverage: rare cases are pinned to fixed positions in every block of 200 patients, and the moderately common
ones recur on fixed cycles, so any population of 60 or more patients holds at least one of each. Each
Patient carries `meta.tag` codes (system `{canon}/synth-scenario`) naming its scenario: `enrollment-*`,
`adherence-*` (days in the month with a reading from the patient's own active device, consent aside), the
cases applied, and `management-seconds-N`: the seconds the month's counted activities add up to under the
default policy (interactive communications + RPM time entries + staff messages, in consent, overlaps
merged; 0 when no RPM consent counts), which benchmarks can compare with the engine's answer. Counted
activities never overlap one another; an activity that overlaps on purpose lies wholly inside a counted call.

All data is synthetic: names come from small lists of obviously fake words, phone numbers from the fictional
555-01xx range.
"""

from __future__ import annotations

import calendar
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_mapping.canon import (
    CANON,
    COMMUNICATION_CATEGORY_CS,
    COMMUNICATION_NOT_DONE_CS,
    CONSENT_SCOPE_CS,
    CPT_SYSTEM,
    LOINC,
    PARTICIPATION_MODE_CS,
    UCUM,
    Systems,
)

Resource = dict[str, Any]

# The order of the summary and of the files a bulk export of this population holds.
RESOURCE_TYPES = (
    "Practitioner",
    "Device",
    "Patient",
    "RelatedPerson",
    "Consent",
    "ChargeItem",
    "Observation",
    "Encounter",
    "Communication",
)

DEFAULT_TIMEZONE = "America/New_York"

SNOMED = "http://snomed.info/sct"
MDC = "urn:iso:std:iso:11073:10101"
OBSERVATION_CATEGORY_CS = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V2_DEGREE = "http://terminology.hl7.org/CodeSystem/v2-0360|2.7"
CONSENT_CATEGORY_LOINC = ("59284-0", "Patient Consent")
# Identifier systems of the (fictional) device gateway and EHR that "produced" this data.
READING_ID_SYSTEM = "https://gateway.example.org/fhir/sid/reading-id"
DEVICE_SERIAL_SYSTEM = "https://gateway.example.org/fhir/sid/serial"
MRN_SYSTEM = "https://ehr.example.org/fhir/sid/mrn"
STAFF_ID_SYSTEM = "https://ehr.example.org/fhir/sid/staff"

AI_DEVICE_ID = "dev-ai-caller"
NURSES = ("prac-nurse-1", "prac-nurse-2", "prac-nurse-3")
PHYSICIAN = "prac-md-1"

_BLOCK = 200
# Rare cases: position within every block of 200 patients (all below 60, so 60 patients hold each once).
_RARE_CASES = {
    3: "rtm-overlap",
    5: "consent-inactive-no-end",
    7: "consent-deny",
    9: "consent-not-rpm",
    11: "html-note",
    13: "rtm-no-occurrence",
    15: "prior-99453-entered-in-error",
    17: "device-entered-in-error",
    19: "consent-touching",
    21: "caregiver-no-relationship",
    23: "reading-effective-instant",
    25: "reading-other-patients-device",
    27: "reading-effective-period",
}
# Recurring cases: (modulus, residue, case) on the patient index.
_PERIODIC_CASES = (
    (3, 0, "pre-consent-readings"),
    (4, 1, "consent-via-provision-code"),
    (4, 2, "caregiver"),
    (5, 0, "care-team-message"),
    (5, 1, "duplicate-readings"),
    (6, 1, "face-visit"),
    (6, 2, "reading-utc-month-start"),
    (6, 5, "reading-last-day-late"),
    (7, 2, "utc-clock"),
    (7, 3, "no-content-call"),
    (8, 2, "interactive-no-duration"),
    (8, 3, "patient-reported-readings"),
    (8, 6, "ai-call"),
    (9, 4, "unreachable"),
    (9, 7, "overlapping-time-entry"),
    (10, 3, "time-entry-no-performer"),
    (10, 5, "month-end-crossing"),
    (10, 7, "chat-session"),
    (11, 5, "ccm-call"),
    (12, 1, "previous-month-crossing"),
    (12, 8, "ccm-time-entry"),
    (13, 6, "cancelled-time-entry"),
    (13, 11, "time-entry-seconds"),
    (14, 9, "entered-in-error-communication"),
    (15, 4, "consent-recorded-late"),
    (16, 10, "rtm-reading"),
)
_ENROLLMENT_CYCLE = (
    "long", "long", "recent", "mid-month", "long", "long", "revoked", "long", "recent",
    "mid-month", "long", "gap", "long", "recent", "long", "mid-month", "long",
)  # fmt: skip
_RARE_ENROLLMENT = {
    "consent-inactive-no-end": "inactive-no-end",
    "consent-deny": "deny",
    "consent-not-rpm": "not-rpm",
    "consent-touching": "touching",
}
_ADHERENCE_CYCLE = ("16-30", "2-15", "16-30", "0", "16-30", "2-15", "1", "16-30", "2-15", "16-30", "2-15")
# Management seconds per patient: (low, high, edge). The first pass through the cycle (every other block of
# 13 patients) takes the edge value, so threshold cases such as 19 min 59 s are always present.
_MINUTES_CYCLE = (
    (0, 599, 599),
    (0, 599, 0),
    (600, 1199, 1199),
    (600, 1199, 600),
    (1200, 2399, 1200),
    (1200, 2399, 2399),
    (1200, 2399, 1500),
    (2400, 3599, 2400),
    (2400, 3599, 3599),
    (3600, 4799, 3600),
    (4800, 6600, 4800),
    (600, 1199, 1199),
    (3600, 4799, 4799),
)

# Seconds each kind of counted activity lasts (before the remainder of the patient's total is folded in).
_KIND_SECONDS = {
    "call": (300, 1800),
    "caregiver-call": (300, 1200),
    "ai-call": (120, 600),
    "time-entry": (120, 900),
    "staff-message": (60, 420),
    "team-message": (60, 300),
    "chat": (60, 300),
}
_CALL_KINDS = frozenset({"call", "caregiver-call", "ai-call"})

_GIVEN = (
    "Alex", "Jordan", "Casey", "Riley", "Morgan", "Avery", "Quinn", "Rowan", "Sky", "Emery",
    "Parker", "Reese", "Dana", "Robin", "Jamie", "Toby", "Lee", "Sam", "Kit", "Noel",
)  # fmt: skip
_FAMILY = (
    "Testperson", "Samplesen", "Fakename", "Synthetica", "Demoson", "Mockwell", "Dummyfield", "Fauxley",
    "Placeholder", "Exampleton", "Notreal", "Fictitia", "Pretendo", "Simulado", "Stubbins", "Nullberg",
)  # fmt: skip
_CAREGIVER_ROLES = (
    ("DAU", "daughter"),
    ("SON", "son"),
    ("SPS", "spouse"),
    ("NIECE", "niece"),
    ("FRND", "friend"),
)
_CALL_TEXTS = (
    "Reviewed this week's readings with the patient; no new symptoms reported.",
    "Discussed blood pressure trend and home measurement technique.",
    "Patient reports missed doses on two days; reviewed medication schedule.",
    "Went over weight gain of 1.5 kg; advised fluid and salt limits per care plan.",
    "Checked in about dizziness reported via the app; symptoms resolved.",
    "Updated care plan goals with the patient.",
)
_MESSAGE_TEXTS = (
    "Your readings this week look stable. Keep measuring each morning.",
    "Please remember to take your reading before your morning medication.",
    "Care team note: readings trending up, please review at next huddle.",
    "Sent updated care plan summary.",
)
_ESCALATION_TEXTS = (
    "Escalated to the physician: systolic above 180 on two readings; medication adjusted.",
    "Escalated: SpO2 below 90% twice; patient advised to call if short of breath.",
    "Escalated to the physician: weight up 2 kg in 3 days; diuretic dose reviewed.",
)
# Untrusted free text: whatever renders the monthly log must escape it (never execute or render markup).
_HOSTILE_NOTE = (
    "Escalated <script>alert('rpm-synth')</script><img src=x onerror=\"alert(1)\"> "
    "& <b>bold</b> \"quoted\" 'single' </textarea><!-- end -->"
)


@dataclass(frozen=True)
class _Ctx:
    """What every patient's generation shares: the month, the zone and the URLs."""

    first: date  # first day of the month
    last: date
    prev_first: date
    prev_last: date
    tz: ZoneInfo
    urls: Systems
    scenario: str  # the Patient meta.tag system of the synthetic scenario tags

    def at(self, day: date, seconds: int) -> datetime:
        """Local wall-clock time `seconds` after midnight of `day` in the practice zone."""
        return datetime.combine(day, time(), self.tz) + timedelta(seconds=seconds)

    def month_days(self) -> list[date]:
        return _days(self.first, self.last)


@dataclass(frozen=True)
class _ConsentSpec:
    start: date
    status: str = "active"
    end: date | None = None
    end_time: int | None = None  # seconds after midnight: a dateTime end; None: a date-only end
    provision_type: str | None = "permit"
    program: str = "rpm"
    start_in_provision: bool = True  # False: only Consent.dateTime gives the start

    def counts(self) -> bool:
        """Whether the contract counts this consent at all (section 1, Consent row)."""
        if self.program != "rpm" or self.provision_type not in ("permit", None):
            return False
        return self.status == "active" or (self.status == "inactive" and self.end is not None)


@dataclass(frozen=True)
class _Device:
    id: str
    kind: str  # bp | scale | oximeter
    serial: str
    status: str = "active"


@dataclass(frozen=True)
class _Activity:
    """A counted activity placed in time (start local, `seconds` long)."""

    kind: str
    start: datetime
    seconds: int


def validate_arguments(patients: int, month: str, timezone: str) -> tuple[date, ZoneInfo]:
    """Check the generator's arguments; return the month's first day and the zone. Raises ValueError."""
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 0:
        raise ValueError(f"patients must be a whole number >= 0, got {patients!r}")
    match = re.fullmatch(r"(\d{4})-(0[1-9]|1[0-2])", month or "")
    if not match:
        raise ValueError(f"month must be YYYY-MM (e.g. 2026-03), got {month!r}")
    year = int(match.group(1))
    if year < 1900:
        raise ValueError(f"month must be in 1900 or later, got {month!r}")
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"unknown time zone {timezone!r} (expected an IANA name such as America/New_York)"
        ) from None
    return date(year, int(match.group(2)), 1), tz


def generate(
    patients: int, month: str, seed: int, timezone: str = DEFAULT_TIMEZONE, canon: str = CANON
) -> Iterator[Resource]:
    """Yield a synthetic population: the shared staff and AI calling system, then each patient's resources.

    Raises ValueError at once (not on first iteration) when an argument is bad.
    """
    first, tz = validate_arguments(patients, month, timezone)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    prev_last = first - timedelta(days=1)
    ctx = _Ctx(
        first,
        last,
        prev_last.replace(day=1),
        prev_last,
        tz,
        Systems.for_canon(canon.rstrip("/")),
        f"{canon.rstrip('/')}/synth-scenario",
    )
    return _generate(ctx, patients, seed)


def _generate(ctx: _Ctx, patients: int, seed: int) -> Iterator[Resource]:
    yield from _shared_resources()
    width = max(6, len(str(max(patients - 1, 0))))
    for index in range(patients):
        # A string seed is hashed with SHA-512 by `random`: stable across runs and platforms.
        rng = random.Random(f"rpm-synth|{seed}|{index}")
        yield from _PatientBuilder(ctx, index, f"pat-{index:0{width}d}", rng).build()


def write_bulk(resources: Iterable[Resource], out_dir: Path) -> dict[str, int]:
    """Write resources as `{resourceType}.ndjson` files in `out_dir` (created if missing); return counts.

    Files of the types present are replaced; nothing else in the directory is touched. Raises ValueError
    for a resource without a usable `resourceType` (files written so far are left in place).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    try:
        for resource in resources:
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            if not isinstance(rtype, str) or not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", rtype):
                raise ValueError(f"not a FHIR resource (no valid resourceType): {str(resource)[:80]}")
            handle = files.get(rtype)
            if handle is None:
                path = out_dir / f"{rtype}.ndjson"
                handle = files[rtype] = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
                counts[rtype] = 0
            handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")
            counts[rtype] += 1
    finally:
        for handle in files.values():
            handle.close()
    order = {name: i for i, name in enumerate(RESOURCE_TYPES)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


# --- small FHIR building blocks ------------------------------------------------------------------------


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


def _local(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _zulu(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plus(moment: datetime, seconds: int) -> datetime:
    """`moment` + elapsed seconds (through UTC, so a DST change does not bend the duration)."""
    return (moment.astimezone(UTC) + timedelta(seconds=seconds)).astimezone(moment.tzinfo)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _duration(seconds: int) -> dict[str, Any]:
    """A UCUM Duration/Quantity: whole minutes as `min`, anything else in seconds."""
    if seconds % 60 == 0:
        return {"value": seconds // 60, "unit": "min", "system": UCUM, "code": "min"}
    return {"value": seconds, "unit": "s", "system": UCUM, "code": "s"}


def _qty(value: float | int, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _shared_resources() -> list[Resource]:
    staff = [
        (NURSES[0], "Avery", "Nursington", "RN", "Registered Nurse"),
        (NURSES[1], "Jordan", "Caremore", "RN", "Registered Nurse"),
        (NURSES[2], "Quinn", "Vitalsworth", "RN", "Registered Nurse"),
        (PHYSICIAN, "Morgan", "Docterly", "MD", "Doctor of Medicine"),
    ]
    resources: list[Resource] = [
        {
            "resourceType": "Practitioner",
            "id": pid,
            "identifier": [{"system": STAFF_ID_SYSTEM, "value": pid}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given], "suffix": [degree]}],
            "qualification": [{"code": _concept(V2_DEGREE, degree, display)}],
        }
        for pid, given, family, degree, display in staff
    ]
    resources.append(
        {
            "resourceType": "Device",
            "id": AI_DEVICE_ID,
            "status": "active",
            "manufacturer": "Synthetic Voice Systems (fictional)",
            "deviceName": [{"name": "RPM check-in voice assistant", "type": "user-friendly-name"}],
            "type": {"text": "Automated (AI) patient calling system"},
        }
    )
    return resources


# --- one patient ---------------------------------------------------------------------------------------


def _cases(index: int) -> set[str]:
    cases = {case for mod, residue, case in _PERIODIC_CASES if index % mod == residue}
    rare = _RARE_CASES.get(index % _BLOCK)
    if rare:
        cases.add(rare)
    return cases


class _PatientBuilder:
    """Builds one patient's resources. All randomness comes from `rng`; all dates from `ctx`."""

    def __init__(self, ctx: _Ctx, index: int, pid: str, rng: random.Random) -> None:
        self.ctx = ctx
        self.index = index
        self.pid = pid
        self.rng = rng
        self.cases = _cases(index)
        self.applied: list[str] = []
        self.out: list[Resource] = []
        self.counters: dict[str, int] = {}
        self.nurse = NURSES[index % len(NURSES)]
        self.caregiver: str | None = None
        self.caregiver_has_relationship = False
        self.valid_consents: list[_ConsentSpec] = []
        self.base = (0, 0, 0.0, 0)  # the patient's usual systolic, diastolic, weight (kg), SpO2

    # ids and bookkeeping

    @property
    def patient_ref(self) -> dict[str, str]:
        """A fresh reference each time: no two resources share a nested dict (consumers may mutate them)."""
        return _ref("Patient", self.pid)

    def _id(self, kind: str) -> str:
        n = self.counters.get(kind, 0) + 1
        self.counters[kind] = n
        return f"{self.pid}-{kind}-{n}"

    def _apply(self, case: str) -> None:
        if case not in self.applied:
            self.applied.append(case)

    def _has(self, case: str) -> bool:
        return case in self.cases

    def build(self) -> list[Resource]:
        ctx = self.ctx
        enrollment = next(
            (_RARE_ENROLLMENT[c] for c in sorted(self.cases) if c in _RARE_ENROLLMENT),
            _ENROLLMENT_CYCLE[self.index % len(_ENROLLMENT_CYCLE)],
        )
        consents = self._consent_specs(enrollment)
        self.valid_consents = [c for c in consents if c.counts()]
        safe = [d for d in ctx.month_days() if self._safely_in_force(d)]
        self._related_person()
        devices = self._devices()
        reading_start, reading_end = self._reading_range(enrollment, consents)
        adherence = _ADHERENCE_CYCLE[self.index % len(_ADHERENCE_CYCLE)]
        forced: set[date] = set()
        recorded_late = None
        if self._has("consent-recorded-late") and self.valid_consents and consents[0].start_in_provision:
            # Consent entered in the record 3 days after the first counted reading, which is forced here.
            first_counted = max(consents[0].start, reading_start)
            forced.add(first_counted)
            recorded_late = first_counted + timedelta(days=3)
        if adherence not in ("0", "1"):  # edge-of-month readings go on data days, not add-on days
            if self._has("reading-last-day-late") and reading_end == ctx.last:
                forced.add(ctx.last)
            if self._has("reading-utc-month-start") and reading_start <= ctx.first:
                forced.add(ctx.first)
        if "setup-window-in-earlier-month" in self.applied:
            forced.update((reading_start, reading_start + timedelta(days=1)))
        data_days = self._data_days(adherence, reading_start, reading_end, forced)
        self._consents(consents, recorded_late)
        self._charge_items(enrollment, consents)
        reading_days = self._readings(devices, data_days, forced)
        seconds = self._management_seconds()
        counting = bool(safe)
        if not counting:  # no RPM consent in force this month: activities happen but none can count
            safe = ctx.month_days()
        placed = self._activities(seconds, safe, enrollment, consents)
        tags = [
            f"enrollment-{enrollment}",
            f"adherence-{_band_of_days(reading_days)}",
            f"management-seconds-{placed if counting else 0}",
            *self.applied,
        ]
        self.out.insert(0, self._patient(tags))
        return self.out

    # consent

    def _consent_specs(self, enrollment: str) -> list[_ConsentSpec]:
        rng, ctx = self.rng, self.ctx
        long_ago = ctx.first - timedelta(days=rng.randint(35, 183))
        end_time = None if rng.random() < 0.5 else rng.randint(9 * 3600, 17 * 3600)
        if enrollment == "recent":
            return [_ConsentSpec(ctx.first - timedelta(days=rng.randint(1, 30)))]
        if enrollment == "mid-month":
            start = ctx.first + timedelta(days=rng.randint(1, 24))
            return [_ConsentSpec(start, start_in_provision=rng.random() < 0.7)]
        if enrollment == "revoked":
            end = ctx.first + timedelta(days=rng.randint(7, 21))
            return [_ConsentSpec(long_ago, status="inactive", end=end, end_time=end_time)]
        if enrollment == "gap":
            end = ctx.first + timedelta(days=rng.randint(5, 13))
            again = end + timedelta(days=rng.randint(4, 8))
            return [
                _ConsentSpec(long_ago, status="inactive", end=end, end_time=end_time),
                _ConsentSpec(again),
            ]
        if enrollment == "touching":  # a renewal the day after the old consent's (date-only, whole-day) end
            end = ctx.first + timedelta(days=rng.randint(-10, 12))
            return [_ConsentSpec(long_ago, status="inactive", end=end), _ConsentSpec(end + timedelta(days=1))]
        if enrollment == "inactive-no-end":
            return [_ConsentSpec(long_ago, status="inactive")]
        if enrollment == "deny":
            return [_ConsentSpec(long_ago, provision_type="deny")]
        if enrollment == "not-rpm":
            return [_ConsentSpec(long_ago, program="ccm")]
        return [_ConsentSpec(long_ago, provision_type="permit" if rng.random() < 0.85 else None)]

    def _safely_in_force(self, day: date) -> bool:
        """Whether a valid RPM consent covers all of `day` (start and end days excluded, to stay clear)."""
        return any(c.start < day and (c.end is None or day < c.end) for c in self.valid_consents)

    def _consents(self, specs: list[_ConsentSpec], recorded_late: date | None) -> None:
        ctx, rng = self.ctx, self.rng
        for i, spec in enumerate(specs):
            # Consent is usually recorded the day before it takes effect (provision.period.start is a date:
            # in force from that local midnight); the "recorded late" case comes after the first reading.
            recorded_day = recorded_late if (recorded_late and i == 0) else spec.start - timedelta(days=1)
            if recorded_late and i == 0:
                self._apply("consent-recorded-late")
            recorded = ctx.at(recorded_day, rng.randint(9 * 3600, 16 * 3600))
            consent: Resource = {
                "resourceType": "Consent",
                "id": self._id("consent"),
                "status": spec.status,
                "scope": _concept(CONSENT_SCOPE_CS, "treatment", "Treatment"),
                "category": [],
                "patient": self.patient_ref,
                "dateTime": _local(recorded),
                "performer": [self.patient_ref],
                "policyRule": _concept(V3_ACT_CODE, "OPTIN", "opt-in"),
            }
            program = _concept(ctx.urls.care_program_cs, spec.program, f"{spec.program.upper()} program")
            provision: Resource = {}
            if spec.provision_type:
                provision["type"] = spec.provision_type
            else:
                self._apply("consent-provision-type-absent")
            period: dict[str, str] = {}
            if spec.start_in_provision:
                period["start"] = spec.start.isoformat()
            else:
                # Only Consent.dateTime tells when consent was given: make it the start day itself.
                consent["dateTime"] = _local(ctx.at(spec.start, rng.randint(0, 3600)))
                self._apply("consent-start-from-datetime")
            if spec.end is not None:
                if spec.end_time is None:
                    period["end"] = spec.end.isoformat()
                    self._apply("consent-end-date-only")
                else:
                    period["end"] = _local(ctx.at(spec.end, spec.end_time))
                    self._apply("consent-end-datetime")
            if period:
                provision["period"] = period
            if self._has("consent-via-provision-code") and spec.program == "rpm":
                consent["category"].append(_concept(LOINC, *CONSENT_CATEGORY_LOINC))
                provision["code"] = [program]
                self._apply("consent-via-provision-code")
            else:
                consent["category"].append(program)
            if rng.random() < 0.6:
                consent["sourceAttachment"] = {
                    "contentType": "application/pdf",
                    "title": "Signed RPM enrollment consent (synthetic)",
                    "creation": _local(recorded),
                }
                self._apply("consent-written")
            else:
                self._apply("consent-verbal")
            if provision:
                consent["provision"] = provision
            self.out.append(consent)
        for case in ("consent-inactive-no-end", "consent-deny", "consent-not-rpm", "consent-touching"):
            if self._has(case):
                self._apply(case)
        if any(s.status == "inactive" and s.end is not None for s in specs):
            self._apply("consent-revoked")

    # people and things

    def _patient(self, tags: list[str]) -> Resource:
        rng = self.rng
        birth = date(1930, 1, 1) + timedelta(days=rng.randint(0, 45 * 365))
        gender = rng.choices(("female", "male", "other", "unknown"), weights=(47, 47, 3, 3))[0]
        return {
            "resourceType": "Patient",
            "id": self.pid,
            "meta": {"tag": [_coding(self.ctx.scenario, tag) for tag in tags]},
            "identifier": [{"system": MRN_SYSTEM, "value": f"SYN{self.index:07d}"}],
            "active": True,
            "name": [{"use": "official", "family": rng.choice(_FAMILY), "given": [rng.choice(_GIVEN)]}],
            "telecom": [{"system": "phone", "value": f"555-01{self.index % 100:02d}", "use": "home"}],
            "gender": gender,
            "birthDate": birth.isoformat(),
        }

    def _related_person(self) -> None:
        no_relationship = self._has("caregiver-no-relationship")
        if not (self._has("caregiver") or no_relationship):
            return
        rid = self._id("rp")
        person: Resource = {
            "resourceType": "RelatedPerson",
            "id": rid,
            "active": True,
            "patient": self.patient_ref,
            "name": [{"family": self.rng.choice(_FAMILY), "given": [self.rng.choice(_GIVEN)]}],
            "telecom": [{"system": "phone", "value": f"555-01{(self.index + 50) % 100:02d}"}],
        }
        if no_relationship:
            self._apply("caregiver-no-relationship")
        else:
            code, display = self.rng.choice(_CAREGIVER_ROLES)
            person["relationship"] = [_concept(V3_ROLE_CODE, code, display)]
            self.caregiver_has_relationship = True
            self._apply("caregiver")
        self.caregiver = rid
        self.out.append(person)

    def _devices(self) -> list[_Device]:
        rng = self.rng
        first = rng.choices(("bp", "scale", "oximeter"), weights=(60, 25, 15))[0]
        kinds = [first]
        if rng.random() < 0.55:
            kinds.append(rng.choice([k for k in ("bp", "scale", "oximeter") if k != first]))
        devices = [
            _Device(self._id("dev"), kind, f"SYN-{kind.upper()}-{self.index:06d}-{i}")
            for i, kind in enumerate(kinds)
        ]
        if self._has("device-entered-in-error"):
            devices.append(_Device(self._id("dev"), first, f"SYN-ERR-{self.index:06d}", "entered-in-error"))
            self._apply("device-entered-in-error")
        if len(kinds) > 1:
            self._apply("two-device-types")
        for device in devices:
            self.out.append(self._device_resource(device))
        return devices

    def _device_resource(self, device: _Device) -> Resource:
        if device.kind == "bp":
            codings = [
                _coding(
                    SNOMED,
                    "466086009",
                    "Automatic-inflation electronic sphygmomanometer, portable, arm/wrist",
                ),
                _coding(MDC, "528391", "MDC_DEV_SPEC_PROFILE_BP"),
            ]
            name = "Home blood pressure cuff"
        elif device.kind == "scale":
            codings = [_coding(MDC, "528399", "MDC_DEV_SPEC_PROFILE_SCALE")]
            name = "Connected weight scale"
        else:
            codings = [_coding(MDC, "528388", "MDC_DEV_SPEC_PROFILE_PULS_OXIM")]
            name = "Fingertip pulse oximeter"
        return {
            "resourceType": "Device",
            "id": device.id,
            "identifier": [{"system": DEVICE_SERIAL_SYSTEM, "value": device.serial}],
            "status": device.status,
            "manufacturer": "Acme Synthetic Devices (fictional)",
            "deviceName": [{"name": name, "type": "user-friendly-name"}],
            "modelNumber": f"SYN-{device.kind.upper()}-100",
            "serialNumber": device.serial,
            "type": {"coding": codings, "text": name},
            "patient": self.patient_ref,
        }

    def _setup_billed_before(self, enrollment: str, consents: list[_ConsentSpec]) -> bool:
        """Whether an earlier 99453 was billed: most long-enrolled patients (one in 7 has none)."""
        long_enrolled = enrollment not in ("recent", "mid-month") and consents[0].start < self.ctx.prev_first
        return long_enrolled and self.index % 7 != 6

    def _charge_items(self, enrollment: str, consents: list[_ConsentSpec]) -> None:
        rng, ctx = self.rng, self.ctx
        error = self._has("prior-99453-entered-in-error")
        if self._setup_billed_before(enrollment, consents) or error:
            anchor = consents[0].start + timedelta(days=rng.randint(1, 5))
            status = "entered-in-error" if error else "billed"
            self._apply("prior-99453-entered-in-error" if error else "prior-99453")
            self._charge_item(
                "99453",
                "Remote monitoring set-up and patient education",
                status,
                anchor,
                anchor + timedelta(days=29),
                key=True,
            )
        if self._has("rtm-overlap"):
            start = ctx.first - timedelta(days=12)
            self._charge_item(
                "98976",
                "Remote therapeutic monitoring device supply, respiratory",
                "billed",
                start,
                start + timedelta(days=29),
            )
            self._apply("rtm-overlap")
        if self._has("rtm-no-occurrence"):
            self._charge_item(
                "98977",
                "Remote therapeutic monitoring device supply, musculoskeletal",
                "billable",
                None,
                None,
            )
            self._apply("rtm-no-occurrence")

    def _charge_item(
        self, code: str, display: str, status: str, start: date | None, end: date | None, key: bool = False
    ) -> None:
        item: Resource = {"resourceType": "ChargeItem", "id": self._id("charge")}
        if key and start is not None:
            value = f"{self.pid}|{code}|{start.isoformat()}"
            item["identifier"] = [{"system": self.ctx.urls.charge_key_system, "value": value}]
        item.update(
            {
                "status": status,
                "code": _concept(CPT_SYSTEM, code, display),
                "subject": self.patient_ref,
            }
        )
        if start is not None and end is not None:
            item["occurrencePeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
        entered = self.ctx.at((end or self.ctx.prev_first) + timedelta(days=2), 10 * 3600)
        item["performer"] = [{"actor": _ref("Practitioner", PHYSICIAN)}]
        item["quantity"] = {"value": 1}
        item["enteredDate"] = _local(entered)
        self.out.append(item)

    # readings

    def _reading_range(self, enrollment: str, consents: list[_ConsentSpec]) -> tuple[date, date]:
        rng, ctx = self.rng, self.ctx
        start = consents[0].start
        if enrollment in ("recent", "mid-month"):
            if self._has("pre-consent-readings"):
                start -= timedelta(days=rng.randint(1, 2))
                self._apply("pre-consent-readings")
        elif self._setup_billed_before(enrollment, consents):  # the export starts early in the previous month
            start = max(start, ctx.prev_first + timedelta(days=rng.randint(0, 6)))
        else:
            # Long enrolled, no 99453 on file, data from before the previous month: the episode's first window
            # (and so its 99453) belongs to an earlier month, which a run for this month must not bill.
            start = max(start, ctx.prev_first - timedelta(days=rng.randint(10, 20)))
            self._apply("setup-window-in-earlier-month")
        end = ctx.last
        if enrollment == "revoked" and consents[0].end is not None:
            end = min(ctx.last, consents[0].end + timedelta(days=rng.randint(0, 4)))
        return start, end

    def _data_days(self, adherence: str, start: date, end: date, forced: set[date]) -> list[date]:
        rng, ctx = self.rng, self.ctx
        in_month = _days(max(start, ctx.first), end)
        wanted = {"0": 0, "1": 1, "2-15": rng.randint(2, 15), "16-30": rng.randint(16, 30)}[adherence]
        chosen = set(rng.sample(in_month, min(wanted, len(in_month)))) if in_month else set()
        rate = {"0": 0.4, "1": 0.3, "2-15": 0.45, "16-30": 0.85}[adherence]
        prev = [d for d in _days(start, ctx.prev_last) if rng.random() < rate]
        chosen.update(forced)
        return sorted(chosen.union(prev))

    def _readings(self, devices: list[_Device], days: list[date], forced: set[date]) -> int:
        """Write the device readings; return the number of local dates in the month with a reading that
        would qualify apart from consent (own active device, usable status, no other program)."""
        rng, ctx = self.rng, self.ctx
        usable = [d for d in devices if d.status == "active"]
        primary, secondary = usable[0], (usable[1] if len(usable) > 1 else None)
        twice = rng.random() < 0.75
        utc_clock = self._has("utc-clock")
        if utc_clock:
            self._apply("utc-clock")
        self.base = (
            rng.randint(118, 165),
            rng.randint(70, 98),
            round(rng.uniform(55, 120), 1),
            rng.randint(90, 98),
        )
        made: list[tuple[datetime, Resource]] = []
        for day in days:
            plan = [(primary, 6), *([(primary, 18)] if twice and primary.kind != "scale" else [])]
            if secondary and rng.random() < 0.8:
                plan.append((secondary, 7))
            for device, hour in plan:
                end_hour = 24 if hour >= 18 else hour + 4
                moment = ctx.at(day, rng.randint(hour * 3600, end_hour * 3600 - 600))
                zulu = utc_clock or (hour >= 18 and moment.hour >= 20 and rng.random() < 0.1)
                made.append((moment, self._reading(device, moment, zulu=zulu)))
        self._edge_readings(primary, made, forced)
        in_month = sorted({m.date() for m, _ in made if ctx.first <= m.date() <= ctx.last})
        self._odd_readings(devices, made, in_month)
        self.out.extend(resource for _, resource in made)
        usable_ids = {f"Device/{d.id}" for d in usable}
        return len(
            {
                m.date()
                for m, r in made
                if ctx.first <= m.date() <= ctx.last
                and r.get("device", {}).get("reference") in usable_ids
                and r["status"] != "entered-in-error"
                and "extension" not in r
            }
        )

    def _edge_readings(
        self, primary: _Device, made: list[tuple[datetime, Resource]], forced: set[date]
    ) -> None:
        rng, ctx = self.rng, self.ctx
        if self._has("reading-last-day-late") and ctx.last in forced:
            moment = ctx.at(ctx.last, 23 * 3600 + rng.randint(50 * 60, 59 * 60 + 59))
            made.append((moment, self._reading(primary, moment)))
            self._apply("reading-last-day-late")
        if self._has("reading-utc-month-start") and ctx.first in forced:
            moment = ctx.at(ctx.first, rng.randint(60, 540))  # 00:01-00:09 local: the UTC date is earlier
            made.append((moment, self._reading(primary, moment, zulu=True)))
            self._apply("reading-utc-month-start")
        if any(
            r.get("effectiveDateTime", "").endswith("Z") and m.date() != m.astimezone(UTC).date()
            for m, r in made
        ):
            self._apply("reading-utc-date-differs")

    def _odd_readings(
        self, devices: list[_Device], made: list[tuple[datetime, Resource]], data_days: list[date]
    ) -> None:
        """Readings that test the selection rules: re-sent copies, patient-reported, other program, a device
        that is not the patient's RPM device, and the other effective[x] forms (on existing data days)."""
        rng, ctx = self.rng, self.ctx
        primary = devices[0]
        month_day = ctx.first + timedelta(days=rng.randint(2, 25))
        if self._has("duplicate-readings") and made:
            for moment, original in rng.sample(made, min(len(made), rng.randint(1, 3))):
                copy = json.loads(json.dumps(original))  # an independent copy: no shared nested dicts
                copy["id"] = self._id("obs")
                if rng.random() < 0.5:  # re-sent later, stamped by a gateway clock in UTC
                    later = _plus(moment, rng.randint(20, 120))
                    copy["effectiveDateTime"] = _zulu(later)
                made.append((moment, copy))
            self._apply("duplicate-readings")
        if self._has("patient-reported-readings"):
            for _ in range(rng.randint(1, 3)):
                moment = ctx.at(month_day, rng.randint(8 * 3600, 20 * 3600))
                reading = self._reading(primary, moment, identifier=False)
                del reading["device"]
                reading["performer"] = [self.patient_ref]
                made.append((moment, reading))
            self._apply("patient-reported-readings")
        if self._has("rtm-reading"):
            moment = ctx.at(month_day, 7 * 3600 + rng.randint(0, 3600))
            reading = self._reading(primary, moment)
            reading["extension"] = [self._program("rtm")]
            made.append((moment, reading))
            self._apply("rtm-reading")
        for device in devices:
            if device.status == "entered-in-error":
                for day in (month_day, month_day + timedelta(days=1)):
                    moment = ctx.at(day, 8 * 3600)
                    made.append((moment, self._reading(device, moment)))
        if self._has("reading-other-patients-device") and self.index > 0:
            other = f"pat-{self.index - 1:0{len(self.pid) - 4}d}-dev-1"
            moment = ctx.at(month_day, 9 * 3600)
            reading = self._reading(primary, moment)
            reading["device"] = _ref("Device", other)
            made.append((moment, reading))
            self._apply("reading-other-patients-device")
        for case, key in (
            ("reading-effective-instant", "effectiveInstant"),
            ("reading-effective-period", ""),
        ):
            if self._has(case) and data_days:
                moment = ctx.at(rng.choice(data_days), 12 * 3600)
                reading = self._reading(primary, moment)
                stamp = reading.pop("effectiveDateTime")
                if key:
                    reading[key] = stamp
                else:
                    reading["effectivePeriod"] = {"start": stamp, "end": _local(_plus(moment, 60))}
                made.append((moment, reading))
                self._apply(case)

    def _reading(
        self, device: _Device, moment: datetime, zulu: bool = False, identifier: bool = True
    ) -> Resource:
        rng = self.rng
        rid = self._id("obs")
        status = rng.choices(
            ("final", "amended", "corrected", "preliminary", "entered-in-error"), weights=(95, 2, 1, 1, 1)
        )[0]
        reading: Resource = {"resourceType": "Observation", "id": rid}
        if identifier:
            reading["identifier"] = [
                {"system": READING_ID_SYSTEM, "value": f"{device.serial}-{rid.rsplit('-', 1)[1]}"}
            ]
        reading["status"] = status
        reading["category"] = [_concept(OBSERVATION_CATEGORY_CS, "vital-signs", "Vital Signs")]
        systolic, diastolic, weight, spo2 = self.base
        if device.kind == "bp":
            reading["code"] = _concept(LOINC, "85354-9", "Blood pressure panel with all children optional")
        elif device.kind == "scale":
            reading["code"] = _concept(LOINC, "29463-7", "Body weight")
        else:
            reading["code"] = {
                "coding": [
                    _coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood"),
                    _coding(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
                ]
            }
        reading["subject"] = self.patient_ref
        reading["effectiveDateTime"] = _zulu(moment) if zulu else _local(moment)
        reading["device"] = _ref("Device", device.id)
        if device.kind == "bp":
            reading["component"] = [
                {
                    "code": _concept(LOINC, "8480-6", "Systolic blood pressure"),
                    "valueQuantity": _qty(systolic + rng.randint(-12, 14), "mmHg", "mm[Hg]"),
                },
                {
                    "code": _concept(LOINC, "8462-4", "Diastolic blood pressure"),
                    "valueQuantity": _qty(diastolic + rng.randint(-8, 9), "mmHg", "mm[Hg]"),
                },
            ]
        elif device.kind == "scale":
            reading["valueQuantity"] = _qty(round(weight + rng.uniform(-1.2, 1.2), 1), "kg", "kg")
        else:
            reading["valueQuantity"] = _qty(min(100, spo2 + rng.randint(-4, 2)), "%", "%")
        return reading

    def _program(self, code: str) -> Resource:
        urls = self.ctx.urls
        return {"url": urls.care_program_ext, "valueCoding": _coding(urls.care_program_cs, code)}

    # management activities

    def _management_seconds(self) -> int:
        low, high, edge = _MINUTES_CYCLE[self.index % len(_MINUTES_CYCLE)]
        if (self.index // len(_MINUTES_CYCLE)) % 2 == 0:
            return edge
        return self.rng.randint(low, high)

    def _plan(self, total: int) -> list[tuple[str, int]]:
        """Split `total` seconds into counted activities; the first is interactive unless unreachable."""
        rng = self.rng
        interactive = not self._has("unreachable")
        queue: list[str] = []
        options = ["time-entry", "time-entry", "staff-message", "team-message"]
        if interactive:
            first = "call"
            if self._has("ai-call"):
                first = "ai-call"
            elif self.caregiver_has_relationship and rng.random() < 0.5:
                first = "caregiver-call"
            queue.append(first)
            options += ["call", "call"] + (["caregiver-call"] if self.caregiver else [])
        if self._has("chat-session"):
            queue.append("chat")
        if self._has("care-team-message"):
            queue.append("team-message")
        parts: list[tuple[str, int]] = []
        remaining = total
        while remaining > 0:
            kind = queue.pop(0) if queue else rng.choice(options)
            low, high = _KIND_SECONDS[kind]
            seconds = min(remaining, rng.randint(low, high))
            if kind == "time-entry" and seconds >= 120:  # staff log time in whole minutes
                seconds -= seconds % 60
            if 0 < remaining - seconds < 60:  # too short to be believable on its own: fold it in here
                seconds = remaining
            parts.append((kind, seconds))
            remaining -= seconds
        return parts

    def _activities(self, total: int, safe: list[date], enrollment: str, consents: list[_ConsentSpec]) -> int:
        """Write the counted activities (never overlapping, all on days fully in consent) and the extras;
        return the seconds actually placed (the total, unless the consent days ran out of slots)."""
        rng, ctx = self.rng, self.ctx
        parts = self._plan(total)
        slots = rng.sample([(d, h) for d in safe for h in range(9, 17)], min(len(parts), len(safe) * 8))
        slots.sort()
        placed: list[_Activity] = []
        for (kind, seconds), (day, hour) in zip(parts, slots, strict=False):
            start = ctx.at(day, hour * 3600 + rng.randint(0, 4 * 60 + 59))
            placed.append(_Activity(kind, start, seconds))
        if self._has("month-end-crossing") and placed and placed[-1].seconds >= 120 and ctx.last in safe:
            # Starts on the last evening and ends after midnight: all of it belongs to this month.
            last = placed[-1]
            placed[-1] = _Activity(last.kind, ctx.at(ctx.last, 86400 - last.seconds // 2), last.seconds)
            self._apply("month-end-crossing")
        host: tuple[datetime, datetime] | None = None
        escalation_pending = self._has("html-note")
        for activity in placed:
            period = self._render(activity, escalation_pending)
            if activity.kind in _CALL_KINDS:
                escalation_pending = False
            if period and host is None and activity.kind in _CALL_KINDS and activity.seconds >= 240:
                host = period
        if placed and any(a.kind in _CALL_KINDS for a in placed):
            self._apply("interactive-contact")
        self._extras(safe, enrollment, consents, host, escalation_pending)
        return sum(a.seconds for a in placed)

    def _render(self, activity: _Activity, hostile_note: bool) -> tuple[datetime, datetime] | None:
        """Write one counted activity; return its explicit interval when it has one."""
        kind, start, seconds = activity.kind, activity.start, activity.seconds
        end = _plus(start, seconds)
        rng = self.rng
        if kind == "time-entry":
            style = rng.choices(("period", "quantity", "both"), weights=(6, 3, 1))[0]
            if self._has("time-entry-seconds") and seconds % 60:
                style = "quantity"
                self._apply("time-entry-seconds")
            self._time_entry(
                rng.choice(("data-review", "care-plan", "care-coordination", "documentation")),
                start,
                seconds,
                style,
            )
            return (start, end) if style != "quantity" else None
        if kind == "chat":
            self._chat(start, seconds)
            return None
        if kind in ("staff-message", "team-message"):
            sender = _ref("Practitioner", self.nurse)
            if kind == "team-message":
                other = NURSES[(NURSES.index(self.nurse) + 1) % len(NURSES)]
                recipients, medium = [_ref("Practitioner", rng.choice((other, PHYSICIAN)))], "ONLINEWRIT"
                self._apply("care-team-message")
            else:
                recipients, medium = [self.patient_ref], rng.choice(("ONLINEWRIT", "EMAILWRIT"))
                self._apply(f"staff-message-{medium.lower()}")
            self._communication(
                sender,
                recipients,
                start,
                medium=medium,
                period=(start, end),
                content=["care-plan"],
                text=rng.choice(_MESSAGE_TEXTS),
            )
            return (start, end)
        return self._call(kind, start, seconds, hostile_note)

    def _call(
        self, kind: str, start: datetime, seconds: int, hostile_note: bool
    ) -> tuple[datetime, datetime] | None:
        rng = self.rng
        end = _plus(start, seconds)
        staff = _ref("Practitioner", PHYSICIAN if rng.random() < 0.15 else self.nurse)
        if kind == "ai-call":
            sender, recipients = _ref("Device", AI_DEVICE_ID), [self.patient_ref]
            self._apply("ai-call")
        elif kind == "caregiver-call":
            sender, recipients = staff, [_ref("RelatedPerson", self.caregiver or "")]
            self._apply("caregiver-call")
        elif rng.random() < 0.2:
            sender, recipients = self.patient_ref, [staff]
            self._apply("patient-initiated-call")
        else:
            sender, recipients = staff, [self.patient_ref]
        medium = "VIDEOCONF" if rng.random() < 0.3 else "PHONE"
        self._apply(f"call-{medium.lower()}")
        content = rng.sample(
            ("physiologic-data", "symptoms", "medication-adherence", "care-plan"), rng.randint(1, 2)
        )
        note = (
            _HOSTILE_NOTE
            if hostile_note
            else (rng.choice(_ESCALATION_TEXTS) if rng.random() < 0.15 else None)
        )
        if hostile_note:
            self._apply("html-note")
        elif note:
            self._apply("escalation-note")
        style = rng.choices(
            ("ext", "enc-period", "enc-start-length", "enc-length", "enc-both"), weights=(55, 15, 10, 15, 5)
        )[0]
        period: tuple[datetime, datetime] | None = (start, end)
        encounter = None
        if style == "ext":
            self._apply("duration-activity-period")
        else:
            encounter = self._encounter(start, end, seconds, style)
            if style == "enc-length":
                period = None
        self._communication(
            sender,
            recipients,
            start,
            medium=medium,
            content=content,
            period=(start, end) if style == "ext" else None,
            encounter=encounter,
            text=_HOSTILE_NOTE if hostile_note else rng.choice(_CALL_TEXTS),
            note=note,
            content_in_reason=rng.random() < 0.3,
        )
        return period

    def _encounter(self, start: datetime, end: datetime, seconds: int, style: str) -> str:
        eid = self._id("enc")
        encounter: Resource = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": _coding(V3_ACT_CODE, "VR", "virtual"),
            "subject": self.patient_ref,
            "participant": [{"individual": _ref("Practitioner", self.nurse)}],
        }
        if style in ("enc-period", "enc-both"):
            encounter["period"] = {"start": _local(start), "end": _local(end)}
        elif style == "enc-start-length":
            encounter["period"] = {"start": _local(start)}
        if style in ("enc-start-length", "enc-length", "enc-both"):
            encounter["length"] = _duration(seconds)
        self._apply(f"duration-encounter-{style[4:]}")
        self.out.append(encounter)
        return eid

    def _chat(self, start: datetime, seconds: int) -> None:
        """A portal chat: staff, patient, staff, each message stamped with its own activity-period.

        Under the default policy only the staff messages add minutes (they are `seconds` in total); under a
        live-chat policy the whole alternating session is interactive.
        """
        rng = self.rng
        staff = _ref("Practitioner", self.nurse)
        first = seconds // 2
        second = seconds - first
        moment = start
        for sender, recipients, length, text in (
            (staff, [self.patient_ref], first, "Your readings were high this morning. How are you feeling?"),
            (self.patient_ref, [staff], rng.randint(40, 90), "A bit of a headache, otherwise fine."),
            (
                staff,
                [self.patient_ref],
                second,
                "Please rest and recheck in one hour; call us if it gets worse.",
            ),
        ):
            end = _plus(moment, length)
            self._communication(
                sender,
                recipients,
                moment,
                medium="ONLINEWRIT",
                period=(moment, end),
                content=["symptoms"],
                text=text,
            )
            moment = _plus(end, rng.randint(10, 30))
        self._apply("chat-session")

    def _time_entry(
        self,
        code: str,
        start: datetime,
        seconds: int,
        style: str,
        *,
        performer: bool = True,
        status: str | None = None,
        program: str | None = None,
    ) -> None:
        rng = self.rng
        entry: Resource = {"resourceType": "Observation", "id": self._id("obs")}
        if program:
            entry["extension"] = [self._program(program)]
        entry["status"] = status or rng.choices(("final", "amended", "preliminary"), weights=(90, 5, 5))[0]
        display = code.replace("-", " ").capitalize()
        entry["code"] = _concept(self.ctx.urls.rpm_activity_cs, code, display)
        entry["subject"] = self.patient_ref
        if style in ("period", "both"):
            entry["effectivePeriod"] = {"start": _local(start), "end": _local(_plus(start, seconds))}
        else:
            entry["effectiveDateTime"] = _local(start)
        if style in ("quantity", "both"):
            entry["valueQuantity"] = _duration(seconds)
        if performer:
            entry["performer"] = [_ref("Practitioner", self.nurse)]
        self._apply(f"time-entry-{style}")
        self.out.append(entry)

    def _communication(
        self,
        sender: dict[str, str] | None,
        recipients: list[dict[str, str]],
        sent: datetime,
        *,
        medium: str | None,
        status: str = "completed",
        period: tuple[datetime, datetime] | None = None,
        encounter: str | None = None,
        content: list[str] | None = None,
        text: str | None = None,
        note: str | None = None,
        category: str | None = None,
        program: str | None = None,
        content_in_reason: bool = False,
    ) -> None:
        urls = self.ctx.urls
        comm: Resource = {"resourceType": "Communication", "id": self._id("comm")}
        extensions = []
        if period:
            extensions.append(
                {
                    "url": urls.activity_period_ext,
                    "valuePeriod": {"start": _local(period[0]), "end": _local(period[1])},
                }
            )
        if program:
            extensions.append(self._program(program))
        if extensions:
            comm["extension"] = extensions
        comm["status"] = status
        if status == "not-done":
            comm["statusReason"] = _concept(
                COMMUNICATION_NOT_DONE_CS, "recipient-unavailable", "Recipient Unavailable"
            )
        if category:
            comm["category"] = [_concept(COMMUNICATION_CATEGORY_CS, category)]
        if medium:
            comm["medium"] = [_concept(PARTICIPATION_MODE_CS, medium)]
        comm["subject"] = self.patient_ref
        if content:
            codings = [_coding(urls.rpm_content_cs, c) for c in content]
            if content_in_reason:
                comm["reasonCode"] = [{"coding": codings}]
            else:
                comm["topic"] = {"coding": codings}
        if encounter:
            comm["encounter"] = _ref("Encounter", encounter)
        comm["sent"] = _local(sent)
        if recipients:
            comm["recipient"] = [dict(r) for r in recipients]
        if sender:
            comm["sender"] = dict(sender)
        if text:
            comm["payload"] = [{"contentString": text}]
        if note:
            comm["note"] = [{"text": note}]
        self.out.append(comm)

    # activities that never add minutes this month (or whose overlap leaves the total unchanged)

    def _extras(
        self,
        safe: list[date],
        enrollment: str,
        consents: list[_ConsentSpec],
        host: tuple[datetime, datetime] | None,
        hostile_note: bool,
    ) -> None:
        rng, ctx = self.rng, self.ctx
        days = ctx.month_days()
        nurse, patient = _ref("Practitioner", self.nurse), self.patient_ref

        def daytime(day: date | None = None) -> datetime:
            return ctx.at(day or rng.choice(days), rng.randint(9 * 3600, 17 * 3600))

        attempts = rng.randint(0, 2) + (rng.randint(1, 3) if self._has("unreachable") else 0)
        attempts = max(attempts, 1 if hostile_note else 0)
        for i in range(attempts):
            voicemail = rng.random() < 0.5
            sent = daytime()
            self._communication(
                nurse,
                [patient],
                sent,
                medium="PHONE",
                status="not-done",
                content=["physiologic-data"] if rng.random() < 0.3 else None,
                period=(sent, _plus(sent, 60)) if rng.random() < 0.3 else None,
                note=_HOSTILE_NOTE
                if hostile_note and i == 0
                else ("Left voicemail asking for a call back." if voicemail else "No answer."),
            )
            self._apply("attempt-voicemail" if voicemail else "attempt-no-answer")
        if hostile_note:
            self._apply("html-note")
        if self._has("unreachable"):
            self._apply("unreachable")
        for _ in range(rng.randint(0, 4)):
            category = rng.choice(("alert", "notification", "reminder"))
            to_staff = category == "alert"
            self._communication(
                _ref("Device", AI_DEVICE_ID),
                [nurse if to_staff else patient],
                daytime(),
                medium="ONLINEWRIT" if rng.random() < 0.5 else None,
                category=category,
                content=["physiologic-data"],
                text="Automated alert: reading above threshold."
                if to_staff
                else "Reminder: please take today's reading.",
            )
            self._apply(f"automated-{category}")
        if rng.random() < 0.6:
            sent = daytime()
            medium = rng.choice(("ONLINEWRIT", "EMAILWRIT"))
            self._communication(
                patient,
                [nurse],
                sent,
                medium=medium,
                period=(sent, _plus(sent, 120)),
                content=["symptoms"],
                text="My ankles are a little swollen today.",
            )
            self._apply("patient-message")
        self._extra_calls(daytime, nurse, patient, safe, enrollment, consents)
        self._extra_time_entries(daytime, host)

    def _extra_calls(
        self,
        daytime: Callable[..., datetime],
        nurse: dict[str, str],
        patient: dict[str, str],
        safe: list[date],
        enrollment: str,
        consents: list[_ConsentSpec],
    ) -> None:
        rng, ctx = self.rng, self.ctx

        def call(sent: datetime, minutes: int, case: str, **kw: Any) -> None:
            kw.setdefault("content", ["physiologic-data"])
            self._communication(
                nurse,
                [patient],
                sent,
                medium=kw.pop("medium", "PHONE"),
                period=(sent, _plus(sent, minutes * 60)) if minutes else None,
                text=rng.choice(_CALL_TEXTS),
                **kw,
            )
            self._apply(case)

        if self._has("face-visit"):
            self._communication(
                _ref("Practitioner", PHYSICIAN),
                [patient],
                daytime(),
                medium="FACE",
                content=["care-plan"],
                text="Clinic visit: reviewed RPM data in person.",
            )
            self._apply("face-visit")
        if self._has("no-content-call"):
            call(daytime(), rng.randint(3, 8), "no-content-call", content=[])
        if self._has("ccm-call"):
            call(daytime(), rng.randint(10, 20), "ccm-call", program="ccm")
        if self._has("entered-in-error-communication"):
            call(daytime(), rng.randint(5, 15), "entered-in-error-communication", status="entered-in-error")
        if self._has("interactive-no-duration") and not self._has("unreachable") and safe:
            call(daytime(rng.choice(safe)), 0, "interactive-no-duration")
        if self._has("previous-month-crossing") and self._safely_in_force(ctx.prev_last):
            call(ctx.at(ctx.prev_last, 23 * 3600 + 45 * 60), 30, "previous-month-crossing")
        start = consents[-1].start
        if enrollment == "mid-month":
            call(daytime(start - timedelta(days=1)), 15, "call-before-consent", content=["care-plan"])
        if enrollment in ("revoked", "gap") and consents[0].end is not None:
            after = consents[0].end + timedelta(days=1)
            if after <= ctx.last and not self._safely_in_force(after):
                call(daytime(after), 10, "call-outside-consent")

    def _extra_time_entries(
        self, daytime: Callable[..., datetime], host: tuple[datetime, datetime] | None
    ) -> None:
        rng = self.rng
        if self._has("ccm-time-entry"):
            self._time_entry("care-coordination", daytime(), 15 * 60, "period", program="ccm")
            self._apply("ccm-time-entry")
        if self._has("cancelled-time-entry"):
            self._time_entry("data-review", daytime(), 10 * 60, "period", status="cancelled")
            self._apply("cancelled-time-entry")
        if host is None:
            return
        # Inside a counted call: merged with it, so the patient's total stays the same either way.
        start = _plus(host[0], 60)
        inner = max(60, int((host[1] - host[0]).total_seconds()) - 120)
        if self._has("overlapping-time-entry"):
            self._time_entry("documentation", start, rng.randint(60, inner), "period")
            self._apply("overlapping-time-entry")
        if self._has("time-entry-no-performer"):
            self._time_entry("data-review", start, rng.randint(60, inner), "period", performer=False)
            self._apply("time-entry-no-performer")


def _band_of_days(days: int) -> str:
    if days >= 16:
        return "16-30"
    if days >= 2:
        return "2-15"
    return str(days)
