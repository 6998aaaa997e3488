"""The FHIR interactions of the sandbox server, independent of Flask so that Bundle entries reuse them.

`FhirInteractions.handle` takes one request (method, path relative to the FHIR base, query parameters,
JSON body, the conditional headers) from a `Principal` and returns a `FhirResponse`, or raises `FhirError`.
Supported: read, vread, history (instance), update (with If-Match), delete, create (with If-None-Exist),
search (GET and POST `_search`), and transaction / batch Bundles POSTed to the base. Everything else
answers 400 or 405 with an OperationOutcome.
"""

from __future__ import annotations

import functools
import typing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import ValidationError

from smart_app.sandbox import search
from smart_app.sandbox.fhir_access import Principal, Reach
from smart_app.sandbox.fhir_errors import FhirError, bad_request, not_supported, operation_outcome
from smart_app.sandbox.store import FhirStore, Version

_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}  # FHIR transaction processing order


@dataclass(frozen=True)
class FhirRequest:
    method: str
    path: str  # relative to the FHIR base, e.g. "Observation/123/_history/2"
    params: tuple[tuple[str, str], ...] = ()
    body: Any = None  # parsed JSON
    base: str = ""  # absolute FHIR base URL, for fullUrl and links
    if_match: str | None = None
    if_none_exist: str | None = None
    # The body's structure already checked (a transaction checks its entries before it takes the store):
    # None, or the outcome, raised where the check would have been made.
    structure: StructureCheck | None = None


@dataclass(frozen=True)
class StructureCheck:
    """The outcome of `validate_resource` on a body: the error it raised, or None when the body is valid."""

    error: FhirError | None


@dataclass(frozen=True)
class FhirResponse:
    status: int
    body: dict[str, Any] | None
    location: str | None = None  # "Type/id/_history/v", relative to the base
    etag: str | None = None
    last_modified: str | None = None  # FHIR instant


def _resource_response(status: int, resource: dict[str, Any], *, location: bool = False) -> FhirResponse:
    meta = resource.get("meta", {})
    version = meta.get("versionId")
    return FhirResponse(
        status,
        resource,
        location=f"{resource['resourceType']}/{resource['id']}/_history/{version}" if location else None,
        etag=f'W/"{version}"' if version else None,
        last_modified=meta.get("lastUpdated"),
    )


def _informational(status: int, message: str) -> FhirResponse:
    return FhirResponse(status, operation_outcome(message, code="informational", severity="information"))


