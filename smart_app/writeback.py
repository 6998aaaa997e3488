"""Write-back (contract section 4): what a month's result changes on the server, and writing it exactly once.

`plan_month_writes` compares the engine's result with what `reads.fetch_patient_month` read and decides, from
the reads alone, every write; `apply_plan` sends them as one transaction per patient and month (split to the
server's limits). Re-run rules, word for word from the contract, and the choices where it is open:

- Unchanged result: no writes at all, not even conditional creates. A ChargeItem is unchanged when one of our
  earlier ChargeItems for the same charge key still carries the write key (`CANON/write-key`, derived from
  charge key, units and status) this result would write; the monthly DocumentReference when a current one
  carries the write key of this log's content (as-of time excluded).
- New code: a new ChargeItem (conditional create on its write key).
- Changed (units, or planned becoming billable when a period closes) or no longer justified: the old
  ChargeItem becomes `entered-in-error` (PUT with If-Match) and, when still justified, a new one is created.
  Planned to billable is handled the same way (new + entered-in-error) rather than a status update: the
  billable charge gets its own enteredDate, note and evidence, and nothing is ever edited in place.
- `billed` is never touched: the run reports it for manual correction and creates no replacement for that
  charge key (which would bill twice). `aborted` / `not-billable` (a person's decision) and
  `entered-in-error` are left alone; they do not count as the charge being present.
- The new DocumentReference `relatesTo` (replaces) every current one of the month, which become `superseded`
  (If-Match). ChargeItems that are unchanged keep referencing the document they were written with.
- Re-creating something retired earlier (a result going A, B, then A again) would make the server match the
  retired resource's write key in `ifNoneExist` and create nothing. The write key is then taken from a chain
  (`uuid5(key|1)`, `uuid5(key|2)`, ...): the first link no resource read carries.
- Order: creates first, retirements last, so a crash between split bundles never leaves a month without its
  charges; the next run finishes the retirements. A transaction whose outcome is unknown (timeout, 5xx) is
  looked up by write key before anything is sent again.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from billing.result import CodeLine, ManualCorrection, MonthResult
from fhir_mapping.outbound import (
    WriteSettings,
    build_transaction,
    charge_item,
    charge_write_key,
    create_entry,
    document_write_key,
    monthly_document,
    split_transaction,
    status_change_entry,
)
from smart_app.fhir_client import FhirClient, ServerLimits, entry_responses, token
from smart_app.http import (
    ConflictError,
    FhirError,
    OutcomeUnknownError,
    PreconditionFailedError,
)
from smart_app.reads import PatientFetch, parse_charge_key

log = logging.getLogger(__name__)

# Statuses of our own ChargeItems a run may retire; `billed` is frozen, the rest are already inactive.
RETIRABLE = frozenset({"planned", "billable"})
BILLED = "billed"
MAX_RESENDS = 2  # after an unknown outcome: look up, then send what is missing again, at most this often
_CHAIN_LIMIT = 1000


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retirement:
    """One of our earlier resources to retire, and why (in words for the run report)."""

    reference: str  # "ChargeItem/123"
    new_status: str  # entered-in-error | superseded
    reason: str
    code: str | None = None
    entry: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Creation:
    """One resource to create (conditional create on its write key)."""

    resource_type: str
    key: str  # the contract identifier value: charge key or monthly-log key
    write_key: str
    reason: str
    code: str | None = None
    units: int | None = None
    status: str | None = None
    entry: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class WritePlan:
    """Every write one patient's month needs. `unchanged`: nothing to write (manual corrections aside)."""

    patient_id: str
    month: str
    creates: tuple[Creation, ...]  # the document first, then ChargeItems
    retirements: tuple[Retirement, ...]  # ChargeItems to entered-in-error, documents to superseded
    manual: tuple[ManualCorrection, ...]  # billed ChargeItems the run would change: a person must
    kept: tuple[str, ...]  # references of our resources found unchanged
    document_reference: str  # where the month's log is: `DocumentReference/id` or the new one's urn:uuid
    write_key_system: str  # CANON/write-key, to look writes up after an unknown outcome

    @property
    def unchanged(self) -> bool:
        return not self.creates and not self.retirements

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Transaction entries in write order: creates (document first), then retirements."""
        return [c.entry for c in self.creates] + [r.entry for r in self.retirements]

    def describe(self) -> list[str]:
        """One line per write (and per manual correction), for --dry-run and the run report."""
        lines = []
        for c in self.creates:
            what = (
                f"ChargeItem {c.code} x{c.units} ({c.status})"
                if c.resource_type == "ChargeItem"
                else c.resource_type
            )
            lines.append(f"create {what} [{c.key}]: {c.reason}")
        for r in self.retirements:
            lines.append(f"set {r.reference} to {r.new_status}: {r.reason}")
        for m in self.manual:
            lines.append(f"manual correction of ChargeItem/{m.charge_id} ({m.code}): {m.message}")
        return lines

    def export_resources(self) -> list[dict[str, Any]]:
        """The resources this plan creates, references between them by id (for an export file)."""
        ids = {
            c.entry["fullUrl"]: str(uuid.uuid5(uuid.NAMESPACE_URL, c.entry["fullUrl"])) for c in self.creates
        }
        refs = {url: f"{c.resource_type}/{ids[url]}" for c in self.creates if (url := c.entry["fullUrl"])}
        out = []
        for creation in self.creates:
            resource = _replace_refs(copy.deepcopy(creation.entry["resource"]), refs)
            resource["id"] = ids[creation.entry["fullUrl"]]
            out.append(resource)
        return out


def plan_month_writes(result: MonthResult, fetch: PatientFetch, settings: WriteSettings) -> WritePlan:
    """Decide the month's writes from the result and what was read (no request is made)."""
    return _Planner(result, fetch, settings).plan()


