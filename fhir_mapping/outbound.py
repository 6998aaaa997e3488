"""Outbound FHIR: the ChargeItems, the monthly DocumentReference and the transaction Bundle that writes them.

Pure translation from a `billing.result.MonthResult` to FHIR R4 JSON dicts, each validated with the
`fhir.resources.R4B` models before it is returned. Nothing here talks to a server.

Idempotency. Every resource we create carries, besides its contract identifier (`CANON/charge-key` or
`CANON/monthly-log`), a second identifier under `CANON/write-key` whose value is a UUID derived from what the
resource says: for a ChargeItem the charge key, units and status; for the DocumentReference the monthly-log
key and a fingerprint of the log's content (not the as-of time). The transaction's conditional creates
(`ifNoneExist`) and the entries' `urn:uuid` fullUrls use that key, so:

- re-running an unchanged month matches every existing resource and creates nothing;
- a changed result (other units, planned becoming billable, new log content) gets a fresh key and is created,
  while the contract identifier stays what the contract says (the old resource is then retired with a PUT,
  see `status_change_entry`);
- the search value is a plain UUID. The contract keys contain `|`, which token search cannot match on
  every server (the reference server splits `system|value` at each `|`, so
  `identifier=CANON/charge-key|p1|99457|...` never matches there, and FHIR's `\\|` escape is not honoured
  either).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from billing.periods import zone
from billing.result import CodeLine, MonthResult
from fhir_mapping.canon import CANON, CPT_SYSTEM, DOCUMENT_CATEGORY_CS, MONTHLY_LOG_TYPE
from fhir_mapping.monthly_log import (
    CPT_DESCRIPTIONS,
    fhir_period,
    iso_instant,
    log_fingerprint,
    log_json_text,
    render_log_html,
)
from fhir_mapping.validate import validate_resource

# Exactly the contract's "text/html"; the HTML itself declares <meta charset="utf-8">. (Oracle Health lists
# "text/html;charset=utf-8": a vendor adapter can override this.)
HTML_CONTENT_TYPE = "text/html"
JSON_CONTENT_TYPE = "application/json"  # JSON is UTF-8 by definition (RFC 8259): no charset parameter

# Statuses a run may set on a resource it wrote earlier (never edited otherwise).
RETIRE_STATUSES = {
    "ChargeItem": frozenset({"entered-in-error"}),
    "DocumentReference": frozenset({"superseded", "entered-in-error"}),
}

_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[^\s/]+)$")
_BARE_ID = re.compile(r"^[^\s/]+$")


def _reference(value: str, default_type: str, allowed: Sequence[str], setting: str) -> str:
    """A settings reference as `Type/id`; a bare id gets `default_type`."""
    text = value.strip()
    if _BARE_ID.match(text):
        return f"{default_type}/{text}"
    match = _REFERENCE.match(text)
    if not match or match.group("type") not in allowed:
        raise ValueError(f"{setting} must be an id or a reference to {' or '.join(allowed)}, got {value!r}")
    return text


@dataclass(frozen=True)
class WriteSettings:
    """What a deployment decides about the resources it writes."""

    canon: str = CANON
    billing_practitioner: str | None = (
        None  # "Practitioner/123", "PractitionerRole/9" or a bare Practitioner id
    )
    document_type: tuple[str, str, str] = MONTHLY_LOG_TYPE  # (system, code, display)
    organization: str | None = (
        None  # "Organization/1" or a bare id: ChargeItem performer org, document custodian
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "canon", self.canon.rstrip("/"))
        if self.billing_practitioner is not None:
            ref = _reference(
                self.billing_practitioner,
                "Practitioner",
                ("Practitioner", "PractitionerRole"),
                "billing_practitioner",
            )
            object.__setattr__(self, "billing_practitioner", ref)
        if self.organization is not None:
            ref = _reference(self.organization, "Organization", ("Organization",), "organization")
            object.__setattr__(self, "organization", ref)
        if len(self.document_type) != 3 or not all(self.document_type):
            raise ValueError("document_type must be (system, code, display), all non-empty")

    @property
    def charge_key_system(self) -> str:
        return f"{self.canon}/charge-key"

    @property
    def monthly_log_system(self) -> str:
        return f"{self.canon}/monthly-log"

    @property
    def write_key_system(self) -> str:
        return f"{self.canon}/write-key"

    def policy_uri(self, result: MonthResult) -> str:
        """definitionUri: the rule set and its version, e.g. CANON/billing-policy/cms-2026|2026.1."""
        return f"{self.canon}/billing-policy/{result.policy.name}|{result.policy.version}"


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(parts)))


def charge_write_key(line: CodeLine, settings: WriteSettings) -> str:
    """Changes exactly when the charge would be written differently in a way billing cares about."""
    return _uuid(settings.charge_key_system, line.charge_key, str(line.units), line.status.value)


def monthly_log_key(result: MonthResult) -> str:
    """The contract identifier value of the month's DocumentReference: `{patient id}|{YYYY-MM}`."""
    return f"{result.patient_id}|{result.month}"


