"""Small, defensive readers shared by the inbound extractors.

Everything read from an EHR is untrusted: these helpers never assume a field has the type FHIR says it has.
A vendor that sends an object where FHIR has an array gets it read as a one-element array.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from fhir_mapping.canon import Systems
from fhir_mapping.fhirtime import FhirTime, parse_time
from fhir_mapping.issues import MappingError, quote

Json = dict[str, Any]

# A reference `Type/id`, relative or at the end of an absolute URL, optionally with `/_history/<version>`.
# Ids follow FHIR's character set; the length limit is relaxed to 255 because some EHRs exceed 64.
_REFERENCE = re.compile(
    r"(?:^|.*/)(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,255})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
# Distinct reference strings (a patient's, their devices') remembered by the reference caches. Bulk files come
# type by type and each visits every patient once, so a cache smaller than the population forgets every entry
# before it is asked again (a month of 10,000 patients missed on 41,000 patient references at 8,192).
# The party caches stay small: their entries cost more memory and their misses less time.
REFERENCE_CACHE = 1 << 16


@dataclass(frozen=True, slots=True)
class MapContext:
    """What every extractor needs: the practice time zone and the canonical URLs."""

    tz: ZoneInfo
    systems: Systems

    def time(self, value: object, field: str) -> FhirTime:
        return parse_time(value, self.tz, field)

    def optional_time(self, value: object, field: str) -> FhirTime | None:
        return None if value is None else parse_time(value, self.tz, field)


def as_dict(value: object) -> Json | None:
    return value if isinstance(value, dict) else None


def as_list(value: object) -> list[Any]:
    """A FHIR array; a lone object where an array belongs is read as one element; anything else as empty."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    return []


def as_str(value: object) -> str | None:
    """A non-blank string, stripped; None otherwise."""
    if isinstance(value, str):
        stripped = value.strip()
        return stripped or None
    return None


def dicts(value: object) -> Iterator[Json]:
    """The dict elements of a FHIR array (other junk in the array is ignored)."""
    return (item for item in as_list(value) if isinstance(item, dict))


def codings(concept: object) -> Iterator[Json]:
    """The codings of one CodeableConcept."""
    found = as_dict(concept)
    return dicts(found.get("coding")) if found is not None else iter(())


def codes(concepts: object, system: str) -> list[str]:
    """Codes under `system` in a CodeableConcept or an array of them, in order, without repeats."""
    result: list[str] = []
    for concept in as_list(concepts):
        if not isinstance(concept, dict):
            continue
        for coding in as_list(concept.get("coding")):  # codings(concept), without a generator
            if not isinstance(coding, dict):
                continue
            code = as_str(coding.get("code"))
            if coding.get("system") == system and code is not None and code not in result:
                result.append(sys.intern(code))  # codes repeat across thousands of resources: share them
    return result


def has_code(concepts: object, system: str, code: str) -> bool:
    return code in codes(concepts, system)


def split_reference(reference: object) -> tuple[str, str] | None:
    """`("Patient", "p1")` from `Patient/p1`, `https://ehr/fhir/Patient/p1` or `Patient/p1/_history/2`."""
    return _split_reference(reference) if isinstance(reference, str) else None


# A month's resources name the same few references (a patient, their devices) over and over: each distinct
# string is parsed once. The cache holds immutable answers only and is bounded.
@lru_cache(maxsize=REFERENCE_CACHE)
def _split_reference(reference: str) -> tuple[str, str] | None:
    text = as_str(reference)
    if text is None:
        return None
    match = _REFERENCE.fullmatch(text)
    return (match.group("type"), match.group("id")) if match else None


def reference_of(element: object) -> str | None:
    """The `reference` string of a Reference element, if any."""
    found = as_dict(element)
    return as_str(found.get("reference")) if found is not None else None


def patient_of(resource: Json, field: str) -> tuple[str | None, str | None]:
    """The patient id a resource belongs to via `field` (subject / patient), or (None, what is wrong)."""
    if field not in resource:
        return None, f"has no {field}"
    element = as_dict(resource[field])
    if element is None:
        return None, f"{field} is not a Reference"
    reference = element.get("reference")
    if isinstance(reference, str) and (patient_id := patient_reference_id(reference)) is not None:
        return patient_id, None
    reference = as_str(reference)
    if reference is None:
        return None, f"{field} has no reference (only a display or identifier)"
    return None, f"{field} {quote(reference)} is not a Patient reference"


@lru_cache(maxsize=REFERENCE_CACHE)
def patient_reference_id(reference: str) -> str | None:
    """The id of a Patient reference; None when `reference` is not one."""
    parts = split_reference(reference)
    return parts[1] if parts is not None and parts[0] == "Patient" else None


def find_extension(resource: Json, url: str) -> Json | None:
    """The first extension of `resource` with `url`."""
    for extension in as_list(resource.get("extension")):
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension
    return None


def program_of(resource: Json, ctx: MapContext) -> str | None:
    """The care-program code of the care-program extension; None when the resource has no attribution.

    A coding without a system is accepted (the extension fixes the system); another system, or an extension
    that cannot be read, is a MappingError: an attribution we cannot read must not be guessed to be RPM.
    """
    extension = find_extension(resource, ctx.systems.care_program_ext)
    if extension is None:
        return None
    coding = as_dict(extension.get("valueCoding"))
    if coding is None:
        raise MappingError("care-program extension has no valueCoding")
    code = as_str(coding.get("code"))
    if code is None:
        raise MappingError("care-program extension valueCoding has no code")
    system = coding.get("system")
    if system is not None and system != ctx.systems.care_program_cs:
        raise MappingError(
            f"care-program extension coding system {quote(system)} is not the care-program system"
        )
    return code


def human_name(resource: Json) -> str | None:
    """A display name from `name` (HumanName array, or Organization's string): text, else given + family."""
    name = resource.get("name")
    if isinstance(name, str):
        return as_str(name)
    for entry in dicts(name):
        text = as_str(entry.get("text"))
        if text:
            return text
        parts = [part for part in (as_str(g) for g in as_list(entry.get("given"))) if part]
        family = as_str(entry.get("family"))
        if family:
            parts.append(family)
        if parts:
            return " ".join(parts)
    return None


def contained_map(resource: Json) -> dict[str, Json]:
    """Contained resources by id, for `#id` references."""
    return {
        ident: item
        for item in dicts(resource.get("contained"))
        if (ident := as_str(item.get("id"))) is not None
    }
