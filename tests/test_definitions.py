"""The shipped FHIR definitions: valid R4(B), consistent with canon.py, and read by the inbound mapping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.structuredefinition import StructureDefinition
from fhir.resources.R4B.valueset import ValueSet

from billing.model import PartyKind
from fhir_mapping import canon
from fhir_mapping.definitions import DefinitionNotFound, all_definitions, definition_names, load_definition
from fhir_mapping.inbound import InboundCollector

MODELS: dict[str, Any] = {
    "CodeSystem": CodeSystem,
    "ValueSet": ValueSet,
    "StructureDefinition": StructureDefinition,
    "Communication": Communication,
    "Observation": Observation,
}
EDT = timezone(timedelta(hours=-4))


def test_the_expected_definitions_ship() -> None:
    assert set(definition_names()) == {
        "CodeSystem-care-program",
        "CodeSystem-rpm-activity",
        "CodeSystem-rpm-content",
        "ValueSet-care-program",
        "StructureDefinition-care-program",
        "StructureDefinition-activity-period",
        "Communication-example-rpm-call",
        "Observation-example-time-entry",
    }


@pytest.mark.parametrize("name", definition_names())
def test_each_definition_validates_with_r4b(name: str) -> None:
    resource = load_definition(name)
    assert name == f"{resource['resourceType']}-{resource['id']}"
    model = MODELS[resource["resourceType"]].model_validate(resource)
    assert model.id == resource["id"]


@pytest.mark.parametrize(
    ("name", "url", "codes"),
    [
        ("CodeSystem-care-program", canon.CARE_PROGRAM_CS, canon.CARE_PROGRAM_CODES),
        ("CodeSystem-rpm-activity", canon.RPM_ACTIVITY_CS, canon.RPM_ACTIVITY_CODES),
        ("CodeSystem-rpm-content", canon.RPM_CONTENT_CS, canon.RPM_CONTENT_CODES),
    ],
)
def test_code_systems_hold_exactly_the_codes_canon_lists(name: str, url: str, codes: tuple[str, ...]) -> None:
    code_system = load_definition(name)
    assert code_system["url"] == url
    assert (code_system["status"], code_system["content"]) == ("active", "complete")
    assert tuple(concept["code"] for concept in code_system["concept"]) == codes
    assert code_system["count"] == len(codes)
    for concept in code_system["concept"]:
        assert concept["display"].strip() and len(concept["definition"]) > 30


@pytest.mark.parametrize(
    ("name", "url", "value_type", "contexts"),
    [
        (
            "StructureDefinition-care-program",
            canon.CARE_PROGRAM_EXT,
            "Coding",
            ["Observation", "Communication"],
        ),
        ("StructureDefinition-activity-period", canon.ACTIVITY_PERIOD_EXT, "Period", ["Communication"]),
    ],
)
def test_extensions_fix_their_url_and_constrain_the_value(
    name: str, url: str, value_type: str, contexts: list[str]
) -> None:
    definition = load_definition(name)
    assert definition["url"] == url
    assert (definition["type"], definition["derivation"], definition["kind"]) == (
        "Extension",
        "constraint",
        "complex-type",
    )
    assert definition["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Extension"
    assert [c["expression"] for c in definition["context"]] == contexts
    elements = {element["id"]: element for element in definition["differential"]["element"]}
    assert elements["Extension.url"]["fixedUri"] == url
    assert elements["Extension.value[x]"]["type"] == [{"code": value_type}]
    assert elements["Extension.value[x]"]["min"] == 1


def test_care_program_binding_points_at_the_shipped_value_set() -> None:
    extension = load_definition("StructureDefinition-care-program")
    value = next(e for e in extension["differential"]["element"] if e["id"] == "Extension.value[x]")
    value_set = load_definition("ValueSet/care-program")
    assert value["binding"] == {"strength": "required", "valueSet": value_set["url"]}
    assert value_set["compose"]["include"] == [{"system": canon.CARE_PROGRAM_CS}]
    assert load_definition("CodeSystem-care-program")["valueSet"] == value_set["url"]


def test_examples_use_only_defined_extensions_and_codes() -> None:
    definitions = all_definitions()
    extension_urls = {d["url"] for d in definitions if d["resourceType"] == "StructureDefinition"}
    known = {
        (d["url"], concept["code"])
        for d in definitions
        if d["resourceType"] == "CodeSystem"
        for concept in d["concept"]
    }
    for example in (d for d in definitions if d["resourceType"] in ("Communication", "Observation")):
        assert {e["url"] for e in example["extension"]} <= extension_urls
        for coding in _codings(example):
            if coding["system"].startswith(canon.CANON):
                assert (coding["system"], coding["code"]) in known


def _codings(node: object) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if "system" in node and "code" in node else []
        return found + [c for value in node.values() for c in _codings(value)]
    if isinstance(node, list):
        return [c for value in node for c in _codings(value)]
    return []


def test_examples_map_through_the_inbound_collector() -> None:
    collector = InboundCollector()
    collector.add(load_definition("Communication-example-rpm-call"))
    collector.add(load_definition("Observation-example-time-entry"))
    records, skipped = collector.finish()
    assert skipped == []
    call, entry = records["example"].activities
    assert (call.id, call.medium, call.content, call.program) == (
        "example-rpm-call",
        ("PHONE",),
        ("physiologic-data", "medication-adherence"),
        "rpm",
    )
    assert (call.start, call.duration_seconds, call.duration_source) == (
        datetime(2026, 3, 10, 14, 5, tzinfo=EDT),
        720,
        "activity-period",
    )
    assert call.sender is not None and call.sender.kind is PartyKind.PRACTITIONER
    assert [r.kind for r in call.recipients] == [PartyKind.PATIENT]
    assert (entry.activity_code, entry.duration_seconds, entry.program) == ("data-review", 720, "rpm")


def test_loader_returns_fresh_copies_and_names_unknown_definitions() -> None:
    first = load_definition("CodeSystem-rpm-content.json")
    first["concept"].clear()
    assert load_definition("CodeSystem-rpm-content")["concept"]
    with pytest.raises(DefinitionNotFound, match="no FHIR definition named 'CodeSystem-nope'"):
        load_definition("CodeSystem-nope")
