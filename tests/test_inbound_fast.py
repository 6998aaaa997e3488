"""fhir_mapping.inbound_fast: the typed fast path for device-reading lines gives exactly what the tolerant
path gives, takes the common shape, and leaves everything else to the tolerant path (one row per case)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from fhir_mapping.canon import CANON
from fhir_mapping.inbound import InboundCollector
from smart_app.inputs import BadLine, iter_input

DROP = object()
READING: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs1",
    "identifier": [{"system": "urn:gw", "value": "R-1"}],
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-03-05T07:30:00-05:00",
    "device": {"reference": "Device/dev1"},
    "valueQuantity": {"value": 72, "unit": "/min"},
}


def variant(changes: dict[str, Any]) -> str:
    resource = {k: v for k, v in {**READING, **changes}.items() if v is not DROP}
    return json.dumps(resource)


def finished(collector: InboundCollector) -> tuple[object, object]:
    patients, skipped = collector.finish()
    return {pid: patients[pid] for pid in patients}, skipped


def both_ways(lines: list[str]) -> tuple[tuple[object, object], tuple[object, object], list[bool]]:
    """(records read with the fast path first, records read by `add` only, which lines the fast path took)."""
    fast, tolerant, taken = InboundCollector(), InboundCollector(), []
    for line in lines:
        took = fast.add_line(line)
        taken.append(took)
        if not took:
            fast.add(json.loads(line))
        tolerant.add(json.loads(line))
    return finished(fast), finished(tolerant), taken


@pytest.mark.parametrize(
    ("changes", "taken"),
    [
        pytest.param({}, True, id="common-shape"),
        pytest.param({"effectiveDateTime": "2026-03-05T12:30:00Z"}, True, id="utc"),
        pytest.param({"effectiveDateTime": "2026-03-05T07:30:00"}, True, id="no-offset-flagged-naive"),
        pytest.param({"effectiveDateTime": "2026-03-05T07:30:00.250-05:00"}, True, id="fraction"),
        pytest.param({"effectiveDateTime": "2026-03-05"}, True, id="date-only"),
        pytest.param({"status": "amended"}, True, id="amended"),
        pytest.param({"device": DROP}, True, id="patient-reported"),
        pytest.param({"device": None}, True, id="device-null"),
        pytest.param({"device": {"display": "a cuff"}}, True, id="device-display-only"),
        pytest.param({"device": {"reference": "DeviceMetric/m1"}}, True, id="device-metric"),
        pytest.param({"device": {"reference": " Device/dev1 "}}, True, id="device-reference-padded"),
        pytest.param({"identifier": DROP}, True, id="no-identifier"),
        pytest.param({"identifier": None}, True, id="identifier-null"),
        pytest.param(
            {"identifier": [{"value": "x"}, {"system": " urn:gw ", "value": " R-2 "}]},
            True,
            id="identifier-first-complete-stripped",
        ),
        pytest.param({"code": {"text": "  Pulse  ", "coding": []}}, True, id="code-text"),
        pytest.param({"code": DROP}, True, id="no-code"),
        pytest.param(
            {"subject": {"reference": "https://ehr.example/fhir/Patient/p1"}}, True, id="abs-subject"
        ),
        pytest.param({"id": "  obs1 "}, False, id="id-padded"),
        pytest.param({"id": DROP}, False, id="no-id"),
        pytest.param({"status": " final "}, False, id="status-padded"),
        pytest.param({"status": "cancelled"}, False, id="status-not-a-result"),
        pytest.param({"status": DROP}, False, id="no-status"),
        pytest.param({"status": 3}, False, id="status-not-a-string"),
        pytest.param({"subject": {"reference": "Group/g1"}}, False, id="subject-not-a-patient"),
        pytest.param({"subject": "Patient/p1"}, False, id="subject-not-an-object"),
        pytest.param({"subject": DROP}, False, id="no-subject"),
        pytest.param({"effectiveDateTime": "2026-03-05T24:00:00Z"}, False, id="time-invalid"),
        pytest.param({"effectiveDateTime": DROP}, False, id="no-effectiveDateTime"),
        pytest.param(
            {"effectiveDateTime": DROP, "effectivePeriod": {"start": "2026-03-05T07:30:00-05:00"}},
            False,
            id="effectivePeriod",
        ),
        pytest.param(
            {
                "extension": [
                    {"url": f"{CANON}/StructureDefinition/care-program", "valueCoding": {"code": "rtm"}}
                ]
            },
            False,
            id="care-program-attribution",
        ),
        pytest.param({"extension": None}, False, id="extension-null"),
        pytest.param(
            {"code": {"coding": [{"system": f"{CANON}/CodeSystem/rpm-activity", "code": "data-review"}]}},
            False,
            id="time-entry",
        ),
        pytest.param({"code": {"coding": {"system": "http://loinc.org"}}}, False, id="coding-not-an-array"),
        pytest.param({"identifier": {"system": "urn:gw", "value": "R-1"}}, False, id="identifier-not-array"),
        pytest.param({"identifier": ["R-1"]}, False, id="identifier-not-an-object"),
        pytest.param({"device": "Device/dev1"}, False, id="device-not-an-object"),
        pytest.param({"resourceType": "Communication"}, False, id="not-an-observation"),
    ],
)
def test_fast_path_reads_exactly_what_add_reads(changes: dict[str, Any], taken: bool) -> None:
    fast, tolerant, took = both_ways([variant(changes)])
    assert fast == tolerant
    assert took == [taken]


def test_later_copy_replaces_earlier_whichever_path_reads_them() -> None:
    lines = [
        variant({}),
        variant({"status": " final ", "effectiveDateTime": "2026-03-06T07:30:00-05:00"}),  # tolerant path
        variant({"id": "obs2"}),
        variant({"id": "obs2", "effectiveDateTime": "2026-03-07T07:30:00-05:00"}),
        variant({"id": "obs3", "status": " final "}),
        variant({"id": "obs3", "effectiveDateTime": "2026-03-08T07:30:00-05:00"}),
    ]
    fast, tolerant, took = both_ways(lines)
    assert took == [True, False, True, True, False, True]
    assert fast == tolerant
    records = fast[0]["p1"]  # type: ignore[index]
    assert [(r.id, r.time.day) for r in records.readings] == [("obs1", 6), ("obs2", 7), ("obs3", 8)]


def test_random_damage_never_makes_the_paths_differ() -> None:
    """2,000 readings with elements dropped, nulled or given another JSON type."""
    rng = random.Random(7)
    junk: list[Any] = [None, "", " ", 0, 1.5, True, [], {}, ["x"], {"reference": "Patient/p1"}, "Patient/p2"]
    keys = [k for k in READING if k != "resourceType"] + ["extension", "effectivePeriod"]
    lines = []
    for number in range(2_000):
        changes: dict[str, Any] = {"id": f"obs{number}"}
        for key in rng.sample(keys, rng.randint(1, 3)):
            changes[key] = rng.choice([DROP, *junk])
        lines.append(variant(changes))
    fast, tolerant, took = both_ways(lines)
    assert fast == tolerant
    assert 0 < sum(took) < len(took)


def test_iter_input_offers_each_line_and_numbers_bad_lines_as_before(tmp_path: Path) -> None:
    file = tmp_path / "Observation.ndjson"
    file.write_text(variant({}) + "\n\n{not json\n" + variant({"status": " final "}) + "\n", encoding="utf-8")
    offered: list[str] = []

    def take(line: str) -> bool:
        offered.append(line)
        return "obs1" in line and '" final "' not in line

    items = list(iter_input(file, take_line=take))
    assert len(offered) == 3  # blank lines are never offered
    assert isinstance(items[0], BadLine) and items[0].line == 3
    assert isinstance(items[1], dict) and items[1]["status"] == " final "
    assert len(items) == 2
