"""Helpers for the month-end tests (no tests here): small FHIR builders, loading data into a live server, and
a loopback proxy that injects faults between the client and a real server (sandbox or reference).

Every id a test creates carries a fresh prefix, so tests can share the session's servers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from fhir_mapping.canon import (
    ACTIVITY_PERIOD_EXT,
    CARE_PROGRAM_CS,
    CONSENT_SCOPE_CS,
    LOINC,
    PARTICIPATION_MODE_CS,
    RPM_CONTENT_CS,
)

NY = ZoneInfo("America/New_York")
FHIR_JSON = "application/fhir+json"
NURSE = "Practitioner/me-nurse-1"

Resource = dict[str, Any]


def prefix() -> str:
    return "me" + uuid.uuid4().hex[:8]


def local(day: date, hour: int = 9, minute: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY).isoformat()


# --------------------------------------------------------------------------------------------------
# FHIR builders (valid R4, so the reference server's validation accepts them)
# --------------------------------------------------------------------------------------------------


def patient(pid: str) -> Resource:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Testperson", "given": ["Syn"]}]}


def practitioner(ref: str = NURSE) -> Resource:
    return {"resourceType": "Practitioner", "id": ref.split("/")[1], "name": [{"family": "Nurse"}]}


def consent(pid: str, start: date, end: date | None = None, cid: str | None = None) -> Resource:
    period = {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})}
    return {
        "resourceType": "Consent",
        "id": cid or f"{pid}-consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE_CS, "code": "treatment"}]},
        "category": [{"coding": [{"system": CARE_PROGRAM_CS, "code": "rpm"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "dateTime": local(start - timedelta(days=1)),
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {"type": "permit", "period": period},
    }


def device(pid: str, did: str | None = None) -> Resource:
    return {
        "resourceType": "Device",
        "id": did or f"{pid}-cuff",
        "status": "active",
        "type": {"coding": [{"system": "http://snomed.info/sct", "code": "466086009"}]},
        "patient": {"reference": f"Patient/{pid}"},
    }


def reading(pid: str, when: str, oid: str, did: str | None = None) -> Resource:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "device": {"reference": f"Device/{did or pid + '-cuff'}"},
        "valueQuantity": {"value": 80, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }


def daily_readings(pid: str, first: date, days: int, step: int = 1, tag: str = "r") -> list[Resource]:
    return [reading(pid, local(first + timedelta(days=i * step), 8), f"{pid}-{tag}{i}") for i in range(days)]


def phone_call(pid: str, start: datetime, minutes: int, cid: str, sender: str = NURSE) -> Resource:
    end = start + timedelta(minutes=minutes)
    return {
        "resourceType": "Communication",
        "id": cid,
        "extension": [
            {"url": ACTIVITY_PERIOD_EXT, "valuePeriod": {"start": start.isoformat(), "end": end.isoformat()}}
        ],
        "status": "completed",
        "medium": [{"coding": [{"system": PARTICIPATION_MODE_CS, "code": "PHONE"}]}],
        "subject": {"reference": f"Patient/{pid}"},
        "topic": {"coding": [{"system": RPM_CONTENT_CS, "code": "physiologic-data"}]},
        "sent": end.isoformat(),
        "recipient": [{"reference": f"Patient/{pid}"}],
        "sender": {"reference": sender},
    }


def capability_statement(resources: list[Resource], interactions: Iterable[str] = ()) -> Resource:
    """A server's CapabilityStatement: whole-system `interactions` (batch, transaction) and `resources`."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": code} for code in interactions],
                "resource": resources,
            }
        ],
    }


def rpm_patient(
    pid: str,
    *,
    consent_start: date = date(2026, 9, 1),
    reading_start: date = date(2026, 9, 2),
    reading_days: int = 50,
    call_minutes: Iterable[int] = (25,),
    month: tuple[int, int] = (2026, 10),
) -> list[Resource]:
    """A patient with an RPM consent, a device, daily readings and phone calls in `month`."""
    resources = [patient(pid), consent(pid, consent_start), device(pid)]
    resources += daily_readings(pid, reading_start, reading_days)
    for n, minutes in enumerate(call_minutes):
        start = datetime(month[0], month[1], 5 + 3 * n, 10, 0, tzinfo=NY)
        resources.append(phone_call(pid, start, minutes, f"{pid}-call{n}"))
    return resources


# --------------------------------------------------------------------------------------------------
# Live servers
# --------------------------------------------------------------------------------------------------


