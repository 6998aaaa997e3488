"""`rpm-billing month-end` end to end: the sandbox (bearer token) and the reference server (no auth)."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from smart_app.cli import main
from smart_app.commands.month_end import _ProgressBar
from smart_app.errors import ExitCode
from tests.test_month_end_support import (
    Fault,
    FaultProxy,
    LiveServer,
    active_charges,
    capability_statement,
    consent,
    is_transaction,
    live,
    patient,
    practitioner,
    prefix,
    proxy,
    rpm_patient,
)

pytestmark = pytest.mark.integration
__all__ = ["live", "proxy"]  # fixtures


def month_end(
    live: LiveServer, tmp_path: Path, *extra: str, base: str | None = None, fmt: str = "json"
) -> list[str]:
    args = ["month-end", "--fhir-base", base or live.base_url, "--month", "2026-10"]
    args += ["--as-of", "2026-11-20T12:00:00", "--out", str(tmp_path / "out"), "--format", fmt]
    if live.authorization:
        token = tmp_path / "token"
        token.write_text(live.authorization.split(" ", 1)[1])
        args += ["--auth", "bearer", "--token-file", str(token)]
    else:
        args += ["--auth", "none"]
    return args + list(extra)


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(args)
    out = capsys.readouterr().out
    return code, json.loads(out)


def two_patients(live: LiveServer) -> list[str]:
    p = prefix()
    pids = [f"{p}-a", f"{p}-b"]
    live.load([practitioner(), *rpm_patient(pids[0]), *rpm_patient(pids[1], call_minutes=(25, 20))])
    return pids


def test_month_end_writes_once_and_reports(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = two_patients(live)
    who = [arg for pid in pids for arg in ("--patient", pid)]
    code, report = run_json(month_end(live, tmp_path, *who), capsys)
    assert code == ExitCode.OK, report
    assert report["summary"]["patients"] == 2 and report["summary"]["created"] == 2 + 4 + 5
    # readings from Sep 2 to Oct 21: the windows Sep 2 - Oct 1 and Oct 2 - Oct 31 both end in October
    assert report["summary"]["codes"] == {"99453": 2, "99454": 4, "99457": 2, "99458": 1}
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"] == report["summary"]
    assert all(p["status"] == "written" for p in report["patients"])

    code = main(month_end(live, tmp_path, *who, fmt="table"))
    out = capsys.readouterr().out
    assert code == ExitCode.OK
    assert "Patients: 2 (2 ok, 0 failed, 0 write refused)" in out
    assert "0 created, 0 retired, 2 patient(s) unchanged; 0 write request(s)" in out
    assert "Codes (units): 99453 x2, 99454 x4, 99457 x2, 99458 x1" in out


def test_dry_run_writes_nothing_and_says_what_it_would_write(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = two_patients(live)
    args = month_end(live, tmp_path, "--patient", pids[1], "--dry-run", fmt="table")
    at = args.index("--out")
    del args[at : at + 2]
    monkeypatch.chdir(tmp_path)
    code = main(args)
    out = capsys.readouterr().out
    assert code == ExitCode.OK
    assert "would: +6 -0" in out and "create ChargeItem 99458 x1 (billable)" in out
    assert live.written(pids[1]) == {"ChargeItem": [], "DocumentReference": []}
    assert not (tmp_path / "rpm-month-end-2026-10").exists()  # no --out: no file either


def test_a_server_refusing_the_writes_gets_an_export_file_and_exit_8(
    live: LiveServer, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = two_patients(live)
    proxy.add(Fault(is_transaction, status=422, times=None))
    args = month_end(live, tmp_path, "--patient", pids[0], "--patient", pids[1], base=proxy.base_url)
    code, report = run_json(args, capsys)
    assert code == ExitCode.WRITE_REFUSED
    assert [p["status"] for p in report["patients"]] == ["write-refused", "write-refused"]
    lines = (tmp_path / "out" / "export" / "ChargeItem.ndjson").read_text().splitlines()
    charges = [json.loads(line) for line in lines]
    assert sorted(c["code"]["coding"][0]["code"] for c in charges) == sorted(
        ["99453", "99454", "99454", "99457"] * 2 + ["99458"]
    )
    documents = (tmp_path / "out" / "export" / "DocumentReference.ndjson").read_text().splitlines()
    doc_ids = {json.loads(line)["id"] for line in documents}
    assert all(c["supportingInformation"][0]["reference"].split("/")[1] in doc_ids for c in charges)
    for pid in pids:
        assert live.written(pid)["ChargeItem"] == []

    # Once the server takes them, the same run writes everything and the export is gone.
    proxy.clear()
    code, _ = run_json(month_end(live, tmp_path, "--patient", pids[0], "--patient", pids[1]), capsys)
    assert code == ExitCode.OK
    assert not (tmp_path / "out" / "export" / "ChargeItem.ndjson").exists()
    assert len(active_charges(live.written(pids[1])["ChargeItem"])) == 5


def test_a_server_whose_capability_statement_lacks_chargeitem_writes_is_never_written_to(
    live: LiveServer, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = two_patients(live)
    capabilities = capability_statement(
        [
            {"type": "ChargeItem", "interaction": [{"code": "read"}, {"code": "search-type"}]},
            {"type": "DocumentReference", "interaction": [{"code": c} for c in ("read", "create", "update")]},
        ],
        ["transaction", "batch"],
    )
    proxy.add(
        Fault(lambda m, path, body: path.endswith("/metadata"), status=200, body=capabilities, times=None)
    )
    sent = proxy.add(Fault(is_transaction, status=500, times=None))
    code, report = run_json(month_end(live, tmp_path, "--patient", pids[0], base=proxy.base_url), capsys)
    assert code == ExitCode.WRITE_REFUSED
    assert "ChargeItem create" in report["write_refusal"]
    assert sent.hits == 0
    assert (tmp_path / "out" / "export" / "ChargeItem.ndjson").exists()


def test_a_group_names_the_population(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = two_patients(live)
    group = {
        "resourceType": "Group",
        "id": f"{pids[0]}-group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in pids],
    }
    live.load([group])
    code, report = run_json(month_end(live, tmp_path, "--group", group["id"], "--dry-run"), capsys)
    assert code == ExitCode.OK
    assert [p["patient"] for p in report["patients"]] == pids
    assert report["dry_run"] is True
    assert json.loads((tmp_path / "out" / "report.json").read_text())["dry_run"] is True


def test_skipped_resources_finish_with_exit_4(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = f"{prefix()}-s"
    bad_call = {
        "resourceType": "Communication",
        "id": f"{pid}-bad",
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "sent": "2026-10-07T10:00:00-04:00",
        "extension": [
            {
                "url": "http://rpm-billing.org/fhir/StructureDefinition/activity-period",
                "valuePeriod": {"start": "2026-10-07T10:30:00-04:00", "end": "2026-10-07T10:00:00-04:00"},
            }
        ],
    }
    live.load([patient(pid), consent(pid, date(2026, 9, 1)), bad_call])
    code, report = run_json(month_end(live, tmp_path, "--patient", pid), capsys)
    assert code == ExitCode.SKIPPED_RESOURCES, report
    assert report["patients"][0]["skipped"][0]["resource"] == f"Communication/{pid}-bad"


def test_no_credentials_on_a_server_that_wants_them_is_an_auth_error(
    sandbox_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["month-end", "--fhir-base", sandbox_server.base_url, "--month", "2026-10", "--auth", "none"]
    code = main([*args, "--patient", "nobody", "--out", str(tmp_path)])
    assert code == ExitCode.AUTH_ERROR
    assert "FAILED nobody" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [["--group", "g", "--patient", "p"], ["--concurrency", "0"], ["--month", "2026-13"], ["--timeout", "0"]],
)
def test_bad_arguments_exit_2(extra: list[str], tmp_path: Path) -> None:
    args = ["month-end", "--fhir-base", "http://127.0.0.1:9/fhir", "--month", "2026-10", "--auth", "none"]
    with pytest.raises(SystemExit) as raised:
        code = main([*args, *extra, "--out", str(tmp_path)])
        raise SystemExit(code)
    assert raised.value.code == ExitCode.BAD_ARGUMENTS


def test_the_progress_bar_counts_patients() -> None:
    stream = io.StringIO()
    bar = _ProgressBar(stream, width=10)
    bar(0, 4)
    bar(2, 4)
    bar.finish()
    assert stream.getvalue() == "\r[----------] 0/4 patients\r[#####-----] 2/4 patients\n"


def test_backend_services_auth_discovers_asks_for_scopes_and_bills(
    sandbox_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backend Services end to end: discovery, private_key_jwt token request, granted scopes read back."""
    live = LiveServer("sandbox", sandbox_server.base_url, f"Bearer {sandbox_server.token('system/*.*')}")
    pid = two_patients(live)[0]
    key_file = tmp_path / "backend.pem"
    key = sandbox_server.running.state.backend_keys.keys["ES384"]
    key_file.write_bytes(key.as_pem(private=True))
    args = ["month-end", "--fhir-base", sandbox_server.base_url, "--month", "2026-10", "--patient", pid]
    args += ["--auth", "backend", "--client-id", "rpm-billing-backend", "--key-file", str(key_file)]
    args += ["--as-of", "2026-11-20T12:00:00", "--out", str(tmp_path / "out"), "--format", "json"]
    code, report = run_json(args, capsys)
    assert code == ExitCode.OK, report
    assert report["patients"][0]["status"] == "written"

    # A client granted less than month-end reads is stopped before it reads anything.
    code = main([*args, "--scope", "system/Patient.rs system/Observation.rs"])
    assert code == ExitCode.AUTH_ERROR
    assert "did not grant" in capsys.readouterr().err
