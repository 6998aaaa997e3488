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
from fhir_mapping.inbound_fast import ELEMENTS_READ
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


ACTIVITY_PERIOD = f"{CANON}/StructureDefinition/activity-period"
CARE_PROGRAM = f"{CANON}/StructureDefinition/care-program"
RPM_CONTENT = f"{CANON}/CodeSystem/rpm-content"
MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
CALL: dict[str, Any] = {
    "resourceType": "Communication",
    "id": "call1",
    "extension": [
        {"url": "urn:other", "valueString": "x"},
        {
            "url": ACTIVITY_PERIOD,
            "valuePeriod": {"start": "2026-03-12T14:01:16-04:00", "end": "2026-03-12T14:11:15-04:00"},
        },
    ],
    "status": "completed",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/communication-category",
                    "code": "notification",
                }
            ]
        }
    ],
    "medium": [{"coding": [{"system": MODE, "code": "PHONE"}, {"system": MODE, "code": "PHONE"}]}],
    "subject": {"reference": "Patient/p1"},
    "topic": {"coding": [{"system": RPM_CONTENT, "code": "physiologic-data"}]},
    "reasonCode": [{"coding": [{"system": RPM_CONTENT, "code": "care-plan"}]}],
    "sent": "2026-03-12T14:01:16-04:00",
    "recipient": [{"reference": "Patient/p1"}, {"reference": "RelatedPerson/rp1", "display": "Daughter"}],
    "sender": {"reference": "Practitioner/nurse1"},
    "payload": [{"contentString": "Discussed the trend."}, {"contentAttachment": {"title": "x"}}],
    "note": [{"text": "  Escalated.  "}],
}
RELATED = {
    "resourceType": "RelatedPerson",
    "id": "rp1",
    "patient": {"reference": "Patient/p1"},
    "relationship": [{"text": "daughter"}],
}
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc1",
    "status": "finished",
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2026-03-12T14:00:00-04:00", "end": "2026-03-12T14:21:00-04:00"},
}


def variant(changes: dict[str, Any], base: dict[str, Any] = READING) -> str:
    resource = {k: v for k, v in {**base, **changes}.items() if v is not DROP}
    return json.dumps(resource)


def call(changes: dict[str, Any]) -> str:
    return variant(changes, CALL)


def damaged_variants(
    base: dict[str, Any],
    extra_keys: list[str],
    junk: list[Any],
    count: int,
    most: int,
    prefix: str,
    seed: int,
) -> list[str]:
    """`count` lines of `base`, each with 1 to `most` of its elements (or of `extra_keys`) dropped or given
    one of `junk`; ids `<prefix><n>`."""
    rng = random.Random(seed)
    keys = [k for k in base if k != "resourceType"] + extra_keys
    lines = []
    for number in range(count):
        changes: dict[str, Any] = {"id": f"{prefix}{number}"}
        for key in rng.sample(keys, rng.randint(1, most)):
            changes[key] = rng.choice([DROP, *junk])
        lines.append(variant(changes, base))
    return lines


def finished(collector: InboundCollector) -> tuple[object, object]:
    patients, skipped = collector.finish()
    return {pid: patients[pid] for pid in patients}, skipped


def both_ways(
    lines: list[str], context: tuple[dict[str, Any], ...] = ()
) -> tuple[tuple[object, object], tuple[object, object], list[bool]]:
    """(records read with the fast path first, records read by `add` only, which lines the fast path took);
    `context` resources (an Encounter, a RelatedPerson) are added to both first."""
    fast, tolerant, taken = InboundCollector(), InboundCollector(), []
    for resource in context:
        fast.add(resource)
        tolerant.add(resource)
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
        pytest.param({"status": "cancelled"}, True, id="status-not-a-result-patient-known"),
        pytest.param({"status": " entered-in-error "}, True, id="ignored-status-padded"),
        pytest.param({"status": "bogus", "id": DROP, "extension": [{}]}, True, id="ignored-before-the-rest"),
        pytest.param(
            {"status": "cancelled", "subject": {"reference": "Group/g1"}}, False, id="ignored-no-patient"
        ),
        pytest.param({"status": " "}, False, id="status-blank"),
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
        pytest.param({"resourceType": "Device"}, True, id="not-an-observation-read-as-a-device"),
        pytest.param({"resourceType": "Bundle"}, False, id="bundle"),
        pytest.param({"resourceType": "Basic"}, False, id="type-not-read"),
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
    junk: list[Any] = [None, "", " ", 0, 1.5, True, [], {}, ["x"], {"reference": "Patient/p1"}, "Patient/p2"]
    lines = damaged_variants(READING, ["extension", "effectivePeriod"], junk, 2_000, 3, "obs", seed=7)
    fast, tolerant, took = both_ways(lines)
    assert fast == tolerant
    assert 0 < sum(took) < len(took)


