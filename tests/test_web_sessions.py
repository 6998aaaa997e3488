"""The server-side session store: pending sign-ins are single-use, expire, and belong to one browser."""

from __future__ import annotations

from smart_app.discovery import SmartConfiguration
from smart_app.web.config import IssuerConfig
from smart_app.web.oauth import TokenKeeper, TokenSet
from smart_app.web.sessions import (
    MAX_LAUNCHES_PER_SESSION,
    MAX_PENDING_PER_SESSION,
    LaunchSession,
    PendingAuth,
    SessionStore,
    new_secret,
)

ISSUER = IssuerConfig("sbx", "http://127.0.0.1:1/fhir", "app")
SMART = SmartConfiguration(
    token_endpoint="http://127.0.0.1:1/token", authorization_endpoint="http://127.0.0.1:1/a"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending(sid: str, state: str | None = None) -> PendingAuth:
    return PendingAuth(
        state=state or new_secret(),
        sid=sid,
        issuer=ISSUER,
        smart=SMART,
        mode="ehr",
        scope="launch openid",
        redirect_uri="http://127.0.0.1:2/callback",
        code_verifier="v" * 64,
        nonce="n",
        launch="L",
    )


def launch(lid: str, created: float = 0.0) -> LaunchSession:
    keeper = TokenKeeper(TokenSet("tok", 1e12, "openid"), None)
    return LaunchSession(lid, ISSUER, SMART, "ehr", "p1", None, False, frozenset(), keeper, created)


def test_state_and_session_ids_carry_at_least_128_random_bits() -> None:
    store = SessionStore()
    session = store.new_session()
    # token_urlsafe(32): 43 characters of base64url = 256 bits
    assert len(session.sid) >= 43 and len(session.csrf) >= 43
    assert len(new_secret()) >= 43
    assert len({new_secret() for _ in range(100)}) == 100


def test_a_pending_sign_in_is_taken_once() -> None:
    store = SessionStore()
    session = store.new_session()
    stored = store.add_pending(pending(session.sid, "s1"))
    assert stored.expires_at > 0
    taken = store.take_pending("s1")
    assert taken is not None and taken.sid == session.sid
    assert store.take_pending("s1") is None
    assert store.take_pending("never-issued") is None


def test_a_pending_sign_in_expires() -> None:
    clock = Clock()
    store = SessionStore(pending_ttl=60, clock=clock)
    session = store.new_session()
    store.add_pending(pending(session.sid, "s1"))
    clock.now += 61
    assert store.take_pending("s1") is None


def test_sessions_expire_when_idle_or_too_old() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout=100, max_age=250, clock=clock)
    session = store.new_session()
    for _ in range(3):
        clock.now += 80
        assert store.get(session.sid) is session
    clock.now += 80  # 320 s old
    assert store.get(session.sid) is None
    other = store.new_session()
    clock.now += 101
    assert store.get(other.sid) is None
    assert store.get(None) is None and store.get("forged") is None


def test_rotation_keeps_launches_and_pending_sign_ins_under_the_new_id() -> None:
    store = SessionStore()
    session = store.new_session()
    store.add_launch(session, launch("L1"))
    store.add_pending(pending(session.sid, "s2"))
    fresh = store.rotate(session)
    assert fresh.sid != session.sid and fresh.csrf != session.csrf
    assert store.get(session.sid) is None
    assert store.launch(fresh, "L1") is not None
    taken = store.take_pending("s2")
    assert taken is not None and taken.sid == fresh.sid


def test_a_launch_is_found_only_in_its_own_session() -> None:
    store = SessionStore()
    mine, theirs = store.new_session(), store.new_session()
    store.add_launch(mine, launch("L1"))
    assert store.launch(mine, "L1") is not None
    assert store.launch(theirs, "L1") is None
    assert store.launch(None, "L1") is None


def test_limits_per_session() -> None:
    store = SessionStore()
    session = store.new_session()
    states = [f"s{i}" for i in range(MAX_PENDING_PER_SESSION + 5)]
    for state in states:
        store.add_pending(pending(session.sid, state))
    kept = [s for s in states if store.take_pending(s) is not None]
    assert kept == states[-MAX_PENDING_PER_SESSION:]
    for i in range(MAX_LAUNCHES_PER_SESSION + 3):
        store.add_launch(session, launch(f"L{i}", created=float(i)))
    assert len(session.launches) == MAX_LAUNCHES_PER_SESSION
    assert "L0" not in session.launches


def test_dropping_a_session_forgets_its_pending_sign_ins() -> None:
    store = SessionStore()
    session = store.new_session()
    store.add_pending(pending(session.sid, "s1"))
    store.drop(session.sid)
    assert store.take_pending("s1") is None


def test_may_open_only_the_launch_patient_or_the_panels_patients() -> None:
    one = launch("L1")
    assert one.may_open("p1") and not one.may_open("p2")
    panel = LaunchSession("L2", ISSUER, SMART, "ehr", None, None, True, frozenset(), one.keeper, 0.0)
    assert not panel.may_open("p1")
    panel.roster.update({"p1", "p3"})
    assert panel.may_open("p1") and panel.may_open("p3") and not panel.may_open("p2")
