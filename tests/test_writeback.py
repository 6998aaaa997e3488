"""Write-back: the re-run rules of contract section 4 (one row per rule) and applying a plan over HTTP.

Plans are checked against an in-memory "server" that applies them the way a FHIR server would (ids, versions,
statuses), so each row runs the month twice exactly as month-end would.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import requests
import responses

from billing.model import PatientRecords
from billing.periods import YearMonth
from billing.result import MonthResult
from fhir_mapping.outbound import WriteSettings
from smart_app.fhir_client import FhirClient, ServerLimits
from smart_app.http import RetryPolicy
from smart_app.pipeline import RunOptions, evaluate
from smart_app.reads import PatientFetch
from smart_app.writeback import WritePlan, apply_plan, plan_bundles, plan_month_writes
from tests.builders import NY, PID, call, consent, daily_readings, device, records
from tests.test_month_end_support import capability_statement

SETTINGS = WriteSettings(billing_practitioner="Practitioner/biller")
MONTH = YearMonth(2026, 3)
CLOSED = datetime(2026, 4, 10, 12, 0, tzinfo=NY)
OPEN = datetime(2026, 3, 20, 12, 0, tzinfo=NY)
WK = SETTINGS.write_key_system
BASE = "http://ehr.test/fhir"


def month(minutes: list[float], *, as_of: datetime = CLOSED, days: int = 20) -> MonthResult:
    """A March 2026 month: consent since December, a device, daily readings, phone calls of `minutes`."""
    calls = [call(f"2026-03-{5 + 2 * i:02d} 10:00", m, id=f"call-{i}") for i, m in enumerate(minutes)]
    patient = records(
        consents=[consent("2025-12-01 00:00")],
        devices=[device()],
        readings=daily_readings("2026-02-20", days + 12),
        activities=calls,
    )
    return evaluate(patient, RunOptions(MONTH, as_of))


@dataclass
class MemoryServer:
    """Applies plans like a FHIR server: ids, version ids, statuses. `resources` by Type/id."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def apply(self, plan: WritePlan) -> None:
        urls: dict[str, str] = {}
        for creation in plan.creates:
            resource = copy.deepcopy(creation.entry["resource"])
            _rewrite(resource, urls)
            resource["id"] = f"{creation.resource_type.lower()}-{next(self.ids)}"
            resource["meta"] = {"versionId": "1"}
            urls[creation.entry["fullUrl"]] = f"{creation.resource_type}/{resource['id']}"
            self.resources[urls[creation.entry["fullUrl"]]] = resource
        for retirement in plan.retirements:
            old = self.resources[retirement.reference]
            assert retirement.entry["request"]["ifMatch"] == f'W/"{old["meta"]["versionId"]}"'
            new = copy.deepcopy(retirement.entry["resource"])
            new["meta"] = {"versionId": str(int(old["meta"]["versionId"]) + 1)}
            self.resources[retirement.reference] = new

    def fetch(self, result: MonthResult) -> PatientFetch:
        of = [r for r in self.resources.values()]
        return PatientFetch(
            records=PatientRecords(patient_id=result.patient_id),
            skipped=[],
            charge_resources=[copy.deepcopy(r) for r in of if r["resourceType"] == "ChargeItem"],
            document_resources=[copy.deepcopy(r) for r in of if r["resourceType"] == "DocumentReference"],
            requests=0,
        )

    def run(self, result: MonthResult) -> WritePlan:
        plan = plan_month_writes(result, self.fetch(result), SETTINGS)
        self.apply(plan)
        return plan

    def set_status(self, code: str, status: str) -> None:
        for resource in self.resources.values():
            is_code = (
                resource["resourceType"] == "ChargeItem" and resource["code"]["coding"][0]["code"] == code
            )
            if is_code and resource["status"] != "entered-in-error":
                resource["status"] = status

    def active(self) -> dict[str, tuple[int, str]]:
        """Charge code -> (units, status) of ChargeItems not entered-in-error."""
        return {
            r["code"]["coding"][0]["code"]: (r["quantity"]["value"], r["status"])
            for r in self.resources.values()
            if r["resourceType"] == "ChargeItem" and r["status"] != "entered-in-error"
        }

    def documents(self, status: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.resources.values()
            if r["resourceType"] == "DocumentReference" and r["status"] == status
        ]


