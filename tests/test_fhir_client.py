"""FhirClient against `responses`: reads, paging, same-origin links, writes, Bundles, capabilities."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from responses import matchers

from smart_app.auth import BearerAuth, ClientSecretAuth
from smart_app.fhir_client import (
    FhirClient,
    ServerLimits,
    entry_responses,
    has_identifier,
    identifier_query,
    token,
)
from smart_app.http import (
    FhirError,
    ForeignOriginError,
    NotFoundError,
    OutcomeUnknownError,
    PreconditionFailedError,
    RetryPolicy,
)

BASE = "http://127.0.0.1:8080/fhir"
CHARGE_KEY = "http://rpm-billing.org/fhir/charge-key"


def make_client(**kwargs) -> tuple[FhirClient, list[float]]:
    slept: list[float] = []
    return FhirClient(BASE, kwargs.pop("auth", BearerAuth("tok")), sleep=slept.append, **kwargs), slept


def obs(n: int) -> dict:
    return {"resourceType": "Observation", "id": f"o{n}"}


def searchset(resources: list[dict], next_url: str | None = None, *, included: tuple[dict, ...] = ()) -> dict:
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]
        + [{"resource": r, "search": {"mode": "include"}} for r in included],
    }
    if next_url:
        bundle["link"] = [{"relation": "self", "url": "ignored"}, {"relation": "next", "url": next_url}]
    return bundle


def outcome(text: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "x", "diagnostics": text}],
    }


def query_of(call) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(call.request.url).query)


# --------------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------------


@responses.activate
def test_read():
    responses.get(f"{BASE}/Patient/p-1", json={"resourceType": "Patient", "id": "p-1"})
    client, _ = make_client()
    assert client.read("Patient", "p-1") == {"resourceType": "Patient", "id": "p-1"}
    headers = responses.calls[0].request.headers
    assert headers["Accept"] == "application/fhir+json" and headers["Authorization"] == "Bearer tok"


@responses.activate
def test_read_not_found_carries_the_servers_text():
    responses.get(f"{BASE}/Patient/gone", status=404, json=outcome("Resource Patient/gone is not known"))
    client, _ = make_client()
    with pytest.raises(NotFoundError) as info:
        client.read("Patient", "gone")
    assert info.value.status == 404
    assert "Resource Patient/gone is not known" in str(info.value)


@responses.activate
def test_read_of_the_wrong_type_or_non_json_is_an_error():
    responses.get(f"{BASE}/Patient/p1", json={"resourceType": "Group", "id": "p1"})
    responses.get(f"{BASE}/Patient/p2", body="<html>proxy login</html>")
    client, _ = make_client()
    with pytest.raises(FhirError, match="got 'Group'"):
        client.read("Patient", "p1")
    with pytest.raises(FhirError, match="not JSON"):
        client.read("Patient", "p2")


@pytest.mark.parametrize(
    ("type_", "id_"),
    [
        ("Patient", "../metadata"),
        ("Patient", "a/b"),
        ("patient", "1"),
        ("Patient", ""),
        ("Patient", "x" * 65),
    ],
)
def test_bad_type_or_id_never_reaches_the_server(type_, id_):
    client, _ = make_client()
    with pytest.raises(ValueError):
        client.read(type_, id_)  # no responses mock active: a request would fail differently


# --------------------------------------------------------------------------------------------------
# Search and paging
# --------------------------------------------------------------------------------------------------


@responses.activate
def test_search_follows_next_links_across_three_pages():
    responses.get(
        f"{BASE}/Observation",
        json=searchset([obs(1), obs(2)], f"{BASE}/Observation?_getpages=abc&_offset=2"),
        match=[matchers.query_param_matcher({"subject": "Patient/p1", "_count": "2"})],
    )
    responses.get(
        f"{BASE}/Observation",
        json=searchset([obs(3), obs(4)], "Observation?_getpages=abc&_offset=4"),  # relative next link
        match=[matchers.query_param_matcher({"_getpages": "abc", "_offset": "2"})],
    )
    responses.get(
        f"{BASE}/Observation",
        json=searchset([obs(5)]),
        match=[matchers.query_param_matcher({"_getpages": "abc", "_offset": "4"})],
    )
    client, _ = make_client()
    found = list(client.search("Observation", {"subject": "Patient/p1", "_count": 2}))
    assert [r["id"] for r in found] == ["o1", "o2", "o3", "o4", "o5"]
    assert len(responses.calls) == 3
    assert all(c.request.headers["Authorization"] == "Bearer tok" for c in responses.calls)


@responses.activate
def test_search_pages_separate_includes_and_outcomes(caplog):
    encounter = {"resourceType": "Encounter", "id": "e1"}
    bundle = searchset([{"resourceType": "Communication", "id": "c1"}], included=(encounter,))
    bundle["total"] = 1
    bundle["entry"].append({"resource": outcome("search truncated"), "search": {"mode": "outcome"}})
    bundle["entry"].append({"fullUrl": "no-resource"})
    responses.get(f"{BASE}/Communication", json=bundle)
    client, _ = make_client()
    (page,) = client.search_pages(
        "Communication", [("_include", "Communication:encounter"), ("date", "ge2026-03")]
    )
    assert [r["id"] for r in page.matches] == ["c1"]
    assert page.included == (encounter,)
    assert page.total == 1
    assert page.outcomes[0].text == "search truncated"
    assert "search truncated" in caplog.text
    assert query_of(responses.calls[0]) == [("_include", "Communication:encounter"), ("date", "ge2026-03")]
    assert [r["id"] for r in client.search("Communication")] == ["c1", "e1"]


@responses.activate
def test_repeated_parameters_are_sent_repeatedly():
    responses.get(f"{BASE}/Observation", json=searchset([]))
    client, _ = make_client()
    assert (
        list(client.search("Observation", {"date": ["ge2026-03-01", "lt2026-04-01"], "patient": "p1"})) == []
    )
    assert query_of(responses.calls[0]) == [
        ("date", "ge2026-03-01"),
        ("date", "lt2026-04-01"),
        ("patient", "p1"),
    ]


@pytest.mark.parametrize(
    "next_url",
    [
        "http://evil.example/fhir/Observation?page=2",
        "https://127.0.0.1:8080/fhir/Observation?page=2",  # other scheme
        "http://127.0.0.1:8081/fhir/Observation?page=2",  # other port
        "//127.0.0.2:8080/fhir/Observation?page=2",  # scheme-relative, other host
    ],
)
@responses.activate
def test_next_link_to_another_origin_is_refused(next_url):
    responses.get(f"{BASE}/Observation", json=searchset([obs(1)], next_url))
    client, _ = make_client()
    pages = client.search("Observation")
    assert next(pages)["id"] == "o1"
    with pytest.raises(ForeignOriginError, match="another origin"):
        list(pages)
    assert len(responses.calls) == 1  # the token went nowhere else


@responses.activate
def test_same_origin_with_explicit_default_port_is_followed():
    client = FhirClient("https://ehr.example/fhir", BearerAuth("tok"), sleep=lambda s: None)
    next_url = "https://EHR.example:443/fhir/Observation?p=2"
    responses.get("https://ehr.example/fhir/Observation", json=searchset([obs(1)], next_url))
    responses.get(next_url, json=searchset([obs(2)]))
    assert [r["id"] for r in client.search("Observation")] == ["o1", "o2"]
    assert str(responses.calls[1].request.url).endswith(":443/fhir/Observation?p=2")


@responses.activate
def test_a_paging_loop_is_detected():
    responses.get(f"{BASE}/Observation", json=searchset([obs(1)], f"{BASE}/Observation?page=2"))
    client, _ = make_client()
    with pytest.raises(FhirError, match="already read"):
        list(client.search("Observation", {"page": "2"}))


@responses.activate
def test_a_page_that_fails_temporarily_is_retried_mid_search():
    responses.get(
        f"{BASE}/Observation",
        json=searchset([obs(1)], f"{BASE}/Observation?page=2"),
        match=[matchers.query_param_matcher({})],
    )
    responses.get(
        f"{BASE}/Observation",
        status=429,
        headers={"Retry-After": "3"},
        match=[matchers.query_param_matcher({"page": "2"})],
    )
    responses.get(
        f"{BASE}/Observation", json=searchset([obs(2)]), match=[matchers.query_param_matcher({"page": "2"})]
    )
    client, slept = make_client()
    assert [r["id"] for r in client.search("Observation")] == ["o1", "o2"]
    assert slept == [3.0]


@responses.activate
def test_search_answering_something_else_than_a_bundle():
    responses.get(f"{BASE}/Observation", json=outcome("nope"))
    client, _ = make_client()
    with pytest.raises(FhirError, match="not a Bundle"):
        list(client.search("Observation"))


# --------------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "value", "expected"),
    [
        ("http://s", "plain-1", "http://s|plain-1"),
        (CHARGE_KEY, "p1|99454|2026-03-01", CHARGE_KEY + "|p1\\|99454\\|2026-03-01"),
        ("http://s", "a,b$c\\d", "http://s|a\\,b\\$c\\\\d"),
        ("http://s", "", "http://s|"),
    ],
)
def test_token_escaping(system, value, expected):
    assert token(system, value) == expected


def test_identifier_query_is_url_encoded():
    assert identifier_query("http://s", "a|b") == "identifier=http%3A%2F%2Fs%7Ca%5C%7Cb"


@responses.activate
def test_find_by_identifier_filters_to_the_exact_identifier():
    wanted = {
        "resourceType": "ChargeItem",
        "id": "c1",
        "identifier": [{"system": CHARGE_KEY, "value": "p1|99454|2026-03-01"}],
    }
    other = {
        "resourceType": "ChargeItem",
        "id": "c2",
        "identifier": [{"system": CHARGE_KEY, "value": "p1|99457|2026-03-01"}],
    }
    responses.get(
        f"{BASE}/ChargeItem", json=searchset([wanted, other])
    )  # a server that ignored the parameter
    client, _ = make_client()
    assert client.find_by_identifier("ChargeItem", CHARGE_KEY, "p1|99454|2026-03-01") == [wanted]
    assert query_of(responses.calls[0]) == [("identifier", CHARGE_KEY + "|p1\\|99454\\|2026-03-01")]


@responses.activate
def test_find_by_identifier_within_a_scope_searches_by_system_only():
    wanted = {
        "resourceType": "ChargeItem",
        "id": "c1",
        "identifier": [{"system": CHARGE_KEY, "value": "p1|99454|2026-03-01"}],
    }
    responses.get(f"{BASE}/ChargeItem", json=searchset([wanted]))
    client, _ = make_client()
    found = client.find_by_identifier(
        "ChargeItem", CHARGE_KEY, "p1|99454|2026-03-01", within={"subject": "Patient/p1"}
    )
    assert found == [wanted]
    assert query_of(responses.calls[0]) == [("subject", "Patient/p1"), ("identifier", CHARGE_KEY + "|")]
    assert not has_identifier(wanted, CHARGE_KEY, "p1|99454")


# --------------------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------------------

CHARGE = {
    "resourceType": "ChargeItem",
    "status": "billable",
    "identifier": [{"system": CHARGE_KEY, "value": "k"}],
}


@responses.activate
def test_conditional_create():
    responses.post(
        f"{BASE}/ChargeItem",
        status=201,
        json={**CHARGE, "id": "c9", "meta": {"versionId": "1"}},
        headers={"Location": f"{BASE}/ChargeItem/c9/_history/1", "ETag": 'W/"1"'},
    )
    responses.post(f"{BASE}/ChargeItem", status=200, json={**CHARGE, "id": "c9", "meta": {"versionId": "1"}})
    client, _ = make_client()
    first = client.create(CHARGE, if_none_exist=identifier_query(CHARGE_KEY, "k"))
    assert (first.status, first.created, first.resource_type, first.id, first.version_id, first.etag) == (
        201,
        True,
        "ChargeItem",
        "c9",
        "1",
        'W/"1"',
    )
    request = responses.calls[0].request
    assert (
        request.headers["If-None-Exist"] == "identifier=http%3A%2F%2Frpm-billing.org%2Ffhir%2Fcharge-key%7Ck"
    )
    assert request.headers["Prefer"] == "return=representation"
    assert request.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    second = client.create(CHARGE, if_none_exist={"identifier": token(CHARGE_KEY, "k")})
    assert (second.status, second.created, second.id) == (200, False, "c9")
    assert responses.calls[1].request.headers["If-None-Exist"] == request.headers["If-None-Exist"]


@responses.activate
def test_create_with_an_empty_answer_reads_the_location():
    # Epic: 201, no body, a relative Location, no ETag
    responses.post(
        f"{BASE}/DocumentReference",
        status=201,
        body="",
        headers={"Location": "DocumentReference/d-7/_history/3"},
    )
    client, _ = make_client()
    result = client.create({"resourceType": "DocumentReference"})
    assert (result.resource, result.resource_type, result.id, result.version_id) == (
        None,
        "DocumentReference",
        "d-7",
        "3",
    )


@responses.activate
def test_create_timeout_is_outcome_unknown_then_looked_up_by_identifier():
    responses.post(f"{BASE}/ChargeItem", body=requests.ReadTimeout("read timed out"))
    responses.get(f"{BASE}/ChargeItem", json=searchset([{**CHARGE, "id": "c9"}]))
    client, slept = make_client()
    with pytest.raises(OutcomeUnknownError):
        client.create(CHARGE, if_none_exist=identifier_query(CHARGE_KEY, "k"))
    assert len(responses.calls) == 1 and slept == []  # not retried
    assert [r["id"] for r in client.find_by_identifier("ChargeItem", CHARGE_KEY, "k")] == ["c9"]


@responses.activate
def test_update_with_if_match():
    doc = {"resourceType": "DocumentReference", "id": "d1", "status": "superseded"}
    responses.put(
        f"{BASE}/DocumentReference/d1", json={**doc, "meta": {"versionId": "4"}}, headers={"ETag": 'W/"4"'}
    )
    responses.put(f"{BASE}/DocumentReference/d1", status=412, json=outcome("Version mismatch"))
    client, _ = make_client()
    result = client.update(doc, if_match="3")
    assert (result.status, result.version_id, result.created) == (200, "4", False)
    assert responses.calls[0].request.headers["If-Match"] == 'W/"3"'
    with pytest.raises(PreconditionFailedError, match="Version mismatch"):
        client.update(doc, if_match='W/"3"')
    assert responses.calls[1].request.headers["If-Match"] == 'W/"3"'


def test_update_needs_a_valid_id():
    client, _ = make_client()
    with pytest.raises(ValueError):
        client.update({"resourceType": "ChargeItem"})


# --------------------------------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------------------------------


@responses.activate
def test_transaction_posts_to_the_base_and_parses_entry_responses():
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    responses.post(
        BASE,
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {
                    "response": {
                        "status": "201 Created",
                        "location": "ChargeItem/c1/_history/1",
                        "etag": 'W/"1"',
                    }
                },
                {
                    "response": {"status": "200 OK", "location": "ChargeItem/c2/_history/5"},
                    "resource": {"resourceType": "ChargeItem", "id": "c2"},
                },
            ],
        },
    )
    client, _ = make_client()
    result = client.transaction(tx)
    assert responses.calls[0].request.url == BASE
    entries = entry_responses(result)
    assert [(e.status, e.location, e.ok) for e in entries] == [
        (201, "ChargeItem/c1/_history/1", True),
        (200, "ChargeItem/c2/_history/5", True),
    ]
    assert entries[1].resource == {"resourceType": "ChargeItem", "id": "c2"}


@responses.activate
def test_batch_entry_errors_are_parsed():
    responses.post(
        BASE,
        json={
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"response": {"status": "400 Bad Request", "outcome": outcome("subject is required")}},
                {"response": {"status": "404"}, "resource": outcome("no such Patient")},
            ],
        },
    )
    client, _ = make_client()
    entries = entry_responses(client.batch({"resourceType": "Bundle", "type": "batch", "entry": []}))
    assert [(e.status, e.ok, e.issues[0].text) for e in entries] == [
        (400, False, "subject is required"),
        (404, False, "no such Patient"),
    ]


@responses.activate
def test_transaction_error_and_wrong_bundle_type():
    responses.post(BASE, status=400, json=outcome("too many conditional entries"))
    client, _ = make_client()
    with pytest.raises(FhirError, match="too many conditional entries"):
        client.transaction({"resourceType": "Bundle", "type": "transaction"})
    with pytest.raises(ValueError):
        client.transaction({"resourceType": "Bundle", "type": "batch"})


@responses.activate
def test_transaction_timeout_is_outcome_unknown():
    responses.post(BASE, status=504)
    client, slept = make_client()
    with pytest.raises(OutcomeUnknownError):
        client.transaction({"resourceType": "Bundle", "type": "transaction"})
    assert len(responses.calls) == 1 and slept == []


@responses.activate
def test_a_batch_of_reads_is_retried_like_a_read():
    responses.post(BASE, status=503)
    responses.post(BASE, json={"resourceType": "Bundle", "type": "batch-response", "entry": []})
    client, slept = make_client()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Device"}}],
    }
    assert client.batch(bundle)["type"] == "batch-response"
    assert len(responses.calls) == 2 and len(slept) == 1


@responses.activate
def test_a_batch_holding_a_write_is_not_blindly_repeated():
    responses.post(BASE, status=504)
    client, slept = make_client()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Device"}},
            {"request": {"method": "POST", "url": "Basic"}},
        ],
    }
    with pytest.raises(OutcomeUnknownError):
        client.batch(bundle)
    assert len(responses.calls) == 1 and slept == []


# --------------------------------------------------------------------------------------------------
# Capabilities
# --------------------------------------------------------------------------------------------------

CAPABILITIES = {
    "resourceType": "CapabilityStatement",
    "software": {"name": "rpm-harness FHIR server (@medplum/fhir-router MemoryRepository)"},
    "rest": [
        {
            "mode": "server",
            "interaction": [{"code": "transaction"}, {"code": "search-system"}],
            "resource": [
                {
                    "type": "ChargeItem",
                    "interaction": [{"code": "read"}, {"code": "create"}, {"code": "search-type"}],
                    "conditionalCreate": True,
                    "conditionalDelete": "not-supported",
                },
                {"type": "Observation", "interaction": [{"code": "read"}, {"code": "search-type"}]},
            ],
        }
    ],
}


@pytest.mark.parametrize(
    ("type_", "interaction", "expected"),
    [
        ("ChargeItem", "create", True),
        ("ChargeItem", "update", False),
        ("ChargeItem", "conditional-create", True),
        ("ChargeItem", "conditional-update", False),
        ("ChargeItem", "conditional-delete", False),
        ("Observation", "search-type", True),
        ("Observation", "create", False),
        ("DocumentReference", "create", False),
        (None, "transaction", True),
        (None, "batch", False),
    ],
)
@responses.activate
def test_supports(type_, interaction, expected):
    responses.get(f"{BASE}/metadata", json=CAPABILITIES)
    client, _ = make_client()
    assert client.supports(type_, interaction) is expected


@responses.activate
def test_capabilities_are_cached_and_limits_inferred():
    responses.get(f"{BASE}/metadata", json=CAPABILITIES)
    client, _ = make_client()
    client.supports("ChargeItem", "create")
    client.supports(None, "batch")
    assert client.server_limits() == ServerLimits(
        transaction=True, batch=False, max_transaction_entries=50, max_conditional_transaction_entries=8
    )
    assert len(responses.calls) == 1
    configured = ServerLimits(transaction=True, max_transaction_entries=20)
    assert FhirClient(BASE, limits=configured).server_limits() is configured


@responses.activate
def test_a_server_without_capability_statement():
    responses.get(f"{BASE}/metadata", json={"resourceType": "Bundle"})
    client, _ = make_client()
    with pytest.raises(FhirError, match="CapabilityStatement"):
        client.supports("ChargeItem", "create")


def test_base_url_must_be_absolute_http():
    for bad in ("127.0.0.1/fhir", "ftp://127.0.0.1/fhir", "/fhir"):
        with pytest.raises(ValueError):
            FhirClient(bad)
    assert FhirClient(BASE + "/").base_url == BASE


# --------------------------------------------------------------------------------------------------
# Auth through the client, concurrency
# --------------------------------------------------------------------------------------------------

TOKEN_URL = "http://127.0.0.1:8080/auth/token"


@responses.activate
def test_401_triggers_one_new_token_and_the_read_succeeds():
    responses.post(TOKEN_URL, json={"access_token": "t1", "token_type": "Bearer", "expires_in": 300})
    responses.post(TOKEN_URL, json={"access_token": "t2", "token_type": "Bearer", "expires_in": 300})
    responses.get(
        f"{BASE}/Patient/p1", status=401, match=[matchers.header_matcher({"Authorization": "Bearer t1"})]
    )
    responses.get(
        f"{BASE}/Patient/p1",
        json={"resourceType": "Patient", "id": "p1"},
        match=[matchers.header_matcher({"Authorization": "Bearer t2"})],
    )
    auth = ClientSecretAuth(TOKEN_URL, "client", "secret", "system/Patient.rs")
    client, slept = make_client(auth=auth, policy=RetryPolicy(max_attempts=1))
    assert client.read("Patient", "p1")["id"] == "p1"
    assert auth.token_requests == 2 and slept == []


@responses.activate
def test_one_client_shared_by_worker_threads():
    for n in range(24):
        responses.get(f"{BASE}/Patient/p{n}", json={"resourceType": "Patient", "id": f"p{n}"})
    responses.post(TOKEN_URL, json={"access_token": "t1", "token_type": "Bearer", "expires_in": 300})
    auth = ClientSecretAuth(TOKEN_URL, "client", "secret")
    client = FhirClient(BASE, auth, pool_size=6)
    threads: set[int] = set()

    def work(n: int) -> str:
        threads.add(threading.get_ident())
        return client.read("Patient", f"p{n}")["id"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = list(pool.map(work, range(24)))
    assert ids == [f"p{n}" for n in range(24)]
    assert auth.token_requests == 1
    assert client.session.get_adapter(BASE)._pool_maxsize == 6  # type: ignore[attr-defined]
    client.close()