class _Planner:
    def __init__(self, result: MonthResult, fetch: PatientFetch, settings: WriteSettings) -> None:
        self.result = result
        self.settings = settings
        self.pid = result.patient_id
        wk = settings.write_key_system
        self.charges = [c for c in fetch.charge_resources if c.get("resourceType") == "ChargeItem"]
        self.held_charge_keys = {k for c in self.charges if (k := _value(c, wk))}
        self.ours = [c for c in self.charges if self._ours_this_month(c)]
        self.documents = [
            d
            for d in fetch.document_resources
            if d.get("resourceType") == "DocumentReference"
            and _value(d, settings.monthly_log_system) == f"{self.pid}|{result.month}"
        ]
        self.held_doc_keys = {k for d in self.documents if (k := _value(d, wk))}
        self.creates: list[Creation] = []
        self.retirements: list[Retirement] = []
        self.manual: list[ManualCorrection] = []
        self.kept: list[str] = []

    def _ours_this_month(self, charge: Mapping[str, Any]) -> bool:
        parsed = parse_charge_key(_value(charge, self.settings.charge_key_system))
        return parsed is not None and parsed[0] == self.pid and parsed[3] == self.result.month

    # -- the document ------------------------------------------------------------------------------

    def _document(self) -> str:
        """The reference new ChargeItems use: the unchanged current document, or the new one's urn:uuid."""
        wk = self.settings.write_key_system
        base = document_write_key(self.result, self.settings)
        current = [d for d in self.documents if d.get("status") == "current"]
        chain = _chain(base, len(self.documents) + 1)
        match = next((d for d in current if _value(d, wk) in chain), None)
        if match is not None:
            self.kept.append(f"DocumentReference/{match.get('id')}")
            for other in current:
                if other is not match:
                    self._retire_document(other, f"a newer monthly log (DocumentReference/{match.get('id')})")
            return f"DocumentReference/{match.get('id')}"
        newest = max(current, key=_last_updated, default=None)
        document = monthly_document(self.result, self.settings, replaces=newest.get("id") if newest else None)
        others = [d for d in current if d is not newest and d.get("id")]
        if others:
            document["relatesTo"] = [
                *document.get("relatesTo", []),
                *(
                    {"code": "replaces", "target": {"reference": f"DocumentReference/{d['id']}"}}
                    for d in sorted(others, key=lambda d: str(d["id"]))
                ),
            ]
        key = _fresh(base, self.held_doc_keys)
        _set_value(document, wk, key)
        entry = create_entry(document, wk)
        reason = "the month's log changed" if current else "the month's first log"
        self.creates.append(
            Creation("DocumentReference", f"{self.pid}|{self.result.month}", key, reason, entry=entry)
        )
        for old in current:
            self._retire_document(old, "replaced by the new monthly log")
        return str(entry["fullUrl"])

    def _retire_document(self, document: Mapping[str, Any], reason: str) -> None:
        if not document.get("id"):
            return
        entry = status_change_entry(document, "superseded", if_match=_version(document))
        self.retirements.append(
            Retirement(f"DocumentReference/{document['id']}", "superseded", reason, entry=entry)
        )

    # -- the ChargeItems ---------------------------------------------------------------------------

    def plan(self) -> WritePlan:
        doc_ref = self._document()
        wk = self.settings.write_key_system
        ck = self.settings.charge_key_system
        matched: set[int] = set()
        for line in self.result.codes:
            base = charge_write_key(line, self.settings)
            same_key = [c for c in self.ours if _value(c, ck) == line.charge_key]
            chain = _chain(base, len(same_key) + 1)
            keep = next(
                (c for c in same_key if c.get("status") != "entered-in-error" and _value(c, wk) in chain),
                None,
            )
            if keep is not None:
                matched.add(id(keep))
                self.kept.append(f"ChargeItem/{keep.get('id')}")
                continue
            billed = [c for c in same_key if c.get("status") == BILLED]
            if billed:
                for charge in billed:
                    matched.add(id(charge))
                    self.manual.append(
                        ManualCorrection(
                            charge.get("id"),
                            line.code,
                            f"billed ({_units(charge)} unit(s)) but this run computes it differently "
                            f"({line.units} unit(s), {line.status.value}): correct it by hand "
                            "(nothing written)",
                        )
                    )
                continue
            self._create_charge(
                line, doc_ref, replacing=[c for c in same_key if c.get("status") in RETIRABLE]
            )
        for charge in self.ours:
            if id(charge) in matched:
                continue
            status = charge.get("status")
            parsed = parse_charge_key(_value(charge, ck))
            code = parsed[1] if parsed else None
            still = [line for line in self.result.codes if line.charge_key == _value(charge, ck)]
            if status in RETIRABLE:
                reason = (
                    f"replaced: now {still[0].units} unit(s), {still[0].status.value}"
                    if still
                    else "no longer justified by this month's data"
                )
                entry = status_change_entry(charge, "entered-in-error", if_match=_version(charge))
                self.retirements.append(
                    Retirement(f"ChargeItem/{charge.get('id')}", "entered-in-error", reason, code, entry)
                )
            elif status == BILLED:
                self.manual.append(
                    ManualCorrection(
                        charge.get("id"),
                        code or "?",
                        "billed, but this run no longer justifies it: correct it by hand (nothing written)",
                    )
                )
        return WritePlan(
            patient_id=self.pid,
            month=str(self.result.month),
            creates=tuple(self.creates),
            retirements=tuple(self.retirements),
            manual=tuple(self.manual),
            kept=tuple(self.kept),
            document_reference=doc_ref,
            write_key_system=wk,
        )

    def _create_charge(self, line: CodeLine, doc_ref: str, replacing: Sequence[Mapping[str, Any]]) -> None:
        wk = self.settings.write_key_system
        resource = charge_item(line, self.result, self.settings, doc_ref)
        key = _fresh(charge_write_key(line, self.settings), self.held_charge_keys)
        self.held_charge_keys.add(key)
        _set_value(resource, wk, key)
        entry = create_entry(resource, wk)
        if replacing:
            reason = "replaces " + ", ".join(f"ChargeItem/{c.get('id')}" for c in replacing)
        else:
            reason = "new code for this period"
        self.creates.append(
            Creation(
                "ChargeItem",
                line.charge_key,
                key,
                reason,
                code=line.code,
                units=line.units,
                status=line.status.value,
                entry=entry,
            )
        )


