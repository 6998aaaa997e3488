"""Access control of the sandbox FHIR server, through HTTP: bearer tokens, v1/v2 scopes, patient context.

Tokens are minted straight into the sandbox's TokenStore (the authorization server's own flows are
tested in test_sandbox_auth*.py); every request goes over loopback HTTP to the running sandbox.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.servers import LiveFhir, SandboxServer

pytestmark = pytest.mark.integration

VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


def uid() -> str:
    return uuid.uuid4().hex[:16]


def observation(patient: str, category: str = "vital-signs") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": VITALS.split("|")[0], "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2025-02-01T10:00:00Z",
    }


@pytest.fixture(scope="module")
def admin(sandbox_server: SandboxServer) -> LiveFhir:
    return sandbox_server.client("system/*.*")


@pytest.fixture(scope="module")
def world(admin: LiveFhir) -> dict[str, str]:
    """Two patients, an Observation and an Encounter each, a Practitioner: ids by name."""

    def create(resource: dict[str, Any]) -> str:
        response = admin.post(resource["resourceType"], resource)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    ids = {"alice": create({"resourceType": "Patient"}), "bob": create({"resourceType": "Patient"})}
    for name in ("alice", "bob"):
        ids[f"{name}_obs"] = create(observation(ids[name]))
        ids[f"{name}_enc"] = create(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
                "subject": {"reference": f"Patient/{ids[name]}"},
            }
        )
    ids["doctor"] = create({"resourceType": "Practitioner", "name": [{"family": "Who"}]})
    return ids


def assert_outcome(response: requests.Response, status: int, mentions: str = "") -> None:
    assert response.status_code == status, f"{response.status_code}: {response.text[:400]}"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert mentions in body["issue"][0]["diagnostics"]


# ---------------------------------------------------------------------------------------------- tokens


def test_metadata_needs_no_token(sandbox_server: SandboxServer) -> None:
    response = requests.get(f"{sandbox_server.base_url}/metadata", timeout=30)
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"


def test_missing_token_is_401_with_bearer_challenge(sandbox_server: SandboxServer) -> None:
    response = requests.get(f"{sandbox_server.base_url}/Patient", timeout=30)
    assert_outcome(response, 401, "bearer token is required")
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "invalid_token" not in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer not-a-token", id="unknown token"),
        pytest.param("Basic dXNlcjpwYXNz", id="not a bearer token"),
    ],
)
def test_bad_token_is_401(sandbox_server: SandboxServer, authorization: str) -> None:
    response = requests.get(
        f"{sandbox_server.base_url}/Patient", headers={"Authorization": authorization}, timeout=30
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_expired_and_revoked_tokens_are_401(sandbox_server: SandboxServer) -> None:
    expired = sandbox_server.token("system/*.*", lifetime=-1)
    response = requests.get(
        f"{sandbox_server.base_url}/Patient", headers={"Authorization": f"Bearer {expired}"}, timeout=30
    )
    assert_outcome(response, 401, "expired")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    revoked = sandbox_server.token("system/*.*")
    sandbox_server.tokens.revoke(revoked)
    response = requests.get(
        f"{sandbox_server.base_url}/Patient", headers={"Authorization": f"Bearer {revoked}"}, timeout=30
    )
    assert response.status_code == 401


# ---------------------------------------------------------------------------------------------- scopes

# One row per rule: the granted scopes, the request, the expected status.
SCOPE_RULES = [
    # v1
    ("system/Observation.read", "read", 200),
    ("system/Observation.read", "search", 200),
    ("system/Observation.read", "create", 403),
    ("system/Observation.write", "create", 201),
    ("system/Observation.write", "read", 403),
    ("system/Observation.*", "update", 200),
    ("system/*.read", "read", 200),
    ("system/*.read", "delete", 403),
    ("user/Observation.read", "search", 200),
    ("system/Patient.read", "read", 403),  # another type
    # v2
    ("system/Observation.rs", "search", 200),
    ("system/Observation.rs", "update", 403),
    ("system/Observation.r", "search", 403),  # read is not search
    ("system/Observation.s", "read", 403),
    ("system/Observation.s", "search", 200),
    ("system/Observation.c", "create", 201),
    ("system/Observation.cu", "update", 200),
    ("system/Observation.d", "delete", 200),
    ("user/*.cruds", "delete", 200),
    ("system/Observation.sr", "read", 403),  # letters out of order: not a scope
    ("launch openid fhirUser", "read", 403),  # no resource scope at all
    # v2 restrictions, honoured conservatively
    (f"system/Observation.rs?category={VITALS}", "search vitals", 200),
    (f"system/Observation.rs?category={VITALS}", "search", 403),
    (f"system/Observation.rs?category={VITALS}", "read", 403),
]


def _request(live: LiveFhir, action: str, ids: dict[str, str]) -> requests.Response:
    obs = ids["alice_obs"]
    if action == "read":
        return live.get(f"Observation/{obs}")
    if action == "search":
        return live.get("Observation", params={"patient": ids["alice"]})
    if action == "search vitals":
        return live.get("Observation", params={"patient": ids["alice"], "category": VITALS})
    if action == "create":
        return live.post("Observation", observation(ids["alice"]))
    if action == "update":
        return live.put(f"Observation/{obs}", {**observation(ids["alice"]), "id": obs})
    raise AssertionError(action)


@pytest.mark.parametrize(("scopes", "action", "status"), SCOPE_RULES)
def test_scopes_are_enforced(
    sandbox_server: SandboxServer,
    admin: LiveFhir,
    world: dict[str, str],
    scopes: str,
    action: str,
    status: int,
) -> None:
    if action == "delete":  # delete a fresh Observation made with full access
        victim = admin.post("Observation", observation(world["alice"])).json()["id"]
        response = sandbox_server.client(scopes).delete(f"Observation/{victim}")
    else:
        response = _request(sandbox_server.client(scopes), action, world)
    assert response.status_code == status, response.text[:300]
    if status == 403:
        assert_outcome(response, 403)


# ------------------------------------------------------------------------------------- patient context


@pytest.fixture
def alice(sandbox_server: SandboxServer, world: dict[str, str]) -> LiveFhir:
    return sandbox_server.client(
        "patient/*.cruds patient/Practitioner.r launch/patient", patient=world["alice"]
    )


def test_patient_token_reads_only_its_patient(alice: LiveFhir, world: dict[str, str]) -> None:
    assert alice.get(f"Observation/{world['alice_obs']}").status_code == 200
    assert alice.get(f"Patient/{world['alice']}").status_code == 200
    assert_outcome(alice.get(f"Observation/{world['bob_obs']}"), 403, "outside the compartment")
    assert_outcome(alice.get(f"Patient/{world['bob']}"), 403)
    assert alice.get(f"Practitioner/{world['doctor']}").status_code == 200  # shared: readable


def test_patient_token_searches_are_filtered(alice: LiveFhir, world: dict[str, str]) -> None:
    everything = alice.get("Observation", params={"_count": "1000"}).json()
    assert {e["resource"]["subject"]["reference"] for e in everything["entry"]} == {
        f"Patient/{world['alice']}"
    }
    own = alice.get("Observation", params={"patient": world["alice"]}).json()
    assert world["alice_obs"] in {e["resource"]["id"] for e in own["entry"]}
    patients = alice.get("Patient").json()
    assert [e["resource"]["id"] for e in patients["entry"]] == [world["alice"]]
    included = alice.get("Communication", params={"_include": "Communication:encounter"}).json()
    assert all(
        e["resource"]["subject"]["reference"] == f"Patient/{world['alice']}"
        for e in included.get("entry", [])
    )


@pytest.mark.parametrize("param", ["patient", "subject"])
def test_patient_token_search_naming_another_patient_is_403(
    alice: LiveFhir, world: dict[str, str], param: str
) -> None:
    assert_outcome(
        alice.get("Observation", params={param: world["bob"]}), 403, "other than the one in context"
    )


def test_patient_token_writes_only_its_patient(
    alice: LiveFhir, admin: LiveFhir, world: dict[str, str]
) -> None:
    assert alice.post("Observation", observation(world["alice"])).status_code == 201
    assert_outcome(alice.post("Observation", observation(world["bob"])), 403, f"Patient/{world['bob']}")
    moved = {**observation(world["alice"]), "id": world["bob_obs"]}  # take over Bob's reading
    assert_outcome(alice.put(f"Observation/{world['bob_obs']}", moved), 403)
    assert (
        admin.get(f"Observation/{world['bob_obs']}").json()["subject"]["reference"]
        == f"Patient/{world['bob']}"
    )
    assert_outcome(alice.post("Practitioner", {"resourceType": "Practitioner"}), 403)
    assert_outcome(alice.delete(f"Encounter/{world['bob_enc']}"), 403)


def test_patient_scopes_without_patient_context_are_403(
    sandbox_server: SandboxServer, world: dict[str, str]
) -> None:
    nobody = sandbox_server.client("patient/*.read")
    assert_outcome(nobody.get(f"Observation/{world['alice_obs']}"), 403, "no patient in its launch context")


def test_transaction_entries_are_checked_one_by_one(
    alice: LiveFhir, admin: LiveFhir, world: dict[str, str]
) -> None:
    marker = uid()

    def tagged(patient: str) -> dict[str, Any]:
        return {**observation(patient), "identifier": [{"system": "urn:marker", "value": marker}]}

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": tagged(world["alice"]), "request": {"method": "POST", "url": "Observation"}},
            {"resource": tagged(world["bob"]), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = alice.post("", bundle)
    assert_outcome(response, 403, "entry 1")
    assert admin.get("Observation", params={"identifier": f"urn:marker|{marker}"}).json()["total"] == 0
    read_only = {**bundle, "type": "batch"}
    batch = alice.post("", read_only).json()
    assert [e["response"]["status"][:3] for e in batch["entry"]] == ["201", "403"]


def test_user_and_system_scopes_reach_every_patient(
    sandbox_server: SandboxServer, world: dict[str, str]
) -> None:
    for scopes in ("user/Observation.rs", "system/Observation.rs"):
        client = sandbox_server.client(
            scopes, patient=world["alice"]
        )  # a patient in context does not narrow them
        assert client.get(f"Observation/{world['bob_obs']}").status_code == 200
        found = client.get("Observation", params={"patient": world["bob"]}).json()
        assert world["bob_obs"] in {e["resource"]["id"] for e in found["entry"]}
