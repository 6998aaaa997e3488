"""HTTP transport for FHIR and OAuth calls: one retry policy, typed errors, pooled connections.

The retry rule is one pure function, `decide()`, of the request method, the attempt number and what came
back (a status code or an exception). `HttpTransport` applies it around a `requests.Session`:

- Temporary: 408, 429, 500, 502, 503, 504, connection errors and timeouts. Safe methods (GET, HEAD,
  OPTIONS) are retried with deterministic exponential backoff (`RetryPolicy.backoff`), or after the
  server's `Retry-After` (seconds or HTTP-date), capped at `RetryPolicy.retry_after_cap`.
- Writes (POST, PUT, PATCH, DELETE) are retried only where the server tells us it did nothing: a 429, a
  503 that carries `Retry-After`, or a connection that was never opened. After any other failure once the
  request may have been sent (a read timeout, a dropped connection, 500/502/504, a 503 without
  `Retry-After`, 408) the outcome is unknown and `OutcomeUnknownError` is raised, so the caller can look the
  write up by identifier before trying again. Never blindly repeat a create.
- 401 re-authorizes once (`Auth.refresh`), and that extra request does not count as an attempt.
- Every call has a timeout, (connect, read) seconds.

Nothing here logs a token or a body: only the method, the URL path (no query), the status and the delay.
"""

from __future__ import annotations

import email.utils
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError

from smart_app.errors import ExitCode, RpmBillingError

if TYPE_CHECKING:
    from smart_app.auth import Auth

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# (connect, read) seconds. A month-end search page on a busy EHR can take tens of seconds to compute.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 60.0)
DEFAULT_POOL_SIZE = 8

Timeout = float | tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Typed errors
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeIssue:
    """One `OperationOutcome.issue`, reduced to what a person needs to read."""

    severity: str
    code: str
    text: str  # details.text, else diagnostics, else ""
    expression: tuple[str, ...] = ()


class FhirError(RpmBillingError):
    """A FHIR server answered with an error, or could not be reached.

    `status` is the HTTP status (None when no response arrived), `issues` the parsed OperationOutcome and
    `message` the server's own words (or the HTTP reason when it sent none).
    """

    exit_code = ExitCode.SERVER_ERROR

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        issues: tuple[OutcomeIssue, ...] = (),
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.issues = issues
        self.method = method
        self.url = url
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"{self.method} {_path_of(self.url)}" if self.method and self.url else ""
        status = f"HTTP {self.status}" if self.status is not None else ""
        head = ": ".join(part for part in (where, status) if part)
        return f"{head}: {self.message}" if head else self.message


class BadRequestError(FhirError):
    """400/422: the server rejected the request (invalid resource, unsupported search parameter...)."""


class UnauthorizedError(FhirError):
    """401 even after re-authorizing: the credentials are not accepted."""

    exit_code = ExitCode.AUTH_ERROR


class ForbiddenError(FhirError):
    """403: a missing permission (scope, client registration or user rights), reported as such."""

    exit_code = ExitCode.AUTH_ERROR

    def _describe(self) -> str:
        return f"{super()._describe()} (missing permission: check the scopes granted to this client)"


class NotFoundError(FhirError):
    """404 or 410: no such resource (or type) on this server."""


class ConflictError(FhirError):
    """409: a version conflict or a duplicate the server refused."""


class PreconditionFailedError(FhirError):
    """412: If-Match did not match, or a conditional create/update matched several resources."""


class ServerError(FhirError):
    """5xx after the retries ran out (or on a write the server says it did not start)."""


class TemporaryNetworkError(FhirError):
    """The server stayed unreachable, timed out or kept rate-limiting until the retries ran out."""


class OutcomeUnknownError(FhirError):
    """A write may or may not have been applied (timeout or 5xx after sending). It was not retried.

    Look the resource up by its business identifier before writing again.
    """

    def _describe(self) -> str:
        return (
            f"{super()._describe()} (outcome unknown: the write may or may not have been applied; "
            "look it up by identifier before retrying)"
        )


class ForeignOriginError(FhirError):
    """The server pointed us (e.g. a paging link) at another origin; we never send the token elsewhere."""

    exit_code = ExitCode.SERVER_ERROR


