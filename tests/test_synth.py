"""Synthetic population generator (`smart_app.synth`) and `rpm-billing synth`.

The coverage table has one row per case the contract's rules need in the data (sections 1-3). The minute
and data-day checks below re-read the generated FHIR with a plain reading of the contract's default policy
(independent of the generator's internals) and compare with what each Patient's scenario tag claims.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_mapping.canon import (
    CANON,
    CARE_PROGRAM_CS,
    COMMUNICATION_CATEGORY_CS,
    CPT_SYSTEM,
    RPM_ACTIVITY_CODES,
    RPM_ACTIVITY_CS,
    RPM_CONTENT_CS,
    UCUM,
)
from smart_app import synth
from smart_app.cli import main
from smart_app.commands import synth as synth_command
from smart_app.errors import ExitCode

MONTH = "2026-03"
TZ_NAME = "America/New_York"
N = 60

Resource = dict[str, Any]


# --- reading the population --------------------------------------------------------------------------


@dataclass
class Pop:
    """A generated population, indexed, with the month and zone it was built for."""

    resources: list[Resource]
    month: str = MONTH
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo(TZ_NAME))
    by_key: dict[str, Resource] = field(default_factory=dict)
    by_type: dict[str, list[Resource]] = field(default_factory=lambda: defaultdict(list))
    by_patient: dict[str, list[Resource]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.first = date.fromisoformat(f"{self.month}-01")
        self.last = (self.first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        for r in self.resources:
            self.by_key[f"{r['resourceType']}/{r['id']}"] = r
            self.by_type[r["resourceType"]].append(r)
            pid = patient_of(r)
            if pid:
                self.by_patient[pid].append(r)

    def of(self, rtype: str) -> list[Resource]:
        return self.by_type.get(rtype, [])

    def tags(self, pid: str) -> list[str]:
        return [t["code"] for t in self.by_key[f"Patient/{pid}"]["meta"]["tag"]]

    def time(self, text: str) -> datetime:
        """A FHIR date or dateTime; a date is the start of that local day."""
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), self.tz)
        return datetime.fromisoformat(text)

    def day(self, text: str) -> date:
        return self.time(text).astimezone(self.tz).date()

    def in_month(self, text: str) -> bool:
        return self.first <= self.day(text) <= self.last


def patient_of(r: Resource) -> str | None:
    if r["resourceType"] == "Patient":
        return str(r["id"])
    for key in ("subject", "patient"):
        ref = r.get(key, {}).get("reference", "")
        if ref.startswith("Patient/"):
            return str(ref.split("/", 1)[1])
    return None


def codes(concept: dict[str, Any] | None, system: str) -> set[str]:
    return {c["code"] for c in (concept or {}).get("coding", []) if c.get("system") == system}


def concept_codes(concepts: list[dict[str, Any]] | None, system: str) -> set[str]:
    return set().union(*(codes(c, system) for c in concepts or [])) if concepts else set()


def program(r: Resource) -> str | None:
    for ext in r.get("extension", []):
        if ext["url"].endswith("/StructureDefinition/care-program"):
            return str(ext["valueCoding"]["code"])
    return None


def reading_time(obs: Resource) -> str | None:
    return (
        obs.get("effectiveDateTime")
        or obs.get("effectiveInstant")
        or obs.get("effectivePeriod", {}).get("start")
    )


def is_time_entry(obs: Resource) -> bool:
    return bool(codes(obs.get("code"), RPM_ACTIVITY_CS))


def readings(pop: Pop, pid: str) -> list[Resource]:
    return [r for r in pop.by_patient[pid] if r["resourceType"] == "Observation" and not is_time_entry(r)]


def rpm_consent_intervals(pop: Pop, pid: str) -> list[tuple[datetime, datetime | None]]:
    """Section 1, Consent row, read literally."""
    out = []
    for c in (r for r in pop.by_patient[pid] if r["resourceType"] == "Consent"):
        prov = c.get("provision", {})
        period = prov.get("period", {})
        if c["status"] not in ("active", "inactive") or (c["status"] == "inactive" and "end" not in period):
            continue
        if "treatment" not in codes(c["scope"], "http://terminology.hl7.org/CodeSystem/consentscope"):
            continue
        if "rpm" not in concept_codes(c["category"], CARE_PROGRAM_CS) | concept_codes(
            prov.get("code"), CARE_PROGRAM_CS
        ):
            continue
        if prov.get("type", "permit") != "permit":
            continue
        start = pop.time(period.get("start") or c["dateTime"])
        end = None
        if "end" in period:
            end = pop.time(period["end"])
            if len(period["end"]) == 10:  # a date-only end includes that whole local day
                end = datetime.combine(end.date() + timedelta(days=1), time(), pop.tz)
        out.append((start, end))
    return out


def in_consent(intervals: list[tuple[datetime, datetime | None]], moment: datetime) -> bool:
    return any(s <= moment and (e is None or moment < e) for s, e in intervals)


def seconds_of(quantity: dict[str, Any]) -> int:
    factor = {"min": 60, "s": 1, "h": 3600}[quantity["code"]]
    assert quantity["system"] == UCUM
    return round(quantity["value"] * factor)


def party(pop: Pop, pid: str, ref: dict[str, str]) -> str:
    target = pop.by_key.get(ref["reference"], {})
    rtype = ref["reference"].split("/", 1)[0]
    if ref["reference"] == f"Patient/{pid}":
        return "patient"
    if rtype == "RelatedPerson" and target.get("patient", {}).get("reference") == f"Patient/{pid}":
        return "caregiver" if target.get("relationship") else "related"
    if rtype in ("Practitioner", "PractitionerRole"):
        return "staff"
    if rtype == "Device" and "patient" not in target:
        return "ai"
    return "other"


def communication_interval(pop: Pop, comm: Resource) -> tuple[datetime, datetime | None]:
    for ext in comm.get("extension", []):
        if ext["url"].endswith("/StructureDefinition/activity-period"):
            return pop.time(ext["valuePeriod"]["start"]), pop.time(ext["valuePeriod"]["end"])
    if "encounter" in comm:
        enc = pop.by_key[comm["encounter"]["reference"]]
        start = pop.time(enc.get("period", {}).get("start") or comm["sent"])
        if "length" in enc:
            return start, start + timedelta(seconds=seconds_of(enc["length"]))
        if "end" in enc.get("period", {}):
            return start, pop.time(enc["period"]["end"])
    return pop.time(comm["sent"]), None


def activity_interval(pop: Pop, r: Resource) -> tuple[datetime, datetime | None]:
    """Start and end of a Communication or a time entry, by the contract's duration rules."""
    if r["resourceType"] == "Communication":
        return communication_interval(pop, r)
    if "effectivePeriod" in r:
        return pop.time(r["effectivePeriod"]["start"]), pop.time(r["effectivePeriod"]["end"])
    start = pop.time(r["effectiveDateTime"])
    return start, start + timedelta(seconds=seconds_of(r["valueQuantity"])) if "valueQuantity" in r else None


