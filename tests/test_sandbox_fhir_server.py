"""Sandbox-only behaviour of the FHIR server, through HTTP: what it does more strictly than the reference
server (FHIR's 410 Gone, 400 for what it does not support), its CapabilityStatement, its options.

The running sandbox (`sandbox_server`, loopback HTTP) serves most tests; blueprint options
(`readonly_types`, `require_auth=False`, `latency`) are tried on small Flask apps with the test client.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from flask import Flask
from flask.testing import FlaskClient

from smart_app.sandbox import search
from smart_app.sandbox.fhir_capability import OAUTH_URIS
from smart_app.sandbox.fhir_server import create_fhir_blueprint
from smart_app.sandbox.store import FhirStore
from smart_app.sandbox.tokens import TokenStore
from tests.servers import LiveFhir, SandboxServer

pytestmark = pytest.mark.integration


def uid() -> str:
    return uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def fhir(sandbox_server: SandboxServer) -> LiveFhir:
    return sandbox_server.client("system/*.*")


def assert_outcome(response: Any, status: int, mentions: str = "") -> dict[str, Any]:
    body: dict[str, Any] = response.json() if isinstance(response, requests.Response) else response.get_json()
    assert response.status_code == status, body
    assert body["resourceType"] == "OperationOutcome"
    assert mentions in body["issue"][0]["diagnostics"]
    return body


def patient(fhir: LiveFhir) -> dict[str, Any]:
    response = fhir.post(
        "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": uid()}]}
    )
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


def reading(patient_id: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
    }


# ---------------------------------------------------------------------------------------------- metadata


def test_capability_statement_is_valid_and_points_at_the_auth_server(sandbox_server: SandboxServer) -> None:
    statement = requests.get(f"{sandbox_server.base_url}/metadata", timeout=30).json()
    CapabilityStatement.model_validate(statement)  # valid FHIR (R4B model)
    rest = statement["rest"][0]
    assert [r["type"] for r in rest["resource"]] == list(search.SUPPORTED_TYPES)
    communication = next(r for r in rest["resource"] if r["type"] == "Communication")
    assert communication["searchInclude"] == ["Communication:encounter"]
    assert {p["name"] for p in communication["searchParam"]} >= {
        "patient",
        "subject",
        "sent",
        "status",
        "_id",
    }
    charge_params = {
        p["name"] for p in next(r for r in rest["resource"] if r["type"] == "ChargeItem")["searchParam"]
    }
    assert "status" not in charge_params  # R4 ChargeItem has none, so the sandbox does not claim one
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    oauth = next(e for e in rest["security"]["extension"] if e["url"] == OAUTH_URIS)
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    config = sandbox_server.running.app.config
    assert uris["authorize"] == config["SANDBOX_AUTHORIZE_URL"]
    assert uris["token"] == config["SANDBOX_TOKEN_URL"]
    assert uris["introspect"] == config["SANDBOX_INTROSPECT_URL"]
    assert statement["implementation"]["url"] == sandbox_server.base_url
    assert sandbox_server.store.timezone in rest["documentation"]


def _client(**options: Any) -> tuple[FlaskClient, FhirStore]:
    store = FhirStore()
    app = Flask(__name__)
    app.register_blueprint(create_fhir_blueprint(store, TokenStore(), **options), url_prefix="/fhir")
    return app.test_client(), store


def test_readonly_types_refuse_writes_and_say_so_in_metadata() -> None:
    client, _ = _client(require_auth=False, readonly_types={"ChargeItem"})
    statement = client.get("/fhir/metadata").get_json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {i["code"] for i in resources["ChargeItem"]["interaction"]} == {
        "read",
        "vread",
        "history-instance",
        "search-type",
    }
    assert resources["ChargeItem"]["conditionalCreate"] is False
    assert "create" in {i["code"] for i in resources["DocumentReference"]["interaction"]}
    item = {
        "resourceType": "ChargeItem",
        "status": "billable",
        "code": {"text": "99454"},
        "subject": {"reference": "Patient/p"},
    }
    assert_outcome(client.post("/fhir/ChargeItem", json=item), 405, "refuse writes of ChargeItem")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": item, "request": {"method": "POST", "url": "ChargeItem"}}],
    }
    assert_outcome(client.post("/fhir", json=bundle), 405)


def test_without_auth_no_token_is_needed_and_metadata_says_so() -> None:
    client, _ = _client(require_auth=False)
    assert client.get("/fhir/Patient").status_code == 200
    security = client.get("/fhir/metadata").get_json()["rest"][0]["security"]
    assert "extension" not in security and "service" not in security


def test_latency_is_added_to_every_request() -> None:
    client, _ = _client(require_auth=False, latency=0.05)
    started = time.monotonic()
    client.get("/fhir/Patient")
    assert time.monotonic() - started >= 0.05


def test_internal_errors_answer_500_with_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    client, store = _client(require_auth=False)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "lookup", broken)
    body = assert_outcome(client.get("/fhir/Patient/x"), 500, "internal error")
    assert "disk on fire" not in str(body)  # no internals leak to the client


# ---------------------------------------------------------------------------------------------- versions


def test_deleted_resources_are_gone_and_keep_their_history(fhir: LiveFhir) -> None:
    made = patient(fhir)
    id_ = made["id"]
    assert fhir.put(f"Patient/{id_}", {**made, "active": True}).status_code == 200
    assert_outcome(fhir.delete(f"Patient/{id_}"), 200, "deleted")
    assert_outcome(fhir.get(f"Patient/{id_}"), 410, "was deleted")  # FHIR: 410 Gone, not 404
    assert_outcome(fhir.get(f"Patient/{id_}/_history/3"), 410)
    assert fhir.get(f"Patient/{id_}/_history/1").json()["meta"]["versionId"] == "1"
    assert_outcome(fhir.get(f"Patient/{id_}/_history/9"), 404)
    history = fhir.get(f"Patient/{id_}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert_outcome(fhir.delete(f"Patient/{id_}"), 200, "already deleted")
    assert_outcome(fhir.delete(f"Patient/{uid()}"), 404)
    recreated = fhir.put(f"Patient/{id_}", {"resourceType": "Patient", "id": id_})
    assert recreated.status_code == 201 and recreated.headers["ETag"] == 'W/"4"'


def test_update_creates_with_the_clients_id_and_checks_it(fhir: LiveFhir) -> None:
    id_ = f"chosen-{uid()}"
    created = fhir.put(f"Patient/{id_}", {"resourceType": "Patient", "id": id_})
    assert created.status_code == 201
    assert created.headers["Location"] == f"{fhir.base_url}/Patient/{id_}/_history/1"
    assert "Last-Modified" in created.headers
    assert_outcome(
        fhir.put(f"Patient/{id_}", {"resourceType": "Patient", "id": "other"}), 400, "must equal the id"
    )
    assert_outcome(fhir.put(f"Patient/{id_}", {"resourceType": "Patient"}), 400)
    assert_outcome(fhir.put("Patient/bad id!", {"resourceType": "Patient", "id": "bad id!"}), 400)


def test_prefer_return(fhir: LiveFhir) -> None:
    minimal = fhir.post("Patient", {"resourceType": "Patient"}, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and not minimal.content
    assert minimal.headers["Location"].startswith(f"{fhir.base_url}/Patient/")
    outcome = fhir.post("Patient", {"resourceType": "Patient"}, headers={"Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201 and outcome.json()["resourceType"] == "OperationOutcome"


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/fhir+json", 200),
        ("application/json", 200),
        ("*/*", 200),
        ("application/fhir+xml;q=1, application/json;q=0.5", 200),
        ("application/*", 200),
        ("application/fhir+xml", 406),
        ("text/html", 406),
    ],
)
def test_accept_header(fhir: LiveFhir, accept: str, status: int) -> None:
    assert fhir.get("Patient", params={"_count": "1"}, headers={"Accept": accept}).status_code == status


def test_json_only(fhir: LiveFhir) -> None:
    assert_outcome(
        fhir.get("Patient", headers={"Accept": "application/fhir+xml"}), 406, "application/fhir+json"
    )
    assert_outcome(fhir.get("Patient", params={"_format": "xml"}), 406)
    assert fhir.get("Patient", params={"_format": "json", "_count": "1"}).status_code == 200
    xml = fhir.request("POST", "Patient", data="<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert_outcome(xml, 415)
    pretty = fhir.get("Patient", params={"_count": "1", "_pretty": "true"})
    assert pretty.status_code == 200 and "\n" in pretty.text


# ---------------------------------------------------------------------------------------------- unsupported


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "mentions"),
    [
        ("GET", "Medication", {}, 400, "not served by this sandbox"),
        ("GET", "NoSuchType/1", {}, 404, "unknown resource type"),
        ("GET", "Patient/$everything", {}, 400, "operations"),
        ("GET", "$export", {}, 400, "operations"),
        ("GET", "", {}, 400, "system-level search"),
        ("PATCH", "Patient/x", {}, 405, "PATCH"),
        ("PUT", "Patient", {}, 405, "conditional update"),
        ("GET", "Observation", {"subject.name": "x"}, 400, "chained"),
        ("GET", "Observation", {"code:text": "x"}, 400, "modifier"),
        ("GET", "Observation", {"_include": "Observation:subject"}, 400, "_include=Observation:subject"),
        ("GET", "Observation", {"_revinclude": "Provenance:target"}, 400, "_revinclude"),
        ("GET", "Observation", {"_sort": "code"}, 400, "_sort=code"),
        ("GET", "Observation", {"_summary": "true"}, 400, "_summary=true"),
        ("GET", "Observation", {"_elements": "id"}, 400, "_elements"),
        ("GET", "Observation", {"date": "ap2025-01-01"}, 400, "prefix 'ap'"),
        ("GET", "Observation", {"date": "2025-13-01"}, 400, "not a FHIR date"),
        ("GET", "Observation", {"_count": "ten"}, 400, "_count"),
        ("GET", "Observation", {"patient": "a/b/c d"}, 400, "not a reference"),
        ("GET", "ChargeItem", {"status": "billable"}, 400, "'status' is not supported on ChargeItem"),
    ],
)
def test_unsupported_requests_answer_400_not_a_wrong_answer(
    fhir: LiveFhir, method: str, path: str, params: dict[str, str], status: int, mentions: str
) -> None:
    assert_outcome(fhir.request(method, path, params=params), status, mentions)


# ---------------------------------------------------------------------------------------------- search extras


def test_sort_count_and_post_search(fhir: LiveFhir) -> None:
    pid = patient(fhir)["id"]
    for when in ("2025-02-03T10:00:00Z", "2025-02-01T10:00:00Z", "2025-02-02T10:00:00Z"):
        assert fhir.post("Observation", reading(pid, when)).status_code == 201
    newest_first = fhir.get("Observation", params={"patient": pid, "_sort": "-date"}).json()
    assert [e["resource"]["effectiveDateTime"][:10] for e in newest_first["entry"]] == [
        "2025-02-03",
        "2025-02-02",
        "2025-02-01",
    ]
    by_form = fhir.request(
        "POST",
        "Observation/_search",
        data={"patient": pid, "date": "ge2025-02-02T00:00:00Z", "_sort": "date"},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).json()
    assert [e["resource"]["effectiveDateTime"][:10] for e in by_form["entry"]] == ["2025-02-02", "2025-02-03"]
    huge = fhir.get("Observation", params={"patient": pid, "_count": "100000"}).json()
    assert huge["total"] == 3 and len(huge["entry"]) == 3  # _count above the maximum is capped, not refused


def test_empty_parameters_are_ignored_and_escaped_commas_kept(fhir: LiveFhir) -> None:
    value = f"a,b-{uid()}"
    made = fhir.post(
        "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": value}]}
    ).json()
    escaped = value.replace(",", "\\,")
    found = fhir.get("Patient", params={"identifier": f"urn:t|{escaped}", "active": ""})
    assert found.status_code == 400  # 'active' is not supported, even empty: the name is checked
    found = fhir.get("Patient", params={"identifier": f"urn:t|{escaped}", "_id": ""}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [made["id"]]


# ---------------------------------------------------------------------------------------------- Bundles


@pytest.mark.parametrize(
    ("bundle", "mentions"),
    [
        ({"resourceType": "Bundle", "type": "collection"}, "transaction or batch"),
        ({"resourceType": "Patient"}, "transaction or batch Bundle"),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": {"resourceType": "Patient"}}],
            },
            "has no request",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": "urn:uuid:1",
                        "resource": {"resourceType": "Patient"},
                        "request": {"method": "POST", "url": "Patient"},
                    },
                    {
                        "fullUrl": "urn:uuid:1",
                        "resource": {"resourceType": "Patient"},
                        "request": {"method": "POST", "url": "Patient"},
                    },
                ],
            },
            "distinct fullUrls",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": {"resourceType": "Patient"},
                        "request": {"method": "POST", "url": "http://elsewhere.example/fhir/Patient"},
                    }
                ],
            },
            "outside this server",
        ),
    ],
)
def test_malformed_bundles_are_400(fhir: LiveFhir, bundle: dict[str, Any], mentions: str) -> None:
    assert_outcome(fhir.post("", bundle), 400, mentions)


def test_transaction_with_a_dangling_urn_uuid_stores_nothing(fhir: LiveFhir) -> None:
    marker = uid()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:m", "value": marker}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": reading("placeholder", "2025-02-01T10:00:00Z")
                | {"subject": {"reference": "urn:uuid:nowhere"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    assert_outcome(fhir.post("", bundle), 400, "urn:uuid:nowhere")
    assert fhir.get("Patient", params={"identifier": f"urn:m|{marker}"}).json()["total"] == 0


def marked_patient(marker: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:m", "value": marker}], **extra}


def post_entry(resource: dict[str, Any], if_none_exist: str | None = None) -> dict[str, Any]:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"resource": resource, "request": request}


def test_transaction_names_its_invalid_entry_and_stores_nothing(fhir: LiveFhir) -> None:
    marker = uid()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            post_entry(marked_patient(marker)),
            post_entry(marked_patient(marker, birthDate="the fifth of May")),
        ],
    }
    body = assert_outcome(
        fhir.post("", bundle), 400, "transaction failed at entry 1 (POST Patient): invalid Patient"
    )
    assert body["issue"][0]["code"] == "structure" and "Patient.birthDate" in body["issue"][0]["diagnostics"]
    assert fhir.get("Patient", params={"identifier": f"urn:m|{marker}"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("other", "status", "mentions"),
    [
        # DELETEs run before POSTs: the DELETE's 404 is the answer
        (
            {"request": {"method": "DELETE", "url": "Patient/never-was"}},
            404,
            "entry 0 (DELETE Patient/never-was)",
        ),
        # PUTs run after POSTs: the invalid POST is the answer
        (
            {
                "request": {"method": "PUT", "url": "Patient/x"},
                "resource": {"resourceType": "Patient", "id": "y"},
            },
            400,
            "entry 1 (POST Patient): invalid Patient",
        ),
    ],
)
def test_transaction_errors_come_in_processing_order(
    fhir: LiveFhir, other: dict[str, Any], status: int, mentions: str
) -> None:
    """Entries are validated before the transaction takes the store, yet an invalid one is reported only where
    FHIR's processing order (DELETE, POST, PUT, GET) reaches it."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [other, post_entry(marked_patient(uid(), birthDate="soon"))],
    }
    assert_outcome(fhir.post("", bundle), status, mentions)