def document_write_key(result: MonthResult, settings: WriteSettings) -> str:
    return _uuid(settings.monthly_log_system, monthly_log_key(result), log_fingerprint(result))


# --- ChargeItem --------------------------------------------------------------------------------------------


def charge_item(
    line: CodeLine, result: MonthResult, settings: WriteSettings, document_ref: str
) -> dict[str, Any]:
    """One ChargeItem for one code line; `document_ref` is the monthly DocumentReference (id or urn:uuid)."""
    tz = zone(result.timezone)
    coding: dict[str, Any] = {"system": CPT_SYSTEM, "code": line.code}
    if line.code in CPT_DESCRIPTIONS:
        coding["display"] = CPT_DESCRIPTIONS[line.code]
    supporting = [document_ref, *(ref for ref in line.evidence if ref != document_ref)]
    resource: dict[str, Any] = {
        "resourceType": "ChargeItem",
        "identifier": [
            {"system": settings.charge_key_system, "value": line.charge_key},
            {
                "use": "secondary",
                "system": settings.write_key_system,
                "value": charge_write_key(line, settings),
            },
        ],
        "definitionUri": [settings.policy_uri(result)],
        "status": line.status.value,
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{result.patient_id}"},
        "occurrencePeriod": fhir_period(line.period, tz),
    }
    if settings.billing_practitioner:
        resource["performer"] = [{"actor": {"reference": settings.billing_practitioner}}]
    if settings.organization:
        resource["performingOrganization"] = {"reference": settings.organization}
    resource["quantity"] = {"value": line.units}
    resource["enteredDate"] = iso_instant(result.as_of, tz)
    resource["note"] = [{"text": line.reason}]
    resource["supportingInformation"] = [{"reference": ref} for ref in dict.fromkeys(supporting)]
    validate_resource(resource)
    return resource


def charge_items(result: MonthResult, settings: WriteSettings, document_ref: str) -> list[dict[str, Any]]:
    """One ChargeItem per code line of the month (billable for a closed period, planned for a preview)."""
    return [charge_item(line, result, settings, document_ref) for line in result.codes]


# --- DocumentReference -------------------------------------------------------------------------------------


def _attachment(data: bytes, content_type: str, title: str, creation: str) -> dict[str, Any]:
    return {
        "contentType": content_type,
        "language": "en",
        "data": base64.b64encode(data).decode("ascii"),
        "size": len(data),
        # FHIR Attachment.hash: the SHA-1 of the data, base64-encoded.
        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
        "title": title,
        "creation": creation,
    }


def _reference_to(value: str, resource_type: str) -> str:
    text = value.strip()
    if _BARE_ID.match(text):
        return f"{resource_type}/{text}"
    match = _REFERENCE.match(text)
    if match and match.group("type") == resource_type:
        return text
    raise ValueError(f"expected a {resource_type} id or reference, got {value!r}")