def test_iter_input_offers_each_line_and_numbers_bad_lines_as_before(tmp_path: Path) -> None:
    file = tmp_path / "Observation.ndjson"
    file.write_text(variant({}) + "\n\n{not json\n" + variant({"status": " final "}) + "\n", encoding="utf-8")
    offered: list[str] = []

    def take(line: str | bytes) -> bool:
        text = line.decode() if isinstance(line, bytes) else line
        offered.append(text)
        return "obs1" in text and '" final "' not in text

    items = list(iter_input(file, take_line=take))
    assert len(offered) == 3  # blank lines are never offered
    assert isinstance(items[0], BadLine) and items[0].line == 3
    assert isinstance(items[1], dict) and items[1]["status"] == " final "
    assert len(items) == 2


@pytest.mark.parametrize(
    ("changes", "taken"),
    [
        pytest.param({}, True, id="common-shape"),
        pytest.param({"extension": DROP}, True, id="no-activity-period"),
        pytest.param({"extension": None}, True, id="extension-null"),
        pytest.param({"extension": DROP, "sent": DROP}, True, id="no-time-skipped-at-finish"),
        pytest.param({"extension": DROP, "encounter": {"reference": "Encounter/enc1"}}, True, id="encounter"),
        pytest.param({"encounter": {"reference": "Encounter/missing"}}, True, id="encounter-not-found-noted"),
        pytest.param({"encounter": {"display": "a visit"}}, True, id="encounter-display-only"),
        pytest.param(
            {"status": " not-done ", "statusReason": {"text": "no answer"}}, True, id="status-padded"
        ),
        pytest.param({"status": "in-progress"}, True, id="other-status-kept"),
        pytest.param(
            {"statusReason": {"coding": [{"code": " "}, {"code": "recipient-unavailable"}]}},
            True,
            id="status-reason-first-code",
        ),
        pytest.param({"sender": {"display": "Front desk"}}, True, id="sender-display-only"),
        pytest.param({"sender": {"reference": "Device/ai1"}}, True, id="sender-device-resolved-later"),
        pytest.param({"recipient": []}, True, id="no-recipient"),
        pytest.param(
            {"medium": [{"coding": [{"system": "urn:oid:2.16.840.1.113883.5.1064", "code": "VIDEOCONF"}]}]},
            True,
            id="medium-oid",
        ),
        pytest.param({"topic": DROP, "reasonCode": DROP}, True, id="no-content"),
        pytest.param(
            {"topic": {"coding": [{"system": RPM_CONTENT, "code": "gossip"}]}}, False, id="unknown-content"
        ),
        pytest.param({"topic": [{"coding": []}]}, False, id="topic-array"),
        pytest.param({"status": "entered-in-error"}, True, id="entered-in-error-patient-known"),
        pytest.param(
            {"status": " entered-in-error", "id": DROP, "contained": [{"resourceType": "Encounter"}]},
            True,
            id="entered-in-error-before-the-rest",
        ),
        pytest.param(
            {"status": "entered-in-error", "subject": {"reference": "Group/g"}}, False, id="eie-no-patient"
        ),
        pytest.param({"status": DROP}, False, id="no-status"),
        pytest.param({"id": " call1"}, False, id="id-padded"),
        pytest.param({"id": DROP}, False, id="no-id"),
        pytest.param({"subject": {"reference": "Group/g"}}, False, id="subject-not-patient"),
        pytest.param({"contained": [{"resourceType": "Encounter", "id": "e"}]}, False, id="contained"),
        pytest.param({"encounter": {"reference": "#e"}}, False, id="contained-encounter"),
        pytest.param({"encounter": {"reference": "Procedure/x"}}, False, id="encounter-wrong-type"),
        pytest.param({"sender": {"reference": "#x"}}, False, id="contained-sender"),
        pytest.param({"sender": "Practitioner/nurse1"}, False, id="sender-not-an-object"),
        pytest.param({"recipient": {"reference": "Patient/p1"}}, False, id="recipient-not-an-array"),
        pytest.param({"sent": "2026-03-12"}, True, id="sent-date-only"),
        pytest.param({"sent": "yesterday"}, False, id="sent-invalid"),
        pytest.param(
            {"extension": [{"url": ACTIVITY_PERIOD, "valuePeriod": {"end": "2026-03-12T14:11:15-04:00"}}]},
            False,
            id="activity-period-without-start",
        ),
        pytest.param(
            {
                "extension": [
                    {
                        "url": ACTIVITY_PERIOD,
                        "valuePeriod": {
                            "start": "2026-03-12T14:11:15-04:00",
                            "end": "2026-03-12T14:01:15-04:00",
                        },
                    }
                ]
            },
            False,
            id="activity-period-backwards",
        ),
        pytest.param(
            {"extension": [{"url": CARE_PROGRAM, "valueCoding": {"code": "ccm"}}]}, False, id="care-program"
        ),
        pytest.param({"extension": [{"url": "urn:x", "valuePeriod": "junk"}]}, False, id="odd-extension"),
    ],
)
def test_communication_fast_path_reads_exactly_what_add_reads(changes: dict[str, Any], taken: bool) -> None:
    fast, tolerant, took = both_ways([call(changes)], context=(RELATED, ENCOUNTER))
    assert fast == tolerant
    assert took == [taken]