def test_a_conditional_create_that_matches_returns_the_match_unvalidated(fhir: LiveFhir) -> None:
    marker = uid()
    existing = fhir.post("Patient", marked_patient(marker)).json()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [post_entry(marked_patient(marker, birthDate="soon"), f"identifier=urn:m|{marker}")],
    }
    response = fhir.post("", bundle)
    assert response.status_code == 200, response.text
    entry = response.json()["entry"][0]
    assert entry["response"]["status"] == "200 OK" and entry["resource"]["id"] == existing["id"]


def test_transaction_runs_deletes_first_and_reads_last(fhir: LiveFhir) -> None:
    old = patient(fhir)
    marker = uid()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient?identifier=urn:m|{marker}"}},
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:m", "value": marker}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "DELETE", "url": f"Patient/{old['id']}"}},
        ],
    }
    response = fhir.post("", bundle).json()
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["200 OK", "201 Created", "200 OK"]
    assert response["entry"][0]["resource"]["total"] == 1  # the GET saw the POST: reads run last
    assert fhir.get(f"Patient/{old['id']}").status_code == 410


def test_a_write_through_a_full_url_in_a_batch(fhir: LiveFhir) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": f"{fhir.base_url}/Patient"},
            }
        ],
    }
    entry = fhir.post("", bundle).json()["entry"][0]
    assert entry["response"]["status"] == "201 Created"
    assert entry["fullUrl"] == f"{fhir.base_url}/Patient/{entry['resource']['id']}"


def test_concurrent_writes_over_http(fhir: LiveFhir) -> None:
    pid = patient(fhir)["id"]

    def write(n: int) -> int:
        own = LiveFhir(fhir.name, fhir.base_url, fhir.timezone)
        own.session.headers.update(fhir.session.headers)
        return own.post("Observation", reading(pid, f"2025-02-{1 + n % 28:02d}T10:00:00Z")).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(write, range(40)))
    assert statuses == [201] * 40
    assert fhir.get("Observation", params={"patient": pid, "_summary": "count"}).json()["total"] == 40