def monthly_document(
    result: MonthResult, settings: WriteSettings, replaces: str | None = None
) -> dict[str, Any]:
    """The month's DocumentReference holding the log as HTML (for people) and JSON (for machines).

    `replaces`: the id (or `DocumentReference/id`) of the document this one supersedes.
    """
    tz = zone(result.timezone)
    as_of = iso_instant(result.as_of, tz)
    system, code, display = settings.document_type
    label = f"RPM monthly log {result.month}"
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [
            {"system": settings.monthly_log_system, "value": monthly_log_key(result)},
            {
                "use": "secondary",
                "system": settings.write_key_system,
                "value": document_write_key(result, settings),
            },
        ],
        "status": "current",
        "docStatus": "preliminary" if result.preview else "final",
        "type": {"coding": [{"system": system, "code": code, "display": display}]},
        "category": [
            {
                "coding": [
                    {"system": DOCUMENT_CATEGORY_CS, "code": "clinical-note", "display": "Clinical Note"}
                ]
            }
        ],
        "subject": {"reference": f"Patient/{result.patient_id}"},
        "date": as_of,
    }
    if settings.billing_practitioner:
        resource["author"] = [{"reference": settings.billing_practitioner}]
    if settings.organization:
        resource["custodian"] = {"reference": settings.organization}
    if replaces:
        resource["relatesTo"] = [
            {"code": "replaces", "target": {"reference": _reference_to(replaces, "DocumentReference")}}
        ]
    resource["description"] = (
        f"{label}: remote patient monitoring billing audit log ({'preview' if result.preview else 'final'}; "
        f"policy {result.policy.name} {result.policy.version})"
    )
    resource["content"] = [
        {"attachment": _attachment(render_log_html(result).encode("utf-8"), HTML_CONTENT_TYPE, label, as_of)},
        {
            "attachment": _attachment(
                log_json_text(result).encode("utf-8"), JSON_CONTENT_TYPE, f"{label} (JSON)", as_of
            )
        },
    ]
    resource["context"] = {"period": fhir_period(result.month_period, tz)}
    validate_resource(resource)
    return resource


# --- Bundle entries ----------------------------------------------------------------------------------------


def _identifier_value(resource: Mapping[str, Any], system: str) -> str:
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, Mapping) and identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    raise ValueError(f"{resource.get('resourceType', 'resource')} has no identifier with system {system}")


def identifier_query(system: str, value: str) -> str:
    """`identifier=<system>|<value>` as a URL query string (percent-encoded, `:` and `/` kept readable)."""
    return "identifier=" + quote(f"{system}|{value}", safe=":/")


def create_entry(resource: Mapping[str, Any], key_system: str) -> dict[str, Any]:
    """A conditional-create (POST + ifNoneExist) entry keyed on the resource's identifier under `key_system`.

    The fullUrl is a urn:uuid derived from that identifier, so the same resource always gets the same
    fullUrl and references to it from other entries are reproducible.
    """
    value = _identifier_value(resource, key_system)
    return {
        "fullUrl": f"urn:uuid:{_uuid(key_system, value)}",
        "resource": copy.deepcopy(dict(resource)),
        "request": {
            "method": "POST",
            "url": str(resource["resourceType"]),
            "ifNoneExist": identifier_query(key_system, value),
        },
    }


def etag(value: str) -> str:
    """An If-Match value: an ETag as given (`W/"3"`, `"3"`), or a bare version id made into a weak ETag."""
    text = value.strip()
    if text.startswith(('W/"', '"')):
        return text
    return f'W/"{text}"'


def update_entry(
    resource: Mapping[str, Any], *, if_match: str | None = None, base_url: str | None = None
) -> dict[str, Any]:
    """A PUT entry for a resource read from the server (it must have an id).

    `if_match`: the ETag (or version id) read with the resource, so a concurrent change fails the transaction
    instead of being overwritten. `base_url`: the server's base, for the entry's absolute fullUrl.
    """
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not rtype or not rid:
        raise ValueError("an update needs a resource with resourceType and id")
    entry: dict[str, Any] = {}
    if base_url:
        entry["fullUrl"] = f"{base_url.rstrip('/')}/{rtype}/{rid}"
    entry["resource"] = copy.deepcopy(dict(resource))
    entry["request"] = {"method": "PUT", "url": f"{rtype}/{rid}"}
    if if_match:
        entry["request"]["ifMatch"] = etag(if_match)
    return entry


def status_change_entry(
    resource: Mapping[str, Any], status: str, *, if_match: str | None = None, base_url: str | None = None
) -> dict[str, Any]:
    """A PUT entry retiring one of our earlier writes: a ChargeItem to entered-in-error, a DocumentReference
    to superseded (or entered-in-error). Everything else in the resource is left as the server holds it.

    A ChargeItem with status `billed` is never touched (the caller reports it for manual correction).
    """
    rtype = str(resource.get("resourceType"))
    allowed = RETIRE_STATUSES.get(rtype, frozenset())
    if status not in allowed:
        raise ValueError(
            f"a run may not set {rtype} status to {status!r} (allowed: {', '.join(sorted(allowed))})"
        )
    if rtype == "ChargeItem" and resource.get("status") == "billed":
        raise ValueError(
            f"ChargeItem {resource.get('id')} is billed: it needs a manual correction, not a write"
        )
    changed = copy.deepcopy(dict(resource))
    changed["status"] = status
    return update_entry(changed, if_match=if_match, base_url=base_url)


