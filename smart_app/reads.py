"""Month-end reads: one patient's month from a live FHIR server in a few round trips.

What is read, per patient (contract section 1), and how the searches are bounded:

1. One batch: `Patient/{id}`, the patient's Consents (status active or inactive), Devices, RelatedPersons
   (caregivers), ChargeItems (all of them: prior 99453 and RTM charges and our own earlier writes) and the
   month's monthly-log DocumentReferences (identifier system `CANON/monthly-log`, every status; narrowed with
   `period` containing mid-month when the CapabilityStatement lists that parameter).
2. One batch, bounded by the consent episodes read in step 1:
   - Observations dated in [R0, month end), where R0 is local midnight 29 days before the 1st: every 30-day
     window that ends in, or overlaps, the month lies inside it. Nothing after the month's end is read, so a
     month's result does not change when next month's data arrives.
   - Communications with `sent` in [1st - 1 day, month end + 7 days) (a contact belongs to the month by its
     start; `sent` may be written a little later), with `_include` of their Encounter (and sender/recipient
     where the server lists those includes). Communications without `sent` are asked for with
     `sent:missing=true`; a server that refuses the modifier gets a note in the run report, not a failure.
   - The anchor scan, for each episode that began before R0: Observations from the episode's start up to R0,
     oldest first (`_sort=date`). The windows are anchored at the episode's first qualifying reading and 99453
     goes with the earliest window reaching the policy's minimum, so the scan reads just far enough to find
     that window (further pages only when the first does not settle it) instead of years of readings.
     Readings between the settled setup window and R0 are never needed: their windows end before the month.
3. Only when needed: the Devices and Encounters the Communications name but the server did not include
   (an AI calling system is a Device without a patient), in one `_id` search each.

Typically 2 requests per patient. Every date bound carries an explicit offset in the practice time zone (the
reference server reads offset-less values as UTC). Batches are POSTed as safe-to-repeat reads (all entries are
GETs); a server without batch gets the same searches one by one. A search embedded in a batch that the server
truncated (a next link, or `total` above what it returned) is run again as a normal paged search.

Limits (documented in docs/month-end.md): Observations without an effective time and Communications without
`sent` on a server that cannot search for a missing `sent` are not read; copies of one reading (same
identifier) more than a window apart are not merged across the gap the anchor scan skips.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from billing.consent import Episode, episodes
from billing.model import PatientRecords
from billing.periods import YearMonth, local_midnight, zone
from billing.result import RPM_CODES
from billing.supply import episode_windows, qualify_readings
from fhir_mapping.canon import CANON
from fhir_mapping.inbound import InboundCollector, SkippedResource
from smart_app.errors import UsageError
from smart_app.fhir_client import FhirClient, entry_responses
from smart_app.http import FhirError, NotFoundError, error_class_for, parse_operation_outcome
from smart_app.pipeline import RunOptions

PAGE_SIZE = 1000  # the most both test servers hand out per page; fewer round trips
SCAN_PAGE_SIZE = 200  # the anchor scan usually settles on its first page
SENT_BEFORE = timedelta(days=1)
SENT_AFTER = timedelta(days=7)
WINDOW_LEAD = timedelta(days=29)  # a window overlapping the month starts at most 29 days before the 1st
OWN_RETIRABLE = frozenset({"planned", "billable"})

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_TAIL = re.compile(
    r"(?:^|/)(Device|Encounter|Practitioner|PractitionerRole)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
_NAMES_ONLY = frozenset({"Practitioner", "PractitionerRole"})  # read for names in the log: optional


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientFetch:
    """One patient's month as read from the server, mapped and raw."""

    records: PatientRecords
    skipped: list[SkippedResource]
    charge_resources: list[dict[str, Any]]  # the patient's ChargeItems as read (for write-back diffs)
    document_resources: list[dict[str, Any]]  # the patient's monthly-log DocumentReferences for the month
    requests: int  # read requests made (a batch is one; each page of a paged search is one)
    notes: tuple[str, ...] = ()  # what could not be read and why (never patient data)


def fetch_patient_month(
    client: FhirClient, patient_id: str, options: RunOptions, *, canon: str = CANON
) -> PatientFetch:
    """Read what `options.month` needs for one patient. Raises `FhirError` (the patient then fails)."""
    if not _ID_RE.fullmatch(patient_id):
        raise UsageError(f"not a valid patient id: {patient_id!r}")
    return _PatientReader(client, patient_id, options, canon.rstrip("/")).run()


