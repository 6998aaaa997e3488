"""Write-back from the app: a review listing exactly what will be written, then the writes, then the outcome.

The plan and the writes are the shared month-end ones (`smart_app.writeback`): the same idempotency and
re-run rules (unchanged: nothing written; changed: entered-in-error plus a new ChargeItem; `billed` never
touched; the new monthly DocumentReference replaces the old). The plan shown on the review page is kept on
the server under a one-time review id, and exactly that plan is applied when the person confirms (a stale
review, older than REVIEW_TTL, must be made again). A server that refuses the writes loses nothing: the
outcome page offers the resources not written as an NDJSON export.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Response, render_template

from billing.periods import YearMonth
from fhir_mapping.outbound import WriteSettings
from smart_app import scopes as smart_scopes
from smart_app.web import data, oauth
from smart_app.web.app import web_state
from smart_app.web.config import WebConfig
from smart_app.web.guards import banner
from smart_app.web.sessions import LaunchSession, new_secret
from smart_app.writeback import WritePlan, WriteResult, apply_plan, plan_month_writes

REVIEW_TTL = 900.0  # seconds a reviewed plan may wait for confirmation
MAX_KEPT = 10  # reviews and outcomes kept per launch
_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Review:
    id: str
    patient_id: str
    month: YearMonth
    plan: WritePlan
    preview: bool
    created_at: float


@dataclass(frozen=True)
class Outcome:
    id: str
    patient_id: str
    month: YearMonth
    plan: WritePlan
    result: WriteResult
    at: datetime


def write_settings(config: WebConfig) -> WriteSettings:
    return WriteSettings(
        canon=data.canon(config),
        billing_practitioner=config.billing_practitioner,
        organization=config.organization,
    )


def _keep(store: dict[str, Any], key: str, value: Any) -> None:
    store[key] = value
    while len(store) > MAX_KEPT:
        store.pop(next(iter(store)))


def review_page(launch: LaunchSession, pid: str, month: YearMonth, now: datetime) -> Any:
    state = web_state()
    loaded = data.load_month(launch, state.config, pid, month, now)
    plan = plan_month_writes(loaded.result, loaded.fetch, write_settings(state.config))
    gaps = oauth.write_gaps(launch.granted, launch.patient is not None)
    review = Review(new_secret(16), pid, month, plan, loaded.result.preview, time.time())
    if not plan.unchanged and not gaps:
        with launch.lock:
            _keep(launch.reviews, review.id, review)
    return render_template(
        "review.html",
        launch=launch,
        lid=launch.id,
        pid=pid,
        banner=banner(launch, pid, loaded.fetch.records.display_name),
        month=str(month),
        review=review,
        plan=plan,
        result=loaded.result,
        gaps=smart_scopes.describe_missing(gaps) if gaps else "",
    )


def apply_reviewed(launch: LaunchSession, pid: str, review_id: str) -> str:
    """Apply the reviewed plan once; returns the outcome id. LaunchError when the review is gone or stale."""
    with launch.lock:
        review: Review | None = launch.reviews.pop(review_id, None)
    if review is None or review.patient_id != pid or time.time() - review.created_at > REVIEW_TTL:
        raise oauth.LaunchError(
            "Review expired",
            "This review was already used or is too old. Review the write-back again before writing.",
            409,
        )
    state = web_state()
    client = data.fhir_client(launch, state.config)
    result = apply_plan(client, review.plan)
    outcome = Outcome(new_secret(16), pid, review.month, review.plan, result, state.clock())
    with launch.lock:
        _keep(launch.outcomes, outcome.id, outcome)
    return outcome.id


def _outcome(launch: LaunchSession, pid: str, outcome_id: str) -> Outcome:
    with launch.lock:
        outcome: Outcome | None = launch.outcomes.get(outcome_id)
    if outcome is None or outcome.patient_id != pid:
        raise oauth.LaunchError("Not found", "This write-back outcome is not known to this launch.", 404)
    return outcome


def link(launch: LaunchSession, reference: str) -> str | None:
    """The resource's URL on the EHR's FHIR server, for `Type/id` references (None otherwise)."""
    return f"{launch.fhir_base}/{reference}" if _REF.fullmatch(reference) else None


def outcome_page(launch: LaunchSession, pid: str, outcome_id: str) -> Any:
    outcome = _outcome(launch, pid, outcome_id)
    return render_template(
        "written.html",
        launch=launch,
        lid=launch.id,
        pid=pid,
        banner=banner(launch, pid, None),
        month=str(outcome.month),
        outcome=outcome,
        created=[(ref, link(launch, ref)) for ref in outcome.result.created],
        retired=[(ref, link(launch, ref)) for ref in outcome.result.retired],
    )


def export(launch: LaunchSession, pid: str, outcome_id: str) -> Response:
    """The resources a refused write-back could not write, as FHIR NDJSON (nothing is lost)."""
    outcome = _outcome(launch, pid, outcome_id)
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in outcome.result.unwritten)
    response = Response(body, mimetype="application/fhir+ndjson")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="rpm-charges-{pid}-{outcome.month}.ndjson"'
    )
    return response
