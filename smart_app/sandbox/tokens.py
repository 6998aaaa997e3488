"""Access grants issued by the sandbox's authorization server and checked by its FHIR server.

This module is the seam between the two halves of the sandbox EHR: the authorization server issues grants,
the FHIR server looks them up by bearer token. Thread-safe; in-memory only (the sandbox is a test double).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AccessGrant:
    client_id: str
    scopes: tuple[str, ...]  # as granted, v1 or v2 syntax (e.g. "patient/Observation.rs", "system/*.read")
    expires_at: float  # epoch seconds
    patient: str | None = None  # launch context: the only patient a patient-scoped token may see
    fhir_user: str | None = None  # e.g. "Practitioner/dr-1"
    encounter: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


class TokenStore:
    def __init__(self) -> None:
        self._grants: dict[str, AccessGrant] = {}
        self._lock = threading.Lock()

    def issue(self, grant: AccessGrant) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._grants[token] = grant
        return token

    def lookup(self, token: str) -> AccessGrant | None:
        """The live grant for a bearer token, or None (unknown, revoked or expired)."""
        with self._lock:
            grant = self._grants.get(token)
        if grant is None or grant.expired():
            return None
        return grant

    def revoke(self, token: str) -> None:
        with self._lock:
            self._grants.pop(token, None)