def population(
    client: FhirClient,
    *,
    group: str | None,
    patients: Sequence[str],
    options: RunOptions | None = None,
    canon: str = CANON,
) -> list[str]:
    """The patient ids a run covers: the given ids, the members of a Group, or else every patient with an RPM
    Consent (when `options` is given: only those whose consent episodes reach the month or its windows)."""
    if group and patients:
        raise UsageError("give either --group or --patient, not both")
    if patients:
        bad = [p for p in patients if not _ID_RE.fullmatch(p)]
        if bad:
            raise UsageError(f"not a valid patient id: {bad[0]!r}")
        return list(dict.fromkeys(patients))
    if group:
        if not _ID_RE.fullmatch(group):
            raise UsageError(f"not a valid Group id: {group!r}")
        return _group_members(client, group)
    return _consented_patients(client, options, canon)


# --------------------------------------------------------------------------------------------------
# Searches, batched when the server can
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """One search (or, with `read_id`, one read) to run."""

    type_: str
    params: tuple[tuple[str, str], ...] = ()
    read_id: str | None = None
    optional: bool = False  # a refusal (4xx) becomes a note instead of failing the patient
    first_page: bool = False  # run on its own, read only the first page (the caller pages on if needed)

    def url(self) -> str:
        if self.read_id is not None:
            return f"{self.type_}/{self.read_id}"
        return f"{self.type_}?{urlencode(self.params)}"


@dataclass
class SearchResult:
    resources: list[dict[str, Any]] = field(default_factory=list)  # matches and includes
    complete: bool = True  # False: only a first page was read
    refused: str | None = None  # an optional search the server refused, with its words


@dataclass
class _Traits:
    """What this run learnt about the server (from its CapabilityStatement, or from a refusal)."""

    batch: bool
    includes: Mapping[str, frozenset[str]]
    params: Mapping[str, frozenset[str]]
    missing_modifier: bool = True
    # Resources that are nobody's patient data, shared by every patient of the run: staff (for names in the
    # log) and Devices without a patient (AI calling systems). Keyed "Type/id"; read once per run.
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, reference: str) -> dict[str, Any] | None:
        with self.lock:
            return self.shared.get(reference)

    def remember(self, resource: Mapping[str, Any]) -> None:
        type_, ident = resource.get("resourceType"), resource.get("id")
        shared = type_ in ("Practitioner", "PractitionerRole") or (
            type_ == "Device" and not resource.get("patient")
        )
        if shared and isinstance(ident, str):
            with self.lock:
                self.shared[f"{type_}/{ident}"] = dict(resource)

    def can_include(self, type_: str, name: str) -> bool:
        have = self.includes.get(type_, frozenset())
        return "*" in have or f"{type_}:{name}" in have

    def has_param(self, type_: str, name: str) -> bool:
        return name in self.params.get(type_, frozenset())


_TRAITS: weakref.WeakKeyDictionary[FhirClient, _Traits] = weakref.WeakKeyDictionary()
_TRAITS_LOCK = threading.Lock()


def server_traits(client: FhirClient) -> _Traits:
    """Batch, `_include` values and search parameters from the CapabilityStatement (once per client)."""
    with _TRAITS_LOCK:
        traits = _TRAITS.get(client)
        if traits is None:
            capabilities = client.capabilities()
            rests = [r for r in capabilities.get("rest") or () if isinstance(r, Mapping)]
            rest = next((r for r in rests if r.get("mode") == "server"), rests[0] if rests else {})
            includes: dict[str, frozenset[str]] = {}
            params: dict[str, frozenset[str]] = {}
            for resource in rest.get("resource") or ():
                if not isinstance(resource, Mapping) or not isinstance(resource.get("type"), str):
                    continue
                type_ = resource["type"]
                includes[type_] = frozenset(str(i) for i in resource.get("searchInclude") or ())
                params[type_] = frozenset(
                    str(p.get("name")) for p in resource.get("searchParam") or () if isinstance(p, Mapping)
                )
            traits = _Traits(batch=client.supports(None, "batch"), includes=includes, params=params)
            _TRAITS[client] = traits
        return traits


