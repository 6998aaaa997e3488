"""Outbound FHIR (contract section 4): ChargeItems, the monthly DocumentReference, transaction Bundles."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.chargeitem import ChargeItem
from fhir.resources.R4B.documentreference import DocumentReference

from fhir_mapping.monthly_log import log_json, log_json_text, render_log_html
from fhir_mapping.outbound import (
    WriteSettings,
    build_transaction,
    charge_items,
    create_entry,
    etag,
    monthly_document,
    split_transaction,
    status_change_entry,
    transaction_entries,
    transaction_for,
    update_entry,
)
from fhir_mapping.validate import OutboundValidationError, validate_resource
from tests.fixtures.outbound.rich_month import NY, rich_result, simple_result

FIXTURES = Path(__file__).parent / "fixtures" / "outbound"
CANON = "http://rpm-billing.org/fhir"
CPT = "http://www.ama-assn.org/go/cpt"
DOC_REF = "DocumentReference/log-1"
SETTINGS = WriteSettings(billing_practitioner="Practitioner/doc-1", organization="clinic-1")
PREVIEW_AS_OF = datetime(2026, 3, 20, 12, 0, tzinfo=NY)


def items_by_code(result: Any = None, settings: WriteSettings = SETTINGS) -> dict[str, dict[str, Any]]:
    return {
        ci["code"]["coding"][0]["code"]: ci for ci in charge_items(result or rich_result(), settings, DOC_REF)
    }


def identifier(resource: dict[str, Any], system: str) -> str:
    return next(i["value"] for i in resource["identifier"] if i["system"] == system)


# --- ChargeItem --------------------------------------------------------------------------------------------


def test_every_charge_item_validates_with_r4b() -> None:
    items = charge_items(rich_result(), SETTINGS, DOC_REF)
    assert len(items) == 4
    for item in items:
        ChargeItem.model_validate(item)


def test_charge_item_fields_follow_the_contract() -> None:
    item = items_by_code()["99457"]
    assert item["resourceType"] == "ChargeItem" and "id" not in item
    assert item["identifier"][0] == {"system": f"{CANON}/charge-key", "value": "p-100|99457|2026-03-01"}
    assert item["status"] == "billable"
    assert item["code"]["coding"][0]["system"] == CPT
    assert item["code"]["coding"][0]["display"]
    assert item["subject"] == {"reference": "Patient/p-100"}
    assert item["occurrencePeriod"] == {
        "start": "2026-03-01T00:00:00-05:00",
        "end": "2026-03-31T23:59:59-04:00",
    }
    assert item["quantity"] == {"value": 1}
    assert item["performer"] == [{"actor": {"reference": "Practitioner/doc-1"}}]
    assert item["performingOrganization"] == {"reference": "Organization/clinic-1"}
    assert item["enteredDate"] == "2026-04-02T09:00:00-04:00"
    assert item["note"] == [{"text": "47 minutes of management time with 2 interactive contacts"}]
    assert item["definitionUri"] == [f"{CANON}/billing-policy/cms-2026|2026.1"]


def test_supply_codes_use_the_30_day_window_across_the_dst_change() -> None:
    items = items_by_code()
    for code in ("99453", "99454"):
        assert items[code]["occurrencePeriod"] == {
            "start": "2026-02-08T00:00:00-05:00",
            "end": "2026-03-09T23:59:59-04:00",
        }
        assert identifier(items[code], f"{CANON}/charge-key") == f"p-100|{code}|2026-02-08"


NOV = ("2026-11-01T00:00:00-04:00", "2026-11-30T23:59:59-05:00")  # fall back on 11-01
MAR = ("2026-03-01T00:00:00-05:00", "2026-03-31T23:59:59-04:00")  # spring forward on 03-08


@pytest.mark.parametrize(
    ("month", "as_of", "period", "status"),
    [
        ("2026-11", datetime(2026, 12, 1, 6, tzinfo=NY), NOV, "billable"),
        ("2026-11", datetime(2026, 11, 15, 6, tzinfo=NY), NOV, "planned"),
        # closed from the first instant of April
        ("2026-03", datetime(2026, 4, 1, 0, tzinfo=NY), MAR, "billable"),
        ("2026-03", datetime(2026, 3, 31, 23, 59, 59, tzinfo=NY), MAR, "planned"),
    ],
)
def test_month_periods_and_status_in_dst_months(
    month: str, as_of: datetime, period: tuple[str, str], status: str
) -> None:
    (item,) = charge_items(simple_result(month, as_of), SETTINGS, DOC_REF)
    assert item["occurrencePeriod"] == {"start": period[0], "end": period[1]}
    assert item["status"] == status


def test_preview_month_charges_are_planned() -> None:
    items = items_by_code(rich_result(as_of=PREVIEW_AS_OF))
    assert {code: ci["status"] for code, ci in items.items()} == {
        "99453": "billable",  # its window ended on 03-09, before the as-of time
        "99454": "billable",
        "99457": "planned",
        "99458": "planned",
    }


def test_supporting_information_is_the_document_then_the_evidence_without_duplicates() -> None:
    item = items_by_code()["99457"]
    assert [s["reference"] for s in item["supportingInformation"]] == [
        DOC_REF,
        "Consent/c-written",
        "Communication/call-1",
        "Communication/call-3",
    ]
    supply = items_by_code()["99454"]
    assert [s["reference"] for s in supply["supportingInformation"]] == [
        DOC_REF,
        "Consent/c-written",
        "Device/dev-bp",
    ]


def test_units_are_the_quantity() -> None:
    assert items_by_code(rich_result(units_99458=3))["99458"]["quantity"] == {"value": 3}


def test_performer_and_organization_are_omitted_when_not_configured() -> None:
    item = items_by_code(settings=WriteSettings())["99457"]
    assert "performer" not in item and "performingOrganization" not in item
    ChargeItem.model_validate(item)


def test_entered_date_is_the_as_of_instant_in_the_practice_zone() -> None:
    as_of = datetime(2026, 4, 2, 13, 0, 5, 123456, tzinfo=UTC)
    assert items_by_code(rich_result(as_of=as_of))["99457"]["enteredDate"] == "2026-04-02T09:00:05-04:00"


def test_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        charge_items(replace(rich_result(), as_of=datetime(2026, 4, 2, 9)), SETTINGS, DOC_REF)


def test_a_deployment_canon_changes_every_project_url() -> None:
    settings = WriteSettings(canon="https://billing.example.org/fhir/")
    item = items_by_code(settings=settings)["99457"]
    assert item["identifier"][0]["system"] == "https://billing.example.org/fhir/charge-key"
    assert item["definitionUri"] == ["https://billing.example.org/fhir/billing-policy/cms-2026|2026.1"]
    doc = monthly_document(rich_result(), settings)
    assert doc["identifier"][0]["system"] == "https://billing.example.org/fhir/monthly-log"


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"billing_practitioner": "doc-1"}, "billing_practitioner", "Practitioner/doc-1"),
        ({"billing_practitioner": "PractitionerRole/r-9"}, "billing_practitioner", "PractitionerRole/r-9"),
        ({"organization": "org-1"}, "organization", "Organization/org-1"),
        ({"organization": "Organization/org-1"}, "organization", "Organization/org-1"),
    ],
)
def test_settings_references_are_normalised(kwargs: dict[str, Any], field: str, expected: str) -> None:
    assert getattr(WriteSettings(**kwargs), field) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"billing_practitioner": "Patient/p-1"},
        {"billing_practitioner": "Practitioner/a b"},
        {"organization": "Practitioner/x"},
        {"document_type": ("http://loinc.org", "", "Note")},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WriteSettings(**kwargs)


# --- DocumentReference -------------------------------------------------------------------------------------


def attachments(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["attachment"]["contentType"].split(";")[0]: c["attachment"] for c in doc["content"]}


def test_document_reference_follows_the_contract_and_validates() -> None:
    doc = monthly_document(rich_result(), SETTINGS)
    DocumentReference.model_validate(doc)
    assert doc["identifier"][0] == {"system": f"{CANON}/monthly-log", "value": "p-100|2026-03"}
    assert doc["status"] == "current" and doc["docStatus"] == "final"
    assert doc["type"]["coding"] == [
        {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
    ]
    assert doc["category"][0]["coding"][0]["system"] == (
        "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
    )
    assert doc["category"][0]["coding"][0]["code"] == "clinical-note"
    assert doc["subject"] == {"reference": "Patient/p-100"}
    assert doc["date"] == "2026-04-02T09:00:00-04:00"
    assert doc["context"] == {
        "period": {"start": "2026-03-01T00:00:00-05:00", "end": "2026-03-31T23:59:59-04:00"}
    }
    assert doc["author"] == [{"reference": "Practitioner/doc-1"}]
    assert doc["custodian"] == {"reference": "Organization/clinic-1"}
    assert "relatesTo" not in doc


def test_preview_document_is_preliminary() -> None:
    doc = monthly_document(rich_result(as_of=PREVIEW_AS_OF), SETTINGS)
    assert (doc["status"], doc["docStatus"]) == ("current", "preliminary")


def test_document_type_is_configurable() -> None:
    settings = WriteSettings(document_type=("http://loinc.org", "34109-9", "Note"))
    doc = monthly_document(rich_result(), settings)
    assert doc["type"]["coding"][0]["code"] == "34109-9"


@pytest.mark.parametrize(
    ("kind", "content_type", "render"),
    [
        ("text/html", "text/html", render_log_html),
        ("application/json", "application/json", log_json_text),
    ],
)
def test_attachments_hold_the_log_with_size_and_sha1_hash(kind: str, content_type: str, render: Any) -> None:
    result = rich_result()
    att = attachments(monthly_document(result, SETTINGS))[kind]
    data = base64.b64decode(att["data"])
    assert data == render(result).encode("utf-8")
    assert att["contentType"] == content_type
    assert att["size"] == len(data)
    assert att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert att["creation"] == "2026-04-02T09:00:00-04:00"
    assert att["title"].startswith("RPM monthly log 2026-03")


def test_json_attachment_is_the_log_json() -> None:
    att = attachments(monthly_document(rich_result(), SETTINGS))["application/json"]
    assert json.loads(base64.b64decode(att["data"])) == log_json(rich_result())


@pytest.mark.parametrize("replaces", ["old-1", "DocumentReference/old-1"])
def test_relates_to_replaces_the_previous_document(replaces: str) -> None:
    doc = monthly_document(rich_result(), SETTINGS, replaces=replaces)
    assert doc["relatesTo"] == [{"code": "replaces", "target": {"reference": "DocumentReference/old-1"}}]


def test_replaces_must_name_a_document_reference() -> None:
    with pytest.raises(ValueError, match="DocumentReference"):
        monthly_document(rich_result(), SETTINGS, replaces="ChargeItem/1")


# --- transaction -------------------------------------------------------------------------------------------


def if_none_exist(entry: dict[str, Any]) -> tuple[str, str]:
    (token,) = parse_qs(entry["request"]["ifNoneExist"], strict_parsing=True)["identifier"]
    system, value = token.split("|", 1)
    return system, value


def test_transaction_is_the_document_and_its_charge_items_as_conditional_creates() -> None:
    bundle = transaction_for(rich_result(), SETTINGS)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["DocumentReference"] + ["ChargeItem"] * 4
    for entry in bundle["entry"]:
        request = entry["request"]
        assert request["method"] == "POST" and request["url"] == entry["resource"]["resourceType"]
        system, value = if_none_exist(entry)
        assert system == f"{CANON}/write-key"
        assert value == identifier(entry["resource"], system)
        assert "|" not in value  # searchable on servers that split tokens at every '|'
        assert entry["fullUrl"] == f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{system}|{value}')}"
    # The contract identifier stays first and untouched.
    assert bundle["entry"][0]["resource"]["identifier"][0]["value"] == "p-100|2026-03"


def test_charge_items_reference_the_document_being_created_by_its_urn() -> None:
    bundle = transaction_for(rich_result(), SETTINGS)
    doc_url = bundle["entry"][0]["fullUrl"]
    assert doc_url.startswith("urn:uuid:")
    for entry in bundle["entry"][1:]:
        assert entry["resource"]["supportingInformation"][0] == {"reference": doc_url}
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])


def test_transaction_is_reproducible() -> None:
    assert transaction_for(rich_result(), SETTINGS) == transaction_for(rich_result(), SETTINGS)
    text = json.dumps(transaction_for(rich_result(), SETTINGS), indent=2, ensure_ascii=False) + "\n"
    path = FIXTURES / "rich-2026-03.transaction.json"
    if os.environ.get("RPM_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def keys(bundle: dict[str, Any]) -> list[str]:
    return [e["request"]["ifNoneExist"] for e in bundle["entry"]]


def test_rerun_of_an_unchanged_month_matches_every_earlier_write() -> None:
    first = transaction_for(rich_result(), SETTINGS)
    later = transaction_for(rich_result(as_of=datetime(2026, 4, 5, 7, tzinfo=NY)), SETTINGS)
    assert keys(first) == keys(later)
    assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in later["entry"]]
    assert first != later  # the dates differ; the conditional creates make that harmless


def test_a_changed_result_gets_new_write_keys_only_where_it_changed() -> None:
    first = keys(transaction_for(rich_result(), SETTINGS))
    changed = keys(transaction_for(rich_result(units_99458=2), SETTINGS))
    assert changed[0] != first[0]  # the document's content changed
    assert changed[1:4] == first[1:4]  # 99453, 99454, 99457 unchanged
    assert changed[4] != first[4]  # 99458 has other units
    preview = keys(transaction_for(rich_result(as_of=PREVIEW_AS_OF), SETTINGS))
    assert preview[3] != first[3]  # planned 99457 is not the billable one


def test_transaction_with_replaces_links_the_new_document() -> None:
    bundle = transaction_for(rich_result(), SETTINGS, replaces="old-1")
    doc = bundle["entry"][0]["resource"]
    assert doc["relatesTo"][0]["target"] == {"reference": "DocumentReference/old-1"}


def test_create_entry_percent_encodes_the_identifier_token() -> None:
    resource = {"resourceType": "Basic", "identifier": [{"system": "http://x.org/k", "value": "a|b c&d"}]}
    entry = create_entry(resource, "http://x.org/k")
    assert entry["request"]["ifNoneExist"] == "identifier=http://x.org/k%7Ca%7Cb%20c%26d"
    assert if_none_exist(entry) == ("http://x.org/k", "a|b c&d")
    with pytest.raises(ValueError, match="no identifier"):
        create_entry(resource, "http://x.org/other")


# --- PUT entries (retiring earlier writes) -----------------------------------------------------------------


def server_copy(resource: dict[str, Any], rid: str) -> dict[str, Any]:
    return {**resource, "id": rid, "meta": {"versionId": "3"}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [('W/"3"', 'W/"3"'), ('"3"', '"3"'), ("3", 'W/"3"'), (" 7 ", 'W/"7"')],
)
def test_etag_forms(given: str, expected: str) -> None:
    assert etag(given) == expected


def test_status_change_of_a_charge_item_is_a_put_with_if_match() -> None:
    old = server_copy(items_by_code()["99458"], "ci-9")
    entry = status_change_entry(
        old, "entered-in-error", if_match='W/"3"', base_url="http://127.0.0.1:8080/fhir/"
    )
    assert entry["request"] == {"method": "PUT", "url": "ChargeItem/ci-9", "ifMatch": 'W/"3"'}
    assert entry["fullUrl"] == "http://127.0.0.1:8080/fhir/ChargeItem/ci-9"
    assert entry["resource"]["status"] == "entered-in-error"
    assert entry["resource"]["identifier"] == old["identifier"]  # nothing else edited
    assert old["status"] == "billable"  # the input is not mutated


def test_status_change_of_a_document_to_superseded() -> None:
    old = server_copy(monthly_document(rich_result(), SETTINGS), "doc-1")
    entry = status_change_entry(old, "superseded")
    assert entry["request"] == {"method": "PUT", "url": "DocumentReference/doc-1"}
    assert "fullUrl" not in entry
    assert entry["resource"]["status"] == "superseded"


@pytest.mark.parametrize(
    ("resource", "status", "message"),
    [
        (
            {"resourceType": "ChargeItem", "id": "1", "status": "billed"},
            "entered-in-error",
            "manual correction",
        ),
        ({"resourceType": "ChargeItem", "id": "1", "status": "billable"}, "billed", "may not set"),
        ({"resourceType": "DocumentReference", "id": "1", "status": "current"}, "current", "may not set"),
        ({"resourceType": "Patient", "id": "1"}, "entered-in-error", "may not set"),
    ],
)
def test_status_changes_a_run_may_not_make(resource: dict[str, Any], status: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        status_change_entry(resource, status)


def test_update_needs_an_id() -> None:
    with pytest.raises(ValueError, match="id"):
        update_entry({"resourceType": "ChargeItem", "status": "billable"})


def test_transaction_with_creates_and_status_changes_validates() -> None:
    old_doc = server_copy(monthly_document(rich_result(), SETTINGS), "doc-1")
    old_item = server_copy(items_by_code()["99458"], "ci-9")
    entries = [
        *transaction_entries(rich_result(units_99458=2), SETTINGS, replaces="doc-1"),
        status_change_entry(old_doc, "superseded", if_match="1"),
        status_change_entry(old_item, "entered-in-error", if_match="2"),
    ]
    bundle = build_transaction(entries)
    Bundle.model_validate(bundle)
    assert [e["request"]["method"] for e in bundle["entry"]] == ["POST"] * 5 + ["PUT"] * 2


def test_build_transaction_refuses_duplicate_full_urls_and_invalid_resources() -> None:
    entry = transaction_entries(rich_result(), SETTINGS)[1]
    with pytest.raises(ValueError, match="share fullUrl"):
        build_transaction([entry, entry])
    broken = {**entry, "resource": {**entry["resource"], "status": ""}}
    with pytest.raises(OutboundValidationError, match="ChargeItem"):
        build_transaction([broken])


# --- splitting ---------------------------------------------------------------------------------------------


def many_entries(count: int) -> list[dict[str, Any]]:
    """The month's document and `count` ChargeItems (copies of the month's with distinct keys)."""
    doc_entry, *items = transaction_entries(rich_result(), SETTINGS)
    out = [doc_entry]
    for i in range(count):
        resource = json.loads(json.dumps(items[i % len(items)]["resource"]))
        resource["identifier"][1]["value"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"k{i}"))
        out.append(create_entry(resource, f"{CANON}/write-key"))
    return out


@pytest.mark.parametrize(("count", "max_entries", "bundles"), [(4, 8, 1), (7, 8, 1), (8, 8, 2), (9, 3, 5)])
def test_split_repeats_the_document_in_every_bundle(count: int, max_entries: int, bundles: int) -> None:
    entries = many_entries(count)
    doc_url = entries[0]["fullUrl"]
    parts = split_transaction(build_transaction(entries), max_entries)
    assert len(parts) == bundles
    for part in parts:
        assert len(part["entry"]) <= max_entries
        assert part["entry"][0]["fullUrl"] == doc_url  # each bundle can resolve the urn on its own
        Bundle.model_validate(part)
    items = [e["fullUrl"] for part in parts for e in part["entry"][1:]]
    assert items == [e["fullUrl"] for e in entries[1:]]  # each charge once, in order


def test_split_refuses_to_repeat_an_unconditional_entry() -> None:
    entries = many_entries(3)
    del entries[0]["request"]["ifNoneExist"]
    with pytest.raises(ValueError, match="not a conditional create"):
        split_transaction(build_transaction(entries), 2)


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "fragments"),
    [
        (
            {
                "resourceType": "ChargeItem",
                "id": "ci-1",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/1"},
            },
            ["ChargeItem ci-1", "status"],
        ),
        (
            {
                "resourceType": "ChargeItem",
                "identifier": [{"system": "s", "value": "p|99457|2026-03-01"}],
                "status": "billable",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/1"},
                "enteredDate": "2026-04-02T09:00:00",
            },
            ["ChargeItem (no id; identifier s|p|99457|2026-03-01)", "enteredDate"],
        ),
        (
            {"resourceType": "DocumentReference", "id": "d-1", "status": "current", "bogus": 1},
            ["DocumentReference d-1", "bogus", "content"],
        ),
        ({"resourceType": "Bogus", "id": "b"}, ["Bogus b", "not an R4 resource type"]),
        ({"resourceType": "Period", "id": "b"}, ["Period b", "not an R4 resource type"]),
        ({"id": "x"}, ["(unknown type) x", "resourceType is missing"]),
        (["not", "a", "dict"], ["expected a JSON object"]),
    ],
)
def test_validation_errors_name_type_id_and_problem(resource: Any, fragments: list[str]) -> None:
    with pytest.raises(OutboundValidationError) as caught:
        validate_resource(resource)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_validation_messages_leave_out_the_offending_values() -> None:
    resource = {
        "resourceType": "ChargeItem",
        "id": "ci-1",
        "status": "billable",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/1", "display": 12345678},
        "note": [{"text": "SECRET-NOTE", "bogus": "SECRET-VALUE"}],
    }
    with pytest.raises(OutboundValidationError) as caught:
        validate_resource(resource)
    assert "SECRET" not in str(caught.value) and "12345678" not in str(caught.value)