def _rewrite(value: Any, urls: dict[str, str]) -> None:
    if isinstance(value, dict):
        if value.get("reference") in urls:
            value["reference"] = urls[value["reference"]]
        for item in value.values():
            _rewrite(item, urls)
    elif isinstance(value, list):
        for item in value:
            _rewrite(item, urls)


def creates(plan: WritePlan) -> list[str]:
    return sorted(f"{c.code}x{c.units}:{c.status}" if c.code else c.resource_type for c in plan.creates)


def retires(plan: WritePlan, server: MemoryServer) -> list[str]:
    out = []
    for r in plan.retirements:
        resource = server.resources[r.reference]
        label = resource["code"]["coding"][0]["code"] if resource["resourceType"] == "ChargeItem" else "Doc"
        out.append(f"{label}->{r.new_status}")
    return sorted(out)


@dataclass(frozen=True)
class Rerun:
    """One re-run rule: the first run's result, what happened on the server between runs, the second run's
    result, and the second run's writes."""

    name: str
    first: Callable[[], MonthResult]
    second: Callable[[], MonthResult]
    between: Callable[[MemoryServer], None] = lambda server: None
    creates: tuple[str, ...] = ()
    retires: tuple[str, ...] = ()
    manual: int = 0


RERUNS = [
    Rerun("unchanged result: no writes at all", lambda: month([25]), lambda: month([25])),
    Rerun(
        "new code: a new ChargeItem (and the log is replaced)",
        lambda: month([25]),
        lambda: month([25, 20]),
        creates=("99458x1:billable", "DocumentReference"),
        retires=("Doc->superseded",),
    ),
    Rerun(
        "quantity changed: entered-in-error plus a new ChargeItem",
        lambda: month([25, 20]),
        lambda: month([25, 20, 20]),
        creates=("99458x2:billable", "DocumentReference"),
        retires=("99458->entered-in-error", "Doc->superseded"),
    ),
    Rerun(
        "no longer justified: entered-in-error, nothing new",
        lambda: month([25, 20]),
        lambda: month([25]),
        creates=("DocumentReference",),
        retires=("99458->entered-in-error", "Doc->superseded"),
    ),
    Rerun(
        "planned becomes billable when the month closes: entered-in-error plus new",
        lambda: month([25], as_of=OPEN),
        lambda: month([25]),
        creates=("99453x1:billable", "99454x1:billable", "99457x1:billable", "DocumentReference"),
        retires=(
            "99453->entered-in-error",
            "99454->entered-in-error",
            "99457->entered-in-error",
            "Doc->superseded",
        ),
    ),
    Rerun(
        "billed is never touched; a change is reported for manual correction",
        lambda: month([25, 20]),
        lambda: month([25, 20, 20]),
        between=lambda server: server.set_status("99458", "billed"),
        creates=("DocumentReference",),
        retires=("Doc->superseded",),
        manual=1,
    ),
    Rerun(
        "billed and no longer justified: reported, not retired",
        lambda: month([25, 20]),
        lambda: month([25]),
        between=lambda server: server.set_status("99458", "billed"),
        creates=("DocumentReference",),
        retires=("Doc->superseded",),
        manual=1,
    ),
    Rerun(
        "billed and unchanged: nothing to do",
        lambda: month([25, 20]),
        lambda: month([25, 20]),
        between=lambda server: server.set_status("99458", "billed"),
    ),
    Rerun(
        "a person's not-billable is left alone while the result is unchanged",
        lambda: month([25]),
        lambda: month([25]),
        between=lambda server: server.set_status("99457", "not-billable"),
    ),
]


@pytest.mark.parametrize("rule", RERUNS, ids=[r.name for r in RERUNS])
def test_rerun_rules(rule: Rerun) -> None:
    server = MemoryServer()
    first = server.run(rule.first())
    assert first.creates and not first.retirements
    rule.between(server)
    plan = plan_month_writes(rule.second(), server.fetch(rule.second()), SETTINGS)
    assert creates(plan) == sorted(rule.creates)
    assert retires(plan, server) == sorted(rule.retires)
    assert len(plan.manual) == rule.manual
    assert plan.unchanged is (not rule.creates and not rule.retires)
    server.apply(plan)
    # Whatever happened, running the same month again now writes nothing.
    assert plan_month_writes(rule.second(), server.fetch(rule.second()), SETTINGS).unchanged