class SearchRunner:
    """Runs searches for one patient (one thread), counting the requests it makes."""

    def __init__(self, client: FhirClient, traits: _Traits) -> None:
        self.client = client
        self.traits = traits
        self.requests = 0

    def run(self, searches: Sequence[Search]) -> list[SearchResult]:
        if self.traits.batch and len(searches) > 1:
            return self._batch(searches)
        return [self._one(s) for s in searches]

    def pages(self, search: Search) -> Iterable[list[dict[str, Any]]]:
        """A search's pages one by one (the caller may stop early), each counted as a request."""
        for page in self.client.search_pages(search.type_, list(search.params)):
            self.requests += 1
            yield [*page.matches, *page.included]

    def _one(self, search: Search) -> SearchResult:
        try:
            if search.read_id is not None:
                self.requests += 1
                return SearchResult([self.client.read(search.type_, search.read_id)])
            resources: list[dict[str, Any]] = []
            for page in self.client.search_pages(search.type_, list(search.params)):
                self.requests += 1
                resources.extend([*page.matches, *page.included])
                if search.first_page:
                    return SearchResult(resources, complete=not _has_next(page.bundle))
            return SearchResult(resources)
        except FhirError as exc:
            if search.optional and exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                return SearchResult(refused=exc.message)
            raise

    def _batch(self, searches: Sequence[Search]) -> list[SearchResult]:
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": s.url()}} for s in searches],
        }
        answer = self.client.batch(bundle)  # all GETs: retried like reads after a timeout or a 5xx
        self.requests += 1
        responses = entry_responses(answer)
        if len(responses) != len(searches):
            raise FhirError(
                f"the batch answer has {len(responses)} entries for {len(searches)} requests", method="POST"
            )
        results = []
        for search, entry in zip(searches, responses, strict=True):
            if not entry.ok:
                message = "; ".join(i.text for i in entry.issues if i.text) or f"HTTP {entry.status}"
                if search.optional and 400 <= entry.status < 500 and entry.status != 429:
                    results.append(SearchResult(refused=message))
                    continue
                cls = error_class_for(entry.status) if entry.status else FhirError
                raise cls(
                    message, status=entry.status or None, issues=entry.issues, method="GET", url=search.url()
                )
            results.append(self._entry_result(search, entry.resource))
        return results

    def _entry_result(self, search: Search, resource: dict[str, Any] | None) -> SearchResult:
        if search.read_id is not None:
            if resource is None or resource.get("resourceType") != search.type_:
                raise FhirError(f"the batch did not return {search.url()}", method="GET", url=search.url())
            return SearchResult([resource])
        if resource is None or resource.get("resourceType") != "Bundle":
            raise FhirError(f"the batch did not return a searchset for {search.type_}", method="GET")
        found: list[dict[str, Any]] = []
        matches = 0
        for item in resource.get("entry") or ():
            res = item.get("resource") if isinstance(item, Mapping) else None
            if not isinstance(res, dict):
                continue
            mode = (item.get("search") or {}).get("mode") if isinstance(item.get("search"), Mapping) else None
            if mode == "outcome" or res.get("resourceType") == "OperationOutcome":
                for issue in parse_operation_outcome(res):
                    if issue.severity in ("error", "fatal"):
                        raise FhirError(issue.text or "search refused", method="GET", url=search.url())
                continue
            if mode != "include":
                matches += 1
            found.append(res)
        total = resource.get("total")
        truncated = _has_next(resource) or (isinstance(total, int) and total > matches)
        return SearchResult(found, complete=not truncated)

    def complete(self, search: Search, result: SearchResult) -> SearchResult:
        """The whole result of a search a batch returned only the first page of."""
        if result.complete or result.refused is not None:
            return result
        return self._one(Search(search.type_, search.params, search.read_id, search.optional))


# --------------------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------------------