# --------------------------------------------------------------------------------------------------
# Applying it
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteResult:
    """What `apply_plan` did for one patient.

    status: `unchanged` (nothing to write), `written`, `dry-run`, `refused` (the server will not take the
    writes: the caller exports `unwritten`) or `failed` (a conflict, or the server kept failing).
    """

    patient_id: str
    status: str
    created: tuple[str, ...] = ()  # "ChargeItem/123" as the server named them
    retired: tuple[str, ...] = ()
    requests: int = 0  # write requests (transactions) plus look-ups after unknown outcomes
    message: str = ""
    unwritten: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)
    error: FhirError | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in ("unchanged", "written", "dry-run")


class WriteRefused(Exception):
    """A 4xx on a write: the server will not take these resources (capability, validation, permission)."""


def bundle_limit(limits: ServerLimits, entries: Sequence[Mapping[str, Any]]) -> int | None:
    """The most entries one transaction may hold on this server, for these entries."""
    caps = [limits.max_transaction_entries]
    if any("ifNoneExist" in e.get("request", {}) for e in entries):
        caps.append(limits.max_conditional_transaction_entries)
    known = [c for c in caps if c]
    return min(known) if known else None


def plan_bundles(plan: WritePlan, limits: ServerLimits) -> list[dict[str, Any]]:
    """The plan as transaction Bundles, split to the server's limits, in write order."""
    entries = plan.entries
    if not entries:
        return []
    limit = bundle_limit(limits, entries)
    if limit is None or len(entries) <= limit:
        return [build_transaction(entries)]
    return split_transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries}, limit)