def test_communication_random_damage_never_makes_the_paths_differ() -> None:
    junk: list[Any] = [
        None,
        "",
        " x ",
        0,
        True,
        [],
        {},
        ["x"],
        [{}],
        {"reference": "Patient/p1"},
        "#c",
        [{"coding": [{"system": MODE, "code": "EMAILWRIT"}]}],
        {"text": "t"},
    ]
    extra = ["encounter", "statusReason", "contained"]
    lines = damaged_variants(CALL, extra, junk, 2_000, 3, "call", seed=11)
    fast, tolerant, took = both_ways(lines, context=(RELATED, ENCOUNTER))
    assert fast == tolerant
    assert 0 < sum(took) < len(took)


TIME_ENTRY: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "te1",
    "status": "final",
    "code": {"coding": [{"system": f"{CANON}/CodeSystem/rpm-activity", "code": "data-review"}]},
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2026-03-12T09:00:00-04:00", "end": "2026-03-12T09:12:30-04:00"},
    "performer": [{"reference": "Practitioner/nurse1"}, {"reference": "RelatedPerson/rp1"}],
    "note": [{"text": " reviewed "}, {"text": ""}],
}


@pytest.mark.parametrize(
    ("changes", "taken"),
    [
        pytest.param({}, True, id="common-shape"),
        pytest.param({"performer": DROP, "note": DROP}, True, id="no-performer"),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-12T09:00:00", "end": "2026-03-12T09:10:00"}},
            True,
            id="naive",
        ),
        pytest.param({"effectivePeriod": {"start": "2026-03-12T09:00:00Z"}}, False, id="no-end"),
        pytest.param(
            {"effectivePeriod": DROP, "effectiveDateTime": "2026-03-12T09:00:00Z"}, False, id="datetime"
        ),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-12T09:10:00Z", "end": "2026-03-12T09:00:00Z"}},
            False,
            id="backwards",
        ),
        pytest.param(
            {"effectivePeriod": {"start": "2026-03-12T25:00:00Z", "end": "2026-03-12T09:00:00Z"}},
            False,
            id="bad-time",
        ),
        pytest.param(
            {"code": {"coding": [{"system": f"{CANON}/CodeSystem/rpm-activity", "code": "gossip"}]}},
            False,
            id="bad-code",
        ),
        pytest.param({"performer": [{"reference": "#p"}]}, False, id="contained-performer"),
        pytest.param({"contained": [{"resourceType": "Practitioner", "id": "p"}]}, False, id="contained"),
        pytest.param({"valueQuantity": {"value": 5, "unit": "min"}}, True, id="quantity-ignored-with-period"),
    ],
)
def test_time_entry_fast_path_reads_exactly_what_add_reads(changes: dict[str, Any], taken: bool) -> None:
    fast, tolerant, took = both_ways([variant(changes, TIME_ENTRY)], context=(RELATED,))
    assert fast == tolerant
    assert took == [taken]


def test_time_entry_random_damage_never_makes_the_paths_differ() -> None:
    junk: list[Any] = [None, "", 0, [], {}, ["x"], [{}], {"start": "2026-03-12T09:00:00Z"}, {"text": "t"}]
    extra = ["contained", "extension", "effectiveDateTime"]
    lines = damaged_variants(TIME_ENTRY, extra, junk, 1_000, 2, "te", seed=5)
    fast, tolerant, took = both_ways(lines, context=(RELATED,))
    assert fast == tolerant
    assert 0 < sum(took) < len(took)


