"""The sandbox EHR's FHIR R4 server as a Flask blueprint (mounted by app.py at /fhir).

HTTP concerns only: the bearer token (looked up in the shared `TokenStore`), content negotiation
(`application/fhir+json` both ways), the JSON body, `Prefer: return=...`, response headers (`ETag`,
`Location`, `Last-Modified`) and an OperationOutcome on every error. The interactions themselves are in
`fhir_interactions.py`, access rules in `fhir_access.py`, search in `search.py`.

`/metadata` is readable without a token, as on real EHRs. Every other request needs `Authorization:
Bearer <token>` unless the blueprint was created with `require_auth=False`: 401 with `WWW-Authenticate:
Bearer` when it is missing, unknown or expired.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from flask import Blueprint, Response, current_app, request

from smart_app.sandbox import jsonio
from smart_app.sandbox.fhir_access import Principal
from smart_app.sandbox.fhir_capability import capability_statement
from smart_app.sandbox.fhir_errors import FhirError, operation_outcome
from smart_app.sandbox.fhir_interactions import FhirInteractions, FhirRequest, FhirResponse
from smart_app.sandbox.store import FhirStore
from smart_app.sandbox.tokens import TokenStore

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json; charset=utf-8"
REALM = 'Bearer realm="rpm-billing sandbox EHR"'
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")


def create_fhir_blueprint(
    store: FhirStore,
    tokens: TokenStore,
    *,
    require_auth: bool = True,
    readonly_types: Iterable[str] = (),
    latency: float = 0.0,
    validate: bool = True,
) -> Blueprint:
    """The FHIR server over `store`, checking bearer tokens against `tokens`.

    `readonly_types`: resource types whose writes answer 405 (and that the CapabilityStatement lists
    without create/update/delete), to try the product against an EHR that cannot take them.
    `latency`: seconds added to every request (benchmarks). `validate`: check written resources' structure.
    The absolute FHIR base is the config key `SANDBOX_FHIR_BASE` when set, else the request's own URL.
    """
    readonly = frozenset(readonly_types)
    interactions = FhirInteractions(store, readonly_types=readonly, validate=validate)
    bp = Blueprint("sandbox_fhir", __name__, url_prefix="/fhir")

    @bp.route("/", defaults={"path": ""}, methods=_METHODS, strict_slashes=False)
    @bp.route("/<path:path>", methods=_METHODS)
    def fhir(path: str) -> Response:
        if latency > 0:
            time.sleep(latency)
        base = _fhir_base()
        try:
            _check_accept()
            if path.strip("/") == "metadata":
                if request.method != "GET":
                    raise FhirError(405, "not-supported", f"{request.method} is not supported on metadata")
                statement = capability_statement(
                    base,
                    config=current_app.config,
                    require_auth=require_auth,
                    readonly_types=readonly,
                    timezone=store.timezone,
                )
                return _json(200, statement)
            who = _principal(tokens) if require_auth else Principal(unrestricted=True)
            req = FhirRequest(
                method=request.method,
                path=path,
                params=tuple(request.args.items(multi=True)),
                body=_body(),
                base=base,
                if_match=request.headers.get("If-Match"),
                if_none_exist=request.headers.get("If-None-Exist"),
            )
            return _http_response(interactions.handle(req, who), base)
        except FhirError as exc:
            return _error(exc)
        except Exception:  # a bug: an OperationOutcome still, and a log line without request data
            log.exception("sandbox FHIR server failed on %s %s", request.method, request.path)
            return _json(
                500, operation_outcome("internal error in the sandbox FHIR server", code="exception")
            )

    return bp


class _Unauthorized(FhirError):
    def __init__(self, message: str, *, token_given: bool) -> None:
        super().__init__(401, "login", message)
        self.token_given = token_given


def _principal(tokens: TokenStore) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Unauthorized("a bearer token is required (Authorization: Bearer <token>)", token_given=False)
    grant = tokens.lookup(token.strip())
    if grant is None:
        raise _Unauthorized("the bearer token is unknown, revoked or expired", token_given=True)
    return Principal(scopes=tuple(grant.scopes), patient=grant.patient)


def _fhir_base() -> str:
    configured = current_app.config.get("SANDBOX_FHIR_BASE")
    if configured:
        return str(configured).rstrip("/")
    rule = request.url_rule.rule if request.url_rule else "/fhir"
    prefix = rule.split("<path:path>")[0].rstrip("/")
    return request.host_url.rstrip("/") + request.script_root + prefix


def _check_accept() -> None:
    wanted = request.args.get("_format")
    if wanted and wanted not in ("json", *_JSON_TYPES):
        raise FhirError(406, "not-supported", f"_format={wanted}: this sandbox speaks JSON only")
    accept = request.headers.get("Accept")
    if accept and accept not in _JSON_TYPES and not request.accept_mimetypes.best_match(_JSON_TYPES):
        raise FhirError(406, "not-supported", "this sandbox answers application/fhir+json only")


def _body() -> Any:
    if request.method not in ("POST", "PUT"):
        return None
    if request.mimetype == "application/x-www-form-urlencoded":
        return list(request.form.items(multi=True))  # POST [type]/_search
    raw = request.get_data(cache=False)
    if not raw.strip():
        return None
    if request.mimetype and request.mimetype not in _JSON_TYPES:
        raise FhirError(
            415, "not-supported", f"Content-Type {request.mimetype} is not supported (send FHIR JSON)"
        )
    try:
        return jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirError(400, "invalid", f"the body is not valid JSON: {exc}") from None


def _http_response(resp: FhirResponse, base: str) -> Response:
    body = resp.body
    prefer = request.headers.get("Prefer", "")
    if request.method in ("POST", "PUT") and resp.status in (200, 201) and body is not None:
        if "return=minimal" in prefer:
            body = None
        elif "return=OperationOutcome" in prefer:
            body = operation_outcome("done", code="informational", severity="information")
    headers: dict[str, str] = {}
    if resp.etag:
        headers["ETag"] = resp.etag
    if resp.location:
        headers["Location"] = f"{base}/{resp.location}"
    if resp.last_modified:
        modified = datetime.fromisoformat(resp.last_modified).astimezone(UTC)
        headers["Last-Modified"] = format_datetime(modified, usegmt=True)
    return _json(resp.status, body, headers)


def _error(exc: FhirError) -> Response:
    headers = {}
    if isinstance(exc, _Unauthorized):
        headers["WWW-Authenticate"] = REALM + (', error="invalid_token"' if exc.token_given else "")
    return _json(exc.status, exc.outcome(), headers)


def _json(status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> Response:
    if body is None:
        return Response(status=status, headers=headers, content_type=FHIR_JSON)
    if request.args.get("_pretty") == "true":
        data: str | bytes = json.dumps(body, ensure_ascii=False, indent=2)
    else:
        data = jsonio.dumps(body)
    return Response(data, status=status, headers=headers, content_type=FHIR_JSON)