def test_a_result_going_back_gets_a_new_write_key_not_the_retired_one() -> None:
    """A, B, then A again: the server must not match A's retired ChargeItem in ifNoneExist."""
    server = MemoryServer()
    server.run(month([25, 20]))
    server.run(month([25]))  # 99458 retired
    plan = server.run(month([25, 20]))
    [new_99458] = [c for c in plan.creates if c.code == "99458"]
    retired_keys = {
        i["value"]
        for r in server.resources.values()
        if r["status"] in ("entered-in-error", "superseded")
        for i in r["identifier"]
        if i["system"] == WK
    }
    assert new_99458.write_key not in retired_keys
    assert new_99458.entry["request"]["ifNoneExist"].endswith(new_99458.write_key)
    assert server.active()["99458"] == (1, "billable")
    assert len(server.documents("current")) == 1
    assert plan_month_writes(month([25, 20]), server.fetch(month([25])), SETTINGS).unchanged


def test_new_charges_reference_the_unchanged_document_by_id() -> None:
    """A crash between split bundles left the log but not every charge: the rest reference the log's id."""
    server = MemoryServer()
    plan = server.run(month([25, 20]))
    doc_ref = next(k for k, r in server.resources.items() if r["resourceType"] == "DocumentReference")
    lost = next(k for k, r in server.resources.items() if r["resourceType"] == "ChargeItem")
    del server.resources[lost]
    again = plan_month_writes(month([25, 20]), server.fetch(month([25, 20])), SETTINGS)
    assert [c.resource_type for c in again.creates] == ["ChargeItem"]
    assert again.document_reference == doc_ref
    assert again.creates[0].entry["resource"]["supportingInformation"][0] == {"reference": doc_ref}
    assert not again.retirements and plan.document_reference.startswith("urn:uuid:")


def test_several_current_logs_are_all_superseded_and_replaced() -> None:
    server = MemoryServer()
    server.run(month([25]))
    [doc] = server.documents("current")
    twin = copy.deepcopy(doc)
    twin["id"] = "twin"
    twin["identifier"] = [i if i["system"] != WK else {**i, "value": "other"} for i in twin["identifier"]]
    server.resources["DocumentReference/twin"] = twin
    plan = server.run(month([25, 20]))
    [new_doc] = [c.entry["resource"] for c in plan.creates if c.resource_type == "DocumentReference"]
    targets = sorted(r["target"]["reference"] for r in new_doc["relatesTo"])
    assert targets == sorted([f"DocumentReference/{doc['id']}", "DocumentReference/twin"])
    assert len(server.documents("superseded")) == 2 and len(server.documents("current")) == 1


def test_other_months_and_other_patients_charges_are_not_touched() -> None:
    server = MemoryServer()
    server.run(month([25]))
    foreign = {
        "resourceType": "ChargeItem",
        "id": "feb",
        "status": "billable",
        "identifier": [{"system": SETTINGS.charge_key_system, "value": f"{PID}|99457|2026-02-01"}],
        "code": {"coding": [{"code": "99457"}]},
        "meta": {"versionId": "1"},
    }
    other_patient = {
        **foreign,
        "id": "other",
        "identifier": [{"system": SETTINGS.charge_key_system, "value": "p2|99457|2026-03-01"}],
    }
    server.resources["ChargeItem/feb"] = foreign
    server.resources["ChargeItem/other"] = other_patient
    plan = plan_month_writes(month([]), server.fetch(month([])), SETTINGS)
    retired = {r.reference for r in plan.retirements}
    assert "ChargeItem/feb" not in retired and "ChargeItem/other" not in retired
    assert any(r.startswith("ChargeItem/") for r in retired)  # March's 99457 itself


