"""A small synchronous FHIR R4 REST client on requests, in the spirit of beda-software/fhir-py.

Resources are plain JSON dicts (tolerant inbound parsing is `fhir_mapping`'s job). Every call goes through
`smart_app.http.HttpTransport`: one retry policy, a timeout on every call, typed errors carrying the server's
OperationOutcome, 401 → re-authorize once.

Concurrency rule: ONE `FhirClient` per server, shared by N worker threads (e.g. a ThreadPoolExecutor with
`max_workers=N`), created with `pool_size=N` so the Session's connection pool holds N keep-alive connections.
The client keeps no per-request state; the capability cache and the auth token are guarded by locks.

Security: paging links are followed only on the base URL's origin (scheme, host, port), so the bearer token
is never sent to another server (SMART: apps SHOULD NOT follow references to other servers with the token).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from smart_app.auth import Auth, NoAuth
from smart_app.http import (
    DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
    FhirError,
    ForeignOriginError,
    HttpTransport,
    OutcomeIssue,
    RetryPolicy,
    Timeout,
    make_session,
    parse_operation_outcome,
)

log = logging.getLogger(__name__)

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LOCATION_RE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]*)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?/?$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}

SearchParams = Mapping[str, str | int | Sequence[str]] | Sequence[tuple[str, str]]

# Limits some servers enforce on Bundles but do not state in their CapabilityStatement, keyed on a substring
# of `CapabilityStatement.software.name`. Pass `limits=` to FhirClient for a server not listed here.
_KNOWN_LIMITS: dict[str, dict[str, int]] = {
    # ../shared/fhir-reference-server (Medplum MemoryRepository harness): "a transaction containing any
    # conditional entry may hold at most 8 entries"; "more than 50 PUT/PATCH entries ... gives 400".
    "rpm-harness": {"max_conditional_transaction_entries": 8, "max_transaction_entries": 50},
}


@dataclass(frozen=True)
class ServerLimits:
    """What we know of the server's Bundle limits. None: no known limit."""

    transaction: bool = False
    batch: bool = False
    max_transaction_entries: int | None = None
    max_conditional_transaction_entries: int | None = None  # a Bundle with any conditional entry


@dataclass(frozen=True)
class SearchPage:
    """One searchset page. `matches` are search.mode match (or unmarked), `included` are `_include`s."""

    url: str
    matches: tuple[dict[str, Any], ...]
    included: tuple[dict[str, Any], ...]
    total: int | None
    outcomes: tuple[OutcomeIssue, ...] = ()  # warnings the server put in the page (search.mode outcome)
    bundle: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class WriteOutcome:
    """The answer to a create or update. `resource` is None when the server sent no body (Epic does)."""

    status: int
    resource_type: str | None
    id: str | None
    version_id: str | None
    etag: str | None
    location: str | None
    resource: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def created(self) -> bool:
        """201: a new resource. 200 after If-None-Exist: one already matched (nothing written)."""
        return self.status == 201