class _ReadLog(dict):  # type: ignore[type-arg]
    """A resource that notes which elements are read of it (and fails on reading all of them)."""

    def __init__(self, resource: dict[str, Any], read: set[str]) -> None:
        super().__init__(resource)
        self.read = read

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __iter__(self) -> Any:
        raise AssertionError("add iterates over a resource's elements")

    keys = items = values = __iter__  # type: ignore[assignment]


def _damaged(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy with one to three elements (at any depth) dropped, nulled or replaced by another JSON value."""
    junk: list[Any] = [
        None, "", " x ", 0, -1, 2.5, True, [], {}, ["x"], [{}], {"reference": "Patient/p1"},
        {"start": "2026-03-01"}, "2026-03-05", "2026-03-05T07:30:00", "2026-13-01T00:00:00Z", "deny",
        [{"coding": [{"system": f"{CANON}/CodeSystem/care-program", "code": "rpm"}]}],
    ]  # fmt: skip
    copy = json.loads(json.dumps(resource))
    for _ in range(rng.randint(1, 3)):
        node: Any = copy
        while isinstance(node, dict | list) and node:
            key: Any = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            if key == "resourceType":
                break
            if not isinstance(node[key], dict | list) or rng.random() < 0.4:
                if isinstance(node, dict) and rng.random() < 0.3:
                    del node[key]
                else:
                    node[key] = json.loads(json.dumps(rng.choice(junk)))  # a fresh copy
                break
            node = node[key]
        if rng.random() < 0.2:  # an element present as null, or one the contract does not read
            copy[rng.choice(["occurrencePeriod", "length", "sourceReference", "extension", "text"])] = None
    return copy


def _other_resources() -> list[dict[str, Any]]:
    """Synthetic resources of every type ELEMENTS_READ lists (one of each damaged several ways)."""
    from smart_app.synth import generate

    rng = random.Random(11)
    resources = [r for r in generate(40, "2026-03", seed=3) if r["resourceType"] in ELEMENTS_READ]
    resources += [{"resourceType": "Organization", "id": "org1", "name": "Clinic"}]
    damaged = [_damaged(rng.choice(resources), rng) for _ in range(3_000)]
    return resources + damaged


def test_elements_read_lists_every_element_add_reads() -> None:
    """`add` of these resources reads only `resourceType`, `id` and the elements ELEMENTS_READ lists."""
    resources = _other_resources()
    assert {r["resourceType"] for r in resources} == set(ELEMENTS_READ)
    collector = InboundCollector()
    for resource in resources:
        read: set[str] = set()
        collector.add(_ReadLog(resource, read))
        allowed = {"resourceType", "id", *ELEMENTS_READ[resource["resourceType"]]}
        assert read <= allowed, (resource["resourceType"], read - allowed)


def test_other_resources_read_from_their_elements_as_add_reads_them() -> None:
    """Both paths give the same records and the same skipped resources with the same words."""
    lines = [json.dumps(resource) for resource in _other_resources()]
    fast, tolerant, took = both_ways(lines)
    assert fast == tolerant
    assert all(took)
    assert fast[1]  # some damage is reported (and reported alike)


@pytest.mark.parametrize(
    ("line", "taken"),
    [
        pytest.param(
            '{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"},'
            '"length":{"value":123456789012345678901234567890,"unit":"min"}}',
            True,
            id="huge-integer-as-json-reads-it",
        ),
        pytest.param(
            '{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"},'
            '"length":{"value":1e400,"unit":"min"}}',
            False,
            id="number-out-of-range",
        ),
        pytest.param(
            '{"resourceType":"Patient","id":"p1","name":[{"text":"\\ud800"}]}', False, id="lone-surrogate"
        ),
        pytest.param('{"resourceType":"Patient","id":"p1","name":NaN}', False, id="nan"),
        pytest.param(
            '{"resourceType":"Patient","\\u0069d":"p1","n\\u0061me":[{"text":"A"}]}', True, id="escaped-keys"
        ),
        pytest.param(
            '{"resourceType":"Patient","id":"p1","name":[{"text":"A"}],"name":[{"text":"B"}]}',
            True,
            id="repeated-key-last-wins",
        ),
        pytest.param(
            '{"resourceType":"Patient","id":"p1","resourceType":"Device"}', False, id="repeated-type"
        ),
    ],
)
def test_elements_path_takes_only_what_it_reads_as_json_does(line: str, taken: bool) -> None:
    fast, tolerant, took = both_ways([line])
    assert fast == tolerant
    assert took == [taken]