def classify(pop: Pop, pid: str, comm: Resource) -> tuple[bool, bool]:
    """(interactive, adds staff-message minutes) under the default policy; both False if it never counts."""
    if comm["status"] != "completed" or program(comm) not in (None, "rpm"):
        return False, False
    if concept_codes(comm.get("category"), COMMUNICATION_CATEGORY_CS) & {"alert", "notification", "reminder"}:
        return False, False
    content = codes(comm.get("topic"), RPM_CONTENT_CS) | concept_codes(comm.get("reasonCode"), RPM_CONTENT_CS)
    if not content:
        return False, False
    medium = concept_codes(comm.get("medium"), "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode")
    sender = party(pop, pid, comm["sender"]) if "sender" in comm else "other"
    recipients = {party(pop, pid, r) for r in comm.get("recipient", [])}
    sides = [({sender}, recipients), (recipients, {sender})]
    interactive = bool(medium & {"PHONE", "VIDEOCONF"}) and any(
        a & {"patient", "caregiver"} and b & {"staff", "ai"} for a, b in sides
    )
    staff_message = sender == "staff" and "FACE" not in medium
    return interactive, staff_message


def management(pop: Pop, pid: str) -> tuple[int, int]:
    """(merged counted seconds in the month, number of interactive communications) for one patient."""
    consent = rpm_consent_intervals(pop, pid)
    intervals: list[tuple[datetime, datetime]] = []
    interactive_count = 0
    for r in pop.by_patient[pid]:
        if r["resourceType"] == "Communication":
            interactive, staff_message = classify(pop, pid, r)
            if not (interactive or staff_message):
                continue
        elif r["resourceType"] == "Observation" and is_time_entry(r):
            if r["status"] not in ("final", "amended", "corrected", "preliminary") or program(r) not in (
                None,
                "rpm",
            ):
                continue
            interactive = False
        else:
            continue
        start, end = activity_interval(pop, r)
        if not (pop.first <= start.astimezone(pop.tz).date() <= pop.last) or not in_consent(consent, start):
            continue
        interactive_count += interactive
        if end is not None:
            intervals.append((start.astimezone(UTC), end.astimezone(UTC)))
    total = 0
    current: list[datetime] | None = None
    for start, end in sorted(intervals):
        if current and start <= current[1]:
            current[1] = max(current[1], end)
            continue
        if current:
            total += int((current[1] - current[0]).total_seconds())
        current = [start, end]
    if current:
        total += int((current[1] - current[0]).total_seconds())
    return total, interactive_count


