"""Live FHIR servers for tests, on loopback: the sandbox EHR and ../shared/fhir-reference-server.

`start_sandbox_server()` serves the whole sandbox (FHIR server + authorization server, smart_app.sandbox.app)
over real HTTP on 127.0.0.1 and mints bearer tokens straight into its TokenStore. `start_reference_server()`
copies the reference server (a Medplum-based third-party engine) to a cache directory keyed by its
package-lock.json, runs `npm ci` there once, starts it with node on 127.0.0.1:0 and reads its base URL from
its first log line. The fixtures that use these live in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from smart_app.sandbox.app import RunningSandbox, SandboxConfig, start_sandbox
from smart_app.sandbox.store import FhirStore
from smart_app.sandbox.tokens import AccessGrant, TokenStore

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
REFERENCE_SERVER_DIR = SHARED_DIR / "fhir-reference-server"
FHIR_JSON = "application/fhir+json"
_BASE_LINE = re.compile(r"base URL (\S+)")


@dataclass
class LiveFhir:
    """A FHIR server under test, reached with `requests` (one body of test code for every server)."""

    name: str
    base_url: str
    timezone: str = "UTC"  # the server's zone: how it reads dates and times without an offset
    session: requests.Session = field(default_factory=requests.Session)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def request(self, method: str, path: str, *, json_body: Any = None, **kwargs: Any) -> requests.Response:
        headers = {"Accept": FHIR_JSON, **kwargs.pop("headers", {})}
        if json_body is not None:
            headers["Content-Type"] = FHIR_JSON
            kwargs["data"] = json.dumps(json_body)
        return self.session.request(method, self.url(path), headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json_body=body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, json_body=body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


@dataclass
class SandboxServer:
    """The sandbox EHR served over HTTP; `token()` mints a bearer token with the given scopes."""

    running: RunningSandbox

    @property
    def base_url(self) -> str:
        return self.running.fhir_base

    @property
    def store(self) -> FhirStore:
        store: FhirStore = self.running.state.store
        return store

    @property
    def tokens(self) -> TokenStore:
        return self.running.state.tokens

    def token(
        self,
        scopes: str | Iterable[str],
        *,
        patient: str | None = None,
        fhir_user: str | None = None,
        lifetime: float = 3600.0,
        client_id: str = "tests",
    ) -> str:
        scope_list = tuple(scopes.split() if isinstance(scopes, str) else scopes)
        grant = AccessGrant(
            client_id, scope_list, time.time() + lifetime, patient=patient, fhir_user=fhir_user
        )
        return self.tokens.issue(grant)

    def client(self, scopes: str | Iterable[str] = "system/*.*", *, patient: str | None = None) -> LiveFhir:
        """A LiveFhir whose requests carry a fresh token with these scopes (and launch patient)."""
        live = LiveFhir("sandbox", self.base_url, self.store.timezone)
        live.session.headers["Authorization"] = f"Bearer {self.token(scopes, patient=patient)}"
        return live

    def stop(self) -> None:
        self.running.stop()


def start_sandbox_server() -> SandboxServer:
    return SandboxServer(
        start_sandbox(SandboxConfig(host="127.0.0.1", port=0, patients=0, auto_approve=True))
    )


@dataclass
class ReferenceServer:
    base_url: str
    process: subprocess.Popen[str]
    output: list[str]

    @property
    def origin(self) -> str:
        return self.base_url.rsplit("/fhir", 1)[0]

    def client(self) -> LiveFhir:
        return LiveFhir("reference", self.base_url, "UTC")  # it reads dates without an offset as UTC

    def reset(self) -> None:
        """Empty the reference server's store (`POST /admin/reset`)."""
        requests.post(f"{self.origin}/admin/reset", timeout=30).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def reference_server_cache(source: Path) -> Path:
    """Where the reference server is installed: a temp dir keyed by the hash of its package-lock.json."""
    digest = hashlib.sha256((source / "package-lock.json").read_bytes()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rpm-billing-refserver-{digest}"


def install_reference_server(source: Path) -> Path:
    """Copy the reference server to its cache dir and `npm ci` there on first use (serialised by a lock)."""
    target = reference_server_cache(source)
    target.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("node_modules"), dirs_exist_ok=True)
        marker = target / ".rpm-billing-npm-ci-done"
        if not marker.exists():
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"npm ci failed in {target} (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
                )
            marker.write_text("ok\n")
    return target


def start_reference_server(source: Path = REFERENCE_SERVER_DIR, timeout: float = 90.0) -> ReferenceServer:
    """Install (first time) and start the reference server on 127.0.0.1 with an ephemeral port."""
    folder = install_reference_server(source)
    env = {**os.environ, "PORT": "0", "HOST": "127.0.0.1", "FHIR_LOG": "0"}
    env.pop("FHIR_BASE_URL", None)
    process = subprocess.Popen(
        ["node", "server.mjs"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def drain() -> None:  # keep reading so the server never blocks on a full pipe
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, name="reference-server-output", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if line is None or time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                process.kill()
            why = "exited" if line is None else f"did not report its base URL within {timeout:.0f} s"
            raise RuntimeError(f"the reference FHIR server {why}; its output:\n{''.join(output)}")
        match = _BASE_LINE.search(line)
        if match:
            return ReferenceServer(match.group(1).rstrip("/"), process, output)