def test_describe_and_export_name_every_write_without_urn_references() -> None:
    server = MemoryServer()
    server.run(month([25]))
    plan = plan_month_writes(month([25, 20]), server.fetch(month([25])), SETTINGS)
    lines = plan.describe()
    assert any(line.startswith("create ChargeItem 99458 x1 (billable)") for line in lines)
    assert any("superseded" in line for line in lines)
    exported = plan.export_resources()
    doc = next(r for r in exported if r["resourceType"] == "DocumentReference")
    charge = next(r for r in exported if r["resourceType"] == "ChargeItem")
    assert charge["supportingInformation"][0] == {"reference": f"DocumentReference/{doc['id']}"}
    assert "urn:uuid" not in json.dumps(exported)


# --------------------------------------------------------------------------------------------------
# apply_plan over HTTP (responses)
# --------------------------------------------------------------------------------------------------

CAPABILITIES = capability_statement(
    [
        {"type": t, "interaction": [{"code": c} for c in ("read", "create", "update", "search-type")]}
        for t in ("ChargeItem", "DocumentReference")
    ],
    ["transaction", "batch"],
)


def client(limits: ServerLimits | None = None, **kwargs: Any) -> FhirClient:
    return FhirClient(
        BASE,
        policy=RetryPolicy(max_attempts=2, backoff_base=0),
        sleep=lambda s: None,
        limits=limits,
        **kwargs,
    )


def transaction_answer(request: Any) -> tuple[int, dict[str, str], str]:
    bundle = json.loads(request.body)
    entries = []
    for n, entry in enumerate(bundle["entry"]):
        type_ = entry["resource"]["resourceType"]
        if entry["request"]["method"] == "POST":
            entries.append({"response": {"status": "201 Created", "location": f"{type_}/new{n}/_history/1"}})
        else:
            entries.append(
                {"response": {"status": "200 OK", "location": f"{entry['request']['url']}/_history/2"}}
            )
    return 200, {}, json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


def changed_plan() -> tuple[WritePlan, MemoryServer]:
    server = MemoryServer()
    server.run(month([25, 20]))
    return plan_month_writes(month([25, 20, 20]), server.fetch(month([25])), SETTINGS), server


@responses.activate
def test_writes_are_split_to_the_limit_with_creates_first_and_retirements_last() -> None:
    plan, _ = changed_plan()
    responses.get(f"{BASE}/metadata", json=CAPABILITIES)
    sent: list[dict[str, Any]] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        sent.append(json.loads(request.body))
        return transaction_answer(request)

    responses.add_callback(responses.POST, BASE, callback=answer)
    limits = ServerLimits(transaction=True, batch=True, max_conditional_transaction_entries=2)
    result = apply_plan(client(limits), plan)
    assert result.status == "written"
    assert all(len(b["entry"]) <= 2 for b in sent)
    methods = [e["request"]["method"] for b in sent for e in b["entry"]]
    assert methods.index("PUT") > max(i for i, m in enumerate(methods) if m == "POST")
    assert len(result.created) == 2 and len(result.retired) == 2  # new doc + 99458 x2; old doc + old 99458
    assert all(
        e["request"].get("ifMatch") for b in sent for e in b["entry"] if e["request"]["method"] == "PUT"
    )


@responses.activate
def test_one_transaction_per_patient_when_the_server_has_no_limit() -> None:
    plan, _ = changed_plan()
    responses.get(f"{BASE}/metadata", json=CAPABILITIES)
    responses.add_callback(responses.POST, BASE, callback=transaction_answer)
    result = apply_plan(client(), plan)
    assert result.status == "written" and result.requests == 1
    assert len(responses.calls) == 2  # metadata + one transaction