class FhirInteractions:
    """The sandbox's FHIR interactions over a `FhirStore`.

    `readonly_types` answer 405 to every write (to test a product against an EHR that cannot take, say,
    ChargeItem writes); `validate` checks every written resource against the FHIR R4 structure.
    """

    def __init__(
        self, store: FhirStore, *, readonly_types: frozenset[str] = frozenset(), validate: bool = True
    ) -> None:
        self.store = store
        self.readonly_types = readonly_types
        self.validate = validate
        if validate:
            warm_validation(search.SUPPORTED_TYPES)

    # ------------------------------------------------------------------------------------ routing

    def handle(self, req: FhirRequest, who: Principal) -> FhirResponse:
        parts = [p for p in req.path.split("/") if p]
        method = req.method.upper()
        if not parts:
            if method == "POST":
                return self._bundle(req, who)
            if method == "GET":
                raise not_supported("system-level search is not supported; search one resource type")
            raise _method_not_allowed(method, "the FHIR base")
        if parts[0].startswith("$") or (len(parts) > 1 and parts[1].startswith("$")):
            raise not_supported(f"operations ({req.path}) are not supported by this sandbox")
        type_ = self._check_type(parts[0])
        if len(parts) == 1:
            if method == "GET":
                return self._search(req, who, type_, list(req.params))
            if method == "POST":
                return self._create(req, who, type_)
            if method in ("PUT", "DELETE", "PATCH"):
                raise _method_not_allowed(method, f"{type_} (conditional update/delete are not supported)")
            raise _method_not_allowed(method, type_)
        if len(parts) == 2 and parts[1] == "_search":
            if method != "POST":
                raise _method_not_allowed(method, f"{type_}/_search")
            form = req.body if isinstance(req.body, list) else []
            return self._search(req, who, type_, [*req.params, *form])
        id_ = parts[1]
        if len(parts) == 2:
            if method == "GET":
                return self._read(who, type_, id_)
            if method == "PUT":
                return self._update(req, who, type_, id_)
            if method == "DELETE":
                return self._delete(who, type_, id_)
            raise _method_not_allowed(method, f"{type_}/{id_}")
        if parts[2] == "_history" and len(parts) <= 4:
            if method != "GET":
                raise _method_not_allowed(method, f"{type_}/{id_}/_history")
            return (
                self._history(req, who, type_, id_)
                if len(parts) == 3
                else self._vread(who, type_, id_, parts[3])
            )
        raise FhirError(404, "not-found", f"no such FHIR endpoint: {req.path}")

    def _check_type(self, name: str) -> str:
        if "/" in name:
            raise bad_request(f"'{name}' is not a resource type")
        if name in search.SEARCH_PARAMS:
            return name
        if _is_resource_type(name):
            served = ", ".join(search.SUPPORTED_TYPES)
            raise not_supported(f"resource type {name} is not served by this sandbox (it serves {served})")
        raise FhirError(404, "not-found", f"unknown resource type '{name}'")

    def _check_writable_type(self, type_: str) -> None:
        if type_ in self.readonly_types:
            raise FhirError(405, "not-supported", f"this sandbox is configured to refuse writes of {type_}")

    # ------------------------------------------------------------------------------------ reads

    def _read(self, who: Principal, type_: str, id_: str) -> FhirResponse:
        reach = who.reach(type_, "r")
        current = self.store.lookup(type_, id_)
        if current is None:
            raise FhirError(404, "not-found", f"{type_}/{id_} is not known")
        if current.deleted or current.body is None:
            raise FhirError(410, "deleted", f"{type_}/{id_} was deleted")
        reach.check_readable(current.body)
        return _resource_response(200, current.body)

    def _vread(self, who: Principal, type_: str, id_: str, version: str) -> FhirResponse:
        reach = who.reach(type_, "r")
        found = self.store.lookup_version(type_, id_, version)
        if found is None:
            raise FhirError(404, "not-found", f"{type_}/{id_} has no version {version}")
        if found.body is None:
            raise FhirError(410, "deleted", f"version {version} of {type_}/{id_} is its deletion")
        reach.check_readable(found.body)
        return _resource_response(200, found.body)

    def _history(self, req: FhirRequest, who: Principal, type_: str, id_: str) -> FhirResponse:
        reach = who.reach(type_, "r")
        versions = self.store.history(type_, id_)
        if not versions:
            raise FhirError(404, "not-found", f"{type_}/{id_} is not known")
        for version in versions:
            if version.body is not None:
                reach.check_readable(version.body)
        entries = [_history_entry(req.base, v, first=v.version == 1) for v in versions]
        bundle = {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
        return FhirResponse(200, bundle)

    def _search(
        self, req: FhirRequest, who: Principal, type_: str, params: list[tuple[str, str]]
    ) -> FhirResponse:
        reach = who.reach(type_, "s", params)
        query = self.store.parse_query(type_, params)
        reach.check_search(query)
        page = self.store.run_query(query, patient=reach.patient)
        entries = [_search_entry(req.base, r, "match") for r in page.matches]
        entries += [_search_entry(req.base, r, "include") for r in page.included]
        links = [{"relation": "self", "url": _page_url(req.base, type_, params, query.offset, None)}]
        if not query.summary_count and query.count and query.offset + query.count < page.total:
            next_url = _page_url(req.base, type_, params, query.offset + query.count, query.count)
            links.append({"relation": "next", "url": next_url})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": page.total}
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return FhirResponse(200, bundle)

    # ------------------------------------------------------------------------------------ writes

    def _resource_body(self, req: FhirRequest, type_: str) -> dict[str, Any]:
        body = req.body
        if not isinstance(body, dict):
            raise bad_request(f"the body must be a {type_} resource (a JSON object)")
        if body.get("resourceType") != type_:
            raise bad_request(f"the body is a {body.get('resourceType')!r}, not a {type_} as the URL says")
        if self.validate:
            if req.structure is None:
                validate_resource(body)
            elif req.structure.error is not None:
                raise req.structure.error
        return body

    def _create(
        self, req: FhirRequest, who: Principal, type_: str, *, assigned_id: str | None = None
    ) -> FhirResponse:
        self._check_writable_type(type_)
        reach = who.reach(type_, "c")
        resource = self._resource_body(req, type_)
        reach.check_writable({**resource, "id": assigned_id})
        with self.store.transaction():
            if req.if_none_exist:
                existing = self._conditional_match(type_, req.if_none_exist, reach)
                if existing is not None:
                    return _resource_response(200, existing, location=True)
            created = self.store.create(resource, id_=assigned_id)
        return _resource_response(201, created, location=True)

    def _conditional_match(self, type_: str, condition: str, reach: Reach) -> dict[str, Any] | None:
        """The one resource matching a conditional create's search; None if none; 412 if several."""
        text = condition.split("?", 1)[1] if "?" in condition else condition
        params = parse_qsl(text, keep_blank_values=True)
        if not params:
            raise bad_request(f"conditional create: '{condition}' holds no search parameters")
        query = self.store.parse_query(type_, [*params, ("_count", "2")])
        page = self.store.run_query(query, patient=reach.patient)
        if page.total > 1:
            raise FhirError(
                412,
                "multiple-matches",
                f"conditional create: {page.total} {type_} resources match '{condition}'",
            )
        return page.matches[0] if page.matches else None

    def _update(self, req: FhirRequest, who: Principal, type_: str, id_: str) -> FhirResponse:
        self._check_writable_type(type_)
        resource = self._resource_body(req, type_)
        if resource.get("id") != id_:
            raise bad_request(
                f"the resource's id ({resource.get('id')!r}) must equal the id in the URL ({id_!r})"
            )
        if not search.valid_id(id_):
            raise bad_request(f"'{id_}' is not a valid FHIR id")
        with self.store.transaction():
            current = self.store.lookup(type_, id_)
            live = current is not None and current.body is not None
            reach = who.reach(type_, "u" if live else "c")
            if current is not None and current.body is not None:
                reach.check_writable(current.body)
            reach.check_writable(resource)
            stored, created = self.store.update(resource, if_match=req.if_match)
        return _resource_response(201 if created else 200, stored, location=created)

    def _delete(self, who: Principal, type_: str, id_: str) -> FhirResponse:
        self._check_writable_type(type_)
        reach = who.reach(type_, "d")
        with self.store.transaction():
            current = self.store.lookup(type_, id_)
            if current is None:
                raise FhirError(404, "not-found", f"{type_}/{id_} is not known")
            if current.body is None:
                return _informational(200, f"{type_}/{id_} was already deleted")
            reach.check_writable(current.body)
            self.store.delete(type_, id_)
        return _informational(200, f"{type_}/{id_} deleted")

    # ------------------------------------------------------------------------------------ Bundles

    def _bundle(self, req: FhirRequest, who: Principal) -> FhirResponse:
        bundle = req.body
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise bad_request("POST to the FHIR base takes a transaction or batch Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise bad_request(f"Bundle.type must be transaction or batch, not {kind!r}")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise bad_request("Bundle.entry must be a list")
        if kind == "batch":
            return FhirResponse(200, self._batch(req, who, entries))
        return FhirResponse(200, self._transaction(req, who, entries))

    def _entry_request(self, req: FhirRequest, entry: Any, position: int) -> FhirRequest:
        where = f"Bundle.entry[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise bad_request(f"{where} has no request", expression=where)
        request = entry["request"]
        method, url = request.get("method"), request.get("url")
        if method not in _METHOD_ORDER or not isinstance(url, str) or not url:
            raise bad_request(
                f"{where}.request needs a method (GET, POST, PUT, DELETE) and a url", expression=where
            )
        parsed = urlsplit(url)
        path = parsed.path
        if parsed.scheme:
            if not url.startswith(req.base + "/"):
                raise bad_request(f"{where}.request.url points outside this server: {url}", expression=where)
            path = url[len(req.base) + 1 :].split("?", 1)[0]
        return FhirRequest(
            method=method,
            path=path,
            params=tuple(parse_qsl(parsed.query, keep_blank_values=True)),
            body=entry.get("resource"),
            base=req.base,
            if_match=_str(request.get("ifMatch")),
            if_none_exist=_str(request.get("ifNoneExist")),
        )

    def _check_structure(self, req: FhirRequest) -> FhirRequest:
        """`req` with its body's structure checked now, when it is a resource that `_resource_body` would
        validate (the entry's errors are still raised in FHIR's processing order, where they were).

        A transaction holds the store, which every other request needs, from its first entry to its last:
        validating there (about 0.2 ms a resource) would keep them all waiting.
        """
        body = req.body
        if not self.validate or req.method not in ("POST", "PUT") or not isinstance(body, dict):
            return req
        parts = [p for p in req.path.split("/") if p]
        if len(parts) != (1 if req.method == "POST" else 2) or parts[0] not in search.SEARCH_PARAMS:
            return req  # not a create or an update: no body to validate
        if body.get("resourceType") != parts[0]:
            return req
        # Validation does not depend on what the transaction rewrites in the body (urn:uuid references
        # become Type/id: strings both), so the outcome holds for the rewritten body.
        try:
            validate_resource(body)
        except FhirError as exc:
            return replace(req, structure=StructureCheck(exc))
        except Exception:  # not a validation outcome: left to happen where it did
            return req
        return replace(req, structure=StructureCheck(None))

    def _batch(self, req: FhirRequest, who: Principal, entries: list[Any]) -> dict[str, Any]:
        out = []
        for position, entry in enumerate(entries):
            try:
                out.append(
                    _response_entry(req.base, self.handle(self._entry_request(req, entry, position), who))
                )
            except FhirError as exc:
                out.append({"response": {"status": _status_text(exc.status), "outcome": exc.outcome()}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}

    def _transaction(self, req: FhirRequest, who: Principal, entries: list[Any]) -> dict[str, Any]:
        requests = [
            self._check_structure(self._entry_request(req, entry, i)) for i, entry in enumerate(entries)
        ]
        full_urls = [e.get("fullUrl") if isinstance(e, dict) else None for e in entries]
        named = [u for u in full_urls if u]
        if len(named) != len(set(named)):
            raise bad_request("a transaction's entries must have distinct fullUrls")
        order = sorted(range(len(requests)), key=lambda i: _METHOD_ORDER[requests[i].method])
        results: dict[int, FhirResponse] = {}
        assigned: dict[int, str] = {}
        mapping: dict[str, str] = {}  # urn:uuid fullUrl -> Type/id
        with self.store.transaction():
            # 1. POST entries get their ids (or their conditional match) first, for the reference rewriting.
            for i in order:
                r = requests[i]
                if r.method != "POST":
                    continue
                with _failing_entry(i, r):
                    type_ = self._check_type(r.path.strip("/"))
                    existing = None
                    if r.if_none_exist:
                        existing = self._conditional_match(type_, r.if_none_exist, who.reach(type_, "c"))
                if existing is not None:
                    results[i] = _resource_response(200, existing, location=True)
                    target = existing["id"]
                else:
                    target = assigned[i] = str(uuid.uuid4())
                url = full_urls[i]
                if isinstance(url, str) and url.startswith(("urn:uuid:", "urn:oid:")):
                    mapping[url] = f"{type_}/{target}"
            # 2. Rewrite urn:uuid references, then run the entries in FHIR's order (DELETE, POST, PUT, GET).
            for i in order:
                r = requests[i]
                if i in results:
                    continue
                with _failing_entry(i, r):
                    if r.body is not None:
                        r = replace(r, body=_rewrite(r.body, mapping))
                    if r.method == "POST":
                        unconditional = replace(r, if_none_exist=None)
                        results[i] = self._create(
                            unconditional, who, r.path.strip("/"), assigned_id=assigned[i]
                        )
                    else:
                        results[i] = self.handle(r, who)
        out = [_response_entry(req.base, results[i]) for i in range(len(requests))]
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


@contextmanager
def _failing_entry(position: int, request: FhirRequest) -> Iterator[None]:
    """An error in a transaction entry fails the whole transaction; the message names the entry."""
    try:
        yield
    except FhirError as exc:
        raise FhirError(
            exc.status,
            exc.code,
            f"transaction failed at entry {position} ({request.method} {request.path}): {exc.message}; "
            "nothing was stored",
            expression=f"Bundle.entry[{position}]",
        ) from exc


# ---------------------------------------------------------------------------------------------- helpers


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _method_not_allowed(method: str, what: str) -> FhirError:
    return FhirError(405, "not-supported", f"{method} is not supported on {what}")


def _status_text(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _is_resource_type(name: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except (ValueError, KeyError, AttributeError):
        return False


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    """A copy of `node` with every `reference` to a transaction entry's urn:uuid replaced by Type/id."""
    if isinstance(node, dict):
        out = {k: _rewrite(v, mapping) for k, v in node.items()}
        ref = node.get("reference")
        if isinstance(ref, str) and ref.startswith(("urn:uuid:", "urn:oid:")):
            if ref not in mapping:
                raise bad_request(f"reference {ref} names no POST entry of this transaction")
            out["reference"] = mapping[ref]
        return out
    if isinstance(node, list):
        return [_rewrite(v, mapping) for v in node]
    return node


def _response_entry(base: str, response: FhirResponse) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    body = response.body
    if body is not None and body.get("id") and body.get("resourceType") not in ("Bundle", "OperationOutcome"):
        entry["fullUrl"] = f"{base}/{body['resourceType']}/{body['id']}"
    if body is not None and body.get("resourceType") != "OperationOutcome":
        entry["resource"] = body
    result: dict[str, Any] = {"status": _status_text(response.status)}
    if response.location:
        result["location"] = response.location
    if response.etag:
        result["etag"] = response.etag
    if response.last_modified:
        result["lastModified"] = response.last_modified
    if body is not None and body.get("resourceType") == "OperationOutcome":
        result["outcome"] = body
    entry["response"] = result
    return entry


def _search_entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def _history_entry(base: str, version: Version, *, first: bool) -> dict[str, Any]:
    url = f"{version.type_}/{version.id_}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if version.body is not None:
        entry["resource"] = version.body
    method = "DELETE" if version.deleted else ("POST" if first else "PUT")
    entry["request"] = {"method": method, "url": version.type_ if method == "POST" else url}
    entry["response"] = {
        "status": _status_text(201 if method == "POST" else 200),
        "etag": version.etag,
        "lastModified": version.last_updated,
    }
    return entry


def _page_url(base: str, type_: str, params: list[tuple[str, str]], offset: int, count: int | None) -> str:
    kept = [(k, v) for k, v in params if k not in ("_offset", "_count") or (k == "_count" and count is None)]
    if count is not None:
        kept.append(("_count", str(count)))
    if offset:
        kept.append(("_offset", str(offset)))
    query = urlencode(kept)
    return f"{base}/{type_}" + (f"?{query}" if query else "")


def validate_resource(resource: dict[str, Any]) -> None:
    """400 unless `resource` has the FHIR R4 structure (checked with the fhir.resources R4B models).

    Tolerated, as the reference server and real EHR data do: a dateTime with a time but no offset (FHIR
    requires one; the sandbox reads it in its time zone, and the product flags it).
    """
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        problems = [e for e in exc.errors() if not _offsetless_datetime(e)]
        if problems:
            details = "; ".join(
                f"{_loc(resource['resourceType'], e['loc'])}: {e['msg']}" for e in problems[:5]
            )
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise bad_request(
                f"invalid {resource['resourceType']}: {details}{more}", code="structure"
            ) from None


@functools.cache
def warm_validation(types: tuple[str, ...]) -> None:
    """Import now the R4B models that validating these resource types needs (once per process).

    fhir.resources imports a model's element types on first use, inside a validation: ~25 ms for the first
    ChargeItem, ~0.25 s for all the served types, which a server should spend when it starts, not on its
    first writes. Best effort: a model whose element types cannot be found this way is completed when first
    used, as without this.
    """
    from fhir.resources.R4B import get_fhir_model_class

    seen: set[type] = set()
    pending = [get_fhir_model_class(type_) for type_ in types]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in getattr(model, "model_fields", {}).values():
            pending.extend(_element_models(field.annotation))


def _element_models(annotation: Any) -> Iterator[type]:
    """The model classes a field annotation names through fhir_core's lazy types (e.g. `ReferenceType`)."""
    get_model = getattr(annotation, "get_model_klass", None)
    if isinstance(annotation, type) and callable(get_model):
        model = None
        with suppress(ImportError, AttributeError, TypeError):
            model = get_model()
        if isinstance(model, type):
            yield model
    for argument in typing.get_args(annotation):
        yield from _element_models(argument)


def _offsetless_datetime(error: Any) -> bool:
    value = error.get("input")
    return isinstance(value, str) and bool(search.OFFSETLESS_DATETIME.match(value))


def _loc(type_: str, loc: tuple[Any, ...]) -> str:
    return ".".join([type_, *(str(p) for p in loc)])