def build_transaction(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of the entries, each resource validated (R4B) and fullUrls unique."""
    entry_list = [copy.deepcopy(dict(e)) for e in entries]
    seen: set[str] = set()
    for entry in entry_list:
        full_url = entry.get("fullUrl")
        if full_url:
            if full_url in seen:
                raise ValueError(f"two entries share fullUrl {full_url}")
            seen.add(full_url)
        validate_resource(entry["resource"])
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entry_list}
    validate_resource(bundle)
    return bundle


def transaction_entries(
    result: MonthResult, settings: WriteSettings, *, replaces: str | None = None
) -> list[dict[str, Any]]:
    """The month's DocumentReference followed by its ChargeItems, as conditional creates. The ChargeItems'
    supportingInformation references the DocumentReference by its urn:uuid fullUrl, which the server rewrites
    to the created (or, on a re-run, the matched existing) document.
    """
    document = monthly_document(result, settings, replaces=replaces)
    doc_entry = create_entry(document, settings.write_key_system)
    items = charge_items(result, settings, doc_entry["fullUrl"])
    return [doc_entry, *(create_entry(item, settings.write_key_system) for item in items)]


def transaction_for(
    result: MonthResult, settings: WriteSettings, *, replaces: str | None = None
) -> dict[str, Any]:
    """One transaction Bundle: the monthly DocumentReference and its ChargeItems, all conditional creates."""
    return build_transaction(transaction_entries(result, settings, replaces=replaces))


# --- splitting for servers that limit a transaction's size ------------------------------------------------


def _urn_refs(value: Any) -> set[str]:
    """Every `urn:uuid:` reference inside a resource."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            found.add(ref)
        for item in value.values():
            found |= _urn_refs(item)
    elif isinstance(value, list):
        for item in value:
            found |= _urn_refs(item)
    return found


def split_transaction(bundle: Mapping[str, Any], max_entries: int) -> list[dict[str, Any]]:
    """Split a transaction into bundles of at most `max_entries` entries, in order.

    An entry referenced by urn:uuid from other entries (the monthly DocumentReference) is repeated in every
    bundle that references it: it is a conditional create, so the first bundle creates it and the later ones
    match it, and each bundle stays valid on its own. Running the bundles in order is idempotent, so a crash
    between them is repaired by running them all again.
    """
    entries = list(bundle.get("entry") or [])
    if len(entries) <= max_entries:
        return [build_transaction(entries)]
    by_url = {e["fullUrl"]: e for e in entries if e.get("fullUrl")}
    needs = [sorted(r for r in _urn_refs(e.get("resource")) if r in by_url) for e in entries]
    anchors = {r for refs in needs for r in refs}
    for url in anchors:
        if "ifNoneExist" not in by_url[url].get("request", {}):
            raise ValueError(f"entry {url} is referenced across bundles but is not a conditional create")
        if any(r in anchors for r in _urn_refs(by_url[url].get("resource"))):
            raise ValueError(f"entry {url} is referenced and references another entry: cannot split safely")
    others = [(e, refs) for e, refs in zip(entries, needs, strict=True) if e.get("fullUrl") not in anchors]
    if any(len(refs) + 1 > max_entries for _, refs in others):
        raise ValueError(f"an entry needs more than {max_entries} entries in its bundle")

    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    current_anchors: list[str] = []
    for entry, refs in others:
        missing = [r for r in refs if r not in current_anchors]
        if current and len(current_anchors) + len(current) + len(missing) + 1 > max_entries:
            chunks.append([by_url[u] for u in current_anchors] + current)
            current, current_anchors, missing = [], [], list(refs)
        current_anchors += missing
        current.append(entry)
    chunks.append([by_url[u] for u in current_anchors] + current)
    return [build_transaction(chunk) for chunk in chunks]