@dataclass
class LiveServer:
    """A FHIR server for month-end tests: where it is and the Authorization header it wants (if any)."""

    name: str
    base_url: str
    authorization: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    def load(self, resources: Iterable[Resource]) -> None:
        """PUT every resource (update-as-create) in batches."""
        items = list(resources)
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                    for r in chunk
                ],
            }
            answer = requests.post(self.base_url, data=json.dumps(bundle), headers=self.headers(), timeout=60)
            answer.raise_for_status()
            bad = [
                e["response"] for e in answer.json()["entry"] if not e["response"]["status"].startswith("20")
            ]
            assert not bad, bad[:3]

    def search(self, type_: str, params: dict[str, str]) -> list[Resource]:
        found: list[Resource] = []
        url: str | None = f"{self.base_url}/{type_}"
        query: dict[str, str] | None = {**params, "_count": "500"}
        while url:
            answer = requests.get(url, params=query, headers=self.headers(), timeout=60)
            answer.raise_for_status()
            bundle = answer.json()
            found += [
                e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "include"
            ]
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            query = None
        return found

    def written(self, pid: str) -> dict[str, list[Resource]]:
        """The ChargeItems and DocumentReferences on the server for a patient."""
        return {
            "ChargeItem": self.search("ChargeItem", {"subject": f"Patient/{pid}"}),
            "DocumentReference": self.search("DocumentReference", {"subject": f"Patient/{pid}"}),
        }


@pytest.fixture(params=["sandbox", "reference"])
def live(request: pytest.FixtureRequest) -> LiveServer:
    """Each month-end integration test runs against the sandbox and the reference server."""
    if request.param == "sandbox":
        sandbox = request.getfixturevalue("sandbox_server")
        return LiveServer("sandbox", sandbox.base_url, f"Bearer {sandbox.token('system/*.*')}")
    reference = request.getfixturevalue("reference_server")
    return LiveServer("reference", reference.base_url)


@pytest.fixture
def proxy(live: LiveServer) -> Iterator[FaultProxy]:
    server = FaultProxy(live.base_url)
    yield server
    server.stop()


def identifier(resource: Resource, system_suffix: str) -> str | None:
    return next(
        (
            i["value"]
            for i in resource.get("identifier", [])
            if str(i.get("system", "")).endswith(system_suffix)
        ),
        None,
    )


def active_charges(charges: Iterable[Resource]) -> dict[str, list[Resource]]:
    """Our ChargeItems not entered-in-error, by charge key."""
    out: dict[str, list[Resource]] = {}
    for charge in charges:
        key = identifier(charge, "/charge-key")
        if key and charge.get("status") != "entered-in-error":
            out.setdefault(key, []).append(charge)
    return out


# --------------------------------------------------------------------------------------------------
# Fault-injecting loopback proxy
# --------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What to do with the requests `match` selects, at most `times` times (None: always).

    action: "respond" (answer `status` without forwarding), "delay" (wait `delay` s, then forward) or
    "forward-then-delay" (forward, then wait `delay` s before answering: the write happens, the answer is
    late).
    """

    match: Callable[[str, str, bytes], bool]
    action: str = "respond"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: Any = None  # the answer's body for "respond" (default: an OperationOutcome)
    times: int | None = 1
    hits: int = 0


class FaultProxy:
    """A loopback HTTP proxy in front of one FHIR base: forwards everything, except what a Fault selects."""

    def __init__(self, upstream_base: str) -> None:
        self.upstream = upstream_base.rstrip("/")
        parts = urlsplit(self.upstream)
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.path = parts.path
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.handle(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.path

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _pick(self, method: str, path: str, body: bytes) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if (fault.times is None or fault.hits < fault.times) and fault.match(method, path, body):
                    fault.hits += 1
                    return fault
        return None

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        method, path = handler.command, handler.path
        fault = self._pick(method, path, body)
        try:
            if fault is not None and fault.action == "respond":
                outcome = fault.body or {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "processing", "diagnostics": f"injected {fault.status}"}
                    ],
                }
                self._send(handler, fault.status, {"Content-Type": FHIR_JSON, **fault.headers}, outcome)
                self.log.append((method, path, fault.status))
                return
            if fault is not None and fault.action == "delay":
                time.sleep(fault.delay)
            forwarded = {
                k: v
                for k, v in handler.headers.items()
                if k.lower()
                in ("accept", "content-type", "authorization", "if-match", "if-none-exist", "prefer")
            }
            answer = requests.request(
                method, self.upstream_origin + path, data=body or None, headers=forwarded, timeout=60
            )
            if fault is not None and fault.action == "forward-then-delay":
                time.sleep(fault.delay)
            text = answer.content.replace(self.upstream_origin.encode(), self.origin.encode())
            headers = {
                k: v.replace(self.upstream_origin, self.origin)
                for k, v in answer.headers.items()
                if k.lower() in ("content-type", "etag", "location", "last-modified", "retry-after")
            }
            self._send(handler, answer.status_code, headers, text)
            self.log.append((method, path, answer.status_code))
        except (BrokenPipeError, ConnectionResetError, requests.RequestException):
            pass  # the client gave up waiting (a timeout we injected), or the test is over

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def batch_mentions(text: str) -> Callable[[str, str, bytes], bool]:
    """Selects POSTed Bundles whose body mentions `text` (e.g. a patient's read batches)."""
    needle = text.encode()
    return lambda method, path, body: method == "POST" and needle in body and b'"batch"' in body


def is_transaction(method: str, path: str, body: bytes) -> bool:
    return method == "POST" and b'"transaction"' in body
