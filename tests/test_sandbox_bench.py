"""benchmarks/month_end_bench.py counts what the sandbox serves, without parsing request bodies again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "month_end_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("month_end_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundle(type_: str, entries: list[dict[str, Any]], *, spaced: bool = False) -> bytes:
    body = {"resourceType": "Bundle", "entry": entries, "type": type_}  # type after the entries
    return json.dumps(body, indent=2 if spaced else None).encode()


DOCUMENT = {
    "resourceType": "DocumentReference",
    "type": {"text": "batch"},
    "subject": {"reference": "Patient/p1", "type": "Patient"},
    "description": 'mentions "type":"batch" in its text',
}


@pytest.mark.parametrize(
    ("method", "path", "body", "kind"),
    [
        ("GET", "/fhir/metadata", b"", "metadata"),
        ("GET", "/fhir/Patient/p1", b"", "read"),
        ("POST", "/fhir", bundle("batch", [{"request": {"method": "GET", "url": "Patient/p1"}}]), "read"),
        ("POST", "/fhir", bundle("batch", [], spaced=True), "read"),
        ("POST", "/fhir", bundle("transaction", [{"resource": DOCUMENT}]), "write"),
        ("POST", "/fhir/DocumentReference", json.dumps(DOCUMENT).encode(), "write"),
        ("PUT", "/fhir/ChargeItem/c1", b'{"resourceType":"ChargeItem"}', "write"),
        ("POST", "/fhir/Observation/_search", b"patient=p1", "write"),
    ],
)
def test_request_kinds(bench: ModuleType, method: str, path: str, body: bytes, kind: str) -> None:
    assert bench.RequestCounter.kind(method, path, body) == kind
