"""FHIR behaviour the product relies on, run against the sandbox AND ../shared/fhir-reference-server.

One `requests` test body per behaviour, parametrised over both servers (`fhir_server` in conftest.py), so
the sandbox is shown to answer like a third-party engine. Every test makes its own patient and
identifiers, so the servers are shared by the whole session without resets. Where the two may answer
differently and the FHIR specification allows both, the assertion accepts both; what the sandbox does
more strictly is asserted in test_sandbox_fhir_server.py.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from tests.servers import LiveFhir

pytestmark = pytest.mark.integration

CPT = "http://www.ama-assn.org/go/cpt"
CHARGE_KEY = "http://rpm-billing.org/fhir/charge-key"
MONTHLY_LOG = "http://rpm-billing.org/fhir/monthly-log"
LOINC = "http://loinc.org"


def uid() -> str:
    return uuid.uuid4().hex[:16]


def ok(response: requests.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    return body


def assert_outcome(response: requests.Response, status: int, mentions: str | None = None) -> None:
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] in ("error", "fatal")
    if mentions:
        assert mentions in response.text


def create(fhir: LiveFhir, resource: dict[str, Any]) -> dict[str, Any]:
    return ok(fhir.post(resource["resourceType"], resource), 201)


def new_patient(fhir: LiveFhir) -> str:
    return str(
        create(fhir, {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": uid()}]})[
            "id"
        ]
    )


def observation(patient: str, when: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }
    if when:
        resource["effectiveDateTime"] = when
    return resource


def visit(patient: str, **extra: Any) -> dict[str, Any]:
    """A virtual Encounter of the patient."""
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def search(fhir: LiveFhir, type_: str, params: list[tuple[str, str]] | dict[str, str]) -> dict[str, Any]:
    bundle = ok(fhir.get(type_, params=params))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == mode
    }


# ---------------------------------------------------------------------------------------------- metadata


def test_metadata_states_what_the_product_uses(fhir_server: LiveFhir) -> None:
    response = requests.get(
        fhir_server.url("metadata"), headers={"Accept": "application/fhir+json"}, timeout=30
    )
    statement = ok(response)  # no token: real EHRs serve metadata to anyone
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}
    resources = {r["type"]: r for r in rest["resource"]}
    for type_ in ("Patient", "Observation", "Communication", "Consent", "Device", "Encounter", "Group"):
        assert {"read", "search-type"} <= {i["code"] for i in resources[type_]["interaction"]}
    for type_ in ("ChargeItem", "DocumentReference"):
        assert {"create", "update", "read", "search-type"} <= {
            i["code"] for i in resources[type_]["interaction"]
        }
        assert resources[type_]["conditionalCreate"] is True
    observation_params = {p["name"] for p in resources["Observation"]["searchParam"]}
    assert {"patient", "subject", "date", "code", "status", "identifier", "category"} <= observation_params


# ---------------------------------------------------------------------------------------------- CRUD


def test_create_read_update_vread_delete(fhir_server: LiveFhir) -> None:
    fhir = fhir_server
    response = fhir.post("Patient", {"resourceType": "Patient", "id": "client-chosen", "active": False})
    created = ok(response, 201)
    id_, version = created["id"], created["meta"]["versionId"]
    assert id_ != "client-chosen"  # create: the server assigns the id
    assert created["meta"]["lastUpdated"]
    assert response.headers["ETag"] == f'W/"{version}"'
    assert re.fullmatch(
        rf"{re.escape(fhir.base_url)}/Patient/{id_}/_history/{re.escape(version)}",
        response.headers["Location"],
    )

    read = fhir.get(f"Patient/{id_}")
    assert ok(read)["active"] is False
    assert read.headers["ETag"] == f'W/"{version}"'

    stale = fhir.put(
        f"Patient/{id_}",
        {"resourceType": "Patient", "id": id_, "active": True},
        headers={"If-Match": 'W/"999999"'},
    )
    assert_outcome(stale, 412)
    updated = fhir.put(
        f"Patient/{id_}",
        {"resourceType": "Patient", "id": id_, "active": True},
        headers={"If-Match": f'W/"{version}"'},
    )
    new_version = ok(updated)["meta"]["versionId"]
    assert new_version != version
    assert updated.headers["ETag"] == f'W/"{new_version}"'
    assert ok(fhir.get(f"Patient/{id_}"))["active"] is True
    assert ok(fhir.get(f"Patient/{id_}/_history/{version}"))["active"] is False  # vread

    assert fhir.delete(f"Patient/{id_}").status_code in (200, 204)
    assert_outcome(fhir.get(f"Patient/{id_}"), 410 if fhir.name == "sandbox" else 404)


def test_unknown_resource_is_404_with_outcome(fhir_server: LiveFhir) -> None:
    assert_outcome(fhir_server.get(f"Observation/{uid()}"), 404)


def test_if_none_exist_header_creates_once(fhir_server: LiveFhir) -> None:
    value = uid()
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": value}]}
    headers = {"If-None-Exist": f"identifier=urn:test|{value}"}
    first = ok(fhir_server.post("Patient", patient, headers=headers), 201)
    again = ok(fhir_server.post("Patient", patient, headers=headers), 200)
    assert again["id"] == first["id"]
    assert search(fhir_server, "Patient", {"identifier": f"urn:test|{value}"})["total"] == 1


@pytest.mark.parametrize(
    ("body", "path", "status"),
    [
        pytest.param("{not json", "Patient", 400, id="invalid JSON"),
        pytest.param(
            {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
            "Patient",
            400,
            id="type differs from URL",
        ),
        pytest.param({"resourceType": "Patient", "nickname": "x"}, "Patient", 400, id="unknown element"),
        pytest.param({"resourceType": "Patient"}, "NoSuchType", 404, id="unknown resource type"),
    ],
)
def test_bad_writes_answer_operation_outcome(
    fhir_server: LiveFhir, body: Any, path: str, status: int
) -> None:
    if isinstance(body, str):
        response = fhir_server.request(
            "POST", path, data=body, headers={"Content-Type": "application/fhir+json"}
        )
    else:
        response = fhir_server.post(path, body)
    assert_outcome(response, status)


# ---------------------------------------------------------------------------------------------- search


def test_search_by_patient_and_subject(fhir_server: LiveFhir) -> None:
    fhir = fhir_server
    mine, other = new_patient(fhir), new_patient(fhir)
    obs = {create(fhir, observation(mine, "2025-01-10T10:00:00Z"))["id"] for _ in range(2)}
    create(fhir, observation(other, "2025-01-10T10:00:00Z"))
    for params in (
        {"patient": mine},
        {"patient": f"Patient/{mine}"},
        {"subject": f"Patient/{mine}"},
        {"subject": mine},
    ):
        bundle = search(fhir, "Observation", params)
        assert ids(bundle) == obs, params
        assert bundle["total"] == 2
        assert all(e["fullUrl"].endswith(f"/Observation/{e['resource']['id']}") for e in bundle["entry"])


# Readings around the New York February 2025 month bounds (UTC-5 in winter).
READINGS = {
    "before": "2025-01-31T23:30:00-05:00",  # 2025-02-01T04:30Z: January locally, February in UTC
    "first": "2025-02-01T00:10:00-05:00",
    "last": "2025-02-28T23:59:59-05:00",  # 2025-03-01T04:59:59Z: February locally, March in UTC
    "after": "2025-03-01T00:00:00-05:00",
}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param(
            [("date", "ge2025-02-01T00:00:00-05:00"), ("date", "lt2025-03-01T00:00:00-05:00")],
            {"first", "last"},
            id="local month",
        ),
        pytest.param(
            [("date", "ge2025-02-01T00:00:00Z"), ("date", "lt2025-03-01T00:00:00Z")],
            {"before", "first"},
            id="UTC month",
        ),
        pytest.param([("date", "ge2025-02-01T06:00:00+01:00")], {"first", "last", "after"}, id="plus offset"),
        pytest.param([("date", "gt2025-02-28T23:59:59-05:00")], {"after"}, id="gt excludes the instant"),
        pytest.param([("date", "le2025-01-31T23:30:00-05:00")], {"before"}, id="le includes the instant"),
        pytest.param([("date", "lt2025-02-01T05:10:00Z")], {"before"}, id="lt"),
        # Without an offset the server's zone applies (UTC on the reference server, the practice zone on
        # the sandbox app): 05:00 is 05:00Z or 10:00Z.
        pytest.param(
            [("date", "ge2025-02-01T05:00:00")],
            {"UTC": {"first", "last", "after"}, "America/New_York": {"last", "after"}},
            id="no offset: server zone",
        ),
        pytest.param(
            [("date", "2025-02-01")],
            {"UTC": {"before", "first"}, "America/New_York": {"first"}},
            id="a day: server zone",
        ),
    ],
)
def test_observation_date_ranges_compare_instants(
    fhir_server: LiveFhir, params: list[tuple[str, str]], expected: set[str] | dict[str, set[str]]
) -> None:
    if isinstance(expected, dict):
        assert fhir_server.timezone in expected, f"no expectation for a server in {fhir_server.timezone}"
        expected = expected[fhir_server.timezone]
    patient = new_patient(fhir_server)
    by_id = {create(fhir_server, observation(patient, when))["id"]: name for name, when in READINGS.items()}
    bundle = search(fhir_server, "Observation", [("patient", patient), *params])
    assert {by_id[i] for i in ids(bundle)} == expected


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        ("ge2025-01-10T10:15:00Z", True),  # the visit is still going on
        ("lt2025-01-10T10:15:00Z", True),  # it started before
        ("ge2025-01-10T10:31:00Z", False),
        ("lt2025-01-10T10:00:00Z", False),
        ("2025-01-10", True),
        ("2025-01-11", False),
    ],
)
def test_encounter_date_searches_its_period(fhir_server: LiveFhir, value: str, matches: bool) -> None:
    patient = new_patient(fhir_server)
    period = {"start": "2025-01-10T10:00:00Z", "end": "2025-01-10T10:30:00Z"}
    encounter = create(fhir_server, visit(patient, period=period))
    bundle = search(fhir_server, "Encounter", {"patient": patient, "date": value})
    assert ids(bundle) == ({encounter["id"]} if matches else set())


def communication(patient: str, sent: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient}"},
        "sent": sent,
        **extra,
    }


def test_communication_sent_range_and_status(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    inside = create(fhir_server, communication(patient, "2025-02-14T09:00:00-05:00"))
    create(fhir_server, communication(patient, "2025-03-01T09:00:00-05:00"))
    attempt = create(fhir_server, communication(patient, "2025-02-15T09:00:00-05:00", status="not-done"))
    month = [("sent", "ge2025-02-01T00:00:00-05:00"), ("sent", "lt2025-03-01T00:00:00-05:00")]
    assert ids(search(fhir_server, "Communication", [("patient", patient), *month])) == {
        inside["id"],
        attempt["id"],
    }
    completed = search(fhir_server, "Communication", [("patient", patient), ("status", "completed"), *month])
    assert ids(completed) == {inside["id"]}
    either = search(
        fhir_server, "Communication", [("patient", patient), ("status", "completed,not-done"), *month]
    )
    assert ids(either) == {inside["id"], attempt["id"]}


def test_include_communication_encounter(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    encounter = create(fhir_server, visit(patient))
    with_visit = create(
        fhir_server,
        communication(
            patient, "2025-02-14T09:00:00Z", encounter={"reference": f"Encounter/{encounter['id']}"}
        ),
    )
    without = create(fhir_server, communication(patient, "2025-02-15T09:00:00Z"))
    bundle = search(fhir_server, "Communication", {"patient": patient, "_include": "Communication:encounter"})
    assert bundle["total"] == 2
    assert ids(bundle) == {with_visit["id"], without["id"]}
    assert ids(bundle, "include") == {encounter["id"]}


def test_identifier_search_forms(fhir_server: LiveFhir) -> None:
    system, value = f"urn:test:{uid()}", uid()
    with_system = create(
        fhir_server, {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}
    )
    without_system = create(fhir_server, {"resourceType": "Patient", "identifier": [{"value": value}]})
    assert ids(search(fhir_server, "Patient", {"identifier": f"{system}|{value}"})) == {with_system["id"]}
    assert ids(search(fhir_server, "Patient", {"identifier": value})) == {
        with_system["id"],
        without_system["id"],
    }
    assert ids(search(fhir_server, "Patient", {"identifier": f"|{value}"})) == {without_system["id"]}
    assert ids(search(fhir_server, "Patient", {"identifier": f"{system}|"})) == {with_system["id"]}


def test_code_status_category_id_and_last_updated(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    vital = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
        ]
    }
    pulse = create(fhir_server, observation(patient, "2025-02-01T10:00:00Z", category=[vital]))
    weight = create(
        fhir_server,
        observation(
            patient,
            "2025-02-01T11:00:00Z",
            status="amended",
            code={"coding": [{"system": LOINC, "code": "29463-7"}]},
        ),
    )
    assert ids(search(fhir_server, "Observation", {"patient": patient, "code": f"{LOINC}|8867-4"})) == {
        pulse["id"]
    }
    assert ids(search(fhir_server, "Observation", {"patient": patient, "code": "29463-7"})) == {weight["id"]}
    assert ids(search(fhir_server, "Observation", {"patient": patient, "status": "amended"})) == {
        weight["id"]
    }
    assert ids(search(fhir_server, "Observation", {"patient": patient, "category": "vital-signs"})) == {
        pulse["id"]
    }
    both = f"{pulse['id']},{weight['id']}"
    assert ids(search(fhir_server, "Observation", {"_id": both})) == {pulse["id"], weight["id"]}
    since = pulse["meta"]["lastUpdated"]
    recent = search(fhir_server, "Observation", {"patient": patient, "_lastUpdated": f"ge{since}"})
    assert ids(recent) == {pulse["id"], weight["id"]}
    assert (
        search(fhir_server, "Observation", {"patient": patient, "_lastUpdated": "lt2000-01-01"})["total"] == 0
    )


def test_paging_follows_next_links(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    made = {
        create(fhir_server, observation(patient, f"2025-02-0{day}T10:00:00Z"))["id"] for day in range(1, 6)
    }
    bundle = search(fhir_server, "Observation", {"patient": patient, "_count": "2"})
    assert bundle["total"] == 5
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        assert len(bundle.get("entry", [])) <= 2
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        following = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not following:
            break
        bundle = ok(
            fhir_server.session.get(following[0], headers={"Accept": "application/fhir+json"}, timeout=30)
        )
    assert pages == 3
    assert sorted(seen) == sorted(made)  # every resource once, none twice


def test_summary_count_gives_total_only(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    for _ in range(3):
        create(fhir_server, observation(patient, "2025-02-01T10:00:00Z"))
    bundle = search(fhir_server, "Observation", {"patient": patient, "_summary": "count"})
    assert bundle["total"] == 3
    assert not bundle.get("entry")


def test_group_by_member_and_read(fhir_server: LiveFhir) -> None:
    first, second, outsider = (new_patient(fhir_server) for _ in range(3))
    group = create(
        fhir_server,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{first}"}},
                {"entity": {"reference": f"Patient/{second}"}},
            ],
        },
    )
    assert ids(search(fhir_server, "Group", {"member": f"Patient/{second}"})) == {group["id"]}
    assert search(fhir_server, "Group", {"member": f"Patient/{outsider}"})["total"] == 0
    members = ok(fhir_server.get(f"Group/{group['id']}"))["member"]
    assert [m["entity"]["reference"] for m in members] == [f"Patient/{first}", f"Patient/{second}"]


def known_difference(request: pytest.FixtureRequest, fhir: LiveFhir, reason: str) -> None:
    """Mark a test the reference server is known to fail (strict: a fix there must be noticed)."""
    if fhir.name == "reference":
        request.applymarker(pytest.mark.xfail(reason=f"reference server: {reason}", strict=True))


def charge_item(patient: str, code: str, key: str) -> dict[str, Any]:
    return {
        "resourceType": "ChargeItem",
        "identifier": [{"system": CHARGE_KEY, "value": key}],
        "status": "billable",
        "code": {"coding": [{"system": CPT, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "occurrencePeriod": {"start": "2025-02-01T00:00:00-05:00", "end": "2025-03-01T00:00:00-05:00"},
    }


def test_charge_item_by_patient_code_identifier(fhir_server: LiveFhir) -> None:
    patient, other = new_patient(fhir_server), new_patient(fhir_server)
    supply = create(fhir_server, charge_item(patient, "99454", f"{patient}-99454-2025-02-01"))
    setup = create(fhir_server, charge_item(patient, "99453", f"{patient}-99453-2025-02-01"))
    create(fhir_server, charge_item(other, "99454", f"{other}-99454-2025-02-01"))
    assert ids(search(fhir_server, "ChargeItem", {"patient": patient})) == {supply["id"], setup["id"]}
    assert ids(
        search(fhir_server, "ChargeItem", {"subject": f"Patient/{patient}", "code": f"{CPT}|99453"})
    ) == {setup["id"]}
    by_key = search(fhir_server, "ChargeItem", {"identifier": f"{CHARGE_KEY}|{patient}-99454-2025-02-01"})
    assert ids(by_key) == {supply["id"]}


@pytest.mark.parametrize("escaped", [True, False], ids=["escaped pipes", "bare pipes"])
def test_identifier_values_holding_pipes(
    request: pytest.FixtureRequest, fhir_server: LiveFhir, escaped: bool
) -> None:
    """The contract's charge keys are `{patient}|{code}|{period start}`: searchable, also in ifNoneExist."""
    known_difference(request, fhir_server, "token search splits values on every '|', escaped or not")
    patient = new_patient(fhir_server)
    key = f"{patient}|99454|2025-02-01"
    wanted = key.replace("|", "\\|") if escaped else key
    item = create(fhir_server, charge_item(patient, "99454", key))
    assert ids(search(fhir_server, "ChargeItem", {"identifier": f"{CHARGE_KEY}|{wanted}"})) == {item["id"]}
    entry = conditional_entry(charge_item(patient, "99454", key), f"identifier={CHARGE_KEY}|{wanted}")
    again = ok(fhir_server.post("", transaction(entry)))["entry"][0]
    assert again["response"]["status"].startswith("200")  # found: nothing new
    assert search(fhir_server, "ChargeItem", {"patient": patient})["total"] == 1