def apply_plan(client: FhirClient, plan: WritePlan, *, dry_run: bool = False) -> WriteResult:
    """Write the plan: one transaction (or several, split to the server's limits) per patient and month.

    Never raises for a server's answer: a refusal (4xx other than 409/412/429) gives status `refused` with the
    resources not written, anything else that stops the writes status `failed`.
    """
    if plan.unchanged:
        return WriteResult(plan.patient_id, "unchanged")
    if dry_run:
        return WriteResult(plan.patient_id, "dry-run", message="; ".join(plan.describe()))
    writer = _Writer(client, plan.write_key_system)
    try:
        limits = client.server_limits()
        if limits.transaction:
            for bundle in plan_bundles(plan, limits):
                writer.transaction(bundle)
        else:
            writer.one_by_one(plan)
    except WriteRefused as exc:
        written = set(writer.created_keys)
        left = tuple(
            r
            for c, r in zip(plan.creates, plan.export_resources(), strict=True)
            if c.write_key not in written
        )
        cause = exc.__cause__ if isinstance(exc.__cause__, FhirError) else None
        return WriteResult(
            plan.patient_id,
            "refused",
            tuple(writer.created),
            tuple(writer.retired),
            writer.requests,
            str(exc),
            left,
            cause,
        )
    except FhirError as exc:
        return WriteResult(
            plan.patient_id,
            "failed",
            tuple(writer.created),
            tuple(writer.retired),
            writer.requests,
            _failure_text(exc),
            error=exc,
        )
    return WriteResult(
        plan.patient_id, "written", tuple(writer.created), tuple(writer.retired), writer.requests
    )


def _failure_text(exc: FhirError) -> str:
    if isinstance(exc, PreconditionFailedError | ConflictError):
        return f"{exc} (changed on the server during the run: run the month again)"
    return str(exc)


