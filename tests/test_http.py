"""The retry policy (a pure function, one row per rule) and the transport around it (with `responses`)."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError

from smart_app.auth import Auth, BearerAuth, NoAuth
from smart_app.errors import ExitCode
from smart_app.http import (
    Action,
    BadRequestError,
    ConflictError,
    FhirError,
    ForbiddenError,
    HttpTransport,
    NotFoundError,
    OutcomeIssue,
    OutcomeUnknownError,
    PreconditionFailedError,
    RetryPolicy,
    ServerError,
    TemporaryNetworkError,
    UnauthorizedError,
    decide,
    make_session,
    parse_operation_outcome,
    parse_retry_after,
)

URL = "http://127.0.0.1:8080/fhir/Patient/p1"
NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=4, backoff_base=1.0, backoff_max=30.0, retry_after_cap=60.0)


def _refused_connection() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, URL, reason))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# decide(): one row per rule
# --------------------------------------------------------------------------------------------------

STATUS_RULES = [
    # (id, method, status, Retry-After, attempt, action, delay, outcome_unknown)
    ("2xx is returned", "GET", 200, None, 1, Action.RETURN, 0.0, False),
    ("404 is returned, not retried", "GET", 404, None, 1, Action.RETURN, 0.0, False),
    ("400 on a write is returned", "POST", 400, None, 1, Action.RETURN, 0.0, False),
    ("GET 503: backoff 1 s after attempt 1", "GET", 503, None, 1, Action.RETRY, 1.0, False),
    ("GET 503: backoff doubles", "GET", 503, None, 2, Action.RETRY, 2.0, False),
    ("GET 503: backoff 4 s after attempt 3", "GET", 503, None, 3, Action.RETRY, 4.0, False),
    ("GET 503: attempts exhausted", "GET", 503, None, 4, Action.FAIL, 0.0, False),
    ("GET 500 retried", "GET", 500, None, 1, Action.RETRY, 1.0, False),
    ("GET 502 retried", "GET", 502, None, 1, Action.RETRY, 1.0, False),
    ("GET 504 retried", "GET", 504, None, 1, Action.RETRY, 1.0, False),
    ("GET 408 retried", "GET", 408, None, 1, Action.RETRY, 1.0, False),
    ("HEAD is safe", "HEAD", 503, None, 1, Action.RETRY, 1.0, False),
    ("429 Retry-After seconds honoured", "GET", 429, "7", 1, Action.RETRY, 7.0, False),
    ("Retry-After capped", "GET", 429, "18000", 1, Action.RETRY, 60.0, False),
    (
        "Retry-After HTTP-date",
        "GET",
        503,
        format_datetime(NOW + timedelta(seconds=30), usegmt=True),
        1,
        Action.RETRY,
        30.0,
        False,
    ),
    ("unreadable Retry-After: backoff", "GET", 429, "soon", 2, Action.RETRY, 2.0, False),
    ("401 re-authorizes", "GET", 401, None, 1, Action.REAUTHORIZE, 0.0, False),
    ("POST 429: server did nothing, retried", "POST", 429, None, 1, Action.RETRY, 1.0, False),
    ("POST 503 + Retry-After: retried", "POST", 503, "5", 1, Action.RETRY, 5.0, False),
    ("PUT 429 Retry-After honoured", "PUT", 429, "3", 2, Action.RETRY, 3.0, False),
    ("POST 503 without Retry-After: unknown", "POST", 503, None, 1, Action.FAIL, 0.0, True),
    ("POST 500: unknown", "POST", 500, None, 1, Action.FAIL, 0.0, True),
    ("POST 502: unknown", "POST", 502, None, 1, Action.FAIL, 0.0, True),
    ("POST 504: unknown", "POST", 504, None, 1, Action.FAIL, 0.0, True),
    ("POST 408: unknown (conservative)", "POST", 408, None, 1, Action.FAIL, 0.0, True),
    ("DELETE 500: unknown", "DELETE", 500, None, 1, Action.FAIL, 0.0, True),
    ("POST 429 attempts exhausted", "POST", 429, None, 4, Action.FAIL, 0.0, False),
]


@pytest.mark.parametrize(
    ("method", "status", "retry_after", "attempt", "action", "delay", "unknown"),
    [row[1:] for row in STATUS_RULES],
    ids=[row[0] for row in STATUS_RULES],
)
def test_decide_on_status(method, status, retry_after, attempt, action, delay, unknown):
    d = decide(POLICY, method=method, attempt=attempt, status=status, retry_after=retry_after, now=NOW)
    assert (d.action, d.delay, d.outcome_unknown) == (action, delay, unknown)


def test_decide_401_after_reauthorizing_fails():
    assert decide(POLICY, method="GET", attempt=1, status=401, reauthorized=True).action is Action.FAIL


def test_decide_idempotent_override_lets_a_post_retry():
    d = decide(POLICY, method="POST", attempt=1, status=500, idempotent=True)
    assert (d.action, d.delay) == (Action.RETRY, 1.0)


EXCEPTION_RULES = [
    ("GET read timeout retried", "GET", requests.ReadTimeout(), 1, Action.RETRY, False),
    ("GET connection error retried", "GET", requests.ConnectionError("reset"), 1, Action.RETRY, False),
    (
        "GET broken chunked body retried",
        "GET",
        requests.exceptions.ChunkedEncodingError(),
        1,
        Action.RETRY,
        False,
    ),
    ("GET timeout, attempts exhausted", "GET", requests.ReadTimeout(), 4, Action.FAIL, False),
    ("POST read timeout: unknown, not retried", "POST", requests.ReadTimeout(), 1, Action.FAIL, True),
    (
        "POST dropped connection: unknown",
        "POST",
        requests.ConnectionError("reset by peer"),
        1,
        Action.FAIL,
        True,
    ),
    ("POST connect timeout: never sent, retried", "POST", requests.ConnectTimeout(), 1, Action.RETRY, False),
    ("POST connection refused: never sent, retried", "POST", _refused_connection(), 1, Action.RETRY, False),
    ("TLS failure is final", "GET", requests.exceptions.SSLError("bad cert"), 1, Action.FAIL, False),
    ("invalid URL is final", "GET", requests.exceptions.InvalidURL("x"), 1, Action.FAIL, False),
]


@pytest.mark.parametrize(
    ("method", "error", "attempt", "action", "unknown"),
    [row[1:] for row in EXCEPTION_RULES],
    ids=[row[0] for row in EXCEPTION_RULES],
)
def test_decide_on_exception(method, error, attempt, action, unknown):
    d = decide(POLICY, method=method, attempt=attempt, error=error)
    assert (d.action, d.outcome_unknown) == (action, unknown)


def test_backoff_is_deterministic_and_capped():
    policy = RetryPolicy(max_attempts=10, backoff_base=0.5, backoff_max=3.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_policy_needs_one_attempt():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        (format_datetime(NOW + timedelta(minutes=2), usegmt=True), 120.0),
        (format_datetime(NOW - timedelta(minutes=2), usegmt=True), 0.0),  # a date in the past: now
        ("tomorrow-ish", None),
        ("-3", None),
        (None, None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


# --------------------------------------------------------------------------------------------------
# OperationOutcome → typed errors
# --------------------------------------------------------------------------------------------------


def test_parse_operation_outcome_prefers_details_text_then_display_then_diagnostics():
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "details": {"text": "subject is required"},
                "diagnostics": "stack...",
                "expression": ["ChargeItem.subject"],
            },
            {"severity": "error", "code": "processing", "details": {"coding": [{"display": "Bad code"}]}},
            {"severity": "warning", "code": "informational", "diagnostics": "slow query"},
            "not an issue",
        ],
    }
    assert parse_operation_outcome(oo) == (
        OutcomeIssue("error", "invalid", "subject is required", ("ChargeItem.subject",)),
        OutcomeIssue("error", "processing", "Bad code"),
        OutcomeIssue("warning", "informational", "slow query"),
    )
    assert parse_operation_outcome({"resourceType": "Patient"}) == ()
    assert parse_operation_outcome(["junk"]) == ()


def _outcome(text: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "x", "diagnostics": text}],
    }


class CountingAuth(Auth):
    """A test double: a numbered token per (re)authorization."""

    def __init__(self, renewable: bool = True) -> None:
        self.generation = 1
        self.refreshes: list[str | None] = []
        self.renewable = renewable

    def apply(self, headers: MutableMapping[str, str]) -> None:
        headers["Authorization"] = f"Bearer token-{self.generation}"

    def refresh(self, failed: str | None = None) -> bool:
        self.refreshes.append(failed)
        if self.renewable:
            self.generation += 1
        return self.renewable


def make_transport(auth: Auth | None = None, **kwargs) -> tuple[HttpTransport, list[float]]:
    slept: list[float] = []
    transport = HttpTransport(
        auth=auth or NoAuth(),
        sleep=slept.append,
        now=lambda: NOW,
        policy=kwargs.pop("policy", POLICY),
        **kwargs,
    )
    return transport, slept


@pytest.mark.parametrize(
    ("status", "cls", "exit_code"),
    [
        (400, BadRequestError, ExitCode.SERVER_ERROR),
        (403, ForbiddenError, ExitCode.AUTH_ERROR),
        (404, NotFoundError, ExitCode.SERVER_ERROR),
        (409, ConflictError, ExitCode.SERVER_ERROR),
        (410, NotFoundError, ExitCode.SERVER_ERROR),
        (412, PreconditionFailedError, ExitCode.SERVER_ERROR),
        (422, BadRequestError, ExitCode.SERVER_ERROR),
        (405, FhirError, ExitCode.SERVER_ERROR),
    ],
)
@responses.activate
def test_error_status_becomes_a_typed_error_with_the_servers_text(status, cls, exit_code):
    responses.get(URL, status=status, json=_outcome(f"server says {status}"))
    transport, slept = make_transport()
    with pytest.raises(FhirError) as info:
        transport.request("GET", URL)
    err = info.value
    assert type(err) is cls
    assert err.status == status
    assert err.message == f"server says {status}"
    assert err.issues[0].text == f"server says {status}"
    assert f"server says {status}" in str(err) and f"HTTP {status}" in str(err)
    assert err.exit_code == exit_code
    assert slept == [] and len(responses.calls) == 1


@responses.activate
def test_forbidden_is_reported_as_a_missing_permission():
    responses.get(URL, status=403, body="")  # Epic sends 403 with an empty body
    transport, _ = make_transport()
    with pytest.raises(ForbiddenError) as info:
        transport.request("GET", URL)
    assert "missing permission" in str(info.value)
    assert info.value.message == "Forbidden"


@responses.activate
def test_error_text_never_includes_the_query():
    responses.get("http://127.0.0.1:8080/fhir/Patient", status=400, json=_outcome("bad"))
    transport, _ = make_transport()
    with pytest.raises(BadRequestError) as info:
        transport.request("GET", "http://127.0.0.1:8080/fhir/Patient", params={"name": "Doe"})
    assert "Doe" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# The transport
# --------------------------------------------------------------------------------------------------


@responses.activate
def test_429_with_retry_after_sleeps_that_long_then_succeeds():
    responses.get(URL, status=429, headers={"Retry-After": "7"})
    responses.get(URL, json={"resourceType": "Patient", "id": "p1"})
    transport, slept = make_transport()
    assert transport.request("GET", URL).json()["id"] == "p1"
    assert slept == [7.0]
    assert len(responses.calls) == 2


@responses.activate
def test_503_twice_then_success_backs_off_exponentially():
    responses.get(URL, status=503)
    responses.get(URL, status=503)
    responses.get(URL, json={"resourceType": "Patient", "id": "p1"})
    transport, slept = make_transport()
    assert transport.request("GET", URL).status_code == 200
    assert slept == [1.0, 2.0]


@responses.activate
def test_503_forever_gives_server_error_after_max_attempts():
    responses.get(URL, status=503, json=_outcome("maintenance"))
    transport, slept = make_transport()
    with pytest.raises(ServerError) as info:
        transport.request("GET", URL)
    assert info.value.message == "maintenance" and info.value.status == 503
    assert len(responses.calls) == 4
    assert slept == [1.0, 2.0, 4.0]


@responses.activate
def test_timeout_on_get_is_retried():
    responses.get(URL, body=requests.ReadTimeout("read timed out"))
    responses.get(URL, json={"resourceType": "Patient", "id": "p1"})
    transport, slept = make_transport()
    assert transport.request("GET", URL).json()["id"] == "p1"
    assert slept == [1.0]


@responses.activate
def test_connection_errors_on_get_until_exhausted_give_temporary_network_error():
    responses.get(URL, body=requests.ConnectionError("connection reset"))
    transport, slept = make_transport(policy=RetryPolicy(max_attempts=3))
    with pytest.raises(TemporaryNetworkError) as info:
        transport.request("GET", URL)
    assert info.value.status is None
    assert len(responses.calls) == 3 and slept == [1.0, 2.0]


@responses.activate
def test_timeout_on_post_is_outcome_unknown_and_not_retried():
    url = "http://127.0.0.1:8080/fhir/ChargeItem"
    responses.post(url, body=requests.ReadTimeout("read timed out"))
    transport, slept = make_transport()
    with pytest.raises(OutcomeUnknownError) as info:
        transport.request("POST", url, body={"resourceType": "ChargeItem"})
    assert "look it up by identifier" in str(info.value)
    assert len(responses.calls) == 1 and slept == []


@responses.activate
def test_500_on_post_is_outcome_unknown_with_the_servers_text():
    url = "http://127.0.0.1:8080/fhir/ChargeItem"
    responses.post(url, status=500, json=_outcome("database deadlock"))
    transport, slept = make_transport()
    with pytest.raises(OutcomeUnknownError) as info:
        transport.request("POST", url, body={"resourceType": "ChargeItem"})
    assert info.value.status == 500 and info.value.message == "database deadlock"
    assert len(responses.calls) == 1 and slept == []


@responses.activate
def test_503_with_retry_after_on_post_is_retried():
    url = "http://127.0.0.1:8080/fhir/ChargeItem"
    responses.post(url, status=503, headers={"Retry-After": "2"})
    responses.post(url, status=201, json={"resourceType": "ChargeItem", "id": "c1"})
    transport, slept = make_transport()
    assert transport.request("POST", url, body={"resourceType": "ChargeItem"}).status_code == 201
    assert slept == [2.0] and len(responses.calls) == 2


@responses.activate
def test_401_reauthorizes_once_without_counting_an_attempt():
    responses.get(URL, status=401)
    responses.get(URL, json={"resourceType": "Patient", "id": "p1"})
    auth = CountingAuth()
    transport, slept = make_transport(auth, policy=RetryPolicy(max_attempts=1))
    assert transport.request("GET", URL).status_code == 200
    assert auth.refreshes == ["Bearer token-1"]  # told which token was refused
    assert [c.request.headers["Authorization"] for c in responses.calls] == [
        "Bearer token-1",
        "Bearer token-2",
    ]
    assert slept == []


@responses.activate
def test_401_twice_is_unauthorized_after_one_reauthorization():
    responses.get(URL, status=401, json=_outcome("token revoked"))
    auth = CountingAuth()
    transport, _ = make_transport(auth)
    with pytest.raises(UnauthorizedError) as info:
        transport.request("GET", URL)
    assert len(auth.refreshes) == 1 and len(responses.calls) == 2
    assert info.value.exit_code == ExitCode.AUTH_ERROR


@responses.activate
def test_401_with_credentials_that_cannot_be_renewed_is_final():
    responses.get(URL, status=401)
    transport, _ = make_transport(CountingAuth(renewable=False))
    with pytest.raises(UnauthorizedError):
        transport.request("GET", URL)
    assert len(responses.calls) == 1


@responses.activate
def test_every_call_has_a_timeout_and_fhir_headers():
    responses.get(URL, status=503)
    responses.get(URL, json={})
    responses.post(URL, json={})
    transport, _ = make_transport(BearerAuth("tok"), timeout=(3.0, 45.0))
    transport.request("GET", URL)
    transport.request("POST", URL, body={"resourceType": "Basic", "text": "é"})
    assert [c.request.req_kwargs["timeout"] for c in responses.calls] == [(3.0, 45.0)] * 3  # type: ignore[attr-defined]
    get, post = responses.calls[0].request, responses.calls[2].request
    assert get.headers["Accept"] == "application/fhir+json"
    assert "gzip" in get.headers["Accept-Encoding"]
    assert get.headers["Authorization"] == "Bearer tok"
    assert post.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert post.body == '{"resourceType": "Basic", "text": "é"}'.encode()


@responses.activate
def test_raise_for_status_false_returns_final_error_responses():
    responses.get(URL, status=404)
    transport, _ = make_transport()
    assert transport.request("GET", URL, raise_for_status=False).status_code == 404


@responses.activate
def test_logs_never_carry_tokens_bodies_or_queries(caplog):
    responses.get("http://127.0.0.1:8080/fhir/Observation", status=503, json=_outcome("busy"))
    responses.get("http://127.0.0.1:8080/fhir/Observation", json={"resourceType": "Bundle", "secret": "PHI"})
    transport, _ = make_transport(BearerAuth("very-secret-token"))
    with caplog.at_level(logging.DEBUG):
        transport.request("GET", "http://127.0.0.1:8080/fhir/Observation", params={"name": "Jane Doe"})
    assert "retrying" in caplog.text
    for secret in ("very-secret-token", "Jane", "PHI"):
        assert secret not in caplog.text


def test_session_pool_is_sized_for_the_workers():
    session = make_session(12)
    adapter = session.get_adapter("https://ehr.example/fhir")
    assert adapter._pool_maxsize == 12  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