@dataclass(frozen=True)
class EntryResponse:
    """One entry of a transaction-response or batch-response Bundle."""

    status: int
    location: str | None
    etag: str | None
    issues: tuple[OutcomeIssue, ...] = ()
    resource: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class FhirClient:
    """Read, search and write one FHIR server. See the module docstring for the threading rule."""

    def __init__(
        self,
        base_url: str,
        auth: Auth | None = None,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int = DEFAULT_POOL_SIZE,
        policy: RetryPolicy | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the FHIR base must be an absolute http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.auth = auth or NoAuth()
        self._own_session = session is None
        self.session = session or make_session(pool_size)
        self.transport = HttpTransport(
            auth=self.auth,
            session=self.session,
            timeout=timeout,
            policy=policy or RetryPolicy(max_attempts=max_attempts),
            sleep=sleep,
        )
        self._limits = limits
        self._capabilities: dict[str, Any] | None = None
        self._cap_lock = threading.Lock()

    # -- context manager -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r}, auth={self.auth!r})"

    # -- capabilities ----------------------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement (`GET [base]/metadata`), fetched once and cached."""
        with self._cap_lock:
            if self._capabilities is None:
                doc = self._json(self.transport.request("GET", f"{self.base_url}/metadata"), "metadata")
                if doc.get("resourceType") != "CapabilityStatement":
                    raise FhirError(
                        f"expected a CapabilityStatement, got {doc.get('resourceType')!r}",
                        method="GET",
                        url=f"{self.base_url}/metadata",
                    )
                self._capabilities = doc
            return self._capabilities

    def _rest(self) -> Mapping[str, Any]:
        rests = [r for r in self.capabilities().get("rest") or () if isinstance(r, Mapping)]
        return next((r for r in rests if r.get("mode") == "server"), rests[0] if rests else {})

    def supports(self, type_: str | None, interaction: str) -> bool:
        """Whether the CapabilityStatement lists `interaction` for `type_` (None: a system interaction such
        as `transaction` or `batch`). Also answers `conditional-create`, `conditional-update` and
        `conditional-delete` from the resource's flags. A hint: servers misstate their abilities."""
        rest = self._rest()
        if type_ is None:
            return any(
                isinstance(i, Mapping) and i.get("code") == interaction for i in rest.get("interaction") or ()
            )
        resource = next(
            (r for r in rest.get("resource") or () if isinstance(r, Mapping) and r.get("type") == type_), None
        )
        if resource is None:
            return False
        if interaction == "conditional-create":
            return resource.get("conditionalCreate") is True
        if interaction == "conditional-update":
            return resource.get("conditionalUpdate") is True
        if interaction == "conditional-delete":
            return resource.get("conditionalDelete") in ("single", "multiple")
        return any(
            isinstance(i, Mapping) and i.get("code") == interaction for i in resource.get("interaction") or ()
        )

    def server_limits(self) -> ServerLimits:
        """Bundle support from the CapabilityStatement plus entry limits known for this server's software
        (or the `limits` given to the constructor, which win)."""
        if self._limits is not None:
            return self._limits
        software = self.capabilities().get("software")
        name = str(software.get("name") or "") if isinstance(software, Mapping) else ""
        known = next((v for k, v in _KNOWN_LIMITS.items() if k in name), {})
        return ServerLimits(
            transaction=self.supports(None, "transaction"), batch=self.supports(None, "batch"), **known
        )

    # -- reads -----------------------------------------------------------------------------------------

    def read(self, type_: str, id_: str) -> dict[str, Any]:
        """`GET [base]/[type]/[id]`. Raises `NotFoundError` (404/410)."""
        url = self._resource_url(type_, id_)
        doc = self._json(self.transport.request("GET", url), url)
        if doc.get("resourceType") != type_:
            raise FhirError(f"asked for {type_}, got {doc.get('resourceType')!r}", method="GET", url=url)
        return doc

    def search(self, type_: str, params: SearchParams | None = None) -> Iterator[dict[str, Any]]:
        """Every resource of the search across all pages: the matches and any `_include`d resources (tell
        them apart by `resourceType`, or use `search_pages`)."""
        for page in self.search_pages(type_, params):
            yield from page.matches
            yield from page.included

    def search_pages(self, type_: str, params: SearchParams | None = None) -> Iterator[SearchPage]:
        """The searchset pages, following `Bundle.link` next on the same origin only."""
        _check_type(type_)
        url: str | None = f"{self.base_url}/{type_}"
        query: list[tuple[str, str]] | None = _params(params)
        seen: set[str] = set()
        while url is not None:
            response = self.transport.request("GET", url, params=query)
            page_url = response.url or url
            if page_url in seen:
                raise FhirError(
                    "the server's next link points back at a page already read", method="GET", url=url
                )
            seen.add(page_url)
            bundle = self._json(response, url)
            page = _search_page(bundle, page_url)
            for issue in page.outcomes:
                log.warning("search %s: the server says: %s", type_, issue.text or issue.code)
            yield page
            url = self._next_link(bundle)
            query = None  # a next link carries its own query

    def find_by_identifier(
        self, type_: str, system: str, value: str, *, within: SearchParams | None = None
    ) -> list[dict[str, Any]]:
        """The resources of `type_` carrying the identifier `system|value` (matches only, all pages).

        Results are filtered here to the exact identifier, so a server that ignores or loosely matches the
        parameter cannot make us believe a write already happened. With `within` (e.g.
        `{"patient": "Patient/1"}`) the search asks only for the identifier system inside that scope and
        compares values locally: for servers that cannot search a value containing `|` (the reference
        server cannot, escaped or not, and our charge keys contain two).
        """
        if within is None:
            query = [("identifier", token(system, value))]
        else:
            query = [*(_params(within) or []), ("identifier", token(system, ""))]
        found: list[dict[str, Any]] = []
        for page in self.search_pages(type_, query):
            found.extend(r for r in page.matches if has_identifier(r, system, value))
        return found

    # -- writes ----------------------------------------------------------------------------------------

    def create(
        self, resource: Mapping[str, Any], if_none_exist: str | SearchParams | None = None
    ) -> WriteOutcome:
        """`POST [base]/[type]`. With `if_none_exist` (a query such as `identifier=sys|val`, or params), a
        conditional create: 201 when created, 200 when one already matched, 412 when several did.

        A timeout or 5xx raises `OutcomeUnknownError` and is not retried: look the resource up by its
        identifier (`find_by_identifier`) before trying again.
        """
        type_ = _check_type(str(resource.get("resourceType") or ""))
        headers = {"Prefer": "return=representation"}
        if if_none_exist is not None:
            headers["If-None-Exist"] = (
                if_none_exist if isinstance(if_none_exist, str) else urlencode(_params(if_none_exist) or [])
            )
        response = self.transport.request("POST", f"{self.base_url}/{type_}", body=resource, headers=headers)
        return _write_outcome(response)

    def update(self, resource: Mapping[str, Any], if_match: str | None = None) -> WriteOutcome:
        """`PUT [base]/[type]/[id]`; `if_match` (an ETag or a bare version id) makes it a version-checked
        update that fails with `PreconditionFailedError` (412) when someone else changed the resource."""
        url = self._resource_url(str(resource.get("resourceType") or ""), str(resource.get("id") or ""))
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = if_match if if_match.startswith(("W/", '"')) else f'W/"{if_match}"'
        response = self.transport.request("PUT", url, body=resource, headers=headers)
        return _write_outcome(response)

    def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a `transaction` Bundle (all or nothing). Returns the transaction-response Bundle."""
        return self._post_bundle(bundle, "transaction")

    def batch(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a `batch` Bundle (entries succeed or fail one by one; see `entry_responses`).

        A batch of reads only (every entry a GET) is safe to repeat after a timeout or a 5xx, so it is
        retried like a GET; a batch holding any write is not (its outcome would be unknown)."""
        entries = bundle.get("entry") or []
        reads_only = bool(entries) and all(
            str((entry.get("request") or {}).get("method", "")).upper() == "GET" for entry in entries
        )
        return self._post_bundle(bundle, "batch", idempotent=reads_only)

    def _post_bundle(self, bundle: Mapping[str, Any], kind: str, idempotent: bool = False) -> dict[str, Any]:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != kind:
            raise ValueError(f"expected a Bundle of type {kind!r}")
        response = self.transport.request("POST", self.base_url, body=bundle, idempotent=idempotent)
        doc = self._json(response, self.base_url)
        if doc.get("resourceType") != "Bundle":
            raise FhirError(
                f"expected a {kind}-response Bundle, got {doc.get('resourceType')!r}",
                status=response.status_code,
                method="POST",
                url=self.base_url,
            )
        return doc

    # -- helpers ---------------------------------------------------------------------------------------

    def _resource_url(self, type_: str, id_: str) -> str:
        _check_type(type_)
        if not _ID_RE.fullmatch(id_):
            raise ValueError(f"not a valid FHIR id: {id_!r}")
        return f"{self.base_url}/{type_}/{id_}"

    def _next_link(self, bundle: Mapping[str, Any]) -> str | None:
        for link in bundle.get("link") or ():
            if (
                isinstance(link, Mapping)
                and link.get("relation") == "next"
                and isinstance(link.get("url"), str)
            ):
                target = urljoin(self.base_url + "/", link["url"])
                if not same_origin(target, self.base_url):
                    raise ForeignOriginError(
                        f"refusing to follow a next link to another origin ({_origin(target)}); "
                        f"the token is only ever sent to {_origin(self.base_url)}",
                        method="GET",
                        url=self.base_url,
                    )
                return target
        return None

    @staticmethod
    def _json(response: requests.Response, what: str) -> dict[str, Any]:
        try:
            doc = response.json()
        except ValueError:
            raise FhirError(
                "the server's answer is not JSON", status=response.status_code, url=response.url or what
            ) from None
        if not isinstance(doc, dict):
            raise FhirError("the server's answer is not a JSON object", status=response.status_code, url=what)
        return doc


def token(system: str, value: str) -> str:
    """A token search value `system|value` (`system|` alone when value is ""), with FHIR search escaping
    of `\\`, `|`, `,` and `$` in each part (R4 search, "Escaping Search Parameters")."""

    def esc(text: str) -> str:
        for char in ("\\", "|", ",", "$"):
            text = text.replace(char, "\\" + char)
        return text

    return f"{esc(system)}|{esc(value)}"


def has_identifier(resource: Mapping[str, Any], system: str, value: str) -> bool:
    return any(
        isinstance(i, Mapping) and i.get("system") == system and i.get("value") == value
        for i in resource.get("identifier") or ()
    )


def identifier_query(system: str, value: str) -> str:
    """The `If-None-Exist` / `ifNoneExist` query for a business identifier (URL-encoded)."""
    return urlencode({"identifier": token(system, value)})


def same_origin(a: str, b: str) -> bool:
    return _origin(a) == _origin(b)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _check_type(type_: str) -> str:
    if not _TYPE_RE.fullmatch(type_):
        raise ValueError(f"not a FHIR resource type: {type_!r}")
    return type_


def _params(params: SearchParams | None) -> list[tuple[str, str]] | None:
    if params is None:
        return None
    if isinstance(params, Mapping):
        out: list[tuple[str, str]] = []
        for key, value in params.items():
            if isinstance(value, str | int):
                out.append((key, str(value)))
            else:
                out.extend((key, str(v)) for v in value)
        return out
    return [(str(k), str(v)) for k, v in params]


def _search_page(bundle: Mapping[str, Any], url: str) -> SearchPage:
    if bundle.get("resourceType") != "Bundle":
        raise FhirError(f"a search returned {bundle.get('resourceType')!r}, not a Bundle", url=url)
    matches: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    outcomes: list[OutcomeIssue] = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, dict):
            log.warning("a search page has an entry without a resource; skipped")
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, Mapping) else None
        if mode == "outcome" or (mode is None and resource.get("resourceType") == "OperationOutcome"):
            outcomes.extend(parse_operation_outcome(resource))
        elif mode == "include":
            included.append(resource)
        else:
            matches.append(resource)
    total = bundle.get("total")
    return SearchPage(
        url=url,
        matches=tuple(matches),
        included=tuple(included),
        total=total if isinstance(total, int) else None,
        outcomes=tuple(outcomes),
        bundle=bundle,
    )