def test_document_reference_by_patient_identifier_status(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)

    def document(status: str, month: str) -> dict[str, Any]:
        return {
            "resourceType": "DocumentReference",
            "identifier": [{"system": MONTHLY_LOG, "value": f"{patient}-{month}"}],
            "status": status,
            "type": {"coding": [{"system": LOINC, "code": "11506-3"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "content": [{"attachment": {"contentType": "text/html", "data": "PHA+bG9nPC9wPg=="}}],
        }

    current = create(fhir_server, document("current", "2025-02"))
    old = create(fhir_server, document("superseded", "2025-01"))
    assert ids(search(fhir_server, "DocumentReference", {"patient": patient})) == {current["id"], old["id"]}
    assert ids(search(fhir_server, "DocumentReference", {"patient": patient, "status": "current"})) == {
        current["id"]
    }
    by_key = search(fhir_server, "DocumentReference", {"identifier": f"{MONTHLY_LOG}|{patient}-2025-01"})
    assert ids(by_key) == {old["id"]}


@pytest.mark.parametrize(
    ("type_", "params", "named"),
    [
        ("Observation", {"nonsense": "1"}, "nonsense"),
        ("ChargeItem", {"status": "billable"}, "status"),  # R4 ChargeItem has no status search parameter
        ("Observation", {"code:text": "pulse"}, "text"),
    ],
)
def test_unsupported_search_parameter_is_400_naming_it(
    fhir_server: LiveFhir, type_: str, params: dict[str, str], named: str
) -> None:
    assert_outcome(fhir_server.get(type_, params=params), 400, mentions=named)


def test_offsetless_datetime_is_stored_and_read_in_server_zone(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    reading = create(fhir_server, observation(patient, "2025-01-10T10:00:00"))
    assert reading["effectiveDateTime"] == "2025-01-10T10:00:00"  # kept as sent
    instant = datetime(2025, 1, 10, 10, tzinfo=ZoneInfo(fhir_server.timezone)).astimezone(UTC)
    at = instant.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(search(fhir_server, "Observation", {"patient": patient, "date": f"ge{at}"})) == {reading["id"]}
    assert search(fhir_server, "Observation", {"patient": patient, "date": f"gt{at}"})["total"] == 0


# ---------------------------------------------------------------------------------------------- Bundles


def test_transaction_rewrites_urn_uuid_references(fhir_server: LiveFhir) -> None:
    patient_url, encounter_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": encounter_url,
                "resource": visit("placeholder") | {"subject": {"reference": patient_url}},
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:test", "value": uid()}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": communication(
                    "placeholder", "2025-02-14T09:00:00Z", encounter={"reference": encounter_url}
                )
                | {"subject": {"reference": patient_url}},
                "request": {"method": "POST", "url": "Communication"},
            },
        ],
    }
    response = ok(fhir_server.post("", bundle))
    assert response["type"] == "transaction-response"
    entries = response["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "201", "201"]
    encounter_id = entries[0]["response"]["location"].split("/")[1]
    patient_id = entries[1]["response"]["location"].split("/")[1]
    comm_id = entries[2]["response"]["location"].split("/")[1]
    stored = ok(fhir_server.get(f"Communication/{comm_id}"))
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["encounter"]["reference"] == f"Encounter/{encounter_id}"
    assert ok(fhir_server.get(f"Encounter/{encounter_id}"))["subject"]["reference"] == f"Patient/{patient_id}"


def conditional_entry(resource: dict[str, Any], condition: str) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": condition},
    }


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_conditional_create_is_idempotent(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    key = f"{patient}-99454-2025-02-01"
    entry = conditional_entry(charge_item(patient, "99454", key), f"identifier={CHARGE_KEY}|{key}")
    first = ok(fhir_server.post("", transaction(entry)))["entry"][0]
    assert first["response"]["status"].startswith("201")
    second = ok(fhir_server.post("", transaction(entry)))["entry"][0]
    assert second["response"]["status"].startswith("200")
    assert second["response"]["location"].split("/")[1] == first["response"]["location"].split("/")[1]
    assert search(fhir_server, "ChargeItem", {"identifier": f"{CHARGE_KEY}|{key}"})["total"] == 1


def test_transaction_is_all_or_nothing(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    duplicated = uid()
    for _ in range(2):  # two resources answer the condition: a conditional create must fail with 412
        create(
            fhir_server,
            {"resourceType": "Patient", "identifier": [{"system": "urn:dup", "value": duplicated}]},
        )
    fresh_key = f"{patient}-99457-2025-02-01"
    bundle = transaction(
        {
            "resource": charge_item(patient, "99457", fresh_key),
            "request": {"method": "POST", "url": "ChargeItem"},
        },
        conditional_entry(
            {"resourceType": "Patient", "identifier": [{"system": "urn:dup", "value": duplicated}]},
            f"identifier=urn:dup|{duplicated}",
        ),
    )
    assert_outcome(fhir_server.post("", bundle), 412)
    assert search(fhir_server, "ChargeItem", {"identifier": f"{CHARGE_KEY}|{fresh_key}"})["total"] == 0


def test_transaction_put_with_if_match(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    item = create(fhir_server, charge_item(patient, "99454", f"{patient}-99454-2025-02-01"))
    version = item["meta"]["versionId"]
    voided = {**item, "status": "entered-in-error"}
    voided.pop("meta")
    put = {
        "resource": voided,
        "request": {"method": "PUT", "url": f"ChargeItem/{item['id']}", "ifMatch": f'W/"{version}"'},
    }
    response = ok(fhir_server.post("", transaction(put)))
    assert response["entry"][0]["response"]["status"].startswith("200")
    assert ok(fhir_server.get(f"ChargeItem/{item['id']}"))["status"] == "entered-in-error"
    assert_outcome(fhir_server.post("", transaction(put)), 412)  # the version moved on: stale If-Match


def test_batch_entries_succeed_or_fail_alone(fhir_server: LiveFhir) -> None:
    patient = new_patient(fhir_server)
    duplicated = uid()
    for _ in range(2):
        create(
            fhir_server,
            {"resourceType": "Patient", "identifier": [{"system": "urn:dup", "value": duplicated}]},
        )
    key = f"{patient}-99458-2025-02-01"
    bundle = transaction(
        {"resource": charge_item(patient, "99458", key), "request": {"method": "POST", "url": "ChargeItem"}},
        conditional_entry(
            {"resourceType": "Patient", "identifier": [{"system": "urn:dup", "value": duplicated}]},
            f"identifier=urn:dup|{duplicated}",
        ),
        kind="batch",
    )
    response = ok(fhir_server.post("", bundle))
    assert response["type"] == "batch-response"
    first, second = response["entry"]
    assert first["response"]["status"].startswith("201")
    assert second["response"]["status"].startswith("412")
    assert second["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert search(fhir_server, "ChargeItem", {"identifier": f"{CHARGE_KEY}|{key}"})["total"] == 1
