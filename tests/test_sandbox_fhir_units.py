"""The sandbox FHIR server's parts, table-driven: date ranges, prefixes, query parsing, scopes, the store."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from smart_app.sandbox.fhir_access import Principal, Reach
from smart_app.sandbox.fhir_errors import FhirError
from smart_app.sandbox.scopes import Scope, allows, parse_scope
from smart_app.sandbox.search import MAX_TIME, date_range, parse_query
from smart_app.sandbox.store import FhirStore

NY = ZoneInfo("America/New_York")


def iso(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------- date ranges


@pytest.mark.parametrize(
    ("value", "zone", "start", "end"),
    [
        ("2025", UTC, "2025-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z"),
        ("2025-02", UTC, "2025-02-01T00:00:00.000000Z", "2025-03-01T00:00:00.000000Z"),
        ("2025-12", NY, "2025-12-01T05:00:00.000000Z", "2026-01-01T05:00:00.000000Z"),
        ("2025-02-10", UTC, "2025-02-10T00:00:00.000000Z", "2025-02-11T00:00:00.000000Z"),
        ("2025-03-09", NY, "2025-03-09T05:00:00.000000Z", "2025-03-10T04:00:00.000000Z"),  # 23-hour DST day
        ("2025-11-02", NY, "2025-11-02T04:00:00.000000Z", "2025-11-03T05:00:00.000000Z"),  # 25-hour day
        ("2025-02-10T10:00", UTC, "2025-02-10T10:00:00.000000Z", "2025-02-10T10:01:00.000000Z"),
        ("2025-02-10T10:00:00Z", NY, "2025-02-10T10:00:00.000000Z", "2025-02-10T10:00:01.000000Z"),
        ("2025-02-10T10:00:00", NY, "2025-02-10T15:00:00.000000Z", "2025-02-10T15:00:01.000000Z"),
        ("2025-02-10T10:00:00+01:00", UTC, "2025-02-10T09:00:00.000000Z", "2025-02-10T09:00:01.000000Z"),
        ("2025-02-10T10:00:00.25-05:00", UTC, "2025-02-10T15:00:00.250000Z", "2025-02-10T15:00:00.260000Z"),
    ],
)
def test_date_range_is_the_values_precision(value: str, zone: Any, start: str, end: str) -> None:
    rng = date_range(value, zone)
    assert rng is not None
    assert (iso(rng[0]), iso(rng[1])) == (start, end)


@pytest.mark.parametrize(
    "value", ["", "2025-1", "2025-13", "2025-02-30", "2025-02-10T25:00", "10:00", "yesterday"]
)
def test_date_range_refuses_what_is_not_a_fhir_date(value: str) -> None:
    assert date_range(value, UTC) is None


def test_last_year_has_an_open_end() -> None:
    rng = date_range("9999", UTC)
    assert rng is not None and rng[1] == MAX_TIME


# A visit from 10:00 to 10:30 (UTC) and a reading at 10:15:00, against each prefix: one row per rule.
PERIOD = {"start": "2025-01-10T10:00:00Z", "end": "2025-01-10T10:30:00Z"}
PREFIX_RULES = [
    ("eq2025-01-10", True, True),  # the day contains both
    ("eq2025-01-10T10:15:00Z", False, True),  # eq: the search range must contain the whole target
    ("2025-01-10T10:15", False, True),
    ("ne2025-01-10T10:15:00Z", True, False),
    ("gt2025-01-10T10:15:00Z", True, False),  # part of the visit lies after; the reading does not
    ("ge2025-01-10T10:15:00Z", True, True),
    ("lt2025-01-10T10:15:00Z", True, False),  # part of the visit lies before
    ("le2025-01-10T10:15:00Z", True, True),
    ("gt2025-01-10T10:30:00Z", False, False),
    ("lt2025-01-10T10:00:00Z", False, False),
    ("sa2025-01-10T09:59:59Z", True, True),  # starts after
    ("sa2025-01-10T10:00:00Z", False, True),
    ("eb2025-01-10T10:31:00Z", True, True),  # ends before
    ("eb2025-01-10T10:30:00Z", False, True),
]


@pytest.fixture(scope="module")
def prefix_store() -> FhirStore:
    store = FhirStore()
    store.load(
        [
            {"resourceType": "Encounter", "id": "visit", "status": "finished", "period": PERIOD},
            {
                "resourceType": "Encounter",
                "id": "reading",
                "status": "finished",
                "period": {"start": "2025-01-10T10:15:00Z", "end": "2025-01-10T10:15:00Z"},
            },
            {
                "resourceType": "Encounter",
                "id": "open",
                "status": "in-progress",
                "period": {"start": "2025-01-10T10:00:00Z"},
            },
        ]
    )
    return store


@pytest.mark.parametrize(("value", "visit", "point"), PREFIX_RULES)
def test_date_prefixes(prefix_store: FhirStore, value: str, visit: bool, point: bool) -> None:
    found = {
        r["id"] for r in prefix_store.search("Encounter", [("date", value), ("_id", "visit,reading")]).matches
    }
    assert ("visit" in found, "reading" in found) == (visit, point)


def test_an_open_period_runs_forever(prefix_store: FhirStore) -> None:
    found = {r["id"] for r in prefix_store.search("Encounter", [("date", "ge2999-01-01")]).matches}
    assert found == {"open"}


def test_server_zone_reads_offsetless_values_both_in_resources_and_searches() -> None:
    store = FhirStore(timezone="America/New_York")
    store.load(
        [
            {
                "resourceType": "Observation",
                "id": "local",
                "status": "final",
                "code": {"text": "x"},
                "effectiveDateTime": "2025-01-10T23:30:00",
            },
            {
                "resourceType": "Observation",
                "id": "utc",
                "status": "final",
                "code": {"text": "x"},
                "effectiveDateTime": "2025-01-11T02:00:00Z",
            },
        ]
    )

    def found(*params: tuple[str, str]) -> set[str]:
        return {r["id"] for r in store.search("Observation", list(params)).matches}

    assert found(("date", "2025-01-10")) == {"local", "utc"}  # 02:00Z on the 11th is the 10th in New York
    assert found(("date", "ge2025-01-11T04:30:00Z")) == {"local"}  # 23:30 New York = 04:30Z
    assert found(("date", "lt2025-01-10T22:00:00")) == {"utc"}  # 22:00 New York = 03:00Z


# ---------------------------------------------------------------------------------------------- query parsing


@pytest.mark.parametrize(
    ("type_", "params", "message"),
    [
        ("Observation", [("foo", "1")], "'foo' is not supported on Observation"),
        ("Observation", [("code:below", "x")], "modifier ':below'"),
        (
            "Observation",
            [("patient:Group", "x")],
            "modifier ':Group'",
        ),  # Observation.patient targets Patient only
        ("Observation", [("subject.name", "x")], "chained"),
        ("Observation", [("date", "xx2025")], "prefix 'xx'"),
        ("Observation", [("date", "ge2025-02-30")], "not a FHIR date"),
        ("Observation", [("code", "|")], "neither a system nor a code"),
        ("Observation", [("_count", "-1")], "whole number"),
        ("Observation", [("_summary", "data")], "only _summary=count"),
        ("Observation", [("_sort", "status")], "_sort=status"),
        ("Communication", [("_include", "Communication:sender")], "Communication:encounter"),
        ("Observation", [("_include", "Communication:encounter")], "not supported on Observation"),
        ("Group", [("member", "Patient/")], "not a reference"),
    ],
)
def test_parse_query_refuses_with_the_reason(type_: str, params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(FhirError) as caught:
        parse_query(type_, params, UTC)
    assert caught.value.status == 400
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("raw", "alternatives"),
    [
        ("http://loinc.org|8867-4", (("http://loinc.org", "8867-4"),)),
        ("8867-4", ((None, "8867-4"),)),
        ("|8867-4", (("", "8867-4"),)),
        ("http://loinc.org|", (("http://loinc.org", None),)),
        ("a,b", ((None, "a"), (None, "b"))),
        ("a\\,b", ((None, "a,b"),)),
        ("urn:k|p\\|99454\\|2025-02-01", (("urn:k", "p|99454|2025-02-01"),)),
        ("urn:k|p|99454|2025-02-01", (("urn:k", "p|99454|2025-02-01"),)),
        ("urn:k|a\\\\b", (("urn:k", "a\\b"),)),
    ],
)
def test_token_values(raw: str, alternatives: tuple[tuple[str | None, str | None], ...]) -> None:
    query = parse_query("Observation", [("code", raw)], UTC)
    assert query.clauses[0].alternatives == alternatives


def test_reference_values() -> None:
    query = parse_query(
        "Observation",
        [
            ("patient", "p1"),
            ("subject", "p2"),
            ("subject:Patient", "p3"),
            ("subject", "http://x/fhir/Group/g1"),
        ],
        UTC,
    )
    assert [c.alternatives for c in query.clauses] == [
        (("Patient", "p1"),),
        ((None, "p2"),),  # any type with that id
        (("Patient", "p3"),),
        (("Group", "g1"),),
    ]


# ---------------------------------------------------------------------------------------------- scopes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("patient/Observation.read", Scope("patient", "Observation", frozenset("rs"))),
        ("user/*.write", Scope("user", "*", frozenset("cud"))),
        ("system/*.*", Scope("system", "*", frozenset("cruds"))),
        ("patient/Observation.rs", Scope("patient", "Observation", frozenset("rs"))),
        ("system/ChargeItem.cu", Scope("system", "ChargeItem", frozenset("cu"))),
        ("user/*.cruds", Scope("user", "*", frozenset("cruds"))),
        (
            "patient/Observation.rs?category=http://x|vital-signs",
            Scope("patient", "Observation", frozenset("rs"), (("category", "http://x|vital-signs"),)),
        ),
        ("patient/Observation.sr", None),  # out of order
        ("patient/Observation.rr", None),
        ("patient/Observation.x", None),
        ("patient/Observation.read?category=x", None),  # v1 has no restrictions
        ("practitioner/Observation.read", None),
        ("patient/observation.read", None),
        ("launch", None),
        ("openid", None),
        ("launch/patient", None),
    ],
)
def test_parse_scope(text: str, expected: Scope | None) -> None:
    assert parse_scope(text) == expected


ALLOW_RULES = [
    (["patient/Observation.read"], "patient", "Observation", "r", True),
    (["patient/Observation.read"], "patient", "Observation", "s", True),
    (["patient/Observation.read"], "patient", "Observation", "c", False),
    (["patient/Observation.read"], "user", "Observation", "r", False),  # context must match
    (["patient/Observation.read"], "patient", "Communication", "r", False),
    (["user/*.write"], "user", "ChargeItem", "u", True),
    (["user/*.write"], "user", "ChargeItem", "r", False),
    (["system/Observation.s"], "system", "Observation", "r", False),
    (["launch", "openid", "system/Device.rs"], "system", "Device", "s", True),
    (["system/Observation.rs?category=c|v"], "system", "Observation", "r", False),
]


@pytest.mark.parametrize(("scopes", "context", "type_", "interaction", "allowed"), ALLOW_RULES)
def test_allows(scopes: list[str], context: str, type_: str, interaction: str, allowed: bool) -> None:
    assert allows(scopes, context, type_, interaction) is allowed


def test_restricted_scope_allows_only_searches_within_it() -> None:
    scopes = ["system/Observation.rs?category=c|v&status=final"]
    assert allows(
        scopes, "system", "Observation", "s", [("category", "c|v"), ("status", "final"), ("patient", "p")]
    )
    assert not allows(scopes, "system", "Observation", "s", [("category", "c|v")])


def test_widest_grant_wins() -> None:
    who = Principal(scopes=("patient/Observation.rs", "user/Observation.rs"), patient="p1")
    assert who.reach("Observation", "r") == Reach(None)
    assert Principal(scopes=("patient/Observation.rs",), patient="p1").reach("Observation", "s") == Reach(
        "p1"
    )
    with pytest.raises(FhirError) as caught:
        Principal(scopes=("patient/Observation.rs",), patient="p1").reach("Observation", "c")
    assert caught.value.status == 403 and "create on Observation" in caught.value.message


# ---------------------------------------------------------------------------------------------- the store


def obs(id_: str | None = None, patient: str = "p1", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }
    if id_:
        resource["id"] = id_
    return resource


def test_versions_etags_and_history() -> None:
    store = FhirStore()
    created = store.create(obs("ignored"))
    id_ = created["id"]
    assert id_ != "ignored" and created["meta"]["versionId"] == "1"
    with pytest.raises(FhirError) as caught:
        store.update({**created, "status": "amended"}, if_match='W/"2"')
    assert caught.value.status == 412
    updated, was_created = store.update({**created, "status": "amended"}, if_match='W/"1"')
    assert (updated["meta"]["versionId"], was_created) == ("2", False)
    assert store.vread("Observation", id_, "1")["status"] == "final"  # type: ignore[index]
    assert store.read("Observation", id_)["status"] == "amended"  # type: ignore[index]
    assert store.delete("Observation", id_) is True
    assert store.delete("Observation", id_) is False
    assert store.read("Observation", id_) is None
    assert [v.version for v in store.history("Observation", id_)] == [3, 2, 1]
    assert store.history("Observation", id_)[0].deleted
    assert store.search("Observation", [("patient", "p1")]).total == 0  # deleted: out of the index


def test_load_keeps_ids_and_skips_what_is_not_a_served_resource(caplog: pytest.LogCaptureFixture) -> None:
    store = FhirStore()
    with caplog.at_level(logging.WARNING, logger="smart_app.sandbox.store"):
        loaded = store.load(
            [
                {"resourceType": "Patient", "id": "p1"},
                obs("o1"),
                obs("o1", status="amended"),  # a second version of o1
                {"resourceType": "Medication", "id": "m1"},
                {"id": "no-type"},
                {"resourceType": "Patient", "id": "bad id!"},
                obs(None),
            ]
        )
    assert loaded == 4
    assert store.count() == 3 and store.count("Observation") == 2
    assert store.read("Observation", "o1")["meta"]["versionId"] == "2"  # type: ignore[index]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'Medication' is not served" in messages and "invalid id 'bad id!'" in messages
    assert "item 4" in messages  # the one without a type is named by its position


def test_transaction_rolls_everything_back() -> None:
    store = FhirStore()
    store.create(obs())
    with pytest.raises(FhirError), store.transaction():
        store.create(obs(patient="p2"))
        store.update(obs("new", patient="p2"))
        raise FhirError(412, "conflict", "later entry failed")
    assert store.count() == 1
    assert store.search("Observation", [("patient", "p2")]).total == 0


def test_paging_is_stable_under_updates() -> None:
    store = FhirStore()
    store.load([obs(f"o{i}") for i in range(5)])
    first = [r["id"] for r in store.search("Observation", [("_count", "2")]).matches]
    store.update(obs("o0", status="amended"))  # an update does not move a resource in the default order
    rest = [r["id"] for r in store.search("Observation", [("_count", "2"), ("_offset", "2")]).matches]
    rest += [r["id"] for r in store.search("Observation", [("_count", "2"), ("_offset", "4")]).matches]
    assert first + rest == ["o0", "o1", "o2", "o3", "o4"]


def test_file_store_persists(tmp_path: Path) -> None:
    path = str(tmp_path / "ehr.sqlite")
    store = FhirStore(path)
    store.load([obs("o1")])
    store.close()
    again = FhirStore(path)
    assert again.read("Observation", "o1") is not None
    assert again.search("Observation", [("patient", "p1")]).total == 1


def test_list_resources_in_insertion_order() -> None:
    store = FhirStore()
    store.load([{"resourceType": "Patient", "id": f"p{i}"} for i in range(3)])
    assert [p["id"] for p in store.list_resources("Patient", 2)] == ["p0", "p1"]
    assert store.list_resources("Patient", 0) == []


def test_concurrent_writers_do_not_lose_writes() -> None:
    store = FhirStore()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                store.create(obs(patient=f"w{n}"))
                store.search("Observation", [("patient", f"w{n}"), ("_count", "1")])
                if i % 5 == 0:
                    with store.transaction():
                        store.create(obs(patient=f"w{n}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count("Observation") == 8 * 30
    assert all(store.search("Observation", [("patient", f"w{n}")]).total == 30 for n in range(8))


@pytest.mark.parametrize(
    ("params", "ids", "total"),
    [
        ([("_count", "2")], ["o0", "o1"], 5),  # a full page: counted
        ([("_count", "2"), ("_offset", "4")], ["o4"], 5),  # the last page: what it holds tells the total
        ([("_count", "5")], ["o0", "o1", "o2", "o3", "o4"], 5),  # exactly full: counted
        ([("_count", "10")], ["o0", "o1", "o2", "o3", "o4"], 5),
        ([("_count", "2"), ("_offset", "5")], [], 5),  # past the end: counted
        ([("_count", "2"), ("_offset", "9")], [], 5),
        ([("_count", "0")], [], 5),
        ([("_summary", "count")], [], 5),
        ([("patient", "nobody")], [], 0),
        ([("patient", "nobody"), ("_offset", "3")], [], 0),
        ([("_id", "o3,o1,missing")], ["o1", "o3"], 2),
        ([("_sort", "-date"), ("_count", "3"), ("_offset", "3")], ["o1", "o0"], 5),
    ],
)
def test_search_totals_on_every_page(params: list[tuple[str, str]], ids: list[str], total: int) -> None:
    store = FhirStore()
    store.load([obs(f"o{i}", effectiveDateTime=f"2025-01-0{i + 1}") for i in range(5)])
    page = store.search("Observation", params)
    assert ([r["id"] for r in page.matches], page.total) == (ids, total)


def test_creating_an_id_that_exists_or_existed_is_a_conflict() -> None:
    store = FhirStore()
    store.load([obs("o1"), obs("o2")])
    store.delete("Observation", "o2")
    for id_ in ("o1", "o2"):
        with pytest.raises(FhirError) as caught:
            store.create(obs(), id_=id_)
        assert (caught.value.status, caught.value.code) == (409, "duplicate")
        assert f"Observation/{id_} already exists" in caught.value.message
    assert store.count("Observation") == 1 and len(store.history("Observation", "o2")) == 2  # nothing stored
    assert store.create(obs(), id_="o3")["id"] == "o3"


@pytest.mark.parametrize(
    ("field", "models"),
    [
        ("subject", ["Reference"]),
        ("code", ["CodeableConcept"]),
        ("performer", ["ChargeItemPerformer"]),  # inside Optional[List[...]]
        ("status", []),  # a primitive: nothing to load
    ],
)
def test_the_models_a_server_loads_before_serving(field: str, models: list[str]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    from smart_app.sandbox.fhir_interactions import _element_models, warm_validation

    annotation = get_fhir_model_class("ChargeItem").model_fields[field].annotation
    assert [model.__name__ for model in _element_models(annotation)] == models
    warm_validation(("ChargeItem",))  # best effort and once per process: never raises
    warm_validation(("ChargeItem",))
