"""Typed errors and the numbered exit codes of the command line.

Exit codes are part of the interface: scripts and schedulers branch on them. Never reuse a retired number.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL_ERROR = 1  # a bug: please report it
    BAD_ARGUMENTS = 2  # argparse's own code for usage errors, kept for ours too
    UNREADABLE_INPUT = 3  # input file/directory missing, not JSON/NDJSON, or not FHIR at all
    SKIPPED_RESOURCES = 4  # finished, but some resources were malformed and skipped (see the report)
    SERVER_ERROR = 5  # the FHIR server could not be reached or kept failing
    AUTH_ERROR = 6  # discovery, token request or missing permission
    PATIENTS_FAILED = 7  # finished, but some patients could not be processed
    WRITE_REFUSED = 8  # the server cannot take the writes; charges went to an export file instead


class RpmBillingError(Exception):
    """Base class of errors the command line turns into an exit code and a one-line message."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class UsageError(RpmBillingError):
    exit_code = ExitCode.BAD_ARGUMENTS


class InputError(RpmBillingError):
    exit_code = ExitCode.UNREADABLE_INPUT