class _Writer:
    def __init__(self, client: FhirClient, write_key_system: str) -> None:
        self.client = client
        self.wk = write_key_system
        self.requests = 0
        self.created: list[str] = []
        self.retired: list[str] = []
        self.created_keys: list[str] = []

    # -- transactions --------------------------------------------------------------------------------

    def transaction(self, bundle: dict[str, Any]) -> None:
        entries = list(bundle.get("entry") or [])
        for attempt in range(MAX_RESENDS + 1):
            try:
                self.requests += 1
                answer = self.client.transaction(bundle)
            except OutcomeUnknownError:
                if attempt == MAX_RESENDS:
                    raise
                log.warning("a transaction's outcome is unknown; looking its writes up before sending again")
                remaining = self._not_applied(entries)
                if remaining is None:
                    self._done(entries, None)
                    return
                entries = remaining
                bundle = build_transaction(entries)
                continue
            except FhirError as exc:
                _raise_refusal(exc)
                raise
            responses = entry_responses(answer)
            bad = [r for r in responses if not r.ok]
            if bad or len(responses) != len(entries):
                raise FhirError(
                    "the transaction answer does not confirm every entry",
                    status=bad[0].status if bad else None,
                    method="POST",
                    url=self.client.base_url,
                )
            self._done(entries, [(r.status, r.location) for r in responses])
            return

    def _done(
        self, entries: Sequence[Mapping[str, Any]], answers: Sequence[tuple[int, str | None]] | None
    ) -> None:
        """Record what a transaction did. `answers`: (status, location) per entry; None after a look-up found
        everything applied. A conditional create answered 200 matched a resource already there."""
        for position, entry in enumerate(entries):
            resource = entry["resource"]
            request = entry["request"]
            status, location = answers[position] if answers else (201, None)
            if request["method"] == "POST":
                key = _value(resource, self.wk) or ""
                if key in self.created_keys:
                    continue  # the document repeated in a later bundle of a split transaction
                self.created_keys.append(key)
                if status == 201 or answers is None:
                    self.created.append(_short_location(location) or f"{resource['resourceType']} [{key}]")
            else:
                self.retired.append(str(request["url"]))

    def _not_applied(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
        """After an unknown outcome: the entries the server does not hold yet (None: all were applied).

        Creates are found by their write key; a retirement is applied when the resource has its new status.
        Creates are kept in a resend even when found (they are conditional, and ChargeItems may reference the
        document by its urn:uuid), so a resend is needed only for what is missing.
        """
        wk = self.wk
        creates = [e for e in entries if e["request"]["method"] == "POST"]
        by_type: dict[str, list[str]] = {}
        for entry in creates:
            by_type.setdefault(entry["resource"]["resourceType"], []).append(
                _value(entry["resource"], wk) or ""
            )
        found: set[str] = set()
        for type_, keys in by_type.items():
            self.requests += 1
            params = [("identifier", ",".join(token(wk, k) for k in keys)), ("_count", str(len(keys) + 10))]
            for resource in self.client.search(type_, params):
                found |= {k for k in keys if _value(resource, wk) == k}
        missing_creates = [e for e in creates if _value(e["resource"], wk) not in found]
        pending_retirements: list[dict[str, Any]] = []
        for entry in entries:
            if entry["request"]["method"] != "PUT":
                continue
            type_, _, id_ = str(entry["request"]["url"]).partition("/")
            self.requests += 1
            now = self.client.read(type_, id_)
            if now.get("status") != entry["resource"].get("status"):
                fresh = copy.deepcopy(entry)
                version = _version(now)
                if version:
                    fresh["request"]["ifMatch"] = f'W/"{version}"'
                pending_retirements.append(dict(fresh))
        if not missing_creates and not pending_retirements:
            return None
        return [copy.deepcopy(dict(e)) for e in creates] + pending_retirements

    # -- servers without transactions -------------------------------------------------------------

    def one_by_one(self, plan: WritePlan) -> None:
        """Creates (document first, so ChargeItems can name its id), then retirements, one request each."""
        wk = self.wk
        urls: dict[str, str] = {}
        for creation in plan.creates:
            resource = _replace_refs(copy.deepcopy(creation.entry["resource"]), urls)
            query = creation.entry["request"]["ifNoneExist"]
            outcome = self._create(resource, query, wk, creation.write_key)
            if outcome is not None:
                urls[creation.entry["fullUrl"]] = outcome
            self.created_keys.append(creation.write_key)
            self.created.append(
                urls.get(creation.entry["fullUrl"], f"{creation.resource_type} [{creation.key}]")
            )
        for retirement in plan.retirements:
            resource = retirement.entry["resource"]
            try:
                self.requests += 1
                self.client.update(resource, if_match=retirement.entry["request"].get("ifMatch"))
            except OutcomeUnknownError:
                self.requests += 1
                current = self.client.read(resource["resourceType"], resource["id"])
                if current.get("status") != resource.get("status"):
                    raise
            except FhirError as exc:
                _raise_refusal(exc)
                raise
            self.retired.append(retirement.reference)

    def _create(self, resource: dict[str, Any], query: str, wk: str, key: str) -> str | None:
        type_ = resource["resourceType"]
        for attempt in range(MAX_RESENDS + 1):
            try:
                self.requests += 1
                outcome = self.client.create(resource, if_none_exist=query)
                return f"{outcome.resource_type or type_}/{outcome.id}" if outcome.id else None
            except OutcomeUnknownError:
                self.requests += 1
                found = self.client.find_by_identifier(type_, wk, key)
                if found:
                    return f"{type_}/{found[0].get('id')}"
                if attempt == MAX_RESENDS:
                    raise
            except FhirError as exc:
                _raise_refusal(exc)
                raise
        return None


def _raise_refusal(exc: FhirError) -> None:
    """A 4xx the server will not change its mind about is a refusal (409/412 are conflicts, 429 a delay)."""
    if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (409, 412, 429):
        raise WriteRefused(f"the server refused the write: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _value(resource: Mapping[str, Any], system: str) -> str | None:
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, Mapping) and identifier.get("system") == system:
            value = identifier.get("value")
            return value if isinstance(value, str) else None
    return None


def _set_value(resource: dict[str, Any], system: str, value: str) -> None:
    for identifier in resource.get("identifier") or ():
        if identifier.get("system") == system:
            identifier["value"] = value
            return
    raise ValueError(f"{resource.get('resourceType')} has no identifier with system {system}")


def _link(base: str, n: int) -> str:
    """Link `n` of the chain of write keys starting at `base` (link 0 is `base` itself)."""
    return base if n == 0 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"{base}|{n}"))


