"""The clinician app over real HTTP on loopback, launched from the sandbox EHR (auto-approve), with `requests`
as the browser: launch flows, the month view, write-back, the panel, and the security refusals."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from smart_app.commands.try_app import TryStack, describe, start_stack
from smart_app.web.app import EXTENSION_KEY, WebState
from smart_app.web.sessions import LaunchSession
from tests.test_web_data import MONTH, WEB_PATIENT, fixed_clock, web_patient

WRITE_PATIENT = "web-p2"
TIMEOUT = 30


@pytest.fixture(scope="module")
def stack() -> Iterator[TryStack]:
    with start_stack(
        app_port=0, sandbox_port=0, patients=4, month=MONTH, auto_approve=True, clock=fixed_clock
    ) as running:
        running.sandbox.state.store.load(web_patient() + web_patient(WRITE_PATIENT))
        yield running


def web_state(stack: TryStack) -> WebState:
    assert stack.web.app is not None
    state: WebState = stack.web.app.extensions[EXTENSION_KEY]
    return state


def launch_of(stack: TryStack, url: str) -> LaunchSession:
    lid = urlsplit(url).path.split("/")[2]
    for session in list(web_state(stack).store._sessions.values()):
        if lid in session.launches:
            return session.launches[lid]
    raise AssertionError("no such launch")


def text_of(response: requests.Response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text))


def ehr_launch(
    stack: TryStack, patient: str | None = WEB_PATIENT
) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    link = stack.ehr_launch_link(patient, first_patient=False)
    response = browser.get(link, timeout=TIMEOUT)
    return browser, response


def charge_items(stack: TryStack, pid: str) -> list[dict[str, Any]]:
    page = stack.sandbox.state.store.search("ChargeItem", [("subject", f"Patient/{pid}")])
    return list(page.matches)


# ------------------------------------------------------------------------------------------ launching


def test_ehr_launch_opens_the_patients_month(stack: TryStack) -> None:
    _, page = ehr_launch(stack)
    assert page.status_code == 200
    assert re.fullmatch(rf"/c/[\w-]+/patient/{WEB_PATIENT}", urlsplit(page.url).path)
    # the authorization request the app sent
    to_authorize = next(r for r in page.history if urlsplit(r.url).path == "/launch")
    query = {k: v[0] for k, v in parse_qs(urlsplit(to_authorize.headers["Location"]).query).items()}
    assert query["aud"] == stack.sandbox.fhir_base
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["launch"] and len(query["state"]) >= 43  # 256 random bits
    assert {"launch", "openid", "fhirUser", "patient/Observation.rs"} <= set(query["scope"].split())
    # the month as the engine decided it
    text = text_of(page)
    assert "14 min this month" in text and "0 live calls" in text and "1 attempt" in text
    assert "12 days left in the month" in text
    assert "a live call with the patient: 99470" in text
    assert "6 more minutes including a live call: 99457" in text
    assert "11 more days with readings: 99454" in text
    assert "2026-03-01 to 2026-03-30" in text and "5 of 30 days with readings" in text
    assert 'data-code="99445"' in page.text and 'data-code="99453"' in page.text
    assert "RPM consent in force (verbal)" in text
    assert "non-interactive" in text and "time entry: data review" in text
    assert "Signed in as Practitioner/" in text
    # an EHR launch: the EHR shows its own banner (need_patient_banner false)
    assert 'id="patient-banner"' not in page.text
    assert "open: codes are a preview" in text


def test_hostile_text_from_the_ehr_is_escaped(stack: TryStack) -> None:
    _, page = ehr_launch(stack)
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    assert "<script" not in page.text.lower()
    assert "<img src=x" not in page.text and "<b>bold</b>" not in page.text


def test_cookie_headers_and_no_token_in_the_browser(stack: TryStack) -> None:
    _, page = ehr_launch(stack)
    start = next(r for r in page.history if urlsplit(r.url).path == "/launch")
    callback = next(r for r in page.history if urlsplit(r.url).path == "/callback")
    first, second = SimpleCookie(start.headers["Set-Cookie"]), SimpleCookie(callback.headers["Set-Cookie"])
    cookie = second["rpm_sid"]
    assert cookie.value != first["rpm_sid"].value  # rotated when the sign-in completed
    raw = callback.headers["Set-Cookie"].lower()
    assert "httponly" in raw and "samesite=lax" in raw and "path=/" in raw and "secure" not in raw
    launch = launch_of(stack, page.url)
    secrets = [t for t in (launch.keeper._tokens.access_token, launch.keeper._tokens.refresh_token) if t]
    assert len(secrets) == 2  # an access token and a refresh token (online_access)
    for secret in secrets:
        assert secret not in cookie.value and secret not in page.text
        assert all(secret not in r.headers.get("Location", "") for r in page.history)
    headers = page.headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp and "form-action 'self'" in csp
    assert f"frame-ancestors 'self' {stack.sandbox.base_url}" in csp
    assert "script-src" not in csp and "unsafe-inline" not in csp
    assert "X-Frame-Options" not in headers
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"


def test_standalone_launch_shows_a_patient_banner(stack: TryStack) -> None:
    browser = requests.Session()
    home = browser.get(stack.app_origin + "/", timeout=TIMEOUT)
    link = re.search(r'class="button standalone-patient" href="([^"]+)"', home.text)
    assert link is not None
    page = browser.get(stack.app_origin + link.group(1).replace("&amp;", "&"), timeout=TIMEOUT)
    assert page.status_code == 200
    query = parse_qs(urlsplit(page.history[1].url).query)
    assert "launch/patient" in query["scope"][0].split() and "launch" not in query
    pid = urlsplit(page.url).path.rsplit("/", 1)[1]
    assert re.search(rf'id="patient-banner".*<code id="banner-id">{pid}</code>', page.text, re.S)


def test_practitioner_launch_lists_the_panel(stack: TryStack) -> None:
    browser, page = ehr_launch(stack, patient=None)
    assert page.status_code == 200 and urlsplit(page.url).path.endswith("/panel")
    rows = re.findall(r'<tr class="patient rank-(\d)" data-patient="([^"]+)">', page.text)
    ids = [pid for _, pid in rows]
    assert WEB_PATIENT in ids and WRITE_PATIENT in ids
    ranks = [int(rank) for rank, _ in rows]
    assert ranks == sorted(ranks)
    row = re.search(rf'data-patient="{WEB_PATIENT}">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert '<td class="minutes">14</td>' in row.group(1) and "unreachable: 1 attempt" in row.group(1)
    # a listed patient opens, with a banner (no patient in the EHR's context); anyone else is refused
    lid = urlsplit(page.url).path.split("/")[2]
    opened = browser.get(f"{stack.app_origin}/c/{lid}/patient/{WEB_PATIENT}", timeout=TIMEOUT)
    assert opened.status_code == 200 and 'id="patient-banner"' in opened.text
    refused = browser.get(f"{stack.app_origin}/c/{lid}/patient/not-listed", timeout=TIMEOUT)
    assert refused.status_code == 403


def test_standalone_practitioner_launch_opens_the_panel(stack: TryStack) -> None:
    browser = requests.Session()
    start = f"{stack.app_origin}/standalone?" + urlencode(
        {"iss": stack.sandbox.fhir_base, "as": "practitioner"}
    )
    page = browser.get(start, timeout=TIMEOUT)
    assert page.status_code == 200 and urlsplit(page.url).path.endswith("/panel")
    scope = parse_qs(urlsplit(page.history[1].url).query)["scope"][0].split()
    assert "user/Observation.rs" in scope and not any(s.startswith(("patient/", "launch")) for s in scope)
    assert f'data-patient="{WEB_PATIENT}"' in page.text


def test_month_picker(stack: TryStack) -> None:
    browser, page = ehr_launch(stack)
    february = browser.get(page.url, params={"month": "2026-02"}, timeout=TIMEOUT)
    assert february.status_code == 200 and "closed" in text_of(february)
    assert 'max="2026-03"' in february.text and 'id="next-month"' in february.text
    assert browser.get(page.url, params={"month": "2026-04"}, timeout=TIMEOUT).status_code == 400
    assert browser.get(page.url, params={"month": "March"}, timeout=TIMEOUT).status_code == 400


def test_month_page_is_fast(stack: TryStack) -> None:
    browser, page = ehr_launch(stack)
    again = browser.get(page.url, timeout=TIMEOUT)
    assert again.status_code == 200
    assert again.elapsed.total_seconds() < 1.0
    elapsed = re.search(r'id="elapsed">(\d+)<', again.text)
    assert elapsed is not None and int(elapsed.group(1)) < 1000


# ------------------------------------------------------------------------------------------ write-back


def test_write_back_review_then_write_then_nothing_more(stack: TryStack) -> None:
    browser, page = ehr_launch(stack, WRITE_PATIENT)
    assert charge_items(stack, WRITE_PATIENT) == []
    review = browser.get(page.url + "/review", timeout=TIMEOUT)
    assert review.status_code == 200
    creates = re.findall(r'<tr class="create" data-type="(\w+)" data-code="(\w*)">', review.text)
    assert sorted(creates) == [("ChargeItem", "99445"), ("ChargeItem", "99453"), ("DocumentReference", "")]
    assert f"{WRITE_PATIENT}|99445|2026-03-01" in review.text
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', review.text))
    action = re.search(r'<form method="post" action="([^"]+)"', review.text)
    assert action is not None and set(form) == {"csrf_token", "review", "month"}
    written = browser.post(stack.app_origin + action.group(1), data=form, timeout=TIMEOUT)
    assert written.status_code == 200 and written.history[0].status_code == 303
    assert 'data-status="written"' in written.text
    links = re.findall(r'class="resource-link" href="([^"]+)"', written.text)
    assert len(links) == 3 and all(link.startswith(stack.sandbox.fhir_base + "/") for link in links)
    # the server holds exactly what was reviewed
    charges = charge_items(stack, WRITE_PATIENT)
    assert sorted((c["code"]["coding"][0]["code"], c["status"]) for c in charges) == [
        ("99445", "planned"),
        ("99453", "planned"),
    ]
    docs = stack.sandbox.state.store.search("DocumentReference", [("subject", f"Patient/{WRITE_PATIENT}")])
    assert [d["status"] for d in docs.matches] == ["current"]
    # the same month again: nothing to write; the used review cannot be replayed
    again = browser.get(page.url + "/review", timeout=TIMEOUT)
    assert 'id="nothing-to-write"' in again.text and 'id="write-form"' not in again.text
    replay = browser.post(stack.app_origin + action.group(1), data=form, timeout=TIMEOUT)
    assert replay.status_code == 409
    assert len(charge_items(stack, WRITE_PATIENT)) == 2


# ------------------------------------------------------------------------------------------ security


def test_unknown_issuer_gets_a_page_and_no_redirect(stack: TryStack) -> None:
    browser = requests.Session()
    evil = "http://evil.example/fhir<script>x</script>"
    for path in (
        "/launch?" + urlencode({"iss": evil, "launch": "abc"}),
        "/standalone?" + urlencode({"iss": evil}),
    ):
        response = browser.get(stack.app_origin + path, allow_redirects=False, timeout=TIMEOUT)
        assert response.status_code == 403 and "Location" not in response.headers
        assert "Unknown EHR" in response.text and "<script>x" not in response.text
    missing = browser.get(stack.app_origin + "/launch?launch=abc", allow_redirects=False, timeout=TIMEOUT)
    assert missing.status_code == 400 and "Location" not in missing.headers


def _start(stack: TryStack, browser: requests.Session, patient: str = WEB_PATIENT) -> str:
    """Begin an EHR launch and let the sandbox approve it; return the callback URL (not yet visited)."""
    link = stack.ehr_launch_link(patient, first_patient=False)
    to_app = browser.get(link, allow_redirects=False, timeout=TIMEOUT).headers["Location"]
    to_sandbox = browser.get(to_app, allow_redirects=False, timeout=TIMEOUT).headers["Location"]
    callback: str = browser.get(to_sandbox, allow_redirects=False, timeout=TIMEOUT).headers["Location"]
    assert urlsplit(callback).path == "/callback"
    return callback


def _state(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


def test_state_mismatch_is_refused(stack: TryStack) -> None:
    browser = requests.Session()
    forged = browser.get(f"{stack.app_origin}/callback?code=abc&state=forged", timeout=TIMEOUT)
    assert forged.status_code == 400 and "Sign-in refused" in forged.text
    # a state begun in another browser: refused (and burnt)
    victim = requests.Session()
    callback = _start(stack, victim)
    attacker = requests.Session()
    attacker.get(stack.app_origin + "/", timeout=TIMEOUT)
    stolen = attacker.get(callback, timeout=TIMEOUT)
    assert stolen.status_code == 400 and "/c/" not in stolen.url
    assert victim.get(callback, timeout=TIMEOUT).status_code == 400


@pytest.mark.parametrize("verifier", ["wrong-" + "x" * 60, ""], ids=["wrong verifier", "missing verifier"])
def test_wrong_or_missing_pkce_verifier_gets_no_tokens(stack: TryStack, verifier: str) -> None:
    browser = requests.Session()
    callback = _start(stack, browser)
    store = web_state(stack).store
    state = _state(callback)
    store._pending[state] = replace(store._pending[state], code_verifier=verifier)
    response = browser.get(callback, timeout=TIMEOUT)
    assert response.status_code == 400
    assert ("invalid_grant" if verifier else "no PKCE verifier") in response.text
    session = store.get(browser.cookies.get("rpm_sid"))
    assert session is not None and not session.launches


def test_a_replayed_authorization_code_is_refused(stack: TryStack) -> None:
    browser = requests.Session()
    callback = _start(stack, browser)
    page = browser.get(callback, timeout=TIMEOUT)
    assert page.status_code == 200
    # the same answer again: its state is used up
    assert browser.get(callback, timeout=TIMEOUT).status_code == 400
    # the old code under a fresh state: the EHR refuses it, and revokes what it issued from it
    fresh = _start(stack, browser)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    replayed = browser.get(
        f"{stack.app_origin}/callback?" + urlencode({"code": code, "state": _state(fresh)}), timeout=TIMEOUT
    )
    assert replayed.status_code == 400 and "invalid_grant" in replayed.text
    assert browser.get(page.url, timeout=TIMEOUT).status_code == 401


def test_a_post_without_the_csrf_token_is_refused(stack: TryStack) -> None:
    browser, page = ehr_launch(stack)
    review = browser.get(page.url + "/review", timeout=TIMEOUT)
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', review.text))
    action = page.url + "/write"
    before = len(charge_items(stack, WEB_PATIENT))
    for data in ({k: v for k, v in form.items() if k != "csrf_token"}, {**form, "csrf_token": "guess"}):
        refused = browser.post(action, data=data, timeout=TIMEOUT)
        assert refused.status_code == 400 and "Form expired" in refused.text
    assert requests.post(action, data=form, timeout=TIMEOUT).status_code == 400  # no session cookie at all
    assert len(charge_items(stack, WEB_PATIENT)) == before


def test_another_patients_id_in_the_url_is_refused(stack: TryStack) -> None:
    browser, page = ehr_launch(stack)
    other = page.url.replace(f"/patient/{WEB_PATIENT}", f"/patient/{WRITE_PATIENT}")
    for url in (other, other + "/review"):
        response = browser.get(url, timeout=TIMEOUT)
        assert response.status_code == 403 and "Not this patient" in response.text
        assert "Robin" not in response.text
    lid = urlsplit(page.url).path.split("/")[2]
    assert browser.get(f"{stack.app_origin}/c/{lid}/panel", timeout=TIMEOUT).status_code == 403
    # the launch itself is not usable from another browser
    assert requests.get(page.url, timeout=TIMEOUT).status_code == 403


def test_expired_access_tokens_are_refreshed(stack: TryStack) -> None:
    browser, page = ehr_launch(stack)
    launch = launch_of(stack, page.url)
    # the EHR forgets the access token (a 401 on the next read): refreshed, the page still works
    stack.sandbox.state.tokens.revoke(launch.keeper._tokens.access_token)
    assert browser.get(page.url, timeout=TIMEOUT).status_code == 200
    assert launch.keeper.refreshes == 1
    # the token runs out: refreshed before use
    launch.keeper._tokens = replace(launch.keeper._tokens, expires_at=0.0)
    assert browser.get(page.url, timeout=TIMEOUT).status_code == 200
    assert launch.keeper.refreshes == 2
    # no refresh possible any more: a clear page, not a crash
    stack.sandbox.state.tokens.revoke(launch.keeper._tokens.access_token)
    launch.keeper._tokens = replace(launch.keeper._tokens, refresh_token=None)
    expired = browser.get(page.url, timeout=TIMEOUT)
    assert expired.status_code == 401 and "Open the app again from the EHR" in expired.text


def test_try_describes_the_links(stack: TryStack) -> None:
    text = describe(stack)
    assert stack.ehr_launch_link() in text and stack.app_origin in text and stack.sandbox.fhir_base in text
    assert requests.get(stack.ehr_launch_link(), timeout=TIMEOUT).status_code == 200


def test_a_refused_write_back_loses_nothing(stack: TryStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that will not take the writes (here: `apply_plan` reports a refusal): the outcome says so and
    the resources not written can be downloaded as FHIR NDJSON."""
    from smart_app.web import writes
    from smart_app.writeback import WritePlan, WriteResult

    def refusing(client: Any, plan: WritePlan, *, dry_run: bool = False) -> WriteResult:
        return WriteResult(
            plan.patient_id,
            "refused",
            message="the server refused the write: HTTP 405",
            unwritten=tuple(plan.export_resources()),
        )

    monkeypatch.setattr(writes, "apply_plan", refusing)
    browser, page = ehr_launch(stack)
    review = browser.get(page.url + "/review", timeout=TIMEOUT)
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', review.text))
    outcome = browser.post(page.url + "/write", data=form, timeout=TIMEOUT)
    assert 'data-status="refused"' in outcome.text and "HTTP 405" in outcome.text
    export = re.search(r'id="export" href="([^"]+)"', outcome.text)
    assert export is not None
    download = browser.get(stack.app_origin + export.group(1), timeout=TIMEOUT)
    assert download.headers["Content-Type"].startswith("application/fhir+ndjson")
    assert download.headers["Content-Disposition"].startswith("attachment;")
    lines = [json.loads(line) for line in download.text.splitlines()]
    assert sorted(r["resourceType"] for r in lines) == ["ChargeItem", "ChargeItem", "DocumentReference"]
    assert all(r["subject"]["reference"] == f"Patient/{WEB_PATIENT}" for r in lines)
    assert requests.get(stack.app_origin + export.group(1), timeout=TIMEOUT).status_code == 403
