"""Month-end against live FHIR servers (issue 4, part 6): the sandbox EHR and ../shared/fhir-reference-server.

Each test runs against both servers, with its own patients (fresh id prefix) so the session's servers can be
shared. Faults are injected by a loopback proxy in front of the real server, never by mocking the client.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from billing.periods import YearMonth
from fhir_mapping.inbound import InboundCollector
from fhir_mapping.outbound import WriteSettings
from smart_app.auth import Auth, BearerAuth, NoAuth
from smart_app.errors import ExitCode
from smart_app.fhir_client import FhirClient, ServerLimits
from smart_app.http import RetryPolicy
from smart_app.month_end import process_patient, run_month_end
from smart_app.pipeline import RunOptions, evaluate
from smart_app.reads import fetch_patient_month
from smart_app.writeback import plan_bundles, plan_month_writes
from tests.test_month_end_support import (
    NY,
    Fault,
    FaultProxy,
    LiveServer,
    active_charges,
    batch_mentions,
    identifier,
    is_transaction,
    live,
    phone_call,
    practitioner,
    prefix,
    proxy,
    rpm_patient,
)

pytestmark = pytest.mark.integration
__all__ = ["live", "proxy"]  # fixtures

OPTIONS = RunOptions(month=YearMonth(2026, 10), as_of=datetime(2026, 11, 20, 12, 0, tzinfo=NY))
SETTINGS = WriteSettings(billing_practitioner="Practitioner/me-biller")


def auth_for(live: LiveServer) -> Auth:
    return BearerAuth(live.authorization.split(" ", 1)[1]) if live.authorization else NoAuth()


def client_for(live: LiveServer, base: str | None = None, **kwargs: Any) -> FhirClient:
    kwargs.setdefault("policy", RetryPolicy(max_attempts=4, backoff_base=0.01))
    return FhirClient(base or live.base_url, auth_for(live), **kwargs)


def expected_codes(resources: list[dict[str, Any]], pid: str) -> list[tuple[str, int, str, str]]:
    """The codes the engine gives when it reads every resource (no bounded searches)."""
    collector = InboundCollector(timezone=OPTIONS.timezone)
    for resource in resources:
        collector.add(resource)
    records, _ = collector.finish()
    return codes_of(evaluate(records[pid], OPTIONS))


def codes_of(result: Any) -> list[tuple[str, int, str, str]]:
    return [(c.code, c.units, c.charge_key, c.status.value) for c in result.codes]


def snapshot(live: LiveServer, pids: list[str]) -> dict[str, list[tuple[str, str, str | None]]]:
    """Every written resource of the patients: (type/id, status, version) - changes if anything is written."""
    out = {}
    for pid in pids:
        written = live.written(pid)
        out[pid] = sorted(
            (f"{r['resourceType']}/{r['id']}", r.get("status"), r.get("meta", {}).get("versionId"))
            for rs in written.values()
            for r in rs
        )
    return out


def check_month(live: LiveServer, pid: str, expected: list[tuple[str, int, str, str]]) -> None:
    """On the server: exactly one active ChargeItem per expected charge key with the expected units and
    status, nothing else active of ours, and exactly one current monthly log."""
    written = live.written(pid)
    active = active_charges(written["ChargeItem"])
    assert sorted(active) == sorted(key for _, _, key, _ in expected)
    for code, units, key, status in expected:
        [charge] = active[key]  # never two
        assert charge["quantity"]["value"] == units
        assert charge["status"] == status
        assert charge["code"]["coding"][0]["code"] == code
    current = [
        d
        for d in written["DocumentReference"]
        if d["status"] == "current" and identifier(d, "/monthly-log") == f"{pid}|2026-10"
    ]
    assert len(current) == 1


# --------------------------------------------------------------------------------------------------


def test_full_month_end_then_a_second_run_writes_nothing(live: LiveServer) -> None:
    p = prefix()
    recent, long_enrolled = f"{p}-recent", f"{p}-long"
    data = [practitioner()]
    data += rpm_patient(recent, call_minutes=(25,))
    # Enrolled in March: the window anchor is found by the anchor scan, not by reading all the months.
    data += rpm_patient(
        long_enrolled,
        consent_start=date(2026, 3, 1),
        reading_start=date(2026, 3, 2),
        reading_days=240,
        call_minutes=(12, 13, 20),
    )
    live.load(data)
    pids = [recent, long_enrolled]
    with client_for(live) as client:
        first = run_month_end(client, pids, OPTIONS, SETTINGS, concurrency=2)
        assert first.exit_code() is ExitCode.OK, first.report()
        for outcome in first.outcomes:
            assert outcome.result is not None
            assert codes_of(outcome.result) == expected_codes(data, outcome.patient_id)
            assert outcome.write is not None and outcome.write.status == "written"
            assert outcome.read_requests <= 6
            assert outcome.write_requests <= 2
            check_month(live, outcome.patient_id, codes_of(outcome.result))
        assert {c[0] for c in codes_of(first.outcomes[1].result)} == {"99457", "99458", "99454"}
        before = snapshot(live, pids)

        second = run_month_end(client, pids, OPTIONS, SETTINGS, concurrency=2)
    assert second.exit_code() is ExitCode.OK
    assert [o.write.status for o in second.outcomes if o.write] == ["unchanged", "unchanged"]
    assert sum(o.write_requests for o in second.outcomes) == 0
    assert snapshot(live, pids) == before


def test_a_rerun_after_new_data_corrects_the_set(live: LiveServer) -> None:
    pid = f"{prefix()}-p"
    data = [practitioner(), *rpm_patient(pid, call_minutes=(25, 20))]  # 45 minutes: 99457 + 99458 x1
    live.load(data)
    with client_for(live) as client:
        first = process_patient(client, pid, OPTIONS, SETTINGS)
        assert first.write is not None and first.write.status == "written"
        old = live.written(pid)
        old_99458 = active_charges(old["ChargeItem"])[f"{pid}|99458|2026-10-01"][0]
        assert old_99458["quantity"]["value"] == 1
        [old_doc] = old["DocumentReference"]

        # A late-documented 20-minute call: 65 minutes, 99458 x2.
        live.load([phone_call(pid, datetime(2026, 10, 20, 15, 0, tzinfo=NY), 20, f"{pid}-late")])
        second = process_patient(client, pid, OPTIONS, SETTINGS)
    assert second.write is not None and second.write.status == "written", second.error
    assert second.result is not None
    check_month(live, pid, codes_of(second.result))
    now = live.written(pid)
    by_id = {r["id"]: r for r in now["ChargeItem"]}
    assert by_id[old_99458["id"]]["status"] == "entered-in-error"  # never edited otherwise
    assert by_id[old_99458["id"]]["quantity"]["value"] == 1
    assert active_charges(now["ChargeItem"])[f"{pid}|99458|2026-10-01"][0]["quantity"]["value"] == 2
    docs = {d["id"]: d for d in now["DocumentReference"]}
    assert docs[old_doc["id"]]["status"] == "superseded"
    [new_doc] = [d for d in docs.values() if d["status"] == "current"]
    assert new_doc["relatesTo"] == [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{old_doc['id']}"}}
    ]
    # The 99457 did not change: it was left alone.
    assert f"ChargeItem/{active_charges(old['ChargeItem'])[f'{pid}|99457|2026-10-01'][0]['id']}" in (
        second.plan.kept if second.plan else ()
    )


def test_a_run_killed_part_way_and_run_again_leaves_no_duplicates_and_nothing_missing(
    live: LiveServer,
) -> None:
    pid = f"{prefix()}-k"
    data = [practitioner(), *rpm_patient(pid, call_minutes=(25, 20))]  # doc + 99457 + 99458 + 99454 + 99453
    live.load(data)
    small = ServerLimits(transaction=True, batch=True, max_conditional_transaction_entries=2)
    with client_for(live, limits=small) as client:
        fetch = fetch_patient_month(client, pid, OPTIONS)
        plan = plan_month_writes(evaluate(fetch.records, OPTIONS), fetch, SETTINGS)
        bundles = plan_bundles(plan, small)
        assert len(bundles) >= 3
        client.transaction(bundles[0])  # ... and the process dies here
    with client_for(live) as client:
        again = process_patient(client, pid, OPTIONS, SETTINGS)
        assert again.write is not None and again.write.status == "written"
        assert again.result is not None
        check_month(live, pid, codes_of(again.result))
        third = process_patient(client, pid, OPTIONS, SETTINGS)
    assert third.write is not None and third.write.status == "unchanged"


class _DiesOnSecondTransaction(FhirClient):
    calls = 0

    def transaction(self, bundle: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("power cut")
        return super().transaction(bundle)


def test_a_run_that_raises_mid_write_is_reported_and_repaired_by_the_next_run(live: LiveServer) -> None:
    pid = f"{prefix()}-r"
    live.load([practitioner(), *rpm_patient(pid, call_minutes=(25, 20))])
    small = ServerLimits(transaction=True, batch=True, max_conditional_transaction_entries=2)
    with _DiesOnSecondTransaction(live.base_url, auth_for(live), limits=small) as client:
        broken = run_month_end(client, [pid], OPTIONS, SETTINGS)
    assert broken.exit_code() is ExitCode.PATIENTS_FAILED
    assert "power cut" in (broken.outcomes[0].error or "")
    with client_for(live) as client:
        fixed = run_month_end(client, [pid], OPTIONS, SETTINGS)
    assert fixed.exit_code() is ExitCode.OK
    assert fixed.outcomes[0].result is not None
    check_month(live, pid, codes_of(fixed.outcomes[0].result))


def test_injected_faults_are_survived_and_the_failed_patient_is_reported(
    live: LiveServer, proxy: FaultProxy
) -> None:
    p = prefix()
    a, b, c = f"{p}-a", f"{p}-b", f"{p}-c"
    data = [practitioner(), *rpm_patient(a), *rpm_patient(b), *rpm_patient(c, call_minutes=(30, 15))]
    live.load(data)
    proxy.add(Fault(batch_mentions(f"Patient/{a}"), status=429, headers={"Retry-After": "7"}))
    proxy.add(Fault(batch_mentions(f"Patient/{c}"), status=503))
    slow_read = proxy.add(Fault(batch_mentions(f"Patient/{c}"), action="delay", delay=2.5))
    refused = proxy.add(Fault(batch_mentions(f"Patient/{b}"), status=400, times=None))
    slow_write = proxy.add(
        Fault(
            lambda m, path, body: is_transaction(m, path, body) and f"Patient/{a}".encode() in body,
            action="forward-then-delay",
            delay=2.5,
        )
    )
    sleeps: list[float] = []
    with client_for(live, proxy.base_url, timeout=(2.0, 1.0), sleep=sleeps.append) as client:
        run = run_month_end(client, [a, b, c], OPTIONS, SETTINGS, concurrency=3)
    outcome = {o.patient_id: o for o in run.outcomes}
    assert run.exit_code() is ExitCode.PATIENTS_FAILED
    assert outcome[b].failed and "injected 400" in (outcome[b].error or "")
    assert not outcome[a].failed and not outcome[c].failed
    assert 7.0 in sleeps  # Retry-After honoured
    # a's transaction answered too late: looked up by write key (DocumentReference, ChargeItem), not resent.
    assert outcome[a].write is not None and outcome[a].write.requests == 3
    assert slow_read.hits == 1 and refused.hits >= 1 and slow_write.hits == 1
    for pid in (a, c):
        assert outcome[pid].result is not None
        check_month(live, pid, codes_of(outcome[pid].result))  # the late answer did not cause a second write
    assert live.written(b) == {"ChargeItem": [], "DocumentReference": []}

    proxy.clear()
    with client_for(live, proxy.base_url) as client:
        rerun = run_month_end(client, [a, b, c], OPTIONS, SETTINGS, concurrency=3)
    assert rerun.exit_code() is ExitCode.OK
    statuses = {o.patient_id: o.write.status for o in rerun.outcomes if o.write}
    assert statuses == {a: "unchanged", b: "written", c: "unchanged"}
