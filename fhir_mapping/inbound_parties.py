"""Who took part: FHIR references (sender, recipient, performer) resolved to domain Parties.

Resolution happens in two steps because the RelatedPerson or Device a Communication names may arrive after
it (Bulk NDJSON comes type by type). `provisional_party` decides what the reference alone can tell;
`resolve_party` finishes RelatedPerson and Device references once everything has been read.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from billing.model import Party, PartyKind
from fhir_mapping.inbound_common import Json, as_dict, as_str, human_name, patient_of, split_reference
from fhir_mapping.inbound_records import DeviceInfo, RelatedPersonInfo, map_related_person

# Kinds a reference's type alone decides.
_DIRECT_KINDS = {
    "Practitioner": PartyKind.PRACTITIONER,
    "PractitionerRole": PartyKind.PRACTITIONER_ROLE,
    "Organization": PartyKind.ORGANIZATION,
}
# Provisional kinds of references resolved at finish (UNKNOWN if the resource never arrives).
_DEFERRED_KINDS = {"RelatedPerson": PartyKind.RELATED_PERSON, "Device": PartyKind.UNKNOWN}


def provisional_party(element: object, patient_id: str, contained: Mapping[str, Json]) -> Party:
    """A Party from a Reference element. Contained (`#id`) references are resolved right away."""
    found = as_dict(element) or {}
    display = as_str(found.get("display"))
    reference = as_str(found.get("reference"))
    if reference is None:
        return Party(PartyKind.UNKNOWN, "", display)
    if reference.startswith("#"):
        return _contained_party(reference, contained.get(reference[1:]), patient_id, display)
    return _referenced_party(reference, display, patient_id)


# The same few parties (the patient, the care team) take part in most of a patient's Communications: one
# shared Party each (they are immutable), which saves memory and time. Bounded.
@lru_cache(maxsize=4096)
def _referenced_party(reference: str, display: str | None, patient_id: str) -> Party:
    parts = split_reference(reference)
    if parts is None:
        return Party(PartyKind.UNKNOWN, reference, display)
    kind_name, ident = parts
    normalized = f"{kind_name}/{ident}"
    if kind_name == "Patient":
        kind = PartyKind.PATIENT if ident == patient_id else PartyKind.OTHER_PATIENT
        return Party(kind, normalized, display)
    kind = _DIRECT_KINDS.get(kind_name) or _DEFERRED_KINDS.get(kind_name) or PartyKind.UNKNOWN
    return Party(kind, normalized, display)


def _contained_party(reference: str, resource: Json | None, patient_id: str, display: str | None) -> Party:
    if resource is None:
        return Party(PartyKind.UNKNOWN, reference, display)
    resource_type = resource.get("resourceType")
    display = display or _display_of(resource)
    if resource_type in _DIRECT_KINDS:
        return Party(_DIRECT_KINDS[resource_type], reference, display)
    if resource_type == "RelatedPerson":
        return Party(_related_kind(map_related_person(resource), patient_id), reference, display)
    if resource_type == "Device":
        if resource.get("patient") is None:
            return Party(PartyKind.AI_SYSTEM, reference, display)
        owner, _ = patient_of(resource, "patient")
        return Party(PartyKind.DEVICE if owner else PartyKind.UNKNOWN, reference, display)
    # A contained Patient cannot be verified to be this patient.
    return Party(PartyKind.UNKNOWN, reference, display)


def _display_of(resource: Json) -> str | None:
    if resource.get("resourceType") == "Device":
        names = resource.get("deviceName")
        first = as_dict(names[0]) if isinstance(names, list) and names else None
        return as_str(first.get("name")) if first else None
    return human_name(resource)


def _related_kind(info: RelatedPersonInfo, patient_id: str) -> PartyKind:
    """A caregiver only when the RelatedPerson is this patient's AND the relationship is recorded."""
    if info.patient_id == patient_id and info.has_relationship:
        return PartyKind.CAREGIVER
    return PartyKind.RELATED_PERSON


def resolve_party(
    party: Party,
    patient_id: str,
    related: Mapping[str, RelatedPersonInfo],
    devices: Mapping[str, DeviceInfo],
    names: Mapping[str, str],
) -> Party:
    """The final Party once all resources are read (same object when nothing changes).

    RelatedPerson: caregiver if verifiably this patient's with a relationship, else related-person (also when
    never seen). Device: ai-system when it has no patient, device when it has one, unknown when never seen.
    A missing display is filled from the named resource when we read one.
    """
    kind = party.kind
    kind_name, _, ident = party.reference.partition("/")
    if kind_name == "RelatedPerson":
        info = related.get(ident)
        kind = _related_kind(info, patient_id) if info else PartyKind.RELATED_PERSON
    elif kind_name == "Device":
        device = devices.get(ident)
        if device is None:
            kind = PartyKind.UNKNOWN
        else:
            kind = PartyKind.AI_SYSTEM if device.patient_id is None else PartyKind.DEVICE
    display = party.display
    if display is None:
        display = names.get(party.reference)
    if kind is party.kind and display == party.display:
        return party
    return Party(kind, party.reference, display)
