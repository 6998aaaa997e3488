"""`rpm-billing compute` end to end: input formats, exit codes, written files, golden monthly log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fhir_mapping.validate import validate_resource
from smart_app.cli import main
from smart_app.errors import ExitCode

FIXTURES = Path(__file__).parent / "fixtures" / "rich"
BUNDLE = FIXTURES / "rich-patient.json"
AS_OF = "2026-04-05T12:00:00-04:00"
GOLDEN = (
    "logs/rich-1-2026-03.html",
    "logs/rich-1-2026-03.json",
    "ChargeItem.ndjson",
    "DocumentReference.ndjson",
)


def compute(*args: str) -> int:
    return main(["compute", "--as-of", AS_OF, *args])


def resources() -> list[dict]:
    return [e["resource"] for e in json.loads(BUNDLE.read_text())["entry"]]


def test_golden_monthly_log_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = compute(
        "--input",
        str(BUNDLE),
        "--month",
        "2026-03",
        "--out",
        str(tmp_path),
        "--billing-practitioner",
        "Practitioner/dr-1",
    )
    assert code == ExitCode.OK
    table = capsys.readouterr().out
    assert "rich-1" in table and "99457 99458 99454 99453" in table
    for name in GOLDEN:
        produced = (tmp_path / name).read_text()
        golden = FIXTURES / "golden" / Path(name).name
        if os.environ.get("RPM_UPDATE_GOLDEN"):
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(produced)
        assert produced == golden.read_text(), f"{name} differs from {golden} (RPM_UPDATE_GOLDEN=1 to accept)"


def test_written_resources_validate_and_reference_each_other(tmp_path: Path) -> None:
    assert compute("--input", str(BUNDLE), "--month", "2026-03", "--out", str(tmp_path)) == ExitCode.OK
    charges = [json.loads(line) for line in (tmp_path / "ChargeItem.ndjson").read_text().splitlines()]
    documents = [
        json.loads(line) for line in (tmp_path / "DocumentReference.ndjson").read_text().splitlines()
    ]
    assert len(documents) == 1 and len(charges) == 4
    for resource in charges + documents:
        validate_resource(resource)
    doc_ref = f"DocumentReference/{documents[0]['id']}"
    keys = set()
    for charge in charges:
        assert charge["status"] == "billable"
        assert doc_ref in [s["reference"] for s in charge["supportingInformation"]]
        keys.add(charge["identifier"][0]["value"])
    assert keys == {
        "rich-1|99457|2026-03-01",
        "rich-1|99458|2026-03-01",
        "rich-1|99454|2026-02-21",
        "rich-1|99453|2026-02-21",
    }
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["patients"][0]["minutes"] == 52 and report["skipped"] == []


@pytest.mark.parametrize("layout", ["bundle", "ndjson", "bulk-dir"])
def test_input_layouts_give_the_same_result(layout: str, tmp_path: Path, capsys) -> None:
    if layout == "bundle":
        path = BUNDLE
    elif layout == "ndjson":
        path = tmp_path / "all.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in resources()))
    else:
        path = tmp_path / "export"
        path.mkdir()
        for r in resources():
            with (path / f"{r['resourceType']}.ndjson").open("a") as handle:
                handle.write(json.dumps(r) + "\n")
    assert compute("--input", str(path), "--month", "2026-03", "--format", "json") == ExitCode.OK
    payload = json.loads(capsys.readouterr().out)
    assert payload["patients"][0]["codes"] == "99457 99458 99454 99453"
    assert payload["patients"][0]["minutes"] == 52


def test_malformed_resources_are_reported_and_skipped(tmp_path: Path, capsys) -> None:
    path = tmp_path / "input.ndjson"
    lines = [json.dumps(r) for r in resources()]
    lines.insert(3, "{not json")
    broken = {
        "resourceType": "Observation",
        "id": "broken-1",
        "status": "final",
        "subject": {"reference": "Patient/rich-1"},
        "device": {"reference": "Device/bp-1"},
        "effectiveDateTime": "2026-13-45T99:00",
    }
    lines.append(json.dumps(broken))
    path.write_text("\n".join(lines) + "\n")
    code = compute("--input", str(path), "--month", "2026-03", "--out", str(tmp_path / "out"))
    assert code == ExitCode.SKIPPED_RESOURCES
    captured = capsys.readouterr()
    assert "line 4" in captured.err and "Observation/broken-1" in captured.err
    assert "99457 99458 99454 99453" in captured.out  # the bill is unchanged by the bad lines
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {s["id"] for s in report["skipped"]} >= {"broken-1"}


@pytest.mark.parametrize(
    ("args", "expected", "message"),
    [
        (["--input", "/nonexistent/x.ndjson", "--month", "2026-03"], ExitCode.UNREADABLE_INPUT, "not found"),
        (["--input", str(BUNDLE), "--month", "2026-3"], ExitCode.BAD_ARGUMENTS, "YYYY-MM"),
        (
            ["--input", str(BUNDLE), "--month", "2026-03", "--policy", "nope"],
            ExitCode.BAD_ARGUMENTS,
            "unknown policy",
        ),
        (
            ["--input", str(BUNDLE), "--month", "2026-03", "--timezone", "Mars/Base"],
            ExitCode.BAD_ARGUMENTS,
            "unknown time zone",
        ),
        (
            ["--input", str(BUNDLE), "--month", "2026-03", "--setting", "bogus=1"],
            ExitCode.BAD_ARGUMENTS,
            "unknown policy setting",
        ),
    ],
)
def test_exit_codes(args: list[str], expected: ExitCode, message: str, capsys) -> None:
    assert compute(*args) == expected
    assert message in capsys.readouterr().err


def test_unreadable_file_is_exit_3(tmp_path: Path, capsys) -> None:
    path = tmp_path / "garbage.json"
    path.write_text("this is not json")
    assert compute("--input", str(path), "--month", "2026-03") == ExitCode.UNREADABLE_INPUT
    assert "not valid JSON" in capsys.readouterr().err


def test_prior_charges_in_input_count_as_existing(tmp_path: Path, capsys) -> None:
    data = json.loads(BUNDLE.read_text())
    data["entry"].append(
        {
            "resource": {
                "resourceType": "ChargeItem",
                "id": "old-setup",
                "status": "billed",
                "identifier": [
                    {"system": "http://rpm-billing.org/fhir/charge-key", "value": "rich-1|99453|2025-01-10"}
                ],
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99453"}]},
                "subject": {"reference": "Patient/rich-1"},
            }
        }
    )
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(data))
    assert compute("--input", str(path), "--month", "2026-03", "--format", "json") == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["patients"][0]["codes"] == "99457 99458 99454"


def test_policy_and_settings_change_the_result(capsys) -> None:
    assert (
        compute(
            "--input", str(BUNDLE), "--month", "2026-03", "--policy", "interactive-only", "--format", "json"
        )
        == ExitCode.OK
    )
    row = json.loads(capsys.readouterr().out)["patients"][0]
    assert row["minutes"] == 24 and row["codes"].startswith("99457 ")  # 12.5 + 9 + 3 interactive minutes
    assert (
        compute(
            "--input", str(BUNDLE), "--month", "2026-03", "--setting", "ai_contacts=off", "--format", "json"
        )
        == ExitCode.OK
    )
    assert "ai-contact" not in json.loads(capsys.readouterr().out)["patients"][0]["flags"]


def test_demo_runs_synth_then_compute(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--patients", "5", "--month", "2026-02", "--out", str(tmp_path)]) in (
        ExitCode.OK,
        ExitCode.SKIPPED_RESOURCES,
    )
    out = capsys.readouterr().out
    assert "5 patient(s), 2026-02" in out
    assert (tmp_path / "output" / "ChargeItem.ndjson").exists()
    assert len(list((tmp_path / "output" / "logs").glob("*.html"))) == 5
    shutil.rmtree(tmp_path / "output")


def test_compute_imports_neither_the_web_app_nor_the_fhir_models(tmp_path: Path) -> None:
    """Start-up cost: `compute` imports its own module only, and the pydantic FHIR models only with --out."""
    probe = (
        "import sys; from smart_app.cli import main; code = main(sys.argv[1:]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'authlib', 'fhir', 'pydantic'}); "
        "print(code, ','.join(heavy) or '-', file=sys.stderr)"
    )
    base = ["compute", "--input", str(BUNDLE), "--month", "2026-03", "--as-of", AS_OF]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = {
        name: subprocess.run(
            [sys.executable, "-c", probe, *base, *extra], capture_output=True, text=True, env=env, check=False
        )
        .stderr.strip()
        .splitlines()[-1]
        for name, extra in {"table": [], "files": ["--out", str(tmp_path / "out")]}.items()
    }
    assert runs["table"] == "0 -"
    assert runs["files"] == "0 fhir,pydantic"


def test_collector_paused_while_reading_and_restored_after() -> None:
    import gc

    from smart_app.commands.compute import records_kept_to_the_end

    assert gc.isenabled()
    with records_kept_to_the_end() as reading_done:
        assert not gc.isenabled()
        kept = [[] for _ in range(1000)]
        reading_done()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(kept)
    assert gc.isenabled() and gc.get_freeze_count() == 0