_STATUS_ERRORS: dict[int, type[FhirError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: NotFoundError,
    412: PreconditionFailedError,
    422: BadRequestError,
}


def error_class_for(status: int) -> type[FhirError]:
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    if status in (408, 429):
        return TemporaryNetworkError
    if status >= 500:
        return ServerError
    return FhirError


def parse_operation_outcome(body: object) -> tuple[OutcomeIssue, ...]:
    """The issues of an OperationOutcome JSON object; () for anything else. Tolerant of sloppy servers."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return ()
    issues = []
    for raw in body.get("issue") or ():
        if not isinstance(raw, Mapping):
            continue
        details = raw.get("details")
        text = details.get("text") if isinstance(details, Mapping) else None
        if not text and isinstance(details, Mapping):
            codings = details.get("coding") or ()
            text = next(
                (c.get("display") for c in codings if isinstance(c, Mapping) and c.get("display")), None
            )
        text = text or raw.get("diagnostics") or ""
        expression = raw.get("expression") or raw.get("location") or ()
        issues.append(
            OutcomeIssue(
                severity=str(raw.get("severity") or ""),
                code=str(raw.get("code") or ""),
                text=str(text),
                expression=tuple(str(e) for e in expression if isinstance(e, str)),
            )
        )
    return tuple(issues)


def error_from_response(
    response: requests.Response, method: str, *, cls: type[FhirError] | None = None
) -> FhirError:
    """A typed error for an HTTP error response, carrying the server's OperationOutcome text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    issues = parse_operation_outcome(body)
    texts = [i.text for i in issues if i.text and i.severity in ("fatal", "error", "")] or [
        i.text for i in issues if i.text
    ]
    message = "; ".join(texts) or (response.reason or "error")
    status = response.status_code
    error_cls = cls or error_class_for(status)
    return error_cls(message, status=status, issues=issues, method=method, url=response.url)


def _path_of(url: str | None) -> str:
    """The URL without its query: queries may carry identifiers we'd rather not spread through logs."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path


# --------------------------------------------------------------------------------------------------
# The retry policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts and deterministic (jitter-free) exponential backoff."""

    max_attempts: int = 4  # total tries of one request, the first included; re-authorization not counted
    backoff_base: float = 1.0  # seconds before the 2nd attempt; doubles each time
    backoff_max: float = 30.0
    retry_after_cap: float = 60.0  # a server once asked for a 5-hour Retry-After; we wait at most this

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based): base, 2*base, 4*base... capped."""
        return float(min(self.backoff_base * (2 ** (attempt - 1)), self.backoff_max))


class Action(enum.Enum):
    RETURN = "return"  # a usable answer (2xx/3xx) or a final error to raise from the response
    RETRY = "retry"  # sleep `delay`, then send again
    REAUTHORIZE = "reauthorize"  # 401: refresh the credentials, send again, do not count an attempt
    FAIL = "fail"  # give up: raise from the status or exception


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    outcome_unknown: bool = False  # a write may have been applied
    reason: str = ""


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` in seconds from now: delta-seconds or an HTTP-date. None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _never_sent(error: BaseException) -> bool:
    """True when the connection was never opened, so the server cannot have seen the request."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError) and not isinstance(
        error, requests.exceptions.SSLError | requests.exceptions.ProxyError
    ):
        reason = getattr(error.args[0], "reason", None) if error.args else None
        return isinstance(reason, NewConnectionError | NameResolutionError)
    return False


def _is_temporary_exception(error: BaseException) -> bool:
    if isinstance(error, requests.exceptions.SSLError):
        return False  # a certificate problem does not fix itself
    return isinstance(
        error,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError,
    )


def decide(
    policy: RetryPolicy,
    *,
    method: str,
    attempt: int,
    status: int | None = None,
    error: BaseException | None = None,
    retry_after: str | None = None,
    reauthorized: bool = False,
    idempotent: bool | None = None,
    now: datetime | None = None,
) -> Decision:
    """What to do after attempt number `attempt` (1-based) got `status` (or raised `error`).

    `idempotent` overrides the method's own safety (a token request is a POST that may be repeated).
    Pure: the only clock is `now`, used to read an HTTP-date `Retry-After`.
    """
    safe = method.upper() in SAFE_METHODS if idempotent is None else idempotent
    can_retry = attempt < policy.max_attempts

    if error is not None:
        if not _is_temporary_exception(error):
            return Decision(Action.FAIL, reason=type(error).__name__)
        if safe or _never_sent(error):
            if can_retry:
                return Decision(Action.RETRY, policy.backoff(attempt), reason=type(error).__name__)
            return Decision(Action.FAIL, reason=f"{type(error).__name__}, attempts exhausted")
        return Decision(Action.FAIL, outcome_unknown=True, reason=f"{type(error).__name__} after sending")

    if status is None:
        raise ValueError("decide() needs a status or an error")
    if status == 401:
        if reauthorized:
            return Decision(Action.FAIL, reason="401 after re-authorizing")
        return Decision(Action.REAUTHORIZE, reason="401")
    if status not in TEMPORARY_STATUSES:
        return Decision(Action.RETURN)

    wait = parse_retry_after(retry_after, now or datetime.now(UTC))
    # On a write only "I did nothing, come back later" answers are safe to repeat: 429, and 503 with
    # Retry-After (RFC 9110 §15.6.4). Anything else 5xx may have happened after the write was applied.
    if not safe and not (status == 429 or (status == 503 and wait is not None)):
        return Decision(Action.FAIL, outcome_unknown=True, reason=f"{status} on a write")
    if not can_retry:
        return Decision(Action.FAIL, reason=f"{status}, attempts exhausted")
    delay = min(wait, policy.retry_after_cap) if wait is not None else policy.backoff(attempt)
    return Decision(Action.RETRY, delay, reason=str(status))