def data_days(pop: Pop, pid: str) -> int:
    """Local dates in the month with a reading from the patient's own active device (consent aside)."""
    own = {
        f"Device/{d['id']}"
        for d in pop.by_patient[pid]
        if d["resourceType"] == "Device" and d["status"] != "entered-in-error"
    }
    return len(
        {
            pop.day(reading_time(r) or "")
            for r in readings(pop, pid)
            if r.get("device", {}).get("reference") in own
            and r["status"] != "entered-in-error"
            and program(r) is None
            and pop.in_month(reading_time(r) or "")
        }
    )


def band(seconds: int) -> str:
    minutes = seconds // 60
    for low, name in ((80, "80+"), (60, "60-79"), (40, "40-59"), (20, "20-39"), (10, "10-19")):
        if minutes >= low:
            return name
    return "<10"


@pytest.fixture(scope="module")
def pop() -> Pop:
    return Pop(list(synth.generate(N, MONTH, seed=7, timezone=TZ_NAME)))


# --- determinism, shape, validity ----------------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    a = synth.write_bulk(synth.generate(25, MONTH, seed=3), tmp_path / "a")
    b = synth.write_bulk(synth.generate(25, MONTH, seed=3), tmp_path / "b")
    synth.write_bulk(synth.generate(25, MONTH, seed=4), tmp_path / "c")
    assert a == b
    for name in a:
        assert (tmp_path / "a" / f"{name}.ndjson").read_bytes() == (
            tmp_path / "b" / f"{name}.ndjson"
        ).read_bytes()
    assert (tmp_path / "a" / "Observation.ndjson").read_bytes() != (
        tmp_path / "c" / "Observation.ndjson"
    ).read_bytes()


def test_global_rng_untouched_and_population_is_a_prefix() -> None:
    random.seed(99)
    state = random.getstate()
    small = list(synth.generate(10, MONTH, seed=5))
    assert random.getstate() == state
    large = list(synth.generate(30, MONTH, seed=5))
    assert large[: len(small)] == small


def test_counts_match_files_and_average_size(tmp_path: Path, pop: Pop) -> None:
    counts = synth.write_bulk(pop.resources, tmp_path)
    assert list(counts) == [t for t in synth.RESOURCE_TYPES if t in counts]
    assert sum(counts.values()) == len(pop.resources)
    for rtype, n in counts.items():
        lines = (tmp_path / f"{rtype}.ndjson").read_text(encoding="utf-8").splitlines()
        assert len(lines) == n
        assert all(json.loads(line)["resourceType"] == rtype for line in lines)
    assert counts["Patient"] == N
    assert counts["Practitioner"] >= 4
    per_patient = (sum(counts.values()) - counts["Practitioner"] - 1) / N
    assert 50 <= per_patient <= 90, per_patient