def _chain(base: str, length: int) -> list[str]:
    """The write keys a resource with write key `base` may carry: `base`, then uuid5(base|1), ..."""
    return [_link(base, n) for n in range(length + 1)]


def _fresh(base: str, held: set[str]) -> str:
    """The first link of `base`'s chain no resource read carries (see the module docstring)."""
    for n in range(_CHAIN_LIMIT):
        candidate = _link(base, n)
        if candidate not in held:
            return candidate
    raise ValueError("no free write key")  # a thousand retired copies of one charge: not a real case


def _version(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) and version else None


def _last_updated(resource: Mapping[str, Any]) -> str:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, Mapping) else None
    return f"{value or ''}|{resource.get('date') or ''}|{resource.get('id') or ''}"


def _units(charge: Mapping[str, Any]) -> str:
    quantity = charge.get("quantity")
    value = quantity.get("value") if isinstance(quantity, Mapping) else None
    return str(value) if value is not None else "?"


def _short_location(location: str | None) -> str | None:
    if not location:
        return None
    parts = location.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def _replace_refs(value: Any, mapping: Mapping[str, str]) -> Any:
    """References found in `mapping` (urn:uuid fullUrls) replaced by its values (`Type/id`), in place."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref in mapping:
            value["reference"] = mapping[ref]
        for item in value.values():
            _replace_refs(item, mapping)
    elif isinstance(value, list):
        for item in value:
            _replace_refs(item, mapping)
    return value
