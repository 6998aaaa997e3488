"""Shared fixtures: live FHIR servers on loopback (session-scoped, started on first use).

- `sandbox_server`: the sandbox EHR over HTTP (tests/servers.py SandboxServer: `.base_url`, `.token(scopes,
  patient=...)`, `.client(scopes, patient=...)`, `.store`).
- `reference_server`: ../shared/fhir-reference-server (`.base_url`, `.client()`, `.reset()`). Skipped, with
  the reason, when ../shared is absent; a failure when node or npm is missing (CI has them).
- `fhir_server`: parametrised over both, a `LiveFhir` with full access, for tests of FHIR behaviour that
  the product relies on from any server.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.servers import (
    REFERENCE_SERVER_DIR,
    LiveFhir,
    ReferenceServer,
    SandboxServer,
    start_reference_server,
    start_sandbox_server,
)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    server = start_sandbox_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reference_server() -> Iterator[ReferenceServer]:
    if not REFERENCE_SERVER_DIR.is_dir():
        pytest.skip(
            f"reference FHIR server not found at {REFERENCE_SERVER_DIR} (no ../shared beside the "
            "repository): tests against it are skipped"
        )
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found on PATH: the tests against ../shared/fhir-reference-server "
            "need Node.js >= 20 with npm (CI has them)",
            pytrace=False,
        )
    server = start_reference_server(REFERENCE_SERVER_DIR)
    yield server
    server.stop()


@pytest.fixture(params=["sandbox", "reference"])
def fhir_server(request: pytest.FixtureRequest) -> LiveFhir:
    """A FHIR server with full access: the sandbox (token with system/*.*) or the reference server."""
    if request.param == "sandbox":
        sandbox: SandboxServer = request.getfixturevalue("sandbox_server")
        return sandbox.client("system/*.*")
    reference: ReferenceServer = request.getfixturevalue("reference_server")
    return reference.client()
