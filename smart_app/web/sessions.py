"""Server-side state of the web app: browser sessions, pending authorizations, launches. All in memory.

The browser holds one opaque random id (the session cookie) and nothing else: tokens, the PKCE verifier,
`state`, the launch context and plans under review live here, keyed by that id. A pending authorization is
keyed by its `state` and remembers the browser session that started it, so a callback is accepted only once,
only before it expires, and only from the browser that began the sign-in.

One browser session may hold several launches (two EHR tabs with different patients): each launch has its
own random id, used in the app's URLs (`/c/<launch id>/...`) and looked up only inside the caller's session.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from smart_app.discovery import SmartConfiguration
from smart_app.web.config import IssuerConfig
from smart_app.web.oauth import TokenKeeper

LaunchMode = Literal["ehr", "standalone-patient", "standalone-user"]

STATE_BYTES = 32  # 256 random bits (SMART asks for at least 122; the brief for at least 128)
SESSION_ID_BYTES = 32
PENDING_TTL = 600.0  # seconds a sign-in may take at the EHR
IDLE_TIMEOUT = 2 * 3600.0
MAX_AGE = 12 * 3600.0
MAX_PENDING_PER_SESSION = 20
MAX_LAUNCHES_PER_SESSION = 20
MAX_SESSIONS = 10_000


def new_secret(nbytes: int = STATE_BYTES) -> str:
    return secrets.token_urlsafe(nbytes)


@dataclass(frozen=True)
class PendingAuth:
    """An authorization request sent to the EHR and not yet answered."""

    state: str = field(repr=False)
    sid: str = field(repr=False)
    issuer: IssuerConfig
    smart: SmartConfiguration
    mode: LaunchMode
    scope: str
    redirect_uri: str
    code_verifier: str = field(repr=False)
    nonce: str = field(repr=False)
    launch: str | None = field(default=None, repr=False)
    expires_at: float = 0.0


@dataclass
class LaunchSession:
    """One completed launch: who, which patient (or none: the panel), and the tokens to act with."""

    id: str
    issuer: IssuerConfig
    smart: SmartConfiguration
    mode: LaunchMode
    patient: str | None  # the patient in the launch context; None for a practitioner launch
    fhir_user: str | None  # "Practitioner/123" from the id_token, when the EHR sent one
    need_patient_banner: bool
    granted: frozenset[str]
    keeper: TokenKeeper
    created_at: float
    roster: set[str] = field(default_factory=set)  # panel: the patients this launch may open
    reviews: dict[str, Any] = field(default_factory=dict)  # review id -> plan awaiting confirmation
    outcomes: dict[str, Any] = field(default_factory=dict)  # outcome id -> what a write did
    resources: dict[str, Any] = field(default_factory=dict)  # per-launch helpers (the FHIR client)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def fhir_base(self) -> str:
        return self.issuer.iss

    def may_open(self, patient_id: str) -> bool:
        """The app shows only the patient in the launch context (or, with none, one of the panel's)."""
        if self.patient is not None:
            return patient_id == self.patient
        return patient_id in self.roster

    def close(self) -> None:
        for value in self.resources.values():
            closer = getattr(value, "close", None)
            if callable(closer):
                closer()
        self.resources.clear()


@dataclass
class BrowserSession:
    sid: str = field(repr=False)
    csrf: str = field(repr=False)
    created_at: float
    last_seen: float
    launches: dict[str, LaunchSession] = field(default_factory=dict)
    pending: int = 0


class SessionStore:
    """Thread-safe, in-memory; expired entries are pruned as new ones arrive."""

    def __init__(
        self,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_age: float = MAX_AGE,
        pending_ttl: float = PENDING_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.pending_ttl = pending_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, BrowserSession] = {}
        self._pending: dict[str, PendingAuth] = {}

    # -- browser sessions --------------------------------------------------------------------------------

    def new_session(self) -> BrowserSession:
        now = self._clock()
        session = BrowserSession(new_secret(SESSION_ID_BYTES), new_secret(), now, now)
        with self._lock:
            self._prune_locked(now)
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                self._drop_locked(oldest.sid)
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str | None) -> BrowserSession | None:
        """The live session with this id (and mark it used), or None."""
        if not sid:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if self._expired(session, now):
                self._drop_locked(sid)
                return None
            session.last_seen = now
            return session

    def rotate(self, session: BrowserSession) -> BrowserSession:
        """A new id and CSRF token for `session` (its launches and pending sign-ins move with it)."""
        now = self._clock()
        fresh = BrowserSession(new_secret(SESSION_ID_BYTES), new_secret(), session.created_at, now)
        with self._lock:
            old = self._sessions.pop(session.sid, None)
            if old is not None:
                fresh.launches = old.launches
                fresh.pending = old.pending
            for state, pending in list(self._pending.items()):
                if pending.sid == session.sid:
                    self._pending[state] = replace(pending, sid=fresh.sid)
            self._sessions[fresh.sid] = fresh
        return fresh

    def drop(self, sid: str) -> None:
        with self._lock:
            self._drop_locked(sid)

    def _expired(self, session: BrowserSession, now: float) -> bool:
        return now - session.last_seen > self.idle_timeout or now - session.created_at > self.max_age

    def _drop_locked(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            for launch in session.launches.values():
                launch.close()
        for state in [s for s, p in self._pending.items() if p.sid == sid]:
            del self._pending[state]

    def _prune_locked(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if self._expired(s, now)]:
            self._drop_locked(sid)
        for state in [s for s, p in self._pending.items() if p.expires_at <= now]:
            pending = self._pending.pop(state)
            owner = self._sessions.get(pending.sid)
            if owner is not None:
                owner.pending = max(0, owner.pending - 1)

    # -- pending authorizations --------------------------------------------------------------------------

    def add_pending(self, pending: PendingAuth) -> PendingAuth:
        """Remember an authorization request (its expiry is set here). Old ones of a busy session go first."""
        now = self._clock()
        with self._lock:
            self._prune_locked(now)
            owner = self._sessions.get(pending.sid)
            if owner is None:
                raise KeyError("no such browser session")
            mine = sorted(
                (p for p in self._pending.values() if p.sid == pending.sid), key=lambda p: p.expires_at
            )
            for old in mine[: max(0, len(mine) - MAX_PENDING_PER_SESSION + 1)]:
                del self._pending[old.state]
            stored = replace(pending, expires_at=now + self.pending_ttl)
            self._pending[stored.state] = stored
            owner.pending = len(mine) + 1
        return stored

    def take_pending(self, state: str) -> PendingAuth | None:
        """The pending authorization for `state`, removed (a state is good for one callback only)."""
        now = self._clock()
        with self._lock:
            pending = self._pending.pop(state, None)
            if pending is not None and (owner := self._sessions.get(pending.sid)) is not None:
                owner.pending = max(0, owner.pending - 1)
        if pending is None or pending.expires_at <= now:
            return None
        return pending

    # -- launches ----------------------------------------------------------------------------------------

    def add_launch(self, session: BrowserSession, launch: LaunchSession) -> None:
        with self._lock:
            if len(session.launches) >= MAX_LAUNCHES_PER_SESSION:
                oldest = min(session.launches.values(), key=lambda item: item.created_at)
                session.launches.pop(oldest.id).close()
            session.launches[launch.id] = launch

    def launch(self, session: BrowserSession | None, launch_id: str) -> LaunchSession | None:
        """A launch of THIS browser session (another session's launch id finds nothing)."""
        if session is None:
            return None
        with self._lock:
            return session.launches.get(launch_id)

    def close(self) -> None:
        with self._lock:
            for sid in list(self._sessions):
                self._drop_locked(sid)
