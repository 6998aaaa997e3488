"""Month-end reads: the searches sent (bounds with offsets, batches, includes), the round trips they take, and
that the bounded reads give the engine what reading everything would. HTTP is mocked with `responses` in front
of a tiny in-memory FHIR search (`FakeFhir`) that understands just the parameters the reads use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import responses

from billing.periods import YearMonth
from fhir_mapping.canon import CANON
from fhir_mapping.inbound import InboundCollector
from smart_app import reads
from smart_app.errors import UsageError
from smart_app.fhir_client import FhirClient
from smart_app.http import ForbiddenError, NotFoundError, RetryPolicy
from smart_app.pipeline import RunOptions, evaluate
from smart_app.reads import fetch_patient_month, parse_charge_key, population
from tests.test_month_end_support import (
    NY,
    capability_statement,
    consent,
    daily_readings,
    device,
    patient,
    phone_call,
    practitioner,
    reading,
    rpm_patient,
)

BASE = "http://ehr.test/fhir"
OCTOBER = RunOptions(month=YearMonth(2026, 10), as_of=datetime(2026, 11, 20, 12, 0, tzinfo=NY))

Resource = dict[str, Any]


def _when(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=NY)


class FakeFhir:
    """Just enough FHIR search for the reads, behind `responses`. Records every request."""

    def __init__(
        self,
        resources: list[Resource],
        *,
        batch: bool = True,
        includes: tuple[str, ...] = ("Communication:encounter",),
        period_param: bool = False,
        missing_modifier: bool = True,
        batch_links: bool = True,
    ) -> None:
        self.resources = resources
        self.batch_links = batch_links
        self.missing_modifier = missing_modifier
        self.calls: list[tuple[str, str]] = []  # (method, url) of every HTTP request
        self.searches: list[tuple[str, list[tuple[str, str]]]] = []  # every search run, batched or not
        resource_caps = []
        for type_ in (
            "Patient",
            "Consent",
            "Device",
            "RelatedPerson",
            "Observation",
            "Communication",
            "Encounter",
            "ChargeItem",
            "DocumentReference",
            "Practitioner",
            "Group",
        ):
            cap: Resource = {"type": type_, "interaction": [{"code": "read"}, {"code": "search-type"}]}
            cap["searchInclude"] = [i for i in includes if i.startswith(type_ + ":")]
            if type_ == "DocumentReference" and period_param:
                cap["searchParam"] = [{"name": "period", "type": "date"}]
            resource_caps.append(cap)
        self.capabilities = capability_statement(resource_caps, ["batch"] if batch else [])

    # -- HTTP ---------------------------------------------------------------------------------------

    def install(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(responses.GET, f"{BASE}/metadata", callback=self._metadata)
        mock.add_callback(responses.POST, BASE, callback=self._batch)
        mock.add_callback(responses.GET, re.compile(rf"{re.escape(BASE)}/[A-Z]\w+.*"), callback=self._get)

    def _metadata(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.calls.append(("GET", request.url))
        return 200, {}, json.dumps(self.capabilities)

    def _get(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.calls.append(("GET", request.url))
        status, body = self.answer(request.url[len(BASE) + 1 :], links=True)
        return status, {}, json.dumps(body)

    def _batch(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.calls.append(("POST", request.url))
        bundle = json.loads(request.body)
        entries = []
        for entry in bundle["entry"]:
            status, body = self.answer(entry["request"]["url"], links=self.batch_links)
            item: Resource = {"response": {"status": str(status)}}
            if status < 300:
                item["resource"] = body
            else:
                item["response"]["outcome"] = body
            entries.append(item)
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "batch-response", "entry": entries})

    # -- search ---------------------------------------------------------------------------------------

    def answer(self, relative: str, *, links: bool) -> tuple[int, Resource]:
        parts = urlsplit(relative)
        path = parts.path.strip("/").split("/")
        params = parse_qsl(parts.query)
        if len(path) == 2:
            found = [r for r in self.resources if r["resourceType"] == path[0] and r.get("id") == path[1]]
            if not found:
                return 404, _outcome("not found")
            return 200, found[0]
        type_ = path[0]
        self.searches.append((type_, params))
        if any(k == "sent:missing" for k, _ in params) and not self.missing_modifier:
            return 400, _outcome("modifier ':missing' is not supported")
        matches = [r for r in self.resources if r["resourceType"] == type_ and self._matches(r, params)]
        if ("_sort", "date") in params:
            matches.sort(key=lambda r: _when(r.get("effectiveDateTime", "1900-01-01")))
        count = int(dict(params).get("_count", 20))
        offset = int(dict(params).get("_offset", 0))
        page = matches[offset : offset + count]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in page]
        for include in (v for k, v in params if k == "_include"):
            field = include.split(":")[1]
            for r in page:
                ref = (r.get(field) or {}).get("reference", "")
                entries += [
                    {"resource": x, "search": {"mode": "include"}}
                    for x in self.resources
                    if f"{x['resourceType']}/{x.get('id')}" == ref
                ]
        bundle: Resource = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": entries,
        }
        if links and offset + count < len(matches):
            query = [(k, v) for k, v in params if k != "_offset"] + [("_offset", str(offset + count))]
            bundle["link"] = [{"relation": "next", "url": f"{BASE}/{type_}?{urlencode(query)}"}]
        return 200, bundle

    @staticmethod
    def _matches(resource: Resource, params: list[tuple[str, str]]) -> bool:
        for key, value in params:
            if key.startswith("_") and key not in ("_id",):
                continue
            if key == "_id":
                ok = resource.get("id") in value.split(",")
            elif key in ("subject", "patient"):
                ok = any((resource.get(f) or {}).get("reference") == value for f in ("subject", "patient"))
            elif key == "status":
                ok = resource.get("status") in value.split(",")
            elif key == "identifier":
                system, _, code = value.partition("|")
                ok = any(
                    i.get("system") == system and (not code or i.get("value") == code)
                    for i in resource.get("identifier", [])
                )
            elif key in ("date", "sent"):
                field = "effectiveDateTime" if key == "date" else "sent"
                if not resource.get(field):
                    return False
                moment, bound = _when(resource[field]), _when(value[2:])
                ok = moment >= bound if value.startswith("ge") else moment < bound
            elif key == "sent:missing":
                ok = not resource.get("sent")
            elif key == "period":
                period = resource.get("context", {}).get("period", {})
                bound = _when(value[2:])
                ok = (
                    _when(period["start"]) <= bound
                    if value.startswith("le")
                    else _when(period["end"]) >= bound
                )
            else:
                raise AssertionError(f"FakeFhir does not know {key}")
            if not ok:
                return False
        return True


def _outcome(text: str) -> Resource:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "x", "diagnostics": text}],
    }


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def serve(
    mock: responses.RequestsMock, resources: list[Resource], **kwargs: Any
) -> tuple[FakeFhir, FhirClient]:
    fake = FakeFhir(resources, **kwargs)
    fake.install(mock)
    return fake, FhirClient(BASE, policy=RetryPolicy(max_attempts=1), sleep=lambda s: None)


def everything(resources: list[Resource], pid: str, options: RunOptions = OCTOBER) -> Any:
    collector = InboundCollector(timezone=options.timezone)
    for resource in resources:
        collector.add(resource)
    records, _ = collector.finish()
    return evaluate(records[pid], options)


def same_result(a: Any, b: Any) -> bool:
    from fhir_mapping.monthly_log import log_json

    left, right = log_json(a), log_json(b)
    left.pop("as_of"), right.pop("as_of")
    return left == right


def search_params(fake: FakeFhir, type_: str) -> list[dict[str, list[str]]]:
    out = []
    for searched, params in fake.searches:
        if searched == type_:
            grouped: dict[str, list[str]] = {}
            for key, value in params:
                grouped.setdefault(key, []).append(value)
            out.append(grouped)
    return out


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("month", "zone", "obs_from", "month_end", "sent_from", "sent_until"),
    [
        # October 2026, New York: all bounds in daylight time
        (
            (2026, 10),
            "America/New_York",
            "2026-09-02T00:00:00-04:00",
            "2026-11-01T00:00:00-04:00",
            "2026-09-30T00:00:00-04:00",
            "2026-11-08T00:00:00-05:00",
        ),
        # March 2026: the window lead starts in standard time, the month ends in daylight time
        (
            (2026, 3),
            "America/New_York",
            "2026-01-31T00:00:00-05:00",
            "2026-04-01T00:00:00-04:00",
            "2026-02-28T00:00:00-05:00",
            "2026-04-08T00:00:00-04:00",
        ),
        # A practice west of New York: its own offsets, never UTC dates
        (
            (2026, 1),
            "America/Los_Angeles",
            "2025-12-03T00:00:00-08:00",
            "2026-02-01T00:00:00-08:00",
            "2025-12-31T00:00:00-08:00",
            "2026-02-08T00:00:00-08:00",
        ),
    ],
    ids=["october-edt", "march-dst-change", "los-angeles"],
)
def test_search_bounds_carry_explicit_offsets_in_the_practice_zone(
    mock: responses.RequestsMock,
    month: tuple[int, int],
    zone: str,
    obs_from: str,
    month_end: str,
    sent_from: str,
    sent_until: str,
) -> None:
    pid = "b1"
    fake, client = serve(mock, [patient(pid), consent(pid, date(month[0], month[1], 1) - timedelta(days=10))])
    as_of = datetime(2027, 1, 1, tzinfo=NY)
    options = RunOptions(month=YearMonth(*month), as_of=as_of, settings={"timezone": zone})
    fetch_patient_month(client, pid, options)
    [observations] = search_params(fake, "Observation")
    assert observations["date"] == [f"ge{obs_from}", f"lt{month_end}"]
    communications = search_params(fake, "Communication")
    assert communications[0]["sent"] == [f"ge{sent_from}", f"lt{sent_until}"]
    assert communications[0]["_include"] == ["Communication:encounter"]
    assert communications[1]["sent:missing"] == ["true"]


def test_a_patient_takes_two_round_trips_and_gives_what_reading_everything_gives(
    mock: responses.RequestsMock,
) -> None:
    data = [practitioner(), *rpm_patient("p1", call_minutes=(25, 20)), *rpm_patient("p2")]
    fake, client = serve(mock, data)
    first = fetch_patient_month(client, "p1", OCTOBER)
    # metadata once, two batches, and the nurse's name for the log (once per run)
    assert [m for m, _ in fake.calls] == ["GET", "POST", "POST", "GET"]
    assert "/Practitioner?_id=me-nurse-1" in fake.calls[-1][1]
    second = fetch_patient_month(client, "p2", OCTOBER)
    assert (first.requests, second.requests) == (3, 2)
    for pid, fetch in (("p1", first), ("p2", second)):
        assert same_result(evaluate(fetch.records, OCTOBER), everything(data, pid))
        assert fetch.skipped == [] and fetch.notes == ()


def test_without_batch_the_same_searches_go_one_by_one(mock: responses.RequestsMock) -> None:
    pid = "p1"
    data = [practitioner(), *rpm_patient(pid)]
    fake, client = serve(mock, data, batch=False)
    fetch = fetch_patient_month(client, pid, OCTOBER)
    assert all(m == "GET" for m, _ in fake.calls)
    assert fetch.requests == len(fake.calls) - 1  # all but metadata
    assert same_result(evaluate(fetch.records, OCTOBER), everything(data, pid))


def test_the_anchor_scan_reads_only_until_the_setup_window_is_known(
    mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enrolled in 2025: the readings before the month are read oldest first, just until a window reaches
    the 99453 minimum, however many months of readings there are."""
    monkeypatch.setattr(reads, "SCAN_PAGE_SIZE", 5)
    pid = "old"
    data = [patient(pid), consent(pid, date(2025, 1, 1)), device(pid)]
    # Patient-reported readings (no device) first: the first page of the scan settles nothing.
    data += [
        {**reading(pid, f"2025-01-{d:02d}T08:00:00-05:00", f"{pid}-pr{d}"), "device": None}
        for d in range(2, 9)
    ]
    data += daily_readings(pid, date(2025, 1, 10), 600)  # until September 2026
    data += daily_readings(pid, date(2026, 9, 5), 40, tag="m")
    fake, client = serve(mock, data)
    fetch = fetch_patient_month(client, pid, OCTOBER)
    scans = [p for p in search_params(fake, "Observation") if p.get("_sort") == ["date"]]
    assert scans[0]["date"] == ["ge2025-01-01T00:00:00-05:00", "lt2026-09-02T00:00:00-04:00"]
    # The first window (from 2025-01-10) belongs to February 2025: cms-2025, 16 data days for 99453. The scan
    # stops on the page that holds the 16th day (7 patient-reported + 16 readings: page 5 of 5 readings): the
    # batch's first page, then pages 1-5 on their own. Not the 125 pages reading everything would take.
    assert len(scans) == 6
    assert fetch.requests == 2 + 5
    assert same_result(evaluate(fetch.records, OCTOBER), everything(data, pid))