# --------------------------------------------------------------------------------------------------
# The transport
# --------------------------------------------------------------------------------------------------


def make_session(pool_size: int = DEFAULT_POOL_SIZE) -> requests.Session:
    """A Session whose connection pool holds `pool_size` connections per host (size it to the workers).

    urllib3's own retries are off: `decide()` is the only retry policy.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@dataclass
class HttpTransport:
    """Sends one logical request with the retry policy, the auth header and a timeout on every call.

    Thread-safe when `session` is shared the usual way (one Session, its pool sized to the worker count)
    and `auth` is thread-safe (all of `smart_app.auth` is).
    """

    auth: Auth
    session: requests.Session = field(default_factory=make_session)
    timeout: Timeout = DEFAULT_TIMEOUT
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    accept: str = FHIR_JSON

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        raise_for_status: bool = True,
    ) -> requests.Response:
        """Send `method url` (JSON `body` as application/fhir+json) and return the final response.

        Raises a `FhirError` subclass for an error status (unless `raise_for_status` is False, in which
        case non-temporary error responses are returned), `TemporaryNetworkError` when the retries run
        out on a network failure and `OutcomeUnknownError` when a write may have been applied.
        """
        method = method.upper()
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        attempt, reauthorized = 1, False
        while True:
            sent_headers: MutableMapping[str, str] = {"Accept": self.accept}
            if data is not None:
                sent_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
            sent_headers.update(headers or {})
            self.auth.apply(sent_headers)
            try:
                response = self.session.request(
                    method, url, params=params, data=data, headers=dict(sent_headers), timeout=self.timeout
                )
            except requests.exceptions.RequestException as exc:
                decision = decide(
                    self.policy, method=method, attempt=attempt, error=exc, idempotent=idempotent
                )
                if decision.action is Action.RETRY:
                    self._wait(method, url, attempt, decision)
                    attempt += 1
                    continue
                raise self._network_error(exc, method, url, decision) from exc

            decision = decide(
                self.policy,
                method=method,
                attempt=attempt,
                status=response.status_code,
                retry_after=response.headers.get("Retry-After"),
                reauthorized=reauthorized,
                idempotent=idempotent,
                now=self.now(),
            )
            if decision.action is Action.REAUTHORIZE:
                log.info("%s %s: 401, re-authorizing once", method, _path_of(url))
                reauthorized = True
                if self.auth.refresh(failed=sent_headers.get("Authorization")):
                    continue
                decision = Decision(Action.FAIL, reason="401 and the credentials cannot be renewed")
            if decision.action is Action.RETRY:
                self._wait(method, url, attempt, decision)
                response.close()
                attempt += 1
                continue
            if decision.action is Action.FAIL:
                cls = OutcomeUnknownError if decision.outcome_unknown else None
                raise error_from_response(response, method, cls=cls)
            if raise_for_status and response.status_code >= 400:
                raise error_from_response(response, method)
            return response

    def _wait(self, method: str, url: str, attempt: int, decision: Decision) -> None:
        log.warning(
            "%s %s: %s (attempt %d of %d); retrying in %.1f s",
            method,
            _path_of(url),
            decision.reason,
            attempt,
            self.policy.max_attempts,
            decision.delay,
        )
        self.sleep(decision.delay)

    @staticmethod
    def _network_error(exc: Exception, method: str, url: str, decision: Decision) -> FhirError:
        what = type(exc).__name__
        if decision.outcome_unknown:
            return OutcomeUnknownError(f"{what} after the request was sent", method=method, url=url)
        if _is_temporary_exception(exc):
            return TemporaryNetworkError(
                f"{what}: the server could not be reached ({decision.reason})", method=method, url=url
            )
        return FhirError(f"{what}: {exc}", method=method, url=url)
