"""Who took part: FHIR references (sender, recipient, performer) resolved to domain Parties.

Resolution happens in two steps because the RelatedPerson or Device a Communication names may arrive after
it (Bulk NDJSON comes type by type). `provisional_party` decides what the reference alone can tell;
`resolve_party` finishes RelatedPerson and Device references once everything has been read.

Until then a party is a PartyRow of plain values, (kind, reference, display): a month's Communications wait
for finish in that form, which costs little memory and no garbage-collector time. `party_of` makes the Party.
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
_KINDS = {kind.value: kind for kind in PartyKind}

# (PartyKind value, reference, display)
PartyRow = tuple[str, str, str | None]


@lru_cache(maxsize=4096)
def party_of(row: PartyRow) -> Party:
    """The Party of a row (one shared, immutable Party per distinct row)."""
    return Party(_KINDS[row[0]], row[1], row[2])


def party_row(party: Party) -> PartyRow:
    return party.kind.value, party.reference, party.display


def provisional_party(element: object, patient_id: str, contained: Mapping[str, Json]) -> PartyRow:
    """A party from a Reference element. Contained (`#id`) references are resolved right away."""
    found = as_dict(element) or {}
    display = as_str(found.get("display"))
    reference = as_str(found.get("reference"))
    if reference is None:
        return PartyKind.UNKNOWN.value, "", display
    if reference.startswith("#"):
        return _contained_party(reference, contained.get(reference[1:]), patient_id, display)
    return referenced_party(reference, display, patient_id)


# The same few parties (the patient, the care team) take part in most of a patient's Communications: one
# shared row each. Bounded (a few per patient are kept; the reference strings themselves by REFERENCE_CACHE).
@lru_cache(maxsize=4096)
def referenced_party(reference: str, display: str | None, patient_id: str) -> PartyRow:
    parts = split_reference(reference)
    if parts is None:
        return PartyKind.UNKNOWN.value, reference, display
    kind_name, ident = parts
    normalized = f"{kind_name}/{ident}"
    if kind_name == "Patient":
        kind = PartyKind.PATIENT if ident == patient_id else PartyKind.OTHER_PATIENT
        return kind.value, normalized, display
    kind = _DIRECT_KINDS.get(kind_name) or _DEFERRED_KINDS.get(kind_name) or PartyKind.UNKNOWN
    return kind.value, normalized, display


def _contained_party(reference: str, resource: Json | None, patient_id: str, display: str | None) -> PartyRow:
    if resource is None:
        return PartyKind.UNKNOWN.value, reference, display
    resource_type = resource.get("resourceType")
    display = display or _display_of(resource)
    kind: PartyKind
    if resource_type in _DIRECT_KINDS:
        kind = _DIRECT_KINDS[resource_type]
    elif resource_type == "RelatedPerson":
        kind = _related_kind(map_related_person(resource), patient_id)
    elif resource_type == "Device":
        if resource.get("patient") is None:
            kind = PartyKind.AI_SYSTEM
        else:
            owner, _ = patient_of(resource, "patient")
            kind = PartyKind.DEVICE if owner else PartyKind.UNKNOWN
    else:  # a contained Patient cannot be verified to be this patient
        kind = PartyKind.UNKNOWN
    return kind.value, reference, display


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
    party: PartyRow,
    patient_id: str,
    related: Mapping[str, RelatedPersonInfo],
    devices: Mapping[str, DeviceInfo],
    names: Mapping[str, str],
) -> PartyRow:
    """The final party once all resources are read.

    RelatedPerson: caregiver if verifiably this patient's with a relationship, else related-person (also when
    never seen). Device: ai-system when it has no patient, device when it has one, unknown when never seen.
    A missing display is filled from the named resource when we read one.
    """
    kind, reference, display = party
    kind_name, _, ident = reference.partition("/")
    if kind_name == "RelatedPerson":
        info = related.get(ident)
        kind = (_related_kind(info, patient_id) if info else PartyKind.RELATED_PERSON).value
    elif kind_name == "Device":
        device = devices.get(ident)
        if device is None:
            kind = PartyKind.UNKNOWN.value
        else:
            kind = (PartyKind.AI_SYSTEM if device.patient_id is None else PartyKind.DEVICE).value
    if display is None:
        display = names.get(reference)
    return kind, reference, display