def test_a_search_the_batch_truncated_is_run_again_with_paging(
    mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some servers answer a search inside a batch with its first page, a total and no next link."""
    monkeypatch.setattr(reads, "PAGE_SIZE", 20)
    pid = "many"
    data = rpm_patient(pid, reading_days=60)
    fake, client = serve(mock, data, batch_links=False)
    fetch = fetch_patient_month(client, pid, OCTOBER)
    gets = [u for m, u in fake.calls if m == "GET" and "/Observation" in u]
    assert len(gets) >= 2  # the month's Observations, paged
    assert same_result(evaluate(fetch.records, OCTOBER), everything(data, pid))


def test_a_server_that_cannot_search_a_missing_sent_gets_a_note_not_a_failure(
    mock: responses.RequestsMock,
) -> None:
    data = [*rpm_patient("a"), *rpm_patient("b")]
    fake, client = serve(mock, data, missing_modifier=False)
    first = fetch_patient_month(client, "a", OCTOBER)
    assert any("without 'sent'" in note for note in first.notes)
    fetch_patient_month(client, "b", OCTOBER)
    asked = [p for p in search_params(fake, "Communication") if "sent:missing" in p]
    assert len(asked) == 1  # learnt once per run


def test_communications_without_sent_are_read_where_the_server_can_find_them(
    mock: responses.RequestsMock,
) -> None:
    pid = "ns"
    call = phone_call(pid, datetime(2026, 10, 6, 10, 0, tzinfo=NY), 25, "c-nosent")
    del call["sent"]
    data = [*rpm_patient(pid, call_minutes=()), call]
    _, client = serve(mock, data)
    fetch = fetch_patient_month(client, pid, OCTOBER)
    assert evaluate(fetch.records, OCTOBER).minutes == 25


def test_staff_and_ai_devices_are_read_once_per_run(mock: responses.RequestsMock) -> None:
    ai = {
        "resourceType": "Device",
        "id": "ai",
        "status": "active",
        "deviceName": [{"name": "Bot", "type": "other"}],
    }
    data = [practitioner(), ai]
    for pid in ("x", "y"):
        data += rpm_patient(pid, call_minutes=(25,))
        data.append(
            phone_call(pid, datetime(2026, 10, 20, 9, 0, tzinfo=NY), 5, f"{pid}-ai", sender="Device/ai")
        )
    fake, client = serve(mock, data)
    fetches = [fetch_patient_month(client, pid, OCTOBER) for pid in ("x", "y")]
    assert [f.requests for f in fetches] == [3, 2]
    assert len(search_params(fake, "Device")) == 2 + 1  # each patient's devices, the AI system once
    for pid, fetch in zip(("x", "y"), fetches, strict=True):
        result = evaluate(fetch.records, OCTOBER)
        assert any(f.code == "ai-contact" for f in result.flags)
        assert same_result(result, everything(data, pid))


def test_the_months_logs_are_narrowed_by_period_where_the_server_offers_it(
    mock: responses.RequestsMock,
) -> None:
    pid = "d"
    docs = [
        {
            "resourceType": "DocumentReference",
            "id": f"doc-{m}",
            "status": "current",
            "identifier": [{"system": f"{CANON}/monthly-log", "value": f"{pid}|2026-{m:02d}"}],
            "subject": {"reference": f"Patient/{pid}"},
            "content": [{"attachment": {"contentType": "text/html"}}],
            "context": {
                "period": {
                    "start": f"2026-{m:02d}-01T00:00:00-04:00",
                    "end": f"2026-{m + 1:02d}-01T00:00:00-04:00",
                }
            },
        }
        for m in (9, 10, 11)
    ]
    fake, client = serve(mock, [*rpm_patient(pid), *docs], period_param=True)
    fetch = fetch_patient_month(client, pid, OCTOBER)
    [doc_search] = search_params(fake, "DocumentReference")
    assert doc_search["period"] == ["ge2026-10-15T00:00:00-04:00", "le2026-10-15T00:00:00-04:00"]
    assert [d["id"] for d in fetch.document_resources] == ["doc-10"]


def test_our_own_charges_of_the_month_are_recomputed_not_read_as_prior_charges(
    mock: responses.RequestsMock,
) -> None:
    pid = "c"

    def charge(cid: str, key: str, status: str) -> Resource:
        return {
            "resourceType": "ChargeItem",
            "id": cid,
            "status": status,
            "identifier": [{"system": f"{CANON}/charge-key", "value": key}],
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": key.split("|")[1]}]},
            "subject": {"reference": f"Patient/{pid}"},
            "occurrencePeriod": {"start": "2026-09-02T00:00:00-04:00", "end": "2026-10-01T23:59:59-04:00"},
        }

    data = [
        *rpm_patient(pid),
        charge("ours-planned", f"{pid}|99453|2026-09-05", "planned"),  # this month's (window ends Oct 4)
        charge("ours-billed", f"{pid}|99454|2026-09-05", "billed"),
        charge("earlier", f"{pid}|99453|2026-08-01", "billable"),  # August's: a real prior charge
    ]
    _, client = serve(mock, data)
    fetch = fetch_patient_month(client, pid, OCTOBER)
    assert {c["id"] for c in fetch.charge_resources} == {"ours-planned", "ours-billed", "earlier"}
    assert {c.id for c in fetch.records.charges} == {"ours-billed", "earlier"}


def test_an_unknown_patient_fails_with_a_clear_message(mock: responses.RequestsMock) -> None:
    _, client = serve(mock, [])
    with pytest.raises(NotFoundError, match="Patient/ghost is not on this server"):
        fetch_patient_month(client, "ghost", OCTOBER)


def test_a_refused_search_fails_the_patient_with_its_typed_error(mock: responses.RequestsMock) -> None:
    fake, client = serve(mock, rpm_patient("f"))
    original = fake.answer

    def forbid(relative: str, *, links: bool) -> tuple[int, Resource]:
        if relative.startswith("ChargeItem"):
            return 403, _outcome("scope does not allow ChargeItem")
        return original(relative, links=links)

    fake.answer = forbid  # type: ignore[method-assign]
    with pytest.raises(ForbiddenError, match="scope does not allow ChargeItem"):
        fetch_patient_month(client, "f", OCTOBER)


# --------------------------------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------------------------------


def test_population_from_ids_keeps_order_and_drops_repeats(mock: responses.RequestsMock) -> None:
    _, client = serve(mock, [])
    assert population(client, group=None, patients=["b", "a", "b"]) == ["b", "a"]
    with pytest.raises(UsageError):
        population(client, group=None, patients=["bad id"])
    with pytest.raises(UsageError):
        population(client, group="g", patients=["a"])
    assert len(mock.calls) == 0


def test_population_from_a_group_skips_inactive_members(mock: responses.RequestsMock) -> None:
    group = {
        "resourceType": "Group",
        "id": "rpm",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Patient/b"}, "inactive": True},
            {"entity": {"reference": f"{BASE}/Patient/c"}},
            {"entity": {"reference": "Practitioner/x"}},
        ],
    }
    _, client = serve(mock, [group])
    assert population(client, group="rpm", patients=[]) == ["a", "c"]


def test_population_from_consents_takes_rpm_consents_reaching_the_month(mock: responses.RequestsMock) -> None:
    not_rpm = consent("ccm", date(2026, 1, 1))
    not_rpm["category"] = [{"coding": [{"system": f"{CANON}/CodeSystem/care-program", "code": "ccm"}]}]
    by_code = consent("code", date(2026, 10, 3))
    by_code["category"] = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
    by_code["provision"]["code"] = [
        {"coding": [{"system": f"{CANON}/CodeSystem/care-program", "code": "rpm"}]}
    ]
    data = [
        consent("now", date(2026, 1, 1)),
        consent("ended-in-window", date(2026, 1, 1), end=date(2026, 9, 10)),  # a window may still end in Oct
        consent("ended-long-ago", date(2025, 1, 1), end=date(2025, 6, 1)),
        consent("future", date(2026, 12, 1)),
        not_rpm,
        by_code,
    ]
    _, client = serve(mock, data)
    assert population(client, group=None, patients=[], options=OCTOBER) == ["code", "ended-in-window", "now"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("p1|99457|2026-10-01", ("p1", "99457", "2026-10-01", YearMonth(2026, 10))),  # the calendar month
        ("p1|99458|2026-10-01", ("p1", "99458", "2026-10-01", YearMonth(2026, 10))),
        ("p1|99454|2026-09-05", ("p1", "99454", "2026-09-05", YearMonth(2026, 10))),  # window ends Oct 4
        ("p1|99454|2026-09-01", ("p1", "99454", "2026-09-01", YearMonth(2026, 9))),  # window ends Sep 30
        ("p1|99453|2026-09-02", ("p1", "99453", "2026-09-02", YearMonth(2026, 10))),
        ("p1|98975|2026-10-01", None),  # not an RPM code
        ("p1|99457", None),
        ("p1|99457|2026-13-01", None),
        (None, None),
    ],
)
def test_charge_keys_tell_the_month_a_charge_belongs_to(key: str | None, expected: Any) -> None:
    assert parse_charge_key(key) == expected
