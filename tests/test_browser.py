"""The clinician app in headless Chromium (Debian's chromium + chromedriver, driven by selenium), launched
from the sandbox EHR with its approve page: EHR launch, the month, write-back checked on the server,
standalone launch, the panel, an EHR iframe, and the security refusals a person's browser would meet.

One sandbox + app and one browser for the whole module. Skipped when selenium or Chromium is missing.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import pytest

from smart_app.commands.try_app import TryStack, start_stack
from smart_app.web.app import EXTENSION_KEY
from tests.test_web_data import HOSTILE, MONTH, WEB_PATIENT, fixed_clock, web_patient

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WRITE_PATIENT = "web-b2"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class _FramePage(BaseHTTPRequestHandler):
    """A stand-in EHR screen on its own origin that embeds the app in an iframe."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<!doctype html><title>EHR</title><iframe id="app" src="{self.target}" width="900" height="700">'
        )
        body += "</iframe>"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _frame_server() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FramePage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def frames() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    allowed, other = _frame_server(), _frame_server()
    yield allowed, other
    for server in (allowed, other):
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack(frames: tuple[ThreadingHTTPServer, ThreadingHTTPServer]) -> Iterator[TryStack]:
    allowed = f"http://127.0.0.1:{frames[0].server_port}"
    with start_stack(
        app_port=0,
        sandbox_port=0,
        patients=3,
        month=MONTH,
        auto_approve=False,
        clock=fixed_clock,
        frame_ancestors=(allowed,),
    ) as running:
        running.sandbox.state.store.load(web_patient() + web_patient(WRITE_PATIENT))
        yield running


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("chromium and chromedriver are not installed")
    profile = tempfile.mkdtemp(prefix="rpm-billing-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, element_id: str, timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.ID, element_id)))


def text(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def approve(driver: Any, patient: str | None = None) -> None:
    """The sandbox's approve page (a person says yes)."""
    wait_for(driver, "approve-form")
    if patient is not None:
        Select(driver.find_element(By.ID, "patient")).select_by_value(patient)
    driver.find_element(By.ID, "approve").click()


def launch_from_ehr(driver: Any, stack: TryStack, patient: str) -> None:
    driver.get(stack.sandbox.urls.ehr)
    driver.find_element(By.CSS_SELECTOR, f'a.launch[data-patient="{patient}"]').click()
    approve(driver)
    wait_for(driver, "minutes")


def charge_items(stack: TryStack, pid: str) -> list[dict[str, Any]]:
    return list(stack.sandbox.state.store.search("ChargeItem", [("subject", f"Patient/{pid}")]).matches)


def test_ehr_launch_view_a_patient_and_write_back(driver: Any, stack: TryStack) -> None:
    launch_from_ehr(driver, stack, WRITE_PATIENT)
    assert driver.current_url.startswith(stack.app_origin + "/c/")
    assert text(driver, "minutes") == "14"
    assert "6 more minutes including a live call: 99457" in text(driver, "whats-next")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#calendar li")) == 30
    assert len(driver.find_elements(By.CSS_SELECTOR, "#calendar li.data")) == 5
    assert driver.find_elements(By.ID, "patient-banner") == []  # EHR launch: need_patient_banner false
    driver.find_element(By.ID, "review-link").click()
    wait_for(driver, "creates")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#creates tr.create")) == 3
    driver.find_element(By.ID, "confirm-write").click()
    outcome = wait_for(driver, "outcome")
    assert outcome.get_attribute("data-status") == "written"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#created a.resource-link")) == 3
    # check the server
    assert sorted(
        (c["code"]["coding"][0]["code"], c["status"]) for c in charge_items(stack, WRITE_PATIENT)
    ) == [
        ("99445", "planned"),
        ("99453", "planned"),
    ]


def test_standalone_launch_with_the_patient_picker(driver: Any, stack: TryStack) -> None:
    driver.get(stack.app_origin + "/")
    driver.find_element(By.CSS_SELECTOR, "a.standalone-patient").click()
    approve(driver, patient=WEB_PATIENT)
    wait_for(driver, "minutes")
    assert text(driver, "banner-id") == WEB_PATIENT  # standalone: the app shows the patient banner
    assert "Robin Webtest" in text(driver, "banner-name")


def test_practitioner_launch_shows_the_panel(driver: Any, stack: TryStack) -> None:
    driver.get(stack.sandbox.urls.ehr)
    driver.find_element(By.ID, "launch-no-patient").click()
    approve(driver)
    wait_for(driver, "panel")
    rows = driver.find_elements(By.CSS_SELECTOR, "#panel tr.patient")
    listed = [row.get_attribute("data-patient") for row in rows]
    assert WEB_PATIENT in listed
    ranks = [int(str(row.get_attribute("class")).split("rank-")[1][0]) for row in rows]
    assert ranks == sorted(ranks)
    driver.find_element(By.CSS_SELECTOR, f'tr[data-patient="{WEB_PATIENT}"] a.open-patient').click()
    wait_for(driver, "minutes")
    assert text(driver, "banner-id") == WEB_PATIENT


def test_inside_an_ehr_iframe(
    driver: Any, stack: TryStack, frames: tuple[ThreadingHTTPServer, ThreadingHTTPServer]
) -> None:
    allowed, other = frames
    _FramePage.target = stack.ehr_launch_link(WEB_PATIENT)
    driver.get(f"http://127.0.0.1:{allowed.server_port}/")
    driver.switch_to.frame(driver.find_element(By.ID, "app"))
    try:
        approve(driver)
        wait_for(driver, "minutes")
        assert text(driver, "minutes") == "14"
    finally:
        driver.switch_to.default_content()
    # the same page embedded by an allowed origin and by one not in frame-ancestors
    _FramePage.target = stack.app_origin + "/"
    for server, embeddable in ((allowed, True), (other, False)):
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        driver.switch_to.frame(driver.find_element(By.ID, "app"))
        try:
            assert bool(driver.find_elements(By.ID, "issuers")) is embeddable
        finally:
            driver.switch_to.default_content()


def test_html_and_script_in_a_communication_payload_stay_text(driver: Any, stack: TryStack) -> None:
    launch_from_ehr(driver, stack, WEB_PATIENT)
    notes = [n.text for n in driver.find_elements(By.CSS_SELECTOR, "#timeline blockquote.note")]
    assert HOSTILE in notes
    assert driver.execute_script("return window.__pwned === undefined")
    assert driver.find_elements(By.CSS_SELECTOR, "#timeline img, #timeline script, #timeline b") == []


def test_unknown_issuer_and_forged_state_are_refused(driver: Any, stack: TryStack) -> None:
    driver.get(stack.app_origin + "/launch?" + urlencode({"iss": "http://evil.example/fhir", "launch": "x"}))
    assert text(driver, "error-title") == "Unknown EHR"
    assert driver.current_url.startswith(stack.app_origin)
    driver.get(stack.app_origin + "/callback?code=stolen&state=forged")
    assert text(driver, "error-title") == "Sign-in refused"


def test_a_wrong_pkce_verifier_gets_no_session(driver: Any, stack: TryStack) -> None:
    driver.get(stack.sandbox.urls.ehr)
    driver.find_element(By.CSS_SELECTOR, f'a.launch[data-patient="{WEB_PATIENT}"]').click()
    wait_for(driver, "approve-form")
    assert stack.web.app is not None
    store = stack.web.app.extensions[EXTENSION_KEY].store
    for state, pending in list(store._pending.items()):
        store._pending[state] = replace(pending, code_verifier="not-the-verifier-" + "x" * 40)
    driver.find_element(By.ID, "approve").click()
    wait_for(driver, "error-title")
    assert "invalid_grant" in text(driver, "error-message")


def test_a_post_without_the_csrf_token_and_another_patients_id(driver: Any, stack: TryStack) -> None:
    launch_from_ehr(driver, stack, WEB_PATIENT)
    month_url = driver.current_url
    driver.find_element(By.ID, "review-link").click()
    wait_for(driver, "write-form")
    before = len(charge_items(stack, WEB_PATIENT))
    # WebDriver's own script (not the page's: the CSP allows none) drops the token, then a person submits
    driver.execute_script("document.querySelector('input[name=csrf_token]').remove()")
    driver.find_element(By.ID, "confirm-write").click()
    wait_for(driver, "error-title")  # the click submits; the refusal page arrives a moment later
    assert text(driver, "error-title") == "Form expired"
    assert len(charge_items(stack, WEB_PATIENT)) == before
    driver.get(month_url.replace(f"/patient/{WEB_PATIENT}", f"/patient/{WRITE_PATIENT}"))
    assert text(driver, "error-title") == "Not this patient"
