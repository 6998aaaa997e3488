"""What the inbound mapping reports instead of raising: resources it had to skip, and why."""

from __future__ import annotations

from dataclasses import dataclass

# Values quoted in problem texts are cut to this length: a problem names the bad value, it does not copy it.
_QUOTE_LIMIT = 60


class MappingError(ValueError):
    """A resource (or one of its fields) cannot be read; the message says what is wrong, in words."""


@dataclass(frozen=True)
class SkippedResource:
    """A malformed or unusable resource: reported and skipped, never silently dropped."""

    resource_type: str  # "Observation", or "?" if unknown
    resource_id: str  # "" if none
    problem: str  # what is wrong, e.g. "effectiveDateTime '2026-13-01' is not a FHIR dateTime"
    patient_id: str | None = None

    @property
    def reference(self) -> str:
        """`Type/id` (or just the type when the resource had no id), for messages and logs."""
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else self.resource_type

    def __str__(self) -> str:
        return f"{self.reference} skipped: {self.problem}"


def quote(value: object) -> str:
    """A bad value for a problem text: quoted and shortened, so a huge or hostile value stays harmless."""
    text = repr(value) if not isinstance(value, str) else "'" + value.replace("'", "\\'") + "'"
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return text