class _PatientReader:
    def __init__(self, client: FhirClient, patient_id: str, options: RunOptions, canon: str) -> None:
        self.client = client
        self.pid = patient_id
        self.ref = f"Patient/{patient_id}"
        self.options = options
        self.canon = canon
        self.tz = zone(options.timezone)
        self.traits = server_traits(client)
        self.runner = SearchRunner(client, self.traits)
        self.collector = InboundCollector(timezone=options.timezone, canon=canon)
        self.notes: list[str] = []
        self.seen: set[tuple[str, str]] = set()
        self.communications: list[dict[str, Any]] = []
        self.observations: list[dict[str, Any]] = []
        self.episodes: tuple[Episode, ...] = ()
        month = options.month
        self.month_start = local_midnight(month.first_day, self.tz)
        self.month_end = local_midnight(month.next().first_day, self.tz)
        self.range_start = local_midnight(month.first_day - WINDOW_LEAD, self.tz)

    def run(self) -> PatientFetch:
        charges, documents = self._first_batch()
        # Consents are all read in step 1, so the episodes do not change after this.
        self.episodes = episodes(self._records().consents)
        self._second_batch()
        self._unresolved()
        all_records, skipped = self.collector.finish()
        return PatientFetch(
            records=all_records.get(self.pid) or PatientRecords(patient_id=self.pid),
            skipped=skipped,
            charge_resources=charges,
            document_resources=documents,
            requests=self.runner.requests,
            notes=tuple(self.notes),
        )

    # -- step 1 ------------------------------------------------------------------------------------

    def _first_batch(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        page = ("_count", str(PAGE_SIZE))
        doc_params: list[tuple[str, str]] = [
            ("subject", self.ref),
            ("identifier", f"{self.canon}/monthly-log|"),
        ]
        if self.traits.has_param("DocumentReference", "period"):
            # Documents whose context.period contains mid-month: this month's log, every status.
            middle = (local_midnight(self.options.month.first_day + timedelta(days=14), self.tz)).isoformat()
            doc_params += [("period", f"ge{middle}"), ("period", f"le{middle}")]
        searches = [
            Search("Patient", read_id=self.pid),
            Search("Consent", (("patient", self.ref), ("status", "active,inactive"), page)),
            Search("Device", (("patient", self.ref), page)),
            Search("RelatedPerson", (("patient", self.ref), page)),
            Search("ChargeItem", (("subject", self.ref), page)),
            Search("DocumentReference", (*doc_params, page)),
        ]
        results = self._run(searches)
        patient, consents, devices, related, charges, documents = results
        for resource in [*patient, *consents, *devices, *related]:
            self._add(resource)
        charge_list = [r for r in charges if r.get("resourceType") == "ChargeItem"]
        for charge in charge_list:
            if not self._own_charge_of_month(charge):
                self._add(charge)
        key = f"{self.pid}|{self.options.month}"
        doc_list = [
            r
            for r in documents
            if r.get("resourceType") == "DocumentReference"
            and _has_identifier(r, f"{self.canon}/monthly-log", key)
        ]
        return charge_list, doc_list

    def _own_charge_of_month(self, charge: Mapping[str, Any]) -> bool:
        """Our own planned/billable ChargeItem for this month: the run recomputes it, so the engine must not
        read it as a prior charge (a 99453 of an earlier preview would otherwise block its replacement until a
        second run). Billed ones stay: they are real."""
        if charge.get("status") not in OWN_RETIRABLE:
            return False
        parsed = parse_charge_key(_identifier_value(charge, f"{self.canon}/charge-key"))
        return parsed is not None and parsed[0] == self.pid and parsed[3] == self.options.month

    # -- step 2 ------------------------------------------------------------------------------------

    def _second_batch(self) -> None:
        page = ("_count", str(PAGE_SIZE))
        month_obs = Search(
            "Observation",
            (
                ("subject", self.ref),
                ("date", f"ge{self.range_start.isoformat()}"),
                ("date", f"lt{self.month_end.isoformat()}"),
                page,
            ),
        )
        includes = tuple(
            ("_include", f"Communication:{name}")
            for name in ("encounter", "sender", "recipient")
            if self.traits.can_include("Communication", name)
        )
        sent = Search(
            "Communication",
            (
                ("subject", self.ref),
                ("sent", f"ge{(self.month_start - SENT_BEFORE).isoformat()}"),
                ("sent", f"lt{(self.month_end + SENT_AFTER).isoformat()}"),
                *includes,
                page,
            ),
        )
        searches = [month_obs, sent]
        if self.traits.missing_modifier:
            no_sent = (("subject", self.ref), ("sent:missing", "true"), *includes, page)
            searches.append(Search("Communication", no_sent, optional=True))
        scans = [
            (episode, self._scan(episode)) for episode in self.episodes if episode.start < self.range_start
        ]
        results = self.runner.run([*searches, *(scan for _, scan in scans)])
        for search, result in zip(searches, results[: len(searches)], strict=True):
            if result.refused is not None:
                self.traits.missing_modifier = False
                self.notes.append(
                    "the server cannot search Communications without 'sent' "
                    f"({_short(result.refused)}): those are not read"
                )
                continue
            for resource in self.runner.complete(search, result).resources:
                self._add(resource)
        for (episode, scan), result in zip(scans, results[len(searches) :], strict=True):
            for resource in result.resources:
                self._add(resource)
            if not result.complete and not self._setup_settled(episode):
                self._scan_on(episode, scan)

    def _scan(self, episode: Episode) -> Search:
        """The episode's readings before the month range, oldest first (first page only, see `_scan_on`)."""
        upper = self.range_start if episode.end is None else min(episode.end, self.range_start)
        params = (
            ("subject", self.ref),
            ("date", f"ge{episode.start.astimezone(self.tz).isoformat()}"),
            ("date", f"lt{upper.astimezone(self.tz).isoformat()}"),
            ("_sort", "date"),
            ("_count", str(SCAN_PAGE_SIZE)),
        )
        return Search("Observation", params, first_page=True)

    def _scan_on(self, episode: Episode, scan: Search) -> None:
        """Page on through the episode's readings, oldest first, until its 99453 window is known."""
        for number, page in enumerate(self.runner.pages(scan)):
            if number == 0:
                continue  # already read
            for resource in page:
                self._add(resource)
            if self._setup_settled(episode):
                return

    def _setup_settled(self, episode: Episode) -> bool:
        """Whether the scanned readings already hold a window of the episode reaching the 99453 minimum of the
        month it belongs to.

        Only the scanned readings (before R0) count here: they arrive oldest first with no gap, so every
        window before that one is complete and it is the setup window. (Readings of the month range lie
        beyond the part not scanned yet and would anchor the windows wrongly.)
        """
        records = self._records()
        scanned = [r for r in records.readings if r.time < self.range_start]
        qualifying, _ = qualify_readings(scanned, records.devices, self.episodes, self.tz)
        windows = episode_windows(
            episode, qualifying, records.devices, self.tz, self.options.month.last_day, self.options.as_of
        )
        return any(w.day_count >= self.options.policy_for(w.belongs_to).setup_min_days for w in windows)

    # -- step 3 ------------------------------------------------------------------------------------

    def _unresolved(self) -> None:
        """What the Communications and time entries name but was not read with them: Devices (an AI calling
        system is a Device without a patient), Encounters (a contact's duration) and staff (names for the
        log). Staff and patient-less Devices come from the run's shared cache when another patient read them.
        """
        wanted: dict[str, set[str]] = {"Device": set(), "Encounter": set(), "Practitioner": set()}
        wanted["PractitionerRole"] = set()
        for resource in [*self.communications, *self.observations]:
            refs = [resource.get("sender"), resource.get("encounter"), *(resource.get("recipient") or [])]
            if resource.get("resourceType") == "Observation":
                refs = list(resource.get("performer") or [])
            for ref in refs:
                text = ref.get("reference") if isinstance(ref, Mapping) else None
                match = _REF_TAIL.search(text) if isinstance(text, str) else None
                if not match or (match.group(1), match.group(2)) in self.seen:
                    continue
                cached = self.traits.cached(f"{match.group(1)}/{match.group(2)}")
                if cached is not None:
                    self._add(cached)
                else:
                    wanted[match.group(1)].add(match.group(2))
        searches = [
            Search(
                type_,
                (("_id", ",".join(sorted(ids))), ("_count", str(PAGE_SIZE))),
                optional=type_ in _NAMES_ONLY,
            )
            for type_, ids in wanted.items()
            if ids
        ]
        if not searches:
            return
        for search, result in zip(searches, self._run_results(searches), strict=True):
            if result.refused is not None:
                self.notes.append(
                    f"{search.type_} not readable ({_short(result.refused)}): no names in the log"
                )
            for resource in result.resources:
                self.traits.remember(resource)
                self._add(resource)

    # -- helpers -----------------------------------------------------------------------------------

    def _add(self, resource: dict[str, Any]) -> None:
        type_, ident = resource.get("resourceType"), resource.get("id")
        if isinstance(type_, str) and isinstance(ident, str):
            if (type_, ident) in self.seen:
                return
            self.seen.add((type_, ident))
        if type_ == "Communication":
            self.communications.append(resource)
        elif type_ == "Observation" and resource.get("performer"):
            self.observations.append(resource)
        else:
            self.traits.remember(resource)
        self.collector.add(resource)

    def _records(self) -> PatientRecords:
        records, _ = self.collector.finish()
        return records.get(self.pid) or PatientRecords(patient_id=self.pid)

    def _run_results(self, searches: Sequence[Search]) -> list[SearchResult]:
        return [self.runner.complete(s, r) for s, r in zip(searches, self.runner.run(searches), strict=True)]

    def _run(self, searches: Sequence[Search]) -> list[list[dict[str, Any]]]:
        try:
            return [r.resources for r in self._run_results(searches)]
        except NotFoundError as exc:
            if exc.url and exc.url.rstrip("/").endswith(f"Patient/{self.pid}"):
                raise NotFoundError(
                    f"Patient/{self.pid} is not on this server", status=exc.status, method="GET", url=exc.url
                ) from None
            raise


# --------------------------------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------------------------------


def _group_members(client: FhirClient, group: str) -> list[str]:
    resource = client.read("Group", group)
    members: list[str] = []
    for member in resource.get("member") or ():
        if not isinstance(member, Mapping) or member.get("inactive") is True:
            continue
        entity = member.get("entity")
        text = entity.get("reference") if isinstance(entity, Mapping) else None
        match = re.search(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})$", text) if isinstance(text, str) else None
        if match:
            members.append(match.group(1))
    return list(dict.fromkeys(members))


