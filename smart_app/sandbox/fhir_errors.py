"""Errors of the sandbox FHIR server, each carried to the client as an HTTP status and an OperationOutcome."""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """A request the sandbox refuses or cannot complete.

    `code` is an OperationOutcome issue type (http://hl7.org/fhir/issue-type): invalid, not-supported,
    not-found, deleted, conflict, forbidden, login, processing, duplicate, multiple-matches, exception...
    """

    def __init__(self, status: int, code: str, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.expression = expression

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.message, code=self.code, expression=self.expression)


def operation_outcome(
    message: str, *, code: str = "processing", severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def bad_request(message: str, *, code: str = "invalid", expression: str | None = None) -> FhirError:
    return FhirError(400, code, message, expression=expression)


def not_supported(message: str) -> FhirError:
    return FhirError(400, "not-supported", message)


def forbidden(message: str) -> FhirError:
    return FhirError(403, "forbidden", message)