def test_every_resource_validates_as_r4(pop: Pop) -> None:
    for resource in pop.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_ids_unique_and_references_resolve(pop: Pop) -> None:
    assert len(pop.by_key) == len(pop.resources)
    id_re = re.compile(r"[A-Za-z0-9\-.]{1,64}")
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("reference"), str):
                refs.append(node["reference"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for r in pop.resources:
        assert id_re.fullmatch(r["id"]), r["id"]
        walk(r)
    assert refs and all(ref in pop.by_key for ref in refs), [ref for ref in refs if ref not in pop.by_key][:5]


def test_no_nested_objects_shared_between_resources(pop: Pop) -> None:
    seen: dict[int, str] = {}

    def walk(node: Any, owner: str) -> None:
        if isinstance(node, dict | list):
            assert seen.setdefault(id(node), owner) == owner, f"shared object in {owner}"
            for value in node.values() if isinstance(node, dict) else node:
                walk(value, owner)

    for r in pop.resources:
        walk(r, f"{r['resourceType']}/{r['id']}")


def test_every_time_has_an_offset(pop: Pop) -> None:
    timestamp = re.compile(r"^\d{4}-\d\d-\d\dT")
    strings: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and timestamp.match(node):
            strings.append(node)

    walk(pop.resources)
    assert strings
    assert all(re.search(r"(Z|[+-]\d\d:\d\d)$", s) for s in strings)


@pytest.mark.parametrize(
    ("month", "tz"),
    [("2026-01", "America/New_York"), ("2024-02", "Asia/Kolkata"), ("2026-11", "America/Los_Angeles")],
)
def test_other_months_and_zones_keep_the_minute_tags_true(month: str, tz: str) -> None:
    other = Pop(list(synth.generate(26, month, seed=11, timezone=tz)), month, ZoneInfo(tz))
    for r in other.resources[:300]:
        get_fhir_model_class(r["resourceType"]).model_validate(r)
    for patient in other.of("Patient"):
        tag = next(t for t in other.tags(patient["id"]) if t.startswith("management-seconds-"))
        assert management(other, patient["id"])[0] == int(tag.rsplit("-", 1)[1]), patient["id"]


def test_canon_is_configurable() -> None:
    text = json.dumps(list(synth.generate(12, MONTH, seed=1, canon="https://billing.example.org/fhir")))
    assert CANON not in text
    assert "https://billing.example.org/fhir/StructureDefinition/activity-period" in text
    assert "https://billing.example.org/fhir/CodeSystem/care-program" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patients": -1}, "patients"),
        ({"patients": True}, "patients"),
        ({"month": "2026-13"}, "YYYY-MM"),
        ({"month": "March"}, "YYYY-MM"),
        ({"timezone": "Mars/Olympus_Mons"}, "time zone"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_bad_arguments_raise_at_once(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"patients": 3, "month": MONTH, "seed": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        synth.generate(**args)  # no iteration needed: the error comes at the call


def test_write_bulk_rejects_non_resources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resourceType"):
        synth.write_bulk([{"resourceType": "Patient", "id": "a"}, {"id": "x"}], tmp_path)
    with pytest.raises(ValueError, match="resourceType"):
        synth.write_bulk([{"resourceType": "../evil", "id": "x"}], tmp_path)


# --- management minutes and data days ------------------------------------------------------------------


def test_management_seconds_tags_match_the_data(pop: Pop) -> None:
    for patient in pop.of("Patient"):
        pid = patient["id"]
        tag = next(t for t in pop.tags(pid) if t.startswith("management-seconds-"))
        assert management(pop, pid)[0] == int(tag.rsplit("-", 1)[1]), pid


def test_patients_land_on_every_management_band_including_edges(pop: Pop) -> None:
    totals = [management(pop, p["id"])[0] for p in pop.of("Patient")]
    assert {band(s) for s in totals} == {"<10", "10-19", "20-39", "40-59", "60-79", "80+"}
    for edge in (599, 600, 1199, 1200, 2399, 2400, 3599, 3600, 4799, 4800):
        assert edge in totals, edge


def test_unreachable_patients_have_attempts_and_no_interactive_contact(pop: Pop) -> None:
    unreachable = [p["id"] for p in pop.of("Patient") if "unreachable" in pop.tags(p["id"])]
    assert unreachable
    for pid in unreachable:
        assert management(pop, pid)[1] == 0
        assert any(r.get("status") == "not-done" for r in pop.by_patient[pid])
    reachable = [p["id"] for p in pop.of("Patient") if "interactive-contact" in pop.tags(p["id"])]
    assert reachable and all(
        management(pop, pid)[1] >= 1 for pid in reachable if rpm_consent_intervals(pop, pid)
    )


def test_data_days_cover_every_adherence_band(pop: Pop) -> None:
    days = {p["id"]: data_days(pop, p["id"]) for p in pop.of("Patient")}
    for pid, n in days.items():
        expected = "16-30" if n >= 16 else "2-15" if n >= 2 else str(n)
        assert f"adherence-{expected}" in pop.tags(pid)
    assert 0 in days.values() and 1 in days.values()
    assert any(2 <= n <= 15 for n in days.values()) and any(16 <= n <= 31 for n in days.values())


# --- coverage: one row per case the rules need ----------------------------------------------------------


def consents(pop: Pop) -> list[Resource]:
    return pop.of("Consent")


def comms(pop: Pop) -> list[Resource]:
    return pop.of("Communication")


def time_entries(pop: Pop) -> list[Resource]:
    return [r for r in pop.of("Observation") if is_time_entry(r)]


def device_readings(pop: Pop) -> list[Resource]:
    return [r for r in pop.of("Observation") if not is_time_entry(r)]


def medium_is(code: str) -> Callable[[Resource], bool]:
    return lambda c: (
        code in concept_codes(c.get("medium"), "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode")
    )


def category_is(code: str) -> Callable[[Resource], bool]:
    return lambda c: code in concept_codes(c.get("category"), COMMUNICATION_CATEGORY_CS)


def device_typed(code: str) -> Callable[[Pop], bool]:
    return lambda pop: any(
        code in codes(d.get("type"), "urn:iso:std:iso:11073:10101") for d in pop.of("Device")
    )


def medium_used(code: str) -> Callable[[Pop], bool]:
    return lambda pop: any(medium_is(code)(c) for c in comms(pop))


def category_used(code: str) -> Callable[[Pop], bool]:
    return lambda pop: any(category_is(code)(c) for c in comms(pop))


def time_entry_coded(code: str) -> Callable[[Pop], bool]:
    return lambda pop: any(codes(t["code"], RPM_ACTIVITY_CS) == {code} for t in time_entries(pop))


def has_period(c: Resource) -> bool:
    return any(e["url"].endswith("/activity-period") for e in c.get("extension", []))


def encounter_of(pop: Pop, c: Resource) -> Resource:
    return pop.by_key.get(c.get("encounter", {}).get("reference", ""), {})


def activities(pop: Pop) -> list[tuple[datetime, datetime | None]]:
    return [activity_interval(pop, r) for r in [*comms(pop), *time_entries(pop)]]


def crosses_midnight_into(pop: Pop, start_day: date) -> bool:
    """Some activity starts on `start_day` (local) and ends on a later local date."""
    return any(
        s.astimezone(pop.tz).date() == start_day and e is not None and e.astimezone(pop.tz).date() > start_day
        for s, e in activities(pop)
    )


def consent_recorded_after_first_reading(pop: Pop) -> bool:
    for consent in consents(pop):
        pid = patient_of(consent) or ""
        start = pop.time(consent.get("provision", {}).get("period", {}).get("start", consent["dateTime"]))
        times = [pop.time(t) for r in readings(pop, pid) if r.get("device") and (t := reading_time(r))]
        counted = [t for t in times if t >= start]
        if counted and pop.time(consent["dateTime"]) > min(counted):
            return True
    return False


def touching_consents(pop: Pop) -> bool:
    for pid in pop.by_patient:
        spans = rpm_consent_intervals(pop, pid)
        if any(e is not None and e == s2 for _, e in spans for s2, _ in spans):
            return True
    return False


def readings_in_consent_gap(pop: Pop) -> bool:
    for pid in pop.by_patient:
        spans = sorted(rpm_consent_intervals(pop, pid), key=lambda x: x[0])
        for (_, end), (start, _) in itertools.pairwise(spans):
            if (
                end is not None
                and end < start
                and any(end <= pop.time(reading_time(r) or "") < start for r in readings(pop, pid))
            ):
                return True
    return False


def readings_before_consent(pop: Pop) -> bool:
    for pid in pop.by_patient:
        spans = rpm_consent_intervals(pop, pid)
        if spans and any(
            pop.time(reading_time(r) or "") < min(s for s, _ in spans) for r in readings(pop, pid)
        ):
            return True
    return False


def duplicate_identifiers(pop: Pop) -> bool:
    keys = [
        (i["system"], i["value"])
        for r in device_readings(pop)
        for i in r.get("identifier", [])
        if r.get("device")
    ]
    return len(keys) != len(set(keys))


def prior_99453(pop: Pop, status: str) -> bool:
    for item in pop.of("ChargeItem"):
        if "99453" in codes(item["code"], CPT_SYSTEM) and item["status"] == status:
            pid = patient_of(item)
            (key,) = item["identifier"]
            assert key["system"] == f"{CANON}/charge-key"
            assert re.fullmatch(rf"{pid}\|99453\|\d{{4}}-\d\d-\d\d", key["value"])
            return True
    return False


def rtm_overlapping(pop: Pop) -> bool:
    for item in pop.of("ChargeItem"):
        occ = item.get("occurrencePeriod")
        if (
            "98976" in codes(item["code"], CPT_SYSTEM)
            and occ
            and date.fromisoformat(occ["start"]) <= pop.last
            and date.fromisoformat(occ["end"]) >= pop.first
        ):
            return True
    return False


def setup_window_in_earlier_month(pop: Pop) -> bool:
    """A patient with no 99453 on file whose readings start before the previous month."""
    prev_first = (pop.first - timedelta(days=1)).replace(day=1)
    for pid, resources in pop.by_patient.items():
        charged = any(
            "99453" in codes(r["code"], CPT_SYSTEM) for r in resources if r["resourceType"] == "ChargeItem"
        )
        times = [reading_time(r) for r in readings(pop, pid) if r.get("device")]
        if not charged and any(t and pop.day(t) < prev_first for t in times):
            return True
    return False


def chat_session(pop: Pop) -> bool:
    for pid in pop.by_patient:
        chat = sorted(
            (
                c
                for c in pop.by_patient[pid]
                if c["resourceType"] == "Communication" and medium_is("ONLINEWRIT")(c)
            ),
            key=lambda c: pop.time(c["sent"]),
        )
        for a, b, c in zip(chat, chat[1:], chat[2:], strict=False):
            sides = [party(pop, pid, m["sender"]) for m in (a, b, c)]
            gaps = [pop.time(y["sent"]) - pop.time(x["sent"]) for x, y in ((a, b), (b, c))]
            if sides == ["staff", "patient", "staff"] and all(g <= timedelta(minutes=5) for g in gaps):
                return True
    return False


CASES: list[tuple[str, Callable[[Pop], bool]]] = [
    # Consent (section 1 row 1; episodes and gaps, section 2)
    ("consent written (sourceAttachment)", lambda pop: any("sourceAttachment" in c for c in consents(pop))),
    (
        "consent verbal",
        lambda pop: any("sourceAttachment" not in c and c["status"] == "active" for c in consents(pop)),
    ),
    (
        "consent scope treatment + category rpm + permit",
        lambda pop: any(
            codes(c["scope"], "http://terminology.hl7.org/CodeSystem/consentscope") == {"treatment"}
            and "rpm" in concept_codes(c["category"], CARE_PROGRAM_CS)
            and c["provision"].get("type") == "permit"
            for c in consents(pop)
        ),
    ),
    ("consent rpm via provision.code", lambda pop: any(c["provision"].get("code") for c in consents(pop))),
    ("consent provision.type absent", lambda pop: any("type" not in c["provision"] for c in consents(pop))),
    (
        "consent start months before the month",
        lambda pop: any(
            pop.day(c["provision"]["period"]["start"]) < pop.first - timedelta(days=60) for c in consents(pop)
        ),
    ),
    (
        "consent start mid-month",
        lambda pop: any(
            pop.first < pop.day(c["provision"].get("period", {}).get("start", c["dateTime"])) <= pop.last
            for c in consents(pop)
        ),
    ),
    (
        "consent start only from dateTime",
        lambda pop: any("start" not in c["provision"].get("period", {}) for c in consents(pop)),
    ),
    (
        "consent revoked mid-month, date-only end",
        lambda pop: any(
            c["status"] == "inactive"
            and len(e := c["provision"].get("period", {}).get("end", "")) == 10
            and pop.in_month(e)
            for c in consents(pop)
        ),
    ),
    (
        "consent revoked mid-month, dateTime end",
        lambda pop: any(
            c["status"] == "inactive"
            and len(e := c["provision"].get("period", {}).get("end", "")) > 10
            and pop.in_month(e)
            for c in consents(pop)
        ),
    ),
    (
        "consent inactive without end",
        lambda pop: any(
            c["status"] == "inactive" and "end" not in c["provision"].get("period", {}) for c in consents(pop)
        ),
    ),
    ("consent deny", lambda pop: any(c["provision"].get("type") == "deny" for c in consents(pop))),
    (
        "consent not RPM",
        lambda pop: any("ccm" in concept_codes(c["category"], CARE_PROGRAM_CS) for c in consents(pop)),
    ),
    ("consent dateTime after first reading", consent_recorded_after_first_reading),
    ("touching consents (one episode)", touching_consents),
    ("readings in a consent gap", readings_in_consent_gap),
    ("readings before consent start", readings_before_consent),
    # Devices
    *[
        (f"device {name}", device_typed(code))
        for name, code in (("BP cuff", "528391"), ("scale", "528399"), ("pulse oximeter", "528388"))
    ],
    (
        "device with SNOMED type",
        lambda pop: any(codes(d.get("type"), "http://snomed.info/sct") for d in pop.of("Device")),
    ),
    (
        "patient with two device types",
        lambda pop: any(
            sum(r["resourceType"] == "Device" for r in rs) >= 2 for rs in pop.by_patient.values()
        ),
    ),
    ("device entered-in-error", lambda pop: any(d["status"] == "entered-in-error" for d in pop.of("Device"))),
    (
        "AI calling system (device without patient)",
        lambda pop: any("patient" not in d for d in pop.of("Device")),
    ),
    # Readings
    (
        "BP panel with systolic and diastolic",
        lambda pop: any(
            codes(r["code"], "http://loinc.org") == {"85354-9"}
            and [next(iter(codes(c["code"], "http://loinc.org"))) for c in r["component"]]
            == ["8480-6", "8462-4"]
            for r in device_readings(pop)
        ),
    ),
    (
        "weight 29463-7",
        lambda pop: any(codes(r["code"], "http://loinc.org") == {"29463-7"} for r in device_readings(pop)),
    ),
    (
        "SpO2 2708-6 + 59408-5",
        lambda pop: any(
            codes(r["code"], "http://loinc.org") == {"2708-6", "59408-5"} for r in device_readings(pop)
        ),
    ),
    (
        "reading in UTC whose UTC date differs from the local date",
        lambda pop: any(
            (t := r.get("effectiveDateTime", "")).endswith("Z") and pop.time(t).date() != pop.day(t)
            for r in device_readings(pop)
        ),
    ),
    (
        "reading at local 23:5x on the last day",
        lambda pop: any(
            (m := pop.time(reading_time(r) or "").astimezone(pop.tz)).date() == pop.last
            and m.hour == 23
            and m.minute >= 50
            for r in device_readings(pop)
        ),
    ),
    (
        "readings in the previous month",
        lambda pop: any(pop.day(reading_time(r) or "") < pop.first for r in device_readings(pop)),
    ),
    ("re-sent readings sharing an identifier", duplicate_identifiers),
    (
        "patient-reported reading (no device)",
        lambda pop: any("device" not in r for r in device_readings(pop)),
    ),
    ("reading attributed to RTM", lambda pop: any(program(r) == "rtm" for r in device_readings(pop))),
    ("reading with effectiveInstant", lambda pop: any("effectiveInstant" in r for r in device_readings(pop))),
    ("reading with effectivePeriod", lambda pop: any("effectivePeriod" in r for r in device_readings(pop))),
    (
        "reading from another patient's device",
        lambda pop: any(
            r.get("device") and pop.by_key[r["device"]["reference"]].get("patient") != r["subject"]
            for r in device_readings(pop)
        ),
    ),
    (
        "reading entered-in-error",
        lambda pop: any(r["status"] == "entered-in-error" for r in device_readings(pop)),
    ),
    # Communications
    *[(f"medium {m}", medium_used(m)) for m in ("PHONE", "VIDEOCONF", "EMAILWRIT", "ONLINEWRIT", "FACE")],
    *[(f"category {k}", category_used(k)) for k in ("alert", "notification", "reminder")],
    (
        "attempt not-done, recipient-unavailable, voicemail",
        lambda pop: any(
            c["status"] == "not-done"
            and codes(
                c["statusReason"], "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"
            )
            == {"recipient-unavailable"}
            and "voicemail" in c["note"][0]["text"].lower()
            for c in comms(pop)
        ),
    ),
    (
        "call with caregiver (RelatedPerson with relationship)",
        lambda pop: any(
            any(
                pop.by_key[r["reference"]].get("relationship")
                for r in c["recipient"]
                if r["reference"].startswith("Rel")
            )
            for c in comms(pop)
        ),
    ),
    (
        "RelatedPerson without relationship",
        lambda pop: any("relationship" not in r for r in pop.of("RelatedPerson")),
    ),
    (
        "nurse to nurse care-team message",
        lambda pop: any(
            c["sender"]["reference"].startswith("Practitioner/")
            and all(r["reference"].startswith("Practitioner/") for r in c["recipient"])
            for c in comms(pop)
        ),
    ),
    (
        "AI system call, completed PHONE",
        lambda pop: any(
            c["sender"]["reference"] == f"Device/{synth.AI_DEVICE_ID}" and medium_is("PHONE")(c)
            for c in comms(pop)
        ),
    ),
    (
        "patient-initiated call",
        lambda pop: any(
            c["sender"]["reference"].startswith("Patient/") and medium_is("PHONE")(c) for c in comms(pop)
        ),
    ),
    ("content in topic", lambda pop: any(codes(c.get("topic"), RPM_CONTENT_CS) for c in comms(pop))),
    (
        "content in reasonCode",
        lambda pop: any(concept_codes(c.get("reasonCode"), RPM_CONTENT_CS) for c in comms(pop)),
    ),
    (
        "completed call without clinical content",
        lambda pop: any(
            c["status"] == "completed"
            and medium_is("PHONE")(c)
            and "topic" not in c
            and "reasonCode" not in c
            for c in comms(pop)
        ),
    ),
    ("duration by activity-period", lambda pop: any(has_period(c) for c in comms(pop))),
    (
        "duration by Encounter VR period only",
        lambda pop: any(
            (e := encounter_of(pop, c))
            and "end" in e.get("period", {})
            and "length" not in e
            and e["class"]["code"] == "VR"
            for c in comms(pop)
        ),
    ),
    (
        "duration by Encounter length only (start = sent)",
        lambda pop: any(
            (e := encounter_of(pop, c)) and "length" in e and "period" not in e for c in comms(pop)
        ),
    ),
    (
        "duration by Encounter period.start + length",
        lambda pop: any(
            (e := encounter_of(pop, c)) and "length" in e and e.get("period", {}).keys() == {"start"}
            for c in comms(pop)
        ),
    ),
    (
        "completed interactive call without any duration",
        lambda pop: any(
            c["status"] == "completed"
            and medium_is("PHONE")(c)
            and "topic" in c
            and not has_period(c)
            and "encounter" not in c
            for c in comms(pop)
        ),
    ),
    (
        "escalation note",
        lambda pop: any("Escalated" in n["text"] for c in comms(pop) for n in c.get("note", [])),
    ),
    (
        "HTML/script note text",
        lambda pop: any("<script>" in n["text"] for c in comms(pop) for n in c.get("note", [])),
    ),
    ("payload text", lambda pop: any(c.get("payload", [{}])[0].get("contentString") for c in comms(pop))),
    ("activity on the last evening running past midnight", lambda pop: crosses_midnight_into(pop, pop.last)),
    (
        "previous-month activity running into the month",
        lambda pop: crosses_midnight_into(pop, pop.first - timedelta(days=1)),
    ),
    ("live-chat session (staff, patient, staff within 5 min)", chat_session),
    ("communication attributed to CCM", lambda pop: any(program(c) == "ccm" for c in comms(pop))),
    (
        "communication entered-in-error",
        lambda pop: any(c["status"] == "entered-in-error" for c in comms(pop)),
    ),
    # Time entries
    *[(f"time entry {code}", time_entry_coded(code)) for code in RPM_ACTIVITY_CODES],
    ("time entry by effectivePeriod", lambda pop: any("effectivePeriod" in t for t in time_entries(pop))),
    (
        "time entry by effectiveDateTime + minutes",
        lambda pop: any(
            "effectiveDateTime" in t and t.get("valueQuantity", {}).get("code") == "min"
            for t in time_entries(pop)
        ),
    ),
    (
        "time entry in seconds",
        lambda pop: any(t.get("valueQuantity", {}).get("code") == "s" for t in time_entries(pop)),
    ),
    ("time entry attributed to CCM", lambda pop: any(program(t) == "ccm" for t in time_entries(pop))),
    ("time entry without performer", lambda pop: any("performer" not in t for t in time_entries(pop))),
    ("time entry cancelled", lambda pop: any(t["status"] == "cancelled" for t in time_entries(pop))),
    # ChargeItems
    ("prior 99453 billed with charge-key", lambda pop: prior_99453(pop, "billed")),
    ("prior 99453 entered-in-error", lambda pop: prior_99453(pop, "entered-in-error")),
    ("no 99453 on file, first window in an earlier month", setup_window_in_earlier_month),
    ("RTM 98976 overlapping the month", rtm_overlapping),
    (
        "RTM ChargeItem without occurrence",
        lambda pop: any("occurrencePeriod" not in c for c in pop.of("ChargeItem")),
    ),
    # Patients
    (
        "patients with name, birthDate, gender",
        lambda pop: all(
            r["name"][0]["family"] in synth._FAMILY and r["birthDate"] and r["gender"]
            for r in pop.of("Patient")
        ),
    ),
]


@pytest.mark.parametrize(("case", "present"), CASES, ids=[c for c, _ in CASES])
def test_population_covers_case(pop: Pop, case: str, present: Callable[[Pop], bool]) -> None:
    assert present(pop), f"no {case} in {N} patients"


def test_consent_selection_sample_is_what_the_contract_names(pop: Pop) -> None:
    for consent in consents(pop):
        assert consent["patient"]["reference"].startswith("Patient/")
        assert consent["scope"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/consentscope"
    for reading in device_readings(pop):
        assert reading["subject"]["reference"].startswith("Patient/")
        if reading.get("identifier"):
            assert reading["identifier"][0].keys() == {"system", "value"}


# --- the command line ------------------------------------------------------------------------------------


def run_synth(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rpm-billing")
    synth_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", *argv])
    return int(args.func(args))


def test_cli_writes_the_bulk_layout_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bulk"
    assert (
        main(["synth", "--patients", "8", "--month", MONTH, "--seed", "2", "--out", str(out)]) == ExitCode.OK
    )
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0
    files = sorted(p.name for p in out.iterdir())
    assert {
        "Patient.ndjson",
        "Consent.ndjson",
        "Device.ndjson",
        "Observation.ndjson",
        "Practitioner.ndjson",
    } <= set(files)
    for name in files:
        n = len((out / name).read_text(encoding="utf-8").splitlines())
        assert f"{name.removesuffix('.ndjson')} {n}" in summary
    again = tmp_path / "again"
    assert run_synth(["--patients", "8", "--month", MONTH, "--seed", "2", "--out", str(again)]) == ExitCode.OK
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_cli_refuses_to_mix_with_existing_files_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Consent.ndjson").write_text("stale\n")
    (tmp_path / "notes.txt").write_text("keep me")
    argv = ["synth", "--patients", "2", "--month", MONTH, "--out", str(tmp_path)]
    assert main(argv) == ExitCode.BAD_ARGUMENTS
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == ExitCode.OK
    assert "stale" not in (tmp_path / "Consent.ndjson").read_text()
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--month", "2026-3"], "YYYY-MM"),
        (["--month", MONTH, "--timezone", "Nowhere/Special"], "time zone"),
        (["--month", MONTH, "--patients", "-4"], "patients"),
    ],
)
def test_cli_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["synth", "--out", str(tmp_path / "o"), *argv]) == ExitCode.BAD_ARGUMENTS
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["synth", "--month", MONTH, "--out", str(target)]) == ExitCode.BAD_ARGUMENTS