def _consented_patients(client: FhirClient, options: RunOptions | None, canon: str) -> list[str]:
    """Every patient with an RPM Consent (the contract's selection, applied locally: `provision.code` cannot
    be searched everywhere); with `options`, only those whose episodes reach the month's windows."""
    timezone = options.timezone if options is not None else "America/New_York"
    collector = InboundCollector(timezone=timezone, canon=canon)
    for resource in client.search("Consent", [("status", "active,inactive"), ("_count", str(PAGE_SIZE))]):
        if resource.get("resourceType") == "Consent":
            collector.add(resource)
    records, _ = collector.finish()
    chosen = []
    for pid, record in records.items():
        spans = episodes(record.consents)
        if not spans:
            continue
        if options is not None:
            tz = zone(options.timezone)
            lower = local_midnight(options.month.first_day - WINDOW_LEAD, tz)
            upper = local_midnight(options.month.next().first_day, tz)
            if not any(e.start < upper and (e.end is None or e.end > lower) for e in spans):
                continue
        chosen.append(pid)
    return sorted(chosen)


# --------------------------------------------------------------------------------------------------
# Small helpers shared with the write-back
# --------------------------------------------------------------------------------------------------


def parse_charge_key(value: str | None) -> tuple[str, str, str, YearMonth] | None:
    """(patient id, code, period start, month the charge belongs to) from `{patient}|{code}|{YYYY-MM-DD}`.

    Management codes belong to the calendar month they start; supply and set-up codes to the month their
    30-day window ends in. None for anything that is not an RPM charge key.
    """
    if not value:
        return None
    parts = value.split("|")
    if len(parts) != 3 or parts[1] not in RPM_CODES:
        return None
    try:
        start = datetime.strptime(parts[2], "%Y-%m-%d").date()
    except ValueError:
        return None
    if parts[1] in ("99470", "99457", "99458"):
        owner = YearMonth.of(start)
    else:
        owner = YearMonth.of(start + WINDOW_LEAD)
    return parts[0], parts[1], parts[2], owner


def _identifier_value(resource: Mapping[str, Any], system: str) -> str | None:
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, Mapping) and identifier.get("system") == system:
            value = identifier.get("value")
            if isinstance(value, str):
                return value
    return None


def _has_identifier(resource: Mapping[str, Any], system: str, value: str) -> bool:
    return any(
        isinstance(i, Mapping) and i.get("system") == system and i.get("value") == value
        for i in resource.get("identifier") or ()
    )


def _has_next(bundle: Mapping[str, Any]) -> bool:
    return any(
        isinstance(link, Mapping) and link.get("relation") == "next" for link in bundle.get("link") or ()
    )


def _short(text: str, limit: int = 120) -> str:
    text = json.dumps(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