def _write_outcome(response: requests.Response) -> WriteOutcome:
    resource: dict[str, Any] | None = None
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") not in (None, "OperationOutcome"):
        resource = body
    location = response.headers.get("Location") or response.headers.get("Content-Location")
    etag = response.headers.get("ETag")
    type_ = id_ = version = None
    if location and (m := _LOCATION_RE.search(urlsplit(location).path)):
        type_, id_, version = m.group(1), m.group(2), m.group(3)
    if resource is not None:
        type_ = resource.get("resourceType") or type_
        id_ = resource.get("id") or id_
        meta = resource.get("meta")
        version = (meta.get("versionId") if isinstance(meta, Mapping) else None) or version
    if version is None and etag and (m := re.fullmatch(r'(?:W/)?"([^"]+)"', etag)):
        version = m.group(1)
    return WriteOutcome(
        status=response.status_code,
        resource_type=type_,
        id=id_,
        version_id=version,
        etag=etag,
        location=location,
        resource=resource,
    )


def entry_responses(bundle: Mapping[str, Any]) -> list[EntryResponse]:
    """The per-entry results of a transaction-response or batch-response Bundle, in entry order."""
    out = []
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, Mapping):
            continue
        raw_response = entry.get("response")
        response: Mapping[str, Any] = raw_response if isinstance(raw_response, Mapping) else {}
        match = re.match(r"\s*(\d{3})", str(response.get("status") or ""))
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        outcome = response.get("outcome")
        issues = parse_operation_outcome(outcome) if outcome else ()
        if resource is not None and resource.get("resourceType") == "OperationOutcome":
            issues, resource = issues + parse_operation_outcome(resource), None
        out.append(
            EntryResponse(
                status=int(match.group(1)) if match else 0,
                location=response.get("location"),
                etag=response.get("etag"),
                issues=issues,
                resource=resource,
            )
        )
    return out