def lookup_answer(found: bool) -> Callable[[Any], tuple[int, dict[str, str], str]]:
    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        keys = [v.split("|", 1)[1] for v in request.params["identifier"].split(",")]
        type_ = request.path_url.split("?")[0].rsplit("/", 1)[1]
        entries = [
            {"resource": {"resourceType": type_, "id": k[:8], "identifier": [{"system": WK, "value": k}]}}
            for k in keys
        ]
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries if found else []}
        return 200, {}, json.dumps(bundle)

    return answer


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
@responses.activate
def test_an_unknown_outcome_is_looked_up_before_anything_is_sent_again(applied: bool) -> None:
    server = MemoryServer()
    plan = plan_month_writes(month([25]), server.fetch(month([25])), SETTINGS)  # first run: creates only
    responses.get(f"{BASE}/metadata", json=CAPABILITIES)
    responses.post(BASE, body=requests.exceptions.ReadTimeout("slow"))  # the first answer never arrives
    if not applied:
        responses.add_callback(responses.POST, BASE, callback=transaction_answer)
    for type_ in ("DocumentReference", "ChargeItem"):
        responses.add_callback(responses.GET, f"{BASE}/{type_}", callback=lookup_answer(applied))
    result = apply_plan(client(), plan)
    transactions = [c for c in responses.calls if c.request.method == "POST"]
    lookups = [c for c in responses.calls if c.request.method == "GET" and "identifier" in c.request.url]
    assert result.status == "written"
    assert len(lookups) == 2
    assert len(transactions) == (1 if applied else 2)
    assert len(result.created) == len(plan.creates)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, "refused"), (403, "refused"), (405, "refused"), (412, "failed"), (409, "failed")],
)
@responses.activate
def test_a_4xx_on_write_is_a_refusal_with_the_resources_to_export(status: int, outcome: str) -> None:
    plan, _ = changed_plan()
    responses.get(f"{BASE}/metadata", json=CAPABILITIES)
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "x", "diagnostics": "no"}],
    }
    responses.post(BASE, status=status, json=body)
    result = apply_plan(client(), plan)
    assert result.status == outcome
    if outcome == "refused":
        assert [r["resourceType"] for r in result.unwritten] == [c.resource_type for c in plan.creates]
        assert "refused" in result.message
    else:
        assert "run the month again" in result.message and not result.unwritten


@responses.activate
def test_without_transactions_each_write_is_its_own_request_in_the_same_order() -> None:
    plan, _ = changed_plan()
    caps = copy.deepcopy(CAPABILITIES)
    caps["rest"][0]["interaction"] = []
    responses.get(f"{BASE}/metadata", json=caps)
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        seen.append((request.method, request.path_url, body))
        if request.method == "POST":
            created = {**body, "id": f"n{len(seen)}", "meta": {"versionId": "1"}}
            return (
                201,
                {"Location": f"{BASE}/{body['resourceType']}/n{len(seen)}/_history/1"},
                json.dumps(created),
            )
        return 200, {}, json.dumps({**body, "meta": {"versionId": "2"}})

    for type_ in ("DocumentReference", "ChargeItem"):
        responses.add_callback(responses.POST, f"{BASE}/{type_}", callback=answer)
    for retirement in plan.retirements:
        responses.add_callback(responses.PUT, f"{BASE}/{retirement.reference}", callback=answer)
    result = apply_plan(client(), plan)
    assert result.status == "written", result.message
    assert [m for m, _, _ in seen] == ["POST", "POST", "PUT", "PUT"]
    doc_id = "DocumentReference/n1"
    charge = seen[1][2]
    assert charge["supportingInformation"][0] == {"reference": doc_id}
    assert all(c.request.headers.get("If-None-Exist") for c in responses.calls if c.request.method == "POST")
    assert all(c.request.headers.get("If-Match") for c in responses.calls if c.request.method == "PUT")


@responses.activate
def test_dry_run_and_unchanged_plans_make_no_request() -> None:
    plan, _ = changed_plan()
    assert apply_plan(client(), plan, dry_run=True).status == "dry-run"
    server = MemoryServer()
    server.run(month([25]))
    same = plan_month_writes(month([25]), server.fetch(month([25])), SETTINGS)
    assert apply_plan(client(), same).status == "unchanged"
    assert len(responses.calls) == 0


def test_bundles_follow_the_servers_limits() -> None:
    plan, _ = changed_plan()
    assert len(plan_bundles(plan, ServerLimits(transaction=True))) == 1
    limited = plan_bundles(plan, ServerLimits(transaction=True, max_conditional_transaction_entries=2))
    assert all(len(b["entry"]) <= 2 for b in limited) and len(limited) >= 2
